//! [`EventError`]: every way an event of an object can fail to produce its handler's answer,
//! and the one place where such a failure becomes a status code.

use std::fmt;

use serde::Serialize;

use super::ObjectError;
use crate::http::Response;
use crate::id::ObjectId;

/// Why an event (a request, an alarm, a socket message) was not answered by its handler, or
/// what its handler failed with. The host returns nothing else; `to_response` turns it into
/// the client's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventError {
    /// The object's event queue, or the requests this core has waiting on another core, is
    /// full: 503, retryable.
    Overloaded,
    /// The server is shutting down and takes no new events, or the event gave up waiting for
    /// another client: 503, retryable.
    ShuttingDown,
    /// No class of this name is registered (the router checks first, so this is a bug): 500.
    UnknownClass { class: String },
    /// The id is in memory as an object of another class: 500.
    ClassMismatch { id: ObjectId, active: String },
    /// Loading the object's storage or running its `init` failed: 500.
    ActivationFailed { id: ObjectId, reason: String },
    /// The core's store takes no more writes (a failed write or fdatasync, a full disk): 507.
    /// Reads of durable data still work; what failed is a write, or a read of writes that
    /// will never be durable.
    StorageUnavailable { reason: String },
    /// The store refused one commit of the object (a bug in the limits the host checks), or a
    /// committed write of it failed to become durable: 500.
    CommitFailed { id: ObjectId, reason: String },
    /// In a cluster: the write was not acknowledged by the stream, or this node no longer
    /// serves the object's partition: 503, retryable (on the partition's owner).
    NotReplicated { reason: String },
    /// The handler returned an error: its own status (500, or 413 for a write the client made
    /// too large).
    Handler(ObjectError),
}

/// The JSON body of every error answer, in this field order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    retryable: bool,
}

impl EventError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            EventError::Overloaded
            | EventError::ShuttingDown
            | EventError::NotReplicated { .. } => 503,
            EventError::StorageUnavailable { .. } => 507,
            EventError::Handler(error) => error.status,
            EventError::UnknownClass { .. }
            | EventError::ClassMismatch { .. }
            | EventError::ActivationFailed { .. }
            | EventError::CommitFailed { .. } => 500,
        }
    }

    /// Whether the same request may succeed if sent again later, unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EventError::Overloaded | EventError::ShuttingDown | EventError::NotReplicated { .. }
        )
    }

    /// The client's answer: `{"error": …, "retryable": …}` with the status, and `Retry-After`
    /// on the retryable ones. A handler error keeps its `{"error": …}` body.
    pub fn to_response(&self) -> Response {
        let status = self.status();
        match self {
            EventError::Handler(error) => Response::json_error(status, &error.message),
            _ => error_answer(status, &self.to_string(), self.is_retryable()),
        }
    }
}

/// `{"error": …, "retryable": …}` with `status`, and `Retry-After: 1` when it is retryable:
/// the body of every error answer of the server's own.
pub(crate) fn error_answer(status: u16, error: &str, retryable: bool) -> Response {
    // Two plain fields always serialize; an empty body would still carry the status.
    let body = serde_json::to_vec(&ErrorBody { error, retryable }).unwrap_or_default();
    let response = Response::new(status, body).with_header("Content-Type", "application/json");
    if retryable {
        response.with_header("Retry-After", "1")
    } else {
        response
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::Overloaded => f.write_str("overloaded"),
            EventError::ShuttingDown => f.write_str("the server is shutting down"),
            EventError::UnknownClass { class } => write!(f, "unknown class {class:?}"),
            EventError::ClassMismatch { id, active } => {
                write!(f, "object {id} is active as class {active}")
            }
            EventError::ActivationFailed { id, reason } => {
                write!(f, "activation of object {id} failed: {reason}")
            }
            EventError::StorageUnavailable { reason } => {
                write!(f, "storage unavailable: {reason}")
            }
            EventError::CommitFailed { id, reason } => {
                write!(f, "commit of object {id} failed: {reason}")
            }
            EventError::NotReplicated { reason } => f.write_str(reason),
            EventError::Handler(error) => f.write_str(&error.message),
        }
    }
}

impl std::error::Error for EventError {}

impl From<ObjectError> for EventError {
    fn from(error: ObjectError) -> EventError {
        EventError::Handler(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(error: &EventError) -> String {
        String::from_utf8(error.to_response().body).expect("utf-8")
    }

    #[test]
    fn each_failure_has_one_status_and_body() {
        let id = ObjectId([7; 32]);
        assert_eq!(EventError::Overloaded.status(), 503);
        assert_eq!(
            body(&EventError::Overloaded),
            r#"{"error":"overloaded","retryable":true}"#
        );
        assert_eq!(
            body(&EventError::ShuttingDown),
            r#"{"error":"the server is shutting down","retryable":true}"#
        );
        let unavailable = EventError::StorageUnavailable {
            reason: "write failed".into(),
        };
        assert_eq!(unavailable.status(), 507);
        assert_eq!(
            body(&unavailable),
            r#"{"error":"storage unavailable: write failed","retryable":false}"#
        );
        let too_large = EventError::Handler(ObjectError::with_status(413, "value too large"));
        assert_eq!(too_large.status(), 413);
        assert_eq!(body(&too_large), r#"{"error":"value too large"}"#);
        let failed = EventError::ActivationFailed {
            id,
            reason: "init".into(),
        };
        assert_eq!(failed.status(), 500);
        assert!(!failed.is_retryable());
        let response = EventError::Overloaded.to_response();
        assert!(response
            .headers
            .iter()
            .any(|(name, value)| name == "Retry-After" && value == "1"));
        assert!(!unavailable
            .to_response()
            .headers
            .iter()
            .any(|(name, _)| name == "Retry-After"));
    }
}
