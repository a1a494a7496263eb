//! A local HTTP upstream for the tests of outgoing requests: answers each request with what a
//! closure gives for its path, one thread per connection, keeping connections open, and counts
//! connections and requests.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A running upstream.
pub struct Upstream {
    pub address: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Requests read so far.
    pub requests: Arc<AtomicUsize>,
}

/// Starts an upstream whose answer to a request for `path` is `answer(path, n)`, the whole
/// response's bytes, `n` counting this request (the first is 1). The closure may sleep.
pub fn start(answer: impl Fn(&str, usize) -> Vec<u8> + Send + Sync + 'static) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an upstream");
    let address = listener.local_addr().expect("upstream address");
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (accepted, counted, answer) = (connections.clone(), requests.clone(), Arc::new(answer));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (counted, answer) = (counted.clone(), answer.clone());
            std::thread::spawn(move || serve(stream, &counted, &*answer));
        }
    });
    Upstream {
        address,
        connections,
        requests,
    }
}

/// Answers the requests of one connection (no bodies are read: the tests send none).
fn serve(stream: TcpStream, counted: &AtomicUsize, answer: &dyn Fn(&str, usize) -> Vec<u8>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        let number = counted.fetch_add(1, Ordering::SeqCst) + 1;
        if stream.write_all(&answer(&path, number)).is_err() {
            return;
        }
    }
}
