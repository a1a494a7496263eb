//! The limits of one WebSocket, each a named value with its unit last. `Deserialize` with the
//! same field names as a `[websocket]` table, so the server's `Config` can carry it as it is.

use serde::Deserialize;

/// Bounds on what one WebSocket may receive, queue and hold. Past a receive limit the socket is
/// closed with 1009; past a send limit with 1008 (policy violation: the client stopped reading);
/// past the core's send budget with 1013 (try again later: the server is short of memory).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketLimits {
    /// Payload of one received frame, in bytes (1009 past it).
    pub frame_bytes_max: usize,
    /// A received message after reassembling its fragments, in bytes (1009 past it).
    pub message_bytes_max: usize,
    /// Encoded frames queued for a client and not yet written, in bytes. A client that does not
    /// read is closed once its queue would pass this, instead of the server growing memory.
    pub send_queue_bytes_max: usize,
    /// Frames queued for a client and not yet written (same policy as the byte bound).
    pub send_queue_messages_max: usize,
    /// Encoded frames queued and not yet written over all the sockets of one core, in bytes.
    /// A send that would pass it closes the socket it was for with 1013 and drops that
    /// socket's queue, so many slow clients cannot together hold more than this per core.
    pub send_queue_bytes_per_core_max: usize,
    /// How long a closing socket waits for the peer's close frame (or for its own close frame
    /// to be written) before dropping the connection.
    pub close_timeout_ms: u64,
    /// Open sockets one object may hold (a further accept is refused).
    pub sockets_per_object_max: usize,
}

impl Default for WebSocketLimits {
    fn default() -> WebSocketLimits {
        WebSocketLimits {
            frame_bytes_max: 1024 * 1024,
            message_bytes_max: 1024 * 1024,
            send_queue_bytes_max: 4 * 1024 * 1024,
            send_queue_messages_max: 4096,
            send_queue_bytes_per_core_max: 64 * 1024 * 1024,
            close_timeout_ms: 5_000,
            sockets_per_object_max: 32_768,
        }
    }
}

/// The most bytes of per-socket attachment an object may store; it survives hibernation, so it
/// is held for every open socket whether or not its object is in memory.
pub const ATTACHMENT_BYTES_MAX: usize = 2 * 1024;

/// Tags one socket may carry, and bytes per tag: both are held for every open socket.
pub const TAGS_PER_SOCKET_MAX: usize = 10;
pub const TAG_BYTES_MAX: usize = 256;
