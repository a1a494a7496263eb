//! Index memory per stored object, the shape stead's counters have: one object, one short key,
//! one small inline value. Measured with a counting allocator as the heap bytes the store holds
//! after it opens (recovery rebuilds the index and nothing else stays).
//!
//! `cargo bench -p stead-storage --bench index_memory` (set `STEAD_INDEX_OBJECTS` for another
//! count; 130,000 by default)

use glommio::{LocalExecutorBuilder, Placement};
use stead_storage::{Batch, Store, StoreConfig};

/// Counts live heap bytes (shared with the root crate's benches).
#[path = "../../benches/support/counting_allocator.rs"]
mod counting_allocator;

/// The counter's key and a value the size of its decimal count.
const KEY: &[u8] = b"value";
const VALUE_BYTES: usize = 6;
/// Durable handles awaited together.
const COMMITS_IN_FLIGHT_MAX: usize = 4096;

fn objects() -> u64 {
    std::env::var("STEAD_INDEX_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(130_000)
}

fn object_id(n: u64) -> [u8; 32] {
    // Spread like real ids: a hash-like first half, so the map sees no pattern.
    let mut object = [0u8; 32];
    object[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    object[8..16].copy_from_slice(&n.to_le_bytes());
    object
}

fn main() {
    let objects = objects();
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let path = dir.path().to_path_buf();
    let (filled, recovered) = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor")
        .run(async move {
            let empty = counting_allocator::live_bytes();
            let store = Store::open(StoreConfig::new(&path)).await.expect("open");
            let mut pending = Vec::new();
            for n in 0..objects {
                let mut batch = Batch::new();
                batch.put(KEY.to_vec(), vec![b'1'; VALUE_BYTES]);
                let (_, durable) = store.commit(&object_id(n), batch).expect("commit");
                pending.push(durable);
                if pending.len() == COMMITS_IN_FLIGHT_MAX {
                    for durable in pending.drain(..) {
                        durable.await.expect("durable");
                    }
                }
            }
            for durable in pending {
                durable.await.expect("durable");
            }
            let filled = counting_allocator::live_bytes() - empty;
            assert_eq!(store.stats().objects, objects);
            store.close().await.expect("close");
            drop(store);
            let empty = counting_allocator::live_bytes();
            let store = Store::open(StoreConfig::new(&path)).await.expect("reopen");
            let recovered = counting_allocator::live_bytes() - empty;
            assert_eq!(store.stats().keys, objects);
            store.close().await.expect("close");
            (filled, recovered)
        });
    let per_object = |bytes: isize| bytes as f64 / objects as f64;
    println!(
        "index_memory: {objects} objects of one {}-byte key and a {VALUE_BYTES}-byte value: \
         {:.0} heap bytes per object after the commits, {:.0} after recovery",
        KEY.len(),
        per_object(filled),
        per_object(recovered)
    );
}
