//! When each request is meant to leave (open loop) and how many may still leave (`--requests`).
//!
//! Open loop: the run's rate R is shared by all C connections; request k of connection c is
//! meant to leave at `start + (k·C + c) / R`, so the connections interleave evenly and the total
//! is R per second whatever the server does. A request that leaves late (the connection had
//! `--pipeline` requests in flight, or was reconnecting) is still timed from its intended time:
//! the wait is part of its latency, so a slow server cannot hide its stalls (no coordinated
//! omission).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The open-loop timetable of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Timetable {
    /// Time zero of the run (start of the warm-up).
    pub start: Instant,
    /// Requests per second over all connections.
    pub rate: f64,
    /// Connections in the run.
    pub connections: u64,
    /// This connection's index among them.
    pub index: u64,
}

impl Timetable {
    /// Number (across the run) of this connection's request `sequence`; also used by the
    /// scenarios to spread requests over objects.
    pub fn number(connections: u64, index: u64, sequence: u64) -> u64 {
        sequence.saturating_mul(connections).saturating_add(index)
    }

    /// When this connection's request `sequence` is meant to leave.
    pub fn intended(&self, sequence: u64) -> Instant {
        let number = Timetable::number(self.connections, self.index, sequence);
        let offset =
            Duration::try_from_secs_f64(number as f64 / self.rate).unwrap_or(Duration::MAX);
        self.start
            .checked_add(offset)
            .unwrap_or(self.start + Duration::from_secs(86_400 * 365))
    }
}

/// Request `sequence` of an open-loop timetable is meant to leave at or after the run's end.
#[derive(Debug)]
pub struct RunOver;

/// Waits until request `sequence` of `timetable` is due and returns when it was meant to
/// leave; at once with None in closed loop (no timetable).
pub async fn due(
    timetable: Option<Timetable>,
    sequence: u64,
    end: Option<Instant>,
) -> Result<Option<Instant>, RunOver> {
    let Some(intended) = timetable.map(|timetable| timetable.intended(sequence)) else {
        return Ok(None);
    };
    if end.is_some_and(|end| intended >= end) {
        return Err(RunOver);
    }
    let now = Instant::now();
    if intended > now {
        glommio::timer::sleep(intended - now).await;
    }
    Ok(Some(intended))
}

/// The requests an executor may still send in a `--requests` run, claimed one at a time by its
/// connections so that the total is exact.
#[derive(Debug)]
pub struct Budget {
    /// Requests not claimed yet; None when the run is bounded by time instead.
    left: Cell<Option<u64>>,
}

impl Budget {
    pub fn new(requests: Option<u64>) -> Budget {
        Budget {
            left: Cell::new(requests),
        }
    }

    /// Takes one request; false when none is left.
    pub fn claim(&self) -> bool {
        match self.left.get() {
            None => true,
            Some(0) => false,
            Some(left) => {
                self.left.set(Some(left - 1));
                true
            }
        }
    }

    /// True when a bounded budget is spent.
    pub fn is_spent(&self) -> bool {
        self.left.get() == Some(0)
    }

    /// Requests left unclaimed (0 for a run bounded by time).
    pub fn left(&self) -> u64 {
        self.left.get().unwrap_or(0)
    }
}

/// Splits `total` into `parts` shares that differ by at most one and add up to `total`.
pub fn share(total: u64, parts: u64, part: u64) -> u64 {
    if parts == 0 {
        return 0;
    }
    total / parts + u64::from(part < total % parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_at_the_total_rate() {
        let start = Instant::now();
        let connections = 4;
        let mut times: Vec<Duration> = (0..connections)
            .flat_map(|index| {
                let timetable = Timetable {
                    start,
                    rate: 2000.0,
                    connections,
                    index,
                };
                (0..500).map(move |sequence| timetable.intended(sequence) - start)
            })
            .collect();
        times.sort();
        assert_eq!(times.len(), 2000);
        // 2000 requests at 2000/s fill exactly one second, 0.5 ms apart.
        assert_eq!(times[0], Duration::ZERO);
        assert!((times[1999].as_secs_f64() - 1999.0 / 2000.0).abs() < 1e-6);
        for pair in times.windows(2) {
            assert!(((pair[1] - pair[0]).as_secs_f64() - 0.0005).abs() < 1e-6);
        }
    }

    #[test]
    fn budgets_are_exact() {
        let budget = Budget::new(Some(3));
        assert!(budget.claim() && budget.claim() && budget.claim());
        assert!(!budget.claim());
        assert!(budget.is_spent());
        let unbounded = Budget::new(None);
        assert!((0..1000).all(|_| unbounded.claim()));
        assert!(!unbounded.is_spent());
        assert_eq!(
            (0..3).map(|part| share(10, 3, part)).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        assert_eq!((0..4).map(|part| share(2, 4, part)).sum::<u64>(), 2);
    }
}
