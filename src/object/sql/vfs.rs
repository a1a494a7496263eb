//! The SQLite VFS `stead`: SQLite's file I/O for an object's database, served from the
//! object's own storage (`Storage::sql_file_*`) instead of a file on disk.
//!
//! A database is opened by a name that [`open_name`] registered (thread-locally) for one
//! storage; `xOpen` takes the registration and the file keeps a weak reference to the storage.
//! Reads copy from the pages in memory; writes change them and record each changed page in the
//! object's pending batch, which the host commits as one atomic batch with the event's
//! key-value writes. `xSync` does nothing: durability is the batch's. Only the main database
//! file can be opened: the connection keeps its rollback journal in memory and its temporary
//! files in memory (`journal_mode=MEMORY`, `temp_store=MEMORY`), so SQLite writes no other
//! file, and an attempt to open one fails with `SQLITE_CANTOPEN`.
//!
//! Everything else a VFS does (randomness, the clock, sleeping) is delegated to SQLite's
//! default VFS. This is the only module of the crate that calls SQLite's C API directly.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

use super::pages::PAGE_BYTES;
use crate::object::storage::{SqlFileError, WeakStorage};

/// The VFS's registered name.
pub const VFS_NAME: &str = "stead";
/// The same, as SQLite reads it.
const VFS_NAME_C: &CStr = c"stead";
/// Longest database name SQLite may hand us.
const PATHNAME_BYTES_MAX: c_int = 512;

thread_local! {
    /// Storages waiting for SQLite to open their database, by name: filled by `open_name`,
    /// taken by `x_open`. A database belongs to the thread (core) of its object.
    static OPENING: RefCell<HashMap<String, WeakStorage>> = RefCell::new(HashMap::new());
    /// Numbers the names of this thread's databases.
    static NEXT_NAME: Cell<u64> = const { Cell::new(0) };
    /// The last refusal of a write on this thread, for the error message SQLite cannot carry.
    static LAST_REFUSAL: RefCell<Option<SqlFileError>> = const { RefCell::new(None) };
}

/// A database name registered for `storage`, to pass to `sqlite3_open_v2` with the `stead`
/// VFS. The registration is taken by the open; [`forget_name`] drops one the open did not take.
pub fn open_name(storage: WeakStorage) -> String {
    let number = NEXT_NAME.with(|next| {
        let number = next.get();
        next.set(number + 1);
        number
    });
    let name = format!("stead-object-{number}");
    OPENING.with(|opening| opening.borrow_mut().insert(name.clone(), storage));
    name
}

/// Drops the registration of `name` if the open did not take it.
pub fn forget_name(name: &str) {
    OPENING.with(|opening| opening.borrow_mut().remove(name));
}

/// The refusal behind the last `SQLITE_FULL` or `SQLITE_IOERR` a write of this thread
/// returned, taken (so each is reported once).
pub fn take_last_refusal() -> Option<SqlFileError> {
    LAST_REFUSAL.with(|last| last.borrow_mut().take())
}

/// Registers the `stead` VFS with SQLite, once per process.
pub fn register() -> Result<(), c_int> {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    let code = *REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find with NULL returns the default VFS, which SQLite keeps for
        // the life of the process; the struct registered below is leaked, so it lives as long.
        unsafe {
            let default_vfs = ffi::sqlite3_vfs_find(ptr::null());
            if default_vfs.is_null() {
                return ffi::SQLITE_ERROR;
            }
            let vfs = Box::new(ffi::sqlite3_vfs {
                iVersion: 2,
                szOsFile: std::mem::size_of::<FileHandle>() as c_int,
                mxPathname: PATHNAME_BYTES_MAX,
                pNext: ptr::null_mut(),
                zName: VFS_NAME_C.as_ptr(),
                pAppData: default_vfs.cast(),
                xOpen: Some(x_open),
                xDelete: Some(x_delete),
                xAccess: Some(x_access),
                xFullPathname: Some(x_full_pathname),
                xDlOpen: None,
                xDlError: None,
                xDlSym: None,
                xDlClose: None,
                xRandomness: Some(x_randomness),
                xSleep: Some(x_sleep),
                xCurrentTime: Some(x_current_time),
                xGetLastError: Some(x_get_last_error),
                xCurrentTimeInt64: Some(x_current_time_int64),
                xSetSystemCall: None,
                xGetSystemCall: None,
                xNextSystemCall: None,
            });
            ffi::sqlite3_vfs_register(Box::into_raw(vfs), 0)
        }
    });
    if code == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(code)
    }
}

/// What SQLite allocates for an open file (`szOsFile` bytes): its method table first, as
/// SQLite requires, then ours.
#[repr(C)]
struct FileHandle {
    /// SQLite's part: the method table.
    base: ffi::sqlite3_file,
    /// The object's storage, boxed so the handle stays plain old data; freed by `x_close`.
    storage: *mut WeakStorage,
}

/// The methods of an open database file.
static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// The default VFS, kept in our VFS's `pAppData`.
///
/// # Safety
/// `vfs` must be the VFS `register` built.
unsafe fn default_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    // SAFETY: the caller passes our VFS, whose pAppData is the default VFS (see `register`).
    unsafe { (*vfs).pAppData.cast() }
}

/// The storage of an open file, if it still exists.
///
/// # Safety
/// `file` must be a handle `x_open` filled and `x_close` has not closed.
unsafe fn storage_of(file: *mut ffi::sqlite3_file) -> Option<crate::object::Storage> {
    // SAFETY: SQLite hands back the szOsFile-byte block x_open initialised as a FileHandle.
    let handle = unsafe { &*file.cast::<FileHandle>() };
    // SAFETY: `storage` is the Box x_open leaked, freed only by x_close.
    unsafe { (*handle.storage).upgrade() }
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes a block of szOsFile bytes; a null pMethods tells it not to call
    // x_close after a failed open.
    unsafe { (*file).pMethods = ptr::null() };
    if flags & ffi::SQLITE_OPEN_MAIN_DB == 0 || name.is_null() {
        return ffi::SQLITE_CANTOPEN;
    }
    // SAFETY: a non-null name from SQLite is a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(name) };
    let Ok(name) = name.to_str() else {
        return ffi::SQLITE_CANTOPEN;
    };
    let Some(storage) = OPENING.with(|opening| opening.borrow_mut().remove(name)) else {
        return ffi::SQLITE_CANTOPEN;
    };
    let handle = file.cast::<FileHandle>();
    // SAFETY: the block is szOsFile = size_of::<FileHandle>() bytes, suitably aligned by
    // SQLite's allocator; it is written whole before SQLite reads it.
    unsafe {
        handle.write(FileHandle {
            base: ffi::sqlite3_file {
                pMethods: &IO_METHODS,
            },
            storage: Box::into_raw(Box::new(storage)),
        });
        if !out_flags.is_null() {
            *out_flags = flags;
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: x_close is called once per file x_open filled.
    let handle = unsafe { &mut *file.cast::<FileHandle>() };
    if !handle.storage.is_null() {
        // SAFETY: the Box x_open leaked, freed here only.
        drop(unsafe { Box::from_raw(handle.storage) });
        handle.storage = ptr::null_mut();
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buffer: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: an open file.
    let Some(storage) = (unsafe { storage_of(file) }) else {
        return ffi::SQLITE_IOERR_READ;
    };
    let (Ok(amount), Ok(offset)) = (usize::try_from(amount), u64::try_from(offset)) else {
        return ffi::SQLITE_IOERR_READ;
    };
    // SAFETY: SQLite passes a buffer of `amount` writable bytes.
    let buffer = unsafe { std::slice::from_raw_parts_mut(buffer.cast::<u8>(), amount) };
    if storage.sql_file_read(offset, buffer) {
        ffi::SQLITE_OK
    } else {
        // The unread tail is zero-filled, as SQLite requires of a short read.
        ffi::SQLITE_IOERR_SHORT_READ
    }
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: an open file.
    let Some(storage) = (unsafe { storage_of(file) }) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let (Ok(amount), Ok(offset)) = (usize::try_from(amount), u64::try_from(offset)) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite passes `amount` readable bytes.
    let data = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), amount) };
    match storage.sql_file_write(offset, data) {
        Ok(()) => ffi::SQLITE_OK,
        Err(refusal) => refuse(refusal),
    }
}

/// Keeps `refusal` for the error message and answers its SQLite code: "database or disk is
/// full" for a write past a limit, an I/O error for storage that takes no more writes.
fn refuse(refusal: SqlFileError) -> c_int {
    let code = match &refusal {
        SqlFileError::DatabaseFull { .. } => ffi::SQLITE_FULL,
        SqlFileError::Storage(crate::object::StorageError::Unavailable { .. }) => {
            ffi::SQLITE_IOERR_WRITE
        }
        SqlFileError::Storage(_) => ffi::SQLITE_FULL,
    };
    LAST_REFUSAL.with(|last| *last.borrow_mut() = Some(refusal));
    code
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: an open file.
    let Some(storage) = (unsafe { storage_of(file) }) else {
        return ffi::SQLITE_IOERR_TRUNCATE;
    };
    let Ok(size) = u64::try_from(size) else {
        return ffi::SQLITE_IOERR_TRUNCATE;
    };
    match storage.sql_file_truncate(size) {
        Ok(()) => ffi::SQLITE_OK,
        Err(refusal) => {
            refuse(refusal);
            ffi::SQLITE_IOERR_TRUNCATE
        }
    }
}

unsafe extern "C" fn x_sync(_file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    // Durability is the event batch's: the host commits the pages with the event's writes.
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: an open file.
    let Some(storage) = (unsafe { storage_of(file) }) else {
        return ffi::SQLITE_IOERR_FSTAT;
    };
    // SAFETY: SQLite passes a writable sqlite3_int64.
    unsafe { *size = storage.sql_file_size() as ffi::sqlite3_int64 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_lock(_file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    // One connection per database, on one thread: there is no one to exclude.
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_unlock(_file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(
    _file: *mut ffi::sqlite3_file,
    reserved: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes a writable int.
    unsafe { *reserved = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(
    _file: *mut ffi::sqlite3_file,
    _op: c_int,
    _argument: *mut c_void,
) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    PAGE_BYTES as c_int
}

unsafe extern "C" fn x_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    // Writes of a page are all-or-nothing (the batch), and nothing survives a crash that the
    // batch did not commit.
    ffi::SQLITE_IOCAP_ATOMIC4K | ffi::SQLITE_IOCAP_SAFE_APPEND | ffi::SQLITE_IOCAP_SEQUENTIAL
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    // Only journals and temporary files are ever deleted, and none exist.
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    _flags: c_int,
    exists: *mut c_int,
) -> c_int {
    // Asked about journals and WAL files: there are none.
    // SAFETY: SQLite passes a writable int.
    unsafe { *exists = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    out_bytes: c_int,
    out: *mut c_char,
) -> c_int {
    // Names are not paths: the name is its own full name.
    // SAFETY: `name` is NUL-terminated; `out` has `out_bytes` bytes.
    unsafe {
        let name = CStr::from_ptr(name).to_bytes_with_nul();
        let Ok(out_bytes) = usize::try_from(out_bytes) else {
            return ffi::SQLITE_CANTOPEN;
        };
        if name.len() > out_bytes {
            return ffi::SQLITE_CANTOPEN;
        }
        ptr::copy_nonoverlapping(name.as_ptr().cast::<c_char>(), out, name.len());
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_randomness(
    vfs: *mut ffi::sqlite3_vfs,
    bytes: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: our VFS; the default VFS implements xRandomness.
    unsafe {
        let default = default_vfs(vfs);
        match (*default).xRandomness {
            Some(randomness) => randomness(default, bytes, out),
            None => 0,
        }
    }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, microseconds: c_int) -> c_int {
    // SAFETY: our VFS; the default VFS implements xSleep.
    unsafe {
        let default = default_vfs(vfs);
        match (*default).xSleep {
            Some(sleep) => sleep(default, microseconds),
            None => 0,
        }
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // SAFETY: our VFS; the default VFS implements xCurrentTime.
    unsafe {
        let default = default_vfs(vfs);
        match (*default).xCurrentTime {
            Some(current_time) => current_time(default, out),
            None => ffi::SQLITE_ERROR,
        }
    }
}

unsafe extern "C" fn x_current_time_int64(
    vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: our VFS; the default VFS implements xCurrentTimeInt64 (version 2).
    unsafe {
        let default = default_vfs(vfs);
        match (*default).xCurrentTimeInt64 {
            Some(current_time) => current_time(default, out),
            None => ffi::SQLITE_ERROR,
        }
    }
}

unsafe extern "C" fn x_get_last_error(
    _vfs: *mut ffi::sqlite3_vfs,
    _bytes: c_int,
    _out: *mut c_char,
) -> c_int {
    0
}
