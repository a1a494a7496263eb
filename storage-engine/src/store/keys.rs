//! One object's keys in order, sized for the common case of an object with a handful of keys.
//!
//! A `BTreeMap` allocates a whole leaf node (11 slots, 464 bytes for our key and entry types)
//! even for one key, which made a one-key object cost about 680 bytes of index. Up to
//! `SMALL_KEYS_MAX` keys live in a sorted vector kept at its exact length instead (40 bytes a
//! key); an object that grows past it moves to a `BTreeMap`, where a node's cost is shared by
//! many keys, and moves back once it shrinks to half of that.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Most keys kept in the sorted vector; one more moves the object to a `BTreeMap`. Inserting
/// into a sorted vector moves up to this many 40-byte slots, which stays below a node search.
pub const SMALL_KEYS_MAX: usize = 32;

/// An object's keys with their values, in key order: the store index's entries, and the
/// object's in-memory copy of its data while it is active (`src/object/storage.rs`).
#[derive(Debug, Clone)]
pub enum KeyMap<V> {
    /// Sorted by key, no duplicates, capacity equal to length.
    Small(Vec<(Box<[u8]>, V)>),
    /// More than `SMALL_KEYS_MAX / 2` keys.
    Large(BTreeMap<Box<[u8]>, V>),
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap::Small(Vec::new())
    }
}

impl<V> KeyMap<V> {
    /// From keys already sorted and without duplicates (the caller checked), each variant
    /// built whole: the vector at its exact length, the tree by a bulk build.
    pub fn from_sorted(mut keys: Vec<(Box<[u8]>, V)>) -> Self {
        debug_assert!(keys.windows(2).all(|pair| pair[0].0 < pair[1].0));
        if keys.len() <= SMALL_KEYS_MAX {
            keys.shrink_to_fit();
            KeyMap::Small(keys)
        } else {
            KeyMap::Large(keys.into_iter().collect())
        }
    }

    pub fn len(&self) -> usize {
        match self {
            KeyMap::Small(keys) => keys.len(),
            KeyMap::Large(keys) => keys.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &[u8]) -> Option<&V> {
        match self {
            KeyMap::Small(keys) => search(keys, key).ok().map(|at| &keys[at].1),
            KeyMap::Large(keys) => keys.get(key),
        }
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        match self {
            KeyMap::Small(keys) => search(keys, key).ok().map(|at| &mut keys[at].1),
            KeyMap::Large(keys) => keys.get_mut(key),
        }
    }

    /// Inserts or replaces; returns the entry replaced.
    pub fn insert(&mut self, key: &[u8], entry: V) -> Option<V> {
        match self {
            KeyMap::Small(keys) => match search(keys, key) {
                Ok(at) => Some(std::mem::replace(&mut keys[at].1, entry)),
                Err(at) if keys.len() < SMALL_KEYS_MAX => {
                    keys.reserve_exact(1);
                    keys.insert(at, (key.into(), entry));
                    None
                }
                Err(_) => {
                    let mut large: BTreeMap<_, _> = std::mem::take(keys).into_iter().collect();
                    large.insert(key.into(), entry);
                    *self = KeyMap::Large(large);
                    None
                }
            },
            KeyMap::Large(keys) => match keys.get_mut(key) {
                Some(slot) => Some(std::mem::replace(slot, entry)),
                None => keys.insert(key.into(), entry),
            },
        }
    }

    pub fn remove_entry(&mut self, key: &[u8]) -> Option<(Box<[u8]>, V)> {
        let removed = match self {
            KeyMap::Small(keys) => {
                let at = search(keys, key).ok()?;
                let removed = keys.remove(at);
                keys.shrink_to_fit();
                removed
            }
            KeyMap::Large(keys) => keys.remove_entry(key)?,
        };
        if let KeyMap::Large(keys) = self {
            if keys.len() <= SMALL_KEYS_MAX / 2 {
                let small: Vec<_> = std::mem::take(keys).into_iter().collect();
                *self = KeyMap::Small(small);
            }
        }
        Some(removed)
    }

    pub fn iter(&self) -> Range<'_, V> {
        match self {
            KeyMap::Small(keys) => Range::Small(keys.iter()),
            KeyMap::Large(keys) => Range::Large(keys.range::<[u8], _>(..)),
        }
    }

    /// The keys between two bounds, in order; reversible.
    pub fn range<'a>(&'a self, lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> Range<'a, V> {
        match self {
            KeyMap::Small(keys) => {
                let start = match lower {
                    Bound::Unbounded => 0,
                    Bound::Included(lower) => keys.partition_point(|(k, _)| &**k < lower),
                    Bound::Excluded(lower) => keys.partition_point(|(k, _)| &**k <= lower),
                };
                let end = match upper {
                    Bound::Unbounded => keys.len(),
                    Bound::Included(upper) => keys.partition_point(|(k, _)| &**k <= upper),
                    Bound::Excluded(upper) => keys.partition_point(|(k, _)| &**k < upper),
                };
                Range::Small(keys[start..end.max(start)].iter())
            }
            KeyMap::Large(keys) => Range::Large(keys.range::<[u8], _>((lower, upper))),
        }
    }
}

/// Every key and value of a [`KeyMap`], in key order, taken out of it.
pub enum IntoIter<V> {
    Small(std::vec::IntoIter<(Box<[u8]>, V)>),
    Large(std::collections::btree_map::IntoIter<Box<[u8]>, V>),
}

impl<V> Iterator for IntoIter<V> {
    type Item = (Box<[u8]>, V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            IntoIter::Small(keys) => keys.next(),
            IntoIter::Large(keys) => keys.next(),
        }
    }
}

impl<V> IntoIterator for KeyMap<V> {
    type Item = (Box<[u8]>, V);
    type IntoIter = IntoIter<V>;

    fn into_iter(self) -> IntoIter<V> {
        match self {
            KeyMap::Small(keys) => IntoIter::Small(keys.into_iter()),
            KeyMap::Large(keys) => IntoIter::Large(keys.into_iter()),
        }
    }
}

impl<V> FromIterator<(Box<[u8]>, V)> for KeyMap<V> {
    /// Later duplicates replace earlier ones, as repeated inserts would.
    fn from_iter<I: IntoIterator<Item = (Box<[u8]>, V)>>(iter: I) -> Self {
        let mut keys = KeyMap::default();
        for (key, entry) in iter {
            keys.insert(&key, entry);
        }
        keys
    }
}

fn search<V>(keys: &[(Box<[u8]>, V)], key: &[u8]) -> Result<usize, usize> {
    keys.binary_search_by(|(k, _)| (**k).cmp(key))
}

/// Keys in order from either variant.
pub enum Range<'a, V> {
    Small(std::slice::Iter<'a, (Box<[u8]>, V)>),
    Large(btree_map::Range<'a, Box<[u8]>, V>),
}

impl<'a, V> Iterator for Range<'a, V> {
    type Item = (&'a Box<[u8]>, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Range::Small(iter) => iter.next().map(|(key, entry)| (key, entry)),
            Range::Large(iter) => iter.next(),
        }
    }
}

impl<V> DoubleEndedIterator for Range<'_, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Range::Small(iter) => iter.next_back().map(|(key, entry)| (key, entry)),
            Range::Large(iter) => iter.next_back(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::Entry;

    fn entry(n: u32) -> Entry {
        Entry::OnDisk {
            segment: n,
            record: 0,
            offset: 0,
            len: 0,
            crc: 0,
        }
    }

    fn segments<'a>(range: impl Iterator<Item = (&'a Box<[u8]>, &'a Entry)>) -> Vec<u32> {
        range.map(|(_, entry)| entry.segment()).collect()
    }

    /// Both variants agree with a `BTreeMap` on every operation, across the switch both ways.
    #[test]
    fn matches_a_btree_map_through_growth_and_shrinkage() {
        let mut keys = KeyMap::default();
        let mut model = BTreeMap::new();
        let key = |n: u32| (n * 7 % 101).to_be_bytes().to_vec();
        for n in 0..80 {
            assert_eq!(
                keys.insert(&key(n), entry(n)).map(|e| e.segment()),
                model.insert(key(n), n)
            );
        }
        assert!(matches!(keys, KeyMap::Large(_)));
        for n in (0..80).step_by(3) {
            assert_eq!(
                keys.insert(&key(n), entry(n + 1000)).map(|e| e.segment()),
                model.insert(key(n), n + 1000)
            );
        }
        for n in 0..75 {
            let removed = keys
                .remove_entry(&key(n))
                .map(|(k, e)| (k.to_vec(), e.segment()));
            assert_eq!(removed, model.remove_entry(&key(n)));
            assert_eq!(keys.len(), model.len());
            assert_eq!(
                segments(keys.iter()),
                model.values().copied().collect::<Vec<_>>()
            );
        }
        assert!(matches!(keys, KeyMap::Small(_)));
        assert!(keys.remove_entry(&key(0)).is_none());
    }

    /// A range `BTreeMap::range` refuses: start past end, or equal and both excluded.
    fn inverted(lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> bool {
        match (lower, upper) {
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a > b
                    || (a == b
                        && matches!((lower, upper), (Bound::Excluded(_), Bound::Excluded(_))))
            }
            _ => false,
        }
    }

    #[test]
    fn ranges_match_a_btree_map_in_both_directions() {
        for count in [5u32, 50] {
            let keys: KeyMap<Entry> = (0..count)
                .map(|n| ((n * 2).to_be_bytes().to_vec().into_boxed_slice(), entry(n)))
                .collect();
            let model: BTreeMap<Vec<u8>, u32> = (0..count)
                .map(|n| ((n * 2).to_be_bytes().to_vec(), n))
                .collect();
            let edges = [0u32, 1, 4, 9, 20, 99, 100].map(u32::to_be_bytes);
            let mut bounds = vec![Bound::Unbounded];
            for edge in &edges {
                bounds.push(Bound::Included(&edge[..]));
                bounds.push(Bound::Excluded(&edge[..]));
            }
            for &lower in &bounds {
                for &upper in &bounds {
                    if inverted(lower, upper) {
                        continue; // BTreeMap::range panics on these; `bounds` never makes one.
                    }
                    let expected: Vec<u32> = model
                        .range::<[u8], _>((lower, upper))
                        .map(|(_, n)| *n)
                        .collect();
                    assert_eq!(segments(keys.range(lower, upper)), expected);
                    let mut reversed = expected.clone();
                    reversed.reverse();
                    assert_eq!(segments(keys.range(lower, upper).rev()), reversed);
                }
            }
        }
    }
}
