//! The host against a real store on a temp dir, inside glommio executors.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::yield_now;
use glommio::{LocalExecutorBuilder, Placement};
use stead_storage::{ListOptions, Store, StoreConfig};

use super::*;
use crate::config::Config;
use crate::http::Method;
use crate::id::ObjectId;
use crate::objects::Counter;
use crate::wake::Broadcast;

/// Test class: `/wait` parks until `/release`; `/put/{key}` stores the body; `/get/{key}`;
/// `/fail-after-put` writes then fails; `/many` writes 200 keys across two polls;
/// `/alarm/{ms}` sets the alarm, whose handler stores `fired`.
struct Probe {
    context: ObjectContext,
}

thread_local! {
    /// Per object: fired by `/release` (or by the test), awaited by `/wait` (a future that is
    /// not storage). Each test runs on its own executor thread.
    static SIGNALS: RefCell<HashMap<ObjectId, Rc<Broadcast>>> = RefCell::new(HashMap::new());
}

fn signal_of(id: ObjectId) -> Rc<Broadcast> {
    SIGNALS.with(|signals| signals.borrow_mut().entry(id).or_default().clone())
}

impl DurableObject for Probe {
    fn new(context: ObjectContext) -> Probe {
        Probe { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let storage = self.context.storage();
        let path = request.path.as_str();
        if path == "/wait" {
            let signal = signal_of(self.context.id());
            signal.wait().await;
            storage.put(b"waited", "yes")?;
            return Ok(Response::text(200, "released"));
        }
        if path == "/release" {
            signal_of(self.context.id()).set();
            return Ok(Response::text(200, "ok"));
        }
        if let Some(key) = path.strip_prefix("/put/") {
            storage.put(key.as_bytes(), request.body)?;
            return Ok(Response::text(200, "stored"));
        }
        if let Some(key) = path.strip_prefix("/get/") {
            return Ok(match storage.get(key.as_bytes()) {
                Some(value) => Response::new(200, value),
                None => Response::not_found(),
            });
        }
        if path == "/fail-after-put" {
            storage.put(b"partial", "kept")?;
            return Err(ObjectError::new("failed on purpose"));
        }
        if path == "/many" {
            for index in 0..200u32 {
                if index == 100 {
                    yield_now().await;
                }
                storage.put(&index.to_be_bytes(), "x")?;
            }
            return Ok(Response::text(200, "many"));
        }
        if let Some(ms) = path.strip_prefix("/alarm/") {
            let ms = ms
                .parse::<i64>()
                .map_err(|error| ObjectError::new(error.to_string()))?;
            storage.set_alarm(ms)?;
            return Ok(Response::text(200, "set"));
        }
        Ok(Response::not_found())
    }

    async fn alarm(&self, alarm: AlarmInfo) -> Result<(), ObjectError> {
        self.context
            .storage()
            .put(b"fired", alarm.scheduled_ms.to_string())?;
        Ok(())
    }
}

thread_local! {
    /// The paths `Slow` objects started handling, in order.
    static STARTED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Set while a `Slow` object's `init` waits for its signal.
    static INIT_WAITING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Run by a `Slow` object's `init` as its last step.
    static AT_INIT_END: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Test class whose `init` waits for the object's signal; `fetch` records its path.
struct Slow {
    context: ObjectContext,
}

impl DurableObject for Slow {
    fn new(context: ObjectContext) -> Slow {
        Slow { context }
    }
    async fn init(&self) -> Result<(), ObjectError> {
        INIT_WAITING.with(|waiting| waiting.set(true));
        signal_of(self.context.id()).wait().await;
        INIT_WAITING.with(|waiting| waiting.set(false));
        if let Some(last_step) = AT_INIT_END.with(|hook| hook.borrow_mut().take()) {
            last_step();
        }
        Ok(())
    }
    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        STARTED.with(|started| started.borrow_mut().push(request.path.clone()));
        Ok(Response::text(200, "ok"))
    }
}

/// Test class whose `init` always fails.
struct Broken;

impl DurableObject for Broken {
    fn new(_context: ObjectContext) -> Broken {
        Broken
    }
    async fn init(&self) -> Result<(), ObjectError> {
        Err(ObjectError::new("init refuses"))
    }
    async fn fetch(&self, _request: Request) -> Result<Response, ObjectError> {
        Ok(Response::text(200, "unreachable"))
    }
}

fn request(method: Method, path: &str, body: &str) -> Request {
    Request {
        method,
        path: path.to_string(),
        query: String::new(),
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
        upgrade: None,
    }
}

fn get(path: &str) -> Request {
    request(Method::Get, path, "")
}

fn body(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

/// Runs `test` with a fresh host on a fresh store inside a glommio executor.
fn with_host<F, Fut>(config: Config, test: F)
where
    F: FnOnce(Rc<ObjectHost>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .ring_depth(64)
        .spawn(move || async move {
            let mut store_config = StoreConfig::new(path);
            store_config.limits = store_limits(&config);
            let store = Store::open(store_config).await.expect("open store");
            let mut registry = ClassRegistry::new();
            registry.register::<Counter>("counter").expect("register");
            registry.register::<Probe>("probe").expect("register");
            registry.register::<Broken>("broken").expect("register");
            registry.register::<Slow>("slow").expect("register");
            let host = ObjectHost::new(store, Arc::new(registry), Rc::new(config));
            test(host.clone()).await;
            host.shutdown().await;
        })
        .expect("executor");
    handle.join().expect("test executor");
}

fn counter(name: &str) -> ObjectId {
    ObjectId::from_name("counter", name)
}

#[test]
fn writes_are_read_by_later_events_and_durable_before_the_response() {
    with_host(Config::default(), |host| async move {
        let id = counter("a");
        for expected in 1..=3 {
            let response = host.dispatch("counter", id, get("/increment")).await;
            assert_eq!(
                (response.status, body(&response)),
                (200, expected.to_string())
            );
            let stats = host.store().stats();
            assert_eq!(stats.commits_total, expected);
            assert!(
                stats.fdatasyncs_total >= expected,
                "answered before fdatasync: {stats:?}"
            );
        }
        let response = host.dispatch("counter", id, get("/value")).await;
        assert_eq!(body(&response), "3");
        assert_eq!(
            host.store().stats().commits_total,
            3,
            "a read commits nothing"
        );
    });
}

#[test]
fn concurrent_increments_of_one_object_share_fdatasyncs() {
    with_host(Config::default(), |host| async move {
        let id = counter("hot");
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let host = host.clone();
                glommio::spawn_local(async move {
                    host.dispatch("counter", id, get("/increment")).await
                })
            })
            .collect();
        let mut values = Vec::new();
        for task in tasks {
            let response = task.await;
            assert_eq!(response.status, 200);
            values.push(body(&response).parse::<i64>().expect("integer"));
        }
        values.sort_unstable();
        assert_eq!(values, (1..=200).collect::<Vec<_>>());
        assert_eq!(
            body(&host.dispatch("counter", id, get("/value")).await),
            "200"
        );
        let stats = host.store().stats();
        assert_eq!(stats.commits_total, 200);
        assert!(stats.fdatasyncs_total < 100, "no group commit: {stats:?}");
        assert_eq!(host.stats().activations_total, 1);
    });
}

#[test]
fn a_waiting_handler_lets_the_next_event_in() {
    with_host(Config::default(), |host| async move {
        let id = ObjectId::from_name("probe", "lock");
        let waiter = {
            let host = host.clone();
            glommio::spawn_local(async move { host.dispatch("probe", id, get("/wait")).await })
        };
        let released = glommio::timer::timeout(Duration::from_secs(10), async {
            let release = host.dispatch("probe", id, get("/release")).await;
            assert_eq!(release.status, 200);
            Ok(waiter.await)
        })
        .await
        .expect("the second event was blocked behind the first");
        assert_eq!(body(&released), "released");
        assert_eq!(
            body(&host.dispatch("probe", id, get("/get/waited")).await),
            "yes"
        );
    });
}

#[test]
fn events_start_in_admission_order_even_as_the_activation_ends() {
    with_host(Config::default(), |host| async move {
        let id = ObjectId::from_name("slow", "ordered");
        let spawn = |path: &'static str| {
            let host = host.clone();
            glommio::spawn_local(async move { host.dispatch("slow", id, get(path)).await })
        };
        // The first event starts the activation and waits for it; so do the others.
        let first = spawn("/first");
        let gone = spawn("/gone");
        let second = spawn("/second");
        let fourth = spawn("/fourth");
        while !INIT_WAITING.with(|waiting| waiting.get()) {
            yield_now().await;
        }
        // One waiting event goes away (its client left): its turn is skipped, not waited for.
        drop(gone);
        // A third event is spawned as the activation ends: it first runs once the object is
        // ready, while those that waited are only just woken. It must not overtake them.
        let third = Rc::new(RefCell::new(None));
        {
            let (host, third) = (host.clone(), third.clone());
            AT_INIT_END.with(|hook| {
                *hook.borrow_mut() = Some(Box::new(move || {
                    let task = glommio::spawn_local(async move {
                        host.dispatch("slow", id, get("/third")).await
                    });
                    *third.borrow_mut() = Some(task);
                }))
            });
        }
        signal_of(id).set();
        // A turn that is never given back would hang the events behind it: bound the wait.
        glommio::timer::timeout(Duration::from_secs(10), async {
            for task in [first, second, fourth] {
                assert_eq!(task.await.status, 200);
            }
            let third = third.borrow_mut().take().expect("spawned by init");
            assert_eq!(third.await.status, 200);
            Ok(())
        })
        .await
        .expect("an event waited for a turn that never came");
        let started = STARTED.with(|started| started.borrow().clone());
        assert_eq!(started, ["/first", "/second", "/fourth", "/third"]);
    });
}

#[test]
fn events_past_the_queue_bound_get_503() {
    let mut config = Config::default();
    config.objects.object_events_queued_max = 2;
    with_host(config, |host| async move {
        let id = ObjectId::from_name("probe", "busy");
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let host = host.clone();
                glommio::spawn_local(async move { host.dispatch("probe", id, get("/wait")).await })
            })
            .collect();
        while host.events_queued() < 2 {
            yield_now().await;
        }
        let refused = host.dispatch("probe", id, get("/release")).await;
        assert_eq!(refused.status, 503);
        assert!(refused
            .headers
            .contains(&("Retry-After".to_string(), "1".to_string())));
        let json: serde_json::Value = serde_json::from_slice(&refused.body).expect("json");
        assert_eq!(
            json,
            serde_json::json!({ "error": "overloaded", "retryable": true })
        );
        assert_eq!(host.stats().overload_rejections_total, 1);
        // Another object is not affected.
        let other = ObjectId::from_name("probe", "idle");
        assert_eq!(
            host.dispatch("probe", other, get("/get/x")).await.status,
            404
        );
        signal_of(id).set();
        for waiter in waiters {
            assert_eq!(waiter.await.status, 200);
        }
    });
}

#[test]
fn evicted_objects_reactivate_with_their_data_and_busy_ones_stay() {
    let mut config = Config::default();
    config.objects.idle_evict_ms = 0;
    with_host(config, |host| async move {
        let id = counter("evicted");
        assert_eq!(
            body(&host.dispatch("counter", id, get("/increment")).await),
            "1"
        );
        assert_eq!(host.evict_idle(Instant::now()), 1);
        assert_eq!(host.active_objects(), 0);
        assert_eq!(
            body(&host.dispatch("counter", id, get("/increment")).await),
            "2"
        );
        assert_eq!(host.stats().activations_total, 2);

        let busy = ObjectId::from_name("probe", "busy");
        let waiter = {
            let host = host.clone();
            glommio::spawn_local(async move { host.dispatch("probe", busy, get("/wait")).await })
        };
        while host.events_queued() < 1 {
            yield_now().await;
        }
        assert_eq!(
            host.evict_idle(Instant::now() + Duration::from_secs(3600)),
            1,
            "only the idle counter"
        );
        assert_eq!(host.active_objects(), 1);
        signal_of(busy).set();
        assert_eq!(waiter.await.status, 200);
        assert_eq!(host.stats().evictions_total, 2);
    });
}

#[test]
fn the_background_sweep_evicts_idle_objects() {
    let mut config = Config::default();
    config.objects.idle_evict_ms = 20;
    with_host(config, |host| async move {
        host.start_background();
        host.dispatch("counter", counter("swept"), get("/increment"))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while host.active_objects() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(host.active_objects(), 0);
        assert_eq!(
            body(
                &host
                    .dispatch("counter", counter("swept"), get("/value"))
                    .await
            ),
            "1"
        );
    });
}

#[test]
fn refused_writes_change_nothing_and_handler_errors_keep_earlier_writes() {
    with_host(Config::default(), |host| async move {
        let id = ObjectId::from_name("probe", "limits");
        let large = "x".repeat(Config::default().storage.value_bytes_max + 1);
        let response = host
            .dispatch("probe", id, request(Method::Put, "/put/big", &large))
            .await;
        // The client's value is too large: its error, not the server's.
        assert_eq!(response.status, 413);
        assert!(
            body(&response).contains("value_bytes_max"),
            "{}",
            body(&response)
        );
        assert_eq!(
            host.dispatch("probe", id, get("/get/big")).await.status,
            404
        );

        let response = host.dispatch("probe", id, get("/fail-after-put")).await;
        assert_eq!(response.status, 500);
        let json: serde_json::Value = serde_json::from_slice(&response.body).expect("json");
        assert_eq!(json, serde_json::json!({ "error": "failed on purpose" }));
        assert_eq!(
            host.evict_idle(Instant::now() + Duration::from_secs(3600)),
            1
        );
        assert_eq!(
            body(&host.dispatch("probe", id, get("/get/partial")).await),
            "kept"
        );
    });
}

#[test]
fn each_suspension_point_starts_a_new_batch() {
    with_host(Config::default(), |host| async move {
        let id = ObjectId::from_name("probe", "many");
        let before = host.store().stats().commits_total;
        let response = host.dispatch("probe", id, get("/many")).await;
        assert_eq!(response.status, 200, "{}", body(&response));
        assert_eq!(host.store().stats().commits_total - before, 2);
        assert_eq!(host.store().stats().keys, 200);
    });
}

#[test]
fn concurrent_first_events_share_one_activation_and_failures_leave_nothing() {
    with_host(Config::default(), |host| async move {
        let id = counter("shared");
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let host = host.clone();
                glommio::spawn_local(
                    async move { host.dispatch("counter", id, get("/value")).await },
                )
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.status, 200);
        }
        assert_eq!(host.stats().activations_total, 1);

        let broken = ObjectId::from_name("broken", "b");
        let response = host.dispatch("broken", broken, get("/")).await;
        assert_eq!(response.status, 500);
        assert!(
            body(&response).contains("init refuses"),
            "{}",
            body(&response)
        );
        assert_eq!(host.active_objects(), 1, "the failed object is gone");
        assert_eq!(host.stats().activation_failures_total, 1);
        assert_eq!(host.events_queued(), 0);
    });
}

#[test]
fn alarms_run_as_events_and_clear_themselves() {
    with_host(Config::default(), |host| async move {
        let changes = Rc::new(RefCell::new(Vec::new()));
        let seen = changes.clone();
        host.set_alarm_listener(Rc::new(move |id, change| {
            seen.borrow_mut().push((id, change))
        }));
        let id = ObjectId::from_name("probe", "alarm");
        assert_eq!(
            host.dispatch("probe", id, get("/alarm/1234")).await.status,
            200
        );
        assert_eq!(host.store().alarm(&id.0), Some(1234));
        assert_eq!(host.registry().class_of(&id), Some("probe"));
        let info = AlarmInfo {
            scheduled_ms: 1234,
            retry_count: 0,
        };
        host.deliver_alarm("probe", id, info).await.expect("alarm");
        assert_eq!(
            body(&host.dispatch("probe", id, get("/get/fired")).await),
            "1234"
        );
        assert_eq!(host.store().alarm(&id.0), None);
        assert_eq!(*changes.borrow(), vec![(id, Some(1234)), (id, None)]);
    });
}

#[test]
fn shutdown_waits_for_events_then_refuses_new_ones() {
    with_host(Config::default(), |host| async move {
        let id = ObjectId::from_name("probe", "closing");
        let waiter = {
            let host = host.clone();
            glommio::spawn_local(async move { host.dispatch("probe", id, get("/wait")).await })
        };
        while host.events_queued() < 1 {
            yield_now().await;
        }
        let closer = {
            let host = host.clone();
            glommio::spawn_local(async move { host.shutdown().await })
        };
        yield_now().await;
        assert_eq!(
            host.dispatch("counter", counter("late"), get("/value"))
                .await
                .status,
            503
        );
        signal_of(id).set();
        assert_eq!(waiter.await.status, 200);
        closer.await;
        assert_eq!(host.active_objects(), 0);
    });
}

#[test]
fn storage_lists_like_the_store_and_checks_limits_per_batch() {
    let storage = Storage::new(
        stead_storage::Limits::default(),
        crate::config::SqlSettings::default(),
        0,
    );
    for key in ["a", "ab", "abc", "b", "ba", "c"] {
        storage.put(key.as_bytes(), key).expect("put");
    }
    let keys = |options: ListOptions| -> Vec<String> {
        let list = storage.list(&options);
        list.into_iter()
            .map(|(key, _)| String::from_utf8_lossy(&key).into_owned())
            .collect()
    };
    let prefix = |text: &str| Some(text.as_bytes().to_vec());
    assert_eq!(
        keys(ListOptions {
            prefix: prefix("a"),
            ..Default::default()
        }),
        ["a", "ab", "abc"]
    );
    assert_eq!(
        keys(ListOptions {
            prefix: prefix("a"),
            reverse: true,
            limit: Some(2),
            ..Default::default()
        }),
        ["abc", "ab"]
    );
    assert_eq!(
        keys(ListOptions {
            start: prefix("ab"),
            start_after: prefix("ab"),
            end: prefix("ba"),
            ..Default::default()
        }),
        ["abc", "b"]
    );
    assert!(keys(ListOptions {
        start: prefix("c"),
        end: prefix("a"),
        ..Default::default()
    })
    .is_empty());
    assert!(keys(ListOptions {
        start_after: prefix("b"),
        end: prefix("b"),
        ..Default::default()
    })
    .is_empty());
    assert_eq!(storage.delete(b"zz"), Ok(false));
    assert_eq!(storage.delete(b"c"), Ok(true));
    assert_eq!(
        storage.get_many(&[b"a".as_slice(), b"c"]),
        [Some(b"a".to_vec()), None]
    );

    let (batch, _) = storage.take_pending().expect("writes");
    assert_eq!(batch.len(), 6, "the put and delete of c coalesce");
    for index in 0..128u32 {
        storage
            .put(&index.to_be_bytes(), "v")
            .expect("within the batch limit");
        storage
            .put(&index.to_be_bytes(), "w")
            .expect("a rewrite adds no key");
    }
    let refused = storage.put(b"one more", "v");
    assert!(
        matches!(
            refused,
            Err(StorageError::BatchTooManyKeys { keys: 129, .. })
        ),
        "{refused:?}"
    );
    assert_eq!(storage.get(b"one more"), None);
    storage.delete_all().expect("delete all");
    assert!(storage.is_empty());
    let (batch, _) = storage.take_pending().expect("writes");
    assert_eq!(batch.len(), 1);
}

/// The name of an object reached by name rides with its first batch (and again after a
/// delete-all of the whole object), under a key the key-value API neither shows nor takes.
#[test]
fn the_name_is_stored_once_and_hidden_from_the_key_value_api() {
    use stead_storage::Op;
    let name_put = |batch: &stead_storage::Batch| {
        batch.ops().iter().any(|op| {
            matches!(op, Op::Put { key, value } if key.as_slice() == storage::NAME_KEY && value.as_slice() == b"room-1")
        })
    };
    let storage = Storage::new(stead_storage::Limits::default(), Default::default(), 0);
    storage.note_name("room-1");
    storage.put(b"k", b"v".to_vec()).expect("put");
    let (batch, _) = storage.take_pending().expect("a batch");
    assert!(name_put(&batch), "{batch:?}");
    storage.note_name("room-1");
    storage.put(b"k", b"w".to_vec()).expect("put");
    let (batch, _) = storage.take_pending().expect("a batch");
    assert!(!name_put(&batch), "stored once: {batch:?}");
    storage.delete_all().expect("delete all");
    storage.put(b"k", b"x".to_vec()).expect("put");
    let (batch, _) = storage.take_pending().expect("a batch");
    assert!(
        name_put(&batch),
        "stored again after a delete-all: {batch:?}"
    );
    assert_eq!(
        storage.put(storage::NAME_KEY, b"x".to_vec()),
        Err(StorageError::ReservedKey {
            key_bytes: storage::NAME_KEY.len()
        })
    );
    // Loaded with its name: not written again, and not listed.
    let loaded = Storage::new(stead_storage::Limits::default(), Default::default(), 0);
    let mut entries = std::collections::BTreeMap::new();
    entries.insert(storage::NAME_KEY.to_vec(), b"room-1".to_vec());
    entries.insert(b"k".to_vec(), b"v".to_vec());
    loaded
        .load(stead_storage::ObjectData {
            entries,
            alarm_ms: None,
        })
        .expect("load");
    assert_eq!(
        loaded.list(&ListOptions::default()),
        vec![(b"k".to_vec(), b"v".to_vec())]
    );
    loaded.note_name("room-1");
    loaded.put(b"k", b"w".to_vec()).expect("put");
    let (batch, _) = loaded.take_pending().expect("a batch");
    assert!(!name_put(&batch), "{batch:?}");
}
