//! The IOVA space of an IOAS: the kernel's `io_pagetable` (drivers/iommu/iommufd/io_pagetable.c,
//! with the access paths of device.c and the ioctl semantics of ioas.c).
//!
//! An [`IoPagetable`] holds *areas* (IOVA ranges backed by a slice of a [`Pages`] object),
//! *reserved* ranges (with an owner: a domain's aperture edges, a device's reserved regions, a
//! test), *allowed* ranges (where the allocator may place IOVAs), the paging *domains* every area
//! is mapped into, and the pins of *accesses* (emulated devices that read memory through the IOAS
//! without an IOMMU).
//!
//! Ranges are inclusive (`start..=last`) everywhere, as in the kernel; `(iova, len)` inputs are
//! turned into inclusive ranges with checked arithmetic (EINVAL for zero length, EOVERFLOW for a
//! wrap).
//!
//! Invariants:
//! - Areas never overlap each other or a reserved range, and every area's start, length and page
//!   offset are multiples of `iova_alignment`.
//! - Allowed and reserved ranges never overlap.
//! - The free-IOVA index (`free`, an [`iova_alloc::HoleIndex`]) holds exactly the maximal ranges
//!   of `0..=u64::MAX` covered by neither an area nor a reserved range: every change to the areas
//!   or the reservations updates it, so automatic IOVA allocation is a first-fit search of the
//!   index in O(log n) instead of a scan from the bottom of the IOVA space (allowed ranges are
//!   applied at search time and do not touch the index).
//! - While the IOAS has at least one domain, every area holds one user on each page it covers
//!   (so those pages are pinned) and is mapped into every domain; with no domain, areas pin
//!   nothing (pinning is lazy). Access pins hold one user per pin on their pages.
//! - An area with access pins (`num_accesses > 0`) is not unmapped or split.
//! - Every operation validates fully before it changes anything, or undoes its partial work, so
//!   a failure leaves the IOAS, the domains, the pins and the charges as they were; teardown
//!   (`remove_domain`, `unmap_all`, `access_unpin`) never fails.
//!
//! [`iova_alloc::HoleIndex`]: crate::iova_alloc::HoleIndex
//!
//! Storage: areas live in an arena of 72-byte slots (`AreaSlab`), indexed by an ordered map
//! from start IOVA to slot; an area made by `IOMMU_IOAS_MAP` keeps its pages object inside its
//! slot, and only a copy or a cut moves it to a shared handle (`PagesRef`). Mapping and
//! unmapping an area (with no temporary lists) allocates nothing once the arena and the index
//! have room, and changes the free-IOVA index in place.
//!
//! An `IoPagetable` must be emptied (`unmap_all`, `remove_domain` for each domain) before it is
//! dropped: dropping it with pinned pages leaks their pins and charges.

use crate::error::{Error, Result};
use crate::iova_alloc::{alloc_alignment, HoleIndex, RangeSet};
use crate::pages::{lock, AccountMode, Accounting, Pages, PagesRef, PinEnv};
use std::collections::{BTreeMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::MutexGuard;
use uiommu_platform::hw::{DomainId, HwError, Iommu};
use uiommu_platform::memory::{Pfn, SpaceId};
use uiommu_platform::pagetable::{PageTableError, Prot};
use uiommu_platform::topology::DeviceId;
use uiommu_platform::{Iova, PhysAddr, Platform, Range, UserVa, PAGE_SIZE};

/// What the IOAS operations need from the engine: the machine (IOMMU, memory) and the
/// pinned-memory accounting.
pub struct PtEnv<'a> {
    /// The emulated machine.
    pub platform: &'a mut Platform,
    /// Engine-wide pinned-memory accounting.
    pub acct: &'a mut Accounting,
}

impl PtEnv<'_> {
    fn pin_env(&mut self) -> PinEnv<'_> {
        PinEnv {
            memory: &mut self.platform.memory,
            acct: self.acct,
        }
    }
}

/// Who put a reserved range into the IOAS; [`IoPagetable::unreserve`] removes all of an owner's.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReserveOwner {
    /// The IOVA outside a domain's aperture.
    Domain(DomainId),
    /// A device's reserved regions (MSI windows, RMRRs).
    Device(DeviceId),
    /// Anything else (the selftest's `IOMMU_TEST_OP_ADD_RESERVED`, ...).
    Other(u32),
}

/// Identifies an access (an in-engine user of IOAS memory, the kernel's `iommufd_access`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccessId(pub u32);

/// The buffer of [`IoPagetable::access_rw`]: read memory into it, or write it to memory.
#[derive(Debug)]
pub enum RwBuf<'a> {
    /// Read IOAS memory into the buffer.
    Read(&'a mut [u8]),
    /// Write the buffer to IOAS memory.
    Write(&'a [u8]),
}

/// A run of pages backing an IOVA range, taken from an IOAS for `IOMMU_IOAS_COPY`
/// ([`IoPagetable::get_pages`]) and given to another (or the same) IOAS with
/// [`IoPagetable::map_pages`]. Holds shared references: the pages are shared, not copied.
#[derive(Debug, Default)]
pub struct PagesList {
    elems: Vec<PagesSlice>,
}

#[derive(Debug)]
struct PagesSlice {
    pages: AreaPages,
    start_byte: u64,
    length: u64,
}

impl PagesList {
    /// Total length in bytes (saturating).
    pub fn len(&self) -> u64 {
        self.elems
            .iter()
            .fold(0u64, |a, e| a.saturating_add(e.length))
    }

    /// Whether the list holds nothing.
    pub fn is_empty(&self) -> bool {
        self.elems.is_empty()
    }

    /// Number of slices (one per source area touched).
    pub fn slices(&self) -> usize {
        self.elems.len()
    }
}

/// A description of one area, for the invariant checker and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AreaInfo {
    /// The IOVA range.
    pub iova: Range,
    /// The address space of the memory.
    pub space: SpaceId,
    /// The user address the first IOVA maps.
    pub uva: UserVa,
    /// The rights devices have through it.
    pub prot: Prot,
    /// Pages of the area's range pinned by its pages object (for any reason).
    pub pinned_pages: u64,
    /// Number of access pins on the area.
    pub accesses: u32,
    /// Identity of the area's pages object (equal for areas that share one, as copies do).
    pub pages_id: usize,
    /// Pages pinned by the whole pages object.
    pub pages_pinned: u64,
    /// How the pages object's pins are charged.
    pub account_mode: crate::pages::AccountMode,
}

/// The pages object behind an area: its own (what `IOMMU_IOAS_MAP` makes, kept inside the area:
/// no allocation of its own) or shared with other areas (once `IOMMU_IOAS_COPY` or a cut needs
/// that; it stays shared).
#[derive(Debug)]
enum AreaPages {
    Own(Pages),
    Shared(PagesRef),
}

/// Read access to an area's pages object.
enum PagesRead<'a> {
    Own(&'a Pages),
    Shared(MutexGuard<'a, Pages>),
}

/// Write access to an area's pages object.
enum PagesWrite<'a> {
    Own(&'a mut Pages),
    Shared(MutexGuard<'a, Pages>),
}

impl Deref for PagesRead<'_> {
    type Target = Pages;
    fn deref(&self) -> &Pages {
        match self {
            PagesRead::Own(p) => p,
            PagesRead::Shared(g) => g,
        }
    }
}

impl Deref for PagesWrite<'_> {
    type Target = Pages;
    fn deref(&self) -> &Pages {
        match self {
            PagesWrite::Own(p) => p,
            PagesWrite::Shared(g) => g,
        }
    }
}

impl DerefMut for PagesWrite<'_> {
    fn deref_mut(&mut self) -> &mut Pages {
        match self {
            PagesWrite::Own(p) => p,
            PagesWrite::Shared(g) => g,
        }
    }
}

impl AreaPages {
    fn read(&self) -> PagesRead<'_> {
        match self {
            AreaPages::Own(p) => PagesRead::Own(p),
            AreaPages::Shared(r) => PagesRead::Shared(lock(r)),
        }
    }

    fn write(&mut self) -> PagesWrite<'_> {
        match self {
            AreaPages::Own(p) => PagesWrite::Own(p),
            AreaPages::Shared(r) => PagesWrite::Shared(lock(r)),
        }
    }

    /// A shared handle on the pages object, moving it out of the area first if it was its own
    /// (its identity, [`Pages::id`], does not change).
    fn share(&mut self) -> PagesRef {
        if let AreaPages::Shared(r) = self {
            return r.clone();
        }
        let r = match std::mem::replace(self, AreaPages::Own(Pages::placeholder())) {
            AreaPages::Own(p) => p.into_ref(),
            AreaPages::Shared(r) => r,
        };
        *self = AreaPages::Shared(r.clone());
        r
    }
}

/// One IOVA range mapped to a slice of a pages object. Keyed by its start IOVA.
#[derive(Debug)]
struct Area {
    /// Last IOVA (inclusive).
    last: u64,
    /// The backing memory.
    pages: AreaPages,
    /// Byte offset into `pages` of the area's first IOVA.
    start_byte: u64,
    /// Number of access pins taken on the area.
    num_accesses: u32,
    /// Device rights.
    prot: Prot,
    /// An unmap is waiting for accesses to let go: no new pins or reads.
    prevent_access: bool,
}

impl Area {
    fn page_offset(&self) -> u64 {
        self.start_byte % PAGE_SIZE
    }
    /// Byte offset into the pages of `iova` (inside the area starting at `start`).
    fn start_byte_at(&self, start: u64, iova: u64) -> u64 {
        self.start_byte.saturating_add(iova - start)
    }
    /// Page index of `iova`.
    fn index_at(&self, start: u64, iova: u64) -> u64 {
        self.start_byte_at(start, iova) / PAGE_SIZE
    }
    fn first_index(&self) -> u64 {
        self.start_byte / PAGE_SIZE
    }
    fn last_index(&self, start: u64) -> u64 {
        self.index_at(start, self.last)
    }
}

/// "No slot" in an [`AreaSlab`].
const NO_SLOT: u32 = u32::MAX;

/// Slots an empty [`AreaSlab`] keeps allocated (so that a map/unmap cycle allocates nothing).
const SLAB_KEEP: usize = 64;

/// A slot of an [`AreaSlab`]: an area, or a link of the list of free slots.
#[derive(Debug)]
enum Slot {
    Used(Area),
    Free(u32),
}

/// The areas of an IOAS, in an arena indexed by `u32` (the ordered index `IoPagetable::areas`
/// maps start IOVAs to slots): an area costs its slot (72 bytes) plus a `u64 -> u32` entry of
/// the ordered index, instead of a 40-byte entry and a separately allocated pages object.
/// Freed slots are reused; when the last area goes the arena is emptied, and its memory given
/// back if it had grown past [`SLAB_KEEP`] slots.
#[derive(Debug, Default)]
struct AreaSlab {
    slots: Vec<Slot>,
    /// First free slot, or [`NO_SLOT`].
    free: u32,
    used: usize,
}

impl AreaSlab {
    fn new() -> Self {
        AreaSlab {
            slots: Vec::new(),
            free: NO_SLOT,
            used: 0,
        }
    }

    /// Whether `n` more areas fit (at most `u32::MAX` slots, as [`NO_SLOT`] is reserved).
    fn has_room(&self, n: usize) -> bool {
        self.used.saturating_add(n) < NO_SLOT as usize
    }

    /// Store `a` (the caller checked [`AreaSlab::has_room`]).
    fn insert(&mut self, a: Area) -> u32 {
        self.used += 1;
        if self.free != NO_SLOT {
            let i = self.free;
            let slot = std::mem::replace(&mut self.slots[i as usize], Slot::Used(a));
            self.free = match slot {
                Slot::Free(next) => next,
                Slot::Used(_) => unreachable!("the free list links only free slots"),
            };
            return i;
        }
        self.slots.push(Slot::Used(a));
        // `has_room` keeps the length below u32::MAX.
        (self.slots.len() - 1) as u32
    }

    /// Take the area out of slot `i`.
    fn remove(&mut self, i: u32) -> Area {
        let slot = std::mem::replace(&mut self.slots[i as usize], Slot::Free(self.free));
        let Slot::Used(a) = slot else {
            unreachable!("the area index names only used slots")
        };
        self.free = i;
        self.used -= 1;
        if self.used == 0 {
            if self.slots.capacity() > SLAB_KEEP {
                *self = AreaSlab::new();
            } else {
                self.slots.clear();
                self.free = NO_SLOT;
            }
        }
        a
    }

    fn get(&self, i: u32) -> &Area {
        match &self.slots[i as usize] {
            Slot::Used(a) => a,
            Slot::Free(_) => unreachable!("the area index names only used slots"),
        }
    }

    fn get_mut(&mut self, i: u32) -> &mut Area {
        match &mut self.slots[i as usize] {
            Slot::Used(a) => a,
            Slot::Free(_) => unreachable!("the area index names only used slots"),
        }
    }
}

/// A reserved range and its owner.
#[derive(Clone, Debug)]
struct Reservation {
    range: Range,
    owner: ReserveOwner,
}

/// A piece of a contiguous run of areas: `start..=last` inside the area keyed `area`.
#[derive(Copy, Clone, Debug)]
struct Piece {
    area: u64,
    start: u64,
    last: u64,
}

/// The IOVA space of an IOAS. See the module documentation for its invariants.
#[derive(Debug)]
pub struct IoPagetable {
    /// Start IOVA of each area -> its slot in `slab`.
    areas: BTreeMap<u64, u32>,
    slab: AreaSlab,
    reserved: Vec<Reservation>,
    reserved_union: RangeSet,
    allowed: RangeSet,
    /// The holes between areas and reserved ranges (see the module invariants).
    free: HoleIndex,
    domains: Vec<DomainId>,
    /// Smallest page size of each domain, parallel to `domains`.
    domain_align: Vec<u64>,
    /// Attached accesses and the IOVA alignment each needs.
    accesses: BTreeMap<AccessId, u64>,
    /// Access pins: (access, first IOVA, last IOVA) → number of identical pins.
    pins: BTreeMap<(AccessId, u64, u64), u32>,
    iova_alignment: u64,
    disable_large_pages: bool,
}

impl Default for IoPagetable {
    fn default() -> Self {
        Self::new()
    }
}

/// `(iova, len)` as an inclusive last: EINVAL for zero length, EOVERFLOW on wrap.
/// How a pass of [`IoPagetable::unmap_walk`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapStop {
    /// The range is done.
    Done,
    /// An area sticks out of the range (ENOENT).
    Cut,
    /// An access holds pins in the area at `first` of `len` bytes.
    Busy {
        /// The area's first IOVA.
        first: u64,
        /// Its length.
        len: u64,
    },
}

/// What a pass of [`IoPagetable::unmap_walk`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapPass {
    /// The bytes of the areas it removed.
    pub bytes: u64,
    /// Where it stopped.
    pub stop: UnmapStop,
    /// It met an area that does not start where the walk stood (after a gap, or the first
    /// area of a range that starts before it): the kernel starts its count of notification
    /// rounds anew then.
    pub new_area: bool,
}

impl UnmapPass {
    /// The pass as a result: its bytes when done, else the error of its stop.
    pub fn into_result(self, start: u64, last: u64) -> Result<u64> {
        match self.stop {
            UnmapStop::Done => Ok(self.bytes),
            UnmapStop::Cut => Err(Error::NotMapped(Range { start, last })),
            UnmapStop::Busy { .. } => Err(Error::Busy("accesses hold pins in the range")),
        }
    }
}

pub(crate) fn last_of(iova: u64, len: u64) -> Result<u64> {
    if len == 0 {
        return Err(Error::Invalid("zero length"));
    }
    iova.checked_add(len - 1).ok_or(Error::Overflow)
}

/// The engine error for a refused hardware operation.
fn hw_error(e: HwError) -> Error {
    match e {
        HwError::NoDomain(_) => Error::NotFound("no such domain"),
        HwError::NotPaging(_) => Error::Invalid("not a paging domain"),
        HwError::InUse(_) => Error::Busy("domain in use"),
        HwError::PageTable(PageTableError::AlreadyMapped { .. }) => {
            Error::Exists("IOVA already mapped in the domain")
        }
        HwError::PageTable(PageTableError::OutOfAperture { .. }) => {
            Error::AddressInUse("IOVA outside the domain aperture")
        }
        HwError::PageTable(_) => Error::Invalid("the page table refused the mapping"),
        HwError::NoMemory => Error::NoMemory("page table"),
    }
}

/// Map `length` bytes at `iova` backed by `pages` from byte `start_byte` into `dom`, in runs of
/// physically contiguous frames (page by page when `small`). On error nothing stays mapped.
#[allow(clippy::too_many_arguments)]
fn map_into_domain(
    iommu: &mut Iommu,
    dom: DomainId,
    iova: u64,
    pages: &Pages,
    start_byte: u64,
    length: u64,
    prot: Prot,
    small: bool,
) -> Result<()> {
    let end = iova + (length - 1);
    let first = start_byte / PAGE_SIZE;
    let last_index = (start_byte + (length - 1)) / PAGE_SIZE;
    let mut page_off = start_byte % PAGE_SIZE;
    let mut cur = iova;
    let mut idx = first;
    let mut result = Ok(());
    'runs: while idx <= last_index {
        let run_first = idx;
        let Some(Pfn(f0)) = pages.frame(idx) else {
            result = Err(Error::Fault(pages.page_va(idx).0));
            break 'runs;
        };
        idx += 1;
        while idx <= last_index && pages.frame(idx) == Some(Pfn(f0.wrapping_add(idx - run_first))) {
            idx += 1;
        }
        let run_bytes = (idx - run_first) * PAGE_SIZE - page_off;
        let run_last = end.min(cur.saturating_add(run_bytes - 1));
        let mut pa = Pfn(f0).addr().0 + page_off;
        let mut at = cur;
        loop {
            let chunk_last = if small {
                run_last.min(at | (PAGE_SIZE - 1))
            } else {
                run_last
            };
            let len = chunk_last - at + 1;
            if let Err(e) = iommu.map(dom, Iova(at), PhysAddr(pa), len, prot) {
                result = Err(hw_error(e));
                break 'runs;
            }
            if chunk_last == run_last {
                break;
            }
            at = chunk_last + 1;
            pa += len;
        }
        if run_last == end {
            cur = end;
            break;
        }
        cur = run_last + 1;
        page_off = 0;
    }
    if let Err(e) = result {
        if cur > iova {
            let _ = iommu.unmap(dom, Iova(iova), cur - iova);
        }
        return Err(e);
    }
    Ok(())
}

impl IoPagetable {
    /// An empty IOVA space: no areas, no reservations, no domains, alignment 1 (the kernel's
    /// `iopt_init_table`).
    pub fn new() -> Self {
        IoPagetable {
            areas: BTreeMap::new(),
            slab: AreaSlab::new(),
            reserved: Vec::new(),
            reserved_union: RangeSet::new(),
            allowed: RangeSet::new(),
            free: HoleIndex::new(),
            domains: Vec::new(),
            domain_align: Vec::new(),
            accesses: BTreeMap::new(),
            pins: BTreeMap::new(),
            iova_alignment: 1,
            disable_large_pages: false,
        }
    }

    // ----- lookups -------------------------------------------------------------------------

    /// The area starting at `start`.
    fn area(&self, start: u64) -> Option<&Area> {
        self.areas.get(&start).map(|&i| self.slab.get(i))
    }

    /// The area starting at `start`, mutably.
    fn area_mut(&mut self, start: u64) -> Option<&mut Area> {
        let i = *self.areas.get(&start)?;
        Some(self.slab.get_mut(i))
    }

    /// Every area in IOVA order, as (start, area).
    fn iter_areas(&self) -> impl Iterator<Item = (u64, &Area)> + '_ {
        self.areas.iter().map(|(&s, &i)| (s, self.slab.get(i)))
    }

    /// The area with the largest start `<= iova`, as (start, area).
    fn area_from_below(&self, iova: u64) -> Option<(u64, &Area)> {
        let (&s, &i) = self.areas.range(..=iova).next_back()?;
        Some((s, self.slab.get(i)))
    }

    /// The area containing `iova`, as (start, area).
    fn area_at(&self, iova: u64) -> Option<(u64, &Area)> {
        self.area_from_below(iova).filter(|(_, a)| a.last >= iova)
    }

    /// Starts of the areas overlapping `start..=last`, in order.
    fn areas_overlapping(&self, start: u64, last: u64) -> impl Iterator<Item = (u64, &Area)> + '_ {
        let begin = self.area_at(start).map_or(start, |(s, _)| s);
        self.areas
            .range(begin..=last)
            .map(|(&s, &i)| (s, self.slab.get(i)))
    }

    /// Whether any area overlaps `start..=last`: areas are disjoint, so one does exactly when
    /// the last area starting at or below `last` reaches `start` (one search).
    fn any_area_in(&self, start: u64, last: u64) -> bool {
        self.area_from_below(last)
            .is_some_and(|(_, a)| a.last >= start)
    }

    /// The used range (area or reserved) with the smallest start among those ending at or after
    /// `pos`.
    #[cfg(test)]
    fn next_used(&self, pos: u64) -> Option<Range> {
        let area = self
            .area_at(pos)
            .or_else(|| {
                self.areas
                    .range(pos..)
                    .next()
                    .map(|(&s, &i)| (s, self.slab.get(i)))
            })
            .map(|(s, a)| Range {
                start: s,
                last: a.last,
            });
        match (area, self.reserved_union.next_from(pos)) {
            (Some(a), Some(r)) => Some(if a.start <= r.start { a } else { r }),
            (a, r) => a.or(r),
        }
    }

    /// The kernel's `iopt_area_contig_*` walk: the pieces of areas that cover `iova..=last`
    /// without a gap from `iova` on, and whether they reach `last`.
    fn contig(&self, iova: u64, last: u64) -> (Vec<Piece>, bool) {
        let mut out = Vec::new();
        let mut cur = iova;
        while let Some((s, a)) = self.area_at(cur) {
            out.push(Piece {
                area: s,
                start: cur,
                last: a.last.min(last),
            });
            if a.last >= last {
                return (out, true);
            }
            cur = a.last + 1;
        }
        (out, false)
    }

    /// The scanning reference for [`IoPagetable::alloc_iova`] (the allocator before the
    /// free-IOVA index): the tests check that both always agree.
    #[cfg(test)]
    fn alloc_iova_reference(&self, uptr: u64, length: u64) -> Result<u64> {
        let align = alloc_alignment(uptr, length, self.iova_alignment)?;
        crate::iova_alloc::find_iova(
            &self.allowed,
            |p| self.next_used(p),
            length,
            align,
            uptr % PAGE_SIZE,
        )
        .ok_or(Error::NoSpace("no free IOVA range fits"))
    }

    /// Whether the free-IOVA index holds exactly the holes between areas and reservations.
    #[cfg(test)]
    fn free_index_is_exact(&self) -> bool {
        let want = crate::iova_alloc::holes_in(
            Range {
                start: 0,
                last: u64::MAX,
            },
            |p| self.next_used(p),
        );
        self.free.holes() == want
    }

    // ----- map -------------------------------------------------------------------------------

    /// The kernel's `iopt_check_iova` for a fixed IOVA: EINVAL when misaligned, EOVERFLOW on
    /// wrap, EINVAL when a reserved range intersects, EEXIST when an area does. Allowed ranges
    /// only steer the allocator; they do not restrict fixed IOVAs.
    fn check_iova(&self, iova: u64, length: u64) -> Result<u64> {
        if iova & (self.iova_alignment - 1) != 0 {
            return Err(Error::Invalid("IOVA is not aligned to the IOAS alignment"));
        }
        let last = last_of(iova, length)?;
        // The common case: the free-IOVA index (exact, see the module invariants) has the
        // whole range in one hole, so neither a reservation nor an area meets it.
        if self.free.hole_at(iova).is_some_and(|h| h.last >= last) {
            return Ok(last);
        }
        if self.reserved_union.overlaps(&Range { start: iova, last }) {
            return Err(Error::Invalid("IOVA range intersects a reserved range"));
        }
        if self.any_area_in(iova, last) {
            return Err(Error::Exists("IOVA range is already mapped"));
        }
        Ok(last)
    }

    /// The kernel's `iopt_alloc_iova`: the lowest free IOVA that keeps the alignment of `uptr`,
    /// found in the free-IOVA index (O(log n); the same answer as the kernel's scan).
    fn alloc_iova(&self, uptr: u64, length: u64) -> Result<u64> {
        let align = alloc_alignment(uptr, length, self.iova_alignment)?;
        let page_offset = uptr % PAGE_SIZE;
        let iova = self
            .free
            .find(&self.allowed, length, align, page_offset)
            .ok_or(Error::NoSpace("no free IOVA range fits"))?;
        // The kernel double-checks the choice under CONFIG_IOMMUFD_TEST.
        self.check_iova(iova, length)
            .map_err(|_| Error::Invalid("allocated IOVA failed its check"))?;
        Ok(iova)
    }

    /// `IOMMU_IOAS_MAP`: map `len` bytes of `space` at `uva` at the fixed `iova`, or at an
    /// allocated one when `iova` is `None`; returns the IOVA. Pages are pinned now only if the
    /// IOAS has domains. Errors in the kernel's order (`iopt_map_user_pages`): EINVAL zero or
    /// huge length, EOVERFLOW user range wraps; EINVAL length misaligned; then the fixed-IOVA
    /// checks (EINVAL misaligned, EOVERFLOW, EINVAL reserved, EEXIST mapped) or the allocator
    /// (EOVERFLOW, EINVAL, ENOSPC); EINVAL user page offset misaligned; then pinning (EFAULT,
    /// ENOMEM) and domain mapping. On error nothing changed.
    #[allow(clippy::too_many_arguments)]
    pub fn map_user(
        &mut self,
        env: &mut PtEnv<'_>,
        space: SpaceId,
        uva: UserVa,
        len: u64,
        iova: Option<Iova>,
        prot: Prot,
        mode: AccountMode,
    ) -> Result<Iova> {
        let (pages, start_byte) = Pages::new(space, uva, len, prot.write, mode)?;
        let one = [PagesSlice {
            pages: AreaPages::Own(pages),
            start_byte,
            length: len,
        }];
        self.map_slices(env, one, iova, prot)
    }

    /// `IOMMU_IOAS_COPY` source side (the kernel's `iopt_get_pages`): the pages behind
    /// `iova..iova+len`, which areas must cover without a gap. EINVAL zero length, EOVERFLOW,
    /// ENOENT not fully covered. The areas' pages objects become shared (this changes no
    /// mapping, pin or charge, nor their identity).
    pub fn get_pages(&mut self, iova: Iova, len: u64) -> Result<PagesList> {
        let last = last_of(iova.0, len)?;
        let (pieces, done) = self.contig(iova.0, last);
        if !done {
            return Err(Error::NotMapped(Range {
                start: iova.0,
                last,
            }));
        }
        let mut elems = Vec::with_capacity(pieces.len());
        for p in &pieces {
            let Some(a) = self.area_mut(p.area) else {
                continue;
            };
            elems.push(PagesSlice {
                pages: AreaPages::Shared(a.pages.share()),
                start_byte: a.start_byte_at(p.area, p.start),
                length: p.last - p.start + 1,
            });
        }
        Ok(PagesList { elems })
    }

    /// `IOMMU_IOAS_COPY` destination side (the kernel's `iopt_map_pages`): map the pages of
    /// `list` back to back at `iova` (or an allocated IOVA), one area per slice, sharing the
    /// pages (their pins are not doubled). Errors as [`IoPagetable::map_user`], plus EPERM when
    /// `prot` asks for write on pages that were mapped read-only.
    pub fn map_pages(
        &mut self,
        env: &mut PtEnv<'_>,
        list: PagesList,
        iova: Option<Iova>,
        prot: Prot,
    ) -> Result<Iova> {
        self.map_slices(env, list.elems, iova, prot)
    }

    /// [`IoPagetable::map_pages`] of any list of slices: a `Vec` for copies, an array of one
    /// for [`IoPagetable::map_user`] (which then allocates nothing but the area's slot).
    fn map_slices<L>(
        &mut self,
        env: &mut PtEnv<'_>,
        mut list: L,
        iova: Option<Iova>,
        prot: Prot,
    ) -> Result<Iova>
    where
        L: AsMut<[PagesSlice]> + IntoIterator<Item = PagesSlice>,
    {
        let elems = list.as_mut();
        let mut length = 0u64;
        for e in elems.iter() {
            length = length.checked_add(e.length).ok_or(Error::Overflow)?;
        }
        if length == 0 || length & (self.iova_alignment - 1) != 0 {
            return Err(Error::Invalid(
                "length is zero or not aligned to the IOAS alignment",
            ));
        }
        // An area a slice, allocated before the IOVA is chosen (iopt_alloc_area_pages).
        for _ in elems.iter() {
            crate::error::alloc_site("area")?;
        }
        let dst = match iova {
            None => {
                let first = &elems[0];
                let uptr = first.pages.read().uva().0.wrapping_add(first.start_byte);
                self.alloc_iova(uptr, length)?
            }
            Some(i) => {
                self.check_iova(i.0, length)?;
                i.0
            }
        };
        // The kernel's iopt_insert_area checks, per slice.
        let mut cur = dst;
        for e in elems.iter() {
            let p = e.pages.read();
            if prot.write && !p.writable() {
                return Err(Error::Permission("write mapping of read-only pages"));
            }
            if (e.start_byte % PAGE_SIZE) & (self.iova_alignment - 1) != 0 {
                return Err(Error::Invalid(
                    "user address is not aligned to the IOAS alignment",
                ));
            }
            last_of(cur, e.length)?;
            let last_byte = last_of(e.start_byte, e.length)?;
            if last_byte / PAGE_SIZE >= p.npages() {
                return Err(Error::Overflow);
            }
            cur = cur.wrapping_add(e.length);
        }
        if !self.slab.has_room(elems.len()) {
            return Err(Error::NoMemory("too many areas in the IOAS"));
        }
        // Fill the domains (the kernel's iopt_fill_domains_pages), undoing everything on error.
        if !self.domains.is_empty() {
            // On error: the slice that failed, how many domains it was mapped into, whether its
            // pages were acquired.
            let mut failed: Option<(usize, usize, bool, Error)> = None;
            let mut at = dst;
            'fill: for (k, e) in elems.iter_mut().enumerate() {
                let mut p = e.pages.write();
                let first = e.start_byte / PAGE_SIZE;
                let last = (e.start_byte + (e.length - 1)) / PAGE_SIZE;
                if let Err(err) = p.acquire(&mut env.pin_env(), first, last) {
                    failed = Some((k, 0, false, err));
                    break 'fill;
                }
                for (d, &dom) in self.domains.iter().enumerate() {
                    let r = map_into_domain(
                        &mut env.platform.iommu,
                        dom,
                        at,
                        &p,
                        e.start_byte,
                        e.length,
                        prot,
                        self.disable_large_pages,
                    );
                    if let Err(err) = r {
                        failed = Some((k, d, true, err));
                        break 'fill;
                    }
                }
                at = at.wrapping_add(e.length);
            }
            if let Some((kf, df, acquired, err)) = failed {
                // Unmap what was mapped, in the order it was, then release what was acquired.
                let mut at = dst;
                for (k, e) in elems.iter().enumerate().take(kf + 1) {
                    let ndom = if k < kf { self.domains.len() } else { df };
                    for &dom in &self.domains[..ndom] {
                        let _ = env.platform.iommu.unmap(dom, Iova(at), e.length);
                    }
                    at = at.wrapping_add(e.length);
                }
                let nacq = if acquired { kf + 1 } else { kf };
                for e in elems.iter_mut().take(nacq) {
                    let first = e.start_byte / PAGE_SIZE;
                    let last = (e.start_byte + (e.length - 1)) / PAGE_SIZE;
                    e.pages.write().release(&mut env.pin_env(), first, last);
                }
                return Err(err);
            }
        }
        let mut start = dst;
        for e in list {
            let area = Area {
                last: start + (e.length - 1),
                pages: e.pages,
                start_byte: e.start_byte,
                num_accesses: 0,
                prot,
                prevent_access: false,
            };
            let last = area.last;
            self.free.occupy(Range { start, last });
            let slot = self.slab.insert(area);
            self.areas.insert(start, slot);
            start = start.wrapping_add(e.length);
        }
        Ok(Iova(dst))
    }

    // ----- unmap -----------------------------------------------------------------------------

    /// `IOMMU_IOAS_UNMAP` (ioas.c) without the access notifications: `iova == 0 && len ==
    /// u64::MAX` unmaps everything (and succeeds on an empty IOAS); otherwise EOVERFLOW for
    /// `iova` or `len` of `u64::MAX`, then [`IoPagetable::unmap_range`], and ENOENT when
    /// nothing was mapped there. (The engine's IOMMU_IOAS_UNMAP is
    /// `ioas::unmap_with_notify`, the same with the notifications.)
    pub fn unmap(&mut self, env: &mut PtEnv<'_>, iova: Iova, len: u64) -> Result<u64> {
        if iova.0 == 0 && len == u64::MAX {
            return self.unmap_all(env);
        }
        if iova.0 == u64::MAX || len == u64::MAX {
            return Err(Error::Overflow);
        }
        let n = self.unmap_range(env, iova, len)?;
        if n == 0 {
            let last = last_of(iova.0, len)?;
            return Err(Error::NotMapped(Range {
                start: iova.0,
                last,
            }));
        }
        Ok(n)
    }

    /// The kernel's `iopt_unmap_iova` (also used by VFIO type1 compatibility) without its
    /// access notifications: [`IoPagetable::unmap_walk`] of `iova..iova+len` (EINVAL zero
    /// length, EOVERFLOW wrap), its stop as an error (`ENOENT` for a cut area, `EBUSY` for
    /// pins: the areas before it stay unmapped). The bytes unmapped (0 when nothing was there).
    pub fn unmap_range(&mut self, env: &mut PtEnv<'_>, iova: Iova, len: u64) -> Result<u64> {
        let last = last_of(iova.0, len)?;
        self.unmap_walk(env, iova.0, last).into_result(iova.0, last)
    }

    /// Unmap every area (the kernel's `iopt_unmap_all`); Ok(0) on an empty IOAS. EBUSY as
    /// [`IoPagetable::unmap_range`] while accesses hold pins.
    pub fn unmap_all(&mut self, env: &mut PtEnv<'_>) -> Result<u64> {
        self.unmap_walk(env, 0, u64::MAX).into_result(0, u64::MAX)
    }

    /// One pass of the kernel's `iopt_unmap_iova_range` over `start..=last`: the areas in
    /// IOVA order from `start`, each removed in turn, until the range is done, an area sticks
    /// out of it ([`UnmapStop::Cut`]: ENOENT) or an access holds pins in one
    /// ([`UnmapStop::Busy`]: that area now refuses new access pins and reads; the caller tells
    /// the accesses and walks again from it). What was removed before a stop stays removed,
    /// as in the kernel.
    pub fn unmap_walk(&mut self, env: &mut PtEnv<'_>, start: u64, last: u64) -> UnmapPass {
        let mut pass = UnmapPass {
            bytes: 0,
            stop: UnmapStop::Done,
            new_area: false,
        };
        if start == 0 && last == u64::MAX && self.slab_all_free_of_accesses() {
            // Everything goes (unmap-all with no pins): no search per area.
            while let Some((s, i)) = self.areas.pop_first() {
                pass.bytes = pass.bytes.saturating_add(self.remove_area(env, s, i));
            }
            return pass;
        }
        let mut at = start;
        loop {
            // The first area that intersects at..=last: one that starts below `at` and reaches
            // it, else the first that starts in the range.
            let below = self
                .areas
                .range(..at)
                .next_back()
                .map(|(&s, &i)| (s, i))
                .filter(|&(_, i)| self.slab.get(i).last >= at);
            let Some((s, i)) =
                below.or_else(|| self.areas.range(at..=last).next().map(|(&s, &i)| (s, i)))
            else {
                return pass;
            };
            let a = self.slab.get_mut(i);
            let a_last = a.last;
            if s < start || a_last > last {
                pass.stop = UnmapStop::Cut;
                return pass;
            }
            pass.new_area |= s != at;
            if a.num_accesses > 0 {
                a.prevent_access = true;
                pass.stop = UnmapStop::Busy {
                    first: s,
                    len: a_last - s + 1,
                };
                return pass;
            }
            self.areas.remove(&s);
            pass.bytes = pass.bytes.saturating_add(self.remove_area(env, s, i));
            if a_last >= last {
                return pass;
            }
            at = a_last + 1;
        }
    }

    /// Whether no area has access pins.
    fn slab_all_free_of_accesses(&self) -> bool {
        self.areas
            .values()
            .all(|&i| self.slab.get(i).num_accesses == 0)
    }

    fn remove_area(&mut self, env: &mut PtEnv<'_>, start: u64, slot: u32) -> u64 {
        let mut a = self.slab.remove(slot);
        self.free.release(Range {
            start,
            last: a.last,
        });
        let len = a.last - start + 1;
        if !self.domains.is_empty() {
            for &dom in &self.domains {
                let _ = env.platform.iommu.unmap(dom, Iova(start), len);
            }
            let (first, last) = (a.first_index(), a.last_index(start));
            a.pages.write().release(&mut env.pin_env(), first, last);
        }
        len
    }

    /// The accesses holding pins that overlap `iova..iova+len` (the caller notifies them to
    /// unpin before retrying an unmap). A zero length gives none; a wrapping one is clipped.
    pub fn accesses_in(&self, iova: Iova, len: u64) -> Vec<AccessId> {
        if len == 0 {
            return Vec::new();
        }
        let r = Range {
            start: iova.0,
            last: iova.0.saturating_add(len - 1),
        };
        let mut out: Vec<AccessId> = Vec::new();
        for &(acc, s, l) in self.pins.keys() {
            if r.overlaps(&Range { start: s, last: l }) && out.last() != Some(&acc) {
                out.push(acc);
            }
        }
        out
    }

    /// VFIO type1 compatibility (the kernel's `iopt_cut_iova`): split the areas containing each
    /// of `iovas` so that the IOVA becomes the last of one area. A cut at an area edge or outside
    /// any area does nothing. EBUSY for an area being unmapped; EINVAL when the cut is not
    /// aligned, the area has access pins, or domains may map it with large pages. Cuts made
    /// before an error stay (they change no mapping).
    pub fn cut_iova(&mut self, env: &mut PtEnv<'_>, iovas: &[Iova]) -> Result<()> {
        for &Iova(iova) in iovas {
            let Some((start, a)) = self.area_at(iova) else {
                continue;
            };
            if iova == start || iova == a.last {
                continue;
            }
            if a.prevent_access {
                return Err(Error::Busy("area is being unmapped"));
            }
            let new_start = iova + 1;
            let mask = self.iova_alignment - 1;
            if new_start & mask != 0 || a.start_byte_at(start, new_start) & mask != 0 {
                return Err(Error::Invalid("cut is not aligned"));
            }
            if a.num_accesses > 0 {
                return Err(Error::Invalid("area has access pins"));
            }
            if !self.domains.is_empty() && !self.disable_large_pages {
                return Err(Error::Invalid("domains may map the area with large pages"));
            }
            if !self.slab.has_room(1) {
                return Err(Error::NoMemory("too many areas in the IOAS"));
            }
            let shared_page = a.index_at(start, iova) == a.index_at(start, new_start);
            let has_domains = !self.domains.is_empty();
            let Some(a) = self.area_mut(start) else {
                continue;
            };
            if shared_page && has_domains {
                // Both halves hold the boundary page; it is already pinned, so this cannot fail.
                let idx = a.index_at(start, iova);
                a.pages.write().acquire(&mut env.pin_env(), idx, idx)?;
            }
            let rhs = Area {
                last: a.last,
                pages: AreaPages::Shared(a.pages.share()),
                start_byte: a.start_byte_at(start, new_start),
                num_accesses: 0,
                prot: a.prot,
                prevent_access: false,
            };
            a.last = iova;
            let slot = self.slab.insert(rhs);
            self.areas.insert(new_start, slot);
        }
        Ok(())
    }

    // ----- domains ---------------------------------------------------------------------------

    /// Check that every area conforms to `align` (the kernel's `iopt_check_iova_alignment`):
    /// EADDRINUSE otherwise.
    fn check_alignment(&self, align: u64) -> Result<()> {
        let mask = align - 1;
        for (s, a) in self.iter_areas() {
            if s & mask != 0 || (a.last - s + 1) & mask != 0 || a.page_offset() & mask != 0 {
                return Err(Error::AddressInUse(
                    "an existing area is not aligned to the new IOVA alignment",
                ));
            }
        }
        Ok(())
    }

    /// The kernel's `iopt_calculate_iova_alignment`.
    fn calculate_alignment(&mut self) -> Result<()> {
        let mut align = if self.disable_large_pages {
            PAGE_SIZE
        } else {
            1
        };
        for &a in self.domain_align.iter().chain(self.accesses.values()) {
            align = align.max(a);
        }
        if align > self.iova_alignment {
            self.check_alignment(align)?;
        }
        self.iova_alignment = align;
        Ok(())
    }

    /// Attach a paging domain (the kernel's `iopt_table_add_domain`): EEXIST when already
    /// attached; EINVAL when not a paging domain or its smallest page is above `PAGE_SIZE`;
    /// EADDRINUSE when an area breaks the new alignment or lies outside the aperture (or an
    /// allowed range does); then pins what the IOAS maps if it had no domain (EFAULT, ENOMEM)
    /// and maps every area. On error the IOAS, the domain, the pins and charges are unchanged.
    pub fn add_domain(&mut self, env: &mut PtEnv<'_>, dom: DomainId) -> Result<()> {
        if self.domains.contains(&dom) {
            return Err(Error::Exists("domain already attached to the IOAS"));
        }
        let pt = env
            .platform
            .iommu
            .page_table(dom)
            .ok_or(Error::Invalid("not a paging domain"))?;
        let sizes = pt.page_sizes();
        let aperture = pt.aperture();
        if sizes == 0 {
            return Err(Error::Invalid("domain has no page size"));
        }
        let min_page = 1u64 << sizes.trailing_zeros();
        let new_align = min_page.max(self.iova_alignment);
        if new_align > PAGE_SIZE {
            return Err(Error::Invalid("domain page size is above PAGE_SIZE"));
        }
        if new_align != self.iova_alignment {
            self.check_alignment(new_align)?;
        }
        let mut resv = Vec::new();
        if aperture.start != 0 {
            resv.push(Range {
                start: 0,
                last: aperture.start - 1,
            });
        }
        if aperture.last != u64::MAX {
            resv.push(Range {
                start: aperture.last + 1,
                last: u64::MAX,
            });
        }
        for r in &resv {
            if self.any_area_in(r.start, r.last) || self.allowed.overlaps(r) {
                return Err(Error::AddressInUse(
                    "an area or allowed range lies outside the domain aperture",
                ));
            }
        }
        self.fill_domain(env, dom)?;
        for range in resv {
            self.reserved.push(Reservation {
                range,
                owner: ReserveOwner::Domain(dom),
            });
        }
        self.rebuild_reserved_union();
        self.iova_alignment = new_align;
        self.domains.push(dom);
        self.domain_align.push(min_page);
        Ok(())
    }

    /// Pin (if `dom` is the first domain) and map every area into `dom`; undo on error.
    fn fill_domain(&mut self, env: &mut PtEnv<'_>, dom: DomainId) -> Result<()> {
        let first_domain = self.domains.is_empty();
        let small = self.disable_large_pages;
        let slab = &mut self.slab;
        let mut failed = None;
        for (&s, &i) in &self.areas {
            let a = slab.get_mut(i);
            let (first, last) = (a.first_index(), a.last_index(s));
            let (len, start_byte, prot) = (a.last - s + 1, a.start_byte, a.prot);
            let mut p = a.pages.write();
            if first_domain {
                if let Err(e) = p.acquire(&mut env.pin_env(), first, last) {
                    failed = Some((s, e));
                    break;
                }
            }
            let r = map_into_domain(
                &mut env.platform.iommu,
                dom,
                s,
                &p,
                start_byte,
                len,
                prot,
                small,
            );
            if let Err(e) = r {
                if first_domain {
                    p.release(&mut env.pin_env(), first, last);
                }
                failed = Some((s, e));
                break;
            }
        }
        let Some((failed_at, e)) = failed else {
            return Ok(());
        };
        for (&s, &i) in self.areas.range(..failed_at) {
            let a = slab.get_mut(i);
            let _ = env.platform.iommu.unmap(dom, Iova(s), a.last - s + 1);
            if first_domain {
                let (first, last) = (a.first_index(), a.last_index(s));
                a.pages.write().release(&mut env.pin_env(), first, last);
            }
        }
        Err(e)
    }

    /// Detach a domain (the kernel's `iopt_table_remove_domain`). Never fails: every area is
    /// unmapped from it, then, if it was the last domain, the pages only it needed are unpinned
    /// and uncharged; its aperture reservations go and the alignment is recomputed. Unknown
    /// domains are ignored.
    pub fn remove_domain(&mut self, env: &mut PtEnv<'_>, dom: DomainId) {
        let Some(i) = self.domains.iter().position(|&d| d == dom) else {
            return;
        };
        self.domains.swap_remove(i);
        self.domain_align.swap_remove(i);
        let last_domain = self.domains.is_empty();
        let slab = &mut self.slab;
        for (&s, &i) in &self.areas {
            let a = slab.get_mut(i);
            let _ = env.platform.iommu.unmap(dom, Iova(s), a.last - s + 1);
            if last_domain {
                let (first, last) = (a.first_index(), a.last_index(s));
                a.pages.write().release(&mut env.pin_env(), first, last);
            }
        }
        self.reserved
            .retain(|r| r.owner != ReserveOwner::Domain(dom));
        self.rebuild_reserved_union();
        // Removing a domain never raises the alignment; the kernel only warns if it would fail.
        let _ = self.calculate_alignment();
    }

    /// The attached domains, in the kernel's order (a removal moves the last into the gap).
    pub fn domains(&self) -> &[DomainId] {
        &self.domains
    }

    // ----- allowed and reserved ranges ---------------------------------------------------------

    /// `IOMMU_IOAS_ALLOW_IOVAS`: replace the allowed ranges (empty = allow all). EINVAL when a
    /// range has `start >= last` or two ranges overlap (ioas.c `iommufd_ioas_load_iovas`);
    /// EADDRINUSE when one intersects a reserved range (`iopt_set_allow_iova`). Existing areas
    /// are not checked. On error nothing changes.
    pub fn set_allowed(&mut self, ranges: &[Range]) -> Result<()> {
        for (i, r) in ranges.iter().enumerate() {
            if r.start >= r.last {
                return Err(Error::Invalid("allowed range start is not below its last"));
            }
            if ranges[..i].iter().any(|o| o.overlaps(r)) {
                return Err(Error::Invalid("allowed ranges overlap"));
            }
        }
        let new = RangeSet::from_ranges(ranges.iter().copied());
        if new.ranges().iter().any(|r| self.reserved_union.overlaps(r)) {
            return Err(Error::AddressInUse(
                "an allowed range intersects a reserved range",
            ));
        }
        self.allowed = new;
        Ok(())
    }

    /// The allowed ranges (merged), empty when everything is allowed.
    pub fn allowed(&self) -> &[Range] {
        self.allowed.ranges()
    }

    /// Reserve `range` for `owner` (the kernel's `iopt_reserve_iova`): EADDRINUSE when it
    /// intersects an area or an allowed range. Reservations may overlap each other.
    pub fn reserve(&mut self, range: Range, owner: ReserveOwner) -> Result<()> {
        if self.any_area_in(range.start, range.last) || self.allowed.overlaps(&range) {
            return Err(Error::AddressInUse(
                "range intersects a mapping or an allowed range",
            ));
        }
        self.reserved.push(Reservation { range, owner });
        self.rebuild_reserved_union();
        Ok(())
    }

    /// Remove every reservation of `owner`.
    pub fn unreserve(&mut self, owner: ReserveOwner) {
        let before = self.reserved.len();
        self.reserved.retain(|r| r.owner != owner);
        if self.reserved.len() != before {
            self.rebuild_reserved_union();
        }
    }

    /// Recompute the union of the reservations and bring the free-IOVA index up to date: what
    /// was reserved is released (then what stays used is occupied again) and what is reserved
    /// now is occupied. O(reserved ranges × log n).
    fn rebuild_reserved_union(&mut self) {
        let old = std::mem::replace(
            &mut self.reserved_union,
            RangeSet::from_ranges(self.reserved.iter().map(|r| r.range)),
        );
        for &r in old.ranges() {
            if self.reserved_union.ranges().binary_search(&r).is_err() {
                self.refresh_free(r);
            }
        }
        for &r in self.reserved_union.ranges() {
            if old.ranges().binary_search(&r).is_err() {
                self.free.occupy(r);
            }
        }
    }

    /// Rebuild the free-IOVA index over `r` after something in it stopped being used: release
    /// all of `r`, then occupy again the areas and reserved ranges that overlap it.
    fn refresh_free(&mut self, r: Range) {
        self.free.release(r);
        let used: Vec<Range> = self
            .areas_overlapping(r.start, r.last)
            .map(|(s, a)| Range {
                start: s,
                last: a.last,
            })
            .collect();
        for u in used {
            self.free.occupy(u);
        }
        let mut pos = r.start;
        while let Some(u) = self
            .reserved_union
            .next_from(pos)
            .filter(|u| u.start <= r.last)
        {
            self.free.occupy(u);
            match u.last.checked_add(1) {
                Some(next) if u.last < r.last => pos = next,
                _ => break,
            }
        }
    }

    /// The reserved ranges with their owners, in insertion order.
    pub fn reserved(&self) -> Vec<(Range, ReserveOwner)> {
        self.reserved.iter().map(|r| (r.range, r.owner)).collect()
    }

    /// `IOMMU_IOAS_IOVA_RANGES`: the holes between reserved ranges over the whole 64-bit space.
    pub fn iova_ranges(&self) -> Vec<Range> {
        self.reserved_union.holes(Range {
            start: 0,
            last: u64::MAX,
        })
    }

    /// `out_iova_alignment`: what IOVAs, lengths and user page offsets must be multiples of.
    pub fn iova_alignment(&self) -> u64 {
        self.iova_alignment
    }

    /// `IOMMU_OPTION_HUGE_PAGES` get: whether domains may be mapped with large pages.
    pub fn large_pages(&self) -> bool {
        !self.disable_large_pages
    }

    /// `IOMMU_OPTION_HUGE_PAGES` set (`iopt_enable_large_pages` / `iopt_disable_large_pages`).
    /// Enabling always succeeds. Disabling raises the alignment to `PAGE_SIZE` and maps page by
    /// page from then on: EINVAL while domains and areas both exist, EADDRINUSE when an area is
    /// not page-aligned; nothing changes on error.
    pub fn set_large_pages(&mut self, _env: &mut PtEnv<'_>, enabled: bool) -> Result<()> {
        if enabled {
            self.disable_large_pages = false;
            let _ = self.calculate_alignment();
            return Ok(());
        }
        if self.disable_large_pages {
            return Ok(());
        }
        if !self.domains.is_empty() && !self.areas.is_empty() {
            return Err(Error::Invalid(
                "cannot disable large pages while domains map areas",
            ));
        }
        self.disable_large_pages = true;
        if let Err(e) = self.calculate_alignment() {
            self.disable_large_pages = false;
            return Err(e);
        }
        Ok(())
    }

    // ----- accesses --------------------------------------------------------------------------

    /// Attach an access (the kernel's `iopt_add_access`): it needs IOVAs aligned to
    /// `PAGE_SIZE` when it pins pages (`needs_pin_pages`), 1 otherwise. EADDRINUSE when existing
    /// areas break the raised alignment; nothing changes then. Pinning does not require an
    /// attach; only the alignment does.
    pub fn attach_access(&mut self, access: AccessId, needs_pin_pages: bool) -> Result<()> {
        let align = if needs_pin_pages { PAGE_SIZE } else { 1 };
        let old = self.accesses.insert(access, align);
        if let Err(e) = self.calculate_alignment() {
            match old {
                Some(a) => self.accesses.insert(access, a),
                None => self.accesses.remove(&access),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Detach an access (the kernel's `iopt_remove_access`): drops any pins it still holds and
    /// recomputes the alignment. Never fails.
    pub fn detach_access(&mut self, env: &mut PtEnv<'_>, access: AccessId) {
        let held: Vec<(AccessId, u64, u64, u32)> = self
            .pins
            .range((access, 0, 0)..=(access, u64::MAX, u64::MAX))
            .map(|(&(a, s, l), &n)| (a, s, l, n))
            .collect();
        for (a, s, l, n) in held {
            for _ in 0..n {
                self.unpin_exact(env, a, s, l);
            }
        }
        self.accesses.remove(&access);
        let _ = self.calculate_alignment();
    }

    /// Pin `iova..iova+len` for `access` (the kernel's `iommufd_access_pin_pages`) and return
    /// one frame per 4 KiB page. EINVAL zero length, EOVERFLOW wrap; per area in order: EINVAL
    /// when an unmap is pending or the range does not start and (between areas) end on page
    /// boundaries of the memory, EPERM when the area's rights or the pages' writability refuse
    /// the access, EFAULT / ENOMEM from pinning; then ENOENT when areas do not cover the range.
    /// On error nothing is pinned. Undo with [`IoPagetable::access_unpin`] with the same range.
    pub fn access_pin(
        &mut self,
        env: &mut PtEnv<'_>,
        access: AccessId,
        iova: Iova,
        len: u64,
        write: bool,
    ) -> Result<Vec<Pfn>> {
        let last = last_of(iova.0, len)?;
        let (pieces, done) = self.contig(iova.0, last);
        // (area, first page, last page) of each piece pinned so far.
        let mut acquired: Vec<(u64, u64, u64)> = Vec::new();
        let mut result = Ok(());
        for (k, p) in pieces.iter().enumerate() {
            let Some(a) = self.area_mut(p.area) else {
                break;
            };
            let more = k + 1 < pieces.len() || !done;
            let aligned = a.start_byte_at(p.area, p.start) % PAGE_SIZE == 0
                && (!more || a.start_byte_at(p.area, a.last) % PAGE_SIZE == PAGE_SIZE - 1);
            if a.prevent_access || !aligned {
                result = Err(Error::Invalid(
                    "access range is not page aligned or is being unmapped",
                ));
                break;
            }
            if !(if write { a.prot.write } else { a.prot.read }) {
                result = Err(Error::Permission("the mapping does not allow this access"));
                break;
            }
            let (first, lasti) = (a.index_at(p.area, p.start), a.index_at(p.area, p.last));
            let mut pg = a.pages.write();
            if write && !pg.writable() {
                result = Err(Error::Permission("the pages are not writable"));
                break;
            }
            if let Err(e) = pg.acquire(&mut env.pin_env(), first, lasti) {
                result = Err(e);
                break;
            }
            drop(pg);
            acquired.push((p.area, first, lasti));
        }
        if result.is_ok() && !done {
            result = Err(Error::NotMapped(Range {
                start: iova.0,
                last,
            }));
        }
        if let Err(e) = result {
            for (area, first, lasti) in acquired {
                if let Some(a) = self.area_mut(area) {
                    a.pages.write().release(&mut env.pin_env(), first, lasti);
                }
            }
            return Err(e);
        }
        let mut pfns = Vec::new();
        for &(area, first, lasti) in &acquired {
            let Some(a) = self.area_mut(area) else {
                continue;
            };
            let pg = a.pages.read();
            // Pinned pages always have frames.
            pfns.extend((first..=lasti).filter_map(|i| pg.frame(i)));
            drop(pg);
            a.num_accesses += 1;
        }
        *self.pins.entry((access, iova.0, last)).or_insert(0) += 1;
        Ok(pfns)
    }

    /// Undo one [`IoPagetable::access_pin`] of exactly `iova..iova+len` by `access` (the kernel's
    /// `iommufd_access_unpin_pages`). Never fails; a range that was not pinned is ignored.
    pub fn access_unpin(&mut self, env: &mut PtEnv<'_>, access: AccessId, iova: Iova, len: u64) {
        let Ok(last) = last_of(iova.0, len) else {
            return;
        };
        self.unpin_exact(env, access, iova.0, last);
    }

    fn unpin_exact(&mut self, env: &mut PtEnv<'_>, access: AccessId, start: u64, last: u64) {
        let key = (access, start, last);
        match self.pins.get_mut(&key) {
            None => return,
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.pins.remove(&key);
            }
        }
        let (pieces, _) = self.contig(start, last);
        for p in pieces {
            let Some(a) = self.area_mut(p.area) else {
                continue;
            };
            a.num_accesses = a.num_accesses.saturating_sub(1);
            let (first, lasti) = (a.index_at(p.area, p.start), a.index_at(p.area, p.last));
            a.pages.write().release(&mut env.pin_env(), first, lasti);
        }
    }

    /// Read or write IOAS memory at `iova` for an access (the kernel's `iommufd_access_rw`),
    /// through the owning address space whether pinned or not. EINVAL zero length, EOVERFLOW
    /// wrap; per area in order EINVAL (unmap pending), EPERM (area rights, or a write to
    /// read-only pages); ENOENT when areas do not cover the range; these are found before any
    /// byte moves. EFAULT when the memory is gone (bytes before the fault may have moved).
    pub fn access_rw(&mut self, env: &mut PtEnv<'_>, iova: Iova, buf: RwBuf<'_>) -> Result<()> {
        let (len, write) = match &buf {
            RwBuf::Read(b) => (b.len() as u64, false),
            RwBuf::Write(b) => (b.len() as u64, true),
        };
        let last = last_of(iova.0, len)?;
        let (pieces, done) = self.contig(iova.0, last);
        for p in &pieces {
            let Some(a) = self.area(p.area) else {
                continue;
            };
            if a.prevent_access {
                return Err(Error::Invalid("an unmap of the range is pending"));
            }
            if !(if write { a.prot.write } else { a.prot.read }) {
                return Err(Error::Permission("the mapping does not allow this access"));
            }
            if write && !a.pages.read().writable() {
                return Err(Error::Permission("the pages are not writable"));
            }
        }
        if !done {
            return Err(Error::NotMapped(Range {
                start: iova.0,
                last,
            }));
        }
        let memory = &env.platform.memory;
        let mut off = 0usize;
        let mut buf = buf;
        for p in &pieces {
            let Some(a) = self.area(p.area) else {
                continue;
            };
            let n = usize::try_from(p.last - p.start + 1).map_err(|_| Error::Overflow)?;
            let sb = a.start_byte_at(p.area, p.start);
            let pg = a.pages.read();
            match &mut buf {
                RwBuf::Read(b) => pg.read(memory, sb, &mut b[off..off + n])?,
                RwBuf::Write(b) => pg.write(memory, sb, &b[off..off + n])?,
            }
            off += n;
        }
        Ok(())
    }

    // ----- introspection ---------------------------------------------------------------------

    /// Every area, in IOVA order.
    pub fn areas(&self) -> Vec<AreaInfo> {
        self.iter_areas()
            .map(|(s, a)| {
                let p = a.pages.read();
                AreaInfo {
                    iova: Range {
                        start: s,
                        last: a.last,
                    },
                    space: p.space(),
                    uva: UserVa(p.uva().0.wrapping_add(a.start_byte)),
                    prot: a.prot,
                    pinned_pages: p.pinned_in(a.first_index(), a.last_index(s)),
                    accesses: a.num_accesses,
                    pages_id: p.id() as usize,
                    pages_pinned: p.npinned(),
                    account_mode: p.account_mode(),
                }
            })
            .collect()
    }

    /// Number of areas.
    pub fn area_count(&self) -> usize {
        self.areas.len()
    }

    /// Add the pins of the pages objects this IOAS maps that are not in `seen` yet (each
    /// object once, however many areas or IOASes map it) to `pinned`, and to `charged` those
    /// of objects whose pins are charged (not [`AccountMode::None`]).
    pub(crate) fn add_pins(&self, seen: &mut HashSet<u64>, pinned: &mut u64, charged: &mut u64) {
        for (_, a) in self.iter_areas() {
            let p = a.pages.read();
            if seen.insert(p.id()) {
                *pinned += p.npinned();
                if p.account_mode() != crate::pages::AccountMode::None {
                    *charged += p.npinned();
                }
            }
        }
    }

    /// Pages pinned by the pages objects this IOAS maps, each object counted once (a pages
    /// object shared with another IOAS counts its pins for that IOAS too).
    pub fn pinned_pages(&self) -> u64 {
        let mut seen = HashSet::new();
        let mut n = 0;
        for (_, a) in self.iter_areas() {
            let p = a.pages.read();
            // An area's own pages object is in no other area.
            if matches!(a.pages, AreaPages::Own(_)) || seen.insert(p.id()) {
                n += p.npinned();
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::errno::*;
    use std::sync::Arc;
    use uiommu_platform::addr::SIZE_2M;
    use uiommu_platform::hw::DomainSpec;
    use uiommu_platform::memory::SimMemory;
    use uiommu_platform::memory::UserMemory;
    use uiommu_platform::pagetable::mock::{MockPageTable, MOCK_APERTURE_START, MOCK_IO_PAGE_SIZE};
    use uiommu_platform::pagetable::radix::RadixPageTable;

    const P: u64 = PAGE_SIZE;
    /// Where the test buffer lives in the simulated address space (2 MiB aligned).
    const BUF: u64 = 0x4000_0000;
    const BUF_LEN: u64 = 4 * SIZE_2M;

    struct Fx {
        plat: Platform,
        acct: Accounting,
        mem: Arc<SimMemory>,
        space: SpaceId,
    }

    impl Fx {
        fn new() -> Fx {
            let mut plat = Platform::builtin();
            let mem = SimMemory::new();
            mem.map(UserVa(BUF), BUF_LEN, true);
            let space = plat.memory.add_space(mem.clone());
            Fx {
                plat,
                acct: Accounting::new(None),
                mem,
                space,
            }
        }
        fn env(&mut self) -> PtEnv<'_> {
            PtEnv {
                platform: &mut self.plat,
                acct: &mut self.acct,
            }
        }
        fn radix(&mut self) -> DomainId {
            self.plat
                .iommu
                .alloc_domain(DomainSpec::Paging(Box::new(RadixPageTable::new())))
                .unwrap()
        }
        fn mock(&mut self) -> DomainId {
            self.plat
                .iommu
                .alloc_domain(DomainSpec::Paging(Box::new(MockPageTable::new())))
                .unwrap()
        }
        fn map(
            &mut self,
            pt: &mut IoPagetable,
            off: u64,
            len: u64,
            iova: Option<u64>,
        ) -> Result<Iova> {
            let space = self.space;
            pt.map_user(
                &mut self.env(),
                space,
                UserVa(BUF + off),
                len,
                iova.map(Iova),
                Prot::RW,
                AccountMode::User,
            )
        }
        fn pin_count(&self, off: u64) -> u32 {
            self.plat
                .memory
                .frames
                .pin_count(self.space, UserVa(BUF + off))
        }
        fn mapped(&self, dom: DomainId) -> u64 {
            self.plat
                .iommu
                .page_table(dom)
                .map_or(0, |p| p.mapped_bytes())
        }
        fn translate(&self, dom: DomainId, iova: u64) -> Option<u64> {
            self.plat
                .iommu
                .page_table(dom)?
                .translate(Iova(iova))
                .map(|t| t.pa.0)
        }
        fn frame_addr(&self, off: u64) -> u64 {
            FrameTable::frame_of(self.space, UserVa(BUF + off))
                .unwrap()
                .addr()
                .0
        }
        /// Everything torn down: no pins, no charge.
        fn assert_clean(&self) {
            assert_eq!(self.plat.memory.frames.total_pins(), 0);
            assert_eq!(self.acct.user_pages(), 0);
        }
    }

    use uiommu_platform::memory::FrameTable;

    fn errno<T: std::fmt::Debug>(r: Result<T>) -> i32 {
        r.unwrap_err().errno()
    }

    fn teardown(fx: &mut Fx, pt: &mut IoPagetable) {
        pt.unmap_all(&mut fx.env()).unwrap();
        for d in pt.domains().to_vec() {
            pt.remove_domain(&mut fx.env(), d);
        }
        fx.assert_clean();
    }

    #[test]
    fn map_fixed_overlapping_returns_eexist() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let base = 0x10_0000;
        fx.map(&mut pt, 0, 2 * P, Some(base + 16 * P)).unwrap();
        for (iova, len) in [(16, 2), (16, 1), (17, 1), (15, 2), (15, 3)] {
            assert_eq!(
                errno(fx.map(&mut pt, 0, len * P, Some(base + iova * P))),
                EEXIST
            );
        }
        fx.map(&mut pt, 0, P, Some(base + 18 * P)).unwrap();
        assert_eq!(pt.area_count(), 2);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn map_fixed_into_reserved_returns_einval_and_outside_allowed_is_fine() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        pt.reserve(
            Range::from_len(4 * P, 100 * P).unwrap(),
            ReserveOwner::Other(0),
        )
        .unwrap();
        assert_eq!(errno(fx.map(&mut pt, 0, 2 * P, Some(3 * P))), EINVAL);
        pt.set_allowed(&[Range::from_len(200 * P, 10 * P).unwrap()])
            .unwrap();
        // Allowed ranges only steer the allocator.
        fx.map(&mut pt, 0, P, Some(500 * P)).unwrap();
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn map_checks_length_and_overflow_in_the_kernels_order() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        assert_eq!(errno(fx.map(&mut pt, 0, 0, Some(P))), EINVAL);
        assert_eq!(errno(fx.map(&mut pt, 0, u64::MAX, None)), EINVAL);
        let space = fx.space;
        let r = pt.map_user(
            &mut fx.env(),
            space,
            UserVa(u64::MAX - P),
            2 * P,
            None,
            Prot::RW,
            AccountMode::User,
        );
        assert_eq!(errno(r), EOVERFLOW);
        assert_eq!(
            errno(fx.map(&mut pt, 0, 2 * P, Some(u64::MAX - P))),
            EOVERFLOW
        );
        // Without a domain any length and IOVA alignment is fine.
        let iova = fx.map(&mut pt, 1, 3, None).unwrap();
        assert_eq!(pt.unmap(&mut fx.env(), iova, 3).unwrap(), 3);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn map_misaligned_for_a_domain_returns_einval() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let d = fx.mock();
        pt.add_domain(&mut fx.env(), d).unwrap();
        assert_eq!(pt.iova_alignment(), MOCK_IO_PAGE_SIZE);
        let base = MOCK_APERTURE_START;
        assert_eq!(errno(fx.map(&mut pt, 0, P, Some(base + 0x400))), EINVAL);
        assert_eq!(errno(fx.map(&mut pt, 0, 0x400, Some(base))), EINVAL);
        assert_eq!(errno(fx.map(&mut pt, 0x400, P, Some(base))), EINVAL);
        // Sub-page (2 KiB) mappings work with the mock format.
        let iova = fx.map(&mut pt, 0x800, P, Some(base + 0x800)).unwrap();
        assert_eq!(fx.translate(d, iova.0), Some(fx.frame_addr(0) + 0x800));
        assert_eq!(fx.translate(d, iova.0 + 0x800), Some(fx.frame_addr(P)));
        assert_eq!(pt.pinned_pages(), 2);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn unmap_cutting_an_area_returns_enoent() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let d = fx.radix();
        pt.add_domain(&mut fx.env(), d).unwrap();
        let base = 0x10_0000;
        fx.map(&mut pt, 0, 2 * P, Some(base)).unwrap();
        assert_eq!(errno(pt.unmap(&mut fx.env(), Iova(base), P)), ENOENT);
        assert_eq!(errno(pt.unmap(&mut fx.env(), Iova(base + P), P)), ENOENT);
        assert_eq!(
            errno(pt.unmap(&mut fx.env(), Iova(base - P), 2 * P)),
            ENOENT
        );
        assert_eq!(pt.area_count(), 1);
        assert_eq!(fx.mapped(d), 2 * P);
        assert_eq!(pt.unmap(&mut fx.env(), Iova(base), 2 * P).unwrap(), 2 * P);
        assert_eq!(fx.mapped(d), 0);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn unmap_of_nothing_is_enoent_and_unmap_all_succeeds_empty() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        for i in 0..10 {
            assert_eq!(errno(pt.unmap(&mut fx.env(), Iova(i * P), P)), ENOENT);
        }
        assert_eq!(pt.unmap(&mut fx.env(), Iova(0), u64::MAX).unwrap(), 0);
        assert_eq!(pt.unmap_range(&mut fx.env(), Iova(P), P).unwrap(), 0);
        assert_eq!(errno(pt.unmap(&mut fx.env(), Iova(P), 0)), EINVAL);
        assert_eq!(
            errno(pt.unmap(&mut fx.env(), Iova(2 * P), u64::MAX - P)),
            EOVERFLOW
        );
        assert_eq!(errno(pt.unmap(&mut fx.env(), Iova(P), u64::MAX)), EOVERFLOW);
    }

    #[test]
    fn unmap_of_fully_contained_areas_returns_their_bytes() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let base = 0x10_0000 + 4 * P;
        for i in 0..4 {
            fx.map(&mut pt, 0, 8 * P, Some(base + i * 16 * P)).unwrap();
        }
        assert_eq!(
            errno(pt.unmap(&mut fx.env(), Iova(base - 4 * P), 8 * P)),
            ENOENT
        );
        assert_eq!(
            errno(pt.unmap(&mut fx.env(), Iova(base + 3 * 16 * P + 4 * P), 8 * P)),
            ENOENT
        );
        let n = pt
            .unmap(
                &mut fx.env(),
                Iova(base - 4 * P),
                3 * 16 * P + 8 * P + 4 * P,
            )
            .unwrap();
        assert_eq!(n, 32 * P);
        assert_eq!(pt.area_count(), 0);
    }

    #[test]
    fn auto_iova_respects_reserved_and_allowed_ranges() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let mut iovas = vec![];
        for i in 0..10u64 {
            let len = P * (i + 1);
            let iova = fx.map(&mut pt, 0, len, None).unwrap().0;
            assert_eq!(iova % (1 << len.trailing_zeros()), 0);
            assert!(iova != 0);
            iovas.push((iova, len));
        }
        for (iova, len) in iovas.drain(..) {
            pt.unmap(&mut fx.env(), Iova(iova), len).unwrap();
        }
        let resv = Range::from_len(4 * P, 100 * P).unwrap();
        pt.reserve(resv, ReserveOwner::Other(0)).unwrap();
        for i in 0..10u64 {
            let len = P * (i + 1);
            let iova = fx.map(&mut pt, 0, len, None).unwrap().0;
            assert!(!resv.overlaps(&Range::from_len(iova, len).unwrap()));
            iovas.push((iova, len));
        }
        for (iova, len) in iovas.drain(..) {
            pt.unmap(&mut fx.env(), Iova(iova), len).unwrap();
        }
        // An allowed range that intersects a reservation is refused.
        assert_eq!(
            errno(pt.set_allowed(&[Range::new(P, 600 * P).unwrap()])),
            EADDRINUSE
        );
        let allowed = Range::new(200 * P, 600 * P - 1).unwrap();
        pt.set_allowed(&[allowed]).unwrap();
        for i in 0..10u64 {
            let len = P * (i + 1);
            let iova = fx.map(&mut pt, 0, len, None).unwrap().0;
            assert!(allowed.covers(&Range::from_len(iova, len).unwrap()));
            assert_eq!(iova % (1 << len.trailing_zeros()), 0);
        }
        // The allowed range fills up: ENOSPC.
        assert_eq!(errno(fx.map(&mut pt, 0, 400 * P, None)), ENOSPC);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn fifty_thousand_sequential_auto_maps() {
        // No timing assertion: this shows that automatic allocation does not rescan the areas.
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let n = 50_000u64;
        let t = std::time::Instant::now();
        for i in 0..n {
            let iova = fx.map(&mut pt, 0, P, None).unwrap().0;
            assert_eq!(iova, P * (i + 1));
        }
        let el = t.elapsed();
        eprintln!(
            "{n} sequential automatic 4 KiB maps: {el:?} (free-IOVA index: {} holes, {} bytes)",
            pt.free.len(),
            pt.free.memory_bytes()
        );
        assert!(pt.free_index_is_exact());
        // Punch every other page free, then refill: each automatic map takes the lowest hole.
        for i in (0..n).step_by(2) {
            pt.unmap(&mut fx.env(), Iova(P * (i + 1)), P).unwrap();
        }
        assert_eq!(pt.free.len() as u64, n / 2 + 1);
        let t = std::time::Instant::now();
        for i in (0..n).step_by(2) {
            assert_eq!(fx.map(&mut pt, 0, P, None).unwrap().0, P * (i + 1));
        }
        eprintln!(
            "{} automatic 4 KiB maps into 1-page holes: {:?}",
            n / 2,
            t.elapsed()
        );
        assert!(pt.free_index_is_exact());
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn auto_iova_keeps_the_user_page_offset() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let iova = fx.map(&mut pt, 0x123, 0x2000, None).unwrap().0;
        assert_eq!(iova % P, 0x123);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn allowed_and_reserved_ranges_exclude_each_other() {
        let mut pt = IoPagetable::new();
        let allowed = Range::new(0x10_0000, 0x10_0000 + 600 * P).unwrap();
        pt.set_allowed(&[allowed]).unwrap();
        let r = Range::from_len(0x10_0000 + P, P).unwrap();
        assert_eq!(errno(pt.reserve(r, ReserveOwner::Other(0))), EADDRINUSE);
        pt.set_allowed(&[]).unwrap();
        pt.reserve(r, ReserveOwner::Other(0)).unwrap();
        assert_eq!(errno(pt.set_allowed(&[allowed])), EADDRINUSE);
        // Malformed lists are EINVAL.
        assert_eq!(errno(pt.set_allowed(&[Range::new(5, 5).unwrap()])), EINVAL);
        let a = Range::new(0, 10).unwrap();
        let b = Range::new(10, 20).unwrap();
        assert_eq!(errno(pt.set_allowed(&[a, b])), EINVAL);
        pt.unreserve(ReserveOwner::Other(0));
        pt.set_allowed(&[allowed]).unwrap();
    }

    #[test]
    fn iova_ranges_are_the_holes_between_reservations() {
        let mut pt = IoPagetable::new();
        assert_eq!(pt.iova_ranges(), vec![Range::new(0, u64::MAX).unwrap()]);
        assert_eq!(pt.iova_alignment(), 1);
        pt.reserve(Range::from_len(P, P).unwrap(), ReserveOwner::Other(0))
            .unwrap();
        assert_eq!(
            pt.iova_ranges(),
            vec![
                Range::new(0, P - 1).unwrap(),
                Range::new(2 * P, u64::MAX).unwrap()
            ]
        );
        let mut fx = Fx::new();
        let d = fx.mock();
        pt.add_domain(&mut fx.env(), d).unwrap();
        assert_eq!(
            pt.iova_ranges(),
            vec![Range::new(MOCK_APERTURE_START, (1 << 31) - 1).unwrap()]
        );
        pt.remove_domain(&mut fx.env(), d);
        assert_eq!(pt.iova_ranges().len(), 2);
        assert_eq!(pt.iova_alignment(), 1);
    }

    #[test]
    fn the_same_memory_mapped_twice_is_pinned_and_charged_twice_as_linux_does() {
        // Two IOAS_MAPs of one user range are two pages objects (Linux: two iopt_pages), each
        // pinning and charging the pages; an IOAS_COPY shares the object (counted once).
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let d = fx.radix();
        pt.add_domain(&mut fx.env(), d).unwrap();
        fx.map(&mut pt, 0, 4 * P, Some(0x20_0000)).unwrap();
        fx.map(&mut pt, 0, 4 * P, Some(0x40_0000)).unwrap();
        assert_eq!(fx.acct.user_pages(), 8);
        assert_eq!(fx.pin_count(0), 2);
        assert_eq!(pt.pinned_pages(), 8);
        pt.remove_domain(&mut fx.env(), d);
        assert_eq!(fx.acct.user_pages(), 0);
        fx.assert_clean();
    }

    #[test]
    fn adding_a_domain_pins_lazily_and_fills_it() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let iova = fx.map(&mut pt, 0, 8 * P, Some(0x20_0000)).unwrap();
        assert_eq!(pt.pinned_pages(), 0);
        assert_eq!(fx.plat.memory.frames.total_pins(), 0);
        let d1 = fx.radix();
        pt.add_domain(&mut fx.env(), d1).unwrap();
        assert_eq!(pt.pinned_pages(), 8);
        assert_eq!(fx.acct.user_pages(), 8);
        assert_eq!(fx.pin_count(0), 1);
        assert_eq!(fx.mapped(d1), 8 * P);
        for i in 0..8 {
            assert_eq!(fx.translate(d1, iova.0 + i * P), Some(fx.frame_addr(i * P)));
        }
        // A second domain maps the same pages without pinning them again.
        let d2 = fx.radix();
        pt.add_domain(&mut fx.env(), d2).unwrap();
        assert_eq!(fx.pin_count(0), 1);
        assert_eq!(fx.acct.user_pages(), 8);
        assert_eq!(fx.mapped(d2), 8 * P);
        assert_eq!(errno(pt.add_domain(&mut fx.env(), d2)), EEXIST);
        // New maps go into both domains.
        fx.map(&mut pt, 16 * P, 4 * P, Some(0x40_0000)).unwrap();
        assert_eq!((fx.mapped(d1), fx.mapped(d2)), (12 * P, 12 * P));
        assert_eq!(fx.acct.user_pages(), 12);
        pt.remove_domain(&mut fx.env(), d1);
        assert_eq!(fx.mapped(d1), 0);
        assert_eq!(fx.acct.user_pages(), 12);
        pt.remove_domain(&mut fx.env(), d2);
        assert_eq!(fx.mapped(d2), 0);
        fx.assert_clean();
        assert_eq!(pt.area_count(), 2);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn large_pages_map_with_large_leaves_unless_disabled() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let d = fx.radix();
        pt.add_domain(&mut fx.env(), d).unwrap();
        let iova = fx.map(&mut pt, 0, SIZE_2M, Some(0x4000_0000)).unwrap();
        let leaf = |fx: &Fx| {
            fx.plat
                .iommu
                .page_table(d)
                .unwrap()
                .translate(iova)
                .unwrap()
                .leaf_size
        };
        assert_eq!(leaf(&fx), SIZE_2M);
        // Disabling needs an IOAS without both domains and areas.
        assert_eq!(errno(pt.set_large_pages(&mut fx.env(), false)), EINVAL);
        pt.unmap_all(&mut fx.env()).unwrap();
        pt.set_large_pages(&mut fx.env(), false).unwrap();
        assert!(!pt.large_pages());
        assert_eq!(pt.iova_alignment(), P);
        let iova = fx.map(&mut pt, 0, SIZE_2M, Some(0x4000_0000)).unwrap();
        assert_eq!(
            fx.plat
                .iommu
                .page_table(d)
                .unwrap()
                .translate(iova)
                .unwrap()
                .leaf_size,
            P
        );
        pt.set_large_pages(&mut fx.env(), true).unwrap();
        assert_eq!(pt.iova_alignment(), P);
        teardown(&mut fx, &mut pt);
        assert_eq!(pt.iova_alignment(), 1);
    }

    #[test]
    fn over_memlock_limit_is_enomem_and_rolls_back() {
        let mut fx = Fx::new();
        fx.acct.set_limit(Some(6));
        let mut pt = IoPagetable::new();
        // Lazily mapped: no charge yet, so the map succeeds.
        fx.map(&mut pt, 0, 4 * P, Some(0x10_0000)).unwrap();
        fx.map(&mut pt, 8 * P, 4 * P, Some(0x20_0000)).unwrap();
        let d = fx.radix();
        assert_eq!(errno(pt.add_domain(&mut fx.env(), d)), ENOMEM);
        assert!(pt.domains().is_empty());
        assert_eq!(fx.mapped(d), 0);
        fx.assert_clean();
        assert_eq!(pt.iova_ranges(), vec![Range::new(0, u64::MAX).unwrap()]);
        pt.unmap(&mut fx.env(), Iova(0x20_0000), 4 * P).unwrap();
        pt.add_domain(&mut fx.env(), d).unwrap();
        assert_eq!(fx.acct.user_pages(), 4);
        // Over the limit at map time: nothing mapped, pinned or charged.
        assert_eq!(
            errno(fx.map(&mut pt, 8 * P, 4 * P, Some(0x20_0000))),
            ENOMEM
        );
        assert_eq!(pt.area_count(), 1);
        assert_eq!(fx.mapped(d), 4 * P);
        assert_eq!(fx.acct.user_pages(), 4);
        assert_eq!(fx.plat.memory.frames.total_pins(), 4);
        fx.map(&mut pt, 8 * P, 2 * P, Some(0x20_0000)).unwrap();
        assert_eq!(fx.acct.user_pages(), 6);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn account_modes_charge_user_process_or_nothing() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let d = fx.radix();
        pt.add_domain(&mut fx.env(), d).unwrap();
        let space = fx.space;
        for (i, mode) in [AccountMode::User, AccountMode::Process, AccountMode::None]
            .into_iter()
            .enumerate()
        {
            let i = i as u64;
            pt.map_user(
                &mut fx.env(),
                space,
                UserVa(BUF + i * 8 * P),
                2 * P,
                None,
                Prot::RW,
                mode,
            )
            .unwrap();
        }
        assert_eq!(fx.acct.user_pages(), 2);
        assert_eq!(fx.acct.process_pages(space), 2);
        assert_eq!(pt.pinned_pages(), 6);
        teardown(&mut fx, &mut pt);
        assert_eq!(fx.acct.process_pages(space), 0);
    }

    #[test]
    fn missing_memory_is_efault_on_attach_with_rollback() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        fx.map(&mut pt, 0, 4 * P, Some(0x10_0000)).unwrap();
        fx.map(&mut pt, 8 * P, 4 * P, Some(0x20_0000)).unwrap();
        fx.mem.unmap(UserVa(BUF + 10 * P), P);
        let d = fx.radix();
        assert_eq!(errno(pt.add_domain(&mut fx.env(), d)), EFAULT);
        assert!(pt.domains().is_empty());
        assert_eq!(fx.mapped(d), 0);
        fx.assert_clean();
        // Read-only memory cannot be pinned for a writable mapping.
        pt.unmap_all(&mut fx.env()).unwrap();
        fx.mem.map(UserVa(BUF + 20 * P), P, false);
        pt.add_domain(&mut fx.env(), d).unwrap();
        assert_eq!(errno(fx.map(&mut pt, 20 * P, P, None)), EFAULT);
        let space = fx.space;
        pt.map_user(
            &mut fx.env(),
            space,
            UserVa(BUF + 20 * P),
            P,
            None,
            Prot::RO,
            AccountMode::User,
        )
        .unwrap();
        assert_eq!(pt.pinned_pages(), 1);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn copy_shares_pages_and_pin_counts() {
        let mut fx = Fx::new();
        let mut src = IoPagetable::new();
        let mut dst = IoPagetable::new();
        let (d1, d2) = (fx.radix(), fx.radix());
        src.add_domain(&mut fx.env(), d1).unwrap();
        dst.add_domain(&mut fx.env(), d2).unwrap();
        fx.map(&mut src, 0, 4 * P, Some(0x10_0000)).unwrap();
        fx.map(&mut src, 4 * P, 4 * P, Some(0x10_0000 + 4 * P))
            .unwrap();
        assert_eq!(fx.acct.user_pages(), 8);
        // Copy a range spanning both areas: two slices, pins unchanged.
        let list = src.get_pages(Iova(0x10_0000 + 2 * P), 4 * P).unwrap();
        assert_eq!((list.len(), list.slices()), (4 * P, 2));
        let iova = dst
            .map_pages(&mut fx.env(), list, Some(Iova(0x30_0000)), Prot::RW)
            .unwrap();
        assert_eq!(dst.area_count(), 2);
        assert_eq!(fx.pin_count(2 * P), 1);
        assert_eq!(fx.acct.user_pages(), 8);
        assert_eq!(fx.translate(d2, iova.0), Some(fx.frame_addr(2 * P)));
        // Unmapping the source keeps the shared pages pinned for the copy.
        src.unmap_all(&mut fx.env()).unwrap();
        assert_eq!(fx.acct.user_pages(), 4);
        assert_eq!(fx.pin_count(2 * P), 1);
        assert_eq!(fx.pin_count(0), 0);
        assert_eq!(dst.pinned_pages(), 4);
        teardown(&mut fx, &mut dst);
        teardown(&mut fx, &mut src);
    }

    #[test]
    fn pages_keep_their_identity_when_a_copy_or_a_cut_shares_them() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let d = fx.mock();
        pt.add_domain(&mut fx.env(), d).unwrap();
        let base = MOCK_APERTURE_START;
        fx.map(&mut pt, 0, 4 * P, Some(base)).unwrap();
        fx.map(&mut pt, 4 * P, 2 * P, Some(base + 4 * P)).unwrap();
        let ids: Vec<usize> = pt.areas().iter().map(|a| a.pages_id).collect();
        assert_ne!(ids[0], ids[1]);
        // A refused copy (the fixed destination is taken) leaves the areas as they were,
        // identities included.
        let list = pt.get_pages(Iova(base), 4 * P).unwrap();
        assert_eq!(
            errno(pt.map_pages(&mut fx.env(), list, Some(Iova(base + 4 * P)), Prot::RW)),
            EEXIST
        );
        assert_eq!(
            pt.areas().iter().map(|a| a.pages_id).collect::<Vec<_>>(),
            ids
        );
        // A copy shares the first area's pages object.
        let list = pt.get_pages(Iova(base), 4 * P).unwrap();
        let copy = pt.map_pages(&mut fx.env(), list, None, Prot::RW).unwrap();
        let info = pt.areas();
        assert_eq!(info.len(), 3);
        assert_eq!(info[0].pages_id, ids[0]);
        assert_eq!(info[1].pages_id, ids[1]);
        assert_eq!(info[2].iova.start, copy.0);
        assert_eq!(info[2].pages_id, ids[0]);
        assert_eq!(pt.pinned_pages(), 6);
        assert_eq!(fx.pin_count(0), 1);
        // Unmapping the original keeps the copy's pages pinned.
        pt.unmap(&mut fx.env(), Iova(base), 4 * P).unwrap();
        assert_eq!(fx.pin_count(0), 1);
        assert_eq!(pt.pinned_pages(), 6);
        assert_eq!(fx.translate(d, copy.0), Some(fx.frame_addr(0)));
        teardown(&mut fx, &mut pt);
        // A cut shares the area's pages object between the two halves.
        let mut pt = IoPagetable::new();
        fx.map(&mut pt, 0, 4 * P, Some(base)).unwrap();
        let id = pt.areas()[0].pages_id;
        pt.cut_iova(&mut fx.env(), &[Iova(base + P - 1)]).unwrap();
        let info = pt.areas();
        assert_eq!(info.len(), 2);
        assert!(info.iter().all(|a| a.pages_id == id));
        assert_eq!(info[1].uva, UserVa(BUF + P));
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn area_slots_are_reused_and_given_back() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let base = 0x100_0000;
        for i in 0..200 {
            fx.map(&mut pt, 0, P, Some(base + i * P)).unwrap();
        }
        assert_eq!(pt.slab.slots.len(), 200);
        // Unmapping the odd ones frees their slots; new areas take them.
        for i in (1..200).step_by(2) {
            pt.unmap(&mut fx.env(), Iova(base + i * P), P).unwrap();
        }
        assert_eq!(pt.area_count(), 100);
        for i in 0..100 {
            fx.map(&mut pt, 0, P, Some(base + (1000 + i) * P)).unwrap();
        }
        assert_eq!(pt.slab.slots.len(), 200);
        assert!(pt.free_index_is_exact());
        // The last unmap gives a grown arena back; a small one is kept for the next map.
        assert_eq!(pt.unmap_all(&mut fx.env()).unwrap(), 200 * P);
        assert_eq!(pt.slab.slots.capacity(), 0);
        fx.map(&mut pt, 0, P, Some(base)).unwrap();
        pt.unmap(&mut fx.env(), Iova(base), P).unwrap();
        assert!(pt.slab.slots.capacity() > 0);
        assert!(pt.free_index_is_exact());
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn area_slot_stays_small() {
        // Per-mapping metadata budget: the area (with its own pages object) is one slot.
        assert!(
            std::mem::size_of::<Slot>() <= 72,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn copy_checks_coverage_and_rights() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let space = fx.space;
        pt.map_user(
            &mut fx.env(),
            space,
            UserVa(BUF),
            4 * P,
            Some(Iova(0x10_0000)),
            Prot::RO,
            AccountMode::User,
        )
        .unwrap();
        assert_eq!(errno(pt.get_pages(Iova(0x10_0000 - 1), P)), ENOENT);
        assert_eq!(errno(pt.get_pages(Iova(0x10_0000 + 3 * P + 1), P)), ENOENT);
        assert_eq!(errno(pt.get_pages(Iova(0x10_0000), 0)), EINVAL);
        assert_eq!(errno(pt.get_pages(Iova(u64::MAX), 2)), EOVERFLOW);
        let list = pt.get_pages(Iova(0x10_0000 + 511), 2048).unwrap();
        assert_eq!(
            errno(pt.map_pages(&mut fx.env(), list, None, Prot::RW)),
            EPERM
        );
        // Copy inside one IOAS, to an allocated IOVA that keeps the byte offset.
        let list = pt.get_pages(Iova(0x10_0000 + 511), 2048).unwrap();
        let iova = pt.map_pages(&mut fx.env(), list, None, Prot::RO).unwrap();
        assert_eq!(iova.0 % P, 511);
        let mut buf = [0u8; 4];
        fx.mem.write(UserVa(BUF + 511), &[1, 2, 3, 4]).unwrap();
        pt.access_rw(&mut fx.env(), iova, RwBuf::Read(&mut buf))
            .unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn alignment_raise_with_misaligned_area_is_eaddrinuse() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        fx.map(&mut pt, 0, P, Some(MOCK_APERTURE_START)).unwrap();
        fx.map(&mut pt, 0x800, P, Some(MOCK_APERTURE_START + P))
            .unwrap();
        assert_eq!(errno(pt.set_large_pages(&mut fx.env(), false)), EADDRINUSE);
        assert!(pt.large_pages());
        let d = fx.radix();
        assert_eq!(errno(pt.add_domain(&mut fx.env(), d)), EADDRINUSE);
        assert!(pt.domains().is_empty());
        assert_eq!(pt.iova_alignment(), 1);
        assert_eq!(errno(pt.attach_access(AccessId(1), true)), EADDRINUSE);
        pt.attach_access(AccessId(2), false).unwrap();
        // The mock format (2 KiB pages) accepts the area.
        let m = fx.mock();
        pt.add_domain(&mut fx.env(), m).unwrap();
        assert_eq!(pt.iova_alignment(), MOCK_IO_PAGE_SIZE);
        assert_eq!(fx.mapped(m), 2 * P);
        pt.unmap(&mut fx.env(), Iova(MOCK_APERTURE_START + P), P)
            .unwrap();
        pt.set_large_pages(&mut fx.env(), false).unwrap_err();
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn domain_aperture_must_cover_areas_and_allowed_ranges() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        fx.map(&mut pt, 0, P, Some(P)).unwrap();
        let m = fx.mock();
        assert_eq!(errno(pt.add_domain(&mut fx.env(), m)), EADDRINUSE);
        pt.unmap_all(&mut fx.env()).unwrap();
        pt.set_allowed(&[Range::from_len(P, P).unwrap()]).unwrap();
        assert_eq!(errno(pt.add_domain(&mut fx.env(), m)), EADDRINUSE);
        assert!(pt.reserved().is_empty());
        pt.set_allowed(&[]).unwrap();
        pt.add_domain(&mut fx.env(), m).unwrap();
        assert_eq!(pt.reserved().len(), 2);
        // Auto IOVAs land in the aperture.
        let iova = fx.map(&mut pt, 0, P, None).unwrap();
        assert!(iova.0 >= MOCK_APERTURE_START);
        teardown(&mut fx, &mut pt);
        assert!(pt.reserved().is_empty());
    }

    #[test]
    fn access_pins_once_and_blocks_unmap_until_released() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let base = MOCK_APERTURE_START;
        fx.map(&mut pt, 0, 8 * P, Some(base)).unwrap();
        let a = AccessId(7);
        pt.attach_access(a, true).unwrap();
        let pfns = pt
            .access_pin(&mut fx.env(), a, Iova(base + P), 2 * P, true)
            .unwrap();
        assert_eq!(pfns.len(), 2);
        assert_eq!(pfns[0].addr().0, fx.frame_addr(P));
        assert_eq!(fx.acct.user_pages(), 2);
        // Same range twice: pinned once.
        pt.access_pin(&mut fx.env(), a, Iova(base + P), 2 * P, false)
            .unwrap();
        assert_eq!(fx.pin_count(P), 1);
        assert_eq!(errno(pt.unmap(&mut fx.env(), Iova(base), 8 * P)), EBUSY);
        assert_eq!(pt.accesses_in(Iova(base), 8 * P), vec![a]);
        assert!(pt.accesses_in(Iova(base + 4 * P), P).is_empty());
        // An unmap is pending: no new pins.
        assert_eq!(
            errno(pt.access_pin(&mut fx.env(), a, Iova(base), P, false)),
            EINVAL
        );
        pt.access_unpin(&mut fx.env(), a, Iova(base + P), 2 * P);
        assert_eq!(fx.pin_count(P), 1);
        pt.access_unpin(&mut fx.env(), a, Iova(base + P), 2 * P);
        assert_eq!(fx.pin_count(P), 0);
        assert_eq!(pt.unmap(&mut fx.env(), Iova(base), 8 * P).unwrap(), 8 * P);
        pt.detach_access(&mut fx.env(), a);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn an_unmap_walks_the_areas_in_order_and_keeps_what_it_removed_before_a_refusal() {
        // The kernel's iopt_unmap_iova_range: area by area in IOVA order; a pinned area stops
        // the walk (EBUSY here, below the engine's notifications) and refuses new pins, an area
        // sticking out of the range stops it with ENOENT; the areas before stay unmapped.
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let base = MOCK_APERTURE_START;
        for i in 0..3 {
            fx.map(&mut pt, i * P, P, Some(base + i * P)).unwrap();
        }
        let a = AccessId(3);
        pt.attach_access(a, true).unwrap();
        pt.access_pin(&mut fx.env(), a, Iova(base + P), P, false)
            .unwrap();
        assert_eq!(errno(pt.unmap(&mut fx.env(), Iova(base), 3 * P)), EBUSY);
        assert_eq!(
            pt.area_count(),
            2,
            "the first area went before the pinned one"
        );
        // The pinned area refuses new pins; the one after it was not reached.
        assert_eq!(
            errno(pt.access_pin(&mut fx.env(), a, Iova(base + P), P, false)),
            EINVAL
        );
        pt.access_pin(&mut fx.env(), a, Iova(base + 2 * P), P, false)
            .unwrap();
        pt.access_unpin(&mut fx.env(), a, Iova(base + 2 * P), P);
        pt.access_unpin(&mut fx.env(), a, Iova(base + P), P);
        // A range over the middle area and into the last: the middle goes, then ENOENT.
        assert_eq!(
            errno(pt.unmap(&mut fx.env(), Iova(base + P), 2 * P - 1)),
            ENOENT
        );
        assert_eq!(pt.area_count(), 1);
        // A range that starts inside an area: ENOENT at once.
        assert_eq!(
            errno(pt.unmap(&mut fx.env(), Iova(base + 2 * P + 1), P)),
            ENOENT
        );
        assert_eq!(pt.area_count(), 1);
        assert_eq!(pt.unmap(&mut fx.env(), Iova(base), 3 * P).unwrap(), P);
        assert!(pt.free_index_is_exact());
        pt.detach_access(&mut fx.env(), a);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn access_pin_with_domain_shares_the_domain_pins() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let base = MOCK_APERTURE_START;
        fx.map(&mut pt, 0, 8 * P, Some(base)).unwrap();
        let a = AccessId(1);
        pt.access_pin(&mut fx.env(), a, Iova(base), 8 * P, true)
            .unwrap();
        let m = fx.mock();
        pt.add_domain(&mut fx.env(), m).unwrap();
        assert_eq!(fx.pin_count(0), 1);
        assert_eq!(fx.acct.user_pages(), 8);
        pt.remove_domain(&mut fx.env(), m);
        // The access still holds them.
        assert_eq!(fx.pin_count(0), 1);
        pt.detach_access(&mut fx.env(), a);
        fx.assert_clean();
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn access_pin_refusals_roll_back() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let base = MOCK_APERTURE_START;
        let space = fx.space;
        fx.map(&mut pt, 0, 2 * P, Some(base)).unwrap();
        pt.map_user(
            &mut fx.env(),
            space,
            UserVa(BUF + 4 * P),
            2 * P,
            Some(Iova(base + 2 * P)),
            Prot::RO,
            AccountMode::User,
        )
        .unwrap();
        let a = AccessId(1);
        // A gap after the areas: ENOENT, nothing pinned.
        assert_eq!(
            errno(pt.access_pin(&mut fx.env(), a, Iova(base), 5 * P, false)),
            ENOENT
        );
        // Write through the read-only second area: EPERM, first area's pins undone.
        assert_eq!(
            errno(pt.access_pin(&mut fx.env(), a, Iova(base), 4 * P, true)),
            EPERM
        );
        // Not page aligned.
        assert_eq!(
            errno(pt.access_pin(&mut fx.env(), a, Iova(base + 1), P, false)),
            EINVAL
        );
        assert_eq!(
            errno(pt.access_pin(&mut fx.env(), a, Iova(base), 0, false)),
            EINVAL
        );
        fx.assert_clean();
        // Memory gone: EFAULT.
        fx.mem.unmap(UserVa(BUF + 5 * P), P);
        assert_eq!(
            errno(pt.access_pin(&mut fx.env(), a, Iova(base), 4 * P, false)),
            EFAULT
        );
        fx.assert_clean();
        let pfns = pt
            .access_pin(&mut fx.env(), a, Iova(base), 3 * P, false)
            .unwrap();
        assert_eq!(pfns.len(), 3);
        assert_eq!(pt.areas()[0].accesses, 1);
        assert_eq!(pt.areas()[1].accesses, 1);
        pt.access_unpin(&mut fx.env(), a, Iova(base), 3 * P);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn access_rw_goes_through_areas_and_honours_rights() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let space = fx.space;
        let base = MOCK_APERTURE_START + MOCK_IO_PAGE_SIZE;
        fx.map(&mut pt, 0, 2 * P, Some(base)).unwrap();
        pt.map_user(
            &mut fx.env(),
            space,
            UserVa(BUF + 8 * P),
            P,
            Some(Iova(base + 2 * P)),
            Prot::RO,
            AccountMode::User,
        )
        .unwrap();
        let data: Vec<u8> = (0..100).collect();
        pt.access_rw(&mut fx.env(), Iova(base + P - 50), RwBuf::Write(&data))
            .unwrap();
        let mut back = vec![0u8; 100];
        fx.mem.read(UserVa(BUF + P - 50), &mut back).unwrap();
        assert_eq!(back, data);
        // Across the two areas.
        fx.mem.write(UserVa(BUF + 8 * P), &[9, 9]).unwrap();
        let mut two = [0u8; 4];
        pt.access_rw(&mut fx.env(), Iova(base + 2 * P - 2), RwBuf::Read(&mut two))
            .unwrap();
        assert_eq!(two, [0, 0, 9, 9]);
        assert_eq!(
            errno(pt.access_rw(&mut fx.env(), Iova(base + 2 * P), RwBuf::Write(&[1]))),
            EPERM
        );
        assert_eq!(
            errno(pt.access_rw(&mut fx.env(), Iova(base + 3 * P - 1), RwBuf::Read(&mut two))),
            ENOENT
        );
        assert_eq!(
            errno(pt.access_rw(&mut fx.env(), Iova(base), RwBuf::Read(&mut []))),
            EINVAL
        );
        // Nothing was pinned by any of it.
        fx.assert_clean();
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn cut_iova_splits_areas_for_vfio_compat() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let d = fx.radix();
        pt.add_domain(&mut fx.env(), d).unwrap();
        fx.map(&mut pt, 0, 4 * P, Some(0x10_0000)).unwrap();
        // Domains may have large pages: refused.
        assert_eq!(
            errno(pt.cut_iova(&mut fx.env(), &[Iova(0x10_0000 + P - 1)])),
            EINVAL
        );
        pt.unmap_all(&mut fx.env()).unwrap();
        pt.remove_domain(&mut fx.env(), d);
        pt.set_large_pages(&mut fx.env(), false).unwrap();
        pt.add_domain(&mut fx.env(), d).unwrap();
        fx.map(&mut pt, 0, 4 * P, Some(0x10_0000)).unwrap();
        assert_eq!(
            errno(pt.cut_iova(&mut fx.env(), &[Iova(0x10_0000 + 10)])),
            EINVAL
        );
        pt.cut_iova(
            &mut fx.env(),
            &[
                Iova(0x10_0000 + P - 1),
                Iova(0x10_0000 + 4 * P - 1),
                Iova(0x90_0000),
            ],
        )
        .unwrap();
        assert_eq!(pt.area_count(), 2);
        assert_eq!(pt.unmap(&mut fx.env(), Iova(0x10_0000), P).unwrap(), P);
        assert_eq!(fx.mapped(d), 3 * P);
        assert_eq!(fx.acct.user_pages(), 3);
        assert_eq!(fx.pin_count(0), 0);
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn remove_domain_keeps_other_domains_and_alignment_follows() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let (m, r) = (fx.mock(), fx.radix());
        pt.add_domain(&mut fx.env(), m).unwrap();
        pt.add_domain(&mut fx.env(), r).unwrap();
        assert_eq!(pt.iova_alignment(), P);
        fx.map(&mut pt, 0, 4 * P, Some(MOCK_APERTURE_START))
            .unwrap();
        pt.remove_domain(&mut fx.env(), r);
        assert_eq!(pt.iova_alignment(), MOCK_IO_PAGE_SIZE);
        pt.remove_domain(&mut fx.env(), r);
        assert_eq!(pt.domains(), &[m]);
        assert_eq!(fx.mapped(m), 4 * P);
        assert_eq!(fx.acct.user_pages(), 4);
        pt.remove_domain(&mut fx.env(), m);
        assert_eq!(pt.iova_alignment(), 1);
        fx.assert_clean();
        teardown(&mut fx, &mut pt);
    }

    #[test]
    fn areas_report_pins_and_rights() {
        let mut fx = Fx::new();
        let mut pt = IoPagetable::new();
        let d = fx.radix();
        fx.map(&mut pt, 0x10, 2 * P, Some(0x20_0010)).unwrap();
        let info = pt.areas();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].uva, UserVa(BUF + 0x10));
        assert_eq!(info[0].pinned_pages, 0);
        assert_eq!(info[0].prot, Prot::RW);
        fx.map(&mut pt, 0, 4 * P, Some(0x40_0000)).unwrap();
        pt.add_domain(&mut fx.env(), d).unwrap_err();
        teardown(&mut fx, &mut pt);
    }

    #[derive(Clone, Debug)]
    enum Op {
        MapFixed(u64, u64),
        MapAuto(u64, u64),
        Unmap(u64, u64),
        Copy(u64, u64),
        ToggleDomain,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..64, 1u64..8).prop_map(|(a, n)| Op::MapFixed(a, n)),
            (0u64..64, 1u64..8).prop_map(|(a, n)| Op::MapAuto(a, n)),
            (0u64..64, 1u64..16).prop_map(|(a, n)| Op::Unmap(a, n)),
            (0u64..64, 1u64..8).prop_map(|(a, n)| Op::Copy(a, n)),
            Just(Op::ToggleDomain),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn random_operations_keep_the_invariants(ops in proptest::collection::vec(op(), 1..40)) {
            let mut fx = Fx::new();
            fx.acct.set_limit(Some(48));
            let mut pt = IoPagetable::new();
            let d = fx.radix();
            let base = 0x10_0000;
            // Model: start page -> npages.
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for op in ops {
                let before = pt.areas();
                let result: Result<()> = match op {
                    Op::MapFixed(a, n) => fx.map(&mut pt, a * P, n * P, Some(base + a * P)).map(|_| ()),
                    Op::MapAuto(a, n) => fx.map(&mut pt, a * P, n * P, None).map(|_| ()),
                    Op::Unmap(a, n) => pt.unmap(&mut fx.env(), Iova(base + a * P), n * P).map(|_| ()),
                    Op::Copy(a, n) => match pt.get_pages(Iova(base + a * P), n * P) {
                        Ok(list) => pt.map_pages(&mut fx.env(), list, None, Prot::RW).map(|_| ()),
                        Err(e) => Err(e),
                    },
                    Op::ToggleDomain => {
                        if pt.domains().is_empty() {
                            pt.add_domain(&mut fx.env(), d)
                        } else {
                            pt.remove_domain(&mut fx.env(), d);
                            Ok(())
                        }
                    }
                };
                let after = pt.areas();
                if let Op::Unmap(a, n) = op {
                    let (s, l) = (a, a + n - 1);
                    let hit: Vec<u64> = model
                        .iter()
                        .filter(|(&st, &np)| st <= l && st + np > s)
                        .map(|(&st, _)| st)
                        .collect();
                    let cut = hit.iter().any(|st| *st < s || st + model[st] - 1 > l);
                    let fixed_only = after.iter().all(|i| i.iova.start >= base && i.iova.last < base + 64 * P);
                    if fixed_only {
                        proptest::prop_assert_eq!(result.is_ok(), !cut && !hit.is_empty());
                    }
                }
                if let Op::Unmap(a, n) = op {
                    // The kernel's walk: the areas inside the range go in IOVA order until
                    // one sticks out of it; the ones before that stay unmapped.
                    let (s, l) = (base + a * P, base + (a + n) * P - 1);
                    let mut stop = false;
                    let expect: Vec<Range> = before
                        .iter()
                        .filter(|i| {
                            if stop || i.iova.last < s || i.iova.start > l {
                                return true;
                            }
                            if i.iova.start < s || i.iova.last > l {
                                stop = true;
                                return true;
                            }
                            false
                        })
                        .map(|i| i.iova)
                        .collect();
                    let got: Vec<Range> = after.iter().map(|i| i.iova).collect();
                    proptest::prop_assert_eq!(got, expect);
                } else if result.is_err() {
                    proptest::prop_assert_eq!(&before, &after);
                }
                model = after
                    .iter()
                    .filter(|i| i.iova.start >= base)
                    .map(|i| ((i.iova.start - base) / P, i.iova.len() / P))
                    .collect();
                // Areas are disjoint and ordered.
                for w in after.windows(2) {
                    proptest::prop_assert!(w[0].iova.last < w[1].iova.start);
                }
                // Pins and charges match the mappings exactly.
                let pins = fx.plat.memory.frames.total_pins();
                proptest::prop_assert_eq!(pins, fx.acct.user_pages());
                proptest::prop_assert_eq!(pins, pt.pinned_pages());
                let total: u64 = after.iter().map(|i| i.iova.len()).sum();
                if pt.domains().is_empty() {
                    proptest::prop_assert_eq!(pins, 0);
                    proptest::prop_assert_eq!(fx.mapped(d), 0);
                } else {
                    proptest::prop_assert_eq!(fx.mapped(d), total);
                    for i in &after {
                        let off = i.uva.0 - BUF;
                        proptest::prop_assert_eq!(fx.translate(d, i.iova.start), Some(fx.frame_addr(off)));
                    }
                }
            }
            teardown(&mut fx, &mut pt);
        }
    }

    /// Operations for the allocator-equivalence proptest.
    #[derive(Clone, Debug)]
    enum AllocOp {
        /// Fixed map: IOVA page, pages, user offset.
        MapFixed(u64, u64, u64),
        /// Automatic map: user offset, length in bytes.
        MapAuto(u64, u64),
        /// Copy `(page, pages)` to an automatic IOVA.
        CopyAuto(u64, u64),
        Unmap(u64, u64),
        UnmapAll,
        Reserve(u32, Range),
        Unreserve(u32),
        SetAllowed(Vec<Range>),
        ToggleDomain,
    }

    /// IOVA pages mostly near the bottom (where first fit puts things), some near the top.
    fn iova_page() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            4 => 0u64..1024,
            1 => (0u64..64).prop_map(|x| (u64::MAX / P) - x),
            1 => (0u64..64).prop_map(|x| (1 << 36) - 32 + x),
        ]
    }

    fn iova_range() -> impl proptest::strategy::Strategy<Value = Range> {
        use proptest::prelude::*;
        (iova_page(), 0u64..64, prop_oneof![Just(0u64), 1u64..P]).prop_map(|(pg, n, sub)| {
            let start = pg.saturating_mul(P).saturating_add(sub);
            Range {
                start,
                last: start.saturating_add(n * P + sub),
            }
        })
    }

    /// User offsets into the test buffer with varied low bits (sub-page, 4 KiB .. 2 MiB).
    fn user_off() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..4).prop_map(|x| x * SIZE_2M),
            (0u64..16).prop_map(|x| x << 16),
            (0u64..512).prop_map(|x| x * P),
            0u64..2 * P,
        ]
    }

    fn alloc_op() -> impl proptest::strategy::Strategy<Value = AllocOp> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0u64..1024, 1u64..16, user_off()).prop_map(|(a, n, u)| AllocOp::MapFixed(a, n, u)),
            6 => (
                user_off(),
                prop_oneof![(1u64..40).prop_map(|n| n * P), 1u64..3 * P, Just(SIZE_2M), Just(2 * SIZE_2M + P)]
            )
                .prop_map(|(u, l)| AllocOp::MapAuto(u, l)),
            1 => (0u64..1024, 1u64..8).prop_map(|(a, n)| AllocOp::CopyAuto(a, n)),
            3 => (0u64..1024, 1u64..64).prop_map(|(a, n)| AllocOp::Unmap(a, n)),
            1 => Just(AllocOp::UnmapAll),
            2 => (0u32..3, iova_range()).prop_map(|(o, r)| AllocOp::Reserve(o, r)),
            1 => (0u32..3).prop_map(AllocOp::Unreserve),
            1 => proptest::collection::vec(iova_range(), 0..3).prop_map(AllocOp::SetAllowed),
            1 => Just(AllocOp::ToggleDomain),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Random fixed and automatic maps, copies, unmaps, reservations, allowed ranges and
        /// domains: after every operation the free-IOVA index is exact, and before every
        /// automatic allocation it returns exactly the scanning reference's IOVA or error.
        #[test]
        fn indexed_allocator_matches_the_scanning_reference(
            ops in proptest::collection::vec(alloc_op(), 1..80),
        ) {
            let mut fx = Fx::new();
            let mut pt = IoPagetable::new();
            let d = fx.radix();
            let mut allocs = 0u32;
            for op in ops {
                let auto = match &op {
                    AllocOp::MapAuto(u, l) if u + l <= BUF_LEN => Some((BUF + u, *l)),
                    AllocOp::CopyAuto(a, n) => pt
                        .get_pages(Iova(a * P), n * P)
                        .ok()
                        .map(|list| {
                            let first = &list.elems[0];
                            (first.pages.read().uva().0 + first.start_byte, n * P)
                        }),
                    _ => None,
                };
                let want = auto.map(|(uptr, len)| {
                    let got = pt.alloc_iova(uptr, len).map_err(|e| e.errno());
                    let reference = pt.alloc_iova_reference(uptr, len).map_err(|e| e.errno());
                    (got, reference)
                });
                if let Some((got, reference)) = &want {
                    proptest::prop_assert_eq!(got, reference);
                    allocs += 1;
                }
                let result: Result<Option<u64>> = match op {
                    AllocOp::MapFixed(a, n, u) if u + n * P <= BUF_LEN => {
                        fx.map(&mut pt, u, n * P, Some(a * P)).map(|i| Some(i.0))
                    }
                    AllocOp::MapFixed(..) => Ok(None),
                    AllocOp::MapAuto(u, l) if u + l <= BUF_LEN => {
                        fx.map(&mut pt, u, l, None).map(|i| Some(i.0))
                    }
                    AllocOp::MapAuto(..) => Ok(None),
                    AllocOp::CopyAuto(a, n) => match pt.get_pages(Iova(a * P), n * P) {
                        Ok(list) => pt.map_pages(&mut fx.env(), list, None, Prot::RW).map(|i| Some(i.0)),
                        Err(e) => Err(e),
                    },
                    AllocOp::Unmap(a, n) => pt.unmap(&mut fx.env(), Iova(a * P), n * P).map(|_| None),
                    AllocOp::UnmapAll => pt.unmap_all(&mut fx.env()).map(|_| None),
                    AllocOp::Reserve(o, r) => pt.reserve(r, ReserveOwner::Other(o)).map(|_| None),
                    AllocOp::Unreserve(o) => {
                        pt.unreserve(ReserveOwner::Other(o));
                        Ok(None)
                    }
                    AllocOp::SetAllowed(v) => pt.set_allowed(&v).map(|_| None),
                    AllocOp::ToggleDomain => {
                        if pt.domains().is_empty() {
                            pt.add_domain(&mut fx.env(), d).map(|_| None)
                        } else {
                            pt.remove_domain(&mut fx.env(), d);
                            Ok(None)
                        }
                    }
                };
                if let (Some((Ok(iova), _)), Ok(Some(mapped))) = (&want, &result) {
                    proptest::prop_assert_eq!(iova, mapped);
                }
                proptest::prop_assert!(pt.free_index_is_exact(), "free index after {:?}", result);
            }
            proptest::prop_assert!(allocs > 0 || pt.free_index_is_exact());
            teardown(&mut fx, &mut pt);
        }
    }
}
