//! The iommufd selftest mock device model.
//!
//! The kernel's selftest creates bare mock devices on a bus of their own and binds them to
//! iommufd directly; they have no registers and never issue DMA on their own (the selftest reads
//! and writes through iommufd "accesses" instead). Their only state is a set of creation flags
//! that change what the mock IOMMU driver offers them (dirty tracking, huge IOVA pages, PASID).
//!
//! Here a mock device is a PCI function with a minimal type-0 config space and no BARs. The flags
//! are fixed at creation and visible to anyone holding the model through config space: a
//! vendor-specific capability at [`MOCK_FLAGS_CAP`] whose dword at [`MOCK_FLAGS_OFFSET`] holds
//! them ([`flags_from_config`] reads them back).
//!
//! Invariants: config space is 256 bytes; only the command register is writable (memory
//! space, bus master and INTx-disable bits); the flags never change; register accesses read
//! all-ones and writes are ignored; nothing panics.

use super::{BarInfo, DeviceModel, DmaPort, IrqSink};

/// The device does not support dirty tracking (selftest `MOCK_FLAGS_DEVICE_NO_DIRTY`).
pub const MOCK_FLAGS_DEVICE_NO_DIRTY: u32 = 1 << 0;
/// The device's mock domains also offer huge IOVA pages (selftest `MOCK_FLAGS_DEVICE_HUGE_IOVA`).
pub const MOCK_FLAGS_DEVICE_HUGE_IOVA: u32 = 1 << 1;
/// The device supports PASID (selftest `MOCK_FLAGS_DEVICE_PASID`, later kernels).
pub const MOCK_FLAGS_DEVICE_PASID: u32 = 1 << 2;
/// Every flag a mock device accepts; others are refused (the selftest answers EINVAL).
pub const MOCK_FLAGS_DEVICE_ALL: u32 =
    MOCK_FLAGS_DEVICE_NO_DIRTY | MOCK_FLAGS_DEVICE_HUGE_IOVA | MOCK_FLAGS_DEVICE_PASID;

/// PCI vendor id of mock devices (Red Hat / QEMU's vendor id, as a placeholder).
pub const MOCK_VENDOR: u16 = 0x1b36;
/// PCI device id of mock devices.
pub const MOCK_DEVICE: u16 = 0x10f1;
/// Class code of mock devices (0xff: "unassigned class").
pub const MOCK_CLASS: u32 = 0xff_00_00;

/// Config-space offset of the vendor-specific capability that carries the flags.
pub const MOCK_FLAGS_CAP: usize = 0x40;
/// Config-space offset of the flags dword (inside the capability at [`MOCK_FLAGS_CAP`]).
pub const MOCK_FLAGS_OFFSET: usize = MOCK_FLAGS_CAP + 4;

const CONFIG_SIZE: usize = 256;
/// Writable command register bits: memory space, bus master, INTx disable.
const COMMAND_WRITE_MASK: u16 = 0x0002 | 0x0004 | 0x0400;

/// The flags of a mock device, read from its config space (`None` if `config` is not a mock
/// device's).
pub fn flags_from_config(config: &[u8]) -> Option<u32> {
    let vendor = u16::from_le_bytes([*config.first()?, *config.get(1)?]);
    let device = u16::from_le_bytes([*config.get(2)?, *config.get(3)?]);
    if vendor != MOCK_VENDOR || device != MOCK_DEVICE || *config.get(MOCK_FLAGS_CAP)? != 0x09 {
        return None;
    }
    let b = config.get(MOCK_FLAGS_OFFSET..MOCK_FLAGS_OFFSET + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A selftest mock device.
#[derive(Clone, Debug)]
pub struct MockDevice {
    flags: u32,
    config: [u8; CONFIG_SIZE],
}

impl MockDevice {
    /// A mock device with `flags` (a combination of the `MOCK_FLAGS_DEVICE_*` constants);
    /// `None` when `flags` has any other bit set.
    pub fn new(flags: u32) -> Option<MockDevice> {
        if flags & !MOCK_FLAGS_DEVICE_ALL != 0 {
            return None;
        }
        Some(MockDevice {
            flags,
            config: power_on_config(flags),
        })
    }
    /// The creation flags.
    pub fn flags(&self) -> u32 {
        self.flags
    }
}

fn power_on_config(flags: u32) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    c[0..2].copy_from_slice(&MOCK_VENDOR.to_le_bytes());
    c[2..4].copy_from_slice(&MOCK_DEVICE.to_le_bytes());
    // Status: capability list present.
    c[6] = 0x10;
    // Revision 1, then class code (prog-if, subclass, base class).
    c[8] = 1;
    c[9] = MOCK_CLASS as u8;
    c[10] = (MOCK_CLASS >> 8) as u8;
    c[11] = (MOCK_CLASS >> 16) as u8;
    // Header type 0, capabilities pointer.
    c[0x34] = MOCK_FLAGS_CAP as u8;
    // Vendor-specific capability: id 0x09, no next, length 8, then the flags.
    c[MOCK_FLAGS_CAP] = 0x09;
    c[MOCK_FLAGS_CAP + 1] = 0;
    c[MOCK_FLAGS_CAP + 2] = 8;
    c[MOCK_FLAGS_OFFSET..MOCK_FLAGS_OFFSET + 4].copy_from_slice(&flags.to_le_bytes());
    c
}

impl DeviceModel for MockDevice {
    fn bars(&self) -> Vec<BarInfo> {
        Vec::new()
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        // Only the two command register bytes are writable.
        for (i, &b) in data.iter().enumerate() {
            let Some(off) = offset.checked_add(i as u64) else {
                return;
            };
            let mask = match off {
                4 => COMMAND_WRITE_MASK as u8,
                5 => (COMMAND_WRITE_MASK >> 8) as u8,
                _ => continue,
            };
            if let Some(slot) = self.config.get_mut(off as usize) {
                *slot = (*slot & !mask) | (b & mask);
            }
        }
    }
    fn mmio_read(&mut self, _bar: u8, _offset: u64, buf: &mut [u8]) {
        buf.fill(0xff);
    }
    fn mmio_write(&mut self, _bar: u8, _offset: u64, _data: &[u8], _dma: &mut dyn DmaPort) {}
    fn irq_count(&self) -> u32 {
        0
    }
    fn set_irq_sink(&mut self, _sink: Option<IrqSink>) {}
    fn reset(&mut self) {
        self.config = power_on_config(self.flags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Iova;
    use crate::devices::DmaFault;

    struct NoDma;
    impl DmaPort for NoDma {
        fn dma_read(&mut self, _iova: Iova, _buf: &mut [u8]) -> Result<(), DmaFault> {
            panic!("a mock device never does DMA")
        }
        fn dma_write(&mut self, _iova: Iova, _data: &[u8]) -> Result<(), DmaFault> {
            panic!("a mock device never does DMA")
        }
    }

    #[test]
    fn mock_device_flags_are_checked_and_visible_in_config_space() {
        assert!(MockDevice::new(1 << 5).is_none());
        let m = MockDevice::new(MOCK_FLAGS_DEVICE_NO_DIRTY | MOCK_FLAGS_DEVICE_PASID).unwrap();
        assert_eq!(m.flags(), 5);
        assert_eq!(flags_from_config(m.config()), Some(5));
        assert_eq!(m.config().len(), 256);
        assert_eq!(flags_from_config(&[0u8; 256]), None);
        assert_eq!(flags_from_config(&[]), None);
    }

    #[test]
    fn mock_device_has_no_registers_and_only_a_command_register() {
        let mut m = MockDevice::new(0).unwrap();
        assert!(m.bars().is_empty());
        assert_eq!(m.irq_count(), 0);
        let mut buf = [0u8; 4];
        m.mmio_read(0, 0, &mut buf);
        assert_eq!(buf, [0xff; 4]);
        m.mmio_write(0, 0, &[1, 2, 3, 4], &mut NoDma);
        m.config_write(0, &[0xff; 256]);
        m.config_write(u64::MAX, &[0xff; 8]);
        assert_eq!(&m.config()[0..4], &[0x36, 0x1b, 0xf1, 0x10]);
        assert_eq!(m.config()[4], 0x06);
        assert_eq!(m.config()[5], 0x04);
        assert_eq!(flags_from_config(m.config()), Some(0));
        m.reset();
        assert_eq!(m.config()[4], 0);
    }

    #[test]
    fn platform_keeps_mock_models_in_sync_with_the_topology() {
        let mut p = crate::Platform::builtin();
        let groups = p.topology.groups().count();
        assert!(p.add_mock_device_with_flags(1 << 9).is_none());
        assert_eq!(
            p.topology.groups().count(),
            groups,
            "refused flags add nothing"
        );
        let m = p
            .add_mock_device_with_flags(MOCK_FLAGS_DEVICE_HUGE_IOVA)
            .unwrap();
        let plain = p.add_mock_device();
        assert_eq!(
            flags_from_config(p.models[&m].config()),
            Some(MOCK_FLAGS_DEVICE_HUGE_IOVA)
        );
        assert_eq!(flags_from_config(p.models[&plain].config()), Some(0));
        assert_eq!(p.drivers.driver(m), &crate::drivers::Driver::VfioPci);
        let g = p.topology.device(m).unwrap().group;
        assert_eq!(p.topology.group(g).unwrap().devices, vec![m]);
        assert_eq!(p.dma_rid(m), p.topology.device(m).unwrap().bdf.rid());
        assert!(p.remove_device(m));
        assert!(!p.models.contains_key(&m));
        assert_eq!(p.drivers.driver(m), &crate::drivers::Driver::Unbound);
        assert!(p.topology.group(g).is_none());
        let dma0 = p.topology.find_name("dma0").unwrap();
        assert!(!p.remove_device(dma0));
        assert!(p.models.contains_key(&dma0));
    }
}
