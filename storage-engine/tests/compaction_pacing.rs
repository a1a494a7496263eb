//! Compaction's trigger counts record bytes, not the blocks they are padded to, and recovery
//! counts the same figure; and compaction leaves the core to other tasks while it works.

mod real_disk;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use real_disk::{run, RECORD_HEADER_BYTES};

/// `real_disk::small_config`, always plain: these tests write or read the plain record format
/// byte by byte (the encrypted format's damage is in `tests/encryption.rs`).
fn small_config(dir: &std::path::Path) -> stead_storage::StoreConfig {
    let mut config = real_disk::small_config(dir);
    config.encryption = None;
    config
}

use stead_storage::{Batch, ObjectId, Store, StoreStats};

const OBJECT: ObjectId = [7u8; 32];

/// Bytes of a batch holding one put, before the put: object id and op count.
const BATCH_HEADER_BYTES: u64 = 32 + 4;
/// Bytes of a put before its key and value: tag, key length, value length, value crc.
const PUT_HEADER_BYTES: u64 = 13;

/// The record of one group commit holding one put of `key` and `value`, without padding.
fn one_put_record_bytes(key: &[u8], value: &[u8]) -> u64 {
    RECORD_HEADER_BYTES as u64
        + BATCH_HEADER_BYTES
        + PUT_HEADER_BYTES
        + (key.len() + value.len()) as u64
}

async fn put_durably(store: &Store, key: &[u8], value: &[u8]) {
    let mut batch = Batch::new();
    batch.put(key, value);
    let (_, durable) = store.commit(&OBJECT, batch).expect("commit");
    durable.await.expect("durable");
}

/// The figures that recovery must rebuild exactly.
fn figures(stats: &StoreStats) -> (u64, u64, u64) {
    (stats.live_bytes, stats.dead_bytes, stats.disk_bytes)
}

/// Many tiny group commits, each padded to a 4 KiB block: the padding alone passes the
/// threshold many times over, and must not start a compaction; the payload passing it must.
#[test]
fn padding_does_not_count_toward_compaction() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = small_config(dir.path());
        config.segment_bytes_max = 64 * 1024 * 1024;
        config.compaction_automatic = true;
        config.compaction_dead_bytes_min = 32 * 1024;
        config.compaction_dead_percent_min = 50;
        let (key, value) = (b"k".as_slice(), [1u8; 8]);
        let record = one_put_record_bytes(key, &value);
        let live = PUT_HEADER_BYTES + (key.len() + value.len()) as u64;

        let store = Store::open(config.clone()).await.expect("open");
        // Each commit is awaited, so each is a round of its own: one record, one block.
        let commits = 200u64;
        for _ in 0..commits {
            put_durably(&store, key, &value).await;
        }
        let stats = store.stats();
        assert_eq!(
            stats.disk_bytes,
            commits * 4096,
            "every round takes a block"
        );
        assert!(stats.disk_bytes > 20 * config.compaction_dead_bytes_min);
        assert_eq!(stats.live_bytes, live);
        assert_eq!(
            stats.dead_bytes,
            commits * record - live,
            "padding is not dead bytes"
        );
        assert_eq!(stats.compactions_total, 0, "padding started a compaction");

        // A reopen counts what the live store counted.
        let before = figures(&stats);
        store.close().await.expect("close");
        let store = Store::open(config.clone()).await.expect("reopen");
        assert_eq!(
            figures(&store.stats()),
            before,
            "recovery counts another figure"
        );

        // Now the payload itself: compaction starts once the dead record bytes pass the
        // threshold, and not before.
        let mut commits_after = 0;
        loop {
            put_durably(&store, key, &value).await;
            commits_after += 1;
            let stats = store.stats();
            if stats.compactions_total > 0 {
                break;
            }
            if stats.dead_bytes < config.compaction_dead_bytes_min {
                continue;
            }
            // Due: the writer starts it after the round; give it time to finish.
            let deadline = Instant::now() + Duration::from_secs(10);
            while store.stats().compactions_total == 0 && Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(store.stats().compactions_total, 1, "due, yet no compaction");
            break;
        }
        let needed = config.compaction_dead_bytes_min / record;
        assert!(
            commits + commits_after >= needed,
            "compacted after {} commits, before the payload passed the threshold ({needed})",
            commits + commits_after
        );
        let stats = store.stats();
        assert!(stats.dead_bytes < config.compaction_dead_bytes_min);
        let before = figures(&stats);
        store.close().await.expect("close");
        let store = Store::open(config).await.expect("reopen");
        assert_eq!(
            figures(&store.stats()),
            before,
            "recovery after a compaction counts another figure"
        );
        assert_eq!(
            store.get(&OBJECT, key).await.expect("get"),
            Some(value.to_vec())
        );
        store.close().await.expect("close");
    });
}

/// A compaction of many small keys has no I/O to wait on for long stretches; it must still
/// let the executor serve its other tasks (here a 1 ms timer, as the server's stall probe and
/// every socket depend on) every millisecond or so, not once it is done.
#[test]
fn compaction_yields_to_other_tasks() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = small_config(dir.path());
        config.segment_bytes_max = 64 * 1024 * 1024;
        config.inline_value_bytes_max = 256;
        let store = Store::open(config).await.expect("open");
        // 2 000 objects of 100 keys: a compaction of 200 000 keys takes well over the gap
        // allowed below on any machine this runs on, with only ~1 MiB writes to wait on.
        let mut last = None;
        for object in 0..2000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&object.to_le_bytes());
            let mut batch = Batch::new();
            for key in 0..100u32 {
                batch.put(key.to_be_bytes().to_vec(), object.to_le_bytes().to_vec());
            }
            last = Some(store.commit(&id, batch).expect("commit").1);
        }
        last.expect("committed").await.expect("durable");

        let running = Rc::new(Cell::new(true));
        let ticks = Rc::new(Cell::new(0u64));
        let longest = Rc::new(Cell::new(Duration::ZERO));
        let ticker = glommio::spawn_local({
            let (running, ticks, longest) = (running.clone(), ticks.clone(), longest.clone());
            async move {
                while running.get() {
                    let asked = Instant::now();
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    longest.set(longest.get().max(asked.elapsed()));
                    ticks.set(ticks.get() + 1);
                }
            }
        });
        // Let the ticker start, so its first gap is measured from inside the compaction.
        glommio::timer::sleep(Duration::from_millis(2)).await;
        let (ticks_before, started) = (ticks.get(), Instant::now());
        longest.set(Duration::ZERO);
        store.compact().await.expect("compact");
        let took = started.elapsed();
        running.set(false);
        ticker.await;
        let stats = store.stats();
        assert_eq!(stats.compactions_total, 1);
        assert_eq!(stats.keys, 200_000);
        let ticked = ticks.get() - ticks_before;
        eprintln!(
            "compaction of 200 000 keys took {took:?}; the 1 ms ticker ran {ticked} times, \
             longest gap {:?}",
            longest.get()
        );
        // The bound leaves room for a loaded test machine descheduling the thread; without
        // the yields the gap is the whole compaction or the 100 ms preempt timer.
        assert!(
            longest.get() < Duration::from_millis(40),
            "a 1 ms timer waited {:?} during a compaction of {took:?}",
            longest.get()
        );
        assert!(
            ticked as u128 * 5 >= took.as_millis(),
            "the ticker ran {ticked} times in a compaction of {took:?}"
        );
        store.close().await.expect("close");
    });
}
