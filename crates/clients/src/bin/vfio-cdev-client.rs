//! `vfio-cdev-client`: an unmodified user of the crates.io `vfio-ioctls` crate (feature
//! `vfio_cdev`) driving a PCI function through the VFIO device cdev and iommufd.
//!
//! Opens `/dev/iommu`, wraps it in a `VfioIommufd` (which allocates an IOAS), opens the device
//! at `/sys/bus/pci/devices/0000:01:00.0` as the crate does (its `vfio-dev/vfioN` directory names
//! the cdev in `/dev/vfio/devices/`), binds and attaches it, reads the vendor and device id
//! through the crate's region API, maps two buffers of this process through the crate's DMA
//! map API, programs the device (a `dma-engine`, registers in docs/dma-engine.md) through the
//! crate's region write API to copy one buffer into the other, checks the bytes in this
//! process's memory and the completion interrupt on an eventfd (the crate's MSI-X API), then
//! checks that DMA to an unmapped IOVA faults and tears everything down. No KVM: the
//! `VfioIommufd` is made without a KVM device fd, so the crate never asks for one.
//!
//! Prints one line per check and `PASS vfio-cdev-client: N checks`; exits 0 only if all held.
//! The device defaults to 0000:01:00.0; the first argument names another BDF.

use std::path::PathBuf;
use std::sync::Arc;

use iommufd_ioctls::IommuFd;
use uiommu_clients::Checks;
use vfio_ioctls::{VfioDevice, VfioIommufd, VfioOps};

fn main() {
    let bdf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "0000:01:00.0".into());
    let sysfs = PathBuf::from("/sys/bus/pci/devices").join(&bdf);
    uiommu_clients::init_logging();
    let mut c = Checks::new("vfio-cdev-client");

    let iommufd = Arc::new(c.ok(IommuFd::new(), "IommuFd::new opens /dev/iommu"));
    let vfio = Arc::new(c.ok(
        VfioIommufd::new(Arc::clone(&iommufd), None, None),
        "VfioIommufd::new (allocates an IOAS; no KVM device)",
    ));
    let ioas_id = vfio.ioas().id();
    println!("   IOAS id {ioas_id}");

    let cdev_dir = std::fs::read_dir(sysfs.join("vfio-dev"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    println!("   {}/vfio-dev: {cdev_dir:?}", sysfs.display());

    let device = c.ok(
        VfioDevice::new(&sysfs, Arc::clone(&vfio) as Arc<dyn VfioOps>, true),
        format!(
            "VfioDevice::new({}): cdev opened, bound to the iommufd, attached to the IOAS",
            sysfs.display()
        ),
    );
    let dev_id = device.iommufd_dev_id();
    c.check(
        dev_id.is_some_and(|id| id != 0),
        format!("bound: iommufd device id {dev_id:?}"),
        format!("{dev_id:?}"),
    );

    uiommu_clients::dma_engine::exercise(&mut c, &device, &*vfio, "VfioIommufd", &sysfs);

    drop(device); // the crate detaches (and panics if DETACH_IOMMUFD_PT fails), then closes
    c.check(true, "VfioDevice dropped (detached, closed)", "");
    drop(vfio); // the IOAS is destroyed when its last Arc goes
    c.err(
        iommufd.destroy_iommu_object(ioas_id),
        libc::ENOENT,
        "the IOAS was destroyed with the VfioIommufd",
    );

    c.pass();
}
