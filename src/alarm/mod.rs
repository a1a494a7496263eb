//! Alarms: the per-core hierarchical timer wheel (`wheel.rs`), and the scheduler that delivers
//! every object's durable alarm as an event of its object (`scheduler.rs`), at least once, with
//! retries, and rebuilt from the store at start-up.

mod scheduler;
mod stats;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod wheel;

pub use scheduler::{AlarmScheduler, SchedulerConfig};
pub use stats::AlarmStats;
pub use wheel::TimerWheel;
