//! Encryption at rest through the server: a known value written by clients (an object's name,
//! a key-value, a SQL row) appears in no file of the data directory, survives kill -9, and a
//! data directory refuses to start with the wrong keys (none, another, a key for a plain one).

mod common;

use std::path::Path;

use common::TestServer;

const NEEDLE: &str = "needle-4f1c9a";

fn write_key(path: &Path, fill: char) {
    let key: String = std::iter::repeat_n(fill, 64).collect();
    std::fs::write(
        path,
        format!("# stead encryption keys, newest first\n{key}\n"),
    )
    .expect("key");
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("list") {
                pending.push(entry.expect("entry").path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|window| window == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn session(server: &TestServer) -> String {
    let body = format!(
        "{{\"userId\":\"{NEEDLE}\",\"data\":\"{}\"}}",
        NEEDLE.repeat(300)
    );
    let reply =
        server
            .client()
            .request("POST", "/objects/sessions/store/sessions", body.as_bytes());
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["id"].as_str().expect("an id").to_string()
}

#[test]
fn nothing_clients_wrote_is_in_plain_text_and_it_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let key = dir.path().join("keys");
    write_key(&key, 'a');
    let key_arg = key.to_string_lossy().into_owned();
    let args = ["--encryption-key-file", key_arg.as_str()];
    let server = TestServer::start(&data, 2, &args);
    let mut client = server.client();
    for _ in 0..3 {
        assert_eq!(
            client
                .get(&format!("/objects/counter/{NEEDLE}/increment"))
                .status,
            200
        );
    }
    let id = session(&server);
    server.kill();

    let found = files_holding(&data, NEEDLE.as_bytes());
    assert!(found.is_empty(), "plain text in {found:?}");

    let server = TestServer::start(&data, 2, &args);
    let mut client = server.client();
    let reply = client.get(&format!("/objects/counter/{NEEDLE}/value"));
    assert_eq!((reply.status, reply.text()), (200, "3".to_string()));
    let reply = client.get(&format!("/objects/sessions/store/sessions/{id}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["data"], NEEDLE.repeat(300).as_str());
    assert_eq!(server.stop(), Some(0));
    let found = files_holding(&data, NEEDLE.as_bytes());
    assert!(found.is_empty(), "plain text in {found:?}");

    // No key, or another key: refused with the reason, and the data is still there after.
    let stderr = common::refused_start(&data, &[]);
    assert!(
        stderr.contains("is encrypted: open it with its key"),
        "{stderr}"
    );
    let other = dir.path().join("other-keys");
    write_key(&other, 'b');
    let other_arg = other.to_string_lossy().into_owned();
    let stderr = common::refused_start(&data, &["--encryption-key-file", &other_arg]);
    assert!(stderr.contains("not in the key file"), "{stderr}");
    let server = TestServer::start(&data, 2, &args);
    let reply = server
        .client()
        .get(&format!("/objects/counter/{NEEDLE}/value"));
    assert_eq!(reply.text(), "3");
    assert_eq!(server.stop(), Some(0));

    // A plain data directory refuses a key.
    let plain = dir.path().join("plain");
    let server = TestServer::start(&plain, 1, &[]);
    assert_eq!(
        server.client().get("/objects/counter/p/increment").status,
        200
    );
    session(&server);
    assert_eq!(server.stop(), Some(0));
    // Without a key the same writes are in plain text: the scan above can find them.
    assert!(!files_holding(&plain, NEEDLE.as_bytes()).is_empty());
    let stderr = common::refused_start(&plain, &args);
    assert!(stderr.contains("written without encryption"), "{stderr}");
    // And a bad key file says why.
    std::fs::write(&other, "not a key\n").expect("write");
    let stderr = common::refused_start(&data, &["--encryption-key-file", &other_arg]);
    assert!(stderr.contains("64 hex digits"), "{stderr}");
}

#[test]
fn a_backup_restores_into_an_encrypted_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("keys");
    write_key(&key, 'c');
    let key_arg = key.to_string_lossy().into_owned();
    let data = dir.path().join("data");
    let server = TestServer::start(
        &data,
        1,
        &["--encryption-key-file", &key_arg, "--admin-token", "adm"],
    );
    let id = session(&server);
    let url = format!("http://{}", server.addr);
    let backup = dir.path().join("backup.stead");
    let stead = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_stead"))
            .args(args)
            .output()
            .expect("run stead");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let backup_arg = backup.to_string_lossy().into_owned();
    stead(&[
        "admin",
        "--url",
        &url,
        "--token",
        "adm",
        "backup",
        "--out",
        &backup_arg,
    ]);
    assert_eq!(server.stop(), Some(0));
    // The backup itself is plain (README says so); the restored directory is not.
    assert!(!files_holding(dir.path(), NEEDLE.as_bytes()).is_empty());
    let restored = dir.path().join("restored");
    let restored_arg = restored.to_string_lossy().into_owned();
    stead(&[
        "restore",
        "--from",
        &backup_arg,
        "--data-dir",
        &restored_arg,
        "--encryption-key-file",
        &key_arg,
    ]);
    let found = files_holding(&restored, NEEDLE.as_bytes());
    assert!(found.is_empty(), "plain text in {found:?}");
    let server = TestServer::start(&restored, 1, &["--encryption-key-file", &key_arg]);
    let reply = server
        .client()
        .get(&format!("/objects/sessions/store/sessions/{id}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(server.stop(), Some(0));
}
