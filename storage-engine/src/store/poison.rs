//! Poisoning: after a failed or short write or a failed fdatasync, in the writer or in
//! compaction, the store writes nothing more until it is reopened (see `DESIGN.md`).
//!
//! Its own module because both the writer (`log`) and `compaction` poison, and the writer
//! starts compactions: kept in either, the two would depend on each other.

use super::durable::Failure;
use super::Inner;
use crate::StoreError;

/// Marks the store poisoned, fails every queued batch with `error` and takes every batch that
/// is not durable back out of the index: none of them will ever be durable, so reads must not
/// show them (a client could otherwise read a write that was never acknowledged and that a
/// restart loses).
pub fn poison(inner: &Inner, error: &StoreError) {
    tracing::error!(%error, "storage write failed; the store is poisoned until reopened");
    {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        state.poisoned = true;
        state.pending.clear();
        let undone = state.undo.roll_back(&mut state.index);
        if undone > 0 {
            tracing::warn!(
                batches = undone,
                "dropped the batches that will never be durable from the in-memory view"
            );
        }
    }
    inner.durable.fail(Failure::from_error(error));
}
