//! `stead-storage`: the crash-safe, log-structured storage engine behind every stead object.
//!
//! One [`Store`] per core, shared-nothing: a `Store` is `!Send` and lives on the glommio executor
//! that opened it. It holds many objects; an object is a 32-byte [`ObjectId`] with an ordered key
//! space (bytes to bytes) and at most one alarm time (milliseconds since the Unix epoch).
//!
//! What it is not: a general database. There are no cross-object transactions, no secondary
//! indexes and no network protocol; the engine knows nothing about HTTP, cores or object classes.
//!
//! Layout:
//! - `batch`: the atomic unit of writing (puts, deletes, delete-all, set/delete alarm).
//! - `config`: limits and tuning, each a named value with its unit last.
//! - `error`: [`StoreError`], the one error type of the crate.
//! - `disk`: the narrow file-system boundary ([`Disk`], [`DiskFile`]) and its glommio O_DIRECT
//!   implementation; tests put a failing or power-cutting disk behind the same traits.
//! - `codec`: the on-disk record format (see `DESIGN.md` for the byte layout); public only with
//!   the `test-support` feature.
//! - `sim` (only with the `test-support` feature): an in-memory disk that fails and loses power
//!   on demand.
//! - `store`: the public handle: commit with group commit, reads, alarms, compaction (which
//!   also writes the index checkpoint, an rkyv archive that the next open loads instead of
//!   replaying the base segments); [`KeyMap`], the ordered map of one object's keys, small for
//!   an object with few keys.
//!
//! Limits (defaults, see [`Limits`]): key ≤ 2 KiB, value ≤ 128 KiB, a batch ≤ 128 keys per op
//! kind and ≤ 16 MiB.

#![forbid(unsafe_code)]

mod batch;
mod cipher;
// Public only with the `test-support` feature, so the fuzz targets and the integration tests
// can reach the encoders and decoders; never a stable API.
#[cfg(feature = "test-support")]
pub mod codec;
#[cfg(not(feature = "test-support"))]
mod codec;
mod config;
mod disk;
mod error;
// The crate's unit tests use the simulated disk too.
#[cfg(any(test, feature = "test-support"))]
pub mod sim;
mod store;

pub use batch::{Batch, Op};
pub use cipher::{Encryption, OpenError, KEY_BYTES as ENCRYPTION_KEY_BYTES};
pub use config::{Limits, RecoveryMode, StoreConfig};
pub use disk::{Disk, DiskFile, GlommioDisk, IoFuture};
pub use error::StoreError;
pub use store::keys::KeyMap;
pub use store::{
    create_dir_durably, power_of_two_bucket, Durable, ListOptions, ObjectData, ObjectSummary,
    Snapshot, Store, StoreStats,
};

/// The identity of one object inside a store: 32 opaque bytes chosen by the caller.
pub type ObjectId = [u8; 32];
