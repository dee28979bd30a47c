//! The engine's side of rings, the fast path of hot calls ([`uiommu_proto::ring`]): a sealed
//! memfd page per (process, iommufd file), mapped here and by the process, served by a thread
//! of its own that polls for calls and then sleeps on the page's futex.
//!
//! A ring is made on a message ([`uiommu_proto::OP_RING`]) carrying the file's fd and the
//! sender's kernel-stamped credentials, so it is bound to that process and that file exactly
//! as a message would be; each call on it is served as that process's call on that file
//! ([`crate::conn::Call::on_file`]), after the same release of files nobody holds any more.
//! It serves only the calls that neither take nor make files ([`ring_ioctl`]) and refuses the
//! rest ([`REFUSED`]: the front-end sends them as messages). Once the file is released it
//! answers [`GONE`]; once the file is released or the process exits, the thread marks the ring
//! [`DEAD`], answers what is posted, and ends.

use crate::clients::Process;
use crate::conn::{Call, Handover};
use crate::files::HostFile;
use crate::Host;
use nix::libc::{EINVAL, EOPNOTSUPP};
use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use uiommu_platform::memory::{MemFault, UserMemory};
use uiommu_platform::UserVa;
use uiommu_proto::ring::{
    futex_wait, futex_wake, ring_ioctl, Mapping, Ring, DEAD, DONE, GONE, INLINE_MAX, READY,
    REFUSED, RING_LEN, SLOTS, TAKEN,
};
use uiommu_proto::{Message, OP_IOCTL};
use uiommu_uapi::file::Kind;
use uiommu_uapi::Errno;

/// Rings one process may have served at once (each is a thread and a page of the engine's):
/// beyond, `OP_RING` is EAGAIN and the front-end sends that file's calls as messages.
pub const PER_PROCESS: usize = 64;

/// How long an idle ring's thread sleeps before it looks whether its file and process live.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// The caller's copy of an argument struct, and the part of it written `[from, to)`.
type ArgCopy = ([u8; INLINE_MAX], Option<(usize, usize)>);

/// A call's memory with the caller's copy of its argument struct over `[va, va + len)`: reads
/// there come from the copy, writes go to it (the caller copies the written bytes back);
/// everything else is the process's memory.
struct Inline<'a> {
    under: &'a dyn UserMemory,
    va: u64,
    bytes: Mutex<ArgCopy>,
    len: usize,
}

impl Inline<'_> {
    /// The part of `[va, va + n)` in the copy: (offset in the copy, offset in the range, length).
    fn overlap(&self, va: u64, n: usize) -> Option<(usize, usize, usize)> {
        let (a, b) = (va, va.checked_add(n as u64)?);
        let (c, d) = (self.va, self.va.checked_add(self.len as u64)?);
        let (lo, hi) = (a.max(c), b.min(d));
        (lo < hi).then(|| ((lo - c) as usize, (lo - a) as usize, (hi - lo) as usize))
    }
}

impl UserMemory for Inline<'_> {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        match self.overlap(va.raw(), buf.len()) {
            None => self.under.read(va, buf),
            Some((at, off, n)) => {
                if n < buf.len() {
                    // Partly outside the copy: the rest from the process.
                    self.under.read(va, buf)?;
                }
                let g = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
                buf[off..off + n].copy_from_slice(&g.0[at..at + n]);
                Ok(())
            }
        }
    }

    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        match self.overlap(va.raw(), data.len()) {
            None => self.under.write(va, data),
            Some((at, off, n)) => {
                if n < data.len() {
                    self.under.write(va, data)?;
                }
                let mut g = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
                g.0[at..at + n].copy_from_slice(&data[off..off + n]);
                g.1 = Some(match g.1 {
                    None => (at, at + n),
                    Some((f, t)) => (f.min(at), t.max(at + n)),
                });
                Ok(())
            }
        }
    }

    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        self.under.probe(va, len, write)
    }

    fn page_size_at(&self, va: UserVa) -> u64 {
        self.under.page_size_at(va)
    }
}

/// Calls on a ring never hand files over (they are refused before they run).
struct NoHandover;

impl Handover for NoHandover {
    fn give(&self, _client: OwnedFd, _cloexec: bool) -> Result<i32, Errno> {
        Err(EOPNOTSUPP)
    }

    fn take_back(&self, _fd: i32) {}
}

/// A ring being served.
struct Serving {
    host: Arc<Host>,
    process: Arc<Process>,
    file: Weak<HostFile>,
    gid: u32,
    map: Mapping,
}

impl Drop for Serving {
    /// However the thread ends (its file or process gone, or a panic): the ring is marked dead,
    /// nothing is taken after that, and what was posted before is answered.
    fn drop(&mut self) {
        let ring = self.map.ring();
        ring.state().store(DEAD, SeqCst);
        for i in 0..SLOTS {
            if ring
                .slot_state(i)
                .compare_exchange(READY, TAKEN, SeqCst, SeqCst)
                .is_ok()
            {
                self.answer(&ring, i, &Message::reply(Err(GONE)));
            } else if ring.slot_state(i).load(SeqCst) == TAKEN {
                // Only when serving it panicked: the call failed.
                self.answer(&ring, i, &Message::reply(Err(nix::libc::EIO)));
            }
            futex_wake(ring.slot_state(i));
        }
        self.host.rings.fetch_sub(1, SeqCst);
        self.process.rings.fetch_sub(1, SeqCst);
    }
}

/// A new ring for `process`'s calls on `file`: the memfd to hand to the process (its thread
/// runs already). EOPNOTSUPP unless `file` is an iommufd.
pub(crate) fn open(
    host: &Arc<Host>,
    process: &Arc<Process>,
    file: &Arc<HostFile>,
    gid: u32,
) -> Result<OwnedFd, Errno> {
    if !matches!(file.open.kind, Kind::Iommufd(_)) {
        return Err(EOPNOTSUPP);
    }
    if process.rings.fetch_add(1, SeqCst) >= PER_PROCESS {
        process.rings.fetch_sub(1, SeqCst);
        return Err(nix::libc::EAGAIN);
    }
    let r = make(host, process, file, gid);
    if r.is_err() {
        process.rings.fetch_sub(1, SeqCst);
    }
    r
}

fn make(
    host: &Arc<Host>,
    process: &Arc<Process>,
    file: &Arc<HostFile>,
    gid: u32,
) -> Result<OwnedFd, Errno> {
    let os = |e: rustix::io::Errno| e.raw_os_error();
    let memfd = memfd_create(
        "uiommu-ring",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(os)?;
    ftruncate(&memfd, RING_LEN as u64).map_err(os)?;
    fcntl_add_seals(
        &memfd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
    .map_err(os)?;
    let map = Mapping::new(memfd.as_fd())?;
    map.ring().init();
    let s = Serving {
        host: host.clone(),
        process: process.clone(),
        file: Arc::downgrade(file),
        gid,
        map,
    };
    std::thread::Builder::new()
        .name("uiommu-ring".into())
        .spawn(move || s.run())
        .map_err(|e| e.raw_os_error().unwrap_or(nix::libc::EAGAIN))?;
    host.rings.fetch_add(1, SeqCst);
    host.rings_made.fetch_add(1, SeqCst);
    Ok(memfd)
}

impl Serving {
    fn run(self) {
        let ring = self.map.ring();
        let spin = self.host.config.spin;
        let mut last = Instant::now();
        loop {
            let mut served = false;
            for i in 0..SLOTS {
                // Looked at before it is taken: polling writes nothing the caller writes.
                if ring.slot_state(i).load(SeqCst) == READY
                    && ring
                        .slot_state(i)
                        .compare_exchange(READY, TAKEN, SeqCst, SeqCst)
                        .is_ok()
                {
                    self.serve(&ring, i);
                    served = true;
                }
            }
            if served {
                last = Instant::now();
                continue;
            }
            if last.elapsed() < spin {
                std::hint::spin_loop();
                continue;
            }
            let bell = ring.doorbell().load(SeqCst);
            ring.engine_sleeping().store(1, SeqCst);
            if !(0..SLOTS).any(|i| ring.slot_state(i).load(SeqCst) == READY) {
                futex_wait(ring.doorbell(), bell, IDLE_CHECK.as_nanos() as u64);
            }
            ring.engine_sleeping().store(0, SeqCst);
            if self.file.strong_count() == 0 || self.process.exited() {
                break;
            }
            last = Instant::now();
        }
    }

    /// Serve the request taken from slot `i`.
    fn serve(&self, ring: &Ring, i: usize) {
        let m = match ring.request(i) {
            None => Message::reply(Err(EINVAL)),
            Some(req) if req.op != OP_IOCTL || !ring_ioctl(req.args[0]) => {
                Message::reply(Err(REFUSED))
            }
            Some(req) => {
                // As for a message: files whose last holder went are released first.
                self.host.reap();
                match self.file.upgrade() {
                    None => Message::reply(Err(GONE)),
                    Some(file) => {
                        // The argument struct's bytes the caller sent along, over its memory.
                        let n = usize::try_from(req.args[2]).unwrap_or(0).min(INLINE_MAX);
                        let mut copy = [0u8; INLINE_MAX];
                        ring.data(i, &mut copy[..n]);
                        let inline = Inline {
                            under: &*self.process.mem,
                            va: req.args[1],
                            bytes: Mutex::new((copy, None)),
                            len: n,
                        };
                        let c = Call {
                            host: &self.host,
                            via: &NoHandover,
                            process: &self.process,
                            gid: self.gid,
                            mem: (n > 0).then_some(&inline as &dyn UserMemory),
                        };
                        let mut m = c.on_file(&file, req);
                        self.host.files.sync_ready(None);
                        let (bytes, written) =
                            *inline.bytes.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some((from, to)) = written {
                            ring.set_data(i, from, &bytes[from..to]);
                            m.extra = [from as u64, to as u64];
                        }
                        m
                    }
                }
            }
        };
        self.answer(ring, i, &m);
    }

    fn answer(&self, ring: &Ring, i: usize, m: &Message) {
        ring.set_reply(i, m);
        ring.slot_state(i).store(DONE, SeqCst);
        if ring.slot_waiter(i).load(SeqCst) != 0 {
            futex_wake(ring.slot_state(i));
        }
    }
}
