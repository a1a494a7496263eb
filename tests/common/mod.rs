//! Shared by the black-box tests: start the real `stead` binary on 127.0.0.1:0 with a temp data
//! directory, and talk HTTP/1.1 to it over real sockets.

#![allow(dead_code)]

pub mod browser;
pub mod load;
pub mod nats;
pub mod netns;
pub mod upstream;
pub mod ws;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for the server to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `stead serve` child process.
pub struct TestServer {
    /// The child process; killed on drop if still running.
    pub child: Child,
    /// The address it printed.
    pub addr: SocketAddr,
    /// Its data directory (owned by the test).
    pub data_dir: PathBuf,
}

impl TestServer {
    /// Starts `stead serve` on a free port with `cores` cores and extra arguments.
    pub fn start(data_dir: &Path, cores: usize, extra: &[&str]) -> TestServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stead"));
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--cores")
            .arg(cores.to_string())
            .args(extra);
        TestServer::spawn(command, data_dir)
    }

    /// Runs `command` (a server that prints `listening on ADDR` on stdout) and waits for its
    /// address. `data_dir` is where the test expects its data.
    pub fn spawn(mut command: Command, data_dir: &Path) -> TestServer {
        let mut child = command
            .env("RUST_LOG", "warn,stead=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the server");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = sender.send(addr);
                        sent = true;
                    }
                }
            }
        });
        let printed = receiver.recv_timeout(START_TIMEOUT);
        let addr = match printed.as_deref().map(str::parse) {
            Ok(Ok(addr)) => addr,
            other => {
                // Never leave a server behind a failed start.
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not print its address: {other:?}");
            }
        };
        TestServer {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The values of a per-core metric of `/metrics`, one per core.
    pub fn metric_per_core(&self, name: &str) -> Vec<f64> {
        let text = self.client().get("/metrics").text();
        let prefix = format!("{name}{{");
        text.lines()
            .filter(|line| line.starts_with(&prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .collect()
    }

    /// The sum over the cores of a per-core metric of `/metrics`.
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.metric_per_core(name).iter().sum()
    }

    /// SIGTERM, then waits; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        signal(&self.child, libc::SIGTERM);
        let status = self.child.wait().expect("wait");
        status.code()
    }

    /// SIGTERM without waiting: shutdown begins, the test watches what clients see.
    pub fn terminate(&self) {
        signal(&self.child, libc::SIGTERM);
    }

    /// SIGKILL, then waits.
    pub fn kill(mut self) {
        signal(&self.child, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) with the pid of a child we own and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// One HTTP response as the tests see it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A keep-alive HTTP/1.1 client on one connection.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr, Duration::from_secs(30)).expect("connect")
    }

    /// Connects within `timeout`, which also bounds each read and write.
    pub fn try_connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    /// One request and its answer, or why none came (the connection failed or closed).
    pub fn try_request(&mut self, method: &str, path: &str) -> Result<Reply, String> {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n");
        self.reader
            .get_mut()
            .write_all(head.as_bytes())
            .map_err(|error| error.to_string())?;
        self.read_reply()
            .ok_or_else(|| "no answer: the connection failed or closed".to_string())
    }

    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        self.request_with(method, path, &[], body)
    }

    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        self.send_request(method, path, headers, body);
        self.read_reply().expect("reply")
    }

    pub fn send_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes);
    }

    pub fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, b"")
    }

    /// A chunked body (no trailers).
    fn read_chunks(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).ok()?;
            let size = usize::from_str_radix(line.trim(), 16).ok()?;
            if size == 0 {
                self.reader.read_line(&mut line).ok()?;
                return Some(body);
            }
            // The chunk and its CRLF.
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk[..size]);
        }
    }

    /// Reads one response; None if the server closed the connection first.
    pub fn read_reply(&mut self) -> Option<Reply> {
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line).ok()? == 0 {
            return None;
        }
        let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':')?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let chunked = headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked {
            self.read_chunks()?
        } else {
            let length: usize = headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body).ok()?;
            body
        };
        Some(Reply {
            status,
            headers,
            body,
        })
    }

    /// True when the server has closed the connection (reads EOF or reset).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
    }
}

/// Runs `stead serve --listen 127.0.0.1:0 --cores 1 --data-dir DATA_DIR ARGS…` until it exits,
/// as a start that must be refused does, and returns its stderr; panics if it succeeded.
pub fn refused_start(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("run stead");
    assert!(!output.status.success(), "the server started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
