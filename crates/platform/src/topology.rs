//! PCI topology and IOMMU groups.
//!
//! A platform is a PCI tree read from TOML ([`Topology::from_toml`]) or the built-in default
//! ([`Topology::builtin_default`]). IOMMU groups are derived from it the way Linux derives them
//! (`pci_device_group`): a function joins the group of any function it aliases with, of
//! multifunction siblings without ACS, and of everything below the first upstream bridge or port
//! without ACS isolation; a conventional-PCI bridge makes every device behind it use the
//! bridge's requester id (DMA aliasing), so they share one group.

use crate::drivers::Driver;
use crate::hw::Rid;
use std::fmt;

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

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.segment, self.bus, self.device, self.function)
    }
}

/// The device model behind a PCI function.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// The `dma-engine` DMA device ([`crate::devices::dma_engine`]).
    DmaEngine,
    /// The iommufd selftest mock device ([`crate::devices::mock`]).
    Mock,
    /// A function with config space only (bridges, ports, devices uiommu does not model).
    Generic,
}

/// One PCI function.
#[derive(Clone, Debug)]
pub struct PciDevice {
    /// Platform index.
    pub id: DeviceId,
    /// PCI address.
    pub bdf: Bdf,
    /// A short human name from the platform file ("nic0", "gpu", ...).
    pub name: String,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// 24-bit class code.
    pub class: u32,
    /// Device model.
    pub model: ModelKind,
    /// The driver bound at boot.
    pub boot_driver: Driver,
    /// The requester ids this function's DMA carries (its own, or an alias's).
    pub rids: Vec<Rid>,
    /// The IOMMU group.
    pub group: GroupId,
}

/// An IOMMU group: the devices that can only be isolated together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Group number.
    pub id: GroupId,
    /// Member functions, in platform order.
    pub devices: Vec<DeviceId>,
}

/// A platform file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The TOML did not parse or did not match the schema.
    #[error("platform file: {0}")]
    Parse(String),
    /// The topology is inconsistent (duplicate address, unknown parent, ...).
    #[error("platform: {0}")]
    Invalid(String),
}

/// The PCI tree with its derived groups.
#[derive(Clone, Debug)]
pub struct Topology {
    _todo: (),
}

impl Topology {
    /// Parse a platform file.
    pub fn from_toml(_text: &str) -> Result<Topology, TopologyError> {
        todo!("helper: topology.rs")
    }
    /// The built-in default platform.
    pub fn builtin_default() -> Topology {
        todo!("helper: topology.rs")
    }
    /// A function by index.
    pub fn device(&self, _id: DeviceId) -> Option<&PciDevice> {
        todo!("helper: topology.rs")
    }
    /// All functions, in platform order.
    pub fn devices(&self) -> impl Iterator<Item = &PciDevice> + '_ {
        std::iter::empty()
    }
    /// A function by PCI address.
    pub fn find(&self, _bdf: Bdf) -> Option<DeviceId> {
        todo!("helper: topology.rs")
    }
    /// A function by name.
    pub fn find_name(&self, _name: &str) -> Option<DeviceId> {
        todo!("helper: topology.rs")
    }
    /// A group by number.
    pub fn group(&self, _id: GroupId) -> Option<&Group> {
        todo!("helper: topology.rs")
    }
    /// All groups, by number.
    pub fn groups(&self) -> impl Iterator<Item = &Group> + '_ {
        std::iter::empty()
    }
    /// Hot-add a selftest mock device in a group of its own; returns it.
    pub fn add_mock_device(&mut self) -> DeviceId {
        todo!("helper: topology.rs")
    }
    /// Hot-remove a device added by [`Topology::add_mock_device`]; its group goes when empty.
    pub fn remove_device(&mut self, _id: DeviceId) -> bool {
        todo!("helper: topology.rs")
    }
    /// A human-readable tree of the platform with each function's group and driver.
    pub fn describe(&self) -> String {
        todo!("helper: topology.rs")
    }
}
