use super::*;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

/// Answers `METHOD path body`; a path `/slow/N` waits N milliseconds first, so later requests
/// finish before earlier ones and ordering is really tested; `/slow/N/shutdown` also asks the
/// server to shut down.
struct Echo {
    shutdown: Rc<Shutdown>,
}

impl Handler for Echo {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response>>> {
        if request.path.ends_with("/shutdown") {
            self.shutdown.request();
        }
        Box::pin(async move {
            if let Some(delay) = request.path.strip_prefix("/slow/") {
                let digits = delay.split('/').next().unwrap_or_default();
                let millis = digits.parse().unwrap_or(0);
                Timer::new(Duration::from_millis(millis)).await;
            }
            let body = String::from_utf8_lossy(&request.body);
            Response::text(
                200,
                format!("{} {} {body}", request.method.as_str(), request.path),
            )
        })
    }

    /// Writes `switched {path} {unread bytes}` raw, then closes.
    fn upgrade(
        &self,
        mut stream: TcpStream,
        unread: Vec<u8>,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(async move {
            let text = format!(
                "switched {} {}",
                request.path,
                String::from_utf8_lossy(&unread)
            );
            stream.write_all(text.as_bytes()).await.expect("write");
        })
    }
}

/// Runs `client` against one connection served with `limits`, on a fresh executor.
fn with_server<F, Fut>(limits: HttpLimits, client: F)
where
    F: FnOnce(std::net::SocketAddr) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .ring_depth(64)
        .make()
        .expect("executor");
    executor.run(async move {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let server = glommio::spawn_local(async move {
            let stream = listener.accept().await.expect("accept");
            let shutdown = Rc::new(Shutdown::new());
            let echo = Rc::new(Echo {
                shutdown: shutdown.clone(),
            });
            serve_connection(stream, echo, Rc::new(limits), shutdown).await;
        });
        client(address).await;
        server.await;
    });
}

async fn send_and_read_all(address: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut stream = glommio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(raw).await.expect("write");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("read");
    String::from_utf8(reply).expect("utf-8")
}

fn ok(body: &str, connection: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn pipelined_requests_answer_in_order_and_a_bad_one_closes() {
    with_server(HttpLimits::default(), |address| async move {
        let raw = b"GET /slow/30 HTTP/1.1\r\n\r\n\
            POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            HEAD /head HTTP/1.1\r\n\r\n\
            PUT /length HTTP/1.1\r\nContent-Length: 2\r\n\r\nxy\
            THIS IS NOT HTTP\r\n\r\n\
            GET /never HTTP/1.1\r\n\r\n";
        let reply = send_and_read_all(address, raw).await;
        let expected_ok = [
            ok("GET /slow/30 ", "close"),
            ok("POST /chunked abc", "close"),
            ok("HEAD /head ", "close").replace("HEAD /head ", ""),
            ok("PUT /length xy", "close"),
        ]
        .concat();
        assert!(reply.starts_with(&expected_ok), "{reply}");
        let error = &reply[expected_ok.len()..];
        assert!(error.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{error}");
        assert!(error.contains("Connection: close\r\n"), "{error}");
        assert!(
            error.ends_with("\r\n\r\n{\"error\":\"malformed request: invalid request line\"}"),
            "{error}"
        );
    });
}

#[test]
fn an_upgrade_request_hands_over_the_connection_after_earlier_responses() {
    with_server(HttpLimits::default(), |address| async move {
        let raw = b"GET /slow/20 HTTP/1.1\r\n\r\n\
            GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n\
            FRAME BYTES";
        let reply = send_and_read_all(address, raw).await;
        let expected = format!("{}switched /ws FRAME BYTES", ok("GET /slow/20 ", "close"));
        assert_eq!(reply, expected);
    });
}

#[test]
fn keep_alive_across_writes_then_close_on_request() {
    with_server(HttpLimits::default(), |address| async move {
        let mut stream = glommio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        // A request split over several writes, byte by byte at first.
        for byte in b"GET /a HTTP/1.1\r\n" {
            stream.write_all(&[*byte]).await.expect("write");
        }
        stream.write_all(b"\r\n").await.expect("write");
        let expected = ok("GET /a ", "keep-alive");
        let mut reply = vec![0; expected.len()];
        stream.read_exact(&mut reply).await.expect("read");
        assert_eq!(String::from_utf8_lossy(&reply), expected);
        stream
            .write_all(b"GET /b HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("read");
        assert_eq!(String::from_utf8_lossy(&rest), ok("GET /b ", "close"));
    });
}

#[test]
fn oversized_header_gets_431_and_a_clean_close() {
    with_server(HttpLimits::default(), |address| async move {
        let mut raw = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 64 * 1024));
        raw.extend_from_slice(b"\r\n\r\n");
        let reply = send_and_read_all(address, &raw).await;
        assert!(
            reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{reply}"
        );
    });
}

#[test]
fn idle_connections_and_shutdown_close() {
    let limits = HttpLimits {
        idle_connection_timeout_ms: 20,
        ..HttpLimits::default()
    };
    with_server(limits, |address| async move {
        // Nothing sent: the server closes after the idle timeout.
        assert_eq!(send_and_read_all(address, b"").await, "");
    });
    with_server(HttpLimits::default(), |address| async move {
        // Shutdown while the request is in flight: it is still answered, then the
        // connection closes.
        let reply = send_and_read_all(address, b"GET /slow/20/shutdown HTTP/1.1\r\n\r\n").await;
        assert_eq!(reply, ok("GET /slow/20/shutdown ", "close"));
    });
}
