//! Files of ours inherited by a `fork` child: the child reaches its ancestor's engine.
//!
//! In Linux a `fork` child shares the parent's open file description, and with it the iommufd
//! security context: an IOMMU_IOAS_MAP the child makes through the inherited fd maps the
//! *child's* memory into the *parent's* IOAS. The engine lives in the parent's memory, so the
//! parent serves it: just before its first `fork` with an engine (the `pthread_atfork` prepare
//! handler) the process that owns an engine starts one thread listening on an abstract Unix
//! socket named after its pid and a random number. The name is in this library's memory, which
//! the child inherits (grandchildren too, through a child without an engine of its own).
//!
//! In the child, an iommufd or VFIO ioctl on an fd that is not in its own table but is one of
//! our memfds (`/memfd:uiommu:...`) is sent to the owner: the fd's inode (the same memfd inode
//! names the same file in the owner's table), the request and the argument pointer. The owner
//! checks that the peer (`SO_PEERCRED`) is a descendant of its own, and runs the file's
//! dispatcher with the peer's memory (`process_vm_readv`/`writev`; an ancestor may under Yama
//! `ptrace_scope=1`) as the caller's memory and, for IOMMU_IOAS_MAP, as the address space the
//! pages come from ([`uiommu_core::with_caller_space`]). One address space per descendant pid
//! is registered with the engine; once the descendant exited, pinning its pages is EFAULT, as
//! `pin_user_pages_remote` on a gone `mm` is. Pages of a `MAP_SHARED` mapping the descendant
//! shares with the owner (the same file, offset and address in both, checked when the pages
//! are probed for pinning) are read and written through the owner's memory: they are the same
//! pages, and remain readable after the descendant exited, as pinned pages do.
//!
//! Not forwarded: `read`/`write`/`mmap` (served as the plain memfd in the child), and fd
//! arguments naming the child's own fds (an eventfd for VFIO interrupts, an iommufd passed to
//! VFIO_DEVICE_BIND_IOMMUFD) are EBADF. Closing an inherited fd in the child closes the memfd
//! only: the owner still holds the file, as the kernel's open file description is still held.

use crate::hook::Hook;
use crate::real;
use crate::state::{global_if_any, Global, Kind};
use crate::table::{inode_of, InodeKey};
use libc::{c_int, c_ulong};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use uiommu_platform::addr::{UserVa, PAGE_SIZE};
use uiommu_platform::memory::{MemFault, SpaceId, UserMemory};
use uiommu_platform::process_memory::ProcessMemory;
use uiommu_uapi::{Caller, Errno, FdTable};

/// Pid of this process's server (0: none started).
static SERVER_PID: AtomicI32 = AtomicI32::new(0);
/// The random part of its name.
static SERVER_NONCE: AtomicU64 = AtomicU64::new(0);
/// Its listening fd, closed in a `fork` child (-1: none).
static SERVER_FD: AtomicI32 = AtomicI32::new(-1);
/// Pid of the ancestor serving the files this process inherited (0: none).
static UPSTREAM_PID: AtomicI32 = AtomicI32::new(0);
/// The random part of its server's name.
static UPSTREAM_NONCE: AtomicU64 = AtomicU64::new(0);

/// Magic of a request.
const MAGIC: u32 = 0x7569_6f31;
/// A request: magic, 0, dev, ino, request, arg.
const REQ_LEN: usize = 40;
/// A reply: the result (i64), then the errno (i64; 0 on success).
const REP_LEN: usize = 16;
/// Errno of a reply meaning "that inode is not one of mine".
const NOT_MINE: i64 = -1;

fn name(pid: i32, nonce: u64) -> String {
    format!("uiommu-{pid}-{nonce:016x}")
}

/// The atfork prepare handler: a process with an engine serves it before it forks.
pub(crate) extern "C" fn before_fork() {
    let _h = Hook::enter();
    if global_if_any().is_none() {
        return;
    }
    let pid = std::process::id() as i32;
    if SERVER_PID.load(Ordering::Acquire) == pid {
        return;
    }
    let nonce = random();
    let Ok(addr) = SocketAddr::from_abstract_name(name(pid, nonce).as_bytes()) else {
        return;
    };
    let Ok(listener) = UnixListener::bind_addr(&addr) else {
        return;
    };
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
    let pid = SERVER_PID.swap(0, Ordering::AcqRel);
    if pid != 0 {
        UPSTREAM_NONCE.store(SERVER_NONCE.load(Ordering::Acquire), Ordering::Release);
        UPSTREAM_PID.store(pid, Ordering::Release);
    }
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

/// Whether this process may have inherited files of an ancestor's engine.
pub(crate) fn has_upstream() -> bool {
    UPSTREAM_PID.load(Ordering::Acquire) != 0
}

/// Whether `fd` is one of this library's memfds (by its `/proc/self/fd` link).
fn is_our_memfd(fd: c_int) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|t| {
        t.as_os_str()
            .as_encoded_bytes()
            .starts_with(b"/memfd:uiommu:")
    })
}

/// Send an ioctl on `fd` (not in this process's table) to the ancestor serving it. `None`
/// when `fd` is not an inherited file of ours (the caller goes to the real ioctl).
pub(crate) fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> Option<Result<i64, Errno>> {
    let pid = UPSTREAM_PID.load(Ordering::Acquire);
    if pid == 0 || !is_our_memfd(fd) {
        return None;
    }
    let key = inode_of(fd).ok()?;
    let addr = SocketAddr::from_abstract_name(
        name(pid, UPSTREAM_NONCE.load(Ordering::Acquire)).as_bytes(),
    )
    .ok()?;
    let Ok(mut s) = UnixStream::connect_addr(&addr) else {
        // The owner is gone: the file died with its engine.
        return None;
    };
    let mut req = [0u8; REQ_LEN];
    req[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
    req[8..16].copy_from_slice(&key.dev.to_ne_bytes());
    req[16..24].copy_from_slice(&key.ino.to_ne_bytes());
    req[24..32].copy_from_slice(&request.to_ne_bytes());
    req[32..40].copy_from_slice(&arg.to_ne_bytes());
    let mut rep = [0u8; REP_LEN];
    if s.write_all(&req).is_err() || s.read_exact(&mut rep).is_err() {
        return Some(Err(libc::EIO));
    }
    let ret = i64::from_ne_bytes(rep[0..8].try_into().ok()?);
    let err = i64::from_ne_bytes(rep[8..16].try_into().ok()?);
    match err {
        0 => Some(Ok(ret)),
        NOT_MINE => None,
        e => Some(Err(e as Errno)),
    }
}

/// The parent pid of `pid` (from `/proc/<pid>/stat`).
fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is a descendant of this process.
fn is_descendant(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let mut p = pid;
    for _ in 0..64 {
        match ppid_of(p) {
            Some(pp) if pp == me => return true,
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
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

/// The server thread: one request per connection, served in order.
fn serve(listener: UnixListener) {
    let _h = Hook::enter();
    let mut spaces: HashMap<i32, (Arc<Descendant>, SpaceId)> = HashMap::new();
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let Some((pid, uid)) = peer(&s) else { continue };
        // SAFETY: geteuid has no preconditions.
        if uid != unsafe { libc::geteuid() } || !is_descendant(pid) {
            continue;
        }
        let mut req = [0u8; REQ_LEN];
        if s.read_exact(&mut req).is_err() {
            continue;
        }
        let word = |i: usize| u64::from_ne_bytes(req[i..i + 8].try_into().unwrap_or([0; 8]));
        if u32::from_ne_bytes(req[0..4].try_into().unwrap_or([0; 4])) != MAGIC {
            continue;
        }
        let key = InodeKey {
            dev: word(8),
            ino: word(16),
        };
        let (ret, err) = match global_if_any() {
            None => (0, NOT_MINE),
            Some(g) => {
                let (mem, space) = spaces
                    .entry(pid)
                    .or_insert_with(|| {
                        let mem = Arc::new(Descendant::new(pid, g.mem.clone()));
                        let space = g.engine.add_space(mem.clone() as Arc<dyn UserMemory>);
                        (mem, space)
                    })
                    .clone();
                match serve_ioctl(
                    g,
                    key,
                    &mem,
                    space,
                    word(24) as c_ulong,
                    word(32) as c_ulong,
                ) {
                    None => (0, NOT_MINE),
                    Some(Ok(v)) => (v, 0),
                    Some(Err(e)) => (0, i64::from(e)),
                }
            }
        };
        let mut rep = [0u8; REP_LEN];
        rep[0..8].copy_from_slice(&ret.to_ne_bytes());
        rep[8..16].copy_from_slice(&err.to_ne_bytes());
        let _ = s.write_all(&rep);
    }
}

/// A descendant's file table, as handlers see it: its fd numbers mean nothing here.
struct NoFds;

impl FdTable for NoFds {
    fn iommufd(&self, _fd: i32) -> Result<uiommu_core::Context, Errno> {
        Err(libc::EBADF)
    }
    fn eventfd(&self, _fd: i32) -> Result<Box<dyn Fn() + Send + Sync>, Errno> {
        Err(libc::EBADF)
    }
}

/// Run one forwarded ioctl on the file of inode `key` for a descendant whose memory is `mem`.
fn serve_ioctl(
    g: &Global,
    key: InodeKey,
    mem: &Descendant,
    space: SpaceId,
    request: c_ulong,
    arg: c_ulong,
) -> Option<Result<i64, Errno>> {
    let file = g.files.get_key(key)?;
    let caller = Caller { mem, fds: &NoFds };
    let r = uiommu_core::with_caller_space(space, || match &file.kind {
        Kind::Iommufd(f) => f.ioctl(&caller, request, arg),
        Kind::Group(f) => f.ioctl(&caller, request, arg),
        Kind::Vfio(f) => f.ioctl(&caller, request, arg),
        Kind::Engine(_) => Err(libc::ENOTTY),
    });
    g.ready.refresh();
    Some(r)
}

/// A descendant's memory: its own through the kernel, except the ranges of `MAP_SHARED`
/// mappings it shares with this process, which are this process's memory (the same pages).
struct Descendant {
    pid: i32,
    mem: ProcessMemory,
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
            mem: ProcessMemory::of(pid),
            own,
            shared: Mutex::new(Vec::new()),
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
        self.mem.read(va, buf)
    }
    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        if self.is_shared(va.raw(), data.len() as u64) {
            return self.own.write(va, data);
        }
        self.mem.write(va, data)
    }
    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        self.mem.probe(va, len, write)?;
        self.note_shared(va.raw(), len);
        Ok(())
    }
    fn page_size_at(&self, va: UserVa) -> u64 {
        let _ = va;
        PAGE_SIZE
    }
}
