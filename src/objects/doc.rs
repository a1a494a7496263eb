//! `doc`: a document edited together over WebSockets, as in the design's real-time
//! collaboration example.
//!
//! Any path accepts a WebSocket (400 `Expected WebSocket` without the upgrade). On connect the
//! client gets `{"type":"init","content":<stored document or "">}`. On `{"type":"edit","content"}`
//! the document is stored durably, then the message goes unchanged to every other socket. A
//! message that is not JSON, or an edit without `content`, gets `{"type":"error","error":…}`.

use serde_json::{json, Value};

use crate::http::{is_websocket_upgrade, Request, Response};
use crate::object::{DurableObject, ObjectContext, ObjectError, SocketHandle, WebSocketMessage};

/// The storage key of the document (its JSON encoding).
const DOCUMENT_KEY: &[u8] = b"doc";

pub struct Document {
    /// The document's storage and sockets.
    context: ObjectContext,
}

impl Document {
    /// The stored document; `""` when there is none or it is empty, `false`, `0` or `null`
    /// (the design's `get("doc") || ""`).
    fn content(&self) -> Value {
        self.context
            .storage()
            .get(DOCUMENT_KEY)
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .filter(is_truthy)
            .unwrap_or_else(|| Value::String(String::new()))
    }
}

/// Whether JavaScript would take `value` for true.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::Number(number) => number.as_f64().is_some_and(|number| number != 0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn error(socket: &SocketHandle, message: &str) {
    let _ = socket.send_text(&json!({ "type": "error", "error": message }).to_string());
}

impl DurableObject for Document {
    fn new(context: ObjectContext) -> Document {
        Document { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        if !is_websocket_upgrade(&request) {
            return Ok(Response::text(400, "Expected WebSocket"));
        }
        let accepted = match self.context.accept_websocket(&request, &[]) {
            Ok(accepted) => accepted,
            Err(response) => return Ok(response),
        };
        let init = json!({ "type": "init", "content": self.content() });
        let _ = accepted.socket.send_text(&init.to_string());
        Ok(accepted.response)
    }

    async fn websocket_message(
        &self,
        socket: SocketHandle,
        message: WebSocketMessage,
    ) -> Result<(), ObjectError> {
        let WebSocketMessage::Text(text) = message else {
            error(&socket, "messages are JSON text");
            return Ok(());
        };
        let data: Value = match serde_json::from_str(&text) {
            Ok(data) => data,
            Err(parse_error) => {
                error(&socket, &format!("invalid JSON: {parse_error}"));
                return Ok(());
            }
        };
        if data.get("type").and_then(Value::as_str) != Some("edit") {
            return Ok(());
        }
        let Some(content) = data.get("content") else {
            error(&socket, "an edit needs a content");
            return Ok(());
        };
        let encoded = serde_json::to_vec(content)?;
        if let Err(storage_error) = self.context.storage().put(DOCUMENT_KEY, encoded) {
            error(&socket, &storage_error.to_string());
            return Ok(());
        }
        // Nobody sees an edit that a crash could still take back.
        self.context.flush().await?;
        for other in self.context.websockets(None) {
            if other.id() != socket.id() {
                let _ = other.send_text(&text);
            }
        }
        Ok(())
    }
}
