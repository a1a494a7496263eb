//! Placement across cores: objects owned by the other core, changing `--cores`, and SIGKILL.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{Client, TestServer};

#[test]
fn one_object_reached_from_connections_on_both_cores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    // SO_REUSEPORT spreads connections over both cores' listeners; with 16 connections both
    // cores get some, and every object is owned by exactly one of them.
    let addr = server.addr;
    let threads: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                for name in ["left", "right", "a", "b", "c"] {
                    for _ in 0..10 {
                        assert_eq!(
                            client
                                .get(&format!("/objects/counter/{name}/increment"))
                                .status,
                            200
                        );
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    let mut client = server.client();
    for name in ["left", "right", "a", "b", "c"] {
        assert_eq!(
            client.get(&format!("/objects/counter/{name}/value")).text(),
            "160"
        );
    }
    // Both cores accepted connections, and requests crossed between them.
    let metrics = client.get("/metrics").text();
    for core in ["0", "1"] {
        let accepted = metric(
            &metrics,
            &format!("stead_connections_total{{core=\"{core}\"}}"),
        );
        assert!(
            accepted > 0.0,
            "core {core} accepted no connection:\n{metrics}"
        );
    }
    let forwarded = metric(&metrics, "stead_forwarded_total{core=\"0\"}")
        + metric(&metrics, "stead_forwarded_total{core=\"1\"}");
    assert!(forwarded > 0.0, "no request was forwarded:\n{metrics}");
}

/// The value of the sample `series` in Prometheus text, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[test]
fn changing_cores_keeps_data_reachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let names: Vec<String> = (0..40).map(|n| format!("obj-{n}")).collect();
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    for (index, name) in names.iter().enumerate() {
        for _ in 0..=index % 3 {
            client.get(&format!("/objects/counter/{name}/increment"));
        }
    }
    assert_eq!(server.stop(), Some(0));
    for cores in [1, 2, 1] {
        let server = TestServer::start(dir.path(), cores, &[]);
        let mut client = server.client();
        for (index, name) in names.iter().enumerate() {
            let expected = (index % 3 + 1).to_string();
            assert_eq!(
                client.get(&format!("/objects/counter/{name}/value")).text(),
                expected
            );
        }
        assert_eq!(server.stop(), Some(0));
    }
}

#[test]
fn sigkill_loses_no_acknowledged_increment() {
    increments_survive(|server| {
        server.kill();
    });
}

#[test]
fn sigterm_answers_in_flight_requests_and_exits_zero() {
    increments_survive(|server| {
        assert_eq!(server.stop(), Some(0), "graceful shutdown exits 0");
    });
}

/// Runs increments from 8 connections over 4 objects on 2 cores, stops the server with `stop`
/// mid-stream, restarts it, and checks that every acknowledged increment is there and nothing
/// that was not sent.
fn increments_survive(stop: impl FnOnce(TestServer)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let addr = server.addr;
    let objects = 4;
    let acknowledged: Arc<Vec<AtomicU64>> =
        Arc::new((0..objects).map(|_| AtomicU64::new(0)).collect());
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..objects).map(|_| AtomicU64::new(0)).collect());
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let acknowledged = acknowledged.clone();
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let object = thread % objects;
                loop {
                    sent[object].fetch_add(1, Ordering::SeqCst);
                    client.send_request(
                        "GET",
                        &format!("/objects/counter/k{object}/increment"),
                        &[],
                        b"",
                    );
                    match client.read_reply() {
                        Some(reply) if reply.status == 200 => {
                            acknowledged[object].fetch_add(1, Ordering::SeqCst);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    let running = common::wait_until(std::time::Duration::from_secs(30), || {
        acknowledged
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .sum::<u64>()
            >= 400
    });
    assert!(running, "the load did not get going");
    stop(server);
    for thread in threads {
        thread.join().expect("client thread");
    }
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    for object in 0..objects {
        let value: u64 = client
            .get(&format!("/objects/counter/k{object}/value"))
            .text()
            .parse()
            .expect("number");
        let acked = acknowledged[object].load(Ordering::SeqCst);
        let attempted = sent[object].load(Ordering::SeqCst);
        assert!(acked > 0, "the load ran");
        assert!(
            value >= acked,
            "object {object}: value {value} < acknowledged {acked}"
        );
        assert!(
            value <= attempted,
            "object {object}: value {value} > sent {attempted}"
        );
    }
}
