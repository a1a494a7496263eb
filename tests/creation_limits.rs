//! Object creation limits over real sockets: a client creating objects in a loop is held at
//! its limit with 429, nothing is created for a refused request, and requests to objects that
//! exist are never counted.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;

#[test]
fn a_client_creating_objects_is_held_at_the_limit_and_existing_objects_are_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stead.toml");
    std::fs::write(
        &config,
        "[objects]\ncreations_per_second = 5\n\n[classes.lock]\ncreations_per_second = 0\n",
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    let server = TestServer::start(
        &dir.path().join("data"),
        2,
        &["--config", &config, "--admin-token", "admin"],
    );
    let mut client = server.client();
    assert_eq!(client.get("/objects/counter/old/increment").status, 200);

    // A loop of new counters: the bucket (5, one of them spent on `old`) empties, then
    // refills at 5 a second.
    let began = Instant::now();
    let (mut created, mut refused) = (Vec::new(), Vec::new());
    for n in 0..40 {
        let name = format!("new{n}");
        let reply = client.get(&format!("/objects/counter/{name}/increment"));
        match reply.status {
            200 => created.push(name),
            429 => {
                let retry: u64 = reply
                    .header("retry-after")
                    .and_then(|value| value.parse().ok())
                    .expect("a Retry-After in seconds");
                assert!((1..=2).contains(&retry), "{retry}");
                let body = reply.json();
                assert_eq!(body["retryable"], true, "{body}");
                assert!(
                    body["error"]
                        .as_str()
                        .is_some_and(|error| error.contains("at most 5 new \"counter\" objects")),
                    "{body}"
                );
                refused.push(name);
            }
            status => panic!("{status}: {}", reply.text()),
        }
    }
    let elapsed = began.elapsed().as_secs_f64();
    assert!(
        (created.len() as f64) <= 4.0 + 5.0 * elapsed + 1.0,
        "{} created in {elapsed:.2}s",
        created.len()
    );
    assert!(refused.len() >= 20, "only {} refused", refused.len());

    // The bucket is empty now, and objects that exist are served all the same.
    for expected in 2..=30 {
        let reply = client.get("/objects/counter/old/increment");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), expected.to_string());
    }
    for name in created.iter().take(3) {
        let reply = client.get(&format!("/objects/counter/{name}/value"));
        assert_eq!((reply.status, reply.text()), (200, "1".to_string()));
    }
    // Nothing was written for a refused request.
    let admin = |client: &mut common::Client, name: &str| {
        client
            .request_with(
                "GET",
                &format!("/admin/objects/counter/{name}"),
                &[("Authorization", "Bearer admin")],
                b"",
            )
            .status
    };
    for name in &refused {
        assert_eq!(admin(&mut client, name), 404, "{name} was created");
    }
    assert_eq!(admin(&mut client, "old"), 200);
    // A class with no limit is not held by the others' buckets.
    for n in 0..20 {
        let reply = client.get(&format!("/objects/lock/l{n}/status"));
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    // `POST /ids/{class}` counts too: after a second the bucket is full (5) again.
    std::thread::sleep(Duration::from_millis(1100));
    let statuses: Vec<u16> = (0..7)
        .map(|_| client.request("POST", "/ids/counter", b"").status)
        .collect();
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    assert_eq!(server.stop(), Some(0));
}
