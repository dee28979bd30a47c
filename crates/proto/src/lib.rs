//! The protocol between uiommu's front-ends and the host engine (`uiommu serve`).
//!
//! # Files are sockets
//!
//! Every file the engine opens for a program (`/dev/iommu`, a VFIO cdev, the legacy container
//! and groups, the files the engine makes: fault queues, group device files, selftest access
//! files) is one end of a `socketpair` the engine made; the engine keeps the other end. The
//! program's fd *is* that socket, so the kernel shares it through `dup`, `fork`, `exec` and
//! `SCM_RIGHTS` to any process exactly as it would a device file, and the engine learns that
//! the last reference went (every fd in every process closed, no message in flight holding
//! it) when its own end hangs up. A program cannot name a file it does not hold: every call on
//! a file sends the fd itself with the request (`SCM_RIGHTS`), and the engine finds the file by
//! the inode of what it received. Opening `/proc/PID/fd/N` of such a socket fails in the kernel
//! (ENXIO); a front-end turns it into a new open of the same node ([`OP_REOPEN`]), as Linux
//! does for a device file.
//!
//! An fd is one of ours when it is a socket whose peer (`SO_PEERCRED`, the process that made
//! the pair) is the engine.
//!
//! # Calls
//!
//! A front-end talks to the engine over `SOCK_SEQPACKET` connections to the instance's socket
//! ([`socket_path`]). Each message of a client is a [`Request`]; the engine identifies the
//! caller from the kernel-stamped `SCM_CREDENTIALS` of each message (`SO_PASSCRED`), never
//! from the client's word, and reads and writes the caller's memory itself. During a call the
//! engine may send [`K_TAKE_FD`] (install this file in the caller: answered with
//! [`OP_TOOK_FD`] and the new fd's number) and [`K_DROP_FD`] (close that fd again: answered
//! with [`OP_DROPPED`]); the call ends with one [`K_REPLY`].
//!
//! [`client`] is the front-end side: no allocation and no lock on the call path (a fixed pool
//! of connections taken with atomics), so a call from a signal handler never deadlocks.

pub mod client;
pub mod ring;

/// First word of every message.
pub const MAGIC: u32 = 0x7569_6f33;

/// Client → engine: a call, or an answer to a request of the engine during a call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// [`MAGIC`].
    pub magic: u32,
    /// One of the `OP_*` numbers.
    pub op: u32,
    /// The operation's arguments.
    pub args: [u64; 6],
}

/// Engine → client: the end of a call, or a request during it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// [`MAGIC`].
    pub magic: u32,
    /// One of the `K_*` numbers.
    pub kind: u32,
    /// The call's return value (with [`K_REPLY`]), or the fd number ([`K_DROP_FD`]).
    pub val: i64,
    /// 0, a positive errno, or [`NOT_MINE`].
    pub err: i32,
    /// [`K_TAKE_FD`]: `O_CLOEXEC` wanted.
    pub flags: u32,
    /// More results of the operation ([`OP_HELLO`]: the engine's pid).
    pub extra: [u64; 2],
}

/// Size of a [`Request`] on the wire.
pub const REQUEST_LEN: usize = size_of::<Request>();
/// Size of a [`Message`] on the wire.
pub const MESSAGE_LEN: usize = size_of::<Message>();

impl Request {
    /// A request of `op` with `args`.
    pub fn new(op: u32, args: [u64; 6]) -> Request {
        Request {
            magic: MAGIC,
            op,
            args,
        }
    }

    /// The bytes sent.
    pub fn to_bytes(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&self.magic.to_ne_bytes());
        b[4..8].copy_from_slice(&self.op.to_ne_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        b
    }

    /// A received request; `None` unless it is whole and starts with [`MAGIC`].
    pub fn from_bytes(b: &[u8]) -> Option<Request> {
        if b.len() != REQUEST_LEN {
            return None;
        }
        let w = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let magic = u32::from_ne_bytes(b[0..4].try_into().ok()?);
        (magic == MAGIC).then(|| Request {
            magic,
            op: u32::from_ne_bytes(b[4..8].try_into().unwrap_or([0; 4])),
            args: [w(8), w(16), w(24), w(32), w(40), w(48)],
        })
    }
}

impl Message {
    /// A message of `kind` with value `val`.
    pub fn new(kind: u32, val: i64) -> Message {
        Message {
            magic: MAGIC,
            kind,
            val,
            ..Message::default()
        }
    }

    /// A [`K_REPLY`]: `Ok(value)` or `Err(errno)`.
    pub fn reply(r: Result<i64, i32>) -> Message {
        match r {
            Ok(v) => Message::new(K_REPLY, v),
            Err(e) => Message {
                err: e,
                ..Message::new(K_REPLY, -1)
            },
        }
    }

    /// The bytes sent.
    pub fn to_bytes(&self) -> [u8; MESSAGE_LEN] {
        let mut b = [0u8; MESSAGE_LEN];
        b[0..4].copy_from_slice(&self.magic.to_ne_bytes());
        b[4..8].copy_from_slice(&self.kind.to_ne_bytes());
        b[8..16].copy_from_slice(&self.val.to_ne_bytes());
        b[16..20].copy_from_slice(&self.err.to_ne_bytes());
        b[20..24].copy_from_slice(&self.flags.to_ne_bytes());
        b[24..32].copy_from_slice(&self.extra[0].to_ne_bytes());
        b[32..40].copy_from_slice(&self.extra[1].to_ne_bytes());
        b
    }

    /// A received message; `None` unless it is whole and starts with [`MAGIC`].
    pub fn from_bytes(b: &[u8]) -> Option<Message> {
        if b.len() != MESSAGE_LEN {
            return None;
        }
        let w = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let h = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        (h(0) == MAGIC).then(|| Message {
            magic: MAGIC,
            kind: h(4),
            val: w(8) as i64,
            err: h(16) as i32,
            flags: h(20),
            extra: [w(24), w(32)],
        })
    }
}

/// Say who calls: `args[0]` = [`HELLO_CAPS_ALL`] or 0. Replies the engine's protocol
/// [`VERSION`] and, in `extra[0]`, its pid.
pub const OP_HELLO: u32 = 1;
/// `open` of one of our nodes: `args` = node kind, node index (`uiommu_uapi::file::Target`
/// encoded), open flags. Replies 0 with the file (a [`K_TAKE_FD`] first).
pub const OP_OPEN: u32 = 2;
/// `open("/proc/PID/fd/N")` of one of our files: `args` = `st_dev`, `st_ino` of the socket the
/// path leads to, open flags: a new open of the node that file was opened from.
pub const OP_REOPEN: u32 = 3;
/// `ioctl` (the file attached): `args` = request, argument.
pub const OP_IOCTL: u32 = 4;
/// `read`/`pread` (the file attached): `args` = buffer, count, offset, 1 if at the offset.
pub const OP_READ: u32 = 5;
/// `write`/`pwrite`, as [`OP_READ`].
pub const OP_WRITE: u32 = 6;
/// `mmap` (the file attached): `args` = length, prot, flags, offset. Replies the errno the
/// mmap fails with.
pub const OP_MMAP: u32 = 7;
/// `fstat` (the file attached): replies the node it was opened from (`val` = kind << 32 |
/// index, `uiommu_uapi::file::Target` encoded; 0 for a file the engine made).
pub const OP_STAT: u32 = 8;
/// After a `close` of one of ours: replies once the engine has released every file no fd
/// refers to any more (Linux releases the file before `close` returns).
pub const OP_SYNC: u32 = 9;
/// `uiommu status`: `args` = buffer, length. Replies the JSON's size, and writes the JSON
/// into the buffer if it fits.
pub const OP_STATUS: u32 = 10;
/// The seccomp front-end: serve the calls a seccomp filter stops. The filter's listener is
/// attached; `args` = the first and one past the last fd number whose reads and writes the
/// filter stops (`uiommu_sys::seccomp::FdRange`). The engine serves the listener until no
/// process uses the filter; the connection may close at once.
pub const OP_SUPERVISE: u32 = 11;
/// Make a ring for the hot calls of the sender on the file attached ([`ring`]): the engine
/// hands a sealed memfd of [`ring::RING_LEN`] bytes over with [`K_TAKE_FD`] and replies its
/// number; EOPNOTSUPP for a file whose calls a ring does not take.
pub const OP_RING: u32 = 12;
/// The device nodes' owner and mode (`uiommu serve --mode`, its uid and gid): replies the
/// mode's permission bits in `val`, `extra` = [uid, gid]. (The legacy container is `0666`
/// whatever the mode, as on Linux.)
pub const OP_NODES: u32 = 13;
/// `uiommu trace`: from now on, a line for every call any client makes on a file of the
/// engine goes to the `SOCK_SEQPACKET` socket attached, one packet each (`args[0]` bit 0:
/// JSON lines). EACCES unless the sender is root or of the engine's uid.
pub const OP_TRACE: u32 = 14;
/// Answer to [`K_TAKE_FD`]: `args[0]` = the fd number, or the negated errno.
pub const OP_TOOK_FD: u32 = 20;
/// Answer to [`K_DROP_FD`].
pub const OP_DROPPED: u32 = 21;

/// [`OP_HELLO`]: the program asks for CAP_IPC_LOCK and CAP_SYS_RESOURCE in the emulation
/// (`uiommu run --as-root`); granted only to clients of the engine's own uid, or to everyone
/// by an engine started with `uiommu serve --as-root`.
pub const HELLO_CAPS_ALL: u64 = 1;

/// The end of a call.
pub const K_REPLY: u32 = 1;
/// Install the attached fd in the caller (`flags` & 1: close-on-exec).
pub const K_TAKE_FD: u32 = 2;
/// Close the caller's fd `val` (a file the caller was given during a call that then failed).
pub const K_DROP_FD: u32 = 3;

/// [`Message::err`]: the fd attached is not a file of this engine.
pub const NOT_MINE: i32 = -1;

/// Protocol version ([`OP_HELLO`]).
pub const VERSION: i64 = 1;

/// How long, by default, a front-end polls for a reply and the engine for a connection's next
/// call before sleeping, in microseconds: a round trip inside it needs no wake-up of either
/// process, which on these machines costs tens of microseconds (docs/HOST.md#performance).
pub const DEFAULT_SPIN_US: u64 = 50;

/// Default instance name.
pub const DEFAULT_INSTANCE: &str = "default";

/// The directory of the instances' sockets: `/run/uiommu` for root, else
/// `$XDG_RUNTIME_DIR/uiommu`, else `/tmp/uiommu-<uid>`.
pub fn socket_dir() -> std::path::PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return "/run/uiommu".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => std::path::Path::new(&d).join("uiommu"),
        _ => format!("/tmp/uiommu-{uid}").into(),
    }
}

/// The socket of instance `name` (`UIOMMU_INSTANCE`, default [`DEFAULT_INSTANCE`]).
pub fn socket_path(name: &str) -> std::path::PathBuf {
    socket_dir().join(format!("{name}.sock"))
}

/// Whether `name` is a usable instance name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with
/// a dot.
pub fn valid_instance(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_messages_round_trip() {
        let r = Request::new(OP_IOCTL, [1, 2, 3, u64::MAX, 5, 6]);
        assert_eq!(Request::from_bytes(&r.to_bytes()), Some(r));
        let m = Message {
            err: NOT_MINE,
            flags: 1,
            extra: [7, 8],
            ..Message::new(K_TAKE_FD, -5)
        };
        assert_eq!(Message::from_bytes(&m.to_bytes()), Some(m));
    }

    #[test]
    fn malformed_bytes_are_refused() {
        let mut b = Request::new(OP_SYNC, [0; 6]).to_bytes();
        assert!(Request::from_bytes(&b[..REQUEST_LEN - 1]).is_none());
        b[0] ^= 1;
        assert!(Request::from_bytes(&b).is_none());
        assert!(Message::from_bytes(&[0u8; MESSAGE_LEN]).is_none());
    }

    #[test]
    fn instance_names() {
        assert!(valid_instance("default"));
        assert!(valid_instance("test-1.a_b"));
        assert!(!valid_instance(""));
        assert!(!valid_instance(".hidden"));
        assert!(!valid_instance("a/b"));
        assert!(!valid_instance(&"x".repeat(65)));
        assert!(socket_path("x").ends_with("x.sock"));
    }
}
