//! Close status codes (RFC 6455 section 7.4) and the body of a close frame.

use std::fmt;

/// A close status code. Constants name the codes stead sends or must recognise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// The purpose of the connection is fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// The server is shutting down or the page is navigating away.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// The peer broke the framing rules.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// A data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// Reported (never sent) when a close frame carried no code.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// Reported (never sent) when the connection ended without a close frame.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// A text message that is not UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// A policy was violated; stead sends it to a client that stopped reading.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// A frame or message larger than the limit.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// The server is overloaded; the client may reconnect later.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether a peer may put this code on the wire. 1005, 1006 and 1015 are reserved for
    /// reporting, 1004 and 1016..=2999 are unassigned, 3000..=4999 belong to applications.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

/// The longest close reason that fits a control frame (125 bytes less the 2-byte code).
pub const CLOSE_REASON_BYTES_MAX: usize = 123;

/// Why a connection closed, as carried by a close frame or reported for one that had none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: CloseCode,
    /// UTF-8, at most `CLOSE_REASON_BYTES_MAX` bytes.
    pub reason: String,
}

impl CloseFrame {
    /// A close frame with `reason` cut (at a character boundary) to what fits a control frame.
    pub fn new(code: CloseCode, reason: &str) -> CloseFrame {
        CloseFrame {
            code,
            reason: fit_reason(reason).to_string(),
        }
    }
}

/// The longest prefix of `reason` that fits a close frame and ends at a character boundary.
pub fn fit_reason(reason: &str) -> &str {
    let mut end = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}
