//! The built-in object classes served by `stead serve`, one file each, all shaped alike:
//! `new` reads what the object keeps from storage, `fetch` matches the path, then parses,
//! applies and answers.

mod chat;
mod counter;
mod doc;
mod lock;
mod ratelimiter;
mod scheduler;
mod sessions;
#[cfg(test)]
mod tests;

pub use chat::ChatRoom;
pub use counter::Counter;
pub use doc::Document;
pub use lock::Lock;
pub use ratelimiter::RateLimiter;
pub use scheduler::Scheduler;
pub use sessions::Sessions;

use crate::object::{AlarmInfo, ClassRegistry, RegistryError};

/// Registers every built-in class under its route name.
pub fn register_builtins(registry: &mut ClassRegistry) -> Result<(), RegistryError> {
    registry.register::<Counter>("counter")?;
    registry.register::<RateLimiter>("ratelimiter")?;
    registry.register::<Lock>("lock")?;
    registry.register::<Sessions>("sessions")?;
    registry.register::<Scheduler>("scheduler")?;
    registry.register::<ChatRoom>("chat")?;
    registry.register::<Document>("doc")?;
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
