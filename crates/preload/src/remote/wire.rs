//! The wire format between a descendant and its ancestor's server: requests (magic, op, inode,
//! four arguments), the messages of a call (replies, fds asked for, given and taken), and the
//! server's abstract socket name.

use super::*;

/// Magic of a request.
pub(super) const MAGIC: u32 = 0x7569_6f32;
/// A request: magic, op, dev, ino, then four arguments (u64 each).
pub(super) const REQ_LEN: usize = 56;
/// Operations.
pub(super) const OP_IOCTL: u32 = 1;
pub(super) const OP_READ: u32 = 2;
pub(super) const OP_WRITE: u32 = 3;
pub(super) const OP_MMAP: u32 = 4;
pub(super) const OP_CLOSED: u32 = 5;
/// A descendant forked: the first argument is the new pid.
pub(super) const OP_FORKED: u32 = 6;
/// What `fstat` says of the file (the `/dev` node it was opened from).
pub(super) const OP_NODE: u32 = 7;
/// The fault queue's readiness eventfd, attached to the reply.
pub(super) const OP_READY: u32 = 8;
/// The descendant received the file by `SCM_RIGHTS`: one hold of it is released
/// (`crate::passing`).
pub(super) const OP_RECEIVED: u32 = 9;
/// The descendant sends the file over a socket: the owner takes a hold of it (the
/// descendant's fd, first argument, fetched by `SCM_RIGHTS`) until it is received.
pub(super) const OP_HOLD: u32 = 10;

/// A message during a call: kind (u32), 0 (u32), then three i64.
pub(super) const MSG_LEN: usize = 32;
/// Owner → child, the end of the call: result, errno (0 on success), a second result (for
/// `read`/`write`: whether a file position moves by the result); an fd may be attached.
pub(super) const K_REPLY: u32 = 1;
/// Owner → child: send your fd number `x`.
pub(super) const K_NEED_FD: u32 = 2;
/// Child → owner: the fd asked for is attached (`x` 0), or `x` is the errno.
pub(super) const K_GIVE_FD: u32 = 3;
/// Owner → child: install the attached fd (`x` 1: close-on-exec).
pub(super) const K_TAKE_FD: u32 = 4;
/// Child → owner: the number it got (`x`), or minus the errno.
pub(super) const K_TOOK_FD: u32 = 5;
/// Owner → child: close your fd `x`, just installed by K_TAKE_FD of this call (the reply
/// naming it could not be written); the child answers K_TOOK_FD.
pub(super) const K_DROP_FD: u32 = 6;
/// Errno of a reply meaning "that inode is not one of mine".
pub(super) const NOT_MINE: i64 = -1;

/// One message.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Msg {
    pub(super) kind: u32,
    pub(super) x: i64,
    pub(super) y: i64,
    pub(super) z: i64,
}

impl Msg {
    pub(super) fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        b[0..4].copy_from_slice(&self.kind.to_ne_bytes());
        b[8..16].copy_from_slice(&self.x.to_ne_bytes());
        b[16..24].copy_from_slice(&self.y.to_ne_bytes());
        b[24..32].copy_from_slice(&self.z.to_ne_bytes());
        b
    }

    pub(super) fn decode(b: &[u8; MSG_LEN]) -> Msg {
        let w = |i: usize| i64::from_ne_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        Msg {
            kind: u32::from_ne_bytes(b[0..4].try_into().unwrap_or([0; 4])),
            x: w(8),
            y: w(16),
            z: w(24),
        }
    }
}

/// Send `bytes` on the stream socket `sock`, with `fd` attached when given.
pub(super) fn send(sock: RawFd, bytes: &[u8], fd: Option<RawFd>) -> Result<(), Errno> {
    let fds = [fd.unwrap_or(-1)];
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fd.is_some() { &rights } else { &[] };
    let mut sent = 0;
    while sent < bytes.len() {
        let iov = [IoSlice::new(&bytes[sent..])];
        let c = if sent == 0 { cmsgs } else { &[] };
        match sendmsg::<UnixAddr>(sock, &iov, c, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => sent += n,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e as Errno),
        }
    }
    Ok(())
}

/// Receive exactly `buf.len()` bytes from `sock`, and the fd attached to them if any
/// (received close-on-exec).
pub(super) fn receive(sock: RawFd, buf: &mut [u8]) -> Result<Option<OwnedFd>, Errno> {
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut fd = None;
    let first = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<UnixAddr>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => {
                for c in m.cmsgs().map_err(|e| e as Errno)? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for f in fds {
                            // SAFETY: the kernel just installed `f` in this process for this
                            // message; nothing else owns it.
                            let owned = unsafe { OwnedFd::from_raw_fd(f) };
                            if fd.is_none() {
                                fd = Some(owned);
                            }
                        }
                    }
                }
                break m.bytes;
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e as Errno),
        }
    };
    if first == 0 {
        return Err(libc::EIO);
    }
    let mut have = first;
    while have < buf.len() {
        match recv(sock, &mut buf[have..], MsgFlags::empty()) {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => have += n,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e as Errno),
        }
    }
    Ok(fd)
}

pub(super) fn send_msg(sock: RawFd, m: Msg, fd: Option<RawFd>) -> Result<(), Errno> {
    send(sock, &m.encode(), fd)
}

pub(super) fn receive_msg(sock: RawFd) -> Result<(Msg, Option<OwnedFd>), Errno> {
    let mut b = [0u8; MSG_LEN];
    let fd = receive(sock, &mut b)?;
    Ok((Msg::decode(&b), fd))
}

pub(super) fn name(pid: i32, nonce: u64) -> String {
    format!("uiommu-{pid}-{nonce:016x}")
}
