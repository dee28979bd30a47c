//! The descendant's side: which fds are an ancestor's files, the links to the ancestors'
//! servers, and the forwarded calls (ioctl, read/write, mmap's errno, close, fstat, readiness).

use super::*;

/// Whether this process may have inherited files of an ancestor's engine.
pub(crate) fn has_upstream() -> bool {
    UPSTREAMS[0].pid.load(Ordering::Acquire) != 0
}

/// Whether the `/proc/<pid>/fd/<n>` link `path` names one of this library's memfds.
pub(super) fn names_our_memfd(path: &std::path::Path) -> bool {
    std::fs::read_link(path).is_ok_and(|t| {
        t.as_os_str()
            .as_encoded_bytes()
            .starts_with(b"/memfd:uiommu:")
    })
}

/// Whether `fd` is one of this library's memfds.
pub(super) fn is_our_memfd(fd: c_int) -> bool {
    names_our_memfd(std::path::Path::new(&format!("/proc/self/fd/{fd}")))
}

/// The inodes of our memfds process `pid` has open (empty when it cannot be looked at).
pub(super) fn memfds_of(pid: i32) -> Vec<InodeKey> {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| names_our_memfd(&e.path()))
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|md| InodeKey {
            dev: md.dev(),
            ino: md.ino(),
        })
        .collect()
}

/// The inode of `fd` when it may be a file of the upstream engine this process inherited
/// (one `fstat` for other files on other devices; a `readlink` for other memfds).
pub(crate) fn inherited(fd: c_int) -> Option<InodeKey> {
    if !has_upstream() || fd < 0 {
        return None;
    }
    let key = inode_of(fd).ok()?;
    let dev = MEMFD_DEV.load(Ordering::Acquire);
    if dev != 0 && key.dev != dev {
        return None;
    }
    is_our_memfd(fd).then_some(key)
}

/// Run operation `op` on the upstream file of inode `key`, asking the ancestors' servers
/// nearest first. `None` when none serves that inode (or they are gone): the caller goes to
/// the real call.
pub(super) fn call(key: InodeKey, op: u32, args: [u64; 4]) -> Option<Result<Reply, Errno>> {
    UPSTREAMS
        .iter()
        .take_while(|u| u.pid.load(Ordering::Acquire) != 0)
        .find_map(|u| call_at(u, key, op, args))
}

/// Operation `op` on the file of inode `key` served by `up` (see [`call`]).
pub(super) fn call_at(
    up: &Upstream,
    key: InodeKey,
    op: u32,
    args: [u64; 4],
) -> Option<Result<Reply, Errno>> {
    let mut req = [0u8; REQ_LEN];
    req[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
    req[4..8].copy_from_slice(&op.to_ne_bytes());
    req[8..16].copy_from_slice(&key.dev.to_ne_bytes());
    req[16..24].copy_from_slice(&key.ino.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        req[24 + 8 * i..32 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    // The process's link, when no other call of the process uses it; else a connection for
    // this call alone (another thread, or a signal handler interrupting a call).
    if let Ok(mut held) = up.link().try_lock() {
        for _ in 0..2 {
            if !held.as_ref().is_some_and(Link::intact) {
                *held = None;
                up.link_fd.store(-1, Ordering::Release);
                let fresh = Link::connect(up)?;
                up.link_fd.store(fresh.sock, Ordering::Release);
                *held = Some(fresh);
            }
            let sock = held.as_ref()?.sock;
            if send(sock, &req, None).is_err() {
                // Never sent (the owner closed the link): once more on a new one.
                up.link_fd.store(-1, Ordering::Release);
                *held = None;
                continue;
            }
            return match exchange(sock) {
                Ok(r) => r,
                Err(Broken) => {
                    up.link_fd.store(-1, Ordering::Release);
                    *held = None;
                    Some(Err(libc::EIO))
                }
            };
        }
        return Some(Err(libc::EIO));
    }
    let once = Link::connect(up)?;
    let sock = once.sock;
    if send(sock, &req, None).is_err() {
        return Some(Err(libc::EIO));
    }
    exchange(sock).unwrap_or(Some(Err(libc::EIO)))
}

/// A connection to the upstream owner.
pub(super) struct Link {
    pub(super) sock: RawFd,
    /// Its inode: the number is used only while it still names this socket (a program may
    /// close descriptors it did not open, and the number may since name another file).
    pub(super) key: InodeKey,
}

impl Link {
    pub(super) fn connect(up: &Upstream) -> Option<Link> {
        let pid = up.pid.load(Ordering::Acquire);
        let addr =
            SocketAddr::from_abstract_name(name(pid, up.nonce.load(Ordering::Acquire)).as_bytes())
                .ok()?;
        // The owner is gone: the file died with its engine.
        let sock = UnixStream::connect_addr(&addr).ok()?.into_raw_fd();
        let link = Link {
            sock,
            key: inode_of(sock).unwrap_or(InodeKey { dev: 0, ino: 0 }),
        };
        link.intact().then_some(link)
    }

    pub(super) fn intact(&self) -> bool {
        inode_of(self.sock) == Ok(self.key)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Closed only while the number still names the socket (else it is the program's).
        if self.intact() {
            // SAFETY: closes the socket this value owns, once.
            unsafe { real::close(self.sock) };
        }
    }
}

impl Upstream {
    /// This process's link to the server (made on first use).
    pub(super) fn link(&self) -> &'static Mutex<Option<Link>> {
        leaked(&self.link)
    }
}

/// The value `slot` points to, made (and leaked) on first use. A `fork` child nulls such
/// slots without freeing what they point to (its locks may be held by threads that were not
/// copied), so the pointer, once set, stays valid for the process's life.
pub(super) fn leaked<T: Default>(slot: &AtomicPtr<T>) -> &'static T {
    let mut p = slot.load(Ordering::Acquire);
    if p.is_null() {
        let new = Box::into_raw(Box::default());
        p = match slot.compare_exchange(
            std::ptr::null_mut(),
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => new,
            Err(winner) => {
                // SAFETY: `new` comes from Box::into_raw above and nobody else saw it.
                drop(unsafe { Box::from_raw(new) });
                winner
            }
        };
    }
    // SAFETY: a non-null slot points to a leaked Box that is never freed (see above).
    unsafe { &*p }
}

/// The rest of one call after its request was sent on `sock`: the owner's questions answered,
/// until its reply.
pub(super) fn exchange(sock: RawFd) -> Result<Option<Result<Reply, Errno>>, Broken> {
    // The fds this call installed (the only ones the owner may ask to close).
    let mut installed: Vec<c_int> = Vec::new();
    loop {
        let (m, fd) = receive_msg(sock).map_err(|_| Broken)?;
        let answered = match m.kind {
            K_REPLY => {
                return Ok(match m.y {
                    0 => Some(Ok(Reply {
                        v: m.x,
                        extra: m.z,
                        fd,
                    })),
                    NOT_MINE => None,
                    e => Some(Err(e as Errno)),
                });
            }
            K_NEED_FD => match c_int::try_from(m.x) {
                Ok(n) if fd_open(n) => send_msg(sock, msg(K_GIVE_FD, 0), Some(n)),
                _ => send_msg(sock, msg(K_GIVE_FD, libc::EBADF.into()), None),
            },
            K_TAKE_FD => {
                UPSTREAM_FAULTS.store(true, Ordering::Release);
                let took = match fd {
                    Some(f) => {
                        let n = f.into_raw_fd();
                        installed.push(n);
                        if m.x == 0 {
                            // SAFETY: clears close-on-exec of the fd just received.
                            unsafe { real::fcntl(n, libc::F_SETFD, 0) };
                        }
                        i64::from(n)
                    }
                    None => -i64::from(libc::EIO),
                };
                send_msg(sock, msg(K_TOOK_FD, took), None)
            }
            K_DROP_FD => {
                if let Some(n) = c_int::try_from(m.x)
                    .ok()
                    .filter(|&n| installed.contains(&n))
                {
                    // SAFETY: closes the fd this call installed, whose number the program
                    // was never told.
                    unsafe { real::close(n) };
                }
                send_msg(sock, msg(K_TOOK_FD, 0), None)
            }
            _ => return Err(Broken),
        };
        answered.map_err(|_| Broken)?;
    }
}

/// The link failed in the middle of a call (the owner exited, or spoke out of turn): the call
/// fails with EIO and the link is not used again.
pub(super) struct Broken;

/// The end of a call, as the descendant receives it.
pub(super) struct Reply {
    pub(super) v: i64,
    pub(super) extra: i64,
    pub(super) fd: Option<OwnedFd>,
}

pub(super) fn msg(kind: u32, x: i64) -> Msg {
    Msg {
        kind,
        x,
        ..Msg::default()
    }
}

/// An ioctl on `fd` (not in this process's table), served by the ancestor when `fd` is an
/// inherited file of its engine; `None` otherwise (the caller goes to the real `ioctl`).
pub(crate) fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> Option<Result<i64, Errno>> {
    let key = inherited(fd)?;
    let r = call(key, OP_IOCTL, [request, arg, 0, 0])?;
    Some(r.map(|r| r.v))
}

/// A read or write on `fd` (see [`ioctl`]): at `offset`, or at the fd's file position, which
/// is advanced by the count served when the file has positions.
pub(crate) fn io(
    fd: c_int,
    dir: Dir,
    buf: u64,
    count: size_t,
    offset: Option<i64>,
) -> Option<Result<usize, Errno>> {
    let key = inherited(fd)?;
    let (positional, pos) = match offset {
        Some(o) => (1, o),
        // SAFETY: lseek on an fd of ours; no memory is passed.
        None => (0, unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }.max(0)),
    };
    let op = match dir {
        Dir::Read => OP_READ,
        Dir::Write => OP_WRITE,
    };
    let r = call(key, op, [buf, count as u64, positional, pos as u64])?;
    Some(r.map(|r| {
        let n = r.v;
        if offset.is_none() && r.extra != 0 {
            // SAFETY: lseek on an fd of ours; no memory is passed.
            unsafe { libc::lseek(fd, pos.saturating_add(n), libc::SEEK_SET) };
        }
        n as usize
    }))
}

/// The errno an `mmap` of `fd` fails with (see [`ioctl`]).
pub(crate) fn mmap_refusal(
    fd: c_int,
    len: size_t,
    prot: c_int,
    flags: c_int,
    off: i64,
) -> Option<Errno> {
    let key = inherited(fd)?;
    let args = [len as u64, prot as u64, flags as u64, off as u64];
    match call(key, OP_MMAP, args)? {
        Ok(r) => Some(r.v as Errno),
        Err(e) => Some(e),
    }
}

/// `fork(2)`. In a process that inherited files of an ancestor's engine, the ancestor learns
/// the new child's pid: the child stays one of its family (it may hold the files and is served)
/// even once its parent exited and it was reparented away from the ancestor's tree.
///
/// # Safety
/// As `fork(2)`.
#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    // Private ranges moved onto shared memory for pins become the child's own again.
    crate::pinnable::before_fork();
    // SAFETY: fork has no arguments; the atfork handlers run inside it.
    let pid = unsafe { real::fork() };
    crate::pinnable::after_fork(pid == 0);
    if pid > 0 && has_upstream() && !crate::hook::in_hook() {
        quietly(|| tell_forked(pid));
    }
    pid
}

/// Tell every ancestor serving this process about its new child `pid` (see [`fork`]).
pub(super) fn tell_forked(pid: libc::pid_t) {
    {
        let e = real::errno();
        let _h = Hook::enter();
        let key = InodeKey { dev: 0, ino: 0 };
        // Every ancestor serving this process learns it: each may hold files the child has.
        for u in UPSTREAMS
            .iter()
            .take_while(|u| u.pid.load(Ordering::Acquire) != 0)
        {
            let _ = call_at(u, key, OP_FORKED, [pid as u64, 0, 0, 0]);
        }
        real::set_errno(e);
    }
}

/// Run `f`, the library's own work after a call whose result is already the program's: a
/// panic in it must neither unwind into C nor change that result.
pub(super) fn quietly(f: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
}

/// Tell the owner that this process closed an fd of the inherited file `key`.
pub(crate) fn closed(key: InodeKey) {
    let _ = call(key, OP_CLOSED, [0; 4]);
}

/// Ask the owner of the inherited file `key` (open here at `fd`) to hold it while this
/// process sends it over a socket (`crate::passing`).
pub(crate) fn hold(fd: c_int, key: InodeKey) {
    let _ = call(key, OP_HOLD, [fd as u64, 0, 0, 0]);
}

/// Tell the owner of the inherited file `key` that this process received it over a socket.
pub(crate) fn received(key: InodeKey) {
    let _ = call(key, OP_RECEIVED, [0; 4]);
}

/// What `fstat` of `fd` reports when it is an inherited file opened from one of our `/dev`
/// nodes (see [`ioctl`]).
pub(crate) fn node(fd: c_int) -> Option<NodeStat> {
    let key = inherited(fd)?;
    let r = call(key, OP_NODE, [0; 4])?.ok()?;
    Some(NodeStat {
        perm: ((r.v >> 32) & 0o7777) as u32,
        major: ((r.v >> 20) & 0xfff) as u32,
        minor: (r.v & 0xf_ffff) as u32,
        ino: r.extra as u64,
    })
}

/// Whether this process may hold fault queues of an ancestor's engine (inherited from an owner
/// that had one when it forked, or made for this process by a forwarded call).
pub(crate) fn may_have_fault_queues() -> bool {
    has_upstream() && UPSTREAM_FAULTS.load(Ordering::Acquire)
}

/// The readiness eventfds of inherited fault queues, by inode (null: none yet, and again in a
/// `fork` child, which asks anew).
pub(super) static READY: AtomicPtr<Mutex<BTreeMap<InodeKey, OwnedFd>>> =
    AtomicPtr::new(std::ptr::null_mut());

/// The eventfd `poll` watches in place of `fd` when `fd` is an inherited fault queue: the
/// owner's own (received once, kept), whose counter the owner keeps non-zero while a fault is
/// queued.
pub(crate) fn ready_efd(fd: c_int) -> Option<c_int> {
    if !may_have_fault_queues() {
        return None;
    }
    let key = inherited(fd)?;
    let mut cache = leaked(&READY).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(efd) = cache.get(&key) {
        return Some(efd.as_raw_fd());
    }
    let efd = call(key, OP_READY, [0; 4])?.ok()?.fd?;
    let raw = efd.as_raw_fd();
    cache.insert(key, efd);
    Some(raw)
}
