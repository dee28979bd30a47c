//! Serving a descendant: one connection per link, its peer's credentials and family checked
//! once, each request run on the owner's file with the descendant's memory and fds
//! (`ChildFds`, `Descendant`).

use super::*;

/// The pid and uid of a connected peer.
pub(super) fn peer(s: &UnixStream) -> Option<(i32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one struct ucred into `cred`, whose size `len` gives.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some((cred.pid, cred.uid))
}

/// The server thread: each connection (a descendant's link, or one call) is served on a
/// thread of its own.
pub(super) fn serve(listener: UnixListener) {
    let _h = Hook::enter();
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        let _ = std::thread::Builder::new()
            .name("uiommu-link".into())
            .spawn(move || {
                let _h = Hook::enter();
                serve_link(&s);
            });
    }
}

/// Serve one call.
/// Serve the calls arriving on one connection, in order, until the descendant closes it.
pub(super) fn serve_link(s: &UnixStream) {
    let Some((pid, uid)) = peer(s) else { return };
    let Some(srv) = server() else { return };
    // SAFETY: geteuid has no preconditions.
    if uid != unsafe { libc::geteuid() } {
        return;
    }
    let mut peer = Peer {
        srv,
        sock: s.as_raw_fd(),
        pid,
        space: None,
        member: in_family(srv, pid),
    };
    loop {
        let mut req = [0u8; REQ_LEN];
        if receive(peer.sock, &mut req).is_err() || !serve_request(&mut peer, &req) {
            break;
        }
    }
    // The descendant closed its link, usually by exiting: files only the family held may
    // have lost their last holder.
    if let (true, Some(g)) = (srv.reaping.load(Ordering::Acquire), global_if_any()) {
        drop(sweep(g));
        g.ready.refresh();
    }
}

/// The descendant at the other end of a link.
pub(super) struct Peer {
    pub(super) srv: &'static Server,
    pub(super) sock: RawFd,
    pub(super) pid: i32,
    /// Its address space, once known.
    pub(super) space: Option<(Arc<Descendant>, SpaceId)>,
    /// Whether it is of the family. Another process of this uid is served once it shows it
    /// holds the file it names (it was sent one: `crate::passing`), and joins the family.
    pub(super) member: bool,
}

/// Serve the request `req` of `peer`; false when the link is to be closed.
pub(super) fn serve_request(peer: &mut Peer, req: &[u8; REQ_LEN]) -> bool {
    let word = |i: usize| u64::from_ne_bytes(req[i..i + 8].try_into().unwrap_or([0; 8]));
    if u32::from_ne_bytes(req[0..4].try_into().unwrap_or([0; 4])) != MAGIC {
        return false;
    }
    let op = u32::from_ne_bytes(req[4..8].try_into().unwrap_or([0; 4]));
    let key = InodeKey {
        dev: word(8),
        ino: word(16),
    };
    let args = [word(24), word(32), word(40), word(48)];
    if !peer.member && holds_inode(peer.pid, key) {
        peer.srv.join(peer.pid);
        peer.member = true;
    }
    let r = match global_if_any() {
        Some(g) if peer.member => serve_op(g, peer, op, key, args),
        _ => None,
    };
    let mut attached = None;
    let reply = match r {
        None => Msg {
            kind: K_REPLY,
            y: NOT_MINE,
            ..Msg::default()
        },
        Some(Ok(a)) => {
            attached = a.fd;
            Msg {
                kind: K_REPLY,
                x: a.v,
                z: a.extra,
                ..Msg::default()
            }
        }
        Some(Err(e)) => Msg {
            kind: K_REPLY,
            y: i64::from(e),
            ..Msg::default()
        },
    };
    send_msg(peer.sock, reply, attached.as_ref().map(|f| f.as_raw_fd())).is_ok()
}

/// Run operation `op` of descendant `pid` on the file of inode `key`.
pub(super) fn serve_op(
    g: &'static Global,
    peer: &mut Peer,
    op: u32,
    key: InodeKey,
    [a, b, c, d]: [u64; 4],
) -> Option<Result<Answer, Errno>> {
    if op == OP_FORKED {
        let child = a as i32;
        // Only a child of the caller joins (the caller is of the family, checked above).
        if ppid_of(child) == Some(peer.pid) {
            let mut family = peer.srv.family.lock().unwrap_or_else(|e| e.into_inner());
            family.insert(child, start_time(child));
        }
        return Some(Ok(Answer::of(0)));
    }
    if op == OP_CLOSED {
        // Another ancestor's file (a grandchild asks each of its upstreams in turn).
        g.files.get_key(key)?;
        drop(sweep(g));
        g.ready.refresh();
        return Some(Ok(Answer::of(0)));
    }
    let file = g.files.get_key(key)?;
    match op {
        OP_RECEIVED => {
            crate::passing::release(key);
            return Some(Ok(Answer::of(0)));
        }
        OP_HOLD => {
            let fds = ChildFds {
                sock: peer.sock,
                g,
                srv: peer.srv,
            };
            let fd = match fds.fetch(a as i32) {
                Ok(fd) => fd,
                Err(e) => return Some(Err(e)),
            };
            if inode_of(fd.as_raw_fd()) != Ok(key) {
                return Some(Err(libc::EBADF));
            }
            crate::passing::keep(fd.into_raw_fd(), key);
            return Some(Ok(Answer::of(0)));
        }
        OP_NODE => {
            let n = crate::node::node_stat(g, file.node?)?;
            let packed =
                (i64::from(n.perm) << 32) | (i64::from(n.major) << 20) | i64::from(n.minor);
            return Some(Ok(Answer {
                v: packed,
                extra: n.ino as i64,
                fd: None,
            }));
        }
        OP_READY => {
            let efd = g.ready.efd_of_key(key)?;
            // SAFETY: F_DUPFD_CLOEXEC duplicates the queue's eventfd, alive while `file` is.
            let dup = unsafe { real::fcntl(efd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return Some(Err(real::errno()));
            }
            // SAFETY: `dup` was just made and is owned by nothing else.
            let fd = Some(unsafe { OwnedFd::from_raw_fd(dup) });
            return Some(Ok(Answer { v: 0, extra: 0, fd }));
        }
        _ => {}
    }
    let (srv, sock, pid) = (peer.srv, peer.sock, peer.pid);
    let (mem, space) = peer
        .space
        .get_or_insert_with(|| srv.space_of(g, pid))
        .clone();
    let fds = ChildFds { sock, g, srv };
    let caller = Caller {
        mem: &*mem,
        fds: &fds,
    };
    let r = uiommu_core::with_caller_space(space, || match op {
        OP_IOCTL => file.ioctl(&caller, a, b).map(Answer::of),
        OP_READ | OP_WRITE => {
            let dir = if op == OP_READ { Dir::Read } else { Dir::Write };
            let pos = if c != 0 {
                Pos::At(d as i64)
            } else {
                Pos::Stream(d as i64)
            };
            uiommu_uapi::file::file_io(&caller, &file, dir, a, b as usize, pos).map(|(n, moves)| {
                Answer {
                    v: n as i64,
                    extra: i64::from(moves),
                    fd: None,
                }
            })
        }
        OP_MMAP => Ok(Answer::of(i64::from(uiommu_uapi::file::mmap_refusal(
            &file, a, b as c_int, c as c_int, d as i64,
        )))),
        _ => Err(libc::EINVAL),
    });
    drop(file);
    g.ready.refresh();
    Some(r)
}

/// The end of a call, as the owner sends it.
pub(super) struct Answer {
    pub(super) v: i64,
    pub(super) extra: i64,
    /// An fd for the descendant (closed here once sent).
    pub(super) fd: Option<OwnedFd>,
}

impl Answer {
    pub(super) fn of(v: i64) -> Answer {
        Answer {
            v,
            extra: 0,
            fd: None,
        }
    }
}

/// A descendant's file table, as handlers see it: an fd number is asked for during the call.
pub(super) struct ChildFds {
    pub(super) sock: RawFd,
    pub(super) g: &'static Global,
    pub(super) srv: &'static Server,
}

impl ChildFds {
    /// The descendant's fd `n`, received here.
    pub(super) fn fetch(&self, n: i32) -> Result<OwnedFd, Errno> {
        let io = |_| libc::EIO;
        send_msg(self.sock, msg(K_NEED_FD, n.into()), None).map_err(io)?;
        let (m, fd) = receive_msg(self.sock).map_err(io)?;
        match (m.kind, fd) {
            (K_GIVE_FD, Some(fd)) => Ok(fd),
            (K_GIVE_FD, None) if m.x > 0 => Err(m.x as Errno),
            _ => Err(libc::EIO),
        }
    }

    /// Our file the descendant's fd `n` refers to.
    pub(super) fn file_of(&self, n: i32) -> Result<Option<Arc<OpenFile>>, Errno> {
        let fd = self.fetch(n)?;
        Ok(inode_of(fd.as_raw_fd())
            .ok()
            .and_then(|k| self.g.files.get_key(k)))
    }
}

impl FdTable for ChildFds {
    fn iommufd(&self, n: i32) -> Result<uiommu_core::Context, Errno> {
        match self.file_of(n)?.as_deref() {
            Some(OpenFile {
                kind: Kind::Iommufd(f),
                ..
            }) => Ok(f.context().clone()),
            // Not an iommufd of this engine (one of the descendant's own engine included).
            _ => Err(libc::EBADFD),
        }
    }

    fn eventfd(&self, n: i32) -> Result<Box<dyn Fn() + Send + Sync>, Errno> {
        let fd = self.fetch(n)?;
        if !is_eventfd(fd.as_raw_fd()) {
            return Err(libc::EINVAL);
        }
        eventfd_signal(fd.into_raw_fd())
    }

    fn install(&self, file: Arc<dyn EngineFile>, cloexec: bool) -> Result<i32, Errno> {
        let fd = self.g.install(file, cloexec)?;
        // The owner's fd is closed once the descendant holds the file (not before: a sweep
        // in between would find nobody holding it).
        let took = send_msg(self.sock, msg(K_TAKE_FD, i64::from(cloexec)), Some(fd))
            .and_then(|_| receive_msg(self.sock));
        // SAFETY: closes the fd `install` made in this process, once.
        unsafe { real::close(fd) };
        let r = match took {
            Ok((m, _)) if m.kind == K_TOOK_FD && m.x >= 0 => {
                i32::try_from(m.x).map_err(|_| libc::EIO)
            }
            Ok((m, _)) if m.kind == K_TOOK_FD => Err((-m.x) as Errno),
            _ => Err(libc::EIO),
        };
        // Nobody holds the file if the descendant did not take it; otherwise only the
        // descendant does.
        drop(sweep(self.g));
        if r.is_ok() {
            self.srv.reap(self.g);
        }
        r
    }

    fn uninstall(&self, n: i32) {
        let dropped = send_msg(self.sock, msg(K_DROP_FD, n.into()), None)
            .and_then(|_| receive_msg(self.sock));
        if dropped.is_ok() {
            drop(sweep(self.g));
        }
    }

    fn file(&self, n: i32) -> Result<Arc<dyn EngineFile>, Errno> {
        match self.file_of(n)?.as_deref() {
            Some(OpenFile {
                kind: Kind::Engine(f),
                ..
            }) => Ok(f.clone()),
            _ => Err(libc::EBADF),
        }
    }
}

/// A descendant's memory: its own through the kernel, except the ranges of `MAP_SHARED`
/// mappings it shares with this process, which are this process's memory (the same pages).
pub(super) struct Descendant {
    pub(super) pid: i32,
    /// Its memory; `None` once it exited.
    pub(super) mem: RwLock<Option<ProcessMemory>>,
    pub(super) own: Arc<ProcessMemory>,
    /// Page-aligned `[start, end)` ranges found shared with this process at probe time.
    pub(super) shared: Mutex<Vec<(u64, u64)>>,
}

/// One line of `/proc/<pid>/maps`: start, end, shared, offset, inode (with the device).
pub(super) type MapLine = (u64, u64, bool, u64, String, u64);

pub(super) fn maps(pid: &str) -> Vec<MapLine> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (a, b) = it.next()?.split_once('-')?;
            let perms = it.next()?;
            let off = u64::from_str_radix(it.next()?, 16).ok()?;
            let dev = it.next()?.to_string();
            let ino = it.next()?.parse().ok()?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                perms.as_bytes().get(3) == Some(&b's'),
                off,
                dev,
                ino,
            ))
        })
        .collect()
}

impl Descendant {
    pub(super) fn new(pid: i32, own: Arc<ProcessMemory>) -> Descendant {
        Descendant {
            pid,
            mem: RwLock::new(Some(ProcessMemory::of(pid).holding())),
            own,
            shared: Mutex::new(Vec::new()),
        }
    }

    /// The descendant exited: its memory is gone (the shared ranges remain this process's).
    pub(super) fn retire(&self) {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(super) fn with_mem<R>(
        &self,
        va: UserVa,
        f: impl FnOnce(&ProcessMemory) -> Result<R, MemFault>,
    ) -> Result<R, MemFault> {
        match &*self.mem.read().unwrap_or_else(|e| e.into_inner()) {
            Some(m) => f(m),
            None => Err(MemFault::Unmapped(va)),
        }
    }

    /// Record the parts of `[va, va + len)` the descendant maps shared with this process.
    pub(super) fn note_shared(&self, va: u64, len: u64) {
        let end = va.saturating_add(len);
        let theirs = maps(&self.pid.to_string());
        let ours = maps("self");
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for t in theirs.iter().filter(|t| t.2 && t.0 < end && t.1 > va) {
            if ours.iter().any(|o| o == t) {
                shared.push((t.0.max(va), t.1.min(end)));
            }
        }
    }

    /// Whether `[va, va + len)` lies in one shared range.
    pub(super) fn is_shared(&self, va: u64, len: u64) -> bool {
        let end = va.saturating_add(len);
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.iter().any(|&(s, e)| s <= va && end <= e)
    }
}

impl UserMemory for Descendant {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        if self.is_shared(va.raw(), buf.len() as u64) {
            return self.own.read(va, buf);
        }
        self.with_mem(va, |m| m.read(va, buf))
    }
    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        if self.is_shared(va.raw(), data.len() as u64) {
            return self.own.write(va, data);
        }
        self.with_mem(va, |m| m.write(va, data))
    }
    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        self.with_mem(va, |m| m.probe(va, len, write))?;
        self.note_shared(va.raw(), len);
        Ok(())
    }
    fn page_size_at(&self, va: UserVa) -> u64 {
        let _ = va;
        PAGE_SIZE
    }
    fn hold(&self, va: UserVa, len: u64, write: bool) -> Vec<uiommu_platform::memory::Held> {
        self.with_mem(va, |m| Ok(m.hold(va, len, write)))
            .unwrap_or_default()
    }
}
