//! WebSocket fan-out and idle-socket memory, against the real `stead serve` binary.
//!
//! - Fan-out: one `chat` room with 1, 100 and 1,000 members on `--cores 1`; one member sends
//!   messages carrying their send time; every member reads everything. Prints messages
//!   delivered per second and the p50/p99 delivery latency (send → read by a member), twice:
//!   flooded (the sender sends as fast as it can, so latency includes the queue behind it) and
//!   paced (one message every `PACED_INTERVAL`, so latency is that of one broadcast); and the
//!   server's CPU time (user + system) per delivery. The clients are tasks of one glommio
//!   executor of the bench, so what is measured is the server, not threads of the bench
//!   waiting their turn for the CPU.
//! - Idle sockets: 10,000 sockets in rooms of 100, with `idle_evict_ms = 200`; once the
//!   server's `/metrics` shows every room evicted and every socket open, prints the server's
//!   resident memory per open socket, and the kernel's TCP buffer memory per socket
//!   (`/proc/net/sockstat`, both ends of the loopback connections).
//!
//! Run with `cargo bench --bench websocket_fanout` (harness = false; plain timing, not
//! criterion, since each figure is one run of a whole server).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream as GlommioTcpStream;
use glommio::{LocalExecutorBuilder, Placement};

/// Messages of a flooded run.
const MESSAGES: usize = 2_000;
/// Messages of a paced run, and the time between two of them.
const PACED_MESSAGES: usize = 200;
const PACED_INTERVAL: Duration = Duration::from_millis(50);
/// How long the idle-socket run waits for every room to hibernate.
const HIBERNATE_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    for members in [1usize, 100, 1000] {
        fan_out(members, MESSAGES, None);
        fan_out(members, PACED_MESSAGES, Some(PACED_INTERVAL));
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

/// The upgrade request for `path`.
fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A blocking connection for the idle-socket run: upgraded, with its frame reader.
fn connect(addr: SocketAddr, path: &str) -> (TcpStream, FrameReader) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(upgrade_request(path).as_bytes())
        .expect("write");
    let mut frames = FrameReader::default();
    let mut chunk = [0u8; 4096];
    while !frames.take_head() {
        let read = stream.read(&mut chunk).expect("handshake");
        assert!(read > 0, "closed during the handshake");
        frames.buffer.extend_from_slice(&chunk[..read]);
    }
    (stream, frames)
}

/// Server frames read from a byte stream: what was read and not yet parsed.
#[derive(Default)]
struct FrameReader {
    buffer: Vec<u8>,
}

impl FrameReader {
    /// Drops a complete 101 response head from the front of the buffer; false until there is
    /// one.
    fn take_head(&mut self) -> bool {
        let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        assert!(
            self.buffer.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&self.buffer[..end])
        );
        self.buffer.drain(..end + 4);
        true
    }

    /// The payload of the frame at the front of the buffer, if it is complete.
    fn take_frame(&mut self) -> Option<Vec<u8>> {
        let length_byte = *self.buffer.get(1)? & 0x7f;
        let (length, header) = match length_byte {
            126 => (
                u16::from_be_bytes(self.buffer.get(2..4)?.try_into().ok()?) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(self.buffer.get(2..10)?.try_into().ok()?) as usize,
                10,
            ),
            length => (length as usize, 2),
        };
        let payload = self.buffer.get(header..header + length)?.to_vec();
        self.buffer.drain(..header + length);
        Some(payload)
    }

    fn next_blocking(&mut self, stream: &mut TcpStream) -> Vec<u8> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(payload) = self.take_frame() {
                return payload;
            }
            let read = stream.read(&mut chunk).expect("read");
            assert!(read > 0, "closed by the server");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    async fn next(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(payload) = self.take_frame() {
                return payload;
            }
            let read = stream.read(&mut chunk).await.expect("read");
            assert!(read > 0, "closed by the server");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// One masked text frame (mask 0, so the payload goes as it is).
fn text_frame(text: &str) -> Vec<u8> {
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
    frame
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

/// One room's run: the clients live on one glommio executor of the bench (io_uring, one
/// task per member), so a broadcast's deliveries are read as they arrive rather than by
/// threads waiting their turn for the CPU.
fn fan_out(members: usize, messages: usize, interval: Option<Duration>) {
    let (mut child, addr, _dir) = start_server("");
    let room = format!("/objects/chat/fan{members}/websocket?name=m");
    let server = child.id();
    let (mut latencies, elapsed, server_cpu) = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .ring_depth(1024)
        .spawn(move || run_room(addr, room, members, messages, interval, server))
        .expect("bench executor")
        .join()
        .expect("bench executor ended");
    latencies.sort_unstable();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let mode = match interval {
        None => "flooded".to_string(),
        Some(interval) => format!("paced every {} ms", interval.as_millis()),
    };
    let expected = members * messages;
    if latencies.len() < expected {
        println!(
            "websocket fan-out: {members} members, {messages} messages {mode}: {} of {expected} delivered; members furthest behind were closed with 1013 (send_queue_bytes_per_core_max)",
            latencies.len()
        );
    }
    println!(
        "websocket fan-out: {members} members, {messages} messages {mode}: {:.0} deliveries/s, latency p50 {} µs, p99 {} µs, server CPU {:.1} µs per delivery ({:.1} of it system)",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        (server_cpu.user + server_cpu.system).as_secs_f64() * 1e6 / latencies.len() as f64,
        server_cpu.system.as_secs_f64() * 1e6 / latencies.len() as f64
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Connects `members` clients to `room`, lets the first send `messages` (each `interval`
/// apart, or all at once), and returns every delivery's latency and the time until the last.
async fn run_room(
    addr: SocketAddr,
    room: String,
    members: usize,
    messages: usize,
    interval: Option<Duration>,
    server: u32,
) -> (Vec<u64>, Duration, CpuTime) {
    let mut clients = Vec::with_capacity(members);
    for _ in 0..members {
        let mut stream = GlommioTcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(upgrade_request(&room).as_bytes())
            .await
            .expect("write");
        let mut frames = FrameReader::default();
        let mut chunk = [0u8; 4096];
        while !frames.take_head() {
            let read = stream.read(&mut chunk).await.expect("handshake");
            assert!(read > 0, "closed during the handshake");
            frames.buffer.extend_from_slice(&chunk[..read]);
        }
        clients.push((stream, frames));
    }
    // Every member reads its own join and those of the members after it.
    for (index, (stream, frames)) in clients.iter_mut().enumerate() {
        for _ in index..members {
            frames.next(stream).await;
        }
    }
    let mut clients = clients.into_iter();
    let (sender, sender_frames) = clients.next().expect("a sender");
    let (sender_read, mut sender_write) = futures_lite::io::split(sender);
    let mut readers = vec![glommio::spawn_local(read_messages(
        sender_read,
        sender_frames,
        messages,
    ))];
    for (stream, frames) in clients {
        readers.push(glommio::spawn_local(read_messages(
            stream, frames, messages,
        )));
    }
    let began = Instant::now();
    let cpu_before = cpu_time(server);
    for index in 0..messages {
        if let Some(interval) = interval {
            let due = began + interval * index as u32;
            glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
        }
        let text = format!(r#"{{"type":"message","text":"{}"}}"#, now_micros());
        sender_write
            .write_all(&text_frame(&text))
            .await
            .expect("send");
    }
    let mut latencies = Vec::with_capacity(members * messages);
    for reader in readers {
        latencies.extend(reader.await);
    }
    let elapsed = began.elapsed();
    (latencies, elapsed, cpu_time(server).since(cpu_before))
}

/// CPU time a process has used, user and system, from `/proc/{pid}/stat`.
fn cpu_time(pid: u32) -> CpuTime {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // SAFETY: sysconf reads a constant of the system.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let field = |index: usize| -> Duration {
        let ticks: u64 = fields
            .get(index)
            .and_then(|ticks| ticks.parse().ok())
            .unwrap_or(0);
        Duration::from_micros(ticks * 1_000_000 / ticks_per_second)
    };
    CpuTime {
        user: field(11),
        system: field(12),
    }
}

/// CPU time of a process, as `/proc/{pid}/stat` counts it (in clock ticks, usually 10 ms).
#[derive(Clone, Copy)]
struct CpuTime {
    user: Duration,
    system: Duration,
}

impl CpuTime {
    fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// Reads `messages` broadcasts on one member's connection; their latencies.
async fn read_messages(
    mut stream: impl AsyncRead + Unpin,
    mut frames: FrameReader,
    messages: usize,
) -> Vec<u64> {
    let mut latencies = Vec::with_capacity(messages);
    for _ in 0..messages {
        let payload = frames.next(&mut stream).await;
        // A close with 1013 (a broadcast is JSON, so it starts with `{`): the core's send
        // budget over all sockets (`send_queue_bytes_per_core_max`) was full and this member
        // was furthest behind.
        if payload.starts_with(&1013u16.to_be_bytes()) {
            break;
        }
        latencies.push(latency_of(&payload));
    }
    latencies
}

/// Delivery latency of one broadcast chat message, from the send time in its text.
fn latency_of(payload: &[u8]) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(payload).unwrap_or_else(|error| {
        panic!(
            "a broadcast that is not JSON ({error}): {:?}",
            String::from_utf8_lossy(payload)
        )
    });
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

/// The body of `GET path` on a fresh connection.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of an unlabelled-but-core metric (one core), from `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{core=\"0\"}} ");
    http_get(addr, "/metrics")
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
}

/// Bytes the kernel holds in TCP buffers, machine-wide (`mem` is in pages).
fn kernel_tcp_buffer_bytes() -> u64 {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages: u64 = sockstat
        .lines()
        .find_map(|line| line.strip_prefix("TCP: "))
        .and_then(|fields| {
            let fields: Vec<&str> = fields.split_whitespace().collect();
            let at = fields.iter().position(|field| *field == "mem")?;
            fields.get(at + 1)?.parse().ok()
        })
        .unwrap_or(0);
    pages * 4096
}

fn idle_memory(sockets: usize, per_room: usize) {
    // The sockets hold connection slots; leave room for the scrapes beside them.
    let (mut child, addr, _dir) =
        start_server("[objects]\nidle_evict_ms = 200\n[http]\nconnections_per_core_max = 20000\n");
    assert_eq!(http_get(addr, "/healthz"), "ok");
    let before = resident_bytes(child.id());
    let kernel_before = kernel_tcp_buffer_bytes();
    let mut open = Vec::with_capacity(sockets);
    for index in 0..sockets {
        let room = format!("/objects/chat/idle{}/websocket?name=m", index / per_room);
        open.push(connect(addr, &room));
    }
    // Read the joins every member was sent (its own and those after it in its room), so no
    // unread message sits in a kernel buffer.
    for (index, (socket, frames)) in open.iter_mut().enumerate() {
        for _ in index % per_room..per_room {
            frames.next_blocking(socket);
        }
    }
    // Wait until every room is evicted while all its sockets stay open.
    let deadline = Instant::now() + HIBERNATE_TIMEOUT;
    loop {
        let active = metric(addr, "stead_active_objects");
        let open_sockets = metric(addr, "stead_websockets_open");
        if active == Some(0.0) && open_sockets == Some(sockets as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rooms did not hibernate: active {active:?}, sockets {open_sockets:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = resident_bytes(child.id());
    let kernel_after = kernel_tcp_buffer_bytes();
    println!(
        "websocket idle sockets: {sockets} open on hibernated rooms (0 rooms in memory): server RSS {} MiB → {} MiB = {} bytes per socket; kernel TCP buffers {} bytes per socket",
        before / (1024 * 1024),
        after / (1024 * 1024),
        after.saturating_sub(before) / sockets as u64,
        kernel_after.saturating_sub(kernel_before) / sockets as u64
    );
    let _ = child.kill();
    let _ = child.wait();
}
