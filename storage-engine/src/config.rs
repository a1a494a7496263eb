//! Limits and tuning of a store. Every limit is a named value with its unit last.

use std::path::PathBuf;

/// Size limits enforced on every commit with a typed [`crate::StoreError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest key, in bytes.
    pub key_bytes_max: usize,
    /// Largest value, in bytes.
    pub value_bytes_max: usize,
    /// Most keys one batch may name per op kind (puts, deletes).
    pub batch_keys_max: usize,
    /// Largest encoded batch, in bytes.
    pub batch_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            key_bytes_max: 2 * 1024,
            value_bytes_max: 128 * 1024,
            batch_keys_max: 128,
            batch_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// What `Store::open` does with a damaged log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open on any corruption other than a torn tail of the newest segment.
    #[default]
    Strict,
    /// Explicit salvage: keep every record that verifies, drop the rest, and log each loss
    /// with file and offset. Acknowledged data may be lost; use it only to rescue a store.
    Salvage,
}

/// Where a store lives and how it behaves.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The store's own directory; created if missing.
    pub dir: PathBuf,
    /// Size limits on keys, values and batches.
    pub limits: Limits,
    /// A segment is sealed and a new one started once it passes this size.
    pub segment_bytes_max: u64,
    /// How far ahead of the writer a log segment is kept zero-filled and synced, so group
    /// commits overwrite existing blocks instead of growing the file (at most the segment
    /// size; 0 turns preparation off: each round's durable write then also grows the file).
    pub segment_prepare_bytes: u64,
    /// How many group-commit rounds the log writer keeps in flight: 2 starts the next round's
    /// durable write while the one before it is still in the device; 1 waits for each. More
    /// than 2 is taken as 2 (recovery's tail rule covers no more).
    pub rounds_in_flight: u8,
    /// Values up to this size stay in memory; larger ones are read from disk on demand.
    pub inline_value_bytes_max: usize,
    /// Compaction starts once this many bytes in sealed segments are dead ...
    pub compaction_dead_bytes_min: u64,
    /// ... and dead bytes are at least this percentage of all segment bytes.
    pub compaction_dead_percent_min: u8,
    /// Whether compaction starts by itself when the thresholds above are passed.
    pub compaction_automatic: bool,
    /// Strict or salvage recovery.
    pub recovery: RecoveryMode,
    /// Keys starting with this prefix are also counted apart, in `StoreStats::prefix_keys`
    /// and `prefix_bytes` (the server counts its objects' history this way); empty: none.
    pub counted_key_prefix: Vec<u8>,
    /// Encryption at rest: every record's payload is sealed under the first key (`cipher.rs`),
    /// and no checkpoint is kept (it would hold keys in plain text); None: plain. A store
    /// written one way refuses to open the other.
    pub encryption: Option<std::sync::Arc<crate::Encryption>>,
}

impl StoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            dir: dir.into(),
            limits: Limits::default(),
            segment_bytes_max: 64 * 1024 * 1024,
            segment_prepare_bytes: 4 * 1024 * 1024,
            rounds_in_flight: 2,
            inline_value_bytes_max: 256,
            compaction_dead_bytes_min: 64 * 1024 * 1024,
            compaction_dead_percent_min: 50,
            compaction_automatic: true,
            recovery: RecoveryMode::Strict,
            counted_key_prefix: Vec::new(),
            encryption: None,
        }
    }
}
