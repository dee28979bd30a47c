//! Device models: what a PCI function does when its registers are accessed.
//!
//! A model sees the rest of the machine only through a [`DmaPort`], which translates every
//! access through the IOMMU (and records faults there). Interrupts leave the model through an
//! [`IrqSink`] that the layer above plugs in (an eventfd for VFIO users).

pub mod dma_engine;
pub mod mock;
pub mod nvme;

use crate::addr::Iova;
use crate::hw::FaultReason;
use std::path::Path;

/// Every device model a platform file can name with `model = "<name>"` (beside `mock`, the
/// selftest's hot-added device, and `generic`, config space only). A new model is a file in
/// this directory with its `MODEL`, and a line here.
pub static MODELS: &[&ModelType] = &[&dma_engine::MODEL, &nvme::MODEL];

/// The registered model named `name`.
pub fn model_type(name: &str) -> Option<&'static ModelType> {
    MODELS.iter().copied().find(|t| t.name == name)
}

/// A device model platform files can name: its name, default ids, and how to check its
/// options and build it for one function.
#[derive(Debug)]
pub struct ModelType {
    /// The name in platform files (`model = "dma-engine"`).
    pub name: &'static str,
    /// (vendor, device, class) of a function that gives none.
    pub ids: (u16, u16, u32),
    /// Check a function's `options` table when the platform file is read (unknown keys, types,
    /// ranges): an error refuses the file with this message.
    pub check: fn(&toml::Table) -> Result<(), String>,
    /// The model of one function (options already checked); an error (a backing file that
    /// cannot be opened, ...) refuses the platform ([`crate::Platform::try_new`]).
    pub build: fn(&ModelConfig<'_>) -> Result<Box<dyn DeviceModel>, String>,
}

/// What a model is built from: the function's ids and place, and its options.
#[derive(Debug)]
pub struct ModelConfig<'a> {
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// 24-bit class code.
    pub class: u32,
    /// Whether the function is part of a multifunction device (header type bit 7).
    pub multifunction: bool,
    /// The `options` table of the function (empty when none).
    pub options: &'a toml::Table,
    /// Where relative paths in options start (the platform file's directory; `None`: the
    /// working directory).
    pub base_dir: Option<&'a Path>,
}

/// A register read of 4 or 8 bytes at `offset` made of dword reads, low first (the models'
/// registers are dwords; an 8-byte access is two). The caller has checked the size.
pub(crate) fn read_dwords(offset: u64, buf: &mut [u8], mut read: impl FnMut(u64) -> u32) {
    let lo = read(offset);
    if buf.len() == 8 {
        let hi = read(offset + 4);
        buf.copy_from_slice(&(u64::from(lo) | (u64::from(hi) << 32)).to_le_bytes());
    } else if buf.len() == 4 {
        buf.copy_from_slice(&lo.to_le_bytes());
    }
}

/// A register write of 4 or 8 bytes as dword writes, low first (see [`read_dwords`]).
pub(crate) fn write_dwords(offset: u64, data: &[u8], mut write: impl FnMut(u64, u32)) {
    let dword = |d: &[u8]| -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(d);
        u32::from_le_bytes(b)
    };
    match (data.get(0..4), data.get(4..8)) {
        (Some(lo), Some(hi)) => {
            write(offset, dword(lo));
            write(offset + 4, dword(hi));
        }
        (Some(lo), None) => write(offset, dword(lo)),
        _ => {}
    }
}

/// A config-space write through a write mask: each byte of `data` at `offset` changes only the
/// bits `wmask` lets it; bytes past either array are dropped. Calls `each` with every offset
/// written and the byte given.
pub(crate) fn masked_write(
    config: &mut [u8],
    wmask: &[u8],
    offset: u64,
    data: &[u8],
    mut each: impl FnMut(usize, u8),
) {
    for (i, &b) in data.iter().enumerate() {
        let Some(off) = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
        else {
            return;
        };
        let (Some(slot), Some(&mask)) = (config.get_mut(off), wmask.get(off)) else {
            return;
        };
        *slot = (*slot & !mask) | (b & mask);
        each(off, b);
    }
}

/// Only `allowed` keys in `options`: the message names the first other one.
pub fn only_keys(options: &toml::Table, allowed: &[&str]) -> Result<(), String> {
    match options.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) if allowed.is_empty() => Err(format!("unknown option {k:?} (it takes none)")),
        Some(k) => Err(format!(
            "unknown option {k:?} (known: {})",
            allowed.join(", ")
        )),
    }
}

/// A DMA access that the IOMMU (or memory behind it) refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DMA fault at {iova}: {reason:?}")]
pub struct DmaFault {
    /// The first IOVA that faulted.
    pub iova: Iova,
    /// Why.
    pub reason: FaultReason,
}

/// The device side of the bus: DMA through the IOMMU.
pub trait DmaPort {
    /// Read `buf.len()` bytes at `iova`.
    fn dma_read(&mut self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault>;
    /// Write `data` at `iova`.
    fn dma_write(&mut self, iova: Iova, data: &[u8]) -> Result<(), DmaFault>;
    /// Copy `len` bytes from `src` to `dst`, both this device's IOVAs, as a copy engine does:
    /// the result is the same as `dma_read` of the source into a buffer then `dma_write` of it
    /// (which is what this default does), including the fault recorded and which side it is
    /// (`Err((fault, true))` for the source). A port may move the bytes without the buffer.
    fn dma_copy(&mut self, src: Iova, dst: Iova, len: usize) -> Result<(), (DmaFault, bool)> {
        copy_through_buffer(self, src, dst, len)
    }
}

/// A copy as `dma_read` of the source into a buffer then `dma_write` of it: what
/// [`DmaPort::dma_copy`] means, and what a port that moves bytes another way falls back to.
pub fn copy_through_buffer<P: DmaPort + ?Sized>(
    port: &mut P,
    src: Iova,
    dst: Iova,
    len: usize,
) -> Result<(), (DmaFault, bool)> {
    let mut buf = vec![0u8; len];
    port.dma_read(src, &mut buf).map_err(|f| (f, true))?;
    port.dma_write(dst, &buf).map_err(|f| (f, false))
}

/// Where a model's interrupts go: called with the vector number.
pub type IrqSink = Box<dyn FnMut(u32) + Send>;

/// A BAR a model exposes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index (0..6).
    pub index: u8,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Whether userspace may mmap it.
    pub mmap: bool,
}

/// What every device model does.
pub trait DeviceModel: Send + std::fmt::Debug {
    /// The BARs the function implements.
    fn bars(&self) -> Vec<BarInfo>;
    /// Whether BAR `index` is one of [`bars`](Self::bars) (asked on every register access; a
    /// model may answer without building the list).
    fn has_bar(&self, index: u8) -> bool {
        self.bars().iter().any(|b| b.index == index)
    }
    /// PCI config space (256 bytes, or 4096 for PCIe).
    fn config(&self) -> &[u8];
    /// Write config space (the model applies its write masks).
    fn config_write(&mut self, offset: u64, data: &[u8]);
    /// Read a register range of a BAR. Out-of-range bytes read as all-ones.
    fn mmio_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]);
    /// Write a register range of a BAR; a doorbell write may issue DMA through `dma`.
    fn mmio_write(&mut self, bar: u8, offset: u64, data: &[u8], dma: &mut dyn DmaPort);
    /// Number of interrupt vectors (MSI-X table size; 0 if none).
    fn irq_count(&self) -> u32;
    /// Plug in (or remove) where interrupts go.
    fn set_irq_sink(&mut self, sink: Option<IrqSink>);
    /// Function-level reset: registers to power-on state.
    fn reset(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_registered_once_and_are_not_the_built_in_kinds() {
        let mut names: Vec<&str> = MODELS.iter().map(|t| t.name).collect();
        names.extend(["mock", "generic"]);
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "{names:?}");
        for t in MODELS {
            assert!(std::ptr::eq(model_type(t.name).unwrap(), *t));
        }
    }
}
