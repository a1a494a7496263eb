//! The driver of one WebSocket: a task on the owning core that reads frames, answers pings,
//! runs the closing handshake, writes whatever the owner queued, and hands events to a sink.
//!
//! Everything happens in one `poll`, as in the HTTP connection loop: hand a refused event to
//! the sink again, write all queued output in one write, decode what has arrived, read more.
//! The driver never holds an object, only a [`SocketHandle`] and an [`EventSink`], so the object
//! can be evicted and re-created while the connection stays open.
//!
//! Bounds:
//! - the read buffer is on the stack of `poll` (`READ_CHUNK_BYTES`); between polls the socket
//!   keeps only what it could not decode yet (a partial header, or the rest of a read while the
//!   sink is full), and a message in progress, bounded by `message_bytes_max`;
//! - while the sink refuses an event nothing more is read, so TCP flow control pushes back on
//!   the client;
//! - the send queue is bounded by the handle (see `SocketHandle::send_text`);
//! - from the moment the socket starts closing, `close_timeout_ms` bounds how long it lives.
//!
//! The connection ends (the terminal event, `Closed` or `Failed`, is always delivered first):
//! - the client sends a close frame: it is echoed at once, the output flushed, the write side
//!   shut (so replies to messages the owner has not handled yet are refused, `Closed`);
//! - the owner calls `close`: the client's close frame is awaited, up to the timeout;
//! - the client breaks the protocol or a receive limit: a close frame with the code is sent;
//! - the send queue overflows: a 1008 close frame is sent, the client's answer awaited;
//! - the client vanishes (EOF, reset): at once, with code 1006.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::timer::Timer;

use super::close::{CloseCode, CloseFrame};
use super::codec::{Decoded, Decoder, Incoming, Opcode, Role};
use super::error::ProtocolError;
use super::events::{EventSink, Message, SocketError, SocketEvent};
use super::handle::{Phase, SocketHandle};

/// Bytes read per read call, into a buffer on the stack of `poll`, so an idle socket holds no
/// read buffer at all.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// An empty carry buffer keeps at most this much capacity.
const CARRY_BYTES_RETAINED_MAX: usize = 64;

/// Rounds of write-decode-read one poll may run before yielding to the core's other tasks.
const ROUNDS_PER_POLL_MAX: usize = 16;

/// After the last frame is written: how many bytes of client input are drained (until the
/// client's FIN) before the connection is dropped; dropping it with unread input would reset
/// it and could destroy the close frame in flight.
const LINGER_BYTES_MAX: usize = 64 * 1024;

/// Serves one upgraded connection until it ends (see the module documentation). `received`:
/// bytes that arrived after the upgrade request, read by the HTTP layer, decoded first.
pub async fn serve_socket(
    stream: TcpStream,
    handle: SocketHandle,
    sink: Rc<dyn EventSink>,
    received: Vec<u8>,
) {
    // Frames are batched by the driver itself; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let limits = handle.shared().borrow().limits.clone();
    let mut driver = Driver {
        stream,
        handle,
        sink,
        decoder: Decoder::new(
            Role::Server,
            limits.frame_bytes_max,
            limits.message_bytes_max,
        ),
        carry: received,
        reading: true,
        pending: None,
        terminal: None,
        terminal_decided: false,
        peer_gone: false,
        close_timer: None,
        close_timeout: Duration::from_millis(limits.close_timeout_ms),
    };
    poll_fn(|cx| driver.poll(cx)).await;
    if !driver.peer_gone {
        driver.linger().await;
    }
    // Closing the descriptor alone may not end the connection while io_uring still holds a
    // poll on it; shutting it down does, at once (a client given up on gets its FIN now).
    let _ = driver.stream.shutdown(std::net::Shutdown::Both).await;
}

struct Driver {
    stream: TcpStream,
    /// Shared with the owner: phase, send queue, auto response.
    handle: SocketHandle,
    /// Where events go; the owner's, not an object's.
    sink: Rc<dyn EventSink>,
    decoder: Decoder,
    /// Bytes read and not yet decoded: usually empty; a partial header; or the rest of a read
    /// while `pending` waits for the sink (at most `READ_CHUNK_BYTES` plus a header).
    carry: Vec<u8>,
    /// False once nothing more will be decoded: after a close frame or a protocol error.
    reading: bool,
    /// A message the sink refused; nothing is decoded until it is taken.
    pending: Option<SocketEvent>,
    /// The terminal event, from its decision until the sink takes it; delivered after
    /// `pending`.
    terminal: Option<SocketEvent>,
    /// Whether the terminal event was decided: the first decision wins.
    terminal_decided: bool,
    /// The client vanished: nothing can be written or read any more.
    peer_gone: bool,
    /// Bounds the closing phase; armed when the socket stops being open.
    close_timer: Option<Timer>,
    close_timeout: Duration,
}

impl Driver {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..ROUNDS_PER_POLL_MAX {
            self.deliver(cx);
            if !self.peer_gone && self.poll_write(cx).is_err() {
                self.vanished();
                continue;
            }
            let phase = self.phase();
            let flushed = self.peer_gone || self.handle.queued_bytes() == 0;
            let delivered = self.terminal_decided && self.terminal.is_none();
            if phase == Phase::Finishing && flushed && delivered {
                return Poll::Ready(());
            }
            let mut progress = false;
            if self.reading && self.pending.is_none() && !self.peer_gone {
                match self.receive(cx) {
                    Ok(received) => progress = received,
                    Err(()) => {
                        self.vanished();
                        progress = true;
                    }
                }
            }
            if phase != Phase::Open && self.poll_close_timer(cx).is_ready() {
                self.timed_out();
                progress = true;
            }
            if !progress {
                let mut shared = self.handle.shared().borrow_mut();
                if !shared
                    .driver
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    shared.driver = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
        }
        // Still busy: let the core's other tasks run, and come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn phase(&self) -> Phase {
        self.handle.shared().borrow().phase
    }

    /// Hands the refused message, then the terminal event, to the sink.
    fn deliver(&mut self, cx: &mut Context<'_>) {
        let id = self.handle.id();
        if let Some(event) = self.pending.take() {
            if let Err(event) = self.sink.offer(cx, id, event) {
                self.pending = Some(event);
                return;
            }
        }
        if let Some(event) = self.terminal.take() {
            if let Err(event) = self.sink.offer(cx, id, event) {
                self.terminal = Some(event);
            }
        }
    }

    /// Decides the terminal event (the first decision wins) and stops reading.
    fn end(&mut self, event: SocketEvent) {
        self.reading = false;
        self.carry = Vec::new();
        if !self.terminal_decided {
            self.terminal_decided = true;
            self.terminal = Some(event);
        }
    }

    /// The event that ends a socket the server was closing, had the client not answered.
    fn unanswered(&self) -> SocketEvent {
        match self.handle.shared().borrow().overflow {
            Some((bytes, messages)) => {
                SocketEvent::Failed(SocketError::SendQueueFull { bytes, messages })
            }
            None => SocketEvent::Closed {
                code: CloseCode::ABNORMAL,
                reason: String::new(),
                clean: false,
            },
        }
    }

    /// EOF or an I/O error: the connection is gone, whatever it was doing.
    fn vanished(&mut self) {
        self.peer_gone = true;
        let event = self.unanswered();
        self.end(event);
        let mut shared = self.handle.shared().borrow_mut();
        shared.phase = Phase::Finishing;
        shared.discard_output();
    }

    /// The closing phase outlived `close_timeout_ms`: give up on the client.
    fn timed_out(&mut self) {
        let event = self.unanswered();
        self.end(event);
        // Treat the connection as gone: nothing more is written, and no linger.
        self.peer_gone = true;
        let mut shared = self.handle.shared().borrow_mut();
        shared.phase = Phase::Finishing;
        shared.discard_output();
    }

    /// Writes as much queued output as the socket takes. `Err`: the peer is gone.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), ()> {
        let mut shared = self.handle.shared().borrow_mut();
        while !shared.unwritten().is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, shared.unwritten()) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(bytes)) => shared.advance(bytes),
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// Decodes what is carried, then reads and decodes more. `Ok(true)`: progress was made;
    /// `Err`: the peer is gone.
    fn receive(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut progress = false;
        if !self.carry.is_empty() {
            let carry = std::mem::take(&mut self.carry);
            let consumed = self.decode(cx, &carry);
            progress = consumed > 0;
            self.keep_carry(carry, consumed);
            if self.pending.is_some() || !self.reading {
                return Ok(progress);
            }
        }
        // `carry` now holds at most a partial frame header.
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        let read = match Pin::new(&mut self.stream).poll_read(cx, &mut chunk) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
            Poll::Ready(Ok(bytes)) => bytes,
            Poll::Pending => return Ok(progress),
        };
        if self.carry.is_empty() {
            let consumed = self.decode(cx, &chunk[..read]);
            if self.reading {
                self.carry.extend_from_slice(&chunk[consumed..read]);
            }
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(&chunk[..read]);
            let consumed = self.decode(cx, &carry);
            self.keep_carry(carry, consumed);
        }
        Ok(true)
    }

    /// Puts back what `decode` left of `carry`.
    fn keep_carry(&mut self, mut carry: Vec<u8>, consumed: usize) {
        if !self.reading {
            return;
        }
        carry.drain(..consumed);
        if carry.is_empty() && carry.capacity() > CARRY_BYTES_RETAINED_MAX {
            carry = Vec::new();
        }
        self.carry = carry;
    }

    /// Decodes items until the input runs out, the sink refuses one, or reading stops. Returns
    /// the bytes consumed.
    fn decode(&mut self, cx: &mut Context<'_>, input: &[u8]) -> usize {
        let mut consumed = 0;
        while self.reading && self.pending.is_none() {
            match self.decoder.decode(&input[consumed..]) {
                Ok(Decoded {
                    consumed: used,
                    item,
                }) => {
                    consumed += used;
                    match item {
                        Some(item) => self.on_item(cx, item),
                        None => break,
                    }
                }
                Err(error) => {
                    self.on_protocol_error(error);
                    break;
                }
            }
        }
        consumed
    }

    fn on_item(&mut self, cx: &mut Context<'_>, item: Incoming) {
        let phase = self.phase();
        match item {
            Incoming::Text(text) if phase == Phase::Open => {
                if self.auto_respond(&text) {
                    return;
                }
                self.offer(cx, SocketEvent::Message(Message::Text(text)));
            }
            Incoming::Binary(bytes) if phase == Phase::Open => {
                self.offer(cx, SocketEvent::Message(Message::Binary(bytes)));
            }
            // After the server's close frame, the client's messages are dropped (RFC 6455
            // section 1.4: it has started closing).
            Incoming::Text(_) | Incoming::Binary(_) | Incoming::Pong(_) => {}
            Incoming::Ping(payload) => {
                // A full queue closes the socket; that outcome is reported by the terminal
                // event, not here.
                let _ = self
                    .handle
                    .shared()
                    .borrow_mut()
                    .enqueue(Opcode::Pong, &payload);
            }
            Incoming::Close(close) => self.on_close(phase, close),
        }
    }

    /// Hands a message to the sink, keeping it if refused.
    fn offer(&mut self, cx: &mut Context<'_>, event: SocketEvent) {
        if let Err(event) = self.sink.offer(cx, self.handle.id(), event) {
            self.pending = Some(event);
        }
    }

    /// Answers `text` if it is the auto-response request. Returns whether it was.
    fn auto_respond(&mut self, text: &str) -> bool {
        let mut shared = self.handle.shared().borrow_mut();
        let Some(auto) = shared.auto_response.clone() else {
            return false;
        };
        if auto.request != text {
            return false;
        }
        shared.auto_responded_at = Some(SystemTime::now());
        let _ = shared.enqueue(Opcode::Text, auto.response.as_bytes());
        true
    }

    /// The client's close frame: echoed if the server had not closed yet; either way the
    /// handshake is now complete from the client's side.
    fn on_close(&mut self, phase: Phase, close: Option<CloseFrame>) {
        let event = {
            let mut shared = self.handle.shared().borrow_mut();
            if phase == Phase::Open {
                // Echo the code (RFC 6455 section 5.5.1), without the reason.
                let echo = close.as_ref().map(|frame| CloseFrame::new(frame.code, ""));
                shared.send_close(echo.as_ref(), Phase::Finishing);
            } else {
                shared.phase = Phase::Finishing;
            }
            match (shared.overflow, close) {
                (Some((bytes, messages)), _) => {
                    SocketEvent::Failed(SocketError::SendQueueFull { bytes, messages })
                }
                (None, Some(frame)) => SocketEvent::Closed {
                    code: frame.code,
                    reason: frame.reason,
                    clean: true,
                },
                (None, None) => SocketEvent::Closed {
                    code: CloseCode::NO_STATUS,
                    reason: String::new(),
                    clean: true,
                },
            }
        };
        self.end(event);
    }

    /// Fails the connection: a close frame with the error's code (unless one was sent), then
    /// the end.
    fn on_protocol_error(&mut self, error: ProtocolError) {
        tracing::debug!(socket = self.handle.id().0, %error, "failing WebSocket");
        {
            let mut shared = self.handle.shared().borrow_mut();
            if shared.phase == Phase::Open {
                let close = CloseFrame::new(error.close_code(), &error.to_string());
                shared.send_close(Some(&close), Phase::Finishing);
            } else {
                shared.phase = Phase::Finishing;
            }
        }
        self.end(SocketEvent::Failed(SocketError::Protocol(error)));
    }

    fn poll_close_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.close_timeout;
        let timer = self.close_timer.get_or_insert_with(|| Timer::new(timeout));
        Pin::new(timer).poll(cx).map(|_| ())
    }

    /// Shuts the write side after the last frame, then drains the client's input until its FIN,
    /// `LINGER_BYTES_MAX`, or the close timeout.
    async fn linger(&mut self) {
        let timer = self
            .close_timer
            .take()
            .unwrap_or_else(|| Timer::new(self.close_timeout));
        // On the heap, and only now: a buffer in the future itself would cost every idle
        // socket its size for as long as it is open.
        let mut scratch = vec![0u8; 1024];
        crate::http::linger(&mut self.stream, &mut scratch, LINGER_BYTES_MAX, timer).await;
    }
}

#[cfg(test)]
#[path = "socket_tests.rs"]
mod tests;
