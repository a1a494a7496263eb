//! [`Slot`]: one object known to the host, active or activating; [`Turns`], the order in which
//! its events start; and [`Signal`], a one-shot wake-up.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::error::EventError;
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
    /// waited for it fail with this error.
    Failed(EventError),
}

/// One object on this core.
pub(super) struct Slot {
    /// The object's id.
    pub(super) id: ObjectId,
    /// The class it was activated as.
    pub(super) class: Rc<str>,
    /// Activating, ready or failed.
    pub(super) state: RefCell<SlotState>,
    /// Events start in the order they were admitted, once activation has ended.
    pub(super) turns: Turns,
    /// The object's storage (shared with its context).
    pub(super) storage: Storage,
    /// Events admitted and not yet answered (waiting for activation, running, or waiting for
    /// durability): bounded by `object_events_queued_max` for requests and alarms, plus the
    /// core's socket deliveries in flight; an object with any is never evicted.
    pub(super) events: Cell<usize>,
    /// Those of `events` that wait for another event of the object (a lock's waiters, through
    /// `ObjectContext::park`). They do not count against `object_events_queued_max`, or enough
    /// of them would refuse the very event they wait for; the object bounds them itself.
    pub(super) parked: Rc<Cell<usize>>,
    /// When the last event ended (or the slot was made), for idle eviction.
    pub(super) last_event: Cell<Instant>,
    /// The sequence number of the object's last commit: a response waits until it is durable,
    /// since the event may have read anything the object wrote up to then.
    pub(super) last_submitted_seq: Cell<u64>,
    /// The call depth of the event whose handler is being polled (see `call.rs`), shared with
    /// the object's context.
    pub(super) call_depth: Rc<Cell<u32>>,
    /// Whether the event whose handler is being polled may not write, shared with the
    /// object's context (its calls are read-only too).
    pub(super) read_only: Rc<Cell<bool>>,
    /// Set by an activation that carried out a restore: the bookmark that undoes it.
    pub(super) restore_undo: Cell<Option<crate::object::history::Bookmark>>,
    /// In a cluster: the partition and ticket of the object's last batch (or, for a new
    /// slot, of its partition's last batch): a response waits until the stream has it.
    pub(super) replica_ticket: Cell<Option<(u32, u64)>>,
}

impl Slot {
    pub(super) fn new(id: ObjectId, class: Rc<str>, storage: Storage, seq_floor: u64) -> Slot {
        Slot {
            id,
            class,
            state: RefCell::new(SlotState::Activating),
            turns: Turns::default(),
            storage,
            events: Cell::new(0),
            parked: Rc::new(Cell::new(0)),
            last_event: Cell::new(Instant::now()),
            last_submitted_seq: Cell::new(seq_floor),
            restore_undo: Cell::new(None),
            replica_ticket: Cell::new(None),
            call_depth: Rc::new(Cell::new(super::call::NO_EVENT_DEPTH)),
            read_only: Rc::new(Cell::new(false)),
        }
    }

    pub(super) fn is_activating(&self) -> bool {
        matches!(*self.state.borrow(), SlotState::Activating)
    }
}

/// The start order of one object's events. Each admitted event takes a ticket and starts its
/// handler only on its turn, so events start in admission order: an event admitted as the
/// activation ends cannot overtake those that waited for it, and a socket's messages are
/// handled in the order they arrived.
#[derive(Default)]
pub(super) struct Turns {
    /// The ticket the next admitted event gets.
    next: Cell<u64>,
    /// The ticket whose turn it is.
    serving: Cell<u64>,
    /// Tickets of events that went away before their turn; skipped when it comes. Bounded like
    /// `Slot::events`.
    abandoned: RefCell<BTreeSet<u64>>,
    /// The waker of each event waiting for its turn; bounded like `Slot::events`.
    waiting: RefCell<BTreeMap<u64, Waker>>,
}

impl Turns {
    pub(super) fn take_ticket(&self) -> u64 {
        let ticket = self.next.get();
        self.next.set(ticket + 1);
        ticket
    }

    /// The event holding the current turn has started: the next one's turn.
    pub(super) fn advance(&self) {
        let mut serving = self.serving.get() + 1;
        {
            let mut abandoned = self.abandoned.borrow_mut();
            while abandoned.remove(&serving) {
                serving += 1;
            }
        }
        self.serving.set(serving);
        self.wake_current();
    }

    /// The event with `ticket` went away before it started.
    pub(super) fn abandon(&self, ticket: u64) {
        self.waiting.borrow_mut().remove(&ticket);
        let serving = self.serving.get();
        if ticket == serving {
            self.advance();
        } else if ticket > serving {
            self.abandoned.borrow_mut().insert(ticket);
        }
    }

    /// Wakes the event whose turn it is, if it waits (when the activation ends, say).
    pub(super) fn wake_current(&self) {
        let waker = self.waiting.borrow_mut().remove(&self.serving.get());
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Resolves once `slot` is activated (or failed) and it is `ticket`'s turn.
pub(super) struct TurnWait<'a> {
    pub(super) slot: &'a Slot,
    pub(super) ticket: u64,
}

impl Future for TurnWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let turns = &self.slot.turns;
        if !self.slot.is_activating() && turns.serving.get() == self.ticket {
            return Poll::Ready(());
        }
        turns
            .waiting
            .borrow_mut()
            .insert(self.ticket, cx.waker().clone());
        Poll::Pending
    }
}
