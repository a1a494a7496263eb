//! Alarms. So far: the per-core hierarchical timer wheel that alarm delivery and the engine's
//! other timers are built on. Delivery of object alarms is not wired yet (see ARCHITECTURE.md).

mod wheel;

pub use wheel::TimerWheel;
