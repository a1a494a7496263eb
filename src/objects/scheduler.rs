//! `scheduler`: many scheduled events on one alarm, as in the design's "multiple events, single
//! alarm" pattern.
//!
//! `POST /events` with `{"id": string, "runAt": ms since the epoch, "repeatMs"?: integer of at
//! least `[scheduler] repeat_ms_min`}` schedules (or replaces) an event and answers 201 with it. `GET /events` answers the
//! pending events, earliest first, as `[{"id","runAt","repeatMs"?}]`; `GET /fired` the firings,
//! in firing order, as `[{"id","runAt","firedAt"}]`; `DELETE /events/{id}` answers
//! `{"deleted":true}`, or 404 if there is no such event. Bad JSON or fields are 400 with a JSON
//! error; any other path is 404 `Not Found`, a known path with another method 405.
//!
//! The alarm is kept at the earliest `runAt`. When it fires, the due events are processed in
//! time order: each firing is recorded with `firedAt` = the time of processing, a repeating
//! event moves to `firedAt + repeatMs` (runs missed while the server was down are skipped, not
//! replayed), any other is deleted; then the alarm moves to the next event. Due events are
//! processed `EVENTS_PER_BATCH` per batch, so any number of them can fall due together.
//!
//! Every firing is a durable write, so `repeatMs` has a floor (`repeat_ms_min`, 1 s by default):
//! a shorter one is 400, and an event stored before the floor was raised repeats at the floor.
//! Answers keep the fields in the order above (`JSON.stringify` order), byte for byte.
//!
//! Storage: `e/` ‖ id → the event as JSON; `f/` ‖ sequence (8 bytes, big-endian) → one firing
//! as JSON. Only the last `FIRED_MAX` firings are kept, so a repeating event cannot grow the
//! object without bound.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{json_response, KEYS_PER_BATCH_MAX};
use crate::http::{percent_decode, Method, Request, Response};
use crate::object::{now_ms, AlarmInfo, DurableObject, ListOptions, ObjectContext, ObjectError};

/// Prefix of the event keys.
const EVENT_PREFIX: &[u8] = b"e/";
/// Prefix of the firing keys.
const FIRED_PREFIX: &[u8] = b"f/";
/// Firings kept for `GET /fired`; older ones are deleted as new ones are recorded.
const FIRED_MAX: usize = 1_000;
/// Longest event id, in bytes.
const EVENT_ID_BYTES_MAX: usize = 512;
/// Due events processed per batch by the alarm; each writes at most two keys and deletes at
/// most two.
const EVENTS_PER_BATCH: usize = KEYS_PER_BATCH_MAX / 2;

/// One scheduled event, as stored and as `GET /events` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    id: String,
    run_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    repeat_ms: Option<u64>,
}

/// One firing, as stored and as `GET /fired` answers it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Firing {
    id: String,
    run_at: i64,
    fired_at: i64,
}

/// The object's state in memory (it mirrors storage).
#[derive(Default)]
struct State {
    /// Pending events by id.
    events: BTreeMap<String, Event>,
    /// `(runAt, id)` of every pending event, earliest first.
    by_time: BTreeSet<(i64, String)>,
    /// Sequence numbers of the kept firings, oldest first.
    fired: VecDeque<u64>,
    /// Sequence number of the next firing.
    next_fired: u64,
}

pub struct Scheduler {
    /// Storage and identity of this object.
    context: ObjectContext,
    /// Events and firings.
    state: RefCell<State>,
}

fn event_key(id: &str) -> Vec<u8> {
    [EVENT_PREFIX, id.as_bytes()].concat()
}

fn fired_key(sequence: u64) -> Vec<u8> {
    [FIRED_PREFIX, &sequence.to_be_bytes()].concat()
}

fn bad_request(message: &str) -> Response {
    Response::json_error(400, message)
}

/// Parses and checks a `POST /events` body; `repeat_ms_min` is the shortest repeat allowed.
fn parse_event(body: &[u8], repeat_ms_min: u64) -> Result<Event, Response> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| bad_request(&format!("invalid JSON: {error}")))?;
    let id = match value.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= EVENT_ID_BYTES_MAX => id.clone(),
        _ => {
            return Err(bad_request(&format!(
                "id must be a string of 1 to {EVENT_ID_BYTES_MAX} bytes"
            )))
        }
    };
    let Some(run_at) = value.get("runAt").and_then(Value::as_i64) else {
        return Err(bad_request(
            "runAt must be an integer (milliseconds since the epoch)",
        ));
    };
    let repeat_ms = match value.get("repeatMs") {
        None | Some(Value::Null) => None,
        Some(repeat) => match repeat.as_u64() {
            Some(repeat_ms) if repeat_ms >= repeat_ms_min && repeat_ms <= i64::MAX as u64 => {
                Some(repeat_ms)
            }
            _ => {
                return Err(bad_request(&format!(
                    "repeatMs must be an integer of at least {repeat_ms_min} (repeat_ms_min)"
                )))
            }
        },
    };
    Ok(Event {
        id,
        run_at,
        repeat_ms,
    })
}

impl Scheduler {
    fn schedule(&self, request: &Request) -> Result<Response, ObjectError> {
        let repeat_ms_min = self.repeat_ms_min();
        let event = match parse_event(&request.body, repeat_ms_min) {
            Ok(event) => event,
            Err(response) => return Ok(response),
        };
        self.context
            .storage()
            .put(&event_key(&event.id), serde_json::to_vec(&event)?)?;
        let mut state = self.state.borrow_mut();
        if let Some(old) = state.events.insert(event.id.clone(), event.clone()) {
            state.by_time.remove(&(old.run_at, old.id));
        }
        state.by_time.insert((event.run_at, event.id.clone()));
        self.set_alarm(&state)?;
        json_response(201, &event)
    }

    fn list_events(&self) -> Result<Response, ObjectError> {
        let state = self.state.borrow();
        let events: Vec<&Event> = state
            .by_time
            .iter()
            .filter_map(|(_, id)| state.events.get(id))
            .collect();
        json_response(200, &events)
    }

    fn list_fired(&self) -> Result<Response, ObjectError> {
        let options = ListOptions {
            prefix: Some(FIRED_PREFIX.to_vec()),
            ..ListOptions::default()
        };
        let firings: Vec<Firing> = self
            .context
            .storage()
            .list(&options)
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        json_response(200, &firings)
    }

    fn delete_event(&self, id: &str) -> Result<Response, ObjectError> {
        let mut state = self.state.borrow_mut();
        let Some(event) = state.events.remove(id) else {
            return Ok(Response::json_error(404, "Event not found"));
        };
        state.by_time.remove(&(event.run_at, event.id));
        self.context.storage().delete(&event_key(id))?;
        self.set_alarm(&state)?;
        Ok(Response::json(200, &json!({ "deleted": true })))
    }

    /// The shortest repeat allowed, at least 1 ms (a 0 in the configuration would make a
    /// repeating event due again at once, forever).
    fn repeat_ms_min(&self) -> u64 {
        self.context.config().scheduler.repeat_ms_min.max(1)
    }

    /// Puts the alarm at the earliest pending event, or removes it when there is none.
    fn set_alarm(&self, state: &State) -> Result<(), ObjectError> {
        let storage = self.context.storage();
        match state.by_time.first() {
            Some((run_at, _)) if storage.get_alarm() != Some(*run_at) => {
                storage.set_alarm(*run_at)?
            }
            Some(_) => {}
            None => storage.delete_alarm()?,
        }
        Ok(())
    }

    /// Fires the earliest event if it is due by `now`; false when none is.
    fn fire_next(&self, now: i64) -> Result<bool, ObjectError> {
        let storage = self.context.storage();
        let mut state = self.state.borrow_mut();
        let Some((run_at, id)) = state.by_time.first().cloned() else {
            return Ok(false);
        };
        if run_at > now {
            return Ok(false);
        }
        state.by_time.remove(&(run_at, id.clone()));
        let Some(mut event) = state.events.remove(&id) else {
            return Ok(true);
        };
        let firing = Firing {
            id: id.clone(),
            run_at,
            fired_at: now,
        };
        let sequence = state.next_fired;
        storage.put(&fired_key(sequence), serde_json::to_vec(&firing)?)?;
        state.next_fired += 1;
        state.fired.push_back(sequence);
        while state.fired.len() > FIRED_MAX {
            if let Some(oldest) = state.fired.pop_front() {
                storage.delete(&fired_key(oldest))?;
            }
        }
        match event.repeat_ms {
            Some(repeat_ms) => {
                let repeat_ms = repeat_ms.max(self.repeat_ms_min());
                event.run_at = now.saturating_add(repeat_ms as i64);
                storage.put(&event_key(&id), serde_json::to_vec(&event)?)?;
                state.by_time.insert((event.run_at, id.clone()));
                state.events.insert(id, event);
            }
            None => {
                storage.delete(&event_key(&id))?;
            }
        }
        Ok(true)
    }
}

impl DurableObject for Scheduler {
    fn new(context: ObjectContext) -> Scheduler {
        let storage = context.storage();
        let mut state = State::default();
        let events = ListOptions {
            prefix: Some(EVENT_PREFIX.to_vec()),
            ..ListOptions::default()
        };
        for (_, value) in storage.list(&events) {
            if let Ok(event) = serde_json::from_slice::<Event>(&value) {
                state.by_time.insert((event.run_at, event.id.clone()));
                state.events.insert(event.id.clone(), event);
            }
        }
        let fired = ListOptions {
            prefix: Some(FIRED_PREFIX.to_vec()),
            ..ListOptions::default()
        };
        for (key, _) in storage.list(&fired) {
            if let Ok(bytes) = <[u8; 8]>::try_from(&key[FIRED_PREFIX.len()..]) {
                let sequence = u64::from_be_bytes(bytes);
                state.fired.push_back(sequence);
                state.next_fired = sequence.wrapping_add(1);
            }
        }
        Scheduler {
            context,
            state: RefCell::new(state),
        }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        match (request.path.as_str(), request.method) {
            ("/events", Method::Post) => self.schedule(&request),
            ("/events", Method::Get) => self.list_events(),
            ("/fired", Method::Get) => self.list_fired(),
            ("/events" | "/fired", _) => Ok(Response::json_error(405, "method not allowed")),
            (path, method) => {
                let id = path
                    .strip_prefix("/events/")
                    .and_then(|id| percent_decode(id, false));
                match (id, method) {
                    (Some(id), Method::Delete) => self.delete_event(&id),
                    (Some(_), _) => Ok(Response::json_error(405, "use DELETE /events/{id}")),
                    (None, _) => Ok(Response::not_found()),
                }
            }
        }
    }

    /// Processes the due events in time order, then moves the alarm to the next one.
    async fn alarm(&self, alarm: AlarmInfo) -> Result<(), ObjectError> {
        let now = now_ms();
        let mut fired_in_batch = 0;
        while self.fire_next(now)? {
            fired_in_batch += 1;
            if fired_in_batch == EVENTS_PER_BATCH {
                // Awaiting starts a new batch, keeping each within the engine's key limit.
                futures_lite::future::yield_now().await;
                fired_in_batch = 0;
            }
        }
        let next = self
            .state
            .borrow()
            .by_time
            .first()
            .map(|(run_at, _)| *run_at);
        let storage = self.context.storage();
        match next {
            Some(run_at) => storage.set_alarm(super::next_alarm_ms(&alarm, run_at))?,
            None => storage.delete_alarm()?,
        }
        Ok(())
    }
}
