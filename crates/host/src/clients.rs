//! The processes the engine serves: who each is (from the kernel, never from the client's
//! word), its memory as the engine reads and writes it, its address space in the engine, and
//! the fds the engine takes from it.
//!
//! A process is known by its pid, checked against a pidfd: once the process exits, its pidfd
//! becomes readable, the watcher retires it (its memory reads nothing any more: a DMA to an
//! area it mapped faults instead of reaching whatever process reuses the pid), and a later
//! caller with the same pid is a new process with an address space of its own.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uiommu_core::Engine;
use uiommu_platform::memory::{MemFault, SpaceId, UserMemory};
use uiommu_platform::process_memory::ProcessMemory;
use uiommu_platform::UserVa;
use uiommu_uapi::Errno;

/// A client process's memory: the live process's, nothing once it exited.
pub struct ClientMemory {
    mem: ProcessMemory,
    alive: AtomicBool,
    /// Bytes read and written on the process's behalf (for `uiommu status`).
    pub moved: AtomicU64,
}

impl ClientMemory {
    fn live(&self, va: UserVa) -> Result<&ProcessMemory, MemFault> {
        if self.alive.load(Ordering::Acquire) {
            Ok(&self.mem)
        } else {
            Err(MemFault::Unmapped(va))
        }
    }
}

impl UserMemory for ClientMemory {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        self.live(va)?.read(va, buf)?;
        self.moved.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        self.live(va)?.write(va, data)?;
        self.moved.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        self.live(va)?.probe(va, len, write)
    }

    fn hold(&self, va: UserVa, len: u64, write: bool) -> Vec<uiommu_platform::memory::Held> {
        match self.live(va) {
            Ok(m) => m.hold(va, len, write),
            Err(_) => Vec::new(),
        }
    }

    fn page_size_at(&self, va: UserVa) -> u64 {
        match self.live(va) {
            Ok(m) => m.page_size_at(va),
            Err(_) => uiommu_platform::PAGE_SIZE,
        }
    }

    fn copy_within(&self, dst: UserVa, src: UserVa, len: u64) -> Option<Result<(), MemFault>> {
        match self.live(src) {
            Ok(m) => m.copy_within(dst, src, len),
            Err(e) => Some(Err(e)),
        }
    }
}

/// One client process.
pub struct Process {
    /// Its pid (in the engine's pid namespace).
    pub pid: i32,
    /// Its real uid, as the kernel stamped its first message.
    pub uid: u32,
    /// Its address space in the engine.
    pub space: SpaceId,
    /// Its memory.
    pub mem: Arc<ClientMemory>,
    /// A pidfd of it: what fds are taken from, and what says it exited.
    pub pidfd: OwnedFd,
    /// Whether it asked for root's privileges in the emulation and was granted them.
    pub as_root: AtomicBool,
    /// Rings served for it now (`crate::ring`, at most `ring::PER_PROCESS`).
    pub rings: std::sync::atomic::AtomicUsize,
}

impl Process {
    /// The capabilities the kernel would read from the process now: root's with
    /// [`Process::as_root`] or when the engine grants them to everyone (`all_root`:
    /// `uiommu serve --as-root`), else its effective set (`capget`).
    pub fn caps(&self, all_root: bool) -> uiommu_core::CallerCaps {
        let caps = if all_root || self.as_root.load(Ordering::Acquire) {
            u64::MAX
        } else {
            // Read at every call too: a program may drop a capability while it runs.
            uiommu_sys::effective_caps_of(self.pid).unwrap_or(0)
        };
        uiommu_core::CallerCaps {
            cap_ipc_lock: caps & (1 << 14) != 0,
            cap_sys_resource: caps & (1 << 24) != 0,
        }
    }

    /// The process's RLIMIT_MEMLOCK now, in pages (`None`: unlimited; `prlimit`).
    pub fn memlock_pages(&self) -> Option<u64> {
        // Linux's default (8 MiB) if it cannot be read.
        let memlock = uiommu_sys::memlock_limit_of(self.pid).unwrap_or(Some(8 << 20));
        memlock.map(|b| b / uiommu_platform::PAGE_SIZE)
    }

    /// Whether the process has exited (its pidfd is readable).
    pub(crate) fn exited(&self) -> bool {
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// A duplicate of the process's fd `fd` (`pidfd_getfd`): EBADF when it is not open.
    pub fn take_fd(&self, fd: i32) -> Result<OwnedFd, Errno> {
        if fd < 0 {
            return Err(nix::libc::EBADF);
        }
        pidfd_getfd(&self.pidfd, fd, PidfdGetfdFlags::empty()).map_err(|e| {
            match e.raw_os_error() {
                // The process exited meanwhile: as if the fd were closed.
                nix::libc::ESRCH => nix::libc::EBADF,
                e => e,
            }
        })
    }

    fn retire(&self) {
        self.mem.alive.store(false, Ordering::Release);
        uiommu_platform::process_memory::release_recent_held();
    }
}

/// The parent of process `pid` (`/proc/PID/stat`, field 4).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The processes known to the engine.
#[derive(Default)]
pub struct Clients {
    map: Mutex<HashMap<i32, Arc<Process>>>,
}

impl Clients {
    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Arc<Process>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process `pid` (of real uid `uid`, as the kernel says), registered on its first
    /// call; `watch` is given the pidfd of a newly registered process.
    pub fn get(
        &self,
        engine: &Engine,
        pid: i32,
        uid: u32,
        watch: impl FnOnce(&Process),
    ) -> Result<Arc<Process>, Errno> {
        let mut map = self.lock();
        // The caller reaps before it asks (`Host::reap`), so a process that exited is gone
        // from the map by now, before its pid could be reused.
        if let Some(p) = map.get(&pid) {
            if p.uid == uid {
                return Ok(p.clone());
            }
            // The pid was reused before the watcher saw the exit.
            p.retire();
            map.remove(&pid);
        }
        let raw = Pid::from_raw(pid).ok_or(nix::libc::ESRCH)?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).map_err(|e| e.raw_os_error())?;
        let mem = Arc::new(ClientMemory {
            mem: ProcessMemory::of(pid).holding(),
            alive: AtomicBool::new(true),
            moved: AtomicU64::new(0),
        });
        // Pins from this space are charged to the process's user.
        let space = engine.add_space_of_user(mem.clone() as Arc<dyn UserMemory>, uid);
        let p = Arc::new(Process {
            pid,
            uid,
            space,
            mem,
            pidfd,
            as_root: AtomicBool::new(false),
            rings: std::sync::atomic::AtomicUsize::new(0),
        });
        // A fork child has the privileges in the emulation of its nearest known ancestor
        // (it says hello only when it execs; a harness may fork twice before calling).
        let mut at = pid;
        for _ in 0..16 {
            let Some(pp) = parent_of(at).filter(|&pp| pp > 1) else {
                break;
            };
            if let Some(known) = map.get(&pp) {
                p.as_root
                    .store(known.as_root.load(Ordering::Acquire), Ordering::Release);
                break;
            }
            at = pp;
        }
        watch(&p);
        map.insert(pid, p.clone());
        Ok(p)
    }

    /// Process `pid` exited: forget it and make its memory unreachable.
    pub fn exited(&self, pid: i32) {
        let mut map = self.lock();
        if map.get(&pid).is_some_and(|p| p.exited()) {
            if let Some(p) = map.remove(&pid) {
                p.retire();
            }
        }
    }

    /// Every live process known.
    pub fn all(&self) -> Vec<Arc<Process>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by_key(|p| p.pid);
        v
    }
}
