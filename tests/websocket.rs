//! WebSockets through the real server: the `chat` and `doc` built-ins with clients on both
//! cores, hibernation, a client that stops reading, and the chat page.

mod common;

use std::time::Duration;

use common::ws::{Frame, WsClient};
use common::{wait_until, TestServer};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(10);

fn without_timestamp(mut message: Value) -> Value {
    if let Some(object) = message.as_object_mut() {
        assert!(object
            .remove("timestamp")
            .is_none_or(|stamp| stamp.is_i64()));
    }
    message
}

#[test]
fn chat_room_with_members_on_both_cores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let plain = server.client().get("/objects/chat/lobby/websocket");
    assert_eq!(
        (plain.status, plain.text().as_str()),
        (400, "Expected WebSocket")
    );

    // At least six members, and more until one connection landed on the core that does not
    // own the room (SO_REUSEPORT spreads connections by hash) and was handed over.
    let mut members: Vec<WsClient> = Vec::new();
    while members.len() < 6 || server.metric_sum("stead_websocket_handoffs_total") == 0.0 {
        assert!(members.len() < 40, "no connection was handed over");
        let index = members.len();
        let mut member = WsClient::connect(
            server.addr,
            &format!("/objects/chat/lobby/websocket?name=m{index}"),
        );
        let joined = json!({"type": "join", "name": format!("m{index}"), "count": index + 1});
        assert_eq!(member.next_json(), joined);
        for earlier in &mut members {
            assert_eq!(earlier.next_json(), joined);
        }
        members.push(member);
    }
    let count = members.len();
    // Every socket holds a connection slot of the core it lives on, handed over or not (the
    // scrape's own connection is the one more).
    assert!(
        wait_until(PATIENCE, || server.metric_sum("stead_connections_open")
            == (count + 1) as f64),
        "open connections: {} for {count} sockets",
        server.metric_sum("stead_connections_open")
    );

    members[2].send_text(r#"{"type":"message","text":"hello"}"#);
    for member in &mut members {
        let got = without_timestamp(member.next_json());
        assert_eq!(
            got,
            json!({"type": "message", "name": "m2", "text": "hello"})
        );
    }
    members[3].send_text("not json");
    assert_eq!(members[3].next_json()["type"], "error");
    // A message without text is broadcast without it, as in the design.
    members[4].send_text(r#"{"type":"message"}"#);
    for member in &mut members {
        assert_eq!(
            without_timestamp(member.next_json()),
            json!({"type": "message", "name": "m4"})
        );
    }

    let mut leaving = members.remove(0);
    leaving.close(1000);
    assert_eq!(leaving.next_frame(), Some(Frame::Close(Some(1000))));
    drop(leaving);
    for member in &mut members {
        assert_eq!(
            member.next_json(),
            json!({"type": "leave", "name": "m0", "count": count - 1})
        );
    }
    // An abrupt disconnect is a leave too.
    drop(members.remove(0));
    for member in &mut members {
        assert_eq!(
            member.next_json(),
            json!({"type": "leave", "name": "m1", "count": count - 2})
        );
    }
    drop(members);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn doc_edits_are_durable_and_forwarded_to_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut writer = WsClient::connect(server.addr, "/objects/doc/notes/");
    assert_eq!(writer.next_json(), json!({"type": "init", "content": ""}));
    // Readers until at least one of the doc's sockets was handed over from the other core and
    // one was not.
    let mut readers: Vec<WsClient> = Vec::new();
    loop {
        let handoffs = server.metric_sum("stead_websocket_handoffs_total") as usize;
        if readers.len() >= 2 && handoffs > 0 && handoffs < readers.len() + 1 {
            break;
        }
        assert!(
            readers.len() < 40,
            "the doc's sockets all landed on one core"
        );
        let mut reader = WsClient::connect(server.addr, "/objects/doc/notes/");
        assert_eq!(reader.next_json(), json!({"type": "init", "content": ""}));
        readers.push(reader);
    }

    let edit = r#"{"type":"edit","content":"first draft","cursor":7}"#;
    writer.send_text(edit);
    for reader in &mut readers {
        assert_eq!(
            reader.next_frame(),
            Some(Frame::Text(edit.to_string())),
            "forwarded unchanged"
        );
    }
    // The edit was durable before anyone saw it: kill the server the moment it arrived.
    server.kill();

    let server = TestServer::start(dir.path(), 1, &[]);
    let mut again = WsClient::connect(server.addr, "/objects/doc/notes/");
    assert_eq!(
        again.next_json(),
        json!({"type": "init", "content": "first draft"})
    );
    // What is not an edit gets an error back, is not forwarded and changes nothing.
    let mut other = WsClient::connect(server.addr, "/objects/doc/notes/");
    assert_eq!(other.next_json()["content"], "first draft");
    for bad in ["not json", r#"{"type":"edit"}"#] {
        again.send_text(bad);
        assert_eq!(again.next_json()["type"], "error", "{bad}");
    }
    again.send_frame(0x2, b"\x01\x02", true);
    assert_eq!(again.next_json()["type"], "error", "binary");
    let second = r#"{"type":"edit","content":"second"}"#;
    again.send_text(second);
    assert_eq!(other.next_frame(), Some(Frame::Text(second.to_string())));
    // As in the design (`get("doc") || ""`), a falsy document reads back as "".
    let falsy = r#"{"type":"edit","content":0}"#;
    again.send_text(falsy);
    assert_eq!(other.next_frame(), Some(Frame::Text(falsy.to_string())));
    let mut late = WsClient::connect(server.addr, "/objects/doc/notes/");
    assert_eq!(late.next_json(), json!({"type": "init", "content": ""}));
    drop((again, other, late));
    let plain = server.client().get("/objects/doc/notes/");
    assert_eq!(plain.status, 400);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn an_evicted_room_wakes_with_its_sockets_and_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stead.toml");
    std::fs::write(&config, "[objects]\nidle_evict_ms = 100\n").expect("config");
    let data = dir.path().join("data");
    let server = TestServer::start(&data, 2, &["--config", config.to_str().expect("path")]);
    let mut ada = WsClient::connect(server.addr, "/objects/chat/quiet/websocket?name=ada");
    assert_eq!(ada.next_json()["count"], 1);
    let mut bob = WsClient::connect(server.addr, "/objects/chat/quiet/websocket?name=bob");
    assert_eq!(ada.next_json()["name"], "bob");
    assert_eq!(bob.next_json()["count"], 2);
    let activations = server.metric_sum("stead_activations_total");
    assert!(
        wait_until(PATIENCE, || server.metric_sum("stead_active_objects")
            == 0.0),
        "the room was not evicted"
    );
    bob.send_text(r#"{"type":"message","text":"still here?"}"#);
    for member in [&mut ada, &mut bob] {
        let got = without_timestamp(member.next_json());
        assert_eq!(
            got,
            json!({"type": "message", "name": "bob", "text": "still here?"})
        );
    }
    assert!(
        server.metric_sum("stead_activations_total") > activations,
        "the room was rebuilt"
    );
}

#[test]
fn a_member_that_stops_reading_is_closed_and_the_rest_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stead.toml");
    std::fs::write(
        &config,
        "[websocket]\nsend_queue_bytes_max = 65536\nclose_timeout_ms = 500\n",
    )
    .expect("config");
    let data = dir.path().join("data");
    let server = TestServer::start(&data, 1, &["--config", config.to_str().expect("path")]);
    let mut sleeper = WsClient::connect(server.addr, "/objects/chat/busy/websocket?name=sleeper");
    // The sleeper's receive buffer stays small, so the server's send queue is what fills.
    sleeper
        .stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut talker = WsClient::connect(server.addr, "/objects/chat/busy/websocket?name=talker");
    assert_eq!(talker.next_json()["count"], 2);
    let text = "x".repeat(4000);
    let message = json!({"type": "message", "text": text}).to_string();
    // Once its queue overflows, the sleeper gets a close frame and, since it does not answer,
    // is dropped after `close_timeout_ms`; the room then sees it leave.
    let mut left = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        talker.send_text(&message);
        // Read our own echo (or the sleeper's leave) so the talker never stops reading.
        let got = talker.next_json();
        if got["type"] == "leave" {
            assert_eq!(got["name"], "sleeper");
            left = true;
            break;
        }
    }
    assert!(left, "the member that stopped reading was never closed");
    // What the sleeper finally reads ends with a policy-violation close.
    assert_eq!(
        sleeper.last_frame_until_close(),
        Some(Frame::Close(Some(1008)))
    );
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn the_chat_page_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let page = server.client().get("/chat");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains("new WebSocket("));
}

/// The next text message, as sent (skipping pings and pongs).
fn next_text(client: &mut WsClient) -> String {
    loop {
        match client.next_frame() {
            Some(Frame::Text(text)) => return text,
            Some(Frame::Ping(_)) | Some(Frame::Pong(_)) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

#[test]
fn chat_and_doc_messages_keep_the_designs_field_order_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let room = "/objects/chat/order/websocket";
    let mut ada = WsClient::connect(server.addr, &format!("{room}?name=ada"));
    assert_eq!(
        next_text(&mut ada),
        r#"{"type":"join","name":"ada","count":1}"#
    );
    let mut bob = WsClient::connect(server.addr, &format!("{room}?name=bob"));
    let join = r#"{"type":"join","name":"bob","count":2}"#;
    assert_eq!(next_text(&mut ada), join);
    assert_eq!(next_text(&mut bob), join);
    ada.send_text(r#"{"text":"hi","type":"message"}"#);
    let message = next_text(&mut bob);
    let timestamp = serde_json::from_str::<Value>(&message).expect("JSON")["timestamp"]
        .as_i64()
        .expect("timestamp");
    assert_eq!(
        message,
        format!(r#"{{"type":"message","name":"ada","text":"hi","timestamp":{timestamp}}}"#)
    );
    assert_eq!(next_text(&mut ada), message);
    // Without `text`, the broadcast has none (JSON.stringify drops undefined).
    ada.send_text(r#"{"type":"message"}"#);
    let bare = next_text(&mut bob);
    let timestamp = serde_json::from_str::<Value>(&bare).expect("JSON")["timestamp"]
        .as_i64()
        .expect("timestamp");
    assert_eq!(
        bare,
        format!(r#"{{"type":"message","name":"ada","timestamp":{timestamp}}}"#)
    );
    assert_eq!(next_text(&mut ada), bare);
    bob.send_text("not json");
    let error = next_text(&mut bob);
    assert!(
        error.starts_with(r#"{"type":"error","error":"invalid JSON: "#),
        "{error}"
    );
    bob.close(1000);
    assert_eq!(
        next_text(&mut ada),
        r#"{"type":"leave","name":"bob","count":1}"#
    );

    let mut first = WsClient::connect(server.addr, "/objects/doc/order/");
    assert_eq!(next_text(&mut first), r#"{"type":"init","content":""}"#);
    let edit = r#"{"content":{"b":1,"a":2},"type":"edit"}"#;
    first.send_text(edit);
    // The edit is an event of `first`'s socket, durable before anyone sees it; a socket opened
    // after that event was handled gets it in its init. Another connection is not ordered
    // with `first`'s messages, so open sockets until one sees the edit.
    let mut second = None;
    let mut init = String::new();
    assert!(wait_until(PATIENCE, || {
        let mut socket = WsClient::connect(server.addr, "/objects/doc/order/");
        init = next_text(&mut socket);
        second = Some(socket);
        init != r#"{"type":"init","content":""}"#
    }));
    let mut second = second.expect("a socket");
    // An edit is stored as sent, so it comes back in its own key order.
    assert_eq!(init, r#"{"type":"init","content":{"b":1,"a":2}}"#);
    second.send_text(r#"{"type":"edit","content":"x","extra":[1]}"#);
    assert_eq!(
        next_text(&mut first),
        r#"{"type":"edit","content":"x","extra":[1]}"#
    );
    first.send_text(r#"{"type":"edit"}"#);
    assert_eq!(
        next_text(&mut first),
        r#"{"type":"error","error":"an edit needs a content"}"#
    );
    assert_eq!(server.stop(), Some(0));
}

/// Shrinks a client's kernel receive buffer, so that what the server cannot send stays in the
/// server's send queues (which the budget bounds) rather than in kernel buffers.
fn small_receive_buffer(client: &WsClient) {
    use std::os::fd::AsRawFd;
    let bytes: libc::c_int = 4096;
    // SAFETY: setsockopt(2) on a socket this test owns, with a pointer to a c_int and its size.
    let result = unsafe {
        libc::setsockopt(
            client.stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of!(bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "setsockopt SO_RCVBUF");
}

#[test]
fn queued_bytes_stay_within_the_cores_budget_and_slow_members_are_closed() {
    const BUDGET_BYTES: usize = 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stead.toml");
    std::fs::write(
        &config,
        format!("[websocket]\nsend_queue_bytes_per_core_max = {BUDGET_BYTES}\n"),
    )
    .expect("config");
    let data = dir.path().join("data");
    let server = TestServer::start(&data, 1, &["--config", config.to_str().expect("path")]);
    let room = "/objects/chat/budget/websocket";
    // Members that never read: each alone stays under its own 4 MiB queue bound, together they
    // would pass the core's 1 MiB budget many times over.
    let sleepers: Vec<WsClient> = (0..20)
        .map(|index| {
            let sleeper = WsClient::connect(server.addr, &format!("{room}?name=sleeper{index}"));
            small_receive_buffer(&sleeper);
            sleeper
        })
        .collect();
    let mut talker = WsClient::connect(server.addr, &format!("{room}?name=talker"));
    assert_eq!(
        next_text(&mut talker),
        r#"{"type":"join","name":"talker","count":21}"#
    );
    let message = json!({"type": "message", "text": "x".repeat(50_000)}).to_string();
    let mut left = 0;
    let mut queued_max = 0.0f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while left < 20 && std::time::Instant::now() < deadline {
        talker.send_text(&message);
        // Read the echo and any leaves, so the talker never falls behind.
        loop {
            let got = talker.next_json();
            if got["type"] == "leave" {
                left += 1;
                continue;
            }
            assert_eq!(got["type"], "message");
            break;
        }
        let queued = server.metric_sum("stead_websocket_queued_bytes");
        queued_max = queued_max.max(queued);
        assert!(queued <= BUDGET_BYTES as f64, "{queued} bytes queued");
    }
    assert_eq!(
        left, 20,
        "the members that stopped reading were not all closed"
    );
    assert!(
        queued_max > (BUDGET_BYTES / 2) as f64,
        "the budget was never approached: {queued_max}"
    );
    // The talker, which kept up, is still a member; the sleepers were told to come back later.
    talker.send_text(r#"{"type":"message","text":"still here"}"#);
    assert_eq!(talker.next_json()["text"], "still here");
    let mut sleeper = sleepers.into_iter().next().expect("a sleeper");
    assert_eq!(
        sleeper.last_frame_until_close(),
        Some(Frame::Close(Some(1013)))
    );
    assert_eq!(server.stop(), Some(0));
}
