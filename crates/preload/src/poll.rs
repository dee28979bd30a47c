//! Readiness of fault-queue fds for `poll`, `ppoll`, `select`, `pselect` and `epoll`.
//!
//! A fault queue's fd (`IOMMU_FAULT_QUEUE_ALLOC`) is a memfd, which the kernel always reports
//! ready. Linux's fault queue file reports `EPOLLOUT` always and `EPOLLIN | EPOLLRDNORM` while a
//! fault waits to be read (`iommufd_fault_fops_poll`). So each fault queue gets a private
//! eventfd (non-blocking, close-on-exec) whose counter is non-zero exactly while faults are
//! queued, and the readiness calls watch it in place of the memfd:
//!
//! - `poll`/`ppoll` (and the fortified `__poll_chk`/`__ppoll_chk`): the fault fds of the array
//!   are swapped for their eventfds for the real call, then swapped back, with `revents` as
//!   the kernel's (`POLLOUT`, plus `POLLIN | POLLRDNORM` when a fault is queued, masked by the
//!   events asked for) and the count recomputed.
//! - `select`/`pselect`: when a set names a fault fd, the call is served as a `ppoll` of the
//!   same fds (EBADF for a closed fd, as `select`); the timeout is not updated with the time
//!   left (Linux's `select` does that).
//! - `epoll_ctl`: the eventfd is added, modified or removed in place of the fault fd, with the
//!   program's `epoll_event` (so `epoll_wait` returns the program's data). The event mask
//!   reported may carry `EPOLLWRNORM` besides `EPOLLOUT` (the eventfd's). Adding two fds of the
//!   same queue to one epoll set is `EEXIST` (one eventfd), where Linux allows it.
//!
//! In a `fork` child, a fault queue inherited from the parent's engine (or made for the child
//! by a forwarded call) is watched through the owner's eventfd for it, which the child receives
//! once (`crate::remote::ready_efd`); the owner keeps it up to date after each call it serves.
//!
//! The counter is brought up to date after every call of the program served by this library
//! (faults arrive only then: a doorbell `pwrite` whose DMA faults, an `IOMMU_TEST_CMD`, a read
//! draining the queue) and before every readiness call. Cost when no fault queue exists: one
//! atomic load per readiness call.

use crate::hook::Hook;
use crate::real;
use crate::state::{Global, Kind, OpenFile};
use crate::table::{inode_of, InodeKey};
use libc::{c_int, c_void};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use uiommu_platform::memory::UserMemory;
use uiommu_platform::process_memory::ProcessMemory;
use uiommu_platform::UserVa;
use uiommu_uapi::fault::FaultQueueFile;

/// One fault queue's eventfd.
struct Ready {
    efd: c_int,
    /// The file (weak: the queue goes when the program closes its last fd).
    file: Weak<OpenFile>,
    /// Whether the counter is non-zero now (under the mutex: changed with the counter).
    set: Mutex<bool>,
}

impl Ready {
    fn fault(&self) -> Option<Arc<OpenFile>> {
        self.file.upgrade()
    }

    /// Bring the counter up to date: 1 while a fault is queued, 0 otherwise.
    fn sync(&self, file: &OpenFile) {
        let Some(q) = fault_queue(file) else { return };
        let want = q.readable();
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        if want == *set {
            return;
        }
        let mut v: u64 = 1;
        // SAFETY: 8-byte write or read of a u64 on the eventfd this value owns (non-blocking).
        let n = unsafe {
            if want {
                real::write(self.efd, (&v as *const u64).cast(), 8)
            } else {
                real::read(self.efd, (&mut v as *mut u64).cast(), 8)
            }
        };
        if n == 8 || !want {
            *set = want;
        }
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        // SAFETY: closes the eventfd this value owns, once.
        unsafe { real::close(self.efd) };
    }
}

/// The fault queue behind `file`, if it is one.
fn fault_queue(file: &OpenFile) -> Option<&FaultQueueFile> {
    match &file.kind {
        Kind::Engine(f) => f.as_any().downcast_ref::<FaultQueueFile>(),
        _ => None,
    }
}

/// The fault queues' eventfds, by the memfd's inode.
#[derive(Default)]
pub(crate) struct Registry {
    map: Mutex<BTreeMap<InodeKey, Arc<Ready>>>,
    live: AtomicUsize,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<InodeKey, Arc<Ready>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether no fault queue has an eventfd (one atomic load).
    pub fn is_empty(&self) -> bool {
        self.live.load(Ordering::Acquire) == 0
    }

    /// Give the fault queue just installed at `fd` (`file`) its eventfd.
    pub fn add(&self, fd: c_int, file: &Arc<OpenFile>) {
        if fault_queue(file).is_none() {
            return;
        }
        let Ok(key) = inode_of(fd) else { return };
        // SAFETY: eventfd has no memory preconditions.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return;
        }
        let r = Arc::new(Ready {
            efd,
            file: Arc::downgrade(file),
            set: Mutex::new(false),
        });
        r.sync(file);
        let mut map = self.lock();
        map.insert(key, r);
        self.live.store(map.len(), Ordering::Release);
    }

    /// Bring every counter up to date; forget (and close) the eventfds of queues closed.
    pub fn refresh(&self) {
        if self.is_empty() {
            return;
        }
        let all: Vec<Arc<Ready>> = self.lock().values().cloned().collect();
        let mut dead = false;
        for r in &all {
            match r.fault() {
                Some(f) => r.sync(&f),
                None => dead = true,
            }
        }
        if dead {
            let gone: Vec<Arc<Ready>> = {
                let mut map = self.lock();
                let keys: Vec<InodeKey> = map
                    .iter()
                    .filter(|(_, r)| r.file.strong_count() == 0)
                    .map(|(k, _)| *k)
                    .collect();
                let gone = keys.iter().filter_map(|k| map.remove(k)).collect();
                self.live.store(map.len(), Ordering::Release);
                gone
            };
            drop(gone);
        }
    }

    /// The eventfd of the fault queue of inode `key`, if it is one whose file is open.
    pub fn efd_of_key(&self, key: InodeKey) -> Option<c_int> {
        let r = self.lock().get(&key).cloned()?;
        r.fault().map(|_| r.efd)
    }

    /// The eventfd watched in place of `fd`, when `fd` is a fault queue of ours.
    fn efd_of(&self, fd: c_int) -> Option<c_int> {
        if fd < 0 {
            return None;
        }
        let key = inode_of(fd).ok()?;
        let r = self.lock().get(&key).cloned()?;
        r.fault().map(|_| r.efd)
    }
}

/// Where the fault queues a readiness call may name are known.
#[derive(Clone, Copy)]
enum Source {
    /// This process's engine (and, for fds it inherited, an ancestor's).
    Own(&'static Global),
    /// Only an ancestor's engine, for fault queues this process inherited through `fork`
    /// (`crate::remote`): their eventfds are the owner's, kept up to date there.
    Upstream,
}

/// The source when a fault queue may be involved and this thread is not inside the library.
fn active() -> Option<Source> {
    if crate::hook::in_hook() {
        return None;
    }
    if let Some(g) = crate::state::global_if_any() {
        if !g.ready.is_empty() {
            return Some(Source::Own(g));
        }
    }
    crate::remote::may_have_fault_queues().then_some(Source::Upstream)
}

impl Source {
    fn refresh(self) {
        if let Source::Own(g) = self {
            g.ready.refresh();
        }
    }

    /// The eventfd watched in place of `fd`, when `fd` is a fault queue.
    fn efd_of(self, fd: c_int) -> Option<c_int> {
        match self {
            Source::Own(g) => g.ready.efd_of(fd).or_else(|| crate::remote::ready_efd(fd)),
            Source::Upstream => crate::remote::ready_efd(fd),
        }
    }

    fn read(self, va: u64, buf: &mut [u8]) -> Result<(), libc::c_int> {
        match self {
            Source::Own(g) => crate::from_user(g, va, buf),
            Source::Upstream => ProcessMemory::this()
                .read(UserVa(va), buf)
                .map_err(|_| libc::EFAULT),
        }
    }

    fn write(self, va: u64, data: &[u8]) -> Result<(), libc::c_int> {
        match self {
            Source::Own(g) => crate::to_user(g, va, data),
            Source::Upstream => ProcessMemory::this()
                .write(UserVa(va), data)
                .map_err(|_| libc::EFAULT),
        }
    }
}

/// Kernel readiness of a fault queue from its eventfd's `revents`, masked as `poll` masks.
fn fault_revents(efd_revents: i16, events: i16) -> i16 {
    let mut mask = libc::POLLOUT;
    if efd_revents & (libc::POLLIN | libc::POLLRDNORM) != 0 {
        mask |= libc::POLLIN | libc::POLLRDNORM;
    }
    mask & (events | libc::POLLERR | libc::POLLHUP)
}

/// The common body of the `poll` family: `real_op` is called with the array to poll.
pub(crate) fn poll_impl(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    real_op: impl FnOnce(*mut libc::pollfd) -> c_int,
) -> c_int {
    let Some(g) = active() else {
        return real_op(fds);
    };
    let h = Hook::enter();
    g.refresh();
    let n = nfds as usize;
    if fds.is_null() || n == 0 || n > 1 << 20 {
        drop(h);
        return real_op(fds);
    }
    let mut copy = vec![
        libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0
        };
        n
    ];
    // SAFETY: a plain byte view of the local array, to read the program's array into.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            copy.as_mut_ptr().cast::<u8>(),
            n * std::mem::size_of::<libc::pollfd>(),
        )
    };
    if g.read(fds as u64, bytes).is_err() {
        drop(h);
        return crate::fail(libc::EFAULT);
    }
    let mut swapped = vec![None; n];
    for (p, s) in copy.iter_mut().zip(swapped.iter_mut()) {
        if let Some(efd) = g.efd_of(p.fd) {
            *s = Some((p.fd, p.events));
            p.fd = efd;
            // The eventfd is readable while a fault is queued: either read event asks for it.
            if p.events & (libc::POLLIN | libc::POLLRDNORM) != 0 {
                p.events |= libc::POLLIN;
            }
        }
    }
    if swapped.iter().all(Option::is_none) {
        drop(h);
        return real_op(fds);
    }
    drop(h);
    let r = real_op(copy.as_mut_ptr());
    let _h = Hook::enter();
    let e = real::errno();
    for (p, s) in copy.iter_mut().zip(&swapped) {
        if let Some((fd, events)) = *s {
            p.fd = fd;
            p.events = events;
            if r >= 0 {
                p.revents = fault_revents(p.revents, events);
            }
        }
    }
    let ready = copy.iter().filter(|p| p.revents != 0).count() as c_int;
    // SAFETY: the byte view of the local array, written back to the program's array.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            copy.as_ptr().cast::<u8>(),
            n * std::mem::size_of::<libc::pollfd>(),
        )
    };
    if g.write(fds as u64, bytes).is_err() {
        return crate::fail(libc::EFAULT);
    }
    if r < 0 {
        real::set_errno(e);
        return r;
    }
    ready
}

/// `select`/`pselect` when a set names a fault queue: served as a `ppoll` of the same fds.
/// `None` when no set names one (the caller then makes the real call).
///
/// # Safety
/// The sets are null or point to `fd_set`s covering `nfds` descriptors; `tmo` is null or
/// points to a timespec; `sigmask` is null or a signal set.
pub(crate) unsafe fn select_as_poll(
    nfds: c_int,
    sets: [*mut libc::fd_set; 3],
    tmo: Option<libc::timespec>,
    sigmask: *const libc::sigset_t,
) -> Option<c_int> {
    let g = active()?;
    let h = Hook::enter();
    g.refresh();
    let nfds = nfds.clamp(0, libc::FD_SETSIZE as c_int);
    let events = [libc::POLLIN, libc::POLLOUT, libc::POLLPRI];
    let mut polls: Vec<libc::pollfd> = Vec::new();
    let mut any_fault = false;
    for fd in 0..nfds {
        let mut ev = 0;
        for (set, e) in sets.iter().zip(events) {
            // SAFETY: a non-null set covers `nfds` descriptors (the caller's contract).
            if !set.is_null() && unsafe { libc::FD_ISSET(fd, *set) } {
                ev |= e;
            }
        }
        if ev != 0 {
            any_fault |= g.efd_of(fd).is_some();
            polls.push(libc::pollfd {
                fd,
                events: ev,
                revents: 0,
            });
        }
    }
    if !any_fault {
        return None;
    }
    drop(h);
    let tp = tmo
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    let r = poll_impl(polls.as_mut_ptr(), polls.len() as libc::nfds_t, |p| {
        // SAFETY: `p` is an array of `polls.len()` pollfds; `tp` and `sigmask` as given.
        unsafe { real::ppoll(p, polls.len() as libc::nfds_t, tp, sigmask) }
    });
    if r < 0 {
        return Some(r);
    }
    if polls.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        return Some(crate::fail(libc::EBADF));
    }
    let mut count = 0;
    for set in sets.iter().filter(|s| !s.is_null()) {
        // SAFETY: a non-null set of the caller's.
        unsafe { libc::FD_ZERO(*set) };
    }
    let hits = [
        libc::POLLIN | libc::POLLHUP | libc::POLLERR,
        libc::POLLOUT | libc::POLLERR,
        libc::POLLPRI,
    ];
    for p in &polls {
        for ((set, want), hit) in sets.iter().zip(events).zip(hits) {
            if !set.is_null() && p.events & want != 0 && p.revents & hit != 0 {
                // SAFETY: a non-null set of the caller's; `p.fd` < nfds <= FD_SETSIZE.
                unsafe { libc::FD_SET(p.fd, *set) };
                count += 1;
            }
        }
    }
    Some(count)
}

/// `epoll_ctl` on a fault queue: its eventfd in its place. `None` for any other fd.
///
/// # Safety
/// `event` is what `epoll_ctl(2)` takes.
pub(crate) unsafe fn epoll_ctl_fault(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut c_void,
) -> Option<c_int> {
    let g = active()?;
    let _h = Hook::enter();
    g.refresh();
    let efd = g.efd_of(fd)?;
    // SAFETY: the caller's arguments, with the eventfd for the fault queue's fd.
    Some(unsafe { real::epoll_ctl(epfd, op, efd, event) })
}
