//! The public handle of one store: commit with group commit, reads, alarms, compaction.
//!
//! Layout: `index` (keys in memory), `durable` (waiters on the log's durable writes), `log` (the
//! background group-commit writer), `prepare` (the task that zero-fills and syncs log blocks
//! ahead of the writer), `segments` (file table and names), `manifest`, `checkpoint` (the index
//! as the base segments hold it, written after compaction), `recovery` (open),
//! `compaction` and `pace` (how it yields to the executor), `poison` (what a failed write or
//! sync does to the store), `read` (values from memory or disk), `stats`.

mod checkpoint;
mod compaction;
mod durable;
mod index;
pub(crate) mod keys;
mod log;
mod manifest;
mod pace;
mod poison;
mod prepare;
mod read;
mod recovery;
mod segments;
mod snapshot;
mod stats;
mod undo;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

pub use durable::Durable;
pub use snapshot::Snapshot;
pub use stats::{power_of_two_bucket, StoreStats};

use crate::codec::{self, ManifestData};
use crate::{Batch, Disk, GlommioDisk, ObjectId, Op, StoreConfig, StoreError};
use durable::{DurableShared, Failure, FailureReport, Signal, Waiters};
use index::{Entry, Index};
use log::{LargeValue, PendingBatch, Writer};
use segments::Segments;
use undo::{Undo, UndoLog, UndoOp};

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

/// One object as the index sees it (`Store::object_summary`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectSummary {
    /// Keys the caller did not call reserved, and their key and value bytes.
    pub keys: u64,
    pub bytes: u64,
    /// Keys the caller called reserved, and their key and value bytes.
    pub reserved_keys: u64,
    pub reserved_bytes: u64,
    /// The object's alarm, milliseconds since the Unix epoch.
    pub alarm_ms: Option<i64>,
}

/// A handle on one store. Cheap to clone; `!Send`: it belongs to the executor that opened it.
#[derive(Clone)]
pub struct Store {
    inner: Rc<Inner>,
}

/// The store's shared state. Never borrowed across an await.
struct Inner {
    /// Limits, sizes, thresholds, recovery mode.
    config: StoreConfig,
    /// Every file operation goes through here, so tests can inject faults.
    disk: Rc<dyn Disk>,
    /// Index, file table, queue of batches waiting for the writer.
    state: RefCell<State>,
    /// Where `Durable` futures learn about fdatasyncs.
    durable: Rc<DurableShared>,
    /// Wakes the background writer when a batch is queued or the store closes.
    signal: Rc<Signal>,
    /// Wakes the preparer when the writer moved on or the store closes.
    prepare_signal: Rc<Signal>,
    /// Woken when the writer finishes a group, a zero fill ends or a compaction ends, so
    /// `close` can wait for all three: any left running would go on writing, creating,
    /// renaming and removing files under a store reopened in the same directory. The writer
    /// also waits here for a zero fill over the blocks it is about to write.
    idle: Waiters,
}

/// Mutable state of a store.
struct State {
    index: Index,
    segments: Segments,
    /// Committed batches not yet handed to a write, in sequence order.
    pending: VecDeque<PendingBatch>,
    /// What each batch not yet durable replaced in the index, to take it back out if its
    /// write fails.
    undo: UndoLog,
    /// The sequence number the next commit gets.
    next_seq: u64,
    /// The log segment new commits are assigned to; the writer rotates when it changes.
    active_segment: u64,
    /// Encoded bytes assigned to the active segment, to decide when to rotate.
    active_assigned_bytes: u64,
    /// The open log segment the writer appends to, if one is open yet.
    writer: Option<Writer>,
    /// The id the next new segment file gets (log and base share the counter).
    next_segment_id: u64,
    /// The manifest as last written.
    manifest: ManifestData,
    /// Counters reported by `stats`.
    stats: StoreStats,
    /// Set by a failed write or fdatasync: commits are refused from then on.
    poisoned: bool,
    /// Set by `close`: commits are refused and background tasks stop.
    closed: bool,
    /// True while a compaction runs, so two never overlap.
    compacting: bool,
    /// True while the writer has a round in flight, so `close` can wait for it.
    writing: bool,
    /// True while the preparer has a zero fill in flight, so `close` can wait for it.
    preparing: bool,
    /// How many rounds the writer may keep in flight (1 or 2; see `log`).
    rounds_in_flight_max: u8,
}

impl State {
    /// Hands out a fresh segment id, never one that recovery would refuse. The limit is about
    /// two billion files, which no store lives to write.
    fn allocate_segment_id(&mut self) -> u64 {
        let id = self.next_segment_id;
        assert!(id <= codec::SEGMENT_ID_MAX, "segment ids exhausted at {id}");
        self.next_segment_id += 1;
        id
    }
}

/// Creates `dir` and every missing parent, fsyncing the parent of each directory it creates,
/// so a power cut right after start-up cannot lose the store's directory entry (creating a
/// directory makes its own entry durable only when its parent is synced). Blocking; runs once
/// at open, and for the server's data directory. On failure, returns the directory whose
/// creation or sync failed.
pub fn create_dir_durably(
    dir: &std::path::Path,
) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    let mut missing = Vec::new();
    let mut existing = dir;
    while !existing.exists() {
        missing.push(existing);
        match existing.parent() {
            // A relative path's last parent is the empty path: the current directory.
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => break,
        }
    }
    for created in missing.into_iter().rev() {
        match std::fs::create_dir(created) {
            Ok(()) => {}
            // Another core creating the same parent at the same moment is fine.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err((created.to_path_buf(), error)),
        }
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => std::path::Path::new("."),
        };
        std::fs::File::open(parent)
            .and_then(|parent| parent.sync_all())
            .map_err(|error| (parent.to_path_buf(), error))?;
    }
    Ok(())
}

/// Builds the error of a failed system call.
fn io_error(operation: &'static str, file: &str, source: std::io::Error) -> StoreError {
    StoreError::Io {
        operation,
        file: file.to_string(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the store in `config.dir` on the real disk, recovering it.
    /// A relative `config.dir` is relative to the current directory (`GlommioDisk::new`
    /// resolves it once, for glommio).
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        create_dir_durably(&config.dir)
            .map_err(|(dir, source)| io_error("create_dir", &dir.display().to_string(), source))?;
        let disk: Rc<dyn Disk> = Rc::new(GlommioDisk::new(config.dir.clone()));
        Store::open_with_disk(config, disk).await
    }

    /// Opens the store through another disk (tests: faults, power loss).
    pub async fn open_with_disk(
        config: StoreConfig,
        disk: Rc<dyn Disk>,
    ) -> Result<Store, StoreError> {
        assert!(
            config.segment_bytes_max <= u64::from(u32::MAX) / 2,
            "segment_bytes_max {} must leave value offsets within u32",
            config.segment_bytes_max
        );
        let recovered = recovery::recover(&config, disk.as_ref()).await?;
        let salvaged = recovered.losses > 0;
        let durable = Rc::new(DurableShared::new(recovered.next_seq - 1));
        if let Some(error) = &recovered.unwritable {
            durable.fail(Failure::from_error(error));
        }
        let mut state = recovered.into_state();
        state.index.count_prefix(&config.counted_key_prefix);
        let inner = Rc::new(Inner {
            config,
            disk,
            state: RefCell::new(state),
            durable,
            signal: Rc::new(Signal::default()),
            prepare_signal: Rc::new(Signal::default()),
            idle: Waiters::default(),
        });
        glommio::spawn_local(log::run_writer(Rc::downgrade(&inner), inner.signal.clone())).detach();
        let preparer = prepare::run_preparer(Rc::downgrade(&inner), inner.prepare_signal.clone());
        glommio::spawn_local(preparer).detach();
        let store = Store { inner };
        if salvaged {
            // Rewrite what survived into base segments, so the damaged files are gone and
            // the next strict open succeeds.
            store.compact().await?;
        }
        Ok(store)
    }

    /// Validates `batch` against the limits, applies it to the in-memory index at once (visible
    /// to reads immediately) and queues it for the next group commit. Returns the batch's
    /// sequence number and a future that resolves when it is durable.
    pub fn commit(&self, object: &ObjectId, batch: Batch) -> Result<(u64, Durable), StoreError> {
        let inner = &self.inner;
        let ops = batch.into_ops();
        let encoded_bytes = validate(&inner.config, &ops)?;
        let mut state = inner.state.borrow_mut();
        if state.closed {
            return Err(StoreError::Closed);
        }
        if state.poisoned {
            return Err(StoreError::Poisoned);
        }
        if state.active_assigned_bytes >= inner.config.segment_bytes_max {
            state.active_segment = state.allocate_segment_id();
            state.active_assigned_bytes = 0;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let segment = state.active_segment;
        state.active_assigned_bytes += encoded_bytes as u64;

        let mut encoded = Vec::with_capacity(encoded_bytes);
        let mut puts = Vec::new();
        codec::encode_batch(&mut encoded, object, &ops, |offset, crc| {
            puts.push((offset, crc))
        });
        debug_assert_eq!(encoded.len(), encoded_bytes);
        let mut large_values = Vec::new();
        let mut puts = puts.into_iter();
        let mut undo_ops = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    let Some((offset, crc)) = puts.next() else {
                        unreachable!("encode_batch reports every put")
                    };
                    let entry = if value.len() > inner.config.inline_value_bytes_max {
                        let value: Rc<[u8]> = value.into();
                        // Encrypted: the keyed tag, not the crc, checks its reads (`cipher.rs`).
                        let crc = match &inner.config.encryption {
                            Some(encryption) => encryption.value_tag(&value),
                            None => crc,
                        };
                        large_values.push(LargeValue {
                            key: key.clone().into_boxed_slice(),
                            value: value.clone(),
                            offset_in_batch: offset as u32,
                            crc,
                        });
                        Entry::Pending {
                            value,
                            segment: segment as u32,
                        }
                    } else {
                        Entry::Inline {
                            value: value.into_boxed_slice(),
                            segment: segment as u32,
                        }
                    };
                    let old = state.index.put(object, &key, entry);
                    undo_ops.push(UndoOp::Key {
                        key: key.into_boxed_slice(),
                        old,
                    });
                }
                Op::Delete { key } => {
                    let old = state.index.delete(object, &key);
                    undo_ops.push(UndoOp::Key {
                        key: key.into_boxed_slice(),
                        old,
                    });
                }
                Op::DeleteAll => undo_ops.push(UndoOp::Keys(state.index.delete_all(object))),
                Op::SetAlarm { time_ms } => {
                    undo_ops.push(UndoOp::Alarm(state.index.set_alarm(object, time_ms)));
                }
                Op::DeleteAlarm => undo_ops.push(UndoOp::Alarm(state.index.delete_alarm(object))),
            }
        }
        state.undo.push(Undo {
            seq,
            object: *object,
            ops: undo_ops,
        });
        state.pending.push_back(PendingBatch {
            seq,
            segment,
            object: *object,
            encoded,
            large_values,
        });
        state.stats.commits_total += 1;
        drop(state);
        inner.signal.notify();
        Ok((
            seq,
            Durable::new(inner.durable.clone(), seq, FailureReport::Io),
        ))
    }

    /// Why the store takes no more writes: the failed write or fdatasync that poisoned it, or
    /// that kept it from being created (a full disk at start-up); `None` while it is writable.
    /// Reads keep working on a store that is not writable and show only durable batches.
    pub fn write_failure(&self) -> Option<String> {
        if !self.inner.state.borrow().poisoned {
            return None;
        }
        Some(match self.inner.durable.failure() {
            Some(failure) => failure.to_error().to_string(),
            None => StoreError::Poisoned.to_string(),
        })
    }

    /// The sequence number up to which every batch is durable.
    pub fn durable_seq(&self) -> u64 {
        self.inner.durable.durable_seq()
    }

    /// The sequence number of the latest batch committed (durable or not); 0 before any.
    pub fn last_seq(&self) -> u64 {
        self.inner.state.borrow().next_seq.saturating_sub(1)
    }

    /// Resolves when every batch with a sequence number ≤ `seq` is durable.
    pub fn wait_durable(&self, seq: u64) -> Durable {
        Durable::new(self.inner.durable.clone(), seq, FailureReport::Poisoned)
    }

    /// Whether the object has at least one key or an alarm.
    pub fn contains_object(&self, object: &ObjectId) -> bool {
        self.inner.state.borrow().index.objects.contains_key(object)
    }

    /// The object's stored alarm, if it has one.
    pub fn alarm(&self, object: &ObjectId) -> Option<i64> {
        self.inner
            .state
            .borrow()
            .index
            .objects
            .get(object)
            .and_then(|state| state.alarm_ms)
    }

    pub fn objects_with_alarms(&self) -> Vec<(ObjectId, i64)> {
        let state = self.inner.state.borrow();
        let objects = state.index.objects.iter();
        objects
            .filter_map(|(id, object)| object.alarm_ms.map(|alarm| (*id, alarm)))
            .collect()
    }

    /// What the index knows of one object, without reading the disk: its keys, split into
    /// those for which `reserved` holds and the others, their bytes, and its alarm. `None` when
    /// the object has no key and no alarm.
    pub fn object_summary(
        &self,
        object: &ObjectId,
        reserved: impl Fn(&[u8]) -> bool,
    ) -> Option<ObjectSummary> {
        let state = self.inner.state.borrow();
        let found = state.index.objects.get(object)?;
        let mut summary = ObjectSummary {
            alarm_ms: found.alarm_ms,
            ..ObjectSummary::default()
        };
        for (key, entry) in found.keys.iter() {
            let bytes = (key.len() + entry.value_len()) as u64;
            if reserved(key) {
                summary.reserved_keys += 1;
                summary.reserved_bytes += bytes;
            } else {
                summary.keys += 1;
                summary.bytes += bytes;
            }
        }
        Some(summary)
    }

    /// Every object that has at least one key or an alarm.
    pub fn objects(&self) -> Vec<ObjectId> {
        self.inner
            .state
            .borrow()
            .index
            .objects
            .keys()
            .copied()
            .collect()
    }

    /// Rewrites live data of sealed segments and drops the old segments. Runs by itself when
    /// the thresholds of the config are passed and automatic compaction is on.
    pub async fn compact(&self) -> Result<(), StoreError> {
        compaction::compact(&self.inner).await
    }

    pub fn stats(&self) -> StoreStats {
        let state = self.inner.state.borrow();
        let mut stats = state.stats.clone();
        stats.objects = state.index.objects.len() as u64;
        stats.keys = state.index.keys_total;
        stats.segments = state.segments.by_id.len() as u64;
        stats.live_bytes = state.index.live_bytes_total();
        stats.prefix_keys = state.index.prefix_keys;
        stats.prefix_bytes = state.index.prefix_bytes;
        stats.dead_bytes = state
            .segments
            .record_bytes_total()
            .saturating_sub(stats.live_bytes);
        stats.disk_bytes = state.segments.written_bytes_total();
        stats.poisoned = state.poisoned;
        stats
    }

    /// Waits for every queued batch to be durable, for the writer's I/O in flight to end and
    /// for a running compaction to stop (it stops early, before its manifest switch, once it
    /// sees the store closed). Reopen a store's directory only after `close` returned, also
    /// (especially) when the store is poisoned; the result reports a poisoned store.
    pub async fn close(&self) -> Result<(), StoreError> {
        let last_seq = {
            let mut state = self.inner.state.borrow_mut();
            state.closed = true;
            state.next_seq - 1
        };
        self.inner.signal.notify();
        self.inner.prepare_signal.notify();
        let durable = self.wait_durable(last_seq).await;
        let state = &self.inner.state;
        let idle = || {
            let state = state.borrow();
            !state.compacting && !state.writing && !state.preparing
        };
        self.inner.idle.wait_until(idle).await;
        durable
    }
}

/// Checks a batch against the limits; returns its encoded size.
fn validate(config: &StoreConfig, ops: &[Op]) -> Result<usize, StoreError> {
    let limits = &config.limits;
    let (mut puts, mut deletes) = (0usize, 0usize);
    for op in ops {
        let key = match op {
            Op::Put { key, value } => {
                puts += 1;
                if value.len() > limits.value_bytes_max {
                    return Err(StoreError::ValueTooLarge {
                        value_bytes: value.len(),
                        value_bytes_max: limits.value_bytes_max,
                    });
                }
                key
            }
            Op::Delete { key } => {
                deletes += 1;
                key
            }
            Op::DeleteAll | Op::SetAlarm { .. } | Op::DeleteAlarm => continue,
        };
        if key.len() > limits.key_bytes_max {
            return Err(StoreError::KeyTooLarge {
                key_bytes: key.len(),
                key_bytes_max: limits.key_bytes_max,
            });
        }
    }
    for (op_kind, keys) in [("put", puts), ("delete", deletes)] {
        if keys > limits.batch_keys_max {
            return Err(StoreError::BatchTooManyKeys {
                op_kind,
                keys,
                batch_keys_max: limits.batch_keys_max,
            });
        }
    }
    let batch_bytes = codec::batch_encoded_bytes(ops);
    if batch_bytes > limits.batch_bytes_max {
        return Err(StoreError::BatchTooLarge {
            batch_bytes,
            batch_bytes_max: limits.batch_bytes_max,
        });
    }
    Ok(batch_bytes)
}

#[cfg(test)]
mod tests;
