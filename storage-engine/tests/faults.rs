//! A disk that fails: the nth write, fdatasync or directory operation fails with EIO or
//! ENOSPC, or a write is short, at many n. Then nothing unacknowledged may be reported
//! durable, the store must be poisoned (later commits fail), and reopening the same disk
//! must recover every acknowledged commit and no partial batch; the reopened store must be a
//! sound base for new commits, even across a later power cut.

mod support;

use std::rc::Rc;

use stead_storage::sim::{CrashMode, Fault, FaultKind, OpKind, SimDisk, SimRng};
use stead_storage::{Batch, Disk, Store, StoreError};
use support::{drive, dump, matching_prefix, object_id, run, small_config, Model};

/// Rounds of the workload before and after the fault.
const ROUNDS: usize = 32;
/// Objects the workload spreads over.
const OBJECTS: u8 = 4;

async fn open(disk: Rc<dyn Disk>) -> Store {
    let config = small_config(std::path::Path::new("/simulated"));
    match Store::open_with_disk(config, disk).await {
        Ok(store) => store,
        Err(error) => panic!("reopen after a fault must succeed: {error}"),
    }
}

/// Runs the workload with `fault` armed, then checks everything the contract promises.
/// Returns whether the fault fired.
async fn fault_case(fault: Fault, seed: u64) -> bool {
    let case = format!("{fault:?} seed {seed}");
    let sim = SimDisk::new(seed);
    let mut rng = SimRng::new(seed ^ 0x5eed);
    let store = open(sim.disk()).await;
    sim.inject(fault);
    sim.set_trace(std::env::var_os("SIM_TRACE").is_some());
    let outcome = drive(&store, &mut rng, &Model::default(), ROUNDS, OBJECTS, || {
        false
    })
    .await;
    sim.clear_faults();
    let fired = !sim.fired_faults().is_empty();

    // Any failed write, fdatasync or directory operation poisons; a failed read (possible
    // only when the fault is aimed at any operation) fails just that read.
    let read_only_fault = sim.fired_faults().iter().any(|fired| {
        ["on Read ", "on Len ", "on List "]
            .iter()
            .any(|op| fired.contains(op))
    });
    if fired && !read_only_fault {
        assert!(
            store.stats().poisoned,
            "{case}: a failed {:?} poisons the store",
            fault.op
        );
        let mut batch = Batch::new();
        batch.put("after", "fault");
        let refused = store.commit(&object_id(0), batch);
        assert!(
            matches!(refused, Err(StoreError::Poisoned)),
            "{case}: commits are refused"
        );
        assert!(
            matches!(store.compact().await, Err(StoreError::Poisoned)),
            "{case}: no compaction"
        );
        let on_log = sim.fired_faults().iter().any(|fired| {
            (fired.contains("on Write log-") || fired.contains("on Fdatasync log-"))
                && !outcome.submitted.is_empty()
        });
        if on_log {
            assert!(
                !outcome.durable_errors.is_empty() && outcome.acked < outcome.submitted.len(),
                "{case}: the commits whose log write or fdatasync failed report it"
            );
        }
        for error in &outcome.durable_errors {
            assert!(
                matches!(error, StoreError::Io { .. }),
                "{case}: a failed commit reports its I/O error, got {error}"
            );
        }
        // Reads of the poisoned store show exactly the acknowledged commits: the ones whose
        // write failed are taken back out of the in-memory view.
        let view = dump(&store).await.expect("read the poisoned store");
        let mut acknowledged = Model::default();
        for commit in &outcome.submitted[..outcome.acked] {
            acknowledged.apply(&commit.object, &commit.ops);
        }
        assert!(
            view == acknowledged,
            "{case}: the poisoned store shows more or less than the {} acknowledged of {} \
             commits: {}",
            outcome.acked,
            outcome.submitted.len(),
            acknowledged.first_difference(&view)
        );
        if let Some(last) = outcome.submitted.last() {
            let all_durable = store.wait_durable(last.seq).await;
            assert_eq!(
                all_durable.is_ok(),
                outcome.acked == outcome.submitted.len(),
                "{case}"
            );
        }
    } else if !fired {
        assert!(
            outcome.refused.is_none(),
            "{case}: no fault, no refusal: {:?}",
            outcome.refused
        );
        assert!(
            outcome.durable_errors.is_empty(),
            "{case}: {:?}",
            outcome.durable_errors
        );
        assert!(
            outcome.other_errors.is_empty(),
            "{case}: {:?}",
            outcome.other_errors
        );
        assert_eq!(
            outcome.acked,
            outcome.submitted.len(),
            "{case}: every commit is durable"
        );
    }
    // A poisoned store's writer or compaction may still have I/O in flight: reopen only
    // after close has waited for it.
    let closed = store.close().await;
    assert!(
        closed.is_ok() || store.stats().poisoned,
        "{case}: close: {closed:?}"
    );
    drop(store);

    // Reopen the same disk: every acknowledged commit, whole batches only. Odd seeds cut
    // the power first, dropping everything unsynced, so "reported durable" must mean synced.
    if seed % 2 == 1 {
        sim.crash(CrashMode::DropUnsynced);
    }
    let store = open(sim.disk()).await;
    let recovered = dump(&store).await.expect("read the reopened store");
    let base = Model::default();
    if let Err(message) = matching_prefix(&base, &outcome.submitted, outcome.acked, &recovered) {
        panic!("{case}: after reopen: {message}");
    }

    // The reopened store takes new commits; all of them, and what the reopen showed, must
    // survive a power cut that drops everything unsynced.
    let more = drive(&store, &mut rng, &recovered, ROUNDS / 2, OBJECTS, || false).await;
    assert!(
        more.durable_errors.is_empty() && more.refused.is_none(),
        "{case}: {more:?}"
    );
    assert_eq!(more.acked, more.submitted.len(), "{case}");
    drop(store);
    sim.crash(CrashMode::DropUnsynced);
    let store = open(sim.disk()).await;
    let after_crash = dump(&store)
        .await
        .expect("read the store after the power cut");
    if let Err(message) = matching_prefix(&recovered, &more.submitted, more.acked, &after_crash) {
        panic!("{case}: after reopen, more commits and a power cut: {message}");
    }
    store.close().await.expect("close");
    fired
}

/// Every fault aimed at the nth operation of its kind for n in `0..n_max`; asserts that most
/// of them fired inside the workload, so the sweep really covers it.
fn sweep(op: OpKind, kinds: &'static [FaultKind], n_max: u64) {
    run(move || async move {
        for &kind in kinds {
            let mut fired = 0;
            for nth in 0..n_max {
                let fault = Fault {
                    op: Some(op),
                    nth,
                    kind,
                };
                if fault_case(fault, nth * 7919 + kind as u64).await {
                    fired += 1;
                }
            }
            assert!(
                fired * 2 >= n_max,
                "{op:?} {kind:?}: only {fired} of {n_max} faults fired"
            );
        }
    });
}

/// Like `sweep`, aimed at the nth operation of any kind (reads included).
fn sweep_any(n_max: u64) {
    run(move || async move {
        let mut fired = 0;
        for nth in 0..n_max {
            let fault = Fault {
                op: None,
                nth,
                kind: FaultKind::Eio,
            };
            if fault_case(fault, nth * 104_729).await {
                fired += 1;
            }
        }
        assert!(
            fired * 2 >= n_max,
            "any operation: only {fired} of {n_max} faults fired"
        );
    });
}

#[test]
fn nth_write_fails() {
    sweep(
        OpKind::Write,
        &[FaultKind::Eio, FaultKind::Enospc, FaultKind::ShortWrite],
        40,
    );
}

#[test]
fn nth_fdatasync_fails() {
    sweep(OpKind::Fdatasync, &[FaultKind::Eio, FaultKind::Enospc], 40);
}

#[test]
fn nth_directory_operation_fails() {
    sweep(OpKind::SyncDir, &[FaultKind::Eio], 8);
    sweep(OpKind::Open, &[FaultKind::Enospc], 8);
    sweep(OpKind::Rename, &[FaultKind::Eio], 2);
    sweep(OpKind::Remove, &[FaultKind::Eio], 4);
}

#[test]
fn nth_operation_of_any_kind_fails() {
    sweep_any(60);
}
