//! The opening handshake (RFC 6455 section 4.2): checks that a request asks for a WebSocket and
//! builds the 101 response that accepts it.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::error::HandshakeError;
use crate::http::upgrade::{has_connection_upgrade, has_upgrade_websocket};
use crate::http::{Method, Request, Response};

/// Appended to the client's key before hashing; fixed by RFC 6455.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A valid upgrade request, reduced to what the response needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept`: proves to the client that this server speaks WebSocket.
    pub accept: String,
}

/// Checks every header of the opening handshake.
pub fn validate_upgrade(request: &Request) -> Result<Upgrade, HandshakeError> {
    if !has_upgrade_websocket(request) {
        return Err(HandshakeError::NotUpgrade);
    }
    if request.method != Method::Get {
        return Err(HandshakeError::MethodNotGet);
    }
    if !has_connection_upgrade(request) {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    match request.header("sec-websocket-version").map(str::trim) {
        Some("13") => {}
        other => {
            return Err(HandshakeError::UnsupportedVersion(
                other.map(str::to_string),
            ))
        }
    }
    let key = request
        .header("sec-websocket-key")
        .map(str::trim)
        .ok_or(HandshakeError::BadKey)?;
    match BASE64.decode(key) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    Ok(Upgrade {
        accept: accept_key(key),
    })
}

/// `base64(SHA-1(key + GUID))`, the value of `Sec-WebSocket-Accept`.
pub fn accept_key(key: &str) -> String {
    let mut hasher = sha1_smol::Sha1::new();
    hasher.update(key.as_bytes());
    hasher.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(hasher.digest().bytes())
}

impl Upgrade {
    /// The 101 that switches the connection to WebSocket.
    pub fn response(&self) -> Response {
        Response::new(101, Vec::new())
            .with_header("Upgrade", "websocket")
            .with_header("Connection", "Upgrade")
            .with_header("Sec-WebSocket-Accept", &self.accept)
    }
}

impl HandshakeError {
    /// The refusal: 426 tells the client the version to use; the others are plain 400s.
    pub fn to_response(&self) -> Response {
        let response = Response::text(self.status(), self.to_string());
        match self {
            HandshakeError::UnsupportedVersion(_) => {
                response.with_header("Sec-WebSocket-Version", "13")
            }
            _ => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::is_websocket_upgrade;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: Method::Get,
            path: "/websocket".into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
            upgrade: None,
        }
    }

    const VALID: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn an_upgrade_needs_both_the_upgrade_and_the_connection_token() {
        assert!(is_websocket_upgrade(&request(&VALID)));
        assert!(is_websocket_upgrade(&request(&[
            ("upgrade", "WebSocket"),
            ("connection", "Upgrade")
        ])));
        assert!(!is_websocket_upgrade(&request(&[("upgrade", "websocket")])));
        assert!(!is_websocket_upgrade(&request(&[(
            "connection",
            "upgrade"
        )])));
        assert!(!is_websocket_upgrade(&request(&[
            ("upgrade", "h2c"),
            ("connection", "upgrade")
        ])));
    }

    #[test]
    fn the_rfc_example_key_is_accepted_with_its_known_answer() {
        let upgrade = validate_upgrade(&request(&VALID)).expect("valid");
        // RFC 6455 section 1.3.
        assert_eq!(upgrade.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let response = upgrade.response();
        assert_eq!(response.status, 101);
        assert!(response
            .headers
            .contains(&("Sec-WebSocket-Accept".into(), upgrade.accept.clone())));
    }

    #[test]
    fn each_missing_or_wrong_header_has_its_own_error_and_status() {
        let without = |name: &str| {
            let headers: Vec<_> = VALID.iter().copied().filter(|(n, _)| *n != name).collect();
            validate_upgrade(&request(&headers))
        };
        assert_eq!(without("upgrade"), Err(HandshakeError::NotUpgrade));
        assert_eq!(
            without("connection"),
            Err(HandshakeError::ConnectionNotUpgrade)
        );
        assert_eq!(
            without("sec-websocket-version"),
            Err(HandshakeError::UnsupportedVersion(None))
        );
        assert_eq!(without("sec-websocket-key"), Err(HandshakeError::BadKey));

        let with = |name: &str, value: &str| {
            let headers: Vec<_> = VALID
                .iter()
                .map(|(n, v)| if *n == name { (*n, value) } else { (*n, *v) })
                .collect();
            validate_upgrade(&request(&headers))
        };
        let old = with("sec-websocket-version", "8").expect_err("version 8");
        assert_eq!(old.status(), 426);
        assert!(old
            .to_response()
            .headers
            .contains(&("Sec-WebSocket-Version".into(), "13".into())));
        // Valid base64, but 15 bytes.
        assert_eq!(
            with("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ"),
            Err(HandshakeError::BadKey)
        );
        assert_eq!(
            with("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            Err(HandshakeError::BadKey)
        );
        assert_eq!(with("upgrade", "h2c"), Err(HandshakeError::NotUpgrade));
        assert_eq!(with("upgrade", "WebSocket").map(|_| ()), Ok(()));

        let mut post = request(&VALID);
        post.method = Method::Post;
        let refused = validate_upgrade(&post).expect_err("post");
        assert_eq!(refused, HandshakeError::MethodNotGet);
        assert_eq!(refused.to_response().status, 400);
        assert_eq!(HandshakeError::NotUpgrade.to_string(), "Expected WebSocket");
    }
}
