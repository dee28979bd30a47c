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

use crate::devices::{dma_engine, mock};
use crate::drivers::Driver;
use crate::hw::Rid;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fmt::Write as _;

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

fn rid_of(segment: u16, bus: u8, devfn: u8) -> Rid {
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

impl ModelKind {
    /// The name used in platform files (`dma-engine`, `mock`, `generic`).
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::DmaEngine => "dma-engine",
            ModelKind::Mock => "mock",
            ModelKind::Generic => "generic",
        }
    }
}

/// What a PCI function is in the tree (its header/port type).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
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
}

// ---------------------------------------------------------------------------------------------
// The platform file schema.

/// Top level of a platform file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    /// The PCI segment of every function in the file.
    #[serde(default)]
    segment: u16,
    /// The functions.
    #[serde(default, rename = "function")]
    functions: Vec<FunctionSpec>,
    /// Explicit groups; when present they replace derivation.
    #[serde(default, rename = "group")]
    groups: Vec<GroupSpec>,
}

/// One `[[function]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionSpec {
    name: String,
    #[serde(rename = "type")]
    kind: FunctionKind,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    secondary_bus: Option<u8>,
    #[serde(default)]
    vendor: Option<u16>,
    #[serde(default)]
    device: Option<u16>,
    #[serde(default)]
    class: Option<u32>,
    #[serde(default)]
    model: Option<ModelName>,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    multifunction: bool,
    #[serde(default)]
    acs: Option<bool>,
}

impl FunctionSpec {
    fn new(name: &str, kind: FunctionKind, parent: Option<&str>, address: &str) -> FunctionSpec {
        FunctionSpec {
            name: name.to_string(),
            kind,
            parent: parent.map(str::to_string),
            address: Some(address.to_string()),
            secondary_bus: None,
            vendor: None,
            device: None,
            class: None,
            model: None,
            driver: None,
            multifunction: false,
            acs: None,
        }
    }
    fn acs(mut self, acs: bool) -> FunctionSpec {
        self.acs = Some(acs);
        self
    }
    fn model(mut self, model: ModelName, driver: &str) -> FunctionSpec {
        self.model = Some(model);
        self.driver = Some(driver.to_string());
        self
    }
    fn ids(mut self, vendor: u16, device: u16, class: u32) -> FunctionSpec {
        self.vendor = Some(vendor);
        self.device = Some(device);
        self.class = Some(class);
        self
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ModelName {
    DmaEngine,
    Mock,
    Generic,
}

impl From<ModelName> for ModelKind {
    fn from(m: ModelName) -> ModelKind {
        match m {
            ModelName::DmaEngine => ModelKind::DmaEngine,
            ModelName::Mock => ModelKind::Mock,
            ModelName::Generic => ModelKind::Generic,
        }
    }
}

/// One `[[group]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    devices: Vec<String>,
}

/// A parsed `address`: optional segment and bus, device and function.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Address {
    segment: Option<u16>,
    bus: Option<u8>,
    device: u8,
    function: u8,
}

fn parse_hex(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Parse `D.F`, `B:D.F` or `S:B:D.F` (hexadecimal, like lspci).
fn parse_address(s: &str) -> Option<Address> {
    let parts: Vec<&str> = s.split(':').collect();
    let (segment, bus, df) = match parts.as_slice() {
        [df] => (None, None, *df),
        [b, df] => (None, Some(*b), *df),
        [sg, b, df] => (Some(*sg), Some(*b), *df),
        _ => return None,
    };
    let (d, f) = df.split_once('.')?;
    let device = parse_hex(d, 2)?;
    let function = parse_hex(f, 1)?;
    if device >= 32 || function >= 8 {
        return None;
    }
    let bus = match bus {
        Some(b) => Some(u8::try_from(parse_hex(b, 2)?).ok()?),
        None => None,
    };
    let segment = match segment {
        Some(sg) => Some(u16::try_from(parse_hex(sg, 4)?).ok()?),
        None => None,
    };
    Some(Address {
        segment,
        bus,
        device: device as u8,
        function: function as u8,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Default (vendor, device, class) for a function without explicit ids.
fn default_ids(kind: FunctionKind, model: ModelKind) -> (u16, u16, u32) {
    match kind {
        FunctionKind::HostBridge => (0x8086, 0x29c0, 0x06_00_00),
        FunctionKind::RootPort => (0x8086, 0x7ab8, 0x06_04_00),
        FunctionKind::UpstreamPort => (0x10b5, 0x8747, 0x06_04_00),
        FunctionKind::DownstreamPort => (0x10b5, 0x8747, 0x06_04_00),
        FunctionKind::PcieToPciBridge => (0x1b36, 0x000e, 0x06_04_00),
        FunctionKind::PciBridge => (0x1b36, 0x0001, 0x06_04_00),
        FunctionKind::Endpoint => match model {
            ModelKind::DmaEngine => (
                dma_engine::DEFAULT_VENDOR,
                dma_engine::DEFAULT_DEVICE,
                dma_engine::DEFAULT_CLASS,
            ),
            ModelKind::Mock => (mock::MOCK_VENDOR, mock::MOCK_DEVICE, mock::MOCK_CLASS),
            ModelKind::Generic => (0x1b36, 0x0000, 0xff_00_00),
        },
    }
}

/// Whether a function of kind `child` may sit on the secondary bus of `parent` (`None`: the root
/// bus).
fn parent_allowed(child: FunctionKind, parent: Option<FunctionKind>) -> bool {
    use FunctionKind::*;
    match child {
        HostBridge | RootPort => parent.is_none(),
        UpstreamPort => matches!(parent, Some(RootPort | DownstreamPort)),
        DownstreamPort => matches!(parent, Some(UpstreamPort)),
        PcieToPciBridge => matches!(parent, None | Some(RootPort | DownstreamPort)),
        PciBridge => matches!(parent, Some(PcieToPciBridge | PciBridge)),
        Endpoint => {
            matches!(
                parent,
                None | Some(RootPort | DownstreamPort | PcieToPciBridge | PciBridge)
            )
        }
    }
}

fn allowed_parents(child: FunctionKind) -> &'static str {
    use FunctionKind::*;
    match child {
        HostBridge | RootPort => "none (the root bus)",
        UpstreamPort => "a root-port or downstream-port",
        DownstreamPort => "an upstream-port",
        PcieToPciBridge => "none, a root-port or a downstream-port",
        PciBridge => "a pcie-to-pci-bridge or pci-bridge",
        Endpoint => "none, a root-port, downstream-port, pcie-to-pci-bridge or pci-bridge",
    }
}

/// A function being built from a spec (indices refer to the spec's function list).
#[derive(Clone, Debug)]
struct Build {
    spec: FunctionSpec,
    parent: Option<usize>,
    addr: Address,
    secondary: Option<u8>,
    bus: u8,
    conventional: bool,
    multifunction: bool,
}

/// A union-find over function indices.
struct UnionFind(Vec<usize>);

impl UnionFind {
    fn new(n: usize) -> UnionFind {
        UnionFind((0..n).collect())
    }
    fn find(&mut self, mut x: usize) -> usize {
        let mut root = x;
        while self.0[root] != root {
            root = self.0[root];
        }
        while self.0[x] != root {
            let next = self.0[x];
            self.0[x] = root;
            x = next;
        }
        root
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // Keep the earlier function as the root: it names the group.
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.0[hi] = lo;
        }
    }
}

/// The isolation facts of one function, as group derivation needs them.
#[derive(Copy, Clone, Debug)]
struct Iso {
    kind: FunctionKind,
    parent: Option<usize>,
    acs: bool,
    multifunction: bool,
    conventional: bool,
    segment: u16,
    bus: u8,
    devfn: u8,
    secondary: Option<u8>,
}

impl Iso {
    /// Linux's `pci_acs_enabled(dev, REQ_ACS_FLAGS)`.
    fn acs_enabled(&self) -> bool {
        use FunctionKind::*;
        if self.conventional {
            return false;
        }
        match self.kind {
            PcieToPciBridge | PciBridge => false,
            RootPort | DownstreamPort => self.acs,
            HostBridge | Endpoint | UpstreamPort => !self.multifunction || self.acs,
        }
    }
}

/// Linux's `pci_acs_path_enabled(start, NULL, REQ_ACS_FLAGS)`: ACS on `start` and everything
/// above it up to the root bus. Parent chains are acyclic (checked before).
fn acs_path_enabled(isos: &[Iso], start: usize) -> bool {
    let mut cur = start;
    for _ in 0..=isos.len() {
        let Some(iso) = isos.get(cur) else {
            return false;
        };
        if !iso.acs_enabled() {
            return false;
        }
        match iso.parent {
            None => return true,
            Some(p) => cur = p,
        }
    }
    false
}

/// Requester ids and group classes for functions given in platform order (parents first).
/// Returns, per function, its rids (carried first) and the index of the first function of its
/// group.
fn derive(isos: &[Iso]) -> (Vec<Vec<Rid>>, Vec<usize>) {
    let n = isos.len();
    let mut uf = UnionFind::new(n);
    let mut all_rids = Vec::with_capacity(n);
    // Functions by (parent, device number), for the multifunction sibling rule.
    let mut slots: HashMap<(Option<usize>, u16, u8, u8), Vec<usize>> = HashMap::new();
    for (i, iso) in isos.iter().enumerate() {
        slots
            .entry((iso.parent, iso.segment, iso.bus, iso.devfn >> 3))
            .or_default()
            .push(i);
    }
    for (d, iso) in isos.iter().enumerate() {
        // 1. DMA aliases (pci_for_each_dma_alias): each aliasing bridge on the way up rewrites
        //    the requester id; the function shares the group of every such bridge.
        let mut rids = vec![rid_of(iso.segment, iso.bus, iso.devfn)];
        let mut top = d;
        let mut cur = iso.parent;
        let mut steps = 0;
        while let Some(b) = cur {
            steps += 1;
            let Some(bridge) = isos.get(b) else { break };
            if steps > n {
                break;
            }
            match bridge.kind {
                FunctionKind::PcieToPciBridge => {
                    rids.push(rid_of(bridge.segment, bridge.secondary.unwrap_or(0), 0));
                    uf.union(d, b);
                    top = b;
                }
                FunctionKind::PciBridge => {
                    rids.push(rid_of(bridge.segment, bridge.bus, bridge.devfn));
                    uf.union(d, b);
                    top = b;
                }
                _ => {}
            }
            cur = bridge.parent;
        }
        // The id the topmost aliasing bridge gives the DMA is what the IOMMU sees.
        let carried = rids.last().copied().unwrap_or(Rid(u32::MAX));
        let mut ordered = vec![carried];
        for r in rids {
            if !ordered.contains(&r) {
                ordered.push(r);
            }
        }
        all_rids.push(ordered);

        // 2. Upstream from there to the first bridge whose path to the root has ACS.
        let mut a = top;
        for _ in 0..=n {
            let Some(p) = isos.get(a).and_then(|x| x.parent) else {
                break;
            };
            if acs_path_enabled(isos, p) {
                break;
            }
            uf.union(a, p);
            a = p;
        }

        // 3. Multifunction siblings without ACS (get_pci_function_alias_group).
        if let Some(ai) = isos.get(a) {
            if ai.multifunction && !ai.acs_enabled() {
                let key = (ai.parent, ai.segment, ai.bus, ai.devfn >> 3);
                if let Some(sibs) = slots.get(&key) {
                    for &s in sibs {
                        if s != a && isos.get(s).is_some_and(|x| !x.acs_enabled()) {
                            uf.union(a, s);
                        }
                    }
                }
            }
        }
    }
    let classes = (0..n).map(|i| uf.find(i)).collect();
    (all_rids, classes)
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
    /// ```
    pub fn builtin_default() -> Topology {
        Topology::from_spec(default_spec()).unwrap_or_default()
    }

    fn from_spec(spec: FileSpec) -> Result<Topology, TopologyError> {
        let seg = spec.segment;
        let n = spec.functions.len();
        if n > 0x1_0000 {
            return invalid(format!("{n} functions: a segment holds at most 65536"));
        }
        // Names.
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, f) in spec.functions.iter().enumerate() {
            if !valid_name(&f.name) {
                return invalid(format!(
                    "function name {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
                    f.name
                ));
            }
            if by_name.insert(f.name.as_str(), i).is_some() {
                return invalid(format!("two functions are named {:?}", f.name));
            }
        }
        // Parents, addresses, per-function checks.
        let mut builds = Vec::with_capacity(n);
        for f in &spec.functions {
            let parent = match &f.parent {
                None => None,
                Some(p) => match by_name.get(p.as_str()) {
                    Some(&i) => Some(i),
                    None => return invalid(format!("{}: unknown parent {:?}", f.name, p)),
                },
            };
            let addr = match &f.address {
                None => Address {
                    segment: None,
                    bus: None,
                    device: 0,
                    function: 0,
                },
                Some(a) => match parse_address(a) {
                    Some(a) => a,
                    None => {
                        return invalid(format!(
                            "{}: bad address {:?} (want [[segment:]bus:]device.function in hex, \
                             device < 20, function < 8)",
                            f.name, a
                        ))
                    }
                },
            };
            if let Some(s) = addr.segment {
                if s != seg {
                    return invalid(format!(
                        "{}: address segment {s:04x} differs from the file's segment {seg:04x}",
                        f.name
                    ));
                }
            }
            if f.secondary_bus.is_some() && !f.kind.is_bridge() {
                return invalid(format!(
                    "{}: secondary_bus is only for bridges and ports, not a {}",
                    f.name,
                    f.kind.name()
                ));
            }
            if let Some(c) = f.class {
                if c > 0xff_ff_ff {
                    return invalid(format!("{}: class {c:#x} is wider than 24 bits", f.name));
                }
            }
            let model = f.model.map(ModelKind::from).unwrap_or(ModelKind::Generic);
            if f.kind != FunctionKind::Endpoint && model != ModelKind::Generic {
                return invalid(format!(
                    "{}: a {} can only have model \"generic\", not {:?}",
                    f.name,
                    f.kind.name(),
                    model.name()
                ));
            }
            if let Some(d) = &f.driver {
                let ok = d.len() <= 64
                    && d.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !ok {
                    return invalid(format!("{}: bad driver name {:?}", f.name, d));
                }
            }
            builds.push(Build {
                spec: f.clone(),
                parent,
                addr,
                secondary: f.secondary_bus,
                bus: 0,
                conventional: false,
                multifunction: f.multifunction,
            });
        }
        // Parent kinds, then acyclicity.
        for b in &builds {
            let pk = b.parent.and_then(|p| builds.get(p)).map(|p| p.spec.kind);
            if !parent_allowed(b.spec.kind, pk) {
                let got = match (b.parent, pk) {
                    (Some(p), Some(k)) => {
                        format!(
                            "{} ({})",
                            builds.get(p).map_or("?", |x| x.spec.name.as_str()),
                            k.name()
                        )
                    }
                    _ => "the root bus".to_string(),
                };
                return invalid(format!(
                    "{}: a {} must have as parent {}, not {}",
                    b.spec.name,
                    b.spec.kind.name(),
                    allowed_parents(b.spec.kind),
                    got
                ));
            }
        }
        for (i, b) in builds.iter().enumerate() {
            let mut cur = b.parent;
            let mut depth = 0usize;
            while let Some(p) = cur {
                depth += 1;
                if p == i || depth > 256 {
                    return invalid(format!(
                        "{}: its parent chain loops or is deeper than 255 bridges",
                        b.spec.name
                    ));
                }
                cur = builds.get(p).and_then(|x| x.parent);
            }
        }
        // Conventional PCI: anything below a PCIe-to-PCI or PCI bridge (parents have no cycles).
        for i in 0..n {
            let mut cur = builds.get(i).and_then(|b| b.parent);
            let mut conv = false;
            while let Some(p) = cur {
                let Some(pb) = builds.get(p) else { break };
                if matches!(
                    pb.spec.kind,
                    FunctionKind::PcieToPciBridge | FunctionKind::PciBridge
                ) {
                    conv = true;
                    break;
                }
                cur = pb.parent;
            }
            if let Some(b) = builds.get_mut(i) {
                b.conventional = conv;
            }
        }
        for b in &builds {
            let no_acs = b.conventional
                || matches!(
                    b.spec.kind,
                    FunctionKind::PcieToPciBridge | FunctionKind::PciBridge
                );
            if no_acs && b.spec.acs == Some(true) {
                return invalid(format!(
                    "{}: a {}{} cannot have ACS",
                    b.spec.name,
                    if b.conventional {
                        "conventional PCI "
                    } else {
                        ""
                    },
                    b.spec.kind.name()
                ));
            }
        }
        assign_buses(&mut builds)?;
        // Addresses must be unique; PCIe links carry device 0 only; slots need function 0.
        let mut by_bdf: HashMap<Bdf, usize> = HashMap::new();
        let mut slots: BTreeMap<(u8, u8), Vec<usize>> = BTreeMap::new();
        for (i, b) in builds.iter().enumerate() {
            let bdf = Bdf {
                segment: seg,
                bus: b.bus,
                device: b.addr.device,
                function: b.addr.function,
            };
            if let Some(&j) = by_bdf.get(&bdf) {
                let other = builds.get(j).map_or("?", |x| x.spec.name.as_str());
                return invalid(format!("{} and {} are both at {bdf}", other, b.spec.name));
            }
            by_bdf.insert(bdf, i);
            slots.entry((b.bus, b.addr.device)).or_default().push(i);
            let pk = b.parent.and_then(|p| builds.get(p)).map(|p| p.spec.kind);
            if matches!(
                pk,
                Some(FunctionKind::RootPort | FunctionKind::DownstreamPort)
            ) && b.addr.device != 0
            {
                return invalid(format!(
                    "{}: below a PCIe root or downstream port only device 00 exists, not {:02x}",
                    b.spec.name, b.addr.device
                ));
            }
        }
        for ((bus, dev), members) in &slots {
            let has_fn0 = members
                .iter()
                .any(|&i| builds.get(i).is_some_and(|b| b.addr.function == 0));
            if !has_fn0 {
                return invalid(format!(
                    "slot {seg:04x}:{bus:02x}:{dev:02x} has functions but no function 0"
                ));
            }
            let multi = members.len() > 1
                || members
                    .iter()
                    .any(|&i| builds.get(i).is_some_and(|b| b.multifunction));
            for &i in members {
                if let Some(b) = builds.get_mut(i) {
                    b.multifunction = multi;
                }
            }
        }
        // Platform order: by address (parents come first: secondary bus > own bus).
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| {
            builds
                .get(i)
                .map(|b| (b.bus, b.addr.device, b.addr.function))
        });
        let mut pos = vec![0usize; n];
        for (p, &i) in order.iter().enumerate() {
            if let Some(slot) = pos.get_mut(i) {
                *slot = p;
            }
        }
        let mut isos = Vec::with_capacity(n);
        for &i in &order {
            let Some(b) = builds.get(i) else { continue };
            isos.push(Iso {
                kind: b.spec.kind,
                parent: b.parent.and_then(|p| pos.get(p).copied()),
                acs: b.spec.acs.unwrap_or(false),
                multifunction: b.multifunction,
                conventional: b.conventional,
                segment: seg,
                bus: b.bus,
                devfn: (b.addr.device << 3) | b.addr.function,
                secondary: b.secondary,
            });
        }
        let (rids, mut classes) = derive(&isos);
        if !spec.groups.is_empty() {
            classes = explicit_classes(&spec.groups, &by_name, &pos, n)?;
            // Functions that can carry the same requester id cannot be isolated from each other.
            let mut carried: HashMap<Rid, usize> = HashMap::new();
            for (p, r) in rids.iter().enumerate() {
                for rid in r {
                    if let Some(&q) = carried.get(rid) {
                        if classes.get(q) != classes.get(p) {
                            let name = |x: usize| {
                                order
                                    .get(x)
                                    .and_then(|&i| builds.get(i))
                                    .map_or("?", |b| b.spec.name.as_str())
                            };
                            return invalid(format!(
                                "explicit groups split {} and {}, which share requester id {:#x}",
                                name(q),
                                name(p),
                                rid.0
                            ));
                        }
                    } else {
                        carried.insert(*rid, p);
                    }
                }
            }
        }
        // Build the topology: group numbers in order of each group's first function.
        let mut topo = Topology::empty();
        let mut group_of_class: HashMap<usize, GroupId> = HashMap::new();
        for (p, &i) in order.iter().enumerate() {
            let (Some(b), Some(iso)) = (builds.get(i), isos.get(p)) else {
                continue;
            };
            let class = classes.get(p).copied().unwrap_or(p);
            let next = GroupId(group_of_class.len() as u32);
            let gid = *group_of_class.entry(class).or_insert(next);
            let id = DeviceId(p as u32);
            let model = b
                .spec
                .model
                .map(ModelKind::from)
                .unwrap_or(ModelKind::Generic);
            let (dv, dd, dc) = default_ids(b.spec.kind, model);
            let dev = PciDevice {
                id,
                bdf: Bdf {
                    segment: seg,
                    bus: b.bus,
                    device: b.addr.device,
                    function: b.addr.function,
                },
                name: b.spec.name.clone(),
                vendor: b.spec.vendor.unwrap_or(dv),
                device: b.spec.device.unwrap_or(dd),
                class: b.spec.class.unwrap_or(dc),
                model,
                boot_driver: Driver::from_name(b.spec.driver.as_deref().unwrap_or("none")),
                rids: rids.get(p).cloned().unwrap_or_default(),
                group: gid,
            };
            let info = FunctionInfo {
                kind: iso.kind,
                parent: iso.parent.map(|q| DeviceId(q as u32)),
                acs: iso.acs,
                multifunction: iso.multifunction,
                conventional: iso.conventional,
                secondary_bus: iso.secondary,
                hotplug: false,
            };
            topo.groups
                .entry(gid)
                .or_insert_with(|| Group {
                    id: gid,
                    devices: Vec::new(),
                })
                .devices
                .push(id);
            topo.nodes.insert(id, Node { dev, info });
        }
        topo.next_device = n as u32;
        topo.next_group = group_of_class.len() as u32;
        Ok(topo)
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

/// Group classes from `[[group]]` tables: per function (platform position), the position of
/// the first function of its group.
fn explicit_classes(
    groups: &[GroupSpec],
    by_name: &HashMap<&str, usize>,
    pos: &[usize],
    n: usize,
) -> Result<Vec<usize>, TopologyError> {
    let mut class: Vec<Option<usize>> = vec![None; n];
    for (gi, g) in groups.iter().enumerate() {
        if g.devices.is_empty() {
            return invalid(format!(
                "group #{} (in file order) lists no devices",
                gi + 1
            ));
        }
        let mut members = Vec::new();
        for name in &g.devices {
            let Some(&i) = by_name.get(name.as_str()) else {
                return invalid(format!(
                    "group #{} lists unknown function {:?}",
                    gi + 1,
                    name
                ));
            };
            let Some(&p) = pos.get(i) else {
                return invalid("internal: bad position");
            };
            if class.get(p).copied().flatten().is_some() || members.contains(&p) {
                return invalid(format!("{name} is listed in more than one group"));
            }
            members.push(p);
        }
        let first = members.iter().copied().min().unwrap_or(0);
        for p in members {
            if let Some(c) = class.get_mut(p) {
                *c = Some(first);
            }
        }
    }
    let mut out = Vec::with_capacity(n);
    for (p, c) in class.into_iter().enumerate() {
        match c {
            Some(c) => out.push(c),
            None => {
                let name = by_name
                    .iter()
                    .find(|(_, &i)| pos.get(i) == Some(&p))
                    .map_or("?", |(k, _)| *k);
                return invalid(format!(
                    "explicit groups are given but {name} is in none (list every function)"
                ));
            }
        }
    }
    Ok(out)
}

/// Give every function its bus number and every bridge its secondary bus number.
///
/// Explicit `secondary_bus` values and buses given in children's addresses are taken as they
/// are (and must agree); the rest are numbered depth-first in address order, like a firmware
/// enumeration, with the next free number above the bridge's own bus.
fn assign_buses(builds: &mut [Build]) -> Result<(), TopologyError> {
    let n = builds.len();
    let mut used = [false; 256];
    used[0] = true;
    let mut owner: HashMap<u8, usize> = HashMap::new();
    for (i, b) in builds.iter().enumerate() {
        if let Some(s) = b.secondary {
            if s == 0 {
                return invalid(format!("{}: secondary bus 00 is the root bus", b.spec.name));
            }
            if let Some(&j) = owner.get(&s) {
                let other = builds.get(j).map_or("?", |x| x.spec.name.as_str());
                return invalid(format!(
                    "{} and {} both claim secondary bus {s:02x}",
                    other, b.spec.name
                ));
            }
            owner.insert(s, i);
            used[usize::from(s)] = true;
        }
    }
    // Buses given in addresses fix (or must match) the parent's secondary bus.
    for i in 0..n {
        let Some(b) = builds.get(i) else { continue };
        let Some(bus) = b.addr.bus else { continue };
        let name = b.spec.name.clone();
        match b.parent {
            None => {
                if bus != 0 {
                    return invalid(format!(
                        "{name}: has no parent, so it is on the root bus 00, not {bus:02x}"
                    ));
                }
            }
            Some(p) => {
                let Some(pb) = builds.get(p) else { continue };
                match pb.secondary {
                    Some(s) if s == bus => {}
                    Some(s) => {
                        let parent = &pb.spec.name;
                        return invalid(format!(
                            "{name}: bus {bus:02x}, but {parent} has secondary bus {s:02x}"
                        ));
                    }
                    None => {
                        if bus == 0 {
                            return invalid(format!(
                                "{name}: bus 00 is the root bus, not below {}",
                                pb.spec.name
                            ));
                        }
                        if let Some(&j) = owner.get(&bus) {
                            let other = builds.get(j).map_or("?", |x| x.spec.name.as_str());
                            return invalid(format!(
                                "{name}: bus {bus:02x} is already the secondary bus of {other}"
                            ));
                        }
                        owner.insert(bus, p);
                        used[usize::from(bus)] = true;
                        if let Some(pb) = builds.get_mut(p) {
                            pb.secondary = Some(bus);
                        }
                    }
                }
            }
        }
    }
    // Children lists by address within their bus.
    let mut kids: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
    for (i, b) in builds.iter().enumerate() {
        kids.entry(b.parent).or_default().push(i);
    }
    for list in kids.values_mut() {
        list.sort_by_key(|&i| builds.get(i).map(|b| (b.addr.device, b.addr.function)));
    }
    let mut next: usize = 1;
    let mut stack: Vec<(usize, u8)> = Vec::new();
    if let Some(roots) = kids.get(&None) {
        stack.extend(roots.iter().rev().map(|&i| (i, 0u8)));
    }
    let mut visited = 0usize;
    while let Some((i, bus)) = stack.pop() {
        visited += 1;
        if visited > n {
            return invalid("internal: bus walk visited a function twice");
        }
        let Some(b) = builds.get_mut(i) else { continue };
        b.bus = bus;
        if !b.spec.kind.is_bridge() {
            continue;
        }
        let sec = match b.secondary {
            Some(s) => s,
            None => {
                let mut cand = next.max(usize::from(bus) + 1);
                while cand < 256 && used[cand] {
                    cand += 1;
                }
                if cand >= 256 {
                    return invalid(format!("{}: out of bus numbers", b.spec.name));
                }
                used[cand] = true;
                next = cand + 1;
                b.secondary = Some(cand as u8);
                cand as u8
            }
        };
        if sec <= bus {
            return invalid(format!(
                "{}: secondary bus {sec:02x} must be above its own bus {bus:02x}",
                b.spec.name
            ));
        }
        if let Some(list) = kids.get(&Some(i)) {
            stack.extend(list.iter().rev().map(|&k| (k, sec)));
        }
    }
    if visited != n {
        return invalid("internal: some functions are not reachable from the root bus");
    }
    Ok(())
}

/// The built-in default platform as a spec (mirrors `platforms/default.toml`).
fn default_spec() -> FileSpec {
    use FunctionKind::*;
    let f = FunctionSpec::new;
    let functions = vec![
        f("host0", HostBridge, None, "00:00.0"),
        f("rp0", RootPort, None, "00:01.0").acs(true),
        f("dma0", Endpoint, Some("rp0"), "00.0").model(ModelName::DmaEngine, "vfio-pci"),
        f("rp1", RootPort, None, "00:02.0").acs(true),
        f("dma1", Endpoint, Some("rp1"), "00.0").model(ModelName::DmaEngine, "vfio-pci"),
        f("dma2", Endpoint, Some("rp1"), "00.1").model(ModelName::DmaEngine, "vfio-pci"),
        f("rp2", RootPort, None, "00:03.0").acs(true),
        f("pcibr0", PcieToPciBridge, Some("rp2"), "00.0"),
        f("legacy0", Endpoint, Some("pcibr0"), "01.0").model(ModelName::DmaEngine, "vfio-pci"),
        f("nvme0", Endpoint, Some("pcibr0"), "02.0")
            .model(ModelName::Generic, "nvme")
            .ids(0x8086, 0x0953, 0x01_08_02),
        f("rp3", RootPort, None, "00:04.0").acs(true),
        f("usp0", UpstreamPort, Some("rp3"), "00.0"),
        f("dsp0", DownstreamPort, Some("usp0"), "00.0").acs(true),
        f("dsp1", DownstreamPort, Some("usp0"), "01.0").acs(true),
        f("nvme1", Endpoint, Some("dsp0"), "00.0")
            .model(ModelName::Generic, "nvme")
            .ids(0x8086, 0x0a54, 0x01_08_02),
        f("nic0", Endpoint, Some("dsp1"), "00.0")
            .model(ModelName::Generic, "e1000e")
            .ids(0x8086, 0x10d3, 0x02_00_00),
    ];
    FileSpec {
        segment: 0,
        functions,
        groups: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(text: &str) -> Topology {
        match Topology::from_toml(text) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    fn id(t: &Topology, name: &str) -> DeviceId {
        t.find_name(name).unwrap_or_else(|| panic!("no {name}"))
    }

    fn group_names(t: &Topology, name: &str) -> Vec<String> {
        let g = t.device(id(t, name)).unwrap().group;
        t.group(g)
            .unwrap()
            .devices
            .iter()
            .map(|&d| t.device(d).unwrap().name.clone())
            .collect()
    }

    fn together(t: &Topology, a: &str, b: &str) -> bool {
        t.device(id(t, a)).unwrap().group == t.device(id(t, b)).unwrap().group
    }

    fn err(text: &str) -> String {
        match Topology::from_toml(text) {
            Ok(t) => panic!("accepted:\n{}", t.describe()),
            Err(e) => e.to_string(),
        }
    }

    fn check_invariants(t: &Topology) {
        let mut seen = HashSet::new();
        for d in t.devices() {
            assert!(!d.rids.is_empty());
            let g = t.group(d.group).expect("group exists");
            assert!(g.devices.contains(&d.id));
            assert!(seen.insert(d.bdf));
        }
        for g in t.groups() {
            assert!(!g.devices.is_empty());
            assert!(g.devices.windows(2).all(|w| w[0] < w[1]));
            for &d in &g.devices {
                assert_eq!(t.device(d).unwrap().group, g.id);
            }
        }
    }

    const MF: &str = r#"
        [[function]]
        name = "rp"
        type = "root-port"
        address = "00:1c.0"
        acs = true
        [[function]]
        name = "f0"
        type = "endpoint"
        parent = "rp"
        address = "00.0"
        [[function]]
        name = "f1"
        type = "endpoint"
        parent = "rp"
        address = "00.1"
        [[function]]
        name = "g0"
        type = "endpoint"
        address = "00:1f.0"
        [[function]]
        name = "g1"
        type = "endpoint"
        address = "00:1f.1"
        acs = false
        [[function]]
        name = "h0"
        type = "endpoint"
        address = "00:1e.0"
        acs = true
        [[function]]
        name = "h1"
        type = "endpoint"
        address = "00:1e.1"
        acs = true
    "#;

    #[test]
    fn multifunction_without_acs_shares_a_group() {
        let t = topo(MF);
        check_invariants(&t);
        assert_eq!(group_names(&t, "f0"), ["f0", "f1"]);
        assert_eq!(group_names(&t, "g0"), ["g0", "g1"]);
        // With ACS on every function, the functions are isolated from each other.
        assert_eq!(group_names(&t, "h0"), ["h0"]);
        assert_eq!(group_names(&t, "h1"), ["h1"]);
        // The root port with ACS keeps the multifunction device away from itself.
        assert_eq!(group_names(&t, "rp"), ["rp"]);
        assert!(t.info(id(&t, "f1")).unwrap().multifunction);
    }

    #[test]
    fn multifunction_flag_on_a_single_function_needs_acs_only_with_siblings() {
        let t = topo(
            r#"
            [[function]]
            name = "a"
            type = "endpoint"
            address = "00:02.0"
            multifunction = true
            [[function]]
            name = "b"
            type = "endpoint"
            address = "00:03.0"
            "#,
        );
        assert!(t.info(id(&t, "a")).unwrap().multifunction);
        assert!(!t.info(id(&t, "b")).unwrap().multifunction);
        assert!(!together(&t, "a", "b"));
    }

    #[test]
    fn devices_behind_pcie_to_pci_bridge_alias_to_the_bridge() {
        let t = Topology::builtin_default();
        check_invariants(&t);
        assert_eq!(group_names(&t, "pcibr0"), ["pcibr0", "legacy0", "nvme0"]);
        let br = t.device(id(&t, "pcibr0")).unwrap();
        let sec = t.info(br.id).unwrap().secondary_bus.unwrap();
        // A PCIe-to-PCI bridge tags conventional DMA with its secondary bus and devfn 00.0.
        let alias = Rid((u32::from(sec)) << 8);
        for name in ["legacy0", "nvme0"] {
            let d = t.device(id(&t, name)).unwrap();
            assert_eq!(d.rids[0], alias, "{name} carries the bridge's alias");
            assert!(
                d.rids.contains(&d.bdf.rid()),
                "{name} own id is still an alias"
            );
            assert!(t.info(d.id).unwrap().conventional);
        }
        assert_eq!(br.rids, vec![br.bdf.rid()]);
        let mut on_alias: Vec<_> = t.find_rid(alias).collect();
        on_alias.sort();
        assert_eq!(on_alias, vec![id(&t, "legacy0"), id(&t, "nvme0")]);
    }

    #[test]
    fn nested_conventional_bridges_alias_to_the_topmost_pcie_to_pci_bridge() {
        let t = topo(
            r#"
            [[function]]
            name = "rp"
            type = "root-port"
            address = "00:01.0"
            acs = true
            [[function]]
            name = "x"
            type = "pcie-to-pci-bridge"
            parent = "rp"
            [[function]]
            name = "y"
            type = "pci-bridge"
            parent = "x"
            address = "03.0"
            [[function]]
            name = "e"
            type = "endpoint"
            parent = "y"
            address = "04.0"
            [[function]]
            name = "other"
            type = "endpoint"
            address = "00:02.0"
            "#,
        );
        check_invariants(&t);
        assert_eq!(group_names(&t, "x"), ["x", "y", "e"]);
        let x = t.info(id(&t, "x")).unwrap().secondary_bus.unwrap();
        let e = t.device(id(&t, "e")).unwrap();
        assert_eq!(e.rids[0], Rid(u32::from(x) << 8));
        let y = t.device(id(&t, "y")).unwrap();
        assert!(e.rids.contains(&y.bdf.rid()));
        assert_eq!(group_names(&t, "other"), ["other"]);
    }

    const NO_ACS_ROOT: &str = r#"
        [[function]]
        name = "rp"
        type = "root-port"
        address = "00:01.0"
        acs = false
        [[function]]
        name = "usp"
        type = "upstream-port"
        parent = "rp"
        [[function]]
        name = "dsp0"
        type = "downstream-port"
        parent = "usp"
        address = "00.0"
        acs = true
        [[function]]
        name = "dsp1"
        type = "downstream-port"
        parent = "usp"
        address = "01.0"
        acs = true
        [[function]]
        name = "a"
        type = "endpoint"
        parent = "dsp0"
        model = "dma-engine"
        driver = "vfio-pci"
        [[function]]
        name = "b"
        type = "endpoint"
        parent = "dsp1"
        driver = "nvme"
        [[function]]
        name = "rp2"
        type = "root-port"
        address = "00:02.0"
        acs = true
        [[function]]
        name = "c"
        type = "endpoint"
        parent = "rp2"
    "#;

    #[test]
    fn root_port_without_acs_puts_everything_below_in_one_group() {
        let t = topo(NO_ACS_ROOT);
        check_invariants(&t);
        assert_eq!(
            group_names(&t, "rp"),
            ["rp", "usp", "dsp0", "dsp1", "a", "b"]
        );
        assert_eq!(group_names(&t, "c"), ["c"]);
        assert_eq!(group_names(&t, "rp2"), ["rp2"]);
        assert_eq!(t.groups().count(), 3);
    }

    #[test]
    fn downstream_ports_with_acs_isolate() {
        let t = Topology::builtin_default();
        assert_eq!(group_names(&t, "nvme1"), ["nvme1"]);
        assert_eq!(group_names(&t, "nic0"), ["nic0"]);
        assert_eq!(group_names(&t, "dsp0"), ["dsp0"]);
        assert_eq!(group_names(&t, "usp0"), ["usp0"]);
        // Without ACS on a downstream port, its endpoint joins the port's group, and only it.
        let t = topo(&NO_ACS_ROOT.replace("acs = false", "acs = true").replacen(
            "address = \"01.0\"\n        acs = true",
            "address = \"01.0\"\n        acs = false",
            1,
        ));
        check_invariants(&t);
        assert_eq!(group_names(&t, "dsp1"), ["dsp1", "b"]);
        assert_eq!(group_names(&t, "a"), ["a"]);
        assert_eq!(group_names(&t, "dsp0"), ["dsp0"]);
        assert_eq!(group_names(&t, "usp"), ["usp"]);
    }

    #[test]
    fn default_platform_groups_are_as_documented() {
        let t = Topology::builtin_default();
        check_invariants(&t);
        assert_eq!(t.len(), 16);
        assert_eq!(group_names(&t, "dma0"), ["dma0"]);
        assert_eq!(group_names(&t, "dma1"), ["dma1", "dma2"]);
        let dma1 = t.device(id(&t, "dma1")).unwrap();
        assert_eq!(
            dma1.bdf,
            Bdf {
                segment: 0,
                bus: 2,
                device: 0,
                function: 0
            }
        );
        assert_eq!(dma1.model, ModelKind::DmaEngine);
        assert_eq!(dma1.boot_driver, Driver::VfioPci);
        let nvme0 = t.device(id(&t, "nvme0")).unwrap();
        assert_eq!(nvme0.boot_driver, Driver::Dma("nvme".into()));
        assert_eq!(nvme0.class, 0x010802);
        // Groups are numbered from 0 in platform order.
        let firsts: Vec<DeviceId> = t.groups().map(|g| g.devices[0]).collect();
        assert!(firsts.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(t.groups().next().unwrap().id, GroupId(0));
        assert_eq!(t.groups().count(), 13);
        let text = t.describe();
        assert!(text.contains("0000:00:03.0 rp2: root-port [ACS]"), "{text}");
        assert!(
            text.contains("\n    0000:04:01.0 legacy0: endpoint [conventional PCI]"),
            "{text}"
        );
        assert!(text.contains("DMA as 0000:04:00.0"), "{text}");
    }

    #[test]
    fn default_toml_file_matches_builtin_default() {
        let file = include_str!("../../../platforms/default.toml");
        let a = topo(file);
        let b = Topology::builtin_default();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.devices().zip(b.devices()) {
            assert_eq!(
                (
                    x.id,
                    x.bdf,
                    &x.name,
                    x.vendor,
                    x.device,
                    x.class,
                    x.model,
                    &x.boot_driver
                ),
                (
                    y.id,
                    y.bdf,
                    &y.name,
                    y.vendor,
                    y.device,
                    y.class,
                    y.model,
                    &y.boot_driver
                )
            );
            assert_eq!((&x.rids, x.group), (&y.rids, y.group));
            assert_eq!(a.info(x.id), b.info(y.id));
        }
        assert_eq!(
            a.groups().cloned().collect::<Vec<_>>(),
            b.groups().cloned().collect::<Vec<_>>()
        );
        assert_eq!(a.describe(), b.describe());
    }

    #[test]
    fn explicit_groups_override_derivation() {
        let t = topo(
            r#"
            [[function]]
            name = "a"
            type = "endpoint"
            address = "00:01.0"
            [[function]]
            name = "b"
            type = "endpoint"
            address = "00:02.0"
            [[function]]
            name = "c"
            type = "endpoint"
            address = "00:03.0"
            [[group]]
            devices = ["c", "a"]
            [[group]]
            devices = ["b"]
            "#,
        );
        check_invariants(&t);
        assert_eq!(group_names(&t, "a"), ["a", "c"]);
        assert_eq!(t.device(id(&t, "a")).unwrap().group, GroupId(0));
        assert_eq!(group_names(&t, "b"), ["b"]);
        assert_eq!(t.device(id(&t, "b")).unwrap().group, GroupId(1));
    }

    #[test]
    fn mock_devices_come_and_go_with_their_groups() {
        let mut t = Topology::builtin_default();
        let groups = t.groups().count();
        let m0 = t.add_mock_device();
        let m1 = t.add_mock_device();
        check_invariants(&t);
        let d0 = t.device(m0).unwrap().clone();
        let d1 = t.device(m1).unwrap().clone();
        assert_eq!(d0.model, ModelKind::Mock);
        assert_eq!(d0.boot_driver, Driver::VfioPci);
        assert!(d0.bdf.segment >= MOCK_SEGMENT_BASE);
        assert_ne!(d0.bdf, d1.bdf);
        assert_ne!(d0.group, d1.group);
        assert_eq!(t.group(d0.group).unwrap().devices, vec![m0]);
        assert_eq!(t.groups().count(), groups + 2);
        assert!(t.describe().contains("mock0"));
        assert!(t.remove_device(m0));
        assert!(!t.remove_device(m0));
        assert!(t.device(m0).is_none());
        assert!(t.group(d0.group).is_none());
        assert!(!t.remove_device(id(&t, "dma0")), "boot functions stay");
        let m2 = t.add_mock_device();
        assert!(m2 > m1, "device ids are not reused");
        assert!(
            t.device(m2).unwrap().group > d1.group,
            "group numbers are not reused"
        );
        check_invariants(&t);
    }

    #[test]
    fn mock_devices_avoid_segments_of_the_platform_file() {
        let mut t = topo(
            r#"
            segment = 0x1000
            [[function]]
            name = "mock0"
            type = "endpoint"
            address = "00:00.0"
            "#,
        );
        let m = t.add_mock_device();
        let d = t.device(m).unwrap();
        assert_ne!(d.bdf.segment, 0x1000);
        assert_ne!(d.name, "mock0");
        check_invariants(&t);
    }

    #[test]
    fn bus_numbers_follow_explicit_values_and_children_addresses() {
        let t = topo(
            r#"
            [[function]]
            name = "rp"
            type = "root-port"
            address = "00:01.0"
            secondary_bus = 0x10
            [[function]]
            name = "e"
            type = "endpoint"
            parent = "rp"
            [[function]]
            name = "rp2"
            type = "root-port"
            address = "00:02.0"
            [[function]]
            name = "e2"
            type = "endpoint"
            parent = "rp2"
            address = "0000:20:00.0"
            [[function]]
            name = "rp3"
            type = "root-port"
            address = "00:03.0"
            "#,
        );
        assert_eq!(t.device(id(&t, "e")).unwrap().bdf.bus, 0x10);
        assert_eq!(t.device(id(&t, "e2")).unwrap().bdf.bus, 0x20);
        assert_eq!(t.info(id(&t, "rp3")).unwrap().secondary_bus, Some(1));
    }

    #[test]
    fn bad_files_are_refused_with_clear_errors() {
        let ep = |name: &str, addr: &str| {
            format!("[[function]]\nname = \"{name}\"\ntype = \"endpoint\"\naddress = \"{addr}\"\n")
        };
        let e = err(&format!("{}{}", ep("a", "00:01.0"), ep("b", "00:01.0")));
        assert!(e.contains("a and b are both at 0000:00:01.0"), "{e}");
        let e = err(&format!("{}{}", ep("a", "00:01.0"), ep("a", "00:02.0")));
        assert!(e.contains("two functions are named \"a\""), "{e}");
        let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nparent = \"nope\"\n");
        assert!(e.contains("unknown parent \"nope\""), "{e}");
        let e = err("[[function]]\nname = \"a\"\ntype = \"router\"\n");
        assert!(e.contains("unknown variant `router`"), "{e}");
        let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nmodel = \"gpu\"\n");
        assert!(e.contains("unknown variant `gpu`"), "{e}");
        let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\ncolour = 1\n");
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nvendor = 70000\n");
        assert!(e.starts_with("platform file:"), "{e}");
        let e = err(&ep("a", "00:20.0"));
        assert!(e.contains("bad address"), "{e}");
        let e = err(&ep("a", "00:01.8"));
        assert!(e.contains("bad address"), "{e}");
        let e = err(&ep("a", "zz:01.0"));
        assert!(e.contains("bad address"), "{e}");
        let e = err(&ep("a", "05:01.0"));
        assert!(e.contains("root bus"), "{e}");
        let e = err(&ep("a", "00:01.1"));
        assert!(e.contains("no function 0"), "{e}");
        let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nclass = 0x1000000\n");
        assert!(e.contains("24 bits"), "{e}");
        let e = err("[[function]]\nname = \"bad name\"\ntype = \"endpoint\"\n");
        assert!(e.contains("function name"), "{e}");
        let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\ndriver = \"../x\"\n");
        assert!(e.contains("bad driver name"), "{e}");
        let e = err("[[function]]\nname = \"a\"\ntype = \"root-port\"\nmodel = \"dma-engine\"\n");
        assert!(e.contains("only have model \"generic\""), "{e}");
        let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nsecondary_bus = 3\n");
        assert!(e.contains("secondary_bus is only for bridges"), "{e}");
        let e = err("this is = not toml [");
        assert!(e.starts_with("platform file:"), "{e}");
    }

    #[test]
    fn bad_trees_are_refused() {
        // A downstream port directly on a root port.
        let e = err(
            "[[function]]\nname = \"rp\"\ntype = \"root-port\"\naddress = \"00:01.0\"\n\
             [[function]]\nname = \"d\"\ntype = \"downstream-port\"\nparent = \"rp\"\n",
        );
        assert!(e.contains("must have as parent an upstream-port"), "{e}");
        // Endpoints have no children.
        let e = err(
            "[[function]]\nname = \"a\"\ntype = \"endpoint\"\naddress = \"00:01.0\"\n\
             [[function]]\nname = \"b\"\ntype = \"endpoint\"\nparent = \"a\"\n",
        );
        assert!(e.contains("must have as parent"), "{e}");
        // A loop between an upstream and a downstream port.
        let e = err(
            "[[function]]\nname = \"u\"\ntype = \"upstream-port\"\nparent = \"d\"\n\
             [[function]]\nname = \"d\"\ntype = \"downstream-port\"\nparent = \"u\"\n",
        );
        assert!(e.contains("loops"), "{e}");
        // Only device 0 below a root port.
        let e = err(
            "[[function]]\nname = \"rp\"\ntype = \"root-port\"\naddress = \"00:01.0\"\n\
             [[function]]\nname = \"e\"\ntype = \"endpoint\"\nparent = \"rp\"\naddress = \"03.0\"\n",
        );
        assert!(e.contains("only device 00"), "{e}");
        // Conventional PCI has no ACS.
        let e = err(
            "[[function]]\nname = \"b\"\ntype = \"pcie-to-pci-bridge\"\naddress = \"00:01.0\"\n\
             [[function]]\nname = \"e\"\ntype = \"endpoint\"\nparent = \"b\"\nacs = true\n",
        );
        assert!(
            e.contains("conventional PCI endpoint cannot have ACS"),
            "{e}"
        );
        // Two bridges on one secondary bus.
        let e = err(
            "[[function]]\nname = \"r1\"\ntype = \"root-port\"\naddress = \"00:01.0\"\nsecondary_bus = 4\n\
             [[function]]\nname = \"r2\"\ntype = \"root-port\"\naddress = \"00:02.0\"\nsecondary_bus = 4\n",
        );
        assert!(e.contains("both claim secondary bus 04"), "{e}");
        // A child's bus that contradicts its parent.
        let e = err(
            "[[function]]\nname = \"r1\"\ntype = \"root-port\"\naddress = \"00:01.0\"\nsecondary_bus = 4\n\
             [[function]]\nname = \"e\"\ntype = \"endpoint\"\nparent = \"r1\"\naddress = \"05:00.0\"\n",
        );
        assert!(e.contains("has secondary bus 04"), "{e}");
        // Explicit groups must cover every function once, and not split aliases.
        let two = "[[function]]\nname = \"a\"\ntype = \"endpoint\"\naddress = \"00:01.0\"\n\
                   [[function]]\nname = \"b\"\ntype = \"endpoint\"\naddress = \"00:02.0\"\n";
        let e = err(&format!("{two}[[group]]\ndevices = [\"a\"]\n"));
        assert!(e.contains("b is in none"), "{e}");
        let e = err(&format!(
            "{two}[[group]]\ndevices = [\"a\", \"b\"]\n[[group]]\ndevices = [\"a\"]\n"
        ));
        assert!(e.contains("more than one group"), "{e}");
        let e = err(&format!("{two}[[group]]\ndevices = [\"a\", \"zz\"]\n"));
        assert!(e.contains("unknown function \"zz\""), "{e}");
        let e = err(
            "[[function]]\nname = \"b\"\ntype = \"pcie-to-pci-bridge\"\naddress = \"00:01.0\"\n\
             [[function]]\nname = \"e\"\ntype = \"endpoint\"\nparent = \"b\"\n\
             [[function]]\nname = \"f\"\ntype = \"endpoint\"\nparent = \"b\"\naddress = \"01.0\"\n\
             [[group]]\ndevices = [\"b\", \"e\"]\n[[group]]\ndevices = [\"f\"]\n",
        );
        assert!(e.contains("share requester id"), "{e}");
    }

    #[test]
    fn describe_prints_the_default_platform() {
        // `cargo test -p uiommu-platform --lib describe_prints -- --nocapture` shows the tree.
        let text = Topology::builtin_default().describe();
        println!("{text}");
        assert_eq!(text.lines().count(), 16);
    }

    #[test]
    fn deeply_nested_toml_is_an_error_not_a_crash() {
        for text in [
            format!("a = {}{}", "[".repeat(100_000), "]".repeat(100_000)),
            format!("x = {}1{}", "{a=".repeat(5_000), "}".repeat(5_000)),
            format!(
                "[[function]]\nname = \"{}\"\ntype = \"endpoint\"\n",
                "n".repeat(100_000)
            ),
        ] {
            assert!(Topology::from_toml(&text).is_err());
        }
    }

    #[test]
    fn the_empty_file_is_an_empty_platform() {
        let t = topo("");
        assert!(t.is_empty());
        assert_eq!(t.describe(), "");
    }

    #[test]
    fn arbitrary_text_never_panics() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::default();
        let fragments = prop::sample::select(vec![
            "[[function]]\n",
            "name = \"a\"\n",
            "name = \"b\"\n",
            "type = \"root-port\"\n",
            "type = \"endpoint\"\n",
            "type = \"upstream-port\"\n",
            "type = \"downstream-port\"\n",
            "type = \"pcie-to-pci-bridge\"\n",
            "type = \"pci-bridge\"\n",
            "parent = \"a\"\n",
            "parent = \"b\"\n",
            "address = \"00.1\"\n",
            "address = \"01:00.0\"\n",
            "secondary_bus = 1\n",
            "secondary_bus = 255\n",
            "acs = true\n",
            "multifunction = true\n",
            "[[group]]\ndevices = [\"a\"]\n",
            "model = \"dma-engine\"\n",
        ]);
        runner
            .run(&prop::collection::vec(fragments, 0..24), |parts| {
                let text: String = parts.concat();
                if let Ok(t) = Topology::from_toml(&text) {
                    check_invariants(&t);
                    let _ = t.describe();
                }
                Ok(())
            })
            .unwrap();
    }
}
