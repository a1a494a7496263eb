//! `sqlratelimiter`: the design's SQL rate limiter, one row per allowed request.
//!
//! `GET /check?key=K&limit=L&windowMs=W` counts the rows of `key` newer than `now - windowMs`
//! (`SELECT COUNT(*) … WHERE key = ? AND timestamp > ?`, served by the index on
//! `(key, timestamp)`). At `limit` or more it answers 429 `{"allowed":false}` and records
//! nothing; else it inserts `(key, now)` and answers 200 `{"allowed":true}`. The defaults are
//! key `default` and the server's `[ratelimit]` (100 per 60,000 ms). Any other path is 404.
//!
//! Clean-up: the alarm deletes the rows older than the longest window the object has been
//! asked for (kept in the key-value entry `window_ms_max`), so the table holds about one
//! window of rows; it is set one window after the first row it could delete.

use serde::Serialize;

use super::json_response;
use crate::http::{Request, Response};
use crate::object::{now_ms, AlarmInfo, DurableObject, ObjectContext, ObjectError, SqlValue};

/// The schema, created at activation if missing.
const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS requests (key TEXT NOT NULL, timestamp INTEGER NOT NULL);
     CREATE INDEX IF NOT EXISTS requests_key_timestamp ON requests (key, timestamp);";
/// The key-value entry holding the longest window asked for, in milliseconds (decimal text).
const WINDOW_MS_MAX_KEY: &[u8] = b"window_ms_max";
/// Rows the alarm deletes per batch. Deleting a row writes its table leaf and index leaves,
/// and a few neighbours when a leaf is rebalanced (the pages of a long value are freed, not
/// written), so 500 rows stay below one batch's 4,096 pages even when each row fills a page.
/// An event past that limit fails (`SqlError::BatchFull`), so the margin matters.
const DELETE_ROWS_PER_BATCH_MAX: i64 = 500;
/// The key when the request names none.
const KEY_DEFAULT: &str = "default";

pub struct SqlRateLimiter {
    /// Storage (the `requests` table) and configuration of this object.
    context: ObjectContext,
}

/// The answer to a check.
#[derive(Serialize)]
struct Verdict {
    allowed: bool,
}

impl SqlRateLimiter {
    fn check(&self, key: &str, limit: i64, window_ms: i64) -> Result<Response, ObjectError> {
        let storage = self.context.storage();
        let sql = storage.sql();
        let now = now_ms();
        let count = sql
            .exec(
                "SELECT COUNT(*) AS count FROM requests WHERE key = ? AND timestamp > ?",
                &[key.into(), now.saturating_sub(window_ms).into()],
            )?
            .one()?
            .get_i64("count")?;
        if count >= limit {
            return json_response(429, &Verdict { allowed: false });
        }
        sql.exec(
            "INSERT INTO requests (key, timestamp) VALUES (?, ?)",
            &[key.into(), now.into()],
        )?;
        if window_ms > self.window_ms_max() {
            storage.put(WINDOW_MS_MAX_KEY, window_ms.to_string())?;
        }
        if storage.get_alarm().is_none() {
            storage.set_alarm(now.saturating_add(self.window_ms_max()))?;
        }
        json_response(200, &Verdict { allowed: true })
    }

    /// The longest window asked for so far (0 before the first check).
    fn window_ms_max(&self) -> i64 {
        self.context
            .storage()
            .get(WINDOW_MS_MAX_KEY)
            .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
            .unwrap_or(0)
    }
}

impl DurableObject for SqlRateLimiter {
    fn new(context: ObjectContext) -> SqlRateLimiter {
        SqlRateLimiter { context }
    }

    async fn init(&self) -> Result<(), ObjectError> {
        self.context.storage().sql().exec(SCHEMA, &[])?;
        Ok(())
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        if request.path != "/check" {
            return Ok(Response::not_found());
        }
        let (limit, window_ms) =
            match super::limit_and_window(&request, &self.context.config().ratelimit) {
                Ok(parameters) => parameters,
                Err(response) => return Ok(response),
            };
        let key = request
            .query_param("key")
            .unwrap_or_else(|| KEY_DEFAULT.to_string());
        // Both are at most i64::MAX (`positive_param`).
        self.check(&key, limit as i64, window_ms as i64)
    }

    /// Deletes the rows older than the longest window, then sets the alarm one window after
    /// the oldest row left.
    async fn alarm(&self, alarm: AlarmInfo) -> Result<(), ObjectError> {
        let storage = self.context.storage();
        let sql = storage.sql();
        let cutoff = now_ms().saturating_sub(self.window_ms_max());
        loop {
            let deleted = sql
                .exec(
                    "DELETE FROM requests WHERE rowid IN
                       (SELECT rowid FROM requests WHERE timestamp <= ? LIMIT ?)",
                    &[cutoff.into(), DELETE_ROWS_PER_BATCH_MAX.into()],
                )?
                .rows_written();
            if deleted < DELETE_ROWS_PER_BATCH_MAX as u64 {
                break;
            }
            // Awaiting starts a new batch.
            futures_lite::future::yield_now().await;
        }
        let oldest = sql
            .exec("SELECT MIN(timestamp) AS oldest FROM requests", &[])?
            .one()?;
        match oldest.get("oldest") {
            Some(SqlValue::Integer(oldest)) => {
                let next = oldest.saturating_add(self.window_ms_max());
                storage.set_alarm(super::next_alarm_ms(&alarm, next))?;
            }
            _ => storage.delete_alarm()?,
        }
        Ok(())
    }
}
