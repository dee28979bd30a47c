//! Read-only queries the uAPI layer needs about objects, beyond the operations of
//! [`crate::engine`] and `device`.
//!
//! IOMMU_HWPT_GET_DIRTY_BITMAP and IOMMU_HWPT_SET_DIRTY_TRACKING check the IOVA range against
//! the HWPT's IOAS (alignment, mapped areas) and whether tracking is on before they touch the
//! page table; [`Context::hwpt_paging_info`] gives them that in one locked look-up.

use crate::engine::Context;
use crate::error::{Error, Result};
use crate::object::ObjId;
use crate::Object;
use uiommu_platform::pagetable::PageTableFormat;

/// What the uAPI needs to know about a paging HWPT.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HwptPagingInfo {
    /// The IOAS whose mappings the HWPT holds.
    pub ioas: ObjId,
    /// Created by an attach to an IOAS rather than by IOMMU_HWPT_ALLOC.
    pub auto: bool,
    /// Allocated with IOMMU_HWPT_ALLOC_NEST_PARENT.
    pub nest_parent: bool,
    /// The device's IOMMU can track dirty pages in this domain.
    pub dirty_capable: bool,
    /// Allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING: the HWPT has dirty-tracking operations.
    pub dirty_ops: bool,
    /// Dirty tracking is on now.
    pub dirty_tracking: bool,
    /// The page-table format of its domain.
    pub format: PageTableFormat,
    /// The smallest page size of its domain: the unit [`Context::hwpt_read_dirty`] reports.
    pub granule: u64,
}

impl Context {
    /// Facts about paging HWPT `hwpt` (ENOENT when it is absent or not a paging HWPT).
    pub fn hwpt_paging_info(&self, hwpt: ObjId) -> Result<HwptPagingInfo> {
        self.with(|st, c| {
            let (ioas, domain, auto, nest_parent, dirty_capable, dirty_ops, format) =
                match st.ctx(c)?.objects.get(hwpt)? {
                    Object::HwptPaging(h) => (
                        h.ioas,
                        h.domain,
                        h.auto,
                        h.nest_parent,
                        h.dirty_capable,
                        h.dirty_ops,
                        h.format,
                    ),
                    _ => {
                        return Err(Error::WrongType {
                            id: hwpt.0,
                            expected: "a paging HWPT",
                        })
                    }
                };
            let pt = st.platform.iommu.page_table(domain);
            let dirty_tracking = pt.is_some_and(|pt| pt.dirty_tracking());
            let sizes = pt.map_or(0, |pt| pt.page_sizes());
            let granule = if sizes == 0 {
                uiommu_platform::addr::PAGE_SIZE
            } else {
                1u64 << sizes.trailing_zeros()
            };
            Ok(HwptPagingInfo {
                ioas,
                auto,
                nest_parent,
                dirty_capable,
                dirty_ops,
                dirty_tracking,
                format,
                granule,
            })
        })
    }
}
