use super::*;

fn limits() -> HttpLimits {
    HttpLimits::default()
}

fn parse(raw: &[u8]) -> Result<Option<ParsedRequest>, HttpError> {
    parse_request(raw, &limits())
}

fn complete(raw: &[u8]) -> ParsedRequest {
    match parse(raw) {
        Ok(Some(parsed)) => parsed,
        other => panic!("expected a complete request from {:?}, got {other:?}", raw),
    }
}

fn refused(raw: &[u8]) -> HttpError {
    match parse(raw) {
        Err(error) => error,
        other => panic!("expected an error from {:?}, got {other:?}", raw),
    }
}

#[test]
fn a_simple_get() {
    let raw =
        b"GET /objects/counter/a/value?x=1&y=%20 HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: V\r\n\r\n";
    let parsed = complete(raw);
    assert_eq!(parsed.consumed, raw.len());
    assert!(parsed.keep_alive);
    assert!(!parsed.expect_continue);
    let request = parsed.request;
    assert_eq!(request.method, Method::Get);
    assert_eq!(request.path, "/objects/counter/a/value");
    assert_eq!(request.query, "x=1&y=%20");
    assert_eq!(request.header("x-mixed-case"), Some("V"));
    assert_eq!(request.headers.len(), 2);
    assert!(request.body.is_empty());
}

#[test]
fn query_splits_on_the_first_question_mark() {
    let parsed = complete(b"GET /a?b?c HTTP/1.1\r\n\r\n");
    assert_eq!(
        (parsed.request.path.as_str(), parsed.request.query.as_str()),
        ("/a", "b?c")
    );
    let parsed = complete(b"GET /a? HTTP/1.1\r\n\r\n");
    assert_eq!(
        (parsed.request.path.as_str(), parsed.request.query.as_str()),
        ("/a", "")
    );
}

#[test]
fn pipelined_requests_parse_one_at_a_time() {
    let raw = b"GET /one HTTP/1.1\r\n\r\nPOST /two HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcDELETE /three HTTP/1.1\r\n\r\nGET /fo";
    let mut offset = 0;
    let mut seen = Vec::new();
    while let Some(parsed) = parse(&raw[offset..]).expect("valid") {
        offset += parsed.consumed;
        seen.push((
            parsed.request.method,
            parsed.request.path,
            parsed.request.body,
        ));
    }
    assert_eq!(
        seen,
        vec![
            (Method::Get, "/one".to_string(), vec![]),
            (Method::Post, "/two".to_string(), b"abc".to_vec()),
            (Method::Delete, "/three".to_string(), vec![]),
        ]
    );
    assert_eq!(&raw[offset..], b"GET /fo");
}

#[test]
fn every_prefix_is_incomplete_until_the_last_byte() {
    let requests: [&[u8]; 3] = [
        b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"PUT /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\n",
        b"GET /p HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ];
    for raw in requests {
        for end in 0..raw.len() {
            assert_eq!(parse(&raw[..end]), Ok(None), "prefix {:?}", &raw[..end]);
        }
        let parsed = complete(raw);
        assert_eq!(parsed.consumed, raw.len());
    }
}

#[test]
fn chunked_bodies_are_decoded() {
    let raw = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nA \r\n0123456789\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
    let parsed = complete(raw);
    assert_eq!(parsed.request.body, b"abc0123456789");
    assert_eq!(&raw[parsed.consumed..], b"GET /next HTTP/1.1\r\n\r\n");
    // The coding name is case-insensitive, and chunk size digits may be upper or lower case.
    let parsed = complete(
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\nf\r\n0123456789abcde\r\n0\r\n\r\n",
    );
    assert_eq!(parsed.request.body.len(), 15);
}

#[test]
fn bad_chunk_framing_is_malformed() {
    let bad: [&[u8]; 6] = [
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
    ];
    for raw in bad {
        let error = refused(raw);
        assert_eq!(
            error.status(),
            400,
            "{error} for {:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn oversized_chunked_bodies_fail_early() {
    let mut limits = limits();
    limits.body_bytes_max = 10;
    // The chunk size alone already exceeds the limit: no need to wait for the data.
    let raw = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n";
    assert!(matches!(
        parse_request(raw, &limits),
        Err(HttpError::BodyTooLarge { bytes: 11, max: 10 })
    ));
    // Many small chunks add up.
    let raw = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\n";
    assert_eq!(
        parse_request(raw, &limits).map_err(|error| error.status()),
        Err(413)
    );
    // Framing overhead is bounded too (here by body_bytes_max + header_bytes_max).
    limits.header_bytes_max = 64;
    let mut raw = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(b"0\r\n");
    for _ in 0..40 {
        raw.extend_from_slice(b"Trailer: value\r\n");
    }
    assert_eq!(
        parse_request(&raw, &limits).map_err(|error| error.status()),
        Err(413)
    );
}

#[test]
fn content_length_over_the_limit_fails_before_the_body() {
    let error = refused(b"POST /x HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n");
    assert_eq!(
        error,
        HttpError::BodyTooLarge {
            bytes: 999_999_999,
            max: 1024 * 1024
        }
    );
    assert_eq!(error.status(), 413);
    assert!(error.to_response().body.starts_with(b"{\"error\":"));
}

#[test]
fn content_length_must_be_one_number() {
    for value in [
        "abc",
        "-1",
        "+1",
        "1 2",
        "",
        "99999999999999999999999",
        "0x10",
    ] {
        let raw = format!("POST /x HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
        assert_eq!(
            refused(raw.as_bytes()),
            HttpError::BadContentLength,
            "{value:?}"
        );
    }
    let raw = b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    assert_eq!(refused(raw), HttpError::BadContentLength);
    // The same value twice is harmless.
    let raw = b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab";
    assert_eq!(complete(raw).request.body, b"ab");
}

#[test]
fn transfer_codings_other_than_chunked_are_refused() {
    for value in ["gzip", "gzip, chunked", "chunked, chunked", "identity", ""] {
        let raw = format!("POST /x HTTP/1.1\r\nTransfer-Encoding: {value}\r\n\r\n");
        let error = refused(raw.as_bytes());
        assert!(
            matches!(error, HttpError::UnsupportedTransferCoding(_)),
            "{value:?}: {error}"
        );
        assert_eq!(error.status(), 400);
    }
    let raw = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(refused(raw), HttpError::BothLengthAndChunked);
}

#[test]
fn oversized_and_too_many_headers_are_431() {
    let mut raw = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 20 * 1024));
    // Refused before the head is complete.
    let error = refused(&raw);
    assert!(
        matches!(error, HttpError::HeadersTooLarge { max: 16384, .. }),
        "{error}"
    );
    assert_eq!(error.status(), 431);

    let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
    for index in 0..65 {
        raw.extend_from_slice(format!("X-{index}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    assert_eq!(refused(&raw), HttpError::TooManyHeaders { max: 64 });

    // A larger configured count works (and uses the heap path).
    let mut many = limits();
    many.header_count_max = 100;
    assert!(matches!(parse_request(&raw, &many), Ok(Some(_))));
}

#[test]
fn methods_targets_and_versions() {
    let error_of = |raw: &[u8]| refused(raw);
    assert_eq!(
        error_of(b"BREW /pot HTTP/1.1\r\n\r\n"),
        HttpError::UnsupportedMethod("BREW".into())
    );
    assert_eq!(error_of(b"BREW /pot HTTP/1.1\r\n\r\n").status(), 405);
    assert_eq!(error_of(b"THIS IS NOT HTTP\r\n\r\n").status(), 400);
    assert_eq!(
        error_of(b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n").status(),
        400
    );
    assert_eq!(
        error_of(b"GET http://host/x HTTP/1.1\r\n\r\n").status(),
        400
    );
    assert_eq!(error_of(b"OPTIONS * HTTP/1.1\r\n\r\n").status(), 400);
    assert_eq!(error_of(b"GET / HTTP/2.0\r\n\r\n").status(), 505);
    assert_eq!(error_of(b"\x00\x01\x02\r\n\r\n").status(), 400);
    for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let raw = format!("{method} / HTTP/1.1\r\n\r\n");
        assert_eq!(complete(raw.as_bytes()).request.method.as_str(), method);
    }
}

#[test]
fn keep_alive_follows_version_and_connection_header() {
    let cases: [(&[u8], bool); 6] = [
        (b"GET / HTTP/1.1\r\n\r\n", true),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
        (
            b"GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n",
            false,
        ),
        (b"GET / HTTP/1.0\r\n\r\n", false),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        (
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
            false,
        ),
    ];
    for (raw, keep_alive) in cases {
        assert_eq!(
            complete(raw).keep_alive,
            keep_alive,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn expect_continue_is_reported() {
    let parsed = complete(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nx");
    assert!(parsed.expect_continue);
    assert_eq!(parsed.request.body, b"x");
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap stand-in for the fuzz target: every prefix and a few mutations of valid requests.
    let seed: &[u8] = b"POST /objects/c/n/p?q HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nbody\r\n0\r\n\r\n";
    for position in 0..seed.len() {
        for replacement in [b'\r', b'\n', b'0', b'f', b':', b' ', 0xff, 0] {
            let mut mutated = seed.to_vec();
            mutated[position] = replacement;
            for end in [position, mutated.len()] {
                let _ = parse(&mutated[..end]);
            }
        }
    }
}

#[test]
fn bare_line_feeds_are_refused() {
    let cases: [&[u8]; 4] = [
        b"GET / HTTP/1.1\n\n",
        b"GET / HTTP/1.1\r\nHost: h\n\r\n",
        b"GET / HTTP/1.1\nHost: h\r\n\r\n",
        b"\nGET / HTTP/1.1\r\n\r\n",
    ];
    for raw in cases {
        let error = refused(raw);
        assert_eq!(
            error,
            HttpError::Malformed("bare LF line ending"),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(error.status(), 400);
    }
    // An LF inside the body is the body's business.
    let parsed = complete(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\na\n");
    assert_eq!(parsed.request.body, b"a\n");
    // Leading CRLFs before the request line stay allowed, as RFC 9112 asks.
    complete(b"\r\nGET / HTTP/1.1\r\n\r\n");
}

#[test]
fn transfer_encoding_in_http_1_0_is_refused() {
    for value in ["chunked", "gzip"] {
        let raw = format!("POST / HTTP/1.0\r\nTransfer-Encoding: {value}\r\n\r\n0\r\n\r\n");
        let error = refused(raw.as_bytes());
        assert_eq!(error, HttpError::TransferEncodingInHttp10, "{value}");
        assert_eq!(error.status(), 400);
    }
    // The same request in HTTP/1.1 is fine.
    complete(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
}

#[test]
fn upgrade_in_http_1_0_is_refused() {
    let raw =
        b"GET /objects/chat/a/websocket HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let error = refused(raw);
    assert_eq!(error, HttpError::UpgradeInHttp10);
    assert_eq!(error.status(), 400);
    let upgrade_1_1 = String::from_utf8_lossy(raw).replace("HTTP/1.0", "HTTP/1.1");
    complete(upgrade_1_1.as_bytes());
}
