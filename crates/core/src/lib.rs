//! The iommufd engine: security contexts over the emulated platform.
//!
//! This crate implements the semantics of Linux 6.12's iommufd (and the IOMMU core's group
//! ownership beneath it) as a library: an [`Engine`] owns an emulated
//! [`uiommu_platform::Platform`]; each [`Context`] is one security context (one open
//! `/dev/iommu`) holding I/O address spaces, hardware page tables, bound devices and access
//! objects by id. The uAPI layer decodes ioctls onto these calls; a VMM may call them directly.
//!
//! Module map: [`object`] ids and two-phase creation; `group` DMA ownership and the driver
//! guard; [`engine`] the engine, contexts, IOAS operations and options; `device` bind, attach,
//! replace, detach, HWPTs; [`access`] access objects; [`coherency`] the revocable coherency
//! right; [`io_pagetable`] and [`pages`] the IOVA space and pinned pages; [`invariants`] the
//! checker of the security invariants; [`fault`] I/O page fault queues; [`selftest_support`]
//! the kernel selftest's mock-device objects and checks (`IOMMU_TEST_CMD`).

#![forbid(unsafe_code)]

pub mod abi_support;
pub mod access;
pub mod coherency;
mod compat_support;
mod device;
pub mod engine;
pub mod error;
pub mod fault;
mod group;
pub mod invariants;
pub mod io_pagetable;
mod ioas;
pub mod iova_alloc;
pub mod object;
pub mod pages;
pub mod selftest_support;
mod teardown;
mod vfio_support;

pub use access::AccessOps;
pub use coherency::CoherencyRight;
pub use device::HwptFlags;
pub use engine::{
    with_caller, with_caller_space, CallerCaps, Context, Engine, EngineConfig, GroupStatus,
    IovaRanges,
};
pub use error::{Error, Result};
pub use group::CtxId;
pub use io_pagetable::RwBuf;
pub use object::{ObjId, ObjType};

/// An object in a context's table.
#[derive(Debug)]
pub(crate) enum Object {
    Ioas(Box<engine::Ioas>),
    HwptPaging(device::HwptPaging),
    HwptNested(device::HwptNested),
    Device(device::DeviceObj),
    Access(access::AccessObj),
    Selftest(selftest_support::SelftestObj),
    Fault(fault::FaultObj),
}

impl Object {
    pub(crate) fn kind(&self) -> ObjType {
        match self {
            Object::Ioas(_) => ObjType::Ioas,
            Object::HwptPaging(_) => ObjType::HwptPaging,
            Object::HwptNested(_) => ObjType::HwptNested,
            Object::Device(_) => ObjType::Device,
            Object::Access(_) => ObjType::Access,
            Object::Selftest(_) => ObjType::Selftest,
            Object::Fault(_) => ObjType::Fault,
        }
    }
}
