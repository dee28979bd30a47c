//! The VFIO uAPI of Linux 6.12 (`include/uapi/linux/vfio.h`): ioctl numbers, flags, region and
//! interrupt indexes, and the argument structs.
//!
//! Written from the header's layout, not copied from it. Every struct is `#[repr(C)]` with the
//! kernel's field order and natural alignment, checked at compile time (size and the offset of
//! each field that follows a possible hole) and against the `vfio-bindings` crate in the unit
//! tests. Structs derive `zerocopy` traits, so the decoder reads and writes them as bytes without
//! pointer casts. A C flexible array member (`data[]`, `areas[]`, ...) is not a field: the
//! struct here is the fixed header, and the trailing elements follow it in user memory.
//!
//! All VFIO ioctls are `_IO(';', 100 + n)`: no size or direction is encoded, so a handler reads
//! `argsz` to learn how big the caller's struct is. Numbers of different file kinds collide
//! (container `VFIO_IOMMU_GET_INFO` = device `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`): dispatch on
//! the kind of file first.
//!
//! The legacy container and group interface (`/dev/vfio/vfio`, `/dev/vfio/$GROUP`) is defined
//! here for the front-end and later handlers; only the device cdev (`/dev/vfio/devices/vfioN`,
//! [`crate::vfio_device`]) is implemented now.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The ioctl type letter of VFIO (`';'`).
pub const VFIO_TYPE: u32 = b';' as u32;
/// The first VFIO ioctl number.
pub const VFIO_BASE: u32 = 100;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: direction and size bits are zero for every VFIO ioctl.
pub const fn vfio_io(n: u32) -> u32 {
    (VFIO_TYPE << 8) | (VFIO_BASE + n)
}

/// The VFIO API version `VFIO_GET_API_VERSION` returns.
pub const VFIO_API_VERSION: u32 = 0;

// ---------------------------------------------------------------------------------------------
// Extensions (VFIO_CHECK_EXTENSION arguments) and IOMMU types (VFIO_SET_IOMMU arguments).

/// The type1 IOMMU model.
pub const VFIO_TYPE1_IOMMU: u32 = 1;
/// The POWER sPAPR TCE IOMMU model.
pub const VFIO_SPAPR_TCE_IOMMU: u32 = 2;
/// The type1 IOMMU model, version 2 (unmap semantics of whole mappings).
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;
/// Extension: the IOMMU enforces DMA cache coherency.
pub const VFIO_DMA_CC_IOMMU: u32 = 4;
/// Extension: POWER EEH.
pub const VFIO_EEH: u32 = 5;
/// The type1 nesting IOMMU model (implies v2).
pub const VFIO_TYPE1_NESTING_IOMMU: u32 = 6;
/// The POWER sPAPR TCE IOMMU model, version 2.
pub const VFIO_SPAPR_TCE_V2_IOMMU: u32 = 7;
/// The no-IOMMU model (unsafe, no isolation).
pub const VFIO_NOIOMMU_IOMMU: u32 = 8;
/// Extension: `VFIO_DMA_UNMAP_FLAG_ALL`.
pub const VFIO_UNMAP_ALL: u32 = 9;
/// Extension: `VFIO_DMA_MAP_FLAG_VADDR` / `VFIO_DMA_UNMAP_FLAG_VADDR`.
pub const VFIO_UPDATE_VADDR: u32 = 10;

// ---------------------------------------------------------------------------------------------
// Ioctl numbers.

/// Container: the API version (returns [`VFIO_API_VERSION`]).
pub const VFIO_GET_API_VERSION: u32 = vfio_io(0);
/// Container: whether an extension or IOMMU type is supported (returns 0 or 1).
pub const VFIO_CHECK_EXTENSION: u32 = vfio_io(1);
/// Container: choose the IOMMU model (argument: the type, by value).
pub const VFIO_SET_IOMMU: u32 = vfio_io(2);
/// Group: viability and container status ([`VfioGroupStatus`]).
pub const VFIO_GROUP_GET_STATUS: u32 = vfio_io(3);
/// Group: join a container (argument: pointer to the container fd, `s32`).
pub const VFIO_GROUP_SET_CONTAINER: u32 = vfio_io(4);
/// Group: leave the container.
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = vfio_io(5);
/// Group: open a device fd by name (argument: pointer to a NUL-terminated device name).
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = vfio_io(6);
/// Device: [`VfioDeviceInfo`].
pub const VFIO_DEVICE_GET_INFO: u32 = vfio_io(7);
/// Device: [`VfioRegionInfo`], with a capability chain after it.
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
/// Device: [`VfioIrqInfo`].
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
/// Device: [`VfioIrqSet`] followed by its data.
pub const VFIO_DEVICE_SET_IRQS: u32 = vfio_io(10);
/// Device: function-level reset (no argument).
pub const VFIO_DEVICE_RESET: u32 = vfio_io(11);
/// Device: which devices a bus/slot reset affects ([`VfioPciHotResetInfo`]).
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u32 = vfio_io(12);
/// Device: bus/slot reset ([`VfioPciHotReset`]).
pub const VFIO_DEVICE_PCI_HOT_RESET: u32 = vfio_io(13);
/// Device: vGPU plane query.
pub const VFIO_DEVICE_QUERY_GFX_PLANE: u32 = vfio_io(14);
/// Device: vGPU dma-buf export.
pub const VFIO_DEVICE_GET_GFX_DMABUF: u32 = vfio_io(15);
/// Device: write a value to a region when an eventfd fires ([`VfioDeviceIoeventfd`]).
pub const VFIO_DEVICE_IOEVENTFD: u32 = vfio_io(16);
/// Device: get, set or probe a feature ([`VfioDeviceFeature`] followed by its data).
pub const VFIO_DEVICE_FEATURE: u32 = vfio_io(17);
/// Device cdev: bind to an iommufd ([`VfioDeviceBindIommufd`]).
pub const VFIO_DEVICE_BIND_IOMMUFD: u32 = vfio_io(18);
/// Device cdev: attach to an IOAS or HWPT ([`VfioDeviceAttachIommufdPt`]).
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u32 = vfio_io(19);
/// Device cdev: detach ([`VfioDeviceDetachIommufdPt`]).
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u32 = vfio_io(20);
/// Migration data fd: pre-copy sizes ([`VfioPrecopyInfo`]).
pub const VFIO_MIG_GET_PRECOPY_INFO: u32 = vfio_io(21);
/// Container (type1): [`VfioIommuType1Info`] with a capability chain.
pub const VFIO_IOMMU_GET_INFO: u32 = vfio_io(12);
/// Container (type1): [`VfioIommuType1DmaMap`].
pub const VFIO_IOMMU_MAP_DMA: u32 = vfio_io(13);
/// Container (type1): [`VfioIommuType1DmaUnmap`].
pub const VFIO_IOMMU_UNMAP_DMA: u32 = vfio_io(14);
/// Container (sPAPR): enable the IOMMU.
pub const VFIO_IOMMU_ENABLE: u32 = vfio_io(15);
/// Container (sPAPR): disable the IOMMU.
pub const VFIO_IOMMU_DISABLE: u32 = vfio_io(16);
/// Container (type1): dirty page tracking ([`VfioIommuType1DirtyBitmap`]).
pub const VFIO_IOMMU_DIRTY_PAGES: u32 = vfio_io(17);

// ---------------------------------------------------------------------------------------------
// Capability chains.

/// The header of each capability in a chain after an info struct. `next` is the offset of the
/// next capability from the start of the info struct, 0 at the end.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioInfoCapHeader {
    /// Which capability.
    pub id: u16,
    /// Its layout version.
    pub version: u16,
    /// Offset of the next capability from the start of the info struct (0: last).
    pub next: u32,
}

// ---------------------------------------------------------------------------------------------
// Group.

/// `VFIO_GROUP_GET_STATUS` argument.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioGroupStatus {
    /// Size of the caller's struct.
    pub argsz: u32,
    /// `VFIO_GROUP_FLAGS_*`.
    pub flags: u32,
}
/// Group status: every device of the group is bound to a VFIO (or no) driver.
pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// Group status: the group is in a container.
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

// ---------------------------------------------------------------------------------------------
// Device info.

/// `VFIO_DEVICE_GET_INFO` argument.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceInfo {
    /// Size of the caller's buffer (struct plus room for capabilities).
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of region indexes.
    pub num_regions: u32,
    /// Number of interrupt indexes.
    pub num_irqs: u32,
    /// Offset of the first capability (with [`VFIO_DEVICE_FLAGS_CAPS`]).
    pub cap_offset: u32,
    /// Padding.
    pub pad: u32,
}
/// Device flag: `VFIO_DEVICE_RESET` works.
pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// Device flag: a vfio-pci device.
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// Device flag: a vfio-platform device.
pub const VFIO_DEVICE_FLAGS_PLATFORM: u32 = 1 << 2;
/// Device flag: a vfio-amba device.
pub const VFIO_DEVICE_FLAGS_AMBA: u32 = 1 << 3;
/// Device flag: a vfio-ccw device.
pub const VFIO_DEVICE_FLAGS_CCW: u32 = 1 << 4;
/// Device flag: a vfio-ap device.
pub const VFIO_DEVICE_FLAGS_AP: u32 = 1 << 5;
/// Device flag: a vfio-fsl-mc device.
pub const VFIO_DEVICE_FLAGS_FSL_MC: u32 = 1 << 6;
/// Device flag: the info has a capability chain.
pub const VFIO_DEVICE_FLAGS_CAPS: u32 = 1 << 7;
/// Device flag: a vfio-cdx device.
pub const VFIO_DEVICE_FLAGS_CDX: u32 = 1 << 8;

/// Device info capability: PCIe AtomicOp completer support.
pub const VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP: u16 = 5;

/// Device info capability [`VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceInfoCapPciAtomicComp {
    /// Capability header.
    pub header: VfioInfoCapHeader,
    /// `VFIO_PCI_ATOMIC_COMP*`.
    pub flags: u32,
    /// Reserved.
    pub reserved: u32,
}
/// 32-bit AtomicOp completion supported.
pub const VFIO_PCI_ATOMIC_COMP32: u32 = 1 << 0;
/// 64-bit AtomicOp completion supported.
pub const VFIO_PCI_ATOMIC_COMP64: u32 = 1 << 1;
/// 128-bit CAS completion supported.
pub const VFIO_PCI_ATOMIC_COMP128: u32 = 1 << 2;

// ---------------------------------------------------------------------------------------------
// Regions.

/// `VFIO_DEVICE_GET_REGION_INFO` argument.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioRegionInfo {
    /// Size of the caller's buffer (struct plus room for capabilities).
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Region index (input).
    pub index: u32,
    /// Offset of the first capability (with [`VFIO_REGION_INFO_FLAG_CAPS`]).
    pub cap_offset: u32,
    /// Region size in bytes.
    pub size: u64,
    /// Offset of the region in the device file.
    pub offset: u64,
}
/// Region flag: pread works.
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// Region flag: pwrite works.
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// Region flag: mmap works.
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// Region flag: the info has a capability chain.
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

/// Region capability: only some areas of the region may be mmapped.
pub const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// Region capability: the type and subtype of a device-specific region.
pub const VFIO_REGION_INFO_CAP_TYPE: u16 = 2;
/// Region capability: the MSI-X table in this BAR may be mmapped.
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;
/// Region capability: NVLink2 target address.
pub const VFIO_REGION_INFO_CAP_NVLINK2_SSATGT: u16 = 4;
/// Region capability: NVLink2 link speed.
pub const VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD: u16 = 5;

/// One mmap-able area of a region ([`VFIO_REGION_INFO_CAP_SPARSE_MMAP`]).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioRegionSparseMmapArea {
    /// Offset of the area in the region.
    pub offset: u64,
    /// Size of the area.
    pub size: u64,
}

/// Region capability [`VFIO_REGION_INFO_CAP_SPARSE_MMAP`]; `nr_areas`
/// [`VfioRegionSparseMmapArea`]s follow it.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioRegionInfoCapSparseMmap {
    /// Capability header.
    pub header: VfioInfoCapHeader,
    /// Number of areas that follow.
    pub nr_areas: u32,
    /// Reserved.
    pub reserved: u32,
}

/// Region capability [`VFIO_REGION_INFO_CAP_TYPE`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioRegionInfoCapType {
    /// Capability header.
    pub header: VfioInfoCapHeader,
    /// Region type (`VFIO_REGION_TYPE_*`), per bus driver.
    pub r#type: u32,
    /// Subtype, per type.
    pub subtype: u32,
}
/// Region type bit: a PCI vendor-specific type (vendor id in the low 16 bits).
pub const VFIO_REGION_TYPE_PCI_VENDOR_TYPE: u32 = 1 << 31;
/// Mask of the vendor id in a vendor-specific region type.
pub const VFIO_REGION_TYPE_PCI_VENDOR_MASK: u32 = 0xffff;
/// Region type: graphics.
pub const VFIO_REGION_TYPE_GFX: u32 = 1;
/// Region type: s390 channel I/O.
pub const VFIO_REGION_TYPE_CCW: u32 = 2;
/// Region type: the removed v1 migration region.
pub const VFIO_REGION_TYPE_MIGRATION_DEPRECATED: u32 = 3;

// ---------------------------------------------------------------------------------------------
// Interrupts.

/// `VFIO_DEVICE_GET_IRQ_INFO` argument.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIrqInfo {
    /// Size of the caller's struct.
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// Interrupt index (input).
    pub index: u32,
    /// Number of interrupts at this index.
    pub count: u32,
}
/// IRQ info: signalled through eventfds.
pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// IRQ info: can be masked and unmasked.
pub const VFIO_IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// IRQ info: masked automatically when it fires (level-triggered).
pub const VFIO_IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// IRQ info: the number of vectors cannot change while enabled.
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// `VFIO_DEVICE_SET_IRQS` argument; `count` elements of the data type follow it (none, `u8`
/// bools or `s32` eventfds).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIrqSet {
    /// Size of the caller's struct plus data.
    pub argsz: u32,
    /// One `VFIO_IRQ_SET_DATA_*` and one `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// Interrupt index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
}
/// SET_IRQS data: none (act on every vector in the range).
pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// SET_IRQS data: one `u8` per vector (act where non-zero).
pub const VFIO_IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// SET_IRQS data: one `s32` eventfd per vector (-1: none).
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// SET_IRQS action: mask.
pub const VFIO_IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// SET_IRQS action: unmask.
pub const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// SET_IRQS action: trigger (with eventfds: set the signalling fds).
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// The data-type bits of SET_IRQS flags.
pub const VFIO_IRQ_SET_DATA_TYPE_MASK: u32 =
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
/// The action bits of SET_IRQS flags.
pub const VFIO_IRQ_SET_ACTION_TYPE_MASK: u32 =
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER;

// ---------------------------------------------------------------------------------------------
// vfio-pci region and interrupt indexes, and the region offset encoding.

/// PCI region index of BAR0 (BAR1..BAR5 follow).
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
/// PCI region index of BAR1.
pub const VFIO_PCI_BAR1_REGION_INDEX: u32 = 1;
/// PCI region index of BAR2.
pub const VFIO_PCI_BAR2_REGION_INDEX: u32 = 2;
/// PCI region index of BAR3.
pub const VFIO_PCI_BAR3_REGION_INDEX: u32 = 3;
/// PCI region index of BAR4.
pub const VFIO_PCI_BAR4_REGION_INDEX: u32 = 4;
/// PCI region index of BAR5.
pub const VFIO_PCI_BAR5_REGION_INDEX: u32 = 5;
/// PCI region index of the expansion ROM.
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
/// PCI region index of config space.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// PCI region index of legacy VGA space.
pub const VFIO_PCI_VGA_REGION_INDEX: u32 = 8;
/// Number of fixed PCI region indexes (device-specific regions follow).
pub const VFIO_PCI_NUM_REGIONS: u32 = 9;

/// PCI interrupt index: INTx.
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
/// PCI interrupt index: MSI.
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
/// PCI interrupt index: MSI-X.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
/// PCI interrupt index: AER error notification.
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
/// PCI interrupt index: device release request.
pub const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;
/// Number of PCI interrupt indexes.
pub const VFIO_PCI_NUM_IRQS: u32 = 5;

/// vfio-pci places region `index` at file offset `index << VFIO_PCI_OFFSET_SHIFT` (kernel-
/// internal, but every client relies on it through `VfioRegionInfo::offset`).
pub const VFIO_PCI_OFFSET_SHIFT: u32 = 40;
/// Mask of the offset within a region.
pub const VFIO_PCI_OFFSET_MASK: u64 = (1 << VFIO_PCI_OFFSET_SHIFT) - 1;

/// The file offset of vfio-pci region `index`.
pub const fn vfio_pci_index_to_offset(index: u32) -> u64 {
    (index as u64) << VFIO_PCI_OFFSET_SHIFT
}

/// The vfio-pci region index of a file offset.
pub const fn vfio_pci_offset_to_index(offset: u64) -> u64 {
    offset >> VFIO_PCI_OFFSET_SHIFT
}

// ---------------------------------------------------------------------------------------------
// Hot reset.

/// One device a hot reset affects. `id` is a group id (legacy path) or an iommufd device id
/// (cdev path; [`VFIO_PCI_DEVID_OWNED`] / [`VFIO_PCI_DEVID_NOT_OWNED`] without one).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioPciDependentDevice {
    /// Group id or device id (a C union of two `u32`s).
    pub id: u32,
    /// PCI segment.
    pub segment: u16,
    /// PCI bus.
    pub bus: u8,
    /// Device and function (`device << 3 | function`).
    pub devfn: u8,
}
/// Dependent device id: owned by the caller's iommufd, but not bound.
pub const VFIO_PCI_DEVID_OWNED: u32 = 0;
/// Dependent device id: not owned by the caller.
pub const VFIO_PCI_DEVID_NOT_OWNED: i32 = -1;

/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` argument; `count` [`VfioPciDependentDevice`]s follow.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioPciHotResetInfo {
    /// Size of the caller's buffer.
    pub argsz: u32,
    /// `VFIO_PCI_HOT_RESET_FLAG_*`.
    pub flags: u32,
    /// Number of devices.
    pub count: u32,
}
/// Hot reset info: ids are iommufd device ids.
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID: u32 = 1 << 0;
/// Hot reset info: every affected device is owned by the caller.
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED: u32 = 1 << 1;

/// `VFIO_DEVICE_PCI_HOT_RESET` argument; `count` group fds (`s32`) follow.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioPciHotReset {
    /// Size of the caller's buffer.
    pub argsz: u32,
    /// Must be 0.
    pub flags: u32,
    /// Number of group fds (0 on the cdev path).
    pub count: u32,
}

// ---------------------------------------------------------------------------------------------
// Ioeventfd and features.

/// `VFIO_DEVICE_IOEVENTFD` argument.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceIoeventfd {
    /// Size of the caller's struct.
    pub argsz: u32,
    /// Write size: one of `VFIO_DEVICE_IOEVENTFD_{8,16,32,64}`.
    pub flags: u32,
    /// Device file offset of the write.
    pub offset: u64,
    /// Value to write.
    pub data: u64,
    /// The eventfd (-1: remove).
    pub fd: i32,
    /// Reserved.
    pub reserved: u32,
}
/// Ioeventfd: 1-byte write.
pub const VFIO_DEVICE_IOEVENTFD_8: u32 = 1 << 0;
/// Ioeventfd: 2-byte write.
pub const VFIO_DEVICE_IOEVENTFD_16: u32 = 1 << 1;
/// Ioeventfd: 4-byte write.
pub const VFIO_DEVICE_IOEVENTFD_32: u32 = 1 << 2;
/// Ioeventfd: 8-byte write.
pub const VFIO_DEVICE_IOEVENTFD_64: u32 = 1 << 3;
/// Ioeventfd: the size bits.
pub const VFIO_DEVICE_IOEVENTFD_SIZE_MASK: u32 = 0xf;

/// `VFIO_DEVICE_FEATURE` argument; the feature's data follows it.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceFeature {
    /// Size of the struct plus data.
    pub argsz: u32,
    /// Feature index (low 16 bits) and `VFIO_DEVICE_FEATURE_{GET,SET,PROBE}`.
    pub flags: u32,
}
/// Feature flags: the feature index.
pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
/// Feature flags: read the feature into the data.
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
/// Feature flags: set the feature from the data.
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
/// Feature flags: only ask whether GET/SET is supported.
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;

/// Feature: SR-IOV VF token (SET, a 16-byte UUID).
pub const VFIO_DEVICE_FEATURE_PCI_VF_TOKEN: u32 = 0;
/// Feature: migration capabilities (GET, [`VfioDeviceFeatureMigration`]).
pub const VFIO_DEVICE_FEATURE_MIGRATION: u32 = 1;
/// Feature: migration state machine (GET/SET, [`VfioDeviceFeatureMigState`]).
pub const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: u32 = 2;
/// Feature: enter runtime low power.
pub const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: u32 = 3;
/// Feature: enter runtime low power with a wake-up eventfd.
pub const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: u32 = 4;
/// Feature: leave runtime low power.
pub const VFIO_DEVICE_FEATURE_LOW_POWER_EXIT: u32 = 5;
/// Feature: start device DMA dirty logging.
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_START: u32 = 6;
/// Feature: stop device DMA dirty logging.
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: u32 = 7;
/// Feature: report device DMA dirty logging.
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: u32 = 8;
/// Feature: migration data size.
pub const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: u32 = 9;
/// Feature: bus master control ([`VfioDeviceFeatureBusMaster`]).
pub const VFIO_DEVICE_FEATURE_BUS_MASTER: u32 = 10;

/// Feature data of [`VFIO_DEVICE_FEATURE_MIGRATION`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceFeatureMigration {
    /// `VFIO_MIGRATION_*`.
    pub flags: u64,
}
/// Migration: STOP_COPY supported.
pub const VFIO_MIGRATION_STOP_COPY: u64 = 1 << 0;
/// Migration: peer-to-peer states supported.
pub const VFIO_MIGRATION_P2P: u64 = 1 << 1;
/// Migration: PRE_COPY supported.
pub const VFIO_MIGRATION_PRE_COPY: u64 = 1 << 2;

/// Feature data of [`VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceFeatureMigState {
    /// A `VFIO_DEVICE_STATE_*` value.
    pub device_state: u32,
    /// The data fd the transition returns (-1: none).
    pub data_fd: i32,
}

/// `VFIO_MIG_GET_PRECOPY_INFO` argument.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioPrecopyInfo {
    /// Size of the caller's struct.
    pub argsz: u32,
    /// Flags.
    pub flags: u32,
    /// Bytes of initial state left.
    pub initial_bytes: u64,
    /// Bytes of dirty state known now.
    pub dirty_bytes: u64,
}

/// Feature data of [`VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceLowPowerEntryWithWakeup {
    /// Eventfd signalled on wake-up.
    pub wakeup_eventfd: i32,
    /// Reserved.
    pub reserved: u32,
}

/// Feature data of [`VFIO_DEVICE_FEATURE_BUS_MASTER`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceFeatureBusMaster {
    /// `VFIO_DEVICE_FEATURE_{CLEAR,SET}_MASTER`.
    pub op: u32,
}

// ---------------------------------------------------------------------------------------------
// Device cdev and iommufd.

/// `VFIO_DEVICE_BIND_IOMMUFD` argument (Linux 6.12 layout; later kernels append fields, which a
/// 6.12 handler ignores because it reads only this much).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceBindIommufd {
    /// Size of the caller's struct.
    pub argsz: u32,
    /// Must be 0.
    pub flags: u32,
    /// The iommufd to bind to.
    pub iommufd: i32,
    /// Output: the device's object id in the iommufd.
    pub out_devid: u32,
}

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` argument (6.12 layout; later kernels append `pasid`).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceAttachIommufdPt {
    /// Size of the caller's struct.
    pub argsz: u32,
    /// Must be 0.
    pub flags: u32,
    /// Input: an IOAS or HWPT id; output: the HWPT the device is attached to.
    pub pt_id: u32,
}

/// `VFIO_DEVICE_DETACH_IOMMUFD_PT` argument (6.12 layout; later kernels append `pasid`).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioDeviceDetachIommufdPt {
    /// Size of the caller's struct.
    pub argsz: u32,
    /// Must be 0.
    pub flags: u32,
}

// ---------------------------------------------------------------------------------------------
// Type1 container.

/// `VFIO_IOMMU_GET_INFO` argument (type1).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIommuType1Info {
    /// Size of the caller's buffer (struct plus room for capabilities).
    pub argsz: u32,
    /// `VFIO_IOMMU_INFO_*`.
    pub flags: u32,
    /// Bitmap of supported IOMMU page sizes.
    pub iova_pgsizes: u64,
    /// Offset of the first capability (with [`VFIO_IOMMU_INFO_CAPS`]).
    pub cap_offset: u32,
    /// Padding.
    pub pad: u32,
}
/// Type1 info: `iova_pgsizes` is valid.
pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
/// Type1 info: a capability chain follows.
pub const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;

/// Type1 info capability: usable IOVA ranges.
pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
/// Type1 info capability: migration (dirty bitmap) support.
pub const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: u16 = 2;
/// Type1 info capability: DMA mappings still available.
pub const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = 3;

/// One usable IOVA range (inclusive `end`).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIovaRange {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub end: u64,
}

/// Type1 info capability [`VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`]; `nr_iovas`
/// [`VfioIovaRange`]s follow.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIommuType1InfoCapIovaRange {
    /// Capability header.
    pub header: VfioInfoCapHeader,
    /// Number of ranges that follow.
    pub nr_iovas: u32,
    /// Reserved.
    pub reserved: u32,
}

/// Type1 info capability [`VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIommuType1InfoCapMigration {
    /// Capability header.
    pub header: VfioInfoCapHeader,
    /// Flags.
    pub flags: u32,
    /// The C struct's implicit alignment hole before `pgsize_bitmap`, made explicit.
    pub pad: u32,
    /// Supported dirty-bitmap page sizes.
    pub pgsize_bitmap: u64,
    /// Largest dirty bitmap in bytes.
    pub max_dirty_bitmap_size: u64,
}

/// Type1 info capability [`VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIommuType1InfoDmaAvail {
    /// Capability header.
    pub header: VfioInfoCapHeader,
    /// Mappings still available.
    pub avail: u32,
}

/// `VFIO_IOMMU_MAP_DMA` argument.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIommuType1DmaMap {
    /// Size of the caller's struct.
    pub argsz: u32,
    /// `VFIO_DMA_MAP_FLAG_*`.
    pub flags: u32,
    /// Process virtual address.
    pub vaddr: u64,
    /// IO virtual address.
    pub iova: u64,
    /// Size of the mapping in bytes.
    pub size: u64,
}
/// Map flag: the device may read.
pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// Map flag: the device may write.
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// Map flag: update the vaddr of an existing mapping.
pub const VFIO_DMA_MAP_FLAG_VADDR: u32 = 1 << 2;

/// A dirty bitmap in user memory.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioBitmap {
    /// Page size one bit stands for.
    pub pgsize: u64,
    /// Bitmap size in bytes.
    pub size: u64,
    /// User pointer to the bitmap (`u64` words).
    pub data: u64,
}

/// `VFIO_IOMMU_UNMAP_DMA` argument; with `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP` a
/// [`VfioBitmap`] follows.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIommuType1DmaUnmap {
    /// Size of the caller's struct plus data.
    pub argsz: u32,
    /// `VFIO_DMA_UNMAP_FLAG_*`.
    pub flags: u32,
    /// IO virtual address.
    pub iova: u64,
    /// Size in bytes (output: bytes unmapped).
    pub size: u64,
}
/// Unmap flag: also return the dirty bitmap of the range.
pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// Unmap flag: unmap everything (iova and size 0).
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
/// Unmap flag: invalidate the vaddr of mappings only.
pub const VFIO_DMA_UNMAP_FLAG_VADDR: u32 = 1 << 2;

/// `VFIO_IOMMU_DIRTY_PAGES` argument; with GET_BITMAP a [`VfioIommuType1DirtyBitmapGet`]
/// follows.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIommuType1DirtyBitmap {
    /// Size of the caller's struct plus data.
    pub argsz: u32,
    /// One `VFIO_IOMMU_DIRTY_PAGES_FLAG_*`.
    pub flags: u32,
}
/// Dirty pages: start tracking.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_START: u32 = 1 << 0;
/// Dirty pages: stop tracking.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: u32 = 1 << 1;
/// Dirty pages: read the bitmap of a range.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: u32 = 1 << 2;

/// The data of `VFIO_IOMMU_DIRTY_PAGES` with GET_BITMAP.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct VfioIommuType1DirtyBitmapGet {
    /// IO virtual address.
    pub iova: u64,
    /// Size of the range.
    pub size: u64,
    /// Where the bitmap goes.
    pub bitmap: VfioBitmap,
}

// ---------------------------------------------------------------------------------------------
// Layout checks.

macro_rules! assert_layout {
    ($t:ty, $size:expr $(, $field:ident @ $off:expr)*) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        $(const _: () = assert!(core::mem::offset_of!($t, $field) == $off);)*
    };
}

assert_layout!(VfioInfoCapHeader, 8, id @ 0, version @ 2, next @ 4);
assert_layout!(VfioGroupStatus, 8, flags @ 4);
assert_layout!(VfioDeviceInfo, 24, num_regions @ 8, num_irqs @ 12, cap_offset @ 16, pad @ 20);
assert_layout!(VfioDeviceInfoCapPciAtomicComp, 16, flags @ 8, reserved @ 12);
assert_layout!(VfioRegionInfo, 32, index @ 8, cap_offset @ 12, size @ 16, offset @ 24);
assert_layout!(VfioRegionSparseMmapArea, 16, size @ 8);
assert_layout!(VfioRegionInfoCapSparseMmap, 16, nr_areas @ 8, reserved @ 12);
assert_layout!(VfioRegionInfoCapType, 16, r#type @ 8, subtype @ 12);
assert_layout!(VfioIrqInfo, 16, index @ 8, count @ 12);
assert_layout!(VfioIrqSet, 20, index @ 8, start @ 12, count @ 16);
assert_layout!(VfioPciDependentDevice, 8, segment @ 4, bus @ 6, devfn @ 7);
assert_layout!(VfioPciHotResetInfo, 12, count @ 8);
assert_layout!(VfioPciHotReset, 12, count @ 8);
assert_layout!(VfioDeviceIoeventfd, 32, offset @ 8, data @ 16, fd @ 24, reserved @ 28);
assert_layout!(VfioDeviceFeature, 8, flags @ 4);
assert_layout!(VfioDeviceFeatureMigration, 8);
assert_layout!(VfioDeviceFeatureMigState, 8, data_fd @ 4);
assert_layout!(VfioPrecopyInfo, 24, initial_bytes @ 8, dirty_bytes @ 16);
assert_layout!(VfioDeviceLowPowerEntryWithWakeup, 8, reserved @ 4);
assert_layout!(VfioDeviceFeatureBusMaster, 4);
assert_layout!(VfioDeviceBindIommufd, 16, iommufd @ 8, out_devid @ 12);
assert_layout!(VfioDeviceAttachIommufdPt, 12, pt_id @ 8);
assert_layout!(VfioDeviceDetachIommufdPt, 8, flags @ 4);
assert_layout!(VfioIommuType1Info, 24, iova_pgsizes @ 8, cap_offset @ 16, pad @ 20);
assert_layout!(VfioIovaRange, 16, end @ 8);
assert_layout!(VfioIommuType1InfoCapIovaRange, 16, nr_iovas @ 8, reserved @ 12);
assert_layout!(
    VfioIommuType1InfoCapMigration,
    32,
    flags @ 8,
    pgsize_bitmap @ 16,
    max_dirty_bitmap_size @ 24
);
assert_layout!(VfioIommuType1InfoDmaAvail, 12, avail @ 8);
assert_layout!(VfioIommuType1DmaMap, 32, vaddr @ 8, iova @ 16, size @ 24);
assert_layout!(VfioBitmap, 24, size @ 8, data @ 16);
assert_layout!(VfioIommuType1DmaUnmap, 24, iova @ 8, size @ 16);
assert_layout!(VfioIommuType1DirtyBitmap, 8, flags @ 4);
assert_layout!(VfioIommuType1DirtyBitmapGet, 40, size @ 8, bitmap @ 16);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};
    use vfio_bindings::bindings::vfio as b;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // _IO(';', 100 + n) = 0x3b00 | (100 + n) = 15204 + n.
        let table: &[(u32, u32)] = &[
            (VFIO_GET_API_VERSION, 15204),
            (VFIO_CHECK_EXTENSION, 15205),
            (VFIO_SET_IOMMU, 15206),
            (VFIO_GROUP_GET_STATUS, 15207),
            (VFIO_GROUP_SET_CONTAINER, 15208),
            (VFIO_GROUP_UNSET_CONTAINER, 15209),
            (VFIO_GROUP_GET_DEVICE_FD, 15210),
            (VFIO_DEVICE_GET_INFO, 15211),
            (VFIO_DEVICE_GET_REGION_INFO, 15212),
            (VFIO_DEVICE_GET_IRQ_INFO, 15213),
            (VFIO_DEVICE_SET_IRQS, 15214),
            (VFIO_DEVICE_RESET, 15215),
            (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, 15216),
            (VFIO_DEVICE_PCI_HOT_RESET, 15217),
            (VFIO_DEVICE_QUERY_GFX_PLANE, 15218),
            (VFIO_DEVICE_GET_GFX_DMABUF, 15219),
            (VFIO_DEVICE_IOEVENTFD, 15220),
            (VFIO_DEVICE_FEATURE, 15221),
            (VFIO_DEVICE_BIND_IOMMUFD, 15222),
            (VFIO_DEVICE_ATTACH_IOMMUFD_PT, 15223),
            (VFIO_DEVICE_DETACH_IOMMUFD_PT, 15224),
            (VFIO_MIG_GET_PRECOPY_INFO, 15225),
            (VFIO_IOMMU_GET_INFO, 15216),
            (VFIO_IOMMU_MAP_DMA, 15217),
            (VFIO_IOMMU_UNMAP_DMA, 15218),
            (VFIO_IOMMU_ENABLE, 15219),
            (VFIO_IOMMU_DISABLE, 15220),
            (VFIO_IOMMU_DIRTY_PAGES, 15221),
        ];
        for (i, (got, want)) in table.iter().enumerate() {
            assert_eq!(got, want, "row {i}");
        }
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
    }

    #[test]
    fn constants_match_vfio_bindings() {
        assert_eq!(VFIO_TYPE, u32::from(b::VFIO_TYPE));
        assert_eq!(VFIO_BASE, b::VFIO_BASE);
        assert_eq!(VFIO_API_VERSION, b::VFIO_API_VERSION);
        assert_eq!(VFIO_TYPE1V2_IOMMU, b::VFIO_TYPE1v2_IOMMU);
        assert_eq!(VFIO_NOIOMMU_IOMMU, b::VFIO_NOIOMMU_IOMMU);
        assert_eq!(VFIO_UPDATE_VADDR, b::VFIO_UPDATE_VADDR);
        assert_eq!(VFIO_DEVICE_FLAGS_CDX, b::VFIO_DEVICE_FLAGS_CDX);
        assert_eq!(
            u32::from(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE),
            b::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE
        );
        assert_eq!(VFIO_IRQ_SET_DATA_TYPE_MASK, b::VFIO_IRQ_SET_DATA_TYPE_MASK);
        assert_eq!(
            VFIO_IRQ_SET_ACTION_TYPE_MASK,
            b::VFIO_IRQ_SET_ACTION_TYPE_MASK
        );
        assert_eq!(VFIO_PCI_NUM_REGIONS, b::VFIO_PCI_NUM_REGIONS);
        assert_eq!(
            VFIO_PCI_CONFIG_REGION_INDEX,
            b::VFIO_PCI_CONFIG_REGION_INDEX
        );
        assert_eq!(VFIO_PCI_NUM_IRQS, b::VFIO_PCI_NUM_IRQS);
        assert_eq!(VFIO_PCI_MSIX_IRQ_INDEX, b::VFIO_PCI_MSIX_IRQ_INDEX);
        assert_eq!(VFIO_PCI_REQ_IRQ_INDEX, b::VFIO_PCI_REQ_IRQ_INDEX);
        assert_eq!(VFIO_DEVICE_FEATURE_PROBE, b::VFIO_DEVICE_FEATURE_PROBE);
        assert_eq!(
            VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
            b::VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
        );
        assert_eq!(
            VFIO_DEVICE_FEATURE_BUS_MASTER,
            b::VFIO_DEVICE_FEATURE_BUS_MASTER
        );
        assert_eq!(VFIO_DMA_UNMAP_FLAG_VADDR, b::VFIO_DMA_UNMAP_FLAG_VADDR);
        assert_eq!(VFIO_PCI_DEVID_NOT_OWNED, b::VFIO_PCI_DEVID_NOT_OWNED);
        assert_eq!(
            u32::from(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL),
            b::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
        );
    }

    #[test]
    fn struct_sizes_match_vfio_bindings() {
        let table: &[(&str, usize, usize)] = &[
            (
                "cap header",
                size_of::<VfioInfoCapHeader>(),
                size_of::<b::vfio_info_cap_header>(),
            ),
            (
                "group status",
                size_of::<VfioGroupStatus>(),
                size_of::<b::vfio_group_status>(),
            ),
            (
                "device info",
                size_of::<VfioDeviceInfo>(),
                size_of::<b::vfio_device_info>(),
            ),
            (
                "atomic comp",
                size_of::<VfioDeviceInfoCapPciAtomicComp>(),
                size_of::<b::vfio_device_info_cap_pci_atomic_comp>(),
            ),
            (
                "region info",
                size_of::<VfioRegionInfo>(),
                size_of::<b::vfio_region_info>(),
            ),
            (
                "sparse area",
                size_of::<VfioRegionSparseMmapArea>(),
                size_of::<b::vfio_region_sparse_mmap_area>(),
            ),
            (
                "sparse cap",
                size_of::<VfioRegionInfoCapSparseMmap>(),
                size_of::<b::vfio_region_info_cap_sparse_mmap>(),
            ),
            (
                "type cap",
                size_of::<VfioRegionInfoCapType>(),
                size_of::<b::vfio_region_info_cap_type>(),
            ),
            (
                "irq info",
                size_of::<VfioIrqInfo>(),
                size_of::<b::vfio_irq_info>(),
            ),
            (
                "irq set",
                size_of::<VfioIrqSet>(),
                size_of::<b::vfio_irq_set>(),
            ),
            (
                "dependent device",
                size_of::<VfioPciDependentDevice>(),
                size_of::<b::vfio_pci_dependent_device>(),
            ),
            (
                "hot reset info",
                size_of::<VfioPciHotResetInfo>(),
                size_of::<b::vfio_pci_hot_reset_info>(),
            ),
            (
                "hot reset",
                size_of::<VfioPciHotReset>(),
                size_of::<b::vfio_pci_hot_reset>(),
            ),
            (
                "ioeventfd",
                size_of::<VfioDeviceIoeventfd>(),
                size_of::<b::vfio_device_ioeventfd>(),
            ),
            (
                "feature",
                size_of::<VfioDeviceFeature>(),
                size_of::<b::vfio_device_feature>(),
            ),
            (
                "mig state",
                size_of::<VfioDeviceFeatureMigState>(),
                size_of::<b::vfio_device_feature_mig_state>(),
            ),
            (
                "type1 info",
                size_of::<VfioIommuType1Info>(),
                size_of::<b::vfio_iommu_type1_info>(),
            ),
            (
                "iova range",
                size_of::<VfioIovaRange>(),
                size_of::<b::vfio_iova_range>(),
            ),
            (
                "iova range cap",
                size_of::<VfioIommuType1InfoCapIovaRange>(),
                size_of::<b::vfio_iommu_type1_info_cap_iova_range>(),
            ),
            (
                "migration cap",
                size_of::<VfioIommuType1InfoCapMigration>(),
                size_of::<b::vfio_iommu_type1_info_cap_migration>(),
            ),
            (
                "dma avail cap",
                size_of::<VfioIommuType1InfoDmaAvail>(),
                size_of::<b::vfio_iommu_type1_info_dma_avail>(),
            ),
            (
                "dma map",
                size_of::<VfioIommuType1DmaMap>(),
                size_of::<b::vfio_iommu_type1_dma_map>(),
            ),
            (
                "bitmap",
                size_of::<VfioBitmap>(),
                size_of::<b::vfio_bitmap>(),
            ),
            (
                "dma unmap",
                size_of::<VfioIommuType1DmaUnmap>(),
                size_of::<b::vfio_iommu_type1_dma_unmap>(),
            ),
            (
                "dirty bitmap",
                size_of::<VfioIommuType1DirtyBitmap>(),
                size_of::<b::vfio_iommu_type1_dirty_bitmap>(),
            ),
            (
                "dirty bitmap get",
                size_of::<VfioIommuType1DirtyBitmapGet>(),
                size_of::<b::vfio_iommu_type1_dirty_bitmap_get>(),
            ),
        ];
        for (name, ours, theirs) in table {
            assert_eq!(ours, theirs, "{name}");
        }
    }

    #[test]
    fn cdev_structs_are_the_6_12_prefix_of_the_newer_bindings() {
        // vfio-bindings 0.7 follows a later kernel that appended fields; a 6.12 handler reads
        // exactly the 6.12 prefix, so ours must end where the appended field begins.
        assert_eq!(
            size_of::<VfioDeviceBindIommufd>(),
            offset_of!(b::vfio_device_bind_iommufd, token_uuid_ptr)
        );
        assert_eq!(
            offset_of!(VfioDeviceBindIommufd, out_devid),
            offset_of!(b::vfio_device_bind_iommufd, out_devid)
        );
        assert_eq!(
            size_of::<VfioDeviceAttachIommufdPt>(),
            offset_of!(b::vfio_device_attach_iommufd_pt, pasid)
        );
        assert_eq!(
            size_of::<VfioDeviceDetachIommufdPt>(),
            offset_of!(b::vfio_device_detach_iommufd_pt, pasid)
        );
    }

    #[test]
    fn region_offsets_encode_the_index_in_bits_40_and_up() {
        assert_eq!(
            vfio_pci_index_to_offset(VFIO_PCI_CONFIG_REGION_INDEX),
            7 << 40
        );
        assert_eq!(vfio_pci_offset_to_index((7 << 40) + 0x10), 7);
        assert_eq!(((7u64 << 40) + 0x10) & VFIO_PCI_OFFSET_MASK, 0x10);
        assert_eq!(vfio_pci_offset_to_index(u64::MAX), (1 << 24) - 1);
    }
}
