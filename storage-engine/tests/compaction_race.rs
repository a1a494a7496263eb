//! Compaction racing a commit that is not yet durable.
//!
//! Compaction copies into base segments only the keys that no commit after its seal has
//! changed, then deletes the older segments. A key changed by a commit that is still in flight
//! is skipped; if the older segments went before that commit reached the disk, a crash would
//! lose the key's acknowledged value along with the unacknowledged one. This test makes that
//! commit's write fail after compaction has seen it, and checks that compaction refuses to
//! switch the manifest and that a reopen finds the acknowledged value.

mod real_disk;

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use futures_lite::future::poll_once;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use real_disk::{run, small_config};
use stead_storage::{Batch, Disk, DiskFile, GlommioDisk, IoFuture, ObjectId, Store};

const OBJECT: ObjectId = [5u8; 32];

/// What the test lets a held log write do.
#[derive(Clone, Copy, Debug)]
enum Verdict {
    Proceed,
    Fail,
}

/// The real disk, except that while `held` is set a group commit's durable write to a log
/// segment waits for a verdict.
struct GatedDisk {
    inner: GlommioDisk,
    /// Where held writes wait for their verdicts, one each, in order.
    verdicts: Rc<RefCell<Option<LocalReceiver<Verdict>>>>,
}

struct GatedFile {
    inner: Rc<dyn DiskFile>,
    /// Shared with the disk: `Some` while log writes are held.
    verdicts: Rc<RefCell<Option<LocalReceiver<Verdict>>>>,
}

impl Disk for GatedDisk {
    fn open_file<'a>(&'a self, name: &'a str, create: bool) -> IoFuture<'a, Rc<dyn DiskFile>> {
        Box::pin(async move {
            let inner = self.inner.open_file(name, create).await?;
            let file: Rc<dyn DiskFile> = Rc::new(GatedFile {
                inner,
                verdicts: self.verdicts.clone(),
            });
            Ok(file)
        })
    }

    fn list(&self) -> IoFuture<'_, Vec<String>> {
        self.inner.list()
    }

    fn remove<'a>(&'a self, name: &'a str) -> IoFuture<'a, ()> {
        self.inner.remove(name)
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> IoFuture<'a, ()> {
        self.inner.rename(from, to)
    }

    fn sync_dir(&self) -> IoFuture<'_, ()> {
        self.inner.sync_dir()
    }
}

impl DiskFile for GatedFile {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn write_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize> {
        // Zero fills of log segments and compaction's base segments pass: only group
        // commits (durable writes) are held.
        self.inner.write_at(offset, data)
    }

    fn write_durable_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize> {
        Box::pin(async move {
            if self.inner.name().starts_with("log-") {
                let receiver = self.verdicts.borrow_mut().take();
                if let Some(receiver) = receiver {
                    let verdict = receiver.recv().await;
                    *self.verdicts.borrow_mut() = Some(receiver);
                    if !matches!(verdict, Some(Verdict::Proceed)) {
                        return Err(io::Error::other("held write failed on purpose"));
                    }
                }
            }
            self.inner.write_durable_at(offset, data).await
        })
    }

    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Vec<u8>> {
        self.inner.read_at(offset, len)
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        self.inner.fdatasync()
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        self.inner.truncate(len)
    }

    fn len(&self) -> IoFuture<'_, u64> {
        self.inner.len()
    }
}

fn put(key: &str, value: &str) -> Batch {
    let mut batch = Batch::new();
    batch.put(key, value);
    batch
}

#[test]
fn compaction_waits_for_the_commits_it_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let verdicts = Rc::new(RefCell::new(None));
        let disk = Rc::new(GatedDisk {
            inner: GlommioDisk::new(&path),
            verdicts: verdicts.clone(),
        });
        let store = Store::open_with_disk(small_config(&path), disk)
            .await
            .expect("open");
        let (_, durable) = store.commit(&OBJECT, put("k", "old")).expect("commit");
        durable.await.expect("the old value is acknowledged");

        // Hold log writes from here on: each waits for a verdict.
        let (judge, receiver): (LocalSender<Verdict>, _) = local_channel::new_bounded(4);
        *verdicts.borrow_mut() = Some(receiver);
        let (_, before_seal) = store.commit(&OBJECT, put("other", "x")).expect("commit");

        // Compaction seals the log and waits for `before_seal`, which is held.
        let mut compaction = Box::pin(store.compact());
        assert!(
            poll_once(&mut compaction).await.is_none(),
            "compaction waits"
        );
        // A commit after the seal changes `k`; the snapshot will skip `k` because of it.
        let (_, after_seal) = store.commit(&OBJECT, put("k", "new")).expect("commit");

        judge.send(Verdict::Proceed).await.expect("verdict");
        before_seal.await.expect("the held write proceeded");
        judge.send(Verdict::Fail).await.expect("verdict");
        assert!(
            after_seal.await.is_err(),
            "the commit after the seal failed"
        );

        // The snapshot saw `k` changed by a commit that never became durable: switching the
        // manifest now would delete the only durable copy of "old".
        assert!(
            compaction.await.is_err(),
            "compaction must not switch the manifest"
        );
        drop(store);

        let store = Store::open(small_config(&path)).await.expect("reopen");
        assert_eq!(
            store.get(&OBJECT, b"k").await.expect("get"),
            Some(b"old".to_vec()),
            "the acknowledged value survives"
        );
        assert_eq!(
            store.get(&OBJECT, b"other").await.expect("get"),
            Some(b"x".to_vec())
        );
        store.close().await.expect("close");
    });
}
