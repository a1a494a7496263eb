//! The built-in classes over real HTTP, per the contract in the design seeds.

mod common;

use common::TestServer;

#[test]
fn counter_answers_as_the_design_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    assert_eq!(client.get("/objects/counter/a/value").text(), "0");
    assert_eq!(client.get("/objects/counter/a/increment").text(), "1");
    assert_eq!(
        client
            .request("POST", "/objects/counter/a/increment", b"")
            .text(),
        "2"
    );
    assert_eq!(client.get("/objects/counter/a/decrement").text(), "1");
    assert_eq!(client.get("/objects/counter/a/value").text(), "1");
    assert_eq!(client.get("/objects/counter/b/value").text(), "0");
    let missing = client.get("/objects/counter/a/reset");
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (404, "Not Found")
    );
    let names = client.get("/objects/counter/with%20space%2Fslash/increment");
    assert_eq!(names.text(), "1");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn unknown_routes_and_classes_are_404() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    for path in ["/", "/nothing", "/objects", "/objects/nosuchclass/x/value"] {
        let reply = client.get(path);
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (404, "Not Found"),
            "{path}"
        );
    }
    assert_eq!(client.get("/healthz").status, 200);
}

#[test]
fn ratelimiter_allows_then_denies_without_recording() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    let path = "/objects/ratelimiter/user-1/check?limit=3&windowMs=60000";
    let mut first_reset = 0;
    for remaining in [2, 1, 0] {
        let reply = client.get(path);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body = reply.json();
        assert_eq!(body["allowed"], true);
        assert_eq!(body["remaining"], remaining);
        let reset = body["resetAt"].as_i64().expect("resetAt");
        if remaining == 2 {
            first_reset = reset;
        }
    }
    for _ in 0..3 {
        let denied = client.get(path);
        assert_eq!(denied.status, 429);
        assert_eq!(denied.header("content-type"), Some("application/json"));
        let body = denied.json();
        assert_eq!(body["allowed"], false);
        assert_eq!(body["remaining"], 0);
        // resetAt is the oldest recorded request plus the window: denials recorded nothing.
        assert_eq!(body["resetAt"].as_i64(), Some(first_reset));
    }
    // Another key has its own window; the default limit is 100.
    let other = client.get("/objects/ratelimiter/user-2/check").json();
    assert_eq!(other["remaining"], 99);
    // A short window lets requests in again once it has passed.
    let short = "/objects/ratelimiter/user-3/check?limit=1&windowMs=200";
    assert_eq!(client.get(short).status, 200);
    assert_eq!(client.get(short).status, 429);
    assert!(common::wait_until(
        std::time::Duration::from_secs(5),
        || client.get(short).status == 200
    ));
    let bad = client.get("/objects/ratelimiter/user-4/check?limit=zero");
    assert_eq!(bad.status, 400);
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    for _ in 0..5 {
        client.get("/objects/counter/persist/increment");
    }
    let limited = "/objects/ratelimiter/k/check?limit=2&windowMs=600000";
    client.get(limited);
    client.get(limited);
    assert_eq!(server.stop(), Some(0));

    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    assert_eq!(client.get("/objects/counter/persist/value").text(), "5");
    assert_eq!(client.get(limited).status, 429);
}

#[test]
fn unique_ids_address_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    let created = client.request("POST", "/ids/counter", b"");
    assert_eq!(created.status, 200);
    let id = created.json()["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 64);
    assert_eq!(
        client
            .get(&format!("/objects/counter/id:{id}/increment"))
            .text(),
        "1"
    );
    assert_eq!(
        client
            .get(&format!("/objects/counter/id:{id}/value"))
            .text(),
        "1"
    );
    assert_eq!(
        client
            .get(&format!("/objects/ratelimiter/id:{id}/check"))
            .status,
        400
    );
    assert_eq!(client.get("/objects/counter/id:xyz/value").status, 400);
    assert_eq!(client.request("POST", "/ids/nosuchclass", b"").status, 404);
}
