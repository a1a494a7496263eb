//! Outgoing HTTP from objects (`ObjectContext::fetch`): an embedded server whose class fetches
//! the URL it is given, against a local upstream that counts its connections. Kept-alive
//! connections, chunked answers, redirects, and every refusal: a host not in `allow_hosts`, a
//! redirect to one, a listed name that resolves to a private address, `https://`, a slow
//! upstream, an answer too large.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Client;
use stead::object::FetchRequest;
use stead::{Config, DurableObject, ObjectContext, ObjectError, Request, Response, RunningServer};

struct Fetcher {
    context: ObjectContext,
}

impl DurableObject for Fetcher {
    fn new(context: ObjectContext) -> Fetcher {
        Fetcher { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let url = request.query_param("url").unwrap_or_default();
        let answer = self.context.fetch(FetchRequest::get(url)).await?;
        Ok(Response::new(answer.status, answer.body))
    }
}

/// A local upstream that answers by path (see `common::upstream`).
fn upstream() -> common::upstream::Upstream {
    common::upstream::start(|path, _| answer(path))
}

fn answer(path: &str) -> Vec<u8> {
    match path {
        "/hello" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        "/chunked" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
                .to_vec()
        }
        "/big" => {
            let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n".to_vec();
            answer.resize(answer.len() + 2 * 1024 * 1024, b'x');
            answer
        }
        "/slow" => {
            std::thread::sleep(Duration::from_secs(3));
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow".to_vec()
        }
        "/redirect-denied" => {
            b"HTTP/1.1 302 Found\r\nLocation: http://10.255.255.1/x\r\nContent-Length: 0\r\n\r\n"
                .to_vec()
        }
        // A chunk size that would overflow: refused as too large, no panic.
        "/overflow" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n"
                .to_vec()
        }
        // An interim answer before the final one.
        "/interim" => {
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                .to_vec()
        }
        // Bytes past the body's end: the connection must not be used again.
        "/extra" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale".to_vec(),
        "/redirect-ok" => {
            b"HTTP/1.1 302 Found\r\nLocation: /hello\r\nContent-Length: 0\r\n\r\n".to_vec()
        }
        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
    }
}

fn start(dir: &std::path::Path, upstream: SocketAddr) -> RunningServer {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.to_path_buf(),
        cores: 1,
        ..Config::default()
    };
    config.fetch.allow_hosts = vec![upstream.to_string(), "localhost".to_string()];
    config.fetch.redirects_max = 2;
    config.fetch.timeout_ms = 500;
    config.fetch.response_bytes_max = 1024 * 1024;
    stead::Server::builder()
        .config(config)
        .class::<Fetcher>("fetcher")
        .build()
        .start()
        .expect("start the server")
}

fn fetch(client: &mut Client, url: &str) -> (u16, String) {
    let encoded = stead::http::percent_encode(url);
    let reply = client.get(&format!("/objects/fetcher/f/get?url={encoded}"));
    (reply.status, reply.text())
}

#[test]
fn objects_fetch_allowed_hosts_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = upstream();
    let (address, connections) = (upstream.address, upstream.connections.clone());
    let server = start(dir.path(), address);
    let mut client = Client::connect(server.local_addr());
    client
        .stream()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let base = format!("http://{address}");

    assert_eq!(
        fetch(&mut client, &format!("{base}/hello")),
        (200, "hello".into())
    );
    assert_eq!(
        fetch(&mut client, &format!("{base}/hello")),
        (200, "hello".into())
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the connection was kept alive"
    );
    assert_eq!(
        fetch(&mut client, &format!("{base}/chunked")),
        (200, "hello".into())
    );
    assert_eq!(fetch(&mut client, &format!("{base}/missing")).0, 404);
    assert_eq!(
        fetch(&mut client, &format!("{base}/redirect-ok")),
        (200, "hello".into())
    );

    // Refused: a host not listed (another port, another address), a redirect to one, a
    // listed name that resolves to loopback, https.
    let refusals = [
        (
            format!("http://127.0.0.1:{}/hello", address.port() + 1),
            "not in [fetch] allow_hosts",
        ),
        (
            "http://127.0.0.2/hello".to_string(),
            "not in [fetch] allow_hosts",
        ),
        (
            format!("{base}/redirect-denied"),
            "10.255.255.1:80 is not in [fetch] allow_hosts",
        ),
        // `localhost` is listed by name (any port), but its address on this port is not.
        (
            format!("http://localhost:{}/hello", address.port() + 1),
            "non-public address",
        ),
        (
            format!("https://{address}/hello"),
            "https:// is not supported",
        ),
        ("file:///etc/passwd".to_string(), "only http:// URLs"),
    ];
    let before = connections.load(Ordering::SeqCst);
    for (url, reason) in refusals {
        let (status, text) = fetch(&mut client, &url);
        assert_eq!(status, 502, "{url}: {text}");
        assert!(text.contains(reason), "{url}: {text}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        before,
        "no refused request reached the upstream"
    );

    // An interim answer is skipped; an answer with bytes past its end leaves its connection
    // unused (the next request does not read the stale bytes as its answer); a chunk size
    // that overflows is refused.
    assert_eq!(
        fetch(&mut client, &format!("{base}/interim")),
        (200, "ok".into())
    );
    assert_eq!(
        fetch(&mut client, &format!("{base}/extra")),
        (200, "ok".into())
    );
    let opened = connections.load(Ordering::SeqCst);
    assert_eq!(
        fetch(&mut client, &format!("{base}/hello")),
        (200, "hello".into())
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        opened + 1,
        "a new connection"
    );
    let (status, text) = fetch(&mut client, &format!("{base}/overflow"));
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("response_bytes_max"), "{text}");

    // Too slow (504), too large (502); the object goes on serving.
    let (status, text) = fetch(&mut client, &format!("{base}/slow"));
    assert_eq!(status, 504, "{text}");
    let (status, text) = fetch(&mut client, &format!("{base}/big"));
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("response_bytes_max"), "{text}");
    assert_eq!(
        fetch(&mut client, &format!("{base}/hello")),
        (200, "hello".into())
    );
    server.stop();
    server.wait().expect("clean shutdown");
}
