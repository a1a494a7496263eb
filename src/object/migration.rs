//! Class migrations (`[[migrations]]` in `stead.toml`): renamed and deleted classes.
//!
//! Only a class's tag is on disk (the first 8 bytes of each id, a hash of the class's name), so
//! a class renamed from `a` to `b` keeps its objects only if `b`'s ids are still made from `a`:
//! each registered class has an *id namespace*, its own name unless a migration renamed it,
//! else the first name of its rename chain (`a` → `b` → `c` gives `c` the namespace `a`). A
//! deleted class's tag is remembered so that each core removes its objects at start-up
//! (`shard/classes.rs`), and every name the migrations mention is remembered by its tag, so an
//! object of no registered class can be named when that is known.
//!
//! [`resolve`] replays the migrations in order (within one: new, renamed, deleted) and checks
//! them against the registered classes. It refuses, with the migration's tag in the error: a
//! migration naming a class that no class registered now answers to (a new class or a rename
//! target that is not registered, unless a later migration renames or deletes it), a renamed or
//! deleted class that is still registered, a rename or new class onto a name that already
//! holds a class, and reusing a name whose ids a migration deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::config::Migration;
use crate::id::ClassTag;

/// A class a migration deleted: its objects are removed at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedClass {
    /// The name the migration deleted.
    pub name: String,
    /// The tag of the migration that deleted it.
    pub migration: String,
}

/// What the migrations make of the registered classes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Registered classes whose ids are made from another name: class → id namespace.
    pub namespaces: BTreeMap<String, String>,
    /// The tags whose objects are deleted at start-up.
    pub deleted: BTreeMap<ClassTag, DeletedClass>,
    /// Every class name the migrations mention, by the tag of its own name.
    pub names: BTreeMap<ClassTag, String>,
}

/// What became of a name that no longer holds a class.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retirement {
    RenamedTo(String),
    Deleted,
}

impl fmt::Display for Retirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retirement::RenamedTo(to) => write!(f, "renames it to {to:?}"),
            Retirement::Deleted => write!(f, "deletes it"),
        }
    }
}

/// Why the migrations cannot be applied to the registered classes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationError {
    /// A migration without a tag (`position` counts from 1).
    EmptyTag { position: usize },
    /// Two migrations with one tag.
    DuplicateTag { tag: String },
    /// A name that no class could have.
    InvalidName { migration: String, name: String },
    /// `from` and `to` of a rename are one name.
    RenameToItself { migration: String, name: String },
    /// A rename or new class onto a name that holds a class at that point.
    AlreadyExists {
        migration: String,
        name: String,
        since: String,
    },
    /// A new class whose ids would be those of a renamed class (its first name).
    SharesIds {
        migration: String,
        name: String,
        holder: String,
    },
    /// A new class whose ids are those of a deleted class.
    ReusesDeletedIds {
        migration: String,
        name: String,
        deleted_by: String,
    },
    /// A rename or deletion of a name an earlier migration already renamed or deleted.
    AlreadyRetired {
        migration: String,
        name: String,
        earlier: String,
        retirement: Retirement,
    },
    /// A new class or rename target that no registered class answers to.
    NotRegistered { migration: String, name: String },
    /// A renamed or deleted class that is still registered.
    StillRegistered {
        migration: String,
        name: String,
        retirement: Retirement,
    },
}

impl fmt::Display for MigrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationError::EmptyTag { position } => {
                write!(f, "migration {position} has an empty tag")
            }
            MigrationError::DuplicateTag { tag } => {
                write!(f, "two migrations have the tag {tag:?}")
            }
            MigrationError::InvalidName { migration, name } => write!(
                f,
                "migration {migration:?}: {name:?} is not a class name (1 to {} bytes of a-z 0-9 _ -)",
                super::CLASS_NAME_BYTES_MAX
            ),
            MigrationError::RenameToItself { migration, name } => {
                write!(f, "migration {migration:?} renames {name:?} to itself")
            }
            MigrationError::AlreadyExists {
                migration,
                name,
                since,
            } => write!(
                f,
                "migration {migration:?}: class {name:?} already exists (since migration {since:?})"
            ),
            MigrationError::SharesIds {
                migration,
                name,
                holder,
            } => write!(
                f,
                "migration {migration:?}: a new class {name:?} would have the ids of class \
                 {holder:?}, which was renamed from {name:?}: choose another name"
            ),
            MigrationError::ReusesDeletedIds {
                migration,
                name,
                deleted_by,
            } => write!(
                f,
                "migration {migration:?}: a new class {name:?} would have the ids of the class \
                 {name:?} that migration {deleted_by:?} deletes: choose another name"
            ),
            MigrationError::AlreadyRetired {
                migration,
                name,
                earlier,
                retirement,
            } => write!(
                f,
                "migration {migration:?} names class {name:?}, but migration {earlier:?} already \
                 {retirement}"
            ),
            MigrationError::NotRegistered { migration, name } => write!(
                f,
                "migration {migration:?} names class {name:?}, but no class {name:?} is registered \
                 (register it, or rename or delete it in a later migration)"
            ),
            MigrationError::StillRegistered {
                migration,
                name,
                retirement,
            } => write!(
                f,
                "class {name:?} is registered, but migration {migration:?} {retirement}: \
                 unregister it"
            ),
        }
    }
}

impl std::error::Error for MigrationError {}

/// Objects of one class tag that no registered class has and no migration deletes, found on
/// one core (or, summed, on all of them): the server refuses to start rather than leave them
/// unreachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownClass {
    /// All the data says of the class: the first 8 bytes of its ids.
    pub tag: ClassTag,
    /// How many objects have it.
    pub objects: u64,
    /// The name this tag belongs to, when a migration or a registered class mentions it.
    pub name: Option<String>,
}

impl fmt::Display for UnknownClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let UnknownClass { tag, objects, name } = self;
        let plural = if *objects == 1 { "" } else { "s" };
        write!(
            f,
            "{objects} object{plural} of an unregistered class with tag {tag}"
        )?;
        if let Some(name) = name {
            write!(f, " (the tag of the class name {name:?})")?;
        }
        write!(f, ": register the class or add a migration that deletes it")
    }
}

/// A name that holds a class after some migration.
struct Live {
    /// Where its ids come from.
    namespace: String,
    /// The migration that gave it this name (for errors).
    since: String,
}

/// A name a migration took away from its class.
struct Retired {
    /// The migration that did.
    migration: String,
    retirement: Retirement,
}

/// Replays `migrations` in order and checks the outcome against the classes for which
/// `registered` is true.
pub fn resolve(
    migrations: &[Migration],
    registered: impl Fn(&str) -> bool,
) -> Result<Resolved, MigrationError> {
    let mut history = History::default();
    let mut tags = BTreeSet::new();
    for (index, migration) in migrations.iter().enumerate() {
        if migration.tag.is_empty() {
            return Err(MigrationError::EmptyTag {
                position: index + 1,
            });
        }
        if !tags.insert(migration.tag.as_str()) {
            return Err(MigrationError::DuplicateTag {
                tag: migration.tag.clone(),
            });
        }
        history.apply(migration)?;
    }
    history.check(registered)
}

/// The names the migrations so far gave classes or took from them. A name in neither map has
/// held its class from before the first migration (or never existed), with its own ids.
#[derive(Default)]
struct History {
    /// Names a migration gave a class (new or rename target), not taken away since.
    live: BTreeMap<String, Live>,
    /// Names a migration took away (renamed from, deleted), not given back since.
    retired: BTreeMap<String, Retired>,
    /// Tags whose objects are deleted.
    deleted: BTreeMap<ClassTag, DeletedClass>,
    /// Every name mentioned, by its own tag.
    names: BTreeMap<ClassTag, String>,
}

impl History {
    fn apply(&mut self, migration: &Migration) -> Result<(), MigrationError> {
        let tag = &migration.tag;
        for name in &migration.new_classes {
            self.mention(tag, name)?;
            self.refuse_existing(tag, name)?;
            if let Some((holder, _)) = self.live.iter().find(|(_, live)| live.namespace == *name) {
                return Err(MigrationError::SharesIds {
                    migration: tag.clone(),
                    name: name.clone(),
                    holder: holder.clone(),
                });
            }
            if let Some(deleted) = self.deleted.get(&ClassTag::of(name)) {
                return Err(MigrationError::ReusesDeletedIds {
                    migration: tag.clone(),
                    name: name.clone(),
                    deleted_by: deleted.migration.clone(),
                });
            }
            self.give(tag, name, name.clone());
        }
        for rename in &migration.renamed_classes {
            self.mention(tag, &rename.from)?;
            self.mention(tag, &rename.to)?;
            if rename.from == rename.to {
                return Err(MigrationError::RenameToItself {
                    migration: tag.clone(),
                    name: rename.from.clone(),
                });
            }
            let namespace = self.take(tag, &rename.from)?;
            self.refuse_existing(tag, &rename.to)?;
            self.retire(tag, &rename.from, Retirement::RenamedTo(rename.to.clone()));
            self.give(tag, &rename.to, namespace);
        }
        for name in &migration.deleted_classes {
            self.mention(tag, name)?;
            let namespace = self.take(tag, name)?;
            self.retire(tag, name, Retirement::Deleted);
            self.deleted.insert(
                ClassTag::of(&namespace),
                DeletedClass {
                    name: name.clone(),
                    migration: tag.clone(),
                },
            );
        }
        Ok(())
    }

    /// Checks that `name` can be a class's name and remembers it by its tag.
    fn mention(&mut self, migration: &str, name: &str) -> Result<(), MigrationError> {
        if !super::registry::is_valid_class_name(name) {
            return Err(MigrationError::InvalidName {
                migration: migration.to_string(),
                name: name.to_string(),
            });
        }
        self.names.insert(ClassTag::of(name), name.to_string());
        Ok(())
    }

    fn refuse_existing(&self, migration: &str, name: &str) -> Result<(), MigrationError> {
        match self.live.get(name) {
            Some(live) => Err(MigrationError::AlreadyExists {
                migration: migration.to_string(),
                name: name.to_string(),
                since: live.since.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Takes `name` from its class (to rename or delete it); returns the class's namespace.
    fn take(&mut self, migration: &str, name: &str) -> Result<String, MigrationError> {
        if let Some(retired) = self.retired.get(name) {
            return Err(MigrationError::AlreadyRetired {
                migration: migration.to_string(),
                name: name.to_string(),
                earlier: retired.migration.clone(),
                retirement: retired.retirement.clone(),
            });
        }
        Ok(match self.live.remove(name) {
            Some(live) => live.namespace,
            None => name.to_string(),
        })
    }

    fn retire(&mut self, migration: &str, name: &str, retirement: Retirement) {
        let retired = Retired {
            migration: migration.to_string(),
            retirement,
        };
        self.retired.insert(name.to_string(), retired);
    }

    fn give(&mut self, migration: &str, name: &str, namespace: String) {
        self.retired.remove(name);
        let live = Live {
            namespace,
            since: migration.to_string(),
        };
        self.live.insert(name.to_string(), live);
    }

    /// The outcome, if it agrees with the registered classes.
    fn check(self, registered: impl Fn(&str) -> bool) -> Result<Resolved, MigrationError> {
        if let Some((name, live)) = self.live.iter().find(|(name, _)| !registered(name)) {
            return Err(MigrationError::NotRegistered {
                migration: live.since.clone(),
                name: name.clone(),
            });
        }
        if let Some((name, retired)) = self.retired.iter().find(|(name, _)| registered(name)) {
            return Err(MigrationError::StillRegistered {
                migration: retired.migration.clone(),
                name: name.clone(),
                retirement: retired.retirement.clone(),
            });
        }
        let namespaces = self
            .live
            .into_iter()
            .filter(|(name, live)| *name != live.namespace)
            .map(|(name, live)| (name, live.namespace))
            .collect();
        Ok(Resolved {
            namespaces,
            deleted: self.deleted,
            names: self.names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClassRename;

    fn migration(tag: &str) -> Migration {
        Migration {
            tag: tag.to_string(),
            new_classes: Vec::new(),
            renamed_classes: Vec::new(),
            deleted_classes: Vec::new(),
        }
    }

    fn rename(tag: &str, from: &str, to: &str) -> Migration {
        Migration {
            renamed_classes: vec![ClassRename {
                from: from.to_string(),
                to: to.to_string(),
            }],
            ..migration(tag)
        }
    }

    fn delete(tag: &str, name: &str) -> Migration {
        Migration {
            deleted_classes: vec![name.to_string()],
            ..migration(tag)
        }
    }

    fn new(tag: &str, name: &str) -> Migration {
        Migration {
            new_classes: vec![name.to_string()],
            ..migration(tag)
        }
    }

    fn registered(names: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |name| names.contains(&name)
    }

    #[test]
    fn a_rename_chain_keeps_the_first_name_as_namespace() {
        let migrations = [rename("v1", "a", "b"), rename("v2", "b", "c")];
        let resolved = resolve(&migrations, registered(&["c", "other"])).expect("valid");
        assert_eq!(resolved.namespaces.get("c").map(String::as_str), Some("a"));
        assert_eq!(resolved.namespaces.len(), 1);
        assert!(resolved.deleted.is_empty());
        for name in ["a", "b", "c"] {
            assert_eq!(
                resolved.names.get(&ClassTag::of(name)).map(String::as_str),
                Some(name)
            );
        }
    }

    #[test]
    fn renaming_back_restores_the_own_namespace() {
        let migrations = [rename("v1", "a", "b"), rename("v2", "b", "a")];
        let resolved = resolve(&migrations, registered(&["a"])).expect("valid");
        assert!(resolved.namespaces.is_empty());
    }

    #[test]
    fn a_deletion_deletes_the_namespace_of_a_renamed_class() {
        let migrations = [rename("v1", "a", "b"), delete("v2", "b"), delete("v3", "x")];
        let resolved = resolve(&migrations, registered(&[])).expect("valid");
        assert_eq!(
            resolved.deleted.get(&ClassTag::of("a")),
            Some(&DeletedClass {
                name: "b".to_string(),
                migration: "v2".to_string()
            })
        );
        assert!(resolved.deleted.contains_key(&ClassTag::of("x")));
        assert!(!resolved.deleted.contains_key(&ClassTag::of("b")));
    }

    #[test]
    fn a_rename_target_must_be_registered() {
        let error = resolve(&[rename("v1", "a", "b")], registered(&["a"])).expect_err("b");
        assert_eq!(
            error,
            MigrationError::NotRegistered {
                migration: "v1".to_string(),
                name: "b".to_string()
            }
        );
        // A name in the middle of a chain needs no class.
        let chain = [rename("v1", "a", "b"), rename("v2", "b", "c")];
        assert!(resolve(&chain, registered(&["c"])).is_ok());
        // A new class must be registered too.
        let error = resolve(&[new("v1", "n")], registered(&[])).expect_err("n");
        assert!(
            error.to_string().contains("no class \"n\" is registered"),
            "{error}"
        );
    }

    #[test]
    fn a_renamed_or_deleted_class_must_not_be_registered() {
        let error = resolve(&[rename("v1", "a", "b")], registered(&["a", "b"])).expect_err("a");
        assert_eq!(
            error.to_string(),
            "class \"a\" is registered, but migration \"v1\" renames it to \"b\": unregister it"
        );
        let error = resolve(&[delete("v1", "a")], registered(&["a"])).expect_err("a");
        assert!(matches!(
            error,
            MigrationError::StillRegistered {
                retirement: Retirement::Deleted,
                ..
            }
        ));
    }

    #[test]
    fn names_that_hold_a_class_cannot_be_taken() {
        let migrations = [new("v1", "a"), new("v2", "b"), rename("v3", "a", "b")];
        let error = resolve(&migrations, registered(&["b"])).expect_err("b exists");
        assert!(
            matches!(error, MigrationError::AlreadyExists { .. }),
            "{error}"
        );
        // A new class with the first name of a renamed one would share its ids.
        let migrations = [rename("v1", "a", "b"), new("v2", "a")];
        let error = resolve(&migrations, registered(&["a", "b"])).expect_err("shares ids");
        assert!(matches!(error, MigrationError::SharesIds { .. }), "{error}");
        // A new class with the name of a deleted one would get its objects deleted.
        let migrations = [delete("v1", "a"), new("v2", "a")];
        let error = resolve(&migrations, registered(&["a"])).expect_err("deleted ids");
        assert!(
            matches!(error, MigrationError::ReusesDeletedIds { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_retired_name_cannot_be_renamed_or_deleted_again() {
        let migrations = [rename("v1", "a", "b"), delete("v2", "a")];
        let error = resolve(&migrations, registered(&["b"])).expect_err("a is gone");
        assert_eq!(
            error.to_string(),
            "migration \"v2\" names class \"a\", but migration \"v1\" already renames it to \"b\""
        );
    }

    #[test]
    fn the_registry_gives_a_renamed_class_the_ids_and_tag_of_its_first_name() {
        use crate::id::ObjectId;
        use crate::object::{ClassRegistry, TagFate};
        use crate::objects::Counter;

        let mut registry = ClassRegistry::new();
        registry.register::<Counter>("tally").expect("register");
        registry.register::<Counter>("plain").expect("register");
        let migrations = [
            rename("v1", "counter", "count"),
            rename("v2", "count", "tally"),
            delete("v3", "scratch"),
        ];
        registry.apply_migrations(&migrations).expect("valid");
        assert_eq!(registry.id_namespace("tally"), "counter");
        assert_eq!(registry.id_namespace("plain"), "plain");
        assert_eq!(registry.tag("tally"), Some(ClassTag::of("counter")));
        let old_id = ObjectId::from_name("counter", "x");
        assert_eq!(registry.class_of(&old_id), Some("tally"));
        assert_eq!(
            registry.fate(ClassTag::of("counter")),
            TagFate::Registered("tally")
        );
        assert!(matches!(
            registry.fate(ClassTag::of("scratch")),
            TagFate::Deleted(DeletedClass { name, .. }) if name == "scratch"
        ));
        // The own tags of renamed names are unknown, but named.
        assert_eq!(
            registry.fate(ClassTag::of("tally")),
            TagFate::Unknown(Some("tally"))
        );
        assert_eq!(
            registry.fate(ClassTag::of("count")),
            TagFate::Unknown(Some("count"))
        );
        assert_eq!(registry.fate(ClassTag::of("zzz")), TagFate::Unknown(None));
    }

    /// The example in the README's Configuration section is valid and means what it says.
    #[test]
    fn the_readme_example_resolves() {
        let readme = include_str!("../../README.md");
        let opening = "```toml\n[[migrations]]";
        let start = readme.find(opening).expect("an example in the README") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("the end of the example");
        let config: crate::Config = toml::from_str(&readme[start..end]).expect("valid TOML");
        let resolved = resolve(&config.migrations, registered(&["trolleys"])).expect("valid");
        assert_eq!(
            resolved.namespaces.get("trolleys").map(String::as_str),
            Some("carts")
        );
        assert!(resolved.deleted.contains_key(&ClassTag::of("drafts")));
    }

    #[test]
    fn tags_and_names_are_checked() {
        let error = resolve(&[migration(""), migration("v1")], registered(&[])).expect_err("tag");
        assert_eq!(error, MigrationError::EmptyTag { position: 1 });
        let error = resolve(&[migration("v1"), migration("v1")], registered(&[])).expect_err("2");
        assert!(matches!(error, MigrationError::DuplicateTag { .. }));
        let error = resolve(&[delete("v1", "Bad Name")], registered(&[])).expect_err("name");
        assert!(matches!(error, MigrationError::InvalidName { .. }));
        let error = resolve(&[rename("v1", "a", "a")], registered(&["a"])).expect_err("itself");
        assert!(matches!(error, MigrationError::RenameToItself { .. }));
        assert_eq!(resolve(&[], registered(&["a"])), Ok(Resolved::default()));
    }
}
