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
//! Storage: one key per session, `s/` ‖ id, holding the session as JSON. The alarm is kept at
//! the earliest expiry; when it fires, every expired session is deleted (in batches of
//! `KEYS_PER_BATCH_MAX`, so any number can expire together) and the alarm moves to the next
//! expiry.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::KEYS_PER_BATCH_MAX;
use crate::http::{percent_decode, Method, Request, Response};
use crate::object::{now_ms, AlarmInfo, DurableObject, ListOptions, ObjectContext, ObjectError};

/// Prefix of the session keys.
const KEY_PREFIX: &[u8] = b"s/";
/// Lifetime of a session when the request names none: 24 hours, as in the design.
const TTL_MS_DEFAULT: i64 = 86_400_000;
/// Longest lifetime, in milliseconds (ten years): keeps `now + ttl` far from overflow.
const TTL_MS_MAX: i64 = 10 * 365 * 24 * 3_600_000;

/// A session as stored.
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
    /// Storage and identity of this object.
    context: ObjectContext,
    /// `(expiresAt, id)` of every stored session, earliest first: where the alarm goes.
    expiries: RefCell<BTreeSet<(i64, String)>>,
}

fn session_key(id: &str) -> Vec<u8> {
    [KEY_PREFIX, id.as_bytes()].concat()
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
        let id = random_uuid()?;
        let created_at = now_ms();
        let expires_at = created_at.saturating_add(ttl_ms);
        let stored = Stored {
            user_id,
            data,
            created_at,
            expires_at,
        };
        let storage = self.context.storage();
        storage.put(&session_key(&id), serde_json::to_vec(&stored)?)?;
        if storage
            .get_alarm()
            .is_none_or(|alarm_ms| expires_at < alarm_ms)
        {
            storage.set_alarm(expires_at)?;
        }
        self.expiries.borrow_mut().insert((expires_at, id.clone()));
        Ok(Response::json(201, &json!({ "id": id })))
    }

    fn get(&self, id: &str) -> Result<Response, ObjectError> {
        let Some(bytes) = self.context.storage().get(&session_key(id)) else {
            return Ok(not_found());
        };
        let stored: Stored = serde_json::from_slice(&bytes)?;
        if stored.expires_at <= now_ms() {
            return Ok(not_found());
        }
        let view = View {
            id,
            user_id: &stored.user_id,
            data: stored.data,
            created_at: stored.created_at,
            expires_at: stored.expires_at,
        };
        Ok(Response::new(200, serde_json::to_vec(&view)?)
            .with_header("Content-Type", "application/json"))
    }

    fn delete(&self, id: &str) -> Result<Response, ObjectError> {
        let storage = self.context.storage();
        let key = session_key(id);
        let Some(bytes) = storage.get(&key) else {
            return Ok(not_found());
        };
        let stored: Stored = serde_json::from_slice(&bytes)?;
        storage.delete(&key)?;
        self.expiries
            .borrow_mut()
            .remove(&(stored.expires_at, id.to_string()));
        if stored.expires_at <= now_ms() {
            return Ok(not_found());
        }
        Ok(Response::json(200, &json!({ "deleted": true })))
    }
}

impl DurableObject for Sessions {
    fn new(context: ObjectContext) -> Sessions {
        let options = ListOptions {
            prefix: Some(KEY_PREFIX.to_vec()),
            ..ListOptions::default()
        };
        let mut expiries = BTreeSet::new();
        for (key, value) in context.storage().list(&options) {
            let id = String::from_utf8_lossy(&key[KEY_PREFIX.len()..]).into_owned();
            if let Ok(stored) = serde_json::from_slice::<Stored>(&value) {
                expiries.insert((stored.expires_at, id));
            }
        }
        Sessions {
            context,
            expiries: RefCell::new(expiries),
        }
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
        loop {
            let now = now_ms();
            let expired: Vec<(i64, String)> = {
                let expiries = self.expiries.borrow();
                expiries
                    .iter()
                    .take_while(|(expires_at, _)| *expires_at <= now)
                    .take(KEYS_PER_BATCH_MAX)
                    .cloned()
                    .collect()
            };
            if expired.is_empty() {
                break;
            }
            for entry in expired {
                storage.delete(&session_key(&entry.1))?;
                self.expiries.borrow_mut().remove(&entry);
            }
            // Awaiting starts a new batch, keeping each within the engine's key limit.
            futures_lite::future::yield_now().await;
        }
        let next = self
            .expiries
            .borrow()
            .first()
            .map(|(expires_at, _)| *expires_at);
        match next {
            Some(expires_at) => storage.set_alarm(super::next_alarm_ms(&alarm, expires_at))?,
            None => storage.delete_alarm()?,
        }
        Ok(())
    }
}
