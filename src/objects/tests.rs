//! The alarm-driven built-ins (`lock`, `sessions`, `scheduler`) through a real host, store and
//! alarm scheduler.

use std::time::{Duration, Instant};

use futures_lite::future::poll_once;
use serde_json::{json, Value};

use super::register_builtins;
use crate::alarm::testing::{
    body, eventually, get, json, request, with_harness, with_harness_config, Harness,
};
use crate::alarm::SchedulerConfig;
use crate::config::Config;
use crate::http::{Method, Response};
use crate::id::ObjectId;
use crate::object::{now_ms, ClassRegistry};

/// How long a test waits for something that should happen within milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

fn builtins(registry: &mut ClassRegistry) {
    register_builtins(registry).expect("register built-ins");
}

fn run<F, Fut>(test: F)
where
    F: FnOnce(Harness) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().expect("temp dir");
    with_harness(dir.path(), builtins, SchedulerConfig::default(), test);
}

async fn call(
    harness: &Harness,
    class: &str,
    name: &str,
    method: Method,
    path: &str,
    body: &str,
) -> Response {
    let id = ObjectId::from_name(class, name);
    harness
        .host
        .dispatch(class, id, request(method, path, body))
        .await
}

async fn lock(harness: &Harness, path: &str) -> Response {
    call(harness, "lock", "l", Method::Get, path, "").await
}

/// Starts `/acquire` for `client` in a task of its own.
fn acquire_in_background(harness: &Harness, query: &str) -> glommio::task::JoinHandle<Response> {
    let host = harness.host.clone();
    let id = ObjectId::from_name("lock", "l");
    let path = format!("/acquire?{query}");
    glommio::spawn_local(async move { host.dispatch("lock", id, get(&path)).await }).detach()
}

#[test]
fn the_lock_queues_waiters_in_order_and_only_the_holder_releases() {
    run(|harness| async move {
        assert_eq!(
            json(&lock(&harness, "/status").await),
            json!({"locked": false, "holder": null, "waiting": 0})
        );
        assert_eq!(
            json(&lock(&harness, "/acquire?clientId=a").await),
            json!({"acquired": true})
        );
        assert_eq!(
            json(&lock(&harness, "/acquire?clientId=a").await),
            json!({"acquired": true}),
            "re-entry"
        );
        let b = acquire_in_background(&harness, "clientId=b");
        assert!(eventually(PATIENCE, || harness.host.events_queued() == 1).await);
        let c = acquire_in_background(&harness, "clientId=c");
        assert!(eventually(PATIENCE, || harness.host.events_queued() == 2).await);
        assert_eq!(
            json(&lock(&harness, "/status").await),
            json!({"locked": true, "holder": "a", "waiting": 2})
        );

        let refused = lock(&harness, "/release?clientId=b").await;
        assert_eq!(
            (refused.status, json(&refused)),
            (403, json!({"error": "Not lock holder"}))
        );
        assert_eq!(
            json(&lock(&harness, "/release?clientId=a").await),
            json!({"released": true})
        );
        let b = b.await.expect("b's request");
        assert_eq!((b.status, json(&b)), (200, json!({"acquired": true})));
        assert_eq!(
            json(&lock(&harness, "/status").await),
            json!({"locked": true, "holder": "b", "waiting": 1})
        );
        assert_eq!(lock(&harness, "/release?clientId=b").await.status, 200);
        assert_eq!(
            json(&c.await.expect("c's request")),
            json!({"acquired": true})
        );
        assert_eq!(lock(&harness, "/release?clientId=c").await.status, 200);
        assert_eq!(
            json(&lock(&harness, "/status").await),
            json!({"locked": false, "holder": null, "waiting": 0})
        );

        for path in [
            "/acquire",
            "/acquire?clientId=",
            "/release",
            "/acquire?clientId=x&timeoutMs=soon",
        ] {
            let response = lock(&harness, path).await;
            assert_eq!(response.status, 400, "{path}: {}", body(&response));
            assert!(json(&response)["error"].is_string());
        }
        let missing = lock(&harness, "/steal").await;
        assert_eq!(
            (missing.status, body(&missing).as_str()),
            (404, "Not Found")
        );
    });
}

#[test]
fn a_waiter_that_goes_away_leaves_the_queue() {
    run(|harness| async move {
        assert_eq!(lock(&harness, "/acquire?clientId=a").await.status, 200);
        let id = ObjectId::from_name("lock", "l");
        let mut waiting = Box::pin(harness.host.dispatch(
            "lock",
            id,
            get("/acquire?clientId=gone"),
        ));
        assert!(
            poll_once(&mut waiting).await.is_none(),
            "waits while a holds the lock"
        );
        assert_eq!(json(&lock(&harness, "/status").await)["waiting"], 1);
        drop(waiting);
        assert_eq!(json(&lock(&harness, "/status").await)["waiting"], 0);
        assert_eq!(lock(&harness, "/release?clientId=a").await.status, 200);
        assert_eq!(
            json(&lock(&harness, "/status").await),
            json!({"locked": false, "holder": null, "waiting": 0})
        );
    });
}

#[test]
fn an_expired_lease_hands_the_lock_to_the_next_waiter() {
    run(|harness| async move {
        let start = Instant::now();
        assert_eq!(
            lock(&harness, "/acquire?clientId=a&timeoutMs=150")
                .await
                .status,
            200
        );
        let waiter = acquire_in_background(&harness, "clientId=b&timeoutMs=300");
        let acquired = waiter.await.expect("b's request");
        assert_eq!(json(&acquired), json!({"acquired": true}));
        // The lease is set and fired by the wall clock in whole milliseconds, not by this
        // monotonic clock, so it may end a little before 150 ms here: a CI run saw 148.95 ms
        // (not explained further). 148 ms still tells a lease from none.
        assert!(
            start.elapsed() >= Duration::from_millis(148),
            "lease ended early: {:?}",
            start.elapsed()
        );
        // b's own lease then ends with nobody waiting.
        let status = lock(&harness, "/status").await;
        assert_eq!(json(&status)["holder"], "b", "{}", body(&status));
        let released = eventually(PATIENCE, || harness.alarms.stats().fired_total == 2).await;
        assert!(released, "{:?}", harness.alarms.stats());
        assert_eq!(
            json(&lock(&harness, "/status").await),
            json!({"locked": false, "holder": null, "waiting": 0})
        );
    });
}

#[test]
fn the_holder_and_its_lease_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    with_harness(
        dir.path(),
        builtins,
        SchedulerConfig::default(),
        |harness| async move {
            // The first run's scheduler stops at once, so the lease can only end after the restart.
            harness.shutdown.request();
            assert!(eventually(PATIENCE, || !harness.alarms.is_running()).await);
            let kept = call(
                &harness,
                "lock",
                "kept",
                Method::Get,
                "/acquire?clientId=a&timeoutMs=3600000",
                "",
            )
            .await;
            assert_eq!(kept.status, 200);
            let leased = call(
                &harness,
                "lock",
                "leased",
                Method::Get,
                "/acquire?clientId=a&timeoutMs=100",
                "",
            )
            .await;
            assert_eq!(leased.status, 200);
        },
    );
    with_harness(
        dir.path(),
        builtins,
        SchedulerConfig::default(),
        |harness| async move {
            let kept = call(&harness, "lock", "kept", Method::Get, "/status", "").await;
            assert_eq!(
                json(&kept),
                json!({"locked": true, "holder": "a", "waiting": 0})
            );
            let fired = eventually(PATIENCE, || harness.alarms.stats().fired_total == 1).await;
            assert!(fired, "{:?}", harness.alarms.stats());
            let leased = call(&harness, "lock", "leased", Method::Get, "/status", "").await;
            assert_eq!(
                json(&leased),
                json!({"locked": false, "holder": null, "waiting": 0})
            );
        },
    );
}

async fn sessions(harness: &Harness, method: Method, path: &str, body: &str) -> Response {
    call(harness, "sessions", "s", method, path, body).await
}

#[test]
fn sessions_keep_their_data_exactly_and_refuse_bad_input() {
    run(|harness| async move {
        let posted = r#"{"userId":"u1","data":{"z":1.0,"a":[1e3,"\u00e9"],"n":null}}"#;
        let created = sessions(&harness, Method::Post, "/sessions", posted).await;
        assert_eq!(created.status, 201, "{}", body(&created));
        let id = json(&created)["id"].as_str().expect("id").to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4', "a version 4 UUID: {id}");
        let got = sessions(&harness, Method::Get, &format!("/sessions/{id}"), "").await;
        assert_eq!(got.status, 200);
        assert!(
            body(&got).contains(r#""data":{"z":1.0,"a":[1e3,"\u00e9"],"n":null}"#),
            "{}",
            body(&got)
        );
        let view = json(&got);
        assert_eq!(
            (view["id"].as_str(), view["userId"].as_str()),
            (Some(id.as_str()), Some("u1"))
        );
        let lifetime = view["expiresAt"]
            .as_i64()
            .zip(view["createdAt"].as_i64())
            .map(|(end, start)| end - start);
        assert_eq!(lifetime, Some(86_400_000), "the default TTL is 24 h");

        let deleted = sessions(&harness, Method::Delete, &format!("/sessions/{id}"), "").await;
        assert_eq!(json(&deleted), json!({"deleted": true}));
        assert_eq!(
            sessions(&harness, Method::Get, &format!("/sessions/{id}"), "")
                .await
                .status,
            404
        );
        assert_eq!(
            sessions(&harness, Method::Delete, &format!("/sessions/{id}"), "")
                .await
                .status,
            404
        );
        assert_eq!(
            sessions(&harness, Method::Get, "/sessions/unknown", "")
                .await
                .status,
            404
        );

        let bad = [
            "{",
            "[1]",
            r#"{"data":1}"#,
            r#"{"userId":7}"#,
            r#"{"userId":"u","ttlMs":-5}"#,
            r#"{"userId":"u","ttlMs":"1"}"#,
        ];
        for posted in bad {
            let response = sessions(&harness, Method::Post, "/sessions", posted).await;
            assert_eq!(response.status, 400, "{posted}: {}", body(&response));
            assert!(json(&response)["error"].is_string(), "{posted}");
        }
        assert_eq!(
            sessions(&harness, Method::Get, "/sessions", "")
                .await
                .status,
            405
        );
        assert_eq!(
            sessions(&harness, Method::Get, "/other", "").await.status,
            404
        );
    });
}

#[test]
fn expired_sessions_disappear_and_the_alarm_deletes_them() {
    run(|harness| async move {
        let short = sessions(
            &harness,
            Method::Post,
            "/sessions",
            r#"{"userId":"u","data":1,"ttlMs":100}"#,
        )
        .await;
        let short = json(&short)["id"].as_str().expect("id").to_string();
        let long = sessions(
            &harness,
            Method::Post,
            "/sessions",
            r#"{"userId":"u","data":2,"ttlMs":3600000}"#,
        )
        .await;
        let long = json(&long)["id"].as_str().expect("id").to_string();
        let object = ObjectId::from_name("sessions", "s");
        let expires_at = now_ms() + 100;
        assert!(harness
            .host
            .store()
            .alarm(&object.0)
            .is_some_and(|alarm| alarm <= expires_at));
        assert_eq!(
            sessions(&harness, Method::Get, &format!("/sessions/{short}"), "")
                .await
                .status,
            200
        );
        assert!(eventually(PATIENCE, || harness.alarms.stats().fired_total == 1).await);
        assert_eq!(
            sessions(&harness, Method::Get, &format!("/sessions/{short}"), "")
                .await
                .status,
            404
        );
        assert_eq!(
            sessions(&harness, Method::Get, &format!("/sessions/{long}"), "")
                .await
                .status,
            200
        );
        let next = harness
            .host
            .store()
            .alarm(&object.0)
            .expect("alarm at the next expiry");
        assert!(next > now_ms() + 3_000_000, "{next}");
    });
}

async fn scheduler(harness: &Harness, method: Method, path: &str, body: &str) -> Response {
    call(harness, "scheduler", "sch", method, path, body).await
}

fn ids(value: &Value) -> Vec<String> {
    let items = value.as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|item| item["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn scheduled_events_fire_in_time_order_and_can_be_deleted() {
    run(|harness| async move {
        let now = now_ms();
        for (id, offset) in [
            ("late", 3_600_000),
            ("second", 120),
            ("first", 60),
            ("gone", 90),
        ] {
            let posted = json!({"id": id, "runAt": now + offset}).to_string();
            let response = scheduler(&harness, Method::Post, "/events", &posted).await;
            assert_eq!(response.status, 201, "{}", body(&response));
            assert_eq!(json(&response), json!({"id": id, "runAt": now + offset}));
        }
        let pending = json(&scheduler(&harness, Method::Get, "/events", "").await);
        assert_eq!(ids(&pending), ["first", "gone", "second", "late"]);
        assert_eq!(
            scheduler(&harness, Method::Delete, "/events/gone", "")
                .await
                .status,
            200
        );
        assert_eq!(
            scheduler(&harness, Method::Delete, "/events/gone", "")
                .await
                .status,
            404
        );
        let fired = eventually(PATIENCE, || harness.alarms.stats().fired_total >= 2).await;
        assert!(fired, "{:?}", harness.alarms.stats());
        assert!(eventually(PATIENCE, || harness.alarms.stats().in_flight == 0).await);
        let fired = json(&scheduler(&harness, Method::Get, "/fired", "").await);
        assert_eq!(ids(&fired), ["first", "second"]);
        for firing in fired.as_array().expect("array") {
            assert!(
                firing["firedAt"].as_i64() >= firing["runAt"].as_i64(),
                "{firing}"
            );
        }
        assert_eq!(
            ids(&json(
                &scheduler(&harness, Method::Get, "/events", "").await
            )),
            ["late"]
        );
        let object = ObjectId::from_name("scheduler", "sch");
        assert_eq!(harness.host.store().alarm(&object.0), Some(now + 3_600_000));

        for posted in [
            "nope",
            r#"{"runAt":1}"#,
            r#"{"id":"x","runAt":"soon"}"#,
            r#"{"id":"x","runAt":1,"repeatMs":0}"#,
        ] {
            let response = scheduler(&harness, Method::Post, "/events", posted).await;
            assert_eq!(response.status, 400, "{posted}: {}", body(&response));
        }
        assert_eq!(
            scheduler(&harness, Method::Get, "/nothing", "")
                .await
                .status,
            404
        );
    });
}

#[test]
fn a_repeating_event_fires_again_and_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Below the default floor of 1 s, to see several firings quickly.
    let mut config = Config::default();
    config.scheduler.repeat_ms_min = 40;
    let scheduler_config = SchedulerConfig::default();
    with_harness_config(
        dir.path(),
        builtins,
        scheduler_config,
        config,
        |harness| async move {
            let posted = json!({"id": "tick", "runAt": now_ms(), "repeatMs": 40}).to_string();
            assert_eq!(
                scheduler(&harness, Method::Post, "/events", &posted)
                    .await
                    .status,
                201
            );
            assert!(eventually(PATIENCE, || harness.alarms.stats().fired_total >= 3).await);
            assert_eq!(
                scheduler(&harness, Method::Delete, "/events/tick", "")
                    .await
                    .status,
                200
            );
            let fired = json(&scheduler(&harness, Method::Get, "/fired", "").await);
            let times: Vec<i64> = fired
                .as_array()
                .expect("array")
                .iter()
                .filter_map(|f| f["firedAt"].as_i64())
                .collect();
            assert!(times.len() >= 3, "{fired}");
            assert!(
                times.windows(2).all(|pair| pair[1] - pair[0] >= 40),
                "{times:?}"
            );
            let pending = json(&scheduler(&harness, Method::Get, "/events", "").await);
            assert_eq!(pending, json!([]));
            let object = ObjectId::from_name("scheduler", "sch");
            assert!(eventually(PATIENCE, || harness.host.store().alarm(&object.0).is_none()).await);
        },
    );
}
