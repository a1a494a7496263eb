//! A counter spread over shard objects: the coordinator `sharded/{name}` owns four `shard`
//! objects, made with unique ids on its first use, sends each increment to the next shard in
//! turn, and sums the shards on read. It shows stubs (`ObjectContext::object_by_id`), unique ids
//! (`new_unique_id`) and typed calls (`ObjectStub::call`); shards live on whichever core their
//! id hashes to, so a read fans out over every core.
//!
//! Run it with `cargo run --release --example sharded_counter` (`STEAD_CORES`, default every
//! core; `STEAD_LISTEN`; the built-in classes are there too), then:
//!
//! ```text
//! curl -X POST http://127.0.0.1:8092/objects/sharded/visits/increment
//! curl http://127.0.0.1:8092/objects/sharded/visits/value
//! curl http://127.0.0.1:8092/objects/sharded/visits/shards
//! ```

use serde::{Deserialize, Serialize};
use stead::{Config, DurableObject, ObjectContext, ObjectError, ObjectId, Request, Response};

/// Shards per coordinator.
const SHARDS: usize = 4;
/// The key under which the coordinator keeps its shards' ids (hex, comma-separated).
const SHARDS_KEY: &[u8] = b"shards";
/// The key of the next shard to increment, and of a shard's count.
const NEXT_KEY: &[u8] = b"next";
const COUNT_KEY: &[u8] = b"count";

/// What a shard is asked to add, and what it answers.
#[derive(Serialize, Deserialize)]
struct Add {
    by: i64,
}

#[derive(Serialize, Deserialize)]
struct Count {
    count: i64,
}

/// One shard: a count.
struct Shard {
    context: ObjectContext,
}

impl Shard {
    fn count(&self) -> i64 {
        self.context
            .storage()
            .get(COUNT_KEY)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse().ok())
            .unwrap_or(0)
    }
}

impl DurableObject for Shard {
    fn new(context: ObjectContext) -> Shard {
        Shard { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let count = match request.path.as_str() {
            "/add" => {
                let add: Add = serde_json::from_slice(&request.body)?;
                let count = self.count() + add.by;
                self.context.storage().put(COUNT_KEY, count.to_string())?;
                count
            }
            "/get" => self.count(),
            _ => return Ok(Response::not_found()),
        };
        Ok(Response::new(200, serde_json::to_vec(&Count { count })?))
    }
}

/// The coordinator: spreads increments over its shards, sums them on read.
struct Sharded {
    context: ObjectContext,
}

impl Sharded {
    /// The shards' ids, made (and stored) on the first call.
    fn shards(&self) -> Result<Vec<ObjectId>, ObjectError> {
        let storage = self.context.storage();
        if let Some(stored) = storage.get(SHARDS_KEY) {
            let text = String::from_utf8_lossy(&stored).into_owned();
            return text
                .split(',')
                .map(|hex| {
                    ObjectId::from_string("shard", hex)
                        .map_err(|error| ObjectError::new(format!("a stored shard id: {error}")))
                })
                .collect();
        }
        let mut shards = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            shards.push(self.context.new_unique_id("shard")?);
        }
        let joined: Vec<String> = shards.iter().map(ObjectId::to_string).collect();
        storage.put(SHARDS_KEY, joined.join(","))?;
        Ok(shards)
    }

    /// Every shard's count, in order.
    async fn counts(&self) -> Result<Vec<i64>, ObjectError> {
        let mut counts = Vec::with_capacity(SHARDS);
        for id in self.shards()? {
            let stub = self.context.object_by_id("shard", id)?;
            let count: Count = stub.call("/get", &()).await?;
            counts.push(count.count);
        }
        Ok(counts)
    }
}

impl DurableObject for Sharded {
    fn new(context: ObjectContext) -> Sharded {
        Sharded { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        match request.path.as_str() {
            "/increment" => {
                let shards = self.shards()?;
                let storage = self.context.storage();
                let next = storage
                    .get(NEXT_KEY)
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .and_then(|text| text.parse::<usize>().ok())
                    .unwrap_or(0)
                    % SHARDS;
                storage.put(NEXT_KEY, ((next + 1) % SHARDS).to_string())?;
                let stub = self.context.object_by_id("shard", shards[next])?;
                let count: Count = stub.call("/add", &Add { by: 1 }).await?;
                Ok(Response::text(
                    200,
                    format!("shard {next}: {}", count.count),
                ))
            }
            "/value" => {
                let total: i64 = self.counts().await?.iter().sum();
                Ok(Response::text(200, total.to_string()))
            }
            "/shards" => {
                let counts: Vec<String> = self.counts().await?.iter().map(i64::to_string).collect();
                Ok(Response::text(200, counts.join(",")))
            }
            _ => Ok(Response::not_found()),
        }
    }
}

fn main() {
    let listen = std::env::var("STEAD_LISTEN").unwrap_or_else(|_| "127.0.0.1:8092".into());
    let Ok(listen) = listen.parse() else {
        eprintln!("sharded_counter example: STEAD_LISTEN={listen:?} is not an address");
        std::process::exit(2);
    };
    let cores = std::env::var("STEAD_CORES")
        .ok()
        .and_then(|cores| cores.parse().ok())
        .unwrap_or(0);
    let config = Config {
        listen,
        cores,
        data_dir: "./sharded-data".into(),
        ..Config::default()
    };
    // The built-ins too, so that a benchmark can set a plain counter beside the sharded one.
    let server = stead::Server::builder()
        .config(config)
        .builtins()
        .class::<Sharded>("sharded")
        .class::<Shard>("shard")
        .build();
    let announce = |running: &stead::RunningServer| {
        println!(
            "sharded_counter example: listening on {}",
            running.local_addr()
        );
    };
    let result = server
        .start()
        .and_then(|running| stead::server::wait_for_signal(running, announce));
    if let Err(error) = result {
        eprintln!("sharded_counter example: {error}");
        std::process::exit(1);
    }
}
