//! Clients that keep working while the cluster tests kill and restart nodes: counter writers
//! and lock users that send to whichever node serves now, each on a thread of its own, with a
//! fresh connection per request so that a dead node costs one request, not the client. What
//! they saw comes back as a log for the checks below.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where the clients send: the node that serves now, set by the test as nodes come and go.
#[derive(Clone, Default)]
pub struct Target(Arc<Mutex<Option<SocketAddr>>>);

impl Target {
    pub fn set(&self, addr: Option<SocketAddr>) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = addr;
    }

    fn get(&self) -> Option<SocketAddr> {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One GET over a fresh connection: the status and body, or why no answer came.
pub fn try_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut client = super::Client::try_connect(addr, timeout).map_err(|e| e.to_string())?;
    let reply = client.try_request("GET", path)?;
    Ok((reply.status, reply.text()))
}

/// What one counter writer saw.
#[derive(Debug, Default)]
pub struct CounterLog {
    pub name: String,
    /// The values acknowledged (200), in order, each with when the answer came.
    pub acked: Vec<(u64, Instant)>,
    /// Increments whose outcome is unknown: a 503 (its append may have reached the stream)
    /// or no answer at all.
    pub unknown: u64,
    /// Every status seen, by code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (refused or cut connections).
    pub no_answer: u64,
}

/// One lock holding as the client saw it: from the answer `{"acquired":true}` to the moment
/// it sent its release (or its lease ended, if earlier). The true holding covers it.
#[derive(Clone, Copy, Debug)]
pub struct Holding {
    pub client: usize,
    pub from: Instant,
    pub until: Instant,
}

/// What one lock user saw.
#[derive(Debug, Default)]
pub struct LockLog {
    pub holdings: Vec<Holding>,
    pub statuses: BTreeMap<u16, u64>,
    pub no_answer: u64,
}

/// Running clients; `stop` ends them and returns their logs.
pub struct Load {
    stop: Arc<AtomicBool>,
    counters: Vec<JoinHandle<CounterLog>>,
    locks: Vec<JoinHandle<LockLog>>,
}

/// The lease the lock users ask for (`timeoutMs`): a holder whose release was lost with a
/// node frees the lock by itself after it.
pub const LOCK_LEASE: Duration = Duration::from_millis(1500);

impl Load {
    /// `counters` writers (counter `k{n}` each) and `lockers` users of the lock `lock`.
    pub fn start(target: &Target, counters: usize, lockers: usize, lock: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = (0..counters)
            .map(|n| {
                let (target, stop) = (target.clone(), stop.clone());
                std::thread::spawn(move || count(&target, &format!("k{n}"), &stop))
            })
            .collect();
        let locks = (0..lockers)
            .map(|client| {
                let (target, stop, lock) = (target.clone(), stop.clone(), lock.to_string());
                std::thread::spawn(move || use_lock(&target, &lock, client, &stop))
            })
            .collect();
        Load {
            stop,
            counters,
            locks,
        }
    }

    pub fn stop(self) -> (Vec<CounterLog>, Vec<LockLog>) {
        self.stop.store(true, Ordering::SeqCst);
        let counters = self
            .counters
            .into_iter()
            .map(|thread| thread.join().expect("a counter writer"))
            .collect();
        let locks = self
            .locks
            .into_iter()
            .map(|thread| thread.join().expect("a lock user"))
            .collect();
        (counters, locks)
    }
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn count(target: &Target, name: &str, stop: &AtomicBool) -> CounterLog {
    let mut log = CounterLog {
        name: name.to_string(),
        ..CounterLog::default()
    };
    let path = format!("/objects/counter/{name}/increment");
    while !stop.load(Ordering::SeqCst) {
        let Some(addr) = target.get() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        match try_get(addr, &path, REQUEST_TIMEOUT) {
            Ok((200, body)) => {
                let value = body.trim().parse().expect("a counter value");
                log.acked.push((value, Instant::now()));
                *log.statuses.entry(200).or_default() += 1;
            }
            Ok((status, _)) => {
                log.unknown += 1;
                *log.statuses.entry(status).or_default() += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => {
                log.unknown += 1;
                log.no_answer += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    log
}

fn use_lock(target: &Target, lock: &str, client: usize, stop: &AtomicBool) -> LockLog {
    let mut log = LockLog::default();
    let lease = LOCK_LEASE.as_millis();
    let acquire = format!("/objects/lock/{lock}/acquire?clientId=c{client}&timeoutMs={lease}");
    let release = format!("/objects/lock/{lock}/release?clientId=c{client}");
    while !stop.load(Ordering::SeqCst) {
        let Some(addr) = target.get() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let sent = Instant::now();
        match try_get(addr, &acquire, REQUEST_TIMEOUT) {
            Ok((200, body)) => {
                assert_eq!(body, r#"{"acquired":true}"#);
                *log.statuses.entry(200).or_default() += 1;
                let from = Instant::now();
                std::thread::sleep(Duration::from_millis(2));
                let until = Instant::now().min(sent + LOCK_LEASE);
                log.holdings.push(Holding {
                    client,
                    from,
                    until,
                });
                match try_get(addr, &release, REQUEST_TIMEOUT) {
                    Ok((status, _)) => *log.statuses.entry(status).or_default() += 1,
                    Err(_) => log.no_answer += 1,
                }
            }
            Ok((status, _)) => {
                *log.statuses.entry(status).or_default() += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => {
                log.no_answer += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    log
}

/// Checks the counter logs against the counters' values afterwards (`value(name)`): every
/// acknowledged value is distinct (no two owners answered for one increment), none is lost,
/// and the value holds no more increments than were sent.
pub fn check_counters(logs: &[CounterLog], value: impl Fn(&str) -> u64) {
    for log in logs {
        let mut values: Vec<u64> = log.acked.iter().map(|(value, _)| *value).collect();
        values.sort_unstable();
        let acked = values.len();
        values.dedup();
        assert_eq!(
            values.len(),
            acked,
            "{}: a value acknowledged twice",
            log.name
        );
        let after = value(&log.name);
        let max = values.last().copied().unwrap_or(0);
        assert!(
            max <= after,
            "{}: {max} acknowledged, {after} after",
            log.name
        );
        assert!(
            after <= acked as u64 + log.unknown,
            "{}: {after} after, only {acked} acknowledged and {} unknown",
            log.name,
            log.unknown
        );
    }
}

/// Checks that no two clients held the lock at once: the holdings of different clients, each
/// inside the true holding, never overlap. With acquire answered only to the holder and the
/// holder changing only by a release or the lease's end, this is what a linearizable lock
/// allows; a second owner serving stale state would show as an overlap.
pub fn check_lock(logs: &[LockLog]) -> usize {
    let holdings: Vec<Holding> = logs
        .iter()
        .flat_map(|log| log.holdings.iter().copied())
        .collect();
    for (index, first) in holdings.iter().enumerate() {
        for second in &holdings[index + 1..] {
            if first.client != second.client
                && first.from < second.until
                && second.from < first.until
            {
                panic!("two clients held the lock at once: {first:?} and {second:?}");
            }
        }
    }
    holdings.len()
}

/// Checks that every status the clients saw (each client's counts by status) is one of
/// `allowed`.
pub fn check_statuses<'a>(seen: impl IntoIterator<Item = &'a BTreeMap<u16, u64>>, allowed: &[u16]) {
    for statuses in seen {
        assert!(
            statuses.keys().all(|status| allowed.contains(status)),
            "{statuses:?}, only {allowed:?} expected"
        );
    }
}
