//! What the connections of one bench executor share: the run's time line, the outcome of a
//! request, and the executor's figures. Both the executor (which builds it) and each connection
//! (which records into it) depend on this module, and not on each other.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

use super::args::Plan;
use super::client::RequestEncoder;
use super::schedule::Budget;
use super::stats::{micros, Live, Stats};

/// The run's time line, the same on every executor.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Time zero: the warm-up starts.
    pub start: Instant,
    /// Requests meant to leave before this are warm-up, not measured.
    pub measure_start: Instant,
    /// No request is meant to leave at or after this (`--duration` runs); None for
    /// `--requests` runs.
    pub end: Option<Instant>,
}

impl Clock {
    /// May a request meant to leave at `start` be sent? Takes it from the budget if so.
    pub fn claim(&self, shared: &Shared, start: Instant) -> bool {
        self.claim_from(&shared.budget, start)
    }

    /// [`Clock::claim`] against `budget` (a `chat-fanout` sender's own share).
    pub fn claim_from(&self, budget: &Budget, start: Instant) -> bool {
        if start < self.measure_start {
            return true;
        }
        match self.end {
            Some(end) => start < end,
            None => budget.claim(),
        }
    }

    /// True when no more requests are to be sent.
    pub fn is_over(&self, shared: &Shared, now: Instant) -> bool {
        match self.end {
            Some(end) => now >= end,
            None => shared.budget.is_spent(),
        }
    }
}

/// How one request (or connect) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// A chat message read by a member (`chat-fanout`), timed from its send time.
    Delivered,
    ConnectFailed,
    Timeout,
    Closed,
    Io,
    Protocol,
}

/// What the connections of one executor share.
pub struct Shared {
    /// The run's settings.
    pub plan: Plan,
    /// Where to connect.
    pub addr: SocketAddr,
    /// For https://: each connection's TLS session.
    pub tls: Option<super::args::TargetTls>,
    /// Encodes the scenario's requests for the target.
    pub encoder: RequestEncoder,
    /// This executor's share of a `--requests` run.
    pub budget: Budget,
    /// The time line, known once every executor is ready.
    pub clock: Cell<Option<Clock>>,
    /// This executor's figures.
    pub stats: RefCell<Stats>,
    /// Latencies since the last flush to `live`.
    pub recent: RefCell<Histogram<u64>>,
    /// The figures of the progress line.
    pub live: Arc<Live>,
    /// `chat-fanout`: messages sent so far by each room's sender, shared by every executor
    /// (empty for the other scenarios).
    pub room_sent: Arc<[AtomicU64]>,
}

impl Shared {
    /// Counts one outcome of a request meant to leave at `start` and ended at `now`.
    pub fn record(&self, start: Instant, now: Instant, outcome: Outcome) {
        let mut stats = self.stats.borrow_mut();
        if outcome == Outcome::ConnectFailed {
            stats.failures.connect += 1;
            self.live
                .errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let measured = self
            .clock
            .get()
            .is_some_and(|clock| start >= clock.measure_start);
        if !measured {
            stats.warmup_requests += 1;
            return;
        }
        stats.last_completion = Some(stats.last_completion.map_or(now, |last| last.max(now)));
        let error = match outcome {
            Outcome::Delivered => {
                let latency = micros(now.saturating_duration_since(start));
                stats.histogram.saturating_record(latency);
                self.recent.borrow_mut().saturating_record(latency);
                stats.deliveries += 1;
                false
            }
            Outcome::Status(status) => {
                let latency = micros(now.saturating_duration_since(start));
                stats.histogram.saturating_record(latency);
                self.recent.borrow_mut().saturating_record(latency);
                *stats.statuses.entry(status).or_insert(0) += 1;
                !(200..300).contains(&status)
            }
            Outcome::Timeout => {
                stats.failures.timeout += 1;
                true
            }
            Outcome::Closed => {
                stats.failures.closed += 1;
                true
            }
            Outcome::Io => {
                stats.failures.io += 1;
                true
            }
            Outcome::Protocol | Outcome::ConnectFailed => {
                stats.failures.protocol += 1;
                true
            }
        };
        self.live.add_completed(error);
    }

    /// Counts a chat message sent at `start`, if it is measured.
    pub fn count_sent(&self, start: Instant) {
        if self
            .clock
            .get()
            .is_some_and(|clock| start >= clock.measure_start)
        {
            self.stats.borrow_mut().messages_sent += 1;
        }
    }

    /// Counts `lost` chat messages that a member never read (warm-up ones included: a message
    /// lost is an error whenever it was sent).
    pub fn record_lost(&self, lost: u64) {
        if lost == 0 {
            return;
        }
        self.stats.borrow_mut().failures.lost += lost;
        self.live
            .errors
            .fetch_add(lost, std::sync::atomic::Ordering::Relaxed);
    }
}
