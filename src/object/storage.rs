//! [`Storage`]: an object's view of its durable key-value space and alarm.
//!
//! The whole object is in memory while it is active (loaded at activation), so the API is
//! synchronous: reads never suspend. Writes change the in-memory copy at once, so the same
//! event and every later one read them, and are recorded in the object's pending batch, which
//! the host commits after every poll of the handler (see `gate.rs`). A write that would pass a
//! limit is refused with a [`StorageError`] and changes nothing.

use std::cell::RefCell;
use std::fmt;
use std::ops::Bound;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use stead_storage::{Batch, KeyMap, Limits, ListOptions, ObjectData};

use super::history::{self, Before, Bookmark, History, HistoryError, RESTORE_KEY};
use super::pending::{Pending, Taken};
use super::sql::pages::{is_page_key, page_key, PageFile};
use super::sql::{Database, Sql, SqlError};
use crate::config::SqlSettings;
use crate::wake::{Broadcast, BroadcastWait};

/// The key under which an object reached by name keeps its name (UTF-8), for the admin API.
/// Written with the object's first batch; the key-value API never sees it.
pub const NAME_KEY: &[u8] = b"\xffname\x00";

/// Whether `key` is one of stead's own keys (SQL pages, the name), which the key-value API
/// refuses and never shows.
pub fn is_reserved_key(key: &[u8]) -> bool {
    is_page_key(key) || key == NAME_KEY || history::is_history_key(key)
}

/// Why a write was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError {
    KeyTooLarge {
        key_bytes: usize,
        key_bytes_max: usize,
    },
    ValueTooLarge {
        value_bytes: usize,
        value_bytes_max: usize,
    },
    /// The writes since the handler last suspended name too many keys of one kind (`put`,
    /// `delete`); awaiting anything (even `glommio::yield_if_needed`) starts a new batch.
    BatchTooManyKeys {
        op_kind: &'static str,
        keys: usize,
        batch_keys_max: usize,
    },
    /// The writes since the handler last suspended are too large for one batch.
    BatchTooLarge {
        batch_bytes: usize,
        batch_bytes_max: usize,
    },
    /// The key is one of stead's own: it starts with the bytes reserved for the object's SQL
    /// pages (0xFF `sql` 0x00) or history (0xFF `hist` 0x00), or is the name, version or
    /// restore key (0xFF `name`/`ver`/`restore` 0x00); no text key is.
    ReservedKey { key_bytes: usize },
    /// The store failed (an I/O error, a poisoned store, shutdown) or the object was evicted;
    /// this instance takes no more writes.
    Unavailable { reason: String },
    /// The event may not write: its request's token has no `write` permission (or it is a
    /// call from such an event).
    ReadOnly,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::KeyTooLarge {
                key_bytes,
                key_bytes_max,
            } => {
                write!(
                    f,
                    "key of {key_bytes} bytes exceeds key_bytes_max {key_bytes_max}"
                )
            }
            StorageError::ValueTooLarge {
                value_bytes,
                value_bytes_max,
            } => write!(
                f,
                "value of {value_bytes} bytes exceeds value_bytes_max {value_bytes_max}"
            ),
            StorageError::BatchTooManyKeys {
                op_kind,
                keys,
                batch_keys_max,
            } => write!(
                f,
                "{keys} keys to {op_kind} in one batch, more than batch_keys_max {batch_keys_max}"
            ),
            StorageError::BatchTooLarge {
                batch_bytes,
                batch_bytes_max,
            } => write!(
                f,
                "batch of {batch_bytes} bytes exceeds batch_bytes_max {batch_bytes_max}"
            ),
            StorageError::ReservedKey { key_bytes } => write!(
                f,
                "key of {key_bytes} bytes is reserved for stead's own data (SQL pages, the object's name and history)"
            ),
            StorageError::Unavailable { reason } => write!(f, "storage unavailable: {reason}"),
            StorageError::ReadOnly => f.write_str(READ_ONLY_REFUSAL),
        }
    }
}

impl std::error::Error for StorageError {}

/// Why a read-only event's write is refused.
pub(crate) const READ_ONLY_REFUSAL: &str =
    "this request may not write: its token has no write permission";

/// The state behind one object's [`Storage`].
#[derive(Debug)]
struct State {
    /// Every key of the object, including writes not yet durable. A `KeyMap` rather than a
    /// `BTreeMap`: a one-key object costs a 48-byte slot, not a 544-byte tree node.
    entries: KeyMap<Vec<u8>>,
    /// The object's alarm, including a change not yet durable.
    alarm_ms: Option<i64>,
    /// Writes not yet handed to the store.
    pending: Pending,
    /// The engine's limits, checked on each write.
    limits: Limits,
    /// Set once this instance may no longer write (store failure, eviction).
    unavailable: Option<String>,
    /// Set once a commit of this instance's writes failed: writes it made may not be stored.
    commit_failed: Option<String>,
    /// The object's SQL database file, whole (see `sql/pages.rs`); its pages are keys under
    /// `SQL_PAGE_KEY_PREFIX`, kept here rather than in `entries` so that the key-value API
    /// never sees them.
    sql_file: PageFile,
    /// The limits of the SQL database.
    sql_settings: Rc<SqlSettings>,
    /// The batch limit the SQL writes of the current poll passed, if they did: SQLite is never
    /// refused a write (see `Pending::write_page_unrefused`); the database fails the instance
    /// after the statement instead (`Database::check_batch`).
    sql_batch_passed: Option<StorageError>,
    /// Set with `sql_batch_passed`, for the progress handler, which then stops the statement.
    sql_batch_passed_flag: Arc<AtomicBool>,
    /// The open SQLite connection over `sql_file`, opened at the first `sql()` call and closed
    /// when the instance leaves memory.
    database: Option<Rc<Database>>,
    /// One frame per `transaction_sync` in progress, innermost last: how to undo its
    /// key-value writes.
    transactions: Vec<UndoFrame>,
    /// The object's name, once an event reached it by name: written with the next batch
    /// while the store does not hold it (`take_pending`).
    name: Option<String>,
    /// Whether the store holds the name key (loaded with it, or written since).
    name_stored: bool,
    /// The object's history (`history.rs`): its version and the records it keeps.
    history: History,
    /// Set by `restore_on_next_activation`: the host takes the instance out of memory after
    /// the event.
    restart_requested: bool,
    /// The version a requested restore goes back to: the records after it are not trimmed
    /// until it is carried out.
    restore_target: Option<u64>,
    /// Set while a read-only event's handler is polled: every write is refused.
    read_only: bool,
}

/// How to undo the key-value writes of one `transaction_sync`.
#[derive(Debug)]
struct UndoFrame {
    /// The pending batch when the transaction began.
    pending: Pending,
    /// The alarm when the transaction began.
    alarm_ms: Option<i64>,
    /// The restore asked for when the transaction began (`restart_requested`,
    /// `restore_target`).
    restore: (bool, Option<u64>),
    /// What each write replaced, oldest first (undone newest first).
    undo: Vec<Undo>,
}

/// What one key-value write replaced.
#[derive(Debug)]
enum Undo {
    /// The key's value before a put or delete (`None`: absent).
    Key(Box<[u8]>, Option<Vec<u8>>),
    /// Every entry before a `delete_all`.
    All(KeyMap<Vec<u8>>),
}

/// A reference to a [`Storage`] that does not keep it alive: what the SQL file handle holds,
/// since the storage holds the connection that holds the file.
#[derive(Clone, Debug)]
pub(crate) struct WeakStorage {
    /// The storage's state, if it still exists.
    state: std::rc::Weak<RefCell<State>>,
}

impl WeakStorage {
    pub(crate) fn upgrade(&self) -> Option<Storage> {
        let state = self.state.upgrade()?;
        Some(Storage {
            state,
            // A storage reached through its file never waits on `closed`.
            closed: Rc::new(Broadcast::new()),
        })
    }
}

/// An object's storage. Cheap to clone; all clones are the same storage.
#[derive(Clone, Debug)]
pub struct Storage {
    /// Shared with the host, which takes the pending batch after every poll.
    state: Rc<RefCell<State>>,
    /// Set when this instance's storage takes no more writes (see [`Storage::closed`]).
    closed: Rc<Broadcast>,
}

impl Storage {
    /// Empty storage of an object whose class keeps `history_retention_ms` of history (0:
    /// none); the host fills it with [`Storage::load`] during activation.
    pub(super) fn new(
        limits: Limits,
        sql_settings: SqlSettings,
        history_retention_ms: u64,
    ) -> Storage {
        let history = History::new(history_retention_ms);
        let state = State {
            entries: KeyMap::default(),
            alarm_ms: None,
            pending: Pending::new(history.enabled()),
            limits,
            unavailable: None,
            commit_failed: None,
            sql_file: PageFile::default(),
            sql_settings: Rc::new(sql_settings),
            sql_batch_passed: None,
            sql_batch_passed_flag: Arc::new(AtomicBool::new(false)),
            database: None,
            transactions: Vec::new(),
            name: None,
            name_stored: false,
            history,
            restart_requested: false,
            read_only: false,
            restore_target: None,
        };
        Storage {
            closed: Rc::new(Broadcast::new()),
            state: Rc::new(RefCell::new(state)),
        }
    }

    /// Fills the storage with an object's stored data (the values of history records may be
    /// left out); fails if its SQL pages are malformed.
    pub(super) fn load(&self, data: ObjectData) -> Result<(), String> {
        let mut state = self.state.borrow_mut();
        let mut pages = Vec::new();
        let mut entries = KeyMap::default();
        for (key, value) in data.entries {
            if key == NAME_KEY {
                state.name_stored = true;
            } else if state.history.load_key(&key, &value) {
                // The history's own key, kept in `history`.
            } else if is_page_key(&key) {
                pages.push((key, value));
            } else {
                entries.insert(&key, value);
            }
        }
        state.history.loaded();
        state.sql_file = PageFile::load(pages).map_err(|error| error.to_string())?;
        state.entries = entries;
        state.alarm_ms = data.alarm_ms;
        Ok(())
    }

    /// The writes since the last call, as one batch plus the alarm change it carries; `None`
    /// when there were none.
    pub(super) fn take_pending(&self) -> Option<(Batch, Option<Option<i64>>)> {
        let mut state = self.state.borrow_mut();
        // An instance that failed (`abandon`, a refused commit) commits nothing more, whatever
        // a `transaction_sync` unwinding afterwards put back into its pending batch.
        if state.commit_failed.is_some() {
            state.pending = Pending::default();
            return None;
        }
        if state.pending.is_empty() {
            return None;
        }
        let Taken {
            mut batch,
            alarm,
            before,
            alarm_before,
        } = state.pending.take();
        // After a delete-all of the whole object the store no longer holds the name either.
        if batch.ops().first() == Some(&stead_storage::Op::DeleteAll) {
            state.name_stored = false;
        }
        if !state.name_stored {
            if let Some(name) = &state.name {
                batch.put(NAME_KEY, name.as_bytes().to_vec());
                state.name_stored = true;
            }
        }
        let now_ms = history::now_ms();
        if state.history.enabled() {
            let befores = before
                .iter()
                .map(|(key, value)| Before::Key(key, value.as_deref()))
                .chain(alarm_before.map(Before::Alarm));
            state.history.record(&mut batch, befores, now_ms, false);
        }
        Some((batch, alarm))
    }

    /// Adds to `batch` (taken from `take_pending`) the deletes of history records past the
    /// window; `keys_of(prefix)` gives the object's stored keys under `prefix`, in order.
    pub(super) fn trim_history(&self, batch: &mut Batch, keys_of: impl Fn(&[u8]) -> Vec<Vec<u8>>) {
        let mut state = self.state.borrow_mut();
        if state.history.holds_anything() {
            let keep_after = state.restore_target;
            state
                .history
                .trim(batch, history::now_ms(), keep_after, keys_of);
        }
    }

    /// Whether the instance asked to be restarted after the current event (a restore), once:
    /// the request is cleared.
    pub(super) fn take_restart_request(&self) -> bool {
        std::mem::take(&mut self.state.borrow_mut().restart_requested)
    }

    /// A bookmark of the object's committed state now, for
    /// [`Storage::restore_on_next_activation`]: an opaque string of 48 hex digits; bookmarks
    /// of one object order by time as strings. The writes the current event made since it last
    /// awaited are not committed yet, so they are not in it. Fails when the class keeps no
    /// history (`history_retention_ms`).
    pub fn current_bookmark(&self) -> Result<String, HistoryError> {
        let state = self.state.borrow();
        let bookmark = state.history.current_bookmark(history::now_ms())?;
        Ok(bookmark.to_string())
    }

    /// A bookmark of the object's state at `time_ms` (milliseconds since the Unix epoch): the
    /// state after the last batch committed at or before it. Fails for a time before the
    /// retention window or before the object's history began, or after now.
    pub fn bookmark_for_time(&self, time_ms: i64) -> Result<String, HistoryError> {
        let state = self.state.borrow();
        let now_ms = history::now_ms();
        let time_ms = u64::try_from(time_ms).map_err(|_| HistoryError::TooOld {
            time_ms: 0,
            oldest_ms: now_ms.saturating_sub(state.history.retention_ms()),
            retention_ms: state.history.retention_ms(),
        })?;
        let bookmark = state.history.bookmark_for_time(time_ms, now_ms)?;
        Ok(bookmark.to_string())
    }

    /// Asks for the object to come back at `bookmark`: after the current event the instance
    /// leaves memory (its WebSockets are closed with 1012), and the next activation puts its
    /// key-value entries, SQL database and alarm back as they were at the bookmark before the
    /// class's constructor runs. The restore is a new point in the history, so restoring a
    /// later bookmark undoes it. The request is committed with the event's other writes.
    /// Asked for in `init`, it fails that activation (and its event) instead, and the next
    /// activation carries it out.
    pub fn restore_on_next_activation(&self, bookmark: &str) -> Result<(), HistoryError> {
        let bookmark: Bookmark = bookmark.parse()?;
        let mut state = self.state.borrow_mut();
        if let Some(reason) = &state.unavailable {
            return Err(HistoryError::Unavailable {
                reason: reason.clone(),
            });
        }
        if state.read_only {
            return Err(HistoryError::ReadOnly);
        }
        state.history.check_restore(bookmark, history::now_ms())?;
        state
            .pending
            .write_reserved(RESTORE_KEY, Some(bookmark.version.to_be_bytes().to_vec()));
        state.restart_requested = true;
        state.restore_target = Some(bookmark.version);
        Ok(())
    }

    /// An event reached the object by `name`: the store keeps it with the object's next batch,
    /// unless it already holds it.
    pub(super) fn note_name(&self, name: &str) {
        let mut state = self.state.borrow_mut();
        if !state.name_stored && state.name.is_none() {
            state.name = Some(name.to_string());
        }
    }

    /// Refuses every later write with [`StorageError::Unavailable`], and frees the SQL
    /// database's pages and connection.
    pub(super) fn make_unavailable(&self, reason: String) {
        let database = {
            let mut state = self.state.borrow_mut();
            state.unavailable.get_or_insert(reason);
            state.sql_file.clear();
            state.database.take()
        };
        // Closed outside the borrow: closing the connection closes its file, which may look
        // at this state.
        drop(database);
        self.closed.set();
    }

    /// Drops the writes of the current poll and fails the instance, as a failed commit does:
    /// for a SQL database that could not roll back a failed statement, or whose writes passed
    /// the batch's limits, whose pages in memory may then differ from every committed state.
    /// The object's next event reloads it.
    pub(crate) fn abandon(&self, reason: String) {
        let mut state = self.state.borrow_mut();
        if state.commit_failed.is_none() {
            tracing::error!(%reason, "an object's SQL database failed; its writes since the last commit are dropped");
        }
        state.pending = Pending::default();
        drop(state);
        self.fail_commits(reason.clone());
        self.make_unavailable(reason);
    }

    pub(crate) fn downgrade(&self) -> WeakStorage {
        WeakStorage {
            state: Rc::downgrade(&self.state),
        }
    }

    /// The object's SQL database, opened at the first use.
    pub fn sql(&self) -> Sql {
        Sql::new(self.clone())
    }

    /// The open connection, opening it if needed.
    pub(crate) fn database(&self) -> Result<Rc<Database>, SqlError> {
        let settings = {
            let state = self.state.borrow();
            refuse_if(&state.unavailable)?;
            if let Some(database) = &state.database {
                return Ok(database.clone());
            }
            state.sql_settings.clone()
        };
        let database = Rc::new(Database::open(self, settings)?);
        self.state.borrow_mut().database = Some(database.clone());
        Ok(database)
    }

    /// Runs `body` atomically: if it returns `Err`, every write it made, to SQL and to
    /// key-value storage, is undone, and the error is returned. Transactions nest. `body` is
    /// synchronous, so nothing else of the object runs meanwhile, and its writes join the
    /// event's batch like any other.
    pub fn transaction_sync<T, E: From<SqlError>>(
        &self,
        body: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let database = self.database()?;
        database.begin_savepoint()?;
        {
            let mut state = self.state.borrow_mut();
            let frame = UndoFrame {
                pending: state.pending.clone(),
                alarm_ms: state.alarm_ms,
                restore: (state.restart_requested, state.restore_target),
                undo: Vec::new(),
            };
            state.transactions.push(frame);
        }
        let outcome = match body() {
            Ok(value) => database
                .release_savepoint()
                .map(|()| value)
                .map_err(E::from),
            Err(error) => Err(error),
        };
        let frame = self.state.borrow_mut().transactions.pop();
        let Some(frame) = frame else {
            return Err(E::from(SqlError::Unavailable {
                reason: "the transaction's undo record is gone".to_string(),
            }));
        };
        match outcome {
            Ok(value) => {
                let mut state = self.state.borrow_mut();
                if let Some(parent) = state.transactions.last_mut() {
                    parent.undo.extend(frame.undo);
                }
                Ok(value)
            }
            Err(error) => {
                if let Err(rollback) = database.rollback_savepoint() {
                    self.abandon(format!("a transaction could not roll back: {rollback}"));
                    return Err(E::from(rollback));
                }
                let mut state = self.state.borrow_mut();
                for undo in frame.undo.into_iter().rev() {
                    match undo {
                        Undo::Key(key, Some(value)) => {
                            state.entries.insert(&key, value);
                        }
                        Undo::Key(key, None) => {
                            state.entries.remove_entry(&key);
                        }
                        Undo::All(entries) => state.entries = entries,
                    }
                }
                state.pending = frame.pending;
                state.alarm_ms = frame.alarm_ms;
                (state.restart_requested, state.restore_target) = frame.restore;
                Err(error)
            }
        }
    }

    /// The size of the SQL database file, in bytes.
    pub(crate) fn sql_file_size(&self) -> u64 {
        self.state.borrow().sql_file.size_bytes()
    }

    /// Reads the SQL database file; bytes past its end read as zero. Returns whether the whole
    /// range was inside the file.
    pub(crate) fn sql_file_read(&self, offset: u64, buffer: &mut [u8]) -> bool {
        self.state.borrow().sql_file.read(offset, buffer)
    }

    /// Writes the SQL database file, recording every changed page in the pending batch, even
    /// past the batch's limits (noted in `sql_batch_passed`).
    pub(crate) fn sql_file_write(&self, offset: u64, data: &[u8]) -> Result<(), SqlFileError> {
        let mut state = self.state.borrow_mut();
        refuse_if(&state.unavailable).map_err(SqlFileError::Storage)?;
        let end = offset + data.len() as u64;
        let size_max = state.sql_settings.database_bytes_max;
        if end > size_max.max(state.sql_file.size_bytes()) {
            return Err(SqlFileError::DatabaseFull {
                size_bytes: end,
                database_bytes_max: size_max,
            });
        }
        let state = &mut *state;
        let (pending, limits, passed) = (
            &mut state.pending,
            &state.limits,
            &mut state.sql_batch_passed,
        );
        let outcome = state.sql_file.write(offset, data, |page, old, bytes| {
            let value = Some(bytes.to_vec());
            note_passed(
                passed,
                pending.write_page_unrefused(&page_key(page), value, old, limits),
            );
            Ok(())
        });
        if passed.is_some() {
            state.sql_batch_passed_flag.store(true, Ordering::Relaxed);
        }
        outcome.map_err(SqlFileError::Storage)
    }

    /// Cuts the SQL database file to `size_bytes`, recording the dropped pages as deletes.
    pub(crate) fn sql_file_truncate(&self, size_bytes: u64) -> Result<(), SqlFileError> {
        let mut state = self.state.borrow_mut();
        refuse_if(&state.unavailable).map_err(SqlFileError::Storage)?;
        let state = &mut *state;
        let (pending, limits, passed) = (
            &mut state.pending,
            &state.limits,
            &mut state.sql_batch_passed,
        );
        let outcome = state.sql_file.truncate(size_bytes, |page, old| {
            note_passed(
                passed,
                pending.write_page_unrefused(&page_key(page), None, Some(old), limits),
            );
            Ok(())
        });
        if passed.is_some() {
            state.sql_batch_passed_flag.store(true, Ordering::Relaxed);
        }
        outcome.map_err(SqlFileError::Storage)
    }

    /// The batch limit the SQL writes of the current poll passed, if they did.
    pub(crate) fn sql_batch_passed(&self) -> Option<StorageError> {
        self.state.borrow().sql_batch_passed.clone()
    }

    /// Becomes true when the SQL writes of the current poll pass the batch's limits.
    pub(crate) fn sql_batch_passed_flag(&self) -> Arc<AtomicBool> {
        self.state.borrow().sql_batch_passed_flag.clone()
    }

    /// Resolves once this storage takes no more writes: the object left memory (evicted, a
    /// commit of it failed, the core's store became unwritable, shutdown). A handler that
    /// waits on other clients (a lock waiter) should stop then: the object's next event runs on
    /// a new instance, which knows nothing of this one's waiters.
    pub fn closed(&self) -> BroadcastWait<'_> {
        self.closed.wait()
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.state.borrow().entries.get(key).cloned()
    }

    /// The values of `keys`, in the same order.
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<Option<Vec<u8>>> {
        let state = self.state.borrow();
        keys.iter()
            .map(|key| state.entries.get(key.as_ref()).cloned())
            .collect()
    }

    /// Entries in key order (or reverse), filtered as `options` says.
    pub fn list(&self, options: &ListOptions) -> Vec<(Vec<u8>, Vec<u8>)> {
        let limit = options.limit.unwrap_or(usize::MAX);
        let Some((lower, upper)) = list_bounds(options) else {
            return Vec::new();
        };
        let state = self.state.borrow();
        let range = state.entries.range(as_ref(&lower), as_ref(&upper));
        let prefix = options.prefix.as_deref().unwrap_or(&[]);
        // The map's own item type, spelled out so both directions share the closures.
        #[allow(clippy::borrowed_box)]
        let matching = |(key, _): &(&Box<[u8]>, &Vec<u8>)| key.starts_with(prefix);
        #[allow(clippy::borrowed_box)]
        let copy = |(key, value): (&Box<[u8]>, &Vec<u8>)| (key.to_vec(), value.clone());
        if options.reverse {
            range.rev().filter(matching).take(limit).map(copy).collect()
        } else {
            range.filter(matching).take(limit).map(copy).collect()
        }
    }

    pub fn put(&self, key: &[u8], value: impl Into<Vec<u8>>) -> Result<(), StorageError> {
        let value = value.into();
        let mut state = self.state.borrow_mut();
        state.check_writable(key)?;
        if value.len() > state.limits.value_bytes_max {
            return Err(StorageError::ValueTooLarge {
                value_bytes: value.len(),
                value_bytes_max: state.limits.value_bytes_max,
            });
        }
        let state = &mut *state;
        let previous = state.entries.get(key).cloned();
        state
            .pending
            .write(key, Some(value.clone()), previous.as_deref(), &state.limits)?;
        state.record_undo(|| Undo::Key(key.into(), previous));
        state.entries.insert(key, value);
        Ok(())
    }

    /// Removes `key`; true if it was there.
    pub fn delete(&self, key: &[u8]) -> Result<bool, StorageError> {
        let mut state = self.state.borrow_mut();
        state.check_writable(key)?;
        if state.entries.get(key).is_none() {
            // The in-memory copy is the whole object: an absent key is absent on disk too.
            return Ok(false);
        }
        let state = &mut *state;
        let previous = state.entries.get(key).cloned();
        state
            .pending
            .write(key, None, previous.as_deref(), &state.limits)?;
        state.record_undo(|| Undo::Key(key.into(), previous));
        state.entries.remove_entry(key);
        Ok(true)
    }

    /// Removes every key-value entry; the alarm and the SQL database are kept (drop the SQL
    /// tables to empty it).
    pub fn delete_all(&self) -> Result<(), StorageError> {
        let mut state = self.state.borrow_mut();
        state.check_writable(&[])?;
        let state = &mut *state;
        if state.sql_file.size_bytes() == 0 && !state.history.enabled() {
            state.pending.delete_all();
            // The engine's delete-all takes any history an earlier setting kept with it.
            state.history = History::new(0);
        } else {
            // The engine's delete-all would remove the SQL pages and the history too: one
            // delete per key instead, under the batch limits like any deletes.
            let mut pending = state.pending.clone();
            for (key, value) in state.entries.iter() {
                pending.write(key, None, Some(value), &state.limits)?;
            }
            state.pending = pending;
        }
        let entries = std::mem::take(&mut state.entries);
        state.record_undo(|| Undo::All(entries));
        Ok(())
    }

    pub fn get_alarm(&self) -> Option<i64> {
        self.state.borrow().alarm_ms
    }

    /// Sets the object's one alarm (milliseconds since the Unix epoch), replacing any other.
    pub fn set_alarm(&self, time_ms: i64) -> Result<(), StorageError> {
        let mut state = self.state.borrow_mut();
        state.check_writable(&[])?;
        let prior = state.alarm_ms;
        state.pending.alarm(Some(time_ms), prior);
        state.alarm_ms = Some(time_ms);
        Ok(())
    }

    pub fn delete_alarm(&self) -> Result<(), StorageError> {
        let mut state = self.state.borrow_mut();
        state.check_writable(&[])?;
        if let Some(prior) = state.alarm_ms.take() {
            state.pending.alarm(None, Some(prior));
        }
        Ok(())
    }

    /// Refuses every write while `read_only` (a read-only event's handler is polled); returns
    /// what it was.
    pub(super) fn set_read_only(&self, read_only: bool) -> bool {
        std::mem::replace(&mut self.state.borrow_mut().read_only, read_only)
    }

    /// Whether writes are refused now (see `set_read_only`).
    pub(crate) fn is_read_only(&self) -> bool {
        self.state.borrow().read_only
    }

    /// Whether writes wait to be handed to the store.
    pub(super) fn has_pending(&self) -> bool {
        !self.state.borrow().pending.is_empty()
    }

    /// A commit of this object's writes failed: refuse later writes, and make `flush` fail.
    pub(super) fn fail_commits(&self, reason: String) {
        let mut state = self.state.borrow_mut();
        state.commit_failed.get_or_insert_with(|| reason.clone());
        state.unavailable.get_or_insert(reason);
        drop(state);
        self.closed.set();
    }

    /// An error once a commit of the object's writes failed (an evicted object's writes were
    /// committed as it left, so eviction alone is no error here).
    pub(super) fn check_committed(&self) -> Result<(), StorageError> {
        refuse_if(&self.state.borrow().commit_failed)
    }

    /// Keys of the object (for tests and metrics).
    pub fn len(&self) -> usize {
        self.state.borrow().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a write to the SQL database file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SqlFileError {
    /// The file would pass `sql.database_bytes_max`.
    DatabaseFull {
        size_bytes: u64,
        database_bytes_max: u64,
    },
    /// The pending batch is full, or the storage takes no more writes.
    Storage(StorageError),
}

impl fmt::Display for SqlFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlFileError::DatabaseFull {
                size_bytes,
                database_bytes_max,
            } => write!(
                f,
                "the database would grow to {size_bytes} bytes, past sql.database_bytes_max {database_bytes_max}"
            ),
            SqlFileError::Storage(error) => error.fmt(f),
        }
    }
}

/// Keeps the first limit a SQL page write passed.
fn note_passed(passed: &mut Option<StorageError>, outcome: Result<(), StorageError>) {
    if let Err(error) = outcome {
        passed.get_or_insert(error);
    }
}

impl State {
    /// Records what a write replaced, if a transaction is in progress.
    fn record_undo(&mut self, undo: impl FnOnce() -> Undo) {
        if let Some(frame) = self.transactions.last_mut() {
            frame.undo.push(undo());
        }
    }

    fn check_writable(&self, key: &[u8]) -> Result<(), StorageError> {
        refuse_if(&self.unavailable)?;
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        if is_reserved_key(key) {
            return Err(StorageError::ReservedKey {
                key_bytes: key.len(),
            });
        }
        if key.len() > self.limits.key_bytes_max {
            return Err(StorageError::KeyTooLarge {
                key_bytes: key.len(),
                key_bytes_max: self.limits.key_bytes_max,
            });
        }
        Ok(())
    }
}

fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_slice()),
        Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The smallest key greater than every key starting with `prefix`; `None` when there is none
/// (the prefix is empty or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The key range `options` selects, or `None` when it is empty (`BTreeMap::range` panics on
/// an inverted range, and these bounds come from clients).
/// A lower and an upper bound on keys.
type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// `Unavailable` with `reason`, if there is one.
fn refuse_if(reason: &Option<String>) -> Result<(), StorageError> {
    match reason {
        Some(reason) => Err(StorageError::Unavailable {
            reason: reason.clone(),
        }),
        None => Ok(()),
    }
}

fn list_bounds(options: &ListOptions) -> Option<KeyRange> {
    if options.limit == Some(0) {
        return None;
    }
    let mut lower = Bound::Unbounded;
    let mut candidates = Vec::new();
    if let Some(start) = &options.start {
        candidates.push(Bound::Included(start.clone()));
    }
    if let Some(prefix) = &options.prefix {
        candidates.push(Bound::Included(prefix.clone()));
    }
    if let Some(after) = &options.start_after {
        candidates.push(Bound::Excluded(after.clone()));
    }
    for candidate in candidates {
        lower = tighter_lower(lower, candidate);
    }
    let mut upper = options
        .end
        .clone()
        .map_or(Bound::Unbounded, Bound::Excluded);
    if let Some(end) = options.prefix.as_deref().and_then(prefix_end) {
        upper = match upper {
            Bound::Excluded(current) if current <= end => Bound::Excluded(current),
            _ => Bound::Excluded(end),
        };
    }
    let empty = match (&lower, &upper) {
        (Bound::Included(low), Bound::Excluded(high)) => low >= high,
        (Bound::Excluded(low), Bound::Excluded(high)) => low >= high,
        _ => false,
    };
    (!empty).then_some((lower, upper))
}

/// The larger of two lower bounds; at an equal key, excluding wins.
fn tighter_lower(current: Bound<Vec<u8>>, candidate: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    let key_of = |bound: &Bound<Vec<u8>>| match bound {
        Bound::Included(key) | Bound::Excluded(key) => Some(key.clone()),
        Bound::Unbounded => None,
    };
    match (key_of(&current), key_of(&candidate)) {
        (None, _) => candidate,
        (_, None) => current,
        (Some(a), Some(b)) if b > a => candidate,
        (Some(a), Some(b)) if b == a && matches!(candidate, Bound::Excluded(_)) => candidate,
        _ => current,
    }
}
