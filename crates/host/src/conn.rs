//! One connection of a front-end: its messages, who sent each (the kernel's
//! `SCM_CREDENTIALS`), and the operations of the protocol on the engine.
//!
//! A call's file is the fd sent with the request; a call naming fds in its arguments (an
//! iommufd to bind to, an eventfd to signal) has them taken from the caller with
//! `pidfd_getfd`, so the engine sees exactly the files the caller holds, whatever their
//! numbers. A file made during the call is handed to the caller with [`K_TAKE_FD`].

use crate::clients::Process;
use crate::files::HostFile;
use crate::Host;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, UCred,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use uiommu_core::Context;
use uiommu_proto::*;
use uiommu_uapi::file::{file_io, make_file, mmap_refusal, Dir, Kind, OpenFile, Pos, Target};
use uiommu_uapi::{Caller, EngineFile, Errno, FdTable};

use nix::libc::{EACCES, EBADF, EBADFD, EFAULT, EINVAL, EIO, ENXIO};

/// The permission bits of node `target`: the engine's `--mode`, but the legacy container's
/// `0666` as on Linux (anyone may open it; a group is what needs permission).
pub(crate) fn node_mode(cfg: &crate::Config, target: Target) -> u32 {
    match target {
        Target::VfioContainer => 0o666,
        _ => cfg.node_mode & 0o7777,
    }
}

/// One message received: the request, its sender, the fd attached.
struct Received {
    req: Option<Request>,
    cred: Option<UCred>,
    fd: Option<OwnedFd>,
}

/// Receive one message; `None` at the end of the connection. Polls for up to `spin` before
/// sleeping (a client that calls again at once costs no wake-up).
fn receive(sock: BorrowedFd<'_>, spin: std::time::Duration) -> Option<Received> {
    let mut buf = [0u8; REQUEST_LEN + 8];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4), ScmCredentials(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let until = std::time::Instant::now() + spin;
    let r = loop {
        let spinning = !spin.is_zero() && std::time::Instant::now() < until;
        let flags = if spinning {
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT
        } else {
            RecvFlags::CMSG_CLOEXEC
        };
        match recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut anc, flags) {
            Ok(r) => break r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) if spinning => {
                std::hint::spin_loop();
                continue;
            }
            Err(_) => return None,
        }
    };
    let mut out = Received {
        req: None,
        cred: None,
        fd: None,
    };
    for m in anc.drain() {
        match m {
            RecvAncillaryMessage::ScmRights(fds) => {
                for fd in fds {
                    // The first fd is the call's file; any others are closed unused.
                    if out.fd.is_none() {
                        out.fd = Some(fd);
                    }
                }
            }
            RecvAncillaryMessage::ScmCredentials(c) => out.cred = Some(c),
            _ => {}
        }
    }
    if r.bytes == 0 && out.fd.is_none() {
        return None;
    }
    if !r.flags.contains(ReturnFlags::TRUNC) {
        out.req = Request::from_bytes(&buf[..r.bytes]);
    }
    Some(out)
}

/// Send `m` on `sock`, with `fd` attached if any.
fn send(sock: BorrowedFd<'_>, m: &Message, fd: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
    let bytes = m.to_bytes();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        anc.push(SendAncillaryMessage::ScmRights(&fds));
    }
    loop {
        match sendmsg(sock, &[IoSlice::new(&bytes)], &mut anc, SendFlags::NOSIGNAL) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => return Err(EIO),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.raw_os_error()),
        }
    }
}

/// Serve one connection until the client closes it.
pub fn serve_connection(host: &Arc<Host>, sock: OwnedFd) {
    let _ = rustix::net::sockopt::set_socket_passcred(&sock, true);
    let mut program = false;
    while let Some(msg) = receive(sock.as_fd(), host.config.spin) {
        if !program && msg.req.is_some_and(|r| r.op == OP_HELLO) {
            program = true;
            host.programs
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        let reply = call(host, sock.as_fd(), msg);
        if send(sock.as_fd(), &reply, None).is_err() {
            break;
        }
    }
    if program {
        host.programs
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// One call: who sent it, then the operation.
fn call(host: &Arc<Host>, sock: BorrowedFd<'_>, msg: Received) -> Message {
    let (Some(req), Some(cred)) = (msg.req, msg.cred) else {
        return Message::reply(Err(EINVAL));
    };
    let uid = cred.uid.as_raw();
    if !host.serves(uid) {
        return Message::reply(Err(EACCES));
    }
    // Files whose last holder went before this message was sent (a process that exited, a
    // close in another process) are released first, as Linux released them then.
    if req.op != OP_HELLO {
        host.reap();
    }
    let pid = cred.pid.as_raw_nonzero().get();
    let process = match host.clients.get(&host.engine, pid, uid, |p| {
        let _ = host.files.watch_pid(p.pid, p.pidfd.as_fd());
    }) {
        Ok(p) => p,
        Err(e) => return Message::reply(Err(e)),
    };
    let c = Call {
        host,
        via: &Socket(sock),
        process: &process,
        gid: cred.gid.as_raw(),
        mem: None,
    };
    match req.op {
        OP_HELLO => {
            // Root's privileges in the emulation (`uiommu run --as-root`): for the engine's own
            // uid, or anyone when the engine grants them to everyone.
            let wanted = req.args[0] & HELLO_CAPS_ALL != 0;
            let granted = wanted && (uid == nix::unistd::geteuid().as_raw() || host.config.as_root);
            process
                .as_root
                .store(granted, std::sync::atomic::Ordering::Release);
            Message {
                extra: [u64::from(std::process::id()), u64::from(granted)],
                ..Message::reply(Ok(VERSION))
            }
        }
        OP_OPEN => {
            let target = Target::decode(req.args[0] as u32, req.args[1] as u32);
            Message::reply(c.open(target, req.args[2] as i32))
        }
        OP_REOPEN => match host.files.get((req.args[0], req.args[1])) {
            None => Message::reply(Err(NOT_MINE)),
            Some(f) => match f.open.node {
                // A file the engine made has no node to open again.
                None => Message::reply(Err(ENXIO)),
                Some(node) => Message::reply(c.open(node, req.args[2] as i32)),
            },
        },
        OP_SYNC => {
            host.reap();
            Message::reply(Ok(0))
        }
        OP_STATUS => Message::reply(c.status(req.args[0], req.args[1])),
        OP_NODES => Message {
            extra: [
                u64::from(host.config.node_uid),
                u64::from(host.config.node_gid),
            ],
            ..Message::reply(Ok(i64::from(host.config.node_mode & 0o7777)))
        },
        OP_SUPERVISE => Message::reply(supervise(host, msg.fd, req)),
        OP_TRACE => Message::reply(trace(host, uid, msg.fd, req)),
        _ => {
            let Some(fd) = msg.fd else {
                return Message::reply(Err(NOT_MINE));
            };
            let Some(file) = host.files.of_fd(fd.as_fd()) else {
                return Message::reply(Err(NOT_MINE));
            };
            if req.op == OP_RING {
                let r = crate::ring::open(host, &process, &file, c.gid)
                    .and_then(|memfd| c.via.give(memfd, true));
                return Message::reply(r.map(i64::from));
            }
            let m = c.on_file(&file, req);
            host.files.sync_ready(Some((&file, fd.as_fd())));
            m
        }
    }
}

/// How a file made during a call reaches the caller: over its connection (the preload
/// front-end), or put in its fd table by the seccomp supervisor ([`crate::seccomp`]).
pub(crate) trait Handover {
    /// Give the caller `client`, an fd of the file; returns the caller's number for it.
    fn give(&self, client: OwnedFd, cloexec: bool) -> Result<i32, Errno>;
    /// The call failed after giving `fd`: take it back.
    fn take_back(&self, fd: i32);
}

/// The preload front-end's connection: the file goes with a [`K_TAKE_FD`] message, the
/// front-end installs it and answers the number.
struct Socket<'a>(BorrowedFd<'a>);

impl Socket<'_> {
    /// The caller's answer `op` to a request of ours during the call.
    fn answer(&self, op: u32) -> Result<i64, Errno> {
        let r = receive(self.0, std::time::Duration::ZERO).ok_or(EIO)?;
        match r.req {
            Some(req) if req.op == op => Ok(req.args[0] as i64),
            _ => Err(EIO),
        }
    }
}

impl Handover for Socket<'_> {
    fn give(&self, client: OwnedFd, cloexec: bool) -> Result<i32, Errno> {
        let m = Message {
            flags: u32::from(cloexec),
            ..Message::new(K_TAKE_FD, 0)
        };
        send(self.0, &m, Some(client.as_fd()))?;
        // The message holds the file now; if the caller never takes it, the file goes with
        // the message (and the watcher drops it).
        drop(client);
        match self.answer(OP_TOOK_FD)? {
            n if n >= 0 => i32::try_from(n).map_err(|_| EIO),
            n => Err(i32::try_from(-n).unwrap_or(EIO)),
        }
    }

    fn take_back(&self, fd: i32) {
        let m = Message::new(K_DROP_FD, i64::from(fd));
        if send(self.0, &m, None).is_ok() {
            let _ = self.answer(OP_DROPPED);
        }
    }
}

/// [`OP_SUPERVISE`]: serve the seccomp listener `fd`, whose filter stops the reads and
/// writes of fds `[args[0], args[1])`.
fn supervise(host: &Arc<Host>, fd: Option<OwnedFd>, req: Request) -> Result<i64, Errno> {
    let fd = fd.ok_or(EBADF)?;
    if !crate::seccomp::is_listener(fd.as_fd()) {
        return Err(EINVAL);
    }
    let (start, end) = (req.args[0], req.args[1]);
    if start >= end || end > 1 << 20 {
        return Err(EINVAL);
    }
    let range = uiommu_sys::seccomp::FdRange {
        start: start as u32,
        end: end as u32,
    };
    crate::seccomp::supervise(host.clone(), fd, range).map_err(|_| nix::libc::EAGAIN)?;
    Ok(0)
}

/// `uiommu trace`: lines of every call from now on to the socket attached; root and the
/// engine's own uid only (a line shows any client's arguments).
fn trace(host: &Host, uid: u32, fd: Option<OwnedFd>, req: Request) -> Result<i64, Errno> {
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Err(EACCES);
    }
    let fd = fd.ok_or(EBADF)?;
    // A SOCK_SEQPACKET socket: a packet per line.
    let ty = rustix::net::sockopt::socket_type(&fd).map_err(|e| e.raw_os_error())?;
    if ty != rustix::net::SocketType::SEQPACKET {
        return Err(EINVAL);
    }
    if req.args[0] & !crate::trace::TRACE_JSON != 0 {
        return Err(EINVAL);
    }
    host.tracers
        .add(fd, req.args[0] & crate::trace::TRACE_JSON != 0);
    Ok(0)
}

/// A call in progress: what the handlers see as the caller's file table.
pub(crate) struct Call<'a> {
    pub(crate) host: &'a Host,
    pub(crate) via: &'a dyn Handover,
    pub(crate) process: &'a Arc<Process>,
    pub(crate) gid: u32,
    /// What the call's user pointers read and write, when not the process's memory itself
    /// (a ring's copy of the argument struct over it: [`crate::ring`]).
    pub(crate) mem: Option<&'a dyn uiommu_platform::memory::UserMemory>,
}

impl Call<'_> {
    fn caller(&self) -> Caller<'_> {
        Caller {
            mem: self.mem.unwrap_or(&*self.process.mem),
            fds: self,
        }
    }

    /// Whether the caller may open a node with `accmode`, as the VFS checks the node's mode.
    fn may_open(&self, target: Target, accmode: i32) -> bool {
        let need = match accmode {
            uiommu_uapi::file::O_RDONLY => 4,
            uiommu_uapi::file::O_WRONLY => 2,
            _ => 6,
        };
        self.node_allows(target, need)
    }

    /// Whether node `target`'s mode ([`node_mode`]) grants the caller the access bits
    /// `need` (4 read, 2 write, 1 execute), as the VFS checks them; root passes (but execute
    /// needs some x bit).
    pub(crate) fn node_allows(&self, target: Target, need: u32) -> bool {
        let cfg = &self.host.config;
        let mode = node_mode(cfg, target);
        if self.process.uid == 0 {
            return need & 1 == 0 || mode & 0o111 != 0;
        }
        let bits = if self.process.uid == cfg.node_uid {
            mode >> 6
        } else if self.gid == cfg.node_gid {
            mode >> 3
        } else {
            mode
        } & 7;
        bits & need == need
    }

    /// `open` of `target` with `flags`: the file handed to the caller, its number replied.
    pub(crate) fn open(&self, target: Target, flags: i32) -> Result<i64, Errno> {
        let accmode = flags & 3;
        if target != Target::NoEnt && !self.may_open(target, accmode) {
            return Err(EACCES);
        }
        let kind = make_file(&self.host.engine, self.process.space, target)?;
        let open = OpenFile::new(kind, accmode, Some(target));
        let cloexec = flags & nix::libc::O_CLOEXEC != 0;
        let nonblock = flags & nix::libc::O_NONBLOCK != 0;
        self.hand_over(open, cloexec, nonblock).map(i64::from)
    }

    /// Register `open` and give the caller an fd of it (its open file description
    /// `O_NONBLOCK` with `nonblock`); returns the fd's number.
    fn hand_over(&self, open: OpenFile, cloexec: bool, nonblock: bool) -> Result<i32, Errno> {
        let (_file, client) = self
            .host
            .files
            .add(open, (self.process.pid, self.process.uid))?;
        if nonblock {
            // The caller's fd shares this description: the flag is the caller's to see.
            nix::fcntl::fcntl(
                &client,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .map_err(|e| e as i32)?;
        }
        self.via.give(client, cloexec)
    }

    /// `uiommu status`: the JSON into the caller's buffer `[buf, buf + len)` if it fits;
    /// replies the JSON's length either way.
    fn status(&self, buf: u64, len: u64) -> Result<i64, Errno> {
        let text = crate::status::json(self.host).to_string();
        if text.len() as u64 <= len {
            use uiommu_platform::memory::UserMemory;
            self.process
                .mem
                .write(uiommu_platform::UserVa(buf), text.as_bytes())
                .map_err(|_| EFAULT)?;
        }
        Ok(text.len() as i64)
    }

    /// The file the caller has at `fd`, if it is ours.
    fn file_at(&self, fd: i32) -> Result<Arc<HostFile>, Errno> {
        let got = self.process.take_fd(fd)?;
        self.host.files.of_fd(got.as_fd()).ok_or(EBADFD)
    }

    /// An operation on `file` (the fd sent with the call), with its line to the engine's
    /// tracers when any is connected (`uiommu trace`).
    pub(crate) fn on_file(&self, file: &HostFile, req: Request) -> Message {
        let tracers = &self.host.tracers;
        if !tracers.on() || !matches!(req.op, OP_IOCTL | OP_READ | OP_WRITE | OP_MMAP) {
            return self.on_file_untraced(file, req);
        }
        let mem = self.mem.unwrap_or(&*self.process.mem);
        let before = crate::trace::before(file, mem, req.op, &req.args);
        let m = self.on_file_untraced(file, req);
        let result = if m.err != 0 { Err(m.err) } else { Ok(m.val) };
        crate::trace::after(self, file, mem, req.op, &req.args, &before, result);
        m
    }

    fn on_file_untraced(&self, file: &HostFile, req: Request) -> Message {
        let caller = self.caller();
        let space = self.process.space;
        match req.op {
            OP_IOCTL => {
                let (p, q) = (self.process.clone(), self.process.clone());
                let all_root = self.host.config.as_root;
                // The caller's capabilities and limit, each read when a call needs it.
                Message::reply(uiommu_core::with_caller(
                    space,
                    move || p.caps(all_root),
                    move || q.memlock_pages(),
                    || file.open.ioctl(&caller, req.args[0], req.args[1]),
                ))
            }
            OP_READ | OP_WRITE => {
                let dir = if req.op == OP_READ {
                    Dir::Read
                } else {
                    Dir::Write
                };
                let count = usize::try_from(req.args[1]).unwrap_or(usize::MAX);
                let r = if req.args[3] == 1 {
                    file_io(
                        &caller,
                        &file.open,
                        dir,
                        req.args[0],
                        count,
                        Pos::At(req.args[2] as i64),
                    )
                    .map(|(n, _)| n as i64)
                } else {
                    let mut pos = file.pos();
                    match file_io(
                        &caller,
                        &file.open,
                        dir,
                        req.args[0],
                        count,
                        Pos::Stream(*pos),
                    ) {
                        Ok((n, moves)) => {
                            if moves {
                                *pos = pos.saturating_add(n as i64);
                            }
                            Ok(n as i64)
                        }
                        Err(e) => Err(e),
                    }
                };
                Message::reply(r)
            }
            OP_MMAP => Message::reply(Err(mmap_refusal(
                &file.open,
                req.args[0],
                req.args[1] as i32,
                req.args[2] as i32,
                req.args[3] as i64,
            ))),
            OP_STAT => {
                let (kind, n) = file.open.node.map_or((0, 0), Target::encode);
                Message::reply(Ok((i64::from(kind) << 32) | i64::from(n)))
            }
            _ => Message::reply(Err(EINVAL)),
        }
    }
}

impl FdTable for Call<'_> {
    fn iommufd(&self, fd: i32) -> Result<Context, Errno> {
        match &self.file_at(fd)?.open.kind {
            Kind::Iommufd(f) => Ok(f.context().clone()),
            // iommufd_ctx_from_fd on another file: EBADFD.
            _ => Err(EBADFD),
        }
    }

    fn eventfd(&self, fd: i32) -> Result<Box<dyn Fn() + Send + Sync>, Errno> {
        let ev = self.process.take_fd(fd)?;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", crate::raw_fd(&ev)));
        if !link.is_ok_and(|t| t.as_os_str() == "anon_inode:[eventfd]") {
            return Err(EINVAL);
        }
        Ok(Box::new(move || {
            // Never block the engine on a full counter: the signal is lost, as the kernel's
            // eventfd_signal saturates.
            let mut fds = [nix::poll::PollFd::new(
                ev.as_fd(),
                nix::poll::PollFlags::POLLOUT,
            )];
            if matches!(
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
                Ok(1)
            ) {
                let _ = nix::unistd::write(&ev, &1u64.to_ne_bytes());
            }
        }))
    }

    fn install(&self, file: Arc<dyn EngineFile>, cloexec: bool) -> Result<i32, Errno> {
        let open = OpenFile::new(Kind::Engine(file), uiommu_uapi::file::O_RDWR, None);
        self.hand_over(open, cloexec, false)
    }

    fn uninstall(&self, fd: i32) {
        self.via.take_back(fd);
    }

    fn file(&self, fd: i32) -> Result<Arc<dyn EngineFile>, Errno> {
        match &self.file_at(fd).map_err(|_| EBADF)?.open.kind {
            Kind::Engine(f) => Ok(f.clone()),
            _ => Err(EBADF),
        }
    }
}
