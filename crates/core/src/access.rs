//! Access objects: how emulated devices (and in-process consumers) reach an IOAS without an
//! IOMMU domain, as the kernel's `iommufd_access` does for mdev-style drivers.
//!
//! An access is created with [`AccessOps`], attached to an IOAS, and then pins pages (getting
//! their frames) or reads and writes through IOVAs. When an IOVA range it holds pins in is
//! unmapped, the engine calls [`AccessOps::unmap`] *without* holding its lock, so the owner can
//! unpin; then it retries the unmap. An owner that does not let go makes the unmap fail with
//! EDEADLK after a few rounds, leaving the mapping in place.

use crate::engine::{ioas_in, Context, State};
use crate::error::{Error, Result};
use crate::group::CtxId;
use crate::io_pagetable::{AccessId, PtEnv, RwBuf};
use crate::object::ObjId;
use crate::Object;
use std::sync::Arc;
use uiommu_platform::memory::Pfn;
use uiommu_platform::Iova;

/// What the owner of an access is told.
pub trait AccessOps: Send + Sync {
    /// `[iova, iova + len)` is being unmapped from the access's IOAS: unpin every page you hold
    /// in it (with [`Context::access_unpin`]) before returning.
    fn unmap(&self, ctx: &Context, access: ObjId, iova: Iova, len: u64);
}

/// An access object.
pub(crate) struct AccessObj {
    pub ioas: Option<ObjId>,
    pub ops: Arc<dyn AccessOps>,
    /// The owner pins pages (the kernel's `needs_pin_pages`): IOVAs of its IOAS must then be
    /// page aligned.
    pub needs_pin_pages: bool,
}

impl std::fmt::Debug for AccessObj {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessObj")
            .field("ioas", &self.ioas)
            .finish()
    }
}

/// The kernel gives up on an access that keeps its pins after this many notifications.
pub(crate) const UNMAP_NOTIFY_ROUNDS: usize = 100;

fn access_obj(st: &mut State, c: CtxId, id: ObjId) -> Result<&mut AccessObj> {
    match st.ctx_mut(c)?.objects.get_mut(id)? {
        Object::Access(a) => Ok(a),
        _ => Err(Error::WrongType {
            id: id.0,
            expected: "an access",
        }),
    }
}

/// The length checks the kernel makes before it looks at the access: EINVAL for zero length,
/// EOVERFLOW when the range wraps.
fn check_len(iova: Iova, len: u64) -> Result<()> {
    if len == 0 {
        return Err(Error::Invalid("zero length"));
    }
    iova.raw().checked_add(len - 1).ok_or(Error::Overflow)?;
    Ok(())
}

/// Unpin everything an access holds and detach it from its IOAS.
pub(crate) fn release(st: &mut State, c: CtxId, id: ObjId) {
    let Ok(a) = access_obj(st, c, id) else { return };
    let Some(ioas_id) = a.ioas.take() else { return };
    let State {
        ctxs,
        platform,
        acct,
        ..
    } = st;
    if let Ok(ioas) = ioas_in(ctxs, c, ioas_id) {
        ioas.iopt
            .detach_access(&mut PtEnv { platform, acct }, AccessId(id.0));
    }
    if let Some(ctx) = ctxs.get_mut(&c) {
        ctx.objects.put_user(ioas_id);
    }
}

impl Context {
    /// Create an access object owned by the caller (an emulated device); returns its id.
    pub fn access_create(&self, ops: Arc<dyn AccessOps>) -> Result<ObjId> {
        self.with(|st, c| {
            let ctx = st.ctx_mut(c)?;
            let id = ctx.objects.insert(Object::Access(AccessObj {
                ioas: None,
                ops,
                needs_pin_pages: true,
            }))?;
            // The owner holds it until access_destroy: DESTROY sees it in use.
            ctx.objects.get_user(id);
            Ok(id)
        })
    }

    /// Attach an access to an IOAS (EINVAL if already attached).
    pub fn access_attach(&self, access: ObjId, ioas: ObjId) -> Result<()> {
        self.with(|st, c| {
            let a = access_obj(st, c, access)?;
            if a.ioas.is_some() {
                return Err(Error::Invalid("the access is already attached"));
            }
            let pin = a.needs_pin_pages;
            ioas_in(&mut st.ctxs, c, ioas)?
                .iopt
                .attach_access(AccessId(access.0), pin)?;
            st.ctx_mut(c)?.objects.get_user(ioas);
            access_obj(st, c, access)?.ioas = Some(ioas);
            Ok(())
        })
    }

    /// Move an attached access to another IOAS: the owner is told to unpin everything (as for
    /// an unmap of the whole space), then whatever it still holds is dropped. ENOENT when the
    /// access is not attached.
    pub fn access_replace(&self, access: ObjId, ioas: ObjId) -> Result<()> {
        let ops = self.with(|st, c| {
            let a = access_obj(st, c, access)?;
            let cur = a
                .ioas
                .ok_or(Error::NotFound("the access is not attached"))?;
            if cur == ioas {
                return Ok(None);
            }
            let pin = a.needs_pin_pages;
            ioas_in(&mut st.ctxs, c, ioas)?
                .iopt
                .attach_access(AccessId(access.0), pin)?;
            Ok(Some(access_obj(st, c, access)?.ops.clone()))
        })?;
        let Some(ops) = ops else { return Ok(()) };
        ops.unmap(self, access, Iova(0), u64::MAX);
        self.with(|st, c| {
            release(st, c, access);
            st.ctx_mut(c)?.objects.get_user(ioas);
            access_obj(st, c, access)?.ioas = Some(ioas);
            Ok(())
        })
    }

    /// Tell an attached access's owner to unpin everything, outside the engine's lock.
    fn access_notify_all(&self, access: ObjId) -> Result<()> {
        let ops = self.with(|st, c| {
            let a = access_obj(st, c, access)?;
            Ok(a.ioas.map(|_| a.ops.clone()))
        })?;
        if let Some(ops) = ops {
            ops.unmap(self, access, Iova(0), u64::MAX);
        }
        Ok(())
    }

    /// Detach an access from its IOAS: the owner is told to unpin everything first, then
    /// whatever it still holds is dropped.
    pub fn access_detach(&self, access: ObjId) -> Result<()> {
        self.access_notify_all(access)?;
        self.with(|st, c| {
            access_obj(st, c, access)?;
            release(st, c, access);
            Ok(())
        })
    }

    /// Destroy an access (its owner is done with it), detaching it first.
    pub fn access_destroy(&self, access: ObjId) -> Result<()> {
        self.access_notify_all(access)?;
        self.with(|st, c| {
            access_obj(st, c, access)?;
            release(st, c, access);
            let ctx = st.ctx_mut(c)?;
            ctx.objects.put_user(access);
            ctx.objects.remove(access).map(|_| ())
        })
    }

    /// Pin the pages behind `[iova, iova + len)` for the access; returns one frame per 4 KiB
    /// page. The range stays mapped until unpinned (an unmap first asks the owner).
    pub fn access_pin(&self, access: ObjId, iova: Iova, len: u64, write: bool) -> Result<Vec<Pfn>> {
        self.with(|st, c| {
            check_len(iova, len)?;
            let ioas_id = access_obj(st, c, access)?
                .ioas
                .ok_or(Error::NotFound("the access is not attached"))?;
            let State {
                ctxs,
                platform,
                acct,
                ..
            } = st;
            let ioas = ioas_in(ctxs, c, ioas_id)?;
            ioas.iopt.access_pin(
                &mut PtEnv { platform, acct },
                AccessId(access.0),
                iova,
                len,
                write,
            )
        })
    }

    /// Unpin a range pinned by [`Context::access_pin`] (the same iova and length; a range that
    /// was not pinned is ignored, as the kernel's unpin is).
    pub fn access_unpin(&self, access: ObjId, iova: Iova, len: u64) -> Result<()> {
        self.with(|st, c| {
            let ioas_id = access_obj(st, c, access)?
                .ioas
                .ok_or(Error::NotFound("the access is not attached"))?;
            let State {
                ctxs,
                platform,
                acct,
                ..
            } = st;
            let ioas = ioas_in(ctxs, c, ioas_id)?;
            ioas.iopt
                .access_unpin(&mut PtEnv { platform, acct }, AccessId(access.0), iova, len);
            Ok(())
        })
    }

    /// Read or write through the access's IOAS at `iova`.
    pub fn access_rw(&self, access: ObjId, iova: Iova, buf: RwBuf<'_>) -> Result<()> {
        self.with(|st, c| {
            let len = match &buf {
                RwBuf::Read(b) => b.len(),
                RwBuf::Write(b) => b.len(),
            };
            check_len(iova, len as u64)?;
            let ioas_id = access_obj(st, c, access)?
                .ioas
                .ok_or(Error::NotFound("the access is not attached"))?;
            let State {
                ctxs,
                platform,
                acct,
                ..
            } = st;
            let ioas = ioas_in(ctxs, c, ioas_id)?;
            ioas.iopt
                .access_rw(&mut PtEnv { platform, acct }, iova, buf)
        })
    }
}
