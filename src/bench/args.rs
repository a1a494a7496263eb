//! The command line of `stead bench`, and its check into a [`Plan`] that the run follows.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::error::BenchError;
use super::scenario::Scenario;

/// Most connections one run opens (each is a socket and a task).
const CONNECTIONS_MAX: usize = 10_000;
/// Most requests one connection keeps in flight; the server answers at most 128 at once.
const PIPELINE_MAX: usize = 128;
/// Longest measured run or warm-up.
const DURATION_MAX: Duration = Duration::from_secs(3600);
/// Most requests of a `--requests` run.
const REQUESTS_MAX: u64 = 10_000_000_000;
/// Distinct object names of the spread scenarios unless `--objects` says.
const OBJECTS_DEFAULT: u64 = 1000;
/// Most distinct object names of the spread scenarios.
const OBJECTS_MAX: u64 = 100_000_000;

const AFTER_HELP: &str = "\
Scenarios:
  hello           GET of --path (default /healthz): the floor; also works against `stead serve --hello`
  counter-hot     GET /objects/counter/hot/increment: one object, one core
  counter-spread  GET /objects/counter/c{n}/increment over --objects names
  counter-read    GET /objects/counter/hot/value: one object, no writes
  ratelimit       GET /objects/ratelimiter/k{n}/check?limit=1000000000&windowMs=60000 over --objects
                  keys: the limit is never reached, so every check is allowed and a 429 counts as an error
  sqlratelimiter  GET /objects/sqlratelimiter/o{n}/check?key=k{m}&limit=1000000000&windowMs=60000 over
                  --objects objects and 100 keys each (the SQL limiter: one row per check)
  lock            GET /objects/lock/l{n}/acquire?clientId=bench&timeoutMs=60000 over --objects locks:
                  one client holds them all, so each acquire renews its lease (a write and an alarm)
  alarms          POST /objects/scheduler/s{n}/events {\"id\":\"e{n}\",\"runAt\":now+1000} over --objects
                  schedulers: each event moves an alarm, and fires (and is deleted) a second later
  dedup           GET /objects/dedup/d{n}/fetch?url=<--fetch-url> over --objects objects: concurrent
                  requests to one object share one upstream fetch (the server must allow the host)
  call            GET /objects/relay/r{n}/counter/value?core=<--call-core> over --objects relays: each
                  calls a counter on the other core (or its own, --call-core same) and answers its value
  chat-fanout     WebSocket members of --objects chat rooms (default 1): connection i joins room
                  r{i mod rooms} as m{i}, and connection i < rooms sends to its room (--pipeline
                  messages in flight, or --rate messages/s in all); every member reads every message of
                  its room. Reports deliveries/s and the send -> read latency of each delivery;
                  --requests counts messages sent. A message a member never read is an error (lost)

A response other than 2xx is an error, and so are connect errors, timeouts and lost connections.
The exit status is 1 when the error rate passes --max-error-rate (default 0.01, i.e. 1 %), 2 when
the run could not be carried out.";

/// `stead bench`: a load generator for any server that serves stead's routes.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8080 or https://localhost:8443 (with
    /// --tls-ca)
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Workload to send (see below).
    #[arg(long, default_value = "hello")]
    pub scenario: String,
    /// Connections, split across the bench executors.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Measured run length, e.g. 10s, 500ms, 2m (default 10s unless --requests is given).
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Measured requests to send in all, instead of --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Distinct object names of the spread scenarios (default 1000), or the rooms of
    /// chat-fanout (default 1).
    #[arg(long)]
    pub objects: Option<u64>,
    /// Open loop: requests per second in all, sent on schedule; latency is measured from the
    /// intended send time (no coordinated omission). Without it: closed loop, as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests in flight per connection (HTTP/1.1 pipelining); chat-fanout: messages per
    /// sender not yet back to it.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Load sent before measuring starts (not recorded), e.g. 2s.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Cores to pin the bench executors to, e.g. 1,2 (default: one unpinned executor).
    #[arg(long, value_delimiter = ',')]
    pub bench_cores: Vec<usize>,
    /// Path of the hello scenario.
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// The http:// URL the dedup scenario has every object fetch (the server's
    /// `[fetch] allow_hosts` must list its host).
    #[arg(long)]
    pub fetch_url: Option<String>,
    /// The call scenario: where each relay's callee lives, `other` (another core than the
    /// relay's, when the server has more than one) or `same`.
    #[arg(long, default_value = "other", value_parser = ["other", "same"])]
    pub call_core: String,
    /// A response (or a connect) slower than this counts as a timeout error; chat-fanout: a
    /// member that reads nothing for this long (plus twice its sender's gap in open loop).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// https:// URLs: the PEM certificates to trust (the server's own, if it is
    /// self-signed, or its CA).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Sent as `Authorization: Bearer <token>` when set.
    #[arg(long, env = "STEAD_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Exit 1 when errors / attempts pass this fraction.
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency distribution in HdrHistogram's percentile text format to this file.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Draw latency by percentile as SVG to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also run against this URL, in the order A B A B, and print the ratio B / A per figure.
    #[arg(long)]
    pub compare: Option<String>,
    /// Start `stead serve` on a free port and a temporary data directory, on the cores the
    /// bench does not use, run against it (--url is ignored), then stop it.
    #[arg(long, conflicts_with = "compare")]
    pub spawn: bool,
    /// --spawn: the server's --cores (default: the cores below the lowest bench core).
    #[arg(long, requires = "spawn")]
    pub server_cores: Option<usize>,
}

/// Where the requests go, resolved once.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL as given, for the report.
    pub url: String,
    /// Resolved socket address (the first the host name resolves to).
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Path prefix of the base URL without its trailing slash, prepended to every path.
    pub prefix: String,
    /// For an https:// URL: how to make each connection's TLS session (`with_tls`).
    pub tls: Option<TargetTls>,
    /// Whether the URL is https://.
    pub https: bool,
}

/// The TLS side of an https:// target: the client configuration and the name to check the
/// server's certificate against.
#[derive(Clone)]
pub struct TargetTls {
    pub connector: futures_rustls::TlsConnector,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TargetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// For an https:// target: trusts the PEM certificates in `ca_file`. Plain http:// is
    /// left as it is.
    pub fn with_tls(mut self, ca_file: Option<&std::path::Path>) -> Result<Target, BenchError> {
        if !self.https {
            return Ok(self);
        }
        let ca_file = ca_file.ok_or_else(|| {
            invalid(
                "--tls-ca",
                "an https:// URL needs the certificates to trust (PEM)",
            )
        })?;
        let config = crate::tls::client_config(ca_file)
            .map_err(|error| invalid("--tls-ca", error.to_string()))?;
        let name = crate::tls::server_name(&self.host).map_err(|error| invalid("--url", error))?;
        self.tls = Some(TargetTls {
            connector: futures_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            name,
        });
        Ok(self)
    }
}

/// When the measured part of a run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this long (requests in flight then are still awaited and counted).
    Duration(Duration),
    /// After this many requests in all.
    Requests(u64),
}

/// The checked settings of one run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: Scenario,
    pub connections: usize,
    pub stop: Stop,
    /// Open-loop rate in requests per second, or None for closed loop.
    pub rate: Option<f64>,
    pub pipeline: usize,
    pub warmup: Duration,
    /// One entry per executor: the core it is pinned to, or None for unpinned.
    pub cores: Vec<Option<usize>>,
    pub timeout: Duration,
    pub auth_token: Option<String>,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> BenchError {
    BenchError::InvalidArgument {
        flag,
        reason: reason.into(),
    }
}

/// Parses `250ms`, `10s`, `2m`, `1h`, or a bare number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("not a duration: {text:?}"))
}

/// Resolves `http://host[:port][/prefix]` or `https://…` (then `with_tls` sets up TLS).
pub fn parse_url(url: &str) -> Result<Target, BenchError> {
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => {
            return Err(invalid(
                "--url",
                format!("{url:?} is not an http:// or https:// URL"),
            ))
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(invalid("--url", format!("{url:?} has no host")));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'))
    {
        authority.to_string()
    } else if https {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|error| invalid("--url", format!("cannot resolve {authority:?}: {error}")))?
        .next()
        .ok_or_else(|| invalid("--url", format!("{authority:?} resolves to nothing")))?;
    Ok(Target {
        url: url.to_string(),
        addr,
        host: authority.to_string(),
        prefix: path.trim_end_matches('/').to_string(),
        tls: None,
        https,
    })
}

impl BenchArgs {
    /// Checks every value and resolves the defaults.
    pub fn plan(&self) -> Result<Plan, BenchError> {
        let objects = match (self.objects, self.scenario.as_str()) {
            (Some(objects), _) => objects,
            (None, "chat-fanout") => 1,
            (None, _) => OBJECTS_DEFAULT,
        };
        let scenario = Scenario::parse(&self.scenario, &self.path, objects)?;
        let scenario = match (&scenario, &self.fetch_url) {
            (Scenario::Dedup { .. }, Some(url)) if url.starts_with("http://") => {
                scenario.with_fetch_url(url)
            }
            (Scenario::Dedup { .. }, _) => {
                return Err(invalid(
                    "--fetch-url",
                    "the dedup scenario needs an http:// URL to fetch",
                ))
            }
            _ => scenario.with_call_core(self.call_core == "same"),
        };
        if !self.path.starts_with('/') {
            return Err(invalid("--path", "must start with /"));
        }
        if self.connections == 0 || self.connections > CONNECTIONS_MAX {
            return Err(invalid(
                "--connections",
                format!("must be 1..={CONNECTIONS_MAX}"),
            ));
        }
        if self.pipeline == 0 || self.pipeline > PIPELINE_MAX {
            return Err(invalid("--pipeline", format!("must be 1..={PIPELINE_MAX}")));
        }
        if objects == 0 || objects > OBJECTS_MAX {
            return Err(invalid("--objects", format!("must be 1..={OBJECTS_MAX}")));
        }
        let stop = match (self.requests, self.duration) {
            (Some(requests), _) if requests == 0 || requests > REQUESTS_MAX => {
                return Err(invalid("--requests", format!("must be 1..={REQUESTS_MAX}")));
            }
            (Some(requests), _) => Stop::Requests(requests),
            (None, Some(duration)) if duration.is_zero() || duration > DURATION_MAX => {
                return Err(invalid("--duration", "must be more than 0 and at most 1h"));
            }
            (None, Some(duration)) => Stop::Duration(duration),
            (None, None) => Stop::Duration(Duration::from_secs(10)),
        };
        if self.warmup > DURATION_MAX {
            return Err(invalid("--warmup", "must be at most 1h"));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= 100_000_000.0) {
                return Err(invalid("--rate", "must be more than 0 and at most 1e8"));
            }
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(600) {
            return Err(invalid("--timeout", "must be more than 0 and at most 10m"));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err(invalid("--max-error-rate", "must be within 0..=1"));
        }
        let cores: Vec<Option<usize>> = if self.bench_cores.is_empty() {
            vec![None]
        } else {
            let mut sorted = self.bench_cores.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != self.bench_cores.len() {
                return Err(invalid("--bench-cores", "a core is listed twice"));
            }
            self.bench_cores.iter().map(|core| Some(*core)).collect()
        };
        if scenario
            .chat_rooms()
            .is_some_and(|rooms| rooms > self.connections as u64)
        {
            return Err(invalid(
                "--objects",
                "chat-fanout needs a member (connection) per room at least",
            ));
        }
        if self.connections < cores.len() {
            return Err(invalid(
                "--connections",
                "must be at least the number of bench cores",
            ));
        }
        Ok(Plan {
            scenario,
            connections: self.connections,
            stop,
            rate: self.rate,
            pipeline: self.pipeline,
            warmup: self.warmup,
            cores,
            timeout: self.timeout,
            auth_token: self.auth_token.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn urls_resolve_with_prefix_and_default_port() {
        let target = parse_url("http://127.0.0.1:8080/base/").expect("url");
        assert_eq!(
            target.addr,
            "127.0.0.1:8080".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(target.prefix, "/base");
        assert_eq!(target.host, "127.0.0.1:8080");
        let target = parse_url("http://127.0.0.1").expect("url");
        assert_eq!(target.addr.port(), 80);
        assert!(parse_url("https://127.0.0.1").is_ok_and(|target| target.https));
        assert!(parse_url("ftp://127.0.0.1").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
