//! `libuiommu_preload.so`: uiommu under an unmodified program, through `LD_PRELOAD`.
//!
//! The library interposes the C library's file functions. Opening `/dev/iommu` gives the
//! program a security context of an in-process engine; opening `/dev/vfio/devices/vfioN` gives
//! it the N-th `vfio-pci` function of the emulated platform ([`vfio_devices`]). The file
//! descriptors are real memfds (named `uiommu:iommu`, `uiommu:vfio`, `uiommu:file`), so the
//! kernel numbers them and shares them through `dup`, `fcntl(F_DUPFD)`, `fork` and
//! `SCM_RIGHTS`; the state behind them is keyed by the memfd's inode ([`table`]). `ioctl`,
//! `read`, `write`, `pread`, `pwrite` and `mmap` on those fds are served by the ABI layer
//! (`uiommu-uapi`); everything else goes to the real function, found with
//! `dlsym(RTLD_NEXT, ...)` ([`real`]).
//!
//! The legacy VFIO path is there too: `/dev/vfio/vfio` is the container (an iommufd with the
//! type1 compatibility ioctls) and `/dev/vfio/<group>` the group file of every IOMMU group with
//! a `vfio-pci` function ([`uiommu_uapi::vfio_group`]); device files a group hands out are
//! engine-made files served like device cdevs. For discovery, [`sysfs`] serves a view of the
//! platform under `/sys/bus/pci`, `/sys/kernel/iommu_groups` and `/sys/devices/pci0000:00`,
//! and [`devdir`] makes `/dev/vfio` and `/dev/vfio/devices` directories listing the nodes.
//! Any other path goes straight to the real function after a comparison of its first bytes:
//! no lock, no allocation.
//!
//! # The exported functions
//!
//! Each is `#[no_mangle] pub unsafe extern "C"`, runs its body under
//! [`std::panic::catch_unwind`] (a panic fails the call with EIO, never unwinds into C) and
//! goes to the real function at once when the calling thread is already inside this library
//! ([`hook`]: the Rust code's own `open`/`close`/`read` calls, e.g. reading `/proc`). When the
//! process has none of our files open, an fd-taking call costs one atomic load before the real
//! call; otherwise one `fstat` decides whether the fd is ours.
//!
//! C variadic functions (`open`, `openat`, `ioctl`) cannot be defined in stable Rust. They
//! are defined with the optional argument as an ordinary parameter: in the x86-64 System V
//! (and AArch64 Linux) calling convention a variadic argument travels in the same register as
//! the same-position named argument, so the function reads what the caller passed (or an
//! unspecified value that is then not used, as `open` without `O_CREAT` ignores `mode`). The
//! real functions are called through variadic function-pointer types, so those calls are
//! well-formed variadic calls.
//!
//! Not interposed, because inode keying needs nothing from them: `dup` and `fcntl` (a
//! duplicate refers to the same inode, so it is ours without being registered), `munmap`
//! (no mapping of our files is ever made). `dup2`, `dup3`, `close_range` and `closefrom` are
//! interposed because they close fds implicitly. See `docs/preload.md` for the limits.

#![deny(unsafe_op_in_unsafe_fn)]

// The variadic-argument convention above, and `c_ulong` = `u64` for ioctl arguments.
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!("uiommu-preload supports Linux on x86-64 and AArch64 only");

pub mod devdir;
mod failnth;
pub mod hook;
mod host;
pub mod inherit;
pub mod node;
mod passing;
mod pinnable;
mod poll;
pub mod real;
mod remote;
mod state;
mod stats;
pub mod sysfs;
pub mod table;
mod trace;

pub use state::vfio_devices;

use hook::{ffi, in_hook, Hook};
use libc::{c_char, c_int, c_uint, c_ulong, c_void, off64_t, off_t, size_t, ssize_t};
use real::{errno, set_errno};
use state::{global, global_if_any, Global, Kind, OpenFile};
use uiommu_platform::UserVa;
use uiommu_uapi::{Caller, Errno};

pub use uiommu_uapi::file::Target;

pub use uiommu_uapi::file::target_of;

/// Whether the node `target` names exists now (for `access`).
pub(crate) fn target_exists(target: Target) -> bool {
    global().is_ok_and(|g| uiommu_uapi::file::target_exists(&g.engine, target))
}

/// The fast path of every `open`: whether the C string `path` is one of ours.
///
/// # Safety
/// `path` is null or points to a NUL-terminated string (the contract of `open` itself).
pub(crate) unsafe fn classify(path: *const c_char) -> Option<Target> {
    const DEV: &[u8] = b"/dev/";
    if path.is_null() {
        return None;
    }
    for (i, &want) in DEV.iter().enumerate() {
        // SAFETY: every byte before `i` matched a non-NUL byte of DEV, so the string has not
        // ended before index `i`.
        let got = unsafe { *path.add(i) } as u8;
        if got != want {
            return None;
        }
    }
    // SAFETY: `path` is a NUL-terminated string (the caller's contract).
    let bytes = unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes();
    target_of(bytes)
}

/// The thread whose `fail-nth` file `path` names ([`failnth::path_tid`]), for the in-process
/// engine and a program's own call.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
unsafe fn fail_nth_path(path: *const c_char) -> Option<i32> {
    const PROC: &[u8] = b"/proc/";
    if path.is_null() {
        return None;
    }
    for (i, &want) in PROC.iter().enumerate() {
        // SAFETY: every byte before `i` matched a non-NUL byte of PROC, so the string has not
        // ended before index `i`.
        if unsafe { *path.add(i) } as u8 != want {
            return None;
        }
    }
    if in_hook() || host::on() {
        return None;
    }
    // SAFETY: `path` is a NUL-terminated string (the caller's contract).
    failnth::path_tid(unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes())
}

/// Fail the call with `e`: errno set, -1 returned.
pub(crate) fn fail(e: Errno) -> c_int {
    set_errno(e);
    -1
}

/// `fail` for calls returning `ssize_t`.
pub(crate) fn fail_ssize(e: Errno) -> ssize_t {
    set_errno(e);
    -1
}

/// Open one of our paths.
pub(crate) fn open_ours(target: Target, flags: c_int) -> Result<c_int, Errno> {
    uiommu_uapi::file::open_check(target, flags)?;
    if host::on() {
        return host::open(target, flags);
    }
    let g = global()?;
    let (name, kind) = failnth::call(g, |_| make_file(g, target))?;
    register(g, name, target, kind, flags)
}

/// A new file of ours for `target`, and the memfd name it gets.
pub(crate) fn make_file(
    g: &Global,
    target: Target,
) -> Result<(&'static std::ffi::CStr, Kind), Errno> {
    let kind = uiommu_uapi::file::make_file(&g.engine, g.space, target)?;
    let name = match target {
        Target::Iommu => c"uiommu:iommu",
        Target::VfioDevice(_) => c"uiommu:vfio",
        Target::VfioContainer => c"uiommu:container",
        Target::VfioGroup(_) | Target::NoEnt => c"uiommu:group",
    };
    Ok((name, kind))
}

/// Give `kind` a new memfd and record it.
fn register(
    g: &Global,
    name: &std::ffi::CStr,
    target: Target,
    kind: Kind,
    flags: c_int,
) -> Result<c_int, Errno> {
    let fd = state::new_memfd(name, flags & libc::O_CLOEXEC != 0)?;
    inherit::mark_fresh(fd, target);
    if flags & libc::O_NONBLOCK != 0 {
        // SAFETY: F_SETFL with an integer argument on the fd just made.
        unsafe { real::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK as c_ulong) };
    }
    let open = OpenFile::new(kind, flags & libc::O_ACCMODE, Some(target));
    match g.files.insert(fd, open) {
        Ok(_) => Ok(fd),
        Err(e) => {
            // SAFETY: closes the memfd made above, which the program has not seen.
            unsafe { real::close(fd) };
            Err(e)
        }
    }
}

/// The common body of the `open` family: ours, or `real()`.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
unsafe fn open_impl(
    path: *const c_char,
    flags: c_int,
    real: impl FnOnce(*const c_char) -> c_int,
) -> c_int {
    ffi(-1, || {
        // SAFETY: forwarded from the caller.
        if let Some(tid) = unsafe { fail_nth_path(path) } {
            return failnth::open(tid, flags).unwrap_or_else(fail);
        }
        // SAFETY: forwarded from the caller.
        let Some(target) = (unsafe { classify(path) }) else {
            // SAFETY: forwarded from the caller; the real open gets the path to open (the
            // sysfs view's copy of a path it serves).
            let r = unsafe { sysfs::open_path(path, real) };
            if r < 0 && errno() == libc::ENXIO && host::on() && !path.is_null() {
                // `/proc/PID/fd/N` of one of the engine's files: a new open of its node.
                if let Some(res) = host::reopen(path, flags) {
                    return res.unwrap_or_else(fail);
                }
                set_errno(libc::ENXIO);
            }
            return r;
        };
        if in_hook() {
            return real(path);
        }
        let _h = Hook::enter();
        let r = open_ours(target, flags);
        if r.is_ok() {
            stats::open(target);
        }
        r.unwrap_or_else(fail)
    })
}

/// `open(2)`. `mode` is the variadic third argument (read from its register; meaningful only
/// with `O_CREAT`/`O_TMPFILE`, as in C).
///
/// # Safety
/// As `open(2)`.
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    unsafe { open_impl(path, flags, |p| real::open(p, flags, mode)) }
}

/// `open64(2)` (the same as `open` on 64-bit Linux).
///
/// # Safety
/// As `open64(2)`.
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    unsafe { open_impl(path, flags, |p| real::open64(p, flags, mode)) }
}

/// `openat(2)`. An absolute path ignores `dirfd`; a relative one is never ours.
///
/// # Safety
/// As `openat(2)`.
#[no_mangle]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    unsafe { open_impl(path, flags, |p| real::openat(dirfd, p, flags, mode)) }
}

/// `openat64(2)`.
///
/// # Safety
/// As `openat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    unsafe { open_impl(path, flags, |p| real::openat64(dirfd, p, flags, mode)) }
}

/// glibc's `__open_2`, which `open` becomes under `_FORTIFY_SOURCE` when there is no mode.
///
/// # Safety
/// As `open(2)`.
#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    unsafe { open_impl(path, flags, |p| real::open_2(p, flags)) }
}

/// glibc's `__open64_2`.
///
/// # Safety
/// As `open(2)`.
#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    unsafe { open_impl(path, flags, |p| real::open64_2(p, flags)) }
}

/// glibc's `__openat_2`.
///
/// # Safety
/// As `openat(2)`.
#[no_mangle]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    unsafe { open_impl(path, flags, |p| real::openat_2(dirfd, p, flags)) }
}

/// glibc's `__openat64_2`.
///
/// # Safety
/// As `openat(2)`.
#[no_mangle]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    unsafe { open_impl(path, flags, |p| real::openat64_2(dirfd, p, flags)) }
}

/// The state when one of our files may be involved and this thread is not inside the library.
pub(crate) fn active() -> Option<&'static Global> {
    let g = global_if_any()?;
    (!g.files.is_empty() && !in_hook()).then_some(g)
}

/// Run `close_op` (which may close some of our fds), then drop the files no fd refers to any
/// more; errno is the operation's.
fn closing(g: &'static Global, may_close_ours: bool, close_op: impl FnOnce() -> c_int) -> c_int {
    let r = close_op();
    if may_close_ours {
        let e = errno();
        // Dropped here, outside the table lock: a context teardown or device unbind.
        drop(remote::sweep(g));
        g.ready.refresh();
        set_errno(e);
    }
    r
}

/// Under the host engine: run `close_op` (which may close or replace fds `fds`), then forget
/// what those fds named and let the engine release what it closed.
fn host_closing(
    may_close_ours: bool,
    fds: (c_uint, c_uint),
    close_op: impl FnOnce() -> c_int,
) -> c_int {
    let r = close_op();
    host::forget(fds.0, fds.1);
    if may_close_ours {
        host::sync();
    }
    r
}

/// `close(2)`. Closing the last fd of one of our files closes the file (context teardown,
/// device unbind); a `dup` or an fd received over a socket keeps it open.
///
/// # Safety
/// As `close(2)`.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    ffi(-1, || {
        // SAFETY: close has no memory preconditions.
        let real_close = || unsafe { real::close(fd) };
        if host::on() {
            // The engine releases a file nobody holds before this close returns.
            let ours = host::ours(fd);
            let r = real_close();
            if let Ok(n) = c_uint::try_from(fd) {
                host::forget(n, n);
            }
            if ours && r == 0 {
                host::sync();
            }
            return r;
        }
        let g = active();
        if g.is_none() && (in_hook() || !remote::has_upstream()) {
            return real_close();
        }
        let _h = Hook::enter();
        let ours = g.is_some_and(|g| g.files.key(fd).is_some());
        // An fd inherited from an ancestor's engine: the ancestor learns it was closed (the
        // file may now be held by nobody).
        let inherited = (!ours).then(|| remote::inherited(fd)).flatten();
        let r = match g {
            Some(g) => closing(g, ours, real_close),
            None => real_close(),
        };
        if let (Some(key), 0) = (inherited, r) {
            let e = errno();
            remote::closed(key);
            set_errno(e);
        }
        r
    })
}

/// `dup2(2)`: an fd of ours at `new` is closed implicitly.
///
/// # Safety
/// As `dup2(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    ffi(-1, || {
        // SAFETY: dup2 has no memory preconditions.
        let op = || unsafe { real::dup2(old, new) };
        if host::on() {
            let at = c_uint::try_from(new).unwrap_or(c_uint::MAX);
            return host_closing(old != new && host::ours(new), (at, at), op);
        }
        let Some(g) = active() else {
            return op();
        };
        let _h = Hook::enter();
        let ours = old != new && g.files.key(new).is_some();
        closing(g, ours, op)
    })
}

/// `dup3(2)`: an fd of ours at `new` is closed implicitly.
///
/// # Safety
/// As `dup3(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    ffi(-1, || {
        // SAFETY: dup3 has no memory preconditions.
        let op = || unsafe { real::dup3(old, new, flags) };
        if host::on() {
            let at = c_uint::try_from(new).unwrap_or(c_uint::MAX);
            return host_closing(old != new && host::ours(new), (at, at), op);
        }
        let Some(g) = active() else {
            return op();
        };
        let _h = Hook::enter();
        let ours = old != new && g.files.key(new).is_some();
        closing(g, ours, op)
    })
}

/// `close_range(2)`: may close fds of ours (not with `CLOSE_RANGE_CLOEXEC`).
///
/// # Safety
/// As `close_range(2)`.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    ffi(-1, || {
        // SAFETY: close_range has no memory preconditions.
        let op = || unsafe { real::close_range(first, last, flags) };
        if host::on() {
            return host_closing(
                flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0,
                (first, last),
                op,
            );
        }
        let Some(g) = active() else {
            return op();
        };
        let _h = Hook::enter();
        let closes = flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0;
        closing(g, closes, op)
    })
}

/// glibc's `closefrom(3)`.
///
/// # Safety
/// As `closefrom(3)`.
#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    ffi((), || {
        // SAFETY: closefrom has no memory preconditions.
        let op = || unsafe { real::closefrom(low) };
        if host::on() {
            let from = c_uint::try_from(low.max(0)).unwrap_or(0);
            host_closing(true, (from, c_uint::MAX), || {
                op();
                0
            });
            return;
        }
        let Some(g) = active() else {
            return op();
        };
        let _h = Hook::enter();
        closing(g, true, || {
            op();
            0
        });
    })
}

/// `_IOC_TYPE` of every iommufd and VFIO ioctl (`';'`).
const UAPI_IOCTL_TYPE: c_ulong = b';' as c_ulong;

/// `ioctl(2)`. `arg` is the variadic third argument (read from its register).
///
/// Requests of another `_IOC_TYPE` than `';'` (iommufd and VFIO) go to the real `ioctl` without
/// looking at the fd: on our fds that is the memfd, which answers the VFS-generic requests
/// (`FIOCLEX`, `FIONBIO`, ...) as the device would.
///
/// # Safety
/// As `ioctl(2)`: `arg` is what the request expects (a pointer is only read or written through
/// the process-memory accessor, so a bad one is EFAULT).
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    ffi(-1, || {
        // SAFETY: the caller's arguments are passed on unchanged.
        let real_ioctl = || unsafe { real::ioctl(fd, request, arg) };
        if (request >> 8) & 0xff != UAPI_IOCTL_TYPE {
            return match generic_ioctl(fd, request as u32, arg) {
                Some(r) => r,
                None => real_ioctl(),
            };
        }
        // A map of private memory: made holdable first (the engine holds what it pins).
        pinnable::before_map(request, arg);
        if trace::on() {
            return traced_ioctl(fd, request, arg);
        }
        ioctl_of_ours(fd, request, arg)
    })
}

/// An ioctl of another type than `';'` on one of our files, as the kernel answers it for
/// iommufd, VFIO and the engine's anonymous files: the ones the VFS handles for every file
/// (FIOCLEX, FIONCLEX, FIONBIO, FIGETBSZ) go to the real file, FIOASYNC turning async I/O on
/// is ENOTTY (none of them has `fasync`), and everything else reaches the driver, which knows
/// only its own type: ENOTTY (FIONREAD, TCGETS, ...). `None`: not ours, or the real call.
fn generic_ioctl(fd: c_int, request: u32, arg: c_ulong) -> Option<c_int> {
    const FIGETBSZ: u32 = 2;
    if matches!(
        request as c_ulong,
        libc::FIOCLEX | libc::FIONCLEX | libc::FIONBIO
    ) || request == FIGETBSZ
        || !fd_is_ours(fd)
    {
        return None;
    }
    if request as c_ulong == libc::FIOASYNC {
        let mut on = [0u8; 4];
        if !pinnable::read_own(arg, &mut on) {
            return Some(fail(libc::EFAULT));
        }
        if on == [0; 4] {
            return Some(0);
        }
    }
    Some(fail(libc::ENOTTY))
}

/// [`ioctl`] with `uiommu run --trace` on: the call, and its line in the trace when the file
/// is one of ours.
fn traced_ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    let Some(kind) = traced_kind(fd) else {
        return ioctl_of_ours(fd, request, arg);
    };
    let input = trace::before(kind, request as u32, arg);
    let t0 = trace::start();
    let r = ioctl_of_ours(fd, request, arg);
    let result = result_of(i64::from(r));
    let object = traced_object(fd);
    trace::after(fd, kind, object, request as u32, arg, &input, result, t0);
    keep_errno(result);
    r
}

/// A libc-style return as a trace line records it: the value, or the errno the call set.
fn result_of(r: i64) -> Result<i64, i32> {
    if r < 0 {
        Err(real::errno())
    } else {
        Ok(r)
    }
}

/// The call's errno again after its trace line was written (which may have changed it).
fn keep_errno(result: Result<i64, i32>) {
    if let Err(e) = result {
        real::set_errno(e);
    }
}

/// An iommufd or VFIO ioctl (type `';'`): to the engine when the fd is one of ours.
fn ioctl_of_ours(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    {
        // SAFETY: the caller's arguments are passed on unchanged.
        let real_ioctl = || unsafe { real::ioctl(fd, request, arg) };
        if host::on() {
            return match host::ioctl(fd, request, arg) {
                None => real_ioctl(),
                Some(Ok(v)) => c_int::try_from(v).unwrap_or(c_int::MAX),
                Some(Err(e)) => fail(e),
            };
        }
        let Some(g) = active() else {
            if in_hook() {
                return real_ioctl();
            }
            return remote_or_real(fd, request, arg, real_ioctl);
        };
        // Entered before the look-up so that the file, if this call ends up holding its
        // last reference (closed by another thread meanwhile), is dropped inside the library.
        let _h = Hook::enter();
        let Some(file) = g.files.get(fd) else {
            return remote_or_real(fd, request, arg, real_ioctl);
        };
        inherit::mark_used(fd, &file);
        let r = failnth::call(g, |c| file.ioctl(c, request, arg));
        stats::ioctl(g, &file.kind, request, arg, r.map(|_| ()));
        g.ready.refresh();
        match r {
            Ok(v) => c_int::try_from(v).unwrap_or(c_int::MAX),
            Err(e) => fail(e),
        }
    }
}

/// An iommufd or VFIO ioctl on an fd not in this process's table: an fd inherited from an
/// ancestor's engine is served there (`remote`), anything else by the real `ioctl`.
fn remote_or_real(
    fd: c_int,
    request: c_ulong,
    arg: c_ulong,
    real_ioctl: impl FnOnce() -> c_int,
) -> c_int {
    if !remote::has_upstream() {
        return real_ioctl();
    }
    let r = {
        let _h = Hook::enter();
        remote::ioctl(fd, request, arg)
    };
    match r {
        None => real_ioctl(),
        Some(Ok(v)) => c_int::try_from(v).unwrap_or(c_int::MAX),
        Some(Err(e)) => fail(e),
    }
}

pub(crate) use uiommu_uapi::file::{Dir, Pos};

/// [`uiommu_uapi::file::file_io`] at the file position of this process's `fd` (`read` and
/// `write`: the position is read first and advanced by what was served) or at an offset.
fn file_io_at(
    caller: &Caller<'_>,
    file: &OpenFile,
    fd: c_int,
    dir: Dir,
    buf: u64,
    count: usize,
    offset: Option<i64>,
) -> Result<usize, Errno> {
    let pos = match offset {
        Some(at) => Pos::At(at),
        None => {
            // SAFETY: lseek on an fd of ours; no memory is passed.
            let p = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
            if p < 0 {
                return Err(errno());
            }
            Pos::Stream(p)
        }
    };
    let (n, moves) = uiommu_uapi::file::file_io(caller, file, dir, buf, count, pos)?;
    if let (true, Pos::Stream(p)) = (moves, pos) {
        // SAFETY: lseek on an fd of ours; no memory is passed.
        unsafe { libc::lseek(fd, p.saturating_add(n as i64), libc::SEEK_SET) };
    }
    Ok(n)
}

/// Copy `data` to the program's buffer at `va` (EFAULT when it is not writable).
pub(crate) fn to_user(g: &Global, va: u64, data: &[u8]) -> Result<(), Errno> {
    use uiommu_platform::memory::UserMemory;
    if data.is_empty() {
        return Ok(());
    }
    g.mem.write(UserVa(va), data).map_err(|_| libc::EFAULT)
}

/// Copy the program's buffer at `va` into `buf` (EFAULT when it is not readable).
pub(crate) fn from_user(g: &Global, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
    use uiommu_platform::memory::UserMemory;
    if buf.is_empty() {
        return Ok(());
    }
    g.mem.read(UserVa(va), buf).map_err(|_| libc::EFAULT)
}

/// What `fd` is, when it is one of our files (for its trace line).
fn traced_kind(fd: c_int) -> Option<trace::FileKind> {
    if host::on() {
        host::node(fd).map(trace::FileKind::of_node)
    } else {
        active()
            .and_then(|g| g.files.get(fd))
            .map(|f| trace::FileKind::of_open(&f))
    }
}

/// What `fd` stands for beyond its kind, for its trace line: what the in-process engine knows
/// of it (a client of the host engine knows only the kind; `uiommu trace` shows the rest).
fn traced_object(fd: c_int) -> trace::Object {
    if host::on() {
        return trace::Object::default();
    }
    active()
        .and_then(|g| g.files.get(fd))
        .map(|f| trace::Object::of_open(&f))
        .unwrap_or_default()
}

/// The common body of the read/write family (traced with `uiommu run --trace`).
fn io_impl(
    fd: c_int,
    dir: Dir,
    buf: u64,
    count: size_t,
    offset: Option<i64>,
    real_op: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if !trace::on() {
        return io_untraced(fd, dir, buf, count, offset, real_op);
    }
    let Some(kind) = traced_kind(fd) else {
        return io_untraced(fd, dir, buf, count, offset, real_op);
    };
    let t0 = trace::start();
    let r = io_untraced(fd, dir, buf, count, offset, real_op);
    let result = result_of(r as i64);
    trace::after_io(
        fd,
        kind,
        traced_object(fd),
        dir == Dir::Write,
        buf,
        count as u64,
        offset.map(|o| o as u64),
        result,
        t0,
    );
    keep_errno(result);
    r
}

fn io_untraced(
    fd: c_int,
    dir: Dir,
    buf: u64,
    count: size_t,
    offset: Option<i64>,
    real_op: impl FnOnce() -> ssize_t,
) -> ssize_t {
    ffi(-1, || {
        if let Some(r) = failnth::io(fd, dir == Dir::Write, buf, count, offset) {
            return r.map_or_else(fail_ssize, |n| n as ssize_t);
        }
        if host::on() {
            return match host::io(fd, dir, buf, count, offset) {
                None => real_op(),
                Some(Ok(n)) => n as ssize_t,
                Some(Err(e)) => fail_ssize(e),
            };
        }
        let Some(g) = active() else {
            if in_hook() {
                return real_op();
            }
            return remote_io_or_real(fd, dir, buf, count, offset, real_op);
        };
        // Entered before the look-up so that the file, if this call ends up holding its
        // last reference (closed by another thread meanwhile), is dropped inside the library.
        let _h = Hook::enter();
        let Some(file) = g.files.get(fd) else {
            return remote_io_or_real(fd, dir, buf, count, offset, real_op);
        };
        let r = failnth::call(g, |c| file_io_at(c, &file, fd, dir, buf, count, offset));
        g.ready.refresh();
        match r {
            Ok(n) => n as ssize_t,
            Err(e) => fail_ssize(e),
        }
    })
}

/// A read or write on an fd not in this process's table: an fd inherited from an ancestor's
/// engine is served there (`remote`), anything else by the real call.
fn remote_io_or_real(
    fd: c_int,
    dir: Dir,
    buf: u64,
    count: size_t,
    offset: Option<i64>,
    real_op: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if !remote::has_upstream() {
        return real_op();
    }
    let r = {
        let _h = Hook::enter();
        remote::io(fd, dir, buf, count, offset)
    };
    match r {
        None => real_op(),
        Some(Ok(n)) => n as ssize_t,
        Some(Err(e)) => fail_ssize(e),
    }
}

/// `read(2)`.
///
/// # Safety
/// As `read(2)`.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::read(fd, buf, count) };
    io_impl(fd, Dir::Read, buf as u64, count, None, real_op)
}

/// glibc's `__read_chk`, which `read` becomes under `_FORTIFY_SOURCE` when the buffer's size
/// is known. A count larger than the buffer goes to the real function, which aborts the
/// program as fortification requires; otherwise as `read`.
///
/// # Safety
/// As `read(2)`.
#[no_mangle]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::read_chk(fd, buf, count, buflen) };
    if count > buflen {
        return real_op();
    }
    io_impl(fd, Dir::Read, buf as u64, count, None, real_op)
}

/// `write(2)`.
///
/// # Safety
/// As `write(2)`.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::write(fd, buf, count) };
    io_impl(fd, Dir::Write, buf as u64, count, None, real_op)
}

/// `pread(2)`: on a VFIO device, region `index` is at offset `index << 40`.
///
/// # Safety
/// As `pread(2)`.
#[no_mangle]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, count: size_t, off: off_t) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::pread(fd, buf, count, off) };
    io_impl(fd, Dir::Read, buf as u64, count, Some(off), real_op)
}

/// Whether `fd` is one of our files (in this process's table, inherited from an ancestor's
/// engine, or a handle to the host engine).
fn fd_is_ours(fd: c_int) -> bool {
    if host::on() {
        return host::ours(fd);
    }
    if let Some(g) = active() {
        let _h = Hook::enter();
        if g.files.key(fd).is_some() {
            return true;
        }
    }
    remote::has_upstream() && {
        let _h = Hook::enter();
        remote::inherited(fd).is_some()
    }
}

/// The most iovecs a vectored call takes (the kernel's `UIO_MAXIOV`).
const UIO_MAXIOV: c_int = 1024;

/// The common body of `readv`/`writev`/`preadv`/`pwritev` (and their `64`/`2` variants) on
/// our files, as the kernel runs them for a file with `read`/`write` methods but no
/// `read_iter`/`write_iter` (`do_loop_readv_writev`): the iovecs in turn, each as one
/// `read`/`write` (our files' errno: iommufd has neither, EINVAL), stopping at an error
/// (returned if nothing moved yet) or a short count. `offset`: the p-variants' position (the
/// file position when `None`). More than 1024 or a negative count is EINVAL, then a bad iovec
/// array EFAULT, then `flags` other than 0 or RWF_HIPRI EOPNOTSUPP, in the kernel's order.
/// Other fds go to `real_op`.
fn vectored(
    fd: c_int,
    dir: Dir,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: Option<i64>,
    flags: c_int,
    real_op: impl FnOnce() -> ssize_t,
) -> ssize_t {
    // A panic below is EIO, not an unwind into C.
    ffi(-1, || {
        vectored_ours(fd, dir, iov, iovcnt, offset, flags, real_op)
    })
}

fn vectored_ours(
    fd: c_int,
    dir: Dir,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: Option<i64>,
    flags: c_int,
    real_op: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if !fd_is_ours(fd) {
        return real_op();
    }
    if !(0..=UIO_MAXIOV).contains(&iovcnt) {
        return fail_ssize(libc::EINVAL);
    }
    let n = iovcnt as usize;
    let mut vecs = [0u64; 2 * UIO_MAXIOV as usize];
    let raw = &mut vecs[..2 * n];
    if n > 0 && !pinnable::read_own(iov as u64, zerocopy::IntoBytes::as_mut_bytes(raw)) {
        return fail_ssize(libc::EFAULT);
    }
    if flags & !libc::RWF_HIPRI != 0 {
        return fail_ssize(libc::EOPNOTSUPP);
    }
    if raw.chunks_exact(2).any(|v| v[1] > isize::MAX as u64) {
        return fail_ssize(libc::EINVAL);
    }
    let one = |buf: u64, len: u64, at: Option<i64>| -> ssize_t {
        let count = len as size_t;
        let real_one = || match (dir, at) {
            // SAFETY: raw system calls on the caller's buffer, as its own read/write would.
            (Dir::Read, None) => unsafe { real::read(fd, buf as *mut c_void, count) },
            // SAFETY: as above.
            (Dir::Read, Some(o)) => unsafe { real::pread64(fd, buf as *mut c_void, count, o) },
            // SAFETY: as above.
            (Dir::Write, None) => unsafe { real::write(fd, buf as *const c_void, count) },
            // SAFETY: as above.
            (Dir::Write, Some(o)) => unsafe { real::pwrite64(fd, buf as *const c_void, count, o) },
        };
        io_impl(fd, dir, buf, count, at, real_one)
    };
    if n == 0 {
        // Still the file's answer to a transfer (EINVAL for an iommufd, 0 for a device).
        return one(0, 0, offset);
    }
    let mut done: ssize_t = 0;
    for v in raw.chunks_exact(2) {
        let at = offset.map(|o| o.saturating_add(done as i64));
        let r = one(v[0], v[1], at);
        if r < 0 {
            return if done == 0 { r } else { done };
        }
        done += r;
        if r as u64 != v[1] {
            break;
        }
    }
    done
}

/// `readv(2)`: our files as [`vectored`] runs them.
///
/// # Safety
/// As `readv(2)`.
#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::readv(fd, iov, iovcnt) };
    vectored(fd, Dir::Read, iov, iovcnt, None, 0, real_op)
}

/// `writev(2)`: our files as [`vectored`] runs them.
///
/// # Safety
/// As `writev(2)`.
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::writev(fd, iov, iovcnt) };
    vectored(fd, Dir::Write, iov, iovcnt, None, 0, real_op)
}

/// `preadv(2)`.
///
/// # Safety
/// As `preadv(2)`.
#[no_mangle]
pub unsafe extern "C" fn preadv(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: off_t,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::preadv(fd, iov, iovcnt, off) };
    vectored(fd, Dir::Read, iov, iovcnt, Some(off), 0, real_op)
}

/// `preadv64(2)`.
///
/// # Safety
/// As `preadv64(2)`.
#[no_mangle]
pub unsafe extern "C" fn preadv64(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: off64_t,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::preadv64(fd, iov, iovcnt, off) };
    vectored(fd, Dir::Read, iov, iovcnt, Some(off), 0, real_op)
}

/// `pwritev(2)`.
///
/// # Safety
/// As `pwritev(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwritev(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: off_t,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::pwritev(fd, iov, iovcnt, off) };
    vectored(fd, Dir::Write, iov, iovcnt, Some(off), 0, real_op)
}

/// `pwritev64(2)`.
///
/// # Safety
/// As `pwritev64(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwritev64(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: off64_t,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::pwritev64(fd, iov, iovcnt, off) };
    vectored(fd, Dir::Write, iov, iovcnt, Some(off), 0, real_op)
}

/// `preadv2(2)`: offset -1 is the file position.
///
/// # Safety
/// As `preadv2(2)`.
#[no_mangle]
pub unsafe extern "C" fn preadv2(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: off_t,
    flags: c_int,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::preadv2(fd, iov, iovcnt, off, flags) };
    let at = (off != -1).then_some(off);
    vectored(fd, Dir::Read, iov, iovcnt, at, flags, real_op)
}

/// `pwritev2(2)`: offset -1 is the file position.
///
/// # Safety
/// As `pwritev2(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwritev2(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: off_t,
    flags: c_int,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::pwritev2(fd, iov, iovcnt, off, flags) };
    let at = (off != -1).then_some(off);
    vectored(fd, Dir::Write, iov, iovcnt, at, flags, real_op)
}

/// `pread64(2)`.
///
/// # Safety
/// As `pread64(2)`.
#[no_mangle]
pub unsafe extern "C" fn pread64(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    off: off64_t,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::pread64(fd, buf, count, off) };
    io_impl(fd, Dir::Read, buf as u64, count, Some(off), real_op)
}

/// glibc's `__pread_chk` (fortified `pread`; see [`__read_chk`]).
///
/// # Safety
/// As `pread(2)`.
#[no_mangle]
pub unsafe extern "C" fn __pread_chk(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::pread_chk(fd, buf, count, off, buflen) };
    if count > buflen {
        return real_op();
    }
    io_impl(fd, Dir::Read, buf as u64, count, Some(off), real_op)
}

/// glibc's `__pread64_chk`.
///
/// # Safety
/// As `pread64(2)`.
#[no_mangle]
pub unsafe extern "C" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    off: off64_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::pread64_chk(fd, buf, count, off, buflen) };
    if count > buflen {
        return real_op();
    }
    io_impl(fd, Dir::Read, buf as u64, count, Some(off), real_op)
}

/// `pwrite(2)`: on a VFIO device, a BAR0 write may ring the dma-engine's doorbell, which runs
/// the DMA before the call returns.
///
/// # Safety
/// As `pwrite(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwrite(
    fd: c_int,
    buf: *const c_void,
    count: size_t,
    off: off_t,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::pwrite(fd, buf, count, off) };
    io_impl(fd, Dir::Write, buf as u64, count, Some(off), real_op)
}

/// `pwrite64(2)`.
///
/// # Safety
/// As `pwrite64(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwrite64(
    fd: c_int,
    buf: *const c_void,
    count: size_t,
    off: off64_t,
) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::pwrite64(fd, buf, count, off) };
    io_impl(fd, Dir::Write, buf as u64, count, Some(off), real_op)
}

/// `poll(2)`: a fault queue's fd is ready as the kernel's (see `poll.rs`).
///
/// # Safety
/// As `poll(2)`.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    ffi(-1, || {
        // SAFETY: the caller's arguments, the array possibly replaced by a copy of as many.
        poll::poll_impl(fds, nfds, |p| unsafe { real::poll(p, nfds, timeout) })
    })
}

/// `ppoll(2)`: as `poll`.
///
/// # Safety
/// As `ppoll(2)`.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    tmo: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    ffi(-1, || {
        // SAFETY: the caller's arguments, the array possibly replaced by a copy of as many.
        poll::poll_impl(fds, nfds, |p| unsafe { real::ppoll(p, nfds, tmo, sigmask) })
    })
}

/// glibc's fortified `poll`: a count larger than the array goes to the real function (which
/// aborts the program); otherwise as `poll`.
///
/// # Safety
/// As `poll(2)`.
#[no_mangle]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    ffi(-1, || {
        if (nfds as usize).saturating_mul(size_of::<libc::pollfd>()) > fdslen {
            // SAFETY: the caller's arguments, unchanged.
            return unsafe { real::poll_chk(fds, nfds, timeout, fdslen) };
        }
        // SAFETY: the caller's arguments, the array possibly replaced by a copy of as many.
        poll::poll_impl(fds, nfds, |p| unsafe { real::poll(p, nfds, timeout) })
    })
}

/// glibc's fortified `ppoll`: as [`__poll_chk`].
///
/// # Safety
/// As `ppoll(2)`.
#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    tmo: *const libc::timespec,
    sigmask: *const libc::sigset_t,
    fdslen: size_t,
) -> c_int {
    ffi(-1, || {
        if (nfds as usize).saturating_mul(size_of::<libc::pollfd>()) > fdslen {
            // SAFETY: the caller's arguments, unchanged.
            return unsafe { real::ppoll_chk(fds, nfds, tmo, sigmask, fdslen) };
        }
        // SAFETY: the caller's arguments, the array possibly replaced by a copy of as many.
        poll::poll_impl(fds, nfds, |p| unsafe { real::ppoll(p, nfds, tmo, sigmask) })
    })
}

/// `select(2)`: sets naming a fault queue are served as a `ppoll` (see `poll.rs`).
///
/// # Safety
/// As `select(2)`.
#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tmo: *mut libc::timeval,
) -> c_int {
    ffi(-1, || {
        // SAFETY: a non-null timeout points to a timeval (select's contract).
        let ts = unsafe { tmo.as_ref() }.map(|t| libc::timespec {
            tv_sec: t.tv_sec,
            tv_nsec: t.tv_usec * 1000,
        });
        // SAFETY: the caller's sets and timeout, as select takes them.
        unsafe { poll::select_as_poll(nfds, [r, w, e], ts, std::ptr::null()) }
            // SAFETY: the caller's arguments, unchanged.
            .unwrap_or_else(|| unsafe { real::select(nfds, r, w, e, tmo) })
    })
}

/// `pselect(2)`: as `select`.
///
/// # Safety
/// As `pselect(2)`.
#[no_mangle]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tmo: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    ffi(-1, || {
        // SAFETY: a non-null timeout points to a timespec (pselect's contract).
        let ts = unsafe { tmo.as_ref() }.copied();
        // SAFETY: the caller's sets, timeout and mask, as pselect takes them.
        unsafe { poll::select_as_poll(nfds, [r, w, e], ts, sigmask) }
            // SAFETY: the caller's arguments, unchanged.
            .unwrap_or_else(|| unsafe { real::pselect(nfds, r, w, e, tmo, sigmask) })
    })
}

/// `epoll_ctl(2)`: a fault queue's fd is watched through its readiness eventfd.
///
/// # Safety
/// As `epoll_ctl(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut c_void) -> c_int {
    ffi(-1, || {
        // SAFETY: the caller's arguments, the fd possibly replaced by the eventfd.
        unsafe { poll::epoll_ctl_fault(epfd, op, fd, event) }
            // SAFETY: the caller's arguments, unchanged.
            .unwrap_or_else(|| unsafe { real::epoll_ctl(epfd, op, fd, event) })
    })
}

/// The common body of `mmap`/`mmap64`.
fn mmap_impl(
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: i64,
    real_op: impl FnOnce() -> *mut c_void,
) -> *mut c_void {
    ffi(libc::MAP_FAILED, || {
        if flags & libc::MAP_ANONYMOUS != 0 || fd < 0 {
            return real_op();
        }
        let t0 = if trace::on() { trace::start() } else { 0 };
        if host::on() {
            if let Some(e) = host::mmap_refusal(fd, len as u64, prot, flags, off) {
                traced_mmap(fd, None, (len, prot, flags, off), e, t0);
                set_errno(e);
                return libc::MAP_FAILED;
            }
            return real_op();
        }
        let g = active();
        if g.is_none() && in_hook() {
            return real_op();
        }
        if let Some(g) = g {
            // Entered before the look-up so that the file, if this call ends up holding its
            // last reference (closed by another thread meanwhile), is dropped inside the
            // library.
            let _h = Hook::enter();
            if let Some(file) = g.files.get(fd) {
                let e = uiommu_uapi::file::mmap_refusal(&file, len as u64, prot, flags, off);
                if trace::on() {
                    let what = (
                        trace::FileKind::of_open(&file),
                        trace::Object::of_open(&file),
                    );
                    traced_mmap(fd, Some(what), (len, prot, flags, off), e, t0);
                }
                set_errno(e);
                return libc::MAP_FAILED;
            }
        }
        if remote::has_upstream() {
            let refused = {
                let _h = Hook::enter();
                remote::mmap_refusal(fd, len, prot, flags, off)
            };
            if let Some(e) = refused {
                set_errno(e);
                return libc::MAP_FAILED;
            }
        }
        real_op()
    })
}

/// With `uiommu run --trace` on: the line of an mmap (`len`, `prot`, `flags`, `off`) of our
/// `fd` refused with `errno`; `what` is the file's kind and object when the caller has looked
/// the file up already (the in-process engine's table, which [`active`] does not give inside
/// the library).
fn traced_mmap(
    fd: c_int,
    what: Option<(trace::FileKind, trace::Object)>,
    (len, prot, flags, off): (size_t, c_int, c_int, i64),
    errno: i32,
    t0: u64,
) {
    if !trace::on() {
        return;
    }
    let what = what.or_else(|| traced_kind(fd).map(|k| (k, traced_object(fd))));
    if let Some((kind, object)) = what {
        let op = trace::Op::Mmap {
            len: len as u64,
            prot: prot as u32,
            flags: flags as u32,
            offset: off as u64,
        };
        trace::after_mmap(fd, kind, object, op, errno, t0);
    }
}

/// `mmap(2)`: anonymous mappings and other files go to the real `mmap`; our files are refused
/// as the kernel refuses them (iommufd has no mmap: ENODEV; a VFIO region that is not
/// mmappable: EINVAL).
///
/// # Safety
/// As `mmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::mmap(addr, len, prot, flags, fd, off) };
    pinnable::address_space_changed();
    mmap_impl(len, prot, flags, fd, off, real_op)
}

/// `munmap(2)`, passed on; the moved ranges' fast path learns the address space changed.
///
/// # Safety
/// As `munmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    pinnable::address_space_changed();
    // SAFETY: the caller's arguments are passed on unchanged.
    unsafe { real::munmap(addr, len) }
}

/// `mremap(2)`, passed on as [`munmap`] is.
///
/// # Safety
/// As `mremap(2)`: `new_addr` is read only when `flags` has MREMAP_FIXED.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    pinnable::address_space_changed();
    // SAFETY: the caller's arguments are passed on unchanged.
    unsafe { real::mremap(old, old_len, new_len, flags, new_addr) }
}

/// `mmap64(2)`.
///
/// # Safety
/// As `mmap64(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off64_t,
) -> *mut c_void {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::mmap64(addr, len, prot, flags, fd, off) };
    pinnable::address_space_changed();
    mmap_impl(len, prot, flags, fd, off, real_op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_paths_are_recognised_exactly() {
        assert_eq!(target_of(b"/dev/iommu"), Some(Target::Iommu));
        assert_eq!(
            target_of(b"/dev/vfio/devices/vfio0"),
            Some(Target::VfioDevice(0))
        );
        assert_eq!(
            target_of(b"/dev/vfio/devices/vfio12"),
            Some(Target::VfioDevice(12))
        );
        assert_eq!(target_of(b"/dev/vfio/vfio"), Some(Target::VfioContainer));
        assert_eq!(target_of(b"/dev/vfio/3"), Some(Target::VfioGroup(3)));
        assert_eq!(target_of(b"/dev/vfio/12"), Some(Target::VfioGroup(12)));
        for noent in [
            &b"/dev/vfio/vfio0"[..],
            b"/dev/vfio/03",
            b"/dev/vfio/devices/nope",
            b"/dev/vfio/devices/vfio",
            b"/dev/vfio/devices/vfio01",
            b"/dev/vfio/devices/vfio+1",
            b"/dev/vfio/devices/vfio99999999999",
        ] {
            assert_eq!(target_of(noent), Some(Target::NoEnt), "{noent:?}");
        }
        for other in [
            &b"/dev/null"[..],
            b"/dev/iommu0",
            b"/dev/iommu/",
            b"/dev/vfio",
            b"/dev/vfio/",
            b"/dev/vfio/devices",
            b"/dev/vfio/devices/",
            b"/dev/vfio//",
            b"/dev/vfio/..",
            b"dev/iommu",
            b"/proc/self/fd",
            b"",
        ] {
            assert_eq!(target_of(other), None, "{other:?}");
        }
    }

    #[test]
    fn classify_stops_at_the_first_mismatch() {
        // SAFETY: null and NUL-terminated strings.
        unsafe {
            assert_eq!(classify(std::ptr::null()), None);
            assert_eq!(classify(c"".as_ptr()), None);
            assert_eq!(classify(c"/de".as_ptr()), None);
            assert_eq!(classify(c"/dev/iommu".as_ptr()), Some(Target::Iommu));
        }
    }
}
