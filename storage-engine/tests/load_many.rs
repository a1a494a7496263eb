//! `load_object` of an object with many values on disk (the server keeps a SQL database as one
//! value per 4 KiB page): values are read several at a time, and every one comes back intact,
//! in key order, after a reopen, also across many small segments.

mod real_disk;

use real_disk::{run, small_config};
use stead_storage::{Batch, ObjectId, Store};

const OBJECT: ObjectId = [9u8; 32];
/// More values than `load_object` reads at once (256), so several rounds of reads run.
const VALUES: u32 = 1000;

fn value_of(key: u32) -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i.wrapping_mul(31) ^ key) as u8)
        .collect()
}

#[test]
fn an_object_of_a_thousand_values_on_disk_loads_whole_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let mut config = small_config(&path);
        config.segment_bytes_max = 1024 * 1024;
        let store = Store::open(config.clone()).await.expect("open");
        for chunk in (0..VALUES).collect::<Vec<_>>().chunks(100) {
            let mut batch = Batch::new();
            for key in chunk {
                batch.put(key.to_be_bytes().to_vec(), value_of(*key));
            }
            let (_, durable) = store.commit(&OBJECT, batch).expect("commit");
            durable.await.expect("durable");
        }
        store.close().await.expect("close");
        let store = Store::open(config).await.expect("reopen");
        let data = store.load_object(&OBJECT).await.expect("load");
        assert_eq!(data.entries.len(), VALUES as usize);
        for (index, (key, value)) in data.entries.iter().enumerate() {
            assert_eq!(key, &(index as u32).to_be_bytes().to_vec());
            assert_eq!(value, &value_of(index as u32), "value {index}");
        }
        store.close().await.expect("close");
    });
}
