//! Alarms at scale on one core, against a real store on disk:
//! - memory the scheduler holds per pending alarm with 1 M pending (beyond the store's index),
//! - time to schedule one alarm (the wheel insert that `set_alarm` costs the scheduler),
//! - start-up: time to rebuild the wheel from a store holding 1 M alarms,
//! - lateness p50/p99 when 100 k alarms fall due within the same second, measured at delivery
//!   start (the scheduler's figure) and inside the handler.
//!
//! `cargo bench --bench alarms` (each figure on its own line).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::{LocalExecutorBuilder, Placement};
use stead::alarm::{AlarmScheduler, SchedulerConfig, TimerWheel};
use stead::object::{now_ms, store_limits, ClassRegistry, ObjectHost};
use stead::shutdown::Shutdown;
use stead::{
    AlarmInfo, Config, DurableObject, ObjectContext, ObjectError, ObjectId, Request, Response,
};
use stead_storage::{Batch, Store, StoreConfig};

#[path = "support/counting_allocator.rs"]
mod counting_allocator;

/// Pending alarms for the memory and start-up figures.
const PENDING_ALARMS: usize = 1_000_000;
/// Alarms falling due within one second for the lateness figures.
const DUE_ALARMS: usize = 100_000;
/// Commits between two waits for durability while filling a store.
const COMMITS_PER_WAIT: usize = 8_192;
/// How far ahead the 100 k alarms are set, so that the store is filled and the wheel rebuilt
/// before the first is due.
const DUE_AHEAD_MS: i64 = 6_000;

thread_local! {
    /// Lateness seen inside the handler, in microseconds.
    static HANDLER_LATENESS_MICROS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// A class whose alarm only notes how late it runs.
struct Noop;

impl DurableObject for Noop {
    fn new(_context: ObjectContext) -> Noop {
        Noop
    }

    async fn fetch(&self, _request: Request) -> Result<Response, ObjectError> {
        Ok(Response::not_found())
    }

    async fn alarm(&self, info: AlarmInfo) -> Result<(), ObjectError> {
        let late = wall_clock_micros().saturating_sub(info.scheduled_ms.max(0) as u64 * 1_000);
        HANDLER_LATENESS_MICROS.with(|lateness| lateness.borrow_mut().push(late));
        Ok(())
    }
}

fn noop_id(n: usize) -> ObjectId {
    ObjectId::from_name("noop", &n.to_string())
}

async fn open_store(dir: &std::path::Path, config: &Config) -> Store {
    let mut store_config = StoreConfig::new(dir);
    store_config.limits = store_limits(config);
    Store::open(store_config).await.expect("open store")
}

/// Writes one alarm per object, `time_of(n)` for object `n`, durably.
async fn fill(store: &Store, alarms: usize, time_of: impl Fn(usize) -> i64) {
    let mut last = 0;
    for n in 0..alarms {
        let mut batch = Batch::new();
        batch.set_alarm(time_of(n));
        let (seq, _durable) = store.commit(&noop_id(n).0, batch).expect("commit");
        last = seq;
        if n % COMMITS_PER_WAIT == COMMITS_PER_WAIT - 1 {
            store.wait_durable(seq).await.expect("durable");
        }
    }
    store.wait_durable(last).await.expect("durable");
}

fn host_on(store: Store, config: &Config) -> Rc<ObjectHost> {
    let mut registry = ClassRegistry::new();
    registry.register::<Noop>("noop").expect("register");
    ObjectHost::new(store, Arc::new(registry), Rc::new(config.clone()))
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or(0) as f64 / 1_000.0
}

async fn pending_alarms(dir: &std::path::Path) {
    let config = Config::default();
    let far = now_ms() + 3_600_000;
    let store = open_store(dir, &config).await;
    let started = Instant::now();
    fill(&store, PENDING_ALARMS, |n| {
        far + (n as i64 * 7_919) % 3_600_000
    })
    .await;
    println!(
        "alarms: filled a store with {PENDING_ALARMS} alarms in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    store.close().await.expect("close");

    let started = Instant::now();
    let store = open_store(dir, &config).await;
    println!(
        "alarms: store recovery with {PENDING_ALARMS} alarms: {} ms",
        started.elapsed().as_millis()
    );
    let host = host_on(store, &config);
    let shutdown = Rc::new(Shutdown::new());
    let before = counting_allocator::live_bytes();
    let started = Instant::now();
    let alarms =
        AlarmScheduler::start_with(host.clone(), shutdown.clone(), SchedulerConfig::default());
    let rebuild = started.elapsed();
    let held = counting_allocator::live_bytes() - before;
    assert_eq!(alarms.stats().pending, PENDING_ALARMS);
    println!(
        "alarms: start-up rebuild of the wheel from the store: {} ms for {PENDING_ALARMS} alarms",
        rebuild.as_millis()
    );
    println!(
        "alarms: memory per pending alarm: {:.1} bytes ({held} bytes for {PENDING_ALARMS}, beyond the store's index)",
        held as f64 / PENDING_ALARMS as f64
    );
    shutdown.request();
    host.shutdown().await;

    let ids: Vec<ObjectId> = (0..PENDING_ALARMS).map(noop_id).collect();
    let mut wheel = TimerWheel::new(far as u64);
    let started = Instant::now();
    for (n, id) in ids.iter().enumerate() {
        wheel.insert((far + (n as i64 * 7_919) % 3_600_000) as u64, *id);
    }
    let elapsed = started.elapsed();
    println!(
        "alarms: time to schedule one alarm (wheel insert, {PENDING_ALARMS} pending): {:.1} ns",
        elapsed.as_nanos() as f64 / PENDING_ALARMS as f64
    );
}

async fn due_together(dir: &std::path::Path) {
    let config = Config::default();
    let store = open_store(dir, &config).await;
    let due_at = now_ms() + DUE_AHEAD_MS;
    // 100 alarms in each millisecond of one second.
    fill(&store, DUE_ALARMS, |n| due_at + (n % 1_000) as i64).await;
    let host = host_on(store, &config);
    let shutdown = Rc::new(Shutdown::new());
    let alarms =
        AlarmScheduler::start_with(host.clone(), shutdown.clone(), SchedulerConfig::default());
    let margin = due_at - now_ms();
    assert!(margin > 0, "the setup took longer than DUE_AHEAD_MS");
    let deadline = Instant::now() + Duration::from_millis(margin as u64) + Duration::from_secs(120);
    while alarms.stats().fired_total < DUE_ALARMS as u64 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let finished_ms = now_ms();
    let stats = alarms.stats();
    assert_eq!(stats.fired_total, DUE_ALARMS as u64, "{stats:?}");
    println!("alarms: {DUE_ALARMS} alarms due within one second, all delivered {} ms after the first was due", finished_ms - due_at);
    println!(
        "alarms: lateness at delivery start p50: {:.2} ms",
        stats.lateness_p50_ms
    );
    println!(
        "alarms: lateness at delivery start p99: {:.2} ms",
        stats.lateness_p99_ms
    );
    println!(
        "alarms: lateness at delivery start max: {:.2} ms",
        stats.lateness_max_ms
    );
    let mut handler = HANDLER_LATENESS_MICROS.with(|lateness| lateness.take());
    handler.sort_unstable();
    println!(
        "alarms: lateness inside the handler p50: {:.2} ms",
        quantile(&handler, 0.50)
    );
    println!(
        "alarms: lateness inside the handler p99: {:.2} ms",
        quantile(&handler, 0.99)
    );
    shutdown.request();
    host.shutdown().await;
}

fn main() {
    let pending_dir = tempfile::tempdir().expect("temp dir");
    let due_dir = tempfile::tempdir().expect("temp dir");
    let (pending_path, due_path) = (
        pending_dir.path().to_path_buf(),
        due_dir.path().to_path_buf(),
    );
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .ring_depth(128)
        .spawn(move || async move {
            pending_alarms(&pending_path).await;
            due_together(&due_path).await;
        })
        .expect("executor");
    handle.join().expect("bench executor");
}
