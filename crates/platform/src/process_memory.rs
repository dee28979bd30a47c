//! The memory of a real process (by default the calling one), as DMA and pinning see it.
//!
//! [`ProcessMemory`] reads and writes with `process_vm_readv`/`process_vm_writev`, which the
//! kernel checks against the target's page tables: an unmapped address, or a write to a
//! read-only mapping, is an EFAULT from the system call — reported as a [`MemFault`], never a
//! crash of the host program. (For the calling process, a range on the calling thread's live
//! stack — where an ioctl's argument struct usually is — is copied directly instead: that
//! memory is mapped for certain; see `uiommu_sys::read_own_stack`.) Probing (what pinning does first) asks the kernel which mappings
//! cover the range (one PROCMAP_QUERY ioctl per mapping on a kept-open `/proc/<pid>/maps`;
//! before Linux 6.11, by reading that file) to see that every page of the range is mapped,
//! readable, and writable if asked.
//!
//! This is how an embedding VMM hands its own guest-RAM mappings to the engine, and how the
//! ABI front-end serves an unmodified program in its own process.

use crate::addr::{UserVa, PAGE_SIZE};
use crate::memory::{Held, HeldFile, MemFault, UserMemory};
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

/// The `/proc/<pid>/maps` descriptor PROCMAP_QUERY asks, opened on first use.
struct MapsFile {
    pid: i32,
    file: std::fs::File,
    dev: u64,
    ino: u64,
}

static MAPS: Mutex<Option<MapsFile>> = Mutex::new(None);

std::thread_local! {
    /// The last range this thread probed by query: (pid, start, end, any mapping shared).
    static LAST_PROBE: std::cell::Cell<(i32, u64, u64, bool)> =
        const { std::cell::Cell::new((0, 0, 0, true)) };
    /// The one mapping that covered all of that range, when one did.
    static LAST_VMA: std::cell::Cell<Option<uiommu_sys::Vma>> =
        const { std::cell::Cell::new(None) };
}

/// Whether no program code runs in this process (a host engine): then nothing closes or
/// replaces the kept `/proc/<pid>/maps` descriptor behind our back, and it is reused
/// without checking it is still the file opened.
static PRIVATE_FDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Say that this process runs no program code (`uiommu serve`): descriptors the engine keeps
/// are its own ([`PRIVATE_FDS`]).
pub fn set_private_fds() {
    PRIVATE_FDS.store(true, std::sync::atomic::Ordering::Release);
}

/// The files held for pins, by (device, inode, opened for writing): one descriptor per file.
type HeldFiles = std::collections::HashMap<((u32, u32), u64, bool), std::sync::Weak<HeldFile>>;

static HELD_FILES: std::sync::LazyLock<Mutex<HeldFiles>> =
    std::sync::LazyLock::new(|| Mutex::new(HeldFiles::new()));

/// The files held most recently, kept alive a while after their last pin goes: a program that
/// maps and unmaps the same buffer again and again (each map pinning it anew) finds its file
/// held and mapped already, instead of opening and mapping it for every pin. At most this many;
/// the oldest goes first (keeping its pages alive until then, as they would be while mapped).
const RECENT_HELD: usize = 8;

static RECENT: Mutex<std::collections::VecDeque<std::sync::Arc<HeldFile>>> =
    Mutex::new(std::collections::VecDeque::new());

/// `f` was just used for a pin: first among the recent ones.
fn keep_recent(f: &std::sync::Arc<HeldFile>) {
    let mut r = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if r.front().is_some_and(|x| std::sync::Arc::ptr_eq(x, f)) {
        return;
    }
    r.retain(|x| !std::sync::Arc::ptr_eq(x, f));
    r.push_front(f.clone());
    r.truncate(RECENT_HELD);
}

/// Let the recently held files go (a process the engine served is gone: the files it pinned
/// recently need not outlive it); those still pinned stay held by their pins.
pub fn release_recent_held() {
    RECENT.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

fn lock_held_files() -> std::sync::MutexGuard<'static, HeldFiles> {
    HELD_FILES.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `/proc/<pid>/fd/<n>` path of a descriptor process `pid` holds on the file (`dev`, `inode`).
fn fd_of_file(pid: i32, dev: (u32, u32), inode: u64) -> Option<String> {
    let want = nix::sys::stat::makedev(u64::from(dev.0), u64::from(dev.1));
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == inode && m.dev() == want))
        .map(|p| p.display().to_string())
}

/// A process's memory, accessed through the kernel.
#[derive(Debug, Clone, Copy)]
pub struct ProcessMemory {
    pid: Pid,
    /// The calling process itself: accesses to the calling thread's live stack need no
    /// system call.
    own: bool,
    /// Whether pins hold the files behind `MAP_SHARED` ranges ([`UserMemory::hold`]).
    holds: bool,
}

impl ProcessMemory {
    /// The calling process.
    pub fn this() -> ProcessMemory {
        ProcessMemory {
            pid: Pid::this(),
            own: true,
            holds: false,
        }
    }

    /// Another process (needs ptrace-level permission over it).
    pub fn of(pid: i32) -> ProcessMemory {
        ProcessMemory {
            pid: Pid::from_raw(pid),
            own: u32::try_from(pid).is_ok_and(|p| p == std::process::id()),
            holds: false,
        }
    }

    /// The same memory, with pins of its `MAP_SHARED` ranges holding their files
    /// ([`shared_files`](Self::shared_files)), as the host engine's clients' memory does.
    pub fn holding(self) -> ProcessMemory {
        ProcessMemory {
            holds: true,
            ..self
        }
    }

    fn remote(va: UserVa, len: usize) -> Result<RemoteIoVec, MemFault> {
        let base = usize::try_from(va.raw()).map_err(|_| MemFault::Unmapped(va))?;
        base.checked_add(len).ok_or(MemFault::Unmapped(va))?;
        Ok(RemoteIoVec { base, len })
    }

    /// Whether every address of `[va, va + len)` is mapped readable (and writable if `write`);
    /// the error names the first address that is not.
    fn covered(&self, va: u64, len: u64, write: bool) -> Result<(), MemFault> {
        let end = va.checked_add(len).ok_or(MemFault::Unmapped(UserVa(va)))?;
        match self.covered_by_query(va, end, write) {
            Some(answer) => answer,
            None => self.covered_by_reading(va, end, write),
        }
    }

    /// [`covered`](Self::covered) with one PROCMAP_QUERY ioctl per mapping of the range, on a
    /// `/proc/<pid>/maps` descriptor kept open between calls. `None` when the kernel cannot
    /// answer (before Linux 6.11), so that the caller reads the file instead.
    fn covered_by_query(&self, va: u64, end: u64, write: bool) -> Option<Result<(), MemFault>> {
        let mut shared = false;
        let mut covering = None;
        let r = self.with_maps(|maps| {
            let mut at = va;
            while at < end {
                match uiommu_sys::procmap_query(maps, at) {
                    Err(_) => return None,
                    Ok(None) => return Some(Err(MemFault::Unmapped(UserVa(at)))),
                    Ok(Some(v)) if !v.readable => return Some(Err(MemFault::Unmapped(UserVa(at)))),
                    Ok(Some(v)) if write && !v.writable => {
                        return Some(Err(MemFault::ReadOnly(UserVa(at))))
                    }
                    Ok(Some(v)) => {
                        shared |= v.shared;
                        covering = (v.start <= va && end <= v.end).then_some(v);
                        at = v.end;
                    }
                }
            }
            Some(Ok(()))
        })??;
        // What [`ProcessMemory::shared_files`] right after needs to know.
        LAST_PROBE.with(|c| c.set((self.pid.as_raw(), va, end, shared)));
        LAST_VMA.with(|c| c.set(covering));
        Some(r)
    }

    /// The files behind the `MAP_SHARED` mappings of `[va, va + len)`, as [`Held`] ranges
    /// (`/proc/<pid>/map_files`, which the kernel opens only for a caller with
    /// CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN: a root engine), opened for writing if `write`.
    /// Nothing when the range was just probed and has no shared mapping (no system call then).
    pub fn shared_files(&self, va: UserVa, len: u64, write: bool) -> Vec<Held> {
        let (start, end) = (va.raw(), va.raw().saturating_add(len));
        let pid = self.pid.as_raw();
        if LAST_PROBE.with(|c| c.get()) == (pid, start, end, false) {
            return Vec::new();
        }
        // The mappings of the range: the one the probe just found covering it all (no system
        // call: a program pinning a buffer again and again), else asked anew.
        let vmas: Vec<uiommu_sys::Vma> = match LAST_VMA.with(|c| c.get()) {
            Some(v) if LAST_PROBE.with(|c| c.get()) == (pid, start, end, true) => vec![v],
            _ => self
                .with_maps(|maps| {
                    let mut vmas = Vec::new();
                    let mut at = start;
                    while at < end {
                        let Ok(Some(v)) = uiommu_sys::procmap_query(maps, at) else {
                            break;
                        };
                        at = v.end;
                        vmas.push(v);
                    }
                    vmas
                })
                .unwrap_or_default(),
        };
        {
            let mut out = Vec::new();
            let at = start;
            for v in vmas {
                let at = at.max(v.start);
                // Regular files and shared memory only (a device's mapping is not its
                // `read`): the engine maps them itself ([`HeldFile`]). Those of huge pages
                // only when that mapping covers them (hugetlbfs has no `write`).
                if v.shared {
                    let open = |path: &str| {
                        std::fs::OpenOptions::new()
                            .read(true)
                            .write(write && v.writable)
                            .open(path)
                    };
                    // Without the capability map_files needs: a descriptor of the same file
                    // the process holds (a memfd or file it mapped and kept open, as VMMs
                    // keep their guest memory's).
                    // One descriptor per file held, whatever the number of pins of it (a VMM's
                    // many small maps of its guest memory): reused while any pin holds it.
                    let key = (v.dev, v.inode, write && v.writable);
                    let (from, to) = (at.max(v.start), end.min(v.end));
                    let offset = v.offset + (from - v.start);
                    // Reused only where it reaches (a file grown since is held anew).
                    let cached = (v.inode != 0)
                        .then(|| {
                            lock_held_files()
                                .get(&key)
                                .and_then(std::sync::Weak::upgrade)
                        })
                        .flatten()
                        .filter(|f| f.reaches(offset, to - from));
                    let file = match cached {
                        Some(f) => Ok(f),
                        None => open(&format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end))
                            .or_else(|e| {
                                let held = (v.inode != 0)
                                    .then(|| fd_of_file(pid, v.dev, v.inode))
                                    .flatten()
                                    .ok_or(e)?;
                                open(&held)
                            })
                            .and_then(|f| {
                                if f.metadata()?.is_file() {
                                    Ok(std::sync::Arc::new(HeldFile::new(f, write && v.writable)))
                                } else {
                                    Err(std::io::ErrorKind::Unsupported.into())
                                }
                            })
                            .inspect(|f| {
                                if v.inode != 0 {
                                    let mut files = lock_held_files();
                                    files.retain(|_, w| w.strong_count() > 0);
                                    files.insert(key, std::sync::Arc::downgrade(f));
                                }
                            }),
                    };
                    // Not huge pages: a reserved pool another mapping may be waiting for.
                    if let (Ok(f), true) = (&file, v.page_size == PAGE_SIZE) {
                        keep_recent(f);
                    }
                    match file {
                        Ok(f) if v.page_size == PAGE_SIZE || f.mapped(offset, to - from) => out
                            .push(Held {
                                va: UserVa(from),
                                len: to - from,
                                file: f,
                                offset,
                            }),
                        _ => {}
                    }
                }
            }
            out
        }
    }

    /// Run `f` with this process's `/proc/<pid>/maps` descriptor (kept open between calls).
    fn with_maps<R>(&self, f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> R) -> Option<R> {
        let mut cache = MAPS.lock().unwrap_or_else(|p| p.into_inner());
        let pid = self.pid.as_raw();
        // Reuse the descriptor only while it is still the file opened: a program may close
        // descriptors it did not open (close_range), and the number may since name another
        // file, which must never receive this ioctl.
        let private = PRIVATE_FDS.load(std::sync::atomic::Ordering::Acquire);
        let still_ours = cache.as_ref().is_some_and(|m| {
            m.pid == pid
                && (private
                    || m.file
                        .metadata()
                        .is_ok_and(|md| (md.dev(), md.ino()) == (m.dev, m.ino)))
        });
        if !still_ours {
            *cache = None;
            let file = std::fs::File::open(format!("/proc/{pid}/maps")).ok()?;
            let md = file.metadata().ok()?;
            *cache = Some(MapsFile {
                pid,
                dev: md.dev(),
                ino: md.ino(),
                file,
            });
        }
        let maps = cache.as_ref()?.file.as_fd();
        Some(f(maps))
    }

    /// [`covered`](Self::covered) by reading and parsing all of `/proc/<pid>/maps`.
    fn covered_by_reading(&self, va: u64, end: u64, write: bool) -> Result<(), MemFault> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .map_err(|_| MemFault::Unmapped(UserVa(va)))?;
        let mut at = va;
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            let Some((s, e)) = range.split_once('-') else {
                continue;
            };
            let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
                continue;
            };
            if e <= at {
                continue;
            }
            if s > at {
                break;
            }
            let p = perms.as_bytes();
            if p.first() != Some(&b'r') {
                return Err(MemFault::Unmapped(UserVa(at)));
            }
            if write && p.get(1) != Some(&b'w') {
                return Err(MemFault::ReadOnly(UserVa(at)));
            }
            at = e;
            if at >= end {
                return Ok(());
            }
        }
        Err(MemFault::Unmapped(UserVa(at)))
    }
}

impl UserMemory for ProcessMemory {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.own && uiommu_sys::read_own_stack(va.raw(), buf) {
            return Ok(());
        }
        let len = buf.len();
        let remote = [Self::remote(va, len)?];
        match process_vm_readv(self.pid, &mut [IoSliceMut::new(buf)], &remote) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(MemFault::Unmapped(UserVa(va.raw() + n as u64))),
            Err(_) => Err(MemFault::Unmapped(va)),
        }
    }

    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        if data.is_empty() {
            return Ok(());
        }
        if self.own && uiommu_sys::write_own_stack(va.raw(), data) {
            return Ok(());
        }
        let len = data.len();
        let remote = [Self::remote(va, len)?];
        let short = |at: u64| {
            // Tell a read-only page from a hole.
            match self.covered(at, 1, false) {
                Ok(()) => MemFault::ReadOnly(UserVa(at)),
                Err(e) => e,
            }
        };
        match process_vm_writev(self.pid, &[IoSlice::new(data)], &remote) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(short(va.raw() + n as u64)),
            Err(_) => Err(short(va.raw())),
        }
    }

    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        if len == 0 {
            return Ok(());
        }
        self.covered(va.align_down(PAGE_SIZE).raw(), len, write)
    }

    fn hold(&self, va: UserVa, len: u64, write: bool) -> Vec<Held> {
        if self.holds {
            self.shared_files(va, len, write)
        } else {
            Vec::new()
        }
    }

    /// The calling process's own memory copies in one `process_vm_readv` from `src` into
    /// `dst`; another process's does not (`None`: the caller bounces).
    fn copy_within(&self, dst: UserVa, src: UserVa, len: u64) -> Option<Result<(), MemFault>> {
        if !self.own {
            return None;
        }
        let n = usize::try_from(len).ok()?;
        src.raw().checked_add(len)?;
        dst.raw().checked_add(len)?;
        let done = uiommu_sys::copy_within_self(dst.raw(), src.raw(), n).unwrap_or(0) as u64;
        if done >= len {
            return Some(Ok(()));
        }
        // The kernel stopped at a fault: say on which side.
        let (s, d) = (src.raw() + done, dst.raw() + done);
        let mut byte = [0u8; 1];
        Some(Err(match self.read(UserVa(s), &mut byte) {
            Err(_) => MemFault::Unmapped(UserVa(s)),
            Ok(()) => match self.covered(d, 1, true) {
                Err(e) => e,
                Ok(()) => MemFault::Unmapped(UserVa(d)),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static READ_ONLY: [u8; 16] = *b"read-only bytes!";

    #[test]
    fn reads_and_writes_own_memory() {
        let mut buf = vec![0u8; 3 * PAGE_SIZE as usize];
        let va = UserVa(buf.as_mut_ptr() as u64);
        let m = ProcessMemory::this();
        m.write(UserVa(va.raw() + 4090), b"across a page").unwrap();
        let mut back = [0u8; 13];
        m.read(UserVa(va.raw() + 4090), &mut back).unwrap();
        assert_eq!(&back, b"across a page");
        assert_eq!(&buf[4090..4103], b"across a page");
        m.probe(va.align_down(PAGE_SIZE), PAGE_SIZE, true).unwrap();
    }

    #[test]
    fn unmapped_addresses_are_faults_not_crashes() {
        let m = ProcessMemory::this();
        let mut b = [0u8; 8];
        assert!(matches!(
            m.read(UserVa(8), &mut b),
            Err(MemFault::Unmapped(_))
        ));
        assert!(m.write(UserVa(8), b"x").is_err());
        assert!(matches!(
            m.read(UserVa(u64::MAX - 2), &mut b),
            Err(MemFault::Unmapped(_))
        ));
        assert!(m.probe(UserVa(0), PAGE_SIZE, false).is_err());
        assert!(m.probe(UserVa(!0xfff), PAGE_SIZE * 2, false).is_err());
    }

    #[test]
    fn read_only_memory_refuses_writes_and_write_probes() {
        let m = ProcessMemory::this();
        let va = UserVa(READ_ONLY.as_ptr() as u64);
        let mut b = [0u8; 16];
        m.read(va, &mut b).unwrap();
        assert_eq!(&b, b"read-only bytes!");
        assert!(matches!(m.write(va, b"x"), Err(MemFault::ReadOnly(_))));
        assert!(matches!(
            m.probe(va.align_down(PAGE_SIZE), PAGE_SIZE, true),
            Err(MemFault::ReadOnly(_))
        ));
        m.probe(va.align_down(PAGE_SIZE), PAGE_SIZE, false).unwrap();
        assert_eq!(&READ_ONLY, b"read-only bytes!");
    }

    #[test]
    fn own_memory_copies_within_itself_and_names_the_faulting_side() {
        let m = ProcessMemory::this();
        let mut buf = vec![0u8; 2 * PAGE_SIZE as usize];
        buf[..100].copy_from_slice(&[9u8; 100]);
        let base = buf.as_mut_ptr() as u64;
        let r = m.copy_within(UserVa(base + PAGE_SIZE), UserVa(base), 100);
        assert_eq!(r, Some(Ok(())));
        assert_eq!(
            &buf[PAGE_SIZE as usize..PAGE_SIZE as usize + 100],
            &[9u8; 100]
        );
        let ro = UserVa(READ_ONLY.as_ptr() as u64);
        assert_eq!(
            m.copy_within(ro, UserVa(base), 4),
            Some(Err(MemFault::ReadOnly(ro)))
        );
        assert_eq!(
            m.copy_within(UserVa(base), UserVa(8), 4),
            Some(Err(MemFault::Unmapped(UserVa(8))))
        );
        assert_eq!(&READ_ONLY, b"read-only bytes!");
        // Another process's memory has no direct copy.
        assert_eq!(
            ProcessMemory::of(1).copy_within(UserVa(base), UserVa(base), 1),
            None
        );
    }

    #[test]
    fn the_query_and_the_file_agree() {
        let m = ProcessMemory::this();
        let buf = uiommu_sys::MappedBuffer::new(8 * PAGE_SIZE as usize, uiommu_sys::Backing::Small)
            .unwrap();
        let ro = UserVa(READ_ONLY.as_ptr() as u64)
            .align_down(PAGE_SIZE)
            .raw();
        let cases = [
            (buf.addr(), 8 * PAGE_SIZE, true),
            (buf.addr() + PAGE_SIZE, 2 * PAGE_SIZE, false),
            (ro, PAGE_SIZE, true),
            (ro, PAGE_SIZE, false),
            (0, PAGE_SIZE, false),
            (1 << 46, PAGE_SIZE, false),
        ];
        for (va, len, write) in cases {
            let end = va + len;
            let Some(fast) = m.covered_by_query(va, end, write) else {
                eprintln!("PROCMAP_QUERY unsupported by this kernel; nothing to compare");
                return;
            };
            assert_eq!(
                fast,
                m.covered_by_reading(va, end, write),
                "{va:#x}+{len:#x} write={write}"
            );
        }
    }
}
