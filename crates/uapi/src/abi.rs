//! The `/dev/iommu` ioctl ABI of Linux 6.12 (`include/uapi/linux/iommufd.h`), the later
//! additions the 6.12 stable selftests send (`IOMMU_HW_INFO_FLAG_INPUT_TYPE` with `in_data_type`
//! sharing the `out_data_type` slot, `out_max_pasid_log2`), and the selftest structs of
//! `drivers/iommu/iommufd/iommufd_test.h` (`IOMMU_TEST_CMD` and its payloads).
//!
//! Every struct is `#[repr(C)]` with the kernel's layout, written out field by field from the
//! header (no implicit padding: where C pads, an explicit `pad`/`reserved` field stands), and
//! decodes from and encodes to bytes with `zerocopy` — no pointer casts. Each has a compile-time
//! size assertion. A command struct implements [`UapiCmd`]: its ioctl number and its minimum
//! size (the end of the last field of the command's first version, the kernel's
//! `offsetofend(struct, last)` in `IOCTL_OP`).
//!
//! Field names follow the kernel's, without the leading underscores of `__reserved`.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The ioctl "type" byte of iommufd commands (`';'`).
pub const IOMMUFD_TYPE: u32 = b';' as u32;

/// `_IO(type, nr)`: an ioctl number with no direction and no size bits, as iommufd uses.
pub const fn io(ty: u32, nr: u32) -> u32 {
    (ty << 8) | nr
}

/// The `nr` byte of an ioctl number (`_IOC_NR`).
pub const fn ioc_nr(cmd: u32) -> u32 {
    cmd & 0xff
}

/// First iommufd command number.
pub const IOMMUFD_CMD_BASE: u32 = 0x80;
/// `nr` of IOMMU_DESTROY.
pub const IOMMUFD_CMD_DESTROY: u32 = 0x80;
/// `nr` of IOMMU_IOAS_ALLOC.
pub const IOMMUFD_CMD_IOAS_ALLOC: u32 = 0x81;
/// `nr` of IOMMU_IOAS_ALLOW_IOVAS.
pub const IOMMUFD_CMD_IOAS_ALLOW_IOVAS: u32 = 0x82;
/// `nr` of IOMMU_IOAS_COPY.
pub const IOMMUFD_CMD_IOAS_COPY: u32 = 0x83;
/// `nr` of IOMMU_IOAS_IOVA_RANGES.
pub const IOMMUFD_CMD_IOAS_IOVA_RANGES: u32 = 0x84;
/// `nr` of IOMMU_IOAS_MAP.
pub const IOMMUFD_CMD_IOAS_MAP: u32 = 0x85;
/// `nr` of IOMMU_IOAS_UNMAP.
pub const IOMMUFD_CMD_IOAS_UNMAP: u32 = 0x86;
/// `nr` of IOMMU_OPTION.
pub const IOMMUFD_CMD_OPTION: u32 = 0x87;
/// `nr` of IOMMU_VFIO_IOAS.
pub const IOMMUFD_CMD_VFIO_IOAS: u32 = 0x88;
/// `nr` of IOMMU_HWPT_ALLOC.
pub const IOMMUFD_CMD_HWPT_ALLOC: u32 = 0x89;
/// `nr` of IOMMU_GET_HW_INFO.
pub const IOMMUFD_CMD_GET_HW_INFO: u32 = 0x8a;
/// `nr` of IOMMU_HWPT_SET_DIRTY_TRACKING.
pub const IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: u32 = 0x8b;
/// `nr` of IOMMU_HWPT_GET_DIRTY_BITMAP.
pub const IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: u32 = 0x8c;
/// `nr` of IOMMU_HWPT_INVALIDATE.
pub const IOMMUFD_CMD_HWPT_INVALIDATE: u32 = 0x8d;
/// `nr` of IOMMU_FAULT_QUEUE_ALLOC.
pub const IOMMUFD_CMD_FAULT_QUEUE_ALLOC: u32 = 0x8e;
/// `nr` of IOMMU_TEST_CMD (the selftest command, `IOMMUFD_CMD_BASE + 32`).
pub const IOMMUFD_CMD_TEST: u32 = IOMMUFD_CMD_BASE + 32;

/// Destroy an object by id.
pub const IOMMU_DESTROY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY);
/// Allocate an IOAS.
pub const IOMMU_IOAS_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC);
/// Restrict the IOVAs an IOAS may use.
pub const IOMMU_IOAS_ALLOW_IOVAS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS);
/// Map the pages of one IOAS range into another (or the same) IOAS.
pub const IOMMU_IOAS_COPY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY);
/// Report the usable IOVA ranges of an IOAS.
pub const IOMMU_IOAS_IOVA_RANGES: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES);
/// Map user memory into an IOAS.
pub const IOMMU_IOAS_MAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP);
/// Unmap an IOVA range of an IOAS.
pub const IOMMU_IOAS_UNMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP);
/// Get or set an option of the context or of an object.
pub const IOMMU_OPTION: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION);
/// Get, set or clear the IOAS the VFIO compatibility layer uses.
pub const IOMMU_VFIO_IOAS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS);
/// Allocate a hardware page table.
pub const IOMMU_HWPT_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC);
/// Report the IOMMU hardware information behind a device.
pub const IOMMU_GET_HW_INFO: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO);
/// Turn dirty tracking of a paging HWPT on or off.
pub const IOMMU_HWPT_SET_DIRTY_TRACKING: u32 =
    io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING);
/// Read (and clear) the dirty bits of a paging HWPT into a user bitmap.
pub const IOMMU_HWPT_GET_DIRTY_BITMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP);
/// Invalidate caches of a user-managed (nested) HWPT.
pub const IOMMU_HWPT_INVALIDATE: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE);
/// Allocate a fault queue (an object with its own file).
pub const IOMMU_FAULT_QUEUE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC);
/// The selftest command (`CONFIG_IOMMUFD_TEST`).
pub const IOMMU_TEST_CMD: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_TEST);

/// A command struct of the size-extensible protocol.
pub trait UapiCmd: FromBytes + IntoBytes + Immutable + KnownLayout + Sized {
    /// Its ioctl number.
    const NUMBER: u32;
    /// The smallest `size` accepted: the end of the last field of the first version.
    const MIN_SIZE: usize;
}

/// `offsetofend(T, field)` for a field of type `F`.
macro_rules! end_of {
    ($t:ty, $f:ident, $ft:ty) => {
        offset_of!($t, $f) + size_of::<$ft>()
    };
}

macro_rules! cmd {
    ($t:ty, $num:expr, $last:ident, $ft:ty) => {
        impl UapiCmd for $t {
            const NUMBER: u32 = $num;
            const MIN_SIZE: usize = end_of!($t, $last, $ft);
        }
    };
}

/// `struct iommu_destroy`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuDestroy {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// The object to destroy.
    pub id: u32,
}
const _: () = assert!(size_of::<IommuDestroy>() == 8);
cmd!(IommuDestroy, IOMMU_DESTROY, id, u32);

/// `struct iommu_ioas_alloc`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuIoasAlloc {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// Must be 0.
    pub flags: u32,
    /// Output: the new IOAS.
    pub out_ioas_id: u32,
}
const _: () = assert!(size_of::<IommuIoasAlloc>() == 12);
cmd!(IommuIoasAlloc, IOMMU_IOAS_ALLOC, out_ioas_id, u32);

/// `struct iommu_iova_range`: an inclusive IOVA range.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuIovaRange {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub last: u64,
}
const _: () = assert!(size_of::<IommuIovaRange>() == 16);

/// `struct iommu_ioas_iova_ranges`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuIoasIovaRanges {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// The IOAS to query.
    pub ioas_id: u32,
    /// Input: capacity of the `allowed_iovas` array; output: number of ranges that exist.
    pub num_iovas: u32,
    /// Must be 0.
    pub reserved: u32,
    /// User pointer to an array of [`IommuIovaRange`].
    pub allowed_iovas: u64,
    /// Output: required alignment of IOVAs and lengths.
    pub out_iova_alignment: u64,
}
const _: () = assert!(size_of::<IommuIoasIovaRanges>() == 32);
cmd!(
    IommuIoasIovaRanges,
    IOMMU_IOAS_IOVA_RANGES,
    out_iova_alignment,
    u64
);

/// `struct iommu_ioas_allow_iovas`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuIoasAllowIovas {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// The IOAS to restrict.
    pub ioas_id: u32,
    /// Number of entries in `allowed_iovas`.
    pub num_iovas: u32,
    /// Must be 0.
    pub reserved: u32,
    /// User pointer to an array of [`IommuIovaRange`].
    pub allowed_iovas: u64,
}
const _: () = assert!(size_of::<IommuIoasAllowIovas>() == 24);
cmd!(
    IommuIoasAllowIovas,
    IOMMU_IOAS_ALLOW_IOVAS,
    allowed_iovas,
    u64
);

/// IOMMU_IOAS_MAP / IOMMU_IOAS_COPY flag: `iova` is an input and must be used as given.
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
/// IOMMU_IOAS_MAP / IOMMU_IOAS_COPY flag: devices may write.
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
/// IOMMU_IOAS_MAP / IOMMU_IOAS_COPY flag: devices may read.
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

/// `struct iommu_ioas_map`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuIoasMap {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// `IOMMU_IOAS_MAP_*`.
    pub flags: u32,
    /// The IOAS to map into.
    pub ioas_id: u32,
    /// Must be 0.
    pub reserved: u32,
    /// User address of the memory.
    pub user_va: u64,
    /// Bytes to map.
    pub length: u64,
    /// Input with FIXED_IOVA, output always: where the memory is mapped.
    pub iova: u64,
}
const _: () = assert!(size_of::<IommuIoasMap>() == 40);
cmd!(IommuIoasMap, IOMMU_IOAS_MAP, iova, u64);

/// `struct iommu_ioas_copy`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuIoasCopy {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// `IOMMU_IOAS_MAP_*`.
    pub flags: u32,
    /// The IOAS to map into.
    pub dst_ioas_id: u32,
    /// The IOAS whose pages are shared.
    pub src_ioas_id: u32,
    /// Bytes to copy.
    pub length: u64,
    /// Input with FIXED_IOVA, output always: the IOVA in the destination.
    pub dst_iova: u64,
    /// The IOVA in the source.
    pub src_iova: u64,
}
const _: () = assert!(size_of::<IommuIoasCopy>() == 40);
cmd!(IommuIoasCopy, IOMMU_IOAS_COPY, src_iova, u64);

/// `struct iommu_ioas_unmap`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuIoasUnmap {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// The IOAS to unmap from.
    pub ioas_id: u32,
    /// First IOVA (0 with length `u64::MAX`: everything).
    pub iova: u64,
    /// Input: bytes to unmap; output: bytes unmapped.
    pub length: u64,
}
const _: () = assert!(size_of::<IommuIoasUnmap>() == 24);
cmd!(IommuIoasUnmap, IOMMU_IOAS_UNMAP, length, u64);

/// IOMMU_OPTION id: the pinned-page accounting mode of the context (object 0).
pub const IOMMU_OPTION_RLIMIT_MODE: u32 = 0;
/// IOMMU_OPTION id: whether an IOAS may use large IOMMU pages.
pub const IOMMU_OPTION_HUGE_PAGES: u32 = 1;
/// IOMMU_OPTION op: set `val64`.
pub const IOMMU_OPTION_OP_SET: u16 = 0;
/// IOMMU_OPTION op: read into `val64`.
pub const IOMMU_OPTION_OP_GET: u16 = 1;

/// `struct iommu_option`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuOption {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// `IOMMU_OPTION_*`.
    pub option_id: u32,
    /// `IOMMU_OPTION_OP_*`.
    pub op: u16,
    /// Must be 0.
    pub reserved: u16,
    /// The object the option is about (0 for context-wide options).
    pub object_id: u32,
    /// The value set or read.
    pub val64: u64,
}
const _: () = assert!(size_of::<IommuOption>() == 24);
cmd!(IommuOption, IOMMU_OPTION, val64, u64);

/// IOMMU_VFIO_IOAS op: read the compatibility IOAS.
pub const IOMMU_VFIO_IOAS_GET: u16 = 0;
/// IOMMU_VFIO_IOAS op: set it to `ioas_id`.
pub const IOMMU_VFIO_IOAS_SET: u16 = 1;
/// IOMMU_VFIO_IOAS op: clear it.
pub const IOMMU_VFIO_IOAS_CLEAR: u16 = 2;

/// `struct iommu_vfio_ioas`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuVfioIoas {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// Input for SET, output for GET.
    pub ioas_id: u32,
    /// `IOMMU_VFIO_IOAS_*`.
    pub op: u16,
    /// Must be 0.
    pub reserved: u16,
}
const _: () = assert!(size_of::<IommuVfioIoas>() == 12);
cmd!(IommuVfioIoas, IOMMU_VFIO_IOAS, reserved, u16);

/// IOMMU_HWPT_ALLOC flag: the HWPT may be the parent of nested HWPTs.
pub const IOMMU_HWPT_ALLOC_NEST_PARENT: u32 = 1 << 0;
/// IOMMU_HWPT_ALLOC flag: the domain must support dirty tracking.
pub const IOMMU_HWPT_ALLOC_DIRTY_TRACKING: u32 = 1 << 1;
/// IOMMU_HWPT_ALLOC flag: `fault_id` names a fault queue.
pub const IOMMU_HWPT_FAULT_ID_VALID: u32 = 1 << 2;

/// Stage-1 flag of [`IommuHwptVtdS1`]: supervisor requests.
pub const IOMMU_VTD_S1_SRE: u64 = 1 << 0;
/// Stage-1 flag of [`IommuHwptVtdS1`]: extended access flag.
pub const IOMMU_VTD_S1_EAFE: u64 = 1 << 1;
/// Stage-1 flag of [`IommuHwptVtdS1`]: write protect.
pub const IOMMU_VTD_S1_WPE: u64 = 1 << 2;

/// `struct iommu_hwpt_vtd_s1`: Intel VT-d stage-1 page table data.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwptVtdS1 {
    /// `IOMMU_VTD_S1_*`.
    pub flags: u64,
    /// Base address of the stage-1 table.
    pub pgtbl_addr: u64,
    /// Address width of the stage-1 table.
    pub addr_width: u32,
    /// Must be 0.
    pub reserved: u32,
}
const _: () = assert!(size_of::<IommuHwptVtdS1>() == 24);

/// HWPT data type: none (a kernel-managed paging HWPT).
pub const IOMMU_HWPT_DATA_NONE: u32 = 0;
/// HWPT data type: Intel VT-d stage 1.
pub const IOMMU_HWPT_DATA_VTD_S1: u32 = 1;

/// `struct iommu_hwpt_alloc`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwptAlloc {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// `IOMMU_HWPT_ALLOC_*` / `IOMMU_HWPT_FAULT_ID_VALID`.
    pub flags: u32,
    /// The device the HWPT is for.
    pub dev_id: u32,
    /// An IOAS (paging HWPT) or a nest-parent paging HWPT (nested HWPT).
    pub pt_id: u32,
    /// Output: the new HWPT.
    pub out_hwpt_id: u32,
    /// Must be 0.
    pub reserved: u32,
    /// `IOMMU_HWPT_DATA_*`.
    pub data_type: u32,
    /// Length of the data at `data_uptr`.
    pub data_len: u32,
    /// User pointer to the type-specific data.
    pub data_uptr: u64,
    /// Fault queue object (with `IOMMU_HWPT_FAULT_ID_VALID`).
    pub fault_id: u32,
    /// Must be 0.
    pub reserved2: u32,
}
const _: () = assert!(size_of::<IommuHwptAlloc>() == 48);
cmd!(IommuHwptAlloc, IOMMU_HWPT_ALLOC, reserved, u32);

/// VT-d hardware info flag: erratum 772415 (no read-only maps in nest parents).
pub const IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17: u32 = 1 << 0;

/// `struct iommu_hw_info_vtd`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwInfoVtd {
    /// `IOMMU_HW_INFO_VTD_*`.
    pub flags: u32,
    /// Must be 0.
    pub reserved: u32,
    /// The capability register.
    pub cap_reg: u64,
    /// The extended capability register.
    pub ecap_reg: u64,
}
const _: () = assert!(size_of::<IommuHwInfoVtd>() == 24);

/// Hardware info type: none (output of drivers without hardware info).
pub const IOMMU_HW_INFO_TYPE_NONE: u32 = 0;
/// Hardware info type: the driver's default (input).
pub const IOMMU_HW_INFO_TYPE_DEFAULT: u32 = 0;
/// Hardware info type: Intel VT-d.
pub const IOMMU_HW_INFO_TYPE_INTEL_VTD: u32 = 1;

/// IOMMU_GET_HW_INFO flag: `data_type` is an input naming the type asked for (a later
/// addition the 6.12 stable selftests send).
pub const IOMMU_HW_INFO_FLAG_INPUT_TYPE: u32 = 1 << 0;

/// Hardware capability: dirty tracking.
pub const IOMMU_HW_CAP_DIRTY_TRACKING: u64 = 1 << 0;
/// Hardware capability: PCI PASID execute permission.
pub const IOMMU_HW_CAP_PCI_PASID_EXEC: u64 = 1 << 1;
/// Hardware capability: PCI PASID privileged mode.
pub const IOMMU_HW_CAP_PCI_PASID_PRIV: u64 = 1 << 2;

/// `struct iommu_hw_info`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwInfo {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// `IOMMU_HW_INFO_FLAG_*`.
    pub flags: u32,
    /// The device to query.
    pub dev_id: u32,
    /// Input: size of the user buffer; output: size of the data the kernel has.
    pub data_len: u32,
    /// User pointer to the buffer for the type-specific data.
    pub data_uptr: u64,
    /// `in_data_type` (with `IOMMU_HW_INFO_FLAG_INPUT_TYPE`) / `out_data_type`: the
    /// `IOMMU_HW_INFO_TYPE_*` asked for / reported.
    pub data_type: u32,
    /// Output: log2 of the number of PASIDs (0: no PASID support).
    pub out_max_pasid_log2: u8,
    /// Must be 0.
    pub reserved: [u8; 3],
    /// Output: `IOMMU_HW_CAP_*`.
    pub out_capabilities: u64,
}
const _: () = assert!(size_of::<IommuHwInfo>() == 40);
cmd!(IommuHwInfo, IOMMU_GET_HW_INFO, reserved, [u8; 3]);

/// IOMMU_HWPT_SET_DIRTY_TRACKING flag: enable (clear: disable).
pub const IOMMU_HWPT_DIRTY_TRACKING_ENABLE: u32 = 1;

/// `struct iommu_hwpt_set_dirty_tracking`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwptSetDirtyTracking {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// `IOMMU_HWPT_DIRTY_TRACKING_ENABLE` or 0.
    pub flags: u32,
    /// The paging HWPT.
    pub hwpt_id: u32,
    /// Must be 0 (the 6.12 kernel does not check it).
    pub reserved: u32,
}
const _: () = assert!(size_of::<IommuHwptSetDirtyTracking>() == 16);
cmd!(
    IommuHwptSetDirtyTracking,
    IOMMU_HWPT_SET_DIRTY_TRACKING,
    reserved,
    u32
);

/// IOMMU_HWPT_GET_DIRTY_BITMAP flag: read the dirty bits without clearing them.
pub const IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: u32 = 1;

/// `struct iommu_hwpt_get_dirty_bitmap`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwptGetDirtyBitmap {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// The paging HWPT.
    pub hwpt_id: u32,
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP_*`.
    pub flags: u32,
    /// Must be 0.
    pub reserved: u32,
    /// IOVA of the bitmap's first bit.
    pub iova: u64,
    /// Bytes of IOVA covered.
    pub length: u64,
    /// IOVA bytes per bit.
    pub page_size: u64,
    /// User pointer to the bitmap (bit n: `data[n / 64] >> (n % 64)` as u64 words).
    pub data: u64,
}
const _: () = assert!(size_of::<IommuHwptGetDirtyBitmap>() == 48);
cmd!(
    IommuHwptGetDirtyBitmap,
    IOMMU_HWPT_GET_DIRTY_BITMAP,
    data,
    u64
);

/// Invalidation data type: Intel VT-d stage 1.
pub const IOMMU_HWPT_INVALIDATE_DATA_VTD_S1: u32 = 0;
/// VT-d invalidation flag: leaf entries only.
pub const IOMMU_VTD_INV_FLAGS_LEAF: u32 = 1 << 0;

/// `struct iommu_hwpt_vtd_s1_invalidate`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwptVtdS1Invalidate {
    /// First address.
    pub addr: u64,
    /// Number of 4 KiB pages.
    pub npages: u64,
    /// `IOMMU_VTD_INV_FLAGS_*`.
    pub flags: u32,
    /// Must be 0.
    pub reserved: u32,
}
const _: () = assert!(size_of::<IommuHwptVtdS1Invalidate>() == 24);

/// `struct iommu_hwpt_invalidate`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwptInvalidate {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// The nested HWPT.
    pub hwpt_id: u32,
    /// User pointer to the array of requests.
    pub data_uptr: u64,
    /// Type of the requests (driver-specific).
    pub data_type: u32,
    /// Size of one request.
    pub entry_len: u32,
    /// Input: number of requests; output: number handled.
    pub entry_num: u32,
    /// Must be 0.
    pub reserved: u32,
}
const _: () = assert!(size_of::<IommuHwptInvalidate>() == 32);
cmd!(IommuHwptInvalidate, IOMMU_HWPT_INVALIDATE, reserved, u32);

/// Page fault flag: `pasid` is valid.
pub const IOMMU_PGFAULT_FLAGS_PASID_VALID: u32 = 1 << 0;
/// Page fault flag: last page of the group.
pub const IOMMU_PGFAULT_FLAGS_LAST_PAGE: u32 = 1 << 1;
/// Page fault permission: read.
pub const IOMMU_PGFAULT_PERM_READ: u32 = 1 << 0;
/// Page fault permission: write.
pub const IOMMU_PGFAULT_PERM_WRITE: u32 = 1 << 1;
/// Page fault permission: execute.
pub const IOMMU_PGFAULT_PERM_EXEC: u32 = 1 << 2;
/// Page fault permission: privileged.
pub const IOMMU_PGFAULT_PERM_PRIV: u32 = 1 << 3;

/// `struct iommu_hwpt_pgfault`: one fault as read from a fault queue file.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwptPgfault {
    /// `IOMMU_PGFAULT_FLAGS_*`.
    pub flags: u32,
    /// The faulting device.
    pub dev_id: u32,
    /// The PASID (with `PASID_VALID`).
    pub pasid: u32,
    /// Page request group index.
    pub grpid: u32,
    /// `IOMMU_PGFAULT_PERM_*`.
    pub perm: u32,
    /// Must be 0.
    pub reserved: u32,
    /// The faulting address.
    pub addr: u64,
    /// Length of the fault.
    pub length: u32,
    /// Identifies the group in the response.
    pub cookie: u32,
}
const _: () = assert!(size_of::<IommuHwptPgfault>() == 40);

/// Page response code: success.
pub const IOMMUFD_PAGE_RESP_SUCCESS: u32 = 0;
/// Page response code: invalid.
pub const IOMMUFD_PAGE_RESP_INVALID: u32 = 1;

/// `struct iommu_hwpt_page_response`: written to a fault queue file.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwptPageResponse {
    /// The `cookie` of the fault answered.
    pub cookie: u32,
    /// `IOMMUFD_PAGE_RESP_*`.
    pub code: u32,
}
const _: () = assert!(size_of::<IommuHwptPageResponse>() == 8);

/// `struct iommu_fault_alloc`.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuFaultAlloc {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// Must be 0.
    pub flags: u32,
    /// Output: the fault object.
    pub out_fault_id: u32,
    /// Output: the fault queue's file descriptor.
    pub out_fault_fd: u32,
}
const _: () = assert!(size_of::<IommuFaultAlloc>() == 16);
cmd!(IommuFaultAlloc, IOMMU_FAULT_QUEUE_ALLOC, out_fault_fd, u32);

// ---------------------------------------------------------------------------------------------
// The selftest interface (drivers/iommu/iommufd/iommufd_test.h).
// ---------------------------------------------------------------------------------------------

/// Test op: reserve an IOVA range in an IOAS.
pub const IOMMU_TEST_OP_ADD_RESERVED: u32 = 1;
/// Test op: create a mock device bound and attached to an IOAS/HWPT.
pub const IOMMU_TEST_OP_MOCK_DOMAIN: u32 = 2;
/// Test op: check a mock domain's mappings against user memory.
pub const IOMMU_TEST_OP_MD_CHECK_MAP: u32 = 3;
/// Test op: check page reference counts.
pub const IOMMU_TEST_OP_MD_CHECK_REFS: u32 = 4;
/// Test op: create an access object (returned as a file descriptor).
pub const IOMMU_TEST_OP_CREATE_ACCESS: u32 = 5;
/// Test op: unpin pages pinned by ACCESS_PAGES.
pub const IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: u32 = 6;
/// Test op: pin pages through an access.
pub const IOMMU_TEST_OP_ACCESS_PAGES: u32 = 7;
/// Test op: read/write through an access.
pub const IOMMU_TEST_OP_ACCESS_RW: u32 = 8;
/// Test op: set the temporary memory limit of the pinning code.
pub const IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: u32 = 9;
/// Test op: replace a mock device's page table.
pub const IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: u32 = 10;
/// Test op: move an access to another IOAS.
pub const IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: u32 = 11;
/// Test op: MOCK_DOMAIN with device flags.
pub const IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: u32 = 12;
/// Test op: set dirty bits in a mock domain.
pub const IOMMU_TEST_OP_DIRTY: u32 = 13;
/// Test op: check an IOTLB entry of a mock nested domain.
pub const IOMMU_TEST_OP_MD_CHECK_IOTLB: u32 = 14;
/// Test op: trigger an I/O page fault.
pub const IOMMU_TEST_OP_TRIGGER_IOPF: u32 = 15;

/// First IOVA of the mock domain's aperture.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// Last IOVA of the mock domain's aperture.
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;

/// CREATE_ACCESS flag: the access needs write permission.
pub const MOCK_FLAGS_ACCESS_WRITE: u32 = 1 << 0;
/// CREATE_ACCESS flag: syzkaller IOVA conversion.
pub const MOCK_FLAGS_ACCESS_SYZ: u32 = 1 << 16;
/// ACCESS_RW flag: write (else read).
pub const MOCK_ACCESS_RW_WRITE: u32 = 1 << 0;
/// ACCESS_RW flag: take the slow path.
pub const MOCK_ACCESS_RW_SLOW_PATH: u32 = 1 << 2;
/// CREATE_ACCESS flag: the access pins pages (needs an unmap callback).
pub const MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: u32 = 1 << 0;
/// Mock device flag: its IOMMU cannot track dirty pages.
pub const MOCK_FLAGS_DEVICE_NO_DIRTY: u32 = 1 << 0;
/// Mock device flag: its domains support 1 MiB IOVA pages.
pub const MOCK_FLAGS_DEVICE_HUGE_IOVA: u32 = 1 << 1;
/// Mock device flag: PASID capable (used by the 6.12 stable selftests).
pub const MOCK_FLAGS_DEVICE_PASID: u32 = 1 << 2;
/// PASID width of a PASID-capable mock device (used by the 6.12 stable selftests).
pub const MOCK_PASID_WIDTH: u8 = 20;
/// Highest IOTLB id of a mock nested domain.
pub const MOCK_NESTED_DOMAIN_IOTLB_ID_MAX: u32 = 3;
/// Number of IOTLB entries of a mock nested domain.
pub const MOCK_NESTED_DOMAIN_IOTLB_NUM: u32 = 4;

/// `struct iommu_test_cmd`. The kernel's anonymous union is `payload`: decode it with the
/// payload struct of `op` (`TestCmd*::read_from_prefix(payload.as_bytes())`).
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuTestCmd {
    /// sizeof the struct as the caller knows it.
    pub size: u32,
    /// `IOMMU_TEST_OP_*`.
    pub op: u32,
    /// The object the op is about.
    pub id: u32,
    /// Must be 0.
    pub reserved: u32,
    /// The op's payload (the union, 8-byte aligned, 48 bytes).
    pub payload: [u64; 6],
    /// The last field (the struct's minimum size ends here).
    pub last: u32,
    /// Tail padding of the C struct.
    pub pad: u32,
}
const _: () = assert!(size_of::<IommuTestCmd>() == 72);
const _: () = assert!(offset_of!(IommuTestCmd, payload) == 16);
const _: () = assert!(offset_of!(IommuTestCmd, last) == 64);
cmd!(IommuTestCmd, IOMMU_TEST_CMD, last, u32);

macro_rules! payload {
    ($(#[$m:meta])* $name:ident, $size:expr, { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        const _: () = assert!(size_of::<$name>() == $size);
        const _: () = assert!(size_of::<$name>() <= size_of::<[u64; 6]>());
    };
}

payload!(
    /// Payload of IOMMU_TEST_OP_ADD_RESERVED.
    TestCmdAddReserved, 16, {
    /// First IOVA.
    start: u64,
    /// Bytes.
    length: u64,
});
payload!(
    /// Payload of IOMMU_TEST_OP_MOCK_DOMAIN.
    TestCmdMockDomain, 12, {
    /// Output: the selftest device object.
    out_stdev_id: u32,
    /// Output: the HWPT it is attached to.
    out_hwpt_id: u32,
    /// Output: the bound device object.
    out_idev_id: u32,
});
payload!(
    /// Payload of IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS.
    TestCmdMockDomainFlags, 16, {
    /// Output: the selftest device object.
    out_stdev_id: u32,
    /// Output: the HWPT it is attached to.
    out_hwpt_id: u32,
    /// Output: the bound device object.
    out_idev_id: u32,
    /// `MOCK_FLAGS_DEVICE_*`.
    dev_flags: u32,
});
payload!(
    /// Payload of IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE.
    TestCmdMockDomainReplace, 4, {
    /// Input: the IOAS/HWPT; output: the HWPT attached.
    pt_id: u32,
});
payload!(
    /// Payload of IOMMU_TEST_OP_MD_CHECK_MAP.
    TestCmdCheckMap, 24, {
    /// First IOVA.
    iova: u64,
    /// Bytes.
    length: u64,
    /// User memory the range must map.
    uptr: u64,
});
payload!(
    /// Payload of IOMMU_TEST_OP_MD_CHECK_REFS.
    TestCmdCheckRefs, 24, {
    /// Bytes.
    length: u64,
    /// User memory.
    uptr: u64,
    /// Expected reference count.
    refs: u32,
    /// Padding.
    pad: u32,
});
payload!(
    /// Payload of IOMMU_TEST_OP_CREATE_ACCESS.
    TestCmdCreateAccess, 8, {
    /// Output: the access's file descriptor.
    out_access_fd: u32,
    /// `MOCK_FLAGS_ACCESS_CREATE_*`.
    flags: u32,
});
payload!(
    /// Payload of IOMMU_TEST_OP_DESTROY_ACCESS_PAGES.
    TestCmdDestroyAccessPages, 4, {
    /// The pins to drop.
    access_pages_id: u32,
});
payload!(
    /// Payload of IOMMU_TEST_OP_ACCESS_PAGES.
    TestCmdAccessPages, 32, {
    /// `MOCK_FLAGS_ACCESS_*`.
    flags: u32,
    /// Output: identifies the pins.
    out_access_pages_id: u32,
    /// First IOVA.
    iova: u64,
    /// Bytes.
    length: u64,
    /// User memory the pages must be.
    uptr: u64,
});
payload!(
    /// Payload of IOMMU_TEST_OP_ACCESS_RW.
    TestCmdAccessRw, 32, {
    /// First IOVA.
    iova: u64,
    /// Bytes.
    length: u64,
    /// User buffer.
    uptr: u64,
    /// `MOCK_ACCESS_RW_*`.
    flags: u32,
    /// Padding.
    pad: u32,
});
payload!(
    /// Payload of IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT.
    TestCmdMemoryLimit, 4, {
    /// The limit.
    limit: u32,
});
payload!(
    /// Payload of IOMMU_TEST_OP_ACCESS_REPLACE_IOAS.
    TestCmdAccessReplaceIoas, 4, {
    /// The new IOAS.
    ioas_id: u32,
});
payload!(
    /// Payload of IOMMU_TEST_OP_DIRTY.
    TestCmdDirty, 48, {
    /// Flags.
    flags: u32,
    /// Padding.
    pad: u32,
    /// First IOVA.
    iova: u64,
    /// Bytes.
    length: u64,
    /// IOVA bytes per bit.
    page_size: u64,
    /// User bitmap of the units to mark dirty.
    uptr: u64,
    /// Output: number of units marked.
    out_nr_dirty: u64,
});
payload!(
    /// Payload of IOMMU_TEST_OP_MD_CHECK_IOTLB.
    TestCmdCheckIotlb, 8, {
    /// IOTLB entry index.
    id: u32,
    /// Expected value.
    iotlb: u32,
});
payload!(
    /// Payload of IOMMU_TEST_OP_TRIGGER_IOPF.
    TestCmdTriggerIopf, 24, {
    /// The device.
    dev_id: u32,
    /// The PASID.
    pasid: u32,
    /// Page request group.
    grpid: u32,
    /// `IOMMU_PGFAULT_PERM_*`.
    perm: u32,
    /// The faulting address.
    addr: u64,
});

/// Hardware info type of the mock IOMMU.
pub const IOMMU_HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;
/// The value of [`IommuTestHwInfo::test_reg`].
pub const IOMMU_HW_INFO_SELFTEST_REGVAL: u32 = 0xdead_beef;

/// `struct iommu_test_hw_info`: the mock IOMMU's hardware info data.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuTestHwInfo {
    /// Always 0.
    pub flags: u32,
    /// [`IOMMU_HW_INFO_SELFTEST_REGVAL`].
    pub test_reg: u32,
}
const _: () = assert!(size_of::<IommuTestHwInfo>() == 8);

/// HWPT data type of the mock driver's nested domains.
pub const IOMMU_HWPT_DATA_SELFTEST: u32 = 0xdead;
/// The IOTLB value tests put in [`IommuHwptSelftest::iotlb`].
pub const IOMMU_TEST_IOTLB_DEFAULT: u32 = 0x0bad_beef;

/// `struct iommu_hwpt_selftest`: the mock nested domain's stage-1 data.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwptSelftest {
    /// Initial value of each IOTLB entry.
    pub iotlb: u32,
}
const _: () = assert!(size_of::<IommuHwptSelftest>() == 4);

/// Invalidation data type of the mock driver.
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// An invalidation data type the mock driver refuses.
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0x0dad_beef;
/// Mock invalidation flag: all IOTLB entries (`iotlb_id` ignored).
pub const IOMMU_TEST_INVALIDATE_FLAG_ALL: u32 = 1 << 0;

/// `struct iommu_hwpt_invalidate_selftest`: one mock invalidation request.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IommuHwptInvalidateSelftest {
    /// `IOMMU_TEST_INVALIDATE_FLAG_*`.
    pub flags: u32,
    /// The IOTLB entry (0..=3).
    pub iotlb_id: u32,
}
const _: () = assert!(size_of::<IommuHwptInvalidateSelftest>() == 8);

#[cfg(test)]
mod tests {
    use super::*;
    use iommufd_bindings::iommufd as b;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        assert_eq!(IOMMU_DESTROY, 15232);
        assert_eq!(IOMMU_IOAS_ALLOC, 15233);
        assert_eq!(IOMMU_IOAS_ALLOW_IOVAS, 15234);
        assert_eq!(IOMMU_IOAS_COPY, 15235);
        assert_eq!(IOMMU_IOAS_IOVA_RANGES, 15236);
        assert_eq!(IOMMU_IOAS_MAP, 15237);
        assert_eq!(IOMMU_IOAS_UNMAP, 15238);
        assert_eq!(IOMMU_OPTION, 15239);
        assert_eq!(IOMMU_VFIO_IOAS, 15240);
        assert_eq!(IOMMU_HWPT_ALLOC, 15241);
        assert_eq!(IOMMU_GET_HW_INFO, 15242);
        assert_eq!(IOMMU_HWPT_SET_DIRTY_TRACKING, 15243);
        assert_eq!(IOMMU_HWPT_GET_DIRTY_BITMAP, 15244);
        assert_eq!(IOMMU_HWPT_INVALIDATE, 15245);
        assert_eq!(IOMMU_FAULT_QUEUE_ALLOC, 15246);
        assert_eq!(IOMMU_TEST_CMD, 0x3ba0);
    }

    #[test]
    fn command_numbers_match_the_bindings_crate() {
        assert_eq!(IOMMUFD_TYPE, u32::from(b::IOMMUFD_TYPE));
        assert_eq!(IOMMUFD_CMD_BASE, b::IOMMUFD_CMD_BASE);
        assert_eq!(IOMMUFD_CMD_DESTROY, b::IOMMUFD_CMD_DESTROY);
        assert_eq!(IOMMUFD_CMD_IOAS_ALLOC, b::IOMMUFD_CMD_IOAS_ALLOC);
        assert_eq!(
            IOMMUFD_CMD_IOAS_ALLOW_IOVAS,
            b::IOMMUFD_CMD_IOAS_ALLOW_IOVAS
        );
        assert_eq!(IOMMUFD_CMD_IOAS_COPY, b::IOMMUFD_CMD_IOAS_COPY);
        assert_eq!(
            IOMMUFD_CMD_IOAS_IOVA_RANGES,
            b::IOMMUFD_CMD_IOAS_IOVA_RANGES
        );
        assert_eq!(IOMMUFD_CMD_IOAS_MAP, b::IOMMUFD_CMD_IOAS_MAP);
        assert_eq!(IOMMUFD_CMD_IOAS_UNMAP, b::IOMMUFD_CMD_IOAS_UNMAP);
        assert_eq!(IOMMUFD_CMD_OPTION, b::IOMMUFD_CMD_OPTION);
        assert_eq!(IOMMUFD_CMD_VFIO_IOAS, b::IOMMUFD_CMD_VFIO_IOAS);
        assert_eq!(IOMMUFD_CMD_HWPT_ALLOC, b::IOMMUFD_CMD_HWPT_ALLOC);
        assert_eq!(IOMMUFD_CMD_GET_HW_INFO, b::IOMMUFD_CMD_GET_HW_INFO);
        assert_eq!(
            IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING,
            b::IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING
        );
        assert_eq!(
            IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP,
            b::IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP
        );
        assert_eq!(IOMMUFD_CMD_HWPT_INVALIDATE, b::IOMMUFD_CMD_HWPT_INVALIDATE);
        assert_eq!(
            IOMMUFD_CMD_FAULT_QUEUE_ALLOC,
            b::IOMMUFD_CMD_FAULT_QUEUE_ALLOC
        );
    }

    #[test]
    fn struct_sizes_match_the_bindings_crate() {
        assert_eq!(size_of::<IommuDestroy>(), size_of::<b::iommu_destroy>());
        assert_eq!(
            size_of::<IommuIoasAlloc>(),
            size_of::<b::iommu_ioas_alloc>()
        );
        assert_eq!(
            size_of::<IommuIovaRange>(),
            size_of::<b::iommu_iova_range>()
        );
        assert_eq!(
            size_of::<IommuIoasIovaRanges>(),
            size_of::<b::iommu_ioas_iova_ranges>()
        );
        assert_eq!(
            size_of::<IommuIoasAllowIovas>(),
            size_of::<b::iommu_ioas_allow_iovas>()
        );
        assert_eq!(size_of::<IommuIoasMap>(), size_of::<b::iommu_ioas_map>());
        assert_eq!(size_of::<IommuIoasCopy>(), size_of::<b::iommu_ioas_copy>());
        assert_eq!(
            size_of::<IommuIoasUnmap>(),
            size_of::<b::iommu_ioas_unmap>()
        );
        assert_eq!(size_of::<IommuOption>(), size_of::<b::iommu_option>());
        assert_eq!(size_of::<IommuVfioIoas>(), size_of::<b::iommu_vfio_ioas>());
        assert_eq!(
            size_of::<IommuHwptVtdS1>(),
            size_of::<b::iommu_hwpt_vtd_s1>()
        );
        assert_eq!(
            size_of::<IommuHwptAlloc>(),
            size_of::<b::iommu_hwpt_alloc>()
        );
        assert_eq!(
            size_of::<IommuHwInfoVtd>(),
            size_of::<b::iommu_hw_info_vtd>()
        );
        assert_eq!(size_of::<IommuHwInfo>(), size_of::<b::iommu_hw_info>());
        assert_eq!(
            size_of::<IommuHwptSetDirtyTracking>(),
            size_of::<b::iommu_hwpt_set_dirty_tracking>()
        );
        assert_eq!(
            size_of::<IommuHwptGetDirtyBitmap>(),
            size_of::<b::iommu_hwpt_get_dirty_bitmap>()
        );
        assert_eq!(
            size_of::<IommuHwptVtdS1Invalidate>(),
            size_of::<b::iommu_hwpt_vtd_s1_invalidate>()
        );
        assert_eq!(
            size_of::<IommuHwptInvalidate>(),
            size_of::<b::iommu_hwpt_invalidate>()
        );
        assert_eq!(
            size_of::<IommuHwptPgfault>(),
            size_of::<b::iommu_hwpt_pgfault>()
        );
        assert_eq!(
            size_of::<IommuHwptPageResponse>(),
            size_of::<b::iommu_hwpt_page_response>()
        );
        assert_eq!(
            size_of::<IommuFaultAlloc>(),
            size_of::<b::iommu_fault_alloc>()
        );
    }

    #[test]
    fn hw_info_layout_matches_the_bindings_crate() {
        assert_eq!(
            offset_of!(IommuHwInfo, data_type),
            offset_of!(b::iommu_hw_info, __bindgen_anon_1)
        );
        assert_eq!(
            offset_of!(IommuHwInfo, out_max_pasid_log2),
            offset_of!(b::iommu_hw_info, out_max_pasid_log2)
        );
        assert_eq!(
            offset_of!(IommuHwInfo, out_capabilities),
            offset_of!(b::iommu_hw_info, out_capabilities)
        );
        assert_eq!(
            IOMMU_HW_INFO_FLAG_INPUT_TYPE,
            b::iommufd_hw_info_flags_IOMMU_HW_INFO_FLAG_INPUT_TYPE
        );
    }

    #[test]
    fn minimum_sizes_are_the_end_of_the_first_versions_last_field() {
        assert_eq!(IommuDestroy::MIN_SIZE, 8);
        assert_eq!(IommuIoasAlloc::MIN_SIZE, 12);
        assert_eq!(IommuIoasIovaRanges::MIN_SIZE, 32);
        assert_eq!(IommuIoasAllowIovas::MIN_SIZE, 24);
        assert_eq!(IommuIoasMap::MIN_SIZE, 40);
        assert_eq!(IommuIoasCopy::MIN_SIZE, 40);
        assert_eq!(IommuIoasUnmap::MIN_SIZE, 24);
        assert_eq!(IommuOption::MIN_SIZE, 24);
        assert_eq!(IommuVfioIoas::MIN_SIZE, 12);
        assert_eq!(IommuHwptAlloc::MIN_SIZE, 24);
        assert_eq!(IommuHwInfo::MIN_SIZE, 32);
        assert_eq!(IommuHwptSetDirtyTracking::MIN_SIZE, 16);
        assert_eq!(IommuHwptGetDirtyBitmap::MIN_SIZE, 48);
        assert_eq!(IommuHwptInvalidate::MIN_SIZE, 32);
        assert_eq!(IommuFaultAlloc::MIN_SIZE, 16);
        assert_eq!(IommuTestCmd::MIN_SIZE, 68);
    }

    #[test]
    fn structs_round_trip_through_bytes_little_endian() {
        let m = IommuIoasMap {
            size: 40,
            flags: IOMMU_IOAS_MAP_READABLE,
            ioas_id: 3,
            reserved: 0,
            user_va: 0x1000,
            length: 0x2000,
            iova: 0x3000,
        };
        let bytes = m.as_bytes();
        assert_eq!(&bytes[..4], &40u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &0x1000u64.to_le_bytes());
        assert_eq!(IommuIoasMap::read_from_bytes(bytes), Ok(m));
    }

    #[test]
    fn test_cmd_payloads_decode_from_the_union() {
        let mut c = IommuTestCmd::default();
        let d = TestCmdDirty {
            flags: 0,
            pad: 0,
            iova: 1,
            length: 2,
            page_size: 3,
            uptr: 4,
            out_nr_dirty: 5,
        };
        c.payload.as_mut_bytes().copy_from_slice(d.as_bytes());
        let (back, _) = TestCmdDirty::read_from_prefix(c.payload.as_bytes()).unwrap();
        assert_eq!(back, d);
        let (mock, _) = TestCmdMockDomain::read_from_prefix(c.payload.as_bytes()).unwrap();
        assert_eq!(mock.out_stdev_id, 0);
    }
}
