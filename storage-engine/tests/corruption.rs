//! Damage that is not a torn tail, on the real disk: a flipped bit in an older segment or in
//! the middle of the log is refused with an error naming the file and offset; a flipped bit in
//! the newest segment's last record is indistinguishable from a torn append and is cut; a
//! value read from disk is verified on every read; an unknown manifest version is refused;
//! salvage recovery keeps what verifies.

mod real_disk;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use real_disk::{cut_at, file_name, log_segments, record_spans, run, RecordSpan};

/// `real_disk::small_config`, always plain: these tests write or read the plain record format
/// byte by byte (the encrypted format's damage is in `tests/encryption.rs`).
fn small_config(dir: &Path) -> StoreConfig {
    let mut config = real_disk::small_config(dir);
    config.encryption = None;
    config
}

use stead_storage::codec::{encode_manifest, ManifestData, SEGMENT_ID_MAX};
use stead_storage::{Batch, ObjectData, ObjectId, RecoveryMode, Store, StoreConfig, StoreError};

const OBJECT: ObjectId = [3u8; 32];
const COMMITS: usize = 18;

/// Header fields and payload positions to damage, relative to a record's start: magic,
/// length, sequence number, segment id, batch count, crc, first payload byte.
const HEADER_AND_PAYLOAD: [usize; 7] = [0, 5, 9, 17, 25, 29, 32];

fn value(commit: usize) -> Vec<u8> {
    // Over the 64-byte inline limit, so replay verifies values that live on disk; every third
    // commit makes a two-block record.
    let len = if commit % 3 == 2 { 5000 } else { 100 };
    (0..len).map(|i| (commit * 31 + i * 7) as u8).collect()
}

fn key(commit: usize) -> Vec<u8> {
    format!("c{commit:02}").into_bytes()
}

/// The object after every commit except those in `lost`.
fn expected(commits: usize, lost: &[usize]) -> ObjectData {
    let mut data = ObjectData::default();
    for commit in (0..commits).filter(|commit| !lost.contains(commit)) {
        data.entries.insert(key(commit), value(commit));
        data.alarm_ms = Some(commit as i64);
    }
    data
}

/// Commits `COMMITS` batches one at a time (one record each) over two or more segments.
/// Returns the log segments, oldest first, with the records each holds.
fn build_store(dir: &Path) -> Vec<(PathBuf, Vec<RecordSpan>)> {
    let path = dir.to_path_buf();
    run(move || async move {
        let store = Store::open(small_config(&path)).await.expect("open");
        for commit in 0..COMMITS {
            let mut batch = Batch::new();
            batch.put(key(commit), value(commit));
            batch.set_alarm(commit as i64);
            let (_, durable) = store.commit(&OBJECT, batch).expect("commit");
            durable.await.expect("durable");
        }
        store.close().await.expect("close");
    });
    let segments: Vec<_> = log_segments(dir)
        .into_iter()
        .map(|log| {
            let spans = record_spans(&std::fs::read(&log).expect("read segment"));
            (log, spans)
        })
        .collect();
    assert!(segments.len() >= 2, "the commits span several segments");
    assert!(
        segments[segments.len() - 1].1.len() >= 2,
        "the newest holds a few records"
    );
    let records: usize = segments.iter().map(|(_, spans)| spans.len()).sum();
    assert_eq!(records, COMMITS, "one record per awaited commit");
    segments
}

/// Flips one bit of the file at `offset`.
fn flip_bit(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset] ^= 0x10;
    std::fs::write(path, &bytes).expect("write");
}

async fn open(dir: &Path, recovery: RecoveryMode) -> Result<Store, StoreError> {
    let mut config: StoreConfig = small_config(dir);
    config.recovery = recovery;
    Store::open(config).await
}

/// Creates an empty store in `dir` and closes it.
async fn create_empty(dir: &Path) {
    open(dir, RecoveryMode::Strict)
        .await
        .expect("create")
        .close()
        .await
        .expect("close");
}

/// Opens strictly and expects a corruption error naming `file` and `offset`, in the variant
/// and in the message an operator reads.
async fn expect_corruption(dir: &Path, file: &str, offset: usize, context: &str) {
    match open(dir, RecoveryMode::Strict).await {
        Err(error @ StoreError::Corruption { .. }) => {
            let message = error.to_string();
            let StoreError::Corruption {
                file: found_file,
                offset: found_offset,
                ..
            } = &error
            else {
                unreachable!("matched above")
            };
            assert_eq!(
                (found_file.as_str(), *found_offset),
                (file, offset as u64),
                "{context}"
            );
            assert!(message.contains(file), "{context}: {message}");
            assert!(
                message.contains(&format!("offset {offset}")),
                "{context}: {message}"
            );
        }
        Err(other) => panic!("{context}: expected corruption, got {other}"),
        Ok(_) => panic!("{context}: a damaged log opened"),
    }
}

/// Flips each position of `record` in turn and expects corruption at the record's start.
async fn expect_each_flip_refused(dir: &Path, log: &Path, record: RecordSpan) {
    let original = std::fs::read(log).expect("read");
    let positions = HEADER_AND_PAYLOAD.into_iter().chain([record.length - 1]);
    for position in positions {
        flip_bit(log, record.offset + position);
        let context = format!("bit flip at {}+{position}", record.offset);
        expect_corruption(dir, &file_name(log), record.offset, &context).await;
        std::fs::write(log, &original).expect("restore");
    }
    let store = open(dir, RecoveryMode::Strict)
        .await
        .expect("restored log opens");
    store.close().await.expect("close");
}

#[test]
fn bit_flip_in_an_older_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = build_store(dir.path());
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (oldest, spans) = &segments[0];
        // The first record, and the last one: an older segment has no torn tail to forgive.
        for record in [spans[0], spans[spans.len() - 1]] {
            expect_each_flip_refused(&path, oldest, record).await;
        }
    });
}

#[test]
fn bit_flip_mid_log_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = build_store(dir.path());
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (newest, spans) = &segments[segments.len() - 1];
        // Valid records follow the damaged one, so it cannot be a torn append.
        expect_each_flip_refused(&path, newest, spans[spans.len() - 2]).await;
    });
}

#[test]
fn bit_flip_in_the_last_record_is_cut_as_torn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = build_store(dir.path());
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (newest, spans) = &segments[segments.len() - 1];
        let last = spans[spans.len() - 1];
        let original = std::fs::read(newest).expect("read");
        for position in HEADER_AND_PAYLOAD.into_iter().chain([last.length - 1]) {
            flip_bit(newest, last.offset + position);
            let store = open(&path, RecoveryMode::Strict)
                .await
                .expect("a damaged last record is a torn tail");
            let found = store.load_object(&OBJECT).await.expect("load");
            assert_eq!(found, expected(COMMITS - 1, &[]), "flip at +{position}");
            store.close().await.expect("close");
            assert!(cut_at(newest, last.offset), "the torn record is cut off");
            std::fs::write(newest, &original).expect("restore");
        }
    });
}

/// Where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[test]
fn value_damaged_on_disk_is_reported_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = open(&path, RecoveryMode::Strict).await.expect("open");
        let big = value(98);
        let mut batch = Batch::new();
        batch.put("big", big.clone());
        let (_, durable) = store.commit(&OBJECT, batch).expect("commit");
        durable.await.expect("durable");
        assert_eq!(
            store.get(&OBJECT, b"big").await.expect("get"),
            Some(big.clone())
        );

        let logs = log_segments(&path);
        let log = &logs[logs.len() - 1];
        let at = find(&std::fs::read(log).expect("read"), &big).expect("the value is on disk");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(log)
            .expect("open segment");
        file.seek(SeekFrom::Start(at as u64 + 10)).expect("seek");
        file.write_all(&[!big[10]]).expect("damage the value");
        file.sync_all().expect("sync");

        let name = file_name(log);
        for attempt in ["get", "load_object"] {
            let result = match attempt {
                "get" => store.get(&OBJECT, b"big").await.map(|_| ()),
                _ => store.load_object(&OBJECT).await.map(|_| ()),
            };
            match result {
                Err(error @ StoreError::Corruption { .. }) => {
                    let message = error.to_string();
                    assert!(message.contains(&name), "{attempt}: {message}");
                    assert!(
                        message.contains(&format!("offset {at}")),
                        "{attempt}: {message}"
                    );
                }
                other => panic!("{attempt}: expected corruption, got {other:?}"),
            }
        }
        store.close().await.expect("close");
    });
}

#[test]
fn unknown_manifest_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        create_empty(&path).await;
        let manifest = path.join("MANIFEST");
        let original = std::fs::read(&manifest).expect("read manifest");

        let mut future = original.clone();
        future[4..8].copy_from_slice(&4u32.to_le_bytes());
        std::fs::write(&manifest, &future).expect("write manifest");
        match open(&path, RecoveryMode::Strict).await {
            Err(
                error @ StoreError::UnknownFormatVersion {
                    found: 4,
                    supported: 3,
                    ..
                },
            ) => {
                let message = error.to_string();
                assert!(message.contains("MANIFEST"), "{message}");
                assert!(message.contains("format version 4"), "{message}");
            }
            Err(other) => panic!("expected an unknown version, got {other}"),
            Ok(_) => panic!("a manifest of version 4 opened"),
        }

        let mut damaged = original.clone();
        damaged[12] ^= 1;
        std::fs::write(&manifest, &damaged).expect("write manifest");
        expect_corruption(&path, "MANIFEST", 0, "manifest crc").await;

        std::fs::write(&manifest, &original).expect("restore manifest");
        let store = open(&path, RecoveryMode::Strict).await.expect("restored");
        store.close().await.expect("close");
    });
}

#[test]
fn manifest_naming_a_base_before_the_log_start_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        create_empty(&path).await;
        // Compaction gives bases ids after the log start, whose id the next log segment takes;
        // a manifest that breaks this would make the two collide (found by fuzzing).
        let manifest = ManifestData {
            log_start: 2,
            base_segments: vec![2],
            encrypted: false,
        };
        std::fs::write(path.join("MANIFEST"), encode_manifest(&manifest)).expect("manifest");
        std::fs::write(path.join("base-0000000000000002"), b"").expect("base");
        expect_corruption(&path, "MANIFEST", 0, "base at the log start").await;
    });
}

#[test]
fn segment_id_beyond_the_index_range_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        create_empty(&path).await;
        // Index entries name segments by a u32; a larger id cannot be pointed at.
        let stray = "log-ffffffffffffffff";
        std::fs::write(path.join(stray), b"").expect("create stray segment");
        expect_corruption(&path, stray, 0, "segment id too large").await;
    });
}

#[test]
fn segment_ids_are_accepted_up_to_the_format_limit_and_refused_above() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        create_empty(&path).await;
        // The largest id allocation hands out opens, and commits land in it.
        let largest = format!("log-{SEGMENT_ID_MAX:016x}");
        std::fs::write(path.join(&largest), b"").expect("create largest segment");
        let store = open(&path, RecoveryMode::Strict)
            .await
            .expect("the largest id opens");
        let mut batch = Batch::new();
        batch.put("k", "v");
        let (_, durable) = store.commit(&OBJECT, batch).expect("commit");
        durable.await.expect("durable");
        store.close().await.expect("close");
        let written = std::fs::metadata(path.join(&largest)).expect("stat").len();
        assert!(written > 0, "the commit went to {largest}");
        let store = open(&path, RecoveryMode::Strict).await.expect("reopen");
        assert_eq!(
            store.get(&OBJECT, b"k").await.expect("get"),
            Some(b"v".to_vec())
        );
        store.close().await.expect("close");

        // One past it is damage, reported by name, not a panic.
        let beyond = format!("log-{:016x}", SEGMENT_ID_MAX + 1);
        std::fs::write(path.join(&beyond), b"").expect("create stray segment");
        expect_corruption(&path, &beyond, 0, "segment id one past the limit").await;
        std::fs::remove_file(path.join(&beyond)).expect("remove stray segment");

        // So is a manifest naming such an id, as its log start or as a base.
        let original = std::fs::read(path.join("MANIFEST")).expect("read manifest");
        for manifest in [
            ManifestData {
                log_start: SEGMENT_ID_MAX + 1,
                base_segments: Vec::new(),
                encrypted: false,
            },
            ManifestData {
                log_start: 1,
                base_segments: vec![SEGMENT_ID_MAX + 1],
                encrypted: false,
            },
        ] {
            std::fs::write(path.join("MANIFEST"), encode_manifest(&manifest)).expect("manifest");
            let context = format!("manifest {manifest:?}");
            expect_corruption(&path, "MANIFEST", 0, &context).await;
        }
        std::fs::write(path.join("MANIFEST"), &original).expect("restore manifest");
        let store = open(&path, RecoveryMode::Strict).await.expect("restored");
        store.close().await.expect("close");
    });
}

#[test]
fn salvage_keeps_every_record_that_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = build_store(dir.path());
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (oldest, spans) = &segments[0];
        // Commit 2 is a two-block record: salvage must skip both blocks and go on.
        let damaged = 2;
        assert!(spans[damaged].length > 4096, "a multi-block record");
        flip_bit(oldest, spans[damaged].offset + 40);
        let oldest_name = file_name(oldest);
        expect_corruption(&path, &oldest_name, spans[damaged].offset, "strict").await;

        let store = open(&path, RecoveryMode::Salvage)
            .await
            .expect("salvage opens");
        let want = expected(COMMITS, &[damaged]);
        assert_eq!(store.load_object(&OBJECT).await.expect("load"), want);
        store.close().await.expect("close");
        drop(store);

        // Salvage rewrote what it kept, so the damaged file is gone and strict opens work.
        assert!(!oldest.exists(), "{oldest_name} was compacted away");
        let store = open(&path, RecoveryMode::Strict)
            .await
            .expect("strict open after salvage");
        assert_eq!(store.load_object(&OBJECT).await.expect("load"), want);
        store.close().await.expect("close");
    });
}
