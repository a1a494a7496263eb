//! Opening a store: read the manifest, drop orphans of a crash, replay base segments then log
//! segments in id order, verify every record, rebuild the index, cut a torn tail.

use std::rc::Rc;

use super::checkpoint;
use super::index::{Entry, Index};
use super::log::{Writer, ROUNDS_IN_FLIGHT_MAX};
use super::manifest;
use super::segments::{
    parse_segment_file_name, segment_file_name, Segment, SegmentKind, Segments, CHECKPOINT_NAME,
    CHECKPOINT_TMP_NAME, MANIFEST_NAME, MANIFEST_TMP_NAME,
};
use super::{io_error, State, StoreStats};
use crate::codec::{
    self, DecodedOp, ManifestData, PayloadReader, BLOCK_BYTES, FORMAT_VERSION,
    FORMAT_VERSION_ENCRYPTED, SEGMENT_ID_MAX,
};
use crate::{Disk, DiskFile, ObjectId, RecoveryMode, StoreConfig, StoreError};

/// What recovery rebuilt, ready to become the store's state.
pub struct Recovered {
    index: Index,
    segments: Segments,
    manifest: ManifestData,
    /// The newest log segment, appended to from its end; `None` if no log segment exists yet.
    writer: Option<Writer>,
    /// The segment new commits go to, and how full it already is.
    active_segment: u64,
    active_bytes: u64,
    next_segment_id: u64,
    /// One past the highest sequence number found.
    pub next_seq: u64,
    /// Records dropped by salvage recovery.
    pub losses: u64,
    /// Set when the store could not be created: it opens poisoned, with this as the reason.
    pub unwritable: Option<StoreError>,
    /// How many rounds the writer may keep in flight: the configured number, or 1 while the
    /// manifest still names a format that has no overlap flag (its upgrade failed).
    rounds_in_flight_max: u8,
    /// Torn tails cut that held a record of a second round in flight.
    overlapped_tails_cut: u64,
    /// Whether the index checkpoint stood in for the base segments' replay.
    from_checkpoint: bool,
}

impl Recovered {
    pub(super) fn into_state(self) -> State {
        State {
            index: self.index,
            segments: self.segments,
            pending: Default::default(),
            undo: Default::default(),
            next_seq: self.next_seq,
            active_segment: self.active_segment,
            active_assigned_bytes: self.active_bytes,
            writer: self.writer,
            next_segment_id: self.next_segment_id,
            manifest: self.manifest,
            stats: StoreStats {
                overlapped_tails_cut: self.overlapped_tails_cut,
                recovered_from_checkpoint: self.from_checkpoint,
                ..StoreStats::default()
            },
            poisoned: self.unwritable.is_some(),
            closed: false,
            compacting: false,
            writing: false,
            preparing: false,
            rounds_in_flight_max: self.rounds_in_flight_max,
        }
    }
}

pub async fn recover(config: &StoreConfig, disk: &dyn Disk) -> Result<Recovered, StoreError> {
    let names = disk
        .list()
        .await
        .map_err(|source| io_error("list", "store directory", source))?;
    if names.iter().any(|name| name == MANIFEST_TMP_NAME) {
        // A manifest replacement that did not reach its rename: the old manifest stands.
        disk.remove(MANIFEST_TMP_NAME)
            .await
            .map_err(|source| io_error("remove", MANIFEST_TMP_NAME, source))?;
    }
    if names.iter().any(|name| name == CHECKPOINT_TMP_NAME) {
        // A checkpoint that did not reach its rename; the old one, if any, stands.
        disk.remove(CHECKPOINT_TMP_NAME)
            .await
            .map_err(|source| io_error("remove", CHECKPOINT_TMP_NAME, source))?;
    }
    let mut files: Vec<(SegmentKind, u64)> = names
        .iter()
        .filter_map(|name| parse_segment_file_name(name))
        .collect();
    files.sort_by_key(|(kind, id)| (*id, *kind == SegmentKind::Log));
    check_segment_ids(&files)?;

    let (manifest_version, manifest) = if names.iter().any(|name| name == MANIFEST_NAME) {
        manifest::read(disk).await?
    } else if files.is_empty() {
        let fresh = ManifestData {
            log_start: 1,
            base_segments: Vec::new(),
            encrypted: config.encryption.is_some(),
        };
        if let Err(error @ StoreError::Io { .. }) = manifest::write(disk, &fresh).await {
            // A new store on a full (or failing) disk: open it empty and not writable rather
            // than stop the server, whose other stores may hold data to read. Nothing was
            // stored here, so nothing is lost; the next open tries again.
            tracing::error!(%error, "cannot create the store; it opens empty and refuses writes");
            return Ok(Recovered {
                index: Index::default(),
                segments: Segments::default(),
                manifest: fresh,
                writer: None,
                active_segment: 1,
                active_bytes: 0,
                next_segment_id: 2,
                next_seq: 1,
                losses: 0,
                unwritable: Some(error),
                rounds_in_flight_max: 1,
                overlapped_tails_cut: 0,
                from_checkpoint: false,
            });
        }
        let version = if fresh.encrypted {
            FORMAT_VERSION_ENCRYPTED
        } else {
            FORMAT_VERSION
        };
        (version, fresh)
    } else {
        return Err(StoreError::Corruption {
            file: MANIFEST_NAME.to_string(),
            offset: 0,
            reason: format!("missing while {} segment files exist", files.len()),
        });
    };
    match (manifest.encrypted, config.encryption.is_some()) {
        (true, false) => {
            return Err(StoreError::Encryption {
                reason: format!(
                    "the store in {} is encrypted: open it with its key",
                    config.dir.display()
                ),
            })
        }
        (false, true) => {
            return Err(StoreError::Encryption {
                reason: format!(
                "the store in {} was written without encryption: it cannot be opened with a key",
                config.dir.display()
            ),
            })
        }
        _ => {}
    }
    for id in &manifest.base_segments {
        // Compaction allocates its base ids after the seal that becomes the log start; the
        // log start's own id is then still free for the first log segment.
        if *id <= manifest.log_start {
            return Err(StoreError::Corruption {
                file: MANIFEST_NAME.to_string(),
                offset: 0,
                reason: format!(
                    "base segment {id} is not after log start {}",
                    manifest.log_start
                ),
            });
        }
        if !files.contains(&(SegmentKind::Base, *id)) {
            return Err(StoreError::Corruption {
                file: segment_file_name(SegmentKind::Base, *id),
                offset: 0,
                reason: "listed in MANIFEST but missing".to_string(),
            });
        }
    }

    let is_orphan = |(kind, id): &(SegmentKind, u64)| match kind {
        SegmentKind::Base => !manifest.base_segments.contains(id),
        SegmentKind::Log => *id < manifest.log_start,
    };
    let (orphans, live): (Vec<_>, Vec<_>) = files.into_iter().partition(is_orphan);
    for (kind, id) in &orphans {
        let name = segment_file_name(*kind, *id);
        tracing::warn!(file = %name, "removing a segment file left over by an interrupted compaction");
        disk.remove(&name)
            .await
            .map_err(|source| io_error("remove", &name, source))?;
    }

    let newest_log = live
        .iter()
        .filter(|(kind, _)| *kind == SegmentKind::Log)
        .map(|(_, id)| *id)
        .max();
    let mut replay = Replay {
        config,
        index: Index::default(),
        segments: Segments::default(),
        last_log_seq: 0,
        last_log_segment: 0,
        fatal: None,
        max_seq: 0,
        losses: 0,
        record_bytes: 0,
        overlapped_tails_cut: 0,
    };
    // The checkpoint, when it matches the manifest, is the index the bases would replay to.
    // A salvage open replays everything, since it is there to find damage in the bases too.
    let checkpoint = if config.recovery == RecoveryMode::Strict
        && config.encryption.is_none()
        && !manifest.base_segments.is_empty()
        && names.iter().any(|name| name == CHECKPOINT_NAME)
    {
        checkpoint::load(disk, &manifest, config.inline_value_bytes_max).await
    } else {
        None
    };
    let from_checkpoint = checkpoint.is_some();
    if let Some(loaded) = checkpoint {
        tracing::info!(
            objects = loaded.index.objects.len(),
            keys = loaded.index.keys_total,
            "index loaded from the checkpoint; replaying the log after sequence {}",
            loaded.seal_seq
        );
        replay.index = loaded.index;
        replay.max_seq = loaded.seal_seq;
        replay.segments.by_id.extend(loaded.segments);
    }
    let mut writer = None;
    // Bases first (they hold the oldest state), then the log in id order.
    let ordered = live
        .iter()
        .filter(|(kind, _)| *kind == SegmentKind::Base && !from_checkpoint)
        .chain(live.iter().filter(|(kind, _)| *kind == SegmentKind::Log));
    for &(kind, id) in ordered {
        let newest = kind == SegmentKind::Log && Some(id) == newest_log;
        replay.record_bytes = 0;
        let (file, end, length) = replay.replay_file(disk, kind, id, newest).await?;
        replay.segments.by_id.insert(
            id,
            Segment {
                kind,
                file: file.clone(),
                written_bytes: end,
                // The same figure the live store counted while appending these records.
                record_bytes: replay.record_bytes,
            },
        );
        if newest {
            let offset = codec::block_align_up(end as usize) as u64;
            // The zero tail after the last record (the file was fdatasync'd) is as good as a
            // prepared one: the writer overwrites it.
            writer = Some(Writer::new(id, file, offset, length));
        }
    }

    // Likewise a directory entry (a new segment, a renamed manifest) whose sync_dir failed
    // before the reopen: the state just read must be durable before it is built on.
    disk.sync_dir()
        .await
        .map_err(|source| io_error("sync_dir", "store directory", source))?;

    let highest_id = live
        .iter()
        .map(|(_, id)| *id)
        .chain([manifest.log_start])
        .max()
        .unwrap_or(1);
    let (active_segment, active_bytes) = match &writer {
        Some(writer) => (writer.segment, writer.offset),
        None => (manifest.log_start, 0),
    };
    let mut rounds_in_flight_max = config.rounds_in_flight.clamp(1, ROUNDS_IN_FLIGHT_MAX);
    if manifest_version < FORMAT_VERSION {
        // The records read the same in both versions; only overlapped records (written by
        // this version) are new, and a build of the older version must refuse the store by
        // its version before meeting one. So the manifest is rewritten first.
        match manifest::write(disk, &manifest).await {
            Ok(_) => tracing::info!(
                from = manifest_version,
                to = FORMAT_VERSION,
                "store format upgraded"
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot upgrade the store format; the log writes one round at a time");
                rounds_in_flight_max = 1;
            }
        }
    }
    Ok(Recovered {
        index: replay.index,
        segments: replay.segments,
        manifest,
        writer,
        active_segment,
        active_bytes,
        next_segment_id: highest_id + 1,
        next_seq: replay.last_log_seq.max(replay.max_seq) + 1,
        losses: replay.losses,
        unwritable: None,
        rounds_in_flight_max,
        overlapped_tails_cut: replay.overlapped_tails_cut,
        from_checkpoint,
    })
}

/// What recovery found after a record that does not verify, when it may be cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    /// No record that verifies follows.
    Torn,
    /// Exactly one follows: the damaged round's overlapped partner.
    Overlapped,
}

/// Refuses segment files the store could not have written: an id must be at most
/// `SEGMENT_ID_MAX` and belong to one file only, since the index finds files by id alone.
fn check_segment_ids(files: &[(SegmentKind, u64)]) -> Result<(), StoreError> {
    let corruption = |(kind, id): (SegmentKind, u64), reason: &str| StoreError::Corruption {
        file: segment_file_name(kind, id),
        offset: 0,
        reason: reason.to_string(),
    };
    for (index, &(kind, id)) in files.iter().enumerate() {
        if id > SEGMENT_ID_MAX {
            let reason =
                format!("segment id above the largest the format allows, {SEGMENT_ID_MAX}");
            return Err(corruption((kind, id), &reason));
        }
        // Sorted by id, so a log and a base of one id sit side by side.
        if index > 0 && files[index - 1].1 == id {
            return Err(corruption(
                (kind, id),
                "a log and a base segment share this id",
            ));
        }
    }
    Ok(())
}

/// The state built while replaying files one after another.
struct Replay<'a> {
    config: &'a StoreConfig,
    index: Index,
    segments: Segments,
    /// The last sequence number of the log so far; log records must exceed it.
    last_log_seq: u64,
    /// The log segment that held `last_log_seq`, to name both sides of a gap.
    last_log_segment: u64,
    /// Set by `replay_record` when a log record does not follow the one before it: batches
    /// were lost between them (a segment file gone, say), which no torn tail explains.
    /// An error that stops recovery whatever the tail rules would say: a sequence gap, or
    /// a record this store cannot open (`StoreError::Encryption`).
    fatal: Option<StoreError>,
    /// The highest sequence number seen in any file (base records carry their snapshot's).
    max_seq: u64,
    losses: u64,
    /// Bytes of the records of the current file applied so far, without padding: the
    /// segment's `record_bytes`, which the dead-byte figure is counted from.
    record_bytes: u64,
    /// Torn tails cut with a record of the second round in flight after the damage.
    overlapped_tails_cut: u64,
}

impl Replay<'_> {
    /// Replays one file; returns it, where its valid records end, and its length once a torn
    /// tail is cut.
    async fn replay_file(
        &mut self,
        disk: &dyn Disk,
        kind: SegmentKind,
        id: u64,
        newest: bool,
    ) -> Result<(Rc<dyn DiskFile>, u64, u64), StoreError> {
        let name = segment_file_name(kind, id);
        let file = disk
            .open_file(&name, false)
            .await
            .map_err(|source| io_error("open", &name, source))?;
        let length = file
            .len()
            .await
            .map_err(|source| io_error("stat", &name, source))?;
        let corruption = |offset: usize, reason: String| StoreError::Corruption {
            file: name.clone(),
            offset: offset as u64,
            reason,
        };
        if length > u64::from(u32::MAX) {
            return Err(corruption(
                0,
                format!("{length} bytes, more than value offsets can name"),
            ));
        }
        let bytes = file
            .read_at(0, length as usize)
            .await
            .map_err(|source| io_error("read", &name, source))?;
        if bytes.len() as u64 != length {
            return Err(corruption(
                bytes.len(),
                format!("read {} of {length} bytes", bytes.len()),
            ));
        }

        let mut offset = 0;
        let mut end = 0;
        while offset < bytes.len() {
            let replayed = self.replay_record(&bytes[offset..], offset, kind, id);
            if let Some(gap) = self.fatal.take() {
                return Err(gap);
            }
            match replayed {
                Ok(record_bytes) => {
                    offset += codec::block_align_up(record_bytes);
                    end = offset.min(bytes.len());
                }
                // Nothing but zeros from here to the end of the file: the part of a log
                // segment that was prepared (zero-filled and synced) and never written. Not
                // damage, in any log segment. Base segments are written whole and never
                // prepared, so zeros there are lost records.
                Err(_)
                    if kind == SegmentKind::Log
                        && bytes[offset..].iter().all(|byte| *byte == 0) =>
                {
                    end = offset;
                    break;
                }
                Err(reason) => {
                    let tail = if newest {
                        self.unacknowledged_tail(&bytes, offset, id)
                    } else {
                        None
                    };
                    if let Some(tail) = tail {
                        let overlapped = tail == Tail::Overlapped;
                        self.overlapped_tails_cut += u64::from(overlapped);
                        tracing::warn!(
                            file = %name,
                            offset,
                            bytes = bytes.len() - offset,
                            %reason,
                            overlapped,
                            "cutting a torn tail off the newest log segment"
                        );
                        end = offset;
                        break;
                    }
                    if self.config.recovery != RecoveryMode::Salvage {
                        return Err(corruption(offset, reason));
                    }
                    tracing::warn!(file = %name, offset, %reason, "salvage: skipping a record that does not verify");
                    self.losses += 1;
                    offset += BLOCK_BYTES;
                }
            }
        }
        // A torn tail (or, salvaging, skipped blocks at the end) is cut; a zero tail is kept.
        let mut length = length;
        if newest && bytes[end..].iter().any(|byte| *byte != 0) {
            file.truncate(end as u64)
                .await
                .map_err(|source| io_error("truncate", &name, source))?;
            length = end as u64;
        }
        if newest {
            // Even uncut, the newest segment may end in a record whose fdatasync failed before
            // a reopen without a power cut: readable now, not durable. The index is built on
            // it and new commits may go to a later segment, so it must be made durable before
            // anything is appended, or a power cut would leave a hole in the log.
            file.fdatasync()
                .await
                .map_err(|source| io_error("fdatasync", &name, source))?;
        }
        Ok((file, end as u64, length))
    }

    /// Verifies the record at the start of `bytes` and applies it whole, or not at all.
    /// Returns the record's length without padding.
    fn replay_record(
        &mut self,
        bytes: &[u8],
        file_offset: usize,
        kind: SegmentKind,
        id: u64,
    ) -> Result<usize, String> {
        let (header, stored) = codec::decode_record(bytes).map_err(|error| error.0)?;
        // Sealed: opened (authenticated) before anything is applied; a tag that does not
        // match is damage like a bad crc.
        let opened =
            codec::open_payload(bytes, (&header, stored), self.config.encryption.as_deref());
        let payload = match opened {
            Ok(payload) => payload,
            // The crc matched, so this is no torn write: tampering, or a bug. Never cut as a
            // torn tail; strict and salvage opens both stop.
            Err(codec::PayloadError::Damaged(error)) => {
                self.fatal = Some(StoreError::Corruption {
                    file: segment_file_name(kind, id),
                    offset: file_offset as u64,
                    reason: error.0.clone(),
                });
                return Err(error.0);
            }
            Err(codec::PayloadError::Refused(reason)) => {
                self.fatal = Some(StoreError::Encryption {
                    reason: format!(
                        "{} at offset {file_offset}: {reason}",
                        segment_file_name(kind, id)
                    ),
                });
                return Err(reason);
            }
        };
        if header.segment != id {
            return Err(format!(
                "record belongs to segment {}, not {id}",
                header.segment
            ));
        }
        if kind == SegmentKind::Log && header.seq <= self.last_log_seq {
            return Err(format!(
                "sequence {} does not follow {}",
                header.seq, self.last_log_seq
            ));
        }
        // The record's last sequence number, and the next one after it, must be countable.
        let last_seq = header
            .seq
            .checked_add(u64::from(header.batch_count.max(1)) - 1)
            .filter(|last| *last < u64::MAX)
            .ok_or_else(|| format!("sequence {} overflows", header.seq))?;
        // Decode everything before applying anything, so a bad record leaves no trace.
        let mut reader = PayloadReader::new(&payload);
        let mut batches: Vec<(ObjectId, Vec<DecodedOp<'_>>)> = Vec::new();
        for _ in 0..header.batch_count {
            let mut ops = Vec::new();
            let object = reader.next_batch(&mut ops).map_err(|error| error.0)?;
            batches.push((object, ops));
        }
        if !reader.is_done() {
            return Err("payload has bytes after its last batch".to_string());
        }
        let expected_seq = self.last_log_seq + 1;
        if kind == SegmentKind::Log && self.last_log_seq > 0 && header.seq != expected_seq {
            // Commits take consecutive numbers, the writer publishes groups in order, and a
            // round left whole after its damaged partner is cut as a torn tail above, so only
            // lost records leave a gap.
            let missing = header.seq - expected_seq;
            let previous_file = segment_file_name(SegmentKind::Log, self.last_log_segment);
            let file = segment_file_name(SegmentKind::Log, id);
            if self.config.recovery == RecoveryMode::Salvage {
                tracing::warn!(%previous_file, %file, from = expected_seq, missing, "salvage: sequence numbers missing between log records");
                self.losses += missing;
            } else {
                self.fatal = Some(StoreError::SequenceGap {
                    previous_file,
                    last_seq: self.last_log_seq,
                    file,
                    offset: file_offset as u64,
                    next_seq: header.seq,
                });
                return Err("sequence gap".to_string());
            }
        }
        let payload_offset = file_offset + codec::payload_start(header.encrypted);
        for (object, ops) in &batches {
            self.apply(object, ops, id as u32, (file_offset, payload_offset));
        }
        if kind == SegmentKind::Log {
            self.last_log_seq = last_seq;
            self.last_log_segment = id;
        }
        self.max_seq = self.max_seq.max(header.seq);
        self.record_bytes += u64::from(header.length);
        Ok(header.length as usize)
    }

    fn apply(
        &mut self,
        object: &ObjectId,
        ops: &[DecodedOp<'_>],
        segment: u32,
        (record, payload_offset): (usize, usize),
    ) {
        for op in ops {
            match *op {
                DecodedOp::Put {
                    key,
                    value,
                    value_offset,
                    value_crc,
                } => {
                    let entry = if value.len() > self.config.inline_value_bytes_max {
                        Entry::OnDisk {
                            segment,
                            record: record as u32,
                            offset: (payload_offset + value_offset) as u32,
                            len: value.len() as u32,
                            // Encrypted: the keyed tag of the authenticated value.
                            crc: match &self.config.encryption {
                                Some(encryption) => encryption.value_tag(value),
                                None => value_crc,
                            },
                        }
                    } else {
                        Entry::Inline {
                            value: value.into(),
                            segment,
                        }
                    };
                    self.index.put(object, key, entry);
                }
                DecodedOp::Delete { key } => {
                    self.index.delete(object, key);
                }
                DecodedOp::DeleteAll => {
                    self.index.delete_all(object);
                }
                DecodedOp::SetAlarm { time_ms } => {
                    self.index.set_alarm(object, time_ms);
                }
                DecodedOp::DeleteAlarm => {
                    self.index.delete_alarm(object);
                }
            }
        }
    }

    /// Which tail the damage at `offset` is, if it can be what a crash leaves of rounds in
    /// flight, none of them acknowledged: no record that verifies follows it (torn), or exactly
    /// one does, marked as written while the round before it was in flight, and numbered past
    /// at least one batch after the last good record, the damaged round's (overlapped). The writer keeps at most two rounds
    /// in flight and acknowledges in order, so the damaged round and that one were both
    /// unacknowledged. Anything else after the damage proves acknowledged data was lost.
    fn unacknowledged_tail(&self, bytes: &[u8], offset: usize, id: u64) -> Option<Tail> {
        let Some((start, header)) = self.valid_record_from(bytes, offset + BLOCK_BYTES, id) else {
            return Some(Tail::Torn);
        };
        let after = start + codec::block_align_up(header.length as usize);
        // The last good batch: in the log so far, or, in the first log segment after a
        // compaction, the base segments' seal.
        let last_good = self.last_log_seq.max(self.max_seq);
        (header.overlapped
            && header.seq > last_good + 1
            && self.valid_record_from(bytes, after, id).is_none())
        .then_some(Tail::Overlapped)
    }

    /// The first record at or after block offset `from` that verifies, belongs to segment
    /// `id` and is numbered past the last good record.
    fn valid_record_from(
        &self,
        bytes: &[u8],
        from: usize,
        id: u64,
    ) -> Option<(usize, codec::RecordHeader)> {
        let magic = codec::RECORD_MAGIC.to_le_bytes();
        (from..bytes.len()).step_by(BLOCK_BYTES).find_map(|start| {
            if !bytes[start..].starts_with(&magic) {
                return None;
            }
            let (header, _) = codec::decode_record(&bytes[start..]).ok()?;
            (header.segment == id && header.seq > self.last_log_seq).then_some((start, header))
        })
    }
}
