//! The control thread: the node's one NATS client, on a tokio runtime of its own, talking to the
//! cores through bounded channels only.
//!
//! At start ([`start`]) it connects and checks the cluster's settings, and returns: the cores
//! then listen while the node is a standby (following the `owner` key, so that they can
//! forward requests to the owner). Once the lease is this node's, it becomes the owner (see
//! the module above), replays the stream to the cores (`ReplayItem`), watches the `owner` key
//! (another node's takeover deposes this one), and publishes the cores' appends, each with
//! the epoch and the partition's last sequence. It stops when every core has dropped its
//! sender of appends, or the server says every core has stopped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use async_nats::HeaderMap;
use futures_lite::StreamExt;
use stead_storage::Batch;
use tokio::sync::mpsc;

use super::record;
use super::{Append, ClusterError, ControlEvent, ReplicationError};
use crate::config::ClusterSettings;
use crate::id::ObjectId;

/// Pause before making a failed watch of the owner key again.
const REWATCH_PAUSE: Duration = Duration::from_secs(1);
/// The KV bucket (entries expire after the lease) and key of the owner's lease.
const LEASE_BUCKET: &str = "stead_lease";
const LEASE_KEY: &str = "lease";
/// The stream of every partition's log, and its subjects.
const STREAM: &str = "STEAD_LOG";
const SUBJECT_PREFIX: &str = "stead.log.";
/// The KV bucket of the cluster's settings and owner.
const BUCKET: &str = "stead_cluster";
/// The object store of the partitions' snapshots.
const SNAPSHOT_BUCKET: &str = "stead_snapshots";
/// Snapshots a start reads at once (each is held in memory until its core has it).
const SNAPSHOT_READS: usize = 16;
/// The longest a snapshot may take to store or to read.
const SNAPSHOT_STORE_TIMEOUT: Duration = Duration::from_secs(120);
const SETTINGS_KEY: &str = "settings";
const OWNER_KEY: &str = "owner";
/// Headers of every append.
const EXPECTED_LAST: &str = "Nats-Expected-Last-Subject-Sequence";
/// The header naming a message for the stream's deduplication.
const MSG_ID: &str = "Nats-Msg-Id";
const KIND_HEADER: &str = "Stead-Kind";
const EPOCH_HEADER: &str = "Stead-Epoch";
const NODE_HEADER: &str = "Stead-Node";
/// Below this nats-server release the check of `Nats-Expected-Last-Subject-Sequence` on a
/// clustered stream is known to fail under concurrent appends (nats-server#4320, reported on
/// 2.9.15 to 2.9.20) or for an empty subject (nats-server#5794, merged in August 2024): a warning, since
/// a single-server stream (replicas 1) is not affected.
const FENCE_SAFE_VERSION: (u64, u64, u64) = (2, 10, 20);

/// Whether version text like `2.9.10` is below `minimum` (unreadable text counts as below).
fn version_below(version: &str, minimum: (u64, u64, u64)) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse::<u64>().unwrap_or(0));
    let found = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    found < minimum
}

/// Room in a NATS message for an append's headers and batch count.
const APPEND_OVERHEAD_BYTES: usize = 4096;
/// Tries to append a partition's takeover record after its last record.
const FENCE_ATTEMPTS_MAX: u32 = 5;
/// Partitions fenced at once at start.
const FENCE_CONCURRENCY: usize = 256;
/// The shortest pause between rebuilds of refused partitions.
const RECOVER_PAUSE_MIN: Duration = Duration::from_millis(250);
/// Batches a core's replay queue holds.
const REPLAY_QUEUE: usize = 1024;
/// How long start-up waits for NATS to answer one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a core receives while the stream is replayed, before it serves.
#[derive(Debug)]
pub enum ReplayItem {
    /// A batch of one of the core's objects, in log order.
    Batch(ObjectId, Batch),
    /// Every batch was sent.
    Done,
    /// The replay cannot go on: the core must not serve.
    Failed(String),
    /// Once the core serves: `partition`, refused for want of an acknowledgement, is rebuilt
    /// from the stream. Its objects leave memory and the core's store, and the batches that
    /// follow (up to `Recovered`) are its state.
    Recover(u32, tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Every batch of the partition's rebuild was sent: it serves again.
    Recovered(u32),
    /// The rebuild stopped: the partition stays refused (another rebuild comes later).
    RecoverFailed(String),
}

/// A core's ends of the channels to the control thread.
pub struct ClusterLink {
    /// The node's lease, shared by every core.
    pub lease: std::sync::Arc<super::Lease>,
    /// The owner as last read, and this node's id and address.
    pub view: std::sync::Arc<super::ClusterView>,
    /// The most bytes of batches one append may carry.
    pub append_bytes_max: usize,
    pub appends: mpsc::Sender<Append>,
    pub events: mpsc::Receiver<ControlEvent>,
    pub replay: mpsc::Receiver<ReplayItem>,
}

/// A joined cluster (settings checked; not yet the owner): each core's link, and what the
/// cores share.
pub struct StartedCluster {
    pub links: Vec<ClusterLink>,
    pub view: std::sync::Arc<super::ClusterView>,
    /// Waits, once every core has stopped, for the lease to be given up.
    pub shutdown: ClusterShutdown,
}

/// The end of a graceful shutdown: once every core has stopped (nothing is served any more),
/// the server tells the control thread, which deletes this process's lease so that a standby
/// takes over at its next try instead of when the lease expires.
pub struct ClusterShutdown {
    /// Tells the control thread that the cores have stopped.
    release: std::sync::Arc<tokio::sync::Notify>,
    released: std::sync::mpsc::Receiver<()>,
    /// The longest wait: the deletion's own bound and a second more.
    wait_max: Duration,
}

impl ClusterShutdown {
    /// Waits until the lease was given up (or could not be: it then expires by itself).
    pub fn wait(self) {
        self.release.notify_one();
        let _ = self.released.recv_timeout(self.wait_max);
    }
}

/// Joins the cluster on a thread of its own; returns once the cluster's settings are checked.
/// The node is then a standby: the control thread takes the partitions over once the lease
/// is free, and replays them to the cores (`ClusterLink::replay`).
/// `never_own`: why this node may never own the partitions (a class pinned to a jurisdiction
/// it does not have): it then only forwards.
pub fn start(
    settings: &ClusterSettings,
    (partitions, cores): (u32, usize),
    never_own: Option<String>,
) -> Result<StartedCluster, ClusterError> {
    // An append and a snapshot per partition at most, and room for each core.
    let (append_sender, append_receiver) = mpsc::channel(2 * partitions as usize + cores);
    let lease = std::sync::Arc::new(super::Lease::new(Duration::from_millis(
        settings.lease_ms.max(1),
    )));
    let view = std::sync::Arc::new(super::ClusterView::new(&settings.node_id));
    let mut links = Vec::with_capacity(cores);
    let mut event_senders = Vec::with_capacity(cores);
    let mut replay_senders = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (event_sender, events) = mpsc::channel(2 * partitions as usize + 16);
        let (replay_sender, replay) = mpsc::channel(REPLAY_QUEUE);
        event_senders.push(event_sender);
        replay_senders.push(replay_sender);
        links.push(ClusterLink {
            lease: lease.clone(),
            view: view.clone(),
            append_bytes_max: 0,
            appends: append_sender.clone(),
            events,
            replay,
        });
    }
    drop(append_sender);
    let (ready_sender, ready) = std::sync::mpsc::channel();
    let (released_sender, released) = std::sync::mpsc::channel();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let shutdown = ClusterShutdown {
        release: release.clone(),
        released,
        wait_max: release_timeout(settings.lease_ms) + Duration::from_secs(1),
    };
    let settings = settings.clone();
    let thread_view = view.clone();
    let thread = std::thread::Builder::new()
        .name("stead-cluster".to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_sender.send(Err(nats_error("start the runtime", error)));
                    return;
                }
            };
            let control = Control {
                append_ids: process_number(),
                lease,
                view: thread_view,
                held: RefCell::default(),
                deposed: Rc::default(),
                to_recover: RefCell::default(),
                snapshots_in_flight: RefCell::default(),
                settings,
                partitions,
                cores,
                events: event_senders,
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(
                &runtime,
                control.run(
                    append_receiver,
                    replay_senders,
                    (ready_sender, release),
                    never_own,
                ),
            );
            let _ = released_sender.send(());
            // The tasks left (a watch's subscriber) spawn their unsubscribes as they are
            // dropped, which needs the runtime.
            let _entered = runtime.enter();
            drop(local);
        })
        .map_err(|error| nats_error("start the control thread", error))?;
    match ready.recv() {
        Ok(Ok(append_bytes_max)) => {
            for link in &mut links {
                link.append_bytes_max = append_bytes_max;
            }
            // The thread is detached: it ends once `ClusterShutdown::wait` tells it the cores
            // have stopped (or the appends' channel closes).
            Ok(StartedCluster {
                links,
                view,
                shutdown,
            })
        }
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(ClusterError::Nats {
                step: "start",
                reason: "the control thread stopped".to_string(),
            })
        }
    }
}

fn nats_error(step: &'static str, error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats {
        step,
        reason: error.to_string(),
    }
}

/// Runs `future` within `STEP_TIMEOUT`, naming `step` when it fails.
async fn step<T, E: std::fmt::Display>(
    step: &'static str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(nats_error(step, error)),
        Err(_) => Err(nats_error(
            step,
            format!("no answer within {STEP_TIMEOUT:?}"),
        )),
    }
}

/// The headers of an append of `kind` by `node` at `epoch`, after sequence `expected`.
fn headers(kind: &str, node: &str, epoch: u64, expected: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(KIND_HEADER, kind);
    headers.insert(EPOCH_HEADER, epoch.to_string().as_str());
    headers.insert(NODE_HEADER, node);
    headers.insert(EXPECTED_LAST, expected.to_string().as_str());
    headers
}

/// The partition and the sequence a snapshot's object name (`p<partition>.<sequence>`) says.
fn snapshot_name(name: &str) -> Option<(u32, u64)> {
    let (partition, sequence) = name.strip_prefix('p')?.split_once('.')?;
    Some((partition.parse().ok()?, sequence.parse().ok()?))
}

/// The subject of partition `partition`'s log.
fn subject(partition: u32) -> String {
    format!("{SUBJECT_PREFIX}{partition}")
}

/// A random number for this process; the clock's nanoseconds if the system has no randomness.
fn process_number() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64),
    }
}

/// How long giving the lease up may take.
fn release_timeout(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms.max(1) / 6)
}

struct Control {
    /// This process's part of its appends' message ids (random): a resent append is the
    /// same message, another process's never is.
    append_ids: u64,
    lease: std::sync::Arc<super::Lease>,
    view: std::sync::Arc<super::ClusterView>,
    /// The lease bucket, this process's lease value, and what stops its renewals, once it
    /// took the lease (a failed takeover gives it up and tries again with a lease of its own).
    held: RefCell<Option<HeldLease>>,
    /// Set once the node is deposed: the lease is no longer renewed, so a standby can take it.
    deposed: Rc<std::cell::Cell<bool>>,
    /// Partitions refused because an append was not acknowledged (not fenced): rebuilt from
    /// the stream once the lease is fresh again.
    to_recover: RefCell<std::collections::BTreeSet<u32>>,
    /// Partitions whose snapshot is being stored (and its subject purged): not rebuilt
    /// meanwhile, since the purge could remove messages the rebuild reads.
    snapshots_in_flight: RefCell<std::collections::HashSet<u32>>,
    settings: ClusterSettings,
    partitions: u32,
    cores: usize,
    /// Each core's channel of answers.
    events: Vec<mpsc::Sender<ControlEvent>>,
}

/// A connection to NATS, the cluster's settings checked: what a standby has.
struct Connected {
    js: jetstream::Context,
    bucket: kv::Store,
    log: stream::Stream,
    snapshots: object_store::ObjectStore,
    /// The most bytes of batches one append may carry: the server's `max_payload` less room
    /// for the headers and the count.
    append_bytes_max: usize,
}

/// A lease this process took: its bucket, its value, and the flag that stops its renewals.
type HeldLease = (kv::Store, bytes::Bytes, Rc<std::cell::Cell<bool>>);

/// What start-up leaves for the rest of the thread's life.
struct Joined {
    js: jetstream::Context,
    /// The bucket of the settings and the owner key.
    bucket: kv::Store,
    log: stream::Stream,
    /// The object store of the partitions' snapshots.
    snapshots: object_store::ObjectStore,
    /// Each partition's latest snapshot's object name, once known.
    snapshot_names: Rc<RefCell<HashMap<u32, String>>>,
    epoch: u64,
    /// The last sequence of each partition's subject.
    last: Rc<RefCell<Vec<u64>>>,
    /// The stream's last sequence once every partition was fenced: the end of the replay.
    replay_end: u64,
    /// Every change of the `owner` key after this node's, from the moment it became the owner.
    owner_watch: Option<kv::Watch>,
}

impl Control {
    async fn run(
        self,
        appends: mpsc::Receiver<Append>,
        replay: Vec<mpsc::Sender<ReplayItem>>,
        (ready, release): (
            std::sync::mpsc::Sender<Result<usize, ClusterError>>,
            std::sync::Arc<tokio::sync::Notify>,
        ),
        never_own: Option<String>,
    ) {
        let connected = match self.connect().await {
            Ok(connected) => connected,
            Err(error) => {
                let _ = ready.send(Err(error));
                return;
            }
        };
        let _ = ready.send(Ok(connected.append_bytes_max));
        let control = Rc::new(self);
        tokio::task::spawn_local(control.clone().follow_owner(connected.bucket.clone()));
        if let Some(reason) = never_own {
            tracing::warn!(
                %reason,
                "cluster: this node never takes the partitions over; it forwards to the owner"
            );
            release.notified().await;
            return;
        }
        // A standby waits here; the server may stop meanwhile. A takeover that fails before
        // the replay (NATS did not answer a step) has sent the cores nothing: the lease is
        // given up and the node waits as a standby again.
        // Each failed takeover doubles the wait before the next (a quarter lease at first, at
        // most four leases): each try bumps the epoch and appends takeover records.
        let quarter = Duration::from_millis(control.settings.lease_ms / 4);
        let mut retry_pause = quarter;
        let mut joined = loop {
            let attempt = tokio::select! {
                joined = control.take_over(&connected) => joined,
                () = release.notified() => {
                    control.release_lease().await;
                    return;
                }
            };
            match attempt {
                Ok(joined) => break joined,
                Err(error) => {
                    // The lease's renewal found it taken meanwhile: the cores were told they
                    // are deposed, and stay so; the node only forwards from now on.
                    let deposed = control.deposed.get();
                    tracing::error!(
                        %error,
                        deposed,
                        "cluster: the takeover failed; the lease is given up"
                    );
                    control.release_lease().await;
                    if deposed {
                        release.notified().await;
                        return;
                    }
                    control.deposed.set(false);
                    tokio::time::sleep(retry_pause).await;
                    retry_pause = (retry_pause * 2).min(quarter * 16);
                }
            }
        };
        if let Some(watch) = joined.owner_watch.take() {
            let bucket = joined.bucket.clone();
            tokio::task::spawn_local(control.clone().watch_owner(bucket, watch, joined.epoch));
        }
        if let Err(error) = control.replay(&joined, &replay).await {
            tracing::error!(%error, "cluster: replay failed");
            for sender in &replay {
                let _ = sender.send(ReplayItem::Failed(error.to_string())).await;
            }
            // The cores may hold part of the replay: they serve nothing until a restart, and
            // another node may take over at once; this one goes on following the owner (to
            // forward to it) until it stops.
            control.release_lease().await;
            release.notified().await;
            return;
        }
        for sender in &replay {
            let _ = sender.send(ReplayItem::Done).await;
        }
        tokio::task::spawn_local(control.clone().watch_takeover());
        // Until every core has stopped: their appends' channel closes, or the server says so
        // (a core's task may keep its end of the channel until the process exits).
        tokio::select! {
            () = control.clone().serve_appends(appends, &joined) => {}
            () = control.recover_partitions(&joined, &replay) => {}
            () = release.notified() => {}
        }
        control.release_lease().await;
    }

    /// Once the cores have the whole replay: if one of them could not take its partitions over
    /// (objects of classes this node does not have, a store error), the node must own none of
    /// them, or they would answer 503 until a restart: every core is deposed (the others
    /// stop serving) and the lease given up, so that another node takes over.
    async fn watch_takeover(self: Rc<Self>) {
        while self.view.cores_failed() == 0 {
            if self.view.cores_serving() >= self.cores {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let error = ReplicationError::NotServing(
            "a core of this node could not take its partitions over (see the node's log): \
             the node gave them up"
                .to_string(),
        );
        tracing::error!(%error, "cluster: the takeover failed; giving the lease up");
        for sender in &self.events {
            let _ = sender
                .send(ControlEvent::Deposed {
                    error: error.clone(),
                })
                .await;
        }
        self.release_lease().await;
    }

    /// Gives the lease up after every core has stopped: deletes the lease key if it still
    /// holds this process's value (never a lease another process took since).
    async fn release_lease(&self) {
        let Some((bucket, value, stop)) = self.held.borrow_mut().take() else {
            return;
        };
        stop.set(true);
        if self.deposed.replace(true) {
            return;
        }
        // The renewals stop at their next wake; one in flight may still move the revision,
        // so a refused deletion reads the key once more.
        let release = async {
            let mut outcome = Err("no attempt".to_string());
            for _ in 0..2 {
                outcome = match bucket.entry(LEASE_KEY).await {
                    Ok(Some(entry))
                        if entry.value == value && entry.operation == kv::Operation::Put =>
                    {
                        bucket
                            .delete_expect_revision(LEASE_KEY, Some(entry.revision))
                            .await
                            .map_err(|error| error.to_string())
                    }
                    Ok(_) => Err("the lease is no longer this process's".to_string()),
                    Err(error) => Err(error.to_string()),
                };
                if outcome.is_ok() {
                    break;
                }
            }
            outcome
        };
        match tokio::time::timeout(release_timeout(self.settings.lease_ms), release).await {
            Ok(Ok(())) => tracing::info!("cluster: lease given up"),
            Ok(Err(reason)) => tracing::warn!(%reason, "cluster: the lease was not given up"),
            Err(_) => tracing::warn!("cluster: giving the lease up timed out; it expires"),
        }
    }

    /// Connects to NATS and checks the cluster's settings (creating them, the stream and the
    /// buckets for the first node).
    async fn connect(&self) -> Result<Connected, ClusterError> {
        let servers = self
            .settings
            .nats
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| nats_error("read the NATS addresses", error))?;
        let node = &self.settings.node_id;
        let valid = !node.is_empty()
            && node.len() <= 64
            && node
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !valid {
            return Err(nats_error(
                "check the node id",
                format!("{node:?}: use 1 to 64 letters, digits, '-' or '_'"),
            ));
        }
        if servers.is_empty() {
            return Err(nats_error("connect", "no NATS server given (--cluster)"));
        }
        let client = step(
            "connect to NATS",
            async_nats::ConnectOptions::new()
                .connection_timeout(STEP_TIMEOUT)
                // A connection whose link died without a reset is noticed after two unanswered
                // pings: ping every quarter lease, so it is remade soon after the link heals
                // (the client's default, a minute, kept a healed node deaf for two).
                .ping_interval(Duration::from_millis(self.settings.lease_ms / 4))
                .connect(servers),
        )
        .await?;
        let version = client.server_info().version;
        if version_below(&version, FENCE_SAFE_VERSION) {
            tracing::warn!(
                %version,
                "cluster: this nats-server may not hold the fence on a clustered stream \
                 (nats-server#4320, #5794): with replicas > 1, use a release with both fixes"
            );
        }
        let append_bytes_max = client
            .server_info()
            .max_payload
            .saturating_sub(APPEND_OVERHEAD_BYTES)
            .max(1);
        let js = jetstream::new(client);
        let replicas = self.settings.replicas;
        let bucket = match js.get_key_value(BUCKET).await {
            Ok(bucket) => bucket,
            Err(_) => {
                let config = kv::Config {
                    bucket: BUCKET.to_string(),
                    history: 1,
                    num_replicas: replicas,
                    ..Default::default()
                };
                step("create the settings bucket", js.create_key_value(config)).await?
            }
        };
        let ours = format!(
            "{{\"partitions\":{},\"replicas\":{replicas},\"lease_ms\":{}}}",
            self.partitions, self.settings.lease_ms
        );
        let stored = step("read the settings", bucket.get(SETTINGS_KEY)).await?;
        let theirs = match stored {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => match bucket.create(SETTINGS_KEY, ours.clone().into()).await {
                Ok(_) => ours.clone(),
                // Another node created them first: compare with theirs.
                Err(_) => step("read the settings", bucket.get(SETTINGS_KEY))
                    .await?
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or_default(),
            },
        };
        if theirs != ours {
            return Err(ClusterError::Settings {
                cluster: theirs,
                node: ours,
            });
        }
        let log = step(
            "open the log stream",
            js.get_or_create_stream(stream::Config {
                name: STREAM.to_string(),
                subjects: vec![format!("{SUBJECT_PREFIX}*")],
                num_replicas: replicas,
                ..Default::default()
            }),
        )
        .await?;
        let snapshots = match js.get_object_store(SNAPSHOT_BUCKET).await {
            Ok(store) => store,
            Err(_) => {
                let config = object_store::Config {
                    bucket: SNAPSHOT_BUCKET.to_string(),
                    num_replicas: replicas,
                    ..Default::default()
                };
                step("create the snapshot bucket", js.create_object_store(config)).await?
            }
        };
        Ok(Connected {
            js,
            bucket,
            log,
            snapshots,
            append_bytes_max,
        })
    }

    /// Keeps the view of the owner current: reads the `owner` key every twelfth of the lease,
    /// for as long as the control thread runs (a standby forwards to the owner it names, and
    /// so does a deposed node).
    async fn follow_owner(self: Rc<Self>, bucket: kv::Store) {
        let pause = Duration::from_millis(self.settings.lease_ms.max(12) / 12);
        loop {
            match tokio::time::timeout(STEP_TIMEOUT, bucket.entry(OWNER_KEY)).await {
                Ok(Ok(Some(entry))) if entry.operation == kv::Operation::Put => {
                    if let Some(owner) = super::Owner::parse(&entry.value, entry.revision) {
                        self.view.set_owner(owner);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::debug!(%error, "cluster: cannot read the owner"),
                Err(_) => tracing::debug!("cluster: reading the owner timed out"),
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Waits for the lease (a standby waits here as long as the owner lives), becomes the
    /// owner and fences every partition.
    async fn take_over(&self, connected: &Connected) -> Result<Joined, ClusterError> {
        let Connected {
            js,
            bucket,
            log,
            snapshots,
            ..
        } = connected;
        let (js, bucket, log, snapshots) =
            (js.clone(), bucket.clone(), log.clone(), snapshots.clone());
        self.take_lease(&js).await?;
        // The owner key names where this node listens: the server says once it is bound.
        let address = {
            let since = std::time::Instant::now();
            loop {
                if let Some(address) = self.view.advertise() {
                    break Some(address);
                }
                if since.elapsed() > STEP_TIMEOUT {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let owner = super::Owner::value(&self.settings.node_id, address.as_deref());
        let current = step("read the owner", bucket.entry(OWNER_KEY)).await?;
        let epoch = match current {
            Some(entry) => {
                step(
                    "become the owner",
                    bucket.update(OWNER_KEY, owner.into(), entry.revision),
                )
                .await?
            }
            None => step("become the owner", bucket.create(OWNER_KEY, owner.into())).await?,
        };
        tracing::info!(node = %self.settings.node_id, epoch, "cluster: owner of every partition");
        self.view.set_owner(super::Owner {
            node: self.settings.node_id.clone(),
            address,
            epoch,
        });
        // Watched before anything else, so that no takeover is missed however long the fence
        // and the replay take; a change between the compare-and-set and the watch is caught by
        // reading the key again once the watch is in place.
        let owner_watch = step("watch the owner", bucket.watch(OWNER_KEY)).await?;
        let now = step("read the owner again", bucket.entry(OWNER_KEY)).await?;
        if now.map(|entry| entry.revision) != Some(epoch) {
            return Err(nats_error(
                "become the owner",
                "another node became the owner while this one joined",
            ));
        }
        let last = self.fence(&js, &log, epoch).await?;
        let mut log = log;
        let replay_end = step("read the log's end", log.info())
            .await?
            .state
            .last_sequence;
        Ok(Joined {
            js,
            bucket,
            log,
            snapshots,
            snapshot_names: Rc::default(),
            epoch,
            last: Rc::new(RefCell::new(last)),
            replay_end,
            owner_watch: Some(owner_watch),
        })
    }

    /// Waits until no node holds the lease, takes it, and keeps renewing it on a task of its
    /// own. A standby node waits here for as long as the owner lives.
    async fn take_lease(&self, js: &jetstream::Context) -> Result<(), ClusterError> {
        let lease = Duration::from_millis(self.settings.lease_ms.max(1));
        let bucket = match js.get_key_value(LEASE_BUCKET).await {
            Ok(bucket) => bucket,
            Err(_) => {
                let config = kv::Config {
                    bucket: LEASE_BUCKET.to_string(),
                    history: 1,
                    max_age: lease,
                    num_replicas: self.settings.replicas,
                    ..Default::default()
                };
                step("create the lease bucket", js.create_key_value(config)).await?
            }
        };
        let mut process = [0u8; 8];
        getrandom::fill(&mut process).map_err(|error| nats_error("make a lease id", error))?;
        let value = bytes::Bytes::from(
            serde_json::json!({
                "node": self.settings.node_id,
                "process": u64::from_le_bytes(process),
            })
            .to_string(),
        );
        let mut said = false;
        let revision = loop {
            let sent = std::time::Instant::now();
            match step("take the lease", bucket.create(LEASE_KEY, value.clone())).await {
                Ok(revision) => {
                    self.lease.renewed(sent);
                    break revision;
                }
                Err(error) => {
                    if !said {
                        tracing::info!(%error, "cluster: another node holds the lease; waiting");
                        said = true;
                    }
                    // Often enough to follow a lease given up at once.
                    tokio::time::sleep(lease / 12).await;
                }
            }
        };
        tracing::info!(node = %self.settings.node_id, "cluster: lease taken");
        let stop = Rc::new(std::cell::Cell::new(false));
        *self.held.borrow_mut() = Some((bucket.clone(), value.clone(), stop.clone()));
        let renewal = Renewal {
            bucket,
            value,
            lease,
            clock: self.lease.clone(),
            deposed: self.deposed.clone(),
            stop,
            events: self.events.clone(),
        };
        tokio::task::spawn_local(renew_lease(renewal, revision));
        Ok(())
    }

    /// Appends a takeover record to every partition's subject, after its last message: from
    /// then on an append of the previous owner names a stale sequence and is refused.
    async fn fence(
        &self,
        js: &jetstream::Context,
        log: &stream::Stream,
        epoch: u64,
    ) -> Result<Vec<u64>, ClusterError> {
        let mut last = vec![0u64; self.partitions as usize];
        let partitions: Vec<u32> = (0..self.partitions).collect();
        for chunk in partitions.chunks(FENCE_CONCURRENCY) {
            // Spawned together, so that the client pipelines the requests.
            let fences: Vec<_> = chunk
                .iter()
                .map(|partition| {
                    let (js, log, partition) = (js.clone(), log.clone(), *partition);
                    let node = self.settings.node_id.clone();
                    let ours = self.still_ours();
                    tokio::task::spawn_local(async move {
                        let sequence = fence_one(&js, &log, &node, epoch, partition, ours).await?;
                        Ok::<_, ClusterError>((partition, sequence))
                    })
                })
                .collect();
            // A failed (or abandoned) takeover leaves no fence running: one that went on
            // after the lease was given up could land after the next owner's fence.
            let mut fences = AbortOnDrop(fences);
            for fence in &mut fences.0 {
                let (partition, sequence) = fence
                    .await
                    .map_err(|error| nats_error("fence a partition", error))??;
                last[partition as usize] = sequence;
            }
        }
        Ok(last)
    }

    /// Sends each partition's latest snapshot to the cores; the stream sequence each one
    /// covers, by partition.
    async fn replay_snapshots(
        &self,
        joined: &Joined,
        cores: &[mpsc::Sender<ReplayItem>],
    ) -> Result<HashMap<u32, u64>, ClusterError> {
        let mut listed = step("list the snapshots", joined.snapshots.list()).await?;
        let mut latest: HashMap<u32, (u64, String)> = HashMap::new();
        // Older snapshots that outlived their replacement (a stop before their deletion).
        let mut stale = Vec::new();
        while let Some(info) = tokio::time::timeout(STEP_TIMEOUT, listed.next())
            .await
            .map_err(|_| nats_error("list the snapshots", "no answer in time"))?
        {
            let info = info.map_err(|error| nats_error("list the snapshots", error))?;
            let Some((partition, covers)) = snapshot_name(&info.name) else {
                continue;
            };
            match latest.get(&partition) {
                Some((seen, _)) if *seen >= covers => stale.push(info.name),
                _ => {
                    if let Some((_, older)) = latest.insert(partition, (covers, info.name)) {
                        stale.push(older);
                    }
                }
            }
        }
        for name in stale {
            let deleted = tokio::time::timeout(STEP_TIMEOUT, joined.snapshots.delete(&name)).await;
            if !matches!(deleted, Ok(Ok(()))) {
                tracing::warn!(name, "cluster: an older snapshot stays");
            }
        }
        let mut covered = HashMap::with_capacity(latest.len());
        let mut batches = 0u64;
        let latest: Vec<(u32, (u64, String))> = latest.into_iter().collect();
        for chunk in latest.chunks(SNAPSHOT_READS) {
            // Read together (the client pipelines them), handed to the cores in turn.
            let reads: Vec<_> = chunk
                .iter()
                .map(|(_, (covers, name))| {
                    let (snapshots, name) = (joined.snapshots.clone(), name.clone());
                    tokio::task::spawn_local(read_snapshot(snapshots, name, *covers))
                })
                .collect();
            for ((partition, (covers, name)), read) in chunk.iter().cloned().zip(reads) {
                let decoded = read
                    .await
                    .map_err(|error| nats_error("read a snapshot", error))??;
                for (id, batch) in decoded {
                    let core = id.core(self.partitions, self.cores);
                    if cores[core]
                        .send(ReplayItem::Batch(id, batch))
                        .await
                        .is_err()
                    {
                        return Err(nats_error("replay", "a core stopped during the replay"));
                    }
                    batches += 1;
                }
                joined.snapshot_names.borrow_mut().insert(partition, name);
                covered.insert(partition, covers);
            }
        }
        if !covered.is_empty() {
            tracing::info!(
                partitions = covered.len(),
                batches,
                "cluster: snapshots replayed"
            );
        }
        Ok(covered)
    }

    /// Sends every batch of the stream, up to the end seen at start, to the core owning its
    /// object, but those a partition's snapshot holds already.
    async fn replay(
        &self,
        joined: &Joined,
        cores: &[mpsc::Sender<ReplayItem>],
    ) -> Result<(), ClusterError> {
        let covered = self.replay_snapshots(joined, cores).await?;
        if joined.replay_end == 0 {
            return Ok(());
        }
        let consumer = step(
            "open the log for replay",
            joined.log.create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{SUBJECT_PREFIX}*"),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            }),
        )
        .await?;
        let mut messages = step("read the log", consumer.messages()).await?;
        let mut batches = 0u64;
        loop {
            let message = match tokio::time::timeout(STEP_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => return Err(nats_error("read the log", error)),
                Ok(None) => return Err(nats_error("read the log", "the log ended early")),
                Err(_) => return Err(nats_error("read the log", "no message in time")),
            };
            let sequence = message
                .info()
                .map_err(|error| nats_error("read a log message's sequence", error))?
                .stream_sequence;
            let partition = message
                .subject
                .strip_prefix(SUBJECT_PREFIX)
                .and_then(|partition| partition.parse::<u32>().ok());
            // In the partition's snapshot already (its subject's purge may not have run).
            let in_snapshot = partition
                .and_then(|partition| covered.get(&partition))
                .is_some_and(|covers| sequence <= *covers);
            if !in_snapshot {
                for (id, batch) in message_batches(&message, sequence)? {
                    let core = id.core(self.partitions, self.cores);
                    let sent = cores[core].send(ReplayItem::Batch(id, batch)).await;
                    if sent.is_err() {
                        return Err(nats_error("replay", "a core stopped during the replay"));
                    }
                    batches += 1;
                }
            }
            if sequence >= joined.replay_end {
                break;
            }
        }
        tracing::info!(
            batches,
            end = joined.replay_end,
            "cluster: store rebuilt from the log"
        );
        Ok(())
    }

    /// Rebuilds, one at a time, the partitions refused for want of an acknowledgement, once
    /// the lease is fresh (NATS answers again): the stream, not this node's memory or store,
    /// says what they hold. Never returns.
    async fn recover_partitions(&self, joined: &Joined, cores: &[mpsc::Sender<ReplayItem>]) {
        let pause_min = Duration::from_millis(self.settings.lease_ms / 4).max(RECOVER_PAUSE_MIN);
        let mut pause = pause_min;
        loop {
            tokio::time::sleep(pause).await;
            if self.deposed.get() || !self.lease.is_fresh() {
                continue;
            }
            let next = {
                let in_flight = self.snapshots_in_flight.borrow();
                let to_recover = self.to_recover.borrow();
                to_recover
                    .iter()
                    .find(|partition| !in_flight.contains(partition))
                    .copied()
            };
            let Some(partition) = next else {
                pause = pause_min;
                continue;
            };
            // A rebuild that failed is tried again later and later (up to 16 times the pause).
            pause = (pause * 2).min(pause_min * 16);
            let Some(core) = cores.get(partition as usize % self.cores.max(1)) else {
                continue;
            };
            // The fence goes after whatever an unacknowledged append left in the subject.
            let node = &self.settings.node_id;
            // Only while this node is surely the owner: a fence retried after the lease ran
            // out could land after a new owner's.
            let ours = self.still_ours();
            let fence = fence_one(&joined.js, &joined.log, node, joined.epoch, partition, ours);
            let end = match tokio::time::timeout(self.lease.fresh_for(), fence).await {
                Ok(Ok(end)) => end,
                Ok(Err(error)) => {
                    tracing::warn!(partition, %error, "cluster: a partition's rebuild failed");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(partition, "cluster: a partition's rebuild ran out of lease");
                    continue;
                }
            };
            if let Some(slot) = joined.last.borrow_mut().get_mut(partition as usize) {
                *slot = end;
            }
            match self.recover(joined, partition, end, core).await {
                Ok(batches) => {
                    self.to_recover.borrow_mut().remove(&partition);
                    pause = pause_min;
                    tracing::info!(
                        partition,
                        batches,
                        "cluster: partition rebuilt from the log"
                    );
                }
                Err(error) => {
                    tracing::warn!(partition, %error, "cluster: a partition's rebuild failed");
                    let _ = core
                        .send(ReplayItem::RecoverFailed(error.to_string()))
                        .await;
                }
            }
        }
    }

    /// Sends `partition`'s core the partition's state: its snapshot, then its messages up to
    /// `end` (the fence this node just appended). The batches sent.
    async fn recover(
        &self,
        joined: &Joined,
        partition: u32,
        end: u64,
        core: &mpsc::Sender<ReplayItem>,
    ) -> Result<u64, ClusterError> {
        let stopped = || nats_error("rebuild a partition", "its core stopped");
        let (done_sender, done) = tokio::sync::oneshot::channel();
        core.send(ReplayItem::Recover(partition, done_sender))
            .await
            .map_err(|_| stopped())?;
        let mut batches = 0u64;
        let mut covered = 0;
        let name = joined.snapshot_names.borrow().get(&partition).cloned();
        if let Some(name) = name {
            covered = snapshot_name(&name).map_or(0, |(_, covers)| covers);
            let decoded = read_snapshot(joined.snapshots.clone(), name, covered).await?;
            for (id, batch) in decoded {
                core.send(ReplayItem::Batch(id, batch))
                    .await
                    .map_err(|_| stopped())?;
                batches += 1;
            }
        }
        let consumer = step(
            "open a partition's log",
            joined.log.create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject(partition),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: covered + 1,
                },
                ..Default::default()
            }),
        )
        .await?;
        let mut messages = step("read a partition's log", consumer.messages()).await?;
        loop {
            let message = match tokio::time::timeout(STEP_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => return Err(nats_error("read a partition's log", error)),
                Ok(None) | Err(_) => {
                    return Err(nats_error(
                        "read a partition's log",
                        "it ended before the fence",
                    ))
                }
            };
            let sequence = message
                .info()
                .map_err(|error| nats_error("read a log message's sequence", error))?
                .stream_sequence;
            for (id, batch) in message_batches(&message, sequence)? {
                core.send(ReplayItem::Batch(id, batch))
                    .await
                    .map_err(|_| stopped())?;
                batches += 1;
            }
            if sequence >= end {
                break;
            }
        }
        core.send(ReplayItem::Recovered(partition))
            .await
            .map_err(|_| stopped())?;
        // The core's own part (its store's commits) may fail too.
        match done.await {
            Ok(Ok(())) => Ok(batches),
            Ok(Err(reason)) => Err(nats_error("rebuild a partition", reason)),
            Err(_) => Err(stopped()),
        }
    }

    /// Whether this node is still surely the owner: its lease fresh and not deposed.
    fn still_ours(&self) -> impl Fn() -> bool + 'static {
        let (lease, deposed) = (self.lease.clone(), self.deposed.clone());
        move || lease.is_fresh() && !deposed.get()
    }

    /// Deposes this node when another one writes the `owner` key. A watch that fails or ends
    /// is made again, and the key read again (a change meanwhile deposes); until it is back,
    /// the lease alone keeps this node from serving past a takeover.
    async fn watch_owner(self: Rc<Self>, bucket: kv::Store, mut watch: kv::Watch, epoch: u64) {
        let error = loop {
            let broken = match watch.next().await {
                Some(Ok(entry)) if entry.revision > epoch => {
                    if let Some(owner) = super::Owner::parse(&entry.value, entry.revision) {
                        self.view.set_owner(owner);
                    }
                    break deposed_by(&entry);
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => error.to_string(),
                None => "the watch ended".to_string(),
            };
            tracing::warn!(reason = %broken, "cluster: watching the owner key again");
            match rewatch(&bucket, epoch).await {
                Ok(again) => watch = again,
                Err(error) => break error,
            }
        };
        tracing::error!(%error, "cluster: this node stops serving");
        self.deposed.set(true);
        for sender in &self.events {
            let _ = sender
                .send(ControlEvent::Deposed {
                    error: error.clone(),
                })
                .await;
        }
    }

    /// Keeps a partition's snapshot (the object `p<partition>.<sequence>` of the snapshot
    /// bucket), purges the partition's subject below `sequence` (the message itself stays:
    /// the fence names the subject's last sequence), and deletes the partition's previous
    /// snapshot (see `store_and_purge` for how the purge keeps within the lease); a snapshot
    /// never replaces a newer one (each has a name of its own, and a start takes the highest).
    async fn keep_snapshot(
        self: Rc<Self>,
        log: stream::Stream,
        snapshots: object_store::ObjectStore,
        names: Rc<RefCell<HashMap<u32, String>>>,
        (append, sequence): (Append, u64),
    ) {
        let partition = append.partition;
        let name = format!("p{partition}.{sequence:020}");
        self.snapshots_in_flight.borrow_mut().insert(partition);
        let kept = self
            .store_and_purge(
                &log,
                &snapshots,
                &name,
                (partition, sequence),
                &append.payload,
            )
            .await;
        match &kept {
            Ok(()) => tracing::debug!(
                partition,
                sequence,
                bytes = append.payload.len(),
                "cluster: snapshot kept"
            ),
            Err(reason) => tracing::warn!(partition, %reason, "cluster: snapshot not kept"),
        }
        // A stored snapshot is the partition's newest (whether or not the purge ran): the one
        // before it goes. One that was not stored completely goes too.
        let stored = !matches!(kept, Err(SnapshotFailure::NotStored(_)));
        let drop = if stored {
            names
                .borrow_mut()
                .insert(partition, name.clone())
                .filter(|previous| *previous < name)
        } else {
            Some(name)
        };
        if let Some(drop) = drop {
            let deleted = tokio::time::timeout(STEP_TIMEOUT, snapshots.delete(&drop)).await;
            if !matches!(deleted, Ok(Ok(()))) {
                tracing::warn!(drop, "cluster: a snapshot that is no longer needed stays");
            }
        }
        self.snapshots_in_flight.borrow_mut().remove(&partition);
        let kept = kept.is_ok();
        if let Some(sender) = self.events.get(append.core) {
            let _ = sender
                .send(ControlEvent::SnapshotDone { partition, kept })
                .await;
        }
    }

    /// Stores snapshot `name` of `partition` (as of `sequence`), then purges the partition's
    /// subject below `sequence`. Storing may take as long as `SNAPSHOT_STORE_TIMEOUT`: a
    /// snapshot stored late is still the state as of its sequence. The purge is what a
    /// successor must never miss: it is sent only while the lease stays fresh for at least a
    /// quarter of it more, and waited for no longer than it stays fresh, which leaves the
    /// quarter-lease margin between the end of freshness and the lease's expiry to it.
    async fn store_and_purge(
        &self,
        log: &stream::Stream,
        snapshots: &object_store::ObjectStore,
        name: &str,
        (partition, sequence): (u32, u64),
        payload: &[u8],
    ) -> Result<(), SnapshotFailure> {
        if !self.lease.is_fresh() || self.deposed.get() {
            return Err(SnapshotFailure::NotStored(
                "the lease is not fresh".to_string(),
            ));
        }
        if self.to_recover.borrow().contains(&partition) {
            return Err(SnapshotFailure::NotStored(
                "the partition is refused and waits for its rebuild".to_string(),
            ));
        }
        let mut reader = payload;
        match tokio::time::timeout(SNAPSHOT_STORE_TIMEOUT, snapshots.put(name, &mut reader)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(SnapshotFailure::NotStored(error.to_string())),
            Err(_) => {
                return Err(SnapshotFailure::NotStored(format!(
                    "not stored within {SNAPSHOT_STORE_TIMEOUT:?}"
                )))
            }
        }
        let quarter = Duration::from_millis(self.settings.lease_ms.max(1) / 4);
        let fresh_for = self.lease.fresh_for();
        if fresh_for < quarter || self.deposed.get() {
            return Err(SnapshotFailure::NotPurged(
                "the lease is not fresh for long enough".to_string(),
            ));
        }
        if self.to_recover.borrow().contains(&partition) {
            return Err(SnapshotFailure::NotPurged(
                "the partition was refused meanwhile and waits for its rebuild".to_string(),
            ));
        }
        let purge = log.purge().filter(subject(partition)).sequence(sequence);
        match tokio::time::timeout(fresh_for, std::future::IntoFuture::into_future(purge)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(SnapshotFailure::NotPurged(error.to_string())),
            Err(_) => Err(SnapshotFailure::NotPurged(
                "no answer while the lease was fresh".to_string(),
            )),
        }
    }

    /// Publishes the cores' appends until every core has stopped.
    async fn serve_appends(self: Rc<Self>, mut appends: mpsc::Receiver<Append>, joined: &Joined) {
        let timeout = Duration::from_millis(self.settings.ack_timeout_ms.max(1));
        while let Some(append) = appends.recv().await {
            if let Some(sequence) = append.snapshot_of {
                tokio::task::spawn_local(self.clone().keep_snapshot(
                    joined.log.clone(),
                    joined.snapshots.clone(),
                    joined.snapshot_names.clone(),
                    (append, sequence),
                ));
                continue;
            }
            let control = self.clone();
            let (js, last, epoch) = (joined.js.clone(), joined.last.clone(), joined.epoch);
            tokio::task::spawn_local(async move {
                let partition = append.partition;
                let expected = last.borrow().get(partition as usize).copied().unwrap_or(0);
                let mut headers = headers("batches", &control.settings.node_id, epoch, expected);
                let id = format!("{:016x}.{partition}.{}", control.append_ids, append.upto);
                headers.insert(MSG_ID, id.as_str());
                let resend_after = (timeout / 4).max(Duration::from_millis(250));
                let sent = tokio::time::timeout(
                    timeout,
                    publish_until_heard(
                        &js,
                        subject(partition),
                        headers,
                        append.payload,
                        Some(resend_after),
                    ),
                )
                .await;
                let event = match sent {
                    Ok(Ok(sequence)) => {
                        if let Some(slot) = last.borrow_mut().get_mut(partition as usize) {
                            *slot = sequence;
                        }
                        ControlEvent::Acked {
                            partition,
                            upto: append.upto,
                            sequence,
                        }
                    }
                    Ok(Err(PublishFailure::Fenced)) => ControlEvent::Failed {
                        partition,
                        error: ReplicationError::Fenced { partition },
                    },
                    Ok(Err(other)) => ControlEvent::Failed {
                        partition,
                        error: ReplicationError::Unavailable(other.to_string()),
                    },
                    Err(_) => ControlEvent::Failed {
                        partition,
                        error: ReplicationError::Unavailable(format!(
                            "no acknowledgement within cluster.ack_timeout_ms ({} ms)",
                            timeout.as_millis()
                        )),
                    },
                };
                if let ControlEvent::Failed {
                    error: ReplicationError::Unavailable(_),
                    ..
                } = &event
                {
                    control.to_recover.borrow_mut().insert(partition);
                }
                if let Some(sender) = control.events.get(append.core) {
                    let _ = sender.send(event).await;
                }
            });
        }
    }
}

/// Appends a takeover record of `node` (epoch `epoch`) to `partition`'s subject, right after
/// its last message: from then on an append of an earlier writer names a stale sequence and
/// is refused. The record's sequence.
async fn fence_one(
    js: &jetstream::Context,
    log: &stream::Stream,
    node: &str,
    epoch: u64,
    partition: u32,
    still_ours: impl Fn() -> bool,
) -> Result<u64, ClusterError> {
    let subject = subject(partition);
    // An append of the expiring owner may land between the read and the
    // takeover record: read again and retry.
    let mut attempts = 0;
    let sequence = loop {
        attempts += 1;
        if !still_ours() {
            return Err(nats_error(
                "fence a partition",
                "this node's lease is no longer fresh",
            ));
        }
        let previous = match log.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message.sequence,
            Err(error)
                if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                0
            }
            Err(error) => return Err(nats_error("read a partition's last record", error)),
        };
        let headers = headers("takeover", node, epoch, previous);
        let published = tokio::time::timeout(
            STEP_TIMEOUT,
            publish_until_heard(js, subject.clone(), headers, Vec::new(), None),
        )
        .await;
        match published {
            Ok(Ok(sequence)) => break sequence,
            Ok(Err(PublishFailure::Fenced)) if attempts < FENCE_ATTEMPTS_MAX => {}
            Ok(Err(error)) => return Err(nats_error("fence a partition", error)),
            Err(_) => return Err(nats_error("fence a partition", "no answer in time")),
        }
    };
    Ok(sequence)
}

/// The batches of snapshot `name` (covering the log up to `covers`), read within
/// `SNAPSHOT_STORE_TIMEOUT`.
async fn read_snapshot(
    snapshots: object_store::ObjectStore,
    name: String,
    covers: u64,
) -> Result<Vec<(ObjectId, Batch)>, ClusterError> {
    use tokio::io::AsyncReadExt as _;
    let read = async {
        let mut bytes = Vec::new();
        let mut object = snapshots.get(&name).await.map_err(|e| e.to_string())?;
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(bytes)
    };
    let bytes = tokio::time::timeout(SNAPSHOT_STORE_TIMEOUT, read)
        .await
        .map_err(|_| nats_error("read a snapshot", "no answer in time"))?
        .map_err(|error| nats_error("read a snapshot", error))?;
    record::decode(&bytes).map_err(|error| ClusterError::Damaged {
        sequence: covers,
        reason: format!("snapshot {name}: {error}"),
    })
}

/// The batches a message of the log carries (none for a takeover record).
fn message_batches(
    message: &jetstream::Message,
    sequence: u64,
) -> Result<Vec<(ObjectId, Batch)>, ClusterError> {
    let kind = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(KIND_HEADER))
        .map(|value| value.as_str().to_string());
    match kind.as_deref() {
        Some("batches") => {
            record::decode(&message.payload).map_err(|error| ClusterError::Damaged {
                sequence,
                reason: error.to_string(),
            })
        }
        Some("takeover") => Ok(Vec::new()),
        other => Err(ClusterError::Damaged {
            sequence,
            reason: format!("a record of kind {other:?}, not one of this version's"),
        }),
    }
}

/// Tasks aborted when dropped, finished or not.
struct AbortOnDrop<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The error of a node whose owner key now names `entry`'s node.
fn deposed_by(entry: &kv::Entry) -> ReplicationError {
    let node = super::Owner::parse(&entry.value, entry.revision).map_or_else(
        || String::from_utf8_lossy(&entry.value).into_owned(),
        |owner| owner.node,
    );
    ReplicationError::Deposed {
        node,
        epoch: entry.revision,
    }
}

/// A new watch of the owner key, once one can be made and the key still holds `epoch`.
async fn rewatch(bucket: &kv::Store, epoch: u64) -> Result<kv::Watch, ReplicationError> {
    loop {
        tokio::time::sleep(REWATCH_PAUSE).await;
        let Ok(watch) = bucket.watch(OWNER_KEY).await else {
            continue;
        };
        match bucket.entry(OWNER_KEY).await {
            Ok(Some(entry)) if entry.revision == epoch => return Ok(watch),
            Ok(Some(entry)) => return Err(deposed_by(&entry)),
            Ok(None) => {
                return Err(ReplicationError::Unavailable(
                    "the owner key was deleted".to_string(),
                ))
            }
            Err(_) => continue,
        }
    }
}

/// Renews the lease every third of it, retrying a failed renewal every twelfth. A renewal
/// refused for a stale revision is looked into: the lease still ours (a renewal that timed
/// out but was applied) is kept; gone (expired, taken by nobody) it is taken again; another
/// node's, the node is deposed. Stops once the node is deposed, so a standby can take over.
async fn renew_lease(renewal: Renewal, mut revision: u64) {
    let Renewal {
        bucket,
        value,
        lease,
        clock,
        deposed,
        stop,
        events,
    } = renewal;
    let mut pause = lease / 3;
    loop {
        tokio::time::sleep(pause).await;
        if deposed.get() || stop.get() {
            return;
        }
        pause = lease / 12;
        let sent = std::time::Instant::now();
        let update = bucket.update(LEASE_KEY, value.clone(), revision);
        let updated = tokio::time::timeout(lease / 6, update).await;
        // Given up meanwhile (a failed takeover): whatever the key holds now is not this
        // renewal's business.
        if stop.get() {
            return;
        }
        match updated {
            Ok(Ok(next)) => {
                revision = next;
                clock.renewed(sent);
                pause = lease / 3;
            }
            Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // A deleted key reads as a delete marker: nobody holds the lease then.
                let current = bucket
                    .entry(LEASE_KEY)
                    .await
                    .map(|entry| entry.filter(|entry| entry.operation == kv::Operation::Put));
                if stop.get() {
                    return;
                }
                match current {
                    Ok(Some(entry)) if entry.value == value => revision = entry.revision,
                    Ok(Some(entry)) => {
                        let error = ReplicationError::Unavailable(format!(
                            "this node's lease expired and was taken by {}",
                            String::from_utf8_lossy(&entry.value)
                        ));
                        tracing::error!(%error, "cluster: this node stops serving");
                        deposed.set(true);
                        for sender in &events {
                            let _ = sender
                                .send(ControlEvent::Deposed {
                                    error: error.clone(),
                                })
                                .await;
                        }
                        return;
                    }
                    Ok(None) => {
                        // Expired and taken by nobody: the owner key's watch would have told
                        // of a takeover, so taking it again is safe.
                        let sent = std::time::Instant::now();
                        if let Ok(next) = bucket.create(LEASE_KEY, value.clone()).await {
                            revision = next;
                            clock.renewed(sent);
                            pause = lease / 3;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cluster: cannot read the lease"),
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "cluster: the lease was not renewed"),
            Err(_) => tracing::warn!("cluster: the lease renewal timed out"),
        }
    }
}

/// What the lease's renewal task needs.
struct Renewal {
    bucket: kv::Store,
    /// This process's lease value: the node id and a number of this process, so that a
    /// restarted node never mistakes its earlier run's lease for its own.
    value: bytes::Bytes,
    lease: Duration,
    clock: std::sync::Arc<super::Lease>,
    deposed: Rc<std::cell::Cell<bool>>,
    /// Set when this lease was given up.
    stop: Rc<std::cell::Cell<bool>>,
    events: Vec<mpsc::Sender<ControlEvent>>,
}

/// Why a snapshot was not kept.
#[derive(Debug)]
enum SnapshotFailure {
    /// Not (completely) stored: it is deleted.
    NotStored(String),
    /// Stored, its subject not purged: it stays, the partition's newest.
    NotPurged(String),
}

impl std::fmt::Display for SnapshotFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotFailure::NotStored(reason) => write!(f, "not stored: {reason}"),
            SnapshotFailure::NotPurged(reason) => write!(f, "stored, not purged: {reason}"),
        }
    }
}

/// Why one publish failed.
#[derive(Debug)]
enum PublishFailure {
    /// The subject's last sequence was not the one named: a newer owner wrote.
    Fenced,
    /// No server of the stream took the message: nothing was stored.
    NoResponders,
    /// No answer (timed out, or the connection broke): it may have been stored.
    NoAnswer(String),
    Other(String),
}

impl std::fmt::Display for PublishFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishFailure::Fenced => f.write_str("refused: the subject has a newer record"),
            PublishFailure::NoResponders => f.write_str("no server of the stream answered"),
            PublishFailure::NoAnswer(reason) => write!(f, "no answer: {reason}"),
            PublishFailure::Other(reason) => f.write_str(reason),
        }
    }
}

/// Publishes until a server of the stream answers, and waits for its acknowledgement; the new
/// message's sequence. "No responders" means no server took the message (the stream is electing
/// a leader, or its leader's server just went away), so sending it again cannot store it twice;
/// any other failure is final. The caller bounds the whole by `cluster.ack_timeout_ms`.
///
/// With `resend_after`, the message carries a `Nats-Msg-Id` of its own: an attempt not
/// answered within it (or whose connection broke) is sent again, and the stream's
/// deduplication stores it at most once, answering a resend of a stored message with that
/// message's sequence.
async fn publish_until_heard(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
    resend_after: Option<Duration>,
) -> Result<u64, PublishFailure> {
    // Shared by every attempt, not copied.
    let payload = bytes::Bytes::from(payload);
    let mut pause = Duration::from_millis(20);
    loop {
        let attempt = publish(js, subject.clone(), headers.clone(), payload.clone());
        let outcome = match resend_after {
            Some(wait) => match tokio::time::timeout(wait, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => Err(PublishFailure::NoAnswer("no answer in time".to_string())),
            },
            None => attempt.await,
        };
        match outcome {
            Err(PublishFailure::NoResponders) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(PublishFailure::NoAnswer(_)) if resend_after.is_some() => {}
            other => return other,
        }
    }
}

/// Publishes and waits for the stream's acknowledgement; the new message's sequence.
async fn publish(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<u64, PublishFailure> {
    let classify = |error: jetstream::context::PublishError| match error.kind() {
        jetstream::context::PublishErrorKind::WrongLastSequence => PublishFailure::Fenced,
        jetstream::context::PublishErrorKind::StreamNotFound => PublishFailure::NoResponders,
        jetstream::context::PublishErrorKind::TimedOut
        | jetstream::context::PublishErrorKind::BrokenPipe => {
            PublishFailure::NoAnswer(error.to_string())
        }
        _ => PublishFailure::Other(error.to_string()),
    };
    let ack = js
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(classify)?
        .await
        .map_err(classify)?;
    Ok(ack.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        assert!(version_below("2.9.10", FENCE_SAFE_VERSION));
        assert!(version_below("2.10.19", FENCE_SAFE_VERSION));
        assert!(!version_below("2.10.20", FENCE_SAFE_VERSION));
        assert!(!version_below("2.11.0-beta", FENCE_SAFE_VERSION));
        assert!(version_below("", FENCE_SAFE_VERSION));
    }
}
