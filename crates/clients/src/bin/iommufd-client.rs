//! `iommufd-client`: an unmodified user of the crates.io `iommufd-ioctls` crate.
//!
//! Opens `/dev/iommu` (`IommuFd::new`), allocates an IOAS, maps a page-aligned buffer of this
//! process at a fixed IOVA, checks the kernel's refusals of an overlapping map and of a double
//! unmap, unmaps, destroys the IOAS, and does the same IOAS life cycle through the crate's
//! `IommufdIoas` object. Prints one line per check and `PASS iommufd-client: N checks`; exits 0
//! only if every call behaved as on Linux.
//!
//! `iommufd-ioctls` 0.4 has no wrapper for `IOMMU_IOAS_IOVA_RANGES`, so the ranges are not
//! queried. With the argument `--map-file` the program also maps a memfd through
//! `IommufdIoas::map_file` (`IOMMU_IOAS_MAP_FILE`, added to Linux after 6.12).

#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use iommufd_bindings::iommufd::{
    iommu_ioas_alloc, iommu_ioas_map, iommu_ioas_unmap,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA as MAP_FIXED_IOVA,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE as MAP_READABLE,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE as MAP_WRITEABLE,
};
use iommufd_ioctls::{IommuFd, IommufdIoas};
use uiommu_clients::Checks;

const PAGE: usize = 4096;
const LEN: usize = 4 * PAGE;
const IOVA: u64 = 0x4000_0000;

fn main() {
    let map_file = std::env::args().any(|a| a == "--map-file");
    uiommu_clients::init_logging();
    let mut c = Checks::new("iommufd-client");

    let iommufd = Arc::new(c.ok(IommuFd::new(), "IommuFd::new opens /dev/iommu"));

    // IOAS through the raw wrappers.
    let mut alloc = iommu_ioas_alloc {
        size: size_of::<iommu_ioas_alloc>() as u32,
        ..Default::default()
    };
    c.ok(iommufd.alloc_iommu_ioas(&mut alloc), "alloc_iommu_ioas");
    let ioas_id = alloc.out_ioas_id;
    c.check(ioas_id != 0, format!("IOAS id {ioas_id} is not 0"), "id 0");

    // A page-aligned buffer of this process: a Vec with room to align. Nothing does DMA into
    // it here; the mapping pins it.
    let mut storage = vec![0x5au8; LEN + PAGE];
    let off = storage.as_ptr().align_offset(PAGE);
    let buf = &mut storage[off..off + LEN];
    let user_va = buf.as_mut_ptr() as u64;
    c.check(
        user_va.is_multiple_of(PAGE as u64),
        "buffer is page aligned",
        user_va,
    );

    let map = iommu_ioas_map {
        size: size_of::<iommu_ioas_map>() as u32,
        flags: MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE,
        ioas_id,
        user_va,
        length: LEN as u64,
        iova: IOVA,
        ..Default::default()
    };
    c.ok(
        iommufd.map_iommu_ioas(&map),
        format!("map_iommu_ioas {LEN:#x} bytes at va {user_va:#x} -> iova {IOVA:#x}"),
    );
    c.err(
        iommufd.map_iommu_ioas(&iommu_ioas_map {
            iova: IOVA + PAGE as u64,
            length: PAGE as u64,
            ..map
        }),
        libc::EEXIST,
        "a fixed map overlapping the first is refused with EEXIST",
    );
    c.err(
        iommufd.map_iommu_ioas(&iommu_ioas_map {
            flags: MAP_FIXED_IOVA,
            iova: IOVA + 0x10_0000,
            ..map
        }),
        libc::EINVAL,
        "a map with neither READABLE nor WRITEABLE is refused with EINVAL",
    );

    let mut unmap = iommu_ioas_unmap {
        size: size_of::<iommu_ioas_unmap>() as u32,
        ioas_id,
        iova: IOVA,
        length: LEN as u64,
    };
    c.ok(iommufd.unmap_iommu_ioas(&mut unmap), "unmap_iommu_ioas");
    c.check(
        unmap.length == LEN as u64,
        format!("unmap reports {LEN:#x} bytes unmapped"),
        format!("{:#x}", unmap.length),
    );
    let mut again = iommu_ioas_unmap {
        length: LEN as u64,
        ..unmap
    };
    c.err(
        iommufd.unmap_iommu_ioas(&mut again),
        libc::ENOENT,
        "unmapping it again is refused with ENOENT",
    );

    // The buffer is the program's again: write it (the map has let go of it).
    buf.fill(0xa5);
    c.check(
        buf.iter().all(|&b| b == 0xa5),
        "buffer writable after unmap",
        "",
    );

    c.ok(
        iommufd.destroy_iommu_object(ioas_id),
        format!("destroy_iommu_object({ioas_id})"),
    );
    c.err(
        iommufd.destroy_iommu_object(ioas_id),
        libc::ENOENT,
        "destroying it again is refused with ENOENT",
    );
    c.err(
        iommufd.map_iommu_ioas(&map),
        libc::ENOENT,
        "mapping into the destroyed IOAS is refused with ENOENT",
    );

    // The crate's IOAS object: alloc on new, destroy on drop.
    let ioas = c.ok(
        IommufdIoas::new(Arc::clone(&iommufd)),
        "IommufdIoas::new (IOMMU_IOAS_ALLOC)",
    );
    let id = ioas.id();
    c.check(
        id != 0,
        format!("IommufdIoas id {id} (ids are reused, as the xarray does)"),
        id,
    );
    c.ok(
        iommufd.map_iommu_ioas(&iommu_ioas_map { ioas_id: id, ..map }),
        "map_iommu_ioas into the IommufdIoas",
    );
    c.ok(
        ioas.unmap(IOVA, LEN as u64),
        "IommufdIoas::unmap (IOMMU_IOAS_UNMAP)",
    );
    c.err(
        ioas.unmap(IOVA, LEN as u64),
        libc::ENOENT,
        "IommufdIoas::unmap of nothing is refused with ENOENT",
    );

    if map_file {
        let memfd = c.ok(memfd(LEN), "memfd of 4 pages");
        c.ok(
            ioas.map_file(memfd.as_raw_fd(), 0, LEN as u64, IOVA, true),
            "IommufdIoas::map_file (IOMMU_IOAS_MAP_FILE)",
        );
        c.ok(ioas.unmap(IOVA, LEN as u64), "unmap the file mapping");
    }

    drop(ioas); // IOMMU_DESTROY; the crate only logs a failure, so check that the id is gone
    c.err(
        iommufd.destroy_iommu_object(id),
        libc::ENOENT,
        "dropping the IommufdIoas destroyed it (a second destroy is ENOENT)",
    );

    c.pass();
}

/// A memfd of `len` bytes, through `std` only.
fn memfd(len: usize) -> std::io::Result<std::fs::File> {
    // An unnamed O_TMPFILE file on /dev/shm is a shmem file, as a memfd is (memfd_create is
    // not in std).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open("/dev/shm")?;
    f.set_len(len as u64)?;
    Ok(f)
}
