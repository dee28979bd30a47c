//! The built-in default platform (`platforms/default.toml`) and the ids of functions a file
//! gives none.

use super::schema::{FileSpec, FunctionSpec};
use super::{FunctionKind, ModelKind};
use crate::devices::mock;

/// The built-in default platform as a spec (mirrors `platforms/default.toml`).
pub(super) fn default_spec() -> FileSpec {
    use FunctionKind::*;
    let f = FunctionSpec::new;
    let functions = vec![
        f("host0", HostBridge, None, "00:00.0"),
        f("rp0", RootPort, None, "00:01.0").acs(true),
        f("dma0", Endpoint, Some("rp0"), "00.0").model("dma-engine", "vfio-pci"),
        f("rp1", RootPort, None, "00:02.0").acs(true),
        f("dma1", Endpoint, Some("rp1"), "00.0").model("dma-engine", "vfio-pci"),
        f("dma2", Endpoint, Some("rp1"), "00.1").model("dma-engine", "vfio-pci"),
        f("rp2", RootPort, None, "00:03.0").acs(true),
        f("pcibr0", PcieToPciBridge, Some("rp2"), "00.0"),
        f("legacy0", Endpoint, Some("pcibr0"), "01.0").model("dma-engine", "vfio-pci"),
        f("nvme0", Endpoint, Some("pcibr0"), "02.0")
            .model("generic", "nvme")
            .ids(0x8086, 0x0953, 0x01_08_02),
        f("rp3", RootPort, None, "00:04.0").acs(true),
        f("usp0", UpstreamPort, Some("rp3"), "00.0"),
        f("dsp0", DownstreamPort, Some("usp0"), "00.0").acs(true),
        f("dsp1", DownstreamPort, Some("usp0"), "01.0").acs(true),
        f("nvme1", Endpoint, Some("dsp0"), "00.0")
            .model("generic", "nvme")
            .ids(0x8086, 0x0a54, 0x01_08_02),
        f("nic0", Endpoint, Some("dsp1"), "00.0")
            .model("generic", "e1000e")
            .ids(0x8086, 0x10d3, 0x02_00_00),
        f("dsp2", DownstreamPort, Some("usp0"), "02.0").acs(true),
        f("ssd0", Endpoint, Some("dsp2"), "00.0").model("nvme", "vfio-pci"),
    ];
    FileSpec {
        segment: 0,
        functions,
        groups: Vec::new(),
    }
}

/// Default (vendor, device, class) for a function without explicit ids.
pub(super) fn default_ids(kind: FunctionKind, model: ModelKind) -> (u16, u16, u32) {
    match kind {
        FunctionKind::HostBridge => (0x8086, 0x29c0, 0x06_00_00),
        FunctionKind::RootPort => (0x8086, 0x7ab8, 0x06_04_00),
        FunctionKind::UpstreamPort => (0x10b5, 0x8747, 0x06_04_00),
        FunctionKind::DownstreamPort => (0x10b5, 0x8747, 0x06_04_00),
        FunctionKind::PcieToPciBridge => (0x1b36, 0x000e, 0x06_04_00),
        FunctionKind::PciBridge => (0x1b36, 0x0001, 0x06_04_00),
        FunctionKind::Endpoint => match model {
            ModelKind::Emulated(t) => t.ids,
            ModelKind::Mock => (mock::MOCK_VENDOR, mock::MOCK_DEVICE, mock::MOCK_CLASS),
            ModelKind::Generic => (0x1b36, 0x0000, 0xff_00_00),
        },
    }
}
