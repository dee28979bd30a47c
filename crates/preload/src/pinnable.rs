//! Private memory made holdable: before an IOAS_MAP or a type1 MAP_DMA of a range of this
//! process, its private anonymous parts are moved onto shared memory (a memfd, mapped
//! `MAP_SHARED | MAP_FIXED` at the same addresses, with the same contents and protection), so
//! that the engine can hold the pages a pin pins (docs/engine.md, "Pinned pages"), as a pin
//! holds pages on Linux: a later `munmap`, `MAP_FIXED` over the range, `exec` or exit leaves
//! the pinned pages what DMA reaches.
//!
//! - **Concurrent writers.** While a range is copied it is read-only; a thread writing to it
//!   meanwhile takes a SIGSEGV, which this module's handler holds until the move is done and
//!   then lets the write run again (on the new mapping). Every other fault goes on to the
//!   handler installed before this one.
//! - **fork.** A child gets a private copy of each moved range it still maps, made just
//!   before the fork (as Linux gives a child copies of pinned pages, and copy-on-write of the
//!   rest): [`before_fork`] and [`after_fork`], run by this library's `fork`.
//! - **The memfds.** This process keeps a descriptor of each (close-on-exec), so that an engine
//!   that cannot open `/proc/PID/map_files` finds the file; one whose range is no longer
//!   mapped is closed at the next move.
//!
//! Every function is async-signal-safe (ioctl's path): raw system calls, atomics, a futex; no
//! allocation, no lock that an interrupted thread may hold (a move interrupted by a signal
//! whose handler maps memory again skips its own move).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

const PAGE: u64 = 4096;
/// Moved ranges remembered at once; a move finding no free slot is not made (that range is
/// then reached at its address, as before).
const SLOTS: usize = 256;

/// One moved range: `[start, start + len)` was moved onto the memfd `fd` (inode `ino`).
struct Slot {
    /// 0: free; `u64::MAX`: being filled.
    len: AtomicU64,
    start: AtomicU64,
    ino: AtomicU64,
    fd: AtomicI32,
    /// The [`GENERATION`] when the whole range was last seen mapped from its memfd.
    seen: AtomicU64,
}

impl Slot {
    /// `(start, len, memfd inode)` of a filled slot.
    fn range(&self) -> Option<(u64, u64, u64)> {
        let len = self.len.load(Ordering::Acquire);
        (len != 0 && len != u64::MAX).then(|| {
            (
                self.start.load(Ordering::Acquire),
                len,
                self.ino.load(Ordering::Acquire),
            )
        })
    }

    /// Whether the filled slot's range holds `[start, end)`.
    fn holds(&self, start: u64, end: u64) -> bool {
        self.range()
            .is_some_and(|(s, l, _)| s <= start && end <= s.saturating_add(l))
    }

    /// Close the memfd's descriptor and free the slot.
    fn free(&self) {
        let fd = self.fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            sys(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]);
        }
        self.len.store(0, Ordering::Release);
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    len: AtomicU64::new(0),
    start: AtomicU64::new(0),
    ino: AtomicU64::new(0),
    fd: AtomicI32::new(-1),
    seen: AtomicU64::new(0),
};
static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// The thread moving memory now (0: none); one move at a time.
static MOVER: AtomicI32 = AtomicI32::new(0);
/// Bumped at each move's end (a futex word that waiters sleep on).
static MOVES: AtomicU32 = AtomicU32::new(0);
/// The range being moved now (read-only meanwhile).
static BUSY_START: AtomicU64 = AtomicU64::new(0);
static BUSY_END: AtomicU64 = AtomicU64::new(0);

/// Whether moving is on (`UIOMMU_HOLD_PRIVATE=0` at load turns it off).
static ON: AtomicBool = AtomicBool::new(true);

/// Bumped by every `mmap`, `munmap` and `mremap` the program makes through the C library: a
/// map of a range inside a moved one, with no such call since that range was last seen mapped
/// from its memfd, needs no look at the address space (the hot path of a program mapping the
/// same buffer again and again). A change made otherwise (a raw system call, `brk`) goes
/// unseen: the range is then reached at its address, as when nothing was moved.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A call that may change the address space is being made.
pub(crate) fn address_space_changed() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Read `UIOMMU_HOLD_PRIVATE` (at load; not async-signal-safe).
fn configure() {
    if std::env::var_os("UIOMMU_HOLD_PRIVATE").is_some_and(|v| v == "0") {
        ON.store(false, Ordering::Release);
    }
}

fn sys(n: libc::c_long, a: [u64; 6]) -> i64 {
    // SAFETY: every caller passes a system call number and the arguments it takes; none of
    // them is given a pointer to memory other than live buffers of the calling frame or
    // address ranges the kernel checks itself.
    unsafe { libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

fn gettid() -> i32 {
    sys(libc::SYS_gettid, [0; 6]) as i32
}

/// `/proc/self/maps` opened for PROCMAP_QUERY, closed on drop.
struct Maps(i32);

impl Maps {
    fn open() -> Option<Maps> {
        let fd = sys(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                c"/proc/self/maps".as_ptr() as u64,
                (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        );
        (fd >= 0).then_some(Maps(fd as i32))
    }

    fn query(&self, addr: u64) -> Option<uiommu_sys::Vma> {
        // SAFETY: the descriptor is open for this value's life.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) };
        uiommu_sys::procmap_query(fd, addr).ok().flatten()
    }

    /// Each mapping that overlaps `[start, end)`, in order, with the address the walk is at
    /// (where the overlap begins); stops at the first hole.
    fn each(&self, start: u64, end: u64, mut f: impl FnMut(u64, &uiommu_sys::Vma)) {
        let mut at = start;
        while at < end {
            let Some(v) = self.query(at) else { return };
            if v.start >= end {
                return;
            }
            f(at.max(v.start), &v);
            at = v.end;
        }
    }

    /// Whether the mapping at `addr` (an anonymous one) is the main thread's stack.
    fn is_stack(&self, addr: u64) -> bool {
        self.named(addr, b"[stack")
    }

    /// Whether the name of the mapping at `addr` starts with `prefix`.
    fn named(&self, addr: u64, prefix: &[u8]) -> bool {
        // SAFETY: as in `query`.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) };
        let mut name = [0u8; 128];
        match uiommu_sys::procmap_query_named(fd, addr, &mut name) {
            Ok(Some((_, n))) => name[..n].starts_with(prefix),
            // A name too long for the buffer is a path or a user's name, none of ours.
            _ => false,
        }
    }
}

impl Drop for Maps {
    fn drop(&mut self) {
        sys(libc::SYS_close, [self.0 as u64, 0, 0, 0, 0, 0]);
    }
}

/// Before an ioctl of ours: for IOMMU_IOAS_MAP and VFIO_IOMMU_MAP_DMA, move the private
/// anonymous parts of the range the call maps onto shared memory. A bad argument pointer or
/// range is left for the engine to refuse (EFAULT and the like), moving nothing.
pub(crate) fn before_map(request: u64, arg: u64) {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    let (va, len) = if request == u64::from(uiommu_uapi::abi::IOMMU_IOAS_MAP) {
        let mut b = [0u8; 32];
        if !read_own(arg, &mut b) {
            return;
        }
        (word(&b, 16), word(&b, 24))
    } else if request == u64::from(uiommu_uapi::vfio_abi::VFIO_IOMMU_MAP_DMA) {
        let mut b = [0u8; 32];
        if !read_own(arg, &mut b) {
            return;
        }
        (word(&b, 8), word(&b, 24))
    } else {
        return;
    };
    let Some(end) = va
        .checked_add(len)
        .and_then(|e| e.checked_next_multiple_of(PAGE))
    else {
        return;
    };
    if len == 0 {
        return;
    }
    let start = va & !(PAGE - 1);
    let generation = GENERATION.load(Ordering::Acquire);
    let seen = TABLE
        .iter()
        .any(|t| t.holds(start, end) && t.seen.load(Ordering::Acquire) == generation);
    if !seen {
        move_private(start, end, generation);
    }
}

fn word(b: &[u8; 32], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// Copy `buf.len()` bytes at `addr` of this process into `buf`; `false` on a bad address.
pub(crate) fn read_own(addr: u64, buf: &mut [u8]) -> bool {
    copy_own(buf.as_mut_ptr() as u64, addr, buf.len() as u64)
}

/// Copy `data` to `addr` of this process; `false` on a bad (or read-only) address.
pub(crate) fn write_own(addr: u64, data: &[u8]) -> bool {
    copy_own(addr, data.as_ptr() as u64, data.len() as u64)
}

/// Copy `len` bytes from `src` to `dst`, both of this process, by the kernel (a bad page is a
/// short count, never a fault here).
fn copy_own(dst: u64, src: u64, len: u64) -> bool {
    let local = libc::iovec {
        iov_base: dst as usize as *mut libc::c_void,
        iov_len: len as usize,
    };
    let remote = libc::iovec {
        iov_base: src as usize as *mut libc::c_void,
        iov_len: len as usize,
    };
    let pid = sys(libc::SYS_getpid, [0; 6]) as u64;
    let n = sys(
        libc::SYS_process_vm_readv,
        [
            pid,
            &local as *const libc::iovec as u64,
            1,
            &remote as *const libc::iovec as u64,
            1,
            0,
        ],
    );
    n == len as i64
}

/// Take the mover's place; `false` when this thread holds it already (a signal handler's
/// map inside a move).
fn lock() -> bool {
    let me = gettid();
    loop {
        match MOVER.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(t) if t == me => return false,
            Err(_) => {
                let seen = MOVES.load(Ordering::Acquire);
                if MOVER.load(Ordering::Acquire) != 0 {
                    futex_wait(&MOVES, seen);
                }
            }
        }
    }
}

fn unlock() {
    MOVER.store(0, Ordering::Release);
    MOVES.fetch_add(1, Ordering::AcqRel);
    sys(
        libc::SYS_futex,
        [
            MOVES.as_ptr() as u64,
            (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64,
            i32::MAX as u64,
            0,
            0,
            0,
        ],
    );
}

fn futex_wait(word: &AtomicU32, seen: u32) {
    // A bounded sleep: a wake-up lost to a signal costs at most this.
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    sys(
        libc::SYS_futex,
        [
            word.as_ptr() as u64,
            (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64,
            u64::from(seen),
            &ts as *const libc::timespec as u64,
            0,
            0,
        ],
    );
}

/// Move every private anonymous part of `[start, end)` (page-aligned) onto shared memory;
/// `generation`: [`GENERATION`] when the call began.
fn move_private(start: u64, end: u64, generation: u64) {
    let Some(maps) = Maps::open() else {
        return;
    };
    // First look: nothing to move (a range moved before).
    let mut at = start;
    let mut any = false;
    let mut ino = None;
    let mut one_file = true;
    while at < end {
        let Some(v) = maps.query(at) else {
            one_file = false;
            break;
        };
        if v.start > at {
            one_file = false;
        }
        if v.start >= end {
            break;
        }
        any |= movable(&v, &maps);
        one_file &= v.shared && *ino.get_or_insert(v.inode) == v.inode;
        at = v.end;
    }
    if !any {
        if one_file {
            // Within one of ours, still mapped from its memfd: remember it was seen so.
            if let Some(t) = TABLE
                .iter()
                .find(|t| t.holds(start, end) && t.range().map(|(_, _, i)| i) == ino)
            {
                t.seen.store(generation, Ordering::Release);
            }
        }
        return;
    }
    if !lock() {
        return;
    }
    sweep(&maps);
    maps.each(start, end, |at, v| {
        // Whole huge pages of a hugetlb mapping.
        let hp = v.page_size.max(PAGE);
        let (s, e) = (
            (at & !(hp - 1)).max(v.start),
            end.min(v.end).next_multiple_of(hp).min(v.end),
        );
        if movable(v, &maps) && !maps.is_stack(s) {
            move_one(s, e, v);
        }
    });
    unlock();
}

/// Private, anonymous (of small pages, or of huge pages: hugetlb's private mappings have a
/// file of their own, `anon_hugepage`), readable: what a pin could not otherwise hold.
fn movable(v: &uiommu_sys::Vma, maps: &Maps) -> bool {
    !v.shared
        && v.readable
        && if v.page_size == PAGE {
            v.inode == 0
        } else {
            v.page_size.is_power_of_two() && maps.named(v.start, b"/anon_hugepage")
        }
}

/// Forget (and close the memfd of) moved ranges no longer mapped from their memfd.
fn sweep(maps: &Maps) {
    for slot in &TABLE {
        let Some((start, len, ino)) = slot.range() else {
            continue;
        };
        let mut mapped = false;
        maps.each(start, start + len, |_, v| {
            mapped |= v.shared && v.inode == ino
        });
        if !mapped {
            slot.free();
        }
    }
}

/// For huge pages of `page_size`: `hugetlb` (MFD_HUGETLB or MAP_HUGETLB) with the size in the
/// bits both flags share (log2 of the size, shifted by 26); 0 for small pages.
fn huge_flags(page_size: u64, hugetlb: libc::c_uint) -> libc::c_uint {
    if page_size <= PAGE {
        0
    } else {
        hugetlb | (page_size.trailing_zeros() << 26)
    }
}

fn prot_of(v: &uiommu_sys::Vma) -> u64 {
    let mut p = 0;
    if v.readable {
        p |= libc::PROT_READ;
    }
    if v.writable {
        p |= libc::PROT_WRITE;
    }
    if v.executable {
        p |= libc::PROT_EXEC;
    }
    p as u64
}

/// Move `[s, e)`, part of the private anonymous mapping `v`, onto a new memfd.
fn move_one(s: u64, e: u64, v: &uiommu_sys::Vma) {
    let Some(slot) = TABLE.iter().find(|t| {
        t.len
            .compare_exchange(0, u64::MAX, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }) else {
        return;
    };
    let len = e - s;
    let fail = |fd: i64| {
        if fd >= 0 {
            sys(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]);
        }
        slot.len.store(0, Ordering::Release);
    };
    let fd = sys(
        libc::SYS_memfd_create,
        [
            c"uiommu-pinnable".as_ptr() as u64,
            (libc::MFD_CLOEXEC | huge_flags(v.page_size, libc::MFD_HUGETLB)) as u64,
            0,
            0,
            0,
            0,
        ],
    );
    if fd < 0 || sys(libc::SYS_ftruncate, [fd as u64, len, 0, 0, 0, 0]) != 0 {
        return fail(fd);
    }
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let tmp = sys(
        libc::SYS_mmap,
        [0, len, rw, libc::MAP_SHARED as u64, fd as u64, 0],
    );
    if tmp < 0 {
        return fail(fd);
    }
    let tmp = tmp as u64;
    install_handler();
    BUSY_START.store(s, Ordering::Release);
    BUSY_END.store(e, Ordering::Release);
    let prot = prot_of(v);
    let ro = prot & !(libc::PROT_WRITE as u64);
    let done = (ro == prot || sys(libc::SYS_mprotect, [s, len, ro, 0, 0, 0]) == 0)
        && copy_present(tmp, s, len)
        && sys(
            libc::SYS_mmap,
            [
                s,
                len,
                prot,
                (libc::MAP_SHARED | libc::MAP_FIXED) as u64,
                fd as u64,
                0,
            ],
        ) == s as i64;
    if !done && ro != prot {
        // Nothing moved: the range as it was.
        sys(libc::SYS_mprotect, [s, len, prot, 0, 0, 0]);
    }
    BUSY_START.store(0, Ordering::Release);
    BUSY_END.store(0, Ordering::Release);
    sys(libc::SYS_munmap, [tmp, len, 0, 0, 0, 0]);
    if !done {
        return fail(fd);
    }
    let mut st: libc::stat = unsafe_zeroed_stat();
    let ino = if sys(
        libc::SYS_fstat,
        [fd as u64, &mut st as *mut libc::stat as u64, 0, 0, 0, 0],
    ) == 0
    {
        st.st_ino
    } else {
        0
    };
    slot.start.store(s, Ordering::Release);
    slot.ino.store(ino, Ordering::Release);
    slot.fd.store(fd as i32, Ordering::Release);
    // Seen mapped from its memfd as of the generation this move itself makes.
    slot.seen
        .store(GENERATION.load(Ordering::Acquire), Ordering::Release);
    slot.len.store(len, Ordering::Release);
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: `struct stat` is plain integers, for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Copy the pages of `[src, src + len)` that exist (present or swapped, by
/// `/proc/self/pagemap`) to `dst`; the rest stays the memfd's zeros, as they read now.
fn copy_present(dst: u64, src: u64, len: u64) -> bool {
    let pm = sys(
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            c"/proc/self/pagemap".as_ptr() as u64,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    );
    if pm < 0 {
        return copy_own(dst, src, len);
    }
    let pages = len / PAGE;
    let mut ok = true;
    let mut entries = [0u64; 512];
    let mut i = 0u64;
    // A run of existing pages is copied with one system call.
    let mut run: Option<(u64, u64)> = None;
    'outer: while i < pages {
        let n = (pages - i).min(entries.len() as u64);
        let want = n * 8;
        let got = sys(
            libc::SYS_pread64,
            [
                pm as u64,
                entries.as_mut_ptr() as u64,
                want,
                (src / PAGE + i) * 8,
                0,
                0,
            ],
        );
        if got != want as i64 {
            // Unreadable: copy the rest whole.
            if let Some((a, b)) = run.take() {
                ok &= copy_own(dst + a * PAGE, src + a * PAGE, (b - a) * PAGE);
            }
            ok &= copy_own(dst + i * PAGE, src + i * PAGE, (pages - i) * PAGE);
            break 'outer;
        }
        for (k, e) in entries[..n as usize].iter().enumerate() {
            let p = i + k as u64;
            let exists = e & (3 << 62) != 0;
            run = match (run, exists) {
                (Some((a, _)), true) => Some((a, p + 1)),
                (None, true) => Some((p, p + 1)),
                (Some((a, b)), false) => {
                    ok &= copy_own(dst + a * PAGE, src + a * PAGE, (b - a) * PAGE);
                    None
                }
                (None, false) => None,
            };
        }
        i += n;
    }
    if let Some((a, b)) = run {
        ok &= copy_own(dst + a * PAGE, src + a * PAGE, (b - a) * PAGE);
    }
    sys(libc::SYS_close, [pm as u64, 0, 0, 0, 0, 0]);
    ok
}

/// Copy the parts of `[src, src + len)` (the memfd `fd` mapped from offset `off`) that hold
/// data (`SEEK_DATA`/`SEEK_HOLE`) to `dst`; all of it when the file cannot say.
fn copy_data(dst: u64, src: u64, len: u64, fd: i32, off: u64) -> bool {
    if fd < 0 {
        return copy_own(dst, src, len);
    }
    let mut at = off;
    let end = off + len;
    while at < end {
        let d = sys(
            libc::SYS_lseek,
            [fd as u64, at, libc::SEEK_DATA as u64, 0, 0, 0],
        );
        if d < 0 {
            // ENXIO: no data from here on.
            return real_errno() == libc::ENXIO
                || copy_own(dst + (at - off), src + (at - off), end - at);
        }
        let d = (d as u64).max(at);
        if d >= end {
            return true;
        }
        let h = sys(
            libc::SYS_lseek,
            [fd as u64, d, libc::SEEK_HOLE as u64, 0, 0, 0],
        );
        let h = if h < 0 { end } else { (h as u64).min(end) };
        let (a, b) = (d & !(PAGE - 1), h.next_multiple_of(PAGE).min(end));
        if !copy_own(dst + (a - off), src + (a - off), b - a) {
            return false;
        }
        at = b;
    }
    true
}

fn real_errno() -> i32 {
    crate::real::errno()
}

/// A fork's private copies of the moved ranges, made by the parent just before it forks
/// ([`before_fork`]): `(start, len, copy, prot)`, `len` 0 when unused.
struct Snap {
    start: AtomicU64,
    len: AtomicU64,
    copy: AtomicU64,
    prot: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_SNAP: Snap = Snap {
    start: AtomicU64::new(0),
    len: AtomicU64::new(0),
    copy: AtomicU64::new(0),
    prot: AtomicU64::new(0),
};
static SNAPS: [Snap; SLOTS] = [NO_SNAP; SLOTS];

/// Whether [`before_fork`] took the mover's place (and made copies) for the fork under way.
static FORKING: AtomicBool = AtomicBool::new(false);

/// Just before `fork`: a private copy of each moved range still mapped from its memfd, which
/// the child puts in place of the shared mapping ([`after_fork`]): the child gets its own
/// pages as they are at the fork (Linux copies pinned pages for the child at fork, and
/// copy-on-write gives it the rest as they are then), and the parent keeps the pinned ones.
pub(crate) fn before_fork() {
    if TABLE.iter().all(|t| t.len.load(Ordering::Acquire) == 0) || !lock() {
        return;
    }
    FORKING.store(true, Ordering::Release);
    let mut n = 0;
    let Some(maps) = Maps::open() else { return };
    for slot in &TABLE {
        let Some((start, len, ino)) = slot.range() else {
            continue;
        };
        let fd = slot.fd.load(Ordering::Acquire);
        maps.each(start, start + len, |s, v| {
            if v.shared && v.inode == ino && n < SNAPS.len() {
                let e = (start + len).min(v.end);
                let prot = prot_of(v);
                let off = v.offset + (s - v.start);
                if let Some(copy) = private_copy(s, e, prot, v.page_size, fd, off) {
                    let snap = &SNAPS[n];
                    snap.start.store(s, Ordering::Relaxed);
                    snap.copy.store(copy, Ordering::Relaxed);
                    snap.prot.store(prot, Ordering::Relaxed);
                    snap.len.store(e - s, Ordering::Release);
                    n += 1;
                }
            }
        });
    }
}

/// Right after `fork`, in both processes (`child`: in the child, before its code runs). The
/// child puts the copies in place and forgets the moved ranges (closing its copies of the
/// memfds' descriptors); the parent drops the copies.
pub(crate) fn after_fork(child: bool) {
    if !FORKING.swap(false, Ordering::AcqRel) {
        if child {
            forget_all();
        }
        return;
    }
    for snap in &SNAPS {
        let len = snap.len.swap(0, Ordering::AcqRel);
        if len == 0 {
            continue;
        }
        let (start, copy) = (
            snap.start.load(Ordering::Acquire),
            snap.copy.load(Ordering::Acquire),
        );
        let placed = child
            && sys(
                libc::SYS_mremap,
                [
                    copy,
                    len,
                    len,
                    (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                    start,
                    0,
                ],
            ) == start as i64;
        if !placed {
            sys(libc::SYS_munmap, [copy, len, 0, 0, 0, 0]);
        }
    }
    if child {
        forget_all();
        // The child has one thread: the parent's mover is not here.
        MOVER.store(0, Ordering::Release);
    } else {
        unlock();
    }
}

/// A fork child's part: the moved ranges are its own private memory now.
fn forget_all() {
    TABLE.iter().for_each(Slot::free);
}

/// A private anonymous copy of `[s, e)` (shared, the memfd `fd` from offset `off`) with its
/// protection and page size, at an address of the kernel's choosing.
fn private_copy(s: u64, e: u64, prot: u64, page_size: u64, fd: i32, off: u64) -> Option<u64> {
    let len = e - s;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let huge = huge_flags(page_size, libc::MAP_HUGETLB as libc::c_uint);
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | u64::from(huge);
    let tmp = sys(libc::SYS_mmap, [0, len, rw, flags, u64::MAX, 0]);
    if tmp < 0 {
        return None;
    }
    let tmp = tmp as u64;
    // Only the memfd's data: its holes read as zeros either way.
    let copied = prot & libc::PROT_READ as u64 == 0 || copy_data(tmp, s, len, fd, off);
    if copied && sys(libc::SYS_mprotect, [tmp, len, prot, 0, 0, 0]) == 0 {
        Some(tmp)
    } else {
        sys(libc::SYS_munmap, [tmp, len, 0, 0, 0, 0]);
        None
    }
}

/// The handlers of SIGSEGV in place before ours.
static PREVIOUS: std::sync::OnceLock<libc::sigaction> = std::sync::OnceLock::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

fn install_handler() {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: `act` is fully initialised before use and `old` receives the previous
    // disposition; the handler reads only its arguments and this module's atomics.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut old) != 0 {
            return;
        }
        let _ = PREVIOUS.set(old);
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_segv as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER | libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGSEGV, &act, std::ptr::null_mut());
    }
}

/// Whether `addr` lies in a moved range or the one being moved.
fn ours(addr: u64) -> bool {
    let busy = (
        BUSY_START.load(Ordering::Acquire),
        BUSY_END.load(Ordering::Acquire),
    );
    if busy.0 <= addr && addr < busy.1 {
        return true;
    }
    TABLE.iter().any(|t| t.holds(addr, addr + 1))
}

extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as u64;
    if gettid() != MOVER.load(Ordering::Acquire) && ours(addr) {
        // A write while the range was read-only for its move: wait for the move's end, then
        // run the write again if the page is writable now (else the fault is the program's).
        while MOVER.load(Ordering::Acquire) != 0
            && BUSY_START.load(Ordering::Acquire) <= addr
            && addr < BUSY_END.load(Ordering::Acquire)
        {
            futex_wait(&MOVES, MOVES.load(Ordering::Acquire));
        }
        if Maps::open()
            .and_then(|m| m.query(addr))
            .is_some_and(|v| v.writable && v.start <= addr && addr < v.end)
        {
            return;
        }
    }
    if let Some(prev) = PREVIOUS.get() {
        // SAFETY: called from this signal handler with the kernel's own arguments.
        unsafe { uiommu_sys::filemap::pass_on(prev, sig, info, ctx) };
    }
}

extern "C" fn configure_at_load() {
    let _ = std::panic::catch_unwind(configure);
}

#[used]
#[link_section = ".init_array"]
static CONFIGURE_AT_LOAD: extern "C" fn() = configure_at_load;
