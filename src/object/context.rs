//! [`ObjectContext`]: what an object instance is given: its identity, storage and the server's
//! configuration.

use std::rc::Rc;

use super::Storage;
use crate::config::Config;
use crate::id::ObjectId;

/// The fixed parts of one object's context, shared by all clones.
#[derive(Debug)]
struct Inner {
    /// The object's id (its class tag in the first 8 bytes).
    id: ObjectId,
    /// The class name it was addressed by.
    class: Rc<str>,
    /// Its storage, loaded before the instance is built.
    storage: Storage,
    /// The server's configuration (built-in classes read their defaults from it).
    config: Rc<Config>,
}

/// An object's identity, storage and configuration. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ObjectContext {
    /// Shared so that cloning the context is one reference count.
    inner: Rc<Inner>,
}

impl ObjectContext {
    pub(super) fn new(
        id: ObjectId,
        class: Rc<str>,
        storage: Storage,
        config: Rc<Config>,
    ) -> ObjectContext {
        ObjectContext {
            inner: Rc::new(Inner {
                id,
                class,
                storage,
                config,
            }),
        }
    }

    pub fn id(&self) -> ObjectId {
        self.inner.id
    }

    pub fn class(&self) -> &str {
        &self.inner.class
    }

    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }
}
