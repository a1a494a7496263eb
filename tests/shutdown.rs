//! SIGTERM: what clients still connected see, and how long the drain takes.

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Client, TestServer};
use serde_json::json;

/// Shutdown waits up to 30 s for events in flight; a waiter must not make it wait that long.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// Lock waiters on both cores get a retryable 503 as soon as shutdown begins, the server exits
/// long before the drain timeout, and the holder is still the holder after a restart.
#[test]
fn lock_waiters_get_a_retryable_503_at_once_when_shutdown_begins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut holder = server.client();
    assert_eq!(holder.get("/objects/lock/L/acquire?clientId=a").status, 200);
    let mut waiters: Vec<Client> = (0..6)
        .map(|index| {
            let mut waiter = server.client();
            let path = format!("/objects/lock/L/acquire?clientId=w{index}");
            waiter.send_request("GET", &path, &[], b"");
            waiter
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || holder
        .get("/objects/lock/L/status")
        .json()["waiting"]
        == 6));

    let started = Instant::now();
    server.terminate();
    for waiter in &mut waiters {
        let reply = waiter
            .read_reply()
            .expect("an answer, not a closed connection");
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert_eq!(
            reply.json(),
            json!({"error": "the server is shutting down", "retryable": true})
        );
        assert_eq!(reply.header("Retry-After"), Some("1"));
    }
    assert!(started.elapsed() < DRAIN_BOUND, "{:?}", started.elapsed());
    drop(waiters);
    drop(holder);
    assert_eq!(server.stop(), Some(0));
    assert!(
        started.elapsed() < DRAIN_BOUND,
        "shutdown took {:?}",
        started.elapsed()
    );

    let server = TestServer::start(dir.path(), 2, &[]);
    let status = server.client().get("/objects/lock/L/status").json();
    assert_eq!(status["holder"], "a");
    assert_eq!(status["waiting"], 0);
    assert_eq!(server.stop(), Some(0));
}
