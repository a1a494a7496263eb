//! A snapshot holds every object as of one sequence number, whatever is written, deleted and
//! compacted after it: values in memory and values on disk (whose segment compaction removes).

mod real_disk;

use real_disk::{run, small_config};
use stead_storage::{Batch, Store};

#[test]
fn a_snapshot_keeps_its_state_through_later_writes_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = Store::open(small_config(&path)).await.expect("open");
        // Small values stay in memory; 4 KiB ones are read from disk.
        for object in 0..20u8 {
            let mut batch = Batch::new();
            batch.put(b"small".to_vec(), vec![object; 8]);
            batch.put(b"large".to_vec(), vec![object; 4096]);
            if object % 3 == 0 {
                batch.set_alarm(1_000 + i64::from(object));
            }
            let (seq, _) = store.commit(&[object; 32], batch).expect("commit");
            store.wait_durable(seq).await.expect("durable");
        }
        let mut snapshot = store.snapshot().expect("snapshot");
        assert_eq!(snapshot.objects_left(), 20);
        assert_eq!(snapshot.seq(), store.last_seq());
        // After the snapshot: every object changed or deleted, then compacted away.
        for object in 0..20u8 {
            let mut batch = Batch::new();
            if object % 2 == 0 {
                batch.delete_all().delete_alarm();
            } else {
                batch.put(b"large".to_vec(), vec![0xEE; 4096]);
                batch.put(b"new".to_vec(), b"x".to_vec());
            }
            let (seq, _) = store.commit(&[object; 32], batch).expect("commit");
            store.wait_durable(seq).await.expect("durable");
        }
        store.compact().await.expect("compact");
        let mut seen = 0u8;
        while let Some(next) = snapshot.next_object().await {
            let (id, data) = next.expect("read");
            let object = id[0];
            assert_eq!(object, seen, "in id order");
            assert_eq!(data.entries.len(), 2, "object {object}");
            assert_eq!(data.entries[b"small".as_slice()], vec![object; 8]);
            assert_eq!(data.entries[b"large".as_slice()], vec![object; 4096]);
            let alarm = (object % 3 == 0).then(|| 1_000 + i64::from(object));
            assert_eq!(data.alarm_ms, alarm);
            seen += 1;
        }
        assert_eq!(seen, 20);
        store.close().await.expect("close");
    });
}
