//! The writes of one object not yet handed to the store, coalesced per key.
//!
//! Between two polls of a handler its writes accumulate here; the gate turns them into one
//! `stead_storage::Batch`. Coalescing (the last write of a key wins; `delete_all` forgets the
//! writes before it) keeps a handler that rewrites one key in a loop far from the engine's
//! per-batch limits, and lets every limit be checked on the write that would pass it, so a
//! commit never fails on a limit after the object's memory already changed.

use std::collections::BTreeMap;

use stead_storage::{Batch, Limits};

use super::StorageError;

/// A conservative upper bound on the encoded size of one op besides its key and value bytes
/// (the engine's headers are smaller), so our estimate never undercounts.
const OP_OVERHEAD_BYTES: usize = 16;
/// The same for the batch header (object id and op count).
const BATCH_OVERHEAD_BYTES: usize = 64;

/// What the next batch will hold.
#[derive(Debug, Default)]
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
    /// Estimated encoded bytes of `writes`, checked against `batch_bytes_max`.
    bytes: usize,
}

/// The estimated encoded size of one write.
fn write_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    OP_OVERHEAD_BYTES + key.len() + value.map_or(0, <[u8]>::len)
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        !self.delete_all && self.writes.is_empty() && self.alarm.is_none()
    }

    /// Records a put (`Some`) or delete (`None`) of `key`, or refuses it if the batch would pass
    /// a limit; a refused write changes nothing.
    pub(super) fn write(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        limits: &Limits,
    ) -> Result<(), StorageError> {
        let (mut puts, mut deletes, mut bytes) = (self.puts, self.deletes, self.bytes);
        if let Some(previous) = self.writes.get(key) {
            match previous {
                Some(_) => puts -= 1,
                None => deletes -= 1,
            }
            bytes -= write_bytes(key, previous.as_deref());
        }
        match value {
            Some(_) => puts += 1,
            None => deletes += 1,
        }
        bytes += write_bytes(key, value.as_deref());
        if puts > limits.batch_keys_max {
            return Err(StorageError::BatchTooManyKeys {
                op_kind: "put",
                keys: puts,
                batch_keys_max: limits.batch_keys_max,
            });
        }
        if deletes > limits.batch_keys_max {
            return Err(StorageError::BatchTooManyKeys {
                op_kind: "delete",
                keys: deletes,
                batch_keys_max: limits.batch_keys_max,
            });
        }
        if bytes + BATCH_OVERHEAD_BYTES > limits.batch_bytes_max {
            return Err(StorageError::BatchTooLarge {
                batch_bytes: bytes + BATCH_OVERHEAD_BYTES,
                batch_bytes_max: limits.batch_bytes_max,
            });
        }
        self.writes.insert(key.to_vec(), value);
        (self.puts, self.deletes, self.bytes) = (puts, deletes, bytes);
        Ok(())
    }

    /// Records that every key is removed; the writes before it no longer matter.
    pub(super) fn delete_all(&mut self) {
        self.delete_all = true;
        self.writes.clear();
        (self.puts, self.deletes, self.bytes) = (0, 0, 0);
    }

    /// Records an alarm change (`None` deletes it).
    pub(super) fn alarm(&mut self, time_ms: Option<i64>) {
        self.alarm = Some(time_ms);
    }

    /// Turns the pending writes into a batch and starts over. Also returns the alarm change the
    /// batch carries, for whoever schedules alarms.
    pub(super) fn take(&mut self) -> (Batch, Option<Option<i64>>) {
        let pending = std::mem::take(self);
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
        (batch, pending.alarm)
    }
}
