//! Shared by the uapi scenario tests: a caller's file table that holds the files the engine
//! installs (fds from 100 up) and knows no iommufd or eventfd; a caller's memory that refuses
//! writes after the first few; IOMMU_TEST_CMD builders.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use uiommu_core::Context;
use uiommu_platform::memory::{MemFault, SimMemory, UserMemory};
use uiommu_platform::UserVa;
use uiommu_uapi::abi::IommuTestCmd;
use uiommu_uapi::{EngineFile, Errno, FdTable};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// EBADF.
const EBADF: Errno = 9;

/// A file table that can hold installed engine files (fds from 100 up).
#[derive(Default)]
pub struct Fds {
    files: Mutex<BTreeMap<i32, Arc<dyn EngineFile>>>,
}

impl Fds {
    /// `close(fd)`: drop the table's reference; false if `fd` was not open.
    pub fn close(&self, fd: i32) -> bool {
        self.files.lock().unwrap().remove(&fd).is_some()
    }

    /// How many installed files are still open.
    pub fn open_count(&self) -> usize {
        self.files.lock().unwrap().len()
    }
}

impl FdTable for Fds {
    fn iommufd(&self, _fd: i32) -> Result<Context, Errno> {
        Err(EBADF)
    }
    fn eventfd(&self, _fd: i32) -> Result<Box<dyn Fn() + Send + Sync>, Errno> {
        Err(EBADF)
    }
    fn install(&self, file: Arc<dyn EngineFile>, _cloexec: bool) -> Result<i32, Errno> {
        let mut files = self.files.lock().unwrap();
        let fd = files.keys().next_back().map_or(100, |k| k + 1);
        files.insert(fd, file);
        Ok(fd)
    }
    fn uninstall(&self, fd: i32) {
        self.files.lock().unwrap().remove(&fd);
    }
    fn file(&self, fd: i32) -> Result<Arc<dyn EngineFile>, Errno> {
        self.files.lock().unwrap().get(&fd).cloned().ok_or(EBADF)
    }
}

/// A test command for `op` on object `id` with payload `p`.
pub fn tcmd<P: IntoBytes + Immutable>(op: u32, id: u32, p: &P) -> IommuTestCmd {
    let mut c = IommuTestCmd {
        size: 72,
        op,
        id,
        ..Default::default()
    };
    let src = p.as_bytes();
    c.payload.as_mut_bytes()[..src.len()].copy_from_slice(src);
    c
}

/// The payload of a replied command.
pub fn out<P: FromBytes>(c: &IommuTestCmd) -> P {
    P::read_from_prefix(c.payload.as_bytes()).unwrap().0
}

/// The caller's memory taking its first `n` writes and refusing the rest (a reply that cannot
/// be written back; with `n` = 1, memory unmapped by another thread between two replies).
pub struct Writes<'a> {
    mem: &'a SimMemory,
    left: AtomicUsize,
}

impl Writes<'_> {
    /// Every write refused.
    pub fn none(mem: &SimMemory) -> Writes<'_> {
        Writes::first(mem, 0)
    }

    /// The first `n` writes taken.
    pub fn first(mem: &SimMemory, n: usize) -> Writes<'_> {
        Writes {
            mem,
            left: AtomicUsize::new(n),
        }
    }

    fn exhausted(&self) -> bool {
        self.left.load(Ordering::SeqCst) == 0
    }
}

impl UserMemory for Writes<'_> {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        self.mem.read(va, buf)
    }
    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        let took = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if took.is_err() {
            return Err(MemFault::ReadOnly(va));
        }
        self.mem.write(va, data)
    }
    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        if write && self.exhausted() {
            return Err(MemFault::ReadOnly(va));
        }
        self.mem.probe(va, len, write)
    }
}
