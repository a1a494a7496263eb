//! `doc`: a document edited together over WebSockets, as in the design's real-time
//! collaboration example.
//!
//! Any path accepts a WebSocket (400 `Expected WebSocket` without the upgrade). On connect the
//! client gets `{"type":"init","content":<stored document or "">}`. On `{"type":"edit","content"}`
//! the document is stored durably, then the message goes unchanged to every other socket. A
//! message that is not JSON, or an edit without `content`, gets `{"type":"error","error":…}`.
//!
//! The content is stored as it was sent, so the init message gives it back with its keys in
//! their order, as the design's `JSON.stringify` of the stored object would.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::http::{is_websocket_upgrade, Request, Response};
use crate::object::{DurableObject, ObjectContext, ObjectError, SocketHandle, WebSocketMessage};

/// The storage key of the document (its JSON encoding).
const DOCUMENT_KEY: &[u8] = b"doc";

pub struct Document {
    /// The document's storage and sockets.
    context: ObjectContext,
}

impl Document {
    /// The stored document as it was sent (so its keys keep their order); `""` when there is
    /// none or it is empty, `false`, `0` or `null` (the design's `get("doc") || ""`).
    fn content(&self) -> Box<RawValue> {
        self.context
            .storage()
            .get(DOCUMENT_KEY)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|text| serde_json::from_str::<Value>(text).is_ok_and(|value| is_truthy(&value)))
            .and_then(|text| RawValue::from_string(text).ok())
            .unwrap_or_else(empty_content)
    }
}

/// `""`, the content of a document never edited.
fn empty_content() -> Box<RawValue> {
    RawValue::from_string("\"\"".to_string()).unwrap_or_default()
}

/// The `content` of an edit exactly as sent (`serde_json::Value` would sort its keys).
#[derive(Deserialize)]
struct EditContent<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// What the document sends (besides forwarded edits), `type` first as in the design.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Outgoing<'a> {
    Init { content: &'a RawValue },
    Error { error: &'a str },
}

impl Outgoing<'_> {
    fn to_text(&self) -> String {
        // Serializing a string or a parsed JSON value cannot fail.
        serde_json::to_string(self).unwrap_or_default()
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
    let _ = socket.send_text(&Outgoing::Error { error: message }.to_text());
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
        let content = self.content();
        let init = Outgoing::Init { content: &content };
        let _ = accepted.socket.send_text(&init.to_text());
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
        if data.get("content").is_none() {
            error(&socket, "an edit needs a content");
            return Ok(());
        }
        // `content: null` reads as `None` here; it is stored as the `null` it was.
        let encoded = match serde_json::from_str::<EditContent>(&text)?.content {
            Some(content) => content.get().as_bytes().to_vec(),
            None => b"null".to_vec(),
        };
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
