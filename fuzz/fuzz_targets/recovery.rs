//! Arbitrary store directories through recovery: manifests, log and base segments built from
//! records that mostly verify (so replay gets past the crc) with damage, cuts and raw bytes
//! mixed in. Opening must return `Ok` or `Err`, never panic; a store that opens must read every
//! object back, take a commit, close, and reopen strictly to the same state.
//!
//! The directory lives in memory behind the engine's `Disk` trait, so a run costs microseconds
//! instead of fsyncs; the real disk is covered by `storage-engine/tests/`.

#![no_main]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use arbitrary::Arbitrary;
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use libfuzzer_sys::fuzz_target;
use stead_storage::codec::{encode_batch, encode_manifest, encode_record, ManifestData};
use stead_storage::{
    Batch, Disk, DiskFile, IoFuture, ObjectData, ObjectId, Op, RecoveryMode, Store, StoreConfig,
};

#[derive(Arbitrary, Debug)]
struct Input {
    salvage: bool,
    manifest: ManifestInput,
    files: Vec<FileInput>,
}

#[derive(Arbitrary, Debug)]
enum ManifestInput {
    Valid { log_start: u8, bases: Vec<u8> },
    Raw(Vec<u8>),
    Missing,
}

#[derive(Arbitrary, Debug)]
struct FileInput {
    base: bool,
    /// Small ids, so files, the manifest and the log start refer to each other.
    id: u8,
    content: ContentInput,
}

#[derive(Arbitrary, Debug)]
enum ContentInput {
    Records {
        records: Vec<RecordInput>,
        /// Bit flips at positions taken modulo the file length.
        damage: Vec<(u16, u8)>,
        cut: Option<u16>,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct RecordInput {
    /// Added to the next expected sequence number: 0 continues the log.
    seq_skip: i8,
    /// Another segment id than the file's, for records in the wrong file.
    foreign_segment: Option<u8>,
    batch_count_override: Option<u8>,
    /// Marked as written beside the round before it (two rounds in flight).
    overlapped: bool,
    batches: Vec<BatchInput>,
}

#[derive(Arbitrary, Debug)]
struct BatchInput {
    object: u8,
    ops: Vec<OpInput>,
}

#[derive(Arbitrary, Debug)]
enum OpInput {
    Put { key: u8, value_len: u16, fill: u8 },
    Delete { key: u8 },
    DeleteAll,
    SetAlarm(i64),
    DeleteAlarm,
}

fn object(byte: u8) -> ObjectId {
    [byte; 32]
}

impl OpInput {
    fn to_op(&self) -> Op {
        match *self {
            OpInput::Put {
                key,
                value_len,
                fill,
            } => Op::Put {
                key: vec![key],
                value: vec![fill; usize::from(value_len % 600)],
            },
            OpInput::Delete { key } => Op::Delete { key: vec![key] },
            OpInput::DeleteAll => Op::DeleteAll,
            OpInput::SetAlarm(time_ms) => Op::SetAlarm { time_ms },
            OpInput::DeleteAlarm => Op::DeleteAlarm,
        }
    }
}

/// Encodes a file's records as the engine would write them, then damages the bytes.
fn file_bytes(id: u64, content: &ContentInput, next_seq: &mut u64) -> Vec<u8> {
    let (records, damage, cut) = match content {
        ContentInput::Raw(bytes) => return bytes.clone(),
        ContentInput::Records {
            records,
            damage,
            cut,
        } => (records, damage, cut),
    };
    let mut bytes = Vec::new();
    for record in records {
        let mut payload = Vec::new();
        for batch in &record.batches {
            let ops: Vec<Op> = batch.ops.iter().map(OpInput::to_op).collect();
            encode_batch(&mut payload, &object(batch.object), &ops, |_, _| {});
        }
        let seq = next_seq.saturating_add_signed(i64::from(record.seq_skip));
        let count = record
            .batch_count_override
            .map_or(record.batches.len() as u32, u32::from);
        let segment = record.foreign_segment.map_or(id, u64::from);
        bytes.extend(encode_record(
            (seq, segment),
            count,
            record.overlapped,
            &payload,
            None,
        ));
        *next_seq = seq.saturating_add(u64::from(count.max(1)));
    }
    if !bytes.is_empty() {
        for &(position, xor) in damage {
            let at = usize::from(position) % bytes.len();
            bytes[at] ^= xor;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(usize::from(*cut));
    }
    bytes
}

/// One file of the in-memory directory.
struct MemFile {
    /// The name, for error messages.
    name: String,
    /// The file's bytes; every write is durable at once (no power loss here).
    bytes: RefCell<Vec<u8>>,
}

impl DiskFile for MemFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize> {
        Box::pin(async move {
            let mut bytes = self.bytes.borrow_mut();
            let start = offset as usize;
            if bytes.len() < start + data.len() {
                bytes.resize(start + data.len(), 0);
            }
            bytes[start..start + data.len()].copy_from_slice(data);
            Ok(data.len())
        })
    }

    /// In memory every write is as durable as it gets.
    fn write_durable_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize> {
        self.write_at(offset, data)
    }

    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Vec<u8>> {
        Box::pin(async move {
            let bytes = self.bytes.borrow();
            let start = (offset as usize).min(bytes.len());
            let end = start.saturating_add(len).min(bytes.len());
            Ok(bytes[start..end].to_vec())
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.bytes.borrow_mut().resize(len as usize, 0);
            Ok(())
        })
    }

    fn len(&self) -> IoFuture<'_, u64> {
        Box::pin(async move { Ok(self.bytes.borrow().len() as u64) })
    }
}

/// A directory in memory.
#[derive(Default)]
struct MemDisk {
    /// The files by name; open handles share them, so a removed file stays readable.
    files: RefCell<BTreeMap<String, Rc<MemFile>>>,
}

impl MemDisk {
    fn add(&self, name: &str, bytes: Vec<u8>) {
        let file = Rc::new(MemFile {
            name: name.to_string(),
            bytes: RefCell::new(bytes),
        });
        self.files.borrow_mut().insert(name.to_string(), file);
    }
}

impl Disk for MemDisk {
    fn open_file<'a>(&'a self, name: &'a str, create: bool) -> IoFuture<'a, Rc<dyn DiskFile>> {
        Box::pin(async move {
            if create && !self.files.borrow().contains_key(name) {
                self.add(name, Vec::new());
            }
            match self.files.borrow().get(name) {
                Some(file) => Ok(file.clone() as Rc<dyn DiskFile>),
                None => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        })
    }

    fn list(&self) -> IoFuture<'_, Vec<String>> {
        Box::pin(async move { Ok(self.files.borrow().keys().cloned().collect()) })
    }

    fn remove<'a>(&'a self, name: &'a str) -> IoFuture<'a, ()> {
        Box::pin(async move {
            match self.files.borrow_mut().remove(name) {
                Some(_) => Ok(()),
                None => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        })
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> IoFuture<'a, ()> {
        Box::pin(async move {
            let mut files = self.files.borrow_mut();
            let file = files
                .remove(from)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            files.insert(to.to_string(), file);
            Ok(())
        })
    }

    fn sync_dir(&self) -> IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

fn config(salvage: bool) -> StoreConfig {
    let mut config = StoreConfig::new("/nonexistent/fuzz");
    config.segment_bytes_max = 16 * 1024;
    config.inline_value_bytes_max = 32;
    config.compaction_automatic = false;
    if salvage {
        config.recovery = RecoveryMode::Salvage;
    }
    config
}

/// Every object of the store, read back in full.
async fn read_all(store: &Store) -> BTreeMap<ObjectId, ObjectData> {
    let mut all = BTreeMap::new();
    for id in store.objects() {
        let data = store.load_object(&id).await;
        let data = data.unwrap_or_else(|error| panic!("an opened store fails a read: {error}"));
        all.insert(id, data);
    }
    all
}

async fn check(input: Input) {
    let disk = Rc::new(MemDisk::default());
    match &input.manifest {
        ManifestInput::Valid { log_start, bases } => {
            let manifest = ManifestData {
                log_start: u64::from(*log_start),
                base_segments: bases.iter().map(|id| u64::from(*id)).collect(),
                encrypted: false,
            };
            disk.add("MANIFEST", encode_manifest(&manifest));
        }
        ManifestInput::Raw(bytes) => disk.add("MANIFEST", bytes.clone()),
        ManifestInput::Missing => {}
    }
    let mut next_seq = 1;
    for file in input.files.iter().take(6) {
        let id = u64::from(file.id % 16);
        let name = match file.base {
            true => format!("base-{id:016x}"),
            false => format!("log-{id:016x}"),
        };
        disk.add(&name, file_bytes(id, &file.content, &mut next_seq));
    }

    let opened = Store::open_with_disk(config(input.salvage), disk.clone()).await;
    let Ok(store) = opened else { return };
    let mut before = read_all(&store).await;

    let mut batch = Batch::new();
    batch.put(b"fuzz".to_vec(), vec![7u8; 100]);
    let (_, durable) = store.commit(&object(255), batch).expect("commit");
    durable.await.expect("a commit on a healthy disk is durable");
    before.insert(object(255), store.load_object(&object(255)).await.expect("read"));
    store.close().await.expect("close");
    drop(store);

    let store = Store::open_with_disk(config(false), disk)
        .await
        .unwrap_or_else(|error| panic!("a store that opened and closed cannot reopen: {error}"));
    let after = read_all(&store).await;
    assert_eq!(before, after, "reopening changed the store");
    store.close().await.expect("close");
}

thread_local! {
    /// One executor for every run: building one costs far more than a run.
    static EXECUTOR: LocalExecutor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .ring_depth(64)
        .make()
        .expect("executor");
}

fuzz_target!(|input: Input| {
    EXECUTOR.with(|executor| executor.run(check(input)));
});
