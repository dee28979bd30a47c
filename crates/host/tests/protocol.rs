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

/// Removes the test instance's socket and lock file when the test ends.
struct Files(String);

impl Drop for Files {
    fn drop(&mut self) {
        uiommu_host::remove_instance_files(&self.0);
    }
}

fn engine(name: &str) -> (Arc<Host>, std::path::PathBuf, Files) {
    let instance = format!("proto-{}-{name}", std::process::id());
    let host = Host::new(uiommu_platform::Platform::builtin(), Config::new(&instance)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = host.clone();
    std::thread::spawn(move || {
        let _ = uiommu_host::serve(h, || tx.send(()).unwrap());
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (host, socket_path(&instance), Files(instance))
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
    let (host, path, _files) = engine("hostile");
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
    // A trace with no socket (EBADF), a stream socket or unknown flags (EINVAL): no tracer.
    assert_eq!(call(&s, OP_TRACE, [0; 6], None).err, 9);
    let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(call(&s, OP_TRACE, [0; 6], Some(stream.as_raw_fd())).err, 22);
    let (a, _b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    assert_eq!(
        call(&s, OP_TRACE, [2, 0, 0, 0, 0, 0], Some(a.as_raw_fd())).err,
        22
    );
    assert_eq!(host.tracers.count(), 0);
    // A good one is taken.
    assert_eq!(
        call(&s, OP_TRACE, [1, 0, 0, 0, 0, 0], Some(a.as_raw_fd())).err,
        0
    );
    assert_eq!(host.tracers.count(), 1);
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

/// One call whose reply may be preceded by a file handed over (`K_TAKE_FD`, answered with the
/// number): the reply and the file received.
fn call_taking(
    sock: &std::os::fd::OwnedFd,
    op: u32,
    args: [u64; 6],
    fd: Option<i32>,
) -> (Message, Option<i32>) {
    send(sock.as_raw_fd(), &Request::new(op, args).to_bytes(), fd).unwrap();
    let mut taken = None;
    loop {
        let mut buf = [0u8; MESSAGE_LEN];
        let (n, got) = receive(sock.as_raw_fd(), &mut buf).unwrap();
        let m = Message::from_bytes(&buf[..n]).unwrap();
        if m.kind == K_TAKE_FD {
            let f = got.unwrap();
            taken = Some(f);
            let answer = Request::new(OP_TOOK_FD, [f as u64, 0, 0, 0, 0, 0]);
            send(sock.as_raw_fd(), &answer.to_bytes(), None).unwrap();
            continue;
        }
        return (m, taken);
    }
}

/// Wait until every slot of `ring` is done, waking the engine.
fn wait_done(ring: &uiommu_proto::ring::Ring) {
    use std::sync::atomic::Ordering::SeqCst;
    ring.doorbell().fetch_add(1, SeqCst);
    uiommu_proto::ring::futex_wake(ring.doorbell());
    let deadline = Instant::now() + Duration::from_secs(10);
    while (0..uiommu_proto::ring::SLOTS)
        .any(|i| ring.slot_state(i).load(SeqCst) == uiommu_proto::ring::READY)
    {
        assert!(
            Instant::now() < deadline,
            "the engine answers every posted slot"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_ring_written_by_a_hostile_client_gets_errnos_and_dies_with_its_file() {
    use std::sync::atomic::Ordering::SeqCst;
    use uiommu_proto::ring::{self, Mapping, DEAD, DONE, READY, REFUSED, SLOTS};
    let (host, path, _files) = engine("ring");
    let s = connect(&path);
    let (m, iommufd) = call_taking(&s, OP_OPEN, [1, 0, 2, 0, 0, 0], None);
    assert_eq!(m.err, 0);
    let iommufd = iommufd.unwrap();
    // A ring of a file that is not an iommufd: EOPNOTSUPP (a VFIO cdev, node kind 2).
    let (m, dev) = call_taking(&s, OP_OPEN, [2, 0, 2, 0, 0, 0], None);
    assert_eq!(m.err, 0);
    let dev = dev.unwrap();
    let (m, none) = call_taking(&s, OP_RING, [0; 6], Some(dev));
    assert_eq!((m.err, none), (nix::libc::EOPNOTSUPP, None));
    close(dev);
    // The iommufd's ring: a sealed memfd (it cannot be shrunk under the engine).
    let (m, memfd) = call_taking(&s, OP_RING, [0; 6], Some(iommufd));
    assert_eq!(m.err, 0);
    let memfd = memfd.unwrap();
    // Opened again through /proc (no raw-fd conversion needed), the received fd closed.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{memfd}"))
        .unwrap();
    close(memfd);
    let memfd = file;
    assert!(memfd.set_len(0).is_err(), "the ring's memfd is sealed");
    let map = Mapping::new(std::os::fd::AsFd::as_fd(&memfd)).unwrap();
    let r = map.ring();
    assert_eq!(r.magic().load(SeqCst), ring::RING_MAGIC);
    assert_eq!(host.rings.load(SeqCst), 1);

    // Garbage in every slot (not a request): EINVAL each, DONE.
    use std::os::unix::fs::FileExt;
    let junk: Vec<u8> = (0..4096 - 64).map(|i| (i * 7 + 3) as u8).collect();
    memfd.write_all_at(&junk, 64).unwrap();
    for i in 0..SLOTS {
        r.slot_state(i).store(READY, SeqCst);
    }
    wait_done(&r);
    for i in 0..SLOTS {
        assert_eq!(r.slot_state(i).load(SeqCst), DONE);
        assert_eq!(r.reply(i).unwrap().err, nix::libc::EINVAL);
    }
    // Requests a ring does not take: REFUSED (the front-end sends them as messages).
    let refused = [
        Request::new(OP_OPEN, [1, 0, 2, 0, 0, 0]),
        Request::new(OP_RING, [0; 6]),
        // IOMMU_TEST_CMD may make files: not through a ring.
        Request::new(OP_IOCTL, [0x3ba0, 8, 0, 0, 0, 0]),
    ];
    for (i, req) in refused.iter().enumerate() {
        r.set_request(i, req);
        r.slot_state(i).store(READY, SeqCst);
    }
    wait_done(&r);
    for i in 0..refused.len() {
        assert_eq!(r.reply(i).unwrap().err, REFUSED);
    }
    // A hot call with a bad pointer and an absurd inline length: the copy is cut to a slot's
    // size and is all junk (an IOAS_ALLOC of size 0x0f0b0703...): an errno, not a crash.
    r.set_request(0, &Request::new(OP_IOCTL, [0x3b81, 8, u64::MAX, 0, 0, 0]));
    r.slot_state(0).store(READY, SeqCst);
    wait_done(&r);
    assert!(r.reply(0).unwrap().err > 0);
    // A copy claimed at the very top of the address space: an errno, not an overflow.
    r.set_request(
        0,
        &Request::new(OP_IOCTL, [0x3b81, u64::MAX - 3, 12, 0, 0, 0]),
    );
    r.slot_state(0).store(READY, SeqCst);
    wait_done(&r);
    assert!(r.reply(0).unwrap().err > 0);
    // And without an inline copy, the engine reads the struct itself: EFAULT at address 8.
    r.set_request(1, &Request::new(OP_IOCTL, [0x3b81, 8, 0, 0, 0, 0]));
    r.slot_state(1).store(READY, SeqCst);
    wait_done(&r);
    assert_eq!(r.reply(1).unwrap().err, nix::libc::EFAULT);
    for i in 0..SLOTS {
        r.slot_state(i).store(ring::FREE, SeqCst);
    }
    // A well-formed call through the ring works (the struct on this thread's stack travels in
    // the slot, and the output comes back).
    let mut alloc = [12u32, 0, 0];
    let req = Request::new(OP_IOCTL, [0x3b81, alloc.as_mut_ptr() as u64, 0, 0, 0, 0]);
    match ring::call(&r, &req, u64::MAX, || true) {
        ring::Outcome::Reply(m) => assert_eq!((m.err, m.val), (0, 0)),
        ring::Outcome::ByMessage { .. } => panic!("the ring refused IOAS_ALLOC"),
    }
    assert_ne!(std::hint::black_box(&alloc)[2], 0, "out_ioas_id came back");

    // A process gets at most its share of rings (each is a thread of the engine's): EAGAIN.
    let mut extra = Vec::new();
    loop {
        let (m, fd) = call_taking(&s, OP_RING, [0; 6], Some(iommufd));
        match fd {
            Some(fd) => extra.push(fd),
            None => {
                assert_eq!(m.err, nix::libc::EAGAIN);
                break;
            }
        }
        assert!(extra.len() < 1000, "rings are bounded per process");
    }
    assert_eq!(extra.len() + 1, uiommu_host::ring::PER_PROCESS);
    extra.into_iter().for_each(close);
    // The file's last fd goes: the ring answers GONE, and its thread marks it dead and ends.
    close(iommufd);
    assert_eq!(call(&s, OP_SYNC, [0; 6], None).err, 0);
    assert!(host.files.is_empty());
    assert!(matches!(
        ring::call(&r, &req, u64::MAX, || true),
        ring::Outcome::ByMessage { dead: true }
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.rings.load(SeqCst) != 0 {
        assert!(Instant::now() < deadline, "the ring's thread ends");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(r.state().load(SeqCst), DEAD);
    // Posted to a dead ring: nothing takes it (the front-end takes it back and sends a message).
    r.set_request(2, &req);
    r.slot_state(2).store(READY, SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.slot_state(2).load(SeqCst), READY);
    assert!(host.engine.check_invariants().is_ok());
}
