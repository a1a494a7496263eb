//! A minimal HTTP/1.1 client for load: requests are encoded back to back into one buffer
//! (pipelining), responses are read in order from one keep-alive connection. Only what stead
//! answers is understood: `Content-Length` bodies; chunked or unframed responses are a protocol
//! error, never a panic.

use std::io::Write;

use futures_lite::{AsyncRead, AsyncReadExt};

use super::args::Target;
use super::scenario::Scenario;

/// Headers a response may carry before it is a protocol error.
const RESPONSE_HEADERS_MAX: usize = 64;
/// A response head (status line and headers) larger than this is a protocol error.
const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;
/// A response body larger than this is a protocol error (stead's answers are small).
const RESPONSE_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why a response could not be read. Each is counted as its own kind of error.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The server closed the connection before the response was complete.
    Closed,
    /// The bytes are not an HTTP/1.1 response stead would send: what was wrong.
    Protocol(String),
    /// The socket failed.
    Io(std::io::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Closed => f.write_str("the server closed the connection"),
            ClientError::Protocol(reason) => write!(f, "not a valid response: {reason}"),
            ClientError::Io(error) => write!(f, "socket error: {error}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// What the load generator needs of one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Length of the status line and headers, in bytes.
    pub head_bytes: usize,
    /// Length of the body, in bytes.
    pub body_bytes: usize,
    /// The server said `Connection: close`: nothing more will come on this connection.
    pub close: bool,
}

/// Parses one response head at the start of `bytes`; Ok(None) when more bytes are needed.
pub fn parse_head(bytes: &[u8]) -> Result<Option<ResponseHead>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head_bytes = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if bytes.len() > RESPONSE_HEAD_BYTES_MAX => {
            return Err(ClientError::Protocol(format!(
                "response head over {RESPONSE_HEAD_BYTES_MAX} bytes"
            )));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(ClientError::Protocol(format!("bad response: {error}"))),
    };
    let status = response.code.unwrap_or(0);
    let mut body_bytes = None;
    let mut close = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|text| text.trim().parse::<usize>().ok())
                .ok_or_else(|| ClientError::Protocol("bad Content-Length".to_string()))?;
            body_bytes = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ClientError::Protocol(
                "Transfer-Encoding is not supported".to_string(),
            ));
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = header.value.eq_ignore_ascii_case(b"close");
        }
    }
    // 1xx, 204 and 304 have no body; any other response must say how long its body is.
    let body_bytes = match (status, body_bytes) {
        (100..=199 | 204 | 304, _) => 0,
        (_, Some(length)) if length > RESPONSE_BODY_BYTES_MAX => {
            return Err(ClientError::Protocol(format!("body of {length} bytes")));
        }
        (_, Some(length)) => length,
        (_, None) => return Err(ClientError::Protocol("no Content-Length".to_string())),
    };
    Ok(Some(ResponseHead {
        status,
        head_bytes,
        body_bytes,
        close,
    }))
}

/// Reads responses one after another from a connection, keeping the bytes of the next ones.
pub struct ResponseReader {
    /// Bytes read but not consumed yet are `buffer[start..end]`.
    buffer: Vec<u8>,
    /// First unconsumed byte.
    start: usize,
    /// End of the bytes read.
    end: usize,
}

impl Default for ResponseReader {
    fn default() -> ResponseReader {
        ResponseReader {
            buffer: vec![0; READ_CHUNK_BYTES],
            start: 0,
            end: 0,
        }
    }
}

impl ResponseReader {
    /// Reads the next whole response (its body is skipped).
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
    ) -> Result<ResponseHead, ClientError> {
        // Each pass reads at least one byte or returns, and the response is bounded in size, so
        // the loop ends.
        loop {
            if let Some(head) = parse_head(&self.buffer[self.start..self.end])? {
                let total = head.head_bytes + head.body_bytes;
                if self.end - self.start >= total {
                    self.start += total;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                    }
                    return Ok(head);
                }
                self.make_room(total);
            } else {
                self.make_room(self.end - self.start + 1);
            }
            let read = stream
                .read(&mut self.buffer[self.end..])
                .await
                .map_err(ClientError::Io)?;
            if read == 0 {
                return Err(ClientError::Closed);
            }
            self.end += read;
        }
    }

    /// Makes sure `needed` bytes from `start` fit and at least one more byte can be read
    /// (`needed` is always more than the bytes pending).
    fn make_room(&mut self, needed: usize) {
        if self.start > 0 && self.buffer.len() - self.end < READ_CHUNK_BYTES {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let wanted = (self.start + needed).max(self.end + 1);
        if self.buffer.len() < wanted {
            self.buffer
                .resize(wanted.max(self.end + READ_CHUNK_BYTES), 0);
        }
    }
}

/// Encodes the requests of a scenario for one target.
#[derive(Clone, Debug)]
pub struct RequestEncoder {
    /// Prepended to every scenario path.
    prefix: String,
    /// The header block after the request line, `Host` and `Authorization`, each line ending
    /// in CRLF (the blank line that ends the block is written per request).
    headers: Vec<u8>,
}

impl RequestEncoder {
    pub fn new(target: &Target, auth_token: Option<&str>) -> RequestEncoder {
        let mut headers = Vec::new();
        let _ = write!(headers, "Host: {}\r\n", target.host);
        if let Some(token) = auth_token {
            let _ = write!(headers, "Authorization: Bearer {token}\r\n");
        }
        RequestEncoder {
            prefix: target.prefix.clone(),
            headers,
        }
    }

    /// The path prefix of the target, before every scenario path.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The `Host` and `Authorization` lines, each ending in CRLF.
    pub fn headers(&self) -> &[u8] {
        &self.headers
    }

    /// Appends request number `number` of `scenario` to `out`.
    pub fn encode(&self, scenario: &Scenario, number: u64, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        scenario.write_body(number, &mut body);
        out.extend_from_slice(if body.is_empty() { b"GET " } else { b"POST " });
        out.extend_from_slice(self.prefix.as_bytes());
        scenario.write_path(number, out);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        out.extend_from_slice(&self.headers);
        if !body.is_empty() {
            let _ = write!(
                out,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], reader: &mut ResponseReader) -> Vec<Result<ResponseHead, String>> {
        let mut stream = futures_lite::io::Cursor::new(bytes.to_vec());
        let mut out = Vec::new();
        for _ in 0..16 {
            match futures_lite::future::block_on(reader.next(&mut stream)) {
                Ok(head) => out.push(Ok(head)),
                Err(ClientError::Closed) => break,
                Err(error) => {
                    out.push(Err(format!("{error:?}")));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn pipelined_responses_come_out_in_order() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1\
HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}\
HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let statuses: Vec<_> = read_all(bytes, &mut ResponseReader::default())
            .into_iter()
            .map(|head| head.map(|head| (head.status, head.close)))
            .collect();
        assert_eq!(
            statuses,
            vec![Ok((200, false)), Ok((503, false)), Ok((200, true))]
        );
    }

    #[test]
    fn bodies_larger_than_one_read_are_skipped_whole() {
        let body = vec![b'x'; 3 * READ_CHUNK_BYTES + 17];
        let mut bytes =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
        let heads = read_all(&bytes, &mut ResponseReader::default());
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[1].as_ref().map(|head| head.status), Ok(204));
    }

    #[test]
    fn malformed_and_truncated_responses_are_errors_not_panics() {
        for bytes in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let heads = read_all(bytes, &mut ResponseReader::default());
            assert!(matches!(heads.as_slice(), [Err(_)]), "{heads:?}");
        }
        let mut stream = futures_lite::io::Cursor::new(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec());
        let result = futures_lite::future::block_on(ResponseReader::default().next(&mut stream));
        assert!(matches!(result, Err(ClientError::Closed)));
    }

    #[test]
    fn requests_carry_prefix_host_and_token() {
        let target = super::super::args::parse_url("http://127.0.0.1:9/api").expect("url");
        let encoder = RequestEncoder::new(&target, Some("secret"));
        let mut out = Vec::new();
        encoder.encode(&Scenario::CounterHot, 0, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "GET /api/objects/counter/hot/increment HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\
Authorization: Bearer secret\r\n\r\n"
        );
    }
}
