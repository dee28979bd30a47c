//! Address newtypes and the one range convention.
//!
//! Three address spaces meet in an IOMMU: the device's I/O virtual addresses ([`Iova`]), the
//! owning program's virtual addresses ([`UserVa`]) and the emulated machine's pseudo-physical
//! addresses ([`PhysAddr`], frame numbers from the frame table). Each has its own newtype so
//! they cannot be mixed; arithmetic on them is checked.
//!
//! Ranges follow the kernel's convention everywhere in uiommu: a range is `start..=last`, with an
//! inclusive `last`, so that a range may end at `u64::MAX`. [`inclusive_last`] turns a
//! `(start, length)` pair into that form and refuses zero length and overflow.

use std::fmt;

/// log2 of the CPU page size uiommu emulates.
pub const PAGE_SHIFT: u32 = 12;
/// The CPU page size uiommu emulates (4 KiB).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// 2 MiB, the middle leaf size of the radix page table.
pub const SIZE_2M: u64 = 1 << 21;
/// 1 GiB, the largest leaf size of the radix page table.
pub const SIZE_1G: u64 = 1 << 30;

macro_rules! addr_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            #[inline]
            pub const fn raw(self) -> u64 {
                self.0
            }
            /// `self + n`, or `None` on overflow.
            #[inline]
            pub fn checked_add(self, n: u64) -> Option<Self> {
                self.0.checked_add(n).map(Self)
            }
            /// `self - n`, or `None` on underflow.
            #[inline]
            pub fn checked_sub(self, n: u64) -> Option<Self> {
                self.0.checked_sub(n).map(Self)
            }
            /// Whether the address is a multiple of `align` (a power of two).
            #[inline]
            pub fn is_aligned(self, align: u64) -> bool {
                align != 0 && self.0 & (align - 1) == 0
            }
            /// Rounded down to a multiple of `align` (a power of two).
            #[inline]
            pub fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }
            /// The offset of the address within its `align`-sized block (a power of two).
            #[inline]
            pub fn offset_in(self, align: u64) -> u64 {
                self.0 & (align - 1)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

addr_newtype!(
    /// An I/O virtual address: what a device puts on the bus, translated by its IOMMU domain.
    Iova
);
addr_newtype!(
    /// A virtual address in the program that owns a security context.
    UserVa
);
addr_newtype!(
    /// A pseudo-physical address of the emulated machine (frame number << [`PAGE_SHIFT`]).
    PhysAddr
);

/// The inclusive last address of `[start, start + len)`, or `None` when `len` is zero or the
/// range runs past `u64::MAX`.
#[inline]
pub fn inclusive_last(start: u64, len: u64) -> Option<u64> {
    if len == 0 {
        return None;
    }
    start.checked_add(len - 1)
}

/// An inclusive range `start..=last` of addresses; never empty.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// First address in the range.
    pub start: u64,
    /// Last address in the range (inclusive).
    pub last: u64,
}

impl Range {
    /// `[start, start + len)` as an inclusive range; `None` for zero length or overflow.
    pub fn from_len(start: u64, len: u64) -> Option<Range> {
        inclusive_last(start, len).map(|last| Range { start, last })
    }
    /// `start..=last`; `None` when `last < start`.
    pub fn new(start: u64, last: u64) -> Option<Range> {
        (last >= start).then_some(Range { start, last })
    }
    /// Number of addresses in the range (saturates at `u64::MAX` for the full space).
    pub fn len(&self) -> u64 {
        (self.last - self.start).saturating_add(1)
    }
    /// Always false: a `Range` is never empty. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr <= self.last
    }
    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.start <= other.last && other.start <= self.last
    }
    /// Whether `other` lies wholly inside `self`.
    pub fn covers(&self, other: &Range) -> bool {
        self.start <= other.start && other.last <= self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inclusive_last_refuses_zero_length_and_overflow() {
        assert_eq!(inclusive_last(0, 0), None);
        assert_eq!(inclusive_last(u64::MAX, 2), None);
        assert_eq!(inclusive_last(u64::MAX, 1), Some(u64::MAX));
        assert_eq!(inclusive_last(0x1000, 0x1000), Some(0x1fff));
    }

    #[test]
    fn range_full_space_len_saturates() {
        let r = Range::new(0, u64::MAX).unwrap();
        assert_eq!(r.len(), u64::MAX);
        assert!(r.covers(&Range::from_len(5, 5).unwrap()));
    }

    #[test]
    fn alignment_helpers() {
        let a = Iova(0x20_1234);
        assert!(!a.is_aligned(PAGE_SIZE));
        assert_eq!(a.align_down(SIZE_2M), Iova(0x20_0000));
        assert_eq!(a.offset_in(PAGE_SIZE), 0x234);
        assert_eq!(Iova(u64::MAX).checked_add(1), None);
    }
}
