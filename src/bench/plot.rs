//! `--plot FILE.svg`: latency by percentile, the usual HdrHistogram picture (the x axis
//! stretches the tail: 90 %, 99 %, 99.9 % … are equally spaced).

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Percentile steps per halving of the distance to 100 %.
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Size of the picture in pixels.
const SIZE_PIXELS: (u32, u32) = (800, 480);

/// The points of the curve: x = 1/(1-percentile), y = latency in milliseconds.
pub fn points(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    histogram
        .iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|value| {
            (
                value.quantile_iterated_to(),
                value.value_iterated_to() as f64 / 1000.0,
            )
        })
        .filter(|(quantile, _)| *quantile < 1.0)
        .map(|(quantile, millis)| (1.0 / (1.0 - quantile), millis))
        .collect()
}

/// The percentile that x = 1/(1-percentile) stands for, as axis text.
fn percentile_label(x: &f64) -> String {
    let percent = (1.0 - 1.0 / x.max(1.0)) * 100.0;
    let text = format!("{percent:.4}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// Draws the curve of a histogram of microseconds to an SVG file.
pub fn draw(histogram: &Histogram<u64>, title: &str, path: &Path) -> Result<(), String> {
    let points = points(histogram);
    let x_max = points.iter().map(|(x, _)| *x).fold(10.0, f64::max);
    let y_max = (histogram.max() as f64 / 1000.0 * 1.1).max(0.01);
    let root = SVGBackend::new(path, SIZE_PIXELS).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&percentile_label)
        .draw()
        .map_err(|error| error.to_string())?;
    chart
        .draw_series(LineSeries::new(points, &BLUE))
        .map_err(|error| error.to_string())?;
    root.present().map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_rises_and_axis_reads_as_percentiles() {
        let mut histogram = super::super::stats::new_histogram();
        for micros in 1..=10_000u64 {
            histogram.record(micros).expect("record");
        }
        let points = points(&histogram);
        assert!(points
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1));
        assert_eq!(percentile_label(&1.0), "0%");
        assert_eq!(percentile_label(&100.0), "99%");
        assert_eq!(percentile_label(&1000.0), "99.9%");
        let directory = std::env::temp_dir().join(format!("stead-plot-{}", std::process::id()));
        std::fs::create_dir_all(&directory).expect("dir");
        let file = directory.join("latency.svg");
        draw(&histogram, "test", &file).expect("draw");
        let svg = std::fs::read_to_string(&file).expect("svg");
        assert!(
            svg.starts_with("<svg") && svg.contains("polyline"),
            "{}",
            &svg[..200.min(svg.len())]
        );
        let _ = std::fs::remove_dir_all(&directory);
    }
}
