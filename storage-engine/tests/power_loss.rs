//! Simulated power loss at random moments: random workloads over many objects, multi-op
//! batches, small segments (so the log rotates) and compactions running beside the commits;
//! the power is cut at a random operation (inside a write, a rotation, a compaction, its index
//! checkpoint, a manifest switch or a recovery), and each unsynced write is dropped, kept or
//! torn. After every cut the store must reopen holding every acknowledged commit, whole
//! batches only: exactly the state after some prefix of the submitted commits.

mod support;

use std::collections::BTreeMap;

use stead_storage::sim::{CrashMode, SimDisk, SimRng};
use stead_storage::{Store, StoreConfig};
use support::{drive, dump, matching_prefix, run, small_config, Model};

/// Power cuts per seed; each epoch builds on what the previous cut left.
const EPOCHS: usize = 3;
/// Rounds of the workload per epoch (each commits one to four batches).
const ROUNDS: usize = 30;
/// The cut falls within this many disk operations of the epoch's start.
const CRASH_WINDOW_OPS: u64 = 220;
const OBJECTS: u8 = 6;

/// Where power cuts fell, by operation and file kind (`Write log`, `Rename MANIFEST.tmp`, ...),
/// and how often the two-rounds-in-flight path ran and was cut.
type Coverage = BTreeMap<String, u64>;
/// Coverage key: rounds written while the one before was still in flight.
const OVERLAPPED_ROUNDS: &str = "overlapped rounds";
/// Coverage key, reported only: torn tails cut at reopen with the second round after them.
const OVERLAPPED_TAILS: &str = "overlapped tails cut";

fn crash_mode(rng: &mut SimRng) -> CrashMode {
    match rng.below(3) {
        0 => CrashMode::DropUnsynced,
        1 => CrashMode::KeepUnsynced,
        _ => CrashMode::Random,
    }
}

/// The operation kind and file kind of a crash point such as `Write log-000000000000000a`.
fn category(point: &str) -> String {
    let (op, file) = point.split_once(' ').unwrap_or((point, ""));
    let file = file.split('-').next().unwrap_or(file);
    format!("{op} {file}")
}

fn config(rng: &mut SimRng) -> StoreConfig {
    let mut config = small_config(std::path::Path::new("/simulated"));
    config.segment_bytes_max = [8 * 1024, 16 * 1024, 64 * 1024][rng.below(3) as usize];
    // Off, a window smaller than a segment (the preparer fills while the writer appends),
    // and the default (whole segments prepared at rotation).
    config.segment_prepare_bytes = [0, 4 * 1024, 8 * 1024, 4 << 20][rng.below(4) as usize];
    // Mostly two rounds in flight (the default), some runs one at a time.
    config.rounds_in_flight = if rng.chance(25) { 1 } else { 2 };
    if rng.chance(30) {
        config.compaction_automatic = true;
        config.compaction_dead_bytes_min = 8 * 1024;
        config.compaction_dead_percent_min = 25;
    }
    config
}

/// Opens the store after a cut; a cut planned inside recovery itself interrupts the first
/// attempt, which must then leave a disk the second attempt recovers.
async fn reopen(sim: &SimDisk, config: &StoreConfig, case: &str) -> Store {
    let epoch = sim.epoch();
    let opened = Store::open_with_disk(config.clone(), sim.disk()).await;
    // A cut planned for recovery that recovery did not reach is not for the workload.
    sim.cancel_crash();
    match opened {
        Ok(store) => return store,
        // Recovery met its power cut: the error is the cut's EIO.
        Err(_) if sim.epoch() != epoch => {}
        Err(error) => panic!(
            "{case}: reopen failed: {error} (cuts at {:?})",
            sim.crash_points()
        ),
    }
    match Store::open_with_disk(config.clone(), sim.disk()).await {
        Ok(store) => store,
        Err(error) => panic!(
            "{case}: reopen after a cut during recovery failed: {error} (cuts at {:?})",
            sim.crash_points()
        ),
    }
}

async fn power_loss_case(seed: u64, coverage: &mut Coverage) {
    let sim = SimDisk::new(seed);
    let mut rng = SimRng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xC0FFEE);
    let config = config(&mut rng);
    let mut state = Model::default();
    let mut store = reopen(&sim, &config, &format!("seed {seed} first open")).await;
    for epoch in 0..EPOCHS {
        let case = format!("seed {seed} epoch {epoch} ({config:?})");
        let mode = crash_mode(&mut rng);
        sim.crash_at(sim.ops_total() + 1 + rng.below(CRASH_WINDOW_OPS), mode);
        let before = sim.epoch();
        let outcome = drive(&store, &mut rng, &state, ROUNDS, OBJECTS, || {
            sim.epoch() != before
        })
        .await;
        *coverage.entry(OVERLAPPED_ROUNDS.to_string()).or_default() +=
            store.stats().overlapped_rounds_total;
        if sim.epoch() == before {
            assert!(
                outcome.refused.is_none() && outcome.durable_errors.is_empty(),
                "{case}: {outcome:?}"
            );
            assert!(
                outcome.other_errors.is_empty(),
                "{case}: {:?}",
                outcome.other_errors
            );
            sim.crash(mode);
        }
        drop(store);
        if rng.chance(20) {
            // The next cut falls inside recovery: its truncation, orphan removal, manifest.
            sim.crash_at(sim.ops_total() + 1 + rng.below(12), crash_mode(&mut rng));
        }
        store = reopen(&sim, &config, &case).await;
        *coverage.entry(OVERLAPPED_TAILS.to_string()).or_default() +=
            store.stats().overlapped_tails_cut;
        let recovered = match dump(&store).await {
            Ok(recovered) => recovered,
            Err(error) => panic!("{case}: reading the recovered store: {error}"),
        };
        if let Err(message) = matching_prefix(&state, &outcome.submitted, outcome.acked, &recovered)
        {
            panic!(
                "{case}: cut at {:?} in mode {mode:?}: {message}",
                sim.crash_points()
            );
        }
        state = recovered;
    }
    if let Err(error) = store.close().await {
        panic!("seed {seed}: close: {error}");
    }
    drop(store);
    let store = reopen(&sim, &config, &format!("seed {seed} clean reopen")).await;
    assert_eq!(
        dump(&store).await.ok(),
        Some(state),
        "seed {seed}: a clean close and reopen"
    );
    for point in sim.crash_points() {
        *coverage.entry(category(&point)).or_default() += 1;
    }
    let rewrites: Vec<_> = sim
        .synced_overwrites()
        .into_iter()
        .filter(|(name, _)| name.starts_with("log-") || name.starts_with("base-"))
        .collect();
    assert!(
        rewrites.is_empty(),
        "seed {seed}: a segment block that held synced bytes was rewritten: {rewrites:?}"
    );
}

fn seeds(range: std::ops::Range<u64>) -> Coverage {
    let (sender, receiver) = std::sync::mpsc::channel();
    run(move || async move {
        let mut coverage = Coverage::new();
        for seed in range {
            power_loss_case(seed, &mut coverage).await;
        }
        sender
            .send(coverage)
            .expect("the test thread waits for the coverage");
    });
    receiver.recv().expect("the executor sends its coverage")
}

/// Asserts that cuts fell inside every step the crash-safety argument depends on, and that
/// rounds overlapped (cuts between two overlapped rounds are `rounds_in_flight.rs`'s aim).
fn assert_covers(coverage: &Coverage) {
    let required = [
        "Write log",
        "Fdatasync log",
        "Open log",
        "SyncDir directory",
        "Write base",
        "Fdatasync base",
        "Write MANIFEST.tmp",
        "Rename MANIFEST.tmp",
        "Remove log",
        "Write CHECKPOINT.tmp",
        "Rename CHECKPOINT.tmp",
        OVERLAPPED_ROUNDS,
    ];
    // An encrypted store writes no checkpoint.
    let encrypted = support::test_encryption().is_some();
    for step in required
        .into_iter()
        .filter(|step| !(encrypted && step.contains("CHECKPOINT")))
    {
        assert!(
            coverage.get(step).is_some_and(|count| *count > 0),
            "no power cut fell on {step}: {coverage:?}"
        );
    }
}

#[test]
fn power_loss_during_commits_rotation_and_compaction() {
    let coverage = seeds(0..200);
    eprintln!("power cuts by operation: {coverage:?}");
    assert_covers(&coverage);
}

#[test]
fn power_loss_more_seeds() {
    let coverage = seeds(200..400);
    eprintln!("power cuts by operation: {coverage:?}");
    assert_covers(&coverage);
}
