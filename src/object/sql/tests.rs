//! The VFS and the SQL handle over a real `Storage`, with a map standing in for the store's
//! committed state: a batch either reaches it whole (a commit) or not at all (a failed or
//! torn commit, which the store guarantees is all that can happen to a batch).

use std::collections::BTreeMap;

use stead_storage::{Limits, ObjectData, Op};

use super::{SqlError, SqlValue, PAGE_BYTES};
use crate::config::SqlSettings;
use crate::object::{Storage, StorageError};

/// The committed state of one object.
#[derive(Default)]
struct Committed {
    /// Every committed key, as the store would load it.
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Committed {
    /// Applies the storage's pending batch, as a successful commit does.
    fn commit(&mut self, storage: &Storage) {
        let Some((batch, _)) = storage.take_pending() else {
            return;
        };
        for op in batch.into_ops() {
            match op {
                Op::Put { key, value } => {
                    self.entries.insert(key, value);
                }
                Op::Delete { key } => {
                    self.entries.remove(&key);
                }
                Op::DeleteAll => self.entries.clear(),
                Op::SetAlarm { .. } | Op::DeleteAlarm => {}
            }
        }
    }

    /// A fresh instance loaded from the committed state, as after a restart.
    fn load(&self, settings: SqlSettings) -> Storage {
        let storage = Storage::new(Limits::default(), settings, 0);
        storage
            .load(ObjectData {
                entries: self.entries.clone(),
                alarm_ms: None,
            })
            .expect("committed pages load");
        storage
    }
}

fn exec(storage: &Storage, query: &str, params: &[SqlValue]) -> Result<super::Cursor, SqlError> {
    storage.sql().exec(query, params)
}

fn rows(storage: &Storage, query: &str) -> Vec<Vec<SqlValue>> {
    exec(storage, query, &[])
        .expect("query runs")
        .raw()
        .to_vec()
}

fn integrity(storage: &Storage) -> String {
    let row = exec(storage, "PRAGMA integrity_check", &[])
        .expect("integrity_check runs")
        .one()
        .expect("one row");
    row.get_index(0)
        .and_then(SqlValue::as_str)
        .unwrap_or("not text")
        .to_string()
}

#[test]
fn rows_survive_a_reload_from_the_committed_pages() {
    let storage = Storage::new(Limits::default(), SqlSettings::default(), 0);
    let mut committed = Committed::default();
    exec(
        &storage,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB)",
        &[],
    )
    .expect("create");
    let cursor = exec(
        &storage,
        "INSERT INTO t (name, score, data) VALUES (?, ?, ?), (?, ?, ?)",
        &[
            "a".into(),
            1.5.into(),
            vec![1u8, 2].into(),
            "b".into(),
            SqlValue::Null,
            Vec::<u8>::new().into(),
        ],
    )
    .expect("insert");
    assert_eq!(cursor.rows_written(), 2);
    assert!(storage.sql().database_size() >= 2 * PAGE_BYTES as u64);
    committed.commit(&storage);
    assert!(committed
        .entries
        .keys()
        .all(|key| super::pages::is_page_key(key)));
    let reloaded = committed.load(SqlSettings::default());
    let cursor = exec(
        &reloaded,
        "SELECT id, name, score, data FROM t ORDER BY id",
        &[],
    )
    .expect("select");
    assert_eq!(cursor.column_names(), ["id", "name", "score", "data"]);
    assert_eq!(
        cursor.raw(),
        [
            vec![
                SqlValue::Integer(1),
                "a".into(),
                SqlValue::Real(1.5),
                SqlValue::Blob(vec![1, 2])
            ],
            vec![
                SqlValue::Integer(2),
                "b".into(),
                SqlValue::Null,
                SqlValue::Blob(Vec::new())
            ],
        ]
    );
    assert_eq!(integrity(&reloaded), "ok");
    assert_eq!(reloaded.len(), 0, "the key-value API sees no SQL page");
}

/// Random batches of inserts, updates and deletes, each either committed or lost (the store
/// commits a batch whole or not at all); after every loss the object reloads from what was
/// committed, and must equal the model that saw only the committed batches.
#[test]
fn a_lost_batch_leaves_the_database_at_the_previous_commit() {
    let mut committed = Committed::default();
    let model = rusqlite::Connection::open_in_memory().expect("model");
    let create =
        "CREATE TABLE t (id INTEGER PRIMARY KEY, value TEXT); CREATE INDEX t_value ON t (value)";
    model.execute_batch(create).expect("model create");
    let mut storage = committed.load(SqlSettings::default());
    exec(&storage, create, &[]).expect("create");
    committed.commit(&storage);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..60 {
        let mut statements = Vec::new();
        for _ in 0..(next() % 20 + 1) {
            let id = next() % 200;
            let value = "x".repeat((next() % 300) as usize);
            statements.push(match next() % 3 {
                0 => format!("INSERT OR REPLACE INTO t VALUES ({id}, '{value}{round}')"),
                1 => format!("UPDATE t SET value = '{value}' WHERE id % 7 = {}", id % 7),
                _ => format!("DELETE FROM t WHERE id BETWEEN {id} AND {}", id + 5),
            });
        }
        for statement in &statements {
            exec(&storage, statement, &[]).expect("statement runs");
        }
        let lost = next() % 3 == 0;
        if lost {
            // The commit failed or was torn: the pending batch never reaches the store, and
            // the host drops the instance, whose memory has the lost writes.
            drop(storage.take_pending());
            storage = committed.load(SqlSettings::default());
        } else {
            committed.commit(&storage);
            for statement in &statements {
                model.execute(statement, []).expect("model statement");
            }
        }
        let reloaded = committed.load(SqlSettings::default());
        let query = "SELECT id, value FROM t ORDER BY id";
        let expected: Vec<Vec<SqlValue>> = model
            .prepare(query)
            .expect("model prepare")
            .query_map([], |row| {
                Ok(vec![
                    SqlValue::Integer(row.get(0)?),
                    SqlValue::Text(row.get(1)?),
                ])
            })
            .expect("model query")
            .collect::<Result<_, _>>()
            .expect("model rows");
        assert_eq!(rows(&reloaded, query), expected, "round {round}");
        assert_eq!(integrity(&reloaded), "ok", "round {round}");
    }
}

#[test]
fn a_database_at_its_size_limit_answers_full_and_keeps_its_rows() {
    let settings = SqlSettings {
        database_bytes_max: 64 * 1024,
        ..SqlSettings::default()
    };
    let mut committed = Committed::default();
    let storage = committed.load(settings.clone());
    exec(&storage, "CREATE TABLE t (data BLOB)", &[]).expect("create");
    let mut inserted = 0;
    let error = loop {
        match exec(&storage, "INSERT INTO t VALUES (zeroblob(3000))", &[]) {
            Ok(_) => inserted += 1,
            Err(error) => break error,
        }
        assert!(inserted < 100, "the limit never hit");
    };
    assert!(
        error.to_string().contains("database or disk is full"),
        "{error}"
    );
    assert!(inserted > 5, "only {inserted} rows fit");
    assert!(storage.sql().database_size() <= 64 * 1024);
    committed.commit(&storage);
    let reloaded = committed.load(settings);
    assert_eq!(
        rows(&reloaded, "SELECT count(*) FROM t"),
        [vec![SqlValue::Integer(inserted)]]
    );
    assert_eq!(integrity(&reloaded), "ok");
}

/// Whether the storage takes writes: an abandoned instance refuses every statement.
fn abandoned(storage: &Storage) -> bool {
    matches!(
        exec(storage, "SELECT 1", &[]),
        Err(SqlError::Unavailable { .. })
    )
}

#[test]
fn more_pages_than_one_batch_holds_fail_the_instance_and_commit_nothing() {
    let mut committed = Committed::default();
    let storage = committed.load(SqlSettings::default());
    exec(&storage, "CREATE TABLE t (data BLOB)", &[]).expect("create");
    exec(&storage, "INSERT INTO t VALUES (x'01')", &[]).expect("insert");
    committed.commit(&storage);
    // 20 MiB in one event: more than the 16 MiB of pages one batch may carry.
    let outcome = storage.transaction_sync(|| {
        for _ in 0..20 {
            exec(&storage, "INSERT INTO t VALUES (zeroblob(1048576))", &[])?;
        }
        Ok::<(), SqlError>(())
    });
    let error = outcome.expect_err("too large for one batch");
    assert!(matches!(error, SqlError::BatchFull { .. }), "{error}");
    assert!(error.to_string().contains("batch"), "{error}");
    assert!(abandoned(&storage));
    assert!(
        storage.take_pending().is_none(),
        "nothing of the event is committed"
    );
    let reloaded = committed.load(SqlSettings::default());
    assert_eq!(
        rows(&reloaded, "SELECT count(*) FROM t"),
        [vec![SqlValue::Integer(1)]]
    );
    assert_eq!(integrity(&reloaded), "ok");
}

/// A key-value write, then a transaction past the batch's limits, in one poll: the instance
/// fails and nothing of the poll is committed (the transaction's undo must not put the writes
/// before it back into a batch that then commits).
#[test]
fn writes_before_a_transaction_past_the_batch_limits_are_not_committed() {
    let mut committed = Committed::default();
    let storage = committed.load(SqlSettings::default());
    exec(&storage, "CREATE TABLE t (data BLOB)", &[]).expect("create");
    committed.commit(&storage);
    storage.put(b"before", b"x".to_vec()).expect("put");
    let outcome = storage.transaction_sync(|| {
        exec(
            &storage,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 20)
             INSERT INTO t SELECT zeroblob(1048576) FROM n",
            &[],
        )?;
        Ok::<(), SqlError>(())
    });
    eprintln!("DEBUG outcome {outcome:?}");
    assert!(
        matches!(outcome, Err(SqlError::BatchFull { .. })),
        "{outcome:?}"
    );
    assert!(
        storage.take_pending().is_none(),
        "nothing of the poll is committed"
    );
    let reloaded = committed.load(SqlSettings::default());
    assert_eq!(reloaded.get(b"before"), None);
    assert_eq!(
        rows(&reloaded, "SELECT count(*) FROM t"),
        [vec![SqlValue::Integer(0)]]
    );
}

/// An in-place change of committed pages past the batch's limits: SQLite rolls the statement
/// back by writing the old pages again, and those writes must not be refused (they once were,
/// leaving half of the update in the batch that was then committed).
#[test]
fn an_update_of_more_pages_than_one_batch_holds_leaves_the_committed_rows() {
    let mut committed = Committed::default();
    let storage = committed.load(SqlSettings::default());
    exec(
        &storage,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)",
        &[],
    )
    .expect("create");
    // 24 MiB of rows, committed 6 MiB at a time.
    for _ in 0..4 {
        exec(
            &storage,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 96)
             INSERT INTO t (data) SELECT zeroblob(65536) FROM n",
            &[],
        )
        .expect("insert");
        committed.commit(&storage);
    }
    let error = exec(&storage, "UPDATE t SET data = randomblob(65536)", &[])
        .expect_err("too large for one batch");
    assert!(matches!(error, SqlError::BatchFull { .. }), "{error}");
    assert!(abandoned(&storage));
    assert!(
        storage.take_pending().is_none(),
        "nothing of the update is committed"
    );
    let reloaded = committed.load(SqlSettings::default());
    assert_eq!(
        rows(
            &reloaded,
            "SELECT count(*), sum(data = zeroblob(65536)) FROM t"
        ),
        [vec![SqlValue::Integer(384), SqlValue::Integer(384)]]
    );
    assert_eq!(integrity(&reloaded), "ok");
    // The same update in batches that fit is fine.
    for first in (1..=384).step_by(96) {
        exec(
            &reloaded,
            "UPDATE t SET data = randomblob(65536) WHERE id BETWEEN ? AND ?",
            &[first.into(), (first + 95).into()],
        )
        .expect("a batch that fits");
        committed.commit(&reloaded);
    }
    let again = committed.load(SqlSettings::default());
    assert_eq!(
        rows(&again, "SELECT sum(data = zeroblob(65536)) FROM t"),
        [vec![SqlValue::Integer(0)]]
    );
    assert_eq!(integrity(&again), "ok");
}

/// `INSERT OR ROLLBACK` ends SQLite's whole transaction: the statements after it must not run
/// outside the transaction (their pages would be dropped with its undo while memory kept
/// them), and the transaction ends undone even if the closure returns `Ok`.
#[test]
fn a_transaction_sqlite_rolled_back_refuses_later_statements_and_is_undone() {
    let mut committed = Committed::default();
    let storage = committed.load(SqlSettings::default());
    exec(&storage, "CREATE TABLE t (id INTEGER PRIMARY KEY)", &[]).expect("create");
    exec(&storage, "INSERT INTO t VALUES (1)", &[]).expect("insert");
    committed.commit(&storage);
    let outcome: Result<(), SqlError> = storage.transaction_sync(|| {
        exec(&storage, "INSERT INTO t VALUES (2)", &[])?;
        storage.put(b"k", b"v".to_vec())?;
        let conflict = exec(&storage, "INSERT OR ROLLBACK INTO t VALUES (1)", &[]);
        assert!(
            matches!(conflict, Err(SqlError::Sqlite { .. })),
            "{conflict:?}"
        );
        // A nested transaction and later statements are refused; the closure ignores that.
        let nested: Result<(), SqlError> = storage.transaction_sync(|| Ok(()));
        assert_eq!(nested, Err(SqlError::TransactionRolledBack));
        assert_eq!(
            exec(&storage, "INSERT INTO t VALUES (3)", &[]).map(|_| ()),
            Err(SqlError::TransactionRolledBack)
        );
        Ok(())
    });
    assert_eq!(outcome, Err(SqlError::TransactionRolledBack));
    assert_eq!(storage.get(b"k"), None);
    assert_eq!(
        rows(&storage, "SELECT id FROM t"),
        [vec![SqlValue::Integer(1)]]
    );
    // Nested: the inner transaction's conflict undoes the outer one too.
    let outer: Result<(), SqlError> = storage.transaction_sync(|| {
        exec(&storage, "INSERT INTO t VALUES (4)", &[])?;
        let inner: Result<(), SqlError> = storage.transaction_sync(|| {
            exec(&storage, "INSERT OR ROLLBACK INTO t VALUES (1)", &[])?;
            Ok(())
        });
        assert!(inner.is_err());
        Ok(())
    });
    assert_eq!(outer, Err(SqlError::TransactionRolledBack));
    // Once the outermost transaction returned, statements run again.
    exec(&storage, "INSERT INTO t VALUES (5)", &[]).expect("insert after");
    assert_eq!(
        rows(&storage, "SELECT id FROM t ORDER BY id"),
        [vec![SqlValue::Integer(1)], vec![SqlValue::Integer(5)]]
    );
    committed.commit(&storage);
    let reloaded = committed.load(SqlSettings::default());
    assert_eq!(
        rows(&reloaded, "SELECT id FROM t ORDER BY id"),
        [vec![SqlValue::Integer(1)], vec![SqlValue::Integer(5)]]
    );
    assert_eq!(reloaded.get(b"k"), None);
    assert_eq!(integrity(&reloaded), "ok");
}

/// SQLite makes a `RETURNING` write's changes at its first step; a result past the limits
/// must undo them, in a transaction or not.
#[test]
fn a_write_whose_returned_rows_pass_a_limit_changes_nothing() {
    let settings = SqlSettings {
        result_rows_max: 10,
        ..SqlSettings::default()
    };
    let mut committed = Committed::default();
    let storage = committed.load(settings.clone());
    exec(&storage, "CREATE TABLE t (i INTEGER)", &[]).expect("create");
    let insert = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT ?)
                  INSERT INTO t SELECT i FROM n RETURNING i";
    assert_eq!(
        exec(&storage, insert, &[20.into()]).map(|_| ()),
        Err(SqlError::TooManyRows {
            result_rows_max: 10
        })
    );
    assert_eq!(
        rows(&storage, "SELECT count(*) FROM t"),
        [vec![SqlValue::Integer(0)]]
    );
    let outcome: Result<(), SqlError> = storage.transaction_sync(|| {
        assert!(exec(&storage, insert, &[20.into()]).is_err());
        exec(&storage, insert, &[3.into()])?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    let returned = exec(&storage, "DELETE FROM t WHERE i = 3 RETURNING i", &[]).expect("fits");
    assert_eq!(returned.raw(), [vec![SqlValue::Integer(3)]]);
    committed.commit(&storage);
    let reloaded = committed.load(settings);
    assert_eq!(
        rows(&reloaded, "SELECT i FROM t ORDER BY i"),
        [vec![SqlValue::Integer(1)], vec![SqlValue::Integer(2)]]
    );
    assert_eq!(integrity(&reloaded), "ok");
}

#[test]
fn a_runaway_query_is_stopped_and_the_database_stays_usable() {
    let settings = SqlSettings {
        statement_steps_max: 1_000_000,
        ..SqlSettings::default()
    };
    let storage = Storage::new(Limits::default(), settings, 0);
    let started = std::time::Instant::now();
    let error = exec(
        &storage,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
        &[],
    )
    .expect_err("stopped");
    assert_eq!(
        error,
        SqlError::StepsExceeded {
            statement_steps_max: 1_000_000
        }
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(rows(&storage, "SELECT 1"), [vec![SqlValue::Integer(1)]]);
}

#[test]
fn transaction_statements_attach_and_storage_pragmas_are_refused_with_a_reason() {
    let storage = Storage::new(Limits::default(), SqlSettings::default(), 0);
    for statement in [
        "BEGIN",
        "COMMIT",
        "SAVEPOINT s",
        "RELEASE s",
        "CREATE TABLE t (a); BEGIN; INSERT INTO t VALUES (1)",
    ] {
        let error = exec(&storage, statement, &[]).expect_err(statement);
        assert!(
            error.to_string().contains("transaction_sync"),
            "{statement}: {error}"
        );
    }
    let error = exec(&storage, "ATTACH 'other' AS other", &[]).expect_err("attach");
    assert!(matches!(error, SqlError::Refused { .. }), "{error}");
    for pragma in ["PRAGMA journal_mode = DELETE", "PRAGMA page_size = 512"] {
        let error = exec(&storage, pragma, &[]).expect_err(pragma);
        assert!(matches!(error, SqlError::Refused { .. }), "{error}");
    }
    assert_eq!(
        rows(&storage, "PRAGMA journal_mode"),
        [vec![SqlValue::Text("memory".to_string())]]
    );
}

#[test]
fn bad_statements_get_clear_errors() {
    let storage = Storage::new(Limits::default(), SqlSettings::default(), 0);
    exec(&storage, "CREATE TABLE t (a, b)", &[]).expect("create");
    let syntax = exec(&storage, "SELEC 1", &[]).expect_err("syntax");
    assert!(syntax.to_string().contains("syntax error"), "{syntax}");
    assert_eq!(
        exec(&storage, "INSERT INTO t VALUES (?, ?)", &[1.into()]).expect_err("count"),
        SqlError::ParameterCount {
            expected: 2,
            given: 1
        }
    );
    assert_eq!(
        exec(&storage, "SELECT 1; SELECT 2", &[1.into()]).expect_err("script"),
        SqlError::ScriptWithParameters
    );
    let huge = format!("SELECT '{}'", "x".repeat(200_000));
    assert!(matches!(
        exec(&storage, &huge, &[]).expect_err("huge"),
        SqlError::StatementTooLarge { .. }
    ));
    assert_eq!(
        exec(&storage, "  -- nothing", &[])
            .expect("empty")
            .raw()
            .len(),
        0
    );
    let script = exec(
        &storage,
        "INSERT INTO t VALUES (1, 2); SELECT a + b AS s FROM t",
        &[],
    )
    .expect("script");
    assert_eq!(script.rows_written(), 1);
    assert_eq!(script.one().expect("one row").get_i64("s").expect("s"), 3);
}

#[test]
fn one_value_cannot_grow_past_the_result_bound() {
    let settings = SqlSettings {
        result_bytes_max: 1024 * 1024,
        ..SqlSettings::default()
    };
    let storage = Storage::new(Limits::default(), settings, 0);
    let error = exec(&storage, "SELECT randomblob(100000000)", &[]).expect_err("too big");
    assert!(error.to_string().contains("too big"), "{error}");
    let error = exec(&storage, "PRAGMA cache_size = 1000000", &[]).expect_err("refused");
    assert!(matches!(error, SqlError::Refused { .. }), "{error}");
}

#[test]
fn results_are_bounded() {
    let settings = SqlSettings {
        result_rows_max: 1000,
        ..SqlSettings::default()
    };
    let storage = Storage::new(Limits::default(), settings, 0);
    let query =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT ?) SELECT i FROM n";
    assert_eq!(
        exec(&storage, query, &[1000.into()])
            .expect("at the bound")
            .raw()
            .len(),
        1000
    );
    assert_eq!(
        exec(&storage, query, &[1001.into()]).expect_err("past it"),
        SqlError::TooManyRows {
            result_rows_max: 1000
        }
    );
}

#[test]
fn transaction_sync_undoes_sql_and_key_value_writes_together() {
    let mut committed = Committed::default();
    let storage = committed.load(SqlSettings::default());
    exec(&storage, "CREATE TABLE t (a)", &[]).expect("create");
    storage.put(b"k", b"before".to_vec()).expect("put");
    let failed: Result<(), SqlError> = storage.transaction_sync(|| {
        exec(&storage, "INSERT INTO t VALUES (1)", &[])?;
        storage.put(b"k", b"inside".to_vec())?;
        storage.put(b"new", b"x".to_vec())?;
        exec(&storage, "INSERT INTO missing VALUES (1)", &[])?;
        Ok(())
    });
    assert!(failed.is_err());
    assert_eq!(
        rows(&storage, "SELECT count(*) FROM t"),
        [vec![SqlValue::Integer(0)]]
    );
    assert_eq!(storage.get(b"k"), Some(b"before".to_vec()));
    assert_eq!(storage.get(b"new"), None);
    let done: Result<i64, SqlError> = storage.transaction_sync(|| {
        exec(&storage, "INSERT INTO t VALUES (2)", &[])?;
        storage.put(b"k", b"after".to_vec())?;
        // A nested transaction that fails undoes only its own writes.
        let inner: Result<(), SqlError> = storage.transaction_sync(|| {
            exec(&storage, "INSERT INTO t VALUES (3)", &[])?;
            storage.delete(b"k")?;
            Err(SqlError::Refused { reason: "test" })
        });
        assert!(inner.is_err());
        Ok(7)
    });
    assert_eq!(done, Ok(7));
    committed.commit(&storage);
    let reloaded = committed.load(SqlSettings::default());
    assert_eq!(
        rows(&reloaded, "SELECT a FROM t"),
        [vec![SqlValue::Integer(2)]]
    );
    assert_eq!(reloaded.get(b"k"), Some(b"after".to_vec()));
    assert_eq!(reloaded.get(b"new"), None);
}

#[test]
fn reserved_keys_are_refused_and_leaving_memory_frees_the_pages() {
    let storage = Storage::new(Limits::default(), SqlSettings::default(), 0);
    let key = super::pages::page_key(0);
    assert_eq!(
        storage.put(&key, b"x".to_vec()),
        Err(StorageError::ReservedKey {
            key_bytes: key.len()
        })
    );
    exec(&storage, "CREATE TABLE t (a)", &[]).expect("create");
    assert!(storage.sql().database_size() > 0);
    storage.make_unavailable("evicted".to_string());
    assert_eq!(storage.sql().database_size(), 0);
    assert!(matches!(
        exec(&storage, "SELECT 1", &[]),
        Err(SqlError::Unavailable { .. })
    ));
}

#[test]
fn delete_all_keeps_the_sql_database() {
    let mut committed = Committed::default();
    let storage = committed.load(SqlSettings::default());
    exec(
        &storage,
        "CREATE TABLE t (a); INSERT INTO t VALUES (1)",
        &[],
    )
    .expect("create");
    storage.put(b"k", b"v".to_vec()).expect("put");
    committed.commit(&storage);
    storage.delete_all().expect("delete all");
    committed.commit(&storage);
    let reloaded = committed.load(SqlSettings::default());
    assert_eq!(reloaded.get(b"k"), None);
    assert_eq!(
        rows(&reloaded, "SELECT a FROM t"),
        [vec![SqlValue::Integer(1)]]
    );
}

#[test]
fn blank_queries_are_recognised() {
    for blank in [
        "",
        "  ;; ",
        "-- a\n /* b */ ;",
        "/* unterminated",
        "-- no newline",
    ] {
        assert!(super::is_blank(blank), "{blank:?}");
    }
    for query in ["SELECT 1", "-- a\nSELECT 1", "/* b */ SELECT 1"] {
        assert!(!super::is_blank(query), "{query:?}");
    }
}

#[test]
fn rows_deserialize_into_types() {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Item {
        id: i64,
        name: String,
        score: Option<f64>,
    }
    let storage = Storage::new(Limits::default(), SqlSettings::default(), 0);
    exec(
        &storage,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL);
         INSERT INTO t VALUES (1, 'a', 0.5), (2, 'b', NULL)",
        &[],
    )
    .expect("create");
    let items: Vec<Item> = exec(&storage, "SELECT id, name, score FROM t ORDER BY id", &[])
        .expect("select")
        .query_as()
        .expect("rows fit");
    assert_eq!(
        items,
        [
            Item {
                id: 1,
                name: "a".to_string(),
                score: Some(0.5)
            },
            Item {
                id: 2,
                name: "b".to_string(),
                score: None
            }
        ]
    );
    let wrong = exec(&storage, "SELECT name AS id FROM t", &[])
        .expect("select")
        .query_as::<Item>();
    assert!(matches!(wrong, Err(SqlError::Deserialize { .. })));
}

#[test]
fn statements_after_empty_ones_run_and_nothing_panics() {
    let storage = Storage::new(Limits::default(), SqlSettings::default(), 0);
    for query in [
        ";SELECT 1",
        ";;SELECT 1",
        "/* x */ ; SELECT 1",
        "SELECT 1;;",
        ";SELECT 1; ;",
    ] {
        let cursor = exec(&storage, query, &[]).expect(query);
        assert_eq!(cursor.raw(), [vec![SqlValue::Integer(1)]], "{query}");
    }
}

#[test]
fn a_write_stopped_by_the_step_budget_leaves_nothing_behind() {
    let settings = SqlSettings {
        statement_steps_max: 200_000,
        ..SqlSettings::default()
    };
    let mut committed = Committed::default();
    let storage = committed.load(settings.clone());
    exec(
        &storage,
        "CREATE TABLE t (a, b); INSERT INTO t VALUES (0, 'x')",
        &[],
    )
    .expect("create");
    let runaway = "INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i, randomblob(500) FROM n";
    let error = exec(&storage, runaway, &[]).expect_err("stopped");
    assert!(matches!(error, SqlError::StepsExceeded { .. }), "{error}");
    assert_eq!(
        rows(&storage, "SELECT count(*) FROM t"),
        [vec![SqlValue::Integer(1)]]
    );
    committed.commit(&storage);
    let reloaded = committed.load(settings);
    assert_eq!(
        rows(&reloaded, "SELECT count(*) FROM t"),
        [vec![SqlValue::Integer(1)]]
    );
    assert_eq!(integrity(&reloaded), "ok");
}

/// A statement that writes far more than SQLite's page cache spills pages into the file before
/// it fails (here on the step budget or the batch's limits, whichever comes first); its rollback must
/// write the old pages back, so memory and the batch hold the previous state.
#[test]
fn a_failed_write_larger_than_the_page_cache_rolls_its_spilled_pages_back() {
    let settings = SqlSettings {
        statement_steps_max: 5_000_000,
        ..SqlSettings::default()
    };
    let mut committed = Committed::default();
    let storage = committed.load(settings.clone());
    exec(
        &storage,
        "CREATE TABLE t (a, b); INSERT INTO t VALUES (0, 'x')",
        &[],
    )
    .expect("create");
    committed.commit(&storage);
    let size_before = storage.sql().database_size();
    let huge = "INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i, randomblob(3000) FROM n";
    match exec(&storage, huge, &[]).expect_err("stopped") {
        SqlError::StepsExceeded { .. } => {
            assert_eq!(
                rows(&storage, "SELECT count(*) FROM t"),
                [vec![SqlValue::Integer(1)]]
            );
            assert_eq!(storage.sql().database_size(), size_before);
            committed.commit(&storage);
        }
        // Past the batch's limits the instance fails and commits nothing.
        SqlError::BatchFull { .. } => {
            assert!(abandoned(&storage));
            assert!(storage.take_pending().is_none());
        }
        error => panic!("unexpected error: {error}"),
    }
    let reloaded = committed.load(settings);
    assert_eq!(
        rows(&reloaded, "SELECT a, b FROM t"),
        [vec![SqlValue::Integer(0), "x".into()]]
    );
    assert_eq!(integrity(&reloaded), "ok");
}

#[test]
fn rows_read_and_written_count_what_statements_touch() {
    let storage = Storage::new(Limits::default(), SqlSettings::default(), 0);
    exec(
        &storage,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 50) INSERT INTO t SELECT i, i FROM n",
        &[],
    )
    .expect("create");
    let scan = exec(&storage, "SELECT count(*) FROM t WHERE v > 0", &[]).expect("scan");
    assert!(
        (49..=51).contains(&scan.rows_read()),
        "{}",
        scan.rows_read()
    );
    assert_eq!(scan.rows_written(), 0);
    let point = exec(&storage, "SELECT v FROM t WHERE id = 7", &[]).expect("point");
    assert_eq!(point.rows_read(), 1);
    let update = exec(&storage, "UPDATE t SET v = 0 WHERE id <= 10", &[]).expect("update");
    assert_eq!(update.rows_written(), 10);
}
