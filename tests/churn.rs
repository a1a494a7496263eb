//! Connection churn: many short connections must leave nothing behind on the core that served
//! them. Each accept once left two wakers with the shutdown signal until shutdown, so memory
//! grew per connection and the core panicked after ~32k connections (a waker's reference
//! count overflowed). The long soak (≥ 200k connections, RSS over time) is in
//! `scripts/soak-connections.sh`; this test checks the bound the leak broke.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::TestServer;

/// Short connections per run: enough to show growth (two leaked waiters each), small enough
/// for the default test run.
const CONNECTIONS: usize = 4_000;

/// One request on its own connection, closed by the server (`Connection: close`).
fn one_short_connection(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read");
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
}

#[test]
fn short_connections_leave_no_shutdown_waiters_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path(), 2, &[]);
    // Each core's accept loop, its alarm driver and the connection asking for /metrics.
    let before = server.metric_sum("stead_shutdown_waiters");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                for _ in 0..CONNECTIONS / 4 {
                    one_short_connection(addr);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    // Every short connection is closed: only the same standing waiters may remain.
    let waiters = server.metric_per_core("stead_shutdown_waiters");
    assert_eq!(waiters.len(), 2, "one series per core");
    let after: f64 = waiters.iter().sum();
    assert!(
        after <= before,
        "{after} shutdown waiters after {CONNECTIONS} connections, {before} before"
    );
    assert_eq!(server.stop(), Some(0));
}
