//! HTTPS and WSS over real sockets: a self-signed certificate made here, requests with
//! keep-alive and pipelining through a rustls client, curl, a WebSocket chat over TLS on two
//! cores, ALPN (HTTP/1.1 only), plain HTTP refused, a silent client dropped, and the
//! certificate read again on SIGHUP.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::TestServer;

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM into `dir`; the
/// certificate's PEM (what a client trusts).
fn make_certificate(dir: &Path) -> String {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("a certificate");
    let cert = made.cert.pem();
    std::fs::write(dir.join("cert.pem"), &cert).expect("write the certificate");
    std::fs::write(dir.join("key.pem"), made.key_pair.serialize_pem()).expect("write the key");
    cert
}

fn tls_args(dir: &Path) -> Vec<String> {
    vec![
        "--tls-cert".to_string(),
        dir.join("cert.pem").to_string_lossy().into_owned(),
        "--tls-key".to_string(),
        dir.join("key.pem").to_string_lossy().into_owned(),
    ]
}

fn client_config(trusted: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(trusted.as_bytes()) {
        roots.add(cert.expect("PEM")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` trusting `trusted`, its handshake done.
fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream> {
    let socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let connection = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Reads one response with a `Content-Length` body; its status and body.
fn read_response(stream: &mut TlsStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("a response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("a response body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn https_serves_keep_alive_pipelining_curl_bench_and_admin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trusted = make_certificate(dir.path());
    let mut args = tls_args(dir.path());
    args.extend(["--admin-token".to_string(), "adm".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = TestServer::start(&dir.path().join("data"), 2, &args);
    let config = client_config(&trusted, &[b"http/1.1"]);

    let mut stream = connect(server.addr, config.clone()).expect("a TLS connection");
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    // Three requests in one write, then one more on the same connection.
    let request = "GET /objects/counter/tls/increment HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stream
        .write_all(request.repeat(3).as_bytes())
        .expect("write");
    for expected in ["1", "2", "3"] {
        assert_eq!(read_response(&mut stream), (200, expected.to_string()));
    }
    stream.write_all(request.as_bytes()).expect("write");
    assert_eq!(read_response(&mut stream), (200, "4".to_string()));
    // A body larger than the pump's chunks, both ways: a 100 kB session stored and read back.
    let data = "x".repeat(100_000);
    let body = format!("{{\"userId\":\"u\",\"data\":\"{data}\"}}");
    let post = format!(
        "POST /objects/sessions/big/sessions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(post.as_bytes()).expect("write");
    let (status, created) = read_response(&mut stream);
    assert_eq!(status, 201, "{created}");
    let id: serde_json::Value = serde_json::from_str(&created).expect("JSON");
    let get = format!(
        "GET /objects/sessions/big/sessions/{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        id["id"].as_str().expect("an id")
    );
    stream.write_all(get.as_bytes()).expect("write");
    let (status, session) = read_response(&mut stream);
    assert_eq!(status, 200);
    let session: serde_json::Value = serde_json::from_str(&session).expect("JSON");
    assert_eq!(session["data"], data.as_str());

    // An answer before the upload ends (413: too large) arrives whole, though the client is
    // still sending when the server closes (the pump lingers, as the loop does).
    let mut upload = connect(server.addr, config.clone()).expect("a TLS connection");
    let head = "PUT /objects/counter/big/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000000\r\n\r\n";
    upload.write_all(head.as_bytes()).expect("write");
    upload.write_all(&vec![b'x'; 256 * 1024]).expect("write");
    let (status, _) = read_response(&mut upload);
    assert_eq!(status, 413);

    // curl, as a user would.
    let cert = dir.path().join("cert.pem");
    let url = format!(
        "https://localhost:{}/objects/counter/tls/value",
        server.addr.port()
    );
    let output = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&cert)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", server.addr.port()),
        ])
        .arg(&url)
        .output()
        .expect("curl (install it: .ci/run does)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "4");

    // Plain HTTP to the TLS port gets no HTTP answer; a client that offers only h2 is refused.
    let mut plain = TcpStream::connect(server.addr).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    plain.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let h2_only = client_config(&trusted, &[b"h2"]);
    assert!(connect(server.addr, h2_only).is_err(), "h2 was negotiated");
    // Both counted (the server counts a failure just after its alert: ask until it shows).
    let counted = common::wait_until(Duration::from_secs(5), || {
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("write");
        let (_, metrics) = read_response(&mut stream);
        let failures: f64 = metrics
            .lines()
            .filter(|line| line.starts_with("stead_tls_handshake_failures_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        failures >= 2.0
    });
    assert!(
        counted,
        "the failed handshakes are not in stead_tls_handshake_failures_total"
    );

    // `stead bench` speaks https too.
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_stead"))
        .args([
            "bench",
            "--url",
            &url,
            "--scenario",
            "counter-hot",
            "--requests",
            "500",
        ])
        .args(["--connections", "4", "--warmup", "0s", "--tls-ca"])
        .arg(&cert)
        .output()
        .expect("stead bench");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("(500 ok)"), "{report}");

    // `stead admin` too, backups included.
    let admin = |command: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_stead"))
            .args(["admin", "--url", &url, "--token", "adm", "--tls-ca"])
            .arg(&cert)
            .args(command)
            .output()
            .expect("stead admin")
    };
    let output = admin(&["object", "counter", "tls"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains(" tls "), "{text}");
    let backup = dir.path().join("backup.stead");
    let output = admin(&["backup", "--out", &backup.to_string_lossy()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(std::fs::metadata(&backup).is_ok_and(|meta| meta.len() > 0));
    assert_eq!(server.stop(), Some(0));
}

/// Sends one masked text frame.
fn send_text(stream: &mut TlsStream, text: &str) {
    let mask = [7u8, 1, 2, 3];
    let mut frame = vec![0x81];
    assert!(text.len() < 126);
    frame.push(0x80 | text.len() as u8);
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
    stream.write_all(&frame).expect("send a frame");
}

/// Reads one unmasked text frame of under 64 KiB.
fn read_text(stream: &mut TlsStream) -> serde_json::Value {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).expect("a frame");
    assert_eq!(head[0], 0x81, "a final text frame");
    let length = match head[1] & 0x7f {
        126 => {
            let mut extended = [0u8; 2];
            stream.read_exact(&mut extended).expect("a length");
            u16::from_be_bytes(extended) as usize
        }
        short => short as usize,
    };
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).expect("a payload");
    serde_json::from_slice(&payload).expect("JSON")
}

/// Opens a WebSocket to the chat room `room` as `name` over TLS.
fn join(addr: SocketAddr, config: Arc<rustls::ClientConfig>, room: &str, name: &str) -> TlsStream {
    let mut stream = connect(addr, config).expect("a TLS connection");
    let upgrade = format!(
        "GET /objects/chat/{room}/websocket?name={name} HTTP/1.1\r\nHost: localhost\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(upgrade.as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("the upgrade answer");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

#[test]
fn a_websocket_chat_works_over_tls_from_both_cores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trusted = make_certificate(dir.path());
    let args = tls_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = TestServer::start(&dir.path().join("data"), 2, &args);
    let config = client_config(&trusted, &[b"http/1.1"]);
    // Sixteen members: the kernel spreads their connections over both cores, so some sockets
    // are handed to the room's core.
    let mut members: Vec<TlsStream> = (0..16)
        .map(|n| {
            let mut member = join(server.addr, config.clone(), "tlsroom", &format!("m{n}"));
            let joined = read_text(&mut member);
            assert_eq!(joined["type"], "join", "{joined}");
            member
        })
        .collect();
    // Each member's own join, then those of the members after it.
    for (n, member) in members.iter_mut().enumerate() {
        for later in n + 1..16 {
            let joined = read_text(member);
            assert_eq!(joined["name"], format!("m{later}"), "{joined}");
        }
    }
    send_text(&mut members[0], r#"{"type":"message","text":"over tls"}"#);
    for member in &mut members {
        let message = read_text(member);
        assert_eq!(
            (&message["type"], &message["name"], &message["text"]),
            (&"message".into(), &"m0".into(), &"over tls".into()),
            "{message}"
        );
    }
    // Some sockets were handed to the room's core (from /metrics, over TLS too).
    let mut stream = connect(server.addr, config).expect("a TLS connection");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let (status, metrics) = read_response(&mut stream);
    assert_eq!(status, 200);
    let handoffs: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("stead_websocket_handoffs_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(handoffs > 0.0, "{metrics}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn sighup_reads_the_certificate_again_and_a_silent_client_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = make_certificate(dir.path());
    let config_file = dir.path().join("stead.toml");
    std::fs::write(&config_file, "[http]\nidle_connection_timeout_ms = 500\n").expect("config");
    let mut args = tls_args(dir.path());
    args.push("--config".to_string());
    args.push(config_file.to_string_lossy().into_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = TestServer::start(&dir.path().join("data"), 1, &args);
    assert!(connect(server.addr, client_config(&first, &[])).is_ok());

    // A client that connects and never starts the handshake is closed.
    let mut silent = TcpStream::connect(server.addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let began = std::time::Instant::now();
    let mut byte = [0u8; 1];
    assert!(matches!(silent.read(&mut byte), Ok(0) | Err(_)));
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );

    // A new pair on disk is used once the server is told: new connections trust it, and the
    // old certificate no longer passes.
    let second = make_certificate(dir.path());
    assert!(connect(server.addr, client_config(&second, &[])).is_err());
    // SAFETY: a plain kill(2) of the child's pid.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGHUP) },
        0
    );
    let switched = common::wait_until(Duration::from_secs(10), || {
        connect(server.addr, client_config(&second, &[])).is_ok()
    });
    assert!(switched, "the new certificate is not served after SIGHUP");
    assert!(connect(server.addr, client_config(&first, &[])).is_err());
    // A broken pair on SIGHUP: the server keeps the one it has.
    std::fs::write(dir.path().join("key.pem"), "not a key").expect("write");
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGHUP) },
        0
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(connect(server.addr, client_config(&second, &[])).is_ok());
    // A good pair after it is read (so the broken one was read and refused, not skipped).
    let third = make_certificate(dir.path());
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGHUP) },
        0
    );
    let switched = common::wait_until(Duration::from_secs(10), || {
        connect(server.addr, client_config(&third, &[])).is_ok()
    });
    assert!(
        switched,
        "a good certificate after a broken one is not served"
    );
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_missing_or_bad_certificate_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certificate(dir.path());
    std::fs::write(dir.path().join("key.pem"), "-----BEGIN PRIVATE KEY-----\n").expect("write");
    let args = tls_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = common::refused_start(&dir.path().join("data"), &args);
    assert!(
        stderr.contains("key.pem") && stderr.contains("private key"),
        "{stderr}"
    );
    std::fs::remove_file(dir.path().join("cert.pem")).expect("remove");
    let stderr = common::refused_start(&dir.path().join("data"), &args);
    assert!(stderr.contains("cert.pem"), "{stderr}");
}
