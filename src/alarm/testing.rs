//! Test support: a host with a running alarm scheduler on a real store inside a glommio
//! executor, for the scheduler's tests and the built-in classes' tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use stead_storage::{Store, StoreConfig};

use super::{AlarmScheduler, SchedulerConfig};
use crate::config::Config;
use crate::http::{Method, Request, Response};
use crate::object::{store_limits, ClassRegistry, ObjectHost};
use crate::shutdown::Shutdown;

/// What a test gets: the host, its scheduler and the shutdown signal they share.
pub(crate) struct Harness {
    pub(crate) host: Rc<ObjectHost>,
    pub(crate) alarms: Rc<AlarmScheduler>,
    pub(crate) shutdown: Rc<Shutdown>,
}

/// Runs `test` on a fresh executor with a host on the store in `dir`, the classes `register`
/// adds, and a scheduler started with `scheduler`. Shuts the host down afterwards.
pub(crate) fn with_harness<F, Fut>(
    dir: &Path,
    register: fn(&mut ClassRegistry),
    scheduler: SchedulerConfig,
    test: F,
) where
    F: FnOnce(Harness) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    with_harness_config(dir, register, scheduler, Config::default(), test);
}

/// [`with_harness`] with a server configuration other than the default.
pub(crate) fn with_harness_config<F, Fut>(
    dir: &Path,
    register: fn(&mut ClassRegistry),
    scheduler: SchedulerConfig,
    config: Config,
    test: F,
) where
    F: FnOnce(Harness) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let path: PathBuf = dir.to_path_buf();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .ring_depth(64)
        .spawn(move || async move {
            let mut store_config = StoreConfig::new(path);
            store_config.limits = store_limits(&config);
            let store = Store::open(store_config).await.expect("open store");
            let mut registry = ClassRegistry::new();
            register(&mut registry);
            let host = ObjectHost::new(store, Arc::new(registry), Rc::new(config));
            let shutdown = Rc::new(Shutdown::new());
            let alarms = AlarmScheduler::start_with(host.clone(), shutdown.clone(), scheduler);
            test(Harness {
                host: host.clone(),
                alarms,
                shutdown: shutdown.clone(),
            })
            .await;
            shutdown.request();
            host.shutdown().await;
        })
        .expect("executor");
    handle.join().expect("test executor");
}

/// Waits until `condition` holds, checking every few milliseconds; false if `timeout` passes
/// first.
pub(crate) async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

pub(crate) fn request(method: Method, path: &str, body: &str) -> Request {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
        upgrade: None,
    }
}

pub(crate) fn get(path: &str) -> Request {
    request(Method::Get, path, "")
}

pub(crate) fn body(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

pub(crate) fn json(response: &Response) -> serde_json::Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", body(response)))
}
