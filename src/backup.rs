//! Backups: the file `GET /admin/backup` streams and `stead restore` reads.
//!
//! Format (version 1), little-endian throughout:
//! - a header of 32 bytes: `STEADBAK`, the version (u32), the partition count and the core
//!   count of the server (u32 each), the time it was taken (ms since the epoch, i64), and the
//!   CRC-32 of the 28 bytes before it (u32);
//! - records: a kind (u8), the payload's length (u32), the payload, and the CRC-32 of the kind,
//!   the length and the payload (u32). Kinds:
//!   - `CORE` (core u32, seq u64): the objects that follow come from that core's store, as of
//!     that sequence number;
//!   - `OBJECT` (id [32], has alarm u8, alarm i64, keys u32): the next `keys` `ENTRY` records
//!     are this object's;
//!   - `ENTRY` (key length u32, key, value);
//!   - `CORE_END` (core u32, objects u64, entries u64);
//!   - `END` (cores u32, objects u64, entries u64): the last record; a file without it is
//!     truncated.
//!
//! A reader checks every checksum, length and count, and names the byte where a file stops
//! making sense.

use std::fmt;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use stead_storage::{create_dir_durably, ObjectData, ObjectId as StoreObjectId, Store};

use crate::config::Config;
use crate::id::ObjectId;
use crate::layout::{self, migration_batches, store_config, store_dir};
use crate::object::store_limits;

/// The first bytes of every backup.
pub const MAGIC: &[u8; 8] = b"STEADBAK";
/// The format this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_BYTES: usize = 32;

const KIND_CORE: u8 = 1;
const KIND_OBJECT: u8 = 2;
const KIND_ENTRY: u8 = 3;
const KIND_CORE_END: u8 = 4;
const KIND_END: u8 = 5;

/// Longest record payload a reader takes (a key and a value within the engine's limits fit
/// far below it), so a corrupt length cannot make it allocate without bound.
const RECORD_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The header of a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub partitions: u32,
    pub cores: u32,
    pub created_ms: i64,
}

/// Writes the header.
pub fn encode_header(header: &Header, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&header.partitions.to_le_bytes());
    out.extend_from_slice(&header.cores.to_le_bytes());
    out.extend_from_slice(&header.created_ms.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn record(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(kind);
    // Payloads are a key and a value within the engine's limits, far below 4 GiB.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The `CORE` record.
pub fn encode_core(core: u32, seq: u64, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(12);
    payload.extend_from_slice(&core.to_le_bytes());
    payload.extend_from_slice(&seq.to_le_bytes());
    record(KIND_CORE, &payload, out);
}

/// The `OBJECT` record and its `ENTRY` records.
pub fn encode_object(id: &StoreObjectId, data: &ObjectData, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(45);
    payload.extend_from_slice(id);
    payload.push(u8::from(data.alarm_ms.is_some()));
    payload.extend_from_slice(&data.alarm_ms.unwrap_or(0).to_le_bytes());
    payload.extend_from_slice(&(data.entries.len() as u32).to_le_bytes());
    record(KIND_OBJECT, &payload, out);
    for (key, value) in &data.entries {
        let mut payload = Vec::with_capacity(4 + key.len() + value.len());
        payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
        payload.extend_from_slice(key);
        payload.extend_from_slice(value);
        record(KIND_ENTRY, &payload, out);
    }
}

/// The `CORE_END` record.
pub fn encode_core_end(core: u32, objects: u64, entries: u64, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(20);
    payload.extend_from_slice(&core.to_le_bytes());
    payload.extend_from_slice(&objects.to_le_bytes());
    payload.extend_from_slice(&entries.to_le_bytes());
    record(KIND_CORE_END, &payload, out);
}

/// The `END` record.
pub fn encode_end(cores: u32, objects: u64, entries: u64, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(20);
    payload.extend_from_slice(&cores.to_le_bytes());
    payload.extend_from_slice(&objects.to_le_bytes());
    payload.extend_from_slice(&entries.to_le_bytes());
    record(KIND_END, &payload, out);
}

/// Why a backup cannot be read or restored.
#[derive(Debug)]
#[non_exhaustive]
pub enum BackupError {
    /// The file does not make sense from byte `offset` on.
    Corrupt { offset: u64, reason: String },
    /// The file ends at `offset` before its `END` record.
    Truncated { offset: u64 },
    /// The target data directory exists and is not empty.
    NotEmpty { path: PathBuf },
    /// Reading the backup or writing the data directory failed.
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The stores of the new data directory failed.
    Store(String),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupError::Corrupt { offset, reason } => {
                write!(f, "the backup is corrupt at byte {offset}: {reason}")
            }
            BackupError::Truncated { offset } => write!(
                f,
                "the backup is truncated: it ends at byte {offset}, before its end record"
            ),
            BackupError::NotEmpty { path } => write!(
                f,
                "{} is not empty: restore builds a new data directory",
                path.display()
            ),
            BackupError::Io { what, source } => write!(f, "{what}: {source}"),
            BackupError::Store(reason) => write!(f, "cannot write the restored stores: {reason}"),
        }
    }
}

impl std::error::Error for BackupError {}

/// One decoded record.
#[derive(Debug, PartialEq)]
enum Record {
    Core {
        core: u32,
        seq: u64,
    },
    Object {
        id: StoreObjectId,
        alarm_ms: Option<i64>,
        keys: u32,
    },
    Entry {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    CoreEnd {
        core: u32,
        objects: u64,
        entries: u64,
    },
    End {
        cores: u32,
        objects: u64,
        entries: u64,
    },
}

/// Reads a backup record by record, checking each.
pub struct Reader<R: Read> {
    input: R,
    /// Bytes read so far: where the next record starts.
    offset: u64,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<(Reader<R>, Header), BackupError> {
        let mut header = [0u8; HEADER_BYTES];
        let read = read_full(&mut input, &mut header)?;
        if read < HEADER_BYTES {
            return Err(BackupError::Truncated {
                offset: read as u64,
            });
        }
        let corrupt = |reason: &str| BackupError::Corrupt {
            offset: 0,
            reason: reason.to_string(),
        };
        if &header[..8] != MAGIC {
            return Err(corrupt("not a stead backup (no STEADBAK at its start)"));
        }
        let stored_crc = u32::from_le_bytes(array(&header[28..32]));
        if crc32fast::hash(&header[..28]) != stored_crc {
            return Err(corrupt("the header's checksum does not match"));
        }
        let version = u32::from_le_bytes(array(&header[8..12]));
        if version != VERSION {
            return Err(corrupt(&format!(
                "format version {version}; this build reads version {VERSION}"
            )));
        }
        let header = Header {
            partitions: u32::from_le_bytes(array(&header[12..16])),
            cores: u32::from_le_bytes(array(&header[16..20])),
            created_ms: i64::from_le_bytes(array(&header[20..28])),
        };
        if header.partitions == 0 || header.cores == 0 {
            return Err(corrupt("zero partitions or cores"));
        }
        let reader = Reader {
            input,
            offset: HEADER_BYTES as u64,
        };
        Ok((reader, header))
    }

    /// Whether the input has no byte left.
    fn at_end(&mut self) -> Result<bool, BackupError> {
        let mut byte = [0u8; 1];
        Ok(read_full(&mut self.input, &mut byte)? == 0)
    }

    /// The next record; `Truncated` at the end of the input.
    fn next(&mut self) -> Result<Record, BackupError> {
        let start = self.offset;
        let mut head = [0u8; 5];
        let read = read_full(&mut self.input, &mut head)?;
        if read < head.len() {
            return Err(BackupError::Truncated {
                offset: start + read as u64,
            });
        }
        let length = u32::from_le_bytes(array(&head[1..5])) as usize;
        let corrupt = |reason: String| BackupError::Corrupt {
            offset: start,
            reason,
        };
        if length > RECORD_PAYLOAD_BYTES_MAX {
            return Err(corrupt(format!("a record claims {length} bytes")));
        }
        let mut body = vec![0u8; length + 4];
        let read = read_full(&mut self.input, &mut body)?;
        if read < body.len() {
            return Err(BackupError::Truncated {
                offset: start + 5 + read as u64,
            });
        }
        self.offset = start + 5 + body.len() as u64;
        let (payload, crc) = body.split_at(length);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head);
        hasher.update(payload);
        if hasher.finalize() != u32::from_le_bytes(array(crc)) {
            return Err(corrupt("a record's checksum does not match".to_string()));
        }
        let short = || corrupt(format!("record of kind {} is too short", head[0]));
        let record = match head[0] {
            KIND_CORE if length == 12 => Record::Core {
                core: u32::from_le_bytes(array(&payload[..4])),
                seq: u64::from_le_bytes(array(&payload[4..12])),
            },
            KIND_OBJECT if length == 45 => {
                let mut id = [0u8; 32];
                id.copy_from_slice(&payload[..32]);
                let alarm = i64::from_le_bytes(array(&payload[33..41]));
                Record::Object {
                    id,
                    alarm_ms: (payload[32] != 0).then_some(alarm),
                    keys: u32::from_le_bytes(array(&payload[41..45])),
                }
            }
            KIND_ENTRY if length >= 4 => {
                let key_length = u32::from_le_bytes(array(&payload[..4])) as usize;
                let rest = &payload[4..];
                if key_length > rest.len() {
                    return Err(short());
                }
                let (key, value) = rest.split_at(key_length);
                Record::Entry {
                    key: key.to_vec(),
                    value: value.to_vec(),
                }
            }
            KIND_CORE_END | KIND_END if length == 20 => {
                let first = u32::from_le_bytes(array(&payload[..4]));
                let objects = u64::from_le_bytes(array(&payload[4..12]));
                let entries = u64::from_le_bytes(array(&payload[12..20]));
                if head[0] == KIND_END {
                    Record::End {
                        cores: first,
                        objects,
                        entries,
                    }
                } else {
                    Record::CoreEnd {
                        core: first,
                        objects,
                        entries,
                    }
                }
            }
            KIND_CORE | KIND_OBJECT | KIND_ENTRY | KIND_CORE_END | KIND_END => return Err(short()),
            kind => return Err(corrupt(format!("unknown record kind {kind}"))),
        };
        Ok(record)
    }
}

/// Reads until `buffer` is full or the input ends; how many bytes it read.
fn read_full(input: &mut impl Read, buffer: &mut [u8]) -> Result<usize, BackupError> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(BackupError::Io {
                    what: "cannot read the backup".to_string(),
                    source,
                })
            }
        }
    }
    Ok(filled)
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// What a restore wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreSummary {
    pub objects: u64,
    pub entries: u64,
    pub cores: usize,
}

/// Builds the data directory `data_dir` for `cores` cores (0: as many as the backup's server
/// had) from the backup at `from`, with the storage settings of `base` (give the server's
/// configuration, so that values it allowed fit again). Refuses a `data_dir` that is not empty. The stores are
/// written into a directory beside it and renamed into place only once the whole backup was
/// read and every store is durable, so a failed restore leaves no half-built data directory.
pub fn restore(
    base: &Config,
    from: &Path,
    data_dir: &Path,
    cores: usize,
) -> Result<RestoreSummary, BackupError> {
    let io = |what: String| move |source| BackupError::Io { what, source };
    let data_dir = &absolute_target(data_dir)?;
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty {
                    path: data_dir.clone(),
                });
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(BackupError::Io {
                what: format!("cannot read {}", data_dir.display()),
                source,
            })
        }
    }
    let file = std::fs::File::open(from).map_err(io(format!("cannot open {}", from.display())))?;
    let (reader, header) = Reader::new(BufReader::with_capacity(1 << 20, file))?;
    // `absolute_target` made sure the path has a last component.
    let name = data_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let building = data_dir.with_file_name(format!(".{name}.restoring"));
    if building.exists() {
        std::fs::remove_dir_all(&building)
            .map_err(io(format!("cannot remove {}", building.display())))?;
    }
    let placed = build(base, reader, header, &building, cores)
        .and_then(|summary| place(&building, data_dir).map(|()| summary));
    if placed.is_err() {
        // Best effort: a leftover is removed by the next restore to the same place anyway.
        let _ = std::fs::remove_dir_all(&building);
    }
    placed
}

/// `data_dir` as an absolute path with no `.` or `..` (its parent must exist), so that the
/// directory built beside it is beside it and not inside; refuses `/`.
fn absolute_target(data_dir: &Path) -> Result<PathBuf, BackupError> {
    let io = |what: String| move |source| BackupError::Io { what, source };
    let resolved = if data_dir.exists() {
        std::fs::canonicalize(data_dir)
            .map_err(io(format!("cannot resolve {}", data_dir.display())))?
    } else {
        let parent = match data_dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let parent = std::fs::canonicalize(parent)
            .map_err(io(format!("cannot resolve {}", parent.display())))?;
        match data_dir.file_name() {
            Some(name) => parent.join(name),
            None => parent,
        }
    };
    if resolved.file_name().is_none() {
        return Err(BackupError::Io {
            what: format!("cannot restore into {}", data_dir.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the data directory must not be the root",
            ),
        });
    }
    Ok(resolved)
}

/// Moves the built directory into place (replacing `data_dir` if it is an empty directory)
/// and makes the rename durable.
fn place(building: &Path, data_dir: &Path) -> Result<(), BackupError> {
    let io = |what: String| move |source| BackupError::Io { what, source };
    if data_dir.exists() {
        std::fs::remove_dir(data_dir)
            .map_err(io(format!("cannot replace {}", data_dir.display())))?;
    }
    std::fs::rename(building, data_dir).map_err(io(format!(
        "cannot rename {} to {}",
        building.display(),
        data_dir.display()
    )))?;
    if let Some(parent) = data_dir.parent() {
        create_dir_durably(parent).map_err(|(path, source)| BackupError::Io {
            what: format!("cannot sync {}", path.display()),
            source,
        })?;
    }
    Ok(())
}

/// Builds the data directory `building` from the records of `reader`.
fn build<R: Read + Send + 'static>(
    base: &Config,
    reader: Reader<R>,
    header: Header,
    building: &Path,
    cores: usize,
) -> Result<RestoreSummary, BackupError> {
    let mut config = Config {
        data_dir: building.to_path_buf(),
        cores: if cores == 0 {
            header.cores as usize
        } else {
            cores
        },
        ..base.clone()
    };
    config.storage.partitions = header.partitions;
    let layout = layout::prepare(&config).map_err(|error| BackupError::Store(error.to_string()))?;
    let summary = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("stead-restore")
        .io_memory(RESTORE_IO_MEMORY_BYTES)
        .spawn(move || async move { write_stores(&config, layout, header, reader).await })
        .map_err(|error| BackupError::Store(format!("cannot start an executor: {error}")))?
        .join()
        .map_err(|error| BackupError::Store(format!("the restore executor failed: {error}")))??;
    Ok(summary)
}

/// io_uring memory of the restore's executor (the machine's memlock limit is small).
const RESTORE_IO_MEMORY_BYTES: usize = 512 * 1024;

/// Reads every record and commits each object to the store of the core that owns it.
async fn write_stores<R: Read>(
    config: &Config,
    layout: layout::Layout,
    header: Header,
    mut reader: Reader<R>,
) -> Result<RestoreSummary, BackupError> {
    let store_error = |error: stead_storage::StoreError| BackupError::Store(error.to_string());
    let mut stores = Vec::with_capacity(layout.cores);
    for core in 0..layout.cores {
        let dir = store_dir(&config.data_dir, layout.generation, core);
        create_dir_durably(&dir).map_err(|(path, error)| BackupError::Io {
            what: format!("cannot create {}", path.display()),
            source: error,
        })?;
        stores.push(
            Store::open(store_config(config, dir))
                .await
                .map_err(store_error)?,
        );
    }
    let limits = store_limits(config);
    let mut last_seqs = vec![0u64; layout.cores];
    let (mut objects, mut entries) = (0u64, 0u64);
    let (mut core_objects, mut core_entries) = (0u64, 0u64);
    let mut current_core: Option<u32> = None;
    let mut cores_seen = 0u32;
    // Each core of the backup's server once, and its objects in increasing id order (as
    // written), so a file pieced together from several backups is refused, not merged.
    let mut cores_done = vec![false; header.cores as usize];
    let mut last_id: Option<StoreObjectId> = None;
    loop {
        let offset = reader.offset;
        let corrupt = |reason: String| BackupError::Corrupt { offset, reason };
        match reader.next()? {
            Record::Core { core, .. } => {
                if let Some(open) = current_core {
                    return Err(corrupt(format!("core {core} starts inside core {open}")));
                }
                match cores_done.get_mut(core as usize) {
                    Some(done) if !*done => *done = true,
                    Some(_) => return Err(corrupt(format!("core {core} appears twice"))),
                    None => {
                        return Err(corrupt(format!(
                            "core {core} of a server of {} cores",
                            header.cores
                        )))
                    }
                }
                current_core = Some(core);
                last_id = None;
                (core_objects, core_entries) = (0, 0);
            }
            Record::Object { id, alarm_ms, keys } => {
                if current_core.is_none() {
                    return Err(corrupt("an object outside any core".to_string()));
                }
                if last_id.is_some_and(|last| id <= last) {
                    return Err(corrupt("objects out of order within a core".to_string()));
                }
                last_id = Some(id);
                let mut data = ObjectData {
                    entries: Default::default(),
                    alarm_ms,
                };
                for _ in 0..keys {
                    let offset = reader.offset;
                    match reader.next()? {
                        Record::Entry { key, value } => {
                            data.entries.insert(key, value);
                        }
                        other => {
                            return Err(BackupError::Corrupt {
                                offset,
                                reason: format!(
                                    "expected one of the object's entries, found {}",
                                    kind_name(&other)
                                ),
                            })
                        }
                    }
                }
                let owner = ObjectId(id).core(layout.partitions, layout.cores);
                for batch in migration_batches(data, &limits) {
                    let (seq, _) = stores[owner].commit(&id, batch).map_err(store_error)?;
                    last_seqs[owner] = seq;
                }
                core_objects += 1;
                core_entries += u64::from(keys);
            }
            Record::CoreEnd {
                core,
                objects: count,
                entries: entry_count,
            } => {
                if current_core != Some(core)
                    || count != core_objects
                    || entry_count != core_entries
                {
                    return Err(corrupt(format!(
                        "core {core} ends with {count} objects and {entry_count} entries; {core_objects} and {core_entries} were read"
                    )));
                }
                objects += core_objects;
                entries += core_entries;
                cores_seen += 1;
                current_core = None;
            }
            Record::End {
                cores,
                objects: count,
                entries: entry_count,
            } => {
                if current_core.is_some()
                    || cores != cores_seen
                    || cores != header.cores
                    || count != objects
                    || entry_count != entries
                {
                    return Err(corrupt(format!(
                        "the end record counts {cores} cores, {count} objects and {entry_count} entries; {cores_seen}, {objects} and {entries} were read"
                    )));
                }
                if !reader.at_end()? {
                    return Err(BackupError::Corrupt {
                        offset: reader.offset,
                        reason: "bytes after the end record".to_string(),
                    });
                }
                break;
            }
            Record::Entry { .. } => {
                return Err(corrupt("an entry outside any object".to_string()));
            }
        }
    }
    for (store, seq) in stores.iter().zip(last_seqs) {
        if seq > 0 {
            store.wait_durable(seq).await.map_err(store_error)?;
        }
        store.close().await.map_err(store_error)?;
    }
    Ok(RestoreSummary {
        objects,
        entries,
        cores: layout.cores,
    })
}

fn kind_name(record: &Record) -> &'static str {
    match record {
        Record::Core { .. } => "a core record",
        Record::Object { .. } => "an object record",
        Record::Entry { .. } => "an entry record",
        Record::CoreEnd { .. } => "a core's end record",
        Record::End { .. } => "the end record",
    }
}
