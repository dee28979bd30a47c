//! What the VFIO type1 compatibility layer (`uiommu-uapi`'s `vfio_compat`, the kernel's
//! `iommufd/vfio_compat.c`) and the legacy group path (`vfio_group`) need from the engine
//! beyond the iommufd API: creating the compatibility IOAS, the page sizes and coherency of
//! the IOAS's domains, type1's unmap with cuts, and the accounting of a `/dev/vfio/vfio`
//! context.

use crate::engine::{ioas_in, Context, Ioas, State};
use crate::error::{Error, Result};
use crate::io_pagetable::{IoPagetable, PtEnv};
use crate::object::ObjId;
use crate::pages::AccountMode;
use crate::Object;
use uiommu_platform::pagetable::Prot;
use uiommu_platform::{Iova, UserVa, PAGE_SIZE};

impl Context {
    /// VFIO_IOMMU_MAP_DMA (`iommufd_vfio_map_dma`): map `len` bytes at `uva` to the fixed `iova`
    /// of `ioas` by `iopt_map_user_pages`, without IOMMU_IOAS_MAP's up-front EOVERFLOW for a
    /// `u64::MAX` size or IOVA: a size of 0 or within a page of the top is EINVAL and
    /// `uva + len` wrapping EOVERFLOW (`iopt_alloc_pages`), then a size or IOVA not aligned to
    /// the IOAS EINVAL and `iova + len` wrapping EOVERFLOW (`iopt_check_iova`).
    pub fn vfio_compat_map(
        &self,
        ioas: ObjId,
        uva: UserVa,
        len: u64,
        iova: Iova,
        prot: Prot,
    ) -> Result<Iova> {
        self.map_user_pages(ioas, uva, len, Some(iova), prot)
    }

    /// `iommufd_vfio_compat_ioas_create`: make sure the context has a compatibility IOAS,
    /// allocating one when none is set (it is then an ordinary object of the context, destroyed
    /// with it). Returns the compatibility IOAS.
    pub fn vfio_compat_ioas_create(&self) -> Result<ObjId> {
        self.with(|st, c| {
            let ctx = st.ctx_mut(c)?;
            if let Some(id) = ctx.vfio_ioas {
                if matches!(ctx.objects.get(id), Ok(Object::Ioas(_))) {
                    return Ok(id);
                }
            }
            let id = ctx.objects.insert(Object::Ioas(Box::new(Ioas {
                iopt: IoPagetable::new(),
                hwpts: Vec::new(),
            })))?;
            ctx.vfio_ioas = Some(id);
            Ok(id)
        })
    }

    /// Charge this context's pinned pages to the process (`mm->locked_vm`), as the kernel does
    /// for an iommufd opened through `/dev/vfio/vfio` (`IOPT_PAGES_ACCOUNT_MM`). No capability
    /// is needed: the kernel sets the mode at open. EBUSY once the context has objects.
    pub fn set_vfio_container_accounting(&self) -> Result<()> {
        self.with(|st, c| {
            let ctx = st.ctx_mut(c)?;
            if ctx.objects.len() != 0 {
                return Err(Error::Busy("the context already has objects"));
            }
            ctx.account_mode = AccountMode::Process;
            Ok(())
        })
    }

    /// `iommufd_get_pagesizes`: the page sizes every domain of `ioas` supports (all ones with
    /// no domain), with sizes below `PAGE_SIZE` folded into `PAGE_SIZE`, and at least the
    /// IOAS's IOVA alignment.
    pub fn vfio_compat_page_sizes(&self, ioas: ObjId) -> Result<u64> {
        self.with(|st, c| {
            let State { ctxs, platform, .. } = st;
            let i = ioas_in(ctxs, c, ioas)?;
            let mut bitmap = u64::MAX;
            for &d in i.iopt.domains() {
                if let Some(pt) = platform.iommu.page_table(d) {
                    bitmap &= pt.page_sizes();
                }
            }
            if bitmap & (PAGE_SIZE - 1) != 0 {
                bitmap &= !(PAGE_SIZE - 1);
                bitmap |= PAGE_SIZE;
            }
            Ok(bitmap.max(i.iopt.iova_alignment()))
        })
    }

    /// `iommufd_vfio_cc_iommu`: whether every paging HWPT of `ioas` enforces cache coherency
    /// (true with none).
    pub fn vfio_compat_cache_coherent(&self, ioas: ObjId) -> Result<bool> {
        self.with(|st, c| {
            let ctx = st.ctx(c)?;
            let hwpts = match ctx.objects.get(ioas)? {
                Object::Ioas(i) => i.hwpts.clone(),
                _ => {
                    return Err(Error::WrongType {
                        id: ioas.0,
                        expected: "an IOAS",
                    })
                }
            };
            Ok(hwpts.iter().all(|h| match ctx.objects.get(*h) {
                Ok(Object::HwptPaging(p)) => p.enforce_cc,
                _ => true,
            }))
        })
    }

    /// `iopt_cut_iova` on `ioas`: split the areas containing each of `iovas` so that the IOVA
    /// ends an area ([`IoPagetable::cut_iova`]).
    pub fn ioas_cut_iova(&self, ioas: ObjId, iovas: &[Iova]) -> Result<()> {
        self.with(|st, c| {
            let State {
                ctxs,
                platform,
                acct,
                ..
            } = st;
            let i = ioas_in(ctxs, c, ioas)?;
            i.iopt.cut_iova(&mut PtEnv { platform, acct }, iovas)
        })
    }

    /// `iopt_unmap_iova` (`range` = `Some((iova, len))`) or `iopt_unmap_all` (`None`) on
    /// `ioas`: the areas inside the range removed in IOVA order (the kernel's walk, accesses
    /// told to let go of their pins: [`crate::ioas::unmap_walk_notify`]); the bytes unmapped
    /// — 0, not an error, when nothing is mapped there (unlike IOMMU_IOAS_UNMAP) — with the
    /// outcome: EINVAL zero length, EOVERFLOW wrap, ENOENT at an area the range cuts,
    /// EDEADLK when an access does not let go. The bytes count also when it fails (the areas
    /// before the refusal stay removed), as VFIO_IOMMU_UNMAP_DMA reports them.
    pub fn ioas_unmap_range(&self, ioas: ObjId, range: Option<(Iova, u64)>) -> (u64, Result<()>) {
        let bounds = match range {
            None => Ok((0, u64::MAX)),
            Some((iova, len)) => {
                crate::io_pagetable::last_of(iova.raw(), len).map(|l| (iova.raw(), l))
            }
        };
        crate::ioas::unmap_walk_notify(self, ioas, bounds)
    }
}

#[cfg(test)]
mod tests {
    use crate::Engine;
    use std::sync::Arc;
    use uiommu_platform::memory::{SimMemory, UserMemory};
    use uiommu_platform::pagetable::Prot;
    use uiommu_platform::{Iova, UserVa};

    const RW: Prot = Prot {
        read: true,
        write: true,
    };

    fn ctx() -> crate::Context {
        let e = Engine::builtin();
        let mem = SimMemory::new();
        mem.map(UserVa(0x10_0000), 0x10_0000, true);
        let space = e.add_space(mem as Arc<dyn UserMemory>);
        e.open(space).unwrap()
    }

    #[test]
    fn compat_ioas_is_created_once() {
        let c = ctx();
        let a = c.vfio_compat_ioas_create().unwrap();
        assert_eq!(c.vfio_compat_ioas_create().unwrap(), a);
        assert_eq!(c.vfio_ioas().unwrap(), a);
        c.destroy(a).unwrap();
        let b = c.vfio_compat_ioas_create().unwrap();
        assert_eq!(c.vfio_ioas().unwrap(), b);
    }

    #[test]
    fn unmap_range_of_nothing_is_zero_bytes_and_cuts_split_areas() {
        let c = ctx();
        let ioas = c.ioas_alloc().unwrap();
        let ok = |r: (u64, crate::Result<()>)| {
            r.1.unwrap();
            r.0
        };
        assert_eq!(ok(c.ioas_unmap_range(ioas, Some((Iova(0), 0x1000)))), 0);
        assert_eq!(ok(c.ioas_unmap_range(ioas, None)), 0);
        c.ioas_map(ioas, UserVa(0x10_0000), 0x4000, Some(Iova(0x8000)), RW)
            .unwrap();
        // A middle page: ENOENT without cuts, nothing unmapped.
        let (n, r) = c.ioas_unmap_range(ioas, Some((Iova(0x9000), 0x1000)));
        assert_eq!((n, r.unwrap_err().errno()), (0, 2));
        c.set_huge_pages(ioas, false).unwrap();
        c.ioas_cut_iova(ioas, &[Iova(0x9fff), Iova(0x8fff)])
            .unwrap();
        assert_eq!(
            ok(c.ioas_unmap_range(ioas, Some((Iova(0x9000), 0x1000)))),
            0x1000
        );
        // A range over the first area and into the last one: the first goes, then ENOENT,
        // and the bytes of the first are reported (the kernel's walk).
        let (n, r) = c.ioas_unmap_range(ioas, Some((Iova(0x8000), 0x3000)));
        assert_eq!((n, r.unwrap_err().errno()), (0x1000, 2));
        assert_eq!(ok(c.ioas_unmap_range(ioas, None)), 0x2000);
        assert!(c.vfio_compat_cache_coherent(ioas).unwrap());
        assert_eq!(c.vfio_compat_page_sizes(ioas).unwrap(), !0xfff);
    }

    #[test]
    fn container_accounting_needs_an_empty_context() {
        let c = ctx();
        c.set_vfio_container_accounting().unwrap();
        assert!(c.rlimit_mode_process().unwrap());
        c.ioas_alloc().unwrap();
        assert_eq!(c.set_vfio_container_accounting().unwrap_err().errno(), 16);
    }
}
