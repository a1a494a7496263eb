//! [`Slot`]: one object known to the host, active or activating, and the one-shot signal that
//! wakes the events waiting for its activation.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::registry::DynObject;
use super::Storage;
use crate::id::ObjectId;

/// Where an object is in its life.
pub(super) enum SlotState {
    /// Loading its storage or running `init`; events wait on `Slot::activated`.
    Activating,
    /// Ready for events.
    Ready(Rc<dyn DynObject>),
    /// Activation failed; the slot is already out of the host's map, and the events that
    /// waited for it answer 500 with this message.
    Failed(String),
}

/// One object on this core.
pub(super) struct Slot {
    /// The object's id.
    pub(super) id: ObjectId,
    /// The class it was activated as.
    pub(super) class: Rc<str>,
    /// Activating, ready or failed.
    pub(super) state: RefCell<SlotState>,
    /// Fired once activation ends, either way.
    pub(super) activated: Signal,
    /// The object's storage (shared with its context).
    pub(super) storage: Storage,
    /// Events admitted and not yet answered (waiting for activation, running, or waiting for
    /// durability): bounded by `object_events_queued_max` for requests and alarms, plus the
    /// core's socket deliveries in flight; an object with any is never evicted.
    pub(super) events: Cell<usize>,
    /// When the last event ended (or the slot was made), for idle eviction.
    pub(super) last_event: Cell<Instant>,
    /// The sequence number of the object's last commit: a response waits until it is durable,
    /// since the event may have read anything the object wrote up to then.
    pub(super) last_submitted_seq: Cell<u64>,
}

impl Slot {
    pub(super) fn new(id: ObjectId, class: Rc<str>, storage: Storage, seq_floor: u64) -> Slot {
        Slot {
            id,
            class,
            state: RefCell::new(SlotState::Activating),
            activated: Signal::default(),
            storage,
            events: Cell::new(0),
            last_event: Cell::new(Instant::now()),
            last_submitted_seq: Cell::new(seq_floor),
        }
    }

    pub(super) fn is_activating(&self) -> bool {
        matches!(*self.state.borrow(), SlotState::Activating)
    }
}

/// A one-shot broadcast: `fire` once, and every `wait` resolves.
#[derive(Default)]
pub(super) struct Signal {
    /// Whether it fired.
    fired: Cell<bool>,
    /// Tasks waiting; at most one entry per waiting event, so bounded as `Slot::events` is.
    waiters: RefCell<Vec<Waker>>,
}

impl Signal {
    pub(super) fn fire(&self) {
        self.fired.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }

    pub(super) fn wait(&self) -> SignalWait<'_> {
        SignalWait {
            signal: self,
            registered: false,
        }
    }
}

/// The future of [`Signal::wait`].
pub(super) struct SignalWait<'a> {
    /// The signal waited on.
    signal: &'a Signal,
    /// Whether our waker is already listed (only `fire` wakes us, so once is enough).
    registered: bool,
}

impl Future for SignalWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            return Poll::Ready(());
        }
        if !self.registered {
            self.signal.waiters.borrow_mut().push(cx.waker().clone());
            self.registered = true;
        }
        Poll::Pending
    }
}
