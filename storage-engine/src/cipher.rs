//! Encryption at rest: XChaCha20-Poly1305 over each record's payload (an encrypted store
//! keeps no checkpoint).
//!
//! A sealed payload is `key id (8) ‖ nonce (24) ‖ ciphertext ‖ tag (16)`. The key id names
//! which of the configured keys sealed it (the first key seals, every key opens: rotation).
//! The nonce is 24 random bytes per seal: with 192 bits, two seals under one key share a
//! nonce with probability about n²/2¹⁹³ after n seals, nothing a store reaches, and nothing
//! about a file's place or history (a block written twice, a segment id reused after a
//! crash) can make one repeat.
//!
//! One value read back alone from the middle of a record is decrypted with the stream cipher
//! itself, started at its place in the ciphertext (XChaCha20-Poly1305 encrypts with the
//! keystream from its second 64-byte block on; the first keys Poly1305). The record's tag
//! cannot check a slice, and a crc would not stop a forgery (a stream cipher lets whoever can
//! write the disk flip chosen plaintext bits, and a crc is linear): the index keeps, in place
//! of the value's crc, a keyed tag of it (`value_tag`: BLAKE3 keyed with a key derived from
//! the sealing key, cut to 32 bits), made when the value was written or recovery read its
//! authenticated record, and checked on every read, compaction's included. A forged value
//! passes with probability 2⁻³² per try, and each failed try is reported as corruption.

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;

/// Bytes of a key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 24;
/// Bytes of the tag after the ciphertext.
pub const TAG_BYTES: usize = 16;
/// Bytes in front of the ciphertext: the key id and the nonce.
pub const PREFIX_BYTES: usize = 8 + NONCE_BYTES;
/// What sealing adds to a payload.
pub const OVERHEAD_BYTES: usize = PREFIX_BYTES + TAG_BYTES;

/// The keystream bytes XChaCha20-Poly1305 uses for the Poly1305 key, before the ciphertext's.
const POLY1305_KEY_BLOCK_BYTES: u64 = 64;

/// The keys of a store: the first seals, all of them open.
#[derive(Clone)]
pub struct Encryption {
    keys: Vec<(u64, [u8; KEY_BYTES])>,
    /// The key of `value_tag`, derived from the sealing key.
    tag_key: [u8; 32],
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.key_ids().map(|id| format!("{id:016x}")).collect();
        f.debug_struct("Encryption")
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

/// Why a sealed payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Sealed under a key id none of the configured keys has.
    UnknownKey(u64),
    /// Too short, or the tag does not match: damage (or the wrong key under a colliding id).
    Damaged,
}

impl Encryption {
    /// `keys` by id, the sealing key first; None if there is none or two share an id.
    pub fn new(keys: Vec<(u64, [u8; KEY_BYTES])>) -> Option<Encryption> {
        let mut ids: Vec<u64> = keys.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        if keys.is_empty() || ids.len() != keys.len() {
            return None;
        }
        let tag_key = blake3::derive_key("stead-storage value tag v1", &keys[0].1);
        Some(Encryption { keys, tag_key })
    }

    /// The keyed tag the index keeps of a value read back alone (in place of its crc).
    pub fn value_tag(&self, value: &[u8]) -> u32 {
        let hash = blake3::keyed_hash(&self.tag_key, value);
        let mut tag = [0u8; 4];
        tag.copy_from_slice(&hash.as_bytes()[..4]);
        u32::from_le_bytes(tag)
    }

    /// The ids of the keys, the sealing key's first.
    pub fn key_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.keys.iter().map(|(id, _)| *id)
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> u64 {
        self.keys[0].0
    }

    fn key(&self, id: u64) -> Option<&[u8; KEY_BYTES]> {
        self.keys
            .iter()
            .find(|(key_id, _)| *key_id == id)
            .map(|(_, key)| key)
    }

    /// Seals `plaintext` with `aad` as associated data under the sealing key and a random
    /// nonce.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_BYTES];
        if let Err(error) = getrandom::fill(&mut nonce) {
            // Without randomness no nonce is safe: writing on would be worse than stopping.
            panic!("no randomness for a nonce: {error}");
        }
        let cipher = XChaCha20Poly1305::new(key.into());
        let payload = Payload {
            msg: plaintext,
            aad,
        };
        let Ok(sealed) = cipher.encrypt((&nonce).into(), payload) else {
            unreachable!("XChaCha20-Poly1305 seals any length a record can have")
        };
        let mut out = Vec::with_capacity(PREFIX_BYTES + sealed.len());
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what `seal` made with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < OVERHEAD_BYTES {
            return Err(OpenError::Damaged);
        }
        let (id, nonce) = prefix(sealed);
        let key = self.key(id).ok_or(OpenError::UnknownKey(id))?;
        let cipher = XChaCha20Poly1305::new(key.into());
        let payload = Payload {
            msg: &sealed[PREFIX_BYTES..],
            aad,
        };
        cipher
            .decrypt((&nonce).into(), payload)
            .map_err(|_| OpenError::Damaged)
    }

    /// Decrypts in place `bytes`, which stand at `position` in the ciphertext of a payload
    /// whose prefix (key id and nonce) is `prefix_bytes`. Nothing is authenticated here.
    pub fn decrypt_at(
        &self,
        prefix_bytes: &[u8],
        position: u64,
        bytes: &mut [u8],
    ) -> Result<(), OpenError> {
        if prefix_bytes.len() < PREFIX_BYTES {
            return Err(OpenError::Damaged);
        }
        let (id, nonce) = prefix(prefix_bytes);
        let key = self.key(id).ok_or(OpenError::UnknownKey(id))?;
        let mut stream = chacha20::XChaCha20::new(key.into(), (&nonce).into());
        stream.seek(POLY1305_KEY_BLOCK_BYTES + position);
        stream.apply_keystream(bytes);
        Ok(())
    }
}

/// The key id and nonce at the start of a sealed payload (at least `PREFIX_BYTES` long).
fn prefix(sealed: &[u8]) -> (u64, [u8; NONCE_BYTES]) {
    let mut id = [0u8; 8];
    id.copy_from_slice(&sealed[..8]);
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&sealed[8..PREFIX_BYTES]);
    (u64::from_le_bytes(id), nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Encryption {
        Encryption::new(vec![(1, [7u8; KEY_BYTES]), (2, [9u8; KEY_BYTES])]).expect("keys")
    }

    #[test]
    fn a_sealed_payload_opens_and_any_slice_decrypts_alone() {
        let encryption = keys();
        let plaintext: Vec<u8> = (0..5000u32).map(|n| (n * 31 % 251) as u8).collect();
        let sealed = encryption.seal(b"header", &plaintext);
        assert_eq!(sealed.len(), plaintext.len() + OVERHEAD_BYTES);
        assert_eq!(
            encryption.open(b"header", &sealed).expect("opens"),
            plaintext
        );
        for (start, end) in [(0, 10), (63, 200), (64, 65), (1000, 4999), (4999, 5000)] {
            let mut slice = sealed[PREFIX_BYTES + start..PREFIX_BYTES + end].to_vec();
            encryption
                .decrypt_at(&sealed, start as u64, &mut slice)
                .expect("known key");
            assert_eq!(slice, plaintext[start..end], "{start}..{end}");
        }
    }

    #[test]
    fn damage_another_header_and_unknown_keys_are_told_apart() {
        let encryption = keys();
        let sealed = encryption.seal(b"header", b"value");
        assert_eq!(encryption.open(b"other", &sealed), Err(OpenError::Damaged));
        let mut flipped = sealed.clone();
        flipped[PREFIX_BYTES] ^= 1;
        assert_eq!(
            encryption.open(b"header", &flipped),
            Err(OpenError::Damaged)
        );
        let other = Encryption::new(vec![(3, [1u8; KEY_BYTES])]).expect("keys");
        assert_eq!(
            other.open(b"header", &sealed),
            Err(OpenError::UnknownKey(1))
        );
        // The second key opens what it sealed when it was first.
        let rotated =
            Encryption::new(vec![(2, [9u8; KEY_BYTES]), (1, [7u8; KEY_BYTES])]).expect("keys");
        assert_eq!(rotated.open(b"header", &sealed).expect("opens"), b"value");
        assert!(Encryption::new(vec![(1, [0; 32]), (1, [1; 32])]).is_none());
        assert!(Encryption::new(Vec::new()).is_none());
    }
}
