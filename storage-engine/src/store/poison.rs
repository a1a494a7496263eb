//! Poisoning: after a failed or short write or a failed fdatasync, in the writer or in
//! compaction, the store writes nothing more until it is reopened (see `DESIGN.md`).
//!
//! Its own module because both the writer (`log`) and `compaction` poison, and the writer
//! starts compactions: kept in either, the two would depend on each other.

use super::durable::Failure;
use super::Inner;
use crate::StoreError;

/// Marks the store poisoned and fails every queued batch with `error`.
pub fn poison(inner: &Inner, error: &StoreError) {
    tracing::error!(%error, "storage write failed; the store is poisoned until reopened");
    {
        let mut state = inner.state.borrow_mut();
        state.poisoned = true;
        state.pending.clear();
    }
    inner.durable.fail(Failure::from_error(error));
}
