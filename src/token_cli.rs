//! `stead token add|list|revoke`: edits the token file (`[auth] tokens_file`). A running
//! server reads it again on SIGHUP.

use std::path::PathBuf;
use std::process::ExitCode;

use stead::auth::{TokenEntry, TokenFile, EVERY_CLASS};
use stead::Config;

#[derive(clap::Args)]
pub struct TokenArgs {
    /// The token file; default: `[auth] tokens_file` of `--config`.
    #[arg(long, global = true)]
    file: Option<PathBuf>,
    /// The server's configuration file, whose `[auth] tokens_file` names the token file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Make a token and print it (the only time it is shown; the file keeps its SHA-256).
    Add {
        /// The token's name (letters, digits, '-', '_', '.').
        name: String,
        /// The classes it reaches, comma-separated, or '*' for every class.
        #[arg(long, value_delimiter = ',', required = true)]
        classes: Vec<String>,
        /// Its requests may write (without it, their writes are refused with 403).
        #[arg(long)]
        write: bool,
        /// It may open WebSockets.
        #[arg(long)]
        websocket: bool,
        /// It may read /metrics.
        #[arg(long)]
        metrics: bool,
        /// It may use the admin API and take backups.
        #[arg(long)]
        admin: bool,
    },
    /// The tokens: names, classes and permissions (never the tokens).
    List,
    /// Remove a token; a running server refuses it after SIGHUP.
    Revoke { name: String },
}

pub fn run(args: TokenArgs) -> ExitCode {
    match execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stead token: {error}");
            ExitCode::FAILURE
        }
    }
}

fn execute(args: TokenArgs) -> Result<(), String> {
    let path = match (args.file, args.config) {
        (Some(path), _) => path,
        (None, Some(config)) => Config::from_toml_file(&config)?
            .auth
            .tokens_file
            .ok_or_else(|| format!("{} has no [auth] tokens_file", config.display()))?,
        (None, None) => return Err("name the token file with --file or --config".to_string()),
    };
    match args.command {
        TokenCommand::Add {
            name,
            classes,
            write,
            websocket,
            metrics,
            admin,
        } => {
            let entry = TokenEntry {
                name: name.clone(),
                sha256: String::new(),
                classes,
                write,
                websocket,
                metrics,
                admin,
            };
            let token = TokenFile::update(&path, |file| file.add(entry))
                .map_err(|error| error.to_string())?;
            eprintln!(
                "stead token: added {name:?} to {}; send SIGHUP to a running server",
                path.display()
            );
            println!("{token}");
        }
        TokenCommand::List => {
            let file = TokenFile::read(&path).map_err(|error| error.to_string())?;
            println!("{:<24} {:<32} PERMISSIONS", "NAME", "CLASSES");
            for token in &file.tokens {
                let permissions: Vec<&str> = [
                    (token.write, "write"),
                    (token.websocket, "websocket"),
                    (token.metrics, "metrics"),
                    (token.admin, "admin"),
                ]
                .into_iter()
                .filter_map(|(granted, name)| granted.then_some(name))
                .collect();
                let classes = if token.classes.iter().any(|class| class == EVERY_CLASS) {
                    EVERY_CLASS.to_string()
                } else {
                    token.classes.join(",")
                };
                let permissions = if permissions.is_empty() {
                    "read-only".to_string()
                } else {
                    permissions.join(",")
                };
                println!("{:<24} {:<32} {permissions}", token.name, classes);
            }
        }
        TokenCommand::Revoke { name } => {
            TokenFile::update(&path, |file| file.revoke(&name))
                .map_err(|error| error.to_string())?;
            eprintln!(
                "stead token: revoked {name:?} in {}; send SIGHUP to a running server",
                path.display()
            );
        }
    }
    Ok(())
}
