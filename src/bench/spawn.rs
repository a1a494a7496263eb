//! `--spawn`: a `stead serve` of our own on a free port and a temporary data directory, on the
//! cores the bench leaves free, stopped with SIGTERM and cleaned up afterwards.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::error::BenchError;

/// How long the server gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a stopping server is checked on.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The server's `--cores`: as asked, else the cores below the lowest bench core (stead serve
/// runs on cores 0..N), else every core the bench does not use; at least one.
pub fn server_cores(asked: Option<usize>, bench_cores: &[usize], available: usize) -> usize {
    if let Some(cores) = asked {
        return cores.max(1);
    }
    match bench_cores.iter().min() {
        Some(0) => available.saturating_sub(bench_cores.len()).max(1),
        Some(lowest) => (*lowest).min(available).max(1),
        None => available.max(1),
    }
}

/// A running `stead serve` child.
pub struct SpawnedServer {
    /// The child; SIGTERM on stop, killed on drop if still running.
    child: Child,
    /// `http://ADDR` as the server printed it.
    pub url: String,
    /// Its data directory, removed on stop and on drop.
    data_dir: PathBuf,
}

impl SpawnedServer {
    /// Starts the current executable as `serve` and waits for its `listening on ADDR` line.
    pub fn start(cores: usize) -> Result<SpawnedServer, BenchError> {
        let executable = std::env::current_exe()
            .map_err(|error| BenchError::Spawn(format!("cannot find own executable: {error}")))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or(0);
        let data_dir =
            std::env::temp_dir().join(format!("stead-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&data_dir).map_err(|error| {
            BenchError::Spawn(format!("cannot create {}: {error}", data_dir.display()))
        })?;
        let child = Command::new(executable)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(["--cores", &cores.to_string()])
            // The server's info lines would interleave with the summary; its warnings and
            // errors still show. A RUST_LOG the user set is passed on unchanged.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&data_dir);
                return Err(BenchError::Spawn(format!(
                    "cannot start the server: {error}"
                )));
            }
        };
        // From here on, dropping `server` kills the child and removes the directory.
        let mut server = SpawnedServer {
            child,
            url: String::new(),
            data_dir,
        };
        server.url = server.wait_for_address()?;
        Ok(server)
    }

    fn wait_for_address(&mut self) -> Result<String, BenchError> {
        let stdout = self
            .child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Spawn("no stdout".to_string()))?;
        let (sender, receiver) = mpsc::channel();
        // Reads every line, so that the server never blocks on a full pipe; ends at its exit.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = sender.send(addr);
                }
            }
        });
        let addr = receiver.recv_timeout(START_TIMEOUT).map_err(|_| {
            BenchError::Spawn("the server did not print `listening on ADDR`".to_string())
        })?;
        Ok(format!("http://{addr}"))
    }

    /// SIGTERM, waits for the exit (SIGKILL past the timeout), removes the data directory.
    pub fn stop(mut self) -> Result<(), BenchError> {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet (only
        // this type waits for it).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(BenchError::Spawn(format!(
                        "the server exited with {status}"
                    )));
                }
                Ok(None) => std::thread::sleep(STOP_POLL_INTERVAL),
                Err(error) => return Err(BenchError::Spawn(format!("cannot wait: {error}"))),
            }
        }
        Err(BenchError::Spawn(
            "the server did not stop after SIGTERM; killed".to_string(),
        ))
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_gets_the_cores_the_bench_leaves() {
        assert_eq!(server_cores(None, &[1], 2), 1);
        assert_eq!(server_cores(None, &[2, 3], 4), 2);
        assert_eq!(server_cores(None, &[0], 4), 3);
        assert_eq!(server_cores(None, &[], 4), 4);
        assert_eq!(server_cores(Some(3), &[1], 4), 3);
        assert_eq!(server_cores(None, &[0], 1), 1);
    }
}
