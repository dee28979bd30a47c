//! The DMA path: device → IOMMU translation → frame table → the owning program's memory.
//!
//! [`DmaContext`] is the [`DmaPort`] a device model gets: it splits each access at page
//! boundaries, translates each page through the device's requester id (IOTLB first), resolves the
//! physical address through the frame table and copies from or to the owning address space.
//! The first failure stops the access, is recorded in the IOMMU's fault log and is returned.
//!
//! Details this implementation guarantees:
//! - Each translation covers at most one 4 KiB IOVA page (less when the domain's leaf is smaller,
//!   as in the 2 KiB selftest mock format). Translations whose physical addresses follow on from
//!   each other are copied with one physical access, so large transfers run at copy speed.
//! - Bytes are moved in IOVA order and nothing at or after the first fault is moved; bytes
//!   before it may or may not have been (the device saw an error, the buffer is undefined).
//!   Exactly one fault is recorded per failed access: the first in IOVA order.
//! - A physical address that is not in a pinned frame, or whose program memory faults, is a
//!   [`FaultReason::BadPhysical`] fault at the IOVA that translated to it.
//! - A copy between two IOVAs ([`DmaPort::dma_copy`]) translates both sides, then moves the
//!   bytes in memory without a buffer when the memory can ([`Memory::copy_phys`]: one
//!   `process_vm_readv` for a process's own memory). If anything fails, it is redone as a read
//!   into a buffer then a write, so the fault recorded is exactly the one that would give.
//! - A zero-length access does nothing and succeeds. An access that runs past the top of the
//!   IOVA space faults where its first unreachable byte would be: normally at the first IOVA
//!   that does not translate; if every IOVA up to the top does, the remainder wraps past
//!   `u64::MAX` and is refused as [`FaultReason::NotMapped`] at `Iova(u64::MAX)`.

use crate::addr::{Iova, PhysAddr, PAGE_SIZE};
use crate::devices::{DmaFault, DmaPort};
use crate::hw::{FaultReason, FaultRecord, Iommu, Rid};
use crate::memory::Memory;
use crate::pagetable::Access;
use crate::topology::DeviceId;

/// One device's view of the bus for the duration of an access.
pub struct DmaContext<'a> {
    /// The device issuing DMA.
    pub device: DeviceId,
    /// The requester id its DMA carries.
    pub rid: Rid,
    /// The IOMMU translating it.
    pub iommu: &'a mut Iommu,
    /// The memory behind it.
    pub memory: &'a Memory,
}

/// Copies one physically contiguous run between memory at a physical address and a buffer
/// range; `Err` with the first physical address that failed.
type CopyFn<'c> = dyn FnMut(&Memory, PhysAddr, std::ops::Range<usize>) -> Result<(), PhysAddr> + 'c;

/// A physically contiguous piece of an access waiting to be copied: `len` bytes at buffer
/// offset `off`, IOVA `iova`, physical address `pa`.
#[derive(Copy, Clone)]
struct Run {
    off: u64,
    iova: u64,
    pa: u64,
    len: u64,
}

/// Why [`DmaContext::walk`] stopped.
enum Walk<E> {
    /// A translation failed at this IOVA.
    Translate(u64, FaultReason),
    /// The run callback failed.
    Run(E),
}

impl DmaContext<'_> {
    fn fault(&mut self, iova: u64, access: Access, reason: FaultReason) -> DmaFault {
        let iova = Iova(iova);
        self.iommu.record_fault(FaultRecord {
            device: self.device,
            rid: self.rid,
            iova,
            access,
            reason,
        });
        DmaFault { iova, reason }
    }

    /// Translate `len` bytes at `iova` for `access`, handing each physically contiguous run to
    /// `each` once the next translation does not continue it (the last at the end). Records
    /// nothing. Stops at the first error of `each`, or at the first translation that fails
    /// (after handing over the runs before it): `Err(Walk::Translate(iova, why))`.
    fn walk<E>(
        &mut self,
        iova: Iova,
        len: u64,
        access: Access,
        each: &mut dyn FnMut(Run) -> Result<(), E>,
    ) -> Result<(), Walk<E>> {
        let mut off = 0u64;
        let mut run: Option<Run> = None;
        while off < len {
            let translated =
                iova.0
                    .checked_add(off)
                    .map_or(Err((u64::MAX, FaultReason::NotMapped)), |cur| {
                        self.iommu
                            .translate_quiet(self.rid, Iova(cur), access)
                            .map(|t| (cur, t))
                            .map_err(|why| (cur, why))
                    });
            let (cur, t) = match translated {
                Ok(ct) => ct,
                Err((at, why)) => {
                    if let Some(r) = run {
                        each(r).map_err(Walk::Run)?;
                    }
                    return Err(Walk::Translate(at, why));
                }
            };
            let to_page = PAGE_SIZE - (cur & (PAGE_SIZE - 1));
            let leaf = if t.leaf_size.is_power_of_two() {
                t.leaf_size
            } else {
                PAGE_SIZE
            };
            let n = (len - off).min(to_page).min(leaf - (cur & (leaf - 1)));
            match run {
                Some(ref mut r) if r.pa.checked_add(r.len) == Some(t.pa.0) => r.len += n,
                _ => {
                    if let Some(r) = run {
                        each(r).map_err(Walk::Run)?;
                    }
                    run = Some(Run {
                        off,
                        iova: cur,
                        pa: t.pa.0,
                        len: n,
                    });
                }
            }
            off += n;
        }
        match run {
            Some(r) => each(r).map_err(Walk::Run),
            None => Ok(()),
        }
    }

    /// Move `len` bytes at `iova` in direction `access`, copying each physically contiguous run
    /// with `copy`; the first failure, in IOVA order, is recorded.
    fn transfer(
        &mut self,
        iova: Iova,
        len: usize,
        access: Access,
        copy: &mut CopyFn<'_>,
    ) -> Result<(), DmaFault> {
        let memory = self.memory;
        let mut copy_run = |r: Run| {
            copy(
                memory,
                PhysAddr(r.pa),
                r.off as usize..(r.off + r.len) as usize,
            )
            .map_err(|bad| (r, bad))
        };
        match self.walk(iova, len as u64, access, &mut copy_run) {
            Ok(()) => {
                self.iommu.count_dma(self.device, access, len as u64);
                Ok(())
            }
            Err(Walk::Translate(at, why)) => Err(self.fault(at, access, why)),
            Err(Walk::Run((r, bad))) => {
                // A copy failure is a BadPhysical fault at the IOVA of the failing address.
                let delta = bad.0.wrapping_sub(r.pa);
                let at = if delta < r.len {
                    r.iova + delta
                } else {
                    r.iova
                };
                Err(self.fault(at, access, FaultReason::BadPhysical))
            }
        }
    }

    /// The physically contiguous runs of `len` bytes at `iova`, translated for `access`
    /// without recording anything; `None` at the first translation that fails.
    fn runs_quiet(&mut self, iova: Iova, len: u64, access: Access) -> Option<Vec<Run>> {
        let mut runs = Vec::new();
        let mut push = |r: Run| -> Result<(), std::convert::Infallible> {
            runs.push(r);
            Ok(())
        };
        self.walk(iova, len, access, &mut push).ok()?;
        Some(runs)
    }

    /// A copy with no buffer: both sides translated first, then each pair of physically
    /// contiguous pieces copied in memory ([`Memory::copy_phys`]). `None` (having recorded
    /// nothing) when any translation or copy fails, so that the caller redoes the copy the
    /// buffered way, which records the fault exactly as a read then a write would.
    fn copy_direct(&mut self, src: Iova, dst: Iova, len: u64) -> Option<()> {
        let from = self.runs_quiet(src, len, Access::Read)?;
        let to = self.runs_quiet(dst, len, Access::Write)?;
        let (mut i, mut j, mut off) = (0usize, 0usize, 0u64);
        while off < len {
            let (a, b) = (from.get(i)?, to.get(j)?);
            let n = (a.off + a.len - off).min(b.off + b.len - off);
            let s = a.pa + (off - a.off);
            let d = b.pa + (off - b.off);
            self.memory.copy_phys(PhysAddr(d), PhysAddr(s), n).ok()?;
            off += n;
            if off == a.off + a.len {
                i += 1;
            }
            if off == b.off + b.len {
                j += 1;
            }
        }
        Some(())
    }
}

impl DmaPort for DmaContext<'_> {
    fn dma_copy(&mut self, src: Iova, dst: Iova, len: usize) -> Result<(), (DmaFault, bool)> {
        if self.copy_direct(src, dst, len as u64).is_some() {
            self.iommu.count_dma(self.device, Access::Read, len as u64);
            self.iommu.count_dma(self.device, Access::Write, len as u64);
            return Ok(());
        }
        crate::devices::copy_through_buffer(self, src, dst, len)
    }

    fn dma_read(&mut self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault> {
        let len = buf.len();
        let mut copy =
            |mem: &Memory, pa: PhysAddr, range: std::ops::Range<usize>| match buf.get_mut(range) {
                Some(dst) => mem.read_phys(pa, dst),
                None => Err(pa),
            };
        self.transfer(iova, len, Access::Read, &mut copy)
    }

    fn dma_write(&mut self, iova: Iova, data: &[u8]) -> Result<(), DmaFault> {
        let mut copy =
            |mem: &Memory, pa: PhysAddr, range: std::ops::Range<usize>| match data.get(range) {
                Some(src) => mem.write_phys(pa, src),
                None => Err(pa),
            };
        self.transfer(iova, data.len(), Access::Write, &mut copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::UserVa;
    use crate::hw::test_support::TestTable;
    use crate::hw::{DomainId, DomainSpec};
    use crate::memory::{MemFault, SimMemory, SpaceId, UserMemory};
    use crate::pagetable::radix::RadixPageTable;
    use crate::pagetable::Prot;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const DEV: DeviceId = DeviceId(3);
    const RID: Rid = Rid(0x18);
    const VA: u64 = 0x7f00_0000_0000;
    const IOVA: u64 = 0x100_0000;

    /// Counts calls into the wrapped memory; copies within itself when `direct` is on.
    struct Counting {
        inner: Arc<SimMemory>,
        calls: AtomicUsize,
        direct: std::sync::atomic::AtomicBool,
        direct_copies: AtomicUsize,
    }

    impl UserMemory for Counting {
        fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.inner.read(va, buf)
        }
        fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.inner.write(va, data)
        }
        fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
            self.inner.probe(va, len, write)
        }
        fn copy_within(&self, dst: UserVa, src: UserVa, len: u64) -> Option<Result<(), MemFault>> {
            if !self.direct.load(Ordering::Relaxed) {
                return None;
            }
            self.direct_copies.fetch_add(1, Ordering::Relaxed);
            let mut b = vec![0u8; len as usize];
            Some(
                self.inner
                    .read(src, &mut b)
                    .and_then(|()| self.inner.write(dst, &b)),
            )
        }
    }

    struct Rig {
        iommu: Iommu,
        memory: Memory,
        sim: Arc<SimMemory>,
        counting: Arc<Counting>,
        space: SpaceId,
        domain: DomainId,
    }

    impl Rig {
        /// `pages` of program memory at `VA`, pinned, mapped RW at `IOVA` in a radix domain that
        /// `RID` is attached to.
        fn new(pages: u64) -> Rig {
            let sim = SimMemory::new();
            sim.map(UserVa(VA), pages * PAGE_SIZE, true);
            let counting = Arc::new(Counting {
                inner: sim.clone(),
                calls: AtomicUsize::new(0),
                direct: std::sync::atomic::AtomicBool::new(false),
                direct_copies: AtomicUsize::new(0),
            });
            let mut memory = Memory::default();
            let space = memory.add_space(counting.clone());
            let mut iommu = Iommu::new();
            let domain = iommu
                .alloc_domain(DomainSpec::Paging(Box::new(RadixPageTable::new())))
                .unwrap();
            iommu.set_context(RID, Some(domain)).unwrap();
            let mut rig = Rig {
                iommu,
                memory,
                sim,
                counting,
                space,
                domain,
            };
            rig.pin_and_map(VA, IOVA, pages, Prot::RW);
            rig
        }

        fn pin_and_map(&mut self, va: u64, iova: u64, pages: u64, prot: Prot) -> PhysAddr {
            let pfn = self
                .memory
                .frames
                .pin(self.space, UserVa(va), pages)
                .unwrap();
            self.iommu
                .map(self.domain, Iova(iova), pfn.addr(), pages * PAGE_SIZE, prot)
                .unwrap();
            pfn.addr()
        }

        fn port(&mut self) -> DmaContext<'_> {
            DmaContext {
                device: DEV,
                rid: RID,
                iommu: &mut self.iommu,
                memory: &self.memory,
            }
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn dma_write_then_read_round_trips_through_a_paging_domain() {
        let mut rig = Rig::new(8);
        let data = pattern(5 * PAGE_SIZE as usize + 123);
        rig.port().dma_write(Iova(IOVA + 0x345), &data).unwrap();
        let mut seen = vec![0u8; data.len()];
        rig.sim.read(UserVa(VA + 0x345), &mut seen).unwrap();
        assert_eq!(seen, data);
        let mut back = vec![0u8; data.len()];
        rig.port().dma_read(Iova(IOVA + 0x345), &mut back).unwrap();
        assert_eq!(back, data);
        assert!(rig.iommu.faults().is_empty());
    }

    #[test]
    fn dma_counters_count_completed_accesses_their_bytes_and_faults() {
        let mut rig = Rig::new(4);
        let mut buf = vec![0u8; 3 * PAGE_SIZE as usize];
        rig.port().dma_write(Iova(IOVA + 1), &buf[..100]).unwrap();
        rig.port().dma_read(Iova(IOVA), &mut buf).unwrap();
        rig.port()
            .dma_copy(Iova(IOVA), Iova(IOVA + 2 * PAGE_SIZE), 4096)
            .unwrap();
        // A faulting write (its first pages land, but the access did not complete).
        rig.port()
            .dma_write(Iova(IOVA + 2 * PAGE_SIZE), &buf)
            .unwrap_err();
        let counters = rig.iommu.dma_counters();
        assert_eq!(
            counters,
            [(
                DEV,
                crate::hw::DmaCounters {
                    reads: 2,
                    read_bytes: 3 * PAGE_SIZE + 4096,
                    writes: 2,
                    write_bytes: 100 + 4096,
                    faults: 1,
                }
            )]
        );
    }

    #[test]
    fn dma_across_page_boundary_uses_two_translations() {
        let mut rig = Rig::new(2);
        let mut buf = [0u8; 8];
        rig.port()
            .dma_read(Iova(IOVA + PAGE_SIZE - 4), &mut buf)
            .unwrap();
        assert_eq!(rig.iommu.iotlb_stats().misses, 2);
        assert_eq!(rig.iommu.iotlb_entries(), 2);
        rig.port()
            .dma_read(Iova(IOVA + PAGE_SIZE - 4), &mut buf)
            .unwrap();
        assert_eq!(rig.iommu.iotlb_stats().hits, 2);
    }

    #[test]
    fn contiguous_pages_are_copied_with_one_memory_access() {
        let mut rig = Rig::new(256);
        let data = pattern(256 * PAGE_SIZE as usize);
        rig.port().dma_write(Iova(IOVA), &data).unwrap();
        assert_eq!(rig.counting.calls.load(Ordering::Relaxed), 1);
        assert_eq!(rig.iommu.iotlb_stats().misses, 256);
    }

    #[test]
    fn unmap_invalidates_iotlb_so_next_dma_faults() {
        let mut rig = Rig::new(4);
        let mut buf = [0u8; 16];
        rig.port()
            .dma_read(Iova(IOVA + PAGE_SIZE), &mut buf)
            .unwrap();
        assert_eq!(
            rig.iommu
                .unmap(rig.domain, Iova(IOVA + PAGE_SIZE), PAGE_SIZE),
            Ok(PAGE_SIZE)
        );
        let err = rig
            .port()
            .dma_read(Iova(IOVA + PAGE_SIZE), &mut buf)
            .unwrap_err();
        assert_eq!(
            err,
            DmaFault {
                iova: Iova(IOVA + PAGE_SIZE),
                reason: FaultReason::NotMapped
            }
        );
        assert_eq!(rig.iommu.faults().len(), 1);
    }

    #[test]
    fn dma_fault_is_at_the_first_unreachable_iova_and_earlier_bytes_land() {
        let mut rig = Rig::new(2);
        let data = pattern(3 * PAGE_SIZE as usize);
        let err = rig.port().dma_write(Iova(IOVA), &data).unwrap_err();
        assert_eq!(
            err,
            DmaFault {
                iova: Iova(IOVA + 2 * PAGE_SIZE),
                reason: FaultReason::NotMapped
            }
        );
        let mut seen = vec![0u8; 2 * PAGE_SIZE as usize];
        rig.sim.read(UserVa(VA), &mut seen).unwrap();
        assert_eq!(seen, data[..seen.len()]);
        let f = rig.iommu.faults();
        assert_eq!(
            (f.len(), f[0].device, f[0].rid, f[0].access),
            (1, DEV, RID, Access::Write)
        );
    }

    #[test]
    fn dma_to_an_unpinned_frame_faults_bad_physical_and_records_it() {
        let mut rig = Rig::new(2);
        let first = crate::memory::FrameTable::frame_of(rig.space, UserVa(VA)).unwrap();
        rig.memory.frames.unpin(crate::memory::Pfn(first.0 + 1), 1);
        let mut buf = vec![0u8; 2 * PAGE_SIZE as usize];
        let err = rig.port().dma_read(Iova(IOVA + 8), &mut buf).unwrap_err();
        assert_eq!(
            err,
            DmaFault {
                iova: Iova(IOVA + PAGE_SIZE),
                reason: FaultReason::BadPhysical
            }
        );
        assert_eq!(rig.iommu.faults().len(), 1);
        assert_eq!(rig.iommu.faults()[0].reason, FaultReason::BadPhysical);
    }

    /// What a copy did: its result, the destination bytes, faults recorded, direct copies.
    type CopyOutcome = (Result<(), (DmaFault, bool)>, Vec<u8>, usize, usize);

    /// `dma_copy` on a rig whose memory copies within itself (`direct`) or not.
    fn copy_outcome(direct: bool, spoil: impl Fn(&mut Rig)) -> CopyOutcome {
        let mut rig = Rig::new(8);
        rig.counting.direct.store(direct, Ordering::Relaxed);
        let len = 2 * PAGE_SIZE as usize + 100;
        rig.sim.write(UserVa(VA + 10), &pattern(len)).unwrap();
        spoil(&mut rig);
        let r = rig
            .port()
            .dma_copy(Iova(IOVA + 10), Iova(IOVA + 4 * PAGE_SIZE + 20), len);
        let mut dst = vec![0u8; len];
        let _ = rig.sim.read(UserVa(VA + 4 * PAGE_SIZE + 20), &mut dst);
        let faults = rig.iommu.faults().len();
        (
            r,
            dst,
            faults,
            rig.counting.direct_copies.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn copies_move_the_bytes_with_or_without_a_buffer() {
        let len = 2 * PAGE_SIZE as usize + 100;
        let (r, dst, faults, direct) = copy_outcome(true, |_| {});
        assert_eq!((r, faults), (Ok(()), 0));
        assert_eq!(dst, pattern(len));
        // Source and destination are each one physical run: one copy in memory.
        assert_eq!(direct, 1);
        let (r, dst, faults, direct) = copy_outcome(false, |_| {});
        assert_eq!((r, faults, direct), (Ok(()), 0, 0));
        assert_eq!(dst, pattern(len));
    }

    #[test]
    fn a_failed_direct_copy_reports_the_fault_a_read_then_write_would() {
        type Spoil = fn(&mut Rig);
        let spoils: [(Spoil, DmaFault, bool); 3] = [
            // Source memory vanished under a pinned frame: the read side, bad physical.
            (
                |rig| rig.sim.unmap(UserVa(VA + PAGE_SIZE), PAGE_SIZE),
                DmaFault {
                    iova: Iova(IOVA + PAGE_SIZE),
                    reason: FaultReason::BadPhysical,
                },
                true,
            ),
            // Destination IOVA page unmapped: the write side, not mapped.
            (
                |rig| {
                    rig.iommu
                        .unmap(rig.domain, Iova(IOVA + 5 * PAGE_SIZE), PAGE_SIZE)
                        .unwrap();
                },
                DmaFault {
                    iova: Iova(IOVA + 5 * PAGE_SIZE),
                    reason: FaultReason::NotMapped,
                },
                false,
            ),
            // Destination memory vanished: the write side, bad physical.
            (
                |rig| rig.sim.unmap(UserVa(VA + 6 * PAGE_SIZE), PAGE_SIZE),
                DmaFault {
                    iova: Iova(IOVA + 6 * PAGE_SIZE),
                    reason: FaultReason::BadPhysical,
                },
                false,
            ),
        ];
        for (spoil, fault, src_side) in spoils {
            let (direct_r, _, direct_faults, _) = copy_outcome(true, spoil);
            let (buffered_r, _, buffered_faults, _) = copy_outcome(false, spoil);
            assert_eq!(direct_r, Err((fault, src_side)));
            assert_eq!(buffered_r, direct_r);
            assert_eq!((direct_faults, buffered_faults), (1, 1));
        }
    }

    #[test]
    fn dma_to_program_memory_that_vanished_is_a_device_fault() {
        let mut rig = Rig::new(4);
        rig.sim.unmap(UserVa(VA + 2 * PAGE_SIZE), PAGE_SIZE);
        let err = rig
            .port()
            .dma_write(Iova(IOVA + 100), &pattern(4 * PAGE_SIZE as usize - 200))
            .unwrap_err();
        assert_eq!(
            err,
            DmaFault {
                iova: Iova(IOVA + 2 * PAGE_SIZE),
                reason: FaultReason::BadPhysical
            }
        );
    }

    #[test]
    fn only_the_first_fault_in_iova_order_is_recorded() {
        // Page 0 is mapped but its frame is gone; page 1 is not mapped at all.
        let mut rig = Rig::new(1);
        rig.memory.frames.unpin(
            crate::memory::FrameTable::frame_of(rig.space, UserVa(VA)).unwrap(),
            1,
        );
        let mut buf = vec![0u8; 2 * PAGE_SIZE as usize];
        let err = rig.port().dma_read(Iova(IOVA), &mut buf).unwrap_err();
        assert_eq!(
            err,
            DmaFault {
                iova: Iova(IOVA),
                reason: FaultReason::BadPhysical
            }
        );
        assert_eq!(rig.iommu.faults().len(), 1);
    }

    #[test]
    fn write_through_a_read_only_mapping_faults_with_permission_and_writes_nothing() {
        let mut rig = Rig::new(1);
        rig.sim.map(UserVa(VA + PAGE_SIZE), PAGE_SIZE, true);
        rig.pin_and_map(VA + PAGE_SIZE, IOVA + PAGE_SIZE, 1, Prot::RO);
        let err = rig
            .port()
            .dma_write(Iova(IOVA + PAGE_SIZE + 4), &[1, 2, 3])
            .unwrap_err();
        assert_eq!(
            err,
            DmaFault {
                iova: Iova(IOVA + PAGE_SIZE + 4),
                reason: FaultReason::Permission
            }
        );
        let mut seen = [9u8; 3];
        rig.sim.read(UserVa(VA + PAGE_SIZE + 4), &mut seen).unwrap();
        assert_eq!(seen, [0; 3]);
        let mut buf = [0u8; 3];
        rig.port()
            .dma_read(Iova(IOVA + PAGE_SIZE + 4), &mut buf)
            .unwrap();
    }

    #[test]
    fn zero_length_dma_succeeds_and_does_nothing() {
        let mut rig = Rig::new(1);
        rig.iommu.set_context(RID, None).unwrap();
        rig.port().dma_read(Iova(0xdead), &mut []).unwrap();
        rig.port().dma_write(Iova(u64::MAX), &[]).unwrap();
        assert!(rig.iommu.faults().is_empty());
    }

    #[test]
    fn unattached_device_dma_is_blocked() {
        let mut rig = Rig::new(1);
        let mut port = DmaContext {
            device: DEV,
            rid: Rid(0xffff),
            iommu: &mut rig.iommu,
            memory: &rig.memory,
        };
        let err = port.dma_write(Iova(IOVA), &[1; 64]).unwrap_err();
        assert_eq!(
            err,
            DmaFault {
                iova: Iova(IOVA),
                reason: FaultReason::Blocked
            }
        );
        assert_eq!(rig.iommu.faults()[0].rid, Rid(0xffff));
    }

    #[test]
    fn identity_domain_dma_reaches_pinned_frames_by_physical_address() {
        let mut rig = Rig::new(2);
        let pa = crate::memory::FrameTable::frame_of(rig.space, UserVa(VA))
            .unwrap()
            .addr();
        let ident = rig.iommu.alloc_domain(DomainSpec::Identity).unwrap();
        rig.iommu.set_context(RID, Some(ident)).unwrap();
        rig.port()
            .dma_write(Iova(pa.0 + 10), &pattern(PAGE_SIZE as usize))
            .unwrap();
        let mut seen = vec![0u8; PAGE_SIZE as usize];
        rig.sim.read(UserVa(VA + 10), &mut seen).unwrap();
        assert_eq!(seen, pattern(PAGE_SIZE as usize));
        // Physical addresses outside pinned frames fault.
        let err = rig
            .port()
            .dma_read(Iova(0x1000), &mut [0u8; 4])
            .unwrap_err();
        assert_eq!(err.reason, FaultReason::BadPhysical);
    }

    #[test]
    fn dma_running_past_the_top_of_the_iova_space_faults_without_panic() {
        let mut rig = Rig::new(1);
        let mut buf = [0u8; 64];
        let err = rig
            .port()
            .dma_read(Iova(u64::MAX - 10), &mut buf)
            .unwrap_err();
        assert_eq!(
            err,
            DmaFault {
                iova: Iova(u64::MAX - 10),
                reason: FaultReason::NotMapped
            }
        );
        let ident = rig.iommu.alloc_domain(DomainSpec::Identity).unwrap();
        rig.iommu.set_context(RID, Some(ident)).unwrap();
        let err = rig.port().dma_write(Iova(u64::MAX - 10), &buf).unwrap_err();
        assert_eq!(
            err,
            DmaFault {
                iova: Iova(u64::MAX - 10),
                reason: FaultReason::BadPhysical
            }
        );
        // Every IOVA up to the top reachable: the wrap itself faults, at the top.
        let top_space = SpaceId(0xffff);
        let top_va = (1u64 << 48) - PAGE_SIZE;
        let sim = SimMemory::new();
        sim.map(UserVa(top_va), PAGE_SIZE, true);
        let mut memory = Memory::default();
        let mut last = SpaceId(0);
        while last != top_space {
            last = memory.add_space(sim.clone());
        }
        let pfn = memory.frames.pin(top_space, UserVa(top_va), 1).unwrap();
        assert_eq!(pfn.addr(), PhysAddr(!0xfffu64));
        let mut port = DmaContext {
            device: DEV,
            rid: RID,
            iommu: &mut rig.iommu,
            memory: &memory,
        };
        port.dma_write(Iova(u64::MAX - 3), &[1, 2, 3, 4]).unwrap();
        let err = port
            .dma_write(Iova(u64::MAX - 3), &[1, 2, 3, 4, 5])
            .unwrap_err();
        assert_eq!(
            err,
            DmaFault {
                iova: Iova(u64::MAX),
                reason: FaultReason::NotMapped
            }
        );
    }

    #[test]
    fn two_kilobyte_leaves_split_a_page_into_two_translations() {
        let sim = SimMemory::new();
        sim.map(UserVa(VA), 2 * PAGE_SIZE, true);
        let mut memory = Memory::default();
        let space = memory.add_space(sim.clone());
        let pa = memory.frames.pin(space, UserVa(VA), 2).unwrap().addr();
        let mut iommu = Iommu::new();
        let (pt, _) = TestTable::new(2048);
        let d = iommu.alloc_domain(DomainSpec::Paging(pt)).unwrap();
        iommu.set_context(RID, Some(d)).unwrap();
        // IOVA page 0x10000: first half → second frame's upper half, second half → first frame.
        iommu
            .map(
                d,
                Iova(0x10000),
                PhysAddr(pa.0 + PAGE_SIZE + 2048),
                2048,
                Prot::RW,
            )
            .unwrap();
        iommu.map(d, Iova(0x10800), pa, 2048, Prot::RW).unwrap();
        let data = pattern(4096);
        let mut port = DmaContext {
            device: DEV,
            rid: RID,
            iommu: &mut iommu,
            memory: &memory,
        };
        port.dma_write(Iova(0x10000), &data).unwrap();
        let mut hi = vec![0u8; 2048];
        let mut lo = vec![0u8; 2048];
        sim.read(UserVa(VA + PAGE_SIZE + 2048), &mut hi).unwrap();
        sim.read(UserVa(VA), &mut lo).unwrap();
        assert_eq!(hi, data[..2048]);
        assert_eq!(lo, data[2048..]);
    }
}
