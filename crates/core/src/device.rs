//! Devices in a security context, and the hardware page tables they attach to.
//!
//! - **Bind** claims the device's whole group for the context (EPERM if another context or a
//!   kernel DMA driver uses it); the group sits in the blocking domain until an attach.
//! - **Attach** to an IOAS picks an automatic paging HWPT of that IOAS the device is compatible
//!   with, or creates one; attach to a HWPT uses it. The first device of a group to attach moves
//!   the whole group's hardware to the HWPT's domain; every other bound device of the group must
//!   attach to the same HWPT (EINVAL otherwise) and is translated by it even before it does.
//! - **Replace** moves the whole group to another page table in one step; on failure nothing
//!   changes.
//! - **Detach**: when the last attached device of the group detaches, the group returns to the
//!   blocking domain — never to the default domain.
//! - **Unbind** detaches first; the last unbind in the group returns it to its default domain.
//! - An automatic HWPT is destroyed when its last device leaves.

use crate::engine::{ioas_in, Context, State};
use crate::error::{Error, Result};
use crate::group::CtxId;
use crate::io_pagetable::PtEnv;
use crate::object::ObjId;
use crate::Object;
use uiommu_platform::hw::{DomainId, DomainSpec};
use uiommu_platform::pagetable::mock::MockPageTable;
use uiommu_platform::pagetable::radix::RadixPageTable;
use uiommu_platform::pagetable::{PageTable, PageTableFormat};
use uiommu_platform::topology::{DeviceId, GroupId, ModelKind};

/// A device bound into a context.
#[derive(Debug)]
pub(crate) struct DeviceObj {
    pub dev: DeviceId,
    pub group: GroupId,
    /// The HWPT this device is attached to.
    pub attached: Option<ObjId>,
    /// IOPF state while I/O page faults are on (attached to a HWPT with a fault object).
    pub iopf: Option<crate::fault::IopfParam>,
}

/// A paging HWPT: a paging domain filled from an IOAS.
#[derive(Debug)]
pub(crate) struct HwptPaging {
    pub ioas: ObjId,
    pub domain: DomainId,
    pub format: PageTableFormat,
    /// Created by attach-to-IOAS, destroyed when its last device leaves.
    pub auto: bool,
    pub nest_parent: bool,
    pub dirty_capable: bool,
    /// Allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING (has dirty-tracking operations).
    pub dirty_ops: bool,
    pub enforce_cc: bool,
    /// The fault object page faults are reported to (held as a user).
    pub fault: Option<ObjId>,
}

/// A nested HWPT: a stage-1 over a paging parent.
#[derive(Debug)]
pub(crate) struct HwptNested {
    pub parent: ObjId,
    pub domain: DomainId,
    pub format: PageTableFormat,
    /// The fault object page faults are reported to (held as a user).
    pub fault: Option<ObjId>,
}

/// Flags of IOMMU_HWPT_ALLOC.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct HwptFlags {
    /// IOMMU_HWPT_ALLOC_NEST_PARENT: the HWPT may be the parent of nested HWPTs.
    pub nest_parent: bool,
    /// IOMMU_HWPT_ALLOC_DIRTY_TRACKING: the domain must support dirty tracking.
    pub dirty_tracking: bool,
}

/// The page-table format a device's IOMMU uses.
fn device_format(st: &State, dev: DeviceId) -> PageTableFormat {
    match st.platform.topology.device(dev).map(|d| d.model) {
        Some(ModelKind::Mock) => PageTableFormat::Mock,
        _ => PageTableFormat::Radix,
    }
}

fn new_page_table(st: &State, dev: DeviceId) -> Box<dyn PageTable> {
    match device_format(st, dev) {
        PageTableFormat::Mock => {
            let huge = st.platform.mock_flags(dev)
                & uiommu_platform::devices::mock::MOCK_FLAGS_DEVICE_HUGE_IOVA
                != 0;
            if huge {
                Box::new(MockPageTable::new_huge_iova())
            } else {
                Box::new(MockPageTable::new())
            }
        }
        PageTableFormat::Radix => Box::new(RadixPageTable::new()),
    }
}

fn dirty_capable(st: &State, dev: DeviceId) -> bool {
    match device_format(st, dev) {
        PageTableFormat::Mock => {
            st.platform.mock_flags(dev) & uiommu_platform::devices::mock::MOCK_FLAGS_DEVICE_NO_DIRTY
                == 0
        }
        PageTableFormat::Radix => true,
    }
}

/// Whether a context holds `dev` bound.
pub(crate) fn device_in_use(st: &State, dev: DeviceId) -> bool {
    st.ctxs.values().any(|c| {
        c.objects
            .iter()
            .any(|(_, o)| matches!(o, Object::Device(d) if d.dev == dev))
    })
}

pub(crate) fn device_obj(st: &State, c: CtxId, id: ObjId) -> Result<&DeviceObj> {
    match st.ctx(c)?.objects.get(id)? {
        Object::Device(d) => Ok(d),
        _ => Err(Error::WrongType {
            id: id.0,
            expected: "a device",
        }),
    }
}

/// The domain and format of a HWPT object (paging or nested).
fn hwpt_domain(st: &State, c: CtxId, id: ObjId) -> Result<(DomainId, PageTableFormat, bool)> {
    match st.ctx(c)?.objects.get(id)? {
        Object::HwptPaging(h) => Ok((h.domain, h.format, h.enforce_cc)),
        Object::HwptNested(h) => Ok((h.domain, h.format, false)),
        _ => Err(Error::WrongType {
            id: id.0,
            expected: "a HWPT",
        }),
    }
}

/// Bind `dev` into context `c`.
pub(crate) fn bind(st: &mut State, c: CtxId, dev: DeviceId) -> Result<ObjId> {
    st.ctx(c)?;
    let pdev = st
        .platform
        .topology
        .device(dev)
        .ok_or(Error::NoDevice("no such device"))?;
    let group = pdev.group;
    let is_mock = pdev.model == ModelKind::Mock;
    if !is_mock && !st.platform.drivers.driver(dev).driver_managed_dma() {
        return Err(Error::NoDevice("the device is not bound to vfio-pci"));
    }
    if device_in_use(st, dev) {
        return Err(Error::Busy(
            "the device is already bound to a security context",
        ));
    }
    let State {
        groups,
        platform,
        ctxs,
        ..
    } = st;
    groups.claim(platform, group, c)?;
    let ctx = ctxs
        .get_mut(&c)
        .ok_or(Error::NoDevice("the context is closed"))?;
    match ctx.objects.insert(Object::Device(DeviceObj {
        dev,
        group,
        attached: None,
        iopf: None,
    })) {
        Ok(id) => {
            // The binding driver holds the device until unbind: DESTROY sees it in use.
            ctx.objects.get_user(id);
            Ok(id)
        }
        Err(e) => {
            groups.release(platform, group);
            Err(e)
        }
    }
}

/// Attach (or, with `replace`, replace) a device to an IOAS or HWPT; returns the HWPT id.
pub(crate) fn change_pt(
    st: &mut State,
    c: CtxId,
    dev_id: ObjId,
    pt_id: ObjId,
    replace: bool,
) -> Result<ObjId> {
    let d = device_obj(st, c, dev_id)?;
    let (dev, group, attached) = (d.dev, d.group, d.attached);
    if !replace && attached.is_some() {
        return Err(Error::Invalid("the device is already attached"));
    }
    if replace && attached.is_none() {
        return Err(Error::Invalid("the device is not attached"));
    }
    match st.ctx(c)?.objects.get(pt_id)? {
        Object::HwptPaging(_) | Object::HwptNested(_) => {
            do_attach(st, c, dev_id, dev, group, pt_id, replace)?;
            Ok(pt_id)
        }
        Object::Ioas(ioas) => {
            let candidates: Vec<ObjId> = ioas.hwpts.clone();
            for h in candidates {
                let auto = matches!(st.ctx(c)?.objects.get(h), Ok(Object::HwptPaging(p)) if p.auto);
                if !auto {
                    continue;
                }
                match do_attach(st, c, dev_id, dev, group, h, replace) {
                    Ok(()) => return Ok(h),
                    Err(Error::Invalid(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            let h = alloc_paging(st, c, dev, pt_id, HwptFlags::default(), true)?;
            match do_attach(st, c, dev_id, dev, group, h, replace) {
                Ok(()) => Ok(h),
                Err(e) => {
                    destroy_paging(st, c, h);
                    Err(e)
                }
            }
        }
        _ => Err(Error::Invalid("attach needs an IOAS or a HWPT")),
    }
}

/// Attach or replace onto an existing HWPT object.
fn do_attach(
    st: &mut State,
    c: CtxId,
    dev_id: ObjId,
    dev: DeviceId,
    group: GroupId,
    hwpt: ObjId,
    replace: bool,
) -> Result<()> {
    let (domain, format, enforce_cc) = hwpt_domain(st, c, hwpt)?;
    let gstate = st
        .groups
        .get(group)
        .ok_or(Error::NoDevice("no IOMMU group"))?;
    let cur = gstate.hwpt;
    if replace {
        if cur.is_none() || !gstate.attached.contains(&dev_id) {
            return Err(Error::Invalid("the device is not attached"));
        }
        if cur == Some(hwpt) {
            return Ok(());
        }
    } else if cur.is_some() && cur != Some(hwpt) {
        return Err(Error::Invalid(
            "the group is attached to another page table",
        ));
    }
    // Compatibility of every device that will be translated by the domain.
    let members: Vec<DeviceId> = st
        .platform
        .topology
        .group(group)
        .map(|g| g.devices.clone())
        .unwrap_or_default();
    if device_format(st, dev) != format {
        return Err(Error::Invalid(
            "the page-table format does not match the device's IOMMU",
        ));
    }
    let dirty_ops =
        matches!(st.ctx(c)?.objects.get(hwpt), Ok(Object::HwptPaging(h)) if h.dirty_ops);
    if dirty_ops && !dirty_capable(st, dev) {
        return Err(Error::Invalid(
            "the device cannot track dirty pages for this page table",
        ));
    }
    if enforce_cc && members.iter().any(|m| st.noncoherent.contains(m)) {
        return Err(Error::Invalid(
            "the page table enforces coherency the device cannot",
        ));
    }
    // I/O page faults: a HWPT with a fault object turns them on for each device it gains.
    let new_fault = crate::fault::hwpt_fault(st, c, hwpt).is_some();
    let old_fault = cur.is_some_and(|h| crate::fault::hwpt_fault(st, c, h).is_some());
    let gaining: Vec<ObjId> = if replace {
        gstate.attached.clone()
    } else {
        vec![dev_id]
    };
    if new_fault && !(replace && old_fault) {
        for d in &gaining {
            crate::fault::iopf_enable_check(st, device_obj(st, c, *d)?.dev)?;
        }
    }
    let State {
        groups,
        platform,
        ctxs,
        ..
    } = st;
    let ctx = ctxs
        .get_mut(&c)
        .ok_or(Error::NoDevice("the context is closed"))?;
    let g = groups
        .get_mut(group)
        .ok_or(Error::NoDevice("no IOMMU group"))?;
    if replace {
        let old = g.hwpt.replace(hwpt);
        let n = g.attached.len() as u32;
        groups.set_domain(platform, group, domain);
        for _ in 0..n {
            ctx.objects.get_user(hwpt);
        }
        let attached: Vec<ObjId> = groups
            .get(group)
            .map(|g| g.attached.clone())
            .unwrap_or_default();
        for d in attached {
            if let Ok(Object::Device(o)) = ctx.objects.get_mut(d) {
                o.attached = Some(hwpt);
            }
        }
        for d in &gaining {
            if let Some(old) = old {
                crate::fault::auto_respond(st, c, old, *d);
            }
            crate::fault::iopf_set(st, c, *d, new_fault);
        }
        if let Some(old) = old {
            for _ in 0..n {
                put_hwpt(st, c, old);
            }
        }
    } else {
        if g.attached.is_empty() {
            g.hwpt = Some(hwpt);
            groups.set_domain(platform, group, domain);
        }
        if let Some(g) = groups.get_mut(group) {
            g.attached.push(dev_id);
        }
        ctx.objects.get_user(hwpt);
        ctx.objects.get_user(dev_id);
        if let Ok(Object::Device(o)) = ctx.objects.get_mut(dev_id) {
            o.attached = Some(hwpt);
        }
        crate::fault::iopf_set(st, c, dev_id, new_fault);
    }
    Ok(())
}

/// Drop one user of a HWPT; an automatic paging HWPT with no users left is destroyed.
fn put_hwpt(st: &mut State, c: CtxId, hwpt: ObjId) {
    let Ok(ctx) = st.ctx_mut(c) else { return };
    ctx.objects.put_user(hwpt);
    let auto = matches!(ctx.objects.get(hwpt), Ok(Object::HwptPaging(p)) if p.auto);
    if auto && ctx.objects.users(hwpt) == 0 {
        destroy_paging(st, c, hwpt);
    }
}

/// Detach a device; the last one of its group puts the group back in the blocking domain.
pub(crate) fn detach(st: &mut State, c: CtxId, dev_id: ObjId) -> Result<()> {
    let d = device_obj(st, c, dev_id)?;
    let (group, hwpt) = (
        d.group,
        d.attached
            .ok_or(Error::Invalid("the device is not attached"))?,
    );
    // The device leaves the HWPT: its outstanding page faults there are answered, IOPF off.
    crate::fault::auto_respond(st, c, hwpt, dev_id);
    crate::fault::iopf_set(st, c, dev_id, false);
    let State {
        groups,
        platform,
        ctxs,
        ..
    } = st;
    let blocking = groups.blocking;
    if let Some(g) = groups.get_mut(group) {
        g.attached.retain(|x| *x != dev_id);
        if g.attached.is_empty() {
            g.hwpt = None;
            groups.set_domain(platform, group, blocking);
        }
    }
    if let Some(ctx) = ctxs.get_mut(&c) {
        ctx.objects.put_user(dev_id);
        if let Ok(Object::Device(o)) = ctx.objects.get_mut(dev_id) {
            o.attached = None;
        }
    }
    put_hwpt(st, c, hwpt);
    Ok(())
}

/// Unbind a device (detaching it first); the last unbind of the group restores its default
/// domain.
pub(crate) fn unbind(st: &mut State, c: CtxId, dev_id: ObjId) -> Result<()> {
    let d = device_obj(st, c, dev_id)?;
    let group = d.group;
    if d.attached.is_some() {
        detach(st, c, dev_id)?;
    }
    let ctx = st.ctx_mut(c)?;
    ctx.objects.put_user(dev_id);
    ctx.objects.remove(dev_id)?;
    let State {
        groups, platform, ..
    } = st;
    groups.release(platform, group);
    Ok(())
}

/// Create a paging HWPT on IOAS `ioas_id` for device `dev`; with `auto` it is an automatic one.
pub(crate) fn alloc_paging(
    st: &mut State,
    c: CtxId,
    dev: DeviceId,
    ioas_id: ObjId,
    flags: HwptFlags,
    auto: bool,
) -> Result<ObjId> {
    ioas_in(&mut st.ctxs, c, ioas_id)?;
    if flags.dirty_tracking && !dirty_capable(st, dev) {
        return Err(Error::NotSupported(
            "the device's IOMMU cannot track dirty pages",
        ));
    }
    let format = device_format(st, dev);
    let enforce_cc = !st.noncoherent.contains(&dev);
    let dirty = dirty_capable(st, dev);
    let pt = new_page_table(st, dev);
    ioas_in(&mut st.ctxs, c, ioas_id)?;
    crate::error::alloc_site("domain")?;
    let domain = st
        .platform
        .iommu
        .alloc_domain(DomainSpec::Paging(pt))
        .map_err(|_| Error::NoMemory("domain"))?;
    let State {
        ctxs,
        platform,
        acct,
        ..
    } = st;
    let ctx = ctxs
        .get_mut(&c)
        .ok_or(Error::NoDevice("the context is closed"))?;
    let id = match ctx.objects.reserve() {
        Ok(id) => id,
        Err(e) => {
            let _ = platform.iommu.free_domain(domain);
            return Err(e);
        }
    };
    let ioas = match ctx.objects.get_mut(ioas_id) {
        Ok(Object::Ioas(i)) => i,
        _ => {
            // Checked above under the same lock; kept as an error rather than a panic.
            ctx.objects.abort(id);
            let _ = platform.iommu.free_domain(domain);
            return Err(Error::WrongType {
                id: ioas_id.0,
                expected: "an IOAS",
            });
        }
    };
    if let Err(e) = ioas.iopt.add_domain(&mut PtEnv { platform, acct }, domain) {
        ctx.objects.abort(id);
        let _ = platform.iommu.free_domain(domain);
        return Err(e);
    }
    ioas.hwpts.push(id);
    ctx.objects.get_user(ioas_id);
    ctx.objects.finalize(
        id,
        Object::HwptPaging(HwptPaging {
            ioas: ioas_id,
            domain,
            format,
            auto,
            nest_parent: flags.nest_parent,
            dirty_capable: dirty,
            dirty_ops: flags.dirty_tracking,
            enforce_cc,
            fault: None,
        }),
    );
    Ok(id)
}

/// Create a nested HWPT over paging HWPT `parent` with stage-1 `data`.
pub(crate) fn alloc_nested(
    st: &mut State,
    c: CtxId,
    dev: DeviceId,
    parent: ObjId,
    data: Vec<u32>,
) -> Result<ObjId> {
    let (pdomain, format) = match st.ctx(c)?.objects.get(parent)? {
        Object::HwptPaging(p) if p.nest_parent => (p.domain, p.format),
        Object::HwptPaging(_) => {
            return Err(Error::Invalid(
                "the parent was not allocated as a nest parent",
            ))
        }
        _ => return Err(Error::Invalid("the parent must be a paging HWPT")),
    };
    if device_format(st, dev) != format {
        return Err(Error::Invalid(
            "the device's IOMMU cannot nest on this parent",
        ));
    }
    let domain = st
        .platform
        .iommu
        .alloc_domain(DomainSpec::Nested {
            parent: pdomain,
            data,
        })
        .map_err(|_| Error::NoMemory("domain"))?;
    let ctx = st.ctx_mut(c)?;
    match ctx.objects.insert(Object::HwptNested(HwptNested {
        parent,
        domain,
        format,
        fault: None,
    })) {
        Ok(id) => {
            ctx.objects.get_user(parent);
            Ok(id)
        }
        Err(e) => {
            let _ = st.platform.iommu.free_domain(domain);
            Err(e)
        }
    }
}

/// Tear down a paging HWPT that nothing uses: empty its domain, free it, let go of the IOAS.
pub(crate) fn destroy_paging(st: &mut State, c: CtxId, id: ObjId) {
    let State {
        ctxs,
        platform,
        acct,
        ..
    } = st;
    let Some(ctx) = ctxs.get_mut(&c) else { return };
    let Ok(Object::HwptPaging(h)) = ctx.objects.remove(id) else {
        return;
    };
    if let Ok(Object::Ioas(ioas)) = ctx.objects.get_mut(h.ioas) {
        ioas.iopt
            .remove_domain(&mut PtEnv { platform, acct }, h.domain);
        ioas.hwpts.retain(|x| *x != id);
    }
    ctx.objects.put_user(h.ioas);
    if let Some(f) = h.fault {
        ctx.objects.put_user(f);
    }
    let _ = platform.iommu.free_domain(h.domain);
}

/// Tear down a nested HWPT that nothing uses.
pub(crate) fn destroy_nested(st: &mut State, c: CtxId, id: ObjId) {
    let Some(ctx) = st.ctxs.get_mut(&c) else {
        return;
    };
    let Ok(Object::HwptNested(h)) = ctx.objects.remove(id) else {
        return;
    };
    ctx.objects.put_user(h.parent);
    if let Some(f) = h.fault {
        ctx.objects.put_user(f);
    }
    let _ = st.platform.iommu.free_domain(h.domain);
}

impl Context {
    /// Bind a platform device into this context (VFIO_DEVICE_BIND_IOMMUFD); returns its device
    /// object id. The device's whole group is claimed and blocked until an attach.
    pub fn device_bind(&self, dev: DeviceId) -> Result<ObjId> {
        self.with(|st, c| bind(st, c, dev))
    }

    /// Unbind a device (closing its VFIO fd): detach, release the group claim.
    pub fn device_unbind(&self, dev_id: ObjId) -> Result<()> {
        self.with(|st, c| unbind(st, c, dev_id))
    }

    /// Attach a bound device to an IOAS (automatic HWPT) or a HWPT; returns the HWPT id.
    pub fn device_attach(&self, dev_id: ObjId, pt_id: ObjId) -> Result<ObjId> {
        self.with(|st, c| change_pt(st, c, dev_id, pt_id, false))
    }

    /// Replace an attached device's (and so its group's) page table; returns the HWPT id.
    pub fn device_replace(&self, dev_id: ObjId, pt_id: ObjId) -> Result<ObjId> {
        self.with(|st, c| change_pt(st, c, dev_id, pt_id, true))
    }

    /// Detach a device; the last of its group sends the group back to blocking.
    pub fn device_detach(&self, dev_id: ObjId) -> Result<()> {
        self.with(|st, c| detach(st, c, dev_id))
    }

    /// The platform device behind a device object.
    pub fn device_of(&self, dev_id: ObjId) -> Result<DeviceId> {
        self.with(|st, c| Ok(device_obj(st, c, dev_id)?.dev))
    }

    /// The HWPT a device object is attached to.
    pub fn device_hwpt(&self, dev_id: ObjId) -> Result<Option<ObjId>> {
        self.with(|st, c| Ok(device_obj(st, c, dev_id)?.attached))
    }

    /// IOMMU_HWPT_ALLOC of a paging HWPT on IOAS `ioas` for device `dev_id`.
    pub fn hwpt_alloc_paging(&self, dev_id: ObjId, ioas: ObjId, flags: HwptFlags) -> Result<ObjId> {
        self.with(|st, c| {
            let dev = device_obj(st, c, dev_id)?.dev;
            alloc_paging(st, c, dev, ioas, flags, false)
        })
    }

    /// IOMMU_HWPT_ALLOC of a nested HWPT over `parent` with format data `data`.
    pub fn hwpt_alloc_nested(&self, dev_id: ObjId, parent: ObjId, data: Vec<u32>) -> Result<ObjId> {
        self.with(|st, c| {
            let dev = device_obj(st, c, dev_id)?.dev;
            alloc_nested(st, c, dev, parent, data)
        })
    }

    /// The IOMMU domain of a HWPT (for tests and the selftest emulation).
    pub fn hwpt_domain(&self, hwpt: ObjId) -> Result<DomainId> {
        self.with(|st, c| Ok(hwpt_domain(st, c, hwpt)?.0))
    }

    /// IOMMU_HWPT_SET_DIRTY_TRACKING.
    pub fn hwpt_set_dirty_tracking(&self, hwpt: ObjId, enable: bool) -> Result<()> {
        self.with(|st, c| {
            let domain = match st.ctx(c)?.objects.get(hwpt)? {
                Object::HwptPaging(h) if h.dirty_ops => h.domain,
                Object::HwptPaging(_) => return Err(Error::NotSupported("no dirty tracking")),
                _ => {
                    return Err(Error::WrongType {
                        id: hwpt.0,
                        expected: "a paging HWPT",
                    })
                }
            };
            let pt = st
                .platform
                .iommu
                .page_table_mut(domain)
                .ok_or(Error::NotSupported("no page table"))?;
            if enable && !pt.dirty_tracking() {
                // Start from a clean slate: marks left from before are not this run's writes.
                let ap = pt.aperture();
                pt.read_and_clear_dirty(
                    uiommu_platform::Iova(ap.start),
                    ap.len(),
                    false,
                    &mut |_| {},
                );
            }
            pt.set_dirty_tracking(enable);
            Ok(())
        })
    }

    /// IOMMU_HWPT_GET_DIRTY_BITMAP: call `report` with each dirty IOVA unit in the range,
    /// clearing the marks unless `keep`.
    pub fn hwpt_read_dirty(
        &self,
        hwpt: ObjId,
        iova: uiommu_platform::Iova,
        len: u64,
        keep: bool,
        report: &mut dyn FnMut(uiommu_platform::Iova),
    ) -> Result<()> {
        self.with(|st, c| {
            let domain = match st.ctx(c)?.objects.get(hwpt)? {
                Object::HwptPaging(h) if h.dirty_ops => h.domain,
                Object::HwptPaging(_) => return Err(Error::NotSupported("no dirty tracking")),
                _ => {
                    return Err(Error::WrongType {
                        id: hwpt.0,
                        expected: "a paging HWPT",
                    })
                }
            };
            let pt = st
                .platform
                .iommu
                .page_table_mut(domain)
                .ok_or(Error::NotSupported("no page table"))?;
            pt.read_and_clear_dirty(iova, len, keep, report);
            Ok(())
        })
    }

    /// The stage-1 data of a nested HWPT, for IOMMU_HWPT_INVALIDATE and the selftest checks.
    pub fn hwpt_nested_data(&self, hwpt: ObjId, f: &mut dyn FnMut(&mut Vec<u32>)) -> Result<()> {
        self.with(|st, c| {
            let domain = match st.ctx(c)?.objects.get(hwpt)? {
                Object::HwptNested(h) => h.domain,
                _ => {
                    return Err(Error::WrongType {
                        id: hwpt.0,
                        expected: "a nested HWPT",
                    })
                }
            };
            let data = st
                .platform
                .iommu
                .nested_data_mut(domain)
                .ok_or(Error::NotSupported("no stage-1 data"))?;
            f(data);
            Ok(())
        })
    }
}
