//! A consistent copy of a whole store, for backups: every object's keys, values and alarm as of
//! one sequence number, taken from the index at once, without waiting. Values kept in memory
//! are copied then; values kept on disk are read later, object by object, from the segment
//! files as they were: segments are never rewritten in place, and a file the snapshot holds
//! open stays readable after compaction removes it.

use std::collections::VecDeque;

use super::read::ValueRef;
use super::{ListOptions, ObjectData, Store};
use crate::{ObjectId, StoreError};

/// See the module documentation. Made by [`Store::snapshot`].
pub struct Snapshot {
    /// The sequence number of the last batch the snapshot holds.
    seq: u64,
    /// Objects not yet given, in id order.
    objects: VecDeque<SnapshotObject>,
}

/// One object of a snapshot, its values not yet read.
struct SnapshotObject {
    id: ObjectId,
    alarm_ms: Option<i64>,
    entries: Vec<(Vec<u8>, ValueRef)>,
}

impl Store {
    /// Takes a snapshot of every object as of the latest committed batch (durable or not:
    /// wait for [`Snapshot::seq`] to be durable before trusting it to outlive a crash).
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.snapshot_of(|_| true)
    }

    /// Like [`Store::snapshot`], of the objects for which `keep` holds only.
    pub fn snapshot_of(&self, keep: impl Fn(&ObjectId) -> bool) -> Result<Snapshot, StoreError> {
        let mut ids = self.objects();
        ids.retain(|id| keep(id));
        ids.sort_unstable();
        let mut objects = VecDeque::with_capacity(ids.len());
        for id in ids {
            let entries = self.collect_range(&id, &ListOptions::default())?;
            objects.push_back(SnapshotObject {
                id,
                alarm_ms: self.alarm(&id),
                entries,
            });
        }
        Ok(Snapshot {
            seq: self.last_seq(),
            objects,
        })
    }
}

impl Snapshot {
    /// The sequence number of the last batch the snapshot holds.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Objects not yet given by `next_object`.
    pub fn objects_left(&self) -> usize {
        self.objects.len()
    }

    /// The next object (in id order) with its values read; `None` once every object was given.
    pub async fn next_object(&mut self) -> Option<Result<(ObjectId, ObjectData), StoreError>> {
        let object = self.objects.pop_front()?;
        let entries = match Store::resolve_all(object.entries).await {
            Ok(entries) => entries,
            Err(error) => return Some(Err(error)),
        };
        let data = ObjectData {
            entries,
            alarm_ms: object.alarm_ms,
        };
        Some(Ok((object.id, data)))
    }
}
