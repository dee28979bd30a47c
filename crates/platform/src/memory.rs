//! Program memory as the emulated machine sees it: address spaces and the frame table.
//!
//! Each program that owns security contexts has an address space ([`UserMemory`]), registered
//! with the machine under a [`SpaceId`]. Pinning a page gives it a pseudo-physical frame from
//! the [`FrameTable`], which records frame → (space, page) and a per-page pin count. DMA resolves
//! a physical address through the frame table back to the owning space and reads or writes it
//! there. A frame that is not pinned (any more) resolves to nothing: DMA to it is a device fault,
//! never an access to whatever the program has there now.
//!
//! Frame numbers are derived from (space, page), so the frames of a virtually contiguous range
//! are physically contiguous and keep the virtual alignment: this is what lets the radix page
//! table use 2 MiB and 1 GiB leaves. The table still owns the pin state: a frame exists only
//! while it is pinned.
//!
//! The derivation is `pfn = (space << 36) | (va >> 12)`: user addresses have 48 bits and space
//! ids 16 bits, so a physical address has at most 64 bits. Spaces with ids of 2^16 and above and
//! pages at or above 2^48 have no frame: [`FrameTable::frame_of`] returns `None` for them and
//! [`FrameTable::pin`] refuses them, so one space's pages can never alias another's frames.
//!
//! Invariants of [`FrameTable`]:
//! - pin state is a set of non-overlapping runs of frames, each with one pin count >= 1;
//!   adjacent runs with equal counts are always merged, so a range pinned as a whole (or page by
//!   page) is one run;
//! - `total_pins` is the sum over runs of `len * count`; `pinned_frames` the sum of `len`.
//!
//! Invariants of [`SimMemory`]: mapped pages are non-overlapping, maximal runs of page numbers
//! with one writability; page contents exist only for pages that were written (a mapped page
//! without contents reads as zeros), and only for mapped pages.
//!
//! Ranges are `(va, len)` pairs; the inclusive-last convention of [`crate::addr`] applies inside.

use crate::addr::{PhysAddr, UserVa, PAGE_SHIFT, PAGE_SIZE};
pub use crate::held::{Held, HeldFile, HeldFrames};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Bits of a user virtual address that get frame numbers.
pub const USER_VA_BITS: u32 = 48;
/// Number of address-space ids that get frame numbers (ids `0..MAX_FRAME_SPACES`).
pub const MAX_FRAME_SPACES: u32 = 1 << 16;
/// Bits of a frame number that hold the page number within its space.
const SPACE_SHIFT: u32 = USER_VA_BITS - PAGE_SHIFT;
/// Mask of the page-number bits of a frame number.
const PAGE_MASK_IN_PFN: u64 = (1 << SPACE_SHIFT) - 1;
/// One past the largest frame number that can exist.
const PFN_LIMIT: u64 = (MAX_FRAME_SPACES as u64) << SPACE_SHIFT;

/// A `HashMap` with a small, fast, non-cryptographic hash (`rustc-hash`'s), for the hot lookup
/// tables of the machine, whose keys are small integers from trusted code paths.
pub type FastHashMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// Identifies an address space registered with the machine.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpaceId(pub u32);

/// Why an access to program memory failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemFault {
    /// Nothing is mapped at the address.
    #[error("nothing is mapped at {0}")]
    Unmapped(UserVa),
    /// The address is mapped read-only and a write was asked for.
    #[error("{0} is read-only")]
    ReadOnly(UserVa),
}

/// A program's virtual memory, as DMA and pinning see it.
///
/// Implementations must never panic or crash on a bad address: every failure is a [`MemFault`].
pub trait UserMemory: Send + Sync {
    /// Copy `buf.len()` bytes at `va` into `buf`.
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault>;
    /// Copy `data` to `va`.
    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault>;
    /// [`UserMemory::read`] as the kernel's `get_user` reads: never a fault-injection site
    /// ([`crate::fault_inject::Faulting`] counts `read` and `write` only).
    fn read_uncounted(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        self.read(va, buf)
    }
    /// Check that every page of `[va, va + len)` is present (and writable if `write`), as
    /// pinning requires. `va` and `len` are page-aligned.
    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault>;
    /// The size of the page backing `va` (4 KiB, or a huge page size when backed by one).
    fn page_size_at(&self, _va: UserVa) -> u64 {
        PAGE_SIZE
    }
    /// Copy `len` bytes from `src` to `dst`, two non-overlapping ranges of this memory, without
    /// a buffer in between, when the memory can (a process's own memory: one kernel copy).
    /// `None` when it cannot, and the caller copies through a buffer with `read` and `write`.
    /// On a fault, bytes before it may have been copied.
    fn copy_within(&self, _dst: UserVa, _src: UserVa, _len: u64) -> Option<Result<(), MemFault>> {
        None
    }
    /// The parts of `[va, va + len)` (page-aligned, just probed for pinning) whose memory the
    /// engine can hold itself while they are pinned ([`Held`]: the file of a `MAP_SHARED`
    /// mapping), so that DMA keeps reaching the pinned pages whatever the program does to its
    /// address space. Empty when it cannot (the pages are then reached at their address).
    fn hold(&self, _va: UserVa, _len: u64, _write: bool) -> Vec<Held> {
        Vec::new()
    }
}

/// A simulated address space: sparse 4 KiB pages with their own protection, for tests, the demo
/// and VMMs that keep guest memory in uiommu.
///
/// Mapping is cheap at any size (a mapped page takes memory only once written). Every access is
/// checked as a whole before any byte moves: a read or write that faults anywhere copies nothing.
/// A range that runs past the top of the address space faults (at the first address up to the
/// top that is not mapped, or at `u64::MAX` when all of them are).
#[derive(Debug, Default)]
pub struct SimMemory {
    inner: Mutex<SimInner>,
}

/// The state behind [`SimMemory`]'s lock. Page numbers are `va >> PAGE_SHIFT`.
#[derive(Debug, Default)]
struct SimInner {
    /// Mapped runs: first page → run. Non-overlapping, maximal for equal writability.
    regions: BTreeMap<u64, SimRegion>,
    /// Contents of written pages (each `PAGE_SIZE` bytes); mapped pages not here are zero.
    data: FastHashMap<u64, Box<[u8]>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SimRegion {
    /// Last page of the run (inclusive).
    last: u64,
    writable: bool,
}

/// Inclusive page range of `[va, va + len)` rounded outward to pages, clamped at the top of the
/// address space; `None` for zero length.
fn page_span(va: u64, len: u64) -> Option<(u64, u64)> {
    if len == 0 {
        return None;
    }
    let last = va.saturating_add(len - 1);
    Some((va >> PAGE_SHIFT, last >> PAGE_SHIFT))
}

impl SimInner {
    /// The run containing `page`, as (first page, run).
    fn region_at(&self, page: u64) -> Option<(u64, SimRegion)> {
        self.regions
            .range(..=page)
            .next_back()
            .filter(|(_, r)| r.last >= page)
            .map(|(&k, &r)| (k, r))
    }

    /// Remove the pages `first..=last` (mappings and contents).
    fn remove_pages(&mut self, first: u64, last: u64) {
        // A run that starts before `first` and reaches into the range is cut short (and its tail
        // beyond `last` kept).
        if let Some((start, r)) = self.region_at(first) {
            if start < first {
                if let Some(e) = self.regions.get_mut(&start) {
                    e.last = first - 1;
                }
                if r.last > last {
                    self.regions.insert(
                        last + 1,
                        SimRegion {
                            last: r.last,
                            writable: r.writable,
                        },
                    );
                }
            }
        }
        let inside: Vec<u64> = self.regions.range(first..=last).map(|(&k, _)| k).collect();
        for k in inside {
            if let Some(r) = self.regions.remove(&k) {
                if r.last > last {
                    self.regions.insert(
                        last + 1,
                        SimRegion {
                            last: r.last,
                            writable: r.writable,
                        },
                    );
                }
            }
        }
        let count = last - first;
        if count < self.data.len() as u64 {
            for p in first..=last {
                self.data.remove(&p);
            }
        } else {
            self.data.retain(|&p, _| p < first || p > last);
        }
    }

    /// Merge the run starting at `page` with the one ending just before it, if they agree.
    fn merge_at(&mut self, page: u64) {
        let Some(&next) = self.regions.get(&page) else {
            return;
        };
        let Some(prev_page) = page.checked_sub(1) else {
            return;
        };
        let Some((start, prev)) = self.region_at(prev_page) else {
            return;
        };
        if prev.writable == next.writable {
            self.regions.remove(&page);
            if let Some(e) = self.regions.get_mut(&start) {
                e.last = next.last;
            }
        }
    }

    /// Check that every byte of `[va, va + len)` is mapped (and writable if `write`).
    fn check(&self, va: u64, len: u64, write: bool) -> Result<(), MemFault> {
        let Some((first, last)) = page_span(va, len) else {
            return Ok(());
        };
        let mut page = first;
        loop {
            let addr = UserVa((page << PAGE_SHIFT).max(va));
            let Some((_, r)) = self.region_at(page) else {
                return Err(MemFault::Unmapped(addr));
            };
            if write && !r.writable {
                return Err(MemFault::ReadOnly(addr));
            }
            if r.last >= last {
                break;
            }
            page = r.last + 1;
        }
        if va.checked_add(len - 1).is_none() {
            // Every address up to the top is mapped, but the range runs past it.
            return Err(MemFault::Unmapped(UserVa(u64::MAX)));
        }
        Ok(())
    }
}

impl SimMemory {
    /// An empty address space.
    pub fn new() -> Arc<SimMemory> {
        Arc::new(SimMemory::default())
    }

    fn lock(&self) -> MutexGuard<'_, SimInner> {
        // The state is consistent between statements, so a panic elsewhere cannot have left it
        // half-updated in a way that matters: keep going rather than propagate the poison.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Map zeroed pages over `[va, va + len)` (page-aligned), `writable` or read-only, replacing
    /// anything there. Like `mmap(MAP_FIXED)`. An unaligned range is widened to whole pages; a
    /// range past the top of the address space is clipped there; zero length does nothing.
    pub fn map(&self, va: UserVa, len: u64, writable: bool) {
        let Some((first, last)) = page_span(va.0, len) else {
            return;
        };
        let mut inner = self.lock();
        inner.remove_pages(first, last);
        inner.regions.insert(first, SimRegion { last, writable });
        if let Some(after) = last.checked_add(1) {
            inner.merge_at(after);
        }
        inner.merge_at(first);
    }

    /// Remove the pages of `[va, va + len)`. Like `munmap`. Widened and clipped like
    /// [`SimMemory::map`].
    pub fn unmap(&self, va: UserVa, len: u64) {
        let Some((first, last)) = page_span(va.0, len) else {
            return;
        };
        self.lock().remove_pages(first, last);
    }

    /// Bytes currently mapped.
    pub fn mapped_bytes(&self) -> u64 {
        let inner = self.lock();
        inner
            .regions
            .iter()
            .map(|(&k, r)| (r.last - k + 1).saturating_mul(PAGE_SIZE))
            .fold(0u64, u64::saturating_add)
    }
}

impl UserMemory for SimMemory {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        let inner = self.lock();
        inner.check(va.0, buf.len() as u64, false)?;
        let mut addr = va.0;
        let mut rest = buf;
        while !rest.is_empty() {
            let off = (addr & (PAGE_SIZE - 1)) as usize;
            let n = rest.len().min(PAGE_SIZE as usize - off);
            let (chunk, tail) = rest.split_at_mut(n);
            match inner
                .data
                .get(&(addr >> PAGE_SHIFT))
                .and_then(|p| p.get(off..off + n))
            {
                Some(src) => chunk.copy_from_slice(src),
                None => chunk.fill(0),
            }
            rest = tail;
            addr = addr.wrapping_add(n as u64);
        }
        Ok(())
    }

    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        let mut inner = self.lock();
        inner.check(va.0, data.len() as u64, true)?;
        let mut addr = va.0;
        let mut rest = data;
        while !rest.is_empty() {
            let off = (addr & (PAGE_SIZE - 1)) as usize;
            let n = rest.len().min(PAGE_SIZE as usize - off);
            let (chunk, tail) = rest.split_at(n);
            let page = inner
                .data
                .entry(addr >> PAGE_SHIFT)
                .or_insert_with(|| vec![0u8; PAGE_SIZE as usize].into_boxed_slice());
            if let Some(dst) = page.get_mut(off..off + n) {
                dst.copy_from_slice(chunk);
            }
            rest = tail;
            addr = addr.wrapping_add(n as u64);
        }
        Ok(())
    }

    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        self.lock().check(va.0, len, write)
    }
}

/// A page frame number of the emulated machine.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The physical address of the frame's first byte (exact for every frame the table hands
    /// out, which are below 2^52; higher bits of a larger number are lost).
    pub fn addr(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }
}

/// Why the frame table refused to pin. Nothing changed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The space id is too large to have frame numbers (ids must be below
    /// [`MAX_FRAME_SPACES`]).
    #[error("address space {0:?} has no frame numbers")]
    BadSpace(SpaceId),
    /// Part of the range lies at or above 2^[`USER_VA_BITS`].
    #[error("{npages} pages at {va} reach past the {USER_VA_BITS}-bit user address range")]
    OutOfRange {
        /// First page asked for.
        va: UserVa,
        /// Pages asked for.
        npages: u64,
    },
    /// A page in the range is already pinned `u32::MAX` times.
    #[error("a page is pinned too many times")]
    TooManyPins,
}

/// One run of pinned frames with a common pin count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PinRun {
    /// Number of frames (>= 1).
    len: u64,
    /// Pin count of each frame (>= 1).
    count: u32,
}

/// The frame table: which (space, page) each pinned frame holds, and how often it is pinned.
///
/// Pin state is kept as runs of frames with equal counts, so pinning or unpinning a range costs
/// O(log n + runs it touches), whatever its length.
#[derive(Debug, Default)]
pub struct FrameTable {
    /// First frame of each run → run. See the module invariants.
    runs: BTreeMap<u64, PinRun>,
    total_pins: u64,
    pinned_frames: u64,
}

impl FrameTable {
    /// An empty table.
    pub fn new() -> FrameTable {
        FrameTable::default()
    }

    /// The frame that holds `page` of `space`, pinned or not (an unaligned `page` names the page
    /// containing it). `None` when the pair has no frame: space id at or above
    /// [`MAX_FRAME_SPACES`] or address at or above 2^[`USER_VA_BITS`].
    pub fn frame_of(space: SpaceId, page: UserVa) -> Option<Pfn> {
        if space.0 >= MAX_FRAME_SPACES || page.0 >> USER_VA_BITS != 0 {
            return None;
        }
        Some(Pfn(
            (u64::from(space.0) << SPACE_SHIFT) | (page.0 >> PAGE_SHIFT)
        ))
    }

    /// The (space, page) a frame number stands for, pinned or not.
    fn owner_of(pfn: u64) -> Option<(SpaceId, UserVa)> {
        if pfn >= PFN_LIMIT {
            return None;
        }
        let space = SpaceId((pfn >> SPACE_SHIFT) as u32);
        Some((space, UserVa((pfn & PAGE_MASK_IN_PFN) << PAGE_SHIFT)))
    }

    /// The run containing `pfn`, as (first frame, run).
    fn run_at(&self, pfn: u64) -> Option<(u64, PinRun)> {
        self.runs
            .range(..=pfn)
            .next_back()
            .filter(|(&k, r)| pfn - k < r.len)
            .map(|(&k, &r)| (k, r))
    }

    /// Split the run that contains `pfn` (not at its start) so that a run starts at `pfn`.
    fn split_at(&mut self, pfn: u64) {
        if let Some((start, run)) = self.run_at(pfn) {
            if start < pfn {
                let head = pfn - start;
                if let Some(r) = self.runs.get_mut(&start) {
                    r.len = head;
                }
                self.runs.insert(
                    pfn,
                    PinRun {
                        len: run.len - head,
                        count: run.count,
                    },
                );
            }
        }
    }

    /// Merge the run starting at `pfn` into the one ending just before it, if counts agree.
    fn merge_at(&mut self, pfn: u64) {
        let Some(&next) = self.runs.get(&pfn) else {
            return;
        };
        let Some(before) = pfn.checked_sub(1) else {
            return;
        };
        let Some((start, prev)) = self.run_at(before) else {
            return;
        };
        if prev.count == next.count {
            self.runs.remove(&pfn);
            if let Some(r) = self.runs.get_mut(&start) {
                r.len += next.len;
            }
        }
    }

    /// Pin `npages` pages starting at `va` (page-aligned) of `space`: each page's pin count goes
    /// up by one and its frame exists from now on. Returns the first frame; the rest follow
    /// contiguously. The caller has probed the memory.
    ///
    /// Refused, with nothing changed, when the space or part of the range has no frames
    /// ([`FrameTable::frame_of`]) or a page's count would overflow. Zero pages pins nothing and
    /// returns the frame of `va`.
    pub fn pin(&mut self, space: SpaceId, va: UserVa, npages: u64) -> Result<Pfn, FrameError> {
        let first = match FrameTable::frame_of(space, va) {
            Some(f) => f,
            None if space.0 >= MAX_FRAME_SPACES => return Err(FrameError::BadSpace(space)),
            None => return Err(FrameError::OutOfRange { va, npages }),
        };
        if npages == 0 {
            return Ok(first);
        }
        let start = first.0;
        let page_in_space = start & PAGE_MASK_IN_PFN;
        if npages > (1u64 << SPACE_SHIFT) - page_in_space {
            return Err(FrameError::OutOfRange { va, npages });
        }
        let end = start + npages;
        // Fast path: nothing pinned in the range, and no neighbour run with count 1 that the
        // new run would have to merge with: one insertion.
        let clear_before = match self.runs.range(..end).next_back() {
            None => true,
            Some((&k, r)) => k + r.len < start || (k + r.len == start && r.count != 1),
        };
        if clear_before && self.runs.get(&end).is_none_or(|r| r.count != 1) {
            self.runs.insert(
                start,
                PinRun {
                    len: npages,
                    count: 1,
                },
            );
            self.pinned_frames += npages;
            self.total_pins += npages;
            return Ok(first);
        }
        // Refuse before changing anything if a count would overflow.
        if let Some((_, r)) = self.run_at(start) {
            if r.count == u32::MAX {
                return Err(FrameError::TooManyPins);
            }
        }
        if self
            .runs
            .range(start..end)
            .any(|(_, r)| r.count == u32::MAX)
        {
            return Err(FrameError::TooManyPins);
        }
        self.split_at(start);
        self.split_at(end);
        let mut gaps: Vec<(u64, u64)> = Vec::new();
        let mut cursor = start;
        for (&k, r) in self.runs.range_mut(start..end) {
            if k > cursor {
                gaps.push((cursor, k - cursor));
            }
            r.count += 1;
            cursor = k + r.len;
        }
        if cursor < end {
            gaps.push((cursor, end - cursor));
        }
        for (k, len) in gaps {
            self.pinned_frames += len;
            self.runs.insert(k, PinRun { len, count: 1 });
        }
        self.merge_at(start);
        self.merge_at(end);
        self.total_pins += npages;
        Ok(first)
    }

    /// Drop one pin from each of `npages` frames starting at `first`. A frame whose count reaches
    /// zero stops resolving. Unpinning a frame that is not pinned is a bug in the caller; it is
    /// ignored (and debug-asserted).
    pub fn unpin(&mut self, first: Pfn, npages: u64) {
        if npages == 0 || first.0 >= PFN_LIMIT {
            debug_assert!(npages == 0, "unpin of frames that do not exist");
            return;
        }
        let start = first.0;
        let end = start.saturating_add(npages).min(PFN_LIMIT);
        // Fast path: exactly one run with one pin: it goes.
        if let Some(r) = self.runs.get(&start) {
            if r.len == end - start && r.count == 1 {
                self.runs.remove(&start);
                self.pinned_frames -= npages;
                self.total_pins -= npages;
                return;
            }
        }
        self.split_at(start);
        self.split_at(end);
        let mut covered = 0u64;
        let mut emptied: Vec<u64> = Vec::new();
        for (&k, r) in self.runs.range_mut(start..end) {
            covered += r.len;
            r.count -= 1;
            if r.count == 0 {
                emptied.push(k);
            }
        }
        for k in emptied {
            if let Some(r) = self.runs.remove(&k) {
                self.pinned_frames -= r.len;
            }
        }
        self.total_pins -= covered;
        self.merge_at(start);
        self.merge_at(end);
        debug_assert_eq!(covered, npages, "unpin of frames that are not pinned");
    }

    /// The (space, page) a pinned frame holds; `None` when the frame is not pinned.
    pub fn resolve(&self, pfn: Pfn) -> Option<(SpaceId, UserVa)> {
        self.run_at(pfn.0)?;
        FrameTable::owner_of(pfn.0)
    }

    /// One past the last frame of the pinned run containing `pfn` (frames `pfn..end` are all
    /// pinned, in one run); `None` when `pfn` is not pinned.
    fn pinned_run_end(&self, pfn: u64) -> Option<u64> {
        self.run_at(pfn).map(|(k, r)| k + r.len)
    }

    /// The pin count of `page` of `space` (0 when not pinned).
    pub fn pin_count(&self, space: SpaceId, page: UserVa) -> u32 {
        FrameTable::frame_of(space, page)
            .and_then(|pfn| self.run_at(pfn.0))
            .map_or(0, |(_, r)| r.count)
    }

    /// Total pins held over all frames (a page pinned twice counts twice).
    pub fn total_pins(&self) -> u64 {
        self.total_pins
    }

    /// Number of distinct frames pinned.
    pub fn pinned_frames(&self) -> u64 {
        self.pinned_frames
    }

    /// Number of runs the pin state is kept in (a measure of fragmentation, for tests).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }
}

/// The machine's memory: registered address spaces plus the frame table.
#[derive(Default)]
pub struct Memory {
    /// Indexed by space id (ids are dense from 0).
    spaces: Vec<Arc<dyn UserMemory>>,
    next_space: u32,
    /// Pinned frames.
    pub frames: FrameTable,
    /// The pinned frames whose memory the engine holds.
    pub held: HeldFrames,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("spaces", &self.spaces.len())
            .field("frames", &self.frames)
            .finish()
    }
}

/// Which direction a physical access goes.
enum PhysOp<'b> {
    Read(&'b mut [u8]),
    Write(&'b [u8]),
}

impl Memory {
    /// Register an address space; returns its id. Ids count up from 0 and are not reused; only
    /// the first [`MAX_FRAME_SPACES`] ids can have pages pinned.
    pub fn add_space(&mut self, mem: Arc<dyn UserMemory>) -> SpaceId {
        let id = SpaceId(self.next_space);
        self.next_space = self.next_space.saturating_add(1);
        self.spaces.push(mem);
        id
    }
    /// The address space registered as `id`.
    pub fn space(&self, id: SpaceId) -> Option<&Arc<dyn UserMemory>> {
        self.spaces.get(id.0 as usize)
    }

    /// After `npages` pages of `space` from `va` were pinned by a user that had none: hold
    /// what the space can hold of them ([`UserMemory::hold`]; pages held already stay so).
    pub fn hold(&mut self, space: SpaceId, va: UserVa, npages: u64, write: bool) {
        let Some(mem) = self.spaces.get(space.0 as usize).cloned() else {
            return;
        };
        for h in mem.hold(va, npages.saturating_mul(PAGE_SIZE), write) {
            if let Some(first) = FrameTable::frame_of(space, h.va) {
                self.held
                    .insert(first.0, h.len / PAGE_SIZE, &h.file, h.offset);
            }
        }
    }

    /// After `npages` frames from `first` were unpinned once: those no longer pinned at all
    /// are no longer held.
    pub fn unhold(&mut self, first: Pfn, npages: u64) {
        if self.held.runs.is_empty() {
            return;
        }
        let end = first.0.saturating_add(npages);
        let mut p = first.0;
        while p < end {
            match self.frames.pinned_run_end(p) {
                // Still pinned (by another user): still held.
                Some(e) => p = e.max(p + 1),
                None => {
                    let mut q = p + 1;
                    while q < end && self.frames.pinned_run_end(q).is_none() {
                        q += 1;
                    }
                    self.held.remove(p, q - p);
                    p = q;
                }
            }
        }
    }

    /// How many held frames are not pinned (0 unless a pin's release missed its hold).
    pub fn unpinned_held(&self) -> u64 {
        let mut n = 0;
        for (&s, r) in &self.held.runs {
            for p in s..s + r.npages {
                if self.frames.pinned_run_end(p).is_none() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Read `buf.len()` bytes of `space` at `va` as DMA through the pinned pages sees them:
    /// held pages from their file, the rest from the space.
    pub fn read_pinned(&self, space: SpaceId, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        self.pinned_rw(space, va, PhysOp::Read(buf))
    }

    /// Write `data` to `space` at `va` as [`Memory::read_pinned`] reads.
    pub fn write_pinned(&self, space: SpaceId, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        self.pinned_rw(space, va, PhysOp::Write(data))
    }

    fn pinned_rw(&self, space: SpaceId, va: UserVa, mut op: PhysOp<'_>) -> Result<(), MemFault> {
        let mem = self
            .spaces
            .get(space.0 as usize)
            .ok_or(MemFault::Unmapped(va))?;
        let len = match &op {
            PhysOp::Read(b) => b.len(),
            PhysOp::Write(d) => d.len(),
        } as u64;
        if self.held.runs.is_empty() {
            return match op {
                PhysOp::Read(b) => mem.read(va, b),
                PhysOp::Write(d) => mem.write(va, d),
            };
        }
        let mut done = 0u64;
        while done < len {
            let cur = UserVa(va.0.checked_add(done).ok_or(MemFault::Unmapped(va))?);
            let in_page = cur.0 & (PAGE_SIZE - 1);
            let held = FrameTable::frame_of(space, cur).and_then(|f| self.held.at(f.0));
            let (n, r) = match held {
                Some((file, off, left)) => {
                    let n = (left * PAGE_SIZE - in_page).min(len - done);
                    let (lo, hi) = (done as usize, (done + n) as usize);
                    let ok = match &mut op {
                        PhysOp::Read(b) => file.read_at(off + in_page, &mut b[lo..hi]),
                        PhysOp::Write(d) => file.write_at(off + in_page, &d[lo..hi]),
                    };
                    (
                        n,
                        if ok {
                            Ok(())
                        } else {
                            Err(MemFault::Unmapped(cur))
                        },
                    )
                }
                None => {
                    // Up to the next held page (or the end), from the space.
                    let mut n = (PAGE_SIZE - in_page).min(len - done);
                    while done + n < len {
                        let next = UserVa(cur.0 + n);
                        if FrameTable::frame_of(space, next)
                            .and_then(|f| self.held.at(f.0))
                            .is_some()
                        {
                            break;
                        }
                        n = (n + PAGE_SIZE).min(len - done);
                    }
                    let (lo, hi) = (done as usize, (done + n) as usize);
                    let r = match &mut op {
                        PhysOp::Read(b) => mem.read(cur, &mut b[lo..hi]),
                        PhysOp::Write(d) => mem.write(cur, &d[lo..hi]),
                    };
                    (n, r)
                }
            };
            r?;
            done += n;
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at physical address `pa` (within pinned frames) into `buf`.
    /// Err with the first physical address that does not resolve or faults.
    ///
    /// Physically contiguous pinned frames of one space are copied with one call into the space.
    /// On error, bytes before the failing address may have been copied.
    pub fn read_phys(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), PhysAddr> {
        self.access_phys(pa, PhysOp::Read(buf))
    }

    /// Write `data` at physical address `pa` (within pinned frames).
    /// Err with the first physical address that does not resolve or faults.
    pub fn write_phys(&self, pa: PhysAddr, data: &[u8]) -> Result<(), PhysAddr> {
        self.access_phys(pa, PhysOp::Write(data))
    }

    /// The pinned run at physical address `pa`, within one space: that space, the user
    /// address `pa` stands for, and how many bytes from `pa` on stay in the run.
    fn resolve(&self, pa: u64) -> Option<(SpaceId, UserVa, u64)> {
        let pfn = pa >> PAGE_SHIFT;
        let run_end = self.frames.pinned_run_end(pfn)?;
        let (space, page_va) = FrameTable::owner_of(pfn)?;
        // Stay within one space: the next space's frames belong to another program.
        let space_end = ((pfn >> SPACE_SHIFT) + 1) << SPACE_SHIFT;
        let avail = (run_end.min(space_end) - pfn)
            .saturating_mul(PAGE_SIZE)
            .saturating_sub(pa & (PAGE_SIZE - 1));
        Some((space, UserVa(page_va.0 | (pa & (PAGE_SIZE - 1))), avail))
    }

    /// Copy `len` bytes from physical address `src` to `dst` (both within pinned frames), as a
    /// copy engine does: directly in the owning memory when both sides are in one space that
    /// can copy within itself ([`UserMemory::copy_within`]), else through a buffer. `Err` with
    /// the first physical address that did not resolve or faulted, and whether it was on the
    /// source side (`true`) or the destination side. Bytes before a fault may have been copied.
    pub fn copy_phys(
        &self,
        dst: PhysAddr,
        src: PhysAddr,
        len: u64,
    ) -> Result<(), (PhysAddr, bool)> {
        let mut done = 0u64;
        let mut bounce: Vec<u8> = Vec::new();
        while done < len {
            let s = src.0.checked_add(done).ok_or((PhysAddr(u64::MAX), true))?;
            let d = dst.0.checked_add(done).ok_or((PhysAddr(u64::MAX), false))?;
            let (s_space, s_va, s_avail) = self.resolve(s).ok_or((PhysAddr(s), true))?;
            let (d_space, d_va, d_avail) = self.resolve(d).ok_or((PhysAddr(d), false))?;
            let mut n = s_avail.min(d_avail).min(len - done);
            let (s_held, d_held) = (self.held.at(s >> PAGE_SHIFT), self.held.at(d >> PAGE_SHIFT));
            if let (Some((sf, s_off, s_left)), Some((df, d_off, d_left))) = (s_held, d_held) {
                // Both sides held: one move between the engine's mappings of their files.
                let (s_in, d_in) = (s & (PAGE_SIZE - 1), d & (PAGE_SIZE - 1));
                n = n
                    .min(s_left * PAGE_SIZE - s_in)
                    .min(d_left * PAGE_SIZE - d_in);
                if HeldFile::copy(df, d_off + d_in, sf, s_off + s_in, n).is_some() {
                    done += n;
                    continue;
                }
            }
            let disjoint = s_va.0.saturating_add(n) <= d_va.0 || d_va.0.saturating_add(n) <= s_va.0;
            let held = s_held.is_some() || d_held.is_some();
            let direct = match self.spaces.get(s_space.0 as usize) {
                Some(mem) if s_space == d_space && disjoint && !held => {
                    mem.copy_within(d_va, s_va, n)
                }
                _ => None,
            };
            match direct {
                Some(Ok(())) => {}
                Some(Err(MemFault::Unmapped(v) | MemFault::ReadOnly(v))) => {
                    return Err(if v.0 >= s_va.0 && v.0 - s_va.0 < n {
                        (PhysAddr(s + (v.0 - s_va.0)), true)
                    } else if v.0 >= d_va.0 && v.0 - d_va.0 < n {
                        (PhysAddr(d + (v.0 - d_va.0)), false)
                    } else {
                        (PhysAddr(s), true)
                    });
                }
                None => {
                    let m = n.min(64 * 1024);
                    bounce.resize(m as usize, 0);
                    self.read_phys(PhysAddr(s), &mut bounce)
                        .map_err(|p| (p, true))?;
                    self.write_phys(PhysAddr(d), &bounce)
                        .map_err(|p| (p, false))?;
                    done += m;
                    continue;
                }
            }
            done += n;
        }
        Ok(())
    }

    fn access_phys(&self, pa: PhysAddr, mut op: PhysOp<'_>) -> Result<(), PhysAddr> {
        let len = match &op {
            PhysOp::Read(b) => b.len(),
            PhysOp::Write(d) => d.len(),
        } as u64;
        let mut done = 0u64;
        while done < len {
            let cur = pa.0.checked_add(done).ok_or(PhysAddr(u64::MAX))?;
            let pfn = cur >> PAGE_SHIFT;
            let run_end = self.frames.pinned_run_end(pfn).ok_or(PhysAddr(cur))?;
            let (space, page_va) = FrameTable::owner_of(pfn).ok_or(PhysAddr(cur))?;
            // Stay within one space: the next space's frames belong to another program.
            let space_end = ((pfn >> SPACE_SHIFT) + 1) << SPACE_SHIFT;
            let frames = run_end.min(space_end) - pfn;
            let avail = frames
                .saturating_mul(PAGE_SIZE)
                .saturating_sub(cur & (PAGE_SIZE - 1));
            let mut n = avail.min(len - done);
            let va = UserVa(page_va.0 | (cur & (PAGE_SIZE - 1)));
            if let Some((file, off, left)) = self.held.at(pfn) {
                // Held: the pinned pages themselves, through their file.
                n = n.min(left * PAGE_SIZE - (cur & (PAGE_SIZE - 1)));
                let (lo, hi) = (done as usize, (done + n) as usize);
                let at = off + (cur & (PAGE_SIZE - 1));
                let ok = match &mut op {
                    PhysOp::Read(b) => b.get_mut(lo..hi).is_some_and(|dst| file.read_at(at, dst)),
                    PhysOp::Write(d) => d.get(lo..hi).is_some_and(|src| file.write_at(at, src)),
                };
                if !ok {
                    return Err(PhysAddr(cur));
                }
                done += n;
                continue;
            }
            let mem = self.spaces.get(space.0 as usize).ok_or(PhysAddr(cur))?;
            let (lo, hi) = (done as usize, (done + n) as usize);
            let result = match &mut op {
                PhysOp::Read(b) => match b.get_mut(lo..hi) {
                    Some(dst) => mem.read(va, dst),
                    None => return Err(PhysAddr(cur)),
                },
                PhysOp::Write(d) => match d.get(lo..hi) {
                    Some(src) => mem.write(va, src),
                    None => return Err(PhysAddr(cur)),
                },
            };
            if let Err(fault) = result {
                let bad = match fault {
                    MemFault::Unmapped(v) | MemFault::ReadOnly(v) => v.0,
                };
                // Report the fault's own address when it lies in this chunk.
                let at = if bad >= va.0 && bad - va.0 < n {
                    cur + (bad - va.0)
                } else {
                    cur
                };
                return Err(PhysAddr(at));
            }
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::collections::HashMap;

    const S0: SpaceId = SpaceId(0);

    fn sim_with(va: u64, len: u64, writable: bool) -> Arc<SimMemory> {
        let m = SimMemory::new();
        m.map(UserVa(va), len, writable);
        m
    }

    #[test]
    fn sim_memory_reads_zero_then_what_was_written_across_pages() {
        let m = sim_with(0x10000, 3 * PAGE_SIZE, true);
        let mut buf = [0xffu8; 16];
        m.read(UserVa(0x10ff8), &mut buf).unwrap();
        assert_eq!(buf, [0u8; 16]);
        let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        m.write(UserVa(0x10800), &data).unwrap();
        let mut back = vec![0u8; 6000];
        m.read(UserVa(0x10800), &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn sim_memory_faults_on_unmapped_and_read_only_without_copying() {
        let m = sim_with(0x10000, PAGE_SIZE, true);
        m.map(UserVa(0x11000), PAGE_SIZE, false);
        let mut buf = [0u8; 8];
        assert_eq!(
            m.read(UserVa(0x12000), &mut buf),
            Err(MemFault::Unmapped(UserVa(0x12000)))
        );
        assert_eq!(
            m.read(UserVa(0x11ffc), &mut buf),
            Err(MemFault::Unmapped(UserVa(0x12000)))
        );
        assert_eq!(
            m.write(UserVa(0x10ffc), &[1; 8]),
            Err(MemFault::ReadOnly(UserVa(0x11000)))
        );
        // Nothing was written by the refused write.
        m.read(UserVa(0x10ffc), &mut buf[..4]).unwrap();
        assert_eq!(&buf[..4], &[0; 4]);
        m.read(UserVa(0x11000), &mut buf).unwrap();
    }

    #[test]
    fn sim_memory_never_panics_on_ranges_that_overflow() {
        let m = sim_with(0, PAGE_SIZE, true);
        let mut buf = [0u8; 32];
        assert!(m.read(UserVa(u64::MAX - 3), &mut buf).is_err());
        assert!(m.write(UserVa(u64::MAX), &[1, 2]).is_err());
        assert!(m.probe(UserVa(!0xfffu64), PAGE_SIZE * 2, false).is_err());
        m.map(UserVa(!0xfffu64), u64::MAX, true);
        m.unmap(UserVa(u64::MAX), u64::MAX);
        // Top page mapped: a read running past the top still faults, at the top.
        m.map(UserVa(!0xfffu64), PAGE_SIZE, true);
        assert_eq!(
            m.read(UserVa(u64::MAX - 3), &mut buf),
            Err(MemFault::Unmapped(UserVa(u64::MAX)))
        );
        m.read(UserVa(u64::MAX - 3), &mut buf[..4]).unwrap();
        m.write(UserVa(u64::MAX), &[7]).unwrap();
    }

    #[test]
    fn sim_memory_map_replaces_and_unmap_splits_regions() {
        let m = sim_with(0x100000, 16 * PAGE_SIZE, true);
        m.write(UserVa(0x100000 + 5 * PAGE_SIZE), &[9; 4]).unwrap();
        m.map(UserVa(0x100000 + 4 * PAGE_SIZE), 2 * PAGE_SIZE, false);
        let mut buf = [1u8; 4];
        m.read(UserVa(0x100000 + 5 * PAGE_SIZE), &mut buf).unwrap();
        assert_eq!(buf, [0; 4], "map replaces contents with zeros");
        assert!(m.probe(UserVa(0x100000), 16 * PAGE_SIZE, false).is_ok());
        assert_eq!(
            m.probe(UserVa(0x100000), 16 * PAGE_SIZE, true),
            Err(MemFault::ReadOnly(UserVa(0x100000 + 4 * PAGE_SIZE)))
        );
        m.unmap(UserVa(0x100000 + 8 * PAGE_SIZE), PAGE_SIZE);
        assert_eq!(m.mapped_bytes(), 15 * PAGE_SIZE);
        assert_eq!(
            m.probe(UserVa(0x100000 + 6 * PAGE_SIZE), 4 * PAGE_SIZE, false),
            Err(MemFault::Unmapped(UserVa(0x100000 + 8 * PAGE_SIZE)))
        );
        m.map(UserVa(0x100000), 16 * PAGE_SIZE, true);
        assert_eq!(m.lock().regions.len(), 1);
    }

    #[test]
    fn sim_memory_maps_a_gigabyte_without_allocating_it() {
        let m = sim_with(0x4000_0000, 1 << 30, true);
        assert!(m.probe(UserVa(0x4000_0000), 1 << 30, true).is_ok());
        assert_eq!(m.lock().data.len(), 0);
    }

    #[test]
    fn frame_numbers_derive_from_space_and_page_and_are_checked() {
        assert_eq!(
            FrameTable::frame_of(SpaceId(0), UserVa(0x5000)),
            Some(Pfn(5))
        );
        assert_eq!(
            FrameTable::frame_of(SpaceId(3), UserVa(0x20_0000)),
            Some(Pfn((3 << 36) | 0x200))
        );
        assert_eq!(FrameTable::frame_of(SpaceId(1 << 16), UserVa(0)), None);
        assert_eq!(FrameTable::frame_of(SpaceId(0), UserVa(1 << 48)), None);
        let top = FrameTable::frame_of(SpaceId(0xffff), UserVa((1 << 48) - PAGE_SIZE)).unwrap();
        assert_eq!(top.addr(), PhysAddr(!0xfffu64));
    }

    #[test]
    fn pin_refuses_frames_that_would_alias_another_space() {
        let mut ft = FrameTable::new();
        assert_eq!(
            ft.pin(SpaceId(1 << 16), UserVa(0), 1),
            Err(FrameError::BadSpace(SpaceId(1 << 16)))
        );
        assert!(matches!(
            ft.pin(S0, UserVa(1 << 48), 1),
            Err(FrameError::OutOfRange { .. })
        ));
        // The last page of space 0 is fine; one more would be space 1's first frame.
        assert!(ft.pin(S0, UserVa((1 << 48) - PAGE_SIZE), 1).is_ok());
        assert!(matches!(
            ft.pin(S0, UserVa((1 << 48) - PAGE_SIZE), 2),
            Err(FrameError::OutOfRange { .. })
        ));
        assert!(ft.pin(S0, UserVa(0), u64::MAX).is_err());
        assert_eq!(ft.total_pins(), 1);
        assert_eq!(ft.resolve(Pfn(1 << 36)), None);
    }

    #[test]
    fn pinned_frame_resolves_to_its_space_and_page() {
        let mut ft = FrameTable::new();
        let first = ft.pin(SpaceId(2), UserVa(0x7000_0000), 4).unwrap();
        assert_eq!(
            first,
            FrameTable::frame_of(SpaceId(2), UserVa(0x7000_0000)).unwrap()
        );
        assert_eq!(
            ft.resolve(Pfn(first.0 + 3)),
            Some((SpaceId(2), UserVa(0x7000_3000)))
        );
        assert_eq!(ft.resolve(Pfn(first.0 + 4)), None);
        assert_eq!(ft.pinned_frames(), 4);
    }

    #[test]
    fn unpinned_frame_resolves_to_nothing() {
        let mut ft = FrameTable::new();
        let f = ft.pin(S0, UserVa(0x1000), 2).unwrap();
        ft.unpin(f, 1);
        assert_eq!(ft.resolve(f), None);
        assert!(ft.resolve(Pfn(f.0 + 1)).is_some());
        ft.unpin(Pfn(f.0 + 1), 1);
        assert_eq!(ft.resolve(Pfn(f.0 + 1)), None);
        assert_eq!(
            (ft.total_pins(), ft.pinned_frames(), ft.run_count()),
            (0, 0, 0)
        );
    }

    #[test]
    fn overlapping_pins_count_per_page_and_unpin_in_pieces() {
        let mut ft = FrameTable::new();
        let a = ft.pin(S0, UserVa(0x10000), 8).unwrap();
        ft.pin(S0, UserVa(0x14000), 8).unwrap();
        assert_eq!(ft.pin_count(S0, UserVa(0x13000)), 1);
        assert_eq!(ft.pin_count(S0, UserVa(0x14000)), 2);
        assert_eq!(ft.pin_count(S0, UserVa(0x1b000)), 1);
        assert_eq!(ft.pin_count(S0, UserVa(0x1c000)), 0);
        assert_eq!(
            (ft.total_pins(), ft.pinned_frames(), ft.run_count()),
            (16, 12, 3)
        );
        ft.unpin(a, 8);
        assert_eq!(ft.pin_count(S0, UserVa(0x14000)), 1);
        assert_eq!(ft.resolve(a), None);
        assert_eq!(
            (ft.total_pins(), ft.pinned_frames(), ft.run_count()),
            (8, 8, 1)
        );
    }

    #[test]
    fn page_by_page_pins_merge_into_one_run() {
        let mut ft = FrameTable::new();
        for i in 0..1000u64 {
            ft.pin(S0, UserVa(0x100000 + i * PAGE_SIZE), 1).unwrap();
        }
        assert_eq!(ft.run_count(), 1);
        // Unpin the middle, then repin: back to one run.
        let mid = FrameTable::frame_of(S0, UserVa(0x100000 + 500 * PAGE_SIZE)).unwrap();
        ft.unpin(mid, 1);
        assert_eq!(ft.run_count(), 2);
        ft.pin(S0, UserVa(0x100000 + 500 * PAGE_SIZE), 1).unwrap();
        assert_eq!(
            (ft.run_count(), ft.total_pins(), ft.pinned_frames()),
            (1, 1000, 1000)
        );
    }

    #[test]
    fn pinning_a_gigabyte_is_one_run_and_quick() {
        let mut ft = FrameTable::new();
        let t = std::time::Instant::now();
        let f = ft.pin(S0, UserVa(0x4000_0000), 262144).unwrap();
        ft.pin(S0, UserVa(0x4000_0000), 262144).unwrap();
        ft.unpin(f, 262144);
        assert!(t.elapsed() < std::time::Duration::from_millis(50));
        assert_eq!(
            (ft.run_count(), ft.total_pins(), ft.pinned_frames()),
            (1, 262144, 262144)
        );
    }

    #[test]
    fn pin_count_overflow_is_refused_without_change() {
        let mut ft = FrameTable::new();
        ft.pin(S0, UserVa(0x2000), 1).unwrap();
        if let Some(r) = ft.runs.values_mut().next() {
            r.count = u32::MAX;
        }
        assert_eq!(ft.pin(S0, UserVa(0x1000), 3), Err(FrameError::TooManyPins));
        assert_eq!(ft.pin_count(S0, UserVa(0x1000)), 0);
        assert_eq!(ft.run_count(), 1);
    }

    /// Check the run invariants and compare the table with a per-page model.
    fn check_against_model(ft: &FrameTable, model: &HashMap<(u32, u64), u32>) {
        let mut prev: Option<(u64, PinRun)> = None;
        for (&k, &r) in &ft.runs {
            assert!(r.len >= 1 && r.count >= 1);
            if let Some((pk, pr)) = prev {
                assert!(pk + pr.len <= k, "runs overlap");
                assert!(
                    pk + pr.len < k || pr.count != r.count,
                    "adjacent equal runs not merged"
                );
            }
            prev = Some((k, r));
        }
        let total: u64 = model.values().map(|&c| u64::from(c)).sum();
        assert_eq!(ft.total_pins(), total);
        assert_eq!(ft.pinned_frames(), model.len() as u64);
        for space in 0..3u32 {
            for page in 0..80u64 {
                let va = UserVa(page * PAGE_SIZE);
                let want = model.get(&(space, page)).copied().unwrap_or(0);
                assert_eq!(ft.pin_count(SpaceId(space), va), want);
                let pfn = FrameTable::frame_of(SpaceId(space), va).unwrap();
                assert_eq!(ft.resolve(pfn), (want > 0).then_some((SpaceId(space), va)));
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn frame_table_matches_a_per_page_model(
            ops in proptest::collection::vec((0u32..3, 0u64..64, 1u64..16, 0u8..3), 1..60)
        ) {
            let mut ft = FrameTable::new();
            let mut model: HashMap<(u32, u64), u32> = HashMap::new();
            let mut held: Vec<(Pfn, u32, u64, u64)> = Vec::new();
            for (space, page, n, op) in ops {
                if op < 2 || held.is_empty() {
                    let pfn = ft.pin(SpaceId(space), UserVa(page * PAGE_SIZE), n).unwrap();
                    for p in page..page + n {
                        *model.entry((space, p)).or_insert(0) += 1;
                    }
                    held.push((pfn, space, page, n));
                } else {
                    let (pfn, space, page, n) = held.swap_remove((page as usize) % held.len());
                    ft.unpin(pfn, n);
                    for p in page..page + n {
                        let c = model.get_mut(&(space, p)).unwrap();
                        *c -= 1;
                        if *c == 0 {
                            model.remove(&(space, p));
                        }
                    }
                }
                check_against_model(&ft, &model);
            }
        }
    }

    /// A per-page model of [`SimMemory`]: `None` unmapped, else (writable, contents).
    type SimModel = Vec<Option<(bool, Vec<u8>)>>;

    fn model_check(model: &SimModel, va: u64, len: u64, write: bool) -> Result<(), MemFault> {
        if len == 0 {
            return Ok(());
        }
        for page in va / PAGE_SIZE..=(va + len - 1) / PAGE_SIZE {
            let at = UserVa((page * PAGE_SIZE).max(va));
            match model.get(page as usize).and_then(Option::as_ref) {
                None => return Err(MemFault::Unmapped(at)),
                Some((false, _)) if write => return Err(MemFault::ReadOnly(at)),
                Some(_) => {}
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn sim_memory_matches_a_per_page_model(
            ops in proptest::collection::vec((0u8..4, 0u64..16 * PAGE_SIZE, 0u64..3 * PAGE_SIZE, proptest::bool::ANY), 1..40)
        ) {
            const PAGES: usize = 20;
            let m = SimMemory::new();
            let mut model: SimModel = vec![None; PAGES];
            for (op, addr, len, flag) in ops {
                let (first, npages) = ((addr / PAGE_SIZE) as usize, (len / PAGE_SIZE) as usize + 1);
                match op {
                    0 => {
                        m.map(UserVa(first as u64 * PAGE_SIZE), npages as u64 * PAGE_SIZE, flag);
                        for slot in &mut model[first..first + npages] {
                            *slot = Some((flag, vec![0; PAGE_SIZE as usize]));
                        }
                    }
                    1 => {
                        m.unmap(UserVa(first as u64 * PAGE_SIZE), npages as u64 * PAGE_SIZE);
                        for slot in &mut model[first..first + npages] {
                            *slot = None;
                        }
                    }
                    2 => {
                        let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (addr as u8) | 1).collect();
                        let want = model_check(&model, addr, len, true);
                        proptest::prop_assert_eq!(m.write(UserVa(addr), &data), want);
                        if want.is_ok() {
                            for (i, b) in data.iter().enumerate() {
                                let a = addr + i as u64;
                                if let Some((_, page)) = model[(a / PAGE_SIZE) as usize].as_mut() {
                                    page[(a % PAGE_SIZE) as usize] = *b;
                                }
                            }
                        }
                    }
                    _ => {
                        let mut buf = vec![0u8; len as usize];
                        let want = model_check(&model, addr, len, false);
                        proptest::prop_assert_eq!(m.read(UserVa(addr), &mut buf), want);
                        if want.is_ok() {
                            for (i, b) in buf.iter().enumerate() {
                                let a = addr + i as u64;
                                let page = model[(a / PAGE_SIZE) as usize].as_ref().map(|(_, d)| d[(a % PAGE_SIZE) as usize]);
                                proptest::prop_assert_eq!(Some(*b), page);
                            }
                        }
                    }
                }
                let mapped = model.iter().filter(|p| p.is_some()).count() as u64 * PAGE_SIZE;
                proptest::prop_assert_eq!(m.mapped_bytes(), mapped);
                let inner = m.lock();
                let mut prev: Option<(u64, SimRegion)> = None;
                for (&k, &r) in &inner.regions {
                    proptest::prop_assert!(r.last >= k);
                    if let Some((_, pr)) = prev {
                        proptest::prop_assert!(pr.last < k, "regions overlap");
                        proptest::prop_assert!(pr.last + 1 < k || pr.writable != r.writable, "not merged");
                    }
                    prev = Some((k, r));
                }
                proptest::prop_assert!(inner.data.keys().all(|&p| model.get(p as usize).is_some_and(Option::is_some)));
            }
        }
    }

    fn memory_with_pinned(va: u64, pages: u64) -> (Memory, Arc<SimMemory>, Pfn) {
        let sim = sim_with(va, pages * PAGE_SIZE, true);
        let mut mem = Memory::default();
        let id = mem.add_space(sim.clone());
        let pfn = mem.frames.pin(id, UserVa(va), pages).unwrap();
        (mem, sim, pfn)
    }

    #[test]
    fn phys_access_reaches_the_owning_space_across_frames() {
        let (mem, sim, pfn) = memory_with_pinned(0x20_0000, 4);
        let data: Vec<u8> = (0..10000u32).map(|i| (i * 7) as u8).collect();
        mem.write_phys(PhysAddr(pfn.addr().0 + 100), &data).unwrap();
        let mut via_va = vec![0u8; 10000];
        sim.read(UserVa(0x20_0000 + 100), &mut via_va).unwrap();
        assert_eq!(via_va, data);
        let mut back = vec![0u8; 10000];
        mem.read_phys(PhysAddr(pfn.addr().0 + 100), &mut back)
            .unwrap();
        assert_eq!(back, data);
        assert_eq!(mem.read_phys(PhysAddr(0), &mut []), Ok(()));
    }

    #[test]
    fn phys_access_past_pinned_frames_fails_at_first_unpinned_address() {
        let (mem, _sim, pfn) = memory_with_pinned(0x20_0000, 2);
        let mut buf = vec![0u8; 3 * PAGE_SIZE as usize];
        assert_eq!(
            mem.read_phys(pfn.addr(), &mut buf),
            Err(PhysAddr(pfn.addr().0 + 2 * PAGE_SIZE))
        );
        assert_eq!(
            mem.write_phys(PhysAddr(u64::MAX - 1), &[1, 2, 3]),
            Err(PhysAddr(u64::MAX - 1))
        );
    }

    #[test]
    fn phys_access_to_memory_that_vanished_faults_at_its_address() {
        let (mem, sim, pfn) = memory_with_pinned(0x20_0000, 2);
        sim.unmap(UserVa(0x20_1000), PAGE_SIZE);
        let mut buf = vec![0u8; 2 * PAGE_SIZE as usize];
        assert_eq!(
            mem.read_phys(pfn.addr(), &mut buf),
            Err(PhysAddr(pfn.addr().0 + PAGE_SIZE))
        );
    }

    #[test]
    fn phys_access_to_unregistered_space_fails() {
        let mut mem = Memory::default();
        let pfn = mem.frames.pin(SpaceId(9), UserVa(0), 1).unwrap();
        assert_eq!(mem.read_phys(pfn.addr(), &mut [0u8; 4]), Err(pfn.addr()));
    }
}
