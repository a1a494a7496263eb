//! Object creation limits: a token bucket per client and class, shared by every core.
//!
//! A client is its bearer token (the `Authorization` header), else its IP address. Creating
//! an object (a request to an id with no stored data that is not in memory, or `POST
//! /ids/{class}`) takes one token from the bucket of (client, class); a bucket holds at most
//! `rate` tokens and gains `rate` per second. The table of buckets is bounded: when it is full,
//! buckets that are full again (their client idle for a second or more) are dropped; if none
//! is, the creation is refused, so a flood of distinct clients costs bounded memory and can
//! only be refused, never let through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept at most (about 70 bytes each with the table's own overhead).
pub const BUCKETS_MAX: usize = 100_000;

/// Who creates an object, as the limiter counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    /// A hash of the bearer token (the token itself is not kept).
    Token(u64),
    Ip(IpAddr),
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Tokens a second (and the most it holds).
    rate: f64,
}

/// How often, at most, a full table is swept for buckets that are full again: between sweeps
/// a new client is refused at once, so a flood of new clients cannot make every core scan the
/// table under its lock.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Table {
    buckets: HashMap<(Client, u64), Bucket>,
    swept: Option<Instant>,
}

/// The buckets of every (client, class), shared by the cores.
#[derive(Debug)]
pub struct CreationLimiter {
    table: Mutex<Table>,
    hasher: ahash::RandomState,
    buckets_max: usize,
}

impl Default for CreationLimiter {
    fn default() -> CreationLimiter {
        CreationLimiter::with_capacity(BUCKETS_MAX)
    }
}

impl CreationLimiter {
    /// A limiter that keeps at most `buckets_max` buckets.
    pub fn with_capacity(buckets_max: usize) -> CreationLimiter {
        CreationLimiter {
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                swept: None,
            }),
            hasher: ahash::RandomState::new(),
            buckets_max: buckets_max.max(1),
        }
    }

    /// The client of a request: its `Authorization` header if it has one, else `peer`.
    pub fn client(&self, authorization: Option<&[u8]>, peer: Option<IpAddr>) -> Option<Client> {
        match authorization {
            Some(value) => Some(Client::Token(self.hasher.hash_one(value))),
            None => peer.map(Client::Ip),
        }
    }

    /// Takes one creation of `class` from `client`'s bucket, which gains `rate` a second (and
    /// holds as many); `Err(wait)` when it is empty (or the table is full), with how long
    /// until a token is back.
    pub fn take(&self, client: Client, class: &str, rate: u32) -> Result<(), Duration> {
        if rate == 0 {
            return Ok(());
        }
        let rate = f64::from(rate);
        let now = Instant::now();
        let key = (client, self.hasher.hash_one(class));
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Table { buckets, swept } = &mut *table;
        if !buckets.contains_key(&key) && buckets.len() >= self.buckets_max {
            if swept.is_some_and(|at| now.duration_since(at) < SWEEP_INTERVAL) {
                return Err(Duration::from_secs(1));
            }
            *swept = Some(now);
            // Full again: nothing is lost by forgetting it.
            buckets.retain(|_, bucket| {
                let refilled =
                    bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * bucket.rate;
                refilled < bucket.rate
            });
            if buckets.len() >= self.buckets_max {
                return Err(Duration::from_secs(1));
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            at: now,
            rate,
        });
        let refilled = bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = refilled.min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Buckets kept now.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .buckets
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_rate_then_waits_and_others_are_apart() {
        let limiter = CreationLimiter::default();
        let ada = limiter.client(Some(b"Bearer ada"), None).expect("a client");
        let bob = limiter
            .client(None, Some("10.0.0.2".parse().expect("ip")))
            .expect("a client");
        for _ in 0..5 {
            assert_eq!(limiter.take(ada, "counter", 5), Ok(()));
        }
        let wait = limiter.take(ada, "counter", 5).expect_err("held");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        // Another class, another client: their own buckets.
        assert_eq!(limiter.take(ada, "lock", 5), Ok(()));
        assert_eq!(limiter.take(bob, "counter", 5), Ok(()));
        // No limit at all.
        assert_eq!(limiter.take(ada, "counter", 0), Ok(()));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limiter.take(ada, "counter", 5), Ok(()));
    }

    #[test]
    fn many_clients_keep_the_table_bounded_and_are_refused_not_let_through() {
        let limiter = CreationLimiter::with_capacity(100);
        let client = |n: u32| Client::Ip(IpAddr::from(n.to_be_bytes()));
        for n in 0..100 {
            assert_eq!(limiter.take(client(n), "counter", 1), Ok(()));
        }
        assert_eq!(limiter.len(), 100);
        // Every bucket is empty (rate 1, one taken): a new client is refused, the table stays.
        assert!(limiter.take(client(1000), "counter", 1).is_err());
        assert_eq!(limiter.len(), 100);
        // Once they are full again they make room.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(limiter.take(client(1000), "counter", 1), Ok(()));
        assert!(limiter.len() <= 100);
    }
}
