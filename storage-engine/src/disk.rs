//! The narrow boundary between the engine and the file system.
//!
//! The engine never touches files directly: it goes through [`Disk`] (one directory) and
//! [`DiskFile`] (one open file). [`GlommioDisk`] is the real implementation (O_DIRECT through
//! glommio's io_uring); tests put disks that fail or lose power behind the same traits.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;

/// A boxed, single-threaded future of an I/O result.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + 'a>>;

/// One directory holding a store's files. Names are plain file names, no separators.
pub trait Disk {
    /// Opens `name` for reading and writing; creates it (empty) when `create` is true and it is
    /// missing. Creating a file does not make its directory entry durable: call `sync_dir`.
    fn open_file<'a>(&'a self, name: &'a str, create: bool) -> IoFuture<'a, Rc<dyn DiskFile>>;
    /// The names of the files in the directory, in no particular order.
    fn list(&self) -> IoFuture<'_, Vec<String>>;
    /// Unlinks `name`. Open handles stay readable.
    fn remove<'a>(&'a self, name: &'a str) -> IoFuture<'a, ()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> IoFuture<'a, ()>;
    /// Makes creations, renames and removals in the directory durable (fsync of the directory).
    fn sync_dir(&self) -> IoFuture<'_, ()>;
}

/// One open file. Writes are positional; `offset` and `data.len()` of a write are multiples of
/// 4096 (O_DIRECT), reads may be at any offset and length.
// `len` is an I/O call, not a size to compare with zero: no `is_empty` beside it.
#[allow(clippy::len_without_is_empty)]
pub trait DiskFile {
    /// The file's name inside its directory, for error messages.
    fn name(&self) -> &str;
    /// Writes `data` at `offset`; returns the bytes written, which may be fewer (a short write).
    fn write_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize>;
    /// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Vec<u8>>;
    /// Writes `data` at `offset` and returns only once those bytes, and whatever metadata is
    /// needed to read them back (a size it extended), are durable: one I/O with `O_DSYNC`
    /// semantics instead of `write_at` plus `fdatasync`. It says nothing of other writes not
    /// yet synced. Same alignment and short-write rules as `write_at`; a failure leaves the
    /// range's contents unknown (absent, present or torn), and like a failed fdatasync it is
    /// never retried.
    fn write_durable_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize>;
    /// Makes every completed write durable (fdatasync). Never retried after a failure.
    fn fdatasync(&self) -> IoFuture<'_, ()>;
    /// Sets the file's length (used to cut a torn tail).
    fn truncate(&self, len: u64) -> IoFuture<'_, ()>;
    /// The file's current length in bytes.
    fn len(&self) -> IoFuture<'_, u64>;
}

/// The real disk: a directory on a local file system, files opened with O_DIRECT via glommio.
pub struct GlommioDisk {
    /// The directory every name is relative to.
    dir: std::path::PathBuf,
    /// Whether glommio's poll-ring probe has run against a non-empty file (see `probe_iopoll`).
    probed: std::cell::Cell<bool>,
}

impl GlommioDisk {
    /// A relative `dir` is made absolute now (against the current directory): glommio's
    /// `Directory::open` fails on a relative path with EBADF. If the current directory cannot
    /// be read, `dir` is kept as given and the first operation reports the error.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> GlommioDisk {
        let dir = dir.into();
        GlommioDisk {
            dir: std::path::absolute(&dir).unwrap_or(dir),
            probed: std::cell::Cell::new(false),
        }
    }
}

/// Reads larger than this are split, so one read never needs a huge DMA buffer.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

impl GlommioDisk {
    fn path(&self, name: &str) -> std::path::PathBuf {
        debug_assert!(
            !name.contains('/'),
            "file names carry no separators: {name}"
        );
        self.dir.join(name)
    }
}

impl GlommioDisk {
    /// glommio decides once per block device whether reads may use the io_uring poll ring, by
    /// reading the first file it opens on that device. If that file is empty the probe read
    /// succeeds vacuously, the poll ring is chosen, and every later read fails with
    /// EOPNOTSUPP on devices without polling. Opening a non-empty file first makes the probe
    /// read real data, so it answers truthfully.
    ///
    /// When `opening`, the file about to be opened, exists and is not empty, it is itself that
    /// first file and no probe file is written: on a full disk writing one fails with ENOSPC,
    /// and the store could not even be opened for reading.
    async fn probe_iopoll(&self, opening: &str) -> io::Result<()> {
        if self.probed.replace(true) {
            return Ok(());
        }
        if std::fs::metadata(self.path(opening)).is_ok_and(|metadata| metadata.len() > 0) {
            return Ok(());
        }
        let path = self.path(".iopoll-probe");
        let probed = self.write_probe(&path).await;
        if probed.is_err() {
            // Not probed after all: the next open tries again. A partial probe file is
            // removed so it does not hold space.
            self.probed.set(false);
            let _ = std::fs::remove_file(&path);
        }
        probed
    }

    /// Writes, syncs, opens and removes the probe file at `path`.
    async fn write_probe(&self, path: &std::path::Path) -> io::Result<()> {
        // Synced, so the file's blocks are allocated on the device: a read of a file whose
        // data still sits in delayed allocation does not reach the device and proves nothing.
        let mut probe = std::fs::File::create(path)?;
        std::io::Write::write_all(&mut probe, &[0u8; 4096])?;
        probe.sync_all()?;
        drop(probe);
        let opened = glommio::io::DmaFile::open(path)
            .await
            .map_err(io::Error::from);
        if let Ok(file) = opened {
            file.close().await.map_err(io::Error::from)?;
        }
        std::fs::remove_file(path)
    }
}

impl Disk for GlommioDisk {
    fn open_file<'a>(&'a self, name: &'a str, create: bool) -> IoFuture<'a, Rc<dyn DiskFile>> {
        Box::pin(async move {
            self.probe_iopoll(name).await?;
            let file = glommio::io::OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .dma_open(self.path(name))
                .await
                .map_err(io::Error::from)?;
            let file: Rc<dyn DiskFile> = Rc::new(GlommioFile {
                file,
                durable: std::cell::RefCell::new(None),
                path: self.path(name),
                name: name.to_string(),
            });
            Ok(file)
        })
    }

    fn list(&self) -> IoFuture<'_, Vec<String>> {
        Box::pin(async move {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&self.dir)? {
                if let Some(name) = entry?.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
            Ok(names)
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> IoFuture<'a, ()> {
        Box::pin(async move {
            glommio::io::remove(self.path(name))
                .await
                .map_err(io::Error::from)
        })
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> IoFuture<'a, ()> {
        Box::pin(async move {
            glommio::io::rename(self.path(from), self.path(to))
                .await
                .map_err(io::Error::from)
        })
    }

    fn sync_dir(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let dir = glommio::io::Directory::open(&self.dir)
                .await
                .map_err(io::Error::from)?;
            let synced = dir.sync().await.map_err(io::Error::from);
            dir.close().await.map_err(io::Error::from)?;
            synced
        })
    }
}

/// One file opened with O_DIRECT through glommio.
struct GlommioFile {
    /// The open file; positional reads and writes go through io_uring.
    file: glommio::io::DmaFile,
    /// A second handle on the same file opened with `O_DSYNC`, for `write_durable_at`; opened
    /// on its first use (compaction's base segments never need it). glommio 0.9 passes no
    /// per-write `RWF_DSYNC` flag, so the durability has to come from the open flags.
    durable: std::cell::RefCell<Option<Rc<glommio::io::DmaFile>>>,
    /// Where the file is, to open the second handle.
    path: std::path::PathBuf,
    /// The name inside the store directory, for error messages.
    name: String,
}

impl GlommioFile {
    /// The `O_DSYNC` handle, opened now if this is its first use.
    async fn durable_handle(&self) -> io::Result<Rc<glommio::io::DmaFile>> {
        if let Some(handle) = self.durable.borrow().as_ref() {
            return Ok(handle.clone());
        }
        let opened = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .dma_open(&self.path)
            .await
            .map_err(io::Error::from)?;
        let handle = Rc::new(opened);
        // Two first uses racing both open; the second keeps the first's handle.
        let mut slot = self.durable.borrow_mut();
        Ok(slot.get_or_insert(handle).clone())
    }
}

/// Checks the O_DIRECT alignment of a write: offset and length multiples of 4096.
fn assert_aligned(offset: u64, len: usize) {
    assert_eq!(
        offset % 4096,
        0,
        "O_DIRECT write at unaligned offset {offset}"
    );
    assert_eq!(len % 4096, 0, "O_DIRECT write of unaligned length {len}");
}

/// Writes `data` at `offset` through `file` from a DMA buffer.
async fn dma_write(file: &glommio::io::DmaFile, offset: u64, data: &[u8]) -> io::Result<usize> {
    assert_aligned(offset, data.len());
    let mut buffer = file.alloc_dma_buffer(data.len());
    buffer.as_bytes_mut().copy_from_slice(data);
    file.write_at(buffer, offset).await.map_err(io::Error::from)
}

impl DiskFile for GlommioFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize> {
        Box::pin(dma_write(&self.file, offset, data))
    }

    fn write_durable_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize> {
        Box::pin(async move {
            let handle = self.durable_handle().await?;
            dma_write(&handle, offset, data).await
        })
    }

    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Vec<u8>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(len.min(64 * READ_CHUNK_BYTES));
            while out.len() < len {
                let want = (len - out.len()).min(READ_CHUNK_BYTES);
                let position = offset + out.len() as u64;
                let got = self
                    .file
                    .read_at(position, want)
                    .await
                    .map_err(io::Error::from)?;
                out.extend_from_slice(&got);
                if got.len() < want {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move { self.file.fdatasync().await.map_err(io::Error::from) })
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move { self.file.truncate(len).await.map_err(io::Error::from) })
    }

    fn len(&self) -> IoFuture<'_, u64> {
        Box::pin(async move { self.file.file_size().await.map_err(io::Error::from) })
    }
}
