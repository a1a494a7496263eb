//! Counters of one core, and the Prometheus text that `/metrics` renders from every core's
//! snapshot.
//!
//! Each core counts into its own [`CoreMetrics`] (no atomics, no sharing). `/metrics` asks every
//! core for a [`CoreSnapshot`] (a plain, `Send` copy) over the cross-core channels and renders
//! them together, so the figures are current when the scrape is answered.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use stead_storage::StoreStats;

use crate::alarm::AlarmStats;
use crate::object::HostStats;

/// Upper bounds of the request latency histogram, in seconds (Prometheus `le` labels).
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Distinct (route, class, status) series one core keeps; requests past it count under
/// `class="_other"`, so a client cannot grow the table (classes are registered, but statuses
/// and routes are few anyway).
const SERIES_MAX: usize = 4096;

/// What a request was addressed to, for labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    /// `object`, `ids`, `healthz`, `metrics`, `hello` or `none` (no route).
    pub route: &'static str,
    /// The class for `object` and `ids` requests, else empty.
    pub class: String,
}

/// Latency of one (route, class): cumulative buckets as Prometheus wants them are computed at
/// render time; here bucket i counts requests ≤ `LATENCY_BUCKETS_SECONDS[i]`, the last slot
/// the rest.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    pub buckets: [u64; LATENCY_BUCKETS_SECONDS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
}

impl LatencyHistogram {
    fn record(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.buckets[bucket] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }
}

/// The counters of one core.
#[derive(Default)]
pub struct CoreMetrics {
    /// Requests answered, by labels and status.
    requests: RefCell<HashMap<(RequestLabels, u16), u64>>,
    /// Latency by labels.
    latency: RefCell<HashMap<RequestLabels, LatencyHistogram>>,
    /// Client connections open on this core.
    pub connections_open: Cell<usize>,
    /// Connections accepted since start.
    pub connections_total: Cell<u64>,
    /// Requests this core sent to the owning core of their object.
    pub forwarded_total: Cell<u64>,
    /// Requests refused because too many were already waiting on other cores.
    pub forward_rejections_total: Cell<u64>,
    /// WebSocket upgrades this core handed (with their connection) to the owning core.
    pub websocket_handoffs_total: Cell<u64>,
    /// In a cluster: requests (WebSocket upgrades included) this core forwarded to the owner,
    /// another node.
    pub cluster_forwarded_total: Cell<u64>,
    /// In a cluster: forwarded requests that got no answer from the owner (503 here).
    pub cluster_forward_failures_total: Cell<u64>,
    /// With TLS: connections whose handshake failed or timed out.
    pub tls_handshake_failures_total: Cell<u64>,
    /// How late the core's stall probe woke; see [`run_stall_probe`].
    pub stalls: Rc<StallProbe>,
}

/// The stall probe sleeps this long, again and again.
pub const STALL_PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// A wake-up later than this counts in `stead_core_stalls_over_10ms_total`: the bound the
/// engine is meant to keep on any stall of a core (compaction included).
pub const STALL_THRESHOLD: Duration = Duration::from_millis(10);

/// Lateness buckets: bucket i counts wake-ups ≤ 2^i µs late, the last one the rest (> 262 ms).
const STALL_BUCKETS: usize = 20;

/// How late the stall probe of one core woke up. Every task on a core shares one thread, so
/// a wake-up that comes late means the core ran something else (or nothing could run) for
/// that long: every request on the core waited as long.
#[derive(Default)]
pub struct StallProbe {
    stats: RefCell<StallStats>,
}

/// What the stall probe measured; sent between cores.
#[derive(Clone, Debug, Default)]
pub struct StallStats {
    /// The latest wake-up since start, in microseconds past its time.
    pub max_micros: u64,
    /// The longest lateness during which this core's thread was running (its CPU time over
    /// the late wake-up's interval, capped at the lateness): the part of a stall that the
    /// core's own work caused, rather than the OS running another thread on its CPU.
    pub busy_max_micros: u64,
    /// Wake-ups later than [`STALL_THRESHOLD`].
    pub over_threshold_total: u64,
    /// Bucket i counts wake-ups ≤ 2^i µs late; the last bucket the rest.
    pub buckets: [u64; STALL_BUCKETS],
    pub sum_micros: u64,
}

impl StallProbe {
    fn record(&self, late: Duration, busy: Duration) {
        let micros = late.as_micros().min(u128::from(u64::MAX)) as u64;
        let busy_micros = busy.min(late).as_micros().min(u128::from(u64::MAX)) as u64;
        let mut stats = self.stats.borrow_mut();
        stats.max_micros = stats.max_micros.max(micros);
        stats.busy_max_micros = stats.busy_max_micros.max(busy_micros);
        if late > STALL_THRESHOLD {
            stats.over_threshold_total += 1;
        }
        let bucket = stead_storage::power_of_two_bucket(micros, STALL_BUCKETS);
        stats.buckets[bucket] += 1;
        stats.sum_micros = stats.sum_micros.saturating_add(micros);
    }

    pub fn stats(&self) -> StallStats {
        self.stats.borrow().clone()
    }
}

/// Sleeps [`STALL_PROBE_INTERVAL`] in a loop and records how late each wake-up came, until
/// the probe is dropped with the core's metrics. A timer is served only when the executor
/// gets back to its reactor, so this sees any task that holds the core without yielding,
/// and costs one wake-up per interval (a few µs) on an idle core.
pub async fn run_stall_probe(probe: Weak<StallProbe>) {
    loop {
        let asked = Instant::now();
        let cpu_before = thread_cpu_time();
        glommio::timer::sleep(STALL_PROBE_INTERVAL).await;
        let late = asked.elapsed().saturating_sub(STALL_PROBE_INTERVAL);
        let busy = thread_cpu_time().saturating_sub(cpu_before);
        let Some(probe) = probe.upgrade() else {
            return;
        };
        probe.record(late, busy);
    }
}

/// CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`); zero if the clock fails, which
/// only makes the busy figure read low.
fn thread_cpu_time() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `time`.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    if result != 0 {
        return Duration::ZERO;
    }
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

impl CoreMetrics {
    /// Counts one answered request.
    pub fn record(&self, labels: RequestLabels, status: u16, elapsed: Duration) {
        let labels = {
            let requests = self.requests.borrow();
            if requests.len() >= SERIES_MAX && !requests.contains_key(&(labels.clone(), status)) {
                RequestLabels {
                    route: labels.route,
                    class: "_other".to_string(),
                }
            } else {
                labels
            }
        };
        self.latency
            .borrow_mut()
            .entry(labels.clone())
            .or_default()
            .record(elapsed);
        *self
            .requests
            .borrow_mut()
            .entry((labels, status))
            .or_insert(0) += 1;
    }

    /// A copy of everything, with the host's and the store's figures.
    pub fn snapshot(
        &self,
        core: usize,
        host: HostStats,
        store: StoreStats,
        alarms: AlarmStats,
        shutdown_waiters: usize,
    ) -> CoreSnapshot {
        CoreSnapshot {
            core,
            requests: self
                .requests
                .borrow()
                .iter()
                .map(|((labels, status), count)| (labels.clone(), *status, *count))
                .collect(),
            latency: self
                .latency
                .borrow()
                .iter()
                .map(|(labels, histogram)| (labels.clone(), histogram.clone()))
                .collect(),
            connections_open: self.connections_open.get(),
            connections_total: self.connections_total.get(),
            forwarded_total: self.forwarded_total.get(),
            forward_rejections_total: self.forward_rejections_total.get(),
            websocket_handoffs_total: self.websocket_handoffs_total.get(),
            cluster_forwarded_total: self.cluster_forwarded_total.get(),
            cluster_forward_failures_total: self.cluster_forward_failures_total.get(),
            tls_handshake_failures_total: self.tls_handshake_failures_total.get(),
            stalls: self.stalls.stats(),
            shutdown_waiters,
            host,
            alarms,
            store,
        }
    }
}

/// One core's figures at one moment; sent between cores.
#[derive(Clone, Debug)]
pub struct CoreSnapshot {
    pub core: usize,
    pub requests: Vec<(RequestLabels, u16, u64)>,
    pub latency: Vec<(RequestLabels, LatencyHistogram)>,
    pub connections_open: usize,
    pub connections_total: u64,
    pub forwarded_total: u64,
    pub forward_rejections_total: u64,
    pub websocket_handoffs_total: u64,
    pub cluster_forwarded_total: u64,
    pub cluster_forward_failures_total: u64,
    pub tls_handshake_failures_total: u64,
    pub stalls: StallStats,
    /// Tasks registered to wake at shutdown: at most one per open connection plus the accept
    /// loop. More would be a leak (one once grew by two per accepted connection).
    pub shutdown_waiters: usize,
    pub host: HostStats,
    pub alarms: AlarmStats,
    pub store: StoreStats,
}

/// A per-core series: name, type, help text, and its value in a snapshot.
type PerCoreMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&CoreSnapshot) -> f64,
);

/// Renders every core's snapshot in the Prometheus text exposition format (version 0.0.4).
pub fn render(snapshots: &[CoreSnapshot]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    render_requests(&mut out, snapshots);
    render_latency(&mut out, snapshots);
    let per_core: [PerCoreMetric; 47] = [
        (
            "stead_shutdown_waiters",
            "gauge",
            "Tasks waiting for shutdown (connections and the accept loop).",
            |s| s.shutdown_waiters as f64,
        ),
        (
            "stead_connections_open",
            "gauge",
            "Client connections open.",
            |s| s.connections_open as f64,
        ),
        (
            "stead_connections_total",
            "counter",
            "Client connections accepted.",
            |s| s.connections_total as f64,
        ),
        (
            "stead_forwarded_total",
            "counter",
            "Requests forwarded to the core owning their object.",
            |s| s.forwarded_total as f64,
        ),
        (
            "stead_forward_rejections_total",
            "counter",
            "Requests refused: too many in flight to other cores.",
            |s| s.forward_rejections_total as f64,
        ),
        (
            "stead_websocket_handoffs_total",
            "counter",
            "WebSocket upgrades handed, with their connection, to the core owning their object.",
            |s| s.websocket_handoffs_total as f64,
        ),
        (
            "stead_websockets_open",
            "gauge",
            "WebSockets open on this core (held while their object is evicted).",
            |s| s.host.websockets_open as f64,
        ),
        (
            "stead_websocket_queued_bytes",
            "gauge",
            "Bytes queued for WebSocket clients and not yet written (bounded per core by \
             send_queue_bytes_per_core_max).",
            |s| s.host.websocket_queued_bytes as f64,
        ),
        (
            "stead_websocket_events_total",
            "counter",
            "WebSocket messages, closes and errors taken from sockets for their objects.",
            |s| s.host.websocket_events_total as f64,
        ),
        ("stead_active_objects", "gauge", "Objects in memory.", |s| {
            s.host.active_objects as f64
        }),
        (
            "stead_events_queued",
            "gauge",
            "Events admitted and not yet answered.",
            |s| s.host.events_queued as f64,
        ),
        (
            "stead_activations_total",
            "counter",
            "Object activations.",
            |s| s.host.activations_total as f64,
        ),
        (
            "stead_evictions_total",
            "counter",
            "Idle objects evicted.",
            |s| s.host.evictions_total as f64,
        ),
        (
            "stead_overload_rejections_total",
            "counter",
            "Events refused with 503.",
            |s| s.host.overload_rejections_total as f64,
        ),
        (
            "stead_storage_commits_total",
            "counter",
            "Batches committed.",
            |s| s.store.commits_total as f64,
        ),
        (
            "stead_storage_fdatasyncs_total",
            "counter",
            "fdatasync calls.",
            |s| s.store.fdatasyncs_total as f64,
        ),
        (
            "stead_storage_bytes_written_total",
            "counter",
            "Bytes appended to the log.",
            |s| s.store.bytes_written_total as f64,
        ),
        ("stead_storage_keys", "gauge", "Keys in the index.", |s| {
            s.store.keys as f64
        }),
        (
            "stead_storage_live_bytes",
            "gauge",
            "Record bytes of current values (puts still in force), without block padding.",
            |s| s.store.live_bytes as f64,
        ),
        (
            "stead_storage_dead_bytes",
            "gauge",
            "Record bytes in segments minus live bytes: what compaction reclaims and its \
             trigger counts (block padding is not in it).",
            |s| s.store.dead_bytes as f64,
        ),
        (
            "stead_cluster_partitions_served",
            "gauge",
            "In a cluster: partitions of this core this node serves now (it holds a fresh lease, \
             is not deposed, and has not refused them); 0 on a node that is not the owner.",
            |s| s.host.replication.partitions_served as f64,
        ),
        (
            "stead_cluster_appends_in_flight",
            "gauge",
            "In a cluster: appends of this core sent to the stream and not acknowledged yet.",
            |s| s.host.replication.appends_in_flight as f64,
        ),
        (
            "stead_cluster_replication_lag_batches",
            "gauge",
            "In a cluster: batches this core committed that the stream has not acknowledged \
             yet (their events' answers wait for it).",
            |s| s.host.replication.batches_unacknowledged as f64,
        ),
        (
            "stead_cluster_replication_lag_seconds",
            "gauge",
            "In a cluster: age of this core's oldest append not yet acknowledged; 0 when none \
             is in flight.",
            |s| s.host.replication.oldest_append_micros as f64 / 1e6,
        ),
        (
            "stead_cluster_fence_refusals_total",
            "counter",
            "In a cluster: appends of this core the stream refused because another writer \
             had appended to the partition first (a newer owner).",
            |s| s.host.replication.fence_refusals_total as f64,
        ),
        (
            "stead_cluster_snapshots_total",
            "counter",
            "In a cluster: snapshots of this core's partitions kept in the snapshot bucket (each \
             lets the partition's subject be purged below it).",
            |s| s.host.replication.snapshots_total as f64,
        ),
        (
            "stead_cluster_partitions_refused",
            "gauge",
            "In a cluster: partitions of this core that answer 503 (fenced by a newer owner, \
             an append not acknowledged, or the node deposed); one refused for want of an \
             acknowledgement is rebuilt from the stream once the lease is fresh again.",
            |s| s.host.replication.partitions_refused as f64,
        ),
        (
            "stead_cluster_deposed",
            "gauge",
            "In a cluster: 1 once another node became the owner (or the watch of the owner key \
             was lost): every partition answers 503 on this node.",
            |s| u64::from(s.host.replication.deposed) as f64,
        ),
        (
            "stead_cluster_forwarded_total",
            "counter",
            "In a cluster: requests (WebSocket upgrades included) this core forwarded to the \
             owner, another node, because this node does not serve them.",
            |s| s.cluster_forwarded_total as f64,
        ),
        (
            "stead_cluster_forward_failures_total",
            "counter",
            "In a cluster: forwarded requests the owner did not answer (connection refused, \
             timed out, or a malformed answer): each was answered 503 here.",
            |s| s.cluster_forward_failures_total as f64,
        ),
        (
            "stead_tls_handshake_failures_total",
            "counter",
            "With TLS: accepted connections whose handshake failed or took longer than \
             idle_connection_timeout_ms (plain HTTP to the TLS port, a client that offers \
             neither a shared version nor http/1.1, a silent client).",
            |s| s.tls_handshake_failures_total as f64,
        ),
        (
            "stead_history_keys",
            "gauge",
            "History record keys kept for point-in-time recovery (part of the keys above).",
            |s| s.store.prefix_keys as f64,
        ),
        (
            "stead_history_bytes",
            "gauge",
            "Key and value bytes of the history records kept for point-in-time recovery: \
             what the history windows cost (part of the live bytes).",
            |s| s.store.prefix_bytes as f64,
        ),
        (
            "stead_storage_disk_bytes",
            "gauge",
            "Bytes the segment files take on disk, block padding included.",
            |s| s.store.disk_bytes as f64,
        ),
        (
            "stead_storage_compactions_total",
            "counter",
            "Compactions completed.",
            |s| s.store.compactions_total as f64,
        ),
        (
            "stead_storage_poisoned",
            "gauge",
            "1 after a failed write or fdatasync.",
            |s| f64::from(u8::from(s.store.poisoned)),
        ),
        (
            "stead_store_writable",
            "gauge",
            "1 while the store takes writes; 0 once a write, fdatasync or its creation failed \
             (writes answer 507 until a restart).",
            |s| f64::from(u8::from(!s.store.poisoned)),
        ),
        (
            "stead_core_stall_max_seconds",
            "gauge",
            "Longest time since start that the core did not get back to its ready tasks \
             (how late a 1 ms probe timer woke).",
            |s| s.stalls.max_micros as f64 * 1e-6,
        ),
        (
            "stead_core_busy_stall_max_seconds",
            "gauge",
            "Longest stall counting only the time the core's thread ran (its CPU time while the \
             probe was late): the core's own work, not the OS running something else.",
            |s| s.stalls.busy_max_micros as f64 * 1e-6,
        ),
        (
            "stead_core_stalls_over_10ms_total",
            "counter",
            "Probe wake-ups more than 10 ms late.",
            |s| s.stalls.over_threshold_total as f64,
        ),
        (
            "stead_alarms_pending",
            "gauge",
            "Timer entries in the core's wheel.",
            |s| s.alarms.pending as f64,
        ),
        (
            "stead_alarms_backlog",
            "gauge",
            "Due alarms waiting for a delivery slot.",
            |s| s.alarms.backlog as f64,
        ),
        (
            "stead_alarms_fired_total",
            "counter",
            "Alarm handlers that succeeded.",
            |s| s.alarms.fired_total as f64,
        ),
        (
            "stead_alarms_failures_total",
            "counter",
            "Alarm deliveries that failed.",
            |s| s.alarms.failures_total as f64,
        ),
        (
            "stead_alarms_retries_total",
            "counter",
            "Alarm retries scheduled.",
            |s| s.alarms.retries_total as f64,
        ),
        (
            "stead_alarm_lateness_p99_seconds",
            "gauge",
            "99th percentile of alarm lateness.",
            |s| s.alarms.lateness_p99_ms / 1000.0,
        ),
        (
            "stead_alarm_lateness_max_seconds",
            "gauge",
            "Largest alarm lateness seen.",
            |s| s.alarms.lateness_max_ms / 1000.0,
        ),
    ];
    for (name, kind, help, value) in per_core {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for snapshot in snapshots {
            let _ = writeln!(
                out,
                "{name}{{core=\"{}\"}} {}",
                snapshot.core,
                value(snapshot)
            );
        }
    }
    render_power_of_two(
        &mut out,
        "stead_storage_fdatasync_seconds",
        "Sync latency: a group commit's durable write (write and flush), or an fdatasync.",
        snapshots,
        |s| &s.store.fdatasync_micros_buckets,
        1e-6,
        |s| s.store.fdatasync_micros_sum as f64 * 1e-6,
    );
    render_power_of_two(
        &mut out,
        "stead_core_stall_seconds",
        "How late the core's 1 ms probe timer woke.",
        snapshots,
        |s| &s.stalls.buckets,
        1e-6,
        |s| s.stalls.sum_micros as f64 * 1e-6,
    );
    render_power_of_two(
        &mut out,
        "stead_storage_group_commit_batches",
        "Batches made durable by one fdatasync.",
        snapshots,
        |s| &s.store.group_commits_buckets,
        1.0,
        |_| f64::NAN,
    );
    out
}

fn render_requests(out: &mut String, snapshots: &[CoreSnapshot]) {
    let mut totals: HashMap<(&RequestLabels, u16), u64> = HashMap::new();
    for snapshot in snapshots {
        for (labels, status, count) in &snapshot.requests {
            *totals.entry((labels, *status)).or_insert(0) += count;
        }
    }
    let mut series: Vec<_> = totals.into_iter().collect();
    series.sort_by(|a, b| {
        (a.0 .0.route, &a.0 .0.class, a.0 .1).cmp(&(b.0 .0.route, &b.0 .0.class, b.0 .1))
    });
    out.push_str("# HELP stead_requests_total HTTP requests answered.\n");
    out.push_str("# TYPE stead_requests_total counter\n");
    for ((labels, status), count) in series {
        let _ = writeln!(
            out,
            "stead_requests_total{{route=\"{}\",class=\"{}\",status=\"{status}\"}} {count}",
            labels.route, labels.class
        );
    }
}

fn render_latency(out: &mut String, snapshots: &[CoreSnapshot]) {
    let mut merged: HashMap<&RequestLabels, LatencyHistogram> = HashMap::new();
    for snapshot in snapshots {
        for (labels, histogram) in &snapshot.latency {
            let total = merged.entry(labels).or_default();
            for (sum, add) in total.buckets.iter_mut().zip(histogram.buckets) {
                *sum += add;
            }
            total.sum_seconds += histogram.sum_seconds;
            total.count += histogram.count;
        }
    }
    let mut series: Vec<_> = merged.into_iter().collect();
    series.sort_by(|a, b| (a.0.route, &a.0.class).cmp(&(b.0.route, &b.0.class)));
    out.push_str("# HELP stead_request_duration_seconds Time from parsed request to response.\n");
    out.push_str("# TYPE stead_request_duration_seconds histogram\n");
    for (labels, histogram) in series {
        let label = format!("route=\"{}\",class=\"{}\"", labels.route, labels.class);
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS_SECONDS.iter().zip(histogram.buckets) {
            cumulative += count;
            let _ = writeln!(
                out,
                "stead_request_duration_seconds_bucket{{{label},le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "stead_request_duration_seconds_bucket{{{label},le=\"+Inf\"}} {}",
            histogram.count
        );
        let _ = writeln!(
            out,
            "stead_request_duration_seconds_sum{{{label}}} {}",
            histogram.sum_seconds
        );
        let _ = writeln!(
            out,
            "stead_request_duration_seconds_count{{{label}}} {}",
            histogram.count
        );
    }
}

/// Renders a per-core histogram whose bucket i counts values ≤ 2^i (times `unit`).
fn render_power_of_two(
    out: &mut String,
    name: &str,
    help: &str,
    snapshots: &[CoreSnapshot],
    buckets: fn(&CoreSnapshot) -> &[u64],
    unit: f64,
    sum: fn(&CoreSnapshot) -> f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for snapshot in snapshots {
        let counts = buckets(snapshot);
        let mut cumulative = 0;
        for (i, count) in counts
            .iter()
            .enumerate()
            .take(counts.len().saturating_sub(1))
        {
            cumulative += count;
            let bound = (1u64 << i) as f64 * unit;
            let _ = writeln!(
                out,
                "{name}_bucket{{core=\"{}\",le=\"{bound}\"}} {cumulative}",
                snapshot.core
            );
        }
        let total: u64 = counts.iter().sum();
        let _ = writeln!(
            out,
            "{name}_bucket{{core=\"{}\",le=\"+Inf\"}} {total}",
            snapshot.core
        );
        let sum = sum(snapshot);
        if !sum.is_nan() {
            let _ = writeln!(out, "{name}_sum{{core=\"{}\"}} {sum}", snapshot.core);
        }
        let _ = writeln!(out, "{name}_count{{core=\"{}\"}} {total}", snapshot.core);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let metrics = CoreMetrics::default();
        let labels = RequestLabels {
            route: "object",
            class: "counter".to_string(),
        };
        metrics.record(labels.clone(), 200, Duration::from_micros(50));
        metrics.record(labels.clone(), 200, Duration::from_millis(3));
        metrics.record(labels, 503, Duration::from_millis(3));
        let snapshot = metrics.snapshot(
            0,
            HostStats::default(),
            StoreStats::default(),
            AlarmStats::default(),
            1,
        );
        let text = render(&[
            snapshot.clone(),
            CoreSnapshot {
                core: 1,
                ..snapshot
            },
        ]);
        assert!(text
            .contains("stead_requests_total{route=\"object\",class=\"counter\",status=\"200\"} 4"));
        assert!(text
            .contains("stead_requests_total{route=\"object\",class=\"counter\",status=\"503\"} 2"));
        assert!(text.contains(
            "stead_request_duration_seconds_bucket{route=\"object\",class=\"counter\",le=\"0.0001\"} 2"
        ));
        assert!(text.contains(
            "stead_request_duration_seconds_bucket{route=\"object\",class=\"counter\",le=\"0.005\"} 6"
        ));
        assert!(text.contains("stead_active_objects{core=\"1\"} 0"));
        assert!(text.contains("stead_core_stall_max_seconds{core=\"0\"} 0"));
    }

    #[test]
    fn stall_probe_keeps_the_longest_and_counts_the_long_ones() {
        let probe = StallProbe::default();
        probe.record(Duration::from_micros(80), Duration::from_micros(10));
        probe.record(Duration::from_millis(25), Duration::from_millis(40));
        probe.record(Duration::from_millis(3), Duration::from_millis(1));
        let stats = probe.stats();
        assert_eq!(stats.max_micros, 25_000);
        // CPU time over the interval counts only up to the lateness itself.
        assert_eq!(stats.busy_max_micros, 25_000);
        assert_eq!(stats.over_threshold_total, 1);
        assert_eq!(stats.buckets.iter().sum::<u64>(), 3);
        // 80 µs ≤ 2^7; 3 ms ≤ 2^12 µs; 25 ms ≤ 2^15 µs.
        assert_eq!(
            (stats.buckets[7], stats.buckets[12], stats.buckets[15]),
            (1, 1, 1)
        );
    }
}
