//! Pinned pages and their accounting: the kernel's `iopt_pages` (drivers/iommu/iommufd/pages.c).
//!
//! A [`Pages`] object is a page-aligned slice of one address space's memory (space, first page,
//! number of pages, writable) that areas of one or more IOASes map. It is created by
//! `IOMMU_IOAS_MAP` and shared, never copied, by `IOMMU_IOAS_COPY`.
//!
//! Pinning is lazy and exact. Each page of a `Pages` has a *user count*: one per area (of any
//! IOAS) that covers the page while its IOAS has at least one domain, plus one per access pin
//! covering it. A page is pinned in the machine's frame table exactly while its user count is
//! non-zero, and then exactly once per `Pages` object, however many domains, areas and accesses
//! use it (two `Pages` over the same memory pin it twice, as in the kernel). Each pinned page is
//! charged once to the [`Accounting`] according to the object's [`AccountMode`].
//!
//! Invariants (checked by the unit tests and available to the invariant checker):
//! - `npinned()` equals the number of pages whose user count is non-zero, and equals what this
//!   object has pinned in the frame table and charged to its accounting mode.
//! - [`Pages::acquire`] either takes one user on every page of the range (pinning and charging
//!   the pages that were unused) or changes nothing; [`Pages::release`] never fails.
//!
//! Ranges of page indices are inclusive (`first..=last`), the kernel's convention used throughout
//! uiommu; byte ranges are given as `(start, len)` and turned into inclusive ranges with the
//! checked helpers of `uiommu_platform::addr`.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uiommu_platform::memory::{FrameTable, MemFault, Memory, Pfn, SpaceId};
use uiommu_platform::{UserVa, PAGE_SIZE};

/// How pinned pages are charged against the locked-memory limit
/// (`IOMMU_OPTION_RLIMIT_MODE` and `CAP_IPC_LOCK`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum AccountMode {
    /// Not charged: the owner has `CAP_IPC_LOCK`.
    None,
    /// Charged to the user's locked memory (`user->locked_vm`, the default).
    #[default]
    User,
    /// Charged to the process's locked memory (`mm->locked_vm`, VFIO compatible).
    Process,
}

/// Engine-wide pinned-memory accounting: the `RLIMIT_MEMLOCK` limit in pages, the user's charge
/// and each address space's (process's) charge.
#[derive(Clone, Debug, Default)]
pub struct Accounting {
    limit: Option<u64>,
    /// Pages charged to all users together.
    user: u64,
    /// Pages charged to each user (uid), as the kernel's per-user `locked_vm`.
    per_user: HashMap<u32, u64>,
    /// The user of each address space whose user is not the engine's (uid 0 stands for the
    /// engine's own user).
    space_user: HashMap<SpaceId, u32>,
    process: HashMap<SpaceId, u64>,
}

impl Accounting {
    /// Accounting with a limit of `limit_pages` pages (`None` = unlimited) and nothing charged.
    pub fn new(limit_pages: Option<u64>) -> Self {
        Accounting {
            limit: limit_pages,
            user: 0,
            per_user: HashMap::new(),
            space_user: HashMap::new(),
            process: HashMap::new(),
        }
    }

    /// The limit in pages (`None` = unlimited).
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Change the limit. Pages already charged stay charged even above the new limit, as with
    /// `setrlimit`; only later charges are refused.
    pub fn set_limit(&mut self, limit_pages: Option<u64>) {
        self.limit = limit_pages;
    }

    /// Pages charged to users ([`AccountMode::User`]), all users together.
    pub fn user_pages(&self) -> u64 {
        self.user
    }

    /// Pages charged to user `uid`.
    pub fn pages_of_user(&self, uid: u32) -> u64 {
        self.per_user.get(&uid).copied().unwrap_or(0)
    }

    /// Address space `space` belongs to a process of user `uid`: its pins are charged to that
    /// user (the kernel charges the mapping task's user).
    pub fn set_space_user(&mut self, space: SpaceId, uid: u32) {
        self.space_user.insert(space, uid);
    }

    fn user_of(&self, space: SpaceId) -> u32 {
        self.space_user.get(&space).copied().unwrap_or(0)
    }

    /// Pages charged to the process owning `space` ([`AccountMode::Process`]).
    pub fn process_pages(&self, space: SpaceId) -> u64 {
        self.process.get(&space).copied().unwrap_or(0)
    }

    /// Whether `n` more pages may be charged in `mode` for `space` (the kernel's
    /// `incr_user_locked_vm` / `__account_locked_vm` test). ENOMEM when over the limit.
    pub fn check(&self, mode: AccountMode, space: SpaceId, n: u64) -> Result<()> {
        let current = match mode {
            AccountMode::None => return Ok(()),
            AccountMode::User => self.pages_of_user(self.user_of(space)),
            AccountMode::Process => self.process_pages(space),
        };
        // The caller's own limit when the engine serves many processes.
        let limit = match crate::engine::caller_caps() {
            None => self.limit,
            Some(c) if c.cap_ipc_lock => None,
            Some(_) => crate::engine::caller_memlock_pages().flatten(),
        };
        let Some(limit) = limit else {
            return Ok(());
        };
        match current.checked_add(n) {
            Some(total) if total <= limit => Ok(()),
            _ => Err(Error::NoMemory(
                "pinning would exceed the locked-memory limit",
            )),
        }
    }

    /// Charge `n` pages in `mode` for `space`, or refuse with ENOMEM and change nothing.
    pub fn charge(&mut self, mode: AccountMode, space: SpaceId, n: u64) -> Result<()> {
        self.check(mode, space, n)?;
        match mode {
            AccountMode::None => {}
            AccountMode::User => {
                self.user += n;
                *self.per_user.entry(self.user_of(space)).or_insert(0) += n;
            }
            AccountMode::Process => *self.process.entry(space).or_insert(0) += n,
        }
        Ok(())
    }

    /// Return `n` pages charged earlier in `mode` for `space`. Never fails; returning more than
    /// was charged is a caller bug and saturates at zero.
    pub fn uncharge(&mut self, mode: AccountMode, space: SpaceId, n: u64) {
        match mode {
            AccountMode::None => {}
            AccountMode::User => {
                debug_assert!(self.user >= n, "uncharging more user pages than charged");
                self.user = self.user.saturating_sub(n);
                let uid = self.user_of(space);
                if let Some(c) = self.per_user.get_mut(&uid) {
                    *c = c.saturating_sub(n);
                    if *c == 0 {
                        self.per_user.remove(&uid);
                    }
                }
            }
            AccountMode::Process => {
                if let Some(c) = self.process.get_mut(&space) {
                    debug_assert!(*c >= n, "uncharging more process pages than charged");
                    *c = c.saturating_sub(n);
                    if *c == 0 {
                        self.process.remove(&space);
                    }
                }
            }
        }
    }
}

/// Per-page user counts of a [`Pages`], run-length encoded.
///
/// `Uniform(c)`: every page has `c` users. `Runs(v)`: `v[i] = (first, count)` gives `count` to
/// the pages from `first` up to the next run's `first - 1` (or the last page); `v[0].0 == 0`,
/// firsts strictly increase and neighbouring counts differ.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PageUsers {
    Uniform(u32),
    Runs(Box<[(u64, u32)]>),
}

impl PageUsers {
    /// Call `f(first, last, count)` for each maximal run clipped to `first..=last`.
    fn for_each(&self, npages: u64, first: u64, last: u64, mut f: impl FnMut(u64, u64, u32)) {
        match self {
            PageUsers::Uniform(c) => f(first, last, *c),
            PageUsers::Runs(v) => {
                // Index of the run containing `first`.
                let mut i = v.partition_point(|&(s, _)| s <= first).saturating_sub(1);
                while i < v.len() {
                    let (s, c) = v[i];
                    if s > last {
                        break;
                    }
                    let run_last = v
                        .get(i + 1)
                        .map_or(npages.saturating_sub(1), |&(n, _)| n - 1);
                    f(s.max(first), run_last.min(last), c);
                    i += 1;
                }
            }
        }
    }

    /// The maximal runs clipped to `first..=last`, as `(first, last, count)`, in order
    /// (what [`PageUsers::for_each`] calls its closure with, as an iterator).
    fn runs(&self, npages: u64, first: u64, last: u64) -> Runs<'_> {
        match self {
            PageUsers::Uniform(c) => Runs {
                v: &[],
                i: 0,
                uniform: Some((first, last, *c)),
                npages,
                first,
                last,
            },
            PageUsers::Runs(v) => Runs {
                v,
                i: v.partition_point(|&(s, _)| s <= first).saturating_sub(1),
                uniform: None,
                npages,
                first,
                last,
            },
        }
    }

    /// The user count of page `index`.
    fn at(&self, index: u64) -> u32 {
        match self {
            PageUsers::Uniform(c) => *c,
            PageUsers::Runs(v) => {
                let i = v.partition_point(|&(s, _)| s <= index).saturating_sub(1);
                v.get(i).map_or(0, |&(_, c)| c)
            }
        }
    }

    /// Add one user (`up`) or remove one (`!up`) on every page of `first..=last`, calling
    /// `changed(first, last)` for each run whose pages go 0 → 1 (`up`) or 1 → 0 (`!up`).
    fn adjust(
        &mut self,
        npages: u64,
        first: u64,
        last: u64,
        up: bool,
        mut changed: impl FnMut(u64, u64),
    ) {
        let transition = if up { 0 } else { 1 };
        // Fast path: the whole object moves together.
        if let PageUsers::Uniform(c) = self {
            if first == 0 && last + 1 >= npages {
                if *c == transition {
                    changed(first, last);
                }
                *c = if up {
                    c.saturating_add(1)
                } else {
                    c.saturating_sub(1)
                };
                return;
            }
        }
        let mut v = match std::mem::replace(self, PageUsers::Uniform(0)) {
            PageUsers::Uniform(c) => vec![(0, c)],
            PageUsers::Runs(v) => v.into_vec(),
        };
        split_at(&mut v, first);
        if let Some(end) = last.checked_add(1) {
            if end < npages {
                split_at(&mut v, end);
            }
        }
        let lo = v.partition_point(|&(s, _)| s < first);
        let hi = v.partition_point(|&(s, _)| s <= last);
        for i in lo..hi {
            let (s, c) = v[i];
            if c == transition {
                let run_last = v
                    .get(i + 1)
                    .map_or(npages.saturating_sub(1), |&(n, _)| n - 1);
                changed(s, run_last);
            }
            debug_assert!(up || c > 0, "releasing a page with no users");
            v[i].1 = if up {
                c.saturating_add(1)
            } else {
                c.saturating_sub(1)
            };
        }
        // Coalesce equal neighbours around the touched runs.
        let from = lo.saturating_sub(1);
        let to = (hi + 1).min(v.len());
        let mut out: Vec<(u64, u32)> = Vec::with_capacity(v.len());
        out.extend_from_slice(&v[..from]);
        for &run in &v[from..to] {
            match out.last() {
                Some(&(_, c)) if c == run.1 => {}
                _ => out.push(run),
            }
        }
        for &run in &v[to..] {
            match out.last() {
                Some(&(_, c)) if c == run.1 => {}
                _ => out.push(run),
            }
        }
        *self = if out.len() == 1 {
            PageUsers::Uniform(out[0].1)
        } else {
            PageUsers::Runs(out.into_boxed_slice())
        };
    }
}

/// The iterator of [`PageUsers::runs`].
struct Runs<'a> {
    v: &'a [(u64, u32)],
    i: usize,
    uniform: Option<(u64, u64, u32)>,
    npages: u64,
    first: u64,
    last: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64, u32);

    fn next(&mut self) -> Option<(u64, u64, u32)> {
        if let Some(u) = self.uniform.take() {
            return Some(u);
        }
        let &(s, c) = self.v.get(self.i)?;
        if s > self.last {
            return None;
        }
        let run_last = self
            .v
            .get(self.i + 1)
            .map_or(self.npages.saturating_sub(1), |&(n, _)| n - 1);
        self.i += 1;
        Some((s.max(self.first), run_last.min(self.last), c))
    }
}

/// Make a run start at `at` (which must be a valid page index).
fn split_at(v: &mut Vec<(u64, u32)>, at: u64) {
    let i = v.partition_point(|&(s, _)| s <= at);
    // v[i - 1] contains `at` (v[0].0 == 0 <= at, so i >= 1).
    if i == 0 || v[i - 1].0 == at {
        return;
    }
    let c = v[i - 1].1;
    v.insert(i, (at, c));
}

/// A slice of one address space's memory that areas map: the kernel's `struct iopt_pages`.
///
/// See the module documentation for the pinning rules. The area that maps it first keeps it
/// inline; areas (and IOASes) that share it hold a [`PagesRef`].
#[derive(Debug)]
pub struct Pages {
    /// Identity of the object, unique in the process (see [`Pages::id`]).
    id: u64,
    uva: UserVa,
    npages: u64,
    users: PageUsers,
    space: SpaceId,
    mode: AccountMode,
    writable: bool,
}

/// The next [`Pages::id`].
static NEXT_PAGES_ID: AtomicU64 = AtomicU64::new(1);

/// A shared handle on a [`Pages`]. Everything runs under the engine lock, so the mutex is never
/// contended; it only makes sharing between IOASes safe.
pub type PagesRef = Arc<Mutex<Pages>>;

/// Lock a [`PagesRef`], recovering from a poisoned lock (the data has no invariant a panic
/// elsewhere could have broken half-way that we could repair by refusing).
pub(crate) fn lock(p: &PagesRef) -> MutexGuard<'_, Pages> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bits of the machine that pinning needs: memory (to probe and pin) and the accounting.
pub(crate) struct PinEnv<'a> {
    pub memory: &'a mut Memory,
    pub acct: &'a mut Accounting,
}

impl Pages {
    /// The pages covering `[uva, uva + len)` of `space` (the kernel's `iopt_alloc_pages`):
    /// EINVAL for zero length or a length within a page of `u64::MAX`, EOVERFLOW when the range
    /// wraps. Returns the object and the byte offset of `uva` within it (`uva % PAGE_SIZE`).
    pub fn new(
        space: SpaceId,
        uva: UserVa,
        len: u64,
        writable: bool,
        mode: AccountMode,
    ) -> Result<(Pages, u64)> {
        if len == 0 || len > u64::MAX - PAGE_SIZE {
            return Err(Error::Invalid("length is zero or too large"));
        }
        uva.0.checked_add(len).ok_or(Error::Overflow)?;
        let base = uva.align_down(PAGE_SIZE);
        let offset = uva.offset_in(PAGE_SIZE);
        // offset + len <= (PAGE_SIZE - 1) + (u64::MAX - PAGE_SIZE): no overflow.
        let npages = (offset + len).div_ceil(PAGE_SIZE);
        crate::error::alloc_site("pages")?;
        Ok((
            Pages {
                id: NEXT_PAGES_ID.fetch_add(1, Ordering::Relaxed),
                uva: base,
                npages,
                users: PageUsers::Uniform(0),
                space,
                mode,
                writable,
            },
            offset,
        ))
    }

    /// A stand-in with no pages and id 0, to move a real object out of a place that must hold
    /// one meanwhile.
    pub(crate) fn placeholder() -> Pages {
        Pages {
            id: 0,
            uva: UserVa(0),
            npages: 0,
            users: PageUsers::Uniform(0),
            space: SpaceId(0),
            mode: AccountMode::None,
            writable: false,
        }
    }

    /// The identity of the object: unique among the objects alive in the process, and the same
    /// wherever the object is kept (in the area that made it, or shared between areas).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Wrap in a shared handle.
    pub fn into_ref(self) -> PagesRef {
        Arc::new(Mutex::new(self))
    }

    /// The address space the pages belong to.
    pub fn space(&self) -> SpaceId {
        self.space
    }

    /// The user address of the first page (page-aligned).
    pub fn uva(&self) -> UserVa {
        self.uva
    }

    /// Number of pages.
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// Whether the pages were mapped writable (and may be pinned for writing).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// How the pinned pages are charged.
    pub fn account_mode(&self) -> AccountMode {
        self.mode
    }

    /// Change the accounting mode; only allowed while nothing is pinned (the kernel upgrades
    /// `User` to `Process` before the first pin). Returns false and changes nothing otherwise.
    pub fn set_account_mode(&mut self, mode: AccountMode) -> bool {
        if self.npinned() != 0 {
            return false;
        }
        self.mode = mode;
        true
    }

    /// Number of pages pinned (and charged) by this object.
    pub fn npinned(&self) -> u64 {
        self.pinned_in(0, self.npages.saturating_sub(1))
    }

    /// Number of users (areas with domains, access pins) of page `index`.
    pub fn users_at(&self, index: u64) -> u32 {
        self.users.at(index)
    }

    /// Number of pinned pages in `first..=last`.
    pub fn pinned_in(&self, first: u64, last: u64) -> u64 {
        let mut n = 0;
        if first <= last && last < self.npages {
            self.users.for_each(self.npages, first, last, |s, l, c| {
                if c > 0 {
                    n += l - s + 1;
                }
            });
        }
        n
    }

    /// The user address of page `index`.
    pub fn page_va(&self, index: u64) -> UserVa {
        UserVa(self.uva.0.wrapping_add(index.wrapping_mul(PAGE_SIZE)))
    }

    /// The frame that holds page `index` (meaningful while it is pinned); `None` when the page
    /// has no frame number (address beyond the machine's user address range).
    pub fn frame(&self, index: u64) -> Option<Pfn> {
        FrameTable::frame_of(self.space, self.page_va(index))
    }

    /// Take one user on every page of `first..=last`. Pages that had none are probed (for
    /// writing when the object is writable; EFAULT), charged (ENOMEM over the limit) and pinned.
    /// On error nothing changed.
    pub(crate) fn acquire(&mut self, env: &mut PinEnv<'_>, first: u64, last: u64) -> Result<()> {
        if first > last || last >= self.npages {
            return Err(Error::Invalid("page range outside the pages object"));
        }
        // The kernel's pin path allocates its batch of page frames first.
        crate::error::alloc_site("pin batch")?;
        // Validate: the unused runs must be present in memory, and their charge fit.
        let mut needed = 0u64;
        let mut mem = None;
        for (s, l, c) in self.users.runs(self.npages, first, last) {
            if c != 0 {
                continue;
            }
            let m = match mem {
                Some(m) => m,
                None => {
                    let m = env
                        .memory
                        .space(self.space)
                        .ok_or(Error::Fault(self.page_va(s).0))?;
                    mem = Some(m);
                    m
                }
            };
            let n = l - s + 1;
            m.probe(self.page_va(s), n.saturating_mul(PAGE_SIZE), self.writable)
                .map_err(fault_error)?;
            needed += n;
        }
        env.acct.check(self.mode, self.space, needed)?;
        // Pin; the frame table may still refuse (no frame numbers, count overflow): undo then.
        if needed != 0 {
            for (s, l, c) in self.users.runs(self.npages, first, last) {
                if c != 0 {
                    continue;
                }
                if env
                    .memory
                    .frames
                    .pin(self.space, self.page_va(s), l - s + 1)
                    .is_ok()
                {
                    // Newly pinned by this object: the engine holds what it can of them.
                    env.memory
                        .hold(self.space, self.page_va(s), l - s + 1, self.writable);
                } else {
                    // The unused runs before this one were pinned: unpin them.
                    if s > first {
                        for (s2, l2, c2) in self.users.runs(self.npages, first, s - 1) {
                            if c2 == 0 {
                                if let Some(f) = self.frame(s2) {
                                    env.memory.frames.unpin(f, l2 - s2 + 1);
                                    env.memory.unhold(f, l2 - s2 + 1);
                                }
                            }
                        }
                    }
                    return Err(Error::Fault(self.page_va(s).0));
                }
            }
        }
        // Cannot fail: checked above.
        env.acct.charge(self.mode, self.space, needed)?;
        self.users.adjust(self.npages, first, last, true, |_, _| {});
        Ok(())
    }

    /// Drop one user from every page of `first..=last`; pages left with none are unpinned and
    /// uncharged. The caller has already removed every IOMMU mapping that relied on this user.
    pub(crate) fn release(&mut self, env: &mut PinEnv<'_>, first: u64, last: u64) {
        if first > last || last >= self.npages {
            debug_assert!(false, "releasing a page range outside the pages object");
            return;
        }
        let mut freed = 0u64;
        let (space, uva) = (self.space, self.uva);
        let memory = &mut *env.memory;
        self.users.adjust(self.npages, first, last, false, |s, l| {
            let n = l - s + 1;
            if let Some(f) =
                FrameTable::frame_of(space, UserVa(uva.0.wrapping_add(s.wrapping_mul(PAGE_SIZE))))
            {
                memory.frames.unpin(f, n);
                memory.unhold(f, n);
            }
            freed += n;
        });
        env.acct.uncharge(self.mode, self.space, freed);
    }

    /// Read `buf.len()` bytes at byte offset `start_byte` of the pages, straight from the owning
    /// address space (pinned or not), like the kernel's `iopt_pages_rw_access` fast path.
    pub(crate) fn read(&self, memory: &Memory, start_byte: u64, buf: &mut [u8]) -> Result<()> {
        let va = UserVa(self.uva.0.checked_add(start_byte).ok_or(Error::Overflow)?);
        memory.read_pinned(self.space, va, buf).map_err(fault_error)
    }

    /// Write `data` at byte offset `start_byte` of the pages. EPERM when not writable.
    pub(crate) fn write(&self, memory: &Memory, start_byte: u64, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::Permission("the pages are not writable"));
        }
        let va = UserVa(self.uva.0.checked_add(start_byte).ok_or(Error::Overflow)?);
        memory
            .write_pinned(self.space, va, data)
            .map_err(fault_error)
    }
}

/// A failed access to program memory is EFAULT at the faulting address.
fn fault_error(f: MemFault) -> Error {
    match f {
        MemFault::Unmapped(va) | MemFault::ReadOnly(va) => Error::Fault(va.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(u: &PageUsers, npages: u64) -> Vec<u32> {
        (0..npages).map(|i| u.at(i)).collect()
    }

    #[test]
    fn accounting_user_mode_refuses_over_limit_and_changes_nothing() {
        let mut a = Accounting::new(Some(10));
        let s = SpaceId(1);
        a.charge(AccountMode::User, s, 8).unwrap();
        assert_eq!(
            a.charge(AccountMode::User, s, 3).unwrap_err().errno(),
            crate::error::errno::ENOMEM
        );
        assert_eq!(a.user_pages(), 8);
        a.charge(AccountMode::User, s, 2).unwrap();
        a.uncharge(AccountMode::User, s, 10);
        assert_eq!(a.user_pages(), 0);
    }

    #[test]
    fn accounting_process_mode_is_per_space_and_none_is_free() {
        let mut a = Accounting::new(Some(4));
        a.charge(AccountMode::Process, SpaceId(1), 4).unwrap();
        a.charge(AccountMode::Process, SpaceId(2), 4).unwrap();
        assert!(a.charge(AccountMode::Process, SpaceId(1), 1).is_err());
        a.charge(AccountMode::None, SpaceId(1), 1 << 40).unwrap();
        assert_eq!(a.user_pages(), 0);
        assert_eq!(a.process_pages(SpaceId(1)), 4);
        a.set_limit(None);
        a.charge(AccountMode::Process, SpaceId(1), 100).unwrap();
        assert_eq!(a.process_pages(SpaceId(1)), 104);
    }

    #[test]
    fn pages_object_stays_small() {
        // Per-mapping metadata budget: one Pages per IOMMU_IOAS_MAP, kept inside its area
        // (io_pagetable.rs) until a copy or a cut shares it.
        assert!(
            std::mem::size_of::<Pages>() <= 48,
            "{}",
            std::mem::size_of::<Pages>()
        );
    }

    #[test]
    fn pages_new_checks_length_and_overflow() {
        let s = SpaceId(0);
        assert_eq!(
            Pages::new(s, UserVa(0), 0, true, AccountMode::User)
                .unwrap_err()
                .errno(),
            22
        );
        assert_eq!(
            Pages::new(s, UserVa(u64::MAX - 10), 20, true, AccountMode::User)
                .unwrap_err()
                .errno(),
            75
        );
        let (p, off) = Pages::new(s, UserVa(0x1800), 0x1000, true, AccountMode::User).unwrap();
        assert_eq!((p.uva(), p.npages(), off), (UserVa(0x1000), 2, 0x800));
    }

    #[test]
    fn page_users_report_exact_transitions() {
        let n = 10;
        let mut u = PageUsers::Uniform(0);
        let mut got = vec![];
        u.adjust(n, 2, 5, true, |s, l| got.push((s, l)));
        assert_eq!(got, vec![(2, 5)]);
        got.clear();
        u.adjust(n, 4, 8, true, |s, l| got.push((s, l)));
        assert_eq!(got, vec![(6, 8)]);
        assert_eq!(counts(&u, n), vec![0, 0, 1, 1, 2, 2, 1, 1, 1, 0]);
        got.clear();
        u.adjust(n, 2, 5, false, |s, l| got.push((s, l)));
        assert_eq!(got, vec![(2, 3)]);
        got.clear();
        u.adjust(n, 4, 8, false, |s, l| got.push((s, l)));
        assert_eq!(got, vec![(4, 8)]);
        assert_eq!(u, PageUsers::Uniform(0));
    }

    proptest! {
        #[test]
        fn page_users_match_a_plain_counter(ops in prop::collection::vec((0u64..40, 0u64..40, any::<bool>()), 1..60)) {
            let n = 40;
            let mut u = PageUsers::Uniform(0);
            let mut model = vec![0u32; n as usize];
            for (a, b, up) in ops {
                let (first, last) = (a.min(b), a.max(b));
                // Only remove users that exist, as the engine does.
                if !up && model[first as usize..=last as usize].contains(&0) {
                    continue;
                }
                let mut changed = vec![false; n as usize];
                u.adjust(n, first, last, up, |s, l| for i in s..=l { changed[i as usize] = true; });
                for i in first..=last {
                    let before = model[i as usize];
                    model[i as usize] = if up { before + 1 } else { before - 1 };
                    let expect = if up { before == 0 } else { before == 1 };
                    prop_assert_eq!(changed[i as usize], expect);
                }
                prop_assert_eq!(counts(&u, n), model.clone());
                if let PageUsers::Runs(v) = &u {
                    prop_assert!(v.len() > 1 && v[0].0 == 0);
                    for w in v.windows(2) {
                        prop_assert!(w[0].0 < w[1].0 && w[0].1 != w[1].1);
                    }
                }
            }
        }
    }
}
