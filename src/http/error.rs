//! Why a request could not be parsed, with the numbers needed to diagnose it and the status code
//! the client gets. Every variant ends the connection after its response.

use std::fmt;

use super::Response;

/// A request the parser refuses. The connection answers `status()` and closes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The request line and headers grew past `header_bytes_max` (431).
    HeadersTooLarge { bytes: usize, max: usize },
    /// More header fields than `header_count_max` (431).
    TooManyHeaders { max: usize },
    /// The body (declared, decoded or framed) is larger than allowed (413).
    BodyTooLarge { bytes: u64, max: u64 },
    /// Not HTTP/1.x syntax: bad request line, header or chunk framing (400).
    Malformed(&'static str),
    /// A method stead does not serve (405).
    UnsupportedMethod(String),
    /// A transfer coding other than `chunked` (400).
    UnsupportedTransferCoding(String),
    /// Both `Content-Length` and `Transfer-Encoding`: a request-smuggling vector (400).
    BothLengthAndChunked,
    /// A `Content-Length` that is not one decimal number, or several that disagree (400).
    BadContentLength,
    /// An HTTP version other than 1.0 and 1.1 (505).
    UnsupportedVersion,
    /// `Transfer-Encoding` in an HTTP/1.0 request, where it is not defined (400).
    TransferEncodingInHttp10,
    /// `Upgrade` in an HTTP/1.0 request: switching protocols needs HTTP/1.1 (400).
    UpgradeInHttp10,
}

impl HttpError {
    /// The status code of the response that reports this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadersTooLarge { .. } | HttpError::TooManyHeaders { .. } => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::UnsupportedMethod(_) => 405,
            HttpError::UnsupportedVersion => 505,
            HttpError::Malformed(_)
            | HttpError::UnsupportedTransferCoding(_)
            | HttpError::BothLengthAndChunked
            | HttpError::BadContentLength
            | HttpError::TransferEncodingInHttp10
            | HttpError::UpgradeInHttp10 => 400,
        }
    }

    /// The response sent before closing: `{"error": "<this error>"}`.
    pub fn to_response(&self) -> Response {
        Response::json_error(self.status(), &self.to_string())
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::HeadersTooLarge { bytes, max } => {
                write!(
                    formatter,
                    "request headers too large: {bytes} bytes, at most {max}"
                )
            }
            HttpError::TooManyHeaders { max } => {
                write!(formatter, "too many request headers: at most {max}")
            }
            HttpError::BodyTooLarge { bytes, max } => {
                write!(
                    formatter,
                    "request body too large: {bytes} bytes, at most {max}"
                )
            }
            HttpError::Malformed(reason) => write!(formatter, "malformed request: {reason}"),
            HttpError::UnsupportedMethod(method) => {
                write!(formatter, "method not allowed: {method}")
            }
            HttpError::UnsupportedTransferCoding(coding) => {
                write!(formatter, "unsupported transfer coding: {coding}")
            }
            HttpError::BothLengthAndChunked => {
                write!(formatter, "both Content-Length and Transfer-Encoding")
            }
            HttpError::BadContentLength => write!(formatter, "invalid Content-Length"),
            HttpError::UnsupportedVersion => write!(formatter, "HTTP version not supported"),
            HttpError::TransferEncodingInHttp10 => {
                write!(formatter, "Transfer-Encoding is not allowed in HTTP/1.0")
            }
            HttpError::UpgradeInHttp10 => write!(formatter, "Upgrade needs HTTP/1.1"),
        }
    }
}

impl std::error::Error for HttpError {}
