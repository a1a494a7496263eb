//! The class registry: class name → constructor and id namespace, shared by every core.
//!
//! A class is a type implementing [`DurableObject`]; its RPITIT handlers cannot be called through
//! a trait object, so each class is stored as a plain `fn` pointer that builds an
//! `Rc<dyn DynObject>` ([`DynObject`] boxes the handler futures). Plain `fn` pointers and strings
//! make the registry `Send + Sync`: one `Arc<ClassRegistry>` serves every core, while the objects
//! it builds stay on the core that built them.

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use futures_lite::future::BoxedLocal;

use super::migration::{self, DeletedClass, MigrationError};
use super::{AlarmInfo, DurableObject, ObjectContext, ObjectError, SocketClose};
use crate::config::Migration;
use crate::http::{Request, Response};
use crate::id::{ClassTag, ObjectId};
use crate::websocket::{Message as WebSocketMessage, SocketHandle};

/// An object-safe view of a [`DurableObject`]: the same handlers, with boxed futures that own an
/// `Rc` of the instance, so a running event keeps its object alive.
pub trait DynObject {
    fn init(self: Rc<Self>) -> BoxedLocal<Result<(), ObjectError>>;
    fn fetch(self: Rc<Self>, request: Request) -> BoxedLocal<Result<Response, ObjectError>>;
    fn alarm(self: Rc<Self>, alarm: AlarmInfo) -> BoxedLocal<Result<(), ObjectError>>;
    fn websocket_message(
        self: Rc<Self>,
        socket: SocketHandle,
        message: WebSocketMessage,
    ) -> BoxedLocal<Result<(), ObjectError>>;
    fn websocket_close(
        self: Rc<Self>,
        socket: SocketHandle,
        close: SocketClose,
    ) -> BoxedLocal<Result<(), ObjectError>>;
    fn websocket_error(
        self: Rc<Self>,
        socket: SocketHandle,
        error: String,
    ) -> BoxedLocal<Result<(), ObjectError>>;
}

impl<T: DurableObject> DynObject for T {
    fn init(self: Rc<Self>) -> BoxedLocal<Result<(), ObjectError>> {
        Box::pin(async move { <T as DurableObject>::init(&self).await })
    }

    fn fetch(self: Rc<Self>, request: Request) -> BoxedLocal<Result<Response, ObjectError>> {
        Box::pin(async move { <T as DurableObject>::fetch(&self, request).await })
    }

    fn alarm(self: Rc<Self>, alarm: AlarmInfo) -> BoxedLocal<Result<(), ObjectError>> {
        Box::pin(async move { <T as DurableObject>::alarm(&self, alarm).await })
    }

    fn websocket_message(
        self: Rc<Self>,
        socket: SocketHandle,
        message: WebSocketMessage,
    ) -> BoxedLocal<Result<(), ObjectError>> {
        Box::pin(
            async move { <T as DurableObject>::websocket_message(&self, socket, message).await },
        )
    }

    fn websocket_close(
        self: Rc<Self>,
        socket: SocketHandle,
        close: SocketClose,
    ) -> BoxedLocal<Result<(), ObjectError>> {
        Box::pin(async move { <T as DurableObject>::websocket_close(&self, socket, close).await })
    }

    fn websocket_error(
        self: Rc<Self>,
        socket: SocketHandle,
        error: String,
    ) -> BoxedLocal<Result<(), ObjectError>> {
        Box::pin(async move { <T as DurableObject>::websocket_error(&self, socket, error).await })
    }
}

/// Builds one instance of a class when an object activates.
pub type Constructor = fn(ObjectContext) -> Rc<dyn DynObject>;

fn make<T: DurableObject>(context: ObjectContext) -> Rc<dyn DynObject> {
    Rc::new(T::new(context))
}

/// Why a class could not be registered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// Another class already has this name.
    DuplicateClass { name: String },
    /// Empty, longer than [`CLASS_NAME_BYTES_MAX`], or with a byte other than `a-z 0-9 _ -`
    /// (the name is a URL path segment).
    InvalidName { name: String },
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::DuplicateClass { name } => {
                write!(f, "class {name:?} is registered twice")
            }
            RegistryError::InvalidName { name } => write!(
                f,
                "invalid class name {name:?}: use 1 to {CLASS_NAME_BYTES_MAX} bytes of a-z 0-9 _ -"
            ),
        }
    }
}

impl std::error::Error for RegistryError {}

/// Longest class name, in bytes.
pub const CLASS_NAME_BYTES_MAX: usize = 64;

/// One registered class.
#[derive(Clone)]
struct ClassEntry {
    /// The first 8 bytes of every id of this class, so an alarm (which knows only the id) can
    /// find its class; the tag of `namespace`.
    tag: ClassTag,
    /// The name its ids are made from: its own, or the first name of its rename chain.
    namespace: String,
    /// Builds an instance.
    constructor: Constructor,
}

/// What the class of an object found on disk is, by its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagFate<'a> {
    /// A registered class, by name.
    Registered(&'a str),
    /// A class a migration deleted: its objects are removed at start-up.
    Deleted(&'a DeletedClass),
    /// No registered class and no deletion: the server must not start. The name is the one
    /// a registered class or a migration gives this tag, when one does.
    Unknown(Option<&'a str>),
}

/// Every class the server hosts, by route name, and what the migrations did to classes.
#[derive(Clone, Default)]
pub struct ClassRegistry {
    /// Ordered by name, so listings are stable; lookups are over a handful of classes.
    classes: BTreeMap<String, ClassEntry>,
    /// The tags whose objects each core deletes at start-up.
    deleted: BTreeMap<ClassTag, DeletedClass>,
    /// Names of tags that no registered class has (a name the migrations mention, or a
    /// registered class's own name when it takes its ids from another), to name them in the
    /// start-up error.
    names: BTreeMap<ClassTag, String>,
}

/// True for a name a class can have: it is a URL path segment.
pub(super) fn is_valid_class_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= CLASS_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl ClassRegistry {
    pub fn new() -> ClassRegistry {
        ClassRegistry::default()
    }

    /// Registers `T` under `name`, the `{class}` of `/objects/{class}/...`.
    pub fn register<T: DurableObject>(&mut self, name: &str) -> Result<(), RegistryError> {
        if !is_valid_class_name(name) {
            return Err(RegistryError::InvalidName {
                name: name.to_string(),
            });
        }
        if self.classes.contains_key(name) {
            return Err(RegistryError::DuplicateClass {
                name: name.to_string(),
            });
        }
        self.classes.insert(
            name.to_string(),
            ClassEntry {
                tag: ClassTag::of(name),
                namespace: name.to_string(),
                constructor: make::<T>,
            },
        );
        Ok(())
    }

    /// Applies the class migrations to the registered classes: renamed classes take their ids
    /// from their first name, deleted classes' tags are remembered. Call once, after the last
    /// `register`.
    pub fn apply_migrations(&mut self, migrations: &[Migration]) -> Result<(), MigrationError> {
        let resolved = migration::resolve(migrations, |name| self.classes.contains_key(name))?;
        self.names = resolved.names;
        for (class, namespace) in resolved.namespaces {
            if let Some(entry) = self.classes.get_mut(&class) {
                self.names.insert(entry.tag, class.clone());
                entry.tag = ClassTag::of(&namespace);
                entry.namespace = namespace;
            }
        }
        self.deleted = resolved.deleted;
        debug_assert!(self
            .deleted
            .keys()
            .all(|tag| self.registered_tag(*tag).is_none()));
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.classes.contains_key(name)
    }

    /// The name the ids of `class` are made from (`ObjectId::from_name(namespace, name)`):
    /// the class's first name if a migration renamed it, else `class` itself.
    pub fn id_namespace<'a>(&'a self, class: &'a str) -> &'a str {
        self.classes
            .get(class)
            .map_or(class, |entry| entry.namespace.as_str())
    }

    /// The tag of every id of the registered class `class`.
    pub fn tag(&self, class: &str) -> Option<ClassTag> {
        self.classes.get(class).map(|entry| entry.tag)
    }

    /// The constructor of the class called `name`.
    pub fn constructor(&self, name: &str) -> Option<Constructor> {
        self.classes.get(name).map(|entry| entry.constructor)
    }

    /// The class an id belongs to, from the class tag in its first 8 bytes.
    pub fn class_of(&self, id: &ObjectId) -> Option<&str> {
        self.registered_tag(id.class_tag())
    }

    fn registered_tag(&self, tag: ClassTag) -> Option<&str> {
        self.classes
            .iter()
            .find(|(_, entry)| entry.tag == tag)
            .map(|(name, _)| name.as_str())
    }

    /// What becomes of the objects with class tag `tag` at start-up.
    pub fn fate(&self, tag: ClassTag) -> TagFate<'_> {
        if let Some(class) = self.registered_tag(tag) {
            return TagFate::Registered(class);
        }
        if let Some(deleted) = self.deleted.get(&tag) {
            return TagFate::Deleted(deleted);
        }
        TagFate::Unknown(self.names.get(&tag).map(String::as_str))
    }

    /// Class names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.classes.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

impl fmt::Debug for ClassRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
