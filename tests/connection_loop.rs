//! The HTTP connection loop over real sockets: deep pipelines make progress, a client that never
//! reads is not buffered for without bound and is closed after the write timeout, and a client
//! that goes away behind a full pipeline is noticed (its lock waiters leave the queue).

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{wait_until, Client, TestServer};

/// Starts a one-core server with `toml` as its configuration file.
fn start_with_config(dir: &Path, toml: &str) -> TestServer {
    let config = dir.join("stead.toml");
    std::fs::write(&config, toml).expect("config");
    let config = config.to_str().expect("utf-8").to_string();
    TestServer::start(&dir.join("data"), 1, &["--config", &config])
}

/// `count` pipelined `GET path` requests, back to back.
fn pipelined(path: &str, count: usize) -> Vec<u8> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    request.repeat(count).into_bytes()
}

/// The lock's `waiting` count as `/status` reports it.
fn lock_waiting(client: &mut Client, lock: &str) -> u64 {
    let reply = client.get(&format!("/objects/lock/{lock}/status"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["waiting"]
        .as_u64()
        .expect("waiting is a number")
}

#[test]
fn every_pipelined_request_in_one_write_is_answered_promptly_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    for count in [129, 300] {
        let mut client = server.client();
        // Far below the 60 s idle timeout that used to answer the 129th.
        client
            .stream()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut requests = Vec::new();
        for index in 0..count {
            requests.extend_from_slice(
                format!("GET /objects/counter/c{count}/increment HTTP/1.1\r\n\r\n").as_bytes(),
            );
            // A request for the server's state in between, so that order is checked.
            if index % 50 == 0 {
                requests.extend_from_slice(b"GET /healthz HTTP/1.1\r\n\r\n");
            }
        }
        client.send_raw(&requests);
        let mut increments = 0;
        for index in 0..count {
            let reply = client
                .read_reply()
                .unwrap_or_else(|| panic!("reply {index} of {count} pipelined requests"));
            assert_eq!(reply.status, 200);
            increments += 1;
            assert_eq!(reply.text(), increments.to_string(), "reply {index}");
            if index % 50 == 0 {
                let health = client.read_reply().expect("healthz reply");
                assert_eq!(health.text(), "ok");
            }
        }
    }
}

/// How `write_until_stopped` ended.
#[derive(Debug, PartialEq, Eq)]
enum Writes {
    /// A write blocked: the server stopped reading.
    Blocked,
    /// The server closed the connection.
    Reset,
    /// Every byte was taken.
    Unbounded,
}

/// Writes padded pipelined requests and never reads, until the server stops taking them or
/// `bytes_max` is written. Returns how it ended and the bytes written.
fn write_until_stopped(stream: &mut TcpStream, bytes_max: usize) -> (Writes, usize) {
    // Padded requests, so that the bytes the kernel buffers on both sides (tens of megabytes)
    // are reached in fewer requests, but responses that outgrow the server's socket send
    // buffer long before `bytes_max`: past that, only a server that stops reading makes the
    // client's writes block.
    let pad = "p".repeat(1024);
    let request = format!("GET /healthz HTTP/1.1\r\nX-Pad: {pad}\r\n\r\n");
    let chunk = request.repeat(128).into_bytes();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("write timeout");
    let mut written = 0;
    while written < bytes_max {
        match stream.write(&chunk) {
            Ok(bytes) => written += bytes,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (Writes::Blocked, written);
            }
            Err(_) => return (Writes::Reset, written),
        }
    }
    (Writes::Unbounded, written)
}

#[test]
fn a_client_that_never_reads_stops_being_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_config(dir.path(), "[http]\nresponse_bytes_buffered_max = 16384\n");
    let mut client = server.client();
    // The kernel's socket buffers on both sides hold tens of megabytes at most; the server
    // itself must hold no more than its bounds.
    let (writes, written) = write_until_stopped(client.stream(), 256 * 1024 * 1024);
    assert_eq!(writes, Writes::Blocked, "after {written} bytes");
    // The server still serves others.
    assert_eq!(server.client().get("/healthz").status, 200);
}

#[test]
fn a_client_that_never_reads_is_closed_after_the_write_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_config(
        dir.path(),
        "[http]\nresponse_bytes_buffered_max = 16384\nwrite_timeout_ms = 300\n",
    );
    let mut client = server.client();
    let (writes, written) = write_until_stopped(client.stream(), 256 * 1024 * 1024);
    assert_ne!(writes, Writes::Unbounded, "after {written} bytes");
    // Closing with unread input resets the connection, so the client's next write fails (the
    // write that blocked may have seen that already).
    let stream = client.stream();
    stream.set_nonblocking(true).expect("nonblocking");
    let closed = wait_until(Duration::from_secs(10), || match stream.write(b"x") {
        Ok(_) => false,
        Err(error) => error.kind() != ErrorKind::WouldBlock,
    });
    assert!(closed, "the connection outlived its write timeout");
}

#[test]
fn the_idle_timeout_does_not_close_a_connection_waiting_to_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_config(
        dir.path(),
        "[http]\nresponse_bytes_buffered_max = 4096\nidle_connection_timeout_ms = 200\n\
         write_timeout_ms = 60000\n",
    );
    let mut client = server.client();
    // Enough responses to fill the client's receive buffer and the server's output bound.
    let count = 40_000;
    client.send_raw(&pipelined("/healthz", count));
    // Let several idle timeouts pass while the server waits to write: this wait is the
    // behaviour under test, not a stand-in for synchronisation.
    std::thread::sleep(Duration::from_millis(1_000));
    for index in 0..count {
        let reply = client
            .read_reply()
            .unwrap_or_else(|| panic!("reply {index} of {count}"));
        assert_eq!(reply.status, 200);
    }
}

/// A holder on one connection, then `waiters` pipelined acquires on another that closes.
fn waiters_behind_a_full_pipeline_leave_when_their_client_closes(config: &str, waiters: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_config(dir.path(), config);
    let mut holder = server.client();
    let acquired = holder.get("/objects/lock/L/acquire?clientId=holder");
    assert_eq!(acquired.text(), r#"{"acquired":true}"#);

    let mut waiting = server.client();
    let mut requests = Vec::new();
    for index in 0..waiters {
        requests.extend_from_slice(
            format!("GET /objects/lock/L/acquire?clientId=w{index} HTTP/1.1\r\n\r\n").as_bytes(),
        );
    }
    waiting.send_raw(&requests);
    let mut observer = server.client();
    assert!(
        wait_until(Duration::from_secs(10), || lock_waiting(&mut observer, "L")
            == 128),
        "the pipeline should hold 128 waiters"
    );
    drop(waiting);
    assert!(
        wait_until(Duration::from_secs(10), || lock_waiting(&mut observer, "L")
            == 0),
        "the waiters of a closed connection are still queued: {}",
        lock_waiting(&mut observer, "L")
    );
    let released = holder.get("/objects/lock/L/release?clientId=holder");
    assert_eq!(
        (released.status, released.text().as_str()),
        (200, r#"{"released":true}"#)
    );
    // The lock went to nobody: no dead waiter was granted it.
    let status = observer.get("/objects/lock/L/status").json();
    assert_eq!(status["locked"], false, "{status}");
    assert_eq!(status["holder"], serde_json::Value::Null, "{status}");
}

#[test]
fn lock_waiters_behind_a_full_pipeline_leave_when_their_client_closes() {
    waiters_behind_a_full_pipeline_leave_when_their_client_closes("", 128);
}

#[test]
fn lock_waiters_behind_a_full_pipeline_and_a_full_read_buffer_leave_when_their_client_closes() {
    // A read buffer of at most 3 KiB: the requests past the pipeline fill it, so the close can
    // only be seen without reading.
    let config = "[http]\nheader_bytes_max = 1024\nbody_bytes_max = 1024\n";
    waiters_behind_a_full_pipeline_leave_when_their_client_closes(config, 400);
}

#[test]
fn a_release_gets_through_however_many_waiters_are_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_config(dir.path(), "[objects]\nobject_events_queued_max = 8\n");
    let mut holder = server.client();
    let acquired = holder.get("/objects/lock/Q/acquire?clientId=holder");
    assert_eq!(acquired.text(), r#"{"acquired":true}"#);

    let waiters = 20;
    let mut waiting = server.client();
    let mut requests = Vec::new();
    for index in 0..waiters {
        requests.extend_from_slice(
            format!("GET /objects/lock/Q/acquire?clientId=w{index} HTTP/1.1\r\n\r\n").as_bytes(),
        );
    }
    waiting.send_raw(&requests);
    let mut observer = server.client();
    // The lock bounds its own queue at object_events_queued_max; later waiters get 503.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let reply = observer.get("/objects/lock/Q/status");
            reply.status == 200 && reply.json()["waiting"] == 8
        }),
        "status should answer and show 8 waiters"
    );
    let released = holder.get("/objects/lock/Q/release?clientId=holder");
    assert_eq!(
        (released.status, released.text().as_str()),
        (200, r#"{"released":true}"#)
    );
    // The first waiter got the lock; the ones past the bound were refused.
    let first = waiting.read_reply().expect("first waiter's reply");
    assert_eq!(first.text(), r#"{"acquired":true}"#);
    let status = observer.get("/objects/lock/Q/status").json();
    assert_eq!(status["holder"], "w0", "{status}");
    assert_eq!(status["waiting"], 7, "{status}");
    let release = waiting_release(&server, "w0");
    assert_eq!(release, 200);
    for index in 1..waiters {
        let reply = waiting.read_reply().expect("waiter's reply");
        if index < 8 {
            assert_eq!(reply.status, 200, "waiter {index}");
            assert_eq!(waiting_release(&server, &format!("w{index}")), 200);
        } else {
            assert_eq!(reply.status, 503, "waiter {index}: {}", reply.text());
        }
    }
}

/// Releases the lock `Q` for `client_id` on a new connection; the status code.
fn waiting_release(server: &TestServer, client_id: &str) -> u16 {
    server
        .client()
        .get(&format!("/objects/lock/Q/release?clientId={client_id}"))
        .status
}
