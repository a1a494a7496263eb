//! One connection of the load: a writer that sends requests (on schedule or as fast as the
//! window allows) and a reader that times the responses, on one keep-alive socket; a broken
//! socket is replaced and the run goes on.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use super::client::{ClientError, ResponseReader};
use super::schedule::{self, Timetable};
use super::shared::{Clock, Outcome, Shared};

/// Consecutive failed connects after which a connection gives up.
const CONNECT_ATTEMPTS_MAX: u32 = 20;
/// Pause between two connects of one connection, so a refusing server is not hammered.
const RECONNECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// What a connection keeps across its sockets.
struct ConnectionState {
    /// This connection's index among all the run's connections.
    index: u64,
    /// Requests this connection has sent (or tried to); the next one's sequence number.
    sequence: u64,
    /// The open-loop timetable, None in closed loop.
    timetable: Option<Timetable>,
    /// Set when the run is over for this connection (time is up or the budget is spent).
    finished: bool,
}

/// A connection's byte stream: plain TCP, or TLS over it.
pub trait Duplex: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin {}

impl<T: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin> Duplex for T {}

/// Connects to the target (and for https:// runs the TLS handshake) within the timeout; a
/// failure is counted and None returned.
pub async fn connect(shared: &Shared) -> Option<Box<dyn Duplex>> {
    let connected = async {
        let stream = TcpStream::connect_timeout(shared.addr, shared.plan.timeout)
            .await
            .ok()?;
        // Requests are small and latency-bound: never let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        match &shared.tls {
            None => Some(Box::new(stream) as Box<dyn Duplex>),
            Some(tls) => {
                let handshake = tls.connector.connect(tls.name.clone(), stream);
                let secured = futures_lite::future::or(
                    async {
                        handshake
                            .await
                            .map_err(|error| tracing::debug!(%error, "TLS handshake failed"))
                            .ok()
                    },
                    async {
                        glommio::timer::sleep(shared.plan.timeout).await;
                        None
                    },
                )
                .await?;
                Some(Box::new(secured) as Box<dyn Duplex>)
            }
        }
    };
    let stream = connected.await;
    if stream.is_none() {
        shared.record(Instant::now(), Instant::now(), Outcome::ConnectFailed);
    }
    stream
}

/// Runs connection `index` from its first socket (`first`, None if that connect failed) until
/// the run is over for it.
pub async fn run(shared: Rc<Shared>, clock: Clock, index: u64, first: Option<Box<dyn Duplex>>) {
    let timetable = shared.plan.rate.map(|rate| Timetable {
        start: clock.start,
        rate,
        connections: shared.plan.connections as u64,
        index,
    });
    let mut state = ConnectionState {
        index,
        sequence: 0,
        timetable,
        finished: false,
    };
    let mut stream = first;
    let mut failed_connects = u32::from(stream.is_none());
    // Each pass either sends at least one request (which spends budget or time) or counts a
    // failed connect, and both are bounded, so this loop ends.
    loop {
        if let Some(socket) = stream.take() {
            failed_connects = 0;
            session(&shared, &clock, &mut state, socket).await;
        }
        if state.finished || clock.is_over(&shared, Instant::now()) {
            return;
        }
        if failed_connects >= CONNECT_ATTEMPTS_MAX {
            return;
        }
        if failed_connects > 0 {
            glommio::timer::sleep(RECONNECT_PAUSE).await;
        }
        stream = connect(&shared).await;
        if stream.is_none() {
            failed_connects += 1;
        }
    }
}

/// Sends and reads on one socket until the run is over for this connection (state.finished) or
/// the socket breaks.
async fn session(
    shared: &Shared,
    clock: &Clock,
    state: &mut ConnectionState,
    socket: Box<dyn Duplex>,
) {
    let pipeline = shared.plan.pipeline;
    let (mut read_half, mut write_half) = futures_lite::io::split(socket);
    // Requests sent and not answered yet, at most `pipeline`.
    let window = Semaphore::new(pipeline as u64);
    let broken = Cell::new(false);
    let (sender, receiver) = local_channel::new_bounded::<Instant>(pipeline);
    let break_session = || {
        broken.set(true);
        window.close();
    };

    let writer = async {
        let mut buffer = Vec::with_capacity(256 * pipeline);
        let mut starts = Vec::with_capacity(pipeline);
        // Each pass sends at least one request or ends the session.
        while !broken.get() {
            if schedule::due(state.timetable, state.sequence, clock.end)
                .await
                .is_err()
            {
                state.finished = true;
                break;
            }
            if window.acquire(1).await.is_err() {
                break;
            }
            buffer.clear();
            starts.clear();
            // Closed loop fills the window in one write; open loop sends at once every request
            // that is already due (after a stall or a reconnect).
            while starts.len() < pipeline {
                if !starts.is_empty() && !matches!(window.try_acquire(1), Ok(true)) {
                    break;
                }
                let now = Instant::now();
                let start = match state.timetable {
                    Some(timetable) => timetable.intended(state.sequence),
                    None => now,
                };
                if start > now || !clock.claim(shared, start) {
                    window.signal(1);
                    if start <= now {
                        state.finished = true;
                    }
                    break;
                }
                let number =
                    Timetable::number(shared.plan.connections as u64, state.index, state.sequence);
                shared
                    .encoder
                    .encode(&shared.plan.scenario, number, &mut buffer);
                state.sequence += 1;
                starts.push(start);
            }
            for start in &starts {
                // The channel holds `pipeline` and the window keeps fewer in flight.
                if sender.try_send(*start).is_err() {
                    break_session();
                }
            }
            if starts.is_empty() {
                if state.finished {
                    break;
                }
                continue;
            }
            if write_half.write_all(&buffer).await.is_err() {
                break_session();
            }
        }
        drop(sender);
    };

    let reader = async {
        let mut responses = ResponseReader::default();
        while let Some(start) = receiver.recv().await {
            if broken.get() {
                // The socket is gone: this request will never be answered.
                shared.record(start, Instant::now(), Outcome::Closed);
                continue;
            }
            let result = glommio::timer::timeout(shared.plan.timeout, async {
                Ok(responses.next(&mut read_half).await)
            })
            .await;
            let now = Instant::now();
            let outcome = match result {
                Ok(Ok(head)) => {
                    window.signal(1);
                    if head.close {
                        break_session();
                    }
                    Outcome::Status(head.status)
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "response failed");
                    match error {
                        ClientError::Closed => Outcome::Closed,
                        ClientError::Io(_) => Outcome::Io,
                        ClientError::Protocol(_) => Outcome::Protocol,
                    }
                }
                Err(_) => Outcome::Timeout,
            };
            if !matches!(outcome, Outcome::Status(_)) {
                break_session();
            }
            shared.record(start, now, outcome);
        }
    };

    futures_lite::future::zip(writer, reader).await;
}
