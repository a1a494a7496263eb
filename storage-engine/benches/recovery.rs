//! Recovery time for 1 M keys in about 200 MB of log (target ≤ 1 s), and the index memory per
//! key after recovery (target ≤ 64 bytes + key length), measured with a counting allocator.
//!
//! `cargo bench -p stead-storage --bench recovery` (set `STEAD_RECOVERY_KEYS` for another size)

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
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

/// Opens the store; returns the time it took and the heap bytes it holds afterwards.
fn recover(path: &std::path::Path) -> (Duration, isize) {
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
            store.close().await.expect("close");
            (elapsed, held)
        })
}

fn bench_recovery(c: &mut Criterion) {
    let keys = keys();
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    fill(dir.path(), keys);
    let log_bytes: u64 = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|metadata| metadata.len())
        .sum();
    let (_, held) = recover(dir.path());
    println!(
        "recovery: {keys} keys, {:.0} MB of log; store holds {held} heap bytes after open = {:.1} bytes per key ({} of them key bytes)",
        log_bytes as f64 / 1e6,
        held as f64 / keys as f64,
        KEY_BYTES
    );
    let mut group = c.benchmark_group("recovery");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function(format!("open_{keys}_keys"), |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| recover(dir.path()).0).sum())
    });
    group.finish();
}

criterion_group!(benches, bench_recovery);
criterion_main!(benches);
