//! The built-in object classes served by `stead serve`, one file each, all shaped alike:
//! `new` reads what the object keeps from storage, `fetch` matches the path, then parses,
//! applies and answers.

mod chat;
mod counter;
mod dedup;
mod doc;
mod lock;
mod ratelimiter;
mod relay;
mod scheduler;
mod sessions;
mod sql;
mod sqlratelimiter;
#[cfg(test)]
mod tests;

pub use chat::ChatRoom;
pub use counter::Counter;
pub use dedup::Dedup;
pub use doc::Document;
pub use lock::Lock;
pub use ratelimiter::RateLimiter;
pub use relay::{Relay, CALLEE_CORE_HEADER};
pub use scheduler::Scheduler;
pub use sessions::Sessions;
pub use sql::SqlDatabase;
pub use sqlratelimiter::SqlRateLimiter;

use serde::Serialize;

use crate::http::Response;
use crate::object::{AlarmInfo, ClassRegistry, ObjectError, RegistryError};

/// Keys one event of a built-in writes (or deletes) between two suspension points, at most:
/// half the engine's `batch_keys_max` (128), leaving room for the event's own few writes. A
/// built-in with more to do splits it over several batches or events, so that it never trips
/// the engine's limit, which would answer the client 500 for the server's own bookkeeping.
const KEYS_PER_BATCH_MAX: usize = 64;

/// A JSON answer with the fields in the order `value` declares them: the designs build their
/// answers with `JSON.stringify`, which keeps insertion order, and clients may compare bytes.
/// (`serde_json::Value` sorts object keys, so it is not used for answers with several fields.)
fn json_response<T: Serialize>(status: u16, value: &T) -> Result<Response, ObjectError> {
    Ok(Response::json_of(status, value)?)
}

/// The `limit` and `windowMs` query parameters of both rate limiters, each a positive integer
/// up to `i64::MAX`, with the server's `[ratelimit]` defaults; a 400 response for a bad one.
fn limit_and_window(
    request: &crate::http::Request,
    defaults: &crate::config::RateLimitDefaults,
) -> Result<(u64, u64), Response> {
    let limit = positive_param(request, "limit", u64::from(defaults.limit))?;
    let window_ms = positive_param(request, "windowMs", defaults.window_ms)?;
    Ok((limit, window_ms))
}

/// Reads a positive integer query parameter (at most `i64::MAX`), or the default when absent.
fn positive_param(
    request: &crate::http::Request,
    name: &str,
    default: u64,
) -> Result<u64, Response> {
    match request.query_param(name) {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(value) if value > 0 && value <= i64::MAX as u64 => Ok(value),
            _ => Err(Response::json_error(
                400,
                &format!("{name} must be a positive integer, got {text:?}"),
            )),
        },
    }
}

/// Registers every built-in class under its route name.
pub fn register_builtins(registry: &mut ClassRegistry) -> Result<(), RegistryError> {
    registry.register::<Counter>("counter")?;
    registry.register::<RateLimiter>("ratelimiter")?;
    registry.register::<Lock>("lock")?;
    registry.register::<Sessions>("sessions")?;
    registry.register::<Scheduler>("scheduler")?;
    registry.register::<ChatRoom>("chat")?;
    registry.register::<Document>("doc")?;
    registry.register::<SqlRateLimiter>("sqlratelimiter")?;
    registry.register::<SqlDatabase>("sql")?;
    registry.register::<Dedup>("dedup")?;
    registry.register::<Relay>("relay")?;
    Ok(())
}

/// The time an alarm handler should set to run again at `next_ms`. The host deletes the alarm
/// that fired unless the handler set a different time, so a next time equal to the fired one
/// (possible only if the wall clock stepped back) moves 1 ms later rather than being lost.
fn next_alarm_ms(fired: &AlarmInfo, next_ms: i64) -> i64 {
    if next_ms == fired.scheduled_ms {
        next_ms.saturating_add(1)
    } else {
        next_ms
    }
}

#[cfg(test)]
mod limits_tests {
    #[test]
    fn a_batch_of_a_builtin_fits_the_engine() {
        let limits = stead_storage::Limits::default();
        assert!(super::KEYS_PER_BATCH_MAX * 2 <= limits.batch_keys_max);
    }
}
