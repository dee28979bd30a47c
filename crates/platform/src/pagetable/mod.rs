//! IOMMU page-table formats behind one trait, like the kernel's `iommu_domain_ops`.
//!
//! A paging domain owns one [`PageTable`]. Two formats implement it:
//! - [`radix::RadixPageTable`]: a 4-level x86-style radix table with 4 KiB, 2 MiB and 1 GiB
//!   leaves, using the largest leaf that IOVA and physical alignment (and the remaining length)
//!   allow.
//! - [`mock::MockPageTable`]: the format of the kernel's iommufd selftest mock domain: a 2 KiB
//!   granule, an aperture of 16 MiB ..= 2 GiB - 1, and per-entry marks of where each `map` call
//!   started and ended, so the selftest's checks can be answered exactly.
//!
//! Ranges are `(iova, len)` at the trait boundary; `len` is never zero (callers check). Both
//! formats refuse to map over an existing entry and leave the table unchanged on any error.

pub mod mock;
pub mod radix;

use crate::addr::{Iova, PhysAddr, Range};
use std::fmt;

/// Access rights of a mapping.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Prot {
    /// Devices may read through the mapping.
    pub read: bool,
    /// Devices may write through the mapping.
    pub write: bool,
}

impl Prot {
    /// Read and write.
    pub const RW: Prot = Prot {
        read: true,
        write: true,
    };
    /// Read only.
    pub const RO: Prot = Prot {
        read: true,
        write: false,
    };
    /// Write only.
    pub const WO: Prot = Prot {
        read: false,
        write: true,
    };
}

/// The kind of access a device performs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// The device reads memory.
    Read,
    /// The device writes memory.
    Write,
}

/// Which format a page table has.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PageTableFormat {
    /// The multi-level radix table ([`radix::RadixPageTable`]).
    Radix,
    /// The selftest mock format ([`mock::MockPageTable`]).
    Mock,
}

/// One successful translation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address the IOVA translates to.
    pub pa: PhysAddr,
    /// The rights of the leaf that translated it.
    pub prot: Prot,
    /// The size of that leaf (4 KiB, 2 MiB, 1 GiB for radix; 2 KiB for mock).
    pub leaf_size: u64,
}

/// Why a page-table operation was refused. The table is unchanged.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageTableError {
    /// IOVA, physical address or length is not a multiple of the smallest page size.
    #[error("iova {iova:#x}, pa {pa:#x} or length {len:#x} is not aligned to the page size")]
    Misaligned {
        /// The IOVA asked for.
        iova: u64,
        /// The physical address asked for.
        pa: u64,
        /// The length asked for.
        len: u64,
    },
    /// Part of the range lies outside the table's aperture.
    #[error("range {start:#x}..={last:#x} lies outside the aperture")]
    OutOfAperture {
        /// First IOVA.
        start: u64,
        /// Last IOVA (inclusive).
        last: u64,
    },
    /// An IOVA in the range is already mapped.
    #[error("iova {iova:#x} is already mapped")]
    AlreadyMapped {
        /// The first mapped IOVA found.
        iova: u64,
    },
    /// The range is zero-length or overflows.
    #[error("invalid range")]
    InvalidRange,
}

/// A page-table format a paging domain can use.
///
/// Implementations are plain data: no locking, no I/O; the IOMMU hardware model around them
/// ([`crate::hw::Iommu`]) keeps the IOTLB coherent with them.
pub trait PageTable: Send + fmt::Debug {
    /// Which format this is.
    fn format(&self) -> PageTableFormat;
    /// Bitmap of supported leaf sizes (bit n set = 2^n bytes), like `pgsize_bitmap`.
    fn page_sizes(&self) -> u64;
    /// The range of IOVAs the table can map.
    fn aperture(&self) -> Range;
    /// Map `[iova, iova + len)` to `[pa, pa + len)` with `prot`. All three must be aligned to the
    /// smallest page size, the range must lie in the aperture and be wholly unmapped. On error
    /// nothing changes.
    fn map(&mut self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot)
        -> Result<(), PageTableError>;
    /// Unmap whatever is mapped in `[iova, iova + len)` and return the number of bytes that were
    /// mapped there. A large leaf that straddles the range edge is split first, so that exactly
    /// the range is unmapped.
    fn unmap(&mut self, iova: Iova, len: u64) -> u64;
    /// Translate one IOVA by walking the table.
    fn translate(&self, iova: Iova) -> Option<Translation>;
    /// Record that a device wrote through `iova` (sets the dirty mark of its leaf when dirty
    /// tracking is on; a no-op otherwise).
    fn mark_dirty(&mut self, iova: Iova);
    /// Turn dirty tracking on or off. Turning it on clears no marks; the caller reads and clears.
    fn set_dirty_tracking(&mut self, enable: bool);
    /// Whether dirty tracking is on.
    fn dirty_tracking(&self) -> bool;
    /// Call `report` with the IOVA of each dirty leaf of the smallest page size overlapping
    /// `[iova, iova + len)` (one call per smallest-page-sized unit that is dirty), clearing the
    /// marks unless `keep` is true.
    fn read_and_clear_dirty(
        &mut self,
        iova: Iova,
        len: u64,
        keep: bool,
        report: &mut dyn FnMut(Iova),
    );
    /// Total bytes currently mapped.
    fn mapped_bytes(&self) -> u64;
    /// Bytes of memory the table's own structures use (for metadata accounting).
    fn table_bytes(&self) -> u64;
    /// Enumerate the mappings in `[iova, iova + len)` as maximal runs of leaves that are contiguous
    /// in IOVA and PA with the same rights: `(iova, pa, len, prot)`. Used by tests and the
    /// invariant checker.
    fn mappings(&self, iova: Iova, len: u64, out: &mut dyn FnMut(Iova, PhysAddr, u64, Prot));
}
