//! The FFI edge of uiommu's engine side: the few Linux calls that take raw addresses.
//!
//! Everything above this crate forbids `unsafe`. Each function here is safe to call with any
//! argument: addresses are passed to the kernel as numbers and never turned into Rust
//! references, so a bad address is an error from the system call, not undefined behaviour.
//!
//! - [`procmap_query`]: which mapping covers an address, and its permissions, from one
//!   `PROCMAP_QUERY` ioctl on `/proc/<pid>/maps` (Linux 6.11 and later) instead of reading
//!   and parsing the whole file.
//! - [`copy_within_self`]: copy between two address ranges of the calling process in one
//!   `process_vm_readv`, with no bounce buffer (what a DMA engine's copy is).
//! - [`read_own_stack`] / [`write_own_stack`]: copy from or to the live part of the calling
//!   thread's stack (where an ioctl's argument struct usually is) without a system call.
//! - [`MappedBuffer`]: an anonymous mapping, optionally backed by hugetlb or transparent huge
//!   pages, for benchmarks and tests.
//! - [`seccomp`]: the user-notification filter and listener of the seccomp front-end.
//! - [`FileMap`]: the engine's own shared mapping of a file it holds for pins, with copies in
//!   and out that a shrunk file turns into a short count instead of a SIGBUS.

pub mod filemap;
pub mod seccomp;

pub use filemap::FileMap;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `_IOWR('f', 17, struct procmap_query)`: the request number of Linux's PROCMAP_QUERY.
const PROCMAP_QUERY: u32 =
    (3 << 30) | ((PROCMAP_QUERY_SIZE as u32) << 16) | ((b'f' as u32) << 8) | 17;
/// The size of `struct procmap_query` as first published (Linux 6.11).
const PROCMAP_QUERY_SIZE: usize = 104;

/// `struct procmap_query` of `include/uapi/linux/fs.h` (field names as there).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

const _: () = assert!(std::mem::size_of::<ProcmapQuery>() == PROCMAP_QUERY_SIZE);

/// A mapping of a process, as PROCMAP_QUERY reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    /// First address of the mapping.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// `PROT_READ` in effect.
    pub readable: bool,
    /// `PROT_WRITE` in effect.
    pub writable: bool,
    /// `PROT_EXEC` in effect.
    pub executable: bool,
    /// The size of the pages backing it (4096, or a hugetlb size).
    pub page_size: u64,
    /// `MAP_SHARED`.
    pub shared: bool,
    /// The offset in its file of its first address (of a file or shared-memory mapping).
    pub offset: u64,
    /// The file's device (major, minor) and inode (0: anonymous).
    pub dev: (u32, u32),
    /// See `dev`.
    pub inode: u64,
}

/// The mapping that covers `addr` in the process whose `/proc/<pid>/maps` is open as `maps`:
/// `Ok(None)` when no mapping covers it, `Err` when the kernel cannot answer (ENOTTY before
/// Linux 6.11, or `maps` is not such a file).
pub fn procmap_query(maps: BorrowedFd<'_>, addr: u64) -> io::Result<Option<Vma>> {
    procmap_query_named(maps, addr, &mut []).map(|o| o.map(|(v, _)| v))
}

/// [`procmap_query`], with the mapping's name (`[stack]`, `[heap]`, a file's path) written
/// into `name` (NUL-terminated, cut to fit) and its length without the NUL returned beside it.
pub fn procmap_query_named(
    maps: BorrowedFd<'_>,
    addr: u64,
    name: &mut [u8],
) -> io::Result<Option<(Vma, usize)>> {
    let mut q = ProcmapQuery {
        size: PROCMAP_QUERY_SIZE as u64,
        query_addr: addr,
        vma_name_size: u32::try_from(name.len()).unwrap_or(u32::MAX),
        vma_name_addr: if name.is_empty() {
            0
        } else {
            name.as_mut_ptr() as u64
        },
        ..ProcmapQuery::default()
    };
    // SAFETY: PROCMAP_QUERY reads and writes exactly `q.size` bytes at the pointer, which is a
    // live, exclusively borrowed struct of that size, and writes at most `vma_name_size` bytes
    // of the name at `vma_name_addr`, the exclusively borrowed `name` (or nothing: size 0,
    // address 0); the build-id buffer is not requested. A raw system call, not libc's
    // `ioctl`: under the preload library that name is the library's own, and the front-end
    // calls this from its async-signal-safe path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            maps.as_raw_fd(),
            libc::c_ulong::from(PROCMAP_QUERY),
            &mut q as *mut ProcmapQuery,
        )
    };
    if rc == 0 {
        let named = if name.is_empty() {
            0
        } else {
            (q.vma_name_size as usize).saturating_sub(1).min(name.len())
        };
        return Ok(Some((
            Vma {
                start: q.vma_start,
                end: q.vma_end,
                readable: q.vma_flags & 1 != 0,
                writable: q.vma_flags & 2 != 0,
                executable: q.vma_flags & 4 != 0,
                page_size: q.vma_page_size,
                shared: q.vma_flags & 8 != 0,
                offset: q.vma_offset,
                dev: (q.dev_major, q.dev_minor),
                inode: q.inode,
            },
            named,
        )));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(e),
    }
}

/// The effective capability set of process `pid` (`capget`, version 3: 64 bits).
pub fn effective_caps_of(pid: i32) -> io::Result<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget reads the header and writes two data structs (version 3), both live.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// The RLIMIT_MEMLOCK soft limit of process `pid` in bytes (`None`: unlimited), read
/// without changing it (`prlimit(pid, RLIMIT_MEMLOCK, NULL, &old)`); needs the permission
/// `prlimit` asks for (same uid, or CAP_SYS_RESOURCE).
pub fn memlock_limit_of(pid: i32) -> io::Result<Option<u64>> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a null new limit only reads; `old` is a live struct rlimit the call fills.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_MEMLOCK, std::ptr::null(), &mut old) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((old.rlim_cur != libc::RLIM_INFINITY).then_some(old.rlim_cur))
}

/// Copy `len` bytes from `src` to `dst`, both addresses of the calling process, with one
/// `process_vm_readv` (the kernel copies page to page; there is no intermediate buffer).
/// Returns the number of bytes copied: less than `len` when a page of either range is not
/// mapped with the needed access (the kernel stops at the fault), never a crash.
pub fn copy_within_self(dst: u64, src: u64, len: usize) -> io::Result<usize> {
    if len == 0 {
        return Ok(0);
    }
    let local = libc::iovec {
        iov_base: dst as usize as *mut libc::c_void,
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: src as usize as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: the two iovecs are read by the kernel, which validates both address ranges
    // against this process's page tables and faults (EFAULT / a short count) instead of
    // touching an unmapped or read-only page. No Rust reference to either range exists here;
    // the destination is client memory that a device writes, as process_vm_writev would.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

thread_local! {
    /// The calling thread's stack as `[low, high)`, asked of pthread once per thread; `(0, 0)`
    /// when pthread could not say.
    static STACK: std::cell::Cell<Option<(usize, usize)>> = const { std::cell::Cell::new(None) };
}

/// The calling thread's stack, `[low, high)`.
fn thread_stack() -> (usize, usize) {
    STACK.with(|c| {
        if let Some(r) = c.get() {
            return r;
        }
        let mut range = (0, 0);
        // SAFETY: `attr` is initialised by pthread_getattr_np before being read and destroyed
        // exactly once after; the out-pointers point at live locals of the right types.
        unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) == 0 {
                let mut addr: *mut libc::c_void = std::ptr::null_mut();
                let mut size: libc::size_t = 0;
                if libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0 {
                    let lo = addr as usize;
                    range = (lo, lo.saturating_add(size));
                }
                libc::pthread_attr_destroy(&mut attr);
            }
        }
        c.set(Some(range));
        range
    })
}

/// Whether `[addr, addr + len)` lies in the live part of the calling thread's stack: above
/// this function's own frame and below the top of the thread's stack. That memory is mapped,
/// readable and writable for certain (it holds the frames of this call's callers); when the
/// thread runs on another stack (a signal stack, a coroutine's), nothing is.
fn on_live_stack(addr: u64, len: usize) -> bool {
    let here = 0u8;
    let sp = std::hint::black_box(&here as *const u8 as usize);
    let (lo, hi) = thread_stack();
    let (Ok(start), Some(end)) = (usize::try_from(addr), (addr as usize).checked_add(len)) else {
        return false;
    };
    lo < sp && sp < hi && start > sp && end <= hi && len > 0
}

/// Copy `buf.len()` bytes at `addr` of this process into `buf` without a system call, when
/// they lie in the live part of the calling thread's stack (where a caller's ioctl argument
/// struct usually is). `false`, having done nothing, otherwise: the caller reads it the
/// checked way.
pub fn read_own_stack(addr: u64, buf: &mut [u8]) -> bool {
    if !on_live_stack(addr, buf.len()) {
        return false;
    }
    // SAFETY: the source range lies between this frame and the top of this thread's stack
    // (checked just above), so it is mapped and readable; it cannot overlap `buf` as a Rust
    // borrow of the same bytes would need a reference the caller does not have (the address
    // came in as a number). Bytes are copied as plain `u8`, which has no invalid values.
    unsafe { std::ptr::copy(addr as usize as *const u8, buf.as_mut_ptr(), buf.len()) };
    true
}

/// Write `data` at `addr` of this process without a system call, when the range lies in the
/// live part of the calling thread's stack; `false`, having done nothing, otherwise.
pub fn write_own_stack(addr: u64, data: &[u8]) -> bool {
    if !on_live_stack(addr, data.len()) {
        return false;
    }
    // SAFETY: as in `read_own_stack`: the destination is mapped and writable stack memory of a
    // caller's frame, addressed by the number the caller passed (as the kernel's copy_to_user
    // would write it), and plain bytes are written.
    unsafe { std::ptr::copy(data.as_ptr(), addr as usize as *mut u8, data.len()) };
    true
}

/// How a [`MappedBuffer`] is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Ordinary 4 KiB pages.
    Small,
    /// 2 MiB hugetlb pages (`MAP_HUGETLB`); needs reserved pages in
    /// `/proc/sys/vm/nr_hugepages`.
    Hugetlb2M,
    /// Transparent huge pages asked for with `madvise(MADV_HUGEPAGE)`; whether the kernel
    /// provides them shows in `AnonHugePages` of /proc/self/smaps.
    Thp,
    /// A memfd of the length, mapped shared (what VMMs back guest memory with), its
    /// descriptor kept open for the buffer's life.
    Memfd,
}

/// An anonymous private read-write mapping (or a shared one of a memfd), unmapped on drop.
#[derive(Debug)]
pub struct MappedBuffer {
    addr: usize,
    len: usize,
    backing: Backing,
    /// The memfd of [`Backing::Memfd`].
    fd: Option<std::os::fd::OwnedFd>,
}

impl MappedBuffer {
    /// Map `len` bytes (rounded up to the backing's page size) with the given backing. For
    /// `Thp` the mapping is 2 MiB-aligned. Fails (e.g. ENOMEM with no free hugetlb pages)
    /// without side effects.
    pub fn new(len: usize, backing: Backing) -> io::Result<MappedBuffer> {
        const HUGE: usize = 2 << 20;
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let mut map_len = len.max(1);
        let mut fd = None;
        match backing {
            Backing::Small => {}
            Backing::Memfd => {
                // SAFETY: memfd_create with a NUL-terminated name; on success the descriptor
                // is new and owned by the OwnedFd made of it.
                let raw =
                    unsafe { libc::memfd_create(c"uiommu-buffer".as_ptr(), libc::MFD_CLOEXEC) };
                if raw < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `raw` is a descriptor this call just opened and nothing else owns.
                let owned =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                map_len = map_len.next_multiple_of(4096);
                std::fs::File::from(owned.try_clone()?).set_len(map_len as u64)?;
                flags = libc::MAP_SHARED;
                fd = Some(owned);
            }
            Backing::Hugetlb2M => {
                flags |= libc::MAP_HUGETLB | (21 << libc::MAP_HUGE_SHIFT);
                map_len = map_len.div_ceil(HUGE) * HUGE;
            }
            // Over-map by one huge page to align the start.
            Backing::Thp => map_len = map_len.div_ceil(HUGE) * HUGE + HUGE,
        }
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; it does not
        // alias anything Rust owns.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.as_ref().map_or(-1, |f| f.as_raw_fd()),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut addr = p as usize;
        if backing == Backing::Thp {
            let aligned = addr.next_multiple_of(HUGE);
            let head = aligned - addr;
            let tail = map_len - head - (map_len - HUGE);
            // SAFETY: both trimmed pieces lie inside the mapping just made and are not used.
            unsafe {
                if head > 0 {
                    libc::munmap(p, head);
                }
                if tail > 0 {
                    libc::munmap((aligned + map_len - HUGE) as *mut libc::c_void, tail);
                }
            }
            addr = aligned;
            map_len -= HUGE;
            // SAFETY: advice on the range this buffer owns; it changes no contents.
            let rc =
                unsafe { libc::madvise(addr as *mut libc::c_void, map_len, libc::MADV_HUGEPAGE) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                // SAFETY: the range is this buffer's own mapping, not yet handed out.
                unsafe { libc::munmap(addr as *mut libc::c_void, map_len) };
                return Err(e);
            }
        }
        Ok(MappedBuffer {
            addr,
            len: map_len,
            backing,
            fd,
        })
    }

    /// The first address.
    pub fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// How it is backed.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The memfd of a [`Backing::Memfd`] buffer.
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// The contents.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `addr..addr+len` is a live mapping owned by `self` for its lifetime,
        // readable and writable; the shared borrow of `self` keeps it mapped and unaliased by
        // any `&mut` from this type (a memfd's other mappings are the engine's, which touches
        // them only while the program is not borrowing these bytes, as DMA does).
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }

    /// The contents, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the exclusive borrow of `self` makes this the only
        // reference into the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }
}

impl Drop for MappedBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` and is owned by `self`; no borrow outlives it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    fn maps() -> File {
        File::open("/proc/self/maps").unwrap()
    }

    #[test]
    fn procmap_query_sees_permissions_and_holes() {
        let f = maps();
        let mut b = MappedBuffer::new(3 << 12, Backing::Small).unwrap();
        b.as_mut_slice()[0] = 1;
        let Ok(Some(v)) = procmap_query(f.as_fd(), b.addr() + 4096) else {
            eprintln!("PROCMAP_QUERY unsupported by this kernel; skipping");
            return;
        };
        assert!(v.start <= b.addr() && v.end >= b.addr() + b.len() as u64);
        assert!(v.readable && v.writable);
        assert_eq!(v.page_size, 4096);
        static RO: [u8; 8] = *b"readonly";
        let ro = procmap_query(f.as_fd(), RO.as_ptr() as u64)
            .unwrap()
            .unwrap();
        assert!(ro.readable && !ro.writable);
        assert_eq!(procmap_query(f.as_fd(), 0).unwrap(), None);
    }

    #[test]
    fn copy_within_self_copies_and_stops_at_faults() {
        let mut b = MappedBuffer::new(2 << 12, Backing::Small).unwrap();
        b.as_mut_slice()[..4096].fill(7);
        let base = b.addr();
        assert_eq!(copy_within_self(base + 4096, base, 4096).unwrap(), 4096);
        assert!(b.as_slice()[4096..].iter().all(|&x| x == 7));
        static RO: [u8; 4096] = [0; 4096];
        // Destination read-only: nothing copied, an error or a zero count, no crash.
        let r = copy_within_self(RO.as_ptr() as u64, base, 16);
        assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
        // Source unmapped.
        assert!(copy_within_self(base, 8, 16).is_err());
    }

    #[inline(never)]
    fn read_through(addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut b = vec![0u8; len];
        read_own_stack(addr, &mut b).then_some(b)
    }

    #[test]
    fn a_callers_stack_struct_is_read_and_written_directly_and_nothing_else_is() {
        let mut local = [7u8; 24];
        let addr = local.as_mut_ptr() as u64;
        assert_eq!(read_through(addr, 24), Some(vec![7u8; 24]));
        assert!(write_own_stack(std::hint::black_box(addr) + 4, &[1, 2, 3]));
        assert_eq!(&std::hint::black_box(&local)[3..8], &[7, 1, 2, 3, 7]);
        // Heap, static, unmapped, wrapping, empty: not on the stack.
        let heap = Box::new([0u8; 16]);
        assert_eq!(read_through(heap.as_ptr() as u64, 16), None);
        static S: [u8; 4] = [0; 4];
        assert_eq!(read_through(S.as_ptr() as u64, 4), None);
        assert_eq!(read_through(8, 4), None);
        assert_eq!(read_through(u64::MAX - 2, 8), None);
        assert_eq!(read_through(addr, 0), None);
        assert!(!write_own_stack(8, &[1]));
        // Another thread's stack is not this thread's.
        let other = std::thread::spawn(move || read_through(addr, 4))
            .join()
            .unwrap();
        assert_eq!(other, None);
    }

    #[test]
    fn thp_buffer_is_aligned_and_usable() {
        let mut b = MappedBuffer::new(4 << 20, Backing::Thp).unwrap();
        assert_eq!(b.addr() % (2 << 20), 0);
        assert_eq!(b.len(), 4 << 20);
        b.as_mut_slice().fill(3);
        assert_eq!(b.as_slice()[(4 << 20) - 1], 3);
    }

    #[test]
    fn hugetlb_buffer_fails_cleanly_or_works() {
        match MappedBuffer::new(2 << 20, Backing::Hugetlb2M) {
            Ok(mut b) => {
                b.as_mut_slice()[0] = 1;
                let f = maps();
                if let Ok(Some(v)) = procmap_query(f.as_fd(), b.addr()) {
                    assert_eq!(v.page_size, 2 << 20);
                }
            }
            Err(e) => assert!(e.raw_os_error().is_some()),
        }
    }
}

#[cfg(test)]
mod process_query_tests {
    #[test]
    fn capabilities_and_memlock_of_this_process() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let want = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(
            super::effective_caps_of(std::process::id() as i32).unwrap(),
            want
        );
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one struct rlimit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) }, 0);
        let want = (rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur);
        assert_eq!(
            super::memlock_limit_of(std::process::id() as i32).unwrap(),
            want
        );
    }
}

/// `ioctl(fd, request, arg)` with a plain-data argument struct (every byte pattern valid, as
/// `FromBytes` says), made as a raw system call: under the seccomp front-end it is the call
/// the filter stops (the bench's client of that front-end).
pub fn ioctl_struct<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
    fd: BorrowedFd<'_>,
    request: u32,
    arg: &mut T,
) -> io::Result<i32> {
    // SAFETY: the kernel (or the engine behind the filter) reads and writes at most the
    // struct's bytes through the pointer, an exclusive borrow of a T; any bytes written leave a
    // valid T (FromBytes).
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd.as_raw_fd(),
            libc::c_ulong::from(request),
            arg as *mut T,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}
