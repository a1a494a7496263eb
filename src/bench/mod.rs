//! `stead bench`: the bundled load generator, pointed at any base URL that serves stead's
//! routes (like redis-benchmark for Redis).
//!
//! It runs on glommio executors of its own (`--bench-cores`, default one unpinned), splits the
//! connections across them, and merges their figures at the end. Closed loop by default; with
//! `--rate` open loop, timed from each request's intended send time (no coordinated omission).
//! Only ever connects to the given URL, or to the server it spawned on 127.0.0.1.
//!
//! Layout: `args` (command line and its checks), `scenario` (which path request n asks for),
//! `client` (HTTP/1.1 encoding and pipelined response reading), `chat` (the WebSocket
//! members of `chat-fanout`), `schedule` (open-loop
//! timetable, request budget), `connection` (one connection's writer and reader),
//! `executor` (the executors and their shared figures), `stats` (counts and histograms),
//! `report` / `hgrm` / `plot` / `progress` (output), `compare` (A B A B), `spawn` (`--spawn`).

mod args;
mod chat;
mod client;
mod compare;
mod connection;
mod error;
mod executor;
mod hgrm;
mod plot;
mod progress;
mod report;
mod scenario;
mod schedule;
mod shared;
mod spawn;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

pub use args::BenchArgs;
pub use error::BenchError;
pub use report::Summary;

use args::{parse_url, Plan, Target};
use stats::{Live, Stats};

/// Runs `stead bench`: 0 when the error rate is within `--max-error-rate`, 1 when it is not,
/// 2 when the run could not be carried out (the reason goes to stderr).
pub fn run(args: BenchArgs) -> ExitCode {
    match execute(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "stead bench: error rate above --max-error-rate {}",
                args.max_error_rate
            );
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("stead bench: {error}");
            ExitCode::from(2)
        }
    }
}

/// Carries out the run; true when its error rate is acceptable.
pub fn execute(args: &BenchArgs) -> Result<bool, BenchError> {
    let mut plan = args.plan()?;
    if args.spawn {
        let available = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        // Keep the bench off the server's cores: the last core, unless told otherwise.
        if args.bench_cores.is_empty() && available >= 2 {
            plan.cores = vec![Some(available - 1)];
        }
        let bench_cores: Vec<usize> = plan.cores.iter().flatten().copied().collect();
        let cores = spawn::server_cores(args.server_cores, &bench_cores, available);
        // `stead serve --cores N` pins itself to cores 0..N: say so when that is shared.
        if let Some(shared) = bench_cores.iter().find(|core| **core < cores) {
            eprintln!(
                "stead bench: warning: the server runs on cores 0..{cores} and the bench on core \
                 {shared} too; the figures include their contention"
            );
        }
        let server = spawn::SpawnedServer::start(cores)?;
        println!("spawned stead serve --cores {cores} at {}", server.url);
        let result = parse_url(&server.url).and_then(|target| single(args, &plan, &target));
        let stopped = server.stop();
        let passed = result?;
        stopped?;
        return Ok(passed);
    }
    let ca = args.tls_ca.as_deref();
    let target = parse_url(&args.url)?.with_tls(ca)?;
    let other = match &args.compare {
        Some(other) => Some(parse_url(other)?.with_tls(ca)?),
        None => None,
    };
    let https = target.https || other.as_ref().is_some_and(|other| other.https);
    if https && plan.scenario.chat_rooms().is_some() {
        return Err(BenchError::InvalidArgument {
            flag: "--url",
            reason: "chat-fanout speaks plain http:// only".to_string(),
        });
    }
    match &other {
        None => single(args, &plan, &target),
        Some(other) => compare(args, &plan, &target, other),
    }
}

/// One measured run with its progress line; the summary and the merged figures.
fn measure(plan: &Plan, target: &Target) -> Result<(Summary, Stats), BenchError> {
    let live = Arc::new(Live::default());
    let progress = progress::Progress::start(live.clone(), plan.scenario.name().to_string());
    let result = executor::run_load(plan, target, live);
    progress.finish();
    let (stats, measure_start) = result?;
    Ok((
        Summary::new(&target.url, plan, &stats, measure_start),
        stats,
    ))
}

fn single(args: &BenchArgs, plan: &Plan, target: &Target) -> Result<bool, BenchError> {
    let (summary, stats) = measure(plan, target)?;
    print!("{}", summary.text());
    if let Some(path) = &args.json {
        write_json(path, &summary)?;
    }
    write_distribution(
        args.hgrm.as_deref(),
        args.plot.as_deref(),
        &stats,
        &summary.scenario,
    )?;
    Ok(summary.error_rate <= args.max_error_rate)
}

fn compare(args: &BenchArgs, plan: &Plan, a: &Target, b: &Target) -> Result<bool, BenchError> {
    let (mut a_runs, mut b_runs) = (Vec::new(), Vec::new());
    let (mut a_stats, mut b_stats) = (Stats::default(), Stats::default());
    for round in 1..=2 {
        for (label, target, runs, merged) in [
            ("A", a, &mut a_runs, &mut a_stats),
            ("B", b, &mut b_runs, &mut b_stats),
        ] {
            let (summary, stats) = measure(plan, target)?;
            print!("[{label} run {round}] {}", summary.text());
            merged.merge(&stats);
            runs.push(summary);
        }
    }
    let (text, rows) = compare::table(&a_runs, &b_runs);
    print!("\nA = {}\nB = {}\n{text}", a.url, b.url);
    if let Some(path) = &args.json {
        let ratio: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(name, _, _, ratio)| (name.to_string(), (*ratio).into()))
            .collect();
        let value = serde_json::json!({ "a": a_runs, "b": b_runs, "ratio_b_over_a": ratio });
        write_file(path, &value.to_string())?;
    }
    let name = plan.scenario.name();
    let suffixed = |path: Option<&Path>, suffix: &str| path.map(|path| with_suffix(path, suffix));
    write_distribution(
        suffixed(args.hgrm.as_deref(), "a").as_deref(),
        suffixed(args.plot.as_deref(), "a").as_deref(),
        &a_stats,
        name,
    )?;
    write_distribution(
        suffixed(args.hgrm.as_deref(), "b").as_deref(),
        suffixed(args.plot.as_deref(), "b").as_deref(),
        &b_stats,
        name,
    )?;
    let passed = a_runs
        .iter()
        .chain(&b_runs)
        .all(|summary| summary.error_rate <= args.max_error_rate);
    Ok(passed)
}

/// `latency.svg` with suffix `a` becomes `latency-a.svg`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(extension) => format!("{stem}-{suffix}.{}", extension.to_string_lossy()),
        None => format!("{stem}-{suffix}"),
    };
    path.with_file_name(name)
}

fn write_distribution(
    hgrm: Option<&Path>,
    plot: Option<&Path>,
    stats: &Stats,
    title: &str,
) -> Result<(), BenchError> {
    if let Some(path) = hgrm {
        write_file(path, &hgrm::percentile_distribution(&stats.histogram))?;
    }
    if let Some(path) = plot {
        plot::draw(
            &stats.histogram,
            &format!("stead bench {title}: latency by percentile"),
            path,
        )
        .map_err(|reason| BenchError::Output {
            path: path.to_path_buf(),
            reason,
        })?;
    }
    Ok(())
}

fn write_json(path: &Path, summary: &Summary) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(summary).map_err(|error| BenchError::Output {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    write_file(path, &text)
}

fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|error| BenchError::Output {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}
