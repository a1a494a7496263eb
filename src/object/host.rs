//! [`ObjectHost`]: the objects of one core: activation, event admission, the commit and output
//! gates, idle eviction and shutdown.
//!
//! Every event (a request or an alarm) goes through the same steps: admit it (refusing it with
//! 503 past `object_events_queued_max` events of the object, or while shutting down), find or
//! activate the object (one activation per object; events that arrive meanwhile wait for it),
//! run the handler under the commit gate (`gate.rs`: the writes of each poll become one batch),
//! then hold the answer until the object's last commit is durable (the output gate). Events of
//! one object never run at the same time, since a core runs one poll at a time; a handler that
//! awaits something other than storage lets the next event of its object in, and the next
//! event may start while earlier ones wait for durability, so a hot object's writes share
//! fdatasyncs.
//!
//! Handlers must not panic: glommio cannot catch a panic of a task, and it takes down the core.
//! A handler that returns `Err` after writing still has its writes committed, as in the hosted
//! runtime: the batches of its earlier polls are already in the store.
//! Writes made outside any event (by a task the handler spawned) are committed with the next
//! event of the object, or when it is evicted; no response waits for them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::BoxedLocal;
use stead_storage::{Limits, Store};

use super::call::{call_depth, is_read_only, Router, NO_EVENT_DEPTH};
use super::context::CoreParts;
use super::error::EventError;
use super::fetch::FetchClient;
use super::gate::{Commit, Gated};
use super::history;
use super::pending::SQL_PAGES_PER_BATCH_MAX;
use super::registry::{ClassRegistry, Constructor, DynObject};
use super::slot::{Slot, SlotState, TurnWait};
use super::storage::NAME_KEY;
use super::{AlarmInfo, CoreSockets, ObjectContext, ObjectError, SocketClose, Storage};
use crate::config::Config;
use crate::http::{Request, Response};
use crate::id::ObjectId;
use crate::shutdown::Shutdown;
use crate::wake::Broadcast;
use crate::websocket::{CloseCode, SocketEvent, SocketId};

/// Below this capacity the map of objects in memory is never shrunk after a sweep.
const OBJECTS_SHRINK_CAPACITY_MIN: usize = 1024;

/// Bounds on the idle-eviction sweep interval (a quarter of `idle_evict_ms`), in milliseconds.
const SWEEP_INTERVAL_MIN_MS: u64 = 10;
const SWEEP_INTERVAL_MAX_MS: u64 = 60_000;

mod admin;
mod restore;
pub use admin::{ObjectInfo, StoragePage, TableInfo};
pub use restore::{AdminHistoryError, Restored};

/// Told `(object, Some(time_ms))` when an object's alarm is committed, `(object, None)` when its
/// deletion is: the hook for the alarm scheduler.
pub type AlarmListener = Rc<dyn Fn(ObjectId, Option<i64>)>;

/// Told once, with the reason, when the host finds its store no longer writable: the hook for
/// `/healthz`.
pub type StoreFailureListener = Rc<dyn Fn(&str)>;

/// The storage limits the host checks on each write. The core's store must be opened with the
/// same limits, or a commit could be refused after the object's memory changed.
/// The store's own `batch_keys_max` adds the SQL pages an event may write
/// (`SQL_PAGES_PER_BATCH_MAX`) to the key-value writes it may make.
/// It also leaves room for the name key an object's first batch carries (`NAME_KEY`): one key,
/// and the bytes of the longest name, which the object's own writes may not use.
pub fn store_limits(config: &Config) -> Limits {
    let object = object_limits(config);
    Limits {
        // Each write may come with its undo entry, and a batch may trim a version's record.
        batch_keys_max: 3 * (object.batch_keys_max + SQL_PAGES_PER_BATCH_MAX) + 16,
        batch_bytes_max: Limits::default().batch_bytes_max,
        key_bytes_max: object.key_bytes_max + history::RECORD_KEY_OVERHEAD_BYTES,
        ..object
    }
}

/// The limits an object's key-value writes are checked against.
fn object_limits(config: &Config) -> Limits {
    let defaults = Limits::default();
    // The name key's op: the longest name, the key and a header, generously.
    let name_reserve_bytes = config.http.object_name_bytes_max + NAME_KEY.len() + 64;
    let reserve_bytes = name_reserve_bytes + history::RESERVE_BYTES;
    Limits {
        value_bytes_max: config.storage.value_bytes_max,
        batch_bytes_max: defaults.batch_bytes_max.saturating_sub(reserve_bytes),
        ..defaults
    }
}

/// Counters and gauges of one host, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    pub active_objects: usize,
    pub events_queued: usize,
    pub events_total: u64,
    pub activations_total: u64,
    pub activation_failures_total: u64,
    pub evictions_total: u64,
    pub overload_rejections_total: u64,
    pub websockets_open: usize,
    pub websocket_events_total: u64,
    /// Bytes queued for WebSocket clients and not yet written, over the core's sockets.
    pub websocket_queued_bytes: usize,
    /// In a cluster: what this core's replication stands at.
    pub replication: crate::cluster::ReplicationCounts,
}

/// The objects of one core. One per core, behind an `Rc`.
pub struct ObjectHost {
    /// This core's store; every commit and activation goes through it.
    store: Store,
    /// Constructors of every class.
    registry: Arc<ClassRegistry>,
    /// The server's configuration, handed to every object.
    config: Rc<Config>,
    /// Limits checked on each key-value write (see [`store_limits`]).
    limits: Limits,
    /// Active and activating objects.
    objects: RefCell<HashMap<ObjectId, Rc<Slot>>>,
    /// Admitted events of every object not yet answered; shutdown waits for it to reach 0.
    events_in_flight: Cell<usize>,
    /// Set by `shutdown`: new events are refused.
    closing: Cell<bool>,
    /// Set by `begin_shutdown`, when the core stops accepting connections: events that wait
    /// for something open-ended (a lock waiter) give up with [`shutting_down`] at once instead
    /// of holding the drain until its timeout. Objects see it through their context.
    stopping: Rc<Shutdown>,
    /// Fired when `events_in_flight` reaches 0 while closing.
    drained: Broadcast,
    /// The highest sequence number this host committed. A new activation starts its
    /// `last_submitted_seq` here, since its loaded data may come from a commit whose
    /// durability nobody waited for (an event whose caller went away).
    highest_submitted_seq: Cell<u64>,
    /// Counters for [`HostStats`].
    stats: Cell<HostStats>,
    /// The alarm scheduler's hook, if one is installed.
    alarm_listener: RefCell<Option<AlarmListener>>,
    /// The WebSockets of this core's objects; they outlive evictions.
    sockets: Rc<CoreSockets>,
    /// Set once the host saw its store unwritable and dropped every object from memory.
    store_failed: Cell<bool>,
    /// The `/healthz` hook, if one is installed.
    store_failure_listener: RefCell<Option<StoreFailureListener>>,
    /// How objects' stubs reach other objects (the server's routing), once installed.
    router: RefCell<Option<Rc<dyn Router>>>,
    /// In a cluster: where each commit's batch goes to be replicated.
    replication: RefCell<Option<Rc<crate::cluster::Replication>>>,
    /// The core's outgoing HTTP client, shared by its objects (one pool of connections).
    fetch: Rc<FetchClient>,
}

/// An admitted event; dropping it (answered or abandoned) releases its place.
struct Event<'a> {
    /// The host whose in-flight count includes this event.
    host: &'a ObjectHost,
    /// The object it is addressed to.
    slot: Rc<Slot>,
    /// Its place in the object's start order.
    ticket: u64,
    /// Whether its turn came; one that goes away before gives its turn up.
    started: Cell<bool>,
}

impl Event<'_> {
    /// Waits for the object's activation to end and for this event's turn; the instance, or
    /// why the activation failed. The handler must start before the caller next suspends.
    async fn ready(&self) -> Result<Rc<dyn DynObject>, EventError> {
        TurnWait {
            slot: &self.slot,
            ticket: self.ticket,
        }
        .await;
        let outcome = match &*self.slot.state.borrow() {
            SlotState::Ready(instance) => Ok(instance.clone()),
            SlotState::Failed(error) => Err(error.clone()),
            SlotState::Activating => Err(EventError::ActivationFailed {
                id: self.slot.id,
                reason: "the object is still activating".to_string(),
            }),
        };
        self.started.set(true);
        self.slot.turns.advance();
        outcome
    }
}

impl Drop for Event<'_> {
    fn drop(&mut self) {
        if !self.started.get() {
            self.slot.turns.abandon(self.ticket);
        }
        self.slot.events.set(self.slot.events.get() - 1);
        self.slot.last_event.set(Instant::now());
        let in_flight = self.host.events_in_flight.get() - 1;
        self.host.events_in_flight.set(in_flight);
        if in_flight == 0 && self.host.closing.get() {
            self.host.drained.set();
        }
    }
}

/// 503 `{"error":"overloaded","retryable":true}` with `Retry-After`: an object's queue, or
/// the requests waiting on another core, is full.
pub(crate) fn overloaded() -> Response {
    EventError::Overloaded.to_response()
}

/// The answer to an event that gave up because the server is shutting down: 503
/// `{"error":"the server is shutting down","retryable":true}` with `Retry-After`, since the
/// object is served again once the server is back.
pub fn shutting_down() -> Response {
    EventError::ShuttingDown.to_response()
}

impl ObjectHost {
    pub fn new(store: Store, registry: Arc<ClassRegistry>, config: Rc<Config>) -> Rc<ObjectHost> {
        let limits = object_limits(&config);
        let config_websocket = config.websocket.clone();
        let fetch = Rc::new(FetchClient::new(config.fetch.clone()));
        Rc::new(ObjectHost {
            store,
            registry,
            config,
            limits,
            objects: RefCell::new(HashMap::new()),
            events_in_flight: Cell::new(0),
            closing: Cell::new(false),
            stopping: Rc::new(Shutdown::new()),
            drained: Broadcast::default(),
            highest_submitted_seq: Cell::new(0),
            stats: Cell::new(HostStats::default()),
            alarm_listener: RefCell::new(None),
            sockets: Rc::new(CoreSockets::new(config_websocket)),
            store_failed: Cell::new(false),
            store_failure_listener: RefCell::new(None),
            router: RefCell::new(None),
            replication: RefCell::new(None),
            fetch,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn registry(&self) -> &Arc<ClassRegistry> {
        &self.registry
    }

    /// Installs the routing objects' stubs call other objects through (objects activated
    /// before it have none).
    pub fn set_router(&self, router: Rc<dyn Router>) {
        *self.router.borrow_mut() = Some(router);
    }

    /// Commits `batch` of object `id` outside any event (admin deletes, restores), in a cluster
    /// to the stream as well, and waits until it is durable (and acknowledged). Returns its
    /// sequence number.
    pub(super) async fn commit_outside_events(
        &self,
        id: ObjectId,
        batch: stead_storage::Batch,
    ) -> Result<u64, String> {
        let replication = self.replication.borrow().clone();
        if let Some(error) = replication.as_ref().and_then(|r| r.refusal(&id)) {
            return Err(error.to_string());
        }
        let encoded = match replication.as_ref().map(|r| r.encode(&id, &batch)) {
            None => None,
            Some(Ok(encoded)) => Some(encoded),
            Some(Err(error)) => return Err(error.to_string()),
        };
        let (seq, _) = self
            .store
            .commit(&id.0, batch)
            .map_err(|error| error.to_string())?;
        self.highest_submitted_seq
            .set(self.highest_submitted_seq.get().max(seq));
        let ticket = match (&replication, encoded) {
            (Some(replication), Some(encoded)) => Some(
                replication
                    .submit(&id, &encoded)
                    .map_err(|error| error.to_string())?,
            ),
            _ => None,
        };
        self.store
            .wait_durable(seq)
            .await
            .map_err(|error| format!("the write is not durable: {error}"))?;
        if let (Some(replication), Some((partition, ticket))) = (replication, ticket) {
            replication
                .wait(partition, ticket)
                .await
                .map_err(|error| error.to_string())?;
        }
        Ok(seq)
    }

    /// In a cluster: why this node serves nothing now (deposed, or its lease not fresh).
    pub fn cluster_refusal(&self) -> Option<String> {
        let replication = self.replication.borrow();
        replication
            .as_ref()?
            .node_refusal()
            .map(|error| error.to_string())
    }

    /// Makes every commit wait for the cluster's stream too (see `src/cluster/`).
    pub fn set_replication(&self, replication: Rc<crate::cluster::Replication>) {
        *self.replication.borrow_mut() = Some(replication);
    }

    /// Installs the hook told about every committed alarm change.
    pub fn set_alarm_listener(&self, listener: AlarmListener) {
        *self.alarm_listener.borrow_mut() = Some(listener);
    }

    /// Installs the hook told when the store turns out not writable (at once, if it already is).
    pub fn set_store_failure_listener(&self, listener: StoreFailureListener) {
        *self.store_failure_listener.borrow_mut() = Some(listener);
        self.check_store();
    }

    /// Notices a store that takes no more writes, once: every object leaves memory, since
    /// an object's in-memory copy may hold writes that will never be durable (the store took
    /// them back out of its own view), and the next event of each reloads only durable data.
    /// Returns why the store is not writable, if it is not.
    pub fn check_store(&self) -> Option<String> {
        let reason = self.store.write_failure()?;
        if !self.store_failed.replace(true) {
            tracing::error!(%reason, "the store takes no more writes: writes answer 507, reads of durable data go on");
            let slots = self.take_all_objects();
            for slot in &slots {
                slot.storage
                    .fail_commits(format!("storage unavailable: {reason}"));
                self.sockets.object_left_memory(&slot.id);
            }
            let listener = self.store_failure_listener.borrow().clone();
            if let Some(listener) = listener {
                listener(&reason);
            }
        }
        Some(reason)
    }

    /// A failure as the client should see it: on a core whose store takes no more writes, a
    /// server-side failure of an object (its activation, a commit, a handler's 500) is the
    /// store's, so it answers 507; refusals (503) and client errors (413) stay what they are.
    fn classify(&self, error: EventError) -> EventError {
        let server_side = match &error {
            EventError::ActivationFailed { .. } | EventError::CommitFailed { .. } => true,
            EventError::Handler(handler) => handler.status == 500,
            _ => false,
        };
        if !server_side {
            return error;
        }
        match self.check_store() {
            Some(reason) => EventError::StorageUnavailable { reason },
            None => error,
        }
    }

    /// Answers one request to the object `id` of `class`. The caller has checked that the class
    /// is registered and that this core owns `id`.
    pub async fn dispatch(
        self: &Rc<Self>,
        class: &str,
        id: ObjectId,
        request: Request,
    ) -> Response {
        self.dispatch_named(class, id, None, request).await
    }

    /// `dispatch` of a request that named its object: the store keeps `name` with the object
    /// (`NAME_KEY`), for the admin API.
    pub async fn dispatch_named(
        self: &Rc<Self>,
        class: &str,
        id: ObjectId,
        name: Option<&str>,
        request: Request,
    ) -> Response {
        let answer = async {
            let read_only = is_read_only(&request);
            let event = self.admit(class, id, (Queue::Bounded, read_only))?;
            if let Some(name) = name.filter(|_| self.config.objects.keep_names) {
                event.slot.storage.note_name(name);
            }
            let instance = event.ready().await?;
            let mode = (call_depth(&request), read_only);
            self.run(&event.slot, instance.fetch(request), mode).await
        };
        answer
            .await
            .unwrap_or_else(|error| self.classify(error).to_response())
    }

    /// Runs the object's alarm handler as an event, activating the object if needed. After the
    /// handler succeeds, the alarm that fired is deleted in the same batch, unless the handler
    /// set another time; after an error it is kept, for the scheduler to retry.
    pub async fn deliver_alarm(
        self: &Rc<Self>,
        class: &str,
        id: ObjectId,
        info: AlarmInfo,
    ) -> Result<(), EventError> {
        let event = self.admit(class, id, (Queue::Bounded, false))?;
        let instance = event.ready().await?;
        let storage = event.slot.storage.clone();
        let handler = instance.alarm(info);
        let handler: BoxedLocal<Result<(), ObjectError>> = Box::pin(async move {
            handler.await?;
            if storage.get_alarm() == Some(info.scheduled_ms) {
                storage.delete_alarm()?;
            }
            Ok(())
        });
        self.run(&event.slot, handler, (0, false)).await
    }

    /// Objects in memory (active or activating).
    pub fn active_objects(&self) -> usize {
        self.objects.borrow().len()
    }

    /// Events admitted and not yet answered, over every object.
    pub fn events_queued(&self) -> usize {
        self.events_in_flight.get()
    }

    pub fn stats(&self) -> HostStats {
        let replication = self
            .replication
            .borrow()
            .as_ref()
            .map(|replication| replication.counts());
        HostStats {
            active_objects: self.active_objects(),
            events_queued: self.events_queued(),
            websockets_open: self.sockets.len(),
            websocket_queued_bytes: self.sockets.queued_bytes(),
            replication: replication.unwrap_or_default(),
            ..self.stats.get()
        }
    }

    /// Spawns the idle-eviction sweep on the current executor. It holds only a weak reference
    /// and stops once the host is dropped or shutting down.
    pub fn start_background(self: &Rc<Self>) {
        let host = Rc::downgrade(self);
        let interval_ms = (self.config.objects.idle_evict_ms / 4)
            .clamp(SWEEP_INTERVAL_MIN_MS, SWEEP_INTERVAL_MAX_MS);
        glommio::spawn_local(sweep(host, Duration::from_millis(interval_ms))).detach();
        glommio::spawn_local(deliver_socket_events(
            Rc::downgrade(self),
            self.sockets.queue.clone(),
        ))
        .detach();
    }

    /// The WebSockets of this core's objects.
    pub fn sockets(&self) -> &Rc<CoreSockets> {
        &self.sockets
    }

    /// Delivers one socket event as an event of the socket's object, activating it if it was
    /// evicted. After a terminal event the socket is forgotten. Socket events are not refused
    /// for a full object queue: they are bounded by `SOCKET_DELIVERIES_IN_FLIGHT_MAX` instead,
    /// and past that sockets stop reading. If the object cannot take the event (shutting
    /// down, failing), the socket is closed with 1011 rather than losing messages silently.
    pub async fn deliver_socket_event(self: &Rc<Self>, socket: SocketId, event: SocketEvent) {
        let Some(owner) = self.sockets.owner(socket) else {
            return;
        };
        let terminal = event.is_terminal();
        self.count(|stats| stats.websocket_events_total += 1);
        let admitted = self.admit(
            &owner.class,
            owner.object,
            (Queue::Unbounded, owner.read_only),
        );
        let outcome = match admitted {
            Err(error) => Err(error),
            Ok(event_guard) => match event_guard.ready().await {
                Err(error) => Err(error),
                Ok(instance) => {
                    let handle = owner.handle.clone();
                    let handler = match event {
                        SocketEvent::Message(message) => {
                            instance.websocket_message(handle, message)
                        }
                        SocketEvent::Closed {
                            code,
                            reason,
                            clean,
                        } => instance.websocket_close(
                            handle,
                            SocketClose {
                                code: code.0,
                                reason,
                                clean,
                            },
                        ),
                        SocketEvent::Failed(error) => {
                            instance.websocket_error(handle, format!("{error:?}"))
                        }
                    };
                    self.run(&event_guard.slot, handler, (0, owner.read_only))
                        .await
                }
            },
        };
        if let Err(error) = outcome {
            tracing::warn!(socket = socket.0, object = %owner.object, "socket event not handled: {error}");
            let _ = owner
                .handle
                .close(CloseCode(1011), "the object could not handle the message");
        }
        if terminal {
            self.sockets.remove(socket);
        }
    }

    /// Drops every object that had no event for `idle_evict_ms` and has none in flight.
    /// Returns how many were dropped. Their writes are already committed.
    pub fn evict_idle(&self, now: Instant) -> usize {
        let idle = Duration::from_millis(self.config.objects.idle_evict_ms);
        let mut evicted = Vec::new();
        let mut objects = self.objects.borrow_mut();
        objects.retain(|_, slot| {
            let busy = slot.events.get() > 0 || slot.is_activating();
            let keep = busy || now.saturating_duration_since(slot.last_event.get()) < idle;
            if !keep {
                evicted.push(slot.clone());
            }
            keep
        });
        // The map keeps the capacity of its busiest moment (130k objects: 5 MiB a core);
        // a sweep that leaves it mostly empty gives that back.
        if objects.capacity() > OBJECTS_SHRINK_CAPACITY_MIN
            && objects.len() * 4 < objects.capacity()
        {
            let len = objects.len();
            objects.shrink_to(len * 2);
        }
        drop(objects);
        for slot in &evicted {
            self.retire(slot, "the object was evicted");
        }
        self.count(|stats| stats.evictions_total += evicted.len() as u64);
        evicted.len()
    }

    /// The core stopped accepting connections: wakes every event waiting on
    /// [`ObjectContext::shutting_down`] (events keep being taken until `shutdown`).
    pub fn begin_shutdown(&self) {
        self.stopping.request();
    }

    /// Stops taking events (new ones answer 503), waits for those in flight, drops every
    /// object and closes the store.
    pub async fn shutdown(&self) {
        self.closing.set(true);
        self.sockets
            .close_all(CloseCode::GOING_AWAY, "the server is shutting down");
        if self.events_in_flight.get() > 0 {
            self.drained.wait().await;
        }
        let slots = self.take_all_objects();
        for slot in &slots {
            self.retire(slot, "the server is shutting down");
        }
        drop(slots);
        if let Err(error) = self.store.close().await {
            tracing::error!(%error, "closing the store failed");
        }
    }

    /// Admits an event of `id`, starting its activation if it is not in memory.
    fn admit(
        self: &Rc<Self>,
        class: &str,
        id: ObjectId,
        (queue, read_only): (Queue, bool),
    ) -> Result<Event<'_>, EventError> {
        if self.closing.get() {
            self.count(|stats| stats.overload_rejections_total += 1);
            return Err(EventError::ShuttingDown);
        }
        if !self.store_failed.get() {
            self.check_store();
        }
        let existing = self.objects.borrow().get(&id).cloned();
        let slot = match existing {
            Some(slot) => slot,
            None => self.start_activation(class, id, read_only)?,
        };
        if &*slot.class != class {
            return Err(EventError::ClassMismatch {
                id,
                active: slot.class.to_string(),
            });
        }
        let counted = slot.events.get().saturating_sub(slot.parked.get());
        if queue == Queue::Bounded && counted >= self.config.objects.object_events_queued_max {
            self.count(|stats| stats.overload_rejections_total += 1);
            return Err(EventError::Overloaded);
        }
        slot.events.set(slot.events.get() + 1);
        self.events_in_flight.set(self.events_in_flight.get() + 1);
        self.count(|stats| stats.events_total += 1);
        let ticket = slot.turns.take_ticket();
        Ok(Event {
            host: self,
            slot,
            ticket,
            started: Cell::new(false),
        })
    }

    /// Puts a new slot in the map and spawns its activation. The activation is a task of its
    /// own, so it completes (and wakes its waiters) even if the event that started it goes away.
    fn start_activation(
        self: &Rc<Self>,
        class: &str,
        id: ObjectId,
        read_only: bool,
    ) -> Result<Rc<Slot>, EventError> {
        let Some(constructor) = self.registry.constructor(class) else {
            return Err(EventError::UnknownClass {
                class: class.to_string(),
            });
        };
        // A core that does not serve the partition (a standby, one still replaying it, one
        // deposed) loads nothing: what its store holds may be empty or stale.
        if let Some(error) = self.refusal(&id) {
            return Err(EventError::NotReplicated {
                reason: error.to_string(),
            });
        }
        let storage = Storage::new(
            self.limits.clone(),
            self.config.sql.clone(),
            self.config.history_retention_ms(class),
        );
        // A store that takes no writes shows only durable data, so an object loaded from it
        // has nothing to wait for (and the batches after the durable ones never will be).
        let seq_floor = if self.store_failed.get() {
            self.store.durable_seq()
        } else {
            self.highest_submitted_seq.get()
        };
        let slot = Rc::new(Slot::new(id, Rc::from(class), storage, seq_floor));
        if let Some(replication) = self.replication.borrow().as_ref() {
            slot.replica_ticket.set(replication.floor(&id));
        }
        self.objects.borrow_mut().insert(id, slot.clone());
        self.count(|stats| stats.activations_total += 1);
        let activation = activate(self.clone(), slot.clone(), (constructor, read_only));
        glommio::spawn_local(activation).detach();
        Ok(slot)
    }

    /// Runs one handler (of an event at call depth `depth`, read-only or not) under the commit
    /// gate, then the output gate. A handler's own error keeps its status (413 for a write the client made
    /// too large); a failed commit is 500.
    async fn run<T>(
        &self,
        slot: &Slot,
        handler: BoxedLocal<Result<T, ObjectError>>,
        mode: (u32, bool),
    ) -> Result<T, EventError> {
        let replication = self.replication.borrow().clone();
        // A node that no longer serves the partition answers nothing from its memory.
        if let Some(error) = replication
            .as_ref()
            .and_then(|replication| replication.refusal(&slot.id))
        {
            return Err(EventError::NotReplicated {
                reason: error.to_string(),
            });
        }
        let (result, commit_error) = Gated::new(self, slot, handler, mode).await;
        if let Some(error) = commit_error {
            return Err(error);
        }
        let seq = slot.last_submitted_seq.get();
        if seq > 0 {
            if let Err(error) = self.store.wait_durable(seq).await {
                return Err(EventError::CommitFailed {
                    id: slot.id,
                    reason: format!("the write is not durable: {error}"),
                });
            }
        }
        if let Some(replication) = replication {
            if let Some((partition, ticket)) = slot.replica_ticket.get() {
                if let Err(error) = replication.wait(partition, ticket).await {
                    return Err(EventError::NotReplicated {
                        reason: error.to_string(),
                    });
                }
            }
            // Deposed while the handler ran: what it read may be stale.
            if let Some(error) = replication.refusal(&slot.id) {
                return Err(EventError::NotReplicated {
                    reason: error.to_string(),
                });
            }
        }
        if slot.storage.take_restart_request() {
            self.restart(slot);
        }
        // Another event's commit of this object may have been refused while this one ran: the
        // refused writes were in the memory this handler read, but in no sequence number it
        // waited for, so its answer could show a write that will never be durable.
        if let Err(error) = slot.storage.check_committed() {
            return Err(EventError::CommitFailed {
                id: slot.id,
                reason: error.to_string(),
            });
        }
        result.map_err(EventError::Handler)
    }

    /// Builds the instance of an activating object: load, construct, `init`.
    /// `read_only`: the activation comes from a read-only event, and `init` may not write
    /// either (a read-only request cannot create an object whose `init` writes: 403).
    async fn build(
        &self,
        slot: &Slot,
        (constructor, read_only): (Constructor, bool),
    ) -> Result<Rc<dyn DynObject>, EventError> {
        let load_failed = |error: stead_storage::StoreError| EventError::ActivationFailed {
            id: slot.id,
            reason: format!("cannot load its storage: {error}"),
        };
        // The values of history records are read only by a restore.
        let mut data = self
            .store
            .load_object_except(&slot.id.0, history::is_record_key)
            .await
            .map_err(load_failed)?;
        if data.entries.contains_key(history::RESTORE_KEY) {
            let retention_ms = self.config.history_retention_ms(&slot.class);
            // A restore whose records are gone or damaged is dropped; one that fails to commit
            // stays for the next activation. Either way this activation fails with it.
            let undo = self
                .restore_stored(slot.id, retention_ms)
                .await
                .map_err(|reason| EventError::ActivationFailed {
                    id: slot.id,
                    reason: format!("the restore it asked for failed: {reason}"),
                })?;
            slot.restore_undo.set(undo);
            data = self
                .store
                .load_object_except(&slot.id.0, history::is_record_key)
                .await
                .map_err(load_failed)?;
        }
        slot.storage
            .load(data)
            .map_err(|reason| EventError::ActivationFailed {
                id: slot.id,
                reason: format!("cannot load its SQL database: {reason}"),
            })?;
        let core = CoreParts {
            config: &self.config,
            sockets: &self.sockets,
            store: &self.store,
            stopping: &self.stopping,
            registry: &self.registry,
            router: self.router.borrow().clone(),
            fetch: &self.fetch,
            replication: self.replication.borrow().clone(),
        };
        let context = ObjectContext::new(
            (slot.id, slot.class.clone()),
            slot.storage.clone(),
            (
                slot.parked.clone(),
                slot.call_depth.clone(),
                slot.read_only.clone(),
            ),
            &core,
        );
        let instance = constructor(context);
        let init = instance.clone().init();
        // No calls from `init`: an object's activation would wait for itself (A's init calls
        // B, which calls A, which is still activating).
        let mode = (NO_EVENT_DEPTH, read_only);
        let (result, commit_error) = Gated::new(self, slot, init, mode).await;
        if let Some(error) = commit_error {
            return Err(error);
        }
        result.map_err(|error| {
            if read_only && error.status == 403 {
                // Its writes were refused: the event's answer is that refusal.
                return EventError::Handler(error);
            }
            EventError::ActivationFailed {
                id: slot.id,
                reason: format!("init failed: {error}"),
            }
        })?;
        if slot.storage.take_restart_request() {
            // The request is committed; the next activation carries it out.
            return Err(EventError::ActivationFailed {
                id: slot.id,
                reason: "init asked for a restore: the next activation carries it out".to_string(),
            });
        }
        Ok(instance)
    }

    /// Whether `id` is a new object: not in memory and nothing stored. Never for an object
    /// this core does not serve now (a cluster node that is a standby, or rebuilding the
    /// object's partition: its store may lack what the object has); that event is refused
    /// anyway.
    pub fn is_new(&self, id: &ObjectId) -> bool {
        self.refusal(id).is_none()
            && !self.objects.borrow().contains_key(id)
            && !self.store.contains_object(&id.0)
    }

    /// Takes the objects `leaving` picks out of memory, as after a failed commit: their
    /// instances take no more writes, and their next events load them again.
    pub fn forget_objects(&self, leaving: impl Fn(&ObjectId) -> bool, reason: &str) {
        let slots: Vec<Rc<Slot>> = self
            .objects
            .borrow()
            .values()
            .filter(|slot| leaving(&slot.id))
            .cloned()
            .collect();
        for slot in &slots {
            slot.storage.fail_commits(reason.to_string());
            self.detach(slot);
        }
    }

    /// In a cluster: why events of `id` are refused now, if they are.
    fn refusal(&self, id: &ObjectId) -> Option<crate::cluster::ReplicationError> {
        self.replication.borrow().as_ref()?.refusal(id)
    }

    /// Removes `slot` from the map if it is still the one there; returns whether it was.
    fn detach(&self, slot: &Slot) -> bool {
        let mut objects = self.objects.borrow_mut();
        let current = objects
            .get(&slot.id)
            .is_some_and(|entry| std::ptr::eq(Rc::as_ptr(entry), slot));
        if current {
            objects.remove(&slot.id);
            self.sockets.object_left_memory(&slot.id);
        }
        current
    }

    /// Commits writes made outside any event, then refuses later ones (from tasks that still
    /// hold the object's context).
    fn retire(&self, slot: &Slot, reason: &str) {
        // A failure is logged by commit_pending; the object is going away either way.
        let _ = self.commit_pending(slot);
        slot.storage.make_unavailable(reason.to_string());
        self.sockets.object_left_memory(&slot.id);
    }

    /// Takes every object out of memory (the caller retires or fails them).
    fn take_all_objects(&self) -> Vec<Rc<Slot>> {
        self.objects
            .borrow_mut()
            .drain()
            .map(|(_, slot)| slot)
            .collect()
    }

    fn count(&self, update: impl FnOnce(&mut HostStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }
}

impl Commit for ObjectHost {
    /// A read-only event's poll left writes pending (a write around the storage's check):
    /// they leave with the instance, as after a failed commit, and the event answers 403.
    fn refuse_pending(&self, slot: &Slot) -> Result<(), EventError> {
        if !slot.storage.has_pending() {
            return Ok(());
        }
        let reason = super::storage::READ_ONLY_REFUSAL;
        slot.storage.fail_commits(reason.to_string());
        self.detach(slot);
        Err(EventError::Handler(ObjectError::with_status(403, reason)))
    }

    /// Hands the object's writes since the last call to the store. On failure the object takes
    /// no more writes and leaves the map, so its next event reloads it from the store.
    fn commit_pending(&self, slot: &Slot) -> Result<(), EventError> {
        let Some((batch, alarm_change)) = slot.storage.take_pending() else {
            // An instance whose SQL database failed dropped its writes itself: it leaves
            // memory as after a failed commit.
            if let Err(error) = slot.storage.check_committed() {
                self.detach(slot);
                return Err(EventError::CommitFailed {
                    id: slot.id,
                    reason: error.to_string(),
                });
            }
            return Ok(());
        };
        let mut batch = batch;
        slot.storage.trim_history(&mut batch, |prefix| {
            self.store.keys_with_prefix(&slot.id.0, prefix, usize::MAX)
        });
        let replication = self.replication.borrow().clone();
        // Refused now (deposed, the lease not fresh): the writes leave with the instance and
        // never reach the local store, which stays a copy of the stream.
        if let Some(error) = replication.as_ref().and_then(|r| r.refusal(&slot.id)) {
            slot.storage.fail_commits(error.to_string());
            self.detach(slot);
            return Err(EventError::NotReplicated {
                reason: error.to_string(),
            });
        }
        let encoded = match replication.as_ref().map(|r| r.encode(&slot.id, &batch)) {
            None => None,
            Some(Ok(encoded)) => Some(encoded),
            Some(Err(error)) => {
                // Not committed: the writes in memory leave with the instance.
                slot.storage.fail_commits(error.to_string());
                self.detach(slot);
                return Err(EventError::Handler(ObjectError::with_status(
                    413,
                    error.to_string(),
                )));
            }
        };
        match self.store.commit(&slot.id.0, batch) {
            Ok((seq, _durable)) => {
                slot.last_submitted_seq.set(seq);
                if let (Some(replication), Some(encoded)) = (replication, encoded) {
                    match replication.submit(&slot.id, &encoded) {
                        Ok(ticket) => slot.replica_ticket.set(Some(ticket)),
                        Err(error) => {
                            // The write is in this node's memory and store but will not be in
                            // the stream: the object leaves memory, and the partition is
                            // refused until a restart rebuilds it from the stream.
                            slot.storage.fail_commits(error.to_string());
                            self.detach(slot);
                            return Err(EventError::NotReplicated {
                                reason: error.to_string(),
                            });
                        }
                    }
                }
                self.highest_submitted_seq
                    .set(self.highest_submitted_seq.get().max(seq));
                let listener = self.alarm_listener.borrow().clone();
                if let (Some(change), Some(listener)) = (alarm_change, listener) {
                    listener(slot.id, change);
                }
                Ok(())
            }
            Err(error) => {
                let error = EventError::CommitFailed {
                    id: slot.id,
                    reason: error.to_string(),
                };
                tracing::error!("{error}");
                slot.storage.fail_commits(error.to_string());
                self.detach(slot);
                Err(error)
            }
        }
    }
}

/// The activation task of one object.
async fn activate(host: Rc<ObjectHost>, slot: Rc<Slot>, activation: (Constructor, bool)) {
    let state = match host.build(&slot, activation).await {
        Ok(instance) => SlotState::Ready(instance),
        Err(error) => {
            tracing::warn!("{error}");
            host.count(|stats| stats.activation_failures_total += 1);
            slot.storage.make_unavailable(error.to_string());
            host.detach(&slot);
            SlotState::Failed(error)
        }
    };
    *slot.state.borrow_mut() = state;
    slot.last_event.set(Instant::now());
    slot.turns.wake_current();
}

/// Whether an event counts against its object's `object_events_queued_max`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// Refused with 503 past the bound: requests and alarms, whose senders can retry.
    Bounded,
    /// Admitted past it: socket events, which have no one to answer a 503 to. The core's
    /// `SOCKET_DELIVERIES_IN_FLIGHT_MAX` bounds them, and past that sockets stop reading.
    Unbounded,
}

/// The idle-eviction loop of one host.
async fn sweep(host: Weak<ObjectHost>, interval: Duration) {
    loop {
        glommio::timer::sleep(interval).await;
        let Some(host) = host.upgrade() else { return };
        if host.closing.get() {
            return;
        }
        host.evict_idle(Instant::now());
    }
}

/// Socket event deliveries one core runs at once; past it the event queue fills and sockets
/// stop reading.
const SOCKET_DELIVERIES_IN_FLIGHT_MAX: u64 = 1024;

/// Takes every socket event of the core and delivers it, at most
/// `SOCKET_DELIVERIES_IN_FLIGHT_MAX` at a time, in the order they arrived.
async fn deliver_socket_events(host: Weak<ObjectHost>, queue: Rc<crate::websocket::EventQueue>) {
    let slots = Rc::new(glommio::sync::Semaphore::new(
        SOCKET_DELIVERIES_IN_FLIGHT_MAX,
    ));
    loop {
        let Ok(permit) = slots.acquire_static_permit(1).await else {
            return;
        };
        let (socket, event) = queue.next().await;
        let Some(host) = host.upgrade() else { return };
        glommio::spawn_local(async move {
            host.deliver_socket_event(socket, event).await;
            drop(permit);
        })
        .detach();
    }
}
