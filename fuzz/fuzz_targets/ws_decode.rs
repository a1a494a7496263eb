//! Arbitrary bytes as a WebSocket byte stream: the decoder never panics, never consumes more
//! than it is given, respects its limits, yields only valid text, stays failed once failed, and
//! decodes the same whether the bytes arrive at once or in pieces.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stead::websocket::{
    Decoder, Incoming, ProtocolError, Role, CONTROL_PAYLOAD_BYTES_MAX, FRAME_HEADER_BYTES_MAX,
};

/// Small limits, so that fuzzing reaches every limit check quickly.
const FRAME_BYTES_MAX: usize = 64;
const MESSAGE_BYTES_MAX: usize = 256;

/// Every item, then the error that ended the stream (if any), feeding `piece` bytes at a time.
fn decode(role: Role, data: &[u8], piece: usize) -> (Vec<Incoming>, Option<ProtocolError>) {
    let mut decoder = Decoder::new(role, FRAME_BYTES_MAX, MESSAGE_BYTES_MAX);
    let mut items = Vec::new();
    let mut pending = Vec::new();
    for chunk in data.chunks(piece) {
        pending.extend_from_slice(chunk);
        loop {
            match decoder.decode(&pending) {
                Ok(decoded) => {
                    assert!(decoded.consumed <= pending.len());
                    pending.drain(..decoded.consumed);
                    match decoded.item {
                        Some(item) => items.push(item),
                        None => break,
                    }
                }
                Err(error) => {
                    assert_eq!(decoder.decode(&[]).err(), Some(error.clone()));
                    return (items, Some(error));
                }
            }
        }
        assert!(pending.len() < FRAME_HEADER_BYTES_MAX);
    }
    (items, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let role = if control & 0x80 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let piece = usize::from(control & 0x7F).max(1);
    let whole = decode(role, stream, stream.len().max(1));
    for item in &whole.0 {
        match item {
            Incoming::Text(text) => assert!(text.len() <= MESSAGE_BYTES_MAX),
            Incoming::Binary(bytes) => assert!(bytes.len() <= MESSAGE_BYTES_MAX),
            Incoming::Ping(bytes) | Incoming::Pong(bytes) => {
                assert!(bytes.len() <= CONTROL_PAYLOAD_BYTES_MAX)
            }
            Incoming::Close(close) => {
                assert!(close.as_ref().is_none_or(|close| close.code.is_sendable()))
            }
        }
    }
    assert_eq!(decode(role, stream, piece), whole);
});
