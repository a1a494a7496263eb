//! One core: its executor, store, objects, listener, and the channels to the other cores.
//!
//! A core runs [`run_core`] on a pinned glommio executor. Start-up: connect the cross-core
//! channels (every core at once), open this core's store, check the classes of its objects
//! (`classes.rs`) and wait until every core has, delete the objects of deleted classes, start
//! the object host, bind the shared port
//! (core 0 first, so that port 0 resolves to one port that the others then bind too), report
//! ready. Shutdown, when the server's stop flag is set: stop accepting, let every connection
//! answer what it has in flight, wait until every core got that far (a connection may be
//! waiting on an object of another core), then close the objects and the store.

mod accept;
pub(crate) mod admin;
mod classes;
mod handler;
mod health;
mod mesh;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::TcpListener;
use stead_storage::Store;

pub use health::StoreHealth;
pub use mesh::{channels, Endpoints};

use crate::alarm::AlarmScheduler;
use crate::config::Config;
use crate::layout::{store_config, store_dir, Layout};
use crate::metrics::CoreMetrics;
use crate::object::{ClassRegistry, ObjectHost, UnknownClass};
use crate::shutdown::Shutdown;
use crate::wake::Handoff;
use crate::websocket::CloseCode;
use mesh::{Mesh, Message, Reply};

/// How often a core looks at the server's stop flag.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The largest answer a forwarded request may get from the owner.
const FORWARDED_RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Kept-alive connections to the owner one core keeps for forwarding.
const FORWARD_IDLE_CONNECTIONS_MAX: usize = 64;

/// How long shutdown waits for connections to finish their in-flight requests, and then for
/// the other cores to get as far.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What a core tells the thread that started it.
#[derive(Debug)]
pub enum CoreEvent {
    /// Core 0 bound the listening address (with the real port, if 0 was asked for).
    Bound(SocketAddr),
    /// The core serves.
    Ready { core: usize },
    /// The core checked the classes of its store's objects: these tags are of no registered
    /// class and no deleted one (empty when all is well).
    Checked {
        core: usize,
        unknown: Vec<UnknownClass>,
    },
    /// The core could not start.
    Failed { core: usize, reason: String },
}

/// Everything a core needs to start; made on the main thread and moved to the executor.
pub struct CoreStart {
    pub core: usize,
    pub layout: Layout,
    pub config: Arc<Config>,
    pub registry: Arc<ClassRegistry>,
    pub endpoints: Endpoints,
    /// Set once to stop the server.
    pub stop: Arc<AtomicBool>,
    /// Counts cores that finished draining their connections.
    pub drained: Arc<AtomicUsize>,
    /// Which cores' stores take no writes, for `/healthz`; shared by every core.
    pub health: Arc<StoreHealth>,
    /// Start-up progress, to the starting thread.
    pub events: mpsc::Sender<CoreEvent>,
    /// For cores other than 0: the address core 0 bound, once it has.
    pub bound_address: Option<mpsc::Receiver<SocketAddr>>,
    /// Gets `()` once every core checked its classes and none found an unknown one; closed
    /// without it when the start is called off.
    pub classes_checked: mpsc::Receiver<()>,
    /// In a cluster: this core's channels to the control thread (`src/cluster/`).
    pub cluster: Option<crate::cluster::ClusterLink>,
    /// The object creation limits' buckets, shared by every core.
    pub creations: Arc<crate::limits::CreationLimiter>,
    /// The tokens the server takes, shared by every core.
    pub auth: Arc<crate::auth::Auth>,
    /// The listener's TLS configuration, if it speaks TLS.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// The state of one core, shared by its tasks.
pub struct Shard {
    /// This core's index.
    core: usize,
    /// The object creation limits' buckets, shared by every core.
    creations: Arc<crate::limits::CreationLimiter>,
    /// In a cluster: the owner as last read (requests go there while it is another node).
    cluster_view: Option<Arc<crate::cluster::ClusterView>>,
    /// In a cluster: the client that forwards requests to the owner, with its kept-alive
    /// connections.
    forwarder: Option<crate::object::FetchClient>,
    /// Cores serving; an id's owner is `id.core(partitions, cores)`.
    cores: usize,
    /// Fixed by the data directory.
    partitions: u32,
    /// The server's configuration.
    config: Rc<Config>,
    /// Which classes exist.
    registry: Arc<ClassRegistry>,
    /// The objects this core owns.
    host: Rc<ObjectHost>,
    /// Delivers the alarms of this core's objects.
    alarms: Rc<AlarmScheduler>,
    /// Requests other cores forwarded here and still running, by (core, tag): a cancel from
    /// the sending core (its client went away) drops the request here too, as a local client's
    /// disconnect would. Bounded by `cross_core_requests_max` per sending core.
    forwarded_running: RefCell<HashMap<(usize, u64), Rc<Cancel>>>,
    /// The channels to the other cores.
    mesh: Mesh,
    /// Counters for `/metrics`.
    metrics: CoreMetrics,
    /// Which cores' stores take no writes, for `/healthz`.
    health: Arc<StoreHealth>,
    /// The tokens the server takes (this core's copy).
    auth: crate::auth::AuthCache,
    /// The listener's TLS configuration, if it speaks TLS.
    pub(super) tls: Option<Arc<crate::tls::Tls>>,
    /// The backups this core is giving its part of.
    backups: RefCell<admin::Backups>,
    /// Set when this core shuts down.
    shutdown: Rc<Shutdown>,
    /// `connections_per_core_max` slots, for accepted connections and for WebSockets handed
    /// over from other cores; shutdown waits until all are free.
    connection_slots: Rc<glommio::sync::Semaphore>,
}

impl Shard {
    fn snapshot(&self) -> crate::metrics::CoreSnapshot {
        self.metrics.snapshot(
            self.core,
            self.host.stats(),
            self.host.store().stats(),
            self.alarms.stats(),
            self.shutdown.waiters(),
        )
    }

    /// Handles one message from core `from`.
    fn receive(self: &Rc<Self>, from: usize, message: Message) {
        match message {
            Message::Dispatch {
                tag,
                class,
                id,
                name,
                request,
                client,
            } => {
                let shard = self.clone();
                let cancel: Rc<Cancel> = Rc::default();
                self.forwarded_running
                    .borrow_mut()
                    .insert((from, tag), cancel.clone());
                glommio::spawn_local(async move {
                    let dispatch = async {
                        if let Some(refused) = shard.refuse_creation(&class, Some(&id), client) {
                            return Some(refused);
                        }
                        let name = name.as_deref();
                        Some(shard.host.dispatch_named(&class, id, name, request).await)
                    };
                    let response = futures_lite::future::or(dispatch, async {
                        cancel.take().await;
                        None
                    })
                    .await;
                    shard.forwarded_running.borrow_mut().remove(&(from, tag));
                    let Some(response) = response else { return };
                    if shard
                        .mesh
                        .answer(from, Message::Response { tag, response })
                        .is_err()
                    {
                        tracing::debug!(from, "a forwarded request's core is gone");
                    }
                })
                .detach();
            }
            Message::Cancel { tag } => {
                if let Some(cancel) = self.forwarded_running.borrow_mut().remove(&(from, tag)) {
                    cancel.give(());
                }
            }
            Message::Response { tag, response } => {
                self.mesh.deliver(tag, Reply::Response(response))
            }
            Message::Upgrade {
                fd,
                class,
                id,
                name,
                request,
                unread,
                client,
            } => {
                use std::os::fd::FromRawFd;
                // SAFETY: the sending core made `fd` with dup(2) for this core alone and never
                // touches it again; from here the stream owns it and closes it when dropped.
                let stream = unsafe { glommio::net::TcpStream::from_raw_fd(fd) };
                let shard = self.clone();
                glommio::spawn_local(async move {
                    // The socket will live here, so it counts against this core's limit.
                    let Some(slot) = accept::ConnectionSlot::try_take(&shard) else {
                        handler::refuse_upgrade(stream).await;
                        return;
                    };
                    shard
                        .serve_upgrade(stream, unread, (class, id, name), request, client)
                        .await;
                    drop(slot);
                })
                .detach();
            }
            Message::Snapshot { tag } => {
                let snapshot = Box::new(self.snapshot());
                if self
                    .mesh
                    .answer(from, Message::SnapshotReply { tag, snapshot })
                    .is_err()
                {
                    tracing::debug!(from, "a metrics request's core is gone");
                }
            }
            Message::SnapshotReply { tag, snapshot } => {
                self.mesh.deliver(tag, Reply::Snapshot(snapshot))
            }
            Message::Admin { tag, op } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let reply = Box::new(shard.admin_here(op).await);
                    if shard
                        .mesh
                        .answer(from, Message::AdminReply { tag, reply })
                        .is_err()
                    {
                        tracing::debug!(from, "an admin request's core is gone");
                    }
                })
                .detach();
            }
            Message::AdminReply { tag, reply } => self.mesh.deliver(tag, Reply::Admin(reply)),
        }
    }
}

/// In a cluster: rebuilds the partitions the control thread hands this core
/// (`ReplayItem::Recover`: the assignment gave them to the node, or they were refused) and
/// releases those the assignment gave to another node (`ReplayItem::Release`), until the
/// control thread stops. A core serves no partition before its rebuild: until then the host
/// refuses its events (`Replication::refusal`) and requests for it go to its owner.
async fn follow_control(
    shard: Rc<Shard>,
    replication: Rc<crate::cluster::Replication>,
    mut replay: tokio::sync::mpsc::Receiver<crate::cluster::ReplayItem>,
) {
    use crate::cluster::ReplayItem;
    let core = shard.core;
    while let Some(item) = replay.recv().await {
        match item {
            ReplayItem::Recover(partitions, done) => {
                // Refused while they are rebuilt, whatever this core had heard of them.
                for partition in &partitions {
                    replication.begin_rebuild(*partition);
                }
                let outcome = match rebuild(&shard, &partitions, &mut replay).await {
                    Ok(batches) => {
                        for partition in &partitions {
                            replication.recovered(*partition);
                        }
                        tracing::info!(
                            core,
                            partitions = partitions.len(),
                            batches,
                            "partitions rebuilt from the log: serving them"
                        );
                        Ok(())
                    }
                    Err(reason) => {
                        tracing::warn!(core, "{reason}");
                        Err(reason)
                    }
                };
                let _ = done.send(outcome);
            }
            ReplayItem::Release(partitions, error, done) => {
                for partition in &partitions {
                    replication.release(*partition, error.clone());
                }
                let reason = error.to_string();
                if let Err(error) = forget_partitions(&shard, &partitions, &reason) {
                    tracing::warn!(core, %error, "released partitions stay in the store");
                }
                tracing::info!(core, partitions = partitions.len(), %reason, "partitions released");
                let _ = done.send(());
            }
            other => tracing::warn!(core, ?other, "a rebuild's item out of place; ignored"),
        }
    }
}

/// Takes the objects of `partitions` out of memory (their events fail with `reason`) and
/// deletes them from the store: this core no longer holds them.
fn forget_partitions(
    shard: &Shard,
    partitions: &[u32],
    reason: &str,
) -> Result<(), stead_storage::StoreError> {
    let (store, count) = (shard.host.store(), shard.partitions);
    let leaving = |id: &crate::id::ObjectId| partitions.contains(&id.partition(count));
    shard.host.forget_objects(leaving, reason);
    for id in store.objects() {
        if leaving(&crate::id::ObjectId(id)) {
            let mut batch = stead_storage::Batch::new();
            batch.delete_all().delete_alarm();
            store.commit(&id, batch)?;
        }
    }
    Ok(())
}

/// Rebuilds `partitions` from the stream (see `ReplayItem::Recover`): their objects leave
/// memory and the store, the batches the control thread sends are committed, their classes
/// are checked (and those a migration deletes deleted), and their alarms scheduled; the number
/// of batches. The partitions stay refused meanwhile (`Replication::recovered` ends that).
async fn rebuild(
    shard: &Shard,
    partitions: &[u32],
    replay: &mut tokio::sync::mpsc::Receiver<crate::cluster::ReplayItem>,
) -> Result<u64, String> {
    use crate::cluster::ReplayItem;
    let (core, store, count) = (shard.core, shard.host.store(), shard.partitions);
    let in_partitions = |id: &crate::id::ObjectId| partitions.contains(&id.partition(count));
    let failed = |error: stead_storage::StoreError| {
        format!("core {core}: cannot rebuild partitions {partitions:?}: {error}")
    };
    // After a failed commit the rest of the items are read and dropped.
    let mut error = forget_partitions(
        shard,
        partitions,
        "the partition is being rebuilt from the cluster's log",
    )
    .err()
    .map(failed);
    let mut batches = 0u64;
    loop {
        match replay.recv().await {
            Some(ReplayItem::Batch(id, batch)) => {
                if error.is_none() {
                    error = store.commit(&id.0, batch).err().map(failed);
                    batches += 1;
                }
            }
            Some(ReplayItem::Recovered(done)) if done == partitions => match error {
                Some(error) => return Err(error),
                None => break,
            },
            Some(ReplayItem::RecoverFailed(reason)) => {
                return Err(format!(
                    "the rebuild of partitions {partitions:?} failed: {reason}"
                ))
            }
            Some(other) => {
                return Err(format!(
                    "the rebuild of partitions {partitions:?} got an item out of place: {other:?}"
                ))
            }
            None => return Err("the control thread stopped".to_string()),
        }
    }
    store.wait_durable(store.last_seq()).await.map_err(failed)?;
    let check = classes::check(store, &shard.registry);
    if !check.unknown.is_empty() {
        let unknown: Vec<String> = check.unknown.iter().map(ToString::to_string).collect();
        return Err(format!(
            "core {core}: the log holds objects of classes this node does not have: {}",
            unknown.join("; ")
        ));
    }
    classes::delete_doomed(core, store, &shard.registry, check)
        .await
        .map_err(|error| {
            format!("core {core}: cannot delete the objects of deleted classes: {error}")
        })?;
    shard.alarms.load_stored_of(in_partitions);
    Ok(batches)
}

/// Given when the core that forwarded a request no longer wants its response.
type Cancel = Handoff<()>;

/// The body of core `start.core`'s executor: start, serve until stopped, shut down.
pub async fn run_core(start: CoreStart) {
    let core = start.core;
    let events = start.events.clone();
    let drained = start.drained.clone();
    if let Err(reason) = serve(start).await {
        tracing::error!(core, "{reason}");
        let _ = events.send(CoreEvent::Failed { core, reason });
        drained.fetch_add(1, Ordering::SeqCst);
    }
}

async fn serve(start: CoreStart) -> Result<(), String> {
    let CoreStart {
        core,
        layout,
        config,
        registry,
        endpoints,
        stop,
        drained,
        health,
        events,
        bound_address,
        classes_checked,
        cluster,
        creations,
        auth,
        tls,
    } = start;
    let config = Rc::new((*config).clone());
    let cores = layout.cores;
    let in_flight_max = config.objects.cross_core_requests_max.max(1);
    let (mesh, receivers) = Mesh::connect(endpoints, in_flight_max).await;
    let shutdown = Rc::new(Shutdown::new());
    glommio::spawn_local(watch_stop(stop.clone(), shutdown.clone())).detach();

    let dir = store_dir(&config.data_dir, layout.generation, core);
    let store = Store::open(store_config(&config, dir.clone()))
        .await
        .map_err(|error| {
            format!(
                "core {core}: cannot open the store in {}: {error}",
                dir.display()
            )
        })?;
    let check = classes::check(&store, &registry);
    let unknown = !check.unknown.is_empty();
    let _ = events.send(CoreEvent::Checked {
        core,
        unknown: check.unknown.clone(),
    });
    // Blocks this core's thread, like the wait for the bound address below: nothing of it runs
    // yet that another core could be waiting for.
    if unknown || classes_checked.recv().is_err() {
        // The server will not start; the store has only been read.
        if let Err(error) = store.close().await {
            tracing::warn!(core, %error, "closing the store after a refused start failed");
        }
        return Ok(());
    }
    classes::delete_doomed(core, &store, &registry, check)
        .await
        .map_err(|error| {
            format!("core {core}: cannot delete the objects of deleted classes: {error}")
        })?;
    let host = ObjectHost::new(store, registry.clone(), config.clone());
    let reporter = health.clone();
    host.set_store_failure_listener(Rc::new(move |reason| reporter.report(core, reason)));
    host.start_background();
    // Alarms keep firing while connections drain (a lock's lease may end then); they stop
    // only when the host stops taking events.
    let alarms_stop = Rc::new(Shutdown::new());
    let alarms = AlarmScheduler::start(host.clone(), alarms_stop.clone());
    let auth = crate::auth::AuthCache::new(auth);
    let forwarder = cluster.as_ref().map(|_| {
        crate::object::FetchClient::to_peers(crate::config::FetchSettings {
            allow_hosts: Vec::new(),
            timeout_ms: config
                .cluster
                .as_ref()
                .map_or(30_000, |settings| settings.forward_timeout_ms),
            response_bytes_max: FORWARDED_RESPONSE_BYTES_MAX,
            redirects_max: 0,
            idle_connections_per_host: FORWARD_IDLE_CONNECTIONS_MAX,
        })
    });
    let shard = Rc::new(Shard {
        core,
        creations,
        cluster_view: cluster.as_ref().map(|link| link.view.clone()),
        forwarder,
        cores,
        partitions: layout.partitions,
        config: config.clone(),
        registry,
        host: host.clone(),
        alarms,
        mesh,
        forwarded_running: RefCell::new(HashMap::new()),
        metrics: CoreMetrics::default(),
        health,
        auth,
        tls,
        backups: RefCell::default(),
        shutdown: shutdown.clone(),
        connection_slots: accept::connection_slots(config.http.connections_per_core_max),
    });
    host.set_router(Rc::new(handler::ShardRouter(Rc::downgrade(&shard))));
    if let Some(link) = cluster {
        let crate::cluster::ClusterLink {
            lease,
            view,
            append_bytes_max,
            appends,
            events,
            replay,
        } = link;
        let replication = crate::cluster::Replication::new(
            core,
            layout.partitions,
            (appends, append_bytes_max),
            (lease, view),
            (
                host.store().clone(),
                crate::object::store_limits(&config),
                config
                    .cluster
                    .as_ref()
                    .map_or(0, |cluster| cluster.snapshot_batches),
            ),
        );
        glommio::spawn_local(replication.clone().run(events)).detach();
        host.set_replication(replication.clone());
        glommio::spawn_local(follow_control(shard.clone(), replication, replay)).detach();
    }
    for (from, receiver) in receivers {
        glommio::spawn_local(receive_loop(shard.clone(), from, receiver)).detach();
    }
    // Holds only a weak reference: it ends with the core's metrics.
    glommio::spawn_local(crate::metrics::run_stall_probe(Rc::downgrade(
        &shard.metrics.stalls,
    )))
    .detach();

    let address = match bound_address {
        None => config.listen,
        Some(receiver) => receiver
            .recv()
            .map_err(|_| format!("core {core}: core 0 did not start"))?,
    };
    let listener = TcpListener::bind(address)
        .map_err(|error| format!("core {core}: cannot listen on {address}: {error}"))?;
    if core == 0 {
        let bound = listener
            .local_addr()
            .map_err(|error| format!("cannot read the bound address: {error}"))?;
        let _ = events.send(CoreEvent::Bound(bound));
    }
    let _ = events.send(CoreEvent::Ready { core });

    accept::accept_loop(shard.clone(), listener).await;
    let connections = shard.connection_slots.clone();
    // Events waiting on other clients (lock waiters) answer 503 now rather than hold the drain.
    host.begin_shutdown();

    // Shutdown: connections first (they may wait on other cores), then every core together.
    // WebSockets hold their connection until closed: start their closing handshakes now.
    host.sockets()
        .close_all(CloseCode::GOING_AWAY, "the server is shutting down");
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let connections_max = shard.config.http.connections_per_core_max as u64;
    let finished = futures_lite::future::or(
        async { connections.acquire(connections_max).await.is_ok() },
        async {
            glommio::timer::sleep(DRAIN_TIMEOUT).await;
            false
        },
    )
    .await;
    if !finished {
        tracing::warn!(core, "connections still open after the drain timeout");
    }
    drained.fetch_add(1, Ordering::SeqCst);
    while drained.load(Ordering::SeqCst) < cores && Instant::now() < deadline + DRAIN_TIMEOUT {
        glommio::timer::sleep(STOP_POLL_INTERVAL).await;
    }
    // Events that wait on something that never comes (a lock waiter whose connection outlived
    // the drain) must not hold the process forever: past the timeout the store is closed with
    // whatever was committed, and the executor drops the rest.
    alarms_stop.request();
    let closed = futures_lite::future::or(
        async {
            host.shutdown().await;
            true
        },
        async {
            glommio::timer::sleep(DRAIN_TIMEOUT).await;
            false
        },
    )
    .await;
    if !closed {
        tracing::warn!(
            core,
            "events still running after the drain timeout; closing the store"
        );
        if let Err(error) = host.store().close().await {
            tracing::error!(core, %error, "closing the store failed");
        }
    }
    Ok(())
}

/// Turns the server-wide stop flag into this core's shutdown signal.
async fn watch_stop(stop: Arc<AtomicBool>, shutdown: Rc<Shutdown>) {
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(STOP_POLL_INTERVAL).await;
    }
    shutdown.request();
}

/// Handles every message from core `from` until that core stops.
async fn receive_loop(shard: Rc<Shard>, from: usize, receiver: ConnectedReceiver<Message>) {
    while let Some(message) = receiver.recv().await {
        shard.receive(from, message);
    }
}
