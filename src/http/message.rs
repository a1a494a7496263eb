//! The request and response an object sees. Plain owned data, `Send`, so a request can cross
//! to the core that owns its object and the response can come back.

/// HTTP methods stead accepts; anything else is answered 405 before reaching an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
}

impl Method {
    pub fn parse(text: &str) -> Option<Method> {
        Some(match text {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
        }
    }
}

/// Names the connection a WebSocket upgrade request arrived on, so that the socket a handler
/// accepts is attached to that connection. Only the server makes one (its field is private to
/// the crate): no header or other client input can name a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpgradeToken(pub(crate) u64);

/// A request as an object sees it: the path is the part after the object's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Path starting with `/`, still percent-encoded as the client sent it.
    pub path: String,
    /// The query string without the `?`, still percent-encoded; empty when absent.
    pub query: String,
    /// Header names lowercased, values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Set by the server on a WebSocket upgrade request as it reaches the object (see
    /// `ObjectContext::accept_websocket`); `None` on every other request.
    pub upgrade: Option<UpgradeToken>,
}

impl Request {
    /// The first header called `name` (lowercase), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// The first query parameter called `name`, percent-decoded (`+` as space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key, true).as_deref() == Some(name))
                .then(|| percent_decode(value, true))
                .flatten()
        })
    }
}

/// Percent-encodes every byte but the unreserved ones (RFC 3986: letters, digits, `-._~`).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`); None if an escape is
/// malformed or the result is not UTF-8.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let raw = text.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut index = 0;
    while index < raw.len() {
        match raw[index] {
            b'%' => {
                let high = raw.get(index + 1).and_then(|d| (*d as char).to_digit(16))?;
                let low = raw.get(index + 2).and_then(|d| (*d as char).to_digit(16))?;
                out.push((high * 16 + low) as u8);
                index += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A response from an object or from the server itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Extra headers; `Content-Length`, `Connection` and `Date` are written by the server.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, body.into()).with_header("Content-Type", "text/plain; charset=utf-8")
    }

    /// An `application/json` response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status, value.to_string()).with_header("Content-Type", "application/json")
    }

    /// An `application/json` response of any serializable value, its fields in the order they
    /// are declared or inserted.
    pub fn json_of<T: serde::Serialize + ?Sized>(
        status: u16,
        value: &T,
    ) -> Result<Response, serde_json::Error> {
        Ok(Response::new(status, serde_json::to_vec(value)?)
            .with_header("Content-Type", "application/json"))
    }

    /// `{"error": message}` as JSON.
    pub fn json_error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// 404 `Not Found`, the answer to every unknown route and path.
    pub fn not_found() -> Response {
        Response::text(404, "Not Found")
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let request = Request {
            method: Method::Get,
            path: "/acquire".into(),
            query: "clientId=a%20b&x=1&plus=c+d".into(),
            headers: vec![],
            body: vec![],
            upgrade: None,
        };
        assert_eq!(request.query_param("clientId").as_deref(), Some("a b"));
        assert_eq!(request.query_param("plus").as_deref(), Some("c d"));
        assert_eq!(request.query_param("missing"), None);
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%e2%82%ac", false).as_deref(), Some("€"));
    }
}
