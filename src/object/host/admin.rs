//! The operator's view of one core's objects, for `/admin/…`: what the store's index and the
//! host know of each object, its stored key-value pairs and SQL tables, and deletion.
//!
//! Everything here reads the store (the committed state), not an active instance's memory: an
//! object's writes reach the store after every poll of its handler, so the two differ only by
//! writes in the middle of an event.

use stead_storage::{Batch, StoreError};

use super::ObjectHost;
use crate::id::{ClassTag, ObjectId};
use crate::object::history::is_history_key;
use crate::object::sql::pages::is_page_key;
use crate::object::storage::{is_reserved_key, NAME_KEY};
use crate::object::{SqlValue, Storage};
use crate::websocket::CloseCode;

/// One object as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub id: ObjectId,
    /// The name a request reached it by, stored with its first batch after that request;
    /// `None` for an object only ever reached by id, or one that never wrote.
    pub name: Option<String>,
    /// Whether it is in memory on its core.
    pub active: bool,
    /// Its key-value keys, and their key and value bytes.
    pub keys: u64,
    pub bytes: u64,
    /// The bytes of its SQL database's pages (with their keys).
    pub sql_bytes: u64,
    /// The bytes of its history for point-in-time recovery (keys and values).
    pub history_bytes: u64,
    /// Its alarm, milliseconds since the Unix epoch.
    pub alarm_ms: Option<i64>,
    /// Its open WebSockets.
    pub sockets: usize,
}

/// A page of one object's key-value pairs, and its SQL tables.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoragePage {
    /// Pairs in key order.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// The key to continue after, when there are more.
    pub next: Option<Vec<u8>>,
    /// The tables of its SQL database, by name.
    pub tables: Vec<TableInfo>,
}

/// One table of an object's SQL database.
#[derive(Clone, Debug, PartialEq)]
pub struct TableInfo {
    pub name: String,
    /// Its `CREATE` statement.
    pub sql: String,
    /// Its rows; `None` when counting them ran past the statement limits.
    pub rows: Option<i64>,
}

impl ObjectHost {
    /// The objects of the class whose ids carry `tag` on this core with ids after `after`, in
    /// id order, at most `limit`, and (with `prefix`) only those whose stored name starts with it. Both the
    /// objects with stored data and those in memory without any are listed.
    pub async fn admin_list(
        &self,
        tag: ClassTag,
        after: Option<ObjectId>,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut ids: Vec<ObjectId> = self
            .store
            .objects()
            .into_iter()
            .map(ObjectId)
            .chain(self.objects.borrow().keys().copied())
            .filter(|id| id.class_tag() == tag && after.is_none_or(|after| *id > after))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut found = Vec::new();
        for id in ids {
            if found.len() == limit {
                break;
            }
            let Some(info) = self.admin_object(id).await? else {
                continue;
            };
            let named = |prefix: &str| {
                info.name
                    .as_deref()
                    .is_some_and(|name| name.starts_with(prefix))
            };
            if prefix.is_none_or(named) {
                found.push(info);
            }
        }
        Ok(found)
    }

    /// What this core knows of object `id`; `None` when it has no stored data, is not in
    /// memory and has no socket.
    pub async fn admin_object(&self, id: ObjectId) -> Result<Option<ObjectInfo>, StoreError> {
        let summary = self.store.object_summary(&id.0, is_reserved_key);
        let active = self.objects.borrow().contains_key(&id);
        let sockets = self.sockets.list(&id, None).len();
        let Some(summary) = summary else {
            let info = ObjectInfo {
                id,
                name: None,
                active,
                keys: 0,
                bytes: 0,
                sql_bytes: 0,
                history_bytes: 0,
                alarm_ms: None,
                sockets,
            };
            return Ok((active || sockets > 0).then_some(info));
        };
        let name = match self.store.get(&id.0, NAME_KEY).await? {
            Some(bytes) => String::from_utf8(bytes).ok(),
            None => None,
        };
        let name_bytes = name
            .as_ref()
            .map_or(0, |name| (NAME_KEY.len() + name.len()) as u64);
        let history_bytes = self
            .store
            .object_summary(&id.0, is_history_key)
            .map_or(0, |history| history.reserved_bytes);
        Ok(Some(ObjectInfo {
            id,
            name,
            active,
            keys: summary.keys,
            bytes: summary.bytes,
            sql_bytes: summary
                .reserved_bytes
                .saturating_sub(name_bytes + history_bytes),
            history_bytes,
            alarm_ms: summary.alarm_ms,
            sockets,
        }))
    }

    /// Up to `limit` key-value pairs of object `id` whose keys start with `prefix` and come
    /// after `after`, and its SQL tables (with the first page only: `after` is `None`).
    pub async fn admin_storage(
        &self,
        id: ObjectId,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<StoragePage, String> {
        let data = self
            .store
            .load_object(&id.0)
            .await
            .map_err(|error| format!("cannot read the object's storage: {error}"))?;
        let has_sql = data.entries.keys().any(|key| is_page_key(key));
        let mut page = StoragePage::default();
        let mut matching = data.entries.iter().filter(|(key, _)| {
            !is_reserved_key(key)
                && key.starts_with(prefix)
                && after.is_none_or(|after| key.as_slice() > after)
        });
        for (key, value) in matching.by_ref().take(limit) {
            page.entries.push((key.clone(), value.clone()));
        }
        if matching.next().is_some() {
            page.next = page.entries.last().map(|(key, _)| key.clone());
        }
        if has_sql && after.is_none() {
            page.tables = self.tables(data)?;
        }
        Ok(page)
    }

    /// The tables of the SQL database in `data`, read through a copy of the object's storage
    /// that belongs to no instance (it takes no writes that could reach the store).
    fn tables(&self, data: stead_storage::ObjectData) -> Result<Vec<TableInfo>, String> {
        let storage = Storage::new(self.limits.clone(), self.config.sql.clone(), 0);
        storage.load(data)?;
        let sql = storage.sql();
        let listed = sql
            .exec(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name",
                &[],
            )
            .map_err(|error| format!("cannot list the SQL tables: {error}"))?;
        let mut tables = Vec::new();
        for row in listed.raw() {
            let text = |index: usize| match row.get(index) {
                Some(SqlValue::Text(text)) => text.clone(),
                _ => String::new(),
            };
            let name = text(0);
            let count = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
            let rows = sql.exec(&count, &[]).ok().and_then(|cursor| {
                match cursor.raw().first().and_then(|row| row.first()) {
                    Some(SqlValue::Integer(rows)) => Some(*rows),
                    _ => None,
                }
            });
            tables.push(TableInfo {
                name,
                sql: text(1),
                rows,
            });
        }
        storage.make_unavailable("a copy for the admin API".to_string());
        Ok(tables)
    }

    /// Deletes object `id`: takes it out of memory (its events in flight can write no more),
    /// closes its sockets with 1001, and removes its keys, SQL pages, name and alarm in one
    /// batch, durable before this returns. Returns whether there was anything to delete.
    pub async fn admin_delete(&self, id: ObjectId) -> Result<bool, String> {
        let slot = self.objects.borrow_mut().remove(&id);
        if let Some(slot) = &slot {
            self.retire(slot, "the object was deleted by an operator");
        }
        let sockets = self.sockets.list(&id, None);
        for socket in &sockets {
            // A socket already closing refuses a second close; it goes away either way.
            let _ = socket.close(CloseCode::GOING_AWAY, "the object was deleted");
        }
        let stored = self.store.object_summary(&id.0, |_| false).is_some();
        if !stored {
            return Ok(slot.is_some() || !sockets.is_empty());
        }
        let mut batch = Batch::new();
        batch.delete_all();
        batch.delete_alarm();
        // Synchronous up to the commit in `commit_outside_events`: an activation admitted after
        // the removal above loads the object from the store after this commit, so it finds it
        // empty.
        self.commit_outside_events(id, batch).await?;
        let listener = self.alarm_listener.borrow().clone();
        if let Some(listener) = listener {
            listener(id, None);
        }
        Ok(true)
    }

    /// Objects of each class on this core (by its tag), in the order of `tags`, and then those
    /// of none of them.
    pub fn admin_counts(&self, tags: &[ClassTag]) -> Vec<u64> {
        let mut counts = vec![0u64; tags.len() + 1];
        for id in self.store.objects() {
            let tag = ObjectId(id).class_tag();
            let index = tags
                .iter()
                .position(|known| *known == tag)
                .unwrap_or(tags.len());
            counts[index] += 1;
        }
        counts
    }
}
