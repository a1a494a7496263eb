//! HTTP/1.1: parsing requests (keep-alive, pipelining, chunked bodies), routing, writing
//! responses, and the per-connection loop.

mod message;

pub use message::{percent_decode, Method, Request, Response};
