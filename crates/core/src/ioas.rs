//! The IOAS operations of a context (the kernel's `ioas.c`): allocation, allowed IOVAs and
//! ranges, map, copy, unmap — the walk of `iopt_unmap_iova_range` with its access
//! notifications, shared with the VFIO type1 compatibility unmap — the options, and the VFIO
//! compatibility IOAS. The I/O page table underneath is `io_pagetable.rs`.

use crate::access::UNMAP_NOTIFY_ROUNDS;
use crate::engine::{
    caller_caps, ioas_in, ioas_mut, Context, Ioas, IovaRanges, State, CALLER_SPACE,
};
use crate::error::{Error, Result};
use crate::io_pagetable::{last_of, IoPagetable, PtEnv, UnmapStop};
use crate::object::ObjId;
use crate::pages::AccountMode;
use crate::{AccessOps, Object};
use std::sync::Arc;
use uiommu_platform::pagetable::Prot;
use uiommu_platform::{Iova, Range, UserVa};

impl Context {
    /// IOMMU_IOAS_ALLOC: a new, empty I/O address space.
    pub fn ioas_alloc(&self) -> Result<ObjId> {
        self.with(|st, c| {
            st.ctx_mut(c)?
                .objects
                .insert(crate::Object::Ioas(Box::new(Ioas {
                    iopt: IoPagetable::new(),
                    hwpts: Vec::new(),
                })))
        })
    }

    /// IOMMU_IOAS_ALLOW_IOVAS: restrict automatic and fixed IOVAs to `ranges` (empty: no
    /// restriction).
    pub fn ioas_allow_iovas(&self, ioas: ObjId, ranges: &[Range]) -> Result<()> {
        self.with(|st, c| ioas_mut(st, c, ioas)?.iopt.set_allowed(ranges))
    }

    /// IOMMU_IOAS_IOVA_RANGES: the usable IOVA ranges and the required alignment.
    pub fn ioas_iova_ranges(&self, ioas: ObjId) -> Result<IovaRanges> {
        self.with(|st, c| {
            let ioas = ioas_mut(st, c, ioas)?;
            Ok(IovaRanges {
                ranges: ioas.iopt.iova_ranges(),
                alignment: ioas.iopt.iova_alignment(),
            })
        })
    }

    /// IOMMU_IOAS_MAP: map `len` bytes of the program's memory at `uva` into the IOAS at `iova`
    /// (or at an IOVA the allocator picks); returns the IOVA. A `len` or fixed `iova` of
    /// `u64::MAX` is EOVERFLOW first (`iommufd_ioas_map`'s own check).
    pub fn ioas_map(
        &self,
        ioas: ObjId,
        uva: UserVa,
        len: u64,
        iova: Option<Iova>,
        prot: Prot,
    ) -> Result<Iova> {
        if len == u64::MAX || iova.is_some_and(|i| i.raw() == u64::MAX) {
            return Err(Error::Overflow);
        }
        self.map_user_pages(ioas, uva, len, iova, prot)
    }

    /// [`Context::ioas_map`] without IOMMU_IOAS_MAP's own EOVERFLOW check of `u64::MAX`
    /// (`iommufd_ioas_map`): the kernel's `iopt_map_user_pages`, which VFIO_IOMMU_MAP_DMA calls
    /// directly, so its size and IOVA are checked by `iopt_alloc_pages` and `iopt_check_iova`
    /// alone.
    pub(crate) fn map_user_pages(
        &self,
        ioas: ObjId,
        uva: UserVa,
        len: u64,
        iova: Option<Iova>,
        prot: Prot,
    ) -> Result<Iova> {
        if !prot.read && !prot.write {
            return Err(Error::Invalid("a mapping must be readable or writable"));
        }
        self.with(|st, c| {
            let ctx = st.ctx(c)?;
            let space = CALLER_SPACE.with(|s| s.get()).unwrap_or(ctx.space);
            let mode = if caller_caps().map_or(st.config.cap_ipc_lock, |c| c.cap_ipc_lock) {
                AccountMode::None
            } else {
                ctx.account_mode
            };
            let State {
                ctxs,
                platform,
                acct,
                ..
            } = st;
            let ioas = ioas_in(ctxs, c, ioas)?;
            let mut env = PtEnv { platform, acct };
            ioas.iopt
                .map_user(&mut env, space, uva, len, iova, prot, mode)
        })
    }

    /// IOMMU_IOAS_COPY: map the pages behind `[src_iova, src_iova + len)` of `src` into `dst`
    /// as well, sharing them (no new pins); returns the destination IOVA.
    pub fn ioas_copy(
        &self,
        dst: ObjId,
        src: ObjId,
        src_iova: Iova,
        len: u64,
        dst_iova: Option<Iova>,
        prot: Prot,
    ) -> Result<Iova> {
        if len == u64::MAX
            || src_iova.raw() == u64::MAX
            || dst_iova.is_some_and(|i| i.raw() == u64::MAX)
        {
            return Err(Error::Overflow);
        }
        if !prot.read && !prot.write {
            return Err(Error::Invalid("a mapping must be readable or writable"));
        }
        self.with(|st, c| {
            let list = ioas_in(&mut st.ctxs, c, src)?
                .iopt
                .get_pages(src_iova, len)?;
            let State {
                ctxs,
                platform,
                acct,
                ..
            } = st;
            let dst = ioas_in(ctxs, c, dst)?;
            let mut env = PtEnv { platform, acct };
            dst.iopt.map_pages(&mut env, list, dst_iova, prot)
        })
    }

    /// IOMMU_IOAS_UNMAP of `[iova, iova + len)`: the range must cover whole mappings. Accesses
    /// holding pins in it are told to let go first. Returns the bytes unmapped.
    pub fn ioas_unmap(&self, ioas: ObjId, iova: Iova, len: u64) -> Result<u64> {
        unmap_with_notify(self, ioas, Some((iova, len)))
    }

    /// IOMMU_IOAS_UNMAP of everything (iova 0, length u64::MAX). Returns the bytes unmapped.
    pub fn ioas_unmap_all(&self, ioas: ObjId) -> Result<u64> {
        unmap_with_notify(self, ioas, None)
    }

    /// IOMMU_OPTION_RLIMIT_MODE get: whether pins are charged to the process (`true`) or the
    /// user (`false`).
    pub fn rlimit_mode_process(&self) -> Result<bool> {
        self.with(|st, c| Ok(st.ctx(c)?.account_mode == AccountMode::Process))
    }

    /// IOMMU_OPTION_RLIMIT_MODE set. EPERM without CAP_SYS_RESOURCE, EBUSY once the context has
    /// objects.
    pub fn set_rlimit_mode_process(&self, process: bool) -> Result<()> {
        self.with(|st, c| {
            if !caller_caps().map_or(st.config.cap_sys_resource, |c| c.cap_sys_resource) {
                return Err(Error::Permission(
                    "setting RLIMIT_MODE needs CAP_SYS_RESOURCE",
                ));
            }
            let ctx = st.ctx_mut(c)?;
            if ctx.objects.len() != 0 {
                return Err(Error::Busy("the context already has objects"));
            }
            ctx.account_mode = if process {
                AccountMode::Process
            } else {
                AccountMode::User
            };
            Ok(())
        })
    }

    /// IOMMU_OPTION_HUGE_PAGES get for an IOAS.
    pub fn huge_pages(&self, ioas: ObjId) -> Result<bool> {
        self.with(|st, c| Ok(ioas_mut(st, c, ioas)?.iopt.large_pages()))
    }

    /// IOMMU_OPTION_HUGE_PAGES set for an IOAS (disabling is EINVAL once domains hold maps).
    pub fn set_huge_pages(&self, ioas: ObjId, enabled: bool) -> Result<()> {
        self.with(|st, c| {
            let State {
                ctxs,
                platform,
                acct,
                ..
            } = st;
            let ioas = ioas_in(ctxs, c, ioas)?;
            ioas.iopt
                .set_large_pages(&mut PtEnv { platform, acct }, enabled)
        })
    }

    /// The IOAS the VFIO type1 compatibility layer uses (IOMMU_VFIO_IOAS get): ENODEV if none.
    pub fn vfio_ioas(&self) -> Result<ObjId> {
        self.with(|st, c| {
            st.ctx(c)?
                .vfio_ioas
                .ok_or(Error::NoDevice("no VFIO compatibility IOAS"))
        })
    }

    /// IOMMU_VFIO_IOAS set (`Some`) or clear (`None`).
    pub fn set_vfio_ioas(&self, ioas: Option<ObjId>) -> Result<()> {
        self.with(|st, c| {
            if let Some(id) = ioas {
                ioas_mut(st, c, id)?;
            }
            st.ctx_mut(c)?.vfio_ioas = ioas;
            Ok(())
        })
    }

    /// The IOAS's mappings, ascending by IOVA.
    pub fn ioas_areas(&self, ioas: ObjId) -> Result<Vec<crate::io_pagetable::AreaInfo>> {
        self.with(|st, c| Ok(ioas_mut(st, c, ioas)?.iopt.areas()))
    }
}

/// The kernel's `iopt_unmap_iova_range` with its access notifications: the areas of
/// `start..=last` removed in IOVA order; at an area an access holds pins in, the accesses
/// holding pins in that area are told to let go ([`AccessOps::unmap`], outside the engine
/// lock) and the walk goes on from it; after 100 notifications with no progress past the area
/// (the kernel's count, started anew when the walk meets an area that does not start where it
/// stood) EDEADLK. ENOENT at an area that sticks out of the range. The bytes unmapped come
/// back with the outcome: areas removed before a refusal stay removed, as in the kernel.
///
/// `bounds` is the range `start..=last`, or the refusal of the caller's checks of it, which
/// comes after the IOAS lookup (ENOENT), in the kernel's order, under the same lock.
pub(crate) fn unmap_walk_notify(
    ctx: &Context,
    ioas: ObjId,
    bounds: Result<(u64, u64)>,
) -> (u64, Result<()>) {
    let (start, last) = match &bounds {
        Ok(b) => *b,
        Err(_) => (0, 0),
    };
    let mut bounds = Some(bounds);
    let mut bytes = 0u64;
    let mut at = start;
    let mut tries = 0usize;
    loop {
        let pass = ctx.with(|st, c| {
            let State {
                ctxs,
                platform,
                acct,
                ..
            } = st;
            let ioas = ioas_in(ctxs, c, ioas)?;
            if let Some(b) = bounds.take() {
                b?;
            }
            Ok(ioas
                .iopt
                .unmap_walk(&mut PtEnv { platform, acct }, at, last))
        });
        let pass = match pass {
            Ok(p) => p,
            Err(e) => return (bytes, Err(e)),
        };
        bytes = bytes.saturating_add(pass.bytes);
        if pass.new_area {
            tries = 0;
        }
        let (first, len) = match pass.stop {
            UnmapStop::Done => return (bytes, Ok(())),
            UnmapStop::Cut => return (bytes, Err(Error::NotMapped(Range { start, last }))),
            UnmapStop::Busy { first, len } => (first, len),
        };
        at = first;
        let holders: Result<Vec<(ObjId, Arc<dyn AccessOps>)>> = ctx.with(|st, c| {
            let ctx = st.ctx(c)?;
            let ids = match ctx.objects.get(ioas)? {
                Object::Ioas(i) => i.iopt.accesses_in(Iova(first), len),
                _ => Vec::new(),
            };
            Ok(ids
                .into_iter()
                .filter_map(|a| match ctx.objects.get(ObjId(a.0)) {
                    Ok(Object::Access(o)) => Some((ObjId(a.0), o.ops.clone())),
                    _ => None,
                })
                .collect())
        });
        let holders = match holders {
            Ok(h) => h,
            Err(e) => return (bytes, Err(e)),
        };
        if holders.is_empty() {
            return (
                bytes,
                Err(Error::Deadlock(
                    "the area is held by pins that no access owns",
                )),
            );
        }
        for (id, ops) in holders {
            ops.unmap(ctx, id, Iova(first), len);
        }
        tries += 1;
        if tries > UNMAP_NOTIFY_ROUNDS {
            return (
                bytes,
                Err(Error::Deadlock("an access did not unpin its pages")),
            );
        }
    }
}

/// IOMMU_IOAS_UNMAP (the kernel's `iommufd_ioas_unmap`): `range` `None`, or iova 0 with
/// length `u64::MAX`, unmaps everything (and succeeds on an empty IOAS); otherwise EOVERFLOW
/// for an iova or length of `u64::MAX`, EINVAL for zero length, EOVERFLOW when the range wraps,
/// the walk of [`unmap_walk_notify`], and ENOENT when nothing was mapped there. The IOAS is
/// looked up first (ENOENT). The bytes unmapped; a refusal reports none, as the ioctl does
/// (the areas it removed before stay removed). One engine lock per pass of the walk (one in
/// all when no access holds pins).
pub(crate) fn unmap_with_notify(
    ctx: &Context,
    ioas: ObjId,
    range: Option<(Iova, u64)>,
) -> Result<u64> {
    let (bounds, all) = match range {
        None => (Ok((0, u64::MAX)), true),
        Some((iova, len)) if iova.raw() == 0 && len == u64::MAX => (Ok((0, u64::MAX)), true),
        Some((iova, len)) if iova.raw() == u64::MAX || len == u64::MAX => {
            (Err(Error::Overflow), false)
        }
        Some((iova, len)) => (last_of(iova.raw(), len).map(|l| (iova.raw(), l)), false),
    };
    let (bytes, r) = unmap_walk_notify(ctx, ioas, bounds.clone());
    r?;
    if !all && bytes == 0 {
        let (start, last) = bounds?;
        return Err(Error::NotMapped(Range { start, last }));
    }
    Ok(bytes)
}
