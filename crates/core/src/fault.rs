//! I/O page fault queues (the kernel's `IOMMUFD_OBJ_FAULT`, `drivers/iommu/iommufd/fault.c`).
//!
//! A *fault object* is a queue through which page requests of devices reach the program. It
//! is created with [`Context::fault_alloc`] and handed to HWPTs at allocation
//! ([`Context::hwpt_alloc_nested_with_fault`], [`Context::hwpt_alloc_paging_with_fault`]); each
//! such HWPT holds it (DESTROY of the fault is EBUSY while a HWPT refers to it, and while the
//! queue's file is open — the file is a holder too, dropped by
//! [`Context::fault_file_release`]).
//!
//! - **I/O page faults on a device.** Attaching a device to a HWPT with a fault object turns
//!   on the device's IOPF (only mock devices can: ENODEV for others, as the kernel's
//!   `iommu_dev_enable_feature` on an IOMMU without the feature); detaching it, or replacing to
//!   a HWPT without one, turns it off and drops the partial faults it held.
//! - **Reporting** ([`Context::report_iopf`], the kernel's `iommu_report_device_fault`): the
//!   fault goes to the HWPT the device's RID is attached to. A fault with a PASID goes there
//!   only when that HWPT is nested (the mock IOMMU's `user_pasid_table`: PASIDs live in the
//!   user's stage-1; no PASID is ever attached separately in 6.12). Without a fault object
//!   there, the fault is dropped with an INVALID response. A fault without `LAST_PAGE` is kept
//!   as *partial* until the last page of its group (same `grpid`) arrives; the group is then
//!   queued with the partial faults first, most recent first, and the last one at the end, as
//!   the kernel's list insertions order them.
//! - **Reading** ([`Context::fault_read`]): whole groups, oldest first, as many as fit; each
//!   group read gets a *cookie* (the lowest free id from 1) and waits for a response.
//! - **Responding** ([`Context::fault_respond`]): by cookie, with code SUCCESS or INVALID
//!   (EINVAL otherwise; EINVAL for a cookie not waiting). The device gets the response.
//! - **Auto-responses**: when a device leaves a HWPT with a fault object (detach, replace,
//!   unbind), its groups still queued or waiting for a response are answered INVALID
//!   (`iommufd_auto_response_faults`); destroying the fault object answers all of its groups
//!   INVALID (`iommufd_fault_destroy`).
//!
//! Responses reach the device: the engine keeps the most recent ones
//! ([`Engine::page_responses`]) where the kernel's mock driver drops them.

use crate::device::{alloc_nested, alloc_paging, destroy_nested, destroy_paging, device_obj};
use crate::engine::{Context, Engine, State};
use crate::error::{Error, Result};
use crate::group::CtxId;
use crate::object::ObjId;
use crate::{HwptFlags, Object};
use std::collections::{BTreeMap, VecDeque};
use uiommu_platform::topology::{DeviceId, ModelKind};

/// Page request flag: `pasid` is valid (`IOMMU_FAULT_PAGE_REQUEST_PASID_VALID`, the same bit
/// as the uAPI's `IOMMU_PGFAULT_FLAGS_PASID_VALID`).
pub const IOPF_FLAGS_PASID_VALID: u32 = 1 << 0;
/// Page request flag: the last request of its group (`IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE`).
pub const IOPF_FLAGS_LAST_PAGE: u32 = 1 << 1;

/// Most groups one fault object holds (queued plus waiting for a response). A fault beyond
/// is answered FAILURE at once, as the kernel answers a group it cannot allocate.
pub const MAX_FAULT_GROUPS: usize = 65536;

/// Most partial (not last-page) faults a device holds; further ones are dropped.
pub const MAX_PARTIAL_FAULTS: usize = 4096;

/// Most page responses [`Engine::page_responses`] remembers.
pub const PAGE_RESPONSE_LOG: usize = 1024;

/// One page request as a device reports it (the kernel's `iommu_fault_page_request`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// [`IOPF_FLAGS_PASID_VALID`], [`IOPF_FLAGS_LAST_PAGE`].
    pub flags: u32,
    /// The PASID (meaningful with [`IOPF_FLAGS_PASID_VALID`]).
    pub pasid: u32,
    /// The page request group index.
    pub grpid: u32,
    /// Permissions asked for (`IOMMU_PGFAULT_PERM_*` bits: read 1, write 2, exec 4, priv 8).
    pub perm: u32,
    /// The faulting address.
    pub addr: u64,
}

/// One page request as a fault queue delivers it (`struct iommu_hwpt_pgfault`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct IopfRecord {
    /// The request's flags.
    pub flags: u32,
    /// The device object that faulted.
    pub dev_id: ObjId,
    /// The PASID.
    pub pasid: u32,
    /// The page request group index.
    pub grpid: u32,
    /// Permissions asked for.
    pub perm: u32,
    /// The faulting address.
    pub addr: u64,
    /// Length of the fault (always 0, as in Linux 6.12).
    pub length: u32,
    /// Names the group in the response.
    pub cookie: u32,
}

/// One response written to a fault queue (`struct iommu_hwpt_page_response`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PageResponse {
    /// The cookie of the group answered.
    pub cookie: u32,
    /// 0 success, 1 invalid (EINVAL otherwise).
    pub code: u32,
}

/// The answer a device gets to a page request group (`enum iommu_page_response_code`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PageResponseCode {
    /// The pages are there: retry the access.
    Success,
    /// The request cannot be served; do not retry.
    Invalid,
    /// A general failure (the group could not be queued).
    Failure,
}

/// A page response as the device received it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PageResponseRecord {
    /// The device answered.
    pub dev: DeviceId,
    /// The PASID of the group's last request, if it had one.
    pub pasid: Option<u32>,
    /// The group index.
    pub grpid: u32,
    /// The answer.
    pub code: PageResponseCode,
}

/// A device's IOPF state while it is on (the kernel's `iommu_fault_param`): the partial
/// faults waiting for the last page of their group.
#[derive(Debug, Default)]
pub(crate) struct IopfParam {
    partial: Vec<PageRequest>,
}

/// A group of page requests from one device through one attachment (`struct iopf_group`).
#[derive(Debug)]
struct IopfGroup {
    /// The device object (the attach handle's device).
    idev: ObjId,
    dev: DeviceId,
    /// The HWPT the device was attached to (the attach handle's domain).
    hwpt: ObjId,
    /// The requests, the last page last.
    faults: Vec<PageRequest>,
}

impl IopfGroup {
    fn last(&self) -> PageRequest {
        self.faults.last().copied().unwrap_or_default()
    }
}

/// A fault object: groups queued for reading and groups read, waiting for a response.
#[derive(Debug, Default)]
pub(crate) struct FaultObj {
    deliver: VecDeque<IopfGroup>,
    response: BTreeMap<u32, IopfGroup>,
}

impl FaultObj {
    fn pending(&self) -> usize {
        self.deliver.len() + self.response.len()
    }

    /// The lowest free cookie from 1 (`xa_alloc` with `XA_FLAGS_ALLOC1`).
    fn free_cookie(&self) -> Option<u32> {
        let mut want = 1u32;
        for &k in self.response.keys() {
            if k != want {
                break;
            }
            want = want.checked_add(1)?;
        }
        Some(want)
    }
}

/// Tell the device the answer to `group` (and remember it).
fn respond(st: &mut State, group: &IopfGroup, code: PageResponseCode) {
    log_response(st, group.dev, group.last(), code);
}

fn log_response(st: &mut State, dev: DeviceId, last: PageRequest, code: PageResponseCode) {
    if st.page_responses.len() >= PAGE_RESPONSE_LOG {
        st.page_responses.pop_front();
    }
    st.page_responses.push_back(PageResponseRecord {
        dev,
        pasid: (last.flags & IOPF_FLAGS_PASID_VALID != 0).then_some(last.pasid),
        grpid: last.grpid,
        code,
    });
}

fn fault_mut(st: &mut State, c: CtxId, id: ObjId) -> Result<&mut FaultObj> {
    match st.ctx_mut(c)?.objects.get_mut(id)? {
        Object::Fault(f) => Ok(f),
        _ => Err(Error::WrongType {
            id: id.0,
            expected: "a fault queue",
        }),
    }
}

/// The fault object of HWPT `hwpt`, if it has one.
pub(crate) fn hwpt_fault(st: &State, c: CtxId, hwpt: ObjId) -> Option<ObjId> {
    match st.ctx(c).ok()?.objects.get(hwpt).ok()? {
        Object::HwptPaging(h) => h.fault,
        Object::HwptNested(h) => h.fault,
        _ => None,
    }
}

/// Whether `dev`'s IOMMU can turn on I/O page faults (ENODEV otherwise). Only the selftest
/// mock IOMMU has a page request queue.
pub(crate) fn iopf_enable_check(st: &State, dev: DeviceId) -> Result<()> {
    match st.platform.topology.device(dev).map(|d| d.model) {
        Some(ModelKind::Mock) => Ok(()),
        _ => Err(Error::NoDevice(
            "the device's IOMMU does not support I/O page faults",
        )),
    }
}

/// Turn IOPF of device object `idev` on (keeping its state if it was on) or off (dropping
/// its partial faults).
pub(crate) fn iopf_set(st: &mut State, c: CtxId, idev: ObjId, on: bool) {
    let Ok(ctx) = st.ctx_mut(c) else { return };
    if let Ok(Object::Device(d)) = ctx.objects.get_mut(idev) {
        if !on {
            d.iopf = None;
        } else if d.iopf.is_none() {
            d.iopf = Some(IopfParam::default());
        }
    }
}

/// Device object `idev` leaves HWPT `hwpt`: its groups in `hwpt`'s fault object, queued or
/// waiting for a response, are answered INVALID (`iommufd_auto_response_faults`).
pub(crate) fn auto_respond(st: &mut State, c: CtxId, hwpt: ObjId, idev: ObjId) {
    let Some(fid) = hwpt_fault(st, c, hwpt) else {
        return;
    };
    let Ok(f) = fault_mut(st, c, fid) else { return };
    let mine = |g: &IopfGroup| g.hwpt == hwpt && g.idev == idev;
    let mut gone: Vec<IopfGroup> = Vec::new();
    let mut keep = VecDeque::new();
    for g in f.deliver.drain(..) {
        if mine(&g) {
            gone.push(g);
        } else {
            keep.push_back(g);
        }
    }
    f.deliver = keep;
    let cookies: Vec<u32> = f
        .response
        .iter()
        .filter(|(_, g)| mine(g))
        .map(|(k, _)| *k)
        .collect();
    for k in cookies {
        if let Some(g) = f.response.remove(&k) {
            gone.push(g);
        }
    }
    for g in &gone {
        respond(st, g, PageResponseCode::Invalid);
    }
}

/// Give HWPT `hwpt` (just made, not handed out yet) fault object `fault` (ENOENT unless it is
/// one), which it then holds.
fn set_hwpt_fault(st: &mut State, c: CtxId, hwpt: ObjId, fault: ObjId) -> Result<()> {
    let ctx = st.ctx_mut(c)?;
    match ctx.objects.get(fault)? {
        Object::Fault(_) => {}
        _ => {
            return Err(Error::WrongType {
                id: fault.0,
                expected: "a fault queue",
            })
        }
    }
    match ctx.objects.get_mut(hwpt)? {
        Object::HwptPaging(h) => h.fault = Some(fault),
        Object::HwptNested(h) => h.fault = Some(fault),
        _ => return Err(Error::Invalid("not a HWPT")),
    }
    ctx.objects.get_user(fault);
    Ok(())
}

/// Tear down a fault object: every group it holds is answered INVALID
/// (`iommufd_fault_destroy`). DESTROY calls it only when nothing holds the object; closing
/// the context calls it after every HWPT is gone.
pub(crate) fn destroy_fault(st: &mut State, c: CtxId, id: ObjId) {
    let Ok(f) = fault_mut(st, c, id) else { return };
    let mut gone: Vec<IopfGroup> = f.deliver.drain(..).collect();
    gone.extend(std::mem::take(&mut f.response).into_values());
    for g in &gone {
        respond(st, g, PageResponseCode::Invalid);
    }
    if let Ok(ctx) = st.ctx_mut(c) {
        let users = ctx.objects.users(id);
        for _ in 0..users {
            ctx.objects.put_user(id);
        }
        let _ = ctx.objects.remove(id);
    }
}

/// Deliver `req` from device object `idev` (the kernel's `iommu_report_device_fault`);
/// returns whether a fault queue took it (or holds it as a partial fault).
fn report(st: &mut State, c: CtxId, idev: ObjId, req: PageRequest) -> Result<bool> {
    let d = device_obj(st, c, idev)?;
    let (dev, attached, iopf_on) = (d.dev, d.attached, d.iopf.is_some());
    // find_fault_handler: the RID's attachment; with a PASID only a nested one (the mock
    // IOMMU keeps PASID tables in the user's stage-1).
    let handler = attached.filter(|&h| {
        let nested = matches!(
            st.ctx(c).ok().map(|x| x.objects.get(h)),
            Some(Ok(Object::HwptNested(_)))
        );
        let pasid_ok = req.flags & IOPF_FLAGS_PASID_VALID == 0 || nested;
        pasid_ok && hwpt_fault(st, c, h).is_some()
    });
    let (Some(hwpt), true) = (handler, iopf_on) else {
        log_response(st, dev, req, PageResponseCode::Invalid);
        return Ok(false);
    };
    let Some(fid) = hwpt_fault(st, c, hwpt) else {
        return Ok(false);
    };
    if req.flags & IOPF_FLAGS_LAST_PAGE == 0 {
        if let Ok(Object::Device(d)) = st.ctx_mut(c)?.objects.get_mut(idev) {
            if let Some(p) = d.iopf.as_mut() {
                if p.partial.len() < MAX_PARTIAL_FAULTS {
                    p.partial.push(req);
                }
            }
        }
        return Ok(true);
    }
    // The group: the partial faults of the same group index, most recent first, then the
    // last page.
    let mut faults: Vec<PageRequest> = Vec::new();
    if let Ok(Object::Device(d)) = st.ctx_mut(c)?.objects.get_mut(idev) {
        if let Some(p) = d.iopf.as_mut() {
            let (mine, rest): (Vec<_>, Vec<_>) =
                p.partial.drain(..).partition(|f| f.grpid == req.grpid);
            p.partial = rest;
            faults.extend(mine.into_iter().rev());
        }
    }
    faults.push(req);
    let group = IopfGroup {
        idev,
        dev,
        hwpt,
        faults,
    };
    let f = fault_mut(st, c, fid)?;
    if f.pending() >= MAX_FAULT_GROUPS {
        respond(st, &group, PageResponseCode::Failure);
        return Ok(false);
    }
    f.deliver.push_back(group);
    Ok(true)
}

impl Context {
    /// IOMMU_FAULT_QUEUE_ALLOC: a new, empty fault object. It starts with one holder, the
    /// queue's file: call [`Context::fault_file_release`] when that file is closed (DESTROY is
    /// EBUSY until then).
    pub fn fault_alloc(&self) -> Result<ObjId> {
        self.with(|st, c| {
            let ctx = st.ctx_mut(c)?;
            let id = ctx.objects.insert(Object::Fault(FaultObj::default()))?;
            ctx.objects.get_user(id);
            Ok(id)
        })
    }

    /// The queue's file of fault object `fault` is closed: drop its hold. The object stays
    /// until DESTROY or the context's close.
    pub fn fault_file_release(&self, fault: ObjId) -> Result<()> {
        self.with(|st, c| {
            fault_mut(st, c, fault)?;
            st.ctx_mut(c)?.objects.put_user(fault);
            Ok(())
        })
    }

    /// Destroy fault object `fault` although its file still holds it, answering its groups
    /// INVALID: for a queue whose file could not be handed out. EBUSY while a HWPT uses it.
    pub fn fault_abort(&self, fault: ObjId) -> Result<()> {
        self.with(|st, c| {
            fault_mut(st, c, fault)?;
            let hwpts: Vec<ObjId> = st
                .ctx(c)?
                .objects
                .iter()
                .filter(|(_, o)| match o {
                    Object::HwptPaging(h) => h.fault == Some(fault),
                    Object::HwptNested(h) => h.fault == Some(fault),
                    _ => false,
                })
                .map(|(id, _)| id)
                .collect();
            if !hwpts.is_empty() {
                return Err(Error::Busy("a HWPT uses the fault queue"));
            }
            destroy_fault(st, c, fault);
            Ok(())
        })
    }

    /// `read(2)` of a fault queue: up to `max` requests, whole groups only, oldest first; each
    /// group read gets a cookie and waits for a response. An empty queue gives none; EINVAL
    /// when the first group queued does not fit in `max`.
    pub fn fault_read(&self, fault: ObjId, max: usize) -> Result<Vec<IopfRecord>> {
        self.with(|st, c| {
            let f = fault_mut(st, c, fault)?;
            let mut out: Vec<IopfRecord> = Vec::new();
            while let Some(g) = f.deliver.front() {
                if g.faults.len() > max - out.len() {
                    if out.is_empty() {
                        return Err(Error::Invalid("the read does not hold the first group"));
                    }
                    break;
                }
                let Some(cookie) = f.free_cookie() else {
                    if out.is_empty() {
                        return Err(Error::Busy("no cookie left"));
                    }
                    break;
                };
                let Some(g) = f.deliver.pop_front() else {
                    break;
                };
                for r in &g.faults {
                    out.push(IopfRecord {
                        flags: r.flags,
                        dev_id: g.idev,
                        pasid: r.pasid,
                        grpid: r.grpid,
                        perm: r.perm,
                        addr: r.addr,
                        length: 0,
                        cookie,
                    });
                }
                f.response.insert(cookie, g);
            }
            Ok(out)
        })
    }

    /// Undo the read of the group given `cookie` by [`Context::fault_read`]: it goes back to
    /// the front of the queue, unanswered, and the cookie is free again (the kernel's
    /// `iommufd_fault_deliver_restore`, for a read whose copy to the reader failed). EINVAL
    /// when no group with that cookie waits.
    pub fn fault_unread(&self, fault: ObjId, cookie: u32) -> Result<()> {
        self.with(|st, c| {
            let f = fault_mut(st, c, fault)?;
            let g = f
                .response
                .remove(&cookie)
                .ok_or(Error::Invalid("no group with this cookie waits"))?;
            f.deliver.push_front(g);
            Ok(())
        })
    }

    /// `write(2)` of responses to a fault queue, in order: each code must be 0 (success) or 1
    /// (invalid) and each cookie must name a group read and not answered yet (EINVAL
    /// otherwise). Stops at the first bad one; returns how many were answered, or the error
    /// when the first was bad.
    pub fn fault_respond(&self, fault: ObjId, responses: &[PageResponse]) -> Result<usize> {
        self.with(|st, c| {
            fault_mut(st, c, fault)?;
            let mut done = 0;
            for r in responses {
                let code = match r.code {
                    0 => PageResponseCode::Success,
                    1 => PageResponseCode::Invalid,
                    _ => {
                        if done == 0 {
                            return Err(Error::Invalid("unknown response code"));
                        }
                        break;
                    }
                };
                let Some(g) = fault_mut(st, c, fault)?.response.remove(&r.cookie) else {
                    if done == 0 {
                        return Err(Error::Invalid("no group with this cookie waits"));
                    }
                    break;
                };
                respond(st, &g, code);
                done += 1;
            }
            Ok(done)
        })
    }

    /// How many groups fault object `fault` holds: `(queued, waiting for a response)`.
    pub fn fault_pending(&self, fault: ObjId) -> Result<(usize, usize)> {
        self.with(|st, c| {
            let f = fault_mut(st, c, fault)?;
            Ok((f.deliver.len(), f.response.len()))
        })
    }

    /// A page request from the device of device object `dev_id` (ENOENT when it is not one).
    /// Returns whether a fault queue took it (see the module documentation); a dropped
    /// request is answered INVALID.
    pub fn report_iopf(&self, dev_id: ObjId, req: PageRequest) -> Result<bool> {
        self.with(|st, c| report(st, c, dev_id, req))
    }

    /// Whether IOPF is on for device object `dev_id` (it is attached to a HWPT with a fault
    /// object).
    pub fn device_iopf_enabled(&self, dev_id: ObjId) -> Result<bool> {
        self.with(|st, c| Ok(device_obj(st, c, dev_id)?.iopf.is_some()))
    }

    /// The fault object of HWPT `hwpt` (ENOENT when it is not a HWPT).
    pub fn hwpt_fault(&self, hwpt: ObjId) -> Result<Option<ObjId>> {
        self.with(|st, c| match st.ctx(c)?.objects.get(hwpt)? {
            Object::HwptPaging(h) => Ok(h.fault),
            Object::HwptNested(h) => Ok(h.fault),
            _ => Err(Error::WrongType {
                id: hwpt.0,
                expected: "a HWPT",
            }),
        })
    }

    /// IOMMU_HWPT_ALLOC of a nested HWPT (as [`Context::hwpt_alloc_nested`]) that reports
    /// page faults to fault object `fault` (ENOENT when it is not one; the HWPT is not made).
    pub fn hwpt_alloc_nested_with_fault(
        &self,
        dev_id: ObjId,
        parent: ObjId,
        data: Vec<u32>,
        fault: Option<ObjId>,
    ) -> Result<ObjId> {
        self.with(|st, c| {
            let dev = device_obj(st, c, dev_id)?.dev;
            let id = alloc_nested(st, c, dev, parent, data)?;
            if let Some(f) = fault {
                if let Err(e) = set_hwpt_fault(st, c, id, f) {
                    destroy_nested(st, c, id);
                    return Err(e);
                }
            }
            Ok(id)
        })
    }

    /// IOMMU_HWPT_ALLOC of a paging HWPT (as [`Context::hwpt_alloc_paging`]) that reports page
    /// faults to fault object `fault`: EOPNOTSUPP for a nest parent, ENOENT when `fault` is not
    /// a fault object. (Linux 6.12's uAPI refuses a fault on a paging HWPT altogether; the
    /// `/dev/iommu` layer keeps that rule.)
    pub fn hwpt_alloc_paging_with_fault(
        &self,
        dev_id: ObjId,
        ioas: ObjId,
        flags: HwptFlags,
        fault: Option<ObjId>,
    ) -> Result<ObjId> {
        if fault.is_some() && flags.nest_parent {
            return Err(Error::NotSupported(
                "a nest parent cannot report page faults",
            ));
        }
        self.with(|st, c| {
            let dev = device_obj(st, c, dev_id)?.dev;
            let id = alloc_paging(st, c, dev, ioas, flags, false)?;
            if let Some(f) = fault {
                if let Err(e) = set_hwpt_fault(st, c, id, f) {
                    destroy_paging(st, c, id);
                    return Err(e);
                }
            }
            Ok(id)
        })
    }
}

impl Engine {
    /// The most recent page responses devices received (at most [`PAGE_RESPONSE_LOG`]),
    /// oldest first.
    pub fn page_responses(&self) -> Vec<PageResponseRecord> {
        self.with(|st| st.page_responses.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use uiommu_platform::memory::SimMemory;
    use uiommu_platform::Platform;

    fn setup() -> (Arc<Engine>, Context) {
        let engine = Engine::new(Platform::builtin(), crate::EngineConfig::default()).unwrap();
        let space = engine.add_space(SimMemory::new());
        let ctx = engine.open(space).unwrap();
        (engine, ctx)
    }

    fn req(grpid: u32, addr: u64, last: bool) -> PageRequest {
        PageRequest {
            flags: if last { IOPF_FLAGS_LAST_PAGE } else { 0 },
            grpid,
            addr,
            ..Default::default()
        }
    }

    #[test]
    fn partial_faults_join_the_group_of_their_last_page() {
        let (engine, ctx) = setup();
        let mock = engine.add_mock_device(0).unwrap();
        let d = ctx.device_bind(mock).unwrap();
        let ioas = ctx.ioas_alloc().unwrap();
        let fault = ctx.fault_alloc().unwrap();
        let h = ctx
            .hwpt_alloc_paging_with_fault(d, ioas, HwptFlags::default(), Some(fault))
            .unwrap();
        ctx.device_attach(d, h).unwrap();
        assert_eq!(ctx.device_iopf_enabled(d), Ok(true));
        assert_eq!(ctx.report_iopf(d, req(1, 0x10, false)), Ok(true));
        assert_eq!(ctx.report_iopf(d, req(2, 0x20, false)), Ok(true));
        assert_eq!(ctx.report_iopf(d, req(1, 0x30, false)), Ok(true));
        assert_eq!(ctx.fault_pending(fault), Ok((0, 0)));
        assert_eq!(ctx.report_iopf(d, req(1, 0x40, true)), Ok(true));
        // Partial faults most recent first, then the last page; one cookie for the group.
        let recs = ctx.fault_read(fault, 3).unwrap();
        let addrs: Vec<u64> = recs.iter().map(|r| r.addr).collect();
        assert_eq!(addrs, [0x30, 0x10, 0x40]);
        assert!(recs.iter().all(|r| r.cookie == 1 && r.dev_id == d));
        // A group never splits: room for 1 is EINVAL for a group of 2; room for 2 takes that
        // group only, the next read the group after it.
        assert_eq!(ctx.report_iopf(d, req(2, 0x50, true)), Ok(true));
        assert_eq!(ctx.report_iopf(d, req(3, 0x60, true)), Ok(true));
        assert_eq!(
            ctx.fault_read(fault, 1).map_err(|e| e.errno()),
            Err(crate::error::errno::EINVAL)
        );
        let two = ctx.fault_read(fault, 2).unwrap();
        assert_eq!(two.iter().map(|r| r.addr).collect::<Vec<_>>(), [0x20, 0x50]);
        assert_eq!(ctx.fault_read(fault, 3).unwrap().len(), 1);
        // Detach turns IOPF off and drops partial faults.
        assert_eq!(ctx.report_iopf(d, req(4, 0x70, false)), Ok(true));
        ctx.device_detach(d).unwrap();
        assert_eq!(ctx.device_iopf_enabled(d), Ok(false));
        ctx.device_attach(d, h).unwrap();
        assert_eq!(ctx.report_iopf(d, req(4, 0x80, true)), Ok(true));
        let recs = ctx.fault_read(fault, 8).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].addr, 0x80);
        // A PASID fault needs a nested attachment (the mock's user PASID table): dropped here.
        let p = PageRequest {
            flags: IOPF_FLAGS_LAST_PAGE | IOPF_FLAGS_PASID_VALID,
            pasid: 5,
            ..Default::default()
        };
        assert_eq!(ctx.report_iopf(d, p), Ok(false));
        engine.check_invariants().unwrap();
    }

    #[test]
    fn a_nest_parent_cannot_take_a_fault_and_other_iommus_cannot_do_iopf() {
        let (engine, ctx) = setup();
        let mock = engine.add_mock_device(0).unwrap();
        let dm = ctx.device_bind(mock).unwrap();
        let ioas = ctx.ioas_alloc().unwrap();
        let fault = ctx.fault_alloc().unwrap();
        let parent = HwptFlags {
            nest_parent: true,
            ..Default::default()
        };
        assert_eq!(
            ctx.hwpt_alloc_paging_with_fault(dm, ioas, parent, Some(fault))
                .map_err(|e| e.errno()),
            Err(crate::error::errno::EOPNOTSUPP)
        );
        assert_eq!(
            ctx.hwpt_alloc_paging_with_fault(dm, ioas, HwptFlags::default(), Some(ioas))
                .map_err(|e| e.errno()),
            Err(crate::error::errno::ENOENT)
        );
        let dma0 = engine
            .with_platform(|p| p.topology.find_name("dma0"))
            .unwrap();
        let dr = ctx.device_bind(dma0).unwrap();
        let h = ctx
            .hwpt_alloc_paging_with_fault(dr, ioas, HwptFlags::default(), Some(fault))
            .unwrap();
        assert_eq!(
            ctx.device_attach(dr, h).map_err(|e| e.errno()),
            Err(crate::error::errno::ENODEV)
        );
        assert_eq!(ctx.device_hwpt(dr), Ok(None));
        engine.check_invariants().unwrap();
    }

    #[test]
    fn cookies_are_the_lowest_free_from_one() {
        let mut f = FaultObj::default();
        assert_eq!(f.free_cookie(), Some(1));
        for k in [1, 2, 4] {
            f.response.insert(
                k,
                IopfGroup {
                    idev: ObjId(1),
                    dev: DeviceId(0),
                    hwpt: ObjId(2),
                    faults: vec![],
                },
            );
        }
        assert_eq!(f.free_cookie(), Some(3));
    }
}
