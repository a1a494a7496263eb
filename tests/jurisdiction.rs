//! Jurisdictions on a single node: a class pinned to a jurisdiction is stored only on a node
//! with that tag, so a node with another tag (or none) refuses to start, saying why.

mod common;

use common::TestServer;

#[test]
fn a_class_pinned_to_a_jurisdiction_starts_only_on_a_node_with_its_tag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stead.toml");
    std::fs::write(&config, "[classes.counter]\njurisdiction = \"eu\"\n").expect("config");
    let config = config.to_string_lossy().into_owned();

    let data = dir.path().join("data");
    let refused_start = |extra: &[&str]| {
        let mut args = vec!["--config", config.as_str()];
        args.extend_from_slice(extra);
        common::refused_start(&data, &args)
    };
    let none = refused_start(&[]);
    assert!(
        none.contains(
            "jurisdiction: class \"counter\" is pinned to jurisdiction \"eu\" and this node has \
             none (--jurisdiction eu): this node may not store its objects"
        ),
        "{none}"
    );
    let other = refused_start(&["--jurisdiction", "us"]);
    assert!(
        other.contains("pinned to jurisdiction \"eu\" and this node's is \"us\""),
        "{other}"
    );
    let malformed = refused_start(&["--jurisdiction", "EU!"]);
    assert!(
        malformed.contains("a jurisdiction must be 1 to 32"),
        "{malformed}"
    );
    // The refused starts made no data directory.
    assert!(!dir.path().join("data").exists());

    let server = TestServer::start(
        &dir.path().join("data"),
        1,
        &["--config", &config, "--jurisdiction", "eu"],
    );
    assert_eq!(
        server.client().get("/objects/counter/c/increment").text(),
        "1"
    );
    assert_eq!(server.stop(), Some(0));
}
