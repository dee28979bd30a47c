//! `IOMMU_TEST_CMD` through the real ABI: each op of the kernel selftest's command, issued with
//! `IommufdFile::ioctl` on a `SimMemory` caller whose file table can install files (the
//! selftest's access descriptors). Checks follow `drivers/iommu/iommufd/selftest.c`: the
//! errno of each refusal, the ids and values replied, the state left behind.

use std::sync::Arc;
use uiommu_core::error::errno::*;
use uiommu_core::{Context, Engine, EngineConfig, ObjId, ObjType};
use uiommu_platform::memory::{SimMemory, UserMemory};
use uiommu_platform::topology::ModelKind;
use uiommu_platform::{Platform, UserVa};
use uiommu_uapi::abi::*;
use uiommu_uapi::iommufd::IommufdFile;
use uiommu_uapi::selftest::{temp_memory_limit, SelftestAccess, DEFAULT_TEMP_MEMORY_LIMIT};
use uiommu_uapi::{Caller, Errno, FdTable};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const EBADFD: Errno = 77;
const EBADE: Errno = 52;

mod common;
use common::{out, tcmd, Fds, Writes};

/// Argument structs.
const ARG: u64 = 0x1000_0000;
/// Memory to map (4 MiB).
const BUF: u64 = 0x2000_0000;
const BUF_LEN: u64 = 0x40_0000;
/// Bitmaps and bounce buffers (1 MiB).
const SCRATCH: u64 = 0x3000_0000;
/// Nothing is mapped here.
const UNMAPPED: u64 = 0x5000_0000;
const PAGE: u64 = 4096;
const MOCK_PAGE: u64 = 2048;

struct Env {
    engine: Arc<Engine>,
    sim: Arc<SimMemory>,
    fds: Fds,
    file: Option<IommufdFile>,
}

fn env() -> Env {
    let engine = Engine::new(Platform::builtin(), EngineConfig::default()).unwrap();
    let sim = SimMemory::new();
    sim.map(UserVa(ARG), 0x1_0000, true);
    sim.map(UserVa(BUF), BUF_LEN, true);
    sim.map(UserVa(SCRATCH), 0x10_0000, true);
    let space = engine.add_space(sim.clone());
    let file = IommufdFile::open(&engine, space).unwrap();
    Env {
        engine,
        sim,
        fds: Fds::default(),
        file: Some(file),
    }
}

impl Env {
    fn file(&self) -> &IommufdFile {
        self.file.as_ref().unwrap()
    }

    fn ctx(&self) -> &Context {
        self.file().context()
    }

    fn raw(&self, request: u32, arg: u64) -> Result<i64, Errno> {
        self.file().ioctl(
            &Caller {
                mem: &*self.sim,
                fds: &self.fds,
            },
            u64::from(request),
            arg,
        )
    }

    fn call<T: IntoBytes + FromBytes + Immutable>(
        &self,
        request: u32,
        cmd: &T,
    ) -> (Result<i64, Errno>, T) {
        self.sim.write(UserVa(ARG), cmd.as_bytes()).unwrap();
        let r = self.raw(request, ARG);
        let mut v = T::new_zeroed();
        self.sim.read(UserVa(ARG), v.as_mut_bytes()).unwrap();
        (r, v)
    }

    /// Issue a test command; the errno (0 on success) and the command as replied.
    fn test(&self, c: &IommuTestCmd) -> (Errno, IommuTestCmd) {
        let (r, back) = self.call(IOMMU_TEST_CMD, c);
        (r.err().unwrap_or(0), back)
    }

    fn test_err(&self, c: &IommuTestCmd) -> Errno {
        self.test(c).0
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
        self.call(IOMMU_DESTROY, &IommuDestroy { size: 8, id })
            .0
            .err()
            .unwrap_or(0)
    }

    fn hwpt_alloc(&self, dev: u32, pt: u32, flags: u32) -> Result<u32, Errno> {
        let (r, c) = self.call(
            IOMMU_HWPT_ALLOC,
            &IommuHwptAlloc {
                size: size_of::<IommuHwptAlloc>() as u32,
                flags,
                dev_id: dev,
                pt_id: pt,
                ..Default::default()
            },
        );
        r.map(|_| c.out_hwpt_id)
    }

    /// MOCK_DOMAIN(_FLAGS) on `pt`: (stdev, hwpt, idev).
    fn mock_domain_flags(&self, pt: u32, flags: u32) -> Result<(u32, u32, u32), Errno> {
        let op = if flags == 0 {
            IOMMU_TEST_OP_MOCK_DOMAIN
        } else {
            IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS
        };
        let (e, c) = self.test(&tcmd(
            op,
            pt,
            &TestCmdMockDomainFlags {
                dev_flags: flags,
                ..Default::default()
            },
        ));
        if e != 0 {
            return Err(e);
        }
        let p: TestCmdMockDomainFlags = out(&c);
        Ok((p.out_stdev_id, p.out_hwpt_id, p.out_idev_id))
    }

    fn mock_domain(&self, pt: u32) -> (u32, u32, u32) {
        self.mock_domain_flags(pt, 0).unwrap()
    }

    fn replace(&self, stdev: u32, pt: u32) -> Result<u32, Errno> {
        let (e, c) = self.test(&tcmd(
            IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
            stdev,
            &TestCmdMockDomainReplace { pt_id: pt },
        ));
        if e != 0 {
            return Err(e);
        }
        Ok(out::<TestCmdMockDomainReplace>(&c).pt_id)
    }

    fn check_map(&self, hwpt: u32, iova: u64, length: u64, uptr: u64) -> Errno {
        self.test_err(&tcmd(
            IOMMU_TEST_OP_MD_CHECK_MAP,
            hwpt,
            &TestCmdCheckMap { iova, length, uptr },
        ))
    }

    fn check_refs(&self, uptr: u64, length: u64, refs: u32) -> Errno {
        self.test_err(&tcmd(
            IOMMU_TEST_OP_MD_CHECK_REFS,
            0,
            &TestCmdCheckRefs {
                length,
                uptr,
                refs,
                pad: 0,
            },
        ))
    }

    fn create_access(&self, ioas: u32, flags: u32) -> Result<u32, Errno> {
        let (e, c) = self.test(&tcmd(
            IOMMU_TEST_OP_CREATE_ACCESS,
            ioas,
            &TestCmdCreateAccess {
                out_access_fd: 0,
                flags,
            },
        ));
        if e != 0 {
            return Err(e);
        }
        Ok(out::<TestCmdCreateAccess>(&c).out_access_fd)
    }

    fn access_pages(
        &self,
        fd: u32,
        iova: u64,
        length: u64,
        uptr: u64,
        flags: u32,
    ) -> Result<u32, Errno> {
        let (e, c) = self.test(&tcmd(
            IOMMU_TEST_OP_ACCESS_PAGES,
            fd,
            &TestCmdAccessPages {
                flags,
                out_access_pages_id: 0,
                iova,
                length,
                uptr,
            },
        ));
        if e != 0 {
            return Err(e);
        }
        Ok(out::<TestCmdAccessPages>(&c).out_access_pages_id)
    }

    fn destroy_access_pages(&self, fd: u32, id: u32) -> Errno {
        self.test_err(&tcmd(
            IOMMU_TEST_OP_DESTROY_ACCESS_PAGES,
            fd,
            &TestCmdDestroyAccessPages {
                access_pages_id: id,
            },
        ))
    }

    fn access_rw(&self, fd: u32, iova: u64, length: u64, uptr: u64, flags: u32) -> Errno {
        self.test_err(&tcmd(
            IOMMU_TEST_OP_ACCESS_RW,
            fd,
            &TestCmdAccessRw {
                iova,
                length,
                uptr,
                flags,
                pad: 0,
            },
        ))
    }

    fn mock_devices(&self) -> usize {
        self.engine.with_platform(|p| {
            p.topology
                .devices()
                .filter(|d| d.model == ModelKind::Mock)
                .count()
        })
    }

    fn set_dirty_tracking(&self, hwpt: u32, on: bool) -> Result<i64, Errno> {
        self.call(
            IOMMU_HWPT_SET_DIRTY_TRACKING,
            &IommuHwptSetDirtyTracking {
                size: 16,
                flags: if on {
                    IOMMU_HWPT_DIRTY_TRACKING_ENABLE
                } else {
                    0
                },
                hwpt_id: hwpt,
                reserved: 0,
            },
        )
        .0
    }
}

#[test]
fn unknown_op_is_eopnotsupp() {
    let e = env();
    assert_eq!(e.test_err(&tcmd(0, 0, &0u64)), EOPNOTSUPP);
    assert_eq!(e.test_err(&tcmd(16, 0, &0u64)), EOPNOTSUPP);
    assert_eq!(e.test_err(&tcmd(u32::MAX, 0, &0u64)), EOPNOTSUPP);
}

#[test]
fn mock_domain_ids_come_in_the_kernels_order_and_destroy_unplugs() {
    let e = env();
    let ioas = e.ioas_alloc();
    assert_eq!(ioas, 1);
    let before = e.mock_devices();
    let (stdev, hwpt, idev) = e.mock_domain(ioas);
    // Selftest object first, then the device, then the automatic HWPT.
    assert_eq!((stdev, idev, hwpt), (2, 3, 4));
    assert_eq!(e.ctx().object_type(ObjId(stdev)), Ok(ObjType::Selftest));
    assert_eq!(e.ctx().object_type(ObjId(idev)), Ok(ObjType::Device));
    assert_eq!(e.ctx().object_type(ObjId(hwpt)), Ok(ObjType::HwptPaging));
    assert_eq!(e.mock_devices(), before + 1);
    assert_eq!(e.ctx().device_hwpt(ObjId(idev)), Ok(Some(ObjId(hwpt))));
    // The device belongs to its selftest object; the IOAS is in use.
    assert_eq!(e.destroy(idev), EBUSY);
    assert_eq!(e.destroy(ioas), EBUSY);
    assert_eq!(e.destroy(stdev), 0);
    assert_eq!(e.mock_devices(), before);
    assert_eq!(e.ctx().objects(), Ok(vec![ObjId(ioas)]));
    assert_eq!(e.destroy(stdev), ENOENT);
    assert_eq!(e.destroy(ioas), 0);
    e.engine.check_invariants().unwrap();
}

#[test]
fn mock_domain_failures_leave_nothing() {
    let e = env();
    let ioas = e.ioas_alloc();
    let before = e.mock_devices();
    // No such page table.
    assert_eq!(e.mock_domain_flags(99, 0), Err(ENOENT));
    // Unknown device flags.
    assert_eq!(e.mock_domain_flags(ioas, 1 << 5), Err(EINVAL));
    assert_eq!(e.mock_devices(), before);
    assert_eq!(e.ctx().objects(), Ok(vec![ObjId(ioas)]));
    // The ids were given back: the next mock domain still starts right after the IOAS.
    let (stdev, _, _) = e.mock_domain(ioas);
    assert_eq!(stdev, 2);
    // A device without dirty tracking cannot join a HWPT with dirty tracking (EINVAL).
    let (_, _, idev) = e.mock_domain(ioas);
    let dirty = e
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        .unwrap();
    assert_eq!(
        e.mock_domain_flags(dirty, MOCK_FLAGS_DEVICE_NO_DIRTY),
        Err(EINVAL)
    );
    // A PASID-capable mock (a later kernel's flag the 6.12 stable selftests send) is fine.
    e.mock_domain_flags(ioas, MOCK_FLAGS_DEVICE_PASID).unwrap();
    e.engine.check_invariants().unwrap();
}

#[test]
fn mock_domain_attaches_to_a_hwpt_directly() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, hwpt, _) = e.mock_domain(ioas);
    let (stdev2, hwpt2, _) = e.mock_domain(hwpt);
    assert_eq!(hwpt2, hwpt);
    assert_eq!(e.destroy(stdev2), 0);
    assert_eq!(e.ctx().object_type(ObjId(hwpt)), Ok(ObjType::HwptPaging));
}

#[test]
fn replace_moves_the_device_and_frees_the_automatic_hwpt() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (stdev, hwpt, idev) = e.mock_domain(ioas);
    let ioas2 = e.ioas_alloc();
    let new = e.replace(stdev, ioas2).unwrap();
    assert_ne!(new, hwpt);
    assert_eq!(e.ctx().device_hwpt(ObjId(idev)), Ok(Some(ObjId(new))));
    // The old automatic HWPT went with its last device.
    assert_eq!(e.replace(stdev, hwpt), Err(ENOENT));
    // Only a selftest object can be replaced through.
    assert_eq!(e.replace(idev, ioas), Err(ENOENT));
    assert_eq!(e.replace(0, ioas), Err(ENOENT));
    // Replacing with the page table it has is fine.
    assert_eq!(e.replace(stdev, new), Ok(new));
    let back = e.replace(stdev, ioas).unwrap();
    assert_eq!(e.destroy(ioas2), 0);
    assert_eq!(e.ctx().device_hwpt(ObjId(idev)), Ok(Some(ObjId(back))));
    e.engine.check_invariants().unwrap();
}

#[test]
fn check_map_compares_each_granule_with_the_user_frame() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, hwpt, _) = e.mock_domain(ioas);
    let iova = e.map(ioas, BUF + PAGE, 4 * PAGE, None).unwrap();
    assert_eq!(e.check_map(hwpt, iova, 4 * PAGE, BUF + PAGE), 0);
    assert_eq!(
        e.check_map(hwpt, iova + MOCK_PAGE, MOCK_PAGE, BUF + PAGE + MOCK_PAGE),
        0
    );
    // Zero length checks nothing.
    assert_eq!(e.check_map(hwpt, iova, 0, BUF), 0);
    // Other user memory, or IOVA beyond the mapping: EINVAL.
    assert_eq!(e.check_map(hwpt, iova, 4 * PAGE, BUF), EINVAL);
    assert_eq!(e.check_map(hwpt, iova, 5 * PAGE, BUF + PAGE), EINVAL);
    // Misaligned arguments.
    assert_eq!(e.check_map(hwpt, iova + 1, PAGE, BUF + PAGE), EINVAL);
    assert_eq!(e.check_map(hwpt, iova, PAGE + 1, BUF + PAGE), EINVAL);
    assert_eq!(e.check_map(hwpt, iova, PAGE, BUF + 1), EINVAL);
    assert_eq!(e.check_map(hwpt, iova, PAGE, u64::MAX - 2047), EINVAL);
    // Not a paging HWPT.
    assert_eq!(e.check_map(ioas, iova, PAGE, BUF + PAGE), ENOENT);
    assert_eq!(e.check_map(999, iova, PAGE, BUF + PAGE), ENOENT);
    // User memory that is absent.
    assert_eq!(e.check_map(hwpt, iova, PAGE, UNMAPPED), EFAULT);
}

#[test]
fn check_refs_is_the_pin_count() {
    let e = env();
    let ioas = e.ioas_alloc();
    assert_eq!(e.check_refs(BUF, 8 * PAGE, 0), 0);
    // Without a domain nothing is pinned.
    let iova = e
        .map(ioas, BUF, 8 * PAGE, Some(MOCK_APERTURE_START))
        .unwrap();
    assert_eq!(e.check_refs(BUF, 8 * PAGE, 0), 0);
    let (stdev, _, _) = e.mock_domain(ioas);
    assert_eq!(e.check_refs(BUF, 8 * PAGE, 1), 0);
    assert_eq!(e.check_refs(BUF, 8 * PAGE, 0), EIO);
    assert_eq!(e.check_refs(BUF + 8 * PAGE, PAGE, 1), EIO);
    // A second domain shares the pins.
    let (stdev2, _, _) = e.mock_domain(ioas);
    assert_eq!(e.check_refs(BUF, 8 * PAGE, 1), 0);
    assert_eq!(e.destroy(stdev2), 0);
    assert_eq!(e.destroy(stdev), 0);
    // The last domain gone, nothing needs the pages pinned.
    assert_eq!(e.check_refs(BUF, 8 * PAGE, 0), 0);
    e.unmap(ioas, iova, 8 * PAGE).unwrap();
    assert_eq!(e.check_refs(BUF, 8 * PAGE, 0), 0);
    // Misaligned, wrapping, absent.
    assert_eq!(e.check_refs(BUF + 1, PAGE, 0), EINVAL);
    assert_eq!(e.check_refs(BUF, PAGE + 1, 0), EINVAL);
    assert_eq!(e.check_refs(u64::MAX - 4095, 2 * PAGE, 0), EINVAL);
    assert_eq!(e.check_refs(UNMAPPED, PAGE, 0), EFAULT);
}

#[test]
fn check_iotlb_reads_the_nested_stage1() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, hwpt, idev) = e.mock_domain(ioas);
    let parent = e
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)
        .unwrap();
    let data = IommuHwptSelftest {
        iotlb: IOMMU_TEST_IOTLB_DEFAULT,
    };
    e.sim.write(UserVa(SCRATCH), data.as_bytes()).unwrap();
    let (r, c) = e.call(
        IOMMU_HWPT_ALLOC,
        &IommuHwptAlloc {
            size: size_of::<IommuHwptAlloc>() as u32,
            dev_id: idev,
            pt_id: parent,
            data_type: IOMMU_HWPT_DATA_SELFTEST,
            data_len: 4,
            data_uptr: SCRATCH,
            ..Default::default()
        },
    );
    r.unwrap();
    let nested = c.out_hwpt_id;
    let check = |id: u32, idx: u32, val: u32| {
        e.test_err(&tcmd(
            IOMMU_TEST_OP_MD_CHECK_IOTLB,
            id,
            &TestCmdCheckIotlb {
                id: idx,
                iotlb: val,
            },
        ))
    };
    for i in 0..MOCK_NESTED_DOMAIN_IOTLB_NUM {
        assert_eq!(check(nested, i, IOMMU_TEST_IOTLB_DEFAULT), 0);
        assert_eq!(check(nested, i, 0), EINVAL);
    }
    assert_eq!(check(nested, 4, IOMMU_TEST_IOTLB_DEFAULT), EINVAL);
    assert_eq!(check(nested, u32::MAX, 0), EINVAL);
    assert_eq!(check(hwpt, 0, 0), ENOENT);
    assert_eq!(check(ioas, 0, 0), ENOENT);
    assert_eq!(check(999, 0, 0), ENOENT);
}

#[test]
fn add_reserved_blocks_the_range() {
    let e = env();
    let ioas = e.ioas_alloc();
    let add = |id: u32, start: u64, length: u64| {
        e.test_err(&tcmd(
            IOMMU_TEST_OP_ADD_RESERVED,
            id,
            &TestCmdAddReserved { start, length },
        ))
    };
    assert_eq!(add(ioas, 0x10_0000, 0), EINVAL);
    assert_eq!(add(ioas, u64::MAX, 2), EOVERFLOW);
    assert_eq!(add(999, 0x10_0000, PAGE), ENOENT);
    assert_eq!(add(ioas, 0x10_0000, 0x10_0000), 0);
    // A fixed map over it: EINVAL (the kernel's iopt_check_iova).
    assert_eq!(e.map(ioas, BUF, PAGE, Some(0x18_0000)).unwrap_err(), EINVAL);
    // Over a mapping: EADDRINUSE.
    e.map(ioas, BUF, PAGE, Some(0x40_0000)).unwrap();
    assert_eq!(add(ioas, 0x40_0000, PAGE), EADDRINUSE);
    // An automatic IOVA avoids it.
    let iova = e.map(ioas, BUF, 0x20_0000, None).unwrap();
    assert!(iova + 0x20_0000 <= 0x10_0000 || iova >= 0x20_0000);
}

#[test]
fn temp_memory_limit_is_recorded() {
    let e = env();
    let set = |limit: u32| {
        e.test_err(&tcmd(
            IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT,
            0,
            &TestCmdMemoryLimit { limit },
        ))
    };
    assert_eq!(set(11), EINVAL);
    assert_eq!(set(16), 0);
    assert_eq!(temp_memory_limit(), 16);
    assert_eq!(set(DEFAULT_TEMP_MEMORY_LIMIT), 0);
    assert_eq!(temp_memory_limit(), DEFAULT_TEMP_MEMORY_LIMIT);
}

#[test]
fn access_pins_are_items_and_unmap_drops_them() {
    let e = env();
    let ioas = e.ioas_alloc();
    assert_eq!(
        e.create_access(ioas, 1 << 1).unwrap_err(),
        EOPNOTSUPP,
        "unknown create flags"
    );
    assert_eq!(
        e.create_access(999, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
            .unwrap_err(),
        ENOENT
    );
    let fd = e
        .create_access(ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        .unwrap();
    let f = e.fds.file(fd as i32).unwrap();
    let sa = f.as_any().downcast_ref::<SelftestAccess>().unwrap();
    assert_eq!(e.ctx().object_type(sa.access_id()), Ok(ObjType::Access));
    let iova = MOCK_APERTURE_START;
    e.map(ioas, BUF, 16 * PAGE, Some(iova)).unwrap();
    // Two pins of the same range, ids from 0; the frames match the user pages.
    let a = e.access_pages(fd, iova, 4 * PAGE, BUF, 0).unwrap();
    let b = e
        .access_pages(fd, iova + PAGE, PAGE, BUF + PAGE, MOCK_FLAGS_ACCESS_WRITE)
        .unwrap();
    assert_eq!((a, b), (0, 1));
    assert_eq!(sa.item_ids(), vec![0, 1]);
    // The IOAS's pages object pins a page once, however many users it has.
    assert_eq!(e.check_refs(BUF + PAGE, PAGE, 1), 0);
    // A pin must start on a page boundary of the memory (EINVAL).
    assert_eq!(
        e.access_pages(fd, iova + 100, PAGE, BUF + 100, 0)
            .unwrap_err(),
        EINVAL
    );
    // Pages other than those at uptr: EBADE, and nothing stays pinned.
    assert_eq!(
        e.access_pages(fd, iova, PAGE, BUF + PAGE, 0).unwrap_err(),
        EBADE
    );
    assert_eq!(
        e.access_pages(fd, iova, PAGE, UNMAPPED, 0).unwrap_err(),
        EFAULT
    );
    assert_eq!(e.check_refs(BUF, PAGE, 1), 0);
    // Refusals.
    assert_eq!(
        e.access_pages(fd, iova, (16 << 20) + 1, 0, 0).unwrap_err(),
        ENOMEM
    );
    assert_eq!(
        e.access_pages(fd, iova, PAGE, 0, 1 << 3).unwrap_err(),
        EOPNOTSUPP
    );
    assert_eq!(e.access_pages(7, iova, PAGE, 0, 0).unwrap_err(), EBADFD);
    assert_eq!(
        e.access_pages(fd, iova + 16 * PAGE, PAGE, 0, 0)
            .unwrap_err(),
        ENOENT
    );
    assert_eq!(e.destroy_access_pages(fd, 77), ENOENT);
    assert_eq!(e.destroy_access_pages(7, a), EBADFD);
    assert_eq!(e.destroy_access_pages(fd, a), 0);
    assert_eq!(e.destroy_access_pages(fd, a), ENOENT);
    // The unmap tells the access, which drops item b.
    e.unmap(ioas, iova, 16 * PAGE).unwrap();
    assert_eq!(e.destroy_access_pages(fd, b), ENOENT);
    assert!(sa.item_ids().is_empty());
    assert_eq!(e.engine.total_pins(), 0);
    drop(f);
    // Closing the descriptor destroys the access.
    e.map(ioas, BUF, 16 * PAGE, Some(iova)).unwrap();
    e.access_pages(fd, iova, 2 * PAGE, BUF, 0).unwrap();
    assert!(e.engine.total_pins() > 0);
    let access_id = {
        let f = e.fds.file(fd as i32).unwrap();
        f.as_any()
            .downcast_ref::<SelftestAccess>()
            .unwrap()
            .access_id()
    };
    assert!(e.fds.close(fd as i32));
    assert_eq!(e.engine.total_pins(), 0);
    assert_eq!(
        e.ctx().object_type(access_id),
        Err(uiommu_core::Error::NoObject(access_id.0))
    );
    assert_eq!(e.destroy(ioas), 0);
    e.engine.check_invariants().unwrap();
}

#[test]
fn an_access_that_does_not_pin_cannot_pin_and_allows_unaligned_iovas() {
    let e = env();
    let ioas = e.ioas_alloc();
    let fd = e.create_access(ioas, 0).unwrap();
    // Its IOAS keeps an IOVA alignment of 1: a 2 KiB-aligned map is fine.
    let iova = MOCK_APERTURE_START + MOCK_PAGE;
    e.map(ioas, BUF, 4 * PAGE, Some(iova)).unwrap();
    assert_eq!(
        e.access_pages(fd, iova, PAGE, 0, 0).unwrap_err(),
        EOPNOTSUPP
    );
    // Read and write through it.
    e.sim.write(UserVa(BUF + 10), b"hello").unwrap();
    assert_eq!(e.access_rw(fd, iova + 10, 5, SCRATCH, 0), 0);
    let mut got = [0u8; 5];
    e.sim.read(UserVa(SCRATCH), &mut got).unwrap();
    assert_eq!(&got, b"hello");
    e.sim.write(UserVa(SCRATCH), b"WORLD").unwrap();
    assert_eq!(
        e.access_rw(
            fd,
            iova + PAGE - 2,
            5,
            SCRATCH,
            MOCK_ACCESS_RW_WRITE | MOCK_ACCESS_RW_SLOW_PATH
        ),
        0
    );
    e.sim.read(UserVa(BUF + PAGE - 2), &mut got).unwrap();
    assert_eq!(&got, b"WORLD");
    // Refusals.
    assert_eq!(e.access_rw(fd, iova, 0, SCRATCH, 0), EINVAL);
    assert_eq!(e.access_rw(fd, iova, (16 << 20) + 1, SCRATCH, 0), ENOMEM);
    assert_eq!(e.access_rw(fd, iova, 5, SCRATCH, 1 << 1), EOPNOTSUPP);
    assert_eq!(e.access_rw(fd, iova + 4 * PAGE, 5, SCRATCH, 0), ENOENT);
    assert_eq!(e.access_rw(fd, iova, 5, UNMAPPED, 0), EFAULT);
    assert_eq!(
        e.access_rw(fd, iova, 5, UNMAPPED, MOCK_ACCESS_RW_WRITE),
        EFAULT
    );
    assert_eq!(e.access_rw(fd + 1, iova, 5, SCRATCH, 0), EBADFD);
}

#[test]
fn syzkaller_iovas_name_an_area_and_an_offset() {
    let e = env();
    let ioas = e.ioas_alloc();
    let fd = e.create_access(ioas, 0).unwrap();
    e.map(ioas, BUF, PAGE, Some(0x10_0000)).unwrap();
    e.map(ioas, BUF + PAGE, PAGE, Some(0x20_0000)).unwrap();
    e.sim.write(UserVa(BUF + PAGE + 8), b"xy").unwrap();
    // Area 1, offset 8.
    let syz = 1 | (8u64 << 32);
    assert_eq!(e.access_rw(fd, syz, 2, SCRATCH, MOCK_FLAGS_ACCESS_SYZ), 0);
    let mut got = [0u8; 2];
    e.sim.read(UserVa(SCRATCH), &mut got).unwrap();
    assert_eq!(&got, b"xy");
    // No area 2: IOVA 0, which is not mapped.
    assert_eq!(
        e.access_rw(fd, 2, 2, SCRATCH, MOCK_FLAGS_ACCESS_SYZ),
        ENOENT
    );
}

#[test]
fn access_replace_ioas_drops_the_pins_and_moves() {
    let e = env();
    let ioas = e.ioas_alloc();
    let fd = e
        .create_access(ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        .unwrap();
    e.map(ioas, BUF, 4 * PAGE, Some(MOCK_APERTURE_START))
        .unwrap();
    let id = e
        .access_pages(fd, MOCK_APERTURE_START, 4 * PAGE, BUF, 0)
        .unwrap();
    let ioas2 = e.ioas_alloc();
    e.map(ioas2, BUF + 4 * PAGE, PAGE, Some(0x10_0000)).unwrap();
    let rep = |fd: u32, to: u32| {
        e.test_err(&tcmd(
            IOMMU_TEST_OP_ACCESS_REPLACE_IOAS,
            fd,
            &TestCmdAccessReplaceIoas { ioas_id: to },
        ))
    };
    assert_eq!(rep(fd, 999), ENOENT);
    assert_eq!(rep(fd + 1, ioas2), EBADFD);
    assert_eq!(rep(fd, ioas2), 0);
    assert_eq!(e.destroy_access_pages(fd, id), ENOENT);
    assert_eq!(e.engine.total_pins(), 0);
    // The old IOAS is free; the new one is in use.
    assert_eq!(e.destroy(ioas), 0);
    assert_eq!(e.destroy(ioas2), EBUSY);
    let id2 = e
        .access_pages(fd, 0x10_0000, PAGE, BUF + 4 * PAGE, 0)
        .unwrap();
    assert_eq!(id2, 1);
}

#[test]
fn an_access_keeps_its_context_alive() {
    let mut e = env();
    let ioas = e.ioas_alloc();
    let fd = e
        .create_access(ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        .unwrap();
    e.map(ioas, BUF, PAGE, Some(MOCK_APERTURE_START)).unwrap();
    e.access_pages(fd, MOCK_APERTURE_START, PAGE, BUF, 0)
        .unwrap();
    // Closing /dev/iommu: the access file still holds the context.
    e.file = None;
    assert_eq!(e.engine.contexts(), 1);
    assert_eq!(e.engine.total_pins(), 1);
    assert!(e.fds.close(fd as i32));
    assert_eq!(e.engine.contexts(), 0);
    assert_eq!(e.engine.total_pins(), 0);
}

#[test]
fn closing_the_context_unplugs_its_mock_devices() {
    let mut e = env();
    let before = e.mock_devices();
    let ioas = e.ioas_alloc();
    e.map(ioas, BUF, 8 * PAGE, Some(MOCK_APERTURE_START))
        .unwrap();
    e.mock_domain(ioas);
    e.mock_domain_flags(ioas, MOCK_FLAGS_DEVICE_HUGE_IOVA)
        .unwrap();
    assert_eq!(e.mock_devices(), before + 2);
    assert!(e.engine.total_pins() > 0);
    e.file = None;
    assert_eq!(e.engine.contexts(), 0);
    assert_eq!(e.mock_devices(), before);
    assert_eq!(e.engine.total_pins(), 0);
    e.engine.check_invariants().unwrap();
}

#[test]
fn dirty_marks_granules_and_the_bitmap_reads_them() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (_, auto, idev) = e.mock_domain(ioas);
    let len = 64 * MOCK_PAGE;
    e.map(ioas, BUF, len, Some(MOCK_APERTURE_START)).unwrap();
    let hwpt = e
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        .unwrap();
    let dirty = |id: u32, iova: u64, length: u64, page_size: u64, uptr: u64| {
        let (err, c) = e.test(&tcmd(
            IOMMU_TEST_OP_DIRTY,
            id,
            &TestCmdDirty {
                iova,
                length,
                page_size,
                uptr,
                ..Default::default()
            },
        ));
        (err, out::<TestCmdDirty>(&c).out_nr_dirty)
    };
    // Bits 0, 3 and 63 set.
    let bits: u64 = 1 | (1 << 3) | (1 << 63);
    e.sim.write(UserVa(SCRATCH), &bits.to_le_bytes()).unwrap();
    // Argument checks first.
    let s = MOCK_APERTURE_START;
    assert_eq!(dirty(hwpt, s, len, 0, SCRATCH).0, EINVAL);
    assert_eq!(dirty(hwpt, s, 0, MOCK_PAGE, SCRATCH).0, EINVAL);
    assert_eq!(dirty(hwpt, s + 1, len, MOCK_PAGE, SCRATCH).0, EINVAL);
    assert_eq!(dirty(hwpt, s, len + 1, MOCK_PAGE, SCRATCH).0, EINVAL);
    assert_eq!(dirty(hwpt, s, len, MOCK_PAGE, 0).0, EINVAL);
    assert_eq!(dirty(hwpt, 0, 1 << 40, 1, SCRATCH).0, EOVERFLOW);
    // Then the HWPT: not paging ENOENT; tracking off EINVAL.
    assert_eq!(dirty(ioas, s, len, MOCK_PAGE, SCRATCH).0, ENOENT);
    assert_eq!(dirty(hwpt, s, len, MOCK_PAGE, SCRATCH).0, EINVAL);
    assert_eq!(dirty(auto, s, len, MOCK_PAGE, SCRATCH).0, EINVAL);
    e.set_dirty_tracking(hwpt, true).unwrap();
    assert_eq!(dirty(hwpt, s, len, MOCK_PAGE, UNMAPPED).0, EFAULT);
    assert_eq!(dirty(hwpt, s, len, MOCK_PAGE, SCRATCH), (0, 3));
    // Past the mapping nothing is counted.
    assert_eq!(dirty(hwpt, s + len, len, MOCK_PAGE, SCRATCH), (0, 0));
    // GET_DIRTY_BITMAP reports the three granules.
    e.sim.write(UserVa(SCRATCH + 64), &[0u8; 8]).unwrap();
    let (r, _) = e.call(
        IOMMU_HWPT_GET_DIRTY_BITMAP,
        &IommuHwptGetDirtyBitmap {
            size: size_of::<IommuHwptGetDirtyBitmap>() as u32,
            hwpt_id: hwpt,
            iova: s,
            length: len,
            page_size: MOCK_PAGE,
            data: SCRATCH + 64,
            ..Default::default()
        },
    );
    r.unwrap();
    let mut got = [0u8; 8];
    e.sim.read(UserVa(SCRATCH + 64), &mut got).unwrap();
    assert_eq!(u64::from_le_bytes(got), bits);
}

#[test]
fn trigger_iopf_checks_the_device() {
    let e = env();
    let ioas = e.ioas_alloc();
    let (stdev, _, idev) = e.mock_domain(ioas);
    let trig = |dev: u32| {
        e.test_err(&tcmd(
            IOMMU_TEST_OP_TRIGGER_IOPF,
            0,
            &TestCmdTriggerIopf {
                dev_id: dev,
                pasid: 1,
                grpid: 2,
                perm: 3,
                addr: 0xdead_beaf,
            },
        ))
    };
    assert_eq!(trig(idev), 0);
    assert_eq!(trig(stdev), ENOENT);
    assert_eq!(trig(999), ENOENT);
}

#[test]
fn failed_replies_undo_what_was_created() {
    let e = env();
    let ioas = e.ioas_alloc();
    let before = e.mock_devices();
    let ro = Writes::none(&e.sim);
    let raw = |c: &IommuTestCmd| {
        e.sim.write(UserVa(ARG), c.as_bytes()).unwrap();
        e.file().ioctl(
            &Caller {
                mem: &ro,
                fds: &e.fds,
            },
            u64::from(IOMMU_TEST_CMD),
            ARG,
        )
    };
    let md = tcmd(
        IOMMU_TEST_OP_MOCK_DOMAIN,
        ioas,
        &TestCmdMockDomain::default(),
    );
    assert_eq!(raw(&md), Err(EFAULT));
    assert_eq!(e.mock_devices(), before);
    assert_eq!(e.ctx().objects(), Ok(vec![ObjId(ioas)]));
    // CREATE_ACCESS: no descriptor, no access object.
    let ca = tcmd(
        IOMMU_TEST_OP_CREATE_ACCESS,
        ioas,
        &TestCmdCreateAccess {
            out_access_fd: 0,
            flags: MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES,
        },
    );
    assert_eq!(raw(&ca), Err(EFAULT));
    assert!(e.fds.open_count() == 0);
    assert_eq!(e.ctx().objects(), Ok(vec![ObjId(ioas)]));
    // ACCESS_PAGES: the pin is undone.
    let fd = e
        .create_access(ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        .unwrap();
    e.map(ioas, BUF, PAGE, Some(MOCK_APERTURE_START)).unwrap();
    let ap = tcmd(
        IOMMU_TEST_OP_ACCESS_PAGES,
        fd,
        &TestCmdAccessPages {
            iova: MOCK_APERTURE_START,
            length: PAGE,
            uptr: BUF,
            ..Default::default()
        },
    );
    assert_eq!(raw(&ap), Err(EFAULT));
    assert_eq!(e.engine.total_pins(), 0);
    e.engine.check_invariants().unwrap();
}

#[test]
fn hostile_test_commands_never_panic() {
    let e = env();
    let ioas = e.ioas_alloc();
    e.map(ioas, BUF, 16 * PAGE, Some(MOCK_APERTURE_START))
        .unwrap();
    let (_, hwpt, _) = e.mock_domain(ioas);
    let fd = e
        .create_access(ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        .unwrap();
    let ids = [0, ioas, hwpt, fd, u32::MAX];
    let words = [
        0u64,
        1,
        MOCK_APERTURE_START,
        u64::MAX,
        BUF,
        1 << 63,
        0xffff_ffff,
    ];
    // Every op but SET_TEMP_MEMORY_LIMIT (a global another test reads).
    for op in (0..17u32).filter(|&op| op != IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT) {
        for &id in &ids {
            for (k, &w) in words.iter().enumerate() {
                let mut c = IommuTestCmd {
                    size: 72,
                    op,
                    id,
                    ..Default::default()
                };
                for (j, p) in c.payload.iter_mut().enumerate() {
                    *p = words[(k + j) % words.len()] ^ (w & 1);
                }
                let _ = e.test(&c);
            }
        }
    }
    e.engine.check_invariants().unwrap();
}
