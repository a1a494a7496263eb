//! The WebSocket object API through an embedded server with a class of the test's own: tags
//! and listing by tag, the attachment bound, the auto response (answered while the object is
//! evicted, and kept for sockets accepted after the last one closed), the per-object socket
//! bound, and a burst of messages to a slow object that must all be handled, none refused.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::ws::{Frame, WsClient};
use common::{wait_until, Client};
use stead::object::{SocketHandle, WebSocketMessage};
use stead::websocket::{AutoResponse, ATTACHMENT_BYTES_MAX};
use stead::{Config, DurableObject, ObjectContext, ObjectError, Request, Response, RunningServer};

const PATIENCE: Duration = Duration::from_secs(10);

/// Instances built and dropped, per test (each test uses its own `Probe::<N>`, since tests run
/// in parallel in one process).
static BUILT: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
static DROPPED: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// A class that shows what the object API does. `GET /ws?tags=a,b&attach=x` accepts a socket;
/// `GET /count` answers how many sockets the object has. Messages on a socket:
/// `count:TAG` (or `count:` for all), `attach:N` (set an N-byte attachment), `attachment`,
/// `slow:K` (wait 2 ms, then answer `done:K`); anything else is echoed as `echo:…`.
struct Probe<const N: usize> {
    /// The object's sockets.
    context: ObjectContext,
}

impl<const N: usize> DurableObject for Probe<N> {
    fn new(context: ObjectContext) -> Self {
        BUILT[N].fetch_add(1, Ordering::SeqCst);
        // As with the hosted API, the auto response is set by the constructor.
        context.set_websocket_auto_response(Some(AutoResponse {
            request: "ping".to_string(),
            response: "pong".to_string(),
        }));
        Probe { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        match request.path.as_str() {
            "/count" => Ok(Response::text(
                200,
                self.context.websockets(None).len().to_string(),
            )),
            "/ws" => {
                let tags = request.query_param("tags").unwrap_or_default();
                let tags: Vec<&str> = tags.split(',').filter(|tag| !tag.is_empty()).collect();
                let accepted = match self.context.accept_websocket(&request, &tags) {
                    Ok(accepted) => accepted,
                    Err(response) => return Ok(response),
                };
                if let Some(attachment) = request.query_param("attach") {
                    accepted
                        .socket
                        .set_attachment(Some(attachment.as_bytes()))
                        .map_err(|error| ObjectError::new(error.to_string()))?;
                }
                Ok(accepted.response)
            }
            _ => Ok(Response::not_found()),
        }
    }

    async fn websocket_message(
        &self,
        socket: SocketHandle,
        message: WebSocketMessage,
    ) -> Result<(), ObjectError> {
        let WebSocketMessage::Text(text) = message else {
            return Ok(());
        };
        let answer = if let Some(tag) = text.strip_prefix("count:") {
            let tag = (!tag.is_empty()).then_some(tag);
            format!("{}", self.context.websockets(tag).len())
        } else if let Some(bytes) = text.strip_prefix("attach:") {
            let bytes: usize = bytes.parse().map_err(|_| ObjectError::new("attach:N"))?;
            match socket.set_attachment(Some(&vec![b'x'; bytes])) {
                Ok(()) => format!("attached {bytes}"),
                Err(error) => format!("refused: {error}"),
            }
        } else if text == "attachment" {
            socket
                .attachment()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_else(|| "none".to_string())
        } else if let Some(index) = text.strip_prefix("slow:") {
            glommio::timer::sleep(Duration::from_millis(2)).await;
            format!("done:{index}")
        } else {
            format!("echo:{text}")
        };
        let _ = socket.send_text(&answer);
        Ok(())
    }
}

impl<const N: usize> Drop for Probe<N> {
    fn drop(&mut self) {
        DROPPED[N].fetch_add(1, Ordering::SeqCst);
    }
}

/// An embedded server on 127.0.0.1:0, one core, with `Probe::<N>` as class `probe`.
fn start<const N: usize>(dir: &std::path::Path, adjust: impl FnOnce(&mut Config)) -> RunningServer {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.to_path_buf(),
        cores: 1,
        ..Config::default()
    };
    adjust(&mut config);
    stead::Server::builder()
        .config(config)
        .class::<Probe<N>>("probe")
        .build()
        .start()
        .expect("start the server")
}

fn stop(server: RunningServer) {
    server.stop();
    server.wait().expect("clean shutdown");
}

/// Sends `text` and returns the text answer.
fn ask(socket: &mut WsClient, text: &str) -> String {
    socket.send_text(text);
    loop {
        match socket.next_frame() {
            Some(Frame::Text(answer)) => return answer,
            Some(Frame::Ping(_)) | Some(Frame::Pong(_)) => continue,
            other => panic!("expected an answer to {text:?}, got {other:?}"),
        }
    }
}

#[test]
fn sockets_are_listed_by_tag_and_attachments_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start::<0>(dir.path(), |config| {
        config.websocket.sockets_per_object_max = 3
    });
    let addr = server.local_addr();
    let _red = WsClient::connect(addr, "/objects/probe/tags/ws?tags=red");
    let _both = WsClient::connect(addr, "/objects/probe/tags/ws?tags=red,blue");
    let mut plain = WsClient::connect(addr, "/objects/probe/tags/ws?attach=first");
    assert_eq!(ask(&mut plain, "count:red"), "2");
    assert_eq!(ask(&mut plain, "count:blue"), "1");
    assert_eq!(ask(&mut plain, "count:green"), "0");
    assert_eq!(ask(&mut plain, "count:"), "3");

    // The per-object bound refuses a fourth socket with 503 and keeps the three.
    let (status, _) = WsClient::try_connect(addr, "/objects/probe/tags/ws");
    assert_eq!(status, 503);
    assert_eq!(ask(&mut plain, "count:"), "3");

    assert_eq!(ask(&mut plain, "attachment"), "first");
    let most = ATTACHMENT_BYTES_MAX;
    assert_eq!(
        ask(&mut plain, &format!("attach:{most}")),
        format!("attached {most}")
    );
    let refused = ask(&mut plain, &format!("attach:{}", most + 1));
    assert!(
        refused.starts_with("refused:") && refused.contains(&most.to_string()),
        "{refused}"
    );
    // A refused attachment leaves the one before it.
    assert_eq!(ask(&mut plain, "attachment").len(), most);
    drop((_red, _both, plain));
    stop(server);
}

#[test]
fn the_auto_response_answers_while_the_object_is_evicted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start::<1>(dir.path(), |config| config.objects.idle_evict_ms = 200);
    let mut socket = WsClient::connect(server.local_addr(), "/objects/probe/h/ws?attach=kept");
    assert_eq!(ask(&mut socket, "ping"), "pong");
    assert_eq!(BUILT[1].load(Ordering::SeqCst), 1);

    assert!(
        wait_until(PATIENCE, || DROPPED[1].load(Ordering::SeqCst) == 1),
        "the object was not evicted while its socket stayed open"
    );
    for _ in 0..3 {
        assert_eq!(ask(&mut socket, "ping"), "pong");
    }
    assert_eq!(
        BUILT[1].load(Ordering::SeqCst),
        1,
        "an auto response woke the object"
    );

    // Any other message wakes it, with the socket's attachment in place.
    assert_eq!(ask(&mut socket, "attachment"), "kept");
    assert_eq!(BUILT[1].load(Ordering::SeqCst), 2);
    drop(socket);
    stop(server);
}

#[test]
fn the_auto_response_outlives_the_last_socket_of_an_object_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start::<2>(dir.path(), |_| {});
    let addr = server.local_addr();
    let mut first = WsClient::connect(addr, "/objects/probe/o/ws");
    assert_eq!(ask(&mut first, "ping"), "pong");
    first.close(1000);
    assert_eq!(first.next_frame(), Some(Frame::Close(Some(1000))));
    drop(first);
    let mut http = Client::connect(addr);
    assert!(
        wait_until(PATIENCE, || http.get("/objects/probe/o/count").text()
            == "0"),
        "the closed socket stayed listed"
    );

    // The object never left memory, so its constructor did not run again: the auto
    // response it set must still hold for the next socket.
    let mut second = WsClient::connect(addr, "/objects/probe/o/ws");
    assert_eq!(ask(&mut second, "ping"), "pong");
    assert_eq!(BUILT[2].load(Ordering::SeqCst), 1);
    drop((second, http));
    stop(server);
}

#[test]
fn a_burst_to_a_slow_object_is_handled_whole_past_the_event_queue_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start::<3>(dir.path(), |config| {
        config.objects.object_events_queued_max = 2;
    });
    let mut socket = WsClient::connect(server.local_addr(), "/objects/probe/slow/ws");
    const MESSAGES: usize = 64;
    for index in 0..MESSAGES {
        socket.send_text(&format!("slow:{index}"));
    }
    // A handler waiting on a timer lets the next event in, so answers may come in any order.
    let mut answers: Vec<String> = (0..MESSAGES)
        .map(|index| match socket.next_frame() {
            Some(Frame::Text(answer)) => answer,
            other => panic!("only {index} messages were handled, then {other:?}"),
        })
        .collect();
    answers.sort_by_key(|answer| answer.trim_start_matches("done:").parse::<usize>().ok());
    let expected: Vec<String> = (0..MESSAGES).map(|index| format!("done:{index}")).collect();
    assert_eq!(answers, expected);
    drop(socket);
    stop(server);
}
