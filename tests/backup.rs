//! Backups, black-box: `GET /admin/backup` from the real binary under write load, `stead
//! restore` into a new data directory (for another core count), and the restored server
//! compared with what clients were told before the backup began. Truncated and corrupt
//! backups are refused with where they broke, and leave no data directory behind.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Client, TestServer};
use serde_json::{json, Value};

const TOKEN: &str = "backup-token";
const COUNTERS: usize = 24;

/// Downloads a backup: the status and the body, de-chunked.
fn download(addr: SocketAddr, token: &str) -> (u16, Vec<u8>) {
    let authorization = format!("Bearer {token}");
    let reply = Client::connect(addr).request_with(
        "GET",
        "/admin/backup",
        &[("Authorization", &authorization)],
        b"",
    );
    (reply.status, reply.body)
}

fn restore(from: &Path, data_dir: &Path, cores: &str) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args(["restore", "--from"])
        .arg(from)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--cores", cores])
        .output()
        .expect("run stead restore");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

fn exec(client: &mut Client, query: &str, params: Value) -> Value {
    let body = json!({ "query": query, "params": params }).to_string();
    let reply = client.request("POST", "/objects/sql/rows/exec", body.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

#[test]
fn a_backup_under_write_load_restores_everything_acknowledged_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = TestServer::start(&data, 2, &["--admin-token", TOKEN]);
    let mut client = server.client();
    exec(
        &mut client,
        "CREATE TABLE t (n INTEGER PRIMARY KEY)",
        json!([]),
    );
    // Writers: counters incremented, rows inserted, each noting the last value acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(vec![0u64; COUNTERS + 1]));
    let mut writers = Vec::new();
    for writer in 0..3 {
        let (stop, acknowledged, addr) = (stop.clone(), acknowledged.clone(), server.addr);
        writers.push(thread::spawn(move || {
            let mut client = Client::connect(addr);
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let counter = (round * 3 + writer) % COUNTERS;
                let reply = client.get(&format!("/objects/counter/c{counter}/increment"));
                assert_eq!(reply.status, 200, "{}", reply.text());
                let value: u64 = reply.text().parse().expect("a number");
                let mut acked = acknowledged.lock().expect("lock");
                acked[counter] = acked[counter].max(value);
                drop(acked);
                if writer == 0 {
                    let n = round as u64 + 1;
                    exec(&mut client, "INSERT INTO t VALUES (?)", json!([n]));
                    let mut acked = acknowledged.lock().expect("lock");
                    acked[COUNTERS] = n;
                }
                round += 1;
            }
        }));
    }
    thread::sleep(Duration::from_millis(400));
    let before = acknowledged.lock().expect("lock").clone();
    let (status, backup) = download(server.addr, TOKEN);
    assert_eq!(status, 200);
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("writer");
    }
    let after = acknowledged.lock().expect("lock").clone();
    assert_eq!(server.stop(), Some(0));
    let file = dir.path().join("stead.backup");
    std::fs::write(&file, &backup).expect("write the backup");

    // Restore for one core (the server had two), then serve it.
    let restored = dir.path().join("restored");
    let (code, text) = restore(&file, &restored, "1");
    assert_eq!(code, Some(0), "{text}");
    let server = TestServer::start(&restored, 1, &[]);
    let mut client = server.client();
    for counter in 0..COUNTERS {
        let value: u64 = client
            .get(&format!("/objects/counter/c{counter}/value"))
            .text()
            .parse()
            .expect("a number");
        assert!(
            before[counter] <= value && value <= after[counter],
            "counter {counter}: {value} not within [{}, {}]",
            before[counter],
            after[counter]
        );
    }
    let rows = exec(&mut client, "SELECT count(*), max(n) FROM t", json!([]));
    let (count, max) = (&rows["rows"][0][0], &rows["rows"][0][1]);
    assert_eq!(count, max, "rows 1..=n with none missing: {rows}");
    let count = count.as_u64().unwrap_or(0);
    assert!(
        before[COUNTERS] <= count && count <= after[COUNTERS],
        "{count} rows not within [{}, {}]",
        before[COUNTERS],
        after[COUNTERS]
    );
    let integrity = exec(&mut client, "PRAGMA integrity_check", json!([]));
    assert_eq!(integrity["rows"], json!([["ok"]]));
    assert_eq!(server.stop(), Some(0));

    // A directory that is not empty is refused.
    let (code, text) = restore(&file, &restored, "0");
    assert_eq!(code, Some(1));
    assert!(text.contains("not empty"), "{text}");
}

#[test]
fn truncated_and_corrupt_backups_are_refused_with_where_they_broke() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(&dir.path().join("data"), 2, &["--admin-token", TOKEN]);
    let mut client = server.client();
    for counter in 0..10 {
        assert_eq!(
            client
                .get(&format!("/objects/counter/k{counter}/increment"))
                .status,
            200
        );
    }
    let (status, _) = download(server.addr, "wrong");
    assert_eq!(status, 401);
    // The backup as `stead admin backup` saves it.
    let saved = dir.path().join("saved.backup");
    let output = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args([
            "admin",
            "--url",
            &format!("http://{}", server.addr),
            "--token",
            TOKEN,
        ])
        .args(["backup", "--out"])
        .arg(&saved)
        .output()
        .expect("run stead admin backup");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let backup = std::fs::read(&saved).expect("the saved backup");
    assert_eq!(server.stop(), Some(0));
    assert!(backup.starts_with(b"STEADBAK"));
    let file = dir.path().join("broken.backup");
    let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
    for cut in [0, 20, 40, backup.len() / 2, backup.len() - 1] {
        cases.push((backup[..cut].to_vec(), "truncated"));
    }
    for at in [3, 40, backup.len() / 2, backup.len() - 3] {
        let mut flipped = backup.clone();
        flipped[at] ^= 0x5A;
        cases.push((flipped, "corrupt at byte"));
    }
    // Whole records in a wrong place: bytes after the end, two backups run together.
    let mut appended = backup.clone();
    appended.push(0);
    cases.push((appended, "bytes after the end record"));
    let mut twice = backup.clone();
    twice.extend_from_slice(&backup[32..]);
    cases.push((twice, "bytes after the end record"));
    for (bytes, expected) in cases {
        std::fs::write(&file, &bytes).expect("write");
        let target = dir.path().join("target");
        let (code, text) = restore(&file, &target, "0");
        assert_eq!(code, Some(1), "{} bytes: {text}", bytes.len());
        assert!(text.contains(expected), "{} bytes: {text}", bytes.len());
        assert!(!target.exists(), "a failed restore leaves no directory");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().contains("restoring"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    // The intact backup restores for the same core count, into `.` of an empty directory.
    std::fs::write(&file, &backup).expect("write");
    let target = dir.path().join("target");
    std::fs::create_dir(&target).expect("create the target");
    let output = Command::new(env!("CARGO_BIN_EXE_stead"))
        .current_dir(&target)
        .args(["restore", "--from"])
        .arg(&file)
        .args(["--data-dir", "."])
        .output()
        .expect("run stead restore");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("restored 10 objects"), "{text}");
    let server = TestServer::start(&target, 2, &[]);
    assert_eq!(server.client().get("/objects/counter/k7/value").text(), "1");
    assert_eq!(server.stop(), Some(0));
}
