//! `--compare URL2`: the same scenario against two servers, in the order A B A B so that drift
//! of a noisy machine falls on both alike, and the ratio B / A of each figure.

use super::report::{figures, Summary};

/// The comparison table: each figure's value for A and B (means of their runs) and B / A.
pub fn table(
    a_runs: &[Summary],
    b_runs: &[Summary],
) -> (String, Vec<(&'static str, f64, f64, f64)>) {
    let mean = |runs: &[Summary], index: usize| {
        runs.iter()
            .map(|summary| figures(summary)[index].1)
            .sum::<f64>()
            / runs.len().max(1) as f64
    };
    let names = a_runs.first().or(b_runs.first()).map(figures);
    let mut rows = Vec::new();
    if let Some(names) = names {
        for (index, (name, _)) in names.iter().enumerate() {
            let (a, b) = (mean(a_runs, index), mean(b_runs, index));
            let ratio = if a > 0.0 { b / a } else { f64::NAN };
            rows.push((*name, a, b, ratio));
        }
    }
    let mut text = format!("{:<18} {:>14} {:>14} {:>8}\n", "figure", "A", "B", "B / A");
    for (name, a, b, ratio) in &rows {
        text.push_str(&format!("{name:<18} {a:>14.3} {b:>14.3} {ratio:>8.3}\n"));
    }
    (text, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::Latency;

    fn summary(throughput: f64, p99: f64) -> Summary {
        Summary {
            url: String::new(),
            scenario: "hello".to_string(),
            connections: 1,
            pipeline: 1,
            executors: 1,
            rate: None,
            elapsed_s: 1.0,
            unit: "requests",
            requests: 0,
            successes: 0,
            throughput_rps: throughput,
            statuses: Default::default(),
            errors: Default::default(),
            error_rate: 0.0,
            latency_ms: Latency {
                p99,
                ..Latency::default()
            },
            warmup_requests: 0,
            unsent: 0,
            messages_sent: None,
        }
    }

    #[test]
    fn ratios_are_b_over_a_of_the_means() {
        let a = [summary(100.0, 2.0), summary(300.0, 2.0)];
        let b = [summary(100.0, 1.0), summary(100.0, 1.0)];
        let (text, rows) = table(&a, &b);
        assert_eq!(rows[0], ("throughput req/s", 200.0, 100.0, 0.5));
        assert_eq!(rows[3], ("p99 ms", 2.0, 1.0, 0.5));
        assert!(rows[1].3.is_nan());
        assert!(text.contains("B / A"));
    }
}
