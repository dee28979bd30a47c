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
pub mod hw;
pub mod memory;
pub mod pagetable;
pub mod topology;

pub use addr::{Iova, PhysAddr, Range, UserVa, PAGE_SIZE};

use devices::{DeviceModel, DmaFault};
use dma::DmaContext;
use drivers::DriverRegistry;
use hw::Iommu;
use memory::Memory;
use std::collections::HashMap;
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
    pub models: HashMap<DeviceId, Box<dyn DeviceModel>>,
}

impl Platform {
    /// A machine for `topology`: boot drivers bound, a model for each modelled function, an IOMMU
    /// with no context entries (the layer above sets up default domains).
    pub fn new(_topology: Topology) -> Platform {
        todo!("helper: lib.rs Platform::new")
    }

    /// The built-in default machine.
    pub fn builtin() -> Platform {
        Platform::new(Topology::builtin_default())
    }

    /// DMA read by `dev` at `iova`, translated by the IOMMU.
    pub fn dma_read(&mut self, dev: DeviceId, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault> {
        let rid = self.dma_rid(dev);
        let mut port = DmaContext { device: dev, rid, iommu: &mut self.iommu, memory: &self.memory };
        devices::DmaPort::dma_read(&mut port, iova, buf)
    }

    /// DMA write by `dev` at `iova`, translated by the IOMMU.
    pub fn dma_write(&mut self, dev: DeviceId, iova: Iova, data: &[u8]) -> Result<(), DmaFault> {
        let rid = self.dma_rid(dev);
        let mut port = DmaContext { device: dev, rid, iommu: &mut self.iommu, memory: &self.memory };
        devices::DmaPort::dma_write(&mut port, iova, data)
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
        _dev: DeviceId,
        _bar: u8,
        _offset: u64,
        _buf: &mut [u8],
    ) -> Result<(), PlatformError> {
        todo!("helper: lib.rs mmio")
    }

    /// Write a BAR register range of `dev`; doorbells issue DMA through the IOMMU.
    pub fn mmio_write(
        &mut self,
        _dev: DeviceId,
        _bar: u8,
        _offset: u64,
        _data: &[u8],
    ) -> Result<(), PlatformError> {
        todo!("helper: lib.rs mmio")
    }
}
