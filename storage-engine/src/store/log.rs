//! The group-commit writer: one background task per store that turns queued batches into
//! records, one record per round, each written with one durable write (`write_durable_at`,
//! O_DSYNC) into blocks of the segment that `prepare` zero-filled and synced beforehand, so a
//! round changes no file metadata and costs the device one write and its flush.
//!
//! There is no timer: while a write is in flight, new commits queue up, and the next round
//! takes all of them at once. A failed or short write poisons the store: every queued batch
//! fails, nothing is retried.

use std::rc::{Rc, Weak};
use std::time::Instant;

use super::durable::Signal;
use super::index::Entry;
use super::poison::poison;
use super::prepare;
use super::segments::{segment_file_name, Segment, SegmentKind};
use super::{compaction, io_error, Inner};
use crate::codec::{self, RECORD_HEADER_BYTES};
use crate::{DiskFile, ObjectId, StoreError};

/// A round takes queued batches until their encoded bytes pass this (always at least one).
const GROUP_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A large value waiting for its write, so the index can point at it on disk afterwards.
pub struct LargeValue {
    pub key: Box<[u8]>,
    /// The version the index holds; the switch happens only if the index still holds it.
    pub value: Rc<[u8]>,
    /// Where the value starts inside the encoded batch.
    pub offset_in_batch: u32,
    pub crc: u32,
}

/// A committed batch waiting for the writer.
pub struct PendingBatch {
    pub seq: u64,
    /// The log segment the commit assigned it to; a round never spans two segments.
    pub segment: u64,
    pub object: ObjectId,
    /// The batch as it goes into the record payload.
    pub encoded: Vec<u8>,
    pub large_values: Vec<LargeValue>,
}

/// The log segment currently appended to.
pub struct Writer {
    pub segment: u64,
    pub file: Rc<dyn DiskFile>,
    /// Where the next record starts: the end of the last durable record, block-aligned.
    pub offset: u64,
    /// Every byte below this is durable on disk, the file's size included: zeros the
    /// preparer wrote and synced, or records. A record that ends below it changes no metadata.
    pub prepared_end: u64,
    /// The end of the record being written, while one is: the preparer starts no zero fill
    /// below it.
    pub writing_end: Option<u64>,
    /// The range the preparer is zero-filling, while it is: the writer writes nothing into
    /// it until the fill is done, or the zeros could land after the record.
    pub filling: Option<(u64, u64)>,
    /// After a zero fill failed to write, the preparer tries again once the writer is here.
    pub fill_retry_offset: u64,
}

impl Writer {
    /// A writer appending at `offset` to a segment whose first `prepared_end` bytes are durable.
    pub fn new(segment: u64, file: Rc<dyn DiskFile>, offset: u64, prepared_end: u64) -> Writer {
        Writer {
            segment,
            file,
            offset,
            prepared_end,
            writing_end: None,
            filling: None,
            fill_retry_offset: 0,
        }
    }

    /// Whether a zero fill in flight overlaps `start..end`.
    fn fill_overlaps(&self, start: u64, end: u64) -> bool {
        self.filling
            .is_some_and(|(fill_start, fill_end)| fill_start < end && start < fill_end)
    }
}

/// The writer task. Holds the store only weakly while idle, so dropping every handle ends it.
pub async fn run_writer(inner: Weak<Inner>, signal: Rc<Signal>) {
    loop {
        let Some(store) = inner.upgrade() else { return };
        let (has_pending, closed) = {
            let state = store.state.borrow();
            (!state.pending.is_empty() && !state.poisoned, state.closed)
        };
        if has_pending {
            store.state.borrow_mut().writing = true;
            let written = write_group(&store).await;
            store.state.borrow_mut().writing = false;
            store.idle.wake_all();
            match written {
                Ok(()) => compaction::start_if_due(&store),
                // Poisoned meanwhile (by a compaction): the failure is already reported.
                Err(StoreError::Poisoned) => {}
                Err(error) => poison(&store, &error),
            }
            continue;
        }
        if closed {
            return;
        }
        drop(store);
        signal.wait().await;
    }
}

/// Writes one round: takes the queued batches of one segment, appends them as one record,
/// fdatasyncs, then publishes durability.
async fn write_group(inner: &Inner) -> Result<(), StoreError> {
    let group = take_group(inner);
    let Some(first) = group.first() else {
        return Ok(());
    };
    let segment = first.segment;
    let first_seq = first.seq;
    let last_seq = group.last().map_or(first_seq, |batch| batch.seq);
    debug_assert_eq!(
        last_seq - first_seq + 1,
        group.len() as u64,
        "a group is consecutive"
    );

    // A compaction may have poisoned the store while this round waited: write nothing more.
    if inner.state.borrow().poisoned {
        return Err(StoreError::Poisoned);
    }
    let writer_segment = inner
        .state
        .borrow()
        .writer
        .as_ref()
        .map(|writer| writer.segment);
    if writer_segment != Some(segment) {
        rotate(inner, segment).await?;
    }
    let (file, offset) = {
        let state = inner.state.borrow();
        let Some(writer) = state.writer.as_ref() else {
            unreachable!("rotate opened a writer")
        };
        (writer.file.clone(), writer.offset)
    };

    let payload_bytes: usize = group.iter().map(|batch| batch.encoded.len()).sum();
    let mut payload = Vec::with_capacity(payload_bytes);
    let mut batch_offsets = Vec::with_capacity(group.len());
    for batch in &group {
        batch_offsets.push(payload.len());
        payload.extend_from_slice(&batch.encoded);
    }
    let record = codec::encode_record(first_seq, segment, group.len() as u32, &payload);
    assert_eq!(
        offset % codec::BLOCK_BYTES as u64,
        0,
        "records start on a block boundary"
    );
    assert!(
        offset + record.len() as u64 <= u64::from(u32::MAX),
        "segment outgrew u32 offsets"
    );

    let record_end = offset + record.len() as u64;
    // A zero fill in flight over these blocks must land first (it rarely is: the preparer
    // works ahead of the writer and starts no fill below a write in flight).
    inner
        .idle
        .wait_until(|| {
            let state = inner.state.borrow();
            state.poisoned
                || state.writer.as_ref().is_none_or(|writer| {
                    writer.segment != segment || !writer.fill_overlaps(offset, record_end)
                })
        })
        .await;
    if let Some(writer) = inner.state.borrow_mut().writer.as_mut() {
        writer.writing_end = Some(record_end);
    }
    let started = Instant::now();
    let written = file
        .write_durable_at(offset, &record)
        .await
        .map_err(|source| io_error("durable write", file.name(), source))?;
    if written != record.len() {
        return Err(io_error(
            "durable write",
            file.name(),
            std::io::Error::other(format!("short write: {written} of {} bytes", record.len())),
        ));
    }
    let micros = started.elapsed().as_micros() as u64;

    let mut state = inner.state.borrow_mut();
    let state = &mut *state;
    if state.poisoned {
        // A compaction failed meanwhile and took these batches out of the index along with
        // every other one not yet durable: reporting them durable now would acknowledge
        // writes that reads no longer show. They may still be found after a restart, as any
        // unacknowledged write may.
        return Err(StoreError::Poisoned);
    }
    if let Some(writer) = state.writer.as_mut() {
        writer.offset += record.len() as u64;
        writer.prepared_end = writer.prepared_end.max(writer.offset);
        writer.writing_end = None;
    }
    if state.active_segment == segment {
        // Commits decide when to move to a new segment by the bytes they assigned to it, but
        // each round also adds a header and pads to a block: without this, rounds of one small
        // batch would grow a segment to 4 KiB per batch, far past `segment_bytes_max`.
        let on_disk = state.writer.as_ref().map_or(0, |writer| writer.offset);
        state.active_assigned_bytes = state.active_assigned_bytes.max(on_disk);
    }
    if let Some(segment_entry) = state.segments.by_id.get_mut(&segment) {
        segment_entry.written_bytes += record.len() as u64;
        // Without padding: the figure compaction's trigger counts (see `Segment`).
        segment_entry.record_bytes += (RECORD_HEADER_BYTES + payload.len()) as u64;
    }
    state.stats.record_fdatasync(micros);
    state.stats.record_group(group.len() as u64);
    state.stats.bytes_written_total += record.len() as u64;
    for (batch, batch_offset) in group.iter().zip(batch_offsets) {
        for large in &batch.large_values {
            let value_offset = offset
                + (RECORD_HEADER_BYTES + batch_offset) as u64
                + u64::from(large.offset_in_batch);
            let on_disk = Entry::OnDisk {
                segment: segment as u32,
                offset: value_offset as u32,
                len: large.value.len() as u32,
                crc: large.crc,
            };
            let still_pending = |entry: &Entry| match entry {
                Entry::Pending { value, .. } if Rc::ptr_eq(value, &large.value) => Some(on_disk),
                _ => None,
            };
            state
                .index
                .relocate(&batch.object, &large.key, still_pending);
        }
    }
    state.undo.durable(last_seq);
    inner.durable.advance(last_seq);
    // The writer moved on: the preparer may have room to fill again.
    inner.prepare_signal.notify();
    Ok(())
}

/// Takes the next round's batches off the queue.
fn take_group(inner: &Inner) -> Vec<PendingBatch> {
    let mut state = inner.state.borrow_mut();
    let mut group = Vec::new();
    let mut bytes = 0;
    while let Some(next) = state.pending.front() {
        let same_segment = group
            .first()
            .is_none_or(|first: &PendingBatch| first.segment == next.segment);
        if !same_segment || (bytes >= GROUP_BYTES_MAX && !group.is_empty()) {
            break;
        }
        bytes += next.encoded.len();
        if let Some(batch) = state.pending.pop_front() {
            group.push(batch);
        }
    }
    group
}

/// Starts log segment `segment`: create, zero-fill its first blocks, fdatasync, sync the
/// directory, then append to it.
async fn rotate(inner: &Inner, segment: u64) -> Result<(), StoreError> {
    let name = segment_file_name(SegmentKind::Log, segment);
    let file = inner
        .disk
        .open_file(&name, true)
        .await
        .map_err(|source| io_error("create", &name, source))?;
    let length = file
        .len()
        .await
        .map_err(|source| io_error("stat", &name, source))?;
    if length != 0 {
        return Err(StoreError::Corruption {
            file: name,
            offset: 0,
            reason: format!("a new log segment already holds {length} bytes"),
        });
    }
    let started = Instant::now();
    let prepared_end = prepare::piece_bytes(&inner.config);
    if prepared_end > 0 {
        prepare::write_zeros(file.as_ref(), 0, prepared_end).await?;
    }
    file.fdatasync()
        .await
        .map_err(|source| io_error("fdatasync", &name, source))?;
    inner
        .disk
        .sync_dir()
        .await
        .map_err(|source| io_error("sync_dir", &name, source))?;
    let mut state = inner.state.borrow_mut();
    state
        .stats
        .record_fdatasync(started.elapsed().as_micros() as u64);
    state.segments.by_id.insert(
        segment,
        Segment {
            kind: SegmentKind::Log,
            file: file.clone(),
            written_bytes: 0,
            record_bytes: 0,
        },
    );
    state.writer = Some(Writer::new(segment, file, 0, prepared_end));
    drop(state);
    inner.prepare_signal.notify();
    Ok(())
}
