//! The front-end side of the protocol: async-signal-safe calls to the host engine.
//!
//! Nothing here allocates or takes a lock: a [`Client`] is a `static` with a fixed pool of
//! connections, each taken and given back with one atomic compare-and-swap, so a signal
//! handler that calls into us while the interrupted thread is in the middle of a call (or of
//! `malloc`) takes another connection, or makes a temporary one. Every system call used
//! (`socket`, `connect`, `sendmsg`, `recvmsg`, `close`, `fcntl`, `fstat`, `getsockopt`,
//! `getpid`) is async-signal-safe.
//!
//! After `fork` the child's copy of the pool names connections it shares with the parent:
//! each slot records the process that made its connection, and a slot of another process is
//! taken over whole (its inherited descriptor closed, a connection made anew) by the one call
//! that claims it, so parent and child never read each other's replies, and no call of the
//! child can use a slot another thread of the child is still cleaning. (Each message carries
//! the sender's kernel-stamped credentials, so a connection carries no identity of its own.)

use crate::ring::{self, Outcome, Table};
use crate::{
    Message, Request, K_DROP_FD, K_REPLY, K_TAKE_FD, MESSAGE_LEN, OP_DROPPED, OP_IOCTL, OP_RING,
    OP_TOOK_FD,
};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Connections kept per process.
const POOL: usize = 16;
/// Longest socket path (`sun_path`).
const PATH_MAX: usize = 108;

/// What went wrong talking to the engine.
pub type Errno = i32;

struct Slot {
    fd: AtomicI32,
    /// `pid << 1 | busy`: the process whose connection `fd` is (0: none yet), and whether a
    /// call of it uses the slot.
    state: AtomicU64,
}

impl Slot {
    /// Claim the slot for a call of process `me`: one free of `me`'s, or one of another
    /// process (inherited across `fork`, busy or not: no thread of that process runs here),
    /// whose descriptor is then this process's copy, closed.
    fn claim(&self, me: i32) -> bool {
        let mine = u64::from(me as u32) << 1;
        let s = self.state.load(Ordering::Acquire);
        if s == mine {
            return self
                .state
                .compare_exchange(mine, mine | 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        }
        if s >> 1 == u64::from(me as u32) {
            // Busy with another call of this process.
            return false;
        }
        if self
            .state
            .compare_exchange(s, mine | 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let fd = self.fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 && s >> 1 != 0 {
            close(fd);
        }
        true
    }

    /// Give the slot back after a call of process `me`.
    fn release(&self, me: i32) {
        self.state
            .store(u64::from(me as u32) << 1, Ordering::Release);
    }
}

/// The connection of a process to one host engine.
pub struct Client {
    path: [AtomicUsize; PATH_MAX / 8 + 1],
    path_len: AtomicUsize,
    /// The engine's pid (from `SO_PEERCRED` of a connection), 0 until known.
    engine_pid: AtomicI32,
    pool: [Slot; POOL],
    /// The table of rings ([`crate::ring::Table`]'s page), null until the first ring.
    rings: AtomicPtr<u8>,
    /// Whether hot calls go through rings (off when the engine refuses them).
    rings_on: AtomicBool,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// The raw `errno` of the last failed call.
fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

// Every system call here is made with `syscall(2)` rather than through libc's wrappers: in a
// program under the preload library those names are the library's own interposed functions,
// which call back into this client.

/// A system call's result: the value, or -1 with errno set (as `syscall(2)` returns).
fn ret(r: libc::c_long) -> i64 {
    r
}

/// Close `fd` (ours), ignoring the result.
pub(crate) fn close(fd: i32) {
    // SAFETY: closes an fd this module owns; no memory is passed.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// Room for one `SCM_RIGHTS` control message of one fd, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

/// Send `bytes` on `sock`, with `fd` attached if any.
pub fn send(sock: i32, bytes: &[u8], fd: Option<i32>) -> Result<(), Errno> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cbuf = CmsgBuf([0; 32]);
    // SAFETY: an all-zero msghdr is a valid empty message header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(4) } as usize;
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points to `space` (<= 32) writable, aligned bytes, so the first
        // header fits; its data has room for one int.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        }
    }
    loop {
        // SAFETY: msg describes live buffers for the duration of the call.
        let n = ret(unsafe {
            libc::syscall(
                libc::SYS_sendmsg,
                sock,
                &msg as *const libc::msghdr,
                libc::MSG_NOSIGNAL,
            )
        });
        if n >= 0 {
            return if n as usize == bytes.len() {
                Ok(())
            } else {
                Err(libc::EIO)
            };
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC` (async-signal-safe: the vDSO).
pub(crate) fn now_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// How long a receive polls before it sleeps: a reply that comes within it costs no wake-up.
static SPIN_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn spin_ns() -> u64 {
    SPIN_NS.load(Ordering::Relaxed)
}

/// Poll for up to `ns` nanoseconds for a reply before sleeping (0: sleep at once).
pub fn set_spin(ns: u64) {
    SPIN_NS.store(ns, Ordering::Relaxed);
}

/// Receive one message of at most `buf.len()` bytes on `sock` (with `MSG_CMSG_CLOEXEC`);
/// returns its length and the fd attached, if any.
pub fn receive(sock: i32, buf: &mut [u8]) -> Result<(usize, Option<i32>), Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; 32]);
    // SAFETY: an all-zero msghdr is a valid empty message header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len();
    let spin_until = now_ns().saturating_add(spin_ns());
    let n = loop {
        let spinning = now_ns() < spin_until;
        let flags = libc::MSG_CMSG_CLOEXEC | if spinning { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: msg describes live buffers for the duration of the call.
        let n = ret(unsafe {
            libc::syscall(
                libc::SYS_recvmsg,
                sock,
                &mut msg as *mut libc::msghdr,
                flags,
            )
        });
        if n >= 0 {
            break n as usize;
        }
        let e = errno();
        if e != libc::EINTR && !(spinning && e == libc::EAGAIN) {
            return Err(e);
        }
    };
    let mut fd = None;
    // SAFETY: walking the control messages the kernel wrote into cbuf, within
    // msg_controllen; the data of an SCM_RIGHTS message holds whole ints.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    let f = std::ptr::read_unaligned(data.add(i));
                    if fd.is_none() {
                        fd = Some(f);
                    } else {
                        close(f);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n == 0 && fd.is_none() {
        return Err(libc::EPIPE);
    }
    Ok((n, fd))
}

/// The pid and uid of the process that made the socket `fd`'s peer (`SO_PEERCRED`).
pub fn peer_of(fd: i32) -> Option<(i32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = ret(unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred,
            &mut len as *mut libc::socklen_t,
        )
    });
    (r == 0).then_some((cred.pid, cred.uid))
}

/// Whether `fd` is a socket (`fstat`), and its inode as (`st_dev`, `st_ino`).
pub fn socket_inode(fd: i32) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes one struct stat into the buffer; a bad fd is an error.
    if ret(unsafe { libc::syscall(libc::SYS_fstat, fd, st.as_mut_ptr()) }) != 0 {
        return None;
    }
    // SAFETY: fstat returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    (st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some((st.st_dev, st.st_ino))
}

impl Client {
    /// A client with no engine path yet ([`Client::set_path`]).
    pub const fn new() -> Client {
        Client {
            path: [const { AtomicUsize::new(0) }; PATH_MAX / 8 + 1],
            path_len: AtomicUsize::new(0),
            engine_pid: AtomicI32::new(0),
            pool: [const {
                Slot {
                    fd: AtomicI32::new(-1),
                    state: AtomicU64::new(0),
                }
            }; POOL],
            rings: AtomicPtr::new(std::ptr::null_mut()),
            rings_on: AtomicBool::new(true),
        }
    }

    /// Whether hot calls go through rings (on by default; `UIOMMU_RING=0` turns them off in
    /// the preload front-end).
    pub fn set_rings(&self, on: bool) {
        self.rings_on.store(on, Ordering::Release);
    }

    /// Use the engine whose socket is at `path` (at most 107 bytes). Call before any call.
    pub fn set_path(&self, path: &[u8]) -> bool {
        if path.is_empty() || path.len() >= PATH_MAX {
            return false;
        }
        for (i, chunk) in path.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.path[i].store(usize::from_ne_bytes(w), Ordering::Relaxed);
        }
        self.path_len.store(path.len(), Ordering::Release);
        true
    }

    /// Whether an engine path is set.
    pub fn configured(&self) -> bool {
        self.path_len.load(Ordering::Acquire) > 0
    }

    /// A new connection to the engine.
    fn connect(&self) -> Result<i32, Errno> {
        let len = self.path_len.load(Ordering::Acquire);
        if len == 0 {
            return Err(libc::ENOENT);
        }
        // SAFETY: an all-zero sockaddr_un is valid; the path is copied in below.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for i in 0..len {
            let w = self.path[i / 8].load(Ordering::Relaxed).to_ne_bytes();
            addr.sun_path[i] = w[i % 8] as libc::c_char;
        }
        // SAFETY: socket has no memory preconditions.
        let fd = ret(unsafe {
            libc::syscall(
                libc::SYS_socket,
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
            )
        }) as i32;
        if fd < 0 {
            return Err(errno());
        }
        let alen = (std::mem::offset_of!(libc::sockaddr_un, sun_path) + len + 1) as u32;
        loop {
            // SAFETY: addr is a valid sockaddr_un of `alen` bytes.
            let r = ret(unsafe {
                libc::syscall(
                    libc::SYS_connect,
                    fd,
                    &addr as *const libc::sockaddr_un,
                    alen,
                )
            });
            if r == 0 {
                break;
            }
            let e = errno();
            if e != libc::EINTR {
                close(fd);
                return Err(e);
            }
        }
        if self.engine_pid.load(Ordering::Acquire) == 0 {
            if let Some((pid, _)) = peer_of(fd) {
                self.engine_pid.store(pid, Ordering::Release);
            }
        }
        Ok(fd)
    }

    /// The engine's pid (connecting once to learn it); 0 when it cannot be reached.
    pub fn engine_pid(&self) -> i32 {
        let pid = self.engine_pid.load(Ordering::Acquire);
        if pid != 0 || !self.configured() {
            return pid;
        }
        if let Ok(fd) = self.connect() {
            close(fd);
        }
        self.engine_pid.load(Ordering::Acquire)
    }

    /// Whether the engine is reachable now.
    pub fn reachable(&self) -> bool {
        match self.connect() {
            Ok(fd) => {
                close(fd);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether `fd` is a file of this engine: a socket whose peer the engine made.
    pub fn is_ours(&self, fd: i32) -> bool {
        if fd < 0 || socket_inode(fd).is_none() {
            return false;
        }
        let Some((pid, _)) = peer_of(fd) else {
            return false;
        };
        pid != 0 && pid == self.engine_pid()
    }

    /// One call on `file` (if any): through the file's ring when it is a hot call, else sent
    /// as a message with `file` attached, the engine's requests during it served; returns its
    /// reply.
    pub fn call(&self, req: Request, file: Option<i32>) -> Result<Message, Errno> {
        if let Some(fd) = file {
            if req.op == OP_IOCTL && ring::ring_ioctl(req.args[0]) {
                if let Some(m) = self.ring_call(&req, fd) {
                    return Ok(m);
                }
            }
        }
        self.message_call(req, file)
    }

    /// This process's table of rings, made on first use.
    fn table(&self) -> Option<Table> {
        let p = self.rings.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: a page Table::new mapped in this address space (or before a fork, then
            // inherited zeroed), never unmapped.
            return Some(unsafe { Table::at(p) });
        }
        let t = Table::new()?;
        match self.rings.compare_exchange(
            std::ptr::null_mut(),
            t.base(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Some(t),
            Err(other) => {
                t.discard();
                // SAFETY: as above: the table another thread (or a signal handler) published.
                Some(unsafe { Table::at(other) })
            }
        }
    }

    /// Forget what fds `[low, high]` named: call after every operation that may have closed
    /// them or put another file at their numbers (`close`, `dup2`, `dup3`, `close_range`,
    /// `closefrom`), so that a call on one of them looks its file up again.
    pub fn forget_fds(&self, low: u32, high: u32) {
        let p = self.rings.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: a page Table::new mapped in this address space, never unmapped.
            unsafe { Table::at(p) }.forget(low, high);
        }
    }

    /// `req` through the ring of the file at `fd`, made on first use; `None` when it must go
    /// as a message (no ring, no slot, refused, the file's ring is no longer served).
    fn ring_call(&self, req: &Request, fd: i32) -> Option<Message> {
        if !self.rings_on.load(Ordering::Acquire) {
            return None;
        }
        let table = self.table()?;
        // The ring of the file this fd names now: remembered for the fd, else found by the
        // inode of its socket (a closed fd has none: the message says EBADF).
        let held = match table.by_fd(fd) {
            Some(h) => h,
            None => {
                let mark = table.fd_mark(fd);
                let (dev, ino) = socket_inode(fd)?;
                let held = match table.get(dev, ino) {
                    Some(h) => h,
                    None => {
                        let memfd = self.open_ring(fd)?;
                        let placed = table.insert(dev, ino, memfd);
                        close(memfd);
                        if !placed {
                            return None;
                        }
                        table.get(dev, ino)?
                    }
                };
                table.remember(fd, mark, &held);
                held
            }
        };
        let engine = self.engine_pid.load(Ordering::Acquire);
        let alive = || {
            // SAFETY: kill with signal 0 only checks that the process exists.
            engine > 0
                && (unsafe { libc::syscall(libc::SYS_kill, engine, 0) } == 0
                    || errno() == libc::EPERM)
        };
        match ring::call(&held.ring, req, spin_ns(), alive) {
            Outcome::Reply(m) => {
                table.put(held, false);
                Some(m)
            }
            Outcome::ByMessage { dead } => {
                table.put(held, dead);
                None
            }
        }
    }

    /// Ask the engine for a ring of the file at `fd`: its memfd.
    fn open_ring(&self, fd: i32) -> Option<i32> {
        let m = self
            .message_call(Request::new(OP_RING, [0; 6]), Some(fd))
            .ok()?;
        if m.err != 0 {
            if m.err == libc::EINVAL {
                // An engine without rings (an unknown operation): stop asking.
                self.rings_on.store(false, Ordering::Release);
            }
            // EOPNOTSUPP (not an iommufd), EAGAIN (the process has its engine's share of
            // rings), anything else: this call goes as a message.
            return None;
        }
        i32::try_from(m.val).ok()
    }

    /// One call as a message: send `req` with `file` attached, serve the engine's requests
    /// during it, and return its reply.
    fn message_call(&self, req: Request, file: Option<i32>) -> Result<Message, Errno> {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::syscall(libc::SYS_getpid) } as i32;
        let slot = self.pool.iter().find(|s| s.claim(me));
        let (sock, temporary) = match slot {
            Some(s) => match s.fd.load(Ordering::Acquire) {
                fd if fd >= 0 => (fd, false),
                _ => match self.connect() {
                    Ok(fd) => {
                        s.fd.store(fd, Ordering::Release);
                        (fd, false)
                    }
                    Err(e) => {
                        s.release(me);
                        return Err(e);
                    }
                },
            },
            None => (self.connect()?, true),
        };
        let r = exchange(sock, req, file);
        if temporary {
            close(sock);
        } else if let Some(s) = slot {
            if r.is_err() {
                // A broken connection is not reused.
                s.fd.store(-1, Ordering::Release);
                close(sock);
            }
            s.release(me);
        }
        r
    }
}

/// The exchange of one call on connection `sock`.
fn exchange(sock: i32, req: Request, file: Option<i32>) -> Result<Message, Errno> {
    send(sock, &req.to_bytes(), file)?;
    loop {
        let mut buf = [0u8; MESSAGE_LEN];
        let (n, fd) = receive(sock, &mut buf)?;
        let Some(m) = Message::from_bytes(&buf[..n]) else {
            if let Some(fd) = fd {
                close(fd);
            }
            return Err(libc::EIO);
        };
        match m.kind {
            K_REPLY => {
                if let Some(fd) = fd {
                    close(fd);
                }
                return Ok(m);
            }
            K_TAKE_FD => {
                let answer = match fd {
                    Some(fd) => {
                        if m.flags & 1 == 0 {
                            // Received close-on-exec; the file was asked for without it.
                            // SAFETY: F_SETFD with an integer on the fd just received.
                            unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFD, 0) };
                        }
                        i64::from(fd)
                    }
                    None => -i64::from(libc::EIO),
                };
                send(
                    sock,
                    &Request::new(OP_TOOK_FD, [answer as u64, 0, 0, 0, 0, 0]).to_bytes(),
                    None,
                )?;
            }
            K_DROP_FD => {
                if let Ok(n) = i32::try_from(m.val) {
                    close(n);
                }
                send(sock, &Request::new(OP_DROPPED, [0; 6]).to_bytes(), None)?;
            }
            _ => return Err(libc::EIO),
        }
    }
}
