//! The wake-up primitives of one core, each a few lines of state around `Waker`s.
//!
//! Everything here is `!Send` and lives on one executor, like everything it coordinates. Three
//! shapes cover the server's waits:
//! - [`Broadcast`]: set once, and every waiter wakes (shutdown, "drained", a cancelled request).
//!   Waiters register in a slab and leave it when their future is dropped, so a waiter that
//!   goes away early (an accept loop that took a connection instead) leaves nothing behind.
//! - [`Handoff`]: one value handed to one waiting task (a reply from another core, a lock
//!   granted to a waiter).
//! - [`Notify`]: a level-triggered nudge for one driver task (the alarm scheduler).
//!
//! Why this module exists: every hand-written waiter list is a chance to leak wakers. The
//! shutdown signal once kept every accept loop's waker until shutdown, two per accepted
//! connection, until the clones of the accept task's waker overflowed glommio's reference count
//! (at 32,768) and the core panicked. A waiter registered here lives exactly as long as the
//! future that registered it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Set once; every [`Broadcast::wait`] then resolves, now and later.
#[derive(Default)]
pub struct Broadcast {
    /// Whether it was set.
    set: Cell<bool>,
    /// The waiters still waiting. Its size is bounded by the futures alive at once (each holds
    /// at most one entry and removes it when dropped).
    waiters: RefCell<Slab>,
}

impl std::fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcast")
            .field("set", &self.set.get())
            .field("waiters", &self.waiters())
            .finish()
    }
}

impl Broadcast {
    pub fn new() -> Broadcast {
        Broadcast::default()
    }

    /// Sets it and wakes every waiter. Later calls do nothing.
    pub fn set(&self) {
        if self.set.replace(true) {
            return;
        }
        let wakers = self.waiters.borrow_mut().take_all();
        wakers.into_iter().for_each(Waker::wake);
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Resolves once the broadcast is set.
    pub fn wait(&self) -> BroadcastWait<'_> {
        BroadcastWait {
            broadcast: self,
            key: None,
        }
    }

    /// How many futures are registered now (for tests of the bound).
    pub fn waiters(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// The future of [`Broadcast::wait`]; dropping it takes its waker out of the list.
pub struct BroadcastWait<'a> {
    /// The broadcast waited on.
    broadcast: &'a Broadcast,
    /// This future's entry in the waiter slab, once it has one.
    key: Option<usize>,
}

impl Future for BroadcastWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.broadcast.set.get() {
            // `set` emptied the slab; our key is stale.
            self.key = None;
            return Poll::Ready(());
        }
        let mut waiters = self.broadcast.waiters.borrow_mut();
        match self.key {
            Some(key) => waiters.update(key, cx.waker()),
            None => {
                let key = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for BroadcastWait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.broadcast.waiters.borrow_mut().remove(key);
        }
    }
}

/// Wakers by key, reusing the keys of removed entries: insert and remove are O(1), and memory
/// stays at the peak number of waiters.
#[derive(Default)]
struct Slab {
    /// Entry `key` holds the waker of the future with that key, or `None` if the key is free.
    entries: Vec<Option<Waker>>,
    /// Keys of the free entries.
    free: Vec<usize>,
}

impl Slab {
    fn insert(&mut self, waker: Waker) -> usize {
        match self.free.pop() {
            Some(key) => {
                self.entries[key] = Some(waker);
                key
            }
            None => {
                self.entries.push(Some(waker));
                self.entries.len() - 1
            }
        }
    }

    fn update(&mut self, key: usize, waker: &Waker) {
        if let Some(Some(current)) = self.entries.get_mut(key) {
            if !current.will_wake(waker) {
                current.clone_from(waker);
            }
        }
    }

    fn remove(&mut self, key: usize) {
        if let Some(entry) = self.entries.get_mut(key) {
            if entry.take().is_some() {
                self.free.push(key);
            }
        }
    }

    fn take_all(&mut self) -> Vec<Waker> {
        self.free.clear();
        std::mem::take(&mut self.entries)
            .into_iter()
            .flatten()
            .collect()
    }

    fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }
}

/// One value handed from whoever produces it to the one task that waits for it.
pub struct Handoff<T> {
    /// The value, from `give` until the waiter takes it.
    value: RefCell<Option<T>>,
    /// Whether `give` was called (stays true after the value is taken).
    given: Cell<bool>,
    /// The waiting task, woken by `give`.
    waiter: RefCell<Option<Waker>>,
}

impl<T> Default for Handoff<T> {
    fn default() -> Handoff<T> {
        Handoff {
            value: RefCell::new(None),
            given: Cell::new(false),
            waiter: RefCell::new(None),
        }
    }
}

impl<T> Handoff<T> {
    /// Hands `value` over and wakes the waiter. A second value replaces an untaken first one.
    pub fn give(&self, value: T) {
        *self.value.borrow_mut() = Some(value);
        self.given.set(true);
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Whether a value was given, taken or not.
    pub fn is_given(&self) -> bool {
        self.given.get()
    }

    /// Takes the value if it is there, else registers the task to be woken by `give`.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(value) = self.value.borrow_mut().take() {
            return Poll::Ready(value);
        }
        let mut waiter = self.waiter.borrow_mut();
        match waiter.as_mut() {
            Some(current) if current.will_wake(cx.waker()) => {}
            _ => *waiter = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Resolves with the value once given.
    pub async fn take(&self) -> T {
        std::future::poll_fn(|cx| self.poll_take(cx)).await
    }
}

/// A nudge for one driver task: `notify` makes the current or next `wait` resolve once.
#[derive(Default)]
pub struct Notify {
    /// Set by `notify`, cleared by the `wait` it resolves.
    notified: Cell<bool>,
    /// The driver's waker while it waits.
    waiter: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves at the next `notify`, or at once if one came since the last wait.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.notified.replace(false) {
                return Poll::Ready(());
            }
            *self.waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Test support: a waker that counts its wake-ups.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// Counts the wake-ups of the wakers made from it.
    pub(crate) struct Counter(pub(crate) AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Counter;
    use super::*;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counting_waker() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn a_dropped_broadcast_wait_leaves_no_waker_behind() {
        let broadcast = Broadcast::new();
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        // The accept loop's pattern: a fresh wait per connection, dropped when a connection
        // arrives first. 100,000 rounds must not grow the list, nor keep clones of the waker.
        for _ in 0..100_000 {
            let mut wait = pin!(broadcast.wait());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(broadcast.waiters(), 0);
        assert_eq!(
            Arc::strong_count(&counter),
            2,
            "only `waker` and `counter` remain"
        );
        assert!(broadcast.waiters.borrow().entries.len() <= 1);
    }

    #[test]
    fn broadcast_wakes_every_waiter_once_and_stays_set() {
        let broadcast = Broadcast::new();
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut first = pin!(broadcast.wait());
        let mut second = pin!(broadcast.wait());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        broadcast.set();
        broadcast.set();
        assert_eq!(counter.0.load(Ordering::Relaxed), 2);
        assert!(first.as_mut().poll(&mut cx).is_ready());
        assert!(second.as_mut().poll(&mut cx).is_ready());
        assert!(pin!(broadcast.wait()).poll(&mut cx).is_ready());
        assert_eq!(broadcast.waiters(), 0);
    }

    #[test]
    fn handoff_delivers_one_value_to_its_waiter() {
        let handoff = Handoff::default();
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(handoff.poll_take(&mut cx).is_pending());
        assert!(handoff.poll_take(&mut cx).is_pending());
        assert!(!handoff.is_given());
        handoff.give(7);
        assert_eq!(counter.0.load(Ordering::Relaxed), 1);
        assert_eq!(handoff.poll_take(&mut cx), Poll::Ready(7));
        assert!(handoff.is_given());
        assert!(handoff.poll_take(&mut cx).is_pending());
    }

    #[test]
    fn notify_before_wait_is_not_lost() {
        let notify = Notify::default();
        let (_, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        notify.notify();
        assert!(pin!(notify.wait()).poll(&mut cx).is_ready());
        assert!(pin!(notify.wait()).poll(&mut cx).is_pending());
    }
}
