//! The WebSockets of one core's objects, kept apart from the objects themselves so that an
//! object can be evicted (hibernate) while its sockets stay connected.
//!
//! Every socket's driver feeds one bounded [`EventQueue`]; the host takes events from it and
//! delivers each as an event of the socket's object, activating the object if it was evicted.
//! While the queue is full, sockets stop reading, so a flood backs up into TCP rather than
//! memory.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::id::ObjectId;
use crate::websocket::{
    AttachError, AutoResponse, CloseCode, CoreSendBudget, EventQueue, SocketHandle, SocketId,
    SocketIds, SocketSet, WebSocketLimits,
};

/// Socket events waiting for delivery, over every socket of the core.
const SOCKET_EVENTS_QUEUED_MAX: usize = 4096;

/// Who a socket belongs to.
#[derive(Clone)]
pub(crate) struct Owner {
    /// The object whose handlers get the socket's events.
    pub(crate) object: ObjectId,
    /// Its class, to activate it.
    pub(crate) class: Rc<str>,
    /// The socket itself.
    pub(crate) handle: SocketHandle,
    /// Whether its events may not write: the token that opened it has no `write` permission.
    pub(crate) read_only: bool,
}

/// The sockets of one core.
pub struct CoreSockets {
    /// Hands out socket ids.
    ids: SocketIds,
    /// Limits of every socket.
    limits: Rc<WebSocketLimits>,
    /// Bytes queued for clients over every socket of the core, and their bound.
    budget: Rc<CoreSendBudget>,
    /// Open sockets by object; survives the object's eviction.
    by_object: RefCell<HashMap<ObjectId, SocketSet>>,
    /// The owner of each open socket.
    owners: RefCell<HashMap<SocketId, Owner>>,
    /// Sockets a handler accepted whose connection is not yet attached, by upgrade token.
    accepted: RefCell<HashMap<u64, SocketHandle>>,
    /// The next upgrade token.
    next_token: Cell<u64>,
    /// Events from every socket, waiting for delivery.
    pub(crate) queue: Rc<EventQueue>,
}

impl CoreSockets {
    pub fn new(limits: WebSocketLimits) -> CoreSockets {
        CoreSockets {
            ids: SocketIds::default(),
            budget: Rc::new(CoreSendBudget::new(limits.send_queue_bytes_per_core_max)),
            limits: Rc::new(limits),
            by_object: RefCell::new(HashMap::new()),
            owners: RefCell::new(HashMap::new()),
            accepted: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            queue: Rc::new(EventQueue::new(SOCKET_EVENTS_QUEUED_MAX)),
        }
    }

    /// A token naming one upgrade request, so its handler's accept can be found afterwards.
    pub fn new_token(&self) -> u64 {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        token
    }

    /// Registers a socket for `object`, accepted by the request carrying `token` (whose
    /// events are `read_only` if that request's were).
    pub(crate) fn accept(
        &self,
        (token, read_only): (u64, bool),
        object: ObjectId,
        class: Rc<str>,
        tags: Vec<String>,
    ) -> Result<SocketHandle, AttachError> {
        let handle = SocketHandle::new(
            self.ids.next_id(),
            tags,
            self.limits.clone(),
            self.budget.clone(),
        )?;
        let mut by_object = self.by_object.borrow_mut();
        let set = by_object
            .entry(object)
            .or_insert_with(|| SocketSet::new(self.limits.sockets_per_object_max));
        set.insert(handle.clone())?;
        self.owners.borrow_mut().insert(
            handle.id(),
            Owner {
                object,
                class,
                handle: handle.clone(),
                read_only,
            },
        );
        self.accepted.borrow_mut().insert(token, handle.clone());
        Ok(handle)
    }

    /// Bytes queued for clients and not yet written, over every socket of the core.
    pub fn queued_bytes(&self) -> usize {
        self.budget.queued_bytes()
    }

    /// The socket accepted by the request with `token`, if its handler accepted one.
    pub fn take_accepted(&self, token: u64) -> Option<SocketHandle> {
        self.accepted.borrow_mut().remove(&token)
    }

    /// Forgets a socket: after its terminal event, or when its upgrade did not go through.
    pub fn remove(&self, socket: SocketId) {
        let Some(owner) = self.owners.borrow_mut().remove(&socket) else {
            return;
        };
        let mut by_object = self.by_object.borrow_mut();
        if let Some(set) = by_object.get_mut(&owner.object) {
            set.remove(socket);
            // An auto response is the object's, not its sockets': it stays for the sockets
            // accepted later, until the object leaves memory.
            if set.is_empty() && set.auto_response().is_none() {
                by_object.remove(&owner.object);
            }
        }
    }

    /// Forgets what the core kept for `object` once it leaves memory, unless sockets still
    /// hold it: a hibernating object keeps its sockets and its auto response.
    pub(crate) fn object_left_memory(&self, object: &ObjectId) {
        let mut by_object = self.by_object.borrow_mut();
        if by_object.get(object).is_some_and(SocketSet::is_empty) {
            by_object.remove(object);
        }
    }

    pub(crate) fn owner(&self, socket: SocketId) -> Option<Owner> {
        self.owners.borrow().get(&socket).cloned()
    }

    /// The open sockets of `object`, all or those carrying `tag`, in accept order.
    pub fn list(&self, object: &ObjectId, tag: Option<&str>) -> Vec<SocketHandle> {
        self.by_object
            .borrow()
            .get(object)
            .map(|set| set.list(tag))
            .unwrap_or_default()
    }

    /// Sets the request → response pair that `object`'s sockets answer themselves.
    pub fn set_auto_response(&self, object: &ObjectId, auto_response: Option<AutoResponse>) {
        let mut by_object = self.by_object.borrow_mut();
        let set = by_object
            .entry(*object)
            .or_insert_with(|| SocketSet::new(self.limits.sockets_per_object_max));
        set.set_auto_response(auto_response);
    }

    /// Open sockets on this core.
    pub fn len(&self) -> usize {
        self.owners.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts closing every socket with `code` (at shutdown: 1001, going away).
    pub fn close_all(&self, code: CloseCode, reason: &str) {
        let handles: Vec<SocketHandle> = self
            .owners
            .borrow()
            .values()
            .map(|owner| owner.handle.clone())
            .collect();
        for handle in handles {
            let _ = handle.close(code, reason);
        }
    }
}
