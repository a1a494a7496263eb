//! Torn tails on the real disk: a crash mid-append leaves the newest segment cut short, or its
//! tail blocks zeroed or filled with garbage. Whatever the cut, reopening must give exactly a
//! prefix of the commits, keep every commit whose record was whole before the cut, and leave a
//! store that takes and keeps further commits.
//!
//! Every commit here is awaited before the next, so each is one record and all of them are
//! acknowledged: a record that was whole before the cut must survive.

mod real_disk;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use real_disk::{
    cut_at, log_segments, record_spans, run, small_config, RecordSpan, Rng, BLOCK_BYTES,
    RECORD_HEADER_BYTES,
};
use stead_storage::{Batch, Disk, GlommioDisk, ObjectData, ObjectId, Op, Store, StoreConfig};

const OBJECT: ObjectId = [7u8; 32];

/// The size of each commit's second value. Values over 64 bytes live on disk only; 9000 and
/// 5000 make records of three and two blocks, so cuts land inside multi-block records too.
const VALUE_BYTES: [usize; 6] = [20_000, 20_000, 300, 9000, 40, 5000];

/// How many of the newest segment's records every offset is tried on.
const RECORDS_CUT: usize = 3;

/// What fills the file from the cut to its old length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    /// Nothing: the file ends at the cut.
    Truncated,
    /// Zeros, as blocks whose size reached the disk before their data.
    Zeros,
    /// Random bytes, as stale or half-written blocks.
    Garbage,
}

fn config(dir: &Path) -> StoreConfig {
    let mut config = small_config(dir);
    // The first two commits fill segment 1; the rest, and one more, go to segment 2.
    config.segment_bytes_max = 40_000;
    config
}

fn value(commit: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (commit * 31 + i * 7) as u8).collect()
}

fn batch(commit: usize) -> Batch {
    let mut batch = Batch::new();
    batch.put(
        format!("c{commit:02}/a"),
        (commit as u64).to_le_bytes().to_vec(),
    );
    batch.put(
        format!("c{commit:02}/b"),
        value(commit, VALUE_BYTES[commit % VALUE_BYTES.len()]),
    );
    batch.set_alarm(commit as i64);
    batch
}

/// Applies commit number `commit` to `data`.
fn apply(data: &mut ObjectData, commit: usize) {
    for op in batch(commit).into_ops() {
        match op {
            Op::Put { key, value } => {
                data.entries.insert(key, value);
            }
            Op::SetAlarm { time_ms } => data.alarm_ms = Some(time_ms),
            other => unreachable!("the batches hold no {other:?}"),
        }
    }
}

/// The object after the first `commits` batches.
fn expected(commits: usize) -> ObjectData {
    let mut data = ObjectData::default();
    for commit in 0..commits {
        apply(&mut data, commit);
    }
    data
}

/// Compares two states, naming the keys on a mismatch instead of printing kilobytes of values.
fn assert_same(found: &ObjectData, want: &ObjectData, context: &str) {
    if found != want {
        let keys = |data: &ObjectData| -> Vec<String> {
            let keys = data.entries.keys();
            keys.map(|key| String::from_utf8_lossy(key).into_owned())
                .collect()
        };
        panic!(
            "{context}: found keys {:?} alarm {:?}, want keys {:?} alarm {:?} (or values differ)",
            keys(found),
            found.alarm_ms,
            keys(want),
            want.alarm_ms
        );
    }
}

/// The offsets to cut at: every offset of the last record's header and first payload bytes,
/// offsets around every record end and block boundary of the last `RECORDS_CUT` records, a
/// stride through the rest, and the untouched end. Each cut costs a reopen and an fdatasync,
/// so the stride is coarse where one offset behaves like its neighbours.
fn cut_offsets(spans: &[RecordSpan], file_bytes: usize) -> Vec<usize> {
    let cut_spans = &spans[spans.len() - RECORDS_CUT..];
    let first = cut_spans[0].offset;
    let last = cut_spans[RECORDS_CUT - 1];
    let mut offsets: Vec<usize> = (last.offset..last.offset + RECORD_HEADER_BYTES + 64).collect();
    let edges = (first..file_bytes).step_by(BLOCK_BYTES);
    for edge in edges.chain(cut_spans.iter().map(RecordSpan::end)) {
        offsets.extend(edge.saturating_sub(2)..edge + 3);
    }
    offsets.extend((first..file_bytes).step_by(331));
    offsets.push(file_bytes);
    offsets.retain(|offset| (first..=file_bytes).contains(offset));
    offsets.sort_unstable();
    offsets.dedup();
    offsets
}

/// Commits every batch, one record each, and returns the newest segment and its bytes.
fn build_store(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.to_path_buf();
    run(move || async move {
        let store = Store::open(config(&path)).await.expect("open");
        for commit in 0..VALUE_BYTES.len() {
            let (_, durable) = store.commit(&OBJECT, batch(commit)).expect("commit");
            durable.await.expect("durable");
        }
        store.close().await.expect("close");
    });
    let logs = log_segments(dir);
    assert_eq!(logs.len(), 2, "the commits span two segments: {logs:?}");
    let newest = logs[1].clone();
    let bytes = std::fs::read(&newest).expect("read newest segment");
    (newest, bytes)
}

fn torn_tail(tail: Tail) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (newest, original) = build_store(dir.path());
    let spans = record_spans(&original);
    assert!(spans.len() >= RECORDS_CUT, "newest segment holds {spans:?}");
    let commits_before_newest = VALUE_BYTES.len() - spans.len();
    let offsets = cut_offsets(&spans, original.len());
    let path = dir.path().to_path_buf();
    let mut rng = Rng::new(0x7011_7a11 + tail as u64);

    run(move || async move {
        // One disk for every reopen: `Store::open` would make a new one each time, and with it
        // a synced probe file, which would dominate the run time.
        let disk: Rc<dyn Disk> = Rc::new(GlommioDisk::new(&path));
        let open = || Store::open_with_disk(config(&path), disk.clone());
        for (attempt, &cut) in offsets.iter().enumerate() {
            let mut bytes = original[..cut].to_vec();
            match tail {
                Tail::Truncated => {}
                Tail::Zeros => bytes.resize(original.len(), 0),
                Tail::Garbage => {
                    bytes.resize(original.len(), 0);
                    rng.fill(&mut bytes[cut..]);
                }
            }
            std::fs::write(&newest, &bytes).expect("write the damaged segment");

            // A record survives when its bytes do, which includes records the fill happens to
            // rewrite with their own bytes (a record ending in zeros, under a zero fill).
            let intact = |span: &&RecordSpan| {
                bytes.get(span.offset..span.end()) == Some(&original[span.offset..span.end()])
            };
            let whole = spans.iter().take_while(intact).count();
            assert!(whole >= spans.iter().filter(|span| span.end() <= cut).count());
            let survivors = commits_before_newest + whole;
            // Recovery cuts at the first lost record (if the file reaches that far), or after
            // the last record when garbage follows it: from there on the file is zeros (a
            // prepared tail, kept or filled again after the cut) or ends.
            let records_end = spans
                .last()
                .map_or(0, |last| last.end().next_multiple_of(BLOCK_BYTES));
            let clean_from = spans
                .get(whole)
                .map_or(records_end, |first_lost| first_lost.offset)
                .min(bytes.len());
            let context = format!("{tail:?} tail cut at {cut} of {}", original.len());

            let store = open()
                .await
                .unwrap_or_else(|error| panic!("{context}: open failed: {error}"));
            let found = store.load_object(&OBJECT).await.expect("load");
            assert_same(&found, &expected(survivors), &context);
            assert!(cut_at(&newest, clean_from), "{context}: torn tail not cut");

            // The cut segment takes new records after the cut: a further commit is appended to
            // it and survives another reopen.
            if attempt % 5 == 0 {
                let extra = VALUE_BYTES.len();
                let (_, durable) = store.commit(&OBJECT, batch(extra)).expect("commit");
                durable.await.expect("durable after recovery");
                store.close().await.expect("close");
                drop(store);
                assert_eq!(log_segments(&path).len(), 2, "{context}: appended in place");
                let store = open()
                    .await
                    .unwrap_or_else(|error| panic!("{context}: second open failed: {error}"));
                let mut want = expected(survivors);
                apply(&mut want, extra);
                let found = store.load_object(&OBJECT).await.expect("load");
                assert_same(&found, &want, &format!("{context}, then a commit"));
                store.close().await.expect("close");
            } else {
                store.close().await.expect("close");
            }
        }
    });
}

#[test]
fn truncated_tail_keeps_a_prefix() {
    torn_tail(Tail::Truncated);
}

#[test]
fn zero_filled_tail_keeps_a_prefix() {
    torn_tail(Tail::Zeros);
}

#[test]
fn garbage_filled_tail_keeps_a_prefix() {
    torn_tail(Tail::Garbage);
}
