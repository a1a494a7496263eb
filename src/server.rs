//! The public entry point: build a server from a configuration and classes, start its cores,
//! stop it.
//!
//! ```no_run
//! # use stead::{Config, Server};
//! let server = Server::builder().config(Config::default()).builtins().build();
//! server.run().expect("the server stopped with an error");
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use glommio::{LocalExecutorBuilder, Placement};

use crate::config::Config;
use crate::layout::{self, LayoutError};
use crate::object::{ClassRegistry, DurableObject, MigrationError, RegistryError, UnknownClass};
use crate::shard::{channels, run_core, CoreEvent, CoreStart, StoreHealth};

/// Locked memory each core's executor registers for I/O. The machine's locked-memory limit is
/// shared by every core, and the storage engine reads through ordinary buffers when this pool
/// is used up, so it stays small.
const CORE_IO_MEMORY_BYTES: usize = 512 * 1024;

/// Why the server could not start or stopped with an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    /// A class could not be registered.
    Registry(RegistryError),
    /// The configuration is not usable.
    Config(String),
    /// The data directory is not usable.
    Layout(LayoutError),
    /// The class migrations do not fit the registered classes.
    Migration(MigrationError),
    /// The data directory holds objects of classes that are neither registered nor deleted by
    /// a migration (summed over the cores, by tag).
    UnknownClasses(Vec<UnknownClass>),
    /// A core could not start.
    Core { core: usize, reason: String },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Registry(error) => write!(f, "{error}"),
            ServerError::Config(reason) => write!(f, "invalid configuration: {reason}"),
            ServerError::Layout(error) => write!(f, "data directory: {error}"),
            ServerError::Migration(error) => write!(f, "invalid class migrations: {error}"),
            ServerError::UnknownClasses(unknown) => {
                write!(
                    f,
                    "refusing to start: the data directory holds objects of classes that are not \
                     registered (an object's data names its class only by a tag, the first 8 \
                     bytes of its id, never by name):"
                )?;
                for class in unknown {
                    write!(f, "\n  {class}")?;
                }
                Ok(())
            }
            ServerError::Core { core, reason } => write!(f, "core {core}: {reason}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// Collects the configuration and the classes of a server.
#[derive(Default)]
pub struct ServerBuilder {
    /// Where, how many cores, limits.
    config: Config,
    /// The classes registered so far.
    registry: ClassRegistry,
    /// The first registration error; reported by `start`, so the builder chains.
    error: Option<RegistryError>,
}

impl ServerBuilder {
    pub fn config(mut self, config: Config) -> ServerBuilder {
        self.config = config;
        self
    }

    /// Registers class `T`, reached at `/objects/{name}/…`.
    pub fn class<T: DurableObject>(mut self, name: &str) -> ServerBuilder {
        if let Err(error) = self.registry.register::<T>(name) {
            self.error.get_or_insert(error);
        }
        self
    }

    /// Registers the built-in classes (`counter`, `ratelimiter`, …).
    pub fn builtins(mut self) -> ServerBuilder {
        if let Err(error) = crate::objects::register_builtins(&mut self.registry) {
            self.error.get_or_insert(error);
        }
        self
    }

    pub fn build(self) -> Server {
        Server { builder: self }
    }
}

/// In a cluster the local store is a copy of the stream, rebuilt at every start: the data
/// directory's `replica` folder is emptied and used in its place.
fn prepare_replica_dir(data_dir: &std::path::Path) -> Result<std::path::PathBuf, ServerError> {
    let dir = data_dir.join("replica");
    let failed = |error: std::io::Error| {
        ServerError::Config(format!(
            "cluster: cannot prepare {} for the rebuilt store: {error}",
            dir.display()
        ))
    };
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed(error)),
    }
    std::fs::create_dir_all(&dir).map_err(failed)?;
    Ok(dir)
}

/// A configured server, not yet started.
pub struct Server {
    /// What it was built from.
    builder: ServerBuilder,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Starts, then serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub fn run(self) -> Result<(), ServerError> {
        wait_for_signal(self.start()?, |_| {})
    }

    /// Starts every core and returns once all of them serve.
    pub fn start(self) -> Result<RunningServer, ServerError> {
        let ServerBuilder {
            config,
            mut registry,
            error,
        } = self.builder;
        if let Some(error) = error {
            return Err(ServerError::Registry(error));
        }
        validate(&config)?;
        registry
            .apply_migrations(&config.migrations)
            .map_err(ServerError::Migration)?;
        if let Some(unknown) = config.classes.keys().find(|name| !registry.contains(name)) {
            return Err(ServerError::Config(format!(
                "[classes.{unknown}]: no class {unknown:?} is registered"
            )));
        }
        let auth = crate::auth::Auth::load(
            (config.auth_token.clone(), config.admin_token.clone()),
            config.auth.tokens_file.clone(),
            registry.names().map(str::to_string).collect(),
        )
        .map_err(|error| ServerError::Config(error.to_string()))?;
        let auth = Arc::new(auth);
        let tls = match &config.tls {
            Some(settings) => Some(Arc::new(
                crate::tls::Tls::load(&settings.cert_file, &settings.key_file)
                    .map_err(|error| ServerError::Config(error.to_string()))?,
            )),
            None => None,
        };
        crate::object::set_heap_limit(config.sql.heap_bytes_max);
        // A class pinned to another jurisdiction: a single node refuses to start (it would
        // store the class's objects); a cluster node starts, but never owns the partitions.
        let jurisdiction_mismatch = config.jurisdiction_mismatch();
        if let (Some(reason), None) = (&jurisdiction_mismatch, &config.cluster) {
            return Err(ServerError::Config(format!(
                "jurisdiction: {reason}: this node may not store its objects"
            )));
        }
        let mut config = config;
        config.load_keys().map_err(ServerError::Config)?;
        if config.cluster.is_some() {
            config.data_dir = prepare_replica_dir(&config.data_dir)?;
        }
        let layout = layout::prepare(&config).map_err(ServerError::Layout)?;
        let cores = layout.cores;
        let mut cluster_shutdown = None;
        let mut cluster_view = None;
        let mut cluster_links = match &config.cluster {
            Some(settings) => {
                // The assignment gives a joining node partitions: first make sure it can serve.
                if let Err(error) = can_listen(config.listen) {
                    return Err(ServerError::Config(format!(
                        "cannot listen on {}: {error} (checked before joining the cluster, \
                         which would give this node partitions)",
                        config.listen
                    )));
                }
                let started = crate::cluster::start(
                    settings,
                    (layout.partitions, cores),
                    jurisdiction_mismatch.clone(),
                )
                .map_err(|error| ServerError::Config(error.to_string()))?;
                tracing::info!("joined the cluster (a standby until this node holds the lease)");
                cluster_shutdown = Some(started.shutdown);
                cluster_view = Some(started.view);
                started.links.into_iter().map(Some).collect()
            }
            None => Vec::new(),
        };
        let available = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let config = Arc::new(config);
        let registry = Arc::new(registry);
        let stop = Arc::new(AtomicBool::new(false));
        let drained = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(StoreHealth::new(cores));
        let creations = Arc::new(crate::limits::CreationLimiter::default());
        let (events_sender, events) = mpsc::channel();
        let capacity = 2 * config.objects.cross_core_requests_max.max(1);
        // Spinning saves a peer's wake-up only if the spinning core has a CPU of its own; with
        // more cores than CPUs two executors share one, and a spinning one takes the time the
        // other needs to do the very work it waits for.
        let spin_before_park = config.spin_before_park().filter(|_| cores <= available);
        if cores > available && config.spin_before_park().is_some() {
            tracing::info!(
                cores,
                available,
                "more cores than CPUs: spin_before_park_us is ignored"
            );
        }
        let mut address_senders = Vec::new();
        let mut checked_senders = Vec::with_capacity(cores);
        let mut threads = Vec::with_capacity(cores);
        for (core, endpoints) in channels(cores, capacity).into_iter().enumerate() {
            let bound_address = if core == 0 {
                None
            } else {
                let (sender, receiver) = mpsc::channel();
                address_senders.push(sender);
                Some(receiver)
            };
            let (checked_sender, classes_checked) = mpsc::channel();
            checked_senders.push(checked_sender);
            let start = CoreStart {
                core,
                layout,
                config: config.clone(),
                registry: registry.clone(),
                endpoints,
                stop: stop.clone(),
                drained: drained.clone(),
                health: health.clone(),
                events: events_sender.clone(),
                bound_address,
                classes_checked,
                cluster: cluster_links.get_mut(core).and_then(Option::take),
                creations: creations.clone(),
                auth: auth.clone(),
                tls: tls.clone(),
            };
            let mut executor = LocalExecutorBuilder::new(Placement::Fixed(core % available))
                .name(&format!("stead-core-{core}"))
                .io_memory(CORE_IO_MEMORY_BYTES);
            if let Some(spin) = spin_before_park {
                executor = executor.spin_before_park(spin);
            }
            let spawned = executor.spawn(move || run_core(start));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(error) => {
                    stop.store(true, Ordering::SeqCst);
                    drop(address_senders);
                    drop(checked_senders);
                    join_all(threads);
                    return Err(ServerError::Core {
                        core,
                        reason: format!("cannot start its executor: {error}"),
                    });
                }
            }
        }
        drop(events_sender);
        let running = RunningServer {
            address: config.listen,
            stop,
            threads,
            cluster: cluster_shutdown,
            auth,
            tls,
        };
        // No core deletes or serves anything before every core's objects are of known classes.
        if let Err(error) = await_class_checks(&events, cores) {
            drop(checked_senders);
            drop(address_senders);
            running.stop();
            let _ = running.wait();
            return Err(error);
        }
        for sender in checked_senders {
            let _ = sender.send(());
        }
        let mut ready = 0;
        let mut address = None;
        while ready < cores {
            match events.recv() {
                Ok(CoreEvent::Bound(bound)) => {
                    address = Some(bound);
                    if let (Some(view), Some(settings)) = (&cluster_view, &config.cluster) {
                        match advertised(settings, bound) {
                            Some(advertise) => view.set_advertise(advertise),
                            None => tracing::warn!(
                                %bound,
                                "cluster: listening on an unspecified address without \
                                 --advertise: the other nodes cannot forward requests to this one"
                            ),
                        }
                    }
                    for sender in address_senders.drain(..) {
                        let _ = sender.send(bound);
                    }
                }
                Ok(CoreEvent::Ready { core }) => {
                    tracing::debug!(core, "core ready");
                    ready += 1;
                }
                Ok(CoreEvent::Checked { core, .. }) => {
                    unreachable!("core {core} checked its classes twice")
                }
                Ok(CoreEvent::Failed { core, reason }) => {
                    drop(address_senders);
                    running.stop();
                    let _ = running.wait();
                    return Err(ServerError::Core { core, reason });
                }
                Err(_) => {
                    let _ = running.wait();
                    return Err(ServerError::Core {
                        core: 0,
                        reason: "the cores stopped during start-up".into(),
                    });
                }
            }
        }
        let address = address.unwrap_or(config.listen);
        Ok(RunningServer { address, ..running })
    }
}

/// Whether `tag` is a jurisdiction tag: 1 to 32 lowercase letters, digits, '-' or '_'.
fn is_tag(tag: &str) -> bool {
    (1..=32).contains(&tag.len())
        && tag
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"-_".contains(&byte))
}

/// Where the other nodes of the cluster reach this node: `advertise`, else the bound address
/// unless it is unspecified (`0.0.0.0`, `::`).
fn advertised(settings: &crate::config::ClusterSettings, bound: SocketAddr) -> Option<String> {
    match &settings.advertise {
        Some(advertise) => Some(advertise.clone()),
        None if bound.ip().is_unspecified() => None,
        None => Some(bound.to_string()),
    }
}

/// Whether `address` is `HOST:PORT` (`[v6]:PORT` for an IPv6 address) with a port above 0.
fn is_host_and_port(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-')
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|port| port > 0)
}

/// Waits until every core checked the classes of its objects; an error if one could not start
/// or some found objects of unknown classes (all of them reported, summed by tag).
fn await_class_checks(events: &mpsc::Receiver<CoreEvent>, cores: usize) -> Result<(), ServerError> {
    let mut unknown: Vec<UnknownClass> = Vec::new();
    for _ in 0..cores {
        match events.recv() {
            Ok(CoreEvent::Checked {
                core,
                unknown: found,
            }) => {
                tracing::debug!(core, unknown = found.len(), "core checked its classes");
                for class in found {
                    match unknown.iter_mut().find(|known| known.tag == class.tag) {
                        Some(known) => known.objects += class.objects,
                        None => unknown.push(class),
                    }
                }
            }
            Ok(CoreEvent::Failed { core, reason }) => {
                return Err(ServerError::Core { core, reason })
            }
            Ok(event @ (CoreEvent::Bound(_) | CoreEvent::Ready { .. })) => {
                unreachable!("a core serves only after the class checks: {event:?}")
            }
            Err(_) => {
                return Err(ServerError::Core {
                    core: 0,
                    reason: "the cores stopped during start-up".into(),
                })
            }
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_by_key(|class| class.tag);
    Err(ServerError::UnknownClasses(unknown))
}

/// Serves until SIGINT or SIGTERM, then shuts `running` down gracefully and waits for it.
/// SIGHUP reads the token file again.
///
/// `on_ready` runs once the handlers are installed: announce the server there (print its
/// address), so that a signal sent by whoever read the announcement is never missed (before
/// the handlers exist, SIGTERM's default action would kill the process without a drain).
pub fn wait_for_signal(
    running: RunningServer,
    on_ready: impl FnOnce(&RunningServer),
) -> Result<(), ServerError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (stop, (auth, tls)) = running.control();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|error| ServerError::Config(format!("cannot install signal handlers: {error}")))?;
    let handle = signals.handle();
    on_ready(&running);
    std::thread::Builder::new()
        .name("stead-signals".to_string())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match auth.reload() {
                        Ok(tokens) => tracing::info!(tokens, "SIGHUP: tokens read again"),
                        Err(error) => {
                            tracing::error!(%error, "SIGHUP: the tokens stay as they were")
                        }
                    }
                    match tls.as_ref().map(|tls| tls.reload()) {
                        None => {}
                        Some(Ok(())) => tracing::info!("SIGHUP: TLS certificate read again"),
                        Some(Err(error)) => {
                            tracing::error!(%error, "SIGHUP: the TLS certificate stays as it was")
                        }
                    }
                    continue;
                }
                tracing::info!(signal, "shutting down");
                stop.store(true, Ordering::SeqCst);
                break;
            }
        })
        .map_err(|error| ServerError::Config(format!("cannot start the signal thread: {error}")))?;
    let result = running.wait();
    handle.close();
    result
}

/// Refuses settings that cannot work, before anything is opened.
/// The largest `http.object_name_bytes_max`: a name is stored with its object, in room every
/// batch keeps for it.
const OBJECT_NAME_BYTES_MAX: usize = 65_536;

/// The smallest `sql.heap_bytes_max`: below it SQLite could not open a few databases.
const SQL_HEAP_BYTES_MIN: u64 = 8 * 1024 * 1024;

/// The largest `storage.value_bytes_max`: a quarter of the engine's batch.
const STORED_VALUE_BYTES_MAX: usize = 4 * 1024 * 1024;

fn validate(config: &Config) -> Result<(), ServerError> {
    let problem = if config.http.body_bytes_max == 0 {
        Some("http.body_bytes_max must be positive")
    } else if config.http.connections_per_core_max == 0 {
        Some("http.connections_per_core_max must be positive")
    } else if config.objects.object_events_queued_max == 0 {
        Some("objects.object_events_queued_max must be positive")
    } else if config.storage.value_bytes_max > STORED_VALUE_BYTES_MAX {
        // A value, its history's undo entry and a restore's copy must fit one 16 MiB batch.
        Some("storage.value_bytes_max must be at most 4 MiB (4194304)")
    } else if config.storage.partitions == 0 {
        Some("storage.partitions must be positive")
    } else if config
        .cluster
        .as_ref()
        .is_some_and(|cluster| cluster.lease_ms < 1000 || cluster.ack_timeout_ms == 0)
    {
        Some("cluster.lease_ms must be at least 1000 and cluster.ack_timeout_ms positive")
    } else if config.cluster.as_ref().is_some_and(|cluster| {
        cluster
            .advertise
            .as_deref()
            .is_some_and(|advertise| !is_host_and_port(advertise))
    }) {
        Some("cluster.advertise (--advertise) must be HOST:PORT, e.g. 10.0.0.1:8080")
    } else if config
        .cluster
        .as_ref()
        .is_some_and(|cluster| cluster.forward_timeout_ms == 0)
    {
        Some("cluster.forward_timeout_ms must be positive")
    } else if config.storage.compaction_dead_percent_min > 100 {
        // Dead bytes are a share of all bytes: past 100 compaction would never start.
        Some("storage.compaction_dead_percent_min must be at most 100")
    } else if config.sql.heap_bytes_max < SQL_HEAP_BYTES_MIN {
        Some("sql.heap_bytes_max must be at least 8 MiB (8388608)")
    } else if config.tls.is_some() && config.cluster.is_some() {
        // The nodes forward requests to each other over plain HTTP (`FetchClient::to_peers`),
        // which a TLS listener does not take.
        Some("[tls] and a cluster cannot be combined yet: nodes forward requests to each other over plain HTTP")
    } else if config.auth_token.as_deref() == Some("") {
        Some("auth_token must not be empty")
    } else if config.admin_token.as_deref() == Some("") {
        Some("admin_token must not be empty")
    } else if config
        .jurisdiction
        .iter()
        .chain(
            config
                .classes
                .values()
                .filter_map(|c| c.jurisdiction.as_ref()),
        )
        .any(|tag| !is_tag(tag))
    {
        Some("a jurisdiction must be 1 to 32 lowercase letters, digits, '-' or '_'")
    } else if config.http.object_name_bytes_max > OBJECT_NAME_BYTES_MAX {
        Some("http.object_name_bytes_max must be at most 65536")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ServerError::Config(problem.to_string())),
        None => Ok(()),
    }
}

/// A server whose cores are serving.
pub struct RunningServer {
    /// Where it listens (the real port when 0 was asked for).
    address: SocketAddr,
    /// Set to stop every core.
    stop: Arc<AtomicBool>,
    /// The cores' executor threads.
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    /// In a cluster: gives the lease up once the cores have stopped.
    cluster: Option<crate::cluster::ClusterShutdown>,
    /// The tokens the cores take, read again by `reload_tokens`.
    auth: Arc<crate::auth::Auth>,
    /// The listener's TLS certificate, if it speaks TLS; read again on SIGHUP.
    tls: Option<Arc<crate::tls::Tls>>,
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Reads the token file again (SIGHUP): the next request on every core sees the new
    /// tokens. A file that cannot be read or is invalid leaves the tokens as they were.
    /// Returns how many tokens the server takes now.
    pub fn reload_tokens(&self) -> Result<usize, crate::auth::AuthError> {
        self.auth.reload()
    }

    /// Reads the TLS certificate and key again (SIGHUP); on an error the old ones stay. New
    /// connections get the new certificate; open ones keep theirs.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    /// What the signal thread needs: the stop flag, the tokens and the TLS certificate.
    fn control(&self) -> (Arc<AtomicBool>, Reloadable) {
        (self.stop.clone(), (self.auth.clone(), self.tls.clone()))
    }

    /// Asks every core to shut down gracefully; `wait` returns when they have.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits until every core has stopped.
    pub fn wait(self) -> Result<(), ServerError> {
        let failed = join_all(self.threads);
        // Nothing is served any more: a standby may take over at once.
        if let Some(cluster) = self.cluster {
            cluster.wait();
        }
        match failed {
            Some(core) => Err(ServerError::Core {
                core,
                reason: "its executor panicked".to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// What SIGHUP reads again: the tokens, and the TLS certificate if the listener has one.
type Reloadable = (Arc<crate::auth::Auth>, Option<Arc<crate::tls::Tls>>);

/// Joins every thread; the first that panicked, if any.
fn join_all(threads: Vec<glommio::ExecutorJoinHandle<()>>) -> Option<usize> {
    let mut failed = None;
    for (core, thread) in threads.into_iter().enumerate() {
        if thread.join().is_err() {
            failed.get_or_insert(core);
        }
    }
    failed
}

/// Whether a cluster node can listen on `address` before it joins: nothing answers there (a
/// server already listening would share the port, since the cores bind with SO_REUSEPORT),
/// and a socket bound the way the cores bind it can listen. A plain bind would refuse the port
/// while the previous run's connections are still closing on it (a peer that has not closed
/// its side yet), which is the common case right after a restart.
fn can_listen(address: std::net::SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let probe = match address.ip() {
        ip if ip.is_unspecified() && address.is_ipv4() => {
            std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, address.port()))
        }
        ip if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, address.port()))
        }
        _ => address,
    };
    if address.port() != 0
        && std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_secs(1)).is_ok()
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another server answers there",
        ));
    }
    let domain = if address.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sql_heap_below_the_minimum_is_refused_at_start() {
        let mut config = Config::default();
        assert!(validate(&config).is_ok());
        config.sql.heap_bytes_max = SQL_HEAP_BYTES_MIN - 1;
        let error = validate(&config).expect_err("too small");
        assert!(error.to_string().contains("sql.heap_bytes_max"), "{error}");
    }
}
