//! Device drivers as the IOMMU sees them.
//!
//! A function is unbound, bound to a driver that leaves DMA to its user (`vfio-pci`,
//! `pci-stub`: `driver_managed_dma`), or bound to a kernel driver that does DMA itself through
//! the default domain (`nvme`, ...). This module only records bindings; the guard that refuses
//! a DMA driver in a user-owned group lives with group ownership in `uiommu-core`.

use crate::ids::DeviceId;
use std::collections::HashMap;

/// A driver a function can be bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Driver {
    /// No driver.
    Unbound,
    /// `vfio-pci`: hands the device to userspace.
    VfioPci,
    /// `pci-stub`: claims the device and does nothing.
    PciStub,
    /// A kernel driver that does DMA on its own, by name (`nvme`, `e1000e`, ...).
    Dma(String),
}

impl Driver {
    /// Whether the driver manages DMA itself through its user (`driver_managed_dma`): such
    /// drivers may bind inside a user-owned group.
    pub fn driver_managed_dma(&self) -> bool {
        matches!(self, Driver::Unbound | Driver::VfioPci | Driver::PciStub)
    }
    /// The name sysfs shows (`None` when unbound).
    pub fn name(&self) -> Option<&str> {
        match self {
            Driver::Unbound => None,
            Driver::VfioPci => Some("vfio-pci"),
            Driver::PciStub => Some("pci-stub"),
            Driver::Dma(n) => Some(n),
        }
    }
    /// Parse a driver name; `""`/`"none"` is unbound.
    pub fn from_name(name: &str) -> Driver {
        match name {
            "" | "none" | "unbound" => Driver::Unbound,
            "vfio-pci" => Driver::VfioPci,
            "pci-stub" => Driver::PciStub,
            other => Driver::Dma(other.to_string()),
        }
    }
}

/// Which driver each function is bound to.
#[derive(Clone, Debug, Default)]
pub struct DriverRegistry {
    bound: HashMap<DeviceId, Driver>,
}

impl DriverRegistry {
    /// The driver bound to `dev` ([`Driver::Unbound`] if none).
    pub fn driver(&self, dev: DeviceId) -> &Driver {
        self.bound.get(&dev).unwrap_or(&Driver::Unbound)
    }
    /// Record a binding. No checks: callers enforce the ownership guard.
    pub fn set(&mut self, dev: DeviceId, driver: Driver) {
        if driver == Driver::Unbound {
            self.bound.remove(&dev);
        } else {
            self.bound.insert(dev, driver);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_and_stub_are_driver_managed_dma_but_nvme_is_not() {
        assert!(Driver::VfioPci.driver_managed_dma());
        assert!(Driver::PciStub.driver_managed_dma());
        assert!(!Driver::Dma("nvme".into()).driver_managed_dma());
        assert_eq!(Driver::from_name("nvme"), Driver::Dma("nvme".into()));
    }
}
