//! The project's own `fail-nth` sweep (issue 15, part 1): each scenario runs on a fresh engine
//! once per fault-injection site it passes, with the n-th site failing
//! ([`uiommu_platform::fault_inject`], every facility counting). After each failure: the
//! scenario's refusal is the failed site's errno (ENOMEM here: the engine's API has no user
//! copies), the invariant checker finds nothing, and once the failed run's contexts are closed
//! nothing is pinned or charged and no context is left; the same scenario then completes on
//! the same engine, and leaves nothing either. The sweep ends at the first n the scenario
//! outlasts, having failed each counted site once.

use std::sync::Arc;
use uiommu_core::{AccessOps, Context, Engine, EngineConfig, Error, HwptFlags, ObjId, RwBuf};
use uiommu_platform::fault_inject::{sites_of, with_count, Knobs};
use uiommu_platform::memory::{SimMemory, SpaceId};
use uiommu_platform::pagetable::Prot;
use uiommu_platform::topology::DeviceId;
use uiommu_platform::{Iova, Platform, UserVa, PAGE_SIZE};

const BUF: u64 = 0x7f00_0000_0000;
const PAGES: u64 = 64;

struct World {
    engine: Arc<Engine>,
    space: SpaceId,
    dev: DeviceId,
}

fn world() -> World {
    let engine = Engine::new(Platform::builtin(), EngineConfig::default()).unwrap();
    let mem = SimMemory::new();
    mem.map(UserVa(BUF), PAGES * PAGE_SIZE, true);
    let space = engine.add_space(mem);
    let dev = engine
        .with_platform(|p| p.topology.find_name("dma0"))
        .expect("the built-in platform's dma0");
    World { engine, space, dev }
}

/// Unpins whatever it is told about (an access that cooperates with unmaps).
struct Cooperative;
impl AccessOps for Cooperative {
    fn unmap(&self, ctx: &Context, access: ObjId, iova: Iova, len: u64) {
        let _ = ctx.access_unpin(access, iova, len);
    }
}

type Scenario = fn(&World, &mut Vec<Context>) -> Result<(), Error>;

/// IOAS life: allow IOVAs, map fixed and automatic, copy, ranges, unmap, unmap-all, destroy.
fn ioas_life(w: &World, ctxs: &mut Vec<Context>) -> Result<(), Error> {
    let c = w.engine.open(w.space)?;
    ctxs.push(c.clone());
    let a = c.ioas_alloc()?;
    let b = c.ioas_alloc()?;
    c.ioas_allow_iovas(
        a,
        &[uiommu_platform::Range::new(0x10_0000, 0x1fff_ffff).unwrap()],
    )?;
    let fixed = c.ioas_map(
        a,
        UserVa(BUF),
        8 * PAGE_SIZE,
        Some(Iova(0x20_0000)),
        Prot::RW,
    )?;
    let auto = c.ioas_map(
        a,
        UserVa(BUF + 16 * PAGE_SIZE),
        4 * PAGE_SIZE,
        None,
        Prot::RW,
    )?;
    c.ioas_copy(b, a, fixed, 8 * PAGE_SIZE, None, Prot::RW)?;
    c.ioas_iova_ranges(a)?;
    c.ioas_unmap(a, auto, 4 * PAGE_SIZE)?;
    c.ioas_unmap_all(a)?;
    c.destroy(a)?;
    Ok(())
}

/// A device's DMA path: bind, attach to an IOAS (an automatic domain), map (pins, the domain's
/// page table), DMA, a paging HWPT and a replace onto it, detach, unbind.
fn device_dma(w: &World, ctxs: &mut Vec<Context>) -> Result<(), Error> {
    let c = w.engine.open(w.space)?;
    ctxs.push(c.clone());
    let ioas = c.ioas_alloc()?;
    let idev = c.device_bind(w.dev)?;
    c.device_attach(idev, ioas)?;
    let iova = c.ioas_map(
        ioas,
        UserVa(BUF),
        16 * PAGE_SIZE,
        Some(Iova(0x100_0000)),
        Prot::RW,
    )?;
    let mut b = [0u8; 64];
    w.engine
        .dma_read(w.dev, iova, &mut b)
        .map_err(|_| Error::Fault(iova.0))?;
    let hwpt = c.hwpt_alloc_paging(idev, ioas, HwptFlags::default())?;
    c.device_replace(idev, hwpt)?;
    c.ioas_map(
        ioas,
        UserVa(BUF + 32 * PAGE_SIZE),
        8 * PAGE_SIZE,
        None,
        Prot::RW,
    )?;
    c.device_detach(idev)?;
    c.destroy(hwpt)?;
    c.device_unbind(idev)?;
    Ok(())
}

/// An access object: create, attach, pin, read and write, unpin, a mock domain beside it.
fn access_pins(w: &World, ctxs: &mut Vec<Context>) -> Result<(), Error> {
    let c = w.engine.open(w.space)?;
    ctxs.push(c.clone());
    let ioas = c.ioas_alloc()?;
    let md = c.mock_domain(0, ioas)?;
    let iova = c.ioas_map(
        ioas,
        UserVa(BUF),
        8 * PAGE_SIZE,
        Some(Iova(0x100_0000)),
        Prot::RW,
    )?;
    let acc = c.access_create(Arc::new(Cooperative))?;
    c.access_attach(acc, ioas)?;
    c.access_pin(acc, iova, 4 * PAGE_SIZE, true)?;
    let mut b = [0u8; 100];
    c.access_rw(acc, Iova(iova.0 + 10), RwBuf::Read(&mut b))?;
    c.access_rw(acc, Iova(iova.0 + 4000), RwBuf::Write(&b))?;
    c.access_unpin(acc, iova, 4 * PAGE_SIZE)?;
    c.ioas_unmap_all(ioas)?;
    c.access_destroy(acc)?;
    c.destroy(md.stdev)?;
    Ok(())
}

fn close_all(ctxs: Vec<Context>) {
    for c in ctxs {
        c.close();
    }
}

/// Sweep `s`: returns how many sites it failed.
fn sweep(name: &str, s: Scenario) -> u32 {
    let (clean, sites) = {
        let w = world();
        let mut ctxs = Vec::new();
        let (r, n) = sites_of(Knobs::ALL, || s(&w, &mut ctxs));
        close_all(ctxs);
        (r, n)
    };
    clean.unwrap_or_else(|e| panic!("{name} fails without faults: {e}"));
    let mut n = 1u32;
    loop {
        let w = world();
        let mut ctxs = Vec::new();
        let (r, out) = with_count(n, Knobs::ALL, || s(&w, &mut ctxs));
        let Some(site) = out.fired else {
            r.unwrap_or_else(|e| panic!("{name}: the count outlasted it, yet it failed: {e}"));
            break;
        };
        if let Err(e) = &r {
            assert_eq!(
                e.errno(),
                site.errno(),
                "{name}, site {n} ({site:?}): refused with {e}"
            );
        }
        if let Err(v) = w.engine.check_invariants() {
            panic!("{name}, site {n} ({site:?}): invariants violated:\n{v}");
        }
        close_all(ctxs);
        let left = |when: &str| {
            assert_eq!(
                w.engine.total_pins(),
                0,
                "{name}, site {n}: pins left {when}"
            );
            assert_eq!(
                w.engine.user_charged_pages(),
                0,
                "{name}, site {n}: charge left {when}"
            );
            assert_eq!(
                w.engine.contexts(),
                0,
                "{name}, site {n}: contexts left {when}"
            );
            if let Err(v) = w.engine.check_invariants() {
                panic!("{name}, site {n}: invariants violated {when}:\n{v}");
            }
        };
        left("after the failure's contexts closed");
        // The engine stays usable: the scenario completes now.
        let mut again = Vec::new();
        s(&w, &mut again).unwrap_or_else(|e| panic!("{name} after site {n}: {e}"));
        close_all(again);
        left("after it ran again");
        n += 1;
        assert!(n < 10_000, "{name}: no end to its sites");
    }
    assert_eq!(
        n - 1,
        sites,
        "{name}: the sweep failed each counted site once"
    );
    println!("{name}: {sites} sites failed in turn");
    sites
}

#[test]
fn every_site_of_the_ioas_life_fails_cleanly() {
    assert!(sweep("ioas_life", ioas_life) >= 8);
}

#[test]
fn every_site_of_a_devices_dma_path_fails_cleanly() {
    assert!(sweep("device_dma", device_dma) >= 8);
}

#[test]
fn every_site_of_an_access_fails_cleanly() {
    assert!(sweep("access_pins", access_pins) >= 8);
}
