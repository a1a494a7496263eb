//! Encryption at rest on the real disk: nothing stored appears in plain text in any file, a
//! large value read back alone decrypts, a store refuses the wrong keys (no key, a key for a
//! plain store, an unknown key) without cutting anything, a tag that does not match is damage,
//! and keys rotate through compaction. The crash tests (torn tail, power loss, kill -9) run
//! over encrypted stores too, with `STEAD_STORAGE_TEST_ENCRYPTION=1` (`.ci/run`).

mod real_disk;

use std::path::Path;
use std::sync::Arc;

use real_disk::{log_segments, record_spans, run, RECORD_HEADER_BYTES};
use stead_storage::{
    Batch, Encryption, RecoveryMode, Store, StoreConfig, StoreError, ENCRYPTION_KEY_BYTES,
};

const NEEDLE: &[u8] = b"needle-in-the-data-directory";

fn keys(ids: &[u64]) -> Option<Arc<Encryption>> {
    let keys = ids
        .iter()
        .map(|id| (*id, [*id as u8; ENCRYPTION_KEY_BYTES]))
        .collect();
    Some(Arc::new(Encryption::new(keys).expect("keys")))
}

fn config(dir: &Path, encryption: Option<Arc<Encryption>>) -> StoreConfig {
    let mut config = real_disk::small_config(dir);
    config.encryption = encryption;
    config
}

/// A small value (kept in memory) and a large one (read back from disk), both with the needle,
/// under a key with the needle, in `objects` objects.
async fn write(store: &Store, objects: u8, round: u8) {
    for n in 0..objects {
        let mut batch = Batch::new();
        let mut large = NEEDLE.repeat(20);
        large.push(round);
        batch.put([NEEDLE, &[n]].concat(), NEEDLE.to_vec());
        batch.put(b"large".to_vec(), large);
        let (_, durable) = store.commit(&[n; 32], batch).expect("commit");
        durable.await.expect("durable");
    }
}

async fn check(store: &Store, objects: u8, round: u8) {
    for n in 0..objects {
        let object = [n; 32];
        let small = store
            .get(&object, &[NEEDLE, &[n]].concat())
            .await
            .expect("get");
        assert_eq!(small.as_deref(), Some(NEEDLE));
        let mut large = NEEDLE.repeat(20);
        large.push(round);
        assert_eq!(
            store.get(&object, b"large").await.expect("get"),
            Some(large)
        );
    }
}

fn no_needle_in(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        let found = bytes.windows(NEEDLE.len()).any(|window| window == NEEDLE);
        assert!(!found, "{} holds the needle in plain text", path.display());
    }
}

#[test]
fn nothing_is_stored_in_plain_text_and_values_read_back_from_disk_decrypt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = Store::open(config(&path, keys(&[1]))).await.expect("open");
        write(&store, 8, 1).await;
        store.compact().await.expect("compact");
        write(&store, 8, 2).await;
        store.close().await.expect("close");
        no_needle_in(&path);
        let store = Store::open(config(&path, keys(&[1])))
            .await
            .expect("reopen");
        check(&store, 8, 2).await;
        store.close().await.expect("close");
        // The same workload without a key does leave the needle: the scan can find it.
        let plain = path.join("plain");
        let store = Store::open(config(&plain, None)).await.expect("open plain");
        write(&store, 1, 1).await;
        store.close().await.expect("close");
        let found = std::fs::read_dir(&plain).expect("list").any(|entry| {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            bytes.windows(NEEDLE.len()).any(|window| window == NEEDLE)
        });
        assert!(found, "the plain store should hold the needle");
    });
}

fn encryption_reason(outcome: Result<Store, StoreError>) -> String {
    match outcome {
        Err(StoreError::Encryption { reason }) => reason,
        Err(other) => panic!("expected an encryption error, got {other}"),
        Ok(_) => panic!("the store opened"),
    }
}

#[test]
fn the_wrong_keys_are_refused_and_nothing_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sealed");
    let plain = dir.path().join("plain");
    run(move || async move {
        let store = Store::open(config(&path, keys(&[1]))).await.expect("open");
        write(&store, 4, 1).await;
        store.close().await.expect("close");
        let reason = encryption_reason(Store::open(config(&path, None)).await);
        assert!(reason.contains("is encrypted"), "{reason}");
        let reason = encryption_reason(Store::open(config(&path, keys(&[2]))).await);
        assert!(reason.contains("not in the key file"), "{reason}");
        // Nothing was cut as a torn tail on the way: the right key finds everything.
        let store = Store::open(config(&path, keys(&[1])))
            .await
            .expect("reopen");
        check(&store, 4, 1).await;
        store.close().await.expect("close");

        let store = Store::open(config(&plain, None)).await.expect("open plain");
        write(&store, 1, 1).await;
        store.close().await.expect("close");
        let reason = encryption_reason(Store::open(config(&plain, keys(&[1]))).await);
        assert!(reason.contains("without encryption"), "{reason}");
    });
}

#[test]
fn a_record_that_does_not_authenticate_is_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = Store::open(config(&path, keys(&[1]))).await.expect("open");
        write(&store, 3, 1).await;
        store.close().await.expect("close");
        // Flip a ciphertext bit of the first record and make its crc match again: only the
        // tag can tell.
        let segment = log_segments(&path)
            .into_iter()
            .next()
            .expect("a log segment");
        let mut bytes = std::fs::read(&segment).expect("read");
        let first = record_spans(&bytes)[0];
        let at = first.offset + RECORD_HEADER_BYTES + 40;
        bytes[at] ^= 0x01;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes[first.offset..first.offset + 28]);
        hasher.update(&bytes[first.offset + RECORD_HEADER_BYTES..first.end()]);
        let crc = hasher.finalize().to_le_bytes();
        bytes[first.offset + 28..first.offset + 32].copy_from_slice(&crc);
        std::fs::write(&segment, &bytes).expect("write");
        let mut strict = config(&path, keys(&[1]));
        strict.recovery = RecoveryMode::Strict;
        match Store::open(strict).await {
            Err(StoreError::Corruption { reason, .. }) => {
                assert!(reason.contains("authenticate"), "{reason}")
            }
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(_) => panic!("a record that does not authenticate was accepted"),
        }
        // The same in the last record of the log, where a torn write would be cut: a record
        // whose crc matches is no torn write, so it is refused, not cut.
        let mut bytes = std::fs::read(&segment).expect("read");
        let spans = record_spans(&bytes);
        let last = spans[spans.len() - 1];
        let at = last.offset + RECORD_HEADER_BYTES + 40;
        bytes[at] ^= 0x01;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes[last.offset..last.offset + 28]);
        hasher.update(&bytes[last.offset + RECORD_HEADER_BYTES..last.end()]);
        let crc = hasher.finalize().to_le_bytes();
        bytes[last.offset + 28..last.offset + 32].copy_from_slice(&crc);
        std::fs::write(&segment, &bytes).expect("write");
        assert!(matches!(
            Store::open(config(&path, keys(&[1]))).await,
            Err(StoreError::Corruption { .. })
        ));
    });
}

/// A change of the first 5 bytes of `value` (as XOR masks) that leaves its crc-32 as it is:
/// the crc of a flip is linear in the flipped bits, so 33 of the 40 single-bit flips have a
/// combination whose crc changes cancel out, found by elimination.
fn crc_blind_flip(value: &[u8]) -> Vec<u8> {
    let base = crc32fast::hash(value);
    // Reduced crc changes, each with the set of bits (as a mask) that makes it.
    let mut basis: Vec<(u32, u64)> = Vec::new();
    for bit in 0..40u64 {
        let mut flipped = value.to_vec();
        flipped[(bit / 8) as usize] ^= 1 << (bit % 8);
        let (mut change, mut bits) = (crc32fast::hash(&flipped) ^ base, 1u64 << bit);
        for (vector, vector_bits) in &basis {
            if change ^ vector < change {
                change ^= vector;
                bits ^= vector_bits;
            }
        }
        if change == 0 {
            return (0..5).map(|byte| (bits >> (8 * byte)) as u8).collect();
        }
        basis.push((change, bits));
        basis.sort_unstable_by_key(|(change, _)| std::cmp::Reverse(*change));
    }
    unreachable!("40 flips in a 32-bit space always have a dependent combination")
}

#[test]
fn a_value_changed_on_disk_is_caught_by_its_keyed_tag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = Store::open(config(&path, keys(&[1]))).await.expect("open");
        write(&store, 1, 1).await;
        // Change the large value's ciphertext where the store reads it alone (the record was
        // authenticated at commit) by a pattern that a crc-32 cannot see: with a stream
        // cipher, flipping ciphertext bits flips the same plaintext bits, and a crc is linear.
        let mut large = NEEDLE.repeat(20);
        large.push(1);
        let delta = crc_blind_flip(&large);
        let mut changed = large.clone();
        for (byte, flip) in changed.iter_mut().zip(&delta) {
            *byte ^= flip;
        }
        assert_ne!(changed, large);
        assert_eq!(
            crc32fast::hash(&changed),
            crc32fast::hash(&large),
            "a crc would pass it"
        );
        let segment = log_segments(&path)
            .into_iter()
            .next()
            .expect("a log segment");
        let mut bytes = std::fs::read(&segment).expect("read");
        let record = record_spans(&bytes)[0];
        // The large value is the last thing of the record's payload, before the 16-byte tag.
        let start = record.end() - 16 - large.len();
        for (byte, flip) in bytes[start..].iter_mut().zip(&delta) {
            *byte ^= flip;
        }
        std::fs::write(&segment, &bytes).expect("write");
        match store.get(&[0; 32], b"large").await {
            Err(StoreError::Corruption { reason, .. }) => {
                assert!(reason.contains("crc"), "{reason}")
            }
            other => panic!("a changed value was read back: {other:?}"),
        }
        let _ = store.close().await;
    });
}

#[test]
fn keys_rotate_through_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = Store::open(config(&path, keys(&[1]))).await.expect("open");
        write(&store, 4, 1).await;
        store.close().await.expect("close");
        // A new key first: old records still open, new ones are sealed under it.
        let store = Store::open(config(&path, keys(&[2, 1])))
            .await
            .expect("rotate");
        check(&store, 4, 1).await;
        write(&store, 4, 2).await;
        store.close().await.expect("close");
        // Without the old key, the old segments cannot be read yet.
        let reason = encryption_reason(Store::open(config(&path, keys(&[2]))).await);
        assert!(reason.contains("not in the key file"), "{reason}");
        // Nor with the old key alone: the newest records are sealed under the new one.
        let reason = encryption_reason(Store::open(config(&path, keys(&[1]))).await);
        assert!(reason.contains("not in the key file"), "{reason}");
        // Compaction rewrites everything under the new key; then the old one can go. The
        // values read back from the new base segments, before and after the reopen.
        let store = Store::open(config(&path, keys(&[2, 1])))
            .await
            .expect("reopen");
        write(&store, 4, 3).await;
        store.compact().await.expect("compact");
        check(&store, 4, 3).await;
        write(&store, 1, 4).await;
        store.close().await.expect("close");
        let store = Store::open(config(&path, keys(&[2])))
            .await
            .expect("new key alone");
        check(&store, 1, 4).await;
        for n in 1..4u8 {
            let mut large = NEEDLE.repeat(20);
            large.push(3);
            assert_eq!(
                store.get(&[n; 32], b"large").await.expect("get"),
                Some(large)
            );
        }
        store.close().await.expect("close");
    });
}
