//! The bytes of one append to a partition's subject: the batches of that partition's objects
//! committed since its previous append, each with its object's id, in commit order.
//!
//! Layout (integers little-endian): `count: u32`, then per batch `id: [u8; 32]`,
//! `ops: u32`, then per op a tag byte and its fields: `0` put (`key_len: u32`, key,
//! `value_len: u32`, value), `1` delete (`key_len: u32`, key), `2` delete all, `3` set alarm
//! (`time_ms: i64`), `4` delete alarm. The stream's own checksums guard the bytes in transit
//! and at rest; decoding checks every length against what is left and fails on anything else.

use stead_storage::{Batch, Op};

use crate::id::ObjectId;

/// Why an append's bytes could not be read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Where in the bytes reading stopped.
    pub offset: usize,
    /// What was wrong there.
    pub reason: &'static str,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad log record at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Appends one batch of object `id` to `out` (a buffer that `finish` turns into an append).
pub fn encode_batch(out: &mut Vec<u8>, id: &ObjectId, batch: &Batch) {
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&(batch.ops().len() as u32).to_le_bytes());
    for op in batch.ops() {
        match op {
            Op::Put { key, value } => {
                out.push(0);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Op::Delete { key } => {
                out.push(1);
                put_bytes(out, key);
            }
            Op::DeleteAll => out.push(2),
            Op::SetAlarm { time_ms } => {
                out.push(3);
                out.extend_from_slice(&time_ms.to_le_bytes());
            }
            Op::DeleteAlarm => out.push(4),
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The append holding `count` batches encoded one after another in `batches`.
pub fn finish(count: u32, batches: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + batches.len());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(batches);
    out
}

/// Reads an append back into its batches, in order.
pub fn decode(bytes: &[u8]) -> Result<Vec<(ObjectId, Batch)>, DecodeError> {
    let mut reader = Reader { bytes, offset: 0 };
    let count = reader.u32()?;
    let mut batches = Vec::new();
    for _ in 0..count {
        let id: [u8; 32] = reader
            .take(32)?
            .try_into()
            .map_err(|_| reader.error("short id"))?;
        let ops = reader.u32()?;
        let mut batch = Batch::new();
        for _ in 0..ops {
            let op = match reader.take(1)?[0] {
                0 => Op::Put {
                    key: reader.sized()?.to_vec(),
                    value: reader.sized()?.to_vec(),
                },
                1 => Op::Delete {
                    key: reader.sized()?.to_vec(),
                },
                2 => Op::DeleteAll,
                3 => {
                    let time: [u8; 8] = reader
                        .take(8)?
                        .try_into()
                        .map_err(|_| reader.error("short alarm"))?;
                    Op::SetAlarm {
                        time_ms: i64::from_le_bytes(time),
                    }
                }
                4 => Op::DeleteAlarm,
                _ => return Err(reader.error("unknown op")),
            };
            batch.push(op);
        }
        batches.push((ObjectId(id), batch));
    }
    if reader.offset != bytes.len() {
        return Err(reader.error("bytes past the last batch"));
    }
    Ok(batches)
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            offset: self.offset,
            reason,
        }
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .offset
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.error("a length past the end"))?;
        let taken = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| self.error("short length"))?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn sized(&mut self) -> Result<&'a [u8], DecodeError> {
        let length = self.u32()? as usize;
        self.take(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_back_as_they_went_in() {
        let mut first = Batch::new();
        first
            .put(b"k".to_vec(), b"v".to_vec())
            .delete(b"gone".to_vec());
        first.set_alarm(-5);
        let mut second = Batch::new();
        second
            .delete_all()
            .delete_alarm()
            .put(Vec::new(), Vec::new());
        let (a, b) = (ObjectId([1; 32]), ObjectId([2; 32]));
        let mut buffer = Vec::new();
        encode_batch(&mut buffer, &a, &first);
        encode_batch(&mut buffer, &b, &second);
        let bytes = finish(2, &buffer);
        assert_eq!(decode(&bytes), Ok(vec![(a, first), (b, second)]));
    }

    #[test]
    fn damaged_bytes_are_refused_not_guessed() {
        let mut batch = Batch::new();
        batch.put(b"key".to_vec(), b"value".to_vec());
        let mut buffer = Vec::new();
        encode_batch(&mut buffer, &ObjectId([3; 32]), &batch);
        let bytes = finish(1, &buffer);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut unknown = bytes.clone();
        unknown[4 + 32 + 4] = 9;
        assert!(decode(&unknown).is_err());
        // A huge length does not allocate or overflow: it is past the end.
        let mut huge = bytes;
        huge[4 + 32 + 4 + 1..4 + 32 + 4 + 5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
    }
}
