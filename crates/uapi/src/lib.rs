//! The Linux ioctl ABI of `/dev/iommu` and `/dev/vfio` (Linux 6.12), decoded onto the engine.
//!
//! Each kind of file has its own dispatcher (ioctl numbers of different file kinds collide, so
//! dispatch is by file kind first, then number). A handler reads the caller's argument struct
//! through a [`uiommu_platform::memory::UserMemory`] — the caller's own memory — so that a bad
//! pointer is EFAULT and never a crash, checks it in the kernel's order, calls the engine and
//! writes the reply back. Errors leave as a Linux errno (`i32`, positive).
//!
//! - [`abi`]: the ABI structs (with compile-time size checks) and ioctl numbers.
//! - [`ucmd`]: the size-extensible command protocol (leading `size`, short struct EINVAL,
//!   non-zero tail E2BIG, reply truncated to the caller's size).
//! - [`iommufd`]: the `/dev/iommu` file.
//!
//! This crate contains no `unsafe`; the FFI edge is the front-end (preload library).

#![forbid(unsafe_code)]

pub mod abi;
pub mod iommufd;
pub mod ucmd;

/// A Linux errno (positive), what a failed ioctl leaves in `errno`.
pub type Errno = i32;
