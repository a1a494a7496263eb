//! A class with a SQL schema that changes between versions: migrations applied in `init`.
//!
//! Each migration runs once per object, in order, inside `transaction_sync` together with the
//! row in `_schema` that records it, so a crash mid-migration leaves the object at the previous
//! version and the next activation applies it again. Adding a version is appending to
//! `MIGRATIONS`; an object created by an older build is brought up to date on first use.
//!
//! Run it with `cargo run --release --example sql_migration`, then:
//!
//! ```text
//! curl -X POST --data 'buy milk' http://127.0.0.1:8091/objects/todo/home/items
//! curl http://127.0.0.1:8091/objects/todo/home/items
//! curl http://127.0.0.1:8091/objects/todo/home/version
//! ```

use stead::object::{SqlError, SqlValue};
use stead::{Config, DurableObject, Method, ObjectContext, ObjectError, Request, Response};

/// Version `n + 1` of the schema is `MIGRATIONS[n]`. Never edit one that shipped: append.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE items (id INTEGER PRIMARY KEY, text TEXT NOT NULL)",
    // Version 2: items get a creation time; existing rows get 0.
    "ALTER TABLE items ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX items_created_at ON items (created_at)",
];

struct Todo {
    /// The object's identity and storage.
    context: ObjectContext,
}

impl Todo {
    /// Applies the migrations this object has not had yet; returns its schema version.
    fn migrate(&self) -> Result<i64, SqlError> {
        let storage = self.context.storage();
        let sql = storage.sql();
        sql.exec(
            "CREATE TABLE IF NOT EXISTS _schema (version INTEGER PRIMARY KEY)",
            &[],
        )?;
        let current = sql
            .exec("SELECT coalesce(max(version), 0) AS v FROM _schema", &[])?
            .one()?
            .get_i64("v")?;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = index as i64 + 1;
            storage.transaction_sync(|| {
                sql.exec(migration, &[])?;
                sql.exec(
                    "INSERT INTO _schema (version) VALUES (?)",
                    &[version.into()],
                )
            })?;
        }
        Ok(MIGRATIONS.len() as i64)
    }
}

impl DurableObject for Todo {
    fn new(context: ObjectContext) -> Todo {
        Todo { context }
    }

    async fn init(&self) -> Result<(), ObjectError> {
        self.migrate()?;
        Ok(())
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let sql = self.context.storage().sql();
        match (request.method, request.path.as_str()) {
            (Method::Post, "/items") => {
                let text = String::from_utf8_lossy(&request.body).into_owned();
                let now = stead::object::now_ms();
                sql.exec(
                    "INSERT INTO items (text, created_at) VALUES (?, ?)",
                    &[text.into(), now.into()],
                )?;
                Ok(Response::text(201, "added"))
            }
            (Method::Get, "/items") => {
                let rows = sql.exec("SELECT text FROM items ORDER BY created_at, id", &[])?;
                let lines: Vec<String> = rows
                    .raw()
                    .iter()
                    .filter_map(|row| row.first().and_then(SqlValue::as_str).map(str::to_string))
                    .collect();
                Ok(Response::text(200, lines.join("\n")))
            }
            (Method::Get, "/version") => {
                let version = sql
                    .exec("SELECT max(version) AS v FROM _schema", &[])?
                    .one()?
                    .get_i64("v")?;
                Ok(Response::text(200, version.to_string()))
            }
            _ => Ok(Response::not_found()),
        }
    }
}

fn main() {
    let listen = std::env::var("STEAD_LISTEN").unwrap_or_else(|_| "127.0.0.1:8091".into());
    let Ok(listen) = listen.parse() else {
        eprintln!("sql_migration example: STEAD_LISTEN={listen:?} is not an address");
        std::process::exit(2);
    };
    let config = Config {
        listen,
        data_dir: "./todo-data".into(),
        ..Config::default()
    };
    let server = stead::Server::builder()
        .config(config)
        .class::<Todo>("todo")
        .build();
    let announce = |running: &stead::RunningServer| {
        println!(
            "sql_migration example: listening on {}",
            running.local_addr()
        );
    };
    let result = server
        .start()
        .and_then(|running| stead::server::wait_for_signal(running, announce));
    if let Err(error) = result {
        eprintln!("sql_migration example: {error}");
        std::process::exit(1);
    }
}
