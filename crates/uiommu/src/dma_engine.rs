//! A minimal driver for the `dma-engine` device, as a VFIO user would write one: program the
//! registers of BAR0, ring the doorbell, read the status. Used by the demo, the example and
//! the tests. The register layout is in `docs/dma-engine.md`.

use uiommu_core::Engine;
use uiommu_platform::devices::dma_engine::*;
use uiommu_platform::topology::DeviceId;
use uiommu_platform::{Iova, PlatformError};

/// What one operation of the engine ended with.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// STATUS: [`STATUS_DONE`], [`STATUS_FAULT`] or [`STATUS_ERROR`].
    pub status: u32,
    /// FAULT_CODE: the reason (low byte) and [`FAULT_WRITE`] for the write side.
    pub fault_code: u32,
    /// FAULT_IOVA: the first IOVA that faulted.
    pub fault_iova: u64,
    /// RESULT: the CRC-32 of a checksum operation.
    pub result: u64,
    /// BYTES_DONE: bytes moved before the end or the fault.
    pub bytes_done: u64,
}

impl Outcome {
    /// Whether the operation completed.
    pub fn done(&self) -> bool {
        self.status == STATUS_DONE
    }
}

/// One dma-engine function of an engine's platform.
#[derive(Debug)]
pub struct DmaEngineDriver<'a> {
    engine: &'a Engine,
    dev: DeviceId,
}

impl<'a> DmaEngineDriver<'a> {
    /// Drive the dma-engine `dev`.
    pub fn new(engine: &'a Engine, dev: DeviceId) -> Self {
        DmaEngineDriver { engine, dev }
    }

    fn w32(&self, reg: u64, v: u32) -> Result<(), PlatformError> {
        self.engine
            .with_platform(|p| p.mmio_write(self.dev, 0, reg, &v.to_le_bytes()))
    }

    fn w64(&self, reg: u64, v: u64) -> Result<(), PlatformError> {
        self.engine
            .with_platform(|p| p.mmio_write(self.dev, 0, reg, &v.to_le_bytes()))
    }

    fn r32(&self, reg: u64) -> Result<u32, PlatformError> {
        let mut b = [0u8; 4];
        self.engine
            .with_platform(|p| p.mmio_read(self.dev, 0, reg, &mut b))?;
        Ok(u32::from_le_bytes(b))
    }

    fn r64(&self, reg: u64) -> Result<u64, PlatformError> {
        let mut b = [0u8; 8];
        self.engine
            .with_platform(|p| p.mmio_read(self.dev, 0, reg, &mut b))?;
        Ok(u64::from_le_bytes(b))
    }

    /// The ID register (reads [`DMA_ENGINE_MAGIC`] on a dma-engine).
    pub fn id(&self) -> Result<u32, PlatformError> {
        self.r32(REG_ID)
    }

    /// Run one operation to completion and read back its outcome.
    pub fn run(
        &self,
        op: u32,
        src: Iova,
        dst: Iova,
        len: u64,
        fill: u8,
    ) -> Result<Outcome, PlatformError> {
        // Only the registers the operation uses are written, and the outcome registers are
        // read only when they can hold something: the doorbell zeroes FAULT_CODE, FAULT_IOVA
        // and RESULT, so a completed operation's fault registers, and any operation's RESULT
        // but a CRC's, read 0 — what is returned without reading them.
        self.w64(REG_SRC, src.raw())?;
        self.w64(REG_DST, dst.raw())?;
        self.w64(REG_LEN, len)?;
        self.w32(REG_OP, op)?;
        if op == OP_FILL {
            self.w32(REG_FILL, fill as u32)?;
        }
        self.w32(REG_DOORBELL, 1)?;
        let status = self.r32(REG_STATUS)?;
        let (fault_code, fault_iova) = if status == STATUS_FAULT {
            (self.r32(REG_FAULT_CODE)?, self.r64(REG_FAULT_IOVA)?)
        } else {
            (0, 0)
        };
        let result = if op == OP_CRC32 && status == STATUS_DONE {
            self.r64(REG_RESULT)?
        } else {
            0
        };
        Ok(Outcome {
            status,
            fault_code,
            fault_iova,
            result,
            bytes_done: self.r64(REG_BYTES_DONE)?,
        })
    }

    /// Copy `len` bytes from `src` to `dst` by DMA.
    pub fn copy(&self, src: Iova, dst: Iova, len: u64) -> Result<Outcome, PlatformError> {
        self.run(OP_COPY, src, dst, len, 0)
    }

    /// Fill `len` bytes at `dst` with `value` by DMA.
    pub fn fill(&self, dst: Iova, len: u64, value: u8) -> Result<Outcome, PlatformError> {
        self.run(OP_FILL, Iova(0), dst, len, value)
    }

    /// CRC-32 of `len` bytes at `src`, read by DMA.
    pub fn crc32(&self, src: Iova, len: u64) -> Result<Outcome, PlatformError> {
        self.run(OP_CRC32, src, Iova(0), len, 0)
    }
}
