//! A hierarchical timer wheel: millions of pending timers at a few bytes of overhead each.
//!
//! Six levels of 64 slots. Level `l` has slots `64^l` milliseconds wide, so level 0 covers the
//! next 64 ms at 1 ms resolution and level 5 about 2.2 years; timers further out wait in an
//! overflow list until they come within range. A timer sits at the level of the highest 6-bit
//! group in which its deadline differs from the wheel's current time; when the wheel reaches a
//! slot of a higher level, the slot's timers move down (cascade) until they reach level 0 and
//! fire. Each level keeps a 64-bit occupancy mask, so finding the next deadline is a few bit
//! operations, and advancing over an idle hour costs nothing per millisecond.
//!
//! Cancellation is left to the owner: the alarm layer checks a fired timer against the
//! object's current alarm and drops it if it was replaced or deleted, which keeps the wheel
//! free of per-timer handles.

/// Bits of one level's slot index.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Levels of the wheel.
const LEVELS: usize = 6;
/// The span the levels cover, in milliseconds: deadlines further away than this from the
/// wheel's current time wait in the overflow list.
const WHEEL_SPAN_MS: u64 = 1 << (SLOT_BITS * LEVELS as u32);

/// One pending timer.
#[derive(Debug)]
struct Entry<T> {
    /// When it fires, in the wheel's milliseconds.
    deadline_ms: u64,
    /// What the owner gets back when it fires.
    value: T,
}

/// One ring of 64 slots.
struct Level<T> {
    /// The timers of each slot, in no particular order.
    slots: Vec<Vec<Entry<T>>>,
    /// Bit `i` is set when slot `i` holds at least one timer.
    occupied: u64,
}

impl<T> Level<T> {
    fn new() -> Level<T> {
        Level {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: 0,
        }
    }
}

/// Timers keyed by deadline in milliseconds; `advance` returns the ones that are due.
pub struct TimerWheel<T> {
    /// The wheel's current time: every timer with a deadline ≤ this has been returned.
    now_ms: u64,
    /// The levels, finest first.
    levels: Vec<Level<T>>,
    /// Timers beyond `WHEEL_SPAN_MS` from `now_ms`.
    overflow: Vec<Entry<T>>,
    /// Pending timers in all levels and the overflow list.
    len: usize,
}

impl<T> TimerWheel<T> {
    /// A wheel whose current time is `now_ms`.
    pub fn new(now_ms: u64) -> TimerWheel<T> {
        TimerWheel {
            now_ms,
            levels: (0..LEVELS).map(|_| Level::new()).collect(),
            overflow: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Adds a timer. A deadline at or before the wheel's current time fires at the next
    /// `advance`.
    pub fn insert(&mut self, deadline_ms: u64, value: T) {
        self.len += 1;
        self.place(Entry { deadline_ms, value });
    }

    /// Puts an entry in its slot (or the overflow list) relative to the current time.
    fn place(&mut self, entry: Entry<T>) {
        // A due timer goes into the current level-0 slot, which the next advance drains.
        let deadline_ms = entry.deadline_ms.max(self.now_ms);
        if deadline_ms - self.now_ms >= WHEEL_SPAN_MS {
            self.overflow.push(entry);
            return;
        }
        let differing = (deadline_ms ^ self.now_ms) | (SLOTS as u64 - 1);
        let level = ((63 - differing.leading_zeros()) / SLOT_BITS) as usize;
        // Near but across a boundary of the whole wheel (the top level's slots would wrap):
        // it waits in the overflow list like a far timer, re-placed at the next advance.
        if level >= LEVELS {
            self.overflow.push(entry);
            return;
        }
        let slot = ((deadline_ms >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1);
        self.levels[level].slots[slot].push(entry);
        self.levels[level].occupied |= 1 << slot;
    }

    /// The earliest occupied slot: its level, index, and start time. Lower levels always hold
    /// earlier deadlines than higher ones, so the first occupied level has it.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for (level_index, level) in self.levels.iter().enumerate() {
            if level.occupied == 0 {
                continue;
            }
            let shift = level_index as u32 * SLOT_BITS;
            let current = ((self.now_ms >> shift) as usize) & (SLOTS - 1);
            let ahead = level.occupied.rotate_right(current as u32).trailing_zeros() as usize;
            let slot = (current + ahead) & (SLOTS - 1);
            let level_span = 1u64 << (shift + SLOT_BITS);
            let level_start = self.now_ms & !(level_span - 1);
            let mut start = level_start + ((slot as u64) << shift);
            if slot < current {
                start += level_span;
            }
            return Some((level_index, slot, start));
        }
        None
    }

    /// The earliest deadline the wheel may fire next (a lower bound at higher levels: a slot's
    /// start), or None when it is empty. The driver sleeps until then.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let wheel = self.next_slot().map(|(_, _, start)| start.max(self.now_ms));
        let overflow = self
            .overflow
            .iter()
            .map(|entry| entry.deadline_ms.max(self.now_ms))
            .min();
        match (wheel, overflow) {
            (Some(wheel), Some(overflow)) => Some(wheel.min(overflow)),
            (wheel, overflow) => wheel.or(overflow),
        }
    }

    /// Moves the wheel's time to `now_ms` and appends every timer due by then to `due`, in
    /// deadline order per millisecond. Returns how many fired. Time never goes backwards.
    pub fn advance(&mut self, now_ms: u64, due: &mut Vec<(u64, T)>) -> usize {
        let before = due.len();
        if now_ms < self.now_ms {
            return 0;
        }
        while let Some((level, slot, start)) = self.next_slot() {
            if start > now_ms {
                break;
            }
            self.now_ms = self.now_ms.max(start);
            let entries = std::mem::take(&mut self.levels[level].slots[slot]);
            self.levels[level].occupied &= !(1u64 << slot);
            for entry in entries {
                if entry.deadline_ms <= self.now_ms {
                    self.len -= 1;
                    due.push((entry.deadline_ms, entry.value));
                } else {
                    self.place(entry);
                }
            }
        }
        self.now_ms = now_ms;
        if !self.overflow.is_empty() {
            let overflow = std::mem::take(&mut self.overflow);
            for entry in overflow {
                if entry.deadline_ms <= now_ms {
                    self.len -= 1;
                    due.push((entry.deadline_ms, entry.value));
                } else {
                    self.place(entry);
                }
            }
        }
        due[before..].sort_by_key(|(deadline, _)| *deadline);
        due.len() - before
    }

    /// Gives back the spare capacity of every slot: after a bulk load (start-up), slots grown
    /// by doubling hold up to twice the memory their timers need.
    pub fn shrink_to_fit(&mut self) {
        for level in &mut self.levels {
            level.slots.iter_mut().for_each(Vec::shrink_to_fit);
        }
        self.overflow.shrink_to_fit();
    }

    /// Keeps only the timers for which `keep(deadline_ms, &value)` is true, and of several equal
    /// `(deadline, value)` pairs only one. Returns how many were dropped.
    ///
    /// The owner compacts this way when replaced timers pile up. Equal pairs always share a
    /// slot (a timer's position depends only on its deadline and the wheel's current time), so
    /// sorting each slot finds every duplicate without extra memory.
    pub fn retain_unique(&mut self, mut keep: impl FnMut(u64, &T) -> bool) -> usize
    where
        T: Ord,
    {
        let before = self.len;
        let mut compact = |entries: &mut Vec<Entry<T>>| {
            entries.retain(|entry| keep(entry.deadline_ms, &entry.value));
            entries
                .sort_unstable_by(|a, b| (a.deadline_ms, &a.value).cmp(&(b.deadline_ms, &b.value)));
            entries.dedup_by(|a, b| a.deadline_ms == b.deadline_ms && a.value == b.value);
            entries.shrink_to_fit();
            entries.len()
        };
        let mut len = 0;
        for level in &mut self.levels {
            for (index, slot) in level.slots.iter_mut().enumerate() {
                if level.occupied & (1 << index) == 0 {
                    continue;
                }
                let kept = compact(slot);
                if kept == 0 {
                    level.occupied &= !(1u64 << index);
                }
                len += kept;
            }
        }
        len += compact(&mut self.overflow);
        self.len = len;
        before - len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fires_in_order_and_only_when_due() {
        let mut wheel = TimerWheel::new(1_000);
        wheel.insert(1_050, "a");
        wheel.insert(1_000 + 70_000, "b");
        wheel.insert(999, "late");
        let mut due = Vec::new();
        assert_eq!(wheel.advance(1_000, &mut due), 1);
        assert_eq!(due, vec![(999, "late")]);
        due.clear();
        assert_eq!(wheel.advance(1_049, &mut due), 0);
        assert_eq!(wheel.next_deadline_ms(), Some(1_050));
        assert_eq!(wheel.advance(1_050, &mut due), 1);
        assert_eq!(wheel.advance(71_000, &mut due), 1);
        assert_eq!(due, vec![(1_050, "a"), (71_000, "b")]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn far_deadlines_wait_in_overflow() {
        let mut wheel = TimerWheel::new(0);
        let far = WHEEL_SPAN_MS * 3 + 17;
        wheel.insert(far, ());
        let mut due = Vec::new();
        assert_eq!(wheel.advance(far - 1, &mut due), 0);
        assert_eq!(wheel.advance(far, &mut due), 1);
    }

    #[test]
    fn retain_unique_drops_rejected_and_duplicate_timers() {
        let mut wheel = TimerWheel::new(0);
        for value in [1u32, 2, 2, 3] {
            wheel.insert(5_000, value);
        }
        wheel.insert(WHEEL_SPAN_MS + 9, 2);
        wheel.insert(WHEEL_SPAN_MS + 9, 2);
        assert_eq!(wheel.retain_unique(|_, value| *value != 3), 3);
        assert_eq!(wheel.len(), 3);
        let mut due = Vec::new();
        wheel.advance(WHEEL_SPAN_MS * 2, &mut due);
        assert_eq!(due, vec![(5_000, 1), (5_000, 2), (WHEEL_SPAN_MS + 9, 2)]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline_ms(), None);
    }

    proptest! {
        #[test]
        fn matches_a_sorted_model(
            start in 0u64..1u64 << 40,
            deadlines in proptest::collection::vec(0u64..5_000_000, 0..200),
            steps in proptest::collection::vec(0u64..400_000, 1..40),
        ) {
            let mut wheel = TimerWheel::new(start);
            let mut model: Vec<(u64, usize)> = Vec::new();
            for (index, offset) in deadlines.iter().enumerate() {
                wheel.insert(start + offset, index);
                model.push((start + offset, index));
            }
            let mut now = start;
            for step in steps {
                now += step;
                let mut due = Vec::new();
                wheel.advance(now, &mut due);
                let mut expected: Vec<(u64, usize)> =
                    model.iter().copied().filter(|(deadline, _)| *deadline <= now).collect();
                model.retain(|(deadline, _)| *deadline > now);
                expected.sort();
                due.sort();
                prop_assert_eq!(due, expected);
                prop_assert_eq!(wheel.len(), model.len());
                if let (Some(next), Some(min)) =
                    (wheel.next_deadline_ms(), model.iter().map(|(d, _)| *d).min())
                {
                    prop_assert!(next <= min);
                }
            }
        }
    }
}
