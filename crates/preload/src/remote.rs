//! Files of ours inherited by a `fork` child: the child reaches its ancestor's engine.
//!
//! In Linux a `fork` child shares the parent's open file description, and with it the iommufd
//! security context: an IOMMU_IOAS_MAP the child makes through the inherited fd maps the
//! *child's* memory into the *parent's* IOAS. The engine lives in the parent's memory, so the
//! parent serves it: just before its first `fork` with an engine (the `pthread_atfork` prepare
//! handler) the process that owns an engine starts one thread listening on an abstract Unix
//! socket named after its pid and a random number. The name is in this library's memory, which
//! the child inherits, grandchildren too: a process remembers the servers of up to
//! [`MAX_UPSTREAMS`] ancestors, nearest first (a child with an engine of its own serves it in
//! turn), and asks each in turn until one serves the inode.
//!
//! **What is forwarded.** In the child, an `ioctl`, `read`, `write`, `pread`, `pwrite` or
//! `mmap` on an fd that is not in its own table but is one of our memfds (`/memfd:uiommu:...`
//! on the memfd device) is sent to the owner: the fd's inode (the same memfd inode names the
//! same file in the owner's table), the operation and its arguments. Each process keeps one
//! connection (its link) to each ancestor's server, used by one call at a time (a call made
//! while it is busy — another thread's, or a signal handler's — connects anew). The owner
//! serves each connection on a thread of its own; it checks once that the peer
//! (`SO_PEERCRED`) has its uid and is of its family (a descendant, or a process a descendant
//! forked: [`fork`] reports those, so they stay of the family once reparented), and runs the
//! file's operation
//! with the peer's memory (`process_vm_readv`/`writev`; an ancestor may under Yama
//! `ptrace_scope=1`) as the caller's memory and, for IOMMU_IOAS_MAP, as the address space the
//! pages come from ([`uiommu_core::with_caller_space`]). A `read`/`write` without an offset
//! happens at the child's file position of the fd (the shared open file description's), which
//! the child advances by the count served when the file has positions (VFIO regions; a fault
//! queue has none). `mmap` is refused with the owner's errno, as in the owner.
//!
//! **File descriptors in arguments.** While it serves a call the owner may ask the child for
//! one of the child's fds by number (an eventfd given to VFIO_DEVICE_SET_IRQS, the iommufd of
//! VFIO_DEVICE_BIND_IOMMUFD, a selftest access fd): the child sends it with `SCM_RIGHTS`
//! (EBADF when the number is not open), and the owner resolves it as for its own fds (an
//! iommufd the child inherited is the owner's context; one of the child's own engine is not an
//! iommufd here: EBADFD). A file the call creates for the caller (IOMMU_FAULT_QUEUE_ALLOC,
//! VFIO_GROUP_GET_DEVICE_FD) is made in the owner and sent to the child, which installs it at
//! its lowest free number (close-on-exec as asked) and answers that number.
//!
//! **Lifetime.** As in Linux, a file lives while any process holds it. Once the owner has
//! forked with an engine, the files it drops after a close are those no fd of its own *and*
//! no fd of a descendant (`/proc/<pid>/fd`, descendants found through
//! `/proc/<pid>/task/<tid>/children`) refers to. A child closing an inherited fd tells the
//! owner, which looks again before the child's `close` returns; the owner's `wait` family looks
//! again before it returns a reaped child ([`after_wait`]); while files are held by the family
//! only, a thread of the owner looks again every [`REAP_INTERVAL`] (a descendant may exit or
//! `exec` without telling). Files in flight in a socket are held by `crate::passing`.
//!
//! **After `exec`.** A process that forks with an engine stamps its server's name into its
//! memfds; an image a descendant `exec`s with a used file of that engine open makes that server
//! an upstream ([`adopt_upstream`]).
//!
//! **Address spaces.** One address space per descendant process (pid and start time) is
//! registered with the engine; once the descendant exited, pinning its pages is EFAULT, as
//! `pin_user_pages_remote` on a gone `mm` is, and once the owner noticed the exit its space
//! reads nothing, so a pid reused by a new process (which gets a space of its own) is never
//! read through the old one. Pages of a `MAP_SHARED` mapping the descendant shares with the
//! owner (the same file, offset and address in both, checked when the pages are probed for
//! pinning) are read and written through the owner's memory: they are the same pages, and
//! remain readable after the descendant exited, as pinned pages do.
//!
//! **`fstat` and readiness.** `fstat` of an inherited fd reports what the owner reports (the
//! `/dev` node it was opened from). For `poll`/`select`/`epoll_ctl` on an inherited fault
//! queue, the child asks once for the owner's readiness eventfd of that queue (sent by
//! `SCM_RIGHTS`, kept per inode) and watches it as the owner does (`crate::poll`).
//!
//! Not served: the owner's engine ends with the owner (Linux keeps it while a child holds the
//! fd).

use crate::hook::Hook;
use crate::node::NodeStat;
use crate::real;
use crate::state::{eventfd_signal, fd_open, global_if_any, is_eventfd, Global, Kind, OpenFile};
use crate::table::{inode_of, referenced_inodes, InodeKey};
use crate::{Dir, Pos};
use libc::{c_int, c_ulong, size_t};
use nix::sys::socket::{
    recv, recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use uiommu_platform::addr::{UserVa, PAGE_SIZE};
use uiommu_platform::memory::{MemFault, SpaceId, UserMemory};
use uiommu_platform::process_memory::ProcessMemory;
use uiommu_uapi::{Caller, EngineFile, Errno, FdTable};

/// Pid of this process's server (0: none started).
static SERVER_PID: AtomicI32 = AtomicI32::new(0);
/// The random part of its name.
static SERVER_NONCE: AtomicU64 = AtomicU64::new(0);
/// Its listening fd, closed in a `fork` child (-1: none).
static SERVER_FD: AtomicI32 = AtomicI32::new(-1);
/// Its state (null: none, and again in a `fork` child, which leaks its copy).
static SERVER: AtomicPtr<Server> = AtomicPtr::new(std::ptr::null_mut());
/// The ancestors serving files this process inherited, nearest first: the parent's server
/// when it forked with an engine, then the servers the parent itself inherited (a grandchild
/// of a process that has its own engine reaches both).
static UPSTREAMS: [Upstream; MAX_UPSTREAMS] = [const { Upstream::new() }; MAX_UPSTREAMS];
/// How many ancestors' servers a process remembers.
const MAX_UPSTREAMS: usize = 4;

/// One ancestor's server, and this process's link to it.
struct Upstream {
    /// Its pid (0: none).
    pid: AtomicI32,
    /// The random part of its name.
    nonce: AtomicU64,
    /// The link (null: none yet, and again in a `fork` child).
    link: AtomicPtr<Mutex<Option<Link>>>,
    /// The link's socket fd, closed in a `fork` child (-1: none).
    link_fd: AtomicI32,
}

impl Upstream {
    const fn new() -> Upstream {
        Upstream {
            pid: AtomicI32::new(0),
            nonce: AtomicU64::new(0),
            link: AtomicPtr::new(std::ptr::null_mut()),
            link_fd: AtomicI32::new(-1),
        }
    }

    /// Forget the link (in a `fork` child: the parent's link is the parent's).
    fn drop_link_after_fork(&self) {
        self.link.store(std::ptr::null_mut(), Ordering::Release);
        let fd = self.link_fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: closes the child's copy of the parent's link socket (async-signal safe).
            unsafe { real::close(fd) };
        }
    }
}
/// Whether the upstream may have fault queues this process holds (see
/// [`may_have_fault_queues`]).
static UPSTREAM_FAULTS: AtomicBool = AtomicBool::new(false);
/// `st_dev` of memfds (every memfd lives on the one internal tmpfs mount); 0 when unknown.
static MEMFD_DEV: AtomicU64 = AtomicU64::new(0);

/// How often the owner looks again at files held by descendants only.
pub const REAP_INTERVAL: Duration = Duration::from_millis(200);

/// Magic of a request.
const MAGIC: u32 = 0x7569_6f32;
/// A request: magic, op, dev, ino, then four arguments (u64 each).
const REQ_LEN: usize = 56;
/// Operations.
const OP_IOCTL: u32 = 1;
const OP_READ: u32 = 2;
const OP_WRITE: u32 = 3;
const OP_MMAP: u32 = 4;
const OP_CLOSED: u32 = 5;
/// A descendant forked: the first argument is the new pid.
const OP_FORKED: u32 = 6;
/// What `fstat` says of the file (the `/dev` node it was opened from).
const OP_NODE: u32 = 7;
/// The fault queue's readiness eventfd, attached to the reply.
const OP_READY: u32 = 8;
/// The descendant received the file by `SCM_RIGHTS`: one hold of it is released
/// (`crate::passing`).
const OP_RECEIVED: u32 = 9;
/// The descendant sends the file over a socket: the owner takes a hold of it (the
/// descendant's fd, first argument, fetched by `SCM_RIGHTS`) until it is received.
const OP_HOLD: u32 = 10;

/// A message during a call: kind (u32), 0 (u32), then three i64.
const MSG_LEN: usize = 32;
/// Owner → child, the end of the call: result, errno (0 on success), a second result (for
/// `read`/`write`: whether a file position moves by the result); an fd may be attached.
const K_REPLY: u32 = 1;
/// Owner → child: send your fd number `x`.
const K_NEED_FD: u32 = 2;
/// Child → owner: the fd asked for is attached (`x` 0), or `x` is the errno.
const K_GIVE_FD: u32 = 3;
/// Owner → child: install the attached fd (`x` 1: close-on-exec).
const K_TAKE_FD: u32 = 4;
/// Child → owner: the number it got (`x`), or minus the errno.
const K_TOOK_FD: u32 = 5;
/// Owner → child: close your fd `x`, just installed by K_TAKE_FD of this call (the reply
/// naming it could not be written); the child answers K_TOOK_FD.
const K_DROP_FD: u32 = 6;
/// Errno of a reply meaning "that inode is not one of mine".
const NOT_MINE: i64 = -1;

/// One message.
#[derive(Clone, Copy, Debug, Default)]
struct Msg {
    kind: u32,
    x: i64,
    y: i64,
    z: i64,
}

impl Msg {
    fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        b[0..4].copy_from_slice(&self.kind.to_ne_bytes());
        b[8..16].copy_from_slice(&self.x.to_ne_bytes());
        b[16..24].copy_from_slice(&self.y.to_ne_bytes());
        b[24..32].copy_from_slice(&self.z.to_ne_bytes());
        b
    }

    fn decode(b: &[u8; MSG_LEN]) -> Msg {
        let w = |i: usize| i64::from_ne_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        Msg {
            kind: u32::from_ne_bytes(b[0..4].try_into().unwrap_or([0; 4])),
            x: w(8),
            y: w(16),
            z: w(24),
        }
    }
}

/// Send `bytes` on the stream socket `sock`, with `fd` attached when given.
fn send(sock: RawFd, bytes: &[u8], fd: Option<RawFd>) -> Result<(), Errno> {
    let fds = [fd.unwrap_or(-1)];
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fd.is_some() { &rights } else { &[] };
    let mut sent = 0;
    while sent < bytes.len() {
        let iov = [IoSlice::new(&bytes[sent..])];
        let c = if sent == 0 { cmsgs } else { &[] };
        match sendmsg::<UnixAddr>(sock, &iov, c, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => sent += n,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e as Errno),
        }
    }
    Ok(())
}

/// Receive exactly `buf.len()` bytes from `sock`, and the fd attached to them if any
/// (received close-on-exec).
fn receive(sock: RawFd, buf: &mut [u8]) -> Result<Option<OwnedFd>, Errno> {
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut fd = None;
    let first = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<UnixAddr>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => {
                for c in m.cmsgs().map_err(|e| e as Errno)? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for f in fds {
                            // SAFETY: the kernel just installed `f` in this process for this
                            // message; nothing else owns it.
                            let owned = unsafe { OwnedFd::from_raw_fd(f) };
                            if fd.is_none() {
                                fd = Some(owned);
                            }
                        }
                    }
                }
                break m.bytes;
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e as Errno),
        }
    };
    if first == 0 {
        return Err(libc::EIO);
    }
    let mut have = first;
    while have < buf.len() {
        match recv(sock, &mut buf[have..], MsgFlags::empty()) {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => have += n,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e as Errno),
        }
    }
    Ok(fd)
}

fn send_msg(sock: RawFd, m: Msg, fd: Option<RawFd>) -> Result<(), Errno> {
    send(sock, &m.encode(), fd)
}

fn receive_msg(sock: RawFd) -> Result<(Msg, Option<OwnedFd>), Errno> {
    let mut b = [0u8; MSG_LEN];
    let fd = receive(sock, &mut b)?;
    Ok((Msg::decode(&b), fd))
}

fn name(pid: i32, nonce: u64) -> String {
    format!("uiommu-{pid}-{nonce:016x}")
}

/// This process's server state.
struct Server {
    /// The descendants whose memory was used, by pid.
    known: Mutex<BTreeMap<i32, Known>>,
    /// Whether the reaper thread runs.
    reaping: AtomicBool,
    /// Processes descendants forked (pid → start time): of the family even when reparented.
    family: Mutex<BTreeMap<i32, u64>>,
    /// An eventfd that wakes the reaper for a look now (-1: none).
    wake: AtomicI32,
    /// Looks asked for, and the last one a reaper's look began after.
    asked: AtomicU64,
    looked: AtomicU64,
}

/// One descendant's address space.
struct Known {
    /// Its start time (`/proc/<pid>/stat` field 22): a reused pid is another process.
    start: u64,
    mem: Arc<Descendant>,
    space: SpaceId,
}

fn server() -> Option<&'static Server> {
    let p = SERVER.load(Ordering::Acquire);
    // SAFETY: a non-null SERVER points to a leaked Box<Server> that is never freed (the fork
    // child handler nulls the pointer and leaks it).
    unsafe { p.as_ref() }
}

/// The `st_dev` of memfds.
fn memfd_dev() -> Option<u64> {
    let fd = crate::state::new_memfd(c"uiommu:probe", true).ok()?;
    let key = inode_of(fd).ok();
    // SAFETY: closes the memfd just made.
    unsafe { real::close(fd) };
    key.map(|k| k.dev)
}

/// The atfork prepare handler: a process with an engine serves it before it forks.
pub(crate) extern "C" fn before_fork() {
    if crate::host::on() {
        // Under the host engine the kernel shares our files with the child.
        return;
    }
    let _h = Hook::enter();
    let Some(g) = global_if_any() else { return };
    // Read by the child only: whether it may inherit fault queues.
    UPSTREAM_FAULTS.store(!g.ready.is_empty(), Ordering::Release);
    let pid = std::process::id() as i32;
    if SERVER_PID.load(Ordering::Acquire) != pid {
        start_server(pid);
    }
    if SERVER_PID.load(Ordering::Acquire) == pid {
        stamp_files(pid, SERVER_NONCE.load(Ordering::Acquire));
    }
}

/// Where in one of our memfds the name of the server of its engine is written.
const STAMP_AT: i64 = 128;
/// The stamp's length at most.
const STAMP_LEN: usize = 64;

/// Write the server's name into every memfd of ours this process has open, so that a
/// descendant that `exec`s with one finds the engine again ([`adopt_upstream`]).
fn stamp_files(pid: i32, nonce: u64) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<c_int>().ok()) else {
            continue;
        };
        if is_our_memfd(fd) {
            stamp(fd, pid, nonce);
        }
    }
}

/// Write the name of server `pid`/`nonce` into our memfd `fd`.
fn stamp(fd: c_int, pid: i32, nonce: u64) {
    let stamp = format!("S {}\n", name(pid, nonce));
    // SAFETY: writes the stamp from a live buffer into a memfd of this library.
    unsafe { real::pwrite(fd, stamp.as_ptr().cast(), stamp.len(), STAMP_AT) };
}

/// Before one of this process's files is sent over a socket: serve the engine (start the
/// server if it does not run) and stamp the file with the server's name, so that a receiver
/// outside the family finds it ([`adopt_upstream`]).
pub(crate) fn serve_sent(fd: c_int) {
    let pid = std::process::id() as i32;
    if SERVER_PID.load(Ordering::Acquire) != pid {
        start_server(pid);
    }
    if SERVER_PID.load(Ordering::Acquire) != pid {
        return;
    }
    stamp(fd, pid, SERVER_NONCE.load(Ordering::Acquire));
}

/// For a memfd of ours this process got from another process's engine — inherited by this
/// image at load (a used file cannot be taken over: its state lives in that engine), or
/// received over a socket (`crate::passing`): the server stamped in it becomes an upstream of
/// this process, as after a `fork`. So a child that forks and `exec`s keeps reaching its
/// parent's files (the parent checks it is of its family), and a process sent a file reaches
/// the sender's engine (the sender checks it holds the file).
pub(crate) fn adopt_upstream(fd: c_int) {
    // Only our memfds are read (a received device or pipe is never touched).
    if !is_our_memfd(fd) {
        return;
    }
    let mut buf = [0u8; STAMP_LEN];
    // SAFETY: reads into a live local buffer from an inherited memfd.
    let n = unsafe { real::pread(fd, buf.as_mut_ptr().cast(), buf.len(), STAMP_AT) };
    let Ok(n) = usize::try_from(n) else { return };
    let Some((pid, nonce)) = parse_stamp(&buf[..n]) else {
        return;
    };
    if pid == std::process::id() as i32 {
        // This process's own engine, which ended with the `exec`.
        return;
    }
    if let Ok(key) = inode_of(fd) {
        MEMFD_DEV.store(key.dev, Ordering::Release);
    }
    let known = UPSTREAMS
        .iter()
        .any(|u| u.pid.load(Ordering::Acquire) == pid && u.nonce.load(Ordering::Acquire) == nonce);
    if known {
        return;
    }
    if let Some(free) = UPSTREAMS
        .iter()
        .find(|u| u.pid.load(Ordering::Acquire) == 0)
    {
        free.nonce.store(nonce, Ordering::Release);
        free.pid.store(pid, Ordering::Release);
        allow_access_by(pid);
    }
}

/// Under Yama `ptrace_scope` 1 only an ancestor may read a process's memory: let the server
/// `pid` (which may not be one, for a file received over a socket) read this process's.
fn allow_access_by(pid: i32) {
    let restricted = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .is_ok_and(|s| s.trim() == "1");
    if restricted && !descends_from(std::process::id() as i32, pid) {
        // SAFETY: PR_SET_PTRACER takes a pid; no memory is passed.
        unsafe { libc::prctl(libc::PR_SET_PTRACER, pid as libc::c_ulong, 0, 0, 0) };
    }
}

/// The pid and nonce of a stamp (`S uiommu-<pid>-<nonce>\n`).
fn parse_stamp(b: &[u8]) -> Option<(i32, u64)> {
    let line = b.strip_prefix(b"S uiommu-")?;
    let end = line.iter().position(|&c| c == b'\n')?;
    let text = std::str::from_utf8(&line[..end]).ok()?;
    let (pid, nonce) = text.split_once('-')?;
    let pid = pid.parse::<i32>().ok().filter(|&p| p > 0)?;
    Some((pid, u64::from_str_radix(nonce, 16).ok()?))
}

/// Start this process's server (see the module documentation).
fn start_server(pid: i32) {
    let Some(dev) = memfd_dev() else { return };
    let nonce = random();
    let Ok(addr) = SocketAddr::from_abstract_name(name(pid, nonce).as_bytes()) else {
        return;
    };
    let Ok(listener) = UnixListener::bind_addr(&addr) else {
        return;
    };
    MEMFD_DEV.store(dev, Ordering::Release);
    let srv = Server::default();
    // SAFETY: eventfd has no memory preconditions; the fd is the server's for its lifetime.
    let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    srv.wake.store(wake, Ordering::Release);
    SERVER.store(Box::into_raw(Box::new(srv)), Ordering::Release);
    SERVER_FD.store(listener.as_raw_fd(), Ordering::Release);
    SERVER_NONCE.store(nonce, Ordering::Release);
    SERVER_PID.store(pid, Ordering::Release);
    let spawned = std::thread::Builder::new()
        .name("uiommu-serve".into())
        .spawn(move || serve(listener));
    if spawned.is_err() {
        SERVER_PID.store(0, Ordering::Release);
    }
}

/// The atfork child handler's part: the parent's server becomes this child's upstream.
pub(crate) fn after_fork_child() {
    for u in &UPSTREAMS {
        u.drop_link_after_fork();
    }
    let pid = SERVER_PID.swap(0, Ordering::AcqRel);
    if pid != 0 {
        // The parent's server comes first; the parent's own upstreams follow.
        for i in (1..MAX_UPSTREAMS).rev() {
            let (to, from) = (&UPSTREAMS[i], &UPSTREAMS[i - 1]);
            to.nonce
                .store(from.nonce.load(Ordering::Acquire), Ordering::Release);
            to.pid
                .store(from.pid.load(Ordering::Acquire), Ordering::Release);
        }
        UPSTREAMS[0]
            .nonce
            .store(SERVER_NONCE.load(Ordering::Acquire), Ordering::Release);
        UPSTREAMS[0].pid.store(pid, Ordering::Release);
    }
    // The parent's server state and readiness cache are leaked: their locks may be held by
    // threads not copied.
    SERVER.store(std::ptr::null_mut(), Ordering::Release);
    READY.store(std::ptr::null_mut(), Ordering::Release);
    crate::passing::forget_after_fork();
    let fd = SERVER_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        // SAFETY: closes the child's copy of the parent's listening socket (async-signal safe).
        unsafe { real::close(fd) };
    }
}

fn random() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into a live u64.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, libc::GRND_NONBLOCK) };
    if n != 8 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        v = t ^ (std::process::id() as u64).rotate_left(32);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The descendant's side.

/// Whether this process may have inherited files of an ancestor's engine.
pub(crate) fn has_upstream() -> bool {
    UPSTREAMS[0].pid.load(Ordering::Acquire) != 0
}

/// Whether the `/proc/<pid>/fd/<n>` link `path` names one of this library's memfds.
fn names_our_memfd(path: &std::path::Path) -> bool {
    std::fs::read_link(path).is_ok_and(|t| {
        t.as_os_str()
            .as_encoded_bytes()
            .starts_with(b"/memfd:uiommu:")
    })
}

/// Whether `fd` is one of this library's memfds.
fn is_our_memfd(fd: c_int) -> bool {
    names_our_memfd(std::path::Path::new(&format!("/proc/self/fd/{fd}")))
}

/// The inodes of our memfds process `pid` has open (empty when it cannot be looked at).
fn memfds_of(pid: i32) -> Vec<InodeKey> {
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
fn call(key: InodeKey, op: u32, args: [u64; 4]) -> Option<Result<Reply, Errno>> {
    UPSTREAMS
        .iter()
        .take_while(|u| u.pid.load(Ordering::Acquire) != 0)
        .find_map(|u| call_at(u, key, op, args))
}

/// Operation `op` on the file of inode `key` served by `up` (see [`call`]).
fn call_at(up: &Upstream, key: InodeKey, op: u32, args: [u64; 4]) -> Option<Result<Reply, Errno>> {
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
struct Link {
    sock: RawFd,
    /// Its inode: the number is used only while it still names this socket (a program may
    /// close descriptors it did not open, and the number may since name another file).
    key: InodeKey,
}

impl Link {
    fn connect(up: &Upstream) -> Option<Link> {
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

    fn intact(&self) -> bool {
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
    fn link(&self) -> &'static Mutex<Option<Link>> {
        leaked(&self.link)
    }
}

/// The value `slot` points to, made (and leaked) on first use. A `fork` child nulls such
/// slots without freeing what they point to (its locks may be held by threads that were not
/// copied), so the pointer, once set, stays valid for the process's life.
fn leaked<T: Default>(slot: &AtomicPtr<T>) -> &'static T {
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
fn exchange(sock: RawFd) -> Result<Option<Result<Reply, Errno>>, Broken> {
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
struct Broken;

/// The end of a call, as the descendant receives it.
struct Reply {
    v: i64,
    extra: i64,
    fd: Option<OwnedFd>,
}

fn msg(kind: u32, x: i64) -> Msg {
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
    // SAFETY: fork has no arguments; the atfork handlers run inside it.
    let pid = unsafe { real::fork() };
    if pid > 0 && has_upstream() && !crate::hook::in_hook() {
        quietly(|| tell_forked(pid));
    }
    pid
}

/// Tell every ancestor serving this process about its new child `pid` (see [`fork`]).
fn tell_forked(pid: libc::pid_t) {
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
fn quietly(f: impl FnOnce()) {
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
static READY: AtomicPtr<Mutex<BTreeMap<InodeKey, OwnedFd>>> = AtomicPtr::new(std::ptr::null_mut());

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

// ---------------------------------------------------------------------------------------------
// The owner's side.

/// The parent pid of `pid` (from `/proc/<pid>/stat`).
fn ppid_of(pid: i32) -> Option<i32> {
    stat_field(pid, 4)?.parse().ok()
}

/// Field `n` (from 1) of `/proc/<pid>/stat`.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3).map(str::to_string)
}

/// The start time of `pid` (`/proc/<pid>/stat` field 22; 0 when unknown).
fn start_time(pid: i32) -> u64 {
    stat_field(pid, 22)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Whether `pid` is of this process's family: a descendant, or a process a descendant forked
/// (see [`fork`]) that is still alive.
fn in_family(srv: &Server, pid: i32) -> bool {
    is_descendant(pid) || srv.family_member(pid)
}

/// Whether `pid` is a descendant of this process.
fn is_descendant(pid: i32) -> bool {
    descends_from(pid, std::process::id() as i32)
}

/// Whether process `pid` descends from `ancestor` (walking `/proc/<pid>/stat` parents).
fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        match ppid_of(p) {
            Some(pp) if pp == ancestor => return true,
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

/// The children of `pid` (of all its threads), or `None` when the kernel does not list them.
fn children_of(pid: i32) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(t) = t else { continue };
        let text = std::fs::read_to_string(t.path().join("children")).ok()?;
        out.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// Every descendant of this process, and of the members of its family.
fn descendants(srv: &Server) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    let mut found = BTreeSet::new();
    let mut todo = vec![me];
    for pid in srv.family_alive() {
        if found.insert(pid) {
            todo.push(pid);
        }
    }
    while let Some(p) = todo.pop() {
        let Some(kids) = children_of(p) else {
            let mut all = descendants_by_scan(me);
            for pid in srv.family_alive() {
                all.insert(pid);
                all.extend(descendants_by_scan(pid));
            }
            return all;
        };
        for k in kids {
            if found.insert(k) {
                todo.push(k);
            }
        }
    }
    found
}

/// [`descendants`] from every process's parent (kernels without `children` files).
fn descendants_by_scan(me: i32) -> BTreeSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    let mut kids: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for e in dir.flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            if let Some(pp) = ppid_of(pid) {
                kids.entry(pp).or_default().push(pid);
            }
        }
    }
    let mut found = BTreeSet::new();
    let mut todo = vec![me];
    while let Some(p) = todo.pop() {
        for &k in kids.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if found.insert(k) {
                todo.push(k);
            }
        }
    }
    found
}

/// Whether process `pid` has an fd of our memfd of inode `key` open.
fn holds_inode(pid: i32, key: InodeKey) -> bool {
    memfds_of(pid).contains(&key)
}

/// What the descendants hold.
struct Holdings {
    /// The live descendants.
    pids: BTreeSet<i32>,
    /// The inodes of our memfds they have open.
    inodes: BTreeSet<InodeKey>,
}

fn holdings(srv: &Server) -> Holdings {
    let pids = descendants(srv);
    let inodes = pids.iter().flat_map(|&pid| memfds_of(pid)).collect();
    Holdings { pids, inodes }
}

/// After a close: drop the files no fd of this process, nor (once it forked with an engine)
/// of a descendant, refers to. The removed files are returned, for the caller to drop outside
/// the table's lock.
pub(crate) fn sweep(g: &'static Global) -> Vec<Arc<OpenFile>> {
    sweep_and_see(g).0
}

/// [`sweep`], and whether files are left that only descendants hold.
fn sweep_and_see(g: &'static Global) -> (Vec<Arc<OpenFile>>, bool) {
    let Some(srv) = server() else {
        return (g.files.sweep(), false);
    };
    let keys = g.files.keys();
    let mut held = false;
    let mut family = None;
    // Both looks under the table's lock (sweeps in several threads follow one another), this
    // process's fds first: a file whose fd this process closed after a fork is then seen in
    // the child, which existed before the close.
    let removed = g.files.sweep_with(|dev| {
        let mut live = referenced_inodes(dev)?;
        let theirs = holdings(srv);
        held = keys
            .iter()
            .any(|k| !live.contains(k) && theirs.inodes.contains(k));
        live.extend(theirs.inodes.iter().copied());
        family = Some(theirs.pids);
        Some(live)
    });
    if let Some(pids) = family {
        srv.forget_gone(&pids);
    }
    if held {
        srv.reap(g);
    }
    (removed, held)
}

impl Default for Server {
    fn default() -> Server {
        Server {
            known: Mutex::default(),
            reaping: AtomicBool::new(false),
            family: Mutex::default(),
            wake: AtomicI32::new(-1),
            asked: AtomicU64::new(0),
            looked: AtomicU64::new(0),
        }
    }
}

impl Server {
    fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address space of descendant `pid`, registered on first use.
    fn space_of(&self, g: &Global, pid: i32) -> (Arc<Descendant>, SpaceId) {
        let start = start_time(pid);
        let mut known = self.known();
        if let Some(k) = known.get(&pid) {
            if k.start == start {
                return (k.mem.clone(), k.space);
            }
            k.mem.retire();
        }
        let mem = Arc::new(Descendant::new(pid, g.mem.clone()));
        let space = g.engine.add_space(mem.clone() as Arc<dyn UserMemory>);
        known.insert(
            pid,
            Known {
                start,
                mem: mem.clone(),
                space,
            },
        );
        (mem, space)
    }

    /// Make `pid` a member of the family (a process this one sent a file to).
    fn join(&self, pid: i32) {
        let mut family = self.family.lock().unwrap_or_else(|e| e.into_inner());
        family.insert(pid, start_time(pid));
    }

    /// Whether `pid` is a live member of the family (same process as recorded).
    fn family_member(&self, pid: i32) -> bool {
        let family = self.family.lock().unwrap_or_else(|e| e.into_inner());
        family.get(&pid).is_some_and(|&s| s == start_time(pid))
    }

    /// The live members of the family; the others are forgotten.
    fn family_alive(&self) -> Vec<i32> {
        let mut family = self.family.lock().unwrap_or_else(|e| e.into_inner());
        family.retain(|&pid, &mut s| s == start_time(pid));
        family.keys().copied().collect()
    }

    /// Release the memory accessors of descendants that exited.
    fn forget_gone(&self, live: &BTreeSet<i32>) {
        self.known().retain(|pid, k| {
            let keep = live.contains(pid);
            if !keep {
                k.mem.retire();
            }
            keep
        });
    }

    /// Look again, every [`REAP_INTERVAL`], at files that only descendants hold.
    fn reap(&'static self, g: &'static Global) {
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("uiommu-reap".into())
            .spawn(move || {
                let _h = Hook::enter();
                loop {
                    self.wait_for_wake();
                    let asked = self.asked.load(Ordering::Acquire);
                    let (removed, held) = sweep_and_see(g);
                    self.looked.store(asked, Ordering::Release);
                    drop(removed);
                    g.ready.refresh();
                    if !held {
                        break;
                    }
                }
                self.reaping.store(false, Ordering::Release);
                // A file held by descendants only since the last look (the flag was still
                // set, so nobody started a reaper for it) is seen here, and reaped anew.
                drop(sweep(g));
            });
        if spawned.is_err() {
            self.reaping.store(false, Ordering::Release);
        }
    }

    /// Sleep until [`REAP_INTERVAL`] passed or a look is asked for.
    fn wait_for_wake(&self) {
        let wake = self.wake.load(Ordering::Acquire);
        if wake < 0 {
            std::thread::sleep(REAP_INTERVAL);
            return;
        }
        let mut p = libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live pollfd on the server's eventfd.
        unsafe { real::poll(&mut p, 1, REAP_INTERVAL.as_millis() as c_int) };
        let mut v = 0u64;
        // SAFETY: drains the non-blocking eventfd into a live u64 (EAGAIN when not signalled).
        unsafe { real::read(wake, (&mut v as *mut u64).cast(), 8) };
    }

    /// Ask the reaper for a look now and wait (at most [`REAP_INTERVAL`]) until a look that
    /// began after the asking ended. Only atomics, `write` and `nanosleep`: async-signal safe,
    /// since a program may `wait` in a SIGCHLD handler (where the look could be held up by the
    /// interrupted thread's locks: hence the bound).
    fn look_now(&self) {
        let wake = self.wake.load(Ordering::Acquire);
        if wake < 0 {
            return;
        }
        let want = self.asked.fetch_add(1, Ordering::AcqRel) + 1;
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to the server's eventfd.
        unsafe { real::write(wake, (&one as *const u64).cast(), 8) };
        let step = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        for _ in 0..REAP_INTERVAL.as_millis() {
            if self.looked.load(Ordering::Acquire) >= want || !self.reaping.load(Ordering::Acquire)
            {
                return;
            }
            // SAFETY: nanosleep reads one live timespec; the remainder pointer may be null.
            unsafe { libc::nanosleep(&step, std::ptr::null_mut()) };
        }
    }
}

/// After a `wait` reaped a child: files that only the family held may have lost their last
/// holder. As in Linux, where an exiting process's files are closed before its parent can
/// reap it, the reaper looks before the wait returns (see [`Server::look_now`]).
fn after_wait(reaped: bool) {
    if !reaped || crate::hook::in_hook() {
        return;
    }
    let Some(srv) = server() else { return };
    // The reaper runs exactly while files are held by the family only.
    if !srv.reaping.load(Ordering::Acquire) {
        return;
    }
    let e = real::errno();
    srv.look_now();
    real::set_errno(e);
}

/// `wait(2)` (see [`after_wait`]).
///
/// # Safety
/// As `wait(2)`.
#[no_mangle]
pub unsafe extern "C" fn wait(status: *mut c_int) -> libc::pid_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let r = unsafe { real::wait(status) };
    quietly(|| after_wait(r > 0));
    r
}

/// `waitpid(2)` (see [`after_wait`]).
///
/// # Safety
/// As `waitpid(2)`.
#[no_mangle]
pub unsafe extern "C" fn waitpid(
    pid: libc::pid_t,
    status: *mut c_int,
    options: c_int,
) -> libc::pid_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let r = unsafe { real::waitpid(pid, status, options) };
    quietly(|| after_wait(r > 0 && options & libc::WNOWAIT == 0));
    r
}

/// `wait3(2)` (see [`after_wait`]).
///
/// # Safety
/// As `wait3(2)`.
#[no_mangle]
pub unsafe extern "C" fn wait3(
    status: *mut c_int,
    options: c_int,
    usage: *mut libc::c_void,
) -> libc::pid_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let r = unsafe { real::wait3(status, options, usage) };
    quietly(|| after_wait(r > 0));
    r
}

/// `wait4(2)` (see [`after_wait`]).
///
/// # Safety
/// As `wait4(2)`.
#[no_mangle]
pub unsafe extern "C" fn wait4(
    pid: libc::pid_t,
    status: *mut c_int,
    options: c_int,
    usage: *mut libc::c_void,
) -> libc::pid_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let r = unsafe { real::wait4(pid, status, options, usage) };
    quietly(|| after_wait(r > 0));
    r
}

/// `waitid(2)` (see [`after_wait`]).
///
/// # Safety
/// As `waitid(2)`.
#[no_mangle]
pub unsafe extern "C" fn waitid(
    idtype: libc::c_uint,
    id: libc::c_uint,
    info: *mut libc::c_void,
    options: c_int,
) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    let r = unsafe { real::waitid(idtype, id, info, options) };
    quietly(|| after_wait(r == 0 && options & libc::WNOWAIT == 0));
    r
}

/// The pid and uid of a connected peer.
fn peer(s: &UnixStream) -> Option<(i32, u32)> {
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
fn serve(listener: UnixListener) {
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
fn serve_link(s: &UnixStream) {
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
struct Peer {
    srv: &'static Server,
    sock: RawFd,
    pid: i32,
    /// Its address space, once known.
    space: Option<(Arc<Descendant>, SpaceId)>,
    /// Whether it is of the family. Another process of this uid is served once it shows it
    /// holds the file it names (it was sent one: `crate::passing`), and joins the family.
    member: bool,
}

/// Serve the request `req` of `peer`; false when the link is to be closed.
fn serve_request(peer: &mut Peer, req: &[u8; REQ_LEN]) -> bool {
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
fn serve_op(
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
struct Answer {
    v: i64,
    extra: i64,
    /// An fd for the descendant (closed here once sent).
    fd: Option<OwnedFd>,
}

impl Answer {
    fn of(v: i64) -> Answer {
        Answer {
            v,
            extra: 0,
            fd: None,
        }
    }
}

/// A descendant's file table, as handlers see it: an fd number is asked for during the call.
struct ChildFds {
    sock: RawFd,
    g: &'static Global,
    srv: &'static Server,
}

impl ChildFds {
    /// The descendant's fd `n`, received here.
    fn fetch(&self, n: i32) -> Result<OwnedFd, Errno> {
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
    fn file_of(&self, n: i32) -> Result<Option<Arc<OpenFile>>, Errno> {
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
struct Descendant {
    pid: i32,
    /// Its memory; `None` once it exited.
    mem: RwLock<Option<ProcessMemory>>,
    own: Arc<ProcessMemory>,
    /// Page-aligned `[start, end)` ranges found shared with this process at probe time.
    shared: Mutex<Vec<(u64, u64)>>,
}

/// One line of `/proc/<pid>/maps`: start, end, shared, offset, inode (with the device).
type MapLine = (u64, u64, bool, u64, String, u64);

fn maps(pid: &str) -> Vec<MapLine> {
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
    fn new(pid: i32, own: Arc<ProcessMemory>) -> Descendant {
        Descendant {
            pid,
            mem: RwLock::new(Some(ProcessMemory::of(pid))),
            own,
            shared: Mutex::new(Vec::new()),
        }
    }

    /// The descendant exited: its memory is gone (the shared ranges remain this process's).
    fn retire(&self) {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn with_mem<R>(
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
    fn note_shared(&self, va: u64, len: u64) {
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
    fn is_shared(&self, va: u64, len: u64) -> bool {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_name_a_server_and_cut_or_foreign_ones_are_refused() {
        let s = format!("S {}\n", name(4242, 0xdead_beef));
        assert_eq!(parse_stamp(s.as_bytes()), Some((4242, 0xdead_beef)));
        assert_eq!(parse_stamp(&s.as_bytes()[..s.len() - 1]), None, "cut");
        assert_eq!(parse_stamp(b"F /dev/iommu\n"), None);
        assert_eq!(parse_stamp(b"S uiommu-0-1\n"), None, "pid 0");
        assert_eq!(parse_stamp(b"S uiommu-x-1\n"), None);
        assert_eq!(parse_stamp(b""), None);
    }

    #[test]
    fn messages_round_trip() {
        let m = Msg {
            kind: K_TAKE_FD,
            x: -5,
            y: i64::MAX,
            z: 7,
        };
        let d = Msg::decode(&m.encode());
        assert_eq!((d.kind, d.x, d.y, d.z), (K_TAKE_FD, -5, i64::MAX, 7));
    }
}
