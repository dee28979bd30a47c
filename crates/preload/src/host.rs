//! The front-end of the host engine (`uiommu run --engine host`): every file of ours is a
//! socket the host engine made, and every call on one goes to that engine with the fd itself
//! attached ([`uiommu_proto`]).
//!
//! On when `UIOMMU_SOCKET` names the engine's socket at load. Then no file lives in this
//! process: `fork`, `exec` and `SCM_RIGHTS` share our fds as the kernel shares any socket, and
//! the engine sees who holds what. The process-wide in-process state (`crate::state`) is
//! still built, but only as a read-only view of the platform (the sysfs tree, the `/dev`
//! nodes' stat); it holds no file.
//!
//! Every function here is async-signal-safe: the client allocates nothing and takes no lock
//! ([`uiommu_proto::client`]).

use crate::real;
use libc::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use uiommu_proto::client::Client;
use uiommu_proto::{Message, Request, NOT_MINE};
use uiommu_uapi::file::{Dir, Target};
use uiommu_uapi::Errno;

/// This process's connection to the engine.
static CLIENT: Client = Client::new();
/// Whether the host engine serves this process.
static ON: AtomicBool = AtomicBool::new(false);

/// Whether the host engine serves this process.
pub(crate) fn on() -> bool {
    ON.load(Ordering::Acquire)
}

/// At load: connect when `UIOMMU_SOCKET` is set.
extern "C" fn connect_at_load() {
    let _ = std::panic::catch_unwind(|| {
        let Some(path) = std::env::var_os("UIOMMU_SOCKET").filter(|p| !p.is_empty()) else {
            return;
        };
        if !CLIENT.set_path(path.as_encoded_bytes()) {
            return;
        }
        ON.store(true, Ordering::Release);
        // A reply that comes within the spin costs no wake-up (docs/HOST.md#performance).
        let us: u64 = std::env::var("UIOMMU_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(uiommu_proto::DEFAULT_SPIN_US);
        uiommu_proto::client::set_spin(us.saturating_mul(1000));
        // Hot calls go through rings (docs/HOST.md#the-fast-path) unless UIOMMU_RING=0.
        CLIENT.set_rings(std::env::var_os("UIOMMU_RING").is_none_or(|v| v != "0"));
        // One connection stays open while the process lives (an engine started on demand
        // outlives no program that uses it), and tells us the engine's pid.
        let caps = std::env::var_os("UIOMMU_CAPS").is_some_and(|v| v == "all");
        let hello = Request::new(
            uiommu_proto::OP_HELLO,
            [
                if caps {
                    uiommu_proto::HELLO_CAPS_ALL
                } else {
                    0
                },
                0,
                0,
                0,
                0,
                0,
            ],
        );
        if let Ok(m) = CLIENT.call(hello, None) {
            // Under Yama's restricted ptrace the engine must be allowed to read this
            // process's memory and take the fds it names (no-op without Yama).
            let pid: libc::c_ulong = m.extra[0];
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PTRACER, pid, 0, 0, 0) };
        }
    });
}

#[used]
#[link_section = ".init_array"]
static CONNECT_AT_LOAD: extern "C" fn() = connect_at_load;

/// The result of a call: `None` when the engine says the fd is not one of its files.
fn result(r: Result<Message, Errno>) -> Option<Result<i64, Errno>> {
    match r {
        // The engine cannot be reached: the file's engine is gone.
        Err(libc::EBADF) => Some(Err(libc::EBADF)),
        Err(_) => Some(Err(libc::EIO)),
        Ok(m) if m.err == NOT_MINE => None,
        Ok(m) if m.err != 0 => Some(Err(m.err)),
        Ok(m) => Some(Ok(m.val)),
    }
}

/// A call on the file `fd`.
fn on_file(op: u32, args: [u64; 6], fd: c_int) -> Option<Result<i64, Errno>> {
    result(CLIENT.call(Request::new(op, args), Some(fd)))
}

/// `open` of one of our nodes: a new file of the engine.
pub(crate) fn open(target: Target, flags: c_int) -> Result<c_int, Errno> {
    let (kind, n) = target.encode();
    let r = CLIENT.call(
        Request::new(
            uiommu_proto::OP_OPEN,
            [u64::from(kind), u64::from(n), flags as u32 as u64, 0, 0, 0],
        ),
        None,
    );
    let fd = match r {
        Ok(m) if m.err == 0 => c_int::try_from(m.val).map_err(|_| libc::EIO)?,
        Ok(m) => return Err(if m.err > 0 { m.err } else { libc::EIO }),
        Err(_) => return Err(libc::ENODEV),
    };
    if flags & libc::O_NONBLOCK != 0 {
        // SAFETY: F_SETFL with an integer argument on the fd just received.
        unsafe { real::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK as libc::c_ulong) };
    }
    Ok(fd)
}

/// `open` of `path` failed with ENXIO: when it is `/proc/PID/fd/N` (or any link) leading to
/// one of the engine's files, a new open of the node that file was opened from, as Linux
/// opens a device file again.
pub(crate) fn reopen(path: *const libc::c_char, flags: c_int) -> Option<Result<c_int, Errno>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `path` is the caller's NUL-terminated path; fstatat writes one struct stat.
    let r = unsafe { real::fstatat(libc::AT_FDCWD, path, st.as_mut_ptr().cast(), 0) };
    if r != 0 {
        return None;
    }
    // SAFETY: fstatat returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    let r = CLIENT.call(
        Request::new(
            uiommu_proto::OP_REOPEN,
            [st.st_dev, st.st_ino, flags as u32 as u64, 0, 0, 0],
        ),
        None,
    );
    match r {
        Ok(m) if m.err == NOT_MINE => None,
        Ok(m) if m.err != 0 => Some(Err(m.err)),
        Ok(m) => {
            let fd = c_int::try_from(m.val).ok()?;
            if flags & libc::O_NONBLOCK != 0 {
                // SAFETY: F_SETFL with an integer argument on the fd just received.
                unsafe { real::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK as libc::c_ulong) };
            }
            Some(Ok(fd))
        }
        Err(_) => None,
    }
}

/// The engine's device nodes' (mode, uid, gid), asked once (`OP_NODES`); `None` when the
/// engine does not say (an older engine: the nodes then look as the in-process engine's).
pub(crate) fn nodes() -> Option<(u32, u32, u32)> {
    use std::sync::atomic::AtomicU64;
    /// mode | 1 << 15 (known) in the low 16 bits, uid in 16..48; gid in the second word.
    static KNOWN: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    let w = KNOWN[0].load(Ordering::Acquire);
    if w & (1 << 15) != 0 {
        return Some((
            (w & 0o7777) as u32,
            (w >> 16) as u32,
            KNOWN[1].load(Ordering::Acquire) as u32,
        ));
    }
    let m = CLIENT
        .call(Request::new(uiommu_proto::OP_NODES, [0; 6]), None)
        .ok()
        .filter(|m| m.err == 0)?;
    let (mode, uid, gid) = (
        (m.val as u32) & 0o7777,
        m.extra[0] as u32,
        m.extra[1] as u32,
    );
    KNOWN[1].store(u64::from(gid), Ordering::Release);
    KNOWN[0].store(
        u64::from(mode) | (1 << 15) | (u64::from(uid) << 16),
        Ordering::Release,
    );
    Some((mode, uid, gid))
}

/// Whether `fd` is one of the engine's files (a socket the engine made).
pub(crate) fn ours(fd: c_int) -> bool {
    CLIENT.is_ours(fd)
}

/// `ioctl(fd, request, arg)`; `None` when `fd` is not ours.
pub(crate) fn ioctl(fd: c_int, request: u64, arg: u64) -> Option<Result<i64, Errno>> {
    on_file(uiommu_proto::OP_IOCTL, [request, arg, 0, 0, 0, 0], fd)
}

/// A read or write (`offset`: `pread`/`pwrite`); `None` when `fd` is not ours.
pub(crate) fn io(
    fd: c_int,
    dir: Dir,
    buf: u64,
    count: usize,
    offset: Option<i64>,
) -> Option<Result<usize, Errno>> {
    if !ours(fd) {
        return None;
    }
    let op = match dir {
        Dir::Read => uiommu_proto::OP_READ,
        Dir::Write => uiommu_proto::OP_WRITE,
    };
    let (at, positioned) = match offset {
        Some(o) => (o as u64, 1),
        None => (0, 0),
    };
    on_file(op, [buf, count as u64, at, positioned, 0, 0], fd)
        .map(|r| r.map(|n| usize::try_from(n).unwrap_or(0)))
}

/// The errno `mmap` of `fd` fails with; `None` when `fd` is not ours.
pub(crate) fn mmap_refusal(
    fd: c_int,
    len: u64,
    prot: c_int,
    flags: c_int,
    off: i64,
) -> Option<Errno> {
    if !ours(fd) {
        return None;
    }
    match on_file(
        uiommu_proto::OP_MMAP,
        [
            len,
            prot as u32 as u64,
            flags as u32 as u64,
            off as u64,
            0,
            0,
        ],
        fd,
    )? {
        Err(e) => Some(e),
        Ok(_) => Some(libc::ENODEV),
    }
}

/// The node `fd` was opened from, when it is one of ours; `Some(None)` for a file the
/// engine made (no node).
pub(crate) fn node(fd: c_int) -> Option<Option<Target>> {
    if !ours(fd) {
        return None;
    }
    match on_file(uiommu_proto::OP_STAT, [0; 6], fd)? {
        Ok(v) if v >> 32 != 0 => Some(Some(Target::decode((v >> 32) as u32, v as u32))),
        _ => Some(None),
    }
}

/// After a call that may have closed fds `[low, high]` or put other files at their numbers:
/// the client looks their files up again on their next call.
pub(crate) fn forget(low: libc::c_uint, high: libc::c_uint) {
    CLIENT.forget_fds(low, high);
}

/// After a `close` that may have closed a file of ours: returns once the engine released
/// every file nobody holds any more, as `close` of a device file's last fd releases it.
pub(crate) fn sync() {
    let e = real::errno();
    let _ = CLIENT.call(Request::new(uiommu_proto::OP_SYNC, [0; 6]), None);
    real::set_errno(e);
}
