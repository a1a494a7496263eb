//! The on-disk format is pinned: `tests/fixtures/v1/store` is a store written by the format v1
//! engine, committed byte for byte, and every later build must open it and read exactly the
//! state below. A failure here means a change broke existing data directories; such a change
//! needs a new format version and a reader for v1, not a new fixture.
//!
//! The fixture holds: a manifest naming one base segment written by compaction, two log
//! segments after it, puts, deletes, delete-all (one object emptied by it entirely), alarms
//! set, replaced and deleted, values kept inline and values read from disk by offset, and a
//! record holding several batches.
//!
//! The test opens a copy, never the committed files. `STEAD_WRITE_FORMAT_V1_FIXTURE=1`
//! rewrites the fixture from `write_workload` first; only the v1 writer may do that, so the
//! generator refuses once `FORMAT_VERSION` moved on.

mod real_disk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use real_disk::run;
use stead_storage::codec::FORMAT_VERSION;
use stead_storage::{Batch, ObjectData, ObjectId, Store, StoreConfig};

/// The files of the fixture, all of them: the test fails if the copy lacks one or has more.
const FIXTURE_FILES: [&str; 4] = [
    "MANIFEST",
    "base-0000000000000003",
    "log-0000000000000002",
    "log-0000000000000004",
];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/store")
}

fn object(n: u8) -> ObjectId {
    [n; 32]
}

/// A value of `len` bytes that differs per `seed`, so a value read from the wrong offset or
/// file shows.
fn patterned(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + seed * 7 + i / 251) as u8)
        .collect()
}

/// What the fixture holds, written out by hand rather than derived from the workload, so a
/// change to either is caught.
fn expected() -> BTreeMap<ObjectId, ObjectData> {
    let data = |entries: &[(&str, Vec<u8>)], alarm_ms: Option<i64>| ObjectData {
        entries: entries
            .iter()
            .map(|(key, value)| (key.as_bytes().to_vec(), value.clone()))
            .collect(),
        alarm_ms,
    };
    BTreeMap::from([
        (
            object(1),
            data(
                &[("a1", b"alpha".to_vec()), ("a3", patterned(4, 2000))],
                Some(1_700_000_300_000),
            ),
        ),
        (object(2), data(&[("b1", patterned(3, 3500))], None)),
        (
            object(3),
            data(&[("c5", patterned(5, 300))], Some(1_700_000_100_000)),
        ),
        (object(4), data(&[("d1", patterned(2, 600))], None)),
        (object(5), data(&[("e1", b"echo".to_vec())], None)),
    ])
}

/// The config the fixture was written with: small segments, so the log spans two of them.
fn writer_config(dir: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.segment_bytes_max = 4096;
    config.compaction_automatic = false;
    config
}

/// Commits `batches` back to back, so the writer takes them as one record, and waits for it.
async fn commit_group(store: &Store, batches: Vec<(ObjectId, Batch)>) {
    let mut last = None;
    for (object, batch) in batches {
        last = Some(store.commit(&object, batch).expect("commit").1);
    }
    last.expect("a group has a batch").await.expect("durable");
}

fn batch(build: impl FnOnce(&mut Batch)) -> Batch {
    let mut batch = Batch::new();
    build(&mut batch);
    batch
}

/// The history behind the fixture. Before the compaction: state that ends up in the base
/// segment; after it: changes in the log that replay over the base.
async fn write_workload(store: &Store) {
    let (a, b, c, d, e, f) = (
        object(1),
        object(2),
        object(3),
        object(4),
        object(5),
        object(6),
    );
    commit_group(
        store,
        vec![(
            a,
            batch(|batch| {
                batch.put("a1", "alpha").put("a2", "beta");
                batch.set_alarm(1_700_000_000_000);
            }),
        )],
    )
    .await;
    commit_group(
        store,
        vec![(
            b,
            batch(|batch| {
                batch.put("b1", patterned(1, 3000)).put("b2", "bravo");
            }),
        )],
    )
    .await;
    commit_group(
        store,
        vec![
            (
                c,
                batch(|batch| {
                    batch.put("c1", "one").put("c2", "two").put("c3", "three");
                    batch.set_alarm(1_700_000_100_000);
                }),
            ),
            (
                a,
                batch(|batch| {
                    batch.delete("a2");
                }),
            ),
            (
                d,
                batch(|batch| {
                    batch.put("d1", patterned(2, 600));
                    batch.set_alarm(1_700_000_200_000);
                }),
            ),
        ],
    )
    .await;
    commit_group(
        store,
        vec![(
            c,
            batch(|batch| {
                batch.delete_all().put("c4", "after delete-all");
            }),
        )],
    )
    .await;
    commit_group(
        store,
        vec![(
            d,
            batch(|batch| {
                batch.delete_alarm();
            }),
        )],
    )
    .await;

    store.compact().await.expect("compact");

    commit_group(
        store,
        vec![(
            b,
            batch(|batch| {
                batch.put("b1", patterned(3, 3500)).delete("b2");
            }),
        )],
    )
    .await;
    commit_group(
        store,
        vec![(
            a,
            batch(|batch| {
                batch.set_alarm(1_700_000_300_000);
                batch.put("a3", patterned(4, 2000));
            }),
        )],
    )
    .await;
    commit_group(
        store,
        vec![(
            e,
            batch(|batch| {
                batch.put("e1", "echo");
                batch.set_alarm(1_700_000_400_000);
            }),
        )],
    )
    .await;
    commit_group(
        store,
        vec![
            (
                e,
                batch(|batch| {
                    batch.delete_alarm();
                }),
            ),
            (
                f,
                batch(|batch| {
                    batch.put("f1", "foxtrot");
                }),
            ),
        ],
    )
    .await;
    commit_group(
        store,
        vec![(
            f,
            batch(|batch| {
                batch.delete_all();
            }),
        )],
    )
    .await;
    commit_group(
        store,
        vec![(
            c,
            batch(|batch| {
                batch.delete("c4").put("c5", patterned(5, 300));
            }),
        )],
    )
    .await;
}

/// Rewrites the committed fixture. Run only deliberately, with the v1 writer.
fn write_fixture() {
    assert_eq!(
        FORMAT_VERSION, 1,
        "this build writes format {FORMAT_VERSION}; the v1 fixture must stay as v1 wrote it"
    );
    let dir = fixture_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove the old fixture");
    }
    std::fs::create_dir_all(&dir).expect("create the fixture directory");
    run(move || async move {
        let store = Store::open(writer_config(&dir)).await.expect("open");
        write_workload(&store).await;
        store.close().await.expect("close");
    });
}

/// Copies the fixture into `to`, checking that it holds exactly `FIXTURE_FILES`.
fn copy_fixture(to: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("the v1 fixture is committed")
        .map(|entry| {
            let entry = entry.expect("list the fixture");
            let name = entry.file_name().into_string().expect("a UTF-8 name");
            std::fs::copy(entry.path(), to.join(&name)).expect("copy a fixture file");
            name
        })
        .collect();
    names.sort();
    assert_eq!(names, FIXTURE_FILES, "the fixture's files");
}

/// Checks that `store` holds exactly `expected`: the objects, every key and value, the alarms.
async fn check(store: &Store, expected: &BTreeMap<ObjectId, ObjectData>) {
    let mut objects = store.objects();
    objects.sort();
    let expected_objects: Vec<ObjectId> = expected.keys().copied().collect();
    assert_eq!(objects, expected_objects, "the objects");
    for (id, data) in expected {
        let loaded = store.load_object(id).await.expect("load");
        assert_eq!(&loaded, data, "object {}", id[0]);
        for (key, value) in &data.entries {
            let read = store.get(id, key).await.expect("get");
            assert_eq!(read.as_ref(), Some(value), "object {} key {key:?}", id[0]);
        }
        assert_eq!(store.alarm(id), data.alarm_ms, "alarm of object {}", id[0]);
    }
    let mut alarms = store.objects_with_alarms();
    alarms.sort();
    let expected_alarms: Vec<(ObjectId, i64)> = expected
        .iter()
        .filter_map(|(id, data)| data.alarm_ms.map(|alarm| (*id, alarm)))
        .collect();
    assert_eq!(alarms, expected_alarms, "the alarms");
}

#[test]
fn format_v1_fixture_opens_with_its_exact_state() {
    if std::env::var_os("STEAD_WRITE_FORMAT_V1_FIXTURE").is_some_and(|value| value == "1") {
        write_fixture();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    copy_fixture(dir.path());
    let path = dir.path().to_path_buf();
    let manifest_version = |path: &Path| {
        let bytes = std::fs::read(path.join("MANIFEST")).expect("read the manifest");
        u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"))
    };
    assert_eq!(manifest_version(&path), 1, "the fixture as v1 wrote it");
    run(move || async move {
        // Opened as an operator would, with the default config.
        let store = Store::open(StoreConfig::new(&path))
            .await
            .expect("the v1 fixture opens");
        // Upgraded before any record of format 2 (the overlap flag) is written, so a v1 build
        // refuses the store by its version instead of misreading a flagged record.
        assert_eq!(
            manifest_version(&path),
            2,
            "the manifest after the first open"
        );
        let mut expected = expected();
        check(&store, &expected).await;

        // The old files carry on: a commit lands after them, and a compaction rewrites them.
        let (_, durable) = store
            .commit(
                &object(6),
                batch(|batch| {
                    batch.put("f2", "golf");
                }),
            )
            .expect("commit");
        durable.await.expect("durable");
        store.compact().await.expect("compact the v1 files");
        store.close().await.expect("close");
        expected.insert(
            object(6),
            ObjectData {
                entries: BTreeMap::from([(b"f2".to_vec(), b"golf".to_vec())]),
                alarm_ms: None,
            },
        );
        let store = Store::open(StoreConfig::new(&path))
            .await
            .expect("reopen after compaction");
        check(&store, &expected).await;
        store.close().await.expect("close");
    });
}
