//! The `dedup` built-in, black-box: the real binary, a local upstream that counts its hits and
//! answers slowly, and many clients at once over real sockets.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Client, TestServer};

/// A local upstream (see `common::upstream`): every request waits `delay` and answers with
/// its number, `/fail` with 503. Its `requests` count the hits.
fn upstream(delay: Duration) -> common::upstream::Upstream {
    common::upstream::start(move |path, hit| {
        std::thread::sleep(delay);
        if path.contains("/fail") {
            return b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown".to_vec();
        }
        let body = format!("hit {hit}");
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

fn start(dir: &std::path::Path, upstream: SocketAddr) -> TestServer {
    let config = dir.join("stead.toml");
    std::fs::write(
        &config,
        format!("[fetch]\nallow_hosts = [\"{upstream}\"]\n"),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    TestServer::start(&dir.join("data"), 2, &["--config", &config])
}

/// `count` clients that all ask for `url` at once; their (status, body) answers.
fn at_once(server: &TestServer, url: &str, count: usize) -> Vec<(u16, String)> {
    let barrier = Arc::new(Barrier::new(count));
    let path = format!("/objects/dedup/shared/fetch?url={url}");
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (barrier, path, addr) = (barrier.clone(), path.clone(), server.addr);
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                client
                    .stream()
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                barrier.wait();
                let reply = client.get(&path);
                (reply.status, reply.text())
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| thread.join().expect("client"))
        .collect()
}

#[test]
fn concurrent_identical_requests_share_one_upstream_fetch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = upstream(Duration::from_millis(500));
    let (address, hits) = (upstream.address, upstream.requests.clone());
    let server = start(dir.path(), address);
    let url = format!("http://{address}/slow");

    let answers = at_once(&server, &url, 100);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "one upstream hit for 100 requests"
    );
    assert!(
        answers
            .iter()
            .all(|answer| *answer == (200, "hit 1".to_string())),
        "{:?}",
        &answers[..3]
    );
    // After it ended, the next request fetches again.
    let mut client = server.client();
    let again = client.get(&format!("/objects/dedup/shared/fetch?url={url}"));
    assert_eq!((again.status, again.text()), (200, "hit 2".to_string()));
    assert_eq!(again.header("Content-Type"), Some("text/plain"));

    // An upstream error reaches every waiter alike.
    let failing = format!("http://{address}/fail");
    let answers = at_once(&server, &failing, 20);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(
        answers
            .iter()
            .all(|answer| *answer == (503, "down".to_string())),
        "{answers:?}"
    );
    // A refused host: every waiter gets the same 502.
    let answers = at_once(&server, "http://10.255.255.1/x", 5);
    assert!(
        answers.iter().all(|(status, _)| *status == 502),
        "{answers:?}"
    );
    assert!(answers[0].1.contains("allow_hosts"), "{answers:?}");

    // A waiter that goes away does not cancel the fetch for the others.
    let mut leaving = Client::connect(server.addr);
    leaving.send_request(
        "GET",
        &format!("/objects/dedup/shared/fetch?url={url}"),
        &[],
        b"",
    );
    std::thread::sleep(Duration::from_millis(100));
    let stayer = {
        let (addr, url) = (server.addr, url.clone());
        std::thread::spawn(move || {
            let mut client = Client::connect(addr);
            client
                .stream()
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            let reply = client.get(&format!("/objects/dedup/shared/fetch?url={url}"));
            (reply.status, reply.text())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    drop(leaving);
    assert_eq!(stayer.join().expect("stayer"), (200, "hit 4".to_string()));
    assert_eq!(hits.load(Ordering::SeqCst), 4);

    // Bad input.
    assert_eq!(client.get("/objects/dedup/shared/fetch").status, 400);
    assert_eq!(client.get("/objects/dedup/shared/other").status, 404);
    server.stop();
}
