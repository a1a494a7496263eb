//! WebSockets (RFC 6455), served on the core that owns their object.
//!
//! The pieces, in the order a connection meets them:
//! - `handshake`: checks an upgrade request and builds the 101 that accepts it;
//! - `codec`: the frame decoder (incremental, with limits) and encoder;
//! - `handle`: a socket's shared state — id, tags, attachment, bounded send queue;
//! - `socket`: the driver task that reads, answers pings, closes, writes batches;
//! - `events`: what a socket reports, the [`EventSink`] it reports to, a bounded queue;
//! - `set`: one object's sockets, listed by tag, with the object's auto response;
//! - `close`, `error`, `limits`: close codes, typed errors, bounds.
//!
//! **Architecture Invariant:** a socket never holds its object. It holds an id, tags and an
//! attachment, and reports to a sink owned by the core; so an object with open sockets can be
//! evicted (hibernate) and re-created when the next event arrives.
//!
//! Limits: messages and frames up to `message_bytes_max` / `frame_bytes_max` (1 MiB by
//! default); no extensions (no compression); no subprotocol negotiation.

mod close;
mod codec;
mod error;
mod events;
mod handle;
mod handshake;
mod limits;
mod set;
mod socket;

pub use crate::http::is_websocket_upgrade;
pub use close::{CloseCode, CloseFrame, CLOSE_REASON_BYTES_MAX};
pub use codec::{
    apply_mask, encode_close, encode_frame, frame_bytes, Decoded, Decoder, Incoming, Opcode, Role,
    CONTROL_PAYLOAD_BYTES_MAX, FRAME_HEADER_BYTES_MAX,
};
pub use error::{AttachError, HandshakeError, ProtocolError, SendError};
pub use events::{EventQueue, EventSink, Message, SocketError, SocketEvent, SocketId};
pub use handle::{
    AutoResponse, CoreSendBudget, SocketHandle, CORE_BUDGET_CLOSE_CODE, SEND_OVERFLOW_CLOSE_CODE,
};
pub use handshake::{accept_key, validate_upgrade, Upgrade};
pub use limits::{WebSocketLimits, ATTACHMENT_BYTES_MAX, TAGS_PER_SOCKET_MAX, TAG_BYTES_MAX};
pub use set::{SocketIds, SocketSet};
pub use socket::serve_socket;
