//! PCI topology and IOMMU groups.
//!
//! A platform is a PCI tree read from TOML ([`Topology::from_toml`], format in
//! `docs/platform.md`) or the built-in default ([`Topology::builtin_default`]). IOMMU groups are
//! derived from it the way Linux derives them (`pci_device_group`): a function joins the group of
//! any function it aliases with, of multifunction siblings without ACS, and of everything below
//! the first upstream bridge or port without ACS isolation; a conventional-PCI bridge makes every
//! device behind it use the bridge's requester id (DMA aliasing), so they share one group.
//!
//! Invariants of a [`Topology`]:
//! - every function has a unique [`DeviceId`], a unique [`Bdf`] and a unique name; device ids are
//!   never reused, and id order is platform order (sorted by address for the functions of a
//!   platform file, hot-added devices after them);
//! - every function is in exactly one [`Group`], every group is non-empty, a group's member list
//!   is in platform order and `PciDevice::group` names the group that lists the function;
//! - functions that can carry the same requester id are in the same group;
//! - `PciDevice::rids` is never empty: `rids[0]` is the requester id the function's DMA carries
//!   when it reaches the IOMMU, the rest are further ids Linux's `pci_for_each_dma_alias` reports
//!   for it (its own id when it is aliased), which an IOMMU driver programs as well;
//! - the parent of a function (the bridge or port whose secondary bus it sits on) precedes it in
//!   platform order, and parent chains are acyclic.
//!
//! Parsing never panics: any input either gives a consistent topology or a [`TopologyError`].
mod build;
mod default;
mod groups;
mod schema;
#[cfg(test)]
mod tests;

pub use crate::ids::{Bdf, DeviceId, GroupId};

use crate::devices::{mock, ModelType};
use crate::drivers::Driver;
use crate::hw::Rid;
use default::default_spec;
use schema::FileSpec;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The device model behind a PCI function.
#[derive(Copy, Clone, Debug)]
pub enum ModelKind {
    /// An emulated device of [`crate::devices::MODELS`] (`dma-engine`, `nvme`, ...).
    Emulated(&'static ModelType),
    /// The iommufd selftest mock device ([`crate::devices::mock`]).
    Mock,
    /// A function with config space only (bridges, ports, devices uiommu does not model).
    Generic,
}

impl ModelKind {
    /// The name used in platform files (`dma-engine`, `nvme`, `mock`, `generic`).
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::Emulated(t) => t.name,
            ModelKind::Mock => "mock",
            ModelKind::Generic => "generic",
        }
    }

    /// The model a platform file names, if any model has that name.
    pub fn from_name(name: &str) -> Option<ModelKind> {
        match name {
            "mock" => Some(ModelKind::Mock),
            "generic" => Some(ModelKind::Generic),
            _ => crate::devices::model_type(name).map(ModelKind::Emulated),
        }
    }
}

// Models are told apart by name: each name is registered once.
impl PartialEq for ModelKind {
    fn eq(&self, other: &ModelKind) -> bool {
        self.name() == other.name()
    }
}

impl Eq for ModelKind {}

impl std::hash::Hash for ModelKind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

/// What a PCI function is in the tree (its header/port type).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FunctionKind {
    /// A host bridge function on the root bus (not a PCI-to-PCI bridge; has no children).
    HostBridge,
    /// A PCIe root port: a bridge on the root bus with one link below it.
    RootPort,
    /// The upstream port of a PCIe switch (below a root port or a downstream port).
    UpstreamPort,
    /// A downstream port of a PCIe switch (below an upstream port), one link below it.
    DownstreamPort,
    /// A PCIe-to-PCI bridge: conventional PCI below it, so every function below it reaches the
    /// IOMMU with the requester id `secondary bus:00.0` (DMA aliasing).
    PcieToPciBridge,
    /// A conventional PCI-to-PCI bridge (below a PCIe-to-PCI bridge or another PCI bridge).
    PciBridge,
    /// An endpoint: PCIe (on a link or integrated in the root complex) or conventional PCI (when
    /// behind a PCIe-to-PCI bridge).
    Endpoint,
}

impl FunctionKind {
    /// The name used in platform files.
    pub fn name(&self) -> &'static str {
        match self {
            FunctionKind::HostBridge => "host-bridge",
            FunctionKind::RootPort => "root-port",
            FunctionKind::UpstreamPort => "upstream-port",
            FunctionKind::DownstreamPort => "downstream-port",
            FunctionKind::PcieToPciBridge => "pcie-to-pci-bridge",
            FunctionKind::PciBridge => "pci-bridge",
            FunctionKind::Endpoint => "endpoint",
        }
    }
    /// Whether the function is a bridge with a secondary bus.
    pub fn is_bridge(&self) -> bool {
        !matches!(self, FunctionKind::HostBridge | FunctionKind::Endpoint)
    }
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
    /// The model's options from the platform file (`options = { ... }`; checked by the model
    /// when the file was read, see [`ModelType::check`]).
    pub options: toml::Table,
}

/// Where a function sits in the tree and what isolates it (beyond [`PciDevice`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Header/port type.
    pub kind: FunctionKind,
    /// The bridge or port whose secondary bus the function is on (`None` on a root bus).
    pub parent: Option<DeviceId>,
    /// Whether the function has ACS with source validation, request and completion redirect
    /// and upstream forwarding enabled (Linux's `REQ_ACS_FLAGS`).
    pub acs: bool,
    /// Whether the function is part of a multifunction device.
    pub multifunction: bool,
    /// Whether the function is conventional PCI (behind a PCIe-to-PCI bridge).
    pub conventional: bool,
    /// The secondary bus number of a bridge.
    pub secondary_bus: Option<u8>,
    /// Whether the function was hot-added ([`Topology::add_mock_device`]).
    pub hotplug: bool,
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
    /// The file could not be read.
    #[error("{0}")]
    Read(String),
    /// The TOML did not parse or did not match the schema.
    #[error("platform file: {0}")]
    Parse(String),
    /// The topology is inconsistent (duplicate address, unknown parent, ...).
    #[error("platform: {0}")]
    Invalid(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, TopologyError> {
    Err(TopologyError::Invalid(msg.into()))
}

/// First segment used for hot-added mock devices.
pub const MOCK_SEGMENT_BASE: u16 = 0x1000;

#[derive(Clone, Debug)]
struct Node {
    dev: PciDevice,
    info: FunctionInfo,
}

/// The PCI tree with its derived groups.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// Functions by id; id order is platform order.
    nodes: BTreeMap<DeviceId, Node>,
    /// Groups by number.
    groups: BTreeMap<GroupId, Group>,
    /// The next device id to hand out (ids are never reused).
    next_device: u32,
    /// The next group number to hand out to a hot-added device (never reused).
    next_group: u32,
    /// How many mock devices were ever hot-added (picks their addresses and names).
    mocks_added: u32,
    /// The directory relative paths in model options start from (the platform file's).
    base_dir: Option<PathBuf>,
}

impl Topology {
    /// A platform with no functions.
    pub fn empty() -> Topology {
        Topology::default()
    }

    /// Parse a platform file (format: `docs/platform.md`).
    pub fn from_toml(text: &str) -> Result<Topology, TopologyError> {
        let spec: FileSpec =
            toml::from_str(text).map_err(|e| TopologyError::Parse(e.to_string()))?;
        Topology::from_spec(spec)
    }

    /// Read a platform file: [`Topology::from_toml`] of its text, with relative paths in model
    /// options taken from the file's directory ([`Topology::with_base_dir`]).
    pub fn read_file(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError::Read(e.to_string()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        Ok(Topology::from_toml(&text)?.with_base_dir(&dir))
    }

    /// Relative paths in model options (an `nvme` function's `file`) are taken from `dir`
    /// (the platform file's directory) instead of the working directory.
    pub fn with_base_dir(mut self, dir: &Path) -> Topology {
        self.base_dir = Some(dir.to_path_buf());
        self
    }

    /// Where relative paths in model options start ([`Topology::with_base_dir`]).
    pub fn base_dir(&self) -> Option<&Path> {
        self.base_dir.as_deref()
    }

    /// The built-in default platform (the same as `platforms/default.toml`):
    ///
    /// ```text
    /// 00:00.0 host0 host bridge
    /// 00:01.0 rp0 root port (ACS)     -> 01:00.0 dma0 dma-engine, vfio-pci        (alone)
    /// 00:02.0 rp1 root port (ACS)     -> 02:00.0 dma1, 02:00.1 dma2 dma-engines,
    ///                                    multifunction without ACS                (together)
    /// 00:03.0 rp2 root port (ACS)     -> 03:00.0 pcibr0 PCIe-to-PCI bridge
    ///                                    -> 04:01.0 legacy0 dma-engine, vfio-pci
    ///                                    -> 04:02.0 nvme0 generic, nvme           (with pcibr0)
    /// 00:04.0 rp3 root port (ACS)     -> 05:00.0 usp0 switch upstream port
    ///                                    -> 06:00.0 dsp0 (ACS) -> 07:00.0 nvme1, nvme
    ///                                    -> 06:01.0 dsp1 (ACS) -> 08:00.0 nic0, e1000e
    ///                                    -> 06:02.0 dsp2 (ACS) -> 09:00.0 ssd0, the emulated
    ///                                       nvme model, vfio-pci                   (alone)
    /// ```
    pub fn builtin_default() -> Topology {
        Topology::from_spec(default_spec()).unwrap_or_default()
    }

    /// A function by index.
    pub fn device(&self, id: DeviceId) -> Option<&PciDevice> {
        self.nodes.get(&id).map(|n| &n.dev)
    }
    /// Where a function sits in the tree and what isolates it.
    pub fn info(&self, id: DeviceId) -> Option<&FunctionInfo> {
        self.nodes.get(&id).map(|n| &n.info)
    }
    /// All functions, in platform order.
    pub fn devices(&self) -> impl Iterator<Item = &PciDevice> + '_ {
        self.nodes.values().map(|n| &n.dev)
    }
    /// Number of functions.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    /// Whether the platform has no functions.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// A function by PCI address.
    pub fn find(&self, bdf: Bdf) -> Option<DeviceId> {
        self.nodes
            .values()
            .find(|n| n.dev.bdf == bdf)
            .map(|n| n.dev.id)
    }
    /// A function by name.
    pub fn find_name(&self, name: &str) -> Option<DeviceId> {
        self.nodes
            .values()
            .find(|n| n.dev.name == name)
            .map(|n| n.dev.id)
    }
    /// The functions whose DMA can carry `rid`.
    pub fn find_rid(&self, rid: Rid) -> impl Iterator<Item = DeviceId> + '_ {
        self.nodes
            .values()
            .filter(move |n| n.dev.rids.contains(&rid))
            .map(|n| n.dev.id)
    }
    /// A group by number.
    pub fn group(&self, id: GroupId) -> Option<&Group> {
        self.groups.get(&id)
    }
    /// All groups, by number.
    pub fn groups(&self) -> impl Iterator<Item = &Group> + '_ {
        self.groups.values()
    }
    /// The functions on the secondary bus of `id` (empty for a non-bridge), in platform order.
    pub fn children(&self, id: DeviceId) -> impl Iterator<Item = DeviceId> + '_ {
        self.nodes
            .values()
            .filter(move |n| n.info.parent == Some(id))
            .map(|n| n.dev.id)
    }

    /// Hot-add a selftest mock device in a group of its own; returns it.
    ///
    /// Each mock sits alone at `00.0` of its own root bus on a segment of its own, from
    /// [`MOCK_SEGMENT_BASE`] up, skipping segments that hold other functions; it is named
    /// `mockN`, has [`ModelKind::Mock`] and boots bound to [`Driver::VfioPci`] (a
    /// `driver_managed_dma` driver, as the selftest's mock devices are handed straight to
    /// iommufd). Its group gets a number never used before (unlike Linux, which reuses the
    /// lowest free number): stale references to a removed mock's group cannot reach the new
    /// one.
    pub fn add_mock_device(&mut self) -> DeviceId {
        // Segments of the platform file are not for mocks; other mocks' addresses are taken.
        let file_segments: HashSet<u16> = self
            .nodes
            .values()
            .filter(|n| !n.info.hotplug)
            .map(|n| n.dev.bdf.segment)
            .collect();
        let used_bdfs: HashSet<Bdf> = self.nodes.values().map(|n| n.dev.bdf).collect();
        let used_names: HashSet<&str> = self.nodes.values().map(|n| n.dev.name.as_str()).collect();
        // Candidates k -> (segment 0x1000 + k / 256, bus k % 256); the space holds far more
        // candidates than there can be devices, so a free one is always found.
        let span = (u32::from(u16::MAX) - u32::from(MOCK_SEGMENT_BASE) + 1) * 256;
        let mut k = self.mocks_added % span;
        let mut bdf = Bdf {
            segment: MOCK_SEGMENT_BASE,
            bus: 0,
            device: 0,
            function: 0,
        };
        for _ in 0..span {
            let segment = (u32::from(MOCK_SEGMENT_BASE) + k / 256) as u16;
            let cand = Bdf {
                segment,
                bus: (k % 256) as u8,
                device: 0,
                function: 0,
            };
            k = (k + 1) % span;
            if !file_segments.contains(&segment) && !used_bdfs.contains(&cand) {
                bdf = cand;
                break;
            }
        }
        let mut name = format!("mock{}", self.mocks_added);
        let mut suffix = 0u32;
        while used_names.contains(name.as_str()) {
            suffix = suffix.wrapping_add(1);
            name = format!("mock{}_{suffix}", self.mocks_added);
        }
        self.mocks_added = self.mocks_added.wrapping_add(1);
        let mut raw = self.next_device;
        while self.nodes.contains_key(&DeviceId(raw)) {
            raw = raw.wrapping_add(1);
        }
        self.next_device = raw.wrapping_add(1);
        let id = DeviceId(raw);
        let mut g = self.next_group;
        while self.groups.contains_key(&GroupId(g)) {
            g = g.wrapping_add(1);
        }
        self.next_group = g.wrapping_add(1);
        let gid = GroupId(g);
        let dev = PciDevice {
            id,
            bdf,
            name,
            vendor: mock::MOCK_VENDOR,
            device: mock::MOCK_DEVICE,
            class: mock::MOCK_CLASS,
            model: ModelKind::Mock,
            boot_driver: Driver::VfioPci,
            rids: vec![bdf.rid()],
            group: gid,
            options: toml::Table::new(),
        };
        let info = FunctionInfo {
            kind: FunctionKind::Endpoint,
            parent: None,
            acs: false,
            multifunction: false,
            conventional: false,
            secondary_bus: None,
            hotplug: true,
        };
        self.groups.insert(
            gid,
            Group {
                id: gid,
                devices: vec![id],
            },
        );
        self.nodes.insert(id, Node { dev, info });
        id
    }

    /// Hot-remove a device added by [`Topology::add_mock_device`]; its group goes when empty.
    /// Returns false (and changes nothing) for an unknown id or a function of the platform
    /// file.
    pub fn remove_device(&mut self, id: DeviceId) -> bool {
        let Some(node) = self.nodes.get(&id) else {
            return false;
        };
        if !node.info.hotplug {
            return false;
        }
        let gid = node.dev.group;
        self.nodes.remove(&id);
        if let Some(g) = self.groups.get_mut(&gid) {
            g.devices.retain(|&d| d != id);
            if g.devices.is_empty() {
                self.groups.remove(&gid);
            }
        }
        true
    }

    /// A human-readable tree of the platform with each function's group and driver.
    ///
    /// One line per function: address, name, type and isolation flags, model, boot driver,
    /// group, and the requester id its DMA carries when that is not its own; functions below a
    /// bridge are indented under it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut children: BTreeMap<Option<DeviceId>, Vec<DeviceId>> = BTreeMap::new();
        for n in self.nodes.values() {
            children.entry(n.info.parent).or_default().push(n.dev.id);
        }
        // Iterative depth-first walk (parent chains are acyclic, depth <= 256).
        let mut stack: Vec<(DeviceId, usize)> = Vec::new();
        if let Some(roots) = children.get(&None) {
            stack.extend(roots.iter().rev().map(|&d| (d, 0)));
        }
        let mut printed = 0usize;
        while let Some((id, depth)) = stack.pop() {
            printed += 1;
            if printed > self.nodes.len() {
                break;
            }
            let Some(n) = self.nodes.get(&id) else {
                continue;
            };
            let d = &n.dev;
            let mut flags = Vec::new();
            if n.info.acs {
                flags.push("ACS");
            }
            if n.info.multifunction {
                flags.push("multifunction");
            }
            if n.info.conventional {
                flags.push("conventional PCI");
            }
            if n.info.hotplug {
                flags.push("hot-added");
            }
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", flags.join(", "))
            };
            let _ = write!(
                out,
                "{:indent$}{} {}: {}{}, model {}, driver {}, group {}",
                "",
                d.bdf,
                d.name,
                n.info.kind.name(),
                flags,
                d.model.name(),
                d.boot_driver.name().unwrap_or("none"),
                d.group.0,
                indent = depth * 2
            );
            if let Some(&carried) = d.rids.first() {
                if carried != d.bdf.rid() {
                    let r = carried.0;
                    let _ = write!(
                        out,
                        ", DMA as {:04x}:{:02x}:{:02x}.{}",
                        r >> 16,
                        (r >> 8) & 0xff,
                        (r >> 3) & 0x1f,
                        r & 7
                    );
                }
            }
            out.push('\n');
            if let Some(kids) = children.get(&Some(id)) {
                stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
            }
        }
        out
    }
}
