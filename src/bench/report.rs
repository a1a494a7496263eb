//! The figures of a run: computed once from the merged counts, printed as a summary and written
//! as JSON.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::args::Plan;
use super::stats::{Failures, Stats};

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Errors by kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Errors {
    /// All errors: non-2xx responses, failed requests and failed connects.
    pub total: u64,
    /// Non-2xx responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Failures without a status code.
    #[serde(flatten)]
    pub failures: Failures,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub url: String,
    pub scenario: String,
    pub connections: usize,
    pub pipeline: usize,
    pub executors: usize,
    /// Open-loop rate asked for, requests per second; None in closed loop.
    pub rate: Option<f64>,
    /// Measured interval: from the end of the warm-up to the last response, in seconds.
    pub elapsed_s: f64,
    /// What `requests` counts: `requests`, or `deliveries` (`chat-fanout`: messages read by
    /// members, each timed from its send).
    pub unit: &'static str,
    /// Measured requests (answered or failed); `chat-fanout`: deliveries, lost messages and
    /// failed members.
    pub requests: u64,
    /// Measured 2xx responses.
    pub successes: u64,
    /// Measured requests per second.
    pub throughput_rps: f64,
    /// Every measured response by status, 2xx included.
    pub statuses: BTreeMap<u16, u64>,
    pub errors: Errors,
    /// Errors per attempt (requests plus connects).
    pub error_rate: f64,
    /// Latency of the answered requests, in milliseconds.
    pub latency_ms: Latency,
    /// Requests sent during the warm-up; the server saw them too.
    pub warmup_requests: u64,
    /// Requests of a `--requests` run never sent because every connection gave up.
    pub unsent: u64,
    /// `chat-fanout`: measured messages the senders sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_sent: Option<u64>,
}

impl Summary {
    pub fn new(url: &str, plan: &Plan, stats: &Stats, measure_start: Instant) -> Summary {
        let elapsed_s = stats
            .last_completion
            .map(|last| last.saturating_duration_since(measure_start).as_secs_f64())
            .unwrap_or(0.0);
        let requests = stats.requests();
        let histogram = &stats.histogram;
        let millis = |micros: u64| micros as f64 / 1000.0;
        let latency = if histogram.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: millis(histogram.value_at_quantile(0.50)),
                p90: millis(histogram.value_at_quantile(0.90)),
                p99: millis(histogram.value_at_quantile(0.99)),
                p999: millis(histogram.value_at_quantile(0.999)),
                max: millis(histogram.max()),
                mean: histogram.mean() / 1000.0,
            }
        };
        let chat = matches!(plan.scenario, super::scenario::Scenario::ChatFanout { .. });
        Summary {
            url: url.to_string(),
            scenario: plan.scenario.name().to_string(),
            connections: plan.connections,
            pipeline: plan.pipeline,
            executors: plan.cores.len(),
            rate: plan.rate,
            elapsed_s,
            unit: if chat { "deliveries" } else { "requests" },
            requests,
            successes: stats.successes(),
            // Deliveries per second count what members read, not what they missed.
            throughput_rps: if elapsed_s > 0.0 {
                (if chat { stats.successes() } else { requests }) as f64 / elapsed_s
            } else {
                0.0
            },
            statuses: stats.statuses.clone(),
            errors: Errors {
                total: stats.errors(),
                status: stats
                    .statuses
                    .iter()
                    .filter(|(status, _)| !(200..300).contains(*status))
                    .map(|(status, count)| (*status, *count))
                    .collect(),
                failures: stats.failures,
            },
            error_rate: stats.error_rate(),
            latency_ms: latency,
            warmup_requests: stats.warmup_requests,
            unsent: stats.unsent,
            messages_sent: chat.then_some(stats.messages_sent),
        }
    }

    /// The human summary printed at the end of a run.
    pub fn text(&self) -> String {
        let mode = match self.rate {
            Some(rate) if self.messages_sent.is_some() => {
                format!("open loop at {rate} messages/s")
            }
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_string(),
        };
        let failures = &self.errors.failures;
        let statuses: Vec<String> = self
            .errors
            .status
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        let latency = &self.latency_ms;
        let mut text = format!(
            "{} against {}: {} connections, pipeline {}, {} executor(s), {mode}\n\
             {:<10} {} in {:.2} s = {:.0} {}/s ({} ok)\n\
             errors     {} ({:.4} %): status [{}], connect {}, timeout {}, closed {}, io {}, protocol {}, lost {}\n\
             latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
            self.scenario,
            self.url,
            self.connections,
            self.pipeline,
            self.executors,
            self.unit,
            self.requests,
            self.elapsed_s,
            self.throughput_rps,
            if self.unit == "requests" { "req" } else { "deliveries" },
            self.successes,
            self.errors.total,
            self.error_rate * 100.0,
            statuses.join(", "),
            failures.connect,
            failures.timeout,
            failures.closed,
            failures.io,
            failures.protocol,
            failures.lost,
            latency.p50,
            latency.p90,
            latency.p99,
            latency.p999,
            latency.max,
            latency.mean,
        );
        if let Some(sent) = self.messages_sent {
            text.push_str(&format!(
                "sent       {sent} messages, {:.0} per second\n",
                if self.elapsed_s > 0.0 {
                    sent as f64 / self.elapsed_s
                } else {
                    0.0
                }
            ));
        }
        if self.warmup_requests > 0 {
            text.push_str(&format!(
                "warm-up    {} requests (not measured)\n",
                self.warmup_requests
            ));
        }
        if self.unsent > 0 {
            text.push_str(&format!(
                "unsent     {} requests (every connection gave up)\n",
                self.unsent
            ));
        }
        text
    }
}

/// The figures `--compare` sets side by side, with their names.
pub fn figures(summary: &Summary) -> [(&'static str, f64); 6] {
    let latency = &summary.latency_ms;
    [
        ("throughput req/s", summary.throughput_rps),
        ("p50 ms", latency.p50),
        ("p90 ms", latency.p90),
        ("p99 ms", latency.p99),
        ("p99.9 ms", latency.p999),
        ("max ms", latency.max),
    ]
}
