//! `sessions`: sessions that expire, as in the design's session management pattern.
//!
//! `POST /sessions` with `{"userId": string, "data": any, "ttlMs"?: positive integer}` (the TTL
//! defaults to 24 h) answers 201 `{"id"}`, a random UUID. `GET /sessions/{id}` answers
//! `{"id","userId","data","createdAt","expiresAt"}` with `data` byte for byte as posted, or 404
//! once the session expired or if it never existed; `DELETE /sessions/{id}` answers
//! `{"deleted":true}` or 404. Bad JSON, a missing or non-string `userId`, or a bad `ttlMs` is
//! 400 with a JSON error. Any other path is 404 `Not Found`, a known path with another method
//! 405.
//!
//! Storage: the `sessions` table of the object's SQL database, as in the design (`id` primary
//! key, `user_id`, `data` as the posted JSON text, `created_at`, `expires_at`, an index on
//! `expires_at`). The alarm is kept at the earliest expiry; when it fires, expired rows are
//! deleted (`DELETE_ROWS_PER_BATCH_MAX` per batch, so any number can expire together) and the
//! alarm moves to the next expiry.
//!
//! Migration: the previous version kept one key-value entry per session, `s/` ‖ id, holding the
//! session as JSON. At activation, such entries are moved into the table (`KEYS_PER_BATCH_MAX`
//! per batch, each batch one `transaction_sync`: rows inserted and keys deleted together), so
//! an interrupted migration resumes at the next activation and loses nothing.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::KEYS_PER_BATCH_MAX;
use crate::http::{percent_decode, Method, Request, Response};
use crate::object::{
    now_ms, AlarmInfo, DurableObject, ListOptions, ObjectContext, ObjectError, SqlError, SqlValue,
    StorageError,
};

/// Prefix of the session keys of the previous, key-value layout (migrated at activation).
const KEY_PREFIX: &[u8] = b"s/";
/// The schema, created at activation if missing.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sessions (
       id TEXT PRIMARY KEY, user_id TEXT NOT NULL, data TEXT NOT NULL,
       created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
     CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at);";
/// Rows the alarm deletes per batch. Deleting a row writes its table leaf and index leaves,
/// and a few neighbours when a leaf is rebalanced (the pages of a long value are freed, not
/// written), so 500 rows stay below one batch's 4,096 pages even when each row fills a page.
/// An event past that limit fails (`SqlError::BatchFull`), so the margin matters.
const DELETE_ROWS_PER_BATCH_MAX: i64 = 500;
/// Lifetime of a session when the request names none: 24 hours, as in the design.
const TTL_MS_DEFAULT: i64 = 86_400_000;
/// Longest lifetime, in milliseconds (ten years): keeps `now + ttl` far from overflow.
const TTL_MS_MAX: i64 = 10 * 365 * 24 * 3_600_000;

/// A session as the previous, key-value layout stored it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored<'a> {
    user_id: String,
    /// The `data` exactly as posted.
    #[serde(borrow)]
    data: &'a RawValue,
    created_at: i64,
    expires_at: i64,
}

/// A session as `GET` answers it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct View<'a> {
    id: &'a str,
    user_id: &'a str,
    data: &'a RawValue,
    created_at: i64,
    expires_at: i64,
}

/// The body of `POST /sessions`; each field is checked by hand so that a wrong type gets a
/// message naming it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Create<'a> {
    user_id: Option<Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    ttl_ms: Option<Value>,
}

pub struct Sessions {
    /// Storage (the `sessions` table) and identity of this object.
    context: ObjectContext,
}

/// A random (version 4) UUID.
fn random_uuid() -> Result<String, ObjectError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| ObjectError::new(format!("no randomness: {error}")))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// Parses and checks a `POST /sessions` body: `(userId, data as posted, ttlMs)`.
fn parse_create(body: &[u8]) -> Result<(String, &RawValue, i64), Response> {
    let create: Create = serde_json::from_slice(body)
        .map_err(|error| Response::json_error(400, &format!("invalid JSON: {error}")))?;
    let user_id = match create.user_id {
        Some(Value::String(user_id)) => user_id,
        Some(_) => return Err(Response::json_error(400, "userId must be a string")),
        None => return Err(Response::json_error(400, "userId is required")),
    };
    let ttl_ms = match create.ttl_ms {
        None | Some(Value::Null) => TTL_MS_DEFAULT,
        Some(value) => match value.as_i64() {
            Some(ttl_ms) if (1..=TTL_MS_MAX).contains(&ttl_ms) => ttl_ms,
            _ => {
                let message = format!("ttlMs must be an integer from 1 to {TTL_MS_MAX}");
                return Err(Response::json_error(400, &message));
            }
        },
    };
    // A missing `data` is stored as null, as JSON.stringify would.
    let null: &RawValue = serde_json::from_str("null")
        .map_err(|error| Response::json_error(500, &error.to_string()))?;
    Ok((user_id, create.data.unwrap_or(null), ttl_ms))
}

fn not_found() -> Response {
    Response::json_error(404, "Session not found")
}

impl Sessions {
    fn create(&self, request: &Request) -> Result<Response, ObjectError> {
        let (user_id, data, ttl_ms) = match parse_create(&request.body) {
            Ok(parsed) => parsed,
            Err(response) => return Ok(response),
        };
        // The previous layout refused a session larger than one value; so does this one, so
        // that a session never grows past what a value may hold.
        let value_bytes_max = self.context.config().storage.value_bytes_max;
        let session_bytes = user_id.len() + data.get().len();
        if session_bytes > value_bytes_max {
            return Err(ObjectError::from(StorageError::ValueTooLarge {
                value_bytes: session_bytes,
                value_bytes_max,
            }));
        }
        let id = random_uuid()?;
        let created_at = now_ms();
        let expires_at = created_at.saturating_add(ttl_ms);
        let storage = self.context.storage();
        storage.sql().exec(
            "INSERT INTO sessions (id, user_id, data, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            &[
                id.as_str().into(),
                user_id.into(),
                data.get().into(),
                created_at.into(),
                expires_at.into(),
            ],
        )?;
        if storage
            .get_alarm()
            .is_none_or(|alarm_ms| expires_at < alarm_ms)
        {
            storage.set_alarm(expires_at)?;
        }
        Ok(Response::json(201, &json!({ "id": id })))
    }

    /// The session `id`, expired or not: `(userId, data, createdAt, expiresAt)`.
    fn find(&self, id: &str) -> Result<Option<(String, String, i64, i64)>, ObjectError> {
        let cursor = self.context.storage().sql().exec(
            "SELECT user_id, data, created_at, expires_at FROM sessions WHERE id = ?",
            &[id.into()],
        )?;
        let Some(row) = cursor.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some((
            row.get_str("user_id")?.to_string(),
            row.get_str("data")?.to_string(),
            row.get_i64("created_at")?,
            row.get_i64("expires_at")?,
        )))
    }

    fn get(&self, id: &str) -> Result<Response, ObjectError> {
        let Some((user_id, data, created_at, expires_at)) = self.find(id)? else {
            return Ok(not_found());
        };
        if expires_at <= now_ms() {
            return Ok(not_found());
        }
        let data: &RawValue = serde_json::from_str(&data)?;
        let view = View {
            id,
            user_id: &user_id,
            data,
            created_at,
            expires_at,
        };
        Ok(Response::json_of(200, &view)?)
    }

    fn delete(&self, id: &str) -> Result<Response, ObjectError> {
        let Some((_, _, _, expires_at)) = self.find(id)? else {
            return Ok(not_found());
        };
        self.context
            .storage()
            .sql()
            .exec("DELETE FROM sessions WHERE id = ?", &[id.into()])?;
        if expires_at <= now_ms() {
            return Ok(not_found());
        }
        Ok(Response::json(200, &json!({ "deleted": true })))
    }

    /// Moves up to `KEYS_PER_BATCH_MAX` sessions of the previous key-value layout into the
    /// table, atomically; returns how many it moved (0: none are left).
    fn migrate_batch(&self) -> Result<usize, ObjectError> {
        let storage = self.context.storage();
        let options = ListOptions {
            prefix: Some(KEY_PREFIX.to_vec()),
            limit: Some(KEYS_PER_BATCH_MAX),
            ..ListOptions::default()
        };
        let entries = storage.list(&options);
        let sql = storage.sql();
        storage.transaction_sync(|| {
            for (key, value) in &entries {
                let id = String::from_utf8_lossy(&key[KEY_PREFIX.len()..]).into_owned();
                // An entry this class could not have written is dropped, as the previous
                // version ignored it.
                if let Ok(stored) = serde_json::from_slice::<Stored>(value) {
                    sql.exec(
                        "INSERT OR REPLACE INTO sessions (id, user_id, data, created_at, expires_at)
                         VALUES (?, ?, ?, ?, ?)",
                        &[
                            id.into(),
                            stored.user_id.into(),
                            stored.data.get().into(),
                            stored.created_at.into(),
                            stored.expires_at.into(),
                        ],
                    )?;
                }
                storage.delete(key).map_err(SqlError::from)?;
            }
            Ok::<(), SqlError>(())
        })?;
        Ok(entries.len())
    }
}

impl DurableObject for Sessions {
    fn new(context: ObjectContext) -> Sessions {
        Sessions { context }
    }

    /// Creates the table, then migrates the previous layout's sessions, a batch per poll.
    async fn init(&self) -> Result<(), ObjectError> {
        self.context.storage().sql().exec(SCHEMA, &[])?;
        while self.migrate_batch()? > 0 {
            // Awaiting starts a new batch, keeping each within the engine's key limit.
            futures_lite::future::yield_now().await;
        }
        Ok(())
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let path = request.path.as_str();
        if path == "/sessions" {
            return match request.method {
                Method::Post => self.create(&request),
                _ => Ok(Response::json_error(405, "use POST /sessions")),
            };
        }
        let Some(id) = path
            .strip_prefix("/sessions/")
            .and_then(|id| percent_decode(id, false))
        else {
            return Ok(Response::not_found());
        };
        match request.method {
            Method::Get | Method::Head => self.get(&id),
            Method::Delete => self.delete(&id),
            _ => Ok(Response::json_error(
                405,
                "use GET or DELETE /sessions/{id}",
            )),
        }
    }

    /// Deletes every expired session, then sets the alarm to the next expiry.
    async fn alarm(&self, alarm: AlarmInfo) -> Result<(), ObjectError> {
        let storage = self.context.storage();
        let sql = storage.sql();
        loop {
            let deleted = sql
                .exec(
                    "DELETE FROM sessions WHERE id IN
                       (SELECT id FROM sessions WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
                    &[now_ms().into(), DELETE_ROWS_PER_BATCH_MAX.into()],
                )?
                .rows_written();
            if deleted < DELETE_ROWS_PER_BATCH_MAX as u64 {
                break;
            }
            // Awaiting starts a new batch.
            futures_lite::future::yield_now().await;
        }
        let next = sql
            .exec("SELECT MIN(expires_at) AS next FROM sessions", &[])?
            .one()?;
        match next.get("next") {
            Some(SqlValue::Integer(expires_at)) => {
                storage.set_alarm(super::next_alarm_ms(&alarm, *expires_at))?
            }
            _ => storage.delete_alarm()?,
        }
        Ok(())
    }
}
