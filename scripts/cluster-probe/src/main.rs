//! The cluster design's facts, measured against running nats-server processes (see
//! `scripts/cluster-probe.sh`, which starts them): `cluster-probe NATS_URL REPLICAS DATA_DIR`.
//!
//! 1. Fence: appends to one subject with `Nats-Expected-Last-Subject-Sequence`; an append that
//!    names a stale sequence (a deposed owner's) must be refused, and the subject unchanged.
//! 2. Compare-and-set: a KV key updated at its revision succeeds, at a stale one is refused.
//! 3. Latency of one acknowledged append at a time (one partition, one owner), 2,000 appends
//!    of 256 bytes.
//! 4. Throughput of 64 partitions appending at once, each one at a time (the fence allows one
//!    append in flight per subject), for 3 s.
//! 5. For comparison: fdatasync of a 4 KiB overwrite in DATA_DIR, 2,000 times.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use hdrhistogram::Histogram;

const EXPECTED_LAST: &str = "Nats-Expected-Last-Subject-Sequence";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let (url, replicas, dir) = match args.as_slice() {
        [_, url, replicas, dir] => (url.clone(), replicas.parse::<usize>()?, dir.clone()),
        _ => return Err("usage: cluster-probe NATS_URL REPLICAS DATA_DIR".into()),
    };
    let servers = url
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    let client = async_nats::connect(servers).await?;
    let js = jetstream::new(client);
    let name = format!("PROBE_R{replicas}");
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("probe{replicas}.>")],
        num_replicas: replicas,
        ..Default::default()
    })
    .await?;
    let subject = |partition: u32| format!("probe{replicas}.log.{partition}");

    // 1. The fence.
    let first = append(&js, subject(0), 0, 16).await?;
    let second = append(&js, subject(0), first, 16).await?;
    let stale = append(&js, subject(0), first, 16).await;
    let refused = match &stale {
        Ok(sequence) => format!("ACCEPTED at sequence {sequence}: the fence does not hold"),
        Err(error) => format!("refused ({error})"),
    };
    println!("R={replicas} fence: appends at 1 and {second}; a stale append is {refused}");

    // 2. Compare-and-set on a KV key (the ownership map's epochs).
    let bucket = format!("probe-kv-r{replicas}");
    let _ = js.delete_key_value(&bucket).await;
    let store = js
        .create_key_value(kv::Config {
            bucket: bucket.clone(),
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    let epoch = store.create("owner.0", Bytes::from_static(b"node-a")).await?;
    let next = store
        .update("owner.0", Bytes::from_static(b"node-b"), epoch)
        .await?;
    let lost = store
        .update("owner.0", Bytes::from_static(b"node-c"), epoch)
        .await;
    let again = store.create("owner.0", Bytes::from_static(b"node-d")).await;
    println!(
        "R={replicas} kv: create at revision {epoch}, update at it gives {next}; an update at the \
         stale {epoch} is {}; a second create is {}",
        if lost.is_err() { "refused" } else { "ACCEPTED" },
        if again.is_err() { "refused" } else { "ACCEPTED" },
    );

    // 3. One append at a time.
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut last = 0;
    for _ in 0..2000 {
        let start = Instant::now();
        last = append(&js, subject(1), last, 256).await?;
        histogram.record(start.elapsed().as_micros() as u64)?;
    }
    println!(
        "R={replicas} one append at a time: p50 {} µs, p99 {} µs",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99)
    );

    // 4. 64 partitions at once, each one append at a time.
    let deadline = Instant::now() + Duration::from_secs(3);
    let tasks = (0..64u32).map(|partition| {
        let js = js.clone();
        let subject = subject(100 + partition);
        async move {
            let mut last = 0;
            let mut count = 0u64;
            while Instant::now() < deadline {
                last = append(&js, subject.clone(), last, 256).await?;
                count += 1;
            }
            Ok::<u64, Error>(count)
        }
    });
    let started = Instant::now();
    let counts = futures::future::try_join_all(tasks).await?;
    let total: u64 = counts.iter().sum();
    println!(
        "R={replicas} 64 partitions at once: {:.0} appends/s",
        total as f64 / started.elapsed().as_secs_f64()
    );
    js.delete_stream(&name).await?;
    js.delete_key_value(&bucket).await?;

    // 5. fdatasync of a 4 KiB overwrite, for comparison.
    if replicas == 1 {
        let path = std::path::Path::new(&dir).join("probe-sync");
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0u8; 4096])?;
        file.sync_all()?;
        let mut histogram = Histogram::<u64>::new(3)?;
        for round in 0..2000u32 {
            let start = Instant::now();
            file.write_at(&round.to_le_bytes(), 0)?;
            file.sync_data()?;
            histogram.record(start.elapsed().as_micros() as u64)?;
        }
        std::fs::remove_file(&path)?;
        println!(
            "fdatasync of a 4 KiB overwrite: p50 {} µs, p99 {} µs",
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99)
        );
    }
    Ok(())
}

/// Appends `bytes` bytes to `subject`, expecting its last sequence to be `expected` (0: no
/// message yet), and returns the new message's stream sequence.
async fn append(
    js: &jetstream::Context,
    subject: String,
    expected: u64,
    bytes: usize,
) -> Result<u64, Error> {
    let mut headers = HeaderMap::new();
    headers.insert(EXPECTED_LAST, expected.to_string().as_str());
    let ack = js
        .publish_with_headers(subject, headers, Bytes::from(vec![7u8; bytes]))
        .await?
        .await?;
    Ok(ack.sequence)
}
