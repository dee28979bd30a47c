//! What the stat family says about our `/dev` nodes and the fds opened from them: character
//! devices, as on Linux.
//!
//! | node | mode | `st_rdev` | as on Linux |
//! |---|---|---|---|
//! | `/dev/iommu` | `S_IFCHR \| 0600` | 10:[`IOMMU_MINOR`] | a misc device with a dynamic minor |
//! | `/dev/vfio/vfio` | `S_IFCHR \| 0666` | 10:196 | the misc device `VFIO_MINOR` |
//! | `/dev/vfio/<n>` | `S_IFCHR \| 0600` | [`VFIO_GROUP_MAJOR`]:i | the `vfio` region; `i` the group's index among the vfio groups (the kernel's ida numbers them in probe order) |
//! | `/dev/vfio/devices/vfioN` | `S_IFCHR \| 0600` | [`VFIO_CDEV_MAJOR`]:N | the `vfio-dev` region; the same numbers as the sysfs view's `vfio-dev/vfioN/dev` |
//!
//! The owner is the calling process's effective uid and gid (as if udev had handed the nodes to
//! the user, which is how an unprivileged VMM is set up); `st_dev` and the times are those of
//! the real `/dev` (the nodes live there); `st_ino` is fixed per node, so `stat` of the path and
//! `fstat` of every fd opened from it agree. The directories `/dev/vfio` and `/dev/vfio/devices`
//! ([`dir_stat`]) are `rwxr-xr-x` and owned as the real `/dev`. Files the engine makes (a group's device fds,
//! fault queues) are anonymous inodes in Linux and stay memfds here.

use crate::devdir::DevDir;
use crate::real;
use crate::state::{global, Global};
use crate::Target;
use libc::{c_int, c_void};

pub use uiommu_uapi::file::{
    NodeStat, IOMMU_MINOR, MISC_MAJOR, VFIO_CDEV_MAJOR, VFIO_GROUP_MAJOR, VFIO_MINOR,
};

/// The node `target` names, or None when it does not exist (ENOENT).
pub(crate) fn node_stat(g: &Global, target: Target) -> Option<NodeStat> {
    uiommu_uapi::file::node_stat(&g.engine, target)
}

/// The real `/dev`'s stat (zero when it cannot be read).
pub(crate) fn dev_dir() -> libc::stat {
    // SAFETY: an all-zero `struct stat` is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: stat writes one `struct stat` into `st`; the path is NUL-terminated.
    if unsafe { real::stat(c"/dev".as_ptr(), (&mut st as *mut libc::stat).cast()) } != 0 {
        // SAFETY: as above.
        st = unsafe { std::mem::zeroed() };
    }
    st
}

/// `access` of node `target` (which exists): `mode`'s bits against its stat for the real or
/// (`effective`) the effective uid and gid, root passing every check but execute without any
/// x bit, as the VFS checks them.
pub(crate) fn access(target: Target, mode: c_int, effective: bool) -> Result<(), c_int> {
    if mode & !(libc::R_OK | libc::W_OK | libc::X_OK) != 0 {
        return Err(libc::EINVAL);
    }
    let Ok(g) = global() else { return Ok(()) };
    let Some(n) = node_stat(g, target) else {
        return Err(libc::ENOENT);
    };
    let st = to_stat(n);
    // SAFETY: these id calls cannot fail.
    let (uid, gid) = unsafe {
        if effective {
            (libc::geteuid(), libc::getegid())
        } else {
            (libc::getuid(), libc::getgid())
        }
    };
    let want = (mode & 7) as u32;
    let perm = st.st_mode & 0o7777;
    let granted = if uid == 0 {
        if perm & 0o111 != 0 {
            7
        } else {
            6
        }
    } else if uid == st.st_uid {
        (perm >> 6) & 7
    } else if gid == st.st_gid {
        (perm >> 3) & 7
    } else {
        perm & 7
    };
    if want & !granted == 0 {
        Ok(())
    } else {
        Err(libc::EACCES)
    }
}

/// The `struct stat` of a node.
pub fn to_stat(n: NodeStat) -> libc::stat {
    let dir = dev_dir();
    // SAFETY: an all-zero `struct stat` is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_dev = dir.st_dev;
    st.st_ino = n.ino;
    st.st_nlink = 1;
    st.st_mode = libc::S_IFCHR | n.perm;
    // SAFETY: geteuid/getegid cannot fail.
    st.st_uid = unsafe { libc::geteuid() };
    // SAFETY: as above.
    st.st_gid = unsafe { libc::getegid() };
    if crate::host::on() {
        // The host engine's nodes are owned and permitted as it says (`serve --mode`); the
        // legacy container is 0666 whatever the mode.
        if let Some((mode, uid, gid)) = crate::host::nodes() {
            if n.perm != 0o666 {
                st.st_mode = libc::S_IFCHR | mode;
            }
            st.st_uid = uid;
            st.st_gid = gid;
        }
    }
    st.st_rdev = libc::makedev(n.major, n.minor);
    st.st_size = 0;
    st.st_blksize = 4096;
    st.st_blocks = 0;
    st.st_atime = dir.st_atime;
    st.st_atime_nsec = dir.st_atime_nsec;
    st.st_mtime = dir.st_mtime;
    st.st_mtime_nsec = dir.st_mtime_nsec;
    st.st_ctime = dir.st_ctime;
    st.st_ctime_nsec = dir.st_ctime_nsec;
    st
}

/// The `struct statx` of a node (the basic stats, as the kernel fills them for a device node).
pub fn to_statx(n: NodeStat) -> libc::statx {
    statx_of(&to_stat(n))
}

/// The `struct statx` with the basic stats of `st`.
pub fn statx_of(st: &libc::stat) -> libc::statx {
    let ts = |sec: i64, nsec: i64| {
        // SAFETY: an all-zero `statx_timestamp` is a valid value.
        let mut t: libc::statx_timestamp = unsafe { std::mem::zeroed() };
        t.tv_sec = sec;
        t.tv_nsec = nsec as u32;
        t
    };
    // SAFETY: an all-zero `struct statx` is a valid value.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    sx.stx_mask = libc::STATX_BASIC_STATS;
    sx.stx_blksize = st.st_blksize as u32;
    sx.stx_nlink = st.st_nlink as u32;
    sx.stx_uid = st.st_uid;
    sx.stx_gid = st.st_gid;
    sx.stx_mode = st.st_mode as u16;
    sx.stx_ino = st.st_ino;
    sx.stx_size = st.st_size as u64;
    sx.stx_blocks = st.st_blocks as u64;
    sx.stx_atime = ts(st.st_atime, st.st_atime_nsec);
    sx.stx_ctime = ts(st.st_ctime, st.st_ctime_nsec);
    sx.stx_mtime = ts(st.st_mtime, st.st_mtime_nsec);
    sx.stx_rdev_major = libc::major(st.st_rdev);
    sx.stx_rdev_minor = libc::minor(st.st_rdev);
    sx.stx_dev_major = libc::major(st.st_dev);
    sx.stx_dev_minor = libc::minor(st.st_dev);
    sx
}

/// Inode number of the directory `dir` (fixed, beside the nodes' numbers).
pub fn dir_ino(dir: DevDir) -> u64 {
    uiommu_uapi::sysfs_tree::vfio_dir_ino(dir == DevDir::Devices)
}

/// The `struct stat` of `/dev/vfio` or `/dev/vfio/devices` holding `entries` entries: a
/// directory `rwxr-xr-x` owned by the real `/dev`'s owner (root, as udev makes it), on the
/// real `/dev`'s device and with its times; links as a directory has (2, and one per
/// subdirectory); the size devtmpfs reports (20 bytes per entry, `.` and `..` included).
pub fn dir_stat(dir: DevDir, entries: usize) -> libc::stat {
    let real = dev_dir();
    // SAFETY: an all-zero `struct stat` is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_dev = real.st_dev;
    st.st_ino = dir_ino(dir);
    st.st_nlink = match dir {
        DevDir::Vfio => 3,
        DevDir::Devices => 2,
    };
    st.st_mode = libc::S_IFDIR | 0o755;
    st.st_uid = real.st_uid;
    st.st_gid = real.st_gid;
    st.st_size = 20 * (entries as i64 + 2);
    st.st_blksize = 4096;
    st.st_atime = real.st_atime;
    st.st_atime_nsec = real.st_atime_nsec;
    st.st_mtime = real.st_mtime;
    st.st_mtime_nsec = real.st_mtime_nsec;
    st.st_ctime = real.st_ctime;
    st.st_ctime_nsec = real.st_ctime_nsec;
    st
}

/// The bytes of a plain C struct.
fn bytes_of<T>(v: &T) -> &[u8] {
    // SAFETY: `v` is a live value of a C struct type without references; reading its bytes
    // (padding included, zeroed above) is what the kernel's copy_to_user of it does.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// Which structure a stat-family call fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `struct stat` (also `stat64` and the `__xstat` family's: one layout on the supported
    /// 64-bit targets).
    Stat,
    /// `struct statx`.
    Statx,
}

const _: () = assert!(std::mem::size_of::<libc::stat>() == std::mem::size_of::<libc::stat64>());

/// Write the node's stat in `layout` to the program's buffer at `buf`: 0, or -1 with EFAULT.
pub(crate) fn write_stat(g: &Global, n: NodeStat, layout: Layout, buf: *mut c_void) -> c_int {
    write_stat_of(g, &to_stat(n), layout, buf)
}

/// Write `st` in `layout` to the program's buffer at `buf`: 0, or -1 with EFAULT.
pub(crate) fn write_stat_of(
    g: &Global,
    st: &libc::stat,
    layout: Layout,
    buf: *mut c_void,
) -> c_int {
    write_stat_to(&*g.mem, st, layout, buf)
}

/// [`write_stat_of`] through the memory accessor `mem` of this process.
fn write_stat_to(
    mem: &dyn uiommu_platform::memory::UserMemory,
    st: &libc::stat,
    layout: Layout,
    buf: *mut c_void,
) -> c_int {
    let va = uiommu_platform::UserVa(buf as u64);
    let r = match layout {
        Layout::Stat => mem.write(va, bytes_of(st)),
        Layout::Statx => mem.write(va, bytes_of(&statx_of(st))),
    };
    match r {
        Ok(()) => 0,
        Err(_) => crate::fail(libc::EFAULT),
    }
}

/// The node behind `fd` when it is a file of an ancestor's engine this process inherited
/// through `fork`, opened from a `/dev` path (`crate::remote`).
fn inherited_node(fd: c_int) -> Option<NodeStat> {
    if !crate::remote::has_upstream() || crate::hook::in_hook() {
        return None;
    }
    let _h = crate::hook::Hook::enter();
    crate::remote::node(fd)
}

/// A path-based stat of `target` (one of our `/dev` paths): the node, or ENOENT.
pub(crate) fn stat_path(target: Target, layout: Layout, buf: *mut c_void) -> c_int {
    let g = match global() {
        Ok(g) => g,
        Err(e) => return crate::fail(e),
    };
    match node_stat(g, target) {
        Some(n) => write_stat(g, n, layout, buf),
        None => crate::fail(libc::ENOENT),
    }
}

/// The node behind `fd` when `fd` is one of our files opened from a `/dev` path.
pub(crate) fn node_of_fd(g: &Global, fd: c_int) -> Option<NodeStat> {
    let file = g.files.get(fd)?;
    node_stat(g, file.node?)
}

/// A stat of an fd: the node's when the fd is ours and opened from a node, else `real_op`
/// (whose result for a directory or file of the `/dev/vfio` tree is what the path's `stat`
/// says, [`crate::devdir::fix_stat`]).
pub(crate) fn stat_fd(
    fd: c_int,
    layout: Layout,
    buf: *mut c_void,
    real_op: impl FnOnce() -> c_int,
) -> c_int {
    if crate::host::on() {
        return match crate::host::node(fd) {
            Some(Some(t)) => match global() {
                Ok(g) => match node_stat(g, t) {
                    Some(n) => write_stat(g, n, layout, buf),
                    None => crate::fail(libc::ENODEV),
                },
                Err(e) => crate::fail(e),
            },
            // A file the engine made, or not ours: the socket's own stat.
            _ => crate::devdir::fix_stat(real_op(), layout, buf),
        };
    }
    let Some(g) = crate::active() else {
        if let Some(n) = inherited_node(fd) {
            let mem = uiommu_platform::process_memory::ProcessMemory::this();
            return write_stat_to(&mem, &to_stat(n), layout, buf);
        }
        return crate::devdir::fix_stat(real_op(), layout, buf);
    };
    let h = crate::hook::Hook::enter();
    let node = node_of_fd(g, fd).or_else(|| {
        // Not one of this process's own files: perhaps an inherited one.
        crate::remote::has_upstream()
            .then(|| crate::remote::node(fd))
            .flatten()
    });
    match node {
        Some(n) => write_stat(g, n, layout, buf),
        None => {
            let r = real_op();
            drop(h);
            crate::devdir::fix_stat(r, layout, buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_character_devices_with_the_sysfs_numbers() {
        let n = NodeStat {
            perm: 0o600,
            major: VFIO_CDEV_MAJOR,
            minor: 3,
            ino: 7,
        };
        let st = to_stat(n);
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFCHR);
        assert_eq!(st.st_rdev, libc::makedev(511, 3));
        let sx = to_statx(n);
        assert_eq!(u32::from(sx.stx_mode) & libc::S_IFMT, libc::S_IFCHR);
        assert_eq!((sx.stx_rdev_major, sx.stx_rdev_minor), (511, 3));
        assert_eq!(sx.stx_ino, 7);
        assert_eq!(
            sx.stx_mask & libc::STATX_BASIC_STATS,
            libc::STATX_BASIC_STATS
        );
    }
}
