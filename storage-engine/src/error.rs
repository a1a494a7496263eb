//! The one error type of the storage engine.

use std::fmt;
use std::io;

/// Everything that can go wrong in a store. Variants carry the numbers needed to diagnose.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// A system call failed. After a failed write or fdatasync the store is also poisoned.
    Io {
        operation: &'static str,
        file: String,
        source: io::Error,
    },
    /// The log holds a record that does not verify and is not a torn tail.
    Corruption {
        file: String,
        offset: u64,
        reason: String,
    },
    /// Log records that should follow each other do not: the batches numbered from
    /// `last_seq + 1` up to `next_seq - 1` are missing (a log segment file lost, say). The
    /// record before the gap ends `previous_file`; the one after it starts at `offset` of
    /// `file`.
    SequenceGap {
        previous_file: String,
        last_seq: u64,
        file: String,
        offset: u64,
        next_seq: u64,
    },
    /// The manifest names a format this build does not know.
    UnknownFormatVersion {
        file: String,
        found: u32,
        supported: u32,
    },
    /// The store is encrypted and was opened without its key, or the other way round, or a
    /// record names a key the store was not given.
    Encryption { reason: String },
    /// An earlier write or fdatasync failed; nothing more is written until the store is reopened.
    Poisoned,
    /// The store was closed.
    Closed,
    KeyTooLarge {
        key_bytes: usize,
        key_bytes_max: usize,
    },
    ValueTooLarge {
        value_bytes: usize,
        value_bytes_max: usize,
    },
    BatchTooManyKeys {
        op_kind: &'static str,
        keys: usize,
        batch_keys_max: usize,
    },
    BatchTooLarge {
        batch_bytes: usize,
        batch_bytes_max: usize,
    },
}

impl StoreError {
    /// True for errors caused by the caller's input (a limit), false for the store's own state.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            StoreError::KeyTooLarge { .. }
                | StoreError::ValueTooLarge { .. }
                | StoreError::BatchTooManyKeys { .. }
                | StoreError::BatchTooLarge { .. }
        )
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io {
                operation,
                file,
                source,
            } => {
                write!(f, "{operation} failed on {file}: {source}")
            }
            StoreError::Corruption {
                file,
                offset,
                reason,
            } => {
                write!(f, "corrupt log: {file} at offset {offset}: {reason}")
            }
            StoreError::SequenceGap {
                previous_file,
                last_seq,
                file,
                offset,
                next_seq,
            } => write!(
                f,
                "log sequence gap: {previous_file} ends at sequence {last_seq}, {file} at \
                 offset {offset} goes on at {next_seq}; {} batches are missing",
                next_seq.saturating_sub(*last_seq + 1)
            ),
            StoreError::UnknownFormatVersion {
                file,
                found,
                supported,
            } => write!(
                f,
                "{file} has format version {found}, this build reads versions up to {supported}"
            ),
            StoreError::Encryption { reason } => write!(f, "encryption: {reason}"),
            StoreError::Poisoned => write!(
                f,
                "store is poisoned by an earlier failed write or fdatasync; reopen it to recover"
            ),
            StoreError::Closed => write!(f, "store is closed"),
            StoreError::KeyTooLarge {
                key_bytes,
                key_bytes_max,
            } => {
                write!(
                    f,
                    "key of {key_bytes} bytes exceeds key_bytes_max {key_bytes_max}"
                )
            }
            StoreError::ValueTooLarge {
                value_bytes,
                value_bytes_max,
            } => write!(
                f,
                "value of {value_bytes} bytes exceeds value_bytes_max {value_bytes_max}"
            ),
            StoreError::BatchTooManyKeys {
                op_kind,
                keys,
                batch_keys_max,
            } => write!(
                f,
                "batch names {keys} keys to {op_kind}, more than batch_keys_max {batch_keys_max}"
            ),
            StoreError::BatchTooLarge {
                batch_bytes,
                batch_bytes_max,
            } => write!(
                f,
                "batch of {batch_bytes} bytes exceeds batch_bytes_max {batch_bytes_max}"
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
