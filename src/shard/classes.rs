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
    let ids: Vec<ObjectId> = store.objects().into_iter().map(ObjectId).collect();
    let mut per_tag: BTreeMap<ClassTag, u64> = BTreeMap::new();
    for id in &ids {
        *per_tag.entry(id.class_tag()).or_default() += 1;
    }
    let mut unknown = Vec::new();
    let mut doomed: BTreeMap<ClassTag, Vec<ObjectId>> = BTreeMap::new();
    for (tag, objects) in per_tag {
        match registry.fate(tag) {
            TagFate::Registered(_) => {}
            TagFate::Deleted(_) => {
                doomed.insert(tag, Vec::new());
            }
            TagFate::Unknown(name) => unknown.push(UnknownClass {
                tag,
                objects,
                name: name.map(str::to_string),
            }),
        }
    }
    if !doomed.is_empty() {
        for id in ids {
            if let Some(doomed) = doomed.get_mut(&id.class_tag()) {
                doomed.push(id);
            }
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

#[cfg(test)]
mod tests {
    use glommio::{LocalExecutorBuilder, Placement};
    use stead_storage::StoreConfig;

    use super::*;
    use crate::config::Migration;
    use crate::objects::Counter;

    /// More objects of a deleted class than one round deletes, next to objects of a registered
    /// class and of an unknown one: after the deletion and a reopen only the others are left.
    #[test]
    fn deleted_classes_are_deleted_in_rounds_and_stay_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let doomed_objects = DELETIONS_PER_ROUND_MAX * 2 + 7;
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(256 * 1024)
            .spawn(move || async move {
                let mut registry = ClassRegistry::new();
                registry.register::<Counter>("kept").expect("register");
                let migration = Migration {
                    tag: "v1".to_string(),
                    new_classes: Vec::new(),
                    renamed_classes: Vec::new(),
                    deleted_classes: vec!["gone".to_string()],
                };
                registry.apply_migrations(&[migration]).expect("valid");

                let store = Store::open(StoreConfig::new(&path)).await.expect("open");
                let mut last = None;
                for n in 0..doomed_objects {
                    let mut batch = Batch::new();
                    batch.put(b"k".to_vec(), b"v".to_vec());
                    if n % 2 == 0 {
                        batch.set_alarm(1_000);
                    }
                    let id = ObjectId::from_name("gone", &n.to_string());
                    last = Some(store.commit(&id.0, batch).expect("commit").1);
                }
                for class in ["kept", "stray"] {
                    let mut batch = Batch::new();
                    batch.put(b"k".to_vec(), b"v".to_vec());
                    let id = ObjectId::from_name(class, "x");
                    last = Some(store.commit(&id.0, batch).expect("commit").1);
                }
                last.expect("a batch").await.expect("durable");

                let found = check(&store, &registry);
                assert_eq!(
                    found.unknown,
                    [UnknownClass {
                        tag: ClassTag::of("stray"),
                        objects: 1,
                        name: None
                    }]
                );
                let doomed = found.doomed.get(&ClassTag::of("gone")).map(Vec::len);
                assert_eq!(doomed, Some(doomed_objects));
                let found = ClassCheck {
                    unknown: Vec::new(),
                    doomed: found.doomed,
                };
                delete_doomed(0, &store, &registry, found)
                    .await
                    .expect("delete");
                store.close().await.expect("close");

                let store = Store::open(StoreConfig::new(&path)).await.expect("reopen");
                let mut left: Vec<ClassTag> = store
                    .objects()
                    .into_iter()
                    .map(|raw| ObjectId(raw).class_tag())
                    .collect();
                left.sort();
                let mut expected = vec![ClassTag::of("kept"), ClassTag::of("stray")];
                expected.sort();
                assert_eq!(left, expected);
                assert!(store.objects_with_alarms().is_empty());
                store.close().await.expect("close");
            })
            .expect("executor");
        handle.join().expect("test executor");
    }
}
