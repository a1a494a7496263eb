//! The writes of one object not yet handed to the store, coalesced per key.
//!
//! Between two polls of a handler its writes accumulate here; the gate turns them into one
//! `stead_storage::Batch`. Coalescing (the last write of a key wins; `delete_all` forgets the
//! writes before it) keeps a handler that rewrites one key in a loop far from the engine's
//! per-batch limits, and lets every limit be checked on the write that would pass it, so a
//! commit never fails on a limit after the object's memory already changed.

use std::collections::BTreeMap;

use stead_storage::{Batch, Limits};

use super::history::undo_entry_bytes;
use super::StorageError;

/// A conservative upper bound on the encoded size of one op besides its key and value bytes
/// (the engine's headers are smaller), so our estimate never undercounts.
const OP_OVERHEAD_BYTES: usize = 16;
/// The same for the batch header (object id and op count).
const BATCH_OVERHEAD_BYTES: usize = 64;

/// SQL pages one batch may put (or delete), at most: 4,096 pages of 4 KiB, 16 MiB, the
/// engine's `batch_bytes_max`. Counted apart from the key-value writes' `batch_keys_max`, and
/// added to it in the store's limits (`store_limits`), so SQL writes never take a key-value
/// write's room.
pub(crate) const SQL_PAGES_PER_BATCH_MAX: usize = 4096;

/// What the next batch will hold.
#[derive(Clone, Debug, Default)]
pub(super) struct Pending {
    /// Whether every key is removed before `writes` apply.
    delete_all: bool,
    /// The last write of each key since the last commit: `Some(value)` a put, `None` a delete.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// `Some(Some(ms))` sets the alarm, `Some(None)` deletes it, `None` leaves it.
    alarm: Option<Option<i64>>,
    /// Puts in `writes`, checked against `batch_keys_max`.
    puts: usize,
    /// Deletes in `writes`, checked against `batch_keys_max`.
    deletes: usize,
    /// SQL page puts in `writes`, checked against `SQL_PAGES_PER_BATCH_MAX`.
    page_puts: usize,
    /// SQL page deletes in `writes`, checked against `SQL_PAGES_PER_BATCH_MAX`.
    page_deletes: usize,
    /// Estimated encoded bytes of `writes` (and of `before`), checked against `batch_bytes_max`.
    bytes: usize,
    /// Whether the object keeps history: then `before` and `alarm_before` are recorded, for
    /// the batch's undo record (`history.rs`), and count against the batch's limits.
    history: bool,
    /// What each written key held before its first write since the last commit.
    before: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The alarm before its first change since the last commit.
    alarm_before: Option<Option<i64>>,
}

/// The writes of one batch, as `Pending::take` hands them over.
pub(super) struct Taken {
    pub batch: Batch,
    /// The alarm change the batch carries, for whoever schedules alarms.
    pub alarm: Option<Option<i64>>,
    /// With history: what the written keys held before (see `Pending::before`).
    pub before: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub alarm_before: Option<Option<i64>>,
}

/// Which count a write is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    /// A key-value write: `batch_keys_max`.
    KeyValue,
    /// A SQL page: `SQL_PAGES_PER_BATCH_MAX`.
    SqlPage,
}

/// The estimated encoded size of one write.
fn write_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    OP_OVERHEAD_BYTES + key.len() + value.map_or(0, <[u8]>::len)
}

/// Refuses write counts or bytes (as `Pending::counts_with` gives them) past a limit of `kind`.
fn check_limits(
    counts: [usize; 4],
    bytes: usize,
    limits: &Limits,
    kind: WriteKind,
) -> Result<(), StorageError> {
    let (base, keys_max) = match kind {
        WriteKind::KeyValue => (0, limits.batch_keys_max),
        WriteKind::SqlPage => (2, SQL_PAGES_PER_BATCH_MAX),
    };
    for (op_kind, keys) in [("put", counts[base]), ("delete", counts[base + 1])] {
        if keys > keys_max {
            return Err(StorageError::BatchTooManyKeys {
                op_kind,
                keys,
                batch_keys_max: keys_max,
            });
        }
    }
    if bytes + BATCH_OVERHEAD_BYTES > limits.batch_bytes_max {
        return Err(StorageError::BatchTooLarge {
            batch_bytes: bytes + BATCH_OVERHEAD_BYTES,
            batch_bytes_max: limits.batch_bytes_max,
        });
    }
    Ok(())
}

impl Pending {
    /// An empty batch of an object that keeps history (`history`) or not.
    pub(super) fn new(history: bool) -> Pending {
        Pending {
            history,
            ..Pending::default()
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        !self.delete_all && self.writes.is_empty() && self.alarm.is_none()
    }

    /// Records a put (`Some`) or delete (`None`) of `key`, which held `prior`, or refuses it if
    /// the batch would pass a limit; a refused write changes nothing.
    pub(super) fn write(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        prior: Option<&[u8]>,
        limits: &Limits,
    ) -> Result<(), StorageError> {
        let (counts, bytes) = self.counts_with(key, value.as_deref(), prior, WriteKind::KeyValue);
        check_limits(counts, bytes, limits, WriteKind::KeyValue)?;
        self.record(key, value, prior, counts, bytes);
        Ok(())
    }

    /// Records a write of one of stead's own small keys, which no history records and no
    /// limit refuses (the limits keep room for them).
    pub(super) fn write_reserved(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        if let Some(previous) = self.writes.get(key) {
            self.bytes -= write_bytes(key, previous.as_deref());
        }
        self.bytes += write_bytes(key, value.as_deref());
        self.writes.insert(key.to_vec(), value);
    }

    /// Records a write of a SQL page even if the batch then passes a limit, and returns the
    /// limit it passed. SQLite must never be refused a write: the writes that roll back a
    /// failed statement come after the ones that failed, and a refused one would leave the
    /// database half changed. The caller fails the instance instead (`Storage::abandon`), so
    /// a batch past its limits is never committed.
    pub(super) fn write_page_unrefused(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        prior: Option<&[u8]>,
        limits: &Limits,
    ) -> Result<(), StorageError> {
        let (counts, bytes) = self.counts_with(key, value.as_deref(), prior, WriteKind::SqlPage);
        let within = check_limits(counts, bytes, limits, WriteKind::SqlPage);
        self.record(key, value, prior, counts, bytes);
        within
    }

    /// The write counts and estimated bytes once `key` (which held `prior`) is written as
    /// `value`.
    fn counts_with(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        prior: Option<&[u8]>,
        kind: WriteKind,
    ) -> ([usize; 4], usize) {
        let mut counts = [self.puts, self.deletes, self.page_puts, self.page_deletes];
        let mut bytes = self.bytes;
        // Index of the put count of `kind` in `counts`; the delete count follows it.
        let base = match kind {
            WriteKind::KeyValue => 0,
            WriteKind::SqlPage => 2,
        };
        if let Some(previous) = self.writes.get(key) {
            match previous {
                Some(_) => counts[base] -= 1,
                None => counts[base + 1] -= 1,
            }
            bytes -= write_bytes(key, previous.as_deref());
        }
        match value {
            Some(_) => counts[base] += 1,
            None => counts[base + 1] += 1,
        }
        bytes += write_bytes(key, value);
        if self.history && !self.before.contains_key(key) {
            bytes += undo_entry_bytes(key, prior);
        }
        (counts, bytes)
    }

    fn record(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        prior: Option<&[u8]>,
        counts: [usize; 4],
        bytes: usize,
    ) {
        if self.history && !self.before.contains_key(key) {
            self.before.insert(key.to_vec(), prior.map(<[u8]>::to_vec));
        }
        self.writes.insert(key.to_vec(), value);
        [self.puts, self.deletes, self.page_puts, self.page_deletes] = counts;
        self.bytes = bytes;
    }

    /// Records that every key is removed; the writes before it no longer matter. Only for an
    /// object without history (whose undo record would need every key).
    pub(super) fn delete_all(&mut self) {
        debug_assert!(!self.history, "delete_all of an object that keeps history");
        self.delete_all = true;
        self.writes.clear();
        (self.puts, self.deletes, self.bytes) = (0, 0, 0);
        (self.page_puts, self.page_deletes) = (0, 0);
    }

    /// Records an alarm change (`None` deletes it) from `prior`.
    pub(super) fn alarm(&mut self, time_ms: Option<i64>, prior: Option<i64>) {
        self.alarm = Some(time_ms);
        if self.history && self.alarm_before.is_none() {
            self.alarm_before = Some(prior);
        }
    }

    /// Turns the pending writes into a batch and starts over.
    pub(super) fn take(&mut self) -> Taken {
        let pending = std::mem::replace(self, Pending::new(self.history));
        let mut batch = Batch::new();
        if pending.delete_all {
            batch.delete_all();
        }
        for (key, value) in pending.writes {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            };
        }
        match pending.alarm {
            Some(Some(time_ms)) => {
                batch.set_alarm(time_ms);
            }
            Some(None) => {
                batch.delete_alarm();
            }
            None => {}
        }
        Taken {
            batch,
            alarm: pending.alarm,
            before: pending.before,
            alarm_before: pending.alarm_before,
        }
    }
}
