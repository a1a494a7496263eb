//! The index checkpoint: an open that loads it recovers exactly the state (keys, values,
//! alarms, live and dead bytes) that replaying the base segments gives, over random workloads
//! with compactions and restarts; a missing, corrupt, truncated, stale or foreign-version
//! checkpoint is ignored and costs nothing but time; a power cut while one is written leaves a
//! store that recovers every acknowledged commit.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use stead_storage::sim::{CrashMode, SimDisk, SimRng};
use stead_storage::{Batch, Store, StoreConfig, StoreStats};
use support::{drive, dump, object_id, run, Model};

/// `support::small_config`, always plain: an encrypted store keeps no checkpoint.
fn small_config(dir: &Path) -> StoreConfig {
    let mut config = support::small_config(dir);
    config.encryption = None;
    config
}

const CHECKPOINT: &str = "CHECKPOINT";
/// Where a test puts the checkpoint aside to force an open without it.
const HIDDEN: &str = "CHECKPOINT.hidden";

/// The figures both ways of opening must agree on.
fn figures(stats: &StoreStats) -> [u64; 6] {
    [
        stats.objects,
        stats.keys,
        stats.segments,
        stats.live_bytes,
        stats.dead_bytes,
        stats.disk_bytes,
    ]
}

fn apply_all(model: &mut Model, outcome: &support::Outcome) {
    for commit in &outcome.submitted {
        model.apply(&commit.object, &commit.ops);
    }
}

async fn open_sim(sim: &SimDisk, config: &StoreConfig, case: &str) -> Store {
    match Store::open_with_disk(config.clone(), sim.disk()).await {
        Ok(store) => store,
        Err(error) => panic!("{case}: open: {error}"),
    }
}

async fn close(store: Store, case: &str) {
    if let Err(error) = store.close().await {
        panic!("{case}: close: {error}");
    }
}

/// Random workloads, compactions and restarts: after each, the store opened through its
/// checkpoint equals the store opened by replaying everything, and both equal the model.
#[test]
fn checkpoint_recovers_the_same_state_as_replay() {
    run(|| async {
        let mut loaded = 0;
        for seed in 0..40u64 {
            let sim = SimDisk::new(seed);
            let mut rng = SimRng::new(seed ^ 0x00C0_FFEE);
            let mut config = small_config(Path::new("/simulated"));
            config.segment_bytes_max = [8 * 1024, 16 * 1024, 64 * 1024][rng.below(3) as usize];
            let disk = sim.disk();
            let mut model = Model::default();
            let mut store = open_sim(&sim, &config, "first open").await;
            for epoch in 0..5 {
                let case = format!("seed {seed} epoch {epoch}");
                let outcome = drive(&store, &mut rng, &model, 30, 6, || false).await;
                assert!(outcome.other_errors.is_empty(), "{case}: {outcome:?}");
                apply_all(&mut model, &outcome);
                if rng.chance(70) {
                    store.compact().await.expect("compact");
                }
                // Commits after the compaction: the log the checkpoint sits under.
                let rounds = rng.below(10) as usize;
                let outcome = drive(&store, &mut rng, &model, rounds, 6, || false).await;
                apply_all(&mut model, &outcome);
                close(store, &case).await;

                let with = open_sim(&sim, &config, &case).await;
                let with_stats = with.stats();
                let with_state = dump(&with).await.expect("dump");
                close(with, &case).await;
                let has_checkpoint = sim.names().iter().any(|name| name == CHECKPOINT);
                if has_checkpoint {
                    disk.rename(CHECKPOINT, HIDDEN).await.expect("hide");
                }
                let without = open_sim(&sim, &config, &case).await;
                let without_stats = without.stats();
                let without_state = dump(&without).await.expect("dump");
                close(without, &case).await;
                if has_checkpoint {
                    disk.rename(HIDDEN, CHECKPOINT).await.expect("restore");
                }

                assert!(!without_stats.recovered_from_checkpoint, "{case}");
                loaded += u64::from(with_stats.recovered_from_checkpoint);
                assert_eq!(
                    with_state,
                    without_state,
                    "{case}: checkpoint vs replay: {}",
                    with_state.first_difference(&without_state)
                );
                assert_eq!(figures(&with_stats), figures(&without_stats), "{case}");
                assert_eq!(
                    with_state,
                    model,
                    "{case}: {}",
                    model.first_difference(&with_state)
                );
                store = open_sim(&sim, &config, &case).await;
            }
            close(store, "last").await;
        }
        // Most epochs open through a checkpoint; the comparison above is then not vacuous.
        assert!(loaded > 100, "only {loaded} opens used a checkpoint");
    });
}

/// A store on the real disk with values in memory and on disk, alarms, a compaction and
/// commits after it; returns what it holds.
fn build_store(config: &StoreConfig, compactions: usize) -> Model {
    let config = config.clone();
    let (sender, receiver) = std::sync::mpsc::channel();
    run(move || async move {
        let store = Store::open(config).await.expect("open");
        let mut rng = SimRng::new(compactions as u64);
        let mut model = dump(&store).await.expect("dump");
        for _ in 0..compactions {
            let outcome = drive(&store, &mut rng, &model, 60, 12, || false).await;
            apply_all(&mut model, &outcome);
            store.compact().await.expect("compact");
        }
        let outcome = drive(&store, &mut rng, &model, 10, 12, || false).await;
        apply_all(&mut model, &outcome);
        store.close().await.expect("close");
        sender.send(model).expect("send");
    });
    receiver.recv().expect("model")
}

/// Opens the store on the real disk; returns what it holds and whether the checkpoint was
/// used.
fn open_real(config: &StoreConfig) -> (Model, bool) {
    let config = config.clone();
    let (sender, receiver) = std::sync::mpsc::channel();
    run(move || async move {
        let store = Store::open(config).await.expect("open");
        let state = dump(&store).await.expect("dump");
        let used = store.stats().recovered_from_checkpoint;
        store.close().await.expect("close");
        sender.send((state, used)).expect("send");
    });
    receiver.recv().expect("state")
}

/// Every kind of bad checkpoint is ignored: the open replays and loses nothing.
#[test]
fn damaged_checkpoint_falls_back_to_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(dir.path());
    let path = dir.path().join(CHECKPOINT);
    let model = build_store(&config, 1);
    let stale = std::fs::read(&path).expect("a checkpoint after compaction");
    // A second compaction: the first checkpoint is now stale (another manifest).
    let config_again = config.clone();
    let (sender, receiver) = std::sync::mpsc::channel();
    run(move || async move {
        let store = Store::open(config_again).await.expect("open");
        let mut batch = Batch::new();
        batch.put(b"after".to_vec(), vec![7; 300]);
        batch.set_alarm(42);
        store
            .commit(&object_id(200), batch)
            .expect("commit")
            .1
            .await
            .expect("durable");
        store.compact().await.expect("compact");
        let state = dump(&store).await.expect("dump");
        store.close().await.expect("close");
        sender.send(state).expect("send");
    });
    let model_after: Model = receiver.recv().expect("state");
    assert_ne!(model, model_after);
    let good = std::fs::read(&path).expect("checkpoint");
    assert_ne!(good, stale);
    assert_eq!(
        open_real(&config),
        (model_after.clone(), true),
        "the good checkpoint is used"
    );

    let payload_end = 4096 + u64::from_le_bytes(good[8..16].try_into().expect("8 bytes")) as usize;
    let mut cases: Vec<(String, Option<Vec<u8>>)> = vec![
        ("missing".to_string(), None),
        ("stale".to_string(), Some(stale)),
        ("empty".to_string(), Some(Vec::new())),
    ];
    // Header fields (magic, version, length, crc), the first, a middle and the last payload
    // byte.
    for at in [0, 5, 9, 17, 4096, (4096 + payload_end) / 2, payload_end - 1] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x10;
        cases.push((format!("bit flip at {at}"), Some(bytes)));
    }
    for length in [100, 4096, 4097, payload_end / 2, payload_end - 1] {
        cases.push((
            format!("truncated to {length}"),
            Some(good[..length].to_vec()),
        ));
    }
    // Another version with a checksum that matches: refused for its version alone.
    let mut other_version = good.clone();
    other_version[4..8].copy_from_slice(&2u32.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&other_version[4..16]);
    crc.update(&other_version[4096..payload_end]);
    other_version[16..20].copy_from_slice(&crc.finalize().to_le_bytes());
    cases.push(("version 2".to_string(), Some(other_version)));

    for (case, bytes) in cases {
        match bytes {
            Some(bytes) => std::fs::write(&path, bytes).expect("write"),
            None => std::fs::remove_file(&path).expect("remove"),
        }
        let (state, used) = open_real(&config);
        assert!(!used, "{case}: the checkpoint was used");
        assert_eq!(
            state,
            model_after,
            "{case}: {}",
            model_after.first_difference(&state)
        );
    }
    // Another inline limit than it was written with: replayed, since values it left on disk
    // would now have to be in memory.
    std::fs::write(&path, &good).expect("write");
    let mut larger_inline = config.clone();
    larger_inline.inline_value_bytes_max = 1024;
    let (state, used) = open_real(&larger_inline);
    assert!(!used, "another inline limit: the checkpoint was used");
    assert_eq!(state, model_after);
    assert_eq!(
        open_real(&config),
        (model_after, true),
        "the good one again"
    );
}

/// Power cut at every disk operation of a compaction, its checkpoint write included, in each
/// crash mode: the reopened store holds every commit, and a later open with the checkpoint
/// the cut left (if any) agrees with one without.
#[test]
fn power_cut_while_writing_the_checkpoint() {
    run(|| async {
        let mut points = BTreeSet::new();
        for mode in [
            CrashMode::DropUnsynced,
            CrashMode::KeepUnsynced,
            CrashMode::Random,
        ] {
            let mut cut = 1;
            loop {
                let case = format!("{mode:?} cut {cut}");
                let sim = SimDisk::new(cut);
                let config = small_config(Path::new("/simulated"));
                let mut rng = SimRng::new(7);
                let store = open_sim(&sim, &config, &case).await;
                let outcome = drive(&store, &mut rng, &Model::default(), 25, 4, || false).await;
                let mut model = Model::default();
                apply_all(&mut model, &outcome);
                store.compact().await.expect("first compaction");
                let outcome = drive(&store, &mut rng, &model, 10, 4, || false).await;
                apply_all(&mut model, &outcome);
                let epoch = sim.epoch();
                sim.crash_at(sim.ops_total() + cut, mode);
                let compacted = store.compact().await;
                let finished = sim.epoch() == epoch;
                sim.cancel_crash();
                if finished {
                    compacted.expect("compaction without a cut");
                    close(store, &case).await;
                } else {
                    drop(store);
                }
                points.extend(sim.crash_points());
                for _ in 0..2 {
                    let reopened = open_sim(&sim, &config, &case).await;
                    let state = dump(&reopened).await.expect("dump");
                    assert_eq!(state, model, "{case}: {}", model.first_difference(&state));
                    close(reopened, &case).await;
                }
                if finished {
                    break;
                }
                cut += 1;
            }
        }
        for step in [
            "Write CHECKPOINT.tmp",
            "Fdatasync CHECKPOINT.tmp",
            "Rename CHECKPOINT.tmp",
        ] {
            assert!(
                points.iter().any(|point| point.starts_with(step)),
                "no cut fell on {step}: {points:?}"
            );
        }
    });
}
