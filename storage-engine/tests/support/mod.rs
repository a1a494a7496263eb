//! Shared by the fault, power-loss and model tests: an executor, a reference model of a
//! store, a random workload driver and the prefix check that every crash test ends with.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;

use glommio::{LocalExecutorBuilder, Placement};
use stead_storage::sim::SimRng;
use stead_storage::{Batch, ListOptions, ObjectData, ObjectId, Op, Store, StoreConfig, StoreError};

/// Runs `make()` on a glommio executor small enough for the machine's 8 MiB memlock limit.
pub fn run<F: Future<Output = ()> + 'static>(make: impl FnOnce() -> F + Send + 'static) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .ring_depth(64)
        .spawn(make)
        .expect("executor starts")
        .join()
        .expect("test body completes");
}

/// A config that makes segments rotate after a few commits and keeps compaction explicit.
/// The directory is only used by `Store::open`; simulated disks ignore it.
/// With `STEAD_STORAGE_TEST_ENCRYPTION=1` every store is encrypted (`test_encryption`): the
/// crash tests then run over sealed records (`.ci/run` runs the engine's tests both ways).
pub fn small_config(dir: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.segment_bytes_max = 16 * 1024;
    config.inline_value_bytes_max = 64;
    config.compaction_automatic = false;
    config.encryption = test_encryption();
    config
}

/// The key of the encrypted test runs, when `STEAD_STORAGE_TEST_ENCRYPTION=1`.
pub fn test_encryption() -> Option<std::sync::Arc<stead_storage::Encryption>> {
    let wanted = std::env::var("STEAD_STORAGE_TEST_ENCRYPTION").is_ok_and(|value| value == "1");
    wanted.then(|| {
        let keys = vec![(0x5EED, [0x42; stead_storage::ENCRYPTION_KEY_BYTES])];
        std::sync::Arc::new(stead_storage::Encryption::new(keys).expect("one key"))
    })
}

/// What a store should hold: every object that has a key or an alarm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub objects: BTreeMap<ObjectId, ObjectData>,
}

impl Model {
    /// Applies one batch, op by op, the way the store documents it.
    pub fn apply(&mut self, object: &ObjectId, ops: &[Op]) {
        let data = self.objects.entry(*object).or_default();
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    data.entries.insert(key.clone(), value.clone());
                }
                Op::Delete { key } => {
                    data.entries.remove(key);
                }
                Op::DeleteAll => data.entries.clear(),
                Op::SetAlarm { time_ms } => data.alarm_ms = Some(*time_ms),
                Op::DeleteAlarm => data.alarm_ms = None,
            }
        }
        if data.entries.is_empty() && data.alarm_ms.is_none() {
            self.objects.remove(object);
        }
    }

    pub fn get(&self, object: &ObjectId, key: &[u8]) -> Option<Vec<u8>> {
        self.objects.get(object)?.entries.get(key).cloned()
    }

    /// `Store::list` written the obvious way: filter every key, then order and cut.
    pub fn list(&self, object: &ObjectId, options: &ListOptions) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(data) = self.objects.get(object) else {
            return Vec::new();
        };
        let selected = data.entries.iter().filter(|(key, _)| {
            options
                .prefix
                .as_ref()
                .is_none_or(|prefix| key.starts_with(prefix))
                && options.start.as_ref().is_none_or(|start| *key >= start)
                && options
                    .start_after
                    .as_ref()
                    .is_none_or(|after| *key > after)
                && options.end.as_ref().is_none_or(|end| *key < end)
        });
        let mut found: Vec<(Vec<u8>, Vec<u8>)> = selected
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if options.reverse {
            found.reverse();
        }
        found.truncate(options.limit.unwrap_or(usize::MAX));
        found
    }

    pub fn alarms(&self) -> Vec<(ObjectId, i64)> {
        let alarms = self.objects.iter();
        alarms
            .filter_map(|(id, data)| data.alarm_ms.map(|alarm| (*id, alarm)))
            .collect()
    }

    /// The first object whose state differs from `other`'s, for failure messages.
    pub fn first_difference(&self, other: &Model) -> String {
        let ids: std::collections::BTreeSet<&ObjectId> =
            self.objects.keys().chain(other.objects.keys()).collect();
        for id in ids {
            let (mine, theirs) = (self.objects.get(id), other.objects.get(id));
            if mine != theirs {
                let summary = |data: Option<&ObjectData>| {
                    data.map(|data| {
                        let keys: Vec<String> = data
                            .entries
                            .keys()
                            .map(|key| String::from_utf8_lossy(key).into_owned())
                            .collect();
                        format!("keys {keys:?} alarm {:?}", data.alarm_ms)
                    })
                };
                return format!(
                    "object {}: {:?} vs {:?}",
                    id[0],
                    summary(mine),
                    summary(theirs)
                );
            }
        }
        "no difference".to_string()
    }
}

/// Everything a store holds, read through its public API, checked against its alarm list.
pub async fn dump(store: &Store) -> Result<Model, StoreError> {
    let mut model = Model::default();
    for object in store.objects() {
        model
            .objects
            .insert(object, store.load_object(&object).await?);
    }
    let mut alarms = store.objects_with_alarms();
    alarms.sort_unstable();
    assert_eq!(
        alarms,
        model.alarms(),
        "objects_with_alarms agrees with load_object"
    );
    Ok(model)
}

/// An object id that is readable in failure messages: its first byte is `n`.
pub fn object_id(n: u8) -> ObjectId {
    let mut id = [0u8; 32];
    id[0] = n;
    id
}

/// A small key space, so batches overwrite, delete and share prefixes.
pub fn random_key(rng: &mut SimRng) -> Vec<u8> {
    let length = 1 + rng.below(3) as usize;
    (0..length)
        .map(|_| b"abcd"[rng.below(4) as usize])
        .collect()
}

/// Mostly small values (kept in memory), sometimes large ones (read back from disk).
pub fn random_value(rng: &mut SimRng) -> Vec<u8> {
    let length = if rng.chance(25) {
        65 + rng.below(6000)
    } else {
        rng.below(40)
    };
    let byte = rng.below(256) as u8;
    (0..length)
        .map(|index| byte.wrapping_add(index as u8))
        .collect()
}

/// A batch of one to six ops of every kind on one of `objects` objects.
pub fn random_batch(rng: &mut SimRng, objects: u8) -> (ObjectId, Batch) {
    let object = object_id(rng.below(u64::from(objects)) as u8);
    let mut batch = Batch::new();
    for _ in 0..1 + rng.below(6) {
        match rng.below(100) {
            0..=49 => batch.put(random_key(rng), random_value(rng)),
            50..=69 => batch.delete(random_key(rng)),
            70..=74 => batch.delete_all(),
            75..=89 => batch.set_alarm(rng.below(1_000_000) as i64),
            _ => batch.delete_alarm(),
        };
    }
    (object, batch)
}

/// One commit the store accepted.
#[derive(Clone, Debug)]
pub struct Submitted {
    pub seq: u64,
    pub object: ObjectId,
    pub ops: Vec<Op>,
}

/// The one prefix length `p` ≥ `acked` (the first, if several) such that `base` with the first
/// `p` submitted commits applied equals `recovered`; an error describing the mismatch if none.
pub fn matching_prefix(
    base: &Model,
    submitted: &[Submitted],
    acked: usize,
    recovered: &Model,
) -> Result<usize, String> {
    let mut model = base.clone();
    let mut closest = None;
    for prefix in 0..=submitted.len() {
        if prefix >= acked {
            if model == *recovered {
                return Ok(prefix);
            }
            closest.get_or_insert_with(|| model.first_difference(recovered));
        }
        if let Some(commit) = submitted.get(prefix) {
            model.apply(&commit.object, &commit.ops);
        }
    }
    Err(format!(
        "recovered state is no prefix of at least {acked} of {} submitted commits; at the \
         shortest allowed prefix, expected vs recovered: {}",
        submitted.len(),
        closest.unwrap_or_default()
    ))
}

/// What one run of [`drive`] saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub submitted: Vec<Submitted>,
    /// How many of the submitted commits were reported durable (always a prefix: a `Durable`
    /// resolving means every earlier commit is durable too).
    pub acked: usize,
    /// Errors of `Durable` futures, in submission order.
    pub durable_errors: Vec<StoreError>,
    /// The error that refused a commit and ended the run, if any.
    pub refused: Option<StoreError>,
    /// Errors of reads and compactions.
    pub other_errors: Vec<StoreError>,
}

/// Commits random batches in rounds of one to four (so group commits form), sometimes waits
/// for them, reads back through get and list against the model, and sometimes runs a
/// compaction concurrently with the commits. Stops after `rounds`, when a commit is refused,
/// or when `stop()` says so; waits for every outstanding future before it returns.
pub async fn drive(
    store: &Store,
    rng: &mut SimRng,
    base: &Model,
    rounds: usize,
    objects: u8,
    stop: impl Fn() -> bool,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut expected = base.clone();
    let mut waiting = Vec::new();
    let mut compaction: Option<glommio::Task<Result<(), StoreError>>> = None;
    for _ in 0..rounds {
        if stop() || outcome.refused.is_some() {
            break;
        }
        for _ in 0..1 + rng.below(4) {
            let (object, batch) = random_batch(rng, objects);
            let ops = batch.ops().to_vec();
            match store.commit(&object, batch) {
                Ok((seq, durable)) => {
                    expected.apply(&object, &ops);
                    waiting.push((outcome.submitted.len(), durable));
                    outcome.submitted.push(Submitted { seq, object, ops });
                }
                Err(error) => {
                    outcome.refused = Some(error);
                    break;
                }
            }
        }
        check_reads(store, rng, &expected, objects, &mut outcome).await;
        if rng.chance(40) {
            settle(&mut waiting, &mut outcome).await;
        }
        if compaction.is_none() && rng.chance(12) {
            let store = store.clone();
            compaction = Some(glommio::spawn_local(async move { store.compact().await }));
        } else if rng.chance(30) {
            finish_compaction(&mut compaction, &mut outcome).await;
        }
    }
    settle(&mut waiting, &mut outcome).await;
    finish_compaction(&mut compaction, &mut outcome).await;
    outcome
}

/// Awaits every outstanding `Durable`, recording which succeeded.
async fn settle(waiting: &mut Vec<(usize, stead_storage::Durable)>, outcome: &mut Outcome) {
    for (index, durable) in waiting.drain(..) {
        match durable.await {
            Ok(()) => outcome.acked = outcome.acked.max(index + 1),
            Err(error) => outcome.durable_errors.push(error),
        }
    }
}

async fn finish_compaction(
    compaction: &mut Option<glommio::Task<Result<(), StoreError>>>,
    outcome: &mut Outcome,
) {
    if let Some(task) = compaction.take() {
        if let Err(error) = task.await {
            outcome.other_errors.push(error);
        }
    }
}

/// Reads a random key and a random range back and compares them with the model of every
/// submitted commit (reads see commits at once). A failed read is recorded, not judged.
async fn check_reads(
    store: &Store,
    rng: &mut SimRng,
    expected: &Model,
    objects: u8,
    outcome: &mut Outcome,
) {
    let object = object_id(rng.below(u64::from(objects)) as u8);
    let key = random_key(rng);
    // A store poisoned meanwhile shows only durable commits: the fault tests check that.
    let poisoned = || store.stats().poisoned;
    match store.get(&object, &key).await {
        Ok(_) if poisoned() => {}
        Ok(value) => assert_eq!(value, expected.get(&object, &key), "get {key:?}"),
        Err(error) => outcome.other_errors.push(error),
    }
    let options = ListOptions {
        prefix: rng.chance(50).then(|| random_key(rng)),
        reverse: rng.chance(50),
        limit: rng.chance(50).then(|| rng.below(5) as usize),
        ..Default::default()
    };
    match store.list(&object, &options).await {
        Ok(_) if poisoned() => {}
        Ok(listed) => assert_eq!(listed, expected.list(&object, &options), "list {options:?}"),
        Err(error) => outcome.other_errors.push(error),
    }
}
