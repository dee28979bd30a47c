//! The emulated kernel's systematic fault injection, as `iommufd_fail_nth` and any program
//! drive it: `/proc/<pid>/task/<tid>/fail-nth` (and `/proc/self/...`, `/proc/thread-self/`,
//! `/proc/<pid>/fail-nth`) of a thread of this process is a file of ours. Writing N to it
//! makes the N-th fault-injection site that thread passes in the engine fail
//! ([`uiommu_platform::fault_inject`]); reading it says what is left of the count (0 once the
//! fault fired). The debugfs knobs that decide which sites count are the view's
//! `/sys/kernel/debug/{failslab,fail_page_alloc}` files (`crate::sysfs`), read each time a count
//! is written.
//!
//! `UIOMMU_FAIL_NTH=N` (`uiommu run --fail-nth N`) is a count for the whole process, for
//! programs that do not write `fail-nth` themselves (a VMM's error handling): the N-th site
//! any of its threads passes fails, once, and a line on stderr names it. A thread with a
//! count of its own uses its own; calls of other threads that overlap the one counting are not
//! counted.
//!
//! Only the engine's sites count (the program's other system calls are the host kernel's),
//! and with the host engine none of this is served (the paths are the host's: ENOENT on a
//! kernel without fault injection).
//!
//! Async-signal-safe: counts and files live in fixed tables of atomics; no allocation on a
//! call's path.

use crate::real;
use crate::state::Global;
use libc::c_int;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::*};
use uiommu_platform::fault_inject::{self, Knobs, Site};
use uiommu_uapi::{Caller, Errno};

/// Threads with a count, and files open at once: beyond, writing a count is ENOMEM and an
/// open is ENFILE.
const SLOTS: usize = 256;

struct Count {
    tid: AtomicI32,
    left: AtomicU32,
}

struct File {
    fd: AtomicI32,
    ino: AtomicU64,
    tid: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_COUNT: Count = Count {
    tid: AtomicI32::new(0),
    left: AtomicU32::new(0),
};
#[allow(clippy::declare_interior_mutable_const)]
const NO_FILE: File = File {
    fd: AtomicI32::new(-1),
    ino: AtomicU64::new(0),
    tid: AtomicI32::new(0),
};

static COUNTS: [Count; SLOTS] = [NO_COUNT; SLOTS];
static FILES: [File; SLOTS] = [NO_FILE; SLOTS];
/// A count was set in this process: calls look theirs up (else a call costs one load).
static COUNTING: AtomicBool = AtomicBool::new(false);
/// A fail-nth file was opened in this process: reads and writes look the fd up.
static FILES_OPEN: AtomicBool = AtomicBool::new(false);
/// The knobs as read at the last write of a count: `slab`, `pages`, `pages_min_order`.
static KNOB_SLAB: AtomicBool = AtomicBool::new(false);
static KNOB_PAGES: AtomicBool = AtomicBool::new(false);
static KNOB_MIN_ORDER: AtomicU32 = AtomicU32::new(1);
/// The process-wide count of `UIOMMU_FAIL_NTH` (0: none, or spent), and the value it started at.
static PROCESS: AtomicU32 = AtomicU32::new(0);
static PROCESS_FIRST: AtomicU32 = AtomicU32::new(0);

/// At load: the process-wide count of `UIOMMU_FAIL_NTH`, with every site counting (the knobs
/// of a program that writes none).
extern "C" fn process_count_at_load() {
    let _ = std::panic::catch_unwind(|| {
        let Some(v) = std::env::var_os("UIOMMU_FAIL_NTH") else {
            return;
        };
        let Ok(n) = fault_inject::parse_count(v.as_encoded_bytes()) else {
            return;
        };
        if n == 0 {
            return;
        }
        KNOB_SLAB.store(true, Relaxed);
        KNOB_PAGES.store(true, Relaxed);
        KNOB_MIN_ORDER.store(0, Relaxed);
        PROCESS_FIRST.store(n, Relaxed);
        PROCESS.store(n, Release);
        COUNTING.store(true, Release);
    });
}

#[used]
#[link_section = ".init_array"]
static PROCESS_COUNT_AT_LOAD: extern "C" fn() = process_count_at_load;

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn count_of(tid: i32) -> u32 {
    COUNTS
        .iter()
        .find(|c| c.tid.load(Acquire) == tid)
        .map_or(0, |c| c.left.load(Acquire))
}

fn set_count(tid: i32, n: u32) -> Result<(), Errno> {
    if let Some(c) = COUNTS.iter().find(|c| c.tid.load(Acquire) == tid) {
        c.left.store(n, Release);
        return Ok(());
    }
    if n == 0 {
        return Ok(());
    }
    for c in &COUNTS {
        // A slot of a thread whose count is spent may be taken over.
        let old = c.tid.load(Acquire);
        if (old == 0 || c.left.load(Acquire) == 0)
            && c.tid.compare_exchange(old, tid, AcqRel, Acquire).is_ok()
        {
            c.left.store(n, Release);
            COUNTING.store(true, Release);
            return Ok(());
        }
    }
    Err(libc::ENOMEM)
}

fn knobs() -> Knobs {
    Knobs {
        slab: KNOB_SLAB.load(Relaxed),
        pages: KNOB_PAGES.load(Relaxed),
        pages_min_order: KNOB_MIN_ORDER.load(Relaxed),
    }
}

/// Read the view's debugfs knobs into the statics (Linux's defaults where the view has none).
fn read_knobs() {
    let mut buf = [0u8; 24];
    // `ignore-gfp-wait` Y (the default): sleeping allocations, all of the engine's, never fail.
    let mut counts = |rel: &str| match crate::sysfs::read_debugfs(rel, &mut buf) {
        Some(n) if n > 0 => !matches!(buf[0], b'Y' | b'y' | b'1'),
        _ => false,
    };
    KNOB_SLAB.store(counts("failslab/ignore-gfp-wait"), Relaxed);
    KNOB_PAGES.store(counts("fail_page_alloc/ignore-gfp-wait"), Relaxed);
    let order = crate::sysfs::read_debugfs("fail_page_alloc/min-order", &mut buf)
        .and_then(|n| {
            let t = &buf[..n];
            let end = t
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(t.len());
            std::str::from_utf8(&t[..end]).ok()?.parse().ok()
        })
        .unwrap_or(1);
    KNOB_MIN_ORDER.store(order, Relaxed);
}

/// Run `f`, a call of the calling thread into the engine, with the thread's count: the
/// caller's copies become fault sites while it runs, and what the call left of the count is
/// kept.
pub(crate) fn call<R>(g: &Global, f: impl FnOnce(&Caller<'_>) -> R) -> R {
    let caller = g.caller();
    if !COUNTING.load(Acquire) {
        return f(&caller);
    }
    let tid = gettid();
    let own = count_of(tid);
    let n = if own != 0 {
        own
    } else {
        // The process-wide count, taken whole for this call (other threads see none meanwhile).
        PROCESS.swap(0, AcqRel)
    };
    if n == 0 {
        return f(&caller);
    }
    let faulting = fault_inject::Faulting(caller.mem);
    let armed = Caller {
        mem: &faulting,
        fds: caller.fds,
    };
    let (r, out) = fault_inject::with_count(n, knobs(), || f(&armed));
    if own != 0 {
        let _ = set_count(tid, out.left);
    } else {
        PROCESS.fetch_add(out.left, AcqRel);
        if let Some(site) = out.fired {
            report(tid, site);
        }
    }
    r
}

/// `uiommu: UIOMMU_FAIL_NTH=N: ...` on stderr, once the process-wide count fired.
fn report(tid: i32, site: Site) {
    let what = match site {
        Site::Slab => "an allocation (ENOMEM)",
        Site::Pages { .. } => "a page allocation (ENOMEM)",
        Site::Usercopy => "a copy from or to user memory (EFAULT)",
    };
    let mut line = [0u8; 160];
    let mut w = Writer(&mut line, 0);
    let _ = std::fmt::Write::write_fmt(
        &mut w,
        format_args!(
            "uiommu: UIOMMU_FAIL_NTH={}: failed {what} in thread {tid}\n",
            PROCESS_FIRST.load(Relaxed)
        ),
    );
    let n = w.1;
    // SAFETY: writes `n` initialised bytes of `line` to stderr.
    unsafe { real::write(2, line.as_ptr().cast(), n) };
}

/// A copy to or from the caller's memory made by a fail-nth file itself: a site of the
/// calling thread's count (the kernel's `copy_to_user`/`copy_from_user`).
fn copy_site() -> Result<(), Errno> {
    if !COUNTING.load(Acquire) {
        return Ok(());
    }
    let tid = gettid();
    let n = count_of(tid);
    let (r, out) = fault_inject::with_count(n, knobs(), || fault_inject::check(Site::Usercopy));
    let _ = set_count(tid, out.left);
    r
}

/// The thread a `fail-nth` path names, when it is one of this process's threads.
pub(crate) fn path_tid(path: &[u8]) -> Option<i32> {
    let rest = path.strip_prefix(b"/proc/")?;
    let me = std::process::id() as i32;
    let (who, rest) = split(rest)?;
    let tid = match who {
        b"thread-self" => {
            (rest == b"fail-nth").then_some(())?;
            return Some(gettid());
        }
        b"self" => me,
        digits => number(digits)?,
    };
    let tid = if rest == b"fail-nth" {
        (tid == me).then_some(tid)?
    } else {
        let rest = rest.strip_prefix(b"task/")?;
        let (t, rest) = split(rest)?;
        (rest == b"fail-nth" && tid == me).then_some(())?;
        number(t)?
    };
    thread_exists(tid).then_some(tid)
}

fn split(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == b'/')?;
    Some((&s[..i], &s[i + 1..]))
}

fn number(s: &[u8]) -> Option<i32> {
    if s.is_empty() || s.len() > 9 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Whether `tid` is a thread of this process (its `/proc/self/task/<tid>` exists).
fn thread_exists(tid: i32) -> bool {
    let mut path = [0u8; 40];
    let mut w = Writer(&mut path, 0);
    let _ = std::fmt::Write::write_fmt(&mut w, format_args!("/proc/self/task/{tid}\0"));
    // SAFETY: `path` holds a NUL-terminated string written above.
    unsafe { libc::access(path.as_ptr().cast(), libc::F_OK) == 0 }
}

/// A `fmt::Write` into a fixed buffer (no allocation).
struct Writer<'a>(&'a mut [u8], usize);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.1 + s.len();
        if end > self.0.len() {
            return Err(std::fmt::Error);
        }
        self.0[self.1..end].copy_from_slice(s.as_bytes());
        self.1 = end;
        Ok(())
    }
}

fn inode_of(fd: c_int) -> Option<u64> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`, a valid `struct stat`.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
}

/// Open the `fail-nth` file of thread `tid`: a memfd standing for it.
pub(crate) fn open(tid: i32, flags: c_int) -> Result<c_int, Errno> {
    let fd = crate::state::new_memfd(c"uiommu:fail-nth", flags & libc::O_CLOEXEC != 0)?;
    let Some(ino) = inode_of(fd) else {
        // SAFETY: closes the memfd just made, which the program has not seen.
        unsafe { real::close(fd) };
        return Err(libc::ENFILE);
    };
    for f in &FILES {
        let old = f.fd.load(Acquire);
        let stale = old >= 0 && inode_of(old) != Some(f.ino.load(Acquire));
        if (old < 0 || stale) && f.fd.compare_exchange(old, -2, AcqRel, Acquire).is_ok() {
            f.ino.store(ino, Release);
            f.tid.store(tid, Release);
            f.fd.store(fd, Release);
            FILES_OPEN.store(true, Release);
            return Ok(fd);
        }
    }
    // SAFETY: closes the memfd just made, which the program has not seen.
    unsafe { real::close(fd) };
    Err(libc::ENFILE)
}

/// The thread whose `fail-nth` file `fd` is, if it is one.
fn file_tid(fd: c_int) -> Option<i32> {
    if !FILES_OPEN.load(Acquire) || fd < 0 {
        return None;
    }
    let f = FILES.iter().find(|f| f.fd.load(Acquire) == fd)?;
    (inode_of(fd)? == f.ino.load(Acquire)).then(|| f.tid.load(Acquire))
}

/// A read or write of a `fail-nth` file: `None` when `fd` is not one. `offset` is the call's
/// (`None`: the file position, which a read advances).
pub(crate) fn io(
    fd: c_int,
    write: bool,
    buf: u64,
    count: usize,
    offset: Option<i64>,
) -> Option<Result<usize, Errno>> {
    let tid = file_tid(fd)?;
    if !thread_exists(tid) {
        return Some(Err(libc::ESRCH));
    }
    Some(if write {
        write_count(tid, buf, count)
    } else {
        read_count(fd, tid, buf, count, offset)
    })
}

fn write_count(tid: i32, buf: u64, count: usize) -> Result<usize, Errno> {
    let n = count.min(fault_inject::COUNT_TEXT_MAX);
    let mut text = [0u8; fault_inject::COUNT_TEXT_MAX];
    copy_site()?;
    if !crate::pinnable::read_own(buf, &mut text[..n]) {
        return Err(libc::EFAULT);
    }
    let value = fault_inject::parse_count(&text[..n])?;
    read_knobs();
    set_count(tid, value)?;
    Ok(count)
}

fn read_count(
    fd: c_int,
    tid: i32,
    buf: u64,
    count: usize,
    offset: Option<i64>,
) -> Result<usize, Errno> {
    let mut text = [0u8; 12];
    let mut w = Writer(&mut text, 0);
    let _ = std::fmt::Write::write_fmt(&mut w, format_args!("{}\n", count_of(tid)));
    let len = w.1;
    let pos = match offset {
        Some(p) if p < 0 => return Err(libc::EINVAL),
        Some(p) => p,
        // SAFETY: lseek on the memfd standing for the file; no memory is passed.
        None => unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) },
    };
    let start = usize::try_from(pos).unwrap_or(usize::MAX).min(len);
    let n = count.min(len - start);
    if n == 0 {
        return Ok(0);
    }
    copy_site()?;
    if !crate::pinnable::write_own(buf, &text[start..start + n]) {
        return Err(libc::EFAULT);
    }
    if offset.is_none() {
        // SAFETY: lseek on the memfd standing for the file; no memory is passed.
        unsafe { libc::lseek(fd, pos + n as i64, libc::SEEK_SET) };
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_nth_paths_of_this_process_name_its_threads() {
        let me = std::process::id() as i32;
        let tid = gettid();
        let p = |s: String| path_tid(s.as_bytes());
        assert_eq!(p(format!("/proc/self/task/{me}/fail-nth")), Some(me));
        assert_eq!(p(format!("/proc/{me}/task/{tid}/fail-nth")), Some(tid));
        assert_eq!(p("/proc/thread-self/fail-nth".into()), Some(tid));
        assert_eq!(p("/proc/self/fail-nth".into()), Some(me));
        assert_eq!(p(format!("/proc/{me}/fail-nth")), Some(me));
        assert_eq!(p("/proc/1/fail-nth".into()), None, "another process");
        assert_eq!(p("/proc/self/task/999999999/fail-nth".into()), None);
        assert_eq!(p(format!("/proc/self/task/{me}/fail-nth/x")), None);
        assert_eq!(p(format!("/proc/self/task/{me}/comm")), None);
        assert_eq!(p("/proc/self/task//fail-nth".into()), None);
    }

    #[test]
    fn a_count_is_kept_per_thread() {
        let tid = gettid();
        set_count(tid, 5).unwrap();
        assert_eq!(count_of(tid), 5);
        let other = std::thread::spawn(gettid).join().unwrap();
        assert_eq!(count_of(other), 0);
        set_count(tid, 0).unwrap();
        assert_eq!(count_of(tid), 0);
    }
}
