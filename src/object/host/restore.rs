//! Point-in-time recovery on the host: carrying out a restore an object asked for (at its next
//! activation, before its class's constructor runs), and the admin API's bookmarks and
//! restores. The history itself is `object/history.rs`.

use std::collections::BTreeMap;
use std::rc::Rc;

use stead_storage::Batch;

use super::{ObjectHost, Queue};
use crate::id::ObjectId;
use crate::object::history::{self, Before, Bookmark, History, HistoryError, RESTORE_KEY};
use crate::object::slot::Slot;
use crate::websocket::CloseCode;

/// Bytes of changes (new values and the values they replace, with their keys) one restore
/// batch carries at most, besides one change of any size: a quarter of the engine's batch.
const RESTORE_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Changes one restore batch carries at most.
const RESTORE_BATCH_CHANGES: usize = 1024;

/// The close code of an object's WebSockets when it restarts for a restore ("service
/// restart").
const RESTART_CLOSE_CODE: u16 = 1012;

/// Why a bookmark could not be given or restored through the admin API: the HTTP status
/// and the message.
pub type AdminHistoryError = (u16, String);

fn admin_error(error: HistoryError) -> AdminHistoryError {
    let status = match error {
        HistoryError::Damaged { .. } | HistoryError::Unavailable { .. } => 500,
        HistoryError::RestoreInProgress => 409,
        _ => 400,
    };
    (status, error.to_string())
}

/// What `admin_restore` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The bookmark the object went back to.
    pub bookmark: Bookmark,
    /// A bookmark of the state just before the restore: restoring it undoes the restore.
    pub undo: Bookmark,
}

impl ObjectHost {
    /// Takes an instance that asked for a restore out of memory after its event, and closes
    /// its WebSockets: its next event activates it again, which carries out the restore. An
    /// instance no longer in the map (already restarted) is only retired.
    pub(super) fn restart(&self, slot: &Slot) {
        if self.detach(slot) {
            self.close_sockets_for_restore(slot.id);
        }
        self.retire(slot, "the object restarts to restore a bookmark");
    }

    /// Closes the WebSockets of object `id` with 1012.
    fn close_sockets_for_restore(&self, id: ObjectId) {
        for socket in self.sockets.list(&id, None) {
            // A socket already closing refuses a second close; it goes away either way.
            let _ = socket.close(
                CloseCode(RESTART_CLOSE_CODE),
                "the object restarts to restore a bookmark",
            );
        }
    }

    /// The history of object `id` as the store holds it (record values left unread).
    async fn stored_history(&self, id: ObjectId, retention_ms: u64) -> Result<History, String> {
        let data = self
            .store
            .load_object_except(&id.0, history::is_record_key)
            .await
            .map_err(|error| format!("cannot read the object's history: {error}"))?;
        let mut history = History::new(retention_ms);
        for (key, value) in &data.entries {
            history.load_key(key, value);
        }
        history.loaded();
        Ok(history)
    }

    /// The stored history of object `id` of `class`, and the time it was read at.
    async fn admin_history(
        &self,
        class: &str,
        id: ObjectId,
    ) -> Result<(History, u64), AdminHistoryError> {
        let retention_ms = self.config.history_retention_ms(class);
        let history = self
            .stored_history(id, retention_ms)
            .await
            .map_err(|reason| (500, reason))?;
        Ok((history, history::now_ms()))
    }

    /// Commits `batch` of object `id` outside any event and waits until it is durable.
    async fn commit_durably(&self, id: ObjectId, batch: Batch) -> Result<(), String> {
        self.commit_outside_events(id, batch)
            .await
            .map(|_| ())
            .map_err(|error| format!("the restore was not committed: {error}"))
    }

    /// Carries out the restore object `id` asked for (`RESTORE_KEY`), if it did: puts every
    /// key-value entry, SQL page and the alarm back as they were at the bookmark, as new
    /// versions of its history (one batch, or several for a large change: the request is
    /// deleted by the last, so a crash in between carries the restore out again at the next
    /// activation, to the same state). A restore whose records are gone or damaged is
    /// dropped, and the error returned. Runs while the object is activating, so no event sees
    /// it half done. Returns the bookmark that undoes it, if there was one to carry out.
    pub(super) async fn restore_stored(
        &self,
        id: ObjectId,
        retention_ms: u64,
    ) -> Result<Option<Bookmark>, String> {
        let data = self
            .store
            .load_object(&id.0)
            .await
            .map_err(|error| format!("cannot read the object's history: {error}"))?;
        let Some(requested) = data.entries.get(RESTORE_KEY) else {
            return Ok(None);
        };
        let mut history = History::new(retention_ms);
        for (key, value) in &data.entries {
            history.load_key(key, value);
        }
        history.loaded();
        let target = match <[u8; 8]>::try_from(requested.as_slice()) {
            Err(_) => Err(HistoryError::Damaged {
                reason: "the restore request is malformed".to_string(),
            }),
            Ok(bytes) => history.state_at(u64::from_be_bytes(bytes), &data.entries, data.alarm_ms),
        };
        // A restore begun before a crash goes on even if the window was set to 0 meanwhile:
        // the object is half way between two states until it ends.
        let undo = history.undo_bookmark(history::now_ms());
        let (entries, alarm_ms) = match target {
            Ok(target) => target,
            Err(error) => {
                let mut batch = Batch::new();
                batch.delete(RESTORE_KEY);
                self.commit_durably(id, batch).await?;
                return Err(error.to_string());
            }
        };
        let current: BTreeMap<&[u8], &[u8]> = data
            .entries
            .iter()
            .filter(|(key, _)| !history::is_history_key(key))
            .map(|(key, value)| (key.as_slice(), value.as_slice()))
            .collect();
        // Puts in key order (SQL pages past the file's end rising), then deletes in reverse
        // key order (SQL pages from the end): every prefix of the changes leaves the SQL file
        // without holes, so a restore cut short by a crash still loads.
        let mut changes: Vec<Change> = entries
            .iter()
            .filter(|(key, value)| current.get(key.as_slice()) != Some(&value.as_slice()))
            .map(|(key, value)| (key.as_slice(), Some(value.as_slice())))
            .collect();
        let mut deletes: Vec<&[u8]> = current
            .keys()
            .filter(|key| !entries.contains_key(**key))
            .copied()
            .collect();
        deletes.reverse();
        changes.extend(deletes.into_iter().map(|key| (key, None)));
        let chunks = chunk_changes(&changes, &current);
        let last = chunks.len() - 1;
        for (index, chunk) in chunks.into_iter().enumerate() {
            let mut batch = Batch::new();
            let mut befores: Vec<Before> = Vec::with_capacity(chunk.len() + 1);
            for &(key, value) in chunk {
                match value {
                    Some(value) => batch.put(key, value),
                    None => batch.delete(key),
                };
                befores.push(Before::Key(key, current.get(key).copied()));
            }
            if index == last {
                if alarm_ms != data.alarm_ms {
                    match alarm_ms {
                        Some(time_ms) => batch.set_alarm(time_ms),
                        None => batch.delete_alarm(),
                    };
                    befores.push(Before::Alarm(data.alarm_ms));
                }
                batch.delete(RESTORE_KEY);
            }
            history.record(&mut batch, befores, history::now_ms(), index != last);
            self.commit_durably(id, batch).await?;
        }
        if alarm_ms != data.alarm_ms {
            let listener = self.alarm_listener.borrow().clone();
            if let Some(listener) = listener {
                listener(id, alarm_ms);
            }
        }
        Ok(Some(undo))
    }

    /// `GET /admin/objects/{class}/{target}/bookmark[?at=MS]`: the bookmark of object `id`
    /// now, or at `at_ms`.
    pub async fn admin_bookmark(
        &self,
        class: &str,
        id: ObjectId,
        at_ms: Option<u64>,
    ) -> Result<Bookmark, AdminHistoryError> {
        let (history, now_ms) = self.admin_history(class, id).await?;
        match at_ms {
            Some(at_ms) => history.bookmark_for_time(at_ms, now_ms),
            None => history.current_bookmark(now_ms),
        }
        .map_err(admin_error)
    }

    /// `POST /admin/objects/{class}/{target}/restore`: takes object `id` out of memory (its
    /// WebSockets closed with 1012), records the restore and activates the object, which
    /// carries it out before any event of the object runs; answers once it is durable.
    pub async fn admin_restore(
        self: &Rc<Self>,
        class: &str,
        id: ObjectId,
        bookmark: Bookmark,
    ) -> Result<Restored, AdminHistoryError> {
        let (history, now_ms) = self.admin_history(class, id).await?;
        history
            .check_restore(bookmark, now_ms)
            .map_err(admin_error)?;
        // Synchronous from here until the activation has started: no event can activate the
        // object in between and miss the request. An activation in progress may be carrying
        // out another restore: this one is refused until it ends.
        let slot = self.objects.borrow().get(&id).cloned();
        if let Some(slot) = slot {
            if slot.is_activating() {
                return Err((
                    409,
                    "the object is activating (it may be carrying out a restore); try again"
                        .to_string(),
                ));
            }
            self.restart(&slot);
        } else {
            self.close_sockets_for_restore(id);
        }
        let mut batch = Batch::new();
        batch.put(RESTORE_KEY, bookmark.version.to_be_bytes().to_vec());
        self.commit_outside_events(id, batch)
            .await
            .map_err(|reason| (500, reason))?;
        let event = self
            .admit(class, id, (Queue::Unbounded, false))
            .map_err(|error| (503, error.to_string()))?;
        event
            .ready()
            .await
            .map_err(|error| (500, error.to_string()))?;
        let undo = event.slot.restore_undo.take().ok_or_else(|| {
            (
                500,
                "the activation did not carry out the restore".to_string(),
            )
        })?;
        Ok(Restored { bookmark, undo })
    }
}

/// A key and its new value (`None`: deleted).
type Change<'a> = (&'a [u8], Option<&'a [u8]>);

/// `changes` cut into batches of at most `RESTORE_BATCH_CHANGES` changes and about
/// `RESTORE_BATCH_BYTES`, counting each change's key, new value and the value it replaces
/// (`current`); always at least one batch.
fn chunk_changes<'a, 'b>(
    changes: &'a [Change<'b>],
    current: &BTreeMap<&[u8], &[u8]>,
) -> Vec<&'a [Change<'b>]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, (key, value)) in changes.iter().enumerate() {
        let size = 2 * key.len()
            + value.map_or(0, <[u8]>::len)
            + current.get(key).map_or(0, |before| before.len());
        let full = index - start == RESTORE_BATCH_CHANGES || bytes + size > RESTORE_BATCH_BYTES;
        if full && index > start {
            chunks.push(&changes[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    chunks.push(&changes[start..]);
    chunks
}
