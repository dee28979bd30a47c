//! The `nvme` device model: an NVM Express 1.4 controller with one namespace, complete enough
//! for Linux's `nvme` driver (`drivers/nvme/host/pci.c` and `core.c`) to probe it, create I/O
//! queues, read, write and flush, and to hold a filesystem. Every byte of host memory it touches
//! (queues, PRP lists, data) goes through the [`DmaPort`], so through the IOMMU.
//!
//! Config space (4096 bytes, PCIe): vendor/device/class from [`Nvme::new`], revision 1,
//! subsystem ids = vendor/device, interrupt pin INTA; BAR0 a 64-bit non-prefetchable memory BAR
//! of [`BAR0_SIZE`] (16 KiB); capabilities Power Management at [`PM_CAP_OFFSET`], MSI-X
//! ([`IRQ_COUNT`] vectors, table and PBA in BAR0) at [`MSIX_CAP_OFFSET`], PCI Express (v2,
//! endpoint, FLR) at [`PCIE_CAP_OFFSET`]; no extended capabilities. Writable: the command
//! register's memory space, bus master, parity, SERR and INTx disable bits, cache line size,
//! interrupt line, the BAR address bits, PMCSR power state (D0/D3hot), MSI-X enable and function
//! mask, PCIe device and link control; a write of DevCtl bit 15 is a function-level reset.
//!
//! BAR0 (little-endian; also in `docs/nvme.md`):
//!
//! | Offset  | Size | Name        | Access | Meaning                                          |
//! |---------|------|-------------|--------|--------------------------------------------------|
//! | 0x000   | 8    | `CAP`       | RO     | [`CAP`]: MQES 1023, CQR, TO 7.5 s, DSTRD 0, NVM command set, 4 KiB pages only |
//! | 0x008   | 4    | `VS`        | RO     | [`VERSION`] 1.4.0                                |
//! | 0x00c   | 4    | `INTMS`     | RW1S   | interrupt mask set (one bit per vector)          |
//! | 0x010   | 4    | `INTMC`     | RW1C   | interrupt mask clear                             |
//! | 0x014   | 4    | `CC`        | RW     | EN, CSS, MPS, AMS, SHN, IOSQES, IOCQES           |
//! | 0x01c   | 4    | `CSTS`      | RO     | RDY, CFS, SHST                                   |
//! | 0x020   | 4    | `NSSR`      | RO     | not supported (CAP.NSSRS = 0): reads 0           |
//! | 0x024   | 4    | `AQA`       | RW     | admin SQ size bits 11:0, CQ size bits 27:16 (0-based) |
//! | 0x028   | 8    | `ASQ`       | RW     | admin SQ base (page-aligned)                     |
//! | 0x030   | 8    | `ACQ`       | RW     | admin CQ base (page-aligned)                     |
//! | 0x038.. | 4    | `CMBLOC`... | RO     | CMB, boot partitions, PMR: not supported, read 0 |
//! | 0x1000  | 4    | `SQyTDBL`   | WO     | SQ y tail doorbell at `0x1000 + 8y`              |
//! | 0x1004  | 4    | `CQyHDBL`   | WO     | CQ y head doorbell at `0x1000 + 8y + 4`          |
//! | 0x2000  | 144  | MSI-X table | RW     | [`IRQ_COUNT`] entries of 16 bytes                |
//! | 0x3000  | 8    | MSI-X PBA   | RO     | pending bits (always 0)                          |
//!
//! Invariants and rules:
//! - Accesses are 4 bytes at 4-aligned offsets anywhere in BAR0, or 8 bytes at 8-aligned offsets
//!   of a 64-bit register (`CAP`, `ASQ`, `ACQ`, `BPMBL`, `CMBMSC`) or of the MSI-X table and
//!   PBA (the two dwords, low first). Any other size, alignment or BAR, or an offset past the
//!   BAR, reads all-ones and ignores writes. Reserved offsets read 0; doorbells read 0.
//! - Everything is synchronous: a submission queue tail doorbell fetches, runs and completes
//!   every new entry before the write returns (one interrupt per completion queue and
//!   doorbell write). A full completion queue stops its submission queues until the host moves
//!   its head doorbell. No threads, no timers: the same writes give the same results.
//! - Host-supplied sizes and indexes are checked before use: queue sizes against [`MQES`],
//!   transfers against [`MAX_TRANSFER`] (MDTS) before any buffer is allocated, LBA ranges
//!   against the namespace, PRP lists walked only as far as the transfer needs.
//! - DMA faults: on data or a PRP list, the command fails with Data Transfer Error; fetching a
//!   submission entry or posting a completion entry sets `CSTS.CFS` and stops the controller
//!   until a reset. The fault itself is logged by the IOMMU below the [`DmaPort`].
//! - Interrupts go to the [`IrqSink`] as the completion queue's vector. MSI-X enable/masking is
//!   routing and belongs to the layer above; only when MSI-X is disabled in config space does
//!   `INTMS` bit 0 hold pin-based interrupts back.
//! - Nothing panics, whatever is written to config space, registers or host memory.

use super::{
    masked_write, only_keys, read_dwords, write_dwords, BarInfo, DeviceModel, DmaPort, IrqSink,
    ModelConfig, ModelType,
};
use crate::addr::{Iova, PAGE_SIZE};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, Ordering};

/// Default PCI vendor id (Red Hat / QEMU's, as a placeholder).
pub const DEFAULT_VENDOR: u16 = 0x1b36;
/// Default PCI device id (QEMU's NVMe controller).
pub const DEFAULT_DEVICE: u16 = 0x0010;
/// Default class code: mass storage (0x01), non-volatile memory (0x08), NVMe (0x02). Linux's
/// `nvme` driver matches this class.
pub const DEFAULT_CLASS: u32 = 0x01_08_02;
/// Default namespace size in bytes (256 MiB).
pub const DEFAULT_SIZE: u64 = 256 << 20;
/// The largest namespace a platform file may ask for (16 TiB): memory is sparse and files are
/// not preallocated, so this only bounds LBA arithmetic comfortably below overflow.
pub const MAX_SIZE: u64 = 1 << 44;

/// The `nvme` model in platform files. Options: `size` (namespace bytes, a multiple of 512;
/// default [`DEFAULT_SIZE`], or the backing file's length), `file` (backing file, relative to
/// the platform file; created when missing only if `size` is given; default: sparse memory),
/// `serial` (1 to 20 printable ASCII characters; default `UIOMMU` and an instance number).
pub static MODEL: ModelType = ModelType {
    name: "nvme",
    ids: (DEFAULT_VENDOR, DEFAULT_DEVICE, DEFAULT_CLASS),
    check: check_options,
    build: build_model,
};

/// Size of BAR0.
pub const BAR0_SIZE: u64 = 0x4000;
/// Number of interrupt vectors (MSI-X table size): the admin queue's and one per I/O queue.
pub const IRQ_COUNT: u32 = 9;
/// I/O queue pairs the controller supports (queue ids 1..=8).
pub const MAX_IO_QUEUES: u16 = 8;
/// Queues of each kind, the admin queue included.
const QUEUES: usize = MAX_IO_QUEUES as usize + 1;
/// Maximum I/O queue entries, 0-based (1024 entries).
pub const MQES: u16 = 1023;
/// `CAP.TO`: worst-case time to ready, in 500 ms units (7.5 s).
pub const TIMEOUT: u64 = 0x0f;
/// `CAP`: MQES, contiguous queues required (bit 16), TO (31:24), the NVM command set (bit 37);
/// DSTRD, AMS, NSSRS, MPSMIN and MPSMAX are 0 (4 KiB pages only).
pub const CAP: u64 = MQES as u64 | CAP_CQR | (TIMEOUT << 24) | CAP_CSS_NVM;
/// `CAP.CQR`: queues must be physically contiguous.
pub const CAP_CQR: u64 = 1 << 16;
/// `CAP.CSS` bit 0: the NVM command set.
pub const CAP_CSS_NVM: u64 = 1 << 37;
/// `VS`: NVMe 1.4.0.
pub const VERSION: u32 = 0x0001_0400;
/// log2 of the MDTS unit: the memory page size (4 KiB).
pub const MDTS: u8 = 7;
/// Largest data transfer of one command (MDTS: 2^7 pages = 512 KiB), and the largest buffer
/// the model allocates for one.
pub const MAX_TRANSFER: usize = (PAGE_SIZE as usize) << MDTS;
/// Logical block size (LBA format 0, LBADS 9).
pub const LBA_SIZE: u64 = 512;
/// Asynchronous Event Request Limit, 0-based: 4 requests may be outstanding.
pub const AERL: u8 = 3;
/// Abort Command Limit, 0-based.
pub const ACL: u8 = 3;
/// Error Log Page Entries, 0-based (the log holds 4 entries, all zero).
pub const ELPE: u8 = 3;
/// Composite temperature reported by the SMART log (Kelvin; 40 °C).
pub const TEMPERATURE: u16 = 313;
/// Warning composite temperature threshold (Kelvin; 70 °C), also the default over-temperature
/// threshold.
pub const WCTEMP: u16 = 343;
/// Critical composite temperature threshold (Kelvin; 100 °C).
pub const CCTEMP: u16 = 373;
/// Model number in Identify Controller.
pub const MODEL_NUMBER: &str = "uiommu NVMe";
/// Firmware revision in Identify Controller and the firmware slot log.
pub const FIRMWARE: &str = "1.0";
/// Prefix of the NVM subsystem NQN; the serial number follows.
pub const NQN_PREFIX: &str = "nqn.2026-12.org.uiommu:nvme:";

/// Offset of `CAP` (RO, 8 bytes).
pub const REG_CAP: u64 = 0x00;
/// Offset of `VS` (RO, 4 bytes).
pub const REG_VS: u64 = 0x08;
/// Offset of `INTMS` (RW1S, 4 bytes).
pub const REG_INTMS: u64 = 0x0c;
/// Offset of `INTMC` (RW1C, 4 bytes).
pub const REG_INTMC: u64 = 0x10;
/// Offset of `CC` (RW, 4 bytes).
pub const REG_CC: u64 = 0x14;
/// Offset of `CSTS` (RO, 4 bytes).
pub const REG_CSTS: u64 = 0x1c;
/// Offset of `NSSR` (not supported, 4 bytes).
pub const REG_NSSR: u64 = 0x20;
/// Offset of `AQA` (RW, 4 bytes).
pub const REG_AQA: u64 = 0x24;
/// Offset of `ASQ` (RW, 8 bytes).
pub const REG_ASQ: u64 = 0x28;
/// Offset of `ACQ` (RW, 8 bytes).
pub const REG_ACQ: u64 = 0x30;
/// Offset of `CMBLOC` (RO 0).
pub const REG_CMBLOC: u64 = 0x38;
/// Offset of `CMBSZ` (RO 0: no controller memory buffer).
pub const REG_CMBSZ: u64 = 0x3c;
/// Offset of `BPMBL` (8 bytes, RO 0: no boot partitions).
pub const REG_BPMBL: u64 = 0x48;
/// Offset of `CMBMSC` (8 bytes, RO 0).
pub const REG_CMBMSC: u64 = 0x50;
/// First doorbell: SQ y tail at `DOORBELLS + 8y`, CQ y head at `DOORBELLS + 8y + 4`.
pub const DOORBELLS: u64 = 0x1000;
/// End of the doorbell range (exclusive); writes past the last queue's are bad doorbells.
pub const DOORBELLS_END: u64 = 0x2000;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE: u64 = 0x2000;
/// Offset of the MSI-X pending-bit array in BAR0.
pub const MSIX_PBA: u64 = 0x3000;

/// `CC.EN`.
pub const CC_EN: u32 = 1;
/// `CC.SHN` shift (bits 15:14; 1 normal, 2 abrupt).
pub const CC_SHN_SHIFT: u32 = 14;
/// `CC` bits the host may set: EN, CSS, MPS, AMS, SHN, IOSQES, IOCQES.
pub const CC_WRITABLE: u32 = 0x00ff_fff1;
/// `CC.IOSQES` the controller accepts: 2^6 = 64-byte submission entries.
pub const IOSQES: u32 = 6;
/// `CC.IOCQES` the controller accepts: 2^4 = 16-byte completion entries.
pub const IOCQES: u32 = 4;
/// `CSTS.RDY`.
pub const CSTS_RDY: u32 = 1;
/// `CSTS.CFS`: controller fatal status.
pub const CSTS_CFS: u32 = 1 << 1;
/// `CSTS.SHST` mask (bits 3:2).
pub const CSTS_SHST_MASK: u32 = 3 << 2;
/// `CSTS.SHST` = shutdown processing complete.
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;

/// Admin opcode: Delete I/O Submission Queue.
pub const ADMIN_DELETE_SQ: u8 = 0x00;
/// Admin opcode: Create I/O Submission Queue.
pub const ADMIN_CREATE_SQ: u8 = 0x01;
/// Admin opcode: Get Log Page.
pub const ADMIN_GET_LOG_PAGE: u8 = 0x02;
/// Admin opcode: Delete I/O Completion Queue.
pub const ADMIN_DELETE_CQ: u8 = 0x04;
/// Admin opcode: Create I/O Completion Queue.
pub const ADMIN_CREATE_CQ: u8 = 0x05;
/// Admin opcode: Identify.
pub const ADMIN_IDENTIFY: u8 = 0x06;
/// Admin opcode: Abort.
pub const ADMIN_ABORT: u8 = 0x08;
/// Admin opcode: Set Features.
pub const ADMIN_SET_FEATURES: u8 = 0x09;
/// Admin opcode: Get Features.
pub const ADMIN_GET_FEATURES: u8 = 0x0a;
/// Admin opcode: Asynchronous Event Request.
pub const ADMIN_ASYNC_EVENT: u8 = 0x0c;
/// Admin opcode: Keep Alive.
pub const ADMIN_KEEP_ALIVE: u8 = 0x18;
/// Admin opcode: Doorbell Buffer Config (shadow doorbells for the I/O queues).
pub const ADMIN_DOORBELL_BUFFER_CONFIG: u8 = 0x7c;
/// Identify Controller OACS bit: Doorbell Buffer Config is supported.
pub const OACS_DBBUF: u16 = 1 << 8;

/// I/O opcode: Flush.
pub const IO_FLUSH: u8 = 0x00;
/// I/O opcode: Write.
pub const IO_WRITE: u8 = 0x01;
/// I/O opcode: Read.
pub const IO_READ: u8 = 0x02;
/// I/O opcode: Write Zeroes.
pub const IO_WRITE_ZEROES: u8 = 0x08;
/// I/O opcode: Dataset Management (deallocate zeroes the ranges).
pub const IO_DATASET_MANAGEMENT: u8 = 0x09;

/// Identify CNS: the namespace of NSID.
pub const CNS_NAMESPACE: u8 = 0x00;
/// Identify CNS: the controller.
pub const CNS_CONTROLLER: u8 = 0x01;
/// Identify CNS: active namespace ids above NSID.
pub const CNS_ACTIVE_NAMESPACES: u8 = 0x02;
/// Identify CNS: namespace identification descriptors of NSID.
pub const CNS_NS_DESCRIPTORS: u8 = 0x03;
/// Identify CNS: the I/O command set specific controller structure (CSI 0, the NVM command
/// set: all limits 0, "none beyond MDTS"). Some Linux versions ask for it on 1.4 controllers.
pub const CNS_CS_CONTROLLER: u8 = 0x06;

/// Log page: error information (all entries zero).
pub const LOG_ERROR: u8 = 0x01;
/// Log page: SMART / health information.
pub const LOG_SMART: u8 = 0x02;
/// Log page: firmware slot information.
pub const LOG_FIRMWARE_SLOT: u8 = 0x03;

/// Feature: Arbitration.
pub const FEAT_ARBITRATION: u8 = 0x01;
/// Feature: Power Management.
pub const FEAT_POWER_MANAGEMENT: u8 = 0x02;
/// Feature: Temperature Threshold.
pub const FEAT_TEMPERATURE_THRESHOLD: u8 = 0x04;
/// Feature: Error Recovery.
pub const FEAT_ERROR_RECOVERY: u8 = 0x05;
/// Feature: Volatile Write Cache.
pub const FEAT_VOLATILE_WRITE_CACHE: u8 = 0x06;
/// Feature: Number of Queues.
pub const FEAT_NUMBER_OF_QUEUES: u8 = 0x07;
/// Feature: Interrupt Coalescing.
pub const FEAT_INTERRUPT_COALESCING: u8 = 0x08;
/// Feature: Interrupt Vector Configuration.
pub const FEAT_INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
/// Feature: Write Atomicity Normal.
pub const FEAT_WRITE_ATOMICITY: u8 = 0x0a;
/// Feature: Asynchronous Event Configuration.
pub const FEAT_ASYNC_EVENT_CONFIG: u8 = 0x0b;

/// Asynchronous event type: error status.
pub const AEN_TYPE_ERROR: u8 = 0;
/// Asynchronous event type: SMART / health status.
pub const AEN_TYPE_SMART: u8 = 1;
/// Error event: write to a doorbell of a queue that does not exist.
pub const AEN_INVALID_DOORBELL_REGISTER: u8 = 0x00;
/// Error event: doorbell value past the queue's size, or a CQ head past its tail.
pub const AEN_INVALID_DOORBELL_VALUE: u8 = 0x01;
/// SMART event: temperature crossed a threshold.
pub const AEN_TEMPERATURE_THRESHOLD: u8 = 0x01;

/// Status field bit: Do Not Retry.
pub const STATUS_DNR: u16 = 1 << 14;
const fn generic(sc: u16) -> u16 {
    sc | STATUS_DNR
}
const fn specific(sc: u16) -> u16 {
    (1 << 8) | sc | STATUS_DNR
}
const fn media(sc: u16) -> u16 {
    (2 << 8) | sc
}
/// Status: success.
pub const STATUS_SUCCESS: u16 = 0;
/// Status: Invalid Command Opcode (generic 0x01, DNR).
pub const STATUS_INVALID_OPCODE: u16 = generic(0x01);
/// Status: Invalid Field in Command (generic 0x02, DNR).
pub const STATUS_INVALID_FIELD: u16 = generic(0x02);
/// Status: Data Transfer Error (generic 0x04; a DMA fault; retryable).
pub const STATUS_DATA_TRANSFER_ERROR: u16 = 0x04;
/// Status: Internal Error (generic 0x06; a failed flush of a backing file).
pub const STATUS_INTERNAL_ERROR: u16 = 0x06;
/// Status: Invalid Namespace or Format (generic 0x0b, DNR).
pub const STATUS_INVALID_NAMESPACE: u16 = generic(0x0b);
/// Status: PRP Offset Invalid (generic 0x13, DNR).
pub const STATUS_PRP_OFFSET_INVALID: u16 = generic(0x13);
/// Status: LBA Out of Range (generic 0x80, DNR).
pub const STATUS_LBA_OUT_OF_RANGE: u16 = generic(0x80);
/// Status: Completion Queue Invalid (command specific 0x00, DNR).
pub const STATUS_CQ_INVALID: u16 = specific(0x00);
/// Status: Invalid Queue Identifier (command specific 0x01, DNR).
pub const STATUS_INVALID_QUEUE_ID: u16 = specific(0x01);
/// Status: Invalid Queue Size (command specific 0x02, DNR).
pub const STATUS_INVALID_QUEUE_SIZE: u16 = specific(0x02);
/// Status: Asynchronous Event Request Limit Exceeded (command specific 0x05, DNR).
pub const STATUS_AER_LIMIT_EXCEEDED: u16 = specific(0x05);
/// Status: Invalid Interrupt Vector (command specific 0x08, DNR).
pub const STATUS_INVALID_VECTOR: u16 = specific(0x08);
/// Status: Invalid Log Page (command specific 0x09, DNR).
pub const STATUS_INVALID_LOG_PAGE: u16 = specific(0x09);
/// Status: Invalid Queue Deletion (command specific 0x0c, DNR).
pub const STATUS_INVALID_QUEUE_DELETION: u16 = specific(0x0c);
/// Status: Feature Identifier Not Saveable (command specific 0x0d, DNR).
pub const STATUS_FEATURE_NOT_SAVEABLE: u16 = specific(0x0d);
/// Status: Write Fault (media 0x80; a backing file write failed).
pub const STATUS_WRITE_FAULT: u16 = media(0x80);
/// Status: Unrecovered Read Error (media 0x81; a backing file read failed).
pub const STATUS_UNRECOVERED_READ_ERROR: u16 = media(0x81);

/// Offset of the Power Management capability in config space.
pub const PM_CAP_OFFSET: usize = 0x40;
/// Offset of the MSI-X capability in config space.
pub const MSIX_CAP_OFFSET: usize = 0x50;
/// Offset of the PCI Express capability in config space.
pub const PCIE_CAP_OFFSET: usize = 0x60;

/// Bytes of memory storage allocated together on first write.
pub const MEMORY_CHUNK: u64 = 64 * 1024;

const CONFIG_SIZE: usize = 4096;
const PAGE: usize = PAGE_SIZE as usize;
const SQE_SIZE: u64 = 64;
const CQE_SIZE: u64 = 16;
const IDENTIFY_SIZE: usize = 4096;
/// Command register bits software may set: memory space, bus master, parity error response,
/// SERR enable, INTx disable.
const COMMAND_WRITE_MASK: u16 = 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;
const STATUS_CAP_LIST: u16 = 0x0010;
const REVISION: u8 = 1;
/// BAR0 type bits: memory, 64-bit, not prefetchable.
const BAR_MEM_64: u32 = 0x04;
/// PMC: version 3, no D1/D2, no PME.
const PM_PMC: u16 = 0x0003;
/// PMCSR: No_Soft_Reset (D3hot → D0 keeps state).
const PM_NO_SOFT_RESET: u16 = 0x0008;
/// PCIe capabilities register: version 2, PCI Express endpoint.
const PCIE_FLAGS: u16 = 0x0002;
/// DevCap: 256-byte max payload, extended tags, no L0s/L1 latency limit, role-based error
/// reporting, function-level reset.
const PCIE_DEVCAP: u32 = 0x1 | (1 << 5) | (7 << 6) | (7 << 9) | (1 << 15) | (1 << 28);
/// DevCtl at reset: relaxed ordering, no snoop, 512-byte max read request.
const PCIE_DEVCTL: u16 = 0x2810;
/// DevCtl bits software may set (error reporting, relaxed ordering, MPS, extended tags, no
/// snoop, MRRS); bit 15 (initiate FLR) is an action, not state.
const PCIE_DEVCTL_WRITE_MASK: u16 = 0x79ff;
/// DevCtl: initiate function-level reset.
const PCIE_DEVCTL_FLR: u8 = 0x80;
/// LinkCap: 8 GT/s, x4, no ASPM, port 0.
const PCIE_LINKCAP: u32 = 0x3 | (4 << 4);
/// LinkCtl bits software may set: common clock configuration, extended synch.
const PCIE_LINKCTL_WRITE_MASK: u16 = 0x00c0;
/// LinkSta: 8 GT/s, x4, slot clock configuration.
const PCIE_LINKSTA: u16 = 0x3 | (4 << 4) | (1 << 12);
/// LinkCap2: 2.5, 5 and 8 GT/s supported.
const PCIE_LINKCAP2: u32 = 0x0e;
/// LinkCtl2: target link speed 8 GT/s.
const PCIE_LINKCTL2: u16 = 0x3;

/// Pending asynchronous events kept while no request is outstanding.
const MAX_PENDING_EVENTS: usize = 8;
/// Asynchronous Event Configuration bits kept: the SMART critical warnings.
const AEC_SUPPORTED: u32 = 0xff;
/// SMART critical warning / AEC bit: temperature.
const CRITICAL_TEMPERATURE: u8 = 1 << 1;
/// ONCS: Dataset Management (bit 2) and Write Zeroes (bit 3).
const ONCS: u16 = (1 << 2) | (1 << 3);
/// DLFEAT: deallocated blocks read as zeroes; Write Zeroes may deallocate.
const DLFEAT: u8 = 0x09;
/// Write Zeroes: the largest piece of zeroes written to a file at a time.
const ZERO_PIECE: usize = 64 * 1024;

/// Instance numbers for default serial numbers (each controller's NQN and namespace ids must
/// differ from every other's: Linux refuses duplicates).
static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(1);

/// What holds the namespace's blocks.
#[derive(Debug)]
pub enum Storage {
    /// Sparse memory: blocks never written read as zero; [`MEMORY_CHUNK`]s are allocated on
    /// first write, so an unused namespace costs nothing.
    Memory {
        /// Namespace size in bytes (rounded down to a multiple of 512).
        size: u64,
    },
    /// A file, read and written at offsets (`pread`/`pwrite`). Blocks past its end read as
    /// zero; an I/O error completes the command with a media or internal error status.
    File {
        /// The backing file, open for reading and writing.
        file: File,
        /// Namespace size in bytes (rounded down to a multiple of 512).
        size: u64,
    },
}

/// The namespace's blocks.
#[derive(Debug)]
enum Store {
    Memory(Sparse),
    File(File),
}

/// Sparse memory: [`MEMORY_CHUNK`]-byte chunks by index, allocated on first write.
#[derive(Debug, Default)]
struct Sparse {
    chunks: BTreeMap<u64, Box<[u8]>>,
}

/// The pieces of `[off, off + len)` that fall in each chunk: (chunk index, offset in it, start
/// in the buffer, length).
fn chunk_pieces(off: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = off.checked_add(done as u64)?;
        let within = (pos % MEMORY_CHUNK) as usize;
        let n = (MEMORY_CHUNK as usize - within).min(len - done);
        let piece = (pos / MEMORY_CHUNK, within, done, n);
        done += n;
        Some(piece)
    })
}

impl Sparse {
    fn read(&self, off: u64, buf: &mut [u8]) {
        for (index, within, at, n) in chunk_pieces(off, buf.len()) {
            let Some(dst) = buf.get_mut(at..at + n) else {
                return;
            };
            match self
                .chunks
                .get(&index)
                .and_then(|c| c.get(within..within + n))
            {
                Some(src) => dst.copy_from_slice(src),
                None => dst.fill(0),
            }
        }
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        for (index, within, at, n) in chunk_pieces(off, data.len()) {
            let chunk = self
                .chunks
                .entry(index)
                .or_insert_with(|| vec![0u8; MEMORY_CHUNK as usize].into_boxed_slice());
            if let (Some(dst), Some(src)) =
                (chunk.get_mut(within..within + n), data.get(at..at + n))
            {
                dst.copy_from_slice(src);
            }
        }
    }

    /// Zero `[off, off + len)`: chunks wholly inside are freed, the others cleared in part.
    /// Only allocated chunks are visited, however long the range.
    fn zero(&mut self, off: u64, len: u64) {
        let Some(last) = len.checked_sub(1).and_then(|l| off.checked_add(l)) else {
            return;
        };
        let (first_chunk, last_chunk) = (off / MEMORY_CHUNK, last / MEMORY_CHUNK);
        let touched: Vec<u64> = self
            .chunks
            .range(first_chunk..=last_chunk)
            .map(|(&k, _)| k)
            .collect();
        for index in touched {
            let start = index * MEMORY_CHUNK;
            let from = off.max(start) - start;
            let to = last.min(start + MEMORY_CHUNK - 1) - start;
            if from == 0 && to == MEMORY_CHUNK - 1 {
                self.chunks.remove(&index);
            } else if let Some(part) = self
                .chunks
                .get_mut(&index)
                .and_then(|c| c.get_mut(from as usize..=to as usize))
            {
                part.fill(0);
            }
        }
    }
}

impl Store {
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Store::Memory(m) => {
                m.read(off, buf);
                Ok(())
            }
            Store::File(f) => {
                let mut done = 0usize;
                while done < buf.len() {
                    let Some(rest) = buf.get_mut(done..) else {
                        break;
                    };
                    match f.read_at(rest, off + done as u64) {
                        Ok(0) => {
                            // Past the end of the file: never written, reads as zero.
                            rest.fill(0);
                            break;
                        }
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    fn write(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        match self {
            Store::Memory(m) => {
                m.write(off, data);
                Ok(())
            }
            Store::File(f) => f.write_all_at(data, off),
        }
    }

    /// Zero `[off, off + len)`: a punched hole where the file system can, else zeroes written
    /// (only below the file's end: past it, blocks read as zero already).
    fn zero(&mut self, off: u64, len: u64) -> io::Result<()> {
        match self {
            Store::Memory(m) => {
                m.zero(off, len);
                Ok(())
            }
            Store::File(f) => {
                use nix::fcntl::{fallocate, FallocateFlags};
                if let (Ok(o), Ok(l)) = (i64::try_from(off), i64::try_from(len)) {
                    let mode =
                        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
                    if fallocate(&*f, mode, o, l).is_ok() {
                        return Ok(());
                    }
                }
                let end = off.saturating_add(len).min(f.metadata()?.len());
                let zeroes = vec![0u8; ZERO_PIECE];
                let mut pos = off;
                while pos < end {
                    let n = (end - pos).min(ZERO_PIECE as u64) as usize;
                    f.write_all_at(zeroes.get(..n).unwrap_or(&[]), pos)?;
                    pos += n as u64;
                }
                Ok(())
            }
        }
    }

    fn flush(&self) -> io::Result<()> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::File(f) => f.sync_data(),
        }
    }
}

/// One I/O or admin submission queue.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Sq {
    base: u64,
    /// Entries (2..=4096).
    size: u32,
    head: u32,
    tail: u32,
    cqid: u16,
}

/// One completion queue.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Cq {
    base: u64,
    size: u32,
    head: u32,
    tail: u32,
    /// The phase tag the next entry is posted with.
    phase: bool,
    ien: bool,
    iv: u16,
}

impl Cq {
    fn is_full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }
    fn has_entries(&self) -> bool {
        self.tail != self.head
    }
}

/// The address of entry `index` of a queue at `base`.
fn slot(base: u64, index: u32, entry: u64) -> Option<u64> {
    base.checked_add(u64::from(index) * entry)
}

/// Whether a queue of `entries` entries of `entry` bytes at `base` stays below 2^64.
fn queue_fits(base: u64, entries: u32, entry: u64) -> bool {
    base.checked_add(u64::from(entries) * entry).is_some()
}

/// Set Features values (reset to these defaults by a controller reset).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Features {
    arbitration: u32,
    power_management: u32,
    temp_over: u16,
    temp_under: u16,
    error_recovery: u32,
    write_cache: bool,
    /// Allocated I/O submission / completion queues, 0-based.
    queues: (u16, u16),
    coalescing: u32,
    /// Coalescing Disable, one bit per vector.
    vector_cd: u32,
    write_atomicity: u32,
    async_events: u32,
}

impl Default for Features {
    fn default() -> Features {
        Features {
            arbitration: 0,
            power_management: 0,
            temp_over: WCTEMP,
            temp_under: 0,
            error_recovery: 0,
            write_cache: true,
            queues: (MAX_IO_QUEUES - 1, MAX_IO_QUEUES - 1),
            coalescing: 0,
            vector_cd: 0,
            write_atomicity: 0,
            async_events: 0,
        }
    }
}

/// An asynchronous event waiting for a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Event {
    kind: u8,
    info: u8,
    log: u8,
}

impl Event {
    fn dw0(self) -> u32 {
        u32::from(self.kind & 7) | (u32::from(self.info) << 8) | (u32::from(self.log) << 16)
    }
}

/// SMART counters (kept across resets, as a drive keeps them across power cycles).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Stats {
    blocks_read: u64,
    blocks_written: u64,
    read_commands: u64,
    write_commands: u64,
}

/// A 64-byte submission queue entry.
#[derive(Copy, Clone)]
struct Sqe([u8; 64]);

impl Sqe {
    fn dw(&self, i: usize) -> u32 {
        let o = (i % 16) * 4;
        let b = &self.0;
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }
    fn qw(&self, i: usize) -> u64 {
        u64::from(self.dw(i)) | (u64::from(self.dw(i + 1)) << 32)
    }
    fn opcode(&self) -> u8 {
        self.0[0]
    }
    /// FUSE (bits 9:8) or PSDT (bits 15:14) set: fused operations and SGLs are not supported.
    fn fused_or_sgl(&self) -> bool {
        self.0[1] & 0xc3 != 0
    }
    fn cid(&self) -> u16 {
        (self.dw(0) >> 16) as u16
    }
    fn nsid(&self) -> u32 {
        self.dw(1)
    }
    fn prp1(&self) -> u64 {
        self.qw(6)
    }
    fn prp2(&self) -> u64 {
        self.qw(8)
    }
}

/// A byte structure built field by field (config space, Identify data, log pages); writes
/// outside it are dropped.
struct Buf(Vec<u8>);

impl Buf {
    fn new(len: usize) -> Buf {
        Buf(vec![0; len])
    }
    fn put(&mut self, off: usize, bytes: &[u8]) {
        if let Some(dst) = off
            .checked_add(bytes.len())
            .and_then(|end| self.0.get_mut(off..end))
        {
            dst.copy_from_slice(bytes);
        }
    }
    fn u8(&mut self, off: usize, v: u8) {
        self.put(off, &[v]);
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.put(off, &v.to_le_bytes());
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.put(off, &v.to_le_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.put(off, &v.to_le_bytes());
    }
    /// ASCII `s` padded with spaces to `len` bytes (truncated if longer).
    fn text(&mut self, off: usize, len: usize, s: &str) {
        let mut field = vec![b' '; len];
        for (d, c) in field.iter_mut().zip(s.bytes()) {
            *d = c;
        }
        self.put(off, &field);
    }
}

/// One physically contiguous piece of a host buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Run {
    iova: u64,
    len: usize,
}

/// Append `len` bytes at `iova`, merged into the last run when contiguous with it.
fn push_run(runs: &mut Vec<Run>, iova: u64, len: usize) {
    if let Some(last) = runs.last_mut() {
        if last.iova.checked_add(last.len as u64) == Some(iova) {
            last.len += len;
            return;
        }
    }
    runs.push(Run { iova, len });
}

/// The host buffer of a `len`-byte transfer described by PRP1/PRP2, as contiguous runs.
/// PRP1 may start inside a page (dword-aligned); the rest is whole pages: PRP2 itself when one
/// more page is enough, else a PRP list at PRP2 (qword-aligned), whose entries must be
/// page-aligned and whose last entry on a page chains to the next list page when more are
/// needed. Only as many entries as the transfer needs are read.
fn prp_runs(dma: &mut dyn DmaPort, prp1: u64, prp2: u64, len: usize) -> Result<Vec<Run>, u16> {
    let mut runs = Vec::new();
    if len == 0 {
        return Ok(runs);
    }
    if prp1 & 3 != 0 {
        return Err(STATUS_PRP_OFFSET_INVALID);
    }
    let first = (PAGE - (prp1 % PAGE_SIZE) as usize).min(len);
    push_run(&mut runs, prp1, first);
    let mut left = len - first;
    if left == 0 {
        return Ok(runs);
    }
    if left <= PAGE {
        if !prp2.is_multiple_of(PAGE_SIZE) {
            return Err(STATUS_PRP_OFFSET_INVALID);
        }
        push_run(&mut runs, prp2, left);
        return Ok(runs);
    }
    if prp2 & 7 != 0 {
        return Err(STATUS_PRP_OFFSET_INVALID);
    }
    let mut list = prp2;
    let mut entries = [0u8; PAGE];
    while left > 0 {
        let slots = ((PAGE_SIZE - list % PAGE_SIZE) / 8) as usize;
        let needed = left.div_ceil(PAGE);
        let chain = needed > slots;
        let take = if chain { slots } else { needed };
        let Some(raw) = entries.get_mut(..take * 8) else {
            return Err(STATUS_INTERNAL_ERROR);
        };
        dma.dma_read(Iova(list), raw)
            .map_err(|_| STATUS_DATA_TRANSFER_ERROR)?;
        let mut words = raw.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        });
        for _ in 0..take - usize::from(chain) {
            let entry = words.next().unwrap_or(1);
            if !entry.is_multiple_of(PAGE_SIZE) {
                return Err(STATUS_PRP_OFFSET_INVALID);
            }
            let n = left.min(PAGE);
            push_run(&mut runs, entry, n);
            left -= n;
        }
        if chain {
            let next = words.next().unwrap_or(1);
            if !next.is_multiple_of(PAGE_SIZE) {
                return Err(STATUS_PRP_OFFSET_INVALID);
            }
            list = next;
        }
    }
    Ok(runs)
}

/// Write `data` to the host buffer `runs` (one DMA access per run).
fn to_host(dma: &mut dyn DmaPort, runs: &[Run], data: &[u8]) -> Result<(), u16> {
    let mut at = 0usize;
    for r in runs {
        let Some(piece) = data.get(at..at + r.len) else {
            return Err(STATUS_INTERNAL_ERROR);
        };
        dma.dma_write(Iova(r.iova), piece)
            .map_err(|_| STATUS_DATA_TRANSFER_ERROR)?;
        at += r.len;
    }
    Ok(())
}

/// Read the host buffer `runs` into `buf` (one DMA access per run).
fn from_host(dma: &mut dyn DmaPort, runs: &[Run], buf: &mut [u8]) -> Result<(), u16> {
    let mut at = 0usize;
    for r in runs {
        let Some(piece) = buf.get_mut(at..at + r.len) else {
            return Err(STATUS_INTERNAL_ERROR);
        };
        dma.dma_read(Iova(r.iova), piece)
            .map_err(|_| STATUS_DATA_TRANSFER_ERROR)?;
        at += r.len;
    }
    Ok(())
}

/// FNV-1a over `bytes` from `seed`: the deterministic source of namespace ids.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// 16 bytes derived from `serial` and `tag`.
fn derive_id(serial: &str, tag: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    let hi = fnv1a(tag, serial.as_bytes());
    let lo = fnv1a(hi ^ tag.rotate_left(17), serial.as_bytes());
    id[..8].copy_from_slice(&hi.to_be_bytes());
    id[8..].copy_from_slice(&lo.to_be_bytes());
    id
}

/// The identity of a controller and its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    serial: String,
    nguid: [u8; 16],
    uuid: [u8; 16],
}

impl Identity {
    fn new(serial: String) -> Identity {
        let nguid = derive_id(&serial, 0x6e_6775_6964);
        let mut uuid = derive_id(&serial, 0x75_7569_6400);
        // RFC 9562 version 8 (custom), variant 10b.
        uuid[6] = (uuid[6] & 0x0f) | 0x80;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        Identity {
            serial,
            nguid,
            uuid,
        }
    }
}

/// What a command came to: a completion (status, DW0), or held (an Asynchronous Event
/// Request, completed when an event comes).
type Outcome = Option<(u16, u32)>;

fn complete(r: Result<u32, u16>) -> Outcome {
    Some(match r {
        Ok(dw0) => (STATUS_SUCCESS, dw0),
        Err(status) => (status, 0),
    })
}

/// The NVMe controller PCI function.
pub struct Nvme {
    vendor: u16,
    device: u16,
    class: u32,
    multifunction: bool,
    id: Identity,
    config: Vec<u8>,
    wmask: Vec<u8>,
    msix: [[u32; 4]; IRQ_COUNT as usize],
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    intms: u32,
    sqs: [Option<Sq>; QUEUES],
    cqs: [Option<Cq>; QUEUES],
    features: Features,
    /// CIDs of outstanding Asynchronous Event Requests, oldest first.
    aers: VecDeque<u16>,
    events: VecDeque<Event>,
    /// Event types reported and not yet cleared by reading their log page (bit per type).
    masked_events: u8,
    /// Completion queues that got entries during this register write (bit per queue).
    irq_pending: u32,
    size: u64,
    store: Store,
    stats: Stats,
    scratch: Vec<u8>,
    sink: Option<IrqSink>,
    /// The block whose reads and writes do their data transfer outside the host's mappings
    /// (`dma_fault_lba`: fault injection for end-to-end tests).
    fault_lba: Option<u64>,
    /// Doorbell Buffer Config's shadow doorbell and EventIdx buffers, once set.
    dbbuf: Option<Dbbuf>,
}

/// The buffers of Doorbell Buffer Config (NVMe 1.3 shadow doorbells): the host writes queue y's
/// SQ tail at `dbs + 8y` and CQ head at `dbs + 8y + 4` in memory and writes the MMIO doorbell
/// only when the value passes the EventIdx the controller left at the same offsets of `eis`.
/// For the I/O queues (the admin queue always uses its MMIO doorbells, as Linux does).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Dbbuf {
    dbs: u64,
    eis: u64,
}

impl fmt::Debug for Nvme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let storage = match self.store {
            Store::Memory(ref m) => format!("memory, {} chunks", m.chunks.len()),
            Store::File(_) => "file".to_string(),
        };
        f.debug_struct("Nvme")
            .field("vendor", &format_args!("{:#06x}", self.vendor))
            .field("device", &format_args!("{:#06x}", self.device))
            .field("serial", &self.id.serial)
            .field("size", &self.size)
            .field("storage", &storage)
            .field("cc", &format_args!("{:#x}", self.cc))
            .field("csts", &format_args!("{:#x}", self.csts))
            .field("sqs", &self.sqs.iter().filter(|q| q.is_some()).count())
            .field("cqs", &self.cqs.iter().filter(|q| q.is_some()).count())
            .field("irq_sink", &self.sink.is_some())
            .finish()
    }
}

impl Default for Nvme {
    fn default() -> Nvme {
        Nvme::new(
            DEFAULT_VENDOR,
            DEFAULT_DEVICE,
            DEFAULT_CLASS,
            Storage::Memory { size: DEFAULT_SIZE },
        )
    }
}

/// The address bit a `dma_fault_lba` transfer sets: far above any IOVA a host maps.
pub const FAULT_IOVA_BIT: u64 = 1 << 62;

fn check_options(options: &toml::Table) -> Result<(), String> {
    only_keys(options, &["size", "file", "serial", "dma_fault_lba"])?;
    if let Some(v) = options.get("dma_fault_lba") {
        if v.as_integer().is_none_or(|l| l < 0) {
            return Err(format!(
                "option \"dma_fault_lba\" must be a block number (a non-negative integer), not {v}"
            ));
        }
    }
    if let Some(v) = options.get("size") {
        let size = v
            .as_integer()
            .ok_or_else(|| format!("option \"size\" must be an integer (bytes), not {v}"))?;
        let ok = u64::try_from(size).is_ok_and(|s| s > 0 && s % LBA_SIZE == 0 && s <= MAX_SIZE);
        if !ok {
            return Err(format!(
                "option \"size\" must be a positive multiple of 512 up to {MAX_SIZE}, not {size}"
            ));
        }
    }
    if let Some(v) = options.get("file") {
        match v.as_str() {
            Some(s) if !s.is_empty() => {}
            _ => return Err(format!("option \"file\" must be a non-empty path, not {v}")),
        }
    }
    if let Some(v) = options.get("serial") {
        match v.as_str() {
            Some(s) if (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) => {}
            _ => {
                return Err(format!(
                    "option \"serial\" must be 1 to 20 printable ASCII characters, not {v}"
                ))
            }
        }
    }
    Ok(())
}

fn build_model(c: &ModelConfig<'_>) -> Result<Box<dyn DeviceModel>, String> {
    let size = c
        .options
        .get("size")
        .and_then(toml::Value::as_integer)
        .and_then(|s| u64::try_from(s).ok());
    let storage = match c.options.get("file").and_then(toml::Value::as_str) {
        None => Storage::Memory {
            size: size.unwrap_or(DEFAULT_SIZE),
        },
        Some(path) => {
            let path = match c.base_dir {
                Some(dir) => dir.join(path),
                None => std::path::PathBuf::from(path),
            };
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(size.is_some())
                .truncate(false)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let len = file
                .metadata()
                .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
                .len();
            let size = match size {
                Some(s) => s,
                None if len >= LBA_SIZE => len.min(MAX_SIZE),
                None => DEFAULT_SIZE,
            };
            Storage::File { file, size }
        }
    };
    let mut nvme =
        Nvme::new(c.vendor, c.device, c.class, storage).with_multifunction(c.multifunction);
    if let Some(serial) = c.options.get("serial").and_then(toml::Value::as_str) {
        nvme = nvme.with_serial(serial);
    }
    if let Some(lba) = c
        .options
        .get("dma_fault_lba")
        .and_then(toml::Value::as_integer)
    {
        nvme = nvme.with_dma_fault_lba(lba as u64);
    }
    Ok(Box::new(nvme))
}

impl Nvme {
    /// A controller with these PCI ids and 24-bit class code (higher bits are dropped) and one
    /// namespace of `storage`'s size (rounded down to whole 512-byte blocks). Its serial number
    /// is `UIOMMU` and a number unique in this process ([`Nvme::with_serial`] sets another).
    pub fn new(vendor: u16, device: u16, class: u32, storage: Storage) -> Nvme {
        let (size, store) = match storage {
            Storage::Memory { size } => (size, Store::Memory(Sparse::default())),
            Storage::File { file, size } => (size, Store::File(file)),
        };
        let instance = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let mut n = Nvme {
            vendor,
            device,
            class: class & 0xff_ff_ff,
            multifunction: false,
            id: Identity::new(format!("UIOMMU{instance:08X}")),
            config: vec![0; CONFIG_SIZE],
            wmask: vec![0; CONFIG_SIZE],
            msix: [[0; 4]; IRQ_COUNT as usize],
            cc: 0,
            csts: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            intms: 0,
            sqs: [None; QUEUES],
            cqs: [None; QUEUES],
            features: Features::default(),
            aers: VecDeque::new(),
            events: VecDeque::new(),
            masked_events: 0,
            irq_pending: 0,
            size: size - size % LBA_SIZE,
            store,
            stats: Stats::default(),
            scratch: Vec::new(),
            sink: None,
            fault_lba: None,
            dbbuf: None,
        };
        n.power_on();
        n
    }

    /// The same, announcing a multifunction device in the header type register.
    pub fn with_multifunction(mut self, multifunction: bool) -> Nvme {
        self.multifunction = multifunction;
        self.power_on();
        self
    }

    /// A controller whose Reads and Writes that include block `lba` transfer their data at
    /// the host addresses the command gave with [`FAULT_IOVA_BIT`] set: outside anything the
    /// host mapped, so the transfer takes an IOMMU fault and the command completes with Data
    /// Transfer Error, as a controller with a broken DMA engine would (fault injection for
    /// end-to-end tests; platform-file option `dma_fault_lba`).
    pub fn with_dma_fault_lba(mut self, lba: u64) -> Nvme {
        self.fault_lba = Some(lba);
        self
    }

    /// The same with this serial number (printable ASCII, at most 20 characters kept; others
    /// become `_`; an empty one is ignored). The subsystem NQN and the namespace's NGUID and
    /// UUID derive from it, so two controllers of one host need different serials.
    pub fn with_serial(mut self, serial: &str) -> Nvme {
        let s: String = serial
            .chars()
            .take(20)
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        if !s.is_empty() {
            self.id = Identity::new(s);
        }
        self
    }

    /// The serial number (also the end of the subsystem NQN).
    pub fn serial(&self) -> &str {
        &self.id.serial
    }

    /// Namespace size in 512-byte blocks.
    pub fn blocks(&self) -> u64 {
        self.size / LBA_SIZE
    }

    /// Power-on state: config space, registers, queues, features. Storage, SMART counters and
    /// the interrupt sink stay.
    fn power_on(&mut self) {
        let mut c = Buf::new(CONFIG_SIZE);
        c.u16(0x00, self.vendor);
        c.u16(0x02, self.device);
        c.u16(0x06, STATUS_CAP_LIST);
        c.u8(0x08, REVISION);
        c.put(0x09, &self.class.to_le_bytes()[..3]);
        c.u8(0x0e, if self.multifunction { 0x80 } else { 0 });
        c.u32(0x10, BAR_MEM_64);
        c.u16(0x2c, self.vendor);
        c.u16(0x2e, self.device);
        c.u8(0x34, PM_CAP_OFFSET as u8);
        c.u8(0x3d, 1); // INTA
        let pm = PM_CAP_OFFSET;
        c.put(pm, &[0x01, MSIX_CAP_OFFSET as u8]);
        c.u16(pm + 2, PM_PMC);
        c.u16(pm + 4, PM_NO_SOFT_RESET);
        let msix = MSIX_CAP_OFFSET;
        c.put(msix, &[0x11, PCIE_CAP_OFFSET as u8]);
        c.u16(msix + 2, (IRQ_COUNT - 1) as u16);
        c.u32(msix + 4, MSIX_TABLE as u32); // BIR 0
        c.u32(msix + 8, MSIX_PBA as u32); // BIR 0
        let e = PCIE_CAP_OFFSET;
        c.put(e, &[0x10, 0]);
        c.u16(e + 2, PCIE_FLAGS);
        c.u32(e + 4, PCIE_DEVCAP);
        c.u16(e + 8, PCIE_DEVCTL);
        c.u32(e + 0x0c, PCIE_LINKCAP);
        c.u16(e + 0x12, PCIE_LINKSTA);
        c.u32(e + 0x2c, PCIE_LINKCAP2);
        c.u16(e + 0x30, PCIE_LINKCTL2);
        self.config = c.0;

        let mut w = Buf::new(CONFIG_SIZE);
        w.u16(0x04, COMMAND_WRITE_MASK);
        w.u8(0x0c, 0xff); // cache line size
        w.u32(0x10, !(BAR0_SIZE as u32 - 1)); // BAR0 address bits 31:14
        w.u32(0x14, u32::MAX); // BAR0 upper half (BAR1)
        w.u8(0x3c, 0xff); // interrupt line
        w.u8(pm + 4, 0x03); // power state
        w.u8(msix + 3, 0xc0); // MSI-X enable, function mask
        w.u16(e + 8, PCIE_DEVCTL_WRITE_MASK);
        w.u16(e + 0x10, PCIE_LINKCTL_WRITE_MASK);
        self.wmask = w.0;

        // Vector control: masked at power-on.
        self.msix = [[0, 0, 0, 1]; IRQ_COUNT as usize];
        self.cc = 0;
        self.csts = 0;
        self.aqa = 0;
        self.asq = 0;
        self.acq = 0;
        self.intms = 0;
        self.controller_reset();
    }

    /// A controller reset (CC.EN 1 → 0, and power-on): every queue deleted, outstanding
    /// requests and pending events dropped, features to defaults, not ready, no fatal status.
    fn controller_reset(&mut self) {
        self.sqs = [None; QUEUES];
        self.cqs = [None; QUEUES];
        self.features = Features::default();
        self.aers.clear();
        self.events.clear();
        self.masked_events = 0;
        self.irq_pending = 0;
        self.dbbuf = None;
        self.csts &= !(CSTS_RDY | CSTS_CFS);
    }

    fn msix_enabled(&self) -> bool {
        self.config
            .get(MSIX_CAP_OFFSET + 3)
            .is_some_and(|b| b & 0x80 != 0)
    }

    /// Whether the controller processes commands: ready, not failed, not shut down.
    fn running(&self) -> bool {
        self.csts & CSTS_RDY != 0 && self.csts & (CSTS_CFS | CSTS_SHST_MASK) == 0
    }

    /// Controller fatal status: processing stops until a reset.
    fn fail(&mut self) {
        self.csts |= CSTS_CFS;
    }

    fn sq(&self, qid: usize) -> Option<Sq> {
        self.sqs.get(qid).copied().flatten()
    }
    fn cq(&self, qid: usize) -> Option<Cq> {
        self.cqs.get(qid).copied().flatten()
    }

    // ----- registers -----

    /// Whether an access of `len` bytes at `offset` of `bar` is one the registers decode.
    fn decodes(bar: u8, offset: u64, len: usize) -> bool {
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= BAR0_SIZE);
        let qword_register = matches!(offset, REG_CAP | REG_ASQ | REG_ACQ | REG_BPMBL | REG_CMBMSC)
            || (MSIX_TABLE..MSIX_TABLE + 16 * u64::from(IRQ_COUNT)).contains(&offset)
            || offset == MSIX_PBA;
        bar == 0
            && fits
            && match len {
                4 => offset.is_multiple_of(4),
                8 => offset.is_multiple_of(8) && qword_register,
                _ => false,
            }
    }

    fn read_dword(&self, off: u64) -> u32 {
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match off {
            REG_CAP => lo(CAP),
            0x04 => hi(CAP),
            REG_VS => VERSION,
            REG_INTMS | REG_INTMC => self.intms,
            REG_CC => self.cc,
            REG_CSTS => self.csts,
            REG_AQA => self.aqa,
            REG_ASQ => lo(self.asq),
            0x2c => hi(self.asq),
            REG_ACQ => lo(self.acq),
            0x34 => hi(self.acq),
            o if (MSIX_TABLE..MSIX_TABLE + 16 * u64::from(IRQ_COUNT)).contains(&o) => {
                let i = ((o - MSIX_TABLE) / 16) as usize;
                let w = ((o % 16) / 4) as usize;
                self.msix
                    .get(i)
                    .and_then(|e| e.get(w))
                    .copied()
                    .unwrap_or(0)
            }
            _ => 0,
        }
    }

    fn write_dword(&mut self, off: u64, v: u32, dma: &mut dyn DmaPort) {
        let set_lo = |x: &mut u64, v: u32| *x = (*x & !0xffff_ffff) | u64::from(v);
        let set_hi = |x: &mut u64, v: u32| *x = (*x & 0xffff_ffff) | (u64::from(v) << 32);
        let vectors = (1u32 << IRQ_COUNT) - 1;
        match off {
            REG_INTMS => self.intms |= v & vectors,
            REG_INTMC => {
                let unmasked = self.intms & v & 1 != 0;
                self.intms &= !(v & vectors);
                if unmasked && !self.msix_enabled() {
                    // Pin-based: completions still unread assert the interrupt again.
                    for qid in 0..QUEUES {
                        if self.cq(qid).is_some_and(|c| c.ien && c.has_entries()) {
                            self.irq_pending |= 1 << qid;
                        }
                    }
                }
            }
            REG_CC => self.write_cc(v),
            REG_AQA => self.aqa = v & 0x0fff_0fff,
            REG_ASQ => set_lo(&mut self.asq, v),
            0x2c => set_hi(&mut self.asq, v),
            REG_ACQ => set_lo(&mut self.acq, v),
            0x34 => set_hi(&mut self.acq, v),
            o if (DOORBELLS..DOORBELLS_END).contains(&o) => self.doorbell(o, v, dma),
            o if (MSIX_TABLE..MSIX_TABLE + 16 * u64::from(IRQ_COUNT)).contains(&o) => {
                let i = ((o - MSIX_TABLE) / 16) as usize;
                let w = ((o % 16) / 4) as usize;
                let v = match w {
                    0 => v & !3, // message address is dword-aligned
                    3 => v & 1,  // vector control: mask bit only
                    _ => v,
                };
                if let Some(slot) = self.msix.get_mut(i).and_then(|e| e.get_mut(w)) {
                    *slot = v;
                }
            }
            _ => {}
        }
    }

    fn write_cc(&mut self, v: u32) {
        let old = self.cc;
        self.cc = v & CC_WRITABLE;
        let (was, now) = (old & CC_EN != 0, self.cc & CC_EN != 0);
        if was && !now {
            self.controller_reset();
        } else if !was && now {
            self.enable();
        }
        if (self.cc >> CC_SHN_SHIFT) & 3 != 0 {
            // Normal or abrupt shutdown: nothing is in flight, so it completes at once.
            self.csts = (self.csts & !CSTS_SHST_MASK) | CSTS_SHST_COMPLETE;
        } else {
            self.csts &= !CSTS_SHST_MASK;
        }
    }

    /// CC.EN 0 → 1: the admin queues from AQA/ASQ/ACQ, ready at once; or, with an invalid
    /// configuration, controller fatal status.
    fn enable(&mut self) {
        let asqs = (self.aqa & 0xfff) + 1;
        let acqs = ((self.aqa >> 16) & 0xfff) + 1;
        let field = |shift: u32, mask: u32| (self.cc >> shift) & mask;
        let (css, mps, ams) = (field(4, 7), field(7, 0xf), field(11, 7));
        let valid = asqs >= 2
            && acqs >= 2
            && self.asq.is_multiple_of(PAGE_SIZE)
            && self.acq.is_multiple_of(PAGE_SIZE)
            && queue_fits(self.asq, asqs, SQE_SIZE)
            && queue_fits(self.acq, acqs, CQE_SIZE)
            && css == 0
            && mps == 0
            && ams == 0;
        if !valid {
            self.fail();
            return;
        }
        self.sqs[0] = Some(Sq {
            base: self.asq,
            size: asqs,
            head: 0,
            tail: 0,
            cqid: 0,
        });
        self.cqs[0] = Some(Cq {
            base: self.acq,
            size: acqs,
            head: 0,
            tail: 0,
            phase: true,
            ien: true,
            iv: 0,
        });
        self.csts |= CSTS_RDY;
    }

    fn doorbell(&mut self, off: u64, value: u32, dma: &mut dyn DmaPort) {
        if !self.running() {
            return;
        }
        let index = (off - DOORBELLS) / 4;
        let Ok(qid) = usize::try_from(index / 2) else {
            return;
        };
        if index.is_multiple_of(2) {
            let Some(sq) = self.sq(qid) else {
                return self.bad_doorbell(AEN_INVALID_DOORBELL_REGISTER, dma);
            };
            if value >= sq.size {
                return self.bad_doorbell(AEN_INVALID_DOORBELL_VALUE, dma);
            }
            if let Some(s) = self.sqs.get_mut(qid).and_then(Option::as_mut) {
                s.tail = value;
            }
            self.process_sq(qid, dma);
            if let Some(cqid) = self.sq(qid).map(|s| usize::from(s.cqid)) {
                self.sq_event_idx(qid, dma);
                if !self.cq(cqid).is_some_and(|c| c.is_full()) {
                    self.cq_event_idx(cqid, false, dma);
                }
            }
        } else {
            let Some(cq) = self.cq(qid) else {
                return self.bad_doorbell(AEN_INVALID_DOORBELL_REGISTER, dma);
            };
            // The head may move forward only over posted entries.
            let posted = (cq.tail + cq.size - cq.head) % cq.size;
            let advance = (value.min(cq.size - 1) + cq.size - cq.head) % cq.size;
            if value >= cq.size || advance > posted {
                return self.bad_doorbell(AEN_INVALID_DOORBELL_VALUE, dma);
            }
            if let Some(c) = self.cqs.get_mut(qid).and_then(Option::as_mut) {
                c.head = value;
            }
            if qid == 0 {
                self.deliver_events(dma);
            }
            self.cq_event_idx(qid, false, dma);
            for s in 0..QUEUES {
                if self.sq(s).is_some_and(|q| usize::from(q.cqid) == qid) {
                    self.process_sq(s, dma);
                    self.sq_event_idx(s, dma);
                }
            }
        }
    }

    fn bad_doorbell(&mut self, info: u8, dma: &mut dyn DmaPort) {
        self.event(Event {
            kind: AEN_TYPE_ERROR,
            info,
            log: LOG_ERROR,
        });
        self.deliver_events(dma);
    }

    // ----- queues -----

    /// Fetch, run and complete the new entries of submission queue `qid`, until it is empty,
    /// its completion queue is full, or the controller fails.
    fn process_sq(&mut self, qid: usize, dma: &mut dyn DmaPort) {
        let budget = self.sq(qid).map_or(0, |s| s.size);
        for _ in 0..budget {
            if !self.running() {
                return;
            }
            let Some(sq) = self.sq(qid) else { return };
            if sq.head == sq.tail {
                return;
            }
            let cqid = usize::from(sq.cqid);
            if self.cq(cqid).is_some_and(|c| c.is_full()) {
                // The host may have consumed entries without writing the head doorbell.
                self.shadow_cq_head(cqid, dma);
                if self.cq(cqid).is_some_and(|c| c.is_full()) {
                    // Ask for the next head update by MMIO; it may have come meanwhile.
                    self.cq_event_idx(cqid, true, dma);
                    self.shadow_cq_head(cqid, dma);
                }
            }
            match self.cq(cqid) {
                Some(cq) if !cq.is_full() => {}
                _ => return,
            }
            let mut raw = [0u8; 64];
            let fetched = slot(sq.base, sq.head, SQE_SIZE)
                .is_some_and(|addr| dma.dma_read(Iova(addr), &mut raw).is_ok());
            if !fetched {
                // The command's id is unknown: nothing to complete it with.
                return self.fail();
            }
            if let Some(s) = self.sqs.get_mut(qid).and_then(Option::as_mut) {
                s.head = (s.head + 1) % s.size;
            }
            let sqe = Sqe(raw);
            let outcome = if qid == 0 {
                self.admin(&sqe, dma)
            } else {
                self.io(&sqe, dma)
            };
            if let Some((status, dw0)) = outcome {
                if !self.post(cqid, qid, sqe.cid(), status, dw0, dma) {
                    return;
                }
            }
            if qid == 0 {
                self.deliver_events(dma);
            }
        }
    }

    /// Post a completion entry to `cqid` for command `cid` of `sqid`. False if the
    /// controller failed (the post faulted) or the queue is gone or full (callers check
    /// room first, so neither happens).
    fn post(
        &mut self,
        cqid: usize,
        sqid: usize,
        cid: u16,
        status: u16,
        dw0: u32,
        dma: &mut dyn DmaPort,
    ) -> bool {
        let sq_head = self.sq(sqid).map_or(0, |s| s.head);
        let Some(cq) = self.cq(cqid) else {
            return false;
        };
        if cq.is_full() {
            return false;
        }
        let mut first = [0u8; 12];
        first[..4].copy_from_slice(&dw0.to_le_bytes());
        let dw2 = (sq_head & 0xffff) | ((sqid as u32) << 16);
        first[8..].copy_from_slice(&dw2.to_le_bytes());
        let dw3 = u32::from(cid) | (u32::from(cq.phase) << 16) | (u32::from(status & 0x7fff) << 17);
        // The dword with the phase tag goes last, so the host never sees a new phase with
        // old contents.
        let posted = slot(cq.base, cq.tail, CQE_SIZE).is_some_and(|addr| {
            dma.dma_write(Iova(addr), &first).is_ok()
                && dma.dma_write(Iova(addr + 12), &dw3.to_le_bytes()).is_ok()
        });
        if !posted {
            self.fail();
            return false;
        }
        if let Some(c) = self.cqs.get_mut(cqid).and_then(Option::as_mut) {
            c.tail += 1;
            if c.tail == c.size {
                c.tail = 0;
                c.phase = !c.phase;
            }
        }
        self.irq_pending |= 1 << cqid;
        true
    }

    /// Raise the vector of every completion queue that got entries (interrupts enabled).
    fn flush_irqs(&mut self) {
        let pending = std::mem::take(&mut self.irq_pending);
        for qid in 0..QUEUES {
            if pending & (1 << qid) == 0 {
                continue;
            }
            let Some(cq) = self.cq(qid) else { continue };
            if !cq.ien || (!self.msix_enabled() && self.intms & 1 != 0) {
                continue;
            }
            if let Some(sink) = self.sink.as_mut() {
                sink(u32::from(cq.iv));
            }
        }
    }

    /// Queue an asynchronous event (dropped if the same one is pending or too many are).
    fn event(&mut self, e: Event) {
        if self.events.len() < MAX_PENDING_EVENTS && !self.events.contains(&e) {
            self.events.push_back(e);
        }
    }

    /// Complete outstanding Asynchronous Event Requests with pending events whose type is
    /// not masked, while the admin completion queue has room.
    fn deliver_events(&mut self, dma: &mut dyn DmaPort) {
        while self.running() && !self.aers.is_empty() {
            let Some(pos) = self
                .events
                .iter()
                .position(|e| self.masked_events & (1 << (e.kind & 7)) == 0)
            else {
                return;
            };
            if self.cq(0).is_none_or(|c| c.is_full()) {
                return;
            }
            let (Some(event), Some(cid)) = (self.events.remove(pos), self.aers.pop_front()) else {
                return;
            };
            self.masked_events |= 1 << (event.kind & 7);
            if !self.post(0, 0, cid, STATUS_SUCCESS, event.dw0(), dma) {
                return;
            }
        }
    }

    // ----- admin commands -----

    fn admin(&mut self, sqe: &Sqe, dma: &mut dyn DmaPort) -> Outcome {
        if sqe.fused_or_sgl() {
            return complete(Err(STATUS_INVALID_FIELD));
        }
        let r = match sqe.opcode() {
            ADMIN_DELETE_SQ => self.delete_sq(sqe),
            ADMIN_CREATE_SQ => self.create_sq(sqe).inspect(|_| {
                // With shadow doorbells, the new queue's EventIdx asks for its first doorbell.
                self.sq_event_idx((sqe.dw(10) & 0xffff) as usize, dma);
            }),
            ADMIN_GET_LOG_PAGE => self.get_log_page(sqe, dma),
            ADMIN_DELETE_CQ => self.delete_cq(sqe),
            ADMIN_CREATE_CQ => self.create_cq(sqe).inspect(|_| {
                self.cq_event_idx((sqe.dw(10) & 0xffff) as usize, false, dma);
            }),
            ADMIN_IDENTIFY => self.identify(sqe, dma),
            // Nothing is ever in flight: the command to abort has completed ("not aborted").
            ADMIN_ABORT => Ok(1),
            ADMIN_SET_FEATURES => self.set_features(sqe),
            ADMIN_GET_FEATURES => self.get_features(sqe),
            ADMIN_ASYNC_EVENT => {
                if self.aers.len() > usize::from(AERL) {
                    Err(STATUS_AER_LIMIT_EXCEEDED)
                } else {
                    self.aers.push_back(sqe.cid());
                    return None;
                }
            }
            ADMIN_KEEP_ALIVE => Ok(0),
            ADMIN_DOORBELL_BUFFER_CONFIG => self.doorbell_buffer_config(sqe, dma),
            _ => Err(STATUS_INVALID_OPCODE),
        };
        complete(r)
    }

    /// Doorbell Buffer Config: PRP1 the shadow doorbells, PRP2 the EventIdx buffer, each
    /// page-aligned (Invalid Field otherwise). Queues that exist get their EventIdx entries
    /// at once; the shadow values are read from then on.
    fn doorbell_buffer_config(&mut self, sqe: &Sqe, dma: &mut dyn DmaPort) -> Result<u32, u16> {
        let (dbs, eis) = (sqe.prp1(), sqe.prp2());
        if dbs == 0 || eis == 0 || !dbs.is_multiple_of(PAGE_SIZE) || !eis.is_multiple_of(PAGE_SIZE)
        {
            return Err(STATUS_INVALID_FIELD);
        }
        self.dbbuf = Some(Dbbuf { dbs, eis });
        for qid in 1..QUEUES {
            self.sq_event_idx(qid, dma);
            self.cq_event_idx(qid, false, dma);
        }
        Ok(0)
    }

    /// With shadow doorbells, write SQ `qid`'s EventIdx: its tail as processed, so that the
    /// host writes the MMIO doorbell for its next submission (every command runs at once).
    fn sq_event_idx(&mut self, qid: usize, dma: &mut dyn DmaPort) {
        let (Some(b), Some(sq)) = (self.dbbuf, self.sq(qid)) else {
            return;
        };
        if qid > 0 {
            let _ = dma.dma_write(Iova(b.eis + 8 * qid as u64), &sq.tail.to_le_bytes());
        }
    }

    /// With shadow doorbells, write CQ `qid`'s EventIdx: one behind its head, so that the host
    /// writes no MMIO head doorbell (the controller reads the shadow head when it needs room),
    /// or its head when `wake` (a submission queue waits for room: the next head update is to
    /// be written).
    fn cq_event_idx(&mut self, qid: usize, wake: bool, dma: &mut dyn DmaPort) {
        let (Some(b), Some(cq)) = (self.dbbuf, self.cq(qid)) else {
            return;
        };
        if qid > 0 {
            let ei = if wake {
                cq.head
            } else {
                cq.head.wrapping_sub(1) & 0xffff
            };
            let _ = dma.dma_write(Iova(b.eis + 8 * qid as u64 + 4), &ei.to_le_bytes());
        }
    }

    /// With shadow doorbells, take CQ `qid`'s head from the shadow doorbell when it is a
    /// valid head (moves forward over posted entries only, as a doorbell write must).
    fn shadow_cq_head(&mut self, qid: usize, dma: &mut dyn DmaPort) {
        let (Some(b), Some(cq)) = (self.dbbuf, self.cq(qid)) else {
            return;
        };
        if qid == 0 {
            return;
        }
        let mut raw = [0u8; 4];
        if dma
            .dma_read(Iova(b.dbs + 8 * qid as u64 + 4), &mut raw)
            .is_err()
        {
            return;
        }
        let value = u32::from_le_bytes(raw);
        let posted = (cq.tail + cq.size - cq.head) % cq.size;
        let advance = (value.min(cq.size - 1) + cq.size - cq.head) % cq.size;
        if value < cq.size && advance <= posted {
            if let Some(c) = self.cqs.get_mut(qid).and_then(Option::as_mut) {
                c.head = value;
            }
        }
    }

    fn create_cq(&mut self, sqe: &Sqe) -> Result<u32, u16> {
        let (cdw10, cdw11) = (sqe.dw(10), sqe.dw(11));
        let qid = (cdw10 & 0xffff) as usize;
        let entries = (cdw10 >> 16) + 1;
        let (pc, ien, iv) = (cdw11 & 1 != 0, cdw11 & 2 != 0, (cdw11 >> 16) as u16);
        let base = sqe.prp1();
        if qid == 0
            || qid > usize::from(self.features.queues.1) + 1
            || self.cq(qid).is_some()
            || qid >= QUEUES
        {
            return Err(STATUS_INVALID_QUEUE_ID);
        }
        if entries < 2 || entries > u32::from(MQES) + 1 {
            return Err(STATUS_INVALID_QUEUE_SIZE);
        }
        if !pc {
            return Err(STATUS_INVALID_FIELD);
        }
        if !base.is_multiple_of(PAGE_SIZE) {
            return Err(STATUS_PRP_OFFSET_INVALID);
        }
        if u32::from(iv) >= IRQ_COUNT {
            return Err(STATUS_INVALID_VECTOR);
        }
        if (self.cc >> 20) & 0xf != IOCQES || !queue_fits(base, entries, CQE_SIZE) {
            return Err(STATUS_INVALID_FIELD);
        }
        if let Some(q) = self.cqs.get_mut(qid) {
            *q = Some(Cq {
                base,
                size: entries,
                head: 0,
                tail: 0,
                phase: true,
                ien,
                iv,
            });
        }
        Ok(0)
    }

    fn create_sq(&mut self, sqe: &Sqe) -> Result<u32, u16> {
        let (cdw10, cdw11) = (sqe.dw(10), sqe.dw(11));
        let qid = (cdw10 & 0xffff) as usize;
        let entries = (cdw10 >> 16) + 1;
        let (pc, cqid) = (cdw11 & 1 != 0, (cdw11 >> 16) as u16);
        let base = sqe.prp1();
        if qid == 0
            || qid > usize::from(self.features.queues.0) + 1
            || self.sq(qid).is_some()
            || qid >= QUEUES
        {
            return Err(STATUS_INVALID_QUEUE_ID);
        }
        if cqid == 0 || self.cq(usize::from(cqid)).is_none() {
            return Err(STATUS_CQ_INVALID);
        }
        if entries < 2 || entries > u32::from(MQES) + 1 {
            return Err(STATUS_INVALID_QUEUE_SIZE);
        }
        if !pc {
            return Err(STATUS_INVALID_FIELD);
        }
        if !base.is_multiple_of(PAGE_SIZE) {
            return Err(STATUS_PRP_OFFSET_INVALID);
        }
        if (self.cc >> 16) & 0xf != IOSQES || !queue_fits(base, entries, SQE_SIZE) {
            return Err(STATUS_INVALID_FIELD);
        }
        if let Some(q) = self.sqs.get_mut(qid) {
            *q = Some(Sq {
                base,
                size: entries,
                head: 0,
                tail: 0,
                cqid,
            });
        }
        Ok(0)
    }

    fn delete_sq(&mut self, sqe: &Sqe) -> Result<u32, u16> {
        let qid = (sqe.dw(10) & 0xffff) as usize;
        match self.sqs.get_mut(qid) {
            Some(q @ Some(_)) if qid != 0 => {
                *q = None;
                Ok(0)
            }
            _ => Err(STATUS_INVALID_QUEUE_ID),
        }
    }

    fn delete_cq(&mut self, sqe: &Sqe) -> Result<u32, u16> {
        let qid = (sqe.dw(10) & 0xffff) as usize;
        if qid == 0 || self.cq(qid).is_none() {
            return Err(STATUS_INVALID_QUEUE_ID);
        }
        if self
            .sqs
            .iter()
            .flatten()
            .any(|s| usize::from(s.cqid) == qid)
        {
            return Err(STATUS_INVALID_QUEUE_DELETION);
        }
        if let Some(q) = self.cqs.get_mut(qid) {
            *q = None;
        }
        Ok(0)
    }

    /// Send `data` to the command's PRP buffer.
    fn send(sqe: &Sqe, data: &[u8], dma: &mut dyn DmaPort) -> Result<u32, u16> {
        let runs = prp_runs(dma, sqe.prp1(), sqe.prp2(), data.len())?;
        to_host(dma, &runs, data)?;
        Ok(0)
    }

    fn identify(&mut self, sqe: &Sqe, dma: &mut dyn DmaPort) -> Result<u32, u16> {
        let cns = sqe.dw(10) as u8;
        let csi = (sqe.dw(11) >> 24) as u8;
        let nsid = sqe.nsid();
        let data = match cns {
            CNS_NAMESPACE => match nsid {
                1 => self.identify_namespace(true),
                u32::MAX => self.identify_namespace(false),
                _ => return Err(STATUS_INVALID_NAMESPACE),
            },
            CNS_CONTROLLER => self.identify_controller(),
            CNS_ACTIVE_NAMESPACES => {
                if nsid >= 0xffff_fffe {
                    return Err(STATUS_INVALID_NAMESPACE);
                }
                let mut b = Buf::new(IDENTIFY_SIZE);
                if nsid < 1 {
                    b.u32(0, 1);
                }
                b
            }
            CNS_NS_DESCRIPTORS => {
                if nsid != 1 {
                    return Err(STATUS_INVALID_NAMESPACE);
                }
                let mut b = Buf::new(IDENTIFY_SIZE);
                b.put(0, &[2, 16, 0, 0]); // NGUID
                b.put(4, &self.id.nguid);
                b.put(20, &[3, 16, 0, 0]); // UUID
                b.put(24, &self.id.uuid);
                b
            }
            CNS_CS_CONTROLLER if csi == 0 => Buf::new(IDENTIFY_SIZE),
            _ => return Err(STATUS_INVALID_FIELD),
        };
        Self::send(sqe, &data.0, dma)
    }

    fn identify_controller(&self) -> Buf {
        let mut b = Buf::new(IDENTIFY_SIZE);
        b.u16(0, self.vendor); // VID
        b.u16(2, self.vendor); // SSVID
        b.text(4, 20, &self.id.serial); // SN
        b.text(24, 40, MODEL_NUMBER); // MN
        b.text(64, 8, FIRMWARE); // FR
        b.u8(72, 6); // RAB: 64 commands
        b.put(73, &[0x00, 0x00, 0x02]); // IEEE OUI: a locally administered placeholder
        b.u8(77, MDTS);
        b.u16(78, 0); // CNTLID
        b.u32(80, VERSION);
        b.u8(111, 1); // CNTRLTYPE: I/O controller
        b.u16(256, OACS_DBBUF); // OACS: Doorbell Buffer Config only
        b.u8(258, ACL);
        b.u8(259, AERL);
        b.u8(260, 0x03); // FRMW: one slot, read-only
        b.u8(261, 0x04); // LPA: extended data (NUMDU, offsets)
        b.u8(262, ELPE);
        b.u8(263, 0); // NPSS: one power state
        b.u16(266, WCTEMP);
        b.u16(268, CCTEMP);
        b.u64(280, self.size); // TNVMCAP (low 64 bits)
        b.u8(512, 0x66); // SQES
        b.u8(513, 0x44); // CQES
        b.u32(516, 1); // NN
        b.u16(520, ONCS);
        b.u8(525, 1); // VWC: present
        b.u32(536, 0); // SGLS: PRPs only
        b.put(768, format!("{NQN_PREFIX}{}", self.id.serial).as_bytes());
        // Power state 0: 25 W, entry 16 us, exit 4 us.
        b.u16(2048, 2500);
        b.u32(2052, 16);
        b.u32(2056, 4);
        b
    }

    /// Identify Namespace of namespace 1, or (`!active`) the capabilities common to all.
    fn identify_namespace(&self, active: bool) -> Buf {
        let mut b = Buf::new(IDENTIFY_SIZE);
        if active {
            let blocks = self.blocks();
            b.u64(0, blocks); // NSZE
            b.u64(8, blocks); // NCAP
            b.u64(16, blocks); // NUSE
            b.u64(48, self.size); // NVMCAP (low 64 bits)
            b.put(104, &self.id.nguid);
        }
        b.u8(24, 0); // NSFEAT
        b.u8(25, 0); // NLBAF: one format
        b.u8(26, 0); // FLBAS: format 0, no metadata
        b.u8(33, DLFEAT);
        b.u32(128, 9 << 16); // LBAF0: LBADS 9, no metadata, best performance
        b
    }

    fn smart_warning(&self) -> u8 {
        let f = &self.features;
        if TEMPERATURE >= f.temp_over || TEMPERATURE <= f.temp_under {
            CRITICAL_TEMPERATURE
        } else {
            0
        }
    }

    fn get_log_page(&mut self, sqe: &Sqe, dma: &mut dyn DmaPort) -> Result<u32, u16> {
        let (cdw10, cdw11) = (sqe.dw(10), sqe.dw(11));
        let lid = cdw10 as u8;
        let rae = cdw10 & (1 << 15) != 0;
        let dwords = (u64::from(cdw11 & 0xffff) << 16 | u64::from(cdw10 >> 16)) + 1;
        let offset = u64::from(sqe.dw(12)) | (u64::from(sqe.dw(13)) << 32);
        let len = dwords * 4;
        if offset % 4 != 0 || len > MAX_TRANSFER as u64 {
            return Err(STATUS_INVALID_FIELD);
        }
        let log = match lid {
            LOG_ERROR => Buf::new(64 * (usize::from(ELPE) + 1)),
            LOG_SMART => self.smart_log(),
            LOG_FIRMWARE_SLOT => {
                let mut b = Buf::new(512);
                b.u8(0, 1); // AFI: slot 1 active
                b.text(8, 8, FIRMWARE); // FRS1
                b
            }
            _ => return Err(STATUS_INVALID_LOG_PAGE),
        };
        let Some(rest) = usize::try_from(offset).ok().and_then(|o| log.0.get(o..)) else {
            return Err(STATUS_INVALID_FIELD);
        };
        if rest.is_empty() {
            return Err(STATUS_INVALID_FIELD);
        }
        let n = rest.len().min(len as usize);
        Self::send(sqe, rest.get(..n).unwrap_or(&[]), dma)?;
        if !rae {
            // Reading the log clears the event type it reports.
            match lid {
                LOG_ERROR => self.masked_events &= !(1 << AEN_TYPE_ERROR),
                LOG_SMART => self.masked_events &= !(1 << AEN_TYPE_SMART),
                _ => {}
            }
        }
        Ok(0)
    }

    fn smart_log(&self) -> Buf {
        let s = &self.stats;
        let mut b = Buf::new(512);
        b.u8(0, self.smart_warning());
        b.u16(1, TEMPERATURE);
        b.u8(3, 100); // available spare %
        b.u8(4, 10); // available spare threshold %
        b.u8(5, 0); // percentage used
        b.u64(32, s.blocks_read.div_ceil(1000)); // data units read (1000 blocks)
        b.u64(48, s.blocks_written.div_ceil(1000));
        b.u64(64, s.read_commands);
        b.u64(80, s.write_commands);
        b.u64(112, 1); // power cycles
        b
    }

    fn set_features(&mut self, sqe: &Sqe) -> Result<u32, u16> {
        let cdw10 = sqe.dw(10);
        let fid = cdw10 as u8;
        let v = sqe.dw(11);
        let known = matches!(fid, FEAT_ARBITRATION..=FEAT_ASYNC_EVENT_CONFIG) && fid != 0x03;
        if !known {
            return Err(STATUS_INVALID_FIELD);
        }
        if cdw10 & (1 << 31) != 0 {
            return Err(STATUS_FEATURE_NOT_SAVEABLE);
        }
        if fid == FEAT_TEMPERATURE_THRESHOLD {
            let (threshold, sensor, kind) = (v as u16, (v >> 16) & 0xf, (v >> 20) & 3);
            if (sensor != 0 && sensor != 0xf) || kind > 1 {
                return Err(STATUS_INVALID_FIELD); // the composite sensor only
            }
            let before = self.smart_warning();
            if kind == 0 {
                self.features.temp_over = threshold;
            } else {
                self.features.temp_under = threshold;
            }
            let raised = self.smart_warning() & !before & CRITICAL_TEMPERATURE != 0;
            if raised && self.features.async_events & u32::from(CRITICAL_TEMPERATURE) != 0 {
                self.event(Event {
                    kind: AEN_TYPE_SMART,
                    info: AEN_TEMPERATURE_THRESHOLD,
                    log: LOG_SMART,
                });
            }
            return Ok(0);
        }
        let f = &mut self.features;
        match fid {
            FEAT_ARBITRATION => f.arbitration = v & 0xffff_ff07,
            FEAT_POWER_MANAGEMENT => {
                if v & 0x1f != 0 {
                    return Err(STATUS_INVALID_FIELD); // only power state 0 exists
                }
                f.power_management = v & 0xff;
            }
            FEAT_ERROR_RECOVERY => {
                if v & (1 << 16) != 0 {
                    return Err(STATUS_INVALID_FIELD); // DULBE: not supported
                }
                f.error_recovery = v & 0xffff;
            }
            FEAT_VOLATILE_WRITE_CACHE => f.write_cache = v & 1 != 0,
            FEAT_NUMBER_OF_QUEUES => {
                let (sqs, cqs) = (v & 0xffff, v >> 16);
                if sqs == 0xffff || cqs == 0xffff {
                    return Err(STATUS_INVALID_FIELD);
                }
                let cap = u32::from(MAX_IO_QUEUES - 1);
                f.queues = (sqs.min(cap) as u16, cqs.min(cap) as u16);
                return Ok(u32::from(f.queues.0) | (u32::from(f.queues.1) << 16));
            }
            FEAT_INTERRUPT_COALESCING => f.coalescing = v & 0xffff,
            FEAT_INTERRUPT_VECTOR_CONFIG => {
                let iv = v & 0xffff;
                if iv >= IRQ_COUNT {
                    return Err(STATUS_INVALID_FIELD);
                }
                if v & (1 << 16) != 0 {
                    f.vector_cd |= 1 << iv;
                } else {
                    f.vector_cd &= !(1 << iv);
                }
            }
            FEAT_WRITE_ATOMICITY => f.write_atomicity = v & 1,
            FEAT_ASYNC_EVENT_CONFIG => f.async_events = v & AEC_SUPPORTED,
            _ => return Err(STATUS_INVALID_FIELD),
        }
        Ok(0)
    }

    fn get_features(&mut self, sqe: &Sqe) -> Result<u32, u16> {
        let cdw10 = sqe.dw(10);
        let fid = cdw10 as u8;
        let select = (cdw10 >> 8) & 7;
        let v = sqe.dw(11);
        let known = matches!(fid, FEAT_ARBITRATION..=FEAT_ASYNC_EVENT_CONFIG) && fid != 0x03;
        if !known {
            return Err(STATUS_INVALID_FIELD);
        }
        let defaults = Features::default();
        let f = match select {
            0 => &self.features,
            // Default, and saved (nothing is saveable: the saved value is the default).
            1 | 2 => &defaults,
            // Supported capabilities: changeable, not saveable, not namespace specific.
            3 => return Ok(1 << 2),
            _ => return Err(STATUS_INVALID_FIELD),
        };
        Ok(match fid {
            FEAT_ARBITRATION => f.arbitration,
            FEAT_POWER_MANAGEMENT => f.power_management,
            FEAT_TEMPERATURE_THRESHOLD => {
                let (sensor, kind) = ((v >> 16) & 0xf, (v >> 20) & 3);
                match (sensor, kind) {
                    (0, 0) => u32::from(f.temp_over),
                    (0, 1) => u32::from(f.temp_under),
                    _ => return Err(STATUS_INVALID_FIELD),
                }
            }
            FEAT_ERROR_RECOVERY => f.error_recovery,
            FEAT_VOLATILE_WRITE_CACHE => u32::from(f.write_cache),
            FEAT_NUMBER_OF_QUEUES => u32::from(f.queues.0) | (u32::from(f.queues.1) << 16),
            FEAT_INTERRUPT_COALESCING => f.coalescing,
            FEAT_INTERRUPT_VECTOR_CONFIG => {
                let iv = v & 0xffff;
                if iv >= IRQ_COUNT {
                    return Err(STATUS_INVALID_FIELD);
                }
                iv | (((f.vector_cd >> iv) & 1) << 16)
            }
            FEAT_WRITE_ATOMICITY => f.write_atomicity,
            FEAT_ASYNC_EVENT_CONFIG => f.async_events,
            _ => return Err(STATUS_INVALID_FIELD),
        })
    }

    // ----- I/O commands -----

    fn io(&mut self, sqe: &Sqe, dma: &mut dyn DmaPort) -> Outcome {
        if sqe.fused_or_sgl() {
            return complete(Err(STATUS_INVALID_FIELD));
        }
        let r = match sqe.opcode() {
            IO_FLUSH => self.flush(sqe),
            IO_WRITE => self.read_write(sqe, dma, true),
            IO_READ => self.read_write(sqe, dma, false),
            IO_WRITE_ZEROES => self.write_zeroes(sqe),
            IO_DATASET_MANAGEMENT => self.dataset_management(sqe, dma),
            _ => Err(STATUS_INVALID_OPCODE),
        };
        complete(r)
    }

    fn check_namespace(nsid: u32) -> Result<(), u16> {
        if nsid == 1 {
            Ok(())
        } else {
            Err(STATUS_INVALID_NAMESPACE)
        }
    }

    /// `[slba, slba + nlb)` as a byte range of the namespace.
    fn lba_range(&self, slba: u64, nlb: u64) -> Result<(u64, u64), u16> {
        match slba.checked_add(nlb) {
            Some(end) if end <= self.blocks() => Ok((slba * LBA_SIZE, nlb * LBA_SIZE)),
            _ => Err(STATUS_LBA_OUT_OF_RANGE),
        }
    }

    fn flush(&mut self, sqe: &Sqe) -> Result<u32, u16> {
        if sqe.nsid() != u32::MAX {
            Self::check_namespace(sqe.nsid())?;
        }
        self.store.flush().map_err(|_| STATUS_INTERNAL_ERROR)?;
        Ok(0)
    }

    fn read_write(&mut self, sqe: &Sqe, dma: &mut dyn DmaPort, write: bool) -> Result<u32, u16> {
        Self::check_namespace(sqe.nsid())?;
        let slba = sqe.qw(10);
        let cdw12 = sqe.dw(12);
        let nlb = u64::from(cdw12 & 0xffff) + 1;
        let fua = cdw12 & (1 << 30) != 0;
        let bytes = nlb * LBA_SIZE;
        if bytes > MAX_TRANSFER as u64 {
            return Err(STATUS_INVALID_FIELD);
        }
        let (off, _) = self.lba_range(slba, nlb)?;
        let mut runs = prp_runs(dma, sqe.prp1(), sqe.prp2(), bytes as usize)?;
        if self
            .fault_lba
            .is_some_and(|l| (slba..slba.saturating_add(nlb)).contains(&l))
        {
            for r in &mut runs {
                r.iova |= FAULT_IOVA_BIT;
            }
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.resize(bytes as usize, 0);
        let r = if write {
            from_host(dma, &runs, &mut buf).and_then(|()| {
                self.store
                    .write(off, &buf)
                    .and_then(|()| if fua { self.store.flush() } else { Ok(()) })
                    .map_err(|_| STATUS_WRITE_FAULT)
            })
        } else {
            self.store
                .read(off, &mut buf)
                .map_err(|_| STATUS_UNRECOVERED_READ_ERROR)
                .and_then(|()| to_host(dma, &runs, &buf))
        };
        self.scratch = buf;
        r?;
        let s = &mut self.stats;
        if write {
            s.blocks_written = s.blocks_written.saturating_add(nlb);
            s.write_commands = s.write_commands.saturating_add(1);
        } else {
            s.blocks_read = s.blocks_read.saturating_add(nlb);
            s.read_commands = s.read_commands.saturating_add(1);
        }
        Ok(0)
    }

    fn write_zeroes(&mut self, sqe: &Sqe) -> Result<u32, u16> {
        Self::check_namespace(sqe.nsid())?;
        let cdw12 = sqe.dw(12);
        let nlb = u64::from(cdw12 & 0xffff) + 1;
        let (off, len) = self.lba_range(sqe.qw(10), nlb)?;
        self.store.zero(off, len).map_err(|_| STATUS_WRITE_FAULT)?;
        if cdw12 & (1 << 30) != 0 {
            self.store.flush().map_err(|_| STATUS_WRITE_FAULT)?;
        }
        Ok(0)
    }

    fn dataset_management(&mut self, sqe: &Sqe, dma: &mut dyn DmaPort) -> Result<u32, u16> {
        Self::check_namespace(sqe.nsid())?;
        let ranges = (sqe.dw(10) & 0xff) as usize + 1;
        if sqe.dw(11) & (1 << 2) == 0 {
            return Ok(0); // only hints: nothing to do
        }
        let mut raw = vec![0u8; ranges * 16];
        let runs = prp_runs(dma, sqe.prp1(), sqe.prp2(), raw.len())?;
        from_host(dma, &runs, &mut raw)?;
        let mut todo = Vec::with_capacity(ranges);
        for r in raw.chunks_exact(16) {
            let nlb = u64::from(u32::from_le_bytes([r[4], r[5], r[6], r[7]]));
            let mut slba = [0u8; 8];
            slba.copy_from_slice(&r[8..16]);
            let range = self.lba_range(u64::from_le_bytes(slba), nlb)?;
            todo.push(range);
        }
        for (off, len) in todo {
            if len > 0 {
                self.store.zero(off, len).map_err(|_| STATUS_WRITE_FAULT)?;
            }
        }
        Ok(0)
    }
}

impl DeviceModel for Nvme {
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
        let pmcsr = PM_CAP_OFFSET + 4;
        let state_before = self.config.get(pmcsr).copied().unwrap_or(0) & 3;
        let mut flr = false;
        masked_write(&mut self.config, &self.wmask, offset, data, |off, b| {
            flr |= off == PCIE_CAP_OFFSET + 9 && b & PCIE_DEVCTL_FLR != 0;
        });
        // D1 and D2 are not supported: such a write leaves the power state as it was.
        if let Some(state) = self.config.get_mut(pmcsr) {
            if matches!(*state & 3, 1 | 2) {
                *state = (*state & !3) | state_before;
            }
        }
        if flr {
            self.reset();
        }
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
        self.flush_irqs();
    }

    fn irq_count(&self) -> u32 {
        IRQ_COUNT
    }

    fn set_irq_sink(&mut self, sink: Option<IrqSink>) {
        self.sink = sink;
    }

    /// Function-level reset: config space, registers, queues and features to power-on
    /// state. The namespace's contents, the SMART counters and the interrupt sink (plumbing
    /// of the layer above) stay.
    fn reset(&mut self) {
        self.power_on();
    }
}

#[cfg(test)]
mod tests {
    use super::super::DmaFault;
    use super::*;
    use crate::hw::FaultReason;
    use std::sync::{Arc, Mutex};

    /// Host memory size of the fake bus (identity-mapped from IOVA 0).
    const MEM: usize = 4 << 20;
    const ASQ: u64 = 0x1_0000;
    const ACQ: u64 = 0x2_0000;
    const ADMIN_ENTRIES: u32 = 16;
    const LIST: u64 = 0x8_0000;
    const IDENT: u64 = 0xa_0000;
    const DATA: u64 = 0x10_0000;
    const DATA2: u64 = 0x18_0000;
    const NS_SIZE: u64 = 16 << 20;

    /// Identity-mapped memory at IOVAs `[0, MEM)`; accesses touching `faulty` or past the end
    /// fault (and are recorded, as the IOMMU would).
    struct FakeMem {
        data: Vec<u8>,
        faulty: Option<(u64, u64)>,
        faults: Vec<DmaFault>,
        largest: usize,
        accesses: usize,
    }

    impl FakeMem {
        fn new() -> FakeMem {
            FakeMem {
                data: vec![0; MEM],
                faulty: None,
                faults: Vec::new(),
                largest: 0,
                accesses: 0,
            }
        }
        fn check(&mut self, iova: Iova, len: usize) -> Result<usize, DmaFault> {
            self.accesses += 1;
            self.largest = self.largest.max(len);
            let start = iova.raw();
            let end = start.saturating_add(len as u64);
            let fault = match self.faulty {
                Some((fs, fe)) if start < fe && end > fs => Some(DmaFault {
                    iova: Iova(start.max(fs)),
                    reason: FaultReason::Permission,
                }),
                _ if start.checked_add(len as u64).is_none() || end > MEM as u64 => {
                    Some(DmaFault {
                        iova: Iova(start.max(MEM as u64)),
                        reason: FaultReason::NotMapped,
                    })
                }
                _ => None,
            };
            match fault {
                Some(f) => {
                    self.faults.push(f);
                    Err(f)
                }
                None => Ok(start as usize),
            }
        }
        fn put(&mut self, at: u64, bytes: &[u8]) {
            let at = at as usize;
            self.data[at..at + bytes.len()].copy_from_slice(bytes);
        }
        fn get(&self, at: u64, len: usize) -> Vec<u8> {
            self.data[at as usize..at as usize + len].to_vec()
        }
        fn put_u64s(&mut self, at: u64, words: &[u64]) {
            for (i, w) in words.iter().enumerate() {
                self.put(at + 8 * i as u64, &w.to_le_bytes());
            }
        }
    }

    impl DmaPort for FakeMem {
        fn dma_read(&mut self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault> {
            let i = self.check(iova, buf.len())?;
            buf.copy_from_slice(&self.data[i..i + buf.len()]);
            Ok(())
        }
        fn dma_write(&mut self, iova: Iova, data: &[u8]) -> Result<(), DmaFault> {
            let i = self.check(iova, data.len())?;
            self.data[i..i + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    /// A submission entry being built.
    #[derive(Clone, Copy)]
    struct Cmd([u32; 16]);

    impl Cmd {
        fn new(opcode: u8) -> Cmd {
            let mut d = [0u32; 16];
            d[0] = u32::from(opcode);
            Cmd(d)
        }
        fn nsid(mut self, nsid: u32) -> Cmd {
            self.0[1] = nsid;
            self
        }
        fn prp(mut self, prp1: u64, prp2: u64) -> Cmd {
            self.0[6] = prp1 as u32;
            self.0[7] = (prp1 >> 32) as u32;
            self.0[8] = prp2 as u32;
            self.0[9] = (prp2 >> 32) as u32;
            self
        }
        fn dw(mut self, i: usize, v: u32) -> Cmd {
            self.0[i] = v;
            self
        }
        fn bytes(&self, cid: u16) -> Vec<u8> {
            let mut d = self.0;
            d[0] = (d[0] & 0xffff) | (u32::from(cid) << 16);
            d.iter().flat_map(|w| w.to_le_bytes()).collect()
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Cqe {
        dw0: u32,
        sq_head: u16,
        sq_id: u16,
        cid: u16,
        phase: bool,
        status: u16,
    }

    /// The host's view of one queue pair.
    #[derive(Clone, Copy, Default)]
    struct Q {
        sq: u64,
        cq: u64,
        sq_size: u32,
        cq_size: u32,
        tail: u32,
        head: u32,
        phase: bool,
    }

    /// A controller, its host memory, and the host driver's queue state.
    struct Rig {
        n: Nvme,
        mem: FakeMem,
        irqs: Arc<Mutex<Vec<u32>>>,
        q: [Q; QUEUES],
        cid: u16,
    }

    fn sq_base(qid: usize) -> u64 {
        0x20_0000 + 0x1_0000 * qid as u64
    }
    fn cq_base(qid: usize) -> u64 {
        0x30_0000 + 0x4000 * qid as u64
    }

    impl Rig {
        fn with(storage: Storage) -> Rig {
            let mut n = Nvme::new(DEFAULT_VENDOR, DEFAULT_DEVICE, DEFAULT_CLASS, storage);
            let irqs = Arc::new(Mutex::new(Vec::new()));
            let seen = irqs.clone();
            n.set_irq_sink(Some(Box::new(move |v| seen.lock().unwrap().push(v))));
            Rig {
                n,
                mem: FakeMem::new(),
                irqs,
                q: [Q::default(); QUEUES],
                cid: 0,
            }
        }
        fn new() -> Rig {
            Rig::with(Storage::Memory { size: NS_SIZE })
        }
        fn ready() -> Rig {
            let mut r = Rig::new();
            r.enable();
            r
        }
        fn r32(&mut self, off: u64) -> u32 {
            let mut b = [0u8; 4];
            self.n.mmio_read(0, off, &mut b);
            u32::from_le_bytes(b)
        }
        fn r64(&mut self, off: u64) -> u64 {
            let mut b = [0u8; 8];
            self.n.mmio_read(0, off, &mut b);
            u64::from_le_bytes(b)
        }
        fn w32(&mut self, off: u64, v: u32) {
            self.n.mmio_write(0, off, &v.to_le_bytes(), &mut self.mem);
        }
        fn w64(&mut self, off: u64, v: u64) {
            self.n.mmio_write(0, off, &v.to_le_bytes(), &mut self.mem);
        }
        fn csts(&mut self) -> u32 {
            self.r32(REG_CSTS)
        }
        fn irqs(&self) -> Vec<u32> {
            std::mem::take(&mut *self.irqs.lock().unwrap())
        }
        /// Program the admin queues and set CC.EN, as Linux's nvme_enable_ctrl does.
        fn enable(&mut self) {
            let e = ADMIN_ENTRIES - 1;
            self.w32(REG_AQA, e | (e << 16));
            self.w64(REG_ASQ, ASQ);
            self.w64(REG_ACQ, ACQ);
            let cc = (IOSQES << 16) | (IOCQES << 20);
            self.w32(REG_CC, cc);
            self.w32(REG_CC, cc | CC_EN);
            assert_eq!(self.csts() & (CSTS_RDY | CSTS_CFS), CSTS_RDY);
            // A fresh admin CQ: stale entries would carry a valid-looking phase.
            self.mem.put(ACQ, &vec![0; (ADMIN_ENTRIES * 16) as usize]);
            self.q[0] = Q {
                sq: ASQ,
                cq: ACQ,
                sq_size: ADMIN_ENTRIES,
                cq_size: ADMIN_ENTRIES,
                tail: 0,
                head: 0,
                phase: true,
            };
        }
        /// Take the controller's view of every queue pair (after arbitrary doorbell writes).
        fn sync(&mut self) {
            for qid in 0..QUEUES {
                if let (Some(sq), Some(cq)) = (self.n.sq(qid), self.n.cq(qid)) {
                    self.q[qid] = Q {
                        sq: sq.base,
                        cq: cq.base,
                        sq_size: sq.size,
                        cq_size: cq.size,
                        tail: sq.tail,
                        head: cq.head,
                        phase: if cq.head > cq.tail {
                            !cq.phase
                        } else {
                            cq.phase
                        },
                    };
                }
            }
        }
        fn disable(&mut self) {
            let cc = self.r32(REG_CC);
            self.w32(REG_CC, cc & !CC_EN);
            assert_eq!(self.csts() & CSTS_RDY, 0);
        }
        /// Put a command in `qid`'s submission queue (no doorbell); its cid.
        fn push(&mut self, qid: usize, cmd: Cmd) -> u16 {
            self.cid = self.cid.wrapping_add(1);
            let q = self.q[qid];
            self.mem
                .put(q.sq + 64 * u64::from(q.tail), &cmd.bytes(self.cid));
            self.q[qid].tail = (q.tail + 1) % q.sq_size;
            self.cid
        }
        fn ring(&mut self, qid: usize) {
            let tail = self.q[qid].tail;
            self.w32(DOORBELLS + 8 * qid as u64, tail);
        }
        /// The next completion of `qid` if posted (the head doorbell is not written).
        fn pop(&mut self, qid: usize) -> Option<Cqe> {
            let q = self.q[qid];
            let raw = self.mem.get(q.cq + 16 * u64::from(q.head), 16);
            let dw = |i: usize| u32::from_le_bytes(raw[i * 4..i * 4 + 4].try_into().unwrap());
            let cqe = Cqe {
                dw0: dw(0),
                sq_head: dw(2) as u16,
                sq_id: (dw(2) >> 16) as u16,
                cid: dw(3) as u16,
                phase: dw(3) & (1 << 16) != 0,
                status: (dw(3) >> 17) as u16,
            };
            if cqe.phase != q.phase {
                return None;
            }
            self.q[qid].head = (q.head + 1) % q.cq_size;
            if self.q[qid].head == 0 {
                self.q[qid].phase = !q.phase;
            }
            Some(cqe)
        }
        fn ack(&mut self, qid: usize) {
            let head = self.q[qid].head;
            self.w32(DOORBELLS + 8 * qid as u64 + 4, head);
        }
        /// Submit, ring, take the completion and acknowledge it.
        fn run(&mut self, qid: usize, cmd: Cmd) -> Cqe {
            let cid = self.push(qid, cmd);
            self.ring(qid);
            let cqe = self.pop(qid).expect("a completion");
            self.ack(qid);
            assert_eq!(cqe.cid, cid);
            assert_eq!(usize::from(cqe.sq_id), qid);
            cqe
        }
        fn admin(&mut self, cmd: Cmd) -> Cqe {
            self.run(0, cmd)
        }
        fn identify(&mut self, cns: u8, nsid: u32) -> (u16, Vec<u8>) {
            self.mem.put(IDENT, &[0xee; 4096]);
            let c = self.admin(
                Cmd::new(ADMIN_IDENTIFY)
                    .nsid(nsid)
                    .prp(IDENT, 0)
                    .dw(10, u32::from(cns)),
            );
            (c.status, self.mem.get(IDENT, 4096))
        }
        fn create_cq(&mut self, qid: usize, entries: u32, iv: u16, ien: bool) -> Cqe {
            self.mem.put(cq_base(qid), &vec![0; 16 * entries as usize]);
            self.admin(
                Cmd::new(ADMIN_CREATE_CQ)
                    .prp(cq_base(qid), 0)
                    .dw(10, qid as u32 | ((entries - 1) << 16))
                    .dw(11, 1 | (u32::from(ien) << 1) | (u32::from(iv) << 16)),
            )
        }
        fn create_sq(&mut self, qid: usize, entries: u32, cqid: u16) -> Cqe {
            self.admin(
                Cmd::new(ADMIN_CREATE_SQ)
                    .prp(sq_base(qid), 0)
                    .dw(10, qid as u32 | ((entries - 1) << 16))
                    .dw(11, 1 | (u32::from(cqid) << 16)),
            )
        }
        /// I/O queue pair `qid` (SQ and CQ of `entries`), its CQ on vector `iv`.
        fn pair(&mut self, qid: usize, entries: u32, iv: u16, ien: bool) {
            assert_eq!(self.create_cq(qid, entries, iv, ien).status, STATUS_SUCCESS);
            assert_eq!(
                self.create_sq(qid, entries, qid as u16).status,
                STATUS_SUCCESS
            );
            self.q[qid] = Q {
                sq: sq_base(qid),
                cq: cq_base(qid),
                sq_size: entries,
                cq_size: entries,
                tail: 0,
                head: 0,
                phase: true,
            };
        }
        /// Read or write `nlb` blocks at `slba` through PRP1/PRP2 on queue `qid`.
        fn rw(&mut self, qid: usize, op: u8, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> u16 {
            self.run(
                qid,
                Cmd::new(op)
                    .nsid(1)
                    .prp(prp1, prp2)
                    .dw(10, slba as u32)
                    .dw(11, (slba >> 32) as u32)
                    .dw(12, nlb - 1),
            )
            .status
        }
        fn get_log(&mut self, lid: u8, len: u32, offset: u64, rae: bool) -> (u16, Vec<u8>) {
            self.mem.put(IDENT, &[0xee; 4096]);
            let numd = len / 4 - 1;
            let c = self.admin(
                Cmd::new(ADMIN_GET_LOG_PAGE)
                    .nsid(u32::MAX)
                    .prp(IDENT, 0)
                    .dw(
                        10,
                        u32::from(lid) | (u32::from(rae) << 15) | ((numd & 0xffff) << 16),
                    )
                    .dw(11, numd >> 16)
                    .dw(12, offset as u32)
                    .dw(13, (offset >> 32) as u32),
            );
            (c.status, self.mem.get(IDENT, len as usize))
        }
        fn set_feature(&mut self, fid: u8, v: u32) -> Cqe {
            self.admin(
                Cmd::new(ADMIN_SET_FEATURES)
                    .dw(10, u32::from(fid))
                    .dw(11, v),
            )
        }
        fn get_feature(&mut self, fid: u8, select: u32, v: u32) -> Cqe {
            self.admin(
                Cmd::new(ADMIN_GET_FEATURES)
                    .dw(10, u32::from(fid) | (select << 8))
                    .dw(11, v),
            )
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| {
                (i as u8)
                    .wrapping_mul(31)
                    .wrapping_add(seed ^ (i >> 9) as u8)
            })
            .collect()
    }

    fn le16(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }
    fn le32(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn le64(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn registers_after_power_on() {
        let mut r = Rig::new();
        assert_eq!(r.r64(REG_CAP), CAP);
        assert_eq!(
            u64::from(r.r32(REG_CAP)) | (u64::from(r.r32(REG_CAP + 4)) << 32),
            CAP,
            "lo_hi_readq"
        );
        assert_eq!(CAP & 0xffff, 1023);
        assert_eq!((CAP >> 24) & 0xff, 0x0f);
        assert_eq!((CAP >> 37) & 0xff, 1, "NVM command set");
        assert_eq!((CAP >> 48) & 0xff, 0, "MPSMIN = MPSMAX = 4 KiB");
        assert_eq!(r.r32(REG_VS), 0x0001_0400);
        assert_eq!(r.csts(), 0);
        assert_eq!(r.r32(REG_CC), 0);
        assert_eq!(r.r32(REG_CMBLOC), 0);
        assert_eq!(r.r32(REG_CMBSZ), 0);
        assert_eq!(r.r32(REG_NSSR), 0);
        assert_eq!(r.r32(0x800), 0, "reserved reads 0");
        assert_eq!(r.r32(DOORBELLS), 0, "doorbells read 0");
        // Writable registers read back (masked); read-only ones ignore writes.
        r.w32(REG_AQA, 0xffff_ffff);
        assert_eq!(r.r32(REG_AQA), 0x0fff_0fff);
        r.w64(REG_ASQ, 0x1234_5000);
        r.w32(REG_ACQ, 0x6000);
        r.w32(REG_ACQ + 4, 0x7);
        assert_eq!(r.r64(REG_ASQ), 0x1234_5000);
        assert_eq!(r.r64(REG_ACQ), 0x7_0000_6000);
        r.w32(REG_CSTS, u32::MAX);
        r.w32(REG_VS, 0);
        r.w64(REG_CAP, 0);
        assert_eq!(r.csts(), 0);
        assert_eq!(r.r32(REG_VS), VERSION);
        assert_eq!(r.r64(REG_CAP), CAP);
        r.w32(REG_INTMS, 0b101);
        assert_eq!(r.r32(REG_INTMC), 0b101);
        r.w32(REG_INTMC, 0b001);
        assert_eq!(r.r32(REG_INTMS), 0b100);
        assert_eq!(r.mem.accesses, 0);
    }

    #[test]
    fn odd_accesses_read_all_ones_and_are_ignored() {
        let mut r = Rig::new();
        let mut b2 = [0u8; 2];
        r.n.mmio_read(0, REG_VS, &mut b2);
        assert_eq!(b2, [0xff; 2]);
        assert_eq!(r.r64(REG_VS), u64::MAX, "8 bytes of a 32-bit register");
        assert_eq!(r.r64(DOORBELLS), u64::MAX, "8-byte doorbell");
        assert_eq!(r.r32(REG_VS + 1), u32::MAX, "unaligned");
        assert_eq!(r.r32(BAR0_SIZE), u32::MAX, "past the BAR");
        assert_eq!(r.r32(u64::MAX - 3), u32::MAX);
        let mut b = [0u8; 4];
        r.n.mmio_read(1, 0, &mut b);
        assert_eq!(b, [0xff; 4]);
        r.n.mmio_read(0, 0, &mut []);
        r.n.mmio_write(0, REG_AQA, &[1, 2], &mut r.mem);
        r.n.mmio_write(0, REG_AQA + 2, &[1, 2, 3, 4], &mut r.mem);
        r.n.mmio_write(2, REG_AQA, &[1, 2, 3, 4], &mut r.mem);
        r.n.mmio_write(0, REG_AQA, &[1; 16], &mut r.mem);
        r.n.mmio_write(0, u64::MAX, &[1; 8], &mut r.mem);
        r.w64(REG_AQA - 4, u64::MAX);
        assert_eq!(r.r32(REG_AQA), 0);
        assert!(!r.n.has_bar(1) && r.n.has_bar(0));
    }

    #[test]
    fn msix_table_is_stored_and_starts_masked() {
        let mut r = Rig::new();
        for v in 0..IRQ_COUNT as u64 {
            assert_eq!(r.r32(MSIX_TABLE + 16 * v + 12), 1);
        }
        r.w32(MSIX_TABLE + 16 * 8, 0xfee0_1003);
        r.w32(MSIX_TABLE + 16 * 8 + 4, 0x1);
        r.w32(MSIX_TABLE + 16 * 8 + 8, 0x4041);
        r.w32(MSIX_TABLE + 16 * 8 + 12, 0xffff_fffe);
        assert_eq!(r.r64(MSIX_TABLE + 16 * 8), 0x1_fee0_1000);
        assert_eq!(r.r32(MSIX_TABLE + 16 * 8 + 8), 0x4041);
        assert_eq!(r.r32(MSIX_TABLE + 16 * 8 + 12), 0);
        r.w64(MSIX_TABLE + 16 * 2 + 8, 0x1_0000_0033);
        assert_eq!(r.r32(MSIX_TABLE + 16 * 2 + 8), 0x33);
        assert_eq!(r.r32(MSIX_TABLE + 16 * 2 + 12), 1);
        assert_eq!(r.r32(MSIX_TABLE + 16 * 9), 0, "past the table");
        assert_eq!(r.r64(MSIX_PBA), 0);
        r.n.reset();
        assert_eq!(r.r32(MSIX_TABLE + 16 * 8), 0);
        assert_eq!(r.r32(MSIX_TABLE + 16 * 8 + 12), 1);
    }

    #[test]
    fn config_space_is_a_pcie_nvme_function() {
        let mut n = Nvme::new(0x1234, 0x5678, 0xff_01_08_02, Storage::Memory { size: 0 })
            .with_multifunction(true);
        let cfg = |n: &Nvme, off: usize| le32(n.config(), off);
        assert_eq!(n.config().len(), 4096);
        assert_eq!(cfg(&n, 0), 0x5678_1234);
        assert_eq!(cfg(&n, 8), 0x01_08_02_01, "class and revision");
        assert_eq!(cfg(&n, 0x2c), 0x5678_1234, "subsystem ids");
        assert_eq!(n.config()[0x0e], 0x80);
        assert_eq!(n.config()[0x3d], 1, "INTA");
        assert_eq!(le16(n.config(), 6) & 0x10, 0x10, "capability list");
        // BAR sizing: 16 KiB, 64-bit memory.
        n.config_write(0x10, &[0xff; 8]);
        assert_eq!(cfg(&n, 0x10), 0xffff_c004);
        assert_eq!(cfg(&n, 0x14), 0xffff_ffff);
        n.config_write(0x10, &0xfebf_4000u32.to_le_bytes());
        n.config_write(0x14, &0u32.to_le_bytes());
        assert_eq!(cfg(&n, 0x10), 0xfebf_4004);
        n.config_write(0x18, &[0xff; 16]);
        assert_eq!(cfg(&n, 0x18), 0, "no other BARs");
        assert_eq!(cfg(&n, 0x30), 0, "no ROM");
        // Command register: only the listed bits.
        n.config_write(4, &[0xff, 0xff]);
        assert_eq!(le16(n.config(), 4), 0x0546);
        n.config_write(6, &[0xff, 0xff]);
        assert_eq!(le16(n.config(), 6), 0x0010, "status is read-only");
        // Capabilities: PM -> MSI-X -> PCIe.
        let mut caps = Vec::new();
        let mut p = usize::from(n.config()[0x34]);
        while p != 0 && caps.len() < 8 {
            caps.push((p, n.config()[p]));
            p = usize::from(n.config()[p + 1]);
        }
        assert_eq!(
            caps,
            [
                (PM_CAP_OFFSET, 0x01),
                (MSIX_CAP_OFFSET, 0x11),
                (PCIE_CAP_OFFSET, 0x10)
            ]
        );
        let m = MSIX_CAP_OFFSET;
        assert_eq!(le16(n.config(), m + 2) & 0x7ff, IRQ_COUNT as u16 - 1);
        assert_eq!(cfg(&n, m + 4), MSIX_TABLE as u32);
        assert_eq!(cfg(&n, m + 8), MSIX_PBA as u32);
        n.config_write((m + 2) as u64, &[0xff, 0xff]);
        assert_eq!(le16(n.config(), m + 2), 0xc000 | (IRQ_COUNT as u16 - 1));
        let e = PCIE_CAP_OFFSET;
        assert_eq!(le16(n.config(), e + 2), 0x0002, "v2 endpoint");
        assert_ne!(cfg(&n, e + 4) & (1 << 28), 0, "FLR");
        assert_eq!(le16(n.config(), e + 0x12) & 0x3ff, 0x43, "8 GT/s x4");
        // PM: D3hot and back; D1/D2 are refused.
        let pm = PM_CAP_OFFSET + 4;
        n.config_write(pm as u64, &[3]);
        assert_eq!(n.config()[pm] & 3, 3);
        n.config_write(pm as u64, &[1]);
        assert_eq!(n.config()[pm] & 3, 3);
        n.config_write(pm as u64, &[0]);
        assert_eq!(n.config()[pm], 0x08, "D0, No_Soft_Reset");
        // Read-only ids; writes of any size and offset do not panic.
        n.config_write(0, &[0; 4]);
        n.config_write(4090, &[0xff; 100]);
        n.config_write(u64::MAX, &[0xff; 2]);
        n.config_write(0x100, &[0xff; 4]);
        assert_eq!(cfg(&n, 0), 0x5678_1234);
        assert_eq!(cfg(&n, 0x100), 0, "no extended capabilities");
        assert_eq!(n.irq_count(), IRQ_COUNT);
        assert_eq!(
            n.bars(),
            vec![BarInfo {
                index: 0,
                size: BAR0_SIZE,
                mmap: false
            }]
        );
        // A function-level reset through DevCtl restores the header.
        n.config_write((e + 8) as u64, &[0xff, 0xff]);
        assert_eq!(cfg(&n, 0x10), 4);
        assert_eq!(le16(n.config(), 4), 0);
        assert_eq!(le16(n.config(), e + 8), PCIE_DEVCTL);
        assert_eq!(n.config()[0x0e], 0x80);
    }

    #[test]
    fn enable_needs_a_valid_admin_queue_configuration() {
        for (aqa, asq, cc) in [
            (0, ASQ, 0),                        // one-entry queues
            (0x000f_000f, ASQ + 8, 0),          // unaligned base
            (0x000f_000f, ASQ, 1 << 7),         // MPS 8 KiB
            (0x000f_000f, ASQ, 1 << 4),         // another command set
            (0x000f_000f, ASQ, 1 << 11),        // weighted round robin
            (0x0fff_0fff, u64::MAX - 0xfff, 0), // past 2^64
        ] {
            let mut r = Rig::new();
            r.w32(REG_AQA, aqa);
            r.w64(REG_ASQ, asq);
            r.w64(REG_ACQ, ACQ);
            r.w32(REG_CC, cc | CC_EN);
            assert_eq!(
                r.csts() & (CSTS_RDY | CSTS_CFS),
                CSTS_CFS,
                "{aqa:#x} {asq:#x} {cc:#x}"
            );
            r.w32(REG_CC, 0);
            assert_eq!(r.csts(), 0, "a reset clears the fatal status");
        }
        let mut r = Rig::new();
        r.enable();
        assert_eq!(r.r32(REG_CC) & 0x00ff_0001, 0x0046_0001);
    }

    #[test]
    fn identify_controller() {
        let mut r = Rig::ready();
        let (status, id) = r.identify(CNS_CONTROLLER, 0);
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(le16(&id, 0), DEFAULT_VENDOR);
        assert_eq!(le16(&id, 2), DEFAULT_VENDOR);
        let sn = String::from_utf8(id[4..24].to_vec()).unwrap();
        assert_eq!(sn.trim_end(), r.n.serial());
        assert_eq!(&id[24..35], b"uiommu NVMe");
        assert!(id[35..64].iter().all(|&b| b == b' '));
        assert_eq!(&id[64..72], b"1.0     ");
        assert_eq!(id[77], MDTS);
        assert_eq!(le32(&id, 80), VERSION);
        assert_eq!(
            le16(&id, 256),
            OACS_DBBUF,
            "OACS: doorbell buffer config, no NS management"
        );
        assert_eq!(id[259], AERL);
        assert_eq!(id[263], 0, "NPSS");
        assert_eq!(le16(&id, 2048), 2500, "power state 0");
        assert_eq!((id[512], id[513]), (0x66, 0x44));
        assert_eq!(le32(&id, 516), 1, "NN");
        assert_eq!(le16(&id, 520), ONCS);
        assert_eq!(id[525] & 1, 1, "volatile write cache");
        assert_eq!(le32(&id, 536), 0, "PRPs only");
        let nqn: Vec<u8> = id[768..1024]
            .iter()
            .copied()
            .take_while(|&b| b != 0)
            .collect();
        assert_eq!(
            String::from_utf8(nqn).unwrap(),
            format!("nqn.2026-12.org.uiommu:nvme:{}", r.n.serial())
        );
        assert!(id[1024 + 200..2048].iter().all(|&b| b == 0));
        // Another controller has another serial, NQN and namespace ids.
        let other = Nvme::default();
        assert_ne!(other.serial(), r.n.serial());
        assert_ne!(other.id.nguid, r.n.id.nguid);
        let named = Nvme::default().with_serial("disk 1\u{e9}");
        assert_eq!(named.serial(), "disk_1_");
    }

    #[test]
    fn identify_namespace_list_and_descriptors() {
        let mut r = Rig::ready();
        let (status, ns) = r.identify(CNS_NAMESPACE, 1);
        assert_eq!(status, STATUS_SUCCESS);
        let blocks = NS_SIZE / 512;
        assert_eq!(
            (le64(&ns, 0), le64(&ns, 8), le64(&ns, 16)),
            (blocks, blocks, blocks)
        );
        assert_eq!((ns[25], ns[26]), (0, 0), "one LBA format, format 0");
        assert_eq!(le32(&ns, 128), 9 << 16, "512-byte blocks");
        assert_eq!(ns[33], DLFEAT);
        assert_eq!(&ns[104..120], &r.n.id.nguid);
        // The common capabilities, with no sizes.
        let (status, common) = r.identify(CNS_NAMESPACE, u32::MAX);
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(le64(&common, 0), 0);
        assert_eq!(le32(&common, 128), 9 << 16);
        for nsid in [0, 2, 0xffff_fffe] {
            assert_eq!(r.identify(CNS_NAMESPACE, nsid).0, STATUS_INVALID_NAMESPACE);
        }
        // Active namespace list: ids above NSID.
        let (status, list) = r.identify(CNS_ACTIVE_NAMESPACES, 0);
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(le32(&list, 0), 1);
        assert!(list[4..].iter().all(|&b| b == 0));
        let (_, list) = r.identify(CNS_ACTIVE_NAMESPACES, 1);
        assert!(list.iter().all(|&b| b == 0));
        assert_eq!(
            r.identify(CNS_ACTIVE_NAMESPACES, u32::MAX).0,
            STATUS_INVALID_NAMESPACE
        );
        // Descriptors: an NGUID and a UUID (version 8), then the end.
        let (status, d) = r.identify(CNS_NS_DESCRIPTORS, 1);
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(&d[0..4], &[2, 16, 0, 0]);
        assert_eq!(&d[4..20], &ns[104..120]);
        assert_eq!(&d[20..24], &[3, 16, 0, 0]);
        assert_eq!(d[24 + 6] >> 4, 8);
        assert_eq!(d[24 + 8] >> 6, 2);
        assert!(d[40..].iter().all(|&b| b == 0));
        assert_eq!(
            r.identify(CNS_NS_DESCRIPTORS, 2).0,
            STATUS_INVALID_NAMESPACE
        );
        // The NVM command set's controller structure is all zeroes; others are refused.
        let (status, cs) = r.identify(CNS_CS_CONTROLLER, 0);
        assert_eq!(status, STATUS_SUCCESS);
        assert!(cs.iter().all(|&b| b == 0));
        for cns in [0x04, 0x05, 0x07, 0x08, 0x10, 0x13, 0xff] {
            assert_eq!(r.identify(cns, 1).0, STATUS_INVALID_FIELD, "cns {cns:#x}");
        }
        let zns = r.admin(
            Cmd::new(ADMIN_IDENTIFY)
                .prp(IDENT, 0)
                .dw(10, u32::from(CNS_CS_CONTROLLER))
                .dw(11, 2 << 24),
        );
        assert_eq!(zns.status, STATUS_INVALID_FIELD);
    }

    #[test]
    fn identify_data_split_across_two_pages() {
        let mut r = Rig::ready();
        r.mem.put(DATA, &[0xee; 0x2000]);
        let c = r.admin(
            Cmd::new(ADMIN_IDENTIFY)
                .prp(DATA + 0x800, DATA2)
                .dw(10, u32::from(CNS_CONTROLLER)),
        );
        assert_eq!(c.status, STATUS_SUCCESS);
        let (_, whole) = r.identify(CNS_CONTROLLER, 0);
        let mut got = r.mem.get(DATA + 0x800, 0x800);
        got.extend(r.mem.get(DATA2, 0x800));
        assert_eq!(got, whole);
        assert_eq!(
            r.mem.get(DATA + 0x1000, 4),
            [0xee; 4],
            "nothing past the first page"
        );
        // A second page that is not page-aligned is refused.
        let c = r.admin(
            Cmd::new(ADMIN_IDENTIFY)
                .prp(DATA + 0x800, DATA2 + 0x10)
                .dw(10, u32::from(CNS_CONTROLLER)),
        );
        assert_eq!(c.status, STATUS_PRP_OFFSET_INVALID);
    }

    #[test]
    fn number_of_queues_is_capped_and_kept() {
        let mut r = Rig::ready();
        let c = r.set_feature(FEAT_NUMBER_OF_QUEUES, 63 | (63 << 16));
        assert_eq!(c.status, STATUS_SUCCESS);
        assert_eq!(c.dw0, 7 | (7 << 16));
        let c = r.set_feature(FEAT_NUMBER_OF_QUEUES, 1 | (2 << 16));
        assert_eq!(c.dw0, 1 | (2 << 16));
        assert_eq!(
            r.get_feature(FEAT_NUMBER_OF_QUEUES, 0, 0).dw0,
            1 | (2 << 16)
        );
        assert_eq!(
            r.set_feature(FEAT_NUMBER_OF_QUEUES, 0xffff).status,
            STATUS_INVALID_FIELD
        );
        // Queue ids past the allocation are refused.
        assert_eq!(r.create_cq(4, 8, 1, true).status, STATUS_INVALID_QUEUE_ID);
        assert_eq!(r.create_cq(3, 8, 1, true).status, STATUS_SUCCESS);
        assert_eq!(r.create_sq(3, 8, 3).status, STATUS_INVALID_QUEUE_ID);
        assert_eq!(r.create_sq(2, 8, 3).status, STATUS_SUCCESS);
    }

    #[test]
    fn write_and_read_back_through_prp_lists() {
        let mut r = Rig::ready();
        r.pair(1, 64, 1, true);
        // 64 KiB from an offset in the first page: PRP1 + a list of 16 contiguous pages, so
        // the data moves in one DMA access.
        let data = pattern(0x1_0000, 7);
        r.mem.put(DATA + 0x200, &data);
        let list: Vec<u64> = (1..=16).map(|i| DATA + 0x1000 * i).collect();
        r.mem.put_u64s(LIST, &list);
        r.mem.largest = 0;
        assert_eq!(
            r.rw(1, IO_WRITE, 100, 128, DATA + 0x200, LIST),
            STATUS_SUCCESS
        );
        assert_eq!(r.mem.largest, 0x1_0000, "contiguous pages merged");
        // Read back into scattered pages (reverse order), PRP1 at another offset.
        let pages: Vec<u64> = (0..16).map(|i| DATA2 + 0x1000 * (16 - i)).collect();
        r.mem.put_u64s(LIST + 0x1000, &pages);
        assert_eq!(
            r.rw(1, IO_READ, 100, 128, DATA2 + 0x400, LIST + 0x1000),
            STATUS_SUCCESS
        );
        let mut back = r.mem.get(DATA2 + 0x400, 0xc00);
        for p in &pages {
            back.extend(r.mem.get(*p, 0x1000));
        }
        back.truncate(0x1_0000);
        assert_eq!(back, data);
        // Blocks never written read as zero.
        assert_eq!(r.rw(1, IO_READ, 0, 8, DATA2, 0), STATUS_SUCCESS);
        assert_eq!(r.mem.get(DATA2, 4096), vec![0; 4096]);
        // Exactly two pages: PRP2 is the second page itself.
        let two = pattern(0x2000, 9);
        r.mem.put(DATA2 + 0x2000, &two[..0x1000]);
        r.mem.put(DATA2 + 0x5000, &two[0x1000..]);
        assert_eq!(
            r.rw(1, IO_WRITE, 5, 16, DATA2 + 0x2000, DATA2 + 0x5000),
            STATUS_SUCCESS
        );
        assert_eq!(r.rw(1, IO_READ, 5, 16, DATA, DATA + 0x1000), STATUS_SUCCESS);
        assert_eq!(r.mem.get(DATA, 0x2000), two);
    }

    #[test]
    fn a_prp_list_chains_through_its_last_entry() {
        let mut r = Rig::ready();
        r.pair(1, 16, 1, true);
        // 512 KiB (MDTS): 128 pages, PRP1 and a list starting in the last two slots of a page:
        // one entry there, then a pointer to the next list page with the other 126.
        let data = pattern(MAX_TRANSFER, 3);
        let base = 0x20_0000 + 0x10_0000; // scratch area above the queues
        let pages: Vec<u64> = (0..128).map(|i| base + 0x1000 * ((i * 37) % 128)).collect();
        for (i, p) in pages.iter().enumerate() {
            r.mem.put(*p, &data[i * 0x1000..(i + 1) * 0x1000]);
        }
        r.mem.put_u64s(LIST + 0xff0, &[pages[1], LIST + 0x3000]);
        r.mem.put_u64s(LIST + 0x3000, &pages[2..]);
        assert_eq!(
            r.rw(1, IO_WRITE, 0, 1024, pages[0], LIST + 0xff0),
            STATUS_SUCCESS
        );
        // Read it back contiguously.
        let list: Vec<u64> = (1..128).map(|i| DATA + 0x1000 * i).collect();
        r.mem.put_u64s(LIST + 0x5000, &list);
        r.mem.largest = 0;
        assert_eq!(
            r.rw(1, IO_READ, 0, 1024, DATA, LIST + 0x5000),
            STATUS_SUCCESS
        );
        assert_eq!(r.mem.largest, MAX_TRANSFER);
        assert_eq!(r.mem.get(DATA, MAX_TRANSFER), data);
        assert_eq!(r.n.stats.blocks_written, 1024);
        assert_eq!(r.n.stats.blocks_read, 1024);
    }

    #[test]
    fn mdts_lba_range_and_prp_offsets_are_checked() {
        let mut r = Rig::ready();
        r.pair(1, 16, 1, true);
        let blocks = NS_SIZE / 512;
        r.mem.put_u64s(
            LIST,
            &(1..200).map(|i| DATA + 0x1000 * i).collect::<Vec<_>>(),
        );
        // One block more than MDTS.
        assert_eq!(r.rw(1, IO_READ, 0, 1025, DATA, LIST), STATUS_INVALID_FIELD);
        assert_eq!(
            r.rw(1, IO_WRITE, 0, 65536, DATA, LIST),
            STATUS_INVALID_FIELD
        );
        // Past the namespace.
        assert_eq!(
            r.rw(1, IO_READ, blocks - 1, 2, DATA, 0),
            STATUS_LBA_OUT_OF_RANGE
        );
        assert_eq!(
            r.rw(1, IO_WRITE, blocks, 1, DATA, 0),
            STATUS_LBA_OUT_OF_RANGE
        );
        assert_eq!(
            r.rw(1, IO_READ, u64::MAX, 1, DATA, 0),
            STATUS_LBA_OUT_OF_RANGE
        );
        assert_eq!(r.rw(1, IO_READ, blocks - 1, 1, DATA, 0), STATUS_SUCCESS);
        // PRP1 not dword-aligned; PRP2 (a second page) or a list entry not page-aligned; a
        // list pointer not qword-aligned.
        assert_eq!(
            r.rw(1, IO_READ, 0, 1, DATA + 2, 0),
            STATUS_PRP_OFFSET_INVALID
        );
        assert_eq!(
            r.rw(1, IO_READ, 0, 16, DATA, DATA + 0x1200),
            STATUS_PRP_OFFSET_INVALID
        );
        r.mem
            .put_u64s(LIST + 0x2000, &[DATA + 0x1000, DATA + 0x2008]);
        assert_eq!(
            r.rw(1, IO_READ, 0, 24, DATA, LIST + 0x2000),
            STATUS_PRP_OFFSET_INVALID
        );
        assert_eq!(
            r.rw(1, IO_READ, 0, 24, DATA, LIST + 4),
            STATUS_PRP_OFFSET_INVALID
        );
        // A chain pointer that is not page-aligned.
        r.mem.put_u64s(LIST + 0x4ff8, &[LIST + 0x6010]);
        assert_eq!(
            r.rw(1, IO_READ, 0, 24, DATA, LIST + 0x4ff8),
            STATUS_PRP_OFFSET_INVALID
        );
        // The statuses say "do not retry".
        assert_ne!(STATUS_PRP_OFFSET_INVALID & STATUS_DNR, 0);
        // Only Read/Write/Flush/Write Zeroes/DSM; namespace 1 only.
        let c = r.run(1, Cmd::new(0x05).nsid(1));
        assert_eq!(c.status, STATUS_INVALID_OPCODE);
        let c = r.run(1, Cmd::new(IO_READ).nsid(2).prp(DATA, 0));
        assert_eq!(c.status, STATUS_INVALID_NAMESPACE);
        let c = r.run(1, Cmd::new(IO_FLUSH).nsid(0));
        assert_eq!(c.status, STATUS_INVALID_NAMESPACE);
        assert_eq!(
            r.run(1, Cmd::new(IO_FLUSH).nsid(u32::MAX)).status,
            STATUS_SUCCESS
        );
        assert_eq!(r.run(1, Cmd::new(IO_FLUSH).nsid(1)).status, STATUS_SUCCESS);
        // SGLs and fused commands are not supported.
        let c = r.run(
            1,
            Cmd::new(IO_READ).nsid(1).prp(DATA, 0).dw(0, 2 | (1 << 14)),
        );
        assert_eq!(c.status, STATUS_INVALID_FIELD);
        let c = r.run(
            1,
            Cmd::new(IO_READ).nsid(1).prp(DATA, 0).dw(0, 2 | (1 << 8)),
        );
        assert_eq!(c.status, STATUS_INVALID_FIELD);
    }

    /// Linux's `nvme_dbbuf_need_event`: whether an update from `old` to `new` passes
    /// `event_idx`, so that the MMIO doorbell is to be written.
    fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
    }

    #[test]
    fn shadow_doorbells_spare_the_head_doorbell_and_wake_a_waiting_queue() {
        const DBS: u64 = 0xc_0000;
        const EIS: u64 = 0xd_0000;
        let mut r = Rig::ready();
        let (_, id) = r.identify(1, 0);
        assert_ne!(le16(&id, 256) & OACS_DBBUF, 0);
        // Misaligned or missing buffers are refused.
        for (a, b) in [(0, EIS), (DBS, 0), (DBS + 8, EIS), (DBS, EIS + 0x800)] {
            let c = r.admin(Cmd::new(ADMIN_DOORBELL_BUFFER_CONFIG).prp(a, b));
            assert_eq!(c.status, STATUS_INVALID_FIELD, "{a:#x} {b:#x}");
        }
        r.pair(1, 4, 1, true);
        r.mem.put(DBS, &[0; 64]);
        r.mem.put(EIS, &[0xff; 64]);
        let c = r.admin(Cmd::new(ADMIN_DOORBELL_BUFFER_CONFIG).prp(DBS, EIS));
        assert_eq!(c.status, STATUS_SUCCESS);
        let ei =
            |r: &Rig, off: u64| u32::from_le_bytes(r.mem.get(EIS + off, 4).try_into().unwrap());
        // The queue that exists got its EventIdx entries: SQ at its tail, CQ one behind its head.
        assert_eq!((ei(&r, 8), ei(&r, 12)), (0, 0xffff));
        // As Linux drives it: the shadow first, the MMIO doorbell only when need_event says.
        let mut mmio_heads = 0;
        for i in 0..10u32 {
            let old_tail = r.q[1].tail as u16;
            let cid = r.push(1, Cmd::new(IO_FLUSH).nsid(1));
            let tail = r.q[1].tail;
            r.mem.put(DBS + 8, &tail.to_le_bytes());
            assert!(
                need_event(ei(&r, 8) as u16, tail as u16, old_tail),
                "every submission is written by MMIO (command {i})"
            );
            r.ring(1);
            assert_eq!(ei(&r, 8), tail);
            let cqe = r.pop(1).expect("completed at once");
            assert_eq!((cqe.cid, cqe.status), (cid, STATUS_SUCCESS));
            let old_head = ((r.q[1].head + 3) % 4) as u16;
            let head = r.q[1].head;
            r.mem.put(DBS + 12, &head.to_le_bytes());
            if need_event(ei(&r, 12) as u16, head as u16, old_head) {
                mmio_heads += 1;
                r.ack(1);
            }
        }
        // Ten commands through a 4-entry queue (3 laps) with at most one head write a lap.
        assert!(mmio_heads <= 3, "{mmio_heads} head doorbells");
        // A host that lets the completion queue fill (queue 2: 4 submission entries, 2
        // completion entries, so room for one): the controller waits, asks for the next head
        // update by MMIO (EventIdx = head), and goes on once it comes.
        assert_eq!(r.create_cq(2, 2, 2, true).status, STATUS_SUCCESS);
        assert_eq!(r.create_sq(2, 4, 2).status, STATUS_SUCCESS);
        r.q[2] = Q {
            sq: sq_base(2),
            cq: cq_base(2),
            sq_size: 4,
            cq_size: 2,
            tail: 0,
            head: 0,
            phase: true,
        };
        assert_eq!(
            (ei(&r, 16), ei(&r, 20)),
            (0, 0xffff),
            "the new queue's EventIdx"
        );
        for _ in 0..2 {
            r.push(2, Cmd::new(IO_FLUSH).nsid(1));
        }
        let tail = r.q[2].tail;
        r.mem.put(DBS + 16, &tail.to_le_bytes());
        r.ring(2);
        assert!(
            r.n.cq(2).unwrap().is_full(),
            "one completion posted, one command waits"
        );
        assert_eq!(r.n.sq(2).unwrap().head, 1);
        assert_eq!(ei(&r, 20), 0, "the next head update is asked for");
        r.pop(2).expect("posted");
        let head = r.q[2].head;
        r.mem.put(DBS + 20, &head.to_le_bytes());
        assert!(need_event(ei(&r, 20) as u16, head as u16, 0));
        r.ack(2);
        assert_eq!(r.pop(2).map(|c| c.status), Some(STATUS_SUCCESS));
        assert_eq!(r.n.sq(2).unwrap().head, tail);
        // Once a later submission finds room in the shadow head, no MMIO head is needed.
        let head = r.q[2].head;
        r.mem.put(DBS + 20, &head.to_le_bytes());
        r.push(2, Cmd::new(IO_FLUSH).nsid(1));
        let tail = r.q[2].tail;
        r.mem.put(DBS + 16, &tail.to_le_bytes());
        r.ring(2);
        assert_eq!(r.pop(2).map(|c| c.status), Some(STATUS_SUCCESS));
        // A controller reset forgets the buffers.
        r.disable();
        r.enable();
        assert_eq!(r.n.dbbuf, None);
    }

    #[test]
    fn dma_fault_lba_makes_the_transfers_that_include_it_fault() {
        let mut r = Rig::ready();
        r.n = std::mem::take(&mut r.n).with_dma_fault_lba(100);
        r.enable();
        r.pair(1, 16, 1, true);
        r.mem.put(DATA, &pattern(0x1000, 3));
        // Blocks 96..104 include 100: the data goes to DATA with the fault bit set, which
        // faults; the write moves nothing to storage.
        assert_eq!(
            r.rw(1, IO_WRITE, 96, 8, DATA, 0),
            STATUS_DATA_TRANSFER_ERROR
        );
        let f = *r.mem.faults.last().unwrap();
        assert_eq!(f.iova, Iova(DATA | FAULT_IOVA_BIT));
        assert_eq!(r.rw(1, IO_READ, 99, 2, DATA, 0), STATUS_DATA_TRANSFER_ERROR);
        // Around it, everything works.
        let faults = r.mem.faults.len();
        assert_eq!(r.rw(1, IO_WRITE, 101, 8, DATA, 0), STATUS_SUCCESS);
        assert_eq!(r.rw(1, IO_WRITE, 92, 8, DATA, 0), STATUS_SUCCESS);
        r.mem.put(DATA, &[0; 0x1000]);
        assert_eq!(r.rw(1, IO_READ, 101, 8, DATA, 0), STATUS_SUCCESS);
        assert_eq!(r.mem.get(DATA, 0x1000), pattern(0x1000, 3));
        assert_eq!(r.mem.faults.len(), faults);
    }

    #[test]
    fn dma_faults_on_data_are_data_transfer_errors() {
        let mut r = Rig::ready();
        r.pair(1, 16, 1, true);
        let old = pattern(0x8000, 1);
        r.mem.put(DATA, &old);
        r.mem
            .put_u64s(LIST, &(1..8).map(|i| DATA + 0x1000 * i).collect::<Vec<_>>());
        assert_eq!(r.rw(1, IO_WRITE, 0, 64, DATA, LIST), STATUS_SUCCESS);
        // The host buffer's fourth page faults: a write moves nothing to storage.
        r.mem.put(DATA, &pattern(0x8000, 2));
        r.mem.faulty = Some((DATA + 0x3000, DATA + 0x4000));
        let status = r.rw(1, IO_WRITE, 0, 64, DATA, LIST);
        assert_eq!(status, STATUS_DATA_TRANSFER_ERROR);
        assert_eq!(status & STATUS_DNR, 0, "may be retried");
        assert_eq!(r.mem.faults.last().unwrap().iova, Iova(DATA + 0x3000));
        // A read into the faulty buffer fails the same way.
        assert_eq!(
            r.rw(1, IO_READ, 0, 64, DATA, LIST),
            STATUS_DATA_TRANSFER_ERROR
        );
        r.mem.faulty = None;
        assert_eq!(r.rw(1, IO_READ, 0, 64, DATA, LIST), STATUS_SUCCESS);
        assert_eq!(r.mem.get(DATA, 0x8000), old);
        // A faulting PRP list, and Identify data that cannot be written.
        r.mem.faulty = Some((LIST, LIST + 8));
        assert_eq!(
            r.rw(1, IO_READ, 0, 64, DATA, LIST),
            STATUS_DATA_TRANSFER_ERROR
        );
        assert_eq!(r.mem.faults.last().unwrap().iova, Iova(LIST));
        r.mem.faulty = Some((IDENT, IDENT + 1));
        let c = r.admin(Cmd::new(ADMIN_IDENTIFY).prp(IDENT, 0).dw(10, 1));
        assert_eq!(c.status, STATUS_DATA_TRANSFER_ERROR);
        // Past the end of memory (not mapped).
        assert_eq!(
            r.rw(1, IO_READ, 0, 1, MEM as u64 - 256, MEM as u64),
            STATUS_DATA_TRANSFER_ERROR
        );
        let f = *r.mem.faults.last().unwrap();
        assert_eq!(
            (f.iova, f.reason),
            (Iova(MEM as u64), FaultReason::NotMapped)
        );
        assert_eq!(r.csts() & CSTS_CFS, 0, "data faults are not fatal");
    }

    #[test]
    fn faults_on_queue_entries_are_fatal() {
        // Fetching the submission entry.
        let mut r = Rig::ready();
        r.mem.faulty = Some((ASQ, ASQ + 64));
        r.push(0, Cmd::new(ADMIN_KEEP_ALIVE));
        r.ring(0);
        assert_eq!(r.csts() & CSTS_CFS, CSTS_CFS);
        assert!(r.pop(0).is_none());
        r.mem.faulty = None;
        r.push(0, Cmd::new(ADMIN_KEEP_ALIVE));
        r.ring(0);
        assert!(r.pop(0).is_none(), "nothing runs after a fatal error");
        // A controller reset brings it back.
        r.disable();
        assert_eq!(r.csts(), 0);
        r.enable();
        assert_eq!(r.admin(Cmd::new(ADMIN_KEEP_ALIVE)).status, STATUS_SUCCESS);
        // Posting the completion entry.
        r.mem.faulty = Some((ACQ + 16, ACQ + 32));
        r.push(0, Cmd::new(ADMIN_KEEP_ALIVE));
        r.ring(0);
        assert_eq!(r.csts() & CSTS_CFS, CSTS_CFS);
        assert_eq!(r.mem.faults.last().unwrap().iova, Iova(ACQ + 16));
    }

    #[test]
    fn completion_queue_wraps_and_the_phase_flips() {
        let mut r = Rig::ready();
        r.pair(1, 4, 1, true);
        let mut phases = Vec::new();
        let mut heads = Vec::new();
        for _ in 0..10 {
            let c = r.run(1, Cmd::new(IO_FLUSH).nsid(1));
            assert_eq!(c.status, STATUS_SUCCESS);
            phases.push(u8::from(c.phase));
            heads.push(c.sq_head);
        }
        assert_eq!(phases, [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]);
        assert_eq!(heads, [1, 2, 3, 0, 1, 2, 3, 0, 1, 2]);
        // The admin queue wraps too.
        for _ in 0..40 {
            assert_eq!(r.admin(Cmd::new(ADMIN_KEEP_ALIVE)).status, STATUS_SUCCESS);
        }
    }

    #[test]
    fn a_full_completion_queue_resumes_after_its_head_doorbell() {
        let mut r = Rig::ready();
        // A 2-entry CQ holds one completion; its SQ has 8 slots.
        assert_eq!(r.create_cq(1, 2, 1, true).status, STATUS_SUCCESS);
        assert_eq!(r.create_sq(1, 8, 1).status, STATUS_SUCCESS);
        r.q[1] = Q {
            sq: sq_base(1),
            cq: cq_base(1),
            sq_size: 8,
            cq_size: 2,
            tail: 0,
            head: 0,
            phase: true,
        };
        let cids: Vec<u16> = (0..4)
            .map(|_| r.push(1, Cmd::new(IO_FLUSH).nsid(1)))
            .collect();
        r.irqs();
        r.ring(1);
        assert_eq!(r.irqs(), [1]);
        let mut done = Vec::new();
        for _ in 0..4 {
            let c = r.pop(1).expect("one completion");
            assert!(r.pop(1).is_none(), "the queue was full");
            done.push((c.cid, c.sq_head));
            r.ack(1);
        }
        assert_eq!(
            done,
            cids.iter()
                .zip(1..)
                .map(|(&c, h)| (c, h))
                .collect::<Vec<_>>()
        );
        assert!(r.pop(1).is_none());
        // A head doorbell past the posted entries is refused (and changes nothing).
        r.w32(DOORBELLS + 12, 1);
        r.push(1, Cmd::new(IO_FLUSH).nsid(1));
        r.ring(1);
        assert!(r.pop(1).is_some());
    }

    #[test]
    fn interrupts_go_to_each_queues_vector() {
        let mut r = Rig::ready();
        assert_eq!(r.admin(Cmd::new(ADMIN_KEEP_ALIVE)).status, STATUS_SUCCESS);
        assert_eq!(r.irqs(), [0], "the admin CQ is on vector 0");
        r.pair(1, 8, 3, true);
        r.pair(2, 8, 5, true);
        r.pair(3, 8, 0, false);
        r.irqs();
        r.run(1, Cmd::new(IO_FLUSH).nsid(1));
        assert_eq!(r.irqs(), [3]);
        r.run(2, Cmd::new(IO_FLUSH).nsid(1));
        assert_eq!(r.irqs(), [5]);
        r.run(3, Cmd::new(IO_FLUSH).nsid(1));
        assert_eq!(r.irqs(), Vec::<u32>::new(), "interrupts disabled on CQ 3");
        // Several commands in one doorbell: one interrupt.
        for _ in 0..3 {
            r.push(1, Cmd::new(IO_FLUSH).nsid(1));
        }
        r.ring(1);
        assert_eq!(r.irqs(), [3]);
        while r.pop(1).is_some() {}
        r.ack(1);
        assert!(r.irqs().is_empty(), "a head doorbell raises nothing");
        // Pin-based (MSI-X off): INTMS bit 0 holds interrupts back; INTMC with completions
        // still unread raises them.
        r.w32(REG_INTMS, 1);
        r.push(0, Cmd::new(ADMIN_KEEP_ALIVE));
        r.ring(0);
        assert!(r.irqs().is_empty());
        r.w32(REG_INTMC, 1);
        assert_eq!(r.irqs(), [0]);
        r.pop(0).unwrap();
        r.ack(0);
        r.w32(REG_INTMS, 1);
        r.w32(REG_INTMC, 1);
        assert!(r.irqs().is_empty(), "nothing unread");
        // With MSI-X enabled INTMS is not consulted.
        r.n.config_write((MSIX_CAP_OFFSET + 3) as u64, &[0x80]);
        r.w32(REG_INTMS, 1);
        r.admin(Cmd::new(ADMIN_KEEP_ALIVE));
        assert_eq!(r.irqs(), [0]);
        // No sink plugged in: nothing to call, nothing breaks.
        r.n.set_irq_sink(None);
        r.run(1, Cmd::new(IO_FLUSH).nsid(1));
    }

    #[test]
    fn bad_opcodes_queue_ids_sizes_and_vectors_are_refused() {
        let mut r = Rig::ready();
        for op in [0x03, 0x10, 0x80, 0xff] {
            assert_eq!(
                r.admin(Cmd::new(op)).status,
                STATUS_INVALID_OPCODE,
                "{op:#x}"
            );
        }
        let c = r.admin(Cmd::new(ADMIN_ABORT).dw(10, 5 | (1 << 16)));
        assert_eq!((c.status, c.dw0), (STATUS_SUCCESS, 1), "not aborted");
        assert_eq!(r.create_cq(0, 8, 1, true).status, STATUS_INVALID_QUEUE_ID);
        assert_eq!(r.create_cq(9, 8, 1, true).status, STATUS_INVALID_QUEUE_ID);
        assert_eq!(r.create_cq(1, 8, 9, true).status, STATUS_INVALID_VECTOR);
        assert_eq!(r.create_cq(1, 1, 1, true).status, STATUS_INVALID_QUEUE_SIZE);
        assert_eq!(
            r.create_cq(1, 1025, 1, true).status,
            STATUS_INVALID_QUEUE_SIZE
        );
        let no_pc = r.admin(
            Cmd::new(ADMIN_CREATE_CQ)
                .prp(cq_base(1), 0)
                .dw(10, 1 | (7 << 16))
                .dw(11, 2 | (1 << 16)),
        );
        assert_eq!(
            no_pc.status, STATUS_INVALID_FIELD,
            "physically contiguous only"
        );
        let unaligned = r.admin(
            Cmd::new(ADMIN_CREATE_CQ)
                .prp(cq_base(1) + 0x100, 0)
                .dw(10, 1 | (7 << 16))
                .dw(11, 3 | (1 << 16)),
        );
        assert_eq!(unaligned.status, STATUS_PRP_OFFSET_INVALID);
        assert_eq!(r.create_cq(1, 1024, 8, true).status, STATUS_SUCCESS);
        assert_eq!(
            r.create_cq(1, 8, 1, true).status,
            STATUS_INVALID_QUEUE_ID,
            "exists"
        );
        assert_eq!(r.create_sq(1, 8, 2).status, STATUS_CQ_INVALID);
        assert_eq!(
            r.create_sq(1, 8, 0).status,
            STATUS_CQ_INVALID,
            "not the admin CQ"
        );
        assert_eq!(r.create_sq(0, 8, 1).status, STATUS_INVALID_QUEUE_ID);
        assert_eq!(r.create_sq(1, 1025, 1).status, STATUS_INVALID_QUEUE_SIZE);
        let no_pc = r.admin(
            Cmd::new(ADMIN_CREATE_SQ)
                .prp(sq_base(1), 0)
                .dw(10, 1 | (7 << 16))
                .dw(11, 1 << 16),
        );
        assert_eq!(no_pc.status, STATUS_INVALID_FIELD);
        assert_eq!(r.create_sq(1, 8, 1).status, STATUS_SUCCESS);
        assert_eq!(
            r.create_sq(1, 8, 1).status,
            STATUS_INVALID_QUEUE_ID,
            "exists"
        );
        assert_eq!(
            r.create_sq(2, 8, 1).status,
            STATUS_SUCCESS,
            "two SQs on one CQ"
        );
        // I/O queues need the entry sizes set in CC.
        let mut r = Rig::ready();
        r.disable();
        r.w32(REG_CC, CC_EN);
        r.q[0].tail = 0;
        r.q[0].head = 0;
        r.q[0].phase = true;
        r.mem.put(ACQ, &[0; 256]);
        assert_eq!(r.create_cq(1, 8, 1, true).status, STATUS_INVALID_FIELD);
    }

    #[test]
    fn queue_deletion_rules() {
        let mut r = Rig::ready();
        r.pair(1, 8, 1, true);
        let del = |r: &mut Rig, op: u8, qid: u32| r.admin(Cmd::new(op).dw(10, qid)).status;
        assert_eq!(
            del(&mut r, ADMIN_DELETE_CQ, 1),
            STATUS_INVALID_QUEUE_DELETION
        );
        assert_eq!(del(&mut r, ADMIN_DELETE_SQ, 0), STATUS_INVALID_QUEUE_ID);
        assert_eq!(del(&mut r, ADMIN_DELETE_CQ, 0), STATUS_INVALID_QUEUE_ID);
        assert_eq!(del(&mut r, ADMIN_DELETE_SQ, 2), STATUS_INVALID_QUEUE_ID);
        assert_eq!(
            del(&mut r, ADMIN_DELETE_SQ, 0xffff),
            STATUS_INVALID_QUEUE_ID
        );
        assert_eq!(del(&mut r, ADMIN_DELETE_SQ, 1), STATUS_SUCCESS);
        assert_eq!(del(&mut r, ADMIN_DELETE_SQ, 1), STATUS_INVALID_QUEUE_ID);
        // Its doorbell is a bad doorbell now: no command runs.
        r.push(1, Cmd::new(IO_FLUSH).nsid(1));
        r.ring(1);
        assert!(r.pop(1).is_none());
        assert_eq!(del(&mut r, ADMIN_DELETE_CQ, 1), STATUS_SUCCESS);
        assert_eq!(del(&mut r, ADMIN_DELETE_CQ, 1), STATUS_INVALID_QUEUE_ID);
        // The ids can be used again.
        r.pair(1, 8, 2, true);
        assert_eq!(r.run(1, Cmd::new(IO_FLUSH).nsid(1)).status, STATUS_SUCCESS);
    }

    #[test]
    fn controller_reset_and_shutdown() {
        let mut r = Rig::ready();
        r.pair(1, 8, 1, true);
        let aer = r.push(0, Cmd::new(ADMIN_ASYNC_EVENT));
        r.ring(0);
        assert!(r.pop(0).is_none(), "the request is held");
        assert_eq!(r.n.aers.len(), 1);
        r.set_feature(FEAT_VOLATILE_WRITE_CACHE, 0);
        // CC.EN 1 -> 0: not ready, queues, requests and features gone.
        r.disable();
        assert_eq!(r.csts(), 0);
        assert!(r.n.aers.is_empty());
        r.push(1, Cmd::new(IO_FLUSH).nsid(1));
        r.ring(1);
        assert!(r.pop(1).is_none(), "doorbells do nothing while disabled");
        r.enable();
        assert_eq!(
            r.create_sq(1, 8, 1).status,
            STATUS_CQ_INVALID,
            "CQ 1 is gone"
        );
        assert_eq!(r.get_feature(FEAT_VOLATILE_WRITE_CACHE, 0, 0).dw0, 1);
        let _ = aer;
        // Normal shutdown completes at once; nothing runs until the next reset.
        let cc = r.r32(REG_CC);
        r.w32(REG_CC, cc | (1 << CC_SHN_SHIFT));
        assert_eq!(r.csts() & CSTS_SHST_MASK, CSTS_SHST_COMPLETE);
        assert_eq!(r.csts() & CSTS_RDY, CSTS_RDY);
        r.push(0, Cmd::new(ADMIN_KEEP_ALIVE));
        r.ring(0);
        assert!(r.pop(0).is_none());
        // Linux's resume: clear SHN and EN, enable again.
        r.w32(REG_CC, cc & !CC_EN);
        assert_eq!(r.csts(), 0);
        r.enable();
        assert_eq!(r.admin(Cmd::new(ADMIN_KEEP_ALIVE)).status, STATUS_SUCCESS);
        // Abrupt shutdown is reported the same way.
        r.w32(REG_CC, cc | (2 << CC_SHN_SHIFT));
        assert_eq!(r.csts() & CSTS_SHST_MASK, CSTS_SHST_COMPLETE);
    }

    #[test]
    fn function_reset_keeps_the_data() {
        let mut r = Rig::ready();
        r.pair(1, 8, 1, true);
        let data = pattern(4096, 5);
        r.mem.put(DATA, &data);
        assert_eq!(r.rw(1, IO_WRITE, 77, 8, DATA, 0), STATUS_SUCCESS);
        r.n.config_write(4, &[0x06, 0]);
        r.n.reset();
        assert_eq!(r.csts(), 0);
        assert_eq!(r.r32(REG_CC), 0);
        assert_eq!(r.r32(REG_AQA), 0);
        assert_eq!(le16(r.n.config(), 4), 0, "command register");
        r.enable();
        r.pair(1, 8, 1, true);
        assert_eq!(r.rw(1, IO_READ, 77, 8, DATA2, 0), STATUS_SUCCESS);
        assert_eq!(r.mem.get(DATA2, 4096), data);
        r.irqs();
        r.run(1, Cmd::new(IO_FLUSH).nsid(1));
        assert_eq!(r.irqs(), [1], "the sink stays plugged in");
    }

    fn temp_path(tag: &str) -> std::path::PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        std::env::temp_dir().join(format!(
            "uiommu-nvme-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    #[test]
    fn file_storage_round_trip() {
        let path = temp_path("rt");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut r = Rig::with(Storage::File {
            file,
            size: 1 << 20,
        });
        r.enable();
        r.pair(1, 8, 1, true);
        assert_eq!(r.identify(CNS_NAMESPACE, 1).1[..8], 2048u64.to_le_bytes());
        // Past the file's end: zeroes.
        r.mem.put(DATA2, &[0xee; 4096]);
        assert_eq!(r.rw(1, IO_READ, 2000, 8, DATA2, 0), STATUS_SUCCESS);
        assert_eq!(r.mem.get(DATA2, 4096), vec![0; 4096]);
        let data = pattern(0x3000, 11);
        r.mem.put(DATA, &data);
        r.mem.put_u64s(LIST, &[DATA + 0x1000, DATA + 0x2000]);
        assert_eq!(r.rw(1, IO_WRITE, 8, 24, DATA, LIST), STATUS_SUCCESS);
        assert_eq!(r.run(1, Cmd::new(IO_FLUSH).nsid(1)).status, STATUS_SUCCESS);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[4096..4096 + 0x3000], &data[..]);
        assert_eq!(r.rw(1, IO_READ, 8, 24, DATA2, LIST), STATUS_SUCCESS);
        assert_eq!(r.mem.get(DATA2, 0x1000), data[..0x1000]);
        assert_eq!(r.mem.get(DATA + 0x1000, 0x2000), data[0x1000..]);
        // Write zeroes and deallocate read back as zero.
        let wz = Cmd::new(IO_WRITE_ZEROES).nsid(1).dw(10, 9).dw(12, 1);
        assert_eq!(r.run(1, wz).status, STATUS_SUCCESS);
        assert_eq!(r.rw(1, IO_READ, 8, 4, DATA2, 0), STATUS_SUCCESS);
        let got = r.mem.get(DATA2, 2048);
        assert_eq!(&got[..512], &data[..512]);
        assert!(got[512..1536].iter().all(|&b| b == 0));
        assert_eq!(&got[1536..], &data[1536..2048]);
        // FUA writes go to the file as well.
        let fua = Cmd::new(IO_WRITE)
            .nsid(1)
            .prp(DATA, 0)
            .dw(10, 100)
            .dw(12, 1 << 30);
        assert_eq!(r.run(1, fua).status, STATUS_SUCCESS);
        assert_eq!(&std::fs::read(&path).unwrap()[51200..51712], &data[..512]);
        drop(r);
        // A file the controller cannot write: writes fail with a media error, reads work.
        let ro = std::fs::File::open(&path).unwrap();
        let mut r = Rig::with(Storage::File {
            file: ro,
            size: 1 << 20,
        });
        r.enable();
        r.pair(1, 8, 1, true);
        assert_eq!(r.rw(1, IO_WRITE, 0, 8, DATA, 0), STATUS_WRITE_FAULT);
        assert_eq!(r.rw(1, IO_READ, 8, 1, DATA2, 0), STATUS_SUCCESS);
        assert_eq!(r.mem.get(DATA2, 512), data[..512]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn write_zeroes_and_deallocate_zero_the_blocks_and_free_memory() {
        let mut r = Rig::ready();
        r.pair(1, 8, 1, true);
        let Store::Memory(ref m) = r.n.store else {
            panic!()
        };
        assert!(m.chunks.is_empty(), "nothing allocated up front");
        let data = pattern(MAX_TRANSFER, 4);
        r.mem.put(DATA, &data);
        r.mem.put_u64s(
            LIST,
            &(1..128).map(|i| DATA + 0x1000 * i).collect::<Vec<_>>(),
        );
        for i in 0..4 {
            assert_eq!(
                r.rw(1, IO_WRITE, 1024 * i, 1024, DATA, LIST),
                STATUS_SUCCESS
            );
        }
        let chunks = |r: &Rig| match &r.n.store {
            Store::Memory(m) => m.chunks.len(),
            Store::File(_) => 0,
        };
        assert_eq!(chunks(&r), 32, "2 MiB in 64 KiB chunks");
        // Write Zeroes of LBAs 1..=2: a part of the first chunk.
        let wz = Cmd::new(IO_WRITE_ZEROES).nsid(1).dw(10, 1).dw(12, 1);
        assert_eq!(r.run(1, wz).status, STATUS_SUCCESS);
        // Deallocate [128, 128 + 1024) (frees chunks 1..=8) and [3000, 3001) (part of 23).
        let ranges = [(0u32, 1024u32, 128u64), (0, 1, 3000), (0, 0, 99)];
        let mut raw = Vec::new();
        for (attr, nlb, slba) in ranges {
            raw.extend(attr.to_le_bytes());
            raw.extend(nlb.to_le_bytes());
            raw.extend(slba.to_le_bytes());
        }
        r.mem.put(DATA2, &raw);
        let dsm = Cmd::new(IO_DATASET_MANAGEMENT)
            .nsid(1)
            .prp(DATA2, 0)
            .dw(10, 2)
            .dw(11, 1 << 2);
        assert_eq!(r.run(1, dsm).status, STATUS_SUCCESS);
        assert_eq!(chunks(&r), 32 - 8);
        assert_eq!(r.rw(1, IO_READ, 0, 8, DATA2, 0), STATUS_SUCCESS);
        let got = r.mem.get(DATA2, 4096);
        assert_eq!(&got[..512], &data[..512]);
        assert!(got[512..1536].iter().all(|&b| b == 0));
        assert_eq!(&got[1536..], &data[1536..4096]);
        let mut back = vec![0u8; 512];
        r.n.store.read(3000 * 512, &mut back).unwrap();
        assert_eq!(back, vec![0; 512]);
        r.n.store.read(3001 * 512, &mut back).unwrap();
        assert_eq!(back, data[(3001 - 2048) * 512..][..512]);
        r.n.store.read(128 * 512, &mut back).unwrap();
        assert_eq!(back, vec![0; 512]);
        r.n.store.read(1152 * 512, &mut back).unwrap();
        assert_eq!(back, data[128 * 512..129 * 512]);
        // Ranges are checked before anything is zeroed; hints alone do nothing.
        let blocks = NS_SIZE / 512;
        r.mem.put(DATA2, &[0u8; 16]);
        r.mem.put(DATA2 + 4, &2u32.to_le_bytes());
        r.mem.put(DATA2 + 8, &(blocks - 1).to_le_bytes());
        let dsm = Cmd::new(IO_DATASET_MANAGEMENT)
            .nsid(1)
            .prp(DATA2, 0)
            .dw(11, 1 << 2);
        assert_eq!(r.run(1, dsm).status, STATUS_LBA_OUT_OF_RANGE);
        let hint = Cmd::new(IO_DATASET_MANAGEMENT)
            .nsid(1)
            .prp(DATA2, 0)
            .dw(11, 1);
        assert_eq!(r.run(1, hint).status, STATUS_SUCCESS);
        let wz = Cmd::new(IO_WRITE_ZEROES)
            .nsid(1)
            .dw(10, (blocks - 1) as u32)
            .dw(12, 1);
        assert_eq!(r.run(1, wz).status, STATUS_LBA_OUT_OF_RANGE);
        // A 32 MiB Write Zeroes (no MDTS limit) over the whole namespace frees everything.
        let mut big = Rig::with(Storage::Memory { size: 256 << 20 });
        big.enable();
        big.pair(1, 8, 1, true);
        big.mem.put(DATA, &data[..4096]);
        assert_eq!(big.rw(1, IO_WRITE, 65535, 8, DATA, 0), STATUS_SUCCESS);
        assert_eq!(chunks(&big), 2);
        let wz = Cmd::new(IO_WRITE_ZEROES).nsid(1).dw(12, 0xffff);
        assert_eq!(big.run(1, wz).status, STATUS_SUCCESS);
        assert_eq!(chunks(&big), 1, "the chunk past the range stays");
    }

    #[test]
    fn async_events_are_held_limited_and_masked_until_their_log_is_read() {
        let mut r = Rig::ready();
        let aers: Vec<u16> = (0..=AERL)
            .map(|_| r.push(0, Cmd::new(ADMIN_ASYNC_EVENT)))
            .collect();
        r.ring(0);
        assert!(r.pop(0).is_none(), "held");
        let c = r.admin(Cmd::new(ADMIN_ASYNC_EVENT));
        assert_eq!(c.status, STATUS_AER_LIMIT_EXCEEDED);
        // A write to the doorbell of a queue that does not exist: an error event.
        r.irqs();
        r.w32(DOORBELLS + 8 * 5, 1);
        let c = r.pop(0).expect("an event");
        r.ack(0);
        assert_eq!((c.cid, c.status), (aers[0], STATUS_SUCCESS));
        let dw0 = u32::from(AEN_TYPE_ERROR)
            | (u32::from(AEN_INVALID_DOORBELL_REGISTER) << 8)
            | (u32::from(LOG_ERROR) << 16);
        assert_eq!(c.dw0, dw0);
        assert_eq!(r.irqs(), [0]);
        // The next error waits until the error log is read without RAE.
        r.w32(DOORBELLS, 1000);
        assert!(r.pop(0).is_none());
        let (status, log) = r.get_log(LOG_ERROR, 256, 0, true);
        assert_eq!(status, STATUS_SUCCESS);
        assert!(log.iter().all(|&b| b == 0));
        assert!(r.pop(0).is_none(), "RAE keeps it masked");
        assert_eq!(r.get_log(LOG_ERROR, 64, 0, false).0, STATUS_SUCCESS);
        let c = r.pop(0).expect("the waiting event");
        r.ack(0);
        assert_eq!(c.cid, aers[1]);
        assert_eq!((c.dw0 >> 8) & 0xff, u32::from(AEN_INVALID_DOORBELL_VALUE));
        // A temperature threshold under the composite temperature: a SMART event, if enabled.
        assert_eq!(
            r.set_feature(FEAT_ASYNC_EVENT_CONFIG, 0x2).status,
            STATUS_SUCCESS
        );
        let c = r.set_feature(FEAT_TEMPERATURE_THRESHOLD, u32::from(TEMPERATURE - 10));
        assert_eq!(c.status, STATUS_SUCCESS);
        let c = r.pop(0).expect("a SMART event");
        r.ack(0);
        assert_eq!(c.cid, aers[2]);
        assert_eq!(c.dw0, 1 | (1 << 8) | (2 << 16));
        let (_, smart) = r.get_log(LOG_SMART, 512, 0, false);
        assert_eq!(smart[0], CRITICAL_TEMPERATURE);
        // A controller reset drops the last request.
        assert_eq!(r.n.aers.len(), 1);
        r.disable();
        r.enable();
        assert!(r.n.aers.is_empty());
    }

    #[test]
    fn log_pages() {
        let mut r = Rig::ready();
        r.pair(1, 8, 1, true);
        r.mem.put(DATA, &pattern(4096, 0));
        r.rw(1, IO_WRITE, 0, 8, DATA, 0);
        r.rw(1, IO_READ, 0, 8, DATA, 0);
        r.rw(1, IO_READ, 0, 8, DATA, 0);
        let (status, smart) = r.get_log(LOG_SMART, 512, 0, false);
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(smart[0], 0, "no critical warning");
        assert_eq!(le16(&smart, 1), TEMPERATURE);
        assert_eq!((smart[3], smart[4], smart[5]), (100, 10, 0));
        assert_eq!(
            le64(&smart, 32),
            1,
            "data units read (1000 blocks, rounded up)"
        );
        assert_eq!(le64(&smart, 48), 1);
        assert_eq!(le64(&smart, 64), 2, "read commands");
        assert_eq!(le64(&smart, 80), 1, "write commands");
        let (status, fw) = r.get_log(LOG_FIRMWARE_SLOT, 512, 0, false);
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(fw[0], 1);
        assert_eq!(&fw[8..16], b"1.0     ");
        // An offset, and a length past the end (only the log is transferred).
        let (status, part) = r.get_log(LOG_SMART, 1024, 1, false);
        assert_eq!(status, STATUS_INVALID_FIELD, "offset not dword-aligned");
        let _ = part;
        let (status, part) = r.get_log(LOG_SMART, 1024, 508, false);
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(&part[..4], &smart[508..512]);
        assert_eq!(&part[4..8], &[0xee; 4]);
        assert_eq!(r.get_log(LOG_SMART, 4, 512, false).0, STATUS_INVALID_FIELD);
        assert_eq!(
            r.get_log(LOG_SMART, 4, 1 << 40, false).0,
            STATUS_INVALID_FIELD
        );
        for lid in [0x00, 0x04, 0x05, 0x06, 0x80, 0xff] {
            assert_eq!(
                r.get_log(lid, 512, 0, false).0,
                STATUS_INVALID_LOG_PAGE,
                "{lid:#x}"
            );
        }
        // NUMDU makes it longer than MDTS.
        let c = r.admin(
            Cmd::new(ADMIN_GET_LOG_PAGE)
                .prp(IDENT, 0)
                .dw(10, u32::from(LOG_SMART) | (0xffff << 16))
                .dw(11, 0xffff),
        );
        assert_eq!(c.status, STATUS_INVALID_FIELD);
    }

    #[test]
    fn features_read_back_and_are_checked() {
        let mut r = Rig::ready();
        let get = |r: &mut Rig, fid: u8, v: u32| {
            let c = r.get_feature(fid, 0, v);
            assert_eq!(c.status, STATUS_SUCCESS, "get {fid:#x}");
            c.dw0
        };
        assert_eq!(get(&mut r, FEAT_VOLATILE_WRITE_CACHE, 0), 1);
        assert_eq!(
            get(&mut r, FEAT_TEMPERATURE_THRESHOLD, 0),
            u32::from(WCTEMP)
        );
        assert_eq!(get(&mut r, FEAT_TEMPERATURE_THRESHOLD, 1 << 20), 0, "under");
        for (fid, v) in [
            (FEAT_ARBITRATION, 0x0102_0303),
            (FEAT_POWER_MANAGEMENT, 0x20),
            (FEAT_ERROR_RECOVERY, 100),
            (FEAT_VOLATILE_WRITE_CACHE, 0),
            (FEAT_INTERRUPT_COALESCING, 0x0a05),
            (FEAT_WRITE_ATOMICITY, 1),
            (FEAT_ASYNC_EVENT_CONFIG, 0x1f),
        ] {
            assert_eq!(r.set_feature(fid, v).status, STATUS_SUCCESS, "set {fid:#x}");
            assert_eq!(get(&mut r, fid, 0), v, "{fid:#x}");
        }
        assert_eq!(
            r.set_feature(FEAT_TEMPERATURE_THRESHOLD, 350 | (1 << 20))
                .status,
            STATUS_SUCCESS
        );
        assert_eq!(get(&mut r, FEAT_TEMPERATURE_THRESHOLD, 1 << 20), 350);
        assert_eq!(
            r.set_feature(FEAT_INTERRUPT_VECTOR_CONFIG, 4 | (1 << 16))
                .status,
            STATUS_SUCCESS
        );
        assert_eq!(get(&mut r, FEAT_INTERRUPT_VECTOR_CONFIG, 4), 4 | (1 << 16));
        assert_eq!(get(&mut r, FEAT_INTERRUPT_VECTOR_CONFIG, 3), 3);
        // Refusals.
        for (fid, v) in [
            (FEAT_POWER_MANAGEMENT, 1),
            (FEAT_TEMPERATURE_THRESHOLD, 300 | (1 << 16)),
            (FEAT_TEMPERATURE_THRESHOLD, 300 | (2 << 20)),
            (FEAT_ERROR_RECOVERY, 1 << 16),
            (FEAT_INTERRUPT_VECTOR_CONFIG, 9),
            (0x03, 0),
            (0x0c, 0),
            (0x0f, 0),
            (0x80, 0),
            (0x00, 0),
        ] {
            assert_eq!(
                r.set_feature(fid, v).status,
                STATUS_INVALID_FIELD,
                "{fid:#x} {v:#x}"
            );
        }
        let c = r.admin(
            Cmd::new(ADMIN_SET_FEATURES)
                .dw(10, u32::from(FEAT_VOLATILE_WRITE_CACHE) | (1 << 31))
                .dw(11, 1),
        );
        assert_eq!(c.status, STATUS_FEATURE_NOT_SAVEABLE);
        assert_eq!(r.get_feature(0x0c, 0, 0).status, STATUS_INVALID_FIELD);
        assert_eq!(
            r.get_feature(FEAT_INTERRUPT_VECTOR_CONFIG, 0, 9).status,
            STATUS_INVALID_FIELD
        );
        // Default, saved and supported-capability selections.
        assert_eq!(r.get_feature(FEAT_VOLATILE_WRITE_CACHE, 1, 0).dw0, 1);
        assert_eq!(r.get_feature(FEAT_VOLATILE_WRITE_CACHE, 2, 0).dw0, 1);
        assert_eq!(r.get_feature(FEAT_VOLATILE_WRITE_CACHE, 3, 0).dw0, 1 << 2);
        assert_eq!(
            r.get_feature(FEAT_VOLATILE_WRITE_CACHE, 4, 0).status,
            STATUS_INVALID_FIELD
        );
    }

    #[test]
    fn model_options_are_checked_and_build_a_controller() {
        let table = |s: &str| s.parse::<toml::Table>().unwrap();
        assert!(check_options(&table("")).is_ok());
        assert!(check_options(&table("size = 1048576\nserial = \"abc\"")).is_ok());
        assert!(check_options(&table("dma_fault_lba = 16384")).is_ok());
        for bad in [
            "size = 1000",
            "size = -512",
            "size = \"1M\"",
            "size = 0",
            "file = \"\"",
            "file = 3",
            "serial = \"\"",
            "serial = \"a b\"",
            "serial = \"123456789012345678901\"",
            "dma_fault_lba = -1",
            "dma_fault_lba = \"7\"",
            "color = \"red\"",
        ] {
            assert!(check_options(&table(bad)).is_err(), "{bad}");
        }
        let dir = temp_path("model");
        std::fs::create_dir_all(&dir).unwrap();
        let build = |options: &toml::Table| {
            (MODEL.build)(&ModelConfig {
                vendor: 0x1b36,
                device: 0x0010,
                class: DEFAULT_CLASS,
                multifunction: false,
                options,
                base_dir: Some(&dir),
            })
        };
        let m = build(&table("size = 1048576\nserial = \"SN1\"")).unwrap();
        assert_eq!(m.irq_count(), IRQ_COUNT);
        assert!(format!("{m:?}").contains("SN1"));
        assert!(
            build(&table("file = \"missing.img\"")).is_err(),
            "not created without size"
        );
        assert!(build(&table("file = \"disk.img\"\nsize = 1048576")).is_ok());
        assert!(dir.join("disk.img").exists());
        assert!(build(&table("file = \"disk.img\"")).is_ok(), "exists now");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(MODEL.name, "nvme");
        assert_eq!(MODEL.ids, (DEFAULT_VENDOR, DEFAULT_DEVICE, DEFAULT_CLASS));
    }

    #[test]
    fn linux_probe_io_and_shutdown_sequence() {
        let mut r = Rig::new();
        // nvme_pci_enable / nvme_pci_configure_admin_queue / nvme_enable_ctrl.
        assert_ne!(r.csts(), u32::MAX);
        let cap = u64::from(r.r32(REG_CAP)) | (u64::from(r.r32(REG_CAP + 4)) << 32);
        let depth = ((cap & 0xffff) + 1).min(1024);
        assert_eq!(depth, 1024);
        assert_eq!(r.r32(REG_CMBSZ), 0);
        r.w32(REG_CC, 0); // nvme_disable_ctrl
        assert_eq!(r.csts() & CSTS_RDY, 0);
        r.enable();
        // nvme_init_ctrl_finish: VS, Identify, CNS 6, hwmon, queue count, AEN.
        assert!(r.r32(REG_VS) >= 0x0001_0400);
        assert_eq!(r.identify(CNS_CONTROLLER, 0).0, STATUS_SUCCESS);
        let cs = r.admin(
            Cmd::new(ADMIN_IDENTIFY)
                .prp(IDENT, 0)
                .dw(10, u32::from(CNS_CS_CONTROLLER)),
        );
        assert_eq!(cs.status, STATUS_SUCCESS);
        assert_eq!(r.get_log(LOG_SMART, 512, 0, false).0, STATUS_SUCCESS);
        for under in [0, 1u32 << 20] {
            let c = r.get_feature(FEAT_TEMPERATURE_THRESHOLD, 0, under);
            assert_eq!(c.status, STATUS_SUCCESS);
        }
        let c = r.set_feature(FEAT_NUMBER_OF_QUEUES, 15 | (15 << 16)); // 16 CPUs
        let nr = (c.dw0 & 0xffff).min(c.dw0 >> 16) + 1;
        assert_eq!(nr, 8);
        let aer = r.push(0, Cmd::new(ADMIN_ASYNC_EVENT));
        r.ring(0);
        assert!(r.pop(0).is_none());
        // nvme_create_io_queues: CQ on vector qid, then SQ, for each queue.
        for qid in 1..=nr as usize {
            r.pair(qid, 1024, qid as u16, true);
        }
        assert_eq!(r.create_cq(9, 16, 0, true).status, STATUS_INVALID_QUEUE_ID);
        // nvme_scan_work: the namespace list, descriptors, Identify Namespace, firmware log.
        assert_eq!(
            r.identify(CNS_ACTIVE_NAMESPACES, 0).1[..8],
            [1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(r.identify(CNS_NS_DESCRIPTORS, 1).0, STATUS_SUCCESS);
        assert_eq!(r.identify(CNS_NAMESPACE, 1).0, STATUS_SUCCESS);
        assert_eq!(
            r.get_log(LOG_FIRMWARE_SLOT, 512, 0, false).0,
            STATUS_SUCCESS
        );
        // I/O on every queue, each completing on its own vector.
        r.irqs();
        for qid in 1..=nr as usize {
            let data = pattern(4096, qid as u8);
            r.mem.put(DATA, &data);
            assert_eq!(
                r.rw(qid, IO_WRITE, 8 * qid as u64, 8, DATA, 0),
                STATUS_SUCCESS
            );
            assert_eq!(
                r.rw(qid, IO_READ, 8 * qid as u64, 8, DATA2, 0),
                STATUS_SUCCESS
            );
            assert_eq!(r.mem.get(DATA2, 4096), data);
            assert_eq!(
                r.run(qid, Cmd::new(IO_FLUSH).nsid(1)).status,
                STATUS_SUCCESS
            );
        }
        let expected: Vec<u32> = (1..=nr).flat_map(|v| [v, v, v]).collect();
        assert_eq!(r.irqs(), expected);
        // nvme_dev_disable(shutdown): delete the SQs, then the CQs, then CC.SHN.
        for qid in 1..=nr {
            let c = r.admin(Cmd::new(ADMIN_DELETE_SQ).dw(10, qid));
            assert_eq!(c.status, STATUS_SUCCESS);
        }
        for qid in 1..=nr {
            let c = r.admin(Cmd::new(ADMIN_DELETE_CQ).dw(10, qid));
            assert_eq!(c.status, STATUS_SUCCESS);
        }
        let cc = r.r32(REG_CC);
        r.w32(REG_CC, cc | (1 << CC_SHN_SHIFT));
        assert_eq!(r.csts() & CSTS_SHST_MASK, CSTS_SHST_COMPLETE);
        assert_eq!(r.n.aers.iter().copied().collect::<Vec<_>>(), [aer]);
        assert!(r.mem.faults.is_empty());
    }

    #[test]
    fn arbitrary_traffic_never_panics_and_accesses_stay_bounded() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        use std::cell::Cell;
        // A fixed seed: the totals asserted at the end must not depend on luck.
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 128,
                ..Default::default()
            },
            TestRng::deterministic_rng(RngAlgorithm::ChaCha),
        );
        let offset = prop_oneof![
            0u64..0x60,
            DOORBELLS..DOORBELLS + 0x50,
            MSIX_TABLE..MSIX_TABLE + 0xa0,
            any::<u64>()
        ];
        let opcode = prop_oneof![
            3 => prop::sample::select(vec![IO_FLUSH, IO_WRITE, IO_READ, IO_WRITE_ZEROES, IO_DATASET_MANAGEMENT]),
            2 => 0u8..0x0d,
            1 => Just(ADMIN_KEEP_ALIVE),
            1 => Just(ADMIN_DOORBELL_BUFFER_CONFIG),
            1 => any::<u8>(),
        ];
        let sqe = (
            0usize..3,
            opcode,
            prop::bool::weighted(0.75),
            prop::array::uniform16(any::<u32>()),
            0u32..16,
        );
        // Faults where they matter: the queues, the data buffers, the PRP lists.
        let fault_at = prop_oneof![
            (0u64..6).prop_map(|i| [ASQ, ACQ, sq_base(1), cq_base(1), DATA, 0][i as usize]),
            0u64..MEM as u64
        ];
        let op = prop_oneof![
            4 => (
                any::<bool>(),
                0u8..2,
                offset.clone(),
                prop::collection::vec(any::<u8>(), 0..10)
            )
                .prop_map(|(w, bar, off, data)| (0u8, w, bar, off, data, None)),
            2 => (offset, prop::collection::vec(any::<u8>(), 0..10))
                .prop_map(|(off, data)| (1u8, true, 0, off % 0x1100, data, None)),
            8 => sqe.prop_map(|s| (2u8, true, 0, 0, Vec::new(), Some(s))),
            1 => (fault_at, 0u64..0x2000)
                .prop_map(|(at, len)| (3u8, true, 0, at, len.to_le_bytes().to_vec(), None)),
            1 => Just((4u8, true, 0, 0, Vec::new(), None)),
        ];
        // Totals over all cases: reads/writes done, completion queue tails (entries posted, less
        // wraps), DMA faults.
        let (io_done, completions, faults) = (Cell::new(0u64), Cell::new(0usize), Cell::new(0));
        let up = |r: &mut Rig| {
            r.mem.faulty = None;
            r.n.reset();
            r.enable();
            r.pair(1, 16, 1, true);
            r.pair(2, 4, 2, false);
        };
        runner
            .run(&prop::collection::vec(op, 0..48), |ops| {
                let mut r = Rig::with(Storage::Memory { size: 1 << 20 });
                up(&mut r);
                for (kind, write, bar, off, data, sqe) in ops {
                    match (kind, sqe) {
                        (0, _) if write => r.n.mmio_write(bar, off, &data, &mut r.mem),
                        (0, _) => {
                            let mut buf = data.clone();
                            r.n.mmio_read(bar, off, &mut buf);
                            prop_assert_eq!(buf.len(), data.len());
                        }
                        (1, _) => r.n.config_write(off, &data),
                        (2, Some((qid, opcode, plausible, mut dw, slot))) => {
                            dw[0] = (dw[0] & !0xff) | u32::from(opcode);
                            if plausible {
                                // PRPs, not fused; namespace 1; inside the namespace; short.
                                dw[0] &= !0xc300;
                                dw[1] = 1;
                                dw[10] %= 2048;
                                dw[11] = 0;
                                dw[12] &= 0xffff_00ff;
                                dw[6] = (dw[6] % MEM as u32) & !3;
                                dw[8] = (dw[8] % MEM as u32) & !7;
                                if dw[13] & 1 != 0 {
                                    dw[8] &= !0xfff;
                                }
                                dw[7] = 0;
                                dw[9] = 0;
                            }
                            // Mostly as a driver does (at the tail, ring, reap, acknowledge);
                            // sometimes at an arbitrary slot with arbitrary doorbells.
                            let q = r.q[qid];
                            let at = if slot < 12 { q.tail } else { slot % q.sq_size };
                            let bytes: Vec<u8> = dw.iter().flat_map(|w| w.to_le_bytes()).collect();
                            r.mem.put(q.sq + 64 * u64::from(at), &bytes);
                            r.q[qid].tail = (at + 1) % q.sq_size;
                            r.ring(qid);
                            if slot < 12 {
                                for _ in 0..q.cq_size {
                                    if r.pop(qid).is_none() {
                                        break;
                                    }
                                }
                                r.ack(qid);
                            } else {
                                r.w32(DOORBELLS + 8 * qid as u64 + 4, slot % q.cq_size);
                            }
                        }
                        (3, _) => {
                            let len = u64::from_le_bytes(data.try_into().unwrap_or([0; 8]));
                            r.mem.faulty = (len != 0).then_some((off, off + len));
                        }
                        (4, _) => up(&mut r),
                        _ => {}
                    }
                    prop_assert!(r.mem.largest <= MAX_TRANSFER);
                    if let Store::Memory(m) = &r.n.store {
                        prop_assert!(m.chunks.len() <= 16, "a 1 MiB namespace");
                    }
                    r.sync();
                    // A driver resets a controller that failed, shut down or lost its queues.
                    let n = &r.n;
                    if !n.running() || (1..3).any(|q| n.sq(q).is_none() || n.cq(q).is_none()) {
                        completions.set(
                            completions.get()
                                + n.cqs
                                    .iter()
                                    .flatten()
                                    .map(|c| c.tail as usize)
                                    .sum::<usize>(),
                        );
                        up(&mut r);
                    }
                }
                completions.set(
                    completions.get()
                        + r.n
                            .cqs
                            .iter()
                            .flatten()
                            .map(|c| c.tail as usize)
                            .sum::<usize>(),
                );
                let s = &r.n.stats;
                io_done.set(io_done.get() + s.read_commands + s.write_commands);
                faults.set(faults.get() + r.mem.faults.len());
                Ok(())
            })
            .unwrap();
        assert!(
            io_done.get() > 60,
            "reads and writes ran: {}",
            io_done.get()
        );
        assert!(
            completions.get() > 500,
            "completions: {}",
            completions.get()
        );
        assert!(faults.get() > 20, "faults: {}", faults.get());
    }
}
