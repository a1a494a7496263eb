//! SQL writes through the real object host on the storage engine's simulated disk, with the
//! power cut at a random disk operation (inside a log write, a rotation, a compaction, a
//! recovery), each unsynced write dropped, kept or torn. After every cut the store reopens and
//! each object's database must be exactly its acknowledged statements, plus at most the one
//! statement that was in flight, and pass `PRAGMA integrity_check`.

use std::rc::Rc;
use std::sync::Arc;

use glommio::{LocalExecutorBuilder, Placement};
use serde_json::{json, Value};
use stead::object::{store_limits, ClassRegistry, ObjectHost};
use stead::objects::register_builtins;
use stead::{Config, Method, ObjectId, Request};
use stead_storage::sim::{CrashMode, SimDisk, SimRng};
use stead_storage::{Store, StoreConfig};

/// Seeds; each runs `EPOCHS` cuts.
const SEEDS: u64 = 200;
const EPOCHS: usize = 3;
/// Statements per epoch, at most (the cut usually ends the epoch earlier).
const STATEMENTS: usize = 60;
/// The cut falls within this many disk operations of the epoch's start.
const CRASH_WINDOW_OPS: u64 = 120;
const OBJECTS: usize = 3;

fn exec_request(query: &str, params: Value) -> Request {
    Request {
        method: Method::Post,
        path: "/exec".to_string(),
        query: String::new(),
        headers: Vec::new(),
        body: json!({ "query": query, "params": params })
            .to_string()
            .into_bytes(),
        upgrade: None,
    }
}

fn object(index: usize) -> ObjectId {
    ObjectId::from_name("sql", &format!("power{index}"))
}

/// Runs one statement; its answer's status and JSON body.
async fn exec(host: &Rc<ObjectHost>, index: usize, query: &str, params: Value) -> (u16, Value) {
    let response = host
        .dispatch("sql", object(index), exec_request(query, params))
        .await;
    let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, body)
}

fn store_config(rng: &mut SimRng) -> StoreConfig {
    let mut config = StoreConfig::new("/simulated");
    config.limits = store_limits(&Config::default());
    config.segment_bytes_max = [64 * 1024, 256 * 1024][rng.below(2) as usize];
    config.segment_prepare_bytes = [0, 64 * 1024][rng.below(2) as usize];
    config.inline_value_bytes_max = 64;
    config.compaction_automatic = rng.chance(50);
    config.compaction_dead_bytes_min = 64 * 1024;
    config.compaction_dead_percent_min = 25;
    config
}

/// Opens the store after a cut; a cut that fell inside recovery itself fails the first
/// attempt, and the second must succeed.
async fn reopen(sim: &SimDisk, config: &StoreConfig, case: &str) -> Store {
    let epoch = sim.epoch();
    let opened = Store::open_with_disk(config.clone(), sim.disk()).await;
    sim.cancel_crash();
    match opened {
        Ok(store) => return store,
        Err(_) if sim.epoch() != epoch => {}
        Err(error) => panic!("{case}: reopen failed: {error}"),
    }
    match Store::open_with_disk(config.clone(), sim.disk()).await {
        Ok(store) => store,
        Err(error) => panic!("{case}: second reopen failed: {error}"),
    }
}

fn host_on(store: Store) -> Rc<ObjectHost> {
    let mut registry = ClassRegistry::new();
    register_builtins(&mut registry).expect("register");
    ObjectHost::new(store, Arc::new(registry), Rc::new(Config::default()))
}

/// The rows of `t`, as the model or the recovered object holds them.
type Rows = Vec<(i64, String)>;

fn rows_of(body: &Value) -> Rows {
    body["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    let id = row[0].as_i64().unwrap_or(-1);
                    (id, row[1].as_str().unwrap_or("").to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A random statement over `t`, as SQL with params and as its effect on the model.
fn statement(rng: &mut SimRng, next_id: &mut i64) -> (String, Value) {
    match rng.below(5) {
        0 => {
            let low = rng.below(40) as i64;
            (
                "DELETE FROM t WHERE id BETWEEN ? AND ?".to_string(),
                json!([low, low + 3]),
            )
        }
        1 => (
            "UPDATE t SET v = ? WHERE id % 4 = ?".to_string(),
            json!(["u".repeat(rng.below(900) as usize), rng.below(4)]),
        ),
        _ => {
            *next_id += 1;
            (
                "INSERT INTO t (id, v) VALUES (?, ?)".to_string(),
                json!([*next_id, "i".repeat(rng.below(1500) as usize)]),
            )
        }
    }
}

/// Applies an acknowledged statement to the model.
fn apply(model: &rusqlite::Connection, (query, params): &(String, Value)) {
    let params: Vec<rusqlite::types::Value> = params
        .as_array()
        .map(|values| {
            values
                .iter()
                .map(|value| match value {
                    Value::Number(number) => {
                        rusqlite::types::Value::Integer(number.as_i64().unwrap_or(0))
                    }
                    Value::String(text) => rusqlite::types::Value::Text(text.clone()),
                    _ => rusqlite::types::Value::Null,
                })
                .collect()
        })
        .unwrap_or_default();
    model
        .execute(query, rusqlite::params_from_iter(params))
        .expect("the model runs what the object ran");
}

fn model_rows(model: &rusqlite::Connection) -> Rows {
    let mut select = model
        .prepare("SELECT id, v FROM t ORDER BY id")
        .expect("prepare");
    select
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn new_model() -> rusqlite::Connection {
    let model = rusqlite::Connection::open_in_memory().expect("model");
    model
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .expect("model schema");
    model
}

/// What the runs exercised, checked at the end so that the test cannot pass doing nothing.
#[derive(Debug, Default)]
struct Coverage {
    /// Statements acknowledged.
    acknowledged: u64,
    /// Statements the cut answered with an error.
    cut_in_flight: u64,
    /// Of those, statements found on disk after the cut.
    in_flight_recovered: u64,
    /// Epochs whose cut fell inside the workload (not after it).
    cuts_during_writes: u64,
}

async fn power_loss_case(seed: u64, coverage: &mut Coverage) {
    let sim = SimDisk::new(seed);
    let mut rng = SimRng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A1);
    let config = store_config(&mut rng);
    let mut host = host_on(reopen(&sim, &config, &format!("seed {seed} first open")).await);
    let models: Vec<rusqlite::Connection> = (0..OBJECTS).map(|_| new_model()).collect();
    for index in 0..OBJECTS {
        let (status, body) = exec(
            &host,
            index,
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
            json!([]),
        )
        .await;
        assert_eq!(status, 200, "seed {seed}: {body}");
    }
    let mut next_id = 0;
    for epoch in 0..EPOCHS {
        let case = format!("seed {seed} epoch {epoch}");
        let mode = match rng.below(3) {
            0 => CrashMode::DropUnsynced,
            1 => CrashMode::KeepUnsynced,
            _ => CrashMode::Random,
        };
        let before = sim.epoch();
        sim.crash_at(sim.ops_total() + 1 + rng.below(CRASH_WINDOW_OPS), mode);
        // The statement each object had in flight when the power went, if any.
        let mut in_flight: Vec<Option<(String, Value)>> = vec![None; OBJECTS];
        for _ in 0..STATEMENTS {
            if sim.epoch() != before {
                break;
            }
            let index = rng.below(OBJECTS as u64) as usize;
            let next = statement(&mut rng, &mut next_id);
            let (status, body) = exec(&host, index, &next.0, next.1.clone()).await;
            if status == 200 {
                coverage.acknowledged += 1;
                apply(&models[index], &next);
            } else {
                coverage.cut_in_flight += 1;
                assert!(
                    sim.epoch() != before,
                    "{case}: {status} {body} without a power cut"
                );
                in_flight[index] = Some(next);
            }
        }
        if sim.epoch() == before {
            sim.crash(mode);
        } else {
            coverage.cuts_during_writes += 1;
        }
        host.shutdown().await;
        drop(host);
        host = host_on(reopen(&sim, &config, &case).await);
        for index in 0..OBJECTS {
            let (status, body) =
                exec(&host, index, "SELECT id, v FROM t ORDER BY id", json!([])).await;
            assert_eq!(status, 200, "{case}: object {index}: {body}");
            let recovered = rows_of(&body);
            if recovered != model_rows(&models[index]) {
                // Only the statement in flight may have reached the disk.
                let statement = in_flight[index].take().unwrap_or_else(|| {
                    panic!("{case}: object {index} lost an acknowledged statement")
                });
                apply(&models[index], &statement);
                coverage.in_flight_recovered += 1;
                assert_eq!(
                    recovered,
                    model_rows(&models[index]),
                    "{case}: object {index} is neither before nor after its last statement"
                );
            }
            let (status, body) = exec(&host, index, "PRAGMA integrity_check", json!([])).await;
            assert_eq!(
                (status, body["rows"].clone()),
                (200, json!([["ok"]])),
                "{case}"
            );
        }
    }
    host.shutdown().await;
}

#[test]
fn power_loss_under_sql_writes_keeps_every_acknowledged_statement() {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .ring_depth(64)
        .spawn(|| async {
            let mut coverage = Coverage::default();
            for seed in 0..SEEDS {
                power_loss_case(seed, &mut coverage).await;
            }
            eprintln!("{coverage:?}");
            assert!(coverage.acknowledged > 1000, "{coverage:?}");
            assert!(coverage.cuts_during_writes > SEEDS, "{coverage:?}");
            assert!(coverage.in_flight_recovered > 0, "{coverage:?}");
        })
        .expect("executor starts")
        .join()
        .expect("test body completes");
}
