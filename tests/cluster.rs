//! The cluster's first part against real `nats-server` processes and real `stead serve`
//! nodes: every acknowledged write is in the stream (a node that lost its disk gets it back),
//! a node another one took over from stops serving, and without NATS a write fails with 503
//! instead of being acknowledged. Skipped without nats-server unless `STEAD_REQUIRE_NATS=1`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::nats::{self, NatsServer};
use common::TestServer;

/// Partitions of the test clusters: fencing 64 subjects at start is quick.
const PARTITIONS: u32 = 64;
/// The owner's lease in the tests: a restarted node waits for its earlier lease to expire.
const LEASE_MS: u64 = 3000;

/// Writes `stead.toml` for node `node` of the cluster behind `nats` into `dir`.
fn node_config(dir: &Path, node: &str, nats: &str, partitions: u32) -> String {
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(
        &path,
        format!(
            "[storage]\npartitions = {partitions}\n\n[cluster]\nnats = [\"{nats}\"]\n\
             node_id = \"{node}\"\nreplicas = 1\nack_timeout_ms = 1000\nlease_ms = {LEASE_MS}\n"
        ),
    )
    .expect("config");
    path.to_string_lossy().into_owned()
}

/// The nats-server binary, a temporary directory and one NATS server with its store there,
/// or None (after saying why) when the test is skipped.
fn one_nats(test: &str) -> Option<(std::path::PathBuf, tempfile::TempDir, NatsServer)> {
    let binary = nats::binary(test)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(&binary, dir.path());
    Some((binary, dir, nats))
}

/// How long a node may take to serve: a restarted node waits for its earlier key to expire.
const SERVING_TIMEOUT: Duration = Duration::from_secs(90);

/// Waits until `node` serves: `/healthz` answers 200 once the assignment gives it partitions
/// and its cores rebuilt every one of them. A node listens from its start, forwarding until
/// then.
fn serving(node: TestServer) -> TestServer {
    let serves = common::wait_until(SERVING_TIMEOUT, || {
        common::Client::try_connect(node.addr, Duration::from_secs(5))
            .ok()
            .and_then(|mut client| client.try_request("GET", "/healthz").ok())
            .is_some_and(|reply| reply.status == 200)
    });
    if !serves {
        node.kill();
        panic!("the node did not serve within {SERVING_TIMEOUT:?}");
    }
    node
}

/// Starts node `node` and returns once it serves the partitions the assignment gives it.
fn start_node(dir: &Path, node: &str, nats: &str) -> TestServer {
    let config = node_config(dir, node, nats, PARTITIONS);
    serving(TestServer::start(
        &dir.join(node),
        2,
        &["--config", &config],
    ))
}

/// Increments counter `name` and returns the value it acknowledged, or the status it failed
/// with.
fn increment(server: &TestServer, name: &str) -> Result<u64, u16> {
    let reply = server
        .client()
        .get(&format!("/objects/counter/{name}/increment"));
    match reply.status {
        200 => Ok(reply.text().parse().expect("a number")),
        status => Err(status),
    }
}

fn value(server: &TestServer, name: &str) -> u64 {
    let reply = server
        .client()
        .get(&format!("/objects/counter/{name}/value"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.text().parse().expect("a number")
}

/// The partition of object `name` of `class`.
fn partition_of(class: &str, name: &str) -> u32 {
    stead::id::ObjectId::from_name(class, name).partition(PARTITIONS)
}

/// A name of an object of `class`, made of `prefix` and a number, whose partition `pick`
/// accepts.
fn name_in(class: &str, prefix: &str, pick: impl Fn(u32) -> bool) -> String {
    (0..10_000)
        .map(|n| format!("{prefix}{n}"))
        .find(|name| pick(partition_of(class, name)))
        .expect("a name in such a partition")
}

/// The partitions a node that joins a node owning all of them gets: the rebalancer moves
/// the owner's highest ones until both hold half.
fn upper_half(partition: u32) -> bool {
    partition >= PARTITIONS / 2
}

/// Waits until each node serves as many partitions as given.
fn served(nodes: &[(&TestServer, u32)]) -> bool {
    common::wait_until(SERVING_TIMEOUT, || {
        nodes.iter().all(|(node, count)| {
            node.metric_sum("stead_cluster_partitions_served") == f64::from(*count)
        })
    })
}

#[test]
fn acknowledged_writes_survive_losing_the_node_and_its_disk() {
    let Some((_, dir, nats)) = one_nats("acknowledged_writes_survive_losing_the_node_and_its_disk")
    else {
        return;
    };
    let node = start_node(dir.path(), "a", &nats.url());
    let mut acknowledged = [0u64; 6];
    for round in 0..60 {
        let counter = round % acknowledged.len();
        acknowledged[counter] = increment(&node, &format!("c{counter}")).expect("acknowledged");
    }
    let mut client = node.client();
    let lock = client.get("/objects/lock/l/acquire?clientId=ada&timeoutMs=600000");
    assert_eq!(lock.status, 200, "{}", lock.text());
    node.kill();
    // The disk is gone: everything comes back from the stream.
    std::fs::remove_dir_all(dir.path().join("a")).expect("remove the node's data");
    let node = start_node(dir.path(), "a", &nats.url());
    for (counter, expected) in acknowledged.iter().enumerate() {
        assert_eq!(
            value(&node, &format!("c{counter}")),
            *expected,
            "c{counter}"
        );
    }
    let status = node.client().get("/objects/lock/l/status").json();
    assert_eq!(status["holder"], "ada", "{status}");
    // It goes on from there, on fewer cores too.
    assert_eq!(increment(&node, "c0"), Ok(acknowledged[0] + 1));
    node.kill();
    let config = node_config(dir.path(), "a", &nats.url(), PARTITIONS);
    let node = serving(TestServer::start(
        &dir.path().join("a"),
        1,
        &["--config", &config],
    ));
    assert_eq!(value(&node, "c0"), acknowledged[0] + 1);
    assert_eq!(node.stop(), Some(0));
}

/// A second node gets half the partitions (the rebalancer spreads them as it joins), and the
/// other half once the first is killed and its node key expired, with every acknowledged
/// write.
#[test]
fn a_second_node_takes_half_and_all_once_the_first_dies() {
    let Some((_, dir, nats)) = one_nats("a_second_node_takes_half_and_all_once_the_first_dies")
    else {
        return;
    };
    let old = start_node(dir.path(), "a", &nats.url());
    let names: Vec<String> = (0..8).map(|n| format!("t{n}")).collect();
    for name in &names {
        assert_eq!(increment(&old, name), Ok(1));
    }
    let new = start_node(dir.path(), "b", &nats.url());
    let half = PARTITIONS / 2;
    assert!(served(&[(&old, half), (&new, half)]), "not spread");
    // Each node answers for every object: its own, and the other's by forwarding.
    for name in &names {
        assert_eq!(increment(&new, name), Ok(2), "{name}");
        assert_eq!(value(&old, name), 2, "{name}");
    }
    assert!(new.metric_sum("stead_cluster_forwarded_total") > 0.0);
    assert!(old.metric_sum("stead_cluster_forwarded_total") > 0.0);
    let killed = std::time::Instant::now();
    old.kill();
    assert!(served(&[(&new, PARTITIONS)]), "b did not take a's half");
    let takeover = killed.elapsed();
    // The node key expires within about a second past LEASE_MS (NATS checks ages once a
    // second); then the rebalancer moves a's partitions and b rebuilds them.
    eprintln!("a killed: b served every partition {takeover:?} after");
    assert!(
        takeover < Duration::from_millis(LEASE_MS) + Duration::from_secs(10),
        "took over after {takeover:?}"
    );
    for name in &names {
        assert_eq!(value(&new, name), 2, "{name}");
        assert_eq!(increment(&new, name), Ok(3), "{name}");
    }
    assert_eq!(new.metric_sum("stead_cluster_deposed"), 0.0);
    assert_eq!(new.client().get("/healthz").text(), "ok");
    assert_eq!(new.stop(), Some(0));
}

/// Every node forwards a request for an object of a partition it does not own (a POST with
/// its body, a WebSocket) to the partition's owner; a request another node already forwarded
/// is answered 421 with the owner instead of a second hop; a call between objects goes to the
/// callee's owner too; a node killed and restarted gets a share of the partitions again, and
/// the other's stop hands it all of them.
#[test]
fn every_node_forwards_what_it_does_not_own_and_a_restarted_node_gets_its_share_again() {
    const TEST: &str =
        "every_node_forwards_what_it_does_not_own_and_a_restarted_node_gets_its_share_again";
    let Some((_, dir, nats)) = one_nats(TEST) else {
        return;
    };
    // a closes idle connections soon: b's kept-alive ones among them.
    let a_config = node_config(dir.path(), "a", &nats.url(), PARTITIONS);
    let mut text = std::fs::read_to_string(&a_config).expect("config");
    text.push_str("\n[http]\nidle_connection_timeout_ms = 300\n");
    std::fs::write(&a_config, text).expect("config");
    let a = serving(TestServer::start(
        &dir.path().join("a"),
        2,
        &["--config", &a_config],
    ));
    let b = start_node(dir.path(), "b", &nats.url());
    let half = PARTITIONS / 2;
    assert!(served(&[(&a, half), (&b, half)]), "not spread");
    // a keeps the lower half.
    let f = name_in("counter", "f", |partition| !upper_half(partition));
    for expected in 1..=5 {
        assert_eq!(increment(&b, &f), Ok(expected));
    }
    assert_eq!(value(&a, &f), 5);
    assert!(b.metric_sum("stead_cluster_forwarded_total") >= 5.0);
    assert_eq!(b.client().get("/healthz").text(), "ok");
    // A body and the answer's own status and headers make the trip.
    let app = name_in("sessions", "app", |partition| !upper_half(partition));
    let posted = br#"{"userId":"u1","data":{"b":1.50},"ttlMs":600000}"#;
    let path = format!("/objects/sessions/{app}/sessions");
    let created = b.client().request("POST", &path, posted);
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("content-type"), Some("application/json"));
    let id = created.json()["id"].as_str().expect("id").to_string();
    let got = a.client().get(&format!("{path}/{id}"));
    assert!(
        got.text().contains(r#""data":{"b":1.50}"#),
        "{}",
        got.text()
    );
    // a closed b's idle connections meanwhile: b does not send a POST on one of them.
    std::thread::sleep(Duration::from_millis(800));
    for _ in 0..4 {
        let again = b.client().request("POST", &path, posted);
        assert_eq!(again.status, 201, "{}", again.text());
    }
    assert_eq!(b.metric_sum("stead_cluster_forward_failures_total"), 0.0);
    // No second hop: a node that does not serve a forwarded request names the owner.
    let misdirected = b.client().request_with(
        "GET",
        &format!("/objects/counter/{f}/value"),
        &[("stead-forwarded-by", "c")],
        b"",
    );
    assert_eq!(misdirected.status, 421);
    assert_eq!(
        misdirected.text(),
        format!(
            r#"{{"error":"this node does not serve the object; send the request to its owner","owner":"a","address":"{}"}}"#,
            a.addr
        )
    );
    assert_eq!(misdirected.header("stead-misdirected"), Some("1"));
    // Sent by a node of the cluster: from an assignment no older than b's (b's view would be
    // the one behind) the answer is 503, retry; from an older one (the sender's view is
    // behind), 421 naming the owner.
    let forwarded_by_a = |generation: &str| {
        b.client().request_with(
            "GET",
            &format!("/objects/counter/{f}/value"),
            &[
                ("stead-forwarded-by", "a"),
                ("stead-assignment-generation", generation),
            ],
            b"",
        )
    };
    let behind_here = forwarded_by_a("1000000");
    assert_eq!(behind_here.status, 503, "{}", behind_here.text());
    assert_eq!(behind_here.header("retry-after"), Some("1"));
    assert!(
        behind_here.text().contains("changing owner"),
        "{}",
        behind_here.text()
    );
    let behind_there = forwarded_by_a("0");
    assert_eq!(behind_there.status, 421, "{}", behind_there.text());
    // A WebSocket through b: the owner's room, which a member on the owner shares.
    let room = name_in("chat", "room", |partition| !upper_half(partition));
    let socket = |node: &TestServer, name: &str| {
        common::ws::WsClient::connect(
            node.addr,
            &format!("/objects/chat/{room}/websocket?name={name}"),
        )
    };
    let mut through_b = socket(&b, "via-b");
    assert_eq!(through_b.next_json()["type"], "join");
    let mut on_a = socket(&a, "on-a");
    assert_eq!(on_a.next_json()["type"], "join");
    let joined = through_b.next_json();
    assert_eq!(joined["type"], "join", "{joined}");
    assert_eq!(joined["name"], "on-a", "{joined}");
    through_b.send_text(r#"{"type":"message","text":"hello from b"}"#);
    let said = on_a.next_json();
    assert_eq!(said["text"], "hello from b", "{said}");
    drop((through_b, on_a));
    // Calls between objects: a relay on a calls a counter wherever its partition is; those
    // of b's partitions go to b.
    let relays: Vec<String> = (0..16)
        .map(|n| {
            name_in("relay", &format!("r{n}-"), |partition| {
                !upper_half(partition)
            })
        })
        .collect();
    let forwarded_before = a.metric_sum("stead_cluster_forwarded_total");
    for round in 1..=2 {
        for relay in &relays {
            let reply = a
                .client()
                .get(&format!("/objects/relay/{relay}/counter/increment"));
            assert_eq!(reply.status, 200, "{relay}: {}", reply.text());
            assert_eq!(reply.text(), round.to_string(), "{relay}");
        }
    }
    assert!(
        a.metric_sum("stead_cluster_forwarded_total") > forwarded_before,
        "no call went to b"
    );

    a.kill();
    assert!(served(&[(&b, PARTITIONS)]), "b did not take a's half");
    assert_eq!(value(&b, &f), 5);
    // Restarted, a gets half of b's partitions (the upper half: f stays on b) and forwards f.
    let a = start_node(dir.path(), "a", &nats.url());
    assert!(served(&[(&a, half), (&b, half)]), "not spread again");
    assert_eq!(increment(&a, &f), Ok(6));
    assert_eq!(value(&b, &f), 6);
    // b stops (and gives its node key up): a gets every partition without waiting for it to
    // expire.
    let stopped = std::time::Instant::now();
    assert_eq!(b.stop(), Some(0));
    assert!(served(&[(&a, PARTITIONS)]), "a did not take b's half");
    eprintln!(
        "b stopped: a served every partition {:?} after",
        stopped.elapsed()
    );
    assert_eq!(value(&a, &f), 6);
    assert_eq!(a.stop(), Some(0));
}

/// A class pinned to a jurisdiction: a node without its tag joins, forwards to the owner, and
/// never takes the partitions over, even once the owner died; a node with the tag does.
#[test]
fn a_node_without_a_pinned_classs_jurisdiction_only_forwards() {
    let Some((_, dir, nats)) =
        one_nats("a_node_without_a_pinned_classs_jurisdiction_only_forwards")
    else {
        return;
    };
    let start = |node: &str, tag: &str| {
        let config = node_config(dir.path(), node, &nats.url(), PARTITIONS);
        let mut text = std::fs::read_to_string(&config).expect("config");
        text.push_str("\n[classes.counter]\njurisdiction = \"eu\"\n");
        std::fs::write(&config, text).expect("config");
        TestServer::start(
            &dir.path().join(node),
            2,
            &["--config", &config, "--jurisdiction", tag],
        )
    };
    let a = serving(start("a", "eu"));
    let us = start("u", "us");
    let forwarded = common::wait_until(Duration::from_secs(10), || increment(&us, "j") == Ok(1));
    assert!(forwarded, "the node without the tag did not forward");
    a.kill();
    // The lease expires (3 s) and more: the node without the tag never takes over.
    std::thread::sleep(Duration::from_millis(3 * LEASE_MS));
    let health = us.client().get("/healthz");
    assert_eq!(health.status, 503);
    assert_eq!(
        health.text(),
        r#"{"status":"unhealthy","cluster":"this node owns no partition: the partitions are owned by \"a\"","cores":[]}"#
    );
    assert_eq!(us.metric_sum("stead_cluster_partitions_served"), 0.0);
    assert_eq!(increment(&us, "j"), Err(503));
    // A node with the tag does, and the other forwards to it.
    let eu = serving(start("e", "eu"));
    assert_eq!(value(&eu, "j"), 1);
    let forwarded = common::wait_until(Duration::from_secs(10), || increment(&us, "j") == Ok(2));
    assert!(
        forwarded,
        "the node without the tag did not forward to the new owner"
    );
    assert_eq!(eu.stop(), Some(0));
    assert_eq!(us.stop(), Some(0));
}

/// A node whose partitions the assignment gives to another node stops serving them at once,
/// reads and the admin API included, and forwards them; once that node's key expired (it
/// never served), the rebalancer gives them back and the node rebuilds them from the stream.
#[test]
fn a_node_stops_serving_the_partitions_the_assignment_moves_away() {
    let Some((_, dir, nats)) =
        one_nats("a_node_stops_serving_the_partitions_the_assignment_moves_away")
    else {
        return;
    };
    let config = node_config(dir.path(), "a", &nats.url(), PARTITIONS);
    let node = serving(TestServer::start(
        &dir.path().join("a"),
        2,
        &["--config", &config, "--admin-token", "admin"],
    ));
    let moved = name_in("counter", "k", upper_half);
    let kept = name_in("counter", "s", |partition| !upper_half(partition));
    assert_eq!(increment(&node, &moved), Ok(1));
    assert_eq!(increment(&node, &kept), Ok(1));
    let admin = |node: &TestServer| {
        node.client().request_with(
            "GET",
            &format!("/admin/objects/counter/{moved}"),
            &[("Authorization", "Bearer admin")],
            b"",
        )
    };
    assert_eq!(admin(&node).status, 200);
    // A node key of a node that may own partitions, has applied every assignment, gives no
    // address and is never renewed: the rebalancer (this node) gives it half.
    nats::publish_raw(
        nats.port,
        "$KV.stead_lease.node.intruder",
        &[],
        br#"{"node":"intruder","process":1,"address":null,"may_own":true,"applied":1000000}"#,
    );
    let refused = common::wait_until(Duration::from_secs(10), || {
        node.client()
            .get(&format!("/objects/counter/{moved}/value"))
            .status
            == 503
    });
    assert!(refused, "the node still serves a moved partition");
    let reply = node
        .client()
        .get(&format!("/objects/counter/{moved}/increment"));
    assert_eq!(reply.status, 503);
    assert!(
        reply
            .text()
            .contains(r#"its owner, node \"intruder\": it gave no address"#),
        "{}",
        reply.text()
    );
    let shown = admin(&node);
    assert_eq!(shown.status, 421);
    assert_eq!(
        shown.text(),
        r#"{"error":"this node does not serve the object; send the request to its owner","owner":"intruder","address":null}"#
    );
    assert_eq!(increment(&node, &kept), Ok(2));
    // Its cores released them (a forwarded request would answer the same before that).
    assert!(
        served(&[(&node, PARTITIONS / 2)]),
        "the cores kept the moved half"
    );
    // The intruder's key expires: its partitions come back, rebuilt from the stream.
    assert!(
        served(&[(&node, PARTITIONS)]),
        "the partitions did not come back"
    );
    assert_eq!(value(&node, &moved), 1);
    assert_eq!(increment(&node, &moved), Ok(2));
    assert_eq!(admin(&node).status, 200);
    assert_eq!(node.metric_sum("stead_cluster_deposed"), 0.0);
    assert_eq!(node.stop(), Some(0));
}

#[test]
fn without_nats_a_write_fails_and_nothing_is_falsely_acknowledged() {
    let Some((binary, dir, mut nats)) =
        one_nats("without_nats_a_write_fails_and_nothing_is_falsely_acknowledged")
    else {
        return;
    };
    let node = start_node(dir.path(), "a", &nats.url());
    let mut acknowledged = 0;
    for _ in 0..10 {
        acknowledged = increment(&node, "n").expect("acknowledged");
    }
    nats.kill();
    let mut failed = 0;
    for _ in 0..3 {
        match increment(&node, "n") {
            Ok(value) => panic!("acknowledged {value} with NATS down"),
            Err(status) => assert_eq!(status, 503),
        }
        failed += 1;
    }
    // The partition stays refused on this node, reads too: its memory may hold writes the
    // stream does not.
    assert_eq!(node.client().get("/objects/counter/n/value").status, 503);
    // Without NATS the lease is not renewed: once it is stale, nothing is served, not even an
    // object that was never written.
    let stale = common::wait_until(Duration::from_secs(10), || {
        let reply = node.client().get("/objects/counter/quiet/value");
        reply.status == 503 && reply.text().contains("lease is not fresh")
    });
    assert!(stale, "a node without a fresh lease still serves");
    let health = node.client().get("/healthz");
    assert_eq!(health.status, 503);
    assert!(
        health
            .text()
            .starts_with(r#"{"status":"unhealthy","cluster":"the write was not replicated: this node's lease is not fresh"#),
        "{}",
        health.text()
    );
    assert!(
        health.json()["cluster"]
            .as_str()
            .is_some_and(|reason| reason.contains("lease is not fresh")),
        "{}",
        health.text()
    );
    nats.restart(&binary);
    // NATS is back: the node renews its lease and rebuilds the refused partition from the
    // stream, without a restart.
    let back = std::time::Instant::now();
    let served = common::wait_until(Duration::from_secs(30), || {
        node.client().get("/objects/counter/n/value").status == 200
    });
    assert!(
        served,
        "the refused partition did not come back once NATS did"
    );
    eprintln!(
        "without NATS: the refused partition served again {:?} after NATS restarted",
        back.elapsed()
    );
    let rebuilt = value(&node, "n");
    // Every acknowledged write is there; a refused one may or may not be (its append may
    // have reached the stream before the acknowledgement was lost).
    // Only the first refused write was sent: the partition refused the others on the node.
    assert!(
        (acknowledged..=acknowledged + 1).contains(&rebuilt),
        "{acknowledged} acknowledged, {failed} refused, {rebuilt} after the rebuild"
    );
    assert_eq!(increment(&node, "n"), Ok(rebuilt + 1));
    assert_eq!(node.metric_sum("stead_cluster_partitions_refused"), 0.0);
    // And a node rebuilt from the stream at its start agrees.
    node.kill();
    let node = start_node(dir.path(), "a", &nats.url());
    assert_eq!(value(&node, "n"), rebuilt + 1);
    assert_eq!(increment(&node, "n"), Ok(rebuilt + 2));
    assert_eq!(node.stop(), Some(0));
}

/// The stream itself fences: once another writer appended to a partition's subject, the node's
/// next append there is refused, and that partition (only) answers 503 on the node.
#[test]
fn an_append_after_another_writers_record_is_refused() {
    let Some((_, dir, nats)) = one_nats("an_append_after_another_writers_record_is_refused") else {
        return;
    };
    let node = start_node(dir.path(), "a", &nats.url());
    let partition =
        |name: &str| stead::id::ObjectId::from_name("counter", name).partition(PARTITIONS);
    let fenced = "fenced";
    let other = (0..100)
        .map(|n| format!("other{n}"))
        .find(|name| partition(name) != partition(fenced))
        .expect("a name in another partition");
    assert_eq!(increment(&node, fenced), Ok(1));
    assert_eq!(increment(&node, &other), Ok(1));
    // A record by someone else (as a newer owner's takeover record would be).
    nats::publish_raw(
        nats.port,
        &format!("stead.log.{}", partition(fenced)),
        &[("Stead-Kind", "takeover"), ("Stead-Node", "intruder")],
        b"",
    );
    let refused = node
        .client()
        .get(&format!("/objects/counter/{fenced}/increment"));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("written by a newer owner"),
        "{}",
        refused.text()
    );
    let read = node
        .client()
        .get(&format!("/objects/counter/{fenced}/value"));
    assert_eq!(read.status, 503);
    assert_eq!(increment(&node, &other), Ok(2));
    assert_eq!(node.metric_sum("stead_cluster_partitions_refused"), 1.0);
    assert_eq!(node.metric_sum("stead_cluster_fence_refusals_total"), 1.0);
    assert_eq!(
        node.metric_sum("stead_cluster_partitions_served"),
        f64::from(PARTITIONS - 1)
    );
    assert_eq!(node.metric_sum("stead_cluster_appends_in_flight"), 0.0);
    assert_eq!(
        node.metric_sum("stead_cluster_replication_lag_batches"),
        0.0
    );
    assert_eq!(node.metric_sum("stead_cluster_deposed"), 0.0);
    // The assignment still gives the partition to this node: it fences it again and rebuilds
    // it from the stream, without the refused write, and serves it again, unrestarted.
    let back = common::wait_until(Duration::from_secs(10), || {
        node.client()
            .get(&format!("/objects/counter/{fenced}/value"))
            .status
            == 200
    });
    assert!(back, "the fenced partition did not come back");
    assert_eq!(value(&node, fenced), 1);
    assert_eq!(increment(&node, fenced), Ok(2));
    assert_eq!(node.metric_sum("stead_cluster_partitions_refused"), 0.0);
    // And a node rebuilt at its start agrees.
    node.kill();
    let node = start_node(dir.path(), "a", &nats.url());
    assert_eq!(value(&node, fenced), 2);
    assert_eq!(value(&node, &other), 2);
    assert_eq!(node.stop(), Some(0));
}

#[test]
fn a_node_with_other_settings_refuses_to_join() {
    let Some((_, dir, nats)) = one_nats("a_node_with_other_settings_refuses_to_join") else {
        return;
    };
    let first = start_node(dir.path(), "a", &nats.url());
    let config = node_config(dir.path(), "c", &nats.url(), PARTITIONS * 2);
    let stderr = common::refused_start(&dir.path().join("c"), &["--config", &config]);
    assert!(
        stderr.contains("the cluster was created with") && stderr.contains("\"partitions\":64"),
        "{stderr}"
    );
    // The refused node took nothing over.
    assert_eq!(increment(&first, "still-mine"), Ok(1));
    // A node asked to listen where another server answers is refused before it joins.
    let config = node_config(dir.path(), "e", &nats.url(), PARTITIONS);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_stead"))
        .args(["serve", "--listen", &first.addr.to_string(), "--cores", "1"])
        .arg("--data-dir")
        .arg(dir.path().join("e"))
        .args(["--config", &config])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run stead");
    let exited = common::wait_until(Duration::from_secs(30), || {
        second.try_wait().ok().flatten().is_some()
    });
    if !exited {
        let _ = second.kill();
        let _ = second.wait();
        panic!("a second node started on a busy port");
    }
    let output = second.wait_with_output().expect("its output");
    assert!(
        !output.status.success(),
        "a second node started on a busy port"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another server answers there"), "{stderr}");
    assert_eq!(first.stop(), Some(0));

    // No NATS at all: the node says so and does not start.
    let nats_url = format!("nats://127.0.0.1:{}", nats::free_port());
    let stderr = common::refused_start(
        &dir.path().join("d"),
        &["--cluster", &nats_url, "--node-id", "d"],
    );
    assert!(stderr.contains("connect to NATS"), "{stderr}");
}

/// Three NATS servers, three replicas: one server down, writes go on; all three down, writes
/// fail with 503; back up, every acknowledged write is there.
#[test]
fn three_replicas_keep_serving_without_one_nats_server() {
    let Some(binary) = nats::binary("three_replicas_keep_serving_without_one_nats_server") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut servers = NatsServer::cluster(&binary, dir.path());
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let config = dir.path().join("r3.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npartitions = {PARTITIONS}\n\n[cluster]\nnats = {urls:?}\n\
             node_id = \"a\"\nreplicas = 3\nack_timeout_ms = 10000\nlease_ms = 8000\n"
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    let start = || {
        serving(TestServer::start(
            &dir.path().join("a"),
            2,
            &["--config", &config],
        ))
    };
    let node = start();
    let mut acknowledged = 0;
    for _ in 0..20 {
        acknowledged = increment(&node, "r").expect("acknowledged");
    }
    // One server of three gone: a quorum of two remains. The lease (8 s here) outlasts the
    // streams' elections of new leaders, so the node keeps it. While a stream elects a new
    // leader nobody answers its appends (or one is lost with the dead server's connection),
    // and the node sends them again, with the same message id, until one is answered or the
    // ack timeout (10 s here; the election took about 6 s on the 2-core machine) passes: a
    // write waits through the election instead of failing.
    servers[0].kill();
    let mut attempt = 0;
    let r_partition = stead::id::ObjectId::from_name("counter", "r").partition(PARTITIONS);
    let recovered = common::wait_until(Duration::from_secs(30), || {
        // A write that still failed refuses its partition until a restart: probe with fresh
        // objects, never with `r`'s partition, and slowly, so as not to refuse them all.
        attempt += 1;
        let name = format!("after-{attempt}");
        if stead::id::ObjectId::from_name("counter", &name).partition(PARTITIONS) == r_partition {
            return false;
        }
        if increment(&node, &name).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
        false
    });
    assert!(
        recovered,
        "no write succeeded with two of three NATS servers"
    );
    eprintln!("three replicas, one NATS server killed: a write succeeded at attempt {attempt}");
    for _ in 0..10 {
        acknowledged = increment(&node, "r").expect("acknowledged with 2 of 3 servers");
    }
    // All gone: nothing is acknowledged.
    servers[1].kill();
    servers[2].kill();
    assert_eq!(increment(&node, "r"), Err(503));
    for server in &mut servers {
        server.restart(&binary);
    }
    // Back: the node, not restarted, serves again (its refused partition rebuilt from the
    // stream) once the streams have their leaders.
    let back = std::time::Instant::now();
    let served = common::wait_until(Duration::from_secs(90), || {
        let reply = node.client().get("/objects/counter/r/value");
        if reply.status == 200 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
        false
    });
    assert!(served, "the node did not serve again once NATS was back");
    let rebuilt = value(&node, "r");
    assert!(
        (acknowledged..=acknowledged + 1).contains(&rebuilt),
        "{acknowledged} acknowledged, {rebuilt} after the rebuild"
    );
    eprintln!(
        "three replicas, all NATS servers restarted: served again after {:?}",
        back.elapsed()
    );
    acknowledged = rebuilt;
    node.kill();
    // The streams elect their leaders again first; until then a node cannot join.
    let mut restarted = None;
    for _ in 0..30 {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(start)) {
            Ok(node) => {
                restarted = Some(node);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
    let node = restarted.expect("the node starts once NATS is back");
    let after = value(&node, "r");
    assert!(
        (acknowledged..=acknowledged + 1).contains(&after),
        "{acknowledged} acknowledged, {after} after"
    );
    assert_eq!(node.stop(), Some(0));
}

/// A node cut off from NATS (its link to NATS down, its link to clients up) stops serving its
/// partitions, reads included, before another node may take them; the other node takes them
/// once the cut-off node's key expired; the cut-off node never answers with what it holds once
/// the new owner has written. After the link heals it joins again: it releases what the
/// assignment moved, gets a share back from the rebalancer and serves it, unrestarted. Every
/// write it acknowledged is in the new owner's state, and no counter value was acknowledged by
/// both. Needs root (network namespaces); skipped elsewhere unless `STEAD_REQUIRE_NETNS=1`.
#[test]
fn a_node_cut_off_from_nats_stops_serving_before_another_takes_over_and_rejoins_after() {
    const TEST: &str =
        "a_node_cut_off_from_nats_stops_serving_before_another_takes_over_and_rejoins_after";
    let Some(binary) = nats::binary(TEST) else {
        return;
    };
    let Some(mut net) = common::netns::Namespace::create(TEST) else {
        return;
    };
    // Node a lives in the namespace: NATS over one link, clients over the other. It gives no
    // address (it listens on 0.0.0.0), and cannot reach b's loopback address: each node is
    // asked only for what it owns.
    let to_nats = net.link(0);
    let to_clients = net.link(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start_on(&binary, dir.path(), &to_nats.host_ip.to_string());
    let config = node_config(dir.path(), "a", &nats.url(), PARTITIONS);
    let data_dir = dir.path().join("a");
    let mut command = net.command(env!("CARGO_BIN_EXE_stead"));
    command
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data_dir)
        .args(["--cores", "2", "--config", &config]);
    let mut a = TestServer::spawn(command, &data_dir);
    a.addr = std::net::SocketAddr::from((to_clients.inside_ip, a.addr.port()));
    let a = serving(a);
    let b = start_node(dir.path(), "b", &nats.url());
    let half = PARTITIONS / 2;
    assert!(served(&[(&a, half), (&b, half)]), "not spread");
    // `r` is only read during the cut (a write that cannot be replicated refuses its partition
    // at once, so reads of `w` stop for that reason, not the lease's). Both are a's.
    let r = name_in("counter", "r", |partition| !upper_half(partition));
    let w = name_in("counter", "w", |partition| {
        !upper_half(partition) && partition != partition_of("counter", &r)
    });
    assert_eq!(increment(&a, &r), Ok(1));
    let mut acknowledged_by_a = Vec::new();
    for _ in 0..5 {
        acknowledged_by_a.push(increment(&a, &w).expect("acknowledged"));
    }

    net.set(&to_nats, false);
    let cut = std::time::Instant::now();
    // Ask a for reads and writes until b serves every partition, then a while longer.
    let mut last_served = None;
    let mut stale_reason_seen = false;
    let mut b_serving_since = None;
    let mut b_wrote = false;
    while cut.elapsed() < Duration::from_secs(60) {
        let read = a.client().get(&format!("/objects/counter/{r}/value"));
        if read.status == 200 {
            assert!(
                b_serving_since.is_none(),
                "a served a read after b began serving: {}",
                read.text()
            );
            last_served = Some(cut.elapsed());
        } else {
            assert_eq!(read.status, 503, "{}", read.text());
            stale_reason_seen |= read.text().contains("lease is not fresh");
        }
        match increment(&a, &w) {
            Ok(value) => {
                assert!(
                    b_serving_since.is_none(),
                    "a acknowledged {value} after b took over"
                );
                acknowledged_by_a.push(value);
            }
            Err(status) => assert_eq!(status, 503),
        }
        if b_serving_since.is_none()
            && b.metric_sum("stead_cluster_partitions_served") == f64::from(PARTITIONS)
        {
            b_serving_since = Some(cut.elapsed());
        }
        if b_serving_since.is_some() && !b_wrote {
            // The new owner writes: a stale read from a would now show an older value.
            assert_eq!(increment(&b, &r), Ok(2));
            b_wrote = true;
        }
        if let Some(since) = b_serving_since {
            if cut.elapsed() > since + Duration::from_secs(2) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let b_since = b_serving_since.expect("b took a's partitions within 60 s of the cut");
    let last = last_served.unwrap_or_default();
    assert!(stale_reason_seen, "a never said its lease is not fresh");
    // a stops within its lease (less the margin) and before b serves.
    assert!(
        last < Duration::from_millis(LEASE_MS),
        "a served {last:?} after the cut"
    );
    assert!(last < b_since, "a served at {last:?}, b from {b_since:?}");
    eprintln!("{TEST}: a served until {last:?} after the cut, b from {b_since:?}");

    // Nothing a acknowledged is lost, and b's values come after all of them.
    let max_a = acknowledged_by_a.iter().copied().max().unwrap_or(0);
    let mut distinct = acknowledged_by_a.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        acknowledged_by_a.len(),
        "{acknowledged_by_a:?}"
    );
    let next = increment(&b, &w).expect("b acknowledged");
    assert!(next > max_a, "b acknowledged {next}, a up to {max_a}");

    // Healed: a joins again (its key had expired), gets b's upper half and serves it.
    net.set(&to_nats, true);
    let healed = std::time::Instant::now();
    assert!(served(&[(&a, half), (&b, half)]), "a did not rejoin");
    eprintln!(
        "{TEST}: a served its share again {:?} after the link healed",
        healed.elapsed()
    );
    assert_eq!(a.client().get("/healthz").text(), "ok");
    assert_eq!(a.metric_sum("stead_cluster_deposed"), 0.0);
    // r and w stayed with b; what a serves now it rebuilt from the stream.
    assert_eq!(value(&b, &r), 2);
    assert_eq!(increment(&b, &w), Ok(next + 1));
    let u = name_in("counter", "u", upper_half);
    assert_eq!(
        increment(&b, &u),
        Err(503),
        "b forwarded to a node with no address"
    );
    assert_eq!(increment(&a, &u), Ok(1));
    assert_eq!(increment(&a, &u), Ok(2));
    // b stops: a gets every partition, with b's writes.
    assert_eq!(b.stop(), Some(0));
    assert!(served(&[(&a, PARTITIONS)]), "a did not take b's half");
    assert_eq!(value(&a, &w), next + 1);
    assert_eq!(value(&a, &u), 2);
    assert_eq!(a.stop(), Some(0));
}

/// Checks the statuses of a load sent through a node that forwards to one that dies: 200;
/// 503 (the request never reached the owner, or the partition was changing owner); 502 or
/// 504 (a forwarded request the dying node may have applied); and, for the lock, 403 (a
/// release after the lock's lease ended).
fn check_forwarded_statuses(
    counters: &[common::load::CounterLog],
    locks: &[common::load::LockLog],
) {
    common::load::check_statuses(
        counters.iter().map(|log| &log.statuses),
        &[200, 502, 503, 504],
    );
    common::load::check_statuses(
        locks.iter().map(|log| &log.statuses),
        &[200, 403, 502, 503, 504],
    );
}

/// The longest time without any acknowledgement, over every counter writer, from `since`
/// to the last one: how long service stopped.
fn longest_gap(logs: &[common::load::CounterLog], since: std::time::Instant) -> Duration {
    let mut times: Vec<std::time::Instant> = logs
        .iter()
        .flat_map(|log| log.acked.iter().map(|(_, at)| *at))
        .filter(|at| *at > since)
        .collect();
    times.sort_unstable();
    let mut previous = since;
    let mut longest = Duration::ZERO;
    for at in times {
        longest = longest.max(at - previous);
        previous = at;
    }
    longest
}

/// Counter writers and lock users keep working while one of two nodes is killed (SIGKILL)
/// and the other takes its partitions: every acknowledged increment is there afterwards, no
/// value was acknowledged twice, no two clients held the lock at once, and service resumes
/// within the lease and the takeover.
#[test]
fn under_load_a_killed_node_loses_nothing_and_the_lock_stays_exclusive() {
    let Some((_, dir, nats)) =
        one_nats("under_load_a_killed_node_loses_nothing_and_the_lock_stays_exclusive")
    else {
        return;
    };
    let a = start_node(dir.path(), "a", &nats.url());
    let target = common::load::Target::default();
    target.set(Some(a.addr));
    let load = common::load::Load::start(&target, 3, 3, "L");
    // b joins under load: a hands it half the partitions.
    let b = start_node(dir.path(), "b", &nats.url());
    let half = PARTITIONS / 2;
    assert!(served(&[(&a, half), (&b, half)]), "not spread");
    std::thread::sleep(Duration::from_secs(2));
    let killed = std::time::Instant::now();
    a.kill();
    target.set(Some(b.addr));
    assert!(served(&[(&b, PARTITIONS)]), "b did not take a's half");
    let serving = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let (counters, locks) = load.stop();
    let outage = longest_gap(&counters, killed);
    eprintln!(
        "killed node: b served everything {:?} after the kill; no acknowledgement for {outage:?}",
        serving - killed
    );
    assert!(
        outage < Duration::from_millis(LEASE_MS) + Duration::from_secs(10),
        "no acknowledgement for {outage:?} after the kill"
    );
    common::load::check_counters(&counters, |name| value(&b, name));
    let holdings = common::load::check_lock(&locks);
    let after_kill = locks
        .iter()
        .flat_map(|log| &log.holdings)
        .filter(|holding| holding.from > serving)
        .count();
    assert!(after_kill > 0, "nobody held the lock after the takeover");
    // A lock user's release after the lock's lease ended answers 403; a partition changing
    // owner answers 503 (on either node, the request forwarded or not).
    common::load::check_statuses(counters.iter().map(|log| &log.statuses), &[200, 503]);
    common::load::check_statuses(locks.iter().map(|log| &log.statuses), &[200, 403, 503]);
    eprintln!("killed node: {holdings} lock holdings, {after_kill} after the takeover");
    assert_eq!(b.stop(), Some(0));
}

/// Clients that only ever talk to one node: their requests for the other node's partitions
/// are forwarded to it; when it is killed they get errors, never an acknowledgement of a write
/// that is lost; once their node took its partitions it answers them itself. Every
/// acknowledged increment is there, none was acknowledged twice, and the lock (one of the
/// killed node's) stays exclusive throughout.
#[test]
fn clients_of_one_node_lose_nothing_when_the_other_dies() {
    let Some((_, dir, nats)) = one_nats("clients_of_one_node_lose_nothing_when_the_other_dies")
    else {
        return;
    };
    let a = start_node(dir.path(), "a", &nats.url());
    let b = start_node(dir.path(), "b", &nats.url());
    let half = PARTITIONS / 2;
    assert!(served(&[(&a, half), (&b, half)]), "not spread");
    let lock = name_in("lock", "S", |partition| !upper_half(partition));
    let target = common::load::Target::default();
    target.set(Some(b.addr));
    let load = common::load::Load::start(&target, 3, 3, &lock);
    std::thread::sleep(Duration::from_secs(3));
    assert!(b.metric_sum("stead_cluster_forwarded_total") > 10.0);
    let killed = std::time::Instant::now();
    a.kill();
    assert!(served(&[(&b, PARTITIONS)]), "b did not take a's half");
    let serving_since = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let (counters, locks) = load.stop();
    let outage = longest_gap(&counters, killed);
    eprintln!(
        "clients of one node: it served everything {:?} after the other's kill; \
         no acknowledgement for {outage:?}",
        serving_since - killed
    );
    common::load::check_counters(&counters, |name| value(&b, name));
    common::load::check_lock(&locks);
    let after = locks
        .iter()
        .flat_map(|log| &log.holdings)
        .filter(|holding| holding.from > serving_since)
        .count();
    assert!(after > 0, "nobody held the lock after the takeover");
    check_forwarded_statuses(&counters, &locks);
    assert_eq!(b.stop(), Some(0));
}

/// Three nodes on three NATS servers (replicas 3) each own about a third of the partitions;
/// under load one node is killed and the other two split its partitions between them, then
/// it comes back (its disk lost) and gets a third again. Every acknowledged increment is there,
/// none twice, and the lock stays exclusive throughout.
#[test]
fn three_nodes_share_the_partitions_and_two_take_a_killed_ones() {
    let Some(binary) = nats::binary("three_nodes_share_the_partitions_and_two_take_a_killed_ones")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = NatsServer::cluster(&binary, dir.path());
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let start = |node: &str| {
        let config = dir.path().join(format!("{node}.toml"));
        std::fs::write(
            &config,
            format!(
                "[storage]\npartitions = {PARTITIONS}\n\n[cluster]\nnats = {urls:?}\n\
                 node_id = \"{node}\"\nreplicas = 3\nack_timeout_ms = 5000\nlease_ms = {LEASE_MS}\n"
            ),
        )
        .expect("config");
        let config = config.to_string_lossy().into_owned();
        serving(TestServer::start(
            &dir.path().join(node),
            2,
            &["--config", &config],
        ))
    };
    let shares = |nodes: &[&TestServer]| {
        nodes
            .iter()
            .map(|node| node.metric_sum("stead_cluster_partitions_served") as u32)
            .collect::<Vec<u32>>()
    };
    // Each node within one partition of the others, and every partition served once.
    let spread = |nodes: &[&TestServer]| {
        common::wait_until(SERVING_TIMEOUT, || {
            let shares = shares(nodes);
            let (low, high) = (shares.iter().min(), shares.iter().max());
            shares.iter().sum::<u32>() == PARTITIONS
                && low.zip(high).is_some_and(|(low, high)| high - low <= 1)
        })
    };
    let a = start("a");
    let b = start("b");
    let c = start("c");
    assert!(
        spread(&[&a, &b, &c]),
        "not spread: {:?}",
        shares(&[&a, &b, &c])
    );
    let target = common::load::Target::default();
    target.set(Some(c.addr));
    let load = common::load::Load::start(&target, 4, 3, "T");
    std::thread::sleep(Duration::from_secs(3));
    let killed = std::time::Instant::now();
    a.kill();
    assert!(
        spread(&[&b, &c]),
        "a's partitions not taken: {:?}",
        shares(&[&b, &c])
    );
    let taken = killed.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    // a comes back without its disk: it rebuilds its new third from the stream.
    std::fs::remove_dir_all(dir.path().join("a")).expect("remove a's data");
    let a = start("a");
    assert!(
        spread(&[&a, &b, &c]),
        "not spread again: {:?}",
        shares(&[&a, &b, &c])
    );
    std::thread::sleep(Duration::from_secs(2));
    let (counters, locks) = load.stop();
    eprintln!(
        "three nodes: a killed, b and c served its partitions {taken:?} after; shares now {:?}",
        shares(&[&a, &b, &c])
    );
    common::load::check_counters(&counters, |name| value(&a, name));
    let holdings = common::load::check_lock(&locks);
    assert!(holdings > 0, "nobody held the lock");
    check_forwarded_statuses(&counters, &locks);
    for node in [a, b, c] {
        assert_eq!(node.stop(), Some(0));
    }
}

/// Nodes restarted in turn (SIGTERM, as a rolling restart does) under load: each new node
/// gets half the partitions, and the node that stops gives its node key up, so the other
/// takes its half without waiting for the key to expire; no acknowledged write is lost, and
/// the only error any client gets is 503.
#[test]
fn a_rolling_restart_under_load_loses_nothing_and_answers_only_503s() {
    let Some((_, dir, nats)) =
        one_nats("a_rolling_restart_under_load_loses_nothing_and_answers_only_503s")
    else {
        return;
    };
    let target = common::load::Target::default();
    let first = start_node(dir.path(), "a", &nats.url());
    target.set(Some(first.addr));
    let load = common::load::Load::start(&target, 3, 2, "R");
    let mut serving = first;
    let mut gaps = Vec::new();
    let began = std::time::Instant::now();
    let half = PARTITIONS / 2;
    for next in ["b", "a", "b"] {
        let node = start_node(dir.path(), next, &nats.url());
        assert!(served(&[(&serving, half), (&node, half)]), "not spread");
        std::thread::sleep(Duration::from_secs(1));
        let stopped = std::time::Instant::now();
        assert_eq!(serving.stop(), Some(0));
        assert!(
            served(&[(&node, PARTITIONS)]),
            "{next} did not take the other half"
        );
        gaps.push(stopped.elapsed());
        target.set(Some(node.addr));
        serving = node;
    }
    std::thread::sleep(Duration::from_secs(1));
    let (counters, locks) = load.stop();
    let outage = longest_gap(&counters, began);
    eprintln!(
        "rolling restart: from SIGTERM to the other node serving everything: {gaps:?}; \
         no acknowledgement for {outage:?} at most"
    );
    // Without giving the key up the other node waits up to the whole lease after the last
    // renewal.
    for gap in &gaps {
        assert!(*gap < Duration::from_millis(LEASE_MS), "{gaps:?}");
    }
    common::load::check_counters(&counters, |name| value(&serving, name));
    common::load::check_lock(&locks);
    common::load::check_statuses(counters.iter().map(|log| &log.statuses), &[200, 503]);
    common::load::check_statuses(locks.iter().map(|log| &log.statuses), &[200, 403, 503]);
    assert_eq!(serving.stop(), Some(0));
}

/// With snapshots every 20 batches of a partition, the partitions written to are kept as
/// snapshots and their subjects purged: the stream holds far fewer messages than were
/// written, and a node started again (its store rebuilt from the snapshots and what came
/// after them) has every acknowledged write, alarms included, also for a counter written by
/// several clients at once while its snapshots were taken.
#[test]
fn snapshots_keep_the_log_short_and_a_restart_loses_nothing() {
    let Some((_, dir, nats)) = one_nats("snapshots_keep_the_log_short_and_a_restart_loses_nothing")
    else {
        return;
    };
    let config = dir.path().join("snap.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npartitions = {PARTITIONS}\n\n[cluster]\nnats = [\"{}\"]\n\
             node_id = \"a\"\nreplicas = 1\nack_timeout_ms = 2000\nlease_ms = {LEASE_MS}\n\
             snapshot_batches = 20\n",
            nats.url()
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    let start = || {
        serving(TestServer::start(
            &dir.path().join("a"),
            2,
            &["--config", &config],
        ))
    };
    let node = start();
    // An object larger than one batch may be (17.6 MB; a batch may hold 16 MiB), written in
    // batches of 440 KB: its snapshot is split into batches a start can commit.
    let sql = |node: &TestServer, body: &str| {
        let reply =
            node.client()
                .request_with("POST", "/objects/sql/big/exec", &[], body.as_bytes());
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.text()
    };
    sql(
        &node,
        r#"{"query":"CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"}"#,
    );
    for _ in 0..40 {
        sql(
            &node,
            r#"{"query":"INSERT INTO t (v) SELECT hex(randomblob(2200)) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) SELECT i FROM n)"}"#,
        );
    }
    let count = r#"{"query":"SELECT count(*), sum(length(v)) FROM t"}"#;
    let before = sql(&node, count);
    assert!(before.contains("[[4000,17600000]]"), "{before}");
    // Its partition's 41 batches make two snapshots, the second of all 17.6 MB.
    let two = common::wait_until(Duration::from_secs(20), || {
        node.metric_sum("stead_cluster_snapshots_total") >= 2.0
    });
    assert!(two, "{}", node.metric_sum("stead_cluster_snapshots_total"));
    let names: Vec<String> = (0..10).map(|n| format!("s{n}")).collect();
    for round in 1..=30 {
        for name in &names {
            assert_eq!(increment(&node, name), Ok(round), "{name}");
        }
    }
    // One counter written by four clients at once: appends group batches while one is in
    // flight, and a snapshot cuts them at its ticket.
    let addr = node.addr;
    let writers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let (status, _) = common::load::try_get(
                        addr,
                        "/objects/counter/hot/increment",
                        Duration::from_secs(10),
                    )
                    .expect("an answer");
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("a writer");
    }
    let lock = node
        .client()
        .get("/objects/lock/snaplock/acquire?clientId=c1&timeoutMs=600000");
    assert_eq!(lock.status, 200, "{}", lock.text());
    for round in 31..=60 {
        assert_eq!(increment(&node, "s0"), Ok(round));
    }
    let kept = common::wait_until(Duration::from_secs(10), || {
        node.metric_sum("stead_cluster_snapshots_total") >= 11.0
    });
    assert!(
        kept,
        "{} snapshots",
        node.metric_sum("stead_cluster_snapshots_total")
    );
    // 300 + 400 + 31 + 42 appends at most (one per batch) and a takeover record per partition.
    let written = 300 + 400 + 31 + 42 + u64::from(PARTITIONS);
    let messages = nats.stream_messages("STEAD_LOG");
    assert!(
        messages < written / 2,
        "{messages} messages in the stream after {written} were written"
    );
    node.kill();
    let node = start();
    assert_eq!(value(&node, "s0"), 60);
    for name in &names[1..] {
        assert_eq!(value(&node, name), 30, "{name}");
    }
    assert_eq!(value(&node, "hot"), 400);
    assert_eq!(sql(&node, count), before);
    let status = node.client().get("/objects/lock/snaplock/status");
    assert_eq!(
        status.text(),
        r#"{"locked":true,"holder":"c1","waiting":0}"#
    );
    // And once more, after writes on top of the snapshots.
    assert_eq!(increment(&node, "s1"), Ok(31));
    assert_eq!(node.stop(), Some(0));
    let node = start();
    assert_eq!(value(&node, "s1"), 31);
    assert_eq!(value(&node, "hot"), 400);
    assert_eq!(node.stop(), Some(0));
}
