//! Alarms over real HTTP: the generic semantics with a test class of our own (an in-process
//! server built with the library API), durability across SIGKILL with the real binary, and the
//! alarm-driven built-ins (`lock`, `sessions`, `scheduler`).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{wait_until, Client, TestServer};
use serde_json::{json, Value};
use stead::{AlarmInfo, Config, DurableObject, ObjectContext, ObjectError, Request, Response};

/// How long a test waits for something that should happen within a second or two.
const PATIENCE: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Test class: `/set?at=MS` sets the alarm, `/delete` deletes it, `/fail?count=N` makes the
/// next N deliveries fail, `/log` answers every delivery as `[{"scheduledMs","retryCount",
/// "firedAt"}]` (kept in storage, so it survives restarts).
struct Probe {
    context: ObjectContext,
}

impl Probe {
    fn log(&self) -> Vec<Value> {
        let stored = self.context.storage().get(b"log").unwrap_or_default();
        serde_json::from_slice(&stored).unwrap_or_default()
    }

    fn number(&self, key: &[u8]) -> i64 {
        let stored = self.context.storage().get(key).unwrap_or_default();
        String::from_utf8_lossy(&stored).parse().unwrap_or(0)
    }
}

impl DurableObject for Probe {
    fn new(context: ObjectContext) -> Probe {
        Probe { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let storage = self.context.storage();
        let param = |name: &str| {
            request
                .query_param(name)
                .and_then(|text| text.parse::<i64>().ok())
        };
        match request.path.as_str() {
            "/set" => match param("at") {
                Some(at) => storage.set_alarm(at)?,
                None => return Ok(Response::json_error(400, "at is required")),
            },
            "/delete" => storage.delete_alarm()?,
            "/fail" => storage.put(b"fail", param("count").unwrap_or(0).to_string())?,
            "/log" => return Ok(Response::json(200, &Value::Array(self.log()))),
            _ => return Ok(Response::not_found()),
        }
        Ok(Response::json(
            200,
            &json!({ "alarm": storage.get_alarm() }),
        ))
    }

    async fn alarm(&self, info: AlarmInfo) -> Result<(), ObjectError> {
        let mut log = self.log();
        log.push(json!({ "scheduledMs": info.scheduled_ms, "retryCount": info.retry_count, "firedAt": now_ms() }));
        let storage = self.context.storage();
        storage.put(b"log", serde_json::to_vec(&log)?)?;
        let fail = self.number(b"fail");
        if fail > 0 {
            storage.put(b"fail", (fail - 1).to_string())?;
            return Err(ObjectError::new("failing on purpose"));
        }
        Ok(())
    }
}

/// Starts a one-core server in this process with the built-ins and the probe class.
fn start_probe_server(dir: &std::path::Path) -> stead::RunningServer {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.to_path_buf(),
        cores: 1,
        ..Config::default()
    };
    stead::Server::builder()
        .config(config)
        .builtins()
        .class::<Probe>("probe")
        .build()
        .start()
        .expect("start the server")
}

fn probe_log(client: &mut Client, name: &str) -> Vec<Value> {
    let reply = client.get(&format!("/objects/probe/{name}/log"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json().as_array().cloned().unwrap_or_default()
}

fn field(entry: &Value, name: &str) -> i64 {
    entry[name]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} missing in {entry}"))
}

#[test]
fn an_alarm_fires_once_at_its_time_replaced_at_the_new_one_and_deleted_never() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_probe_server(dir.path());
    let mut client = Client::connect(server.local_addr());
    let now = now_ms();
    let set = |client: &mut Client, name: &str, at: i64| {
        let reply = client.get(&format!("/objects/probe/{name}/set?at={at}"));
        assert_eq!((reply.status, reply.json()), (200, json!({ "alarm": at })));
    };
    set(&mut client, "once", now + 300);
    set(&mut client, "replaced", now + 200);
    set(&mut client, "replaced", now + 400);
    set(&mut client, "deleted", now + 250);
    let deleted = client.get("/objects/probe/deleted/delete");
    assert_eq!(deleted.json(), json!({ "alarm": null }));
    set(&mut client, "sentinel", now + 600);
    assert!(wait_until(PATIENCE, || !probe_log(&mut client, "sentinel").is_empty()));

    let once = probe_log(&mut client, "once");
    assert_eq!(once.len(), 1, "{once:?}");
    assert_eq!(
        (
            field(&once[0], "scheduledMs"),
            field(&once[0], "retryCount")
        ),
        (now + 300, 0)
    );
    let lateness = field(&once[0], "firedAt") - (now + 300);
    assert!(
        (0..1_000).contains(&lateness),
        "fired {lateness} ms after its time"
    );
    let replaced = probe_log(&mut client, "replaced");
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_eq!(field(&replaced[0], "scheduledMs"), now + 400);
    assert!(field(&replaced[0], "firedAt") >= now + 400);
    assert!(
        probe_log(&mut client, "deleted").is_empty(),
        "a deleted alarm fired"
    );

    // After a restart nothing fires again: the fired alarms were deleted with their delivery.
    set(&mut client, "after", now_ms() + 100);
    drop(client);
    server.stop();
    server.wait().expect("clean stop");
    let server = start_probe_server(dir.path());
    let mut client = Client::connect(server.local_addr());
    assert!(wait_until(PATIENCE, || !probe_log(&mut client, "after").is_empty()));
    for (name, fired) in [
        ("once", 1),
        ("replaced", 1),
        ("deleted", 0),
        ("sentinel", 1),
        ("after", 1),
    ] {
        assert_eq!(probe_log(&mut client, name).len(), fired, "{name}");
    }
    server.stop();
    server.wait().expect("clean stop");
}

#[test]
fn a_failing_alarm_is_retried_with_exponential_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_probe_server(dir.path());
    let mut client = Client::connect(server.local_addr());
    assert_eq!(client.get("/objects/probe/flaky/fail?count=2").status, 200);
    let at = now_ms() + 50;
    assert_eq!(
        client
            .get(&format!("/objects/probe/flaky/set?at={at}"))
            .status,
        200
    );
    assert!(wait_until(Duration::from_secs(30), || probe_log(
        &mut client,
        "flaky"
    )
    .len()
        == 3));
    let log = probe_log(&mut client, "flaky");
    let counts: Vec<i64> = log.iter().map(|entry| field(entry, "retryCount")).collect();
    assert_eq!(counts, [0, 1, 2]);
    assert!(log.iter().all(|entry| field(entry, "scheduledMs") == at));
    let fired: Vec<i64> = log.iter().map(|entry| field(entry, "firedAt")).collect();
    assert!(
        fired[1] - fired[0] >= 2_000,
        "first retry after ~2 s: {fired:?}"
    );
    assert!(
        fired[2] - fired[1] >= 4_000,
        "second retry after ~4 s: {fired:?}"
    );
    assert!(fired[2] - fired[1] < 8_000, "{fired:?}");
    server.stop();
    server.wait().expect("clean stop");
}

fn post_event(client: &mut Client, object: &str, event: Value) {
    let reply = client.request(
        "POST",
        &format!("/objects/scheduler/{object}/events"),
        event.to_string().as_bytes(),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
}

fn fired(client: &mut Client, object: &str) -> Vec<Value> {
    let reply = client.get(&format!("/objects/scheduler/{object}/fired"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json().as_array().cloned().unwrap_or_default()
}

#[test]
fn after_sigkill_every_alarm_fires_and_overdue_ones_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    let run_at = now_ms() + 1_500;
    for index in 0..30 {
        post_event(
            &mut client,
            &format!("k{index}"),
            json!({ "id": "e", "runAt": run_at }),
        );
    }
    post_event(
        &mut client,
        "later",
        json!({ "id": "e", "runAt": run_at + 60_000 }),
    );
    post_event(
        &mut client,
        "cancelled",
        json!({ "id": "e", "runAt": run_at }),
    );
    assert_eq!(
        client
            .request("DELETE", "/objects/scheduler/cancelled/events/e", b"")
            .status,
        200
    );
    let lease = client.get("/objects/lock/leased/acquire?clientId=a&timeoutMs=1500");
    assert_eq!(lease.status, 200);
    server.kill();

    // Let every alarm fall due while the server is down.
    while now_ms() < run_at + 300 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let restarted = Instant::now();
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    let all_fired = wait_until(PATIENCE, || {
        (0..30).all(|index| fired(&mut client, &format!("k{index}")).len() == 1)
    });
    assert!(all_fired, "not every alarm fired after the restart");
    assert!(
        restarted.elapsed() < Duration::from_secs(5),
        "overdue alarms took {:?}",
        restarted.elapsed()
    );
    for index in 0..30 {
        let firing = &fired(&mut client, &format!("k{index}"))[0];
        assert_eq!(field(firing, "runAt"), run_at);
    }
    assert!(fired(&mut client, "cancelled").is_empty());
    assert!(fired(&mut client, "later").is_empty());
    let released = wait_until(PATIENCE, || {
        client.get("/objects/lock/leased/status").json()["locked"] == false
    });
    assert!(released, "the lease did not end after the restart");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn an_expired_lock_lease_goes_to_the_waiter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut holder = server.client();
    let missing = holder.get("/objects/lock/l/acquire");
    assert_eq!(
        (missing.status, missing.json()["error"].is_string()),
        (400, true)
    );

    let started = Instant::now();
    assert_eq!(
        holder
            .get("/objects/lock/l/acquire?clientId=a&timeoutMs=300")
            .json(),
        json!({"acquired": true})
    );
    let refused = holder.get("/objects/lock/l/release?clientId=b");
    assert_eq!(
        (refused.status, refused.json()),
        (403, json!({"error": "Not lock holder"}))
    );
    let mut waiter = server.client();
    let acquired = waiter.get("/objects/lock/l/acquire?clientId=b");
    assert_eq!(
        (acquired.status, acquired.json()),
        (200, json!({"acquired": true}))
    );
    // Alarm times are whole milliseconds, so the lease may end up to 1 ms early.
    assert!(
        started.elapsed() >= Duration::from_millis(299),
        "acquired after {:?}",
        started.elapsed()
    );
    let status = holder.get("/objects/lock/l/status").json();
    assert_eq!(status, json!({"locked": true, "holder": "b", "waiting": 0}));
    assert_eq!(
        waiter.get("/objects/lock/l/release?clientId=b").json(),
        json!({"released": true})
    );
    assert_eq!(server.stop(), Some(0));
}

/// Two cores, eight waiting connections: some land on the core that does not own the lock, so
/// their requests were forwarded, and dropping the connection must cancel them there too.
#[test]
fn lock_waiters_that_disconnect_leave_the_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut holder = server.client();
    assert_eq!(holder.get("/objects/lock/d/acquire?clientId=a").status, 200);
    let waiters: Vec<Client> = (0..8)
        .map(|index| {
            let mut waiter = server.client();
            let path = format!("/objects/lock/d/acquire?clientId=gone{index}");
            waiter.send_request("GET", &path, &[], b"");
            waiter
        })
        .collect();
    assert!(wait_until(PATIENCE, || holder
        .get("/objects/lock/d/status")
        .json()["waiting"]
        == 8));
    drop(waiters);
    assert!(wait_until(PATIENCE, || holder
        .get("/objects/lock/d/status")
        .json()["waiting"]
        == 0));
    let status = holder.get("/objects/lock/d/status").json();
    assert_eq!(status, json!({"locked": true, "holder": "a", "waiting": 0}));
    assert_eq!(
        holder.get("/objects/lock/d/release?clientId=a").json(),
        json!({"released": true})
    );
    assert_eq!(holder.get("/objects/lock/d/status").json()["locked"], false);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn sessions_expire_and_keep_their_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    let posted = br#"{"userId":"u1","data":{"b":1.50,"a":[true,null]},"ttlMs":300}"#;
    let created = client.request("POST", "/objects/sessions/app/sessions", posted);
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().expect("id").to_string();
    let got = client.get(&format!("/objects/sessions/app/sessions/{id}"));
    assert_eq!(got.status, 200);
    assert!(
        got.text().contains(r#""data":{"b":1.50,"a":[true,null]}"#),
        "{}",
        got.text()
    );
    assert_eq!(got.json()["userId"], "u1");
    let bad = client.request("POST", "/objects/sessions/app/sessions", br#"{"data":1}"#);
    assert_eq!((bad.status, bad.json()["error"].is_string()), (400, true));
    let path = format!("/objects/sessions/app/sessions/{id}");
    assert!(
        wait_until(PATIENCE, || client.get(&path).status == 404),
        "the session did not expire"
    );
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_repeating_scheduled_event_fires_several_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Below the default floor of 1 s, to see several firings quickly.
    let config = dir.path().join("stead.toml");
    std::fs::write(&config, "[scheduler]\nrepeat_ms_min = 200\n").expect("config");
    let data = dir.path().join("data");
    let server = TestServer::start(&data, 2, &["--config", config.to_str().expect("path")]);
    let mut client = server.client();
    post_event(
        &mut client,
        "clock",
        json!({ "id": "tick", "runAt": now_ms(), "repeatMs": 200 }),
    );
    post_event(
        &mut client,
        "clock",
        json!({ "id": "once", "runAt": now_ms() + 100 }),
    );
    assert!(wait_until(PATIENCE, || fired(&mut client, "clock").len() >= 4));
    let firings = fired(&mut client, "clock");
    let ticks: Vec<i64> = firings
        .iter()
        .filter(|f| f["id"] == "tick")
        .map(|f| field(f, "firedAt"))
        .collect();
    assert!(ticks.len() >= 3, "{firings:?}");
    assert!(
        ticks.windows(2).all(|pair| pair[1] - pair[0] >= 200),
        "{ticks:?}"
    );
    assert_eq!(firings.iter().filter(|f| f["id"] == "once").count(), 1);
    let pending = client.get("/objects/scheduler/clock/events").json();
    assert_eq!(pending.as_array().map(Vec::len), Some(1));
    assert_eq!(pending[0]["repeatMs"], 200);
    assert_eq!(
        client
            .request("DELETE", "/objects/scheduler/clock/events/tick", b"")
            .status,
        200
    );
    assert_eq!(
        client
            .request("DELETE", "/objects/scheduler/clock/events/tick", b"")
            .status,
        404
    );
    assert_eq!(server.stop(), Some(0));
}
