//! A core's start-up check of the classes in its store, before anything is served.
//!
//! Every object on disk has a class tag (the first 8 bytes of its id). Each tag must be a
//! registered class's, or a class a migration deletes (`[[migrations]]`, resolved in
//! `object/migration.rs`); any other is reported to the starting thread, which refuses to
//! start the server rather than leave those objects unreachable. Deletions wait until every
//! core has reported and found nothing unknown, so a refused start changes nothing, and they
//! are durable before the core serves.

use std::collections::BTreeMap;

use stead_storage::{Batch, Store, StoreError};

use crate::id::{ClassTag, ObjectId};
use crate::object::{ClassRegistry, TagFate, UnknownClass};

/// Objects deleted before waiting for their batches to be durable: bounds the batches queued
/// in the store at once.
const DELETIONS_PER_ROUND_MAX: usize = 1024;

/// What a core found in its store.
pub struct ClassCheck {
    /// Tags of no registered class and no deletion, with their object counts.
    pub unknown: Vec<UnknownClass>,
    /// Objects of deleted classes, by tag.
    doomed: BTreeMap<ClassTag, Vec<ObjectId>>,
}

/// Sorts the objects of `store` by what becomes of their class.
pub fn check(store: &Store, registry: &ClassRegistry) -> ClassCheck {
    let mut by_tag: BTreeMap<ClassTag, Vec<ObjectId>> = BTreeMap::new();
    for raw in store.objects() {
        let id = ObjectId(raw);
        by_tag.entry(id.class_tag()).or_default().push(id);
    }
    let mut unknown = Vec::new();
    let mut doomed = BTreeMap::new();
    for (tag, ids) in by_tag {
        match registry.fate(tag) {
            TagFate::Registered(_) => {}
            TagFate::Deleted(_) => {
                doomed.insert(tag, ids);
            }
            TagFate::Unknown(name) => unknown.push(UnknownClass {
                tag,
                objects: ids.len() as u64,
                name: name.map(str::to_string),
            }),
        }
    }
    ClassCheck { unknown, doomed }
}

/// Deletes every object of the deleted classes `check` found (keys, SQL pages and alarm), and
/// returns once that is durable.
pub async fn delete_doomed(
    core: usize,
    store: &Store,
    registry: &ClassRegistry,
    check: ClassCheck,
) -> Result<(), StoreError> {
    debug_assert!(check.unknown.is_empty());
    for (tag, ids) in check.doomed {
        for round in ids.chunks(DELETIONS_PER_ROUND_MAX) {
            let mut last = None;
            for id in round {
                let mut batch = Batch::new();
                batch.delete_all().delete_alarm();
                let (_, durable) = store.commit(&id.0, batch)?;
                last = Some(durable);
            }
            // Batches become durable in order: the round's last one is durable after the rest.
            if let Some(durable) = last {
                durable.await?;
            }
        }
        if let TagFate::Deleted(deleted) = registry.fate(tag) {
            tracing::info!(
                core,
                objects = ids.len(),
                class = deleted.name,
                migration = deleted.migration,
                "deleted the objects of a class a migration deletes"
            );
        }
        debug_assert!(ids.iter().all(|id| store.alarm(&id.0).is_none()));
    }
    Ok(())
}
