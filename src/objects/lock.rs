//! `lock`: a lock with a FIFO queue of waiters and an optional lease, as in the design's
//! DistributedLock and its alarm-lease variant.
//!
//! `/acquire?clientId=X` answers `{"acquired":true}` at once when the lock is free or X already
//! holds it; otherwise the request waits in a FIFO queue inside the object until the lock is
//! handed to it. `&timeoutMs=N` gives the holder a lease: an alarm releases the lock N ms after
//! it was acquired (or last renewed by acquiring again) and hands it to the next waiter.
//! `/release?clientId=X` answers 403 `{"error":"Not lock holder"}` unless X holds the lock, else
//! `{"released":true}`, handing the lock to the next waiter. `/status` answers
//! `{"locked":bool,"holder":string|null,"waiting":n}`. A missing `clientId` is 400; any other
//! path 404 `Not Found`.
//!
//! The lock passes straight from the releasing event to the first waiter (the holder is
//! written in the same batch as the release), so no other client can take it in between, just
//! as the waiter's promise runs before any other event in the hosted runtime. A waiter whose
//! client disconnects has its future dropped, which takes it out of the queue (the connection
//! loop notices a close even behind a full pipeline), so the lock is never handed to a client
//! that has gone.
//!
//! Waiters are parked events (`ObjectContext::park`): they do not count against the object's
//! `object_events_queued_max`, so however many wait, a release or a status gets through. The
//! lock bounds its queue itself at the same number: a new waiter past it answers
//! 503 `{"error":"too many waiters","retryable":true}` with `Retry-After`, and nothing else is
//! refused.
//!
//! Storage: `holder` (the client id) and `lease_ms` (the lease length, renewed on re-acquire),
//! plus the object's alarm at the lease's end. Waiters are connections and do not survive a
//! restart; the holder and its lease do.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use serde::Serialize;
use serde_json::json;

use super::json_response;
use crate::http::{Request, Response};
use crate::object::{
    now_ms, shutting_down, AlarmInfo, DurableObject, ObjectContext, ObjectError, Parked,
};
use crate::wake::Handoff;

/// Storage key of the holder's client id.
const HOLDER_KEY: &[u8] = b"holder";
/// Storage key of the holder's lease length in milliseconds (absent: no lease).
const LEASE_KEY: &[u8] = b"lease_ms";
/// Longest lease, in milliseconds (ten years): keeps `now + lease` far from overflow.
const LEASE_MS_MAX: u64 = 10 * 365 * 24 * 3_600_000;

/// The answer to `/status`, fields in the design's order.
#[derive(Serialize)]
struct Status<'a> {
    locked: bool,
    holder: Option<&'a str>,
    waiting: usize,
}

/// One client waiting for the lock.
struct Waiter {
    /// Who becomes the holder when the lock is handed over.
    client_id: String,
    /// The lease the waiter asked for.
    lease_ms: Option<u64>,
    /// Given when the lock was handed to this waiter; wakes the waiting request.
    grant: Handoff<()>,
}

/// The waiters of one lock, first come first served.
type Queue = Rc<RefCell<VecDeque<Rc<Waiter>>>>;

pub struct Lock {
    /// Storage and identity of this object.
    context: ObjectContext,
    /// The holder's client id (mirrors `holder`).
    holder: RefCell<Option<String>>,
    /// The holder's lease length (mirrors `lease_ms`).
    lease_ms: Cell<Option<u64>>,
    /// Requests waiting for the lock.
    queue: Queue,
}

/// How a waiter's wait ended.
enum Wait {
    /// The lock was handed to it.
    Granted,
    /// The server began shutting down.
    ShuttingDown,
    /// This instance of the lock left memory (a failed commit, an unwritable store).
    Closed,
}

/// Resolves once the lock is handed to its waiter; dropping it first leaves the queue.
struct Turn {
    /// This request's place in the queue.
    waiter: Rc<Waiter>,
    /// The queue to leave on drop.
    queue: Queue,
    /// Keeps the waiting event out of the object's queue bound until the turn comes or ends.
    _parked: Parked,
}

impl Future for Turn {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.waiter.grant.poll_take(cx)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.waiter.grant.is_given() {
            self.queue
                .borrow_mut()
                .retain(|waiter| !Rc::ptr_eq(waiter, &self.waiter));
        }
    }
}

/// 503 for a waiter past the queue's bound; the client may try again later.
fn too_many_waiters() -> Response {
    Response::json(
        503,
        &json!({ "error": "too many waiters", "retryable": true }),
    )
    .with_header("Retry-After", "1")
}

/// The `clientId` parameter, or the 400 answer when it is missing or empty.
fn client_id(request: &Request) -> Result<String, Response> {
    match request.query_param("clientId") {
        Some(client_id) if !client_id.is_empty() => Ok(client_id),
        _ => Err(Response::json_error(400, "clientId is required")),
    }
}

/// The `timeoutMs` parameter: none, or a positive number of milliseconds.
fn lease_param(request: &Request) -> Result<Option<u64>, Response> {
    let Some(text) = request.query_param("timeoutMs") else {
        return Ok(None);
    };
    match text.parse::<u64>() {
        Ok(lease_ms) if (1..=LEASE_MS_MAX).contains(&lease_ms) => Ok(Some(lease_ms)),
        _ => Err(Response::json_error(
            400,
            &format!("timeoutMs must be an integer from 1 to {LEASE_MS_MAX}, got {text:?}"),
        )),
    }
}

impl Lock {
    async fn acquire(&self, request: &Request) -> Result<Response, ObjectError> {
        let (client_id, lease_ms) = match (client_id(request), lease_param(request)) {
            (Ok(client_id), Ok(lease_ms)) => (client_id, lease_ms),
            (Err(response), _) | (_, Err(response)) => return Ok(response),
        };
        let holder = self.holder.borrow().clone();
        match holder {
            None => self.grant(client_id, lease_ms)?,
            Some(holder) if holder == client_id => {
                // Acquiring again renews the lease, with the new length if one is given.
                self.grant(client_id, lease_ms.or(self.lease_ms.get()))?;
            }
            Some(_) => {
                let waiters_max = self.context.config().objects.object_events_queued_max;
                if self.queue.borrow().len() >= waiters_max {
                    return Ok(too_many_waiters());
                }
                let waiter = Rc::new(Waiter {
                    client_id,
                    lease_ms,
                    grant: Handoff::default(),
                });
                self.queue.borrow_mut().push_back(waiter.clone());
                // The releasing event made this client the holder before waking it. The turn
                // is polled first, so a waiter granted the lock as shutdown begins keeps it.
                let turn = Turn {
                    waiter,
                    queue: self.queue.clone(),
                    _parked: self.context.park(),
                };
                // The turn is polled first, so a waiter granted the lock keeps it. Otherwise it
                // stops waiting when the server shuts down (503, retryable), or when this
                // instance leaves service after a failed commit (an error: 507 if the core's
                // store takes no more writes), since the next instance has no queue of ours.
                let outcome = futures_lite::future::or(
                    async {
                        turn.await;
                        Wait::Granted
                    },
                    futures_lite::future::or(
                        async {
                            self.context.shutting_down().await;
                            Wait::ShuttingDown
                        },
                        async {
                            self.context.storage().closed().await;
                            Wait::Closed
                        },
                    ),
                )
                .await;
                match outcome {
                    Wait::Granted => {}
                    Wait::ShuttingDown => return Ok(shutting_down()),
                    Wait::Closed => {
                        return Err(ObjectError::new(
                            "the lock left memory while this client waited; try again",
                        ))
                    }
                }
            }
        }
        Ok(Response::json(200, &json!({ "acquired": true })))
    }

    fn release(&self, request: &Request) -> Result<Response, ObjectError> {
        let client_id = match client_id(request) {
            Ok(client_id) => client_id,
            Err(response) => return Ok(response),
        };
        if self.holder.borrow().as_deref() != Some(client_id.as_str()) {
            return Ok(Response::json_error(403, "Not lock holder"));
        }
        self.hand_over()?;
        Ok(Response::json(200, &json!({ "released": true })))
    }

    fn status(&self) -> Result<Response, ObjectError> {
        let holder = self.holder.borrow();
        let status = Status {
            locked: holder.is_some(),
            holder: holder.as_deref(),
            waiting: self.queue.borrow().len(),
        };
        json_response(200, &status)
    }

    /// Makes `client_id` the holder with `lease_ms`, durably, and sets or clears the alarm.
    fn grant(&self, client_id: String, lease_ms: Option<u64>) -> Result<(), ObjectError> {
        let storage = self.context.storage();
        storage.put(HOLDER_KEY, client_id.as_bytes())?;
        match lease_ms {
            Some(lease_ms) => {
                storage.put(LEASE_KEY, lease_ms.to_string())?;
                storage.set_alarm(now_ms().saturating_add(lease_ms as i64))?;
            }
            None => {
                storage.delete(LEASE_KEY)?;
                storage.delete_alarm()?;
            }
        }
        *self.holder.borrow_mut() = Some(client_id);
        self.lease_ms.set(lease_ms);
        Ok(())
    }

    /// Releases the lock and hands it to the first waiter, if any.
    fn hand_over(&self) -> Result<(), ObjectError> {
        let next = self.queue.borrow_mut().pop_front();
        let Some(next) = next else {
            let storage = self.context.storage();
            storage.delete(HOLDER_KEY)?;
            storage.delete(LEASE_KEY)?;
            storage.delete_alarm()?;
            *self.holder.borrow_mut() = None;
            self.lease_ms.set(None);
            return Ok(());
        };
        self.grant(next.client_id.clone(), next.lease_ms)?;
        next.grant.give(());
        Ok(())
    }
}

impl DurableObject for Lock {
    fn new(context: ObjectContext) -> Lock {
        let storage = context.storage();
        let holder = storage
            .get(HOLDER_KEY)
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let lease_ms = storage
            .get(LEASE_KEY)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse::<u64>().ok());
        Lock {
            context,
            holder: RefCell::new(holder),
            lease_ms: Cell::new(lease_ms),
            queue: Rc::new(RefCell::new(VecDeque::new())),
        }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        match request.path.as_str() {
            "/acquire" => self.acquire(&request).await,
            "/release" => self.release(&request),
            "/status" => self.status(),
            _ => Ok(Response::not_found()),
        }
    }

    /// The lease ended: release the lock to the next waiter. An alarm that no longer matches
    /// the stored one (the lease was renewed or the lock released meanwhile) does nothing.
    async fn alarm(&self, alarm: AlarmInfo) -> Result<(), ObjectError> {
        let current = self.context.storage().get_alarm() == Some(alarm.scheduled_ms);
        if current && self.holder.borrow().is_some() {
            self.hand_over()?;
        }
        Ok(())
    }
}
