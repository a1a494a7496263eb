//! The admin API (`/admin/…`) and `stead admin`, black-box: the real binary on two cores over
//! real sockets, with objects of several classes written the way clients write them.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::ws::{Frame, WsClient};
use common::{Client, Reply, TestServer};
use serde_json::{json, Value};

const TOKEN: &str = "admin-secret";

fn admin(client: &mut Client, method: &str, path: &str) -> Reply {
    let bearer = format!("Bearer {TOKEN}");
    client.request_with(method, path, &[("Authorization", &bearer)], b"")
}

fn admin_json(client: &mut Client, path: &str) -> Value {
    let reply = admin(client, "GET", path);
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.json()
}

/// `GET /admin/classes`, and its entry for `class`.
fn class_entry(client: &mut Client, class: &str) -> (Value, Value) {
    let classes = admin_json(client, "/admin/classes");
    let entry = classes["classes"]
        .as_array()
        .and_then(|list| list.iter().find(|entry| entry["class"] == class))
        .unwrap_or_else(|| panic!("{class} not listed: {classes}"))
        .clone();
    (classes, entry)
}

/// Every object of `class`, page by page, as (name, id).
fn all_objects(client: &mut Client, class: &str, query: &str) -> Vec<(Value, String)> {
    let mut found = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = admin_json(
            client,
            &format!("/admin/objects/{class}?limit=4{query}&cursor={cursor}"),
        );
        let objects = page["objects"].as_array().expect("objects").clone();
        assert!(objects.len() <= 4, "{page}");
        for object in &objects {
            let id = object["id"].as_str().expect("id").to_string();
            found.push((object["name"].clone(), id));
        }
        match page["cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return found,
        }
    }
}

#[test]
fn objects_are_listed_inspected_and_deleted_across_cores_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &["--admin-token", TOKEN]);
    let mut client = server.client();
    for number in 0..14 {
        let reply = client.get(&format!("/objects/counter/c{number}/increment"));
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let body =
        json!({ "query": "CREATE TABLE t (a); INSERT INTO t VALUES (1), (2)", "params": [] });
    let reply = client.request("POST", "/objects/sql/db/exec", body.to_string().as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = client.get("/objects/sqlratelimiter/api/check?key=k");
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Classes, with the counts of each core adding up.
    let (classes, counter) = class_entry(&mut client, "counter");
    assert_eq!(counter["objects"], 14, "{classes}");
    let per_core: u64 = counter["perCore"]
        .as_array()
        .expect("per core")
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(per_core, 14);
    assert_eq!(classes["unregistered"]["objects"], 0);

    // Paging: every object once, in id order, whatever core holds it.
    let listed = all_objects(&mut client, "counter", "");
    let ids: Vec<&String> = listed.iter().map(|(_, id)| id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "ordered and without repeats");
    let names: BTreeSet<String> = listed
        .iter()
        .filter_map(|(name, _)| name.as_str().map(str::to_string))
        .collect();
    let expected: BTreeSet<String> = (0..14).map(|number| format!("c{number}")).collect();
    assert_eq!(names, expected);
    let prefixed = all_objects(&mut client, "counter", "&prefix=c1");
    assert_eq!(prefixed.len(), 5, "c1 and c10..c13: {prefixed:?}");

    // One object, by name and by id, fields in a fixed order.
    let reply = admin(&mut client, "GET", "/admin/objects/counter/c3");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    let order = [
        "\"id\"",
        "\"name\"",
        "\"active\"",
        "\"keys\"",
        "\"bytes\"",
        "\"sqlBytes\"",
        "\"alarm\"",
        "\"sockets\"",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|field| text.find(field).expect(field))
        .collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{text}");
    let c3 = reply.json();
    assert_eq!(c3["name"], "c3");
    assert_eq!(c3["keys"], 1);
    assert_eq!(c3["active"], true);
    let by_id = admin_json(
        &mut client,
        &format!(
            "/admin/objects/counter/id:{}",
            c3["id"].as_str().expect("id")
        ),
    );
    assert_eq!(by_id, c3);
    let storage = admin_json(&mut client, "/admin/objects/counter/c3/storage");
    assert_eq!(
        storage,
        json!({ "entries": [{ "key": "value", "value": "1" }], "cursor": null, "tables": [] })
    );

    // SQL: the tables, and an alarm.
    let db = admin_json(&mut client, "/admin/objects/sql/db/storage");
    assert_eq!(db["tables"][0]["name"], "t", "{db}");
    assert_eq!(db["tables"][0]["rows"], 2, "{db}");
    let limiter = admin_json(&mut client, "/admin/objects/sqlratelimiter/api");
    assert!(limiter["alarm"].as_i64().is_some(), "{limiter}");
    assert!(limiter["sqlBytes"].as_u64().unwrap_or(0) > 0, "{limiter}");

    // A chat room with a socket: deleting it closes the socket with 1001.
    let mut member = WsClient::connect(server.addr, "/objects/chat/room/websocket?name=m");
    let room = admin_json(&mut client, "/admin/objects/chat/room");
    assert_eq!(room["sockets"], 1, "{room}");
    let deleted = admin(&mut client, "DELETE", "/admin/objects/chat/room");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    member
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(
        member.last_frame_until_close(),
        Some(Frame::Close(Some(1001)))
    );

    // Deleting: the next request finds a new, empty object; the alarm goes too.
    let deleted = admin_json(&mut client, "/admin/objects/counter/c3");
    assert_eq!(deleted["keys"], 1);
    let reply = admin(&mut client, "DELETE", "/admin/objects/counter/c3");
    assert_eq!(reply.json(), json!({ "id": c3["id"], "deleted": true }));
    assert_eq!(
        admin(&mut client, "GET", "/admin/objects/counter/c3").status,
        404
    );
    assert_eq!(client.get("/objects/counter/c3/value").text(), "0");
    let reply = admin(&mut client, "DELETE", "/admin/objects/sqlratelimiter/api");
    assert_eq!(reply.json()["deleted"], true);
    let reply = admin(
        &mut client,
        "DELETE",
        "/admin/objects/counter/never-written",
    );
    assert_eq!(reply.json()["deleted"], false);
    assert_eq!(server.stop(), Some(0));

    // After a restart the deletions hold and everything else is there.
    let server = TestServer::start(dir.path(), 2, &["--admin-token", TOKEN]);
    let mut client = server.client();
    assert_eq!(
        admin(&mut client, "GET", "/admin/objects/counter/c3").status,
        404
    );
    assert_eq!(
        admin(&mut client, "GET", "/admin/objects/sqlratelimiter/api").status,
        404
    );
    assert_eq!(client.get("/objects/counter/c4/value").text(), "1");
    let (classes, counter) = class_entry(&mut client, "counter");
    assert_eq!(counter["objects"], 13, "{classes}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn the_admin_api_needs_its_token_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Neither token: the admin API is off.
    let server = TestServer::start(dir.path(), 1, &[]);
    let reply = server.client().get("/admin/classes");
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("--admin-token"), "{}", reply.text());
    assert_eq!(server.stop(), Some(0));
    // Only an auth token: the admin API takes it.
    let server = TestServer::start(dir.path(), 1, &["--auth-token", "user"]);
    let mut client = server.client();
    let reply = client.request_with(
        "GET",
        "/admin/classes",
        &[("Authorization", "Bearer user")],
        b"",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(server.stop(), Some(0));
    // Both: the admin API takes only the admin token; objects take only the auth token.
    let server = TestServer::start(
        dir.path(),
        1,
        &["--auth-token", "user", "--admin-token", TOKEN],
    );
    let mut client = server.client();
    // A known token without the permission is 403, an unknown one (or none) 401.
    for (token, status) in [("Bearer user", 403), ("Bearer wrong", 401), ("", 401)] {
        let reply = client.request_with("GET", "/admin/classes", &[("Authorization", token)], b"");
        assert_eq!(reply.status, status, "{token}: {}", reply.text());
    }
    let bearer = format!("Bearer {TOKEN}");
    let reply = client.request_with(
        "GET",
        "/objects/counter/a/value",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(reply.status, 403, "{}", reply.text());
    let cases = [
        ("GET", "/admin/objects/counter?limit=0", 400),
        ("GET", "/admin/objects/counter?limit=1001", 400),
        ("GET", "/admin/objects/counter?limit=ten", 400),
        ("GET", "/admin/objects/counter?cursor=zz", 400),
        ("GET", "/admin/objects/counter/a/storage?cursor=xyz", 400),
        ("GET", "/admin/objects/counter/id:1234", 400),
        ("GET", "/admin/objects/counter/%FF", 400),
        ("GET", "/admin/objects/nosuchclass", 404),
        ("GET", "/admin/objects/Bad%20Class/x", 404),
        ("GET", "/admin/nothing", 404),
        ("GET", "/admin", 404),
        ("POST", "/admin/classes", 405),
        ("PUT", "/admin/objects/counter/a", 405),
        ("GET", "/admin/objects/counter/never", 404),
    ];
    for (method, path, status) in cases {
        let reply = client.request_with(method, path, &[("Authorization", &bearer)], b"");
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        assert!(
            reply.json()["error"].is_string(),
            "{method} {path}: {}",
            reply.text()
        );
    }
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn stead_admin_prints_tables_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &["--admin-token", TOKEN]);
    let mut client = server.client();
    for name in ["alpha", "beta", "id:colon"] {
        let path = format!("/objects/counter/{}/increment", name.replace(':', "%3A"));
        assert_eq!(client.get(&path).status, 200);
    }
    let url = format!("http://{}", server.addr);
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_stead"))
            .arg("admin")
            .args(["--url", &url, "--token", TOKEN])
            .args(args)
            .output()
            .expect("run stead admin");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["objects", "counter"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("ID "), "{out}");
    for name in ["alpha", "beta", "id:colon"] {
        assert!(out.contains(name), "{name} missing: {out}");
    }
    let (code, out, _) = run(&["--json", "object", "counter", "id:colon"]);
    assert_eq!(code, Some(0));
    let object: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(object["name"], "id:colon");
    let (code, out, _) = run(&["storage", "counter", "alpha"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("value  1"), "{out}");
    let (code, out, _) = run(&["delete", "counter", "beta"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("deleted "), "{out}");
    let (code, _, err) = run(&["object", "counter", "beta"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");
    let output = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args(["admin", "--url", &url, "--token", "wrong", "classes"])
        .output()
        .expect("run stead admin");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
    assert_eq!(server.stop(), Some(0));
}
