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
//! - [`fault`]: fault queues (IOMMU_FAULT_QUEUE_ALLOC and the queue's file).
//! - [`selftest`]: `IOMMU_TEST_CMD`, the kernel selftest's command, on the mock IOMMU.
//!
//! This crate contains no `unsafe`; the FFI edge is the front-end (preload library).

#![forbid(unsafe_code)]

pub mod abi;
pub mod fault;
pub mod file;
pub mod iommufd;
pub mod level;
pub mod selftest;
pub mod sysfs_tree;
pub mod trace;
pub mod ucmd;
pub mod vfio_abi;
pub mod vfio_device;
// VFIO type1 on an iommufd (the kernel's `vfio_compat.c`) and the legacy group path.
pub mod vfio_compat;
pub mod vfio_group;

/// A Linux errno (positive), what a failed ioctl leaves in `errno`.
pub type Errno = i32;

/// What a handler needs from the front-end's table of open files.
pub trait FdTable {
    /// The security context behind an open `/dev/iommu` file descriptor of the caller (EBADF
    /// when `fd` is not open, EBADFD when it is not an iommufd, as the kernel's
    /// `iommufd_ctx_from_fd`).
    fn iommufd(&self, fd: i32) -> Result<uiommu_core::Context, Errno>;
    /// A function that signals the caller's eventfd `fd` (for VFIO interrupts); EBADF when `fd`
    /// is not an open eventfd.
    fn eventfd(&self, fd: i32) -> Result<Box<dyn Fn() + Send + Sync>, Errno>;
    /// Give the caller a new file descriptor for `file` (the selftest's access objects, fault
    /// queues); closing the last descriptor drops it. The default refuses (EOPNOTSUPP), for
    /// front-ends that cannot create files.
    fn install(&self, file: std::sync::Arc<dyn EngineFile>, cloexec: bool) -> Result<i32, Errno> {
        let _ = (file, cloexec);
        Err(95)
    }
    /// Take back a descriptor [`FdTable::install`] just gave, before the caller learnt its
    /// number (the reply naming it could not be written: the kernel never installs such a
    /// descriptor). The default leaves it open.
    fn uninstall(&self, fd: i32) {
        let _ = fd;
    }
    /// The file behind a descriptor made by [`FdTable::install`]; EBADF otherwise.
    fn file(&self, fd: i32) -> Result<std::sync::Arc<dyn EngineFile>, Errno> {
        let _ = fd;
        Err(9)
    }
}

/// A file the engine creates for the caller (see [`FdTable::install`]).
pub trait EngineFile: Send + Sync + 'static {
    /// For downcasting to the concrete file type.
    fn as_any(&self) -> &dyn std::any::Any;
    /// `read(2)` on the file (EINVAL unless the file supports it).
    fn read(&self, caller: &Caller<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
        let _ = (caller, buf);
        Err(22)
    }
    /// `write(2)` on the file (EINVAL unless the file supports it).
    fn write(&self, caller: &Caller<'_>, data: &[u8]) -> Result<usize, Errno> {
        let _ = (caller, data);
        Err(22)
    }
}

/// The caller of an ioctl as a handler sees it: its memory (where the argument pointers point)
/// and its file table.
pub struct Caller<'a> {
    /// The caller's memory; every user pointer is read and written through it.
    pub mem: &'a dyn uiommu_platform::memory::UserMemory,
    /// The caller's open files.
    pub fds: &'a dyn FdTable,
}

impl Caller<'_> {
    /// Give the caller a new descriptor for `file` ([`FdTable::install`]). Making the file is a
    /// fault-injection site, as the kernel's allocation of a `struct file` is: ENOMEM.
    pub fn install(
        &self,
        file: std::sync::Arc<dyn EngineFile>,
        cloexec: bool,
    ) -> Result<i32, Errno> {
        use uiommu_platform::fault_inject::{check, Site};
        check(Site::Slab)?;
        self.fds.install(file, cloexec)
    }
}
