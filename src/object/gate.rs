//! The commit gate: runs a handler future and commits the writes of every poll.
//!
//! Only one poll runs at a time on a core, so whatever the object's pending batch holds after a
//! poll of this handler was written by that poll. Committing it right then makes the writes
//! between two suspension points one atomic batch (an event that awaits nothing else commits
//! once), and means a handler future dropped between polls (its connection went away) leaves no
//! half-written batch behind.
//!
//! A read-only event (its request's token may not write) is polled with its object's storage
//! refusing writes; whatever its poll still left pending (a path around the storage's check)
//! is refused at commit, never stored.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::future::BoxedLocal;

use super::error::EventError;
use super::slot::Slot;

/// Whoever takes an object's writes after each poll: the host, which hands them to the store.
/// A trait of the gate's own, so that the gate does not depend on the host that uses it.
pub(super) trait Commit {
    /// Commits what `slot`'s handler wrote since the last call.
    fn commit_pending(&self, slot: &Slot) -> Result<(), EventError>;

    /// After a poll of a read-only event: refuses whatever it left pending.
    fn refuse_pending(&self, slot: &Slot) -> Result<(), EventError>;
}

/// A handler future whose writes are committed after each of its polls.
pub(super) struct Gated<'a, T> {
    /// Takes the commits (the host).
    host: &'a dyn Commit,
    /// The object the handler runs on.
    slot: &'a Slot,
    /// The handler.
    handler: BoxedLocal<T>,
    /// The first commit failure, reported when the handler finishes.
    commit_error: Option<EventError>,
    /// The call depth of the event (see `call.rs`), the object's while the handler is polled.
    depth: u32,
    /// Whether the event may not write.
    read_only: bool,
}

impl<'a, T> Gated<'a, T> {
    /// `handler` of an event at call depth `depth`, read-only or not.
    pub(super) fn new(
        host: &'a dyn Commit,
        slot: &'a Slot,
        handler: BoxedLocal<T>,
        (depth, read_only): (u32, bool),
    ) -> Self {
        Gated {
            host,
            slot,
            handler,
            commit_error: None,
            depth,
            read_only,
        }
    }
}

impl<T> Future for Gated<'_, T> {
    /// The handler's output, and the commit failure if one of its batches was refused.
    type Output = (T, Option<EventError>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.read_only {
            // What is pending before this poll is not this event's: writes of a task of the
            // object since the last poll, committed first; or, for a call to itself, the
            // writes of the outer event's poll, committed or refused as that event may write.
            let before = if this.slot.read_only.get() {
                this.host.refuse_pending(this.slot)
            } else {
                this.host.commit_pending(this.slot)
            };
            if let Err(error) = before {
                this.commit_error.get_or_insert(error);
            }
        }
        // The event's depth and mode while its handler is polled, then back to what they were
        // (an outer poll of the same object, for a call to itself, or none).
        let outer = this.slot.call_depth.replace(this.depth);
        let outer_read_only = this.slot.read_only.replace(this.read_only);
        this.slot.storage.set_read_only(this.read_only);
        let poll = this.handler.as_mut().poll(cx);
        this.slot.call_depth.set(outer);
        this.slot.read_only.set(outer_read_only);
        this.slot.storage.set_read_only(outer_read_only);
        let committed = if this.read_only {
            this.host.refuse_pending(this.slot)
        } else {
            this.host.commit_pending(this.slot)
        };
        if let Err(error) = committed {
            this.commit_error.get_or_insert(error);
        }
        match poll {
            Poll::Ready(output) => Poll::Ready((output, this.commit_error.take())),
            Poll::Pending => Poll::Pending,
        }
    }
}
