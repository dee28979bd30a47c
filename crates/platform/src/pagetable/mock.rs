//! The page-table format of the kernel's iommufd selftest mock domain.
//!
//! Semantics and numbers follow the Linux selftest mock (`drivers/iommu/iommufd/selftest.c`):
//! - The granule is [`MOCK_IO_PAGE_SIZE`] = half a CPU page = 2 KiB; every IOVA, physical
//!   address and length must be a multiple of it.
//! - The aperture is [`MOCK_APERTURE_START`] (16 MiB) ..= [`MOCK_APERTURE_LAST`] (2 GiB - 1).
//! - Each `map` call marks its first granule "start" and its last granule "last" (one granule
//!   may carry both), so the selftest can check that unmaps respect map boundaries.
//! - Each granule has a dirty mark. [`PageTable::mark_dirty`] sets it while dirty tracking is
//!   on; [`MockPageTable::set_dirty_granule`] sets it unconditionally, like the selftest's
//!   `IOMMU_TEST_OP_DIRTY`.
//! - The "huge IOVA" variant ([`MockPageTable::new_huge_iova`], the kernel's
//!   `MOCK_FLAGS_DEVICE_HUGE_IOVA`) also supports [`MOCK_HUGE_PAGE_SIZE`] (512 granules =
//!   1 MiB) pages: every granule of a 1 MiB-aligned block that one `map` call covers wholly,
//!   with a 1 MiB-aligned physical address, is marked huge, and dirty reporting treats the
//!   block as one page (one dirty granule makes all 512 granules report dirty).
//!
//! Where this emulation differs from the kernel mock, on purpose:
//! - The kernel uses one bit for "start" and "last"; here they are separate marks, and the
//!   boundary check is the intended one: the first granule of an unmap must carry "start", its
//!   last granule "last".
//! - Where the kernel mock WARNs on an unmap that does not begin or end on a map boundary, this
//!   table still unmaps exactly the range asked for and counts a boundary violation
//!   ([`MockPageTable::boundary_violations`]) for tests to read. As in the kernel, the check is
//!   skipped in the huge-IOVA variant (the core splits unmaps at page-size changes there).
//! - `unmap` returns the bytes that were mapped (the kernel mock returns the length asked for).
//! - An unmap that cuts a huge block "splits" it: the remaining granules lose their huge mark.
//!   Reading dirty marks without `keep` over part of a dirty huge block splits it the same way,
//!   marking each remaining granule dirty, so no dirty state outside the range is lost.
//! - Rights are kept per granule (the kernel mock ignores them) so translation can report them.
//!
//! Representation and invariants: the aperture is cut into 1 MiB chunks (each exactly one
//! possible huge block, as the aperture start is 1 MiB-aligned); a chunk is a lazily allocated
//! array of 512 entries, each the granule's physical address with flag bits in its low 11 bits.
//! `live[c]` counts present entries of chunk `c`; a chunk whose count drops to zero is released
//! (kept, zeroed, in a small spare pool). If any granule of a chunk is marked huge, all 512 are
//! present and marked huge. `mapped` is the number of present granules times 2 KiB.
//!
//! Range convention: the trait takes `(iova, len)`; inside this module ranges are half-open
//! `[start, end)`, which cannot overflow because the aperture ends at 2 GiB.

use super::{PageTable, PageTableError, PageTableFormat, Prot, Translation};
use crate::addr::{inclusive_last, Iova, PhysAddr, Range, PAGE_SIZE};
use std::fmt;

/// The mock's granule: half a CPU page (2 KiB), the kernel's `MOCK_IO_PAGE_SIZE`.
pub const MOCK_IO_PAGE_SIZE: u64 = PAGE_SIZE / 2;
/// The huge page of the huge-IOVA variant: 512 granules (1 MiB), `MOCK_HUGE_PAGE_SIZE`.
pub const MOCK_HUGE_PAGE_SIZE: u64 = 512 * MOCK_IO_PAGE_SIZE;
/// First IOVA of the mock aperture (16 MiB), `MOCK_APERTURE_START`.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// Last IOVA of the mock aperture (2 GiB - 1), `MOCK_APERTURE_LAST`.
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;

const GRANULES: usize = 512;
const CHUNK_BYTES: u64 = MOCK_HUGE_PAGE_SIZE;
const NCHUNKS: usize = ((MOCK_APERTURE_LAST + 1 - MOCK_APERTURE_START) / CHUNK_BYTES) as usize;
const MAX_SPARE: usize = 16;

const PRESENT: u64 = 1 << 0;
const READ: u64 = 1 << 1;
const WRITE: u64 = 1 << 2;
const START: u64 = 1 << 3;
const LAST: u64 = 1 << 4;
const DIRTY: u64 = 1 << 5;
const HUGE: u64 = 1 << 6;
const PA_MASK: u64 = !(MOCK_IO_PAGE_SIZE - 1);

/// One granule's entry as the selftest sees it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MockEntry {
    /// Physical address of the granule.
    pub pa: PhysAddr,
    /// Rights of the mapping.
    pub prot: Prot,
    /// The granule was the first of a `map` call.
    pub start: bool,
    /// The granule was the last of a `map` call.
    pub last: bool,
    /// The granule's dirty mark.
    pub dirty: bool,
    /// The granule belongs to a huge (1 MiB) page.
    pub huge: bool,
}

impl MockEntry {
    fn from_raw(e: u64) -> MockEntry {
        MockEntry {
            pa: PhysAddr(e & PA_MASK),
            prot: Prot {
                read: e & READ != 0,
                write: e & WRITE != 0,
            },
            start: e & START != 0,
            last: e & LAST != 0,
            dirty: e & DIRTY != 0,
            huge: e & HUGE != 0,
        }
    }
}

/// The selftest mock domain's page table: 2 KiB granules with start/last/dirty/huge marks.
///
/// Map, unmap and translate cost O(1) per granule.
#[derive(Clone)]
pub struct MockPageTable {
    /// One optional 512-entry array per 1 MiB of aperture.
    chunks: Vec<Option<Box<[u64]>>>,
    /// Present entries per chunk.
    live: Vec<u16>,
    /// Zeroed chunk arrays kept for reuse.
    spare: Vec<Box<[u64]>>,
    /// Allocated chunks.
    chunk_count: u64,
    /// Bytes mapped.
    mapped: u64,
    huge_iova: bool,
    dirty_tracking: bool,
    boundary_violations: u64,
}

impl Default for MockPageTable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MockPageTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockPageTable")
            .field("huge_iova", &self.huge_iova)
            .field("chunks", &self.chunk_count)
            .field("mapped_bytes", &self.mapped)
            .field("dirty_tracking", &self.dirty_tracking)
            .field("boundary_violations", &self.boundary_violations)
            .finish()
    }
}

/// Chunk index and entry index of an IOVA inside the aperture.
#[inline]
fn locate(iova: u64) -> (usize, usize) {
    let off = iova - MOCK_APERTURE_START;
    (
        (off / CHUNK_BYTES) as usize,
        ((off % CHUNK_BYTES) / MOCK_IO_PAGE_SIZE) as usize,
    )
}

/// First IOVA of chunk `c`.
#[inline]
fn chunk_base(c: usize) -> u64 {
    MOCK_APERTURE_START + c as u64 * CHUNK_BYTES
}

impl MockPageTable {
    /// An empty mock table with the 2 KiB page size only (a plain mock domain).
    pub fn new() -> MockPageTable {
        MockPageTable {
            chunks: vec![None; NCHUNKS],
            live: vec![0; NCHUNKS],
            spare: Vec::new(),
            chunk_count: 0,
            mapped: 0,
            huge_iova: false,
            dirty_tracking: false,
            boundary_violations: 0,
        }
    }

    /// An empty mock table that also supports 1 MiB huge pages (a domain for a device created
    /// with `MOCK_FLAGS_DEVICE_HUGE_IOVA`).
    pub fn new_huge_iova() -> MockPageTable {
        MockPageTable {
            huge_iova: true,
            ..MockPageTable::new()
        }
    }

    /// Whether this is the huge-IOVA variant.
    pub fn huge_iova(&self) -> bool {
        self.huge_iova
    }

    fn raw(&self, iova: u64) -> u64 {
        if !(MOCK_APERTURE_START..=MOCK_APERTURE_LAST).contains(&iova) {
            return 0;
        }
        let (c, i) = locate(iova);
        self.chunks[c].as_ref().map_or(0, |ch| ch[i])
    }

    /// The entry of the granule holding `iova`, or `None` when it is unmapped.
    pub fn entry(&self, iova: Iova) -> Option<MockEntry> {
        let e = self.raw(iova.0);
        (e & PRESENT != 0).then(|| MockEntry::from_raw(e))
    }

    /// The `(start, last)` marks of the granule holding `iova`, or `None` when it is unmapped.
    pub fn entry_marks(&self, iova: Iova) -> Option<(bool, bool)> {
        self.entry(iova).map(|e| (e.start, e.last))
    }

    /// Set the dirty mark of the granule holding `iova` whatever the tracking state (the
    /// selftest's `IOMMU_TEST_OP_DIRTY`, which checks tracking itself). Returns whether the
    /// granule is mapped (the op counts those).
    pub fn set_dirty_granule(&mut self, iova: Iova) -> bool {
        self.set_flag(iova.0, DIRTY)
    }

    /// Whether every granule of `[iova, iova + len)` is mapped to the address `expected` gives
    /// for it (the selftest's `IOMMU_TEST_OP_MD_CHECK_MAP`). False when `iova` or `len` is not a
    /// multiple of the granule, `len` is zero or the range overflows.
    pub fn check_map(
        &self,
        iova: Iova,
        len: u64,
        expected: &mut dyn FnMut(Iova) -> Option<PhysAddr>,
    ) -> bool {
        if len == 0
            || !iova.is_aligned(MOCK_IO_PAGE_SIZE)
            || len & (MOCK_IO_PAGE_SIZE - 1) != 0
            || inclusive_last(iova.0, len).is_none()
        {
            return false;
        }
        let mut off = 0;
        while off < len {
            let cur = Iova(iova.0 + off);
            match (self.entry(cur), expected(cur)) {
                (Some(e), Some(pa)) if e.pa == pa => {}
                _ => return false,
            }
            off += MOCK_IO_PAGE_SIZE;
        }
        true
    }

    /// How many unmaps began on a mapped granule without a "start" mark or ended on one without
    /// a "last" mark (where the kernel mock would WARN). Always 0 in the huge-IOVA variant.
    pub fn boundary_violations(&self) -> u64 {
        self.boundary_violations
    }

    /// Number of 1 MiB chunks of entries currently allocated.
    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    fn set_flag(&mut self, iova: u64, flag: u64) -> bool {
        if !(MOCK_APERTURE_START..=MOCK_APERTURE_LAST).contains(&iova) {
            return false;
        }
        let (c, i) = locate(iova);
        match self.chunks[c].as_mut() {
            Some(ch) if ch[i] & PRESENT != 0 => {
                ch[i] |= flag;
                true
            }
            _ => false,
        }
    }

    fn chunk_mut(&mut self, c: usize) -> &mut [u64] {
        if self.chunks[c].is_none() {
            let ch = self
                .spare
                .pop()
                .unwrap_or_else(|| vec![0u64; GRANULES].into_boxed_slice());
            self.chunks[c] = Some(ch);
            self.chunk_count += 1;
        }
        match &mut self.chunks[c] {
            Some(ch) => ch,
            None => &mut [],
        }
    }

    fn release_chunk(&mut self, c: usize) {
        if let Some(ch) = self.chunks[c].take() {
            self.chunk_count -= 1;
            if self.spare.len() < MAX_SPARE {
                self.spare.push(ch);
            }
        }
    }

    /// Clip `(iova, len)` to the aperture as a half-open, granule-rounded range.
    fn clip(iova: u64, len: u64) -> Option<(u64, u64)> {
        let last = iova.saturating_add(len.checked_sub(1)?);
        let start = iova.max(MOCK_APERTURE_START) & PA_MASK;
        let last = last.min(MOCK_APERTURE_LAST);
        (start <= last).then(|| (start, (last | (MOCK_IO_PAGE_SIZE - 1)) + 1))
    }

    /// The first mapped IOVA in `[start, end)` (inside the aperture).
    fn first_mapped(&self, start: u64, end: u64) -> Option<u64> {
        let mut cur = start;
        while cur < end {
            let (c, i0) = locate(cur);
            let chunk_end = (chunk_base(c) + CHUNK_BYTES).min(end);
            if let (Some(ch), true) = (&self.chunks[c], self.live[c] != 0) {
                let n = ((chunk_end - cur) / MOCK_IO_PAGE_SIZE) as usize;
                if let Some(k) = ch[i0..i0 + n].iter().position(|e| e & PRESENT != 0) {
                    return Some(cur + k as u64 * MOCK_IO_PAGE_SIZE);
                }
            }
            cur = chunk_end;
        }
        None
    }

    /// Drop the huge mark from every granule of chunk `c` (splitting its huge page), setting
    /// `extra` on each.
    fn split_chunk(&mut self, c: usize, extra: u64) {
        if let Some(ch) = self.chunks[c].as_mut() {
            for e in ch.iter_mut().filter(|e| **e & PRESENT != 0) {
                *e = (*e & !HUGE) | extra;
            }
        }
    }
}

impl PageTable for MockPageTable {
    fn format(&self) -> PageTableFormat {
        PageTableFormat::Mock
    }

    fn page_sizes(&self) -> u64 {
        if self.huge_iova {
            MOCK_IO_PAGE_SIZE | MOCK_HUGE_PAGE_SIZE
        } else {
            MOCK_IO_PAGE_SIZE
        }
    }

    fn aperture(&self) -> Range {
        Range {
            start: MOCK_APERTURE_START,
            last: MOCK_APERTURE_LAST,
        }
    }

    fn map(
        &mut self,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), PageTableError> {
        let last = inclusive_last(iova.0, len).ok_or(PageTableError::InvalidRange)?;
        inclusive_last(pa.0, len).ok_or(PageTableError::InvalidRange)?;
        if !iova.is_aligned(MOCK_IO_PAGE_SIZE)
            || !pa.is_aligned(MOCK_IO_PAGE_SIZE)
            || len & (MOCK_IO_PAGE_SIZE - 1) != 0
        {
            return Err(PageTableError::Misaligned {
                iova: iova.0,
                pa: pa.0,
                len,
            });
        }
        if iova.0 < MOCK_APERTURE_START || last > MOCK_APERTURE_LAST {
            return Err(PageTableError::OutOfAperture {
                start: iova.0,
                last,
            });
        }
        let end = last + 1;
        if let Some(at) = self.first_mapped(iova.0, end) {
            return Err(PageTableError::AlreadyMapped { iova: at });
        }
        let base =
            PRESENT | (if prot.read { READ } else { 0 }) | (if prot.write { WRITE } else { 0 });
        let last_granule = last & PA_MASK;
        let huge_iova = self.huge_iova;
        let mut cur = iova.0;
        let mut cur_pa = pa.0;
        while cur < end {
            let (c, i0) = locate(cur);
            let chunk_end = (chunk_base(c) + CHUNK_BYTES).min(end);
            let n = ((chunk_end - cur) / MOCK_IO_PAGE_SIZE) as usize;
            let huge = huge_iova && n == GRANULES && cur_pa & (MOCK_HUGE_PAGE_SIZE - 1) == 0;
            let flags = base | if huge { HUGE } else { 0 };
            let first = iova.0;
            let ch = self.chunk_mut(c);
            let mut g = cur;
            for e in &mut ch[i0..i0 + n] {
                let mut v = cur_pa | flags;
                if g == first {
                    v |= START;
                }
                if g == last_granule {
                    v |= LAST;
                }
                *e = v;
                g += MOCK_IO_PAGE_SIZE;
                cur_pa += MOCK_IO_PAGE_SIZE;
            }
            self.live[c] += n as u16;
            cur = chunk_end;
        }
        self.mapped += len;
        Ok(())
    }

    /// Misaligned or zero-length requests unmap nothing and return 0; the part of the range
    /// outside the aperture is ignored. See the module documentation for boundary violations
    /// and huge-page splitting.
    fn unmap(&mut self, iova: Iova, len: u64) -> u64 {
        if !iova.is_aligned(MOCK_IO_PAGE_SIZE) || len & (MOCK_IO_PAGE_SIZE - 1) != 0 {
            return 0;
        }
        let Some((start, end)) = Self::clip(iova.0, len) else {
            return 0;
        };
        let first = start;
        let last = end - MOCK_IO_PAGE_SIZE;
        if self.huge_iova {
            // Split the huge pages the range cuts.
            for g in [first, last] {
                let (c, _) = locate(g);
                let base = chunk_base(c);
                let covered = start <= base && base + CHUNK_BYTES <= end;
                if !covered && self.raw(g) & HUGE != 0 {
                    // A dirty huge page leaves dirty pieces behind.
                    let dirty = self.chunks[c]
                        .as_ref()
                        .is_some_and(|ch| ch.iter().any(|e| e & DIRTY != 0));
                    self.split_chunk(c, if dirty { DIRTY } else { 0 });
                }
            }
        } else {
            let fe = self.raw(first);
            let le = self.raw(last);
            let bad_first = fe & PRESENT != 0 && fe & START == 0;
            let bad_last = le & PRESENT != 0 && le & LAST == 0;
            if bad_first || bad_last {
                self.boundary_violations += 1;
            }
        }
        let mut removed = 0;
        let mut cur = start;
        while cur < end {
            let (c, i0) = locate(cur);
            let chunk_end = (chunk_base(c) + CHUNK_BYTES).min(end);
            if let Some(ch) = self.chunks[c].as_mut() {
                let n = ((chunk_end - cur) / MOCK_IO_PAGE_SIZE) as usize;
                let mut gone = 0u16;
                for e in &mut ch[i0..i0 + n] {
                    if *e & PRESENT != 0 {
                        *e = 0;
                        gone += 1;
                    }
                }
                self.live[c] -= gone;
                removed += u64::from(gone) * MOCK_IO_PAGE_SIZE;
                if self.live[c] == 0 {
                    self.release_chunk(c);
                }
            }
            cur = chunk_end;
        }
        self.mapped -= removed;
        removed
    }

    /// Translation is per 2 KiB granule: `leaf_size` is always [`MOCK_IO_PAGE_SIZE`], also for
    /// granules of a huge page (use [`MockPageTable::entry`] to see the huge mark).
    fn translate(&self, iova: Iova) -> Option<Translation> {
        let e = self.raw(iova.0);
        if e & PRESENT == 0 {
            return None;
        }
        Some(Translation {
            pa: PhysAddr((e & PA_MASK) + (iova.0 & (MOCK_IO_PAGE_SIZE - 1))),
            prot: Prot {
                read: e & READ != 0,
                write: e & WRITE != 0,
            },
            leaf_size: MOCK_IO_PAGE_SIZE,
        })
    }

    fn mark_dirty(&mut self, iova: Iova) {
        if self.dirty_tracking {
            self.set_flag(iova.0, DIRTY);
        }
    }

    fn set_dirty_tracking(&mut self, enable: bool) {
        self.dirty_tracking = enable;
    }

    fn dirty_tracking(&self) -> bool {
        self.dirty_tracking
    }

    /// Reports each dirty 2 KiB granule overlapping the range; a huge page with any dirty
    /// granule reports all of its granules that overlap the range. Without `keep` the marks in
    /// the range are cleared (a dirty huge page cut by the range is split first, see the module
    /// documentation).
    fn read_and_clear_dirty(
        &mut self,
        iova: Iova,
        len: u64,
        keep: bool,
        report: &mut dyn FnMut(Iova),
    ) {
        let Some((start, end)) = Self::clip(iova.0, len) else {
            return;
        };
        let mut cur = start;
        while cur < end {
            let (c, i0) = locate(cur);
            let base = chunk_base(c);
            let chunk_end = (base + CHUNK_BYTES).min(end);
            let n = ((chunk_end - cur) / MOCK_IO_PAGE_SIZE) as usize;
            let (huge, dirty) = match &self.chunks[c] {
                Some(ch) if ch[i0] & HUGE != 0 => (true, ch.iter().any(|e| e & DIRTY != 0)),
                Some(_) => (false, false),
                None => {
                    cur = chunk_end;
                    continue;
                }
            };
            if huge && dirty {
                for k in 0..n {
                    report(Iova(cur + k as u64 * MOCK_IO_PAGE_SIZE));
                }
                if !keep {
                    if n < GRANULES {
                        // Cut by the range: split it, keeping the part outside dirty.
                        self.split_chunk(c, DIRTY);
                    }
                    if let Some(ch) = self.chunks[c].as_mut() {
                        ch[i0..i0 + n].iter_mut().for_each(|e| *e &= !DIRTY);
                    }
                }
            } else if !huge {
                if let Some(ch) = self.chunks[c].as_mut() {
                    for (k, e) in ch[i0..i0 + n].iter_mut().enumerate() {
                        if *e & (PRESENT | DIRTY) == PRESENT | DIRTY {
                            report(Iova(cur + k as u64 * MOCK_IO_PAGE_SIZE));
                            if !keep {
                                *e &= !DIRTY;
                            }
                        }
                    }
                }
            }
            cur = chunk_end;
        }
    }

    fn mapped_bytes(&self) -> u64 {
        self.mapped
    }

    /// The allocated chunk arrays (4 KiB each) plus the chunk directory.
    fn table_bytes(&self) -> u64 {
        let directory = (NCHUNKS * (std::mem::size_of::<Option<Box<[u64]>>>() + 2)) as u64;
        self.chunk_count * (GRANULES as u64 * 8) + directory
    }

    fn mappings(&self, iova: Iova, len: u64, out: &mut dyn FnMut(Iova, PhysAddr, u64, Prot)) {
        let Some((start, end)) = Self::clip(iova.0, len) else {
            return;
        };
        let mut pending: Option<(u64, u64, u64, Prot)> = None;
        let mut cur = start;
        while cur < end {
            let (c, i0) = locate(cur);
            let chunk_end = (chunk_base(c) + CHUNK_BYTES).min(end);
            if let Some(ch) = &self.chunks[c] {
                let n = ((chunk_end - cur) / MOCK_IO_PAGE_SIZE) as usize;
                for (k, &e) in ch[i0..i0 + n].iter().enumerate() {
                    if e & PRESENT == 0 {
                        continue;
                    }
                    let g = cur + k as u64 * MOCK_IO_PAGE_SIZE;
                    let pa = e & PA_MASK;
                    let prot = Prot {
                        read: e & READ != 0,
                        write: e & WRITE != 0,
                    };
                    match pending.as_mut() {
                        Some((ri, rp, rl, rprot))
                            if *ri + *rl == g && *rp + *rl == pa && *rprot == prot =>
                        {
                            *rl += MOCK_IO_PAGE_SIZE;
                        }
                        _ => {
                            if let Some((ri, rp, rl, rprot)) = pending.take() {
                                out(Iova(ri), PhysAddr(rp), rl, rprot);
                            }
                            pending = Some((g, pa, MOCK_IO_PAGE_SIZE, prot));
                        }
                    }
                }
            }
            cur = chunk_end;
        }
        if let Some((ri, rp, rl, rprot)) = pending {
            out(Iova(ri), PhysAddr(rp), rl, rprot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const G: u64 = MOCK_IO_PAGE_SIZE;
    const H: u64 = MOCK_HUGE_PAGE_SIZE;
    const A: u64 = MOCK_APERTURE_START;

    fn runs(pt: &MockPageTable, iova: u64, len: u64) -> Vec<(u64, u64, u64, Prot)> {
        let mut v = Vec::new();
        pt.mappings(Iova(iova), len, &mut |i, p, l, pr| {
            v.push((i.0, p.0, l, pr))
        });
        v
    }

    fn dirty(pt: &mut MockPageTable, iova: u64, len: u64, keep: bool) -> Vec<u64> {
        let mut v = Vec::new();
        pt.read_and_clear_dirty(Iova(iova), len, keep, &mut |i| v.push(i.0));
        v
    }

    #[test]
    fn mock_numbers_match_the_selftest() {
        assert_eq!(G, 2048);
        assert_eq!(H, 1 << 20);
        let pt = MockPageTable::new();
        assert_eq!(pt.format(), PageTableFormat::Mock);
        assert_eq!(pt.page_sizes(), 2048);
        assert_eq!(
            pt.aperture(),
            Range {
                start: 1 << 24,
                last: (1 << 31) - 1
            }
        );
        assert!(!pt.huge_iova());
        let huge = MockPageTable::new_huge_iova();
        assert_eq!(huge.page_sizes(), 2048 | (1 << 20));
        assert!(huge.huge_iova());
        assert_eq!(pt.mapped_bytes(), 0);
        assert_eq!(pt.chunk_count(), 0);
    }

    #[test]
    fn mock_map_translates_per_granule() {
        let mut pt = MockPageTable::new();
        pt.map(Iova(A + G), PhysAddr(0x8_0800), 3 * G, Prot::RO)
            .unwrap();
        let t = pt.translate(Iova(A + 2 * G + 5)).unwrap();
        assert_eq!(
            t,
            Translation {
                pa: PhysAddr(0x8_1005),
                prot: Prot::RO,
                leaf_size: G
            }
        );
        assert_eq!(pt.translate(Iova(A)), None);
        assert_eq!(pt.translate(Iova(A + 4 * G)), None);
        assert_eq!(pt.mapped_bytes(), 3 * G);
        assert_eq!(
            runs(&pt, 0, u64::MAX),
            vec![(A + G, 0x8_0800, 3 * G, Prot::RO)]
        );
    }

    #[test]
    fn mock_map_records_start_and_last_marks() {
        let mut pt = MockPageTable::new();
        pt.map(Iova(A), PhysAddr(0), 4 * G, Prot::RW).unwrap();
        pt.map(Iova(A + 4 * G), PhysAddr(0), G, Prot::RW).unwrap();
        assert_eq!(pt.entry_marks(Iova(A)), Some((true, false)));
        assert_eq!(pt.entry_marks(Iova(A + G)), Some((false, false)));
        assert_eq!(pt.entry_marks(Iova(A + 3 * G + 7)), Some((false, true)));
        assert_eq!(pt.entry_marks(Iova(A + 4 * G)), Some((true, true)));
        assert_eq!(pt.entry_marks(Iova(A + 5 * G)), None);
    }

    #[test]
    fn mock_map_outside_aperture_is_refused() {
        let mut pt = MockPageTable::new();
        assert_eq!(
            pt.map(Iova(A - G), PhysAddr(0), 2 * G, Prot::RW),
            Err(PageTableError::OutOfAperture {
                start: A - G,
                last: A + G - 1
            })
        );
        assert_eq!(
            pt.map(
                Iova(MOCK_APERTURE_LAST + 1 - G),
                PhysAddr(0),
                2 * G,
                Prot::RW
            ),
            Err(PageTableError::OutOfAperture {
                start: MOCK_APERTURE_LAST + 1 - G,
                last: MOCK_APERTURE_LAST + G
            })
        );
        pt.map(Iova(MOCK_APERTURE_LAST + 1 - G), PhysAddr(0), G, Prot::RW)
            .unwrap();
        assert_eq!(pt.mapped_bytes(), G);
    }

    #[test]
    fn mock_map_refuses_misalignment_and_bad_ranges() {
        let mut pt = MockPageTable::new();
        for (i, p, l) in [(A + 0x400, 0, G), (A, 0x400, G), (A, 0, 0x400)] {
            assert_eq!(
                pt.map(Iova(i), PhysAddr(p), l, Prot::RW),
                Err(PageTableError::Misaligned {
                    iova: i,
                    pa: p,
                    len: l
                })
            );
        }
        assert_eq!(
            pt.map(Iova(A), PhysAddr(0), 0, Prot::RW),
            Err(PageTableError::InvalidRange)
        );
        assert_eq!(
            pt.map(Iova(u64::MAX - G + 1), PhysAddr(0), 2 * G, Prot::RW),
            Err(PageTableError::InvalidRange)
        );
        assert_eq!(
            pt.map(Iova(A), PhysAddr(u64::MAX - G + 1), 2 * G, Prot::RW),
            Err(PageTableError::InvalidRange)
        );
        assert_eq!(pt.mapped_bytes(), 0);
        assert_eq!(pt.chunk_count(), 0);
    }

    #[test]
    fn mock_map_over_existing_entry_fails_and_changes_nothing() {
        let mut pt = MockPageTable::new();
        pt.map(Iova(A + 3 * H + 10 * G), PhysAddr(0), G, Prot::RW)
            .unwrap();
        let before = (runs(&pt, 0, u64::MAX), pt.mapped_bytes(), pt.table_bytes());
        assert_eq!(
            pt.map(Iova(A), PhysAddr(0), 4 * H, Prot::RW),
            Err(PageTableError::AlreadyMapped {
                iova: A + 3 * H + 10 * G
            })
        );
        assert_eq!(
            before,
            (runs(&pt, 0, u64::MAX), pt.mapped_bytes(), pt.table_bytes())
        );
        assert_eq!(pt.chunk_count(), 1);
    }

    #[test]
    fn mock_unmap_on_map_boundaries_counts_no_violation() {
        let mut pt = MockPageTable::new();
        pt.map(Iova(A), PhysAddr(0), 4 * G, Prot::RW).unwrap();
        pt.map(Iova(A + 4 * G), PhysAddr(0), 4 * G, Prot::RW)
            .unwrap();
        // A strict superset of map calls, with unmapped space around it.
        assert_eq!(pt.unmap(Iova(A - 2 * G), 12 * G), 8 * G);
        assert_eq!(pt.boundary_violations(), 0);
        assert_eq!(pt.mapped_bytes(), 0);
        assert_eq!(pt.chunk_count(), 0);
    }

    #[test]
    fn mock_unmap_cutting_a_map_counts_a_violation_and_unmaps_exactly_the_range() {
        let mut pt = MockPageTable::new();
        pt.map(Iova(A), PhysAddr(0), 8 * G, Prot::RW).unwrap();
        assert_eq!(pt.unmap(Iova(A + 2 * G), 2 * G), 2 * G);
        assert_eq!(pt.boundary_violations(), 1);
        assert_eq!(
            runs(&pt, 0, u64::MAX),
            vec![(A, 0, 2 * G, Prot::RW), (A + 4 * G, 4 * G, 4 * G, Prot::RW)]
        );
        // Ends on an unmarked granule only.
        assert_eq!(pt.unmap(Iova(A), G), G);
        assert_eq!(pt.boundary_violations(), 2);
    }

    #[test]
    fn mock_huge_iova_skips_the_boundary_check() {
        let mut pt = MockPageTable::new_huge_iova();
        pt.map(Iova(A), PhysAddr(0), 8 * G, Prot::RW).unwrap();
        assert_eq!(pt.unmap(Iova(A + 2 * G), 2 * G), 2 * G);
        assert_eq!(pt.boundary_violations(), 0);
    }

    #[test]
    fn mock_unmap_misaligned_or_outside_does_nothing() {
        let mut pt = MockPageTable::new();
        pt.map(Iova(A), PhysAddr(0), G, Prot::RW).unwrap();
        assert_eq!(pt.unmap(Iova(A + 1), G), 0);
        assert_eq!(pt.unmap(Iova(A), 1), 0);
        assert_eq!(pt.unmap(Iova(A), 0), 0);
        assert_eq!(pt.unmap(Iova(0), A), 0);
        assert_eq!(pt.unmap(Iova(1 << 31), G), 0);
        assert_eq!(pt.mapped_bytes(), G);
        assert_eq!(pt.unmap(Iova(0), !(G - 1)), G);
    }

    #[test]
    fn mock_huge_iova_marks_aligned_whole_megabytes_huge() {
        let mut pt = MockPageTable::new_huge_iova();
        pt.map(
            Iova(A + H - G),
            PhysAddr(4 * H - G),
            2 * H + 2 * G,
            Prot::RW,
        )
        .unwrap();
        let huge = |pt: &MockPageTable, i: u64| pt.entry(Iova(i)).map(|e| e.huge);
        assert_eq!(huge(&pt, A + H - G), Some(false));
        assert_eq!(huge(&pt, A + H), Some(true));
        assert_eq!(huge(&pt, A + 3 * H - G), Some(true));
        assert_eq!(huge(&pt, A + 3 * H), Some(false));
        // Same IOVA with a physical address that is not 1 MiB-aligned: no huge pages.
        let mut pt2 = MockPageTable::new_huge_iova();
        pt2.map(Iova(A), PhysAddr(G), H, Prot::RW).unwrap();
        assert_eq!(huge(&pt2, A), Some(false));
        // Plain mock never marks huge.
        let mut pt3 = MockPageTable::new();
        pt3.map(Iova(A), PhysAddr(0), H, Prot::RW).unwrap();
        assert_eq!(huge(&pt3, A), Some(false));
    }

    #[test]
    fn mock_dirty_granule_reports_once_and_clears() {
        let mut pt = MockPageTable::new();
        pt.map(Iova(A), PhysAddr(0), 4 * G, Prot::RW).unwrap();
        pt.mark_dirty(Iova(A + G));
        assert!(dirty(&mut pt, A, 4 * G, false).is_empty(), "tracking off");
        pt.set_dirty_tracking(true);
        assert!(pt.dirty_tracking());
        pt.mark_dirty(Iova(A + G + 3));
        assert_eq!(dirty(&mut pt, A, 4 * G, true), vec![A + G]);
        assert_eq!(dirty(&mut pt, A, 4 * G, false), vec![A + G]);
        assert!(dirty(&mut pt, A, 4 * G, false).is_empty());
    }

    #[test]
    fn mock_set_dirty_granule_ignores_tracking_and_reports_mapped() {
        let mut pt = MockPageTable::new();
        pt.map(Iova(A), PhysAddr(0), 2 * G, Prot::RW).unwrap();
        assert!(pt.set_dirty_granule(Iova(A + G)));
        assert!(!pt.set_dirty_granule(Iova(A + 2 * G)));
        assert!(!pt.set_dirty_granule(Iova(0)));
        assert!(pt.entry(Iova(A + G)).unwrap().dirty);
        assert_eq!(dirty(&mut pt, 0, u64::MAX, false), vec![A + G]);
    }

    #[test]
    fn mock_dirty_huge_page_reports_all_its_granules() {
        // Like the selftest's get_dirty_bitmap with hugepages: one dirty granule per huge
        // page makes the whole page dirty.
        let mut pt = MockPageTable::new_huge_iova();
        pt.set_dirty_tracking(true);
        pt.map(Iova(A), PhysAddr(0), 2 * H, Prot::RW).unwrap();
        assert!(pt.set_dirty_granule(Iova(A)));
        let got = dirty(&mut pt, A, 2 * H, false);
        assert_eq!(got, (0..512).map(|k| A + k * G).collect::<Vec<_>>());
        assert!(dirty(&mut pt, A, 2 * H, false).is_empty());
        assert!(pt.entry(Iova(A)).unwrap().huge);
    }

    #[test]
    fn mock_partial_dirty_read_of_huge_page_keeps_the_rest_dirty() {
        let mut pt = MockPageTable::new_huge_iova();
        pt.set_dirty_tracking(true);
        pt.map(Iova(A), PhysAddr(0), H, Prot::RW).unwrap();
        pt.mark_dirty(Iova(A + 100 * G));
        assert_eq!(dirty(&mut pt, A + G, G, false), vec![A + G]);
        assert!(!pt.entry(Iova(A)).unwrap().huge, "split");
        let rest = dirty(&mut pt, A, H, false);
        assert_eq!(rest.len(), 511);
        assert!(!rest.contains(&(A + G)));
    }

    #[test]
    fn mock_unmap_cutting_huge_page_splits_it() {
        let mut pt = MockPageTable::new_huge_iova();
        pt.map(Iova(A), PhysAddr(0), H, Prot::RW).unwrap();
        assert_eq!(pt.unmap(Iova(A + H - G), G), G);
        assert!(!pt.entry(Iova(A)).unwrap().huge);
        pt.set_dirty_tracking(true);
        pt.mark_dirty(Iova(A));
        assert_eq!(dirty(&mut pt, A, H, false), vec![A]);
    }

    #[test]
    fn mock_check_map_compares_every_granule() {
        let mut pt = MockPageTable::new();
        pt.map(Iova(A), PhysAddr(0x10_0000), 4 * G, Prot::RW)
            .unwrap();
        let ok = &mut |i: Iova| Some(PhysAddr(0x10_0000 + i.0 - A));
        assert!(pt.check_map(Iova(A), 4 * G, ok));
        assert!(!pt.check_map(Iova(A), 5 * G, ok), "unmapped granule");
        assert!(!pt.check_map(Iova(A + 1), G, ok), "misaligned");
        assert!(!pt.check_map(Iova(A), 0, ok), "empty");
        assert!(!pt.check_map(Iova(A), 2 * G, &mut |_| Some(PhysAddr(0x10_0000))));
    }

    #[test]
    fn mock_chunks_are_released_and_table_bytes_follow() {
        let mut pt = MockPageTable::new();
        let empty = pt.table_bytes();
        pt.map(Iova(A + H - G), PhysAddr(0), 2 * G, Prot::RW)
            .unwrap();
        assert_eq!(pt.chunk_count(), 2);
        assert_eq!(pt.table_bytes(), empty + 2 * 4096);
        assert_eq!(pt.unmap(Iova(A + H - G), G), G);
        assert_eq!(pt.chunk_count(), 1);
        assert_eq!(pt.unmap(Iova(A + H), G), G);
        assert_eq!(pt.table_bytes(), empty);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Map {
            g: u64,
            n: u64,
            pa_g: u64,
            write: bool,
        },
        Unmap {
            g: u64,
            n: u64,
        },
        MarkDirty {
            g: u64,
        },
        ReadDirty {
            g: u64,
            n: u64,
            keep: bool,
        },
    }

    /// Window of 4096 granules (8 MiB) from the aperture start; often huge-page aligned.
    fn granule() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..4096, (0u64..8).prop_map(|k| k * 512)]
    }

    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![1u64..40, (1u64..3).prop_map(|k| k * 512), 500u64..1100]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (granule(), count(), granule(), any::<bool>())
                .prop_map(|(g, n, pa_g, write)| Op::Map { g, n, pa_g, write }),
            2 => (granule(), count()).prop_map(|(g, n)| Op::Unmap { g, n }),
            2 => granule().prop_map(|g| Op::MarkDirty { g }),
            1 => (granule(), count(), any::<bool>())
                .prop_map(|(g, n, keep)| Op::ReadDirty { g, n, keep }),
        ]
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct ModelEntry {
        pa: u64,
        prot: Prot,
        start: bool,
        last: bool,
    }

    fn run_model(huge_iova: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut pt = if huge_iova {
            MockPageTable::new_huge_iova()
        } else {
            MockPageTable::new()
        };
        pt.set_dirty_tracking(true);
        let mut model: BTreeMap<u64, ModelEntry> = BTreeMap::new();
        let mut dirty_model: BTreeSet<u64> = BTreeSet::new();
        let mut violations = 0;
        let first = A / G;
        for op in ops {
            match op {
                Op::Map { g, n, pa_g, write } => {
                    let prot = Prot { read: true, write };
                    let g0 = first + g;
                    let pa = 64 * H + pa_g * G;
                    let clash = model.range(g0..g0 + n).next().map(|(&k, _)| k * G);
                    let r = pt.map(Iova(g0 * G), PhysAddr(pa), n * G, prot);
                    match clash {
                        Some(at) => {
                            prop_assert_eq!(r, Err(PageTableError::AlreadyMapped { iova: at }))
                        }
                        None => {
                            prop_assert_eq!(r, Ok(()));
                            for k in 0..n {
                                let e = ModelEntry {
                                    pa: pa + k * G,
                                    prot,
                                    start: k == 0,
                                    last: k == n - 1,
                                };
                                model.insert(g0 + k, e);
                            }
                        }
                    }
                }
                Op::Unmap { g, n } => {
                    let g0 = first + g;
                    if !huge_iova {
                        let bad_first = model.get(&g0).is_some_and(|e| !e.start);
                        let bad_last = model.get(&(g0 + n - 1)).is_some_and(|e| !e.last);
                        if bad_first || bad_last {
                            violations += 1;
                        }
                    }
                    let gone: Vec<u64> = model.range(g0..g0 + n).map(|(&k, _)| k).collect();
                    for k in &gone {
                        model.remove(k);
                        dirty_model.remove(k);
                    }
                    prop_assert_eq!(pt.unmap(Iova(g0 * G), n * G), gone.len() as u64 * G);
                }
                Op::MarkDirty { g } => {
                    let iova = (first + g) * G;
                    if let Some(e) = pt.entry(Iova(iova)) {
                        if e.huge {
                            let base = iova & !(H - 1);
                            for k in 0..512 {
                                dirty_model.insert(base / G + k);
                            }
                        } else {
                            dirty_model.insert(iova / G);
                        }
                    }
                    pt.mark_dirty(Iova(iova));
                }
                Op::ReadDirty { g, n, keep } => {
                    let g0 = first + g;
                    let want: Vec<u64> = dirty_model.range(g0..g0 + n).map(|&k| k * G).collect();
                    let got = dirty(&mut pt, g0 * G, n * G, keep);
                    prop_assert_eq!(&got, &want);
                    if !keep {
                        for i in got {
                            dirty_model.remove(&(i / G));
                        }
                    }
                }
            }
            prop_assert_eq!(pt.mapped_bytes(), model.len() as u64 * G);
            prop_assert_eq!(pt.boundary_violations(), violations);
        }
        let mut want_runs: Vec<(u64, u64, u64, Prot)> = Vec::new();
        for (&k, e) in &model {
            match want_runs.last_mut() {
                Some(r) if r.0 + r.2 == k * G && r.1 + r.2 == e.pa && r.3 == e.prot => r.2 += G,
                _ => want_runs.push((k * G, e.pa, G, e.prot)),
            }
        }
        prop_assert_eq!(runs(&pt, 0, u64::MAX), want_runs);
        for g in first..first + 5200 {
            let got = pt.entry(Iova(g * G)).map(|e| ModelEntry {
                pa: e.pa.0,
                prot: e.prot,
                start: e.start,
                last: e.last,
            });
            prop_assert_eq!(got, model.get(&g).copied());
        }
        pt.unmap(Iova(A), MOCK_APERTURE_LAST + 1 - A);
        prop_assert_eq!(pt.mapped_bytes(), 0);
        prop_assert_eq!(pt.chunk_count(), 0);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn mock_random_ops_match_a_granule_model(ops in proptest::collection::vec(op(), 1..40)) {
            run_model(false, ops)?;
        }

        #[test]
        fn mock_huge_iova_random_ops_match_a_granule_model(
            ops in proptest::collection::vec(op(), 1..40)
        ) {
            run_model(true, ops)?;
        }
    }
}
