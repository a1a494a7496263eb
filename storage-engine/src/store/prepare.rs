//! Preparing the log ahead of the writer: a background task per store that keeps the blocks
//! after the writer's position zero-filled and synced, so that every group commit overwrites
//! blocks that already exist on disk.
//!
//! Why: a write that grows a file changes its size, so the file system must journal metadata
//! before the data counts as durable, and io_uring cannot issue such an append inline (it goes
//! to a worker thread). An overwrite of allocated, written blocks needs neither: the durable
//! write of a round is one device write plus its flush. The zeros themselves carry nothing;
//! recovery reads an all-zero remainder of a log segment as its clean, unwritten end.
//!
//! The preparer never writes where the writer does: it starts a fill only when no record is
//! being written past the prepared end, and the writer waits for a fill that overlaps its
//! record (see `Writer::filling`). Preparation is an optimisation only: a record that runs past
//! the prepared end still becomes durable, because its durable write also syncs the size it
//! extended; it is merely slower. So a zero fill that cannot be written (a full disk) does not
//! stop commits: they go on in the prepared blocks, and only a record that needs new space
//! fails (and poisons the store). A failed fdatasync of a fill poisons the store at once.

use std::rc::{Rc, Weak};

use super::durable::Signal;
use super::poison::poison;
use super::{io_error, Inner};
use crate::codec::{self, BLOCK_BYTES};
use crate::{DiskFile, StoreConfig, StoreError};

/// One zero fill writes at most this much, so a fill is short and the preparer yields often.
const FILL_BYTES_MAX: u64 = 1024 * 1024;

/// How far past the writer's position the preparer keeps the segment filled: the configured
/// window, at most the segment's size, in whole blocks.
fn window_bytes(config: &StoreConfig) -> u64 {
    let segment = codec::block_align_up(config.segment_bytes_max as usize) as u64;
    let window = codec::block_align_up(config.segment_prepare_bytes as usize) as u64;
    window.min(segment)
}

/// One fill: what `rotate` fills of a new segment before its first record, and what the
/// preparer fills at a time.
pub fn piece_bytes(config: &StoreConfig) -> u64 {
    window_bytes(config).min(FILL_BYTES_MAX)
}

/// Writes zeros over `start..end` of `file` (block-aligned), in pieces of at most
/// `FILL_BYTES_MAX`. Not synced: the caller fdatasyncs.
pub async fn write_zeros(file: &dyn DiskFile, start: u64, end: u64) -> Result<(), StoreError> {
    debug_assert!(start % BLOCK_BYTES as u64 == 0 && end % BLOCK_BYTES as u64 == 0);
    let zeros = vec![0u8; (end - start).min(FILL_BYTES_MAX) as usize];
    let mut at = start;
    while at < end {
        let piece = &zeros[..(end - at).min(zeros.len() as u64) as usize];
        let written = file
            .write_at(at, piece)
            .await
            .map_err(|source| io_error("write", file.name(), source))?;
        if written != piece.len() {
            let short = format!("short write: {written} of {} bytes", piece.len());
            return Err(io_error("write", file.name(), std::io::Error::other(short)));
        }
        at += piece.len() as u64;
    }
    Ok(())
}

/// A fill to do: zeros over `start..end` of segment `segment`.
struct Fill {
    segment: u64,
    file: Rc<dyn DiskFile>,
    start: u64,
    end: u64,
}

/// The preparer task. Holds the store only weakly while idle, so dropping every handle ends it.
pub async fn run_preparer(inner: Weak<Inner>, signal: Rc<Signal>) {
    loop {
        let Some(store) = inner.upgrade() else { return };
        match next_fill(&store) {
            Some(fill) => {
                let filled = write_fill(&fill).await;
                finish_fill(&store, &fill, filled);
            }
            None => {
                let stop = {
                    let state = store.state.borrow();
                    state.closed || state.poisoned
                };
                if stop {
                    return;
                }
                drop(store);
                signal.wait().await;
            }
        }
    }
}

/// Picks the next fill and marks it in flight, or `None` when the window ahead of the
/// writer is filled (or a write in flight runs past the prepared end: its own durable write
/// extends the file, and the fill waits until it is done).
fn next_fill(inner: &Inner) -> Option<Fill> {
    let window = window_bytes(&inner.config);
    let segment_end = codec::block_align_up(inner.config.segment_bytes_max as usize) as u64;
    let mut state = inner.state.borrow_mut();
    let state = &mut *state;
    if state.closed || state.poisoned || window == 0 {
        return None;
    }
    let writer = state.writer.as_mut()?;
    if writer.filling.is_some()
        || writer.offset < writer.fill_retry_offset
        || writer
            .writing_end
            .is_some_and(|end| end > writer.prepared_end)
    {
        return None;
    }
    let block = BLOCK_BYTES as u64;
    // Both are aligned or below the offset: bytes between the offset and the prepared end
    // are the zero tail, so rewriting them with zeros changes nothing.
    let start = (writer.prepared_end / block * block).max(writer.offset);
    let target = (writer.offset + window).min(segment_end);
    // Fill only once a whole piece is due (or the rest of the segment, near its end), so
    // the preparer runs a few times per MiB the writer moves, not once per round.
    let piece = piece_bytes(&inner.config);
    if target <= start || (target - start < piece && target < segment_end) {
        return None;
    }
    let end = target.min(start + piece);
    writer.filling = Some((start, end));
    state.preparing = true;
    Some(Fill {
        segment: writer.segment,
        file: writer.file.clone(),
        start,
        end,
    })
}

/// How a fill ended.
enum Filled {
    Done,
    /// The zeros could not be written (a full disk, typically). Nothing was synced and no
    /// record is affected: the writer goes on in what is prepared, and a record that runs past
    /// it fails on its own if the disk is still full. Tried again later.
    WriteFailed(StoreError),
    /// The fdatasync failed: it may have dropped unsynced data of the segment, so the store is
    /// poisoned, as after any failed sync.
    SyncFailed(StoreError),
}

/// Zero-fills and syncs one range.
async fn write_fill(fill: &Fill) -> Filled {
    if let Err(error) = write_zeros(fill.file.as_ref(), fill.start, fill.end).await {
        return Filled::WriteFailed(error);
    }
    match fill.file.fdatasync().await {
        Ok(()) => Filled::Done,
        Err(source) => Filled::SyncFailed(io_error("fdatasync", fill.file.name(), source)),
    }
}

/// Publishes a fill's outcome: the prepared end moves, the next try waits for the writer to
/// move on, or the store is poisoned.
fn finish_fill(inner: &Inner, fill: &Fill, filled: Filled) {
    {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        state.preparing = false;
        let piece = piece_bytes(&inner.config);
        if let Some(writer) = state.writer.as_mut() {
            if writer.segment == fill.segment {
                writer.filling = None;
                match &filled {
                    Filled::Done => writer.prepared_end = writer.prepared_end.max(fill.end),
                    // Not before the writer used up another piece: a full disk would
                    // otherwise cost a failed 1 MiB write per round.
                    Filled::WriteFailed(_) => writer.fill_retry_offset = writer.offset + piece,
                    Filled::SyncFailed(_) => {}
                }
            }
        }
        match &filled {
            Filled::Done => state.stats.prepared_bytes_total += fill.end - fill.start,
            Filled::WriteFailed(error) => {
                tracing::warn!(%error, "cannot prepare log blocks ahead; commits go on in what is prepared");
            }
            Filled::SyncFailed(_) => {}
        }
    }
    if let Filled::SyncFailed(error) = filled {
        if !inner.state.borrow().poisoned {
            poison(inner, &error);
        }
    }
    // The writer may wait for this fill (to start a round, or a second one beside the first),
    // and `close` for the preparer to be idle.
    inner.idle.wake_all();
    inner.signal.notify();
}
