//! Shared by the torn-tail, corruption and kill tests, which all run the real `GlommioDisk` on a
//! temporary directory: an executor, a small config, a seeded random source, and a reader of
//! the record layout that `DESIGN.md` documents, so the tests know where each record lies.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};

use glommio::{LocalExecutorBuilder, Placement};
use stead_storage::StoreConfig;

/// Records start on, and are padded to, this boundary.
pub const BLOCK_BYTES: usize = 4096;
/// Bytes of the fixed record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// "STLG", the first four bytes of every record.
pub const RECORD_MAGIC: u32 = 0x5354_4C47;

/// Runs `make()` on a glommio executor small enough for the machine's 8 MiB memlock limit and
/// returns what it returns.
pub fn run<T, F>(make: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .ring_depth(64)
        .spawn(make)
        .expect("executor starts")
        .join()
        .expect("test body completes")
}

/// A config with small segments, a low inline threshold (so some values live only on disk) and
/// compaction left to the test.
pub fn small_config(dir: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.segment_bytes_max = 16 * 1024;
    config.inline_value_bytes_max = 64;
    config.compaction_automatic = false;
    config.encryption = test_encryption();
    config
}

/// As `support::test_encryption`: a key when `STEAD_STORAGE_TEST_ENCRYPTION=1`.
pub fn test_encryption() -> Option<std::sync::Arc<stead_storage::Encryption>> {
    let wanted = std::env::var("STEAD_STORAGE_TEST_ENCRYPTION").is_ok_and(|value| value == "1");
    wanted.then(|| {
        let keys = vec![(0x5EED, [0x42; stead_storage::ENCRYPTION_KEY_BYTES])];
        std::sync::Arc::new(stead_storage::Encryption::new(keys).expect("one key"))
    })
}

/// A record as found in a segment file: where it starts and its length without padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSpan {
    pub offset: usize,
    pub length: usize,
}

impl RecordSpan {
    /// One past the last byte the record's checksum covers.
    pub fn end(&self) -> usize {
        self.offset + self.length
    }
}

/// Walks the records of an undamaged segment file by their headers, up to its end or to the
/// zeros a log segment is prepared with.
pub fn record_spans(bytes: &[u8]) -> Vec<RecordSpan> {
    let mut spans = Vec::new();
    let mut offset = 0;
    while offset + RECORD_HEADER_BYTES <= bytes.len() {
        if bytes[offset..].iter().all(|byte| *byte == 0) {
            return spans;
        }
        let magic = u32::from_le_bytes(to_array(&bytes[offset..offset + 4]));
        assert_eq!(magic, RECORD_MAGIC, "a record starts at {offset}");
        let length = u32::from_le_bytes(to_array(&bytes[offset + 4..offset + 8])) as usize;
        assert!(
            length >= RECORD_HEADER_BYTES,
            "record at {offset} has a sane length"
        );
        spans.push(RecordSpan { offset, length });
        offset += length.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    }
    assert_eq!(
        offset,
        bytes.len(),
        "records fill the file in whole blocks, up to a zero tail"
    );
    spans
}

/// Whether the file at `path` holds nothing but zeros from `offset` on: a torn tail was cut
/// there (the preparer may have zero-filled the segment past the cut again since).
pub fn cut_at(path: &Path, offset: usize) -> bool {
    let bytes = std::fs::read(path).expect("read segment");
    bytes.len() >= offset && bytes[offset..].iter().all(|byte| *byte == 0)
}

fn to_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(bytes);
    array
}

/// The log segment files of a store directory, oldest first.
pub fn log_segments(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list store directory")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("log-"))
        })
        .collect();
    logs.sort();
    logs
}

/// The file name of `path`, as error messages name it.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|name| name.to_str())
        .expect("a plain file name")
        .to_string()
}

/// A small deterministic generator (xorshift64*), seeded so a failing run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub fn fill(&mut self, bytes: &mut [u8]) {
        for byte in bytes {
            *byte = self.next_u64() as u8;
        }
    }
}

/// The seed for a randomised test: `STEAD_TEST_SEED` if set, else the clock. Printed, so a
/// failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("STEAD_TEST_SEED") {
        Ok(text) => text.parse().expect("STEAD_TEST_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64),
    };
    eprintln!("{test}: STEAD_TEST_SEED={seed}");
    seed
}
