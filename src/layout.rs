//! The data directory: which stores exist, how ids map to them, and moving objects when the
//! number of cores changes.
//!
//! ```text
//! {data_dir}/LAYOUT                   format version, partitions, cores, generation
//! {data_dir}/stores-{generation}/core-{i}/   the storage engine of core i
//! ```
//!
//! The partition count is fixed when the directory is created; an id's core is its partition
//! modulo the core count (`ObjectId::core`). Starting with another `--cores` rewrites every
//! object into a new generation of stores, placed by the new count, and only then switches
//! `LAYOUT` to it (write a temporary file, fdatasync, rename, fsync the directory). A crash
//! before the switch leaves the old generation in charge; the half-written new one is removed
//! at the next start.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use glommio::{LocalExecutorBuilder, Placement};
use stead_storage::{Batch, Limits, ObjectData, Store, StoreConfig, StoreError};

use crate::config::Config;
use crate::id::ObjectId;
use crate::object::store_limits;

/// The version of the `LAYOUT` file this code writes and reads.
pub const LAYOUT_FORMAT_VERSION: u32 = 1;

/// The file naming the current generation.
const LAYOUT_FILE: &str = "LAYOUT";

/// Puts per migration batch: below the engine's per-batch key limit.
const MIGRATION_KEYS_PER_BATCH_MAX: usize = 128;

/// Bytes of keys and values per migration batch: half the engine's batch limit.
const MIGRATION_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Locked memory for the one-off migration executor.
const MIGRATION_IO_MEMORY_BYTES: usize = 512 * 1024;

/// What `LAYOUT` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Fixed at creation: ids hash into this many partitions.
    pub partitions: u32,
    /// The cores the current generation of stores is placed for.
    pub cores: usize,
    /// Numbers the `stores-{generation}` directory in use.
    pub generation: u64,
}

/// Why the data directory cannot be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum LayoutError {
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// `LAYOUT` is not a file this version wrote.
    Invalid {
        path: PathBuf,
        reason: String,
    },
    /// `LAYOUT` has a format version this build does not know.
    UnknownVersion {
        path: PathBuf,
        version: u32,
    },
    /// Moving objects to the new core count failed; the old layout is still in charge.
    Migration(String),
    Store(StoreError),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Io {
                operation,
                path,
                source,
            } => {
                write!(f, "cannot {operation} {}: {source}", path.display())
            }
            LayoutError::Invalid { path, reason } => {
                write!(f, "{} is not a valid layout file: {reason}", path.display())
            }
            LayoutError::UnknownVersion { path, version } => write!(
                f,
                "{} has format version {version}, this build reads version {LAYOUT_FORMAT_VERSION}",
                path.display()
            ),
            LayoutError::Migration(reason) => {
                write!(f, "migrating to the new core count: {reason}")
            }
            LayoutError::Store(error) => write!(f, "storage: {error}"),
        }
    }
}

impl std::error::Error for LayoutError {}

impl From<StoreError> for LayoutError {
    fn from(error: StoreError) -> LayoutError {
        LayoutError::Store(error)
    }
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError {
    let path = path.to_path_buf();
    move |source| LayoutError::Io {
        operation,
        path,
        source,
    }
}

/// Creates `dir` and its missing parents, each synced into its parent, so a power cut after
/// start-up cannot lose the data directory (or a new generation's) whole: `LAYOUT` and the
/// stores are synced inside it, but its own entry is durable only once its parent is synced.
fn create_dir_durably(dir: &Path) -> Result<(), LayoutError> {
    stead_storage::create_dir_durably(dir).map_err(|(path, source)| LayoutError::Io {
        operation: "create",
        path,
        source,
    })
}

/// The directory of core `core`'s store in `generation`.
pub fn store_dir(data_dir: &Path, generation: u64, core: usize) -> PathBuf {
    generation_dir(data_dir, generation).join(format!("core-{core}"))
}

fn generation_dir(data_dir: &Path, generation: u64) -> PathBuf {
    data_dir.join(format!("stores-{generation}"))
}

/// The store configuration of one core, from the server configuration.
pub fn store_config(config: &Config, dir: PathBuf) -> StoreConfig {
    let mut store = StoreConfig::new(dir);
    store.limits = store_limits(config);
    store.segment_bytes_max = config.storage.segment_bytes_max;
    store.segment_prepare_bytes = config.storage.segment_prepare_bytes;
    store.rounds_in_flight = config.storage.rounds_in_flight;
    store.compaction_dead_bytes_min = config.storage.compaction_dead_bytes_min;
    store.compaction_dead_percent_min = config.storage.compaction_dead_percent_min;
    store.counted_key_prefix = crate::object::HISTORY_PREFIX.to_vec();
    store.encryption = config.encryption.as_ref().map(|ring| ring.0.clone());
    store
}

/// Opens (creating or migrating as needed) the data directory for `config.cores_resolved()`
/// cores. Blocks; runs a glommio executor of its own when objects have to move.
pub fn prepare(config: &Config) -> Result<Layout, LayoutError> {
    let data_dir = &config.data_dir;
    let cores = config.cores_resolved();
    create_dir_durably(data_dir)?;
    let layout = match read(data_dir)? {
        Some(layout) => layout,
        None => {
            let layout = Layout {
                partitions: config.storage.partitions,
                cores,
                generation: 1,
            };
            if layout.partitions == 0 {
                return Err(LayoutError::Invalid {
                    path: data_dir.join(LAYOUT_FILE),
                    reason: "storage.partitions must be at least 1".to_string(),
                });
            }
            write(data_dir, &layout)?;
            layout
        }
    };
    remove_other_generations(data_dir, layout.generation)?;
    if layout.cores == cores {
        return Ok(layout);
    }
    let next = Layout {
        cores,
        generation: layout.generation + 1,
        ..layout
    };
    tracing::info!(
        from = layout.cores,
        to = cores,
        "moving objects to a new core count"
    );
    migrate(config, layout, next)?;
    write(data_dir, &next)?;
    remove_other_generations(data_dir, next.generation)?;
    Ok(next)
}

/// Reads `LAYOUT`; `None` when the directory has none yet.
fn read(data_dir: &Path) -> Result<Option<Layout>, LayoutError> {
    let path = data_dir.join(LAYOUT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("read", &path)(error)),
    };
    let invalid = |reason: String| LayoutError::Invalid {
        path: path.clone(),
        reason,
    };
    let mut fields = std::collections::HashMap::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| invalid(format!("line {line:?} is not `key = value`")))?;
        let value: u64 = value
            .trim()
            .parse()
            .map_err(|_| invalid(format!("{} is not a number", value.trim())))?;
        fields.insert(key.trim().to_string(), value);
    }
    let field = |name: &str| {
        fields
            .get(name)
            .copied()
            .ok_or_else(|| invalid(format!("no {name}")))
    };
    let version = field("version")?;
    if version != u64::from(LAYOUT_FORMAT_VERSION) {
        return Err(LayoutError::UnknownVersion {
            path: path.clone(),
            version: u32::try_from(version).unwrap_or(u32::MAX),
        });
    }
    let partitions =
        u32::try_from(field("partitions")?).map_err(|_| invalid("partitions".into()))?;
    let cores = usize::try_from(field("cores")?).map_err(|_| invalid("cores".into()))?;
    let generation = field("generation")?;
    if partitions == 0 || cores == 0 || generation == 0 {
        return Err(invalid(
            "partitions, cores and generation must be positive".to_string(),
        ));
    }
    Ok(Some(Layout {
        partitions,
        cores,
        generation,
    }))
}

/// Replaces `LAYOUT` atomically and durably.
fn write(data_dir: &Path, layout: &Layout) -> Result<(), LayoutError> {
    let path = data_dir.join(LAYOUT_FILE);
    let temporary = data_dir.join("LAYOUT.tmp");
    let text = format!(
        "version = {LAYOUT_FORMAT_VERSION}\npartitions = {}\ncores = {}\ngeneration = {}\n",
        layout.partitions, layout.cores, layout.generation
    );
    let mut file = std::fs::File::create(&temporary).map_err(io_error("create", &temporary))?;
    file.write_all(text.as_bytes())
        .map_err(io_error("write", &temporary))?;
    file.sync_all().map_err(io_error("fsync", &temporary))?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(io_error("rename", &temporary))?;
    sync_dir(data_dir)
}

fn sync_dir(dir: &Path) -> Result<(), LayoutError> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("fsync directory", dir))
}

/// Removes every `stores-*` directory but the one of `keep`: a migration that did not finish,
/// or the generation a finished one replaced.
fn remove_other_generations(data_dir: &Path, keep: u64) -> Result<(), LayoutError> {
    let entries = std::fs::read_dir(data_dir).map_err(io_error("list", data_dir))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(io_error("list", data_dir))?;
        let name = entry.file_name();
        let Some(generation) = name.to_str().and_then(|name| name.strip_prefix("stores-")) else {
            continue;
        };
        if generation.parse::<u64>().ok() == Some(keep) {
            continue;
        }
        std::fs::remove_dir_all(entry.path()).map_err(io_error("remove", &entry.path()))?;
        removed = true;
    }
    if removed {
        sync_dir(data_dir)?;
    }
    Ok(())
}

/// Copies every object of generation `from` into generation `to`, placed by `to.cores`, and
/// waits until all of it is durable.
fn migrate(config: &Config, from: Layout, to: Layout) -> Result<(), LayoutError> {
    let config = config.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("stead-migrate")
        .io_memory(MIGRATION_IO_MEMORY_BYTES)
        .spawn(move || async move { migrate_stores(&config, from, to).await })
        .map_err(|error| LayoutError::Migration(format!("cannot start an executor: {error}")))?
        .join()
        .map_err(|error| {
            LayoutError::Migration(format!("the migration executor failed: {error}"))
        })?
}

async fn migrate_stores(config: &Config, from: Layout, to: Layout) -> Result<(), LayoutError> {
    let data_dir = &config.data_dir;
    let mut targets = Vec::with_capacity(to.cores);
    for core in 0..to.cores {
        let dir = store_dir(data_dir, to.generation, core);
        create_dir_durably(&dir)?;
        targets.push(Store::open(store_config(config, dir)).await?);
    }
    let limits = store_limits(config);
    let mut last_seqs = vec![0u64; to.cores];
    let mut moved = 0u64;
    for core in 0..from.cores {
        let dir = store_dir(data_dir, from.generation, core);
        if !dir.exists() {
            continue;
        }
        let source = Store::open(store_config(config, dir)).await?;
        for object in source.objects() {
            let data = source.load_object(&object).await?;
            let id = ObjectId(object);
            let core = id.core(to.partitions, to.cores);
            for batch in migration_batches(data, &limits) {
                let (seq, _) = targets[core].commit(&object, batch)?;
                last_seqs[core] = seq;
            }
            moved += 1;
        }
        source.close().await?;
    }
    for (target, seq) in targets.iter().zip(last_seqs) {
        if seq > 0 {
            target.wait_durable(seq).await?;
        }
        target.close().await?;
    }
    tracing::info!(objects = moved, "objects moved to the new core count");
    Ok(())
}

/// Splits one object's data into batches within the engine's limits; the alarm goes with the
/// first. An object with no keys and no alarm gives no batch.
pub(crate) fn migration_batches(data: ObjectData, limits: &Limits) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut batch = Batch::new();
    if let Some(alarm_ms) = data.alarm_ms {
        batch.set_alarm(alarm_ms);
    }
    let (mut keys, mut bytes) = (0usize, 0usize);
    for (key, value) in data.entries {
        let entry_bytes = key.len() + value.len();
        let keys_full = keys >= MIGRATION_KEYS_PER_BATCH_MAX.min(limits.batch_keys_max);
        if keys > 0 && (keys_full || bytes + entry_bytes > MIGRATION_BATCH_BYTES_MAX) {
            batches.push(std::mem::take(&mut batch));
            keys = 0;
            bytes = 0;
        }
        batch.put(key, value);
        keys += 1;
        bytes += entry_bytes;
    }
    if keys > 0 || data.alarm_ms.is_some() {
        batches.push(batch);
    }
    batches
}
