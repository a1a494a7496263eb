//! Scoped tokens over real sockets: tokens made with `stead token add`, each permission
//! checked (classes, write, WebSockets, metrics, admin), writes refused to a read-only token
//! on key-value, SQL and calls between objects, and a revoked token refused after SIGHUP.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::ws::WsClient;
use common::{Client, Reply, TestServer};

/// Runs `stead token ARGS… --file FILE`; its stdout, or a panic with its stderr.
fn token(file: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_stead"))
        .arg("token")
        .args(args)
        .arg("--file")
        .arg(file)
        .output()
        .expect("run stead token");
    assert!(
        output.status.success(),
        "stead token {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn send(client: &mut Client, method: &str, path: &str, token: &str, body: &[u8]) -> Reply {
    let bearer = format!("Bearer {token}");
    client.request_with(method, path, &[("Authorization", &bearer)], body)
}

fn get(client: &mut Client, path: &str, token: &str) -> Reply {
    send(client, "GET", path, token, b"")
}

/// A 403 whose error names the token and what it may not do.
fn assert_forbidden(reply: &Reply, name: &str, what: &str) {
    assert_eq!(reply.status, 403, "{}", reply.text());
    let error = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains(&format!("token \"{name}\"")) && error.contains(what),
        "{error}"
    );
}

/// A 403 for a write of a read-only request (the object's storage refused it).
fn assert_write_refused(reply: &Reply) {
    assert_eq!(reply.status, 403, "{}", reply.text());
    let error = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("may not write"), "{error}");
}

#[test]
fn every_permission_of_a_token_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens.toml");
    let writer = token(&file, &["add", "writer", "--classes", "counter", "--write"]);
    let reader = token(&file, &["add", "reader", "--classes", "counter,sql,relay"]);
    let chatter = token(
        &file,
        &["add", "chatter", "--classes", "chat", "--websocket"],
    );
    let watcher = token(&file, &["add", "watcher", "--classes", "lock", "--metrics"]);
    let operator = token(
        &file,
        &["add", "operator", "--classes", "*", "--admin", "--write"],
    );
    let editor = token(
        &file,
        &[
            "add",
            "editor",
            "--classes",
            "doc",
            "--websocket",
            "--write",
        ],
    );
    let viewer = token(
        &file,
        &[
            "add",
            "viewer",
            "--classes",
            "doc,sqlratelimiter",
            "--websocket",
        ],
    );
    let listed = token(&file, &["list"]);
    assert!(
        listed.contains("reader") && listed.contains("read-only"),
        "{listed}"
    );
    assert!(!listed.contains(&writer), "list shows no token:\n{listed}");

    let file_arg = file.to_string_lossy().into_owned();
    let server = TestServer::start(&dir.path().join("data"), 2, &["--tokens-file", &file_arg]);
    let mut client = server.client();

    // No token, or an unknown one: 401; /healthz stays open.
    assert_eq!(client.get("/healthz").status, 200);
    assert_eq!(client.get("/objects/counter/a/value").status, 401);
    assert_eq!(
        get(&mut client, "/objects/counter/a/value", "guess").status,
        401
    );
    assert_eq!(get(&mut client, "/metrics", "guess").status, 401);

    // Classes.
    assert_eq!(
        get(&mut client, "/objects/counter/a/increment", &writer).text(),
        "1"
    );
    let reply = get(&mut client, "/objects/lock/a/acquire", &writer);
    assert_forbidden(&reply, "writer", "reach class \"lock\"");
    let reply = send(&mut client, "POST", "/ids/lock", &writer, b"");
    assert_forbidden(&reply, "writer", "reach class \"lock\"");
    assert_eq!(
        send(&mut client, "POST", "/ids/counter", &writer, b"").status,
        200
    );

    // Write: a read-only token reads, and its writes are refused and never stored.
    assert_eq!(
        get(&mut client, "/objects/counter/a/value", &reader).text(),
        "1"
    );
    let reply = get(&mut client, "/objects/counter/a/increment", &reader);
    assert_write_refused(&reply);
    assert_eq!(
        get(&mut client, "/objects/counter/a/value", &writer).text(),
        "1"
    );
    assert_eq!(
        get(&mut client, "/objects/counter/a/increment", &writer).text(),
        "2"
    );
    let reply = get(&mut client, "/objects/counter/never/increment", &reader);
    assert_eq!(reply.status, 403, "{}", reply.text());
    // In memory (a counter's activation writes nothing) but nothing stored, not its name.
    let reply = get(&mut client, "/admin/objects/counter/never", &operator);
    let object = reply.json();
    assert_eq!(
        (object["keys"].as_u64(), &object["name"]),
        (Some(0), &serde_json::Value::Null)
    );
    // SQL: a statement that writes is refused before it runs; reads run.
    let exec = |client: &mut Client, token: &str, query: &str| {
        let body = serde_json::json!({ "query": query }).to_string();
        send(
            client,
            "POST",
            "/objects/sql/db/exec",
            token,
            body.as_bytes(),
        )
    };
    let reply = exec(
        &mut client,
        &operator,
        "CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (7)",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = exec(&mut client, &reader, "INSERT INTO t VALUES (8)");
    assert_write_refused(&reply);
    let reply = exec(&mut client, &reader, "SELECT count(*), sum(v) FROM t");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["rows"], serde_json::json!([[1, 7]]));
    // A call from a read-only event is read-only too: the relay's counter is not written.
    let reply = get(&mut client, "/objects/relay/r/counter/increment", &reader);
    assert_eq!(reply.status, 403, "{}", reply.text());
    let reply = get(&mut client, "/objects/relay/r/counter/value", &reader);
    assert_eq!((reply.status, reply.text()), (200, "0".to_string()));
    let reply = get(&mut client, "/objects/relay/r/counter/increment", &operator);
    assert_eq!((reply.status, reply.text()), (200, "1".to_string()));

    // A read-only request may not create an object (its `init` could write): the
    // sqlratelimiter's tables are never made.
    let reply = get(&mut client, "/objects/sqlratelimiter/fresh/check", &viewer);
    assert_eq!(reply.status, 403, "{}", reply.text());
    let reply = get(
        &mut client,
        "/admin/objects/sqlratelimiter/fresh",
        &operator,
    );
    assert_eq!(reply.status, 404, "{}", reply.text());

    // WebSockets.
    let upgrade = |path: &str, token: &str| {
        let auth = format!("Bearer {token}");
        let (status, _, socket) =
            WsClient::handshake_with(server.addr, path, "test", &[("Authorization", &auth)]);
        (status, socket)
    };
    assert_eq!(
        upgrade("/objects/chat/room/websocket?name=a", &chatter).0,
        101
    );
    assert_eq!(
        upgrade("/objects/chat/room/websocket?name=b", &reader).0,
        403
    );
    assert_eq!(
        upgrade("/objects/chat/room/websocket?name=c", "guess").0,
        401
    );
    // A socket keeps the mode of the request that opened it: a viewer's edit is refused (the
    // doc answers the refusal as an error message) and the document stays as it was.
    let (status, mut editing) = upgrade("/objects/doc/d/ws", &editor);
    assert_eq!(status, 101);
    assert_eq!(editing.next_json()["type"], "init");
    let (status, mut viewing) = upgrade("/objects/doc/d/ws", &viewer);
    assert_eq!(status, 101);
    assert_eq!(viewing.next_json()["type"], "init");
    editing.send_text(r#"{"type":"edit","content":"v1"}"#);
    // Sent on once it is stored.
    assert_eq!(
        viewing.next_json(),
        serde_json::json!({"type":"edit","content":"v1"})
    );
    viewing.send_text(r#"{"type":"edit","content":"v2"}"#);
    let refused = viewing.next_json();
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|error| error.contains("may not write")),
        "{refused}"
    );
    let (_, mut later) = upgrade("/objects/doc/d/ws", &editor);
    assert_eq!(
        later.next_json(),
        serde_json::json!({"type":"init","content":"v1"})
    );

    // Metrics and the admin API.
    assert_eq!(get(&mut client, "/metrics", &watcher).status, 200);
    assert_forbidden(
        &get(&mut client, "/metrics", &writer),
        "writer",
        "read /metrics",
    );
    assert_eq!(get(&mut client, "/admin/classes", &operator).status, 200);
    let reply = get(&mut client, "/admin/classes", &watcher);
    assert_forbidden(&reply, "watcher", "use the admin API");
    assert_eq!(get(&mut client, "/admin/classes", "guess").status, 401);
    server.stop();
}

#[test]
fn a_revoked_token_is_refused_after_sighup_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens.toml");
    let first = token(&file, &["add", "first", "--classes", "counter", "--write"]);
    let second = token(&file, &["add", "second", "--classes", "counter", "--write"]);
    let file_arg = file.to_string_lossy().into_owned();
    let server = TestServer::start(&dir.path().join("data"), 1, &["--tokens-file", &file_arg]);
    let mut client = server.client();
    let path = "/objects/counter/c/increment";
    assert_eq!(get(&mut client, path, &first).status, 200);
    assert_eq!(get(&mut client, path, &second).status, 200);

    token(&file, &["revoke", "first"]);
    let third = token(&file, &["add", "third", "--classes", "counter"]);
    // Nothing changes until the server is told.
    assert_eq!(get(&mut client, path, &first).status, 200);
    assert_eq!(get(&mut client, path, &third).status, 401);
    let hup = |server: &TestServer| {
        // SAFETY: a plain kill(2) of the child's pid.
        let sent = unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(sent, 0);
    };
    hup(&server);
    let reloaded = common::wait_until(Duration::from_secs(10), || {
        get(&mut client, path, &first).status == 401
    });
    assert!(reloaded, "the revoked token still works after SIGHUP");
    let before = get(&mut client, "/objects/counter/c/value", &third);
    assert_eq!(before.status, 200, "the added token works after SIGHUP");
    let after = get(&mut client, path, &second).text();
    assert_eq!(
        after.parse::<u64>().ok(),
        before.text().parse::<u64>().ok().map(|n| n + 1)
    );

    // A broken file on SIGHUP: the tokens stay as they were (had it been read, `second`
    // would be gone); a good file after it is read again.
    let good = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, "[[tokens]]\nname = \"broken\n").expect("write");
    hup(&server);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&mut client, path, &second).status, 200);
    assert_eq!(get(&mut client, path, &first).status, 401);
    std::fs::write(&file, good).expect("write");
    token(&file, &["revoke", "second"]);
    hup(&server);
    let reloaded = common::wait_until(Duration::from_secs(10), || {
        get(&mut client, path, &second).status == 401
    });
    assert!(reloaded, "a good file after a broken one is not read");
    server.stop();
}

#[test]
fn a_bad_token_file_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"a\"\nsha256 = \"00\"\nclasses = [\"*\"]\n",
    )
    .expect("write");
    let file_arg = file.to_string_lossy().into_owned();
    let stderr = common::refused_start(&dir.path().join("data"), &["--tokens-file", &file_arg]);
    assert!(
        stderr.contains("sha256 must be 64 lowercase hex digits"),
        "{stderr}"
    );
    let missing = dir
        .path()
        .join("absent.toml")
        .to_string_lossy()
        .into_owned();
    let stderr = common::refused_start(&dir.path().join("data"), &["--tokens-file", &missing]);
    assert!(stderr.contains("absent.toml"), "{stderr}");
    std::fs::remove_file(&file).expect("remove");
    token(&file, &["add", "typo", "--classes", "countr"]);
    let stderr = common::refused_start(&dir.path().join("data"), &["--tokens-file", &file_arg]);
    assert!(
        stderr.contains("names class \"countr\", which is not registered"),
        "{stderr}"
    );
    let same = ["--auth-token", "same", "--admin-token", "same"];
    let stderr = common::refused_start(&dir.path().join("data"), &same);
    assert!(stderr.contains("must differ"), "{stderr}");
}
