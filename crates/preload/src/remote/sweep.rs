//! Dropping the files nobody holds any more: after a close in this process (`sweep`), and
//! after a `wait` that reaped a child (the interposed `wait` family).

use super::*;

/// After a close: drop the files no fd of this process, nor (once it forked with an engine)
/// of a descendant, refers to. The removed files are returned, for the caller to drop outside
/// the table's lock.
pub(crate) fn sweep(g: &'static Global) -> Vec<Arc<OpenFile>> {
    sweep_and_see(g).0
}

/// [`sweep`], and whether files are left that only descendants hold.
pub(super) fn sweep_and_see(g: &'static Global) -> (Vec<Arc<OpenFile>>, bool) {
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

/// After a `wait` reaped a child: files that only the family held may have lost their last
/// holder. As in Linux, where an exiting process's files are closed before its parent can
/// reap it, the reaper looks before the wait returns (see [`Server::look_now`]).
pub(super) fn after_wait(reaped: bool) {
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
