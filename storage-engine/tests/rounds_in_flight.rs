//! Two rounds in flight: the log writer issues round N+1's durable write while round N's is
//! still in the device, and acknowledges in order. A crash can then leave N damaged and N+1
//! whole. These tests hold the rule recovery applies (`DESIGN.md`, "Two rounds in flight"):
//! such a tail is cut, since neither round was acknowledged, and nothing else after damage is.

mod support;

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use stead_storage::codec::{self, BLOCK_BYTES};
use stead_storage::sim::{CrashMode, Fault, FaultKind, OpKind, SimDisk, SimRng};
use stead_storage::{Batch, ObjectId, Op, RecoveryMode, Store, StoreConfig, StoreError};
use support::run;

/// `support::small_config`, always plain: these tests write or read the plain record format
/// byte by byte (the encrypted format's damage is in `tests/encryption.rs`).
fn small_config(dir: &Path) -> StoreConfig {
    let mut config = support::small_config(dir);
    config.encryption = None;
    config
}

const LOG: &str = "log-0000000000000001";
const OBJECT: ObjectId = [4u8; 32];

fn sim_config() -> StoreConfig {
    let mut config = small_config(Path::new("/simulated"));
    config.rounds_in_flight = 2;
    config
}

/// A log record of one batch putting `k{seq}`, numbered `seq`, in segment 1.
fn record(seq: u64, overlapped: bool) -> Vec<u8> {
    let mut payload = Vec::new();
    let ops = [Op::Put {
        key: format!("k{seq}").into_bytes(),
        value: b"v".to_vec(),
    }];
    codec::encode_batch(&mut payload, &OBJECT, &ops, |_, _| {});
    codec::encode_record((seq, 1), 1, overlapped, &payload, None)
}

/// A record damaged the way a torn write leaves it: its payload's last byte changed.
fn damaged(seq: u64) -> Vec<u8> {
    let mut bytes = record(seq, false);
    let last = codec::RECORD_HEADER_BYTES + 8;
    bytes[last] ^= 0xFF;
    bytes
}

/// Writes `blocks` as the first log segment of a fresh store on `sim`, durably.
async fn write_log(sim: &SimDisk, blocks: &[Vec<u8>]) {
    let store = Store::open_with_disk(sim_config(), sim.disk())
        .await
        .expect("create");
    store.close().await.expect("close");
    let disk = sim.disk();
    let file = disk.open_file(LOG, true).await.expect("create log");
    let mut offset = 0;
    for block in blocks {
        assert_eq!(block.len() % BLOCK_BYTES, 0);
        file.write_at(offset, block).await.expect("write");
        offset += block.len() as u64;
    }
    file.fdatasync().await.expect("sync");
    disk.sync_dir().await.expect("sync dir");
}

/// The keys the object holds after an open.
async fn keys(store: &Store) -> Vec<String> {
    let mut keys = Vec::new();
    for seq in 1..=5 {
        let key = format!("k{seq}");
        if store
            .get(&OBJECT, key.as_bytes())
            .await
            .expect("get")
            .is_some()
        {
            keys.push(key);
        }
    }
    keys
}

#[test]
fn a_damaged_round_followed_by_its_overlapped_partner_is_cut() {
    run(|| async {
        for partner_damage in [damaged(2), vec![0; BLOCK_BYTES]] {
            let sim = SimDisk::new(1);
            write_log(&sim, &[record(1, false), partner_damage, record(3, true)]).await;
            let store = Store::open_with_disk(sim_config(), sim.disk())
                .await
                .expect("a damaged round and the round beside it are an unacknowledged tail");
            assert_eq!(keys(&store).await, ["k1"]);
            assert_eq!(store.stats().overlapped_tails_cut, 1);
            // The cut is durable: both rounds are gone from the file, and new commits go on.
            let log = sim.file_bytes(LOG).expect("log");
            assert!(log[BLOCK_BYTES..].iter().all(|byte| *byte == 0));
            let mut batch = Batch::new();
            batch.put("after", "cut");
            let (_, durable) = store.commit(&OBJECT, batch).expect("commit");
            durable.await.expect("durable");
            store.close().await.expect("close");
            let store = Store::open_with_disk(sim_config(), sim.disk())
                .await
                .expect("reopen");
            assert_eq!(keys(&store).await, ["k1"]);
            assert!(store.get(&OBJECT, b"after").await.expect("get").is_some());
        }
    });
}

#[test]
fn salvage_cuts_the_same_tail_instead_of_keeping_the_partner() {
    run(|| async {
        let sim = SimDisk::new(6);
        write_log(&sim, &[record(1, false), damaged(2), record(3, true)]).await;
        let mut config = sim_config();
        config.recovery = RecoveryMode::Salvage;
        let store = Store::open_with_disk(config, sim.disk())
            .await
            .expect("salvage opens");
        // Keeping k3 without k2 would be a state no order of commits produced.
        assert_eq!(keys(&store).await, ["k1"]);
        assert_eq!(store.stats().overlapped_tails_cut, 1);
    });
}

/// Opens and expects corruption reported at the damaged record's block.
async fn expect_refused(sim: &SimDisk, why: &str) {
    match Store::open_with_disk(sim_config(), sim.disk()).await {
        Err(StoreError::Corruption { file, offset, .. }) => {
            assert_eq!((file.as_str(), offset), (LOG, BLOCK_BYTES as u64), "{why}");
        }
        Err(other) => panic!("{why}: expected corruption, got {other}"),
        Ok(_) => panic!("{why}: the store opened"),
    }
}

#[test]
fn damage_the_rule_does_not_explain_is_still_refused() {
    run(|| async {
        let sim = SimDisk::new(2);
        write_log(&sim, &[record(1, false), damaged(2), record(3, false)]).await;
        expect_refused(&sim, "the record after the damage was written alone").await;

        let sim = SimDisk::new(3);
        write_log(
            &sim,
            &[
                record(1, false),
                damaged(2),
                record(3, true),
                record(4, true),
            ],
        )
        .await;
        expect_refused(&sim, "two records after the damage").await;

        let sim = SimDisk::new(4);
        write_log(&sim, &[record(1, false), damaged(2), record(2, true)]).await;
        expect_refused(&sim, "the partner leaves no batch for the damaged round").await;
    });
}

/// Seeds for the power-cut workload; each cuts once in the middle of concurrent commits.
const SEEDS: u64 = 300;
/// Tasks committing at once, each to its own object, so rounds overlap.
const COMMITTERS: u8 = 8;

/// What one committer submitted and what of it was acknowledged: the highest counter value.
#[derive(Default, Clone, Copy)]
struct Progress {
    submitted: u64,
    acked: u64,
}

/// Commits counter values 1, 2, 3, ... to key `n` of its own object until the store fails,
/// pausing a random few turns of the executor before each, so commits arrive while a round
/// is in flight (committers in lockstep would all wait on the same round).
async fn committer(
    store: Rc<Store>,
    object: ObjectId,
    progress: Rc<RefCell<Progress>>,
    mut rng: SimRng,
) {
    for value in 1u64.. {
        for _ in 0..rng.below(4) {
            futures_lite::future::yield_now().await;
        }
        let mut batch = Batch::new();
        batch.put("n", value.to_le_bytes().to_vec());
        let Ok((_, durable)) = store.commit(&object, batch) else {
            return;
        };
        progress.borrow_mut().submitted = value;
        if durable.await.is_err() {
            return;
        }
        progress.borrow_mut().acked = value;
    }
}

/// No log segment starts with an overlapped record: a round in flight never spans a rotation,
/// so every sealed segment ends in a record that was durable before the next one began.
/// Returns how many segments it looked at.
fn assert_no_segment_starts_overlapped(sim: &SimDisk, seed: u64) -> u64 {
    let mut checked = 0;
    for name in sim.names().iter().filter(|name| name.starts_with("log-")) {
        let bytes = sim.file_bytes(name).expect("listed");
        if let Ok((header, _)) = codec::decode_record(&bytes) {
            assert!(
                !header.overlapped,
                "seed {seed}: {name} starts with a record written beside one in another segment"
            );
            checked += 1;
        }
    }
    checked
}

#[test]
fn power_cuts_under_two_rounds_in_flight_lose_no_acknowledged_commit() {
    run(|| async {
        let (mut overlapped_rounds, mut tails_cut, mut first_records_checked) = (0, 0, 0);
        for seed in 0..SEEDS {
            let sim = SimDisk::new(seed);
            sim.set_yield_percent(60);
            let mut rng = SimRng::new(seed ^ 0x5EED);
            let mut config = sim_config();
            // Small segments rotate every few rounds, so rounds queue up across rotations.
            config.segment_bytes_max = [8 * 1024, 64 * 1024][rng.below(2) as usize];
            config.segment_prepare_bytes = [0, 8 * 1024, 64 * 1024][rng.below(3) as usize];
            let store = Rc::new(
                Store::open_with_disk(config.clone(), sim.disk())
                    .await
                    .expect("open"),
            );
            let mode = [CrashMode::DropUnsynced, CrashMode::Random][rng.below(2) as usize];
            sim.crash_at(sim.ops_total() + 20 + rng.below(200), mode);
            let mut tasks = Vec::new();
            let mut progress = Vec::new();
            for n in 0..COMMITTERS {
                let object = [n; 32];
                let state = Rc::new(RefCell::new(Progress::default()));
                progress.push((object, state.clone()));
                let rng = SimRng::new(seed * 64 + u64::from(n));
                tasks.push(glommio::spawn_local(committer(
                    store.clone(),
                    object,
                    state,
                    rng,
                )));
            }
            for task in tasks {
                task.await;
            }
            overlapped_rounds += store.stats().overlapped_rounds_total;
            drop(store);
            sim.cancel_crash();
            let store = match Store::open_with_disk(config.clone(), sim.disk()).await {
                Ok(store) => store,
                Err(error) => panic!(
                    "seed {seed}: reopen after {:?} failed: {error}",
                    sim.crash_points()
                ),
            };
            tails_cut += store.stats().overlapped_tails_cut;
            first_records_checked += assert_no_segment_starts_overlapped(&sim, seed);
            for (object, state) in &progress {
                let Progress { submitted, acked } = *state.borrow();
                let found = store
                    .get(object, b"n")
                    .await
                    .expect("read")
                    .map(|bytes| u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
                    .unwrap_or(0);
                assert!(
                    acked <= found && found <= submitted,
                    "seed {seed}: object {} holds {found}, acknowledged {acked}, submitted \
                     {submitted} (cut at {:?})",
                    object[0],
                    sim.crash_points()
                );
            }
        }
        // The path under test ran, and cuts hit it: a damaged round followed by its partner.
        assert!(overlapped_rounds > 0, "no round was written beside another");
        assert!(
            tails_cut > 0,
            "no cut left a damaged round before its partner"
        );
        assert!(
            first_records_checked > SEEDS,
            "segments rotated too rarely to tell"
        );
        eprintln!("overlapped rounds {overlapped_rounds}, overlapped tails cut {tails_cut}");
    });
}

/// Rewrites the store's manifest as format 1 wrote it (same contents, version 1).
async fn downgrade_manifest(sim: &SimDisk) {
    let mut bytes = sim.file_bytes("MANIFEST").expect("manifest");
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    let payload_len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[4..12]);
    hasher.update(&bytes[16..16 + payload_len]);
    bytes[12..16].copy_from_slice(&hasher.finalize().to_le_bytes());
    let file = sim.disk().open_file("MANIFEST", false).await.expect("open");
    file.write_at(0, &bytes).await.expect("write");
    file.fdatasync().await.expect("sync");
}

fn manifest_version(sim: &SimDisk) -> u32 {
    let bytes = sim.file_bytes("MANIFEST").expect("manifest");
    u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"))
}

#[test]
fn a_format_1_store_whose_upgrade_fails_writes_one_round_at_a_time() {
    run(|| async {
        let sim = SimDisk::new(5);
        sim.set_yield_percent(60);
        let store = Store::open_with_disk(sim_config(), sim.disk())
            .await
            .expect("create");
        store.close().await.expect("close");
        downgrade_manifest(&sim).await;
        // The manifest rewrite is the open's only write: it fails, as on a full disk.
        sim.inject(Fault {
            op: Some(OpKind::Write),
            nth: 0,
            kind: FaultKind::Enospc,
        });
        let store = Rc::new(
            Store::open_with_disk(sim_config(), sim.disk())
                .await
                .expect("a format 1 store opens although its upgrade failed"),
        );
        sim.clear_faults();
        assert_eq!(manifest_version(&sim), 1);
        let mut tasks = Vec::new();
        for n in 0..COMMITTERS {
            let progress = Rc::new(RefCell::new(Progress::default()));
            let rng = SimRng::new(u64::from(n));
            let task = glommio::spawn_local(committer(store.clone(), [n; 32], progress, rng));
            tasks.push(task);
        }
        // The committers go on until the store refuses; let them run a while, then close.
        for _ in 0..2000 {
            futures_lite::future::yield_now().await;
        }
        store.close().await.expect("close");
        for task in tasks {
            task.await;
        }
        let stats = store.stats();
        assert!(stats.commits_total > 100, "{stats:?}");
        assert_eq!(
            stats.overlapped_rounds_total, 0,
            "no flagged record under a format 1 manifest"
        );
        drop(store);

        // The next open upgrades, and rounds may overlap again.
        let store = Store::open_with_disk(sim_config(), sim.disk())
            .await
            .expect("reopen");
        assert_eq!(manifest_version(&sim), 2);
        store.close().await.expect("close");
    });
}
