//! A 4-level radix IOMMU page table in the x86-64 style.
//!
//! The IOVA space is 48 bits wide (aperture `0 ..= 2^48 - 1`). Each table has 512 eight-byte
//! entries and resolves 9 bits of the IOVA: level 3 (the root) bits 39..=47, level 2 bits
//! 30..=38, level 1 bits 21..=29 and level 0 bits 12..=20. Leaves live at level 2 (1 GiB),
//! level 1 (2 MiB) and level 0 (4 KiB).
//!
//! Representation: all tables live in one arena, a flat `Vec<u64>` in which table `n` occupies
//! entries `n * 512 .. (n + 1) * 512`, plus a per-table count of present entries and a free
//! list. A table entry holds the child's arena index; a leaf entry holds the physical address
//! with the present, read, write, dirty and leaf bits in the low 12 bits.
//!
//! Invariants:
//! - Table 0 is the root and is never freed.
//! - `live[n]` is the number of present entries in table `n`; a non-root table whose count
//!   drops to zero is unlinked and put on the free list, so no empty non-root table is linked.
//! - Every table on the free list is all zeroes, so allocation never has to clear memory.
//! - `mapped` equals the sum of the sizes of all present leaves; `tables` counts linked tables
//!   (the root included).
//! - A leaf's physical address is aligned to its size.
//!
//! Range convention: the trait takes `(iova, len)`; inside this module ranges are half-open
//! `[start, end)` in IOVA, which cannot overflow because the aperture ends at `2^48`.

use super::{PageTable, PageTableError, PageTableFormat, Prot, Translation};
use crate::addr::{inclusive_last, Iova, PhysAddr, Range, PAGE_SIZE, SIZE_1G, SIZE_2M};
use std::fmt;

/// Number of IOVA bits the table translates.
pub const IOVA_BITS: u32 = 48;
/// The last IOVA the table can map (`2^48 - 1`).
pub const IOVA_LAST: u64 = (1 << IOVA_BITS) - 1;
/// Bytes of one table (512 entries of 8 bytes).
pub const TABLE_BYTES: u64 = 4096;

const ENTRIES: usize = 512;
const ROOT: usize = 0;
const ROOT_LEVEL: u32 = 3;

const PRESENT: u64 = 1 << 0;
const READ: u64 = 1 << 1;
const WRITE: u64 = 1 << 2;
const DIRTY: u64 = 1 << 6;
const LEAF: u64 = 1 << 7;
const ADDR_MASK: u64 = !0xfff;

#[inline]
fn shift(level: u32) -> u32 {
    12 + 9 * level
}

#[inline]
fn slot_size(level: u32) -> u64 {
    1u64 << shift(level)
}

#[inline]
fn prot_bits(prot: Prot) -> u64 {
    (if prot.read { READ } else { 0 }) | (if prot.write { WRITE } else { 0 })
}

#[inline]
fn entry_prot(e: u64) -> Prot {
    Prot {
        read: e & READ != 0,
        write: e & WRITE != 0,
    }
}

#[inline]
fn child_of(e: u64) -> usize {
    (e >> 12) as usize
}

#[inline]
fn is_leaf(e: u64) -> bool {
    e & LEAF != 0
}

/// Coalesces leaf pieces into maximal runs for [`PageTable::mappings`].
struct RunBuilder<'a> {
    pending: Option<(u64, u64, u64, Prot)>,
    out: &'a mut dyn FnMut(Iova, PhysAddr, u64, Prot),
}

impl RunBuilder<'_> {
    fn push(&mut self, iova: u64, pa: u64, len: u64, prot: Prot) {
        if let Some((ri, rp, rl, rprot)) = self.pending.as_mut() {
            if *ri + *rl == iova && *rp + *rl == pa && *rprot == prot {
                *rl += len;
                return;
            }
        }
        self.flush();
        self.pending = Some((iova, pa, len, prot));
    }

    fn flush(&mut self) {
        if let Some((i, p, l, prot)) = self.pending.take() {
            (self.out)(Iova(i), PhysAddr(p), l, prot);
        }
    }
}

/// A 4-level radix page table with 4 KiB, 2 MiB and 1 GiB leaves over a 48-bit IOVA space.
///
/// `map` uses the largest leaf that IOVA alignment, physical alignment and the remaining length
/// allow; `unmap` splits large leaves that straddle the range edge so that exactly the range is
/// unmapped. Map, unmap and translate cost O(depth) per leaf touched.
#[derive(Clone)]
pub struct RadixPageTable {
    /// The arena: table `n` is `entries[n * 512 .. (n + 1) * 512]`.
    entries: Vec<u64>,
    /// Present entries per table.
    live: Vec<u16>,
    /// Free (all-zero) tables in the arena.
    free: Vec<usize>,
    /// Linked tables, root included.
    tables: u64,
    /// Bytes mapped.
    mapped: u64,
    /// Whether `mark_dirty` records writes.
    dirty_tracking: bool,
}

impl Default for RadixPageTable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RadixPageTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RadixPageTable")
            .field("tables", &self.tables)
            .field("arena_tables", &self.live.len())
            .field("mapped_bytes", &self.mapped)
            .field("dirty_tracking", &self.dirty_tracking)
            .finish()
    }
}

impl RadixPageTable {
    /// An empty table (only the root) with aperture `0 ..= 2^48 - 1` and dirty tracking off.
    pub fn new() -> RadixPageTable {
        RadixPageTable {
            entries: vec![0; ENTRIES],
            live: vec![0],
            free: Vec::new(),
            tables: 1,
            mapped: 0,
            dirty_tracking: false,
        }
    }

    /// Number of tables currently linked into the tree (the root included).
    pub fn table_count(&self) -> u64 {
        self.tables
    }

    fn alloc_table(&mut self) -> usize {
        self.tables += 1;
        if let Some(n) = self.free.pop() {
            return n;
        }
        let n = self.live.len();
        self.entries.resize(self.entries.len() + ENTRIES, 0);
        self.live.push(0);
        n
    }

    fn free_table(&mut self, n: usize) {
        debug_assert_eq!(self.live[n], 0);
        self.tables -= 1;
        self.free.push(n);
    }

    /// Replace the leaf at arena slot `slot` (a leaf of `level`, `level >= 1`) with a table of
    /// 512 leaves of the next level down carrying the same rights and dirty mark. Returns the
    /// new table's index.
    fn split(&mut self, slot: usize, level: u32) -> usize {
        let e = self.entries[slot];
        let child = self.alloc_table();
        let child_size = slot_size(level - 1);
        let base = e & ADDR_MASK;
        let flags = e & !ADDR_MASK;
        let start = child * ENTRIES;
        let mut pa = base;
        for ent in &mut self.entries[start..start + ENTRIES] {
            *ent = pa | flags;
            pa += child_size;
        }
        self.live[child] = ENTRIES as u16;
        self.entries[slot] = ((child as u64) << 12) | PRESENT;
        child
    }

    /// The first mapped IOVA in `[start, end)` below `node` (a table of `level`).
    fn first_mapped(&self, node: usize, level: u32, start: u64, end: u64) -> Option<u64> {
        let sh = shift(level);
        let size = 1u64 << sh;
        let mut cur = start;
        while cur < end {
            let slot_end = (cur & !(size - 1)) + size;
            let chunk_end = slot_end.min(end);
            let e = self.entries[node * ENTRIES + ((cur >> sh) as usize & (ENTRIES - 1))];
            if e & PRESENT != 0 {
                if is_leaf(e) || level == 0 {
                    return Some(cur);
                }
                if let Some(a) = self.first_mapped(child_of(e), level - 1, cur, chunk_end) {
                    return Some(a);
                }
            }
            cur = chunk_end;
        }
        None
    }

    /// Map `[start, end)` to `pa..` below `node`; the range is known to be unmapped and aligned.
    fn map_in(&mut self, node: usize, level: u32, start: u64, end: u64, mut pa: u64, flags: u64) {
        let sh = shift(level);
        let size = 1u64 << sh;
        let mut cur = start;
        while cur < end {
            let slot_start = cur & !(size - 1);
            let slot_end = slot_start + size;
            let chunk_end = slot_end.min(end);
            let slot = node * ENTRIES + ((cur >> sh) as usize & (ENTRIES - 1));
            let leaf_ok = level <= 2 && cur == slot_start && chunk_end == slot_end;
            if level == 0 || (leaf_ok && pa & (size - 1) == 0) {
                self.entries[slot] = pa | flags;
                self.live[node] += 1;
            } else {
                let e = self.entries[slot];
                let child = if e & PRESENT == 0 {
                    let c = self.alloc_table();
                    self.entries[slot] = ((c as u64) << 12) | PRESENT;
                    self.live[node] += 1;
                    c
                } else {
                    child_of(e)
                };
                self.map_in(child, level - 1, cur, chunk_end, pa, flags);
            }
            pa += chunk_end - cur;
            cur = chunk_end;
        }
    }

    /// Unmap `[start, end)` below `node`; returns the bytes that were mapped there.
    fn unmap_in(&mut self, node: usize, level: u32, start: u64, end: u64) -> u64 {
        let sh = shift(level);
        let size = 1u64 << sh;
        let mut removed = 0;
        let mut cur = start;
        while cur < end {
            let slot_start = cur & !(size - 1);
            let slot_end = slot_start + size;
            let chunk_end = slot_end.min(end);
            let slot = node * ENTRIES + ((cur >> sh) as usize & (ENTRIES - 1));
            let e = self.entries[slot];
            if e & PRESENT != 0 {
                let full = cur == slot_start && chunk_end == slot_end;
                if is_leaf(e) && full {
                    self.entries[slot] = 0;
                    self.live[node] -= 1;
                    removed += size;
                } else {
                    let child = if is_leaf(e) {
                        self.split(slot, level)
                    } else {
                        child_of(e)
                    };
                    removed += self.unmap_in(child, level - 1, cur, chunk_end);
                    if self.live[child] == 0 {
                        self.entries[slot] = 0;
                        self.live[node] -= 1;
                        self.free_table(child);
                    }
                }
            }
            cur = chunk_end;
        }
        removed
    }

    /// Report (and unless `keep`, clear) dirty 4 KiB units in `[start, end)` below `node`.
    fn dirty_in(
        &mut self,
        node: usize,
        level: u32,
        start: u64,
        end: u64,
        keep: bool,
        report: &mut dyn FnMut(Iova),
    ) {
        let sh = shift(level);
        let size = 1u64 << sh;
        let mut cur = start;
        while cur < end {
            let slot_start = cur & !(size - 1);
            let slot_end = slot_start + size;
            let chunk_end = slot_end.min(end);
            let slot = node * ENTRIES + ((cur >> sh) as usize & (ENTRIES - 1));
            let e = self.entries[slot];
            if e & PRESENT != 0 {
                if !is_leaf(e) {
                    self.dirty_in(child_of(e), level - 1, cur, chunk_end, keep, report);
                } else if e & DIRTY != 0 {
                    let full = cur == slot_start && chunk_end == slot_end;
                    if keep || full {
                        let mut u = cur;
                        while u < chunk_end {
                            report(Iova(u));
                            u += PAGE_SIZE;
                        }
                        if !keep {
                            self.entries[slot] = e & !DIRTY;
                        }
                    } else {
                        // Clearing part of a dirty leaf: split it so the part outside the
                        // range stays dirty.
                        let child = self.split(slot, level);
                        self.dirty_in(child, level - 1, cur, chunk_end, keep, report);
                    }
                }
            }
            cur = chunk_end;
        }
    }

    /// Visit the leaf pieces in `[start, end)` below `node` in IOVA order.
    fn walk_in(&self, node: usize, level: u32, start: u64, end: u64, runs: &mut RunBuilder<'_>) {
        let sh = shift(level);
        let size = 1u64 << sh;
        let mut cur = start;
        while cur < end {
            let slot_start = cur & !(size - 1);
            let chunk_end = (slot_start + size).min(end);
            let e = self.entries[node * ENTRIES + ((cur >> sh) as usize & (ENTRIES - 1))];
            if e & PRESENT != 0 {
                if is_leaf(e) {
                    let pa = (e & ADDR_MASK) + (cur - slot_start);
                    runs.push(cur, pa, chunk_end - cur, entry_prot(e));
                } else {
                    self.walk_in(child_of(e), level - 1, cur, chunk_end, runs);
                }
            }
            cur = chunk_end;
        }
    }

    /// The arena slot of the leaf translating `iova` and its level.
    fn leaf_slot(&self, iova: u64) -> Option<(usize, u32)> {
        if iova > IOVA_LAST {
            return None;
        }
        let mut node = ROOT;
        let mut level = ROOT_LEVEL;
        loop {
            let slot = node * ENTRIES + ((iova >> shift(level)) as usize & (ENTRIES - 1));
            let e = self.entries[slot];
            if e & PRESENT == 0 {
                return None;
            }
            if is_leaf(e) {
                return Some((slot, level));
            }
            if level == 0 {
                return None;
            }
            node = child_of(e);
            level -= 1;
        }
    }

    /// Clip `(iova, len)` to the aperture as a half-open range, or `None` when nothing is left.
    fn clip(iova: u64, len: u64) -> Option<(u64, u64)> {
        if len == 0 || iova > IOVA_LAST {
            return None;
        }
        let last = iova.saturating_add(len - 1).min(IOVA_LAST);
        Some((iova, last + 1))
    }
}

impl PageTable for RadixPageTable {
    fn format(&self) -> PageTableFormat {
        PageTableFormat::Radix
    }

    fn page_sizes(&self) -> u64 {
        PAGE_SIZE | SIZE_2M | SIZE_1G
    }

    fn aperture(&self) -> Range {
        Range {
            start: 0,
            last: IOVA_LAST,
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
        if !iova.is_aligned(PAGE_SIZE) || !pa.is_aligned(PAGE_SIZE) || len & (PAGE_SIZE - 1) != 0 {
            return Err(PageTableError::Misaligned {
                iova: iova.0,
                pa: pa.0,
                len,
            });
        }
        if last > IOVA_LAST {
            return Err(PageTableError::OutOfAperture {
                start: iova.0,
                last,
            });
        }
        let end = last + 1;
        if let Some(at) = self.first_mapped(ROOT, ROOT_LEVEL, iova.0, end) {
            return Err(PageTableError::AlreadyMapped { iova: at });
        }
        self.map_in(
            ROOT,
            ROOT_LEVEL,
            iova.0,
            end,
            pa.0,
            prot_bits(prot) | PRESENT | LEAF,
        );
        self.mapped += len;
        Ok(())
    }

    /// Misaligned or zero-length requests unmap nothing and return 0 (like the kernel's
    /// `iommu_unmap`); the part of the range outside the aperture is ignored.
    fn unmap(&mut self, iova: Iova, len: u64) -> u64 {
        if !iova.is_aligned(PAGE_SIZE) || len & (PAGE_SIZE - 1) != 0 {
            return 0;
        }
        let Some((start, end)) = Self::clip(iova.0, len) else {
            return 0;
        };
        let removed = self.unmap_in(ROOT, ROOT_LEVEL, start, end);
        self.mapped -= removed;
        removed
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        let (slot, level) = self.leaf_slot(iova.0)?;
        let e = self.entries[slot];
        let size = slot_size(level);
        Some(Translation {
            pa: PhysAddr((e & ADDR_MASK) + (iova.0 & (size - 1))),
            prot: entry_prot(e),
            leaf_size: size,
        })
    }

    fn mark_dirty(&mut self, iova: Iova) {
        if !self.dirty_tracking {
            return;
        }
        if let Some((slot, _)) = self.leaf_slot(iova.0) {
            self.entries[slot] |= DIRTY;
        }
    }

    fn set_dirty_tracking(&mut self, enable: bool) {
        self.dirty_tracking = enable;
    }

    fn dirty_tracking(&self) -> bool {
        self.dirty_tracking
    }

    /// Reports every 4 KiB unit of a dirty leaf that overlaps the range. Without `keep`, a
    /// dirty leaf wholly inside the (4 KiB-rounded) range is cleared; one that straddles its
    /// edge is split first so that the part outside the range stays dirty.
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
        let start = start & !(PAGE_SIZE - 1);
        let end = end.next_multiple_of(PAGE_SIZE);
        self.dirty_in(ROOT, ROOT_LEVEL, start, end, keep, report);
    }

    fn mapped_bytes(&self) -> u64 {
        self.mapped
    }

    fn table_bytes(&self) -> u64 {
        self.tables * TABLE_BYTES
    }

    fn mappings(&self, iova: Iova, len: u64, out: &mut dyn FnMut(Iova, PhysAddr, u64, Prot)) {
        let Some((start, end)) = Self::clip(iova.0, len) else {
            return;
        };
        let mut runs = RunBuilder { pending: None, out };
        self.walk_in(ROOT, ROOT_LEVEL, start, end, &mut runs);
        runs.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const K4: u64 = PAGE_SIZE;
    const M2: u64 = SIZE_2M;
    const G1: u64 = SIZE_1G;

    fn runs(pt: &RadixPageTable, iova: u64, len: u64) -> Vec<(u64, u64, u64, Prot)> {
        let mut v = Vec::new();
        pt.mappings(Iova(iova), len, &mut |i, p, l, pr| {
            v.push((i.0, p.0, l, pr))
        });
        v
    }

    fn leaf(pt: &RadixPageTable, iova: u64) -> u64 {
        pt.translate(Iova(iova)).map_or(0, |t| t.leaf_size)
    }

    fn dirty(pt: &mut RadixPageTable, iova: u64, len: u64, keep: bool) -> Vec<u64> {
        let mut v = Vec::new();
        pt.read_and_clear_dirty(Iova(iova), len, keep, &mut |i| v.push(i.0));
        v
    }

    #[test]
    fn new_table_is_empty_with_48_bit_aperture() {
        let pt = RadixPageTable::new();
        assert_eq!(pt.format(), PageTableFormat::Radix);
        assert_eq!(
            pt.aperture(),
            Range {
                start: 0,
                last: (1 << 48) - 1
            }
        );
        assert_eq!(pt.page_sizes(), K4 | M2 | G1);
        assert_eq!(pt.mapped_bytes(), 0);
        assert_eq!(pt.table_bytes(), TABLE_BYTES);
        assert!(!pt.dirty_tracking());
        assert_eq!(pt.translate(Iova(0)), None);
    }

    #[test]
    fn map_4k_translates_with_offset_and_rights() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(0x1234_5000), PhysAddr(0x9_8000), K4, Prot::RO)
            .unwrap();
        let t = pt.translate(Iova(0x1234_5abc)).unwrap();
        assert_eq!(
            t,
            Translation {
                pa: PhysAddr(0x9_8abc),
                prot: Prot::RO,
                leaf_size: K4
            }
        );
        assert_eq!(pt.translate(Iova(0x1234_6000)), None);
        assert_eq!(pt.translate(Iova(0x1234_4fff)), None);
        assert_eq!(pt.mapped_bytes(), K4);
        // Root plus one table at each of the three lower levels.
        assert_eq!(pt.table_bytes(), 4 * TABLE_BYTES);
    }

    #[test]
    fn map_aligned_2m_uses_a_2m_leaf() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(3 * M2), PhysAddr(7 * M2), M2, Prot::RW)
            .unwrap();
        let t = pt.translate(Iova(3 * M2 + 0x1_2345)).unwrap();
        assert_eq!(t.leaf_size, M2);
        assert_eq!(t.pa, PhysAddr(7 * M2 + 0x1_2345));
        assert_eq!(pt.table_bytes(), 3 * TABLE_BYTES);
    }

    #[test]
    fn map_aligned_1g_uses_a_1g_leaf() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(5 * G1), PhysAddr(2 * G1), G1, Prot::WO)
            .unwrap();
        let t = pt.translate(Iova(6 * G1 - 1)).unwrap();
        assert_eq!(
            t,
            Translation {
                pa: PhysAddr(3 * G1 - 1),
                prot: Prot::WO,
                leaf_size: G1
            }
        );
        assert_eq!(pt.mapped_bytes(), G1);
        assert_eq!(pt.table_bytes(), 2 * TABLE_BYTES);
        assert_eq!(runs(&pt, 0, 1 << 48), vec![(5 * G1, 2 * G1, G1, Prot::WO)]);
    }

    #[test]
    fn map_with_only_4k_aligned_pa_falls_back_to_4k_leaves() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(G1), PhysAddr(M2 + K4), M2, Prot::RW).unwrap();
        assert_eq!(leaf(&pt, G1), K4);
        assert_eq!(leaf(&pt, G1 + M2 - K4), K4);
        assert_eq!(
            pt.translate(Iova(G1 + M2 - 1)).unwrap().pa,
            PhysAddr(2 * M2 + K4 - 1)
        );
        assert_eq!(runs(&pt, 0, 1 << 48), vec![(G1, M2 + K4, M2, Prot::RW)]);
    }

    #[test]
    fn map_mixed_range_uses_largest_leaves() {
        let mut pt = RadixPageTable::new();
        let start = G1 - M2 - K4;
        let len = K4 + M2 + G1 + M2 + K4;
        pt.map(Iova(start), PhysAddr(start + 4 * G1), len, Prot::RW)
            .unwrap();
        assert_eq!(leaf(&pt, start), K4);
        assert_eq!(leaf(&pt, G1 - M2), M2);
        assert_eq!(leaf(&pt, G1), G1);
        assert_eq!(leaf(&pt, 2 * G1), M2);
        assert_eq!(leaf(&pt, 2 * G1 + M2), K4);
        assert_eq!(leaf(&pt, 2 * G1 + M2 + K4), 0);
        assert_eq!(pt.mapped_bytes(), len);
        assert_eq!(
            runs(&pt, 0, 1 << 48),
            vec![(start, start + 4 * G1, len, Prot::RW)]
        );
    }

    #[test]
    fn map_at_top_of_aperture_works_and_past_it_is_refused() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(IOVA_LAST + 1 - G1), PhysAddr(0), G1, Prot::RW)
            .unwrap();
        assert_eq!(leaf(&pt, IOVA_LAST), G1);
        assert_eq!(
            pt.map(Iova(IOVA_LAST + 1 - K4), PhysAddr(0), 2 * K4, Prot::RW),
            Err(PageTableError::OutOfAperture {
                start: IOVA_LAST + 1 - K4,
                last: IOVA_LAST + K4
            })
        );
        assert!(pt.translate(Iova(IOVA_LAST + 1)).is_none());
    }

    #[test]
    fn map_refuses_bad_arguments() {
        let mut pt = RadixPageTable::new();
        assert_eq!(
            pt.map(Iova(0), PhysAddr(0), 0, Prot::RW),
            Err(PageTableError::InvalidRange)
        );
        assert_eq!(
            pt.map(Iova(u64::MAX - 0xfff), PhysAddr(0), 2 * K4, Prot::RW),
            Err(PageTableError::InvalidRange)
        );
        assert_eq!(
            pt.map(Iova(0), PhysAddr(u64::MAX - 0xfff), 2 * K4, Prot::RW),
            Err(PageTableError::InvalidRange)
        );
        for (i, p, l) in [(0x800, 0, K4), (0, 0x800, K4), (0, 0, 0x800)] {
            assert_eq!(
                pt.map(Iova(i), PhysAddr(p), l, Prot::RW),
                Err(PageTableError::Misaligned {
                    iova: i,
                    pa: p,
                    len: l
                })
            );
        }
        assert_eq!(pt.mapped_bytes(), 0);
        assert_eq!(pt.table_bytes(), TABLE_BYTES);
    }

    #[test]
    fn map_over_existing_entry_fails_and_changes_nothing() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(G1 + 5 * K4), PhysAddr(0x10_0000), K4, Prot::RW)
            .unwrap();
        let before = (runs(&pt, 0, 1 << 48), pt.mapped_bytes(), pt.table_bytes());
        // A large map whose last page overlaps: found, nothing is written.
        assert_eq!(
            pt.map(Iova(0), PhysAddr(0), G1 + 6 * K4, Prot::RW),
            Err(PageTableError::AlreadyMapped { iova: G1 + 5 * K4 })
        );
        assert_eq!(
            before,
            (runs(&pt, 0, 1 << 48), pt.mapped_bytes(), pt.table_bytes())
        );
        assert_eq!(leaf(&pt, 0), 0);
    }

    #[test]
    fn map_inside_existing_large_leaf_fails() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(G1), PhysAddr(0), G1, Prot::RW).unwrap();
        assert_eq!(
            pt.map(Iova(G1 + 7 * M2 + K4), PhysAddr(0), K4, Prot::RW),
            Err(PageTableError::AlreadyMapped {
                iova: G1 + 7 * M2 + K4
            })
        );
        assert_eq!(
            pt.map(Iova(G1 - K4), PhysAddr(0), 2 * K4, Prot::RW),
            Err(PageTableError::AlreadyMapped { iova: G1 })
        );
        assert_eq!(pt.table_bytes(), 2 * TABLE_BYTES);
    }

    #[test]
    fn unmap_returns_bytes_mapped_within_range() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(0x1000), PhysAddr(0), K4, Prot::RW).unwrap();
        pt.map(Iova(0x5000), PhysAddr(0), 2 * K4, Prot::RW).unwrap();
        pt.map(Iova(M2), PhysAddr(0), M2, Prot::RW).unwrap();
        assert_eq!(pt.unmap(Iova(0), 0x6000), 2 * K4);
        assert_eq!(pt.mapped_bytes(), K4 + M2);
        assert_eq!(pt.unmap(Iova(0), 0x6000), 0);
        assert_eq!(pt.unmap(Iova(0), 1 << 48), K4 + M2);
        assert_eq!(pt.mapped_bytes(), 0);
    }

    #[test]
    fn unmap_inside_1g_leaf_splits_it() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(G1), PhysAddr(3 * G1), G1, Prot::RW).unwrap();
        let hole = G1 + 300 * M2 + 7 * K4;
        assert_eq!(pt.unmap(Iova(hole), K4), K4);
        assert_eq!(pt.translate(Iova(hole)), None);
        assert_eq!(pt.mapped_bytes(), G1 - K4);
        assert_eq!(leaf(&pt, hole - K4), K4);
        assert_eq!(leaf(&pt, hole + K4), K4);
        assert_eq!(leaf(&pt, G1), M2);
        assert_eq!(leaf(&pt, 2 * G1 - 1), M2);
        assert_eq!(
            pt.translate(Iova(hole + K4)).unwrap().pa,
            PhysAddr(hole + K4 + 2 * G1)
        );
        assert_eq!(
            runs(&pt, 0, 1 << 48),
            vec![
                (G1, 3 * G1, hole - G1, Prot::RW),
                (hole + K4, hole + K4 + 2 * G1, 2 * G1 - hole - K4, Prot::RW)
            ]
        );
        // Root, L2, the split 1 GiB's table of 2 MiB leaves, the split 2 MiB's table.
        assert_eq!(pt.table_bytes(), 4 * TABLE_BYTES);
    }

    #[test]
    fn unmap_inside_2m_leaf_splits_it() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(M2), PhysAddr(M2), M2, Prot::RO).unwrap();
        assert_eq!(pt.unmap(Iova(M2 + K4), M2 - 2 * K4), M2 - 2 * K4);
        assert_eq!(leaf(&pt, M2), K4);
        assert_eq!(leaf(&pt, 2 * M2 - K4), K4);
        assert_eq!(pt.translate(Iova(M2 + K4)), None);
        assert_eq!(pt.mapped_bytes(), 2 * K4);
    }

    #[test]
    fn unmap_range_straddling_two_large_leaves_unmaps_exactly_it() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(0), PhysAddr(0), 2 * G1, Prot::RW).unwrap();
        assert_eq!(pt.unmap(Iova(G1 - K4), 2 * K4), 2 * K4);
        assert_eq!(pt.mapped_bytes(), 2 * G1 - 2 * K4);
        assert_eq!(
            runs(&pt, 0, 1 << 48),
            vec![
                (0, 0, G1 - K4, Prot::RW),
                (G1 + K4, G1 + K4, G1 - K4, Prot::RW)
            ]
        );
    }

    #[test]
    fn unmapping_everything_frees_all_tables_and_they_are_reused() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(0x7000), PhysAddr(0), 5 * M2, Prot::RW).unwrap();
        pt.map(Iova(100 * G1), PhysAddr(0), K4, Prot::RW).unwrap();
        assert!(pt.table_bytes() > TABLE_BYTES);
        let arena = pt.live.len();
        assert_eq!(pt.unmap(Iova(0), 1 << 48), 5 * M2 + K4);
        assert_eq!(pt.table_bytes(), TABLE_BYTES);
        assert_eq!(pt.table_count(), 1);
        pt.map(Iova(0x7000), PhysAddr(0), 5 * M2, Prot::RW).unwrap();
        assert_eq!(pt.live.len(), arena);
    }

    #[test]
    fn unmap_misaligned_or_empty_does_nothing() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(0), PhysAddr(0), M2, Prot::RW).unwrap();
        assert_eq!(pt.unmap(Iova(0x800), K4), 0);
        assert_eq!(pt.unmap(Iova(0), 0x800), 0);
        assert_eq!(pt.unmap(Iova(0), 0), 0);
        assert_eq!(pt.unmap(Iova(1 << 48), K4), 0);
        assert_eq!(pt.unmap(Iova(u64::MAX - 0xfff), K4), 0);
        assert_eq!(pt.mapped_bytes(), M2);
        assert_eq!(leaf(&pt, 0), M2);
    }

    #[test]
    fn unmap_running_past_aperture_is_clipped() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(IOVA_LAST + 1 - K4), PhysAddr(0), K4, Prot::RW)
            .unwrap();
        assert_eq!(pt.unmap(Iova(IOVA_LAST + 1 - K4), u64::MAX - IOVA_LAST), K4);
        assert_eq!(pt.mapped_bytes(), 0);
    }

    #[test]
    fn mark_dirty_is_ignored_while_tracking_is_off() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(0), PhysAddr(0), K4, Prot::RW).unwrap();
        pt.mark_dirty(Iova(0));
        assert!(dirty(&mut pt, 0, K4, false).is_empty());
        pt.set_dirty_tracking(true);
        assert!(pt.dirty_tracking());
        pt.mark_dirty(Iova(0x10));
        pt.mark_dirty(Iova(0x5000)); // unmapped: ignored
        assert_eq!(dirty(&mut pt, 0, 1 << 48, false), vec![0]);
        assert!(dirty(&mut pt, 0, 1 << 48, false).is_empty());
    }

    #[test]
    fn dirty_2m_leaf_reports_every_4k_unit_and_keep_does_not_clear() {
        let mut pt = RadixPageTable::new();
        pt.set_dirty_tracking(true);
        pt.map(Iova(M2), PhysAddr(0), M2, Prot::RW).unwrap();
        pt.mark_dirty(Iova(M2 + 0x1234));
        let expect: Vec<u64> = (0..512).map(|k| M2 + k * K4).collect();
        assert_eq!(dirty(&mut pt, 0, G1, true), expect);
        assert_eq!(dirty(&mut pt, 0, G1, false), expect);
        assert!(dirty(&mut pt, 0, G1, false).is_empty());
        assert_eq!(leaf(&pt, M2), M2);
    }

    #[test]
    fn partial_dirty_read_of_large_leaf_keeps_the_rest_dirty() {
        let mut pt = RadixPageTable::new();
        pt.set_dirty_tracking(true);
        pt.map(Iova(0), PhysAddr(0), G1, Prot::RW).unwrap();
        pt.mark_dirty(Iova(5));
        // Unaligned range: rounded out to the 4 KiB units it overlaps.
        assert_eq!(dirty(&mut pt, M2 + 0x800, K4, false), vec![M2, M2 + K4]);
        assert_eq!(pt.mapped_bytes(), G1);
        let rest = dirty(&mut pt, 0, G1, false);
        assert_eq!(rest.len(), 262144 - 2);
        assert!(!rest.contains(&M2) && !rest.contains(&(M2 + K4)));
        assert!(dirty(&mut pt, 0, G1, false).is_empty());
    }

    #[test]
    fn split_by_unmap_keeps_dirty_mark_on_the_pieces() {
        let mut pt = RadixPageTable::new();
        pt.set_dirty_tracking(true);
        pt.map(Iova(0), PhysAddr(0), M2, Prot::RW).unwrap();
        pt.mark_dirty(Iova(0));
        pt.unmap(Iova(K4), M2 - K4);
        assert_eq!(dirty(&mut pt, 0, M2, false), vec![0]);
    }

    #[test]
    fn mappings_coalesce_contiguous_leaves_and_break_on_rights_or_pa() {
        let mut pt = RadixPageTable::new();
        pt.map(Iova(0), PhysAddr(0), M2 - K4, Prot::RW).unwrap();
        pt.map(Iova(M2 - K4), PhysAddr(M2 - K4), K4 + M2, Prot::RW)
            .unwrap();
        pt.map(Iova(2 * M2), PhysAddr(2 * M2), K4, Prot::RO)
            .unwrap();
        pt.map(Iova(2 * M2 + K4), PhysAddr(0), K4, Prot::RO)
            .unwrap();
        assert_eq!(
            runs(&pt, 0, G1),
            vec![
                (0, 0, 2 * M2, Prot::RW),
                (2 * M2, 2 * M2, K4, Prot::RO),
                (2 * M2 + K4, 0, K4, Prot::RO)
            ]
        );
        // Clipped to the asked range.
        assert_eq!(runs(&pt, K4, K4), vec![(K4, K4, K4, Prot::RW)]);
        assert!(runs(&pt, 0, 0).is_empty());
    }

    #[test]
    fn map_unmap_4k_at_fixed_iova_reuses_tables() {
        let mut pt = RadixPageTable::new();
        for _ in 0..1000 {
            pt.map(Iova(0x7654_3000), PhysAddr(0x1000), K4, Prot::RW)
                .unwrap();
            assert_eq!(pt.unmap(Iova(0x7654_3000), K4), K4);
        }
        assert_eq!(pt.live.len(), 4);
        assert_eq!(pt.table_bytes(), TABLE_BYTES);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Map {
            page: u64,
            pages: u64,
            pa_page: u64,
            write: bool,
        },
        Unmap {
            page: u64,
            pages: u64,
        },
        MarkDirty {
            page: u64,
        },
        ReadDirty {
            page: u64,
            pages: u64,
            keep: bool,
        },
    }

    /// Window of 4096 pages (16 MiB); IOVAs and lengths often 2 MiB-aligned.
    fn page_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..4096, (0u64..8).prop_map(|k| k * 512)]
    }

    fn len_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![1u64..40, (1u64..4).prop_map(|k| k * 512), 500u64..1100]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (page_strategy(), len_strategy(), page_strategy(), any::<bool>())
                .prop_map(|(page, pages, pa_page, write)| Op::Map { page, pages, pa_page, write }),
            2 => (page_strategy(), len_strategy()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
            2 => page_strategy().prop_map(|page| Op::MarkDirty { page }),
            1 => (page_strategy(), len_strategy(), any::<bool>())
                .prop_map(|(page, pages, keep)| Op::ReadDirty { page, pages, keep }),
        ]
    }

    /// Coalesced runs of the reference model, like `mappings`.
    fn model_runs(model: &BTreeMap<u64, (u64, Prot)>) -> Vec<(u64, u64, u64, Prot)> {
        let mut v: Vec<(u64, u64, u64, Prot)> = Vec::new();
        for (&page, &(pa, prot)) in model {
            let iova = page * K4;
            if let Some(last) = v.last_mut() {
                if last.0 + last.2 == iova && last.1 + last.2 == pa && last.3 == prot {
                    last.2 += K4;
                    continue;
                }
            }
            v.push((iova, pa, K4, prot));
        }
        v
    }

    /// Subtract `[s, e)` from disjoint sorted intervals; returns the bytes removed.
    fn subtract(iv: &mut Vec<(u64, u64)>, s: u64, e: u64) -> u64 {
        let mut removed = 0;
        let mut out = Vec::new();
        for &(a, b) in iv.iter() {
            let (lo, hi) = (a.max(s), b.min(e));
            if lo >= hi {
                out.push((a, b));
                continue;
            }
            removed += hi - lo;
            if a < lo {
                out.push((a, lo));
            }
            if hi < b {
                out.push((hi, b));
            }
        }
        *iv = out;
        removed
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn unmapping_pieces_of_1g_leaves_matches_an_interval_model(
            cuts in proptest::collection::vec(
                (0u64..(3 * G1 / K4), prop_oneof![1u64..600, 1u64..200_000]),
                1..12,
            )
        ) {
            let base = G1;
            let pa = 8 * G1;
            let mut pt = RadixPageTable::new();
            pt.map(Iova(base), PhysAddr(pa), 2 * G1, Prot::RW).unwrap();
            let mut model = vec![(base, base + 2 * G1)];
            for (page, pages) in cuts {
                let (s, e) = (page * K4, page * K4 + pages * K4);
                let want = subtract(&mut model, s, e);
                prop_assert_eq!(pt.unmap(Iova(s), e - s), want);
                let total: u64 = model.iter().map(|(a, b)| b - a).sum();
                prop_assert_eq!(pt.mapped_bytes(), total);
            }
            let want: Vec<_> =
                model.iter().map(|&(a, b)| (a, a - base + pa, b - a, Prot::RW)).collect();
            prop_assert_eq!(runs(&pt, 0, 1 << 48), want);
            for &(a, b) in &model {
                prop_assert_eq!(pt.translate(Iova(a)).map(|t| t.pa.0), Some(a - base + pa));
                prop_assert_eq!(pt.translate(Iova(b - 1)).map(|t| t.pa.0), Some(b - 1 - base + pa));
                prop_assert!(pt.translate(Iova(b)).is_none() || model.iter().any(|&(c, _)| c == b));
            }
            pt.unmap(Iova(0), 1 << 48);
            prop_assert_eq!(pt.table_bytes(), TABLE_BYTES);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn random_ops_match_a_4k_page_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
            let base = 3 * G1 - 8 * M2; // the window straddles a 1 GiB boundary
            let pa_base = 64 * G1;
            let mut pt = RadixPageTable::new();
            pt.set_dirty_tracking(true);
            let mut model: BTreeMap<u64, (u64, Prot)> = BTreeMap::new();
            let mut dirty_model: BTreeSet<u64> = BTreeSet::new();
            let first_page = base / K4;
            for op in ops {
                match op {
                    Op::Map { page, pages, pa_page, write } => {
                        let prot = Prot { read: true, write };
                        let p0 = first_page + page;
                        let pa = pa_base + pa_page * K4;
                        let clash = model.range(p0..p0 + pages).next().map(|(&p, _)| p * K4);
                        let r = pt.map(Iova(p0 * K4), PhysAddr(pa), pages * K4, prot);
                        match clash {
                            Some(at) => prop_assert_eq!(r, Err(PageTableError::AlreadyMapped { iova: at })),
                            None => {
                                prop_assert_eq!(r, Ok(()));
                                for k in 0..pages {
                                    model.insert(p0 + k, (pa + k * K4, prot));
                                }
                            }
                        }
                    }
                    Op::Unmap { page, pages } => {
                        let p0 = first_page + page;
                        let gone: Vec<u64> = model.range(p0..p0 + pages).map(|(&p, _)| p).collect();
                        for p in &gone {
                            model.remove(p);
                            dirty_model.remove(p);
                        }
                        prop_assert_eq!(pt.unmap(Iova(p0 * K4), pages * K4), gone.len() as u64 * K4);
                    }
                    Op::MarkDirty { page } => {
                        let iova = (first_page + page) * K4;
                        if let Some(t) = pt.translate(Iova(iova)) {
                            let start = iova & !(t.leaf_size - 1);
                            for k in 0..t.leaf_size / K4 {
                                dirty_model.insert(start / K4 + k);
                            }
                        }
                        pt.mark_dirty(Iova(iova));
                    }
                    Op::ReadDirty { page, pages, keep } => {
                        let p0 = first_page + page;
                        let want: Vec<u64> =
                            dirty_model.range(p0..p0 + pages).map(|&p| p * K4).collect();
                        let got = dirty(&mut pt, p0 * K4, pages * K4, keep);
                        prop_assert_eq!(&got, &want);
                        if !keep {
                            for p in got {
                                dirty_model.remove(&(p / K4));
                            }
                        }
                    }
                }
                prop_assert_eq!(pt.mapped_bytes(), model.len() as u64 * K4);
                prop_assert_eq!(runs(&pt, 0, 1 << 48), model_runs(&model));
            }
            for page in first_page..first_page + 5200 {
                let t = pt.translate(Iova(page * K4 + 8));
                let m = model.get(&page).copied();
                prop_assert_eq!(t.map(|t| (t.pa.0 - 8, t.prot)), m);
            }
            pt.unmap(Iova(0), 1 << 48);
            prop_assert_eq!(pt.mapped_bytes(), 0);
            prop_assert_eq!(pt.table_bytes(), TABLE_BYTES);
        }
    }
}
