//! Loopback tests: a glommio server runs the real handshake and socket drivers; clients are
//! plain `std::net::TcpStream`s on another thread writing raw, masked frames.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::SocketAddr;

use futures_lite::AsyncReadExt;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

use super::*;
use crate::config::HttpLimits;
use crate::http::{encode_response, parse_request};
use crate::websocket::{
    accept_key, encode_frame, validate_upgrade, AutoResponse, CoreSendBudget, EventQueue,
    SendError, SocketId, SocketIds, SocketSet, WebSocketLimits,
};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const MASK: [u8; 4] = [1, 2, 3, 4];

/// A raw WebSocket client.
struct Client {
    stream: std::net::TcpStream,
    decoder: Decoder,
    /// Bytes read and not yet decoded.
    buffer: Vec<u8>,
}

impl Client {
    /// Connects and upgrades, sending `first` in the same write as the request, so the server
    /// must decode frames the HTTP layer already read.
    fn connect(address: SocketAddr, first: &[u8]) -> Client {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        // A failing test must not hang: no read waits longer than this.
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut request = format!(
            "GET /websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        )
        .into_bytes();
        request.extend_from_slice(first);
        stream.write_all(&request).expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("ascii");
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains(&format!("Sec-WebSocket-Accept: {}", accept_key(KEY))));
        Client {
            stream,
            decoder: Decoder::new(Role::Client, 1 << 24, 1 << 24),
            buffer: Vec::new(),
        }
    }

    fn send(&mut self, opcode: Opcode, fin: bool, payload: &[u8]) {
        self.stream
            .write_all(&frame(opcode, fin, payload))
            .expect("send");
    }

    /// The next message or control frame; `None` at EOF (or a reset).
    fn next(&mut self) -> Option<Incoming> {
        loop {
            let decoded = self
                .decoder
                .decode(&self.buffer)
                .expect("server frames are valid");
            self.buffer.drain(..decoded.consumed);
            if decoded.item.is_some() {
                return decoded.item;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
            }
        }
    }

    fn expect_close(&mut self, code: CloseCode) {
        match self.next() {
            Some(Incoming::Close(Some(close))) => assert_eq!(close.code, code, "{close:?}"),
            other => panic!("expected close {code}, got {other:?}"),
        }
    }

    fn expect_eof(&mut self) {
        assert_eq!(self.next(), None);
    }
}

/// A masked client frame.
fn frame(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, opcode, fin, payload, Some(MASK));
    out
}

fn close_payload(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut payload = code.0.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// What the server application saw, for the test to check.
#[derive(Default)]
struct Seen {
    events: Vec<(SocketId, SocketEvent)>,
    /// From the `flood` command: messages accepted before the queue refused one, and the send
    /// buffer's heap bytes at that moment.
    flood: Option<(usize, usize)>,
}

/// Serves `clients` WebSockets with a small application reacting to text commands, while
/// `client` runs on its own thread; returns what the application saw once every socket ended.
/// The client also gets each socket's terminal event as the application sees it.
fn serve<F>(limits: WebSocketLimits, clients: usize, client: F) -> Seen
where
    F: FnOnce(SocketAddr, std::sync::mpsc::Receiver<SocketEvent>) + Send + 'static,
{
    serve_with_queue(limits, clients, 4, client)
}

/// `serve` with an event queue of `queue_capacity` events.
fn serve_with_queue<F>(
    limits: WebSocketLimits,
    clients: usize,
    queue_capacity: usize,
    client: F,
) -> Seen
where
    F: FnOnce(SocketAddr, std::sync::mpsc::Receiver<SocketEvent>) + Send + 'static,
{
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .ring_depth(64)
        .make()
        .expect("executor");
    let (address_sender, address_receiver) = std::sync::mpsc::channel();
    let (ended_sender, ended_receiver) = std::sync::mpsc::channel();
    let client_thread = std::thread::spawn(move || {
        let address = address_receiver.recv().expect("address");
        client(address, ended_receiver);
    });
    let seen = executor.run(async move {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        address_sender
            .send(listener.local_addr().expect("address"))
            .expect("send address");
        let budget = Rc::new(CoreSendBudget::new(limits.send_queue_bytes_per_core_max));
        let limits = Rc::new(limits);
        let queue = Rc::new(EventQueue::new(queue_capacity));
        let set = Rc::new(RefCell::new(SocketSet::new(limits.sockets_per_object_max)));
        let acceptor = {
            let (queue, set, limits) = (queue.clone(), set.clone(), limits.clone());
            let budget = budget.clone();
            glommio::spawn_local(async move {
                let ids = SocketIds::default();
                for index in 0..clients {
                    let mut stream = listener.accept().await.expect("accept");
                    let received = upgrade(&mut stream).await;
                    let tags = vec![format!("client-{index}"), "everyone".into()];
                    let handle =
                        SocketHandle::new(ids.next_id(), tags, limits.clone(), budget.clone())
                            .expect("tags within bounds");
                    set.borrow_mut().insert(handle.clone()).expect("room");
                    let sink: Rc<dyn EventSink> = queue.clone();
                    glommio::spawn_local(serve_socket(stream, handle, sink, received)).detach();
                }
            })
        };
        let mut seen = Seen::default();
        let mut ended = 0;
        while ended < clients {
            let (id, event) = queue.next().await;
            let Some(socket) = set.borrow().get(id).cloned() else {
                panic!("event for unknown socket {id:?}");
            };
            if event.is_terminal() {
                ended += 1;
                // The client may have finished already; then nobody listens.
                let _ = ended_sender.send(event.clone());
                set.borrow_mut().remove(id);
            } else if let SocketEvent::Message(message) = &event {
                react(&socket, &set, message, &mut seen).await;
            }
            seen.events.push((id, event));
        }
        acceptor.await;
        seen
    });
    client_thread.join().expect("client thread");
    seen
}

/// Reads the upgrade request, answers 101, returns the bytes that followed the request.
async fn upgrade(stream: &mut glommio::net::TcpStream) -> Vec<u8> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).await.expect("read");
        assert!(read > 0, "client left during the handshake");
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(parsed) = parse_request(&buffer, &HttpLimits::default()).expect("valid") {
            let upgrade = validate_upgrade(&parsed.request).expect("upgrade");
            let mut out = Vec::new();
            encode_response(&upgrade.response(), false, true, &mut out);
            futures_lite::AsyncWriteExt::write_all(stream, &out)
                .await
                .expect("write");
            return buffer.split_off(parsed.consumed);
        }
    }
}

/// The application: `close` closes with 4000; `flood` sends until the queue refuses;
/// `broadcast X` sends X to every socket; `auto` installs `ping` → `pong`; `attach X` / `attached?`
/// store and read the attachment; anything else is echoed.
async fn react(
    socket: &SocketHandle,
    set: &Rc<RefCell<SocketSet>>,
    message: &Message,
    seen: &mut Seen,
) {
    let text = match message {
        Message::Binary(bytes) => {
            // The client may have sent its close frame right behind this message; the close was
            // then answered before this event was handled, and the echo is refused.
            match socket.send_binary(bytes) {
                Ok(()) | Err(SendError::Closed) => return,
                Err(error) => panic!("echo: {error}"),
            }
        }
        Message::Text(text) => text.as_str(),
    };
    if text == "close" {
        socket.close(CloseCode(4000), "bye").expect("close");
    } else if text == "flood" {
        let payload = "x".repeat(4096);
        let mut sent = 0;
        // Far more than any kernel buffers: the queue must refuse before the end.
        while sent < 50_000 {
            if let Err(error) = socket.send_text(&payload) {
                assert!(matches!(error, SendError::QueueFull { .. }), "{error}");
                seen.flood = Some((sent, socket.send_buffer_bytes()));
                break;
            }
            sent += 1;
            if sent % 4 == 0 {
                // Let the driver write, so what is refused is what the client did not read.
                futures_lite::future::yield_now().await;
            }
        }
    } else if let Some(rest) = text.strip_prefix("broadcast ") {
        for other in set.borrow().list(Some("everyone")) {
            other.send_text(rest).expect("broadcast");
        }
    } else if text == "auto" {
        set.borrow_mut().set_auto_response(Some(AutoResponse {
            request: "ping".into(),
            response: "pong".into(),
        }));
        socket.send_text("auto on").expect("reply");
    } else if let Some(rest) = text.strip_prefix("attach ") {
        socket.set_attachment(Some(rest.as_bytes())).expect("small");
    } else if text == "attached?" {
        let attachment = socket.attachment().unwrap_or_default();
        socket
            .send_text(&String::from_utf8_lossy(&attachment))
            .expect("reply");
    } else {
        socket.send_text(text).expect("echo");
    }
}

fn closed(code: CloseCode, reason: &str, clean: bool) -> SocketEvent {
    SocketEvent::Closed {
        code,
        reason: reason.into(),
        clean,
    }
}

fn text(text: &str) -> SocketEvent {
    SocketEvent::Message(Message::Text(text.into()))
}

fn events(seen: &Seen) -> Vec<SocketEvent> {
    seen.events.iter().map(|(_, event)| event.clone()).collect()
}

#[test]
fn fragments_pings_and_a_client_close_in_one_conversation() {
    let seen = serve(WebSocketLimits::default(), 1, |address, _| {
        // The first fragment travels with the upgrade request.
        let mut client = Client::connect(address, &frame(Opcode::Text, false, "Hé".as_bytes()));
        client.send(Opcode::Ping, true, b"are you there");
        client.send(Opcode::Continuation, false, b"ll");
        client.send(Opcode::Continuation, true, b"o");
        assert_eq!(
            client.next(),
            Some(Incoming::Pong(b"are you there".to_vec()))
        );
        assert_eq!(client.next(), Some(Incoming::Text("Héllo".into())));
        client.send(Opcode::Binary, true, &[0, 255, 7]);
        assert_eq!(client.next(), Some(Incoming::Binary(vec![0, 255, 7])));
        client.send(
            Opcode::Close,
            true,
            &close_payload(CloseCode::NORMAL, "done"),
        );
        client.expect_close(CloseCode::NORMAL);
        client.expect_eof();
    });
    assert_eq!(
        events(&seen),
        vec![
            text("Héllo"),
            SocketEvent::Message(Message::Binary(vec![0, 255, 7])),
            closed(CloseCode::NORMAL, "done", true),
        ]
    );
}

#[test]
fn a_server_close_waits_for_the_client_answer() {
    let seen = serve(WebSocketLimits::default(), 1, |address, _| {
        let mut client = Client::connect(address, &frame(Opcode::Text, true, b"close"));
        match client.next() {
            Some(Incoming::Close(Some(close))) => {
                assert_eq!(close, CloseFrame::new(CloseCode(4000), "bye"));
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
        // Messages after the server's close frame are dropped, not delivered.
        client.send(Opcode::Text, true, b"too late");
        client.send(Opcode::Close, true, &close_payload(CloseCode(4000), ""));
        client.expect_eof();
    });
    assert_eq!(
        events(&seen),
        vec![text("close"), closed(CloseCode(4000), "", true)]
    );
}

#[test]
fn protocol_violations_close_with_their_codes() {
    let mut unmasked = Vec::new();
    encode_frame(&mut unmasked, Opcode::Text, true, b"hi", None);
    let mut oversized = frame(Opcode::Binary, true, &[0; 2048]);
    oversized.truncate(100);
    let cases = [
        (
            frame(Opcode::Text, true, &[0xce, 0xba, 0xff]),
            CloseCode::INVALID_PAYLOAD,
        ),
        (unmasked, CloseCode::PROTOCOL_ERROR),
        (oversized, CloseCode::MESSAGE_TOO_BIG),
        (frame(Opcode::Ping, false, b""), CloseCode::PROTOCOL_ERROR),
        (
            frame(Opcode::Continuation, true, b""),
            CloseCode::PROTOCOL_ERROR,
        ),
    ];
    for (wire, code) in cases {
        let limits = WebSocketLimits {
            frame_bytes_max: 1024,
            ..WebSocketLimits::default()
        };
        let seen = serve(limits, 1, move |address, _| {
            let mut client = Client::connect(address, b"");
            client.send(Opcode::Text, true, b"first");
            assert_eq!(client.next(), Some(Incoming::Text("first".into())));
            client.stream.write_all(&wire).expect("write");
            client.expect_close(code);
            client.expect_eof();
        });
        let events = events(&seen);
        assert_eq!(events.len(), 2, "{events:?}");
        match &events[1] {
            SocketEvent::Failed(SocketError::Protocol(error)) => {
                assert_eq!(error.close_code(), code)
            }
            other => panic!("expected a protocol failure, got {other:?}"),
        }
    }
}

#[test]
fn an_abrupt_disconnect_is_reported_as_1006() {
    let seen = serve(WebSocketLimits::default(), 1, |address, _| {
        let mut client = Client::connect(address, b"");
        client.send(Opcode::Text, true, b"hello");
        assert_eq!(client.next(), Some(Incoming::Text("hello".into())));
        // Half a frame, then gone.
        client
            .stream
            .write_all(&frame(Opcode::Text, true, b"never finished")[..5])
            .expect("write");
    });
    assert_eq!(
        events(&seen),
        vec![text("hello"), closed(CloseCode::ABNORMAL, "", false)]
    );
}

#[test]
fn a_client_that_stops_reading_is_closed_with_bounded_memory() {
    const QUEUE_BYTES_MAX: usize = 256 * 1024;
    let limits = WebSocketLimits {
        send_queue_bytes_max: QUEUE_BYTES_MAX,
        close_timeout_ms: 300,
        ..WebSocketLimits::default()
    };
    let seen = serve(limits, 1, |address, ended| {
        let mut client = Client::connect(address, &frame(Opcode::Text, true, b"flood"));
        // Read nothing until the server gave up on this client.
        let terminal = ended.recv().expect("terminal event");
        assert!(matches!(
            terminal,
            SocketEvent::Failed(SocketError::SendQueueFull { .. })
        ));
        // What the kernel buffers hold still arrives; the close frame only if it got out
        // before the close timeout (the client was not reading, so usually not).
        let mut messages = 0;
        loop {
            match client.next() {
                Some(Incoming::Text(text)) => {
                    assert_eq!(text.len(), 4096);
                    messages += 1;
                }
                Some(Incoming::Close(Some(close))) => {
                    assert_eq!(close.code, CloseCode::POLICY_VIOLATION);
                    client.expect_eof();
                    break;
                }
                None => break,
                other => panic!("after {messages} messages: {other:?}"),
            }
        }
        assert!(messages > 0);
    });
    let (sent, buffer_bytes) = seen.flood.expect("the queue refused a message");
    assert!(sent < 50_000);
    // What stays allocated after the overflow: at most the frame partly on the wire and the
    // close frame.
    assert!(buffer_bytes <= 2 * 4096 + 256, "{buffer_bytes} bytes kept");
    match &events(&seen)[1] {
        SocketEvent::Failed(SocketError::SendQueueFull { bytes, .. }) => {
            assert!(*bytes <= QUEUE_BYTES_MAX)
        }
        other => panic!("expected a send queue failure, got {other:?}"),
    }
}

#[test]
fn sockets_share_a_sink_and_tags_select_them() {
    let seen = serve(WebSocketLimits::default(), 2, |address, _| {
        let mut first = Client::connect(address, b"");
        let mut second = Client::connect(address, b"");
        second.send(Opcode::Text, true, b"broadcast hi all");
        assert_eq!(first.next(), Some(Incoming::Text("hi all".into())));
        assert_eq!(second.next(), Some(Incoming::Text("hi all".into())));
        first.send(Opcode::Text, true, b"attach {\"name\":\"ada\"}");
        first.send(Opcode::Text, true, b"attached?");
        assert_eq!(
            first.next(),
            Some(Incoming::Text("{\"name\":\"ada\"}".into()))
        );
        second.send(Opcode::Text, true, b"attached?");
        assert_eq!(second.next(), Some(Incoming::Text(String::new())));
        for client in [&mut first, &mut second] {
            client.send(Opcode::Close, true, b"");
            assert_eq!(client.next(), Some(Incoming::Close(None)));
            client.expect_eof();
        }
    });
    let ids: std::collections::BTreeSet<SocketId> = seen.events.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 2);
    let closes = events(&seen)
        .into_iter()
        .filter(|event| *event == closed(CloseCode::NO_STATUS, "", true))
        .count();
    assert_eq!(closes, 2);
}

#[test]
fn the_auto_response_is_answered_without_an_event() {
    let seen = serve(WebSocketLimits::default(), 1, |address, _| {
        let mut client = Client::connect(address, b"");
        client.send(Opcode::Text, true, b"auto");
        assert_eq!(client.next(), Some(Incoming::Text("auto on".into())));
        client.send(Opcode::Text, true, b"ping");
        client.send(Opcode::Text, true, b"ping");
        client.send(Opcode::Text, true, b"pingx");
        assert_eq!(client.next(), Some(Incoming::Text("pong".into())));
        assert_eq!(client.next(), Some(Incoming::Text("pong".into())));
        assert_eq!(client.next(), Some(Incoming::Text("pingx".into())));
        client.send(
            Opcode::Close,
            true,
            &close_payload(CloseCode::GOING_AWAY, ""),
        );
        client.expect_close(CloseCode::GOING_AWAY);
    });
    assert_eq!(
        events(&seen),
        vec![
            text("auto"),
            text("pingx"),
            closed(CloseCode::GOING_AWAY, "", true)
        ]
    );
}

#[test]
fn a_full_sink_holds_messages_back_without_losing_or_reordering_them() {
    const MESSAGES: usize = 300;
    // One event at a time: almost every message is refused once and offered again.
    let seen = serve_with_queue(WebSocketLimits::default(), 1, 1, |address, _| {
        let mut burst = Vec::new();
        for index in 0..MESSAGES {
            burst.extend(frame(Opcode::Binary, true, &[index as u8]));
        }
        burst.extend(frame(Opcode::Close, true, b""));
        let mut client = Client::connect(address, &burst);
        // Echoes in order, until the echo of the close frame; the queue holds one event, so at
        // most the last message was still unhandled when the close was answered.
        let mut echoed = 0;
        loop {
            match client.next() {
                Some(Incoming::Binary(payload)) => {
                    assert_eq!(payload, vec![echoed as u8]);
                    echoed += 1;
                }
                Some(Incoming::Close(None)) => break,
                other => panic!("after {echoed} echoes: {other:?}"),
            }
        }
        assert!(echoed >= MESSAGES - 1, "{echoed} echoes");
        client.expect_eof();
    });
    let events = events(&seen);
    assert_eq!(events.len(), MESSAGES + 1);
    for (index, event) in events[..MESSAGES].iter().enumerate() {
        assert_eq!(
            *event,
            SocketEvent::Message(Message::Binary(vec![index as u8]))
        );
    }
}

/// What one open socket's task holds, whatever it is doing: the future of `serve_socket`.
/// Every idle socket of a hibernated object costs this much, so a buffer that slips into the
/// future (an array across an `.await`) shows here rather than only in the idle-socket bench.
/// 936 bytes in a release build with Rust 1.95; the bound leaves room for another compiler or
/// a debug build, not for a 1 KiB buffer.
const SOCKET_TASK_BYTES_MAX: usize = 1536;

#[test]
fn a_socket_task_stays_small() {
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .ring_depth(64)
        .make()
        .expect("executor");
    executor.run(async {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let client = std::thread::spawn(move || std::net::TcpStream::connect(address));
        let stream = listener.accept().await.expect("accept");
        let limits = Rc::new(WebSocketLimits::default());
        let budget = Rc::new(CoreSendBudget::new(limits.send_queue_bytes_per_core_max));
        let handle = SocketHandle::new(SocketIds::default().next_id(), Vec::new(), limits, budget)
            .expect("no tags");
        let sink: Rc<dyn EventSink> = Rc::new(EventQueue::new(4));
        let task = serve_socket(stream, handle, sink, Vec::new());
        let bytes = std::mem::size_of_val(&task);
        assert!(
            bytes <= SOCKET_TASK_BYTES_MAX,
            "a socket's task holds {bytes} bytes (at most {SOCKET_TASK_BYTES_MAX})"
        );
        drop(task);
        drop(client.join().expect("client thread"));
    });
}

#[test]
fn the_core_budget_closes_the_socket_furthest_behind_first() {
    let limits = Rc::new(WebSocketLimits::default());
    let budget = Rc::new(CoreSendBudget::new(10_000));
    let ids = SocketIds::default();
    let open = |budget: &Rc<CoreSendBudget>| {
        SocketHandle::new(ids.next_id(), Vec::new(), limits.clone(), budget.clone())
            .expect("no tags")
    };
    let (slow, fast) = (open(&budget), open(&budget));
    let payload = "x".repeat(1000);
    for _ in 0..9 {
        slow.send_text(&payload).expect("within the budget");
    }
    assert_eq!(budget.queued_bytes(), slow.queued_bytes());
    // The next message does not fit: the socket furthest behind is closed to make room, not
    // the one the message is for.
    fast.send_text(&payload).expect("room made");
    assert!(!slow.is_open() && fast.is_open());
    assert_eq!(
        budget.queued_bytes(),
        slow.queued_bytes() + fast.queued_bytes()
    );
    assert!(budget.queued_bytes() <= 10_000);
    // With nobody further behind, the socket sent to is the one closed.
    let lone_budget = Rc::new(CoreSendBudget::new(10_000));
    let lone = open(&lone_budget);
    let refused = (0..20).find_map(|_| lone.send_text(&payload).err());
    assert!(matches!(refused, Some(SendError::QueueFull { .. })));
    assert!(!lone.is_open());
    // Sockets that go away give their bytes back.
    drop((slow, fast, lone));
    assert_eq!((budget.queued_bytes(), lone_budget.queued_bytes()), (0, 0));
}
