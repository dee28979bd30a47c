//! The live trace of a host engine (`uiommu trace`): one line per call any client makes on a
//! file of ours — ioctls, reads and writes, from preload and seccomp front-ends and rings
//! alike — sent to every tracer connected with `OP_TRACE` (docs/TRACE.md).
//!
//! A tracer hands the engine one end of a `SOCK_SEQPACKET` pair; each line is one packet,
//! sent without waiting: a tracer that does not keep up loses lines (counted, and said in
//! the next line that gets through) rather than slowing the engine, and one that went away
//! is dropped. With no tracer, a call pays one relaxed atomic load.
//!
//! Only root and the engine's own uid may trace: a line shows every client's arguments.

use crate::files::HostFile;
use std::fmt::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use uiommu_platform::memory::UserMemory;
use uiommu_platform::UserVa;
use uiommu_proto::{OP_IOCTL, OP_MMAP, OP_READ, OP_WRITE};
use uiommu_uapi::trace::{call, format, io_shown, FileKind, Line, Object, Op, Record, Who};

/// [`uiommu_proto::OP_TRACE`]'s flag: JSON lines instead of text.
pub const TRACE_JSON: u64 = 1;

struct Tracer {
    sock: OwnedFd,
    json: bool,
    /// Lines not sent since the last one that was (the tracer's socket was full).
    lost: u64,
}

/// The tracers of an engine.
#[derive(Default)]
pub struct Tracers {
    on: AtomicBool,
    list: Mutex<Vec<Tracer>>,
}

impl Tracers {
    /// Whether anyone traces.
    #[inline]
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// How many tracers are connected.
    pub fn count(&self) -> usize {
        self.list.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Send lines to `sock` from now on.
    pub fn add(&self, sock: OwnedFd, json: bool) {
        if let Ok(mut l) = self.list.lock() {
            l.push(Tracer {
                sock,
                json,
                lost: 0,
            });
            self.on.store(true, Ordering::Relaxed);
        }
    }

    /// Send `rec`'s line to every tracer.
    fn emit(&self, rec: &Record<'_>) {
        let Ok(mut list) = self.list.lock() else {
            return;
        };
        let mut lines: [Option<Line>; 2] = [None, None];
        list.retain_mut(|t| {
            // Lines lost before are said first; while the socket stays full, this one is lost
            // too.
            if t.lost > 0 {
                let mut note = Line::new();
                let _ = if t.json {
                    writeln!(note, "{{\"lost\":{}}}", t.lost)
                } else {
                    writeln!(
                        note,
                        "... {} lines lost (the tracer did not keep up)",
                        t.lost
                    )
                };
                match send(&t.sock, note.bytes()) {
                    Sent::Gone => return false,
                    Sent::Full => {
                        t.lost += 1;
                        return true;
                    }
                    Sent::Yes => t.lost = 0,
                }
            }
            let line = lines[usize::from(t.json)].get_or_insert_with(|| {
                let mut l = Line::new();
                format(&mut l, rec, t.json);
                l
            });
            match send(&t.sock, line.bytes()) {
                Sent::Gone => false,
                Sent::Full => {
                    t.lost += 1;
                    true
                }
                Sent::Yes => true,
            }
        });
        if list.is_empty() {
            self.on.store(false, Ordering::Relaxed);
        }
    }
}

enum Sent {
    Yes,
    /// The tracer's socket is full: the line is lost.
    Full,
    /// The tracer went away.
    Gone,
}

/// One packet to a tracer, without waiting.
fn send(sock: &OwnedFd, bytes: &[u8]) -> Sent {
    use rustix::net::SendFlags;
    match rustix::net::send(
        sock.as_fd(),
        bytes,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    ) {
        Ok(_) => Sent::Yes,
        Err(rustix::io::Errno::AGAIN) => Sent::Full,
        Err(_) => Sent::Gone,
    }
}

/// What a traced call saw before it ran: its argument struct (or a write's value).
pub(crate) struct Before {
    bytes: [u8; 256],
    len: usize,
    started: std::time::Instant,
}

/// The bytes of a call's argument the line shows: an ioctl's struct, a register write's
/// value (at most 8 bytes).
pub(crate) fn before(file: &HostFile, mem: &dyn UserMemory, op: u32, args: &[u64; 6]) -> Before {
    let mut b = Before {
        bytes: [0; 256],
        len: 0,
        started: std::time::Instant::now(),
    };
    let kind = FileKind::of_open(&file.open);
    let n = match op {
        OP_IOCTL => call(kind, args[0] as u32).1,
        OP_WRITE => io_shown(kind, args[1]),
        _ => 0,
    };
    let n = n.min(b.bytes.len());
    let at = if op == OP_IOCTL { args[1] } else { args[0] };
    if n > 0 && mem.read(UserVa(at), &mut b.bytes[..n]).is_ok() {
        b.len = n;
    }
    b
}

/// After a traced call: its line to every tracer.
pub(crate) fn after(
    c: &crate::conn::Call<'_>,
    file: &HostFile,
    mem: &dyn UserMemory,
    op: u32,
    args: &[u64; 6],
    b: &Before,
    result: Result<i64, i32>,
) {
    let (host, pid) = (c.host, c.process.pid);
    let took_ns = u64::try_from(b.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let kind = FileKind::of_open(&file.open);
    let offset = (args[3] == 1).then_some(args[2]);
    let (rec_op, at, out_len) = match op {
        OP_IOCTL => (
            Op::Ioctl {
                request: args[0] as u32,
                arg: args[1],
            },
            args[1],
            b.len,
        ),
        OP_READ => (
            Op::Read {
                buf: args[0],
                count: args[1],
                offset,
            },
            args[0],
            match (kind, result) {
                (FileKind::FaultQueue, Ok(n)) => io_shown(kind, n as u64),
                (_, Ok(n)) if n == args[1] as i64 => io_shown(kind, args[1]),
                _ => 0,
            },
        ),
        OP_WRITE => (
            Op::Write {
                buf: args[0],
                count: args[1],
                offset,
            },
            args[0],
            0,
        ),
        OP_MMAP => (
            Op::Mmap {
                len: args[0],
                prot: args[1] as u32,
                flags: args[2] as u32,
                offset: args[3],
            },
            0,
            0,
        ),
        _ => return,
    };
    let mut out = [0u8; 256];
    let out_len =
        if result.is_ok() && out_len > 0 && mem.read(UserVa(at), &mut out[..out_len]).is_ok() {
            out_len
        } else {
            0
        };
    let object = Object::of_open(&file.open).with_file(file.id);
    let wall_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let input = if matches!(rec_op, Op::Read { .. }) {
        &b.bytes[..0]
    } else {
        &b.bytes[..b.len]
    };
    host.tracers.emit(&Record {
        wall_ns,
        who: Who {
            pid,
            tid: None,
            fd: None,
        },
        kind,
        object,
        op: rec_op,
        input,
        output: &out[..out_len],
        result,
        took_ns,
    });
}
