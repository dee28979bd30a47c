//! What the kernel's iommufd selftest (`IOMMU_TEST_CMD`, `drivers/iommu/iommufd/selftest.c`)
//! needs from the engine beyond the ordinary operations.
//!
//! - **Mock domains.** [`Context::mock_domain`] hot-plugs a selftest mock device, binds it into
//!   the context and attaches it to an IOAS or HWPT, all under one lock. It creates a
//!   *selftest object* ([`crate::ObjType::Selftest`], the kernel's `IOMMUFD_OBJ_SELFTEST`)
//!   whose id is taken first, so ids come out in the kernel's order: selftest object, device,
//!   then the automatic HWPT if one is made. Userspace destroys the selftest object with
//!   IOMMU_DESTROY to unplug the device: detach, unbind, hot-remove. Closing the context does the
//!   same, before any device is unbound. The device object itself stays undestroyable (its
//!   "driver", the selftest object, holds it).
//! - **Checks on the mock page table and on pins**: [`Context::md_check_map`] (every granule
//!   translates to the frame of the user page) and [`Context::md_check_refs`] (the pin count of
//!   each user page).
//! - **Dirty marks** set directly in a mock domain ([`Context::mock_set_dirty`]).
//! - **Reserved IOVA** ([`Context::ioas_add_reserved`]) and access objects that do not pin
//!   ([`Context::access_create_with`]).
//!
//! Every operation checks before it changes anything; a refused call leaves the state as it was.

use crate::access::{AccessObj, AccessOps};
use crate::device::{bind, change_pt, unbind};
use crate::engine::{ioas_mut, Context, State};
use crate::error::{Error, Result};
use crate::group::CtxId;
use crate::io_pagetable::ReserveOwner;
use crate::object::ObjId;
use crate::Object;
use std::sync::Arc;
use uiommu_platform::memory::FrameTable;
use uiommu_platform::pagetable::mock::MOCK_IO_PAGE_SIZE;
use uiommu_platform::pagetable::PageTableFormat;
use uiommu_platform::topology::{DeviceId, ModelKind};
use uiommu_platform::{Iova, Range, UserVa, PAGE_SIZE};

/// A selftest object: the mock device it plugged in and the device object that binds it.
#[derive(Debug)]
pub(crate) struct SelftestObj {
    /// The device object (bound, attached).
    pub idev: ObjId,
    /// The hot-plugged mock device.
    pub dev: DeviceId,
}

/// What IOMMU_TEST_OP_MOCK_DOMAIN created.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MockDomain {
    /// The selftest object (destroy it to unplug the device).
    pub stdev: ObjId,
    /// The bound device object.
    pub idev: ObjId,
    /// The HWPT the device is attached to (an automatic one when attached to an IOAS).
    pub hwpt: ObjId,
}

/// Hot-add a mock device with `flags` in a group of its own (EINVAL for unknown flags).
fn add_mock(st: &mut State, flags: u32) -> Result<DeviceId> {
    let dev = st
        .platform
        .add_mock_device_with_flags(flags)
        .ok_or(Error::Invalid("unknown mock device flags"))?;
    let gid = match st.platform.topology.device(dev) {
        Some(d) => d.group,
        None => return Err(Error::NoDevice("mock device")),
    };
    let State {
        groups, platform, ..
    } = st;
    groups.ensure(platform, gid);
    Ok(dev)
}

/// Hot-remove a mock device nobody has bound any more. Never fails.
fn remove_mock(st: &mut State, dev: DeviceId) {
    let Some(pdev) = st.platform.topology.device(dev) else {
        return;
    };
    if pdev.model != ModelKind::Mock || crate::device::device_in_use(st, dev) {
        return;
    }
    let (gid, rids) = (pdev.group, pdev.rids.clone());
    if !st.platform.remove_device(dev) {
        return;
    }
    for rid in rids {
        let _ = st.platform.iommu.set_context(rid, None);
    }
    st.groups.forget(gid);
}

/// Plug, bind and attach a mock device; undone completely on failure.
fn plug(st: &mut State, c: CtxId, flags: u32, pt: ObjId) -> Result<(DeviceId, ObjId, ObjId)> {
    let dev = add_mock(st, flags)?;
    let idev = match bind(st, c, dev) {
        Ok(id) => id,
        Err(e) => {
            remove_mock(st, dev);
            return Err(e);
        }
    };
    match change_pt(st, c, idev, pt, false) {
        Ok(hwpt) => Ok((dev, idev, hwpt)),
        Err(e) => {
            let _ = unbind(st, c, idev);
            remove_mock(st, dev);
            Err(e)
        }
    }
}

/// IOMMU_DESTROY of a selftest object (or its share of closing the context): detach and
/// unbind its device, unplug the mock device.
pub(crate) fn destroy_selftest(st: &mut State, c: CtxId, id: ObjId) {
    let Ok(ctx) = st.ctx_mut(c) else { return };
    let Ok(Object::Selftest(s)) = ctx.objects.remove(id) else {
        return;
    };
    let _ = unbind(st, c, s.idev);
    remove_mock(st, s.dev);
}

/// The mock paging domain of HWPT `hwpt`: ENOENT when it is not a paging HWPT, EINVAL when
/// its domain is not of the mock format (the kernel's `get_md_pagetable`).
fn mock_paging_domain(st: &State, c: CtxId, hwpt: ObjId) -> Result<uiommu_platform::hw::DomainId> {
    match st.ctx(c)?.objects.get(hwpt)? {
        Object::HwptPaging(h) if h.format == PageTableFormat::Mock => Ok(h.domain),
        Object::HwptPaging(_) => Err(Error::Invalid("not a mock domain")),
        _ => Err(Error::WrongType {
            id: hwpt.0,
            expected: "a paging HWPT",
        }),
    }
}

/// EFAULT unless the pages of `[uva, uva + len)` are present in the context's memory (the
/// kernel's `get_user_pages_fast` of each page).
fn probe_user(st: &State, c: CtxId, uva: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let space = st.ctx(c)?.space;
    let mem = st.platform.memory.space(space).ok_or(Error::Fault(uva))?;
    let start = uva & !(PAGE_SIZE - 1);
    let end = uva
        .checked_add(len)
        .and_then(|e| e.checked_add(PAGE_SIZE - 1))
        .ok_or(Error::Fault(uva))?
        & !(PAGE_SIZE - 1);
    mem.probe(UserVa(start), end - start, false)
        .map_err(|_| Error::Fault(uva))
}

impl Context {
    /// IOMMU_TEST_OP_MOCK_DOMAIN(_FLAGS): plug a mock device with `dev_flags`
    /// (`MOCK_FLAGS_DEVICE_*`; EINVAL for others), bind it and attach it to `pt` (an IOAS or a
    /// HWPT). The selftest object's id is taken first, then the device's, then an automatic
    /// HWPT's. On failure nothing stays.
    pub fn mock_domain(&self, dev_flags: u32, pt: ObjId) -> Result<MockDomain> {
        self.with(|st, c| {
            let stdev = st.ctx_mut(c)?.objects.reserve()?;
            match plug(st, c, dev_flags, pt) {
                Ok((dev, idev, hwpt)) => {
                    st.ctx_mut(c)?
                        .objects
                        .finalize(stdev, Object::Selftest(SelftestObj { idev, dev }));
                    Ok(MockDomain { stdev, idev, hwpt })
                }
                Err(e) => {
                    if let Ok(ctx) = st.ctx_mut(c) {
                        ctx.objects.abort(stdev);
                    }
                    Err(e)
                }
            }
        })
    }

    /// IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: move the selftest object's device to `pt` (ENOENT
    /// when `stdev` is not a selftest object); returns the HWPT now attached.
    pub fn mock_domain_replace(&self, stdev: ObjId, pt: ObjId) -> Result<ObjId> {
        self.with(|st, c| {
            let idev = self.selftest_idev_in(st, c, stdev)?;
            change_pt(st, c, idev, pt, true)
        })
    }

    /// The device object of selftest object `stdev` (ENOENT when it is not one).
    pub fn selftest_device(&self, stdev: ObjId) -> Result<ObjId> {
        self.with(|st, c| self.selftest_idev_in(st, c, stdev))
    }

    fn selftest_idev_in(&self, st: &State, c: CtxId, stdev: ObjId) -> Result<ObjId> {
        match st.ctx(c)?.objects.get(stdev)? {
            Object::Selftest(s) => Ok(s.idev),
            _ => Err(Error::WrongType {
                id: stdev.0,
                expected: "a selftest object",
            }),
        }
    }

    /// IOMMU_TEST_OP_ADD_RESERVED: reserve `[start, last]` in IOAS `ioas` (ENOENT; EADDRINUSE
    /// when it meets a mapping or an allowed range).
    pub fn ioas_add_reserved(&self, ioas: ObjId, start: u64, last: u64) -> Result<()> {
        let range = Range::new(start, last).ok_or(Error::Invalid("empty range"))?;
        self.with(|st, c| {
            ioas_mut(st, c, ioas)?
                .iopt
                .reserve(range, ReserveOwner::Other(0))
        })
    }

    /// IOMMU_TEST_OP_MD_CHECK_MAP: whether each 2 KiB granule of `[iova, iova + len)` in the
    /// mock domain of paging HWPT `hwpt` translates to the frame that holds the matching byte
    /// of `[uva, uva + len)` ([`FrameTable::frame_of`] of the context's memory). ENOENT when
    /// `hwpt` is not a paging HWPT, EINVAL when not a mock domain or `iova`/`len`/`uva` are not
    /// granule multiples, EFAULT when the user pages are absent. `Ok(false)`: a granule is
    /// unmapped or maps elsewhere.
    pub fn md_check_map(&self, hwpt: ObjId, iova: u64, len: u64, uva: u64) -> Result<bool> {
        let g = MOCK_IO_PAGE_SIZE;
        if !iova.is_multiple_of(g)
            || !len.is_multiple_of(g)
            || !uva.is_multiple_of(g)
            || uva.checked_add(len).is_none()
        {
            return Err(Error::Invalid("not aligned to the mock granule"));
        }
        self.with(|st, c| {
            let domain = mock_paging_domain(st, c, hwpt)?;
            probe_user(st, c, uva, len)?;
            let space = st.ctx(c)?.space;
            let Some(pt) = st.platform.iommu.page_table(domain) else {
                return Ok(false);
            };
            let mut off = 0;
            while off < len {
                let (Some(cur), Some(va)) = (iova.checked_add(off), uva.checked_add(off)) else {
                    return Ok(false);
                };
                let Some(frame) = FrameTable::frame_of(space, UserVa(va)) else {
                    return Ok(false);
                };
                let expected = frame.addr().0 + va % PAGE_SIZE;
                match pt.translate(Iova(cur)) {
                    Some(t) if t.pa.0 == expected => {}
                    _ => return Ok(false),
                }
                off += g;
            }
            Ok(true)
        })
    }

    /// IOMMU_TEST_OP_MD_CHECK_REFS: whether every 4 KiB page of `[uva, uva + len)` of the
    /// context's memory is pinned exactly `refs` times (the kernel compares the page's pin
    /// count, `page_ref_count / GUP_PIN_COUNTING_BIAS`). EINVAL when `uva` or `len` is not page
    /// aligned or the range wraps, EFAULT when a page is absent.
    pub fn md_check_refs(&self, uva: u64, len: u64, refs: u32) -> Result<bool> {
        if !uva.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || uva.checked_add(len).is_none()
        {
            return Err(Error::Invalid("not page aligned"));
        }
        self.with(|st, c| {
            probe_user(st, c, uva, len)?;
            let space = st.ctx(c)?.space;
            let frames = &st.platform.memory.frames;
            let mut off = 0;
            while off < len {
                if frames.pin_count(space, UserVa(uva + off)) != refs {
                    return Ok(false);
                }
                off += PAGE_SIZE;
            }
            Ok(true)
        })
    }

    /// The first check of IOMMU_TEST_OP_DIRTY: `hwpt` is a paging HWPT (ENOENT) with a mock
    /// domain (EINVAL) whose dirty tracking is on (EINVAL).
    pub fn mock_dirty_ready(&self, hwpt: ObjId) -> Result<()> {
        self.with(|st, c| {
            let domain = mock_paging_domain(st, c, hwpt)?;
            match st.platform.iommu.page_table(domain) {
                Some(pt) if pt.dirty_tracking() => Ok(()),
                _ => Err(Error::Invalid("dirty tracking is off")),
            }
        })
    }

    /// IOMMU_TEST_OP_DIRTY: set the dirty mark of the mock granule at each IOVA of `iovas`
    /// that is mapped; returns how many were. Checks as [`Context::mock_dirty_ready`].
    ///
    /// The marks are set with [`uiommu_platform::pagetable::PageTable::mark_dirty`], which
    /// sets exactly the granule's mark (as `MockPageTable::set_dirty_granule` does) while
    /// tracking is on — and the op refuses when tracking is off.
    pub fn mock_set_dirty(&self, hwpt: ObjId, iovas: &[u64]) -> Result<u64> {
        self.with(|st, c| {
            let domain = mock_paging_domain(st, c, hwpt)?;
            let pt = st
                .platform
                .iommu
                .page_table_mut(domain)
                .ok_or(Error::Invalid("no page table"))?;
            if !pt.dirty_tracking() {
                return Err(Error::Invalid("dirty tracking is off"));
            }
            let mut count = 0;
            for &iova in iovas {
                if pt.translate(Iova(iova)).is_some() {
                    pt.mark_dirty(Iova(iova));
                    count += 1;
                }
            }
            Ok(count)
        })
    }

    /// Create an access object whose owner pins pages (`needs_pin_pages`: IOVAs of its IOAS
    /// must then be page aligned) or only reads and writes; returns its id. As
    /// [`Context::access_create`] otherwise.
    pub fn access_create_with(
        &self,
        ops: Arc<dyn AccessOps>,
        needs_pin_pages: bool,
    ) -> Result<ObjId> {
        self.with(|st, c| {
            let ctx = st.ctx_mut(c)?;
            let id = ctx.objects.insert(Object::Access(AccessObj {
                ioas: None,
                ops,
                needs_pin_pages,
            }))?;
            ctx.objects.get_user(id);
            Ok(id)
        })
    }

    /// The IOAS an access is attached to (ENOENT when `access` is not an access).
    pub fn access_ioas(&self, access: ObjId) -> Result<Option<ObjId>> {
        self.with(|st, c| match st.ctx(c)?.objects.get(access)? {
            Object::Access(a) => Ok(a.ioas),
            _ => Err(Error::WrongType {
                id: access.0,
                expected: "an access",
            }),
        })
    }
}
