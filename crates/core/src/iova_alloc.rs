//! Interval arithmetic and the IOVA allocator of an IOAS (the kernel's `iopt_alloc_iova` and
//! `interval_tree_*span*` iteration, drivers/iommu/iommufd/io_pagetable.c).
//!
//! All ranges are inclusive (`start..=last`, [`Range`]), so a range may end at `u64::MAX`.
//!
//! Invariants:
//! - A [`RangeSet`] holds disjoint, non-adjacent ranges sorted by start (touching or overlapping
//!   inserts are merged), so "is this address used" and "next used range" are binary searches.
//! - A [`HoleIndex`] holds exactly the maximal free ranges ("holes") of `0..=u64::MAX` left by
//!   the used ranges its owner told it about ([`HoleIndex::occupy`] / [`HoleIndex::release`]):
//!   disjoint, non-adjacent, never empty. They live in a treap (a binary search tree by start,
//!   heap-ordered by a hashed priority) where every node also stores the largest `last - start`
//!   of its subtree. The IOAS keeps it equal to the complement of its areas and reserved ranges.
//!
//! Allocation is first fit, exactly the kernel's: [`HoleIndex::find`] returns the same IOVA as
//! the scanning [`find_iova`] (kept as the reference the tests compare against), but it skips
//! every subtree whose largest hole is too small for the length, so a call costs O(log n)
//! expected (n = number of holes) plus O(log n) for each hole that is long enough but that the
//! alignment or page offset of the request makes miss (none when the holes start on multiples
//! of the alignment, as page-granular 4 KiB maps do), times the allowed ranges visited.

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
/// `None` also for a zero length or an alignment that is not a power of two (never asked for).
pub fn fit_in(start: u64, last: u64, length: u64, align: u64, page_offset: u64) -> Option<u64> {
    if length == 0 || !align.is_power_of_two() {
        return None;
    }
    let aligned = (start.checked_add(align - 1)? & !(align - 1)) | page_offset;
    if aligned >= last || last - aligned < length - 1 {
        return None;
    }
    Some(aligned)
}

/// The allocator's window: IOVA 0 and the last page are never handed out.
const ALLOC_WINDOW: Range = Range {
    start: PAGE_SIZE,
    last: u64::MAX - PAGE_SIZE,
};

/// The spans the allocator searches, in order: the allowed ranges clipped to [`ALLOC_WINDOW`],
/// or the whole window when no range is allowed explicitly.
fn alloc_spans(allowed: &RangeSet) -> impl Iterator<Item = Range> + '_ {
    let all = allowed.is_empty().then_some(ALLOC_WINDOW);
    all.into_iter().chain(
        allowed
            .ranges()
            .iter()
            .filter(|r| r.overlaps(&ALLOC_WINDOW))
            .map(|r| Range {
                start: r.start.max(ALLOC_WINDOW.start),
                last: r.last.min(ALLOC_WINDOW.last),
            }),
    )
}

/// First-fit IOVA for `length` bytes (the kernel's `iopt_alloc_iova` search): within the allowed
/// ranges (or `PAGE_SIZE ..= u64::MAX - PAGE_SIZE` when none are set; IOVA 0 is never returned),
/// in the lowest hole of the used ranges that fits `length` at `align` plus `page_offset`.
///
/// This is the scanning reference: it walks every used range from the bottom of each span, so
/// it costs O(used ranges) per call. The engine allocates with [`HoleIndex::find`], which
/// returns the same answer; the tests compare the two.
pub fn find_iova(
    allowed: &RangeSet,
    mut next_used: impl FnMut(u64) -> Option<Range>,
    length: u64,
    align: u64,
    page_offset: u64,
) -> Option<u64> {
    for span in alloc_spans(allowed) {
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

/// "No node" in the [`HoleIndex`] arena.
const NIL: u32 = u32::MAX;

/// One hole in the [`HoleIndex`] treap (32 bytes).
#[derive(Clone, Copy, Debug)]
struct Node {
    /// First free address.
    start: u64,
    /// `last - start` of the hole.
    span: u64,
    /// The largest `span` in the subtree rooted here.
    max_span: u64,
    /// Subtree of smaller starts, or [`NIL`].
    left: u32,
    /// Subtree of larger starts, or [`NIL`].
    right: u32,
}

/// The free ranges of a 64-bit address space, indexed for first-fit allocation in O(log n).
///
/// A treap keyed by hole start in an arena (`Vec` of 32-byte nodes with `u32` links and a free
/// list), each node augmented with the largest hole length of its subtree. Priorities are a hash
/// of the node's arena slot with a per-index random seed (not of the start, so that a hole can
/// grow or shrink in place), so the expected depth is O(log n) whatever order holes come in. Memory: 32 bytes per hole (plus the `Vec`'s growth slack and 4 bytes per
/// recycled slot); there is at most one hole per maximal run of used ranges, plus one.
///
/// Operations (n = number of holes): [`HoleIndex::occupy`] and [`HoleIndex::release`] cost
/// O((1 + k) log n) expected for k holes touched; mapping or unmapping an area (which never
/// overlaps another used range) changes one or two holes in place, without the general path's
/// temporary list; [`HoleIndex::hole_at`] O(log n);
/// [`HoleIndex::find`] as described in the module documentation.
#[derive(Clone, Debug)]
pub struct HoleIndex {
    nodes: Vec<Node>,
    /// Arena slots free for reuse.
    free: Vec<u32>,
    root: u32,
    seed: u64,
}

impl Default for HoleIndex {
    fn default() -> Self {
        Self::new()
    }
}

/// SplitMix64's finaliser: the priority of a start.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl HoleIndex {
    /// An index of an empty address space: one hole, `0..=u64::MAX`.
    pub fn new() -> Self {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x696f_7661u64);
        let mut ix = HoleIndex {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            seed,
        };
        ix.insert(0, u64::MAX);
        ix
    }

    /// Number of holes.
    pub fn len(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Whether there is no hole (the whole space is used).
    pub fn is_empty(&self) -> bool {
        self.root == NIL
    }

    /// Bytes of memory the index holds (arena and free list capacity).
    pub fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.free.capacity() * std::mem::size_of::<u32>()
    }

    /// All holes, in address order (O(n); for tests and invariant checks).
    pub fn holes(&self) -> Vec<Range> {
        let mut out = Vec::with_capacity(self.len());
        self.collect(self.root, 0, u64::MAX, &mut out);
        out
    }

    /// The hole containing `addr`, if `addr` is free.
    pub fn hole_at(&self, addr: u64) -> Option<Range> {
        self.pred(addr).filter(|h| h.last >= addr)
    }

    /// Mark `r` used: the holes it overlaps shrink or split (parts of `r` already used are
    /// fine). An empty `r` (`start > last`) changes nothing.
    pub fn occupy(&mut self, r: Range) {
        if r.start > r.last {
            return;
        }
        // The common case (an area mapped into free IOVA): `r` lies inside one hole, which is
        // shrunk in place (its start may move: the neighbours keep the order) or split in two.
        if let Some(h) = self.hole_at(r.start).filter(|h| h.last >= r.last) {
            match (h.start < r.start, h.last > r.last) {
                (false, false) => self.remove(h.start),
                (false, true) => self.rekey(h.start, r.last + 1, h.last),
                (true, false) => self.rekey(h.start, h.start, r.start - 1),
                (true, true) => {
                    self.rekey(h.start, h.start, r.start - 1);
                    self.insert(r.last + 1, h.last);
                }
            }
            return;
        }
        for h in self.overlapping(r.start, r.last) {
            self.remove(h.start);
            if h.start < r.start {
                self.insert(h.start, r.start - 1);
            }
            if h.last > r.last {
                self.insert(r.last + 1, h.last);
            }
        }
    }

    /// Mark all of `r` free, merging it with the holes it overlaps or touches. The owner must
    /// then [`HoleIndex::occupy`] whatever inside `r` is still used. An empty `r` changes
    /// nothing.
    pub fn release(&mut self, r: Range) {
        if r.start > r.last {
            return;
        }
        // The common case (an area unmapped): no hole overlaps `r`; it joins the hole ending
        // just below it and the one starting just above it, if any, in place.
        let below = self.pred(r.last);
        if below.is_none_or(|b| b.last < r.start) {
            let left = below.filter(|b| b.last.checked_add(1) == Some(r.start));
            let right = r
                .last
                .checked_add(1)
                .and_then(|n| self.pred(n))
                .filter(|h| h.start.checked_sub(1) == Some(r.last));
            match (left, right) {
                (Some(lh), Some(rh)) => {
                    self.remove(rh.start);
                    self.rekey(lh.start, lh.start, rh.last);
                }
                (Some(lh), None) => self.rekey(lh.start, lh.start, r.last),
                (None, Some(rh)) => self.rekey(rh.start, r.start, rh.last),
                (None, None) => self.insert(r.start, r.last),
            }
            return;
        }
        let (mut lo, mut hi) = (r.start, r.last);
        for h in self.overlapping(r.start.saturating_sub(1), r.last.saturating_add(1)) {
            self.remove(h.start);
            lo = lo.min(h.start);
            hi = hi.max(h.last);
        }
        self.insert(lo, hi);
    }

    /// First-fit IOVA for `length` bytes at `align` plus `page_offset`: exactly the answer of
    /// [`find_iova`] over the used ranges this index complements. For each allowed span in
    /// order (see [`find_iova`]): the span is skipped unless `length` fits at its aligned start
    /// `g`; then the hole containing `g` is tried from `g`, then the lowest hole starting after
    /// `g` that fits (found by descending only into subtrees whose largest hole is long enough),
    /// then the hole crossing the span's end, clipped to it.
    pub fn find(
        &self,
        allowed: &RangeSet,
        length: u64,
        align: u64,
        page_offset: u64,
    ) -> Option<u64> {
        alloc_spans(allowed).find_map(|span| self.find_in_span(span, length, align, page_offset))
    }

    fn find_in_span(&self, span: Range, length: u64, align: u64, po: u64) -> Option<u64> {
        let g = fit_in(span.start, span.last, length, align, po)?;
        let mut lo = g;
        if let Some(h) = self.hole_at(g) {
            if let Some(a) = fit_in(g, h.last.min(span.last), length, align, po) {
                return Some(a);
            }
            if h.last >= span.last {
                return None;
            }
            lo = h.last + 1;
        }
        // The hole crossing the span's end is only usable up to it: handle it last.
        let tail = self.hole_at(span.last).filter(|t| t.start >= lo);
        let hi = match tail {
            Some(t) => t.start.checked_sub(1),
            None => Some(span.last),
        };
        if let Some(hi) = hi.filter(|&hi| lo <= hi) {
            // A hole fits only if `last - start >= max(length - 1, 1)`.
            let min_span = length.saturating_sub(1).max(1);
            let fits = |s: u64, l: u64| fit_in(s, l, length, align, po).is_some();
            if let Some(h) = self.leftmost(self.root, lo, hi, min_span, &fits) {
                return fit_in(h.start, h.last, length, align, po);
            }
        }
        let t = tail?;
        fit_in(t.start, span.last, length, align, po)
    }

    // ----- treap internals ---------------------------------------------------------------------

    fn node(&self, t: u32) -> &Node {
        &self.nodes[t as usize]
    }

    fn node_mut(&mut self, t: u32) -> &mut Node {
        &mut self.nodes[t as usize]
    }

    fn range_of(&self, t: u32) -> Range {
        let n = self.node(t);
        Range {
            start: n.start,
            last: n.start + n.span,
        }
    }

    /// The heap priority of node `t`: a hash of its arena slot (not of its start, so that a
    /// hole can change its start in place, [`HoleIndex::rekey`]).
    fn prio(&self, t: u32) -> u64 {
        mix(u64::from(t) ^ self.seed)
    }

    fn max_span(&self, t: u32) -> Option<u64> {
        (t != NIL).then(|| self.node(t).max_span)
    }

    /// Recompute `t`'s subtree maximum from its children.
    fn pull(&mut self, t: u32) {
        let n = *self.node(t);
        let m = [self.max_span(n.left), self.max_span(n.right)]
            .into_iter()
            .flatten()
            .fold(n.span, u64::max);
        self.node_mut(t).max_span = m;
    }

    /// Split `t` into (starts < key, starts >= key).
    fn split(&mut self, t: u32, key: u64) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        let n = *self.node(t);
        if n.start < key {
            let (a, b) = self.split(n.right, key);
            self.node_mut(t).right = a;
            self.pull(t);
            (t, b)
        } else {
            let (a, b) = self.split(n.left, key);
            self.node_mut(t).left = b;
            self.pull(t);
            (a, t)
        }
    }

    /// Join `a` and `b`, every start of `a` below every start of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.prio(a) >= self.prio(b) {
            let r = self.merge(self.node(a).right, b);
            self.node_mut(a).right = r;
            self.pull(a);
            a
        } else {
            let l = self.merge(a, self.node(b).left);
            self.node_mut(b).left = l;
            self.pull(b);
            b
        }
    }

    /// Add the hole `start..=last` (disjoint from every other). If the arena is full (2^32 - 1
    /// holes) the hole is dropped: the allocator then never offers it, which is safe.
    fn insert(&mut self, start: u64, last: u64) {
        let node = Node {
            start,
            span: last - start,
            max_span: last - start,
            left: NIL,
            right: NIL,
        };
        let t = match self.free.pop() {
            Some(t) => {
                *self.node_mut(t) = node;
                t
            }
            None => match u32::try_from(self.nodes.len()) {
                Ok(t) if t != NIL => {
                    self.nodes.push(node);
                    t
                }
                _ => return,
            },
        };
        self.root = self.insert_in(self.root, t);
    }

    /// Insert node `x` into subtree `t`: descend by start while the nodes outrank `x`, then
    /// split the rest below `x` (one pass instead of a split and two merges of the whole tree).
    fn insert_in(&mut self, t: u32, x: u32) -> u32 {
        if t == NIL {
            return x;
        }
        if self.prio(x) > self.prio(t) {
            let (a, b) = self.split(t, self.node(x).start);
            let n = self.node_mut(x);
            n.left = a;
            n.right = b;
            self.pull(x);
            return x;
        }
        let n = *self.node(t);
        if self.node(x).start < n.start {
            let l = self.insert_in(n.left, x);
            self.node_mut(t).left = l;
        } else {
            let r = self.insert_in(n.right, x);
            self.node_mut(t).right = r;
        }
        self.pull(t);
        t
    }

    /// Make the hole starting at `key` the hole `start..=last`. The caller guarantees the new
    /// hole stays between its neighbours (disjoint from them, not touching them), so the tree
    /// order holds; the subtree maxima on the path are updated.
    fn rekey(&mut self, key: u64, start: u64, last: u64) {
        self.rekey_in(self.root, key, start, last - start);
    }

    fn rekey_in(&mut self, t: u32, key: u64, start: u64, span: u64) -> bool {
        if t == NIL {
            return false;
        }
        let n = *self.node(t);
        let found = if key < n.start {
            self.rekey_in(n.left, key, start, span)
        } else if key > n.start {
            self.rekey_in(n.right, key, start, span)
        } else {
            let m = self.node_mut(t);
            m.start = start;
            m.span = span;
            true
        };
        if found {
            self.pull(t);
        }
        found
    }

    /// Remove the hole starting at `start` (if any).
    fn remove(&mut self, start: u64) {
        self.root = self.remove_in(self.root, start);
        if self.root == NIL {
            self.nodes.clear();
            self.free.clear();
        }
    }

    /// Remove the node with `start` from subtree `t` (its children merged in its place).
    fn remove_in(&mut self, t: u32, start: u64) -> u32 {
        if t == NIL {
            return NIL;
        }
        let n = *self.node(t);
        if start == n.start {
            self.free.push(t);
            return self.merge(n.left, n.right);
        }
        if start < n.start {
            let l = self.remove_in(n.left, start);
            self.node_mut(t).left = l;
        } else {
            let r = self.remove_in(n.right, start);
            self.node_mut(t).right = r;
        }
        self.pull(t);
        t
    }

    /// Check the tree: starts in order, holes disjoint and not touching, subtree maxima exact,
    /// heap order of the priorities. Panics otherwise (tests only).
    #[cfg(test)]
    fn assert_consistent(&self) {
        fn walk(ix: &HoleIndex, t: u32, prev: &mut Option<Range>) -> u64 {
            let n = *ix.node(t);
            let mut m = n.span;
            for c in [n.left, n.right] {
                if c != NIL {
                    assert!(ix.prio(c) <= ix.prio(t), "heap order");
                }
            }
            if n.left != NIL {
                m = m.max(walk(ix, n.left, prev));
            }
            let here = ix.range_of(t);
            if let Some(p) = prev {
                assert!(
                    p.last < here.start && p.last + 1 != here.start,
                    "{p:?} {here:?}"
                );
            }
            *prev = Some(here);
            if n.right != NIL {
                m = m.max(walk(ix, n.right, prev));
            }
            assert_eq!(n.max_span, m, "subtree maximum");
            m
        }
        if self.root != NIL {
            walk(self, self.root, &mut None);
        }
    }

    /// The hole with the largest start `<= key`.
    fn pred(&self, key: u64) -> Option<Range> {
        let mut t = self.root;
        let mut best = None;
        while t != NIL {
            let n = self.node(t);
            if n.start <= key {
                best = Some(t);
                t = n.right;
            } else {
                t = n.left;
            }
        }
        best.map(|b| self.range_of(b))
    }

    /// The holes overlapping `lo..=hi`, in order.
    fn overlapping(&self, lo: u64, hi: u64) -> Vec<Range> {
        let mut out = Vec::new();
        if let Some(h) = self.pred(lo).filter(|h| h.last >= lo) {
            out.push(h);
        }
        let from = match out.first() {
            Some(h) => h.last.checked_add(1),
            None => Some(lo),
        };
        if let Some(from) = from.filter(|&f| f <= hi) {
            self.collect(self.root, from, hi, &mut out);
        }
        out
    }

    /// Append the holes of subtree `t` starting in `lo..=hi`, in order.
    fn collect(&self, t: u32, lo: u64, hi: u64, out: &mut Vec<Range>) {
        if t == NIL {
            return;
        }
        let n = *self.node(t);
        if n.start > lo {
            self.collect(n.left, lo, hi, out);
        }
        if n.start >= lo && n.start <= hi {
            out.push(self.range_of(t));
        }
        if n.start < hi {
            self.collect(n.right, lo, hi, out);
        }
    }

    /// The hole of subtree `t` with the lowest start in `lo..=hi` whose span is at least
    /// `min_span` and that `fits`; subtrees without a long enough hole are skipped.
    fn leftmost(
        &self,
        t: u32,
        lo: u64,
        hi: u64,
        min_span: u64,
        fits: &impl Fn(u64, u64) -> bool,
    ) -> Option<Range> {
        if t == NIL {
            return None;
        }
        let n = *self.node(t);
        if n.max_span < min_span {
            return None;
        }
        if n.start < lo {
            return self.leftmost(n.right, lo, hi, min_span, fits);
        }
        if n.start > hi {
            return self.leftmost(n.left, lo, hi, min_span, fits);
        }
        if let Some(h) = self.leftmost(n.left, lo, hi, min_span, fits) {
            return Some(h);
        }
        let here = self.range_of(t);
        if n.span >= min_span && fits(here.start, here.last) {
            return Some(here);
        }
        self.leftmost(n.right, lo, hi, min_span, fits)
    }
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

    /// Index `used` (ranges that may overlap) the way the IOAS does, in the given order.
    fn index_of(used: &[Range]) -> HoleIndex {
        let mut ix = HoleIndex::new();
        for &u in used {
            ix.occupy(u);
        }
        ix
    }

    /// The reference holes of `used` over the whole space.
    fn reference_holes(used: &RangeSet) -> Vec<Range> {
        used.holes(r(0, u64::MAX))
    }

    #[test]
    fn hole_index_splits_merges_and_finds() {
        let p = PAGE_SIZE;
        let mut ix = HoleIndex::new();
        assert_eq!(ix.holes(), vec![r(0, u64::MAX)]);
        ix.occupy(r(0, u64::MAX));
        assert!(ix.is_empty());
        assert_eq!(ix.find(&RangeSet::new(), p, p, 0), None);
        ix.release(r(10 * p, 20 * p - 1));
        ix.release(r(u64::MAX, u64::MAX));
        ix.release(r(20 * p, 30 * p - 1));
        assert_eq!(
            ix.holes(),
            vec![r(10 * p, 30 * p - 1), r(u64::MAX, u64::MAX)]
        );
        assert_eq!(ix.hole_at(15 * p), Some(r(10 * p, 30 * p - 1)));
        assert_eq!(ix.hole_at(30 * p), None);
        assert_eq!(ix.find(&RangeSet::new(), 4 * p, 8 * p, 0), Some(16 * p));
        ix.occupy(r(12 * p, 13 * p - 1));
        assert_eq!(
            ix.holes(),
            vec![
                r(10 * p, 12 * p - 1),
                r(13 * p, 30 * p - 1),
                r(u64::MAX, u64::MAX)
            ]
        );
        assert_eq!(
            ix.find(&RangeSet::new(), 2 * p, p, 0x123),
            Some(13 * p + 0x123)
        );
        assert_eq!(ix.find(&RangeSet::new(), p, p, 0), Some(10 * p));
        // Empty ranges change nothing.
        ix.occupy(Range { start: 5, last: 4 });
        ix.release(Range { start: 5, last: 4 });
        assert_eq!(ix.len(), 3);
        assert!(ix.memory_bytes() >= 3 * 32);
    }

    #[test]
    fn hole_index_node_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Node>(), 32);
    }

    /// Page numbers spread over the whole 64-bit space (bottom, middle and top), so windows,
    /// allowed spans and overflow edges all get exercised.
    fn addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0u64..64).prop_map(|x| x * PAGE_SIZE),
            (0u64..64).prop_map(|x| (1u64 << 40) + x * PAGE_SIZE),
            (0u64..64).prop_map(|x| u64::MAX - (x * PAGE_SIZE)),
            (0u64..0x40000).prop_map(|x| x * 0x100),
            any::<u64>(),
        ]
    }

    fn range_at() -> impl Strategy<Value = Range> {
        (
            addr(),
            prop_oneof![0u64..0x3000, 0u64..0x40_0000, any::<u64>()],
        )
            .prop_map(|(s, n)| r(s, s.saturating_add(n)))
    }

    /// Requests as the engine makes them: the alignment and page offset come from a user address.
    fn request() -> impl Strategy<Value = (u64, u64, u64)> {
        (
            prop_oneof![
                1u64..0x100,
                (1u64..0x300).prop_map(|x| x * 0x1000),
                1u64..(1 << 23)
            ],
            prop_oneof![
                Just(0u64),
                any::<u64>(),
                (0u64..0x1000).prop_map(|x| x << 12),
                0u64..0x4000
            ],
        )
            .prop_filter_map("alignment", |(len, uptr)| {
                let align = alloc_alignment(uptr, len, 1).ok()?;
                Some((len, align, uptr % PAGE_SIZE))
            })
    }

    proptest! {
        /// Disjoint used ranges (some touching) taken and given back one at a time, as areas
        /// are mapped and unmapped: the in-place paths of occupy and release keep the index
        /// exact and the tree well formed.
        #[test]
        fn hole_index_follows_disjoint_occupy_and_release(
            cuts in prop::collection::btree_set(addr(), 2..24),
            pick in prop::collection::vec(any::<bool>(), 24),
            order in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
            requests in prop::collection::vec(request(), 1..4),
        ) {
            let cuts: Vec<u64> = cuts.into_iter().collect();
            let mut live: Vec<Range> = cuts
                .windows(2)
                .zip(&pick)
                .filter(|(_, &p)| p)
                .map(|(w, _)| r(w[0], w[1] - 1))
                .collect();
            let mut ix = HoleIndex::new();
            // Occupy in a shuffled order.
            let mut todo = live.clone();
            for i in &order {
                if todo.is_empty() {
                    break;
                }
                ix.occupy(todo.remove(i.index(todo.len())));
                ix.assert_consistent();
            }
            for u in todo {
                ix.occupy(u);
            }
            ix.assert_consistent();
            let set = RangeSet::from_ranges(live.iter().copied());
            prop_assert_eq!(ix.holes(), reference_holes(&set));
            // Release in another order, checking after each.
            for i in order.iter().rev() {
                if live.is_empty() {
                    break;
                }
                let gone = live.remove(i.index(live.len()));
                ix.release(gone);
                ix.assert_consistent();
                let set = RangeSet::from_ranges(live.iter().copied());
                prop_assert_eq!(ix.holes(), reference_holes(&set));
                for &(len, align, po) in &requests {
                    let want = find_iova(&RangeSet::new(), |x| set.next_from(x), len, align, po);
                    prop_assert_eq!(ix.find(&RangeSet::new(), len, align, po), want);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Occupy a random set of (overlapping) ranges, release some and re-occupy what stays
        /// used: the index holds exactly the reference holes, and every request gets exactly the
        /// reference's answer, with or without allowed ranges.
        #[test]
        fn hole_index_matches_the_scanning_reference(
            used in prop::collection::vec(range_at(), 0..24),
            released in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            allowed in prop::collection::vec(range_at(), 0..4),
            requests in prop::collection::vec(request(), 1..12),
        ) {
            let mut ix = index_of(&used);
            let mut live = used.clone();
            for i in released {
                if live.is_empty() {
                    break;
                }
                let gone = live.remove(i.index(live.len()));
                ix.release(gone);
                for &u in &live {
                    ix.occupy(u);
                }
            }
            ix.assert_consistent();
            let set = RangeSet::from_ranges(live.iter().copied());
            prop_assert_eq!(ix.holes(), reference_holes(&set));
            prop_assert_eq!(ix.len(), ix.holes().len());
            for probe in [0, PAGE_SIZE, 1 << 40, u64::MAX] {
                let want = reference_holes(&set).into_iter().find(|h| h.contains(probe));
                prop_assert_eq!(ix.hole_at(probe), want);
            }
            let allowed = RangeSet::from_ranges(allowed);
            for (len, align, po) in requests {
                for a in [&RangeSet::new(), &allowed] {
                    let want = find_iova(a, |x| set.next_from(x), len, align, po);
                    prop_assert_eq!(ix.find(a, len, align, po), want, "len {:#x} align {:#x} po {:#x}", len, align, po);
                }
            }
        }

        /// Dense page-granular layouts (many holes of the boundary sizes), the shape where the
        /// pruned search and the scan are most likely to disagree.
        #[test]
        fn hole_index_matches_the_reference_on_dense_layouts(
            used in prop::collection::vec((0u64..2048, 0u64..6), 0..200),
            allowed in prop::collection::vec((0u64..2048, 0u64..600), 0..3),
            requests in prop::collection::vec(request(), 1..16),
        ) {
            let p = PAGE_SIZE;
            let used: Vec<Range> = used.iter().map(|&(s, n)| r(s * p, (s + n + 1) * p - 1)).collect();
            let ix = index_of(&used);
            let set = RangeSet::from_ranges(used);
            prop_assert_eq!(ix.holes(), reference_holes(&set));
            let allowed = RangeSet::from_ranges(allowed.iter().map(|&(s, n)| r(s * p, (s + n + 1) * p - 1)));
            for (len, align, po) in requests {
                for a in [&RangeSet::new(), &allowed] {
                    let want = find_iova(a, |x| set.next_from(x), len, align, po);
                    prop_assert_eq!(ix.find(a, len, align, po), want, "len {:#x} align {:#x} po {:#x}", len, align, po);
                }
            }
        }
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
