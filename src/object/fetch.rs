//! Outgoing HTTP from objects ([`ObjectContext::fetch`]): an HTTP/1.1 client on the object's
//! core, over glommio sockets, with a pool of kept-alive connections per core and host.
//!
//! Only `http://` URLs: there is no TLS (`https://` is refused with [`FetchError::Https`]).
//! Every request is checked against `[fetch] allow_hosts` first, by host name (or address)
//! and port, and then every address the name resolves to must be public (not loopback,
//! private, link-local, …) unless the list names that address itself: a listed name that
//! resolves into the server's own network is refused ([`FetchError::AddressDenied`]). Names
//! are resolved on the core's blocking thread (glommio's), not on the core itself, at most
//! `LOOKUPS_IN_FLIGHT_MAX` at once.
//! Redirects are answered as they are unless `redirects_max` > 0; each hop is checked again.
//!
//! [`ObjectContext::fetch`]: super::ObjectContext::fetch

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::config::FetchSettings;
use crate::http::{Method, Response};

/// A request to another server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub method: Method,
    /// `http://host[:port]/path?query`.
    pub url: String,
    /// Headers to send; `Host`, `Content-Length`, `Connection` and `Transfer-Encoding` are the
    /// client's own and are dropped from here.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FetchRequest {
    pub fn get(url: impl Into<String>) -> FetchRequest {
        FetchRequest {
            method: Method::Get,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// Why an outgoing request got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchError {
    InvalidUrl {
        url: String,
        reason: &'static str,
    },
    /// `https://`: this build has no TLS.
    Https,
    /// The host (and port) is not in `[fetch] allow_hosts`.
    HostDenied {
        host: String,
        port: u16,
    },
    /// The name resolves to an address in a private range the allow list does not name.
    AddressDenied {
        host: String,
        address: IpAddr,
    },
    Resolve {
        host: String,
        reason: String,
    },
    Connect {
        address: SocketAddr,
        reason: String,
    },
    /// No answer within `[fetch] timeout_ms`.
    Timeout {
        timeout_ms: u64,
    },
    Io {
        reason: String,
    },
    /// The answer's body passed `[fetch] response_bytes_max`.
    ResponseTooLarge {
        response_bytes_max: usize,
    },
    MalformedResponse {
        reason: String,
    },
    /// More redirects than `[fetch] redirects_max`.
    TooManyRedirects {
        redirects_max: u32,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::InvalidUrl { url, reason } => write!(f, "invalid URL {url:?}: {reason}"),
            FetchError::Https => f.write_str("https:// is not supported (stead has no TLS client); use http://"),
            FetchError::HostDenied { host, port } => write!(
                f,
                "{host}:{port} is not in [fetch] allow_hosts"
            ),
            FetchError::AddressDenied { host, address } => write!(
                f,
                "{host} resolves to {address}, a non-public address that [fetch] allow_hosts does not name"
            ),
            FetchError::Resolve { host, reason } => write!(f, "cannot resolve {host}: {reason}"),
            FetchError::Connect { address, reason } => {
                write!(f, "cannot connect to {address}: {reason}")
            }
            FetchError::Timeout { timeout_ms } => {
                write!(f, "no answer within [fetch] timeout_ms ({timeout_ms} ms)")
            }
            FetchError::Io { reason } => write!(f, "the connection failed: {reason}"),
            FetchError::ResponseTooLarge { response_bytes_max } => write!(
                f,
                "the answer is larger than [fetch] response_bytes_max ({response_bytes_max} bytes)"
            ),
            FetchError::MalformedResponse { reason } => write!(f, "a malformed answer: {reason}"),
            FetchError::TooManyRedirects { redirects_max } => {
                write!(f, "more than [fetch] redirects_max ({redirects_max}) redirects")
            }
        }
    }
}

impl std::error::Error for FetchError {}

/// An upstream that failed or was refused is a bad gateway (502), a slow one 504.
impl From<FetchError> for super::ObjectError {
    fn from(error: FetchError) -> super::ObjectError {
        let status = match error {
            FetchError::Timeout { .. } => 504,
            _ => 502,
        };
        super::ObjectError::with_status(status, error.to_string())
    }
}

/// A parsed `http://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Url {
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    target: String,
}

fn parse_url(url: &str) -> Result<Url, FetchError> {
    let invalid = |reason| FetchError::InvalidUrl {
        url: url.chars().take(200).collect(),
        reason,
    };
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(FetchError::Https);
    }
    if !lower.starts_with("http://") {
        return Err(invalid("only http:// URLs"));
    }
    // The first 7 bytes are ASCII (checked above), so this is a character boundary.
    let rest = &url[7..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(invalid("no user information in URLs"));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let close = inner
            .find(']')
            .ok_or_else(|| invalid("an unclosed [ in the host"))?;
        let after = &inner[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(invalid("bytes after the ] of the host")),
        };
        let host = &inner[..close];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid(
                "brackets around something that is not an IPv6 address",
            ));
        }
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let valid_host = |byte: u8| byte.is_ascii_alphanumeric() || b".-_:".contains(&byte);
    if host.is_empty() || !host.bytes().all(valid_host) {
        return Err(invalid("a missing or malformed host"));
    }
    let port = match port {
        None => 80,
        Some(port) if !port.is_empty() && port.bytes().all(|byte| byte.is_ascii_digit()) => {
            port.parse().map_err(|_| invalid("a malformed port"))?
        }
        Some(_) => return Err(invalid("a malformed port")),
    };
    let tail = tail.split('#').next().unwrap_or("");
    let target = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    if target.bytes().any(|byte| byte <= b' ' || byte == 0x7f) {
        return Err(invalid("spaces or control bytes in the path"));
    }
    Ok(Url {
        host: host.to_ascii_lowercase(),
        port,
        target,
    })
}

/// Whether an address is one an object may reach without the allow list naming it: not
/// loopback, private, link-local, shared (CGNAT), reserved, unspecified, multicast,
/// broadcast or for documentation, nor an IPv6 address that carries such an IPv4 address.
fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19)))
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |high: u16, low: u16| {
                let [a, b] = high.to_be_bytes();
                let [c, d] = low.to_be_bytes();
                IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            };
            // Addresses that carry an IPv4 address are judged by it: mapped (::ffff:a.b.c.d),
            // compatible (::a.b.c.d), NAT64 (64:ff9b::/96 and 64:ff9b:1::/48), 6to4 (2002::/16).
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            if segments[..6] == [0; 6] && !(v6.is_loopback() || v6.is_unspecified()) {
                return is_public(embedded(segments[6], segments[7]));
            }
            if segments[..2] == [0x64, 0xff9b] {
                return is_public(embedded(segments[6], segments[7]));
            }
            if segments[0] == 0x2002 {
                return is_public(embedded(segments[1], segments[2]));
            }
            let first = segments[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || (first == 0x2001 && segments[1] == 0x0db8)
                || (first == 0x64 && segments[1] == 0xff9b))
        }
    }
}

/// A kept-alive connection's key: host, port and the address it went to.
type PoolKey = (String, u16, SocketAddr);

/// The outgoing HTTP client of one core.
pub struct FetchClient {
    settings: FetchSettings,
    /// A client for the cluster's own nodes (addresses from the cluster's `owner` key, not
    /// from an object): no allow list, and private addresses are fine.
    peers: bool,
    /// Idle kept-alive connections, at most `idle_connections_per_host` per key and
    /// `IDLE_CONNECTIONS_PER_CORE_MAX` in all; a key with none left is removed.
    idle: RefCell<HashMap<PoolKey, Vec<TcpStream>>>,
    /// Name lookups not yet finished on the blocking thread: counted down by the lookup
    /// itself, which runs on even when its fetch gave up.
    lookups: Arc<AtomicUsize>,
}

impl fmt::Debug for FetchClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchClient").finish_non_exhaustive()
    }
}

/// Idle kept-alive connections one core keeps at most, over all hosts.
const IDLE_CONNECTIONS_PER_CORE_MAX: usize = 256;
/// Name lookups one core has unfinished at most. glommio gives each core one blocking thread,
/// which a lookup holds for as long as the resolver takes (seconds, for a slow one), so past
/// this a fetch that needs a lookup fails at once instead of queueing behind them.
const LOOKUPS_IN_FLIGHT_MAX: usize = 16;
/// Bytes of an answer's head read at most.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Headers of an answer parsed at most.
const HEADERS_MAX: usize = 100;
/// Interim (1xx) answers skipped before the final one, at most.
const INTERIM_ANSWERS_MAX: usize = 8;

impl FetchClient {
    pub fn new(settings: FetchSettings) -> FetchClient {
        FetchClient {
            settings,
            peers: false,
            idle: RefCell::new(HashMap::new()),
            lookups: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A client that forwards requests to the cluster's other nodes: `allow_hosts` is not
    /// consulted and any address may be reached.
    pub fn to_peers(settings: FetchSettings) -> FetchClient {
        FetchClient {
            peers: true,
            ..FetchClient::new(settings)
        }
    }

    /// Sends `request` and reads the answer, within `timeout_ms` in all.
    pub async fn fetch(&self, request: FetchRequest) -> Result<Response, FetchError> {
        let timeout_ms = self.settings.timeout_ms;
        let timeout = async {
            glommio::timer::sleep(Duration::from_millis(timeout_ms)).await;
            Err(FetchError::Timeout { timeout_ms })
        };
        futures_lite::future::or(self.follow(request), timeout).await
    }

    /// Sends `request`, following redirects as far as `redirects_max`.
    async fn follow(&self, mut request: FetchRequest) -> Result<Response, FetchError> {
        let mut redirects = 0;
        loop {
            let url = parse_url(&request.url)?;
            let response = self.once(&url, &request).await?;
            let location = response
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("location"))
                .map(|(_, value)| value.clone());
            let redirect = matches!(response.status, 301 | 302 | 303 | 307 | 308);
            let (true, Some(location)) = (redirect, location) else {
                return Ok(response);
            };
            if self.settings.redirects_max == 0 {
                return Ok(response);
            }
            if redirects == self.settings.redirects_max {
                return Err(FetchError::TooManyRedirects {
                    redirects_max: self.settings.redirects_max,
                });
            }
            redirects += 1;
            request.url = if location.starts_with('/') && !location.starts_with("//") {
                format!("http://{}:{}{location}", bracketed(&url.host), url.port)
            } else {
                location
            };
            let same_host = parse_url(&request.url)
                .is_ok_and(|next| next.host == url.host && next.port == url.port);
            if !same_host {
                // Credentials meant for one host do not follow a redirect to another.
                request.headers.retain(|(name, _)| {
                    !["authorization", "cookie", "proxy-authorization"]
                        .iter()
                        .any(|secret| name.eq_ignore_ascii_case(secret))
                });
            }
            if response.status == 303 {
                (request.method, request.body) = (Method::Get, Vec::new());
            }
        }
    }

    /// Whether `host:port` is in the allow list.
    fn allowed(&self, host: &str, port: u16) -> bool {
        if self.peers {
            return true;
        }
        self.settings.allow_hosts.iter().any(|entry| {
            let entry = entry.to_ascii_lowercase();
            let entry = entry.trim_start_matches('[');
            match entry.rsplit_once(':') {
                Some((name, entry_port)) if !name.contains(':') || name.ends_with(']') => {
                    name.trim_end_matches(']') == host && entry_port.parse() == Ok(port)
                }
                _ => entry.trim_end_matches(']') == host,
            }
        })
    }

    /// The address to connect to for `url`, checked against the allow list.
    async fn resolve(&self, url: &Url) -> Result<SocketAddr, FetchError> {
        if !self.allowed(&url.host, url.port) {
            return Err(FetchError::HostDenied {
                host: url.host.clone(),
                port: url.port,
            });
        }
        if let Ok(address) = url.host.parse::<IpAddr>() {
            // An address the allow list names itself may be anything.
            return Ok(SocketAddr::new(address, url.port));
        }
        if self.lookups.load(Ordering::Relaxed) >= LOOKUPS_IN_FLIGHT_MAX {
            return Err(FetchError::Resolve {
                host: url.host.clone(),
                reason: format!(
                    "{LOOKUPS_IN_FLIGHT_MAX} lookups are already waiting for this core's resolver"
                ),
            });
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let (name, lookups) = ((url.host.clone(), url.port), self.lookups.clone());
        let resolved = glommio::executor()
            .spawn_blocking(move || {
                let resolved = name.to_socket_addrs().map(Vec::from_iter);
                lookups.fetch_sub(1, Ordering::Relaxed);
                resolved
            })
            .await
            .map_err(|error| FetchError::Resolve {
                host: url.host.clone(),
                reason: error.to_string(),
            })?;
        // Every address must be allowed: a name with one public and one private address could
        // otherwise be pointed inside by whoever controls its records.
        for address in &resolved {
            let named = self.allowed(&address.ip().to_string(), url.port);
            if !is_public(address.ip()) && !named {
                return Err(FetchError::AddressDenied {
                    host: url.host.clone(),
                    address: address.ip(),
                });
            }
        }
        resolved
            .first()
            .copied()
            .ok_or_else(|| FetchError::Resolve {
                host: url.host.clone(),
                reason: "no address".to_string(),
            })
    }

    /// A new connection to `address` (`HOST:PORT`), resolved and connected within
    /// `timeout_ms`: for a connection that carries something else than one request (a
    /// WebSocket a node forwards to the owner).
    pub async fn connect(&self, address: &str) -> Result<TcpStream, FetchError> {
        let url = parse_url(&format!("http://{address}/"))?;
        let connect = async {
            let address = self.resolve(&url).await?;
            TcpStream::connect(address)
                .await
                .map_err(|error| FetchError::Connect {
                    address,
                    reason: error.to_string(),
                })
        };
        let timeout_ms = self.settings.timeout_ms;
        let timeout = async {
            glommio::timer::sleep(Duration::from_millis(timeout_ms)).await;
            Err(FetchError::Timeout { timeout_ms })
        };
        futures_lite::future::or(connect, timeout).await
    }

    /// One request and its answer, on a kept-alive connection if there is one (and, for a
    /// request that may be sent twice, once more on a new one if that had been closed).
    async fn once(&self, url: &Url, request: &FetchRequest) -> Result<Response, FetchError> {
        let address = self.resolve(url).await?;
        let key = (url.host.clone(), url.port, address);
        let head = encode_head(url, request);
        let mut pooled = {
            let mut idle = self.idle.borrow_mut();
            // A connection the server closed while it was idle (its idle timeout) is dropped
            // here rather than found out by a request that may not be sent twice.
            let stream = loop {
                match idle.get_mut(&key).and_then(Vec::pop) {
                    Some(stream) if crate::http::hangup::peer_hung_up(&stream) => {}
                    other => break other,
                }
            };
            if idle.get(&key).is_some_and(Vec::is_empty) {
                idle.remove(&key);
            }
            stream
        };
        loop {
            let reused = pooled.is_some();
            let mut stream = match pooled.take() {
                Some(stream) => stream,
                None => TcpStream::connect(address)
                    .await
                    .map_err(|error| FetchError::Connect {
                        address,
                        reason: error.to_string(),
                    })?,
            };
            let settings = &self.settings;
            let answer = exchange(&mut stream, &head, &request.body, settings, request.method);
            match answer.await {
                Ok((response, reusable)) => {
                    self.keep(key, stream, reusable);
                    return Ok(response);
                }
                // A kept-alive connection the server closed meanwhile: a request that may be
                // sent twice goes again on a new one.
                Err(Exchange::Unanswered(_)) if reused && idempotent(request.method) => {}
                Err(Exchange::Unanswered(error) | Exchange::Failed(error)) => return Err(error),
            }
        }
    }

    /// Puts a connection whose answer ended cleanly back in the pool, if there is room.
    fn keep(&self, key: PoolKey, stream: TcpStream, reusable: bool) {
        if !reusable {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let total: usize = idle.values().map(Vec::len).sum();
        if total >= IDLE_CONNECTIONS_PER_CORE_MAX {
            return;
        }
        let connections = idle.entry(key).or_default();
        if connections.len() < self.settings.idle_connections_per_host {
            connections.push(stream);
        }
    }
}

/// Whether a request may be sent a second time (RFC 9110's idempotent methods).
fn idempotent(method: Method) -> bool {
    matches!(
        method,
        Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options
    )
}

/// `[v6]` for an IPv6 address in a URL, else the host.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The request line and headers. Headers that are the client's own, or whose name is not a
/// token or whose value could end the line, are left out.
fn encode_head(url: &Url, request: &FetchRequest) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Length: {}\r\n",
        request.method.as_str(),
        url.target,
        bracketed(&url.host),
        url.port,
        request.body.len()
    );
    const OWN: [&str; 5] = [
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "expect",
    ];
    for (name, value) in &request.headers {
        let own = OWN.iter().any(|own| name.eq_ignore_ascii_case(own));
        if own || !crate::http::is_token(name) || !crate::http::is_field_value(value) {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// How an exchange failed: before any byte of an answer (a kept-alive connection may just have
/// been closed), or after.
enum Exchange {
    Unanswered(FetchError),
    Failed(FetchError),
}

fn io_error(error: std::io::Error) -> FetchError {
    FetchError::Io {
        reason: error.to_string(),
    }
}

fn malformed(reason: impl Into<String>) -> FetchError {
    FetchError::MalformedResponse {
        reason: reason.into(),
    }
}

/// A parsed answer head: status, headers, and where the body starts in the buffer.
type Head = (u16, Vec<(String, String)>, usize);

/// Reads one answer head from `stream` into `buffer` (which may hold bytes already).
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<Head, Exchange> {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if !buffer.is_empty() {
            let mut parsed = [httparse::EMPTY_HEADER; HEADERS_MAX];
            let mut response = httparse::Response::new(&mut parsed);
            match response.parse(buffer) {
                Ok(httparse::Status::Complete(end)) => {
                    let status = response.code.unwrap_or(0);
                    let headers = response
                        .headers
                        .iter()
                        .map(|header| {
                            let value = String::from_utf8_lossy(header.value).into_owned();
                            (header.name.to_string(), value)
                        })
                        .collect();
                    return Ok((status, headers, end));
                }
                Ok(httparse::Status::Partial) if buffer.len() < HEAD_BYTES_MAX => {}
                Ok(httparse::Status::Partial) => {
                    return Err(Exchange::Failed(malformed(format!(
                        "a head over {HEAD_BYTES_MAX} bytes"
                    ))))
                }
                Err(error) => return Err(Exchange::Failed(malformed(error.to_string()))),
            }
        }
        let read = stream.read(&mut chunk).await;
        match read {
            Ok(0) if buffer.is_empty() => {
                return Err(Exchange::Unanswered(FetchError::Io {
                    reason: "the server closed the connection".to_string(),
                }))
            }
            Ok(0) => {
                return Err(Exchange::Failed(malformed(
                    "the connection closed inside the answer's head",
                )))
            }
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) if buffer.is_empty() => return Err(Exchange::Unanswered(io_error(error))),
            Err(error) => return Err(Exchange::Failed(io_error(error))),
        }
    }
}

/// A decimal `Content-Length` (digits only), the same in every header that gives one.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, FetchError> {
    let mut found = None;
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(malformed("a malformed Content-Length"));
        }
        let length: usize = value
            .parse()
            .map_err(|_| malformed("a malformed Content-Length"))?;
        if found.is_some_and(|earlier| earlier != length) {
            return Err(malformed("two different Content-Lengths"));
        }
        found = Some(length);
    }
    Ok(found)
}

/// Writes the request on `stream` and reads the answer; also returns whether the connection
/// may carry another request (the answer ended exactly where its framing says, and the
/// server did not ask to close).
async fn exchange(
    stream: &mut TcpStream,
    head: &[u8],
    body: &[u8],
    settings: &FetchSettings,
    method: Method,
) -> Result<(Response, bool), Exchange> {
    let unanswered = |error| Exchange::Unanswered(io_error(error));
    stream.write_all(head).await.map_err(unanswered)?;
    stream.write_all(body).await.map_err(unanswered)?;
    stream.flush().await.map_err(unanswered)?;
    let failed = Exchange::Failed;
    let mut buffer = Vec::with_capacity(4096);
    // Interim answers (100 Continue, 103 Early Hints) come before the final one.
    let mut interim = 0;
    let (status, headers, head_end) = loop {
        let (status, headers, end) = read_head(stream, &mut buffer).await?;
        if status == 101 {
            return Err(failed(malformed(
                "101 Switching Protocols to a plain request",
            )));
        }
        if !(100..200).contains(&status) {
            break (status, headers, end);
        }
        interim += 1;
        if interim > INTERIM_ANSWERS_MAX {
            return Err(failed(malformed("too many interim (1xx) answers")));
        }
        buffer.drain(..end);
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_ascii_lowercase())
    };
    let closes = header("connection").is_some_and(|value| value.contains("close"));
    let encoding = header("transfer-encoding");
    let chunked = encoding
        .as_deref()
        .is_some_and(|value| value.ends_with("chunked"));
    let length = content_length(&headers).map_err(failed)?;
    let limit = settings.response_bytes_max;
    let mut rest = buffer.split_off(head_end);
    let no_body = method == Method::Head || status == 204 || status == 304;
    let mut chunk = vec![0u8; 16 * 1024];
    let (body, reusable) = if no_body {
        let clean = rest.is_empty();
        (Vec::new(), !closes && clean)
    } else if chunked {
        let (body, clean) = read_chunked(stream, &mut rest, limit)
            .await
            .map_err(failed)?;
        // A body framed both ways is answered as chunked, but the connection is not trusted.
        (body, !closes && clean && length.is_none())
    } else if encoding.is_some() {
        return Err(failed(malformed("a Transfer-Encoding other than chunked")));
    } else if let Some(length) = length {
        if length > limit {
            return Err(failed(FetchError::ResponseTooLarge {
                response_bytes_max: limit,
            }));
        }
        while rest.len() < length {
            let read = stream
                .read(&mut chunk)
                .await
                .map_err(|error| failed(io_error(error)))?;
            if read == 0 {
                return Err(failed(malformed("the connection closed inside the body")));
            }
            rest.extend_from_slice(&chunk[..read]);
        }
        let clean = rest.len() == length;
        rest.truncate(length);
        (rest, !closes && clean)
    } else {
        // No framing: the body runs to the end of the connection.
        loop {
            if rest.len() > limit {
                return Err(failed(FetchError::ResponseTooLarge {
                    response_bytes_max: limit,
                }));
            }
            let read = stream
                .read(&mut chunk)
                .await
                .map_err(|error| failed(io_error(error)))?;
            if read == 0 {
                break (rest, false);
            }
            rest.extend_from_slice(&chunk[..read]);
        }
    };
    let mut response = Response::new(status, body);
    response.headers = headers;
    Ok((response, reusable))
}

/// Reads a chunked body, `buffered` holding the bytes already read past the head; also
/// returns whether it ended exactly at the end of what was read (no bytes of anything else).
async fn read_chunked(
    stream: &mut TcpStream,
    buffered: &mut Vec<u8>,
    limit: usize,
) -> Result<(Vec<u8>, bool), FetchError> {
    let bad = |reason: &str| malformed(format!("chunked body: {reason}"));
    let mut body = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut position = 0;
    loop {
        // A size line.
        let line_end = loop {
            if let Some(found) = buffered[position..].windows(2).position(|w| w == b"\r\n") {
                break position + found;
            }
            if buffered.len() - position > 1024 {
                return Err(bad("a size line over 1 KiB"));
            }
            let read = stream.read(&mut chunk).await.map_err(io_error)?;
            if read == 0 {
                return Err(bad("the connection closed inside it"));
            }
            buffered.extend_from_slice(&chunk[..read]);
        };
        let line = std::str::from_utf8(&buffered[position..line_end])
            .map_err(|_| bad("a size line that is not text"))?;
        let digits = line.split(';').next().unwrap_or("").trim();
        if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(bad("a bad size"));
        }
        let size = usize::from_str_radix(digits, 16).map_err(|_| bad("a size too large"))?;
        if size > limit.saturating_sub(body.len()) {
            return Err(FetchError::ResponseTooLarge {
                response_bytes_max: limit,
            });
        }
        position = line_end + 2;
        // The chunk and its CRLF (for the last, empty chunk: the empty line after it).
        let end = position + size + 2;
        while buffered.len() < end {
            let read = stream.read(&mut chunk).await.map_err(io_error)?;
            if read == 0 {
                return Err(bad("the connection closed inside it"));
            }
            buffered.extend_from_slice(&chunk[..read]);
        }
        if &buffered[end - 2..end] != b"\r\n" {
            return Err(bad(if size == 0 {
                "trailers are not supported"
            } else {
                "a chunk not followed by CRLF"
            }));
        }
        if size == 0 {
            return Ok((body, end == buffered.len()));
        }
        body.extend_from_slice(&buffered[position..position + size]);
        position = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_are_refused_with_a_reason() {
        let url = parse_url("http://Example.com:8080/a/b?c=d#frag").expect("valid");
        assert_eq!(
            url,
            Url {
                host: "example.com".to_string(),
                port: 8080,
                target: "/a/b?c=d".to_string()
            }
        );
        assert_eq!(parse_url("http://h").expect("valid").target, "/");
        assert_eq!(parse_url("http://[::1]:9/x").expect("valid").host, "::1");
        assert_eq!(parse_url("https://h/"), Err(FetchError::Https));
        for bad in [
            "ftp://h/",
            "http://",
            "http://u@h/",
            "http://h:x/",
            "http://h:+80/",
            "http://[::1]junk/",
            "http://[example.com]/",
            "http://h/a b",
            "http://h\r\n/",
        ] {
            assert!(
                matches!(parse_url(bad), Err(FetchError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "fec0::1",
            "2001:db8::1",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
        ] {
            assert!(!is_public(private.parse().expect("address")), "{private}");
        }
        for public in ["93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(public.parse().expect("address")), "{public}");
        }
    }

    #[test]
    fn the_allow_list_matches_hosts_with_or_without_ports() {
        let settings = FetchSettings {
            allow_hosts: vec![
                "api.example.com".into(),
                "127.0.0.1:9000".into(),
                "[::1]:80".into(),
            ],
            ..FetchSettings::default()
        };
        let client = FetchClient::new(settings);
        assert!(client.allowed("api.example.com", 80));
        assert!(client.allowed("api.example.com", 8443));
        assert!(client.allowed("127.0.0.1", 9000));
        assert!(!client.allowed("127.0.0.1", 9001));
        assert!(client.allowed("::1", 80));
        assert!(!client.allowed("example.com", 80));
    }
}
