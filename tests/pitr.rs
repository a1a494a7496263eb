//! Point-in-time recovery through the admin API and `stead admin`, black-box: the real binary
//! with history windows set in `stead.toml`, over real sockets, across a kill -9 and a restart
//! that changes `--cores`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::ws::{Frame, WsClient};
use common::{Client, Reply, TestServer};
use serde_json::Value;

const TOKEN: &str = "admin-secret";

const CONFIG: &str = "[classes.counter]\nhistory_retention_ms = 3600000\n\n\
                      [classes.sql]\nhistory_retention_ms = 3600000\n\n\
                      [classes.chat]\nhistory_retention_ms = 3600000\n";

fn admin(client: &mut Client, method: &str, path: &str, body: &str) -> Reply {
    let bearer = format!("Bearer {TOKEN}");
    client.request_with(method, path, &[("Authorization", &bearer)], body.as_bytes())
}

fn bookmark(client: &mut Client, object: &str) -> String {
    let reply = admin(
        client,
        "GET",
        &format!("/admin/objects/{object}/bookmark"),
        "",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    answer["bookmark"].as_str().expect("bookmark").to_string()
}

fn restore(client: &mut Client, object: &str, bookmark: &str) -> Value {
    let body = format!("{{\"bookmark\":\"{bookmark}\"}}");
    let reply = admin(
        client,
        "POST",
        &format!("/admin/objects/{object}/restore"),
        &body,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn exec(client: &mut Client, query: &str) -> Value {
    let body = serde_json::json!({ "query": query }).to_string();
    let reply = client.request("POST", "/objects/sql/db/exec", body.as_bytes());
    assert_eq!(reply.status, 200, "{query}: {}", reply.text());
    reply.json()
}

fn start(dir: &std::path::Path, cores: usize) -> TestServer {
    let config = dir.join("stead.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let config = config.to_string_lossy().into_owned();
    TestServer::start(
        &dir.join("data"),
        cores,
        &["--config", &config, "--admin-token", TOKEN],
    )
}

#[test]
fn objects_go_back_to_bookmarks_across_a_restart_with_other_cores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), 2);
    let mut client = server.client();
    for _ in 0..3 {
        client.request("POST", "/objects/counter/c/increment", b"");
    }
    let three = bookmark(&mut client, "counter/c");
    for _ in 0..2 {
        client.request("POST", "/objects/counter/c/increment", b"");
    }
    exec(&mut client, "CREATE TABLE t (v TEXT)");
    exec(&mut client, "INSERT INTO t VALUES ('a')");
    let one_row = bookmark(&mut client, "sql/db");
    exec(&mut client, "INSERT INTO t VALUES ('b')");
    exec(&mut client, "DROP TABLE t");

    let restored = restore(&mut client, "counter/c", &three);
    assert_eq!(restored["restored"], three.as_str());
    let undo = restored["undo"].as_str().expect("undo").to_string();
    assert!(
        undo > three,
        "the point before the restore is later: {undo}"
    );
    assert_eq!(client.get("/objects/counter/c/value").text(), "3");
    restore(&mut client, "sql/db", &one_row);
    let rows = exec(&mut client, "SELECT v FROM t");
    assert_eq!(rows["rows"], serde_json::json!([["a"]]), "{rows}");
    let object = admin(&mut client, "GET", "/admin/objects/counter/c", "").json();
    assert!(object["historyBytes"].as_u64().unwrap_or(0) > 0, "{object}");
    assert!(server.metric_sum("stead_history_bytes") > 0.0);
    server.kill();

    // Killed, and back on one core: every object moved to the new store, its history with it.
    let server = start(dir.path(), 1);
    let mut client = server.client();
    assert_eq!(client.get("/objects/counter/c/value").text(), "3");
    restore(&mut client, "counter/c", &undo);
    assert_eq!(
        client.get("/objects/counter/c/value").text(),
        "5",
        "the restore undone"
    );
    restore(&mut client, "counter/c", &three);
    assert_eq!(client.get("/objects/counter/c/value").text(), "3");

    // A time before the object's history, a malformed bookmark, another object's bookmark,
    // a class that keeps no history, a bad body: refused, and nothing changes.
    let old = admin(
        &mut client,
        "GET",
        "/admin/objects/counter/c/bookmark?at=1",
        "",
    );
    assert_eq!(old.status, 400, "{}", old.text());
    assert!(
        old.text().contains("older than the history kept"),
        "{}",
        old.text()
    );
    let bad = admin(
        &mut client,
        "GET",
        "/admin/objects/counter/c/bookmark?at=soon",
        "",
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    for body in [
        "{\"bookmark\":\"not-a-bookmark\"}",
        "{\"bookmark\":\"ffffffffffffffff00000000000000000000000000000001\"}",
        "{}",
        "[",
    ] {
        let reply = admin(
            &mut client,
            "POST",
            "/admin/objects/counter/c/restore",
            body,
        );
        assert_eq!(reply.status, 400, "{body}: {}", reply.text());
    }
    let elsewhere = restore_status(&mut client, "counter/other", &undo);
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.text());
    client.request("POST", "/objects/lock/l/acquire?clientId=me", b"");
    let plain = admin(&mut client, "GET", "/admin/objects/lock/l/bookmark", "");
    assert_eq!(plain.status, 400, "{}", plain.text());
    assert!(
        plain.text().contains("keeps no history"),
        "{}",
        plain.text()
    );
    let wrong_method = admin(&mut client, "GET", "/admin/objects/counter/c/restore", "");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(client.get("/objects/counter/c/value").text(), "3");

    // The same through `stead admin`.
    let url = format!("http://{}", server.addr);
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_stead"))
            .args(["admin", "--url", &url, "--token", TOKEN])
            .args(args)
            .output()
            .expect("stead admin")
    };
    let printed = cli(&["bookmark", "counter", "c"]);
    assert!(printed.status.success(), "{printed:?}");
    let now = String::from_utf8_lossy(&printed.stdout).trim().to_string();
    assert_eq!(now.len(), 48, "{now}");
    client.request("POST", "/objects/counter/c/increment", b"");
    let restored = cli(&["restore", "counter", "c", &now]);
    assert!(restored.status.success(), "{restored:?}");
    assert!(String::from_utf8_lossy(&restored.stdout).contains("to undo"));
    assert_eq!(client.get("/objects/counter/c/value").text(), "3");
    let refused = cli(&["restore", "counter", "c", "nope"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("400"),
        "{refused:?}"
    );
    server.stop();
}

fn restore_status(client: &mut Client, object: &str, bookmark: &str) -> Reply {
    let body = format!("{{\"bookmark\":\"{bookmark}\"}}");
    admin(
        client,
        "POST",
        &format!("/admin/objects/{object}/restore"),
        &body,
    )
}

#[test]
fn a_window_for_a_class_that_is_not_registered_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stead.toml");
    std::fs::write(&config, "[classes.nosuch]\nhistory_retention_ms = 1000\n").expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_stead"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .expect("stead serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("[classes.nosuch]"), "{stderr}");
}

#[test]
fn a_restore_closes_the_objects_websockets_with_1012() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), 2);
    let mut client = server.client();
    // A room that never wrote: its bookmark is its state now, and restoring it is allowed.
    let now = bookmark(&mut client, "chat/room");
    let mut member = WsClient::connect(server.addr, "/objects/chat/room/websocket?name=m");
    member
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    restore(&mut client, "chat/room", &now);
    assert_eq!(
        member.last_frame_until_close(),
        Some(Frame::Close(Some(1012)))
    );
    // The room serves again after its restart.
    let mut again = WsClient::connect(server.addr, "/objects/chat/room/websocket?name=n");
    again
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(again.next_json()["type"], "join");
    server.stop();
}

/// A backup holds each object's history: after `stead restore` into a new data directory,
/// the object still goes back to a bookmark taken before the backup.
#[test]
fn history_survives_a_backup_and_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), 1);
    let mut client = server.client();
    for _ in 0..2 {
        client.request("POST", "/objects/counter/b/increment", b"");
    }
    let two = bookmark(&mut client, "counter/b");
    for _ in 0..3 {
        client.request("POST", "/objects/counter/b/increment", b"");
    }
    let file = dir.path().join("stead.backup");
    let url = format!("http://{}", server.addr);
    let saved = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args(["admin", "--url", &url, "--token", TOKEN, "backup", "--out"])
        .arg(&file)
        .output()
        .expect("stead admin backup");
    assert!(saved.status.success(), "{saved:?}");
    server.stop();

    let restored_dir = dir.path().join("restored");
    let restored = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args(["restore", "--from"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored_dir)
        .output()
        .expect("stead restore");
    assert!(restored.status.success(), "{restored:?}");
    let config = dir.path().join("stead.toml");
    let config = config.to_string_lossy().into_owned();
    let server = TestServer::start(
        &restored_dir,
        1,
        &["--config", &config, "--admin-token", TOKEN],
    );
    let mut client = server.client();
    assert_eq!(client.get("/objects/counter/b/value").text(), "5");
    restore(&mut client, "counter/b", &two);
    assert_eq!(client.get("/objects/counter/b/value").text(), "2");
    server.stop();
}
