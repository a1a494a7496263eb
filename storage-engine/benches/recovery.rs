//! Recovery time for 1 M keys in about 250 MB of log, and the index memory per key after
//! recovery, measured with a counting allocator: first by replaying the log (no compaction
//! yet: the baseline), then after one compaction through the index checkpoint, then with the
//! checkpoint removed (the base segments replayed). Each figure is the median of several
//! opens. Targets: 10 M keys in ≤ 1 s, ≤ 64 bytes per key.
//!
//! `cargo bench -p stead-storage --bench recovery` (`STEAD_RECOVERY_KEYS` for another size,
//! `STEAD_RECOVERY_RUNS` for another number of opens per figure, 5 by default;
//! `STEAD_RECOVERY_DIR` to measure only the checkpoint open of a store filled and compacted
//! by an earlier run, `STEAD_RECOVERY_KEYS` then saying how many keys it holds;
//! `STEAD_RECOVERY_ENCRYPTED=1` for an encrypted store, which keeps no checkpoint)

use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use stead_storage::{Batch, Store, StoreConfig};

/// Counts live heap bytes so the index's footprint can be read off (shared with the root
/// crate's benches).
#[path = "../../benches/support/counting_allocator.rs"]
mod counting_allocator;

/// Key length used: 16 bytes.
const KEY_BYTES: usize = 16;
/// Value length: about 200 bytes, so 1 M keys make about 200 MB of log. Values this size are
/// read from disk (inline_value_bytes_max is below it), so the index holds locations only.
const VALUE_BYTES: usize = 180;

fn keys() -> u64 {
    std::env::var("STEAD_RECOVERY_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn config(path: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(path);
    config.inline_value_bytes_max = 64;
    config.compaction_automatic = false;
    // `STEAD_RECOVERY_ENCRYPTED=1`: an encrypted store (no checkpoint: its open replays).
    if std::env::var("STEAD_RECOVERY_ENCRYPTED").is_ok_and(|value| value == "1") {
        let keys = vec![(1, [7u8; stead_storage::ENCRYPTION_KEY_BYTES])];
        config.encryption = stead_storage::Encryption::new(keys).map(std::sync::Arc::new);
    }
    config
}

fn fill(path: &std::path::Path, keys: u64) {
    let path = path.to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor")
        .run(async move {
            let store = Store::open(config(&path)).await.expect("open");
            let mut pending = Vec::new();
            for n in 0..keys {
                let mut object = [0u8; 32];
                object[..8].copy_from_slice(&(n / 100).to_le_bytes());
                let mut key = [0u8; KEY_BYTES];
                key[..8].copy_from_slice(&n.to_be_bytes());
                let mut batch = Batch::new();
                batch.put(key.to_vec(), vec![n as u8; VALUE_BYTES]);
                let (_, durable) = store.commit(&object, batch).expect("commit");
                pending.push(durable);
                if pending.len() == 4096 {
                    for durable in pending.drain(..) {
                        durable.await.expect("durable");
                    }
                }
            }
            for durable in pending {
                durable.await.expect("durable");
            }
            store.close().await.expect("close");
        });
}

/// Opens the store; returns the time it took, the heap bytes it holds afterwards, and whether
/// it loaded the index checkpoint.
fn recover(path: &std::path::Path) -> (Duration, isize, bool) {
    let path = path.to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor")
        .run(async move {
            let before = counting_allocator::live_bytes();
            let start = Instant::now();
            let store = Store::open(config(&path)).await.expect("open");
            let elapsed = start.elapsed();
            let held = counting_allocator::live_bytes() - before;
            let from_checkpoint = store.stats().recovered_from_checkpoint;
            store.close().await.expect("close");
            (elapsed, held, from_checkpoint)
        })
}

/// Compacts the store once: the log becomes base segments and the index checkpoint.
fn compact(path: &std::path::Path) -> Duration {
    let path = path.to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor")
        .run(async move {
            let store = Store::open(config(&path)).await.expect("open");
            let start = Instant::now();
            store.compact().await.expect("compact");
            let elapsed = start.elapsed();
            store.close().await.expect("close");
            elapsed
        })
}

fn runs() -> usize {
    std::env::var("STEAD_RECOVERY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn directory_bytes(path: &std::path::Path, prefix: &str) -> u64 {
    std::fs::read_dir(path)
        .expect("read dir")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// Opens the store `runs()` times and prints the median time and the heap bytes per key.
fn measure(path: &std::path::Path, keys: u64, what: &str, expect_checkpoint: bool) {
    let mut times = Vec::new();
    let mut held = 0;
    for _ in 0..runs() {
        let (elapsed, bytes, from_checkpoint) = recover(path);
        assert_eq!(from_checkpoint, expect_checkpoint, "{what}");
        times.push(elapsed);
        held = bytes;
    }
    times.sort_unstable();
    let median = times[times.len() / 2];
    println!(
        "recovery: {keys} keys, {what}: median {:.0} ms of {} opens (min {:.0}, max {:.0}); \
         {:.1} heap bytes per key after open ({KEY_BYTES} of them key bytes)",
        median.as_secs_f64() * 1e3,
        times.len(),
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        held as f64 / keys as f64,
    );
}

fn main() {
    let keys = keys();
    if let Ok(path) = std::env::var("STEAD_RECOVERY_DIR") {
        // A store this bench filled and compacted before (its directory kept, say by hard
        // links): only its checkpoint open is measured again, with the code built now.
        measure(
            std::path::Path::new(&path),
            keys,
            "checkpoint (kept store)",
            true,
        );
        return;
    }
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let path = dir.path();
    let started = Instant::now();
    fill(path, keys);
    println!(
        "recovery: filled {keys} keys, {:.0} MB of log, in {:.1} s",
        directory_bytes(path, "log-") as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    // The baseline: no compaction yet, so the whole log is replayed, as before checkpoints.
    measure(path, keys, "log replay (no compaction)", false);
    let took = compact(path);
    println!(
        "recovery: compaction took {:.1} s; {:.0} MB of base segments, checkpoint of {:.0} MB",
        took.as_secs_f64(),
        directory_bytes(path, "base-") as f64 / 1e6,
        directory_bytes(path, "CHECKPOINT") as f64 / 1e6
    );
    if std::env::var("STEAD_RECOVERY_ENCRYPTED").is_ok_and(|value| value == "1") {
        // An encrypted store keeps no checkpoint: its open replays the base segments.
        measure(
            path,
            keys,
            "base segments replayed (encrypted, no checkpoint)",
            false,
        );
        return;
    }
    measure(path, keys, "checkpoint", true);
    let checkpoint = path.join("CHECKPOINT");
    let hidden = path.join("CHECKPOINT.hidden");
    std::fs::rename(&checkpoint, &hidden).expect("hide the checkpoint");
    measure(
        path,
        keys,
        "base segments replayed (checkpoint removed)",
        false,
    );
    std::fs::rename(&hidden, &checkpoint).expect("restore the checkpoint");
}
