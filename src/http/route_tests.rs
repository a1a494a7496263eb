use super::*;

fn routed(method: Method, path: &str) -> Result<Route, Response> {
    route(method, path, &HttpLimits::default())
}

fn object(class: &str, target: ObjectTarget, path: &str) -> Result<Route, Response> {
    Ok(Route::Object {
        class: class.into(),
        target,
        path: path.into(),
    })
}

#[test]
fn fixed_routes() {
    assert_eq!(routed(Method::Get, "/healthz"), Ok(Route::Healthz));
    assert_eq!(routed(Method::Head, "/healthz"), Ok(Route::Healthz));
    assert_eq!(routed(Method::Get, "/metrics"), Ok(Route::Metrics));
    assert_eq!(
        routed(Method::Post, "/ids/counter"),
        Ok(Route::NewId {
            class: "counter".into()
        })
    );
    let wrong = routed(Method::Post, "/healthz").expect_err("405");
    assert_eq!(wrong.status, 405);
    assert!(wrong
        .headers
        .iter()
        .any(|(name, value)| name == "Allow" && value == "GET, HEAD"));
    assert_eq!(
        routed(Method::Delete, "/metrics").map_err(|r| r.status),
        Err(405)
    );
    assert_eq!(
        routed(Method::Get, "/ids/counter").map_err(|r| r.status),
        Err(405)
    );
}

#[test]
fn object_routes() {
    let name = |text: &str| ObjectTarget::Name(text.into());
    assert_eq!(
        routed(Method::Get, "/objects/counter/a/value"),
        object("counter", name("a"), "/value")
    );
    assert_eq!(
        routed(Method::Put, "/objects/kv/notes"),
        object("kv", name("notes"), "/")
    );
    assert_eq!(
        routed(Method::Put, "/objects/kv/notes/"),
        object("kv", name("notes"), "/")
    );
    assert_eq!(
        routed(Method::Get, "/objects/counter/with%20space%2Fslash/a/b%20c"),
        object("counter", name("with space/slash"), "/a/b%20c")
    );
    assert_eq!(
        routed(Method::Get, "/objects/c/id%3Ax/v"),
        object("c", name("id:x"), "/v")
    );
    let hex = "0123456789abcdefABCDEF0123456789abcdef0123456789abcdef0123456789";
    assert_eq!(
        routed(Method::Get, &format!("/objects/counter/id:{hex}/increment")),
        object(
            "counter",
            ObjectTarget::Id(hex.to_ascii_lowercase()),
            "/increment"
        )
    );
}

#[test]
fn bad_names_and_ids_are_400() {
    assert_eq!(
        routed(Method::Get, "/objects/counter/id:xyz/value").map_err(|r| r.status),
        Err(400)
    );
    let short = format!("/objects/counter/id:{}", "a".repeat(63));
    assert_eq!(routed(Method::Get, &short).map_err(|r| r.status), Err(400));
    assert_eq!(
        routed(Method::Get, "/objects/counter/%zz/value").map_err(|r| r.status),
        Err(400)
    );
    assert_eq!(
        routed(Method::Get, "/objects/counter/%ff/value").map_err(|r| r.status),
        Err(400)
    );
    let long = format!("/objects/counter/{}/value", "n".repeat(1025));
    assert_eq!(routed(Method::Get, &long).map_err(|r| r.status), Err(400));
    let at_limit = format!("/objects/counter/{}/value", "n".repeat(1024));
    assert!(routed(Method::Get, &at_limit).is_ok());
    // Escapes count after decoding: 1024 bytes written as 3072 characters fit.
    let escaped = format!("/objects/counter/{}/value", "%41".repeat(1024));
    assert!(routed(Method::Get, &escaped).is_ok());
    let huge = format!("/objects/counter/{}/value", "%41".repeat(5000));
    assert_eq!(routed(Method::Get, &huge).map_err(|r| r.status), Err(400));
}

#[test]
fn everything_else_is_not_found() {
    let paths = [
        "/",
        "/nothing",
        "/objects",
        "/objects/",
        "/objects/counter",
        "/objects/counter/",
        "/objects/counter//value",
        "/objects/Counter/a",
        "/objects/c.d/a",
        "/ids/",
        "/ids/a/b",
        "/healthz/",
        "/HEALTHZ",
    ];
    for path in paths {
        assert_eq!(routed(Method::Get, path), Ok(Route::NotFound), "{path}");
    }
    let long_class = format!("/objects/{}/a", "c".repeat(65));
    assert_eq!(routed(Method::Get, &long_class), Ok(Route::NotFound));
    assert_eq!(
        routed(Method::Post, &format!("/ids/{}", "c".repeat(65))),
        Ok(Route::NotFound)
    );
}
