//! The timer wheel: cost of scheduling a timer, of firing it, and memory per pending timer.
//!
//! `cargo bench --bench timer_wheel`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use stead::alarm::TimerWheel;

#[path = "support/counting_allocator.rs"]
mod counting_allocator;

/// Timers scheduled per measured batch.
const TIMERS: u64 = 1_000_000;

/// A deterministic spread of deadlines over the next hour.
fn deadline(start: u64, n: u64) -> u64 {
    start + (n.wrapping_mul(2_654_435_761) % 3_600_000)
}

fn bench_wheel(c: &mut Criterion) {
    let start = 1_764_000_000_000u64;
    let before = counting_allocator::live_bytes();
    let mut wheel = TimerWheel::new(start);
    for n in 0..TIMERS {
        wheel.insert(deadline(start, n), [n as u8; 32]);
    }
    let held = counting_allocator::live_bytes() - before;
    println!(
        "timer wheel: {TIMERS} pending timers carrying a 32-byte object id hold {held} heap bytes = {:.1} bytes per timer",
        held as f64 / TIMERS as f64
    );
    drop(wheel);

    let mut group = c.benchmark_group("timer_wheel");
    group.throughput(Throughput::Elements(TIMERS));
    group.sample_size(10);
    group.bench_function("insert_1M", |b| {
        b.iter_batched(
            || TimerWheel::new(start),
            |mut wheel| {
                for n in 0..TIMERS {
                    wheel.insert(deadline(start, n), [n as u8; 32]);
                }
                wheel
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("insert_and_fire_1M", |b| {
        b.iter_batched(
            || TimerWheel::new(start),
            |mut wheel| {
                for n in 0..TIMERS {
                    wheel.insert(deadline(start, n), [n as u8; 32]);
                }
                let mut due = Vec::with_capacity(TIMERS as usize);
                let mut now = start;
                while !wheel.is_empty() {
                    now += 1_000;
                    wheel.advance(now, &mut due);
                    due.clear();
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_wheel);
criterion_main!(benches);
