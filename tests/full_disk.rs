//! A full disk, for real: the server's data directory on a small tmpfs that the test fills.
//! Writes answer 507, reads of durable data go on, `/healthz` answers 503 naming the core and
//! the reason, `/metrics` shows the store unwritable; a restart while the disk is still full
//! serves reads; once space is back, a restart recovers every acknowledged write (README,
//! "Operating: a full disk").
//!
//! Mounting needs root (or CAP_SYS_ADMIN). Where that is impossible the test prints SKIPPED
//! with the reason, unless `STEAD_REQUIRE_MOUNT=1` makes it fail instead.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestServer;

/// Big enough for a one-core server's files, small enough to fill at once.
const TMPFS_SIZE: &str = "size=16m";

/// A mounted tmpfs, unmounted on drop.
struct Mount {
    path: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs at `path`; `Err` says why it could not.
    fn tmpfs(path: &Path) -> Result<Mount, String> {
        std::fs::create_dir_all(path).map_err(|error| format!("mkdir: {error}"))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
            .arg(path)
            .output()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Mount {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Writes zeros into `path` until the file system refuses with ENOSPC.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(error) => panic!("filling the disk: {error}"),
        }
    }
    // Smaller pieces, so not even one page is left.
    let small = [0u8; 512];
    while file.write(&small).is_ok_and(|written| written > 0) {}
    let _ = file.sync_all();
}

/// A server whose log is not prepared ahead (`segment_prepare_bytes = 0`), so the first write
/// after the disk fills needs new space and fails: the failure path these tests are about.
/// With preparation on (the default), writes first use up the prepared blocks: see
/// `prepared_log_blocks_take_writes_after_the_disk_fills`.
fn start(data_dir: &Path) -> TestServer {
    let config = data_dir.with_extension("toml");
    std::fs::write(&config, "[storage]\nsegment_prepare_bytes = 0\n").expect("write config");
    let config = config.to_string_lossy().into_owned();
    TestServer::start(data_dir, 1, &["--config", &config])
}

/// A small tmpfs holding a server's data directory and the file that fills the disk.
struct SmallDisk {
    data_dir: PathBuf,
    filler: PathBuf,
    /// Declared before `_root`: fields drop in order, so the tmpfs is unmounted before the
    /// directory it is mounted in is removed.
    _mount: Mount,
    _root: tempfile::TempDir,
}

/// A small tmpfs in a temporary directory, or None (with a SKIPPED line) where mounting is
/// impossible.
fn mount_or_skip() -> Option<SmallDisk> {
    let root = tempfile::tempdir().expect("temp dir");
    match Mount::tmpfs(&root.path().join("mnt")) {
        Ok(mount) => Some(SmallDisk {
            data_dir: mount.path.join("data"),
            filler: mount.path.join("filler"),
            _mount: mount,
            _root: root,
        }),
        Err(reason) if std::env::var_os("STEAD_REQUIRE_MOUNT").is_some_and(|v| v == "1") => {
            panic!("STEAD_REQUIRE_MOUNT=1 but a tmpfs cannot be mounted: {reason}")
        }
        Err(reason) => {
            // Straight to stderr: the test harness captures `println!`, and a skip must show.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED full_disk: cannot mount a tmpfs ({reason}); run as root, or set \
                 STEAD_REQUIRE_MOUNT=1 to make this a failure"
            );
            None
        }
    }
}

#[test]
fn a_full_disk_refuses_writes_serves_reads_and_recovers_after_a_restart() {
    let Some(disk) = mount_or_skip() else {
        return;
    };
    let (data_dir, filler) = (&disk.data_dir, &disk.filler);

    let server = start(data_dir);
    let mut client = server.client();
    for expected in 1..=3 {
        let reply = client.get("/objects/counter/a/increment");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), expected.to_string());
    }
    assert_eq!(client.get("/objects/counter/b/increment").status, 200);
    assert_eq!(client.get("/healthz").status, 200);

    fill(filler);
    let refused = client.get("/objects/counter/a/increment");
    assert_eq!(refused.status, 507, "{}", refused.text());
    let body = refused.json();
    let error = body["error"].as_str().expect("an error message");
    assert!(error.starts_with("storage unavailable: "), "{error}");
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(body["retryable"], false);
    // Later writes are refused the same way, without touching the disk.
    assert_eq!(client.get("/objects/counter/b/increment").status, 507);

    // Reads show what was acknowledged, not the refused increments, for the object that was
    // in memory, for another, and for one never written.
    let read = |client: &mut common::Client, name: &str| {
        let reply = client.get(&format!("/objects/counter/{name}/value"));
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        reply.text()
    };
    assert_eq!(read(&mut client, "a"), "3");
    assert_eq!(read(&mut client, "b"), "1");
    assert_eq!(read(&mut client, "never-written"), "0");

    let health = client.get("/healthz");
    assert_eq!(health.status, 503, "{}", health.text());
    // The fields in the README's order, byte for byte up to the reason.
    assert!(
        health.text().starts_with(
            r#"{"status":"unhealthy","cores":[{"core":0,"storage":"unwritable","reason":""#
        ),
        "{}",
        health.text()
    );
    let health = health.json();
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["cores"][0]["core"], 0);
    assert_eq!(health["cores"][0]["storage"], "unwritable");
    let reason = health["cores"][0]["reason"].as_str().expect("a reason");
    assert!(reason.contains("No space left on device"), "{reason}");
    let metrics = client.get("/metrics").text();
    assert!(
        metrics.contains("stead_store_writable{core=\"0\"} 0"),
        "{metrics}"
    );
    drop(client);
    assert_eq!(server.stop(), Some(0), "a clean stop with a full disk");

    // Still full: the server starts, serves reads and refuses writes.
    let server = start(data_dir);
    let mut client = server.client();
    assert_eq!(read(&mut client, "a"), "3");
    assert_eq!(client.get("/objects/counter/a/increment").status, 507);
    assert_eq!(client.get("/healthz").status, 503);
    assert_eq!(read(&mut client, "a"), "3");
    drop(client);
    assert_eq!(server.stop(), Some(0));

    // Space is back: a restart recovers everything acknowledged and takes writes again.
    std::fs::remove_file(filler).expect("free the space");
    let server = start(data_dir);
    let mut client = server.client();
    assert_eq!(client.get("/healthz").text(), "ok");
    assert_eq!(read(&mut client, "b"), "1");
    let reply = client.get("/objects/counter/a/increment");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "4");
    let metrics = client.get("/metrics").text();
    assert!(
        metrics.contains("stead_store_writable{core=\"0\"} 1"),
        "{metrics}"
    );
    drop(client);
    assert_eq!(server.stop(), Some(0));
}

/// With the default configuration the log is zero-filled and synced ahead of the writer, so
/// commits overwrite blocks the disk already gave: when the disk fills, writes go on into those
/// blocks (each still durable), and only once they are used up is a write refused with 507.
/// Every acknowledged increment survives the restart.
#[test]
fn prepared_log_blocks_take_writes_after_the_disk_fills() {
    let Some(disk) = mount_or_skip() else {
        return;
    };
    let (data_dir, filler) = (&disk.data_dir, &disk.filler);
    let server = TestServer::start(data_dir, 1, &[]);
    let mut client = server.client();
    assert_eq!(client.get("/objects/counter/a/increment").status, 200);

    fill(filler);
    // One block per sequential increment; the default window is 4 MiB (1024 blocks), and the
    // segment's first piece may add a little.
    let mut acknowledged = 1;
    let refused = loop {
        let reply = client.get("/objects/counter/a/increment");
        if reply.status != 200 {
            break reply;
        }
        acknowledged += 1;
        assert_eq!(reply.text(), acknowledged.to_string());
        assert!(
            acknowledged < 3000,
            "writes never ran out of prepared space"
        );
    };
    assert_eq!(refused.status, 507, "{}", refused.text());
    assert!(
        acknowledged > 1,
        "no write used the prepared blocks after the disk filled"
    );
    let error = refused.json()["error"].as_str().map(str::to_string);
    let error = error.expect("an error message");
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(
        client.get("/objects/counter/a/value").text(),
        acknowledged.to_string()
    );
    drop(client);
    assert_eq!(server.stop(), Some(0));

    std::fs::remove_file(filler).expect("free the space");
    let server = TestServer::start(data_dir, 1, &[]);
    let mut client = server.client();
    assert_eq!(
        client.get("/objects/counter/a/value").text(),
        acknowledged.to_string(),
        "every acknowledged increment survives"
    );
    drop(client);
    assert_eq!(server.stop(), Some(0));
}

/// A release whose write fails on a full disk: the holder, the waiter it handed the lock to
/// and the waiter behind it all get 507 (none of them hangs: the lock's instance leaves memory,
/// and a waiter of an instance that left is told so), and after a restart with space the
/// durable holder is still the holder.
#[test]
fn lock_waiters_are_answered_when_the_release_cannot_be_written() {
    let Some(disk) = mount_or_skip() else {
        return;
    };
    let (data_dir, filler) = (&disk.data_dir, &disk.filler);
    let server = start(data_dir);
    let mut holder = server.client();
    assert_eq!(holder.get("/objects/lock/L/acquire?clientId=a").status, 200);
    let mut waiters: Vec<common::Client> = ["w1", "w2"]
        .iter()
        .map(|client_id| {
            let mut waiter = server.client();
            let path = format!("/objects/lock/L/acquire?clientId={client_id}");
            waiter.send_request("GET", &path, &[], b"");
            waiter
        })
        .collect();
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || holder.get("/objects/lock/L/status").json()["waiting"] == 2
    ));

    fill(filler);
    let released = holder.get("/objects/lock/L/release?clientId=a");
    assert_eq!(released.status, 507, "{}", released.text());
    for (index, waiter) in waiters.iter_mut().enumerate() {
        let reply = waiter
            .read_reply()
            .unwrap_or_else(|| panic!("waiter {index}: the connection closed without an answer"));
        assert_eq!(reply.status, 507, "waiter {index}: {}", reply.text());
    }
    drop((holder, waiters));
    assert_eq!(server.stop(), Some(0));

    std::fs::remove_file(filler).expect("free the space");
    let server = start(data_dir);
    let status = server.client().get("/objects/lock/L/status").json();
    assert_eq!(status["holder"], "a", "{status}");
    assert_eq!(status["waiting"], 0);
    assert_eq!(server.stop(), Some(0));
}
