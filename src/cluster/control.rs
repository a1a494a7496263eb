//! The control thread: the node's one NATS client, on a tokio runtime of its own, talking to the
//! cores through bounded channels only.
//!
//! At start ([`start`]) it connects and checks the cluster's settings, and returns: the cores
//! then listen, serving no partition yet. The node then holds its node key (`node.<id>` in the
//! lease bucket, whose entries expire; renewed every third of the lease): while it is fresh the
//! node may serve ([`super::Lease`]). Every twelfth of the lease it surveys the cluster: the
//! live nodes (their keys) and the assignment (`assignment` in the settings bucket); it
//! releases the partitions the assignment no longer gives it (their cores forget them) and
//! then says in its node key which generation it applied; it rebuilds the partitions the
//! assignment gives it once every other live node has applied that generation (no node serves
//! them any more), each after a takeover record on its subject (the fence). One node at a
//! time (the holder of the `rebalancer` key) writes the next assignment when nodes come or
//! go. It publishes the cores' appends, each with the partition's epoch and last sequence.
//! It stops once the server says every core has stopped (deleting its node key).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use async_nats::HeaderMap;
use futures_lite::StreamExt;
use serde::{Deserialize, Serialize};
use stead_storage::Batch;
use tokio::sync::mpsc;

use super::record;
use super::{Append, Assignment, ClusterError, ControlEvent, ReplicationError};
use crate::config::ClusterSettings;
use crate::id::ObjectId;

/// The KV bucket of the node keys and the rebalancer key (entries expire after the lease).
const LEASE_BUCKET: &str = "stead_lease";
/// A node's key in the lease bucket is this and its id.
const NODE_KEY_PREFIX: &str = "node.";
/// The key of the node that writes the assignment.
const REBALANCER_KEY: &str = "rebalancer";
/// The stream of every partition's log, and its subjects.
const STREAM: &str = "STEAD_LOG";
const SUBJECT_PREFIX: &str = "stead.log.";
/// The KV bucket of the cluster's settings and the assignment.
const BUCKET: &str = "stead_cluster";
/// The object store of the partitions' snapshots.
const SNAPSHOT_BUCKET: &str = "stead_snapshots";
/// Snapshots a rebuild reads at once (each is held in memory until its core has it).
const SNAPSHOT_READS: usize = 16;
/// The longest a snapshot may take to store or to read.
const SNAPSHOT_STORE_TIMEOUT: Duration = Duration::from_secs(120);
const SETTINGS_KEY: &str = "settings";
const ASSIGNMENT_KEY: &str = "assignment";
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
/// Room in a NATS message for an append's headers and batch count.
const APPEND_OVERHEAD_BYTES: usize = 4096;
/// Tries to append a partition's takeover record after its last record.
const FENCE_ATTEMPTS_MAX: u32 = 5;
/// Partitions fenced at once.
const FENCE_CONCURRENCY: usize = 256;
/// The shortest pause between rebuilds that failed.
const RECOVER_PAUSE_MIN: Duration = Duration::from_millis(250);
/// Batches a core's replay queue holds.
const REPLAY_QUEUE: usize = 1024;
/// How long one step waits for NATS to answer.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a start tries to open the cluster's buckets and stream while NATS is not ready.
const SETUP_RETRY: Duration = Duration::from_secs(30);

/// What a core receives from the control thread besides its answers: the partitions it gains
/// (rebuilt from the stream) and those it loses.
#[derive(Debug)]
pub enum ReplayItem {
    /// A batch of one of the core's objects, in log order.
    Batch(ObjectId, Batch),
    /// `partitions` are rebuilt from the stream: their objects leave memory and the core's
    /// store, and the batches that follow (up to `Recovered`) are their state. The core says
    /// on the sender whether its part (the store's commits) worked.
    Recover(Vec<u32>, tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Every batch of the rebuild was sent: the partitions serve.
    Recovered(Vec<u32>),
    /// The rebuild stopped: the partitions stay refused (another rebuild comes later).
    RecoverFailed(String),
    /// `partitions` belong to another node now (the error says which): the core stops serving
    /// them and forgets them, then answers.
    Release(Vec<u32>, ReplicationError, tokio::sync::oneshot::Sender<()>),
}

/// A core's ends of the channels to the control thread.
pub struct ClusterLink {
    /// The node's lease, shared by every core.
    pub lease: Arc<super::Lease>,
    /// The assignment as last read, and this node's id and address.
    pub view: Arc<super::ClusterView>,
    /// The most bytes of batches one append may carry.
    pub append_bytes_max: usize,
    pub appends: mpsc::Sender<Append>,
    pub events: mpsc::Receiver<ControlEvent>,
    pub replay: mpsc::Receiver<ReplayItem>,
}

/// A joined cluster (settings checked; no partition served yet): each core's link, and what
/// the cores share.
pub struct StartedCluster {
    pub links: Vec<ClusterLink>,
    pub view: Arc<super::ClusterView>,
    /// Waits, once every core has stopped, for the node key to be given up.
    pub shutdown: ClusterShutdown,
}

/// The end of a graceful shutdown: once every core has stopped (nothing is served any more),
/// the server tells the control thread, which deletes this process's node key so that the
/// rebalancer gives its partitions to the other nodes at once instead of when it expires.
pub struct ClusterShutdown {
    /// Tells the control thread that the cores have stopped.
    release: Arc<tokio::sync::Notify>,
    released: std::sync::mpsc::Receiver<()>,
    /// The longest wait: the deletion's own bound and a second more.
    wait_max: Duration,
}

impl ClusterShutdown {
    /// Waits until the node key was given up (or could not be: it then expires by itself).
    pub fn wait(self) {
        self.release.notify_one();
        let _ = self.released.recv_timeout(self.wait_max);
    }
}

/// Joins the cluster on a thread of its own; returns once the cluster's settings are checked.
/// The node then takes its node key and the partitions the assignment gives it, and rebuilds
/// them into the cores (`ClusterLink::replay`).
/// `never_own`: why this node may never own partitions (a class pinned to a jurisdiction it
/// does not have): it then only forwards.
pub fn start(
    settings: &ClusterSettings,
    (partitions, cores): (u32, usize),
    never_own: Option<String>,
) -> Result<StartedCluster, ClusterError> {
    // An append and a snapshot per partition at most, and room for each core.
    let (append_sender, append_receiver) = mpsc::channel(2 * partitions as usize + cores);
    let lease = Arc::new(super::Lease::new(Duration::from_millis(
        settings.lease_ms.max(1),
    )));
    let view = Arc::new(super::ClusterView::new(&settings.node_id));
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
    let release = Arc::new(tokio::sync::Notify::new());
    let shutdown = ClusterShutdown {
        release: release.clone(),
        released,
        // A purge in flight is waited for first (at most a lease), then the deletion.
        wait_max: Duration::from_millis(settings.lease_ms)
            + release_timeout(settings.lease_ms)
            + Duration::from_secs(1),
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
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let connected = match connect(&settings, partitions).await {
                    Ok(connected) => connected,
                    Err(error) => {
                        let _ = ready_sender.send(Err(error));
                        return;
                    }
                };
                let _ = ready_sender.send(Ok(connected.append_bytes_max));
                let control = Rc::new(Control {
                    append_ids: process_number(),
                    process: process_number(),
                    lease,
                    view: thread_view,
                    deposed: Rc::default(),
                    stopping: Rc::default(),
                    held: Rc::default(),
                    applied: Cell::new(0),
                    applying: tokio::sync::Mutex::new(()),
                    must_settle: Cell::new(false),
                    live: RefCell::default(),
                    last: Rc::new(RefCell::new(vec![0; partitions as usize])),
                    snapshot_names: Rc::default(),
                    snapshots_in_flight: RefCell::default(),
                    purges_in_flight: RefCell::default(),
                    may_own: never_own.is_none(),
                    renew_now: tokio::sync::Notify::new(),
                    rebuild_now: tokio::sync::Notify::new(),
                    core_turns: (0..cores).map(|_| tokio::sync::Mutex::new(())).collect(),
                    connected,
                    settings,
                    partitions,
                    cores,
                    events: event_senders,
                    replay: replay_senders,
                });
                if let Some(reason) = never_own {
                    tracing::warn!(
                        %reason,
                        "cluster: this node never owns partitions; it forwards to their owners"
                    );
                }
                control.run(append_receiver, release).await;
            });
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

/// What a node key says: the node, its process, where it listens, whether it may own
/// partitions, and the generation of the assignment whose releases it has done.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeValue {
    node: String,
    process: u64,
    address: Option<String>,
    may_own: bool,
    applied: u64,
}

/// The assignment key as read.
enum Stored {
    /// Never written (or deleted).
    None,
    /// The assignment, and the key's revision.
    Valid(Arc<Assignment>, u64),
    /// A value that is not an assignment of this cluster's partitions, at the revision: the
    /// rebalancer writes a new one over it.
    Damaged(u64),
}

impl Stored {
    fn valid(&self) -> Option<&Arc<Assignment>> {
        match self {
            Stored::Valid(assignment, _) => Some(assignment),
            Stored::None | Stored::Damaged(_) => None,
        }
    }
}

/// A partition the assignment gives this node.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// The generation it got the partition at (its epoch).
    since: u64,
    /// Whether its core serves it: rebuilt from the stream since, and not refused after.
    serving: bool,
    /// A refused partition is rebuilt no sooner than this (a quarter lease after the refusal:
    /// whatever refused it, NATS down or another writer, is given time to settle).
    not_before: Option<Instant>,
}

/// A connection to NATS, the cluster's settings checked.
struct Connected {
    js: jetstream::Context,
    /// The bucket of the settings and the assignment.
    bucket: kv::Store,
    /// The streams behind the two buckets, whose leaders answer `read_key`.
    bucket_log: stream::Stream,
    leases_log: stream::Stream,
    /// The bucket of the node keys and the rebalancer key.
    leases: kv::Store,
    log: stream::Stream,
    /// The object store of the partitions' snapshots.
    snapshots: object_store::ObjectStore,
    /// The most bytes of batches one append may carry: the server's `max_payload` less room
    /// for the headers and the count.
    append_bytes_max: usize,
}

struct Control {
    /// This process's part of its appends' message ids (random): a resent append is the
    /// same message, another process's never is.
    append_ids: u64,
    /// This process's number in its node key and the rebalancer key, so that a restarted
    /// node never mistakes its earlier run's keys for its own.
    process: u64,
    lease: Arc<super::Lease>,
    view: Arc<super::ClusterView>,
    /// Set once another process of this node id holds the node key: nothing is served again.
    deposed: Rc<Cell<bool>>,
    /// Set once the cores have stopped.
    stopping: Rc<Cell<bool>>,
    /// The partitions the assignment gives this node.
    held: Rc<RefCell<BTreeMap<u32, Held>>>,
    /// The generation of the assignment this node applied (released what it does not give
    /// this node): what the node key says.
    applied: Cell<u64>,
    /// One application of an assignment at a time.
    applying: tokio::sync::Mutex<()>,
    /// Set when the node key had expired and was made again: the lease counts again only
    /// once an assignment read since was applied.
    must_settle: Cell<bool>,
    /// The live nodes as last surveyed (their node keys).
    live: RefCell<HashMap<String, NodeValue>>,
    /// The last sequence of each partition's subject this node knows (its fence, its last
    /// acknowledged append).
    last: Rc<RefCell<Vec<u64>>>,
    /// Each partition's latest snapshot's object name, once known.
    snapshot_names: Rc<RefCell<HashMap<u32, String>>>,
    /// Partitions whose snapshot is being stored (and its subject purged): not rebuilt
    /// meanwhile, since the purge could remove messages the rebuild reads.
    snapshots_in_flight: RefCell<HashSet<u32>>,
    /// Partitions whose subject is being purged below a snapshot: a release waits for the
    /// purge to be answered before the node says it applied the assignment, so that the new
    /// owner never reads a subject the old one is still purging.
    purges_in_flight: RefCell<HashSet<u32>>,
    /// False for a node that may never own partitions (jurisdictions).
    may_own: bool,
    /// Wakes the node key's renewal at once (the applied generation changed).
    renew_now: tokio::sync::Notify,
    /// Wakes the rebuilds (partitions given to this node, or refused).
    rebuild_now: tokio::sync::Notify,
    /// One user of a core's replay channel at a time (a rebuild's items must not interleave
    /// with another's, or with a release).
    core_turns: Vec<tokio::sync::Mutex<()>>,
    connected: Connected,
    settings: ClusterSettings,
    partitions: u32,
    cores: usize,
    /// Each core's channel of answers.
    events: Vec<mpsc::Sender<ControlEvent>>,
    /// Each core's channel of rebuilds and releases.
    replay: Vec<mpsc::Sender<ReplayItem>>,
}

impl Control {
    /// Holds the node key, then surveys, rebuilds and publishes until the server says every
    /// core has stopped; then gives the node key (and the rebalancer key) up.
    async fn run(
        self: Rc<Self>,
        appends: mpsc::Receiver<Append>,
        release: Arc<tokio::sync::Notify>,
    ) {
        // Surveys from the start, so that the node forwards while it waits for its key.
        tokio::task::spawn_local(self.clone().survey());
        let revision = tokio::select! {
            revision = self.join() => revision,
            () = release.notified() => {
                self.stopping.set(true);
                return;
            }
        };
        tokio::task::spawn_local(self.clone().renew(revision));
        if self.may_own {
            tokio::task::spawn_local(self.clone().rebuild_loop());
        }
        // Until every core has stopped: their appends' channel closes, or the server says so
        // (a core's task may keep its end of the channel until the process exits).
        tokio::select! {
            () = self.clone().serve_appends(appends) => {}
            () = release.notified() => {}
        }
        self.stopping.set(true);
        self.give_up_keys().await;
    }

    /// The value of this node's key now.
    fn node_value(&self) -> bytes::Bytes {
        let value = NodeValue {
            node: self.settings.node_id.clone(),
            process: self.process,
            address: self.view.advertise(),
            may_own: self.may_own,
            applied: self.applied.get(),
        };
        bytes::Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
    }

    fn node_key(&self) -> String {
        format!("{NODE_KEY_PREFIX}{}", self.settings.node_id)
    }

    /// Waits until no process holds this node's key (a previous run's expires), then takes
    /// it; its revision. The node holds no partition then, so it has applied every
    /// assignment so far.
    async fn join(&self) -> u64 {
        // The node key names where this node listens: the server says once it is bound.
        let since = Instant::now();
        while self.view.advertise().is_none() && since.elapsed() < STEP_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lease = Duration::from_millis(self.settings.lease_ms.max(1));
        let mut said = false;
        loop {
            // NATS not answering yet (a stream electing its leader) is waited out.
            let stored = match self.read_assignment().await {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::info!(%error, "cluster: cannot read the assignment yet; waiting");
                    tokio::time::sleep(lease / 12).await;
                    continue;
                }
            };
            let generation = stored.valid().map_or(0, |assignment| assignment.generation);
            self.applied.set(self.applied.get().max(generation));
            let sent = Instant::now();
            let created = self
                .connected
                .leases
                .create(self.node_key(), self.node_value())
                .await;
            match created {
                Ok(revision) => {
                    self.lease.renewed(sent);
                    tracing::info!(node = %self.settings.node_id, "cluster: node key taken");
                    return revision;
                }
                Err(error) => {
                    if !said {
                        tracing::warn!(
                            %error,
                            "cluster: cannot take this node's key (held by an earlier run \
                             until it expires, or by another process with this node id); \
                             trying again every twelfth of the lease"
                        );
                        said = true;
                    }
                    tokio::time::sleep(lease / 12).await;
                }
            }
        }
    }

    /// The assignment key as it is now.
    async fn read_assignment(&self) -> Result<Stored, ClusterError> {
        let read = read_key(&self.connected.bucket_log, BUCKET, ASSIGNMENT_KEY).await?;
        let Some((value, revision)) = read else {
            return Ok(Stored::None);
        };
        Ok(match Assignment::parse(&value, self.partitions) {
            Some(assignment) => Stored::Valid(Arc::new(assignment), revision),
            None => {
                tracing::error!(
                    revision,
                    "cluster: the assignment key holds no assignment of this cluster's \
                     partitions; the rebalancer writes a new one"
                );
                Stored::Damaged(revision)
            }
        })
    }

    /// Reads the assignment and applies it: what it moved away is released. False when it
    /// could not be read (or is damaged).
    async fn settle(&self) -> bool {
        match self.read_assignment().await {
            Ok(Stored::Valid(assignment, _)) => {
                self.apply(&assignment).await;
                true
            }
            Ok(Stored::None) => true,
            Ok(Stored::Damaged(_)) => false,
            Err(error) => {
                tracing::warn!(%error, "cluster: cannot read the assignment");
                false
            }
        }
    }

    /// Renews the node key every third of the lease (at once when the applied generation
    /// changed), retrying a failed renewal every twelfth. A renewal refused for a stale
    /// revision is looked into: the key still this process's (a renewal that timed out but
    /// was applied) is kept; gone (expired), the current assignment is applied first (another
    /// node may have taken partitions meanwhile) and the key taken again; another process's,
    /// the node is deposed and serves nothing again.
    async fn renew(self: Rc<Self>, mut revision: u64) {
        let lease = Duration::from_millis(self.settings.lease_ms.max(1));
        let leases = self.connected.leases.clone();
        let key = self.node_key();
        let mut pause = lease / 3;
        loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.renew_now.notified() => {}
            }
            if self.deposed.get() || self.stopping.get() {
                return;
            }
            pause = lease / 12;
            let sent = Instant::now();
            let update = leases.update(&key, self.node_value(), revision);
            let updated = tokio::time::timeout(lease / 6, update).await;
            if self.stopping.get() {
                return;
            }
            match updated {
                Ok(Ok(next)) => {
                    revision = next;
                    if self.must_settle.get() {
                        if !self.settle().await {
                            continue;
                        }
                        self.must_settle.set(false);
                    }
                    self.lease.renewed(sent);
                    pause = lease / 3;
                }
                Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // A deleted or expired key reads as None: nobody holds it then.
                    let node_key = self.node_key();
                    let current =
                        read_key(&self.connected.leases_log, LEASE_BUCKET, &node_key).await;
                    if self.stopping.get() {
                        return;
                    }
                    match current {
                        Ok(Some((value, current_revision))) => {
                            let holder: Option<NodeValue> = serde_json::from_slice(&value).ok();
                            if holder.is_some_and(|holder| holder.process == self.process) {
                                revision = current_revision;
                                continue;
                            }
                            let error = ReplicationError::Unavailable(format!(
                                "this node's key expired and was taken by another process: {}",
                                String::from_utf8_lossy(&value)
                            ));
                            tracing::error!(%error, "cluster: this node stops serving");
                            self.deposed.set(true);
                            for sender in &self.events {
                                let _ = sender
                                    .send(ControlEvent::Deposed {
                                        error: error.clone(),
                                    })
                                    .await;
                            }
                            return;
                        }
                        Ok(None) => {
                            tracing::warn!("cluster: this node's key expired; joining again");
                            // The key is made first, then an assignment read after it is
                            // applied (what moved meanwhile released), and only then does the
                            // lease count again: a node that read the node keys before this
                            // one came back has written any assignment it acts on before this
                            // read.
                            // Set before the create: one whose answer is lost but which took
                            // effect is found ours at a later renewal, which settles first too.
                            self.must_settle.set(true);
                            let sent = Instant::now();
                            match leases.create(&key, self.node_value()).await {
                                Ok(next) => {
                                    revision = next;
                                    if self.settle().await {
                                        self.must_settle.set(false);
                                        self.lease.renewed(sent);
                                        pause = lease / 3;
                                    }
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "cluster: cannot take the node key")
                                }
                            }
                        }
                        Err(error) => tracing::warn!(%error, "cluster: cannot read the node key"),
                    }
                }
                Ok(Err(error)) => tracing::warn!(%error, "cluster: the node key was not renewed"),
                Err(_) => tracing::warn!("cluster: the node key's renewal timed out"),
            }
        }
    }

    /// Every twelfth of the lease: reads the live nodes and the assignment, applies it, and
    /// (on the rebalancer) writes the next one when nodes came or went. Runs until the
    /// thread ends.
    async fn survey(self: Rc<Self>) {
        let pause = Duration::from_millis(self.settings.lease_ms.max(12) / 12);
        loop {
            if let Err(error) = self.survey_once().await {
                tracing::debug!(%error, "cluster: a survey failed");
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn survey_once(&self) -> Result<(), ClusterError> {
        let current = self.read_assignment().await?;
        if let Some(assignment) = current.valid() {
            self.apply(assignment).await;
        }
        // Read after the assignment: a node that appears after this read applies an
        // assignment read after its key was made.
        self.refresh_live().await?;
        if self.stopping.get() || self.deposed.get() || !self.hold_rebalancer().await {
            return Ok(());
        }
        let may_own: Vec<String> = self
            .live
            .borrow()
            .values()
            .filter(|node| node.may_own)
            .map(|node| node.node.clone())
            .collect();
        let floor = self
            .live
            .borrow()
            .values()
            .map(|node| node.applied)
            .chain([self.applied.get()])
            // A value no assignment could have reached (a damaged key) is not a floor.
            .filter(|applied| *applied < u64::MAX / 2)
            .max()
            .unwrap_or(0);
        let next = Assignment::rebalance(
            current.valid().map(|assignment| assignment.as_ref()),
            (self.partitions, floor),
            &may_own,
        );
        let Some(next) = next else {
            return Ok(());
        };
        let value = bytes::Bytes::from(next.to_json());
        let bucket = &self.connected.bucket;
        match &current {
            Stored::Valid(_, revision) | Stored::Damaged(revision) => {
                step(
                    "write the assignment",
                    bucket.update(ASSIGNMENT_KEY, value, *revision),
                )
                .await?
            }
            Stored::None => {
                step("write the assignment", bucket.create(ASSIGNMENT_KEY, value)).await?
            }
        };
        let counts: Vec<String> = next
            .nodes
            .iter()
            .map(|node| format!("{node}: {}", next.owned_by(node).len()))
            .collect();
        tracing::info!(
            generation = next.generation,
            owners = %counts.join(", "),
            "cluster: assignment written"
        );
        self.apply(&Arc::new(next)).await;
        Ok(())
    }

    /// Reads the live nodes into `live` and the view's addresses.
    async fn refresh_live(&self) -> Result<(), ClusterError> {
        let live = self.read_nodes().await?;
        self.view.set_addresses(
            live.values()
                .filter_map(|node| Some((node.node.clone(), node.address.clone()?)))
                .collect(),
        );
        *self.live.borrow_mut() = live;
        Ok(())
    }

    /// The live nodes: every node key present (an expired one is gone).
    async fn read_nodes(&self) -> Result<HashMap<String, NodeValue>, ClusterError> {
        // The subjects that hold messages, from the stream's leader (a request or two),
        // where listing the bucket's keys would make a consumer at every survey.
        let prefix = format!("$KV.{LEASE_BUCKET}.");
        let filter = format!("{prefix}{NODE_KEY_PREFIX}>");
        let mut subjects = step(
            "list the nodes",
            self.connected.leases_log.info_with_subjects(filter),
        )
        .await?;
        let mut names = Vec::new();
        loop {
            match tokio::time::timeout(STEP_TIMEOUT, subjects.next()).await {
                Ok(Some(Ok((subject, _)))) => {
                    if let Some(name) = subject.strip_prefix(&prefix) {
                        names.push(name.to_string());
                    }
                }
                Ok(Some(Err(error))) => return Err(nats_error("list the nodes", error)),
                Ok(None) => break,
                Err(_) => return Err(nats_error("list the nodes", "no answer in time")),
            }
        }
        let mut live = HashMap::new();
        for name in names {
            let read = read_key(&self.connected.leases_log, LEASE_BUCKET, &name).await?;
            let Some((value, _)) = read else {
                continue;
            };
            if let Ok(node) = serde_json::from_slice::<NodeValue>(&value) {
                live.insert(node.node.clone(), node);
            }
        }
        Ok(live)
    }

    /// Whether this process holds the rebalancer key (taken when free, renewed at each
    /// survey; it expires with the lease when its holder dies).
    async fn hold_rebalancer(&self) -> bool {
        let leases = &self.connected.leases;
        let ours = serde_json::json!({ "node": self.settings.node_id, "process": self.process })
            .to_string();
        let read = read_key(&self.connected.leases_log, LEASE_BUCKET, REBALANCER_KEY).await;
        match read {
            Ok(Some((value, revision))) => {
                // Another process's key is taken over once its node's key is gone (it died):
                // the assignment's compare-and-set keeps two rebalancers from both writing.
                let holder = serde_json::from_slice::<serde_json::Value>(&value)
                    .ok()
                    .and_then(|holder| holder["node"].as_str().map(str::to_string));
                let holder_gone =
                    holder.is_some_and(|holder| !self.live.borrow().contains_key(&holder));
                if value != ours.as_bytes() && !holder_gone {
                    return false;
                }
                let renew = leases.update(REBALANCER_KEY, ours.into(), revision);
                matches!(tokio::time::timeout(STEP_TIMEOUT, renew).await, Ok(Ok(_)))
            }
            Ok(None) => {
                let take = leases.create(REBALANCER_KEY, ours.into());
                matches!(tokio::time::timeout(STEP_TIMEOUT, take).await, Ok(Ok(_)))
            }
            Err(_) => false,
        }
    }

    /// Applies `assignment`: the partitions it no longer gives this node (or gives it
    /// anew, at a later generation) are released by their cores first, then the node key says
    /// the generation is applied; the partitions it gives this node are rebuilt once every
    /// other node has applied it too (`rebuild_loop`).
    async fn apply(&self, assignment: &Arc<Assignment>) {
        let _turn = self.applying.lock().await;
        // An older read than one applied (a lagging server) changes nothing.
        if assignment.generation < self.applied.get() {
            return;
        }
        self.view.set_assignment(assignment.clone());
        let mine: BTreeMap<u32, u64> = if self.may_own {
            assignment
                .owned_by(&self.settings.node_id)
                .into_iter()
                .collect()
        } else {
            BTreeMap::new()
        };
        let released: Vec<u32> = self
            .held
            .borrow()
            .iter()
            .filter(|(partition, held)| mine.get(partition) != Some(&held.since))
            .map(|(partition, _)| *partition)
            .collect();
        for partition in &released {
            self.held.borrow_mut().remove(partition);
        }
        // A purge sent before the release is answered first (it is bounded by the lease's
        // freshness; no new one starts for a partition not held).
        while released
            .iter()
            .any(|partition| self.purges_in_flight.borrow().contains(partition))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !released.is_empty() {
            self.release(&released, assignment).await;
        }
        let mut gained = 0;
        {
            let mut held = self.held.borrow_mut();
            for (partition, since) in mine {
                held.entry(partition).or_insert_with(|| {
                    gained += 1;
                    Held {
                        since,
                        serving: false,
                        not_before: None,
                    }
                });
            }
        }
        if assignment.generation > self.applied.get() {
            self.applied.set(assignment.generation);
            self.renew_now.notify_one();
        }
        if gained > 0 || !released.is_empty() {
            tracing::info!(
                generation = assignment.generation,
                gained,
                released = released.len(),
                "cluster: assignment applied"
            );
            self.rebuild_now.notify_one();
        }
    }

    /// Tells the cores of `partitions` to stop serving and forget them; returns once they all
    /// have (or stopped).
    async fn release(&self, partitions: &[u32], assignment: &Assignment) {
        let mut per_core: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for partition in partitions {
            per_core
                .entry(*partition as usize % self.cores.max(1))
                .or_default()
                .push(*partition);
        }
        for (core, partitions) in per_core {
            let (Some(sender), Some(turn)) = (self.replay.get(core), self.core_turns.get(core))
            else {
                continue;
            };
            let _turn = turn.lock().await;
            // The first partition's new owner names them all in the error: they may differ.
            let (node, epoch) = assignment
                .owner(partitions[0])
                .map_or((String::new(), 0), |(node, since)| {
                    (node.to_string(), since)
                });
            let error = ReplicationError::Deposed { node, epoch };
            let (done_sender, done) = tokio::sync::oneshot::channel();
            if sender
                .send(ReplayItem::Release(partitions, error, done_sender))
                .await
                .is_ok()
            {
                let _ = done.await;
            }
        }
    }

    /// Rebuilds the partitions this node holds but does not serve (given to it, or refused
    /// since), once the lease is fresh and every other live node has applied the generation
    /// that gave them: waits for work, a twelfth of the lease at most, and longer after a
    /// failure. Never returns.
    async fn rebuild_loop(self: Rc<Self>) {
        let pause_min =
            Duration::from_millis(self.settings.lease_ms.max(12) / 12).max(RECOVER_PAUSE_MIN);
        let mut pause = pause_min;
        loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.rebuild_now.notified() => {}
            }
            if self.deposed.get() || self.stopping.get() || !self.lease.is_fresh() {
                continue;
            }
            let ready = self.ready_to_rebuild();
            if ready.is_empty() {
                pause = pause_min;
                continue;
            }
            match self.rebuild(ready).await {
                Ok(()) => pause = pause_min,
                Err(error) => {
                    tracing::warn!(%error, "cluster: a rebuild failed; trying again later");
                    pause = (pause * 2).min(pause_min * 16);
                }
            }
        }
    }

    /// Held partitions not served whose generation every other live node has applied (so
    /// none of them serves it any more), and whose snapshot is not being stored.
    fn ready_to_rebuild(&self) -> Vec<(u32, u64)> {
        let live = self.live.borrow();
        let in_flight = self.snapshots_in_flight.borrow();
        let now = Instant::now();
        let applied_by_all = |since: u64| {
            live.values()
                .filter(|node| node.node != self.settings.node_id && node.may_own)
                .all(|node| node.applied >= since)
        };
        self.held
            .borrow()
            .iter()
            .filter(|(partition, held)| {
                !held.serving
                    && held.not_before.is_none_or(|not_before| not_before <= now)
                    && !in_flight.contains(partition)
                    && applied_by_all(held.since)
            })
            .map(|(partition, held)| (*partition, held.since))
            .collect()
    }

    /// Rebuilds `partitions` (with their epochs): reads the assignment again (one that moved
    /// meanwhile is released instead), fences each (a takeover record after its last
    /// message, sent only while the lease is fresh), then hands each core its partitions'
    /// snapshots and messages up to the fence.
    async fn rebuild(&self, partitions: Vec<(u32, u64)>) -> Result<(), ClusterError> {
        match self.read_assignment().await? {
            Stored::Valid(assignment, _) => self.apply(&assignment).await,
            Stored::None => {}
            Stored::Damaged(_) => {
                return Err(nats_error(
                    "rebuild partitions",
                    "the assignment is damaged",
                ))
            }
        }
        // The nodes read again, after the assignment: each live one must have applied it.
        self.refresh_live().await?;
        let ready: HashSet<u32> = self
            .ready_to_rebuild()
            .into_iter()
            .map(|(partition, _)| partition)
            .collect();
        let partitions: Vec<(u32, u64)> = {
            let held = self.held.borrow();
            partitions
                .into_iter()
                .filter(|(partition, since)| {
                    ready.contains(partition)
                        && held
                            .get(partition)
                            .is_some_and(|held| held.since == *since && !held.serving)
                })
                .collect()
        };
        if partitions.is_empty() {
            return Ok(());
        }
        let ends = self.fence(&partitions).await?;
        self.refresh_snapshot_names().await?;
        let mut per_core: BTreeMap<usize, Vec<(u32, u64, u64)>> = BTreeMap::new();
        for (partition, since) in &partitions {
            if let Some(end) = ends.get(partition) {
                per_core
                    .entry(*partition as usize % self.cores.max(1))
                    .or_default()
                    .push((*partition, *since, *end));
            }
        }
        let rebuilds = per_core
            .into_iter()
            .map(|(core, partitions)| self.rebuild_on(core, partitions));
        let outcomes = futures_util::future::join_all(rebuilds).await;
        let mut failure = None;
        for outcome in outcomes {
            if let Err(error) = outcome {
                failure = Some(error);
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Appends a takeover record to each partition's subject; the record's sequence of each
    /// partition fenced (one that failed is left out, and rebuilt later).
    async fn fence(&self, partitions: &[(u32, u64)]) -> Result<HashMap<u32, u64>, ClusterError> {
        let mut ends = HashMap::new();
        let mut failure = None;
        for chunk in partitions.chunks(FENCE_CONCURRENCY) {
            // Spawned together, so that the client pipelines the requests.
            let fences: Vec<_> = chunk
                .iter()
                .map(|(partition, since)| {
                    let (js, log) = (self.connected.js.clone(), self.connected.log.clone());
                    let (partition, since) = (*partition, *since);
                    let node = self.settings.node_id.clone();
                    let (lease, deposed, held) =
                        (self.lease.clone(), self.deposed.clone(), self.held.clone());
                    // Only while this node surely holds the partition: a fence retried after
                    // the lease ran out could land after a new owner's.
                    let ours = move || {
                        lease.is_fresh()
                            && !deposed.get()
                            && held
                                .borrow()
                                .get(&partition)
                                .is_some_and(|held| held.since == since)
                    };
                    tokio::task::spawn_local(async move {
                        let fenced = fence_one(&js, &log, &node, since, partition, ours);
                        (partition, fenced.await)
                    })
                })
                .collect();
            // A rebuild abandoned leaves no fence running.
            let mut fences = AbortOnDrop(fences);
            for fence in &mut fences.0 {
                match fence.await {
                    Ok((partition, Ok(sequence))) => {
                        ends.insert(partition, sequence);
                        if let Some(slot) = self.last.borrow_mut().get_mut(partition as usize) {
                            *slot = sequence;
                        }
                    }
                    Ok((partition, Err(error))) => {
                        tracing::warn!(partition, %error, "cluster: a partition was not fenced");
                        failure = Some(error);
                    }
                    Err(error) => failure = Some(nats_error("fence a partition", error)),
                }
            }
        }
        match failure {
            Some(error) if ends.is_empty() => Err(error),
            _ => Ok(ends),
        }
    }

    /// Lists the snapshots: the latest of each partition is the one a rebuild reads; older
    /// ones that outlived their replacement (a stop before their deletion) are deleted.
    async fn refresh_snapshot_names(&self) -> Result<(), ClusterError> {
        let snapshots = &self.connected.snapshots;
        let mut listed = step("list the snapshots", snapshots.list()).await?;
        let mut latest: HashMap<u32, (u64, String)> = HashMap::new();
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
            let deleted = tokio::time::timeout(STEP_TIMEOUT, snapshots.delete(&name)).await;
            if !matches!(deleted, Ok(Ok(()))) {
                tracing::warn!(name, "cluster: an older snapshot stays");
            }
        }
        let mut names = self.snapshot_names.borrow_mut();
        for (partition, (_, name)) in latest {
            names.insert(partition, name);
        }
        Ok(())
    }

    /// Rebuilds `partitions` (partition, epoch, fence sequence) of core `core`: their
    /// snapshots, then their messages up to their fences; marks them served once the core
    /// has committed them.
    async fn rebuild_on(
        &self,
        core: usize,
        partitions: Vec<(u32, u64, u64)>,
    ) -> Result<(), ClusterError> {
        let (Some(sender), Some(turn)) = (self.replay.get(core), self.core_turns.get(core)) else {
            return Err(nats_error("rebuild partitions", "no such core"));
        };
        let _turn = turn.lock().await;
        let ids: Vec<u32> = partitions
            .iter()
            .map(|(partition, _, _)| *partition)
            .collect();
        let outcome = self.send_rebuild(sender, &partitions, &ids).await;
        let mut counts = (0, 0);
        let outcome = match outcome {
            Ok((done, sent)) => match done.await {
                Ok(Ok(())) => {
                    counts = sent;
                    Ok(())
                }
                Ok(Err(reason)) => Err(nats_error("rebuild partitions", reason)),
                Err(_) => Err(nats_error("rebuild partitions", "the core stopped")),
            },
            Err(error) => {
                let _ = sender
                    .send(ReplayItem::RecoverFailed(error.to_string()))
                    .await;
                Err(error)
            }
        };
        if outcome.is_ok() {
            let mut held = self.held.borrow_mut();
            for (partition, since, _) in &partitions {
                if let Some(held) = held.get_mut(partition).filter(|held| held.since == *since) {
                    held.serving = true;
                }
            }
            let (from_snapshots, from_log) = counts;
            tracing::info!(
                core,
                partitions = ids.len(),
                from_snapshots,
                from_log,
                "cluster: partitions rebuilt from snapshots and the log"
            );
        }
        outcome
    }

    /// Sends core `sender` the rebuild of `partitions`: `Recover`, the batches, `Recovered`;
    /// what the core answers on, and the batches sent from snapshots and from the log.
    async fn send_rebuild(
        &self,
        sender: &mpsc::Sender<ReplayItem>,
        partitions: &[(u32, u64, u64)],
        ids: &[u32],
    ) -> Result<
        (
            tokio::sync::oneshot::Receiver<Result<(), String>>,
            (u64, u64),
        ),
        ClusterError,
    > {
        let (mut from_snapshots, mut from_log) = (0u64, 0u64);
        let stopped = || nats_error("rebuild partitions", "the core stopped");
        let (done_sender, done) = tokio::sync::oneshot::channel();
        sender
            .send(ReplayItem::Recover(ids.to_vec(), done_sender))
            .await
            .map_err(|_| stopped())?;
        // What each partition's snapshot covers, and where its messages end.
        let mut covered: HashMap<u32, u64> = HashMap::new();
        let mut ends: HashMap<u32, u64> = HashMap::new();
        let mut to_read = Vec::new();
        for (partition, _, end) in partitions {
            ends.insert(*partition, *end);
            let name = self.snapshot_names.borrow().get(partition).cloned();
            let covers = name
                .as_deref()
                .and_then(snapshot_name)
                .map_or(0, |(_, covers)| covers);
            covered.insert(*partition, covers);
            if let Some(name) = name {
                to_read.push((name, covers));
            }
        }
        for chunk in to_read.chunks(SNAPSHOT_READS) {
            // Read together (the client pipelines them), handed to the core in turn.
            let reads: Vec<_> = chunk
                .iter()
                .map(|(name, covers)| {
                    let (snapshots, name) = (self.connected.snapshots.clone(), name.clone());
                    tokio::task::spawn_local(read_snapshot(snapshots, name, *covers))
                })
                .collect();
            let mut reads = AbortOnDrop(reads);
            for read in &mut reads.0 {
                let decoded = read
                    .await
                    .map_err(|error| nats_error("read a snapshot", error))??;
                for (id, batch) in decoded {
                    sender
                        .send(ReplayItem::Batch(id, batch))
                        .await
                        .map_err(|_| stopped())?;
                    from_snapshots += 1;
                }
            }
        }
        // One partition: its subject alone; several: every subject, the others skipped
        // (a consumer of this nats-server takes one filter).
        let filter_subject = match ids {
            [one] => subject(*one),
            _ => format!("{SUBJECT_PREFIX}*"),
        };
        let start_sequence = covered.values().min().copied().unwrap_or(0) + 1;
        let end = ends.values().max().copied().unwrap_or(0);
        let consumer = step(
            "open the log",
            self.connected
                .log
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject,
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence },
                    ..Default::default()
                }),
        )
        .await?;
        let mut messages = step("read the log", consumer.messages()).await?;
        loop {
            let message = match tokio::time::timeout(STEP_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => return Err(nats_error("read the log", error)),
                Ok(None) | Err(_) => {
                    return Err(nats_error("read the log", "it ended before the fence"))
                }
            };
            let sequence = message
                .info()
                .map_err(|error| nats_error("read a log message's sequence", error))?
                .stream_sequence;
            let partition = message
                .subject
                .strip_prefix(SUBJECT_PREFIX)
                .and_then(|partition| partition.parse::<u32>().ok());
            let wanted = partition.is_some_and(|partition| {
                covered
                    .get(&partition)
                    .is_some_and(|covers| sequence > *covers)
                    && ends.get(&partition).is_some_and(|end| sequence <= *end)
            });
            if wanted {
                for (id, batch) in message_batches(&message, sequence)? {
                    sender
                        .send(ReplayItem::Batch(id, batch))
                        .await
                        .map_err(|_| stopped())?;
                    from_log += 1;
                }
            }
            if sequence >= end {
                break;
            }
        }
        sender
            .send(ReplayItem::Recovered(ids.to_vec()))
            .await
            .map_err(|_| stopped())?;
        Ok((done, (from_snapshots, from_log)))
    }

    /// Gives the node key and the rebalancer key up after every core has stopped: deletes
    /// each if it still holds this process's value (never one another process took since).
    async fn give_up_keys(&self) {
        // A purge sent before the stop is answered first (no new one starts once stopping,
        // and each is bounded by the lease's freshness): the partitions' next owners must
        // never read a subject still being purged.
        let lease = Duration::from_millis(self.settings.lease_ms.max(1));
        let since = Instant::now();
        while !self.purges_in_flight.borrow().is_empty() && since.elapsed() < lease {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let leases = self.connected.leases.clone();
        let process = self.process;
        let node_key = self.node_key();
        let give_up = async move {
            for key in [node_key.as_str(), REBALANCER_KEY] {
                let entry = leases.entry(key).await;
                let Ok(Some(entry)) = entry else {
                    continue;
                };
                let ours = entry.operation == kv::Operation::Put
                    && serde_json::from_slice::<serde_json::Value>(&entry.value)
                        .is_ok_and(|value| value["process"].as_u64() == Some(process));
                if ours {
                    if let Err(error) = leases
                        .delete_expect_revision(key, Some(entry.revision))
                        .await
                    {
                        tracing::warn!(key, %error, "cluster: a key was not given up");
                    }
                }
            }
        };
        match tokio::time::timeout(release_timeout(self.settings.lease_ms), give_up).await {
            Ok(()) => tracing::info!("cluster: node key given up"),
            Err(_) => tracing::warn!("cluster: giving the node key up timed out; it expires"),
        }
    }

    /// Whether this node holds `partition` and its core serves it.
    fn serves(&self, partition: u32) -> bool {
        self.held
            .borrow()
            .get(&partition)
            .is_some_and(|held| held.serving)
    }

    /// An append of `partition` (epoch `since`) was refused: its core refuses the partition
    /// until it is rebuilt, which the rebuilds do if the node still holds it at that epoch.
    fn refused(&self, partition: u32, since: u64) {
        if let Some(held) = self
            .held
            .borrow_mut()
            .get_mut(&partition)
            .filter(|held| held.since == since)
        {
            held.serving = false;
            held.not_before =
                Some(Instant::now() + Duration::from_millis(self.settings.lease_ms / 4));
        }
    }

    /// Keeps a partition's snapshot (the object `p<partition>.<sequence>` of the snapshot
    /// bucket), purges the partition's subject below `sequence` (the message itself stays:
    /// the fence names the subject's last sequence), and deletes the partition's previous
    /// snapshot (see `store_and_purge` for how the purge keeps within the lease); a snapshot
    /// never replaces a newer one (each has a name of its own, and a start takes the highest).
    async fn keep_snapshot(self: Rc<Self>, (append, sequence): (Append, u64)) {
        let (log, snapshots) = (&self.connected.log, &self.connected.snapshots);
        let names = &self.snapshot_names;
        let partition = append.partition;
        let name = format!("p{partition}.{sequence:020}");
        // One snapshot of a partition at a time (one of before a release may still run).
        if !self.snapshots_in_flight.borrow_mut().insert(partition) {
            if let Some(sender) = self.events.get(append.core) {
                let done = ControlEvent::SnapshotDone {
                    partition,
                    sequence,
                    kept: false,
                };
                let _ = sender.send(done).await;
            }
            return;
        }
        let kept = self
            .store_and_purge(
                log,
                snapshots,
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
                .send(ControlEvent::SnapshotDone {
                    partition,
                    sequence,
                    kept,
                })
                .await;
        }
    }

    /// Stores snapshot `name` of `partition` (as of `sequence`), then purges the partition's
    /// subject below `sequence`. Storing may take as long as `SNAPSHOT_STORE_TIMEOUT`: a
    /// snapshot stored late is still the state as of its sequence. The purge is what a
    /// successor must never miss: it is sent only while the lease stays fresh for at least a
    /// quarter of it more, and waited for no longer than it stays fresh, which leaves the
    /// quarter-lease margin between the end of freshness and the key's expiry to it; and a
    /// release of the partition waits for it (`purges_in_flight`) before the node says it
    /// applied the assignment that moved it.
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
        if !self.serves(partition) {
            return Err(SnapshotFailure::NotStored(
                "the partition is not served here (refused, or released)".to_string(),
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
        if fresh_for < quarter || self.deposed.get() || self.stopping.get() {
            return Err(SnapshotFailure::NotPurged(
                "the lease is not fresh for long enough".to_string(),
            ));
        }
        if !self.serves(partition) {
            return Err(SnapshotFailure::NotPurged(
                "the partition was refused or released meanwhile".to_string(),
            ));
        }
        let purge = log.purge().filter(subject(partition)).sequence(sequence);
        self.purges_in_flight.borrow_mut().insert(partition);
        let purged =
            tokio::time::timeout(fresh_for, std::future::IntoFuture::into_future(purge)).await;
        self.purges_in_flight.borrow_mut().remove(&partition);
        match purged {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(SnapshotFailure::NotPurged(error.to_string())),
            Err(_) => Err(SnapshotFailure::NotPurged(
                "no answer while the lease was fresh".to_string(),
            )),
        }
    }

    /// Publishes the cores' appends until every core has stopped.
    async fn serve_appends(self: Rc<Self>, mut appends: mpsc::Receiver<Append>) {
        let timeout = Duration::from_millis(self.settings.ack_timeout_ms.max(1));
        while let Some(append) = appends.recv().await {
            if let Some(sequence) = append.snapshot_of {
                tokio::task::spawn_local(self.clone().keep_snapshot((append, sequence)));
                continue;
            }
            let control = self.clone();
            let (js, last) = (self.connected.js.clone(), self.last.clone());
            let partition = append.partition;
            let held = self.held.borrow().get(&partition).copied();
            let Some(Held { since: epoch, .. }) = held else {
                // Released meanwhile: its core refuses it already.
                if let Some(sender) = self.events.get(append.core) {
                    let error = ReplicationError::NotServing(format!(
                        "partition {partition} is no longer this node's"
                    ));
                    let upto = append.upto;
                    let failed = ControlEvent::Failed {
                        partition,
                        upto,
                        error,
                    };
                    let _ = sender.send(failed).await;
                }
                continue;
            };
            tokio::task::spawn_local(async move {
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
                        upto: append.upto,
                        error: ReplicationError::Fenced { partition },
                    },
                    Ok(Err(other)) => ControlEvent::Failed {
                        partition,
                        upto: append.upto,
                        error: ReplicationError::Unavailable(other.to_string()),
                    },
                    Err(_) => ControlEvent::Failed {
                        partition,
                        upto: append.upto,
                        error: ReplicationError::Unavailable(format!(
                            "no acknowledgement within cluster.ack_timeout_ms ({} ms)",
                            timeout.as_millis()
                        )),
                    },
                };
                // Refused: rebuilt from the stream once it can be (if the assignment still
                // gives it to this node).
                if let ControlEvent::Failed { .. } = &event {
                    control.refused(partition, epoch);
                }
                if let Some(sender) = control.events.get(append.core) {
                    let _ = sender.send(event).await;
                }
            });
        }
    }
}

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

/// Connects to NATS and checks the cluster's settings (creating them, the stream and the
/// buckets for the first node).
async fn connect(settings: &ClusterSettings, partitions: u32) -> Result<Connected, ClusterError> {
    let servers = settings
        .nats
        .iter()
        .map(|url| url.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| nats_error("read the NATS addresses", error))?;
    let node = &settings.node_id;
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
            .ping_interval(Duration::from_millis(settings.lease_ms / 4))
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
    // NATS servers that have just started (a cluster still placing its streams: "no suitable
    // peers for placement", a step timing out while a leader is elected) are given a while;
    // a cluster with other settings is refused at once.
    let since = Instant::now();
    let (bucket, log, snapshots, leases, (bucket_log, leases_log)) = loop {
        match open_cluster(&js, settings, partitions).await {
            Ok(opened) => break opened,
            Err(error @ ClusterError::Nats { .. }) if since.elapsed() < SETUP_RETRY => {
                tracing::info!(%error, "cluster: NATS is not ready; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error),
        }
    };
    Ok(Connected {
        js,
        bucket,
        bucket_log,
        leases_log,
        leases,
        log,
        snapshots,
        append_bytes_max,
    })
}

/// The cluster's buckets and stream, made by the first node; the settings checked.
async fn open_cluster(
    js: &jetstream::Context,
    settings: &ClusterSettings,
    partitions: u32,
) -> Result<Opened, ClusterError> {
    let replicas = settings.replicas;
    let bucket = key_value(js, (BUCKET, replicas), Duration::ZERO).await?;
    let ours = format!(
        "{{\"partitions\":{},\"replicas\":{replicas},\"lease_ms\":{},\"ownership\":\"assignment\"}}",
        partitions, settings.lease_ms
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
    let lease = Duration::from_millis(settings.lease_ms.max(1));
    let leases = key_value(js, (LEASE_BUCKET, replicas), lease).await?;
    let bucket_log = step(
        "open the settings bucket's stream",
        js.get_stream(format!("KV_{BUCKET}")),
    )
    .await?;
    let leases_log = step(
        "open the lease bucket's stream",
        js.get_stream(format!("KV_{LEASE_BUCKET}")),
    )
    .await?;
    Ok((bucket, log, snapshots, leases, (bucket_log, leases_log)))
}

/// The KV bucket `name` (one value a key), made with `replicas` copies and entries expiring
/// after `max_age` (zero: never) when it does not exist yet.
async fn key_value(
    js: &jetstream::Context,
    (name, replicas): (&str, usize),
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    if let Ok(bucket) = js.get_key_value(name).await {
        return Ok(bucket);
    }
    let config = kv::Config {
        bucket: name.to_string(),
        history: 1,
        max_age,
        num_replicas: replicas,
        ..Default::default()
    };
    step("create a KV bucket", js.create_key_value(config)).await
}

/// What `open_cluster` opens: the settings bucket, the log, the snapshots, the lease bucket,
/// and the two buckets' streams.
type Opened = (
    kv::Store,
    stream::Stream,
    object_store::ObjectStore,
    kv::Store,
    (stream::Stream, stream::Stream),
);

/// The value of `key` in `bucket` (backed by `stream`) and its revision, read from the
/// stream's leader; None when the key is absent, deleted or expired. A KV read is a direct
/// get, which any replica may answer, a lagging one too: the hand-over's reads must see every
/// write made before them.
async fn read_key(
    stream: &stream::Stream,
    bucket: &str,
    key: &str,
) -> Result<Option<(bytes::Bytes, u64)>, ClusterError> {
    let subject = format!("$KV.{bucket}.{key}");
    let read = tokio::time::timeout(
        STEP_TIMEOUT,
        stream.get_last_raw_message_by_subject(&subject),
    )
    .await
    .map_err(|_| nats_error("read a key", format!("{key}: no answer in time")))?;
    let message = match read {
        Ok(message) => message,
        Err(error)
            if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            return Ok(None)
        }
        Err(error) => return Err(nats_error("read a key", format!("{key}: {error}"))),
    };
    // A delete or a purge leaves a marker with this header; a put has none (or PUT).
    let deleted = message
        .headers
        .get("KV-Operation")
        .is_some_and(|operation| operation.as_str() != "PUT");
    Ok((!deleted).then_some((message.payload, message.sequence)))
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
