//! `vfio-container-client`: an unmodified user of the crates.io `vfio-ioctls` crate through the
//! legacy VFIO interface: a `VfioContainer` (`/dev/vfio/vfio`, type1v2) and the device's group
//! (`/dev/vfio/<group>`, found through the sysfs `iommu_group` link), as the crate does it
//! without the `vfio_cdev` path. No KVM: the container is made without a KVM device fd.
//!
//! After `VfioDevice::new` it drives the device exactly as `vfio-cdev-client` does
//! (`uiommu_clients::dma_engine::exercise`), the DMA maps going through `VFIO_IOMMU_MAP_DMA` /
//! `VFIO_IOMMU_UNMAP_DMA` on the container. Prints one line per check and
//! `PASS vfio-container-client: N checks`; exits 0 only if all held. The device defaults to
//! 0000:01:00.0; the first argument names another BDF.

use std::path::PathBuf;
use std::sync::Arc;

use uiommu_clients::Checks;
use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

fn main() {
    let bdf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "0000:01:00.0".into());
    let sysfs = PathBuf::from("/sys/bus/pci/devices").join(&bdf);
    uiommu_clients::init_logging();
    let mut c = Checks::new("vfio-container-client");

    let container = Arc::new(c.ok(
        VfioContainer::new(None),
        "VfioContainer::new opens /dev/vfio/vfio (API version, TYPE1v2 extension; no KVM device)",
    ));
    let group = std::fs::read_link(sysfs.join("iommu_group"));
    println!("   {}/iommu_group -> {group:?}", sysfs.display());

    let device = c.ok(
        VfioDevice::new(&sysfs, Arc::clone(&container) as Arc<dyn VfioOps>, false),
        format!(
            "VfioDevice::new({}): group opened and viable, set to the container, TYPE1v2 set, device fd from the group",
            sysfs.display()
        ),
    );
    c.check(
        device.iommufd_dev_id().is_none(),
        "no iommufd device id on the legacy path",
        format!("{:?}", device.iommufd_dev_id()),
    );

    uiommu_clients::dma_engine::exercise(&mut c, &device, &*container, "VfioContainer", &sysfs);

    drop(device); // closes the device fd, then the crate unsets the group's container
    c.check(
        true,
        "VfioDevice dropped (device closed, group released)",
        "",
    );
    drop(container);

    // The group file was closed: a new container can take the group again (a group file is
    // exclusive while open).
    let again = Arc::new(c.ok(VfioContainer::new(None), "a second VfioContainer"));
    let device = c.ok(
        VfioDevice::new(&sysfs, Arc::clone(&again) as Arc<dyn VfioOps>, false),
        "the second container opens the same group and device again",
    );
    let id = dma_engine_id(&device);
    c.check(
        id == 0x444d_4145,
        format!("BAR0 ID {id:#x} through the second container"),
        id,
    );
    drop(device);
    drop(again);

    c.pass();
}

/// The dma-engine's BAR0 `ID` register, after enabling memory decoding (the device was reset
/// when it was opened again, and vfio-pci refuses BAR accesses with EIO while the command
/// register's memory bit is clear).
fn dma_engine_id(device: &VfioDevice) -> u32 {
    let mut cmd = [0u8; 2];
    device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut cmd, 0x04);
    let cmd = u16::from_le_bytes(cmd) | 0x2;
    device.region_write(VFIO_PCI_CONFIG_REGION_INDEX, &cmd.to_le_bytes(), 0x04);
    let mut b = [0u8; 4];
    device.region_read(VFIO_PCI_BAR0_REGION_INDEX, &mut b, 0);
    u32::from_le_bytes(b)
}
