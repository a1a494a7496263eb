//! [`ObjectContext`]: what an object instance is given: its identity, storage, WebSockets and
//! the server's configuration.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::json;
use stead_storage::Store;

use super::call::{CallError, Caller, ObjectStub, Router};
use super::fetch::{FetchClient, FetchError, FetchRequest};
use super::registry::ClassRegistry;
use super::{CoreSockets, ObjectError, Storage};
use crate::config::Config;
use crate::http::{Request, Response};
use crate::id::ObjectId;
use crate::shutdown::Shutdown;
use crate::websocket::{validate_upgrade, AutoResponse, SocketHandle};

/// A WebSocket a handler accepted.
pub struct AcceptedSocket {
    /// The socket, usable at once.
    pub socket: SocketHandle,
    /// The 101 response that `fetch` must return.
    pub response: Response,
}

/// The fixed parts of one object's context, shared by all clones.
struct Inner {
    /// The object's id (its class tag in the first 8 bytes).
    id: ObjectId,
    /// The class name it was addressed by.
    class: Rc<str>,
    /// Its storage, loaded before the instance is built.
    storage: Storage,
    /// The server's configuration (built-in classes read their defaults from it).
    config: Rc<Config>,
    /// The core's WebSockets; this object's outlive the instance (hibernation).
    sockets: Rc<CoreSockets>,
    /// The core's store, to wait for durability in [`ObjectContext::flush`].
    store: Store,
    /// Set when the server begins shutting down (see [`ObjectContext::shutting_down`]).
    stopping: Rc<Shutdown>,
    /// How many of the object's events are parked (see [`ObjectContext::park`]).
    parked: Rc<Cell<usize>>,
    /// The classes, for the ids of the objects a stub names.
    registry: Arc<ClassRegistry>,
    /// What the object's stubs call through.
    caller: Caller,
    /// The core's outgoing HTTP client.
    fetch: Rc<FetchClient>,
    /// In a cluster: the core's replication, which [`ObjectContext::flush`] waits for too.
    replication: Option<Rc<crate::cluster::Replication>>,
}

/// An event's mark as parked, from [`ObjectContext::park`]; dropping it counts the event
/// against the object's queue bound again.
#[derive(Debug)]
pub struct Parked {
    /// The object's count of parked events.
    parked: Rc<Cell<usize>>,
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.parked.set(self.parked.get().saturating_sub(1));
    }
}

/// What every object context of one core shares.
pub(super) struct CoreParts<'a> {
    pub(super) config: &'a Rc<Config>,
    pub(super) sockets: &'a Rc<CoreSockets>,
    pub(super) store: &'a Store,
    pub(super) stopping: &'a Rc<Shutdown>,
    pub(super) registry: &'a Arc<ClassRegistry>,
    pub(super) router: Option<Rc<dyn Router>>,
    pub(super) fetch: &'a Rc<FetchClient>,
    pub(super) replication: Option<Rc<crate::cluster::Replication>>,
}

/// An object's identity, storage, sockets and configuration. Cheap to clone.
#[derive(Clone)]
pub struct ObjectContext {
    /// Shared so that cloning the context is one reference count.
    inner: Rc<Inner>,
}

impl std::fmt::Debug for ObjectContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectContext")
            .field("id", &self.inner.id)
            .field("class", &self.inner.class)
            .finish_non_exhaustive()
    }
}

/// The cells of an object's slot that its context shares: its count of parked events, and
/// the call depth and read-only mode of the event being polled.
pub(super) type EventCells = (Rc<Cell<usize>>, Rc<Cell<u32>>, Rc<Cell<bool>>);

impl ObjectContext {
    /// The context of the object `id` of `class`, with what its core shares among objects.
    /// `parked` counts its parked events, `depth` is the call depth of the event running and
    /// `read_only` whether it may not write.
    pub(super) fn new(
        (id, class): (ObjectId, Rc<str>),
        storage: Storage,
        (parked, depth, read_only): EventCells,
        core: &CoreParts,
    ) -> ObjectContext {
        ObjectContext {
            inner: Rc::new(Inner {
                id,
                class,
                storage,
                config: core.config.clone(),
                sockets: core.sockets.clone(),
                store: core.store.clone(),
                stopping: core.stopping.clone(),
                parked,
                registry: core.registry.clone(),
                fetch: core.fetch.clone(),
                replication: core.replication.clone(),
                caller: Caller {
                    router: core.router.clone(),
                    depth,
                    read_only,
                    call_depth_max: core.config.objects.call_depth_max,
                },
            }),
        }
    }

    /// Marks the calling event as waiting for another event of this object, until the
    /// returned guard is dropped. A parked event does not count against
    /// `object_events_queued_max`, so waiters cannot fill the queue and refuse the event that
    /// would end their wait (a lock's release). The object must bound its parked events itself.
    /// Call it only from inside an event's handler, and drop the guard before it returns.
    pub fn park(&self) -> Parked {
        self.inner.parked.set(self.inner.parked.get() + 1);
        Parked {
            parked: self.inner.parked.clone(),
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

    /// Sends an HTTP request to another server (`http://` only) and returns its answer; see
    /// `[fetch]` in the configuration: hosts not in `allow_hosts` are refused, and so is a
    /// listed name that resolves to a private address. Awaiting it lets the object's other
    /// events run.
    pub async fn fetch(&self, request: FetchRequest) -> Result<Response, FetchError> {
        self.inner.fetch.fetch(request).await
    }

    /// A stub of the object `name` of `class` (the object a request to
    /// `/objects/{class}/{name}/…` reaches), on whichever core owns it.
    pub fn object(&self, class: &str, name: &str) -> Result<ObjectStub, CallError> {
        let registry = &self.inner.registry;
        if !registry.contains(class) {
            return Err(CallError::UnknownClass {
                class: class.to_string(),
            });
        }
        let name_bytes = name.len();
        if name_bytes == 0 || name_bytes > self.inner.config.http.object_name_bytes_max {
            return Err(CallError::InvalidName { name_bytes });
        }
        let id = ObjectId::from_name(registry.id_namespace(class), name);
        let name = self
            .inner
            .config
            .objects
            .keep_names
            .then(|| name.to_string());
        Ok(ObjectStub::new(
            self.inner.caller.clone(),
            class.to_string(),
            id,
            name,
        ))
    }

    /// A stub of the object `id` of `class` (an id from [`ObjectContext::new_unique_id`] or
    /// one a client sent as `id:…`); an id of another class is refused.
    pub fn object_by_id(&self, class: &str, id: ObjectId) -> Result<ObjectStub, CallError> {
        let Some(tag) = self.inner.registry.tag(class) else {
            return Err(CallError::UnknownClass {
                class: class.to_string(),
            });
        };
        if id.class_tag() != tag {
            return Err(CallError::WrongClass {
                class: class.to_string(),
            });
        }
        Ok(ObjectStub::new(
            self.inner.caller.clone(),
            class.to_string(),
            id,
            None,
        ))
    }

    /// A new random id of `class` (as `newUniqueId()`), for objects such as shards that need
    /// no name.
    pub fn new_unique_id(&self, class: &str) -> Result<ObjectId, CallError> {
        let registry = &self.inner.registry;
        if !registry.contains(class) {
            return Err(CallError::UnknownClass {
                class: class.to_string(),
            });
        }
        ObjectId::new_unique(registry.id_namespace(class)).map_err(|error| {
            CallError::NoRandomness {
                reason: error.to_string(),
            }
        })
    }

    /// Resolves once the server begins shutting down. A handler that waits for something
    /// open-ended (another client, say) should stop waiting then and answer
    /// [`shutting_down`](super::shutting_down) (503, retryable): the drain waits for every
    /// event in flight, and alarms keep firing until it ends.
    pub fn shutting_down(&self) -> crate::shutdown::Wait<'_> {
        self.inner.stopping.wait()
    }

    /// Accepts the WebSocket that `request` asks for, with `tags` to find it by later. On
    /// success, return the accepted response (101) from `fetch`; the socket can be used at once
    /// (what is sent now goes out right after the 101). On failure, return the given response
    /// instead: 400 for a request that is not a valid upgrade, 503 when the object has too
    /// many sockets. The socket's messages then arrive at
    /// [`DurableObject::websocket_message`], even if the object was evicted in between.
    ///
    /// [`DurableObject::websocket_message`]: super::DurableObject::websocket_message
    pub fn accept_websocket(
        &self,
        request: &Request,
        tags: &[&str],
    ) -> Result<AcceptedSocket, Response> {
        let upgrade = validate_upgrade(request).map_err(|error| error.to_response())?;
        let token = request.upgrade.map(|token| token.0).ok_or_else(|| {
            Response::json_error(400, "this request did not arrive as a WebSocket upgrade")
        })?;
        let tags = tags.iter().map(|tag| tag.to_string()).collect();
        let read_only = super::call::is_read_only(request);
        match self.inner.sockets.accept(
            (token, read_only),
            self.inner.id,
            self.inner.class.clone(),
            tags,
        ) {
            Ok(socket) => Ok(AcceptedSocket {
                socket,
                response: upgrade.response(),
            }),
            Err(error) => Err(Response::json(
                503,
                &json!({ "error": error.to_string(), "retryable": true }),
            )),
        }
    }

    /// The object's open WebSockets, all or those with `tag`, in accept order.
    pub fn websockets(&self, tag: Option<&str>) -> Vec<SocketHandle> {
        self.inner.sockets.list(&self.inner.id, tag)
    }

    /// A text message that the object's sockets answer themselves, without waking the object
    /// (keep-alive pings); `None` removes it.
    pub fn set_websocket_auto_response(&self, auto_response: Option<AutoResponse>) {
        self.inner
            .sockets
            .set_auto_response(&self.inner.id, auto_response);
    }

    /// Commits the writes made so far and waits until they are durable (in a cluster, until
    /// the stream has them too): for effects outside the response (a message to other sockets)
    /// that must not get ahead of the disk.
    pub async fn flush(&self) -> Result<(), ObjectError> {
        // The host commits an event's writes when its handler suspends: suspend once.
        futures_lite::future::yield_now().await;
        // A failed commit is not in the store's sequence, so waiting alone would pass it.
        self.storage().check_committed()?;
        let store = &self.inner.store;
        store
            .wait_durable(store.last_seq())
            .await
            .map_err(|error| ObjectError::new(format!("writes are not durable: {error}")))?;
        if let Some(replication) = &self.inner.replication {
            // The partition's last batch follows every batch of this object.
            if let Some((partition, ticket)) = replication.floor(&self.inner.id) {
                replication
                    .wait(partition, ticket)
                    .await
                    .map_err(|error| ObjectError::with_status(503, error.to_string()))?;
            }
        }
        Ok(())
    }
}
