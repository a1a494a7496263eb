//! HTTP/1.1: parsing requests (keep-alive, pipelining, chunked bodies), routing, writing
//! responses, and the per-connection loop.

mod chunked;
mod conn;
mod encode;
mod error;
pub(crate) mod hangup;
mod message;
mod parse;
mod route;
pub(crate) mod upgrade;

pub(crate) use conn::linger;
pub use conn::{serve_connection, Handler};
pub use encode::{encode_response, reason_phrase};
pub(crate) use encode::{is_field_value, is_token};
pub use error::HttpError;
pub use message::{percent_decode, percent_encode, Method, Request, Response, UpgradeToken};
pub use parse::{parse_request, request_bytes_max, ParsedRequest};
pub(crate) use route::{is_class_name, object_target};
pub use route::{route, ObjectTarget, Route};
pub use upgrade::is_websocket_upgrade;
