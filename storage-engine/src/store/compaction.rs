//! Compaction: rewrite the live state held in sealed segments into new base segments, switch
//! the manifest to them, and delete the old files.
//!
//! Steps: seal the active log segment (new commits go to a fresh one, id `seal`); wait until
//! everything committed before is durable; copy every entry whose put lives in a segment
//! older than `seal`, plus every alarm, into `base-*` files; fdatasync them and the directory;
//! wait until every commit the copies saw is durable; write the manifest (these bases, log
//! starts at `seal`); point the index at the new copies (only entries that did not change
//! meanwhile); delete the old files. Commits keep flowing into the log throughout, and every
//! loop over keys or entries yields after about a millisecond of work (`Pacer`), so the core's
//! other tasks are never stalled for long.

use std::rc::Rc;

use super::checkpoint::{self, CheckpointBuilder, CheckpointSegment};
use super::durable::{Durable, FailureReport};
use super::index::Entry;
use super::pace::Pacer;
use super::poison::poison;
use super::read::{read_value, ValuePlace};
use super::segments::{segment_file_name, Segment, SegmentKind};
use super::{io_error, manifest, Inner};
use crate::codec::{self, ManifestData};
use crate::{DiskFile, ObjectId, Op, StoreError};

/// A base record is written once its payload passes this.
const RECORD_PAYLOAD_BYTES_TARGET: usize = 1024 * 1024;
/// A base batch is closed once it holds this many puts, keeping decode buffers small.
const BATCH_OPS_MAX: usize = 1024;

/// Starts a background compaction if automatic compaction is on and the thresholds are met.
///
/// Both thresholds count record bytes (header plus payload), not the blocks they pad to: see
/// `Segment::record_bytes`.
pub fn start_if_due(inner: &Rc<Inner>) {
    let due = {
        let state = inner.state.borrow();
        let config = &inner.config;
        let written = state.segments.record_bytes_total();
        let dead = written.saturating_sub(state.index.live_bytes_total());
        config.compaction_automatic
            && !state.compacting
            && !state.closed
            && !state.poisoned
            && dead >= config.compaction_dead_bytes_min
            && dead * 100 >= u64::from(config.compaction_dead_percent_min) * written
    };
    if due {
        let inner = inner.clone();
        glommio::spawn_local(async move {
            if let Err(error) = compact(&inner).await {
                tracing::warn!(%error, "automatic compaction failed");
            }
        })
        .detach();
    }
}

pub async fn compact(inner: &Inner) -> Result<(), StoreError> {
    let (seal, seal_seq) = {
        let mut state = inner.state.borrow_mut();
        if state.closed {
            return Err(StoreError::Closed);
        }
        if state.poisoned {
            return Err(StoreError::Poisoned);
        }
        if state.compacting {
            return Ok(());
        }
        state.compacting = true;
        let seal = state.allocate_segment_id();
        state.active_segment = seal;
        state.active_assigned_bytes = 0;
        (seal, state.next_seq - 1)
    };
    let result = run(inner, seal, seal_seq).await;
    inner.state.borrow_mut().compacting = false;
    inner.idle.wake_all();
    if let Err(error @ StoreError::Io { .. }) = &result {
        poison(inner, error);
    }
    result
}

async fn run(inner: &Inner, seal: u64, seal_seq: u64) -> Result<(), StoreError> {
    Durable::new(inner.durable.clone(), seal_seq, FailureReport::Poisoned).await?;
    let mut pacer = Pacer::new();
    // The one step here that does not yield: a copy of every object id and a sort (for a
    // reproducible base layout), linear-logarithmic in the objects of the store.
    let mut objects: Vec<ObjectId> = inner.state.borrow().index.objects.keys().copied().collect();
    objects.sort_unstable();
    let mut base = BaseWriter::new(inner, seal_seq);
    for object in objects {
        pacer.tick().await;
        let (snapshot, alarm_ms) = {
            let state = inner.state.borrow();
            // Stop once the store is closed (`close` waits for this task) or poisoned (nothing
            // new is written): the base files written so far are orphans the next open removes.
            if state.closed {
                return Err(StoreError::Closed);
            }
            if state.poisoned {
                return Err(StoreError::Poisoned);
            }
            let Some(object_state) = state.index.objects.get(&object) else {
                continue;
            };
            let old = object_state
                .keys
                .iter()
                .filter(|(_, entry)| u64::from(entry.segment()) < seal);
            let snapshot: Vec<(Box<[u8]>, Entry)> = old
                .map(|(key, entry)| (key.clone(), entry.clone()))
                .collect();
            (snapshot, object_state.alarm_ms)
        };
        for (key, entry) in snapshot {
            let value = match &entry {
                Entry::Inline { value, .. } => value.to_vec(),
                Entry::Pending { value, .. } => value.to_vec(),
                Entry::OnDisk {
                    segment,
                    record,
                    offset,
                    len,
                    crc,
                } => {
                    let file = inner.state.borrow().segments.file(*segment);
                    let Some(file) = file else {
                        unreachable!("index points into segment {segment}, which is not open")
                    };
                    let place = ValuePlace {
                        record: *record,
                        offset: *offset,
                        len: *len,
                        crc: *crc,
                    };
                    read_value(&*file, place, inner.config.encryption.as_deref()).await?
                }
            };
            base.batch_ops.push(Op::Put {
                key: key.to_vec(),
                value,
            });
            base.batch_keys.push((key, entry.segment()));
            if base.batch_ops.len() >= BATCH_OPS_MAX {
                base.close_batch(&object).await?;
            }
            pacer.tick().await;
        }
        if let Some(time_ms) = alarm_ms {
            base.batch_ops.push(Op::SetAlarm { time_ms });
        }
        base.close_batch(&object).await?;
    }
    // The copies above read the index as it was at their moment, which already includes
    // commits after the seal: a key they overwrote or deleted is missing from the bases, an
    // alarm they set is in them. That is sound only once those commits are durable in the
    // log from `seal` on, which replays over the bases; until then the old segments must stay.
    let copied_seq = inner.state.borrow().next_seq - 1;
    base.write_record().await?;
    let BaseWriter {
        files,
        relocations,
        checkpoint,
        ..
    } = base;
    if let Some(last) = files.last() {
        sync_file(inner, &*last.file).await?;
    }
    let dir = "store directory";
    inner
        .disk
        .sync_dir()
        .await
        .map_err(|source| io_error("sync_dir", dir, source))?;

    Durable::new(inner.durable.clone(), copied_seq, FailureReport::Poisoned).await?;
    let base_segments = files.iter().map(|file| file.id).collect();
    let manifest = ManifestData {
        log_start: seal,
        base_segments,
        encrypted: inner.config.encryption.is_some(),
    };
    manifest::write(inner.disk.as_ref(), &manifest).await?;

    {
        let mut state = inner.state.borrow_mut();
        state.stats.record_fdatasync(0);
        state.manifest = manifest;
        for file in &files {
            let segment = Segment {
                kind: SegmentKind::Base,
                file: file.file.clone(),
                written_bytes: file.written_bytes,
                record_bytes: file.record_bytes,
            };
            state.segments.by_id.insert(file.id, segment);
        }
    }
    // Point entries at their copies, one at a time with yields between (a store of a million
    // keys took ~100 ms in one step). In between, commits and reads go on: an entry not yet
    // pointed at its copy still reads from its old segment, which stays open until the end;
    // a commit that replaces it gives it a segment at or after the seal, so its relocation
    // finds it changed and goes to the undo record instead; a rollback (poisoning) puts old
    // entries back, still naming the old segment, and their relocation comes later or found
    // them in the undo log already. Each relocation is applied whole, without an await.
    let inline_max = inner.config.inline_value_bytes_max;
    let relocations_count = relocations.len();
    for relocation in relocations {
        {
            let mut state = inner.state.borrow_mut();
            let state = &mut *state;
            let apply = |entry: &Entry| relocation.apply(entry, inline_max);
            let moved = state
                .index
                .relocate(&relocation.object, &relocation.key, apply);
            if !moved {
                // A batch not yet durable may have replaced the copied entry; its undo record
                // holds the entry now, and must point at the copy once the old segment is gone.
                state
                    .undo
                    .relocate(&relocation.object, &relocation.key, apply);
            }
        }
        pacer.tick().await;
    }
    let old_files = {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        let old_ids: Vec<u64> = state
            .segments
            .by_id
            .range(..seal)
            .map(|(id, _)| *id)
            .collect();
        let mut old_files = Vec::new();
        for id in old_ids {
            if let Some(segment) = state.segments.by_id.remove(&id) {
                old_files.push(segment_file_name(segment.kind, id));
            }
            let live = state.index.live_bytes.remove(&(id as u32)).unwrap_or(0);
            debug_assert_eq!(
                live, 0,
                "segment {id} still holds live entries after compaction"
            );
        }
        state.stats.compactions_total += 1;
        old_files
    };
    tracing::debug!(
        relocated = relocations_count,
        yields = pacer.yields,
        "compaction switched"
    );
    for name in &old_files {
        inner
            .disk
            .remove(name)
            .await
            .map_err(|source| io_error("remove", name, source))?;
        pacer.tick().await;
    }
    inner
        .disk
        .sync_dir()
        .await
        .map_err(|source| io_error("sync_dir", dir, source))?;

    // Last, the index as the bases hold it, so the next open need not replay them.
    let segments = files
        .iter()
        .map(|file| CheckpointSegment {
            id: file.id,
            written_bytes: file.written_bytes,
            record_bytes: file.record_bytes,
        })
        .collect();
    let manifest = inner.state.borrow().manifest.clone();
    // None for an encrypted store: the checkpoint would hold keys and small values in plain
    // text (its open replays the bases instead).
    let Some(checkpoint) = checkpoint else {
        return Ok(());
    };
    if let Some(data) = checkpoint.finish(&manifest, segments, seal_seq) {
        checkpoint::write(inner.disk.as_ref(), data).await?;
    }
    Ok(())
}

async fn sync_file(inner: &Inner, file: &dyn DiskFile) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    file.fdatasync()
        .await
        .map_err(|source| io_error("fdatasync", file.name(), source))?;
    inner
        .state
        .borrow_mut()
        .stats
        .record_fdatasync(started.elapsed().as_micros() as u64);
    Ok(())
}

/// An entry copied into a base segment, waiting for the manifest switch to point at the copy.
struct Relocation {
    object: ObjectId,
    key: Box<[u8]>,
    /// The segment the entry lived in when copied; if it changed since, the copy is stale.
    old_segment: u32,
    new_segment: u32,
    /// Where the copy's record starts in the base file.
    record: u32,
    /// Where the copied value starts in the base file.
    offset: u32,
    len: u32,
    crc: u32,
}

impl Relocation {
    /// The entry pointing at the copy, or `None` if the entry changed since it was copied.
    /// Any change gives an entry a segment at or after the seal, so an unchanged segment id
    /// means an unchanged entry.
    fn apply(&self, entry: &Entry, inline_max: usize) -> Option<Entry> {
        if entry.segment() != self.old_segment {
            return None;
        }
        Some(match entry {
            Entry::Inline { value, .. } => Entry::Inline {
                value: value.clone(),
                segment: self.new_segment,
            },
            _ => {
                debug_assert!(self.len as usize > inline_max, "small values are inline");
                Entry::OnDisk {
                    segment: self.new_segment,
                    record: self.record,
                    offset: self.offset,
                    len: self.len,
                    crc: self.crc,
                }
            }
        })
    }
}

/// One base file being written.
struct BaseFile {
    id: u64,
    file: Rc<dyn DiskFile>,
    /// Bytes on disk, padding included; where the next record starts.
    written_bytes: u64,
    /// Bytes of its records without padding, for the dead-byte accounting.
    record_bytes: u64,
}

/// Packs copied entries into batches, batches into records, records into base files.
struct BaseWriter<'a> {
    inner: &'a Inner,
    /// Every base record carries the sequence number of the snapshot it belongs to.
    seal_seq: u64,
    /// Files written so far; the last one is the one being appended to.
    files: Vec<BaseFile>,
    /// The payload of the record being built.
    payload: Vec<u8>,
    batch_count: u32,
    /// Puts inside `payload`, waiting for the record's file offset: (relocation, value offset
    /// inside the payload).
    puts: Vec<(Relocation, usize)>,
    /// The batch being built, with each put's key and original segment.
    batch_ops: Vec<Op>,
    batch_keys: Vec<(Box<[u8]>, u32)>,
    /// Entries written to base files, to be pointed at after the manifest switch.
    relocations: Vec<Relocation>,
    /// The index as the base files hold it, written once the manifest names them; None for
    /// an encrypted store, which keeps no checkpoint.
    checkpoint: Option<CheckpointBuilder>,
}

impl<'a> BaseWriter<'a> {
    fn new(inner: &'a Inner, seal_seq: u64) -> BaseWriter<'a> {
        BaseWriter {
            inner,
            seal_seq,
            files: Vec::new(),
            payload: Vec::new(),
            batch_count: 0,
            puts: Vec::new(),
            batch_ops: Vec::new(),
            batch_keys: Vec::new(),
            relocations: Vec::new(),
            checkpoint: inner
                .config
                .encryption
                .is_none()
                .then(|| CheckpointBuilder::new(inner.config.inline_value_bytes_max)),
        }
    }

    /// Encodes the batch being built into the record payload.
    async fn close_batch(&mut self, object: &ObjectId) -> Result<(), StoreError> {
        if self.batch_ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.batch_ops);
        let mut keys = std::mem::take(&mut self.batch_keys).into_iter();
        let mut offsets = Vec::new();
        codec::encode_batch(&mut self.payload, object, &ops, |offset, crc| {
            offsets.push((offset, crc))
        });
        if let Some(checkpoint) = self.checkpoint.as_mut() {
            let mut crcs = offsets.iter().map(|(_, crc)| *crc);
            for op in &ops {
                match op {
                    Op::Put { key, value } => {
                        let Some(crc) = crcs.next() else {
                            unreachable!("every put has its offset recorded")
                        };
                        checkpoint.put(object, key, value, crc);
                    }
                    Op::SetAlarm { time_ms } => checkpoint.alarm(object, *time_ms),
                    _ => unreachable!("compaction copies puts and alarms only"),
                }
            }
        }
        let puts = ops.iter().filter_map(|op| match op {
            Op::Put { value, .. } => Some(value),
            _ => None,
        });
        for (value, (offset, crc)) in puts.zip(offsets) {
            let Some((key, old_segment)) = keys.next() else {
                unreachable!("every put has its key recorded")
            };
            let len = value.len();
            let crc = match &self.inner.config.encryption {
                Some(encryption) => encryption.value_tag(value),
                None => crc,
            };
            let relocation = Relocation {
                object: *object,
                key,
                old_segment,
                new_segment: 0,
                record: 0,
                offset: 0,
                len: len as u32,
                crc,
            };
            self.puts.push((relocation, offset));
        }
        self.batch_count += 1;
        if self.payload.len() >= RECORD_PAYLOAD_BYTES_TARGET {
            self.write_record().await?;
        }
        Ok(())
    }

    /// Writes the record being built to the current base file, starting a new file first
    /// when the current one is full.
    async fn write_record(&mut self) -> Result<(), StoreError> {
        if self.batch_count == 0 {
            return Ok(());
        }
        let full = self
            .files
            .last()
            .is_none_or(|file| file.written_bytes >= self.inner.config.segment_bytes_max);
        if full {
            self.start_file().await?;
        }
        let Some(current) = self.files.last_mut() else {
            unreachable!("start_file added one")
        };
        let encryption = self.inner.config.encryption.as_deref();
        let record = codec::encode_record(
            (self.seal_seq, current.id),
            self.batch_count,
            false,
            &self.payload,
            encryption,
        );
        let offset = current.written_bytes;
        assert!(
            offset + record.len() as u64 <= u64::from(u32::MAX),
            "base file outgrew u32 offsets"
        );
        let file = &current.file;
        let written = file
            .write_at(offset, &record)
            .await
            .map_err(|source| io_error("write", file.name(), source))?;
        if written != record.len() {
            let short =
                std::io::Error::other(format!("short write: {written} of {}", record.len()));
            return Err(io_error("write", file.name(), short));
        }
        current.written_bytes += record.len() as u64;
        current.record_bytes +=
            codec::record_length(self.payload.len(), encryption.is_some()) as u64;
        let payload_start = offset + codec::payload_start(encryption.is_some()) as u64;
        for (mut relocation, value_offset) in self.puts.drain(..) {
            relocation.new_segment = current.id as u32;
            relocation.record = offset as u32;
            relocation.offset = (payload_start + value_offset as u64) as u32;
            if let Some(checkpoint) = self.checkpoint.as_mut() {
                checkpoint.place_next(relocation.new_segment, relocation.offset);
            }
            self.relocations.push(relocation);
        }
        self.inner.state.borrow_mut().stats.bytes_written_total += record.len() as u64;
        self.payload.clear();
        self.batch_count = 0;
        Ok(())
    }

    /// Finishes the current base file (fdatasync) and creates the next one.
    async fn start_file(&mut self) -> Result<(), StoreError> {
        if let Some(previous) = self.files.last() {
            sync_file(self.inner, &*previous.file).await?;
        }
        let id = self.inner.state.borrow_mut().allocate_segment_id();
        let name = segment_file_name(SegmentKind::Base, id);
        let file = self
            .inner
            .disk
            .open_file(&name, true)
            .await
            .map_err(|source| io_error("create", &name, source))?;
        self.files.push(BaseFile {
            id,
            file,
            written_bytes: 0,
            record_bytes: 0,
        });
        Ok(())
    }
}
