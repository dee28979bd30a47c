//! The identifiers the platform's parts share: PCI functions ([`DeviceId`]), their addresses
//! ([`Bdf`]), IOMMU groups ([`GroupId`]) and the requester ids DMA carries ([`Rid`]).
//!
//! They live apart from the topology, the IOMMU and the driver registry so that each of those
//! names the others' objects without importing the others.

use std::fmt;

/// A requester id: the bus/device/function (plus segment) a device's DMA carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rid(pub u32);

/// Index of a PCI function in the platform.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

/// An IOMMU group number (as in `/sys/kernel/iommu_groups/<n>`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

/// A PCI address `segment:bus:device.function`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI segment (domain).
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl Bdf {
    /// `device << 3 | function`.
    pub fn devfn(&self) -> u8 {
        ((self.device & 0x1f) << 3) | (self.function & 7)
    }
    /// The requester id this address carries: `(segment << 16) | (bus << 8) | devfn`.
    pub fn rid(&self) -> Rid {
        rid_of(self.segment, self.bus, self.devfn())
    }
}

pub(crate) fn rid_of(segment: u16, bus: u8, devfn: u8) -> Rid {
    Rid((u32::from(segment) << 16) | (u32::from(bus) << 8) | u32::from(devfn))
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment, self.bus, self.device, self.function
        )
    }
}
