//! Files of ours sent over a Unix socket (`SCM_RIGHTS`).
//!
//! In Linux a file sent over a socket is held by the message until it is received, and the
//! receiver shares it with the sender. Here:
//!
//! - **In flight.** The liveness sweep only sees descriptors (this process's, and its
//!   family's: `crate::remote`), so `sendmsg` of one of this process's files keeps a private
//!   duplicate of it (a *hold*, close-on-exec), taken before the send and dropped if the send
//!   fails, until the file is received: by this process (`recvmsg` here releases a hold of the
//!   inode) or by another process served by this engine (whose `recvmsg` tells it,
//!   `crate::remote::received`). A process sending a file of an ancestor's engine asks that
//!   engine's owner to take the hold (`crate::remote::hold`, the fd passed by `SCM_RIGHTS`).
//!   A file received by a process without this library is held until the sender exits.
//! - **Outside the family.** Before the send, the file is stamped with the name of this
//!   process's server (started if it does not run). A receiver that is neither a descendant
//!   nor forked by one reads the stamp (`crate::remote::adopt_upstream`) and is served by the
//!   sender's engine from then on; the server serves it once it shows it holds the file, and
//!   counts it in the family (its fds keep the file open).
//!
//! The message is read through the checked accessor before the send (the kernel has not
//! validated it yet). A fork child closes its copies of the holds (they are the parent's).
//! Cost: `sendmsg` in a process with files of ours reads the `msghdr` (no system call when it
//! is on the calling thread's stack); `recvmsg` with control data looks at each fd received.

use crate::hook::{in_hook, Hook};
use crate::real;
use crate::state::global_if_any;
use crate::table::{inode_of, InodeKey};
use libc::{c_int, msghdr, ssize_t};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use uiommu_platform::memory::UserMemory;
use uiommu_platform::process_memory::ProcessMemory;
use uiommu_platform::UserVa;

/// How many files may be in flight at once (more are sent without a hold).
const SLOTS: usize = 64;

/// One hold: the duplicate's fd (-1: free) and the file's inode.
struct Hold {
    fd: AtomicI32,
    dev: AtomicU64,
    ino: AtomicU64,
}

static HOLDS: [Hold; SLOTS] = [const {
    Hold {
        fd: AtomicI32::new(-1),
        dev: AtomicU64::new(0),
        ino: AtomicU64::new(0),
    }
}; SLOTS];

/// The fds an `SCM_RIGHTS` control message of `msg` carries.
///
/// # Safety
/// `msg` is a `msghdr` the kernel just accepted (`sendmsg`) or filled (`recvmsg`).
unsafe fn rights(msg: *const msghdr) -> Vec<c_int> {
    let mut fds = Vec::new();
    // SAFETY: the caller's contract: `msg` and its control buffer are valid.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !c.is_null() {
        // SAFETY: `c` is a control message header inside the buffer (CMSG_FIRSTHDR/NXTHDR
        // return null past its end).
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            let n = (h.cmsg_len as usize).saturating_sub(head) / std::mem::size_of::<c_int>();
            // SAFETY: the data of an SCM_RIGHTS message is `n` ints after its header.
            let data = unsafe { libc::CMSG_DATA(c) }.cast::<c_int>();
            for i in 0..n {
                // SAFETY: within the message's data (unaligned reads allowed).
                fds.push(unsafe { data.add(i).read_unaligned() });
            }
        }
        // SAFETY: as above; null after the last header.
        c = unsafe { libc::CMSG_NXTHDR(msg, c) };
    }
    fds
}

/// Keep a duplicate of this process's file `key` (open at `fd`) until it is received.
fn hold(fd: c_int, key: InodeKey) {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an open fd of ours; no memory is passed.
    let dup = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup >= 0 {
        keep(dup, key);
    }
}

/// Keep `dup`, a private fd of the file `key`, as a hold (closed when no slot is free).
pub(crate) fn keep(dup: c_int, key: InodeKey) {
    for slot in &HOLDS {
        if slot
            .fd
            .compare_exchange(-1, -2, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            slot.dev.store(key.dev, Ordering::Release);
            slot.ino.store(key.ino, Ordering::Release);
            slot.fd.store(dup, Ordering::Release);
            return;
        }
    }
    // SAFETY: closes the duplicate handed over: no slot is free, the file goes unheld.
    unsafe { real::close(dup) };
}

/// Release one hold of the file of inode `key` (it was received); false when none is held.
pub(crate) fn release(key: InodeKey) -> bool {
    for h in &HOLDS {
        let fd = h.fd.load(Ordering::Acquire);
        if fd < 0
            || h.dev.load(Ordering::Acquire) != key.dev
            || h.ino.load(Ordering::Acquire) != key.ino
        {
            continue;
        }
        if h.fd
            .compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if inode_of(fd) == Ok(key) {
                // SAFETY: closes the duplicate this slot owned (still naming the file).
                unsafe { real::close(fd) };
            }
            return true;
        }
    }
    false
}

/// In a `fork` child: the holds are the parent's (async-signal safe).
pub(crate) fn forget_after_fork() {
    for h in &HOLDS {
        let fd = h.fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: closes the child's copy of the parent's duplicate.
            unsafe { real::close(fd) };
        }
    }
}

/// After files arrived in `fds`: holds of this process's own files are released, and the
/// owner of inherited ones is told.
fn received(fds: &[c_int]) {
    let g = global_if_any();
    for &fd in fds {
        if let Some(key) = g.and_then(|g| g.files.key(fd)) {
            release(key);
            continue;
        }
        // Another process's file: its stamp names the server of its engine, which serves
        // this process from now on (as after a fork) and releases the sender's hold.
        crate::remote::adopt_upstream(fd);
        if let Some(key) = crate::remote::inherited(fd) {
            crate::remote::received(key);
        }
    }
}

/// `sendmsg(2)`: files of ours sent are held until received.
///
/// # Safety
/// As `sendmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(sock: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let sending = if in_hook() || (global_if_any().is_none() && !crate::remote::has_upstream()) {
        Vec::new()
    } else {
        // Before the send: a receiver must find the file stamped with a listening server,
        // and the file held (a concurrent close must not drop it while in flight).
        let mut sending = Vec::new();
        after(|| {
            sending = files_sent(msg);
            for f in &sending {
                hold_one(f);
            }
        });
        sending
    };
    // SAFETY: the caller's arguments are passed on unchanged.
    let r = unsafe { real::sendmsg(sock, msg, flags) };
    if r < 0 && !sending.is_empty() {
        // Nothing was sent: the holds go.
        after(|| {
            for f in &sending {
                unhold_one(f);
            }
        });
    }
    r
}

/// A file of ours a message sends.
enum Sent {
    /// One of this process's own (its fd).
    Own(c_int, InodeKey),
    /// A file of an ancestor's engine (its fd here).
    Inherited(c_int, InodeKey),
}

fn hold_one(f: &Sent) {
    match *f {
        Sent::Own(fd, key) => hold(fd, key),
        Sent::Inherited(fd, key) => crate::remote::hold(fd, key),
    }
}

fn unhold_one(f: &Sent) {
    match *f {
        Sent::Own(_, key) => {
            release(key);
        }
        Sent::Inherited(_, key) => crate::remote::received(key),
    }
}

/// The files of ours `msg` sends (its `SCM_RIGHTS` fds that are this process's files, each
/// stamped with this process's server ([`crate::remote::serve_sent`]), or inherited ones).
/// The message is read through the checked accessor: the kernel has not validated it yet, and
/// a bad pointer is the kernel's EFAULT to give, not a crash.
fn files_sent(msg: *const msghdr) -> Vec<Sent> {
    let mem = ProcessMemory::this();
    let mut head = [0u8; std::mem::size_of::<msghdr>()];
    if mem.read(UserVa(msg as u64), &mut head).is_err() {
        return Vec::new();
    }
    // SAFETY: `head` holds the bytes of a msghdr (a plain C struct, any bit pattern valid).
    let mut copy: msghdr = unsafe { std::ptr::read_unaligned(head.as_ptr().cast()) };
    let len = copy.msg_controllen.min(4096);
    if len == 0 || copy.msg_control.is_null() {
        return Vec::new();
    }
    // A buffer aligned as control messages need.
    let mut control = vec![0u64; len.div_ceil(8)];
    let bytes = &mut u64_bytes(&mut control)[..len];
    if mem.read(UserVa(copy.msg_control as u64), bytes).is_err() {
        return Vec::new();
    }
    copy.msg_control = control.as_mut_ptr().cast();
    copy.msg_controllen = len;
    copy.msg_iov = std::ptr::null_mut();
    copy.msg_iovlen = 0;
    copy.msg_name = std::ptr::null_mut();
    // SAFETY: `copy` points only to the local control buffer of `len` bytes.
    let fds = unsafe { rights(&copy) };
    let g = global_if_any();
    let mut sent = Vec::new();
    for fd in fds {
        if let Some(key) = g.and_then(|g| g.files.key(fd)) {
            crate::remote::serve_sent(fd);
            sent.push(Sent::Own(fd, key));
        } else if let Some(key) = crate::remote::inherited(fd) {
            sent.push(Sent::Inherited(fd, key));
        }
    }
    sent
}

/// The bytes of a `u64` buffer.
fn u64_bytes(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: a u64 slice is a valid, initialised byte slice of 8 times its length.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() * 8) }
}

/// Run `f` (the library's work after a call that succeeded) inside the library, keeping the
/// call's errno; a panic in it is contained and changes nothing for the program.
fn after(f: impl FnOnce()) {
    let e = real::errno();
    let _h = Hook::enter();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    real::set_errno(e);
}

/// `recvmsg(2)`: files of ours received release the sender's hold.
///
/// # Safety
/// As `recvmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(sock: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    // SAFETY: the caller's arguments are passed on unchanged.
    let r = unsafe { real::recvmsg(sock, msg, flags) };
    if r < 0 || in_hook() || msg.is_null() {
        return r;
    }
    after(|| {
        // SAFETY: the kernel filled `msg`, so it and its control buffer are valid.
        if unsafe { (*msg).msg_controllen } != 0 {
            // SAFETY: as above.
            received(&unsafe { rights(msg) });
        }
    });
    r
}
