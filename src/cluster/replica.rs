//! One core's side of replication: its objects' batches, grouped by partition, handed to the
//! control thread as appends, and the tickets an event's output gate waits on.
//!
//! Each partition has at most one append in flight (the fence names the previous sequence, so
//! appends to one subject go one at a time); the batches committed meanwhile wait in the
//! partition's buffer and leave together in the next append. A batch's ticket is its number in
//! the partition; it is replicated once the partition's acknowledged number reaches it.
//! A partition whose append was refused (fenced by a newer owner) or failed (no quorum within
//! `cluster.ack_timeout_ms`) is refused from then on: its objects' state in memory holds writes
//! that may not be in the stream, so this node answers 503 for them, until the control thread
//! has rebuilt it from the stream (`Replication::recovered`): a failed one once the lease is
//! fresh again, a fenced one if the assignment still gives it to this node. A core serves
//! only the partitions rebuilt since the assignment gave them to the node (`served`); one the
//! assignment gives to another node is released (`Replication::release`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use stead_storage::{Batch, Limits, Snapshot, Store};
use tokio::sync::mpsc;

use super::record;
use super::{Append, ClusterView, ControlEvent, Lease, ReplicationError};
use crate::id::ObjectId;
use crate::wake::Broadcast;
use std::sync::Arc;

/// What `/metrics` shows of one core's replication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicationCounts {
    /// Partitions of this core the node serves now: it holds a fresh lease, is not deposed,
    /// and has not refused them.
    pub partitions_served: u64,
    /// Appends sent to the stream and not answered yet.
    pub appends_in_flight: u64,
    /// Batches committed here and not yet acknowledged by the stream (the lag, in batches).
    pub batches_unacknowledged: u64,
    /// Microseconds since the oldest append in flight was sent (the lag, in time); 0 when
    /// none is.
    pub oldest_append_micros: u64,
    /// Partitions written since the start that answer 503.
    pub partitions_refused: u64,
    /// Appends the stream refused because another writer had appended first.
    pub fence_refusals_total: u64,
    /// Snapshots of this core's partitions kept in the snapshot bucket.
    pub snapshots_total: u64,
    /// Another node took over (or the owner key's watch was lost).
    pub deposed: bool,
}

/// What one partition has sent and what is waiting.
struct PartitionState {
    /// Tickets given out so far; the last batch's ticket.
    issued: u64,
    /// Tickets the stream has acknowledged.
    acked: u64,
    /// The last ticket of the append in flight (0: none in flight).
    in_flight_upto: u64,
    /// When the append in flight was handed to the control thread.
    in_flight_since: Option<Instant>,
    /// Batches not sent yet, encoded, oldest first.
    pending: std::collections::VecDeque<Vec<u8>>,
    /// Set when the append in flight is answered.
    in_flight_done: Rc<Broadcast>,
    /// Set when the append that will carry the buffer is answered.
    buffer_done: Rc<Broadcast>,
    /// Tickets up to this one were given out before the partition was rebuilt from the
    /// stream: they stay refused, with `refused`'s error.
    refused_upto: u64,
    refused: Option<ReplicationError>,
    /// Why the partition is refused, once it is.
    failed: Option<ReplicationError>,
    /// Batches acknowledged since the partition's last snapshot was taken.
    acked_since_snapshot: u64,
    /// The stream sequence of the partition's last acknowledged append.
    acked_sequence: u64,
    /// Where the partition's next snapshot stands.
    snapshot: Snapshotting,
}

/// A partition's snapshot, from the moment its state is taken to the moment it is kept.
#[derive(Default)]
enum Snapshotting {
    #[default]
    Idle,
    /// The state as of ticket `ticket` was taken; the appends are cut after that ticket, and
    /// once it is acknowledged the snapshot is sent with that append's sequence.
    Cut {
        ticket: u64,
        snapshot: Box<Snapshot>,
    },
    /// Sent to the control thread (the state as of the stream's message `sequence`), not
    /// answered yet.
    Sending { sequence: u64 },
}

impl Default for PartitionState {
    fn default() -> PartitionState {
        PartitionState {
            issued: 0,
            acked: 0,
            in_flight_upto: 0,
            in_flight_since: None,
            pending: std::collections::VecDeque::new(),
            in_flight_done: Rc::new(Broadcast::new()),
            buffer_done: Rc::new(Broadcast::new()),
            refused_upto: 0,
            refused: None,
            failed: None,
            acked_since_snapshot: 0,
            acked_sequence: 0,
            snapshot: Snapshotting::Idle,
        }
    }
}

/// The replication of one core's partitions.
pub struct Replication {
    core: usize,
    partitions: u32,
    /// Appends the stream refused because another writer appended first.
    fence_refusals: Cell<u64>,
    /// The core's store, whose state of a partition a snapshot copies.
    store: Store,
    /// The store's batch limits: a snapshot splits an object's state into batches within
    /// them, so that a start can commit each.
    limits: Limits,
    /// Batches acknowledged in a partition between its snapshots (0: none are taken).
    snapshot_batches: u64,
    /// Snapshots kept.
    snapshots: Cell<u64>,
    appends: mpsc::Sender<Append>,
    /// The node's lease: nothing is served while it is not fresh.
    lease: Arc<Lease>,
    /// The most bytes of batches one append carries (the NATS servers' message limit, less
    /// room for the headers); a larger batch is refused before it is committed.
    append_bytes_max: usize,
    states: RefCell<HashMap<u32, PartitionState>>,
    /// Set when another node took this node's partitions: every partition is refused.
    deposed: RefCell<Option<ReplicationError>>,
    /// The assignment as last read, and the node's count of served partitions.
    view: Arc<ClusterView>,
    /// Partitions of this core the node serves: rebuilt from the stream since the assignment
    /// gave them to it (they may still be refused: `PartitionState::failed`).
    served: RefCell<std::collections::HashSet<u32>>,
}

impl Replication {
    /// The core's side; `events` is the control thread's answers, read by [`Replication::run`].
    pub fn new(
        core: usize,
        partitions: u32,
        (appends, append_bytes_max): (mpsc::Sender<Append>, usize),
        (lease, view): (Arc<Lease>, Arc<ClusterView>),
        (store, limits, snapshot_batches): (Store, Limits, u64),
    ) -> Rc<Replication> {
        Rc::new(Replication {
            core,
            partitions,
            fence_refusals: Cell::new(0),
            store,
            limits,
            snapshot_batches,
            snapshots: Cell::new(0),
            lease,
            appends,
            append_bytes_max,
            states: RefCell::default(),
            deposed: RefCell::new(None),
            view,
            served: RefCell::default(),
        })
    }

    /// Why a partition this core does not serve is refused, by what it knows of its owner.
    fn unserved_reason(&self, partition: u32) -> String {
        match self.view.owner_of(partition) {
            Some(owner) if owner.node == self.view.node() => {
                format!(
                    "this node is taking partition {partition} over (rebuilding it from the log)"
                )
            }
            Some(owner) => format!(
                "partition {partition} is owned by node {:?}{}",
                owner.node,
                if owner.address.is_none() {
                    ", which gave no address to forward to"
                } else {
                    ""
                }
            ),
            None => "no node owns the partitions yet".to_string(),
        }
    }

    /// The partition of object `id`.
    pub fn partition_of(&self, id: &ObjectId) -> u32 {
        id.partition(self.partitions)
    }

    /// Why this node serves nothing at all, if it does not: deposed, or its lease not fresh.
    pub fn node_refusal(&self) -> Option<ReplicationError> {
        if let Some(error) = self.deposed.borrow().clone() {
            return Some(error);
        }
        (!self.lease.is_fresh()).then(|| {
            ReplicationError::Unavailable(
                "this node's lease is not fresh (NATS unreachable?): it cannot tell whether it \
                 still owns its partitions"
                    .to_string(),
            )
        })
    }

    /// Why events of `id`'s partition are refused, if they are.
    pub fn refusal(&self, id: &ObjectId) -> Option<ReplicationError> {
        if let Some(error) = self.node_refusal() {
            return Some(error);
        }
        let partition = self.partition_of(id);
        if !self.served.borrow().contains(&partition) {
            return Some(ReplicationError::NotServing(
                self.unserved_reason(partition),
            ));
        }
        self.states
            .borrow()
            .get(&partition)
            .and_then(|state| state.failed.clone())
    }

    /// The bytes of `batch` of `id` in an append, made before the batch goes to the local
    /// store (which takes it); refused when they could not fit one append.
    pub fn encode(&self, id: &ObjectId, batch: &Batch) -> Result<Vec<u8>, ReplicationError> {
        let mut encoded = Vec::new();
        record::encode_batch(&mut encoded, id, batch);
        if encoded.len() > self.append_bytes_max {
            return Err(ReplicationError::TooLarge {
                bytes: encoded.len(),
                append_bytes_max: self.append_bytes_max,
            });
        }
        Ok(encoded)
    }

    /// The ticket of the last batch of `id`'s partition, if it has one: what an object loaded
    /// now may have read.
    pub fn floor(&self, id: &ObjectId) -> Option<(u32, u64)> {
        let partition = self.partition_of(id);
        let states = self.states.borrow();
        let state = states.get(&partition)?;
        // Nothing committed since a rebuild: what the store holds came from the stream.
        (state.issued > state.refused_upto).then_some((partition, state.issued))
    }

    /// Queues the `encoded` batch of `id` (already committed to the local store) for its
    /// partition's next append; its ticket, for [`Replication::wait`].
    pub fn submit(&self, id: &ObjectId, encoded: &[u8]) -> Result<(u32, u64), ReplicationError> {
        let partition = self.partition_of(id);
        if let Some(error) = self.refusal(id) {
            // The batch is in the local store and will not be in the stream: the partition is
            // refused from now on, even once the lease is fresh. (The host checks the refusal
            // before it commits; the lease can still run out in between.)
            let mut states = self.states.borrow_mut();
            Self::fail(states.entry(partition).or_default(), error.clone());
            return Err(error);
        }
        let ticket = {
            let mut states = self.states.borrow_mut();
            let state = states.entry(partition).or_default();
            state.pending.push_back(encoded.to_vec());
            state.issued += 1;
            state.issued
        };
        self.flush(partition);
        Ok((partition, ticket))
    }

    /// Sends the partition's buffer as its next append, unless one is in flight already.
    fn flush(&self, partition: u32) {
        let mut states = self.states.borrow_mut();
        let Some(state) = states.get_mut(&partition) else {
            return;
        };
        if state.in_flight_upto != 0 || state.pending.is_empty() || state.failed.is_some() {
            return;
        }
        // The oldest batches that fit one append (at least one: `encode` bounds each).
        let first_ticket = state.issued + 1 - state.pending.len() as u64;
        let mut batches = Vec::new();
        let mut count = 0u32;
        // A snapshot's state ends at its ticket: the append that carries that ticket ends there.
        let cut = match &state.snapshot {
            Snapshotting::Cut { ticket, .. } if *ticket >= first_ticket => Some(*ticket),
            _ => None,
        };
        while let Some(next) = state.pending.front() {
            if count > 0 && batches.len() + next.len() > self.append_bytes_max {
                break;
            }
            if cut.is_some_and(|cut| first_ticket + u64::from(count) > cut) {
                break;
            }
            batches.extend_from_slice(next);
            state.pending.pop_front();
            count += 1;
        }
        let payload = record::finish(count, &batches);
        state.in_flight_upto = first_ticket + u64::from(count) - 1;
        state.in_flight_since = Some(Instant::now());
        state.in_flight_done = std::mem::replace(&mut state.buffer_done, Rc::new(Broadcast::new()));
        let append = Append {
            core: self.core,
            partition,
            upto: state.in_flight_upto,
            payload,
            snapshot_of: None,
        };
        // The channel holds an append per partition of the core, and a partition has at most
        // one in flight, so it is full only when the control thread is gone.
        if let Err(error) = self.appends.try_send(append) {
            let reason = match error {
                mpsc::error::TrySendError::Full(_) => "the control thread's queue is full",
                mpsc::error::TrySendError::Closed(_) => "the control thread has stopped",
            };
            Self::fail(state, ReplicationError::Unavailable(reason.to_string()));
        }
    }

    fn fail(state: &mut PartitionState, error: ReplicationError) {
        if state.failed.is_none() {
            state.failed = Some(error);
        }
        // Whatever was in flight no longer counts: the partition is refused.
        state.in_flight_upto = 0;
        state.in_flight_since = None;
        state.in_flight_done.set();
        state.buffer_done.set();
        state.snapshot = Snapshotting::Idle;
    }

    /// `partition` is about to be rebuilt from the stream: refused meanwhile (it is already,
    /// unless the failure's event has not arrived yet).
    pub fn begin_rebuild(&self, partition: u32) {
        if self.served.borrow_mut().remove(&partition) {
            self.view.count_serving(false);
        }
        let mut states = self.states.borrow_mut();
        let state = states.entry(partition).or_default();
        if state.failed.is_none() {
            let error = ReplicationError::Unavailable("the partition is being rebuilt".to_string());
            Self::fail(state, error);
        }
    }

    /// `partition` was rebuilt from the stream: it serves again, from a fresh state. The
    /// tickets given out before stay refused (their events were answered with the failure).
    pub fn recovered(&self, partition: u32) {
        let mut states = self.states.borrow_mut();
        // Only a refused partition is rebuilt (`begin_rebuild`): a fresh state for one that
        // was not would count its unacknowledged tickets as acknowledged.
        let Some(old) = states.get(&partition).filter(|old| old.failed.is_some()) else {
            tracing::warn!(
                partition,
                "a partition rebuilt that was not refused: left as it is"
            );
            return;
        };
        let state = PartitionState {
            issued: old.issued,
            acked: old.issued,
            refused_upto: old.issued,
            refused: old.failed.clone(),
            ..PartitionState::default()
        };
        states.insert(partition, state);
        if self.served.borrow_mut().insert(partition) {
            self.view.count_serving(true);
        }
    }

    /// `partition` now belongs to another node (`error` says which): refused from now on,
    /// what was in flight included (an append that lands anyway is in the new owner's
    /// rebuild, since its takeover record comes after it).
    pub fn release(&self, partition: u32, error: ReplicationError) {
        if self.served.borrow_mut().remove(&partition) {
            self.view.count_serving(false);
        }
        let mut states = self.states.borrow_mut();
        Self::fail(states.entry(partition).or_default(), error);
    }

    /// Resolves once ticket `ticket` of `partition` is replicated, or with why it never will be.
    pub async fn wait(&self, partition: u32, ticket: u64) -> Result<(), ReplicationError> {
        loop {
            let done = {
                if let Some(error) = self.deposed.borrow().clone() {
                    return Err(error);
                }
                let states = self.states.borrow();
                let Some(state) = states.get(&partition) else {
                    return Ok(());
                };
                if let Some(error) = &state.failed {
                    return Err(error.clone());
                }
                if ticket <= state.refused_upto {
                    if let Some(error) = &state.refused {
                        return Err(error.clone());
                    }
                }
                if state.acked >= ticket {
                    return Ok(());
                }
                if ticket <= state.in_flight_upto {
                    state.in_flight_done.clone()
                } else {
                    state.buffer_done.clone()
                }
            };
            done.wait().await;
        }
    }

    /// Reads the control thread's answers until it stops.
    pub async fn run(self: Rc<Self>, mut events: mpsc::Receiver<ControlEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                ControlEvent::Acked {
                    partition,
                    upto,
                    sequence,
                } => {
                    let send = {
                        let mut states = self.states.borrow_mut();
                        // The answer to the append in flight only: one to an append sent
                        // before the partition was released or rebuilt is stale (tickets
                        // only grow, so it never names the one in flight now).
                        match states
                            .get_mut(&partition)
                            .filter(|state| state.in_flight_upto == upto && upto != 0)
                        {
                            Some(state) => {
                                state.acked_since_snapshot += upto.saturating_sub(state.acked);
                                if upto > state.acked {
                                    state.acked_sequence = sequence;
                                }
                                state.acked = state.acked.max(upto);
                                state.in_flight_upto = 0;
                                state.in_flight_since = None;
                                state.in_flight_done.set();
                                self.snapshot_step(partition, state)
                            }
                            None => None,
                        }
                    };
                    self.clone().go_on(partition, send);
                }
                ControlEvent::SnapshotDone {
                    partition,
                    sequence,
                    kept,
                } => {
                    if kept {
                        self.snapshots.set(self.snapshots.get() + 1);
                    }
                    // What was acknowledged while this one was on its way may call for the
                    // next at once: a partition that went quiet still gets its tail kept. The
                    // answer about an earlier snapshot (sent before a release) changes nothing.
                    if !self.snapshot_finished(partition, sequence) {
                        continue;
                    }
                    let send = match self.states.borrow_mut().get_mut(&partition) {
                        Some(state) => {
                            if kept {
                                self.snapshot_step(partition, state)
                            } else {
                                None
                            }
                        }
                        None => None,
                    };
                    self.clone().go_on(partition, send);
                }
                ControlEvent::Failed {
                    partition,
                    upto,
                    error,
                } => {
                    let mut states = self.states.borrow_mut();
                    // As for `Acked`: the failure of an append no longer in flight is stale.
                    let Some(state) = states
                        .get_mut(&partition)
                        .filter(|state| state.in_flight_upto == upto && upto != 0)
                    else {
                        continue;
                    };
                    if matches!(error, ReplicationError::Fenced { .. }) {
                        self.fence_refusals.set(self.fence_refusals.get() + 1);
                    }
                    tracing::error!(core = self.core, partition, %error, "partition refused");
                    Self::fail(state, error);
                }
                ControlEvent::Deposed { error } => {
                    tracing::error!(core = self.core, %error, "every partition refused");
                    *self.deposed.borrow_mut() = Some(error.clone());
                    for state in self.states.borrow_mut().values_mut() {
                        Self::fail(state, error.clone());
                    }
                }
            }
        }
        // The control thread is gone: nothing more will be acknowledged.
        let error = ReplicationError::Unavailable("the control thread has stopped".to_string());
        *self.deposed.borrow_mut() = Some(error.clone());
        for state in self.states.borrow_mut().values_mut() {
            Self::fail(state, error.clone());
        }
    }

    /// After an acknowledgement of `partition`: takes the partition's state when enough was
    /// acknowledged since its last snapshot, and gives back the snapshot to send once the
    /// ticket it ends at is acknowledged (at once when nothing is pending).
    fn snapshot_step(
        &self,
        partition: u32,
        state: &mut PartitionState,
    ) -> Option<(Box<Snapshot>, u64)> {
        // A store that failed a write dropped batches the stream has: its state is no
        // snapshot of the stream any more.
        if state.failed.is_some() || self.store.write_failure().is_some() {
            state.snapshot = Snapshotting::Idle;
            return None;
        }
        if matches!(state.snapshot, Snapshotting::Idle)
            && self.snapshot_batches > 0
            && state.acked_since_snapshot >= self.snapshot_batches
        {
            // The store holds exactly the batches with tickets up to `issued`: each commit
            // takes its ticket in the same step, with no wait in between.
            let partitions = self.partitions;
            let taken = self
                .store
                .snapshot_of(|id| ObjectId(*id).partition(partitions) == partition);
            match taken {
                Ok(snapshot) => {
                    state.acked_since_snapshot = 0;
                    state.snapshot = Snapshotting::Cut {
                        ticket: state.issued,
                        snapshot: Box::new(snapshot),
                    };
                }
                Err(error) => {
                    tracing::warn!(core = self.core, partition, %error, "snapshot not taken");
                    state.acked_since_snapshot = 0;
                }
            }
        }
        match std::mem::take(&mut state.snapshot) {
            Snapshotting::Cut { ticket, snapshot } if state.acked >= ticket => {
                state.snapshot = Snapshotting::Sending {
                    sequence: state.acked_sequence,
                };
                Some((snapshot, state.acked_sequence))
            }
            other => {
                state.snapshot = other;
                None
            }
        }
    }

    /// After an answer of the control thread: sends the snapshot the answer made ready, if
    /// any, and the partition's next append.
    fn go_on(self: Rc<Self>, partition: u32, snapshot: Option<(Box<Snapshot>, u64)>) {
        if let Some((snapshot, sequence)) = snapshot {
            glommio::spawn_local(self.clone().send_snapshot(partition, sequence, snapshot))
                .detach();
        }
        self.flush(partition);
    }

    /// Reads the snapshot's values and hands it to the control thread as the state of
    /// `partition` as of its subject's message `sequence`.
    async fn send_snapshot(
        self: Rc<Self>,
        partition: u32,
        sequence: u64,
        mut snapshot: Box<Snapshot>,
    ) {
        let mut batches = Vec::new();
        let mut count = 0u32;
        while let Some(next) = snapshot.next_object().await {
            match next {
                Ok((id, data)) => {
                    for batch in crate::layout::migration_batches(data, &self.limits) {
                        record::encode_batch(&mut batches, &ObjectId(id), &batch);
                        count += 1;
                    }
                }
                Err(error) => {
                    tracing::warn!(core = self.core, partition, %error, "snapshot not read");
                    self.snapshot_finished(partition, sequence);
                    return;
                }
            }
        }
        let append = Append {
            core: self.core,
            partition,
            upto: 0,
            payload: record::finish(count, &batches),
            snapshot_of: Some(sequence),
        };
        // The channel holds one append and one snapshot per partition of the core.
        if self.appends.try_send(append).is_err() {
            self.snapshot_finished(partition, sequence);
        }
    }

    /// The partition's snapshot as of `sequence` is done with (kept, or not): the next may be
    /// taken. False when it is not the one in flight (one sent before a release).
    fn snapshot_finished(&self, partition: u32, sequence: u64) -> bool {
        let mut states = self.states.borrow_mut();
        let Some(state) = states.get_mut(&partition) else {
            return false;
        };
        let current =
            matches!(state.snapshot, Snapshotting::Sending { sequence: sent } if sent == sequence);
        if current {
            state.snapshot = Snapshotting::Idle;
        }
        current
    }

    /// What `/metrics` shows of this core's replication.
    pub fn counts(&self) -> ReplicationCounts {
        let states = self.states.borrow();
        let deposed = self.deposed.borrow().is_some();
        let mut counts = ReplicationCounts {
            deposed,
            fence_refusals_total: self.fence_refusals.get(),
            snapshots_total: self.snapshots.get(),
            ..ReplicationCounts::default()
        };
        let now = Instant::now();
        let served = self.served.borrow();
        // Partitions released to another node are not this node's any more.
        let ours = states
            .iter()
            .filter(|(partition, _)| served.contains(partition));
        for (_, state) in ours {
            if state.failed.is_some() {
                counts.partitions_refused += 1;
                continue;
            }
            counts.batches_unacknowledged += state.issued - state.acked;
            if let Some(since) = state.in_flight_since {
                counts.appends_in_flight += 1;
                let age = now.saturating_duration_since(since).as_micros();
                let age = u64::try_from(age).unwrap_or(u64::MAX);
                counts.oldest_append_micros = counts.oldest_append_micros.max(age);
            }
        }
        if !deposed && self.lease.is_fresh() {
            counts.partitions_served = served
                .iter()
                .filter(|partition| {
                    states
                        .get(partition)
                        .is_none_or(|state| state.failed.is_none())
                })
                .count() as u64;
        }
        counts
    }
}
