//! The index checkpoint: the state the base segments hold, written by compaction after its
//! manifest switch, so recovery can load it instead of replaying the bases.
//!
//! It holds exactly what replaying the base segments would put in the index (every key with
//! where its value is, small values themselves, every alarm), the sizes of those segments, and
//! the manifest it belongs to. Recovery uses it only when it names the manifest in force, its
//! checksum and version match, and everything in it points inside files that exist; then it
//! replays only the log on top of it. Anything else is logged and recovery replays the bases
//! as if no checkpoint existed: a checkpoint saves time and never decides what is stored.
//!
//! The payload is an rkyv archive read with checked access (bytecheck validates every offset
//! and length inside it), so a damaged file can be refused but never misread. Its layout is
//! columnar (flat vectors of fixed-size items), so the check costs a bounds test per vector.

use std::rc::Rc;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::index::{Entry, Index, ObjectState};
use super::io_error;
use super::keys::KeyMap;
use super::segments::CHECKPOINT_TMP_NAME;
use super::segments::{segment_file_name, Segment, SegmentKind, CHECKPOINT_NAME};
use crate::codec::{ManifestData, BLOCK_BYTES, PUT_HEADER_BYTES};
use crate::{Disk, DiskFile, ObjectId, StoreError};

/// `KCTS` on disk.
pub const CHECKPOINT_MAGIC: u32 = 0x5354_434B;
/// The checkpoint's own format version, independent of the store's: a checkpoint of another
/// version is ignored (and replaced by the next compaction), never an error.
pub const CHECKPOINT_VERSION: u32 = 1;
/// The header takes one whole block, so the payload starts block-aligned and is written
/// straight from the serializer's buffer.
const HEADER_BYTES: usize = BLOCK_BYTES;
/// Largest payload written or read. rkyv's relative pointers are 32-bit (2 GiB); a store past
/// this (some 28 M keys of 16 bytes) gets no checkpoint and replays its bases at open.
pub const CHECKPOINT_PAYLOAD_BYTES_MAX: usize = 1 << 30;
/// The payload is written and read in pieces of this size (the real disk copies each write
/// into a DMA buffer of its length).
const IO_CHUNK_BYTES: usize = 8 << 20;

/// The archived contents. Object `n`'s keys are `entries[objects[n-1].keys_end ..
/// objects[n].keys_end]`; key `k`'s bytes are `key_bytes[key_ends[k-1] .. key_ends[k]]`.
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Default)]
pub struct CheckpointData {
    /// The manifest this checkpoint belongs to: its log start and base segments.
    pub log_start: u64,
    pub base_segments: Vec<CheckpointSegment>,
    /// The sequence number the base records carry (the seal's), 0 when there are none: the
    /// log replayed on top starts after it.
    pub seal_seq: u64,
    /// Values up to this length are in `value_bytes`; recovery under another setting replays.
    pub inline_value_bytes_max: u64,
    /// Sorted by id.
    pub objects: Vec<CheckpointObject>,
    pub key_ends: Vec<u32>,
    pub key_bytes: Vec<u8>,
    /// One per key, in key order within each object.
    pub entries: Vec<CheckpointEntry>,
    pub value_bytes: Vec<u8>,
}

/// A base segment as recovery would have found it.
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Clone, Copy)]
pub struct CheckpointSegment {
    pub id: u64,
    /// The file's length: its records, padded.
    pub written_bytes: u64,
    /// Its records' lengths without padding (the dead-byte accounting).
    pub record_bytes: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
pub struct CheckpointObject {
    pub id: [u8; 32],
    /// One past the object's last entry in `entries`.
    pub keys_end: u32,
    pub alarm_ms: Option<i64>,
}

/// A value's place: in a base segment (`offset` in the file) when longer than the inline
/// limit, otherwise in `value_bytes` (`offset` there).
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Clone, Copy)]
pub struct CheckpointEntry {
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
    pub crc: u32,
}

/// Gathers the checkpoint while compaction writes its base records, in the same order.
pub struct CheckpointBuilder {
    data: CheckpointData,
    inline_max: usize,
    /// Entries before this one know their base segment and file offset; the rest wait for
    /// their record to be written.
    placed: usize,
    /// Set once the checkpoint outgrew `CHECKPOINT_PAYLOAD_BYTES_MAX`; it is then not written.
    oversized: bool,
}

impl CheckpointBuilder {
    pub fn new(inline_max: usize) -> CheckpointBuilder {
        CheckpointBuilder {
            data: CheckpointData {
                inline_value_bytes_max: inline_max as u64,
                ..CheckpointData::default()
            },
            inline_max,
            placed: 0,
            oversized: false,
        }
    }

    fn object(&mut self, id: &ObjectId) -> &mut CheckpointObject {
        let keys_end = self.data.entries.len() as u32;
        if self.data.objects.last().is_none_or(|last| last.id != *id) {
            debug_assert!(self.data.objects.last().is_none_or(|last| last.id < *id));
            self.data.objects.push(CheckpointObject {
                id: *id,
                keys_end,
                alarm_ms: None,
            });
        }
        let Some(last) = self.data.objects.last_mut() else {
            unreachable!("pushed above")
        };
        last
    }

    /// A put copied into a base batch; its place is filled in by `place_next`.
    pub fn put(&mut self, object: &ObjectId, key: &[u8], value: &[u8], crc: u32) {
        if self.oversized {
            return;
        }
        let data = &mut self.data;
        data.key_bytes.extend_from_slice(key);
        data.key_ends.push(data.key_bytes.len() as u32);
        let offset = if value.len() <= self.inline_max {
            let offset = data.value_bytes.len() as u32;
            data.value_bytes.extend_from_slice(value);
            offset
        } else {
            0
        };
        data.entries.push(CheckpointEntry {
            segment: 0,
            offset,
            len: value.len() as u32,
            crc,
        });
        let keys_end = data.entries.len() as u32;
        self.object(object).keys_end = keys_end;
        let bytes = self.data.key_bytes.len()
            + self.data.value_bytes.len()
            + self.data.entries.len() * (4 + size_of::<CheckpointEntry>());
        if bytes > CHECKPOINT_PAYLOAD_BYTES_MAX {
            // Not written, so not kept either: compaction goes on without the copy.
            self.oversized = true;
            self.data = CheckpointData::default();
        }
    }

    pub fn alarm(&mut self, object: &ObjectId, time_ms: i64) {
        if self.oversized {
            return;
        }
        self.object(object).alarm_ms = Some(time_ms);
    }

    /// The next put in order was written to `segment` with its value at `offset` in the file.
    pub fn place_next(&mut self, segment: u32, offset: u32) {
        if self.oversized {
            return;
        }
        let Some(entry) = self.data.entries.get_mut(self.placed) else {
            unreachable!("every put written was recorded")
        };
        entry.segment = segment;
        if entry.len as usize > self.inline_max {
            entry.offset = offset;
        }
        self.placed += 1;
    }

    /// The finished contents, or `None` if they outgrew the limit.
    pub fn finish(
        mut self,
        manifest: &ManifestData,
        segments: Vec<CheckpointSegment>,
        seal_seq: u64,
    ) -> Option<CheckpointData> {
        if self.oversized {
            tracing::info!(
                "index checkpoint over {CHECKPOINT_PAYLOAD_BYTES_MAX} bytes; not written, the \
                 next open replays the base segments"
            );
            return None;
        }
        assert_eq!(self.placed, self.data.entries.len(), "every put was placed");
        self.data.log_start = manifest.log_start;
        self.data.seal_seq = if segments.is_empty() { 0 } else { seal_seq };
        self.data.base_segments = segments;
        Some(self.data)
    }
}

/// Writes the checkpoint: `CHECKPOINT.tmp`, fdatasync, rename over `CHECKPOINT`, directory
/// fsync. A crash leaves the old checkpoint or the new one, each checksummed. A failed write,
/// fdatasync, rename or directory fsync is an I/O error, which poisons the store like any
/// other (the device is not to be trusted with the next write either); a payload rkyv cannot
/// serialize is logged and not written.
///
/// The archive is serialized and checksummed on glommio's blocking thread pool: for millions
/// of keys that is a step of a second or more with nothing to yield at, which would stall
/// every other task of the core.
pub async fn write(disk: &dyn Disk, data: CheckpointData) -> Result<(), StoreError> {
    let encoded = glommio::executor()
        .spawn_blocking(move || encode(&data))
        .await;
    let (header, payload) = match encoded {
        Ok(encoded) => encoded,
        Err(reason) => {
            tracing::warn!(%reason, "index checkpoint not serialized; the next open replays the bases");
            return Ok(());
        }
    };
    let tmp = CHECKPOINT_TMP_NAME;
    let file = super::manifest::create_empty(disk, tmp).await?;
    write_all(&*file, 0, &header).await?;
    let mut offset = HEADER_BYTES;
    for chunk in payload.chunks(IO_CHUNK_BYTES) {
        if chunk.len() % BLOCK_BYTES == 0 {
            write_all(&*file, offset as u64, chunk).await?;
        } else {
            let mut padded = chunk.to_vec();
            padded.resize(crate::codec::block_align_up(chunk.len()), 0);
            write_all(&*file, offset as u64, &padded).await?;
        }
        offset += chunk.len();
    }
    super::manifest::install(disk, file, tmp, CHECKPOINT_NAME).await
}

/// The header block and the payload of a checkpoint file.
fn encode(data: &CheckpointData) -> Result<(Vec<u8>, AlignedVec), String> {
    let payload = rkyv::to_bytes::<rancor::Error>(data).map_err(|error| error.to_string())?;
    let mut header = vec![0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..16]);
    crc.update(&payload);
    header[16..20].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok((header, payload))
}

async fn write_all(file: &dyn DiskFile, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
    let written = file
        .write_at(offset, bytes)
        .await
        .map_err(|source| io_error("write", file.name(), source))?;
    if written != bytes.len() {
        let short = std::io::Error::other(format!("short write: {written} of {}", bytes.len()));
        return Err(io_error("write", file.name(), short));
    }
    Ok(())
}

/// What recovery takes from a checkpoint that matches.
pub struct Loaded {
    pub index: Index,
    /// The base segments, open, with the sizes replay would have found.
    pub segments: Vec<(u64, Segment)>,
    /// The sequence number the base records carry.
    pub seal_seq: u64,
}

/// Loads the checkpoint if it belongs to `manifest` and verifies; otherwise logs why not and
/// returns `None`, and recovery replays the base segments.
pub async fn load(disk: &dyn Disk, manifest: &ManifestData, inline_max: usize) -> Option<Loaded> {
    match try_load(disk, manifest, inline_max).await {
        Ok(loaded) => Some(loaded),
        Err(reason) => {
            tracing::warn!(%reason, "index checkpoint not used; replaying the base segments");
            None
        }
    }
}

async fn try_load(
    disk: &dyn Disk,
    manifest: &ManifestData,
    inline_max: usize,
) -> Result<Loaded, String> {
    let file = disk
        .open_file(CHECKPOINT_NAME, false)
        .await
        .map_err(|error| format!("open: {error}"))?;
    let length = file.len().await.map_err(|error| format!("stat: {error}"))?;
    let header = file
        .read_at(0, HEADER_BYTES)
        .await
        .map_err(|error| format!("read: {error}"))?;
    if header.len() < 20 {
        return Err(format!("{length} bytes, shorter than its header"));
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if word(0) != CHECKPOINT_MAGIC {
        return Err(format!("magic {:#010x}", word(0)));
    }
    if word(4) != CHECKPOINT_VERSION {
        return Err(format!(
            "version {}, this build reads {CHECKPOINT_VERSION}",
            word(4)
        ));
    }
    let payload_bytes = u64::from(word(8)) | (u64::from(word(12)) << 32);
    if payload_bytes > CHECKPOINT_PAYLOAD_BYTES_MAX as u64
        || HEADER_BYTES as u64 + payload_bytes > length
    {
        return Err(format!(
            "payload of {payload_bytes} bytes in a file of {length}"
        ));
    }
    let payload_bytes = payload_bytes as usize;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..16]);
    let mut payload = AlignedVec::<16>::with_capacity(payload_bytes);
    while payload.len() < payload_bytes {
        let want = (payload_bytes - payload.len()).min(IO_CHUNK_BYTES);
        let offset = (HEADER_BYTES + payload.len()) as u64;
        let chunk = file
            .read_at(offset, want)
            .await
            .map_err(|error| format!("read at {offset}: {error}"))?;
        if chunk.len() != want {
            return Err(format!("read {} of {want} bytes at {offset}", chunk.len()));
        }
        crc.update(&chunk);
        payload.extend_from_slice(&chunk);
    }
    if crc.finalize() != word(16) {
        return Err("checksum does not match".to_string());
    }
    let archived = rkyv::access::<ArchivedCheckpointData, rancor::Error>(&payload)
        .map_err(|error| format!("archive does not validate: {error}"))?;

    let base_ids: Vec<u64> = archived
        .base_segments
        .iter()
        .map(|segment| segment.id.to_native())
        .collect();
    if archived.log_start.to_native() != manifest.log_start || base_ids != manifest.base_segments {
        return Err(format!(
            "written for log start {} and bases {base_ids:?}, the manifest has {} and {:?}",
            archived.log_start.to_native(),
            manifest.log_start,
            manifest.base_segments
        ));
    }
    if archived.inline_value_bytes_max.to_native() != inline_max as u64 {
        return Err(format!(
            "written with inline_value_bytes_max {}, configured {inline_max}",
            archived.inline_value_bytes_max.to_native()
        ));
    }
    let mut segments = Vec::with_capacity(base_ids.len());
    let mut sizes: Vec<(u32, u64)> = Vec::with_capacity(base_ids.len());
    for segment in archived.base_segments.iter() {
        let id = segment.id.to_native();
        let name = segment_file_name(SegmentKind::Base, id);
        let file = disk
            .open_file(&name, false)
            .await
            .map_err(|error| format!("open {name}: {error}"))?;
        let length = file
            .len()
            .await
            .map_err(|error| format!("stat {name}: {error}"))?;
        let written_bytes = segment.written_bytes.to_native();
        if length != written_bytes {
            return Err(format!(
                "{name} has {length} bytes, the checkpoint says {written_bytes}"
            ));
        }
        sizes.push((id as u32, written_bytes));
        segments.push((
            id,
            Segment {
                kind: SegmentKind::Base,
                file: Rc::clone(&file),
                written_bytes,
                record_bytes: segment.record_bytes.to_native(),
            },
        ));
    }
    let index = build_index(archived, &sizes, inline_max)?;
    Ok(Loaded {
        index,
        segments,
        seal_seq: archived.seal_seq.to_native(),
    })
}

/// Rebuilds the index from the archive, checking every offset against what it points into.
fn build_index(
    archived: &ArchivedCheckpointData,
    sizes: &[(u32, u64)],
    inline_max: usize,
) -> Result<Index, String> {
    // Live bytes per base segment (as `sizes`), summed here rather than charged key by key
    // through the index's map; consecutive keys mostly share a segment, so the last one found
    // is tried first.
    let mut live = vec![0u64; sizes.len()];
    let mut current = 0;
    let entries = archived.entries.as_slice();
    let key_ends = archived.key_ends.as_slice();
    let key_bytes = archived.key_bytes.as_slice();
    let value_bytes = archived.value_bytes.as_slice();
    if key_ends.len() != entries.len() {
        return Err(format!(
            "{} keys for {} entries",
            key_ends.len(),
            entries.len()
        ));
    }
    let mut index = Index::default();
    index.objects.reserve(archived.objects.len());
    let mut key_start = 0usize;
    let mut entry_start = 0usize;
    for object in archived.objects.iter() {
        let entry_end = object.keys_end.to_native() as usize;
        if entry_end < entry_start || entry_end > entries.len() {
            return Err(format!(
                "object keys end at {entry_end}, after {entry_start}"
            ));
        }
        let mut keys: Vec<(Box<[u8]>, Entry)> = Vec::with_capacity(entry_end - entry_start);
        for at in entry_start..entry_end {
            let key_end = key_ends[at].to_native() as usize;
            let Some(key) = key_bytes.get(key_start..key_end) else {
                return Err(format!("key {at} at {key_start}..{key_end}"));
            };
            key_start = key_end;
            if keys.last().is_some_and(|(last, _)| **last >= *key) {
                return Err(format!("key {at} out of order"));
            }
            let entry = &entries[at];
            let (segment, offset, len, crc) = (
                entry.segment.to_native(),
                entry.offset.to_native(),
                entry.len.to_native(),
                entry.crc.to_native(),
            );
            let end = u64::from(offset) + u64::from(len);
            if sizes.get(current).is_none_or(|(id, _)| *id != segment) {
                let Some(found) = sizes.iter().position(|(id, _)| *id == segment) else {
                    return Err(format!("key {at} in segment {segment}, not a base"));
                };
                current = found;
            }
            let file_bytes = sizes[current].1;
            live[current] += (PUT_HEADER_BYTES + key.len() + len as usize) as u64;
            let entry = if len as usize > inline_max {
                if end > file_bytes {
                    return Err(format!("value of key {at} ends at {end}, past its file"));
                }
                // Only a plain store has a checkpoint, and its reads need no record start.
                Entry::OnDisk {
                    segment,
                    record: 0,
                    offset,
                    len,
                    crc,
                }
            } else {
                let Some(value) = value_bytes.get(offset as usize..end as usize) else {
                    return Err(format!("inline value of key {at} at {offset}..{end}"));
                };
                Entry::Inline {
                    value: value.into(),
                    segment,
                }
            };
            keys.push((key.into(), entry));
        }
        entry_start = entry_end;
        let alarm_ms = object.alarm_ms.as_ref().map(|time| time.to_native());
        if keys.is_empty() && alarm_ms.is_none() {
            return Err("an object with neither keys nor alarm".to_string());
        }
        let state = ObjectState {
            keys: KeyMap::from_sorted(keys),
            alarm_ms,
        };
        if !index.insert_object(object.id, state) {
            return Err("an object listed twice".to_string());
        }
    }
    if entry_start != entries.len() {
        return Err(format!(
            "{} entries belong to no object",
            entries.len() - entry_start
        ));
    }
    for ((segment, _), live) in sizes.iter().zip(live) {
        if live > 0 {
            index.live_bytes.insert(*segment, live);
        }
    }
    Ok(index)
}
