//! Real `nats-server` processes with JetStream for the cluster tests, on free loopback ports,
//! each with a store directory of its own; stopped (SIGKILL) when dropped.
//!
//! A machine without `nats-server` skips those tests with a message, unless
//! `STEAD_REQUIRE_NATS=1` (as `.ci/run` sets after installing it) makes that a failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One nats-server process.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// Its monitoring port (HTTP: `/jsz`).
    pub monitor_port: u16,
    /// The address it listens on for clients.
    host: String,
    store: PathBuf,
    log: PathBuf,
    /// Arguments past the client port and store (a cluster's routes).
    extra: Vec<String>,
}

/// The nats-server binary, or None (after saying why) when the test should be skipped.
pub fn binary(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        let required = std::env::var_os("STEAD_REQUIRE_NATS").is_some_and(|value| value == "1");
        assert!(
            !required,
            "{test}: STEAD_REQUIRE_NATS=1 but nats-server is not installed"
        );
        eprintln!("{test}: SKIPPED: nats-server is not installed (apt-get install nats-server)");
    }
    found
}

/// A free loopback port (free when asked; the server binds it right after), never one this
/// process handed out before: two asked for in a row could otherwise be the same.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl NatsServer {
    /// Starts one server with JetStream, its store in `dir`.
    pub fn start(binary: &Path, dir: &Path) -> NatsServer {
        NatsServer::start_with(binary, dir, "127.0.0.1", free_port(), Vec::new())
    }

    /// Starts one server with JetStream listening on `host` (an address of this machine).
    pub fn start_on(binary: &Path, dir: &Path, host: &str) -> NatsServer {
        NatsServer::start_with(binary, dir, host, free_port(), Vec::new())
    }

    fn start_with(
        binary: &Path,
        dir: &Path,
        host: &str,
        port: u16,
        extra: Vec<String>,
    ) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port,
            monitor_port: free_port(),
            host: host.to_string(),
            store: dir.join(format!("nats-{port}")),
            log: dir.join(format!("nats-{port}.log")),
            extra,
        };
        server.restart(binary);
        server
    }

    /// Three servers routed into one JetStream cluster; returns once it has a metadata leader.
    pub fn cluster(binary: &Path, dir: &Path) -> Vec<NatsServer> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let servers: Vec<NatsServer> = ports
            .iter()
            .enumerate()
            .map(|(index, (client, route))| {
                let routes: Vec<String> = ports
                    .iter()
                    .filter(|(other, _)| other != client)
                    .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
                    .collect();
                let extra = vec![
                    "-n".to_string(),
                    format!("stead-test-{index}"),
                    "--cluster_name".to_string(),
                    "stead-test".to_string(),
                    "--cluster".to_string(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".to_string(),
                    routes.join(","),
                ];
                NatsServer::start_with(binary, dir, "127.0.0.1", *client, extra)
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if servers.iter().any(|server| {
                std::fs::read_to_string(&server.log)
                    .unwrap_or_default()
                    .contains("JetStream cluster new metadata leader")
            }) {
                return servers;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the NATS cluster elected no metadata leader");
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Starts the server again on the same port and store (after `kill`).
    pub fn restart(&mut self, binary: &Path) {
        let log = std::fs::File::create(&self.log).expect("nats log");
        let child = Command::new(binary)
            .args(["-js", "-a", &self.host, "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string(), "-sd"])
            .arg(&self.store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("Server is ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "nats-server did not start: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Messages the stream `stream` holds now, from the monitoring endpoint.
    pub fn stream_messages(&self, stream: &str) -> u64 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.monitor_port));
        let (status, body) = super::load::try_get(
            addr,
            "/jsz?accounts=true&streams=true",
            Duration::from_secs(10),
        )
        .expect("the monitoring endpoint");
        assert_eq!(status, 200, "{body}");
        let jsz: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .find(|detail| detail["name"] == stream)
            .and_then(|detail| detail["state"]["messages"].as_u64())
            .unwrap_or_else(|| panic!("no stream {stream} in {body}"))
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publishes one message with `headers` to `subject` on the server at `port`, speaking the
/// NATS protocol by hand (a core publish: no acknowledgement is asked for), and returns once
/// the server answered the PING after it (so the message was processed).
pub fn publish_raw(port: u16, subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to NATS");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("INFO");
    assert!(line.starts_with("INFO"), "{line}");
    let mut header_block = String::from("NATS/1.0\r\n");
    for (name, value) in headers {
        header_block.push_str(&format!("{name}: {value}\r\n"));
    }
    header_block.push_str("\r\n");
    let mut message = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}}\r\n\
         HPUB {subject} {} {}\r\n{header_block}",
        header_block.len(),
        header_block.len() + payload.len()
    )
    .into_bytes();
    message.extend_from_slice(payload);
    message.extend_from_slice(b"\r\nPING\r\n");
    (&stream).write_all(&message).expect("publish");
    loop {
        line.clear();
        reader.read_line(&mut line).expect("an answer");
        assert!(!line.starts_with("-ERR"), "{line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}
