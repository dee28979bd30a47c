//! Destroying objects, and closing a context.
//!
//! DESTROY removes one IOAS, HWPT or fault queue that nothing depends on (a fault queue's
//! groups are answered INVALID), or a selftest object (which detaches, unbinds and unplugs its
//! mock device). Closing a context removes everything in dependency order: accesses
//! (unpinning), selftest objects (their mock devices), devices (detach, unbind, release the
//! group; outstanding page faults answered), nested HWPTs, paging HWPTs (emptying and freeing
//! their domains), fault queues (answering what they hold), IOASes (unmapping, unpinning,
//! uncharging). Teardown never fails.

use crate::device::{destroy_nested, destroy_paging, unbind};
use crate::engine::{Engine, State};
use crate::error::{Error, Result};
use crate::group::CtxId;
use crate::io_pagetable::PtEnv;
use crate::object::ObjId;
use crate::Object;

/// IOMMU_DESTROY of object `id`.
pub(crate) fn destroy(st: &mut State, c: CtxId, id: ObjId) -> Result<()> {
    let ctx = st.ctx_mut(c)?;
    let kind = ctx.objects.get(id)?.kind();
    if ctx.objects.users(id) > 0 {
        return Err(Error::Busy("the object is in use"));
    }
    match kind {
        crate::object::ObjType::Ioas => destroy_ioas(st, c, id),
        crate::object::ObjType::HwptPaging => destroy_paging(st, c, id),
        crate::object::ObjType::HwptNested => destroy_nested(st, c, id),
        crate::object::ObjType::Selftest => crate::selftest_support::destroy_selftest(st, c, id),
        crate::object::ObjType::Fault => crate::fault::destroy_fault(st, c, id),
        // Devices and accesses always have their driver as a user; unreachable in practice.
        _ => return Err(Error::Busy("the object belongs to its driver")),
    }
    Ok(())
}

fn destroy_ioas(st: &mut State, c: CtxId, id: ObjId) {
    let State {
        ctxs,
        platform,
        acct,
        ..
    } = st;
    let Some(ctx) = ctxs.get_mut(&c) else { return };
    if let Ok(Object::Ioas(mut ioas)) = ctx.objects.remove(id) {
        // No HWPT or access uses it (users was 0), so nothing can refuse the unmap.
        let _ = ioas.iopt.unmap_all(&mut PtEnv { platform, acct });
    }
    if ctx.vfio_ioas == Some(id) {
        ctx.vfio_ioas = None;
    }
}

/// Tear down context `c` completely and forget it.
pub(crate) fn close(engine: &Engine, c: CtxId) {
    engine.with(|st| {
        let Some(ctx) = st.ctxs.get(&c) else { return };
        let objs: Vec<(ObjId, crate::object::ObjType)> =
            ctx.objects.iter().map(|(id, o)| (id, o.kind())).collect();
        use crate::object::ObjType::*;
        for (id, _) in objs.iter().filter(|(_, k)| *k == Access) {
            crate::access::release(st, c, *id);
            if let Some(ctx) = st.ctxs.get_mut(&c) {
                ctx.objects.put_user(*id);
                let _ = ctx.objects.remove(*id);
            }
        }
        for (id, _) in objs.iter().filter(|(_, k)| *k == Selftest) {
            crate::selftest_support::destroy_selftest(st, c, *id);
        }
        for (id, _) in objs.iter().filter(|(_, k)| *k == Device) {
            let _ = unbind(st, c, *id);
        }
        for (id, _) in objs.iter().filter(|(_, k)| *k == HwptNested) {
            destroy_nested(st, c, *id);
        }
        for (id, _) in objs.iter().filter(|(_, k)| *k == HwptPaging) {
            destroy_paging(st, c, *id);
        }
        for (id, _) in objs.iter().filter(|(_, k)| *k == Fault) {
            crate::fault::destroy_fault(st, c, *id);
        }
        for (id, _) in objs.iter().filter(|(_, k)| *k == Ioas) {
            destroy_ioas(st, c, *id);
        }
        if let Some(ctx) = st.ctxs.remove(&c) {
            crate::coherency::set(st, &ctx.coherency, false);
        }
    })
}
