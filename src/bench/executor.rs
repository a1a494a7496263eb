//! The bench's own glommio executors: each runs its share of the connections and keeps its own
//! figures; the main thread starts them together and merges their figures at the end.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use super::args::{Plan, Stop, Target};
use super::chat;
use super::client::RequestEncoder;
use super::connection;
use super::error::BenchError;
use super::schedule::{share, Budget};
use super::shared::{Clock, Shared};
use super::stats::{new_histogram, Live, Stats};

/// io_uring buffer memory per executor: small, since glommio locks it and the limit is low.
const IO_MEMORY_BYTES: usize = 512 * 1024;
/// io_uring submission queue depth per executor.
const RING_DEPTH: usize = 256;
/// How often each executor adds its latest latencies to the live figures.
const LIVE_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Extra time, past the connect timeout, that the executors get to become ready.
const READY_SLACK: Duration = Duration::from_secs(10);
/// Time between the executors being ready and the first request, so they all start together.
const START_DELAY: Duration = Duration::from_millis(2);

/// Runs the plan on its executors and returns the merged figures and the start of the measured
/// interval.
pub fn run_load(
    plan: &Plan,
    target: &Target,
    live: Arc<Live>,
) -> Result<(Stats, Instant), BenchError> {
    let executors = plan.cores.len() as u64;
    let encoder = RequestEncoder::new(target, plan.auth_token.as_deref());
    let (ready_sender, ready_receiver) = mpsc::channel::<()>();
    let rooms = plan.scenario.chat_rooms().unwrap_or(0);
    let room_sent: Arc<[AtomicU64]> = (0..rooms).map(|_| AtomicU64::new(0)).collect();
    let mut clock_senders = Vec::new();
    let mut handles = Vec::new();
    for (executor, core) in (0..executors).zip(&plan.cores) {
        let (clock_sender, clock_receiver) = mpsc::channel::<Clock>();
        let indexes: Vec<u64> = (0..plan.connections as u64)
            .filter(|index| index % executors == executor)
            .collect();
        // A chat-fanout run's requests are its senders' messages: each sender keeps its own
        // share (`chat::run`).
        let budget = match (plan.stop, plan.scenario.chat_rooms()) {
            (Stop::Requests(requests), None) => Some(share(requests, executors, executor)),
            (Stop::Requests(_), Some(_)) | (Stop::Duration(_), _) => None,
        };
        let shared = SharedParts {
            plan: plan.clone(),
            addr: target.addr,
            tls: target.tls.clone(),
            encoder: encoder.clone(),
            budget,
            live: live.clone(),
            room_sent: room_sent.clone(),
        };
        let ready = ready_sender.clone();
        let placement = core.map(Placement::Fixed).unwrap_or(Placement::Unbound);
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("stead-bench-{executor}"))
            .io_memory(IO_MEMORY_BYTES)
            .ring_depth(RING_DEPTH)
            .spawn(move || executor_main(shared, indexes, ready, clock_receiver))
            .map_err(|error| BenchError::Executor(error.to_string()))?;
        clock_senders.push(clock_sender);
        handles.push(handle);
    }
    drop(ready_sender);
    let waited = Instant::now();
    let ready_timeout = plan.timeout + READY_SLACK;
    for _ in 0..executors {
        let left = ready_timeout.saturating_sub(waited.elapsed());
        if ready_receiver.recv_timeout(left).is_err() {
            // Dropping the clock senders tells the executors that are waiting to stop.
            drop(clock_senders);
            for handle in handles {
                if let Err(error) = handle.join() {
                    return Err(BenchError::Executor(error.to_string()));
                }
            }
            return Err(BenchError::StartTimedOut {
                waited_ms: waited.elapsed().as_millis() as u64,
            });
        }
    }
    let start = Instant::now() + START_DELAY;
    let measure_start = start + plan.warmup;
    let end = match plan.stop {
        Stop::Duration(duration) => Some(measure_start + duration),
        Stop::Requests(_) => None,
    };
    let clock = Clock {
        start,
        measure_start,
        end,
    };
    for sender in &clock_senders {
        let _ = sender.send(clock);
    }
    let mut stats = Stats::default();
    for handle in handles {
        let executor_stats = handle
            .join()
            .map_err(|error| BenchError::Executor(error.to_string()))?;
        stats.merge(&executor_stats);
    }
    let sent: Vec<u64> = room_sent
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .collect();
    stats.failures.lost += chat::lost_by_failed_members(&sent, &stats.failed_members);
    Ok((stats, measure_start))
}

/// A connection's first socket: a plain one (None if its connect failed), or a chat member that
/// joined its room (None if it could not).
enum First {
    Socket(Option<Box<dyn connection::Duplex>>),
    Member(Option<chat::Joined>),
}

/// What an executor thread is handed (all `Send`); it builds its `Shared` from it.
struct SharedParts {
    plan: Plan,
    addr: SocketAddr,
    tls: Option<super::args::TargetTls>,
    encoder: RequestEncoder,
    budget: Option<u64>,
    live: Arc<Live>,
    room_sent: Arc<[AtomicU64]>,
}

async fn executor_main(
    parts: SharedParts,
    indexes: Vec<u64>,
    ready: mpsc::Sender<()>,
    clock: mpsc::Receiver<Clock>,
) -> Stats {
    let shared = Rc::new(Shared {
        plan: parts.plan,
        addr: parts.addr,
        tls: parts.tls,
        encoder: parts.encoder,
        budget: Budget::new(parts.budget),
        clock: Cell::new(None),
        stats: RefCell::new(Stats::default()),
        recent: RefCell::new(new_histogram()),
        live: parts.live,
        room_sent: parts.room_sent,
    });
    // Connect every connection first (and join every chat member to its room), so that
    // connecting is not part of the measurement.
    let rooms = shared.plan.scenario.chat_rooms();
    let connects: Vec<_> = indexes
        .iter()
        .map(|index| {
            let (shared, index) = (shared.clone(), *index);
            glommio::spawn_local(async move {
                match rooms {
                    Some(rooms) => First::Member(chat::join(&shared, index, rooms).await),
                    None => First::Socket(connection::connect(&shared).await),
                }
            })
        })
        .collect();
    let mut firsts = Vec::with_capacity(connects.len());
    for connect in connects {
        firsts.push(connect.await);
    }
    let _ = ready.send(());
    // Blocking this thread is fine: nothing runs on it until the start.
    let Ok(clock) = clock.recv() else {
        return shared.stats.take();
    };
    shared.clock.set(Some(clock));
    // Every executor starts at the same instant; a request sent earlier would count as warm-up.
    let now = Instant::now();
    if clock.start > now {
        glommio::timer::sleep(clock.start - now).await;
    }
    let done = Rc::new(Cell::new(false));
    let flusher = {
        let (shared, done) = (shared.clone(), done.clone());
        glommio::spawn_local(async move {
            while !done.get() {
                glommio::timer::sleep(LIVE_FLUSH_INTERVAL).await;
                shared.live.flush(&mut shared.recent.borrow_mut());
            }
        })
    };
    let tasks: Vec<_> = firsts
        .into_iter()
        .zip(indexes)
        .map(|(first, index)| {
            let shared = shared.clone();
            glommio::spawn_local(async move {
                match (first, rooms) {
                    (First::Socket(first), _) => {
                        connection::run(shared, clock, index, first).await;
                    }
                    (First::Member(Some(joined)), Some(rooms)) => {
                        chat::run(&shared, clock, index, rooms, joined).await;
                    }
                    (First::Member(_), _) => {}
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    done.set(true);
    drop(flusher);
    shared.live.flush(&mut shared.recent.borrow_mut());
    let mut stats = shared.stats.take();
    stats.unsent = shared.budget.left();
    stats
}
