//! `chat`: a chat room over WebSockets, as in the design's ChatRoom.
//!
//! `/websocket?name=NAME` (name defaults to `Anonymous`) accepts a WebSocket, or answers 400
//! `Expected WebSocket` to a request that is not an upgrade. On join every member gets
//! `{"type":"join","name","count"}`; a member's `{"type":"message","text"}` goes to everyone as
//! `{"type":"message","name","text","timestamp"}` (without `text` if it had none); on leave
//! the others get `{"type":"leave","name","count"}`. A message that is not JSON gets
//! `{"type":"error","error":…}` back, to its sender only. Other paths are 404 `Not Found`.
//! Every message has its fields in the order shown, the design's `JSON.stringify` order.
//!
//! Unlike the design, a member whose socket the server fails (a protocol violation, or a
//! client that stopped reading and was closed with 1008) is announced with a `leave` like any
//! other, so the counts the others see stay true.
//!
//! The member's name lives in its socket's attachment, so the room survives hibernation: an
//! evicted room is rebuilt with its sockets and names when the next message arrives.

use serde::Serialize;
use serde_json::Value;

use crate::http::{is_websocket_upgrade, Request, Response};
use crate::object::{
    now_ms, DurableObject, ObjectContext, ObjectError, SocketClose, SocketHandle, WebSocketMessage,
};

/// What the room sends, as the design's `JSON.stringify` writes it: `type` first, then the
/// other fields in the design's order.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Outgoing<'a> {
    Join {
        name: &'a str,
        count: usize,
    },
    Message {
        name: &'a str,
        /// Absent when the member's message had none, as `JSON.stringify` drops `undefined`.
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a Value>,
        timestamp: i64,
    },
    Leave {
        name: &'a str,
        count: usize,
    },
    /// To the sender only, of a message the room could not read.
    Error {
        error: &'a str,
    },
}

impl Outgoing<'_> {
    fn to_text(&self) -> String {
        // Serializing these fields (strings, numbers, a parsed JSON value) cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Member names longer than this are cut (the attachment holds at most 2 KiB).
const NAME_BYTES_MAX: usize = 256;

pub struct ChatRoom {
    /// The room's identity and sockets.
    context: ObjectContext,
}

impl ChatRoom {
    /// Sends `message` to every member but `except`.
    fn broadcast(&self, message: &Outgoing, except: Option<&SocketHandle>) {
        let text = message.to_text();
        for socket in self.context.websockets(None) {
            if except.is_some_and(|except| except.id() == socket.id()) {
                continue;
            }
            // A member whose queue is full is being closed by its driver; the others go on.
            let _ = socket.send_text(&text);
        }
    }

    fn name_of(socket: &SocketHandle) -> String {
        socket
            .attachment()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|| "Anonymous".to_string())
    }

    /// Tells the others that `socket` left.
    fn leave(&self, socket: &SocketHandle) {
        let count = self.context.websockets(None).len().saturating_sub(1);
        let name = ChatRoom::name_of(socket);
        self.broadcast(&Outgoing::Leave { name: &name, count }, Some(socket));
    }
}

/// Cuts `name` to at most `NAME_BYTES_MAX` bytes at a character boundary.
fn bounded_name(name: &str) -> &str {
    let mut end = name.len().min(NAME_BYTES_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

impl DurableObject for ChatRoom {
    fn new(context: ObjectContext) -> ChatRoom {
        ChatRoom { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        if request.path != "/websocket" {
            return Ok(Response::not_found());
        }
        if !is_websocket_upgrade(&request) {
            return Ok(Response::text(400, "Expected WebSocket"));
        }
        let name = request.query_param("name").filter(|name| !name.is_empty());
        let name = name
            .as_deref()
            .map(bounded_name)
            .unwrap_or("Anonymous")
            .to_string();
        let accepted = match self.context.accept_websocket(&request, &[]) {
            Ok(accepted) => accepted,
            Err(response) => return Ok(response),
        };
        if let Err(error) = accepted.socket.set_attachment(Some(name.as_bytes())) {
            return Err(ObjectError::new(error.to_string()));
        }
        let count = self.context.websockets(None).len();
        self.broadcast(&Outgoing::Join { name: &name, count }, None);
        Ok(accepted.response)
    }

    async fn websocket_message(
        &self,
        socket: SocketHandle,
        message: WebSocketMessage,
    ) -> Result<(), ObjectError> {
        let text = match message {
            WebSocketMessage::Text(text) => text,
            WebSocketMessage::Binary(_) => {
                let reply = Outgoing::Error {
                    error: "messages are JSON text",
                };
                let _ = socket.send_text(&reply.to_text());
                return Ok(());
            }
        };
        let data: Value = match serde_json::from_str(&text) {
            Ok(data) => data,
            Err(error) => {
                let error = format!("invalid JSON: {error}");
                let _ = socket.send_text(&Outgoing::Error { error: &error }.to_text());
                return Ok(());
            }
        };
        if data.get("type").and_then(Value::as_str) == Some("message") {
            let name = ChatRoom::name_of(&socket);
            let message = Outgoing::Message {
                name: &name,
                text: data.get("text"),
                timestamp: now_ms(),
            };
            self.broadcast(&message, None);
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        socket: SocketHandle,
        _close: SocketClose,
    ) -> Result<(), ObjectError> {
        self.leave(&socket);
        Ok(())
    }

    async fn websocket_error(
        &self,
        socket: SocketHandle,
        _error: String,
    ) -> Result<(), ObjectError> {
        self.leave(&socket);
        Ok(())
    }
}
