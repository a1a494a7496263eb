//! [`StoreHealth`]: which cores' stores take no more writes, and why, for `/healthz`.
//!
//! Every core answers `/healthz` for the whole server, so each needs to know about the others
//! without a round trip over the mesh (a health check must stay cheap, and `stead bench`'s
//! `hello` scenario measures it as the floor of the server). A core reports its store here the
//! first time it sees it unwritable; a store never becomes writable again in the same process
//! (a failed fsync is never retried), so an entry is set once and never cleared.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Shared by every core of a server.
pub struct StoreHealth {
    /// Per core: why its store takes no writes, once it does not.
    failures: Vec<Mutex<Option<String>>>,
    /// How many entries of `failures` are set, so a healthy check takes no lock.
    failing: AtomicUsize,
}

impl StoreHealth {
    pub fn new(cores: usize) -> StoreHealth {
        StoreHealth {
            failures: (0..cores).map(|_| Mutex::new(None)).collect(),
            failing: AtomicUsize::new(0),
        }
    }

    /// Records that `core`'s store takes no more writes; the first reason stays.
    pub fn report(&self, core: usize, reason: &str) {
        let Some(slot) = self.failures.get(core) else {
            return;
        };
        let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(reason.to_string());
            self.failing.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every core whose store is not writable, with the reason, in core order.
    pub fn failures(&self) -> Vec<(usize, String)> {
        if self.failing.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        self.failures
            .iter()
            .enumerate()
            .filter_map(|(core, slot)| {
                let slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                slot.clone().map(|reason| (core, reason))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::StoreHealth;

    #[test]
    fn the_first_reason_of_each_core_stays() {
        let health = StoreHealth::new(3);
        assert!(health.failures().is_empty());
        health.report(2, "full");
        health.report(2, "later");
        health.report(0, "eio");
        health.report(7, "no such core");
        assert_eq!(
            health.failures(),
            vec![(0, "eio".to_string()), (2, "full".to_string())]
        );
    }
}
