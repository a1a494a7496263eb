//! A per-core shutdown signal: set once, awaited by the accept loop and every connection.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Set once when the server is asked to stop; every waiter wakes then.
#[derive(Default)]
pub struct Shutdown {
    /// Whether shutdown was requested.
    requested: Cell<bool>,
    /// Tasks waiting for the request. Bounded by the tasks of the core (one entry per waiting
    /// task; a task that polls again replaces nothing, so `Wait` registers at most once).
    waiters: RefCell<Vec<Waker>>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Marks shutdown and wakes every waiter. Later calls do nothing.
    pub fn request(&self) {
        if self.requested.replace(true) {
            return;
        }
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub fn is_requested(&self) -> bool {
        self.requested.get()
    }

    /// Resolves once shutdown is requested.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            shutdown: self,
            registered: false,
        }
    }
}

/// The future of [`Shutdown::wait`].
pub struct Wait<'a> {
    /// The signal waited on.
    shutdown: &'a Shutdown,
    /// Whether this future's waker is already in the list (avoids growing it on every poll).
    registered: bool,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.requested.get() {
            return Poll::Ready(());
        }
        if !self.registered {
            self.shutdown.waiters.borrow_mut().push(cx.waker().clone());
            self.registered = true;
        }
        Poll::Pending
    }
}
