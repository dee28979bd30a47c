//! `/dev/iommu` through the real ABI: argument structs written into the caller's memory,
//! `IommufdFile::ioctl` with the argument's address, replies read back — as an unmodified
//! program's ioctls arrive from the preload library. Bad inputs give the kernel's errno and
//! leave the engine as it was (its snapshot is compared).

use std::sync::Arc;
use uiommu_core::error::errno::*;
use uiommu_core::{Context, Engine, EngineConfig, ObjId};
use uiommu_platform::memory::{MemFault, SimMemory, UserMemory};
use uiommu_platform::{Iova, Platform, UserVa};
use uiommu_uapi::abi::*;
use uiommu_uapi::iommufd::IommufdFile;
use uiommu_uapi::{Caller, Errno, FdTable};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const EBADF: Errno = 9;

/// A caller with no other open files.
struct NoFds;

impl FdTable for NoFds {
    fn iommufd(&self, _fd: i32) -> Result<Context, Errno> {
        Err(EBADF)
    }
    fn eventfd(&self, _fd: i32) -> Result<Box<dyn Fn() + Send + Sync>, Errno> {
        Err(EBADF)
    }
}

/// Where the argument structs go.
const ARG: u64 = 0x1000_0000;
/// Memory to map for DMA (4 MiB).
const BUF: u64 = 0x2000_0000;
const BUF_LEN: u64 = 0x40_0000;
/// Arrays, bitmaps, hardware-info buffers (1 MiB).
const SCRATCH: u64 = 0x3000_0000;
/// Read-only memory.
const RO: u64 = 0x4000_0000;
/// Nothing is mapped here.
const UNMAPPED: u64 = 0x5000_0000;

const PAGE: u64 = 4096;

/// The caller's view of the test memory: as the `SimMemory`, except that the page at [`RO`]
/// refuses writes (the test itself can still fill it through the `SimMemory`).
struct Guarded(Arc<SimMemory>);

impl Guarded {
    fn hits_ro(va: UserVa, len: u64) -> bool {
        va.0 < RO + PAGE && va.0.saturating_add(len) > RO
    }
}

impl UserMemory for Guarded {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        self.0.read(va, buf)
    }
    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        if Self::hits_ro(va, data.len() as u64) {
            return Err(MemFault::ReadOnly(va));
        }
        self.0.write(va, data)
    }
    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        if write && Self::hits_ro(va, len) {
            return Err(MemFault::ReadOnly(va));
        }
        self.0.probe(va, len, write)
    }
}

struct Env {
    engine: Arc<Engine>,
    sim: Arc<SimMemory>,
    caller_mem: Guarded,
    file: IommufdFile,
}

fn env_with(config: EngineConfig) -> Env {
    let engine = Engine::new(Platform::builtin(), config).unwrap();
    let sim = SimMemory::new();
    sim.map(UserVa(ARG), 0x1_0000, true);
    sim.map(UserVa(BUF), BUF_LEN, true);
    sim.map(UserVa(SCRATCH), 0x10_0000, true);
    sim.map(UserVa(RO), PAGE, true);
    let space = engine.add_space(sim.clone());
    let file = IommufdFile::open(&engine, space).unwrap();
    Env {
        engine,
        caller_mem: Guarded(sim.clone()),
        sim,
        file,
    }
}

fn env() -> Env {
    env_with(EngineConfig::default())
}

impl Env {
    fn ctx(&self) -> &Context {
        self.file.context()
    }

    fn raw(&self, request: u32, arg: u64) -> Result<i64, Errno> {
        self.file.ioctl(
            &Caller {
                mem: &self.caller_mem,
                fds: &NoFds,
            },
            u64::from(request),
            arg,
        )
    }

    /// Write `cmd` at ARG, issue `request`, read the struct back.
    fn call<T: IntoBytes + FromBytes + Immutable>(
        &self,
        request: u32,
        cmd: &T,
    ) -> (Result<i64, Errno>, T) {
        self.put(ARG, cmd);
        let r = self.raw(request, ARG);
        (r, self.get(ARG))
    }

    /// `call` returning only the errno (0 on success).
    fn err<T: IntoBytes + FromBytes + Immutable>(&self, request: u32, cmd: &T) -> Errno {
        match self.call(request, cmd).0 {
            Ok(_) => 0,
            Err(e) => e,
        }
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

    fn ioas_alloc(&self) -> u32 {
        let (r, c) = self.call(
            IOMMU_IOAS_ALLOC,
            &IommuIoasAlloc {
                size: 12,
                ..Default::default()
            },
        );
        r.unwrap();
        assert_ne!(c.out_ioas_id, 0);
        c.out_ioas_id
    }

    fn map(&self, ioas: u32, uva: u64, length: u64, iova: Option<u64>) -> Result<u64, Errno> {
        let mut flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
        if iova.is_some() {
            flags |= IOMMU_IOAS_MAP_FIXED_IOVA;
        }
        let (r, c) = self.call(
            IOMMU_IOAS_MAP,
            &IommuIoasMap {
                size: 40,
                flags,
                ioas_id: ioas,
                user_va: uva,
                length,
                iova: iova.unwrap_or(0),
                ..Default::default()
            },
        );
        r.map(|_| c.iova)
    }

    fn unmap(&self, ioas: u32, iova: u64, length: u64) -> Result<u64, Errno> {
        let (r, c) = self.call(
            IOMMU_IOAS_UNMAP,
            &IommuIoasUnmap {
                size: 24,
                ioas_id: ioas,
                iova,
                length,
            },
        );
        r.map(|_| c.length)
    }

    fn destroy(&self, id: u32) -> Errno {
        self.err(IOMMU_DESTROY, &IommuDestroy { size: 8, id })
    }

    /// A bound mock device with `flags`: (platform device, device object id).
    fn mock(&self, flags: u32) -> (uiommu_platform::topology::DeviceId, u32) {
        let dev = self.engine.add_mock_device(flags).unwrap();
        let id = self.ctx().device_bind(dev).unwrap();
        (dev, id.0)
    }

    fn hwpt_alloc(&self, cmd: IommuHwptAlloc) -> Result<u32, Errno> {
        let (r, c) = self.call(IOMMU_HWPT_ALLOC, &IommuHwptAlloc { size: 48, ..cmd });
        r.map(|_| c.out_hwpt_id)
    }

    /// Issue `f` and check it failed with `errno` and left the engine exactly as it was.
    fn refused(&self, errno: Errno, f: impl FnOnce() -> Errno) {
        let before = self.engine.snapshot();
        assert_eq!(f(), errno);
        assert_eq!(
            self.engine.snapshot(),
            before,
            "a refused call changed the state"
        );
    }
}

/// Every command with its struct size and minimum size.
fn commands() -> Vec<(u32, usize, usize)> {
    fn row<T: UapiCmd>() -> (u32, usize, usize) {
        (T::NUMBER, size_of::<T>(), T::MIN_SIZE)
    }
    vec![
        row::<IommuDestroy>(),
        row::<IommuIoasAlloc>(),
        row::<IommuIoasAllowIovas>(),
        row::<IommuIoasCopy>(),
        row::<IommuIoasIovaRanges>(),
        row::<IommuIoasMap>(),
        row::<IommuIoasUnmap>(),
        row::<IommuOption>(),
        row::<IommuVfioIoas>(),
        row::<IommuHwptAlloc>(),
        row::<IommuHwInfo>(),
        row::<IommuHwptSetDirtyTracking>(),
        row::<IommuHwptGetDirtyBitmap>(),
        row::<IommuHwptInvalidate>(),
        // With this test's file table (no files can be made) a well-formed FAULT_QUEUE_ALLOC is
        // EOPNOTSUPP, but the pointer and size checks come first, as for every command.
        row::<IommuFaultAlloc>(),
    ]
}

// --- the command protocol ---------------------------------------------------------------------

#[test]
fn unknown_numbers_are_enotty() {
    let e = env();
    e.put(ARG, &IommuDestroy { size: 8, id: 0 });
    // Below the iommufd range (the selftest's IOMMUFD_CMD_BASE - 1).
    assert_eq!(
        e.raw(io(IOMMUFD_TYPE, IOMMUFD_CMD_BASE - 1), ARG),
        Err(ENOTTY)
    );
    // A hole in the table and past its end.
    assert_eq!(e.raw(io(IOMMUFD_TYPE, 0x9f), ARG), Err(ENOTTY));
    assert_eq!(e.raw(io(IOMMUFD_TYPE, 0xa1), ARG), Err(ENOTTY));
    // A known nr with other type or direction bits.
    assert_eq!(
        e.raw(io(b'V' as u32, IOMMUFD_CMD_DESTROY), ARG),
        Err(ENOTTY)
    );
    assert_eq!(e.raw(IOMMU_DESTROY | (1 << 30), ARG), Err(ENOTTY));
    // A fault queue needs a file: a front-end that cannot make files refuses it, and no
    // fault object stays behind.
    e.put(
        ARG,
        &IommuFaultAlloc {
            size: 16,
            ..Default::default()
        },
    );
    e.refused(EOPNOTSUPP, || {
        e.raw(IOMMU_FAULT_QUEUE_ALLOC, ARG).unwrap_err()
    });
    e.put(
        ARG,
        &IommuTestCmd {
            size: 72,
            ..Default::default()
        },
    );
    // The selftest command is served; op 0 is no op (EOPNOTSUPP, as the kernel's).
    assert_eq!(e.raw(IOMMU_TEST_CMD, ARG), Err(EOPNOTSUPP));
}

#[test]
fn upper_bits_of_the_request_are_dropped_like_the_kernels_unsigned_int() {
    let e = env();
    e.put(
        ARG,
        &IommuIoasAlloc {
            size: 12,
            ..Default::default()
        },
    );
    let r = e.file.ioctl(
        &Caller {
            mem: &*e.sim,
            fds: &NoFds,
        },
        0xffff_ffff_0000_0000 | u64::from(IOMMU_IOAS_ALLOC),
        ARG,
    );
    assert_eq!(r, Ok(0));
}

#[test]
fn bad_argument_pointer_is_efault_and_changes_nothing() {
    let e = env();
    let ioas = e.ioas_alloc();
    e.map(ioas, BUF, PAGE, Some(0x10000)).unwrap();
    for (number, _, _) in commands() {
        for arg in [0, UNMAPPED, u64::MAX - 2, ARG + 0x1_0000 - 2] {
            e.refused(EFAULT, || e.raw(number, arg).unwrap_err());
        }
    }
}

#[test]
fn size_below_minimum_is_einval_larger_needs_a_zero_tail() {
    // The selftest's cmd_length: min-1 is EINVAL, size+1 with a non-zero extra byte is E2BIG,
    // size+1 with a zero extra byte does what size does.
    let e = env();
    for (number, size, min) in commands() {
        let mut buf = vec![0u8; size + 1];
        buf[..4].copy_from_slice(&((min - 1) as u32).to_le_bytes());
        buf[size] = 0xff;
        e.sim.write(UserVa(ARG), &buf).unwrap();
        e.refused(EINVAL, || e.raw(number, ARG).unwrap_err());
        e.sim
            .write(UserVa(ARG), &((size + 1) as u32).to_le_bytes())
            .unwrap();
        e.refused(E2BIG, || e.raw(number, ARG).unwrap_err());
        e.sim
            .write(UserVa(ARG), &(size as u32).to_le_bytes())
            .unwrap();
        let exact = e.raw(number, ARG);
        e.sim
            .write(UserVa(ARG), &((size + 1) as u32).to_le_bytes())
            .unwrap();
        e.sim.write(UserVa(ARG + size as u64), &[0]).unwrap();
        assert_eq!(e.raw(number, ARG), exact, "ioctl {number:#x}");
    }
}

#[test]
fn longer_struct_with_unreadable_tail_is_efault() {
    let e = env();
    // The struct ends at the last byte of the mapped argument page; its tail is unmapped.
    let at = ARG + 0x1_0000 - 8;
    e.put(at, &IommuDestroy { size: 64, id: 0 });
    e.refused(EFAULT, || e.raw(IOMMU_DESTROY, at).unwrap_err());
}

#[test]
fn extended_destroy_like_the_selftests_cmd_ex_fail() {
    let e = env();
    #[derive(IntoBytes, FromBytes, Immutable)]
    #[repr(C)]
    struct Ex {
        cmd: IommuDestroy,
        future: u64,
    }
    let mut ex = Ex {
        cmd: IommuDestroy { size: 16, id: 0 },
        future: 0,
    };
    assert_eq!(e.err(IOMMU_DESTROY, &ex), ENOENT);
    ex.future = 1;
    assert_eq!(e.err(IOMMU_DESTROY, &ex), E2BIG);
    ex.cmd.size = 8;
    assert_eq!(e.err(IOMMU_DESTROY, &ex), ENOENT);
    ex.cmd.size = 7;
    assert_eq!(e.err(IOMMU_DESTROY, &ex), EINVAL);
}

#[test]
fn reply_is_written_only_up_to_the_callers_size() {
    // A caller whose struct ends at `out_ioas_id` gets no bytes past it.
    let e = env();
    e.sim.write(UserVa(ARG + 12), &[0xaa; 4]).unwrap();
    let (r, c) = e.call(
        IOMMU_IOAS_ALLOC,
        &IommuIoasAlloc {
            size: 12,
            ..Default::default()
        },
    );
    r.unwrap();
    assert_eq!(c.out_ioas_id, 1);
    assert_eq!(e.bytes(ARG + 12, 4), vec![0xaa; 4]);
}

#[test]
fn reply_to_read_only_memory_is_efault_and_the_new_ioas_is_gone() {
    let e = env();
    e.put(
        RO,
        &IommuIoasAlloc {
            size: 12,
            ..Default::default()
        },
    );
    e.refused(EFAULT, || e.raw(IOMMU_IOAS_ALLOC, RO).unwrap_err());
    assert!(e.ctx().objects().unwrap().is_empty());
}

// --- DESTROY, IOAS_ALLOC ----------------------------------------------------------------------

#[test]
fn destroy_unknown_is_enoent_in_use_is_ebusy() {
    let e = env();
    e.refused(ENOENT, || e.destroy(0));
    e.refused(ENOENT, || e.destroy(77));
    let ioas = e.ioas_alloc();
    let (_, dev) = e.mock(0);
    e.ctx().device_attach(ObjId(dev), ObjId(ioas)).unwrap();
    e.refused(EBUSY, || e.destroy(ioas));
    e.refused(EBUSY, || e.destroy(dev));
    e.ctx().device_detach(ObjId(dev)).unwrap();
    assert_eq!(e.destroy(ioas), 0);
    assert_eq!(e.destroy(ioas), ENOENT);
}

#[test]
fn ioas_alloc_flags_are_eopnotsupp() {
    let e = env();
    e.refused(EOPNOTSUPP, || {
        e.err(
            IOMMU_IOAS_ALLOC,
            &IommuIoasAlloc {
                size: 12,
                flags: 1,
                out_ioas_id: 0,
            },
        )
    });
    assert_eq!(e.ioas_alloc(), 1);
    assert_eq!(e.ioas_alloc(), 2);
}

// --- IOAS_MAP, UNMAP, COPY, IOVA_RANGES, ALLOW_IOVAS -----------------------------------------

#[test]
fn ioas_flow_map_ranges_copy_unmap_destroy() {
    let e = env();
    let ioas = e.ioas_alloc();
    // Fixed and automatic IOVAs.
    assert_eq!(e.map(ioas, BUF, 4 * PAGE, Some(0x10_0000)), Ok(0x10_0000));
    let auto = e.map(ioas, BUF + 4 * PAGE, 2 * PAGE, None).unwrap();
    assert_eq!(
        auto % (2 * PAGE),
        0,
        "automatic IOVAs are aligned to the length"
    );
    assert_eq!(e.map(ioas, BUF, PAGE, Some(0x10_1000)), Err(EEXIST));

    // IOVA_RANGES: everything is usable without devices.
    let (r, c) = e.call(
        IOMMU_IOAS_IOVA_RANGES,
        &IommuIoasIovaRanges {
            size: 32,
            ioas_id: ioas,
            num_iovas: 4,
            allowed_iovas: SCRATCH,
            ..Default::default()
        },
    );
    r.unwrap();
    assert_eq!(c.num_iovas, 1);
    assert_eq!(c.out_iova_alignment, 1);
    let r0: IommuIovaRange = e.get(SCRATCH);
    assert_eq!((r0.start, r0.last), (0, u64::MAX));

    // COPY within the IOAS and into a second one.
    let copy = IommuIoasCopy {
        size: 40,
        flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE,
        dst_ioas_id: ioas,
        src_ioas_id: ioas,
        length: PAGE,
        dst_iova: 0x20_0000,
        src_iova: 0x10_0000,
    };
    let (r, c) = e.call(IOMMU_IOAS_COPY, &copy);
    r.unwrap();
    assert_eq!(c.dst_iova, 0x20_0000);
    let other = e.ioas_alloc();
    let (r, c) = e.call(
        IOMMU_IOAS_COPY,
        &IommuIoasCopy {
            flags: IOMMU_IOAS_MAP_READABLE,
            dst_ioas_id: other,
            length: 2 * PAGE,
            dst_iova: 0,
            ..copy
        },
    );
    r.unwrap();
    let areas = e.ctx().ioas_areas(ObjId(other)).unwrap();
    assert_eq!(areas.len(), 1);
    assert_eq!(areas[0].iova.start, c.dst_iova);
    assert_eq!(areas[0].uva, UserVa(BUF));

    // UNMAP returns the bytes; unmapping all of an IOAS, and of an empty one, works.
    assert_eq!(e.unmap(ioas, 0x20_0000, PAGE), Ok(PAGE));
    assert_eq!(e.unmap(ioas, 0, u64::MAX), Ok(6 * PAGE));
    assert_eq!(e.unmap(ioas, 0, u64::MAX), Ok(0));
    assert_eq!(e.destroy(ioas), 0);
    assert_eq!(e.destroy(other), 0);
    assert_eq!(e.engine.total_pins(), 0);
    e.engine.check_invariants().unwrap();
}

#[test]
fn map_refusals_in_the_kernels_order() {
    let e = env();
    let ioas = e.ioas_alloc();
    let good = IommuIoasMap {
        size: 40,
        flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE,
        ioas_id: ioas,
        reserved: 0,
        user_va: BUF,
        length: PAGE,
        iova: 0x10_0000,
    };
    let cases = [
        (
            EOPNOTSUPP,
            IommuIoasMap {
                flags: 1 << 3 | good.flags,
                ..good
            },
        ),
        (
            EOPNOTSUPP,
            IommuIoasMap {
                reserved: 1,
                ..good
            },
        ),
        // Unknown flags before overflow, overflow before the missing right, all before look-up.
        (
            EOPNOTSUPP,
            IommuIoasMap {
                flags: 1 << 7,
                iova: u64::MAX,
                ioas_id: 99,
                ..good
            },
        ),
        (
            EOVERFLOW,
            IommuIoasMap {
                iova: u64::MAX,
                flags: IOMMU_IOAS_MAP_FIXED_IOVA,
                ..good
            },
        ),
        (
            EOVERFLOW,
            IommuIoasMap {
                length: u64::MAX,
                ioas_id: 99,
                ..good
            },
        ),
        (
            EINVAL,
            IommuIoasMap {
                flags: IOMMU_IOAS_MAP_FIXED_IOVA,
                ioas_id: 99,
                ..good
            },
        ),
        (
            ENOENT,
            IommuIoasMap {
                ioas_id: 99,
                ..good
            },
        ),
        (EINVAL, IommuIoasMap { length: 0, ..good }),
    ];
    for (errno, cmd) in cases {
        e.refused(errno, || e.err(IOMMU_IOAS_MAP, &cmd));
    }
    // An object of another type is ENOENT.
    let (_, dev) = e.mock(0);
    e.refused(ENOENT, || {
        e.err(
            IOMMU_IOAS_MAP,
            &IommuIoasMap {
                ioas_id: dev,
                ..good
            },
        )
    });
    assert_eq!(e.err(IOMMU_IOAS_MAP, &good), 0);
    e.refused(EEXIST, || e.err(IOMMU_IOAS_MAP, &good));
    // With a domain the pages are pinned at once: memory that is not there is EFAULT.
    assert_eq!(e.unmap(ioas, 0, u64::MAX), Ok(PAGE));
    e.ctx().device_attach(ObjId(dev), ObjId(ioas)).unwrap();
    let in_aperture = IommuIoasMap {
        iova: MOCK_APERTURE_START,
        ..good
    };
    e.refused(EFAULT, || {
        e.err(
            IOMMU_IOAS_MAP,
            &IommuIoasMap {
                user_va: UNMAPPED,
                ..in_aperture
            },
        )
    });
    assert_eq!(e.err(IOMMU_IOAS_MAP, &in_aperture), 0);
}

#[test]
fn copy_refusals_in_the_kernels_order() {
    let e = env();
    let ioas = e.ioas_alloc();
    e.map(ioas, BUF, 2 * PAGE, Some(0x10_0000)).unwrap();
    let good = IommuIoasCopy {
        size: 40,
        flags: IOMMU_IOAS_MAP_READABLE,
        dst_ioas_id: ioas,
        src_ioas_id: ioas,
        length: PAGE,
        dst_iova: 0,
        src_iova: 0x10_0000,
    };
    let cases = [
        (
            EOPNOTSUPP,
            IommuIoasCopy {
                flags: 1 << 5,
                ..good
            },
        ),
        (
            EOVERFLOW,
            IommuIoasCopy {
                length: u64::MAX,
                ..good
            },
        ),
        (
            EOVERFLOW,
            IommuIoasCopy {
                src_iova: u64::MAX,
                ..good
            },
        ),
        (
            EOVERFLOW,
            IommuIoasCopy {
                dst_iova: u64::MAX,
                ..good
            },
        ),
        (EINVAL, IommuIoasCopy { flags: 0, ..good }),
        (
            ENOENT,
            IommuIoasCopy {
                src_ioas_id: 42,
                ..good
            },
        ),
        (
            ENOENT,
            IommuIoasCopy {
                src_iova: 0x30_0000,
                ..good
            },
        ),
        (
            ENOENT,
            IommuIoasCopy {
                dst_ioas_id: 42,
                ..good
            },
        ),
    ];
    for (errno, cmd) in cases {
        e.refused(errno, || e.err(IOMMU_IOAS_COPY, &cmd));
    }
    assert_eq!(e.err(IOMMU_IOAS_COPY, &good), 0);
}

#[test]
fn unmap_refusals() {
    let e = env();
    let ioas = e.ioas_alloc();
    e.refused(ENOENT, || e.unmap(ioas, 0x10_0000, PAGE).unwrap_err());
    e.map(ioas, BUF, 2 * PAGE, Some(0x10_0000)).unwrap();
    // Splitting an area is refused.
    e.refused(ENOENT, || e.unmap(ioas, 0x10_0000, PAGE).unwrap_err());
    e.refused(EOVERFLOW, || e.unmap(ioas, u64::MAX, PAGE).unwrap_err());
    e.refused(EOVERFLOW, || e.unmap(ioas, PAGE, u64::MAX).unwrap_err());
    // Look-up comes before the overflow check.
    e.refused(ENOENT, || e.unmap(99, u64::MAX, PAGE).unwrap_err());
    // A range that fully contains the area unmaps it.
    assert_eq!(e.unmap(ioas, 0x0f_0000, 0x10_0000), Ok(2 * PAGE));
}

#[test]
fn iova_ranges_two_call_protocol() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, dev) = e.mock(0);
    e.ctx().device_attach(ObjId(dev), ObjId(ioas)).unwrap();
    e.sim.write(UserVa(SCRATCH), &[0xee; 64]).unwrap();
    // First call with no room: EMSGSIZE, the count, nothing written to the array.
    let mut q = IommuIoasIovaRanges {
        size: 32,
        ioas_id: ioas,
        num_iovas: 0,
        allowed_iovas: SCRATCH,
        ..Default::default()
    };
    let (r, c) = e.call(IOMMU_IOAS_IOVA_RANGES, &q);
    assert_eq!(r, Err(EMSGSIZE));
    assert_eq!(c.num_iovas, 1);
    assert_eq!(c.out_iova_alignment, 2048);
    assert_eq!(e.bytes(SCRATCH, 16), vec![0xee; 16]);
    // Second call with room for what was reported.
    q.num_iovas = c.num_iovas;
    let (r, c) = e.call(IOMMU_IOAS_IOVA_RANGES, &q);
    r.unwrap();
    assert_eq!(c.num_iovas, 1);
    let r0: IommuIovaRange = e.get(SCRATCH);
    assert_eq!(
        (r0.start, r0.last),
        (MOCK_APERTURE_START, MOCK_APERTURE_LAST)
    );
    assert_eq!(e.bytes(SCRATCH + 16, 16), vec![0xee; 16]);
    // Bad array, reserved field, unknown IOAS, wrong type.
    e.refused(EFAULT, || {
        e.err(
            IOMMU_IOAS_IOVA_RANGES,
            &IommuIoasIovaRanges {
                allowed_iovas: UNMAPPED,
                ..q
            },
        )
    });
    e.refused(EFAULT, || {
        e.err(
            IOMMU_IOAS_IOVA_RANGES,
            &IommuIoasIovaRanges {
                allowed_iovas: RO,
                ..q
            },
        )
    });
    e.refused(EOPNOTSUPP, || {
        e.err(
            IOMMU_IOAS_IOVA_RANGES,
            &IommuIoasIovaRanges { reserved: 1, ..q },
        )
    });
    e.refused(ENOENT, || {
        e.err(
            IOMMU_IOAS_IOVA_RANGES,
            &IommuIoasIovaRanges { ioas_id: 9, ..q },
        )
    });
    e.refused(ENOENT, || {
        e.err(
            IOMMU_IOAS_IOVA_RANGES,
            &IommuIoasIovaRanges { ioas_id: dev, ..q },
        )
    });
}

#[test]
fn allow_iovas_checks_each_range_and_restricts_allocation() {
    let e = env();
    let ioas = e.ioas_alloc();
    let put_ranges = |rs: &[(u64, u64)]| {
        for (i, (s, l)) in rs.iter().enumerate() {
            e.put(
                SCRATCH + 16 * i as u64,
                &IommuIovaRange {
                    start: *s,
                    last: *l,
                },
            );
        }
    };
    let cmd = |n: u32| IommuIoasAllowIovas {
        size: 24,
        ioas_id: ioas,
        num_iovas: n,
        reserved: 0,
        allowed_iovas: SCRATCH,
    };
    put_ranges(&[(0x100_0000, 0x1ff_ffff), (0x100_0000, 0x100_0000)]);
    e.refused(EINVAL, || e.err(IOMMU_IOAS_ALLOW_IOVAS, &cmd(2)));
    put_ranges(&[(0x100_0000, 0x1ff_ffff), (0x180_0000, 0x2ff_ffff)]);
    e.refused(EINVAL, || e.err(IOMMU_IOAS_ALLOW_IOVAS, &cmd(2)));
    e.refused(EOPNOTSUPP, || {
        e.err(
            IOMMU_IOAS_ALLOW_IOVAS,
            &IommuIoasAllowIovas {
                reserved: 1,
                ..cmd(1)
            },
        )
    });
    e.refused(ENOENT, || {
        e.err(
            IOMMU_IOAS_ALLOW_IOVAS,
            &IommuIoasAllowIovas {
                ioas_id: 5,
                ..cmd(1)
            },
        )
    });
    e.refused(EFAULT, || {
        e.err(
            IOMMU_IOAS_ALLOW_IOVAS,
            &IommuIoasAllowIovas {
                allowed_iovas: UNMAPPED,
                ..cmd(1)
            },
        )
    });
    // A huge count is read range by range, as the kernel reads it: the overlap of the second
    // range is EINVAL, whatever the count says.
    e.refused(EINVAL, || e.err(IOMMU_IOAS_ALLOW_IOVAS, &cmd(u32::MAX)));
    // The first range is fine and the second unreadable: EFAULT.
    let edge = SCRATCH + 0x10_0000 - 16;
    e.put(
        edge,
        &IommuIovaRange {
            start: 0x100_0000,
            last: 0x1ff_ffff,
        },
    );
    e.refused(EFAULT, || {
        e.err(
            IOMMU_IOAS_ALLOW_IOVAS,
            &IommuIoasAllowIovas {
                allowed_iovas: edge,
                ..cmd(2)
            },
        )
    });
    // With a huge count too: EFAULT at the first unreadable range (the kernel's answer; no
    // cap of uiommu's comes first).
    e.refused(EFAULT, || {
        e.err(
            IOMMU_IOAS_ALLOW_IOVAS,
            &IommuIoasAllowIovas {
                allowed_iovas: edge,
                ..cmd(u32::MAX)
            },
        )
    });
    // A bad first range is EINVAL before the second is read.
    e.put(edge, &IommuIovaRange { start: 5, last: 5 });
    e.refused(EINVAL, || {
        e.err(
            IOMMU_IOAS_ALLOW_IOVAS,
            &IommuIoasAllowIovas {
                allowed_iovas: edge,
                ..cmd(2)
            },
        )
    });
    put_ranges(&[(0x100_0000, 0x1ff_ffff)]);
    assert_eq!(e.err(IOMMU_IOAS_ALLOW_IOVAS, &cmd(1)), 0);
    let iova = e.map(ioas, BUF, 4 * PAGE, None).unwrap();
    assert!((0x100_0000..=0x1ff_ffff).contains(&iova));
    // Allowed ranges restrict automatic IOVAs only (the kernel's iopt_check_iova).
    assert_eq!(e.map(ioas, BUF, PAGE, Some(0x10_0000)), Ok(0x10_0000));
    // Zero ranges lift the restriction.
    assert_eq!(e.err(IOMMU_IOAS_ALLOW_IOVAS, &cmd(0)), 0);
    assert_eq!(
        e.ctx().ioas_iova_ranges(ObjId(ioas)).unwrap().ranges.len(),
        1
    );
}

/// Every command that takes an IOAS, given an object of another type: ENOENT from
/// `iommufd_get_ioas` (the type check of `iommufd_get_object`), nothing changed.
#[test]
fn ioas_commands_given_another_object_type_are_enoent() {
    let e = env();
    let ioas = e.ioas_alloc();
    // Inside the mock aperture, so that a mock domain can be made for the IOAS.
    let at = MOCK_APERTURE_START;
    e.map(ioas, BUF, 2 * PAGE, Some(at)).unwrap();
    let (_, dev) = e.mock(0);
    let hwpt = e
        .hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: ioas,
            ..Default::default()
        })
        .unwrap();
    e.put(
        SCRATCH,
        &IommuIovaRange {
            start: 0x100_0000,
            last: 0x1ff_ffff,
        },
    );
    for other in [dev, hwpt] {
        e.refused(ENOENT, || {
            e.err(
                IOMMU_IOAS_ALLOW_IOVAS,
                &IommuIoasAllowIovas {
                    size: 24,
                    ioas_id: other,
                    num_iovas: 1,
                    reserved: 0,
                    allowed_iovas: SCRATCH,
                },
            )
        });
        let copy = IommuIoasCopy {
            size: 40,
            flags: IOMMU_IOAS_MAP_READABLE,
            dst_ioas_id: ioas,
            src_ioas_id: ioas,
            length: PAGE,
            dst_iova: 0,
            src_iova: at,
        };
        e.refused(ENOENT, || {
            e.err(
                IOMMU_IOAS_COPY,
                &IommuIoasCopy {
                    src_ioas_id: other,
                    ..copy
                },
            )
        });
        e.refused(ENOENT, || {
            e.err(
                IOMMU_IOAS_COPY,
                &IommuIoasCopy {
                    dst_ioas_id: other,
                    ..copy
                },
            )
        });
        e.refused(ENOENT, || e.unmap(other, at, 2 * PAGE).unwrap_err());
        // Unmap-all takes the same look-up.
        e.refused(ENOENT, || e.unmap(other, 0, u64::MAX).unwrap_err());
        for op in [IOMMU_OPTION_OP_GET, IOMMU_OPTION_OP_SET] {
            e.refused(ENOENT, || {
                e.err(
                    IOMMU_OPTION,
                    &IommuOption {
                        size: 24,
                        option_id: IOMMU_OPTION_HUGE_PAGES,
                        op,
                        object_id: other,
                        val64: 0,
                        ..Default::default()
                    },
                )
            });
        }
        e.refused(ENOENT, || {
            e.err(
                IOMMU_VFIO_IOAS,
                &IommuVfioIoas {
                    size: 12,
                    ioas_id: other,
                    op: IOMMU_VFIO_IOAS_SET,
                    ..Default::default()
                },
            )
        });
    }
    // Nothing was set as the compatibility IOAS.
    e.refused(ENODEV, || {
        e.err(
            IOMMU_VFIO_IOAS,
            &IommuVfioIoas {
                size: 12,
                op: IOMMU_VFIO_IOAS_GET,
                ..Default::default()
            },
        )
    });
    // The IOAS itself still answers each of them.
    assert_eq!(e.unmap(ioas, at, 2 * PAGE), Ok(2 * PAGE));
}

/// IOMMU_IOAS_MAP with `user_va + length` past the top of the address space: EOVERFLOW from
/// `iopt_alloc_pages` (pages.c), before the IOVA is looked at; nothing mapped.
#[test]
fn map_with_a_wrapping_user_range_is_eoverflow() {
    let e = env();
    let ioas = e.ioas_alloc();
    for (uva, length) in [
        (u64::MAX - PAGE + 1, 2 * PAGE),
        (BUF, u64::MAX - BUF + 1),
        (u64::MAX, 1),
        // The kernel computes the exclusive end: a range ending at the very top wraps too.
        (u64::MAX - PAGE + 1, PAGE),
    ] {
        e.refused(EOVERFLOW, || {
            e.map(ioas, uva, length, Some(0x10_0000)).unwrap_err()
        });
        e.refused(EOVERFLOW, || e.map(ioas, uva, length, None).unwrap_err());
    }
    // One byte short of the top is no overflow: the IOVA is then mapped (nothing is pinned
    // without a domain).
    assert_eq!(
        e.map(ioas, u64::MAX - PAGE + 1, PAGE - 1, Some(0x10_0000)),
        Ok(0x10_0000)
    );
}

// --- OPTION, VFIO_IOAS ------------------------------------------------------------------------

#[test]
fn global_options_like_the_selftest() {
    let e = env();
    let mut o = IommuOption {
        size: 24,
        option_id: IOMMU_OPTION_RLIMIT_MODE,
        op: IOMMU_OPTION_OP_GET,
        val64: 1,
        ..Default::default()
    };
    let (r, c) = e.call(IOMMU_OPTION, &o);
    r.unwrap();
    assert_eq!(c.val64, 0);
    o.op = IOMMU_OPTION_OP_SET;
    assert_eq!(e.err(IOMMU_OPTION, &o), 0);
    o.val64 = 2;
    e.refused(EINVAL, || e.err(IOMMU_OPTION, &o));
    o.op = IOMMU_OPTION_OP_GET;
    let (r, c) = e.call(IOMMU_OPTION, &o);
    r.unwrap();
    assert_eq!(c.val64, 1);
    o.op = IOMMU_OPTION_OP_SET;
    o.val64 = 0;
    assert_eq!(e.err(IOMMU_OPTION, &o), 0);
    o.op = IOMMU_OPTION_OP_GET;
    o.option_id = IOMMU_OPTION_HUGE_PAGES;
    e.refused(ENOENT, || e.err(IOMMU_OPTION, &o));
    o.op = IOMMU_OPTION_OP_SET;
    e.refused(ENOENT, || e.err(IOMMU_OPTION, &o));
    // Other refusals.
    let rl = IommuOption {
        option_id: IOMMU_OPTION_RLIMIT_MODE,
        ..o
    };
    e.refused(EOPNOTSUPP, || {
        e.err(IOMMU_OPTION, &IommuOption { reserved: 1, ..rl })
    });
    e.refused(EOPNOTSUPP, || {
        e.err(IOMMU_OPTION, &IommuOption { object_id: 1, ..rl })
    });
    e.refused(EOPNOTSUPP, || {
        e.err(IOMMU_OPTION, &IommuOption { op: 7, ..rl })
    });
    e.refused(EOPNOTSUPP, || {
        e.err(IOMMU_OPTION, &IommuOption { option_id: 9, ..rl })
    });
    // Once the context has objects the mode is fixed: EBUSY, also for a bad value.
    e.ioas_alloc();
    e.refused(EBUSY, || {
        e.err(IOMMU_OPTION, &IommuOption { val64: 1, ..rl })
    });
    e.refused(EBUSY, || {
        e.err(IOMMU_OPTION, &IommuOption { val64: 2, ..rl })
    });
}

#[test]
fn rlimit_mode_needs_cap_sys_resource() {
    let e = env_with(EngineConfig {
        cap_sys_resource: false,
        ..EngineConfig::default()
    });
    let o = IommuOption {
        size: 24,
        option_id: IOMMU_OPTION_RLIMIT_MODE,
        op: IOMMU_OPTION_OP_SET,
        val64: 1,
        ..Default::default()
    };
    e.refused(EPERM, || e.err(IOMMU_OPTION, &o));
    e.refused(EPERM, || {
        e.err(IOMMU_OPTION, &IommuOption { val64: 2, ..o })
    });
}

#[test]
fn huge_pages_option_on_an_ioas() {
    let e = env();
    let ioas = e.ioas_alloc();
    let mut o = IommuOption {
        size: 24,
        option_id: IOMMU_OPTION_HUGE_PAGES,
        op: IOMMU_OPTION_OP_GET,
        val64: 3,
        object_id: ioas,
        ..Default::default()
    };
    let (r, c) = e.call(IOMMU_OPTION, &o);
    r.unwrap();
    assert_eq!(c.val64, 1);
    o.op = IOMMU_OPTION_OP_SET;
    o.val64 = 0;
    assert_eq!(e.err(IOMMU_OPTION, &o), 0);
    o.op = IOMMU_OPTION_OP_GET;
    o.val64 = 3;
    let (r, c) = e.call(IOMMU_OPTION, &o);
    r.unwrap();
    assert_eq!(c.val64, 0);
    o.op = IOMMU_OPTION_OP_SET;
    o.val64 = 2;
    e.refused(EINVAL, || e.err(IOMMU_OPTION, &o));
    e.refused(EOPNOTSUPP, || {
        e.err(IOMMU_OPTION, &IommuOption { op: 5, ..o })
    });
    o.val64 = 1;
    assert_eq!(e.err(IOMMU_OPTION, &o), 0);
    assert!(e.ctx().huge_pages(ObjId(ioas)).unwrap());
}

#[test]
fn vfio_ioas_get_set_clear() {
    let e = env();
    let mut v = IommuVfioIoas {
        size: 12,
        op: IOMMU_VFIO_IOAS_GET,
        ..Default::default()
    };
    e.refused(ENODEV, || e.err(IOMMU_VFIO_IOAS, &v));
    v.op = IOMMU_VFIO_IOAS_SET;
    e.refused(ENOENT, || e.err(IOMMU_VFIO_IOAS, &v));
    let ioas = e.ioas_alloc();
    v.ioas_id = ioas;
    assert_eq!(e.err(IOMMU_VFIO_IOAS, &v), 0);
    v.op = IOMMU_VFIO_IOAS_GET;
    v.ioas_id = 0;
    let (r, c) = e.call(IOMMU_VFIO_IOAS, &v);
    r.unwrap();
    assert_eq!(c.ioas_id, ioas);
    e.refused(EOPNOTSUPP, || {
        e.err(IOMMU_VFIO_IOAS, &IommuVfioIoas { reserved: 1, ..v })
    });
    e.refused(EOPNOTSUPP, || {
        e.err(IOMMU_VFIO_IOAS, &IommuVfioIoas { op: 3, ..v })
    });
    v.op = IOMMU_VFIO_IOAS_CLEAR;
    assert_eq!(e.err(IOMMU_VFIO_IOAS, &v), 0);
    v.op = IOMMU_VFIO_IOAS_GET;
    e.refused(ENODEV, || e.err(IOMMU_VFIO_IOAS, &v));
}

// --- HWPT_ALLOC, HWPT_INVALIDATE --------------------------------------------------------------

#[test]
fn hwpt_alloc_paging_and_nested_like_the_selftest() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (mock, dev) = e.mock(0);
    let paging = |pt_id, flags| IommuHwptAlloc {
        dev_id: dev,
        pt_id,
        flags,
        ..Default::default()
    };
    // Negative paging cases, each leaving nothing behind.
    e.refused(ENOENT, || {
        e.hwpt_alloc(IommuHwptAlloc {
            dev_id: ioas,
            ..paging(dev, 0)
        })
        .unwrap_err()
    });
    // An unknown dev_id: ENOENT (iommufd_get_device), before pt_id is looked at.
    for dev_id in [0, 77] {
        e.refused(ENOENT, || {
            e.hwpt_alloc(IommuHwptAlloc {
                dev_id,
                ..paging(ioas, 0)
            })
            .unwrap_err()
        });
        e.refused(ENOENT, || {
            e.hwpt_alloc(IommuHwptAlloc {
                dev_id,
                ..paging(78, 0)
            })
            .unwrap_err()
        });
    }
    e.refused(EINVAL, || e.hwpt_alloc(paging(dev, 0)).unwrap_err());
    e.refused(EINVAL, || e.hwpt_alloc(paging(77, 0)).unwrap_err());
    e.refused(EOPNOTSUPP, || {
        e.hwpt_alloc(paging(
            ioas,
            IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_FAULT_ID_VALID,
        ))
        .unwrap_err()
    });
    e.refused(EOPNOTSUPP, || {
        e.hwpt_alloc(paging(ioas, !IOMMU_HWPT_ALLOC_NEST_PARENT))
            .unwrap_err()
    });
    e.refused(EOPNOTSUPP, || {
        e.hwpt_alloc(IommuHwptAlloc {
            reserved: 1,
            ..paging(ioas, 0)
        })
        .unwrap_err()
    });
    e.refused(EINVAL, || {
        e.hwpt_alloc(IommuHwptAlloc {
            data_len: 4,
            ..paging(ioas, 0)
        })
        .unwrap_err()
    });
    e.refused(EINVAL, || {
        e.hwpt_alloc(IommuHwptAlloc {
            data_type: IOMMU_HWPT_DATA_SELFTEST,
            ..paging(ioas, 0)
        })
        .unwrap_err()
    });
    let parent = e
        .hwpt_alloc(paging(ioas, IOMMU_HWPT_ALLOC_NEST_PARENT))
        .unwrap();
    let not_parent = e.hwpt_alloc(paging(ioas, 0)).unwrap();
    assert_ne!(parent, not_parent);

    e.put(
        SCRATCH,
        &IommuHwptSelftest {
            iotlb: IOMMU_TEST_IOTLB_DEFAULT,
        },
    );
    let nested = |pt_id, flags, data_type, data_len, data_uptr| IommuHwptAlloc {
        dev_id: dev,
        pt_id,
        flags,
        data_type,
        data_len,
        data_uptr,
        ..Default::default()
    };
    let s = IOMMU_HWPT_DATA_SELFTEST;
    e.refused(EINVAL, || {
        e.hwpt_alloc(nested(parent, 0, IOMMU_HWPT_DATA_NONE, 4, SCRATCH))
            .unwrap_err()
    });
    e.refused(EOPNOTSUPP, || {
        e.hwpt_alloc(nested(parent, 0, s + 1, 4, SCRATCH))
            .unwrap_err()
    });
    e.refused(EINVAL, || {
        e.hwpt_alloc(nested(parent, 0, s, 3, SCRATCH)).unwrap_err()
    });
    e.refused(EINVAL, || {
        e.hwpt_alloc(nested(parent, 0, s, 5, SCRATCH)).unwrap_err()
    });
    e.refused(EFAULT, || {
        e.hwpt_alloc(nested(parent, 0, s, 4, 0)).unwrap_err()
    });
    e.refused(EOPNOTSUPP, || {
        e.hwpt_alloc(nested(parent, IOMMU_HWPT_ALLOC_NEST_PARENT, s, 4, SCRATCH))
            .unwrap_err()
    });
    e.refused(EINVAL, || {
        e.hwpt_alloc(nested(not_parent, 0, s, 4, SCRATCH))
            .unwrap_err()
    });
    // `fault_id` 0 names no fault queue (the HWPT made first is undone).
    e.refused(ENOENT, || {
        e.hwpt_alloc(nested(parent, IOMMU_HWPT_FAULT_ID_VALID, s, 4, SCRATCH))
            .unwrap_err()
    });
    let n0 = e.hwpt_alloc(nested(parent, 0, s, 4, SCRATCH)).unwrap();
    let n1 = e.hwpt_alloc(nested(parent, 0, s, 4, SCRATCH)).unwrap();
    // A nested HWPT cannot be a parent; the parent is busy while nested HWPTs use it.
    e.refused(EINVAL, || {
        e.hwpt_alloc(nested(n0, 0, s, 4, SCRATCH)).unwrap_err()
    });
    e.refused(EBUSY, || e.destroy(parent));

    // The device moves through the nested HWPTs, as the selftest's replace does.
    e.ctx().device_attach(ObjId(dev), ObjId(n0)).unwrap();
    e.refused(EBUSY, || e.destroy(n0));
    e.ctx().device_replace(ObjId(dev), ObjId(n1)).unwrap();
    assert_eq!(e.destroy(n0), 0);
    e.ctx().device_replace(ObjId(dev), ObjId(parent)).unwrap();
    assert_eq!(e.destroy(n1), 0);
    e.ctx().device_detach(ObjId(dev)).unwrap();
    assert_eq!(e.destroy(parent), 0);
    assert_eq!(e.destroy(not_parent), 0);
    let _ = mock;
    e.engine.check_invariants().unwrap();
}

#[test]
fn hwpt_alloc_dirty_tracking_needs_a_capable_device() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, dev) = e.mock(MOCK_FLAGS_DEVICE_NO_DIRTY);
    e.refused(EOPNOTSUPP, || {
        e.hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: ioas,
            flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            ..Default::default()
        })
        .unwrap_err()
    });
}

#[test]
fn hwpt_alloc_reply_failure_destroys_the_new_hwpt() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, dev) = e.mock(0);
    e.put(
        RO,
        &IommuHwptAlloc {
            size: 48,
            dev_id: dev,
            pt_id: ioas,
            ..Default::default()
        },
    );
    e.refused(EFAULT, || e.raw(IOMMU_HWPT_ALLOC, RO).unwrap_err());
}

fn iotlb(e: &Env, hwpt: u32) -> Vec<u32> {
    let mut v = Vec::new();
    e.ctx()
        .hwpt_nested_data(ObjId(hwpt), &mut |d| v = d.clone())
        .unwrap();
    v
}

#[test]
fn hwpt_invalidate_like_the_selftest() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, dev) = e.mock(0);
    let parent = e
        .hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: ioas,
            flags: IOMMU_HWPT_ALLOC_NEST_PARENT,
            ..Default::default()
        })
        .unwrap();
    e.put(
        SCRATCH,
        &IommuHwptSelftest {
            iotlb: IOMMU_TEST_IOTLB_DEFAULT,
        },
    );
    let mk = || {
        e.hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: parent,
            data_type: IOMMU_HWPT_DATA_SELFTEST,
            data_len: 4,
            data_uptr: SCRATCH,
            ..Default::default()
        })
        .unwrap()
    };
    let (n0, n1) = (mk(), mk());
    assert_eq!(iotlb(&e, n0), vec![IOMMU_TEST_IOTLB_DEFAULT; 4]);

    const REQS: u64 = SCRATCH + 0x1000;
    let put_reqs = |rs: &[(u32, u32)]| {
        for (i, (flags, id)) in rs.iter().enumerate() {
            e.put(
                REQS + 8 * i as u64,
                &IommuHwptInvalidateSelftest {
                    flags: *flags,
                    iotlb_id: *id,
                },
            );
        }
    };
    let inv = |hwpt, data_type, entry_len, entry_num, data_uptr| -> (Errno, u32) {
        let (r, c) = e.call(
            IOMMU_HWPT_INVALIDATE,
            &IommuHwptInvalidate {
                size: 32,
                hwpt_id: hwpt,
                data_uptr,
                data_type,
                entry_len,
                entry_num,
                reserved: 0,
            },
        );
        (r.err().unwrap_or(0), c.entry_num)
    };
    let sel = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
    put_reqs(&[(0, 0), (0, 0)]);
    // Only nested HWPTs; zero requests check just the type; size sanity; flags; ids.
    assert_eq!(inv(parent, sel, 8, 1, REQS), (ENOENT, 0));
    // Unknown ids and other types (iommufd_get_hwpt_nested): ENOENT, entry_num 0 written back.
    for id in [0, 99, ioas, dev] {
        let before = e.engine.snapshot();
        assert_eq!(inv(id, sel, 8, 1, REQS), (ENOENT, 0), "id {id}");
        assert_eq!(inv(id, sel, 8, 0, REQS), (ENOENT, 0), "id {id}");
        assert_eq!(e.engine.snapshot(), before);
    }
    assert_eq!(inv(n0, sel, 8, 0, REQS), (0, 0));
    assert_eq!(
        inv(n0, IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID, 8, 1, REQS),
        (EINVAL, 0)
    );
    assert_eq!(inv(n0, sel, 9, 1, REQS), (EINVAL, 0));
    assert_eq!(inv(n0, sel, 1, 1, REQS), (EINVAL, 0));
    assert_eq!(inv(n0, sel, 0, 1, REQS), (EINVAL, 0));
    assert_eq!(inv(n0, sel, 8, 1, 0), (EINVAL, 0));
    assert_eq!(inv(n0, sel, 8, 1, UNMAPPED), (EFAULT, 0));
    assert_eq!(inv(n0, sel, 8, (1 << 19) + 1, REQS), (EINVAL, 0));
    put_reqs(&[(0xffff_ffff, 0)]);
    assert_eq!(inv(n0, sel, 8, 1, REQS), (EOPNOTSUPP, 0));
    put_reqs(&[(0, MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1)]);
    assert_eq!(inv(n0, sel, 8, 1, REQS), (EINVAL, 0));
    assert_eq!(iotlb(&e, n0), vec![IOMMU_TEST_IOTLB_DEFAULT; 4]);
    // The first request is done, the second refused.
    put_reqs(&[(0, 0), (0xffff_ffff, 1)]);
    assert_eq!(inv(n0, sel, 8, 2, REQS), (EOPNOTSUPP, 1));
    put_reqs(&[(0, 0), (0, MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1)]);
    assert_eq!(inv(n0, sel, 8, 2, REQS), (EINVAL, 1));
    let d = IOMMU_TEST_IOTLB_DEFAULT;
    assert_eq!(iotlb(&e, n0), vec![0, d, d, d]);
    put_reqs(&[(0, 1)]);
    assert_eq!(inv(n0, sel, 8, 1, REQS), (0, 1));
    assert_eq!(iotlb(&e, n0), vec![0, 0, d, d]);
    put_reqs(&[(0, 2), (0, 3)]);
    assert_eq!(inv(n0, sel, 8, 2, REQS), (0, 2));
    assert_eq!(iotlb(&e, n0), vec![0; 4]);
    put_reqs(&[(IOMMU_TEST_INVALIDATE_FLAG_ALL, 0)]);
    assert_eq!(inv(n1, sel, 8, 1, REQS), (0, 1));
    assert_eq!(iotlb(&e, n1), vec![0; 4]);
    // Reserved field.
    let (r, c) = e.call(
        IOMMU_HWPT_INVALIDATE,
        &IommuHwptInvalidate {
            size: 32,
            hwpt_id: n0,
            data_uptr: REQS,
            data_type: sel,
            entry_len: 8,
            entry_num: 1,
            reserved: 1,
        },
    );
    assert_eq!((r, c.entry_num), (Err(EOPNOTSUPP), 0));
}

// --- GET_HW_INFO ------------------------------------------------------------------------------

fn hw_info(e: &Env, dev: u32, data_type: Option<u32>, uptr: u64, len: u32) -> (Errno, IommuHwInfo) {
    let (r, c) = e.call(
        IOMMU_GET_HW_INFO,
        &IommuHwInfo {
            size: 40,
            flags: if data_type.is_some() {
                IOMMU_HW_INFO_FLAG_INPUT_TYPE
            } else {
                0
            },
            dev_id: dev,
            data_len: len,
            data_uptr: uptr,
            data_type: data_type.unwrap_or(0),
            ..Default::default()
        },
    );
    (r.err().unwrap_or(0), c)
}

#[test]
fn get_hw_info_of_a_mock_device_like_the_selftest() {
    let e = env();
    let (_, dev) = e.mock(0);
    // Zero-size buffer.
    let (r, c) = hw_info(&e, dev, None, 0, 0);
    assert_eq!(r, 0);
    assert_eq!(c.data_type, IOMMU_HW_INFO_TYPE_SELFTEST);
    assert_eq!(c.data_len, 8);
    assert_eq!(c.out_capabilities, IOMMU_HW_CAP_DIRTY_TRACKING);
    assert_eq!(c.out_max_pasid_log2, 0);
    // Exact size.
    let (r, _) = hw_info(&e, dev, None, SCRATCH, 8);
    assert_eq!(r, 0);
    let info: IommuTestHwInfo = e.get(SCRATCH);
    assert_eq!(
        (info.flags, info.test_reg),
        (0, IOMMU_HW_INFO_SELFTEST_REGVAL)
    );
    // A wrong type asked for, and the right one.
    e.refused(EOPNOTSUPP, || {
        hw_info(&e, dev, Some(IOMMU_HW_INFO_TYPE_SELFTEST + 1), SCRATCH, 8).0
    });
    assert_eq!(
        hw_info(&e, dev, Some(IOMMU_HW_INFO_TYPE_SELFTEST), SCRATCH, 8).0,
        0
    );
    // Without the input flag the field is ignored.
    assert_eq!(hw_info(&e, dev, None, SCRATCH, 8).0, 0);
    // A larger buffer has its tail zeroed; a smaller one gets what fits.
    e.sim.write(UserVa(SCRATCH), &[0xcc; 32]).unwrap();
    let (r, c) = hw_info(&e, dev, None, SCRATCH, 16);
    assert_eq!((r, c.data_len), (0, 8));
    assert_eq!(
        &e.bytes(SCRATCH + 8, 24)[..],
        &[[0u8; 8].as_slice(), &[0xcc; 16]].concat()[..]
    );
    e.sim.write(UserVa(SCRATCH), &[0xcc; 8]).unwrap();
    let (r, c) = hw_info(&e, dev, None, SCRATCH, 4);
    assert_eq!((r, c.data_len), (0, 8));
    assert_eq!(e.bytes(SCRATCH, 8), [0, 0, 0, 0, 0xcc, 0xcc, 0xcc, 0xcc]);
    // Refusals.
    e.refused(EOPNOTSUPP, || {
        e.err(
            IOMMU_GET_HW_INFO,
            &IommuHwInfo {
                size: 40,
                flags: 2,
                dev_id: dev,
                ..Default::default()
            },
        )
    });
    e.refused(EOPNOTSUPP, || {
        e.err(
            IOMMU_GET_HW_INFO,
            &IommuHwInfo {
                size: 40,
                reserved: [0, 1, 0],
                dev_id: dev,
                ..Default::default()
            },
        )
    });
    e.refused(ENOENT, || hw_info(&e, 99, None, SCRATCH, 8).0);
    let ioas = e.ioas_alloc();
    e.refused(ENOENT, || hw_info(&e, ioas, None, SCRATCH, 8).0);
    e.refused(EFAULT, || hw_info(&e, dev, None, UNMAPPED, 8).0);
    e.refused(EFAULT, || hw_info(&e, dev, None, RO, 8).0);
    e.refused(EFAULT, || hw_info(&e, dev, None, RO + PAGE - 4, 64).0);
}

#[test]
fn get_hw_info_capabilities_and_pasid_follow_the_mock_flags() {
    let e = env();
    let (_, nodirty) = e.mock(MOCK_FLAGS_DEVICE_NO_DIRTY);
    let (r, c) = hw_info(&e, nodirty, None, 0, 0);
    assert_eq!((r, c.out_capabilities), (0, 0));
    let (_, pasid) = e.mock(MOCK_FLAGS_DEVICE_PASID);
    let (r, c) = hw_info(&e, pasid, None, 0, 0);
    assert_eq!((r, c.out_max_pasid_log2), (0, MOCK_PASID_WIDTH));
}

#[test]
fn get_hw_info_of_a_radix_device_is_type_none() {
    let e = env();
    let dma0 = e
        .engine
        .with_platform(|p| p.topology.find_name("dma0"))
        .unwrap();
    let dev = e.ctx().device_bind(dma0).unwrap().0;
    e.sim.write(UserVa(SCRATCH), &[0xcc; 8]).unwrap();
    let (r, c) = hw_info(&e, dev, None, SCRATCH, 8);
    assert_eq!(r, 0);
    assert_eq!(c.data_type, IOMMU_HW_INFO_TYPE_NONE);
    assert_eq!(c.data_len, 0);
    assert_eq!(c.out_capabilities, IOMMU_HW_CAP_DIRTY_TRACKING);
    assert_eq!(
        e.bytes(SCRATCH, 8),
        vec![0; 8],
        "the whole buffer is zeroed"
    );
}

// --- dirty tracking ---------------------------------------------------------------------------

struct Dirty {
    e: Env,
    mock: uiommu_platform::topology::DeviceId,
    hwpt: u32,
}

const DIOVA: u64 = MOCK_APERTURE_START;
const DLEN: u64 = 0x10_0000;
const BITMAP: u64 = SCRATCH + 0x8000;

fn dirty_setup() -> Dirty {
    let e = env();
    let ioas = e.ioas_alloc();
    let (mock, dev) = e.mock(0);
    e.map(ioas, BUF, DLEN, Some(DIOVA)).unwrap();
    let hwpt = e
        .hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: ioas,
            flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            ..Default::default()
        })
        .unwrap();
    e.ctx().device_attach(ObjId(dev), ObjId(hwpt)).unwrap();
    Dirty { e, mock, hwpt }
}

impl Dirty {
    fn track(&self, on: bool) -> Errno {
        self.e.err(
            IOMMU_HWPT_SET_DIRTY_TRACKING,
            &IommuHwptSetDirtyTracking {
                size: 16,
                flags: u32::from(on),
                hwpt_id: self.hwpt,
                reserved: 0,
            },
        )
    }

    fn read(&self, iova: u64, length: u64, page_size: u64, flags: u32, data: u64) -> Errno {
        self.e.err(
            IOMMU_HWPT_GET_DIRTY_BITMAP,
            &IommuHwptGetDirtyBitmap {
                size: 48,
                hwpt_id: self.hwpt,
                flags,
                reserved: 0,
                iova,
                length,
                page_size,
                data,
            },
        )
    }

    fn bits(&self, data: u64, nbits: u64) -> Vec<u64> {
        let bytes = self.e.bytes(data, nbits.div_ceil(8) as usize);
        (0..nbits)
            .filter(|b| bytes[(*b / 8) as usize] & (1 << (b % 8)) != 0)
            .collect()
    }
}

#[test]
fn dirty_bitmap_reports_device_writes_and_clears_them() {
    let d = dirty_setup();
    let e = &d.e;
    assert_eq!(d.track(true), 0);
    e.engine
        .dma_write(d.mock, Iova(DIOVA + 0x3000), b"dirty")
        .unwrap();
    e.engine
        .dma_write(d.mock, Iova(DIOVA + 0x8800), b"x")
        .unwrap();
    let nbits = DLEN / 2048;
    e.sim
        .write(UserVa(BITMAP), &vec![0; (nbits / 8) as usize])
        .unwrap();
    // NO_CLEAR keeps the marks.
    assert_eq!(
        d.read(
            DIOVA,
            DLEN,
            2048,
            IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
            BITMAP
        ),
        0
    );
    assert_eq!(d.bits(BITMAP, nbits), vec![6, 17]);
    e.sim
        .write(UserVa(BITMAP), &vec![0; (nbits / 8) as usize])
        .unwrap();
    assert_eq!(d.read(DIOVA, DLEN, 2048, 0, BITMAP), 0);
    assert_eq!(d.bits(BITMAP, nbits), vec![6, 17]);
    // Read and cleared: nothing the second time.
    e.sim
        .write(UserVa(BITMAP), &vec![0; (nbits / 8) as usize])
        .unwrap();
    assert_eq!(d.read(DIOVA, DLEN, 2048, 0, BITMAP), 0);
    assert!(d.bits(BITMAP, nbits).is_empty());
    // Larger pages per bit, an unaligned bitmap, and bits already set stay set.
    e.engine
        .dma_write(d.mock, Iova(DIOVA + 0x3000), b"again")
        .unwrap();
    let unaligned = BITMAP + 0xff1;
    e.sim.write(UserVa(unaligned), &[0x80, 0, 0, 0]).unwrap();
    assert_eq!(d.read(DIOVA, DLEN, 0x1_0000, 0, unaligned), 0);
    assert_eq!(d.bits(unaligned, 16), vec![0, 7]);
    // A sub-range starting mid-way, one bit per 4 KiB.
    e.engine
        .dma_write(d.mock, Iova(DIOVA + 0x5000), b"y")
        .unwrap();
    e.sim.write(UserVa(BITMAP), &[0; 8]).unwrap();
    assert_eq!(d.read(DIOVA + 0x4000, 0x4000, 0x1000, 0, BITMAP), 0);
    assert_eq!(d.bits(BITMAP, 4), vec![1]);
    // Tracking off: nothing is recorded and reading is refused.
    assert_eq!(d.track(false), 0);
    e.refused(EINVAL, || d.read(DIOVA, DLEN, 2048, 0, BITMAP));
}

#[test]
fn enabling_dirty_tracking_starts_from_a_clean_slate() {
    let d = dirty_setup();
    assert_eq!(d.track(true), 0);
    d.e.engine
        .dma_write(d.mock, Iova(DIOVA), b"before")
        .unwrap();
    assert_eq!(d.track(false), 0);
    assert_eq!(d.track(true), 0);
    d.e.sim.write(UserVa(BITMAP), &[0; 64]).unwrap();
    assert_eq!(d.read(DIOVA, DLEN, 2048, 0, BITMAP), 0);
    assert!(d.bits(BITMAP, 512).is_empty());
}

#[test]
fn dirty_bitmap_refusals_in_the_kernels_order() {
    let d = dirty_setup();
    let e = &d.e;
    assert_eq!(d.track(true), 0);
    let cases: [(Errno, u64, u64, u64, u32, u64); 11] = [
        (EOPNOTSUPP, DIOVA, DLEN, 2048, 2, BITMAP),
        (EINVAL, DIOVA, 0, 2048, 0, BITMAP),
        (EOVERFLOW, u64::MAX - 0x7ff, 0x1000, 2048, 0, BITMAP),
        (EINVAL, DIOVA + 1024, 2048, 2048, 0, BITMAP),
        (EINVAL, DIOVA, 2048 + 1024, 2048, 0, BITMAP),
        (EINVAL, DIOVA, DLEN, 0, 0, BITMAP),
        (EINVAL, DIOVA, 0x1800, 0x1000, 0, BITMAP),
        (EINVAL, DIOVA, DLEN, 3 * 2048, 0, BITMAP),
        // Not wholly mapped.
        (EINVAL, DIOVA, 2 * DLEN, 2048, 0, BITMAP),
        (EFAULT, DIOVA, DLEN, 2048, 0, UNMAPPED),
        (EFAULT, DIOVA, DLEN, 2048, 0, RO),
    ];
    for (errno, iova, len, ps, flags, data) in cases {
        e.refused(errno, || d.read(iova, len, ps, flags, data));
    }
    let reserved = IommuHwptGetDirtyBitmap {
        size: 48,
        hwpt_id: d.hwpt,
        reserved: 1,
        iova: DIOVA,
        length: DLEN,
        page_size: 2048,
        data: BITMAP,
        flags: 0,
    };
    e.refused(EOPNOTSUPP, || e.err(IOMMU_HWPT_GET_DIRTY_BITMAP, &reserved));
    e.refused(ENOENT, || {
        e.err(
            IOMMU_HWPT_GET_DIRTY_BITMAP,
            &IommuHwptGetDirtyBitmap {
                hwpt_id: 99,
                reserved: 0,
                ..reserved
            },
        )
    });
    e.refused(EOPNOTSUPP, || {
        e.err(
            IOMMU_HWPT_SET_DIRTY_TRACKING,
            &IommuHwptSetDirtyTracking {
                size: 16,
                flags: 2,
                hwpt_id: d.hwpt,
                reserved: 0,
            },
        )
    });
    e.refused(ENOENT, || {
        e.err(
            IOMMU_HWPT_SET_DIRTY_TRACKING,
            &IommuHwptSetDirtyTracking {
                size: 16,
                flags: 1,
                hwpt_id: 99,
                reserved: 0,
            },
        )
    });
}

/// SET_DIRTY_TRACKING and GET_DIRTY_BITMAP take a paging HWPT (`iommufd_get_hwpt_paging`):
/// an IOAS, a nested HWPT or a device is ENOENT, after the flags and before the range checks.
#[test]
fn dirty_operations_on_an_ioas_or_a_nested_hwpt_are_enoent() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, dev) = e.mock(0);
    e.map(ioas, BUF, DLEN, Some(DIOVA)).unwrap();
    let parent = e
        .hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: ioas,
            flags: IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            ..Default::default()
        })
        .unwrap();
    e.put(
        SCRATCH,
        &IommuHwptSelftest {
            iotlb: IOMMU_TEST_IOTLB_DEFAULT,
        },
    );
    let nested = e
        .hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: parent,
            data_type: IOMMU_HWPT_DATA_SELFTEST,
            data_len: 4,
            data_uptr: SCRATCH,
            ..Default::default()
        })
        .unwrap();
    e.ctx().device_attach(ObjId(dev), ObjId(nested)).unwrap();
    let set = |hwpt_id, flags| IommuHwptSetDirtyTracking {
        size: 16,
        flags,
        hwpt_id,
        reserved: 0,
    };
    let get = |hwpt_id, length| IommuHwptGetDirtyBitmap {
        size: 48,
        hwpt_id,
        flags: 0,
        reserved: 0,
        iova: DIOVA,
        length,
        page_size: 2048,
        data: BITMAP,
    };
    for other in [ioas, nested, dev] {
        for flags in [0, IOMMU_HWPT_DIRTY_TRACKING_ENABLE] {
            e.refused(ENOENT, || {
                e.err(IOMMU_HWPT_SET_DIRTY_TRACKING, &set(other, flags))
            });
        }
        e.refused(ENOENT, || {
            e.err(IOMMU_HWPT_GET_DIRTY_BITMAP, &get(other, DLEN))
        });
        // The type is checked before the range (length 0 would be EINVAL).
        e.refused(ENOENT, || {
            e.err(IOMMU_HWPT_GET_DIRTY_BITMAP, &get(other, 0))
        });
        // Unknown flags before the look-up.
        e.refused(EOPNOTSUPP, || {
            e.err(IOMMU_HWPT_SET_DIRTY_TRACKING, &set(other, 2))
        });
    }
    // The parent, a paging HWPT allocated with dirty tracking, has the operations.
    assert_eq!(
        e.err(
            IOMMU_HWPT_SET_DIRTY_TRACKING,
            &set(parent, IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
        ),
        0
    );
    assert_eq!(e.err(IOMMU_HWPT_GET_DIRTY_BITMAP, &get(parent, DLEN)), 0);
}

#[test]
fn a_hwpt_allocated_without_dirty_tracking_has_no_dirty_operations() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, dev) = e.mock(0);
    e.map(ioas, BUF, DLEN, Some(DIOVA)).unwrap();
    let hwpt = e
        .hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: ioas,
            ..Default::default()
        })
        .unwrap();
    let set = IommuHwptSetDirtyTracking {
        size: 16,
        flags: IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
        hwpt_id: hwpt,
        reserved: 0,
    };
    e.refused(EOPNOTSUPP, || e.err(IOMMU_HWPT_SET_DIRTY_TRACKING, &set));
    e.refused(EOPNOTSUPP, || {
        e.err(
            IOMMU_HWPT_GET_DIRTY_BITMAP,
            &IommuHwptGetDirtyBitmap {
                size: 48,
                hwpt_id: hwpt,
                iova: DIOVA,
                length: DLEN,
                page_size: 2048,
                data: BITMAP,
                ..Default::default()
            },
        )
    });
    // A dirty-tracking HWPT destroyed and its id reused by a plain one: no dirty ops either.
    assert_eq!(e.destroy(hwpt), 0);
    let dirty = e
        .hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: ioas,
            flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(dirty, hwpt);
    assert_eq!(e.err(IOMMU_HWPT_SET_DIRTY_TRACKING, &set), 0);
    assert_eq!(e.destroy(dirty), 0);
    let plain = e
        .hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: ioas,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(plain, hwpt);
    e.refused(EOPNOTSUPP, || e.err(IOMMU_HWPT_SET_DIRTY_TRACKING, &set));
}

// --- in-process memory ------------------------------------------------------------------------

#[test]
fn in_process_caller_with_real_structs_and_pointers() {
    use std::hint::black_box;
    use uiommu_platform::process_memory::ProcessMemory;

    let engine = Engine::new(Platform::builtin(), EngineConfig::default()).unwrap();
    let pm = ProcessMemory::this();
    let space = engine.add_space(Arc::new(pm));
    let file = IommufdFile::open(&engine, space).unwrap();
    let caller = Caller {
        mem: &pm,
        fds: &NoFds,
    };
    let addr = |p: *const u8| p as usize as u64;

    // IOAS_ALLOC into a local struct.
    let mut alloc = IommuIoasAlloc {
        size: 12,
        flags: 0,
        out_ioas_id: 0,
    };
    let a = addr(black_box(&mut alloc as *mut IommuIoasAlloc as *const u8));
    assert_eq!(file.ioctl(&caller, u64::from(IOMMU_IOAS_ALLOC), a), Ok(0));
    let ioas = black_box(&alloc).out_ioas_id;
    assert_eq!(ioas, 1);

    // A mock device attached to it, a page-aligned local buffer mapped, and DMA into it.
    let mock = engine.add_mock_device(0).unwrap();
    let ctx = file.context();
    let dev = ctx.device_bind(mock).unwrap();
    ctx.device_attach(dev, ObjId(ioas)).unwrap();
    let mut backing = vec![0u8; 3 * PAGE as usize];
    let base = addr(backing.as_ptr());
    let skip = ((PAGE - base % PAGE) % PAGE) as usize;
    let page = &mut backing[skip..skip + PAGE as usize];
    let uva = addr(page.as_ptr());
    let mut map = IommuIoasMap {
        size: 40,
        flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        reserved: 0,
        user_va: uva,
        length: PAGE,
        iova: 0,
    };
    let m = addr(black_box(&mut map as *mut IommuIoasMap as *const u8));
    assert_eq!(file.ioctl(&caller, u64::from(IOMMU_IOAS_MAP), m), Ok(0));
    let iova = black_box(&map).iova;
    assert!(iova >= MOCK_APERTURE_START);
    engine
        .dma_write(mock, Iova(iova + 8), b"from the device")
        .unwrap();
    assert_eq!(&black_box(&*page)[8..23], b"from the device");

    // GET_HW_INFO into a local struct and local buffer.
    let mut info = IommuTestHwInfo::default();
    let mut hw = IommuHwInfo {
        size: 40,
        dev_id: dev.0,
        data_len: 8,
        data_uptr: addr(black_box(&mut info as *mut IommuTestHwInfo as *const u8)),
        ..Default::default()
    };
    let h = addr(black_box(&mut hw as *mut IommuHwInfo as *const u8));
    assert_eq!(file.ioctl(&caller, u64::from(IOMMU_GET_HW_INFO), h), Ok(0));
    assert_eq!(black_box(&hw).data_type, IOMMU_HW_INFO_TYPE_SELFTEST);
    assert_eq!(black_box(&info).test_reg, IOMMU_HW_INFO_SELFTEST_REGVAL);

    // A bad pointer in this process is EFAULT, not a crash.
    assert_eq!(
        file.ioctl(&caller, u64::from(IOMMU_IOAS_ALLOC), 8),
        Err(EFAULT)
    );

    // UNMAP through a local struct; the pages are unpinned.
    let mut unmap = IommuIoasUnmap {
        size: 24,
        ioas_id: ioas,
        iova: 0,
        length: u64::MAX,
    };
    let u = addr(black_box(&mut unmap as *mut IommuIoasUnmap as *const u8));
    assert_eq!(file.ioctl(&caller, u64::from(IOMMU_IOAS_UNMAP), u), Ok(0));
    assert_eq!(black_box(&unmap).length, PAGE);
    assert_eq!(engine.total_pins(), 0);
    drop(backing);
}

#[test]
fn closing_the_file_tears_the_context_down() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, dev) = e.mock(0);
    e.ctx().device_attach(ObjId(dev), ObjId(ioas)).unwrap();
    e.map(ioas, BUF, 8 * PAGE, None).unwrap();
    assert!(e.engine.total_pins() > 0);
    let Env { engine, file, .. } = e;
    drop(file);
    assert_eq!(engine.contexts(), 0);
    assert_eq!(engine.total_pins(), 0);
}

// --- hostile arguments ------------------------------------------------------------------------

mod hostile {
    use super::*;
    use proptest::prelude::*;

    /// Values that hit ids, flags, types, sizes and the mapped/unmapped/read-only memory.
    fn word() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(3),
            Just(4),
            Just(8),
            Just(2048),
            Just(PAGE),
            Just(0xdead),
            Just(0xfeed_beef),
            Just(0xdead_beef_0000_0001),
            Just(u64::from(u32::MAX)),
            Just(u64::MAX),
            Just(BUF),
            Just(SCRATCH),
            Just(RO),
            Just(UNMAPPED),
            Just(MOCK_APERTURE_START),
            any::<u64>(),
        ]
    }

    fn size(min: usize, known: usize) -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0u32),
            Just((min - 1) as u32),
            Just(min as u32),
            Just(known as u32),
            Just(known as u32 + 8),
            Just(4096),
            Just(u32::MAX),
        ]
    }

    fn call() -> impl Strategy<Value = (u32, u32, Vec<u64>)> {
        let cmds = commands();
        (0..cmds.len() + 2).prop_flat_map(move |i| {
            let (number, known, min) =
                cmds.get(i)
                    .copied()
                    .unwrap_or((io(IOMMUFD_TYPE, 0x7e + i as u32 % 2), 16, 8));
            (
                Just(number),
                size(min, known),
                prop::collection::vec(word(), 12),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// No argument makes the server panic, and the security invariants hold after every
        /// call, whatever it returned.
        #[test]
        fn hostile_calls_never_panic_and_keep_the_invariants(
            calls in prop::collection::vec(call(), 1..12)
        ) {
            let e = env();
            let ioas = e.ioas_alloc();
            let (_, dev) = e.mock(0);
            e.map(ioas, BUF, 16 * PAGE, Some(0x10_0000)).unwrap();
            let _ = e.hwpt_alloc(IommuHwptAlloc {
                dev_id: dev,
                pt_id: ioas,
                flags: IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                ..Default::default()
            });
            for (number, size, words) in calls {
                let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
                bytes[..4].copy_from_slice(&size.to_le_bytes());
                e.sim.write(UserVa(ARG), &bytes).unwrap();
                let _ = e.raw(number, ARG);
                prop_assert!(e.engine.check_invariants().is_ok());
            }
            let Env { engine, file, .. } = e;
            drop(file);
            prop_assert_eq!(engine.total_pins(), 0);
        }
    }
}
