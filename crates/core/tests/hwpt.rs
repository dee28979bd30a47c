//! Hardware page tables: explicit, automatic, nested (as the selftest mock supports them),
//! dirty tracking, and the selftest mock device and format.

use std::sync::Arc;
use uiommu_core::{Engine, EngineConfig, HwptFlags};
use uiommu_platform::devices::mock::{MOCK_FLAGS_DEVICE_HUGE_IOVA, MOCK_FLAGS_DEVICE_NO_DIRTY};
use uiommu_platform::hw::{DomainKind, FaultReason};
use uiommu_platform::memory::SimMemory;
use uiommu_platform::pagetable::Prot;
use uiommu_platform::{Iova, Platform, Range, UserVa};

const BUF: UserVa = UserVa(0x7f00_0000_0000);

fn engine() -> (Arc<Engine>, Arc<SimMemory>, uiommu_core::Context) {
    let engine = Engine::new(Platform::builtin(), EngineConfig::default()).unwrap();
    let mem = SimMemory::new();
    mem.map(BUF, 0x40_0000, true);
    let space = engine.add_space(mem.clone());
    let ctx = engine.open(space).unwrap();
    (engine, mem, ctx)
}

#[test]
fn mock_devices_get_mock_format_domains_with_the_selftest_aperture() {
    let (engine, _mem, ctx) = engine();
    let mock = engine.add_mock_device(0).unwrap();
    let d = ctx.device_bind(mock).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.device_attach(d, ioas).unwrap();
    // The aperture 16 MiB ..= 2 GiB - 1 leaves its outside reserved.
    let ranges = ctx.ioas_iova_ranges(ioas).unwrap();
    assert_eq!(
        ranges.ranges,
        vec![Range::new(1 << 24, (1 << 31) - 1).unwrap()]
    );
    // Mapping outside the aperture is refused; inside it works and the device reaches it.
    assert!(ctx
        .ioas_map(ioas, BUF, 0x1000, Some(Iova(0x1000)), Prot::RW)
        .is_err());
    let iova = ctx.ioas_map(ioas, BUF, 0x1000, None, Prot::RW).unwrap();
    assert!(iova.raw() >= 1 << 24);
    engine.dma_write(mock, iova, b"mock").unwrap();
    engine.check_invariants().unwrap();
}

#[test]
fn incompatible_devices_get_separate_automatic_hwpts_on_one_ioas() {
    let (engine, _mem, ctx) = engine();
    let mock = engine.add_mock_device(0).unwrap();
    let dma0 = engine
        .with_platform(|p| p.topology.find_name("dma0"))
        .unwrap();
    let dm = ctx.device_bind(mock).unwrap();
    let dr = ctx.device_bind(dma0).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let hm = ctx.device_attach(dm, ioas).unwrap();
    let hr = ctx.device_attach(dr, ioas).unwrap();
    assert_ne!(hm, hr, "a radix device cannot use the mock-format domain");
    // One mapping reaches both, through their own page tables.
    let iova = ctx.ioas_map(ioas, BUF, 0x2000, None, Prot::RW).unwrap();
    engine.dma_write(mock, iova, b"a").unwrap();
    engine.dma_write(dma0, iova, b"b").unwrap();
    engine.check_invariants().unwrap();
}

#[test]
fn mock_device_hotplug_refuses_bad_flags_and_bound_removal() {
    let (engine, _mem, ctx) = engine();
    assert_eq!(engine.add_mock_device(0x100).unwrap_err().errno(), 22);
    let mock = engine.add_mock_device(MOCK_FLAGS_DEVICE_HUGE_IOVA).unwrap();
    let d = ctx.device_bind(mock).unwrap();
    assert_eq!(engine.remove_mock_device(mock).unwrap_err().errno(), 16);
    ctx.device_unbind(d).unwrap();
    engine.remove_mock_device(mock).unwrap();
    engine.check_invariants().unwrap();
    let dma0 = engine
        .with_platform(|p| p.topology.find_name("dma0"))
        .unwrap();
    assert_eq!(engine.remove_mock_device(dma0).unwrap_err().errno(), 22);
}

#[test]
fn nested_hwpt_needs_a_nest_parent_and_translates_through_it() {
    let (engine, _mem, ctx) = engine();
    let mock = engine.add_mock_device(0).unwrap();
    let d = ctx.device_bind(mock).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let plain = ctx
        .hwpt_alloc_paging(d, ioas, HwptFlags::default())
        .unwrap();
    assert_eq!(
        ctx.hwpt_alloc_nested(d, plain, vec![0xbeef; 2])
            .unwrap_err()
            .errno(),
        22
    );
    let parent = ctx
        .hwpt_alloc_paging(
            d,
            ioas,
            HwptFlags {
                nest_parent: true,
                ..Default::default()
            },
        )
        .unwrap();
    let nested = ctx.hwpt_alloc_nested(d, parent, vec![0xbeef; 2]).unwrap();
    ctx.device_attach(d, nested).unwrap();
    let g = engine.with_platform(|p| p.topology.device(mock).unwrap().group);
    assert_eq!(
        engine.group_status(g).unwrap().domain,
        Some(DomainKind::Nested)
    );
    let iova = ctx.ioas_map(ioas, BUF, 0x1000, None, Prot::RW).unwrap();
    engine.dma_write(mock, iova, b"nested").unwrap();
    // The stage-1 data is there for invalidation.
    let mut seen = Vec::new();
    ctx.hwpt_nested_data(nested, &mut |d| {
        seen = d.clone();
        d[0] = 0;
    })
    .unwrap();
    assert_eq!(seen, vec![0xbeef, 0xbeef]);
    // The parent cannot go while the nested HWPT uses it; the nested one not while attached.
    assert_eq!(ctx.destroy(parent).unwrap_err().errno(), 16);
    assert_eq!(ctx.destroy(nested).unwrap_err().errno(), 16);
    ctx.device_detach(d).unwrap();
    ctx.destroy(nested).unwrap();
    ctx.destroy(parent).unwrap();
    engine.check_invariants().unwrap();
}

#[test]
fn dirty_tracking_reports_device_writes_and_clears() {
    let (engine, _mem, ctx) = engine();
    let dma0 = engine
        .with_platform(|p| p.topology.find_name("dma0"))
        .unwrap();
    let d = ctx.device_bind(dma0).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let h = ctx
        .hwpt_alloc_paging(
            d,
            ioas,
            HwptFlags {
                dirty_tracking: true,
                ..Default::default()
            },
        )
        .unwrap();
    ctx.device_attach(d, h).unwrap();
    ctx.ioas_map(ioas, BUF, 0x4000, Some(Iova(0x10_0000)), Prot::RW)
        .unwrap();
    ctx.hwpt_set_dirty_tracking(h, true).unwrap();
    engine.dma_write(dma0, Iova(0x10_2010), b"dirty").unwrap();
    let mut dirty = Vec::new();
    ctx.hwpt_read_dirty(h, Iova(0x10_0000), 0x4000, false, &mut |i| dirty.push(i))
        .unwrap();
    assert_eq!(dirty, vec![Iova(0x10_2000)]);
    dirty.clear();
    ctx.hwpt_read_dirty(h, Iova(0x10_0000), 0x4000, false, &mut |i| dirty.push(i))
        .unwrap();
    assert!(dirty.is_empty(), "reading cleared the marks");
}

#[test]
fn dirty_tracking_on_a_no_dirty_mock_device_is_eopnotsupp() {
    let (engine, _mem, ctx) = engine();
    let mock = engine.add_mock_device(MOCK_FLAGS_DEVICE_NO_DIRTY).unwrap();
    let d = ctx.device_bind(mock).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let e = ctx
        .hwpt_alloc_paging(
            d,
            ioas,
            HwptFlags {
                dirty_tracking: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.errno(), 95);
}

#[test]
fn unbound_device_dma_goes_through_the_identity_domain() {
    let (engine, _mem, _ctx) = engine();
    let dma0 = engine
        .with_platform(|p| p.topology.find_name("dma0"))
        .unwrap();
    // Identity: IOVA = physical address; nothing is pinned there, so the access faults on memory.
    let f = engine.dma_write(dma0, Iova(0x1000), b"x").unwrap_err();
    assert_eq!(f.reason, FaultReason::BadPhysical);
}

#[test]
fn dirty_operations_need_a_hwpt_allocated_for_dirty_tracking() {
    let (engine, _mem, ctx) = engine();
    let mock = engine.add_mock_device(0).unwrap();
    let no_dirty = engine.add_mock_device(MOCK_FLAGS_DEVICE_NO_DIRTY).unwrap();
    let d = ctx.device_bind(mock).unwrap();
    let nd = ctx.device_bind(no_dirty).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let plain = ctx
        .hwpt_alloc_paging(d, ioas, HwptFlags::default())
        .unwrap();
    assert_eq!(
        ctx.hwpt_set_dirty_tracking(plain, true)
            .unwrap_err()
            .errno(),
        95
    );
    assert_eq!(
        ctx.hwpt_read_dirty(plain, Iova(1 << 24), 0x1000, false, &mut |_| {})
            .unwrap_err()
            .errno(),
        95
    );
    let tracked = ctx
        .hwpt_alloc_paging(
            d,
            ioas,
            HwptFlags {
                dirty_tracking: true,
                ..Default::default()
            },
        )
        .unwrap();
    // A device that cannot track dirty pages cannot use a page table that does.
    assert_eq!(ctx.device_attach(nd, tracked).unwrap_err().errno(), 22);
    ctx.device_attach(d, tracked).unwrap();
    let iova = ctx.ioas_map(ioas, BUF, 0x2000, None, Prot::RW).unwrap();
    ctx.hwpt_set_dirty_tracking(tracked, true).unwrap();
    engine.dma_write(mock, iova, b"x").unwrap();
    // Turning tracking off and on again starts from a clean slate.
    ctx.hwpt_set_dirty_tracking(tracked, false).unwrap();
    ctx.hwpt_set_dirty_tracking(tracked, true).unwrap();
    let mut dirty = Vec::new();
    ctx.hwpt_read_dirty(tracked, iova, 0x2000, false, &mut |i| dirty.push(i))
        .unwrap();
    assert!(dirty.is_empty(), "{dirty:?}");
    engine.check_invariants().unwrap();
}

#[test]
fn vfio_compat_ioas_get_without_one_is_enodev() {
    let (_engine, _mem, ctx) = engine();
    assert_eq!(ctx.vfio_ioas().unwrap_err().errno(), 19);
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.set_vfio_ioas(Some(ioas)).unwrap();
    assert_eq!(ctx.vfio_ioas().unwrap(), ioas);
}
