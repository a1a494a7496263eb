//! The per-connection loop: read, parse, handle, write — with keep-alive and pipelining.
//!
//! One task per connection drives everything from a single `poll`: it parses every complete
//! request in the read buffer, starts each handler at once (up to `pipeline_requests_max` in
//! flight), polls them in place, and writes every response that is ready, in request order,
//! with one write. Whenever a slot of the pipeline frees, the requests already buffered are
//! started at once, without waiting for more bytes to arrive.
//!
//! A client that never reads its responses cannot make the server buffer without bound: no new
//! request starts while the pipeline is full or while more than `response_bytes_buffered_max`
//! bytes of responses wait to be sent, and the read buffer does not grow meanwhile, so the
//! backlog stays in the client's socket. A client that takes no byte of its responses for
//! `write_timeout_ms` is disconnected.
//!
//! The socket is watched for the client going away the whole time, even while nothing new may
//! start: bytes are read into the free part of the read buffer (without growing it), and when
//! that is full, the kernel is asked every `HANGUP_CHECK_INTERVAL` whether the peer has closed
//! (`hangup.rs`). A client that leaves behind a full pipeline therefore has its handlers
//! dropped promptly instead of when a slot would have freed.
//!
//! The connection ends:
//! - after a parse error: the error response is written after the responses already in flight,
//!   then the write side is shut and unread input drained for a moment (so the client sees the
//!   response rather than a reset);
//! - after a request that does not keep the connection alive, or on server shutdown: in-flight
//!   requests are answered, then it closes;
//! - when the client goes away (EOF or an I/O error): at once, dropping the in-flight handler
//!   futures — which is how, for example, a waiting lock client leaves its queue. A client that
//!   only shuts its sending side counts as gone too: TCP cannot tell that apart from a close
//!   until a write fails, and a lock must never be handed to a client that has left;
//! - after `write_timeout_ms` in which the client took none of the responses waiting for it;
//! - after `idle_connection_timeout_ms` with no complete request, nothing in flight and nothing
//!   to write.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::TcpStream;
use glommio::timer::Timer;

use super::encode::encode_response;
use super::hangup::peer_hung_up;
use super::parse::{parse_request, request_bytes_max};
use super::upgrade::takes_connection;
use super::{HttpError, Method, Request, Response};
use crate::config::HttpLimits;
use crate::shutdown::{Shutdown, Wait};

/// Serves requests; each call's future runs on the connection's core and may outlive nothing
/// but the connection (it is dropped if the client goes away).
pub trait Handler {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response>>>;

    /// Takes over the connection after a request asking to switch protocols (`Upgrade:
    /// websocket`), once every earlier response is written. `unread` holds the bytes the client
    /// sent after that request. The default refuses the upgrade.
    fn upgrade(
        &self,
        stream: TcpStream,
        unread: Vec<u8>,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = ()>>> {
        let _ = (unread, request);
        Box::pin(async move {
            let mut out = Vec::new();
            encode_response(
                &Response::text(501, "upgrades are not supported"),
                false,
                false,
                &mut out,
            );
            let mut stream = stream;
            let _ = futures_lite::AsyncWriteExt::write_all(&mut stream, &out).await;
        })
    }
}

/// A read buffer starts this small and doubles up to `request_bytes_max` only for a request
/// that needs it, so idle connections stay cheap.
const READ_BUFFER_BYTES_INITIAL: usize = 16 * 1024;

/// Past this size an empty read buffer or written output buffer is given back to the allocator.
const BUFFER_BYTES_RETAINED_MAX: usize = 256 * 1024;

/// Rounds of read-parse-write one poll may run before yielding to the other tasks of the core.
const ROUNDS_PER_POLL_MAX: usize = 16;

/// How often a connection that cannot read (its buffer is full of requests it may not start
/// yet) asks the kernel whether the client has closed.
const HANGUP_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// After an error response: how long, and how many bytes, unread input is drained for.
const LINGER_DURATION: Duration = Duration::from_secs(1);
const LINGER_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Serves one client connection until it ends (see the module documentation).
pub async fn serve_connection(
    stream: TcpStream,
    handler: Rc<dyn Handler>,
    limits: Rc<HttpLimits>,
    shutdown: Rc<Shutdown>,
) {
    // Responses are batched by the loop itself; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let mut connection = Connection::new(stream, handler, limits);
    let outcome = {
        let mut shutdown_wait = pin!(shutdown.wait());
        poll_fn(|cx| connection.poll(cx, shutdown_wait.as_mut())).await
    };
    match outcome {
        Outcome::Finished { linger: true } => connection.linger().await,
        Outcome::WriteTimedOut => {
            tracing::debug!(
                unsent_bytes = connection.output.len() - connection.written,
                "the client took no response bytes within write_timeout_ms; closing"
            );
        }
        Outcome::Upgrade => {
            if let Some(request) = connection.upgrade.take() {
                let unread = connection.read_buffer[..connection.filled].to_vec();
                let Connection {
                    stream,
                    handler,
                    read_buffer,
                    output,
                    in_flight,
                    ..
                } = connection;
                // The new protocol may hold the connection for hours: give the HTTP buffers
                // back now rather than when the upgrade ends.
                drop((read_buffer, output, in_flight));
                handler.upgrade(stream, unread, request).await;
            }
        }
        _ => {}
    }
}

/// How the loop ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// EOF or an I/O error: nothing more can be said.
    PeerGone,
    /// No request for `idle_connection_timeout_ms`.
    Idle,
    /// The client took no byte of its responses for `write_timeout_ms`.
    WriteTimedOut,
    /// Every response is written. `linger`: the client may still be sending (after an error).
    Finished { linger: bool },
    /// Every response before an upgrade request is written; the connection changes hands.
    Upgrade,
}

/// A request being answered, in arrival order.
struct InFlight {
    state: Slot,
    /// HEAD: the response goes out without its body.
    head_only: bool,
    /// Whether the request allows the connection to stay open after its response.
    keep_alive: bool,
}

enum Slot {
    Running(Pin<Box<dyn Future<Output = Response>>>),
    Ready(Response),
}

struct Connection {
    stream: TcpStream,
    handler: Rc<dyn Handler>,
    limits: Rc<HttpLimits>,
    /// Bytes read and not yet parsed live in `read_buffer[..filled]`; the rest is room to read
    /// into. Never longer than `read_buffer_bytes_max`.
    read_buffer: Vec<u8>,
    filled: usize,
    /// The largest request the limits accept, in bytes: the bound of `read_buffer`.
    read_buffer_bytes_max: usize,
    /// Requests being answered, oldest first; at most `pipeline_requests_max`.
    in_flight: VecDeque<InFlight>,
    /// Encoded responses; `output[written..]` is still to be sent. No request starts while
    /// that part is over `response_bytes_buffered_max`.
    output: Vec<u8>,
    written: usize,
    /// Parsing stopped at the pipeline or output bound with bytes still buffered: they must be
    /// parsed as soon as the bound allows, since the client may send nothing more to prompt it.
    parse_blocked: bool,
    /// Parsing stopped at an incomplete request: the only case where the read buffer may grow.
    awaiting_request_bytes: bool,
    /// False once no more requests will be read: after an error, a closing request, shutdown.
    reading: bool,
    /// Whether a parse error ended reading (the close then lingers).
    failed: bool,
    /// An upgrade request that ended reading, handed over once the responses before it are out.
    upgrade: Option<Request>,
    /// Fires after `idle_connection_timeout_ms` without a request.
    idle_deadline: Deadline,
    /// Fires after `write_timeout_ms` in which no byte of pending output was written.
    write_deadline: Deadline,
    /// Paces the hang-up checks while the read buffer is full; dropped when it has room again.
    hangup_timer: Option<Timer>,
}

impl Connection {
    fn new(stream: TcpStream, handler: Rc<dyn Handler>, limits: Rc<HttpLimits>) -> Connection {
        let read_buffer_bytes_max = request_bytes_max(&limits);
        Connection {
            stream,
            handler,
            read_buffer: vec![0; READ_BUFFER_BYTES_INITIAL.min(read_buffer_bytes_max)],
            filled: 0,
            read_buffer_bytes_max,
            in_flight: VecDeque::with_capacity(limits.pipeline_requests_max.min(64)),
            output: Vec::new(),
            written: 0,
            parse_blocked: false,
            awaiting_request_bytes: false,
            reading: true,
            failed: false,
            upgrade: None,
            idle_deadline: Deadline::default(),
            write_deadline: Deadline::default(),
            hangup_timer: None,
            limits,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, mut shutdown: Pin<&mut Wait<'_>>) -> Poll<Outcome> {
        for _ in 0..ROUNDS_PER_POLL_MAX {
            if self.reading && shutdown.as_mut().poll(cx).is_ready() {
                self.reading = false;
            }
            self.parse_available();
            self.poll_handlers(cx);
            self.encode_ready();
            match self.poll_write(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(())) => return Poll::Ready(Outcome::PeerGone),
                Poll::Pending => {
                    if self.poll_write_timer(cx).is_ready() {
                        return Poll::Ready(Outcome::WriteTimedOut);
                    }
                }
            }
            let output_empty = self.written == self.output.len();
            if !self.reading && self.in_flight.is_empty() && output_empty {
                if self.upgrade.is_some() {
                    return Poll::Ready(Outcome::Upgrade);
                }
                return Poll::Ready(Outcome::Finished {
                    linger: self.failed,
                });
            }
            let mut progress = false;
            // Read even when nothing new may start, so that a client leaving is noticed.
            if self.read_buffer_has_room() {
                self.hangup_timer = None;
                match self.poll_read(cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Outcome::PeerGone)
                    }
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Pending => {}
                }
            } else if self.poll_hangup(cx).is_ready() {
                return Poll::Ready(Outcome::PeerGone);
            }
            // A pipeline slot or room in the output freed up this round: start the requests
            // already buffered now, since the client may send nothing more to prompt it.
            if self.parse_blocked && self.may_start_request() {
                progress = true;
            }
            let idle = self.reading && self.in_flight.is_empty() && output_empty && !progress;
            if idle && self.poll_idle_timer(cx).is_ready() {
                return Poll::Ready(Outcome::Idle);
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Still busy: let the core's other tasks run, and come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether a new request may start: reading goes on, the pipeline has a free slot, and
    /// the client has taken enough of its responses.
    fn may_start_request(&self) -> bool {
        self.reading
            && self.in_flight.len() < self.limits.pipeline_requests_max
            && self.output.len() - self.written <= self.limits.response_bytes_buffered_max
    }

    /// Starts a handler for every complete request in the buffer, while the bounds allow.
    fn parse_available(&mut self) {
        let mut consumed = 0;
        self.parse_blocked = false;
        self.awaiting_request_bytes = false;
        loop {
            if !self.may_start_request() {
                self.parse_blocked = self.reading && consumed < self.filled;
                break;
            }
            match parse_request(&self.read_buffer[consumed..self.filled], &self.limits) {
                Ok(Some(parsed)) => {
                    consumed += parsed.consumed;
                    self.idle_deadline.push_back();
                    if takes_connection(&parsed.request) {
                        // What follows belongs to the new protocol (or nothing follows a
                        // streamed answer): stop parsing HTTP here.
                        self.upgrade = Some(parsed.request);
                        self.reading = false;
                        break;
                    }
                    if !parsed.keep_alive {
                        self.reading = false;
                    }
                    let head_only = parsed.request.method == Method::Head;
                    let future = self.handler.handle(parsed.request);
                    self.in_flight.push_back(InFlight {
                        state: Slot::Running(future),
                        head_only,
                        keep_alive: parsed.keep_alive,
                    });
                }
                Ok(None) => {
                    self.awaiting_request_bytes = true;
                    let unparsed = self.filled - consumed;
                    // The parser refuses any request larger than the buffer may grow, so a full
                    // buffer here means a bug in that bound; refuse rather than stall.
                    if unparsed >= self.read_buffer_bytes_max {
                        let max = self.read_buffer_bytes_max as u64;
                        self.fail(HttpError::BodyTooLarge {
                            bytes: unparsed as u64,
                            max,
                        });
                    }
                    break;
                }
                Err(error) => {
                    self.fail(error);
                    break;
                }
            }
        }
        if consumed > 0 {
            self.read_buffer.copy_within(consumed..self.filled, 0);
            self.filled -= consumed;
            if self.filled == 0 && self.read_buffer.len() > BUFFER_BYTES_RETAINED_MAX {
                self.read_buffer =
                    vec![0; READ_BUFFER_BYTES_INITIAL.min(self.read_buffer_bytes_max)];
            }
        }
    }

    /// Answers `error` after the requests already in flight, and reads nothing more.
    fn fail(&mut self, error: HttpError) {
        tracing::debug!(%error, "bad request; closing the connection");
        self.in_flight.push_back(InFlight {
            state: Slot::Ready(error.to_response()),
            head_only: false,
            keep_alive: false,
        });
        self.reading = false;
        self.failed = true;
    }

    fn poll_handlers(&mut self, cx: &mut Context<'_>) {
        for in_flight in &mut self.in_flight {
            if let Slot::Running(future) = &mut in_flight.state {
                if let Poll::Ready(response) = future.as_mut().poll(cx) {
                    in_flight.state = Slot::Ready(response);
                }
            }
        }
    }

    /// Moves the responses that are ready at the front of the queue into the output buffer.
    fn encode_ready(&mut self) {
        while let Some(InFlight {
            state: Slot::Ready(_),
            ..
        }) = self.in_flight.front()
        {
            let Some(InFlight {
                state: Slot::Ready(response),
                head_only,
                keep_alive,
            }) = self.in_flight.pop_front()
            else {
                break;
            };
            // Once reading has stopped, every remaining response tells the client so.
            let keep_alive = keep_alive && self.reading;
            encode_response(&response, head_only, keep_alive, &mut self.output);
        }
    }

    /// Writes as much output as the socket takes. `Err`: the peer is gone.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        while self.written < self.output.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.output[self.written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(bytes)) => {
                    self.written += bytes;
                    self.write_deadline.push_back();
                }
                Poll::Pending => {
                    // A client that reads slowly but steadily may never let the output empty:
                    // drop the sent part once it is as large as the unsent part, so the buffer
                    // stays within twice what is unsent, at one copy per byte at most.
                    if self.written >= self.output.len() - self.written {
                        self.output.drain(..self.written);
                        self.written = 0;
                    }
                    return Poll::Pending;
                }
            }
        }
        self.output.clear();
        self.written = 0;
        if self.output.capacity() > BUFFER_BYTES_RETAINED_MAX {
            self.output = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Whether `poll_read` has room to read into: free space in the buffer, or an incomplete
    /// request at its start that the buffer may grow for (up to its bound). Requests that
    /// cannot start yet never make it grow, so a pipelining client costs no more than one
    /// buffer of its size.
    fn read_buffer_has_room(&self) -> bool {
        self.filled < self.read_buffer.len()
            || (self.awaiting_request_bytes && self.read_buffer.len() < self.read_buffer_bytes_max)
    }

    /// Reads into the free part of the buffer, growing it first when `read_buffer_has_room`
    /// allows that.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.filled == self.read_buffer.len() {
            let grown = (self.read_buffer.len() * 2).min(self.read_buffer_bytes_max);
            if grown == self.read_buffer.len() {
                // Never read into an empty slice, which would look like EOF.
                return Poll::Pending;
            }
            self.read_buffer.resize(grown, 0);
        }
        let result = Pin::new(&mut self.stream).poll_read(cx, &mut self.read_buffer[self.filled..]);
        if let Poll::Ready(Ok(bytes)) = result {
            self.filled += bytes;
        }
        result
    }

    fn poll_idle_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = Duration::from_millis(self.limits.idle_connection_timeout_ms);
        self.idle_deadline.poll(cx, timeout)
    }

    fn poll_write_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = Duration::from_millis(self.limits.write_timeout_ms);
        self.write_deadline.poll(cx, timeout)
    }

    /// Ready when the client has closed or reset the connection. For a loop that cannot read:
    /// asks the kernel now, then again every `HANGUP_CHECK_INTERVAL` while it still cannot.
    fn poll_hangup(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if peer_hung_up(&self.stream) {
            return Poll::Ready(());
        }
        let timer = self
            .hangup_timer
            .get_or_insert_with(|| Timer::new(HANGUP_CHECK_INTERVAL));
        if Pin::new(&mut *timer).poll(cx).is_ready() {
            // Checked just above; wake again after the next interval.
            timer.reset(HANGUP_CHECK_INTERVAL);
            if Pin::new(timer).poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }

    /// Shuts the write side, then drains what the client still sends for a bounded time, so
    /// that closing with unread input does not reset the connection before the client has read
    /// the error response.
    async fn linger(&mut self) {
        let timer = Timer::new(LINGER_DURATION);
        linger(
            &mut self.stream,
            &mut self.read_buffer,
            LINGER_BYTES_MAX,
            timer,
        )
        .await;
    }
}

/// A timeout that activity pushes back: the timer is made on the first wait and re-armed only
/// when polled after `push_back`, so activity costs a flag, not a timer reset.
struct Deadline {
    /// Created on the first wait.
    timer: Option<Timer>,
    /// Activity since the timer was last armed: it must be re-armed before waiting.
    stale: bool,
}

impl Default for Deadline {
    fn default() -> Deadline {
        Deadline {
            timer: None,
            stale: true,
        }
    }
}

impl Deadline {
    fn push_back(&mut self) {
        self.stale = true;
    }

    /// Ready once `timeout` passed since the last activity.
    fn poll(&mut self, cx: &mut Context<'_>, timeout: Duration) -> Poll<()> {
        let timer = self.timer.get_or_insert_with(|| Timer::new(timeout));
        if std::mem::take(&mut self.stale) {
            timer.reset(timeout);
        }
        Pin::new(timer).poll(cx).map(|_| ())
    }
}

/// Shuts the write side of `stream`, then reads (into `scratch`) and drops what the peer still
/// sends, until its FIN, `bytes_max` bytes, or `timer`: closing a socket with unread input
/// resets the connection, which can destroy the last thing written before the peer reads it.
pub(crate) async fn linger(
    stream: &mut TcpStream,
    scratch: &mut [u8],
    bytes_max: usize,
    timer: Timer,
) {
    if stream.shutdown(std::net::Shutdown::Write).await.is_err() {
        return;
    }
    let drain = async {
        let mut drained = 0;
        while drained < bytes_max {
            match stream.read(scratch).await {
                Ok(0) | Err(_) => break,
                Ok(bytes) => drained += bytes,
            }
        }
    };
    futures_lite::future::or(drain, async {
        timer.await;
    })
    .await;
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
