//! A real process crash: `stead-storage-crash-child` commits from many tasks and prints each
//! commit once it is durable; the test kills it with SIGKILL after a random number of those
//! lines (zero included, so some kills land in recovery), reopens the store and checks that
//! every printed commit is there and that each object holds one whole batch.
//!
//! `STEAD_KILL_ROUNDS` sets the number of rounds (default 20) for a longer soak;
//! `STEAD_TEST_SEED` replays a run.

mod crash_workload;
mod real_disk;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use crash_workload::{object, object_after, step_of, TASKS};
use real_disk::{run, seed, Rng};
use stead_storage::{ObjectData, Store, StoreConfig};

const ROUNDS_DEFAULT: u64 = 20;
/// A kill comes after at most this many acknowledged commits.
const ACKS_BEFORE_KILL_MAX: u64 = 400;

/// The child's config, read back the same way.
fn config(dir: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.segment_bytes_max = 64 * 1024;
    config.inline_value_bytes_max = 64;
    config.compaction_automatic = false;
    config.encryption = real_disk::test_encryption();
    config
}

/// Reads one whole line; `None` at the end of the output.
fn read_ack(stdout: &mut BufReader<ChildStdout>) -> Option<(u8, u64)> {
    let mut line = String::new();
    let read = stdout
        .read_line(&mut line)
        .expect("read the child's stdout");
    if read == 0 || !line.ends_with('\n') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let mut field = || {
        fields
            .next()
            .expect("a field")
            .parse::<u64>()
            .expect("a number")
    };
    let (task, step, _seq) = (field(), field(), field());
    Some((u8::try_from(task).expect("a task"), step))
}

/// Runs the child until `acks` commits are acknowledged (or it dies), kills it with SIGKILL,
/// and returns the highest acknowledged step of each task.
fn run_child_and_kill(dir: &Path, acks: u64) -> BTreeMap<u8, u64> {
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_stead-storage-crash-child"))
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the crash child");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut acknowledged = BTreeMap::new();
    let mut record = |(task, step): (u8, u64)| {
        let highest = acknowledged.entry(task).or_insert(step);
        assert!(
            step >= *highest,
            "task {task} acknowledged {step} after {highest}"
        );
        *highest = step;
    };
    let mut died = false;
    for _ in 0..acks {
        match read_ack(&mut stdout) {
            Some(ack) => record(ack),
            None => {
                died = true;
                break;
            }
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    // Lines already in the pipe were printed after their commits were durable: they count.
    while let Some(ack) = read_ack(&mut stdout) {
        record(ack);
    }
    if died {
        let mut stderr = String::new();
        let mut pipe = child.stderr.take().expect("piped stderr");
        pipe.read_to_string(&mut stderr).expect("read stderr");
        panic!("the child stopped by itself ({status}): {stderr}");
    }
    acknowledged
}

/// Reopens the store and checks each task's object against what was acknowledged. `floor`
/// holds each task's step as last recovered (a process crash loses nothing the kernel has,
/// so recovered state never goes back), and is raised to what this recovery finds.
fn check_recovered(dir: &Path, acknowledged: &BTreeMap<u8, u64>, floor: &mut BTreeMap<u8, u64>) {
    let path = dir.to_path_buf();
    let found: Vec<ObjectData> = run(move || async move {
        let store = Store::open(config(&path))
            .await
            .expect("reopen after SIGKILL");
        let mut found = Vec::new();
        for task in 0..TASKS {
            found.push(store.load_object(&object(task)).await.expect("load"));
        }
        store.close().await.expect("close");
        found
    });
    for (task, data) in (0..TASKS).zip(found) {
        let at_least = acknowledged.get(&task).max(floor.get(&task)).copied();
        match (step_of(&data), at_least) {
            (None, None) => assert_eq!(data, ObjectData::default(), "task {task}: stray state"),
            (None, Some(want)) => panic!("task {task}: acknowledged step {want} is lost"),
            (Some(step), _) => {
                assert_eq!(
                    data,
                    object_after(task, step),
                    "task {task}: batch {step} not whole"
                );
                if let Some(want) = at_least {
                    assert!(
                        step >= want,
                        "task {task}: step {step}, acknowledged {want}"
                    );
                }
                // One commit per task is in flight at a time.
                let most = at_least.map_or(0, |want| want + 1);
                assert!(step <= most, "task {task}: step {step} was never committed");
                floor.insert(task, step);
            }
        }
    }
}

#[test]
fn sigkill_loses_no_acknowledged_commit() {
    let rounds = match std::env::var("STEAD_KILL_ROUNDS") {
        Ok(text) => text.parse().expect("STEAD_KILL_ROUNDS is a number"),
        Err(_) => ROUNDS_DEFAULT,
    };
    let mut rng = Rng::new(seed("sigkill_loses_no_acknowledged_commit"));
    let tempdir = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tempdir.path().to_path_buf();
    let mut floor = BTreeMap::new();
    let mut acknowledged_total = 0;
    for round in 0..rounds {
        // One kill in eight comes before any acknowledgement, during open and recovery.
        let acks = match rng.below(8) {
            0 => 0,
            _ => 1 + rng.below(ACKS_BEFORE_KILL_MAX),
        };
        let acknowledged = run_child_and_kill(&dir, acks);
        acknowledged_total += acknowledged.len();
        let files = std::fs::read_dir(&dir).expect("list store directory");
        let names: Vec<String> = files
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let bases = names
            .iter()
            .filter(|name| name.starts_with("base-"))
            .count();
        let logs = names.iter().filter(|name| name.starts_with("log-")).count();
        eprintln!(
            "round {round}: killed after {acks} acknowledgements; {logs} logs, {bases} bases"
        );
        check_recovered(&dir, &acknowledged, &mut floor);
    }
    assert!(
        acknowledged_total > 0,
        "the child acknowledged nothing in {rounds} rounds"
    );
}
