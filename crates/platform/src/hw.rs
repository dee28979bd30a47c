//! The emulated IOMMU hardware: domains, context entries, the IOTLB and the fault log.
//!
//! Each requester id ([`Rid`]) has a context entry naming the domain its DMA is translated by.
//! Domains are blocking (every access faults), identity (IOVA = physical address; the kernel's
//! default domain for DMA drivers), paging (a [`PageTable`]) or nested (a stage-1 over a paging
//! parent, as the selftest mock models it: translation goes through the parent).
//!
//! The IOTLB caches translations per (domain, IOVA page). Every change that could make a cached
//! translation stale invalidates it before returning: `unmap` drops the domain's entries for the
//! range, a context-entry change drops the requester's entries, freeing a domain drops all of
//! its entries. So after `unmap` returns, no device can reach the unmapped IOVAs (invariant I3).
//!
//! Every failed translation is recorded ([`FaultRecord`]) and can be read back.

use crate::addr::{Iova, PhysAddr};
use crate::pagetable::{Access, PageTable, Prot, Translation};
use crate::topology::DeviceId;

/// A requester id: the bus/device/function (plus segment) a device's DMA carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rid(pub u32);

/// Identifies a domain in the IOMMU.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u32);

/// What to build a domain from.
#[derive(Debug)]
pub enum DomainSpec {
    /// Every DMA faults.
    Blocking,
    /// DMA addresses are physical addresses.
    Identity,
    /// DMA is translated by this page table.
    Paging(Box<dyn PageTable>),
    /// A nested stage-1 over the paging domain `parent`; `data` is the format's opaque state
    /// (for the selftest mock: its IOTLB entry values).
    Nested {
        /// The paging domain that does the translation.
        parent: DomainId,
        /// Format-specific stage-1 data.
        data: Vec<u32>,
    },
}

/// The kind of a domain.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DomainKind {
    /// Every DMA faults.
    Blocking,
    /// IOVA = physical address.
    Identity,
    /// Translated by a page table.
    Paging,
    /// Stage-1 over a paging parent.
    Nested,
}

/// Why a DMA access faulted.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FaultReason {
    /// The requester has no context entry, or its domain is blocking.
    Blocked,
    /// The IOVA is not mapped in the domain.
    NotMapped,
    /// The mapping does not allow this access (e.g. a write to a read-only mapping).
    Permission,
    /// The translation gave a physical address that holds no pinned memory, or the program's
    /// memory there is gone.
    BadPhysical,
}

/// One recorded fault.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// The device that issued the access.
    pub device: DeviceId,
    /// The requester id the access carried.
    pub rid: Rid,
    /// The faulting IOVA.
    pub iova: Iova,
    /// Read or write.
    pub access: Access,
    /// Why it faulted.
    pub reason: FaultReason,
}

/// Why a hardware operation was refused. Nothing changed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HwError {
    /// No such domain.
    #[error("no domain {0:?}")]
    NoDomain(DomainId),
    /// The domain is not a paging domain.
    #[error("domain {0:?} has no page table")]
    NotPaging(DomainId),
    /// The domain is still used by a context entry or a nested child.
    #[error("domain {0:?} is in use")]
    InUse(DomainId),
    /// The page table refused the operation.
    #[error(transparent)]
    PageTable(#[from] crate::pagetable::PageTableError),
}

/// The IOMMU: domains, context entries, IOTLB, fault log.
#[derive(Debug, Default)]
pub struct Iommu {
    _todo: (),
}

impl Iommu {
    /// An IOMMU with no domains and no context entries.
    pub fn new() -> Iommu {
        todo!("helper: hw.rs")
    }
    /// Create a domain.
    pub fn alloc_domain(&mut self, _spec: DomainSpec) -> Result<DomainId, HwError> {
        todo!("helper: hw.rs")
    }
    /// Free a domain. `InUse` while a context entry or a nested domain refers to it.
    pub fn free_domain(&mut self, _id: DomainId) -> Result<(), HwError> {
        todo!("helper: hw.rs")
    }
    /// The kind of a domain.
    pub fn domain_kind(&self, _id: DomainId) -> Option<DomainKind> {
        todo!("helper: hw.rs")
    }
    /// The page table of a paging domain (the parent's for a nested one).
    pub fn page_table(&self, _id: DomainId) -> Option<&dyn PageTable> {
        todo!("helper: hw.rs")
    }
    /// The page table of a paging domain, mutably (IOTLB coherence is the caller's business only
    /// for dirty-bit operations; use [`Iommu::map`]/[`Iommu::unmap`] to change mappings).
    pub fn page_table_mut(&mut self, _id: DomainId) -> Option<&mut (dyn PageTable + 'static)> {
        todo!("helper: hw.rs")
    }
    /// The stage-1 data of a nested domain.
    pub fn nested_data_mut(&mut self, _id: DomainId) -> Option<&mut Vec<u32>> {
        todo!("helper: hw.rs")
    }
    /// Map into a paging domain.
    pub fn map(
        &mut self,
        _id: DomainId,
        _iova: Iova,
        _pa: PhysAddr,
        _len: u64,
        _prot: Prot,
    ) -> Result<(), HwError> {
        todo!("helper: hw.rs")
    }
    /// Unmap from a paging domain and invalidate the IOTLB for the range; returns bytes unmapped.
    pub fn unmap(&mut self, _id: DomainId, _iova: Iova, _len: u64) -> Result<u64, HwError> {
        todo!("helper: hw.rs")
    }
    /// Point `rid`'s context entry at `domain` (or clear it) and invalidate its IOTLB entries.
    pub fn set_context(&mut self, _rid: Rid, _domain: Option<DomainId>) -> Result<(), HwError> {
        todo!("helper: hw.rs")
    }
    /// The domain `rid`'s context entry names.
    pub fn context(&self, _rid: Rid) -> Option<DomainId> {
        todo!("helper: hw.rs")
    }
    /// How many context entries and nested children refer to the domain.
    pub fn domain_users(&self, _id: DomainId) -> usize {
        todo!("helper: hw.rs")
    }
    /// Translate one access, through the IOTLB. A failure is recorded in the fault log (with
    /// `device`) and returned. A successful write marks the leaf dirty.
    pub fn translate(
        &mut self,
        _device: DeviceId,
        _rid: Rid,
        _iova: Iova,
        _access: Access,
    ) -> Result<Translation, FaultReason> {
        todo!("helper: hw.rs")
    }
    /// Record a fault found after translation (e.g. the physical address held no memory).
    pub fn record_fault(&mut self, _fault: FaultRecord) {
        todo!("helper: hw.rs")
    }
    /// The fault log, oldest first.
    pub fn faults(&self) -> &[FaultRecord] {
        todo!("helper: hw.rs")
    }
    /// Empty the fault log, returning what it held.
    pub fn take_faults(&mut self) -> Vec<FaultRecord> {
        todo!("helper: hw.rs")
    }
    /// Number of entries in the IOTLB.
    pub fn iotlb_entries(&self) -> usize {
        todo!("helper: hw.rs")
    }
    /// Invalidate the whole IOTLB.
    pub fn flush_iotlb(&mut self) {
        todo!("helper: hw.rs")
    }
    /// Ids of all live domains.
    pub fn domains(&self) -> Vec<DomainId> {
        todo!("helper: hw.rs")
    }
}
