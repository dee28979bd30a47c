//! The /dev/iommu file (to be written).
