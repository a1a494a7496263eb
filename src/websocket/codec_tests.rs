use super::*;
use proptest::prelude::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const LIMIT_BYTES: usize = 1024;

fn server() -> Decoder {
    Decoder::new(Role::Server, LIMIT_BYTES, 4 * LIMIT_BYTES)
}

/// A client frame, as a browser would send it.
fn frame(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, opcode, fin, payload, Some(MASK));
    out
}

/// Decodes all of `input` fed in pieces of `piece` bytes; every item, then the first error.
fn decode_in_pieces(
    decoder: &mut Decoder,
    input: &[u8],
    piece: usize,
) -> Result<Vec<Incoming>, ProtocolError> {
    let mut items = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for chunk in input.chunks(piece.max(1)) {
        pending.extend_from_slice(chunk);
        loop {
            let decoded = decoder.decode(&pending)?;
            pending.drain(..decoded.consumed);
            match decoded.item {
                Some(item) => items.push(item),
                None => break,
            }
        }
    }
    assert!(
        pending.len() < FRAME_HEADER_BYTES_MAX,
        "only a partial header may remain"
    );
    Ok(items)
}

fn decode_all(input: &[u8]) -> Result<Vec<Incoming>, ProtocolError> {
    decode_in_pieces(&mut server(), input, input.len())
}

#[test]
fn a_masked_text_frame_decodes_whatever_the_read_boundaries() {
    let wire = frame(Opcode::Text, true, "héllo wörld".as_bytes());
    for piece in 1..=wire.len() {
        let items = decode_in_pieces(&mut server(), &wire, piece).expect("valid");
        assert_eq!(
            items,
            vec![Incoming::Text("héllo wörld".into())],
            "piece {piece}"
        );
    }
}

#[test]
fn fragments_reassemble_with_control_frames_between_them() {
    let mut wire = frame(Opcode::Binary, false, b"abc");
    wire.extend(frame(Opcode::Ping, true, b"p"));
    wire.extend(frame(Opcode::Continuation, false, b""));
    wire.extend(frame(Opcode::Pong, true, b""));
    wire.extend(frame(Opcode::Continuation, true, b"def"));
    wire.extend(frame(Opcode::Text, true, b"next"));
    assert_eq!(
        decode_all(&wire),
        Ok(vec![
            Incoming::Ping(b"p".to_vec()),
            Incoming::Pong(Vec::new()),
            Incoming::Binary(b"abcdef".to_vec()),
            Incoming::Text("next".into()),
        ])
    );
}

#[test]
fn framing_violations_fail_with_1002() {
    let unmasked = {
        let mut out = Vec::new();
        encode_frame(&mut out, Opcode::Text, true, b"hi", None);
        out
    };
    let mut reserved_bits = frame(Opcode::Text, true, b"hi");
    reserved_bits[0] |= 0x40;
    let mut reserved_opcode = frame(Opcode::Text, true, b"hi");
    reserved_opcode[0] = 0x80 | 0x3;
    let mut huge_length = vec![0x82, 0x80 | 127];
    huge_length.extend_from_slice(&u64::MAX.to_be_bytes());
    huge_length.extend_from_slice(&MASK);
    let mut new_message_midway = frame(Opcode::Text, false, b"a");
    new_message_midway.extend(frame(Opcode::Text, true, b"b"));

    let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
        (unmasked, ProtocolError::MaskMismatch { masked: false }),
        (reserved_bits, ProtocolError::ReservedBits(0x4)),
        (reserved_opcode, ProtocolError::ReservedOpcode(0x3)),
        (huge_length, ProtocolError::LengthOverflow),
        (
            frame(Opcode::Ping, true, &[0; 126]),
            ProtocolError::ControlFrameTooLong { bytes: 126 },
        ),
        (
            frame(Opcode::Ping, false, b""),
            ProtocolError::ControlFrameFragmented,
        ),
        (
            frame(Opcode::Continuation, true, b"x"),
            ProtocolError::UnexpectedContinuation,
        ),
        (new_message_midway, ProtocolError::ExpectedContinuation),
        (
            frame(Opcode::Close, true, &[3]),
            ProtocolError::BadClosePayload(None),
        ),
        (
            frame(Opcode::Close, true, &1005u16.to_be_bytes()),
            ProtocolError::BadClosePayload(Some(1005)),
        ),
    ];
    for (wire, expected) in cases {
        let mut decoder = server();
        assert_eq!(decoder.decode(&wire).map(|_| ()), Err(expected.clone()));
        assert_eq!(expected.close_code(), CloseCode::PROTOCOL_ERROR);
        // A failed stream stays failed.
        assert_eq!(decoder.decode(&[]).map(|_| ()), Err(expected));
    }
}

#[test]
fn a_client_decoder_refuses_masked_frames() {
    let mut client = Decoder::new(Role::Client, LIMIT_BYTES, LIMIT_BYTES);
    assert_eq!(
        client.decode(&frame(Opcode::Text, true, b"x")),
        Err(ProtocolError::MaskMismatch { masked: true })
    );
}

#[test]
fn invalid_utf8_fails_with_1007_even_before_the_message_ends() {
    let invalid = decode_all(&frame(Opcode::Text, true, &[b'a', 0xff]));
    assert_eq!(invalid, Err(ProtocolError::InvalidUtf8));
    assert_eq!(
        ProtocolError::InvalidUtf8.close_code(),
        CloseCode::INVALID_PAYLOAD
    );

    // The first fragment alone is already impossible: no continuation is needed to tell.
    let mut decoder = server();
    let first = frame(Opcode::Text, false, &[0xc3, 0x28]);
    assert_eq!(decoder.decode(&first), Err(ProtocolError::InvalidUtf8));

    // A character cut between fragments is fine...
    let euro = "€".as_bytes();
    let mut wire = frame(Opcode::Text, false, &euro[..1]);
    wire.extend(frame(Opcode::Continuation, false, &euro[1..2]));
    wire.extend(frame(Opcode::Continuation, true, &euro[2..]));
    assert_eq!(decode_all(&wire), Ok(vec![Incoming::Text("€".into())]));

    // ...but not one the message ends inside.
    let mut truncated = frame(Opcode::Text, false, &euro[..1]);
    truncated.extend(frame(Opcode::Continuation, true, &euro[1..2]));
    assert_eq!(decode_all(&truncated), Err(ProtocolError::InvalidUtf8));

    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.push(0xff);
    assert_eq!(
        decode_all(&frame(Opcode::Close, true, &bad_reason)),
        Err(ProtocolError::InvalidUtf8)
    );
}

#[test]
fn oversized_frames_and_messages_fail_with_1009_from_the_header_alone() {
    // Only the header of a frame one byte too large: refused before its payload arrives.
    let wire = frame(Opcode::Binary, true, &vec![0; LIMIT_BYTES + 1]);
    let mut decoder = server();
    let refused = decoder.decode(&wire[..8]).expect_err("too large");
    assert_eq!(
        refused,
        ProtocolError::FrameTooLarge {
            bytes: LIMIT_BYTES as u64 + 1,
            max: LIMIT_BYTES
        }
    );
    assert_eq!(refused.close_code(), CloseCode::MESSAGE_TOO_BIG);

    // Four full fragments are allowed; one more byte is not.
    let mut wire = frame(Opcode::Binary, false, &vec![1; LIMIT_BYTES]);
    for _ in 0..3 {
        wire.extend(frame(Opcode::Continuation, false, &vec![1; LIMIT_BYTES]));
    }
    wire.extend(frame(Opcode::Continuation, true, b"x"));
    assert_eq!(
        decode_all(&wire),
        Err(ProtocolError::MessageTooLarge {
            bytes: 4 * LIMIT_BYTES as u64 + 1,
            max: 4 * LIMIT_BYTES
        })
    );
}

#[test]
fn a_header_declaring_a_large_frame_reserves_little_until_its_payload_arrives() {
    const LARGE_BYTES: usize = 1024 * 1024;
    let mut decoder = Decoder::new(Role::Server, LARGE_BYTES, LARGE_BYTES);
    let payload = vec![7u8; LARGE_BYTES];
    let wire = frame(Opcode::Binary, true, &payload);
    let decoded = decoder
        .decode(&wire[..FRAME_HEADER_BYTES_MAX])
        .expect("header");
    assert_eq!(
        (decoded.consumed, decoded.item),
        (FRAME_HEADER_BYTES_MAX, None)
    );
    assert!(
        decoder.message.capacity() <= MESSAGE_RESERVE_BYTES_MAX,
        "reserved {} bytes for a header",
        decoder.message.capacity()
    );
    // The payload still decodes whole, however it is cut.
    let items =
        decode_in_pieces(&mut decoder, &wire[FRAME_HEADER_BYTES_MAX..], 100_000).expect("payload");
    assert_eq!(items, vec![Incoming::Binary(payload)]);
}

#[test]
fn close_frames_decode_with_and_without_a_code() {
    assert_eq!(
        decode_all(&frame(Opcode::Close, true, b"")),
        Ok(vec![Incoming::Close(None)])
    );
    let mut payload = 4000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    assert_eq!(
        decode_all(&frame(Opcode::Close, true, &payload)),
        Ok(vec![Incoming::Close(Some(CloseFrame::new(
            CloseCode(4000),
            "bye"
        )))])
    );
}

#[test]
fn server_frames_encode_every_length_form_and_decode_back() {
    let mut client = Decoder::new(Role::Client, 1 << 20, 1 << 20);
    for length in [0, 1, 125, 126, 0xFFFF, 0x10000] {
        let payload: Vec<u8> = (0..length).map(|index| index as u8).collect();
        let mut wire = Vec::new();
        encode_frame(&mut wire, Opcode::Binary, true, &payload, None);
        assert_eq!(wire.len(), frame_bytes(length, false));
        let decoded = client.decode(&wire).expect("valid");
        assert_eq!(decoded.consumed, wire.len());
        assert_eq!(decoded.item, Some(Incoming::Binary(payload)));
    }
    let long_reason = "é".repeat(100);
    let mut wire = Vec::new();
    encode_close(
        &mut wire,
        Some(&CloseFrame {
            code: CloseCode::NORMAL,
            reason: long_reason,
        }),
        None,
    );
    let Ok(Decoded {
        item: Some(Incoming::Close(Some(close))),
        ..
    }) = client.decode(&wire)
    else {
        panic!("expected a close frame");
    };
    // Cut to 123 bytes at a character boundary: 61 two-byte characters.
    assert_eq!(close.reason.len(), 122);
}

proptest! {
    /// Any sequence of messages, split into any fragments, masked with any key and read in any
    /// pieces, decodes back to itself.
    #[test]
    fn fragmented_masked_messages_round_trip(
        messages in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300), 1usize..64),
            1..8,
        ),
        mask in any::<[u8; 4]>(),
        piece in 1usize..97,
    ) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (text, bytes, fragment) in &messages {
            let (opcode, item) = if *text {
                let text = String::from_utf8_lossy(bytes).into_owned();
                let bytes = text.clone().into_bytes();
                (Opcode::Text, (Incoming::Text(text), bytes))
            } else {
                (Opcode::Binary, (Incoming::Binary(bytes.clone()), bytes.clone()))
            };
            let (item, payload) = item;
            let chunks: Vec<&[u8]> = if payload.is_empty() {
                vec![&[]]
            } else {
                payload.chunks(*fragment).collect()
            };
            for (index, chunk) in chunks.iter().enumerate() {
                let code = if index == 0 { opcode } else { Opcode::Continuation };
                encode_frame(&mut wire, code, index + 1 == chunks.len(), chunk, Some(mask));
            }
            expected.push(item);
        }
        let mut decoder = Decoder::new(Role::Server, 1 << 16, 1 << 16);
        prop_assert_eq!(decode_in_pieces(&mut decoder, &wire, piece), Ok(expected));
    }
}
