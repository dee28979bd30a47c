//! The process-wide state: one engine, the program's memory, the table of open files.
//!
//! The engine is built lazily, on the first open of one of our paths, from the platform file
//! named by `UIOMMU_PLATFORM` (the built-in default platform when unset) and the limits and
//! privileges of the real process: `RLIMIT_MEMLOCK` (`getrlimit`), `CAP_IPC_LOCK` and
//! `CAP_SYS_RESOURCE` from the effective capability set (`CapEff` in `/proc/self/status`,
//! bits 14 and 24), both granted regardless when `UIOMMU_CAPS=all` is set (opt-in, for
//! programs written for root, such as the kernel selftests). The program's memory is [`ProcessMemory::this`], registered once as the
//! engine's address space.
//!
//! Fork: the child of a `fork` gets a copy of this state whose locks may have been held by
//! threads that do not exist in the child, and whose memory accessor names the parent. A
//! `pthread_atfork` child handler therefore forgets the state (leaking the copy, never running
//! its teardown): the ioctls of inherited fds are served by the parent's engine
//! (`crate::remote`), and the next open of `/dev/iommu` builds a fresh engine for the child.

use crate::real;
use crate::table::{inode_of, FileTable, InodeKey};
use libc::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;
use uiommu_core::{Context, Engine, EngineConfig};
use uiommu_platform::memory::{SpaceId, UserMemory};
use uiommu_platform::process_memory::ProcessMemory;
use uiommu_platform::topology::Topology;
use uiommu_platform::Platform;
use uiommu_uapi::{Caller, EngineFile, Errno, FdTable};

/// Page size the engine accounts in.
const PAGE: u64 = 4096;

pub(crate) use uiommu_uapi::file::{Kind, OpenFile};

/// The process-wide state.
pub(crate) struct Global {
    /// The engine serving this process.
    pub engine: Arc<Engine>,
    /// This process's memory, as handlers read and write it.
    pub mem: Arc<ProcessMemory>,
    /// Its address space in the engine.
    pub space: SpaceId,
    /// Our open files.
    pub files: FileTable<OpenFile>,
    /// The fault queues' readiness eventfds (`crate::poll`).
    pub ready: crate::poll::Registry,
}

/// The state, once built (null before, and again in a forked child).
static GLOBAL: AtomicPtr<Global> = AtomicPtr::new(std::ptr::null_mut());
/// Whether the fork handler is registered.
static ATFORK: AtomicBool = AtomicBool::new(false);
/// Whether a failure to build the engine was reported on stderr already.
static REPORTED: AtomicBool = AtomicBool::new(false);

/// The state if it was built: `None` means no fd of the process is ours.
pub(crate) fn global_if_any() -> Option<&'static Global> {
    let p = GLOBAL.load(Ordering::Acquire);
    // SAFETY: a non-null GLOBAL points to a leaked Box<Global> that is never freed (the fork
    // handler nulls the pointer and leaks the state), so it is valid for 'static.
    unsafe { p.as_ref() }
}

/// The state, built on first use.
pub(crate) fn global() -> Result<&'static Global, Errno> {
    if let Some(g) = global_if_any() {
        return Ok(g);
    }
    let built = match build() {
        Ok(g) => g,
        Err(msg) => {
            if !REPORTED.swap(true, Ordering::Relaxed) {
                eprintln!("uiommu: {msg}");
            }
            return Err(libc::ENODEV);
        }
    };
    register_atfork();
    let new = Box::into_raw(Box::new(built));
    match GLOBAL.compare_exchange(
        std::ptr::null_mut(),
        new,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: `new` was just stored and comes from Box::into_raw; it is never freed.
        Ok(_) => Ok(unsafe { &*new }),
        Err(winner) => {
            // Another thread built it first: ours was never published.
            // SAFETY: `new` comes from Box::into_raw above and nobody else saw it.
            drop(unsafe { Box::from_raw(new) });
            // SAFETY: `winner` is a published, never-freed state (see global_if_any).
            Ok(unsafe { &*winner })
        }
    }
}

/// The fork child handler: forget the parent's state without touching it.
extern "C" fn forget_after_fork() {
    let old = GLOBAL.swap(std::ptr::null_mut(), Ordering::AcqRel);
    // The old state is leaked on purpose: its locks may be held by threads that were not
    // copied, and its teardown would act on the parent's engine copy for nothing.
    let _ = old;
    crate::remote::after_fork_child();
}

fn register_atfork() {
    if ATFORK.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: registering a prepare handler that starts the server of this engine for the
    // child (`crate::remote`) and a child handler that only swaps atomics and closes the
    // child's copy of the listening socket (async-signal safe); no parent handler.
    unsafe {
        libc::pthread_atfork(
            Some(crate::remote::before_fork),
            None,
            Some(forget_after_fork),
        );
    }
}

/// Build the engine for this process.
fn build() -> Result<Global, String> {
    let platform = match std::env::var_os("UIOMMU_PLATFORM") {
        None => Platform::builtin(),
        Some(path) if path.is_empty() => Platform::builtin(),
        Some(path) => {
            let path = Path::new(&path);
            let topo = Topology::read_file(path)
                .map_err(|e| format!("UIOMMU_PLATFORM={}: {e}", path.display()))?;
            Platform::try_new(topo)
                .map_err(|e| format!("UIOMMU_PLATFORM={}: {e}", path.display()))?
        }
    };
    // The uAPI level the program's engine follows (`uiommu run --kernel`).
    uiommu_uapi::level::set(uiommu_uapi::level::Level::from_env()?);
    let engine = Engine::new(platform, engine_config())
        .map_err(|e| format!("cannot start the engine: {e}"))?;
    let mem = Arc::new(ProcessMemory::this().holding());
    let space = engine.add_space(mem.clone() as Arc<dyn UserMemory>);
    Ok(Global {
        engine,
        mem,
        space,
        files: FileTable::new(),
        ready: Default::default(),
    })
}

/// The limits and privileges of this process, as the kernel would see them.
pub(crate) fn engine_config() -> EngineConfig {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct rlimit into `rl`.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } == 0;
    let memlock = if !ok {
        EngineConfig::default()
            .memlock_limit_pages
            .map(|p| p * PAGE)
    } else if rl.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(rl.rlim_cur)
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    EngineConfig::of_process(
        memlock,
        &status,
        caps_all_requested(std::env::var_os("UIOMMU_CAPS").as_deref()),
    )
}

/// Whether `UIOMMU_CAPS` (its value given) asks for every capability the engine checks: with
/// `UIOMMU_CAPS=all` the emulated caller has CAP_IPC_LOCK and CAP_SYS_RESOURCE whatever the real
/// process has, as a real root process would (the kernel selftests are written for root; a
/// container often lacks CAP_SYS_RESOURCE). Opt-in: any other value, or none, grants nothing.
pub(crate) fn caps_all_requested(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| v == "all")
}

pub use uiommu_uapi::file::vfio_devices;

impl Global {
    /// Number of security contexts open in the engine.
    #[cfg(test)]
    fn contexts_open(&self) -> usize {
        self.engine.contexts()
    }

    /// The caller as handlers see it.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            mem: &*self.mem,
            fds: self,
        }
    }
}

/// Whether `fd` is an open file descriptor.
pub(crate) fn fd_open(fd: c_int) -> bool {
    // SAFETY: F_GETFD takes no argument and only reports the fd flags or EBADF.
    fd >= 0 && unsafe { real::fcntl(fd, libc::F_GETFD, 0) } >= 0
}

/// Whether `fd` is an eventfd (its `/proc/self/fd` link is `anon_inode:[eventfd]`).
pub(crate) fn is_eventfd(fd: c_int) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|t| t.as_os_str() == "anon_inode:[eventfd]")
}

/// A function that signals the eventfd `dup`, a private fd of this library that the function
/// owns from now on (closed on error, or when the function is dropped).
pub(crate) fn eventfd_signal(dup: c_int) -> Result<Box<dyn Fn() + Send + Sync>, Errno> {
    let key = match inode_of(dup) {
        Ok(k) => k,
        Err(e) => {
            // SAFETY: closes the fd handed over, which nobody else uses.
            unsafe { real::close(dup) };
            return Err(e);
        }
    };
    let ev = EventFd { fd: dup, key };
    Ok(Box::new(move || ev.signal()))
}

/// A private duplicate of the program's eventfd; closed when the last signal closure goes.
struct EventFd {
    fd: c_int,
    /// The eventfd's inode: a signal is only written while `fd` still names it, so a program
    /// that closed the duplicate behind our back (`closefrom`) never gets 8 bytes written into
    /// whatever file reused the number.
    key: InodeKey,
}

impl EventFd {
    fn signal(&self) {
        if inode_of(self.fd) != Ok(self.key) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an fd this value owns. The real write is
        // called directly: this runs under the engine lock and must not touch the file table.
        // A full counter (EAGAIN) or any other failure loses the signal, as the kernel's
        // eventfd_signal saturates.
        let _ = unsafe { real::write(self.fd, (&one as *const u64).cast(), 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        if inode_of(self.fd) == Ok(self.key) {
            // SAFETY: closes the duplicate this value owns, once (and only while the number
            // still names it).
            unsafe {
                real::close(self.fd);
            }
        }
    }
}

impl FdTable for Global {
    fn iommufd(&self, fd: i32) -> Result<Context, Errno> {
        if !fd_open(fd) {
            return Err(libc::EBADF);
        }
        match self.files.get(fd).as_deref() {
            Some(OpenFile {
                kind: Kind::Iommufd(f),
                ..
            }) => Ok(f.context().clone()),
            // iommufd_ctx_from_fd: a file that is not an iommufd is EBADFD.
            _ => Err(libc::EBADFD),
        }
    }

    fn eventfd(&self, fd: i32) -> Result<Box<dyn Fn() + Send + Sync>, Errno> {
        if !fd_open(fd) {
            return Err(libc::EBADF);
        }
        if !is_eventfd(fd) {
            // eventfd_ctx_fdget on another kind of file.
            return Err(libc::EINVAL);
        }
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open fd; no memory is passed.
        let dup = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(real::errno());
        }
        eventfd_signal(dup)
    }

    fn install(&self, file: Arc<dyn EngineFile>, cloexec: bool) -> Result<i32, Errno> {
        let fd = new_memfd(c"uiommu:file", cloexec)?;
        let open = OpenFile::new(Kind::Engine(file), libc::O_RDWR, None);
        match self.files.insert(fd, open) {
            Ok(file) => {
                self.ready.add(fd, &file);
                Ok(fd)
            }
            Err(e) => {
                // SAFETY: closes the memfd made above, which nobody else has seen.
                unsafe { real::close(fd) };
                Err(e)
            }
        }
    }

    fn uninstall(&self, fd: i32) {
        if let Some(key) = self.files.key(fd) {
            // SAFETY: closes the memfd `install` just made, whose number the program was
            // never told (so no other fd of it exists).
            unsafe { real::close(fd) };
            drop(self.files.remove(key));
            self.ready.refresh();
        }
    }

    fn file(&self, fd: i32) -> Result<Arc<dyn EngineFile>, Errno> {
        match self.files.get(fd).as_deref() {
            Some(OpenFile {
                kind: Kind::Engine(f),
                ..
            }) => Ok(f.clone()),
            _ => Err(libc::EBADF),
        }
    }
}

/// A new memfd named `name` (shown as `/memfd:<name>` in `/proc/self/fd`).
pub(crate) fn new_memfd(name: &std::ffi::CStr, cloexec: bool) -> Result<c_int, Errno> {
    let flags = if cloexec { libc::MFD_CLOEXEC } else { 0 };
    // SAFETY: `name` is NUL-terminated; memfd_create has no memory preconditions. It is not
    // interposed, so this is the real system call wrapper.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        Err(real::errno())
    } else {
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uiommu_caps_all_is_opt_in() {
        use std::ffi::OsStr;
        assert!(caps_all_requested(Some(OsStr::new("all"))));
        assert!(!caps_all_requested(Some(OsStr::new("ALL"))));
        assert!(!caps_all_requested(Some(OsStr::new(""))));
        assert!(!caps_all_requested(None));
    }

    #[test]
    fn effective_caps_parses_the_status_line() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000001004000\nCapBnd:\t1\n";
        let cfg = EngineConfig::of_process(Some(1 << 20), s, false);
        assert!(cfg.cap_ipc_lock && cfg.cap_sys_resource);
        assert_eq!(cfg.memlock_limit_pages, Some(256));
        let none = EngineConfig::of_process(None, "Name: x\n", false);
        assert!(!none.cap_ipc_lock && !none.cap_sys_resource);
        assert!(EngineConfig::of_process(None, "", true).cap_ipc_lock);
    }

    #[test]
    fn engine_config_reads_the_real_memlock_limit() {
        let cfg = engine_config();
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one struct rlimit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) }, 0);
        if rl.rlim_cur == libc::RLIM_INFINITY {
            assert_eq!(cfg.memlock_limit_pages, None);
        } else {
            assert_eq!(cfg.memlock_limit_pages, Some(rl.rlim_cur / PAGE));
        }
    }

    fn test_global() -> Global {
        let engine = Engine::builtin();
        let mem = Arc::new(ProcessMemory::this().holding());
        let space = engine.add_space(mem.clone() as Arc<dyn UserMemory>);
        Global {
            engine,
            mem,
            space,
            files: FileTable::new(),
            ready: Default::default(),
        }
    }

    fn eventfd() -> c_int {
        // SAFETY: eventfd has no memory preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        fd
    }

    fn read_counter(fd: c_int) -> Option<u64> {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64.
        let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
        (n == 8).then_some(v)
    }

    fn close(fd: c_int) {
        // SAFETY: closes an fd the test owns.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn eventfd_signal_survives_the_callers_close_and_closes_its_duplicate() {
        let g = test_global();
        let efd = eventfd();
        let signal = g.eventfd(efd).unwrap();
        signal();
        assert_eq!(read_counter(efd), Some(1));
        // Keep the eventfd object alive through a second fd while the caller closes its own.
        let keep = {
            // SAFETY: dup has no memory preconditions.
            unsafe { libc::dup(efd) }
        };
        close(efd);
        signal();
        signal();
        assert_eq!(read_counter(keep), Some(2));
        let key = inode_of(keep).unwrap();
        let fds_of_the_eventfd = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<c_int>().ok())
                .filter(|&fd| inode_of(fd) == Ok(key))
                .count()
        };
        assert_eq!(fds_of_the_eventfd(), 2, "`keep` and the private duplicate");
        drop(signal);
        assert_eq!(
            fds_of_the_eventfd(),
            1,
            "the duplicate is closed with the closure"
        );
        close(keep);
    }

    #[test]
    fn eventfd_refuses_closed_fds_and_other_files() {
        let g = test_global();
        // A number no test opens (a closed fd's number could be reused by a parallel test).
        assert_eq!(g.eventfd(c_int::MAX).err(), Some(libc::EBADF));
        assert_eq!(g.eventfd(-1).err(), Some(libc::EBADF));
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        assert_eq!(g.eventfd(fd).err(), Some(libc::EINVAL));
    }

    #[test]
    fn iommufd_lookup_finds_our_contexts_only() {
        let g = test_global();
        let fd = new_memfd(c"uiommu:iommu", true).unwrap();
        let file = uiommu_uapi::iommufd::IommufdFile::open(&g.engine, g.space).unwrap();
        let id = file.context().id();
        g.files
            .insert(fd, OpenFile::new(Kind::Iommufd(file), libc::O_RDWR, None))
            .unwrap();
        assert_eq!(g.iommufd(fd).unwrap().id(), id);
        // SAFETY: dup has no memory preconditions.
        let d = unsafe { libc::dup(fd) };
        assert_eq!(g.iommufd(d).unwrap().id(), id);
        let other = new_memfd(c"uiommu:iommu", true).unwrap();
        assert_eq!(g.iommufd(other).err(), Some(libc::EBADFD));
        close(other);
        assert_eq!(g.iommufd(c_int::MAX).err(), Some(libc::EBADF));
        assert_eq!(g.contexts_open(), 1);
        close(fd);
        assert!(g.files.sweep().is_empty(), "the dup keeps it");
        close(d);
        drop(g.files.sweep());
        assert_eq!(g.contexts_open(), 0, "the last close tore the context down");
    }

    #[test]
    fn installed_files_are_found_and_read_through_the_table() {
        struct Hello;
        impl EngineFile for Hello {
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
        }
        let g = test_global();
        let fd = g.install(Arc::new(Hello), true).unwrap();
        let f = g.file(fd).unwrap();
        assert!(f.as_any().is::<Hello>());
        let iommu = new_memfd(c"x", true).unwrap();
        assert_eq!(g.file(iommu).err(), Some(libc::EBADF));
        close(iommu);
        close(fd);
        assert_eq!(g.files.sweep().len(), 1);
    }

    #[test]
    fn vfio_numbering_is_platform_order_of_vfio_pci_functions() {
        let engine = Engine::builtin();
        let devs = vfio_devices(&engine);
        assert!(
            !devs.is_empty(),
            "the built-in platform has vfio-pci functions"
        );
        assert!(devs.windows(2).all(|w| w[0] < w[1]));
        engine.with_platform(|p| {
            for d in &devs {
                assert_eq!(
                    *p.drivers.driver(*d),
                    uiommu_platform::drivers::Driver::VfioPci
                );
            }
        });
    }
}
