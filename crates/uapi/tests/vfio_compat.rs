//! The legacy VFIO path through the real ABI: the type1 ioctls on a `/dev/iommu` file (the
//! kernel's `vfio_compat.c`, as the selftest's `vfio_compat_*` fixtures use them), and the
//! container and group files of `vfio_group`. Argument structs are written into the caller's
//! memory and replies read back, as an unmodified program's ioctls arrive from the preload
//! library; devices do DMA through the engine to check what the IOMMU really translates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uiommu_core::error::errno::*;
use uiommu_core::{Context, Engine, ObjId};
use uiommu_platform::memory::{MemFault, SimMemory, UserMemory};
use uiommu_platform::topology::DeviceId;
use uiommu_platform::{Iova, Platform, UserVa};
use uiommu_uapi::abi::{IommuVfioIoas, IOMMU_VFIO_IOAS, IOMMU_VFIO_IOAS_SET};
use uiommu_uapi::iommufd::IommufdFile;
use uiommu_uapi::vfio_abi::*;
use uiommu_uapi::{Caller, EngineFile, Errno, FdTable};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

const EBADF: Errno = 9;
const EBADFD: Errno = 77;

/// Where the argument structs go.
const ARG: u64 = 0x1000_0000;
/// Memory to map for DMA (1 MiB).
const BUF: u64 = 0x2000_0000;
const BUF_LEN: u64 = 0x10_0000;
/// Nothing is mapped here.
const UNMAPPED: u64 = 0x5000_0000;
const PAGE: u64 = 4096;
/// An IOVA inside the radix table's aperture.
const IOVA: u64 = 0x10_0000;

/// The caller's file table: iommufds and engine-made files by fd number.
#[derive(Default)]
struct Fds {
    iommufds: Mutex<HashMap<i32, Context>>,
    files: Mutex<HashMap<i32, Arc<dyn EngineFile>>>,
    next: Mutex<i32>,
}

impl FdTable for Fds {
    fn iommufd(&self, fd: i32) -> Result<Context, Errno> {
        if let Some(c) = self.iommufds.lock().unwrap().get(&fd) {
            return Ok(c.clone());
        }
        if self.files.lock().unwrap().contains_key(&fd) || fd == 0 {
            return Err(EBADFD);
        }
        Err(EBADF)
    }
    fn eventfd(&self, _fd: i32) -> Result<Box<dyn Fn() + Send + Sync>, Errno> {
        Err(EBADF)
    }
    fn install(&self, file: Arc<dyn EngineFile>, _cloexec: bool) -> Result<i32, Errno> {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        let fd = 100 + *n;
        self.files.lock().unwrap().insert(fd, file);
        Ok(fd)
    }
    fn file(&self, fd: i32) -> Result<Arc<dyn EngineFile>, Errno> {
        self.files.lock().unwrap().get(&fd).cloned().ok_or(EBADF)
    }
}

/// The caller's memory with every write refused (replies that cannot be written back).
struct NoWrites<'a>(&'a SimMemory);

impl UserMemory for NoWrites<'_> {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        self.0.read(va, buf)
    }
    fn write(&self, va: UserVa, _data: &[u8]) -> Result<(), MemFault> {
        Err(MemFault::ReadOnly(va))
    }
    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        if write {
            return Err(MemFault::ReadOnly(va));
        }
        self.0.probe(va, len, false)
    }
}

struct Env {
    engine: Arc<Engine>,
    sim: Arc<SimMemory>,
    fds: Fds,
    space: uiommu_platform::memory::SpaceId,
}

fn env() -> Env {
    let engine = Engine::new(Platform::builtin(), Default::default()).unwrap();
    let sim = SimMemory::new();
    sim.map(UserVa(ARG), 0x1_0000, true);
    sim.map(UserVa(BUF), BUF_LEN, true);
    let space = engine.add_space(sim.clone());
    Env {
        engine,
        sim,
        fds: Fds::default(),
        space,
    }
}

impl Env {
    fn caller(&self) -> Caller<'_> {
        Caller {
            mem: &*self.sim,
            fds: &self.fds,
        }
    }

    fn iommufd(&self) -> IommufdFile {
        IommufdFile::open(&self.engine, self.space).unwrap()
    }

    fn dev(&self, name: &str) -> DeviceId {
        self.engine
            .with_platform(|p| p.topology.find_name(name))
            .unwrap()
    }

    fn put<T: IntoBytes + Immutable>(&self, at: u64, v: &T) {
        self.sim.write(UserVa(at), v.as_bytes()).unwrap();
    }

    fn get<T: FromBytes + IntoBytes>(&self, at: u64) -> T {
        let mut v = T::new_zeroed();
        self.sim.read(UserVa(at), v.as_mut_bytes()).unwrap();
        v
    }

    fn bytes(&self, at: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.sim.read(UserVa(at), &mut v).unwrap();
        v
    }

    /// An ioctl with a value argument.
    fn val(&self, f: &IommufdFile, request: u32, arg: u64) -> Result<i64, Errno> {
        f.ioctl(&self.caller(), u64::from(request), arg)
    }

    /// Write `cmd` at ARG, issue `request`, read the struct back.
    fn call<T: IntoBytes + FromBytes + Immutable>(
        &self,
        f: &IommufdFile,
        request: u32,
        cmd: &T,
    ) -> (Result<i64, Errno>, T) {
        self.put(ARG, cmd);
        let r = f.ioctl(&self.caller(), u64::from(request), ARG);
        (r, self.get(ARG))
    }

    fn err<T: IntoBytes + FromBytes + Immutable>(
        &self,
        f: &IommufdFile,
        request: u32,
        cmd: &T,
    ) -> Errno {
        match self.call(f, request, cmd).0 {
            Ok(_) => 0,
            Err(e) => e,
        }
    }

    fn set_vfio_ioas(&self, f: &IommufdFile, ioas: ObjId) {
        let cmd = IommuVfioIoas {
            size: size_of::<IommuVfioIoas>() as u32,
            ioas_id: ioas.0,
            op: IOMMU_VFIO_IOAS_SET,
            ..Default::default()
        };
        assert_eq!(self.err(f, IOMMU_VFIO_IOAS, &cmd), 0);
    }

    fn map(&self, f: &IommufdFile, vaddr: u64, iova: u64, size: u64) -> Errno {
        self.err(
            f,
            VFIO_IOMMU_MAP_DMA,
            &VfioIommuType1DmaMap {
                argsz: 32,
                flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                vaddr,
                iova,
                size,
            },
        )
    }

    /// `request` on the struct at `arg` by a caller whose memory refuses every write.
    fn no_writes(&self, f: &IommufdFile, request: u32, arg: u64) -> Result<i64, Errno> {
        let mem = NoWrites(&self.sim);
        let caller = Caller {
            mem: &mem,
            fds: &self.fds,
        };
        f.ioctl(&caller, u64::from(request), arg)
    }

    fn unmap(&self, f: &IommufdFile, flags: u32, iova: u64, size: u64) -> Result<u64, Errno> {
        let (r, c) = self.call(
            f,
            VFIO_IOMMU_UNMAP_DMA,
            &VfioIommuType1DmaUnmap {
                argsz: 24,
                flags,
                iova,
                size,
            },
        );
        r.map(|_| c.size)
    }

    /// A `/dev/iommu` set up as the selftest's `vfio_compat_mock_domain` fixture does it, with
    /// dma0 bound and attached to the compatibility IOAS, then `VFIO_SET_IOMMU(version)`.
    fn compat(&self, version: u32) -> (IommufdFile, ObjId, DeviceId) {
        let f = self.iommufd();
        let ioas = f.context().ioas_alloc().unwrap();
        let dev = self.dev("dma0");
        let id = f.context().device_bind(dev).unwrap();
        f.context().device_attach(id, ioas).unwrap();
        self.set_vfio_ioas(&f, ioas);
        assert_eq!(self.val(&f, VFIO_SET_IOMMU, u64::from(version)), Ok(0));
        (f, ioas, dev)
    }
}

#[test]
fn version_and_extensions_as_iommufd_answers_them() {
    let e = env();
    let f = e.iommufd();
    assert_eq!(e.val(&f, VFIO_GET_API_VERSION, 0), Ok(0));
    for (ext, want) in [
        (VFIO_TYPE1_IOMMU, 1),
        (VFIO_TYPE1V2_IOMMU, 1),
        (VFIO_UNMAP_ALL, 1),
        (VFIO_NOIOMMU_IOMMU, 0),
        (VFIO_TYPE1_NESTING_IOMMU, 0),
        (VFIO_UPDATE_VADDR, 0),
        (VFIO_SPAPR_TCE_IOMMU, 0),
        (VFIO_EEH, 0),
        (99, 0),
    ] {
        assert_eq!(
            e.val(&f, VFIO_CHECK_EXTENSION, u64::from(ext)),
            Ok(want),
            "{ext}"
        );
    }
    // All 64 bits of the value count.
    assert_eq!(e.val(&f, VFIO_CHECK_EXTENSION, (1 << 32) | 3), Ok(0));
    // DMA_CC_IOMMU asks the compatibility IOAS.
    assert_eq!(
        e.val(&f, VFIO_CHECK_EXTENSION, u64::from(VFIO_DMA_CC_IOMMU)),
        Err(ENODEV)
    );
    let ioas = f.context().ioas_alloc().unwrap();
    e.set_vfio_ioas(&f, ioas);
    assert_eq!(
        e.val(&f, VFIO_CHECK_EXTENSION, u64::from(VFIO_DMA_CC_IOMMU)),
        Ok(1)
    );
    // Unknown requests, and DIRTY_PAGES, are ENOTTY.
    assert_eq!(e.val(&f, VFIO_IOMMU_DIRTY_PAGES, ARG), Err(ENOTTY));
    assert_eq!(e.val(&f, VFIO_GROUP_GET_STATUS, ARG), Err(ENOTTY));
    assert_eq!(e.val(&f, 0x1234, ARG), Err(ENOTTY));
}

/// The selftest's `iommufd` fixture: `unmap_cmd`, `map_cmd`, `info_cmd`, `set_iommu_cmd`.
#[test]
fn without_a_compat_ioas_the_type1_ioctls_are_enodev_after_the_argument_checks() {
    let e = env();
    let f = e.iommufd();
    let mut unmap = VfioIommuType1DmaUnmap {
        argsz: 1,
        iova: IOVA,
        size: PAGE,
        flags: 0,
    };
    assert_eq!(e.err(&f, VFIO_IOMMU_UNMAP_DMA, &unmap), EINVAL);
    unmap.argsz = 24;
    unmap.flags = 1 << 31;
    assert_eq!(e.err(&f, VFIO_IOMMU_UNMAP_DMA, &unmap), EINVAL);
    unmap.flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
    assert_eq!(e.err(&f, VFIO_IOMMU_UNMAP_DMA, &unmap), EINVAL);
    unmap.flags = 0;
    assert_eq!(e.err(&f, VFIO_IOMMU_UNMAP_DMA, &unmap), ENODEV);

    let mut map = VfioIommuType1DmaMap {
        argsz: 1,
        flags: 0,
        vaddr: BUF,
        iova: IOVA,
        size: PAGE,
    };
    assert_eq!(e.err(&f, VFIO_IOMMU_MAP_DMA, &map), EINVAL);
    map.argsz = 32;
    map.flags = 1 << 31;
    assert_eq!(e.err(&f, VFIO_IOMMU_MAP_DMA, &map), EINVAL);
    map.flags = VFIO_DMA_MAP_FLAG_VADDR;
    assert_eq!(e.err(&f, VFIO_IOMMU_MAP_DMA, &map), EINVAL);
    map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
    assert_eq!(e.err(&f, VFIO_IOMMU_MAP_DMA, &map), ENODEV);

    let mut info = VfioIommuType1Info {
        argsz: 1,
        ..Default::default()
    };
    assert_eq!(e.err(&f, VFIO_IOMMU_GET_INFO, &info), EINVAL);
    info.argsz = 24;
    assert_eq!(e.err(&f, VFIO_IOMMU_GET_INFO, &info), ENODEV);

    assert_eq!(
        e.val(&f, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1V2_IOMMU)),
        Err(ENODEV)
    );
    assert_eq!(
        e.val(&f, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1_IOMMU)),
        Err(ENODEV)
    );
    // Other types are EINVAL before the IOAS is looked for.
    assert_eq!(
        e.val(&f, VFIO_SET_IOMMU, u64::from(VFIO_NOIOMMU_IOMMU)),
        Err(EINVAL)
    );
    assert_eq!(e.val(&f, VFIO_SET_IOMMU, (1 << 32) | 3), Err(EINVAL));
    // Unreadable arguments.
    assert_eq!(e.val(&f, VFIO_IOMMU_MAP_DMA, UNMAPPED), Err(EFAULT));
    assert_eq!(e.val(&f, VFIO_IOMMU_UNMAP_DMA, UNMAPPED), Err(EFAULT));
    assert_eq!(e.val(&f, VFIO_IOMMU_GET_INFO, UNMAPPED), Err(EFAULT));
    assert_eq!(e.val(&f, VFIO_IOMMU_GET_INFO, u64::MAX - 4), Err(EFAULT));
}

#[test]
fn set_iommu_type1_disables_large_pages_and_type1v2_does_not() {
    let e = env();
    let (f, ioas, _) = e.compat(VFIO_TYPE1V2_IOMMU);
    assert!(f.context().huge_pages(ioas).unwrap());
    let (f, ioas, _) = {
        drop(f);
        e.compat(VFIO_TYPE1_IOMMU)
    };
    assert!(!f.context().huge_pages(ioas).unwrap());
    // Setting it again is fine; once domains map areas, TYPE1 cannot be chosen any more.
    assert_eq!(
        e.val(&f, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1_IOMMU)),
        Ok(0)
    );
    let f2 = e.iommufd();
    let ioas2 = f2.context().ioas_alloc().unwrap();
    let dev = e.dev("dma1");
    let id = f2.context().device_bind(dev).unwrap();
    f2.context().device_attach(id, ioas2).unwrap();
    e.set_vfio_ioas(&f2, ioas2);
    assert_eq!(e.map(&f2, BUF, IOVA, PAGE), 0);
    assert_eq!(
        e.val(&f2, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1_IOMMU)),
        Err(EINVAL)
    );
    assert_eq!(
        e.val(&f2, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1V2_IOMMU)),
        Ok(0)
    );
}

/// Check a capability chain as the selftest's `check_vfio_info_cap_chain` does.
fn check_chain(e: &Env, info: &VfioIommuType1Info) {
    assert!(info.argsz >= info.cap_offset + 8);
    let mut at = u64::from(info.cap_offset);
    loop {
        let hdr: VfioInfoCapHeader = e.get(ARG + at);
        let size = if hdr.next != 0 {
            u64::from(hdr.next) - at
        } else {
            u64::from(info.argsz) - at
        };
        match hdr.id {
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                let cap: VfioIommuType1InfoCapIovaRange = e.get(ARG + at);
                assert_eq!(cap.header.version, 1);
                assert!(cap.nr_iovas >= 1);
                let r: VfioIovaRange = e.get(ARG + at + 16);
                assert_eq!(r.start, 0);
            }
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                let cap: VfioIommuType1InfoDmaAvail = e.get(ARG + at);
                assert_eq!(cap.header.version, 1);
                assert_eq!(cap.avail, u32::MAX);
                assert_eq!(size, 16);
            }
            id => panic!("unknown capability {id}"),
        }
        if hdr.next == 0 {
            break;
        }
        assert!(u64::from(info.argsz) >= u64::from(hdr.next) + 8);
        assert!(u64::from(hdr.next) > at);
        at = u64::from(hdr.next);
    }
}

/// Issue GET_INFO with `argsz` after filling the rest of a 1 KiB buffer with 0xAA; check
/// nothing past `argsz` was written.
fn info_call(e: &Env, f: &IommufdFile, argsz: u32) -> VfioIommuType1Info {
    e.sim.write(UserVa(ARG), &[0xAA; 1024]).unwrap();
    let info = VfioIommuType1Info {
        argsz,
        ..Default::default()
    };
    e.sim
        .write(UserVa(ARG), &info.as_bytes()[..(argsz as usize).min(24)])
        .unwrap();
    assert_eq!(e.val(f, VFIO_IOMMU_GET_INFO, ARG), Ok(0));
    let tail = e.bytes(ARG + u64::from(argsz), 1024 - argsz as usize);
    assert!(
        tail.iter().all(|&b| b == 0xAA),
        "written past argsz {argsz}"
    );
    let mut out = VfioIommuType1Info::new_zeroed();
    let n = (argsz as usize).min(24);
    out.as_mut_bytes()[..n].copy_from_slice(&e.bytes(ARG, n));
    out
}

/// The selftest's `vfio_compat_mock_domain.get_info`, on the radix format.
#[test]
fn get_info_builds_the_capability_chain_for_any_argsz() {
    let e = env();
    for version in [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU] {
        let (f, ioas, _) = e.compat(version);
        // Pre-capability ABI: 16 bytes.
        let info = info_call(&e, &f, 16);
        assert_eq!(info.flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
        assert_ne!(info.iova_pgsizes, 0);
        assert_eq!(info.iova_pgsizes & 0xfff, 0);
        assert_ne!(info.iova_pgsizes & PAGE, 0);
        // The chain's size.
        let info = info_call(&e, &f, 24);
        assert_eq!(info.cap_offset, 0);
        let ranges = f.context().ioas_iova_ranges(ioas).unwrap().ranges;
        let full = 24 + 16 + 16 + 16 * ranges.len() as u32;
        assert_eq!(info.argsz, full);
        for argsz in 24..full {
            let info = info_call(&e, &f, argsz);
            assert_eq!(info.flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
            assert_eq!(info.argsz, full);
            if info.cap_offset != 0 {
                check_chain(&e, &info);
            }
        }
        let info = info_call(&e, &f, full);
        assert_eq!(info.cap_offset, 24);
        check_chain(&e, &info);
        let avail: VfioIommuType1InfoDmaAvail = e.get(ARG + 24);
        assert_eq!(avail.header.id, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL);
        assert_eq!(avail.header.next, 40);
        let cap: VfioIommuType1InfoCapIovaRange = e.get(ARG + 40);
        assert_eq!(cap.header.id, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
        assert_eq!(cap.header.next, 0);
        assert_eq!(cap.nr_iovas as usize, ranges.len());
        for (i, r) in ranges.iter().enumerate() {
            let got: VfioIovaRange = e.get(ARG + 56 + 16 * i as u64);
            assert_eq!((got.start, got.end), (r.start, r.last));
        }
        // A larger buffer gets the same chain.
        let big = info_call(&e, &f, full + 100);
        assert_eq!((big.argsz, big.cap_offset), (full, 24));
        drop(f);
    }
}

/// The selftest's `vfio_compat_mock_domain.map`, with DMA through dma0 to check the mappings.
#[test]
fn map_and_unmap_dma_through_the_device() {
    let e = env();
    for version in [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU] {
        let (f, _, dev) = e.compat(version);
        e.sim.write(UserVa(BUF), b"legacy!").unwrap();
        assert_eq!(e.map(&f, BUF, IOVA, BUF_LEN), 0);
        let mut got = [0u8; 7];
        e.engine.dma_read(dev, Iova(IOVA), &mut got).unwrap();
        assert_eq!(&got, b"legacy!");
        e.engine
            .dma_write(dev, Iova(IOVA + PAGE), b"from the device")
            .unwrap();
        assert_eq!(e.bytes(BUF + PAGE, 15), b"from the device");
        // Overlap: EEXIST.
        assert_eq!(e.map(&f, BUF, IOVA, PAGE), EEXIST);
        assert_eq!(e.unmap(&f, 0, IOVA, BUF_LEN), Ok(BUF_LEN));
        assert!(e.engine.dma_read(dev, Iova(IOVA), &mut got).is_err());
        // Unmapping nothing is success, 0 bytes.
        assert_eq!(e.unmap(&f, 0, IOVA, BUF_LEN), Ok(0));
        // Size 0 without UNMAP_ALL: EINVAL, size 0 written back.
        assert_eq!(e.unmap(&f, 0, IOVA, 0), Err(EINVAL));
        // UNMAP_ALL needs iova and size 0.
        assert_eq!(e.map(&f, BUF, IOVA, BUF_LEN), 0);
        assert_eq!(
            e.unmap(&f, VFIO_DMA_UNMAP_FLAG_ALL, IOVA, BUF_LEN),
            Err(EINVAL)
        );
        assert_eq!(e.unmap(&f, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0), Ok(BUF_LEN));
        assert_eq!(e.unmap(&f, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0), Ok(0));
        // Page by page, unmapped in another order.
        for i in 0..16 {
            assert_eq!(e.map(&f, BUF + i * PAGE, IOVA + i * PAGE, PAGE), 0);
        }
        for i in [3u64, 0, 15, 7, 1, 2, 14, 4, 5, 6, 13, 8, 9, 12, 10, 11] {
            assert_eq!(e.unmap(&f, 0, IOVA + i * PAGE, PAGE), Ok(PAGE));
        }
        // Read-only: the device cannot write.
        let ro = VfioIommuType1DmaMap {
            argsz: 32,
            flags: VFIO_DMA_MAP_FLAG_READ,
            vaddr: BUF,
            iova: IOVA,
            size: PAGE,
        };
        assert_eq!(e.err(&f, VFIO_IOMMU_MAP_DMA, &ro), 0);
        assert!(e.engine.dma_write(dev, Iova(IOVA), b"x").is_err());
        e.engine.dma_read(dev, Iova(IOVA), &mut got).unwrap();
        // A larger argsz is fine; unmapped memory is EFAULT once pinned.
        let mut m = ro;
        m.argsz = 64;
        m.iova = IOVA + PAGE;
        assert_eq!(e.err(&f, VFIO_IOMMU_MAP_DMA, &m), 0);
        m.vaddr = UNMAPPED;
        m.iova = IOVA + 2 * PAGE;
        assert_eq!(e.err(&f, VFIO_IOMMU_MAP_DMA, &m), EFAULT);
        drop(f);
        e.engine.check_invariants().unwrap();
    }
}

/// The selftest's `vfio_compat_mock_domain.huge_map`: TYPE1 cuts larger mappings up,
/// TYPE1v2 refuses with ENOENT.
#[test]
fn type1_unmaps_inside_a_mapping_and_type1v2_refuses() {
    let e = env();
    for version in [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU] {
        let (f, ioas, dev) = e.compat(version);
        assert_eq!(e.map(&f, BUF, IOVA, 16 * PAGE), 0);
        for i in [5u64, 0, 15, 9, 1, 2, 14, 4, 3, 6, 13, 8, 7, 12, 10, 11] {
            let r = e.unmap(&f, 0, IOVA + i * PAGE, PAGE);
            if version == VFIO_TYPE1_IOMMU {
                assert_eq!(r, Ok(PAGE), "page {i}");
                let mut b = [0u8; 1];
                assert!(e
                    .engine
                    .dma_read(dev, Iova(IOVA + i * PAGE), &mut b)
                    .is_err());
            } else {
                assert_eq!(r, Err(ENOENT), "page {i}");
            }
        }
        let left = f.context().ioas_areas(ioas).unwrap();
        if version == VFIO_TYPE1_IOMMU {
            assert!(left.is_empty());
        } else {
            assert_eq!(left.len(), 1);
            // The whole mapping (or more) can always go.
            assert_eq!(e.unmap(&f, 0, 0, IOVA + 16 * PAGE), Ok(16 * PAGE));
        }
        drop(f);
        assert_eq!(e.engine.total_pins(), 0);
    }
}

#[test]
fn unmap_writes_the_size_back_and_bad_replies_are_efault() {
    let e = env();
    let (f, ioas, _) = e.compat(VFIO_TYPE1V2_IOMMU);
    assert_eq!(e.map(&f, BUF, IOVA, 2 * PAGE), 0);
    // A partial unmap of a TYPE1v2 mapping: ENOENT, size 0 written back.
    let (r, c) = e.call(
        &f,
        VFIO_IOMMU_UNMAP_DMA,
        &VfioIommuType1DmaUnmap {
            argsz: 24,
            flags: 0,
            iova: IOVA,
            size: PAGE,
        },
    );
    assert_eq!((r, c.size), (Err(ENOENT), 0));
    // The whole struct is written back: the other fields as they were.
    assert_eq!((c.argsz, c.iova), (24, IOVA));
    // A struct that cannot be written: the kernel unmaps, then the copy_to_user of the size
    // fails: EFAULT, and the mapping is gone all the same.
    e.put(
        ARG,
        &VfioIommuType1DmaUnmap {
            argsz: 24,
            flags: 0,
            iova: IOVA,
            size: 2 * PAGE,
        },
    );
    assert_eq!(e.no_writes(&f, VFIO_IOMMU_UNMAP_DMA, ARG), Err(EFAULT));
    assert!(f.context().ioas_areas(ioas).unwrap().is_empty());
    assert_eq!(e.get::<VfioIommuType1DmaUnmap>(ARG).size, 2 * PAGE);
    // Unmapping nothing still writes the size (0): EFAULT too, nothing changed.
    let before = e.engine.snapshot();
    assert_eq!(e.no_writes(&f, VFIO_IOMMU_UNMAP_DMA, ARG), Err(EFAULT));
    assert_eq!(e.engine.snapshot(), before);
    // UNMAP_ALL the same.
    assert_eq!(e.map(&f, BUF, IOVA, 2 * PAGE), 0);
    e.put(
        ARG,
        &VfioIommuType1DmaUnmap {
            argsz: 24,
            flags: VFIO_DMA_UNMAP_FLAG_ALL,
            iova: 0,
            size: 0,
        },
    );
    assert_eq!(e.no_writes(&f, VFIO_IOMMU_UNMAP_DMA, ARG), Err(EFAULT));
    assert!(f.context().ioas_areas(ioas).unwrap().is_empty());
    // A refusal is not turned into EFAULT when its reply cannot be written: EINVAL returns
    // before the write.
    e.put(
        ARG,
        &VfioIommuType1DmaUnmap {
            argsz: 24,
            flags: VFIO_DMA_UNMAP_FLAG_ALL,
            iova: IOVA,
            size: 0,
        },
    );
    assert_eq!(e.no_writes(&f, VFIO_IOMMU_UNMAP_DMA, ARG), Err(EINVAL));
    e.engine.check_invariants().unwrap();
}

/// VFIO_IOMMU_GET_INFO whose reply cannot be written: EFAULT (the kernel's copy_to_user of
/// the capabilities and of the struct), for any argsz; nothing changed.
#[test]
fn get_info_into_unwritable_memory_is_efault() {
    let e = env();
    let (f, _, _) = e.compat(VFIO_TYPE1V2_IOMMU);
    let before = e.engine.snapshot();
    for argsz in [16, 24, 40, 256] {
        e.put(
            ARG,
            &VfioIommuType1Info {
                argsz,
                ..Default::default()
            },
        );
        assert_eq!(
            e.no_writes(&f, VFIO_IOMMU_GET_INFO, ARG),
            Err(EFAULT),
            "argsz {argsz}"
        );
        // Nothing was written.
        assert_eq!(e.get::<VfioIommuType1Info>(ARG).argsz, argsz);
    }
    assert_eq!(e.engine.snapshot(), before);
}

/// VFIO_IOMMU_MAP_DMA's range checks in the kernel's order (`iommufd_vfio_map_dma` ->
/// `iopt_map_user_pages`): `iopt_alloc_pages` first (size 0 or within a page of the top
/// EINVAL, vaddr + size wrapping EOVERFLOW), then `iopt_alloc_area_pages` (size not aligned to
/// the IOAS EINVAL) and `iopt_check_iova` (iova not aligned EINVAL, iova + size wrapping
/// EOVERFLOW). None of IOMMU_IOAS_MAP's own EOVERFLOW checks of `u64::MAX` apply. Checked on an
/// iommufd after IOMMU_VFIO_IOAS and on the legacy container; nothing changes.
#[test]
fn map_dma_size_and_overflow_checks_in_the_kernels_order() {
    on_iommufd_and_container(map_dma_overflow_cases);
}

/// Run `check` on an iommufd after IOMMU_VFIO_IOAS (TYPE1v2), then on the legacy container
/// (TYPE1) with group 5 set and its device opened (whose domain makes the IOAS's alignment a
/// page), each in a fresh engine.
fn on_iommufd_and_container(check: impl Fn(&Env, &IommufdFile)) {
    let e = env();
    let (f, _, _) = e.compat(VFIO_TYPE1V2_IOMMU);
    check(&e, &f);
    drop(f);
    let c = e.container();
    let g = VfioGroupFile::open(&e.engine, GroupId(5)).unwrap();
    assert_eq!(e.set_container(&g, CONTAINER_FD), Ok(0));
    assert_eq!(
        e.val(&c, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1_IOMMU)),
        Ok(0)
    );
    let fd = e.device_fd(&g, "0000:01:00.0").unwrap();
    check(&e, &c);
    e.close(fd);
}

fn map_dma_overflow_cases(e: &Env, f: &IommufdFile) {
    let ioas = f.context().vfio_ioas().unwrap();
    assert_eq!(
        f.context().ioas_iova_ranges(ioas).unwrap().alignment,
        PAGE,
        "a domain is attached"
    );
    let top = u64::MAX - PAGE + 1;
    let cases: [(Errno, u64, u64, u64); 13] = [
        // (errno, vaddr, iova, size)
        (EINVAL, BUF, IOVA, 0),
        (EINVAL, BUF, IOVA, u64::MAX),
        (EINVAL, BUF, IOVA, top),
        (EINVAL, BUF, u64::MAX, u64::MAX),
        // Size before the vaddr wrap.
        (EINVAL, u64::MAX, IOVA, 0),
        (EOVERFLOW, BUF, IOVA, top - PAGE),
        (EOVERFLOW, top, IOVA, PAGE),
        (EOVERFLOW, u64::MAX, IOVA, 1),
        // The vaddr wrap before anything about the IOVA.
        (EOVERFLOW, top, u64::MAX, 2 * PAGE),
        // Size, then iova alignment, then the iova wrap.
        (EINVAL, BUF, top, PAGE + 1),
        (EINVAL, BUF, u64::MAX, PAGE),
        (EOVERFLOW, BUF, top, 2 * PAGE),
        (EOVERFLOW, BUF, top - PAGE, BUF_LEN),
    ];
    for (errno, vaddr, iova, size) in cases {
        let before = e.engine.snapshot();
        assert_eq!(
            e.map(f, vaddr, iova, size),
            errno,
            "vaddr {vaddr:#x} iova {iova:#x} size {size:#x}"
        );
        assert_eq!(e.engine.snapshot(), before);
    }
    // A range ending at the last byte does not wrap: it is refused as reserved (outside the
    // domain's aperture), EINVAL.
    let before = e.engine.snapshot();
    assert_eq!(e.map(f, BUF, top, PAGE), EINVAL);
    assert_eq!(e.engine.snapshot(), before);
}

/// VFIO_IOMMU_UNMAP_DMA: UNMAP_ALL with a non-zero iova or size EINVAL, iova + size wrapping
/// EOVERFLOW (`iopt_unmap_iova`), with the size written back as 0 where the kernel writes it;
/// nothing changes. On the iommufd (TYPE1v2) and on the legacy container (TYPE1, whose cuts
/// come first and cut nothing here).
#[test]
fn unmap_dma_flag_all_and_overflow_refusals() {
    on_iommufd_and_container(unmap_dma_refusals);
}

fn unmap_dma_refusals(e: &Env, f: &IommufdFile) {
    assert_eq!(e.map(f, BUF, IOVA, 4 * PAGE), 0);
    let all = VFIO_DMA_UNMAP_FLAG_ALL;
    let top = u64::MAX - PAGE + 1;
    for (errno, flags, iova, size) in [
        (EINVAL, all, IOVA, 0),
        (EINVAL, all, 0, PAGE),
        (EINVAL, all, 0, u64::MAX),
        (EINVAL, all, IOVA, 4 * PAGE),
        (EOVERFLOW, 0, top, 2 * PAGE),
        (EOVERFLOW, 0, IOVA, u64::MAX),
        (EOVERFLOW, 0, u64::MAX, 2),
        (EOVERFLOW, 0, 2 * PAGE, u64::MAX - PAGE),
    ] {
        let before = e.engine.snapshot();
        e.put(ARG + 24, &0xabcd_u64);
        let (r, c) = e.call(
            f,
            VFIO_IOMMU_UNMAP_DMA,
            &VfioIommuType1DmaUnmap {
                argsz: 24,
                flags,
                iova,
                size,
            },
        );
        let what = format!("flags {flags:#x} iova {iova:#x} size {size:#x}");
        assert_eq!(r, Err(errno), "{what}");
        // UNMAP_ALL's EINVAL leaves before the write-back; iopt_unmap_iova's errors are
        // followed by it (size 0).
        let size_back = if flags == all { size } else { 0 };
        assert_eq!(c.size, size_back, "{what}");
        assert_eq!(e.engine.snapshot(), before, "{what}");
    }
    assert_eq!(e.unmap(f, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0), Ok(4 * PAGE));
}

// --- The container and group files -----------------------------------------------------------

use uiommu_platform::topology::GroupId;
use uiommu_uapi::vfio_device::VfioDeviceFile;
use uiommu_uapi::vfio_group::{open_container, vfio_groups, VfioGroupFile};

/// The fd number the tests give the container.
const CONTAINER_FD: i32 = 3;

impl Env {
    fn container(&self) -> IommufdFile {
        let c = open_container(&self.engine, self.space).unwrap();
        self.fds
            .iommufds
            .lock()
            .unwrap()
            .insert(CONTAINER_FD, c.context().clone());
        c
    }

    fn group_val(&self, g: &VfioGroupFile, request: u32, arg: u64) -> Result<i64, Errno> {
        g.ioctl(&self.caller(), u64::from(request), arg)
    }

    fn status(&self, g: &VfioGroupFile) -> u32 {
        self.put(
            ARG,
            &VfioGroupStatus {
                argsz: 8,
                flags: 0xdead,
            },
        );
        assert_eq!(self.group_val(g, VFIO_GROUP_GET_STATUS, ARG), Ok(0));
        self.get::<VfioGroupStatus>(ARG).flags
    }

    fn set_container(&self, g: &VfioGroupFile, fd: i32) -> Result<i64, Errno> {
        self.put(ARG, &fd);
        self.group_val(g, VFIO_GROUP_SET_CONTAINER, ARG)
    }

    fn device_fd(&self, g: &VfioGroupFile, name: &str) -> Result<i32, Errno> {
        let mut s = name.as_bytes().to_vec();
        s.push(0);
        self.sim.write(UserVa(ARG + 0x100), &s).unwrap();
        self.group_val(g, VFIO_GROUP_GET_DEVICE_FD, ARG + 0x100)
            .map(|fd| fd as i32)
    }

    fn device_file(&self, fd: i32) -> Arc<dyn EngineFile> {
        self.fds.file(fd).unwrap()
    }

    fn close(&self, fd: i32) {
        self.fds.files.lock().unwrap().remove(&fd);
    }
}

fn as_device(f: &Arc<dyn EngineFile>) -> &VfioDeviceFile {
    f.as_any().downcast_ref::<VfioDeviceFile>().unwrap()
}

#[test]
fn group_nodes_exist_for_groups_with_vfio_pci_functions() {
    let e = env();
    assert_eq!(
        vfio_groups(&e.engine),
        vec![GroupId(5), GroupId(6), GroupId(7), GroupId(14)]
    );
    assert_eq!(
        VfioGroupFile::open(&e.engine, GroupId(1)).unwrap_err(),
        ENODEV
    );
    let g = VfioGroupFile::open(&e.engine, GroupId(5)).unwrap();
    assert_eq!(g.group(), GroupId(5));
    assert_eq!(
        VfioGroupFile::open(&e.engine, GroupId(5)).unwrap_err(),
        EBUSY
    );
    assert_eq!(e.group_val(&g, VFIO_DEVICE_GET_INFO, ARG), Err(ENOTTY));
    assert_eq!(e.group_val(&g, VFIO_IOMMU_MAP_DMA, ARG), Err(ENOTTY));
}

/// The classic type1 flow, as QEMU's and DPDK's VFIO code do it.
#[test]
fn the_classic_type1_flow_through_container_and_group() {
    let e = env();
    let c = e.container();
    assert_eq!(e.val(&c, VFIO_GET_API_VERSION, 0), Ok(0));
    assert_eq!(
        e.val(&c, VFIO_CHECK_EXTENSION, u64::from(VFIO_TYPE1V2_IOMMU)),
        Ok(1)
    );
    // No group yet: SET_IOMMU fails (ENODEV, as iommufd's compat says it).
    assert_eq!(
        e.val(&c, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1V2_IOMMU)),
        Err(ENODEV)
    );
    let g = VfioGroupFile::open(&e.engine, GroupId(5)).unwrap();
    assert_eq!(e.status(&g), VFIO_GROUP_FLAGS_VIABLE);
    // GET_DEVICE_FD before SET_CONTAINER: EINVAL.
    assert_eq!(e.device_fd(&g, "0000:01:00.0"), Err(EINVAL));
    assert_eq!(e.set_container(&g, 42), Err(EBADF));
    assert_eq!(e.set_container(&g, 0), Err(EBADFD));
    assert_eq!(e.set_container(&g, CONTAINER_FD), Ok(0));
    assert_eq!(
        e.status(&g),
        VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET
    );
    // Already set: EINVAL (before the fd is even looked at, except EBADF).
    assert_eq!(e.set_container(&g, CONTAINER_FD), Err(EINVAL));
    assert_eq!(e.set_container(&g, 0), Err(EINVAL));
    assert_eq!(e.set_container(&g, 42), Err(EBADF));
    assert_eq!(
        e.val(&c, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1V2_IOMMU)),
        Ok(0)
    );
    let info = info_call(&e, &c, 256);
    assert_eq!(info.cap_offset, 24);
    check_chain(&e, &info);

    // The device: bound to the container's context, attached to its compatibility IOAS.
    let fd = e.device_fd(&g, "0000:01:00.0").unwrap();
    let file = e.device_file(fd);
    let dev = as_device(&file);
    assert!(dev.group_path());
    assert_eq!(dev.device(), e.dev("dma0"));
    let ctx = c.context();
    let devid = dev.devid().unwrap();
    let ioas = ctx.vfio_ioas().unwrap();
    let hwpt = ctx.device_hwpt(devid).unwrap().unwrap();
    assert_eq!(ctx.hwpt_paging_info(hwpt).unwrap().ioas, ioas);
    let st = e.engine.group_status(GroupId(5)).unwrap();
    assert_eq!(st.owner, Some(ctx.id()));

    // DMA through the mapping; pages charged to the process, as VFIO type1 charges them.
    e.sim.write(UserVa(BUF), b"group path").unwrap();
    assert_eq!(e.map(&c, BUF, IOVA, 4 * PAGE), 0);
    assert_eq!(e.engine.process_charged_pages(e.space), 4);
    assert_eq!(e.engine.user_charged_pages(), 0);
    let mut got = [0u8; 10];
    e.engine
        .dma_read(dev.device(), Iova(IOVA), &mut got)
        .unwrap();
    assert_eq!(&got, b"group path");
    assert_eq!(e.unmap(&c, 0, IOVA, 4 * PAGE), Ok(4 * PAGE));
    assert!(e
        .engine
        .dma_read(dev.device(), Iova(IOVA), &mut got)
        .is_err());
    assert_eq!(e.engine.process_charged_pages(e.space), 0);

    // The device file: the cdev-only ioctls are not there; BIND is EINVAL (already bound).
    let caller = e.caller();
    assert_eq!(
        dev.ioctl(&caller, u64::from(VFIO_DEVICE_ATTACH_IOMMUFD_PT), ARG),
        Err(ENOTTY)
    );
    assert_eq!(
        dev.ioctl(&caller, u64::from(VFIO_DEVICE_DETACH_IOMMUFD_PT), ARG),
        Err(ENOTTY)
    );
    e.put(
        ARG,
        &VfioDeviceBindIommufd {
            argsz: 16,
            flags: 0,
            iommufd: CONTAINER_FD,
            out_devid: 0,
        },
    );
    assert_eq!(
        dev.ioctl(&caller, u64::from(VFIO_DEVICE_BIND_IOMMUFD), ARG),
        Err(EINVAL)
    );
    e.put(
        ARG,
        &VfioDeviceInfo {
            argsz: 16,
            ..Default::default()
        },
    );
    assert_eq!(
        dev.ioctl(&caller, u64::from(VFIO_DEVICE_GET_INFO), ARG),
        Ok(0)
    );
    assert_eq!(e.get::<VfioDeviceInfo>(ARG).num_regions, 9);

    // A second GET_DEVICE_FD shares the open device.
    let fd2 = e.device_fd(&g, "0000:01:00.0").unwrap();
    assert_ne!(fd, fd2);
    assert!(Arc::ptr_eq(&file, &e.device_file(fd2)));
    drop(file);
    e.close(fd);
    assert!(e.engine.group_status(GroupId(5)).unwrap().owner.is_some());
    e.close(fd2);
    // The last device fd closed: unbound, the group back to the kernel.
    assert_eq!(e.engine.group_status(GroupId(5)).unwrap().owner, None);

    // UNSET_CONTAINER, twice.
    assert_eq!(e.group_val(&g, VFIO_GROUP_UNSET_CONTAINER, 0), Ok(0));
    assert_eq!(e.group_val(&g, VFIO_GROUP_UNSET_CONTAINER, 0), Err(EINVAL));
    assert_eq!(e.status(&g), VFIO_GROUP_FLAGS_VIABLE);
    e.engine.check_invariants().unwrap();
}

#[test]
fn get_device_fd_matches_names_as_vfio_pci_does() {
    let e = env();
    let _c = e.container();
    let g = VfioGroupFile::open(&e.engine, GroupId(6)).unwrap();
    assert_eq!(e.set_container(&g, CONTAINER_FD), Ok(0));
    // Not in this group, a prefix, trailing garbage: ENODEV.
    assert_eq!(e.device_fd(&g, "0000:01:00.0"), Err(ENODEV));
    assert_eq!(e.device_fd(&g, "0000:02:00"), Err(ENODEV));
    assert_eq!(e.device_fd(&g, "0000:02:00.1x"), Err(ENODEV));
    assert_eq!(e.device_fd(&g, ""), Err(ENODEV));
    // Options: spaces are fine, a VF token is not (no SR-IOV), anything else EINVAL.
    assert_eq!(
        e.device_fd(
            &g,
            "0000:02:00.1 vf_token=bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3"
        ),
        Err(EINVAL)
    );
    assert_eq!(e.device_fd(&g, "0000:02:00.1 foo"), Err(EINVAL));
    let a = e.device_fd(&g, "0000:02:00.1  ").unwrap();
    // Both functions of the group, through one container.
    let b = e.device_fd(&g, "0000:02:00.0").unwrap();
    assert!(!Arc::ptr_eq(&e.device_file(a), &e.device_file(b)));
    // No NUL within a page: EINVAL; an unreadable name: EFAULT.
    e.sim.write(UserVa(ARG), &[b'x'; 0x1000]).unwrap();
    assert_eq!(e.group_val(&g, VFIO_GROUP_GET_DEVICE_FD, ARG), Err(EINVAL));
    assert_eq!(
        e.group_val(&g, VFIO_GROUP_GET_DEVICE_FD, UNMAPPED),
        Err(EFAULT)
    );
    // A name running into an unmapped page: EFAULT; one ending just before it: found.
    let end = ARG + 0x1_0000;
    e.sim.write(UserVa(end - 3), b"ab\0").unwrap();
    assert_eq!(
        e.group_val(&g, VFIO_GROUP_GET_DEVICE_FD, end - 3),
        Err(ENODEV)
    );
    e.sim.write(UserVa(end - 2), b"ab").unwrap();
    assert_eq!(
        e.group_val(&g, VFIO_GROUP_GET_DEVICE_FD, end - 2),
        Err(EFAULT)
    );
    // Bad status arguments.
    assert_eq!(
        e.group_val(&g, VFIO_GROUP_GET_STATUS, UNMAPPED),
        Err(EFAULT)
    );
    e.put(ARG, &VfioGroupStatus { argsz: 7, flags: 0 });
    assert_eq!(e.group_val(&g, VFIO_GROUP_GET_STATUS, ARG), Err(EINVAL));
    assert_eq!(
        e.group_val(&g, VFIO_GROUP_SET_CONTAINER, UNMAPPED),
        Err(EFAULT)
    );
}

#[test]
fn a_group_with_a_dma_driver_is_not_viable_and_its_devices_cannot_be_opened() {
    let e = env();
    let _c = e.container();
    let g = VfioGroupFile::open(&e.engine, GroupId(7)).unwrap();
    assert_eq!(e.status(&g), 0);
    assert_eq!(e.set_container(&g, CONTAINER_FD), Ok(0));
    // As in the kernel with iommufd: viable once a container is set, but GET_DEVICE_FD fails.
    assert_eq!(
        e.status(&g),
        VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET
    );
    assert_eq!(e.device_fd(&g, "0000:04:01.0"), Err(EPERM));
    // nvme0 is in the group but not a VFIO device.
    assert_eq!(e.device_fd(&g, "0000:04:02.0"), Err(ENODEV));
    e.engine.check_invariants().unwrap();
}

#[test]
fn a_group_owned_by_another_context_is_not_viable() {
    let e = env();
    let other = e.iommufd();
    let id = other.context().device_bind(e.dev("dma0")).unwrap();
    let g = VfioGroupFile::open(&e.engine, GroupId(5)).unwrap();
    assert_eq!(e.status(&g), 0);
    let _c = e.container();
    assert_eq!(e.set_container(&g, CONTAINER_FD), Ok(0));
    assert_eq!(e.device_fd(&g, "0000:01:00.0"), Err(EINVAL));
    other.context().device_unbind(id).unwrap();
    assert!(e.device_fd(&g, "0000:01:00.0").is_ok());
}

#[test]
fn a_device_file_keeps_its_group_open() {
    let e = env();
    let _c = e.container();
    let g = VfioGroupFile::open(&e.engine, GroupId(5)).unwrap();
    assert_eq!(e.set_container(&g, CONTAINER_FD), Ok(0));
    let fd = e.device_fd(&g, "0000:01:00.0").unwrap();
    drop(g);
    assert_eq!(
        VfioGroupFile::open(&e.engine, GroupId(5)).unwrap_err(),
        EBUSY
    );
    e.close(fd);
    let g = VfioGroupFile::open(&e.engine, GroupId(5)).unwrap();
    assert_eq!(e.status(&g), VFIO_GROUP_FLAGS_VIABLE);
}

#[test]
fn an_iommufd_can_be_the_container_and_its_compat_ioas_is_used() {
    let e = env();
    let f = e.iommufd();
    let ioas = f.context().ioas_alloc().unwrap();
    e.set_vfio_ioas(&f, ioas);
    e.fds
        .iommufds
        .lock()
        .unwrap()
        .insert(5, f.context().clone());
    let g = VfioGroupFile::open(&e.engine, GroupId(5)).unwrap();
    assert_eq!(e.set_container(&g, 5), Ok(0));
    // SET_CONTAINER kept the IOAS that was set.
    assert_eq!(f.context().vfio_ioas().unwrap(), ioas);
    let fd = e.device_fd(&g, "0000:01:00.0").unwrap();
    let file = e.device_file(fd);
    let hwpt = f
        .context()
        .device_hwpt(as_device(&file).devid().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(f.context().hwpt_paging_info(hwpt).unwrap().ioas, ioas);
    // Pages of a /dev/iommu context are charged to the user.
    assert_eq!(e.map(&f, BUF, IOVA, PAGE), 0);
    assert_eq!(e.engine.user_charged_pages(), 1);
    drop(file);
    e.close(fd);
    // No compatibility IOAS any more: the device cannot be opened (ENODEV), and nothing stays
    // bound.
    let clear = IommuVfioIoas {
        size: size_of::<IommuVfioIoas>() as u32,
        op: uiommu_uapi::abi::IOMMU_VFIO_IOAS_CLEAR,
        ..Default::default()
    };
    assert_eq!(e.err(&f, IOMMU_VFIO_IOAS, &clear), 0);
    assert_eq!(e.device_fd(&g, "0000:01:00.0"), Err(ENODEV));
    assert_eq!(e.engine.group_status(GroupId(5)).unwrap().owner, None);
    e.engine.check_invariants().unwrap();
}
