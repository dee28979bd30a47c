//! The VFIO device cdev end to end through the ABI: argument structs written into a
//! `SimMemory` that plays the caller's memory, `/dev/iommu` files for the iommufd, counters for
//! eventfds, and the dma-engine doing real DMA through the emulated IOMMU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use uiommu_core::{Context, Engine, ObjId, ObjType};
use uiommu_platform::devices::dma_engine::*;
use uiommu_platform::devices::{BarInfo, DeviceModel, DmaPort, IrqSink};
use uiommu_platform::hw::DomainKind;
use uiommu_platform::memory::{SimMemory, SpaceId, UserMemory};
use uiommu_platform::topology::DeviceId;
use uiommu_platform::UserVa;
use uiommu_uapi::abi::{
    IommuIoasAlloc, IommuIoasMap, IOMMU_IOAS_ALLOC, IOMMU_IOAS_MAP, IOMMU_IOAS_MAP_FIXED_IOVA,
    IOMMU_IOAS_MAP_READABLE, IOMMU_IOAS_MAP_WRITEABLE,
};
use uiommu_uapi::iommufd::IommufdFile;
use uiommu_uapi::vfio_abi::*;
use uiommu_uapi::vfio_device::{MmapTarget, VfioDeviceFile, MAP_SHARED};
use uiommu_uapi::{Caller, Errno, FdTable};
use zerocopy::{FromBytes, IntoBytes};

const EPERM: Errno = 1;
const EIO: Errno = 5;
const EBADF: Errno = 9;
/// EBADFD: an open fd that is not an iommufd (the kernel's `iommufd_ctx_from_fd`).
const EBADFD: Errno = 77;
const EFAULT: Errno = 14;
const ENODEV: Errno = 19;
const EINVAL: Errno = 22;
const ENOTTY: Errno = 25;

/// Where argument structs go.
const ARG: u64 = 0x1000_0000;
/// Nothing is mapped here.
const HOLE: u64 = 0x1c00_0000;
/// The DMA buffer: 16 pages.
const BUF: u64 = 0x2000_0000;
const BUF_LEN: u64 = 16 * 4096;
/// Where the buffer is mapped for the device.
const IOVA: u64 = 0x100_0000;

const IOMMUFD: i32 = 3;
const IOMMUFD2: i32 = 4;
const EVENTFD: i32 = 7;
const EVENTFD2: i32 = 8;

const CONFIG: u64 = (VFIO_PCI_CONFIG_REGION_INDEX as u64) << 40;
const BAR0: u64 = 0;

/// The caller's open files: iommufds by number, eventfds that count their signals.
#[derive(Default)]
struct TestFds {
    iommufds: Mutex<HashMap<i32, Context>>,
    eventfds: HashMap<i32, Arc<AtomicU32>>,
}

impl FdTable for TestFds {
    fn iommufd(&self, fd: i32) -> Result<Context, Errno> {
        // iommufd_ctx_from_fd: an open file that is not an iommufd is EBADFD.
        if self.eventfds.contains_key(&fd) {
            return Err(EBADFD);
        }
        self.iommufds.lock().unwrap().get(&fd).cloned().ok_or(EBADF)
    }
    fn eventfd(&self, fd: i32) -> Result<Box<dyn Fn() + Send + Sync>, Errno> {
        let n = self.eventfds.get(&fd).ok_or(EBADF)?.clone();
        Ok(Box::new(move || {
            n.fetch_add(1, Ordering::SeqCst);
        }))
    }
}

struct Rig {
    engine: Arc<Engine>,
    sim: Arc<SimMemory>,
    space: SpaceId,
    iommufd: IommufdFile,
    fds: TestFds,
}

impl Rig {
    fn new() -> Rig {
        let engine = Engine::builtin();
        let sim = SimMemory::new();
        sim.map(UserVa(ARG), 0x1_0000, true);
        sim.map(UserVa(BUF), BUF_LEN, true);
        let space = engine.add_space(sim.clone());
        let iommufd = IommufdFile::open(&engine, space).unwrap();
        let mut fds = TestFds::default();
        fds.iommufds
            .lock()
            .unwrap()
            .insert(IOMMUFD, iommufd.context().clone());
        fds.eventfds.insert(EVENTFD, Arc::new(AtomicU32::new(0)));
        fds.eventfds.insert(EVENTFD2, Arc::new(AtomicU32::new(0)));
        Rig {
            engine,
            sim,
            space,
            iommufd,
            fds,
        }
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            mem: &*self.sim,
            fds: &self.fds,
        }
    }

    fn dev(&self, name: &str) -> DeviceId {
        self.engine
            .with_platform(|p| p.topology.find_name(name))
            .unwrap()
    }

    fn signals(&self, fd: i32) -> u32 {
        self.fds.eventfds[&fd].load(Ordering::SeqCst)
    }

    fn put<T: IntoBytes + zerocopy::Immutable>(&self, addr: u64, v: &T) {
        self.sim.write(UserVa(addr), v.as_bytes()).unwrap();
    }

    fn get<T: FromBytes>(&self, addr: u64) -> T {
        let mut b = vec![0u8; size_of::<T>()];
        self.sim.read(UserVa(addr), &mut b).unwrap();
        T::read_from_bytes(&b).unwrap()
    }

    /// An ioctl on the device file with `v` at [`ARG`]; `v` is updated from memory after.
    fn call<T>(&self, f: &VfioDeviceFile, req: u32, v: &mut T) -> Result<i64, Errno>
    where
        T: IntoBytes + FromBytes + zerocopy::Immutable,
    {
        self.put(ARG, v);
        let r = f.ioctl(&self.caller(), u64::from(req), ARG);
        *v = self.get(ARG);
        r
    }

    fn bind(&self, f: &VfioDeviceFile, iommufd: i32) -> Result<u32, Errno> {
        let mut b = VfioDeviceBindIommufd {
            argsz: 16,
            flags: 0,
            iommufd,
            out_devid: 0,
        };
        self.call(f, VFIO_DEVICE_BIND_IOMMUFD, &mut b)?;
        Ok(b.out_devid)
    }

    fn attach(&self, f: &VfioDeviceFile, pt_id: u32) -> Result<u32, Errno> {
        let mut a = VfioDeviceAttachIommufdPt {
            argsz: 12,
            flags: 0,
            pt_id,
        };
        self.call(f, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a)?;
        Ok(a.pt_id)
    }

    fn detach(&self, f: &VfioDeviceFile) -> Result<i64, Errno> {
        let mut d = VfioDeviceDetachIommufdPt { argsz: 8, flags: 0 };
        self.call(f, VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut d)
    }

    /// IOMMU_IOAS_ALLOC through the iommufd's ABI.
    fn ioas_alloc(&self) -> u32 {
        let mut a = IommuIoasAlloc {
            size: 12,
            ..Default::default()
        };
        self.put(ARG, &a);
        self.iommufd
            .ioctl(&self.caller(), u64::from(IOMMU_IOAS_ALLOC), ARG)
            .unwrap();
        a = self.get(ARG);
        a.out_ioas_id
    }

    /// IOMMU_IOAS_MAP of the whole buffer at [`IOVA`], read-write.
    fn ioas_map_buf(&self, ioas: u32) {
        let m = IommuIoasMap {
            size: 40,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: ioas,
            reserved: 0,
            user_va: BUF,
            length: BUF_LEN,
            iova: IOVA,
        };
        self.put(ARG, &m);
        self.iommufd
            .ioctl(&self.caller(), u64::from(IOMMU_IOAS_MAP), ARG)
            .unwrap();
    }

    fn group_domain(&self, dev: DeviceId) -> Option<DomainKind> {
        let gid = self
            .engine
            .with_platform(|p| p.topology.device(dev).map(|d| d.group))
            .unwrap();
        self.engine.group_status(gid).unwrap().domain
    }

    fn check(&self) {
        self.engine.check_invariants().unwrap();
    }
}

fn w32(f: &VfioDeviceFile, off: u64, v: u32) {
    assert_eq!(f.pwrite(&v.to_le_bytes(), off), Ok(4));
}
fn w64(f: &VfioDeviceFile, off: u64, v: u64) {
    assert_eq!(f.pwrite(&v.to_le_bytes(), off), Ok(8));
}
fn r32(f: &VfioDeviceFile, off: u64) -> u32 {
    let mut b = [0u8; 4];
    assert_eq!(f.pread(&mut b, off), Ok(4));
    u32::from_le_bytes(b)
}
fn r64(f: &VfioDeviceFile, off: u64) -> u64 {
    let mut b = [0u8; 8];
    assert_eq!(f.pread(&mut b, off), Ok(8));
    u64::from_le_bytes(b)
}
fn r16(f: &VfioDeviceFile, off: u64) -> u16 {
    let mut b = [0u8; 2];
    assert_eq!(f.pread(&mut b, off), Ok(2));
    u16::from_le_bytes(b)
}

/// Turn on memory decoding and bus mastering in the command register.
fn enable_memory(f: &VfioDeviceFile) {
    let cmd = r16(f, CONFIG + 4) | 0x6;
    assert_eq!(f.pwrite(&cmd.to_le_bytes(), CONFIG + 4), Ok(2));
}

/// Program and run one dma-engine operation through BAR0; returns STATUS.
fn run(f: &VfioDeviceFile, op: u32, src: u64, dst: u64, len: u64) -> u32 {
    w64(f, BAR0 + REG_SRC, src);
    w64(f, BAR0 + REG_DST, dst);
    w64(f, BAR0 + REG_LEN, len);
    w32(f, BAR0 + REG_OP, op);
    w32(f, BAR0 + REG_DOORBELL, 1);
    r32(f, BAR0 + REG_STATUS)
}

/// SET_IRQS with `data` after the header at [`ARG`].
fn set_irqs(rig: &Rig, f: &VfioDeviceFile, hdr: VfioIrqSet, data: &[u8]) -> Result<i64, Errno> {
    rig.put(ARG, &hdr);
    rig.sim.write(UserVa(ARG + 20), data).unwrap();
    f.ioctl(&rig.caller(), u64::from(VFIO_DEVICE_SET_IRQS), ARG)
}

fn irq_set(flags: u32, index: u32, start: u32, count: u32, data_len: u32) -> VfioIrqSet {
    VfioIrqSet {
        argsz: 20 + data_len,
        flags,
        index,
        start,
        count,
    }
}

const EVENTFD_TRIGGER: u32 = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
const NONE_TRIGGER: u32 = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;

#[test]
fn open_refuses_devices_not_bound_to_vfio_pci() {
    let rig = Rig::new();
    assert_eq!(
        VfioDeviceFile::open(&rig.engine, rig.dev("nvme0")).err(),
        Some(ENODEV)
    );
    assert_eq!(
        VfioDeviceFile::open(&rig.engine, DeviceId(9999)).err(),
        Some(ENODEV)
    );
    let dma0 = rig.dev("dma0");
    let f = VfioDeviceFile::open(&rig.engine, dma0).unwrap();
    assert_eq!(f.device(), dma0);
    assert_eq!(f.devid(), None);
    // vfio-pci let go of the device while the file was open: its cdev is gone.
    rig.engine.driver_unbind(dma0).unwrap();
    assert_eq!(rig.bind(&f, IOMMUFD), Err(ENODEV));
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Identity));
    rig.engine
        .driver_bind(dma0, uiommu_platform::drivers::Driver::VfioPci)
        .unwrap();
    rig.bind(&f, IOMMUFD).unwrap();
    // While bound, vfio-pci cannot be unbound.
    assert!(rig.engine.driver_unbind(dma0).is_err());
    rig.check();
}

#[test]
fn everything_but_bind_is_einval_before_bind() {
    let rig = Rig::new();
    let f = VfioDeviceFile::open(&rig.engine, rig.dev("dma0")).unwrap();
    let mut info = VfioDeviceInfo {
        argsz: 24,
        ..Default::default()
    };
    assert_eq!(rig.call(&f, VFIO_DEVICE_GET_INFO, &mut info), Err(EINVAL));
    assert_eq!(rig.attach(&f, 1), Err(EINVAL));
    assert_eq!(rig.detach(&f), Err(EINVAL));
    for req in [VFIO_DEVICE_RESET, VFIO_DEVICE_FEATURE, 0xdead_beef] {
        assert_eq!(f.ioctl(&rig.caller(), u64::from(req), ARG), Err(EINVAL));
    }
    let mut b = [0u8; 4];
    assert_eq!(f.pread(&mut b, CONFIG), Err(EINVAL));
    assert_eq!(f.pread(&mut [], CONFIG), Err(EINVAL));
    assert_eq!(f.pwrite(&b, BAR0), Err(EINVAL));
    assert_eq!(f.mmap_check(0, 4096, 3, MAP_SHARED), Err(EINVAL));
    // Nothing was claimed: the group is still in its default domain.
    assert_eq!(
        rig.group_domain(rig.dev("dma0")),
        Some(DomainKind::Identity)
    );
}

#[test]
fn bind_attach_and_dma_through_the_iommu_with_an_msix_eventfd() {
    let rig = Rig::new();
    let dma0 = rig.dev("dma0");
    let f = VfioDeviceFile::open(&rig.engine, dma0).unwrap();
    let devid = rig.bind(&f, IOMMUFD).unwrap();
    assert_eq!(f.devid(), Some(ObjId(devid)));
    assert_eq!(
        rig.iommufd.context().object_type(ObjId(devid)),
        Ok(ObjType::Device)
    );
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Blocking));
    // One device cannot be bound twice.
    assert_eq!(rig.bind(&f, IOMMUFD), Err(EINVAL));

    let ioas = rig.ioas_alloc();
    rig.ioas_map_buf(ioas);
    let hwpt = rig.attach(&f, ioas).unwrap();
    assert_ne!(hwpt, ioas, "the automatic HWPT's id is written back");
    assert_eq!(
        rig.iommufd.context().object_type(ObjId(hwpt)),
        Ok(ObjType::HwptPaging)
    );
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Paging));

    // Config space: the platform's ids.
    assert_eq!(r16(&f, CONFIG), DEFAULT_VENDOR);
    assert_eq!(r16(&f, CONFIG + 2), DEFAULT_DEVICE);
    enable_memory(&f);
    assert_eq!(r32(&f, BAR0 + REG_ID), DMA_ENGINE_MAGIC);

    // MSI-X vector 0 → the eventfd.
    let hdr = irq_set(EVENTFD_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, 4);
    set_irqs(&rig, &f, hdr, &EVENTFD.to_le_bytes()).unwrap();
    w32(&f, BAR0 + REG_IRQ_ENABLE, IRQ_ENABLE_DONE);

    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    rig.sim.write(UserVa(BUF), &data).unwrap();
    let st = run(&f, OP_COPY, IOVA, IOVA + 4 * 4096, data.len() as u64);
    assert_eq!(st, STATUS_DONE);
    let mut back = vec![0u8; data.len()];
    rig.sim.read(UserVa(BUF + 4 * 4096), &mut back).unwrap();
    assert_eq!(back, data, "the data moved through the IOMMU");
    assert_eq!(r64(&f, BAR0 + REG_BYTES_DONE), data.len() as u64);
    assert_eq!(rig.signals(EVENTFD), 1, "MSI-X signalled on completion");

    // DMA to an IOVA that is not mapped faults, in the device's registers and the IOMMU log.
    let unmapped = IOVA + BUF_LEN + 0x10_0000;
    assert_eq!(run(&f, OP_FILL, 0, unmapped, 64), STATUS_FAULT);
    assert_eq!(
        r32(&f, BAR0 + REG_FAULT_CODE),
        FAULT_NOT_MAPPED | FAULT_WRITE
    );
    assert_eq!(r64(&f, BAR0 + REG_FAULT_IOVA), unmapped);
    let fault = *rig.engine.faults().last().unwrap();
    assert_eq!((fault.device, fault.iova.raw()), (dma0, unmapped));
    assert_eq!(rig.signals(EVENTFD), 2, "a fault also ends the operation");
    assert_eq!(r32(&f, BAR0 + REG_COMPLETIONS), 2);

    // Detach: the group is blocked again; DMA faults as blocked.
    rig.detach(&f).unwrap();
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Blocking));
    assert_eq!(run(&f, OP_CRC32, IOVA, 0, 16), STATUS_FAULT);
    assert_eq!(r32(&f, BAR0 + REG_FAULT_CODE), FAULT_BLOCKED);
    rig.check();
    f.close();
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Identity));
    rig.check();
}

#[test]
fn a_second_context_cannot_bind_a_sibling_in_a_claimed_group() {
    let rig = Rig::new();
    let other = IommufdFile::open(&rig.engine, rig.space).unwrap();
    rig.fds
        .iommufds
        .lock()
        .unwrap()
        .insert(IOMMUFD2, other.context().clone());
    let f1 = VfioDeviceFile::open(&rig.engine, rig.dev("dma1")).unwrap();
    let f2 = VfioDeviceFile::open(&rig.engine, rig.dev("dma2")).unwrap();
    rig.bind(&f1, IOMMUFD).unwrap();
    assert_eq!(rig.bind(&f2, IOMMUFD2), Err(EPERM));
    assert_eq!(f2.devid(), None);
    rig.check();
    // The same context may bind the sibling.
    rig.bind(&f2, IOMMUFD).unwrap();
    // A second file of an already bound device cannot bind it (vfio_df_open).
    let f1b = VfioDeviceFile::open(&rig.engine, rig.dev("dma1")).unwrap();
    assert_eq!(rig.bind(&f1b, IOMMUFD), Err(EINVAL));
    assert_eq!(rig.bind(&f1b, IOMMUFD2), Err(EINVAL));
    drop(f1b);
    // Closing one sibling keeps the group claimed; the last close releases it.
    let dma1 = rig.dev("dma1");
    f1.close();
    assert_eq!(rig.group_domain(dma1), Some(DomainKind::Blocking));
    f2.close();
    assert_eq!(rig.group_domain(dma1), Some(DomainKind::Identity));
    // Now the other context can have the group.
    let f2 = VfioDeviceFile::open(&rig.engine, rig.dev("dma2")).unwrap();
    rig.bind(&f2, IOMMUFD2).unwrap();
    rig.check();
}

#[test]
fn closing_the_device_file_returns_the_group_to_its_default_domain() {
    let rig = Rig::new();
    let dma0 = rig.dev("dma0");
    let f = VfioDeviceFile::open(&rig.engine, dma0).unwrap();
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Identity));
    rig.bind(&f, IOMMUFD).unwrap();
    let ioas = rig.ioas_alloc();
    rig.ioas_map_buf(ioas);
    rig.attach(&f, ioas).unwrap();
    let hdr = irq_set(EVENTFD_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, 4);
    set_irqs(&rig, &f, hdr, &EVENTFD.to_le_bytes()).unwrap();
    assert!(rig.engine.total_pins() > 0);
    drop(f);
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Identity));
    let gid = rig
        .engine
        .with_platform(|p| p.topology.device(dma0).map(|d| d.group))
        .unwrap();
    assert_eq!(rig.engine.group_status(gid).unwrap().owner, None);
    // The device object is gone; the automatic HWPT went with it; the IOAS stays.
    assert_eq!(rig.iommufd.context().objects().unwrap(), vec![ObjId(ioas)]);
    // Interrupts were unhooked: the function raises nothing into the old eventfd.
    rig.engine.with_platform(|p| {
        let mut b = [0u8; 4];
        p.mmio_write(dma0, 0, REG_IRQ_ENABLE, &1u32.to_le_bytes())
            .unwrap();
        p.mmio_write(dma0, 0, REG_DOORBELL, &1u32.to_le_bytes())
            .unwrap();
        p.mmio_read(dma0, 0, REG_COMPLETIONS, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 1);
    });
    assert_eq!(rig.signals(EVENTFD), 0);
    rig.check();
}

#[test]
fn attach_again_replaces_and_detach_is_idempotent() {
    let rig = Rig::new();
    let dma0 = rig.dev("dma0");
    let f = VfioDeviceFile::open(&rig.engine, dma0).unwrap();
    rig.bind(&f, IOMMUFD).unwrap();
    let ioas1 = rig.ioas_alloc();
    let ioas2 = rig.ioas_alloc();
    rig.ioas_map_buf(ioas2);
    let h1 = rig.attach(&f, ioas1).unwrap();
    let h2 = rig.attach(&f, ioas2).unwrap();
    assert_ne!(h1, h2);
    // The first automatic HWPT went away with its last device.
    assert!(rig.iommufd.context().object_type(ObjId(h1)).is_err());
    enable_memory(&f);
    assert_eq!(run(&f, OP_FILL, 0, IOVA, 100), STATUS_DONE);
    // Attaching to something that is not a page table refuses and keeps the old one.
    let devid = f.devid().unwrap().0;
    assert_eq!(rig.attach(&f, devid), Err(EINVAL));
    assert_eq!(rig.attach(&f, 999), Err(2));
    assert_eq!(run(&f, OP_FILL, 0, IOVA, 100), STATUS_DONE);
    assert_eq!(rig.detach(&f), Ok(0));
    assert_eq!(
        rig.detach(&f),
        Ok(0),
        "detaching a detached device succeeds"
    );
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Blocking));
    // After a detach the next attach is an attach again.
    rig.attach(&f, ioas2).unwrap();
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Paging));
    rig.check();
}

#[test]
fn config_space_shows_the_model_with_virtual_bars() {
    let rig = Rig::new();
    let f = VfioDeviceFile::open(&rig.engine, rig.dev("dma0")).unwrap();
    rig.bind(&f, IOMMUFD).unwrap();
    let mut hdr = [0u8; 64];
    assert_eq!(f.pread(&mut hdr, CONFIG), Ok(64));
    assert_eq!(u16::from_le_bytes([hdr[0], hdr[1]]), DEFAULT_VENDOR);
    assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]), DEFAULT_DEVICE);
    assert_eq!(hdr[0x10], 0x04, "64-bit memory BAR0 at address 0");
    // BAR sizing.
    for bar in 0..6u64 {
        w32(&f, CONFIG + 0x10 + 4 * bar, u32::MAX);
    }
    w32(&f, CONFIG + 0x30, u32::MAX);
    assert_eq!(r32(&f, CONFIG + 0x10), 0xffff_f004);
    assert_eq!(r32(&f, CONFIG + 0x14), 0xffff_ffff);
    for bar in 2..6u64 {
        assert_eq!(r32(&f, CONFIG + 0x10 + 4 * bar), 0, "BAR{bar}");
    }
    assert_eq!(r32(&f, CONFIG + 0x30), 0, "no expansion ROM");
    w32(&f, CONFIG + 0x10, 0xfebf_1000);
    assert_eq!(r32(&f, CONFIG + 0x10), 0xfebf_1004);
    // The model never saw the BAR writes.
    let dma0 = rig.dev("dma0");
    let model_bar0 = rig.engine.with_platform(|p| {
        let c = p.models.get(&dma0).unwrap().config();
        u32::from_le_bytes([c[0x10], c[0x11], c[0x12], c[0x13]])
    });
    assert_eq!(model_bar0, 4);
    // Odd sizes and offsets work; the end is the end.
    let mut b = [0u8; 3];
    assert_eq!(f.pread(&mut b, CONFIG + 1), Ok(3));
    assert_eq!(b[0], (DEFAULT_VENDOR >> 8) as u8);
    assert_eq!(f.pread(&mut [0u8; 4], CONFIG + 254), Err(EFAULT));
    assert_eq!(f.pread(&mut [0u8; 1], CONFIG + 256), Err(EFAULT));
    assert_eq!(f.pwrite(&[0u8; 8], CONFIG + 252), Err(EFAULT));
    // Read-only registers stay as they are.
    w32(&f, CONFIG, 0);
    assert_eq!(r16(&f, CONFIG), DEFAULT_VENDOR);
    // Regions that do not exist.
    let rom = (VFIO_PCI_ROM_REGION_INDEX as u64) << 40;
    let vga = (VFIO_PCI_VGA_REGION_INDEX as u64) << 40;
    assert_eq!(f.pread(&mut b, rom), Err(EINVAL));
    assert_eq!(f.pwrite(&b, rom), Err(EINVAL));
    assert_eq!(f.pread(&mut b, vga), Err(EINVAL));
    assert_eq!(f.pread(&mut b, 9 << 40), Err(EINVAL));
    assert_eq!(f.pread(&mut b, u64::MAX), Err(EINVAL));
    assert_eq!(
        f.pread(&mut b, 1 << 40),
        Err(EINVAL),
        "BAR1 is BAR0's upper half"
    );
    assert_eq!(f.pread(&mut [], 9 << 40), Ok(0));
}

#[test]
fn bar_access_rules_memory_enable_msix_table_and_bounds() {
    let rig = Rig::new();
    let f = VfioDeviceFile::open(&rig.engine, rig.dev("dma0")).unwrap();
    rig.bind(&f, IOMMUFD).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(f.pread(&mut b, BAR0), Err(EIO), "memory space is off");
    assert_eq!(f.pwrite(&b, BAR0 + REG_LEN), Err(EIO));
    enable_memory(&f);
    assert_eq!(r32(&f, BAR0 + REG_VERSION), DMA_ENGINE_VERSION);
    // Past the end of BAR0: EINVAL; a read running over the end is short.
    assert_eq!(f.pread(&mut b, BAR0 + BAR0_SIZE), Err(EINVAL));
    let mut tail = [0u8; 16];
    assert_eq!(f.pread(&mut tail, BAR0 + BAR0_SIZE - 8), Ok(8));
    // A 16-byte read is two 8-byte register accesses.
    w64(&f, BAR0 + REG_SRC, 0x1111_2222_3333_4444);
    w64(&f, BAR0 + REG_DST, 0x5555_6666_7777_8888);
    let mut two = [0u8; 16];
    assert_eq!(f.pread(&mut two, BAR0 + REG_SRC), Ok(16));
    assert_eq!(
        u64::from_le_bytes(two[..8].try_into().unwrap()),
        0x1111_2222_3333_4444
    );
    assert_eq!(
        u64::from_le_bytes(two[8..].try_into().unwrap()),
        0x5555_6666_7777_8888
    );
    // The MSI-X table belongs to vfio: all-ones, writes dropped; the PBA is passed through.
    w32(&f, BAR0 + REG_MSIX_TABLE, 0xfee0_0000);
    assert_eq!(r32(&f, BAR0 + REG_MSIX_TABLE), u32::MAX);
    assert_eq!(r32(&f, BAR0 + REG_MSIX_TABLE + 12), u32::MAX);
    let dma0 = rig.dev("dma0");
    let model_entry = rig.engine.with_platform(|p| {
        let mut b = [0u8; 4];
        p.mmio_read(dma0, 0, REG_MSIX_TABLE, &mut b).unwrap();
        u32::from_le_bytes(b)
    });
    assert_eq!(model_entry, 0, "the write never reached the table");
    assert_eq!(r64(&f, BAR0 + REG_MSIX_PBA), 0);
    // Reset brings the registers back but keeps memory decoding (saved and restored).
    w64(&f, BAR0 + REG_LEN, 77);
    assert_eq!(
        f.ioctl(&rig.caller(), u64::from(VFIO_DEVICE_RESET), 0),
        Ok(0)
    );
    assert_eq!(r64(&f, BAR0 + REG_LEN), 0);
    // Upper request bits are dropped as by ioctl(2).
    let req = (1u64 << 40) | u64::from(VFIO_DEVICE_RESET);
    assert_eq!(f.ioctl(&rig.caller(), req, 0), Ok(0));
}

#[test]
fn region_device_and_irq_info() {
    let rig = Rig::new();
    let f = VfioDeviceFile::open(&rig.engine, rig.dev("dma0")).unwrap();
    rig.bind(&f, IOMMUFD).unwrap();
    let mut info = VfioDeviceInfo {
        argsz: 24,
        cap_offset: 77,
        ..Default::default()
    };
    rig.call(&f, VFIO_DEVICE_GET_INFO, &mut info).unwrap();
    assert_eq!(
        info,
        VfioDeviceInfo {
            argsz: 24,
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: 9,
            num_irqs: 5,
            cap_offset: 0,
            pad: 0,
        }
    );
    // A 16-byte (older) struct gets 16 bytes back and nothing after them.
    rig.put(ARG + 16, &[0xaau8; 8]);
    let mut short = VfioDeviceInfo {
        argsz: 16,
        ..Default::default()
    };
    rig.put(ARG, &short);
    rig.put(ARG + 16, &[0xaau8; 8]);
    f.ioctl(&rig.caller(), u64::from(VFIO_DEVICE_GET_INFO), ARG)
        .unwrap();
    short = rig.get(ARG);
    assert_eq!((short.num_regions, short.cap_offset), (9, 0xaaaa_aaaa));

    let region = |index: u32| {
        let mut r = VfioRegionInfo {
            argsz: 32,
            index,
            ..Default::default()
        };
        rig.call(&f, VFIO_DEVICE_GET_REGION_INFO, &mut r).map(|_| r)
    };
    let bar0 = region(0).unwrap();
    assert_eq!(
        (bar0.flags, bar0.size, bar0.offset),
        (
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
            BAR0_SIZE,
            0
        )
    );
    let cfg = region(VFIO_PCI_CONFIG_REGION_INDEX).unwrap();
    assert_eq!((cfg.size, cfg.offset), (256, CONFIG));
    assert_eq!(
        cfg.flags,
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
    );
    let bar1 = region(1).unwrap();
    assert_eq!((bar1.flags, bar1.size, bar1.offset), (0, 0, 1 << 40));
    let rom = region(VFIO_PCI_ROM_REGION_INDEX).unwrap();
    assert_eq!((rom.flags, rom.size), (0, 0));
    assert_eq!(region(VFIO_PCI_VGA_REGION_INDEX).err(), Some(EINVAL));
    assert_eq!(region(9).err(), Some(EINVAL));
    assert_eq!(region(u32::MAX).err(), Some(EINVAL));

    let irq = |index: u32| {
        let mut i = VfioIrqInfo {
            argsz: 16,
            index,
            ..Default::default()
        };
        rig.call(&f, VFIO_DEVICE_GET_IRQ_INFO, &mut i)
            .map(|_| (i.flags, i.count))
    };
    assert_eq!(
        irq(VFIO_PCI_INTX_IRQ_INDEX),
        Ok((
            VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
            0
        ))
    );
    assert_eq!(
        irq(VFIO_PCI_MSI_IRQ_INDEX),
        Ok((VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 0))
    );
    assert_eq!(
        irq(VFIO_PCI_MSIX_IRQ_INDEX),
        Ok((VFIO_IRQ_INFO_EVENTFD, IRQ_COUNT))
    );
    assert_eq!(
        irq(VFIO_PCI_ERR_IRQ_INDEX),
        Err(EINVAL),
        "not a PCIe function"
    );
    assert_eq!(
        irq(VFIO_PCI_REQ_IRQ_INDEX),
        Ok((VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 1))
    );
    assert_eq!(irq(5), Err(EINVAL));
}

#[test]
fn set_irqs_msix_eventfds_loopback_and_teardown() {
    let rig = Rig::new();
    let f = VfioDeviceFile::open(&rig.engine, rig.dev("dma0")).unwrap();
    rig.bind(&f, IOMMUFD).unwrap();
    let msix = VFIO_PCI_MSIX_IRQ_INDEX;
    // Loopback before enabling: EINVAL.
    assert_eq!(
        set_irqs(&rig, &f, irq_set(NONE_TRIGGER, msix, 0, 1, 0), &[]),
        Err(EINVAL)
    );
    // A bad eventfd: EBADF, and MSI-X stays disabled.
    let h = irq_set(EVENTFD_TRIGGER, msix, 0, 1, 4);
    assert_eq!(set_irqs(&rig, &f, h, &42i32.to_le_bytes()), Err(EBADF));
    assert_eq!(
        set_irqs(&rig, &f, irq_set(NONE_TRIGGER, msix, 0, 1, 0), &[]),
        Err(EINVAL)
    );
    // Enable with an eventfd; loopback fires it.
    set_irqs(&rig, &f, h, &EVENTFD.to_le_bytes()).unwrap();
    set_irqs(&rig, &f, irq_set(NONE_TRIGGER, msix, 0, 1, 0), &[]).unwrap();
    assert_eq!(rig.signals(EVENTFD), 1);
    let bool_trigger = VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER;
    set_irqs(&rig, &f, irq_set(bool_trigger, msix, 0, 1, 1), &[0]).unwrap();
    set_irqs(&rig, &f, irq_set(bool_trigger, msix, 0, 1, 1), &[1]).unwrap();
    assert_eq!(rig.signals(EVENTFD), 2);
    // Swap the vector to another eventfd; a bad one mid-way changes nothing.
    assert_eq!(set_irqs(&rig, &f, h, &(-7i32 - 100).to_le_bytes()), Ok(0));
    set_irqs(&rig, &f, irq_set(NONE_TRIGGER, msix, 0, 1, 0), &[]).unwrap();
    assert_eq!(rig.signals(EVENTFD), 2, "a negative fd unhooked the vector");
    set_irqs(&rig, &f, h, &EVENTFD2.to_le_bytes()).unwrap();
    assert_eq!(set_irqs(&rig, &f, h, &99i32.to_le_bytes()), Err(EBADF));
    set_irqs(&rig, &f, irq_set(NONE_TRIGGER, msix, 0, 1, 0), &[]).unwrap();
    assert_eq!((rig.signals(EVENTFD), rig.signals(EVENTFD2)), (2, 1));
    // The device raises vector 0 into EVENTFD2.
    enable_memory(&f);
    w32(&f, BAR0 + REG_IRQ_ENABLE, 1);
    assert_eq!(run(&f, OP_FILL, 0, 0, 0), STATUS_DONE);
    assert_eq!(rig.signals(EVENTFD2), 2);
    // MSI cannot be enabled while MSI-X is (and the dma-engine has no MSI anyway).
    assert_eq!(
        set_irqs(
            &rig,
            &f,
            irq_set(EVENTFD_TRIGGER, VFIO_PCI_MSI_IRQ_INDEX, 0, 1, 4),
            &EVENTFD.to_le_bytes()
        ),
        Err(EINVAL)
    );
    // Masking MSI-X is not supported by vfio-pci.
    let mask = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK;
    assert_eq!(
        set_irqs(&rig, &f, irq_set(mask, msix, 0, 1, 0), &[]),
        Err(ENOTTY)
    );
    // DATA_NONE with count 0 disables MSI-X: the device's completion signals nothing.
    set_irqs(&rig, &f, irq_set(NONE_TRIGGER, msix, 0, 0, 0), &[]).unwrap();
    assert_eq!(run(&f, OP_FILL, 0, 0, 0), STATUS_DONE);
    assert_eq!(rig.signals(EVENTFD2), 2);
    // REQ takes an eventfd that only loopback fires.
    let req = VFIO_PCI_REQ_IRQ_INDEX;
    assert_eq!(
        set_irqs(&rig, &f, irq_set(NONE_TRIGGER, req, 0, 1, 0), &[]),
        Err(EINVAL)
    );
    set_irqs(
        &rig,
        &f,
        irq_set(EVENTFD_TRIGGER, req, 0, 1, 4),
        &EVENTFD.to_le_bytes(),
    )
    .unwrap();
    set_irqs(&rig, &f, irq_set(NONE_TRIGGER, req, 0, 1, 0), &[]).unwrap();
    assert_eq!(rig.signals(EVENTFD), 3);
    set_irqs(&rig, &f, irq_set(NONE_TRIGGER, req, 0, 0, 0), &[]).unwrap();
    assert_eq!(
        set_irqs(&rig, &f, irq_set(NONE_TRIGGER, req, 0, 1, 0), &[]),
        Err(EINVAL)
    );
    assert_eq!(
        set_irqs(
            &rig,
            &f,
            irq_set(EVENTFD_TRIGGER, req, 0, 1, 4),
            &(-2i32).to_le_bytes()
        ),
        Err(EINVAL)
    );
    // ERR is only for PCIe functions.
    let err = VFIO_PCI_ERR_IRQ_INDEX;
    assert_eq!(
        set_irqs(
            &rig,
            &f,
            irq_set(EVENTFD_TRIGGER, err, 0, 1, 4),
            &EVENTFD.to_le_bytes()
        ),
        Err(EINVAL)
    );
}

#[test]
fn set_irqs_refuses_malformed_headers() {
    let rig = Rig::new();
    let f = VfioDeviceFile::open(&rig.engine, rig.dev("dma0")).unwrap();
    rig.bind(&f, IOMMUFD).unwrap();
    let msix = VFIO_PCI_MSIX_IRQ_INDEX;
    let fd = EVENTFD.to_le_bytes();
    let cases: &[(VfioIrqSet, Errno)] = &[
        // argsz smaller than the header.
        (
            VfioIrqSet {
                argsz: 19,
                ..irq_set(EVENTFD_TRIGGER, msix, 0, 1, 4)
            },
            EINVAL,
        ),
        // argsz without room for the data.
        (
            VfioIrqSet {
                argsz: 23,
                ..irq_set(EVENTFD_TRIGGER, msix, 0, 1, 4)
            },
            EINVAL,
        ),
        // Unknown flag bits.
        (irq_set(EVENTFD_TRIGGER | 1 << 6, msix, 0, 1, 4), EINVAL),
        // Two data types.
        (
            irq_set(EVENTFD_TRIGGER | VFIO_IRQ_SET_DATA_BOOL, msix, 0, 1, 4),
            EINVAL,
        ),
        // No data type.
        (irq_set(VFIO_IRQ_SET_ACTION_TRIGGER, msix, 0, 1, 4), EINVAL),
        // Beyond the vectors.
        (irq_set(EVENTFD_TRIGGER, msix, 1, 1, 4), EINVAL),
        (irq_set(EVENTFD_TRIGGER, msix, 0, 2, 8), EINVAL),
        (irq_set(EVENTFD_TRIGGER, msix, u32::MAX, 1, 4), EINVAL),
        (irq_set(EVENTFD_TRIGGER, msix, 1, u32::MAX, 4), EINVAL),
        // Bad index; an index with no vectors.
        (irq_set(EVENTFD_TRIGGER, 5, 0, 1, 4), EINVAL),
        (irq_set(EVENTFD_TRIGGER, u32::MAX, 0, 1, 4), EINVAL),
        (
            irq_set(EVENTFD_TRIGGER, VFIO_PCI_INTX_IRQ_INDEX, 0, 1, 4),
            EINVAL,
        ),
        // Two actions, no action.
        (
            irq_set(
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_TRIGGER,
                msix,
                0,
                1,
                0,
            ),
            ENOTTY,
        ),
        (irq_set(VFIO_IRQ_SET_DATA_NONE, msix, 0, 1, 0), ENOTTY),
        // Enabling with no vectors.
        (irq_set(EVENTFD_TRIGGER, msix, 0, 0, 0), 34),
    ];
    for (i, (hdr, errno)) in cases.iter().enumerate() {
        assert_eq!(
            set_irqs(&rig, &f, *hdr, &fd),
            Err(*errno),
            "case {i}: {hdr:?}"
        );
    }
    // Data that is not there: EFAULT.
    let h = irq_set(EVENTFD_TRIGGER, msix, 0, 1, 4);
    rig.put(0x1000_ffec, &h);
    assert_eq!(
        f.ioctl(&rig.caller(), u64::from(VFIO_DEVICE_SET_IRQS), 0x1000_ffec),
        Err(EFAULT)
    );
    // After all that, MSI-X is still disabled: loopback is EINVAL.
    assert_eq!(
        set_irqs(&rig, &f, irq_set(NONE_TRIGGER, msix, 0, 1, 0), &[]),
        Err(EINVAL)
    );
}

#[test]
fn bad_pointers_sizes_and_flags_change_nothing() {
    let rig = Rig::new();
    let dma0 = rig.dev("dma0");
    let f = VfioDeviceFile::open(&rig.engine, dma0).unwrap();
    let c = rig.caller();
    let bind_req = u64::from(VFIO_DEVICE_BIND_IOMMUFD);
    // Unmapped argument; argument wrapping past the top of memory.
    assert_eq!(f.ioctl(&c, bind_req, HOLE), Err(EFAULT));
    assert_eq!(f.ioctl(&c, bind_req, u64::MAX - 3), Err(EFAULT));
    // Bad bind arguments.
    for (argsz, flags, fd, errno) in [
        (15, 0, IOMMUFD, EINVAL),
        (16, 1, IOMMUFD, EINVAL),
        (16, 0, -1, EINVAL),
        (16, 0, 55, EBADF),
        (16, 0, EVENTFD, EBADFD),
    ] {
        let mut b = VfioDeviceBindIommufd {
            argsz,
            flags,
            iommufd: fd,
            out_devid: 0,
        };
        assert_eq!(rig.call(&f, VFIO_DEVICE_BIND_IOMMUFD, &mut b), Err(errno));
    }
    // A read-only struct: the reply cannot be written, so nothing is bound.
    let b = VfioDeviceBindIommufd {
        argsz: 16,
        flags: 0,
        iommufd: IOMMUFD,
        out_devid: 0,
    };
    let ro_mem = ReadOnly(&rig.sim);
    rig.put(ARG, &b);
    let ro_caller = Caller {
        mem: &ro_mem,
        fds: &rig.fds,
    };
    assert_eq!(f.ioctl(&ro_caller, bind_req, ARG), Err(EFAULT));
    assert_eq!(f.devid(), None);
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Identity));
    rig.check();

    // Bound now; bad arguments of the other ioctls.
    rig.bind(&f, IOMMUFD).unwrap();
    let ioas = rig.ioas_alloc();
    for req in [
        VFIO_DEVICE_GET_INFO,
        VFIO_DEVICE_GET_REGION_INFO,
        VFIO_DEVICE_GET_IRQ_INFO,
        VFIO_DEVICE_SET_IRQS,
        VFIO_DEVICE_ATTACH_IOMMUFD_PT,
        VFIO_DEVICE_DETACH_IOMMUFD_PT,
        VFIO_DEVICE_FEATURE,
    ] {
        assert_eq!(f.ioctl(&c, u64::from(req), HOLE), Err(EFAULT), "{req}");
    }
    let mut a = VfioDeviceAttachIommufdPt {
        argsz: 11,
        flags: 0,
        pt_id: ioas,
    };
    assert_eq!(
        rig.call(&f, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a),
        Err(EINVAL)
    );
    a.argsz = 12;
    a.flags = 1;
    assert_eq!(
        rig.call(&f, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a),
        Err(EINVAL)
    );
    // Attach whose reply cannot be written: EFAULT and not attached.
    a.flags = 0;
    rig.put(ARG, &a);
    assert_eq!(
        f.ioctl(&ro_caller, u64::from(VFIO_DEVICE_ATTACH_IOMMUFD_PT), ARG),
        Err(EFAULT)
    );
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Blocking));
    // A larger (newer) attach struct with a zero tail is fine.
    rig.put(ARG, &[16u32, 0, ioas, 0]);
    assert_eq!(
        f.ioctl(&c, u64::from(VFIO_DEVICE_ATTACH_IOMMUFD_PT), ARG),
        Ok(0)
    );
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Paging));
    let mut d = VfioDeviceDetachIommufdPt { argsz: 7, flags: 0 };
    assert_eq!(
        rig.call(&f, VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut d),
        Err(EINVAL)
    );
    d = VfioDeviceDetachIommufdPt { argsz: 8, flags: 2 };
    assert_eq!(
        rig.call(&f, VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut d),
        Err(EINVAL)
    );
    assert_eq!(rig.group_domain(dma0), Some(DomainKind::Paging));
    let mut info = VfioDeviceInfo {
        argsz: 15,
        ..Default::default()
    };
    assert_eq!(rig.call(&f, VFIO_DEVICE_GET_INFO, &mut info), Err(EINVAL));
    let mut r = VfioRegionInfo {
        argsz: 31,
        ..Default::default()
    };
    assert_eq!(
        rig.call(&f, VFIO_DEVICE_GET_REGION_INFO, &mut r),
        Err(EINVAL)
    );
    let mut i = VfioIrqInfo {
        argsz: 15,
        index: 2,
        ..Default::default()
    };
    assert_eq!(rig.call(&f, VFIO_DEVICE_GET_IRQ_INFO, &mut i), Err(EINVAL));
    // Features: the generic checks, then ENOTTY for every feature.
    let feature = |argsz: u32, flags: u32| {
        let mut v = VfioDeviceFeature { argsz, flags };
        rig.call(&f, VFIO_DEVICE_FEATURE, &mut v)
    };
    assert_eq!(feature(7, VFIO_DEVICE_FEATURE_GET), Err(EINVAL));
    assert_eq!(feature(8, 1 << 20), Err(EINVAL));
    assert_eq!(
        feature(8, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | 1),
        Err(EINVAL)
    );
    assert_eq!(
        feature(16, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION),
        Err(ENOTTY)
    );
    assert_eq!(
        feature(
            8,
            VFIO_DEVICE_FEATURE_PROBE
                | VFIO_DEVICE_FEATURE_SET
                | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
        ),
        Err(ENOTTY)
    );
    // Unknown and unimplemented ioctls.
    for req in [
        0u32,
        VFIO_DEVICE_IOEVENTFD,
        VFIO_DEVICE_PCI_HOT_RESET,
        VFIO_GET_API_VERSION,
    ] {
        assert_eq!(f.ioctl(&c, u64::from(req), ARG), Err(ENOTTY), "{req}");
    }
    rig.check();
}

/// A view of a memory that refuses every write (a struct in read-only memory).
struct ReadOnly<'a>(&'a SimMemory);

impl UserMemory for ReadOnly<'_> {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), uiommu_platform::memory::MemFault> {
        self.0.read(va, buf)
    }
    fn write(&self, va: UserVa, _data: &[u8]) -> Result<(), uiommu_platform::memory::MemFault> {
        Err(uiommu_platform::memory::MemFault::ReadOnly(va))
    }
    fn probe(
        &self,
        va: UserVa,
        len: u64,
        write: bool,
    ) -> Result<(), uiommu_platform::memory::MemFault> {
        self.0.probe(va, len, write)
    }
}

/// A function with an mmap-able 16 KiB BAR2 holding its MSI-X table (2 vectors), for the
/// mmap and capability-chain paths the dma-engine does not take.
struct MappableModel {
    config: [u8; 256],
    regs: [u8; 0x4000],
    sink: Option<IrqSink>,
}

impl MappableModel {
    fn new() -> MappableModel {
        let mut c = [0u8; 256];
        c[0..4].copy_from_slice(&[0x86, 0x80, 0x34, 0x12]);
        c[6] = 0x10;
        c[0x18] = 0x0c; // BAR2: 64-bit prefetchable memory
        c[0x34] = 0x50;
        c[0x50] = 0x11;
        c[0x52] = 1; // 2 vectors
        c[0x54] = 0x02; // table in BAR2 at 0
        c[0x58..0x5c].copy_from_slice(&0x802u32.to_le_bytes()); // PBA in BAR2 at 0x800
        MappableModel {
            config: c,
            regs: [0; 0x4000],
            sink: None,
        }
    }
}

impl std::fmt::Debug for MappableModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MappableModel")
    }
}

impl DeviceModel for MappableModel {
    fn bars(&self) -> Vec<BarInfo> {
        vec![BarInfo {
            index: 2,
            size: 0x4000,
            mmap: true,
        }]
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if offset + i as u64 == 4 {
                self.config[4] = *b & 0x06;
            }
        }
    }
    fn mmio_read(&mut self, _bar: u8, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.regs.get(offset as usize + i).copied().unwrap_or(0xff);
        }
    }
    fn mmio_write(&mut self, _bar: u8, offset: u64, data: &[u8], _dma: &mut dyn DmaPort) {
        for (i, b) in data.iter().enumerate() {
            if let Some(r) = self.regs.get_mut(offset as usize + i) {
                *r = *b;
            }
        }
        // Writing 0x1000 raises the vector written.
        if offset == 0x1000 {
            if let (Some(s), Some(&v)) = (self.sink.as_mut(), data.first()) {
                s(u32::from(v));
            }
        }
    }
    fn irq_count(&self) -> u32 {
        2
    }
    fn set_irq_sink(&mut self, sink: Option<IrqSink>) {
        self.sink = sink;
    }
    fn reset(&mut self) {
        self.regs = [0; 0x4000];
        self.config[4] = 0;
    }
}

#[test]
fn mmap_check_and_the_msix_mappable_capability() {
    let rig = Rig::new();
    let dma0 = rig.dev("dma0");
    let f = VfioDeviceFile::open(&rig.engine, dma0).unwrap();
    rig.bind(&f, IOMMUFD).unwrap();
    assert_eq!(
        f.mmap_check(0, 4096, 3, MAP_SHARED),
        Err(EINVAL),
        "BAR0 is not mmap-able"
    );
    drop(f);

    rig.engine.with_platform(|p| {
        p.models.insert(dma0, Box::new(MappableModel::new()));
    });
    let f = VfioDeviceFile::open(&rig.engine, dma0).unwrap();
    rig.bind(&f, IOMMUFD).unwrap();
    let bar2 = 2u64 << 40;
    assert_eq!(
        f.mmap_check(bar2, 0x4000, 3, MAP_SHARED),
        Ok(MmapTarget {
            bar: 2,
            offset: 0,
            len: 0x4000
        })
    );
    assert_eq!(
        f.mmap_check(bar2 + 0x1000, 0x1000, 1, 0x03),
        Ok(MmapTarget {
            bar: 2,
            offset: 0x1000,
            len: 0x1000
        })
    );
    for (off, len, flags) in [
        (bar2, 0x5000, MAP_SHARED), // past the BAR
        (bar2 + 0x3000, 0x2000, MAP_SHARED),
        (bar2, 0x1000, 0x02),           // private
        (bar2 + 8, 0x1000, MAP_SHARED), // not page-aligned
        (bar2, 0, MAP_SHARED),          // empty
        (CONFIG, 0x1000, MAP_SHARED),   // config space
        (6 << 40, 0x1000, MAP_SHARED),  // ROM
        (0, 0x1000, MAP_SHARED),        // BAR0 is not implemented
        (bar2, u64::MAX - 0xfff, MAP_SHARED),
    ] {
        assert_eq!(
            f.mmap_check(off, len, 3, flags),
            Err(EINVAL),
            "{off:#x} {len:#x}"
        );
    }

    // Region info: mmap flag and the MSIX_MAPPABLE capability.
    let mut r = VfioRegionInfo {
        argsz: 32,
        index: 2,
        cap_offset: 5,
        ..Default::default()
    };
    rig.call(&f, VFIO_DEVICE_GET_REGION_INFO, &mut r).unwrap();
    let rw_mmap =
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
    assert_eq!(r.flags, rw_mmap | VFIO_REGION_INFO_FLAG_CAPS);
    assert_eq!(
        (r.argsz, r.cap_offset, r.size),
        (40, 0, 0x4000),
        "argsz asks for room"
    );
    r.argsz = 64;
    rig.call(&f, VFIO_DEVICE_GET_REGION_INFO, &mut r).unwrap();
    assert_eq!((r.argsz, r.cap_offset), (64, 32));
    let cap: VfioInfoCapHeader = rig.get(ARG + 32);
    assert_eq!(
        cap,
        VfioInfoCapHeader {
            id: VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
            version: 1,
            next: 0
        }
    );
    // Two MSI-X vectors, each to its own eventfd; the table range of BAR2 is hidden.
    let mut fds = [0u8; 8];
    fds[..4].copy_from_slice(&EVENTFD.to_le_bytes());
    fds[4..].copy_from_slice(&EVENTFD2.to_le_bytes());
    let h = irq_set(EVENTFD_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 2, 8);
    set_irqs(&rig, &f, h, &fds).unwrap();
    enable_memory(&f);
    assert_eq!(f.pwrite(&[1], bar2 + 0x1000), Ok(1));
    assert_eq!(f.pwrite(&[0], bar2 + 0x1000), Ok(1));
    assert_eq!(f.pwrite(&[1], bar2 + 0x1000), Ok(1));
    assert_eq!((rig.signals(EVENTFD), rig.signals(EVENTFD2)), (1, 2));
    let mut t = [0u8; 40];
    assert_eq!(f.pread(&mut t, bar2), Ok(40));
    assert_eq!(&t[..32], &[0xff; 32], "the 2-entry table reads as all-ones");
    assert_eq!(&t[32..], &[0; 8]);
    // Vector 1 alone can be swapped (start 1, count 1).
    let h = irq_set(EVENTFD_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 1, 1, 4);
    set_irqs(&rig, &f, h, &EVENTFD.to_le_bytes()).unwrap();
    assert_eq!(f.pwrite(&[1], bar2 + 0x1000), Ok(1));
    assert_eq!((rig.signals(EVENTFD), rig.signals(EVENTFD2)), (2, 2));
    rig.check();
}

#[test]
fn arbitrary_ioctls_and_accesses_never_panic_and_keep_the_invariants() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 48,
        ..Default::default()
    });
    let op = (
        0u8..4,
        prop_oneof![15204u32..15230, any::<u32>()],
        prop::collection::vec(any::<u8>(), 0..48),
        prop_oneof![
            0u64..0x1000,
            (0u64..10).prop_map(|i| i << 40),
            (0u64..10, 0u64..0x1100).prop_map(|(i, o)| (i << 40) + o),
            any::<u64>()
        ],
    );
    runner
        .run(&prop::collection::vec(op, 1..40), |ops| {
            let rig = Rig::new();
            let ioas = rig.ioas_alloc();
            rig.ioas_map_buf(ioas);
            let f = VfioDeviceFile::open(&rig.engine, rig.dev("dma1")).unwrap();
            for (kind, req, bytes, off) in ops {
                match kind {
                    0 => {
                        rig.sim.write(UserVa(ARG), &bytes).unwrap();
                        let _ = f.ioctl(&rig.caller(), u64::from(req), ARG);
                    }
                    1 => {
                        let _ = rig.bind(&f, IOMMUFD);
                        let _ = rig.attach(&f, ioas);
                    }
                    2 => {
                        let mut buf = bytes.clone();
                        let _ = f.pread(&mut buf, off);
                    }
                    _ => {
                        let _ = f.pwrite(&bytes, off);
                    }
                }
                prop_assert!(rig.engine.check_invariants().is_ok());
            }
            drop(f);
            prop_assert_eq!(
                rig.group_domain(rig.dev("dma1")),
                Some(DomainKind::Identity)
            );
            prop_assert!(rig.engine.check_invariants().is_ok());
            Ok(())
        })
        .unwrap();
}
