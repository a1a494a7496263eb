//! A store that can no longer write: what reads show after a failed commit, a store created on
//! a full disk, and log records lost between segments.

mod support;

use std::rc::Rc;

use stead_storage::sim::{Fault, FaultKind, OpKind, SimDisk};
use stead_storage::{Batch, Disk, RecoveryMode, Store, StoreError};
use support::{dump, object_id, run, small_config};

fn config() -> stead_storage::StoreConfig {
    small_config(std::path::Path::new("/simulated"))
}

async fn open(disk: Rc<dyn Disk>) -> Store {
    match Store::open_with_disk(config(), disk).await {
        Ok(store) => store,
        Err(error) => panic!("open: {error}"),
    }
}

/// A value past `inline_value_bytes_max` (64 in the small config), so it is read from disk.
fn large(byte: u8) -> Vec<u8> {
    vec![byte; 3000]
}

/// A commit whose fdatasync fails is taken back out of what reads show: every op kind (put
/// over a small and a large value, a new key, a delete, a delete-all, an alarm) reads as it
/// was after the last durable commit, before and after a reopen.
#[test]
fn a_failed_commit_is_not_readable() {
    run(|| async {
        let sim = SimDisk::new(7);
        let store = open(sim.disk()).await;
        let (first, second) = (object_id(1), object_id(2));
        let mut batch = Batch::new();
        batch
            .put("small", "old")
            .put("big", large(1))
            .put("kept", "k");
        batch.set_alarm(5);
        let (_, durable) = store.commit(&first, batch).expect("commit");
        let mut batch = Batch::new();
        batch.put("x", "1");
        let (_, durable_second) = store.commit(&second, batch).expect("commit");
        durable.await.expect("durable");
        durable_second.await.expect("durable");
        let before = dump(&store).await.expect("dump");

        sim.inject(Fault {
            op: Some(OpKind::Fdatasync),
            nth: 0,
            kind: FaultKind::Enospc,
        });
        let mut batch = Batch::new();
        batch
            .put("small", "new")
            .put("big", large(2))
            .put("fresh", "f");
        batch.delete("kept").set_alarm(9);
        let (_, failed) = store.commit(&first, batch).expect("commit");
        let mut batch = Batch::new();
        batch.delete_all().put("y", "2");
        let (_, failed_second) = store.commit(&second, batch).expect("commit");
        // Before the failure, reads see the commits at once.
        assert_eq!(
            store.get(&first, b"small").await.expect("get"),
            Some(b"new".to_vec())
        );
        assert!(failed.await.is_err(), "the sync failed");
        assert!(failed_second.await.is_err(), "same group");

        assert!(store.stats().poisoned);
        let reason = store.write_failure().expect("not writable");
        // The fault hit the sync half of the group's one durable write.
        assert!(reason.contains("durable write"), "{reason}");
        assert_eq!(
            store.get(&first, b"small").await.expect("get"),
            Some(b"old".to_vec())
        );
        assert_eq!(
            store.get(&first, b"big").await.expect("get"),
            Some(large(1))
        );
        assert_eq!(store.get(&first, b"fresh").await.expect("get"), None);
        assert_eq!(
            store.get(&first, b"kept").await.expect("get"),
            Some(b"k".to_vec())
        );
        assert_eq!(store.alarm(&first), Some(5));
        assert_eq!(store.get(&second, b"y").await.expect("get"), None);
        let after = dump(&store).await.expect("dump");
        assert_eq!(
            after,
            before,
            "reads show the durable state: {}",
            before.first_difference(&after)
        );
        assert!(store.stats().keys == 4, "{:?}", store.stats());

        let _ = store.close().await;
        drop(store);
        sim.clear_faults();
        let store = open(sim.disk()).await;
        let reopened = dump(&store).await.expect("dump");
        // The failed batches were written before their fdatasync failed, so a reopen without
        // a power cut may find them, whole; what it must find is everything acknowledged.
        let found_failed = reopened.get(&first, b"fresh").is_some();
        if found_failed {
            assert_eq!(reopened.get(&first, b"small"), Some(b"new".to_vec()));
            assert_eq!(reopened.get(&second, b"y"), Some(b"2".to_vec()));
        } else {
            assert_eq!(reopened, before, "{}", before.first_difference(&reopened));
        }
        store.close().await.expect("close");
    });
}

/// A new store whose MANIFEST cannot be written (a full disk) opens empty and not writable,
/// with the reason; once space is back, the next open creates it.
#[test]
fn a_store_created_on_a_full_disk_opens_unwritable() {
    run(|| async {
        let sim = SimDisk::new(11);
        sim.inject(Fault {
            op: Some(OpKind::Write),
            nth: 0,
            kind: FaultKind::Enospc,
        });
        let store = open(sim.disk()).await;
        let reason = store.write_failure().expect("not writable");
        assert!(reason.contains("MANIFEST"), "{reason}");
        let mut batch = Batch::new();
        batch.put("a", "1");
        assert!(matches!(
            store.commit(&object_id(1), batch),
            Err(StoreError::Poisoned)
        ));
        assert_eq!(store.get(&object_id(1), b"a").await.expect("get"), None);
        assert!(store.objects().is_empty());
        let _ = store.close().await;
        drop(store);

        sim.clear_faults();
        let store = open(sim.disk()).await;
        assert_eq!(store.write_failure(), None);
        let mut batch = Batch::new();
        batch.put("a", "1");
        let (_, durable) = store.commit(&object_id(1), batch).expect("commit");
        durable.await.expect("durable");
        store.close().await.expect("close");
    });
}

/// A log segment file lost between two others leaves a gap in the sequence numbers. A strict
/// open refuses it, naming both sides; a salvage open keeps the rest and rewrites it, so the
/// next strict open succeeds.
#[test]
fn a_lost_log_segment_is_a_sequence_gap() {
    run(|| async {
        let sim = SimDisk::new(13);
        let store = open(sim.disk()).await;
        // 16 KiB segments and 3 KB values: a segment holds about five commits.
        for round in 0..40u8 {
            let mut batch = Batch::new();
            batch.put(vec![round], large(round));
            let (_, durable) = store.commit(&object_id(1), batch).expect("commit");
            durable.await.expect("durable");
        }
        store.close().await.expect("close");
        drop(store);
        let mut logs: Vec<String> = sim
            .names()
            .into_iter()
            .filter(|name| name.starts_with("log-"))
            .collect();
        logs.sort();
        assert!(logs.len() >= 4, "{logs:?}");
        let lost = logs[logs.len() / 2].clone();
        let disk = sim.disk();
        disk.remove(&lost).await.expect("remove");
        disk.sync_dir().await.expect("sync");

        let refused = Store::open_with_disk(config(), sim.disk()).await;
        match refused {
            Err(StoreError::SequenceGap {
                previous_file,
                last_seq,
                file,
                next_seq,
                ..
            }) => {
                assert!(
                    previous_file < lost && lost < file,
                    "{previous_file} {lost} {file}"
                );
                assert!(next_seq > last_seq + 1);
            }
            Err(other) => panic!("expected a sequence gap, got {other}"),
            Ok(_) => panic!("a strict open accepted a log with a segment missing"),
        }

        let mut salvage = config();
        salvage.recovery = RecoveryMode::Salvage;
        let store = Store::open_with_disk(salvage, sim.disk())
            .await
            .expect("salvage open");
        let kept = store.load_object(&object_id(1)).await.expect("load");
        assert!(
            kept.entries.len() < 40 && kept.entries.len() > 20,
            "{}",
            kept.entries.len()
        );
        assert_eq!(kept.entries.get(&vec![0u8]), Some(&large(0)));
        assert_eq!(kept.entries.get(&vec![39u8]), Some(&large(39)));
        store.close().await.expect("close");
        drop(store);
        let store = open(sim.disk()).await;
        store.close().await.expect("close");
    });
}
