//! The real C library functions behind the ones this library interposes.
//!
//! Each is found once with `dlsym(RTLD_NEXT, name)` — the next definition after this library in
//! the dynamic linker's search order, normally glibc's — and cached in an atomic. Loaded as
//! `LD_PRELOAD`, calling `libc::close` from Rust would come back to this library's own `close`;
//! everything here calls the real function directly, so a caller that must not touch the file
//! table (an interrupt closure run under the engine lock, the table's own scans) can use them.
//!
//! If a symbol cannot be found (a C library without it), the wrapper fails with ENOSYS rather
//! than jumping to address 0.

use libc::{c_char, c_int, c_uint, c_ulong, c_void, off64_t, off_t, size_t, ssize_t};
use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `errno` of the calling thread.
pub(crate) fn errno() -> c_int {
    // SAFETY: __errno_location returns a valid pointer to the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Set `errno` of the calling thread.
pub(crate) fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns a valid pointer to the calling thread's errno.
    unsafe { *libc::__errno_location() = e }
}

/// The address of the next definition of `name` after this library, cached in `slot`
/// (0 when there is none).
fn resolve(slot: &AtomicUsize, name: &CStr) -> usize {
    let cached = slot.load(Ordering::Acquire);
    if cached != 0 {
        return cached;
    }
    // SAFETY: `name` is NUL-terminated; dlsym with RTLD_NEXT only looks the symbol up and
    // returns null when there is none. Two threads racing here store the same address.
    let addr = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    slot.store(addr, Ordering::Release);
    addr
}

/// Define `pub(crate) unsafe fn $name(args) -> ret` calling the real `$sym`, or failing with
/// ENOSYS and `$fail` when the symbol is missing. `$ty` is the C prototype (variadic where C's
/// is, so that Rust sets up the call as a variadic one: on x86-64, `%al` = 0 vector registers).
macro_rules! real_fns {
    ($(
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $t:ty),*) -> $ret:ty = $sym:literal as $ty:ty, fail $fail:expr;
    )*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// The arguments must satisfy the C function's contract.
        #[allow(clippy::unused_unit)]
        pub(crate) unsafe fn $name($($arg: $t),*) -> $ret {
            static SLOT: AtomicUsize = AtomicUsize::new(0);
            let addr = resolve(&SLOT, $sym);
            if addr == 0 {
                set_errno(libc::ENOSYS);
                return $fail;
            }
            // SAFETY: `addr` is the non-null address dlsym gave for the C library's `$sym`,
            // whose C prototype is `$ty`; function pointers and usize have the same size.
            let f: $ty = unsafe { std::mem::transmute::<usize, $ty>(addr) };
            // SAFETY: the caller upholds the C function's contract for these arguments.
            unsafe { f($($arg),*) }
        }
    )*};
}

real_fns! {
    /// `open(2)`.
    fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int
        = c"open" as unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int, fail -1;
    /// `open64(2)`.
    fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int
        = c"open64" as unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int, fail -1;
    /// `openat(2)`.
    fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int
        = c"openat" as unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int, fail -1;
    /// `openat64(2)`.
    fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int
        = c"openat64" as unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int,
        fail -1;
    /// glibc's fortified `open` (`_FORTIFY_SOURCE`, no mode argument).
    fn open_2(path: *const c_char, flags: c_int) -> c_int
        = c"__open_2" as unsafe extern "C" fn(*const c_char, c_int) -> c_int, fail -1;
    /// glibc's fortified `open64`.
    fn open64_2(path: *const c_char, flags: c_int) -> c_int
        = c"__open64_2" as unsafe extern "C" fn(*const c_char, c_int) -> c_int, fail -1;
    /// glibc's fortified `openat`.
    fn openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int
        = c"__openat_2" as unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int, fail -1;
    /// glibc's fortified `openat64`.
    fn openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int
        = c"__openat64_2" as unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int,
        fail -1;
    /// `close(2)`.
    fn close(fd: c_int) -> c_int = c"close" as unsafe extern "C" fn(c_int) -> c_int, fail -1;
    /// `dup2(2)`.
    fn dup2(old: c_int, new: c_int) -> c_int
        = c"dup2" as unsafe extern "C" fn(c_int, c_int) -> c_int, fail -1;
    /// `dup3(2)`.
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int
        = c"dup3" as unsafe extern "C" fn(c_int, c_int, c_int) -> c_int, fail -1;
    /// `sendmsg(2)`.
    fn sendmsg(sock: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t
        = c"sendmsg" as unsafe extern "C" fn(c_int, *const libc::msghdr, c_int) -> ssize_t,
        fail -1;
    /// `recvmsg(2)`.
    fn recvmsg(sock: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t
        = c"recvmsg" as unsafe extern "C" fn(c_int, *mut libc::msghdr, c_int) -> ssize_t,
        fail -1;
    /// `fork(2)`.
    fn fork() -> libc::pid_t = c"fork" as unsafe extern "C" fn() -> libc::pid_t, fail -1;
    /// `wait(2)`.
    fn wait(status: *mut c_int) -> libc::pid_t
        = c"wait" as unsafe extern "C" fn(*mut c_int) -> libc::pid_t, fail -1;
    /// `waitpid(2)`.
    fn waitpid(pid: libc::pid_t, status: *mut c_int, options: c_int) -> libc::pid_t
        = c"waitpid" as unsafe extern "C" fn(libc::pid_t, *mut c_int, c_int) -> libc::pid_t,
        fail -1;
    /// `wait3(2)`.
    fn wait3(status: *mut c_int, options: c_int, usage: *mut c_void) -> libc::pid_t
        = c"wait3" as unsafe extern "C" fn(*mut c_int, c_int, *mut c_void) -> libc::pid_t,
        fail -1;
    /// `wait4(2)`.
    fn wait4(pid: libc::pid_t, status: *mut c_int, options: c_int, usage: *mut c_void)
        -> libc::pid_t = c"wait4" as unsafe extern "C" fn(libc::pid_t, *mut c_int, c_int,
        *mut c_void) -> libc::pid_t, fail -1;
    /// `waitid(2)`.
    fn waitid(idtype: c_uint, id: c_uint, info: *mut c_void, options: c_int) -> c_int
        = c"waitid" as unsafe extern "C" fn(c_uint, c_uint, *mut c_void, c_int) -> c_int,
        fail -1;
    /// `close_range(2)`.
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int
        = c"close_range" as unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int, fail -1;
    /// glibc's `closefrom(3)` (no return value).
    fn closefrom(low: c_int) -> ()
        = c"closefrom" as unsafe extern "C" fn(c_int), fail ();
    /// `fcntl(2)` with one integer or pointer argument.
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int
        = c"fcntl" as unsafe extern "C" fn(c_int, c_int, ...) -> c_int, fail -1;
    /// `ioctl(2)`.
    fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int
        = c"ioctl" as unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int, fail -1;
    /// `read(2)`.
    fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t
        = c"read" as unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t, fail -1;
    /// glibc's fortified `read` (`_FORTIFY_SOURCE` with a known buffer size).
    fn read_chk(fd: c_int, buf: *mut c_void, count: size_t, buflen: size_t) -> ssize_t
        = c"__read_chk" as unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t) -> ssize_t,
        fail -1;
    /// glibc's fortified `pread`.
    fn pread_chk(fd: c_int, buf: *mut c_void, count: size_t, off: off_t, buflen: size_t)
        -> ssize_t
        = c"__pread_chk" as unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t, size_t)
            -> ssize_t,
        fail -1;
    /// glibc's fortified `pread64`.
    fn pread64_chk(fd: c_int, buf: *mut c_void, count: size_t, off: off64_t, buflen: size_t)
        -> ssize_t
        = c"__pread64_chk" as unsafe extern "C" fn(c_int, *mut c_void, size_t, off64_t, size_t)
            -> ssize_t,
        fail -1;
    /// `write(2)`.
    fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t
        = c"write" as unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t, fail -1;
    /// `pread(2)`.
    fn pread(fd: c_int, buf: *mut c_void, count: size_t, off: off_t) -> ssize_t
        = c"pread" as unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t) -> ssize_t,
        fail -1;
    /// `pread64(2)`.
    fn pread64(fd: c_int, buf: *mut c_void, count: size_t, off: off64_t) -> ssize_t
        = c"pread64" as unsafe extern "C" fn(c_int, *mut c_void, size_t, off64_t) -> ssize_t,
        fail -1;
    /// `readv(2)`.
    fn readv(fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t
        = c"readv" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> ssize_t,
        fail -1;
    /// `writev(2)`.
    fn writev(fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t
        = c"writev" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> ssize_t,
        fail -1;
    /// `preadv(2)`.
    fn preadv(fd: c_int, iov: *const libc::iovec, n: c_int, off: off_t) -> ssize_t
        = c"preadv" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t) -> ssize_t,
        fail -1;
    /// `preadv64(2)`.
    fn preadv64(fd: c_int, iov: *const libc::iovec, n: c_int, off: off64_t) -> ssize_t
        = c"preadv64" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off64_t) -> ssize_t,
        fail -1;
    /// `pwritev(2)`.
    fn pwritev(fd: c_int, iov: *const libc::iovec, n: c_int, off: off_t) -> ssize_t
        = c"pwritev" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t) -> ssize_t,
        fail -1;
    /// `pwritev64(2)`.
    fn pwritev64(fd: c_int, iov: *const libc::iovec, n: c_int, off: off64_t) -> ssize_t
        = c"pwritev64" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off64_t) -> ssize_t,
        fail -1;
    /// `preadv2(2)`.
    fn preadv2(fd: c_int, iov: *const libc::iovec, n: c_int, off: off_t, flags: c_int) -> ssize_t
        = c"preadv2" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t, c_int) -> ssize_t,
        fail -1;
    /// `pwritev2(2)`.
    fn pwritev2(fd: c_int, iov: *const libc::iovec, n: c_int, off: off_t, flags: c_int) -> ssize_t
        = c"pwritev2" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t, c_int) -> ssize_t,
        fail -1;
    /// `pwrite(2)`.
    fn pwrite(fd: c_int, buf: *const c_void, count: size_t, off: off_t) -> ssize_t
        = c"pwrite" as unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t,
        fail -1;
    /// `pwrite64(2)`.
    fn pwrite64(fd: c_int, buf: *const c_void, count: size_t, off: off64_t) -> ssize_t
        = c"pwrite64" as unsafe extern "C" fn(c_int, *const c_void, size_t, off64_t) -> ssize_t,
        fail -1;
    /// `poll(2)`.
    fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int
        = c"poll" as unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int,
        fail -1;
    /// `ppoll(2)`.
    fn ppoll(fds: *mut libc::pollfd, nfds: libc::nfds_t, tmo: *const libc::timespec,
        sigmask: *const libc::sigset_t) -> c_int
        = c"ppoll" as unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t,
            *const libc::timespec, *const libc::sigset_t) -> c_int,
        fail -1;
    /// glibc's fortified `poll`.
    fn poll_chk(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int, fdslen: size_t)
        -> c_int
        = c"__poll_chk" as unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, c_int, size_t)
            -> c_int,
        fail -1;
    /// glibc's fortified `ppoll`.
    fn ppoll_chk(fds: *mut libc::pollfd, nfds: libc::nfds_t, tmo: *const libc::timespec,
        sigmask: *const libc::sigset_t, fdslen: size_t) -> c_int
        = c"__ppoll_chk" as unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t,
            *const libc::timespec, *const libc::sigset_t, size_t) -> c_int,
        fail -1;
    /// `select(2)`.
    fn select(nfds: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set,
        tmo: *mut libc::timeval) -> c_int
        = c"select" as unsafe extern "C" fn(c_int, *mut libc::fd_set, *mut libc::fd_set,
            *mut libc::fd_set, *mut libc::timeval) -> c_int,
        fail -1;
    /// `pselect(2)`.
    fn pselect(nfds: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set,
        tmo: *const libc::timespec, sigmask: *const libc::sigset_t) -> c_int
        = c"pselect" as unsafe extern "C" fn(c_int, *mut libc::fd_set, *mut libc::fd_set,
            *mut libc::fd_set, *const libc::timespec, *const libc::sigset_t) -> c_int,
        fail -1;
    /// `epoll_ctl(2)`.
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut c_void) -> c_int
        = c"epoll_ctl" as unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void) -> c_int,
        fail -1;
    /// `mmap(2)`.
    fn mmap(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t)
        -> *mut c_void
        = c"mmap" as unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t)
            -> *mut c_void,
        fail libc::MAP_FAILED;
    /// `mmap64(2)`.
    fn mmap64(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off64_t)
        -> *mut c_void
        = c"mmap64" as unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off64_t)
            -> *mut c_void,
        fail libc::MAP_FAILED;
    /// `munmap(2)`.
    fn munmap(addr: *mut c_void, len: size_t) -> c_int
        = c"munmap" as unsafe extern "C" fn(*mut c_void, size_t) -> c_int,
        fail -1;
    /// `mremap(2)` (the new address passed always; read only with MREMAP_FIXED).
    fn mremap(old: *mut c_void, old_len: size_t, new_len: size_t, flags: c_int,
        new_addr: *mut c_void) -> *mut c_void
        = c"mremap" as unsafe extern "C" fn(*mut c_void, size_t, size_t, c_int, *mut c_void)
            -> *mut c_void,
        fail libc::MAP_FAILED;
}

/// An `nftw` callback: `(fpath, sb, typeflag, ftwbuf)`.
pub(crate) type NftwFn =
    Option<unsafe extern "C" fn(*const c_char, *const c_void, c_int, *const c_void) -> c_int>;
/// An `ftw` callback: `(fpath, sb, typeflag)`.
pub(crate) type FtwFn = Option<unsafe extern "C" fn(*const c_char, *const c_void, c_int) -> c_int>;

// The path functions interposed for the sysfs view (`crate::sysfs`). Buffers (`struct stat`,
// `struct statx`) and streams (`FILE`, `DIR`) are opaque pointers here.
real_fns! {
    /// `stat(2)` (glibc 2.33+ symbol).
    fn stat(path: *const c_char, buf: *mut c_void) -> c_int
        = c"stat" as unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int, fail -1;
    /// `stat64(2)`.
    fn stat64(path: *const c_char, buf: *mut c_void) -> c_int
        = c"stat64" as unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int, fail -1;
    /// `lstat(2)`.
    fn lstat(path: *const c_char, buf: *mut c_void) -> c_int
        = c"lstat" as unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int, fail -1;
    /// `lstat64(2)`.
    fn lstat64(path: *const c_char, buf: *mut c_void) -> c_int
        = c"lstat64" as unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int, fail -1;
    /// `fstatat(2)`.
    fn fstatat(dirfd: c_int, path: *const c_char, buf: *mut c_void, flags: c_int) -> c_int
        = c"fstatat" as unsafe extern "C" fn(c_int, *const c_char, *mut c_void, c_int) -> c_int,
        fail -1;
    /// `fstatat64(2)`.
    fn fstatat64(dirfd: c_int, path: *const c_char, buf: *mut c_void, flags: c_int) -> c_int
        = c"fstatat64" as unsafe extern "C" fn(c_int, *const c_char, *mut c_void, c_int)
            -> c_int,
        fail -1;
    /// `statx(2)`.
    fn statx(dirfd: c_int, path: *const c_char, flags: c_int, mask: c_uint, buf: *mut c_void)
        -> c_int
        = c"statx" as unsafe extern "C" fn(c_int, *const c_char, c_int, c_uint, *mut c_void)
            -> c_int,
        fail -1;
    /// glibc's pre-2.33 `__xstat`.
    fn xstat(ver: c_int, path: *const c_char, buf: *mut c_void) -> c_int
        = c"__xstat" as unsafe extern "C" fn(c_int, *const c_char, *mut c_void) -> c_int,
        fail -1;
    /// glibc's pre-2.33 `__xstat64`.
    fn xstat64(ver: c_int, path: *const c_char, buf: *mut c_void) -> c_int
        = c"__xstat64" as unsafe extern "C" fn(c_int, *const c_char, *mut c_void) -> c_int,
        fail -1;
    /// glibc's pre-2.33 `__lxstat`.
    fn lxstat(ver: c_int, path: *const c_char, buf: *mut c_void) -> c_int
        = c"__lxstat" as unsafe extern "C" fn(c_int, *const c_char, *mut c_void) -> c_int,
        fail -1;
    /// glibc's pre-2.33 `__lxstat64`.
    fn lxstat64(ver: c_int, path: *const c_char, buf: *mut c_void) -> c_int
        = c"__lxstat64" as unsafe extern "C" fn(c_int, *const c_char, *mut c_void) -> c_int,
        fail -1;
    /// glibc's pre-2.33 `__fxstatat`.
    fn fxstatat(ver: c_int, dirfd: c_int, path: *const c_char, buf: *mut c_void, flags: c_int)
        -> c_int
        = c"__fxstatat" as unsafe extern "C" fn(c_int, c_int, *const c_char, *mut c_void, c_int)
            -> c_int,
        fail -1;
    /// glibc's pre-2.33 `__fxstatat64`.
    fn fxstatat64(ver: c_int, dirfd: c_int, path: *const c_char, buf: *mut c_void, flags: c_int)
        -> c_int
        = c"__fxstatat64" as unsafe extern "C" fn(c_int, c_int, *const c_char, *mut c_void,
            c_int) -> c_int,
        fail -1;
    /// `fstat(2)` (glibc 2.33+ symbol).
    fn fstat(fd: c_int, buf: *mut c_void) -> c_int
        = c"fstat" as unsafe extern "C" fn(c_int, *mut c_void) -> c_int, fail -1;
    /// `fstat64(2)`.
    fn fstat64(fd: c_int, buf: *mut c_void) -> c_int
        = c"fstat64" as unsafe extern "C" fn(c_int, *mut c_void) -> c_int, fail -1;
    /// glibc's pre-2.33 `__fxstat`.
    fn fxstat(ver: c_int, fd: c_int, buf: *mut c_void) -> c_int
        = c"__fxstat" as unsafe extern "C" fn(c_int, c_int, *mut c_void) -> c_int, fail -1;
    /// glibc's pre-2.33 `__fxstat64`.
    fn fxstat64(ver: c_int, fd: c_int, buf: *mut c_void) -> c_int
        = c"__fxstat64" as unsafe extern "C" fn(c_int, c_int, *mut c_void) -> c_int, fail -1;
    /// `access(2)`.
    fn access(path: *const c_char, mode: c_int) -> c_int
        = c"access" as unsafe extern "C" fn(*const c_char, c_int) -> c_int, fail -1;
    /// `euidaccess(3)`.
    fn euidaccess(path: *const c_char, mode: c_int) -> c_int
        = c"euidaccess" as unsafe extern "C" fn(*const c_char, c_int) -> c_int, fail -1;
    /// `faccessat(2)`.
    fn faccessat(dirfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int
        = c"faccessat" as unsafe extern "C" fn(c_int, *const c_char, c_int, c_int) -> c_int,
        fail -1;
    /// `readlink(2)`.
    fn readlink(path: *const c_char, buf: *mut c_char, size: size_t) -> ssize_t
        = c"readlink" as unsafe extern "C" fn(*const c_char, *mut c_char, size_t) -> ssize_t,
        fail -1;
    /// `readlinkat(2)`.
    fn readlinkat(dirfd: c_int, path: *const c_char, buf: *mut c_char, size: size_t) -> ssize_t
        = c"readlinkat" as unsafe extern "C" fn(c_int, *const c_char, *mut c_char, size_t)
            -> ssize_t,
        fail -1;
    /// glibc's fortified `readlink`.
    fn readlink_chk(path: *const c_char, buf: *mut c_char, size: size_t, buflen: size_t)
        -> ssize_t
        = c"__readlink_chk" as unsafe extern "C" fn(*const c_char, *mut c_char, size_t, size_t)
            -> ssize_t,
        fail -1;
    /// glibc's fortified `readlinkat`.
    fn readlinkat_chk(dirfd: c_int, path: *const c_char, buf: *mut c_char, size: size_t,
        buflen: size_t) -> ssize_t
        = c"__readlinkat_chk" as unsafe extern "C" fn(c_int, *const c_char, *mut c_char, size_t,
            size_t) -> ssize_t,
        fail -1;
    /// `realpath(3)`.
    fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char
        = c"realpath" as unsafe extern "C" fn(*const c_char, *mut c_char) -> *mut c_char,
        fail std::ptr::null_mut();
    /// glibc's fortified `realpath`.
    fn realpath_chk(path: *const c_char, resolved: *mut c_char, len: size_t) -> *mut c_char
        = c"__realpath_chk" as unsafe extern "C" fn(*const c_char, *mut c_char, size_t)
            -> *mut c_char,
        fail std::ptr::null_mut();
    /// `opendir(3)`.
    fn opendir(path: *const c_char) -> *mut c_void
        = c"opendir" as unsafe extern "C" fn(*const c_char) -> *mut c_void,
        fail std::ptr::null_mut();
    /// `readdir(3)`.
    fn readdir(dir: *mut c_void) -> *mut c_void
        = c"readdir" as unsafe extern "C" fn(*mut c_void) -> *mut c_void,
        fail std::ptr::null_mut();
    /// `readdir64(3)`.
    fn readdir64(dir: *mut c_void) -> *mut c_void
        = c"readdir64" as unsafe extern "C" fn(*mut c_void) -> *mut c_void,
        fail std::ptr::null_mut();
    /// `getxattr(2)`.
    fn getxattr(path: *const c_char, name: *const c_char, value: *mut c_void, size: size_t)
        -> ssize_t
        = c"getxattr" as unsafe extern "C" fn(*const c_char, *const c_char, *mut c_void, size_t)
            -> ssize_t,
        fail -1;
    /// `lgetxattr(2)`.
    fn lgetxattr(path: *const c_char, name: *const c_char, value: *mut c_void, size: size_t)
        -> ssize_t
        = c"lgetxattr" as unsafe extern "C" fn(*const c_char, *const c_char, *mut c_void, size_t)
            -> ssize_t,
        fail -1;
    /// `listxattr(2)`.
    fn listxattr(path: *const c_char, list: *mut c_char, size: size_t) -> ssize_t
        = c"listxattr" as unsafe extern "C" fn(*const c_char, *mut c_char, size_t) -> ssize_t,
        fail -1;
    /// `llistxattr(2)`.
    fn llistxattr(path: *const c_char, list: *mut c_char, size: size_t) -> ssize_t
        = c"llistxattr" as unsafe extern "C" fn(*const c_char, *mut c_char, size_t) -> ssize_t,
        fail -1;
    /// `scandir(3)` (the filter and comparison functions as opaque pointers).
    fn scandir(path: *const c_char, list: *mut c_void, filter: *mut c_void, cmp: *mut c_void)
        -> c_int
        = c"scandir" as unsafe extern "C" fn(*const c_char, *mut c_void, *mut c_void,
            *mut c_void) -> c_int,
        fail -1;
    /// `scandir64(3)`.
    fn scandir64(path: *const c_char, list: *mut c_void, filter: *mut c_void, cmp: *mut c_void)
        -> c_int
        = c"scandir64" as unsafe extern "C" fn(*const c_char, *mut c_void, *mut c_void,
            *mut c_void) -> c_int,
        fail -1;
    /// `scandirat(3)`.
    fn scandirat(dirfd: c_int, path: *const c_char, list: *mut c_void, filter: *mut c_void,
        cmp: *mut c_void) -> c_int
        = c"scandirat" as unsafe extern "C" fn(c_int, *const c_char, *mut c_void, *mut c_void,
            *mut c_void) -> c_int,
        fail -1;
    /// `scandirat64(3)`.
    fn scandirat64(dirfd: c_int, path: *const c_char, list: *mut c_void, filter: *mut c_void,
        cmp: *mut c_void) -> c_int
        = c"scandirat64" as unsafe extern "C" fn(c_int, *const c_char, *mut c_void, *mut c_void,
            *mut c_void) -> c_int,
        fail -1;
    /// `glob(3)` (`glob_t` opaque).
    fn glob(pattern: *const c_char, flags: c_int, errfunc: *mut c_void, pglob: *mut c_void)
        -> c_int
        = c"glob" as unsafe extern "C" fn(*const c_char, c_int, *mut c_void, *mut c_void)
            -> c_int,
        fail -1;
    /// `glob64(3)`.
    fn glob64(pattern: *const c_char, flags: c_int, errfunc: *mut c_void, pglob: *mut c_void)
        -> c_int
        = c"glob64" as unsafe extern "C" fn(*const c_char, c_int, *mut c_void, *mut c_void)
            -> c_int,
        fail -1;
    /// `nftw(3)`.
    fn nftw(path: *const c_char, f: NftwFn, nopenfd: c_int, flags: c_int) -> c_int
        = c"nftw" as unsafe extern "C" fn(*const c_char, NftwFn, c_int, c_int) -> c_int,
        fail -1;
    /// `nftw64(3)`.
    fn nftw64(path: *const c_char, f: NftwFn, nopenfd: c_int, flags: c_int) -> c_int
        = c"nftw64" as unsafe extern "C" fn(*const c_char, NftwFn, c_int, c_int) -> c_int,
        fail -1;
    /// `ftw(3)`.
    fn ftw(path: *const c_char, f: FtwFn, nopenfd: c_int) -> c_int
        = c"ftw" as unsafe extern "C" fn(*const c_char, FtwFn, c_int) -> c_int, fail -1;
    /// `ftw64(3)`.
    fn ftw64(path: *const c_char, f: FtwFn, nopenfd: c_int) -> c_int
        = c"ftw64" as unsafe extern "C" fn(*const c_char, FtwFn, c_int) -> c_int, fail -1;
    /// `canonicalize_file_name(3)`.
    fn canonicalize_file_name(path: *const c_char) -> *mut c_char
        = c"canonicalize_file_name" as unsafe extern "C" fn(*const c_char) -> *mut c_char,
        fail std::ptr::null_mut();
    /// `fopen(3)`.
    fn fopen(path: *const c_char, mode: *const c_char) -> *mut c_void
        = c"fopen" as unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_void,
        fail std::ptr::null_mut();
    /// `fopen64(3)`.
    fn fopen64(path: *const c_char, mode: *const c_char) -> *mut c_void
        = c"fopen64" as unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_void,
        fail std::ptr::null_mut();
    /// `fdopen(3)`.
    fn fdopen(fd: c_int, mode: *const c_char) -> *mut c_void
        = c"fdopen" as unsafe extern "C" fn(c_int, *const c_char) -> *mut c_void,
        fail std::ptr::null_mut();
}
