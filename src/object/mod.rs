//! The object model: what a Durable Object class implements and what it is given.
//!
//! A class implements [`DurableObject`]. The host constructs one instance per active object id,
//! after loading all of the object's storage into memory, so reads through [`Storage`] never
//! suspend. Events of one object (requests, alarms, socket messages) are delivered one at a
//! time and start in the order they were admitted; a handler that
//! awaits something other than its own storage (a timer, another event's signal) lets the next
//! event in, as in the hosted JavaScript runtime.
//!
//! Writes made through [`Storage`] are visible at once to the object's later reads and events.
//! The writes an event makes between two of its suspension points form one atomic batch (an
//! event that never awaits anything commits exactly one batch), and no response leaves the
//! server before every write it could have observed is durable (the output gate).

use std::fmt;
use std::future::Future;

use crate::http::{Request, Response};

mod call;
mod context;
mod error;
mod fetch;
mod gate;
mod history;
mod host;
mod migration;
mod pending;
mod registry;
mod slot;
mod sockets;
mod sql;
mod storage;
#[cfg(test)]
mod tests;

pub use crate::websocket::{Message as WebSocketMessage, SocketHandle};
pub use call::{CallError, ObjectStub, Router, CALL_DEPTH_HEADER, READ_ONLY_HEADER};
pub use context::{AcceptedSocket, ObjectContext, Parked};
pub(crate) use error::error_answer;
pub use error::EventError;
pub use fetch::{FetchClient, FetchError, FetchRequest};
pub(crate) use history::HISTORY_PREFIX;
pub use history::{Bookmark, HistoryError};
pub(crate) use host::overloaded;
pub use host::shutting_down;
pub use host::{
    store_limits, AdminHistoryError, AlarmListener, HostStats, ObjectHost, ObjectInfo, Restored,
    StoragePage, TableInfo,
};
pub use migration::{DeletedClass, MigrationError, Retirement, UnknownClass};
pub use registry::{
    ClassRegistry, Constructor, DynObject, RegistryError, TagFate, CLASS_NAME_BYTES_MAX,
};
pub use sockets::CoreSockets;
pub(crate) use sql::set_heap_limit;
pub use sql::{Cursor, Row, Rows, Sql, SqlError, SqlValue, SQL_PAGE_KEY_PREFIX};
pub use stead_storage::ListOptions;
pub use storage::{Storage, StorageError};

/// What the alarm handler is told about the firing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlarmInfo {
    /// When the alarm was set to fire, in milliseconds since the Unix epoch.
    pub scheduled_ms: i64,
    /// 0 on the first delivery, then 1, 2, … for retries after the handler failed.
    pub retry_count: u32,
}

impl AlarmInfo {
    pub fn is_retry(&self) -> bool {
        self.retry_count > 0
    }
}

/// How a WebSocket ended, for [`DurableObject::websocket_close`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketClose {
    /// The close code (1006 when the connection dropped without a close frame).
    pub code: u16,
    pub reason: String,
    /// Whether both sides exchanged close frames.
    pub clean: bool,
}

/// A failed handler. The client gets `status` with `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    pub message: String,
    /// The HTTP status of the answer: 500 (the server failed), unless the error is the
    /// client's, such as 413 for a write its request made too large.
    pub status: u16,
}

/// The status of a handler error that is the server's fault.
const SERVER_ERROR_STATUS: u16 = 500;
/// The status of a request the client got wrong (a key in the reserved SQL namespace).
const CLIENT_ERROR_STATUS: u16 = 400;
/// The status of a write the client made too large (a key, a value, an event's batch).
const TOO_LARGE_STATUS: u16 = 413;

/// A write refused to a read-only event (its token may not write).
const FORBIDDEN_STATUS: u16 = 403;

impl ObjectError {
    /// A server error (500).
    pub fn new(message: impl Into<String>) -> ObjectError {
        ObjectError::with_status(SERVER_ERROR_STATUS, message)
    }

    /// An error the client gets with `status`.
    pub fn with_status(status: u16, message: impl Into<String>) -> ObjectError {
        ObjectError {
            message: message.into(),
            status,
        }
    }
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ObjectError {}

/// A write refused for its size was sized by the request (a posted value, a key from the
/// path, as many keys as the client asked for), so it is the client's error: 413, like a body
/// over `body_bytes_max`. A store that cannot write is the server's: 500.
impl From<StorageError> for ObjectError {
    fn from(error: StorageError) -> ObjectError {
        let status = match error {
            StorageError::KeyTooLarge { .. }
            | StorageError::ValueTooLarge { .. }
            | StorageError::BatchTooManyKeys { .. }
            | StorageError::BatchTooLarge { .. } => TOO_LARGE_STATUS,
            StorageError::ReservedKey { .. } => CLIENT_ERROR_STATUS,
            StorageError::Unavailable { .. } => SERVER_ERROR_STATUS,
            StorageError::ReadOnly => FORBIDDEN_STATUS,
        };
        ObjectError::with_status(status, error.to_string())
    }
}

/// A failed SQL statement in a handler is the server's error (500): the handler wrote the
/// statement. A class that runs statements from its clients answers 400 itself. A write
/// refused to a read-only event is 403.
impl From<SqlError> for ObjectError {
    fn from(error: SqlError) -> ObjectError {
        match error {
            SqlError::ReadOnly => ObjectError::with_status(FORBIDDEN_STATUS, error.to_string()),
            _ => ObjectError::new(error.to_string()),
        }
    }
}

/// A bookmark the handler was given by its client (malformed, too old, another object's) is
/// the client's error (400); so is asking for history of a class that keeps none.
impl From<HistoryError> for ObjectError {
    fn from(error: HistoryError) -> ObjectError {
        let status = match error {
            HistoryError::Damaged { .. } | HistoryError::Unavailable { .. } => SERVER_ERROR_STATUS,
            HistoryError::ReadOnly => FORBIDDEN_STATUS,
            _ => CLIENT_ERROR_STATUS,
        };
        ObjectError::with_status(status, error.to_string())
    }
}

impl From<serde_json::Error> for ObjectError {
    fn from(error: serde_json::Error) -> ObjectError {
        ObjectError::new(error.to_string())
    }
}

/// A Durable Object class. One instance exists per active object, on the core that owns it.
///
/// Handlers must not panic: a panic takes down the core's executor. Return an [`ObjectError`]
/// instead.
pub trait DurableObject: Sized + 'static {
    /// Builds the instance when the object activates. Its storage is already loaded.
    fn new(context: ObjectContext) -> Self;

    /// Runs once after `new` and before the first event (like `blockConcurrencyWhile` in the
    /// constructor): no event is delivered until it finishes.
    fn init(&self) -> impl Future<Output = Result<(), ObjectError>> {
        async { Ok(()) }
    }

    /// Answers one HTTP request addressed to this object. `request.path` is the path after the
    /// object's name (`/objects/{class}/{name}/increment` arrives as `/increment`).
    fn fetch(&self, request: Request) -> impl Future<Output = Result<Response, ObjectError>>;

    /// Runs when the object's alarm fires. An error schedules a retry with backoff.
    fn alarm(&self, alarm: AlarmInfo) -> impl Future<Output = Result<(), ObjectError>> {
        let _ = alarm;
        async { Ok(()) }
    }

    /// A complete message arrived on one of the object's WebSockets (see
    /// [`ObjectContext::accept_websocket`]). The object may have been evicted and rebuilt since
    /// the socket was accepted; the socket, its tags and its attachment are the same.
    fn websocket_message(
        &self,
        socket: SocketHandle,
        message: WebSocketMessage,
    ) -> impl Future<Output = Result<(), ObjectError>> {
        let _ = (socket, message);
        async { Ok(()) }
    }

    /// One of the object's WebSockets closed; it is gone from [`ObjectContext::websockets`]
    /// once this returns.
    fn websocket_close(
        &self,
        socket: SocketHandle,
        close: SocketClose,
    ) -> impl Future<Output = Result<(), ObjectError>> {
        let _ = (socket, close);
        async { Ok(()) }
    }

    /// The server failed one of the object's WebSockets (a protocol violation, or a client
    /// that stopped reading); it was closed with the matching code.
    fn websocket_error(
        &self,
        socket: SocketHandle,
        error: String,
    ) -> impl Future<Output = Result<(), ObjectError>> {
        let _ = (socket, error);
        async { Ok(()) }
    }
}

/// Milliseconds since the Unix epoch, the clock of alarms and of the built-in classes.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}
