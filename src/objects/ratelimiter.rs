//! `ratelimiter`: a sliding-window limiter, as in the design's RateLimiter.
//!
//! Each call first forgets timestamps that left the window (`now - t >= windowMs`). If `limit`
//! timestamps remain, it answers 429 `{"allowed":false,"remaining":0,"resetAt":oldest+window}`
//! and records nothing; else it records `now` and answers 200
//! `{"allowed":true,"remaining":limit-count,"resetAt":now+window}`. The defaults come from the
//! server's configuration; `?limit=N&windowMs=M` overrides them per call.
//!
//! Storage: one key per recorded timestamp, `r` ‖ timestamp (8 bytes, big-endian, offset so
//! that key order is time order) ‖ a sequence number (4 bytes, big-endian), with an empty
//! value. A call writes one key and deletes keys that expired, instead of rewriting the whole
//! window as the design's version does; the answers are the same.
//!
//! Expired timestamps leave the count at once, but their keys are deleted at most
//! `KEYS_PER_BATCH_MAX` per call (the rest wait, in memory, for the next calls): a burst of
//! more than the engine's `batch_keys_max` requests expiring together must not make one call's
//! batch too large. Each call records at most one key and deletes up to 64, so the backlog
//! shrinks; keys still waiting at a restart are read back as old timestamps, and the next call
//! forgets them again.

use std::cell::RefCell;
use std::collections::VecDeque;

use serde::Serialize;

use super::{json_response, KEYS_PER_BATCH_MAX};
use crate::http::{Request, Response};
use crate::object::{now_ms, DurableObject, ListOptions, ObjectContext, ObjectError};

/// Prefix of the timestamp keys.
const KEY_PREFIX: u8 = b'r';

pub struct RateLimiter {
    /// Storage and configuration of this object.
    context: ObjectContext,
    /// Recorded timestamps still in the window and their storage keys, oldest first (with
    /// `expired`, mirrors storage).
    window: RefCell<VecDeque<(i64, [u8; 13])>>,
    /// Keys of timestamps that left the window but are still stored, oldest first: deleted a
    /// bounded number per call.
    expired: RefCell<VecDeque<[u8; 13]>>,
    /// Sequence number of the next key, so that keys recorded in the same millisecond differ.
    next_sequence: RefCell<u32>,
}

/// The answer to a check, fields in the design's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Verdict {
    allowed: bool,
    remaining: u64,
    reset_at: i64,
}

fn timestamp_key(timestamp_ms: i64, sequence: u32) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = KEY_PREFIX;
    // Flipping the sign bit makes big-endian byte order match numeric order for negatives too.
    key[1..9].copy_from_slice(&((timestamp_ms as u64) ^ (1 << 63)).to_be_bytes());
    key[9..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn parse_key(key: &[u8]) -> Option<(i64, u32)> {
    if key.len() != 13 || key[0] != KEY_PREFIX {
        return None;
    }
    let timestamp = u64::from_be_bytes(key[1..9].try_into().ok()?) ^ (1 << 63);
    let sequence = u32::from_be_bytes(key[9..].try_into().ok()?);
    Some((timestamp as i64, sequence))
}

impl RateLimiter {
    fn check(&self, limit: u64, window_ms: u64) -> Result<Response, ObjectError> {
        let now = now_ms();
        let window_ms = window_ms as i64;
        let storage = self.context.storage();
        let mut window = self.window.borrow_mut();
        let mut expired = self.expired.borrow_mut();
        while let Some((timestamp, key)) = window.front() {
            if now.saturating_sub(*timestamp) < window_ms {
                break;
            }
            expired.push_back(*key);
            window.pop_front();
        }
        for _ in 0..KEYS_PER_BATCH_MAX {
            let Some(key) = expired.front() else {
                break;
            };
            storage.delete(key)?;
            expired.pop_front();
        }
        if window.len() as u64 >= limit {
            let oldest = window
                .front()
                .map(|(timestamp, _)| *timestamp)
                .unwrap_or(now);
            let verdict = Verdict {
                allowed: false,
                remaining: 0,
                reset_at: oldest.saturating_add(window_ms),
            };
            return json_response(429, &verdict);
        }
        let mut sequence = self.next_sequence.borrow_mut();
        let key = timestamp_key(now, *sequence);
        *sequence = sequence.wrapping_add(1);
        storage.put(&key, Vec::new())?;
        window.push_back((now, key));
        let verdict = Verdict {
            allowed: true,
            remaining: limit - window.len() as u64,
            reset_at: now.saturating_add(window_ms),
        };
        json_response(200, &verdict)
    }
}

impl DurableObject for RateLimiter {
    fn new(context: ObjectContext) -> RateLimiter {
        let options = ListOptions {
            prefix: Some(vec![KEY_PREFIX]),
            ..ListOptions::default()
        };
        let mut window = VecDeque::new();
        let mut next_sequence = 0u32;
        for (key, _) in context.storage().list(&options) {
            if let Some((timestamp, sequence)) = parse_key(&key) {
                window.push_back((timestamp, timestamp_key(timestamp, sequence)));
                next_sequence = sequence.wrapping_add(1);
            }
        }
        RateLimiter {
            context,
            window: RefCell::new(window),
            expired: RefCell::new(VecDeque::new()),
            next_sequence: RefCell::new(next_sequence),
        }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        match super::limit_and_window(&request, &self.context.config().ratelimit) {
            Ok((limit, window_ms)) => self.check(limit, window_ms),
            Err(response) => Ok(response),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time_and_round_trip() {
        let a = timestamp_key(-5, 9);
        let b = timestamp_key(1_700_000_000_000, 0);
        let c = timestamp_key(1_700_000_000_000, 1);
        assert!(a < b && b < c);
        assert_eq!(parse_key(&c), Some((1_700_000_000_000, 1)));
        assert_eq!(parse_key(b"value"), None);
    }
}
