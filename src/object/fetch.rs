//! Outgoing HTTP from objects ([`ObjectContext::fetch`]): an HTTP/1.1 client on the object's
//! core, over glommio sockets, with a pool of kept-alive connections per core and host.
//!
//! Only `http://` URLs: there is no TLS (`https://` is refused with [`FetchError::Https`]).
//! Every request is checked against `[fetch] allow_hosts` first, by host name (or address)
//! and port, and then every address the name resolves to must be public (not loopback,
//! private, link-local, …) unless the list names that address itself: a listed name that
//! resolves into the server's own network is refused ([`FetchError::AddressDenied`]). Names
//! are resolved on glommio's blocking thread pool, so a slow resolver does not stall the core.
//! Redirects are answered as they are unless `redirects_max` > 0; each hop is checked again.
//!
//! [`ObjectContext::fetch`]: super::ObjectContext::fetch

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
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
        let port = &inner[close + 1..];
        (&inner[..close], port.strip_prefix(':'))
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
        Some(port) => port.parse().map_err(|_| invalid("a malformed port"))?,
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
/// loopback, private, link-local, shared (CGNAT), unspecified, multicast or broadcast.
fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// A kept-alive connection's key: host, port and the address it went to.
type PoolKey = (String, u16, SocketAddr);

/// The outgoing HTTP client of one core.
pub struct FetchClient {
    settings: FetchSettings,
    /// Idle kept-alive connections, at most `idle_connections_per_host` per key.
    idle: RefCell<HashMap<PoolKey, Vec<TcpStream>>>,
}

impl fmt::Debug for FetchClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchClient").finish_non_exhaustive()
    }
}

/// Bytes of an answer's head read at most.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Headers of an answer parsed at most.
const HEADERS_MAX: usize = 100;

impl FetchClient {
    pub fn new(settings: FetchSettings) -> FetchClient {
        FetchClient {
            settings,
            idle: RefCell::new(HashMap::new()),
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
            request.url = if location.starts_with('/') {
                format!("http://{}:{}{location}", bracketed(&url.host), url.port)
            } else {
                location
            };
            if response.status == 303 {
                (request.method, request.body) = (Method::Get, Vec::new());
            }
        }
    }

    /// Whether `host:port` is in the allow list.
    fn allowed(&self, host: &str, port: u16) -> bool {
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
        let name = (url.host.clone(), url.port);
        let resolved = glommio::executor()
            .spawn_blocking(move || name.to_socket_addrs().map(Vec::from_iter))
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

    /// One request and its answer, on a kept-alive connection if there is one (and once more on
    /// a new one if that had been closed meanwhile).
    async fn once(&self, url: &Url, request: &FetchRequest) -> Result<Response, FetchError> {
        let address = self.resolve(url).await?;
        let key = (url.host.clone(), url.port, address);
        let head = encode_head(url, request);
        let pooled = self.idle.borrow_mut().get_mut(&key).and_then(Vec::pop);
        if let Some(mut stream) = pooled {
            match exchange(
                &mut stream,
                &head,
                &request.body,
                &self.settings,
                request.method,
            )
            .await
            {
                Ok((response, reusable)) => {
                    self.keep(key, stream, reusable);
                    return Ok(response);
                }
                // A kept-alive connection the server closed meanwhile: try a new one.
                Err(Exchange::Unanswered(_)) => {}
                Err(Exchange::Failed(error)) => return Err(error),
            }
        }
        let mut stream =
            TcpStream::connect(address)
                .await
                .map_err(|error| FetchError::Connect {
                    address,
                    reason: error.to_string(),
                })?;
        match exchange(
            &mut stream,
            &head,
            &request.body,
            &self.settings,
            request.method,
        )
        .await
        {
            Ok((response, reusable)) => {
                self.keep(key, stream, reusable);
                Ok(response)
            }
            Err(Exchange::Unanswered(error) | Exchange::Failed(error)) => Err(error),
        }
    }

    /// Puts a connection whose answer ended cleanly back in the pool, if there is room.
    fn keep(&self, key: PoolKey, stream: TcpStream, reusable: bool) {
        if !reusable {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let connections = idle.entry(key).or_default();
        if connections.len() < self.settings.idle_connections_per_host {
            connections.push(stream);
        }
    }
}

/// `[v6]` for an IPv6 address in a URL, else the host.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The request line and headers.
fn encode_head(url: &Url, request: &FetchRequest) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Length: {}\r\n",
        request.method.as_str(),
        url.target,
        bracketed(&url.host),
        url.port,
        request.body.len()
    );
    const OWN: [&str; 4] = ["host", "content-length", "connection", "transfer-encoding"];
    for (name, value) in &request.headers {
        let clean = |text: &str| !text.bytes().any(|byte| byte == b'\r' || byte == b'\n');
        if OWN.iter().any(|own| name.eq_ignore_ascii_case(own)) || !clean(name) || !clean(value) {
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

/// Writes the request on `stream` and reads the answer; also returns whether the connection
/// may carry another request.
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
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    // The head.
    let (status, headers, head_end) = loop {
        let read = stream.read(&mut chunk).await;
        let read = match read {
            Ok(0) if buffer.is_empty() => {
                return Err(Exchange::Unanswered(FetchError::Io {
                    reason: "the server closed the connection".to_string(),
                }))
            }
            Ok(0) => {
                return Err(Exchange::Failed(FetchError::MalformedResponse {
                    reason: "the connection closed inside the answer's head".to_string(),
                }))
            }
            Ok(read) => read,
            Err(error) if buffer.is_empty() => return Err(unanswered(error)),
            Err(error) => return Err(Exchange::Failed(io_error(error))),
        };
        buffer.extend_from_slice(&chunk[..read]);
        let mut parsed = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut response = httparse::Response::new(&mut parsed);
        match response.parse(&buffer) {
            Ok(httparse::Status::Complete(end)) => {
                let status = response.code.unwrap_or(0);
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|header| {
                        (
                            header.name.to_string(),
                            String::from_utf8_lossy(header.value).into_owned(),
                        )
                    })
                    .collect();
                break (status, headers, end);
            }
            Ok(httparse::Status::Partial) if buffer.len() < HEAD_BYTES_MAX => {}
            Ok(httparse::Status::Partial) => {
                return Err(Exchange::Failed(FetchError::MalformedResponse {
                    reason: format!("a head over {HEAD_BYTES_MAX} bytes"),
                }))
            }
            Err(error) => {
                return Err(Exchange::Failed(FetchError::MalformedResponse {
                    reason: error.to_string(),
                }))
            }
        }
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_ascii_lowercase())
    };
    let closes = header("connection").is_some_and(|value| value.contains("close"));
    let chunked = header("transfer-encoding").is_some_and(|value| value.ends_with("chunked"));
    let length = header("content-length");
    let limit = settings.response_bytes_max;
    let mut rest = buffer.split_off(head_end);
    let no_body = method == Method::Head || status == 204 || status == 304 || status < 200;
    let failed = Exchange::Failed;
    let (body, reusable) = if no_body {
        (Vec::new(), !closes)
    } else if chunked {
        let body = read_chunked(stream, &mut rest, limit)
            .await
            .map_err(failed)?;
        (body, !closes)
    } else if let Some(length) = length {
        let length: usize = length.parse().map_err(|_| {
            Exchange::Failed(FetchError::MalformedResponse {
                reason: "a malformed Content-Length".to_string(),
            })
        })?;
        if length > limit {
            return Err(failed(FetchError::ResponseTooLarge {
                response_bytes_max: limit,
            }));
        }
        while rest.len() < length {
            let read = stream
                .read(&mut chunk)
                .await
                .map_err(|e| failed(io_error(e)))?;
            if read == 0 {
                return Err(failed(FetchError::MalformedResponse {
                    reason: "the connection closed inside the body".to_string(),
                }));
            }
            rest.extend_from_slice(&chunk[..read]);
        }
        let extra = rest.len() > length;
        rest.truncate(length);
        (rest, !closes && !extra)
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
                .map_err(|e| failed(io_error(e)))?;
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

/// Reads a chunked body, `buffered` holding the bytes already read past the head.
async fn read_chunked(
    stream: &mut TcpStream,
    buffered: &mut Vec<u8>,
    limit: usize,
) -> Result<Vec<u8>, FetchError> {
    let malformed = |reason: &str| FetchError::MalformedResponse {
        reason: format!("chunked body: {reason}"),
    };
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
                return Err(malformed("a size line over 1 KiB"));
            }
            let read = stream.read(&mut chunk).await.map_err(io_error)?;
            if read == 0 {
                return Err(malformed("the connection closed inside it"));
            }
            buffered.extend_from_slice(&chunk[..read]);
        };
        let line = std::str::from_utf8(&buffered[position..line_end])
            .map_err(|_| malformed("a size line that is not text"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| malformed("a bad size"))?;
        position = line_end + 2;
        if body.len() + size > limit {
            return Err(FetchError::ResponseTooLarge {
                response_bytes_max: limit,
            });
        }
        // The chunk and its CRLF (for the last, empty chunk: the end of the trailers).
        let needed = if size == 0 { 2 } else { size + 2 };
        while buffered.len() < position + needed {
            let read = stream.read(&mut chunk).await.map_err(io_error)?;
            if read == 0 {
                return Err(malformed("the connection closed inside it"));
            }
            buffered.extend_from_slice(&chunk[..read]);
        }
        if size == 0 {
            // Trailers are not supported: the last chunk must be followed by an empty line.
            if &buffered[position..position + 2] != b"\r\n" {
                return Err(malformed("trailers are not supported"));
            }
            return Ok(body);
        }
        body.extend_from_slice(&buffered[position..position + size]);
        position += size + 2;
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
