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
//!
//! **Layout.** [`wire`]: the requests and messages on a link and the server's name;
//! [`client`]: the descendant's side (which fds are inherited, the links, the forwarded
//! calls); [`server`]: the owner's server state, its start at the first `fork`, the memfd
//! stamps, the reaper; [`serving`]: one link served (the peer checked, each request run with
//! the descendant's memory and fds); [`family`]: the process family from `/proc` and what its
//! members hold; [`sweep`]: dropping files nobody holds after a close or a reaped child.

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

mod client;
mod family;
mod server;
mod serving;
mod sweep;
mod wire;

pub(crate) use client::*;
use family::*;
pub(crate) use server::*;
use serving::*;
pub(crate) use sweep::*;
use wire::*;

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
