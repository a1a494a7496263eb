//! Point-in-time recovery of one object: the history its writes keep, bookmarks, and the
//! object's state at a bookmark.
//!
//! An object of a class with a history window (`history_retention_ms`) numbers its batches:
//! version `v` is the state after its `v`-th batch since its history began. Each batch also
//! stores an **undo record** of itself, as keys of the object under `HISTORY_PREFIX`: what
//! every key it changed held before (a value, or absent), the alarm before (if it changed it),
//! and when it was committed. The records live in the object's own key space, so they are
//! committed by the same batch as the writes they undo, and survive restarts, compaction,
//! backups and `--cores` changes like any other key. Going back from the current state
//! through the records of versions `current, current − 1, …, v + 1` gives the state at `v`.
//!
//! Keys (all start with 0xFF, which no text key does, and the key-value API refuses them):
//!
//! ```text
//! VERSION_KEY            version, time, base, known_since, history number (u64 big-endian)
//! RESTORE_KEY            the version a restore on the next activation goes back to (u64)
//! HISTORY_PREFIX ‖ v ‖ 0 ‖ time [‖ 1]   the record's header: version v was committed at
//!                        `time` (1: a batch of a restore but its last, a state no event saw)
//! HISTORY_PREFIX ‖ v ‖ 1          the alarm before v: empty (none) or i64 milliseconds
//! HISTORY_PREFIX ‖ v ‖ 2 ‖ key    `key` was absent before v
//! HISTORY_PREFIX ‖ v ‖ 3 ‖ key    `key` held the value before v
//! ```
//!
//! `v` and `time` are big-endian u64, so the records sort by version, and a version's header
//! comes first. Times are milliseconds since the Unix epoch, never less than the version
//! before's (a clock stepping back does not reorder history). A bookmark is (time, version,
//! history number) as 48 hex digits, so bookmarks order by time as strings; the history number
//! is random, drawn when the object's history begins, so another object's bookmark, or one of
//! a history since deleted, is refused rather than taken for a version of this one.
//!
//! Records older than the window are deleted by the object's later batches (whole versions,
//! a bounded number per batch); an object that never writes again keeps its last records.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use stead_storage::Batch;

/// The prefix of every history record key.
pub const HISTORY_PREFIX: &[u8] = b"\xffhist\x00";
/// The object's current version and what its history covers.
pub const VERSION_KEY: &[u8] = b"\xffver\x00";
/// A restore waiting for the object's next activation.
pub const RESTORE_KEY: &[u8] = b"\xffrestore\x00";

/// Record tags, the byte after the version.
const TAG_HEADER: u8 = 0;
const TAG_ALARM: u8 = 1;
const TAG_ABSENT: u8 = 2;
const TAG_VALUE: u8 = 3;

/// Bytes of a record key before the tag's own part: prefix, version, tag.
const RECORD_KEY_HEAD_BYTES: usize = HISTORY_PREFIX.len() + 8 + 1;

/// Bytes a history record key may add to a key: what the store's key limit is raised by.
pub const RECORD_KEY_OVERHEAD_BYTES: usize = RECORD_KEY_HEAD_BYTES + 8;

/// Bytes of deletes (keys and op headers) one batch makes to trim records past the window:
/// once past it, trimming stops (so one batch trims at most this plus one key of 2 KiB). A
/// version with more record keys is trimmed over several batches.
const TRIM_BYTES_PER_BATCH_MAX: usize = 256 * 1024;

/// Bytes reserved out of every event's batch for what the history adds besides the undo
/// entries (which count against the batch as the writes are made): the trim (at most
/// `TRIM_BYTES_PER_BATCH_MAX` and one key), the header, the version key.
pub const RESERVE_BYTES: usize = TRIM_BYTES_PER_BATCH_MAX + 16 * 1024;

/// Whether `key` is one of the history's own keys.
pub fn is_history_key(key: &[u8]) -> bool {
    key.starts_with(HISTORY_PREFIX) || key == VERSION_KEY || key == RESTORE_KEY
}

/// Whether `key` is a history record (the keys whose values an activation does not read).
pub fn is_record_key(key: &[u8]) -> bool {
    key.starts_with(HISTORY_PREFIX)
}

/// The estimated bytes one undo entry adds to a batch: its key, the value it keeps, and the
/// op's header.
pub fn undo_entry_bytes(key: &[u8], before: Option<&[u8]>) -> usize {
    RECORD_KEY_HEAD_BYTES + key.len() + before.map_or(0, <[u8]>::len) + 16
}

/// A point in one object's history: the state after `version`, at `time_ms`, of the history
/// numbered `history` (a random number each object's history gets when it begins, so a
/// bookmark of another object, or of a history since deleted, is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bookmark {
    pub time_ms: u64,
    pub version: u64,
    pub history: u64,
}

/// Hex digits of a bookmark.
const BOOKMARK_DIGITS: usize = 48;

impl fmt::Display for Bookmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:016x}{:016x}{:016x}",
            self.time_ms, self.version, self.history
        )
    }
}

impl FromStr for Bookmark {
    type Err = HistoryError;

    fn from_str(text: &str) -> Result<Bookmark, HistoryError> {
        let malformed = || HistoryError::MalformedBookmark {
            bookmark: text.chars().take(64).collect(),
        };
        let lower_hex = |byte: &u8| byte.is_ascii_digit() || (b'a'..=b'f').contains(byte);
        if text.len() != BOOKMARK_DIGITS || !text.as_bytes().iter().all(lower_hex) {
            return Err(malformed());
        }
        let field = |index: usize| {
            u64::from_str_radix(&text[index * 16..(index + 1) * 16], 16).map_err(|_| malformed())
        };
        Ok(Bookmark {
            time_ms: field(0)?,
            version: field(1)?,
            history: field(2)?,
        })
    }
}

/// Why a bookmark cannot be given or restored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryError {
    /// The object's class keeps no history (`history_retention_ms` is 0).
    Disabled,
    /// Not a bookmark this server gives out.
    MalformedBookmark { bookmark: String },
    /// The time is before the retention window, or before the history the object kept.
    TooOld {
        time_ms: u64,
        oldest_ms: u64,
        retention_ms: u64,
    },
    /// The time is after now.
    InTheFuture { time_ms: u64, now_ms: u64 },
    /// The bookmark is of another object, or of a history of this one that was since deleted
    /// (the object was deleted, or its class's window set to 0).
    OtherHistory,
    /// The bookmark names a version whose later records are gone, or that this history never
    /// had at that time.
    NotReachable {
        version: u64,
        oldest_version: u64,
        current_version: u64,
    },
    /// The bookmark names a state in the middle of a restore.
    MidRestore { version: u64 },
    /// A restore of the object is waiting for its next activation.
    RestoreInProgress,
    /// A record the restore needs is missing or malformed in the store.
    Damaged { reason: String },
    /// The instance takes no more writes (it left memory, or the store failed).
    Unavailable { reason: String },
    /// The event may not write (a read-only request's token), so it may not ask for a
    /// restore either.
    ReadOnly,
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Disabled => f.write_str(
                "this object's class keeps no history (history_retention_ms is 0)",
            ),
            HistoryError::MalformedBookmark { bookmark } => {
                write!(f, "{bookmark:?} is not a bookmark ({BOOKMARK_DIGITS} lower-case hex digits)")
            }
            HistoryError::TooOld {
                time_ms,
                oldest_ms,
                retention_ms,
            } => write!(
                f,
                "{time_ms} is older than the history kept: the oldest point is {oldest_ms} (retention window {retention_ms} ms)"
            ),
            HistoryError::InTheFuture { time_ms, now_ms } => {
                write!(f, "{time_ms} is in the future (now is {now_ms})")
            }
            HistoryError::OtherHistory => f.write_str(
                "the bookmark is not of this object's history (another object's, or of a history since deleted)",
            ),
            HistoryError::NotReachable {
                version,
                oldest_version,
                current_version,
            } => write!(
                f,
                "the bookmark names version {version}, but this object's history reaches versions {oldest_version} to {current_version}"
            ),
            HistoryError::MidRestore { version } => write!(
                f,
                "the bookmark names version {version}, a state in the middle of a restore"
            ),
            HistoryError::RestoreInProgress => f.write_str(
                "a restore of this object is waiting for its next activation",
            ),
            HistoryError::Damaged { reason } => write!(f, "the object's history is damaged: {reason}"),
            HistoryError::Unavailable { reason } => write!(f, "storage unavailable: {reason}"),
            HistoryError::ReadOnly => f.write_str(super::storage::READ_ONLY_REFUSAL),
        }
    }
}

impl std::error::Error for HistoryError {}

/// What an active object keeps of one version's record: its header. The record's keys are
/// in the store's index, which `trim` and `state_at` read them from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Record {
    time_ms: u64,
    /// Whether the version is a batch of a restore other than its last: a state no event saw.
    intermediate: bool,
    /// Whether some of its keys were trimmed (or its header is missing): it undoes nothing.
    partial: bool,
    /// Whether its header key was loaded (or written).
    headed: bool,
}

/// What one object knows of its history while it is in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The class's window; 0 keeps no history (and trims what an earlier setting kept).
    retention_ms: u64,
    /// The history's number, random, fixed when it begins (stored in `VERSION_KEY`).
    id: u64,
    /// The last committed version, and when it was committed.
    version: u64,
    time_ms: u64,
    /// The version the records go back to at most: records of versions up to it are
    /// leftovers of an earlier history (one that was turned off), trimmed first.
    base: u64,
    /// From this time on the state at any moment is known (the history began, or the newest
    /// trimmed version was committed then).
    known_since_ms: u64,
    /// Whether the store holds `VERSION_KEY`.
    stored: bool,
    /// Whether the store holds `RESTORE_KEY`.
    restore_pending: bool,
    /// The records kept, by version.
    records: BTreeMap<u64, Record>,
}

/// A record key: prefix, version, tag, then the tag's part.
fn record_key(version: u64, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(RECORD_KEY_HEAD_BYTES + rest.len());
    key.extend_from_slice(HISTORY_PREFIX);
    key.extend_from_slice(&version.to_be_bytes());
    key.push(tag);
    key.extend_from_slice(rest);
    key
}

/// The prefix of every key of version `version`'s record.
fn record_prefix(version: u64) -> Vec<u8> {
    let mut prefix = HISTORY_PREFIX.to_vec();
    prefix.extend_from_slice(&version.to_be_bytes());
    prefix
}

/// The version, tag and rest of a record key.
fn parse_record_key(key: &[u8]) -> Option<(u64, u8, &[u8])> {
    let rest = key.strip_prefix(HISTORY_PREFIX)?;
    let version = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let tag = *rest.get(8)?;
    Some((version, tag, &rest[9..]))
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The current time in milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> u64 {
    u64::try_from(super::now_ms()).unwrap_or(0)
}

/// A new history's number: random, never 0.
fn new_history_id() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: the clock still tells histories of one object apart.
        bytes = now_ms().to_le_bytes();
    }
    u64::from_le_bytes(bytes).max(1)
}

/// The header's flag byte after the time: the version is an intermediate batch of a restore.
const HEADER_INTERMEDIATE: u8 = 1;

/// An object's key-value entries (SQL pages included) and alarm.
pub type ObjectState = (BTreeMap<Vec<u8>, Vec<u8>>, Option<i64>);

/// A change the history records before a batch: what a key, or the alarm, held.
pub enum Before<'a> {
    Key(&'a [u8], Option<&'a [u8]>),
    Alarm(Option<i64>),
}

impl History {
    pub fn new(retention_ms: u64) -> History {
        History {
            retention_ms,
            ..History::default()
        }
    }

    pub fn retention_ms(&self) -> u64 {
        self.retention_ms
    }

    /// Whether new batches are recorded.
    pub fn enabled(&self) -> bool {
        self.retention_ms > 0
    }

    /// Takes in one stored key of the object (`VERSION_KEY`, `RESTORE_KEY` or a record key;
    /// values of records are not needed); returns false for other keys.
    pub fn load_key(&mut self, key: &[u8], value: &[u8]) -> bool {
        if key == VERSION_KEY {
            let fields: Vec<u64> = value.chunks(8).filter_map(be_u64).collect();
            if let [version, time_ms, base, known_since_ms, id] = fields[..] {
                (self.version, self.time_ms) = (version, time_ms);
                (self.base, self.known_since_ms, self.id) = (base, known_since_ms, id);
                self.stored = true;
            } else {
                tracing::warn!(
                    "an object's history version key is malformed; its history starts over"
                );
            }
            return true;
        }
        if key == RESTORE_KEY {
            self.restore_pending = true;
            return true;
        }
        let Some((version, tag, rest)) = parse_record_key(key) else {
            return key.starts_with(HISTORY_PREFIX);
        };
        let record = self.records.entry(version).or_default();
        if tag == TAG_HEADER {
            record.time_ms = rest.get(..8).and_then(be_u64).unwrap_or(0);
            record.intermediate = rest.get(8) == Some(&HEADER_INTERMEDIATE);
            record.headed = true;
        }
        true
    }

    /// Ends loading: a history whose version key is gone (history turned off, then on again)
    /// starts after the versions its leftover records name, with a new number; a record
    /// without its header was trimmed in part.
    pub fn loaded(&mut self) {
        if !self.stored {
            let last = self.records.keys().next_back().copied().unwrap_or(0);
            (self.version, self.base) = (last, last);
            self.id = new_history_id();
        }
        for record in self.records.values_mut() {
            record.partial |= !record.headed;
        }
    }

    /// The oldest version the records reach back to.
    fn oldest_version(&self) -> u64 {
        let first =
            self.records
                .range(self.base + 1..)
                .next()
                .map_or(self.version, |(version, record)| {
                    if record.partial {
                        *version
                    } else {
                        version - 1
                    }
                });
        first.max(self.base)
    }

    /// Whether the complete records of every version after `version` are kept.
    fn reaches(&self, version: u64) -> bool {
        version <= self.version
            && version >= self.oldest_version()
            && (version + 1..=self.version).all(|kept| {
                self.records
                    .get(&kept)
                    .is_some_and(|record| !record.partial)
            })
    }

    /// The last version that is not an intermediate batch of a restore.
    fn settled_version(&self) -> u64 {
        let mut version = self.version;
        while self
            .records
            .get(&version)
            .is_some_and(|record| record.intermediate)
        {
            version -= 1;
        }
        version
    }

    /// The bookmark of the state now (the committed writes: an event's writes are committed
    /// when its handler next awaits or ends).
    pub fn current_bookmark(&self, now_ms: u64) -> Result<Bookmark, HistoryError> {
        if !self.enabled() {
            return Err(HistoryError::Disabled);
        }
        if self.restore_pending {
            return Err(HistoryError::RestoreInProgress);
        }
        Ok(Bookmark {
            time_ms: now_ms.max(self.time_ms),
            version: self.version,
            history: self.id,
        })
    }

    /// The bookmark of the state at `time_ms`.
    pub fn bookmark_for_time(&self, time_ms: u64, now_ms: u64) -> Result<Bookmark, HistoryError> {
        if !self.enabled() {
            return Err(HistoryError::Disabled);
        }
        if time_ms > now_ms.max(self.time_ms) {
            return Err(HistoryError::InTheFuture { time_ms, now_ms });
        }
        let oldest_ms = self.oldest_time(now_ms);
        if time_ms < oldest_ms {
            return Err(HistoryError::TooOld {
                time_ms,
                oldest_ms,
                retention_ms: self.retention_ms,
            });
        }
        // The last version committed at or before `time_ms` (versions and times rise
        // together); a restore's intermediate batches are no state anyone saw.
        let version = self
            .records
            .range(self.base + 1..)
            .rev()
            .find(|(_, record)| {
                record.time_ms <= time_ms && !record.partial && !record.intermediate
            })
            .map_or(self.oldest_version(), |(version, _)| *version);
        Ok(Bookmark {
            time_ms,
            version: version.min(self.version),
            history: self.id,
        })
    }

    /// The oldest time a bookmark may name now.
    fn oldest_time(&self, now_ms: u64) -> u64 {
        let window_start = now_ms.saturating_sub(self.retention_ms);
        let known = if self.stored {
            self.known_since_ms
        } else {
            // No batch recorded yet: the state is known from now on.
            now_ms
        };
        window_start.max(known)
    }

    /// Checks that the object can go back to `bookmark` now.
    pub fn check_restore(&self, bookmark: Bookmark, now_ms: u64) -> Result<(), HistoryError> {
        if !self.enabled() {
            return Err(HistoryError::Disabled);
        }
        if self.restore_pending {
            return Err(HistoryError::RestoreInProgress);
        }
        // Before its first recorded batch a history's number is not stored yet (each reading
        // draws one): its only point is the state now, which any bookmark of it names.
        let unrecorded = !self.stored && bookmark.version == self.version;
        if bookmark.history != self.id && !unrecorded {
            return Err(HistoryError::OtherHistory);
        }
        if bookmark.time_ms > now_ms.max(self.time_ms) {
            return Err(HistoryError::InTheFuture {
                time_ms: bookmark.time_ms,
                now_ms,
            });
        }
        let oldest_ms = now_ms.saturating_sub(self.retention_ms);
        if bookmark.time_ms < oldest_ms {
            return Err(HistoryError::TooOld {
                time_ms: bookmark.time_ms,
                oldest_ms: self.oldest_time(now_ms),
                retention_ms: self.retention_ms,
            });
        }
        let not_reachable = || HistoryError::NotReachable {
            version: bookmark.version,
            oldest_version: self.oldest_version(),
            current_version: self.version,
        };
        if !self.reaches(bookmark.version) {
            return Err(not_reachable());
        }
        match self.records.get(&bookmark.version) {
            Some(record) if record.intermediate => Err(HistoryError::MidRestore {
                version: bookmark.version,
            }),
            // A bookmark names a version at a time that version was in force.
            Some(record) if !record.partial && record.time_ms > bookmark.time_ms => {
                Err(not_reachable())
            }
            _ => Ok(()),
        }
    }

    /// The bookmark that undoes a restore carried out now: the last state before it.
    pub fn undo_bookmark(&self, now_ms: u64) -> Bookmark {
        Bookmark {
            time_ms: now_ms.max(self.time_ms),
            version: self.settled_version(),
            history: self.id,
        }
    }

    /// Adds to `batch` the record of the changes `befores` undo, as the next version,
    /// committed at `now_ms` (or the last version's time, if later), and the new version key.
    /// `intermediate`: the batch is one of a restore's but its last.
    pub fn record<'a>(
        &mut self,
        batch: &mut Batch,
        befores: impl IntoIterator<Item = Before<'a>>,
        now_ms: u64,
        intermediate: bool,
    ) {
        if !self.stored && self.id == 0 {
            self.id = new_history_id();
        }
        let version = self.version + 1;
        let time_ms = now_ms.max(self.time_ms);
        let record = Record {
            time_ms,
            intermediate,
            partial: false,
            headed: true,
        };
        let mut put = |key: Vec<u8>, value: Vec<u8>| {
            batch.put(key, value);
        };
        let mut header = time_ms.to_be_bytes().to_vec();
        if intermediate {
            header.push(HEADER_INTERMEDIATE);
        }
        put(record_key(version, TAG_HEADER, &header), Vec::new());
        for before in befores {
            match before {
                Before::Key(key, None) => put(record_key(version, TAG_ABSENT, key), Vec::new()),
                Before::Key(key, Some(value)) => {
                    put(record_key(version, TAG_VALUE, key), value.to_vec())
                }
                Before::Alarm(alarm) => put(
                    record_key(version, TAG_ALARM, &[]),
                    alarm.map_or(Vec::new(), |ms| ms.to_be_bytes().to_vec()),
                ),
            }
        }
        if !self.stored {
            self.known_since_ms = time_ms;
        }
        self.records.insert(version, record);
        (self.version, self.time_ms, self.stored) = (version, time_ms, true);
        batch.put(VERSION_KEY, self.version_value());
    }

    fn version_value(&self) -> Vec<u8> {
        [
            self.version,
            self.time_ms,
            self.base,
            self.known_since_ms,
            self.id,
        ]
        .iter()
        .flat_map(|field| field.to_be_bytes())
        .collect()
    }

    /// Adds to `batch` the deletes of records past the window at `now_ms` (or of every record,
    /// with no window), oldest first, at most `TRIM_BYTES_PER_BATCH_MAX` of deletes: whole
    /// versions, and part of one that alone is larger. Versions after `keep_after` stay (a
    /// restore waiting for the next activation needs them). With no window, the version key
    /// goes too, so a later history starts over. `keys_of(prefix)` gives the object's stored
    /// keys that start with `prefix`, in order (those of one version's record).
    pub fn trim(
        &mut self,
        batch: &mut Batch,
        now_ms: u64,
        keep_after: Option<u64>,
        keys_of: impl Fn(&[u8]) -> Vec<Vec<u8>>,
    ) {
        let cutoff = if self.enabled() {
            now_ms.saturating_sub(self.retention_ms)
        } else {
            u64::MAX
        };
        let mut deleted = 0;
        while let Some(mut entry) = self.records.first_entry() {
            let version = *entry.key();
            let leftover = version <= self.base;
            let expired = entry.get().time_ms < cutoff || entry.get().partial;
            let needed = keep_after.is_some_and(|target| version > target);
            if !(leftover || expired) || needed || deleted >= TRIM_BYTES_PER_BATCH_MAX {
                break;
            }
            let record = entry.get_mut();
            if !leftover {
                self.known_since_ms = self.known_since_ms.max(record.time_ms);
            }
            // Keys go in order, the header first, so the rest of a record cut short here is
            // never taken for a whole one, in memory (`partial`) or after a reload (no header).
            let mut keys = keys_of(&record_prefix(version)).into_iter();
            for key in keys.by_ref() {
                deleted += key.len() + 16;
                batch.delete(key);
                if deleted >= TRIM_BYTES_PER_BATCH_MAX {
                    break;
                }
            }
            if keys.next().is_none() {
                entry.remove();
            } else {
                record.partial = true;
            }
        }
        if !self.enabled() && self.stored {
            batch.delete(VERSION_KEY);
            self.stored = false;
            let last = self
                .records
                .keys()
                .next_back()
                .copied()
                .unwrap_or(self.version);
            self.base = last.max(self.version);
            self.version = self.base;
            self.id = 0;
        } else if deleted > 0 && self.stored {
            batch.put(VERSION_KEY, self.version_value());
        }
    }

    /// Whether anything is kept that `trim` would delete with no window.
    pub fn holds_anything(&self) -> bool {
        self.stored || !self.records.is_empty()
    }

    /// The object's key-value entries (SQL pages included) and alarm at version `target`,
    /// from its current ones and the values of its records in `stored` (every key of the
    /// object, with values).
    pub fn state_at(
        &self,
        target: u64,
        stored: &BTreeMap<Vec<u8>, Vec<u8>>,
        alarm_ms: Option<i64>,
    ) -> Result<ObjectState, HistoryError> {
        if !self.reaches(target) {
            return Err(HistoryError::NotReachable {
                version: target,
                oldest_version: self.oldest_version(),
                current_version: self.version,
            });
        }
        let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = stored
            .iter()
            .filter(|(key, _)| !is_history_key(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let mut alarm = alarm_ms;
        for version in self
            .records
            .range(target + 1..)
            .map(|(version, _)| *version)
            .rev()
        {
            let prefix = record_prefix(version);
            let record = stored
                .range(prefix.clone()..)
                .take_while(|(key, _)| key.starts_with(&prefix));
            for (key, value) in record {
                let damaged = |what: &str| HistoryError::Damaged {
                    reason: format!("version {version}: {what}"),
                };
                let (_, tag, rest) =
                    parse_record_key(key).ok_or_else(|| damaged("a malformed key"))?;
                match tag {
                    TAG_HEADER => {}
                    TAG_ALARM if value.is_empty() => alarm = None,
                    TAG_ALARM => {
                        let ms = be_u64(value).ok_or_else(|| damaged("a malformed alarm"))?;
                        alarm = Some(ms as i64);
                    }
                    TAG_ABSENT => {
                        entries.remove(rest);
                    }
                    TAG_VALUE => {
                        entries.insert(rest.to_vec(), value.clone());
                    }
                    _ => return Err(damaged("an unknown record tag")),
                }
            }
        }
        Ok((entries, alarm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `trim`'s view of the keys of `stored`.
    fn keys_of(stored: &BTreeMap<Vec<u8>, Vec<u8>>) -> impl Fn(&[u8]) -> Vec<Vec<u8>> + '_ {
        |prefix| {
            stored
                .range(prefix.to_vec()..)
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(key, _)| key.clone())
                .collect()
        }
    }

    fn apply(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, batch: &Batch) {
        for op in batch.ops() {
            match op {
                stead_storage::Op::Put { key, value } => {
                    state.insert(key.clone(), value.clone());
                }
                stead_storage::Op::Delete { key } => {
                    state.remove(key);
                }
                _ => {}
            }
        }
    }

    /// Writes `key = value` as the next version, recording what it replaced.
    fn write(
        history: &mut History,
        stored: &mut BTreeMap<Vec<u8>, Vec<u8>>,
        key: &[u8],
        value: Option<&[u8]>,
        now_ms: u64,
    ) {
        let before = stored.get(key).cloned();
        let mut batch = Batch::new();
        match value {
            Some(value) => batch.put(key.to_vec(), value.to_vec()),
            None => batch.delete(key.to_vec()),
        };
        history.record(
            &mut batch,
            [Before::Key(key, before.as_deref())],
            now_ms,
            false,
        );
        history.trim(&mut batch, now_ms, None, keys_of(stored));
        apply(stored, &batch);
    }

    #[test]
    fn bookmarks_order_by_time_as_strings_and_parse_back() {
        let early = Bookmark {
            time_ms: 5,
            version: 900,
            history: u64::MAX,
        };
        let late = Bookmark {
            time_ms: 6,
            version: 1,
            history: 1,
        };
        assert!(early.to_string() < late.to_string());
        assert_eq!(early.to_string().parse::<Bookmark>(), Ok(early));
        for bad in ["", "zz", &"0".repeat(47), &"A".repeat(48), &"0".repeat(49)] {
            assert!(matches!(
                bad.parse::<Bookmark>(),
                Err(HistoryError::MalformedBookmark { .. })
            ));
        }
    }

    #[test]
    fn going_back_through_the_records_gives_every_earlier_state() {
        let mut history = History::new(1_000_000);
        let mut stored = BTreeMap::new();
        let mut states = vec![BTreeMap::new()];
        let script: [(&[u8], Option<&[u8]>); 5] = [
            (b"a", Some(b"1")),
            (b"b", Some(b"2")),
            (b"a", Some(b"3")),
            (b"b", None),
            (b"c", Some(b"4")),
        ];
        for (step, (key, value)) in script.iter().enumerate() {
            write(&mut history, &mut stored, key, *value, 1000 + step as u64);
            let visible: BTreeMap<_, _> = stored
                .iter()
                .filter(|(key, _)| !is_history_key(key))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            states.push(visible);
        }
        for (version, expected) in states.iter().enumerate() {
            let (entries, _) = history
                .state_at(version as u64, &stored, None)
                .expect("reachable");
            assert_eq!(&entries, expected, "version {version}");
        }
        // The loaded view of the same keys finds the same history.
        let mut loaded = History::new(1_000_000);
        for (key, value) in &stored {
            assert!(loaded.load_key(key, value) == is_history_key(key));
        }
        loaded.loaded();
        assert_eq!(loaded, history);
    }

    #[test]
    fn records_past_the_window_are_trimmed_and_older_points_refused() {
        let mut history = History::new(100);
        let mut stored = BTreeMap::new();
        write(&mut history, &mut stored, b"k", Some(b"1"), 1000);
        write(&mut history, &mut stored, b"k", Some(b"2"), 1050);
        write(&mut history, &mut stored, b"k", Some(b"3"), 1200);
        // At 1200 the window starts at 1100: versions 1 and 2 are gone.
        assert_eq!(history.records.keys().copied().collect::<Vec<_>>(), [3]);
        let refused = history.bookmark_for_time(1040, 1200);
        assert!(
            matches!(refused, Err(HistoryError::TooOld { .. })),
            "{refused:?}"
        );
        // 1150: after version 2 (committed at 1050, now the newest trimmed one).
        let bookmark = history
            .bookmark_for_time(1150, 1200)
            .expect("in the window");
        assert_eq!(bookmark.version, 2);
        let (entries, _) = history.state_at(2, &stored, None).expect("reachable");
        assert_eq!(entries.get(&b"k"[..]).map(Vec::as_slice), Some(&b"2"[..]));
        assert!(history.state_at(1, &stored, None).is_err());
        let old = Bookmark {
            time_ms: 1000,
            version: 1,
            history: history.id,
        };
        assert!(matches!(
            history.check_restore(old, 1200),
            Err(HistoryError::TooOld { .. })
        ));
        // Another history's bookmark of a version this one has is refused too.
        let other = Bookmark {
            history: history.id ^ 1,
            ..bookmark
        };
        assert_eq!(
            history.check_restore(other, 1200),
            Err(HistoryError::OtherHistory)
        );
        assert_eq!(history.check_restore(bookmark, 1200), Ok(()));
    }

    #[test]
    fn turning_history_off_deletes_it_and_a_later_history_starts_over() {
        let mut history = History::new(1_000_000);
        let mut stored = BTreeMap::new();
        write(&mut history, &mut stored, b"k", Some(b"1"), 1000);
        write(&mut history, &mut stored, b"k", Some(b"2"), 1001);
        let mut off = History::new(0);
        for (key, value) in &stored {
            off.load_key(key, value);
        }
        off.loaded();
        let mut batch = Batch::new();
        off.trim(&mut batch, 2000, None, keys_of(&stored));
        apply(&mut stored, &batch);
        assert!(stored.keys().all(|key| !is_history_key(key)), "{stored:?}");
        assert!(!off.holds_anything());
        assert!(matches!(
            off.current_bookmark(2000),
            Err(HistoryError::Disabled)
        ));
        // Turned on again, the history starts over under another number.
        let mut again = History::new(1_000_000);
        for (key, value) in &stored {
            again.load_key(key, value);
        }
        again.loaded();
        assert_ne!(again.id, history.id);
    }

    #[test]
    fn a_record_too_large_for_one_trim_goes_over_several_and_is_never_used_half_gone() {
        let mut history = History::new(100);
        let mut stored = BTreeMap::new();
        // Version 1 writes 200 keys of 2 KiB: its record keys are some 400 KiB.
        let keys: Vec<Vec<u8>> = (0..200)
            .map(|n| {
                let mut key = vec![b'x'; 2000];
                key.extend(format!("{n:03}").bytes());
                key
            })
            .collect();
        let mut batch = Batch::new();
        for key in &keys {
            batch.put(key.clone(), b"v".to_vec());
        }
        history.record(
            &mut batch,
            keys.iter().map(|key| Before::Key(key, None)),
            1000,
            false,
        );
        apply(&mut stored, &batch);
        write(&mut history, &mut stored, b"k", Some(b"1"), 1050);
        // At 1200 both versions are past the window; one batch trims only part of version 1.
        let mut batch = Batch::new();
        history.trim(&mut batch, 1200, None, keys_of(&stored));
        let deleted: usize = batch
            .ops()
            .iter()
            .map(|op| match op {
                stead_storage::Op::Delete { key } => key.len() + 16,
                _ => 0,
            })
            .sum();
        assert!(deleted <= TRIM_BYTES_PER_BATCH_MAX + 2100, "{deleted}");
        apply(&mut stored, &batch);
        assert!(history.records[&1].partial);
        assert!(history.state_at(0, &stored, None).is_err());
        assert_eq!(history.oldest_version(), 1);
        // Reloaded, the rest of the record is known as partial: its header went first.
        let mut loaded = History::new(100);
        for (key, value) in &stored {
            loaded.load_key(key, value);
        }
        loaded.loaded();
        assert!(loaded.records[&1].partial);
        assert!(loaded.state_at(0, &stored, None).is_err());
        assert!(loaded.state_at(1, &stored, None).is_ok());
        // Later batches finish it, and then version 2.
        for _ in 0..3 {
            let mut batch = Batch::new();
            loaded.trim(&mut batch, 1200, None, keys_of(&stored));
            apply(&mut stored, &batch);
        }
        assert!(loaded.records.is_empty(), "{:?}", loaded.records.keys());
        assert!(stored.keys().all(|key| !is_record_key(key)));
    }
}
