//! The fast path: a page of shared memory per (process, file) through which the hot calls of
//! that process on that file go, with no message and no system call when both sides are awake.
//!
//! A message per call costs the caller a `sendmsg` with the file attached and a `recvmsg`, and
//! the engine as many again plus its checks: tens of µs, far more than the engine's own work
//! (docs/HOST.md#performance). IOMMU hardware is split differently: the driver writes its
//! commands into memory and the hardware picks them up. A ring does the same for the calls that
//! neither take nor make files (IOAS map, unmap, copy, ranges, allow, option, destroy and the
//! legacy container's MAP_DMA/UNMAP_DMA, on an iommufd):
//!
//! - **Made by the engine, for one process and one file.** The front-end asks with
//!   [`crate::OP_RING`] on the socket, the file's fd attached and its credentials stamped by the
//!   kernel, as for any call; the engine answers with a sealed memfd of [`RING_LEN`] bytes
//!   (it cannot be shrunk under the engine) and serves it from a thread of its own. Every call
//!   on the ring is a call of that process on that file: the engine reads and writes that
//!   process's memory, charges its pins to that process's user and checks its limits, exactly as
//!   for a message.
//! - **Which ring.** The front-end finds the ring by the inode of the fd it was given
//!   (`fstat`, one system call), so a closed fd, or a number now naming another file, never
//!   reaches a ring of the file it named before. The mapping is `MADV_DONTFORK` and the table of
//!   rings is `MADV_WIPEONFORK`: a fork child starts with none and makes its own; `exec` drops
//!   them. Once the file is released the engine refuses the ring's calls ([`GONE`]) and the
//!   front-end falls back to a message, which gets the kernel's answer.
//! - **Slots.** [`SLOTS`] calls may be in flight at once (threads, signal handlers); a slot is
//!   taken with one compare-and-swap, so a call from a signal handler interrupting a call takes
//!   another slot, and nothing allocates or locks: the ring is async-signal-safe like the rest of
//!   [`crate::client`]. A call that finds no free slot or no ring goes by message.
//! - **Waking.** Each side polls before it sleeps (the front-end for its reply, the engine for
//!   the next call), then sleeps on a futex in the page; the other side wakes it only when it
//!   says it sleeps. So back-to-back calls cost no system call at all.
//!
//! The engine trusts nothing in the page: it copies a request out once, checks it as it checks a
//! message, and only ever stores its own reply and state words. A process that writes garbage
//! there gets errors (or keeps one engine thread busy, as a flood of messages would).
//!
//! What a process could do through a ring that it could not do through messages: keep calling
//! on the file after closing its last fd of it, by writing requests into the page directly
//! (bypassing the front-end), for as long as another process still holds the file. It held the
//! file when the ring was made; a mapping of a device file keeps a file usable after `close`
//! on Linux too.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::{Message, Request, MESSAGE_LEN, REQUEST_LEN};

/// Bytes of a ring (one page).
pub const RING_LEN: usize = 4096;
/// Calls in flight at once on one ring.
pub const SLOTS: usize = 15;
/// Most bytes of a call's argument struct a slot carries ([`call`]).
pub const INLINE_MAX: usize = 128;
/// `magic` of a ring's header.
pub const RING_MAGIC: u32 = 0x7569_7231;

// Header: magic, state, doorbell, engine_sleeping (u32 each).
const H_MAGIC: usize = 0;
const H_STATE: usize = 4;
const H_DOORBELL: usize = 8;
const H_SLEEPING: usize = 12;
const SLOT0: usize = 64;
const SLOT_LEN: usize = 256;
// Slot: state, waiter (u32 each), the request, the reply, the argument struct's bytes.
const S_STATE: usize = 0;
const S_WAITER: usize = 4;
const S_REQUEST: usize = 8;
const S_REPLY: usize = 64;
const S_DATA: usize = 128;

const _: () = assert!(S_REQUEST + REQUEST_LEN <= S_REPLY);
const _: () = assert!(S_REPLY + MESSAGE_LEN <= S_DATA);
const _: () = assert!(S_DATA + INLINE_MAX <= SLOT_LEN);
const _: () = assert!(SLOT0 + SLOTS * SLOT_LEN <= RING_LEN);

/// Ring state: served.
pub const LIVE: u32 = 0;
/// Ring state: the engine no longer serves it (the file was released, the process exited).
pub const DEAD: u32 = 1;

/// Slot state: nobody uses it.
pub const FREE: u32 = 0;
/// Slot state: a caller took it and is writing its request.
pub const CLAIMED: u32 = 1;
/// Slot state: the request is posted.
pub const READY: u32 = 2;
/// Slot state: the engine took the request and is serving it.
pub const TAKEN: u32 = 3;
/// Slot state: the reply is there.
pub const DONE: u32 = 4;

/// Reply `err` of a call the ring does not take (it goes by message instead).
pub const REFUSED: i32 = -2;
/// Reply `err` of a call on a ring whose file was released (the front-end asks by message).
pub const GONE: i32 = -3;

/// Whether ioctl `request` on an iommufd may go through a ring: it neither takes an fd from
/// the caller nor makes a file. (The engine checks it again, with the file's kind.)
pub fn ring_ioctl(request: u64) -> bool {
    // IOMMU_DESTROY ..= IOMMU_VFIO_IOAS, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA.
    matches!(request, 0x3b80..=0x3b88 | 0x3b71 | 0x3b72)
}

/// A view of a mapped ring. Both sides map the page shared; the other side may write any byte
/// of it at any time, so every access is atomic or volatile and nothing here trusts a value.
#[derive(Clone, Copy)]
pub struct Ring {
    base: *mut u8,
}

// SAFETY: a Ring is an address of a shared mapping accessed only through atomics and volatile
// copies; it may be used from any thread.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// The ring mapped at `base`.
    ///
    /// # Safety
    /// `base` is the start of a live, page-aligned, readable and writable mapping of at least
    /// [`RING_LEN`] bytes, which stays mapped while the returned value (or a copy) is used.
    pub unsafe fn at(base: *mut u8) -> Ring {
        Ring { base }
    }

    /// The start of the mapping.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= RING_LEN);
        // SAFETY: in bounds and aligned (checked above) of a live mapping (`Ring::at`'s
        // contract); AtomicU32 has the layout of u32 and any bit pattern is valid.
        unsafe { &*self.base.add(off).cast::<AtomicU32>() }
    }

    fn read(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= RING_LEN);
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in bounds of a live mapping; a volatile byte read of shared memory the
            // other side may be writing (any value is acceptable).
            *b = unsafe { std::ptr::read_volatile(self.base.add(off + i)) };
        }
    }

    fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= RING_LEN);
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in bounds of a live, writable mapping; a volatile byte write.
            unsafe { std::ptr::write_volatile(self.base.add(off + i), *b) };
        }
    }

    fn slot(i: usize) -> usize {
        SLOT0 + i * SLOT_LEN
    }

    /// The header's magic.
    pub fn magic(&self) -> &AtomicU32 {
        self.word(H_MAGIC)
    }

    /// The ring's state ([`LIVE`], [`DEAD`]).
    pub fn state(&self) -> &AtomicU32 {
        self.word(H_STATE)
    }

    /// The engine sleeps on this word; a caller bumps it after posting a call.
    pub fn doorbell(&self) -> &AtomicU32 {
        self.word(H_DOORBELL)
    }

    /// Non-zero while the engine sleeps (or is about to).
    pub fn engine_sleeping(&self) -> &AtomicU32 {
        self.word(H_SLEEPING)
    }

    /// Slot `i`'s state.
    pub fn slot_state(&self, i: usize) -> &AtomicU32 {
        self.word(Ring::slot(i) + S_STATE)
    }

    /// Non-zero while the caller of slot `i` sleeps (or is about to).
    pub fn slot_waiter(&self, i: usize) -> &AtomicU32 {
        self.word(Ring::slot(i) + S_WAITER)
    }

    /// The request in slot `i` (copied out once; `None` if it is not a request).
    pub fn request(&self, i: usize) -> Option<Request> {
        let mut b = [0u8; REQUEST_LEN];
        self.read(Ring::slot(i) + S_REQUEST, &mut b);
        Request::from_bytes(&b)
    }

    /// Put `req` in slot `i`.
    pub fn set_request(&self, i: usize, req: &Request) {
        self.write(Ring::slot(i) + S_REQUEST, &req.to_bytes());
    }

    /// The reply in slot `i`.
    pub fn reply(&self, i: usize) -> Option<Message> {
        let mut b = [0u8; MESSAGE_LEN];
        self.read(Ring::slot(i) + S_REPLY, &mut b);
        Message::from_bytes(&b)
    }

    /// Put `m` in slot `i`.
    pub fn set_reply(&self, i: usize, m: &Message) {
        self.write(Ring::slot(i) + S_REPLY, &m.to_bytes());
    }

    /// The first `out.len()` (at most [`INLINE_MAX`]) bytes of slot `i`'s argument copy.
    pub fn data(&self, i: usize, out: &mut [u8]) {
        let n = out.len().min(INLINE_MAX);
        self.read(Ring::slot(i) + S_DATA, &mut out[..n]);
    }

    /// Put `data` (at most [`INLINE_MAX`] bytes) at `at` of slot `i`'s argument copy.
    pub fn set_data(&self, i: usize, at: usize, data: &[u8]) {
        let at = at.min(INLINE_MAX);
        let n = data.len().min(INLINE_MAX - at);
        self.write(Ring::slot(i) + S_DATA + at, &data[..n]);
    }

    /// A fresh ring's header (the engine writes it before handing the ring out).
    pub fn init(&self) {
        self.state().store(LIVE, Ordering::SeqCst);
        self.magic().store(RING_MAGIC, Ordering::SeqCst);
    }
}

/// `FUTEX_WAIT` on `word` while it holds `val`, for at most `timeout_ns` (shared futex: the
/// word is in memory two processes map).
pub fn futex_wait(word: &AtomicU32, val: u32, timeout_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: futex(2) on a live, aligned u32; the timespec lives across the call. A wait that
    // returns early (EAGAIN, EINTR, a timeout) is harmless: every caller re-checks the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            val,
            &ts as *const libc::timespec,
        )
    };
}

/// `FUTEX_WAKE` every waiter on `word`.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: futex(2) FUTEX_WAKE on a live, aligned u32; no other memory is passed.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// One entry of a front-end's table of rings.
#[repr(C)]
struct Entry {
    state: AtomicU32,
    users: AtomicU32,
    dev: AtomicU64,
    ino: AtomicU64,
    addr: AtomicU64,
    /// Bumped each time the entry becomes live: an fd remembered for an earlier ring of this
    /// entry no longer matches ([`Table::by_fd`]).
    seq: AtomicU32,
    _pad: AtomicU32,
}

const E_EMPTY: u32 = 0;
const E_FILLING: u32 = 1;
const E_LIVE: u32 = 2;
const E_DEAD: u32 = 3;
const E_RECLAIMING: u32 = 4;

/// Rings a process may have at once (a ring per iommufd it makes hot calls on).
pub const TABLE_ENTRIES: usize = 32;
const PAGE: usize = 4096;
/// The table page, then one page per entry.
const REGION: usize = PAGE * (1 + TABLE_ENTRIES);
const T_RESERVED: usize = 0;
const T_ENTRIES: usize = 64;
/// The fds remembered (`fd` below [`FD_CACHE`]): one word each, see [`Table::by_fd`].
const T_FDS: usize = PAGE / 2;
/// Fds below this are remembered with their ring, so that a call on one needs no `fstat`.
pub const FD_CACHE: usize = (PAGE - T_FDS) / 8;
const _: () = assert!(T_ENTRIES + TABLE_ENTRIES * size_of::<Entry>() <= T_FDS);

/// `reserved`: the pages after the table are not (yet) ours (a fork child's start).
const R_NONE: u32 = 0;
/// `reserved`: they are ours: a ring's page or an inaccessible placeholder each.
const R_OURS: u32 = 1;
/// `reserved`: being set up by another thread, or could not be: no rings now.
const R_BUSY: u32 = 2;
const R_NEVER: u32 = 3;

/// A front-end's rings, by the inode of the file's socket.
///
/// One mapping the kernel places once per process: a table page, then a page per entry where
/// that entry's ring is mapped (`MAP_FIXED` over an inaccessible placeholder, and the
/// placeholder put back when the ring goes), so rings never land in a hole of the program's
/// address space that the program expects to stay unmapped. The table page is
/// `MADV_WIPEONFORK` and the ring pages `MADV_DONTFORK`: a fork child sees an empty table and
/// none of its parent's rings, reserves the pages again where they were (`MAP_FIXED_NOREPLACE`:
/// never over a mapping the child made meanwhile; then it has no rings) and makes its own.
#[derive(Clone, Copy)]
pub struct Table {
    base: *mut u8,
}

/// A ring taken from a [`Table`] for one call: given back with [`Table::put`].
pub struct Held {
    entry: usize,
    /// The ring.
    pub ring: Ring,
}

/// An inaccessible anonymous placeholder over `[addr, addr + len)` (`fixed`: replacing what is
/// there, which must be ours; else only where nothing is), not inherited by fork children.
fn placeholder(addr: *mut u8, len: usize, fixed: bool) -> bool {
    let how = if fixed {
        libc::MAP_FIXED
    } else {
        libc::MAP_FIXED_NOREPLACE
    };
    // SAFETY: an anonymous PROT_NONE mapping at an address of our table's region (MAP_FIXED
    // only over pages of ours; NOREPLACE never over anything).
    let p = unsafe {
        libc::mmap(
            addr.cast(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | how,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    if p != addr.cast() {
        // A kernel without MAP_FIXED_NOREPLACE took it as a hint: not where asked.
        // SAFETY: unmapping the mapping just made elsewhere, never handed out.
        unsafe { libc::munmap(p, len) };
        return false;
    }
    // SAFETY: madvise of the placeholder just made.
    unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) };
    true
}

impl Table {
    /// A new, empty table; `None` when the kernel cannot wipe it on fork.
    pub fn new() -> Option<Table> {
        // SAFETY: an anonymous private mapping the kernel places; no memory of ours is passed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REGION,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the first page of the mapping just made becomes the readable, writable table,
        // wiped in fork children; the rest is not inherited.
        let ok = unsafe {
            libc::mprotect(p, PAGE, libc::PROT_READ | libc::PROT_WRITE) == 0
                && libc::madvise(p, PAGE, libc::MADV_WIPEONFORK) == 0
                && libc::madvise(
                    p.cast::<u8>().add(PAGE).cast(),
                    REGION - PAGE,
                    libc::MADV_DONTFORK,
                ) == 0
        };
        if !ok {
            // SAFETY: unmapping the mapping just made, never handed out.
            unsafe { libc::munmap(p, REGION) };
            return None;
        }
        let t = Table { base: p.cast() };
        t.reserved().store(R_OURS, Ordering::SeqCst);
        Some(t)
    }

    /// The table at `base` (an address [`Table::base`] gave).
    ///
    /// # Safety
    /// `base` came from [`Table::new`] in this process (or in its address space before a fork:
    /// the table page is inherited, zeroed) and is never unmapped.
    pub unsafe fn at(base: *mut u8) -> Table {
        Table { base }
    }

    /// The table page's address.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Give the table's region back (only a table never published).
    pub fn discard(self) {
        // SAFETY: the region Table::new mapped; the caller never published it.
        unsafe { libc::munmap(self.base.cast(), REGION) };
    }

    fn reserved(&self) -> &AtomicU32 {
        // SAFETY: the first word of the table page, which stays mapped (`Table::at`), aligned;
        // any bit pattern is a valid AtomicU32.
        unsafe { &*self.base.add(T_RESERVED).cast::<AtomicU32>() }
    }

    /// Whether the ring pages are ours (reserving them again first in a fork child).
    fn ready(&self) -> bool {
        match self
            .reserved()
            .compare_exchange(R_NONE, R_BUSY, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => {
                // SAFETY: the address just after the table page, in the region Table::new
                // placed (in a fork child: a hole, or whatever the child mapped there since).
                let rest = unsafe { self.base.add(PAGE) };
                let ok = placeholder(rest, REGION - PAGE, false);
                self.reserved()
                    .store(if ok { R_OURS } else { R_NEVER }, Ordering::SeqCst);
                ok
            }
            Err(r) => r == R_OURS,
        }
    }

    fn entry(&self, i: usize) -> &Entry {
        assert!(i < TABLE_ENTRIES);
        // SAFETY: in bounds of the table page, which stays mapped (`Table::at`); Entry is
        // atomics only (all-zero is E_EMPTY).
        unsafe {
            &*self
                .base
                .add(T_ENTRIES + i * size_of::<Entry>())
                .cast::<Entry>()
        }
    }

    /// The page of entry `i`'s ring.
    fn page(&self, i: usize) -> *mut u8 {
        // SAFETY: within the region Table::new mapped (1 + TABLE_ENTRIES pages).
        unsafe { self.base.add(PAGE * (1 + i)) }
    }

    /// The word remembering fd `fd`'s ring: `generation << 32 | (entry + 1) << 24 | seq`
    /// (entry 0: none), `None` for an fd not remembered at all.
    fn fd_word(&self, fd: i32) -> Option<&AtomicU64> {
        let i = usize::try_from(fd).ok().filter(|&i| i < FD_CACHE)?;
        // SAFETY: in bounds of the table page (T_FDS + FD_CACHE * 8 == PAGE), which stays
        // mapped (`Table::at`), 8-aligned; any bit pattern is a valid AtomicU64.
        Some(unsafe { &*self.base.add(T_FDS + 8 * i).cast::<AtomicU64>() })
    }

    /// The ring remembered for fd `fd`, held for one call, if its entry is still the live
    /// ring it was remembered with. The front-end forgets an fd ([`Table::forget`]) after every
    /// `close`, `dup2`, `dup3`, `close_range` and `closefrom` that may have closed it, so a
    /// remembered fd names the file it named when it was remembered.
    pub fn by_fd(&self, fd: i32) -> Option<Held> {
        let word = self.fd_word(fd)?;
        let w = word.load(Ordering::SeqCst);
        let entry = ((w >> 24) & 0xff) as usize;
        if entry == 0 || entry > TABLE_ENTRIES {
            return None;
        }
        let i = entry - 1;
        let e = self.entry(i);
        e.users.fetch_add(1, Ordering::SeqCst);
        if e.state.load(Ordering::SeqCst) == E_LIVE
            && u64::from(e.seq.load(Ordering::SeqCst) & 0xff_ffff) == w & 0xff_ffff
            && word.load(Ordering::SeqCst) == w
        {
            let addr = e.addr.load(Ordering::SeqCst) as usize as *mut u8;
            // SAFETY: as in `get`: a live entry's address is its ring's mapping, kept while
            // we hold a use.
            let ring = unsafe { Ring::at(addr) };
            return Some(Held { entry: i, ring });
        }
        self.put_use(i);
        None
    }

    /// What fd `fd`'s word is before its file is looked up ([`Table::remember`] stores only
    /// if it is unchanged then: no `forget` in between).
    pub fn fd_mark(&self, fd: i32) -> Option<u64> {
        self.fd_word(fd).map(|w| w.load(Ordering::SeqCst))
    }

    /// Remember that fd `fd` names the file of `held`, unless it was forgotten since `mark`.
    pub fn remember(&self, fd: i32, mark: Option<u64>, held: &Held) {
        let (Some(word), Some(mark)) = (self.fd_word(fd), mark) else {
            return;
        };
        let seq = u64::from(self.entry(held.entry).seq.load(Ordering::SeqCst) & 0xff_ffff);
        let w = (mark & !0xffff_ffff) | ((held.entry as u64 + 1) << 24) | seq;
        let _ = word.compare_exchange(mark, w, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Forget fds `[low, high]` (after they may have been closed).
    pub fn forget(&self, low: u32, high: u32) {
        let high = (high as usize).min(FD_CACHE - 1);
        for fd in low as usize..=high {
            let Some(word) = self.fd_word(fd as i32) else {
                return;
            };
            let mut w = word.load(Ordering::SeqCst);
            loop {
                // A new generation, remembering nothing.
                let next = ((w >> 32).wrapping_add(1)) << 32;
                match word.compare_exchange(w, next, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => break,
                    Err(now) => w = now,
                }
            }
        }
    }

    /// The live ring of the file whose socket's inode is (`dev`, `ino`), held for one call.
    pub fn get(&self, dev: u64, ino: u64) -> Option<Held> {
        for i in 0..TABLE_ENTRIES {
            let e = self.entry(i);
            if e.state.load(Ordering::SeqCst) != E_LIVE
                || e.ino.load(Ordering::SeqCst) != ino
                || e.dev.load(Ordering::SeqCst) != dev
            {
                continue;
            }
            e.users.fetch_add(1, Ordering::SeqCst);
            // Checked again once counted: a reclaimer unmaps only an entry nobody uses.
            if e.state.load(Ordering::SeqCst) == E_LIVE
                && e.ino.load(Ordering::SeqCst) == ino
                && e.dev.load(Ordering::SeqCst) == dev
            {
                let addr = e.addr.load(Ordering::SeqCst) as usize as *mut u8;
                // SAFETY: a live entry's address is its ring's mapping of RING_LEN bytes,
                // replaced only once it is dead and unused (we hold a use).
                let ring = unsafe { Ring::at(addr) };
                return Some(Held { entry: i, ring });
            }
            self.put_use(i);
        }
        None
    }

    /// Map the ring memfd `fd` for (`dev`, `ino`) into a free entry's page; false when the
    /// table is full or `fd` is not a ring.
    pub fn insert(&self, dev: u64, ino: u64, fd: i32) -> bool {
        if !self.ready() {
            return false;
        }
        for i in 0..TABLE_ENTRIES {
            let e = self.entry(i);
            if e.state
                .compare_exchange(E_EMPTY, E_FILLING, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            let page = self.page(i);
            if !map_at(fd, page) {
                placeholder(page, RING_LEN, true);
                e.state.store(E_EMPTY, Ordering::SeqCst);
                return false;
            }
            e.dev.store(dev, Ordering::SeqCst);
            e.ino.store(ino, Ordering::SeqCst);
            e.addr.store(page as usize as u64, Ordering::SeqCst);
            e.users.store(0, Ordering::SeqCst);
            e.seq.fetch_add(1, Ordering::SeqCst);
            e.state.store(E_LIVE, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Give back a ring [`Table::get`] held; `dead`: the engine no longer serves it (its
    /// mapping goes once nobody uses it).
    pub fn put(&self, held: Held, dead: bool) {
        if dead {
            let _ = self.entry(held.entry).state.compare_exchange(
                E_LIVE,
                E_DEAD,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        self.put_use(held.entry);
    }

    fn put_use(&self, i: usize) {
        let e = self.entry(i);
        e.users.fetch_sub(1, Ordering::SeqCst);
        if e.state.load(Ordering::SeqCst) == E_DEAD && e.users.load(Ordering::SeqCst) == 0 {
            self.reclaim(i);
        }
    }

    fn reclaim(&self, i: usize) {
        let e = self.entry(i);
        if e.state
            .compare_exchange(E_DEAD, E_RECLAIMING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        if e.users.load(Ordering::SeqCst) != 0 {
            // Someone counted a use after the check; whoever puts it last reclaims.
            e.state.store(E_DEAD, Ordering::SeqCst);
            if e.users.load(Ordering::SeqCst) == 0 {
                self.reclaim(i);
            }
            return;
        }
        if e.addr.swap(0, Ordering::SeqCst) != 0 {
            // The ring's page, dead and used by nobody (every use is counted before the
            // address is read), becomes a placeholder again.
            placeholder(self.page(i), RING_LEN, true);
        }
        e.dev.store(0, Ordering::SeqCst);
        e.ino.store(0, Ordering::SeqCst);
        e.state.store(E_EMPTY, Ordering::SeqCst);
    }
}

/// Map the ring memfd `fd` the engine handed over at `page` (a placeholder page of a table:
/// replaced), not inherited by fork children; false if it is not a ring.
fn map_at(fd: i32, page: *mut u8) -> bool {
    // SAFETY: a shared mapping of the memfd over a placeholder page of ours (MAP_FIXED).
    let p = unsafe {
        libc::mmap(
            page.cast(),
            RING_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd,
            0,
        )
    };
    if p != page.cast() {
        return false;
    }
    // SAFETY: madvise of the mapping just made.
    let kept = unsafe { libc::madvise(p, RING_LEN, libc::MADV_DONTFORK) } == 0;
    // SAFETY: the mapping just made is RING_LEN bytes, readable and writable.
    let ring = unsafe { Ring::at(page) };
    kept && ring.magic().load(Ordering::SeqCst) == RING_MAGIC
}

/// The engine's own mapping of a ring's memfd, unmapped when dropped.
pub struct Mapping(Ring);

impl Mapping {
    /// Map the memfd `fd` (of [`RING_LEN`] bytes, sealed against shrinking by its maker, so
    /// the mapping stays backed whatever its other holder does).
    pub fn new(fd: std::os::fd::BorrowedFd<'_>) -> Result<Mapping, i32> {
        use std::os::fd::AsRawFd;
        // SAFETY: a new shared mapping of the memfd; no memory of ours is passed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RING_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOMEM));
        }
        // SAFETY: the mapping just made: RING_LEN bytes, page-aligned, readable and writable,
        // unmapped only when this Mapping drops; its owner uses the Ring it hands out only
        // while it holds the Mapping.
        Ok(Mapping(unsafe { Ring::at(p.cast()) }))
    }

    /// The ring (valid while the mapping lives).
    pub fn ring(&self) -> Ring {
        self.0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping Mapping::new made; nothing uses its Ring after the drop.
        unsafe { libc::munmap(self.0.base().cast(), RING_LEN) };
    }
}

/// The outcome of [`call`].
pub enum Outcome {
    /// The engine's reply.
    Reply(Message),
    /// The ring did not take the call (no slot, refused, the ring died first): send it as a
    /// message. `dead`: the ring is no longer served.
    ByMessage {
        /// Whether the ring is no longer served.
        dead: bool,
    },
}

/// One call on `ring`: post `req`, poll up to `spin_ns` for the reply, then sleep. `alive`
/// says whether the engine still runs (asked when a sleep times out).
pub fn call(ring: &Ring, req: &Request, spin_ns: u64, alive: impl Fn() -> bool) -> Outcome {
    let Some(i) = (0..SLOTS).find(|&i| {
        ring.slot_state(i)
            .compare_exchange(FREE, CLAIMED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }) else {
        return Outcome::ByMessage { dead: false };
    };
    // The argument struct goes along when it surely is readable memory (on this thread's
    // stack, as it usually is): the engine then need not read it from this process, and its
    // outputs come back the same way. Anything else the engine reads itself (EFAULT if bad).
    let mut req = *req;
    let arg = req.args[1];
    let mut inline = [0u8; INLINE_MAX];
    let n = inline_len(arg);
    if n > 0 {
        // SAFETY: inline_len checked that [arg, arg + n) lies in the live part of this
        // thread's stack, so it is mapped and readable; plain bytes are copied.
        unsafe { std::ptr::copy_nonoverlapping(arg as usize as *const u8, inline.as_mut_ptr(), n) };
        ring.set_data(i, 0, &inline[..n]);
    }
    req.args[2] = n as u64;
    ring.set_request(i, &req);
    ring.slot_waiter(i).store(0, Ordering::SeqCst);
    ring.slot_state(i).store(READY, Ordering::SeqCst);
    ring.doorbell().fetch_add(1, Ordering::SeqCst);
    if ring.engine_sleeping().load(Ordering::SeqCst) != 0 {
        futex_wake(ring.doorbell());
    }
    let state = ring.slot_state(i);
    let start = crate::client::now_ns();
    let mut sleeping = false;
    loop {
        let s = state.load(Ordering::SeqCst);
        if s == DONE {
            break;
        }
        if ring.state().load(Ordering::SeqCst) == DEAD && s == READY {
            // Not taken by the engine, and it will take nothing more: take it back.
            if state
                .compare_exchange(READY, FREE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Outcome::ByMessage { dead: true };
            }
            continue;
        }
        if !sleeping {
            if crate::client::now_ns().saturating_sub(start) < spin_ns {
                std::hint::spin_loop();
                continue;
            }
            sleeping = true;
            ring.slot_waiter(i).store(1, Ordering::SeqCst);
            continue;
        }
        futex_wait(state, s, 1_000_000_000);
        if state.load(Ordering::SeqCst) == s && !alive() {
            // The engine is gone with the call (a call it had not finished).
            return Outcome::Reply(Message::reply(Err(libc::EIO)));
        }
    }
    let reply = ring.reply(i);
    if let Some(m) = reply.filter(|m| m.err != REFUSED && m.err != GONE && n > 0) {
        // The bytes the engine wrote into the copy: [extra[0], extra[1]).
        let (from, to) = (m.extra[0] as usize, m.extra[1] as usize);
        if from < to && to <= n {
            ring.data(i, &mut inline[..n]);
            // SAFETY: [arg, arg + n) is on this thread's live stack (checked before the call,
            // and this frame still runs on it), so it is mapped and writable.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    inline[from..].as_ptr(),
                    (arg as usize + from) as *mut u8,
                    to - from,
                )
            };
        }
    }
    state.store(FREE, Ordering::SeqCst);
    match reply {
        Some(m) if m.err == REFUSED => Outcome::ByMessage { dead: false },
        Some(m) if m.err == GONE => Outcome::ByMessage { dead: true },
        Some(m) => Outcome::Reply(m),
        None => Outcome::Reply(Message::reply(Err(libc::EIO))),
    }
}

std::thread_local! {
    /// The mapping this thread's stack pointer was last found in, `[low, high)`.
    static STACK: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// How many bytes of the argument struct at `arg` go with a call: its leading `u32` size
/// (iommufd's `size`, VFIO's `argsz`), when `[arg, arg + size)` lies between this frame and
/// the end of the mapping the stack pointer is in (the frames of this call's callers: mapped,
/// readable and writable for certain), and it fits a slot; else 0.
fn inline_len(arg: u64) -> usize {
    let here = 0u8;
    let sp = std::hint::black_box(&here as *const u8 as usize);
    let Ok(start) = usize::try_from(arg) else {
        return 0;
    };
    let (lo, mut hi) = STACK.with(|c| c.get());
    if !(lo <= sp && sp < hi) {
        // Asked once per thread (and again on another stack: a signal stack, a coroutine's).
        let Some((l, h)) = mapping_of(sp) else {
            return 0;
        };
        STACK.with(|c| c.set((l, h)));
        hi = h;
    }
    if start <= sp || start.checked_add(4).is_none_or(|e| e > hi) {
        return 0;
    }
    // SAFETY: [start, start + 4) lies between this frame and the end of the stack mapping
    // (checked above): mapped and readable.
    let size = unsafe { std::ptr::read_unaligned(start as *const u32) } as usize;
    if !(4..=INLINE_MAX).contains(&size) || start.checked_add(size).is_none_or(|e| e > hi) {
        return 0;
    }
    size
}

/// The readable and writable mapping of this process that holds `addr` (PROCMAP_QUERY on
/// `/proc/self/maps`, Linux 6.11 and later); `None` when there is none or the kernel cannot say.
fn mapping_of(addr: usize) -> Option<(usize, usize)> {
    let path = b"/proc/self/maps\0";
    // SAFETY: open of a NUL-terminated path; no other memory is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    } as i32;
    if fd < 0 {
        return None;
    }
    // SAFETY: the fd just opened, open until the close below.
    let maps = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let vma = uiommu_sys::procmap_query(maps, addr as u64);
    crate::client::close(fd);
    match vma {
        Ok(Some(v)) if v.readable && v.writable && v.start <= addr as u64 => {
            Some((v.start as usize, v.end as usize))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon_ring() -> Ring {
        // SAFETY: an anonymous shared mapping for the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RING_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the mapping just made; never unmapped in the test.
        let r = unsafe { Ring::at(p.cast()) };
        r.init();
        r
    }

    #[test]
    fn a_call_round_trips_through_a_serving_thread() {
        let ring = anon_ring();
        let base = ring.base() as usize;
        let server = std::thread::spawn(move || {
            // SAFETY: the test's mapping, never unmapped.
            let ring = unsafe { Ring::at(base as *mut u8) };
            let mut served = 0;
            while served < 3 {
                for i in 0..SLOTS {
                    if ring
                        .slot_state(i)
                        .compare_exchange(READY, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        let req = ring.request(i).unwrap();
                        let m = if req.args[0] == 2 {
                            Message::reply(Err(REFUSED))
                        } else {
                            Message::reply(Ok(req.args[0] as i64 + 1))
                        };
                        ring.set_reply(i, &m);
                        ring.slot_state(i).store(DONE, Ordering::SeqCst);
                        if ring.slot_waiter(i).load(Ordering::SeqCst) != 0 {
                            futex_wake(ring.slot_state(i));
                        }
                        served += 1;
                    }
                }
                std::hint::spin_loop();
            }
        });
        let req = |a| Request::new(crate::OP_IOCTL, [a, 0, 0, 0, 0, 0]);
        // Spinning, then sleeping on the futex.
        for spin in [u64::MAX, 0] {
            match call(&ring, &req(41 + spin.min(1)), spin, || true) {
                Outcome::Reply(m) => assert_eq!(m.val, 42 + spin.min(1) as i64),
                Outcome::ByMessage { .. } => panic!("refused"),
            }
        }
        assert!(matches!(
            call(&ring, &req(2), u64::MAX, || true),
            Outcome::ByMessage { dead: false }
        ));
        server.join().unwrap();
        assert!((0..SLOTS).all(|i| ring.slot_state(i).load(Ordering::SeqCst) == FREE));
    }

    #[test]
    fn a_dead_ring_takes_its_untaken_call_back() {
        let ring = anon_ring();
        ring.state().store(DEAD, Ordering::SeqCst);
        let req = Request::new(crate::OP_IOCTL, [0; 6]);
        assert!(matches!(
            call(&ring, &req, 0, || true),
            Outcome::ByMessage { dead: true }
        ));
        assert_eq!(ring.slot_state(0).load(Ordering::SeqCst), FREE);
    }

    /// A memfd holding a fresh ring, as the engine makes one.
    fn ring_memfd() -> i32 {
        // SAFETY: memfd_create of a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"ring-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: ftruncate of the memfd just made.
        assert_eq!(unsafe { libc::ftruncate(fd, RING_LEN as i64) }, 0);
        // SAFETY: the memfd just made stays open for the test's life.
        let m = Mapping::new(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).unwrap();
        m.ring().init();
        fd
    }

    #[test]
    fn table_entries_are_found_by_inode_and_reclaimed_when_dead() {
        let t = Table::new().unwrap();
        let fd = ring_memfd();
        assert!(t.get(1, 2).is_none());
        assert!(t.insert(1, 2, fd));
        let h = t.get(1, 2).unwrap();
        assert_eq!(h.ring.base(), t.page(0));
        assert_eq!(h.ring.magic().load(Ordering::SeqCst), RING_MAGIC);
        assert!(t.get(1, 3).is_none());
        let h2 = t.get(1, 2).unwrap();
        t.put(h, true);
        // Dead: not found again, but still mapped while h2 uses it.
        assert!(t.get(1, 2).is_none());
        assert_eq!(h2.ring.magic().load(Ordering::SeqCst), RING_MAGIC);
        t.put(h2, false);
        // Reclaimed: the entry is free again, its page a placeholder.
        assert_eq!(t.entry(0).state.load(Ordering::SeqCst), E_EMPTY);
        assert!(t.insert(5, 6, fd));
        assert_eq!(t.entry(0).ino.load(Ordering::SeqCst), 6);
        // Not a ring: refused, the entry left free.
        // SAFETY: memfd_create of a NUL-terminated name.
        let other = unsafe { libc::memfd_create(c"not-a-ring".as_ptr(), libc::MFD_CLOEXEC) };
        // SAFETY: ftruncate of the memfd just made.
        assert_eq!(unsafe { libc::ftruncate(other, RING_LEN as i64) }, 0);
        assert!(!t.insert(7, 8, other));
        assert_eq!(t.entry(1).state.load(Ordering::SeqCst), E_EMPTY);
        assert!(ring_ioctl(0x3b85) && ring_ioctl(0x3b71) && !ring_ioctl(0x3ba0));
    }

    #[test]
    fn an_fd_is_remembered_with_its_ring_until_forgotten_or_the_ring_goes() {
        let t = Table::new().unwrap();
        let fd = ring_memfd();
        assert!(t.by_fd(7).is_none());
        assert!(t.insert(1, 2, fd));
        let mark = t.fd_mark(7);
        let h = t.get(1, 2).unwrap();
        t.remember(7, mark, &h);
        t.put(h, false);
        let h = t.by_fd(7).unwrap();
        assert_eq!(h.ring.base(), t.page(0));
        t.put(h, false);
        // Forgotten (the fd may have been closed): looked up again.
        t.forget(7, 7);
        assert!(t.by_fd(7).is_none());
        // Forgotten between the mark and the look-up: not remembered.
        let mark = t.fd_mark(7);
        let h = t.get(1, 2).unwrap();
        t.forget(0, u32::MAX);
        t.remember(7, mark, &h);
        assert!(t.by_fd(7).is_none());
        // The ring gone and its entry reused for another file: the fd no longer matches.
        let mark = t.fd_mark(7);
        t.remember(7, mark, &h);
        assert!(t.by_fd(7).is_some_and(|h2| {
            t.put(h2, false);
            true
        }));
        t.put(h, true);
        assert!(t.by_fd(7).is_none());
        assert!(t.insert(3, 4, fd));
        assert_eq!(t.entry(0).ino.load(Ordering::SeqCst), 4);
        assert!(t.by_fd(7).is_none());
        // Past the remembered fds, and negative ones: never remembered.
        assert!(t.fd_mark(FD_CACHE as i32).is_none() && t.fd_mark(-1).is_none());
    }

    #[test]
    fn a_fork_child_sees_an_empty_table_and_reserves_its_pages_again() {
        let t = Table::new().unwrap();
        let fd = ring_memfd();
        assert!(t.insert(7, 8, fd));
        // SAFETY: fork in a test; the child only touches memory, maps, and calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let empty = t.entry(0).state.load(Ordering::SeqCst) == E_EMPTY
                && t.reserved().load(Ordering::SeqCst) == R_NONE;
            let again = t.insert(9, 10, fd) && t.get(9, 10).is_some();
            // SAFETY: _exit in the fork child.
            unsafe { libc::_exit(if empty && again { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waitpid of the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0);
        assert_eq!(t.entry(0).state.load(Ordering::SeqCst), E_LIVE);
        assert!(t.get(7, 8).is_some());
    }
}
