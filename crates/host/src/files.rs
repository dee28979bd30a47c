//! The engine's open files: one socketpair each, the client's end handed out, the engine's
//! end watched for the hang-up that means the last reference in any process is gone.
//!
//! A file is found by the inode of the client's end (`st_dev`, `st_ino`), which only a holder
//! of the socket can show the engine (by sending it). The engine's ends sit in one
//! level-triggered epoll set; [`Files::reap`] (run by the watcher thread, and by every
//! [`proto::OP_SYNC`] after a client's `close`) takes the set's ready ends under one lock and
//! drops their files before it returns, so a `close` that released the last fd has released
//! the file (context teardown, unbind) when the front-end returns from it.
//!
//! Fault queues are pollable: while a queue holds records, one byte sits in its client end, so
//! `poll`/`select`/`epoll` on the program's fd see it readable with no front-end involvement;
//! the byte is taken out again through the client's fd during a call on the file
//! ([`Files::sync_ready`]).
//!
//! [`proto::OP_SYNC`]: uiommu_proto::OP_SYNC

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uiommu_uapi::file::OpenFile;
use uiommu_uapi::Errno;

/// The identity of a client end: `st_dev`, `st_ino`.
pub type Key = (u64, u64);

/// Epoll data tag of a process's pidfd (the rest is the pid).
pub const PID_TAG: u64 = 1 << 63;

/// One open file of the engine.
pub struct HostFile {
    /// The file itself (shared with the in-process front-end's semantics).
    pub open: OpenFile,
    /// The file position (`read`/`write` without an offset), shared by every fd of the file
    /// in every process, as the kernel's `f_pos`.
    pub pos: Mutex<i64>,
    /// The client end's inode.
    pub key: Key,
    /// The open-file number (for `uiommu status` and `fstat`'s inode).
    pub id: u64,
    /// The process that opened it and its uid.
    pub opener: (i32, u32),
    /// The engine's end.
    end: OwnedFd,
    /// Whether a readiness byte sits in the client end.
    token: AtomicBool,
}

impl HostFile {
    /// Lock the file position.
    pub fn pos(&self) -> MutexGuard<'_, i64> {
        self.pos.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Table {
    by_key: BTreeMap<Key, Arc<HostFile>>,
    /// The epoll data of each file (its id) to its key.
    by_id: BTreeMap<u64, Key>,
    /// The fault queues among them (the only pollable files).
    queues: Vec<Arc<HostFile>>,
}

/// The open files, and the epoll set watching their ends (and the clients' pidfds).
pub struct Files {
    table: Mutex<Table>,
    /// Held while hung-up files are dropped.
    reaping: Mutex<()>,
    epoll: Epoll,
    next_id: AtomicU64,
}

/// What [`Files::reap`] found.
#[derive(Default, Debug)]
pub struct Reaped {
    /// Files dropped.
    pub files: usize,
    /// Processes whose pidfd became readable (they exited).
    pub exited: Vec<i32>,
}

impl Files {
    /// An empty table.
    pub fn new() -> std::io::Result<Files> {
        Ok(Files {
            table: Mutex::new(Table::default()),
            reaping: Mutex::new(()),
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            next_id: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register `open` (opened by `opener`): returns the file and the client's end to hand
    /// out.
    pub fn add(
        &self,
        open: OpenFile,
        opener: (i32, u32),
    ) -> Result<(Arc<HostFile>, OwnedFd), Errno> {
        let (end, client) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| e as Errno)?;
        // The engine's end never blocks (readiness bytes); the client's blocks as a device
        // file does unless the program asks otherwise.
        nix::fcntl::fcntl(
            &end,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| e as Errno)?;
        let st = nix::sys::stat::fstat(&client).map_err(|e| e as Errno)?;
        let key = (st.st_dev, st.st_ino);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(HostFile {
            open,
            pos: Mutex::new(0),
            key,
            id,
            opener,
            end,
            token: AtomicBool::new(false),
        });
        let ev = EpollEvent::new(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP, id);
        self.epoll.add(&file.end, ev).map_err(|e| e as Errno)?;
        let mut t = self.lock();
        if file.open.fault_queue().is_some() {
            t.queues.push(file.clone());
        }
        t.by_key.insert(key, file.clone());
        t.by_id.insert(id, key);
        Ok((file, client))
    }

    /// The file whose client end is `fd` (an fd the engine received), if any.
    pub fn of_fd(&self, fd: BorrowedFd<'_>) -> Option<Arc<HostFile>> {
        let st = nix::sys::stat::fstat(fd).ok()?;
        self.get((st.st_dev, st.st_ino))
    }

    /// The file of client end `key`.
    pub fn get(&self, key: Key) -> Option<Arc<HostFile>> {
        self.lock().by_key.get(&key).cloned()
    }

    /// Every open file.
    pub fn all(&self) -> Vec<Arc<HostFile>> {
        self.lock().by_key.values().cloned().collect()
    }

    /// Number of open files.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Whether no file is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Watch `pidfd` (a client process) in the same set: it is reported by [`Files::reap`]
    /// once the process exits.
    pub fn watch_pid(&self, pid: i32, pidfd: BorrowedFd<'_>) -> Result<(), Errno> {
        let ev = EpollEvent::new(
            EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT,
            PID_TAG | pid as u32 as u64,
        );
        self.epoll.add(pidfd, ev).map_err(|e| e as Errno)
    }

    /// Wait up to `timeout` ms (`-1`: for ever) for an event, without handling it.
    pub fn wait(&self, timeout: i32) {
        let mut evs = [EpollEvent::empty(); 1];
        let t = if timeout < 0 {
            EpollTimeout::NONE
        } else {
            EpollTimeout::try_from(timeout).unwrap_or(EpollTimeout::ZERO)
        };
        let _ = self.epoll.wait(&mut evs, t);
    }

    /// Drop every file whose every reference is gone, before returning; report exited
    /// clients (each once: a pidfd is watched one-shot).
    pub fn reap(&self) -> Reaped {
        let _r = self.reaping.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Reaped::default();
        loop {
            let mut evs = [EpollEvent::empty(); 64];
            let n = self.epoll.wait(&mut evs, EpollTimeout::ZERO).unwrap_or(0);
            let mut gone = Vec::new();
            {
                let mut t = self.lock();
                for ev in &evs[..n] {
                    let data = ev.data();
                    if data & PID_TAG != 0 {
                        out.exited.push((data & 0xffff_ffff) as u32 as i32);
                        continue;
                    }
                    if let Some(key) = t.by_id.remove(&data) {
                        if let Some(f) = t.by_key.remove(&key) {
                            let _ = self.epoll.delete(&f.end);
                            t.queues.retain(|q| q.id != f.id);
                            gone.push(f);
                        }
                    }
                }
            }
            let more = !gone.is_empty() || n == evs.len();
            out.files += gone.len();
            // Teardown outside the table lock (it takes the engine lock).
            drop(gone);
            if !more {
                break;
            }
        }
        out
    }

    /// Keep fault queues' readiness bytes in step with their records. `held` is the client
    /// end of `held_file` if the call had one (the only way to take a byte out again).
    pub fn sync_ready(&self, held: Option<(&HostFile, BorrowedFd<'_>)>) {
        let queues = {
            let t = self.lock();
            if t.queues.is_empty() {
                return;
            }
            t.queues.clone()
        };
        for f in queues {
            let Some(q) = f.open.fault_queue() else {
                continue;
            };
            let ready = q.readable();
            let has = f.token.load(Ordering::Acquire);
            if ready && !has {
                if nix::unistd::write(&f.end, &[1u8]).is_ok() {
                    f.token.store(true, Ordering::Release);
                }
            } else if !ready && has {
                if let Some((hf, fd)) = held {
                    if hf.id == f.id {
                        let mut b = [0u8; 16];
                        let _ = nix::sys::socket::recv(
                            fd.as_raw_fd(),
                            &mut b,
                            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                        );
                        f.token.store(false, Ordering::Release);
                    }
                }
            }
        }
    }
}
