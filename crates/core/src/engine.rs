//! The engine and its security contexts.
//!
//! An [`Engine`] owns the emulated [`Platform`] and every security context opened on it. All
//! state sits behind one lock: an operation of a context, a driver bind and a device's DMA are
//! each atomic with respect to each other. A [`Context`] is a handle to one security context —
//! the equivalent of one open file of `/dev/iommu`. Clones of the handle are dup'd file
//! descriptors: they share the context, and the context is torn down (accesses destroyed,
//! devices detached and unbound, page tables freed, pages unpinned and uncharged) when the last
//! handle is dropped or [`Context::close`] is called.
//!
//! Every operation validates fully before it changes anything, so a refused call leaves the
//! state as it was (invariant I5).

use crate::coherency::RightState;
use crate::error::{Error, Result};
use crate::group::{CtxId, Groups};
use crate::io_pagetable::IoPagetable;
use crate::object::{ObjId, ObjType, ObjectTable};
use crate::pages::{AccountMode, Accounting};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use uiommu_platform::devices::DmaFault;
use uiommu_platform::drivers::Driver;
use uiommu_platform::hw::FaultRecord;
use uiommu_platform::memory::{SpaceId, UserMemory};
use uiommu_platform::topology::{DeviceId, GroupId};
use uiommu_platform::{Iova, Platform, Range};

/// Privileges and limits of the programs using the engine (what the kernel reads from the
/// calling task's credentials and rlimits).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// RLIMIT_MEMLOCK in pages (`None`: unlimited).
    pub memlock_limit_pages: Option<u64>,
    /// CAP_IPC_LOCK: pinned pages are not accounted at all.
    pub cap_ipc_lock: bool,
    /// CAP_SYS_RESOURCE: IOMMU_OPTION_RLIMIT_MODE may be set.
    pub cap_sys_resource: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            // Linux's default RLIMIT_MEMLOCK: 8 MiB.
            memlock_limit_pages: Some((8 << 20) / uiommu_platform::PAGE_SIZE),
            cap_ipc_lock: false,
            cap_sys_resource: true,
        }
    }
}

/// Bit of `CAP_IPC_LOCK` in a capability set.
const CAP_IPC_LOCK: u32 = 14;
/// Bit of `CAP_SYS_RESOURCE` in a capability set.
const CAP_SYS_RESOURCE: u32 = 24;

impl EngineConfig {
    /// The privileges and limits of a process as the kernel sees them: `memlock` its
    /// RLIMIT_MEMLOCK soft limit in bytes (`None`: unlimited), `status` its
    /// `/proc/<pid>/status` text (the `CapEff:` mask), both capabilities granted whatever the
    /// process has with `as_root` (for programs written for root, such as the kernel
    /// selftests).
    pub fn of_process(memlock: Option<u64>, status: &str, as_root: bool) -> EngineConfig {
        let mut caps = effective_caps(status).unwrap_or(0);
        if as_root {
            caps |= (1 << CAP_IPC_LOCK) | (1 << CAP_SYS_RESOURCE);
        }
        EngineConfig {
            memlock_limit_pages: memlock.map(|b| b / uiommu_platform::PAGE_SIZE),
            cap_ipc_lock: caps & (1 << CAP_IPC_LOCK) != 0,
            cap_sys_resource: caps & (1 << CAP_SYS_RESOURCE) != 0,
        }
    }
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// An IOAS object.
#[derive(Debug)]
pub(crate) struct Ioas {
    pub iopt: IoPagetable,
    /// Paging HWPTs built on this IOAS, in creation order (the kernel's `hwpt_list`).
    pub hwpts: Vec<ObjId>,
}

/// The hasher of the context table: context ids are counters the engine hands out (not input an
/// attacker picks), so one multiplication spreads them well enough, for much less than SipHash
/// (three lookups per IOAS operation).
#[derive(Default)]
pub(crate) struct CtxIdHasher(u64);

impl Hasher for CtxIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The open contexts by id.
pub(crate) type CtxMap = HashMap<CtxId, Ctx, BuildHasherDefault<CtxIdHasher>>;

/// The state of the engine behind its lock.
pub(crate) struct State {
    pub platform: Platform,
    pub acct: Accounting,
    pub groups: Groups,
    pub ctxs: CtxMap,
    pub next_ctx: u64,
    pub config: EngineConfig,
    /// Devices whose DMA can bypass cache coherency (no-snoop capable).
    pub noncoherent: std::collections::HashSet<DeviceId>,
    /// Revocation callbacks to run once the lock is dropped.
    pub pending_revocations: Vec<Box<dyn FnOnce() + Send>>,
    /// The most recent page responses devices received (see `fault`).
    pub page_responses: std::collections::VecDeque<crate::fault::PageResponseRecord>,
}

/// One security context.
pub(crate) struct Ctx {
    pub space: SpaceId,
    pub objects: ObjectTable<crate::Object>,
    pub account_mode: AccountMode,
    /// The IOAS the VFIO type1 compatibility layer uses.
    pub vfio_ioas: Option<ObjId>,
    pub coherency: Arc<RightState>,
}

impl State {
    pub fn ctx(&self, id: CtxId) -> Result<&Ctx> {
        self.ctxs
            .get(&id)
            .ok_or(Error::NoDevice("the context is closed"))
    }
    pub fn ctx_mut(&mut self, id: CtxId) -> Result<&mut Ctx> {
        self.ctxs
            .get_mut(&id)
            .ok_or(Error::NoDevice("the context is closed"))
    }
}

/// The engine: an emulated platform and the security contexts on it.
pub struct Engine {
    state: Mutex<State>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

impl Engine {
    /// An engine over `platform`: every group in its default domain.
    pub fn new(mut platform: Platform, config: EngineConfig) -> Result<Arc<Engine>> {
        let groups = Groups::new(&mut platform)?;
        let acct = Accounting::new(if config.cap_ipc_lock {
            None
        } else {
            config.memlock_limit_pages
        });
        Ok(Arc::new(Engine {
            state: Mutex::new(State {
                platform,
                acct,
                groups,
                ctxs: CtxMap::default(),
                next_ctx: 1,
                config,
                noncoherent: Default::default(),
                pending_revocations: Vec::new(),
                page_responses: Default::default(),
            }),
        }))
    }

    /// An engine over the built-in default platform with default limits.
    pub fn builtin() -> Arc<Engine> {
        // The built-in platform is well-formed; Groups::new only fails if the IOMMU cannot
        // allocate its first two domains, which an empty IOMMU always can.
        Engine::new(Platform::builtin(), EngineConfig::default()).expect("built-in platform")
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving with the state as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` under the lock, then fire any revocation callbacks it queued.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, fired) = {
            let mut st = self.lock();
            let r = f(&mut st);
            (r, std::mem::take(&mut st.pending_revocations))
        };
        for cb in fired {
            cb();
        }
        r
    }

    /// Look at (or drive) the platform directly: topology, fault log, device models.
    pub fn with_platform<R>(&self, f: impl FnOnce(&mut Platform) -> R) -> R {
        self.with(|st| f(&mut st.platform))
    }

    /// Register a program's address space; contexts opened on it map its addresses.
    pub fn add_space(&self, mem: Arc<dyn UserMemory>) -> SpaceId {
        self.with(|st| st.platform.memory.add_space(mem))
    }

    /// Open a security context for the program whose memory is `space` (`open("/dev/iommu")`).
    pub fn open(self: &Arc<Self>, space: SpaceId) -> Result<Context> {
        let id = self.with(|st| {
            if st.platform.memory.space(space).is_none() {
                return Err(Error::Invalid("unknown address space"));
            }
            crate::error::alloc_site("context")?;
            let id = CtxId(st.next_ctx);
            st.next_ctx += 1;
            st.ctxs.insert(
                id,
                Ctx {
                    space,
                    objects: ObjectTable::default(),
                    account_mode: AccountMode::User,
                    vfio_ioas: None,
                    coherency: Arc::new(RightState::default()),
                },
            );
            Ok(id)
        })?;
        Ok(Context {
            inner: Arc::new(ContextInner {
                engine: self.clone(),
                id,
            }),
        })
    }

    /// Bind a kernel driver to a device (`echo BDF > /sys/bus/pci/drivers/X/bind`). A DMA-doing
    /// driver in a group a context owns is refused with EBUSY and nothing changes.
    pub fn driver_bind(&self, dev: DeviceId, driver: Driver) -> Result<()> {
        self.with(|st| {
            let State {
                groups, platform, ..
            } = st;
            groups.driver_bind(platform, dev, driver)
        })
    }

    /// Unbind a device's driver. EBUSY while a context has the device bound.
    pub fn driver_unbind(&self, dev: DeviceId) -> Result<()> {
        self.with(|st| {
            let in_use = crate::device::device_in_use(st, dev);
            let State {
                groups, platform, ..
            } = st;
            groups.driver_unbind(platform, dev, in_use)
        })
    }

    /// Hot-add a selftest mock device (in a group of its own) with the mock `flags`
    /// (`MOCK_FLAGS_DEVICE_*`); EINVAL for unknown flags.
    pub fn add_mock_device(&self, flags: u32) -> Result<DeviceId> {
        self.with(|st| {
            let dev = st
                .platform
                .add_mock_device_with_flags(flags)
                .ok_or(Error::Invalid("unknown mock device flags"))?;
            let gid = st
                .platform
                .topology
                .device(dev)
                .map(|d| d.group)
                .ok_or(Error::NoDevice("mock device"))?;
            let State {
                groups, platform, ..
            } = st;
            groups.ensure(platform, gid);
            Ok(dev)
        })
    }

    /// Hot-remove a mock device added by [`Engine::add_mock_device`]; EBUSY while a context has
    /// it bound.
    pub fn remove_mock_device(&self, dev: DeviceId) -> Result<()> {
        self.with(|st| {
            if crate::device::device_in_use(st, dev) {
                return Err(Error::Busy("the device is bound to a security context"));
            }
            let pdev = st
                .platform
                .topology
                .device(dev)
                .ok_or(Error::NoDevice("no such device"))?;
            if pdev.model != uiommu_platform::topology::ModelKind::Mock {
                return Err(Error::Invalid("only hot-added mock devices can be removed"));
            }
            let (gid, rids) = (pdev.group, pdev.rids.clone());
            if !st.platform.remove_device(dev) {
                return Err(Error::Invalid("only hot-added mock devices can be removed"));
            }
            for rid in rids {
                let _ = st.platform.iommu.set_context(rid, None);
            }
            st.groups.forget(gid);
            Ok(())
        })
    }

    /// Mark whether a device can issue non-coherent (no-snoop) DMA (a property of the
    /// hardware: set it before the device is attached). Such a device cannot be attached to a
    /// page table that enforces coherency, and while it is attached its context holds the
    /// coherency right ([`Context::coherency_right`]).
    pub fn set_device_noncoherent(&self, dev: DeviceId, noncoherent: bool) {
        self.with(|st| {
            if noncoherent {
                st.noncoherent.insert(dev);
            } else {
                st.noncoherent.remove(&dev);
            }
            let ids: Vec<CtxId> = st.ctxs.keys().copied().collect();
            for c in ids {
                crate::coherency::update(st, c);
            }
        })
    }

    /// DMA read by a device, translated by the IOMMU as its group is set up now.
    pub fn dma_read(
        &self,
        dev: DeviceId,
        iova: Iova,
        buf: &mut [u8],
    ) -> std::result::Result<(), DmaFault> {
        self.with(|st| st.platform.dma_read(dev, iova, buf))
    }

    /// DMA write by a device, translated by the IOMMU as its group is set up now.
    pub fn dma_write(
        &self,
        dev: DeviceId,
        iova: Iova,
        data: &[u8],
    ) -> std::result::Result<(), DmaFault> {
        self.with(|st| st.platform.dma_write(dev, iova, data))
    }

    /// The IOMMU fault log, oldest first.
    pub fn faults(&self) -> Vec<FaultRecord> {
        self.with(|st| st.platform.iommu.faults().to_vec())
    }

    /// What each device's DMA moved through the IOMMU (completed reads and writes, their
    /// bytes, faults), by device.
    pub fn dma_counters(&self) -> Vec<(DeviceId, uiommu_platform::hw::DmaCounters)> {
        self.with(|st| st.platform.iommu.dma_counters())
    }

    /// The IOMMU fault log with each record's time, oldest first, and how many faults there
    /// were in all (the log keeps the most recent).
    pub fn fault_log(&self) -> (Vec<(FaultRecord, std::time::SystemTime)>, u64) {
        self.with(|st| {
            (
                st.platform.iommu.fault_log(),
                st.platform.iommu.faults_total(),
            )
        })
    }

    /// Who owns a group and which kind of domain it is in now.
    pub fn group_status(&self, gid: GroupId) -> Option<GroupStatus> {
        self.with(|st| {
            let g = st.groups.get(gid)?;
            let domain = g.domain.and_then(|d| st.platform.iommu.domain_kind(d));
            Some(GroupStatus {
                owner: g.owner,
                users: g.owner_cnt,
                domain,
                hwpt: g.hwpt,
            })
        })
    }

    /// Number of pages pinned in the whole machine (a page pinned twice counts twice).
    pub fn total_pins(&self) -> u64 {
        self.with(|st| st.platform.memory.frames.total_pins())
    }

    /// Pinned frames whose memory the engine holds itself (pins of `MAP_SHARED` memory in a
    /// host engine: `Memory::hold`).
    pub fn held_frames(&self) -> u64 {
        self.with(|st| st.platform.memory.held.frames())
    }

    /// Pages charged to users (RLIMIT_MODE user) over all contexts, all users together.
    pub fn user_charged_pages(&self) -> u64 {
        self.with(|st| st.acct.user_pages())
    }

    /// Pages charged to user `uid` (its `locked_vm`; uid 0 also stands for the engine's own
    /// user, the user of every space not given one).
    pub fn pages_charged_to(&self, uid: u32) -> u64 {
        self.with(|st| st.acct.pages_of_user(uid))
    }

    /// Register a program's address space, of a process of user `uid`: pins from it are
    /// charged to that user (an engine serving several users: the host engine).
    pub fn add_space_of_user(&self, mem: Arc<dyn UserMemory>, uid: u32) -> SpaceId {
        self.with(|st| {
            let space = st.platform.memory.add_space(mem);
            st.acct.set_space_user(space, uid);
            space
        })
    }

    /// Pages charged to the process owning `space` (RLIMIT_MODE process).
    pub fn process_charged_pages(&self, space: SpaceId) -> u64 {
        self.with(|st| st.acct.process_pages(space))
    }

    /// Check the security invariants I1–I4 over the whole engine (see `invariants`).
    pub fn check_invariants(&self) -> std::result::Result<(), crate::invariants::Violations> {
        self.with(|st| crate::invariants::check(st))
    }

    /// Number of open contexts.
    pub fn contexts(&self) -> usize {
        self.with(|st| st.ctxs.len())
    }
}

/// Ownership and domain of a group, for display and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The owning context (`None`: kernel-owned).
    pub owner: Option<CtxId>,
    /// Users: claimed devices plus devices bound to DMA drivers.
    pub users: u32,
    /// The kind of domain the hardware uses for the group now.
    pub domain: Option<uiommu_platform::hw::DomainKind>,
    /// The HWPT the owner attached the group to.
    pub hwpt: Option<ObjId>,
}

struct ContextInner {
    engine: Arc<Engine>,
    id: CtxId,
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        crate::teardown::close(&self.engine, self.id);
    }
}

/// A security context: one open file of `/dev/iommu`.
///
/// Clone it to share it (like `dup`); the context is torn down when the last clone is dropped.
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Context({})", self.inner.id.0)
    }
}

/// The reply of IOMMU_IOAS_IOVA_RANGES.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IovaRanges {
    /// Usable IOVA ranges, ascending.
    pub ranges: Vec<Range>,
    /// Every IOVA and length must be a multiple of this.
    pub alignment: u64,
}

impl Context {
    /// This context's id in the engine.
    pub fn id(&self) -> CtxId {
        self.inner.id
    }

    /// The engine this context lives in.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State, CtxId) -> Result<R>) -> Result<R> {
        let id = self.inner.id;
        self.inner.engine.with(|st| {
            let r = f(st, id);
            crate::coherency::update(st, id);
            r
        })
    }

    /// Close this handle; the context is torn down if it was the last one.
    pub fn close(self) {
        drop(self)
    }

    /// The type of object `id` (ENOENT if none).
    pub fn object_type(&self, id: ObjId) -> Result<ObjType> {
        self.with(|st, c| Ok(st.ctx(c)?.objects.get(id)?.kind()))
    }

    /// Ids of all objects in the context, ascending.
    pub fn objects(&self) -> Result<Vec<ObjId>> {
        self.with(|st, c| Ok(st.ctx(c)?.objects.ids()))
    }

    /// This context's fault queues (IOMMU_FAULT_QUEUE_ALLOC objects): `(id, groups queued to
    /// be read, groups read and waiting for a response)`.
    pub fn fault_queues(&self) -> Result<Vec<(ObjId, usize, usize)>> {
        let ids: Vec<ObjId> = self.with(|st, c| {
            Ok(st
                .ctx(c)?
                .objects
                .iter()
                .filter(|(_, o)| o.kind() == ObjType::Fault)
                .map(|(id, _)| id)
                .collect())
        })?;
        Ok(ids
            .into_iter()
            .filter_map(|id| self.fault_pending(id).ok().map(|(q, w)| (id, q, w)))
            .collect())
    }

    /// The pages this context's IOASes have pinned (each pages object once, however many
    /// areas or IOASes map it) and, of those, the ones charged to a user or process (objects
    /// not in [`AccountMode::None`]): `uiommu status`'s per-context figures.
    pub fn pinned_pages(&self) -> Result<(u64, u64)> {
        self.with(|st, c| {
            let mut seen = std::collections::HashSet::new();
            let (mut pinned, mut charged) = (0, 0);
            for (_, o) in st.ctx(c)?.objects.iter() {
                if let crate::Object::Ioas(i) = o {
                    i.iopt.add_pins(&mut seen, &mut pinned, &mut charged);
                }
            }
            Ok((pinned, charged))
        })
    }

    /// IOMMU_DESTROY: destroy an IOAS or HWPT nothing depends on (EBUSY otherwise). Devices
    /// and accesses belong to their drivers: EBUSY.
    pub fn destroy(&self, id: ObjId) -> Result<()> {
        self.with(|st, c| crate::teardown::destroy(st, c, id))
    }

    /// The address space this context maps from.
    pub fn space(&self) -> Result<SpaceId> {
        self.with(|st, c| Ok(st.ctx(c)?.space))
    }
}

std::thread_local! {
    /// The address space of the program making the current call on this thread, when it is
    /// not the context's own (see [`with_caller_space`]).
    pub(crate) static CALLER_SPACE: std::cell::Cell<Option<SpaceId>> = const { std::cell::Cell::new(None) };
}

/// Where the current call's caller credentials come from, and what was read of them.
struct CredsSlot {
    caps: Box<dyn Fn() -> CallerCaps>,
    got_caps: Option<CallerCaps>,
    memlock: Box<dyn Fn() -> Option<u64>>,
    got_memlock: Option<Option<u64>>,
}

std::thread_local! {
    /// The privileges and limits of the program making the current call on this thread, when
    /// they are not the engine's (see [`with_caller`]): each read on first use during the call.
    static CALLER_CREDS: std::cell::RefCell<Option<CredsSlot>> = const { std::cell::RefCell::new(None) };
}

/// The capabilities of one caller that the engine's checks ask for, as the kernel reads them
/// from the calling task at the time of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallerCaps {
    /// CAP_IPC_LOCK: its pins are not accounted.
    pub cap_ipc_lock: bool,
    /// CAP_SYS_RESOURCE: it may set IOMMU_OPTION_RLIMIT_MODE.
    pub cap_sys_resource: bool,
}

/// The current call's caller capabilities, if [`with_caller`] gave a source (read once per
/// call, when first needed).
pub(crate) fn caller_caps() -> Option<CallerCaps> {
    CALLER_CREDS.with(|c| {
        let mut slot = c.borrow_mut();
        let s = slot.as_mut()?;
        Some(*s.got_caps.get_or_insert_with(&s.caps))
    })
}

/// The current call's caller RLIMIT_MEMLOCK in pages (`Some(None)`: unlimited), if
/// [`with_caller`] gave a source (read once per call, only when a pin is accounted).
pub(crate) fn caller_memlock_pages() -> Option<Option<u64>> {
    CALLER_CREDS.with(|c| {
        let mut slot = c.borrow_mut();
        let s = slot.as_mut()?;
        Some(*s.got_memlock.get_or_insert_with(&s.memlock))
    })
}

/// Run `f` on behalf of a program whose memory is `space` and whose privileges `caps` and
/// RLIMIT_MEMLOCK `memlock` (in pages, `None` unlimited) read (an engine serving many
/// processes: the host engine), rather than the context's own space and the engine's
/// configuration. Each runs at most once, and only if the call needs it (`caps` for a map or a
/// privileged option, `memlock` for a pin that is accounted).
pub fn with_caller<R>(
    space: SpaceId,
    caps: impl Fn() -> CallerCaps + 'static,
    memlock: impl Fn() -> Option<u64> + 'static,
    f: impl FnOnce() -> R,
) -> R {
    let slot = CredsSlot {
        caps: Box::new(caps),
        got_caps: None,
        memlock: Box::new(memlock),
        got_memlock: None,
    };
    let prev = CALLER_CREDS.with(|c| c.replace(Some(slot)));
    let r = with_caller_space(space, f);
    CALLER_CREDS.with(|c| *c.borrow_mut() = prev);
    r
}

/// Run `f` on behalf of a program whose memory is `space` rather than the context's own:
/// IOMMU_IOAS_MAP called inside maps from `space`, as the kernel maps from the caller's `mm`
/// (a `fork` child mapping its own memory into its parent's context through an inherited fd).
pub fn with_caller_space<R>(space: SpaceId, f: impl FnOnce() -> R) -> R {
    let prev = CALLER_SPACE.with(|s| s.replace(Some(space)));
    let r = f();
    CALLER_SPACE.with(|s| s.set(prev));
    r
}

/// The IOAS `id` of context `c`, mutably (ENOENT if absent or not an IOAS).
pub(crate) fn ioas_mut(st: &mut State, c: CtxId, id: ObjId) -> Result<&mut Ioas> {
    ioas_in(&mut st.ctxs, c, id)
}

pub(crate) fn ioas_in(ctxs: &mut CtxMap, c: CtxId, id: ObjId) -> Result<&mut Ioas> {
    let ctx = ctxs
        .get_mut(&c)
        .ok_or(Error::NoDevice("the context is closed"))?;
    match ctx.objects.get_mut(id)? {
        crate::Object::Ioas(i) => Ok(i),
        _ => Err(Error::WrongType {
            id: id.0,
            expected: "an IOAS",
        }),
    }
}
