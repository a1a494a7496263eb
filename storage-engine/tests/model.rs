//! The store against an in-memory model (a `BTreeMap` per object plus its alarm), driven by
//! proptest: random batches of every op kind, point reads, `get_many`, ranged lists with every
//! option, compactions and close/reopen cycles. Every read must match the model, and so must
//! everything the store holds after each reopen. Runs on the simulated disk (with automatic
//! compaction, so background compaction meets commits and closes) and on a real directory.

mod support;

use proptest::prelude::*;
use stead_storage::sim::SimDisk;
use stead_storage::{Batch, ListOptions, ObjectId, Op, Store, StoreConfig};
use support::{dump, object_id, run, small_config, Model};

const OBJECTS: u8 = 3;

#[derive(Clone, Debug)]
enum Action {
    Commit { object: u8, ops: Vec<Op> },
    Get { object: u8, key: Vec<u8> },
    GetMany { object: u8, keys: Vec<Vec<u8>> },
    List { object: u8, options: ListOptions },
    Compact,
    Reopen,
}

/// Short keys over a tiny alphabet, with 0x00 and 0xff so prefix bounds meet their edges.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(vec![b'a', b'b', b'c', 0x00, 0xff]),
        0..4,
    )
}

/// Small values stay in memory; values over 64 bytes are read back from disk.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..40),
        1 => prop::collection::vec(any::<u8>(), 65..3000),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(key, value)| Op::Put { key, value }),
        3 => key().prop_map(|key| Op::Delete { key }),
        1 => Just(Op::DeleteAll),
        2 => any::<i64>().prop_map(|time_ms| Op::SetAlarm { time_ms }),
        1 => Just(Op::DeleteAlarm),
    ]
}

fn list_options() -> impl Strategy<Value = ListOptions> {
    let bounds = (
        prop::option::of(key()),
        prop::option::of(key()),
        prop::option::of(key()),
        prop::option::of(key()),
    );
    (bounds, any::<bool>(), prop::option::of(0usize..6)).prop_map(
        |((prefix, start, start_after, end), reverse, limit)| ListOptions {
            prefix,
            start,
            start_after,
            end,
            reverse,
            limit,
        },
    )
}

fn action() -> impl Strategy<Value = Action> {
    let object = 0..OBJECTS;
    prop_oneof![
        10 => (object.clone(), prop::collection::vec(op(), 0..6))
            .prop_map(|(object, ops)| Action::Commit { object, ops }),
        3 => (object.clone(), key()).prop_map(|(object, key)| Action::Get { object, key }),
        1 => (object.clone(), prop::collection::vec(key(), 0..5))
            .prop_map(|(object, keys)| Action::GetMany { object, keys }),
        4 => (object, list_options()).prop_map(|(object, options)| Action::List { object, options }),
        1 => Just(Action::Compact),
        1 => Just(Action::Reopen),
    ]
}

/// Where the store lives between reopens.
#[derive(Clone)]
enum Backend {
    /// The simulated disk, kept across reopens.
    Simulated(SimDisk),
    /// A real directory through glommio: the one named in the config.
    Directory,
}

impl Backend {
    async fn open(&self, config: &StoreConfig) -> Store {
        let opened = match self {
            Backend::Simulated(sim) => Store::open_with_disk(config.clone(), sim.disk()).await,
            Backend::Directory => Store::open(config.clone()).await,
        };
        match opened {
            Ok(store) => store,
            Err(error) => panic!("open: {error}"),
        }
    }
}

async fn check_everything(store: &Store, model: &Model, when: &str) {
    match dump(store).await {
        Ok(found) => assert!(
            found == *model,
            "{when}: {}",
            model.first_difference(&found)
        ),
        Err(error) => panic!("{when}: reading everything: {error}"),
    }
}

async fn run_actions(backend: Backend, config: StoreConfig, actions: Vec<Action>) {
    let mut model = Model::default();
    let mut store = backend.open(&config).await;
    let mut durables = Vec::new();
    for (step, action) in actions.into_iter().enumerate() {
        let when = format!("step {step}: {action:?}");
        match action {
            Action::Commit { object, ops } => {
                let id: ObjectId = object_id(object);
                let mut batch = Batch::new();
                ops.iter().cloned().for_each(|op| {
                    batch.push(op);
                });
                match store.commit(&id, batch) {
                    Ok((_, durable)) => durables.push(durable),
                    Err(error) => panic!("{when}: commit refused: {error}"),
                }
                model.apply(&id, &ops);
                assert_eq!(
                    store.alarm(&id),
                    model.objects.get(&id).and_then(|data| data.alarm_ms),
                    "{when}"
                );
            }
            Action::Get { object, key } => {
                let id = object_id(object);
                let found = store.get(&id, &key).await;
                assert_eq!(found.ok(), Some(model.get(&id, &key)), "{when}");
            }
            Action::GetMany { object, keys } => {
                let id = object_id(object);
                let expected: Vec<_> = keys.iter().map(|key| model.get(&id, key)).collect();
                assert_eq!(
                    store.get_many(&id, &keys).await.ok(),
                    Some(expected),
                    "{when}"
                );
            }
            Action::List { object, options } => {
                let id = object_id(object);
                let listed = store.list(&id, &options).await;
                assert_eq!(listed.ok(), Some(model.list(&id, &options)), "{when}");
            }
            Action::Compact => {
                if let Err(error) = store.compact().await {
                    panic!("{when}: {error}");
                }
                check_everything(&store, &model, &when).await;
            }
            Action::Reopen => {
                if let Err(error) = store.close().await {
                    panic!("{when}: close: {error}");
                }
                for durable in durables.drain(..) {
                    assert!(
                        durable.await.is_ok(),
                        "{when}: a commit before close is durable"
                    );
                }
                drop(store);
                store = backend.open(&config).await;
                check_everything(&store, &model, &when).await;
            }
        }
    }
    check_everything(&store, &model, "at the end").await;
    if let Err(error) = store.close().await {
        panic!("final close: {error}");
    }
    drop(store);
    let store = backend.open(&config).await;
    check_everything(&store, &model, "after the final reopen").await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_on_simulated_disk(
        seed in any::<u64>(),
        actions in prop::collection::vec(action(), 1..80),
    ) {
        let mut config = small_config(std::path::Path::new("/simulated"));
        config.segment_bytes_max = 8 * 1024;
        // Half the segment ahead: the preparer fills while the writer appends.
        config.segment_prepare_bytes = 4 * 1024;
        config.compaction_automatic = true;
        config.compaction_dead_bytes_min = 8 * 1024;
        config.compaction_dead_percent_min = 20;
        run(move || run_actions(Backend::Simulated(SimDisk::new(seed)), config, actions));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_on_real_directory(actions in prop::collection::vec(action(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = small_config(dir.path());
        run(move || run_actions(Backend::Directory, config, actions));
    }
}
