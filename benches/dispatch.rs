//! The object dispatch path on one core: `ObjectHost::dispatch` of a built-in counter on a real
//! store in a temporary directory (admission, input gate, the object's `fetch`, the storage
//! write, the output gate and the wait for durability), without HTTP or cross-core hops.
//!
//! criterion's timing loop is synchronous and a glommio executor cannot be entered from it, so
//! each sample runs `iter_custom`: a fresh executor with its own store times `iters`
//! dispatches with `Instant` and hands the elapsed time back; setting up the executor and the
//! store is outside the timed part. criterion's `time` is then the cost per dispatch.
//!
//! - `value`: a read of an active counter, the floor of the path (nothing to make durable).
//! - `increment`: one write at a time, each waiting for its fdatasync (a lone client).
//! - `increment_64_objects`: 64 counters incremented at once, so that writes share their
//!   fdatasync (group commit); the time is per increment.
//!
//! `cargo bench --bench dispatch`

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use glommio::{LocalExecutorBuilder, Placement};
use stead::object::{store_limits, ClassRegistry, ObjectHost};
use stead::objects::register_builtins;
use stead::{Config, Method, ObjectId, Request};
use stead_storage::{Store, StoreConfig};

/// Counters incremented at once in `increment_64_objects`.
const CONCURRENT_OBJECTS: u64 = 64;

/// What a sample dispatches.
#[derive(Clone, Copy)]
enum Workload {
    Value,
    Increment,
    IncrementConcurrently,
}

fn request(path: &str) -> Request {
    Request {
        method: Method::Get,
        path: path.to_string(),
        query: String::new(),
        headers: Vec::new(),
        body: Vec::new(),
        upgrade: None,
    }
}

async fn dispatch_ok(host: &Rc<ObjectHost>, id: ObjectId, path: &str) {
    let response = host.dispatch("counter", id, request(path)).await;
    assert_eq!(
        response.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
}

/// Opens a store in a fresh directory, activates the counters, then times `iters` dispatches.
async fn sample(workload: Workload, iters: u64) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::default();
    let mut store_config = StoreConfig::new(dir.path());
    store_config.limits = store_limits(&config);
    let store = Store::open(store_config).await.expect("open store");
    let mut registry = ClassRegistry::new();
    register_builtins(&mut registry).expect("register");
    let host = ObjectHost::new(store, Arc::new(registry), Rc::new(config));
    let ids: Vec<ObjectId> = (0..CONCURRENT_OBJECTS)
        .map(|n| ObjectId::from_name("counter", &format!("c{n}")))
        .collect();
    for id in &ids {
        dispatch_ok(&host, *id, "/increment").await;
    }
    let started = Instant::now();
    match workload {
        Workload::Value => {
            for _ in 0..iters {
                dispatch_ok(&host, ids[0], "/value").await;
            }
        }
        Workload::Increment => {
            for _ in 0..iters {
                dispatch_ok(&host, ids[0], "/increment").await;
            }
        }
        Workload::IncrementConcurrently => {
            let tasks: Vec<_> = ids
                .iter()
                .enumerate()
                .map(|(n, id)| {
                    let (host, id) = (host.clone(), *id);
                    let share = iters / CONCURRENT_OBJECTS
                        + u64::from((n as u64) < iters % CONCURRENT_OBJECTS);
                    glommio::spawn_local(async move {
                        for _ in 0..share {
                            dispatch_ok(&host, id, "/increment").await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        }
    }
    let elapsed = started.elapsed();
    host.shutdown().await;
    elapsed
}

/// Runs one sample on a fresh glommio executor (small io memory: the locked-memory limit).
fn timed(workload: Workload, iters: u64) -> Duration {
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("dispatch-bench")
        .io_memory(256 * 1024)
        .ring_depth(64)
        .spawn(move || sample(workload, iters))
        .expect("executor")
        .join()
        .expect("bench executor")
}

fn bench_dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    group.sample_size(10);
    group.bench_function("value", |b| {
        b.iter_custom(|iters| timed(Workload::Value, iters))
    });
    group.bench_function("increment", |b| {
        b.iter_custom(|iters| timed(Workload::Increment, iters))
    });
    group.bench_function("increment_64_objects", |b| {
        b.iter_custom(|iters| timed(Workload::IncrementConcurrently, iters))
    });
    group.finish();
}

criterion_group!(benches, bench_dispatch);
criterion_main!(benches);
