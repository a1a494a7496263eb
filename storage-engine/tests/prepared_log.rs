//! The prepared log: group commits overwrite blocks zero-filled and synced ahead of them, a
//! segment does not outgrow its size however small the rounds, and recovery tells the zero
//! tail of a log segment (clean) from anything else after its last record (damage).

mod real_disk;

use std::path::Path;
use std::rc::Rc;

use real_disk::{log_segments, record_spans, run, small_config};
use stead_storage::sim::SimDisk;
use stead_storage::{Batch, ObjectId, RecoveryMode, Store, StoreConfig, StoreError};

const OBJECT: ObjectId = [9u8; 32];

fn put(commit: usize) -> Batch {
    let mut batch = Batch::new();
    batch.put(format!("k{commit:03}"), format!("v{commit}"));
    batch
}

/// Commits `commits` small batches one after another: one round, one record, each.
async fn commit_one_by_one(store: &Store, commits: usize) {
    for commit in 0..commits {
        let (_, durable) = store.commit(&OBJECT, put(commit)).expect("commit");
        durable.await.expect("durable");
    }
}

fn sim_config(segment_bytes_max: u64, segment_prepare_bytes: u64) -> StoreConfig {
    let mut config = small_config(Path::new("/simulated"));
    config.segment_bytes_max = segment_bytes_max;
    config.segment_prepare_bytes = segment_prepare_bytes;
    config
}

/// Opens a store on `sim`, commits `commits` batches one by one, closes it.
async fn fill(sim: &SimDisk, config: StoreConfig, commits: usize) {
    let store = Store::open_with_disk(config, sim.disk())
        .await
        .expect("open");
    commit_one_by_one(&store, commits).await;
    store.close().await.expect("close");
}

#[test]
fn every_round_overwrites_prepared_blocks() {
    run(|| async {
        let sim = SimDisk::new(11);
        sim.set_yield_percent(0);
        fill(&sim, sim_config(64 * 1024, 64 * 1024), 10).await;
        // Ten one-block rounds in a segment prepared whole at its creation: each record went
        // over synced zeros, and the file never grew.
        assert_eq!(sim.zero_overwrites(), 10);
        assert!(sim.synced_overwrites().is_empty());
        let log = sim.file_bytes("log-0000000000000001").expect("log");
        assert_eq!(log.len(), 64 * 1024);
        assert_eq!(record_spans(&log).len(), 10);

        // Preparation off: every round appends and grows the file.
        let sim = SimDisk::new(12);
        sim.set_yield_percent(0);
        fill(&sim, sim_config(64 * 1024, 0), 10).await;
        assert_eq!(sim.zero_overwrites(), 0);
        let log = sim.file_bytes("log-0000000000000001").expect("log");
        assert_eq!(log.len(), 10 * 4096);
    });
}

#[test]
fn the_preparer_keeps_ahead_of_the_writer() {
    run(|| async {
        let sim = SimDisk::new(13);
        sim.set_yield_percent(0);
        // A window of two blocks in a 64 KiB segment: the preparer fills while rounds go on.
        fill(&sim, sim_config(64 * 1024, 8 * 1024), 12).await;
        let log = sim.file_bytes("log-0000000000000001").expect("log");
        assert_eq!(record_spans(&log).len(), 12);
        assert!(
            sim.zero_overwrites() >= 10,
            "most rounds found prepared blocks: {}",
            sim.zero_overwrites()
        );
        assert!(sim.synced_overwrites().is_empty());
        // Prepared at most one window past the last record.
        assert!(log.len() <= 12 * 4096 + 8 * 1024, "{} bytes", log.len());
    });
}

#[test]
fn rounds_of_one_small_batch_stay_within_the_segment_size() {
    run(|| async {
        let sim = SimDisk::new(14);
        fill(&sim, sim_config(16 * 1024, 0), 40).await;
        // Each round pads its ~60-byte batch to a 4 KiB block: counted by the bytes the
        // commits assigned alone, one segment would have taken all 40 (160 KiB).
        let names = sim.names();
        let logs: Vec<&String> = names
            .iter()
            .filter(|name| name.starts_with("log-"))
            .collect();
        assert!(logs.len() >= 9, "{logs:?}");
        for name in logs {
            let length = sim.file_bytes(name).map_or(0, |bytes| bytes.len());
            assert!(length <= 16 * 1024 + 4096, "{name} holds {length} bytes");
        }
    });
}

/// Builds a store of two log segments on the real disk and returns the older one's path.
fn two_segments(dir: &Path) -> std::path::PathBuf {
    let path = dir.to_path_buf();
    run(move || async move {
        let store = Store::open(small_config(&path)).await.expect("open");
        commit_one_by_one(&store, 6).await;
        store.close().await.expect("close");
    });
    let logs = log_segments(dir);
    assert!(logs.len() >= 2, "{logs:?}");
    logs[0].clone()
}

async fn open(dir: &Path, recovery: RecoveryMode) -> Result<Store, StoreError> {
    let mut config = small_config(dir);
    config.recovery = recovery;
    Store::open(config).await
}

#[test]
fn zeros_after_the_records_of_an_older_segment_are_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let oldest = two_segments(dir.path());
    let mut bytes = std::fs::read(&oldest).expect("read");
    bytes.extend_from_slice(&[0u8; 3 * 4096]);
    std::fs::write(&oldest, &bytes).expect("write");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = open(&path, RecoveryMode::Strict)
            .await
            .expect("a zero tail is no damage");
        for commit in 0..6 {
            let key = format!("k{commit:03}");
            let found = store.get(&OBJECT, key.as_bytes()).await.expect("get");
            assert_eq!(found, Some(format!("v{commit}").into_bytes()));
        }
        store.close().await.expect("close");
    });
}

#[test]
fn anything_but_zeros_after_the_records_of_an_older_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let oldest = two_segments(dir.path());
    let mut bytes = std::fs::read(&oldest).expect("read");
    let records_end = bytes.len();
    // One stray byte in an otherwise zero tail.
    bytes.extend_from_slice(&[0u8; 2 * 4096]);
    bytes[records_end + 4096 + 17] = 1;
    std::fs::write(&oldest, &bytes).expect("write");
    let path = dir.path().to_path_buf();
    let oldest_name = real_disk::file_name(&oldest);
    run(move || async move {
        match open(&path, RecoveryMode::Strict).await {
            Err(StoreError::Corruption { file, offset, .. }) => {
                assert_eq!(file, oldest_name);
                assert_eq!(offset, records_end as u64);
            }
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(_) => panic!("a strict open accepted damage in a sealed segment"),
        }
        let store = open(&path, RecoveryMode::Salvage)
            .await
            .expect("salvage opens");
        let found = store.get(&OBJECT, b"k005").await.expect("get");
        assert_eq!(found, Some(b"v5".to_vec()));
        store.close().await.expect("close");
    });
}

#[test]
fn a_store_reopened_on_a_prepared_segment_appends_over_its_zeros() {
    run(|| async {
        let sim = SimDisk::new(15);
        sim.set_yield_percent(0);
        let config = sim_config(64 * 1024, 64 * 1024);
        fill(&sim, config.clone(), 3).await;
        let overwrites = sim.zero_overwrites();
        let disk: Rc<dyn stead_storage::Disk> = sim.disk();
        let store = Store::open_with_disk(config, disk).await.expect("reopen");
        let (_, durable) = store.commit(&OBJECT, put(3)).expect("commit");
        durable.await.expect("durable");
        store.close().await.expect("close");
        assert_eq!(sim.zero_overwrites(), overwrites + 1);
        let log = sim.file_bytes("log-0000000000000001").expect("log");
        assert_eq!(log.len(), 64 * 1024, "the zero tail was kept, not cut");
        assert_eq!(record_spans(&log).len(), 4);
        assert!(sim.synced_overwrites().is_empty());
    });
}
