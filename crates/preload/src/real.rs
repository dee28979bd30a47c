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
    /// `pwrite(2)`.
    fn pwrite(fd: c_int, buf: *const c_void, count: size_t, off: off_t) -> ssize_t
        = c"pwrite" as unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t,
        fail -1;
    /// `pwrite64(2)`.
    fn pwrite64(fd: c_int, buf: *const c_void, count: size_t, off: off64_t) -> ssize_t
        = c"pwrite64" as unsafe extern "C" fn(c_int, *const c_void, size_t, off64_t) -> ssize_t,
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
}
