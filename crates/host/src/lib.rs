//! uiommu's host engine (`uiommu serve`): one IOMMU subsystem for a host *instance*, serving
//! every process that uses it, as the kernel serves every process of a host.
//!
//! The engine owns the platform (topology, groups, drivers, IOMMU, emulated devices) and every
//! security context. Programs reach it through a front-end (the preload library; the protocol
//! is [`uiommu_proto`]): each file the engine opens for a program is a socket whose other end
//! the engine keeps ([`files`]), so the kernel itself shares it through `dup`, `fork`, `exec`
//! and `SCM_RIGHTS` to any process, and the file lives while any process holds it. Calls come
//! over `SOCK_SEQPACKET` connections to the instance's socket ([`conn`]); the caller is who the
//! kernel says sent the message, its memory is read and written by the engine
//! ([`clients`]), and the file of a call is the fd sent with it.
//!
//! - [`files`]: the open files, their sockets and the watcher of their last close.
//! - [`clients`]: the processes served: identity, memory, pidfds, fds taken from them.
//! - [`conn`]: one connection: messages, credentials, the operations.
//! - [`seccomp`]: the seccomp front-end: the calls a filter stops in static programs.
//! - [`status`]: `uiommu status`.
//! - [`serve`]: the instance's socket and lock, the accept loop, the watcher, idle exit.

#![forbid(unsafe_code)]

pub mod clients;
pub mod conn;
pub mod files;
pub mod ring;
pub mod seccomp;
pub mod status;
pub mod trace;
pub mod view;

use nix::fcntl::{Flock, FlockArg};
use rustix::net::{
    accept_with, bind, listen, socket_with, sockopt, AddressFamily, SocketAddrUnix, SocketFlags,
    SocketType,
};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uiommu_core::{Engine, EngineConfig};
use uiommu_platform::Platform;

/// How the engine serves.
#[derive(Clone, Debug)]
pub struct Config {
    /// The instance name ([`uiommu_proto::valid_instance`]).
    pub instance: String,
    /// Where the platform came from (for `uiommu status`): a file, or "built-in".
    pub platform_source: String,
    /// The engine's own limits and privileges (for calls made without a caller).
    pub engine: EngineConfig,
    /// Every caller has root's privileges in the emulation (`uiommu serve --as-root`); else
    /// only those that ask for them (`uiommu run --as-root`) and run as the engine's uid.
    pub as_root: bool,
    /// Exit after this long with no file open and no program connected (an engine `uiommu
    /// run` started); `None`: serve until killed.
    pub idle_exit: Option<Duration>,
    /// Owner uid, gid and mode of the device nodes (`open` checks them as the VFS does).
    pub node_uid: u32,
    /// Owner gid of the nodes.
    pub node_gid: u32,
    /// Permission bits of the nodes.
    pub node_mode: u32,
    /// Uids served besides the engine's own and root's (every uid when the engine is root).
    pub allow_uids: Vec<u32>,
    /// How long a connection polls for the next call before it sleeps (0: at once).
    pub spin: Duration,
}

impl Config {
    /// Defaults for instance `instance`: nodes owned by the engine's uid, mode 0600; no
    /// other uid served; no idle exit.
    pub fn new(instance: &str) -> Config {
        Config {
            instance: instance.to_string(),
            platform_source: "built-in".into(),
            engine: EngineConfig::default(),
            as_root: false,
            idle_exit: None,
            node_uid: nix::unistd::geteuid().as_raw(),
            node_gid: nix::unistd::getegid().as_raw(),
            node_mode: 0o600,
            allow_uids: Vec::new(),
            spin: Duration::ZERO,
        }
    }
}

/// The running engine.
pub struct Host {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The open files.
    pub files: files::Files,
    /// The processes served.
    pub clients: clients::Clients,
    /// The configuration.
    pub config: Config,
    /// Open connections.
    pub connections: AtomicUsize,
    /// Open connections of programs (those that said hello: a front-end does at load, and
    /// keeps that connection while the program lives); `uiommu status` does not count.
    pub programs: AtomicUsize,
    /// The engine's effective uid.
    euid: u32,
    /// Rings being served (`crate::ring`).
    pub rings: AtomicUsize,
    /// Rings made since the engine started.
    pub rings_made: AtomicUsize,
    /// The sysfs view for programs under the seccomp front-end, made on first use.
    view: std::sync::OnceLock<Option<view::View>>,
    /// When the engine started.
    pub started: Instant,
    /// The live trace's tracers (`uiommu trace`).
    pub tracers: trace::Tracers,
}

impl Host {
    /// The sysfs view of programs under the seccomp front-end (made on first use; `None`
    /// when it cannot be made: their paths then go to the real sysfs).
    pub fn view(&self) -> Option<&view::View> {
        self.view
            .get_or_init(|| view::View::build(&self.engine, &self.config.instance).ok())
            .as_ref()
    }

    /// An engine over `platform` (not yet serving: see [`serve`]).
    pub fn new(platform: Platform, config: Config) -> Result<Arc<Host>, String> {
        let engine = Engine::new(platform, config.engine.clone())
            .map_err(|e| format!("cannot start the engine: {e}"))?;
        // No program code runs beside the engine: the descriptors it keeps are its own.
        uiommu_platform::process_memory::set_private_fds();
        Ok(Arc::new(Host {
            euid: nix::unistd::geteuid().as_raw(),
            engine,
            files: files::Files::new().map_err(|e| format!("epoll: {e}"))?,
            clients: clients::Clients::default(),
            config,
            connections: AtomicUsize::new(0),
            programs: AtomicUsize::new(0),
            rings: AtomicUsize::new(0),
            rings_made: AtomicUsize::new(0),
            view: std::sync::OnceLock::new(),
            started: Instant::now(),
            tracers: trace::Tracers::default(),
        }))
    }

    /// Whether the engine serves processes of real uid `uid`.
    pub fn serves(&self, uid: u32) -> bool {
        let me = self.euid;
        me == 0 || uid == me || uid == 0 || self.config.allow_uids.contains(&uid)
    }

    /// Drop the files nobody holds any more and forget exited processes.
    pub fn reap(&self) {
        let r = self.files.reap();
        for pid in r.exited {
            self.clients.exited(pid);
        }
    }

    /// Whether nothing uses the engine: no file open, no connection.
    fn idle(&self) -> bool {
        self.files.is_empty() && self.programs.load(Ordering::Acquire) == 0
    }
}

/// Why [`serve`] did not start.
#[derive(Debug)]
pub enum ServeError {
    /// Another engine serves the instance (its pid, if it could be read).
    Running(Option<i32>),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Running(Some(pid)) => {
                write!(f, "the instance is served already (pid {pid})")
            }
            ServeError::Running(None) => write!(f, "the instance is served already"),
            ServeError::Other(m) => f.write_str(m),
        }
    }
}

/// The lock file of instance `name`, beside its socket.
pub fn lock_path(name: &str) -> PathBuf {
    uiommu_proto::socket_dir().join(format!("{name}.lock"))
}

/// The pid of the engine serving instance `name`, if one holds its lock.
pub fn running_pid(name: &str) -> Option<i32> {
    let text = std::fs::read_to_string(lock_path(name)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    // A stale pid in the file: whoever holds the lock is the engine.
    let f = std::fs::File::open(lock_path(name)).ok()?;
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        Ok(_) => None,
        Err(_) => Some(pid),
    }
}

/// Take instance `name`'s lock: the lock file, locked, and still the file at its path (an
/// engine that ends removes the file while it holds the lock, so one locked after it was
/// removed is tried again).
fn lock_instance(name: &str) -> Result<Flock<std::fs::File>, ServeError> {
    let path = lock_path(name);
    let err = |e: std::io::Error| ServeError::Other(format!("{}: {e}", path.display()));
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(err)?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| ServeError::Running(running_pid(name)))?;
        use std::os::unix::fs::MetadataExt;
        let held = lock.metadata().map_err(err)?;
        match std::fs::metadata(&path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(lock),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(e)),
        }
    }
}

/// Remove instance `name`'s socket and lock file: for the engine that serves it (holding its
/// lock) as it ends, so that an instance leaves nothing behind in the socket directory.
pub fn remove_instance_files(name: &str) {
    if !uiommu_proto::valid_instance(name) {
        return;
    }
    let _ = std::fs::remove_file(uiommu_proto::socket_path(name));
    let _ = std::fs::remove_dir_all(view::dir_of(name));
    let _ = std::fs::remove_file(lock_path(name));
}

/// Make SIGTERM, SIGINT and SIGHUP end this process in order as instance `name`'s engine:
/// its socket and lock file removed (if it holds the lock), then exit with 128 + the signal.
/// Call before any thread starts: the signals are blocked in the caller and so in every thread
/// started after, and taken by one thread that waits for them.
pub fn end_on_signals(name: &str) {
    use nix::sys::signal::{SigSet, Signal};
    let ending = SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]);
    if ending.thread_block().is_err() {
        return;
    }
    let name = name.to_string();
    let spawned = std::thread::Builder::new()
        .name("uiommu-signals".into())
        .spawn(move || {
            if let Ok(sig) = ending.wait() {
                if running_pid(&name) == Some(std::process::id() as i32) {
                    remove_instance_files(&name);
                }
                std::process::exit(128 + sig as i32);
            }
        });
    if spawned.is_err() {
        let _ = ending.thread_unblock();
    }
}

/// Serve `host`'s instance until killed (or idle, with [`Config::idle_exit`]). `ready` runs
/// once the socket accepts connections.
pub fn serve(host: Arc<Host>, ready: impl FnOnce()) -> Result<(), ServeError> {
    let name = &host.config.instance;
    if !uiommu_proto::valid_instance(name) {
        return Err(ServeError::Other(format!(
            "{name:?}: not a valid instance name"
        )));
    }
    let dir = uiommu_proto::socket_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| ServeError::Other(format!("{}: {e}", dir.display())))?;
    let root = nix::unistd::geteuid().is_root();
    // Others may reach a root engine's directory (the engine checks who calls); a user's is
    // private.
    let _ = std::fs::set_permissions(
        &dir,
        std::fs::Permissions::from_mode(if root { 0o755 } else { 0o700 }),
    );
    // Every served file is a socket of the engine and every process a pidfd: the soft limit
    // of descriptors up to the hard one, as a server that holds many does.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    let mut lock = lock_instance(name)?;
    let _ = lock.set_len(0);
    let _ = write!(lock, "{}", std::process::id());
    let _ = lock.flush();
    let path = uiommu_proto::socket_path(name);
    // Whoever held the lock before is gone: its socket is stale.
    let _ = std::fs::remove_file(&path);
    let other = |what: &str, e: rustix::io::Errno| ServeError::Other(format!("{what}: {e}"));
    let listener = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| other("socket", e))?;
    let addr = SocketAddrUnix::new(&path).map_err(|e| other(&path.display().to_string(), e))?;
    bind(&listener, &addr).map_err(|e| other(&path.display().to_string(), e))?;
    let _ = std::fs::set_permissions(
        &path,
        std::fs::Permissions::from_mode(if root { 0o666 } else { 0o600 }),
    );
    sockopt::set_socket_passcred(&listener, true).map_err(|e| other("SO_PASSCRED", e))?;
    listen(&listener, 128).map_err(|e| other("listen", e))?;
    {
        let host = host.clone();
        std::thread::Builder::new()
            .name("uiommu-watch".into())
            .spawn(move || watch(&host))
            .map_err(|e| ServeError::Other(format!("thread: {e}")))?;
    }
    ready();
    loop {
        let sock = match accept_with(&listener, SocketFlags::CLOEXEC) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
            Err(e) => return Err(other("accept", e)),
        };
        let Ok(cred) = sockopt::socket_peercred(&sock) else {
            continue;
        };
        if !host.serves(cred.uid.as_raw()) {
            // Refused: closed unanswered.
            continue;
        }
        host.connections.fetch_add(1, Ordering::AcqRel);
        let h = host.clone();
        let spawned = std::thread::Builder::new()
            .name("uiommu-conn".into())
            .spawn(move || {
                conn::serve_connection(&h, sock);
                h.connections.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            host.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The watcher: drops files whose last holder closed them, forgets exited processes, and
/// ends an idle on-demand engine.
fn watch(host: &Host) {
    let mut idle_since: Option<Instant> = None;
    loop {
        host.files.wait(if host.config.idle_exit.is_some() {
            250
        } else {
            -1
        });
        host.reap();
        let Some(grace) = host.config.idle_exit else {
            continue;
        };
        if host.idle() {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                remove_instance_files(&host.config.instance);
                // An engine `uiommu run` started logs there; it ended well.
                let _ = std::fs::remove_file(
                    uiommu_proto::socket_dir().join(format!("{}.log", host.config.instance)),
                );
                std::process::exit(0);
            }
        } else {
            idle_since = None;
        }
    }
}

/// The number of an fd the engine owns (for `/proc/self/fd` paths).
pub(crate) fn raw_fd(fd: &impl std::os::fd::AsFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_fd().as_raw_fd()
}
