//! Arbitrary bytes through the storage engine's decoders: a record, the batches of a payload
//! and a manifest. None may panic; whatever decodes must encode back to the same bytes, so the
//! decoder accepts exactly what the encoder writes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stead_storage::codec::{
    decode_manifest, decode_record, encode_batch, encode_manifest, encode_record, DecodedOp,
    PayloadReader, FORMAT_VERSION, RECORD_HEADER_BYTES,
};
use stead_storage::Op;

fuzz_target!(|data: &[u8]| {
    // A sealed record re-encodes under a new random nonce: only plain ones are compared.
    if let Some((header, payload)) = decode_record(data).ok().filter(|(h, _)| !h.encrypted) {
        let length = header.length as usize;
        assert_eq!(length, RECORD_HEADER_BYTES + payload.len());
        let encoded = encode_record(
            (header.seq, header.segment),
            header.batch_count,
            header.overlapped,
            payload,
            None,
        );
        assert_eq!(&encoded[..length], &data[..length], "record does not re-encode");
        assert!(encoded[length..].iter().all(|byte| *byte == 0), "padding is zeros");
    }

    // Batches straight from the input: the record crc would otherwise hide the payload decoder
    // from almost every input.
    let mut reader = PayloadReader::new(data);
    let mut ops = Vec::new();
    let mut consumed = 0;
    while !reader.is_done() {
        let Ok(object) = reader.next_batch(&mut ops) else {
            break;
        };
        let owned: Vec<Op> = ops.iter().map(|op| to_op(data, op)).collect();
        let mut encoded = Vec::new();
        let mut puts = Vec::new();
        encode_batch(&mut encoded, &object, &owned, |offset, crc| {
            puts.push((consumed + offset, crc))
        });
        let end = consumed + encoded.len();
        assert_eq!(&data[consumed..end], &encoded[..], "batch does not re-encode");
        let decoded_puts = ops.iter().filter_map(|op| match *op {
            DecodedOp::Put {
                value_offset,
                value_crc,
                ..
            } => Some((value_offset, value_crc)),
            _ => None,
        });
        assert!(decoded_puts.eq(puts), "put values located where the encoder put them");
        consumed = end;
    }

    if let Ok((version, manifest)) = decode_manifest(data) {
        let encoded = encode_manifest(&manifest);
        // An older version's manifest re-encodes as the current version, with the same data.
        if version == FORMAT_VERSION {
            let length = 16 + 12 + 8 * manifest.base_segments.len();
            assert_eq!(&encoded[..length], &data[..length], "manifest does not re-encode");
        }
        assert_eq!(
            decode_manifest(&encoded),
            Ok((FORMAT_VERSION, manifest)),
            "manifest does not round-trip"
        );
    }
});

/// The op a decoded op stands for; a put's value must sit where the decoder says it does.
fn to_op(payload: &[u8], op: &DecodedOp<'_>) -> Op {
    match *op {
        DecodedOp::Put {
            key,
            value,
            value_offset,
            ..
        } => {
            assert_eq!(&payload[value_offset..value_offset + value.len()], value);
            Op::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            }
        }
        DecodedOp::Delete { key } => Op::Delete { key: key.to_vec() },
        DecodedOp::DeleteAll => Op::DeleteAll,
        DecodedOp::SetAlarm { time_ms } => Op::SetAlarm { time_ms },
        DecodedOp::DeleteAlarm => Op::DeleteAlarm,
    }
}
