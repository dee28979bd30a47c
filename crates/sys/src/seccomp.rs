//! Seccomp user notification (`SECCOMP_RET_USER_NOTIF`): the front-end of programs the
//! preload library cannot reach (static binaries, raw system calls).
//!
//! [`install_listener`] puts a filter on the calling thread (inherited by every child and
//! kept across `exec`) that stops the system calls that may be ours and hands them to whoever
//! holds the returned listener: the `open`, `stat` and `access` families (only the path
//! tells), `ioctl` whose
//! request has type `';'` (VFIO's and iommufd's), and the ioctls, reads, writes, `fstat`s,
//! `mmap`s and duplications (`dup`, `dup2`, `dup3`, `fcntl(F_DUPFD)`) of fds in one range of numbers (the
//! supervisor installs our files there, and their duplicates, so the filter can tell them
//! apart). Everything else runs without a stop. The filter is not a security boundary: a
//! call that slips past it reaches a socket, which answers as a socket does.
//!
//! The supervisor answers each [`Notice`] with [`respond`] (a value, an errno, or "let the
//! kernel run it"), and installs a file in the stopped process with [`add_fd`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `SECCOMP_RET_ALLOW`.
const RET_ALLOW: u32 = 0x7fff_0000;

/// The fd numbers whose reads, writes and mmaps the filter stops: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdRange {
    /// First number.
    pub start: u32,
    /// One past the last.
    pub end: u32,
}

impl FdRange {
    /// The range for a process whose `RLIMIT_NOFILE` soft limit is `limit`: the top 256
    /// numbers below it or below 1,024, whichever is lower (so that `select(2)`, whose sets
    /// end at 1,024, takes our files; the upper half when the limit is under 512).
    pub fn below(limit: u64) -> FdRange {
        let top = limit.min(1024) as u32;
        let start = if top >= 512 { top - 256 } else { top / 2 };
        FdRange { start, end: top }
    }
}

/// One instruction of the filter, with its jumps still symbolic.
enum Insn {
    Load(u32),
    And(u32),
    /// Jump to `.1` if the accumulator equals `.0`, else fall through.
    JumpEq(u32, Label),
    /// Jump to `.1` if the accumulator is below `.0`, else fall through.
    JumpBelow(u32, Label),
    Ret(u32),
}

#[derive(Clone, Copy, PartialEq)]
enum Label {
    Notify,
    Allow,
    Ioctl,
    IoctlType,
    Arg0,
    Arg4,
    Fcntl,
    Next,
}

/// The classic BPF program of the filter.
fn program(range: FdRange) -> Vec<libc::sock_filter> {
    use Insn::*;
    use Label::*;
    let nr = |n: libc::c_long| n as u32;
    // seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (low half first). Another
    // architecture (i386 calls from an x86_64 process) is let through: it cannot name our
    // calls' structs, and a socket answers it.
    let mut p: Vec<(Option<Label>, Insn)> = vec![
        (None, Load(4)),
        (None, JumpBelow(AUDIT_ARCH_X86_64, Allow)),
        (None, JumpBelow(AUDIT_ARCH_X86_64 + 1, Next)),
        (None, Ret(RET_ALLOW)),
        (Some(Next), Load(0)),
    ];
    for n in [
        libc::SYS_open,
        libc::SYS_openat,
        libc::SYS_openat2,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_access,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_readlink,
        libc::SYS_readlinkat,
        libc::SYS_getxattr,
        libc::SYS_lgetxattr,
        libc::SYS_listxattr,
        libc::SYS_llistxattr,
    ] {
        p.push((None, JumpEq(nr(n), Notify)));
    }
    p.push((None, JumpEq(nr(libc::SYS_ioctl), Ioctl)));
    for n in [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_getdents64,
        libc::SYS_dup,
        libc::SYS_dup2,
        libc::SYS_dup3,
        libc::SYS_fstat,
    ] {
        p.push((None, JumpEq(nr(n), Arg0)));
    }
    p.push((None, JumpEq(nr(libc::SYS_mmap), Arg4)));
    p.push((None, JumpEq(nr(libc::SYS_fcntl), Fcntl)));
    p.push((None, Ret(RET_ALLOW)));
    // fcntl: only F_DUPFD and F_DUPFD_CLOEXEC (a duplicate of ours must land in the range).
    p.push((Some(Fcntl), Load(24)));
    p.push((None, JumpEq(libc::F_DUPFD as u32, Arg0)));
    p.push((None, JumpEq(libc::F_DUPFD_CLOEXEC as u32, Arg0)));
    p.push((None, Ret(RET_ALLOW)));
    // ioctl: every request on an fd of the range (one of ours answers FIONREAD and the other
    // types as its driver would), and requests of type ';' (bits 8..16) on any fd.
    p.push((Some(Ioctl), Load(16)));
    p.push((None, JumpBelow(range.start, IoctlType)));
    p.push((None, JumpBelow(range.end, Notify)));
    p.push((Some(IoctlType), Load(24)));
    p.push((None, And(0xff00)));
    p.push((None, JumpEq(u32::from(b';') << 8, Notify)));
    p.push((None, Ret(RET_ALLOW)));
    // mmap: its fd is the fifth argument.
    p.push((Some(Arg4), Load(16 + 8 * 4)));
    p.push((None, JumpBelow(range.start, Allow)));
    p.push((None, JumpBelow(range.end, Notify)));
    p.push((None, Ret(RET_ALLOW)));
    p.push((Some(Arg0), Load(16)));
    p.push((None, JumpBelow(range.start, Allow)));
    p.push((None, JumpBelow(range.end, Notify)));
    p.push((Some(Allow), Ret(RET_ALLOW)));
    p.push((Some(Notify), Ret(libc::SECCOMP_RET_USER_NOTIF)));

    let at = |l: Label| {
        p.iter()
            .position(|(lab, _)| *lab == Some(l))
            .expect("every label is placed")
    };
    p.iter()
        .enumerate()
        .map(|(i, (_, insn))| {
            let off = |l: Label| -> u8 {
                let to = at(l);
                assert!(to > i, "jumps go forward");
                u8::try_from(to - i - 1).expect("the program is short")
            };
            let jmp = |op: u32| (libc::BPF_JMP | op | libc::BPF_K) as u16;
            let (code, jt, jf, k) = match *insn {
                Load(k) => ((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0, 0, k),
                And(k) => (
                    (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16,
                    0,
                    0,
                    k,
                ),
                JumpEq(k, l) => (jmp(libc::BPF_JEQ), off(l), 0, k),
                // `jge k`: its false branch is "below k".
                JumpBelow(k, l) => (jmp(libc::BPF_JGE), 0, off(l), k),
                Ret(k) => ((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, k),
            };
            libc::sock_filter { code, jt, jf, k }
        })
        .collect()
}

/// Install the filter on the calling thread and return its listener. Sets `no_new_privs`
/// first unless `privileged` (a process with CAP_SYS_ADMIN may install filters without it;
/// setuid programs then keep working).
pub fn install_listener(range: FdRange, privileged: bool) -> io::Result<OwnedFd> {
    let code = program(range);
    if !privileged {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let prog = libc::sock_fprog {
        len: u16::try_from(code.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        filter: code.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points to `code`, both live for the call; the kernel copies the program.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            // Once the supervisor has read a call, a signal no longer interrupts it (the
            // call would run twice: here, then restarted after the handler).
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One stopped system call.
#[derive(Clone, Copy, Debug)]
pub struct Notice {
    /// The notification's id (what answers name).
    pub id: u64,
    /// The thread that made the call (in the listener reader's pid namespace).
    pub tid: i32,
    /// The system call's number.
    pub nr: i64,
    /// Its arguments.
    pub args: [u64; 6],
}

/// Wait for the next stopped call. `ENOENT`: the caller went (killed) before it was read.
pub fn receive(listener: BorrowedFd<'_>) -> io::Result<Notice> {
    // SAFETY: an all-zero seccomp_notif is valid (the kernel demands it zeroed).
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: the ioctl writes one seccomp_notif into `n`, which is live.
        let r = unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut n as *mut libc::seccomp_notif,
            )
        };
        if r == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(Notice {
        id: n.id,
        tid: n.pid as i32,
        nr: i64::from(n.data.nr),
        args: n.data.args,
    })
}

/// How a stopped call ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It returns this value.
    Value(i64),
    /// It fails with this errno.
    Error(i32),
    /// The kernel runs it as if it had not been stopped.
    Continue,
}

/// End the stopped call `id`. `ENOENT`: the caller is gone (killed meanwhile).
pub fn respond(listener: BorrowedFd<'_>, id: u64, answer: Answer) -> io::Result<()> {
    let (val, error, flags) = match answer {
        Answer::Value(v) => (v, 0, 0),
        Answer::Error(e) => (0, -e, 0),
        Answer::Continue => (0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
    };
    let mut resp = libc::seccomp_notif_resp {
        id,
        val,
        error,
        flags,
    };
    // SAFETY: the ioctl reads one seccomp_notif_resp from `resp`, which is live.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut resp as *mut libc::seccomp_notif_resp,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the call `id` is still stopped (its thread has not been killed, so the pid in
/// its notice still names it).
pub fn still_waiting(listener: BorrowedFd<'_>, id: u64) -> bool {
    let mut id = id;
    // SAFETY: the ioctl reads one u64 from `id`, which is live.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &mut id as *mut u64,
        ) == 0
    }
}

/// Install `file` in the process stopped in call `id`, at number `at` (replacing what is
/// there, as `dup2`), close-on-exec if `cloexec`; with `answer`, the call returns the new
/// number at once (atomically). Returns the number.
pub fn add_fd(
    listener: BorrowedFd<'_>,
    id: u64,
    file: BorrowedFd<'_>,
    at: u32,
    cloexec: bool,
    answer: bool,
) -> io::Result<i32> {
    let mut flags = libc::SECCOMP_ADDFD_FLAG_SETFD as u32;
    if answer {
        flags |= libc::SECCOMP_ADDFD_FLAG_SEND as u32;
    }
    install(listener, id, file, flags, at, cloexec)
}

/// Install `file` in the process stopped in call `id` at its lowest free number, as an `open`
/// would, close-on-exec if `cloexec`. Returns the number.
pub fn add_fd_lowest(
    listener: BorrowedFd<'_>,
    id: u64,
    file: BorrowedFd<'_>,
    cloexec: bool,
) -> io::Result<i32> {
    install(listener, id, file, 0, 0, cloexec)
}

/// `SECCOMP_IOCTL_NOTIF_ADDFD` with `flags` and number `at`.
fn install(
    listener: BorrowedFd<'_>,
    id: u64,
    file: BorrowedFd<'_>,
    flags: u32,
    at: u32,
    cloexec: bool,
) -> io::Result<i32> {
    let mut add = libc::seccomp_notif_addfd {
        id,
        flags,
        srcfd: file.as_raw_fd() as u32,
        newfd: at,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: the ioctl reads one seccomp_notif_addfd from `add`, which is live.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ADDFD,
            &mut add as *mut libc::seccomp_notif_addfd,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// The `struct stat` of `fd` (an `O_PATH` fd: of the inode it names, a symlink included), as
/// the bytes a `stat` call writes.
pub fn stat_bytes_of(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    // SAFETY: an all-zero `struct stat` is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat with AT_EMPTY_PATH on a live fd writes one struct stat into `st`.
    let r = unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bytes_of(&st))
}

/// The `struct statx` of `fd` (as [`stat_bytes_of`]) for the caller's `mask`, as the bytes a
/// `statx` call writes.
pub fn statx_bytes_of(fd: BorrowedFd<'_>, mask: u32) -> io::Result<Vec<u8>> {
    // SAFETY: an all-zero `struct statx` is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx with AT_EMPTY_PATH on a live fd writes one struct statx into `st`.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            mask,
            &mut st,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bytes_of(&st))
}

/// `getdents64` on `fd` into `buf`: the bytes filled (0 at the end of the directory).
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`, which is live.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The target of the symlink `fd` names (an `O_PATH | O_NOFOLLOW` fd); EINVAL when it is not
/// a symlink.
pub fn readlink_of(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: readlinkat with an empty path on a live fd writes at most `buf.len()` bytes.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        // An empty path on an fd of something else than a symlink is ENOENT; `readlink` of
        // its path would have been EINVAL.
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        return Err(e);
    }
    buf.truncate(n as usize);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_sits_under_the_limit() {
        assert_eq!(
            FdRange::below(1024),
            FdRange {
                start: 768,
                end: 1024
            }
        );
        assert_eq!(
            FdRange::below(1 << 20),
            FdRange {
                start: 768,
                end: 1024
            }
        );
        assert_eq!(
            FdRange::below(300),
            FdRange {
                start: 150,
                end: 300
            }
        );
    }

    #[test]
    fn the_program_jumps_forward_and_ends_in_returns() {
        let p = program(FdRange::below(1024));
        assert!(p.len() < 64);
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        assert_eq!(p.last().map(|i| i.code), Some(ret));
        for (i, insn) in p.iter().enumerate() {
            if insn.code & 0x07 == libc::BPF_JMP as u16 {
                assert!(i + 1 + usize::from(insn.jt.max(insn.jf)) < p.len());
            }
        }
    }
}

/// What the stat family says of a device node, for a stopped caller's buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeAttrs {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Device major and minor.
    pub rdev: (u32, u32),
    /// Access, modification and change times (seconds, nanoseconds).
    pub times: [(i64, i64); 3],
    /// Links (0: 1, a node's).
    pub nlink: u64,
    /// Size in bytes.
    pub size: i64,
}

/// Bytes of a value of a plain C struct.
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: `v` is a live, initialized value of a `repr(C)` libc struct with no padding
    // the kernel would not also have (the structs are zeroed before they are filled), so
    // its `size_of` bytes may be read.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// `struct stat` of a node.
pub fn stat_bytes(a: &NodeAttrs) -> Vec<u8> {
    // SAFETY: an all-zero `struct stat` is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_dev = a.dev;
    st.st_ino = a.ino;
    st.st_nlink = a.nlink.max(1);
    st.st_size = a.size;
    st.st_mode = a.mode;
    st.st_uid = a.uid;
    st.st_gid = a.gid;
    st.st_rdev = libc::makedev(a.rdev.0, a.rdev.1);
    st.st_blksize = 4096;
    (st.st_atime, st.st_atime_nsec) = a.times[0];
    (st.st_mtime, st.st_mtime_nsec) = a.times[1];
    (st.st_ctime, st.st_ctime_nsec) = a.times[2];
    bytes_of(&st)
}

/// `struct statx` of a node: the basic stats, as the kernel fills them for a device node.
pub fn statx_bytes(a: &NodeAttrs) -> Vec<u8> {
    let ts = |(sec, nsec): (i64, i64)| {
        // SAFETY: an all-zero `statx_timestamp` is a valid value.
        let mut t: libc::statx_timestamp = unsafe { std::mem::zeroed() };
        t.tv_sec = sec;
        t.tv_nsec = nsec as u32;
        t
    };
    // SAFETY: an all-zero `struct statx` is a valid value.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    sx.stx_mask = libc::STATX_BASIC_STATS;
    sx.stx_blksize = 4096;
    sx.stx_nlink = a.nlink.max(1) as u32;
    sx.stx_size = a.size as u64;
    sx.stx_uid = a.uid;
    sx.stx_gid = a.gid;
    sx.stx_mode = a.mode as u16;
    sx.stx_ino = a.ino;
    sx.stx_atime = ts(a.times[0]);
    sx.stx_mtime = ts(a.times[1]);
    sx.stx_ctime = ts(a.times[2]);
    sx.stx_rdev_major = a.rdev.0;
    sx.stx_rdev_minor = a.rdev.1;
    sx.stx_dev_major = libc::major(a.dev);
    sx.stx_dev_minor = libc::minor(a.dev);
    bytes_of(&sx)
}
