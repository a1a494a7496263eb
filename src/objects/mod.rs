//! The built-in object classes served by `stead serve`, one file each, all shaped alike:
//! `new` reads what the object keeps from storage, `fetch` matches the path, then parses,
//! applies and answers.

mod counter;
mod ratelimiter;

pub use counter::Counter;
pub use ratelimiter::RateLimiter;

use crate::server::ServerBuilder;

/// Registers every built-in class under its route name.
pub fn register_builtins(builder: ServerBuilder) -> ServerBuilder {
    builder.class::<Counter>("counter").class::<RateLimiter>("ratelimiter")
}
