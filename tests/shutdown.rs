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

/// Alarms keep firing while connections drain. A WebSocket client that never answers the
/// server's close frame holds the drain for `close_timeout_ms`; a lock lease that ends within
/// that time is released then, durably, so the restarted server has no alarm left to fire.
/// (Alarms that stopped when the drain began left it for the restart to fire.)
#[test]
fn a_lease_that_ends_during_the_drain_is_released_before_the_server_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stead.toml");
    std::fs::write(&config, "[websocket]\nclose_timeout_ms = 4000\n").expect("config");
    let config = config.to_str().expect("path").to_string();
    let data = dir.path().join("data");
    let server = TestServer::start(&data, 1, &["--config", &config]);
    let silent = common::ws::WsClient::connect(server.addr, "/objects/chat/room/websocket?name=s");
    let acquired = Instant::now();
    let reply = server
        .client()
        .get("/objects/lock/L/acquire?clientId=a&timeoutMs=1500");
    assert_eq!(reply.status, 200, "{}", reply.text());

    assert_eq!(server.stop(), Some(0));
    assert!(
        acquired.elapsed() >= Duration::from_millis(2500),
        "the drain ended {:?} after the acquire, before the lease could end in it",
        acquired.elapsed()
    );
    drop(silent);

    let server = TestServer::start(&data, 1, &["--config", &config]);
    let status = server.client().get("/objects/lock/L/status").json();
    assert_eq!(status["locked"], false, "{status}");
    // Had the lease outlived the drain, the restart would fire it now.
    let fired_after_restart = wait_until(Duration::from_secs(2), || {
        server.metric_sum("stead_alarms_fired_total") > 0.0
    });
    assert!(
        !fired_after_restart,
        "the lease's alarm was left for the restart"
    );
    assert_eq!(server.metric_sum("stead_alarms_pending"), 0.0);
    assert_eq!(server.stop(), Some(0));
}
