//! The DMA path: device → IOMMU translation → frame table → the owning program's memory.
//!
//! [`DmaContext`] is the [`DmaPort`] a device model gets: it splits each access at page
//! boundaries, translates each page through the device's requester id (IOTLB first), resolves the
//! physical address through the frame table and copies from or to the owning address space.
//! The first failure stops the access, is recorded in the IOMMU's fault log and is returned.

use crate::addr::Iova;
use crate::devices::{DmaFault, DmaPort};
use crate::hw::{Iommu, Rid};
use crate::memory::Memory;
use crate::topology::DeviceId;

/// One device's view of the bus for the duration of an access.
pub struct DmaContext<'a> {
    /// The device issuing DMA.
    pub device: DeviceId,
    /// The requester id its DMA carries.
    pub rid: Rid,
    /// The IOMMU translating it.
    pub iommu: &'a mut Iommu,
    /// The memory behind it.
    pub memory: &'a Memory,
}

impl DmaPort for DmaContext<'_> {
    fn dma_read(&mut self, _iova: Iova, _buf: &mut [u8]) -> Result<(), DmaFault> {
        todo!("helper: dma.rs")
    }
    fn dma_write(&mut self, _iova: Iova, _data: &[u8]) -> Result<(), DmaFault> {
        todo!("helper: dma.rs")
    }
}
