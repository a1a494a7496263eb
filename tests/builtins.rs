//! The built-in classes over real HTTP, per the contract in the design seeds.

mod common;

use common::{wait_until, Reply, TestServer};

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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Sends every request before reading any answer (one connection, pipelined), so that many
/// requests land within a short window; the answers, in order.
fn pipelined(client: &mut common::Client, requests: &[(&str, String, Vec<u8>)]) -> Vec<Reply> {
    let mut replies = Vec::new();
    // At most 100 in flight: below the server's pipelining depth (128).
    for chunk in requests.chunks(100) {
        for (method, path, body) in chunk {
            client.send_request(method, path, &[], body);
        }
        for _ in chunk {
            replies.push(client.read_reply().expect("reply"));
        }
    }
    replies
}

const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

#[test]
fn ratelimiter_answers_after_more_than_a_batch_of_entries_expire_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    let path = "/objects/ratelimiter/burst/check?limit=300&windowMs=2000".to_string();
    let checks: Vec<_> = (0..300)
        .map(|_| ("GET", path.clone(), Vec::new()))
        .collect();
    let replies = pipelined(&mut client, &checks);
    assert!(replies.iter().all(|reply| reply.status == 200));
    let resets: Vec<i64> = replies
        .iter()
        .map(|reply| reply.json()["resetAt"].as_i64().expect("resetAt"))
        .collect();
    // The report's case needs more than batch_keys_max (128) entries expiring together.
    assert!(resets[299] - resets[150] < 2000, "the checks were too slow");
    let last_reset = resets[299];
    assert!(wait_until(PATIENCE, || now_ms() > last_reset));
    // Every recorded request left the window: the count starts again from one.
    for remaining in [299, 298, 297, 296] {
        let reply = client.get(&path);
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["remaining"], remaining);
    }
    // Keys waiting to be deleted are forgotten by a restart's reload too.
    assert_eq!(server.stop(), Some(0));
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    let reply = client.get(&path);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["remaining"], 295);
    assert_eq!(server.stop(), Some(0));
}

/// Waits until the server's alarms have fired and none is left or being retried; false if a
/// delivery failed.
fn alarms_done(server: &TestServer) -> bool {
    assert!(wait_until(PATIENCE, || {
        let fired = server.metric_sum("stead_alarms_fired_total");
        let failed = server.metric_sum("stead_alarms_failures_total");
        let pending = server.metric_sum("stead_alarms_pending");
        failed > 0.0 || (fired >= 1.0 && pending == 0.0)
    }));
    server.metric_sum("stead_alarms_failures_total") == 0.0
}

#[test]
fn more_than_a_batch_of_sessions_expire_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    let body = br#"{"userId":"u","data":1,"ttlMs":1000}"#.to_vec();
    let path = "/objects/sessions/many/sessions".to_string();
    let creates: Vec<_> = (0..300)
        .map(|_| ("POST", path.clone(), body.clone()))
        .collect();
    let replies = pipelined(&mut client, &creates);
    assert!(replies.iter().all(|reply| reply.status == 201));
    let last = replies[299].json()["id"].as_str().expect("id").to_string();
    let last_path = format!("{path}/{last}");
    let expires_at = number(&client.get(&last_path), "expiresAt");
    // Down while they expire, so that the alarm finds all 300 expired when it fires.
    assert_eq!(server.stop(), Some(0));
    assert!(wait_until(PATIENCE, || now_ms() > expires_at));
    let server = TestServer::start(dir.path(), 1, &[]);
    assert!(alarms_done(&server), "the expiry alarm failed");
    assert_eq!(server.client().get(&last_path).status, 404);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn more_than_a_batch_of_scheduled_events_fire_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    let run_at = now_ms() + 1000;
    let path = "/objects/scheduler/many/events".to_string();
    let posts: Vec<_> = (0..300)
        .map(|index| {
            let body = format!(r#"{{"id":"e{index}","runAt":{run_at}}}"#);
            ("POST", path.clone(), body.into_bytes())
        })
        .collect();
    let replies = pipelined(&mut client, &posts);
    assert!(replies.iter().all(|reply| reply.status == 201));
    // Down while they fall due, so that the alarm finds all 300 due when it fires.
    assert_eq!(server.stop(), Some(0));
    assert!(wait_until(PATIENCE, || now_ms() > run_at));
    let server = TestServer::start(dir.path(), 1, &[]);
    assert!(alarms_done(&server), "the scheduler's alarm failed");
    let mut client = server.client();
    let fired = client.get("/objects/scheduler/many/fired").json();
    assert_eq!(fired.as_array().map(Vec::len), Some(300));
    assert_eq!(client.get(&path).text(), "[]");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_value_too_large_is_the_clients_error_413() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    // Within body_bytes_max (1 MiB), over value_bytes_max (128 KiB) once stored.
    let data = "x".repeat(200 * 1024);
    let body = format!(r#"{{"userId":"u","data":"{data}"}}"#);
    let reply = client.request("POST", "/objects/sessions/big/sessions", body.as_bytes());
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let message = reply.json()["error"].as_str().expect("error").to_string();
    assert!(message.contains("value_bytes_max"), "{message}");
    // Nothing was stored, and the object still works.
    let small = client.request(
        "POST",
        "/objects/sessions/big/sessions",
        br#"{"userId":"u","data":1}"#,
    );
    assert_eq!(small.status, 201);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn the_scheduler_refuses_a_repeat_below_its_minimum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    let path = "/objects/scheduler/floor/events";
    let fast = client.request("POST", path, br#"{"id":"t","runAt":1,"repeatMs":1}"#);
    assert_eq!(fast.status, 400);
    assert_eq!(
        fast.text(),
        r#"{"error":"repeatMs must be an integer of at least 1000 (repeat_ms_min)"}"#
    );
    let at_floor = client.request("POST", path, br#"{"id":"t","runAt":1,"repeatMs":1000}"#);
    assert_eq!(at_floor.status, 201);
    assert_eq!(server.stop(), Some(0));

    // The floor is configurable.
    let config = dir.path().join("stead.toml");
    std::fs::write(&config, "[scheduler]\nrepeat_ms_min = 50\n").expect("config");
    let data = dir.path().join("data");
    let server = TestServer::start(&data, 1, &["--config", config.to_str().expect("path")]);
    let mut client = server.client();
    let body = br#"{"id":"t","runAt":1,"repeatMs":49}"#;
    let below = client.request("POST", path, body);
    assert_eq!(below.status, 400);
    assert!(below.text().contains("at least 50"), "{}", below.text());
    let ok = client.request("POST", path, br#"{"id":"t","runAt":99,"repeatMs":50}"#);
    assert_eq!(ok.status, 201);
    assert_eq!(server.stop(), Some(0));
}

/// The `i64` field `name` of a JSON answer (for building the exact bytes expected).
fn number(reply: &Reply, name: &str) -> i64 {
    reply.json()[name].as_i64().expect(name)
}

#[test]
fn answers_keep_the_designs_field_order_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();

    // ratelimiter: {allowed, remaining, resetAt}, allowed or not.
    let path = "/objects/ratelimiter/order/check?limit=1&windowMs=60000";
    let allowed = client.get(path);
    let reset = number(&allowed, "resetAt");
    assert_eq!(
        allowed.text(),
        format!(r#"{{"allowed":true,"remaining":0,"resetAt":{reset}}}"#)
    );
    let denied = client.get(path);
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.text(),
        format!(r#"{{"allowed":false,"remaining":0,"resetAt":{reset}}}"#)
    );
    let bad = client.get("/objects/ratelimiter/order/check?limit=0");
    assert_eq!(
        bad.text(),
        r#"{"error":"limit must be a positive integer, got \"0\""}"#
    );

    // lock: {locked, holder, waiting}, and the one-field answers.
    let lock = "/objects/lock/order";
    let free = client.get(&format!("{lock}/status"));
    assert_eq!(free.text(), r#"{"locked":false,"holder":null,"waiting":0}"#);
    let acquired = client.get(&format!("{lock}/acquire?clientId=ada"));
    assert_eq!(acquired.text(), r#"{"acquired":true}"#);
    let held = client.get(&format!("{lock}/status"));
    assert_eq!(held.text(), r#"{"locked":true,"holder":"ada","waiting":0}"#);
    let refused = client.get(&format!("{lock}/release?clientId=bob"));
    assert_eq!(
        (refused.status, refused.text().as_str()),
        (403, r#"{"error":"Not lock holder"}"#)
    );
    let released = client.get(&format!("{lock}/release?clientId=ada"));
    assert_eq!(released.text(), r#"{"released":true}"#);
    let missing = client.get(&format!("{lock}/acquire"));
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (400, r#"{"error":"clientId is required"}"#)
    );

    // sessions: {id}, then {id, userId, data, createdAt, expiresAt}, {deleted}, errors.
    let sessions = "/objects/sessions/order/sessions";
    let body = br#"{"userId":"u1","data":{"z":1,"a":[2]},"ttlMs":60000}"#;
    let created = client.request("POST", sessions, body);
    let id = created.json()["id"].as_str().expect("id").to_string();
    assert_eq!(created.text(), format!(r#"{{"id":"{id}"}}"#));
    let got = client.get(&format!("{sessions}/{id}"));
    let (created_at, expires_at) = (number(&got, "createdAt"), number(&got, "expiresAt"));
    assert_eq!(
        got.text(),
        format!(
            r#"{{"id":"{id}","userId":"u1","data":{{"z":1,"a":[2]}},"createdAt":{created_at},"expiresAt":{expires_at}}}"#
        )
    );
    let deleted = client.request("DELETE", &format!("{sessions}/{id}"), b"");
    assert_eq!(deleted.text(), r#"{"deleted":true}"#);
    let gone = client.get(&format!("{sessions}/{id}"));
    assert_eq!(
        (gone.status, gone.text().as_str()),
        (404, r#"{"error":"Session not found"}"#)
    );
    let no_user = client.request("POST", sessions, br#"{"data":1}"#);
    assert_eq!(no_user.text(), r#"{"error":"userId is required"}"#);

    // scheduler: {id, runAt, repeatMs?} as posted and listed, {id, runAt, firedAt} fired.
    let events = "/objects/scheduler/order/events";
    let later = now_ms() + 3_600_000;
    let body = format!(r#"{{"repeatMs":5000,"runAt":{later},"id":"later"}}"#);
    let scheduled = client.request("POST", events, body.as_bytes());
    assert_eq!(scheduled.status, 201);
    let later_json = format!(r#"{{"id":"later","runAt":{later},"repeatMs":5000}}"#);
    assert_eq!(scheduled.text(), later_json);
    let due = now_ms();
    let body = format!(r#"{{"runAt":{due},"id":"now"}}"#);
    let once = client.request("POST", events, body.as_bytes());
    assert_eq!(once.text(), format!(r#"{{"id":"now","runAt":{due}}}"#));
    let fired_path = "/objects/scheduler/order/fired";
    assert!(wait_until(PATIENCE, || client.get(fired_path).text() != "[]"));
    let fired = client.get(fired_path);
    let fired_at = fired.json()[0]["firedAt"].as_i64().expect("firedAt");
    assert_eq!(
        fired.text(),
        format!(r#"[{{"id":"now","runAt":{due},"firedAt":{fired_at}}}]"#)
    );
    assert_eq!(client.get(events).text(), format!("[{later_json}]"));
    let removed = client.request("DELETE", &format!("{events}/later"), b"");
    assert_eq!(removed.text(), r#"{"deleted":true}"#);
    let unknown = client.request("DELETE", &format!("{events}/later"), b"");
    assert_eq!(
        (unknown.status, unknown.text().as_str()),
        (404, r#"{"error":"Event not found"}"#)
    );
    assert_eq!(server.stop(), Some(0));
}

/// `relay` (the `call` scenario's object): each request is a call to a counter on the other
/// core, or on the relay's own with `core=same`, and always the same counter for one relay and
/// core; with one core there is no other.
#[test]
fn relay_calls_a_counter_on_the_core_asked_for() {
    for cores in [2, 1] {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start(dir.path(), cores, &[]);
        let mut client = server.client();
        for (core, expected) in [("other", "other"), ("same", "same")] {
            let expected = if cores == 1 { "same" } else { expected };
            for (step, value) in [("increment", "1"), ("increment", "2"), ("value", "2")] {
                let reply = client.get(&format!("/objects/relay/r/counter/{step}?core={core}"));
                assert_eq!(
                    (reply.status, reply.text().as_str()),
                    (200, value),
                    "{cores} cores, core={core}"
                );
                assert_eq!(reply.header("Stead-Callee-Core"), Some(expected));
            }
        }
        // The counter's own answer passes through; a bad core or path is refused.
        assert_eq!(client.get("/objects/relay/r/counter/reset").status, 404);
        let bad = client.get("/objects/relay/r/counter/value?core=third");
        assert_eq!(bad.status, 400);
        assert!(bad.text().contains("core must be"), "{}", bad.text());
        assert_eq!(client.get("/objects/relay/r/elsewhere").status, 404);
        // The callee really is on the core asked for: calls to the other core cross the
        // cross-core channels (`stead_forwarded_total`), calls on the same core do not.
        if cores == 2 {
            for (core, crossing) in [("same", false), ("other", true)] {
                let before = server.metric_sum("stead_forwarded_total");
                let reply = client.get(&format!(
                    "/objects/relay/f/counter/value?core={core}&times=100"
                ));
                assert_eq!(reply.status, 200);
                let forwarded = server.metric_sum("stead_forwarded_total") - before;
                // The client's own request may be forwarded once, to the relay's core.
                if crossing {
                    assert!(forwarded >= 100.0, "core={core}: {forwarded} forwarded");
                } else {
                    assert!(forwarded <= 1.0, "core={core}: {forwarded} forwarded");
                }
            }
        }
        // A failing answer stops the calls: 10 asked, the first 404 returned.
        let stopped = client.get("/objects/relay/t/counter/reset?times=10");
        assert_eq!(stopped.status, 404);
        // `times`: the calls one after another, the last answer given.
        let repeated = client.get("/objects/relay/t/counter/increment?times=50");
        assert_eq!((repeated.status, repeated.text().as_str()), (200, "50"));
        for times in ["0", "1001", "x"] {
            let refused = client.get(&format!("/objects/relay/t/counter/value?times={times}"));
            assert_eq!(refused.status, 400, "times={times}");
        }
        assert_eq!(server.stop(), Some(0));
    }
}
