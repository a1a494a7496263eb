//! Point-in-time recovery through the object API (`current_bookmark`, `bookmark_for_time`,
//! `restore_on_next_activation`), on the real object host and a store on disk: a model test
//! that restores random objects to random bookmarks and compares each with the state the model
//! recorded there, across compaction and restarts; restores by time; a restore larger than
//! one batch; and the window's refusals.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use stead::object::{ClassRegistry, ObjectHost};
use stead::{
    Config, DurableObject, Method, ObjectContext, ObjectError, ObjectId, Request, Response,
};
use stead_storage::Store;

/// Runs the commands of each request's body, one per line, and answers with one line per
/// command that answers something:
///
/// - `put K V`, `del K`, `alarm MS`, `noalarm`, `row N`, `unrow N`, `blobs N`: writes
///   (`blobs` inserts N rows of 4 KiB)
/// - `bookmark`: the current bookmark (of the writes committed before this event);
///   `at MS`: the bookmark for that time
/// - `restore B`: asks for a restore at the next activation
/// - `state`: the key-value entries, the alarm and the rows, as one line
struct Model {
    context: ObjectContext,
}

impl DurableObject for Model {
    fn new(context: ObjectContext) -> Model {
        Model { context }
    }

    async fn init(&self) -> Result<(), ObjectError> {
        let sql = self.context.storage().sql();
        sql.exec("CREATE TABLE IF NOT EXISTS t (n INTEGER, pad BLOB)", &[])?;
        Ok(())
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let storage = self.context.storage();
        let sql = storage.sql();
        let mut out = Vec::new();
        let body = String::from_utf8_lossy(&request.body).into_owned();
        for line in body.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            let number = |index: usize| -> i64 {
                words
                    .get(index)
                    .and_then(|word| word.parse().ok())
                    .unwrap_or(0)
            };
            match words[0] {
                "put" => storage.put(words[1].as_bytes(), words[2])?,
                "del" => {
                    storage.delete(words[1].as_bytes())?;
                }
                "alarm" => storage.set_alarm(number(1))?,
                "noalarm" => storage.delete_alarm()?,
                "row" => {
                    sql.exec("INSERT INTO t (n) VALUES (?)", &[number(1).into()])?;
                }
                "unrow" => {
                    sql.exec("DELETE FROM t WHERE n = ?", &[number(1).into()])?;
                }
                "blobs" => {
                    sql.exec(
                        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) \
                         INSERT INTO t (n, pad) SELECT 1000000 + i, randomblob(4000) FROM c",
                        &[number(1).into()],
                    )?;
                }
                "bookmark" => out.push(storage.current_bookmark()?),
                "at" => out.push(storage.bookmark_for_time(number(1))?),
                "restore" => storage.restore_on_next_activation(words[1])?,
                "state" => {
                    let entries: Vec<String> = storage
                        .list(&Default::default())
                        .into_iter()
                        .map(|(key, value)| {
                            format!(
                                "{}={}",
                                String::from_utf8_lossy(&key),
                                String::from_utf8_lossy(&value)
                            )
                        })
                        .collect();
                    let rows: Vec<String> = sql
                        .exec("SELECT n, length(pad) FROM t ORDER BY n", &[])?
                        .raw()
                        .iter()
                        .map(|row| format!("{:?}", row))
                        .collect();
                    out.push(format!(
                        "{};alarm={:?};rows={}",
                        entries.join(","),
                        storage.get_alarm(),
                        rows.join(",")
                    ));
                }
                other => return Err(ObjectError::with_status(400, format!("no command {other}"))),
            }
        }
        Ok(Response::text(200, out.join("\n")))
    }
}

fn request(body: &str) -> Request {
    Request {
        method: Method::Post,
        path: "/".to_string(),
        query: String::new(),
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
        upgrade: None,
    }
}

/// A deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// What the model knows of one object: the state text after each bookmark it took.
#[derive(Default)]
struct Known {
    /// (bookmark, state there), oldest first.
    points: Vec<(String, String)>,
    /// Key-value entries, alarm and rows now, as the object should report them.
    entries: BTreeMap<String, String>,
    alarm: Option<i64>,
    rows: Vec<i64>,
}

impl Known {
    fn state(&self) -> String {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|n| format!("[Integer({n}), Null]"))
            .collect();
        format!(
            "{};alarm={:?};rows={}",
            entries.join(","),
            self.alarm,
            rows.join(",")
        )
    }
}

const CLASS: &str = "model";
const DAY_MS: i64 = 24 * 3600 * 1000;

fn config(retention_ms: u64) -> Config {
    let mut config = Config::default();
    let settings = stead::config::ClassSettings {
        history_retention_ms: Some(retention_ms),
        ..Default::default()
    };
    config.classes.insert(CLASS.to_string(), settings);
    config
}

async fn open_host(path: &Path, config: &Config) -> Rc<ObjectHost> {
    // The server's own store settings: its limits, and the history's keys counted apart.
    let store_config = stead::layout::store_config(config, path.to_path_buf());
    let store = Store::open(store_config).await.expect("open");
    let mut registry = ClassRegistry::new();
    registry.register::<Model>(CLASS).expect("register");
    ObjectHost::new(store, Arc::new(registry), Rc::new(config.clone()))
}

async fn send(host: &Rc<ObjectHost>, id: ObjectId, body: &str) -> (u16, String) {
    let response = host.dispatch(CLASS, id, request(body)).await;
    (
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    )
}

async fn ok(host: &Rc<ObjectHost>, id: ObjectId, body: &str) -> String {
    let (status, text) = send(host, id, body).await;
    assert_eq!(status, 200, "{body:?}: {text}");
    text
}

fn run(
    body: impl FnOnce(std::path::PathBuf) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
        + Send
        + 'static,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .ring_depth(128)
        .spawn(move || body(path))
        .expect("executor")
        .join()
        .expect("test body");
}

#[test]
fn random_objects_restored_to_random_bookmarks_match_the_model() {
    run(|path| {
        Box::pin(async move {
            let config = config(3_600_000);
            let mut host = open_host(&path, &config).await;
            let ids: Vec<ObjectId> = (0..6)
                .map(|n| ObjectId::from_name(CLASS, &format!("o{n}")))
                .collect();
            let mut known: Vec<Known> = (0..ids.len()).map(|_| Known::default()).collect();
            let mut rng = Rng(0x5eed_1234_abcd_0001);
            let mut restores = 0;
            for step in 0..400 {
                let which = rng.below(ids.len() as u64) as usize;
                let (id, model) = (ids[which], &mut known[which]);
                if rng.below(6) == 0 && !model.points.is_empty() {
                    // Back to a random earlier point: the next event finds that state.
                    let index = rng.below(model.points.len() as u64) as usize;
                    let (bookmark, state) = model.points[index].clone();
                    ok(&host, id, &format!("restore {bookmark}")).await;
                    let now = ok(&host, id, "state").await;
                    assert_eq!(now, state, "step {step}: object {which} at point {index}");
                    restores += 1;
                    // Take the model back too (from the state text is not possible: replay
                    // from the object, which the comparison just proved equal).
                    let text = ok(&host, id, "state\nbookmark").await;
                    let mut lines = text.lines();
                    let state_line = lines.next().unwrap_or_default().to_string();
                    *model = reparse(&state_line, std::mem::take(&mut model.points));
                    let bookmark = lines.next().unwrap_or_default().to_string();
                    model.points.push((bookmark, state_line));
                } else {
                    let mut commands = Vec::new();
                    for _ in 0..1 + rng.below(4) {
                        let key = format!("k{}", rng.below(8));
                        match rng.below(7) {
                            0 | 1 => {
                                let value = format!("v{}", rng.below(1000));
                                model.entries.insert(key.clone(), value.clone());
                                commands.push(format!("put {key} {value}"));
                            }
                            2 => {
                                model.entries.remove(&key);
                                commands.push(format!("del {key}"));
                            }
                            3 => {
                                let at = 2_000_000_000_000 + DAY_MS + rng.below(1000) as i64;
                                model.alarm = Some(at);
                                commands.push(format!("alarm {at}"));
                            }
                            4 => {
                                model.alarm = None;
                                commands.push("noalarm".to_string());
                            }
                            5 => {
                                let n = rng.below(50) as i64;
                                model.rows.push(n);
                                model.rows.sort_unstable();
                                commands.push(format!("row {n}"));
                            }
                            _ => {
                                let n = rng.below(50) as i64;
                                model.rows.retain(|row| *row != n);
                                commands.push(format!("unrow {n}"));
                            }
                        }
                    }
                    ok(&host, id, &commands.join("\n")).await;
                    // The event's writes are committed once it ends: the next one's bookmark
                    // has them.
                    let bookmark = ok(&host, id, "bookmark").await;
                    if let Some((last, _)) = model.points.last() {
                        assert!(*last <= bookmark, "bookmarks order: {last} then {bookmark}");
                    }
                    model.points.push((bookmark, model.state()));
                }
                if step == 150 {
                    host.store().compact().await.expect("compact");
                }
                if step == 250 {
                    host.shutdown().await;
                    drop(host);
                    host = open_host(&path, &config).await;
                }
            }
            assert!(restores > 30, "{restores} restores");
            // Every object, at every point it kept, after a last compaction and restart.
            host.store().compact().await.expect("compact");
            host.shutdown().await;
            drop(host);
            let host = open_host(&path, &config).await;
            for (which, model) in known.iter().enumerate() {
                let id = ids[which];
                for (bookmark, state) in model.points.iter().rev().take(5) {
                    ok(&host, id, &format!("restore {bookmark}")).await;
                    assert_eq!(&ok(&host, id, "state").await, state, "object {which}");
                }
            }
            host.shutdown().await;
        })
    });
}

/// The model of an object rebuilt from its `state` line (after a restore).
fn reparse(line: &str, points: Vec<(String, String)>) -> Known {
    let mut known = Known {
        points,
        ..Known::default()
    };
    let mut parts = line.split(';');
    for pair in parts
        .next()
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        if let Some((key, value)) = pair.split_once('=') {
            known.entries.insert(key.to_string(), value.to_string());
        }
    }
    let alarm = parts
        .next()
        .unwrap_or_default()
        .trim_start_matches("alarm=");
    known.alarm = alarm
        .strip_prefix("Some(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|ms| ms.parse().ok());
    let rows = parts.next().unwrap_or_default().trim_start_matches("rows=");
    known.rows = rows
        .split("[Integer(")
        .filter_map(|part| part.split(')').next())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(
        known.state(),
        line,
        "the model reads back the state it wrote"
    );
    known
}

#[test]
fn a_bookmark_for_a_time_restores_the_state_then() {
    run(|path| {
        Box::pin(async move {
            let config = config(3_600_000);
            let host = open_host(&path, &config).await;
            let id = ObjectId::from_name(CLASS, "timed");
            let mut points = Vec::new();
            for n in 0..5 {
                ok(&host, id, &format!("put k {n}\nrow {n}")).await;
                glommio::timer::sleep(Duration::from_millis(3)).await;
                let time = stead::object::now_ms();
                points.push((time, ok(&host, id, "state").await));
                glommio::timer::sleep(Duration::from_millis(3)).await;
            }
            for (time, state) in points.iter().rev() {
                let bookmark = ok(&host, id, &format!("at {time}")).await;
                ok(&host, id, &format!("restore {bookmark}")).await;
                assert_eq!(&ok(&host, id, "state").await, state, "at {time}");
            }
            // A time in the future is refused.
            let future = stead::object::now_ms() + 60_000;
            let (status, text) = send(&host, id, &format!("at {future}")).await;
            assert_eq!(status, 400, "{text}");
            assert!(text.contains("future"), "{text}");
            host.shutdown().await;
        })
    });
}

#[test]
fn a_restore_larger_than_one_batch_is_carried_out_whole_and_can_be_undone() {
    run(|path| {
        Box::pin(async move {
            let config = config(3_600_000);
            let host = open_host(&path, &config).await;
            let id = ObjectId::from_name(CLASS, "large");
            ok(&host, id, "put a 1").await;
            let before = ok(&host, id, "bookmark").await;
            let empty_state = ok(&host, id, "state").await;
            // About 6 MB of SQL pages: the restore back goes out in more than one batch.
            ok(&host, id, "blobs 1500").await;
            let full = ok(&host, id, "bookmark").await;
            let full_state = ok(&host, id, "state").await;
            let commits = host.store().stats().commits_total;
            ok(&host, id, &format!("restore {before}")).await;
            assert_eq!(ok(&host, id, "state").await, empty_state);
            let restore_commits = host.store().stats().commits_total - commits;
            assert!(
                restore_commits >= 3,
                "the request, then at least two restore batches: {restore_commits}"
            );
            ok(&host, id, &format!("restore {full}")).await;
            assert_eq!(ok(&host, id, "state").await, full_state);
            host.shutdown().await;
        })
    });
}

#[test]
fn points_past_the_window_are_refused_and_their_records_trimmed() {
    run(|path| {
        Box::pin(async move {
            let config = config(300);
            let host = open_host(&path, &config).await;
            let id = ObjectId::from_name(CLASS, "short");
            ok(&host, id, "put k 1").await;
            let old = ok(&host, id, "bookmark").await;
            let old_time = stead::object::now_ms();
            ok(&host, id, "put k 2").await;
            let records_before = host.store().stats().prefix_keys;
            assert!(records_before > 0, "the writes kept records");
            glommio::timer::sleep(Duration::from_millis(400)).await;
            ok(&host, id, "put k 3").await;
            let recent = ok(&host, id, "bookmark").await;
            let (status, text) = send(&host, id, &format!("restore {old}")).await;
            assert_eq!(status, 400, "{text}");
            assert!(text.contains("older than the history kept"), "{text}");
            let (status, text) = send(&host, id, &format!("at {old_time}")).await;
            assert_eq!(status, 400, "{text}");
            assert!(text.contains("older than the history kept"), "{text}");
            assert!(
                host.store().stats().prefix_keys < records_before,
                "the write after the window trimmed the older records"
            );
            // Malformed and unknown bookmarks are refused too; the recent one works.
            ok(&host, ObjectId::from_name(CLASS, "other"), "put k 1").await;
            let elsewhere = ok(&host, ObjectId::from_name(CLASS, "other"), "bookmark").await;
            let (status, text) = send(&host, id, &format!("restore {elsewhere}")).await;
            assert_eq!(status, 400, "{text}");
            assert!(text.contains("not of this object's history"), "{text}");
            for bad in ["nope", &"0".repeat(48)] {
                let (status, text) = send(&host, id, &format!("restore {bad}")).await;
                assert_eq!(status, 400, "{bad}: {text}");
            }
            ok(&host, id, "put k 4").await;
            ok(&host, id, &format!("restore {recent}")).await;
            assert!(ok(&host, id, "state").await.starts_with("k=3;"));
            host.shutdown().await;
        })
    });
}

#[test]
fn a_class_without_a_window_gives_no_bookmarks_and_keeps_no_records() {
    run(|path| {
        Box::pin(async move {
            let config = config(0);
            let host = open_host(&path, &config).await;
            let id = ObjectId::from_name(CLASS, "plain");
            ok(&host, id, "put k 1\nrow 1").await;
            assert_eq!(host.store().stats().prefix_keys, 0);
            let (status, text) = send(&host, id, "bookmark").await;
            assert_eq!(status, 400, "{text}");
            assert!(text.contains("keeps no history"), "{text}");
            assert_eq!(host.store().stats().prefix_keys, 0);
            host.shutdown().await;
        })
    });
}
