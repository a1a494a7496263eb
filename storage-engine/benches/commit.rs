//! Durable commits per second with 1, 8, 64 and 512 concurrent committers of one 100-byte put
//! each, and the commits per fdatasync that group commit reaches. With the `sqlite-compare`
//! feature, SQLite (WAL, synchronous=FULL) runs the same workload in the same run.
//!
//! `cargo bench -p stead-storage --features sqlite-compare --bench commit`

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};
use stead_storage::{Batch, Store, StoreConfig};

const COMMITTERS: [usize; 4] = [1, 8, 64, 512];
const VALUE: [u8; 100] = [7; 100];

/// Runs `iterations` durable commits spread over `committers` tasks; returns the elapsed time
/// and the commits per fdatasync reached.
fn stead_commits(dir: &std::path::Path, committers: usize, iterations: u64) -> (Duration, f64) {
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor")
        .run(async move {
            let store = Store::open(StoreConfig::new(&dir)).await.expect("open");
            let before = store.stats();
            let remaining = Rc::new(Cell::new(iterations));
            let start = Instant::now();
            let tasks: Vec<_> = (0..committers)
                .map(|committer| {
                    let store = store.clone();
                    let remaining = remaining.clone();
                    glommio::spawn_local(async move {
                        let mut object = [0u8; 32];
                        object[..8].copy_from_slice(&(committer as u64).to_le_bytes());
                        while remaining.get() > 0 {
                            remaining.set(remaining.get() - 1);
                            let mut batch = Batch::new();
                            batch.put(b"key".to_vec(), VALUE.to_vec());
                            let (_, durable) = store.commit(&object, batch).expect("commit");
                            durable.await.expect("durable");
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            let elapsed = start.elapsed();
            let after = store.stats();
            store.close().await.expect("close");
            let commits = (after.commits_total - before.commits_total) as f64;
            let syncs = (after.fdatasyncs_total - before.fdatasyncs_total).max(1) as f64;
            (elapsed, commits / syncs)
        })
}

fn bench_stead(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable_commit/stead");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for committers in COMMITTERS {
        let dir = tempfile::tempdir_in(".").expect("tempdir");
        group.throughput(Throughput::Elements(1));
        let mut ratio = 0.0;
        group.bench_function(BenchmarkId::from_parameter(committers), |b| {
            b.iter_custom(|iterations| {
                let (elapsed, per_sync) = stead_commits(dir.path(), committers, iterations);
                ratio = per_sync;
                elapsed
            })
        });
        println!("stead: {committers} committers: {ratio:.1} commits per fdatasync (last sample)");
    }
    group.finish();
}

#[cfg(feature = "sqlite-compare")]
fn bench_sqlite(c: &mut Criterion) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let mut group = c.benchmark_group("durable_commit/sqlite");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for committers in COMMITTERS {
        let dir = tempfile::tempdir_in(".").expect("tempdir");
        let path = dir.path().join("bench.sqlite");
        let setup = rusqlite::Connection::open(&path).expect("open sqlite");
        setup
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
                 CREATE TABLE IF NOT EXISTS kv (object INTEGER, key BLOB, value BLOB,
                 PRIMARY KEY (object, key));",
            )
            .expect("schema");
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(committers), |b| {
            b.iter_custom(|iterations| {
                let remaining = Arc::new(AtomicU64::new(iterations));
                let start = Instant::now();
                let threads: Vec<_> = (0..committers)
                    .map(|committer| {
                        let remaining = remaining.clone();
                        let path = path.clone();
                        std::thread::spawn(move || {
                            let connection = rusqlite::Connection::open(&path).expect("open");
                            connection
                                .execute_batch("PRAGMA synchronous=FULL;")
                                .expect("pragma");
                            connection
                                .busy_timeout(Duration::from_secs(60))
                                .expect("busy");
                            while remaining
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                            {
                                connection
                                    .execute(
                                        "INSERT OR REPLACE INTO kv VALUES (?1, ?2, ?3)",
                                        rusqlite::params![
                                            committer as i64,
                                            b"key".as_slice(),
                                            VALUE.as_slice()
                                        ],
                                    )
                                    .expect("insert");
                            }
                        })
                    })
                    .collect();
                for thread in threads {
                    thread.join().expect("sqlite committer");
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

#[cfg(not(feature = "sqlite-compare"))]
fn bench_sqlite(_: &mut Criterion) {
    println!("SQLite comparison skipped: run with --features sqlite-compare");
}

criterion_group!(benches, bench_stead, bench_sqlite);
criterion_main!(benches);
