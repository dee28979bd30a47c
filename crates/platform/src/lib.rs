//! The emulated machine under uiommu.
//!
//! A [`Platform`] is a PCI [`topology::Topology`] with derived IOMMU groups, a driver registry,
//! an IOMMU ([`hw::Iommu`]) with real page-table formats ([`pagetable`]), the programs' memory
//! seen through a frame table ([`memory`]) and device models ([`devices`]) that issue DMA through
//! the IOMMU ([`dma`]).
//!
//! This crate has no notion of security contexts or ownership: it is the hardware. The rules
//! (who may attach what, which driver may bind) live in `uiommu-core`.

#![forbid(unsafe_code)]

pub mod addr;
pub mod devices;
pub mod dma;
pub mod drivers;
pub mod fault_inject;
pub mod held;
pub mod hw;
pub mod ids;
pub mod memory;
pub mod pagetable;
pub mod process_memory;
pub mod topology;

pub use addr::{Iova, PhysAddr, Range, UserVa, PAGE_SIZE};

use devices::{DeviceModel, DmaFault};
use dma::DmaContext;
use drivers::DriverRegistry;
use hw::Iommu;
use memory::Memory;
use topology::{DeviceId, Topology};

/// Why a platform operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// No such device.
    #[error("no device {0:?}")]
    NoDevice(DeviceId),
    /// The device has no model for this access (no such BAR, no model).
    #[error("device {0:?} does not implement this access")]
    NoSuchRegion(DeviceId),
    /// A function's model could not be built.
    #[error("{device}: model {model}: {message}")]
    Model {
        /// The function's name.
        device: String,
        /// The model's name.
        model: &'static str,
        /// Why.
        message: String,
    },
}

/// The whole emulated machine.
#[derive(Debug)]
pub struct Platform {
    /// PCI tree and groups.
    pub topology: Topology,
    /// Which driver each function is bound to.
    pub drivers: DriverRegistry,
    /// The IOMMU.
    pub iommu: Iommu,
    /// Programs' memory and the frame table.
    pub memory: Memory,
    /// Device models, by function.
    pub models: crate::memory::FastHashMap<DeviceId, Box<dyn DeviceModel>>,
}

impl Platform {
    /// A machine for `topology`: boot drivers bound, a model for each modelled function, an IOMMU
    /// with no context entries (the layer above sets up default domains). A function whose
    /// model cannot be built (see [`Platform::try_new`]) has none: its registers read as
    /// unimplemented.
    pub fn new(topology: Topology) -> Platform {
        Self::build(topology, false).0
    }

    /// [`Platform::new`], refused when a function's model cannot be built (an `nvme`
    /// namespace's backing file that cannot be opened, ...).
    pub fn try_new(topology: Topology) -> Result<Platform, PlatformError> {
        match Self::build(topology, true) {
            (p, None) => Ok(p),
            (_, Some(e)) => Err(e),
        }
    }

    /// The machine, and the first model that could not be built (`strict`: stop there).
    fn build(topology: Topology, strict: bool) -> (Platform, Option<PlatformError>) {
        let mut drivers = DriverRegistry::default();
        let mut models: crate::memory::FastHashMap<DeviceId, Box<dyn DeviceModel>> =
            Default::default();
        let mut failed = None;
        for dev in topology.devices() {
            drivers.set(dev.id, dev.boot_driver.clone());
            match Self::model_for(&topology, dev.id) {
                Ok(Some(model)) => {
                    models.insert(dev.id, model);
                }
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert(PlatformError::Model {
                        device: dev.name.clone(),
                        model: dev.model.name(),
                        message: e,
                    });
                }
            }
            if strict && failed.is_some() {
                break;
            }
        }
        let platform = Platform {
            topology,
            drivers,
            iommu: Iommu::new(),
            memory: Memory::default(),
            models,
        };
        (platform, failed)
    }

    /// The model of a modelled function (`None` for [`topology::ModelKind::Generic`] and for
    /// mock devices, which [`Platform::add_mock_device_with_flags`] makes).
    fn model_for(
        topology: &Topology,
        id: DeviceId,
    ) -> Result<Option<Box<dyn DeviceModel>>, String> {
        let Some(dev) = topology.device(id) else {
            return Ok(None);
        };
        match dev.model {
            topology::ModelKind::Emulated(t) => (t.build)(&devices::ModelConfig {
                vendor: dev.vendor,
                device: dev.device,
                class: dev.class,
                multifunction: topology.info(id).is_some_and(|i| i.multifunction),
                options: &dev.options,
                base_dir: topology.base_dir(),
            })
            .map(Some),
            topology::ModelKind::Mock => {
                Ok(devices::mock::MockDevice::new(0).map(|m| Box::new(m) as Box<dyn DeviceModel>))
            }
            topology::ModelKind::Generic => Ok(None),
        }
    }

    /// Hot-add a selftest mock device (flags 0) in a group of its own, bound to its boot driver
    /// ([`drivers::Driver::VfioPci`]), with its model. See [`Topology::add_mock_device`].
    pub fn add_mock_device(&mut self) -> DeviceId {
        // Flags 0 are always valid.
        self.add_mock_device_with_flags(0)
            .unwrap_or(DeviceId(u32::MAX))
    }

    /// Hot-add a selftest mock device with `flags` (`devices::mock::MOCK_FLAGS_DEVICE_*`);
    /// `None` (and nothing added) when `flags` has unknown bits, which the selftest answers
    /// with EINVAL. The flags can be read back with [`devices::mock::flags_from_config`].
    pub fn add_mock_device_with_flags(&mut self, flags: u32) -> Option<DeviceId> {
        let model = devices::mock::MockDevice::new(flags)?;
        let id = self.topology.add_mock_device();
        if let Some(dev) = self.topology.device(id) {
            self.drivers.set(id, dev.boot_driver.clone());
        }
        self.models.insert(id, Box::new(model));
        Some(id)
    }

    /// Hot-remove a device added by [`Platform::add_mock_device`]: its model, driver binding and
    /// (now empty) group go. Context entries for its requester id are the caller's to clear
    /// first. False, with nothing changed, for other devices.
    pub fn remove_device(&mut self, dev: DeviceId) -> bool {
        if !self.topology.remove_device(dev) {
            return false;
        }
        self.models.remove(&dev);
        self.drivers.set(dev, drivers::Driver::Unbound);
        true
    }

    /// The selftest mock flags of a mock device (0 for any other device).
    pub fn mock_flags(&self, dev: DeviceId) -> u32 {
        match self.topology.device(dev) {
            Some(d) if d.model == topology::ModelKind::Mock => self
                .models
                .get(&dev)
                .and_then(|m| devices::mock::flags_from_config(m.config()))
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// The built-in default machine.
    pub fn builtin() -> Platform {
        Platform::new(Topology::builtin_default())
    }

    /// DMA read by `dev` at `iova`, translated by the IOMMU.
    pub fn dma_read(&mut self, dev: DeviceId, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault> {
        devices::DmaPort::dma_read(&mut self.port(dev), iova, buf)
    }

    /// DMA write by `dev` at `iova`, translated by the IOMMU.
    pub fn dma_write(&mut self, dev: DeviceId, iova: Iova, data: &[u8]) -> Result<(), DmaFault> {
        devices::DmaPort::dma_write(&mut self.port(dev), iova, data)
    }

    /// DMA copy by `dev` of `len` bytes from `src` to `dst`, both translated by the IOMMU (a
    /// copy engine's move, as the dma-engine model makes per chunk). `Err` with the fault and
    /// whether it was on the source side.
    pub fn dma_copy(
        &mut self,
        dev: DeviceId,
        src: Iova,
        dst: Iova,
        len: usize,
    ) -> Result<(), (DmaFault, bool)> {
        devices::DmaPort::dma_copy(&mut self.port(dev), src, dst, len)
    }

    /// `dev`'s DMA port: its accesses translated by the IOMMU under its requester id.
    fn port(&mut self, dev: DeviceId) -> DmaContext<'_> {
        DmaContext {
            device: dev,
            rid: self.dma_rid(dev),
            iommu: &mut self.iommu,
            memory: &self.memory,
        }
    }

    /// The requester id `dev`'s DMA carries (an unknown device gets one that has no context
    /// entry, so its DMA faults as blocked).
    pub fn dma_rid(&self, dev: DeviceId) -> hw::Rid {
        self.topology
            .device(dev)
            .and_then(|d| d.rids.first().copied())
            .unwrap_or(hw::Rid(u32::MAX))
    }

    /// Read a BAR register range of `dev`.
    pub fn mmio_read(
        &mut self,
        dev: DeviceId,
        bar: u8,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), PlatformError> {
        let model = self.model_with_bar(dev, bar)?;
        model.mmio_read(bar, offset, buf);
        Ok(())
    }

    /// Write a BAR register range of `dev`; doorbells issue DMA through the IOMMU.
    pub fn mmio_write(
        &mut self,
        dev: DeviceId,
        bar: u8,
        offset: u64,
        data: &[u8],
    ) -> Result<(), PlatformError> {
        self.model_with_bar(dev, bar)?;
        let rid = self.dma_rid(dev);
        let Platform {
            models,
            iommu,
            memory,
            ..
        } = self;
        let model = models
            .get_mut(&dev)
            .ok_or(PlatformError::NoSuchRegion(dev))?;
        let mut port = DmaContext {
            device: dev,
            rid,
            iommu,
            memory,
        };
        model.mmio_write(bar, offset, data, &mut port);
        Ok(())
    }

    /// The model of `dev` if it implements BAR `bar`.
    fn model_with_bar(
        &mut self,
        dev: DeviceId,
        bar: u8,
    ) -> Result<&mut Box<dyn DeviceModel>, PlatformError> {
        if self.topology.device(dev).is_none() {
            return Err(PlatformError::NoDevice(dev));
        }
        let model = self
            .models
            .get_mut(&dev)
            .ok_or(PlatformError::NoSuchRegion(dev))?;
        if !model.has_bar(bar) {
            return Err(PlatformError::NoSuchRegion(dev));
        }
        Ok(model)
    }
}
