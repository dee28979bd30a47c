//! Interval arithmetic and the IOVA allocator of an IOAS (the kernel's `iopt_alloc_iova` and
//! `interval_tree_*span*` iteration, drivers/iommu/iommufd/io_pagetable.c).
//!
//! All ranges are inclusive (`start..=last`, [`Range`]), so a range may end at `u64::MAX`.
//!
//! Invariants: a [`RangeSet`] holds disjoint, non-adjacent ranges sorted by start (touching or
//! overlapping inserts are merged), so "is this address used" and "next used range" are binary
//! searches.

use crate::error::{Error, Result};
use uiommu_platform::{Range, PAGE_SIZE};

/// The largest alignment the allocator asks for: the transparent-huge-page size (x86-64 2 MiB),
/// as the kernel does with `CONFIG_TRANSPARENT_HUGEPAGE`.
pub const MAX_ALLOC_ALIGNMENT: u64 = 1 << 21;

/// A union of inclusive ranges, kept merged and sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range>,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        RangeSet { ranges: Vec::new() }
    }

    /// The union of `ranges` (which may overlap or touch).
    pub fn from_ranges(ranges: impl IntoIterator<Item = Range>) -> Self {
        let mut v: Vec<Range> = ranges.into_iter().collect();
        v.sort();
        let mut out: Vec<Range> = Vec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(prev) if prev.last == u64::MAX || r.start <= prev.last + 1 => {
                    prev.last = prev.last.max(r.last);
                }
                _ => out.push(r),
            }
        }
        RangeSet { ranges: out }
    }

    /// The merged ranges, in order.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The first range (in address order) that ends at or after `pos`.
    pub fn next_from(&self, pos: u64) -> Option<Range> {
        let i = self.ranges.partition_point(|r| r.last < pos);
        self.ranges.get(i).copied()
    }

    /// Whether any address of `r` is in the set.
    pub fn overlaps(&self, r: &Range) -> bool {
        self.next_from(r.start).is_some_and(|n| n.start <= r.last)
    }

    /// The maximal ranges of `window` that are not in the set, in order.
    pub fn holes(&self, window: Range) -> Vec<Range> {
        holes_in(window, |pos| self.next_from(pos))
    }
}

/// The maximal sub-ranges of `window` not covered by the used ranges that `next_used` reports:
/// `next_used(pos)` must return the used range with the smallest start among those that end at
/// or after `pos` (ranges from several disjoint sets may overlap each other).
pub fn holes_in(window: Range, mut next_used: impl FnMut(u64) -> Option<Range>) -> Vec<Range> {
    let mut out = Vec::new();
    for_each_hole(window, &mut next_used, |h| {
        out.push(h);
        false
    });
    out
}

/// Call `f` on each hole of `window` in order until it returns true; returns whether it did.
fn for_each_hole(
    window: Range,
    next_used: &mut impl FnMut(u64) -> Option<Range>,
    mut f: impl FnMut(Range) -> bool,
) -> bool {
    let mut pos = window.start;
    loop {
        match next_used(pos) {
            Some(u) if u.start <= pos => {
                // `pos` is used: skip past this range.
                if u.last >= window.last {
                    return false;
                }
                pos = u.last + 1;
            }
            Some(u) if u.start <= window.last => {
                if f(Range {
                    start: pos,
                    last: u.start - 1,
                }) {
                    return true;
                }
                if u.last >= window.last {
                    return false;
                }
                pos = u.last + 1;
            }
            _ => {
                return f(Range {
                    start: pos,
                    last: window.last,
                })
            }
        }
    }
}

/// The smallest power of two not below `n` (`n` at most 2^63).
fn roundup_pow2(n: u64) -> u64 {
    n.checked_next_power_of_two().unwrap_or(1 << 63)
}

/// The alignment the allocator gives an IOVA for `length` bytes at user address `uptr`: keep the
/// low bits of the user address (so huge pages can map), capped at [`MAX_ALLOC_ALIGNMENT`].
/// EOVERFLOW for zero or huge lengths, EINVAL when below the IOAS's `iova_alignment`.
pub fn alloc_alignment(uptr: u64, length: u64, iova_alignment: u64) -> Result<u64> {
    if length == 0 || length >= u64::MAX / 2 {
        return Err(Error::Overflow);
    }
    let mut align = roundup_pow2(length);
    if uptr != 0 {
        align = align.min(1u64 << uptr.trailing_zeros());
    }
    if align >= MAX_ALLOC_ALIGNMENT {
        align = MAX_ALLOC_ALIGNMENT;
    }
    if align < iova_alignment {
        return Err(Error::Invalid(
            "user address alignment is below the IOAS alignment",
        ));
    }
    Ok(align)
}

/// The kernel's `__alloc_iova_check_range`: the start rounded up to `align` with the page offset
/// of the user address put back, if `length` bytes from there fit before `last`. (As in the
/// kernel, a start equal to `last` never fits, even for one byte.)
pub fn fit_in(start: u64, last: u64, length: u64, align: u64, page_offset: u64) -> Option<u64> {
    let aligned = (start.checked_add(align - 1)? & !(align - 1)) | page_offset;
    if aligned >= last || last - aligned < length - 1 {
        return None;
    }
    Some(aligned)
}

/// First-fit IOVA for `length` bytes (the kernel's `iopt_alloc_iova` search): within the allowed
/// ranges (or `PAGE_SIZE ..= u64::MAX - PAGE_SIZE` when none are set; IOVA 0 is never returned),
/// in the lowest hole of the used ranges that fits `length` at `align` plus `page_offset`.
pub fn find_iova(
    allowed: &RangeSet,
    mut next_used: impl FnMut(u64) -> Option<Range>,
    length: u64,
    align: u64,
    page_offset: u64,
) -> Option<u64> {
    let window = Range {
        start: PAGE_SIZE,
        last: u64::MAX - PAGE_SIZE,
    };
    let spans = if allowed.is_empty() {
        vec![window]
    } else {
        allowed
            .ranges()
            .iter()
            .filter(|r| r.overlaps(&window))
            .map(|r| Range {
                start: r.start.max(window.start),
                last: r.last.min(window.last),
            })
            .collect()
    };
    for span in spans {
        // As in the kernel, the allowed span's start is aligned first and the hole search starts
        // from there.
        let Some(start) = fit_in(span.start, span.last, length, align, page_offset) else {
            continue;
        };
        let mut found = None;
        for_each_hole(
            Range {
                start,
                last: span.last,
            },
            &mut next_used,
            |h| {
                found = fit_in(h.start, h.last, length, align, page_offset);
                found.is_some()
            },
        );
        if found.is_some() {
            return found;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u64, last: u64) -> Range {
        Range { start, last }
    }

    #[test]
    fn range_set_merges_overlapping_and_touching_ranges() {
        let s = RangeSet::from_ranges([
            r(10, 20),
            r(21, 30),
            r(5, 12),
            r(40, 50),
            r(u64::MAX - 1, u64::MAX),
        ]);
        assert_eq!(
            s.ranges(),
            &[r(5, 30), r(40, 50), r(u64::MAX - 1, u64::MAX)]
        );
        assert!(s.overlaps(&r(30, 39)));
        assert!(!s.overlaps(&r(31, 39)));
        assert_eq!(
            s.holes(r(0, u64::MAX)),
            vec![r(0, 4), r(31, 39), r(51, u64::MAX - 2)]
        );
    }

    #[test]
    fn alignment_keeps_user_address_low_bits_up_to_2m() {
        assert_eq!(alloc_alignment(0x1000, 0x3000, 1).unwrap(), 0x1000);
        assert_eq!(alloc_alignment(0, 0x3000, 1).unwrap(), 0x4000);
        assert_eq!(
            alloc_alignment(1 << 40, 1 << 30, 1).unwrap(),
            MAX_ALLOC_ALIGNMENT
        );
        assert_eq!(
            alloc_alignment(0x1800, 0x1000, 0x1000).unwrap_err().errno(),
            22
        );
        assert_eq!(alloc_alignment(0x1000, 0, 1).unwrap_err().errno(), 75);
        assert_eq!(
            alloc_alignment(0x1000, u64::MAX / 2, 1)
                .unwrap_err()
                .errno(),
            75
        );
    }

    #[test]
    fn auto_iova_respects_reserved_and_allowed_ranges() {
        let used = RangeSet::from_ranges([r(0x4000, 0x67fff)]);
        // No allowed ranges: the first page is skipped, then the hole below the reservation.
        let got = find_iova(&RangeSet::new(), |p| used.next_from(p), 0x1000, 0x1000, 0).unwrap();
        assert_eq!(got, 0x1000);
        // Too big for the low hole: placed after the reservation.
        let got = find_iova(&RangeSet::new(), |p| used.next_from(p), 0x4000, 0x4000, 0).unwrap();
        assert_eq!(got, 0x68000);
        // Allowed range: inside it.
        let allowed = RangeSet::from_ranges([r(0xc8000, 0x257fff)]);
        let got = find_iova(&allowed, |p| used.next_from(p), 0x3000, 0x1000, 0).unwrap();
        assert_eq!(got, 0xc8000);
        // Nothing fits.
        let allowed = RangeSet::from_ranges([r(0x4000, 0x67fff)]);
        assert_eq!(
            find_iova(&allowed, |p| used.next_from(p), 0x1000, 0x1000, 0),
            None
        );
    }

    proptest! {
        #[test]
        fn found_iova_is_aligned_allowed_and_free(
            used in prop::collection::vec((0u64..256, 0u64..16), 0..12),
            allowed in prop::collection::vec((0u64..256, 0u64..64), 0..4),
            len_pages in 1u64..16,
            align_shift in 0u32..4,
        ) {
            let p = PAGE_SIZE;
            let used = RangeSet::from_ranges(used.iter().map(|&(s, n)| r(s * p, (s + n + 1) * p - 1)));
            let allowed = RangeSet::from_ranges(allowed.iter().map(|&(s, n)| r(s * p, (s + n + 1) * p - 1)));
            let length = len_pages * p;
            let align = p << align_shift;
            let got = find_iova(&allowed, |x| used.next_from(x), length, align, 0);
            // Brute force over page-granular candidates: every fit lies below 400 pages.
            let brute = (1u64..400).map(|i| i * p).find(|&iova| {
                let want = r(iova, iova + length - 1);
                iova % align == 0
                    && !used.overlaps(&want)
                    && (allowed.is_empty() || allowed.ranges().iter().any(|a| a.covers(&want)))
            });
            prop_assert_eq!(got, brute);
        }

        #[test]
        fn holes_and_ranges_partition_the_window(
            a in prop::collection::vec((0u64..1000, 0u64..50), 0..10),
            b in prop::collection::vec((0u64..1000, 0u64..50), 0..10),
        ) {
            let sa = RangeSet::from_ranges(a.iter().map(|&(s, n)| r(s, s + n)));
            let sb = RangeSet::from_ranges(b.iter().map(|&(s, n)| r(s, s + n)));
            let window = r(0, 1100);
            let holes = holes_in(window, |pos| {
                match (sa.next_from(pos), sb.next_from(pos)) {
                    (Some(x), Some(y)) => Some(if x.start <= y.start { x } else { y }),
                    (x, y) => x.or(y),
                }
            });
            for addr in 0..=1100u64 {
                let used = sa.overlaps(&r(addr, addr)) || sb.overlaps(&r(addr, addr));
                let in_hole = holes.iter().any(|h| h.contains(addr));
                prop_assert_eq!(used, !in_hole, "addr {}", addr);
            }
            for w in holes.windows(2) {
                prop_assert!(w[0].last + 1 < w[1].start);
            }
        }
    }
}
