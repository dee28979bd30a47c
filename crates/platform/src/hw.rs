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
//! How this model keeps that promise:
//! - IOTLB entries are tagged with the *paging* domain whose table produced them (a nested
//!   domain's translations are tagged with its parent), never with a requester. A requester
//!   reaches only entries of the domain its context entry names now, so a context-entry change
//!   makes its old translations unreachable at once, with no flush.
//! - `unmap` drops the domain's entries in the range, page by page for short ranges and by one
//!   scan of the (bounded) IOTLB for long ones; freeing a domain drops all its entries before
//!   its id can be reused.
//! - Misses are never cached, so `map` needs no invalidation.
//! - The IOTLB page ("granule") of a domain is its table's smallest page size, capped at
//!   4 KiB: 4 KiB for the radix format, 2 KiB for the selftest mock format, so one entry never
//!   covers two leaves.
//!
//! Other invariants: a context entry or nested domain only ever names a live domain (freeing
//! refuses while any refers to it); each domain's user count is exactly the number of context
//! entries naming it plus nested domains whose parent it is; the IOTLB holds at most
//! [`IOTLB_SLOTS`] entries (direct-mapped, a new entry evicts the one in its slot).
//!
//! Every failed translation is recorded ([`FaultRecord`]) and can be read back. The log keeps
//! the most recent records (at most [`FAULT_LOG_MAX`]; when full, the older half is dropped);
//! [`Iommu::faults_total`] counts every record ever made.

use crate::addr::{Iova, PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::ids::DeviceId;
pub use crate::ids::Rid;
use crate::memory::FastHashMap;
use crate::pagetable::{Access, PageTable, Prot, Translation};
use std::fmt;

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
    /// A page-table level (or the mock format's entry) could not be allocated: a fault site
    /// failed ([`crate::fault_inject`]).
    #[error("out of memory for the page table")]
    NoMemory,
}

/// Number of IOTLB entries (direct-mapped slots; a power of two).
pub const IOTLB_SLOTS: usize = 4096;
/// Most fault records the log keeps.
pub const FAULT_LOG_MAX: usize = 65536;
/// Ranges of at most this many IOTLB pages are invalidated page by page, longer ones by a scan.
const IOTLB_PAGEWISE_LIMIT: u64 = 256;
/// Tag of an empty IOTLB slot (never a domain id: ids stop below it).
const EMPTY: u32 = u32::MAX;

/// IOTLB hit and miss counters since the IOMMU was made.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct IotlbStats {
    /// Translations answered from the IOTLB.
    pub hits: u64,
    /// Translations that walked a page table (successfully or not).
    pub misses: u64,
}

#[derive(Debug)]
enum Body {
    Blocking,
    Identity,
    Paging(Box<dyn PageTable>),
    Nested { parent: DomainId, data: Vec<u32> },
}

#[derive(Debug)]
struct Domain {
    body: Body,
    /// Context entries naming the domain plus nested domains whose parent it is.
    users: usize,
    /// IOTLB entries tagged with the domain.
    iotlb_entries: usize,
    /// log2 of the IOTLB granule of translations through this domain (the parent's for nested).
    granule_shift: u32,
}

/// One IOTLB entry: IOVA granule `page` of `domain` translates to `pa` (the granule's base).
#[derive(Copy, Clone, Debug)]
struct Slot {
    domain: u32,
    prot: Prot,
    page: u64,
    pa: u64,
    leaf_size: u64,
}

const EMPTY_SLOT: Slot = Slot {
    domain: EMPTY,
    prot: Prot {
        read: false,
        write: false,
    },
    page: 0,
    pa: 0,
    leaf_size: 0,
};

#[inline]
fn slot_index(domain: u32, page: u64) -> usize {
    // The low 12 bits of the page pick the slot, so a window of consecutive pages never
    // collides; higher bits are folded in so that power-of-two strides (one access per 2 MiB,
    // per 1 GiB, ...) spread over the slots too; domains are offset from each other.
    let folded = page ^ (page >> 12) ^ (page >> 24) ^ (page >> 36) ^ (page >> 48);
    ((folded ^ u64::from(domain).wrapping_mul(0x9e37_79b9_7f4a_7c15)) as usize) & (IOTLB_SLOTS - 1)
}

/// The granule shift for a table with leaf sizes `sizes`: its smallest page, at most 4 KiB.
fn granule_shift_of(sizes: u64) -> u32 {
    if sizes == 0 {
        PAGE_SHIFT
    } else {
        sizes.trailing_zeros().min(PAGE_SHIFT)
    }
}

/// How a context entry's DMA is translated, worked out once when the entry is set (domain kinds
/// and nested parents never change while a context entry names the domain).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Route {
    /// No entry, or a blocking domain.
    Blocked,
    /// IOVA = physical address.
    Identity,
    /// Through the page table of paging domain `key`, cached in IOTLB granules of `1 << shift`.
    Table { key: u32, shift: u32 },
}

/// A context entry: the domain it names and how that domain translates.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Ctx {
    domain: DomainId,
    route: Route,
}

/// The IOMMU: domains, context entries, IOTLB, fault log.
pub struct Iommu {
    /// Domains by id; `None` for a freed id (listed in `free_ids`).
    domains: Vec<Option<Domain>>,
    free_ids: Vec<u32>,
    context: FastHashMap<Rid, Ctx>,
    /// The route of the requester that translated last (a one-entry cache in front of
    /// `context`; cleared whenever a context entry changes).
    last_route: Option<(Rid, Route)>,
    slots: Box<[Slot]>,
    iotlb_len: usize,
    stats: IotlbStats,
    faults: Vec<FaultRecord>,
    /// When each fault of `faults` was recorded (same order).
    fault_times: Vec<std::time::SystemTime>,
    faults_total: u64,
    /// What each device's DMA moved through the IOMMU.
    dma: FastHashMap<DeviceId, DmaCounters>,
}

/// What one device's DMA did through the IOMMU since the platform was made: the accesses
/// that were translated and completed, their bytes, and the faults it took.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DmaCounters {
    /// Completed reads of memory by the device.
    pub reads: u64,
    /// Their bytes.
    pub read_bytes: u64,
    /// Completed writes to memory by the device.
    pub writes: u64,
    /// Their bytes.
    pub write_bytes: u64,
    /// Accesses that faulted (recorded in the fault log).
    pub faults: u64,
}

impl fmt::Debug for Iommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iommu")
            .field("domains", &self.domains)
            .field("context", &self.context)
            .field("iotlb_entries", &self.iotlb_len)
            .field("iotlb_stats", &self.stats)
            .field("faults", &self.faults.len())
            .field("faults_total", &self.faults_total)
            .finish()
    }
}

impl Default for Iommu {
    fn default() -> Self {
        Iommu::new()
    }
}

impl Iommu {
    /// An IOMMU with no domains and no context entries.
    pub fn new() -> Iommu {
        Iommu {
            domains: Vec::new(),
            free_ids: Vec::new(),
            context: FastHashMap::default(),
            last_route: None,
            slots: vec![EMPTY_SLOT; IOTLB_SLOTS].into_boxed_slice(),
            iotlb_len: 0,
            stats: IotlbStats::default(),
            faults: Vec::new(),
            fault_times: Vec::new(),
            faults_total: 0,
            dma: FastHashMap::default(),
        }
    }

    /// Count a completed DMA access of `len` bytes by `dev` in direction `access`.
    pub fn count_dma(&mut self, dev: DeviceId, access: Access, len: u64) {
        let c = self.dma.entry(dev).or_default();
        match access {
            Access::Read => {
                c.reads += 1;
                c.read_bytes += len;
            }
            Access::Write => {
                c.writes += 1;
                c.write_bytes += len;
            }
        }
    }

    /// Every device's DMA counters, by device id.
    pub fn dma_counters(&self) -> Vec<(DeviceId, DmaCounters)> {
        let mut v: Vec<_> = self.dma.iter().map(|(&d, &c)| (d, c)).collect();
        v.sort_unstable_by_key(|&(d, _)| d);
        v
    }

    #[inline]
    fn dom(&self, id: DomainId) -> Option<&Domain> {
        self.domains.get(id.0 as usize).and_then(Option::as_ref)
    }

    #[inline]
    fn dom_mut(&mut self, id: DomainId) -> Option<&mut Domain> {
        self.domains.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    /// The domain whose page table translates for `id` (itself, or a nested domain's parent).
    fn table_owner(&self, id: DomainId) -> Option<DomainId> {
        match &self.dom(id)?.body {
            Body::Paging(_) => Some(id),
            Body::Nested { parent, .. } => Some(*parent),
            Body::Blocking | Body::Identity => None,
        }
    }

    /// Create a domain. A nested domain's parent must be a live paging domain (`NoDomain`,
    /// `NotPaging` otherwise); it counts as a user of the parent until freed.
    pub fn alloc_domain(&mut self, spec: DomainSpec) -> Result<DomainId, HwError> {
        let (body, granule_shift) = match spec {
            DomainSpec::Blocking => (Body::Blocking, PAGE_SHIFT),
            DomainSpec::Identity => (Body::Identity, PAGE_SHIFT),
            DomainSpec::Paging(pt) => {
                let shift = granule_shift_of(pt.page_sizes());
                (Body::Paging(pt), shift)
            }
            DomainSpec::Nested { parent, data } => {
                let p = self.dom(parent).ok_or(HwError::NoDomain(parent))?;
                if !matches!(p.body, Body::Paging(_)) {
                    return Err(HwError::NotPaging(parent));
                }
                (Body::Nested { parent, data }, p.granule_shift)
            }
        };
        let domain = Domain {
            body,
            users: 0,
            iotlb_entries: 0,
            granule_shift,
        };
        let parent = match &domain.body {
            Body::Nested { parent, .. } => Some(*parent),
            _ => None,
        };
        let id = match self.free_ids.pop() {
            Some(id) => {
                if let Some(slot) = self.domains.get_mut(id as usize) {
                    *slot = Some(domain);
                }
                id
            }
            None => {
                let id = u32::try_from(self.domains.len())
                    .ok()
                    .filter(|&id| id < EMPTY)
                    .ok_or(HwError::NoDomain(DomainId(EMPTY)))?;
                self.domains.push(Some(domain));
                id
            }
        };
        if let Some(p) = parent.and_then(|p| self.dom_mut(p)) {
            p.users += 1;
        }
        Ok(DomainId(id))
    }

    /// Free a domain. `InUse` while a context entry or a nested domain refers to it. Its IOTLB
    /// entries are dropped before the id can be reused.
    pub fn free_domain(&mut self, id: DomainId) -> Result<(), HwError> {
        let dom = self.dom(id).ok_or(HwError::NoDomain(id))?;
        if dom.users > 0 {
            return Err(HwError::InUse(id));
        }
        if let Body::Nested { parent, .. } = dom.body {
            if let Some(p) = self.dom_mut(parent) {
                p.users = p.users.saturating_sub(1);
            }
        }
        self.invalidate_domain(id);
        if let Some(slot) = self.domains.get_mut(id.0 as usize) {
            *slot = None;
        }
        self.free_ids.push(id.0);
        Ok(())
    }

    /// The kind of a domain.
    pub fn domain_kind(&self, id: DomainId) -> Option<DomainKind> {
        Some(match self.dom(id)?.body {
            Body::Blocking => DomainKind::Blocking,
            Body::Identity => DomainKind::Identity,
            Body::Paging(_) => DomainKind::Paging,
            Body::Nested { .. } => DomainKind::Nested,
        })
    }

    /// The page table of a paging domain (the parent's for a nested one).
    pub fn page_table(&self, id: DomainId) -> Option<&dyn PageTable> {
        match &self.dom(self.table_owner(id)?)?.body {
            Body::Paging(pt) => Some(pt.as_ref()),
            _ => None,
        }
    }

    /// The page table of a paging domain, mutably (IOTLB coherence is the caller's business only
    /// for dirty-bit operations; use [`Iommu::map`]/[`Iommu::unmap`] to change mappings).
    pub fn page_table_mut(&mut self, id: DomainId) -> Option<&mut (dyn PageTable + 'static)> {
        let owner = self.table_owner(id)?;
        match &mut self.dom_mut(owner)?.body {
            Body::Paging(pt) => Some(pt.as_mut()),
            _ => None,
        }
    }

    /// The stage-1 data of a nested domain.
    pub fn nested_data_mut(&mut self, id: DomainId) -> Option<&mut Vec<u32>> {
        match &mut self.dom_mut(id)?.body {
            Body::Nested { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The page table of paging domain `id` for a change, or why not.
    fn paging_table_mut(&mut self, id: DomainId) -> Result<&mut Box<dyn PageTable>, HwError> {
        match &mut self.dom_mut(id).ok_or(HwError::NoDomain(id))?.body {
            Body::Paging(pt) => Ok(pt),
            _ => Err(HwError::NotPaging(id)),
        }
    }

    /// Map into a paging domain. A zero or overflowing length is `InvalidRange`. No IOTLB work is
    /// needed: misses are never cached.
    pub fn map(
        &mut self,
        id: DomainId,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), HwError> {
        let pt = self.paging_table_mut(id)?;
        if crate::addr::inclusive_last(iova.0, len).is_none() {
            return Err(crate::pagetable::PageTableError::InvalidRange.into());
        }
        // The kernel's map allocates as it goes: page-table pages for a radix table, xarray
        // nodes for the selftest's mock format.
        let site = match pt.format() {
            crate::pagetable::PageTableFormat::Radix => {
                crate::fault_inject::Site::Pages { order: 0 }
            }
            crate::pagetable::PageTableFormat::Mock => crate::fault_inject::Site::Slab,
        };
        if crate::fault_inject::should_fail(site) {
            return Err(HwError::NoMemory);
        }
        pt.map(iova, pa, len, prot)?;
        Ok(())
    }

    /// Unmap from a paging domain and invalidate the IOTLB for the range; returns bytes unmapped.
    /// Zero length unmaps nothing; an overflowing range is `InvalidRange`.
    pub fn unmap(&mut self, id: DomainId, iova: Iova, len: u64) -> Result<u64, HwError> {
        let pt = self.paging_table_mut(id)?;
        if len == 0 {
            return Ok(0);
        }
        let last = crate::addr::inclusive_last(iova.0, len).ok_or(HwError::PageTable(
            crate::pagetable::PageTableError::InvalidRange,
        ))?;
        let bytes = pt.unmap(iova, len);
        self.invalidate_range(id, iova.0, last);
        Ok(bytes)
    }

    /// Drop `id`'s IOTLB entries for IOVAs `first..=last`: O(pages) for short ranges, one scan
    /// of the IOTLB for long ones, nothing when the domain has no entries.
    fn invalidate_range(&mut self, id: DomainId, first: u64, last: u64) {
        let Some(dom) = self.dom(id) else { return };
        if dom.iotlb_entries == 0 {
            return;
        }
        let shift = dom.granule_shift;
        let (p0, p1) = (first >> shift, last >> shift);
        let mut removed = 0usize;
        if p1 - p0 < IOTLB_PAGEWISE_LIMIT {
            for page in p0..=p1 {
                if let Some(s) = self.slots.get_mut(slot_index(id.0, page)) {
                    if s.domain == id.0 && s.page == page {
                        *s = EMPTY_SLOT;
                        removed += 1;
                    }
                }
            }
        } else {
            for s in self.slots.iter_mut() {
                if s.domain == id.0 && (p0..=p1).contains(&s.page) {
                    *s = EMPTY_SLOT;
                    removed += 1;
                }
            }
        }
        self.iotlb_len -= removed;
        if let Some(dom) = self.dom_mut(id) {
            dom.iotlb_entries -= removed;
        }
    }

    /// Drop all of `id`'s IOTLB entries.
    fn invalidate_domain(&mut self, id: DomainId) {
        self.invalidate_range(id, 0, u64::MAX);
    }

    /// Point `rid`'s context entry at `domain` (or clear it) and invalidate its IOTLB entries.
    ///
    /// IOTLB entries are tagged by domain, not requester, so from the moment the entry changes
    /// the requester can reach only the new domain's translations: nothing needs flushing (the
    /// old domain's entries stay valid for the other requesters that use it).
    pub fn set_context(&mut self, rid: Rid, domain: Option<DomainId>) -> Result<(), HwError> {
        let old = match domain {
            Some(d) => {
                let dom = self.dom(d).ok_or(HwError::NoDomain(d))?;
                let route = match &dom.body {
                    Body::Blocking => Route::Blocked,
                    Body::Identity => Route::Identity,
                    Body::Paging(_) => Route::Table {
                        key: d.0,
                        shift: dom.granule_shift,
                    },
                    Body::Nested { parent, .. } => Route::Table {
                        key: parent.0,
                        shift: dom.granule_shift,
                    },
                };
                self.context.insert(rid, Ctx { domain: d, route })
            }
            None => self.context.remove(&rid),
        }
        .map(|c| c.domain);
        self.last_route = None;
        if let Some(dom) = domain.and_then(|d| self.dom_mut(d)) {
            dom.users += 1;
        }
        if let Some(dom) = old.and_then(|d| self.dom_mut(d)) {
            dom.users = dom.users.saturating_sub(1);
        }
        Ok(())
    }

    /// The domain `rid`'s context entry names.
    pub fn context(&self, rid: Rid) -> Option<DomainId> {
        self.context.get(&rid).map(|c| c.domain)
    }

    /// How many context entries and nested children refer to the domain.
    pub fn domain_users(&self, id: DomainId) -> usize {
        self.dom(id).map_or(0, |d| d.users)
    }

    /// Translate one access, through the IOTLB. A failure is recorded in the fault log (with
    /// `device`) and returned. A successful write marks the leaf dirty.
    #[inline]
    pub fn translate(
        &mut self,
        device: DeviceId,
        rid: Rid,
        iova: Iova,
        access: Access,
    ) -> Result<Translation, FaultReason> {
        self.translate_quiet(rid, iova, access)
            .inspect_err(|&reason| {
                self.record_fault(FaultRecord {
                    device,
                    rid,
                    iova,
                    access,
                    reason,
                });
            })
    }

    /// [`Iommu::translate`] without recording a failure (the DMA path records faults itself, in
    /// IOVA order).
    ///
    /// The translation's `pa` is exact (granule base plus offset); `leaf_size` is the size of the
    /// leaf when it was walked (4 KiB for identity domains).
    #[inline]
    pub(crate) fn translate_quiet(
        &mut self,
        rid: Rid,
        iova: Iova,
        access: Access,
    ) -> Result<Translation, FaultReason> {
        let route = match self.last_route {
            Some((r, route)) if r == rid => route,
            _ => {
                let route = self.context.get(&rid).map_or(Route::Blocked, |c| c.route);
                self.last_route = Some((rid, route));
                route
            }
        };
        let (key, shift) = match route {
            Route::Table { key, shift } => (DomainId(key), shift),
            Route::Blocked => return Err(FaultReason::Blocked),
            Route::Identity => {
                return Ok(Translation {
                    pa: PhysAddr(iova.0),
                    prot: Prot::RW,
                    leaf_size: PAGE_SIZE,
                })
            }
        };
        let page = iova.0 >> shift;
        let off = iova.0 & ((1u64 << shift) - 1);
        let idx = slot_index(key.0, page);
        let (base, prot, leaf_size) = match self.slots.get(idx) {
            Some(s) if s.domain == key.0 && s.page == page => {
                self.stats.hits += 1;
                (s.pa, s.prot, s.leaf_size)
            }
            _ => {
                self.stats.misses += 1;
                let t = self
                    .page_table(key)
                    .and_then(|pt| pt.translate(iova))
                    .ok_or(FaultReason::NotMapped)?;
                let base = t.pa.0.wrapping_sub(off);
                self.fill(
                    idx,
                    key,
                    Slot {
                        domain: key.0,
                        prot: t.prot,
                        page,
                        pa: base,
                        leaf_size: t.leaf_size,
                    },
                );
                (base, t.prot, t.leaf_size)
            }
        };
        let allowed = match access {
            Access::Read => prot.read,
            Access::Write => prot.write,
        };
        if !allowed {
            return Err(FaultReason::Permission);
        }
        if access == Access::Write {
            if let Some(Domain {
                body: Body::Paging(pt),
                ..
            }) = self.dom_mut(key)
            {
                pt.mark_dirty(iova);
            }
        }
        Ok(Translation {
            pa: PhysAddr(base.wrapping_add(off)),
            prot,
            leaf_size,
        })
    }

    /// Put `slot` into IOTLB slot `idx`, evicting what was there.
    fn fill(&mut self, idx: usize, key: DomainId, slot: Slot) {
        let Some(s) = self.slots.get_mut(idx) else {
            return;
        };
        let evicted = s.domain;
        *s = slot;
        if evicted == EMPTY {
            self.iotlb_len += 1;
        } else if let Some(d) = self.dom_mut(DomainId(evicted)) {
            d.iotlb_entries -= 1;
        }
        if let Some(d) = self.dom_mut(key) {
            d.iotlb_entries += 1;
        }
    }

    /// Record a fault found after translation (e.g. the physical address held no memory).
    pub fn record_fault(&mut self, fault: FaultRecord) {
        if self.faults.len() >= FAULT_LOG_MAX {
            self.faults.drain(..FAULT_LOG_MAX / 2);
            let cut = self.fault_times.len().saturating_sub(self.faults.len());
            self.fault_times.drain(..cut);
        }
        self.dma.entry(fault.device).or_default().faults += 1;
        self.faults.push(fault);
        self.fault_times.push(std::time::SystemTime::now());
        self.faults_total += 1;
    }

    /// The fault log, oldest first (the most recent records; see the module header).
    pub fn faults(&self) -> &[FaultRecord] {
        &self.faults
    }

    /// Empty the fault log, returning what it held.
    pub fn take_faults(&mut self) -> Vec<FaultRecord> {
        self.fault_times.clear();
        std::mem::take(&mut self.faults)
    }

    /// The fault log with the time each fault was recorded, oldest first.
    pub fn fault_log(&self) -> Vec<(FaultRecord, std::time::SystemTime)> {
        self.faults
            .iter()
            .copied()
            .zip(self.fault_times.iter().copied())
            .collect()
    }

    /// Number of faults ever recorded, including those no longer in the log.
    pub fn faults_total(&self) -> u64 {
        self.faults_total
    }

    /// Number of entries in the IOTLB.
    pub fn iotlb_entries(&self) -> usize {
        self.iotlb_len
    }

    /// IOTLB entries that disagree with their domain's page table (the IOVA is no longer
    /// mapped, or maps elsewhere or with other rights): always empty when invalidation is right.
    /// Used by the invariant checker (I3).
    pub fn stale_iotlb_entries(&self) -> Vec<(DomainId, Iova)> {
        let mut stale = Vec::new();
        for s in self.slots.iter().filter(|s| s.domain != EMPTY) {
            let id = DomainId(s.domain);
            let Some(pt) = self.page_table(id) else {
                stale.push((id, Iova(s.page)));
                continue;
            };
            let shift = granule_shift_of(pt.page_sizes());
            let iova = Iova(s.page << shift);
            match pt.translate(iova) {
                Some(t) if t.pa.0 == s.pa && t.prot == s.prot => {}
                _ => stale.push((id, iova)),
            }
        }
        stale
    }

    /// IOTLB hit and miss counters.
    pub fn iotlb_stats(&self) -> IotlbStats {
        self.stats
    }

    /// Invalidate the whole IOTLB.
    pub fn flush_iotlb(&mut self) {
        self.slots.fill(EMPTY_SLOT);
        self.iotlb_len = 0;
        for d in self.domains.iter_mut().flatten() {
            d.iotlb_entries = 0;
        }
    }

    /// Ids of all live domains.
    pub fn domains(&self) -> Vec<DomainId> {
        self.domains
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .map(|(i, _)| DomainId(i as u32))
            .collect()
    }
}

/// A minimal page table for unit tests: a map of granules, with a shared walk counter.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::addr::{Iova, PhysAddr, Range};
    use crate::pagetable::{PageTable, PageTableError, PageTableFormat, Prot, Translation};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Granule → (pa, prot); every granule is its own leaf.
    #[derive(Debug)]
    pub(crate) struct TestTable {
        pub(crate) granule: u64,
        pub(crate) pages: BTreeMap<u64, (u64, Prot)>,
        pub(crate) dirty: BTreeSet<u64>,
        pub(crate) tracking: bool,
        pub(crate) walks: Arc<AtomicUsize>,
    }

    impl TestTable {
        pub(crate) fn new(granule: u64) -> (Box<TestTable>, Arc<AtomicUsize>) {
            let walks = Arc::new(AtomicUsize::new(0));
            let t = TestTable {
                granule,
                pages: BTreeMap::new(),
                dirty: BTreeSet::new(),
                tracking: false,
                walks: walks.clone(),
            };
            (Box::new(t), walks)
        }
    }

    impl PageTable for TestTable {
        fn format(&self) -> PageTableFormat {
            PageTableFormat::Mock
        }
        fn page_sizes(&self) -> u64 {
            self.granule
        }
        fn aperture(&self) -> Range {
            Range {
                start: 0,
                last: (1 << 48) - 1,
            }
        }
        fn map(
            &mut self,
            iova: Iova,
            pa: PhysAddr,
            len: u64,
            prot: Prot,
        ) -> Result<(), PageTableError> {
            let g = self.granule;
            if (iova.0 | pa.0 | len) & (g - 1) != 0 {
                return Err(PageTableError::Misaligned {
                    iova: iova.0,
                    pa: pa.0,
                    len,
                });
            }
            for i in 0..len / g {
                self.pages.insert(iova.0 + i * g, (pa.0 + i * g, prot));
            }
            Ok(())
        }
        fn unmap(&mut self, iova: Iova, len: u64) -> u64 {
            let last = iova.0.saturating_add(len - 1);
            let keys: Vec<u64> = self.pages.range(iova.0..=last).map(|(&k, _)| k).collect();
            for k in &keys {
                self.pages.remove(k);
            }
            keys.len() as u64 * self.granule
        }
        fn translate(&self, iova: Iova) -> Option<Translation> {
            self.walks.fetch_add(1, Ordering::Relaxed);
            let base = iova.0 - iova.0 % self.granule;
            let &(pa, prot) = self.pages.get(&base)?;
            Some(Translation {
                pa: PhysAddr(pa + iova.0 % self.granule),
                prot,
                leaf_size: self.granule,
            })
        }
        fn mark_dirty(&mut self, iova: Iova) {
            if self.tracking {
                self.dirty.insert(iova.0 - iova.0 % self.granule);
            }
        }
        fn set_dirty_tracking(&mut self, enable: bool) {
            self.tracking = enable;
        }
        fn dirty_tracking(&self) -> bool {
            self.tracking
        }
        fn read_and_clear_dirty(
            &mut self,
            iova: Iova,
            len: u64,
            keep: bool,
            report: &mut dyn FnMut(Iova),
        ) {
            let last = iova.0.saturating_add(len - 1);
            let hits: Vec<u64> = self.dirty.range(iova.0..=last).copied().collect();
            for h in hits {
                report(Iova(h));
                if !keep {
                    self.dirty.remove(&h);
                }
            }
        }
        fn mapped_bytes(&self) -> u64 {
            self.pages.len() as u64 * self.granule
        }
        fn table_bytes(&self) -> u64 {
            0
        }
        fn mappings(&self, iova: Iova, len: u64, out: &mut dyn FnMut(Iova, PhysAddr, u64, Prot)) {
            let last = iova.0.saturating_add(len - 1);
            for (&k, &(pa, prot)) in self.pages.range(iova.0..=last) {
                out(Iova(k), PhysAddr(pa), self.granule, prot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TestTable;
    use super::*;
    use crate::pagetable::radix::RadixPageTable;
    use crate::pagetable::PageTableError;
    use std::sync::atomic::Ordering;

    const DEV: DeviceId = DeviceId(7);
    const RID: Rid = Rid(0x100);

    /// An IOMMU with one paging domain (4 KiB test table) attached to `RID`.
    fn paging() -> (
        Iommu,
        DomainId,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let mut mmu = Iommu::new();
        let (pt, walks) = TestTable::new(PAGE_SIZE);
        let d = mmu.alloc_domain(DomainSpec::Paging(pt)).unwrap();
        mmu.set_context(RID, Some(d)).unwrap();
        (mmu, d, walks)
    }

    #[test]
    fn no_context_entry_faults_as_blocked_and_is_recorded() {
        let mut mmu = Iommu::new();
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x1000), Access::Read),
            Err(FaultReason::Blocked)
        );
        assert_eq!(
            mmu.faults(),
            &[FaultRecord {
                device: DEV,
                rid: RID,
                iova: Iova(0x1000),
                access: Access::Read,
                reason: FaultReason::Blocked
            }]
        );
    }

    #[test]
    fn blocking_domain_faults_every_access_and_records_it() {
        let mut mmu = Iommu::new();
        let d = mmu.alloc_domain(DomainSpec::Blocking).unwrap();
        mmu.set_context(RID, Some(d)).unwrap();
        for (i, access) in [Access::Read, Access::Write, Access::Read]
            .into_iter()
            .enumerate()
        {
            let iova = Iova(i as u64 * 0x1234);
            assert_eq!(
                mmu.translate(DEV, RID, iova, access),
                Err(FaultReason::Blocked)
            );
        }
        assert_eq!(mmu.faults().len(), 3);
        assert_eq!(mmu.faults()[1].access, Access::Write);
        assert_eq!(mmu.faults()[2].iova, Iova(0x2468));
        assert_eq!(mmu.iotlb_entries(), 0);
    }

    #[test]
    fn identity_domain_translates_iova_to_the_same_physical_address() {
        let mut mmu = Iommu::new();
        let d = mmu.alloc_domain(DomainSpec::Identity).unwrap();
        mmu.set_context(RID, Some(d)).unwrap();
        let t = mmu
            .translate(DEV, RID, Iova(0xdead_beef), Access::Write)
            .unwrap();
        assert_eq!((t.pa, t.prot), (PhysAddr(0xdead_beef), Prot::RW));
        assert!(mmu.faults().is_empty());
        assert_eq!(mmu.page_table(d).map(|_| ()), None);
    }

    #[test]
    fn paging_translation_keeps_the_sub_page_offset() {
        let (mut mmu, d, _) = paging();
        mmu.map(
            d,
            Iova(0x10_0000),
            PhysAddr(0x7700_0000),
            2 * PAGE_SIZE,
            Prot::RW,
        )
        .unwrap();
        for iova in [0x10_0000u64, 0x10_0abc, 0x10_1fff, 0x10_0abc] {
            let t = mmu.translate(DEV, RID, Iova(iova), Access::Read).unwrap();
            assert_eq!(t.pa, PhysAddr(0x7700_0000 + iova - 0x10_0000));
        }
    }

    #[test]
    fn unmapped_iova_faults_not_mapped() {
        let (mut mmu, d, _) = paging();
        mmu.map(
            d,
            Iova(0x10_0000),
            PhysAddr(0x7700_0000),
            PAGE_SIZE,
            Prot::RW,
        )
        .unwrap();
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x10_1000), Access::Read),
            Err(FaultReason::NotMapped)
        );
        assert_eq!(
            mmu.translate(DEV, RID, Iova(u64::MAX), Access::Read),
            Err(FaultReason::NotMapped)
        );
        assert_eq!(mmu.faults()[0].reason, FaultReason::NotMapped);
        assert_eq!(mmu.iotlb_entries(), 0, "misses are not cached");
    }

    #[test]
    fn write_to_read_only_mapping_faults_with_permission() {
        let (mut mmu, d, _) = paging();
        mmu.map(d, Iova(0x1000), PhysAddr(0x5000), PAGE_SIZE, Prot::RO)
            .unwrap();
        mmu.map(d, Iova(0x2000), PhysAddr(0x6000), PAGE_SIZE, Prot::WO)
            .unwrap();
        assert!(mmu.translate(DEV, RID, Iova(0x1000), Access::Read).is_ok());
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x1008), Access::Write),
            Err(FaultReason::Permission)
        );
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x2000), Access::Read),
            Err(FaultReason::Permission)
        );
        assert!(mmu.translate(DEV, RID, Iova(0x2000), Access::Write).is_ok());
        let reasons: Vec<_> = mmu
            .faults()
            .iter()
            .map(|f| (f.iova, f.access, f.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (Iova(0x1008), Access::Write, FaultReason::Permission),
                (Iova(0x2000), Access::Read, FaultReason::Permission)
            ]
        );
    }

    #[test]
    fn second_translation_of_a_page_hits_the_iotlb() {
        let (mut mmu, d, walks) = paging();
        mmu.map(d, Iova(0x1000), PhysAddr(0x5000), PAGE_SIZE, Prot::RW)
            .unwrap();
        mmu.translate(DEV, RID, Iova(0x1000), Access::Read).unwrap();
        mmu.translate(DEV, RID, Iova(0x1ff0), Access::Write)
            .unwrap();
        assert_eq!(walks.load(Ordering::Relaxed), 1);
        assert_eq!(mmu.iotlb_stats(), IotlbStats { hits: 1, misses: 1 });
        assert_eq!(mmu.iotlb_entries(), 1);
    }

    #[test]
    fn unmap_invalidates_iotlb_so_next_translation_faults() {
        let (mut mmu, d, _) = paging();
        mmu.map(d, Iova(0x1000), PhysAddr(0x5000), 4 * PAGE_SIZE, Prot::RW)
            .unwrap();
        for p in 0..4 {
            mmu.translate(DEV, RID, Iova(0x1000 + p * PAGE_SIZE), Access::Read)
                .unwrap();
        }
        assert_eq!(mmu.iotlb_entries(), 4);
        assert_eq!(mmu.unmap(d, Iova(0x2000), 2 * PAGE_SIZE), Ok(2 * PAGE_SIZE));
        assert_eq!(mmu.iotlb_entries(), 2);
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x2000), Access::Read),
            Err(FaultReason::NotMapped)
        );
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x3fff), Access::Read),
            Err(FaultReason::NotMapped)
        );
        assert!(mmu.translate(DEV, RID, Iova(0x4000), Access::Read).is_ok());
    }

    #[test]
    fn huge_unmap_invalidates_by_one_scan() {
        let mut mmu = Iommu::new();
        let d = mmu
            .alloc_domain(DomainSpec::Paging(Box::new(RadixPageTable::new())))
            .unwrap();
        mmu.set_context(RID, Some(d)).unwrap();
        mmu.map(
            d,
            Iova(0x4000_0000),
            PhysAddr(0x8000_0000),
            1 << 30,
            Prot::RW,
        )
        .unwrap();
        for p in 0..100u64 {
            mmu.translate(DEV, RID, Iova(0x4000_0000 + p * 0x10_0000), Access::Read)
                .unwrap();
        }
        assert_eq!(mmu.iotlb_entries(), 100);
        let t = std::time::Instant::now();
        assert_eq!(mmu.unmap(d, Iova(0), 1 << 47), Ok(1 << 30));
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
        assert_eq!(mmu.iotlb_entries(), 0);
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x4000_0000), Access::Read),
            Err(FaultReason::NotMapped)
        );
    }

    #[test]
    fn radix_table_translations_are_exact_and_cached_per_4k_page() {
        let mut mmu = Iommu::new();
        let d = mmu
            .alloc_domain(DomainSpec::Paging(Box::new(RadixPageTable::new())))
            .unwrap();
        mmu.set_context(RID, Some(d)).unwrap();
        mmu.map(
            d,
            Iova(0x20_0000),
            PhysAddr(0x4020_0000),
            0x20_0000,
            Prot::RW,
        )
        .unwrap();
        let t = mmu
            .translate(DEV, RID, Iova(0x21_2345), Access::Write)
            .unwrap();
        assert_eq!((t.pa, t.leaf_size), (PhysAddr(0x4021_2345), 0x20_0000));
        let t = mmu
            .translate(DEV, RID, Iova(0x21_2fff), Access::Read)
            .unwrap();
        assert_eq!(t.pa, PhysAddr(0x4021_2fff));
        assert_eq!(mmu.iotlb_stats().hits, 1);
        // Unmapping part of the 2 MiB leaf splits it; the rest still translates.
        assert_eq!(mmu.unmap(d, Iova(0x21_2000), PAGE_SIZE), Ok(PAGE_SIZE));
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x21_2000), Access::Read),
            Err(FaultReason::NotMapped)
        );
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x21_3000), Access::Read)
                .unwrap()
                .pa,
            PhysAddr(0x4021_3000)
        );
    }

    #[test]
    fn successful_write_marks_dirty_and_read_does_not() {
        let mut mmu = Iommu::new();
        let d = mmu
            .alloc_domain(DomainSpec::Paging(Box::new(RadixPageTable::new())))
            .unwrap();
        mmu.set_context(RID, Some(d)).unwrap();
        mmu.map(d, Iova(0x1000), PhysAddr(0x1000), 2 * PAGE_SIZE, Prot::RW)
            .unwrap();
        mmu.page_table_mut(d).unwrap().set_dirty_tracking(true);
        mmu.translate(DEV, RID, Iova(0x1000), Access::Read).unwrap();
        mmu.translate(DEV, RID, Iova(0x2010), Access::Write)
            .unwrap();
        // Also on an IOTLB hit.
        mmu.translate(DEV, RID, Iova(0x1000), Access::Write)
            .unwrap();
        let mut dirty = Vec::new();
        mmu.page_table_mut(d)
            .unwrap()
            .read_and_clear_dirty(Iova(0), 1 << 20, false, &mut |i| dirty.push(i));
        assert_eq!(dirty, vec![Iova(0x1000), Iova(0x2000)]);
    }

    #[test]
    fn context_change_makes_old_domain_translations_unreachable() {
        let (mut mmu, d, _) = paging();
        mmu.map(d, Iova(0x1000), PhysAddr(0x5000), PAGE_SIZE, Prot::RW)
            .unwrap();
        mmu.translate(DEV, RID, Iova(0x1000), Access::Read).unwrap();
        let b = mmu.alloc_domain(DomainSpec::Blocking).unwrap();
        mmu.set_context(RID, Some(b)).unwrap();
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x1000), Access::Read),
            Err(FaultReason::Blocked)
        );
        mmu.set_context(RID, None).unwrap();
        assert_eq!(mmu.context(RID), None);
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x1000), Access::Read),
            Err(FaultReason::Blocked)
        );
        assert_eq!((mmu.domain_users(d), mmu.domain_users(b)), (0, 0));
    }

    #[test]
    fn freed_domain_id_reused_does_not_see_stale_iotlb_entries() {
        let (mut mmu, d, _) = paging();
        mmu.map(d, Iova(0x1000), PhysAddr(0x5000), PAGE_SIZE, Prot::RW)
            .unwrap();
        mmu.translate(DEV, RID, Iova(0x1000), Access::Read).unwrap();
        mmu.set_context(RID, None).unwrap();
        mmu.free_domain(d).unwrap();
        assert_eq!(mmu.iotlb_entries(), 0);
        let (pt, _) = TestTable::new(PAGE_SIZE);
        let d2 = mmu.alloc_domain(DomainSpec::Paging(pt)).unwrap();
        assert_eq!(d2, d, "ids are reused");
        mmu.set_context(RID, Some(d2)).unwrap();
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x1000), Access::Read),
            Err(FaultReason::NotMapped)
        );
    }

    #[test]
    fn free_domain_in_use_is_refused() {
        let (mut mmu, d, _) = paging();
        assert_eq!(mmu.free_domain(d), Err(HwError::InUse(d)));
        mmu.set_context(RID, None).unwrap();
        let n = mmu
            .alloc_domain(DomainSpec::Nested {
                parent: d,
                data: vec![0; 2],
            })
            .unwrap();
        assert_eq!(mmu.domain_users(d), 1);
        assert_eq!(mmu.free_domain(d), Err(HwError::InUse(d)));
        mmu.free_domain(n).unwrap();
        assert_eq!(mmu.domain_users(d), 0);
        mmu.free_domain(d).unwrap();
        assert_eq!(mmu.free_domain(d), Err(HwError::NoDomain(d)));
        assert!(mmu.domains().is_empty());
    }

    #[test]
    fn domain_users_counts_context_entries_and_nested_children() {
        let (mut mmu, d, _) = paging();
        mmu.set_context(Rid(1), Some(d)).unwrap();
        mmu.set_context(Rid(1), Some(d)).unwrap();
        let n = mmu
            .alloc_domain(DomainSpec::Nested {
                parent: d,
                data: vec![],
            })
            .unwrap();
        mmu.set_context(Rid(2), Some(n)).unwrap();
        assert_eq!(mmu.domain_users(d), 3);
        assert_eq!(mmu.domain_users(n), 1);
        assert_eq!(
            mmu.set_context(Rid(3), Some(DomainId(99))),
            Err(HwError::NoDomain(DomainId(99)))
        );
        assert_eq!(mmu.domain_users(DomainId(99)), 0);
    }

    #[test]
    fn nested_domain_translates_through_parent_and_parent_unmap_invalidates() {
        let (mut mmu, d, _) = paging();
        let n = mmu
            .alloc_domain(DomainSpec::Nested {
                parent: d,
                data: vec![1, 2],
            })
            .unwrap();
        assert_eq!(mmu.domain_kind(n), Some(DomainKind::Nested));
        assert_eq!(mmu.nested_data_mut(n), Some(&mut vec![1, 2]));
        assert!(mmu.nested_data_mut(d).is_none());
        assert!(mmu.page_table(n).is_some());
        mmu.map(d, Iova(0x1000), PhysAddr(0x9000), PAGE_SIZE, Prot::RW)
            .unwrap();
        mmu.set_context(Rid(2), Some(n)).unwrap();
        assert_eq!(
            mmu.translate(DEV, Rid(2), Iova(0x1010), Access::Read)
                .unwrap()
                .pa,
            PhysAddr(0x9010)
        );
        mmu.unmap(d, Iova(0x1000), PAGE_SIZE).unwrap();
        assert_eq!(
            mmu.translate(DEV, Rid(2), Iova(0x1010), Access::Read),
            Err(FaultReason::NotMapped)
        );
        // Nested domains have no mappings of their own, and need a paging parent.
        assert_eq!(
            mmu.map(n, Iova(0), PhysAddr(0), PAGE_SIZE, Prot::RW),
            Err(HwError::NotPaging(n))
        );
        assert_eq!(
            mmu.alloc_domain(DomainSpec::Nested {
                parent: n,
                data: vec![]
            }),
            Err(HwError::NotPaging(n))
        );
        assert_eq!(
            mmu.alloc_domain(DomainSpec::Nested {
                parent: DomainId(42),
                data: vec![]
            }),
            Err(HwError::NoDomain(DomainId(42)))
        );
    }

    #[test]
    fn map_and_unmap_refuse_non_paging_domains_and_bad_ranges() {
        let (mut mmu, d, _) = paging();
        let b = mmu.alloc_domain(DomainSpec::Blocking).unwrap();
        assert_eq!(
            mmu.map(b, Iova(0), PhysAddr(0), PAGE_SIZE, Prot::RW),
            Err(HwError::NotPaging(b))
        );
        assert_eq!(mmu.unmap(b, Iova(0), PAGE_SIZE), Err(HwError::NotPaging(b)));
        assert_eq!(
            mmu.unmap(DomainId(50), Iova(0), PAGE_SIZE),
            Err(HwError::NoDomain(DomainId(50)))
        );
        let invalid = Err(HwError::PageTable(PageTableError::InvalidRange));
        assert_eq!(mmu.map(d, Iova(0), PhysAddr(0), 0, Prot::RW), invalid);
        assert_eq!(
            mmu.map(d, Iova(!0xfffu64), PhysAddr(0), 2 * PAGE_SIZE, Prot::RW),
            invalid
        );
        assert_eq!(mmu.unmap(d, Iova(u64::MAX), 2), invalid.map(|()| 0));
        assert_eq!(mmu.unmap(d, Iova(0), 0), Ok(0));
        assert!(matches!(
            mmu.map(d, Iova(0x1001), PhysAddr(0), PAGE_SIZE, Prot::RW),
            Err(HwError::PageTable(PageTableError::Misaligned { .. }))
        ));
    }

    #[test]
    fn iotlb_is_bounded_and_evicts() {
        let (mut mmu, d, walks) = paging();
        let pages = 2 * IOTLB_SLOTS as u64;
        mmu.map(d, Iova(0), PhysAddr(0), pages * PAGE_SIZE, Prot::RW)
            .unwrap();
        for p in 0..pages {
            mmu.translate(DEV, RID, Iova(p * PAGE_SIZE), Access::Read)
                .unwrap();
        }
        assert_eq!(mmu.iotlb_entries(), IOTLB_SLOTS);
        assert_eq!(walks.load(Ordering::Relaxed), pages as usize);
        // The most recent pages are still cached.
        mmu.translate(DEV, RID, Iova((pages - 1) * PAGE_SIZE), Access::Read)
            .unwrap();
        assert_eq!(walks.load(Ordering::Relaxed), pages as usize);
        mmu.flush_iotlb();
        assert_eq!(mmu.iotlb_entries(), 0);
        // Per-domain counts were reset too: an unmap after the flush still keeps counts sane.
        mmu.translate(DEV, RID, Iova(0), Access::Read).unwrap();
        mmu.unmap(d, Iova(0), pages * PAGE_SIZE).unwrap();
        assert_eq!(mmu.iotlb_entries(), 0);
    }

    #[test]
    fn eviction_across_domains_keeps_counts_exact() {
        let (mut mmu, d, _) = paging();
        let (pt, _) = TestTable::new(PAGE_SIZE);
        let e = mmu.alloc_domain(DomainSpec::Paging(pt)).unwrap();
        mmu.set_context(Rid(9), Some(e)).unwrap();
        let pages = IOTLB_SLOTS as u64;
        mmu.map(d, Iova(0), PhysAddr(0), pages * PAGE_SIZE, Prot::RW)
            .unwrap();
        mmu.map(e, Iova(0), PhysAddr(0), pages * PAGE_SIZE, Prot::RW)
            .unwrap();
        for p in 0..pages {
            mmu.translate(DEV, RID, Iova(p * PAGE_SIZE), Access::Read)
                .unwrap();
            mmu.translate(DEV, Rid(9), Iova(p * PAGE_SIZE), Access::Read)
                .unwrap();
        }
        assert_eq!(mmu.iotlb_entries(), IOTLB_SLOTS);
        mmu.unmap(d, Iova(0), pages * PAGE_SIZE).unwrap();
        let left = mmu.iotlb_entries();
        mmu.unmap(e, Iova(0), pages * PAGE_SIZE).unwrap();
        assert_eq!(mmu.iotlb_entries(), 0);
        assert!(left > 0);
    }

    #[test]
    fn two_kilobyte_granule_tables_are_cached_per_granule() {
        let mut mmu = Iommu::new();
        let (pt, _) = TestTable::new(2048);
        let d = mmu.alloc_domain(DomainSpec::Paging(pt)).unwrap();
        mmu.set_context(RID, Some(d)).unwrap();
        mmu.map(d, Iova(0x1000), PhysAddr(0x8800), 2048, Prot::RW)
            .unwrap();
        mmu.map(d, Iova(0x1800), PhysAddr(0x3000), 2048, Prot::RO)
            .unwrap();
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x1004), Access::Write)
                .unwrap()
                .pa,
            PhysAddr(0x8804)
        );
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x1804), Access::Read)
                .unwrap()
                .pa,
            PhysAddr(0x3004)
        );
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x1808), Access::Write),
            Err(FaultReason::Permission)
        );
        mmu.unmap(d, Iova(0x1800), 2048).unwrap();
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x1804), Access::Read),
            Err(FaultReason::NotMapped)
        );
        assert!(mmu.translate(DEV, RID, Iova(0x1004), Access::Read).is_ok());
    }

    #[test]
    fn strided_accesses_spread_over_the_iotlb() {
        let mut mmu = Iommu::new();
        let d = mmu
            .alloc_domain(DomainSpec::Paging(Box::new(RadixPageTable::new())))
            .unwrap();
        mmu.set_context(RID, Some(d)).unwrap();
        mmu.map(d, Iova(0), PhysAddr(0), 64 << 30, Prot::RW)
            .unwrap();
        for p in 0..1024u64 {
            mmu.translate(DEV, RID, Iova(p << 21), Access::Read)
                .unwrap();
        }
        assert_eq!(
            mmu.iotlb_entries(),
            1024,
            "one access per 2 MiB never collides"
        );
        mmu.flush_iotlb();
        for p in 0..64u64 {
            mmu.translate(DEV, RID, Iova(p << 30), Access::Read)
                .unwrap();
        }
        assert_eq!(
            mmu.iotlb_entries(),
            64,
            "one access per 1 GiB never collides"
        );
    }

    #[test]
    fn mock_format_domain_translates_each_2k_granule_on_its_own() {
        use crate::pagetable::mock::MockPageTable;
        let mut mmu = Iommu::new();
        let d = mmu
            .alloc_domain(DomainSpec::Paging(Box::new(MockPageTable::new())))
            .unwrap();
        mmu.set_context(RID, Some(d)).unwrap();
        let base = 0x100_0000u64;
        mmu.map(d, Iova(base), PhysAddr(0x5_0800), 2048, Prot::RW)
            .unwrap();
        mmu.map(d, Iova(base + 2048), PhysAddr(0x9_0000), 2048, Prot::RO)
            .unwrap();
        let t = mmu
            .translate(DEV, RID, Iova(base + 5), Access::Write)
            .unwrap();
        assert_eq!(t.pa, PhysAddr(0x5_0805));
        let t = mmu
            .translate(DEV, RID, Iova(base + 2048 + 5), Access::Read)
            .unwrap();
        assert_eq!(t.pa, PhysAddr(0x9_0005));
        assert_eq!(
            mmu.translate(DEV, RID, Iova(base + 2048), Access::Write),
            Err(FaultReason::Permission)
        );
        assert_eq!(mmu.iotlb_entries(), 2);
        mmu.unmap(d, Iova(base), 2048).unwrap();
        assert_eq!(
            mmu.translate(DEV, RID, Iova(base + 5), Access::Read),
            Err(FaultReason::NotMapped)
        );
        assert!(mmu
            .translate(DEV, RID, Iova(base + 2048), Access::Read)
            .is_ok());
        assert_eq!(
            mmu.translate(DEV, RID, Iova(0x1000), Access::Read),
            Err(FaultReason::NotMapped)
        );
    }

    #[test]
    fn fault_log_is_bounded_and_counts_all() {
        let mut mmu = Iommu::new();
        let n = FAULT_LOG_MAX as u64 + 10;
        for i in 0..n {
            let _ = mmu.translate(DEV, RID, Iova(i), Access::Read);
        }
        assert!(mmu.faults().len() <= FAULT_LOG_MAX);
        assert_eq!(mmu.faults_total(), n);
        assert_eq!(mmu.faults().last().map(|f| f.iova), Some(Iova(n - 1)));
        let taken = mmu.take_faults();
        assert!(!taken.is_empty());
        assert!(mmu.faults().is_empty());
        assert_eq!(mmu.faults_total(), n);
    }

    #[test]
    fn domains_lists_live_ids_and_kinds() {
        let mut mmu = Iommu::default();
        let a = mmu.alloc_domain(DomainSpec::Identity).unwrap();
        let b = mmu.alloc_domain(DomainSpec::Blocking).unwrap();
        let c = mmu
            .alloc_domain(DomainSpec::Paging(Box::new(RadixPageTable::new())))
            .unwrap();
        mmu.free_domain(b).unwrap();
        assert_eq!(mmu.domains(), vec![a, c]);
        assert_eq!(mmu.domain_kind(a), Some(DomainKind::Identity));
        assert_eq!(mmu.domain_kind(b), None);
        assert_eq!(mmu.domain_kind(c), Some(DomainKind::Paging));
        assert!(mmu.page_table(c).is_some());
        assert!(mmu.page_table_mut(a).is_none());
    }
}
