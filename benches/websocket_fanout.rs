//! WebSocket fan-out and idle-socket memory, against the real `stead serve` binary.
//!
//! - Fan-out: one `chat` room with 1, 100 and 1,000 members on `--cores 1`; one member sends
//!   messages carrying their send time; every member reads everything. Prints messages
//!   delivered per second and the p50/p99 delivery latency (send → read by a member).
//! - Idle sockets: 10,000 sockets in rooms of 100, with `idle_evict_ms = 200` so every room
//!   hibernates; prints the server's resident memory per open socket (kernel socket buffers are
//!   not in it).
//!
//! Run with `cargo bench --bench websocket_fanout` (harness = false; plain timing, not
//! criterion, since each figure is one run of a whole server).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MESSAGES: usize = 2_000;

fn main() {
    for members in [1usize, 100, 1000] {
        fan_out(members);
    }
    idle_memory(10_000, 100);
}

fn start_server(config: &str) -> (Child, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("stead.toml");
    std::fs::write(&config_path, config).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn stead");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).to_string();
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("address");
    (child, addr.parse().expect("address"), dir)
}

fn connect(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("handshake");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

fn send_text(stream: &mut TcpStream, text: &str) {
    let mut frame = vec![0x81u8];
    let length = text.len();
    if length < 126 {
        frame.push(0x80 | length as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(length as u16).to_be_bytes());
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(text.as_bytes());
    stream.write_all(&frame).expect("send");
}

/// Reads one frame's payload.
fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).expect("frame");
    let length = match header[1] & 0x7f {
        126 => {
            let mut extended = [0u8; 2];
            stream.read_exact(&mut extended).expect("length");
            u16::from_be_bytes(extended) as usize
        }
        127 => {
            let mut extended = [0u8; 8];
            stream.read_exact(&mut extended).expect("length");
            u64::from_be_bytes(extended) as usize
        }
        length => length as usize,
    };
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).expect("payload");
    payload
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

fn fan_out(members: usize) {
    let (mut child, addr, _dir) = start_server("");
    let room = format!("/objects/chat/fan{members}/websocket?name=m");
    let mut sockets: Vec<TcpStream> = (0..members).map(|_| connect(addr, &room)).collect();
    // Every member reads the joins of those after it.
    for (index, socket) in sockets.iter_mut().enumerate() {
        for _ in index..members {
            read_frame(socket);
        }
    }
    // The members other than the sender, and the sender.
    let start = Arc::new(std::sync::Barrier::new(members));
    let mut readers = Vec::new();
    for mut socket in sockets.drain(1..) {
        let start = start.clone();
        readers.push(std::thread::spawn(move || {
            start.wait();
            (0..MESSAGES)
                .map(|_| latency_of(&read_frame(&mut socket)))
                .collect::<Vec<u64>>()
        }));
    }
    let mut sender = sockets.pop().expect("sender");
    let mut sender_reader = sender.try_clone().expect("clone");
    let own = std::thread::spawn(move || {
        (0..MESSAGES)
            .map(|_| latency_of(&read_frame(&mut sender_reader)))
            .collect::<Vec<u64>>()
    });
    start.wait();
    let began = Instant::now();
    for _ in 0..MESSAGES {
        send_text(
            &mut sender,
            &format!(r#"{{"type":"message","text":"{}"}}"#, now_micros()),
        );
    }
    let mut latencies = own.join().expect("reader");
    for reader in readers {
        latencies.extend(reader.join().expect("reader"));
    }
    let elapsed = began.elapsed();
    latencies.sort_unstable();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "websocket fan-out: {members} members, {MESSAGES} messages: {:.0} deliveries/s, latency p50 {} µs, p99 {} µs",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99)
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Delivery latency of one broadcast chat message, from the send time in its text.
fn latency_of(payload: &[u8]) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(payload).expect("JSON");
    let sent: u64 = value["text"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .expect("send time");
    now_micros().saturating_sub(sent)
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn idle_memory(sockets: usize, per_room: usize) {
    let (mut child, addr, _dir) = start_server("[objects]\nidle_evict_ms = 200\n");
    let mut probe = TcpStream::connect(addr).expect("connect");
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
        .expect("write");
    let mut reply = [0u8; 256];
    let _ = probe.read(&mut reply).expect("read");
    drop(probe);
    let before = resident_bytes(child.id());
    let mut open = Vec::with_capacity(sockets);
    for index in 0..sockets {
        let room = format!("/objects/chat/idle{}/websocket?name=m", index / per_room);
        open.push(connect(addr, &room));
    }
    // Let every room hibernate (evicted after 200 ms idle; the sweep runs every 50 ms).
    std::thread::sleep(Duration::from_secs(2));
    let after = resident_bytes(child.id());
    println!(
        "websocket idle sockets: {sockets} open on hibernated rooms: server RSS {} MiB → {} MiB = {} bytes per socket",
        before / (1024 * 1024),
        after / (1024 * 1024),
        after.saturating_sub(before) / sockets as u64
    );
    let _ = child.kill();
    let _ = child.wait();
}
