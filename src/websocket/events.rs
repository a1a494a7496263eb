//! What a socket tells its owner, and the bounded queue that carries it.
//!
//! A socket never calls into an object: it hands `(SocketId, SocketEvent)` to an [`EventSink`],
//! which the per-core host implements. The host then decides whether the object is in memory,
//! constructs it if it was evicted, and calls its handler. That is what lets an object hibernate
//! while its sockets stay open.
//!
//! The sink may refuse an event when it is full; the socket then keeps that one event and stops
//! reading until the sink wakes it, so a flood of messages backs up into the client's TCP
//! window rather than into server memory.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

use ahash::AHashMap;

use super::close::CloseCode;
use super::error::ProtocolError;

/// Names a socket on its core. Ids are never reused while the process lives, so an event for a
/// socket that has since closed cannot be mistaken for a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64);

/// A complete data message from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

/// Something that happened on a socket. `Closed` and `Failed` are terminal: each socket delivers
/// exactly one of them, last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketEvent {
    Message(Message),
    /// The connection ended. `clean`: both close frames were exchanged; otherwise `code` is
    /// 1006 (the peer vanished, or the closing handshake timed out).
    Closed {
        code: CloseCode,
        reason: String,
        clean: bool,
    },
    /// The server failed the connection; a close frame with the matching code was sent.
    Failed(SocketError),
}

/// Why the server failed a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketError {
    /// The client broke RFC 6455 or a receive limit.
    Protocol(ProtocolError),
    /// The client stopped reading and its send queue reached its bound.
    SendQueueFull { bytes: usize, messages: usize },
}

impl SocketEvent {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, SocketEvent::Message(_))
    }
}

/// Receives the events of many sockets. Implemented by whatever owns them: the object host, or
/// the [`EventQueue`] below.
pub trait EventSink {
    /// Takes the event, or hands it back when there is no room; in that case the sink must wake
    /// `cx`'s waker once there is.
    fn offer(
        &self,
        cx: &mut Context<'_>,
        socket: SocketId,
        event: SocketEvent,
    ) -> Result<(), SocketEvent>;
}

/// A bounded, single-core, many-socket event queue with one consumer.
pub struct EventQueue {
    inner: RefCell<QueueInner>,
}

struct QueueInner {
    /// Events not yet taken by the consumer; at most `capacity`.
    events: VecDeque<(SocketId, SocketEvent)>,
    /// The bound on `events`.
    capacity: usize,
    /// The consumer, waiting for an event.
    consumer: Option<Waker>,
    /// Sockets holding a refused event, one waker each (so at most one entry per open socket);
    /// all are woken once the queue has drained to half, so wake-ups come in batches rather
    /// than one per event taken.
    producers: AHashMap<SocketId, Waker>,
}

impl EventQueue {
    /// A queue holding at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> EventQueue {
        let capacity = capacity.max(1);
        EventQueue {
            inner: RefCell::new(QueueInner {
                events: VecDeque::with_capacity(capacity.min(1024)),
                capacity,
                consumer: None,
                producers: AHashMap::new(),
            }),
        }
    }

    /// The next event, waiting for one.
    pub async fn next(&self) -> (SocketId, SocketEvent) {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<(SocketId, SocketEvent)> {
        let mut inner = self.inner.borrow_mut();
        let Some(event) = inner.events.pop_front() else {
            inner.consumer = Some(cx.waker().clone());
            return Poll::Pending;
        };
        if inner.events.len() <= inner.capacity / 2 && !inner.producers.is_empty() {
            let producers = std::mem::take(&mut inner.producers);
            drop(inner);
            producers.into_values().for_each(Waker::wake);
        }
        Poll::Ready(event)
    }

    /// Events waiting to be taken.
    pub fn len(&self) -> usize {
        self.inner.borrow().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl EventSink for EventQueue {
    fn offer(
        &self,
        cx: &mut Context<'_>,
        socket: SocketId,
        event: SocketEvent,
    ) -> Result<(), SocketEvent> {
        let mut inner = self.inner.borrow_mut();
        if inner.events.len() >= inner.capacity {
            inner.producers.insert(socket, cx.waker().clone());
            return Err(event);
        }
        inner.events.push_back((socket, event));
        let consumer = inner.consumer.take();
        drop(inner);
        if let Some(consumer) = consumer {
            consumer.wake();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::testing::Counter;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn message(text: &str) -> SocketEvent {
        SocketEvent::Message(Message::Text(text.into()))
    }

    #[test]
    fn a_full_queue_refuses_and_wakes_its_producers_once_half_drained() {
        let queue = EventQueue::new(4);
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        for index in 0..4 {
            let accepted = queue.offer(&mut cx, SocketId(1), message(&index.to_string()));
            assert_eq!(accepted, Ok(()));
        }
        // Two sockets are refused; each registers once however often it retries.
        for socket in [2, 3, 3] {
            let refused = queue.offer(&mut cx, SocketId(socket), message("late"));
            assert_eq!(refused, Err(message("late")));
        }
        let noop = Waker::noop();
        let mut consumer = Context::from_waker(noop);
        assert_eq!(
            queue.poll_next(&mut consumer),
            Poll::Ready((SocketId(1), message("0")))
        );
        assert_eq!(counter.0.load(Ordering::Relaxed), 0, "still over half full");
        assert!(queue.poll_next(&mut consumer).is_ready());
        assert_eq!(
            counter.0.load(Ordering::Relaxed),
            2,
            "both refused sockets woken"
        );
        assert!(queue.poll_next(&mut consumer).is_ready());
        assert!(queue.poll_next(&mut consumer).is_ready());
        assert!(queue.is_empty());
        assert!(queue.poll_next(&mut consumer).is_pending());
    }
}
