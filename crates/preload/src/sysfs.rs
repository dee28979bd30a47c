//! The sysfs view of the emulated platform, for device discovery as QEMU, rust-vmm and DPDK do
//! it: `/sys/bus/pci/devices/<bdf>/{vendor,device,class,driver,iommu_group,vfio-dev/vfioN/dev}`,
//! `/sys/bus/pci/drivers/<name>/<bdf>`, `/sys/kernel/iommu_groups/<n>/devices/<bdf>`.
//!
//! The view is a real directory tree (files and relative symlinks laid out as in sysfs) in a
//! private temporary directory (`$TMPDIR/uiommu-sysfs-XXXXXX`, removed at exit by the process
//! that made it), built on the first access to one of its paths. The interposed path functions
//! below rewrite a path under one of [`PREFIXES`] to the tree when it names something in the
//! view — the directory itself (except `/sys/devices`), or an entry whose first component after
//! the prefix is one of ours — and pass every other path on unchanged. The kernel then follows
//! the tree's relative symlinks inside the tree, so `readlink` answers what sysfs would
//! (`../../../kernel/iommu_groups/5`) and `realpath` answers a `/sys/...` path (the tree's
//! prefix is removed from its result).
//!
//! Layout (`R` = the tree's root; `pci0000:00` is the one root every function hangs from):
//!
//! ```text
//! R/sys/devices/pci0000:00/<bdf>/{vendor,device,class,subsystem_vendor,subsystem_device}
//! R/sys/devices/pci0000:00/<bdf>/driver -> ../../../bus/pci/drivers/<name>      (when bound)
//! R/sys/devices/pci0000:00/<bdf>/iommu_group -> ../../../kernel/iommu_groups/<n>
//! R/sys/devices/pci0000:00/<bdf>/vfio-dev/vfio<N>/dev                           (vfio-pci only)
//! R/sys/bus/pci/devices/<bdf> -> ../../../devices/pci0000:00/<bdf>
//! R/sys/bus/pci/drivers/<name>/<bdf> -> ../../../../devices/pci0000:00/<bdf>
//! R/sys/kernel/iommu_groups/<n>/devices/<bdf> -> ../../../../devices/pci0000:00/<bdf>
//! R/dev/vfio/{vfio,<group>...,devices/vfio<N>...}                     ([`crate::devdir`])
//! ```
//!
//! `/dev/vfio` and `/dev/vfio/devices` (the directory paths only, [`crate::devdir::dir_of`])
//! are rewritten to `R/dev/vfio` too, by the same functions.
//!
//! Cost for other paths: a comparison of the first bytes with `/sys/` (no lock, no
//! allocation); for other `/sys/` paths, a few prefix comparisons.

use crate::hook::{ffi, in_hook, Hook};
use crate::node::Layout;
use crate::real;
use libc::{c_char, c_int, c_uint, c_void, size_t, ssize_t};
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use uiommu_uapi::sysfs_tree::{describe, Description, FunctionView, PREFIXES};
use uiommu_uapi::sysfs_tree::{prefix_of, Names};

/// The built view.
pub struct View {
    /// The tree's root directory (without a trailing slash).
    root: Vec<u8>,
    /// The first path components the view has below each of [`PREFIXES`].
    names: Names,
    /// The process that made the tree (only it removes the tree at exit).
    pid: u32,
    /// The `dev/vfio` subtree ([`crate::devdir`]).
    pub(crate) devdir: crate::devdir::Tree,
}

static VIEW: OnceLock<Option<View>> = OnceLock::new();

/// The view, built on first use (with the engine: the platform is read from it). `None` when
/// the engine or the tree cannot be made: paths then go to the real sysfs.
fn view() -> Option<&'static View> {
    VIEW.get_or_init(|| {
        let g = crate::state::global().ok()?;
        let desc = describe(&g.engine);
        let v = build(&desc).ok()?;
        // SAFETY: registering an `extern "C" fn()` with atexit; it only touches the tree.
        unsafe { libc::atexit(remove_at_exit) };
        Some(v)
    })
    .as_ref()
}

/// The view when it was built in this process (never builds it).
pub(crate) fn built() -> Option<&'static View> {
    VIEW.get()?.as_ref()
}

extern "C" fn remove_at_exit() {
    let _h = Hook::enter();
    if let Some(Some(v)) = VIEW.get() {
        if v.pid == std::process::id() {
            v.remove();
        }
    }
}

impl View {
    /// Remove the tree.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(Path::new(std::ffi::OsStr::from_bytes(&self.root)));
    }
}

/// Make the tree for `desc` in a new temporary directory.
pub fn build(desc: &Description) -> std::io::Result<View> {
    let tmp = std::env::var_os("TMPDIR")
        .filter(|t| !t.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let mut template = tmp.join("uiommu-sysfs-XXXXXX").into_os_string().into_vec();
    template.push(0);
    // SAFETY: `template` is a writable NUL-terminated buffer ending in XXXXXX, as mkdtemp needs.
    let r = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
    if r.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    template.pop();
    let root = PathBuf::from(std::ffi::OsString::from_vec(template.clone()));
    let made = uiommu_uapi::sysfs_tree::fill_sys(&root, desc)
        .and_then(|()| uiommu_uapi::sysfs_tree::fill_debugfs(&root))
        .and_then(|()| crate::devdir::fill(&root, desc.vfio_devices, &desc.vfio_groups));
    let devdir = match made {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&root);
            return Err(e);
        }
    };
    let names = Names::of(desc);
    Ok(View {
        root: template,
        names,
        pid: std::process::id(),
        devdir,
    })
}

use std::os::unix::ffi::OsStringExt;

/// The view's copy of `path`, if the view serves it.
pub fn rewrite(path: &[u8]) -> Option<CString> {
    if uiommu_uapi::sysfs_tree::is_debugfs_path(path) {
        // The in-process engine's fault injection (`crate::failnth`); the host engine serves
        // none, and the host's debugfs is left alone.
        if crate::host::on() {
            return None;
        }
        return rewrite_in(&view()?.root, path);
    }
    match crate::devdir::dir_of(path) {
        Some(crate::devdir::DirPath::Dir(_)) => return rewrite_in(&view()?.root, path),
        Some(crate::devdir::DirPath::RealDev) => return Some(c"/dev".to_owned()),
        None => {}
    }
    prefix_of(path)?;
    let v = view()?;
    if !v.names.serves(path) {
        return None;
    }
    rewrite_in(&v.root, path)
}

/// Whether the view serves `path` (building it).
pub(crate) fn view_path(path: &[u8]) -> Option<()> {
    rewrite(path).map(drop)
}

/// Read the view's debugfs file `rel` (below `/sys/kernel/debug/`) into `buf`: the bytes read,
/// `None` when the view is not built or has no such file. No allocation.
pub(crate) fn read_debugfs(rel: &str, buf: &mut [u8]) -> Option<usize> {
    let v = built()?;
    let mut path = [0u8; 1024];
    let parts: [&[u8]; 4] = [
        &v.root,
        uiommu_uapi::sysfs_tree::DEBUGFS,
        b"/",
        rel.as_bytes(),
    ];
    let mut at = 0;
    for p in parts {
        path.get_mut(at..at + p.len())?.copy_from_slice(p);
        at += p.len();
    }
    *path.get_mut(at)? = 0;
    // SAFETY: `path` is NUL-terminated; the real open, read and close of a file of the view.
    unsafe {
        let fd = real::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let n = real::read(fd, buf.as_mut_ptr().cast(), buf.len());
        real::close(fd);
        usize::try_from(n).ok()
    }
}

fn rewrite_in(root: &[u8], path: &[u8]) -> Option<CString> {
    let mut out = Vec::with_capacity(root.len() + path.len() + 1);
    out.extend_from_slice(root);
    out.extend_from_slice(path);
    CString::new(out).ok()
}

/// Whether the C string `path` starts with `prefix` (stops at the first mismatching byte).
///
/// # Safety
/// `path` is null or NUL-terminated; `prefix` has no NUL.
unsafe fn starts_with(path: *const c_char, prefix: &[u8]) -> bool {
    if path.is_null() {
        return false;
    }
    for (i, &want) in prefix.iter().enumerate() {
        // SAFETY: every byte before `i` matched a non-NUL byte of `prefix`, so the string has
        // not ended before index `i`.
        if unsafe { *path.add(i) } as u8 != want {
            return false;
        }
    }
    true
}

/// Whether the C string `path` may be served by the view: it starts with `/sys/` or
/// `/dev/vfio` (the fast path: stops at the first mismatching byte).
///
/// # Safety
/// `path` is null or NUL-terminated.
unsafe fn may_be_view(path: *const c_char) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe { starts_with(path, b"/sys/") || starts_with(path, b"/dev/vfio") }
}

/// Call `f` with the path the program means: the view's copy for a sysfs path it serves,
/// else `path` itself. The second argument of `f` tells whether the path was rewritten.
///
/// # Safety
/// `path` is null or NUL-terminated.
unsafe fn mapped<R>(path: *const c_char, f: impl FnOnce(*const c_char, bool) -> R) -> R {
    // SAFETY: forwarded from the caller.
    if !unsafe { may_be_view(path) } || in_hook() {
        return f(path, false);
    }
    let h = Hook::enter();
    // SAFETY: `path` is NUL-terminated (checked non-null by may_be_view).
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    let rewritten = rewrite(bytes);
    // The real function runs outside the library: callbacks it makes into the program
    // (scandir's filter, nftw's function) are served as any call of the program.
    drop(h);
    match rewritten {
        Some(p) => f(p.as_ptr(), true),
        None => f(path, false),
    }
}

/// Remove the view's root from the front of the NUL-terminated path at `out` (a `realpath`
/// result), in place.
///
/// # Safety
/// `out` is a writable NUL-terminated string.
unsafe fn unmap_result(out: *mut c_char) {
    let Some(Some(v)) = VIEW.get() else { return };
    // SAFETY: the caller's contract.
    let s = unsafe { CStr::from_ptr(out) }.to_bytes();
    if s.len() > v.root.len() && s.starts_with(&v.root) && s[v.root.len()] == b'/' {
        let keep = s.len() - v.root.len();
        // SAFETY: moves the tail (with its NUL) to the front of the same buffer; the regions
        // may overlap, which `copy` allows.
        unsafe { std::ptr::copy(out.add(v.root.len()), out, keep + 1) };
    }
}

macro_rules! path_fn {
    ($(#[$doc:meta])* fn $name:ident($($pre:ident: $pt:ty,)* @path $path:ident $(, $arg:ident: $t:ty)*) -> $ret:ty = $real:path, fail $fail:expr;) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the C function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($pre: $pt,)* $path: *const c_char $(, $arg: $t)*) -> $ret {
            ffi($fail, || {
                // SAFETY: the caller's arguments are passed on, the path possibly replaced by
                // the view's copy (a NUL-terminated string alive during the call).
                unsafe { mapped($path, |p, _| $real($($pre,)* p $(, $arg)*)) }
            })
        }
    };
}

/// A stat-family call on one of our `/dev` paths: the node's stat (or ENOENT); `None` for any
/// other path.
///
/// # Safety
/// `path` is null or NUL-terminated.
unsafe fn dev_stat(path: *const c_char, layout: Layout, buf: *mut c_void) -> Option<c_int> {
    // SAFETY: forwarded from the caller.
    let target = unsafe { crate::classify(path) }?;
    if in_hook() {
        return None;
    }
    let _h = Hook::enter();
    Some(crate::node::stat_path(target, layout, buf))
}

/// Whether an `*at` call names `dirfd` itself (`AT_EMPTY_PATH` with an empty or null path).
///
/// # Safety
/// `path` is null or NUL-terminated.
unsafe fn names_dirfd(path: *const c_char, flags: c_int) -> bool {
    // SAFETY: a non-null path is NUL-terminated (the caller's contract).
    flags & libc::AT_EMPTY_PATH != 0 && (path.is_null() || unsafe { *path } == 0)
}

macro_rules! stat_fn {
    ($(#[$doc:meta])* fn $name:ident($($pre:ident: $pt:ty,)* @path $path:ident, @buf $buf:ident: $layout:ident
        $(, $arg:ident: $t:ty)*) -> c_int = $real:path $(, at $dirfd:ident $flags:ident)?;) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the C function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            $($pre: $pt,)* $path: *const c_char, $buf: *mut c_void $(, $arg: $t)*
        ) -> c_int {
            ffi(-1, || {
                // SAFETY: the caller's arguments are passed on, the path possibly replaced by
                // the view's copy (a NUL-terminated string alive during the call).
                let real_op = |p| unsafe { $real($($pre,)* p, $buf $(, $arg)*) };
                $(
                    // SAFETY: the caller's path is null or NUL-terminated.
                    if unsafe { names_dirfd($path, $flags) } {
                        let real_fd = || real_op($path);
                        return crate::node::stat_fd($dirfd, Layout::$layout, $buf, real_fd);
                    }
                )?
                // SAFETY: the caller's path is null or NUL-terminated.
                if let Some(r) = unsafe { dev_stat($path, Layout::$layout, $buf) } {
                    return r;
                }
                // SAFETY: the caller's path is null or NUL-terminated.
                let r = unsafe { mapped($path, |p, _| real_op(p)) };
                crate::devdir::fix_stat(r, Layout::$layout, $buf)
            })
        }
    };
}

stat_fn! { /// `stat(2)`: our `/dev` nodes, the view, or real.
fn stat(@path path, @buf buf: Stat) -> c_int = real::stat; }
stat_fn! { /// `stat64(2)`: as `stat`.
fn stat64(@path path, @buf buf: Stat) -> c_int = real::stat64; }
stat_fn! { /// `lstat(2)`: as `stat` (our nodes are not symlinks).
fn lstat(@path path, @buf buf: Stat) -> c_int = real::lstat; }
stat_fn! { /// `lstat64(2)`: as `stat`.
fn lstat64(@path path, @buf buf: Stat) -> c_int = real::lstat64; }
stat_fn! { /// `fstatat(2)`: `AT_EMPTY_PATH` on one of our fds is its node; absolute paths as
/// `stat`.
fn fstatat(dirfd: c_int, @path path, @buf buf: Stat, flags: c_int) -> c_int
= real::fstatat, at dirfd flags; }
stat_fn! { /// `fstatat64(2)`: as `fstatat`.
fn fstatat64(dirfd: c_int, @path path, @buf buf: Stat, flags: c_int) -> c_int
= real::fstatat64, at dirfd flags; }
stat_fn! { /// glibc's `__xstat`: as `stat`.
fn __xstat(ver: c_int, @path path, @buf buf: Stat) -> c_int = real::xstat; }
stat_fn! { /// glibc's `__xstat64`: as `stat`.
fn __xstat64(ver: c_int, @path path, @buf buf: Stat) -> c_int = real::xstat64; }
stat_fn! { /// glibc's `__lxstat`: as `stat`.
fn __lxstat(ver: c_int, @path path, @buf buf: Stat) -> c_int = real::lxstat; }
stat_fn! { /// glibc's `__lxstat64`: as `stat`.
fn __lxstat64(ver: c_int, @path path, @buf buf: Stat) -> c_int = real::lxstat64; }
stat_fn! { /// glibc's `__fxstatat`: as `fstatat`.
fn __fxstatat(ver: c_int, dirfd: c_int, @path path, @buf buf: Stat, flags: c_int) -> c_int
= real::fxstatat, at dirfd flags; }
stat_fn! { /// glibc's `__fxstatat64`: as `fstatat`.
fn __fxstatat64(ver: c_int, dirfd: c_int, @path path, @buf buf: Stat, flags: c_int) -> c_int
= real::fxstatat64, at dirfd flags; }

/// `statx(2)`: `AT_EMPTY_PATH` on one of our fds is its node; our `/dev` paths are nodes;
/// view paths on the view.
///
/// # Safety
/// As `statx(2)`.
#[no_mangle]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: c_uint,
    buf: *mut c_void,
) -> c_int {
    ffi(-1, || {
        // SAFETY: the caller's arguments are passed on unchanged.
        let real_op = |p| unsafe { real::statx(dirfd, p, flags, mask, buf) };
        // SAFETY: the caller's path is null or NUL-terminated.
        if unsafe { names_dirfd(path, flags) } {
            return crate::node::stat_fd(dirfd, Layout::Statx, buf, || real_op(path));
        }
        // SAFETY: the caller's path is null or NUL-terminated.
        if let Some(r) = unsafe { dev_stat(path, Layout::Statx, buf) } {
            return r;
        }
        // SAFETY: the path possibly replaced by the view's copy.
        let r = unsafe { mapped(path, |p, _| real_op(p)) };
        crate::devdir::fix_stat(r, Layout::Statx, buf)
    })
}

/// `fstat(2)`: one of our fds opened from a `/dev` path is that character device.
///
/// # Safety
/// As `fstat(2)`.
#[no_mangle]
pub unsafe extern "C" fn fstat(fd: c_int, buf: *mut c_void) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::fstat(fd, buf) };
    ffi(-1, || crate::node::stat_fd(fd, Layout::Stat, buf, real_op))
}

/// `fstat64(2)`: as `fstat`.
///
/// # Safety
/// As `fstat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn fstat64(fd: c_int, buf: *mut c_void) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::fstat64(fd, buf) };
    ffi(-1, || crate::node::stat_fd(fd, Layout::Stat, buf, real_op))
}

/// glibc's `__fxstat`: as `fstat`.
///
/// # Safety
/// As `__fxstat`.
#[no_mangle]
pub unsafe extern "C" fn __fxstat(ver: c_int, fd: c_int, buf: *mut c_void) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::fxstat(ver, fd, buf) };
    ffi(-1, || crate::node::stat_fd(fd, Layout::Stat, buf, real_op))
}

/// glibc's `__fxstat64`: as `fstat`.
///
/// # Safety
/// As `__fxstat64`.
#[no_mangle]
pub unsafe extern "C" fn __fxstat64(ver: c_int, fd: c_int, buf: *mut c_void) -> c_int {
    // SAFETY: the caller's arguments are passed on unchanged.
    let real_op = || unsafe { real::fxstat64(ver, fd, buf) };
    ffi(-1, || crate::node::stat_fd(fd, Layout::Stat, buf, real_op))
}

path_fn! { /// `readlink(2)` on the view: the view's symlinks are relative, as sysfs's.
fn readlink(@path path, buf: *mut c_char, size: size_t) -> ssize_t
= real::readlink, fail -1; }
path_fn! { /// `readlinkat(2)` on the view (absolute paths).
fn readlinkat(dirfd: c_int, @path path, buf: *mut c_char, size: size_t) -> ssize_t
= real::readlinkat, fail -1; }
path_fn! { /// glibc's fortified `readlink` on the view.
fn __readlink_chk(@path path, buf: *mut c_char, size: size_t, buflen: size_t) -> ssize_t
= real::readlink_chk, fail -1; }
path_fn! { /// glibc's fortified `readlinkat` on the view (absolute paths).
fn __readlinkat_chk(dirfd: c_int, @path path, buf: *mut c_char, size: size_t,
buflen: size_t) -> ssize_t = real::readlinkat_chk, fail -1; }
path_fn! { /// `opendir(3)` on the view: listing `/sys/bus/pci/devices` lists the emulated
/// machine's functions.
fn opendir(@path path) -> *mut c_void = real::opendir, fail std::ptr::null_mut(); }

/// An access-check of one of our `/dev` paths: a node exists (0) or not (ENOENT); the
/// directories `/dev/vfio` and `/dev/vfio/devices` as [`crate::devdir::access`] answers for
/// `mode` and the real or (`effective`) effective uid. `None` for any other path.
///
/// # Safety
/// `path` is null or NUL-terminated.
unsafe fn dev_access(path: *const c_char, mode: c_int, effective: bool) -> Option<c_int> {
    // SAFETY: forwarded from the caller.
    let target = unsafe { crate::classify(path) };
    // SAFETY: forwarded from the caller.
    if (target.is_none() && !unsafe { starts_with(path, b"/dev/vfio") }) || in_hook() {
        return None;
    }
    let _h = Hook::enter();
    let r = match target {
        Some(t) if crate::target_exists(t) => crate::node::access(t, mode, effective),
        Some(_) => Err(libc::ENOENT),
        None => {
            // SAFETY: `path` is NUL-terminated (non-null: it starts with /dev/vfio).
            let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
            crate::devdir::access(bytes, mode, effective)?
        }
    };
    Some(r.map_or_else(crate::fail, |()| 0))
}

/// `access(2)`: on the view, and our `/dev` nodes and directories exist.
///
/// # Safety
/// As `access(2)`.
#[no_mangle]
pub unsafe extern "C" fn access(path: *const c_char, mode: c_int) -> c_int {
    ffi(-1, || {
        // SAFETY: the caller's arguments are passed on, the path possibly replaced.
        unsafe {
            dev_access(path, mode, false)
                .unwrap_or_else(|| mapped(path, |p, _| real::access(p, mode)))
        }
    })
}

/// `euidaccess(3)`: as [`access`], for the effective uid.
///
/// # Safety
/// As `euidaccess(3)`.
#[no_mangle]
pub unsafe extern "C" fn euidaccess(path: *const c_char, mode: c_int) -> c_int {
    ffi(-1, || {
        // SAFETY: the caller's arguments are passed on, the path possibly replaced.
        unsafe {
            dev_access(path, mode, true)
                .unwrap_or_else(|| mapped(path, |p, _| real::euidaccess(p, mode)))
        }
    })
}

/// `eaccess(3)`: as [`euidaccess`].
///
/// # Safety
/// As `eaccess(3)`.
#[no_mangle]
pub unsafe extern "C" fn eaccess(path: *const c_char, mode: c_int) -> c_int {
    // SAFETY: the same contract.
    unsafe { euidaccess(path, mode) }
}

/// `faccessat(2)`: as [`access`] for absolute paths (`AT_EACCESS`: the effective uid).
///
/// # Safety
/// As `faccessat(2)`.
#[no_mangle]
pub unsafe extern "C" fn faccessat(
    dirfd: c_int,
    path: *const c_char,
    mode: c_int,
    flags: c_int,
) -> c_int {
    ffi(-1, || {
        let effective = flags & libc::AT_EACCESS != 0;
        // SAFETY: the caller's arguments are passed on, the path possibly replaced.
        unsafe {
            dev_access(path, mode, effective)
                .unwrap_or_else(|| mapped(path, |p, _| real::faccessat(dirfd, p, mode, flags)))
        }
    })
}

/// The common body of `realpath` and `__realpath_chk`: resolved in the view, answered as a
/// `/sys/...` path.
///
/// # Safety
/// `path` is null or NUL-terminated; `real_fn` is the real function's call.
unsafe fn realpath_impl(
    path: *const c_char,
    real_fn: impl FnOnce(*const c_char) -> *mut c_char,
) -> *mut c_char {
    ffi(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        unsafe {
            mapped(path, |p, rewritten| {
                let r = real_fn(p);
                if rewritten && !r.is_null() {
                    // SAFETY: realpath returned a NUL-terminated string in writable memory.
                    unmap_result(r);
                }
                r
            })
        }
    })
}

/// `realpath(3)` on the view.
///
/// # Safety
/// As `realpath(3)`.
#[no_mangle]
pub unsafe extern "C" fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char {
    // SAFETY: the caller's arguments are passed on, the path possibly replaced.
    unsafe { realpath_impl(path, |p| real::realpath(p, resolved)) }
}

/// glibc's fortified `realpath`.
///
/// # Safety
/// As `realpath(3)`.
#[no_mangle]
pub unsafe extern "C" fn __realpath_chk(
    path: *const c_char,
    resolved: *mut c_char,
    len: size_t,
) -> *mut c_char {
    // SAFETY: the caller's arguments are passed on, the path possibly replaced.
    unsafe { realpath_impl(path, |p| real::realpath_chk(p, resolved, len)) }
}

/// An xattr call on one of our `/dev` nodes: ENODATA (`get`) or an empty list (`list`), ENOENT
/// for a node that does not exist; `None` for any other path.
///
/// # Safety
/// `path` is null or NUL-terminated.
unsafe fn dev_xattr(path: *const c_char, list: bool) -> Option<ssize_t> {
    // SAFETY: forwarded from the caller.
    let target = unsafe { crate::classify(path) }?;
    if in_hook() {
        return None;
    }
    let _h = Hook::enter();
    let exists = crate::state::global()
        .ok()
        .and_then(|g| crate::node::node_stat(g, target))
        .is_some();
    Some(match (exists, list) {
        (false, _) => crate::fail_ssize(libc::ENOENT),
        (true, true) => 0,
        (true, false) => crate::fail_ssize(libc::ENODATA),
    })
}

macro_rules! xattr_fn {
    ($(#[$doc:meta])* fn $name:ident(@path $path:ident $(, $arg:ident: $t:ty)*) = $real:path, list $list:expr;) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the C function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($path: *const c_char $(, $arg: $t)*) -> ssize_t {
            ffi(-1, || {
                // SAFETY: the caller's path is null or NUL-terminated.
                if let Some(r) = unsafe { dev_xattr($path, $list) } {
                    return r;
                }
                // SAFETY: the caller's arguments are passed on, the path possibly replaced.
                unsafe { mapped($path, |p, _| $real(p $(, $arg)*)) }
            })
        }
    };
}

xattr_fn! { /// `getxattr(2)`: our `/dev` nodes have no attributes (ENODATA); view paths on the view.
fn getxattr(@path path, name: *const c_char, value: *mut c_void, size: size_t)
= real::getxattr, list false; }
xattr_fn! { /// `lgetxattr(2)`: as `getxattr`.
fn lgetxattr(@path path, name: *const c_char, value: *mut c_void, size: size_t)
= real::lgetxattr, list false; }
xattr_fn! { /// `listxattr(2)`: our `/dev` nodes list none; view paths on the view.
fn listxattr(@path path, list: *mut c_char, size: size_t) = real::listxattr, list true; }
xattr_fn! { /// `llistxattr(2)`: as `listxattr`.
fn llistxattr(@path path, list: *mut c_char, size: size_t) = real::llistxattr, list true; }

macro_rules! scandir_fn {
    ($(#[$doc:meta])* fn $name:ident($($pre:ident: $pt:ty,)* @path $path:ident) = $real:path;) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the C function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            $($pre: $pt,)* $path: *const c_char, list: *mut c_void, filter: *mut c_void,
            cmp: *mut c_void,
        ) -> c_int {
            ffi(-1, || {
                // SAFETY: the caller's arguments are passed on, the path possibly replaced by
                // the view's copy (a NUL-terminated string alive during the call); scandir
                // fills `list` with as many entries as it returns.
                unsafe {
                    mapped($path, |p, rewritten| {
                        let n = $real($($pre,)* p, list, filter, cmp);
                        if rewritten {
                            crate::devdir::fix_scandir(n, list);
                        }
                        n
                    })
                }
            })
        }
    };
}

scandir_fn! { /// `scandir(3)` on the view (glibc's opens the directory internally); in
/// `/dev/vfio`, the nodes' entries are `DT_CHR` in the result.
fn scandir(@path path) = real::scandir; }
scandir_fn! { /// `scandir64(3)`: as `scandir`.
fn scandir64(@path path) = real::scandir64; }
scandir_fn! { /// `scandirat(3)`: as `scandir` (absolute paths).
fn scandirat(dirfd: c_int, @path path) = real::scandirat; }
scandir_fn! { /// `scandirat64(3)`: as `scandir` (absolute paths).
fn scandirat64(dirfd: c_int, @path path) = real::scandirat64; }

/// `canonicalize_file_name(3)`: as `realpath`.
///
/// # Safety
/// As `canonicalize_file_name(3)`.
#[no_mangle]
pub unsafe extern "C" fn canonicalize_file_name(path: *const c_char) -> *mut c_char {
    // SAFETY: the caller's arguments are passed on, the path possibly replaced.
    unsafe { realpath_impl(path, |p| real::canonicalize_file_name(p)) }
}

/// The view's copy of a glob pattern: patterns below the directories the view owns
/// (`/sys/bus/pci/devices/*/vendor`), or naming one of its entries of `/sys/devices`.
fn rewrite_glob(pattern: &[u8]) -> Option<CString> {
    if crate::devdir::glob_in_tree(pattern) {
        return rewrite_in(&view()?.root, pattern);
    }
    let (i, comp) = prefix_of(pattern)?;
    let v = view()?;
    if let Some(c) = comp {
        if !PREFIXES[i].1 && !v.names.has(i, c) {
            return None;
        }
    }
    rewrite_in(&v.root, pattern)
}

/// The common body of `glob`/`glob64`: the pattern matched in the view, the paths found
/// answered as `/sys/...` paths.
///
/// # Safety
/// As `glob(3)`; `pglob` points to a `glob_t`.
unsafe fn glob_impl(
    pattern: *const c_char,
    pglob: *mut c_void,
    real_fn: impl FnOnce(*const c_char) -> c_int,
) -> c_int {
    ffi(libc::GLOB_ABORTED, || {
        // SAFETY: forwarded from the caller.
        if !unsafe { may_be_view(pattern) } || in_hook() {
            return real_fn(pattern);
        }
        let h = Hook::enter();
        // SAFETY: `pattern` is NUL-terminated (checked non-null by may_be_view).
        let bytes = unsafe { CStr::from_ptr(pattern) }.to_bytes();
        let Some(p) = rewrite_glob(bytes) else {
            drop(h);
            return real_fn(pattern);
        };
        drop(h);
        let r = real_fn(p.as_ptr());
        let g = pglob.cast::<libc::glob_t>();
        if !g.is_null() {
            // SAFETY: glob filled `*pglob`: gl_pathv holds gl_offs slots, then gl_pathc
            // NUL-terminated strings it allocated (writable), then a null.
            unsafe {
                let g = &*g;
                if !g.gl_pathv.is_null() {
                    for k in 0..g.gl_pathc {
                        let s = *g.gl_pathv.add(g.gl_offs + k);
                        if !s.is_null() {
                            unmap_result(s);
                        }
                    }
                }
            }
        }
        r
    })
}

/// `glob(3)` on the view: `/sys/bus/pci/devices/*/vendor` lists the emulated machine.
///
/// # Safety
/// As `glob(3)`.
#[no_mangle]
pub unsafe extern "C" fn glob(
    pattern: *const c_char,
    flags: c_int,
    errfunc: *mut c_void,
    pglob: *mut c_void,
) -> c_int {
    // SAFETY: the caller's arguments are passed on, the pattern possibly replaced.
    unsafe { glob_impl(pattern, pglob, |p| real::glob(p, flags, errfunc, pglob)) }
}

/// `glob64(3)`: as `glob`.
///
/// # Safety
/// As `glob64(3)`.
#[no_mangle]
pub unsafe extern "C" fn glob64(
    pattern: *const c_char,
    flags: c_int,
    errfunc: *mut c_void,
    pglob: *mut c_void,
) -> c_int {
    // SAFETY: the caller's arguments are passed on, the pattern possibly replaced.
    unsafe { glob_impl(pattern, pglob, |p| real::glob64(p, flags, errfunc, pglob)) }
}

/// `struct FTW` of `nftw`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ftw {
    base: c_int,
    level: c_int,
}

thread_local! {
    /// The program's walk function of the `nftw`/`ftw` running on this thread over the view,
    /// and how many leading bytes (the tree's root) to remove from the paths it is given.
    static WALK: std::cell::Cell<(real::NftwFn, real::FtwFn, usize)> =
        const { std::cell::Cell::new((None, None, 0)) };
}

/// `fpath` without the tree's root (`strip` bytes), when it has it.
///
/// # Safety
/// `fpath` is NUL-terminated.
unsafe fn strip_root(fpath: *const c_char, strip: usize) -> (*const c_char, usize) {
    let Some(Some(v)) = VIEW.get() else {
        return (fpath, 0);
    };
    // SAFETY: the caller's contract.
    let s = unsafe { CStr::from_ptr(fpath) }.to_bytes();
    if strip > 0 && s.len() > strip && s.starts_with(&v.root) && s[strip] == b'/' {
        // SAFETY: `strip` < the string's length.
        (unsafe { fpath.add(strip) }, strip)
    } else {
        (fpath, 0)
    }
}

unsafe extern "C" fn nftw_walk(
    fpath: *const c_char,
    sb: *const c_void,
    flag: c_int,
    ftw: *const c_void,
) -> c_int {
    let (f, _, strip) = WALK.with(std::cell::Cell::get);
    let Some(f) = f else { return -1 };
    // SAFETY: nftw passes a NUL-terminated path and a `struct FTW`.
    let (p, cut) = unsafe { strip_root(fpath, strip) };
    let mut local = if ftw.is_null() {
        Ftw { base: 0, level: 0 }
    } else {
        // SAFETY: as above.
        unsafe { *ftw.cast::<Ftw>() }
    };
    local.base -= cut as c_int;
    // SAFETY: nftw passes a `struct stat` (or null).
    let st = unsafe { fixed_sb(sb) };
    let sb = st
        .as_ref()
        .map_or(sb, |st| (st as *const libc::stat).cast());
    // SAFETY: the program's function, called as nftw would call it.
    unsafe { f(p, sb, flag, (&local as *const Ftw).cast()) }
}

/// The `struct stat` a walk hands the program, when it is of an inode of the `/dev/vfio`
/// subtree: what `stat` of its path says ([`crate::devdir::fixed`]).
///
/// # Safety
/// `sb` is null or points to a `struct stat`.
unsafe fn fixed_sb(sb: *const c_void) -> Option<libc::stat> {
    // SAFETY: the caller's contract.
    let st = unsafe { sb.cast::<libc::stat>().as_ref() }?;
    crate::devdir::fixed(st)
}

unsafe extern "C" fn ftw_walk(fpath: *const c_char, sb: *const c_void, flag: c_int) -> c_int {
    let (_, f, strip) = WALK.with(std::cell::Cell::get);
    let Some(f) = f else { return -1 };
    // SAFETY: ftw passes a NUL-terminated path.
    let (p, _) = unsafe { strip_root(fpath, strip) };
    // SAFETY: ftw passes a `struct stat` (or null).
    let st = unsafe { fixed_sb(sb) };
    let sb = st
        .as_ref()
        .map_or(sb, |st| (st as *const libc::stat).cast());
    // SAFETY: the program's function, called as ftw would call it.
    unsafe { f(p, sb, flag) }
}

/// The common body of the `nftw`/`ftw` family: a walk of a view directory calls the
/// program's function with `/sys/...` paths.
///
/// # Safety
/// `path` is null or NUL-terminated.
unsafe fn walk_impl(
    path: *const c_char,
    walk: (real::NftwFn, real::FtwFn),
    real_fn: impl FnOnce(*const c_char, bool) -> c_int,
) -> c_int {
    ffi(-1, || {
        // SAFETY: forwarded from the caller.
        unsafe {
            mapped(path, |p, rewritten| {
                if !rewritten {
                    return real_fn(p, false);
                }
                let strip = VIEW
                    .get()
                    .and_then(Option::as_ref)
                    .map_or(0, |v| v.root.len());
                let saved = WALK.with(|w| w.replace((walk.0, walk.1, strip)));
                let r = real_fn(p, true);
                WALK.with(|w| w.set(saved));
                r
            })
        }
    })
}

/// `nftw(3)` on the view.
///
/// # Safety
/// As `nftw(3)`.
#[no_mangle]
pub unsafe extern "C" fn nftw(
    path: *const c_char,
    f: real::NftwFn,
    nopenfd: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments are passed on, the path and function possibly replaced.
    unsafe {
        walk_impl(path, (f, None), |p, ours| {
            real::nftw(p, if ours { Some(nftw_walk) } else { f }, nopenfd, flags)
        })
    }
}

/// `nftw64(3)`: as `nftw`.
///
/// # Safety
/// As `nftw64(3)`.
#[no_mangle]
pub unsafe extern "C" fn nftw64(
    path: *const c_char,
    f: real::NftwFn,
    nopenfd: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments are passed on, the path and function possibly replaced.
    unsafe {
        walk_impl(path, (f, None), |p, ours| {
            real::nftw64(p, if ours { Some(nftw_walk) } else { f }, nopenfd, flags)
        })
    }
}

/// `ftw(3)` on the view.
///
/// # Safety
/// As `ftw(3)`.
#[no_mangle]
pub unsafe extern "C" fn ftw(path: *const c_char, f: real::FtwFn, nopenfd: c_int) -> c_int {
    // SAFETY: the caller's arguments are passed on, the path and function possibly replaced.
    unsafe {
        walk_impl(path, (None, f), |p, ours| {
            real::ftw(p, if ours { Some(ftw_walk) } else { f }, nopenfd)
        })
    }
}

/// `ftw64(3)`: as `ftw`.
///
/// # Safety
/// As `ftw64(3)`.
#[no_mangle]
pub unsafe extern "C" fn ftw64(path: *const c_char, f: real::FtwFn, nopenfd: c_int) -> c_int {
    // SAFETY: the caller's arguments are passed on, the path and function possibly replaced.
    unsafe {
        walk_impl(path, (None, f), |p, ours| {
            real::ftw64(p, if ours { Some(ftw_walk) } else { f }, nopenfd)
        })
    }
}

/// `open(2)` flags for an `fopen` mode string.
pub fn fopen_flags(mode: &[u8]) -> Option<c_int> {
    let (first, rest) = mode.split_first()?;
    let mut flags = match first {
        b'r' => libc::O_RDONLY,
        b'w' => libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        b'a' => libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        _ => return None,
    };
    for &c in rest {
        match c {
            b'+' => flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR,
            b'e' => flags |= libc::O_CLOEXEC,
            b'x' => flags |= libc::O_EXCL,
            b',' => break,
            _ => {}
        }
    }
    Some(flags)
}

/// The common body of `fopen`/`fopen64`: our `/dev` files (opened as `open` opens them, then
/// `fdopen`), the view's files, or the real function.
///
/// # Safety
/// `path` and `mode` are null or NUL-terminated.
unsafe fn fopen_impl(
    path: *const c_char,
    mode: *const c_char,
    real_fn: impl FnOnce(*const c_char) -> *mut c_void,
) -> *mut c_void {
    ffi(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        if let Some(target) = unsafe { crate::classify(path) } {
            if !in_hook() && !mode.is_null() {
                let _h = Hook::enter();
                // SAFETY: `mode` is NUL-terminated (fopen's contract), and not null.
                let m = unsafe { CStr::from_ptr(mode) }.to_bytes();
                let Some(flags) = fopen_flags(m) else {
                    crate::real::set_errno(libc::EINVAL);
                    return std::ptr::null_mut();
                };
                let fd = match crate::open_ours(target, flags) {
                    Ok(fd) => {
                        crate::stats::open(target);
                        fd
                    }
                    Err(e) => {
                        crate::real::set_errno(e);
                        return std::ptr::null_mut();
                    }
                };
                // SAFETY: `fd` is the file just opened; `mode` is the caller's string.
                let f = unsafe { real::fdopen(fd, mode) };
                if f.is_null() {
                    let e = crate::real::errno();
                    // SAFETY: closes the fd made above, which the program never saw.
                    unsafe { real::close(fd) };
                    drop(crate::state::global().map(crate::remote::sweep));
                    crate::real::set_errno(e);
                }
                return f;
            }
        }
        // SAFETY: the caller's arguments are passed on, the path possibly replaced.
        unsafe { mapped(path, |p, _| real_fn(p)) }
    })
}

/// `fopen(3)`. glibc's `fopen` opens through an internal call that no preload library sees,
/// so it is interposed itself.
///
/// # Safety
/// As `fopen(3)`.
#[no_mangle]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut c_void {
    // SAFETY: the caller's arguments are passed on, the path possibly replaced.
    unsafe { fopen_impl(path, mode, |p| real::fopen(p, mode)) }
}

/// `fopen64(3)`.
///
/// # Safety
/// As `fopen64(3)`.
#[no_mangle]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut c_void {
    // SAFETY: the caller's arguments are passed on, the path possibly replaced.
    unsafe { fopen_impl(path, mode, |p| real::fopen64(p, mode)) }
}

/// The `open` family's sysfs rewrite: call `f` with the path to open.
///
/// # Safety
/// `path` is null or NUL-terminated.
pub(crate) unsafe fn open_path<R>(path: *const c_char, f: impl FnOnce(*const c_char) -> R) -> R {
    // SAFETY: forwarded from the caller.
    unsafe { mapped(path, |p, _| f(p)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_components() {
        assert_eq!(prefix_of(b"/sys/bus/pci/devices"), Some((0, None)));
        assert_eq!(prefix_of(b"/sys/bus/pci/devices/"), Some((0, None)));
        assert_eq!(
            prefix_of(b"/sys/bus/pci/devices/0000:01:00.0/vendor"),
            Some((0, Some(&b"0000:01:00.0"[..])))
        );
        assert_eq!(prefix_of(b"/sys/bus/pci/devicesX"), None);
        assert_eq!(
            prefix_of(b"/sys/kernel/iommu_groups/5"),
            Some((2, Some(&b"5"[..])))
        );
        // /sys/devices itself stays the real one.
        assert_eq!(prefix_of(b"/sys/devices"), None);
        assert_eq!(
            prefix_of(b"/sys/devices/pci0000:00/x"),
            Some((3, Some(&b"pci0000:00"[..])))
        );
        assert_eq!(prefix_of(b"/sys/class/net"), None);
    }

    #[test]
    fn fopen_modes() {
        assert_eq!(fopen_flags(b"r"), Some(libc::O_RDONLY));
        assert_eq!(fopen_flags(b"r+e"), Some(libc::O_RDWR | libc::O_CLOEXEC));
        assert_eq!(
            fopen_flags(b"wx"),
            Some(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL)
        );
        assert_eq!(fopen_flags(b""), None);
        assert_eq!(fopen_flags(b"q"), None);
    }

    #[test]
    fn the_tree_has_sysfs_layout() {
        let e = uiommu_core::Engine::builtin();
        let d = describe(&e);
        let v = build(&d).unwrap();
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&v.root));
        let dev = root.join("sys/bus/pci/devices/0000:01:00.0");
        assert_eq!(
            std::fs::read_to_string(dev.join("vendor")).unwrap().trim(),
            format!(
                "0x{:04x}",
                d.funcs
                    .iter()
                    .find(|f| f.bdf == "0000:01:00.0")
                    .unwrap()
                    .vendor
            )
        );
        assert_eq!(
            std::fs::read_link(dev.join("iommu_group")).unwrap(),
            PathBuf::from("../../../kernel/iommu_groups/5")
        );
        assert_eq!(
            std::fs::canonicalize(dev.join("iommu_group")).unwrap(),
            std::fs::canonicalize(root.join("sys/kernel/iommu_groups/5")).unwrap()
        );
        assert_eq!(
            std::fs::read_link(dev.join("driver")).unwrap(),
            PathBuf::from("../../../bus/pci/drivers/vfio-pci")
        );
        assert_eq!(
            std::fs::read_to_string(dev.join("vfio-dev/vfio0/dev")).unwrap(),
            "511:0\n"
        );
        let members: std::collections::BTreeSet<_> =
            std::fs::read_dir(root.join("sys/kernel/iommu_groups/6/devices"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
        assert_eq!(
            members,
            ["0000:02:00.0", "0000:02:00.1"].map(String::from).into()
        );
        assert!(std::fs::metadata(
            root.join("sys/kernel/iommu_groups/6/devices/0000:02:00.1/class")
        )
        .is_ok());
        assert!(v.names.has(1, b"nvme"));
        assert_eq!(
            rewrite_in(b"/r", b"/sys/x").unwrap().as_bytes(),
            b"/r/sys/x"
        );
        let mut nodes: Vec<_> = std::fs::read_dir(root.join("dev/vfio"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        nodes.sort();
        assert_eq!(nodes, ["14", "5", "6", "7", "devices", "vfio"]);
        assert_eq!(
            std::fs::read_dir(root.join("dev/vfio/devices"))
                .unwrap()
                .count(),
            d.vfio_devices
        );
        v.remove();
        assert!(!root.exists());
    }
}
