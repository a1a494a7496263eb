//! The commit gate: runs a handler future and commits the writes of every poll.
//!
//! Only one poll runs at a time on a core, so whatever the object's pending batch holds after a
//! poll of this handler was written by that poll. Committing it right then makes the writes
//! between two suspension points one atomic batch (an event that awaits nothing else commits
//! once), and means a handler future dropped between polls (its connection went away) leaves no
//! half-written batch behind.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::future::BoxedLocal;

use super::host::ObjectHost;
use super::slot::Slot;

/// A handler future whose writes are committed after each of its polls.
pub(super) struct Gated<'a, T> {
    /// The host whose store takes the commits.
    host: &'a ObjectHost,
    /// The object the handler runs on.
    slot: &'a Slot,
    /// The handler.
    handler: BoxedLocal<T>,
    /// The first commit failure, reported when the handler finishes.
    commit_error: Option<String>,
}

impl<'a, T> Gated<'a, T> {
    pub(super) fn new(host: &'a ObjectHost, slot: &'a Slot, handler: BoxedLocal<T>) -> Self {
        Gated {
            host,
            slot,
            handler,
            commit_error: None,
        }
    }
}

impl<T> Future for Gated<'_, T> {
    /// The handler's output, and the commit failure if one of its batches was refused.
    type Output = (T, Option<String>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let poll = this.handler.as_mut().poll(cx);
        if let Err(error) = this.host.commit_pending(this.slot) {
            this.commit_error.get_or_insert(error);
        }
        match poll {
            Poll::Ready(output) => Poll::Ready((output, this.commit_error.take())),
            Poll::Pending => Poll::Pending,
        }
    }
}
