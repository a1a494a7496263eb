//! Maps a request path to what serves it. Routing only looks at the method and the path;
//! whether a class exists is the caller's question (it answers 404 for an unknown one).
//!
//! - `GET|HEAD /healthz`, `GET|HEAD /metrics`, `GET|HEAD /chat` (the chat page)
//! - `POST /ids/{class}`: a new random object id
//! - `/admin` and `/admin/{rest…}`: the operator's API (`shard/admin.rs` routes the rest)
//! - `/objects/{class}/{name}[/{rest…}]`: the object named `name` (percent-decoded), which sees
//!   the path `/{rest…}` (`/` when absent), any method
//! - `/objects/{class}/id:{64 hex}[/{rest…}]`: the object with that id. A name that really
//!   starts with `id:` is reached by escaping the colon (`id%3A…`).
//!
//! Anything else, including a class that is not `[a-z0-9_-]{1,64}` and an empty name, is
//! [`Route::NotFound`].

use super::{percent_decode, Method, Response};
use crate::config::HttpLimits;

/// Longest class name, in bytes.
const CLASS_BYTES_MAX: usize = 64;

/// Hex digits of an object id after `id:`.
const ID_HEX_DIGITS: usize = 64;

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Metrics,
    /// The chat page (plain HTML and JavaScript) that joins a `chat` room.
    ChatPage,
    /// Make a new random id for an object of `class`.
    NewId {
        class: String,
    },
    /// A request for one object.
    Object {
        class: String,
        target: ObjectTarget,
        /// The path the object sees: `/{rest…}`, still percent-encoded; `/` when empty.
        path: String,
    },
    /// The admin API; `path` is what follows `/admin` (`/` when nothing does).
    Admin {
        path: String,
    },
    /// No such route: the caller answers 404 `Not Found`.
    NotFound,
}

/// How a request names its object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectTarget {
    /// By name, percent-decoded.
    Name(String),
    /// By id: the 64 lowercase hex digits after `id:`.
    Id(String),
}

/// Routes `path` (without the query). `Err` is a ready error response: 405 for a method the
/// route does not serve, 400 for a name or id that cannot be valid.
pub fn route(method: Method, path: &str, limits: &HttpLimits) -> Result<Route, Response> {
    match path {
        "/healthz" => return read_only(method, Route::Healthz),
        "/metrics" => return read_only(method, Route::Metrics),
        "/chat" => return read_only(method, Route::ChatPage),
        _ => {}
    }
    if path == "/admin" || path.starts_with("/admin/") {
        let rest = &path["/admin".len()..];
        let rest = if rest.is_empty() { "/" } else { rest };
        return Ok(Route::Admin {
            path: rest.to_string(),
        });
    }
    if let Some(class) = path.strip_prefix("/ids/") {
        if !is_class_name(class) {
            return Ok(Route::NotFound);
        }
        if method != Method::Post {
            return Err(method_not_allowed("POST"));
        }
        return Ok(Route::NewId {
            class: class.to_string(),
        });
    }
    let Some(rest) = path.strip_prefix("/objects/") else {
        return Ok(Route::NotFound);
    };
    let Some((class, rest)) = rest.split_once('/') else {
        return Ok(Route::NotFound);
    };
    if !is_class_name(class) {
        return Ok(Route::NotFound);
    }
    let (name, object_path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    if name.is_empty() {
        return Ok(Route::NotFound);
    }
    let target = object_target(name, limits)?;
    Ok(Route::Object {
        class: class.to_string(),
        target,
        path: object_path.to_string(),
    })
}

/// How a path segment names an object: `id:<64 hex>` or a percent-encoded name.
pub(crate) fn object_target(name: &str, limits: &HttpLimits) -> Result<ObjectTarget, Response> {
    if let Some(hex) = name.strip_prefix("id:") {
        let valid = hex.len() == ID_HEX_DIGITS && hex.bytes().all(|byte| byte.is_ascii_hexdigit());
        if !valid {
            return Err(Response::json_error(
                400,
                "invalid object id: expected id:<64 hex digits>",
            ));
        }
        return Ok(ObjectTarget::Id(hex.to_ascii_lowercase()));
    }
    // A percent-escape shrinks three bytes to one, so a much longer raw name cannot fit; this
    // check keeps a huge name from being decoded at all.
    let too_long = || {
        Response::json_error(
            400,
            &format!(
                "object name too long: at most {} bytes",
                limits.object_name_bytes_max
            ),
        )
    };
    if name.len() > limits.object_name_bytes_max.saturating_mul(3) {
        return Err(too_long());
    }
    let decoded = percent_decode(name, false).ok_or_else(|| {
        Response::json_error(400, "object name is not valid percent-encoded UTF-8")
    })?;
    if decoded.len() > limits.object_name_bytes_max {
        return Err(too_long());
    }
    Ok(ObjectTarget::Name(decoded))
}

fn read_only(method: Method, route: Route) -> Result<Route, Response> {
    match method {
        Method::Get | Method::Head => Ok(route),
        _ => Err(method_not_allowed("GET, HEAD")),
    }
}

fn method_not_allowed(allow: &str) -> Response {
    Response::json_error(405, "method not allowed").with_header("Allow", allow)
}

pub(crate) fn is_class_name(class: &str) -> bool {
    (1..=CLASS_BYTES_MAX).contains(&class.len())
        && class.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
        })
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
