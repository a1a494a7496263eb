//! Arbitrary bytes as a connection's read buffer: the parser never panics, never claims more
//! bytes than it was given, finds the same request in exactly the bytes it consumed, and what it
//! accepts routes and encodes without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stead::config::HttpLimits;
use stead::http::{encode_response, parse_request, route, Response};

/// Small limits, so that fuzzing reaches every limit check quickly.
fn limits() -> HttpLimits {
    HttpLimits {
        header_bytes_max: 512,
        header_count_max: 8,
        body_bytes_max: 256,
        object_name_bytes_max: 16,
        ..HttpLimits::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = limits();
    let mut offset = 0;
    // Parse pipelined requests as the connection loop does; each one consumes at least a byte,
    // so this ends.
    while offset < data.len() {
        let buffer = &data[offset..];
        let parsed = match parse_request(buffer, &limits) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            Err(error) => {
                assert!((400..=599).contains(&error.status()));
                break;
            }
        };
        assert!(parsed.consumed > 0 && parsed.consumed <= buffer.len());
        assert!(parsed.request.body.len() <= limits.body_bytes_max);
        assert!(parsed.request.path.starts_with('/'));
        let again = parse_request(&buffer[..parsed.consumed], &limits);
        assert_eq!(again.as_ref().ok().and_then(|again| again.as_ref()), Some(&parsed));

        let routed = route(parsed.request.method, &parsed.request.path, &limits);
        let mut response = match routed {
            Ok(_) => Response::new(200, parsed.request.body.clone()),
            Err(response) => response,
        };
        // A handler echoing request headers into its response must not be able to inject any.
        for (name, value) in &parsed.request.headers {
            response = response.with_header(name, &String::from_utf8_lossy(value));
        }
        let mut out = Vec::new();
        encode_response(&response, false, parsed.keep_alive, &mut out);
        let head_end = out.windows(4).position(|window| window == b"\r\n\r\n");
        assert!(head_end.is_some_and(|end| out.len() - end - 4 == response.body.len()));
        offset += parsed.consumed;
    }
});
