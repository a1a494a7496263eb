//! The cluster: partitions owned across nodes, every write acknowledged by a NATS JetStream
//! quorum as well as by the local disk, a fence against an earlier owner, partitions rebuilt
//! from the stream by the node that gains them, and requests forwarded to each partition's
//! owner by every other node.
//!
//! With `stead serve --cluster nats://… --node-id N`, a node checks the cluster's settings
//! (partition count, replicas, lease) in the KV bucket `stead_cluster`, listens, and holds its
//! node key (`node.<N>` in the bucket `stead_lease`, whose entries expire: [`Lease`]). The
//! [`Assignment`] (one value of `stead_cluster`, written by compare-and-set by the node
//! holding the rebalancer key) names each partition's owner and epoch. A node releases the
//! partitions the assignment moves away before it says it applied it, and takes a partition
//! only once every other live node applied the assignment that gave it: a takeover record on
//! the partition's subject `stead.log.<partition>` of the stream `STEAD_LOG` (the fence), then
//! its snapshot and messages. Each commit's batch goes to its partition's subject with
//! `Nats-Expected-Last-Subject-Sequence`, and an event's answer waits for the acknowledgement
//! as well as for the local fdatasync. Requests for another node's partitions are forwarded
//! there ([`ClusterView`]).
//!
//! Layout: `control` (the control thread: NATS on a tokio runtime of its own, never on a
//! serving core), `assignment` (the map and the rebalancer's rule), `replica` (a core's side:
//! batches grouped per partition, tickets the output gate waits on), `record` (the bytes of an
//! append).

mod assignment;
mod control;
mod record;
mod replica;

pub use assignment::Assignment;
pub use control::{start, ClusterLink, ClusterShutdown, ReplayItem, StartedCluster};
pub use record::DecodeError;
pub use replica::{Replication, ReplicationCounts};

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Until when this node may serve: its lease's last renewal (as sent) plus the lease, less a
/// quarter of it for clock drift. Written by the control thread, read by every core.
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    /// Milliseconds after `base`; 0 before the lease was first taken.
    valid_until_ms: AtomicU64,
    lease: Duration,
}

impl Lease {
    pub fn new(lease: Duration) -> Lease {
        Lease {
            base: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
            lease,
        }
    }

    /// The lease was taken or renewed by a request sent at `sent`.
    pub fn renewed(&self, sent: Instant) {
        let margin = self.lease / 4;
        let until = sent.saturating_duration_since(self.base) + self.lease - margin;
        self.valid_until_ms
            .fetch_max(until.as_millis() as u64, Ordering::SeqCst);
    }

    /// Whether the node may serve now.
    pub fn is_fresh(&self) -> bool {
        !self.fresh_for().is_zero()
    }

    /// How much longer the node may serve: zero once the lease is not fresh.
    pub fn fresh_for(&self) -> std::time::Duration {
        let now = self.base.elapsed().as_millis() as u64;
        let until = self.valid_until_ms.load(Ordering::SeqCst);
        std::time::Duration::from_millis(until.saturating_sub(now))
    }
}

/// The owner of a partition as this node last read it from the assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    /// Where the owner listens (`HOST:PORT`), if it said (in its node key).
    pub address: Option<String>,
    /// The generation of the assignment at which it got the partition.
    pub epoch: u64,
}

/// What every core knows of the cluster beyond its own partitions: this node's id and
/// address, the assignment as last read and where each live node listens. Written by the
/// control thread (the address by the server once it is bound), read by the cores to forward
/// requests to a partition's owner.
#[derive(Debug)]
pub struct ClusterView {
    node: String,
    assignment: RwLock<Option<Arc<Assignment>>>,
    /// Where each live node listens, from the node keys.
    addresses: RwLock<HashMap<String, String>>,
    advertise: RwLock<Option<String>>,
    /// Partitions the assignment gives this node.
    assigned: AtomicUsize,
    /// Partitions this node's cores serve (rebuilt from the stream, not refused).
    serving: AtomicUsize,
}

impl ClusterView {
    pub fn new(node: &str) -> ClusterView {
        ClusterView {
            node: node.to_string(),
            assignment: RwLock::new(None),
            addresses: RwLock::new(HashMap::new()),
            advertise: RwLock::new(None),
            assigned: AtomicUsize::new(0),
            serving: AtomicUsize::new(0),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The owner of `partition` as last read, if any node owns it yet.
    pub fn owner_of(&self, partition: u32) -> Option<Owner> {
        self.owner_unless(partition, None)
    }

    /// The owner of `partition`, unless it is `except` (then None, without copying anything:
    /// every object request asks this).
    fn owner_unless(&self, partition: u32, except: Option<&str>) -> Option<Owner> {
        let assignment = self
            .assignment
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (node, epoch) = assignment.as_ref()?.owner(partition)?;
        if except == Some(node) {
            return None;
        }
        let address = self
            .addresses
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(node)
            .cloned();
        Some(Owner {
            node: node.to_string(),
            address,
            epoch,
        })
    }

    /// The owner of `partition`, when it is another node: a request for one of its objects
    /// goes there. None: this node's cores decide (they serve, or answer 503 while taking
    /// the partition over or when no node owns it yet).
    pub fn owner_elsewhere(&self, partition: u32) -> Option<Owner> {
        self.owner_unless(partition, Some(&self.node))
    }

    /// Whether `node` is a node of the cluster: live (it gave an address) or an owner in the
    /// assignment.
    pub fn knows(&self, node: &str) -> bool {
        let live = self
            .addresses
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains_key(node);
        live || self
            .assignment()
            .is_some_and(|assignment| assignment.nodes.iter().any(|known| known == node))
    }

    /// The assignment as last read.
    pub fn assignment(&self) -> Option<Arc<Assignment>> {
        self.assignment
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records the assignment read (an older generation than the one known is ignored) and
    /// how many partitions it gives this node.
    pub(crate) fn set_assignment(&self, assignment: Arc<Assignment>) {
        let mut current = self
            .assignment
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current
            .as_ref()
            .is_none_or(|known| known.generation <= assignment.generation)
        {
            self.assigned
                .store(assignment.owned_by(&self.node).len(), Ordering::SeqCst);
            *current = Some(assignment);
        }
    }

    /// Where the live nodes listen, as their node keys say.
    pub(crate) fn set_addresses(&self, addresses: HashMap<String, String>) {
        *self
            .addresses
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = addresses;
    }

    /// A core serves one more partition (`true`) or one fewer.
    pub fn count_serving(&self, serving: bool) {
        if serving {
            self.serving.fetch_add(1, Ordering::SeqCst);
        } else {
            self.serving.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Why this node is not (yet) serving everything the assignment gives it, if it is not:
    /// no partition given, or some still being taken over.
    pub fn ownership_refusal(&self) -> Option<String> {
        let assigned = self.assigned.load(Ordering::SeqCst);
        let serving = self.serving.load(Ordering::SeqCst);
        if assigned == 0 {
            let owners = match self.assignment() {
                Some(assignment) => format!(
                    "the partitions are owned by {}",
                    assignment
                        .nodes
                        .iter()
                        .map(|node| format!("{node:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "no node owns the partitions yet".to_string(),
            };
            return Some(format!("this node owns no partition: {owners}"));
        }
        (serving < assigned).then(|| {
            format!(
                "this node is taking {} of its {assigned} partitions over",
                assigned - serving
            )
        })
    }

    /// Where the other nodes reach this one, once the server knows (it is bound).
    pub fn advertise(&self) -> Option<String> {
        self.advertise
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set_advertise(&self, address: String) {
        *self
            .advertise
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(address);
    }
}

/// One append: the batches of one partition of one core since its previous append.
#[derive(Debug)]
pub struct Append {
    pub core: usize,
    pub partition: u32,
    /// The last ticket it carries.
    pub upto: u64,
    pub payload: Vec<u8>,
    /// `Some(sequence)`: not an append but the partition's whole state as of its subject's
    /// message `sequence` (the payload holds every object's keys and alarm as batches), to keep as the
    /// partition's snapshot; the subject is then purged below that message.
    pub snapshot_of: Option<u64>,
}

/// What the control thread tells a core.
#[derive(Debug)]
pub enum ControlEvent {
    /// The partition's appends up to ticket `upto` are acknowledged by a quorum.
    Acked {
        partition: u32,
        upto: u64,
        /// The stream sequence of the append that carried ticket `upto`.
        sequence: u64,
    },
    /// The partition's snapshot as of message `sequence` was kept (and its subject purged),
    /// or not.
    SnapshotDone {
        partition: u32,
        sequence: u64,
        kept: bool,
    },
    /// The partition's append that carried tickets up to `upto` failed: it is refused from
    /// now on.
    Failed {
        partition: u32,
        upto: u64,
        error: ReplicationError,
    },
    /// Another process of this node id holds the node key: every partition is refused.
    Deposed { error: ReplicationError },
}

/// Why a write was not replicated; every one answers 503 (retryable, perhaps on another node).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The stream refused the append: a newer owner has written to the partition.
    Fenced { partition: u32 },
    /// The assignment gave the partition to node `node` (at generation `epoch`).
    Deposed { node: String, epoch: u64 },
    /// No acknowledgement from a quorum (NATS unreachable, timed out, or stopped).
    Unavailable(String),
    /// This node does not serve the partitions (yet): a standby, one taking over, or one whose
    /// takeover failed.
    NotServing(String),
    /// One batch is larger than an append may be (the NATS servers' `max_payload`).
    TooLarge {
        bytes: usize,
        append_bytes_max: usize,
    },
}

impl fmt::Display for ReplicationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicationError::Fenced { partition } => write!(
                f,
                "partition {partition} was written by a newer owner: this node no longer serves it"
            ),
            ReplicationError::Deposed { node, epoch } => write!(
                f,
                "the partition is node {node:?}'s since generation {epoch} of the assignment: \
                 this node no longer serves it"
            ),
            ReplicationError::Unavailable(reason) => {
                write!(f, "the write was not replicated: {reason}")
            }
            ReplicationError::NotServing(reason) => write!(f, "{reason}"),
            ReplicationError::TooLarge {
                bytes,
                append_bytes_max,
            } => write!(
                f,
                "a batch of {bytes} bytes is larger than the cluster's messages may be \
                 ({append_bytes_max} bytes, from the NATS servers' max_payload)"
            ),
        }
    }
}

impl std::error::Error for ReplicationError {}

/// Why the cluster could not be joined; `serve` stops with it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// NATS could not be reached, or JetStream refused a request.
    Nats { step: &'static str, reason: String },
    /// The cluster was created with other settings than this node's.
    Settings { cluster: String, node: String },
    /// The stream holds an append this version cannot read.
    Damaged { sequence: u64, reason: String },
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::Nats { step, reason } => write!(f, "cluster: {step}: {reason}"),
            ClusterError::Settings { cluster, node } => write!(
                f,
                "cluster: the cluster was created with {cluster}, this node has {node}; a node \
                 joins only with the cluster's settings"
            ),
            ClusterError::Damaged { sequence, reason } => write!(
                f,
                "cluster: the log's message {sequence} cannot be read ({reason}); refusing to \
                 rebuild from it"
            ),
        }
    }
}

impl std::error::Error for ClusterError {}
