//! The on-disk record format: record headers, encoded batches, the manifest block.
//!
//! Everything is little-endian and hand-rolled; `DESIGN.md` holds the byte layout. Decoders
//! never trust their input: every length is checked against the bytes that are there, and a
//! failure is a `DecodeError` naming what was wrong, never a panic.

use crate::{Encryption, ObjectId, Op};

/// Every write is a multiple of this, at an offset that is a multiple of this (O_DIRECT).
pub const BLOCK_BYTES: usize = 4096;
/// "STLG": marks the start of a record, so a scan can find record starts after damage.
pub const RECORD_MAGIC: u32 = 0x5354_4C47;
/// Bytes of the fixed record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// Offset of the crc inside the header; the crc covers the bytes before it and the payload.
const RECORD_CRC_OFFSET: usize = 28;
/// "STMF": marks the manifest block.
pub const MANIFEST_MAGIC: u32 = 0x5354_4D46;
/// The manifest format this build writes. Version 2 adds the overlap flag to record headers
/// (`RECORD_OVERLAPPED`); a version 1 store reads the same, and its manifest is rewritten as
/// version 2 before the first flagged record, so an older build refuses it by the version.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest manifest format this build reads.
pub const FORMAT_VERSION_MIN: u32 = 1;
/// The manifest format of an encrypted store: version 2's layout, every record's payload
/// sealed (`RECORD_ENCRYPTED`). A build without encryption refuses it by the version.
pub const FORMAT_VERSION_ENCRYPTED: u32 = 3;
/// Bit 30 of a record header's batch-count word: the payload is sealed (`cipher.rs`).
const RECORD_ENCRYPTED: u32 = 1 << 30;
/// Top bit of a record header's batch-count word: the record was written while the round
/// before it was still in flight, so that round may be missing after a crash (see
/// `DESIGN.md`, "Two rounds in flight"). Batch counts never come near it.
const RECORD_OVERLAPPED: u32 = 1 << 31;
/// Bytes of the manifest header: magic, version, payload length, crc.
const MANIFEST_HEADER_BYTES: usize = 16;
/// The largest segment id of the format, one limit for allocation, for the segment file names
/// recovery accepts and for the ids a manifest names. Index entries name a segment by a u32;
/// recovery has refused ids from `u32::MAX / 2` on since format v1, so allocation stops there
/// too rather than hand out an id the next open would refuse.
pub const SEGMENT_ID_MAX: u64 = u32::MAX as u64 / 2 - 1;
/// Bytes of a batch header: object id and op count.
pub const BATCH_HEADER_BYTES: usize = 36;
/// Bytes of a put op before its key: tag, key length, value length, value crc.
pub const PUT_HEADER_BYTES: usize = 13;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_DELETE_ALL: u8 = 3;
const TAG_SET_ALARM: u8 = 4;
const TAG_DELETE_ALARM: u8 = 5;

/// Why bytes did not decode. A plain description: the caller adds file and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Rounds `bytes` up to the next block boundary.
pub fn block_align_up(bytes: usize) -> usize {
    bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// The fixed header in front of every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header plus payload, without the padding to the block boundary.
    pub length: u32,
    /// Sequence number of the first batch of the record; the others follow consecutively.
    pub seq: u64,
    /// Id of the segment file the record was written to, so a stray block is recognised.
    pub segment: u64,
    /// How many batches the payload holds.
    pub batch_count: u32,
    /// Written while the round before it was still in flight.
    pub overlapped: bool,
    /// The payload is sealed: key id, nonce, ciphertext, tag.
    pub encrypted: bool,
}

/// A record's length without padding (what its header's `length` says), for a payload of
/// `payload_bytes` plaintext bytes.
pub fn record_length(payload_bytes: usize, encrypted: bool) -> usize {
    RECORD_HEADER_BYTES
        + payload_bytes
        + if encrypted {
            crate::cipher::OVERHEAD_BYTES
        } else {
            0
        }
}

/// The bytes of a record before its plaintext payload: the header, and for a sealed payload
/// the key id and nonce. A value's offset in its file is the record's offset plus this plus
/// its offset in the payload.
pub fn payload_start(encrypted: bool) -> usize {
    RECORD_HEADER_BYTES
        + if encrypted {
            crate::cipher::PREFIX_BYTES
        } else {
            0
        }
}

/// Builds a whole record: header, payload, zero padding to the block boundary. `overlapped`
/// marks a log record written while the previous round's write was still in flight. With
/// `encryption` the payload is sealed, with the header's first 28 bytes as associated data;
/// the crc covers the sealed bytes, so a torn write is still found before any decryption.
pub fn encode_record(
    (seq, segment): (u64, u64),
    batch_count: u32,
    overlapped: bool,
    payload: &[u8],
    encryption: Option<&Encryption>,
) -> Vec<u8> {
    let stored_bytes = payload.len()
        + if encryption.is_some() {
            crate::cipher::OVERHEAD_BYTES
        } else {
            0
        };
    let length = RECORD_HEADER_BYTES + stored_bytes;
    assert!(
        length <= u32::MAX as usize,
        "record of {length} bytes does not fit its header"
    );
    assert!(
        batch_count < RECORD_ENCRYPTED,
        "{batch_count} batches do not fit a record header"
    );
    let mut flagged_count = batch_count;
    if overlapped {
        flagged_count |= RECORD_OVERLAPPED;
    }
    if encryption.is_some() {
        flagged_count |= RECORD_ENCRYPTED;
    }
    let mut out = Vec::with_capacity(block_align_up(length));
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&(length as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&segment.to_le_bytes());
    out.extend_from_slice(&flagged_count.to_le_bytes());
    let sealed;
    let stored = match encryption {
        Some(encryption) => {
            sealed = encryption.seal(&out[..RECORD_CRC_OFFSET], payload);
            sealed.as_slice()
        }
        None => payload,
    };
    debug_assert_eq!(stored.len(), stored_bytes);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[..RECORD_CRC_OFFSET]);
    hasher.update(stored);
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(stored);
    out.resize(block_align_up(length), 0);
    debug_assert_eq!(out.len() % BLOCK_BYTES, 0);
    out
}

/// Verifies the record starting at `bytes[0]` and returns its header and payload.
pub fn decode_record(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), DecodeError> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(DecodeError(format!(
            "only {} bytes left, a header needs 32",
            bytes.len()
        )));
    }
    let magic = read_u32(bytes, 0);
    if magic != RECORD_MAGIC {
        return Err(DecodeError(format!("bad magic {magic:#010x}")));
    }
    let length = read_u32(bytes, 4) as usize;
    if length < RECORD_HEADER_BYTES || length > bytes.len() {
        return Err(DecodeError(format!(
            "record length {length} outside 32..={} available",
            bytes.len()
        )));
    }
    let stored_crc = read_u32(bytes, RECORD_CRC_OFFSET);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..RECORD_CRC_OFFSET]);
    hasher.update(&bytes[RECORD_HEADER_BYTES..length]);
    let crc = hasher.finalize();
    if crc != stored_crc {
        return Err(DecodeError(format!(
            "crc {crc:#010x} does not match stored {stored_crc:#010x}"
        )));
    }
    let flagged_count = read_u32(bytes, 24);
    let header = RecordHeader {
        length: length as u32,
        seq: read_u64(bytes, 8),
        segment: read_u64(bytes, 16),
        batch_count: flagged_count & !(RECORD_OVERLAPPED | RECORD_ENCRYPTED),
        overlapped: flagged_count & RECORD_OVERLAPPED != 0,
        encrypted: flagged_count & RECORD_ENCRYPTED != 0,
    };
    Ok((header, &bytes[RECORD_HEADER_BYTES..length]))
}

/// Why a record's payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// The tag does not match: damage, like a bad crc.
    Damaged(DecodeError),
    /// Not damage: the store was not given the key that sealed it, or the record is of the
    /// other kind than the store's. Recovery stops rather than cut anything.
    Refused(String),
}

/// The plaintext payload of the record at the start of `bytes`, whose header and stored
/// payload `decode_record` returned: as stored for a plain record, opened for a sealed one.
pub fn open_payload<'a>(
    bytes: &[u8],
    (header, stored): (&RecordHeader, &'a [u8]),
    encryption: Option<&Encryption>,
) -> Result<std::borrow::Cow<'a, [u8]>, PayloadError> {
    match (header.encrypted, encryption) {
        (false, None) => Ok(std::borrow::Cow::Borrowed(stored)),
        (true, Some(encryption)) => encryption
            .open(&bytes[..RECORD_CRC_OFFSET], stored)
            .map(std::borrow::Cow::Owned)
            .map_err(|error| match error {
                crate::OpenError::UnknownKey(id) => PayloadError::Refused(format!(
                    "a record is sealed under key id {id:016x}, which is not in the key file \
                     (a key that was removed, or the wrong file)"
                )),
                crate::OpenError::Damaged => PayloadError::Damaged(DecodeError(
                    "its payload does not authenticate (damaged)".to_string(),
                )),
            }),
        (true, None) => Err(PayloadError::Refused(
            "an encrypted record in a store opened without a key".to_string(),
        )),
        (false, Some(_)) => Err(PayloadError::Refused(
            "a plain record in an encrypted store".to_string(),
        )),
    }
}

/// The exact encoded size of a batch, computed before encoding so limits are checked cheaply.
pub fn batch_encoded_bytes(ops: &[Op]) -> usize {
    BATCH_HEADER_BYTES + ops.iter().map(op_encoded_bytes).sum::<usize>()
}

/// The encoded size of one op.
pub fn op_encoded_bytes(op: &Op) -> usize {
    match op {
        Op::Put { key, value } => PUT_HEADER_BYTES + key.len() + value.len(),
        Op::Delete { key } => 5 + key.len(),
        Op::DeleteAll | Op::DeleteAlarm => 1,
        Op::SetAlarm { .. } => 9,
    }
}

/// Appends the encoding of one batch to `out`. For every put, `on_put` learns the value's
/// offset inside `out` and its crc, so the caller can later locate the value on disk.
pub fn encode_batch(
    out: &mut Vec<u8>,
    object: &ObjectId,
    ops: &[Op],
    mut on_put: impl FnMut(usize, u32),
) {
    assert!(ops.len() <= u32::MAX as usize);
    out.extend_from_slice(object);
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        match op {
            Op::Put { key, value } => {
                let crc = crc32fast::hash(value);
                out.push(TAG_PUT);
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(&crc.to_le_bytes());
                out.extend_from_slice(key);
                on_put(out.len(), crc);
                out.extend_from_slice(value);
            }
            Op::Delete { key } => {
                out.push(TAG_DELETE);
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
            }
            Op::DeleteAll => out.push(TAG_DELETE_ALL),
            Op::SetAlarm { time_ms } => {
                out.push(TAG_SET_ALARM);
                out.extend_from_slice(&time_ms.to_le_bytes());
            }
            Op::DeleteAlarm => out.push(TAG_DELETE_ALARM),
        }
    }
}

/// One op as decoded from a payload, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodedOp<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
        /// Offset of the value inside the payload it was decoded from.
        value_offset: usize,
        value_crc: u32,
    },
    Delete {
        key: &'a [u8],
    },
    DeleteAll,
    SetAlarm {
        time_ms: i64,
    },
    DeleteAlarm,
}

/// Reads payloads batch by batch; `next_batch` checks every length and every value crc.
pub struct PayloadReader<'a> {
    /// The whole payload of one record.
    payload: &'a [u8],
    /// Where the next unread byte is.
    position: usize,
}

impl<'a> PayloadReader<'a> {
    pub fn new(payload: &'a [u8]) -> PayloadReader<'a> {
        PayloadReader {
            payload,
            position: 0,
        }
    }

    /// True once every byte has been consumed.
    pub fn is_done(&self) -> bool {
        self.position == self.payload.len()
    }

    /// Decodes the next batch, pushing its ops onto `ops` (cleared first).
    pub fn next_batch(&mut self, ops: &mut Vec<DecodedOp<'a>>) -> Result<ObjectId, DecodeError> {
        ops.clear();
        let object_bytes = self.take(32)?;
        let mut object = [0u8; 32];
        object.copy_from_slice(object_bytes);
        let count = self.take_u32()? as usize;
        // Every op takes at least one byte, which bounds the count before anything is reserved.
        if count > self.payload.len() - self.position {
            return Err(DecodeError(format!(
                "op count {count} exceeds the bytes left"
            )));
        }
        for _ in 0..count {
            let tag = self.take(1)?[0];
            let op = match tag {
                TAG_PUT => {
                    let key_len = self.take_u32()? as usize;
                    let value_len = self.take_u32()? as usize;
                    let value_crc = self.take_u32()?;
                    let key = self.take(key_len)?;
                    let value_offset = self.position;
                    let value = self.take(value_len)?;
                    if crc32fast::hash(value) != value_crc {
                        return Err(DecodeError(format!(
                            "value crc mismatch at payload offset {value_offset}"
                        )));
                    }
                    DecodedOp::Put {
                        key,
                        value,
                        value_offset,
                        value_crc,
                    }
                }
                TAG_DELETE => {
                    let key_len = self.take_u32()? as usize;
                    DecodedOp::Delete {
                        key: self.take(key_len)?,
                    }
                }
                TAG_DELETE_ALL => DecodedOp::DeleteAll,
                TAG_SET_ALARM => {
                    let bytes = self.take(8)?;
                    DecodedOp::SetAlarm {
                        time_ms: i64::from_le_bytes(to_array(bytes)),
                    }
                }
                TAG_DELETE_ALARM => DecodedOp::DeleteAlarm,
                other => return Err(DecodeError(format!("unknown op tag {other}"))),
            };
            ops.push(op);
        }
        Ok(object)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .position
            .checked_add(len)
            .filter(|end| *end <= self.payload.len());
        match end {
            Some(end) => {
                let bytes = &self.payload[self.position..end];
                self.position = end;
                Ok(bytes)
            }
            None => Err(DecodeError(format!(
                "{len} bytes wanted at payload offset {}, only {} left",
                self.position,
                self.payload.len() - self.position
            ))),
        }
    }

    fn take_u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(to_array(self.take(4)?)))
    }
}

/// What the manifest says: which files make up the store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestData {
    /// Log segments with a smaller id are replaced by the base segments and are garbage.
    pub log_start: u64,
    /// The compacted base segments, replayed before the log, in ascending id order.
    pub base_segments: Vec<u64>,
    /// Every record of the store is sealed (format version 3).
    pub encrypted: bool,
}

/// Encodes the manifest into whole blocks.
pub fn encode_manifest(manifest: &ManifestData) -> Vec<u8> {
    let mut payload = Vec::with_capacity(12 + 8 * manifest.base_segments.len());
    payload.extend_from_slice(&manifest.log_start.to_le_bytes());
    payload.extend_from_slice(&(manifest.base_segments.len() as u32).to_le_bytes());
    for id in &manifest.base_segments {
        payload.extend_from_slice(&id.to_le_bytes());
    }
    let mut out = Vec::with_capacity(block_align_up(MANIFEST_HEADER_BYTES + payload.len()));
    out.extend_from_slice(&MANIFEST_MAGIC.to_le_bytes());
    let version = if manifest.encrypted {
        FORMAT_VERSION_ENCRYPTED
    } else {
        FORMAT_VERSION
    };
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[4..12]);
    hasher.update(&payload);
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&payload);
    out.resize(block_align_up(out.len()), 0);
    out
}

/// Why a manifest did not decode: damaged, or from a format this build does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    Damaged(String),
    UnknownVersion(u32),
}

/// Decodes and verifies a manifest block; returns its format version and contents.
pub fn decode_manifest(bytes: &[u8]) -> Result<(u32, ManifestData), ManifestError> {
    let damaged = |why: String| ManifestError::Damaged(why);
    if bytes.len() < MANIFEST_HEADER_BYTES {
        return Err(damaged(format!(
            "{} bytes, the header alone needs 16",
            bytes.len()
        )));
    }
    if read_u32(bytes, 0) != MANIFEST_MAGIC {
        return Err(damaged(format!("bad magic {:#010x}", read_u32(bytes, 0))));
    }
    let version = read_u32(bytes, 4);
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_ENCRYPTED).contains(&version) {
        return Err(ManifestError::UnknownVersion(version));
    }
    let length = read_u32(bytes, 8) as usize;
    if length < 12 || MANIFEST_HEADER_BYTES + length > bytes.len() {
        return Err(damaged(format!("payload length {length} does not fit")));
    }
    let payload = &bytes[MANIFEST_HEADER_BYTES..MANIFEST_HEADER_BYTES + length];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[4..12]);
    hasher.update(payload);
    if hasher.finalize() != read_u32(bytes, 12) {
        return Err(damaged("crc mismatch".to_string()));
    }
    let log_start = read_u64(payload, 0);
    let count = read_u32(payload, 8) as usize;
    if 12 + count * 8 != length {
        return Err(damaged(format!(
            "{count} base segments do not fill {length} bytes"
        )));
    }
    let base_segments: Vec<u64> = (0..count).map(|i| read_u64(payload, 12 + 8 * i)).collect();
    let ids = std::iter::once(&log_start).chain(&base_segments);
    if let Some(id) = ids.into_iter().find(|id| **id > SEGMENT_ID_MAX) {
        return Err(damaged(format!(
            "segment id {id} is above the largest the format allows, {SEGMENT_ID_MAX}"
        )));
    }
    Ok((
        version,
        ManifestData {
            log_start,
            base_segments,
            encrypted: version == FORMAT_VERSION_ENCRYPTED,
        },
    ))
}

fn to_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(bytes);
    array
}

/// Reads a little-endian u32; the caller has checked that the bytes are there.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(to_array(&bytes[at..at + 4]))
}

/// Reads a little-endian u64; the caller has checked that the bytes are there.
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(to_array(&bytes[at..at + 8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_batch_roundtrip() {
        let ops = vec![
            Op::Put {
                key: b"k".to_vec(),
                value: b"value".to_vec(),
            },
            Op::Delete {
                key: b"gone".to_vec(),
            },
            Op::DeleteAll,
            Op::SetAlarm { time_ms: -5 },
            Op::DeleteAlarm,
        ];
        let mut payload = Vec::new();
        let mut puts = Vec::new();
        encode_batch(&mut payload, &[7u8; 32], &ops, |offset, crc| {
            puts.push((offset, crc))
        });
        assert_eq!(payload.len(), batch_encoded_bytes(&ops));
        let record = encode_record((9, 3), 1, false, &payload, None);
        assert_eq!(record.len(), BLOCK_BYTES);
        let (header, decoded) = decode_record(&record).expect("record verifies");
        assert_eq!(header.seq, 9);
        assert_eq!(header.segment, 3);
        let mut reader = PayloadReader::new(decoded);
        let mut decoded_ops = Vec::new();
        assert_eq!(reader.next_batch(&mut decoded_ops), Ok([7u8; 32]));
        assert!(reader.is_done());
        assert_eq!(decoded_ops.len(), 5);
        match decoded_ops[0] {
            DecodedOp::Put {
                key,
                value,
                value_offset,
                value_crc,
            } => {
                assert_eq!((key, value), (&b"k"[..], &b"value"[..]));
                assert_eq!((value_offset, value_crc), puts[0]);
            }
            other => panic!("expected a put, got {other:?}"),
        }
        assert_eq!(decoded_ops[3], DecodedOp::SetAlarm { time_ms: -5 });
    }

    #[test]
    fn overlap_flag_roundtrips_apart_from_the_batch_count() {
        for overlapped in [false, true] {
            let record = encode_record((7, 2), 3, overlapped, b"abc", None);
            let (header, payload) = decode_record(&record).expect("decodes");
            assert_eq!(header.batch_count, 3);
            assert_eq!(header.overlapped, overlapped);
            assert_eq!(payload, b"abc");
        }
    }

    #[test]
    fn damaged_record_is_rejected() {
        let mut record = encode_record((1, 1), 0, false, b"", None);
        record[30] ^= 1;
        assert!(decode_record(&record).is_err());
        assert!(decode_record(&record[..10]).is_err());
    }

    #[test]
    fn manifest_roundtrip_and_version() {
        let manifest = ManifestData {
            log_start: 12,
            base_segments: vec![3, 4],
            encrypted: false,
        };
        let mut bytes = encode_manifest(&manifest);
        assert_eq!(decode_manifest(&bytes), Ok((FORMAT_VERSION, manifest)));
        bytes[4] = 9;
        assert_eq!(
            decode_manifest(&bytes),
            Err(ManifestError::UnknownVersion(9))
        );
    }
}
