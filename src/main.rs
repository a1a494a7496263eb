//! The `stead` binary: `stead serve` runs the server with the built-in classes, `stead bench`
//! load-tests a server, `stead admin` asks a running server's admin API, `stead restore` builds
//! a data directory from a backup.

mod admin_cli;
mod token_cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stead::{Config, Server};

#[derive(Parser)]
#[command(
    name = "stead",
    version,
    about = "A Durable Objects engine: named, single-threaded objects with durable storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Built once per run from the command line: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the server with the built-in classes.
    Serve(ServeArgs),
    /// Load-test a server that serves stead's routes.
    Bench(stead::bench::BenchArgs),
    /// Ask a running server's admin API: classes, objects, storage, deletion.
    Admin(admin_cli::AdminArgs),
    /// Build a data directory from a backup (`GET /admin/backup`).
    Restore(RestoreArgs),
    /// Add, list or revoke the tokens of a token file (`[auth] tokens_file`).
    Token(token_cli::TokenArgs),
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// The data directory to build; it must be absent or empty.
    #[arg(long)]
    data_dir: PathBuf,
    /// Cores the directory is laid out for (0: as many as the server of the backup had).
    #[arg(long, default_value_t = 0)]
    cores: usize,
    /// The server's configuration file, for its storage limits (`[storage] value_bytes_max`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Encrypt the new data directory with these keys (as `stead serve
    /// --encryption-key-file`).
    #[arg(long, env = "STEAD_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (every core shares it).
    #[arg(long, env = "STEAD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where objects are stored.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Cores to run on (0: all of them).
    #[arg(long)]
    cores: Option<usize>,
    /// A TOML configuration file; the flags above override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` on every request but /healthz.
    #[arg(long, env = "STEAD_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Require `Authorization: Bearer TOKEN` on the admin API (/admin/…); without it the admin
    /// API takes the auth token, and with neither it is off.
    #[arg(long, env = "STEAD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Serve HTTPS and WSS with this certificate chain (PEM); needs --tls-key. Overrides
    /// `[tls] cert_file`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Encrypt the data directory at rest with the keys in this file (64 hex digits a line;
    /// the first seals new writes). Overrides `[storage] encryption_key_file`.
    #[arg(long, env = "STEAD_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,
    /// A token file (see `stead token`): each token's classes and permissions; SIGHUP
    /// reloads it. Overrides `[auth] tokens_file`.
    #[arg(long, env = "STEAD_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Answer every request with a fixed body (the benchmark floor); no objects.
    #[arg(long)]
    hello: bool,
    /// Join a cluster through these NATS servers (comma-separated), e.g.
    /// nats://127.0.0.1:4222; needs --node-id. The local store is then rebuilt from the
    /// cluster's log at every start.
    #[arg(long, value_delimiter = ',', requires = "node_id")]
    cluster: Vec<String>,
    /// This node's name in the cluster.
    #[arg(long, requires = "cluster")]
    node_id: Option<String>,
    /// This node's jurisdiction tag (e.g. eu): classes pinned to a jurisdiction
    /// ([classes.NAME] jurisdiction) are stored and served only on nodes with their tag.
    #[arg(long)]
    jurisdiction: Option<String>,
    /// HOST:PORT where the other nodes of the cluster reach this node (they forward requests
    /// for its objects there); default: the listening address, if it names a host.
    #[arg(long, requires = "cluster")]
    advertise: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => stead::bench::run(args),
        Command::Admin(args) => admin_cli::run(args),
        Command::Restore(args) => restore(args),
        Command::Token(args) => token_cli::run(args),
    }
}

fn restore(args: RestoreArgs) -> ExitCode {
    let base = match &args.config {
        Some(path) => match Config::from_toml_file(path) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("stead restore: {error}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let mut base = base;
    if args.encryption_key_file.is_some() {
        base.storage.encryption_key_file = args.encryption_key_file.clone();
    }
    if let Err(error) = base.load_keys() {
        eprintln!("stead restore: {error}");
        return ExitCode::from(2);
    }
    match stead::backup::restore(&base, &args.from, &args.data_dir, args.cores) {
        Ok(summary) => {
            println!(
                "stead: restored {} objects ({} keys) into {} for {} cores",
                summary.objects,
                summary.entries,
                args.data_dir.display(),
                summary.cores
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("stead restore: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match &args.config {
        Some(path) => match Config::from_toml_file(path) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("stead: {error}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(cores) = args.cores {
        config.cores = cores;
    }
    if args.auth_token.is_some() {
        config.auth_token = args.auth_token;
    }
    if args.admin_token.is_some() {
        config.admin_token = args.admin_token;
    }
    if args.tokens_file.is_some() {
        config.auth.tokens_file = args.tokens_file;
    }
    if args.encryption_key_file.is_some() {
        config.storage.encryption_key_file = args.encryption_key_file;
    }
    if let (Some(cert_file), Some(key_file)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(stead::config::TlsSettings {
            cert_file,
            key_file,
        });
    }
    config.hello |= args.hello;
    if args.jurisdiction.is_some() {
        config.jurisdiction = args.jurisdiction;
    }
    if let Some(node_id) = args.node_id {
        match config.cluster.as_mut() {
            Some(settings) => {
                settings.nats = args.cluster;
                settings.node_id = node_id;
            }
            None => {
                config.cluster = Some(stead::config::ClusterSettings::new(args.cluster, node_id))
            }
        }
    }
    if let (Some(settings), Some(advertise)) = (config.cluster.as_mut(), args.advertise) {
        settings.advertise = Some(advertise);
    }
    let data_dir = config.data_dir.clone();
    let cores = config.cores_resolved();
    let running = match Server::builder().config(config).builtins().build().start() {
        Ok(running) => running,
        Err(error) => {
            eprintln!("stead: {error}");
            return ExitCode::FAILURE;
        }
    };
    let announce = |running: &stead::RunningServer| {
        println!(
            "stead: listening on {} with {cores} cores, data in {}",
            running.local_addr(),
            data_dir.display()
        );
    };
    match stead::server::wait_for_signal(running, announce) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stead: {error}");
            ExitCode::FAILURE
        }
    }
}
