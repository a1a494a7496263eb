//! Why a WebSocket upgrade was refused, why a connection was failed, and why a send was
//! refused: typed, with the numbers needed to diagnose, and the status or close code each maps
//! to.

use std::fmt;

use super::close::CloseCode;

/// An upgrade request that cannot become a WebSocket. The client gets `status()`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Not a GET (400).
    MethodNotGet,
    /// No `Upgrade: websocket` header (400; the object's own answer, `Expected WebSocket`).
    NotUpgrade,
    /// `Connection` does not list `upgrade` (400).
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Version` missing or not 13 (426, with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion(Option<String>),
    /// `Sec-WebSocket-Key` missing, not base64, or not 16 bytes once decoded (400).
    BadKey,
}

impl HandshakeError {
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::UnsupportedVersion(_) => 426,
            HandshakeError::MethodNotGet
            | HandshakeError::NotUpgrade
            | HandshakeError::ConnectionNotUpgrade
            | HandshakeError::BadKey => 400,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::MethodNotGet => write!(formatter, "a WebSocket upgrade must be a GET"),
            HandshakeError::NotUpgrade => write!(formatter, "Expected WebSocket"),
            HandshakeError::ConnectionNotUpgrade => {
                write!(formatter, "the Connection header does not list upgrade")
            }
            HandshakeError::UnsupportedVersion(Some(version)) => {
                write!(
                    formatter,
                    "unsupported WebSocket version {version}; only 13"
                )
            }
            HandshakeError::UnsupportedVersion(None) => {
                write!(
                    formatter,
                    "missing Sec-WebSocket-Version; only 13 is supported"
                )
            }
            HandshakeError::BadKey => {
                write!(formatter, "Sec-WebSocket-Key must be 16 bytes in base64")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A received frame that breaks RFC 6455 or a limit. The connection is failed: a close frame
/// with `close_code()` is sent and the TCP connection dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A client frame without a mask, or a server frame with one (1002).
    MaskMismatch { masked: bool },
    /// RSV1..3 set with no extension negotiated (1002).
    ReservedBits(u8),
    /// Opcodes 3..=7 and 11..=15 (1002).
    ReservedOpcode(u8),
    /// A 64-bit payload length with its top bit set (1002).
    LengthOverflow,
    /// A ping, pong or close longer than 125 bytes (1002).
    ControlFrameTooLong { bytes: u64 },
    /// A ping, pong or close without FIN (1002).
    ControlFrameFragmented,
    /// A continuation frame with no fragmented message in progress (1002).
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is unfinished (1002).
    ExpectedContinuation,
    /// A close frame with a 1-byte payload, or a code no peer may send (1002).
    BadClosePayload(Option<u16>),
    /// A text message or close reason that is not UTF-8 (1007).
    InvalidUtf8,
    /// One frame's payload is larger than `frame_bytes_max` (1009).
    FrameTooLarge { bytes: u64, max: usize },
    /// A reassembled message is larger than `message_bytes_max` (1009).
    MessageTooLarge { bytes: u64, max: usize },
}

impl ProtocolError {
    /// The code of the close frame that fails the connection.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => {
                CloseCode::MESSAGE_TOO_BIG
            }
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::MaskMismatch { masked: false } => {
                write!(formatter, "client frame is not masked")
            }
            ProtocolError::MaskMismatch { masked: true } => {
                write!(formatter, "server frame is masked")
            }
            ProtocolError::ReservedBits(bits) => {
                write!(formatter, "reserved bits set: {bits:#05b}")
            }
            ProtocolError::ReservedOpcode(opcode) => {
                write!(formatter, "reserved opcode {opcode:#x}")
            }
            ProtocolError::LengthOverflow => write!(formatter, "payload length top bit set"),
            ProtocolError::ControlFrameTooLong { bytes } => {
                write!(formatter, "control frame of {bytes} bytes, at most 125")
            }
            ProtocolError::ControlFrameFragmented => write!(formatter, "fragmented control frame"),
            ProtocolError::UnexpectedContinuation => {
                write!(
                    formatter,
                    "continuation frame without a message to continue"
                )
            }
            ProtocolError::ExpectedContinuation => {
                write!(formatter, "new message before the fragmented one finished")
            }
            ProtocolError::BadClosePayload(Some(code)) => {
                write!(formatter, "close code {code} may not be sent")
            }
            ProtocolError::BadClosePayload(None) => write!(formatter, "1-byte close payload"),
            ProtocolError::InvalidUtf8 => write!(formatter, "text is not valid UTF-8"),
            ProtocolError::FrameTooLarge { bytes, max } => {
                write!(formatter, "frame of {bytes} bytes, at most {max}")
            }
            ProtocolError::MessageTooLarge { bytes, max } => {
                write!(
                    formatter,
                    "message of at least {bytes} bytes, at most {max}"
                )
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Why a message could not be queued for a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The socket is closing or closed; nothing more is sent.
    Closed,
    /// The client is not reading: the queue would pass its bound. The socket is now closing
    /// with the limits' overflow code and its queue has been dropped.
    QueueFull { bytes: usize, messages: usize },
    /// The message is larger than the whole send queue may ever hold.
    MessageTooLarge { bytes: usize, max: usize },
    /// A close code that may not be sent (1005, 1006, 1015, unassigned ones).
    InvalidCloseCode(u16),
}

impl fmt::Display for SendError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => write!(formatter, "the WebSocket is closed"),
            SendError::QueueFull { bytes, messages } => write!(
                formatter,
                "send queue full ({bytes} bytes, {messages} messages): client closed"
            ),
            SendError::MessageTooLarge { bytes, max } => {
                write!(formatter, "message of {bytes} bytes, at most {max}")
            }
            SendError::InvalidCloseCode(code) => {
                write!(formatter, "close code {code} may not be sent")
            }
        }
    }
}

impl std::error::Error for SendError {}

/// Why a socket, its tags or its attachment were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttachError {
    /// More than `TAGS_PER_SOCKET_MAX` tags, or one longer than `TAG_BYTES_MAX`.
    TooManyTags {
        count: usize,
        max: usize,
    },
    TagTooLong {
        bytes: usize,
        max: usize,
    },
    /// An attachment larger than `ATTACHMENT_BYTES_MAX`.
    AttachmentTooLarge {
        bytes: usize,
        max: usize,
    },
    /// The object already holds `sockets_per_object_max` sockets.
    TooManySockets {
        max: usize,
    },
}

impl fmt::Display for AttachError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::TooManyTags { count, max } => {
                write!(formatter, "{count} tags, at most {max}")
            }
            AttachError::TagTooLong { bytes, max } => {
                write!(formatter, "tag of {bytes} bytes, at most {max}")
            }
            AttachError::AttachmentTooLarge { bytes, max } => {
                write!(formatter, "attachment of {bytes} bytes, at most {max}")
            }
            AttachError::TooManySockets { max } => {
                write!(formatter, "the object already holds {max} WebSockets")
            }
        }
    }
}

impl std::error::Error for AttachError {}
