//! Point reads: a value held in memory (target ≤ 200 ns) and a value read from disk and
//! verified against its checksum.
//!
//! `cargo bench -p stead-storage --bench read`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use glommio::{LocalExecutorBuilder, Placement};
use stead_storage::{Batch, Store, StoreConfig};

/// Keys in the store while reading; reads pick among them.
const KEYS: u64 = 10_000;

fn object_of(n: u64) -> [u8; 32] {
    let mut object = [0u8; 32];
    object[..8].copy_from_slice(&(n % 100).to_le_bytes());
    object
}

/// Fills a store with `KEYS` values of `value_bytes` each and times `iterations` gets.
fn timed_gets(value_bytes: usize, iterations: u64) -> Duration {
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let path = dir.path().to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor")
        .run(async move {
            let mut config = StoreConfig::new(&path);
            config.inline_value_bytes_max = 256;
            let store = Store::open(config).await.expect("open");
            let mut last = None;
            for n in 0..KEYS {
                let mut batch = Batch::new();
                batch.put(n.to_be_bytes().to_vec(), vec![n as u8; value_bytes]);
                let (_, durable) = store.commit(&object_of(n), batch).expect("commit");
                last = Some(durable);
            }
            if let Some(durable) = last {
                durable.await.expect("durable");
            }
            let start = Instant::now();
            for i in 0..iterations {
                let n = i.wrapping_mul(7919) % KEYS;
                let value = store
                    .get(&object_of(n), &n.to_be_bytes())
                    .await
                    .expect("get");
                assert_eq!(value.map(|v| v.len()), Some(value_bytes));
            }
            let elapsed = start.elapsed();
            store.close().await.expect("close");
            elapsed
        })
}

fn bench_reads(c: &mut Criterion) {
    let mut group = c.benchmark_group("point_read");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    group.bench_function("in_memory_100B", |b| b.iter_custom(|n| timed_gets(100, n)));
    group.bench_function("on_disk_4KiB", |b| b.iter_custom(|n| timed_gets(4096, n)));
    group.finish();
}

criterion_group!(benches, bench_reads);
criterion_main!(benches);
