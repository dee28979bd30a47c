//! A hostile client of the host engine: malformed messages, unknown operations, calls without
//! the file they need, files that are not the engine's, bad buffers, a client that goes away
//! in the middle of handing over a file. The engine answers each with an errno (or closes that
//! connection) and keeps serving everyone else, with nothing leaked.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uiommu_host::{Config, Host};
use uiommu_proto::client::{receive, send, Client};
use uiommu_proto::*;

fn engine(name: &str) -> (Arc<Host>, std::path::PathBuf) {
    let instance = format!("proto-{}-{name}", std::process::id());
    let host = Host::new(uiommu_platform::Platform::builtin(), Config::new(&instance)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = host.clone();
    std::thread::spawn(move || {
        let _ = uiommu_host::serve(h, || tx.send(()).unwrap());
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (host, socket_path(&instance))
}

/// A raw SEQPACKET connection to the engine.
fn connect(path: &std::path::Path) -> std::os::fd::OwnedFd {
    use rustix::net::{
        connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType,
    };
    let s = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    connect(&s, &SocketAddrUnix::new(path).unwrap()).unwrap();
    s
}

/// Send raw bytes (and an fd), read the reply.
fn exchange(sock: &std::os::fd::OwnedFd, bytes: &[u8], fd: Option<i32>) -> Option<Message> {
    send(sock.as_raw_fd(), bytes, fd).ok()?;
    let mut buf = [0u8; MESSAGE_LEN];
    let (n, got) = receive(sock.as_raw_fd(), &mut buf).ok()?;
    if let Some(f) = got {
        close(f);
    }
    Message::from_bytes(&buf[..n])
}

/// Close an fd the engine sent us (received raw).
fn close(fd: i32) {
    let _ = nix::unistd::close(fd);
}

fn call(sock: &std::os::fd::OwnedFd, op: u32, args: [u64; 6], fd: Option<i32>) -> Message {
    exchange(sock, &Request::new(op, args).to_bytes(), fd).expect("a reply")
}

#[test]
fn malformed_and_hostile_messages_get_errnos_and_the_engine_keeps_serving() {
    let (host, path) = engine("hostile");
    let s = connect(&path);
    // Short, long and wrong-magic messages: EINVAL.
    for bytes in [
        &b"x"[..],
        &[0u8; REQUEST_LEN - 1][..],
        &[0u8; REQUEST_LEN][..],
        &[0xffu8; REQUEST_LEN + 40][..],
    ] {
        let m = exchange(&s, bytes, None).unwrap();
        assert_eq!((m.kind, m.err), (K_REPLY, 22));
    }
    // Unknown operations, with and without a file of ours: EINVAL or not-mine.
    assert_eq!(call(&s, 999, [0; 6], None).err, NOT_MINE);
    // Operations on a file, without one, or with one that is not the engine's.
    let devnull = std::fs::File::open("/dev/null").unwrap();
    for op in [OP_IOCTL, OP_READ, OP_WRITE, OP_MMAP, OP_STAT] {
        assert_eq!(call(&s, op, [0; 6], None).err, NOT_MINE);
        assert_eq!(
            call(&s, op, [0; 6], Some(devnull.as_raw_fd())).err,
            NOT_MINE
        );
    }
    // A reopen of an inode that is not one of ours; an open of nodes that do not exist.
    assert_eq!(call(&s, OP_REOPEN, [1, 2, 2, 0, 0, 0], None).err, NOT_MINE);
    assert_eq!(call(&s, OP_OPEN, [0, 0, 2, 0, 0, 0], None).err, 2);
    assert_eq!(call(&s, OP_OPEN, [2, 999, 2, 0, 0, 0], None).err, 2);
    assert_eq!(call(&s, OP_OPEN, [4, 999, 2, 0, 0, 0], None).err, 2);
    // Status into a buffer that is not ours to write: EFAULT.
    assert_eq!(call(&s, OP_STATUS, [8, 1 << 20, 0, 0, 0, 0], None).err, 14);
    // An open whose handed-over file the client answers wrongly: the call fails, and the
    // file (in flight, then dropped with the message) does not stay open.
    send(
        s.as_raw_fd(),
        &Request::new(OP_OPEN, [1, 0, 2, 0, 0, 0]).to_bytes(),
        None,
    )
    .unwrap();
    let mut buf = [0u8; MESSAGE_LEN];
    let (n, fd) = receive(s.as_raw_fd(), &mut buf).unwrap();
    assert_eq!(Message::from_bytes(&buf[..n]).unwrap().kind, K_TAKE_FD);
    close(fd.unwrap());
    let m = exchange(&s, &Request::new(OP_SYNC, [0; 6]).to_bytes(), None).unwrap();
    assert_eq!(
        (m.kind, m.err),
        (K_REPLY, 5),
        "a wrong answer to K_TAKE_FD is EIO"
    );
    // A client that goes away in the middle of a handover.
    let gone = connect(&path);
    send(
        gone.as_raw_fd(),
        &Request::new(OP_OPEN, [1, 0, 2, 0, 0, 0]).to_bytes(),
        None,
    )
    .unwrap();
    drop(gone);
    // The engine still serves a well-behaved client, and ends up holding nothing.
    static CLIENT: Client = Client::new();
    assert!(CLIENT.set_path(path.as_os_str().as_encoded_bytes()));
    let m = CLIENT.call(Request::new(OP_HELLO, [0; 6]), None).unwrap();
    assert_eq!(m.val, VERSION);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        host.reap();
        if host.files.is_empty() && host.engine.contexts() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "files left: {}",
            host.files.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(host.engine.check_invariants().is_ok());
}
