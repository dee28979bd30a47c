//! This process's server: its state, the stamps in its memfds that name it, starting it at the
//! first `fork` with an engine (and forgetting it in the child), and the reaper that looks at
//! the files held by the family only.

use super::*;

/// This process's server state.
pub(super) struct Server {
    /// The descendants whose memory was used, by pid.
    pub(super) known: Mutex<BTreeMap<i32, Known>>,
    /// Whether the reaper thread runs.
    pub(super) reaping: AtomicBool,
    /// Processes descendants forked (pid → start time): of the family even when reparented.
    pub(super) family: Mutex<BTreeMap<i32, u64>>,
    /// An eventfd that wakes the reaper for a look now (-1: none).
    pub(super) wake: AtomicI32,
    /// Looks asked for, and the last one a reaper's look began after.
    pub(super) asked: AtomicU64,
    pub(super) looked: AtomicU64,
}

/// One descendant's address space.
pub(super) struct Known {
    /// Its start time (`/proc/<pid>/stat` field 22): a reused pid is another process.
    pub(super) start: u64,
    pub(super) mem: Arc<Descendant>,
    pub(super) space: SpaceId,
}

pub(super) fn server() -> Option<&'static Server> {
    let p = SERVER.load(Ordering::Acquire);
    // SAFETY: a non-null SERVER points to a leaked Box<Server> that is never freed (the fork
    // child handler nulls the pointer and leaks it).
    unsafe { p.as_ref() }
}

/// The `st_dev` of memfds.
pub(super) fn memfd_dev() -> Option<u64> {
    let fd = crate::state::new_memfd(c"uiommu:probe", true).ok()?;
    let key = inode_of(fd).ok();
    // SAFETY: closes the memfd just made.
    unsafe { real::close(fd) };
    key.map(|k| k.dev)
}

/// The atfork prepare handler: a process with an engine serves it before it forks.
pub(crate) extern "C" fn before_fork() {
    if crate::host::on() {
        // Under the host engine the kernel shares our files with the child.
        return;
    }
    let _h = Hook::enter();
    let Some(g) = global_if_any() else { return };
    // Read by the child only: whether it may inherit fault queues.
    UPSTREAM_FAULTS.store(!g.ready.is_empty(), Ordering::Release);
    let pid = std::process::id() as i32;
    if SERVER_PID.load(Ordering::Acquire) != pid {
        start_server(pid);
    }
    if SERVER_PID.load(Ordering::Acquire) == pid {
        stamp_files(pid, SERVER_NONCE.load(Ordering::Acquire));
    }
}

/// Where in one of our memfds the name of the server of its engine is written.
pub(super) const STAMP_AT: i64 = 128;
/// The stamp's length at most.
pub(super) const STAMP_LEN: usize = 64;

/// Write the server's name into every memfd of ours this process has open, so that a
/// descendant that `exec`s with one finds the engine again ([`adopt_upstream`]).
pub(super) fn stamp_files(pid: i32, nonce: u64) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<c_int>().ok()) else {
            continue;
        };
        if is_our_memfd(fd) {
            stamp(fd, pid, nonce);
        }
    }
}

/// Write the name of server `pid`/`nonce` into our memfd `fd`.
pub(super) fn stamp(fd: c_int, pid: i32, nonce: u64) {
    let stamp = format!("S {}\n", name(pid, nonce));
    // SAFETY: writes the stamp from a live buffer into a memfd of this library.
    unsafe { real::pwrite(fd, stamp.as_ptr().cast(), stamp.len(), STAMP_AT) };
}

/// Before one of this process's files is sent over a socket: serve the engine (start the
/// server if it does not run) and stamp the file with the server's name, so that a receiver
/// outside the family finds it ([`adopt_upstream`]).
pub(crate) fn serve_sent(fd: c_int) {
    let pid = std::process::id() as i32;
    if SERVER_PID.load(Ordering::Acquire) != pid {
        start_server(pid);
    }
    if SERVER_PID.load(Ordering::Acquire) != pid {
        return;
    }
    stamp(fd, pid, SERVER_NONCE.load(Ordering::Acquire));
}

/// For a memfd of ours this process got from another process's engine — inherited by this
/// image at load (a used file cannot be taken over: its state lives in that engine), or
/// received over a socket (`crate::passing`): the server stamped in it becomes an upstream of
/// this process, as after a `fork`. So a child that forks and `exec`s keeps reaching its
/// parent's files (the parent checks it is of its family), and a process sent a file reaches
/// the sender's engine (the sender checks it holds the file).
pub(crate) fn adopt_upstream(fd: c_int) {
    // Only our memfds are read (a received device or pipe is never touched).
    if !is_our_memfd(fd) {
        return;
    }
    let mut buf = [0u8; STAMP_LEN];
    // SAFETY: reads into a live local buffer from an inherited memfd.
    let n = unsafe { real::pread(fd, buf.as_mut_ptr().cast(), buf.len(), STAMP_AT) };
    let Ok(n) = usize::try_from(n) else { return };
    let Some((pid, nonce)) = parse_stamp(&buf[..n]) else {
        return;
    };
    if pid == std::process::id() as i32 {
        // This process's own engine, which ended with the `exec`.
        return;
    }
    if let Ok(key) = inode_of(fd) {
        MEMFD_DEV.store(key.dev, Ordering::Release);
    }
    let known = UPSTREAMS
        .iter()
        .any(|u| u.pid.load(Ordering::Acquire) == pid && u.nonce.load(Ordering::Acquire) == nonce);
    if known {
        return;
    }
    if let Some(free) = UPSTREAMS
        .iter()
        .find(|u| u.pid.load(Ordering::Acquire) == 0)
    {
        free.nonce.store(nonce, Ordering::Release);
        free.pid.store(pid, Ordering::Release);
        allow_access_by(pid);
    }
}

/// Under Yama `ptrace_scope` 1 only an ancestor may read a process's memory: let the server
/// `pid` (which may not be one, for a file received over a socket) read this process's.
pub(super) fn allow_access_by(pid: i32) {
    let restricted = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .is_ok_and(|s| s.trim() == "1");
    if restricted && !descends_from(std::process::id() as i32, pid) {
        // SAFETY: PR_SET_PTRACER takes a pid; no memory is passed.
        unsafe { libc::prctl(libc::PR_SET_PTRACER, pid as libc::c_ulong, 0, 0, 0) };
    }
}

/// The pid and nonce of a stamp (`S uiommu-<pid>-<nonce>\n`).
pub(super) fn parse_stamp(b: &[u8]) -> Option<(i32, u64)> {
    let line = b.strip_prefix(b"S uiommu-")?;
    let end = line.iter().position(|&c| c == b'\n')?;
    let text = std::str::from_utf8(&line[..end]).ok()?;
    let (pid, nonce) = text.split_once('-')?;
    let pid = pid.parse::<i32>().ok().filter(|&p| p > 0)?;
    Some((pid, u64::from_str_radix(nonce, 16).ok()?))
}

/// Start this process's server (see the module documentation).
pub(super) fn start_server(pid: i32) {
    let Some(dev) = memfd_dev() else { return };
    let nonce = random();
    let Ok(addr) = SocketAddr::from_abstract_name(name(pid, nonce).as_bytes()) else {
        return;
    };
    let Ok(listener) = UnixListener::bind_addr(&addr) else {
        return;
    };
    MEMFD_DEV.store(dev, Ordering::Release);
    let srv = Server::default();
    // SAFETY: eventfd has no memory preconditions; the fd is the server's for its lifetime.
    let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    srv.wake.store(wake, Ordering::Release);
    SERVER.store(Box::into_raw(Box::new(srv)), Ordering::Release);
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
    for u in &UPSTREAMS {
        u.drop_link_after_fork();
    }
    let pid = SERVER_PID.swap(0, Ordering::AcqRel);
    if pid != 0 {
        // The parent's server comes first; the parent's own upstreams follow.
        for i in (1..MAX_UPSTREAMS).rev() {
            let (to, from) = (&UPSTREAMS[i], &UPSTREAMS[i - 1]);
            to.nonce
                .store(from.nonce.load(Ordering::Acquire), Ordering::Release);
            to.pid
                .store(from.pid.load(Ordering::Acquire), Ordering::Release);
        }
        UPSTREAMS[0]
            .nonce
            .store(SERVER_NONCE.load(Ordering::Acquire), Ordering::Release);
        UPSTREAMS[0].pid.store(pid, Ordering::Release);
    }
    // The parent's server state and readiness cache are leaked: their locks may be held by
    // threads not copied.
    SERVER.store(std::ptr::null_mut(), Ordering::Release);
    READY.store(std::ptr::null_mut(), Ordering::Release);
    crate::passing::forget_after_fork();
    let fd = SERVER_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        // SAFETY: closes the child's copy of the parent's listening socket (async-signal safe).
        unsafe { real::close(fd) };
    }
}

pub(super) fn random() -> u64 {
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

impl Default for Server {
    fn default() -> Server {
        Server {
            known: Mutex::default(),
            reaping: AtomicBool::new(false),
            family: Mutex::default(),
            wake: AtomicI32::new(-1),
            asked: AtomicU64::new(0),
            looked: AtomicU64::new(0),
        }
    }
}

impl Server {
    pub(super) fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address space of descendant `pid`, registered on first use.
    pub(super) fn space_of(&self, g: &Global, pid: i32) -> (Arc<Descendant>, SpaceId) {
        let start = start_time(pid);
        let mut known = self.known();
        if let Some(k) = known.get(&pid) {
            if k.start == start {
                return (k.mem.clone(), k.space);
            }
            k.mem.retire();
        }
        let mem = Arc::new(Descendant::new(pid, g.mem.clone()));
        let space = g.engine.add_space(mem.clone() as Arc<dyn UserMemory>);
        known.insert(
            pid,
            Known {
                start,
                mem: mem.clone(),
                space,
            },
        );
        (mem, space)
    }

    /// Make `pid` a member of the family (a process this one sent a file to).
    pub(super) fn join(&self, pid: i32) {
        let mut family = self.family.lock().unwrap_or_else(|e| e.into_inner());
        family.insert(pid, start_time(pid));
    }

    /// Whether `pid` is a live member of the family (same process as recorded).
    pub(super) fn family_member(&self, pid: i32) -> bool {
        let family = self.family.lock().unwrap_or_else(|e| e.into_inner());
        family.get(&pid).is_some_and(|&s| s == start_time(pid))
    }

    /// The live members of the family; the others are forgotten.
    pub(super) fn family_alive(&self) -> Vec<i32> {
        let mut family = self.family.lock().unwrap_or_else(|e| e.into_inner());
        family.retain(|&pid, &mut s| s == start_time(pid));
        family.keys().copied().collect()
    }

    /// Release the memory accessors of descendants that exited.
    pub(super) fn forget_gone(&self, live: &BTreeSet<i32>) {
        self.known().retain(|pid, k| {
            let keep = live.contains(pid);
            if !keep {
                k.mem.retire();
            }
            keep
        });
    }

    /// Look again, every [`REAP_INTERVAL`], at files that only descendants hold.
    pub(super) fn reap(&'static self, g: &'static Global) {
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("uiommu-reap".into())
            .spawn(move || {
                let _h = Hook::enter();
                loop {
                    self.wait_for_wake();
                    let asked = self.asked.load(Ordering::Acquire);
                    let (removed, held) = sweep_and_see(g);
                    self.looked.store(asked, Ordering::Release);
                    drop(removed);
                    g.ready.refresh();
                    if !held {
                        break;
                    }
                }
                self.reaping.store(false, Ordering::Release);
                // A file held by descendants only since the last look (the flag was still
                // set, so nobody started a reaper for it) is seen here, and reaped anew.
                drop(sweep(g));
            });
        if spawned.is_err() {
            self.reaping.store(false, Ordering::Release);
        }
    }

    /// Sleep until [`REAP_INTERVAL`] passed or a look is asked for.
    pub(super) fn wait_for_wake(&self) {
        let wake = self.wake.load(Ordering::Acquire);
        if wake < 0 {
            std::thread::sleep(REAP_INTERVAL);
            return;
        }
        let mut p = libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live pollfd on the server's eventfd.
        unsafe { real::poll(&mut p, 1, REAP_INTERVAL.as_millis() as c_int) };
        let mut v = 0u64;
        // SAFETY: drains the non-blocking eventfd into a live u64 (EAGAIN when not signalled).
        unsafe { real::read(wake, (&mut v as *mut u64).cast(), 8) };
    }

    /// Ask the reaper for a look now and wait (at most [`REAP_INTERVAL`]) until a look that
    /// began after the asking ended. Only atomics, `write` and `nanosleep`: async-signal safe,
    /// since a program may `wait` in a SIGCHLD handler (where the look could be held up by the
    /// interrupted thread's locks: hence the bound).
    pub(super) fn look_now(&self) {
        let wake = self.wake.load(Ordering::Acquire);
        if wake < 0 {
            return;
        }
        let want = self.asked.fetch_add(1, Ordering::AcqRel) + 1;
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to the server's eventfd.
        unsafe { real::write(wake, (&one as *const u64).cast(), 8) };
        let step = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        for _ in 0..REAP_INTERVAL.as_millis() {
            if self.looked.load(Ordering::Acquire) >= want || !self.reaping.load(Ordering::Acquire)
            {
                return;
            }
            // SAFETY: nanosleep reads one live timespec; the remainder pointer may be null.
            unsafe { libc::nanosleep(&step, std::ptr::null_mut()) };
        }
    }
}
