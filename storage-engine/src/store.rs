//! The public handle of one store. SPEC ONLY: the implementation is being written.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::{Batch, Disk, ObjectId, StoreConfig, StoreError};

/// Options of `Store::list`: which keys, in which order, how many.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys starting with these bytes.
    pub prefix: Option<Vec<u8>>,
    /// Only keys ≥ this.
    pub start: Option<Vec<u8>>,
    /// Only keys > this (wins over `start` when both are set and it is larger).
    pub start_after: Option<Vec<u8>>,
    /// Only keys < this.
    pub end: Option<Vec<u8>>,
    /// Descending key order.
    pub reverse: bool,
    /// At most this many entries.
    pub limit: Option<usize>,
}

/// Everything of one object, as loaded when the object activates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectData {
    pub entries: BTreeMap<Vec<u8>, Vec<u8>>,
    pub alarm_ms: Option<i64>,
}

/// Counters of one store, for metrics and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    pub commits_total: u64,
    pub fdatasyncs_total: u64,
    pub bytes_written_total: u64,
    /// fdatasync latency: bucket i counts syncs of ≤ 2^i microseconds; the last bucket the rest.
    pub fdatasync_micros_buckets: [u64; 20],
    pub fdatasync_micros_sum: u64,
    /// Commits per fdatasync: bucket i counts groups of ≤ 2^i commits; the last bucket the rest.
    pub group_commits_buckets: [u64; 12],
    pub objects: u64,
    pub keys: u64,
    pub segments: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    pub compactions_total: u64,
    pub poisoned: bool,
}

/// A handle on one store. Cheap to clone; `!Send`: it belongs to the executor that opened it.
#[derive(Clone)]
pub struct Store {
    inner: Rc<()>,
}

/// Resolves once a committed batch is durable (written and fdatasync'd), or fails if the write
/// or fdatasync that carried it failed.
pub struct Durable {
    _p: (),
}

impl Future for Durable {
    type Output = Result<(), StoreError>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        todo!()
    }
}

#[allow(unused_variables)]
impl Store {
    /// Opens (creating if needed) the store in `config.dir` on the real disk, recovering it.
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        todo!()
    }
    /// Opens the store through another disk (tests: faults, power loss).
    pub async fn open_with_disk(config: StoreConfig, disk: Rc<dyn Disk>) -> Result<Store, StoreError> {
        todo!()
    }
    /// Validates `batch` against the limits, applies it to the in-memory index at once (visible
    /// to reads immediately) and queues it for the next group commit. Returns the batch's
    /// sequence number and a future that resolves when it is durable.
    pub fn commit(&self, object: &ObjectId, batch: Batch) -> Result<(u64, Durable), StoreError> {
        todo!()
    }
    /// Resolves when every batch with a sequence number ≤ `seq` is durable.
    pub fn wait_durable(&self, seq: u64) -> Durable {
        todo!()
    }
    pub async fn get(&self, object: &ObjectId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        todo!()
    }
    pub async fn get_many(&self, object: &ObjectId, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        todo!()
    }
    pub async fn list(&self, object: &ObjectId, options: &ListOptions) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        todo!()
    }
    pub fn alarm(&self, object: &ObjectId) -> Option<i64> {
        todo!()
    }
    pub fn objects_with_alarms(&self) -> Vec<(ObjectId, i64)> {
        todo!()
    }
    /// Every object that has at least one key or an alarm.
    pub fn objects(&self) -> Vec<ObjectId> {
        todo!()
    }
    pub async fn load_object(&self, object: &ObjectId) -> Result<ObjectData, StoreError> {
        todo!()
    }
    /// Rewrites live data of sealed segments and drops the old segments. Runs by itself when
    /// the thresholds of the config are passed and automatic compaction is on.
    pub async fn compact(&self) -> Result<(), StoreError> {
        todo!()
    }
    pub fn stats(&self) -> StoreStats {
        todo!()
    }
    /// Waits for every queued batch to be durable, stops compaction, closes files.
    pub async fn close(&self) -> Result<(), StoreError> {
        todo!()
    }
}
