use super::*;

fn encoded(response: &Response, head_only: bool, keep_alive: bool) -> String {
    let mut out = Vec::new();
    encode_response(response, head_only, keep_alive, &mut out);
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn status_headers_length_and_body() {
    let response = Response::text(200, "hello");
    assert_eq!(
        encoded(&response, false, true),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\
         Connection: keep-alive\r\n\r\nhello"
    );
    assert_eq!(
        encoded(&Response::not_found(), false, false),
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 9\r\n\
         Connection: close\r\n\r\nNot Found"
    );
}

#[test]
fn head_keeps_the_length_but_not_the_body() {
    let text = encoded(&Response::new(200, "hello"), true, true);
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"
    );
}

#[test]
fn responses_append_to_the_buffer() {
    let mut out = Vec::new();
    encode_response(&Response::new(200, "a"), false, true, &mut out);
    encode_response(&Response::new(201, "b"), false, true, &mut out);
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(text.contains("\r\n\r\naHTTP/1.1 201 Created\r\n"));
    assert!(text.ends_with("\r\n\r\nb"));
}

#[test]
fn header_injection_is_impossible() {
    let response = Response::new(200, "x")
        .with_header("X-Ok", "fine")
        .with_header("X-Evil", "a\r\nSet-Cookie: stolen")
        .with_header("X-Evil-Lf", "a\nb")
        .with_header("X-Nul", "a\0b")
        .with_header("Bad Name", "v")
        .with_header("X-Name\r\nInjected", "v")
        .with_header("", "v")
        .with_header("Content-Length", "999")
        .with_header("connection", "keep-alive")
        .with_header("Transfer-Encoding", "chunked");
    let text = encoded(&response, false, false);
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\nX-Ok: fine\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    );
}

#[test]
fn bodiless_statuses_and_switching_protocols() {
    let upgrade = Response::new(101, "").with_header("Upgrade", "websocket");
    assert_eq!(
        encoded(&upgrade, false, true),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    );
    let no_content = Response::new(204, "ignored");
    assert_eq!(
        encoded(&no_content, false, true),
        "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
    );
    // An impossible status becomes 500 rather than a malformed status line.
    assert!(encoded(&Response::new(7, ""), false, true)
        .starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
    assert!(encoded(&Response::new(599, ""), false, true).starts_with("HTTP/1.1 599 Unknown\r\n"));
}
