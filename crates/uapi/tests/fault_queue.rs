//! Fault queues through the real ABI: IOMMU_FAULT_QUEUE_ALLOC, HWPTs made with
//! IOMMU_HWPT_FAULT_ID_VALID, IOMMU_TEST_OP_TRIGGER_IOPF, and the read and write of the queue's
//! file, on a `SimMemory` caller whose file table installs files. Checks follow
//! `drivers/iommu/iommufd/fault.c` and `hw_pagetable.c` of Linux 6.12.

use std::sync::Arc;
use uiommu_core::error::errno::*;
use uiommu_core::fault::{PageResponseCode, PageResponseRecord};
use uiommu_core::{Context, Engine, EngineConfig, ObjId, ObjType};
use uiommu_platform::memory::{SimMemory, UserMemory};
use uiommu_platform::{Platform, UserVa};
use uiommu_uapi::abi::*;
use uiommu_uapi::fault::FaultQueueFile;
use uiommu_uapi::iommufd::IommufdFile;
use uiommu_uapi::{Caller, Errno, FdTable};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

const ESPIPE: Errno = 29;

mod common;
use common::{out, tcmd, Fds, Writes};

const ARG: u64 = 0x1000_0000;
const SCRATCH: u64 = 0x3000_0000;
const PGFAULT: usize = 40;
const RESP: usize = 8;

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
    sim.map(UserVa(SCRATCH), 0x1_0000, true);
    let space = engine.add_space(sim.clone());
    let file = IommufdFile::open(&engine, space).unwrap();
    Env {
        engine,
        sim,
        fds: Fds::default(),
        file: Some(file),
    }
}

/// The selftest's nested-HWPT setup: (ioas, stdev, idev, parent, fault id, fault fd).
struct Nest {
    stdev: u32,
    idev: u32,
    parent: u32,
    fault: u32,
    fd: i32,
}

impl Env {
    fn ctx(&self) -> &Context {
        self.file.as_ref().unwrap().context()
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            mem: &*self.sim,
            fds: &self.fds,
        }
    }

    fn call<T: IntoBytes + FromBytes + Immutable>(
        &self,
        request: u32,
        cmd: &T,
    ) -> (Result<i64, Errno>, T) {
        self.sim.write(UserVa(ARG), cmd.as_bytes()).unwrap();
        let r = self
            .file
            .as_ref()
            .unwrap()
            .ioctl(&self.caller(), u64::from(request), ARG);
        let mut v = T::new_zeroed();
        self.sim.read(UserVa(ARG), v.as_mut_bytes()).unwrap();
        (r, v)
    }

    fn test(&self, c: &IommuTestCmd) -> (Errno, IommuTestCmd) {
        let (r, back) = self.call(IOMMU_TEST_CMD, c);
        (r.err().unwrap_or(0), back)
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

    fn destroy(&self, id: u32) -> Errno {
        self.call(IOMMU_DESTROY, &IommuDestroy { size: 8, id })
            .0
            .err()
            .unwrap_or(0)
    }

    fn fault_alloc_flags(&self, flags: u32) -> Result<(u32, i32), Errno> {
        let (r, c) = self.call(
            IOMMU_FAULT_QUEUE_ALLOC,
            &IommuFaultAlloc {
                size: 16,
                flags,
                ..Default::default()
            },
        );
        r.map(|_| (c.out_fault_id, c.out_fault_fd as i32))
    }

    fn fault_alloc(&self) -> (u32, i32) {
        self.fault_alloc_flags(0).unwrap()
    }

    /// IOMMU_FAULT_QUEUE_ALLOC with the caller's memory seen through `mem` (the struct is
    /// written at ARG first).
    fn fault_alloc_through(&self, mem: &dyn UserMemory) -> Result<i64, Errno> {
        let cmd = IommuFaultAlloc {
            size: 16,
            ..Default::default()
        };
        self.sim.write(UserVa(ARG), cmd.as_bytes()).unwrap();
        let caller = Caller {
            mem,
            fds: &self.fds,
        };
        self.file
            .as_ref()
            .unwrap()
            .ioctl(&caller, u64::from(IOMMU_FAULT_QUEUE_ALLOC), ARG)
    }

    /// MOCK_DOMAIN on `pt`: (stdev, hwpt, idev).
    fn mock_domain(&self, pt: u32) -> (u32, u32, u32) {
        let (e, c) = self.test(&tcmd(
            IOMMU_TEST_OP_MOCK_DOMAIN,
            pt,
            &TestCmdMockDomainFlags::default(),
        ));
        assert_eq!(e, 0);
        let p: TestCmdMockDomainFlags = out(&c);
        (p.out_stdev_id, p.out_hwpt_id, p.out_idev_id)
    }

    fn replace(&self, stdev: u32, pt: u32) -> Errno {
        self.test(&tcmd(
            IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
            stdev,
            &TestCmdMockDomainReplace { pt_id: pt },
        ))
        .0
    }

    fn hwpt_alloc(&self, cmd: IommuHwptAlloc) -> Result<u32, Errno> {
        let (r, c) = self.call(
            IOMMU_HWPT_ALLOC,
            &IommuHwptAlloc {
                size: size_of::<IommuHwptAlloc>() as u32,
                ..cmd
            },
        );
        r.map(|_| c.out_hwpt_id)
    }

    /// A nested HWPT over `parent` for `dev`, with fault queue `fault` when given.
    fn nested(&self, dev: u32, parent: u32, fault: Option<u32>) -> Result<u32, Errno> {
        self.sim
            .write(
                UserVa(SCRATCH),
                IommuHwptSelftest {
                    iotlb: IOMMU_TEST_IOTLB_DEFAULT,
                }
                .as_bytes(),
            )
            .unwrap();
        self.hwpt_alloc(IommuHwptAlloc {
            dev_id: dev,
            pt_id: parent,
            flags: if fault.is_some() {
                IOMMU_HWPT_FAULT_ID_VALID
            } else {
                0
            },
            fault_id: fault.unwrap_or(0),
            data_type: IOMMU_HWPT_DATA_SELFTEST,
            data_len: 4,
            data_uptr: SCRATCH,
            ..Default::default()
        })
    }

    /// The selftest fixture: a mock device on an IOAS, a nest parent, a fault queue.
    fn nest(&self) -> Nest {
        let ioas = self.ioas_alloc();
        let (stdev, _, idev) = self.mock_domain(ioas);
        let parent = self
            .hwpt_alloc(IommuHwptAlloc {
                dev_id: idev,
                pt_id: ioas,
                flags: IOMMU_HWPT_ALLOC_NEST_PARENT,
                ..Default::default()
            })
            .unwrap();
        let (fault, fd) = self.fault_alloc();
        Nest {
            stdev,
            idev,
            parent,
            fault,
            fd,
        }
    }

    fn trigger(&self, dev: u32, pasid: u32, grpid: u32, addr: u64) -> Errno {
        self.test(&tcmd(
            IOMMU_TEST_OP_TRIGGER_IOPF,
            0,
            &TestCmdTriggerIopf {
                dev_id: dev,
                pasid,
                grpid,
                perm: IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE,
                addr,
            },
        ))
        .0
    }

    /// `read(fd, buf, count)`: the bytes read as records.
    fn read(&self, fd: i32, count: usize) -> Result<Vec<IommuHwptPgfault>, Errno> {
        let f = self.fds.file(fd)?;
        let mut buf = vec![0u8; count];
        let n = f.read(&self.caller(), &mut buf)?;
        assert_eq!(n % PGFAULT, 0, "a read returns whole records");
        Ok(buf[..n]
            .chunks_exact(PGFAULT)
            .map(|b| IommuHwptPgfault::read_from_bytes(b).unwrap())
            .collect())
    }

    /// `write(fd, responses)`: the bytes taken.
    fn respond(&self, fd: i32, resps: &[(u32, u32)]) -> Result<usize, Errno> {
        let mut data = Vec::new();
        for &(cookie, code) in resps {
            data.extend_from_slice(IommuHwptPageResponse { cookie, code }.as_bytes());
        }
        self.fds.file(fd)?.write(&self.caller(), &data)
    }

    fn responses(&self) -> Vec<PageResponseRecord> {
        self.engine.page_responses()
    }
}

#[test]
fn alloc_makes_a_fault_object_and_a_file() {
    let e = env();
    let (id, fd) = e.fault_alloc();
    assert_ne!(id, 0);
    assert_ne!(fd, 0);
    assert_eq!(e.ctx().object_type(ObjId(id)), Ok(ObjType::Fault));
    let f = e.fds.file(fd).unwrap();
    let q = f.as_any().downcast_ref::<FaultQueueFile>().unwrap();
    assert_eq!(q.fault_id(), ObjId(id));
    // A second queue gets the next ids.
    let (id2, fd2) = e.fault_alloc();
    assert_eq!(id2, id + 1);
    assert_ne!(fd2, fd);
    e.engine.check_invariants().unwrap();
}

#[test]
fn alloc_refuses_flags_and_short_commands() {
    let e = env();
    let before = e.ctx().objects().unwrap();
    assert_eq!(e.fault_alloc_flags(1), Err(EOPNOTSUPP));
    assert_eq!(e.fault_alloc_flags(1 << 31), Err(EOPNOTSUPP));
    // The struct's first version ends at out_fault_fd: 16 bytes.
    let (r, _) = e.call(
        IOMMU_FAULT_QUEUE_ALLOC,
        &IommuFaultAlloc {
            size: 12,
            ..Default::default()
        },
    );
    assert_eq!(r, Err(EINVAL));
    assert_eq!(e.ctx().objects().unwrap(), before);
    assert!(e.fds.open_count() == 0);
}

/// The kernel's iommufd_fault_alloc: when the reply cannot be written, EFAULT, the fault
/// object is aborted and the reserved descriptor put back: no fd is left installed.
#[test]
fn alloc_whose_reply_cannot_be_written_is_efault_and_leaves_no_fd() {
    let e = env();
    let before = e.engine.snapshot();
    let r = e.fault_alloc_through(&Writes::none(&e.sim));
    assert_eq!(r, Err(EFAULT));
    assert_eq!(e.fds.open_count(), 0, "a descriptor was left installed");
    assert!(e.ctx().objects().unwrap().is_empty());
    assert_eq!(e.engine.snapshot(), before);
    // The struct is as the caller wrote it.
    let back: IommuFaultAlloc = {
        let mut v = IommuFaultAlloc::new_zeroed();
        e.sim.read(UserVa(ARG), v.as_mut_bytes()).unwrap();
        v
    };
    assert_eq!((back.out_fault_id, back.out_fault_fd), (0, 0));
    // The next queue gets the first id.
    let (id, _) = e.fault_alloc();
    assert_eq!(id, 1);
    e.engine.check_invariants().unwrap();
}

/// The second reply (naming the descriptor) failing: EFAULT, the queue aborted and the
/// descriptor taken back, as the kernel never installs it.
#[test]
fn alloc_whose_second_reply_fails_takes_the_descriptor_back() {
    let e = env();
    let r = e.fault_alloc_through(&Writes::first(&e.sim, 1));
    assert_eq!(r, Err(EFAULT));
    assert_eq!(e.fds.open_count(), 0, "the descriptor was left installed");
    assert!(e.ctx().objects().unwrap().is_empty());
    e.engine.check_invariants().unwrap();
}

#[test]
fn hwpt_alloc_takes_a_fault_on_nested_hwpts_only() {
    let e = env();
    let n = e.nest();
    let ioas = e.ioas_alloc();
    // Unknown id and wrong type: ENOENT, and the nested HWPT is not left behind.
    let before = e.ctx().objects().unwrap();
    assert_eq!(e.nested(n.idev, n.parent, Some(u32::MAX)), Err(ENOENT));
    assert_eq!(e.nested(n.idev, n.parent, Some(ioas)), Err(ENOENT));
    assert_eq!(e.ctx().objects().unwrap(), before);
    let h = e.nested(n.idev, n.parent, Some(n.fault)).unwrap();
    assert_eq!(e.ctx().object_type(ObjId(h)), Ok(ObjType::HwptNested));
    assert_eq!(e.ctx().hwpt_fault(ObjId(h)), Ok(Some(ObjId(n.fault))));
    let plain = e.nested(n.idev, n.parent, None).unwrap();
    assert_eq!(e.ctx().hwpt_fault(ObjId(plain)), Ok(None));
    // Linux 6.12 refuses a fault queue on a paging HWPT (its valid flags lack FAULT_ID_VALID).
    for flags in [
        IOMMU_HWPT_FAULT_ID_VALID,
        IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_NEST_PARENT,
    ] {
        assert_eq!(
            e.hwpt_alloc(IommuHwptAlloc {
                dev_id: n.idev,
                pt_id: ioas,
                flags,
                fault_id: n.fault,
                ..Default::default()
            }),
            Err(EOPNOTSUPP)
        );
    }
    // The HWPT holds the queue.
    assert_eq!(e.destroy(n.fault), EBUSY);
    e.engine.check_invariants().unwrap();
}

#[test]
fn the_selftests_nested_flow_delivers_and_answers_one_fault() {
    let e = env();
    let n = e.nest();
    let iopf = e.nested(n.idev, n.parent, Some(n.fault)).unwrap();
    assert_eq!(e.ctx().device_iopf_enabled(ObjId(n.idev)), Ok(false));
    assert_eq!(e.replace(n.stdev, iopf), 0);
    assert_eq!(e.ctx().device_iopf_enabled(ObjId(n.idev)), Ok(true));
    assert_eq!(e.destroy(iopf), EBUSY);
    assert_eq!(e.trigger(n.idev, 1, 2, 0xdead_beaf), 0);
    let recs = e.read(n.fd, PGFAULT).unwrap();
    assert_eq!(
        recs,
        vec![IommuHwptPgfault {
            flags: IOMMU_PGFAULT_FLAGS_PASID_VALID | IOMMU_PGFAULT_FLAGS_LAST_PAGE,
            dev_id: n.idev,
            pasid: 1,
            grpid: 2,
            perm: IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE,
            reserved: 0,
            addr: 0xdead_beaf,
            length: 0,
            cookie: 1,
        }]
    );
    assert_eq!(e.respond(n.fd, &[(1, IOMMUFD_PAGE_RESP_SUCCESS)]), Ok(RESP));
    let last = *e.responses().last().unwrap();
    assert_eq!(last.code, PageResponseCode::Success);
    assert_eq!((last.pasid, last.grpid), (Some(1), 2));
    // The rest of the selftest: back to the parent, everything destroyed in its order.
    assert_eq!(e.replace(n.stdev, n.parent), 0);
    assert_eq!(e.ctx().device_iopf_enabled(ObjId(n.idev)), Ok(false));
    assert_eq!(e.destroy(iopf), 0);
    assert_eq!(e.destroy(n.fault), EBUSY, "the file still holds it");
    assert!(e.fds.close(n.fd));
    assert_eq!(e.destroy(n.fault), 0);
    assert_eq!(e.destroy(n.fault), ENOENT);
    e.engine.check_invariants().unwrap();
}

#[test]
fn read_returns_whole_groups_and_follows_the_kernels_size_rules() {
    let e = env();
    let n = e.nest();
    let iopf = e.nested(n.idev, n.parent, Some(n.fault)).unwrap();
    assert_eq!(e.replace(n.stdev, iopf), 0);
    // Nothing queued: 0 bytes, never blocking.
    assert_eq!(e.read(n.fd, PGFAULT).unwrap(), vec![]);
    assert_eq!(e.read(n.fd, 0).unwrap(), vec![]);
    for i in 0..3 {
        assert_eq!(e.trigger(n.idev, 0, 10 + i, 0x1000 * u64::from(i)), 0);
    }
    // Not a whole number of records: ESPIPE (as the kernel answers).
    assert_eq!(e.read(n.fd, PGFAULT - 1), Err(ESPIPE));
    assert_eq!(e.read(n.fd, PGFAULT + 1), Err(ESPIPE));
    // Too small for the first group: EINVAL.
    assert_eq!(e.read(n.fd, 0), Err(EINVAL));
    assert_eq!(e.ctx().fault_pending(ObjId(n.fault)), Ok((3, 0)));
    // Two of three fit; cookies from 1.
    let two = e.read(n.fd, 2 * PGFAULT).unwrap();
    assert_eq!(two.iter().map(|r| r.cookie).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(two.iter().map(|r| r.grpid).collect::<Vec<_>>(), [10, 11]);
    // No PASID: LAST_PAGE only.
    assert_eq!(two[0].flags, IOMMU_PGFAULT_FLAGS_LAST_PAGE);
    assert_eq!(two[1].addr, 0x1000);
    // A big buffer gets what is left.
    let rest = e.read(n.fd, 10 * PGFAULT).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!((rest[0].cookie, rest[0].grpid), (3, 12));
    assert_eq!(e.ctx().fault_pending(ObjId(n.fault)), Ok((0, 3)));
    // A freed cookie is the lowest free one again.
    assert_eq!(e.respond(n.fd, &[(2, IOMMUFD_PAGE_RESP_INVALID)]), Ok(RESP));
    assert_eq!(e.trigger(n.idev, 0, 20, 0), 0);
    assert_eq!(e.read(n.fd, PGFAULT).unwrap()[0].cookie, 2);
}

#[test]
fn bad_responses_are_refused_in_order() {
    let e = env();
    let n = e.nest();
    let iopf = e.nested(n.idev, n.parent, Some(n.fault)).unwrap();
    assert_eq!(e.replace(n.stdev, iopf), 0);
    for g in 0..3 {
        assert_eq!(e.trigger(n.idev, 0, g, 0), 0);
    }
    assert_eq!(e.read(n.fd, 3 * PGFAULT).unwrap().len(), 3);
    // Not a whole number of responses.
    let f = e.fds.file(n.fd).unwrap();
    assert_eq!(f.write(&e.caller(), &[0u8; RESP - 1]), Err(ESPIPE));
    assert_eq!(f.write(&e.caller(), &[]), Ok(0));
    // Unknown code (FAILURE is not for userspace), unknown cookie: EINVAL, nothing taken.
    assert_eq!(e.respond(n.fd, &[(1, 2)]), Err(EINVAL));
    assert_eq!(e.respond(n.fd, &[(1, u32::MAX)]), Err(EINVAL));
    assert_eq!(e.respond(n.fd, &[(9, 0)]), Err(EINVAL));
    assert_eq!(e.respond(n.fd, &[(0, 0)]), Err(EINVAL));
    assert_eq!(e.ctx().fault_pending(ObjId(n.fault)), Ok((0, 3)));
    // A good one then a bad one: the good one is taken, its bytes returned.
    assert_eq!(e.respond(n.fd, &[(1, 0), (9, 0), (2, 0)]), Ok(RESP));
    assert_eq!(e.respond(n.fd, &[(2, 1), (3, 7)]), Ok(RESP));
    // Answered once only.
    assert_eq!(e.respond(n.fd, &[(1, 0)]), Err(EINVAL));
    assert_eq!(e.respond(n.fd, &[(3, 0)]), Ok(RESP));
    assert_eq!(e.ctx().fault_pending(ObjId(n.fault)), Ok((0, 0)));
    // A response to a group never read is EINVAL too.
    assert_eq!(e.trigger(n.idev, 0, 5, 0), 0);
    assert_eq!(e.respond(n.fd, &[(1, 0)]), Err(EINVAL));
}

#[test]
fn faults_without_a_queue_are_dropped_with_an_invalid_response() {
    let e = env();
    let n = e.nest();
    let plain = e.nested(n.idev, n.parent, None).unwrap();
    // On the IOAS's automatic HWPT, on the parent, on a nested HWPT without a queue.
    for pt in [None, Some(n.parent), Some(plain)] {
        if let Some(pt) = pt {
            assert_eq!(e.replace(n.stdev, pt), 0);
        }
        let before = e.responses().len();
        assert_eq!(e.trigger(n.idev, 0, 7, 0x4000), 0);
        let r = e.responses();
        assert_eq!(r.len(), before + 1);
        assert_eq!(r.last().unwrap().code, PageResponseCode::Invalid);
        assert_eq!(e.read(n.fd, PGFAULT).unwrap(), vec![]);
    }
    // Not a mock device, not a device.
    assert_eq!(e.trigger(n.stdev, 0, 0, 0), ENOENT);
    assert_eq!(e.trigger(999, 0, 0, 0), ENOENT);
}

#[test]
fn leaving_the_hwpt_answers_outstanding_faults() {
    let e = env();
    let n = e.nest();
    let iopf = e.nested(n.idev, n.parent, Some(n.fault)).unwrap();
    let iopf2 = e.nested(n.idev, n.parent, Some(n.fault)).unwrap();
    assert_eq!(e.replace(n.stdev, iopf), 0);
    assert_eq!(e.trigger(n.idev, 0, 1, 0), 0);
    assert_eq!(e.read(n.fd, PGFAULT).unwrap().len(), 1);
    assert_eq!(e.trigger(n.idev, 0, 2, 0), 0);
    assert_eq!(e.ctx().fault_pending(ObjId(n.fault)), Ok((1, 1)));
    // Replace to another HWPT with the same queue: IOPF stays on, the old attachment's faults
    // (read or not) are answered INVALID.
    let before = e.responses().len();
    assert_eq!(e.replace(n.stdev, iopf2), 0);
    assert_eq!(e.ctx().device_iopf_enabled(ObjId(n.idev)), Ok(true));
    assert_eq!(e.ctx().fault_pending(ObjId(n.fault)), Ok((0, 0)));
    let r = e.responses();
    assert_eq!(r.len(), before + 2);
    assert!(r[before..]
        .iter()
        .all(|x| x.code == PageResponseCode::Invalid));
    // The old cookie is gone.
    assert_eq!(e.respond(n.fd, &[(1, 0)]), Err(EINVAL));
    // Destroying the selftest object detaches (and answers) too.
    assert_eq!(e.trigger(n.idev, 0, 3, 0), 0);
    assert_eq!(e.ctx().fault_pending(ObjId(n.fault)), Ok((1, 0)));
    assert_eq!(e.destroy(n.stdev), 0);
    assert_eq!(e.ctx().fault_pending(ObjId(n.fault)), Ok((0, 0)));
    assert_eq!(e.responses().last().unwrap().grpid, 3);
    e.engine.check_invariants().unwrap();
}

#[test]
fn destroy_is_busy_while_a_hwpt_or_the_file_holds_the_queue() {
    let e = env();
    let n = e.nest();
    let h = e.nested(n.idev, n.parent, Some(n.fault)).unwrap();
    assert!(e.fds.close(n.fd));
    assert_eq!(e.destroy(n.fault), EBUSY);
    assert_eq!(e.destroy(h), 0);
    assert_eq!(e.destroy(n.fault), 0);
    assert_eq!(
        e.ctx().object_type(ObjId(n.fault)),
        Err(uiommu_core::Error::NoObject(n.fault))
    );
    // A new queue takes the lowest free id.
    let (id, _) = e.fault_alloc();
    assert_eq!(id, n.fault);
    e.engine.check_invariants().unwrap();
}

#[test]
fn closing_tears_down_in_order_and_answers_everything() {
    let mut e = env();
    let n = e.nest();
    let iopf = e.nested(n.idev, n.parent, Some(n.fault)).unwrap();
    assert_eq!(e.replace(n.stdev, iopf), 0);
    for g in 0..4 {
        assert_eq!(e.trigger(n.idev, 0, g, 0), 0);
    }
    assert_eq!(e.read(n.fd, 2 * PGFAULT).unwrap().len(), 2);
    let before = e.responses().len();
    // The queue's file keeps the context open after /dev/iommu is closed.
    e.file = None;
    assert_eq!(e.engine.contexts(), 1);
    let f = e.fds.file(n.fd).unwrap();
    assert_eq!(e.read(n.fd, PGFAULT).unwrap().len(), 1);
    drop(f);
    assert!(e.fds.close(n.fd));
    assert_eq!(e.engine.contexts(), 0);
    let r = e.responses();
    assert_eq!(r.len(), before + 4);
    assert!(r[before..]
        .iter()
        .all(|x| x.code == PageResponseCode::Invalid));
    e.engine.check_invariants().unwrap();
    assert_eq!(e.engine.total_pins(), 0);
}

#[test]
fn hostile_reads_and_writes_never_panic() {
    let e = env();
    let n = e.nest();
    let iopf = e.nested(n.idev, n.parent, Some(n.fault)).unwrap();
    assert_eq!(e.replace(n.stdev, iopf), 0);
    let f = e.fds.file(n.fd).unwrap();
    let mut seed = 0x1234_5678u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        match next() % 4 {
            0 => {
                let _ = e.trigger(n.idev, (next() % 3) as u32, (next() % 5) as u32, next());
            }
            1 => {
                let mut buf = vec![0u8; (next() % 200) as usize];
                let _ = f.read(&e.caller(), &mut buf);
            }
            2 => {
                let data: Vec<u8> = (0..(next() % 40)).map(|_| (next() % 4) as u8).collect();
                let _ = f.write(&e.caller(), &data);
            }
            _ => {
                let mut data = Vec::new();
                for _ in 0..next() % 4 {
                    data.extend_from_slice(
                        IommuHwptPageResponse {
                            cookie: (next() % 6) as u32,
                            code: (next() % 3) as u32,
                        }
                        .as_bytes(),
                    );
                }
                let _ = f.write(&e.caller(), &data);
            }
        }
    }
    e.engine.check_invariants().unwrap();
}
