//! [`AlarmStats`]: what one core's scheduler reports to `/metrics`, and the lateness histogram
//! behind it.

use hdrhistogram::Histogram;

/// The largest lateness the histogram tells apart, in microseconds (one hour); later ones are
/// recorded as this.
const LATENESS_MICROS_MAX: u64 = 3_600_000_000;
/// Significant decimal digits the histogram keeps (1% resolution).
const LATENESS_SIGNIFICANT_DIGITS: u8 = 2;

/// Counters and gauges of one core's alarm scheduler. Plain data, `Send`, so `/metrics` can
/// collect it from every core.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AlarmStats {
    /// Timer entries in the wheel. Counts an alarm that was replaced or deleted until its old
    /// time passes or the wheel is compacted, so it can exceed the alarms stored.
    pub pending: usize,
    /// Deliveries running now (bounded by `SchedulerConfig::deliveries_in_flight_max`).
    pub in_flight: usize,
    /// Due alarms waiting for a delivery slot.
    pub backlog: usize,
    /// Alarm handlers that ran and succeeded.
    pub fired_total: u64,
    /// Deliveries that failed (the handler returned an error, or the object could not be
    /// activated or admitted).
    pub failures_total: u64,
    /// Retries scheduled after a failure.
    pub retries_total: u64,
    /// Alarms abandoned after their last retry failed (they stay stored and are tried again
    /// after a restart).
    pub given_up_total: u64,
    /// Deliveries started whose lateness was recorded.
    pub lateness_count: u64,
    /// Median lateness (delivery start − scheduled time), in milliseconds.
    pub lateness_p50_ms: f64,
    /// 99th percentile lateness, in milliseconds.
    pub lateness_p99_ms: f64,
    /// Largest lateness seen, in milliseconds.
    pub lateness_max_ms: f64,
    /// Sum of all lateness, in milliseconds (for a Prometheus summary's `_sum`).
    pub lateness_sum_ms: f64,
}

/// Lateness of delivery starts, in microseconds.
pub(super) struct Lateness {
    /// Fixed-size after creation (about 10 KiB), whatever is recorded.
    histogram: Option<Histogram<u64>>,
    /// Sum of every recorded value, in microseconds.
    sum_micros: u128,
}

impl Lateness {
    pub(super) fn new() -> Lateness {
        // The bounds are constants that hdrhistogram accepts; `None` would only lose lateness
        // figures, never alarms.
        let histogram =
            Histogram::new_with_max(LATENESS_MICROS_MAX, LATENESS_SIGNIFICANT_DIGITS).ok();
        Lateness {
            histogram,
            sum_micros: 0,
        }
    }

    pub(super) fn record(&mut self, lateness_micros: u64) {
        let lateness_micros = lateness_micros.min(LATENESS_MICROS_MAX);
        if let Some(histogram) = &mut self.histogram {
            histogram.saturating_record(lateness_micros);
        }
        self.sum_micros += u128::from(lateness_micros);
    }

    /// Fills the lateness fields of `stats`.
    pub(super) fn report(&self, stats: &mut AlarmStats) {
        let Some(histogram) = &self.histogram else {
            return;
        };
        let millis = |micros: u64| micros as f64 / 1_000.0;
        stats.lateness_count = histogram.len();
        stats.lateness_p50_ms = millis(histogram.value_at_quantile(0.50));
        stats.lateness_p99_ms = millis(histogram.value_at_quantile(0.99));
        stats.lateness_max_ms = millis(histogram.max());
        stats.lateness_sum_ms = self.sum_micros as f64 / 1_000.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_quantiles_in_milliseconds() {
        let mut lateness = Lateness::new();
        for micros in 1..=100u64 {
            lateness.record(micros * 1_000);
        }
        lateness.record(u64::MAX);
        let mut stats = AlarmStats::default();
        lateness.report(&mut stats);
        assert_eq!(stats.lateness_count, 101);
        assert!((stats.lateness_p50_ms - 51.0).abs() < 1.0, "{stats:?}");
        assert!((stats.lateness_p99_ms - 100.0).abs() < 2.0, "{stats:?}");
        assert!(stats.lateness_max_ms >= 3_500_000.0, "{stats:?}");
    }
}
