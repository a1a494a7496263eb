//! Bad input gets its status code, the connection closes cleanly, and the server keeps serving.

mod common;

use common::{Client, TestServer};

fn expect_status_and_close(server: &TestServer, raw: &[u8], status: u16) {
    let mut client = server.client();
    client.send_raw(raw);
    let reply = client
        .read_reply()
        .expect("an error response before the close");
    assert_eq!(
        reply.status,
        status,
        "for {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(80)])
    );
    assert!(
        client.is_closed(),
        "connection should close after a bad request"
    );
}

#[test]
fn malformed_and_oversized_requests_get_their_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    expect_status_and_close(&server, b"THIS IS NOT HTTP\r\n\r\n", 400);
    expect_status_and_close(&server, b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n", 400);
    let mut huge_header = b"GET /healthz HTTP/1.1\r\nX-Big: ".to_vec();
    huge_header.extend(std::iter::repeat_n(b'a', 64 * 1024));
    huge_header.extend_from_slice(b"\r\n\r\n");
    expect_status_and_close(&server, &huge_header, 431);
    expect_status_and_close(
        &server,
        b"POST /objects/counter/a/increment HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
        413,
    );
    expect_status_and_close(&server, b"BREW /healthz HTTP/1.1\r\n\r\n", 405);
    expect_status_and_close(
        &server,
        b"POST /objects/counter/a/increment HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    );
    // Strict parsing choices (see src/http/parse.rs): bare LF, Transfer-Encoding in HTTP/1.0,
    // a WebSocket upgrade over HTTP/1.0.
    expect_status_and_close(&server, b"GET /healthz HTTP/1.1\nHost: x\n\n", 400);
    expect_status_and_close(
        &server,
        b"POST /objects/counter/a/increment HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
    expect_status_and_close(
        &server,
        b"GET /objects/chat/a/websocket HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        400,
    );
    let long_name = format!("/objects/counter/{}/value", "n".repeat(2000));
    let mut client = server.client();
    assert_eq!(client.get(&long_name).status, 400);

    // Chunked bodies are understood, and pipelined requests are answered in order.
    let mut client = server.client();
    client.send_raw(
        b"POST /objects/counter/p/increment HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /objects/counter/p/increment HTTP/1.1\r\n\r\n\
          GET /objects/counter/p/value HTTP/1.1\r\n\r\n",
    );
    let replies: Vec<String> = (0..3)
        .map(|_| client.read_reply().expect("reply").text())
        .collect();
    assert_eq!(replies, ["1", "2", "2"]);

    // After all of that the server still serves.
    let mut client = Client::connect(server.addr);
    assert_eq!(client.get("/healthz").status, 200);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn auth_token_guards_everything_but_healthz() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &["--auth-token", "s3cret"]);
    let mut client = server.client();
    assert_eq!(client.get("/healthz").status, 200);
    assert_eq!(client.get("/objects/counter/a/value").status, 401);
    assert_eq!(client.get("/metrics").status, 401);
    let wrong = client.request_with(
        "GET",
        "/objects/counter/a/value",
        &[("Authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(wrong.status, 401);
    let right = client.request_with(
        "GET",
        "/objects/counter/a/increment",
        &[("Authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!((right.status, right.text().as_str()), (200, "1"));
}

#[test]
fn overload_is_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stead.toml");
    std::fs::write(&config, "[objects]\nobject_events_queued_max = 1\n").expect("config");
    let data = dir.path().join("data");
    let server = TestServer::start(&data, 1, &["--config", config.to_str().expect("utf-8")]);
    let mut client = server.client();
    let mut pipelined = Vec::new();
    for _ in 0..64 {
        pipelined.extend_from_slice(b"GET /objects/counter/hot/increment HTTP/1.1\r\n\r\n");
    }
    client.send_raw(&pipelined);
    let mut ok = 0;
    let mut overloaded = 0;
    for _ in 0..64 {
        let reply = client.read_reply().expect("reply");
        match reply.status {
            200 => ok += 1,
            503 => {
                assert_eq!(reply.json()["error"], "overloaded");
                assert_eq!(reply.json()["retryable"], true);
                assert!(reply.header("retry-after").is_some());
                overloaded += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        ok >= 1 && overloaded >= 1,
        "ok {ok}, overloaded {overloaded}"
    );
    // Every success was counted, nothing more.
    assert_eq!(
        client.get("/objects/counter/hot/value").text(),
        ok.to_string()
    );
}

#[test]
fn metrics_are_prometheus_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    client.get("/objects/counter/m/increment");
    let metrics = client.get("/metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(text.contains("# TYPE"), "{text}");
    assert!(text.contains("stead_requests_total{"), "{text}");
    assert!(text.contains("class=\"counter\""), "{text}");
}
