//! What the VFIO device cdev (`uiommu-uapi`'s `vfio_device`) needs from the engine beyond the
//! iommufd device API.

use crate::engine::Context;
use crate::error::{Error, Result};
use crate::object::ObjId;
use uiommu_platform::drivers::Driver;
use uiommu_platform::topology::DeviceId;

impl Context {
    /// VFIO_DEVICE_BIND_IOMMUFD through a device cdev: [`Context::device_bind`], except that a
    /// device no longer bound to `vfio-pci` is ENODEV (its cdev is gone), and a device some
    /// context already has bound (opened and bound through another file) is EINVAL, as
    /// Linux's `vfio_df_open` refuses a second cdev open — checked under the same lock as the
    /// bind, so two files racing to bind one device cannot both win.
    pub fn vfio_device_bind(&self, dev: DeviceId) -> Result<ObjId> {
        self.with(|st, c| {
            // The cdev exists only while vfio-pci drives the device.
            if st.platform.topology.device(dev).is_some()
                && *st.platform.drivers.driver(dev) != Driver::VfioPci
            {
                return Err(Error::NoDevice("the device is not bound to vfio-pci"));
            }
            if crate::device::device_in_use(st, dev) {
                return Err(Error::Invalid(
                    "the device is already bound through another file",
                ));
            }
            crate::device::bind(st, c, dev)
        })
    }
}
