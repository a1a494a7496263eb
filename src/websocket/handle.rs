//! The part of a socket its owner keeps: its id, tags and attachment, and its send queue.
//!
//! A [`SocketHandle`] is shared (on one core) between the socket's driver task and whoever owns
//! the socket — the object host. It holds no reference to any object: only what a freshly
//! constructed object needs to pick the socket up again after hibernation (id, tags,
//! attachment). Sending encodes the frame straight into the socket's output buffer and wakes the
//! driver, so everything queued between two runs of the driver leaves in one write.
//!
//! Queued bytes are bounded twice: per socket (`send_queue_bytes_max`, a client that stopped
//! reading is closed with 1008) and per core, over all its sockets, by a [`CoreSendBudget`]
//! (`send_queue_bytes_per_core_max`): a send that would take the core past it first closes, with
//! 1013, the sockets furthest behind (largest queue first), dropping their queues, and if that is
//! not enough closes the socket the send was for. So many slow clients together cannot grow the
//! server's memory past the budget, and a client that keeps up is not the one cut off.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::task::Waker;
use std::time::SystemTime;

use super::close::{CloseCode, CloseFrame};
use super::codec::{encode_close, encode_frame, frame_bytes, Opcode};
use super::error::{AttachError, SendError};
use super::events::SocketId;
use super::limits::{WebSocketLimits, ATTACHMENT_BYTES_MAX, TAGS_PER_SOCKET_MAX, TAG_BYTES_MAX};

/// An empty output buffer keeps at most this much capacity, so an idle socket costs little.
const OUTPUT_BYTES_RETAINED_MAX: usize = 1024;

/// Once this much of the output buffer is written but more remains, the written part is
/// dropped, so a socket that always has a little pending does not grow its buffer forever.
const OUTPUT_COMPACT_BYTES: usize = 64 * 1024;

/// The code a client that stopped reading is closed with.
pub const SEND_OVERFLOW_CLOSE_CODE: CloseCode = CloseCode::POLICY_VIOLATION;

/// The code a socket is closed with when a send to it would pass the core's budget of queued
/// bytes: 1013 "Try Again Later", because the server ran short, not necessarily this client
/// (whose own queue may be within its bound); reconnecting later is the right answer.
pub const CORE_BUDGET_CLOSE_CODE: CloseCode = CloseCode::TRY_AGAIN_LATER;

/// Bytes queued for clients and not yet written, over every socket of one core, and their bound.
/// One per core, shared by its sockets (hence `Cell`: a core is one thread).
#[derive(Debug)]
pub struct CoreSendBudget {
    /// The sum of every socket's unwritten output.
    queued_bytes: Cell<usize>,
    /// The most `queued_bytes` may reach by a data frame (`send_queue_bytes_per_core_max`).
    bytes_max: usize,
    /// The core's sockets, to find the one furthest behind when the budget is spent; entries
    /// of sockets gone are dropped at the next search.
    sockets: RefCell<Vec<Weak<RefCell<Shared>>>>,
}

impl CoreSendBudget {
    pub fn new(bytes_max: usize) -> CoreSendBudget {
        CoreSendBudget {
            queued_bytes: Cell::new(0),
            bytes_max,
            sockets: RefCell::new(Vec::new()),
        }
    }

    /// Bytes queued over the core's sockets now.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// The open socket with the most unwritten bytes, if it has more than `bytes`. The socket
    /// asking is borrowed already, so it is skipped.
    fn furthest_behind(&self, bytes: usize) -> Option<Rc<RefCell<Shared>>> {
        let mut sockets = self.sockets.borrow_mut();
        sockets.retain(|socket| socket.strong_count() > 0);
        let mut furthest: Option<(usize, Rc<RefCell<Shared>>)> = None;
        for socket in sockets.iter().filter_map(Weak::upgrade) {
            let unwritten = match socket.try_borrow() {
                Ok(shared) if shared.phase == Phase::Open => shared.output.len() - shared.written,
                _ => continue,
            };
            let best = furthest.as_ref().map_or(bytes, |(most, _)| *most);
            if unwritten > best {
                furthest = Some((unwritten, socket));
            }
        }
        furthest.map(|(_, socket)| socket)
    }
}

/// A text message answered by the socket itself, without waking its object: `request` in,
/// `response` out (for example `ping` → `pong` keep-alives from a client library).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoResponse {
    pub request: String,
    pub response: String,
}

/// Where a socket is in its life. Only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Messages flow both ways.
    Open,
    /// The server sent a close frame and waits (bounded by `close_timeout_ms`) for the
    /// client's; nothing more is sent and client messages are dropped.
    CloseSent,
    /// Nothing more is read: the output is flushed (bounded by `close_timeout_ms`), then the
    /// connection is dropped.
    Finishing,
}

pub(super) struct Shared {
    /// The socket's name on this core, the key its owner finds it by.
    pub(super) id: SocketId,
    /// Bounds of the send queue, and the close timeout the driver applies.
    pub(super) limits: Rc<WebSocketLimits>,
    pub(super) phase: Phase,
    /// Encoded frames; `output[written..]` is not yet on the wire.
    pub(super) output: Vec<u8>,
    pub(super) written: usize,
    /// End offsets in `output` of the frames not yet fully written, oldest first: counts the
    /// messages queued (bounded by `send_queue_messages_max`) and tells where a partly written
    /// frame ends, so an overflow can drop whole frames only.
    frame_ends: VecDeque<usize>,
    /// Whether `written` falls between two frames (rather than inside the oldest unwritten
    /// one), so an overflow knows whether that frame must still be completed.
    written_at_frame_boundary: bool,
    /// The core's budget of queued bytes, which this socket's unwritten output counts against.
    budget: Rc<CoreSendBudget>,
    /// What this socket has counted in `budget` (its unwritten bytes when last settled).
    charged_bytes: usize,
    /// Set when the send queue overflowed: the numbers for the socket's terminal event.
    pub(super) overflow: Option<(usize, usize)>,
    /// The driver task, waiting for output to write.
    pub(super) driver: Option<Waker>,
    /// Given at accept; survive hibernation; let the owner select sockets (a room, a user).
    tags: Box<[String]>,
    /// Small state the object keeps per socket; survives hibernation.
    attachment: Option<Box<[u8]>>,
    /// Answered by the driver without an event (see [`AutoResponse`]).
    pub(super) auto_response: Option<Rc<AutoResponse>>,
    /// When `auto_response` last answered, for the object to tell a live client from a dead
    /// one without having been woken.
    pub(super) auto_responded_at: Option<SystemTime>,
}

/// The owner's side of one socket. Cloning is cheap (one reference count).
#[derive(Clone)]
pub struct SocketHandle {
    shared: Rc<RefCell<Shared>>,
}

impl SocketHandle {
    /// A handle for a socket about to be served; `tags` are fixed for its lifetime.
    pub fn new(
        id: SocketId,
        tags: Vec<String>,
        limits: Rc<WebSocketLimits>,
        budget: Rc<CoreSendBudget>,
    ) -> Result<SocketHandle, AttachError> {
        if tags.len() > TAGS_PER_SOCKET_MAX {
            return Err(AttachError::TooManyTags {
                count: tags.len(),
                max: TAGS_PER_SOCKET_MAX,
            });
        }
        if let Some(tag) = tags.iter().find(|tag| tag.len() > TAG_BYTES_MAX) {
            return Err(AttachError::TagTooLong {
                bytes: tag.len(),
                max: TAG_BYTES_MAX,
            });
        }
        let registry = budget.clone();
        let shared = Shared {
            id,
            limits,
            phase: Phase::Open,
            output: Vec::new(),
            written: 0,
            frame_ends: VecDeque::new(),
            written_at_frame_boundary: true,
            budget,
            charged_bytes: 0,
            overflow: None,
            driver: None,
            tags: tags.into_boxed_slice(),
            attachment: None,
            auto_response: None,
            auto_responded_at: None,
        };
        let shared = Rc::new(RefCell::new(shared));
        let mut sockets = registry.sockets.borrow_mut();
        // Dropping the entries of sockets gone before the list would grow keeps it within
        // twice the sockets open, at a cost amortized over the pushes.
        if sockets.len() == sockets.capacity() {
            sockets.retain(|socket| socket.strong_count() > 0);
        }
        sockets.push(Rc::downgrade(&shared));
        drop(sockets);
        Ok(SocketHandle { shared })
    }

    pub fn id(&self) -> SocketId {
        self.shared.borrow().id
    }

    /// Queues a text message. See [`SendError`] for when it is refused; a full queue also
    /// closes the socket.
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.shared
            .borrow_mut()
            .enqueue(Opcode::Text, text.as_bytes())
    }

    pub fn send_binary(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.shared.borrow_mut().enqueue(Opcode::Binary, bytes)
    }

    /// Starts the closing handshake. The socket's terminal event follows once the client
    /// answers or `close_timeout_ms` passes.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code.0));
        }
        let mut shared = self.shared.borrow_mut();
        if shared.phase != Phase::Open {
            return Err(SendError::Closed);
        }
        shared.send_close(Some(&CloseFrame::new(code, reason)), Phase::CloseSent);
        Ok(())
    }

    /// Whether messages can still be sent.
    pub fn is_open(&self) -> bool {
        self.shared.borrow().phase == Phase::Open
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.shared.borrow().tags.iter().any(|own| own == tag)
    }

    pub fn tags(&self) -> Vec<String> {
        self.shared.borrow().tags.to_vec()
    }

    pub fn attachment(&self) -> Option<Vec<u8>> {
        self.shared
            .borrow()
            .attachment
            .as_deref()
            .map(<[u8]>::to_vec)
    }

    /// Replaces the attachment (`None` removes it); at most `ATTACHMENT_BYTES_MAX` bytes.
    pub fn set_attachment(&self, attachment: Option<&[u8]>) -> Result<(), AttachError> {
        if let Some(bytes) = attachment {
            if bytes.len() > ATTACHMENT_BYTES_MAX {
                return Err(AttachError::AttachmentTooLarge {
                    bytes: bytes.len(),
                    max: ATTACHMENT_BYTES_MAX,
                });
            }
        }
        self.shared.borrow_mut().attachment = attachment.map(Box::from);
        Ok(())
    }

    /// Sets (or with `None` clears) the request → response pair answered without an event.
    /// Owners share one `Rc` among all sockets of an object.
    pub fn set_auto_response(&self, auto_response: Option<Rc<AutoResponse>>) {
        self.shared.borrow_mut().auto_response = auto_response;
    }

    pub fn auto_response_timestamp(&self) -> Option<SystemTime> {
        self.shared.borrow().auto_responded_at
    }

    /// Encoded bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        let shared = self.shared.borrow();
        shared.output.len() - shared.written
    }

    /// Heap bytes this socket's send side holds (capacity, not length): what a slow client
    /// costs the server.
    pub fn send_buffer_bytes(&self) -> usize {
        let shared = self.shared.borrow();
        shared.output.capacity() + shared.frame_ends.capacity() * std::mem::size_of::<usize>()
    }

    pub(super) fn shared(&self) -> &Rc<RefCell<Shared>> {
        &self.shared
    }
}

impl Shared {
    /// Queues one data or pong frame within the send queue's bounds; on overflow the socket is
    /// closed (see [`Shared::overflow`]).
    pub(super) fn enqueue(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), SendError> {
        if self.phase != Phase::Open {
            return Err(SendError::Closed);
        }
        let bytes = frame_bytes(payload.len(), false);
        let bytes_max = self.limits.send_queue_bytes_max;
        if bytes > bytes_max {
            return Err(SendError::MessageTooLarge {
                bytes,
                max: bytes_max,
            });
        }
        let queued_bytes = self.output.len() - self.written;
        let queued_messages = self.frame_ends.len();
        let close_code = if queued_bytes + bytes > bytes_max
            || queued_messages >= self.limits.send_queue_messages_max
        {
            Some(SEND_OVERFLOW_CLOSE_CODE)
        } else if !self.make_room(bytes) {
            Some(CORE_BUDGET_CLOSE_CODE)
        } else {
            None
        };
        if let Some(close_code) = close_code {
            self.overflow(queued_bytes, queued_messages, close_code);
            return Err(SendError::QueueFull {
                bytes: queued_bytes,
                messages: queued_messages,
            });
        }
        encode_frame(&mut self.output, opcode, true, payload, None);
        self.frame_ends.push_back(self.output.len());
        self.settle();
        self.wake_driver();
        Ok(())
    }

    /// Closes other sockets that are further behind than this one, largest queue first, until
    /// `bytes` more fit in the core's budget; false if they cannot be made to fit that way.
    fn make_room(&mut self, bytes: usize) -> bool {
        let own = self.output.len() - self.written;
        while self.budget.queued_bytes() + bytes > self.budget.bytes_max {
            // Each socket closed leaves the open ones, so this ends.
            let Some(furthest) = self.budget.furthest_behind(own) else {
                return false;
            };
            let mut furthest = furthest.borrow_mut();
            let queued_bytes = furthest.output.len() - furthest.written;
            let queued_messages = furthest.frame_ends.len();
            furthest.overflow(queued_bytes, queued_messages, CORE_BUDGET_CLOSE_CODE);
        }
        true
    }

    /// Nothing more will be written (the client is gone, or gave up closing): frees the queued
    /// output and gives its share of the core's budget back at once, not when the last handle
    /// of the socket is dropped (user code may keep one for a long time).
    pub(super) fn discard_output(&mut self) {
        self.output = Vec::new();
        self.written = 0;
        self.frame_ends.clear();
        self.settle();
    }

    /// Brings the core's budget up to date with this socket's unwritten bytes; called after
    /// every change to them.
    fn settle(&mut self) {
        let unwritten = self.output.len() - self.written;
        let core = self.budget.queued_bytes.get() - self.charged_bytes + unwritten;
        self.budget.queued_bytes.set(core);
        self.charged_bytes = unwritten;
    }

    /// The client stopped reading, or the core's budget is spent: drops every queued frame not
    /// yet started (keeping the one partly on the wire, so the stream stays well formed),
    /// queues a close frame with `close_code` and releases the memory. The driver reports
    /// `SendQueueFull` as the socket's terminal event.
    fn overflow(&mut self, queued_bytes: usize, queued_messages: usize, close_code: CloseCode) {
        tracing::debug!(
            socket = self.id.0,
            queued_bytes,
            queued_messages,
            core_queued_bytes = self.budget.queued_bytes(),
            close_code = close_code.0,
            "send queue or core budget full; closing"
        );
        self.compact();
        let keep = match self.frame_ends.front() {
            Some(&end) if self.started_front_frame() => end,
            _ => 0,
        };
        self.output.truncate(keep);
        self.output.shrink_to_fit();
        self.frame_ends.retain(|&end| end <= keep);
        self.frame_ends.shrink_to_fit();
        self.overflow = Some((queued_bytes, queued_messages));
        let reason = if close_code == CORE_BUDGET_CLOSE_CODE {
            "server send budget full"
        } else {
            "send queue full"
        };
        let close = CloseFrame::new(close_code, reason);
        self.send_close(Some(&close), Phase::CloseSent);
    }

    /// Whether the oldest unwritten frame has some of its bytes on the wire already.
    fn started_front_frame(&self) -> bool {
        !self.written_at_frame_boundary
    }

    /// Queues a close frame (bypassing the bounds: at most one per socket) and moves on to
    /// `phase`.
    pub(super) fn send_close(&mut self, close: Option<&CloseFrame>, phase: Phase) {
        encode_close(&mut self.output, close, None);
        self.frame_ends.push_back(self.output.len());
        self.settle();
        self.phase = phase;
        self.wake_driver();
    }

    /// Records that `bytes` more were written.
    pub(super) fn advance(&mut self, bytes: usize) {
        self.written += bytes;
        self.settle();
        self.written_at_frame_boundary = false;
        while let Some(&end) = self.frame_ends.front() {
            if end > self.written {
                break;
            }
            self.written_at_frame_boundary = end == self.written;
            self.frame_ends.pop_front();
        }
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
            self.written_at_frame_boundary = true;
            if self.output.capacity() > OUTPUT_BYTES_RETAINED_MAX {
                self.output = Vec::new();
            }
            if self.frame_ends.capacity() > 64 {
                self.frame_ends = VecDeque::new();
            }
        } else if self.written >= OUTPUT_COMPACT_BYTES && self.written * 2 >= self.output.len() {
            self.compact();
        }
    }

    /// Drops the bytes already written from the front of the output buffer.
    fn compact(&mut self) {
        self.output.drain(..self.written);
        for end in &mut self.frame_ends {
            *end -= self.written;
        }
        self.written = 0;
    }

    /// Bytes still to write.
    pub(super) fn unwritten(&self) -> &[u8] {
        &self.output[self.written..]
    }

    fn wake_driver(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.wake();
        }
    }
}

impl Drop for Shared {
    /// A socket that goes away with output unwritten gives its share of the budget back.
    fn drop(&mut self) {
        let core = self.budget.queued_bytes.get() - self.charged_bytes;
        self.budget.queued_bytes.set(core);
    }
}
