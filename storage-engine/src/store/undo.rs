//! Undo records: what each batch that is not yet durable replaced in the index, so a failed
//! group commit can take its batches back out of the in-memory view.
//!
//! A commit applies its batch to the index at once, before it is durable, so later reads see
//! it. If the write or fdatasync carrying it fails, the batch will never be durable (and is
//! gone after a restart), so reads must stop showing it: the store then rolls the index back
//! to the last durable batch by undoing every later one, newest first. The old entries are
//! moved here, not copied, and dropped as soon as their batch is durable.

use std::collections::{HashMap, VecDeque};

use super::index::{Entry, Index};
use super::keys::KeyMap;
use crate::ObjectId;

/// What one op of a batch replaced.
pub enum UndoOp {
    /// A put or delete of `key`: the entry it replaced, if there was one.
    Key { key: Box<[u8]>, old: Option<Entry> },
    /// A delete-all: every key it removed.
    Keys(KeyMap<Entry>),
    /// An alarm set or deleted: the alarm before.
    Alarm(Option<i64>),
}

/// The undo record of one batch.
pub struct Undo {
    /// The batch's sequence number; the record is dropped once it is durable.
    pub seq: u64,
    pub object: ObjectId,
    /// In the order the batch applied them; undone in reverse.
    pub ops: Vec<UndoOp>,
}

/// The undo records of every batch not yet durable, oldest first.
#[derive(Default)]
pub struct UndoLog {
    /// In sequence order.
    batches: VecDeque<Undo>,
    /// How many records each object has in `batches`, so `relocate` skips an object without
    /// any in O(1): compaction offers it every entry it copied that changed meanwhile, and a
    /// walk of the whole log for each was quadratic.
    per_object: HashMap<ObjectId, usize, ahash::RandomState>,
}

impl UndoLog {
    pub fn push(&mut self, undo: Undo) {
        debug_assert!(self.batches.back().is_none_or(|last| last.seq < undo.seq));
        *self.per_object.entry(undo.object).or_insert(0) += 1;
        self.batches.push_back(undo);
    }

    /// Forgets the records of every batch up to `seq`, which is now durable.
    pub fn durable(&mut self, seq: u64) {
        while self.batches.front().is_some_and(|undo| undo.seq <= seq) {
            if let Some(undo) = self.batches.pop_front() {
                self.forget(&undo.object);
            }
        }
    }

    /// Undoes every recorded batch, newest first, leaving `index` as it was after the last
    /// durable batch. Returns how many batches were undone.
    pub fn roll_back(&mut self, index: &mut Index) -> usize {
        let undone = self.batches.len();
        self.per_object.clear();
        while let Some(undo) = self.batches.pop_back() {
            let object = &undo.object;
            for op in undo.ops.into_iter().rev() {
                match op {
                    UndoOp::Key {
                        key,
                        old: Some(entry),
                    } => {
                        index.put(object, &key, entry);
                    }
                    UndoOp::Key { key, old: None } => {
                        index.delete(object, &key);
                    }
                    UndoOp::Keys(keys) => {
                        // The ops after the delete-all are undone already, so the object has
                        // no keys now and each comes back as it was.
                        for (key, entry) in keys {
                            let replaced = index.put(object, &key, entry);
                            debug_assert!(replaced.is_none(), "delete-all undone over a key");
                        }
                    }
                    UndoOp::Alarm(Some(time_ms)) => {
                        index.set_alarm(object, time_ms);
                    }
                    UndoOp::Alarm(None) => {
                        index.delete_alarm(object);
                    }
                }
            }
        }
        undone
    }

    /// Offers every entry of `object`'s `key` kept here to `relocate` (compaction moving
    /// durable entries into a base segment): an undo record may hold the only reference to an
    /// entry whose old segment compaction is about to delete.
    pub fn relocate(
        &mut self,
        object: &ObjectId,
        key: &[u8],
        relocate: impl Fn(&Entry) -> Option<Entry>,
    ) {
        if !self.per_object.contains_key(object) {
            return;
        }
        for undo in self
            .batches
            .iter_mut()
            .filter(|undo| undo.object == *object)
        {
            for op in &mut undo.ops {
                let slot = match op {
                    UndoOp::Key {
                        key: undo_key,
                        old: Some(entry),
                    } if **undo_key == *key => entry,
                    UndoOp::Keys(keys) => match keys.get_mut(key) {
                        Some(entry) => entry,
                        None => continue,
                    },
                    _ => continue,
                };
                if let Some(moved) = relocate(slot) {
                    *slot = moved;
                }
            }
        }
    }

    /// Counts one record of `object` gone.
    fn forget(&mut self, object: &ObjectId) {
        if let Some(count) = self.per_object.get_mut(object) {
            *count -= 1;
            if *count == 0 {
                self.per_object.remove(object);
            }
        }
    }
}
