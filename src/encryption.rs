//! The keys of encryption at rest (`[storage] encryption_key_file`,
//! `--encryption-key-file`): read once at start, handed to every core's store
//! (`stead_storage::Encryption`, which seals each record and opens it again).
//!
//! The key file holds one key a line, 64 hex digits (32 bytes); blank lines and lines
//! starting with `#` are skipped. The first key seals what is written from now on; every key
//! opens. To rotate: put a new key first and restart; compaction rewrites old segments under
//! it; once no segment is sealed under an old key any more, its line may go (a store that
//! still needs it refuses to open, naming the key id). A key's id is the first 8 bytes of its
//! SHA-256, so the file's order may change without rewriting anything.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use stead_storage::{Encryption, ENCRYPTION_KEY_BYTES};

/// The largest key file read.
const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The keys of a data directory, shared by its stores. Compared by their key ids.
#[derive(Clone, Debug)]
pub struct KeyRing(pub Arc<Encryption>);

impl PartialEq for KeyRing {
    fn eq(&self, other: &KeyRing) -> bool {
        self.0.key_ids().eq(other.0.key_ids())
    }
}

impl Eq for KeyRing {}

impl KeyRing {
    /// Reads the keys in `path`.
    pub fn load(path: &Path) -> Result<KeyRing, String> {
        let context = |reason: String| format!("encryption key file {}: {reason}", path.display());
        let bytes = crate::config::read_operator_file(path, KEY_FILE_BYTES_MAX).map_err(context)?;
        let text = String::from_utf8(bytes).map_err(|_| context("not UTF-8".to_string()))?;
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = parse_key(line).ok_or_else(|| {
                context(format!(
                    "line {}: a key is {} hex digits",
                    number + 1,
                    2 * ENCRYPTION_KEY_BYTES
                ))
            })?;
            keys.push((key_id(&key), key));
        }
        if keys.is_empty() {
            return Err(context("no key in it".to_string()));
        }
        let encryption =
            Encryption::new(keys).ok_or_else(|| context("a key is listed twice".to_string()))?;
        Ok(KeyRing(Arc::new(encryption)))
    }
}

/// The id a key's records carry: the first 8 bytes of its SHA-256.
fn key_id(key: &[u8; ENCRYPTION_KEY_BYTES]) -> u64 {
    let digest = Sha256::digest(key);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(id)
}

fn parse_key(text: &str) -> Option<[u8; ENCRYPTION_KEY_BYTES]> {
    if text.len() != 2 * ENCRYPTION_KEY_BYTES {
        return None;
    }
    let mut key = [0u8; ENCRYPTION_KEY_BYTES];
    for (index, pair) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        key[index] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_read_and_bad_ones_say_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        std::fs::write(&path, format!("# current\n{key}\n\n{}\n", "ab".repeat(32))).expect("w");
        let ring = KeyRing::load(&path).expect("two keys");
        assert_eq!(
            ring.0.sealing_key_id(),
            key_id(&parse_key(key).expect("key"))
        );
        for (text, reason) in [
            ("", "no key"),
            ("abc\n", "line 1"),
            (&format!("{key}\n{key}\n"), "twice"),
        ] {
            std::fs::write(&path, text).expect("write");
            let error = KeyRing::load(&path).expect_err(text);
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }
}
