//! The sysfs view and the `/dev/vfio` directories for the programs the seccomp front-end
//! serves ([`crate::seccomp`]): the tree of [`uiommu_uapi::sysfs_tree`], made once per engine
//! in `<socket dir>/<instance>.view` (removed with the instance's other files), from which
//! the supervisor answers the stopped `open`, `stat`, `access` and `readlink` calls on the
//! paths the view serves.
//!
//! Every path is resolved inside the tree (`openat2` with `RESOLVE_IN_ROOT`: `..` and the
//! tree's symlinks never leave it), and the view is read-only for everyone: the engine opens
//! files there for a program, with the engine's credentials, only for reading.

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use uiommu_uapi::sysfs_tree::{describe, fill, DevEntry, Names};
use uiommu_uapi::Errno;

/// The engine's tree.
pub struct View {
    /// The tree's root directory (an `O_PATH` fd).
    root: OwnedFd,
    /// The first components served below each sysfs prefix.
    names: Names,
    /// The root's path.
    path: Vec<u8>,
    /// The tree's `st_dev`, and the inodes of its `dev/vfio` subtree with what each stands for.
    dev: u64,
    entries: Vec<(u64, DevEntry)>,
}

/// The view's directory for instance `name`.
pub fn dir_of(name: &str) -> PathBuf {
    uiommu_proto::socket_dir().join(format!("{name}.view"))
}

impl View {
    /// Make the tree for `engine` in instance `name`'s view directory (replacing a stale one).
    pub fn build(engine: &uiommu_core::Engine, name: &str) -> std::io::Result<View> {
        let dir = dir_of(name);
        if dir.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir(&dir)?;
        let desc = describe(engine);
        let placed = match fill(&dir, &desc) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        use std::os::unix::fs::MetadataExt;
        let mut entries = Vec::with_capacity(placed.len());
        let mut dev = 0;
        for (p, what) in placed {
            let m = std::fs::symlink_metadata(&p)?;
            dev = m.dev();
            entries.push((m.ino(), what));
        }
        let root = rustix::fs::open(
            &dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(View {
            root,
            names: Names::of(&desc),
            path: std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()).to_vec(),
            dev,
            entries,
        })
    }

    /// The path in the tree (relative to its root) of the absolute `path`, when the view
    /// serves it: below one of the sysfs prefixes and one of ours, or `/dev/vfio` and
    /// `/dev/vfio/devices` themselves (their node paths are the engine's nodes, not the tree's).
    pub fn serves(&self, path: &[u8]) -> Option<Vec<u8>> {
        match uiommu_uapi::file::vfio_dir_depth(path) {
            Some(0 | 1) => {}
            // `/dev/vfio/..`: the tree's `dev`, which stands for the real `/dev`.
            Some(_) => return Some(b"dev".to_vec()),
            None if self.names.serves(path) => {}
            None => return None,
        }
        let slashes = path.iter().take_while(|&&b| b == b'/').count();
        Some(path[slashes..].to_vec())
    }

    /// What the inode (`dev`, `ino`) of the tree stands for, if it is one of `dev/vfio`'s.
    pub fn dev_entry(&self, dev: u64, ino: u64) -> Option<DevEntry> {
        if dev != self.dev {
            return None;
        }
        self.entry_by_ino(ino)
    }

    /// What inode `ino` of the tree's `dev/vfio` subtree stands for.
    pub fn entry_by_ino(&self, ino: u64) -> Option<DevEntry> {
        self.entries
            .iter()
            .find(|&&(i, _)| i == ino)
            .map(|&(_, e)| e)
    }

    /// The program's path of `path` in the tree (`<root>/sys/...` → `/sys/...`), as the
    /// program named it; `None` for a path outside the tree.
    pub fn program_path(&self, path: &[u8]) -> Option<Vec<u8>> {
        let rest = path.strip_prefix(self.path.as_slice())?;
        match rest {
            [] => Some(b"/".to_vec()),
            [b'/', ..] => Some(rest.to_vec()),
            _ => None,
        }
    }

    /// Open `rel` in the tree with `flags` (read-only: anything that would write or create
    /// is EACCES, as sysfs answers for its read-only attributes).
    pub fn open(&self, rel: &[u8], flags: i32) -> Result<OwnedFd, Errno> {
        // (O_TMPFILE includes O_DIRECTORY: all of its bits.)
        let writes = (flags & nix::libc::O_ACCMODE) != nix::libc::O_RDONLY
            || flags & (nix::libc::O_CREAT | nix::libc::O_TRUNC) != 0
            || flags & nix::libc::O_TMPFILE == nix::libc::O_TMPFILE;
        if writes {
            // A directory cannot be opened for writing at all.
            let dir = self
                .path_fd(rel, false)
                .ok()
                .and_then(|f| rustix::fs::fstat(&f).ok())
                .is_some_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR);
            return Err(if dir && flags & nix::libc::O_CREAT == 0 {
                nix::libc::EISDIR
            } else {
                nix::libc::EACCES
            });
        }
        let keep = nix::libc::O_DIRECTORY
            | nix::libc::O_NOFOLLOW
            | nix::libc::O_NONBLOCK
            | nix::libc::O_NOATIME
            | nix::libc::O_PATH;
        let oflags = OFlags::from_bits_retain((flags & keep) as u32) | OFlags::CLOEXEC;
        self.resolve(rel, oflags)
    }

    /// An `O_PATH` fd of `rel` (of the symlink itself with `nofollow`).
    pub fn path_fd(&self, rel: &[u8], nofollow: bool) -> Result<OwnedFd, Errno> {
        let mut oflags = OFlags::PATH | OFlags::CLOEXEC;
        if nofollow {
            oflags |= OFlags::NOFOLLOW;
        }
        self.resolve(rel, oflags)
    }

    fn resolve(&self, rel: &[u8], oflags: OFlags) -> Result<OwnedFd, Errno> {
        let rel = if rel.is_empty() { &b"."[..] } else { rel };
        let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(rel);
        openat2(
            self.root.as_fd(),
            path,
            oflags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| e.raw_os_error())
    }
}
