//! The table of this library's open files, keyed by the inode of their memfd.
//!
//! Every file this library opens for the program (`/dev/iommu`, a VFIO device) is a real
//! memfd, so the kernel hands out the fd number and shares the open file through `dup`,
//! `fcntl(F_DUPFD)`, `fork` and `SCM_RIGHTS` exactly as it would a device file. The state
//! lives here, keyed by the memfd's inode (`st_dev`, `st_ino` from `fstat`): an fd is ours iff
//! `fstat` on it names an inode in the table. Nothing is keyed by fd number, so an fd number
//! closed behind this library's back and reused for another file is never mistaken for ours,
//! and every fd that reaches one of our inodes (a `dup`, one received over a socket) is ours
//! without being registered. `fstat` is the validation, and it costs what a fd → inode cache
//! lookup with validation would, so there is no separate cache.
//!
//! Liveness: when one of our fds is closed (or implicitly closed by `dup2`/`dup3`/
//! `close_range`), [`FileTable::sweep`] lists the fds still open in the process
//! (`/proc/self/fd` + `fstat`) and drops the entries no fd refers to any more; dropping an
//! entry is closing the device file (teardown of a context, unbind of a device). The sweep runs
//! under the table's write lock, so a file registered concurrently is never swept before it
//! was seen. If `/proc/self/fd` cannot be read, nothing is dropped (a leak, never a context
//! torn down under a live fd).
//!
//! Cost when the process has none of our files open: one atomic load.

use libc::c_int;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use uiommu_uapi::Errno;

/// The identity of an open file's inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeKey {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// The inode `fd` refers to, or the errno of `fstat` (EBADF for a closed fd).
pub fn inode_of(fd: c_int) -> Result<InodeKey, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `struct stat` into the pointed-to buffer, which is large enough;
    // an invalid fd is reported as an error, not undefined behaviour.
    // The real fstat: the library's own `fstat` answers a device node's identity for our fds.
    let r = unsafe { crate::real::fstat(fd, st.as_mut_ptr().cast()) };
    if r != 0 {
        return Err(crate::real::errno());
    }
    // SAFETY: fstat returned 0, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    Ok(InodeKey {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// The inodes on device `dev` that some fd of this process refers to, from `/proc/self/fd`;
/// `None` when the directory cannot be read.
pub fn referenced_inodes(dev: Option<u64>) -> Option<BTreeSet<InodeKey>> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    let mut keys = BTreeSet::new();
    for entry in dir {
        let entry = entry.ok()?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<c_int>().ok())
        else {
            continue;
        };
        // The directory's own fd is listed too; it is on procfs and filtered out by `dev`
        // (or, without a filter, simply never matches one of our inodes).
        if let Ok(key) = inode_of(fd) {
            if dev.is_none_or(|d| d == key.dev) {
                keys.insert(key);
            }
        }
    }
    Some(keys)
}

/// `dev` value meaning "not known yet / keys on several devices: do not filter".
const ANY_DEV: u64 = u64::MAX;

/// Open files of type `T`, keyed by inode.
pub struct FileTable<T> {
    files: RwLock<BTreeMap<InodeKey, Arc<T>>>,
    /// Number of entries (read without the lock on every interposed call).
    live: AtomicUsize,
    /// The one `st_dev` of every key, when they share one (memfds do), else [`ANY_DEV`]: an
    /// fd on another device is not ours without taking the lock.
    dev: AtomicU64,
}

impl<T> Default for FileTable<T> {
    fn default() -> Self {
        FileTable::new()
    }
}

impl<T> std::fmt::Debug for FileTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTable")
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T> FileTable<T> {
    /// An empty table.
    pub const fn new() -> FileTable<T> {
        FileTable {
            files: RwLock::new(BTreeMap::new()),
            live: AtomicUsize::new(0),
            dev: AtomicU64::new(ANY_DEV),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<InodeKey, Arc<T>>> {
        // A panic while holding the lock leaves a consistent map (every update is one call).
        self.files.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<InodeKey, Arc<T>>> {
        self.files.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the table is empty (one atomic load: the fast path of every interposed call).
    pub fn is_empty(&self) -> bool {
        self.live.load(Ordering::Acquire) == 0
    }

    /// Number of open files.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Register `file` as the state of the inode `fd` refers to (a memfd just created for
    /// it). EEXIST if that inode already has a state.
    pub fn insert(&self, fd: c_int, file: T) -> Result<Arc<T>, Errno> {
        let key = inode_of(fd)?;
        let file = Arc::new(file);
        let mut files = self.write();
        if files.contains_key(&key) {
            return Err(libc::EEXIST);
        }
        files.insert(key, file.clone());
        if files.len() == 1 {
            self.dev.store(key.dev, Ordering::Release);
        } else if self.dev.load(Ordering::Acquire) != key.dev {
            self.dev.store(ANY_DEV, Ordering::Release);
        }
        self.live.store(files.len(), Ordering::Release);
        Ok(file)
    }

    /// The inode of `fd` if `fd` is one of ours.
    pub fn key(&self, fd: c_int) -> Option<InodeKey> {
        if self.is_empty() || fd < 0 {
            return None;
        }
        let key = inode_of(fd).ok()?;
        let dev = self.dev.load(Ordering::Acquire);
        if dev != ANY_DEV && dev != key.dev {
            return None;
        }
        self.read().contains_key(&key).then_some(key)
    }

    /// The state behind `fd` if `fd` is one of ours.
    pub fn get(&self, fd: c_int) -> Option<Arc<T>> {
        if self.is_empty() || fd < 0 {
            return None;
        }
        let key = inode_of(fd).ok()?;
        let dev = self.dev.load(Ordering::Acquire);
        if dev != ANY_DEV && dev != key.dev {
            return None;
        }
        self.read().get(&key).cloned()
    }

    /// The state of the inode `key`, if it is one of ours.
    pub fn get_key(&self, key: InodeKey) -> Option<Arc<T>> {
        self.read().get(&key).cloned()
    }

    /// Forget the state of inode `key` (returned, for the caller to drop outside the lock).
    pub fn remove(&self, key: InodeKey) -> Option<Arc<T>> {
        let mut files = self.write();
        let removed = files.remove(&key);
        self.live.store(files.len(), Ordering::Release);
        removed
    }

    /// The inodes of the open files.
    pub fn keys(&self) -> Vec<InodeKey> {
        self.read().keys().copied().collect()
    }

    /// Drop the entries no fd of the process refers to any more, after one of ours was closed.
    /// The removed states are returned, for the caller to drop outside the lock (dropping one
    /// may tear a context down, which takes the engine lock).
    pub fn sweep(&self) -> Vec<Arc<T>> {
        self.sweep_with(referenced_inodes)
    }

    /// [`FileTable::sweep`] with the set of referenced inodes computed by `referenced` (given
    /// the device filter); `None` from it removes nothing.
    pub fn sweep_with(
        &self,
        referenced: impl FnOnce(Option<u64>) -> Option<BTreeSet<InodeKey>>,
    ) -> Vec<Arc<T>> {
        let mut files = self.write();
        if files.is_empty() {
            return Vec::new();
        }
        let dev = self.dev.load(Ordering::Acquire);
        let Some(live) = referenced((dev != ANY_DEV).then_some(dev)) else {
            return Vec::new();
        };
        let dead: Vec<InodeKey> = files
            .keys()
            .filter(|k| !live.contains(k))
            .copied()
            .collect();
        let removed = dead.iter().filter_map(|k| files.remove(k)).collect();
        self.live.store(files.len(), Ordering::Release);
        removed
    }

    /// Forget every entry without dropping it (after `fork`, in the child: the states belong
    /// to the parent's engine, whose locks may be held by threads that do not exist here).
    pub fn leak_all(&self) {
        let mut files = self.write();
        for (_, f) in std::mem::take(&mut *files) {
            std::mem::forget(f);
        }
        self.live.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn memfd() -> c_int {
        // SAFETY: the name is NUL-terminated; memfd_create has no other preconditions.
        let fd = unsafe { libc::memfd_create(c"uiommu:test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        fd
    }

    fn close(fd: c_int) {
        // SAFETY: closing an fd this test owns.
        assert_eq!(unsafe { libc::close(fd) }, 0);
    }

    fn dup(fd: c_int) -> c_int {
        // SAFETY: dup has no memory-safety preconditions.
        let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        assert!(d >= 0);
        d
    }

    /// A state that records when it is dropped.
    struct Probe(Arc<AtomicBool>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn probe() -> (Probe, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        (Probe(dropped.clone()), dropped)
    }

    #[test]
    fn empty_table_owns_nothing() {
        let t: FileTable<u32> = FileTable::new();
        let fd = memfd();
        assert!(t.is_empty());
        assert!(t.get(fd).is_none());
        assert!(t.key(fd).is_none());
        assert!(t.get(-1).is_none());
        close(fd);
    }

    #[test]
    fn inode_keying_finds_the_state_through_any_fd_of_the_inode() {
        let t = FileTable::new();
        let fd = memfd();
        t.insert(fd, 7u32).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(fd).as_deref(), Some(&7));
        let d = dup(fd);
        assert_ne!(d, fd);
        assert_eq!(
            t.get(d).as_deref(),
            Some(&7),
            "a dup is ours without registering it"
        );
        assert_eq!(t.key(d), t.key(fd));
        close(d);
        close(fd);
    }

    #[test]
    fn another_memfd_or_file_is_not_ours() {
        let t = FileTable::new();
        let ours = memfd();
        let other = memfd();
        t.insert(ours, 1u32).unwrap();
        assert!(t.get(other).is_none());
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(t.get(std::os::fd::AsRawFd::as_raw_fd(&f)).is_none());
        close(other);
        close(ours);
    }

    #[test]
    fn a_reused_fd_number_is_not_mistaken_for_ours() {
        let t = FileTable::new();
        let fd = memfd();
        t.insert(fd, 1u32).unwrap();
        // Close behind the table's back and put another memfd at the same number.
        let other = memfd();
        // SAFETY: dup2 onto an fd this test owns.
        assert_eq!(unsafe { libc::dup2(other, fd) }, fd);
        close(other);
        assert!(t.get(fd).is_none(), "fd {fd} now names another inode");
        close(fd);
    }

    #[test]
    fn inserting_the_same_inode_twice_is_eexist() {
        let t = FileTable::new();
        let fd = memfd();
        t.insert(fd, 1u32).unwrap();
        let d = dup(fd);
        assert_eq!(t.insert(d, 2u32).err(), Some(libc::EEXIST));
        assert_eq!(t.get(fd).as_deref(), Some(&1));
        close(d);
        close(fd);
    }

    #[test]
    fn insert_of_a_closed_fd_is_ebadf() {
        let t = FileTable::new();
        // A number no test opens (a closed fd's number could be reused by a parallel test).
        assert_eq!(t.insert(c_int::MAX, 1u32).err(), Some(libc::EBADF));
        assert!(t.is_empty());
    }

    #[test]
    fn close_keeps_the_state_while_a_dup_lives_and_drops_it_with_the_last_fd() {
        let t = FileTable::new();
        let fd = memfd();
        let (p, dropped) = probe();
        t.insert(fd, p).unwrap();
        let d = dup(fd);

        close(fd);
        let removed = t.sweep();
        assert!(removed.is_empty(), "the dup still refers to the inode");
        assert!(t.get(d).is_some());

        close(d);
        let removed = t.sweep();
        assert_eq!(removed.len(), 1);
        assert!(t.is_empty());
        assert!(
            !dropped.load(Ordering::SeqCst),
            "the caller drops outside the lock"
        );
        drop(removed);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn sweep_only_drops_unreferenced_entries() {
        let t = FileTable::new();
        let a = memfd();
        let b = memfd();
        t.insert(a, 1u32).unwrap();
        t.insert(b, 2u32).unwrap();
        close(a);
        let removed = t.sweep();
        assert_eq!(removed.iter().map(|r| **r).collect::<Vec<_>>(), vec![1]);
        assert_eq!(t.get(b).as_deref(), Some(&2));
        close(b);
        assert_eq!(t.sweep().len(), 1);
    }

    #[test]
    fn unreadable_fd_list_drops_nothing() {
        let t = FileTable::new();
        let fd = memfd();
        t.insert(fd, 1u32).unwrap();
        close(fd);
        assert!(t.sweep_with(|_| None).is_empty());
        assert_eq!(t.len(), 1);
        assert_eq!(t.sweep().len(), 1);
    }

    #[test]
    fn a_state_held_by_a_caller_outlives_its_removal() {
        let t = FileTable::new();
        let fd = memfd();
        let (p, dropped) = probe();
        t.insert(fd, p).unwrap();
        let held = t.get(fd).unwrap();
        close(fd);
        drop(t.sweep());
        assert!(
            !dropped.load(Ordering::SeqCst),
            "an ioctl in flight keeps its file"
        );
        drop(held);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn leak_all_forgets_without_dropping() {
        let t = FileTable::new();
        let fd = memfd();
        let (p, dropped) = probe();
        t.insert(fd, p).unwrap();
        t.leak_all();
        assert!(t.is_empty());
        assert!(t.get(fd).is_none());
        assert!(!dropped.load(Ordering::SeqCst));
        close(fd);
    }

    #[test]
    fn referenced_inodes_lists_open_memfds() {
        let fd = memfd();
        let key = inode_of(fd).unwrap();
        let keys = referenced_inodes(Some(key.dev)).unwrap();
        assert!(keys.contains(&key));
        close(fd);
        let keys = referenced_inodes(Some(key.dev)).unwrap();
        assert!(!keys.contains(&key));
    }
}
