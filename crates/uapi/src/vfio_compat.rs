//! VFIO type1 on an iommufd: the kernel's `iommufd/vfio_compat.c` (`iommufd_vfio_ioctl`).
//!
//! Every ioctl of a `/dev/iommu` file whose `nr` is outside the iommufd command range comes
//! here (as `iommufd_fops_ioctl` forwards it), and so does every ioctl of the legacy container
//! `/dev/vfio/vfio`, which is an iommufd as well (the kernel's `CONFIG_IOMMUFD_VFIO_CONTAINER`:
//! see [`crate::vfio_group`]). The type1 ioctls carry no IOAS id: they act on the context's
//! *compatibility IOAS* ([`Context::vfio_ioas`]), which `IOMMU_VFIO_IOAS` sets or a group's
//! `VFIO_GROUP_SET_CONTAINER` creates. Without one, everything but the version and extension
//! queries is `ENODEV`.
//!
//! | request | answer |
//! |---|---|
//! | `VFIO_GET_API_VERSION` | 0 |
//! | `VFIO_CHECK_EXTENSION` | 1 for `TYPE1_IOMMU`, `TYPE1v2_IOMMU`, `UNMAP_ALL`; `DMA_CC_IOMMU` whether every domain of the compatibility IOAS enforces coherency (`ENODEV` without one); 0 for everything else |
//! | `VFIO_SET_IOMMU` | `EINVAL` other types; `ENODEV` no IOAS; TYPE1 disables large pages on the IOAS (so any range can be unmapped: `EINVAL` if domains already map areas) |
//! | `VFIO_IOMMU_GET_INFO` | page sizes and a capability chain: DMA_AVAIL (`u32::MAX`), then IOVA_RANGE (the holes between reserved ranges) |
//! | `VFIO_IOMMU_MAP_DMA` | `IOMMU_IOAS_MAP` at the fixed IOVA |
//! | `VFIO_IOMMU_UNMAP_DMA` | `iopt_unmap_iova`: unmapping nothing is 0 bytes, a range cutting an area `ENOENT`, except after TYPE1 where the areas are cut at the range's ends first |
//! | `VFIO_IOMMU_DIRTY_PAGES`, anything else | `ENOTTY` |
//!
//! Argument structs are read as the kernel reads them: the first `minsz` bytes (`EFAULT`),
//! `argsz < minsz` `EINVAL`; `arg` of SET_IOMMU and CHECK_EXTENSION is the value itself (all
//! 64 bits compared).

use crate::vfio_abi::*;
use crate::{Caller, Errno};
use uiommu_core::error::errno::{EFAULT, EINVAL, ENOTTY};
use uiommu_core::{Context, ObjId};
use uiommu_platform::memory::UserMemory;
use uiommu_platform::pagetable::Prot;
use uiommu_platform::{Iova, UserVa};
use zerocopy::{FromBytes, IntoBytes};

/// `avail` of the DMA_AVAIL capability: iommufd's limit is the memory cgroup's, so it reports
/// `U32_MAX` (what s390 QEMU needs), not type1's 65535.
pub const DMA_AVAIL: u32 = u32::MAX;

fn eno(e: uiommu_core::Error) -> Errno {
    e.errno()
}

/// Whether `cmd` (the low 32 bits of a request) is handled here rather than by an iommufd
/// command handler: its `nr` is outside the iommufd command range (`IOMMUFD_CMD_BASE` to
/// `IOMMUFD_CMD_TEST`), whatever its type.
pub fn forwarded(cmd: u32) -> bool {
    let nr = crate::abi::ioc_nr(cmd);
    !(crate::abi::IOMMUFD_CMD_BASE..=crate::abi::IOMMUFD_CMD_TEST).contains(&nr)
}

/// `iommufd_vfio_ioctl`: serve one VFIO type1 request on the context `ctx`. `cmd` is the
/// request's low 32 bits, `arg` the third ioctl argument (a pointer into `caller.mem`, or a
/// value for SET_IOMMU and CHECK_EXTENSION). Returns the ioctl's return value.
pub fn ioctl(ctx: &Context, caller: &Caller<'_>, cmd: u32, arg: u64) -> Result<i64, Errno> {
    let mem = caller.mem;
    match cmd {
        VFIO_GET_API_VERSION => Ok(i64::from(VFIO_API_VERSION)),
        VFIO_SET_IOMMU => set_iommu(ctx, arg).map(|()| 0),
        VFIO_CHECK_EXTENSION => check_extension(ctx, arg),
        VFIO_IOMMU_GET_INFO => get_info(ctx, mem, arg).map(|()| 0),
        VFIO_IOMMU_MAP_DMA => map_dma(ctx, mem, arg).map(|()| 0),
        VFIO_IOMMU_UNMAP_DMA => unmap_dma(ctx, mem, arg).map(|()| 0),
        // Dirty tracking belongs to IOMMU_HWPT_SET_DIRTY_TRACKING now; the kernel's compat
        // layer does not offer VFIO_IOMMU_DIRTY_PAGES either.
        _ => Err(ENOTTY),
    }
}

/// The compatibility IOAS (`get_compat_ioas`): ENODEV when none is set.
fn compat_ioas(ctx: &Context) -> Result<ObjId, Errno> {
    ctx.vfio_ioas().map_err(eno)
}

/// Read the first `minsz` bytes of a `T` at `addr` into a zeroed `T` (EFAULT).
fn read_min<T: FromBytes + IntoBytes>(
    mem: &dyn UserMemory,
    addr: u64,
    minsz: usize,
) -> Result<T, Errno> {
    let mut t = T::new_zeroed();
    let n = minsz.min(size_of::<T>());
    let bytes = &mut t.as_mut_bytes()[..n];
    addr.checked_add(n as u64).ok_or(EFAULT)?;
    mem.read(UserVa(addr), bytes).map_err(|_| EFAULT)?;
    Ok(t)
}

/// Write `data` at `addr` (EFAULT).
fn write(mem: &dyn UserMemory, addr: u64, data: &[u8]) -> Result<(), Errno> {
    if data.is_empty() {
        return Ok(());
    }
    addr.checked_add(data.len() as u64).ok_or(EFAULT)?;
    mem.write(UserVa(addr), data).map_err(|_| EFAULT)
}

/// VFIO_CHECK_EXTENSION (`iommufd_vfio_check_extension`).
fn check_extension(ctx: &Context, ext: u64) -> Result<i64, Errno> {
    const TYPE1: u64 = VFIO_TYPE1_IOMMU as u64;
    const TYPE1V2: u64 = VFIO_TYPE1V2_IOMMU as u64;
    const UNMAP_ALL: u64 = VFIO_UNMAP_ALL as u64;
    const CC: u64 = VFIO_DMA_CC_IOMMU as u64;
    match ext {
        // No group here is a no-IOMMU group, so the context is never in no-IOMMU mode.
        TYPE1 | TYPE1V2 | UNMAP_ALL => Ok(1),
        CC => {
            let ioas = compat_ioas(ctx)?;
            Ok(i64::from(
                ctx.vfio_compat_cache_coherent(ioas).map_err(eno)?,
            ))
        }
        // VFIO_NOIOMMU_IOMMU: uiommu has no no-IOMMU groups (a kernel built without
        // CONFIG_VFIO_NOIOMMU). TYPE1_NESTING and UPDATE_VADDR are refused by iommufd.
        _ => Ok(0),
    }
}

/// VFIO_SET_IOMMU (`iommufd_vfio_set_iommu`).
fn set_iommu(ctx: &Context, ty: u64) -> Result<(), Errno> {
    if ty != u64::from(VFIO_TYPE1_IOMMU) && ty != u64::from(VFIO_TYPE1V2_IOMMU) {
        return Err(EINVAL);
    }
    // VFIO fails SET_IOMMU without a group; here: without a compatibility IOAS.
    let ioas = compat_ioas(ctx)?;
    // TYPE1 may unmap inside a mapping: emulated by never mapping with large pages.
    if ty == u64::from(VFIO_TYPE1_IOMMU) {
        ctx.set_huge_pages(ioas, false).map_err(eno)?;
    }
    Ok(())
}

/// VFIO_IOMMU_GET_INFO (`iommufd_vfio_iommu_get_info`). The capabilities are written one by
/// one where the caller's `argsz` has room for each (DMA_AVAIL first, then IOVA_RANGE with as
/// many ranges as fit); each `next` is written when `argsz` reaches the capability it links
/// to; `cap_offset` is set only when the whole chain fit; `argsz` returns the size of
/// everything.
fn get_info(ctx: &Context, mem: &dyn UserMemory, arg: u64) -> Result<(), Errno> {
    const MINSZ: usize = core::mem::offset_of!(VfioIommuType1Info, cap_offset);
    const INFO: u64 = size_of::<VfioIommuType1Info>() as u64;
    let mut info: VfioIommuType1Info = read_min(mem, arg, MINSZ)?;
    if (info.argsz as usize) < MINSZ {
        return Err(EINVAL);
    }
    let out_len = (info.argsz as usize).min(size_of::<VfioIommuType1Info>());
    let ioas = compat_ioas(ctx)?;
    info.flags = VFIO_IOMMU_INFO_PGSIZES;
    info.iova_pgsizes = ctx.vfio_compat_page_sizes(ioas).map_err(eno)?;
    info.cap_offset = 0;
    let ranges = ctx.ioas_iova_ranges(ioas).map_err(eno)?.ranges;
    let argsz = u64::from(info.argsz);

    let mut total = INFO;
    let mut last_cap: Option<u64> = None;
    for cap in 0..2 {
        let (at, avail) = if argsz > total {
            (arg.checked_add(total).ok_or(EFAULT)?, argsz - total)
        } else {
            (0, 0)
        };
        let size = match cap {
            0 => fill_dma_avail(mem, at, avail)?,
            _ => fill_iova(mem, at, avail, &ranges)?,
        };
        let size = size.next_multiple_of(8);
        if let Some(prev) = last_cap {
            if argsz >= total {
                let next_field = prev.checked_add(4).ok_or(EFAULT)?;
                write(mem, next_field, &(total as u32).to_le_bytes())?;
            }
        }
        last_cap = Some(arg.checked_add(total).ok_or(EFAULT)?);
        total += size;
    }
    if argsz >= total {
        info.cap_offset = INFO as u32;
    }
    info.argsz = u32::try_from(total).unwrap_or(u32::MAX);
    info.flags |= VFIO_IOMMU_INFO_CAPS;
    write(mem, arg, &info.as_bytes()[..out_len])
}

/// The DMA_AVAIL capability at `at` if `avail` bytes hold it; returns its size.
fn fill_dma_avail(mem: &dyn UserMemory, at: u64, avail: u64) -> Result<u64, Errno> {
    let cap = VfioIommuType1InfoDmaAvail {
        header: VfioInfoCapHeader {
            id: VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
            version: 1,
            next: 0,
        },
        avail: DMA_AVAIL,
    };
    let size = size_of::<VfioIommuType1InfoDmaAvail>() as u64;
    if avail >= size {
        write(mem, at, cap.as_bytes())?;
    }
    Ok(size)
}

/// The IOVA_RANGE capability at `at`: each range written if `avail` holds the capability up
/// to it, the header if `avail` holds all of them; returns its full size.
fn fill_iova(
    mem: &dyn UserMemory,
    at: u64,
    avail: u64,
    ranges: &[uiommu_platform::Range],
) -> Result<u64, Errno> {
    let head = size_of::<VfioIommuType1InfoCapIovaRange>() as u64;
    let elem = size_of::<VfioIovaRange>() as u64;
    let size_with = |n: u64| head + n * elem;
    let mut n = 0u64;
    for r in ranges {
        if avail >= size_with(n + 1) {
            let range = VfioIovaRange {
                start: r.start,
                end: r.last,
            };
            let to = at.checked_add(size_with(n)).ok_or(EFAULT)?;
            write(mem, to, range.as_bytes())?;
        }
        n += 1;
    }
    if avail >= size_with(n) {
        let cap = VfioIommuType1InfoCapIovaRange {
            header: VfioInfoCapHeader {
                id: VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
                version: 1,
                next: 0,
            },
            nr_iovas: u32::try_from(n).unwrap_or(u32::MAX),
            reserved: 0,
        };
        write(mem, at, cap.as_bytes())?;
    }
    Ok(size_with(n))
}

/// VFIO_IOMMU_MAP_DMA (`iommufd_vfio_map_dma`): map `size` bytes at `vaddr` to the fixed
/// `iova` of the compatibility IOAS, with the checks of `iopt_map_user_pages` only (size 0 or
/// `u64::MAX` EINVAL, `vaddr + size` or `iova + size` wrapping EOVERFLOW).
fn map_dma(ctx: &Context, mem: &dyn UserMemory, arg: u64) -> Result<(), Errno> {
    const MINSZ: usize = size_of::<VfioIommuType1DmaMap>();
    let map: VfioIommuType1DmaMap = read_min(mem, arg, MINSZ)?;
    let supported = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
    if (map.argsz as usize) < MINSZ || map.flags & !supported != 0 {
        return Err(EINVAL);
    }
    let prot = Prot {
        read: map.flags & VFIO_DMA_MAP_FLAG_READ != 0,
        write: map.flags & VFIO_DMA_MAP_FLAG_WRITE != 0,
    };
    let ioas = compat_ioas(ctx)?;
    // iopt_map_user_pages directly: none of IOMMU_IOAS_MAP's EOVERFLOW checks of u64::MAX.
    ctx.vfio_compat_map(ioas, UserVa(map.vaddr), map.size, Iova(map.iova), prot)
        .map_err(eno)?;
    Ok(())
}

/// VFIO_IOMMU_UNMAP_DMA (`iommufd_vfio_unmap_dma`). Only `VFIO_DMA_UNMAP_FLAG_ALL` is
/// supported (GET_DIRTY_BITMAP and VADDR are EINVAL). `size` returns the bytes unmapped, also
/// when the unmap fails (the areas removed before the refusal, as in the kernel).
fn unmap_dma(ctx: &Context, mem: &dyn UserMemory, arg: u64) -> Result<(), Errno> {
    const MINSZ: usize = size_of::<VfioIommuType1DmaUnmap>();
    let mut unmap: VfioIommuType1DmaUnmap = read_min(mem, arg, MINSZ)?;
    if (unmap.argsz as usize) < MINSZ || unmap.flags & !VFIO_DMA_UNMAP_FLAG_ALL != 0 {
        return Err(EINVAL);
    }
    let ioas = compat_ioas(ctx)?;
    let rc = if unmap.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0 {
        if unmap.iova != 0 || unmap.size != 0 {
            return Err(EINVAL);
        }
        ctx.ioas_unmap_range(ioas, None)
    } else {
        if !ctx.huge_pages(ioas).map_err(eno)? {
            // TYPE1: cut the areas at the ends of the range (no cut needed before IOVA 0).
            let end = Iova(unmap.iova.wrapping_add(unmap.size).wrapping_sub(1));
            let before = Iova(unmap.iova.wrapping_sub(1));
            let cuts: &[Iova] = if unmap.iova != 0 {
                &[end, before]
            } else {
                &[end]
            };
            ctx.ioas_cut_iova(ioas, cuts).map_err(eno)?;
        }
        ctx.ioas_unmap_range(ioas, Some((Iova(unmap.iova), unmap.size)))
    };
    let (unmapped, rc) = (rc.0, rc.1.map_err(eno));
    unmap.size = unmapped;
    write(mem, arg, unmap.as_bytes())?;
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numbers_outside_the_iommufd_range_are_forwarded() {
        assert!(forwarded(VFIO_GET_API_VERSION));
        assert!(forwarded(VFIO_IOMMU_UNMAP_DMA));
        assert!(!forwarded(crate::abi::IOMMU_IOAS_ALLOC));
        assert!(!forwarded(crate::abi::IOMMU_TEST_CMD));
        // nr 0xa1 and up: past the last command.
        assert!(forwarded(0x3ba1));
    }
}
