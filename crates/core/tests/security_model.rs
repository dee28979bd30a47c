//! Scenario tests of the security model on the built-in platform, through the library API.
//! Every test calls the invariant checker after each step.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use uiommu_core::{AccessOps, Context, Engine, EngineConfig, HwptFlags, ObjId, RwBuf};
use uiommu_platform::drivers::Driver;
use uiommu_platform::hw::{DomainKind, FaultReason};
use uiommu_platform::memory::{SimMemory, SpaceId, UserMemory};
use uiommu_platform::pagetable::Prot;
use uiommu_platform::topology::DeviceId;
use uiommu_platform::{Iova, Platform, UserVa};

const BUF: UserVa = UserVa(0x7f00_0000_0000);
const BUF_LEN: u64 = 0x40_0000; // 4 MiB

struct World {
    engine: Arc<Engine>,
    mem: Arc<SimMemory>,
    space: SpaceId,
}

fn world_with(config: EngineConfig) -> World {
    let engine = Engine::new(Platform::builtin(), config).unwrap();
    let mem = SimMemory::new();
    mem.map(BUF, BUF_LEN, true);
    let space = engine.add_space(mem.clone());
    World { engine, mem, space }
}

fn world() -> World {
    world_with(EngineConfig::default())
}

impl World {
    fn dev(&self, name: &str) -> DeviceId {
        self.engine
            .with_platform(|p| p.topology.find_name(name))
            .unwrap_or_else(|| panic!("no {name}"))
    }
    fn open(&self) -> Context {
        self.engine.open(self.space).unwrap()
    }
    fn ok(&self) {
        if let Err(v) = self.engine.check_invariants() {
            panic!("invariants violated:\n{v}");
        }
    }
    fn group_domain(&self, dev: DeviceId) -> Option<DomainKind> {
        let g = self
            .engine
            .with_platform(|p| p.topology.device(dev).unwrap().group);
        self.engine.group_status(g).unwrap().domain
    }
}

#[test]
fn bound_unattached_device_is_blocked_and_faults_are_recorded() {
    let w = world();
    let dma0 = w.dev("dma0");
    assert_eq!(w.group_domain(dma0), Some(DomainKind::Identity));
    let ctx = w.open();
    ctx.device_bind(dma0).unwrap();
    w.ok();
    assert_eq!(w.group_domain(dma0), Some(DomainKind::Blocking));
    let mut buf = [0u8; 16];
    let f = w.engine.dma_read(dma0, Iova(0x1000), &mut buf).unwrap_err();
    assert_eq!(f.reason, FaultReason::Blocked);
    let log = w.engine.faults();
    assert!(log
        .iter()
        .any(|r| r.device == dma0 && r.iova == Iova(0x1000) && r.reason == FaultReason::Blocked));
}

#[test]
fn attach_map_and_dma_reaches_exactly_the_mapped_memory() {
    let w = world();
    let dma0 = w.dev("dma0");
    let ctx = w.open();
    let d = ctx.device_bind(dma0).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let hwpt = ctx.device_attach(d, ioas).unwrap();
    assert_eq!(ctx.device_hwpt(d).unwrap(), Some(hwpt));
    assert_eq!(w.group_domain(dma0), Some(DomainKind::Paging));
    let iova = ctx
        .ioas_map(ioas, BUF, 0x20_0000, Some(Iova(0x4000_0000)), Prot::RW)
        .unwrap();
    assert_eq!(iova, Iova(0x4000_0000));
    w.ok();
    w.engine
        .dma_write(dma0, Iova(0x4000_0123), b"through the iommu")
        .unwrap();
    let mut back = [0u8; 17];
    w.mem.read(UserVa(BUF.0 + 0x123), &mut back).unwrap();
    assert_eq!(&back, b"through the iommu");
    // Just past the mapping faults.
    let f = w
        .engine
        .dma_write(dma0, Iova(0x4020_0000), b"x")
        .unwrap_err();
    assert_eq!(f.reason, FaultReason::NotMapped);
    w.ok();
}

#[test]
fn read_only_mapping_refuses_device_writes() {
    let w = world();
    let dma0 = w.dev("dma0");
    let ctx = w.open();
    let d = ctx.device_bind(dma0).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.device_attach(d, ioas).unwrap();
    ctx.ioas_map(ioas, BUF, 0x1000, Some(Iova(0x10_0000)), Prot::RO)
        .unwrap();
    let f = w.engine.dma_write(dma0, Iova(0x10_0000), b"x").unwrap_err();
    assert_eq!(f.reason, FaultReason::Permission);
    let mut b = [0u8; 1];
    w.engine.dma_read(dma0, Iova(0x10_0000), &mut b).unwrap();
    w.ok();
}

#[test]
fn second_context_cannot_bind_a_sibling_eperm() {
    let w = world();
    let (dma1, dma2) = (w.dev("dma1"), w.dev("dma2"));
    let a = w.open();
    let b = w.open();
    a.device_bind(dma1).unwrap();
    let before = w.engine.snapshot();
    assert_eq!(b.device_bind(dma2).unwrap_err().errno(), 1);
    assert_eq!(w.engine.snapshot(), before);
    // The owner itself may bind the sibling.
    a.device_bind(dma2).unwrap();
    w.ok();
}

#[test]
fn binding_next_to_a_kernel_dma_driver_is_eperm() {
    let w = world();
    let legacy0 = w.dev("legacy0");
    let ctx = w.open();
    let before = w.engine.snapshot();
    assert_eq!(ctx.device_bind(legacy0).unwrap_err().errno(), 1);
    assert_eq!(w.engine.snapshot(), before);
    w.ok();
}

#[test]
fn dma_driver_cannot_bind_into_a_user_owned_group_ebusy() {
    let w = world();
    let (legacy0, nvme0) = (w.dev("legacy0"), w.dev("nvme0"));
    w.engine.driver_unbind(nvme0).unwrap();
    let ctx = w.open();
    ctx.device_bind(legacy0).unwrap();
    w.ok();
    let before = w.engine.snapshot();
    let e = w
        .engine
        .driver_bind(nvme0, Driver::Dma("nvme".into()))
        .unwrap_err();
    assert_eq!(e.errno(), 16);
    assert_eq!(w.engine.snapshot(), before);
    assert_eq!(
        w.engine.with_platform(|p| p.drivers.driver(nvme0).clone()),
        Driver::Unbound
    );
    // vfio-pci (driver_managed_dma) may bind there.
    w.engine.driver_bind(nvme0, Driver::VfioPci).unwrap();
    w.ok();
    // Once the context lets go, the DMA driver can come back.
    ctx.close();
    w.engine.driver_unbind(nvme0).unwrap();
    w.engine
        .driver_bind(nvme0, Driver::Dma("nvme".into()))
        .unwrap();
    w.ok();
}

#[test]
fn attach_is_group_wide_and_detach_returns_to_blocking() {
    let w = world();
    let (dma1, dma2) = (w.dev("dma1"), w.dev("dma2"));
    let ctx = w.open();
    let d1 = ctx.device_bind(dma1).unwrap();
    let _d2 = ctx.device_bind(dma2).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.ioas_map(ioas, BUF, 0x1000, Some(Iova(0x8000)), Prot::RW)
        .unwrap();
    ctx.device_attach(d1, ioas).unwrap();
    w.ok();
    // dma2 never attached, yet its group moved: it is translated by the same page table.
    w.engine.dma_write(dma2, Iova(0x8000), b"sibling").unwrap();
    ctx.device_detach(d1).unwrap();
    w.ok();
    assert_eq!(w.group_domain(dma1), Some(DomainKind::Blocking));
    assert_eq!(
        w.engine
            .dma_write(dma2, Iova(0x8000), b"x")
            .unwrap_err()
            .reason,
        FaultReason::Blocked
    );
}

#[test]
fn sibling_must_attach_to_the_same_hwpt_einval() {
    let w = world();
    let (dma1, dma2) = (w.dev("dma1"), w.dev("dma2"));
    let ctx = w.open();
    let d1 = ctx.device_bind(dma1).unwrap();
    let d2 = ctx.device_bind(dma2).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let h1 = ctx
        .hwpt_alloc_paging(d1, ioas, HwptFlags::default())
        .unwrap();
    let h2 = ctx
        .hwpt_alloc_paging(d1, ioas, HwptFlags::default())
        .unwrap();
    ctx.device_attach(d1, h1).unwrap();
    let before = w.engine.snapshot();
    assert_eq!(ctx.device_attach(d2, h2).unwrap_err().errno(), 22);
    assert_eq!(w.engine.snapshot(), before);
    ctx.device_attach(d2, h1).unwrap();
    w.ok();
}

#[test]
fn last_unbind_restores_the_default_domain_and_no_pins_remain() {
    let w = world();
    let dma0 = w.dev("dma0");
    let ctx = w.open();
    let d = ctx.device_bind(dma0).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.device_attach(d, ioas).unwrap();
    ctx.ioas_map(ioas, BUF, 0x10_0000, None, Prot::RW).unwrap();
    assert_eq!(w.engine.total_pins(), 0x100);
    w.ok();
    ctx.device_unbind(d).unwrap();
    assert_eq!(w.group_domain(dma0), Some(DomainKind::Identity));
    // The automatic HWPT went with the last device; the IOAS keeps its (now unpinned) mapping.
    assert_eq!(w.engine.total_pins(), 0);
    assert_eq!(ctx.objects().unwrap(), vec![ioas]);
    w.ok();
}

#[test]
fn closing_the_context_tears_everything_down() {
    let w = world();
    let dma0 = w.dev("dma0");
    let ctx = w.open();
    let dup = ctx.clone();
    let d = ctx.device_bind(dma0).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.device_attach(d, ioas).unwrap();
    ctx.ioas_map(ioas, BUF, 0x20_0000, None, Prot::RW).unwrap();
    assert!(w.engine.total_pins() > 0);
    assert!(w.engine.user_charged_pages() > 0);
    ctx.close();
    // A dup'd handle keeps the context alive.
    assert_eq!(dup.objects().unwrap().len(), 3);
    dup.close();
    assert_eq!(w.engine.contexts(), 0);
    assert_eq!(w.engine.total_pins(), 0);
    assert_eq!(w.engine.user_charged_pages(), 0);
    assert_eq!(w.group_domain(dma0), Some(DomainKind::Identity));
    w.ok();
}

#[test]
fn destroy_is_ebusy_while_used_and_devices_belong_to_their_driver() {
    let w = world();
    let ctx = w.open();
    let d = ctx.device_bind(w.dev("dma0")).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let hwpt = ctx.device_attach(d, ioas).unwrap();
    assert_eq!(ctx.destroy(ioas).unwrap_err().errno(), 16);
    assert_eq!(ctx.destroy(hwpt).unwrap_err().errno(), 16);
    assert_eq!(ctx.destroy(d).unwrap_err().errno(), 16);
    assert_eq!(ctx.destroy(ObjId(99)).unwrap_err().errno(), 2);
    ctx.device_detach(d).unwrap();
    // The automatic HWPT is gone with its last device; now the IOAS can go.
    assert_eq!(ctx.destroy(hwpt).unwrap_err().errno(), 2);
    ctx.destroy(ioas).unwrap();
    w.ok();
}

#[test]
fn compatible_devices_share_the_automatic_hwpt() {
    let w = world();
    let ctx = w.open();
    let a = ctx.device_bind(w.dev("dma0")).unwrap();
    let b = ctx.device_bind(w.dev("dma1")).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let ha = ctx.device_attach(a, ioas).unwrap();
    let hb = ctx.device_attach(b, ioas).unwrap();
    assert_eq!(ha, hb);
    w.ok();
}

#[test]
fn replace_moves_the_whole_group_at_once() {
    let w = world();
    let (dma1, dma2) = (w.dev("dma1"), w.dev("dma2"));
    let ctx = w.open();
    let d1 = ctx.device_bind(dma1).unwrap();
    let d2 = ctx.device_bind(dma2).unwrap();
    let ioas_a = ctx.ioas_alloc().unwrap();
    let ioas_b = ctx.ioas_alloc().unwrap();
    ctx.ioas_map(ioas_a, BUF, 0x1000, Some(Iova(0x1_0000)), Prot::RW)
        .unwrap();
    ctx.ioas_map(
        ioas_b,
        UserVa(BUF.0 + 0x1000),
        0x1000,
        Some(Iova(0x2_0000)),
        Prot::RW,
    )
    .unwrap();
    let h_a = ctx.device_attach(d1, ioas_a).unwrap();
    ctx.device_attach(d2, h_a).unwrap();
    let h_b = ctx.device_replace(d1, ioas_b).unwrap();
    assert_ne!(h_a, h_b);
    w.ok();
    assert_eq!(ctx.device_hwpt(d2).unwrap(), Some(h_b));
    assert_eq!(
        w.engine
            .dma_write(dma2, Iova(0x1_0000), b"x")
            .unwrap_err()
            .reason,
        FaultReason::NotMapped
    );
    w.engine.dma_write(dma2, Iova(0x2_0000), b"x").unwrap();
    // Replacing a device that is not attached is EINVAL.
    let d0 = ctx.device_bind(w.dev("dma0")).unwrap();
    assert_eq!(ctx.device_replace(d0, ioas_a).unwrap_err().errno(), 22);
    w.ok();
}

#[test]
fn coherency_right_lasts_only_while_a_noncoherent_device_is_attached() {
    let w = world();
    let dma0 = w.dev("dma0");
    w.engine.set_device_noncoherent(dma0, true);
    let ctx = w.open();
    let right = ctx.coherency_right();
    assert!(!right.is_active());
    let d = ctx.device_bind(dma0).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.device_attach(d, ioas).unwrap();
    assert!(right.is_active());
    let told = Arc::new(AtomicBool::new(false));
    let t = told.clone();
    right.on_revoke(move || t.store(true, Ordering::SeqCst));
    ctx.device_detach(d).unwrap();
    assert!(!right.is_active());
    assert!(told.load(Ordering::SeqCst));
    // And closing the context ends it too.
    ctx.device_attach(d, ioas).unwrap();
    assert!(right.is_active());
    ctx.close();
    assert!(!right.is_active());
}

struct Unpinner {
    pinned: Mutex<Vec<(ObjId, Iova, u64)>>,
    calls: AtomicUsize,
}

impl AccessOps for Unpinner {
    fn unmap(&self, ctx: &Context, access: ObjId, iova: Iova, len: u64) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let last = iova.0.saturating_add(len - 1);
        let mut p = self.pinned.lock().unwrap();
        p.retain(|(a, i, l)| {
            let hit = *a == access && i.0 <= last && iova.0 <= i.0 + (l - 1);
            if hit {
                ctx.access_unpin(*a, *i, *l).unwrap();
            }
            !hit
        });
    }
}

#[test]
fn access_pins_read_write_and_is_told_to_unpin_on_unmap() {
    let w = world();
    let ctx = w.open();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.ioas_map(ioas, BUF, 0x4000, Some(Iova(0x10_0000)), Prot::RW)
        .unwrap();
    assert_eq!(
        w.engine.total_pins(),
        0,
        "no domain and no access: nothing pinned"
    );
    let ops = Arc::new(Unpinner {
        pinned: Mutex::new(Vec::new()),
        calls: AtomicUsize::new(0),
    });
    let acc = ctx.access_create(ops.clone()).unwrap();
    ctx.access_attach(acc, ioas).unwrap();
    let pfns = ctx.access_pin(acc, Iova(0x10_1000), 0x2000, true).unwrap();
    assert_eq!(pfns.len(), 2);
    ops.pinned
        .lock()
        .unwrap()
        .push((acc, Iova(0x10_1000), 0x2000));
    assert_eq!(w.engine.total_pins(), 2);
    ctx.access_rw(acc, Iova(0x10_0ffe), RwBuf::Write(b"abcd"))
        .unwrap();
    let mut back = [0u8; 4];
    w.mem.read(UserVa(BUF.0 + 0xffe), &mut back).unwrap();
    assert_eq!(&back, b"abcd");
    w.ok();
    assert_eq!(
        ctx.ioas_unmap(ioas, Iova(0x10_0000), 0x4000).unwrap(),
        0x4000
    );
    assert_eq!(ops.calls.load(Ordering::SeqCst), 1);
    assert_eq!(w.engine.total_pins(), 0);
    w.ok();
    ctx.access_destroy(acc).unwrap();
    w.ok();
}

struct Stubborn;
impl AccessOps for Stubborn {
    fn unmap(&self, _: &Context, _: ObjId, _: Iova, _: u64) {}
}

/// An access that unpins only after being asked `needed` times (each `unmap` call counts).
struct Reluctant {
    needed: usize,
    asked: AtomicUsize,
    pin: Mutex<Option<(ObjId, Iova, u64)>>,
}
impl AccessOps for Reluctant {
    fn unmap(&self, ctx: &Context, id: ObjId, _: Iova, _: u64) {
        if self.asked.fetch_add(1, Ordering::SeqCst) + 1 >= self.needed {
            if let Some((acc, iova, len)) = self.pin.lock().unwrap().take() {
                assert_eq!(acc, id);
                ctx.access_unpin(acc, iova, len).unwrap();
            }
        }
    }
}

#[test]
fn an_unmap_walks_the_areas_in_order_as_the_kernel_does() {
    // Three areas, an access pinning the middle one. The walk removes the first, asks the
    // access about the middle one until it lets go (within the kernel's 100 rounds), then goes
    // on; a stubborn access stops it with EDEADLK with the areas before gone; a range that
    // cuts an area stops it with ENOENT with the areas before gone.
    let w = world();
    let ctx = w.open();
    let ioas = ctx.ioas_alloc().unwrap();
    // Three one-page areas at 0x10_0000, 0x10_1000, 0x10_2000.
    let map3 = || {
        for i in 0..3u64 {
            ctx.ioas_map(
                ioas,
                UserVa(BUF.0 + i * 0x1000),
                0x1000,
                Some(Iova(0x10_0000 + i * 0x1000)),
                Prot::RW,
            )
            .unwrap();
        }
    };
    // An access pinning the middle area that lets go at its `needed`-th ask.
    let reluctant = |needed: usize| {
        let ops = Arc::new(Reluctant {
            needed,
            asked: AtomicUsize::new(0),
            pin: Mutex::new(None),
        });
        let acc = ctx.access_create(ops.clone()).unwrap();
        ctx.access_attach(acc, ioas).unwrap();
        ctx.access_pin(acc, Iova(0x10_1000), 0x1000, false).unwrap();
        *ops.pin.lock().unwrap() = Some((acc, Iova(0x10_1000), 0x1000));
        (acc, ops)
    };
    let starts = || -> Vec<u64> {
        ctx.ioas_areas(ioas)
            .unwrap()
            .iter()
            .map(|a| a.iova.start)
            .collect()
    };
    map3();
    let (_, ops) = reluctant(100);
    assert_eq!(
        ctx.ioas_unmap(ioas, Iova(0x10_0000), 0x3000).unwrap(),
        0x3000
    );
    assert_eq!(ops.asked.load(Ordering::SeqCst), 100);
    w.ok();
    // One round more than the kernel waits: EDEADLK, the first area gone, the rest kept.
    map3();
    let (acc2, late) = reluctant(102);
    let e = ctx.ioas_unmap(ioas, Iova(0x10_0000), 0x3000).unwrap_err();
    assert_eq!(e.errno(), 35);
    assert_eq!(late.asked.load(Ordering::SeqCst), 101);
    assert_eq!(starts(), [0x10_1000, 0x10_2000]);
    w.ok();
    // Let go; a range that cuts the last area: the middle one goes, ENOENT.
    ctx.access_unpin(acc2, Iova(0x10_1000), 0x1000).unwrap();
    late.pin.lock().unwrap().take();
    let e = ctx.ioas_unmap(ioas, Iova(0x10_1000), 0x1800).unwrap_err();
    assert_eq!(e.errno(), 2);
    assert_eq!(starts(), [0x10_2000]);
    w.ok();
    ctx.close();
    assert_eq!(w.engine.total_pins(), 0);
    w.ok();
}

#[test]
fn an_access_that_keeps_its_pins_makes_unmap_fail_and_keeps_the_mapping() {
    let w = world();
    let ctx = w.open();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.ioas_map(ioas, BUF, 0x1000, Some(Iova(0x10_0000)), Prot::RW)
        .unwrap();
    let acc = ctx.access_create(Arc::new(Stubborn)).unwrap();
    ctx.access_attach(acc, ioas).unwrap();
    ctx.access_pin(acc, Iova(0x10_0000), 0x1000, false).unwrap();
    let e = ctx.ioas_unmap(ioas, Iova(0x10_0000), 0x1000).unwrap_err();
    assert_eq!(e.errno(), 35);
    assert_eq!(ctx.ioas_areas(ioas).unwrap().len(), 1);
    w.ok();
    ctx.close();
    assert_eq!(w.engine.total_pins(), 0);
    w.ok();
}

#[test]
fn pinning_over_the_memlock_limit_is_enomem_and_changes_nothing() {
    let w = world_with(EngineConfig {
        memlock_limit_pages: Some(16),
        ..Default::default()
    });
    let ctx = w.open();
    let d = ctx.device_bind(w.dev("dma0")).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.device_attach(d, ioas).unwrap();
    ctx.ioas_map(ioas, BUF, 0x1_0000, None, Prot::RW).unwrap(); // 16 pages: at the limit
    let before = w.engine.snapshot();
    let e = ctx
        .ioas_map(ioas, UserVa(BUF.0 + 0x1_0000), 0x1000, None, Prot::RW)
        .unwrap_err();
    assert_eq!(e.errno(), 12);
    assert_eq!(w.engine.snapshot(), before);
    w.ok();
}

#[test]
fn rlimit_mode_process_charges_the_process_and_needs_an_empty_context() {
    let w = world();
    let ctx = w.open();
    ctx.set_rlimit_mode_process(true).unwrap();
    assert!(ctx.rlimit_mode_process().unwrap());
    let d = ctx.device_bind(w.dev("dma0")).unwrap();
    assert_eq!(ctx.set_rlimit_mode_process(false).unwrap_err().errno(), 16);
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.device_attach(d, ioas).unwrap();
    ctx.ioas_map(ioas, BUF, 0x4000, None, Prot::RW).unwrap();
    assert_eq!(w.engine.process_charged_pages(w.space), 4);
    assert_eq!(w.engine.user_charged_pages(), 0);
    ctx.close();
    assert_eq!(w.engine.process_charged_pages(w.space), 0);
}

#[test]
fn copy_shares_pages_without_new_pins() {
    let w = world();
    let ctx = w.open();
    let d = ctx.device_bind(w.dev("dma0")).unwrap();
    let src = ctx.ioas_alloc().unwrap();
    let dst = ctx.ioas_alloc().unwrap();
    ctx.device_attach(d, src).unwrap();
    ctx.ioas_map(src, BUF, 0x8000, Some(Iova(0x100_0000)), Prot::RW)
        .unwrap();
    let pins = w.engine.total_pins();
    let d1 = ctx.device_bind(w.dev("dma1")).unwrap();
    ctx.device_attach(d1, dst).unwrap();
    let iova = ctx
        .ioas_copy(dst, src, Iova(0x100_0000), 0x8000, None, Prot::RW)
        .unwrap();
    assert_eq!(w.engine.total_pins(), pins);
    w.engine.dma_write(w.dev("dma1"), iova, b"copied").unwrap();
    let mut b = [0u8; 6];
    w.mem.read(BUF, &mut b).unwrap();
    assert_eq!(&b, b"copied");
    w.ok();
}

#[test]
fn dma_reaches_real_process_memory_and_unmapped_memory_is_efault() {
    use uiommu_platform::process_memory::ProcessMemory;
    let engine = Engine::new(Platform::builtin(), EngineConfig::default()).unwrap();
    let space = engine.add_space(Arc::new(ProcessMemory::this()));
    let ctx = engine.open(space).unwrap();
    let dma0 = engine
        .with_platform(|p| p.topology.find_name("dma0"))
        .unwrap();
    let d = ctx.device_bind(dma0).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.device_attach(d, ioas).unwrap();
    // A page-aligned window inside a real buffer of this process.
    let buf = vec![0u8; 4 * 4096];
    let base = (buf.as_ptr() as u64 + 4095) & !4095;
    ctx.ioas_map(
        ioas,
        UserVa(base),
        2 * 4096,
        Some(Iova(0x10_0000)),
        Prot::RW,
    )
    .unwrap();
    engine
        .dma_write(dma0, Iova(0x10_0010), b"real memory")
        .unwrap();
    let off = (base - buf.as_ptr() as u64) as usize + 0x10;
    assert_eq!(&buf[off..off + 11], b"real memory");
    // Pinning memory that is not mapped in the process is EFAULT, and nothing changes.
    let before = engine.snapshot();
    let e = ctx
        .ioas_map(
            ioas,
            UserVa(0x1000),
            0x1000,
            Some(Iova(0x20_0000)),
            Prot::RW,
        )
        .unwrap_err();
    assert_eq!(e.errno(), 14);
    assert_eq!(engine.snapshot(), before);
    engine.check_invariants().unwrap();
    ctx.close();
    assert_eq!(engine.total_pins(), 0);
    drop(buf);
}

#[test]
fn detaching_an_access_first_tells_its_owner_to_unpin_everything() {
    let w = world();
    let ctx = w.open();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.ioas_map(ioas, BUF, 0x2000, Some(Iova(0x10_0000)), Prot::RW)
        .unwrap();
    let ops = Arc::new(Unpinner {
        pinned: Mutex::new(Vec::new()),
        calls: AtomicUsize::new(0),
    });
    let acc = ctx.access_create(ops.clone()).unwrap();
    ctx.access_attach(acc, ioas).unwrap();
    ctx.access_pin(acc, Iova(0x10_0000), 0x1000, false).unwrap();
    ops.pinned
        .lock()
        .unwrap()
        .push((acc, Iova(0x10_0000), 0x1000));
    ctx.access_detach(acc).unwrap();
    assert_eq!(ops.calls.load(Ordering::SeqCst), 1);
    assert!(ops.pinned.lock().unwrap().is_empty());
    assert_eq!(w.engine.total_pins(), 0);
    // Unattached: pin is ENOENT, after the length checks (EINVAL for zero length).
    assert_eq!(
        ctx.access_pin(acc, Iova(0x10_0000), 0, false)
            .unwrap_err()
            .errno(),
        22
    );
    assert_eq!(
        ctx.access_pin(acc, Iova(0x10_0000), 0x1000, false)
            .unwrap_err()
            .errno(),
        2
    );
    w.ok();
}

#[test]
fn refusing_to_remove_a_built_in_device_changes_nothing() {
    let w = world();
    let dma0 = w.dev("dma0");
    let before = w.engine.snapshot();
    assert_eq!(w.engine.remove_mock_device(dma0).unwrap_err().errno(), 22);
    assert_eq!(w.engine.snapshot(), before);
    w.ok();
}
