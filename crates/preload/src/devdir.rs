//! `/dev/vfio` and `/dev/vfio/devices` as directories, as on Linux with vfio loaded.
//!
//! The sysfs view's temporary tree ([`crate::sysfs`]) holds a `dev/vfio` subtree too:
//!
//! ```text
//! R/dev/vfio/vfio                     (the legacy container)
//! R/dev/vfio/<n>                      (one per vfio group: uiommu_uapi::vfio_group::vfio_groups)
//! R/dev/vfio/devices/vfio<N>          (one per vfio-pci function: crate::vfio_devices)
//! ```
//!
//! Only the directory paths themselves (`/dev/vfio`, `/dev/vfio/devices`, with or without a
//! trailing slash, and glob patterns below them) are rewritten to the tree, so `open` with
//! `O_DIRECTORY`, `opendir`, `scandir`, `nftw` and `glob` list it; the node paths are never
//! rewritten: `open` and `stat` of `/dev/vfio/vfio`, `/dev/vfio/<n>` and
//! `/dev/vfio/devices/vfioN` stay the engine's ([`crate::target_of`]). The tree's entries for
//! the nodes are empty regular files (an unprivileged process cannot make character devices).
//! `access` of the directories is answered from their stat ([`access`]): only root and the
//! real `/dev`'s owner may write there.
//!
//! What the program sees of the tree is made to agree with the nodes' `stat`: every successful
//! call of the stat family whose result is an inode of this subtree (the directory paths, an
//! `fstat` of a directory fd, an `fstatat` relative to one, the `struct stat` `nftw` hands the
//! program) reports the directory as [`node::dir_stat`] describes it, or the node's character
//! device ([`node::node_stat`]) instead of the empty file ([`fix_stat`], [`fixed`]). `readdir`
//! and `scandir`'s result entries report the nodes as `DT_CHR` with their inode numbers
//! ([`fix_dirent`]). The inodes are recognised by device and inode number, so the check costs
//! one load when no tree was made in the process.

use crate::hook::{in_hook, Hook};
use crate::node::{self, Layout};
use crate::Target;
use libc::{c_int, c_void};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One of the two directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevDir {
    /// `/dev/vfio`.
    Vfio = 1,
    /// `/dev/vfio/devices`.
    Devices = 2,
}

/// A directory path the tree serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirPath {
    /// `/dev/vfio` or `/dev/vfio/devices`.
    Dir(DevDir),
    /// `/dev/vfio/..`: the real `/dev`.
    RealDev,
}

/// Which directory `path` names: `/dev/vfio` or `/dev/vfio/devices` spelled with any
/// trailing or doubled slashes and `.` components (and `devices/..`), or `/dev/vfio/..`.
/// Node paths (and every other path) are `None`.
pub fn dir_of(path: &[u8]) -> Option<DirPath> {
    match uiommu_uapi::file::vfio_dir_depth(path)? {
        0 => Some(DirPath::Dir(DevDir::Vfio)),
        1 => Some(DirPath::Dir(DevDir::Devices)),
        _ => Some(DirPath::RealDev),
    }
}

/// Whether a glob pattern is matched in the tree: the directories themselves or any pattern
/// below `/dev/vfio/`.
pub fn glob_in_tree(pattern: &[u8]) -> bool {
    pattern == b"/dev/vfio" || pattern.starts_with(b"/dev/vfio/")
}

/// What an inode of the tree stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// A directory, and how many entries it holds (`.` and `..` not counted).
    Dir(DevDir, usize),
    /// A node's placeholder file.
    Node(Target),
    /// The tree's `dev`, the parent of `vfio`: the real `/dev`.
    Parent,
}

/// The subtree's inodes.
#[derive(Debug)]
pub struct Tree {
    /// The tree's `st_dev`.
    dev: u64,
    /// Inode number in the tree → what it is.
    entries: Vec<(u64, Entry)>,
}

/// Make `root/dev/vfio` for `devices` vfio-pci functions and the vfio groups `groups`
/// ([`uiommu_uapi::sysfs_tree::fill_dev_vfio`]), and note its inodes.
pub fn fill(root: &Path, devices: usize, groups: &[u32]) -> std::io::Result<Tree> {
    use uiommu_uapi::sysfs_tree::DevEntry;
    let placed = uiommu_uapi::sysfs_tree::fill_dev_vfio(root, devices, groups)?;
    let mut entries = Vec::with_capacity(placed.len());
    let mut dev = 0;
    for (path, what) in placed {
        let m = std::fs::symlink_metadata(&path)?;
        dev = m.dev();
        let e = match what {
            DevEntry::Node(t) => Entry::Node(t),
            DevEntry::Vfio(n) => Entry::Dir(DevDir::Vfio, n),
            DevEntry::Devices(n) => Entry::Dir(DevDir::Devices, n),
            DevEntry::Parent => Entry::Parent,
        };
        entries.push((m.ino(), e));
    }
    Ok(Tree { dev, entries })
}

impl Tree {
    fn entry(&self, dev: u64, ino: u64) -> Option<Entry> {
        if dev != self.dev {
            return None;
        }
        self.entry_by_ino(ino)
    }

    fn entry_by_ino(&self, ino: u64) -> Option<Entry> {
        self.entries
            .iter()
            .find(|&&(i, _)| i == ino)
            .map(|&(_, e)| e)
    }
}

/// `access`/`euidaccess`/`faccessat` of one of the directory paths: the directory exists, and
/// `mode` is checked against its stat ([`node::dir_stat`]) for the real or (`effective`) the
/// effective uid, root passing every check. `None` for other paths (and when the view cannot
/// be made).
pub(crate) fn access(path: &[u8], mode: c_int, effective: bool) -> Option<Result<(), c_int>> {
    let DirPath::Dir(d) = dir_of(path)? else {
        return None;
    };
    crate::sysfs::view_path(path)?;
    let st = node::dir_stat(d, 0);
    // SAFETY: getuid/geteuid cannot fail.
    let uid = unsafe {
        if effective {
            libc::geteuid()
        } else {
            libc::getuid()
        }
    };
    let want = (mode & (libc::R_OK | libc::W_OK | libc::X_OK)) as u32;
    let granted = match uid {
        0 => 0o7,
        u if u == st.st_uid => (st.st_mode >> 6) & 0o7,
        // Group and others have the same bits (0755).
        _ => st.st_mode & 0o7,
    };
    Some(if want & !granted == 0 {
        Ok(())
    } else {
        Err(libc::EACCES)
    })
}

/// The tree of the view made in this process, if any (never builds it).
fn tree() -> Option<&'static Tree> {
    crate::sysfs::built().map(|v| &v.devdir)
}

/// What the program is told about `e`: the directory's stat or the node's.
fn stat_of(e: Entry) -> Option<libc::stat> {
    match e {
        Entry::Dir(d, n) => Some(node::dir_stat(d, n)),
        Entry::Parent => Some(node::dev_dir()),
        Entry::Node(t) => {
            let g = crate::state::global().ok()?;
            node::node_stat(g, t).map(node::to_stat)
        }
    }
}

/// `st` as the program must see it: the directory's or node's stat when `st` is of an inode of
/// the tree, else `None`.
pub(crate) fn fixed(st: &libc::stat) -> Option<libc::stat> {
    let t = tree()?;
    let e = t.entry(st.st_dev, st.st_ino)?;
    let _h = Hook::enter();
    stat_of(e)
}

/// After a stat-family call that returned `r` and filled `buf` in `layout`: when it describes
/// an inode of the tree, rewrite `buf` with what the program must see. Returns `r`.
pub(crate) fn fix_stat(r: c_int, layout: Layout, buf: *mut c_void) -> c_int {
    if r != 0 || buf.is_null() || in_hook() {
        return r;
    }
    let Some(t) = tree() else { return r };
    let (dev, ino) = match layout {
        Layout::Stat => {
            // SAFETY: the call succeeded, so the kernel wrote a `struct stat` at `buf`.
            let st = unsafe { std::ptr::read_unaligned(buf.cast::<libc::stat>()) };
            (st.st_dev, st.st_ino)
        }
        Layout::Statx => {
            // SAFETY: the call succeeded, so the kernel wrote a `struct statx` at `buf`.
            let sx = unsafe { std::ptr::read_unaligned(buf.cast::<libc::statx>()) };
            (
                libc::makedev(sx.stx_dev_major, sx.stx_dev_minor),
                sx.stx_ino,
            )
        }
    };
    let Some(e) = t.entry(dev, ino) else { return r };
    let _h = Hook::enter();
    let Some(st) = stat_of(e) else { return r };
    let saved = crate::real::errno();
    let r = match crate::state::global() {
        Ok(g) => node::write_stat_of(g, &st, layout, buf),
        Err(_) => r,
    };
    if r == 0 {
        crate::real::set_errno(saved);
    }
    r
}

/// Make a directory entry of the tree what the program must see: a node's entry is `DT_CHR`
/// with the node's inode number, a directory's entry (`.` and `..` included) has the
/// directory's inode number.
///
/// # Safety
/// `ent` points to a writable `struct dirent64` (the same layout as `struct dirent` here).
unsafe fn patch(t: &Tree, ent: *mut libc::dirent64) {
    // SAFETY: the caller's contract.
    let ino = unsafe { (*ent).d_ino };
    let Some(e) = t.entry_by_ino(ino) else { return };
    let Some(st) = stat_of(e) else { return };
    // SAFETY: the caller's contract.
    unsafe {
        (*ent).d_ino = st.st_ino;
        if let Entry::Node(_) = e {
            (*ent).d_type = libc::DT_CHR;
        }
    }
}

/// After `readdir` on `dir` returned `ent`: patch it when `dir` is one of the tree's
/// directories. The directory is asked (`fstat` of its fd) only when the entry's inode number
/// is one of the tree's.
///
/// # Safety
/// `dir` is an open `DIR` and `ent` the entry `readdir` just returned from it (in the `DIR`'s
/// own, writable buffer).
pub(crate) unsafe fn fix_dirent(dir: *mut c_void, ent: *mut c_void) {
    if ent.is_null() || in_hook() {
        return;
    }
    let Some(t) = tree() else { return };
    let ent = ent.cast::<libc::dirent64>();
    // SAFETY: the caller's contract.
    if t.entry_by_ino(unsafe { (*ent).d_ino }).is_none() {
        return;
    }
    let _h = Hook::enter();
    let saved = crate::real::errno();
    // SAFETY: `dir` is an open DIR (the caller's contract).
    let fd = unsafe { libc::dirfd(dir.cast()) };
    // SAFETY: an all-zero `struct stat` is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `struct stat` into `st`.
    let ok = unsafe { crate::real::fstat(fd, (&mut st as *mut libc::stat).cast()) } == 0;
    if ok && matches!(t.entry(st.st_dev, st.st_ino), Some(Entry::Dir(..))) {
        // `..` of /dev/vfio is the tree's `dev` (Parent): patched to the real /dev's inode.
        // SAFETY: the caller's contract.
        unsafe { patch(t, ent) };
    }
    crate::real::set_errno(saved);
}

/// After `scandir` of a path the view served returned `n` entries in `*list`: patch the
/// entries of the tree's nodes and directories.
///
/// # Safety
/// `list` is the `struct dirent ***` passed to `scandir`, which returned `n`.
pub(crate) unsafe fn fix_scandir(n: c_int, list: *mut c_void) {
    if n <= 0 || list.is_null() {
        return;
    }
    let Some(t) = tree() else { return };
    let _h = Hook::enter();
    // SAFETY: scandir stored an array of `n` pointers to entries it allocated (writable).
    unsafe {
        let arr = *list.cast::<*mut *mut libc::dirent64>();
        if arr.is_null() {
            return;
        }
        for k in 0..n as usize {
            let ent = *arr.add(k);
            if !ent.is_null() {
                patch(t, ent);
            }
        }
    }
}

/// `readdir(3)`: in `/dev/vfio` and `/dev/vfio/devices`, the nodes' entries are `DT_CHR`.
///
/// # Safety
/// As `readdir(3)`.
#[no_mangle]
pub unsafe extern "C" fn readdir(dir: *mut c_void) -> *mut c_void {
    crate::hook::ffi(std::ptr::null_mut(), || {
        // SAFETY: the caller's DIR; the entry returned lives in its buffer.
        unsafe {
            let ent = crate::real::readdir(dir);
            fix_dirent(dir, ent);
            ent
        }
    })
}

/// `readdir64(3)`: as `readdir`.
///
/// # Safety
/// As `readdir64(3)`.
#[no_mangle]
pub unsafe extern "C" fn readdir64(dir: *mut c_void) -> *mut c_void {
    crate::hook::ffi(std::ptr::null_mut(), || {
        // SAFETY: the caller's DIR; the entry returned lives in its buffer.
        unsafe {
            let ent = crate::real::readdir64(dir);
            fix_dirent(dir, ent);
            ent
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_paths_are_matched_exactly() {
        let vfio = Some(DirPath::Dir(DevDir::Vfio));
        let devices = Some(DirPath::Dir(DevDir::Devices));
        for p in [
            &b"/dev/vfio"[..],
            b"/dev/vfio/",
            b"/dev/vfio//",
            b"/dev/vfio/.",
        ] {
            assert_eq!(dir_of(p), vfio, "{p:?}");
        }
        assert_eq!(dir_of(b"/dev/vfio/devices/.."), vfio);
        for p in [
            &b"/dev/vfio/devices"[..],
            b"/dev/vfio/devices/",
            b"/dev/vfio/./devices/.",
        ] {
            assert_eq!(dir_of(p), devices, "{p:?}");
        }
        assert_eq!(dir_of(b"/dev/vfio/.."), Some(DirPath::RealDev));
        assert_eq!(dir_of(b"/dev/vfio/../"), Some(DirPath::RealDev));
        for other in [
            &b"/dev/vfio/../.."[..],
            b"/dev/vfio/../null",
            b"/dev/vfio/devices/../devices/vfio0",
            b"/dev/vfio/vfio/",
            b"/dev/vfio/vfio",
            b"/dev/vfio/devices/vfio0",
            b"/dev/vfiox",
            b"/dev",
            b"dev/vfio",
        ] {
            assert_eq!(dir_of(other), None, "{other:?}");
        }
        assert!(glob_in_tree(b"/dev/vfio/*"));
        assert!(glob_in_tree(b"/dev/vfio/devices/vfio*"));
        assert!(!glob_in_tree(b"/dev/vfio*"));
    }

    #[test]
    fn the_tree_has_the_nodes_and_directories() {
        let root = std::env::temp_dir().join(format!("uiommu-devdir-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let t = fill(&root, 2, &[5, 7]).unwrap();
        let names = |d: &str| {
            let mut v: Vec<String> = std::fs::read_dir(root.join(d))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("dev/vfio"), ["5", "7", "devices", "vfio"]);
        assert_eq!(names("dev/vfio/devices"), ["vfio0", "vfio1"]);
        let m = std::fs::metadata(root.join("dev/vfio")).unwrap();
        assert!(m.is_dir());
        assert_eq!(t.entry(m.dev(), m.ino()), Some(Entry::Dir(DevDir::Vfio, 4)));
        let f = std::fs::metadata(root.join("dev/vfio/devices/vfio1")).unwrap();
        assert_eq!(
            t.entry(f.dev(), f.ino()),
            Some(Entry::Node(Target::VfioDevice(1)))
        );
        assert_eq!(t.entry(f.dev() ^ 1, f.ino()), None);
        let up = std::fs::metadata(root.join("dev")).unwrap();
        assert_eq!(t.entry(up.dev(), up.ino()), Some(Entry::Parent));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn directories_stat_as_linux_makes_them() {
        let st = node::dir_stat(DevDir::Vfio, 5);
        assert_eq!(st.st_mode, libc::S_IFDIR | 0o755);
        assert_eq!(st.st_nlink, 3);
        assert_eq!(st.st_size, 140);
        let d = node::dir_stat(DevDir::Devices, 4);
        assert_eq!(d.st_nlink, 2);
        assert_ne!(d.st_ino, st.st_ino);
        let sx = node::statx_of(&d);
        assert_eq!(u32::from(sx.stx_mode), libc::S_IFDIR | 0o755);
        assert_eq!((sx.stx_nlink, sx.stx_ino), (2, d.st_ino));
    }
}
