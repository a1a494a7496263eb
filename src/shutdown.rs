//! A per-core shutdown signal: set once, awaited by the accept loop and every connection.

use crate::wake::{Broadcast, BroadcastWait};

/// The future of [`Shutdown::wait`]; dropping it unregisters its waker.
pub type Wait<'a> = BroadcastWait<'a>;

/// Set once when the server is asked to stop; every waiter wakes then.
#[derive(Default)]
pub struct Shutdown {
    /// Set by `request`. Waiters leave it when their wait is dropped, so an accept loop that
    /// waits once per connection keeps no waker per connection.
    signal: Broadcast,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Marks shutdown and wakes every waiter. Later calls do nothing.
    pub fn request(&self) {
        self.signal.set();
    }

    pub fn is_requested(&self) -> bool {
        self.signal.is_set()
    }

    /// Resolves once shutdown is requested.
    pub fn wait(&self) -> Wait<'_> {
        self.signal.wait()
    }

    /// How many waits are registered now: one per open connection and one for the accept loop
    /// at most (a bound the accept tests check).
    pub fn waiters(&self) -> usize {
        self.signal.waiters()
    }
}
