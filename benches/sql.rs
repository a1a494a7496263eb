//! Point `SELECT` by primary key in an active object, on a real store in a temporary directory.
//!
//! The object's table holds `ROWS` rows (id, 100-byte text); its database is in memory once the
//! object is active, as every active object's is.
//!
//! - `point_select_in_handler`: the cost of one `sql().exec("SELECT v FROM t WHERE id = ?")`
//!   and reading its row, timed inside one handler that runs `iters` of them (the target is
//!   ≤ 5 µs).
//! - `dispatch_point_select`: `ObjectHost::dispatch` of a request whose handler runs one point
//!   select: the whole path on one core without HTTP, beside the `dispatch/value` baseline of
//!   `benches/dispatch.rs` (a key-value read).
//!
//! Each sample runs on a fresh glommio executor (criterion's loop cannot enter one), with the
//! set-up outside the timed part. `cargo bench --bench sql`

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use glommio::{LocalExecutorBuilder, Placement};
use stead::object::{
    store_limits, ClassRegistry, DurableObject, ObjectContext, ObjectError, ObjectHost, SqlError,
};
use stead::{Config, Method, ObjectId, Request, Response};
use stead_storage::{Store, StoreConfig};

/// Rows of the benchmark table.
const ROWS: i64 = 10_000;

/// A class with one table, answering point selects.
struct Lookup {
    context: ObjectContext,
}

impl Lookup {
    fn select(&self, id: i64) -> Result<usize, ObjectError> {
        let row = self
            .context
            .storage()
            .sql()
            .exec("SELECT v FROM t WHERE id = ?", &[id.into()])?
            .one()?;
        Ok(row.get_str("v")?.len())
    }
}

impl DurableObject for Lookup {
    fn new(context: ObjectContext) -> Lookup {
        Lookup { context }
    }

    async fn init(&self) -> Result<(), ObjectError> {
        let storage = self.context.storage();
        let sql = storage.sql();
        sql.exec(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)",
            &[],
        )?;
        storage.transaction_sync(|| {
            for id in 0..ROWS {
                sql.exec(
                    "INSERT OR REPLACE INTO t VALUES (?, ?)",
                    &[id.into(), "v".repeat(100).into()],
                )?;
            }
            Ok::<(), SqlError>(())
        })?;
        Ok(())
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let count: i64 = request.query.parse().unwrap_or(1);
        let started = Instant::now();
        let mut bytes = 0;
        for n in 0..count {
            bytes += self.select(n.wrapping_mul(7919).rem_euclid(ROWS))?;
        }
        let elapsed = started.elapsed().as_nanos();
        if bytes != count as usize * 100 {
            return Err(ObjectError::new("a row was missing"));
        }
        Ok(Response::text(200, elapsed.to_string()))
    }
}

fn request(count: u64) -> Request {
    Request {
        method: Method::Get,
        path: "/".to_string(),
        query: count.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
        upgrade: None,
    }
}

/// What a sample times.
#[derive(Clone, Copy)]
enum Workload {
    /// `iters` selects inside one handler, timed by the handler.
    InHandler,
    /// `iters` dispatches of one select each.
    Dispatch,
}

async fn sample(workload: Workload, iters: u64) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::default();
    let mut store_config = StoreConfig::new(dir.path());
    store_config.limits = store_limits(&config);
    let store = Store::open(store_config).await.expect("open store");
    let mut registry = ClassRegistry::new();
    registry.register::<Lookup>("lookup").expect("register");
    let host = ObjectHost::new(store, Arc::new(registry), Rc::new(config));
    let id = ObjectId::from_name("lookup", "bench");
    // Activates the object (creating its rows) outside the timed part.
    let warm = host.dispatch("lookup", id, request(1)).await;
    assert_eq!(warm.status, 200, "{}", String::from_utf8_lossy(&warm.body));
    let elapsed = match workload {
        Workload::InHandler => {
            let response = host.dispatch("lookup", id, request(iters)).await;
            let nanos: u64 = std::str::from_utf8(&response.body)
                .ok()
                .and_then(|text| text.parse().ok())
                .expect("elapsed nanoseconds");
            Duration::from_nanos(nanos)
        }
        Workload::Dispatch => {
            let started = Instant::now();
            for _ in 0..iters {
                let response = host.dispatch("lookup", id, request(1)).await;
                assert_eq!(response.status, 200);
            }
            started.elapsed()
        }
    };
    host.shutdown().await;
    elapsed
}

fn timed(workload: Workload, iters: u64) -> Duration {
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("sql-bench")
        .io_memory(256 * 1024)
        .ring_depth(64)
        .spawn(move || sample(workload, iters))
        .expect("executor")
        .join()
        .expect("bench executor")
}

fn bench_sql(c: &mut Criterion) {
    let mut group = c.benchmark_group("sql");
    group.sample_size(10);
    group.bench_function("point_select_in_handler", |b| {
        b.iter_custom(|iters| timed(Workload::InHandler, iters))
    });
    group.bench_function("dispatch_point_select", |b| {
        b.iter_custom(|iters| timed(Workload::Dispatch, iters))
    });
    group.finish();
}

criterion_group!(benches, bench_sql);
criterion_main!(benches);
