//! `stead admin …`: the admin API of a running server (`/admin/…`) from the command line, as
//! tables for people or (`--json`) the server's JSON as it came.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use stead::http::percent_encode;

/// How long one admin request may take, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a page holds at most 1,000 pairs of at most 1 MiB each).
const ANSWER_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;

#[derive(clap::Args)]
pub struct AdminArgs {
    /// The server, `http://host:port` or `https://host:port` (with --tls-ca).
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "STEAD_URL")]
    url: String,
    /// https:// servers: the PEM certificates to trust (the server's own if it is
    /// self-signed, or its CA).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// The admin token (or the auth token, when the server has no admin token).
    #[arg(long, env = "STEAD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand)]
enum AdminCommand {
    /// Registered classes and how many objects each has stored, per core.
    Classes,
    /// The objects of a class, a page at a time.
    Objects {
        class: String,
        #[command(flatten)]
        page: Page,
    },
    /// One object: `NAME` or `id:HEX`.
    Object { class: String, target: String },
    /// One object's key-value pairs and SQL tables.
    Storage {
        class: String,
        target: String,
        #[command(flatten)]
        page: Page,
    },
    /// Delete one object: its storage, SQL database and alarm; its sockets are closed.
    Delete { class: String, target: String },
    /// A bookmark of one object's state now, or at `--at` (point-in-time recovery).
    Bookmark {
        class: String,
        target: String,
        /// Milliseconds since the Unix epoch.
        #[arg(long)]
        at: Option<u64>,
    },
    /// Put one object back as it was at a bookmark; prints the bookmark that undoes it.
    Restore {
        class: String,
        target: String,
        bookmark: String,
    },
    /// Save a backup of the whole data set (`GET /admin/backup`) to a file, for `stead restore`.
    Backup {
        /// The file to write; written beside it first and renamed once complete.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// Which page of a listing to ask for.
#[derive(clap::Args)]
struct Page {
    /// Only names (objects) or keys (storage) that start with this.
    #[arg(long)]
    prefix: Option<String>,
    /// At most this many (1 to 1,000; the server's default is 100).
    #[arg(long)]
    limit: Option<usize>,
    /// The cursor the previous page printed.
    #[arg(long)]
    cursor: Option<String>,
}

impl Page {
    /// The page as a query string (`?…`, or nothing).
    fn query(&self) -> String {
        let pairs = [
            ("prefix", self.prefix.clone()),
            ("limit", self.limit.map(|limit| limit.to_string())),
            ("cursor", self.cursor.clone()),
        ];
        let parts: Vec<String> = pairs
            .iter()
            .filter_map(|(name, value)| {
                value
                    .as_ref()
                    .map(|value| format!("{name}={}", percent_encode(value)))
            })
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// Where the requests go and what they carry.
struct Target<'a> {
    url: &'a str,
    token: Option<&'a str>,
    tls_ca: Option<&'a std::path::Path>,
}

/// A connection to the server: plain TCP, or TLS over it.
trait Connection: Read + Write {}

impl<T: Read + Write> Connection for T {}

pub fn run(args: AdminArgs) -> ExitCode {
    let target = Target {
        url: &args.url,
        token: args.token.as_deref(),
        tls_ca: args.tls_ca.as_deref(),
    };
    if let AdminCommand::Backup { out } = &args.command {
        return match save_backup(&target, out) {
            Ok(bytes) => {
                println!(
                    "stead admin: wrote a backup of {bytes} bytes to {}",
                    out.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("stead admin: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let (method, path) = request_line(&args.command);
    let body = match &args.command {
        AdminCommand::Restore { bookmark, .. } => {
            serde_json::json!({ "bookmark": bookmark }).to_string()
        }
        _ => String::new(),
    };
    let answer = match send(&target, method, &path, &body) {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("stead admin: {error}");
            return ExitCode::FAILURE;
        }
    };
    if !(200..300).contains(&answer.status) {
        let message = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|value| value["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
        eprintln!("stead admin: {} {message}", answer.status);
        return ExitCode::FAILURE;
    }
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return ExitCode::SUCCESS;
    }
    let Ok(value) = serde_json::from_slice::<Value>(&answer.body) else {
        eprintln!("stead admin: the server's answer is not JSON");
        return ExitCode::FAILURE;
    };
    print!("{}", table(&args.command, &value));
    ExitCode::SUCCESS
}

/// The method and path (with query) of a command.
fn request_line(command: &AdminCommand) -> (&'static str, String) {
    let object = |class: &str, target: &str| {
        format!(
            "/admin/objects/{}/{}",
            percent_encode(class),
            target_segment(target)
        )
    };
    match command {
        AdminCommand::Classes => ("GET", "/admin/classes".to_string()),
        AdminCommand::Objects { class, page } => (
            "GET",
            format!("/admin/objects/{}{}", percent_encode(class), page.query()),
        ),
        AdminCommand::Object { class, target } => ("GET", object(class, target)),
        AdminCommand::Storage {
            class,
            target,
            page,
        } => (
            "GET",
            format!("{}/storage{}", object(class, target), page.query()),
        ),
        AdminCommand::Delete { class, target } => ("DELETE", object(class, target)),
        AdminCommand::Bookmark { class, target, at } => {
            let at = at.map_or(String::new(), |at| format!("?at={at}"));
            ("GET", format!("{}/bookmark{at}", object(class, target)))
        }
        AdminCommand::Restore { class, target, .. } => {
            ("POST", format!("{}/restore", object(class, target)))
        }
        AdminCommand::Backup { .. } => ("GET", "/admin/backup".to_string()),
    }
}

/// `id:HEX` as is; a name percent-encoded (so a name starting `id:` has its colon escaped).
fn target_segment(target: &str) -> String {
    match target.strip_prefix("id:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            target.to_string()
        }
        _ => percent_encode(target),
    }
}

/// A response: its status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// Sends one request on a new connection and reads the whole answer.
fn send(target: &Target, method: &str, path: &str, body: &str) -> Result<Answer, String> {
    let stream = open(target, method, path, body)?;
    let mut raw = Vec::new();
    stream
        .take(ANSWER_BYTES_MAX)
        .read_to_end(&mut raw)
        .map_err(|error| format!("cannot read the answer: {error}"))?;
    parse_answer(&raw)
}

/// Connects to the server of `url` and sends one request.
fn open(
    target: &Target,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Box<dyn Connection>, String> {
    let url = target.url;
    let (https, address) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(address), _) => (true, address),
        (None, Some(address)) => (false, address),
        (None, None) => {
            return Err(format!(
                "the url must start with http:// or https:// (got {url})"
            ))
        }
    };
    let address = address.trim_end_matches('/');
    if address.contains('/') {
        return Err(format!(
            "the url must be http://host:port, with no path (got {url})"
        ));
    }
    let default_port = if https { 443 } else { 80 };
    let socket_address = if address
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'))
    {
        address.to_string()
    } else {
        format!("{address}:{default_port}")
    };
    let socket = TcpStream::connect(&socket_address)
        .map_err(|error| format!("cannot connect to {socket_address}: {error}"))?;
    let timeouts = socket
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| socket.set_write_timeout(Some(TIMEOUT)));
    timeouts.map_err(|error| format!("cannot set timeouts: {error}"))?;
    let mut stream: Box<dyn Connection> = if https {
        let ca = target
            .tls_ca
            .ok_or("an https:// url needs --tls-ca (the certificates to trust, PEM)")?;
        let config = stead::tls::client_config(ca).map_err(|error| error.to_string())?;
        let name = stead::tls::server_name(address)?;
        let session = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(|error| format!("cannot start TLS: {error}"))?;
        Box::new(rustls::StreamOwned::new(session, socket))
    } else {
        Box::new(socket)
    };
    let token = target.token;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream
        .write_all(head.as_bytes())
        .map_err(|error| format!("cannot send the request: {error}"))?;
    Ok(stream)
}

/// Streams `GET /admin/backup` into `out` (through `out.partial`, renamed once the answer's
/// last chunk arrived); returns the bytes written. A backup that ends early leaves no `out`.
fn save_backup(target: &Target, out: &std::path::Path) -> Result<u64, String> {
    let mut reader = std::io::BufReader::new(open(target, "GET", "/admin/backup", "")?);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match reader.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err("the server closed the connection before answering".to_string()),
            Err(error) => return Err(format!("cannot read the answer: {error}")),
        }
        if head.len() > 64 * 1024 {
            return Err("the answer's header is too long".to_string());
        }
    }
    if !head.starts_with(b"HTTP/1.1 200 ") {
        // An error answer is small: read it whole and show its message.
        let mut rest = Vec::new();
        let _ = reader.take(1024 * 1024).read_to_end(&mut rest);
        head.extend_from_slice(&rest);
        let answer = parse_answer(&head)?;
        let message = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|value| value["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
        return Err(format!("{} {message}", answer.status));
    }
    let partial = out.with_extension("partial");
    let written = copy_chunks(&mut reader, &partial);
    match written {
        Ok(bytes) => {
            std::fs::rename(&partial, out)
                .map_err(|error| format!("cannot rename {}: {error}", partial.display()))?;
            Ok(bytes)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            Err(error)
        }
    }
}

/// Writes the chunks of a chunked body to `path` and syncs it; the bytes written.
fn copy_chunks(reader: &mut impl std::io::BufRead, path: &std::path::Path) -> Result<u64, String> {
    let mut file = std::fs::File::create(path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    let ended = || "the backup ended early (the server failed or the connection broke)".to_string();
    let mut total = 0u64;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(ended()),
            Ok(_) => {}
            Err(error) => return Err(format!("cannot read the backup: {error}")),
        }
        let size = line.trim_end().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size, 16).map_err(|_| "a bad chunk size".to_string())?;
        if size == 0 {
            file.sync_all()
                .map_err(|error| format!("cannot sync {}: {error}", path.display()))?;
            return Ok(total);
        }
        let copied = std::io::copy(&mut reader.by_ref().take(size), &mut file)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        if copied != size {
            return Err(ended());
        }
        total += size;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).map_err(|_| ended())?;
    }
}

/// The status and body of a complete HTTP/1.1 answer (`Content-Length`, chunked or to the end).
fn parse_answer(raw: &[u8]) -> Result<Answer, String> {
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("the answer has no complete header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the answer's header is not text")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("the answer has no status")?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(length) if length <= rest.len() => rest[..length].to_vec(),
            Some(_) => return Err("the answer ended early".to_string()),
            None => rest.to_vec(),
        }
    };
    Ok(Answer { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or("a chunk has no size line")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("the answer ended early")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("the answer ended early")?;
    }
}

/// The answer to `command` as a table.
fn table(command: &AdminCommand, value: &Value) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut after = String::new();
    match command {
        AdminCommand::Classes => {
            rows.push(vec!["CLASS".into(), "OBJECTS".into(), "PER CORE".into()]);
            for class in value["classes"].as_array().into_iter().flatten() {
                rows.push(vec![
                    text(&class["class"]),
                    text(&class["objects"]),
                    text(&class["perCore"]),
                ]);
            }
            let orphans = &value["unregistered"]["objects"];
            if orphans.as_u64().unwrap_or(0) > 0 {
                after = format!("objects of no registered class: {}\n", text(orphans));
            }
        }
        AdminCommand::Objects { class, .. } => {
            rows.push(object_header());
            for object in value["objects"].as_array().into_iter().flatten() {
                rows.push(object_row(object));
            }
            if let Some(cursor) = value["cursor"].as_str() {
                after = format!("more: stead admin objects {class} --cursor {cursor}\n");
            }
        }
        AdminCommand::Object { .. } => {
            rows.push(object_header());
            rows.push(object_row(value));
        }
        AdminCommand::Storage { class, target, .. } => {
            rows.push(vec!["KEY".into(), "VALUE".into()]);
            for entry in value["entries"].as_array().into_iter().flatten() {
                let shown = |name: &str| match entry.get(name) {
                    Some(text) => text.as_str().unwrap_or("").to_string(),
                    None => format!("base64:{}", text(&entry[format!("{name}Base64").as_str()])),
                };
                rows.push(vec![shown("key"), shown("value")]);
            }
            for table in value["tables"].as_array().into_iter().flatten() {
                after.push_str(&format!(
                    "table {} ({} rows): {}\n",
                    text(&table["name"]),
                    text(&table["rows"]),
                    text(&table["sql"])
                ));
            }
            if let Some(cursor) = value["cursor"].as_str() {
                after.push_str(&format!(
                    "more: stead admin storage {class} {target} --cursor {cursor}\n"
                ));
            }
        }
        // Saved to a file by `save_backup`, never printed.
        AdminCommand::Backup { .. } => return String::new(),
        AdminCommand::Bookmark { .. } => return format!("{}\n", text(&value["bookmark"])),
        AdminCommand::Restore { .. } => {
            return format!(
                "restored {} to {}\nto undo: stead admin restore … {}\n",
                text(&value["id"]),
                text(&value["restored"]),
                text(&value["undo"])
            );
        }
        AdminCommand::Delete { .. } => {
            let id = text(&value["id"]);
            return if value["deleted"].as_bool() == Some(true) {
                format!("deleted {id}\n")
            } else {
                format!("nothing to delete: {id} holds no data\n")
            };
        }
    }
    format!("{}{after}", columns(&rows))
}

fn object_header() -> Vec<String> {
    [
        "ID",
        "NAME",
        "ACTIVE",
        "KEYS",
        "BYTES",
        "SQL BYTES",
        "HISTORY BYTES",
        "ALARM",
        "SOCKETS",
    ]
    .iter()
    .map(|title| title.to_string())
    .collect()
}

fn object_row(object: &Value) -> Vec<String> {
    [
        "id",
        "name",
        "active",
        "keys",
        "bytes",
        "sqlBytes",
        "historyBytes",
        "alarm",
        "sockets",
    ]
    .iter()
    .map(|field| text(&object[*field]))
    .collect()
}

/// A JSON value as a cell: strings bare, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Rows padded into columns.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(index) {
                Some(max) => *max = (*max).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(index, cell)| format!("{cell:<width$}", width = widths[index]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
