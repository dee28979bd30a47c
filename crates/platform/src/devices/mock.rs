//! The iommufd selftest mock device model (helper: to be written).
