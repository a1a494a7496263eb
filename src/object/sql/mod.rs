//! Each object's SQL database: SQLite over the object's own storage.
//!
//! [`Sql`] (from `ObjectContext::storage().sql()`) runs statements synchronously, like the
//! hosted `ctx.storage.sql`. The database file is the object's pages (`pages.rs`), which the
//! `stead` VFS (`vfs.rs`) serves from memory and writes into the event's pending batch, so an
//! event's SQL and key-value writes are one atomic batch under the output gate, and a crash
//! leaves the database at the last committed batch. SQLite writes no file: the rollback journal
//! and temporary files are in memory, and SQLite never syncs (the batch is the sync).
//!
//! Limits (`[sql]` in `stead.toml`, see `SqlSettings`): the database size
//! (`database_bytes_max`, SQLite's `max_page_count`), the statement text
//! (`statement_bytes_max`), the work of one statement (`statement_steps_max`, enforced by a
//! progress handler), the rows and bytes one call returns, and SQLite's memory for the whole
//! process (`heap_bytes_max`, `set_heap_limit`). One event's SQL writes may change at most
//! `SQL_PAGES_PER_BATCH_MAX` pages (16 MiB); past that the statement is stopped and the
//! instance fails (`Database::check_batch`), since SQLite must never be refused a write.
//!
//! Refused, with an error that says why: `BEGIN`/`COMMIT`/`ROLLBACK`/`SAVEPOINT`/`RELEASE`
//! (use `Storage::transaction_sync`), `ATTACH`/`DETACH`, and the pragmas that would change how
//! the database is stored (`journal_mode`, `locking_mode`, `synchronous`, `page_size`, …).

mod cursor;
pub(crate) mod pages;
mod vfs;

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{ffi, Connection, OpenFlags, StatementStatus};

pub use cursor::{Cursor, Row, Rows, SqlValue};
pub use pages::{PAGE_BYTES, SQL_PAGE_KEY_PREFIX};

use super::storage::{Storage, WeakStorage};
use crate::config::SqlSettings;

/// SQLite virtual-machine steps between two calls of the progress handler.
pub const STEPS_PER_PROGRESS_CALL: u64 = 1_000;
/// SQLite's page cache of one connection, in KiB (negative `cache_size`). The pages are in
/// memory anyway (`pages.rs`), so the cache only saves the copy of a page per read.
const PAGE_CACHE_KIB: i64 = 512;
/// The name of the savepoint `transaction_sync` runs in.
const SAVEPOINT: &str = "stead_transaction_sync";
/// The name of the savepoint a write that returns rows runs in, so that a result past the
/// limits undoes the write it reports failed.
const STATEMENT_SAVEPOINT: &str = "stead_statement";

/// Why a statement failed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SqlError {
    /// SQLite's own error: a syntax error, a constraint, "database or disk is full", …
    Sqlite { code: i32, message: String },
    /// The statement is longer than `sql.statement_bytes_max`.
    StatementTooLarge {
        statement_bytes: usize,
        statement_bytes_max: usize,
    },
    /// The statement has `expected` parameters and was given `given`.
    ParameterCount { expected: usize, given: usize },
    /// A script of several statements was given parameters.
    ScriptWithParameters,
    /// The statement ran past `sql.statement_steps_max` and was interrupted.
    StepsExceeded { statement_steps_max: u64 },
    /// The result has more rows than `sql.result_rows_max`.
    TooManyRows { result_rows_max: usize },
    /// The result holds more bytes than `sql.result_bytes_max`.
    ResultTooLarge { result_bytes_max: usize },
    /// The statement is not allowed here (a transaction statement, ATTACH, a storage pragma).
    Refused { reason: &'static str },
    /// The statement would write, and the event may not (its token has no write permission).
    ReadOnly,
    /// `one()` found no row or several.
    NotOneRow { rows: usize },
    /// A column is absent or holds another type than asked for.
    WrongType {
        column: String,
        expected: &'static str,
    },
    /// A row did not fit the type asked for in `query_as`.
    Deserialize { message: String },
    /// The object's storage takes no more writes (it left memory, or a commit failed).
    Unavailable { reason: String },
    /// The SQL writes since the handler last suspended passed one batch's limit
    /// (`SQL_PAGES_PER_BATCH_MAX` pages). The writes since the last suspension are dropped
    /// and the instance fails (its next event reloads the object).
    BatchFull { reason: String },
    /// SQLite rolled back the whole `transaction_sync` transaction after an error (a conflict
    /// clause `ROLLBACK`, `RAISE(ROLLBACK)`, a statement stopped by a limit): every statement
    /// until the outermost `transaction_sync` returns fails with this, and it is undone.
    TransactionRolledBack,
    /// SQLite's memory (`sql.heap_bytes_max`, for every database of the process) ran out and
    /// the statement was stopped.
    OutOfMemory { heap_bytes_max: u64 },
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlError::Sqlite { message, .. } => f.write_str(message),
            SqlError::StatementTooLarge {
                statement_bytes,
                statement_bytes_max,
            } => write!(
                f,
                "statement of {statement_bytes} bytes exceeds sql.statement_bytes_max {statement_bytes_max}"
            ),
            SqlError::ParameterCount { expected, given } => write!(
                f,
                "the statement takes {expected} parameters, {given} were given"
            ),
            SqlError::ScriptWithParameters => {
                f.write_str("a script of several statements takes no parameters")
            }
            SqlError::StepsExceeded {
                statement_steps_max,
            } => write!(
                f,
                "the statement ran past sql.statement_steps_max ({statement_steps_max} steps) and was stopped"
            ),
            SqlError::TooManyRows { result_rows_max } => write!(
                f,
                "the result has more than sql.result_rows_max ({result_rows_max}) rows"
            ),
            SqlError::ResultTooLarge { result_bytes_max } => write!(
                f,
                "the result is larger than sql.result_bytes_max ({result_bytes_max} bytes)"
            ),
            SqlError::Refused { reason } => f.write_str(reason),
            SqlError::ReadOnly => f.write_str(crate::object::storage::READ_ONLY_REFUSAL),
            SqlError::NotOneRow { rows } => {
                write!(f, "expected exactly one row, the statement returned {rows}")
            }
            SqlError::WrongType { column, expected } => {
                write!(f, "column {column} is absent or not {expected}")
            }
            SqlError::Deserialize { message } => {
                write!(f, "a row does not fit the type asked for: {message}")
            }
            SqlError::Unavailable { reason } => write!(f, "storage unavailable: {reason}"),
            SqlError::BatchFull { reason } => write!(
                f,
                "the SQL writes since the handler last awaited passed one batch's limit ({reason}); they are dropped and the object is reloaded"
            ),
            SqlError::TransactionRolledBack => f.write_str(
                "SQLite rolled back the whole transaction after an earlier error; \
                 the transaction_sync closure must return an error",
            ),
            SqlError::OutOfMemory { heap_bytes_max } => write!(
                f,
                "SQLite's memory limit sql.heap_bytes_max ({heap_bytes_max} bytes) was reached and the statement was stopped"
            ),
        }
    }
}

impl std::error::Error for SqlError {}

impl From<super::StorageError> for SqlError {
    fn from(error: super::StorageError) -> SqlError {
        match error {
            super::StorageError::Unavailable { reason } => SqlError::Unavailable { reason },
            super::StorageError::ReadOnly => SqlError::ReadOnly,
            other => SqlError::Unavailable {
                reason: other.to_string(),
            },
        }
    }
}

impl SqlError {
    /// Whether the error is the caller's (a bad statement, a limit its statement hit) rather
    /// than the server's.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, SqlError::Unavailable { .. } | SqlError::ReadOnly)
            && !matches!(self, SqlError::Sqlite { code, .. } if is_failure_code(*code))
    }
}

/// Whether a SQLite result code means the database itself failed (I/O, corruption, memory),
/// rather than the statement.
fn is_failure_code(code: i32) -> bool {
    matches!(
        code & 0xff,
        ffi::SQLITE_IOERR | ffi::SQLITE_CORRUPT | ffi::SQLITE_NOMEM | ffi::SQLITE_CANTOPEN
    )
}

/// The refusal of a transaction statement.
const TRANSACTION_REFUSAL: &str = "BEGIN, COMMIT, ROLLBACK, SAVEPOINT and RELEASE are not \
     allowed in exec: use storage().transaction_sync(|| ...) to run statements atomically";
const ATTACH_REFUSAL: &str =
    "ATTACH, DETACH and VACUUM (which attaches a database) are not allowed: an object has one database";
const PRAGMA_REFUSAL: &str = "this pragma would change how the object's database is stored \
     and is not allowed";

/// Pragmas refused when they set a value: they would change how the database is stored.
const PRAGMAS_REFUSED_WITH_VALUE: &[&str] = &[
    "journal_mode",
    "locking_mode",
    "synchronous",
    "temp_store",
    "page_size",
    "max_page_count",
    "mmap_size",
    "writable_schema",
    "cache_spill",
    "journal_size_limit",
    "cache_size",
    // Process-wide settings, shared by every object of every core.
    "soft_heap_limit",
    "hard_heap_limit",
    "threads",
];
/// Pragmas refused outright.
const PRAGMAS_REFUSED: &[&str] = &["temp_store_directory", "data_store_directory"];

/// An object's SQL database. Cheap to make: `storage().sql()` per use is fine.
#[derive(Clone, Debug)]
pub struct Sql {
    /// The object's storage, which holds the connection.
    storage: Storage,
}

impl Sql {
    pub(super) fn new(storage: Storage) -> Sql {
        Sql { storage }
    }

    /// Runs `query` with `params` bound to its `?` placeholders in order, or a script of
    /// several statements (no parameters), and returns the rows of its (last) statement.
    pub fn exec(&self, query: &str, params: &[SqlValue]) -> Result<Cursor, SqlError> {
        self.storage.database()?.exec(query, params)
    }

    /// The size of the database, in bytes.
    pub fn database_size(&self) -> u64 {
        self.storage.sql_file_size()
    }
}

/// The open connection of one object.
pub(crate) struct Database {
    /// The SQLite connection over the `stead` VFS.
    connection: Connection,
    /// The storage, to fail the instance when SQLite cannot roll back.
    storage: WeakStorage,
    /// The limits.
    settings: Rc<SqlSettings>,
    /// Progress-handler calls in the current statement.
    progress_calls: Arc<AtomicU64>,
    /// Set by the progress handler when it stops a statement.
    interrupted: Arc<AtomicBool>,
    /// Set while `transaction_sync` runs its own savepoint statements.
    own_transaction_statement: Arc<AtomicBool>,
    /// Why the authorizer refused the last refused statement.
    refusal: Arc<Mutex<Option<&'static str>>>,
    /// `transaction_sync` calls in progress.
    transactions: Cell<u32>,
    /// Set when SQLite ended the transaction of the `transaction_sync` calls in progress;
    /// cleared when the outermost one returns.
    transaction_lost: Cell<bool>,
    /// Set by the storage when this poll's SQL writes pass the batch's limits.
    batch_passed: Arc<AtomicBool>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("transactions", &self.transactions.get())
            .finish_non_exhaustive()
    }
}

/// A SQLite error as an [`SqlError`], without the context only a [`Database`] has.
fn sqlite_error(error: rusqlite::Error) -> SqlError {
    match error {
        rusqlite::Error::SqliteFailure(failure, message) => SqlError::Sqlite {
            code: failure.extended_code,
            message: message.unwrap_or_else(|| failure.to_string()),
        },
        rusqlite::Error::InvalidParameterCount(given, expected) => {
            SqlError::ParameterCount { expected, given }
        }
        rusqlite::Error::MultipleStatement => SqlError::ScriptWithParameters,
        other => SqlError::Sqlite {
            code: ffi::SQLITE_ERROR,
            message: other.to_string(),
        },
    }
}

impl Database {
    /// Opens the database of `storage` (creating it if it has no pages).
    pub(crate) fn open(storage: &Storage, settings: Rc<SqlSettings>) -> Result<Database, SqlError> {
        vfs::register().map_err(|code| SqlError::Sqlite {
            code,
            message: "cannot register the stead SQLite VFS".to_string(),
        })?;
        let name = vfs::open_name(storage.downgrade());
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_EXRESCODE;
        let connection = Connection::open_with_flags_and_vfs(&name, flags, vfs::VFS_NAME);
        vfs::forget_name(&name);
        let connection = connection.map_err(sqlite_error)?;
        let page_count_max = (settings.database_bytes_max / PAGE_BYTES as u64).max(1);
        connection
            .execute_batch(&format!(
                "PRAGMA page_size = {PAGE_BYTES};
                 PRAGMA locking_mode = EXCLUSIVE;
                 PRAGMA journal_mode = MEMORY;
                 PRAGMA synchronous = OFF;
                 PRAGMA temp_store = MEMORY;
                 PRAGMA cache_size = -{PAGE_CACHE_KIB};
                 PRAGMA max_page_count = {page_count_max};"
            ))
            .map_err(sqlite_error)?;
        // No string or blob (a `randomblob(n)`, a concatenation) may be larger than a result
        // may be, so one statement cannot allocate far past the limits; and the statement
        // text is bounded by SQLite too, for statements that triggers and views build.
        let value_bytes_max = i32::try_from(settings.result_bytes_max).unwrap_or(i32::MAX);
        let statement_bytes_max = i32::try_from(settings.statement_bytes_max).unwrap_or(i32::MAX);
        for (limit, value) in [
            (Limit::SQLITE_LIMIT_LENGTH, value_bytes_max),
            (Limit::SQLITE_LIMIT_SQL_LENGTH, statement_bytes_max),
        ] {
            connection.set_limit(limit, value).map_err(sqlite_error)?;
        }
        let database = Database {
            connection,
            storage: storage.downgrade(),
            settings,
            progress_calls: Arc::new(AtomicU64::new(0)),
            interrupted: Arc::new(AtomicBool::new(false)),
            own_transaction_statement: Arc::new(AtomicBool::new(false)),
            refusal: Arc::new(Mutex::new(None)),
            transactions: Cell::new(0),
            transaction_lost: Cell::new(false),
            batch_passed: storage.sql_batch_passed_flag(),
        };
        database.install_hooks();
        Ok(database)
    }

    /// The progress handler (the step budget) and the authorizer (the refused statements).
    fn install_hooks(&self) {
        let (calls, interrupted) = (self.progress_calls.clone(), self.interrupted.clone());
        let batch_passed = self.batch_passed.clone();
        let own_statement = self.own_transaction_statement.clone();
        let calls_max = self.settings.statement_steps_max / STEPS_PER_PROGRESS_CALL;
        self.connection.progress_handler(
            STEPS_PER_PROGRESS_CALL as i32,
            Some(move || {
                // Past the batch's limits the statement is lost anyway (`check_batch`): stop
                // it before it writes more. (Never our own rollback.)
                if batch_passed.load(Ordering::Relaxed) && !own_statement.load(Ordering::Relaxed) {
                    return true;
                }
                if calls.fetch_add(1, Ordering::Relaxed) + 1 > calls_max {
                    interrupted.store(true, Ordering::Relaxed);
                    return true;
                }
                false
            }),
        );
        let own = self.own_transaction_statement.clone();
        let refusal_slot = self.refusal.clone();
        self.connection
            .authorizer(Some(move |context: AuthContext<'_>| {
                let refusal = match context.action {
                    AuthAction::Transaction { .. } | AuthAction::Savepoint { .. }
                        if !own.load(Ordering::Relaxed) =>
                    {
                        Some(TRANSACTION_REFUSAL)
                    }
                    AuthAction::Attach { .. } | AuthAction::Detach { .. } => Some(ATTACH_REFUSAL),
                    AuthAction::Pragma {
                        pragma_name,
                        pragma_value,
                    } => pragma_refused(pragma_name, pragma_value.is_some())
                        .then_some(PRAGMA_REFUSAL),
                    _ => None,
                };
                match refusal {
                    Some(reason) => {
                        if let Ok(mut slot) = refusal_slot.lock() {
                            *slot = Some(reason);
                        }
                        Authorization::Deny
                    }
                    None => Authorization::Allow,
                }
            }));
    }

    /// Runs one call of `Sql::exec`.
    pub(crate) fn exec(&self, query: &str, params: &[SqlValue]) -> Result<Cursor, SqlError> {
        if query.len() > self.settings.statement_bytes_max {
            return Err(SqlError::StatementTooLarge {
                statement_bytes: query.len(),
                statement_bytes_max: self.settings.statement_bytes_max,
            });
        }
        if self.transaction_lost.get() {
            return Err(SqlError::TransactionRolledBack);
        }
        let outcome = self.run(query, params);
        self.check_batch()?;
        if outcome.is_err() {
            if self.transactions.get() > 0 && self.connection.is_autocommit() {
                self.transaction_lost.set(true);
            }
            self.recover()?;
        }
        outcome
    }

    /// Fails the instance if this poll's SQL writes passed the batch's limits: they cannot be
    /// committed, and SQLite's memory holds them, so only a reload from the store is right.
    fn check_batch(&self) -> Result<(), SqlError> {
        let Some(storage) = self.storage.upgrade() else {
            return Ok(());
        };
        let Some(passed) = storage.sql_batch_passed() else {
            return Ok(());
        };
        storage.abandon(format!(
            "the SQL writes of one event passed the batch's limits: {passed}"
        ));
        Err(SqlError::BatchFull {
            reason: passed.to_string(),
        })
    }

    fn run(&self, query: &str, params: &[SqlValue]) -> Result<Cursor, SqlError> {
        let mut totals = (0, 0);
        if is_blank(query) {
            // SQLite prepares no statement from it, and rusqlite must not be handed none.
            return Ok(Cursor::default());
        }
        let (columns, rows) = match self.connection.prepare_cached(query) {
            Ok(mut statement) => self.run_statement(&mut statement, params, &mut totals)?,
            // A script: rusqlite refuses it, or fails preparing a later statement that needs
            // an earlier one to have run. Its statements are prepared and run one at a time.
            Err(error) if params.is_empty() => {
                drop(error);
                let mut script = rusqlite::Batch::new(&self.connection, query);
                let mut last = (Vec::new(), Vec::new());
                while let Some(mut statement) = script.next().map_err(|error| self.error(error))? {
                    last = self.run_statement(&mut statement, &[], &mut totals)?;
                }
                last
            }
            Err(error) => return Err(self.error(error)),
        };
        Ok(Cursor::new(columns, rows, totals))
    }

    /// Runs one prepared statement to the end; adds its rows read and written to `totals`.
    fn run_statement(
        &self,
        statement: &mut rusqlite::Statement<'_>,
        params: &[SqlValue],
        totals: &mut (u64, u64),
    ) -> Result<(Vec<String>, Vec<Vec<SqlValue>>), SqlError> {
        // Checked on every run, not by the authorizer: a cached statement is not prepared
        // (authorized) again.
        let read_only = self
            .storage
            .upgrade()
            .is_some_and(|storage| storage.is_read_only());
        if read_only && !statement.readonly() {
            return Err(SqlError::ReadOnly);
        }
        let expected = statement.parameter_count();
        if expected != params.len() {
            return Err(SqlError::ParameterCount {
                expected,
                given: params.len(),
            });
        }
        for (index, value) in params.iter().enumerate() {
            statement
                .raw_bind_parameter(index + 1, value)
                .map_err(|error| self.error(error))?;
        }
        let columns: Vec<String> = statement
            .column_names()
            .into_iter()
            .map(str::to_string)
            .collect();
        let changes_before = self.connection.total_changes();
        // A write that returns rows runs in a savepoint of its own: SQLite makes its changes at
        // the first step, and a result past the limits must not leave them in place.
        let guarded = !columns.is_empty() && !statement.readonly();
        if guarded {
            self.own_statement(&format!("SAVEPOINT {STATEMENT_SAVEPOINT}"))?;
        }
        let outcome = self.step_rows(statement, columns.len());
        if guarded {
            match &outcome {
                Ok(_) => self.own_statement(&format!("RELEASE {STATEMENT_SAVEPOINT}"))?,
                // Unless SQLite already ended the transaction the savepoint is in.
                Err(_) if !self.connection.is_autocommit() => self.own_statement(&format!(
                    "ROLLBACK TO {STATEMENT_SAVEPOINT}; RELEASE {STATEMENT_SAVEPOINT}"
                ))?,
                Err(_) => {}
            }
        }
        let rows = outcome?;
        let full_scan_steps = statement.get_status(StatementStatus::FullscanStep);
        totals.0 += (rows.len() as u64).max(u64::try_from(full_scan_steps).unwrap_or(0));
        totals.1 += self
            .connection
            .total_changes()
            .saturating_sub(changes_before);
        Ok((columns, rows))
    }

    /// Steps `statement` (bound) to its end and returns its rows, within the result limits.
    fn step_rows(
        &self,
        statement: &mut rusqlite::Statement<'_>,
        column_count: usize,
    ) -> Result<Vec<Vec<SqlValue>>, SqlError> {
        self.progress_calls.store(0, Ordering::Relaxed);
        self.interrupted.store(false, Ordering::Relaxed);
        let (rows_max, bytes_max) = (
            self.settings.result_rows_max,
            self.settings.result_bytes_max,
        );
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        // Dropping the cursor resets the statement, so it ends before this returns.
        let mut cursor = statement.raw_query();
        loop {
            let row = match cursor.next() {
                Ok(Some(row)) => row,
                Ok(None) => return Ok(rows),
                Err(error) => return Err(self.error(error)),
            };
            if rows.len() == rows_max {
                return Err(SqlError::TooManyRows {
                    result_rows_max: rows_max,
                });
            }
            let mut values = Vec::with_capacity(column_count);
            for index in 0..column_count {
                let value = row.get_ref(index).map_err(|error| self.error(error))?;
                let value = SqlValue::from_ref(value);
                bytes += value.result_bytes();
                values.push(value);
            }
            if bytes > bytes_max {
                return Err(SqlError::ResultTooLarge {
                    result_bytes_max: bytes_max,
                });
            }
            rows.push(values);
        }
    }

    /// An error of this connection, with what the hooks and the VFS know of its cause.
    fn error(&self, error: rusqlite::Error) -> SqlError {
        let refusal = self.refusal.lock().ok().and_then(|mut slot| slot.take());
        let file_refusal = vfs::take_last_refusal();
        let error = sqlite_error(error);
        let SqlError::Sqlite { code, message } = error else {
            return error;
        };
        match code & 0xff {
            ffi::SQLITE_INTERRUPT if self.interrupted.load(Ordering::Relaxed) => {
                SqlError::StepsExceeded {
                    statement_steps_max: self.settings.statement_steps_max,
                }
            }
            ffi::SQLITE_NOMEM => SqlError::OutOfMemory {
                heap_bytes_max: heap_limit(),
            },
            ffi::SQLITE_AUTH => match refusal {
                Some(reason) => SqlError::Refused { reason },
                None => SqlError::Sqlite { code, message },
            },
            _ => match file_refusal {
                Some(cause) => SqlError::Sqlite {
                    code,
                    message: format!("{message} ({cause})"),
                },
                None => SqlError::Sqlite { code, message },
            },
        }
    }

    /// After a failed call: outside `transaction_sync` no transaction may stay open (SQLite
    /// rolls a failed statement back itself; this makes sure). A database that cannot roll
    /// back fails the instance, dropping the writes of the current poll.
    fn recover(&self) -> Result<(), SqlError> {
        if self.transactions.get() > 0 || self.connection.is_autocommit() {
            return Ok(());
        }
        let rollback = self.own_statement("ROLLBACK");
        if let Err(error) = &rollback {
            if let Some(storage) = self.storage.upgrade() {
                storage.abandon(format!("the SQL database could not roll back: {error}"));
            }
        }
        rollback
    }

    /// Runs one of our own transaction statements, which the authorizer lets through.
    fn own_statement(&self, statement: &str) -> Result<(), SqlError> {
        // A commit or rollback gets a step budget of its own, whatever the statements before
        // it used.
        self.progress_calls.store(0, Ordering::Relaxed);
        self.interrupted.store(false, Ordering::Relaxed);
        self.own_transaction_statement
            .store(true, Ordering::Relaxed);
        let outcome = self.connection.execute_batch(statement);
        self.own_transaction_statement
            .store(false, Ordering::Relaxed);
        self.check_batch()?;
        outcome.map_err(|error| self.error(error))
    }

    pub(crate) fn begin_savepoint(&self) -> Result<(), SqlError> {
        if self.transaction_lost.get() {
            return Err(SqlError::TransactionRolledBack);
        }
        self.own_statement(&format!("SAVEPOINT {SAVEPOINT}"))?;
        self.transactions.set(self.transactions.get() + 1);
        Ok(())
    }

    /// Commits the innermost savepoint (the transaction, if it is the outermost). On failure
    /// the savepoint is still open, for `rollback_savepoint`.
    pub(crate) fn release_savepoint(&self) -> Result<(), SqlError> {
        if self.transaction_lost.get() {
            return Err(SqlError::TransactionRolledBack);
        }
        self.own_statement(&format!("RELEASE {SAVEPOINT}"))?;
        self.transactions
            .set(self.transactions.get().saturating_sub(1));
        Ok(())
    }

    /// Undoes and closes the innermost savepoint.
    pub(crate) fn rollback_savepoint(&self) -> Result<(), SqlError> {
        self.transactions
            .set(self.transactions.get().saturating_sub(1));
        if self.transactions.get() == 0 {
            self.transaction_lost.set(false);
        }
        if self.connection.is_autocommit() {
            // SQLite already rolled the whole transaction back (after "disk is full" in a
            // commit, say): there is nothing left to undo.
            return Ok(());
        }
        self.own_statement(&format!("ROLLBACK TO {SAVEPOINT}; RELEASE {SAVEPOINT}"))
    }
}

/// Limits the memory SQLite allocates, for every database of the process together
/// (`sql.heap_bytes_max`): past it a statement fails with [`SqlError::OutOfMemory`] and SQLite
/// rolls it back. The object's pages are not SQLite's memory (`pages.rs`); its page cache,
/// sorts, temporary tables and values are.
pub(crate) fn set_heap_limit(heap_bytes_max: u64) {
    // SAFETY: a plain call; SQLite takes any value (0 means none).
    unsafe {
        ffi::sqlite3_hard_heap_limit64(i64::try_from(heap_bytes_max).unwrap_or(i64::MAX));
    }
}

/// The limit `set_heap_limit` set (0: none).
fn heap_limit() -> u64 {
    // SAFETY: a negative argument only reads the limit.
    let limit = unsafe { ffi::sqlite3_hard_heap_limit64(-1) };
    u64::try_from(limit).unwrap_or(0)
}

/// Whether `query` holds no statement: only whitespace, comments and semicolons.
fn is_blank(query: &str) -> bool {
    let mut rest = query;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return rest.is_empty();
        }
    }
}

/// Whether the authorizer refuses `PRAGMA name` (`with_value`: `PRAGMA name = value`).
fn pragma_refused(name: &str, with_value: bool) -> bool {
    let refused = |list: &[&str]| list.iter().any(|item| item.eq_ignore_ascii_case(name));
    refused(PRAGMAS_REFUSED) || (with_value && refused(PRAGMAS_REFUSED_WITH_VALUE))
}

#[cfg(test)]
mod tests;
