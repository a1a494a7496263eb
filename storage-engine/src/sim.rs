//! A simulated disk for tests: in memory, failing on demand, losing power on demand.
//!
//! [`SimDisk`] is a handle shared (through an `Rc`) by a test and every store it opens on it,
//! so the test keeps the disk across a store's death and reopen. It implements the POSIX
//! durability contract the engine relies on, and nothing more:
//! - a file's bytes are durable once `fdatasync` of that file returns; until then each write
//!   (and truncate) is volatile: readable, but at a power cut it may be dropped, kept, or torn
//!   (a prefix of its 4096-byte blocks kept);
//! - `write_durable_at` (O_DSYNC) is a write followed by a sync of that write alone: the
//!   operation counter sees a `Write` then a `Fdatasync`, so a fault or a power cut can hit
//!   either half. Cut between the two, the write is as volatile as any other; once the call
//!   returns, its bytes (and the size it extended) survive every cut, while earlier unsynced
//!   writes to the file stay as volatile as they were;
//! - creating, renaming and removing names become durable only at `sync_dir`; until then each
//!   may be dropped or kept at a power cut, independently of the file's bytes.
//!
//! Faults: [`SimDisk::inject`] makes the nth operation of a kind fail with EIO or ENOSPC, or
//! a write be short. Power loss: [`SimDisk::crash`] cuts power now, [`SimDisk::crash_at`]
//! when the operation counter reaches a number. After a cut, every handle opened before it
//! (disk views and files) fails with EIO, so a store that was running cannot touch the disk
//! that replaced it; [`SimDisk::disk`] hands out a view of the disk as it came back.
//!
//! Operations also yield to the executor at random (seeded), so the engine's background
//! writer, compaction and the test interleave the way they do on a real disk.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use crate::{Disk, DiskFile, IoFuture};

/// Writes are this granular at a power cut: a torn write keeps a prefix of its blocks.
const BLOCK_BYTES: usize = 4096;

/// A small, seeded pseudo-random generator (SplitMix64), so every run can be replayed.
#[derive(Clone, Debug)]
pub struct SimRng {
    /// The generator's whole state.
    state: u64,
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`; `bound` must be positive.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SimRng::below needs a positive bound");
        self.next_u64() % bound
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The kinds of operation the disk counts, for aiming a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Open,
    List,
    Remove,
    Rename,
    SyncDir,
    Write,
    Read,
    Fdatasync,
    Truncate,
    Len,
}

/// How an aimed operation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The operation fails with EIO. A failed write may have written a prefix of its blocks.
    Eio,
    /// The operation fails with ENOSPC. A failed write may have written a prefix of its blocks.
    Enospc,
    /// A write writes a prefix of its blocks (possibly none) and reports that count; any other
    /// operation fails with EIO.
    ShortWrite,
}

/// One fault to inject: the `nth` (0-based, counted from injection) operation of kind `op`
/// (any kind when `None`) fails as `kind`. It fires once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub op: Option<OpKind>,
    pub nth: u64,
    pub kind: FaultKind,
}

/// What a power cut does with everything not yet made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write, truncate and directory operation is lost.
    DropUnsynced,
    /// Every unsynced write, truncate and directory operation survives.
    KeepUnsynced,
    /// Each unsynced write is dropped, kept or torn, each truncate and directory operation
    /// dropped or kept, independently, drawn from the disk's seeded generator.
    Random,
}

/// A volatile change to a file's bytes, replayed (or not) at a power cut.
#[derive(Clone, Debug)]
enum FileChange {
    /// `durable`: made durable on its own by `write_durable_at`; survives every cut whole.
    Write {
        offset: usize,
        data: Vec<u8>,
        durable: bool,
    },
    Truncate {
        len: usize,
    },
}

/// A file's contents, independent of the names that point at it.
#[derive(Debug, Default)]
struct Inode {
    /// What reads see: every completed write and truncate.
    content: Vec<u8>,
    /// What survived the last successful fdatasync.
    durable: Vec<u8>,
    /// The changes since that fdatasync, in order, for a power cut to replay in part.
    unsynced: Vec<FileChange>,
}

type InodeRef = Rc<RefCell<Inode>>;

/// A volatile change to the directory, replayed (or not) at a power cut.
#[derive(Clone, Debug)]
enum DirChange {
    Link {
        name: String,
        inode: InodeRef,
    },
    Unlink {
        name: String,
    },
    Rename {
        from: String,
        to: String,
        inode: InodeRef,
    },
}

/// A fault waiting for its operation.
#[derive(Clone, Copy, Debug)]
struct ArmedFault {
    op: Option<OpKind>,
    /// Matching operations still to pass before the one that fails.
    remaining: u64,
    kind: FaultKind,
}

/// The whole simulated machine: directory, files, counters, planned faults and power cut.
struct World {
    /// Bumped by every power cut; handles from an older epoch fail with EIO.
    epoch: u64,
    /// Drives torn writes, random crash decisions and yields.
    rng: SimRng,
    /// The directory as reads see it.
    names: BTreeMap<String, InodeRef>,
    /// The directory as of the last successful sync_dir.
    durable_names: BTreeMap<String, InodeRef>,
    /// Directory changes since that sync_dir, in order.
    unsynced_dir: Vec<DirChange>,
    /// Operations performed so far over the disk's life (including failed ones).
    ops_total: u64,
    /// Faults not yet fired.
    faults: Vec<ArmedFault>,
    /// Faults that fired, with the operation each hit, for tests to confirm they did.
    fired: Vec<String>,
    /// A planned power cut: when `ops_total` reaches this, with this mode.
    crash_at: Option<(u64, CrashMode)>,
    /// The operation each power cut interrupted, for tests to count where cuts fell.
    crash_points: Vec<String>,
    /// Percentage of operations that yield to the executor before they run.
    yield_percent: u64,
    /// Writes that overwrote durable bytes holding anything but zeros: (file, offset).
    synced_overwrites: Vec<(String, u64)>,
    /// Writes that overwrote durable bytes that were all zeros (a prepared segment's blocks).
    zero_overwrites: u64,
    /// Whether every operation is printed to stderr, for debugging a failing seed.
    trace: bool,
}

/// The simulated disk, shared by a test and the stores it opens. Cheap to clone.
#[derive(Clone)]
pub struct SimDisk {
    /// Everything, behind one `RefCell`: never borrowed across an await.
    world: Rc<RefCell<World>>,
}

/// The error of an operation that meets a power cut.
fn eio(why: &str) -> io::Error {
    io::Error::other(format!("simulated EIO: {why}"))
}

/// The error an injected fault returns.
fn fault_error(kind: FaultKind) -> io::Error {
    match kind {
        FaultKind::Enospc => io::Error::from_raw_os_error(libc::ENOSPC),
        FaultKind::Eio | FaultKind::ShortWrite => io::Error::from_raw_os_error(libc::EIO),
    }
}

impl SimDisk {
    /// An empty disk whose random decisions all derive from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        let world = World {
            epoch: 0,
            rng: SimRng::new(seed),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            unsynced_dir: Vec::new(),
            ops_total: 0,
            faults: Vec::new(),
            fired: Vec::new(),
            crash_at: None,
            crash_points: Vec::new(),
            yield_percent: 30,
            synced_overwrites: Vec::new(),
            zero_overwrites: 0,
            trace: false,
        };
        SimDisk {
            world: Rc::new(RefCell::new(world)),
        }
    }

    /// A view of the disk as it is now, to open a store on. It dies at the next power cut.
    pub fn disk(&self) -> Rc<dyn Disk> {
        let epoch = self.world.borrow().epoch;
        Rc::new(SimDir {
            world: self.world.clone(),
            epoch,
        })
    }

    /// Arms a fault; it fires once.
    pub fn inject(&self, fault: Fault) {
        let armed = ArmedFault {
            op: fault.op,
            remaining: fault.nth,
            kind: fault.kind,
        };
        self.world.borrow_mut().faults.push(armed);
    }

    /// Disarms every fault that has not fired.
    pub fn clear_faults(&self) {
        self.world.borrow_mut().faults.clear();
    }

    /// The faults that fired so far, each described by the operation it hit.
    pub fn fired_faults(&self) -> Vec<String> {
        self.world.borrow().fired.clone()
    }

    /// Plans a power cut just before the operation that brings the counter to `ops_total`.
    pub fn crash_at(&self, ops_total: u64, mode: CrashMode) {
        self.world.borrow_mut().crash_at = Some((ops_total, mode));
    }

    /// Cancels a planned power cut that has not happened.
    pub fn cancel_crash(&self) {
        self.world.borrow_mut().crash_at = None;
    }

    /// Whether a planned power cut is still to come.
    pub fn crash_pending(&self) -> bool {
        self.world.borrow().crash_at.is_some()
    }

    /// Cuts power now: the disk comes back holding only what was durable plus what `mode` lets
    /// survive, and every handle opened before fails from now on.
    pub fn crash(&self, mode: CrashMode) {
        self.world
            .borrow_mut()
            .power_cut(mode, "between operations".to_string());
    }

    /// Operations performed so far.
    pub fn ops_total(&self) -> u64 {
        self.world.borrow().ops_total
    }

    /// How many power cuts happened.
    pub fn epoch(&self) -> u64 {
        self.world.borrow().epoch
    }

    /// The operation each power cut interrupted, oldest first.
    pub fn crash_points(&self) -> Vec<String> {
        self.world.borrow().crash_points.clone()
    }

    /// Sets how often (percent) an operation yields to the executor first.
    pub fn set_yield_percent(&self, percent: u64) {
        self.world.borrow_mut().yield_percent = percent.min(100);
    }

    /// Prints every operation to stderr from now on (`true`), for debugging a failing seed.
    pub fn set_trace(&self, trace: bool) {
        self.world.borrow_mut().trace = trace;
    }

    /// Every write that overwrote durable bytes other than zeros, as (file, offset). Zeros
    /// are what a prepared log segment holds before records go there; any other durable byte
    /// may be acknowledged data, which must never be written again.
    pub fn synced_overwrites(&self) -> Vec<(String, u64)> {
        self.world.borrow().synced_overwrites.clone()
    }

    /// How many writes overwrote durable bytes that were all zeros.
    pub fn zero_overwrites(&self) -> u64 {
        self.world.borrow().zero_overwrites
    }

    /// The names in the directory as reads see them.
    pub fn names(&self) -> Vec<String> {
        self.world.borrow().names.keys().cloned().collect()
    }

    /// The bytes of `name` as reads see them.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.world
            .borrow()
            .names
            .get(name)
            .map(|inode| inode.borrow().content.clone())
    }
}

/// Applies one write to a byte vector, growing it with zeros as needed.
fn apply_write(bytes: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset..end].copy_from_slice(data);
}

impl World {
    /// Counts an operation and decides its fate: `Err` when power is out for this handle or
    /// is cut now, `Ok(Some(kind))` when an armed fault hits it.
    fn begin(&mut self, epoch: u64, op: OpKind, what: &str) -> io::Result<Option<FaultKind>> {
        if epoch != self.epoch {
            return Err(eio("the handle was opened before a power cut"));
        }
        self.ops_total += 1;
        if let Some((at, mode)) = self.crash_at {
            if self.ops_total >= at {
                self.power_cut(mode, format!("{op:?} {what}"));
                return Err(eio("power cut"));
            }
        }
        let mut hit = None;
        for (index, fault) in self.faults.iter_mut().enumerate() {
            if fault.op.is_some_and(|kind| kind != op) {
                continue;
            }
            if fault.remaining == 0 {
                hit = Some(index);
                break;
            }
            fault.remaining -= 1;
        }
        if self.trace {
            let fault = hit.map(|index| self.faults[index].kind);
            eprintln!("sim op {}: {op:?} {what} fault {fault:?}", self.ops_total);
        }
        Ok(hit.map(|index| {
            let fault = self.faults.remove(index);
            self.fired
                .push(format!("{:?} on {op:?} {what}", fault.kind));
            fault.kind
        }))
    }

    /// Replaces the disk by what survives a power cut in `mode`.
    fn power_cut(&mut self, mode: CrashMode, point: String) {
        self.crash_at = None;
        self.crash_points.push(point);
        self.epoch += 1;
        let mut names = self.durable_names.clone();
        for change in std::mem::take(&mut self.unsynced_dir) {
            if !self.survives(mode) {
                continue;
            }
            match change {
                DirChange::Link { name, inode } => {
                    names.insert(name, inode);
                }
                DirChange::Unlink { name } => {
                    names.remove(&name);
                }
                DirChange::Rename { from, to, inode } => {
                    names.remove(&from);
                    names.insert(to, inode);
                }
            }
        }
        // Rebuild each surviving file as a fresh inode, so handles from before the cut can
        // never reach the new contents.
        let mut rebuilt: Vec<(InodeRef, InodeRef)> = Vec::new();
        let mut survivors = BTreeMap::new();
        for (name, old) in names {
            let existing = rebuilt
                .iter()
                .find(|(from, _)| Rc::ptr_eq(from, &old))
                .map(|(_, to)| to.clone());
            let new = match existing {
                Some(new) => new,
                None => {
                    let bytes = self.surviving_bytes(&old.borrow(), mode);
                    let inode = Inode {
                        content: bytes.clone(),
                        durable: bytes,
                        unsynced: Vec::new(),
                    };
                    let new = Rc::new(RefCell::new(inode));
                    rebuilt.push((old.clone(), new.clone()));
                    new
                }
            };
            survivors.insert(name, new);
        }
        self.names = survivors.clone();
        self.durable_names = survivors;
    }

    /// Whether one unsynced change (other than a write) survives a cut in `mode`.
    fn survives(&mut self, mode: CrashMode) -> bool {
        match mode {
            CrashMode::DropUnsynced => false,
            CrashMode::KeepUnsynced => true,
            CrashMode::Random => self.rng.chance(50),
        }
    }

    /// A file's bytes after a cut: what was durable, plus each unsynced change as `mode` says.
    fn surviving_bytes(&mut self, inode: &Inode, mode: CrashMode) -> Vec<u8> {
        let mut bytes = inode.durable.clone();
        for change in &inode.unsynced {
            match change {
                FileChange::Truncate { len } => {
                    if self.survives(mode) {
                        bytes.resize(*len, 0);
                    }
                }
                FileChange::Write { offset, data, .. } if change_is_durable(change) => {
                    apply_write(&mut bytes, *offset, data);
                }
                FileChange::Write { offset, data, .. } => {
                    let blocks = data.len().div_ceil(BLOCK_BYTES) as u64;
                    let kept_blocks = match mode {
                        CrashMode::DropUnsynced => 0,
                        CrashMode::KeepUnsynced => blocks,
                        CrashMode::Random => match self.rng.below(3) {
                            0 => 0,
                            1 => blocks,
                            _ => self.rng.below(blocks + 1),
                        },
                    };
                    let kept = (kept_blocks as usize * BLOCK_BYTES).min(data.len());
                    if kept > 0 {
                        apply_write(&mut bytes, *offset, &data[..kept]);
                    }
                }
            }
        }
        bytes
    }

    /// Performs a write on `inode`, remembering it as unsynced.
    fn write(&mut self, name: &str, inode: &InodeRef, offset: usize, data: &[u8]) {
        let mut inode = inode.borrow_mut();
        if offset < inode.durable.len() {
            let end = (offset + data.len()).min(inode.durable.len());
            if inode.durable[offset..end].iter().all(|byte| *byte == 0) {
                self.zero_overwrites += 1;
            } else {
                self.synced_overwrites
                    .push((name.to_string(), offset as u64));
            }
        }
        apply_write(&mut inode.content, offset, data);
        inode.unsynced.push(FileChange::Write {
            offset,
            data: data.to_vec(),
            durable: false,
        });
    }

    /// Makes the newest write to `inode` durable on its own (the sync half of
    /// `write_durable_at`), then folds the changes that now survive every cut, a prefix of
    /// durable writes, into the durable bytes, so a log written only this way keeps no list.
    fn sync_last_write(inode: &InodeRef) {
        let mut inode = inode.borrow_mut();
        if let Some(FileChange::Write { durable, .. }) = inode.unsynced.last_mut() {
            *durable = true;
        }
        let folded = inode
            .unsynced
            .iter()
            .take_while(|change| change_is_durable(change))
            .count();
        let changes: Vec<FileChange> = inode.unsynced.drain(..folded).collect();
        for change in changes {
            if let FileChange::Write { offset, data, .. } = change {
                apply_write(&mut inode.durable, offset, &data);
            }
        }
    }

    /// How many whole blocks of a `len`-byte write a fault lets through.
    fn torn_prefix(&mut self, len: usize) -> usize {
        let blocks = len.div_ceil(BLOCK_BYTES) as u64;
        // Strictly fewer than all, so a short write is really short.
        let kept = self.rng.below(blocks.max(1));
        (kept as usize * BLOCK_BYTES).min(len)
    }
}

/// Whether a change was made durable on its own (a finished `write_durable_at`).
fn change_is_durable(change: &FileChange) -> bool {
    matches!(change, FileChange::Write { durable: true, .. })
}

/// Yields to the executor now and then, as a real disk's latency would.
async fn maybe_yield(world: &RefCell<World>) {
    let yields = {
        let mut world = world.borrow_mut();
        let percent = world.yield_percent;
        if world.rng.chance(percent) {
            1 + world.rng.below(3)
        } else {
            0
        }
    };
    for _ in 0..yields {
        futures_lite::future::yield_now().await;
    }
}

/// A view of the directory, valid until the next power cut.
struct SimDir {
    world: Rc<RefCell<World>>,
    /// The power epoch this view belongs to.
    epoch: u64,
}

/// Fails an operation that is not a write with the error its fault asks for.
fn fail_unless_clean(fault: Option<FaultKind>) -> io::Result<()> {
    match fault {
        None => Ok(()),
        Some(kind) => Err(fault_error(kind)),
    }
}

impl Disk for SimDir {
    fn open_file<'a>(&'a self, name: &'a str, create: bool) -> IoFuture<'a, Rc<dyn DiskFile>> {
        Box::pin(async move {
            maybe_yield(&self.world).await;
            let mut world = self.world.borrow_mut();
            fail_unless_clean(world.begin(self.epoch, OpKind::Open, name)?)?;
            let inode = match world.names.get(name) {
                Some(inode) => inode.clone(),
                None if create => {
                    let inode: InodeRef = Rc::default();
                    world.names.insert(name.to_string(), inode.clone());
                    let link = DirChange::Link {
                        name: name.to_string(),
                        inode: inode.clone(),
                    };
                    world.unsynced_dir.push(link);
                    inode
                }
                None => return Err(io::Error::from(io::ErrorKind::NotFound)),
            };
            let file = SimFile {
                world: self.world.clone(),
                epoch: self.epoch,
                inode,
                name: name.to_string(),
            };
            Ok(Rc::new(file) as Rc<dyn DiskFile>)
        })
    }

    fn list(&self) -> IoFuture<'_, Vec<String>> {
        Box::pin(async move {
            maybe_yield(&self.world).await;
            let mut world = self.world.borrow_mut();
            fail_unless_clean(world.begin(self.epoch, OpKind::List, "directory")?)?;
            Ok(world.names.keys().cloned().collect())
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> IoFuture<'a, ()> {
        Box::pin(async move {
            maybe_yield(&self.world).await;
            let mut world = self.world.borrow_mut();
            fail_unless_clean(world.begin(self.epoch, OpKind::Remove, name)?)?;
            if world.names.remove(name).is_none() {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            world.unsynced_dir.push(DirChange::Unlink {
                name: name.to_string(),
            });
            Ok(())
        })
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> IoFuture<'a, ()> {
        Box::pin(async move {
            maybe_yield(&self.world).await;
            let mut world = self.world.borrow_mut();
            fail_unless_clean(world.begin(self.epoch, OpKind::Rename, from)?)?;
            let Some(inode) = world.names.remove(from) else {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            };
            world.names.insert(to.to_string(), inode.clone());
            let rename = DirChange::Rename {
                from: from.to_string(),
                to: to.to_string(),
                inode,
            };
            world.unsynced_dir.push(rename);
            Ok(())
        })
    }

    fn sync_dir(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            maybe_yield(&self.world).await;
            let mut world = self.world.borrow_mut();
            fail_unless_clean(world.begin(self.epoch, OpKind::SyncDir, "directory")?)?;
            world.durable_names = world.names.clone();
            world.unsynced_dir.clear();
            Ok(())
        })
    }
}

/// One open file, valid until the next power cut.
struct SimFile {
    world: Rc<RefCell<World>>,
    /// The power epoch this handle belongs to.
    epoch: u64,
    /// The file's contents; it stays reachable after its name is removed, as on POSIX.
    inode: InodeRef,
    /// The name it was opened by, for messages.
    name: String,
}

impl DiskFile for SimFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize> {
        Box::pin(async move {
            assert_eq!(
                offset % BLOCK_BYTES as u64,
                0,
                "O_DIRECT write at unaligned offset {offset}"
            );
            assert_eq!(
                data.len() % BLOCK_BYTES,
                0,
                "O_DIRECT write of unaligned length {}",
                data.len()
            );
            maybe_yield(&self.world).await;
            let mut world = self.world.borrow_mut();
            let fault = world.begin(self.epoch, OpKind::Write, &self.name)?;
            let offset = offset as usize;
            match fault {
                None => {
                    world.write(&self.name, &self.inode, offset, data);
                    Ok(data.len())
                }
                Some(kind) => {
                    let kept = world.torn_prefix(data.len());
                    if kept > 0 {
                        world.write(&self.name, &self.inode, offset, &data[..kept]);
                    }
                    match kind {
                        FaultKind::ShortWrite => Ok(kept),
                        FaultKind::Eio | FaultKind::Enospc => Err(fault_error(kind)),
                    }
                }
            }
        })
    }

    fn write_durable_at<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, usize> {
        Box::pin(async move {
            let written = self.write_at(offset, data).await?;
            if written != data.len() {
                // A short write reports its count; nothing was synced.
                return Ok(written);
            }
            // No yield between the halves: nothing else touches the file in between, so the
            // write to make durable is the newest change.
            let mut world = self.world.borrow_mut();
            fail_unless_clean(world.begin(self.epoch, OpKind::Fdatasync, &self.name)?)?;
            World::sync_last_write(&self.inode);
            Ok(written)
        })
    }

    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Vec<u8>> {
        Box::pin(async move {
            maybe_yield(&self.world).await;
            let mut world = self.world.borrow_mut();
            fail_unless_clean(world.begin(self.epoch, OpKind::Read, &self.name)?)?;
            let inode = self.inode.borrow();
            let start = (offset as usize).min(inode.content.len());
            let end = start.saturating_add(len).min(inode.content.len());
            Ok(inode.content[start..end].to_vec())
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            maybe_yield(&self.world).await;
            let mut world = self.world.borrow_mut();
            fail_unless_clean(world.begin(self.epoch, OpKind::Fdatasync, &self.name)?)?;
            let mut inode = self.inode.borrow_mut();
            inode.durable = inode.content.clone();
            inode.unsynced.clear();
            Ok(())
        })
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            maybe_yield(&self.world).await;
            let mut world = self.world.borrow_mut();
            fail_unless_clean(world.begin(self.epoch, OpKind::Truncate, &self.name)?)?;
            let mut inode = self.inode.borrow_mut();
            inode.content.resize(len as usize, 0);
            inode
                .unsynced
                .push(FileChange::Truncate { len: len as usize });
            Ok(())
        })
    }

    fn len(&self) -> IoFuture<'_, u64> {
        Box::pin(async move {
            maybe_yield(&self.world).await;
            let mut world = self.world.borrow_mut();
            fail_unless_clean(world.begin(self.epoch, OpKind::Len, &self.name)?)?;
            Ok(self.inode.borrow().content.len() as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK_BYTES]
    }

    /// Creates the empty file `name` and makes it and its directory entry durable.
    async fn create_durably(disk: &dyn Disk, name: &str) -> Rc<dyn DiskFile> {
        let file = disk.open_file(name, true).await.expect("create");
        file.fdatasync().await.expect("sync");
        disk.sync_dir().await.expect("sync dir");
        file
    }

    /// Runs a future that the simulated disk completes without an executor's I/O.
    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        futures_lite::future::block_on(future)
    }

    #[test]
    fn only_synced_bytes_and_names_survive_a_drop_cut() {
        let sim = SimDisk::new(1);
        sim.set_yield_percent(0);
        let disk = sim.disk();
        block_on(async {
            let file = disk.open_file("a", true).await.expect("create");
            file.write_at(0, &block(1)).await.expect("write");
            file.fdatasync().await.expect("sync");
            file.write_at(4096, &block(2)).await.expect("write");
            assert_eq!(file.len().await.expect("len"), 8192);
        });
        sim.crash(CrashMode::DropUnsynced);
        // The name was never synced: the file is gone with it.
        assert!(sim.names().is_empty());
        let disk = sim.disk();
        block_on(async {
            let file = disk.open_file("a", true).await.expect("create");
            file.write_at(0, &block(1)).await.expect("write");
            file.fdatasync().await.expect("sync");
            disk.sync_dir().await.expect("sync dir");
            file.write_at(4096, &block(2)).await.expect("write");
            disk.rename("a", "b").await.expect("rename");
        });
        sim.crash(CrashMode::DropUnsynced);
        assert_eq!(sim.names(), vec!["a".to_string()]);
        assert_eq!(sim.file_bytes("a"), Some(block(1)));
    }

    #[test]
    fn keep_cut_keeps_everything_and_old_handles_die() {
        let sim = SimDisk::new(2);
        let disk = sim.disk();
        let file = block_on(async {
            let file = disk.open_file("a", true).await.expect("create");
            file.write_at(0, &[block(1), block(2)].concat())
                .await
                .expect("write");
            disk.rename("a", "b").await.expect("rename");
            file
        });
        sim.crash(CrashMode::KeepUnsynced);
        assert_eq!(sim.names(), vec!["b".to_string()]);
        assert_eq!(sim.file_bytes("b").map(|bytes| bytes.len()), Some(8192));
        assert!(block_on(file.len()).is_err());
        assert!(block_on(disk.list()).is_err());
        assert!(block_on(sim.disk().list()).is_ok());
    }

    #[test]
    fn random_cut_tears_writes_at_block_boundaries() {
        let mut lengths = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let sim = SimDisk::new(seed);
            let disk = sim.disk();
            block_on(async {
                let file = create_durably(disk.as_ref(), "a").await;
                file.write_at(0, &[block(1), block(2), block(3)].concat())
                    .await
                    .expect("write");
            });
            sim.crash(CrashMode::Random);
            let bytes = sim.file_bytes("a").expect("synced name survives");
            assert_eq!(bytes.len() % BLOCK_BYTES, 0);
            for (index, chunk) in bytes.chunks(BLOCK_BYTES).enumerate() {
                assert_eq!(
                    chunk,
                    block(index as u8 + 1).as_slice(),
                    "a torn write keeps a prefix"
                );
            }
            lengths.insert(bytes.len());
        }
        assert_eq!(
            lengths.len(),
            4,
            "dropped, kept and both torn prefixes all occur: {lengths:?}"
        );
    }

    #[test]
    fn a_durable_write_survives_a_cut_that_drops_earlier_writes() {
        let sim = SimDisk::new(5);
        sim.set_yield_percent(0);
        let disk = sim.disk();
        block_on(async {
            let file = create_durably(disk.as_ref(), "a").await;
            file.write_at(0, &block(1)).await.expect("volatile write");
            let written = file.write_durable_at(4096, &block(2)).await;
            assert_eq!(written.expect("durable write"), 4096);
        });
        sim.crash(CrashMode::DropUnsynced);
        // The earlier write was volatile and is gone; the durable one and the size it grew
        // the file to survive.
        assert_eq!(sim.file_bytes("a"), Some([block(0), block(2)].concat()));
    }

    #[test]
    fn a_cut_inside_a_durable_write_leaves_it_volatile() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let sim = SimDisk::new(seed);
            sim.set_yield_percent(0);
            let disk = sim.disk();
            block_on(async {
                let file = create_durably(disk.as_ref(), "a").await;
                // Operations so far: open, fdatasync, sync_dir; the write is the 4th, its
                // sync half the 5th: the cut falls between them.
                sim.crash_at(5, CrashMode::Random);
                let data = [block(1), block(2)].concat();
                assert!(file.write_durable_at(0, &data).await.is_err());
            });
            assert_eq!(sim.crash_points(), vec!["Fdatasync a".to_string()]);
            let bytes = sim.file_bytes("a").expect("synced name survives");
            outcomes.insert(bytes.len() / BLOCK_BYTES);
        }
        assert_eq!(
            outcomes.into_iter().collect::<Vec<_>>(),
            vec![0, 1, 2],
            "dropped, torn and kept all occur"
        );
    }

    #[test]
    fn overwriting_durable_zeros_is_told_apart_from_overwriting_data() {
        let sim = SimDisk::new(6);
        sim.set_yield_percent(0);
        let disk = sim.disk();
        block_on(async {
            let file = disk.open_file("a", true).await.expect("create");
            file.write_at(0, &[block(0), block(0)].concat())
                .await
                .expect("zero fill");
            file.fdatasync().await.expect("sync");
            file.write_durable_at(0, &block(1)).await.expect("record");
            assert_eq!(sim.zero_overwrites(), 1);
            assert!(sim.synced_overwrites().is_empty());
            file.write_durable_at(0, &block(2)).await.expect("rewrite");
        });
        assert_eq!(sim.synced_overwrites(), vec![("a".to_string(), 0)]);
    }

    #[test]
    fn faults_fire_once_at_the_nth_operation() {
        let sim = SimDisk::new(3);
        let disk = sim.disk();
        sim.inject(Fault {
            op: Some(OpKind::Write),
            nth: 1,
            kind: FaultKind::ShortWrite,
        });
        sim.inject(Fault {
            op: Some(OpKind::Fdatasync),
            nth: 0,
            kind: FaultKind::Enospc,
        });
        block_on(async {
            let file = disk.open_file("a", true).await.expect("create");
            assert_eq!(
                file.write_at(0, &block(1)).await.expect("first write"),
                4096
            );
            let written = file
                .write_at(4096, &[block(2), block(3)].concat())
                .await
                .expect("short");
            assert!(written < 8192);
            let error = file.fdatasync().await.expect_err("fault");
            assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
            file.fdatasync().await.expect("the fault fired once");
        });
        assert_eq!(sim.fired_faults().len(), 2);
    }

    #[test]
    fn planned_crash_cuts_power_at_its_operation() {
        let sim = SimDisk::new(4);
        let disk = sim.disk();
        sim.crash_at(3, CrashMode::KeepUnsynced);
        block_on(async {
            let file = disk.open_file("a", true).await.expect("op 1");
            file.write_at(0, &block(1)).await.expect("op 2");
            assert!(file.fdatasync().await.is_err(), "op 3 meets the power cut");
        });
        assert_eq!(sim.epoch(), 1);
        assert_eq!(sim.crash_points(), vec!["Fdatasync a".to_string()]);
        assert_eq!(sim.file_bytes("a"), Some(block(1)));
    }
}
