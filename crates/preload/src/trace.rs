//! `uiommu run --trace FILE`: one line per iommufd/VFIO ioctl the program makes on a file of
//! ours, written by the front-end as the call returns (docs/TRACE.md): the time, pid and
//! thread, the fd and what it is (iommufd, VFIO device, group, container, an engine-made
//! file), the call's name, its argument struct decoded before the call, the result or the
//! errno's name, the struct decoded after a successful call, and how long it took. As text
//! (`--trace-format text`, strace-like) or JSON lines (`json`).
//!
//! Off unless `UIOMMU_TRACE` names a file at load; then one relaxed atomic load per ioctl is
//! all it costs. On, every step is async-signal-safe (ioctl's path): the line is formatted into
//! a buffer on the stack with `core::fmt` (no allocation), the argument read with
//! `process_vm_readv` of this process, and written with one `write(2)` to the trace file,
//! opened `O_APPEND` at load; before each write the descriptor is checked (`fstat`) to still be
//! that file, since the program may close descriptors it did not open.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
pub(crate) use uiommu_uapi::trace::FileKind;
use uiommu_uapi::trace::{call, format, io_shown, Line, Record, Who};
pub(crate) use uiommu_uapi::trace::{Object, Op};

static ON: AtomicBool = AtomicBool::new(false);
static JSON: AtomicBool = AtomicBool::new(false);
static FD: AtomicI32 = AtomicI32::new(-1);
static DEV: AtomicU64 = AtomicU64::new(0);
static INO: AtomicU64 = AtomicU64::new(0);

/// Whether tracing is on.
#[inline]
#[cfg(not(feature = "no-trace"))]
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Whether tracing is on: never, in a library built to measure the trace's cost when off.
#[inline]
#[cfg(feature = "no-trace")]
pub(crate) fn on() -> bool {
    false
}

extern "C" fn open_at_load() {
    let _ = std::panic::catch_unwind(|| {
        let Some(path) = std::env::var_os("UIOMMU_TRACE").filter(|p| !p.is_empty()) else {
            return;
        };
        let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        else {
            return;
        };
        let Ok(md) = f.metadata() else { return };
        use std::os::fd::IntoRawFd;
        use std::os::unix::fs::MetadataExt;
        DEV.store(md.dev(), Ordering::Relaxed);
        INO.store(md.ino(), Ordering::Relaxed);
        // Out of the program's way: a high number, close-on-exec (a program it execs opens the
        // file again at its own load).
        let fd = f.into_raw_fd();
        // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor this function owns; no memory is
        // passed.
        let high = unsafe { crate::real::fcntl(fd, libc::F_DUPFD_CLOEXEC, 900) };
        let fd = if high >= 0 {
            // SAFETY: closes the descriptor just duplicated, which this function owns.
            unsafe { libc::syscall(libc::SYS_close, fd as libc::c_long) };
            high
        } else {
            fd
        };
        FD.store(fd, Ordering::Relaxed);
        JSON.store(
            std::env::var_os("UIOMMU_TRACE_FORMAT").is_some_and(|f| f == "json"),
            Ordering::Relaxed,
        );
        ON.store(true, Ordering::Release);
    });
}

#[used]
#[link_section = ".init_array"]
static OPEN_AT_LOAD: extern "C" fn() = open_at_load;

/// Read `buf.len()` bytes of this process at `addr` (the caller's struct).
fn read_own(addr: u64, buf: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: both iovecs describe live memory or an address the kernel checks (a bad one
    // is a short count); a raw system call, not an interposed name.
    // Every argument is passed as a full register: the call is variadic, and the kernel reads
    // the counts and flags as unsigned longs.
    let n = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            libc::getpid() as libc::c_long,
            &local as *const libc::iovec,
            1 as libc::c_ulong,
            &remote as *const libc::iovec,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    n == buf.len() as i64
}

/// The argument struct of `request` on a file of `kind`, read from `arg`: its bytes (up to
/// 256) and how many; 0 when the call takes no struct or it could not be read.
pub(crate) struct Arg {
    bytes: [u8; 256],
    len: usize,
}

/// Before a traced call: the argument struct as the program passed it.
pub(crate) fn before(kind: FileKind, request: u32, arg: u64) -> Arg {
    let (_, size) = call(kind, request);
    let mut a = Arg {
        bytes: [0; 256],
        len: 0,
    };
    let n = size.min(a.bytes.len());
    if n > 0 && read_own(arg, &mut a.bytes[..n]) {
        a.len = n;
    }
    a
}

fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live local.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// A monotonic start time for [`after`].
pub(crate) fn start() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC)
}

/// After a traced call: write its line.
#[allow(clippy::too_many_arguments)]
pub(crate) fn after(
    fd: i32,
    kind: FileKind,
    object: Object,
    request: u32,
    arg: u64,
    input: &Arg,
    result: Result<i64, i32>,
    started: u64,
) {
    let took = start().saturating_sub(started);
    let mut output = Arg {
        bytes: [0; 256],
        len: 0,
    };
    if result.is_ok() && input.len > 0 && read_own(arg, &mut output.bytes[..input.len]) {
        output.len = input.len;
    }
    let op = Op::Ioctl { request, arg };
    write_line(
        fd,
        kind,
        object,
        op,
        &input.bytes[..input.len],
        &output.bytes[..output.len],
        result,
        took,
    );
}

/// After a traced read or write of `count` bytes at `buf` (`offset` for pread/pwrite) of one
/// of our files: its line, with the value moved when it is a register access (at most 8
/// bytes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn after_io(
    fd: i32,
    kind: FileKind,
    object: Object,
    write: bool,
    buf: u64,
    count: u64,
    offset: Option<u64>,
    result: Result<i64, i32>,
    started: u64,
) {
    let took = start().saturating_sub(started);
    let mut bytes = [0u8; 256];
    let n = match result {
        Ok(r) if kind == FileKind::FaultQueue => io_shown(kind, r as u64),
        Ok(r) if r as u64 == count => io_shown(kind, count),
        _ => 0,
    };
    let moved = n > 0 && read_own(buf, &mut bytes[..n]);
    let data = if moved { &bytes[..n] } else { &bytes[..0] };
    let (op, input, output) = if write {
        (Op::Write { buf, count, offset }, data, &bytes[..0])
    } else {
        (Op::Read { buf, count, offset }, &bytes[..0], data)
    };
    write_line(fd, kind, object, op, input, output, result, took);
}

/// After a traced mmap of one of our files (always refused: `errno`).
pub(crate) fn after_mmap(
    fd: i32,
    kind: FileKind,
    object: Object,
    op: Op,
    errno: i32,
    started: u64,
) {
    let took = start().saturating_sub(started);
    write_line(fd, kind, object, op, &[], &[], Err(errno), took);
}

#[allow(clippy::too_many_arguments)]
fn write_line(
    fd: i32,
    kind: FileKind,
    object: Object,
    op: Op,
    input: &[u8],
    output: &[u8],
    result: Result<i64, i32>,
    took_ns: u64,
) {
    // SAFETY: getpid and gettid take no arguments.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    let rec = Record {
        wall_ns: now_ns(libc::CLOCK_REALTIME),
        who: Who {
            pid,
            tid: Some(tid),
            fd: Some(fd),
        },
        kind,
        object,
        op,
        input,
        output,
        result,
        took_ns,
    };
    let mut line = Line::new();
    format(&mut line, &rec, JSON.load(Ordering::Relaxed));
    emit(line.bytes());
}

/// Append `bytes` to the trace file, if its descriptor is still that file.
fn emit(bytes: &[u8]) {
    let fd = FD.load(Ordering::Relaxed);
    // SAFETY: fstat writes one struct stat into the live local.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, raw system call on a descriptor number (a closed one is EBADF).
    let ok = unsafe {
        libc::syscall(
            libc::SYS_fstat,
            fd as libc::c_long,
            &mut st as *mut libc::stat,
        )
    } == 0
        && st.st_dev == DEV.load(Ordering::Relaxed)
        && st.st_ino == INO.load(Ordering::Relaxed);
    if !ok {
        return;
    }
    // SAFETY: writes `bytes`, a live slice, to the trace file; a raw system call (the
    // library's own `write` is interposed).
    unsafe {
        libc::syscall(
            libc::SYS_write,
            fd as libc::c_long,
            bytes.as_ptr(),
            bytes.len(),
        )
    };
}
