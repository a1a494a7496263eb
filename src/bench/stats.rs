//! What one executor counts during a run, merged into one at the end; and the few shared
//! counters behind the live progress line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Largest latency the histograms hold, in microseconds (one hour); larger ones saturate.
const LATENCY_MICROS_MAX: u64 = 3_600_000_000;
/// Significant decimal digits the histograms keep.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in microseconds, 1 µs to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Requests and connects that failed without a status code, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Failures {
    /// Connects that failed or timed out (these are not requests).
    pub connect: u64,
    /// Requests with no response within `--timeout`.
    pub timeout: u64,
    /// Requests whose connection was closed (or said `Connection: close`) before the response.
    pub closed: u64,
    /// Requests whose connection failed with a socket error.
    pub io: u64,
    /// Requests answered with bytes that are not a valid HTTP/1.1 response (`chat-fanout`: a
    /// member's socket that carried an invalid frame).
    pub protocol: u64,
    /// `chat-fanout`: messages a member never read though its room's sender sent them.
    pub lost: u64,
}

impl Failures {
    /// Failed requests (connect failures are not requests).
    pub fn requests(&self) -> u64 {
        self.timeout + self.closed + self.io + self.protocol + self.lost
    }

    fn merge(&mut self, other: &Failures) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.closed += other.closed;
        self.io += other.io;
        self.protocol += other.protocol;
        self.lost += other.lost;
    }
}

/// The measured figures of one executor, or of all of them once merged.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency of every measured response with a status code, in microseconds (from the
    /// intended send time in open loop, from the actual send in closed loop).
    pub histogram: Histogram<u64>,
    /// Measured responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Measured failures without a status code.
    pub failures: Failures,
    /// Requests sent during the warm-up (answered or not), not part of the figures above; the
    /// server saw them, so a check of its state must add them.
    pub warmup_requests: u64,
    /// Requests of a `--requests` run never sent because every connection gave up.
    pub unsent: u64,
    /// `chat-fanout`: messages read by members (each a measured operation, like a response).
    pub deliveries: u64,
    /// `chat-fanout`: measured messages the senders sent.
    pub messages_sent: u64,
    /// `chat-fanout`: (room, messages read) of each member that failed before its room's
    /// sender said it stopped.
    pub failed_members: Vec<(u64, u64)>,
    /// When the last measured response (or failure) came; the end of the measured interval.
    pub last_completion: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            histogram: new_histogram(),
            statuses: BTreeMap::new(),
            failures: Failures::default(),
            warmup_requests: 0,
            unsent: 0,
            deliveries: 0,
            messages_sent: 0,
            failed_members: Vec::new(),
            last_completion: None,
        }
    }
}

impl Stats {
    /// Adds another executor's figures.
    pub fn merge(&mut self, other: &Stats) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_insert(0) += count;
        }
        self.failures.merge(&other.failures);
        self.warmup_requests += other.warmup_requests;
        self.unsent += other.unsent;
        self.deliveries += other.deliveries;
        self.messages_sent += other.messages_sent;
        self.failed_members.extend_from_slice(&other.failed_members);
        self.last_completion = match (self.last_completion, other.last_completion) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Responses with a 2xx status, and chat deliveries.
    pub fn successes(&self) -> u64 {
        self.statuses
            .range(200..300)
            .map(|(_, count)| count)
            .sum::<u64>()
            + self.deliveries
    }

    /// Measured requests: every response plus every failed request (`chat-fanout`: every
    /// delivery plus every lost message and failed member).
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.failures.requests() + self.deliveries
    }

    /// Non-2xx responses, failed requests and failed connects.
    pub fn errors(&self) -> u64 {
        self.requests() - self.successes() + self.failures.connect
    }

    /// Errors per attempt (requests and connects); 1.0 when nothing was attempted, so that a
    /// run that did nothing fails.
    pub fn error_rate(&self) -> f64 {
        let attempts = self.requests() + self.failures.connect;
        if attempts == 0 {
            return 1.0;
        }
        self.errors() as f64 / attempts as f64
    }
}

/// Latency in whole microseconds, at least 1 (the histogram's lowest value).
pub fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Counters every executor adds to as it goes, read by the progress line.
#[derive(Debug)]
pub struct Live {
    /// Measured requests completed (answered or failed).
    pub completed: AtomicU64,
    /// Errors so far (as in `Stats::errors`).
    pub errors: AtomicU64,
    /// Latencies so far: each executor adds what it recorded since its last flush.
    pub histogram: Mutex<Histogram<u64>>,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            histogram: Mutex::new(new_histogram()),
        }
    }
}

impl Live {
    /// Adds the latencies recorded since the last flush and empties `recent`.
    pub fn flush(&self, recent: &mut Histogram<u64>) {
        if recent.is_empty() {
            return;
        }
        if let Ok(mut histogram) = self.histogram.lock() {
            let _ = histogram.add(&*recent);
        }
        recent.reset();
    }

    /// The 99th percentile so far, in microseconds.
    pub fn p99_micros(&self) -> u64 {
        self.histogram
            .lock()
            .map(|histogram| histogram.value_at_quantile(0.99))
            .unwrap_or(0)
    }

    pub fn add_completed(&self, error: bool) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_figures_add_up() {
        let mut a = Stats::default();
        a.statuses.insert(200, 90);
        a.statuses.insert(503, 5);
        a.failures.timeout = 5;
        a.histogram.record(100).expect("record");
        let mut b = Stats::default();
        b.statuses.insert(200, 10);
        b.failures.connect = 2;
        b.histogram.record(10_000).expect("record");
        a.merge(&b);
        assert_eq!(a.successes(), 100);
        assert_eq!(a.requests(), 110);
        assert_eq!(a.errors(), 12);
        assert!((a.error_rate() - 12.0 / 112.0).abs() < 1e-12);
        assert_eq!(a.histogram.len(), 2);
        assert_eq!(a.histogram.max(), b.histogram.max());
        assert_eq!(Stats::default().error_rate(), 1.0);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut histogram = new_histogram();
        for micros in 1..=10_000u64 {
            histogram.record(micros).expect("record");
        }
        let p99 = histogram.value_at_quantile(0.99);
        assert!((9_890..=9_910).contains(&p99), "{p99}");
        assert_eq!(micros(Duration::ZERO), 1);
        assert_eq!(micros(Duration::from_millis(3)), 3000);
    }
}
