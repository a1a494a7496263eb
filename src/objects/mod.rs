//! The built-in object classes served by `stead serve`, one file each, all shaped alike:
//! `new` reads what the object keeps from storage, `fetch` matches the path, then parses,
//! applies and answers.

mod counter;
mod ratelimiter;

pub use counter::Counter;
pub use ratelimiter::RateLimiter;

use crate::object::{ClassRegistry, RegistryError};

/// Registers every built-in class under its route name.
pub fn register_builtins(registry: &mut ClassRegistry) -> Result<(), RegistryError> {
    registry.register::<Counter>("counter")?;
    registry.register::<RateLimiter>("ratelimiter")?;
    Ok(())
}
