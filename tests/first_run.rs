//! The README's set-up, the way a newcomer runs it: `stead serve` and the `kv` example from a
//! fresh working directory, with their default (relative) data directories, then a restart that
//! must find the data again. Only the listen address differs (port 0, through `STEAD_LISTEN`),
//! so tests can run side by side.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestServer;

/// The `kv` example's binary, which `cargo test` builds beside the `stead` binary.
fn kv_example() -> PathBuf {
    let stead = Path::new(env!("CARGO_BIN_EXE_stead"));
    let examples = stead
        .parent()
        .expect("the binary's directory")
        .join("examples");
    let kv = examples.join("kv");
    assert!(kv.exists(), "{} was not built", kv.display());
    kv
}

/// `stead serve` with every default but the port, run in `working_dir`.
fn serve_with_defaults(working_dir: &Path) -> TestServer {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stead"));
    command
        .arg("serve")
        .current_dir(working_dir)
        .env("STEAD_LISTEN", "127.0.0.1:0");
    TestServer::spawn(command, &working_dir.join("stead-data"))
}

fn kv_with_defaults(working_dir: &Path) -> TestServer {
    let mut command = Command::new(kv_example());
    command
        .current_dir(working_dir)
        .env("STEAD_LISTEN", "127.0.0.1:0");
    TestServer::spawn(command, &working_dir.join("kv-data"))
}

#[test]
fn serve_starts_in_a_fresh_directory_with_the_default_data_dir_and_finds_it_again() {
    let working_dir = tempfile::tempdir().expect("temp dir");
    let server = serve_with_defaults(working_dir.path());
    let mut client = server.client();
    for expected in 1..=3 {
        let reply = client.get("/objects/counter/visits/increment");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), expected.to_string());
    }
    assert!(
        working_dir.path().join("stead-data").is_dir(),
        "the data directory is ./stead-data, relative to where stead was started"
    );
    assert_eq!(server.stop(), Some(0));

    let server = serve_with_defaults(working_dir.path());
    let reply = server.client().get("/objects/counter/visits/value");
    assert_eq!((reply.status, reply.text()), (200, "3".to_string()));
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn kv_example_starts_in_a_fresh_directory_and_finds_its_data_again() {
    let working_dir = tempfile::tempdir().expect("temp dir");
    let server = kv_with_defaults(working_dir.path());
    let mut client = server.client();
    let reply = client.request("PUT", "/objects/kv/notes/greeting", b"hello");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(working_dir.path().join("kv-data").is_dir());
    assert_eq!(server.stop(), Some(0));

    let server = kv_with_defaults(working_dir.path());
    let reply = server.client().get("/objects/kv/notes/greeting");
    assert_eq!((reply.status, reply.text()), (200, "hello".to_string()));
    assert_eq!(server.stop(), Some(0));
}

/// A user class gets the same answer as the built-ins for a write its client made too large:
/// 413 with a JSON error, not 500.
#[test]
fn kv_example_answers_413_to_a_value_or_key_too_large() {
    let working_dir = tempfile::tempdir().expect("temp dir");
    let server = kv_with_defaults(working_dir.path());
    let mut client = server.client();
    let value = vec![b'v'; 200 * 1024];
    let reply = client.request("PUT", "/objects/kv/notes/big", &value);
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(
        reply.json()["error"]
            .as_str()
            .is_some_and(|error| error.contains("value_bytes_max")),
        "{}",
        reply.text()
    );
    let key = "k".repeat(3000);
    let reply = client.request("PUT", &format!("/objects/kv/notes/{key}"), b"small");
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(
        reply.json()["error"]
            .as_str()
            .is_some_and(|error| error.contains("key_bytes_max")),
        "{}",
        reply.text()
    );
    let reply = client.request("PUT", "/objects/kv/notes/fine", b"small");
    assert_eq!(reply.status, 200);
    assert_eq!(server.stop(), Some(0));
}
