//! The seccomp front-end's supervisor: the engine serves the system calls a seccomp filter
//! stops in programs the preload library cannot reach (static binaries, raw syscalls).
//!
//! `uiommu run --front-end seccomp` puts the filter of `uiommu_sys::seccomp` on itself
//! before it execs the program and hands the filter's listener to the engine
//! ([`uiommu_proto::OP_SUPERVISE`]). From then on every process under the filter (the program,
//! its children, whatever they exec) is served here: the caller is the thread the kernel says
//! stopped, its memory is read and written as a preload client's ([`crate::clients`]), and a
//! file of ours is installed in its fd table with `SECCOMP_IOCTL_NOTIF_ADDFD`, at a number in
//! the filter's range so that its reads and writes stop too. A stopped call that is not ours
//! (another path, another file) continues in the kernel untouched.
//!
//! The file a call names is the one the caller holds at that number (`pidfd_getfd`), and is
//! ours only if it is one of the engine's sockets: nothing a program can name or forge.

use crate::clients::Process;
use crate::conn::{Call, Handover};
use crate::view::View;
use crate::Host;
use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use uiommu_platform::memory::UserMemory;
use uiommu_platform::process_memory::ProcessMemory;
use uiommu_platform::UserVa;
use uiommu_proto::{Request, OP_IOCTL, OP_MMAP, OP_READ, OP_WRITE};
use uiommu_sys::seccomp::{self, Answer, FdRange, NodeAttrs, Notice};
use uiommu_uapi::file::{target_of, Target};
use uiommu_uapi::sysfs_tree::DevEntry;
use uiommu_uapi::Errno;

use nix::libc::{EACCES, EFAULT, EINVAL, EMFILE, ENAMETOOLONG, ENOENT};

/// `AT_FDCWD`.
const AT_FDCWD: i32 = -100;
/// `UIO_MAXIOV`: the most segments a vectored read or write takes.
const IOV_MAX: u64 = 1024;

/// Whether `fd` is a seccomp listener (an anonymous inode of that name).
pub fn is_listener(fd: BorrowedFd<'_>) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", crate::raw_fd(&fd)))
        .is_ok_and(|t| t.as_os_str() == "anon_inode:seccomp notify")
}

/// Serve `listener` on a thread of its own until no process uses its filter. The engine
/// counts it as a program meanwhile (it does not exit idle under a supervised program).
pub fn supervise(host: Arc<Host>, listener: OwnedFd, range: FdRange) -> std::io::Result<()> {
    host.programs.fetch_add(1, Ordering::AcqRel);
    let h = host.clone();
    let spawned = std::thread::Builder::new()
        .name("uiommu-seccomp".into())
        .spawn(move || {
            serve(&h, listener.as_fd(), range);
            h.programs.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        host.programs.fetch_sub(1, Ordering::AcqRel);
    }
    spawned.map(|_| ())
}

fn serve(host: &Host, listener: BorrowedFd<'_>, range: FdRange) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(listener, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
            Ok(_) => {}
        }
        let ev = fds[0].revents().unwrap_or(PollFlags::empty());
        if !ev.contains(PollFlags::POLLIN) {
            // POLLHUP: the filter has no process left.
            return;
        }
        let notice = match seccomp::receive(listener) {
            Ok(n) => n,
            // The caller was killed before we read its call.
            Err(e) if e.raw_os_error() == Some(ENOENT) => continue,
            Err(_) => return,
        };
        let stopped = Stopped {
            host,
            listener,
            range,
            notice,
            given: RefCell::new(Vec::new()),
        };
        let answer = stopped.serve();
        // ENOENT: the caller was killed meanwhile; nothing of it is waiting.
        let _ = seccomp::respond(listener, notice.id, answer);
    }
}

/// Which stat struct a call fills.
#[derive(Clone, Copy)]
enum Layout {
    Stat,
    /// With the caller's mask.
    Statx(u32),
}

/// What a path of a stopped call names.
enum Named<'v> {
    /// One of our nodes.
    Node(Target),
    /// A path of the sysfs view: in the tree, relative to its root.
    View(&'v View, Vec<u8>),
}

/// One stopped call being served.
struct Stopped<'a> {
    host: &'a Host,
    listener: BorrowedFd<'a>,
    range: FdRange,
    notice: Notice,
    /// Files given to the caller during the call: (its number, our fd of the file, cloexec),
    /// installed when the call succeeds (as the kernel installs an fd only then).
    given: RefCell<Vec<(i32, OwnedFd, bool)>>,
}

/// Who a stopped thread is: its process (thread group), real uid and gid.
fn identity(tid: i32) -> Option<(i32, u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some((field("Tgid:")? as i32, field("Uid:")?, field("Gid:")?))
}

impl Stopped<'_> {
    fn args(&self) -> [u64; 6] {
        self.notice.args
    }

    fn serve(&self) -> Answer {
        let a = self.args();
        let nr = self.notice.nr;
        let r = match nr {
            n if n == nix::libc::SYS_open => self.open(AT_FDCWD as u64, a[0], a[1]),
            n if n == nix::libc::SYS_openat => self.open(a[0], a[1], a[2]),
            n if n == nix::libc::SYS_openat2 => self.openat2(),
            n if n == nix::libc::SYS_ioctl => self.ioctl(a[0], a[1] as u32, a[2]),
            n if n == nix::libc::SYS_read => {
                self.on_file(a[0], Request::new(OP_READ, [a[1], a[2], 0, 0, 0, 0]))
            }
            n if n == nix::libc::SYS_write => {
                self.on_file(a[0], Request::new(OP_WRITE, [a[1], a[2], 0, 0, 0, 0]))
            }
            n if n == nix::libc::SYS_pread64 => {
                self.on_file(a[0], Request::new(OP_READ, [a[1], a[2], a[3], 1, 0, 0]))
            }
            n if n == nix::libc::SYS_pwrite64 => {
                self.on_file(a[0], Request::new(OP_WRITE, [a[1], a[2], a[3], 1, 0, 0]))
            }
            n if n == nix::libc::SYS_readv => self.vectored(OP_READ, None, 0),
            n if n == nix::libc::SYS_writev => self.vectored(OP_WRITE, None, 0),
            n if n == nix::libc::SYS_preadv => self.vectored(OP_READ, Some(a[3] as i64), 0),
            n if n == nix::libc::SYS_pwritev => self.vectored(OP_WRITE, Some(a[3] as i64), 0),
            n if n == nix::libc::SYS_preadv2 => self.vectored(OP_READ, Some(a[3] as i64), a[5]),
            n if n == nix::libc::SYS_pwritev2 => self.vectored(OP_WRITE, Some(a[3] as i64), a[5]),
            n if n == nix::libc::SYS_stat => {
                self.stat_path(AT_FDCWD as u64, a[0], a[1], 0, Layout::Stat)
            }
            n if n == nix::libc::SYS_lstat => self.stat_path(
                AT_FDCWD as u64,
                a[0],
                a[1],
                nix::libc::AT_SYMLINK_NOFOLLOW as u64,
                Layout::Stat,
            ),
            n if n == nix::libc::SYS_newfstatat => {
                self.stat_at(a[0], a[1], a[2], a[3], Layout::Stat)
            }
            n if n == nix::libc::SYS_statx => {
                self.stat_at(a[0], a[1], a[4], a[2], Layout::Statx(a[3] as u32))
            }
            n if n == nix::libc::SYS_readlink => self.readlink(AT_FDCWD as u64, a[0], a[1], a[2]),
            n if n == nix::libc::SYS_getdents64 => self.getdents(a[0], a[1], a[2]),
            n if n == nix::libc::SYS_getxattr || n == nix::libc::SYS_lgetxattr => {
                self.xattr(a[0], false)
            }
            n if n == nix::libc::SYS_listxattr || n == nix::libc::SYS_llistxattr => {
                self.xattr(a[0], true)
            }
            n if n == nix::libc::SYS_readlinkat => self.readlink(a[0], a[1], a[2], a[3]),
            n if n == nix::libc::SYS_fstat => self.fstat(a[0], a[1], Layout::Stat),
            n if n == nix::libc::SYS_access => self.access(AT_FDCWD as u64, a[0], a[1]),
            n if n == nix::libc::SYS_faccessat || n == nix::libc::SYS_faccessat2 => {
                self.access(a[0], a[1], a[2])
            }
            n if n == nix::libc::SYS_dup => self.dup(a[0], Some(0), false),
            n if n == nix::libc::SYS_dup2 => self.dup2(a[0], a[1], 0),
            n if n == nix::libc::SYS_dup3 => self.dup2(a[0], a[1], a[2]),
            n if n == nix::libc::SYS_fcntl => {
                self.dup(a[0], Some(a[2]), a[1] == nix::libc::F_DUPFD_CLOEXEC as u64)
            }
            n if n == nix::libc::SYS_mmap => {
                self.on_file(a[4], Request::new(OP_MMAP, [a[1], a[2], a[3], a[5], 0, 0]))
            }
            _ => None,
        };
        match r {
            None => Answer::Continue,
            Some(Err(e)) => Answer::Error(e),
            Some(Ok(v)) => match self.install_given() {
                Ok(()) => Answer::Value(v),
                Err(e) => Answer::Error(e),
            },
        }
    }

    /// The caller as a client of the engine, registered on its first call of ours.
    fn process(&self) -> Result<(Arc<Process>, u32), Errno> {
        let (pid, uid, gid) = identity(self.notice.tid).ok_or(nix::libc::ESRCH)?;
        // The status read was of the thread that stopped only if it still waits: a pid
        // reused since names someone else.
        if !seccomp::still_waiting(self.listener, self.notice.id) {
            return Err(nix::libc::ESRCH);
        }
        if !self.host.serves(uid) {
            return Err(EACCES);
        }
        self.host.reap();
        let host = self.host;
        let p = host.clients.get(&host.engine, pid, uid, |p| {
            let _ = host.files.watch_pid(p.pid, p.pidfd.as_fd());
        })?;
        Ok((p, gid))
    }

    fn call<'b>(&'b self, process: &'b Arc<Process>, gid: u32) -> Call<'b> {
        Call {
            host: self.host,
            via: self,
            process,
            gid,
            mem: None,
        }
    }

    /// A NUL-terminated path of the caller's (at most PATH_MAX bytes, as the kernel reads
    /// it), read page by page.
    fn path(&self, va: u64) -> Result<Vec<u8>, Errno> {
        let mem = ProcessMemory::of(self.notice.tid);
        let mut out = Vec::new();
        let mut at = va;
        while out.len() < 4096 {
            let page_left = 4096 - (at % 4096) as usize;
            let n = page_left.min(4096 - out.len());
            let mut buf = vec![0u8; n];
            mem.read(UserVa(at), &mut buf).map_err(|_| EFAULT)?;
            if let Some(end) = buf.iter().position(|&b| b == 0) {
                out.extend_from_slice(&buf[..end]);
                return Ok(out);
            }
            out.extend_from_slice(&buf);
            at = at.checked_add(n as u64).ok_or(EFAULT)?;
        }
        Err(ENAMETOOLONG)
    }

    /// What `openat(dirfd, path)` names, ours or not: a node of ours, or a path of the sysfs
    /// view (in the view's tree); `None` for anything else (the kernel then runs the call).
    fn named(&self, dirfd: u64, path: u64) -> Option<Named<'_>> {
        let abs = self.absolute(dirfd, path)?;
        if let Some(t) = target_of(&abs) {
            return Some(Named::Node(t));
        }
        let view = self.host.view()?;
        view.serves(&abs).map(|rel| Named::View(view, rel))
    }

    /// `path` as an absolute path: a relative one is taken against the caller's working
    /// directory or `dirfd`.
    fn absolute(&self, dirfd: u64, path: u64) -> Option<Vec<u8>> {
        let path = self.path(path).ok()?;
        if path.first() == Some(&b'/') {
            return Some(path);
        }
        if path.is_empty() {
            return None;
        }
        let base = if dirfd as i32 == AT_FDCWD {
            format!("/proc/{}/cwd", self.notice.tid)
        } else {
            format!("/proc/{}/fd/{}", self.notice.tid, dirfd as i32)
        };
        let dir = std::fs::read_link(base).ok()?;
        let mut full = std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()).to_vec();
        // A directory of the view: the path the program knows it by.
        let tree = crate::view::dir_of(&self.host.config.instance);
        if full.starts_with(std::os::unix::ffi::OsStrExt::as_bytes(tree.as_os_str())) {
            if let Some(p) = self.host.view().and_then(|v| v.program_path(&full)) {
                full = p;
            }
        }
        if full.last() != Some(&b'/') {
            full.push(b'/');
        }
        full.extend_from_slice(&path);
        Some(full)
    }

    fn open(&self, dirfd: u64, path: u64, flags: u64) -> Option<Result<i64, Errno>> {
        match self.named(dirfd, path)? {
            Named::Node(target) => Some(self.open_target(target, flags as i32)),
            Named::View(view, rel) => Some(self.open_view(view, &rel, flags as i32)),
        }
    }

    /// Open a file of the sysfs view for the caller: installed at its lowest free number, as
    /// the kernel's `open` would.
    fn open_view(&self, view: &View, rel: &[u8], flags: i32) -> Result<i64, Errno> {
        let f = view.open(rel, flags)?;
        self.process()?;
        let cloexec = flags & nix::libc::O_CLOEXEC != 0;
        let in_dev = rustix::fs::fstat(&f)
            .ok()
            .and_then(|st| view.dev_entry(st.st_dev, st.st_ino));
        if matches!(in_dev, Some(DevEntry::Vfio(_) | DevEntry::Devices(_))) {
            // In the range, so that its fstat and getdents stop and are answered as above.
            let n = self.free_number()?;
            return self.put(n as u32, f, cloexec).map(i64::from);
        }
        seccomp::add_fd_lowest(self.listener, self.notice.id, f.as_fd(), cloexec)
            .map(i64::from)
            .map_err(|e| e.raw_os_error().unwrap_or(EMFILE))
    }

    fn open_target(&self, target: Target, flags: i32) -> Result<i64, Errno> {
        uiommu_uapi::file::open_check(target, flags)?;
        let (p, gid) = self.process()?;
        self.call(&p, gid).open(target, flags)
    }

    fn openat2(&self) -> Option<Result<i64, Errno>> {
        let a = self.args();
        let named = self.named(a[0], a[1])?;
        // struct open_how: flags, mode, resolve (u64 each); later fields must be zero.
        if a[3] < 24 {
            return Some(Err(EINVAL));
        }
        let mut how = [0u8; 8];
        if ProcessMemory::of(self.notice.tid)
            .read(UserVa(a[2]), &mut how)
            .is_err()
        {
            return Some(Err(EFAULT));
        }
        let flags = u64::from_ne_bytes(how) as i32;
        Some(match named {
            Named::Node(target) => self.open_target(target, flags),
            Named::View(view, rel) => self.open_view(view, &rel, flags),
        })
    }

    /// The file of ours the caller holds at `fd`: `None` when the number is not open or is
    /// not a file of ours (the kernel then runs the call).
    fn file(&self, fd: u64) -> Option<(Arc<Process>, u32, Arc<crate::files::HostFile>, OwnedFd)> {
        let (p, gid) = self.process().ok()?;
        let got = p.take_fd(fd as i32).ok()?;
        let file = self.host.files.of_fd(got.as_fd())?;
        Some((p, gid, file, got))
    }

    fn on_file(&self, fd: u64, req: Request) -> Option<Result<i64, Errno>> {
        let (p, gid, file, got) = self.file(fd)?;
        let m = self.call(&p, gid).on_file(&file, req);
        self.host.files.sync_ready(Some((&file, got.as_fd())));
        Some(if m.err != 0 { Err(m.err) } else { Ok(m.val) })
    }

    /// `ioctl`: a request of type `';'` goes to the file; of another type on one of our files,
    /// as the kernel answers it for iommufd, VFIO and the engine's anonymous files: the ones
    /// the VFS handles for every file (FIOCLEX, FIONCLEX, FIONBIO, FIGETBSZ) run in the kernel
    /// on the installed fd, FIOASYNC turning async I/O on is ENOTTY (no `fasync`), every other
    /// one ENOTTY (the driver knows only its own type). Not ours: the kernel runs it.
    fn ioctl(&self, fd: u64, request: u32, arg: u64) -> Option<Result<i64, Errno>> {
        use nix::libc::{FIOASYNC, FIOCLEX, FIONBIO, FIONCLEX};
        const FIGETBSZ: u32 = 2;
        if (request >> 8) & 0xff == u32::from(b';') {
            return self.on_file(
                fd,
                Request::new(OP_IOCTL, [u64::from(request), arg, 0, 0, 0, 0]),
            );
        }
        let generic = [FIOCLEX, FIONCLEX, FIONBIO].map(|r| r as u32);
        if generic.contains(&request) || request == FIGETBSZ {
            return None;
        }
        let (p, _, _, _) = self.file(fd)?;
        if request == FIOASYNC as u32 {
            let mut on = [0u8; 4];
            if p.mem.read(UserVa(arg), &mut on).is_err() {
                return Some(Err(EFAULT));
            }
            if on == [0; 4] {
                return Some(Ok(0));
            }
        }
        Some(Err(nix::libc::ENOTTY))
    }

    /// `readv`/`writev` (`at`: `preadv`/`pwritev` at that offset; -1: at the file position,
    /// as `preadv2`; `flags`: `preadv2`/`pwritev2`'s, only RWF_HIPRI is taken, else
    /// EOPNOTSUPP): segment by segment, each as one read or write, stopping at the first short
    /// one; an error after some bytes moved ends the call with the count so far; no segment at
    /// all is the file's answer to an empty transfer (an iommufd's EINVAL), as the kernel's
    /// loop for files without `read_iter` runs them.
    fn vectored(&self, op: u32, at: Option<i64>, flags: u64) -> Option<Result<i64, Errno>> {
        let a = self.args();
        let (p, gid, file, got) = self.file(a[0])?;
        let r = (|| {
            if a[2] > IOV_MAX {
                return Err(EINVAL);
            }
            let mut iov = vec![0u8; 16 * a[2].max(1) as usize];
            if a[2] > 0 {
                p.mem.read(UserVa(a[1]), &mut iov).map_err(|_| EFAULT)?;
            }
            if flags & !(nix::libc::RWF_HIPRI as u64) != 0 {
                return Err(nix::libc::EOPNOTSUPP);
            }
            let call = self.call(&p, gid);
            let mut done: i64 = 0;
            for seg in iov.chunks_exact(16) {
                let base = u64::from_ne_bytes(seg[..8].try_into().unwrap_or([0; 8]));
                let len = u64::from_ne_bytes(seg[8..].try_into().unwrap_or([0; 8]));
                if len > i64::MAX as u64 {
                    return Err(EINVAL);
                }
                let req = match at {
                    Some(off) if off != -1 => {
                        Request::new(op, [base, len, (off + done) as u64, 1, 0, 0])
                    }
                    _ => Request::new(op, [base, len, 0, 0, 0, 0]),
                };
                let m = call.on_file(&file, req);
                if m.err != 0 {
                    return if done > 0 { Ok(done) } else { Err(m.err) };
                }
                done += m.val;
                if (m.val as u64) < len {
                    break;
                }
            }
            Ok(done)
        })();
        self.host.files.sync_ready(Some((&file, got.as_fd())));
        Some(r)
    }

    /// What the stat family says of node `target`: owned and moded as `uiommu serve` set the
    /// nodes; `st_dev` and the times of the real `/dev`, where the nodes live.
    fn attrs(&self, target: Target) -> Option<NodeAttrs> {
        use std::os::unix::fs::MetadataExt;
        let n = uiommu_uapi::file::node_stat(&self.host.engine, target)?;
        let dev = std::fs::metadata("/dev").ok();
        let t = |f: fn(&std::fs::Metadata) -> (i64, i64)| dev.as_ref().map_or((0, 0), f);
        let cfg = &self.host.config;
        Some(NodeAttrs {
            dev: dev.as_ref().map_or(0, |d| d.dev()),
            ino: n.ino,
            mode: 0o020000 | crate::conn::node_mode(cfg, target),
            uid: cfg.node_uid,
            gid: cfg.node_gid,
            rdev: (n.major, n.minor),
            times: [
                t(|d| (d.atime(), d.atime_nsec())),
                t(|d| (d.mtime(), d.mtime_nsec())),
                t(|d| (d.ctime(), d.ctime_nsec())),
            ],
            nlink: 1,
            size: 0,
        })
    }

    /// Write node `target`'s stat in `layout` to the caller's `buf`.
    fn write_stat(&self, target: Target, buf: u64, layout: Layout) -> Result<i64, Errno> {
        let a = self.attrs(target).ok_or(ENOENT)?;
        self.write_attrs(&a, buf, layout)
    }

    /// What the stat family says of an inode of the view's `dev/vfio` subtree: the node it
    /// stands for, `/dev/vfio` and `/dev/vfio/devices` as directories owned as the real
    /// `/dev` (on its device, with its times), and its parent as the real `/dev`.
    fn dev_attrs(&self, e: DevEntry) -> Option<NodeAttrs> {
        use std::os::unix::fs::MetadataExt;
        if let DevEntry::Node(t) = e {
            return self.attrs(t);
        }
        // The real /dev's attributes, and what the directories change of them.
        let d = std::fs::metadata("/dev").ok()?;
        let real = NodeAttrs {
            dev: d.dev(),
            ino: d.ino(),
            mode: d.mode(),
            uid: d.uid(),
            gid: d.gid(),
            rdev: (0, 0),
            times: [
                (d.atime(), d.atime_nsec()),
                (d.mtime(), d.mtime_nsec()),
                (d.ctime(), d.ctime_nsec()),
            ],
            nlink: d.nlink(),
            size: d.size() as i64,
        };
        let (n, devices) = match e {
            DevEntry::Vfio(n) => (n, false),
            DevEntry::Devices(n) => (n, true),
            _ => return Some(real),
        };
        Some(NodeAttrs {
            ino: uiommu_uapi::sysfs_tree::vfio_dir_ino(devices),
            mode: nix::libc::S_IFDIR | 0o755,
            // Links as a directory has: 2, and one per subdirectory; devtmpfs's size.
            nlink: if devices { 2 } else { 3 },
            size: 20 * (n as i64 + 2),
            ..real
        })
    }

    fn write_attrs(&self, a: &NodeAttrs, buf: u64, layout: Layout) -> Result<i64, Errno> {
        let bytes = match layout {
            Layout::Stat => seccomp::stat_bytes(a),
            Layout::Statx(_) => seccomp::statx_bytes(a),
        };
        self.write_out(buf, &bytes)
    }

    /// Write a stat-family result to the caller's buffer: 0, or EFAULT.
    fn write_out(&self, buf: u64, bytes: &[u8]) -> Result<i64, Errno> {
        ProcessMemory::of(self.notice.tid)
            .write(UserVa(buf), bytes)
            .map_err(|_| EFAULT)?;
        Ok(0)
    }

    /// `stat`/`lstat`/`fstatat` of a path (`flags`: `AT_SYMLINK_NOFOLLOW`; our nodes are no
    /// symlinks), a node of ours or a path of the sysfs view.
    fn stat_path(
        &self,
        dirfd: u64,
        path: u64,
        buf: u64,
        flags: u64,
        layout: Layout,
    ) -> Option<Result<i64, Errno>> {
        match self.named(dirfd, path)? {
            Named::Node(target) => Some(self.write_stat(target, buf, layout)),
            Named::View(view, rel) => Some((|| {
                let nofollow = flags & nix::libc::AT_SYMLINK_NOFOLLOW as u64 != 0;
                let f = view.path_fd(&rel, nofollow)?;
                if let Some(r) = self.stat_dev_entry(view, f.as_fd(), buf, layout) {
                    return r;
                }
                let os = |e: std::io::Error| e.raw_os_error().unwrap_or(EFAULT);
                let bytes = match layout {
                    Layout::Stat => seccomp::stat_bytes_of(f.as_fd()).map_err(os)?,
                    Layout::Statx(mask) => seccomp::statx_bytes_of(f.as_fd(), mask).map_err(os)?,
                };
                self.write_out(buf, &bytes)
            })()),
        }
    }

    /// When `f` is of the view's `dev/vfio` subtree: write what the program is told of it.
    fn stat_dev_entry(
        &self,
        view: &View,
        f: BorrowedFd<'_>,
        buf: u64,
        layout: Layout,
    ) -> Option<Result<i64, Errno>> {
        let st = rustix::fs::fstat(f).ok()?;
        let e = view.dev_entry(st.st_dev, st.st_ino)?;
        Some(
            self.dev_attrs(e)
                .ok_or(ENOENT)
                .and_then(|a| self.write_attrs(&a, buf, layout)),
        )
    }

    /// `getdents64(fd, buf, count)` on a directory of the view's `dev/vfio` subtree (opened in
    /// the range): the kernel's entries of the tree, with the nodes' entries `DT_CHR` and every
    /// inode number the one `stat` reports.
    fn getdents(&self, fd: u64, buf: u64, count: u64) -> Option<Result<i64, Errno>> {
        let view = self.host.view()?;
        let (p, _gid) = self.process().ok()?;
        let got = p.take_fd(fd as i32).ok()?;
        let st = rustix::fs::fstat(&got).ok()?;
        if !matches!(
            view.dev_entry(st.st_dev, st.st_ino)?,
            DevEntry::Vfio(_) | DevEntry::Devices(_)
        ) {
            return None;
        }
        Some((|| {
            let mut bytes = vec![0u8; usize::try_from(count).unwrap_or(0).min(1 << 20)];
            let n = seccomp::getdents64(got.as_fd(), &mut bytes)
                .map_err(|e| e.raw_os_error().unwrap_or(EINVAL))?;
            bytes.truncate(n);
            // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, name.
            let mut at = 0;
            while at + 19 <= bytes.len() {
                let ino = u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
                let reclen = u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
                if reclen == 0 {
                    break;
                }
                if let Some(e) = view.entry_by_ino(ino) {
                    if let Some(a) = self.dev_attrs(e) {
                        bytes[at..at + 8].copy_from_slice(&a.ino.to_ne_bytes());
                    }
                    if let DevEntry::Node(_) = e {
                        bytes[at + 18] = nix::libc::DT_CHR;
                    }
                }
                at += reclen;
            }
            ProcessMemory::of(self.notice.tid)
                .write(UserVa(buf), &bytes)
                .map_err(|_| EFAULT)?;
            Ok(n as i64)
        })())
    }

    /// `getxattr`/`listxattr` of one of our nodes or a path of the view: they have no extended
    /// attributes (ENODATA; an empty list), as devtmpfs nodes and sysfs attributes here.
    fn xattr(&self, path: u64, list: bool) -> Option<Result<i64, Errno>> {
        let named = self.named(AT_FDCWD as u64, path)?;
        Some(match named {
            Named::Node(t) if !uiommu_uapi::file::target_exists(&self.host.engine, t) => {
                Err(ENOENT)
            }
            Named::View(view, rel) if view.path_fd(&rel, false).is_err() => Err(ENOENT),
            _ if list => Ok(0),
            _ => Err(nix::libc::ENODATA),
        })
    }

    /// `readlink`/`readlinkat(dirfd, path, buf, size)` of a path of the sysfs view (our nodes
    /// are no symlinks: the kernel answers for them as for any path).
    fn readlink(&self, dirfd: u64, path: u64, buf: u64, size: u64) -> Option<Result<i64, Errno>> {
        let Named::View(view, rel) = self.named(dirfd, path)? else {
            return None;
        };
        Some((|| {
            if size as i64 <= 0 {
                return Err(EINVAL);
            }
            let f = view.path_fd(&rel, true)?;
            let target =
                seccomp::readlink_of(f.as_fd()).map_err(|e| e.raw_os_error().unwrap_or(EINVAL))?;
            let n = target
                .len()
                .min(usize::try_from(size).unwrap_or(usize::MAX));
            ProcessMemory::of(self.notice.tid)
                .write(UserVa(buf), &target[..n])
                .map_err(|_| EFAULT)?;
            Ok(n as i64)
        })())
    }

    /// `newfstatat`/`statx(dirfd, path, flags)`: with an empty path and `AT_EMPTY_PATH`, of
    /// `dirfd` itself.
    fn stat_at(
        &self,
        dirfd: u64,
        path: u64,
        buf: u64,
        flags: u64,
        layout: Layout,
    ) -> Option<Result<i64, Errno>> {
        let empty = flags & nix::libc::AT_EMPTY_PATH as u64 != 0
            && self.path(path).is_ok_and(|p| p.is_empty());
        if empty {
            return self.fstat(dirfd, buf, layout);
        }
        self.stat_path(dirfd, path, buf, flags, layout)
    }

    /// `fstat` of a file of ours opened from a node (a file the engine made stays a socket
    /// here, where Linux has an anonymous inode).
    fn fstat(&self, fd: u64, buf: u64, layout: Layout) -> Option<Result<i64, Errno>> {
        let (p, _gid) = self.process().ok()?;
        let got = p.take_fd(fd as i32).ok()?;
        let Some(file) = self.host.files.of_fd(got.as_fd()) else {
            // A directory of the view's `dev/vfio` (opened in the range).
            return self.stat_dev_entry(self.host.view()?, got.as_fd(), buf, layout);
        };
        let target = file.open.node?;
        Some(self.write_stat(target, buf, layout))
    }

    /// `access`/`faccessat(dirfd, path, mode)` of a node: its mode against the caller's
    /// real uid and gid.
    fn access(&self, dirfd: u64, path: u64, mode: u64) -> Option<Result<i64, Errno>> {
        let target = match self.named(dirfd, path)? {
            Named::Node(t) => t,
            Named::View(view, rel) => return Some(self.access_view(view, &rel, mode)),
        };
        if mode & !7 != 0 {
            return Some(Err(EINVAL));
        }
        Some((|| {
            if !uiommu_uapi::file::target_exists(&self.host.engine, target) {
                return Err(ENOENT);
            }
            let (p, gid) = self.process()?;
            if self.call(&p, gid).node_allows(target, mode as u32) {
                Ok(0)
            } else {
                Err(EACCES)
            }
        })())
    }

    /// `access` of a path of the sysfs view: it exists; reading (and searching its
    /// directories) is for everyone, writing for root only, as sysfs's modes say for these
    /// read-only attributes (a root caller passes every check, as the kernel's `access`).
    fn access_view(&self, view: &View, rel: &[u8], mode: u64) -> Result<i64, Errno> {
        if mode & !7 != 0 {
            return Err(EINVAL);
        }
        let f = view.path_fd(rel, false)?;
        let (_, uid, _) = identity(self.notice.tid).ok_or(nix::libc::ESRCH)?;
        if uid == 0 || mode & nix::libc::W_OK as u64 == 0 {
            // Files are 0644 and directories 0755 in the tree: X_OK only for directories.
            if mode & nix::libc::X_OK as u64 != 0 && uid != 0 {
                let st = rustix::fs::fstat(&f).map_err(|e| e.raw_os_error())?;
                if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFDIR {
                    return Err(EACCES);
                }
            }
            Ok(0)
        } else {
            Err(EACCES)
        }
    }

    /// `dup(fd)` / `fcntl(fd, F_DUPFD[_CLOEXEC], min)` of a file of ours: the duplicate goes
    /// in the range too (at its lowest free number not below `min`), so that its reads and
    /// writes stop as the original's.
    fn dup(&self, fd: u64, min: Option<u64>, cloexec: bool) -> Option<Result<i64, Errno>> {
        let min = min.unwrap_or(0);
        if min >= u64::from(self.range.end) {
            // Beyond the range: the kernel's duplicate (its reads and writes are a socket's).
            return None;
        }
        let (_p, _gid, _file, got) = self.file(fd)?;
        let r = self
            .free_number_from(min as u32)
            .and_then(|n| self.put(n as u32, got, cloexec));
        Some(r.map(i64::from))
    }

    /// `dup2`/`dup3(fd, to, flags)` of a file of ours: at `to`, as asked (outside the range,
    /// its reads and writes are then a socket's).
    fn dup2(&self, fd: u64, to: u64, flags: u64) -> Option<Result<i64, Errno>> {
        let (fd, to) = (fd as i32, to as i32);
        if fd == to || to < 0 {
            // The kernel's answers: `to` itself (dup2), EINVAL (dup3), EBADF.
            return None;
        }
        let cloexec = flags & nix::libc::O_CLOEXEC as u64 != 0;
        if flags & !(nix::libc::O_CLOEXEC as u64) != 0 {
            return Some(Err(EINVAL));
        }
        let (_p, _gid, _file, got) = self.file(fd as u64)?;
        Some(self.put(to as u32, got, cloexec).map(i64::from))
    }

    /// Install `file` at `n` in the caller now.
    fn put(&self, n: u32, file: OwnedFd, cloexec: bool) -> Result<i32, Errno> {
        seccomp::add_fd(
            self.listener,
            self.notice.id,
            file.as_fd(),
            n,
            cloexec,
            false,
        )
        .map_err(|e| e.raw_os_error().unwrap_or(EMFILE))
    }

    /// A free number in the filter's range of the caller's fd table, not given yet in this
    /// call.
    fn free_number(&self) -> Result<i32, Errno> {
        self.free_number_from(0)
    }

    /// [`Stopped::free_number`], not below `min`.
    fn free_number_from(&self, min: u32) -> Result<i32, Errno> {
        let given = self.given.borrow();
        // The range first; when the program fills it, above it (such a file's reads and
        // writes are then a socket's, its ioctls still ours).
        let above = self.range.end.max(min);
        (self.range.start.max(min)..self.range.end)
            .chain(above..above.saturating_add(1 << 16))
            .map(|n| n as i32)
            .find(|n| {
                !given.iter().any(|(g, _, _)| g == n)
                    && std::fs::symlink_metadata(format!("/proc/{}/fd/{n}", self.notice.tid))
                        .is_err()
            })
            .ok_or(EMFILE)
    }

    /// Put every file given during the call into the caller's fd table.
    fn install_given(&self) -> Result<(), Errno> {
        for (n, fd, cloexec) in self.given.borrow_mut().drain(..) {
            seccomp::add_fd(
                self.listener,
                self.notice.id,
                fd.as_fd(),
                n as u32,
                cloexec,
                false,
            )
            .map_err(|e| e.raw_os_error().unwrap_or(EMFILE))?;
        }
        Ok(())
    }
}

impl Handover for Stopped<'_> {
    fn give(&self, client: OwnedFd, cloexec: bool) -> Result<i32, Errno> {
        let n = self.free_number()?;
        self.given.borrow_mut().push((n, client, cloexec));
        Ok(n)
    }

    fn take_back(&self, fd: i32) {
        self.given.borrow_mut().retain(|(n, _, _)| *n != fd);
    }
}
