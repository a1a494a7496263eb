//! The HTTP front of every request: parsing a typical keep-alive request out of the read
//! buffer, and routing its path to an object. Each iteration is one request, so criterion's
//! `time` is the cost per request in ns.
//!
//! `cargo bench --bench http_parse`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use stead::config::HttpLimits;
use stead::http::{parse_request, route, Route};

/// What `stead bench --scenario counter-spread` sends, as curl-like clients send it.
const TYPICAL_REQUEST: &[u8] = b"GET /objects/counter/c417/increment HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\n\
User-Agent: stead-bench\r\n\
Accept: */*\r\n\r\n";

/// A request with a query string and a small JSON body, as the rate limiter and lock see.
const REQUEST_WITH_BODY: &[u8] =
    b"POST /objects/ratelimiter/user%2042/check?limit=100&windowMs=60000 HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\n\
Content-Type: application/json\r\n\
Content-Length: 26\r\n\r\n\
{\"owner\":\"worker-7\",\"n\":1}";

fn parse_and_route(bytes: &[u8], limits: &HttpLimits) -> Route {
    let parsed = match parse_request(bytes, limits) {
        Ok(Some(parsed)) => parsed,
        other => panic!("a complete request: {other:?}"),
    };
    match route(parsed.request.method, &parsed.request.path, limits) {
        Ok(route) => route,
        Err(response) => panic!("routable: {}", response.status),
    }
}

fn bench_http(c: &mut Criterion) {
    let limits = HttpLimits::default();
    assert!(matches!(
        parse_and_route(TYPICAL_REQUEST, &limits),
        Route::Object { .. }
    ));
    assert!(matches!(
        parse_and_route(REQUEST_WITH_BODY, &limits),
        Route::Object { .. }
    ));
    let mut group = c.benchmark_group("http");
    group.bench_function("parse_get", |b| {
        b.iter(|| parse_request(black_box(TYPICAL_REQUEST), &limits))
    });
    group.bench_function("parse_and_route_get", |b| {
        b.iter(|| parse_and_route(black_box(TYPICAL_REQUEST), &limits))
    });
    group.bench_function("parse_and_route_post_with_query_and_body", |b| {
        b.iter(|| parse_and_route(black_box(REQUEST_WITH_BODY), &limits))
    });
    group.finish();
}

criterion_group!(benches, bench_http);
criterion_main!(benches);
