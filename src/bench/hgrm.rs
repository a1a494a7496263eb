//! HdrHistogram's percentile distribution text format (`.hgrm`, as printed by wrk2 and
//! HdrHistogram's `outputPercentileDistribution`), values in milliseconds, so that existing
//! plotters of that format read it.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// Percentile steps per halving of the distance to 100 %.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The distribution of a histogram of microseconds, values in milliseconds.
pub fn percentile_distribution(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !histogram.is_empty() {
        let mut total = 0u64;
        for value in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            let quantile = value.quantile_iterated_to();
            let millis = value.value_iterated_to() as f64 / 1000.0;
            total += value.count_since_last_iteration();
            if quantile < 1.0 {
                let _ = writeln!(
                    out,
                    "{millis:12.3} {quantile:14.12} {:10} {:14.2}",
                    total,
                    1.0 / (1.0 - quantile)
                );
            } else {
                let _ = writeln!(out, "{millis:12.3} {quantile:14.12} {total:10}");
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / 1000.0,
        histogram.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_bucket_count(histogram.sigfig())
    );
    out
}

/// Sub-buckets per bucket of a histogram with `significant_digits`, as HdrHistogram computes it:
/// the smallest power of two that can tell apart 2·10^digits values.
fn sub_bucket_count(significant_digits: u8) -> u64 {
    (2 * 10u64.pow(u32::from(significant_digits))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_lists_rising_percentiles_and_the_footer() {
        let mut histogram = super::super::stats::new_histogram();
        for micros in 1..=1000u64 {
            histogram.record(micros * 10).expect("record");
        }
        let text = percentile_distribution(&histogram);
        let rows: Vec<(f64, f64, u64)> = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .skip(1)
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (
                    fields[0].parse().expect("value"),
                    fields[1].parse().expect("percentile"),
                    fields[2].parse().expect("count"),
                )
            })
            .collect();
        assert!(rows.len() > 10);
        assert!(rows
            .windows(2)
            .all(|pair| pair[0].1 <= pair[1].1 && pair[0].2 <= pair[1].2));
        let last = rows.last().expect("rows");
        assert_eq!(last.1, 1.0);
        assert_eq!(last.2, 1000);
        assert!((last.0 - 10.0).abs() < 0.02, "{last:?}");
        assert!(text.contains("#[Max     ="));
        assert!(text.contains("Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }
}
