//! RFC 6455 framing: an incremental decoder over whatever bytes have arrived, and an encoder
//! that appends frames to a `Vec` so that many frames leave in one write.
//!
//! The decoder never needs a whole frame in its input: it parses a header once it is complete,
//! then unmasks payload bytes as they arrive, straight into the message being reassembled. A
//! socket's read buffer can therefore stay small and fixed while messages up to
//! `message_bytes_max` still arrive; memory grows only with a message actually in progress.
//!
//! Limits are checked from the header, before any payload is buffered: a frame announcing more
//! than `frame_bytes_max`, or that would take its message past `message_bytes_max`, fails the
//! connection (1009) without reading it.

use super::close::{fit_reason, CloseCode, CloseFrame};
use super::error::ProtocolError;

/// Control frames carry at most this many payload bytes (RFC 6455 section 5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const FRAME_HEADER_BYTES_MAX: usize = 14;

/// What a frame header may make the decoder allocate before any of its payload arrives.
const MESSAGE_RESERVE_BYTES_MAX: usize = 64 * 1024;

/// Which end of the connection decodes: a server requires masked frames, a client refuses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Frame opcodes that RFC 6455 defines; the others are reserved and fail the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    fn parse(bits: u8) -> Result<Opcode, ProtocolError> {
        Ok(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A complete message or control frame, as the application sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// `None`: the close frame carried no status code.
    Close(Option<CloseFrame>),
}

/// One call's progress: how many input bytes were used, and the item they completed, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub consumed: usize,
    pub item: Option<Incoming>,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug)]
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
}

enum State {
    /// Waiting for the next frame header.
    Header,
    /// Inside a frame's payload.
    Payload {
        header: Header,
        /// Payload bytes of this frame not yet received.
        remaining: u64,
        /// Payload bytes of this frame already unmasked: where the mask cycle resumes.
        offset: usize,
    },
}

/// Decodes a byte stream into messages and control frames. One decoder per connection.
pub struct Decoder {
    /// Which side decodes, for the masking rule.
    role: Role,
    /// Bounds from the limits, checked on each header (1009 past them).
    frame_bytes_max: usize,
    message_bytes_max: usize,
    state: State,
    /// The type of the data message being reassembled, or `None` between messages; decides
    /// whether a continuation or a new data frame is legal.
    message_kind: Option<Opcode>,
    /// The unmasked payload of the data message being reassembled.
    message: Vec<u8>,
    /// Leading bytes of a fragmented text `message` known to be whole, valid UTF-8, so each
    /// fragment is checked once and invalid text fails before the message completes.
    utf8_checked: usize,
    /// The unmasked payload of the control frame being read (at most 125 bytes). Kept apart
    /// from `message` because control frames may arrive between the fragments of a message.
    control: Vec<u8>,
    /// The error that failed the stream: a failed decoder returns it again rather than
    /// resynchronising on garbage.
    failed: Option<ProtocolError>,
}

impl Decoder {
    pub fn new(role: Role, frame_bytes_max: usize, message_bytes_max: usize) -> Decoder {
        Decoder {
            role,
            frame_bytes_max,
            message_bytes_max,
            state: State::Header,
            message_kind: None,
            message: Vec::new(),
            utf8_checked: 0,
            control: Vec::new(),
            failed: None,
        }
    }

    /// Consumes bytes of `input` until one item completes or the input runs out. Unconsumed
    /// bytes (at most an incomplete header) must be passed again, followed by what arrives next.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ProtocolError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.decode_inner(input);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            self.message = Vec::new();
        }
        result
    }

    /// Bytes this decoder holds for a message or control frame in progress.
    pub fn buffered_bytes(&self) -> usize {
        self.message.capacity() + self.control.capacity()
    }

    fn decode_inner(&mut self, input: &[u8]) -> Result<Decoded, ProtocolError> {
        let mut consumed = 0;
        loop {
            match &mut self.state {
                State::Header => {
                    let Some((header, length, header_bytes)) = parse_header(&input[consumed..])?
                    else {
                        return Ok(Decoded {
                            consumed,
                            item: None,
                        });
                    };
                    consumed += header_bytes;
                    self.start_frame(header, length)?;
                }
                State::Payload {
                    header,
                    remaining,
                    offset,
                } => {
                    let available = input.len() - consumed;
                    // `remaining` was checked against a `usize` limit, so it fits.
                    let take = available.min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    let chunk = &input[consumed..consumed + take];
                    let target = if header.opcode.is_control() {
                        &mut self.control
                    } else {
                        &mut self.message
                    };
                    let start = target.len();
                    target.extend_from_slice(chunk);
                    if let Some(mask) = header.mask {
                        apply_mask(&mut target[start..], mask, *offset);
                    }
                    consumed += take;
                    *remaining -= take as u64;
                    *offset += take;
                    if *remaining > 0 {
                        return Ok(Decoded {
                            consumed,
                            item: None,
                        });
                    }
                    let header = *header;
                    self.state = State::Header;
                    if let Some(item) = self.finish_frame(header)? {
                        return Ok(Decoded {
                            consumed,
                            item: Some(item),
                        });
                    }
                }
            }
        }
    }

    /// Checks a header against the masking rule, the fragmentation state and the limits, and
    /// enters its payload.
    fn start_frame(&mut self, header: Header, length: u64) -> Result<(), ProtocolError> {
        let masked = header.mask.is_some();
        if masked != (self.role == Role::Server) {
            return Err(ProtocolError::MaskMismatch { masked });
        }
        if header.opcode.is_control() {
            if !header.fin {
                return Err(ProtocolError::ControlFrameFragmented);
            }
            if length > CONTROL_PAYLOAD_BYTES_MAX as u64 {
                return Err(ProtocolError::ControlFrameTooLong { bytes: length });
            }
            self.control.clear();
        } else {
            match (header.opcode, self.message_kind) {
                (Opcode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
                (Opcode::Continuation, Some(_)) => {}
                (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
                (kind, None) => self.message_kind = Some(kind),
            }
            if length > self.frame_bytes_max as u64 {
                return Err(ProtocolError::FrameTooLarge {
                    bytes: length,
                    max: self.frame_bytes_max,
                });
            }
            let total = self.message.len() as u64 + length;
            if total > self.message_bytes_max as u64 {
                return Err(ProtocolError::MessageTooLarge {
                    bytes: total,
                    max: self.message_bytes_max,
                });
            }
            // A header alone costs at most `MESSAGE_RESERVE_BYTES_MAX`: past it the buffer grows
            // with the payload that actually arrives, not with the length a client declares.
            self.message
                .reserve((length as usize).min(MESSAGE_RESERVE_BYTES_MAX));
        }
        self.state = State::Payload {
            header,
            remaining: length,
            offset: 0,
        };
        Ok(())
    }

    /// A frame's payload is complete: yields a control frame, or a message on its last frame.
    fn finish_frame(&mut self, header: Header) -> Result<Option<Incoming>, ProtocolError> {
        match header.opcode {
            Opcode::Ping => return Ok(Some(Incoming::Ping(std::mem::take(&mut self.control)))),
            Opcode::Pong => return Ok(Some(Incoming::Pong(std::mem::take(&mut self.control)))),
            Opcode::Close => {
                return parse_close(&self.control).map(|close| Some(Incoming::Close(close)))
            }
            Opcode::Continuation | Opcode::Text | Opcode::Binary => {}
        }
        let text = self.message_kind == Some(Opcode::Text);
        if !header.fin {
            if text {
                self.check_utf8_so_far()?;
            }
            return Ok(None);
        }
        let payload = std::mem::take(&mut self.message);
        self.message_kind = None;
        self.utf8_checked = 0;
        if text {
            String::from_utf8(payload)
                .map(|text| Some(Incoming::Text(text)))
                .map_err(|_| ProtocolError::InvalidUtf8)
        } else {
            Ok(Some(Incoming::Binary(payload)))
        }
    }

    /// Fails a fragmented text message as soon as its bytes cannot be UTF-8, whatever follows;
    /// a character cut at the end of a fragment is left for the next one to complete.
    fn check_utf8_so_far(&mut self) -> Result<(), ProtocolError> {
        match std::str::from_utf8(&self.message[self.utf8_checked..]) {
            Ok(_) => self.utf8_checked = self.message.len(),
            Err(error) if error.error_len().is_none() => self.utf8_checked += error.valid_up_to(),
            Err(_) => return Err(ProtocolError::InvalidUtf8),
        }
        Ok(())
    }
}

/// Parses a frame header from the start of `input`: the header, its payload length and its
/// size in bytes, or `None` if it is not complete yet.
fn parse_header(input: &[u8]) -> Result<Option<(Header, u64, usize)>, ProtocolError> {
    let [first, second, ..] = *input else {
        return Ok(None);
    };
    let reserved = (first >> 4) & 0x7;
    if reserved != 0 {
        return Err(ProtocolError::ReservedBits(reserved));
    }
    let opcode = Opcode::parse(first & 0x0F)?;
    let masked = second & 0x80 != 0;
    let (length, mut size) = match second & 0x7F {
        126 => match input.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
            None => return Ok(None),
        },
        127 => match input
            .get(2..10)
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        {
            Some(bytes) => (u64::from_be_bytes(bytes), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if length >> 63 != 0 {
        return Err(ProtocolError::LengthOverflow);
    }
    let mask = if masked {
        match input
            .get(size..size + 4)
            .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
        {
            Some(mask) => {
                size += 4;
                Some(mask)
            }
            None => return Ok(None),
        }
    } else {
        None
    };
    let header = Header {
        fin: first & 0x80 != 0,
        opcode,
        mask,
    };
    Ok(Some((header, length, size)))
}

/// The body of a close frame: nothing, or a sendable code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::BadClosePayload(None)),
        [high, low, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*high, *low]));
            if !code.is_sendable() {
                return Err(ProtocolError::BadClosePayload(Some(code.0)));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_string(),
            }))
        }
    }
}

/// XORs `bytes` with the mask, starting `offset` bytes into the mask's 4-byte cycle. Works
/// 8 bytes at a time (a multiple of 4, so every word starts at the same point of the cycle).
pub fn apply_mask(bytes: &mut [u8], mask: [u8; 4], offset: usize) {
    let rotated = [
        mask[offset & 3],
        mask[(offset + 1) & 3],
        mask[(offset + 2) & 3],
        mask[(offset + 3) & 3],
    ];
    let [a, b, c, d] = rotated;
    let key = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = bytes.chunks_exact_mut(8);
    for word in &mut words {
        let mut value = [0u8; 8];
        value.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(value) ^ key).to_ne_bytes());
    }
    for (byte, key) in words
        .into_remainder()
        .iter_mut()
        .zip(rotated.iter().cycle())
    {
        *byte ^= key;
    }
}

/// Size of a frame carrying `payload_bytes`, header included.
pub fn frame_bytes(payload_bytes: usize, masked: bool) -> usize {
    let length_bytes = match payload_bytes {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + length_bytes + if masked { 4 } else { 0 } + payload_bytes
}

/// Appends one frame to `out`. Servers pass `mask: None`; clients must pass a mask.
pub fn encode_frame(
    out: &mut Vec<u8>,
    opcode: Opcode,
    fin: bool,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    out.reserve(frame_bytes(payload.len(), mask.is_some()));
    out.push(u8::from(fin) << 7 | opcode as u8);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        length @ 0..=125 => out.push(mask_bit | length as u8),
        length @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], mask, 0);
        }
        None => out.extend_from_slice(payload),
    }
}

/// Appends a close frame: empty for `None`, else the code and the reason (cut to fit).
pub fn encode_close(out: &mut Vec<u8>, close: Option<&CloseFrame>, mask: Option<[u8; 4]>) {
    let mut payload = [0u8; CONTROL_PAYLOAD_BYTES_MAX];
    let length = match close {
        None => 0,
        Some(close) => {
            let reason = fit_reason(&close.reason);
            payload[..2].copy_from_slice(&close.code.0.to_be_bytes());
            payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
            2 + reason.len()
        }
    };
    encode_frame(out, Opcode::Close, true, &payload[..length], mask);
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
