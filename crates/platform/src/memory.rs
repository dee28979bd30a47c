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
//! Ranges are `(va, len)` pairs; the inclusive-last convention of [`crate::addr`] applies inside.

use crate::addr::{PhysAddr, UserVa, PAGE_SHIFT, PAGE_SIZE};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// Check that every page of `[va, va + len)` is present (and writable if `write`), as
    /// pinning requires. `va` and `len` are page-aligned.
    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault>;
    /// The size of the page backing `va` (4 KiB, or a huge page size when backed by one).
    fn page_size_at(&self, _va: UserVa) -> u64 {
        PAGE_SIZE
    }
}

/// A simulated address space: sparse 4 KiB pages with their own protection, for tests, the demo
/// and VMMs that keep guest memory in uiommu.
#[derive(Debug, Default)]
pub struct SimMemory {
    inner: Mutex<HashMap<u64, SimPage>>,
}

#[derive(Debug)]
struct SimPage {
    data: Box<[u8]>,
    writable: bool,
}

impl SimMemory {
    /// An empty address space.
    pub fn new() -> Arc<SimMemory> {
        todo!("helper: memory.rs")
    }
    /// Map zeroed pages over `[va, va + len)` (page-aligned), `writable` or read-only, replacing
    /// anything there. Like `mmap(MAP_FIXED)`.
    pub fn map(&self, _va: UserVa, _len: u64, _writable: bool) {
        todo!("helper: memory.rs")
    }
    /// Remove the pages of `[va, va + len)`. Like `munmap`.
    pub fn unmap(&self, _va: UserVa, _len: u64) {
        todo!("helper: memory.rs")
    }
}

/// A page frame number of the emulated machine.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The physical address of the frame's first byte.
    pub fn addr(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }
}

/// The frame table: which (space, page) each pinned frame holds, and how often it is pinned.
#[derive(Debug, Default)]
pub struct FrameTable {
    _todo: (),
}

impl FrameTable {
    /// An empty table.
    pub fn new() -> FrameTable {
        todo!("helper: memory.rs")
    }
    /// The frame that holds `page` (page-aligned) of `space`, pinned or not.
    pub fn frame_of(_space: SpaceId, _page: UserVa) -> Pfn {
        todo!("helper: memory.rs")
    }
    /// Pin `npages` pages starting at `va` (page-aligned) of `space`: each page's pin count goes
    /// up by one and its frame exists from now on. Returns the first frame; the rest follow
    /// contiguously. The caller has probed the memory.
    pub fn pin(&mut self, _space: SpaceId, _va: UserVa, _npages: u64) -> Pfn {
        todo!("helper: memory.rs")
    }
    /// Drop one pin from each of `npages` frames starting at `first`. A frame whose count reaches
    /// zero stops resolving. Unpinning a frame that is not pinned is a bug in the caller; it is
    /// ignored (and debug-asserted).
    pub fn unpin(&mut self, _first: Pfn, _npages: u64) {
        todo!("helper: memory.rs")
    }
    /// The (space, page) a pinned frame holds; `None` when the frame is not pinned.
    pub fn resolve(&self, _pfn: Pfn) -> Option<(SpaceId, UserVa)> {
        todo!("helper: memory.rs")
    }
    /// The pin count of `page` of `space` (0 when not pinned).
    pub fn pin_count(&self, _space: SpaceId, _page: UserVa) -> u32 {
        todo!("helper: memory.rs")
    }
    /// Total pins held over all frames (a page pinned twice counts twice).
    pub fn total_pins(&self) -> u64 {
        todo!("helper: memory.rs")
    }
    /// Number of distinct frames pinned.
    pub fn pinned_frames(&self) -> u64 {
        todo!("helper: memory.rs")
    }
}

/// The machine's memory: registered address spaces plus the frame table.
#[derive(Default)]
pub struct Memory {
    spaces: HashMap<SpaceId, Arc<dyn UserMemory>>,
    next_space: u32,
    /// Pinned frames.
    pub frames: FrameTable,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("spaces", &self.spaces.len())
            .field("frames", &self.frames)
            .finish()
    }
}

impl Memory {
    /// Register an address space; returns its id.
    pub fn add_space(&mut self, mem: Arc<dyn UserMemory>) -> SpaceId {
        let id = SpaceId(self.next_space);
        self.next_space += 1;
        self.spaces.insert(id, mem);
        id
    }
    /// The address space registered as `id`.
    pub fn space(&self, id: SpaceId) -> Option<&Arc<dyn UserMemory>> {
        self.spaces.get(&id)
    }
    /// Read `buf.len()` bytes at physical address `pa` (within pinned frames) into `buf`.
    /// Err with the first physical address that does not resolve or faults.
    pub fn read_phys(&self, _pa: PhysAddr, _buf: &mut [u8]) -> Result<(), PhysAddr> {
        todo!("helper: memory.rs")
    }
    /// Write `data` at physical address `pa` (within pinned frames).
    pub fn write_phys(&self, _pa: PhysAddr, _data: &[u8]) -> Result<(), PhysAddr> {
        todo!("helper: memory.rs")
    }
}
