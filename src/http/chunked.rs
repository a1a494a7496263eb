//! `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1): decoded in two passes over the read
//! buffer — a scan that checks the framing and finds the end, then, only once the whole body is
//! there, a copy of the chunk data. Trailers are read and ignored.

use super::HttpError;

/// Longest chunk-size line (size, extensions) or trailer line, in bytes. Chunk extensions are
/// ignored, so a client has no reason to send long ones.
const LINE_BYTES_MAX: usize = 8 * 1024;

/// Hex digits of a chunk size: 15 keep it below 2^60, so no arithmetic on it can overflow.
const SIZE_DIGITS_MAX: usize = 15;

/// The limits one chunked body is held to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkedLimits {
    /// Largest decoded body (`body_bytes_max`).
    pub decoded_bytes_max: u64,
    /// Largest body as framed on the wire, chunk headers and trailers included: bounds the read
    /// buffer a chunked request can fill.
    pub raw_bytes_max: u64,
}

/// A complete chunked body found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ChunkedBody {
    /// Bytes of the buffer the framed body takes, up to and including the final CRLF.
    pub raw_bytes: usize,
    /// The decoded body.
    pub body: Vec<u8>,
}

/// Decodes the chunked body at the start of `raw`. `Ok(None)` means more bytes are needed;
/// every limit is checked on what has arrived so far, so an oversized body fails early.
pub(crate) fn decode_chunked(
    raw: &[u8],
    limits: ChunkedLimits,
) -> Result<Option<ChunkedBody>, HttpError> {
    let mut decoded_bytes = 0usize;
    let Some(raw_bytes) = walk(raw, limits, |data| decoded_bytes += data.len())? else {
        return Ok(None);
    };
    let mut body = Vec::with_capacity(decoded_bytes);
    // The second walk sees the same bytes, so it cannot fail or stop short.
    walk(raw, limits, |data| body.extend_from_slice(data))?;
    debug_assert_eq!(body.len(), decoded_bytes);
    Ok(Some(ChunkedBody { raw_bytes, body }))
}

/// Walks the framing, handing each chunk's data to `sink`; returns the framed length once the
/// body is complete.
fn walk(
    raw: &[u8],
    limits: ChunkedLimits,
    mut sink: impl FnMut(&[u8]),
) -> Result<Option<usize>, HttpError> {
    let mut position = 0usize;
    let mut decoded_bytes = 0u64;
    loop {
        let Some(line_end) = find_line(raw, position)? else {
            return Ok(None);
        };
        let size = parse_size(&raw[position..line_end])?;
        position = line_end + 2;
        decoded_bytes += size;
        if decoded_bytes > limits.decoded_bytes_max {
            return Err(HttpError::BodyTooLarge {
                bytes: decoded_bytes,
                max: limits.decoded_bytes_max,
            });
        }
        check_raw(position as u64 + size, limits)?;
        if size == 0 {
            return skip_trailers(raw, position, limits);
        }
        // `size` is below `raw_bytes_max`, itself a buffer size, so it fits in usize.
        let data_end = position + size as usize;
        if raw.len() < data_end + 2 {
            return Ok(None);
        }
        if &raw[data_end..data_end + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk data not followed by CRLF"));
        }
        sink(&raw[position..data_end]);
        position = data_end + 2;
    }
}

/// Skips trailer fields up to the empty line that ends the body.
fn skip_trailers(
    raw: &[u8],
    mut position: usize,
    limits: ChunkedLimits,
) -> Result<Option<usize>, HttpError> {
    loop {
        let Some(line_end) = find_line(raw, position)? else {
            return Ok(None);
        };
        let empty = line_end == position;
        position = line_end + 2;
        check_raw(position as u64, limits)?;
        if empty {
            return Ok(Some(position));
        }
    }
}

fn check_raw(bytes: u64, limits: ChunkedLimits) -> Result<(), HttpError> {
    if bytes > limits.raw_bytes_max {
        return Err(HttpError::BodyTooLarge {
            bytes,
            max: limits.raw_bytes_max,
        });
    }
    Ok(())
}

/// The index of the CRLF ending the line that starts at `start`, if it has arrived.
fn find_line(raw: &[u8], start: usize) -> Result<Option<usize>, HttpError> {
    let rest = &raw[start.min(raw.len())..];
    let window = &rest[..rest.len().min(LINE_BYTES_MAX + 2)];
    match window.windows(2).position(|pair| pair == b"\r\n") {
        Some(offset) => Ok(Some(start + offset)),
        None if window.len() >= LINE_BYTES_MAX + 2 => {
            Err(HttpError::Malformed("chunk line too long"))
        }
        None if window.contains(&b'\n') => Err(HttpError::Malformed("bare LF in chunked body")),
        None => Ok(None),
    }
}

/// `1*HEXDIG [ BWS ";" extensions ]`; extensions are ignored.
fn parse_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line
        .iter()
        .take_while(|byte| byte.is_ascii_hexdigit())
        .count();
    if digits == 0 {
        return Err(HttpError::Malformed("invalid chunk size"));
    }
    if digits > SIZE_DIGITS_MAX {
        return Err(HttpError::Malformed("chunk size too long"));
    }
    let rest = &line[digits..];
    let rest_start = rest
        .iter()
        .take_while(|byte| matches!(byte, b' ' | b'\t'))
        .count();
    let rest = &rest[rest_start..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(HttpError::Malformed("invalid chunk size"));
    }
    if line.iter().any(|byte| *byte == b'\n' || *byte == b'\r') {
        return Err(HttpError::Malformed("bare CR or LF in chunk size line"));
    }
    let size = line[..digits].iter().fold(0u64, |size, digit| {
        // Only ASCII hex digits are here, so to_digit cannot fail.
        size * 16 + u64::from((*digit as char).to_digit(16).unwrap_or(0))
    });
    Ok(size)
}
