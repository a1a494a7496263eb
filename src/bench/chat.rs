//! The `chat-fanout` scenario: each connection is a WebSocket member of a `chat` room.
//!
//! Member `i` joins room `r{i mod rooms}` as `m{i}`; member `i < rooms` is its room's sender. A
//! sender sends `{"type":"message","text":"{seq} {micros}"}`, `micros` being the message's send
//! time (its intended one in open loop) counted from the run's start. Every member, the sender
//! too, reads every message of its room and records one delivery, timed from that send time to
//! its reading. Closed loop: a sender keeps at most `--pipeline` messages that have not come back
//! to it yet; open loop: `--rate` messages per second over all senders. When it stops, a sender
//! sends `end {sent}`; a member that reads it counts the messages of its room it never read as
//! lost, and stops. A member that reads nothing for its idle limit (`--timeout`, plus twice the
//! gap between two of its sender's messages in open loop) counts a timeout and stops. A member
//! that fails (closed by the server, a timeout, a socket error) counts one error, and once the
//! run is over every message its room's sender sent that it did not read is lost
//! (`lost_by_failed_members`). Pings are not expected (the server sends none) and are ignored.

use std::cell::Cell;
use std::io::Write;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use super::args::Stop;
use super::schedule::{self, share, Budget, Timetable};
use super::shared::{Clock, Outcome, Shared};
use crate::websocket::{encode_close, encode_frame, CloseCode, CloseFrame, Decoded, Decoder};
use crate::websocket::{Incoming, Opcode, Role};

/// A handshake answer larger than this is a failed upgrade.
const HANDSHAKE_BYTES_MAX: usize = 16 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Largest frame or message a member accepts (the room's messages are about 100 bytes).
const MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Any fixed key does: the bench does not check the server's accept key.
const WEBSOCKET_KEY: &str = "c3RlYWQtYmVuY2gtbWVtYg==";

/// The longest a member waits for its next message, whatever `--rate` says.
const IDLE_MAX: Duration = Duration::from_secs(86_400);

/// Set once a failed join was logged, so that a server refusing every member logs one line.
static JOIN_FAILURE_SHOWN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A member whose upgrade succeeded, with the bytes read past the handshake's answer.
pub struct Joined {
    stream: TcpStream,
    unread: Vec<u8>,
}

/// The room of member `index`, and whether it is that room's sender.
pub fn room_of(index: u64, rooms: u64) -> (u64, bool) {
    let rooms = rooms.max(1);
    (index % rooms, index < rooms)
}

/// Connects member `index` and joins its room; a failure is counted as a failed connect (it
/// happens before the run's clock starts) and logged with its reason.
pub async fn join(shared: &Shared, index: u64, rooms: u64) -> Option<Joined> {
    let timeout = shared.plan.timeout;
    let joined =
        glommio::timer::timeout(timeout, async { Ok(try_join(shared, index, rooms).await) })
            .await
            .unwrap_or_else(|_| Err(format!("not joined within {timeout:?}")));
    match joined {
        Ok(joined) => Some(joined),
        Err(reason) => {
            // One line says why; the count of failed members is in the summary.
            if !JOIN_FAILURE_SHOWN.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(member = index, %reason, "chat-fanout: a member could not join");
            }
            shared.record(Instant::now(), Instant::now(), Outcome::ConnectFailed);
            None
        }
    }
}

async fn try_join(shared: &Shared, index: u64, rooms: u64) -> Result<Joined, String> {
    let timeout = shared.plan.timeout;
    let mut stream = TcpStream::connect_timeout(shared.addr, timeout)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let _ = stream.set_nodelay(true);
    let (room, _) = room_of(index, rooms);
    let mut request = Vec::with_capacity(256);
    let _ = write!(
        request,
        "GET {}/objects/chat/r{room}/websocket?name=m{index} HTTP/1.1\r\n",
        shared.encoder.prefix()
    );
    request.extend_from_slice(shared.encoder.headers());
    let _ = write!(
        request,
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WEBSOCKET_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let answer = read_answer(&mut stream, &request)
        .await
        .map_err(|error| format!("upgrade: {error}"))?;
    let (buffer, head_end) = answer;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&buffer[..head_end]) {
        Ok(httparse::Status::Complete(_)) if response.code == Some(101) => Ok(Joined {
            stream,
            unread: buffer[head_end..].to_vec(),
        }),
        Ok(_) => Err(format!(
            "the server answered {} instead of 101: {}",
            response.code.unwrap_or(0),
            String::from_utf8_lossy(&buffer[head_end..]).trim()
        )),
        Err(error) => Err(format!("not an HTTP answer: {error}")),
    }
}

/// Sends the upgrade request and reads the answer's head; the bytes read and where the head
/// ends.
async fn read_answer(stream: &mut TcpStream, request: &[u8]) -> std::io::Result<(Vec<u8>, usize)> {
    stream.write_all(request).await?;
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(&buffer) {
            return Ok((buffer, end));
        }
        if buffer.len() > HANDSHAKE_BYTES_MAX {
            return Err(std::io::Error::other("handshake answer too large"));
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// The end of the head (just past its blank line), if `bytes` holds all of it.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// What a member reads in its room's messages.
#[derive(Debug, PartialEq, Eq)]
enum Text {
    /// A message sent `micros` after the run's start.
    Message { micros: u64 },
    /// The sender stopped after `sent` messages.
    End { sent: u64 },
    /// Anything else the room sends (joins, leaves, errors): not counted.
    Other,
}

/// Reads the `text` field of a room message without building JSON values: the bench shares
/// the machine with the server, so reading a delivery must cost little.
fn parse_text(message: &str) -> Text {
    if !message.starts_with(r#"{"type":"message""#) {
        return Text::Other;
    }
    let Some(at) = message.find(r#""text":""#) else {
        return Text::Other;
    };
    let rest = &message[at + 8..];
    let text = &rest[..rest.find('"').unwrap_or(rest.len())];
    let mut words = text.split(' ');
    match (words.next(), words.next().map(str::parse::<u64>)) {
        (Some("end"), Some(Ok(sent))) => Text::End { sent },
        (Some(_), Some(Ok(micros))) => Text::Message { micros },
        _ => Text::Other,
    }
}

/// Appends one masked text frame carrying `text` as a room message.
fn encode_message(out: &mut Vec<u8>, text: std::fmt::Arguments<'_>, mask: [u8; 4]) {
    let mut payload = Vec::with_capacity(64);
    let _ = write!(payload, "{{\"type\":\"message\",\"text\":\"{text}\"}}");
    encode_frame(out, Opcode::Text, true, &payload, Some(mask));
}

/// A member's masks: any value will do, but each frame gets its own, as RFC 6455 asks.
fn next_mask(state: &mut u32) -> [u8; 4] {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    state.to_le_bytes()
}

/// Runs member `index` from its joined socket until its room's sender says it stopped (or
/// the socket fails).
pub async fn run(shared: &Shared, clock: Clock, index: u64, rooms: u64, joined: Joined) {
    let (room, sender) = room_of(index, rooms);
    let pipeline = shared.plan.pipeline;
    let timetable = shared.plan.rate.map(|rate| Timetable {
        start: clock.start,
        rate,
        connections: rooms,
        index: room,
    });
    // In open loop, one sender's messages are `rooms / rate` seconds apart.
    let gap = shared.plan.rate.map_or(Duration::ZERO, |rate| {
        Duration::try_from_secs_f64(2.0 * rooms as f64 / rate).unwrap_or(Duration::MAX)
    });
    let idle_max = shared.plan.timeout.saturating_add(gap).min(IDLE_MAX);
    // Each sender spends its own share of a `--requests` run, so that rooms of any size get
    // the same number of messages whatever the timing.
    let budget = Budget::new(match shared.plan.stop {
        Stop::Requests(total) => Some(if sender { share(total, rooms, room) } else { 0 }),
        Stop::Duration(_) => None,
    });
    let (mut read_half, mut write_half) = futures_lite::io::split(joined.stream);
    // Messages sent and not yet back to the sender, at most `pipeline`.
    let window = Semaphore::new(pipeline as u64);
    let broken = Cell::new(false);
    let mut mask_state = (index as u32).wrapping_mul(2_654_435_761) | 1;

    let writer = async {
        if !sender {
            return;
        }
        let mut frame = Vec::with_capacity(128);
        let mut sent = 0u64;
        while !broken.get() {
            let Ok(intended) = schedule::due(timetable, sent, clock.end).await else {
                break;
            };
            if window.acquire(1).await.is_err() {
                break;
            }
            let start = intended.unwrap_or_else(Instant::now);
            if !clock.claim_from(&budget, start) {
                break;
            }
            let micros = start.saturating_duration_since(clock.start).as_micros();
            frame.clear();
            encode_message(
                &mut frame,
                format_args!("{sent} {micros}"),
                next_mask(&mut mask_state),
            );
            if write_half.write_all(&frame).await.is_err() {
                broken.set(true);
                break;
            }
            shared.count_sent(start);
            sent += 1;
            if let Some(count) = shared.room_sent.get(room as usize) {
                count.store(sent, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if !broken.get() {
            frame.clear();
            encode_message(
                &mut frame,
                format_args!("end {sent}"),
                next_mask(&mut mask_state),
            );
            if write_half.write_all(&frame).await.is_err() {
                broken.set(true);
            }
        }
    };

    let reader = async {
        let mut decoder = Decoder::new(Role::Client, MESSAGE_BYTES_MAX, MESSAGE_BYTES_MAX);
        let mut buffer = joined.unread;
        let mut received = 0u64;
        loop {
            let mut start = 0;
            loop {
                let item = match decoder.decode(&buffer[start..]) {
                    Ok(Decoded { consumed, item }) => {
                        start += consumed;
                        item
                    }
                    Err(error) => {
                        tracing::debug!(%error, "chat-fanout: bad frame");
                        return Err((Outcome::Protocol, received));
                    }
                };
                match item {
                    None => break,
                    Some(Incoming::Text(text)) => match parse_text(&text) {
                        Text::Message { micros } => {
                            received += 1;
                            if sender {
                                window.signal(1);
                            }
                            let sent_at = clock.start + Duration::from_micros(micros);
                            shared.record(sent_at, Instant::now(), Outcome::Delivered);
                        }
                        Text::End { sent } => {
                            shared.record_lost(sent.saturating_sub(received));
                            return Ok(());
                        }
                        Text::Other => {}
                    },
                    Some(Incoming::Close(_)) => return Err((Outcome::Closed, received)),
                    Some(_) => {}
                }
            }
            buffer.drain(..start);
            let filled = buffer.len();
            buffer.resize(filled + READ_CHUNK_BYTES, 0);
            let read = glommio::timer::timeout(idle_max, async {
                Ok(read_half.read(&mut buffer[filled..]).await)
            })
            .await;
            match read {
                Ok(Ok(0)) => return Err((Outcome::Closed, received)),
                Ok(Ok(read)) => buffer.truncate(filled + read),
                Ok(Err(_)) => return Err((Outcome::Io, received)),
                Err(_) => return Err((Outcome::Timeout, received)),
            }
        }
    };

    let reader = async {
        let result = reader.await;
        if result.is_err() {
            // The sender must not wait for messages that will not come back.
            broken.set(true);
            window.close();
        }
        result
    };
    let ((), result) = futures_lite::future::zip(writer, reader).await;
    // A sender that stopped early leaves part of its share unsent.
    shared.stats.borrow_mut().unsent += budget.left();
    if let Err((outcome, received)) = result {
        // A failed member is an error whenever it fails (warm-up too), and what it missed is
        // counted once the run is over and its room's count is final.
        shared.record(clock.measure_start, Instant::now(), outcome);
        shared
            .stats
            .borrow_mut()
            .failed_members
            .push((room, received));
        return;
    }
    let mut close = Vec::new();
    let normal = CloseFrame::new(CloseCode(1000), "");
    encode_close(&mut close, Some(&normal), Some(next_mask(&mut mask_state)));
    let _ = write_half.write_all(&close).await;
}

/// The messages that failed members never read: for each (room, messages read), what the
/// room's sender sent in all less what the member read.
pub fn lost_by_failed_members(room_sent: &[u64], failed: &[(u64, u64)]) -> u64 {
    failed
        .iter()
        .map(|(room, received)| {
            let sent = room_sent.get(*room as usize).copied().unwrap_or(0);
            sent.saturating_sub(*received)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_member_lost_what_its_room_sent_after_it_stopped_reading() {
        let sent = [100, 40];
        assert_eq!(lost_by_failed_members(&sent, &[]), 0);
        assert_eq!(lost_by_failed_members(&sent, &[(0, 30)]), 70);
        assert_eq!(lost_by_failed_members(&sent, &[(0, 100), (1, 0)]), 40);
        // A member that read more than the count it saw (a race at the end) lost nothing.
        assert_eq!(lost_by_failed_members(&sent, &[(1, 41)]), 0);
        assert_eq!(lost_by_failed_members(&sent, &[(7, 0)]), 0);
    }

    #[test]
    fn members_spread_over_rooms_and_the_first_ones_send() {
        assert_eq!(room_of(0, 3), (0, true));
        assert_eq!(room_of(2, 3), (2, true));
        assert_eq!(room_of(3, 3), (0, false));
        assert_eq!(room_of(7, 3), (1, false));
    }

    #[test]
    fn room_texts_are_read_without_json_values() {
        let message = r#"{"type":"message","name":"m3","text":"12 3456","timestamp":17}"#;
        assert_eq!(parse_text(message), Text::Message { micros: 3456 });
        let end = r#"{"type":"message","name":"m0","text":"end 40","timestamp":17}"#;
        assert_eq!(parse_text(end), Text::End { sent: 40 });
        assert_eq!(
            parse_text(r#"{"type":"join","name":"m1","count":2}"#),
            Text::Other
        );
        assert_eq!(
            parse_text(r#"{"type":"message","name":"x","timestamp":1}"#),
            Text::Other
        );
        assert_eq!(
            parse_text(r#"{"type":"message","name":"x","text":"hi","timestamp":1}"#),
            Text::Other
        );
    }

    #[test]
    fn messages_are_masked_json_frames() {
        let mut frame = Vec::new();
        encode_message(&mut frame, format_args!("1 2"), [1, 2, 3, 4]);
        let mut decoder = Decoder::new(Role::Server, 1024, 1024);
        let decoded = decoder.decode(&frame).expect("frame");
        assert_eq!(decoded.consumed, frame.len());
        assert_eq!(
            decoded.item,
            Some(Incoming::Text(
                r#"{"type":"message","text":"1 2"}"#.to_string()
            ))
        );
    }
}
