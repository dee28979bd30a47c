//! The `dma-engine` device model: a PCI function that copies, fills and checksums memory by
//! DMA through the IOMMU, so any VFIO client can drive real DMA.
//!
//! Config space (256 bytes): vendor/device/class from the platform, a 64-bit non-prefetchable
//! memory BAR0 of [`BAR0_SIZE`] bytes, an MSI-X capability with [`IRQ_COUNT`] vector (table and
//! PBA in BAR0), writable command register bits (memory space, bus master, parity, SERR, INTx
//! disable). Everything else is read-only.
//!
//! BAR0 registers (little-endian; also in `docs/dma-engine.md`):
//!
//! | Offset | Size | Name            | Access | Meaning                                             |
//! |--------|------|-----------------|--------|-----------------------------------------------------|
//! | 0x000  | 4    | `ID`            | RO     | [`DMA_ENGINE_MAGIC`] (`0x444d4145`)                 |
//! | 0x004  | 4    | `VERSION`       | RO     | [`DMA_ENGINE_VERSION`] (1)                          |
//! | 0x008  | 8    | `SRC`           | RW     | source IOVA (copy, checksum)                        |
//! | 0x010  | 8    | `DST`           | RW     | destination IOVA (copy, fill)                       |
//! | 0x018  | 8    | `LEN`           | RW     | length in bytes                                     |
//! | 0x020  | 4    | `OP`            | RW     | [`OP_COPY`] 0, [`OP_FILL`] 1, [`OP_CRC32`] 2        |
//! | 0x024  | 4    | `FILL`          | RW     | fill byte (bits 7:0)                                |
//! | 0x028  | 4    | `DOORBELL`      | WO     | write with bit 0 set: run `OP`; reads 0             |
//! | 0x02c  | 4    | `STATUS`        | RO     | idle 0, done 1, fault 2, error 3 (bad op or range)  |
//! | 0x030  | 4    | `FAULT_CODE`    | RO     | bits 7:0 reason (0 none, 1 blocked, 2 not mapped,   |
//! |        |      |                 |        | 3 permission, 4 bad physical); bit 8: write side    |
//! | 0x034  | 4    | `IRQ_ENABLE`    | RW     | bit 0: interrupt (vector 0) when an operation ends  |
//! | 0x038  | 8    | `FAULT_IOVA`    | RO     | first IOVA that faulted                             |
//! | 0x040  | 8    | `RESULT`        | RO     | CRC-32 (IEEE, as zlib) of the source, when done     |
//! | 0x048  | 8    | `BYTES_DONE`    | RO     | bytes completed (whole chunks before a fault)       |
//! | 0x050  | 4    | `COMPLETIONS`   | RO     | operations ended since reset (wraps)                |
//! | 0x800  | 16   | MSI-X table     | RW     | one entry: address lo/hi, data, vector control      |
//! | 0xc00  | 8    | MSI-X PBA       | RO     | pending bits (always 0)                             |
//!
//! Invariants and rules:
//! - Accesses are 4 bytes at 4-aligned offsets or 8 bytes at 8-aligned offsets (an 8-byte
//!   access is the two dwords, low first). Any other size or alignment, another BAR or an offset
//!   past the BAR reads all-ones and ignores writes. Reserved offsets inside BAR0 read 0.
//! - A doorbell runs the operation synchronously, through the [`DmaPort`], in chunks of at most
//!   [`CHUNK_SIZE`] bytes (one buffer of at most that size, whatever `LEN` is), and stops at the
//!   first [`DmaFault`]: `STATUS` = fault, `FAULT_CODE`/`FAULT_IOVA` say what and where. A range
//!   that would run past IOVA 2^64 - 1, or an unknown `OP`, is `STATUS` = error with no DMA.
//!   `LEN` = 0 completes at once.
//! - When an operation ends (done, fault or error) `COMPLETIONS` goes up and, if `IRQ_ENABLE`
//!   bit 0 is set and a sink is plugged in, the sink is called with vector 0. MSI-X enable and
//!   masking in config space and the table are not consulted (the layer above owns interrupt
//!   routing, as vfio-pci does); bus mastering is not enforced either.
//! - Nothing panics, whatever is written.

use super::{
    masked_write, only_keys, read_dwords, write_dwords, BarInfo, DeviceModel, DmaFault, DmaPort,
    IrqSink, ModelType,
};
use crate::addr::Iova;
use crate::hw::FaultReason;
use std::fmt;

/// Default PCI vendor id (Red Hat / QEMU's vendor id, as a placeholder).
pub const DEFAULT_VENDOR: u16 = 0x1b36;
/// Default PCI device id.
pub const DEFAULT_DEVICE: u16 = 0x10f0;
/// Default class code: system peripheral, DMA controller (0x0801), prog-if 0.
pub const DEFAULT_CLASS: u32 = 0x08_01_00;

/// The `dma-engine` in platform files: no options.
pub static MODEL: ModelType = ModelType {
    name: "dma-engine",
    ids: (DEFAULT_VENDOR, DEFAULT_DEVICE, DEFAULT_CLASS),
    check: |options| only_keys(options, &[]),
    build: |c| {
        Ok(Box::new(
            DmaEngine::new(c.vendor, c.device, c.class).with_multifunction(c.multifunction),
        ))
    },
};

/// Size of BAR0 (the register BAR).
pub const BAR0_SIZE: u64 = 4096;
/// Number of MSI-X vectors.
pub const IRQ_COUNT: u32 = 1;
/// The largest piece one DMA access moves (and the largest buffer the model allocates).
pub const CHUNK_SIZE: usize = 64 * 1024;

/// `ID` register value.
pub const DMA_ENGINE_MAGIC: u32 = 0x444d_4145;
/// `VERSION` register value.
pub const DMA_ENGINE_VERSION: u32 = 1;

/// Offset of the `ID` register (RO, 4 bytes).
pub const REG_ID: u64 = 0x000;
/// Offset of the `VERSION` register (RO, 4 bytes).
pub const REG_VERSION: u64 = 0x004;
/// Offset of the `SRC` register (RW, 8 bytes): source IOVA.
pub const REG_SRC: u64 = 0x008;
/// Offset of the `DST` register (RW, 8 bytes): destination IOVA.
pub const REG_DST: u64 = 0x010;
/// Offset of the `LEN` register (RW, 8 bytes): length in bytes.
pub const REG_LEN: u64 = 0x018;
/// Offset of the `OP` register (RW, 4 bytes): one of the `OP_*` values.
pub const REG_OP: u64 = 0x020;
/// Offset of the `FILL` register (RW, 4 bytes): fill byte in bits 7:0.
pub const REG_FILL: u64 = 0x024;
/// Offset of the `DOORBELL` register (WO, 4 bytes): bit 0 runs the operation.
pub const REG_DOORBELL: u64 = 0x028;
/// Offset of the `STATUS` register (RO, 4 bytes): one of the `STATUS_*` values.
pub const REG_STATUS: u64 = 0x02c;
/// Offset of the `FAULT_CODE` register (RO, 4 bytes): `FAULT_*` reason, [`FAULT_WRITE`] bit.
pub const REG_FAULT_CODE: u64 = 0x030;
/// Offset of the `IRQ_ENABLE` register (RW, 4 bytes): [`IRQ_ENABLE_DONE`].
pub const REG_IRQ_ENABLE: u64 = 0x034;
/// Offset of the `FAULT_IOVA` register (RO, 8 bytes).
pub const REG_FAULT_IOVA: u64 = 0x038;
/// Offset of the `RESULT` register (RO, 8 bytes): CRC-32 of a checksum operation.
pub const REG_RESULT: u64 = 0x040;
/// Offset of the `BYTES_DONE` register (RO, 8 bytes).
pub const REG_BYTES_DONE: u64 = 0x048;
/// Offset of the `COMPLETIONS` register (RO, 4 bytes).
pub const REG_COMPLETIONS: u64 = 0x050;
/// Offset of the MSI-X table in BAR0 (16 bytes per vector).
pub const REG_MSIX_TABLE: u64 = 0x800;
/// Offset of the MSI-X pending-bit array in BAR0.
pub const REG_MSIX_PBA: u64 = 0xc00;

/// `OP`: copy `LEN` bytes from `SRC` to `DST`.
pub const OP_COPY: u32 = 0;
/// `OP`: write `LEN` copies of the `FILL` byte at `DST`.
pub const OP_FILL: u32 = 1;
/// `OP`: CRC-32 (IEEE 802.3, as zlib's `crc32`) of `LEN` bytes at `SRC` into `RESULT`.
pub const OP_CRC32: u32 = 2;

/// `STATUS`: no operation since reset.
pub const STATUS_IDLE: u32 = 0;
/// `STATUS`: the last operation completed.
pub const STATUS_DONE: u32 = 1;
/// `STATUS`: the last operation stopped at a DMA fault.
pub const STATUS_FAULT: u32 = 2;
/// `STATUS`: the last operation was refused (unknown `OP`, range past 2^64); no DMA was done.
pub const STATUS_ERROR: u32 = 3;

/// `FAULT_CODE` reason: no fault.
pub const FAULT_NONE: u32 = 0;
/// `FAULT_CODE` reason: [`FaultReason::Blocked`].
pub const FAULT_BLOCKED: u32 = 1;
/// `FAULT_CODE` reason: [`FaultReason::NotMapped`].
pub const FAULT_NOT_MAPPED: u32 = 2;
/// `FAULT_CODE` reason: [`FaultReason::Permission`].
pub const FAULT_PERMISSION: u32 = 3;
/// `FAULT_CODE` reason: [`FaultReason::BadPhysical`].
pub const FAULT_BAD_PHYSICAL: u32 = 4;
/// `FAULT_CODE` bit: the faulting access was the write side (clear: the read side).
pub const FAULT_WRITE: u32 = 1 << 8;

/// `IRQ_ENABLE` bit: raise vector 0 when an operation ends.
pub const IRQ_ENABLE_DONE: u32 = 1;

/// The `FAULT_CODE` reason value for a fault reason.
pub fn fault_code(reason: FaultReason) -> u32 {
    match reason {
        FaultReason::Blocked => FAULT_BLOCKED,
        FaultReason::NotMapped => FAULT_NOT_MAPPED,
        FaultReason::Permission => FAULT_PERMISSION,
        FaultReason::BadPhysical => FAULT_BAD_PHYSICAL,
    }
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Continue a CRC-32 (IEEE 802.3, reflected, as zlib's `crc32(crc, data)`): start with 0.
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

const CONFIG_SIZE: usize = 256;
const MSIX_CAP: usize = 0x40;
/// Command register bits software may set: memory space, bus master, parity error response,
/// SERR enable, INTx disable.
const COMMAND_WRITE_MASK: u16 = 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;

/// The `dma-engine` PCI function.
pub struct DmaEngine {
    vendor: u16,
    device: u16,
    class: u32,
    multifunction: bool,
    config: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    regs: Regs,
    msix_table: [u32; 4],
    sink: Option<IrqSink>,
}

/// The BAR0 register state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Regs {
    src: u64,
    dst: u64,
    len: u64,
    op: u32,
    fill: u32,
    status: u32,
    fault_code: u32,
    irq_enable: u32,
    fault_iova: u64,
    result: u64,
    bytes_done: u64,
    completions: u32,
}

impl fmt::Debug for DmaEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaEngine")
            .field("vendor", &format_args!("{:#06x}", self.vendor))
            .field("device", &format_args!("{:#06x}", self.device))
            .field("regs", &self.regs)
            .field("irq_sink", &self.sink.is_some())
            .finish()
    }
}

impl Default for DmaEngine {
    fn default() -> DmaEngine {
        DmaEngine::new(DEFAULT_VENDOR, DEFAULT_DEVICE, DEFAULT_CLASS)
    }
}

/// Which side of an operation faulted.
#[derive(Copy, Clone)]
enum Side {
    Read,
    Write,
}

impl DmaEngine {
    /// A dma-engine with these PCI ids and 24-bit class code (higher bits are dropped).
    pub fn new(vendor: u16, device: u16, class: u32) -> DmaEngine {
        let mut e = DmaEngine {
            vendor,
            device,
            class: class & 0xff_ff_ff,
            multifunction: false,
            config: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            regs: Regs::default(),
            msix_table: [0; 4],
            sink: None,
        };
        e.power_on();
        e
    }

    /// The same, announcing a multifunction device in the header type register.
    pub fn with_multifunction(mut self, multifunction: bool) -> DmaEngine {
        self.multifunction = multifunction;
        self.power_on();
        self
    }

    fn power_on(&mut self) {
        let c = &mut self.config;
        *c = [0; CONFIG_SIZE];
        c[0..2].copy_from_slice(&self.vendor.to_le_bytes());
        c[2..4].copy_from_slice(&self.device.to_le_bytes());
        c[6] = 0x10; // status: capability list
        c[8] = 1; // revision
        c[9] = self.class as u8;
        c[10] = (self.class >> 8) as u8;
        c[11] = (self.class >> 16) as u8;
        c[0x0e] = if self.multifunction { 0x80 } else { 0 };
        c[0x10] = 0x04; // BAR0: memory, 64-bit, not prefetchable
        c[0x2c..0x2e].copy_from_slice(&self.vendor.to_le_bytes());
        c[0x2e..0x30].copy_from_slice(&self.device.to_le_bytes());
        c[0x34] = MSIX_CAP as u8;
        // MSI-X: id 0x11, no next, table size N-1, table and PBA in BAR0.
        c[MSIX_CAP] = 0x11;
        c[MSIX_CAP + 2..MSIX_CAP + 4].copy_from_slice(&((IRQ_COUNT - 1) as u16).to_le_bytes());
        c[MSIX_CAP + 4..MSIX_CAP + 8].copy_from_slice(&(REG_MSIX_TABLE as u32).to_le_bytes());
        c[MSIX_CAP + 8..MSIX_CAP + 12].copy_from_slice(&(REG_MSIX_PBA as u32).to_le_bytes());

        let w = &mut self.wmask;
        *w = [0; CONFIG_SIZE];
        w[4..6].copy_from_slice(&COMMAND_WRITE_MASK.to_le_bytes());
        // BAR0 low dword: address bits 31:12 (size 4 KiB); BAR1 is its upper half.
        let bar_mask = !(BAR0_SIZE as u32 - 1);
        w[0x10..0x14].copy_from_slice(&bar_mask.to_le_bytes());
        w[0x14..0x18].copy_from_slice(&[0xff; 4]);
        w[0x3c] = 0xff; // interrupt line
        w[MSIX_CAP + 3] = 0xc0; // MSI-X enable, function mask

        self.regs = Regs::default();
        // Vector control: masked at power-on.
        self.msix_table = [0, 0, 0, 1];
    }

    fn read_dword(&self, off: u64) -> u32 {
        let r = &self.regs;
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match off {
            REG_ID => DMA_ENGINE_MAGIC,
            REG_VERSION => DMA_ENGINE_VERSION,
            REG_SRC => lo(r.src),
            0x00c => hi(r.src),
            REG_DST => lo(r.dst),
            0x014 => hi(r.dst),
            REG_LEN => lo(r.len),
            0x01c => hi(r.len),
            REG_OP => r.op,
            REG_FILL => r.fill,
            REG_DOORBELL => 0,
            REG_STATUS => r.status,
            REG_FAULT_CODE => r.fault_code,
            REG_IRQ_ENABLE => r.irq_enable,
            REG_FAULT_IOVA => lo(r.fault_iova),
            0x03c => hi(r.fault_iova),
            REG_RESULT => lo(r.result),
            0x044 => hi(r.result),
            REG_BYTES_DONE => lo(r.bytes_done),
            0x04c => hi(r.bytes_done),
            REG_COMPLETIONS => r.completions,
            o if (REG_MSIX_TABLE..REG_MSIX_TABLE + 16).contains(&o) => self
                .msix_table
                .get(((o - REG_MSIX_TABLE) / 4) as usize)
                .copied()
                .unwrap_or(0),
            _ => 0,
        }
    }

    fn write_dword(&mut self, off: u64, v: u32, dma: &mut dyn DmaPort) {
        let r = &mut self.regs;
        let set_lo = |x: &mut u64, v: u32| *x = (*x & !0xffff_ffff) | u64::from(v);
        let set_hi = |x: &mut u64, v: u32| *x = (*x & 0xffff_ffff) | (u64::from(v) << 32);
        match off {
            REG_SRC => set_lo(&mut r.src, v),
            0x00c => set_hi(&mut r.src, v),
            REG_DST => set_lo(&mut r.dst, v),
            0x014 => set_hi(&mut r.dst, v),
            REG_LEN => set_lo(&mut r.len, v),
            0x01c => set_hi(&mut r.len, v),
            REG_OP => r.op = v,
            REG_FILL => r.fill = v,
            REG_IRQ_ENABLE => r.irq_enable = v & IRQ_ENABLE_DONE,
            REG_DOORBELL if v & 1 != 0 => self.run(dma),
            o if (REG_MSIX_TABLE..REG_MSIX_TABLE + 16).contains(&o) => {
                let i = ((o - REG_MSIX_TABLE) / 4) as usize;
                let v = match i {
                    0 => v & !3, // message address is dword-aligned
                    3 => v & 1,  // vector control: mask bit only
                    _ => v,
                };
                if let Some(slot) = self.msix_table.get_mut(i) {
                    *slot = v;
                }
            }
            _ => {}
        }
    }

    /// Run the programmed operation (the doorbell).
    fn run(&mut self, dma: &mut dyn DmaPort) {
        let (src, dst, len, op) = (self.regs.src, self.regs.dst, self.regs.len, self.regs.op);
        self.regs.fault_code = FAULT_NONE;
        self.regs.fault_iova = 0;
        self.regs.result = 0;
        self.regs.bytes_done = 0;
        let fits = |start: u64| len == 0 || start.checked_add(len - 1).is_some();
        let outcome = match op {
            OP_COPY if fits(src) && fits(dst) => Some(self.copy(dma, src, dst, len)),
            OP_FILL if fits(dst) => Some(self.fill(dma, dst, len)),
            OP_CRC32 if fits(src) => Some(self.crc(dma, src, len)),
            _ => None,
        };
        self.regs.status = match outcome {
            None => STATUS_ERROR,
            Some(Ok(())) => STATUS_DONE,
            Some(Err((fault, side))) => {
                let w = match side {
                    Side::Read => 0,
                    Side::Write => FAULT_WRITE,
                };
                self.regs.fault_code = fault_code(fault.reason) | w;
                self.regs.fault_iova = fault.iova.raw();
                STATUS_FAULT
            }
        };
        self.regs.completions = self.regs.completions.wrapping_add(1);
        if self.regs.irq_enable & IRQ_ENABLE_DONE != 0 {
            if let Some(sink) = self.sink.as_mut() {
                sink(0);
            }
        }
    }

    fn chunk_buffer(len: u64) -> Vec<u8> {
        vec![0u8; len.min(CHUNK_SIZE as u64) as usize]
    }

    fn copy(
        &mut self,
        dma: &mut dyn DmaPort,
        src: u64,
        dst: u64,
        len: u64,
    ) -> Result<(), (DmaFault, Side)> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK_SIZE as u64) as usize;
            dma.dma_copy(
                Iova(src.wrapping_add(done)),
                Iova(dst.wrapping_add(done)),
                n,
            )
            .map_err(|(f, src_side)| (f, if src_side { Side::Read } else { Side::Write }))?;
            done += n as u64;
            self.regs.bytes_done = done;
        }
        Ok(())
    }

    fn fill(&mut self, dma: &mut dyn DmaPort, dst: u64, len: u64) -> Result<(), (DmaFault, Side)> {
        let mut buf = Self::chunk_buffer(len);
        buf.fill(self.regs.fill as u8);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK_SIZE as u64) as usize;
            let Some(chunk) = buf.get(..n) else { break };
            dma.dma_write(Iova(dst.wrapping_add(done)), chunk)
                .map_err(|f| (f, Side::Write))?;
            done += n as u64;
            self.regs.bytes_done = done;
        }
        Ok(())
    }

    fn crc(&mut self, dma: &mut dyn DmaPort, src: u64, len: u64) -> Result<(), (DmaFault, Side)> {
        let mut buf = Self::chunk_buffer(len);
        let mut done = 0u64;
        let mut crc = 0u32;
        while done < len {
            let n = (len - done).min(CHUNK_SIZE as u64) as usize;
            let Some(chunk) = buf.get_mut(..n) else { break };
            dma.dma_read(Iova(src.wrapping_add(done)), chunk)
                .map_err(|f| (f, Side::Read))?;
            crc = crc32_update(crc, chunk);
            done += n as u64;
            self.regs.bytes_done = done;
        }
        self.regs.result = u64::from(crc);
        Ok(())
    }

    /// Whether an access of `len` bytes at `offset` of `bar` is one the registers decode.
    fn decodes(bar: u8, offset: u64, len: usize) -> bool {
        bar == 0
            && matches!(len, 4 | 8)
            && offset & (len as u64 - 1) == 0
            && offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= BAR0_SIZE)
    }
}

impl DeviceModel for DmaEngine {
    fn bars(&self) -> Vec<BarInfo> {
        vec![BarInfo {
            index: 0,
            size: BAR0_SIZE,
            mmap: false,
        }]
    }

    fn has_bar(&self, index: u8) -> bool {
        index == 0
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) {
        masked_write(&mut self.config, &self.wmask, offset, data, |_, _| {});
    }

    fn mmio_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]) {
        if !Self::decodes(bar, offset, buf.len()) {
            buf.fill(0xff);
            return;
        }
        read_dwords(offset, buf, |o| self.read_dword(o));
    }

    fn mmio_write(&mut self, bar: u8, offset: u64, data: &[u8], dma: &mut dyn DmaPort) {
        if !Self::decodes(bar, offset, data.len()) {
            return;
        }
        write_dwords(offset, data, |o, v| self.write_dword(o, v, dma));
    }

    fn irq_count(&self) -> u32 {
        IRQ_COUNT
    }

    fn set_irq_sink(&mut self, sink: Option<IrqSink>) {
        self.sink = sink;
    }

    /// Function-level reset: config space and registers to power-on state; the interrupt sink
    /// (plumbing of the layer above, not device state) stays.
    fn reset(&mut self) {
        self.power_on();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// Memory at IOVAs `[base, base + data.len())`; the first `ro` bytes are read-only; every
    /// other IOVA is not mapped. Records the largest access it saw.
    struct FakeBus {
        base: u64,
        data: Vec<u8>,
        ro: usize,
        largest: usize,
        accesses: usize,
    }

    impl FakeBus {
        fn new(base: u64, size: usize) -> FakeBus {
            FakeBus {
                base,
                data: vec![0; size],
                ro: 0,
                largest: 0,
                accesses: 0,
            }
        }
        fn index(&self, iova: Iova, len: usize) -> Result<usize, DmaFault> {
            let start = iova.raw().checked_sub(self.base);
            let fault = |at: u64| DmaFault {
                iova: Iova(at),
                reason: FaultReason::NotMapped,
            };
            let Some(start) = start else {
                return Err(fault(iova.raw()));
            };
            let size = self.data.len() as u64;
            if start >= size {
                return Err(fault(iova.raw()));
            }
            if start + len as u64 > size {
                return Err(fault(self.base + size));
            }
            Ok(start as usize)
        }
    }

    impl DmaPort for FakeBus {
        fn dma_read(&mut self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault> {
            self.largest = self.largest.max(buf.len());
            self.accesses += 1;
            let i = self.index(iova, buf.len())?;
            buf.copy_from_slice(&self.data[i..i + buf.len()]);
            Ok(())
        }
        fn dma_write(&mut self, iova: Iova, data: &[u8]) -> Result<(), DmaFault> {
            self.largest = self.largest.max(data.len());
            self.accesses += 1;
            let i = self.index(iova, data.len())?;
            if i < self.ro {
                return Err(DmaFault {
                    iova,
                    reason: FaultReason::Permission,
                });
            }
            self.data[i..i + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn w32(e: &mut DmaEngine, bus: &mut FakeBus, off: u64, v: u32) {
        e.mmio_write(0, off, &v.to_le_bytes(), bus);
    }
    fn w64(e: &mut DmaEngine, bus: &mut FakeBus, off: u64, v: u64) {
        e.mmio_write(0, off, &v.to_le_bytes(), bus);
    }
    fn r32(e: &mut DmaEngine, off: u64) -> u32 {
        let mut b = [0u8; 4];
        e.mmio_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn r64(e: &mut DmaEngine, off: u64) -> u64 {
        let mut b = [0u8; 8];
        e.mmio_read(0, off, &mut b);
        u64::from_le_bytes(b)
    }

    fn program(e: &mut DmaEngine, bus: &mut FakeBus, op: u32, src: u64, dst: u64, len: u64) {
        w64(e, bus, REG_SRC, src);
        w64(e, bus, REG_DST, dst);
        w64(e, bus, REG_LEN, len);
        w32(e, bus, REG_OP, op);
        w32(e, bus, REG_DOORBELL, 1);
    }

    #[test]
    fn id_and_registers_read_back() {
        let mut e = DmaEngine::default();
        let mut bus = FakeBus::new(0, 0);
        assert_eq!(r32(&mut e, REG_ID), DMA_ENGINE_MAGIC);
        assert_eq!(r32(&mut e, REG_VERSION), DMA_ENGINE_VERSION);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_IDLE);
        w64(&mut e, &mut bus, REG_SRC, 0x1122_3344_5566_7788);
        assert_eq!(r64(&mut e, REG_SRC), 0x1122_3344_5566_7788);
        assert_eq!(r32(&mut e, REG_SRC + 4), 0x1122_3344);
        w32(&mut e, &mut bus, REG_SRC + 4, 0xaabb_ccdd);
        assert_eq!(r64(&mut e, REG_SRC), 0xaabb_ccdd_5566_7788);
        // Read-only registers ignore writes.
        w32(&mut e, &mut bus, REG_STATUS, 7);
        w32(&mut e, &mut bus, REG_ID, 7);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_IDLE);
        assert_eq!(r32(&mut e, REG_ID), DMA_ENGINE_MAGIC);
        assert_eq!(r32(&mut e, REG_DOORBELL), 0);
        assert_eq!(r32(&mut e, 0x100), 0, "reserved reads 0");
    }

    #[test]
    fn bad_sizes_offsets_and_bars_read_all_ones_and_ignore_writes() {
        let mut e = DmaEngine::default();
        let mut bus = FakeBus::new(0, 0);
        let mut b2 = [0u8; 2];
        e.mmio_read(0, REG_ID, &mut b2);
        assert_eq!(b2, [0xff; 2]);
        assert_eq!(r32(&mut e, 2), u32::MAX, "unaligned");
        assert_eq!(
            r64(&mut e, REG_VERSION),
            u64::MAX,
            "8 bytes at a 4-aligned offset"
        );
        assert_eq!(r32(&mut e, BAR0_SIZE), u32::MAX, "past the BAR");
        assert_eq!(r32(&mut e, u64::MAX - 3), u32::MAX);
        let mut b = [0u8; 4];
        e.mmio_read(1, 0, &mut b);
        assert_eq!(b, [0xff; 4]);
        let mut empty = [0u8; 0];
        e.mmio_read(0, 0, &mut empty);
        e.mmio_write(0, REG_SRC, &[1, 2], &mut bus);
        e.mmio_write(0, REG_SRC + 1, &[1, 2, 3, 4], &mut bus);
        e.mmio_write(3, REG_SRC, &[1, 2, 3, 4], &mut bus);
        e.mmio_write(0, u64::MAX, &[1, 2, 3, 4, 5, 6, 7, 8], &mut bus);
        e.mmio_write(0, REG_SRC, &[0; 16], &mut bus);
        assert_eq!(r64(&mut e, REG_SRC), 0);
        assert_eq!(bus.accesses, 0);
    }

    #[test]
    fn copy_moves_bytes_and_reports_done() {
        let mut e = DmaEngine::default();
        let mut bus = FakeBus::new(0x10_0000, 0x4_0000);
        for (i, b) in bus.data[..0x1_8000].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        program(&mut e, &mut bus, OP_COPY, 0x10_0000, 0x12_0000, 0x1_8000);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_DONE);
        assert_eq!(r64(&mut e, REG_BYTES_DONE), 0x1_8000);
        assert_eq!(bus.data[0x2_0000..0x3_8000], bus.data[..0x1_8000]);
        assert!(bus.largest <= CHUNK_SIZE);
        assert_eq!(r32(&mut e, REG_FAULT_CODE), FAULT_NONE);
        assert_eq!(r32(&mut e, REG_COMPLETIONS), 1);
    }

    #[test]
    fn fill_writes_the_fill_byte() {
        let mut e = DmaEngine::default();
        let mut bus = FakeBus::new(0, 0x3000);
        w32(&mut e, &mut bus, REG_FILL, 0x1a5);
        program(&mut e, &mut bus, OP_FILL, 0, 0x1000, 0x1001);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_DONE);
        assert!(bus.data[0x1000..0x2001].iter().all(|&b| b == 0xa5));
        assert_eq!(bus.data[0x2001], 0);
        assert_eq!(bus.data[0xfff], 0);
    }

    #[test]
    fn checksum_is_crc32_of_the_source() {
        assert_eq!(crc32_update(0, b"123456789"), 0xcbf4_3926);
        assert_eq!(
            crc32_update(crc32_update(0, b"1234"), b"56789"),
            0xcbf4_3926
        );
        let mut e = DmaEngine::default();
        let mut bus = FakeBus::new(0x4000, 0x3_0000);
        for (i, b) in bus.data.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let want = u64::from(crc32_update(0, &bus.data[0x10..0x2_0010]));
        program(&mut e, &mut bus, OP_CRC32, 0x4010, 0, 0x2_0000);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_DONE);
        assert_eq!(r64(&mut e, REG_RESULT), want);
    }

    #[test]
    fn read_fault_stops_the_copy_and_is_reported() {
        let mut e = DmaEngine::default();
        let mut bus = FakeBus::new(0, 0x2_0000);
        // The source runs off the end of mapped memory in the second chunk.
        program(&mut e, &mut bus, OP_COPY, 0x1_8000, 0, 0x1_0000 + 0x1_0000);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_FAULT);
        assert_eq!(r32(&mut e, REG_FAULT_CODE), FAULT_NOT_MAPPED);
        assert_eq!(r64(&mut e, REG_FAULT_IOVA), 0x2_0000);
        assert_eq!(r64(&mut e, REG_BYTES_DONE), 0);
    }

    #[test]
    fn write_fault_reports_the_write_side() {
        let mut e = DmaEngine::default();
        let mut bus = FakeBus::new(0, 0x4_0000);
        bus.ro = 0x2_0000;
        program(&mut e, &mut bus, OP_COPY, 0x3_0000, 0x1_0000, 0x1000);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_FAULT);
        assert_eq!(r32(&mut e, REG_FAULT_CODE), FAULT_PERMISSION | FAULT_WRITE);
        assert_eq!(r64(&mut e, REG_FAULT_IOVA), 0x1_0000);
        // A later successful operation clears the fault registers.
        program(&mut e, &mut bus, OP_COPY, 0x3_0000, 0x2_0000, 0x1000);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_DONE);
        assert_eq!(r32(&mut e, REG_FAULT_CODE), FAULT_NONE);
        assert_eq!(r64(&mut e, REG_FAULT_IOVA), 0);
    }

    #[test]
    fn huge_length_is_chunked_and_stops_at_the_first_fault() {
        let mut e = DmaEngine::default();
        let mut bus = FakeBus::new(0, 0x2_0000);
        program(&mut e, &mut bus, OP_CRC32, 0, 0, u64::MAX);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_FAULT);
        assert_eq!(r64(&mut e, REG_FAULT_IOVA), 0x2_0000);
        assert_eq!(r64(&mut e, REG_BYTES_DONE), 0x2_0000);
        assert!(bus.largest <= CHUNK_SIZE);
        program(&mut e, &mut bus, OP_FILL, 0, 0x1_0000, 1 << 62);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_FAULT);
        assert_eq!(r32(&mut e, REG_FAULT_CODE), FAULT_NOT_MAPPED | FAULT_WRITE);
    }

    #[test]
    fn bad_op_and_wrapping_ranges_are_errors_without_dma() {
        let mut e = DmaEngine::default();
        let mut bus = FakeBus::new(0, 0x1000);
        program(&mut e, &mut bus, 9, 0, 0, 16);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_ERROR);
        program(&mut e, &mut bus, OP_COPY, u64::MAX - 4, 0, 16);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_ERROR);
        program(&mut e, &mut bus, OP_FILL, 0, u64::MAX, 2);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_ERROR);
        assert_eq!(bus.accesses, 0);
        // The very last byte of the IOVA space is a valid range end.
        program(&mut e, &mut bus, OP_FILL, 0, u64::MAX, 1);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_FAULT);
        program(&mut e, &mut bus, OP_COPY, 0, 0, 0);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_DONE);
    }

    #[test]
    fn interrupt_fires_on_completion_only_when_enabled() {
        let mut e = DmaEngine::default();
        let mut bus = FakeBus::new(0, 0x2000);
        let count = Arc::new(AtomicU32::new(0));
        let seen = count.clone();
        e.set_irq_sink(Some(Box::new(move |v| {
            assert_eq!(v, 0);
            seen.fetch_add(1, Ordering::SeqCst);
        })));
        program(&mut e, &mut bus, OP_COPY, 0, 0x1000, 0x100);
        assert_eq!(count.load(Ordering::SeqCst), 0);
        w32(&mut e, &mut bus, REG_IRQ_ENABLE, IRQ_ENABLE_DONE);
        assert_eq!(r32(&mut e, REG_IRQ_ENABLE), IRQ_ENABLE_DONE);
        program(&mut e, &mut bus, OP_COPY, 0, 0x1000, 0x100);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        program(&mut e, &mut bus, OP_COPY, 0, 0x8000, 0x100);
        assert_eq!(r32(&mut e, REG_STATUS), STATUS_FAULT);
        assert_eq!(
            count.load(Ordering::SeqCst),
            2,
            "a fault ends the operation too"
        );
        w32(&mut e, &mut bus, REG_DOORBELL, 0);
        assert_eq!(count.load(Ordering::SeqCst), 2, "doorbell needs bit 0");
        e.set_irq_sink(None);
        program(&mut e, &mut bus, OP_COPY, 0, 0x1000, 0x100);
        assert_eq!(r32(&mut e, REG_COMPLETIONS), 4);
    }

    #[test]
    fn config_space_has_ids_a_sizable_bar_and_msix() {
        let mut e = DmaEngine::new(0x1234, 0x5678, 0x08_01_00).with_multifunction(true);
        let cfg = |e: &DmaEngine, off: usize| {
            u32::from_le_bytes([
                e.config()[off],
                e.config()[off + 1],
                e.config()[off + 2],
                e.config()[off + 3],
            ])
        };
        assert_eq!(cfg(&e, 0), 0x5678_1234);
        assert_eq!(cfg(&e, 8) >> 8, 0x08_01_00);
        assert_eq!(e.config()[0x0e], 0x80);
        assert_eq!(e.config().len(), 256);
        // BAR sizing.
        e.config_write(0x10, &[0xff; 8]);
        assert_eq!(cfg(&e, 0x10), 0xffff_f004);
        assert_eq!(cfg(&e, 0x14), 0xffff_ffff);
        e.config_write(0x10, &0xfebf_0000u32.to_le_bytes());
        assert_eq!(cfg(&e, 0x10), 0xfebf_0004);
        // Command register masks.
        e.config_write(4, &[0xff, 0xff]);
        assert_eq!(
            u16::from_le_bytes([e.config()[4], e.config()[5]]),
            COMMAND_WRITE_MASK
        );
        // Read-only ids; no panic at the edges.
        e.config_write(0, &[0; 4]);
        e.config_write(250, &[0xff; 100]);
        e.config_write(u64::MAX, &[0xff; 2]);
        assert_eq!(cfg(&e, 0), 0x5678_1234);
        // MSI-X: capability at the pointer, one vector, table and PBA in BAR0.
        let cap = usize::from(e.config()[0x34]);
        assert_eq!(e.config()[cap], 0x11);
        assert_eq!(cfg(&e, cap) >> 16 & 0x7ff, 0);
        assert_eq!(cfg(&e, cap + 4), REG_MSIX_TABLE as u32);
        assert_eq!(cfg(&e, cap + 8), REG_MSIX_PBA as u32);
        e.config_write((cap + 3) as u64, &[0xff]);
        assert_eq!(e.config()[cap + 3], 0xc0);
        assert_eq!(e.irq_count(), 1);
        assert_eq!(
            e.bars(),
            vec![BarInfo {
                index: 0,
                size: BAR0_SIZE,
                mmap: false
            }]
        );
        // The MSI-X table starts masked and is writable.
        assert_eq!(r32(&mut e, REG_MSIX_TABLE + 12), 1);
        let mut bus = FakeBus::new(0, 0);
        w32(&mut e, &mut bus, REG_MSIX_TABLE, 0xfee0_0003);
        assert_eq!(r32(&mut e, REG_MSIX_TABLE), 0xfee0_0000);
        // Reset restores power-on state.
        w64(&mut e, &mut bus, REG_LEN, 5);
        e.reset();
        assert_eq!(r64(&mut e, REG_LEN), 0);
        assert_eq!(cfg(&e, 0x10), 4);
        assert_eq!(e.config()[0x0e], 0x80);
    }

    #[test]
    fn arbitrary_register_traffic_never_panics() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 64,
            ..Default::default()
        });
        let access = (
            any::<bool>(),
            0u8..3,
            prop_oneof![0u64..0x60, 0u64..0x1100, any::<u64>()],
            prop::collection::vec(any::<u8>(), 0..10),
        );
        runner
            .run(&prop::collection::vec(access, 0..64), |accesses| {
                let mut e = DmaEngine::default();
                let mut bus = FakeBus::new(0x1000, 0x2_0000);
                for (write, bar, off, data) in accesses {
                    if write {
                        e.mmio_write(bar, off, &data, &mut bus);
                    } else {
                        let mut buf = data.clone();
                        e.mmio_read(bar, off, &mut buf);
                    }
                    e.config_write(off, &data);
                }
                prop_assert!(bus.largest <= CHUNK_SIZE);
                Ok(())
            })
            .unwrap();
    }

    mod through_the_platform {
        use super::super::*;
        use crate::addr::{UserVa, PAGE_SIZE};
        use crate::hw::DomainSpec;
        use crate::memory::{SimMemory, UserMemory};
        use crate::pagetable::radix::RadixPageTable;
        use crate::pagetable::{Access, Prot};
        use crate::{Platform, PlatformError};
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;

        const VA: u64 = 0x7f00_0000_0000;
        const IOVA: u64 = 0x10_0000;

        fn w(p: &mut Platform, dev: crate::topology::DeviceId, off: u64, v: u64, size: usize) {
            p.mmio_write(dev, 0, off, &v.to_le_bytes()[..size]).unwrap();
        }
        /// Read a register: 8 bytes at 8-aligned offsets, else 4.
        fn r(p: &mut Platform, dev: crate::topology::DeviceId, off: u64) -> u64 {
            let mut b = [0u8; 8];
            let n = if off & 7 == 0 { 8 } else { 4 };
            p.mmio_read(dev, 0, off, &mut b[..n]).unwrap();
            u64::from_le_bytes(b)
        }
        fn run(
            p: &mut Platform,
            dev: crate::topology::DeviceId,
            op: u32,
            src: u64,
            dst: u64,
            len: u64,
        ) -> u32 {
            w(p, dev, REG_SRC, src, 8);
            w(p, dev, REG_DST, dst, 8);
            w(p, dev, REG_LEN, len, 8);
            w(p, dev, REG_OP, u64::from(op), 4);
            w(p, dev, REG_DOORBELL, 1, 4);
            r(p, dev, REG_STATUS) as u32
        }

        /// The builtin platform with 4 pages of program memory pinned and mapped read-write at
        /// `IOVA` in a radix domain that `dev`'s requester id is attached to.
        fn rig(name: &str) -> (Platform, crate::topology::DeviceId, Arc<SimMemory>) {
            let mut p = Platform::builtin();
            let dev = p.topology.find_name(name).unwrap();
            let sim = SimMemory::new();
            sim.map(UserVa(VA), 4 * PAGE_SIZE, true);
            let space = p.memory.add_space(sim.clone());
            let pfn = p.memory.frames.pin(space, UserVa(VA), 4).unwrap();
            let domain = p
                .iommu
                .alloc_domain(DomainSpec::Paging(Box::new(RadixPageTable::new())))
                .unwrap();
            p.iommu
                .map(domain, Iova(IOVA), pfn.addr(), 4 * PAGE_SIZE, Prot::RW)
                .unwrap();
            let rid = p.dma_rid(dev);
            p.iommu.set_context(rid, Some(domain)).unwrap();
            (p, dev, sim)
        }

        #[test]
        fn dma_engine_copies_and_checksums_through_the_iommu() {
            let (mut p, dma0, sim) = rig("dma0");
            assert_eq!(r(&mut p, dma0, REG_ID) as u32, DMA_ENGINE_MAGIC);
            let data: Vec<u8> = (0..PAGE_SIZE as usize)
                .map(|i| (i * 13 + 1) as u8)
                .collect();
            sim.write(UserVa(VA), &data).unwrap();
            let fired = Arc::new(AtomicU32::new(0));
            let seen = fired.clone();
            p.models
                .get_mut(&dma0)
                .unwrap()
                .set_irq_sink(Some(Box::new(move |v| {
                    seen.fetch_add(v + 1, Ordering::SeqCst);
                })));
            w(&mut p, dma0, REG_IRQ_ENABLE, 1, 4);
            let st = run(
                &mut p,
                dma0,
                OP_COPY,
                IOVA,
                IOVA + 2 * PAGE_SIZE + 8,
                PAGE_SIZE,
            );
            assert_eq!(st, STATUS_DONE);
            assert_eq!(fired.load(Ordering::SeqCst), 1, "vector 0 fired once");
            let mut back = vec![0u8; data.len()];
            sim.read(UserVa(VA + 2 * PAGE_SIZE + 8), &mut back).unwrap();
            assert_eq!(back, data);
            let st = run(&mut p, dma0, OP_CRC32, IOVA, 0, PAGE_SIZE);
            assert_eq!(st, STATUS_DONE);
            assert_eq!(
                r(&mut p, dma0, REG_RESULT),
                u64::from(crc32_update(0, &data))
            );
            assert!(p.iommu.faults().is_empty());
        }

        #[test]
        fn dma_engine_faults_are_reported_and_recorded_by_the_iommu() {
            let (mut p, dma0, _sim) = rig("dma0");
            // The copy's write side runs past the mapping.
            let st = run(
                &mut p,
                dma0,
                OP_COPY,
                IOVA,
                IOVA + 3 * PAGE_SIZE,
                2 * PAGE_SIZE,
            );
            assert_eq!(st, STATUS_FAULT);
            assert_eq!(
                r(&mut p, dma0, REG_FAULT_CODE) as u32,
                FAULT_NOT_MAPPED | FAULT_WRITE
            );
            assert_eq!(r(&mut p, dma0, REG_FAULT_IOVA), IOVA + 4 * PAGE_SIZE);
            let f = *p.iommu.faults().last().unwrap();
            assert_eq!(
                (f.device, f.iova, f.access),
                (dma0, Iova(IOVA + 4 * PAGE_SIZE), Access::Write)
            );
            // A device with no context entry is blocked.
            let dma1 = p.topology.find_name("dma1").unwrap();
            assert_eq!(run(&mut p, dma1, OP_FILL, 0, IOVA, 16), STATUS_FAULT);
            assert_eq!(
                r(&mut p, dma1, REG_FAULT_CODE) as u32,
                FAULT_BLOCKED | FAULT_WRITE
            );
        }

        #[test]
        fn devices_behind_the_pcie_to_pci_bridge_dma_with_the_alias_rid() {
            let (mut p, legacy0, sim) = rig("legacy0");
            let alias = p.dma_rid(legacy0);
            let own = p.topology.device(legacy0).unwrap().bdf.rid();
            assert_ne!(alias, own);
            w(&mut p, legacy0, REG_FILL, 0x5a, 4);
            assert_eq!(run(&mut p, legacy0, OP_FILL, 0, IOVA, 100), STATUS_DONE);
            let mut b = [0u8; 101];
            sim.read(UserVa(VA), &mut b).unwrap();
            assert!(b[..100].iter().all(|&x| x == 0x5a) && b[100] == 0);
            // Detaching the alias blocks it, whatever the device's own id has.
            p.iommu.set_context(alias, None).unwrap();
            assert_eq!(run(&mut p, legacy0, OP_FILL, 0, IOVA, 100), STATUS_FAULT);
            assert_eq!(p.iommu.faults().last().unwrap().rid, alias);
        }

        #[test]
        fn mmio_to_functions_without_registers_is_refused() {
            let mut p = Platform::builtin();
            let nvme0 = p.topology.find_name("nvme0").unwrap();
            let dma0 = p.topology.find_name("dma0").unwrap();
            let mut b = [0u8; 4];
            assert!(matches!(
                p.mmio_read(nvme0, 0, 0, &mut b),
                Err(PlatformError::NoSuchRegion(_))
            ));
            assert!(matches!(
                p.mmio_write(dma0, 2, 0, &b),
                Err(PlatformError::NoSuchRegion(_))
            ));
            let ghost = crate::topology::DeviceId(9999);
            assert!(matches!(
                p.mmio_read(ghost, 0, 0, &mut b),
                Err(PlatformError::NoDevice(_))
            ));
            // Out-of-range offsets inside an implemented BAR read all-ones.
            p.mmio_read(dma0, 0, BAR0_SIZE, &mut b).unwrap();
            assert_eq!(b, [0xff; 4]);
            // Boot drivers are recorded and every modelled function has a model.
            assert_eq!(
                p.drivers.driver(nvme0),
                &crate::drivers::Driver::Dma("nvme".into())
            );
            assert_eq!(p.drivers.driver(dma0), &crate::drivers::Driver::VfioPci);
            assert_eq!(p.models.len(), 5);
        }
    }
}
