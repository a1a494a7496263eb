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
pub trait DiskFile {
    /// The file's name inside its directory, for error messages.
    fn name(&self) -> &str;
    /// Writes `data` at `offset`; returns the bytes written, which may be fewer (a short write).
    fn write_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize>;
    /// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Vec<u8>>;
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
}

impl GlommioDisk {
    pub fn new(dir: impl Into<std::path::PathBuf>) -> GlommioDisk {
        GlommioDisk { dir: dir.into() }
    }
}
