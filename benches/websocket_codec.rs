//! The WebSocket codec: nanoseconds to decode a masked client frame and to encode a server
//! frame, for a small chat-sized text message and a 1 KiB binary one.
//!
//! `cargo bench --bench websocket_codec`

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stead::websocket::{encode_frame, Decoder, Opcode, Role};

/// Frames per measured batch: one read buffer's worth of small frames, as a busy socket sees.
const FRAMES: usize = 1_000;

const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// `FRAMES` masked client frames carrying `payload`, back to back.
fn client_stream(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    for _ in 0..FRAMES {
        encode_frame(&mut wire, opcode, true, payload, Some(MASK));
    }
    wire
}

/// Decodes every frame of `wire`; returns the count, so the work cannot be optimised away.
fn decode_all(wire: &[u8]) -> usize {
    let mut decoder = Decoder::new(Role::Server, 1 << 20, 1 << 20);
    let mut offset = 0;
    let mut items = 0;
    while let Ok(decoded) = decoder.decode(&wire[offset..]) {
        offset += decoded.consumed;
        match decoded.item {
            Some(item) => {
                black_box(item);
                items += 1;
            }
            None => break,
        }
    }
    items
}

/// Encodes `FRAMES` server frames into one buffer, as a broadcast to one socket batches them.
fn encode_all(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    out.clear();
    for _ in 0..FRAMES {
        encode_frame(out, opcode, true, payload, None);
    }
}

/// Prints the median of a few timed rounds, in nanoseconds per frame.
fn print_per_frame(name: &str, mut round: impl FnMut()) {
    let mut samples: Vec<f64> = (0..21)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..10 {
                round();
            }
            start.elapsed().as_nanos() as f64 / (10 * FRAMES) as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    println!("websocket codec: {name}: {:.1} ns per frame", samples[10]);
}

fn bench_codec(c: &mut Criterion) {
    let chat = br#"{"type":"message","text":"hello, room"}"#;
    let kibibyte = vec![0xA5u8; 1024];
    let text_wire = client_stream(Opcode::Text, chat);
    let binary_wire = client_stream(Opcode::Binary, &kibibyte);
    assert_eq!(decode_all(&text_wire), FRAMES);
    assert_eq!(decode_all(&binary_wire), FRAMES);
    let mut out = Vec::with_capacity(FRAMES * (kibibyte.len() + 4));

    print_per_frame("decode 39-byte masked text", || {
        black_box(decode_all(&text_wire));
    });
    print_per_frame("decode 1 KiB masked binary", || {
        black_box(decode_all(&binary_wire));
    });
    print_per_frame("encode 39-byte text", || {
        encode_all(&mut out, Opcode::Text, chat);
        black_box(&out);
    });
    print_per_frame("encode 1 KiB binary", || {
        encode_all(&mut out, Opcode::Binary, &kibibyte);
        black_box(&out);
    });

    let mut group = c.benchmark_group("websocket_codec");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("decode_text_39B_x1000", |b| {
        b.iter(|| decode_all(&text_wire))
    });
    group.bench_function("decode_binary_1KiB_x1000", |b| {
        b.iter(|| decode_all(&binary_wire))
    });
    group.bench_function("encode_text_39B_x1000", |b| {
        b.iter(|| encode_all(&mut out, Opcode::Text, chat))
    });
    group.bench_function("encode_binary_1KiB_x1000", |b| {
        b.iter(|| encode_all(&mut out, Opcode::Binary, &kibibyte))
    });
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
