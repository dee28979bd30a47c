//! The platform file's schema (`docs/platform.md`): what serde reads from the TOML, and the
//! checks of single values (addresses, names, which parent a function may have).

use super::FunctionKind;
use serde::Deserialize;

/// Top level of a platform file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpec {
    /// The PCI segment of every function in the file.
    #[serde(default)]
    pub(super) segment: u16,
    /// The functions.
    #[serde(default, rename = "function")]
    pub(super) functions: Vec<FunctionSpec>,
    /// Explicit groups; when present they replace derivation.
    #[serde(default, rename = "group")]
    pub(super) groups: Vec<GroupSpec>,
}

/// One `[[function]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FunctionSpec {
    pub(super) name: String,
    #[serde(rename = "type")]
    pub(super) kind: FunctionKind,
    #[serde(default)]
    pub(super) parent: Option<String>,
    #[serde(default)]
    pub(super) address: Option<String>,
    #[serde(default)]
    pub(super) secondary_bus: Option<u8>,
    #[serde(default)]
    pub(super) vendor: Option<u16>,
    #[serde(default)]
    pub(super) device: Option<u16>,
    #[serde(default)]
    pub(super) class: Option<u32>,
    #[serde(default)]
    pub(super) model: Option<String>,
    #[serde(default)]
    pub(super) options: Option<toml::Table>,
    #[serde(default)]
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) multifunction: bool,
    #[serde(default)]
    pub(super) acs: Option<bool>,
}

impl FunctionSpec {
    pub(super) fn new(
        name: &str,
        kind: FunctionKind,
        parent: Option<&str>,
        address: &str,
    ) -> FunctionSpec {
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
            options: None,
            driver: None,
            multifunction: false,
            acs: None,
        }
    }
    pub(super) fn acs(mut self, acs: bool) -> FunctionSpec {
        self.acs = Some(acs);
        self
    }
    pub(super) fn model(mut self, model: &str, driver: &str) -> FunctionSpec {
        self.model = Some(model.to_string());
        self.driver = Some(driver.to_string());
        self
    }
    pub(super) fn ids(mut self, vendor: u16, device: u16, class: u32) -> FunctionSpec {
        self.vendor = Some(vendor);
        self.device = Some(device);
        self.class = Some(class);
        self
    }
}

/// One `[[group]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupSpec {
    pub(super) devices: Vec<String>,
}

/// A parsed `address`: optional segment and bus, device and function.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct Address {
    pub(super) segment: Option<u16>,
    pub(super) bus: Option<u8>,
    pub(super) device: u8,
    pub(super) function: u8,
}

pub(super) fn parse_hex(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Parse `D.F`, `B:D.F` or `S:B:D.F` (hexadecimal, like lspci).
pub(super) fn parse_address(s: &str) -> Option<Address> {
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

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether a function of kind `child` may sit on the secondary bus of `parent` (`None`: the root
/// bus).
pub(super) fn parent_allowed(child: FunctionKind, parent: Option<FunctionKind>) -> bool {
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

pub(super) fn allowed_parents(child: FunctionKind) -> &'static str {
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
