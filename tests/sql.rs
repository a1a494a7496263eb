//! SQL storage per object, black-box: the `sql`, `sqlratelimiter` and `sessions` classes of the
//! real binary over real sockets. A model test against plain in-memory SQLite across
//! restarts, SIGKILL under SQL write load, bad input, what a failed handler leaves, and the
//! migration of a data directory written by the key-value `sessions` of the previous version.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Reply, TestServer};
use serde_json::{json, Value};

/// Runs one statement on the object `name` of class `sql`.
fn exec(client: &mut Client, name: &str, query: &str, params: Value) -> Reply {
    let body = json!({ "query": query, "params": params }).to_string();
    client.request(
        "POST",
        &format!("/objects/sql/{name}/exec"),
        body.as_bytes(),
    )
}

/// Runs statements in one transaction on the object `name`.
fn transaction(client: &mut Client, name: &str, statements: &[(String, Value)]) -> Reply {
    let statements: Vec<Value> = statements
        .iter()
        .map(|(query, params)| json!({ "query": query, "params": params }))
        .collect();
    let body = json!({ "statements": statements }).to_string();
    client.request(
        "POST",
        &format!("/objects/sql/{name}/transaction"),
        body.as_bytes(),
    )
}

/// The rows of a successful answer.
fn rows(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["rows"].clone()
}

fn integrity_ok(client: &mut Client, name: &str) -> bool {
    rows(&exec(client, name, "PRAGMA integrity_check", json!([]))) == json!([["ok"]])
}

/// A small deterministic generator, so a failure can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> i64 {
        (self.next() % bound) as i64
    }
}

/// A random statement over the table `t`; some fail (a duplicate key, a syntax error).
fn random_statement(random: &mut Random) -> (String, Value) {
    let id = random.below(40);
    let text = "v".repeat(random.below(600) as usize);
    match random.below(7) {
        0 | 1 => (
            "INSERT INTO t (id, v, n) VALUES (?, ?, ?)".to_string(),
            json!([id, text, random.below(1000)]),
        ),
        2 => (
            "UPDATE t SET v = ?, n = n + 1 WHERE id % ? = ?".to_string(),
            json!([text, 5, id % 5]),
        ),
        3 => (
            "DELETE FROM t WHERE id BETWEEN ? AND ?".to_string(),
            json!([id, id + 3]),
        ),
        4 => (
            "INSERT INTO t (id, v) VALUES (?, NULL)".to_string(),
            json!([id]),
        ),
        5 => ("UPDAT t SET v = 1".to_string(), json!([])),
        _ => (
            "INSERT INTO t (id, v, n) SELECT id + 100, v, n FROM t WHERE id < ?".to_string(),
            json!([id]),
        ),
    }
}

/// A JSON parameter as the model binds it.
fn model_value(value: &Value) -> rusqlite::types::Value {
    match value {
        Value::Null => rusqlite::types::Value::Null,
        Value::Number(number) => match number.as_i64() {
            Some(integer) => rusqlite::types::Value::Integer(integer),
            None => rusqlite::types::Value::Real(number.as_f64().unwrap_or(0.0)),
        },
        Value::String(text) => rusqlite::types::Value::Text(text.clone()),
        other => rusqlite::types::Value::Text(other.to_string()),
    }
}

/// Runs one statement on the model; whether it succeeded.
fn model_run(model: &rusqlite::Connection, (query, params): &(String, Value)) -> bool {
    let params: Vec<rusqlite::types::Value> = params
        .as_array()
        .map(|values| values.iter().map(model_value).collect())
        .unwrap_or_default();
    model
        .execute(query, rusqlite::params_from_iter(params))
        .is_ok()
}

/// The model's table as the server answers it.
fn model_rows(model: &rusqlite::Connection) -> Value {
    let mut statement = model
        .prepare("SELECT id, v, n FROM t ORDER BY id")
        .expect("model prepare");
    let rows: Vec<Value> = statement
        .query_map([], |row| {
            let v: Option<String> = row.get(1)?;
            let n: Option<i64> = row.get(2)?;
            Ok(json!([row.get::<_, i64>(0)?, v, n]))
        })
        .expect("model query")
        .collect::<Result<_, _>>()
        .expect("model rows");
    Value::Array(rows)
}

const MODEL_SCHEMA: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)";
const MODEL_SELECT: &str = "SELECT id, v, n FROM t ORDER BY id";

#[test]
fn an_object_database_matches_plain_sqlite_step_by_step_and_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = rusqlite::Connection::open_in_memory().expect("model");
    model.execute_batch(MODEL_SCHEMA).expect("model schema");
    let mut server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    assert_eq!(
        exec(&mut client, "model", MODEL_SCHEMA, json!([])).status,
        200
    );
    let mut random = Random(0x2545_f491_4f6c_dd1d);
    for step in 0..300 {
        if random.below(4) == 0 {
            let statements: Vec<(String, Value)> = (0..random.below(4) + 1)
                .map(|_| random_statement(&mut random))
                .collect();
            let reply = transaction(&mut client, "model", &statements);
            model.execute_batch("SAVEPOINT s").expect("model savepoint");
            let all = statements
                .iter()
                .all(|statement| model_run(&model, statement));
            let end = if all {
                "RELEASE s"
            } else {
                "ROLLBACK TO s; RELEASE s"
            };
            model.execute_batch(end).expect("model end");
            assert_eq!(reply.status == 200, all, "step {step}: {}", reply.text());
        } else {
            let statement = random_statement(&mut random);
            let reply = exec(&mut client, "model", &statement.0, statement.1.clone());
            let ok = model_run(&model, &statement);
            assert_eq!(reply.status == 200, ok, "step {step}: {}", reply.text());
            if !ok {
                assert_eq!(reply.status, 400, "a bad statement is the client's error");
            }
        }
        let got = rows(&exec(&mut client, "model", MODEL_SELECT, json!([])));
        assert_eq!(got, model_rows(&model), "step {step}");
        if step % 100 == 99 {
            // A restart, graceful or SIGKILL: every answered statement is in the database.
            if step == 199 {
                server.kill();
            } else {
                assert_eq!(server.stop(), Some(0));
            }
            server = TestServer::start(dir.path(), 2, &[]);
            client = server.client();
            let got = rows(&exec(&mut client, "model", MODEL_SELECT, json!([])));
            assert_eq!(got, model_rows(&model), "after the restart at step {step}");
            assert!(integrity_ok(&mut client, "model"));
        }
    }
    assert_eq!(server.stop(), Some(0));
}

/// Writers on 4 objects over 2 cores, killed with SIGKILL at a random moment, 20 times over one
/// data directory: after every restart each acknowledged row is there, no row that was never
/// sent is, and every database passes `PRAGMA integrity_check`.
#[test]
fn sigkill_under_sql_writes_loses_no_acknowledged_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = 4;
    let acknowledged: Arc<Vec<Mutex<Vec<i64>>>> =
        Arc::new((0..objects).map(|_| Mutex::new(Vec::new())).collect());
    let next_id: Arc<Vec<AtomicU64>> = Arc::new((0..objects).map(|_| AtomicU64::new(0)).collect());
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for round in 0..20 {
        let server = TestServer::start(dir.path(), 2, &[]);
        let mut client = server.client();
        for object in 0..objects {
            let name = format!("crash{object}");
            let created = exec(
                &mut client,
                &name,
                "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload TEXT)",
                json!([]),
            );
            assert_eq!(created.status, 200, "{}", created.text());
            assert!(integrity_ok(&mut client, &name), "round {round}");
            let stored = rows(&exec(
                &mut client,
                &name,
                "SELECT id FROM t ORDER BY id",
                json!([]),
            ));
            let stored: Vec<i64> = stored
                .as_array()
                .map(|rows| rows.iter().filter_map(|row| row[0].as_i64()).collect())
                .unwrap_or_default();
            let acked = acknowledged[object].lock().expect("lock").clone();
            for id in &acked {
                assert!(
                    stored.binary_search(id).is_ok(),
                    "round {round}: row {id} of {name} lost"
                );
            }
            let sent = next_id[object].load(Ordering::SeqCst) as i64;
            assert!(
                stored.iter().all(|id| *id < sent),
                "round {round}: a row never sent"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..objects)
            .map(|object| {
                let (acknowledged, next_id, stop) =
                    (acknowledged.clone(), next_id.clone(), stop.clone());
                let addr = server.addr;
                let payload_bytes = 200 + 700 * object;
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr);
                    let name = format!("crash{object}");
                    while !stop.load(Ordering::SeqCst) {
                        let id = next_id[object].fetch_add(1, Ordering::SeqCst) as i64;
                        let body = json!({
                            "query": "INSERT INTO t (id, payload) VALUES (?, ?)",
                            "params": [id, "p".repeat(payload_bytes)],
                        })
                        .to_string();
                        client.send_request(
                            "POST",
                            &format!("/objects/sql/{name}/exec"),
                            &[],
                            body.as_bytes(),
                        );
                        match client.read_reply() {
                            Some(reply) if reply.status == 200 => {
                                acknowledged[object].lock().expect("lock").push(id);
                            }
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + random.below(250) as u64));
        server.kill();
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            writer.join().expect("writer");
        }
        for list in acknowledged.iter() {
            list.lock().expect("lock").sort_unstable();
        }
    }
    let total: usize = acknowledged
        .iter()
        .map(|list| list.lock().map_or(0, |l| l.len()))
        .sum();
    assert!(
        total > 200,
        "too little load to mean anything: {total} rows"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_other_objects_keep_being_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &["--config", &write_config(dir.path())]);
    let mut client = server.client();
    assert_eq!(
        exec(&mut client, "bad", "CREATE TABLE t (a, b)", json!([])).status,
        200
    );
    let cases = [
        ("SELEC 1", json!([]), "syntax error"),
        (
            "INSERT INTO t VALUES (?, ?)",
            json!([1]),
            "2 parameters, 1 were given",
        ),
        ("SELECT 1; SELECT 2", json!([1]), "takes no parameters"),
        ("BEGIN", json!([]), "transaction_sync"),
        ("ATTACH 'x' AS x", json!([]), "ATTACH"),
        ("PRAGMA journal_mode = DELETE", json!([]), "pragma"),
        ("SELECT * FROM missing", json!([]), "no such table"),
    ];
    for (query, params, expected) in cases {
        let reply = exec(&mut client, "bad", query, params);
        assert_eq!(reply.status, 400, "{query}: {}", reply.text());
        let message = reply.json()["error"].as_str().unwrap_or("").to_string();
        assert!(message.contains(expected), "{query}: {message}");
    }
    let huge = format!("SELECT '{}'", "x".repeat(150_000));
    let reply = exec(&mut client, "bad", &huge, json!([]));
    assert_eq!(reply.status, 400);
    assert!(
        reply.text().contains("statement_bytes_max"),
        "{}",
        reply.text()
    );
    let hundred_thousand = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100000) SELECT i FROM n";
    let reply = exec(&mut client, "bad", hundred_thousand, json!([]));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["rows"].as_array().map(Vec::len), Some(100_000));
    let too_many = hundred_thousand.replace("100000", "300000");
    let reply = exec(&mut client, "bad", &too_many, json!([]));
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("result_rows_max"), "{}", reply.text());
    // A statement that needs more of SQLite's memory than sql.heap_bytes_max (32 MiB here):
    // sorting 64 values of 1 MB. Stopped with an error naming the limit; the object goes on.
    let hungry = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 64)
                  SELECT length(v) FROM (SELECT randomblob(1000000) AS v FROM n ORDER BY v)";
    let reply = exec(&mut client, "bad", hungry, json!([]));
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("heap_bytes_max"), "{}", reply.text());
    let small = hungry.replace("LIMIT 64", "LIMIT 4");
    let reply = exec(&mut client, "bad", &small, json!([]));
    assert_eq!(reply.status, 200, "{}", reply.text());
    // A runaway query on the only core: stopped with an error, and a counter on the same core
    // asked meanwhile is answered once it stops.
    let addr = server.addr;
    let runaway = std::thread::spawn(move || {
        let mut client = Client::connect(addr);
        let started = Instant::now();
        let reply = exec(
            &mut client,
            "bad",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
            json!([]),
        );
        (reply, started.elapsed())
    });
    let mut other = server.client();
    let started = Instant::now();
    assert_eq!(
        other.get("/objects/counter/bystander/increment").status,
        200
    );
    let bystander_wait = started.elapsed();
    let (reply, runaway_time) = runaway.join().expect("runaway thread");
    assert_eq!(reply.status, 400);
    assert!(
        reply.text().contains("statement_steps_max"),
        "{}",
        reply.text()
    );
    assert!(runaway_time < Duration::from_secs(5), "{runaway_time:?}");
    assert!(
        bystander_wait < Duration::from_secs(5),
        "{bystander_wait:?}"
    );
    assert_eq!(other.get("/objects/counter/bystander/value").text(), "1");
    assert!(integrity_ok(&mut client, "bad"));
    assert_eq!(server.stop(), Some(0));
}

/// A config file with a small database limit and a small SQLite heap, for the bad-input test.
fn write_config(dir: &Path) -> String {
    let path = dir.join("stead.toml");
    std::fs::write(
        &path,
        "[sql]\ndatabase_bytes_max = 1048576\nresult_rows_max = 200000\nheap_bytes_max = 33554432\n",
    )
    .expect("write config");
    path.to_string_lossy().into_owned()
}

#[test]
fn a_full_database_refuses_writes_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let server = TestServer::start(dir.path(), 1, &["--config", &config]);
    let mut client = server.client();
    assert_eq!(
        exec(&mut client, "full", "CREATE TABLE t (data BLOB)", json!([])).status,
        200
    );
    let mut inserted = 0;
    let reply = loop {
        let reply = exec(
            &mut client,
            "full",
            "INSERT INTO t VALUES (zeroblob(50000))",
            json!([]),
        );
        if reply.status != 200 {
            break reply;
        }
        inserted += 1;
        assert!(inserted < 100, "the 1 MiB limit never hit");
    };
    assert_eq!(reply.status, 400);
    assert!(
        reply.text().contains("database or disk is full"),
        "{}",
        reply.text()
    );
    assert_eq!(server.stop(), Some(0));
    let server = TestServer::start(dir.path(), 1, &["--config", &config]);
    let mut client = server.client();
    let count = rows(&exec(
        &mut client,
        "full",
        "SELECT count(*) FROM t",
        json!([]),
    ));
    assert_eq!(count, json!([[inserted]]));
    assert!(integrity_ok(&mut client, "full"));
    assert_eq!(server.stop(), Some(0));
}

/// One statement whose changes pass one batch's 16 MiB: the event fails with a 500 naming the
/// batch, nothing of it is stored, and the object's next request reloads the committed rows.
#[test]
fn an_update_larger_than_one_batch_fails_and_leaves_the_committed_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    let create = "CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)";
    assert_eq!(exec(&mut client, "big", create, json!([])).status, 200);
    let insert = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 96)
                  INSERT INTO t (data) SELECT zeroblob(65536) FROM n";
    for _ in 0..4 {
        assert_eq!(exec(&mut client, "big", insert, json!([])).status, 200);
    }
    let update = "UPDATE t SET data = randomblob(65536)";
    let reply = exec(&mut client, "big", update, json!([]));
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(reply.text().contains("batch"), "{}", reply.text());
    let unchanged = "SELECT count(*), sum(data = zeroblob(65536)) FROM t";
    assert_eq!(
        rows(&exec(&mut client, "big", unchanged, json!([]))),
        json!([[384, 384]])
    );
    assert!(integrity_ok(&mut client, "big"));
    assert_eq!(server.stop(), Some(0));
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    assert_eq!(
        rows(&exec(&mut client, "big", unchanged, json!([]))),
        json!([[384, 384]])
    );
    assert!(integrity_ok(&mut client, "big"));
    assert_eq!(server.stop(), Some(0));
}

/// The hosted rule, made explicit: the writes a handler made before it failed stay (here, the
/// statements of a script before the one that failed); `transaction_sync` is all or nothing.
#[test]
fn writes_before_a_failure_stay_and_a_failed_transaction_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    assert_eq!(
        exec(&mut client, "fail", "CREATE TABLE t (a)", json!([])).status,
        200
    );
    let script =
        "INSERT INTO t VALUES (1); INSERT INTO missing VALUES (2); INSERT INTO t VALUES (3)";
    assert_eq!(exec(&mut client, "fail", script, json!([])).status, 400);
    let statements = vec![
        ("INSERT INTO t VALUES (?)".to_string(), json!([4])),
        ("INSERT INTO missing VALUES (?)".to_string(), json!([5])),
    ];
    let reply = transaction(&mut client, "fail", &statements);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["statement"], json!(1));
    assert_eq!(server.stop(), Some(0));
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    assert_eq!(
        rows(&exec(&mut client, "fail", "SELECT a FROM t", json!([]))),
        json!([[1]])
    );
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn the_sql_rate_limiter_allows_up_to_its_limit_per_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    let path = "/objects/sqlratelimiter/api/check?key=alice&limit=3&windowMs=60000";
    for _ in 0..3 {
        let reply = client.get(path);
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, r#"{"allowed":true}"#)
        );
    }
    let reply = client.get(path);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (429, r#"{"allowed":false}"#)
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    // Another key has its own count; the defaults are key "default", 100 per minute.
    assert_eq!(client.get(&path.replace("alice", "bob")).status, 200);
    for _ in 0..100 {
        assert_eq!(client.get("/objects/sqlratelimiter/api/check").status, 200);
    }
    assert_eq!(client.get("/objects/sqlratelimiter/api/check").status, 429);
    assert_eq!(
        client
            .get("/objects/sqlratelimiter/api/check?limit=0")
            .status,
        400
    );
    assert_eq!(client.get("/objects/sqlratelimiter/api/other").status, 404);
    // The count survives a restart.
    assert_eq!(server.stop(), Some(0));
    let server = TestServer::start(dir.path(), 1, &[]);
    assert_eq!(server.client().get(path).status, 429);
    assert_eq!(server.stop(), Some(0));
}

/// The fixture is a data directory written by the previous version (commit b878de9: key-value
/// sessions, `s/{id}` entries, one core): three sessions that last ten years and one that
/// expired at once, created with `POST /objects/sessions/fixture/sessions`.
#[test]
fn sessions_of_the_key_value_layout_are_migrated_on_first_activation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sessions-kv-layout");
    copy_dir(&fixture, dir.path());
    let sessions = [
        ("1697cd39-19f0-4c8e-824d-029eb845f365", "user-1", 1),
        ("d7348af5-3316-42b2-9872-4046cc430b78", "user-2", 2),
        ("e83ee5a9-d47f-47b2-b8a7-7f5d5cb2b66f", "user-3", 3),
    ];
    let expired = "818ec5cd-a5a3-4d52-a9db-787e876691ea";
    for restart in 0..2 {
        let server = TestServer::start(dir.path(), 1, &[]);
        let mut client = server.client();
        for (id, user, n) in sessions {
            let reply = client.get(&format!("/objects/sessions/fixture/sessions/{id}"));
            assert_eq!(reply.status, 200, "restart {restart}: {}", reply.text());
            let text = reply.text();
            let expected = format!(
                r#"{{"id":"{id}","userId":"{user}","data":{{"n": {n}, "list":[1, 2.5,"x"]}},"createdAt":"#
            );
            assert!(text.starts_with(&expected), "{text}");
        }
        let reply = client.get(&format!("/objects/sessions/fixture/sessions/{expired}"));
        assert_eq!(reply.status, 404);
        // New sessions go to the table next to the migrated ones.
        let created = client.request(
            "POST",
            "/objects/sessions/fixture/sessions",
            br#"{"userId":"new","data":[]}"#,
        );
        assert_eq!(created.status, 201);
        assert_eq!(server.stop(), Some(0));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("fixture entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The `sql_migration` example: its migrations run once per object, and its data and schema
/// version survive a restart.
#[test]
fn the_migration_example_brings_an_object_to_the_latest_schema_once() {
    let working_dir = tempfile::tempdir().expect("temp dir");
    let example = Path::new(env!("CARGO_BIN_EXE_stead"))
        .parent()
        .expect("the binary's directory")
        .join("examples")
        .join("sql_migration");
    assert!(example.exists(), "{} was not built", example.display());
    let start = || {
        let mut command = std::process::Command::new(&example);
        command
            .current_dir(working_dir.path())
            .env("STEAD_LISTEN", "127.0.0.1:0");
        TestServer::spawn(command, &working_dir.path().join("todo-data"))
    };
    let server = start();
    let mut client = server.client();
    assert_eq!(client.get("/objects/todo/home/version").text(), "3");
    let added = client.request("POST", "/objects/todo/home/items", b"buy milk");
    assert_eq!(added.status, 201, "{}", added.text());
    assert_eq!(server.stop(), Some(0));
    let server = start();
    let mut client = server.client();
    assert_eq!(client.get("/objects/todo/home/version").text(), "3");
    assert_eq!(client.get("/objects/todo/home/items").text(), "buy milk");
    assert_eq!(server.stop(), Some(0));
}

/// The SQL limiter's alarm deletes the rows that left the window: once they are all gone it
/// sets no further alarm, and the limiter allows again.
#[test]
fn the_sql_rate_limiter_alarm_deletes_rows_older_than_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    let path = "/objects/sqlratelimiter/short/check?key=k&limit=5&windowMs=300";
    for _ in 0..5 {
        assert_eq!(client.get(path).status, 200);
    }
    assert_eq!(client.get(path).status, 429);
    assert_eq!(server.metric_sum("stead_alarms_pending"), 1.0);
    let patience = Duration::from_secs(10);
    assert!(common::wait_until(patience, || {
        server.metric_sum("stead_alarms_fired_total") >= 1.0
            && server.metric_sum("stead_alarms_pending") == 0.0
    }));
    assert_eq!(server.metric_sum("stead_alarms_failures_total"), 0.0);
    assert_eq!(client.get(path).status, 200);
    assert_eq!(server.stop(), Some(0));
}

/// Changing `--cores` moves an object's SQL pages with its other keys.
#[test]
fn a_database_survives_a_change_of_cores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 1, &[]);
    let mut client = server.client();
    for object in 0..6 {
        let name = format!("moved{object}");
        let script = "CREATE TABLE t (a); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 500) INSERT INTO t SELECT i FROM n";
        assert_eq!(exec(&mut client, &name, script, json!([])).status, 200);
    }
    assert_eq!(server.stop(), Some(0));
    let server = TestServer::start(dir.path(), 2, &[]);
    let mut client = server.client();
    for object in 0..6 {
        let name = format!("moved{object}");
        let sum = rows(&exec(&mut client, &name, "SELECT sum(a) FROM t", json!([])));
        assert_eq!(sum, json!([[125_250]]), "{name}");
        assert!(integrity_ok(&mut client, &name));
    }
    assert_eq!(server.stop(), Some(0));
}
