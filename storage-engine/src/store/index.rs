//! The in-memory index: every object's keys with where their values are, and its alarm.
//!
//! Keys always live in memory; small values too. A large value is either still in memory
//! because its write has not completed (`Entry::Pending`) or only on disk (`Entry::OnDisk`).
//! Every entry knows the segment its put was assigned to, so the index can keep the live byte
//! count of each segment, which drives compaction.

use std::collections::HashMap;
use std::ops::Bound;
use std::rc::Rc;

use super::keys::KeyMap;
use crate::codec::PUT_HEADER_BYTES;
use crate::ObjectId;

/// Where one key's current value is. 24 bytes, so a key costs its length plus little more.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A small value, kept in memory for good.
    Inline {
        value: Box<[u8]>,
        /// The segment the put was assigned to.
        segment: u32,
    },
    /// A large value whose write has not completed; it switches to `OnDisk` after the write.
    /// The `Rc` identifies this version: the switch happens only if the entry still holds it.
    Pending { value: Rc<[u8]>, segment: u32 },
    /// A large value read from disk on demand and checked against `crc` every time. `record`
    /// is where its record starts (an encrypted store reads the record's nonce there).
    OnDisk {
        segment: u32,
        record: u32,
        offset: u32,
        len: u32,
        crc: u32,
    },
}

const _: () = assert!(std::mem::size_of::<Entry>() <= 24);

impl Entry {
    pub fn segment(&self) -> u32 {
        match self {
            Entry::Inline { segment, .. }
            | Entry::Pending { segment, .. }
            | Entry::OnDisk { segment, .. } => *segment,
        }
    }

    pub fn value_len(&self) -> usize {
        match self {
            Entry::Inline { value, .. } => value.len(),
            Entry::Pending { value, .. } => value.len(),
            Entry::OnDisk { len, .. } => *len as usize,
        }
    }
}

/// Bytes a put of this key and value occupies in its segment: what becomes dead when the key
/// is overwritten or deleted.
fn footprint(key: &[u8], entry: &Entry) -> u64 {
    (PUT_HEADER_BYTES + key.len() + entry.value_len()) as u64
}

/// Below this capacity the objects map is never shrunk: its slots cost at most ~80 KiB.
const OBJECTS_SHRINK_CAPACITY_MIN: usize = 1024;

/// One object's state.
#[derive(Debug, Default)]
pub struct ObjectState {
    /// The object's keys in order, for point reads and ordered lists.
    pub keys: KeyMap<Entry>,
    /// The object's one alarm, milliseconds since the Unix epoch.
    pub alarm_ms: Option<i64>,
}

/// Every object of the store.
#[derive(Debug, Default)]
pub struct Index {
    /// Objects with at least one key or an alarm; empty objects are removed at once.
    pub objects: HashMap<ObjectId, ObjectState, ahash::RandomState>,
    /// Total keys over all objects, kept so stats need no walk.
    pub keys_total: u64,
    /// Live bytes per segment id: the footprint of every put that is still current.
    pub live_bytes: HashMap<u32, u64, ahash::RandomState>,
    /// Keys starting with this prefix are counted in `prefix_keys` and `prefix_bytes` (key and
    /// value bytes); empty: none are.
    counted_prefix: Box<[u8]>,
    pub prefix_keys: u64,
    pub prefix_bytes: u64,
}

impl Index {
    pub fn get(&self, object: &ObjectId, key: &[u8]) -> Option<&Entry> {
        self.objects.get(object)?.keys.get(key)
    }

    /// Starts counting the keys that start with `prefix` (a walk over every key, once).
    pub fn count_prefix(&mut self, prefix: &[u8]) {
        self.counted_prefix = prefix.into();
        (self.prefix_keys, self.prefix_bytes) = (0, 0);
        if prefix.is_empty() {
            return;
        }
        for state in self.objects.values() {
            for (key, entry) in state.keys.range(Bound::Included(prefix), Bound::Unbounded) {
                if !key.starts_with(prefix) {
                    break;
                }
                self.prefix_keys += 1;
                self.prefix_bytes += (key.len() + entry.value_len()) as u64;
            }
        }
    }

    /// Adds (`sign` 1) or removes (-1) `key` from the prefix counts, if it is counted.
    fn count(&mut self, key: &[u8], entry: &Entry, sign: i8) {
        if self.counted_prefix.is_empty() || !key.starts_with(&self.counted_prefix) {
            return;
        }
        let bytes = (key.len() + entry.value_len()) as u64;
        if sign > 0 {
            self.prefix_keys += 1;
            self.prefix_bytes += bytes;
        } else {
            self.prefix_keys = self.prefix_keys.saturating_sub(1);
            self.prefix_bytes = self.prefix_bytes.saturating_sub(bytes);
        }
    }

    fn charge(&mut self, key: &[u8], entry: &Entry) {
        *self.live_bytes.entry(entry.segment()).or_insert(0) += footprint(key, entry);
    }

    fn discharge(&mut self, key: &[u8], entry: &Entry) {
        let live = self.live_bytes.entry(entry.segment()).or_insert(0);
        let bytes = footprint(key, entry);
        debug_assert!(
            *live >= bytes,
            "segment {} live bytes underflow",
            entry.segment()
        );
        *live = live.saturating_sub(bytes);
    }

    /// Sets `key` to `entry`; returns the entry it replaced, for the commit's undo record.
    pub fn put(&mut self, object: &ObjectId, key: &[u8], entry: Entry) -> Option<Entry> {
        self.charge(key, &entry);
        self.count(key, &entry, 1);
        let state = self.objects.entry(*object).or_default();
        let old = state.keys.insert(key, entry);
        match &old {
            Some(old) => {
                self.discharge(key, old);
                self.count(key, old, -1);
            }
            None => self.keys_total += 1,
        }
        old
    }

    /// Removes `key`; returns the entry it held.
    pub fn delete(&mut self, object: &ObjectId, key: &[u8]) -> Option<Entry> {
        let state = self.objects.get_mut(object)?;
        let (key, old) = state.keys.remove_entry(key)?;
        self.keys_total -= 1;
        self.discharge(&key, &old);
        self.count(&key, &old, -1);
        self.remove_if_empty(object);
        Some(old)
    }

    /// Removes every key of `object`; returns them.
    pub fn delete_all(&mut self, object: &ObjectId) -> KeyMap<Entry> {
        let Some(state) = self.objects.get_mut(object) else {
            return KeyMap::default();
        };
        let keys = std::mem::take(&mut state.keys);
        self.keys_total -= keys.len() as u64;
        for (key, old) in keys.iter() {
            self.discharge(key, old);
            self.count(key, old, -1);
        }
        self.remove_if_empty(object);
        keys
    }

    /// Adds a whole object that is not in the index yet (a checkpoint's); returns false, and
    /// changes nothing, if it is there already. Its keys' live bytes are not charged: the
    /// caller sets `live_bytes` for all objects at once (and the prefix counts, through
    /// `count_prefix`).
    pub fn insert_object(&mut self, object: ObjectId, state: ObjectState) -> bool {
        if self.objects.contains_key(&object) {
            return false;
        }
        self.keys_total += state.keys.len() as u64;
        self.objects.insert(object, state);
        true
    }

    /// Sets the alarm; returns the one it replaced.
    pub fn set_alarm(&mut self, object: &ObjectId, time_ms: i64) -> Option<i64> {
        self.objects
            .entry(*object)
            .or_default()
            .alarm_ms
            .replace(time_ms)
    }

    /// Clears the alarm; returns the one it held.
    pub fn delete_alarm(&mut self, object: &ObjectId) -> Option<i64> {
        let state = self.objects.get_mut(object)?;
        let old = state.alarm_ms.take();
        self.remove_if_empty(object);
        old
    }

    fn remove_if_empty(&mut self, object: &ObjectId) {
        if self
            .objects
            .get(object)
            .is_some_and(|s| s.keys.is_empty() && s.alarm_ms.is_none())
        {
            self.objects.remove(object);
            // A map that held many more objects than it does now gives the rest back, so
            // deleting most objects frees their slots; the factor of four keeps an object that
            // comes and goes at the edge from resizing the map each time.
            let capacity = self.objects.capacity();
            if capacity > OBJECTS_SHRINK_CAPACITY_MIN && self.objects.len() * 4 < capacity {
                self.objects.shrink_to(self.objects.len() * 2);
            }
        }
    }

    /// Moves an entry to a new place: `relocate` sees the current entry and returns its new
    /// form, or `None` when the entry is no longer the version being moved. The live bytes
    /// move with it. Returns whether it moved.
    pub fn relocate(
        &mut self,
        object: &ObjectId,
        key: &[u8],
        relocate: impl FnOnce(&Entry) -> Option<Entry>,
    ) -> bool {
        let Some(slot) = self
            .objects
            .get_mut(object)
            .and_then(|s| s.keys.get_mut(key))
        else {
            return false;
        };
        let Some(new_entry) = relocate(slot) else {
            return false;
        };
        debug_assert_eq!(slot.value_len(), new_entry.value_len());
        let old = std::mem::replace(slot, new_entry.clone());
        self.discharge(key, &old);
        self.charge(key, &new_entry);
        true
    }

    pub fn live_bytes_total(&self) -> u64 {
        self.live_bytes.values().sum()
    }
}
