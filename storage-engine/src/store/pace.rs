//! Keeps long loops of background work (compaction) from holding the core.
//!
//! The store shares its executor with everything else on the core, and a task runs until it
//! awaits something that is not ready. `glommio::yield_if_needed()` alone is not enough: it
//! yields only once the executor's preempt timer has fired, 100 ms by default, and a task
//! that merely re-queues itself (`futures_lite::future::yield_now()`) lets the other ready
//! tasks run but not the reactor, so no socket, timer or disk completion is seen until the
//! preempt timer fires anyway. Both measured as 70–110 ms stalls of every request on the core
//! while compaction copied small keys (no I/O to wait on between 1 MiB base records).
//!
//! [`Pacer::tick`] therefore parks the task on a short timer once it has worked for
//! [`WORK_SLICE`]: the task is not runnable, so the executor drains its ready tasks, polls
//! the reactor (completions, timers) and comes back to it.

use std::time::{Duration, Instant};

/// Work done between two yields. Short enough that the core's other tasks see no stall
/// worth measuring; long enough that a yield (a timer and a reactor poll, a few µs) costs
/// under 1% of the work.
pub const WORK_SLICE: Duration = Duration::from_millis(1);

/// How long a yield parks the task. Any positive time makes the task wait for the reactor;
/// when the core has nothing else to do, the executor sleeps this long, so it stays small.
const YIELD_PARK: Duration = Duration::from_micros(20);

/// Counts work since the last yield; see the module comment.
pub struct Pacer {
    /// When the current slice of work started.
    slice_started: Instant,
    /// Yields so far, for the log.
    pub yields: u64,
}

impl Pacer {
    pub fn new() -> Pacer {
        Pacer {
            slice_started: Instant::now(),
            yields: 0,
        }
    }

    /// Call between items of work (keys, entries, files): yields once the slice is used up.
    /// Reading the clock costs ~20 ns, small next to any item, so it is read every time.
    pub async fn tick(&mut self) {
        if self.slice_started.elapsed() < WORK_SLICE {
            return;
        }
        glommio::timer::sleep(YIELD_PARK).await;
        self.yields += 1;
        self.slice_started = Instant::now();
    }
}
