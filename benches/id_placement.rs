//! Naming an object and finding its core: `ObjectId::from_name` (a hash of class and name)
//! and `core` (partition, then core), which every object request pays before it is forwarded.
//! Each iteration is one name, so criterion's `time` is the cost per id in ns.
//!
//! `cargo bench --bench id_placement`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use stead::config::StorageSettings;
use stead::ObjectId;

/// Distinct names cycled through, so that no result can be reused.
const NAMES: usize = 1024;
/// Cores of a typical server.
const CORES: usize = 16;

fn bench_placement(c: &mut Criterion) {
    let partitions = StorageSettings::default().partitions;
    let names: Vec<String> = (0..NAMES).map(|n| format!("user-{n:08}")).collect();
    let mut group = c.benchmark_group("id");
    let mut next = 0usize;
    group.bench_function("from_name", |b| {
        b.iter(|| {
            next = (next + 1) % NAMES;
            ObjectId::from_name("counter", black_box(&names[next]))
        })
    });
    let mut next = 0usize;
    group.bench_function("from_name_and_core", |b| {
        b.iter(|| {
            next = (next + 1) % NAMES;
            ObjectId::from_name("counter", black_box(&names[next])).core(partitions, CORES)
        })
    });
    let ids: Vec<ObjectId> = names
        .iter()
        .map(|name| ObjectId::from_name("counter", name))
        .collect();
    let mut next = 0usize;
    group.bench_function("core", |b| {
        b.iter(|| {
            next = (next + 1) % NAMES;
            black_box(&ids[next]).core(partitions, CORES)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_placement);
criterion_main!(benches);
