//! Cross-core messages: a request for an object another core owns goes there and its response
//! comes back; `/metrics` asks every core for its figures.
//!
//! Every ordered pair of cores has one bounded glommio shared channel. A core's outstanding
//! requests to other cores are bounded by `cross_core_requests_max` (past it the client gets
//! 503), and each channel holds twice that, so a send never waits: at most
//! `cross_core_requests_max` requests from the sender and as many replies to the receiver's
//! own requests can be in it at once. The receiving loop never awaits a send either, so the
//! cores cannot deadlock on full channels.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

use crate::http::{Request, Response};
use crate::id::ObjectId;
use crate::metrics::CoreSnapshot;
use crate::shard::admin::{AdminOp, AdminReply};
use crate::wake::Handoff;

/// What one core sends another.
pub enum Message {
    /// Run `request` on object `id` of `class`, which the receiving core owns.
    Dispatch {
        tag: u64,
        class: String,
        id: ObjectId,
        /// The name the request reached the object by, if it did.
        name: Option<String>,
        request: Request,
        /// Who sent it, for the creation limits (None: another object's call).
        client: Option<crate::limits::Client>,
    },
    /// The answer to a `Dispatch`.
    Response { tag: u64, response: Response },
    /// The client of `Dispatch` `tag` went away: drop the request.
    Cancel { tag: u64 },
    /// Serve this WebSocket upgrade: the connection (a duplicate of the accepting core's
    /// descriptor, now owned by the message), the request, and the bytes that followed it.
    Upgrade {
        fd: std::os::fd::RawFd,
        class: String,
        id: ObjectId,
        name: Option<String>,
        request: Request,
        unread: Vec<u8>,
        client: Option<crate::limits::Client>,
    },
    /// Send back your figures.
    Snapshot { tag: u64 },
    /// The answer to a `Snapshot`.
    SnapshotReply {
        tag: u64,
        snapshot: Box<CoreSnapshot>,
    },
    /// Run an operator's request on your objects (`/admin/…`).
    Admin { tag: u64, op: AdminOp },
    /// The answer to an `Admin`.
    AdminReply { tag: u64, reply: Box<AdminReply> },
}

/// What a waiting request gets back.
pub enum Reply {
    Response(Response),
    Snapshot(Box<CoreSnapshot>),
    Admin(Box<AdminReply>),
}

/// The not-yet-connected channel ends of one core, made by [`channels`] on the main thread.
pub struct Endpoints {
    /// Index `to`: this core's sender to core `to` (`None` for itself).
    senders: Vec<Option<SharedSender<Message>>>,
    /// Index `from`: this core's receiver from core `from` (`None` for itself).
    receivers: Vec<Option<SharedReceiver<Message>>>,
}

/// Makes the channels of a full mesh of `cores` cores, each holding `capacity` messages; element
/// i goes to core i.
pub fn channels(cores: usize, capacity: usize) -> Vec<Endpoints> {
    let mut endpoints: Vec<Endpoints> = (0..cores)
        .map(|_| Endpoints {
            senders: (0..cores).map(|_| None).collect(),
            receivers: (0..cores).map(|_| None).collect(),
        })
        .collect();
    for from in 0..cores {
        for to in 0..cores {
            if from != to {
                let (sender, receiver) = shared_channel::new_bounded(capacity);
                endpoints[from].senders[to] = Some(sender);
                endpoints[to].receivers[from] = Some(receiver);
            }
        }
    }
    endpoints
}

/// The connected channels of one core and its requests waiting for replies.
pub struct Mesh {
    /// Index `to`: the sender to core `to`.
    senders: Vec<Option<ConnectedSender<Message>>>,
    /// Requests sent and not yet answered, by tag: at most `in_flight_max`.
    waiting: RefCell<HashMap<u64, Rc<ReplySlot>>>,
    /// The next tag; tags only need to be unique among this core's waiting requests.
    next_tag: Cell<u64>,
    /// Bound on `waiting` (`cross_core_requests_max`).
    in_flight_max: usize,
}

/// Why a message could not go out.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// `cross_core_requests_max` requests already wait for replies.
    Full,
    /// The other core has stopped.
    Closed,
}

impl Mesh {
    /// Connects this core's channel ends; every core must do so at the same time (a connect
    /// completes when both ends are connected). Returns the mesh and the receivers by peer.
    pub async fn connect(
        endpoints: Endpoints,
        in_flight_max: usize,
    ) -> (Mesh, Vec<(usize, ConnectedReceiver<Message>)>) {
        let sends = futures_lite::future::zip(
            join_all(endpoints.senders.into_iter().map(|sender| async move {
                match sender {
                    Some(sender) => Some(sender.connect().await),
                    None => None,
                }
            })),
            join_all(endpoints.receivers.into_iter().enumerate().map(
                |(from, receiver)| async move {
                    match receiver {
                        Some(receiver) => Some((from, receiver.connect().await)),
                        None => None,
                    }
                },
            )),
        );
        let (senders, receivers) = sends.await;
        let mesh = Mesh {
            senders,
            waiting: RefCell::new(HashMap::new()),
            next_tag: Cell::new(0),
            in_flight_max,
        };
        (mesh, receivers.into_iter().flatten().collect())
    }

    /// Sends a message that answers another core; never waits (see the module documentation).
    pub fn answer(&self, to: usize, message: Message) -> Result<(), SendError> {
        let Some(Some(sender)) = self.senders.get(to) else {
            return Err(SendError::Closed);
        };
        sender.try_send(message).map_err(|_| SendError::Closed)
    }

    /// Hands a WebSocket connection to core `to`; never waits. On failure the descriptor is
    /// given back for the caller to close.
    pub fn send_upgrade(&self, to: usize, message: Message) -> Result<(), std::os::fd::RawFd> {
        let Message::Upgrade { fd, .. } = message else {
            return Ok(());
        };
        let Some(Some(sender)) = self.senders.get(to) else {
            return Err(fd);
        };
        sender.try_send(message).map_err(|_| fd)
    }

    /// Sends a request made by `make(tag)` to core `to` and waits for its reply. If the
    /// returned future is dropped first, the reply is discarded when it arrives.
    pub fn request(
        &self,
        to: usize,
        make: impl FnOnce(u64) -> Message,
    ) -> Result<ReplyWait<'_>, SendError> {
        if self.waiting.borrow().len() >= self.in_flight_max {
            return Err(SendError::Full);
        }
        let tag = self.next_tag.get();
        self.next_tag.set(tag.wrapping_add(1));
        let slot = Rc::new(ReplySlot::default());
        let Some(Some(sender)) = self.senders.get(to) else {
            return Err(SendError::Closed);
        };
        let message = make(tag);
        let cancel_on_drop = matches!(message, Message::Dispatch { .. });
        sender.try_send(message).map_err(|_| SendError::Closed)?;
        self.waiting.borrow_mut().insert(tag, slot.clone());
        Ok(ReplyWait {
            mesh: self,
            tag,
            to,
            cancel_on_drop,
            slot,
        })
    }

    /// Hands a reply to the request waiting for it, if it is still waiting.
    pub fn deliver(&self, tag: u64, reply: Reply) {
        if let Some(slot) = self.waiting.borrow_mut().remove(&tag) {
            slot.give(reply);
        }
    }
}

/// Where one reply lands.
pub type ReplySlot = Handoff<Reply>;

/// The future of [`Mesh::request`].
pub struct ReplyWait<'a> {
    /// Whose waiting table holds the slot (removed on drop).
    mesh: &'a Mesh,
    /// The request's tag.
    tag: u64,
    /// The core the request went to.
    to: usize,
    /// Whether dropping the wait before the reply tells that core to drop the request.
    cancel_on_drop: bool,
    /// Where the reply lands.
    slot: Rc<ReplySlot>,
}

impl Future for ReplyWait<'_> {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        self.slot.poll_take(cx)
    }
}

impl Drop for ReplyWait<'_> {
    fn drop(&mut self) {
        let still_waiting = self.mesh.waiting.borrow_mut().remove(&self.tag).is_some();
        if still_waiting && self.cancel_on_drop {
            // Best effort: if the channel is closed the other core is gone anyway.
            let _ = self.mesh.answer(self.to, Message::Cancel { tag: self.tag });
        }
    }
}

/// Awaits every future, in order; the futures run concurrently.
async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
