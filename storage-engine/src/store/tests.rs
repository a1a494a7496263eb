//! Smoke tests of the store on a real directory; the thorough suites live in `tests/`.

use glommio::{LocalExecutorBuilder, Placement};

use super::*;

fn run<F: std::future::Future<Output = ()> + 'static>(make: impl FnOnce() -> F + Send + 'static) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .ring_depth(64)
        .spawn(make)
        .expect("executor starts")
        .join()
        .expect("test body completes");
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.segment_bytes_max = 64 * 1024;
    config.compaction_automatic = false;
    config
}

const OBJECT: ObjectId = [1u8; 32];

#[test]
fn commit_read_reopen_compact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = Store::open(config(&path)).await.expect("open");
        let big = vec![7u8; 10_000];
        let mut last = None;
        for i in 0..50u32 {
            let mut batch = Batch::new();
            batch.put(format!("k{i:03}"), i.to_le_bytes().to_vec());
            batch.put(format!("big{i:03}"), big.clone());
            if i % 10 == 9 {
                batch.delete(format!("k{:03}", i / 2));
            }
            batch.set_alarm(i64::from(i));
            let (seq, durable) = store.commit(&OBJECT, batch).expect("commit");
            assert_eq!(
                store
                    .get(&OBJECT, format!("k{i:03}").as_bytes())
                    .await
                    .expect("get"),
                Some(i.to_le_bytes().to_vec())
            );
            last = Some((seq, durable));
        }
        let (seq, durable) = last.expect("committed");
        durable.await.expect("durable");
        store.wait_durable(seq).await.expect("durable");
        assert_eq!(
            store.get(&OBJECT, b"big010").await.expect("get"),
            Some(big.clone())
        );
        let options = ListOptions {
            prefix: Some(b"k".to_vec()),
            reverse: true,
            limit: Some(3),
            ..Default::default()
        };
        let listed = store.list(&OBJECT, &options).await.expect("list");
        let keys: Vec<_> = listed.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            keys,
            vec![b"k049".to_vec(), b"k048".to_vec(), b"k047".to_vec()]
        );
        let before = store.load_object(&OBJECT).await.expect("load");
        assert_eq!(before.alarm_ms, Some(49));
        assert!(store.stats().segments > 1);
        store.close().await.expect("close");

        let store = Store::open(config(&path)).await.expect("reopen");
        assert_eq!(store.load_object(&OBJECT).await.expect("load"), before);
        store.compact().await.expect("compact");
        assert_eq!(store.load_object(&OBJECT).await.expect("load"), before);
        let mut batch = Batch::new();
        batch.delete_all();
        batch.put("after", "compaction");
        let (_, durable) = store.commit(&OBJECT, batch).expect("commit");
        durable.await.expect("durable");
        store.close().await.expect("close");

        let store = Store::open(config(&path))
            .await
            .expect("reopen after compaction");
        let after = store.load_object(&OBJECT).await.expect("load");
        assert_eq!(after.entries.len(), 1);
        assert_eq!(after.alarm_ms, Some(49));
        assert!(matches!(
            store.commit(&OBJECT, {
                let mut b = Batch::new();
                b.put(vec![0u8; 4096], "x");
                b.clone()
            }),
            Err(StoreError::KeyTooLarge { .. })
        ));
        store.close().await.expect("close");
    });
}

#[test]
fn torn_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = Store::open(config(&path)).await.expect("open");
        let mut batch = Batch::new();
        batch.put("a", "1");
        let (_, durable) = store.commit(&OBJECT, batch).expect("commit");
        durable.await.expect("durable");
        store.close().await.expect("close");
        drop(store);
        // The one small record fills the first block; the segment was prepared past it.
        let log = path.join("log-0000000000000001");
        let mut bytes = std::fs::read(&log).expect("read log");
        let good = 4096;
        assert!(
            bytes.len() > good,
            "the segment is prepared past its record"
        );
        assert!(
            bytes[good..].iter().all(|byte| *byte == 0),
            "a prepared tail is zeros"
        );
        // A half-written record: a valid-looking block of garbage after the last record.
        bytes[good..good + 4].copy_from_slice(&codec::RECORD_MAGIC.to_le_bytes());
        bytes[good + 4..good + 4096].fill(0xAB);
        std::fs::write(&log, &bytes).expect("write log");

        let store = Store::open(config(&path))
            .await
            .expect("reopen cuts the tail");
        assert_eq!(std::fs::metadata(&log).expect("stat").len(), good as u64);
        assert_eq!(
            store.get(&OBJECT, b"a").await.expect("get"),
            Some(b"1".to_vec())
        );
        store.close().await.expect("close");
    });
}

/// A block written through the real disk reads back, through the same handle and after a
/// reopen, whether or not the file was truncated first (glommio's poll-ring probe once made
/// reads of a freshly created file fail; see `GlommioDisk::probe_iopoll`).
#[test]
fn a_written_block_reads_back_through_the_same_and_a_reopened_handle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let disk = GlommioDisk::new(path.clone());
        for (name, truncate_first) in [("a", false), ("b", true)] {
            let file = disk.open_file(name, true).await.expect("create");
            if truncate_first {
                file.truncate(0).await.expect("truncate");
            }
            file.write_at(0, &[5u8; 4096]).await.expect("write");
            let same = file.read_at(0, 4096).await.expect("read, same handle");
            assert_eq!(same, vec![5u8; 4096], "{name}: same handle");
            drop(file);
            let file = disk.open_file(name, false).await.expect("reopen");
            let reopened = file.read_at(0, 4096).await.expect("read, reopened");
            assert_eq!(reopened, vec![5u8; 4096], "{name}: reopened");
        }
    });
}

/// A fresh state whose next segment id is `next_segment_id`.
fn state_with_next_segment_id(next_segment_id: u64) -> State {
    State {
        index: Index::default(),
        segments: Segments::default(),
        pending: VecDeque::new(),
        next_seq: 1,
        active_segment: 1,
        active_assigned_bytes: 0,
        writer: None,
        next_segment_id,
        manifest: ManifestData::default(),
        stats: StoreStats::default(),
        poisoned: false,
        closed: false,
        compacting: false,
        writing: false,
        preparing: false,
        rounds_in_flight_max: 1,
        undo: Default::default(),
    }
}

#[test]
fn allocation_hands_out_the_largest_segment_id_recovery_accepts() {
    let mut state = state_with_next_segment_id(codec::SEGMENT_ID_MAX);
    assert_eq!(state.allocate_segment_id(), codec::SEGMENT_ID_MAX);
}

#[test]
#[should_panic(expected = "segment ids exhausted")]
fn allocation_stops_past_the_largest_segment_id() {
    let mut state = state_with_next_segment_id(codec::SEGMENT_ID_MAX + 1);
    state.allocate_segment_id();
}
