//! HTTP/1.1: parsing requests (keep-alive, pipelining, chunked bodies), routing, writing
//! responses, and the per-connection loop.

mod chunked;
mod conn;
mod encode;
mod error;
mod message;
mod parse;
mod route;

pub use conn::{is_websocket_upgrade, serve_connection, Handler};
pub use encode::{encode_response, reason_phrase};
pub use error::HttpError;
pub use message::{percent_decode, Method, Request, Response};
pub use parse::{parse_request, request_bytes_max, ParsedRequest};
pub use route::{route, ObjectTarget, Route};
