//! Every limit and setting of the server, each a named value with its unit last.
//!
//! Values come from defaults, then an optional TOML file (`--config stead.toml`, same field
//! names), then command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Limits on what one HTTP request may carry. Past a limit the request gets its status code
/// (413, 431, 400) and the connection is closed cleanly.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Request line plus all headers, in bytes (431 past it).
    pub header_bytes_max: usize,
    /// Number of header fields (431 past it).
    pub header_count_max: usize,
    /// Request body, in bytes (413 past it).
    pub body_bytes_max: usize,
    /// Object name after percent-decoding, in bytes (400 past it).
    pub object_name_bytes_max: usize,
    /// Requests of one connection being answered at once (pipelining depth); reading pauses
    /// past it.
    pub pipeline_requests_max: usize,
    /// Encoded responses of one connection that the client has not taken yet, in bytes; past
    /// it no new request is started until the client reads (so a connection holds at most this
    /// plus the responses of `pipeline_requests_max` requests).
    pub response_bytes_buffered_max: usize,
    /// A connection with responses to send whose client takes no byte for this long is closed.
    pub write_timeout_ms: u64,
    /// A connection with no complete request for this long is closed (one waiting to write is
    /// left to `write_timeout_ms`).
    pub idle_connection_timeout_ms: u64,
    /// Open connections of one core; past it the core stops accepting until one closes (new
    /// clients wait in the kernel's backlog rather than costing memory here). A WebSocket
    /// counts on the core that owns its object: one handed over to a full core gets 503.
    pub connections_per_core_max: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_bytes_max: 16 * 1024,
            header_count_max: 64,
            body_bytes_max: 1024 * 1024,
            object_name_bytes_max: 1024,
            pipeline_requests_max: 128,
            response_bytes_buffered_max: 1024 * 1024,
            write_timeout_ms: 30_000,
            idle_connection_timeout_ms: 60_000,
            connections_per_core_max: 10_000,
        }
    }
}

/// How objects are hosted on a core.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectLimits {
    /// Events of one object waiting or running at once; past it requests get 503.
    pub object_events_queued_max: usize,
    /// An object with no event for this long is evicted from memory.
    pub idle_evict_ms: u64,
    /// Requests in flight between two cores, per direction; past it requests get 503.
    pub cross_core_requests_max: usize,
    /// Whether an object reached by name stores its name (one more key per object, about
    /// 140 bytes of memory each; see BENCHMARKS.md), so that the admin API can show and filter
    /// by it. Off, objects are listed by id only.
    pub keep_names: bool,
    /// How deep a chain of calls between objects may go (A calls B calls C …); a call past it
    /// fails with 508 instead of looping.
    pub call_depth_max: u32,
    /// New objects one client (its bearer token, else its IP address) may create per second,
    /// per class, with a burst of as many; past it the request is answered 429. 0: no limit.
    /// `[classes.NAME] creations_per_second` overrides it for one class.
    pub creations_per_second: u32,
}

impl Default for ObjectLimits {
    fn default() -> ObjectLimits {
        ObjectLimits {
            object_events_queued_max: 1024,
            idle_evict_ms: 30_000,
            cross_core_requests_max: 4096,
            keep_names: true,
            call_depth_max: 16,
            creations_per_second: 0,
        }
    }
}

/// Storage settings passed to each core's storage engine.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Largest stored value, in bytes.
    pub value_bytes_max: usize,
    /// A log segment is sealed past this size.
    pub segment_bytes_max: u64,
    /// How far ahead of the log writer segment blocks are zero-filled and synced, so a group
    /// commit is one overwrite with no file-size change (0 = off; at most the segment size).
    pub segment_prepare_bytes: u64,
    /// Group-commit rounds the log writer keeps in flight: 2 issues the next round's durable
    /// write while the previous one is still in the device, 1 waits for each (1 or 2).
    pub rounds_in_flight: u8,
    /// Compaction starts once this many record bytes (padding not counted) are dead ...
    pub compaction_dead_bytes_min: u64,
    /// ... and the dead bytes are at least this percentage of all record bytes.
    pub compaction_dead_percent_min: u8,
    /// Partitions of a new data directory (fixed once it is created).
    pub partitions: u32,
    /// How long objects keep the history that point-in-time recovery goes back through, in
    /// milliseconds, unless their class sets its own (`[classes.NAME]`); 0 keeps none.
    pub history_retention_ms: u64,
    /// Encryption at rest: the key file (`src/encryption.rs`); unset: stored in plain text.
    pub encryption_key_file: Option<PathBuf>,
}

impl Default for StorageSettings {
    fn default() -> StorageSettings {
        StorageSettings {
            value_bytes_max: 128 * 1024,
            segment_bytes_max: 64 * 1024 * 1024,
            segment_prepare_bytes: 4 * 1024 * 1024,
            rounds_in_flight: 2,
            compaction_dead_bytes_min: 64 * 1024 * 1024,
            compaction_dead_percent_min: 50,
            partitions: 4096,
            history_retention_ms: 0,
            encryption_key_file: None,
        }
    }
}

/// Limits of each object's SQL database (`ObjectContext::storage().sql()`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SqlSettings {
    /// Largest SQL database of one object, in bytes; a write past it fails with SQLite's
    /// "database or disk is full" and changes nothing. The whole database of an active object
    /// is in memory, so this is also a bound on its memory.
    pub database_bytes_max: u64,
    /// SQLite virtual-machine steps one statement may run before it is interrupted with an
    /// error, so that a runaway query (a recursive CTE without end) cannot hold its core.
    /// Counted in units of `STEPS_PER_PROGRESS_CALL` (1,000); about 5 ns a step.
    pub statement_steps_max: u64,
    /// Longest SQL text one `exec` takes, in bytes.
    pub statement_bytes_max: usize,
    /// Most rows one `exec` returns; a statement that would return more fails.
    pub result_rows_max: usize,
    /// Most bytes of values one `exec` returns (text and blobs at their length, other values
    /// at 8 bytes); a statement that would return more fails.
    pub result_bytes_max: usize,
    /// Memory SQLite may allocate, for every object's database of the process together: page
    /// caches, sorts, temporary tables, values. A statement that needs more fails with an
    /// error naming this limit and is rolled back (the pages themselves are stead's memory,
    /// bounded by `database_bytes_max`).
    pub heap_bytes_max: u64,
}

impl Default for SqlSettings {
    fn default() -> SqlSettings {
        SqlSettings {
            database_bytes_max: 1024 * 1024 * 1024,
            statement_steps_max: 10_000_000,
            statement_bytes_max: 100_000,
            result_rows_max: 1_000_000,
            result_bytes_max: 32 * 1024 * 1024,
            heap_bytes_max: 1024 * 1024 * 1024,
        }
    }
}

/// The built-in rate limiter's defaults, overridable per call with `?limit=N&windowMs=M`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitDefaults {
    /// Requests allowed per window.
    pub limit: u32,
    /// Window length, in milliseconds.
    pub window_ms: u64,
}

impl Default for RateLimitDefaults {
    fn default() -> RateLimitDefaults {
        RateLimitDefaults {
            limit: 100,
            window_ms: 60_000,
        }
    }
}

/// The built-in scheduler's bounds.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerLimits {
    /// Shortest `repeatMs` a repeating event may ask for, in milliseconds (400 below it). Every
    /// firing is a durable write, so a 1 ms repeat would cost about a thousand fdatasyncs a
    /// second for one event.
    pub repeat_ms_min: u64,
}

impl Default for SchedulerLimits {
    fn default() -> SchedulerLimits {
        SchedulerLimits {
            repeat_ms_min: 1_000,
        }
    }
}

/// One step of the classes' history, as the hosted system declares it (`[[migrations]]`).
/// Migrations are applied in order at every start: they change no data but the deletions,
/// which find nothing left to delete on the next start.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// The migration's name, unique among them, for error messages (`"v2"`).
    pub tag: String,
    /// Classes that start here; each must be registered unless a later migration renames or
    /// deletes it.
    #[serde(default)]
    pub new_classes: Vec<String>,
    /// Classes that take a new name and keep their objects (their ids stay valid).
    #[serde(default)]
    pub renamed_classes: Vec<ClassRename>,
    /// Classes whose objects are deleted at start-up; none of them may be registered.
    #[serde(default)]
    pub deleted_classes: Vec<String>,
}

/// `{ from = "old", to = "new" }` in `renamed_classes`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClassRename {
    /// The name the class had.
    pub from: String,
    /// The name it is registered under from now on.
    pub to: String,
}

/// Outgoing HTTP from objects (`ObjectContext::fetch`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FetchSettings {
    /// Hosts objects may reach: `name`, `name:port`, `address` or `address:port` (`[v6]:port`);
    /// empty (the default) denies every request. A listed name must resolve to public
    /// addresses only; to reach a private one, list the address itself.
    pub allow_hosts: Vec<String>,
    /// The whole exchange (resolving, connecting, redirects, the answer) within this.
    pub timeout_ms: u64,
    /// Largest answer body.
    pub response_bytes_max: usize,
    /// Redirects followed (each hop checked against the allow list); 0 answers them as they are.
    pub redirects_max: u32,
    /// Kept-alive connections per host and core.
    pub idle_connections_per_host: usize,
}

impl Default for FetchSettings {
    fn default() -> FetchSettings {
        FetchSettings {
            allow_hosts: Vec::new(),
            timeout_ms: 10_000,
            response_bytes_max: 8 * 1024 * 1024,
            redirects_max: 0,
            idle_connections_per_host: 8,
        }
    }
}

/// Scoped tokens (`[auth]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The token file (`stead token add|list|revoke` edit it; SIGHUP reloads it): each
    /// token's name, SHA-256, classes and permissions. Set, every request but /healthz needs
    /// one of its tokens (or `auth_token`).
    pub tokens_file: Option<PathBuf>,
}

/// TLS on the listener (`[tls]`): PEM files, read at start and on SIGHUP.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Settings of one class (`[classes.NAME]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClassSettings {
    /// How long the class's objects keep history, in milliseconds; unset:
    /// `storage.history_retention_ms`.
    pub history_retention_ms: Option<u64>,
    /// New objects of the class one client may create per second; unset:
    /// `objects.creations_per_second`.
    pub creations_per_second: Option<u32>,
    /// The jurisdiction the class's objects must stay in: only a node whose `jurisdiction`
    /// is this tag stores and serves them.
    pub jurisdiction: Option<String>,
}

/// The whole server configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every core listens on (SO_REUSEPORT spreads connections over cores).
    pub listen: SocketAddr,
    /// Where each core's storage lives.
    pub data_dir: PathBuf,
    /// Cores to run on; 0 means every core of the machine.
    pub cores: usize,
    /// How long a core with nothing to do polls for work before it parks its thread, in
    /// microseconds; 0 parks at once. A message from another core to a parked core costs a
    /// wake-up of its thread (about 100 µs of a cross-core round trip on a virtual machine);
    /// a core still spinning picks it up within microseconds. The price is CPU: an idle core
    /// burns up to this long after each burst of work, time a load generator or another
    /// process on the same CPU does not get.
    pub spin_before_park_us: u64,
    /// When set, every request but `/healthz` needs `Authorization: Bearer <token>`.
    pub auth_token: Option<String>,
    /// The token the admin API (`/admin/…`) needs; without it the admin API takes the auth
    /// token, and with neither it is off (403).
    pub admin_token: Option<String>,
    /// Scoped tokens (`[auth]`).
    pub auth: AuthSettings,
    /// HTTPS and WSS on the listener (`[tls]`); None: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Serve a fixed body on every route (the benchmark floor), no objects.
    pub hello: bool,
    /// This node's jurisdiction tag (e.g. `eu`): a class pinned to a jurisdiction
    /// (`[classes.NAME] jurisdiction`) is stored and served only on nodes with its tag.
    pub jurisdiction: Option<String>,
    pub http: HttpLimits,
    pub objects: ObjectLimits,
    pub storage: StorageSettings,
    pub sql: SqlSettings,
    pub ratelimit: RateLimitDefaults,
    pub scheduler: SchedulerLimits,
    /// Limits of every WebSocket.
    pub websocket: crate::websocket::WebSocketLimits,
    /// Renamed and deleted classes, in the order they happened (`[[migrations]]`).
    pub migrations: Vec<Migration>,
    /// Settings of single classes, by class name; every name must be a registered class.
    pub classes: std::collections::BTreeMap<String, ClassSettings>,
    /// Outgoing HTTP from objects.
    pub fetch: FetchSettings,
    /// Replication through NATS JetStream (`[cluster]`, or `--cluster` and `--node-id`); None
    /// for a single node, which needs no NATS.
    pub cluster: Option<ClusterSettings>,
    /// The keys read from `storage.encryption_key_file` (`Config::load_keys`); not a setting.
    #[serde(skip)]
    pub encryption: Option<crate::encryption::KeyRing>,
}

/// A node of a cluster (see `src/cluster/`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// NATS servers to connect to, e.g. `nats://127.0.0.1:4222`.
    pub nats: Vec<String>,
    /// This node's name in the cluster (the assignment names partitions' owners by it).
    pub node_id: String,
    /// Copies of each partition's log (the stream's replicas); fixed when the cluster is
    /// created, and a node with another value refuses to join.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long a write waits for the stream's acknowledgement before it fails (and its
    /// partition stops being served here).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long a node key lasts without renewal (renewed every third of it). A node serves
    /// only while its key's last renewal is fresh (less a quarter, for clock drift); the
    /// others take its partitions only once the key expired (or it released them). It must
    /// outlast the NATS servers' election of a new stream leader (seconds), or one NATS
    /// server's death moves every partition. Fixed when the cluster is created.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// A partition's state is written to the snapshot bucket once this many of its batches
    /// were acknowledged since its last snapshot, and its subject is purged below it, so a
    /// start replays the snapshot and what came after instead of the whole log. 0: never.
    #[serde(default = "default_snapshot_batches")]
    pub snapshot_batches: u64,
    /// `HOST:PORT` where the other nodes reach this node's listener: requests that reach a
    /// node which does not serve their object are forwarded to the owner's. None: the bound
    /// listening address, unless it is unspecified (`0.0.0.0`), in which case no node can
    /// forward to this one (they answer 503 instead).
    #[serde(default)]
    pub advertise: Option<String>,
    /// How long a node waits for the owner's answer to a request it forwarded.
    #[serde(default = "default_forward_timeout_ms")]
    pub forward_timeout_ms: u64,
}

impl ClusterSettings {
    /// Node `node_id` of the cluster behind `nats`, with the default replicas and timeout.
    pub fn new(nats: Vec<String>, node_id: String) -> ClusterSettings {
        ClusterSettings {
            nats,
            node_id,
            replicas: default_replicas(),
            ack_timeout_ms: default_ack_timeout_ms(),
            lease_ms: default_lease_ms(),
            snapshot_batches: default_snapshot_batches(),
            advertise: None,
            forward_timeout_ms: default_forward_timeout_ms(),
        }
    }
}

fn default_replicas() -> usize {
    3
}

fn default_ack_timeout_ms() -> u64 {
    5000
}

fn default_snapshot_batches() -> u64 {
    10_000
}

fn default_forward_timeout_ms() -> u64 {
    30_000
}

fn default_lease_ms() -> u64 {
    10_000
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./stead-data"),
            cores: 0,
            spin_before_park_us: 50,
            auth_token: None,
            admin_token: None,
            auth: AuthSettings::default(),
            tls: None,
            hello: false,
            jurisdiction: None,
            http: HttpLimits::default(),
            objects: ObjectLimits::default(),
            storage: StorageSettings::default(),
            sql: SqlSettings::default(),
            ratelimit: RateLimitDefaults::default(),
            scheduler: SchedulerLimits::default(),
            websocket: crate::websocket::WebSocketLimits::default(),
            migrations: Vec::new(),
            classes: std::collections::BTreeMap::new(),
            fetch: FetchSettings::default(),
            cluster: None,
            encryption: None,
        }
    }
}

/// Reads a file an operator hands the server (a key, certificate or token file): a regular
/// file of at most `bytes_max` bytes (a FIFO or device would block or never end), read with
/// that bound rather than by its size as it was a moment before.
pub fn read_operator_file(path: &std::path::Path, bytes_max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|error| error.to_string())?;
    let metadata = file.metadata().map_err(|error| error.to_string())?;
    if !metadata.is_file() {
        return Err("not a regular file".to_string());
    }
    let mut bytes = Vec::new();
    file.take(bytes_max + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| error.to_string())?;
    if bytes.len() as u64 > bytes_max {
        return Err(format!("larger than the {bytes_max} bytes read"));
    }
    Ok(bytes)
}

impl Config {
    /// Reads the keys of `storage.encryption_key_file`, if it is set (and they were not read
    /// already).
    pub fn load_keys(&mut self) -> Result<(), String> {
        if let (Some(path), None) = (&self.storage.encryption_key_file, &self.encryption) {
            self.encryption = Some(crate::encryption::KeyRing::load(path)?);
        }
        Ok(())
    }

    /// Reads a TOML file; fields it leaves out keep their defaults.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .map_err(|error| format!("invalid config {}: {error}", path.display()))?;
        let rounds = config.storage.rounds_in_flight;
        if !(1..=2).contains(&rounds) {
            return Err(format!(
                "invalid config {}: storage.rounds_in_flight is {rounds}, it must be 1 or 2",
                path.display()
            ));
        }
        Ok(config)
    }

    /// How long the objects of `class` keep history, in milliseconds (0: none).
    pub fn history_retention_ms(&self, class: &str) -> u64 {
        self.classes
            .get(class)
            .and_then(|settings| settings.history_retention_ms)
            .unwrap_or(self.storage.history_retention_ms)
    }

    /// Why this node may not store every class's objects: the first class pinned to a
    /// jurisdiction other than this node's.
    pub fn jurisdiction_mismatch(&self) -> Option<String> {
        self.classes.iter().find_map(|(class, settings)| {
            let wanted = settings.jurisdiction.as_deref()?;
            if self.jurisdiction.as_deref() == Some(wanted) {
                return None;
            }
            Some(match &self.jurisdiction {
                Some(own) => format!(
                    "class {class:?} is pinned to jurisdiction {wanted:?} and this node's is \
                     {own:?}"
                ),
                None => format!(
                    "class {class:?} is pinned to jurisdiction {wanted:?} and this node has none \
                     (--jurisdiction {wanted})"
                ),
            })
        })
    }

    /// New objects of `class` one client may create per second (0: no limit).
    pub fn creations_per_second(&self, class: &str) -> u32 {
        self.classes
            .get(class)
            .and_then(|settings| settings.creations_per_second)
            .unwrap_or(self.objects.creations_per_second)
    }

    /// How long each core's executor spins before parking; `None` (from 0) never spins.
    pub fn spin_before_park(&self) -> Option<std::time::Duration> {
        (self.spin_before_park_us > 0)
            .then(|| std::time::Duration::from_micros(self.spin_before_park_us))
    }

    /// The number of cores to run on, resolving 0 to every available core.
    pub fn cores_resolved(&self) -> usize {
        if self.cores > 0 {
            return self.cores;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Config;

    #[test]
    fn spin_before_park_defaults_to_50_us() {
        let config: Config = toml::from_str("").expect("an empty file is a valid config");
        assert_eq!(config.spin_before_park_us, 50);
        assert_eq!(config.spin_before_park(), Some(Duration::from_micros(50)));
    }

    #[test]
    fn spin_before_park_parses_and_zero_turns_it_off() {
        let config: Config =
            toml::from_str("spin_before_park_us = 200").expect("a valid spin setting");
        assert_eq!(config.spin_before_park(), Some(Duration::from_micros(200)));
        let config: Config = toml::from_str("spin_before_park_us = 0").expect("0 is valid");
        assert_eq!(config.spin_before_park(), None);
    }

    #[test]
    fn spin_before_park_refuses_a_negative_value() {
        assert!(toml::from_str::<Config>("spin_before_park_us = -1").is_err());
    }

    #[test]
    fn migrations_parse_in_order_and_refuse_unknown_fields() {
        let text = r#"
            [[migrations]]
            tag = "v1"
            new_classes = ["counter2"]

            [[migrations]]
            tag = "v2"
            renamed_classes = [{ from = "counter2", to = "tally" }]
            deleted_classes = ["scratch"]
        "#;
        let config: Config = toml::from_str(text).expect("valid migrations");
        let tags: Vec<&str> = config.migrations.iter().map(|m| m.tag.as_str()).collect();
        assert_eq!(tags, ["v1", "v2"]);
        assert_eq!(config.migrations[0].new_classes, ["counter2"]);
        let rename = &config.migrations[1].renamed_classes[0];
        assert_eq!(
            (rename.from.as_str(), rename.to.as_str()),
            ("counter2", "tally")
        );
        assert_eq!(config.migrations[1].deleted_classes, ["scratch"]);
        assert!(toml::from_str::<Config>("[[migrations]]\ntag = \"v1\"\nrenamed = []\n").is_err());
        assert!(toml::from_str::<Config>("[[migrations]]\nnew_classes = [\"a\"]\n").is_err());
    }

    #[test]
    fn rounds_in_flight_is_one_or_two() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stead.toml");
        let read = |rounds: &str| {
            std::fs::write(&path, format!("[storage]\nrounds_in_flight = {rounds}\n"))
                .expect("write config");
            Config::from_toml_file(&path)
        };
        assert_eq!(Config::default().storage.rounds_in_flight, 2);
        assert_eq!(read("1").expect("1 is valid").storage.rounds_in_flight, 1);
        assert_eq!(read("2").expect("2 is valid").storage.rounds_in_flight, 2);
        for invalid in ["0", "3"] {
            let error = read(invalid).expect_err("out of range");
            assert!(error.contains("rounds_in_flight"), "{error}");
        }
    }
}
