//! The sockets of one object, kept by the core rather than by the object, so they outlive its
//! eviction. Lists sockets (all, or by tag) and applies the object's auto response to each.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::error::AttachError;
use super::events::SocketId;
use super::handle::{AutoResponse, SocketHandle};

/// Hands out socket ids on one core: increasing, never reused.
#[derive(Debug, Default)]
pub struct SocketIds {
    /// The id the next socket gets.
    next: std::cell::Cell<u64>,
}

impl SocketIds {
    pub fn next_id(&self) -> SocketId {
        let id = self.next.get();
        self.next.set(id + 1);
        SocketId(id)
    }
}

/// One object's open sockets.
pub struct SocketSet {
    /// In accept order (ids increase), so listings are stable.
    sockets: BTreeMap<SocketId, SocketHandle>,
    /// The bound on `sockets`.
    sockets_max: usize,
    /// Applied to every socket, including ones accepted later.
    auto_response: Option<Rc<AutoResponse>>,
}

impl SocketSet {
    pub fn new(sockets_max: usize) -> SocketSet {
        SocketSet {
            sockets: BTreeMap::new(),
            sockets_max,
            auto_response: None,
        }
    }

    /// Adds a socket about to be served; refused past `sockets_max`.
    pub fn insert(&mut self, socket: SocketHandle) -> Result<(), AttachError> {
        if self.sockets.len() >= self.sockets_max {
            return Err(AttachError::TooManySockets {
                max: self.sockets_max,
            });
        }
        socket.set_auto_response(self.auto_response.clone());
        self.sockets.insert(socket.id(), socket);
        Ok(())
    }

    /// Forgets a socket, after its terminal event.
    pub fn remove(&mut self, id: SocketId) -> Option<SocketHandle> {
        self.sockets.remove(&id)
    }

    pub fn get(&self, id: SocketId) -> Option<&SocketHandle> {
        self.sockets.get(&id)
    }

    /// The sockets, all or those carrying `tag`, in accept order.
    pub fn list(&self, tag: Option<&str>) -> Vec<SocketHandle> {
        self.sockets
            .values()
            .filter(|socket| tag.is_none_or(|tag| socket.has_tag(tag)))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Sets or clears the pair answered without waking the object, on every socket.
    pub fn set_auto_response(&mut self, auto_response: Option<AutoResponse>) {
        self.auto_response = auto_response.map(Rc::new);
        for socket in self.sockets.values() {
            socket.set_auto_response(self.auto_response.clone());
        }
    }

    pub fn auto_response(&self) -> Option<&AutoResponse> {
        self.auto_response.as_deref()
    }
}
