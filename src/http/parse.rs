//! Incremental HTTP/1.1 request parsing over a connection's read buffer, on top of `httparse`.
//!
//! The parser is stateless: it is handed the unparsed bytes each time more arrive and either
//! finds one complete request at their start, asks for more, or refuses with an [`HttpError`].
//! Limits are checked on what has arrived so far, so a request past a limit is refused before
//! the rest of it is read (a `Content-Length` over `body_bytes_max` fails at once).
//!
//! Parsing choices: where a lenient reading could let two parsers (a proxy in front and stead)
//! see different requests in the same bytes, stead refuses the request (400, then closes):
//! - Bare LF line endings in the request line or headers (httparse accepts them; the raw head is
//!   checked for an LF without its CR). Chunked framing requires CRLF too (`chunked.rs`).
//! - `Transfer-Encoding` in an HTTP/1.0 request: HTTP/1.0 has no transfer codings, so an
//!   HTTP/1.0 hop would frame the body by `Content-Length` or the close instead.
//! - `Upgrade` in an HTTP/1.0 request (a WebSocket handshake included): protocol switching is
//!   defined for HTTP/1.1 only, and an HTTP/1.0 peer may not hold the connection open for it.
//! - `Content-Length` and `Transfer-Encoding` together, several differing `Content-Length`s, a
//!   `Content-Length` that is not plain digits, and any transfer coding but a single `chunked`.
//! - A request target that is not origin-form (must start with `/`).

use super::chunked::{decode_chunked, ChunkedLimits};
use super::{HttpError, Method, Request};
use crate::config::HttpLimits;

/// Header slots kept on the stack; a larger `header_count_max` allocates.
const STACK_HEADERS: usize = 64;

/// One complete request found at the start of the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRequest {
    pub request: Request,
    /// Bytes of the buffer this request took; the next request starts there.
    pub consumed: usize,
    /// Whether the connection stays open after the response: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue`. stead answers such requests like any other
    /// (clients send the body after a short wait); the flag is here for a later interim reply.
    pub expect_continue: bool,
}

/// Framed-body overhead allowed past `body_bytes_max` for a chunked body (chunk-size lines,
/// trailers): the same allowance as the request head.
pub fn chunked_raw_bytes_max(limits: &HttpLimits) -> u64 {
    (limits.body_bytes_max as u64).saturating_add(limits.header_bytes_max as u64)
}

/// The most bytes one request can occupy in the read buffer; a connection's buffer never needs
/// to be larger than this to hold any request the limits accept.
pub fn request_bytes_max(limits: &HttpLimits) -> usize {
    limits
        .header_bytes_max
        .saturating_add(usize::try_from(chunked_raw_bytes_max(limits)).unwrap_or(usize::MAX))
}

/// Parses the request at the start of `buf`. `Ok(None)`: the request is not complete yet.
pub fn parse_request(buf: &[u8], limits: &HttpLimits) -> Result<Option<ParsedRequest>, HttpError> {
    if limits.header_count_max <= STACK_HEADERS {
        let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
        parse_with(buf, limits, &mut headers[..limits.header_count_max])
    } else {
        let mut headers = vec![httparse::EMPTY_HEADER; limits.header_count_max];
        parse_with(buf, limits, &mut headers)
    }
}

fn parse_with<'buf>(
    buf: &'buf [u8],
    limits: &HttpLimits,
    slots: &mut [httparse::Header<'buf>],
) -> Result<Option<ParsedRequest>, HttpError> {
    let mut head = httparse::Request::new(slots);
    let head_bytes = match head.parse(buf) {
        Ok(httparse::Status::Complete(bytes)) => bytes,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.header_bytes_max {
                return Err(HttpError::HeadersTooLarge {
                    bytes: buf.len(),
                    max: limits.header_bytes_max,
                });
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::TooManyHeaders {
                max: limits.header_count_max,
            })
        }
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(error) => return Err(HttpError::Malformed(malformed_reason(error))),
    };
    if head_bytes > limits.header_bytes_max {
        return Err(HttpError::HeadersTooLarge {
            bytes: head_bytes,
            max: limits.header_bytes_max,
        });
    }
    // A complete parse fills method, path and version.
    let method_text = head.method.unwrap_or_default();
    let method = Method::parse(method_text)
        .ok_or_else(|| HttpError::UnsupportedMethod(method_text.chars().take(32).collect()))?;
    let target = head.path.unwrap_or_default();
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("request target must start with '/'"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if has_bare_line_feed(&buf[..head_bytes]) {
        return Err(HttpError::Malformed("bare LF line ending"));
    }
    let http_1_0 = head.version == Some(0);
    if http_1_0 {
        let has_header = |name: &str| {
            head.headers
                .iter()
                .any(|header| header.name.eq_ignore_ascii_case(name))
        };
        if has_header("transfer-encoding") {
            return Err(HttpError::TransferEncodingInHttp10);
        }
        if has_header("upgrade") {
            return Err(HttpError::UpgradeInHttp10);
        }
    }

    let framing = Framing::from_headers(head.headers)?;
    let headers: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .map(|header| (header.name.to_ascii_lowercase(), header.value.to_vec()))
        .collect();
    let body_start = &buf[head_bytes..];
    let (body, body_bytes) = match framing.length {
        BodyLength::Fixed(length) => {
            if length > limits.body_bytes_max as u64 {
                return Err(HttpError::BodyTooLarge {
                    bytes: length,
                    max: limits.body_bytes_max as u64,
                });
            }
            // Below body_bytes_max, so it fits in usize.
            let length = length as usize;
            if body_start.len() < length {
                return Ok(None);
            }
            (body_start[..length].to_vec(), length)
        }
        BodyLength::Chunked => {
            let chunked_limits = ChunkedLimits {
                decoded_bytes_max: limits.body_bytes_max as u64,
                raw_bytes_max: chunked_raw_bytes_max(limits),
            };
            match decode_chunked(body_start, chunked_limits)? {
                Some(chunked) => (chunked.body, chunked.raw_bytes),
                None => return Ok(None),
            }
        }
    };
    let keep_alive = match framing.connection {
        ConnectionOption::Close => false,
        ConnectionOption::KeepAlive => true,
        ConnectionOption::Default => !http_1_0,
    };
    Ok(Some(ParsedRequest {
        request: Request {
            method,
            path: path.to_string(),
            query: query.to_string(),
            headers,
            body,
            upgrade: None,
        },
        consumed: head_bytes + body_bytes,
        keep_alive,
        expect_continue: framing.expect_continue,
    }))
}

/// Whether an LF in `head` lacks the CR before it.
fn has_bare_line_feed(head: &[u8]) -> bool {
    head.first() == Some(&b'\n')
        || head
            .windows(2)
            .any(|pair| pair[1] == b'\n' && pair[0] != b'\r')
}

/// `HTTP/2.0` and the like get 505; anything not shaped like a version is simply malformed.
fn version_error(buf: &[u8]) -> HttpError {
    let line_end = buf
        .iter()
        .position(|byte| *byte == b'\n')
        .unwrap_or(buf.len());
    let line = &buf[..line_end];
    let looks_like_http = line
        .rsplit(|byte| *byte == b' ')
        .next()
        .is_some_and(|version| version.starts_with(b"HTTP/") && version.len() >= 8);
    if looks_like_http {
        HttpError::UnsupportedVersion
    } else {
        HttpError::Malformed("invalid request line")
    }
}

fn malformed_reason(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        _ => "invalid request",
    }
}

/// What the headers say about the body and the connection.
struct Framing {
    length: BodyLength,
    connection: ConnectionOption,
    expect_continue: bool,
}

enum BodyLength {
    /// `Content-Length`, or no body (0) when neither header is present.
    Fixed(u64),
    Chunked,
}

enum ConnectionOption {
    Close,
    KeepAlive,
    /// Neither: the version decides.
    Default,
}

impl Framing {
    fn from_headers(headers: &[httparse::Header<'_>]) -> Result<Framing, HttpError> {
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut connection = ConnectionOption::Default;
        let mut expect_continue = false;
        for header in headers {
            if header.name.eq_ignore_ascii_case("content-length") {
                let length = parse_content_length(header.value)?;
                if content_length.is_some_and(|previous| previous != length) {
                    return Err(HttpError::BadContentLength);
                }
                content_length = Some(length);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                if comma_list(header.value).next().is_none() {
                    return Err(HttpError::UnsupportedTransferCoding(String::new()));
                }
                for coding in comma_list(header.value) {
                    // `chunked` must be the one and only coding: stead decodes no others.
                    if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                        return Err(HttpError::UnsupportedTransferCoding(
                            String::from_utf8_lossy(coding).chars().take(64).collect(),
                        ));
                    }
                    chunked = true;
                }
            } else if header.name.eq_ignore_ascii_case("connection") {
                for option in comma_list(header.value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        connection = ConnectionOption::Close;
                    } else if option.eq_ignore_ascii_case(b"keep-alive")
                        && !matches!(connection, ConnectionOption::Close)
                    {
                        connection = ConnectionOption::KeepAlive;
                    }
                }
            } else if header.name.eq_ignore_ascii_case("expect") {
                expect_continue = header
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue");
            }
        }
        let length = match (content_length, chunked) {
            (Some(_), true) => return Err(HttpError::BothLengthAndChunked),
            (Some(length), false) => BodyLength::Fixed(length),
            (None, true) => BodyLength::Chunked,
            (None, false) => BodyLength::Fixed(0),
        };
        Ok(Framing {
            length,
            connection,
            expect_continue,
        })
    }
}

/// One to nineteen decimal digits, nothing else (no sign, no list, no spaces inside).
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadContentLength);
    }
    Ok(value
        .iter()
        .fold(0u64, |length, digit| length * 10 + u64::from(digit - b'0')))
}

/// The non-empty, trimmed elements of a comma-separated header value.
fn comma_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|byte| *byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
