//! The workloads `stead bench` can send: which path the n-th request of a run asks for.

use std::io::Write;

use super::error::BenchError;

/// Scenario names that run today, in the order the help lists them.
pub const AVAILABLE: &[&str] = &[
    "hello",
    "counter-hot",
    "counter-spread",
    "counter-read",
    "ratelimit",
    "sqlratelimiter",
    "lock",
    "alarms",
    "dedup",
    "call",
    "chat-fanout",
];

/// How far ahead an `alarms` event is scheduled: it fires (and is deleted) during the run.
pub const ALARMS_AHEAD_MS: u64 = 1000;

/// The query of `lock`: one client that holds every lock, renewing a one-minute lease.
pub const LOCK_QUERY: &str = "clientId=bench&timeoutMs=60000";

/// The name of the one object that `counter-hot` and `counter-read` use.
pub const HOT_OBJECT: &str = "hot";

/// The rate limiter parameters of `ratelimit`: a limit no run can reach, so that every check is
/// allowed and a 429 stays an error.
pub const RATELIMIT_QUERY: &str = "limit=1000000000&windowMs=60000";

/// Keys per object of `sqlratelimiter`: 100 objects (`--objects 100`) make the 100 × 100 keys
/// of the SQL limiter's benchmark.
pub const SQL_RATELIMIT_KEYS: u64 = 100;

/// One workload: a rule from a request's number to its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// `GET` of one fixed path (default `/healthz`): the floor of the server.
    Hello { path: String },
    /// Increments of the one counter `hot`: every request goes to one object on one core.
    CounterHot,
    /// Increments spread over `objects` counters `c0`…: every core gets work.
    CounterSpread { objects: u64 },
    /// Reads of the counter `hot`: no write, no fdatasync.
    CounterRead,
    /// Checks of `objects` rate limiter keys `k0`…, each one allowed.
    RateLimit { objects: u64 },
    /// Checks of `SQL_RATELIMIT_KEYS` keys in each of `objects` SQL rate limiters, each one
    /// allowed.
    SqlRateLimit { objects: u64 },
    /// Acquires of `objects` locks `l0`… by the one client that holds them all: each renews
    /// its lease (a write and the lease's alarm), none waits.
    Lock { objects: u64 },
    /// Events scheduled `ALARMS_AHEAD_MS` ahead in `objects` schedulers `s0`…: each a write
    /// and the object's alarm moved, and each fires a second later.
    Alarms { objects: u64 },
    /// Fetches of one URL through `objects` dedup objects `d0`…: concurrent requests to one
    /// object share one upstream fetch. `url` is percent-encoded for the query (set from
    /// `--fetch-url`).
    Dedup { objects: u64, url: String },
    /// Reads of a counter through `objects` relays `r0`…, each calling its counter on the
    /// other core (`same_core` false) or on its own: one call between objects per request.
    Call { objects: u64, same_core: bool },
    /// WebSocket members of `rooms` chat rooms, one sender each (see `chat`): not requests
    /// but messages, each delivered to every member of its room.
    ChatFanout { rooms: u64 },
}

impl Scenario {
    /// The scenario called `name`; `path` is used by `hello`, `objects` by the spread ones.
    pub fn parse(name: &str, path: &str, objects: u64) -> Result<Scenario, BenchError> {
        match name {
            "hello" => Ok(Scenario::Hello {
                path: path.to_string(),
            }),
            "counter-hot" => Ok(Scenario::CounterHot),
            "counter-spread" => Ok(Scenario::CounterSpread { objects }),
            "counter-read" => Ok(Scenario::CounterRead),
            "ratelimit" => Ok(Scenario::RateLimit { objects }),
            "sqlratelimiter" => Ok(Scenario::SqlRateLimit { objects }),
            "lock" => Ok(Scenario::Lock { objects }),
            "alarms" => Ok(Scenario::Alarms { objects }),
            "dedup" => Ok(Scenario::Dedup {
                objects,
                url: String::new(),
            }),
            "call" => Ok(Scenario::Call {
                objects,
                same_core: false,
            }),
            "chat-fanout" => Ok(Scenario::ChatFanout { rooms: objects }),
            _ => Err(BenchError::UnknownScenario(name.to_string())),
        }
    }

    /// The name the scenario was parsed from.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Hello { .. } => "hello",
            Scenario::CounterHot => "counter-hot",
            Scenario::CounterSpread { .. } => "counter-spread",
            Scenario::CounterRead => "counter-read",
            Scenario::RateLimit { .. } => "ratelimit",
            Scenario::SqlRateLimit { .. } => "sqlratelimiter",
            Scenario::Lock { .. } => "lock",
            Scenario::Alarms { .. } => "alarms",
            Scenario::Dedup { .. } => "dedup",
            Scenario::Call { .. } => "call",
            Scenario::ChatFanout { .. } => "chat-fanout",
        }
    }

    /// The rooms of `chat-fanout`, whose connections are WebSocket members; None for the
    /// scenarios of plain requests.
    pub fn chat_rooms(&self) -> Option<u64> {
        match self {
            Scenario::ChatFanout { rooms } => Some(*rooms),
            _ => None,
        }
    }

    /// Appends the path (and query) of request number `number` to `out`. Numbers are spread
    /// round-robin over connections, so consecutive numbers hit different objects.
    pub fn write_path(&self, number: u64, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = match self {
            Scenario::Hello { path } => out.write_all(path.as_bytes()),
            Scenario::CounterHot => write!(out, "/objects/counter/{HOT_OBJECT}/increment"),
            Scenario::CounterSpread { objects } => {
                write!(
                    out,
                    "/objects/counter/c{}/increment",
                    number % objects.max(&1)
                )
            }
            Scenario::CounterRead => write!(out, "/objects/counter/{HOT_OBJECT}/value"),
            Scenario::RateLimit { objects } => write!(
                out,
                "/objects/ratelimiter/k{}/check?{RATELIMIT_QUERY}",
                number % objects.max(&1)
            ),
            Scenario::SqlRateLimit { objects } => {
                let objects = *objects.max(&1);
                write!(
                    out,
                    "/objects/sqlratelimiter/o{}/check?key=k{}&{RATELIMIT_QUERY}",
                    number % objects,
                    (number / objects) % SQL_RATELIMIT_KEYS
                )
            }
            Scenario::Lock { objects } => write!(
                out,
                "/objects/lock/l{}/acquire?{LOCK_QUERY}",
                number % objects.max(&1)
            ),
            Scenario::Alarms { objects } => {
                write!(
                    out,
                    "/objects/scheduler/s{}/events",
                    number % objects.max(&1)
                )
            }
            Scenario::Dedup { objects, url } => write!(
                out,
                "/objects/dedup/d{}/fetch?url={url}",
                number % objects.max(&1)
            ),
            Scenario::Call { objects, same_core } => write!(
                out,
                "/objects/relay/r{}/counter/value?core={}",
                number % objects.max(&1),
                if *same_core { "same" } else { "other" }
            ),
            // Its members send WebSocket messages, not requests (`chat::run`).
            Scenario::ChatFanout { .. } => Ok(()),
        };
    }

    /// The scenario with the URL `dedup` fetches (percent-encoded here); others unchanged.
    pub fn with_fetch_url(self, fetch_url: &str) -> Scenario {
        match self {
            Scenario::Dedup { objects, .. } => Scenario::Dedup {
                objects,
                url: crate::http::percent_encode(fetch_url),
            },
            other => other,
        }
    }

    /// The scenario with the callee's core `call` asks for; others unchanged.
    pub fn with_call_core(self, same_core: bool) -> Scenario {
        match self {
            Scenario::Call { objects, .. } => Scenario::Call { objects, same_core },
            other => other,
        }
    }

    /// Appends the JSON body of request number `number` to `out`: nothing (a `GET`) but for
    /// `alarms`, whose requests are `POST`s.
    pub fn write_body(&self, number: u64, out: &mut Vec<u8>) {
        if let Scenario::Alarms { .. } = self {
            let run_at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_millis() as u64)
                + ALARMS_AHEAD_MS;
            let _ = write!(out, "{{\"id\":\"e{number}\",\"runAt\":{run_at}}}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(scenario: &Scenario, number: u64) -> String {
        let mut out = Vec::new();
        scenario.write_path(number, &mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn paths_follow_the_routes() {
        let hello = Scenario::parse("hello", "/healthz", 1).expect("hello");
        assert_eq!(path(&hello, 7), "/healthz");
        assert_eq!(
            path(&Scenario::CounterHot, 7),
            "/objects/counter/hot/increment"
        );
        assert_eq!(
            path(&Scenario::CounterRead, 7),
            "/objects/counter/hot/value"
        );
        let spread = Scenario::parse("counter-spread", "", 5).expect("spread");
        assert_eq!(path(&spread, 7), "/objects/counter/c2/increment");
        let limiter = Scenario::parse("ratelimit", "", 3).expect("ratelimit");
        assert_eq!(
            path(&limiter, 4),
            "/objects/ratelimiter/k1/check?limit=1000000000&windowMs=60000"
        );
        let lock = Scenario::parse("lock", "", 10).expect("lock");
        assert_eq!(
            path(&lock, 13),
            "/objects/lock/l3/acquire?clientId=bench&timeoutMs=60000"
        );
        let alarms = Scenario::parse("alarms", "", 4).expect("alarms");
        assert_eq!(path(&alarms, 6), "/objects/scheduler/s2/events");
        let mut body = Vec::new();
        alarms.write_body(6, &mut body);
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["id"], "e6");
        assert!(body["runAt"]
            .as_u64()
            .is_some_and(|at| at > ALARMS_AHEAD_MS));
        let mut none = Vec::new();
        lock.write_body(6, &mut none);
        assert!(none.is_empty(), "a GET has no body");
        let dedup = Scenario::parse("dedup", "", 2)
            .expect("dedup")
            .with_fetch_url("http://u:8/x?y");
        assert_eq!(
            path(&dedup, 3),
            "/objects/dedup/d1/fetch?url=http%3A%2F%2Fu%3A8%2Fx%3Fy"
        );
        let call = Scenario::parse("call", "", 3).expect("call");
        assert_eq!(path(&call, 4), "/objects/relay/r1/counter/value?core=other");
        assert_eq!(
            path(&call.with_call_core(true), 5),
            "/objects/relay/r2/counter/value?core=same"
        );
        let sql_limiter = Scenario::parse("sqlratelimiter", "", 100).expect("sqlratelimiter");
        assert_eq!(
            path(&sql_limiter, 1234),
            "/objects/sqlratelimiter/o34/check?key=k12&limit=1000000000&windowMs=60000"
        );
    }

    #[test]
    fn unknown_scenarios_are_refused_by_name() {
        for name in AVAILABLE {
            assert_eq!(
                Scenario::parse(name, "/", 1).map(|s| s.name()).ok(),
                Some(*name)
            );
        }
        assert!(matches!(
            Scenario::parse("nope", "/", 1),
            Err(BenchError::UnknownScenario(_))
        ));
    }
}
