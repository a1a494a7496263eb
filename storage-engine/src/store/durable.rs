//! Durability waiters: `Durable` futures, resolved by the log writer after each fdatasync.
//!
//! Waiting costs no allocation beyond one waker slot: all waiters share one `DurableShared`
//! that knows the highest durable sequence number and, once the store is poisoned, why.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::StoreError;

/// The failure that poisoned the store, kept so every failed commit can report it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub operation: &'static str,
    pub file: String,
    pub kind: io::ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn from_error(error: &StoreError) -> Failure {
        match error {
            StoreError::Io {
                operation,
                file,
                source,
            } => Failure {
                operation,
                file: file.clone(),
                kind: source.kind(),
                message: source.to_string(),
            },
            other => Failure {
                operation: "store",
                file: String::new(),
                kind: io::ErrorKind::Other,
                message: other.to_string(),
            },
        }
    }

    pub fn to_error(&self) -> StoreError {
        StoreError::Io {
            operation: self.operation,
            file: self.file.clone(),
            source: io::Error::new(self.kind, self.message.clone()),
        }
    }
}

#[derive(Default)]
struct DurableState {
    /// Every batch with a sequence number up to this one is written and fdatasync'd.
    durable_seq: u64,
    /// Set once a write or fdatasync failed; nothing after `durable_seq` will become durable.
    failure: Option<Failure>,
    /// Tasks waiting for a sequence number to become durable.
    waiters: Vec<(u64, Waker)>,
}

/// Shared by the store and every `Durable` future.
#[derive(Default)]
pub struct DurableShared {
    state: RefCell<DurableState>,
}

impl DurableShared {
    pub fn new(durable_seq: u64) -> DurableShared {
        DurableShared {
            state: RefCell::new(DurableState {
                durable_seq,
                ..Default::default()
            }),
        }
    }

    /// Marks everything up to `seq` durable and wakes whoever waited for it.
    pub fn advance(&self, seq: u64) {
        let ready: Vec<Waker> = {
            let mut state = self.state.borrow_mut();
            assert!(
                seq >= state.durable_seq,
                "durable sequence went back to {seq}"
            );
            state.durable_seq = seq;
            let mut ready = Vec::new();
            state.waiters.retain(|(waiting_for, waker)| {
                let done = *waiting_for <= seq;
                if done {
                    ready.push(waker.clone());
                }
                !done
            });
            ready
        };
        ready.into_iter().for_each(Waker::wake);
    }

    pub fn durable_seq(&self) -> u64 {
        self.state.borrow().durable_seq
    }

    /// The failure that poisoned the store, if one did.
    pub fn failure(&self) -> Option<Failure> {
        self.state.borrow().failure.clone()
    }

    /// Records the failure that poisons the store and wakes every waiter to report it.
    pub fn fail(&self, failure: Failure) {
        let waiters = {
            let mut state = self.state.borrow_mut();
            state.failure.get_or_insert(failure);
            std::mem::take(&mut state.waiters)
        };
        waiters.into_iter().for_each(|(_, waker)| waker.wake());
    }
}

/// How a `Durable` reports that its batch will never be durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReport {
    /// The commit's own write failed: report the I/O error.
    Io,
    /// A later waiter (`wait_durable`): report that the store is poisoned.
    Poisoned,
}

/// Resolves once a committed batch is durable (written and fdatasync'd), or fails if the write
/// or fdatasync that carried it failed.
pub struct Durable {
    /// Where the writer publishes progress.
    shared: Rc<DurableShared>,
    /// The sequence number to wait for.
    seq: u64,
    /// Which error a failure turns into.
    report: FailureReport,
    /// Whether this future already left a waker in the waiter list, to avoid piling them up.
    registered: Cell<bool>,
}

impl Durable {
    pub(crate) fn new(shared: Rc<DurableShared>, seq: u64, report: FailureReport) -> Durable {
        Durable {
            shared,
            seq,
            report,
            registered: Cell::new(false),
        }
    }
}

impl Future for Durable {
    type Output = Result<(), StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.shared.state.borrow_mut();
        if self.seq <= state.durable_seq {
            return Poll::Ready(Ok(()));
        }
        if let Some(failure) = &state.failure {
            return Poll::Ready(Err(match self.report {
                FailureReport::Io => failure.to_error(),
                FailureReport::Poisoned => StoreError::Poisoned,
            }));
        }
        match state
            .waiters
            .iter_mut()
            .find(|(seq, waker)| *seq == self.seq && waker.will_wake(cx.waker()))
        {
            Some(_) if self.registered.get() => {}
            _ => {
                state.waiters.push((self.seq, cx.waker().clone()));
                self.registered.set(true);
            }
        }
        Poll::Pending
    }
}

/// Wakes the background writer when there is work; a single waiter, no lost wake-ups.
#[derive(Default)]
pub struct Signal {
    /// Set by `notify`, consumed by `wait`.
    notified: Cell<bool>,
    /// The writer task, parked in `wait`.
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_notified(cx))
    }

    /// Ready (and consumed) if notified since the last wait; otherwise wakes `cx` at the next
    /// notification.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.notified.replace(false) {
            Poll::Ready(())
        } else {
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Wakes every task waiting for a condition the store's state tells (used by `close` to wait
/// for a running compaction): waiters re-check the state after each wake, so a wake-up
/// that comes early is harmless and none is lost.
#[derive(Default)]
pub struct Waiters {
    /// Tasks parked until the next `wake_all`.
    wakers: RefCell<Vec<Waker>>,
}

impl Waiters {
    pub fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Resolves once `done()` holds; `done` is checked before parking and after every wake.
    pub fn wait_until<'a>(&'a self, done: impl Fn() -> bool + 'a) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| {
            if done() {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}
