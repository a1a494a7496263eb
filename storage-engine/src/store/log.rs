//! The group-commit writer: one background task per store that turns queued batches into
//! records, one record per round, each written with one durable write (`write_durable_at`,
//! O_DSYNC) into blocks of the segment that `prepare` zero-filled and synced beforehand, so a
//! round changes no file metadata and costs the device one write and its flush.
//!
//! There is no timer: while a write is in flight, new commits queue up, and the next round
//! takes all of them at once. Up to two rounds are in flight at once (`rounds_in_flight`),
//! published in order. A failed or short write poisons the store: every queued batch fails,
//! nothing is retried.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::Instant;

use super::durable::Signal;
use super::index::Entry;
use super::poison::poison;
use super::prepare;
use super::segments::{segment_file_name, Segment, SegmentKind};
use super::{compaction, io_error, Inner};
use crate::codec;
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
    /// Where the next record starts: the end of the last record written or in flight,
    /// block-aligned.
    pub offset: u64,
    /// Every byte below this is durable on disk, the file's size included: zeros the
    /// preparer wrote and synced, or records. A record that ends below it changes no metadata.
    pub prepared_end: u64,
    /// The end of the last record in flight, while one is: the preparer starts no zero fill
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

/// The most rounds the writer keeps in flight. Recovery's tail rule (`DESIGN.md`, "Two rounds
/// in flight") is argued for this number and no more.
pub const ROUNDS_IN_FLIGHT_MAX: u8 = 2;

/// The durable write of one round, owning what it writes.
type RoundWrite = Pin<Box<dyn Future<Output = Result<u64, StoreError>>>>;

/// A round whose durable write was issued and whose durability is not yet published.
struct Round {
    group: Vec<PendingBatch>,
    segment: u64,
    last_seq: u64,
    /// Where the record starts, its length with padding, and its payload's length.
    offset: u64,
    record_bytes: u64,
    payload_bytes: usize,
    /// Where each batch of `group` starts inside the payload.
    batch_offsets: Vec<usize>,
    /// The write while it runs; polled by the writer task itself, so its completion costs no
    /// hop through another task.
    write: Option<RoundWrite>,
    /// How the write ended (its time in microseconds), once it has.
    outcome: Option<Result<u64, StoreError>>,
}

/// The writer task. Holds the store only weakly while idle, so dropping every handle ends it.
///
/// With `rounds_in_flight_max` 2, the next round's durable write is issued while the one
/// before it is still in the device, so the device never waits for the core to encode a round
/// and the core never waits for the device to start the next. Rounds are published in the
/// order they started: a batch is durable only once every batch before it is.
pub async fn run_writer(inner: Weak<Inner>, signal: Rc<Signal>) {
    let mut in_flight: VecDeque<Round> = VecDeque::new();
    // The store, kept from one pass to the next while rounds are in flight: dropping every
    // handle then must not drop a write midway or leave a finished round unpublished.
    let mut held: Option<Rc<Inner>> = None;
    loop {
        let store = match held.take() {
            Some(store) => store,
            None => match inner.upgrade() {
                Some(store) => store,
                None => return,
            },
        };
        while in_flight
            .front()
            .is_some_and(|round| round.outcome.is_some())
        {
            let Some(mut round) = in_flight.pop_front() else {
                break;
            };
            let outcome = round.outcome.take().unwrap_or(Err(StoreError::Poisoned));
            let finished = outcome.and_then(|micros| finish_round(&store, round, micros));
            match finished {
                Ok(()) => compaction::start_if_due(&store),
                // Poisoned meanwhile: the failure is already reported.
                Err(StoreError::Poisoned) => {}
                Err(error) => poison(&store, &error),
            }
        }

        if !in_flight.is_empty() && may_start_round(&store, &in_flight) {
            // The device is busy with the round in flight: let the tasks that are ready run
            // first, so the commits they make join this round instead of the one after.
            futures_lite::future::yield_now().await;
        }
        if may_start_round(&store, &in_flight) {
            store.state.borrow_mut().writing = true;
            match start_round(&store, !in_flight.is_empty()).await {
                Ok(Some(round)) => in_flight.push_back(round),
                Ok(None) | Err(StoreError::Poisoned) => {}
                Err(error) => poison(&store, &error),
            }
        }
        if in_flight.is_empty() {
            let (writing, closed, has_pending) = {
                let mut state = store.state.borrow_mut();
                let writing = std::mem::replace(&mut state.writing, false);
                let has_pending = !state.pending.is_empty() && !state.poisoned;
                (writing, state.closed, has_pending)
            };
            if writing {
                store.idle.wake_all();
            }
            if has_pending {
                continue;
            }
            if closed {
                return;
            }
            drop(store);
            signal.wait().await;
            continue;
        }
        // Rounds are in flight: poll their writes (the first poll submits a new one) until one
        // ends or a commit or close signals, holding the store so no write is dropped midway.
        let room = in_flight.len() < usize::from(store.state.borrow().rounds_in_flight_max);
        std::future::poll_fn(|cx| {
            let mut ended = false;
            for round in in_flight.iter_mut() {
                let Some(write) = round.write.as_mut() else {
                    continue;
                };
                if let Poll::Ready(outcome) = write.as_mut().poll(cx) {
                    round.outcome = Some(outcome);
                    round.write = None;
                    ended = true;
                }
            }
            if ended || (room && signal.poll_notified(cx).is_ready()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        held = Some(store);
    }
}

/// Whether the writer can start a round now: batches are queued, the store is healthy and,
/// beside rounds in flight, there is room for one more in the same segment (a round never
/// overlaps a rotation, so a sealed segment ends in a record that was durable before the
/// next segment got one) with no zero fill in flight in that segment.
fn may_start_round(inner: &Inner, in_flight: &VecDeque<Round>) -> bool {
    let state = inner.state.borrow();
    let Some(next) = state.pending.front() else {
        return false;
    };
    if state.poisoned || in_flight.len() >= usize::from(state.rounds_in_flight_max.max(1)) {
        return false;
    }
    match in_flight.back() {
        None => true,
        Some(last) => {
            next.segment == last.segment
                && state.writer.as_ref().is_some_and(|writer| {
                    writer.segment == last.segment && writer.filling.is_none()
                })
        }
    }
}

/// Starts one round: takes the queued batches of one segment, encodes them as one record,
/// reserves its place in the segment and creates its durable write (submitted at its first
/// poll). `overlapped`: another round is still in flight, which the record's header says.
async fn start_round(inner: &Inner, overlapped: bool) -> Result<Option<Round>, StoreError> {
    let group = take_group(inner);
    let Some(first) = group.first() else {
        return Ok(None);
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
        // `may_start_round` starts a second round only in the segment of the first: a round
        // in flight across a rotation would let a sealed segment end in a damaged record.
        assert!(!overlapped, "a round in flight never spans a rotation");
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
    let record = codec::encode_record(
        (first_seq, segment),
        group.len() as u32,
        overlapped,
        &payload,
        inner.config.encryption.as_deref(),
    );
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
    {
        let mut state = inner.state.borrow_mut();
        if state.poisoned {
            return Err(StoreError::Poisoned);
        }
        if let Some(writer) = state.writer.as_mut() {
            // The place is taken now: a round started before this one ends is written after it.
            writer.offset = record_end;
            writer.writing_end = Some(record_end);
        }
        state.stats.overlapped_rounds_total += u64::from(overlapped);
    }
    let record_bytes = record.len() as u64;
    let write: RoundWrite = Box::pin(async move {
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
        Ok(started.elapsed().as_micros() as u64)
    });
    Ok(Some(Round {
        group,
        segment,
        last_seq,
        offset,
        record_bytes,
        payload_bytes,
        batch_offsets,
        write: Some(write),
        outcome: None,
    }))
}

/// Publishes a round whose durable write succeeded, after every round before it: the
/// prepared end moves past it, large values point at their place on disk, and its batches
/// become durable.
fn finish_round(inner: &Inner, round: Round, micros: u64) -> Result<(), StoreError> {
    let mut state = inner.state.borrow_mut();
    let state = &mut *state;
    if state.poisoned {
        // A compaction (or the round before) failed meanwhile and took these batches out of
        // the index along with every other one not yet durable: reporting them durable now
        // would acknowledge writes that reads no longer show. They may still be found after a
        // restart, as any unacknowledged write may.
        return Err(StoreError::Poisoned);
    }
    let record_end = round.offset + round.record_bytes;
    let segment = round.segment;
    if let Some(writer) = state.writer.as_mut() {
        if writer.segment == segment {
            writer.prepared_end = writer.prepared_end.max(record_end);
            if writer.writing_end == Some(record_end) {
                writer.writing_end = None;
            }
        }
    }
    if state.active_segment == segment {
        // Commits decide when to move to a new segment by the bytes they assigned to it, but
        // each round also adds a header and pads to a block: without this, rounds of one small
        // batch would grow a segment to 4 KiB per batch, far past `segment_bytes_max`.
        state.active_assigned_bytes = state.active_assigned_bytes.max(record_end);
    }
    if let Some(segment_entry) = state.segments.by_id.get_mut(&segment) {
        segment_entry.written_bytes += round.record_bytes;
        // Without padding: the figure compaction's trigger counts (see `Segment`).
        let encrypted = inner.config.encryption.is_some();
        segment_entry.record_bytes += codec::record_length(round.payload_bytes, encrypted) as u64;
    }
    state.stats.record_fdatasync(micros);
    state.stats.record_group(round.group.len() as u64);
    state.stats.bytes_written_total += round.record_bytes;
    let payload_start = codec::payload_start(inner.config.encryption.is_some());
    for (batch, batch_offset) in round.group.iter().zip(round.batch_offsets) {
        for large in &batch.large_values {
            let value_offset = round.offset
                + (payload_start + batch_offset) as u64
                + u64::from(large.offset_in_batch);
            let on_disk = Entry::OnDisk {
                segment: segment as u32,
                record: round.offset as u32,
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
    state.undo.durable(round.last_seq);
    inner.durable.advance(round.last_seq);
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
