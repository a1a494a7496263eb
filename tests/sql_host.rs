//! A user class that writes key-value entries and SQL rows in one event, through the real object
//! host and store (library API, no HTTP): the writes are one batch (one commit), a handler that
//! fails after writing keeps its writes (the hosted rule), and an evicted object reloads both.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use stead::object::{store_limits, ClassRegistry, ObjectHost};
use stead::{
    Config, DurableObject, Method, ObjectContext, ObjectError, ObjectId, Request, Response,
};
use stead_storage::{Store, StoreConfig};

/// Writes `n` to the key `k{n}` and as a row of `t`, then answers, or fails on `/fail`.
struct Both {
    context: ObjectContext,
}

impl DurableObject for Both {
    fn new(context: ObjectContext) -> Both {
        Both { context }
    }

    async fn init(&self) -> Result<(), ObjectError> {
        let sql = self.context.storage().sql();
        sql.exec("CREATE TABLE IF NOT EXISTS t (n INTEGER)", &[])?;
        Ok(())
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let storage = self.context.storage();
        let n: i64 = request.query.parse().unwrap_or(0);
        match request.path.as_str() {
            "/write" | "/fail" => {
                storage.put(format!("k{n}").as_bytes(), n.to_string())?;
                storage
                    .sql()
                    .exec("INSERT INTO t (n) VALUES (?)", &[n.into()])?;
                if request.path == "/fail" {
                    return Err(ObjectError::new("failing after the writes"));
                }
                Ok(Response::text(200, "written"))
            }
            "/read" => {
                let rows = storage
                    .sql()
                    .exec("SELECT n FROM t ORDER BY n", &[])?
                    .raw()
                    .iter()
                    .filter_map(|row| row.first().and_then(|value| value.as_i64()))
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let keys = storage.len();
                Ok(Response::text(200, format!("{rows};{keys}")))
            }
            _ => Ok(Response::not_found()),
        }
    }
}

fn request(path: &str, n: i64) -> Request {
    Request {
        method: Method::Get,
        path: path.to_string(),
        query: n.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
        upgrade: None,
    }
}

fn text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

#[test]
fn key_value_and_sql_writes_of_an_event_commit_together_and_stay_after_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .ring_depth(64)
        .spawn(move || async move {
            let config = Config::default();
            let mut store_config = StoreConfig::new(path);
            store_config.limits = store_limits(&config);
            let store = Store::open(store_config).await.expect("open");
            let mut registry = ClassRegistry::new();
            registry.register::<Both>("both").expect("register");
            let host = ObjectHost::new(store, Arc::new(registry), Rc::new(config));
            let id = ObjectId::from_name("both", "one");
            assert_eq!(
                text(&host.dispatch("both", id, request("/read", 0)).await),
                ";0"
            );
            let commits = host.store().stats().commits_total;
            let written = host.dispatch("both", id, request("/write", 1)).await;
            assert_eq!(written.status, 200);
            assert_eq!(
                host.store().stats().commits_total,
                commits + 1,
                "one event, one batch: the key and the SQL pages together"
            );
            let failed = host.dispatch("both", id, request("/fail", 2)).await;
            assert_eq!(failed.status, 500);
            // Evicted, the object's pages leave memory; its next event reloads both kinds.
            assert_eq!(
                host.evict_idle(Instant::now() + Duration::from_secs(3600)),
                1
            );
            assert_eq!(host.active_objects(), 0);
            let read = host.dispatch("both", id, request("/read", 0)).await;
            assert_eq!(text(&read), "1,2;2", "the failed handler's writes stay");
            host.shutdown().await;
        })
        .expect("executor")
        .join()
        .expect("test body");
}
