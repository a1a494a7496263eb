//! Whether a request asks to leave HTTP for the WebSocket protocol. The connection loop needs
//! the answer to stop parsing; the WebSocket handshake (`websocket::handshake`) checks the rest
//! of the request. It lives here so that `http` does not depend on `websocket`.

use super::Request;

/// Whether `request` takes its connection over: a WebSocket upgrade, or `GET /admin/backup`,
/// whose answer is streamed by the handler itself. Such a request ends HTTP on its connection
/// and goes to `Handler::upgrade`.
pub fn takes_connection(request: &Request) -> bool {
    is_websocket_upgrade(request)
        || (request.path == BACKUP_PATH && request.method == super::Method::Get)
}

/// The path of the streamed backup (`shard/admin.rs`).
pub const BACKUP_PATH: &str = "/admin/backup";

/// Whether `request` asks to switch to the WebSocket protocol (`Upgrade: websocket` and
/// `Connection: upgrade`; `validate_upgrade` checks the rest). Such a request ends HTTP on its
/// connection and goes to `Handler::upgrade`.
pub fn is_websocket_upgrade(request: &Request) -> bool {
    has_upgrade_websocket(request) && has_connection_upgrade(request)
}

pub(crate) fn has_upgrade_websocket(request: &Request) -> bool {
    request
        .header("upgrade")
        .is_some_and(|value| has_token(value, "websocket"))
}

pub(crate) fn has_connection_upgrade(request: &Request) -> bool {
    request
        .header("connection")
        .is_some_and(|value| has_token(value, "upgrade"))
}

/// Whether the comma-separated header `value` lists `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}
