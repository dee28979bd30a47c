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

use super::{only_keys, BarInfo, DeviceModel, DmaPort, IrqSink, ModelConfig, ModelType};
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
/// Admin opcode: Doorbell Buffer Config (not supported: Invalid Command Opcode).
pub const ADMIN_DOORBELL_BUFFER_CONFIG: u8 = 0x7c;

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
/// set: all limits 0, "none beyond MDTS"). Linux asks for it on 1.4 controllers.
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

fn check_options(options: &toml::Table) -> Result<(), String> {
    only_keys(options, &["size", "file", "serial"])?;
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
            for s in 0..QUEUES {
                if self.sq(s).is_some_and(|q| usize::from(q.cqid) == qid) {
                    self.process_sq(s, dma);
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
            ADMIN_CREATE_SQ => self.create_sq(sqe),
            ADMIN_GET_LOG_PAGE => self.get_log_page(sqe, dma),
            ADMIN_DELETE_CQ => self.delete_cq(sqe),
            ADMIN_CREATE_CQ => self.create_cq(sqe),
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
            _ => Err(STATUS_INVALID_OPCODE),
        };
        complete(r)
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
        b.u16(256, 0); // OACS: no optional admin commands
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
        let runs = prp_runs(dma, sqe.prp1(), sqe.prp2(), bytes as usize)?;
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
        for (i, &b) in data.iter().enumerate() {
            let Some(off) = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
            else {
                break;
            };
            let (Some(slot), Some(&mask)) = (self.config.get_mut(off), self.wmask.get(off)) else {
                break;
            };
            *slot = (*slot & !mask) | (b & mask);
            if off == PCIE_CAP_OFFSET + 9 && b & PCIE_DEVCTL_FLR != 0 {
                flr = true;
            }
        }
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
        let lo = self.read_dword(offset);
        if buf.len() == 8 {
            let hi = self.read_dword(offset + 4);
            buf.copy_from_slice(&(u64::from(lo) | (u64::from(hi) << 32)).to_le_bytes());
        } else {
            buf.copy_from_slice(&lo.to_le_bytes());
        }
    }

    fn mmio_write(&mut self, bar: u8, offset: u64, data: &[u8], dma: &mut dyn DmaPort) {
        if !Self::decodes(bar, offset, data.len()) {
            return;
        }
        let dword = |d: &[u8]| -> u32 {
            let mut b = [0u8; 4];
            b.copy_from_slice(d);
            u32::from_le_bytes(b)
        };
        match (data.get(0..4), data.get(4..8)) {
            (Some(lo), Some(hi)) => {
                self.write_dword(offset, dword(lo), dma);
                self.write_dword(offset + 4, dword(hi), dma);
            }
            (Some(lo), None) => self.write_dword(offset, dword(lo), dma),
            _ => {}
        }
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
