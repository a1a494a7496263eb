//! Writes a response in HTTP/1.1 wire form. The server owns the framing headers
//! (`Content-Length`, `Connection`, `Transfer-Encoding`): a handler's copies of them are dropped,
//! and so is any header whose name is not a token or whose value holds CR, LF or NUL, so a
//! handler can never inject headers or split the response.
//!
//! No `Date` header is written: it is optional for a server without a clock it trusts (RFC 9110
//! §6.6.1) and costs a formatted time per response.

use std::io::Write as _;

use super::Response;

/// Appends `response` to `out`. `head_only`: answer to HEAD, headers (with the length the body
/// would have) but no body. `keep_alive`: otherwise `Connection: close` is written.
pub fn encode_response(response: &Response, head_only: bool, keep_alive: bool, out: &mut Vec<u8>) {
    let status = if (100..=999).contains(&response.status) {
        response.status
    } else {
        500
    };
    out.reserve(128 + response.body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{status} {}\r\n", reason_phrase(status));
    for (name, value) in &response.headers {
        if is_framing_header(name) || !is_token(name) || !is_field_value(value) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // 1xx, 204 and 304 carry no body and no length (RFC 9110 §8.6); 101 hands the connection
    // over to another protocol.
    let bodiless = status < 200 || status == 204 || status == 304;
    if !bodiless {
        let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    }
    if status == 101 {
        // The switch itself: RFC 6455 clients refuse a 101 without it.
        out.extend_from_slice(b"Connection: Upgrade\r\n");
    } else {
        out.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n".as_slice()
        } else {
            b"Connection: close\r\n".as_slice()
        });
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless && !head_only {
        out.extend_from_slice(&response.body);
    }
}

/// Headers whose meaning is the connection's framing, which only the server writes.
fn is_framing_header(name: &str) -> bool {
    [
        "content-length",
        "connection",
        "transfer-encoding",
        "keep-alive",
    ]
    .iter()
    .any(|framing| name.eq_ignore_ascii_case(framing))
}

/// RFC 9110 `token`: the characters a header name may have.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// A field value without the bytes that could end the line or the head.
pub(crate) fn is_field_value(value: &str) -> bool {
    !value
        .bytes()
        .any(|byte| matches!(byte, b'\r' | b'\n' | b'\0'))
}

/// The reason phrase of `status`; clients ignore it, but people read it.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
