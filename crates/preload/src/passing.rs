//! Files of ours in flight in a Unix socket (`SCM_RIGHTS`).
//!
//! In Linux a file sent over a socket is held by the message until it is received: a program
//! may send an fd and close its own copy at once. The liveness sweep only sees descriptors
//! (this process's, and its family's: `crate::remote`), so `sendmsg` of one of this process's
//! files keeps a private duplicate of it (a *hold*, close-on-exec) until the file is received:
//! by this process (`recvmsg` here releases a hold of the inode) or by a process of the family
//! (whose `recvmsg` tells the owner, `crate::remote::received`). A file sent to a process
//! outside the family stays held until this process exits (such a process could not use it:
//! [`crate::remote`]). A fork child closes its copies of the holds (they are the parent's).
//!
//! Cost for other calls: `sendmsg`/`recvmsg` without control data, or with this process having
//! no files of ours, go to the real call after one load.

use crate::hook::{in_hook, Hook};
use crate::real;
use crate::state::global_if_any;
use crate::table::{inode_of, InodeKey};
use libc::{c_int, msghdr, ssize_t};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

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

/// Keep a duplicate of each file of ours among `fds` until it is received.
fn hold(fds: &[c_int]) {
    let Some(g) = global_if_any() else { return };
    for &fd in fds {
        let Some(key) = g.files.key(fd) else { continue };
        let Some(slot) = HOLDS.iter().find(|h| h.fd.load(Ordering::Acquire) == -1) else {
            return;
        };
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open fd of ours; no memory is passed.
        let dup = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        slot.dev.store(key.dev, Ordering::Release);
        slot.ino.store(key.ino, Ordering::Release);
        if slot
            .fd
            .compare_exchange(-1, dup, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread took the slot meanwhile: this file goes without a hold.
            // SAFETY: closes the duplicate just made.
            unsafe { real::close(dup) };
        }
    }
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
        } else if let Some(key) = crate::remote::inherited(fd) {
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
    // SAFETY: the caller's arguments are passed on unchanged.
    let r = unsafe { real::sendmsg(sock, msg, flags) };
    if r < 0 || in_hook() || msg.is_null() || global_if_any().is_none() {
        return r;
    }
    // The message is sent: the library's own work must not change the result.
    after(|| {
        // SAFETY: the kernel accepted `msg`, so it and its control buffer are readable.
        if unsafe { (*msg).msg_controllen } != 0 {
            // SAFETY: as above.
            hold(&unsafe { rights(msg) });
        }
    });
    r
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
    if global_if_any().is_none() && !crate::remote::has_upstream() {
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
