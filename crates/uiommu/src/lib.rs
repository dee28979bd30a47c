//! uiommu
