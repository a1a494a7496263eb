//! Calls between objects (`ObjectContext::object`, `ObjectStub::fetch` and `call`): an
//! embedded server on two cores with a class of its own, driven over real sockets. Calls to an
//! object on the same core and on the other; A → B → A does not deadlock; a cycle stops at
//! `call_depth_max` with 508; a failing callee's status reaches the caller; typed calls; unique
//! ids.

mod common;

use std::time::Duration;

use common::Client;
use serde::{Deserialize, Serialize};
use stead::{
    Config, DurableObject, Method, ObjectContext, ObjectError, ObjectId, Request, Response,
    RunningServer,
};

const CLASS: &str = "relay";

struct Relay {
    context: ObjectContext,
}

#[derive(Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Serialize, Deserialize)]
struct Sum {
    sum: i64,
}

fn get(path: &str, query: String) -> Request {
    Request {
        method: Method::Get,
        path: path.to_string(),
        query,
        headers: Vec::new(),
        body: Vec::new(),
        upgrade: None,
    }
}

impl Relay {
    fn param(request: &Request, name: &str) -> String {
        request.query_param(name).unwrap_or_default()
    }

    /// Calls `path?query` on the relay `peer` and answers with its status and body.
    async fn relay(&self, peer: &str, path: &str, query: String) -> Result<Response, ObjectError> {
        let stub = self.context.object(CLASS, peer)?;
        let answer = stub.fetch(get(path, query)).await?;
        Ok(answer)
    }

    fn count(&self) -> Result<i64, ObjectError> {
        let storage = self.context.storage();
        let n = storage
            .get(b"n")
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse::<i64>().ok())
            .unwrap_or(0)
            + 1;
        storage.put(b"n", n.to_string())?;
        Ok(n)
    }
}

impl DurableObject for Relay {
    fn new(context: ObjectContext) -> Relay {
        Relay { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let me = Self::param(&request, "me");
        let peer = Self::param(&request, "peer");
        match request.path.as_str() {
            "/count" => Ok(Response::text(200, self.count()?.to_string())),
            "/value" => {
                let n = self.context.storage().get(b"n").unwrap_or_default();
                Ok(Response::text(
                    200,
                    String::from_utf8_lossy(&n).into_owned(),
                ))
            }
            // Writes, then calls: the answer also waits for this object's own write.
            "/forward" => {
                self.count()?;
                let answer = self.relay(&peer, "/count", String::new()).await?;
                let body = String::from_utf8_lossy(&answer.body).into_owned();
                Ok(Response::text(answer.status, format!("forwarded:{body}")))
            }
            // A → B → A: B's call back to A runs while A's event awaits B.
            "/ping" => {
                self.count()?;
                let answer = self.relay(&peer, "/pong", format!("peer={me}")).await?;
                Ok(Response::new(answer.status, answer.body))
            }
            "/pong" => {
                let answer = self.relay(&peer, "/value", String::new()).await?;
                let body = String::from_utf8_lossy(&answer.body).into_owned();
                Ok(Response::text(answer.status, format!("pong:{body}")))
            }
            // A → B → A → B …: stops at call_depth_max.
            "/loop" => {
                let query = format!("me={peer}&peer={me}");
                let answer = self.relay(&peer, "/loop", query).await?;
                Ok(Response::new(answer.status, answer.body))
            }
            "/fail" => Err(ObjectError::with_status(418, "the callee refuses")),
            "/call-fail" => {
                let answer = self.relay(&peer, "/fail", String::new()).await?;
                Ok(Response::new(answer.status, answer.body))
            }
            "/add" => {
                let add: Add = serde_json::from_slice(&request.body)?;
                let sum = Sum { sum: add.a + add.b };
                Ok(Response::new(200, serde_json::to_vec(&sum)?))
            }
            "/typed" => {
                let stub = self.context.object(CLASS, &peer)?;
                let sum: Sum = stub.call("/add", &Add { a: 20, b: 22 }).await?;
                Ok(Response::text(200, sum.sum.to_string()))
            }
            // Calls to itself one after another: each returns to this event's own depth.
            "/self-many" => {
                for _ in 0..(2 * 16) {
                    let answer = self.relay(&me, "/value", String::new()).await?;
                    if answer.status != 200 {
                        return Ok(answer);
                    }
                }
                Ok(Response::text(200, "all answered"))
            }
            "/wrong-class" => {
                let other = ObjectId::from_name("other", "x");
                let refused = self.context.object_by_id(CLASS, other).err();
                Ok(Response::text(200, format!("{refused:?}")))
            }
            "/unique" => {
                let id = self.context.new_unique_id(CLASS)?;
                let stub = self.context.object_by_id(CLASS, id)?;
                stub.fetch(get("/count", String::new())).await?;
                let answer = stub.fetch(get("/count", String::new())).await?;
                Ok(Response::new(answer.status, answer.body))
            }
            _ => Ok(Response::not_found()),
        }
    }
}

/// A class whose `init` calls another object: refused, so no activation waits for itself.
struct Eager {
    context: ObjectContext,
}

impl DurableObject for Eager {
    fn new(context: ObjectContext) -> Eager {
        Eager { context }
    }

    async fn init(&self) -> Result<(), ObjectError> {
        let stub = self.context.object(CLASS, "anyone")?;
        stub.fetch(get("/value", String::new())).await?;
        Ok(())
    }

    async fn fetch(&self, _request: Request) -> Result<Response, ObjectError> {
        Ok(Response::text(200, "activated"))
    }
}

fn start(dir: &std::path::Path) -> RunningServer {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.to_path_buf(),
        cores: 2,
        ..Config::default()
    };
    stead::Server::builder()
        .config(config)
        .class::<Relay>(CLASS)
        .class::<Relay>("other")
        .class::<Eager>("eager")
        .build()
        .start()
        .expect("start the server")
}

/// Two names whose objects live on the same core (`same`) or on different ones.
fn names(same: bool) -> (String, String) {
    let core = |name: &str| ObjectId::from_name(CLASS, name).core(4096, 2);
    let first = format!("a-{same}");
    let second = (0..1000)
        .map(|n| format!("b{n}-{same}"))
        .find(|name| (core(name) == core(&first)) == same)
        .expect("a name on the wanted core");
    (first, second)
}

fn ask(client: &mut Client, path: &str) -> (u16, String) {
    let reply = client.get(path);
    (reply.status, reply.text())
}

#[test]
fn objects_call_objects_on_their_own_and_on_the_other_core() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let mut client = Client::connect(server.local_addr());
    client
        .stream()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    for same in [true, false] {
        let (a, b) = names(same);
        let object = |name: &str| format!("/objects/{CLASS}/{name}");
        // A writes, then calls B; both writes are there afterwards.
        let forwarded = ask(&mut client, &format!("{}/forward?peer={b}", object(&a)));
        assert_eq!(
            forwarded,
            (200, "forwarded:1".to_string()),
            "same core: {same}"
        );
        let forwarded = ask(&mut client, &format!("{}/forward?peer={b}", object(&a)));
        assert_eq!(forwarded, (200, "forwarded:2".to_string()));
        assert_eq!(ask(&mut client, &format!("{}/value", object(&a))).1, "2");
        // A → B → A: B reads A's value while A's event waits for B.
        let pong = ask(&mut client, &format!("{}/ping?me={a}&peer={b}", object(&a)));
        assert_eq!(pong, (200, "pong:3".to_string()), "same core: {same}");
        // A cycle stops at the depth bound with 508, and says why.
        let (status, text) = ask(&mut client, &format!("{}/loop?me={a}&peer={b}", object(&a)));
        assert_eq!(status, 508, "{text}");
        assert!(text.contains("call_depth_max 16"), "{text}");
        // The callee's own status reaches the caller as a value.
        let failed = ask(&mut client, &format!("{}/call-fail?peer={b}", object(&a)));
        assert_eq!(failed.0, 418, "{failed:?}");
        assert!(failed.1.contains("the callee refuses"), "{failed:?}");
        // Typed calls, and objects reached by a unique id.
        let typed = ask(&mut client, &format!("{}/typed?peer={b}", object(&a)));
        assert_eq!(typed, (200, "42".to_string()));
        let unique = ask(&mut client, &format!("{}/unique", object(&a)));
        assert_eq!(unique, (200, "2".to_string()));
        // Many calls to itself in one event: none is refused as too deep.
        let many = ask(&mut client, &format!("{}/self-many?me={a}", object(&a)));
        assert_eq!(many, (200, "all answered".to_string()));
        let wrong = ask(&mut client, &format!("{}/wrong-class", object(&a)));
        assert!(wrong.1.contains("WrongClass"), "{wrong:?}");
    }
    // A call from init is refused: the activation fails with why, and nothing hangs.
    let (status, text) = ask(&mut client, "/objects/eager/e/hello");
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("from an event's handler"), "{text}");
    server.stop();
    server.wait().expect("clean shutdown");
}

/// The `sharded_counter` example: increments spread over four shards made with unique ids, the
/// sum read back through typed calls, the same after a restart.
#[test]
fn the_sharded_counter_example_spreads_increments_and_sums_them() {
    let working_dir = tempfile::tempdir().expect("temp dir");
    let example = std::path::Path::new(env!("CARGO_BIN_EXE_stead"))
        .parent()
        .expect("the binary's directory")
        .join("examples")
        .join("sharded_counter");
    assert!(example.exists(), "{} was not built", example.display());
    let start = || {
        let mut command = std::process::Command::new(&example);
        command
            .current_dir(working_dir.path())
            .env("STEAD_LISTEN", "127.0.0.1:0");
        common::TestServer::spawn(command, &working_dir.path().join("sharded-data"))
    };
    let server = start();
    let mut client = server.client();
    for _ in 0..10 {
        let reply = client.request("POST", "/objects/sharded/visits/increment", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(client.get("/objects/sharded/visits/value").text(), "10");
    assert_eq!(
        client.get("/objects/sharded/visits/shards").text(),
        "3,3,2,2"
    );
    assert_eq!(server.stop(), Some(0));
    let server = start();
    let mut client = server.client();
    assert_eq!(client.get("/objects/sharded/visits/value").text(), "10");
    client.request("POST", "/objects/sharded/visits/increment", b"");
    assert_eq!(
        client.get("/objects/sharded/visits/shards").text(),
        "3,3,3,2"
    );
    assert_eq!(server.stop(), Some(0));
}
