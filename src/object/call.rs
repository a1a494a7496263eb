//! Calls between objects: a stub ([`ObjectStub`]) delivers a request as an event of another
//! object, on the core that owns it, and returns its response.
//!
//! Awaiting a call is not a storage await: the caller's other events run meanwhile, so A → B →
//! A does not deadlock. Each call's request carries the depth of the chain it belongs to
//! (`CALL_DEPTH_HEADER`); the event that receives it runs at that depth, and a call from an
//! event at `objects.call_depth_max` is refused ([`CallError::TooDeep`]) instead of looping.
//! The caller's output gate is unchanged: its own response still waits for its own writes.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

use futures_lite::future::BoxedLocal;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::{Method, Request, Response};
use crate::id::ObjectId;

/// The request header that carries a call's depth in its chain (1 for a call from an event a
/// client started). Requests from clients may carry it too: it only lowers what they may call.
pub const CALL_DEPTH_HEADER: &str = "stead-call-depth";

/// The request header that makes an event read-only: its writes are refused (403). The
/// server adds it to a request whose token has no `write` permission, and a stub to every call
/// from a read-only event. Requests from clients may carry it too: it only takes writes away.
pub const READ_ONLY_HEADER: &str = "stead-read-only";

/// Whether `request`'s event may not write: the header is there, whatever its value.
pub fn is_read_only(request: &Request) -> bool {
    request
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case(READ_ONLY_HEADER))
}

/// The call depth the object's cell holds while none of its events is being polled (and
/// while `init` runs): a stub refuses to call then ([`CallError::OutsideEvent`]), since no
/// event's chain can be told.
pub(super) const NO_EVENT_DEPTH: u32 = u32::MAX;

/// The depth of the chain `request` belongs to: 0 for a client's request.
pub fn call_depth(request: &Request) -> u32 {
    request
        .header(CALL_DEPTH_HEADER)
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// How a stub reaches the core that owns an object: the server's request routing.
pub trait Router {
    /// Delivers `request` to object `id` of `class` (reached by `name`, if it was) and returns
    /// its response; refusals (overload, shutdown) are responses too.
    fn call(
        &self,
        class: String,
        id: ObjectId,
        name: Option<String>,
        request: Request,
    ) -> BoxedLocal<Response>;

    /// Whether object `id` lives on the core this router serves (None once it has stopped).
    fn is_local(&self, id: ObjectId) -> Option<bool>;
}

/// Why a call was not delivered, or (typed calls) its answer not understood.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// No class of that name is registered.
    UnknownClass { class: String },
    /// The chain of calls is `objects.call_depth_max` deep already.
    TooDeep { depth: u32, call_depth_max: u32 },
    /// The object runs without a server to route calls (a host used on its own).
    NoRouter,
    /// The call was made outside an event's handler: from `init`, or from a task the handler
    /// spawned (whose chain cannot be told, so a cycle through it could not be bounded).
    OutsideEvent,
    /// An id of another class than the stub's.
    WrongClass { class: String },
    /// An object name that is empty or longer than `http.object_name_bytes_max`.
    InvalidName { name_bytes: usize },
    /// No randomness for a unique id.
    NoRandomness { reason: String },
    /// A typed call's request could not be encoded, or its answer decoded.
    Json { reason: String },
    /// A typed call was answered with this status.
    Status { status: u16, body: String },
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::UnknownClass { class } => write!(f, "no class {class:?} is registered"),
            CallError::TooDeep {
                depth,
                call_depth_max,
            } => write!(
                f,
                "a chain of calls between objects reached depth {depth}, past objects.call_depth_max {call_depth_max} (a cycle?)"
            ),
            CallError::NoRouter => {
                f.write_str("calls between objects need the server's routing, which this host has not")
            }
            CallError::OutsideEvent => f.write_str(
                "a call between objects must be made from an event's handler (not from init, nor from a task it spawned)",
            ),
            CallError::WrongClass { class } => {
                write!(f, "the id is not of an object of class {class:?}")
            }
            CallError::InvalidName { name_bytes } => write!(
                f,
                "an object name of {name_bytes} bytes: it must be 1 to http.object_name_bytes_max bytes"
            ),
            CallError::NoRandomness { reason } => {
                write!(f, "no randomness for a unique id: {reason}")
            }
            CallError::Json { reason } => write!(f, "a typed call's JSON: {reason}"),
            CallError::Status { status, body } => {
                write!(f, "the object answered {status}: {body}")
            }
        }
    }
}

impl std::error::Error for CallError {}

/// The status a refused call answers with when a handler passes the error on: 508 (loop
/// detected) for a chain too deep, 502 for an answer a typed call could not use, 500 else.
impl From<CallError> for super::ObjectError {
    fn from(error: CallError) -> super::ObjectError {
        let status = match &error {
            CallError::TooDeep { .. } => 508,
            CallError::Json { .. } => 502,
            CallError::Status { status, .. } => *status,
            CallError::UnknownClass { .. }
            | CallError::NoRouter
            | CallError::OutsideEvent
            | CallError::WrongClass { .. }
            | CallError::InvalidName { .. }
            | CallError::NoRandomness { .. } => 500,
        };
        super::ObjectError::with_status(status, error.to_string())
    }
}

/// What a stub needs of its caller's context.
#[derive(Clone)]
pub(super) struct Caller {
    pub(super) router: Option<Rc<dyn Router>>,
    /// The depth of the caller's event now running (set by the host before each poll).
    pub(super) depth: Rc<Cell<u32>>,
    /// Whether the caller's event now running may not write (set with `depth`).
    pub(super) read_only: Rc<Cell<bool>>,
    pub(super) call_depth_max: u32,
}

/// Another object, as a caller reaches it ([`ObjectContext::object`]).
///
/// [`ObjectContext::object`]: super::ObjectContext::object
#[derive(Clone)]
pub struct ObjectStub {
    caller: Caller,
    class: String,
    id: ObjectId,
    name: Option<String>,
}

impl fmt::Debug for ObjectStub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStub")
            .field("class", &self.class)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ObjectStub {
    pub(super) fn new(
        caller: Caller,
        class: String,
        id: ObjectId,
        name: Option<String>,
    ) -> ObjectStub {
        ObjectStub {
            caller,
            class,
            id,
            name,
        }
    }

    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Whether the object lives on the caller's core (a call to it then crosses no channel);
    /// None when the caller runs without the server's routing.
    pub fn is_on_this_core(&self) -> Option<bool> {
        self.caller.router.as_ref()?.is_local(self.id)
    }

    /// Delivers `request` as an event of the object and returns its response: the object's own
    /// answer, or the server's refusal (503 overloaded or shutting down, 500 a failed
    /// activation), never a panic. The call belongs to the chain of the event whose handler
    /// calls `fetch`; called from `init` or from a task the handler spawned, it is refused
    /// ([`CallError::OutsideEvent`]).
    pub fn fetch(
        &self,
        mut request: Request,
    ) -> impl std::future::Future<Output = Result<Response, CallError>> {
        let current = self.caller.depth.get();
        let read_only = self.caller.read_only.get();
        let depth = current.saturating_add(1);
        let call_depth_max = self.caller.call_depth_max;
        let router = self.caller.router.clone();
        let (class, id, name) = (self.class.clone(), self.id, self.name.clone());
        async move {
            if current == NO_EVENT_DEPTH {
                return Err(CallError::OutsideEvent);
            }
            if depth > call_depth_max {
                return Err(CallError::TooDeep {
                    depth,
                    call_depth_max,
                });
            }
            let router = router.ok_or(CallError::NoRouter)?;
            // A WebSocket upgrade belongs to the caller's connection; a call cannot hand it on.
            request.upgrade = None;
            request
                .headers
                .retain(|(header, _)| !header.eq_ignore_ascii_case(CALL_DEPTH_HEADER));
            request.headers.push((
                CALL_DEPTH_HEADER.to_string(),
                depth.to_string().into_bytes(),
            ));
            // A read-only event cannot write through another object either.
            if read_only {
                request
                    .headers
                    .retain(|(header, _)| !header.eq_ignore_ascii_case(READ_ONLY_HEADER));
                request
                    .headers
                    .push((READ_ONLY_HEADER.to_string(), b"1".to_vec()));
            }
            Ok(router.call(class, id, name, request).await)
        }
    }

    /// A typed call: `POST path` with `body` as JSON, and the 2xx answer decoded from JSON.
    /// Another status is [`CallError::Status`].
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> impl std::future::Future<Output = Result<Resp, CallError>> {
        let encoded = serde_json::to_vec(body).map_err(|error| CallError::Json {
            reason: error.to_string(),
        });
        let request = encoded.map(|body| Request {
            method: Method::Post,
            path: path.to_string(),
            query: String::new(),
            headers: vec![("Content-Type".to_string(), b"application/json".to_vec())],
            body,
            upgrade: None,
        });
        let sent = request.map(|request| self.fetch(request));
        async move {
            let response = sent?.await?;
            if !(200..300).contains(&response.status) {
                return Err(CallError::Status {
                    status: response.status,
                    body: String::from_utf8_lossy(&response.body).into_owned(),
                });
            }
            serde_json::from_slice(&response.body).map_err(|error| CallError::Json {
                reason: error.to_string(),
            })
        }
    }
}
