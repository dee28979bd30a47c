//! `IOMMU_TEST_CMD`: the kernel selftest's command (`drivers/iommu/iommufd/selftest.c`,
//! `CONFIG_IOMMUFD_TEST`), on the engine's mock IOMMU and mock devices.
//!
//! One handler, [`test_cmd`], decodes `struct iommu_test_cmd` (its union is
//! [`IommuTestCmd::payload`]) and serves each op the Linux 6.12 stable selftests send, with the
//! kernel's checks in the kernel's order and its errno:
//!
//! | op | what it does here |
//! |---|---|
//! | `ADD_RESERVED` | reserve an IOVA range in an IOAS (EINVAL empty, EOVERFLOW wrap, ENOENT, EADDRINUSE) |
//! | `MOCK_DOMAIN`, `MOCK_DOMAIN_FLAGS` | plug a mock device, bind it, attach it to `id` (IOAS or HWPT); replies the selftest object, device and HWPT ids ([`uiommu_core::Context::mock_domain`]) |
//! | `MOCK_DOMAIN_REPLACE` | replace the selftest object's device's page table |
//! | `MD_CHECK_MAP` | the mock domain maps each 2 KiB granule to the frame of the user page (EINVAL otherwise) |
//! | `MD_CHECK_REFS` | each user page is pinned exactly `refs` times (EIO otherwise) |
//! | `MD_CHECK_IOTLB` | a nested mock HWPT's stage-1 IOTLB entry has the value given (EINVAL otherwise) |
//! | `CREATE_ACCESS` | an access object attached to an IOAS, as a new file descriptor ([`SelftestAccess`]) |
//! | `ACCESS_PAGES`, `DESTROY_ACCESS_PAGES` | pin through the access (recorded as numbered items) / unpin one item |
//! | `ACCESS_RW` | read or write IOAS memory through the access |
//! | `ACCESS_REPLACE_IOAS` | move the access to another IOAS (its pins are dropped first) |
//! | `SET_TEMP_MEMORY_LIMIT` | accepted and recorded ([`temp_memory_limit`]); uiommu has no batches for it to limit |
//! | `DIRTY` | set dirty marks in a mock domain from a user bitmap; replies how many mapped granules were marked |
//! | `TRIGGER_IOPF` | a last-page page request (with a PASID when `pasid` is not 0) from the mock device, to the fault queue of the HWPT it is attached to; dropped when that HWPT has none ([`uiommu_core::Context::report_iopf`]) |
//!
//! Unknown ops are EOPNOTSUPP, as the kernel's `iommufd_test()`. Differences from the kernel,
//! on purpose: mock devices accept `MOCK_FLAGS_DEVICE_PASID` (a later kernel's flag the 6.12
//! stable selftests send; at uAPI level 6.12, [`crate::level`], it is EINVAL as in 6.12); `MD_CHECK_REFS` checks every page, where the kernel skips compound
//! (huge) pages; `MOCK_ACCESS_RW_SLOW_PATH` takes the same path as the fast one (there is only
//! one); the `MOCK_FLAGS_ACCESS_SYZ` IOVA conversion (nth area, offset) is implemented as the
//! kernel's.

use crate::abi::*;
use crate::iommufd::IommufdFile;
use crate::ucmd::{read_user, write_user, Ucmd, CHUNK};
use crate::{Caller, EngineFile, Errno};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uiommu_core::error::errno::{EFAULT, EINVAL, EIO, ENOENT, ENOMEM, EOPNOTSUPP, EOVERFLOW};
use uiommu_core::fault::{PageRequest, IOPF_FLAGS_LAST_PAGE, IOPF_FLAGS_PASID_VALID};
use uiommu_core::{AccessOps, Context, CtxId, ObjId, ObjType, RwBuf};
use uiommu_platform::memory::FrameTable;
use uiommu_platform::pagetable::mock::MOCK_IO_PAGE_SIZE;
use uiommu_platform::topology::ModelKind;
use uiommu_platform::{Iova, UserVa, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// EBADFD: the access file descriptor is not one (the kernel's `iommufd_access_get`).
const EBADFD: Errno = 77;
/// EBADE: a pinned page is not the page at the user address given (`iommufd_test_check_pages`).
const EBADE: Errno = 52;

/// Largest `length` ACCESS_PAGES and ACCESS_RW take (the kernel's guard against huge
/// allocations): 16 MiB, ENOMEM above.
pub const MAX_ACCESS_LENGTH: u64 = 16 << 20;

/// Most bits one DIRTY bitmap may have (16 Mi bytes of bitmap), EOVERFLOW above.
pub const MAX_DIRTY_BITS: u64 = (16 << 20) * 8;

/// The kernel's default `iommufd_test_memory_limit`.
pub const DEFAULT_TEMP_MEMORY_LIMIT: u32 = 65536;

/// The temporary memory limit last set by IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT (global, as the
/// kernel's `iommufd_test_memory_limit`).
static TEMP_MEMORY_LIMIT: AtomicU32 = AtomicU32::new(DEFAULT_TEMP_MEMORY_LIMIT);

/// The limit SET_TEMP_MEMORY_LIMIT recorded. In the kernel it caps the size of the internal
/// batches that move page frames between the pinning code and domains, to exercise their
/// boundaries; uiommu pins and maps without such batches, so it records the value and nothing
/// depends on it.
pub fn temp_memory_limit() -> u32 {
    TEMP_MEMORY_LIMIT.load(Ordering::Relaxed)
}

fn eno(e: uiommu_core::Error) -> Errno {
    e.errno()
}

/// The op's payload, decoded from the command's union.
fn payload<T: FromBytes>(cmd: &IommuTestCmd) -> Result<T, Errno> {
    T::read_from_prefix(cmd.payload.as_bytes())
        .map(|(t, _)| t)
        .map_err(|_| EINVAL)
}

/// Put `p` back into the command's union (for the reply).
fn set_payload<T: IntoBytes + Immutable>(cmd: &mut IommuTestCmd, p: &T) {
    let src = p.as_bytes();
    if let Some(dst) = cmd.payload.as_mut_bytes().get_mut(..src.len()) {
        dst.copy_from_slice(src);
    }
}

/// IOMMU_TEST_CMD: dispatch on `op` (EOPNOTSUPP for an unknown one).
pub(crate) fn test_cmd(f: &IommufdFile, c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let cmd: IommuTestCmd = u.cmd()?;
    let ctx = f.context();
    match cmd.op {
        IOMMU_TEST_OP_ADD_RESERVED => add_reserved(ctx, &cmd),
        IOMMU_TEST_OP_MOCK_DOMAIN | IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS => mock_domain(ctx, u, cmd),
        IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE => mock_domain_replace(ctx, u, cmd),
        IOMMU_TEST_OP_MD_CHECK_MAP => md_check_map(ctx, &cmd),
        IOMMU_TEST_OP_MD_CHECK_REFS => md_check_refs(ctx, &cmd),
        IOMMU_TEST_OP_MD_CHECK_IOTLB => md_check_iotlb(ctx, &cmd),
        IOMMU_TEST_OP_CREATE_ACCESS => create_access(ctx, c, u, cmd),
        IOMMU_TEST_OP_ACCESS_REPLACE_IOAS => access_replace_ioas(c, &cmd),
        IOMMU_TEST_OP_ACCESS_PAGES => access_pages(c, u, cmd),
        IOMMU_TEST_OP_ACCESS_RW => access_rw(c, &cmd),
        IOMMU_TEST_OP_DESTROY_ACCESS_PAGES => destroy_access_pages(c, &cmd),
        IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT => {
            let p: TestCmdMemoryLimit = payload(&cmd)?;
            // Smaller than one batch element (an unsigned long and a u32) is refused.
            if p.limit < 12 {
                return Err(EINVAL);
            }
            TEMP_MEMORY_LIMIT.store(p.limit, Ordering::Relaxed);
            Ok(())
        }
        IOMMU_TEST_OP_DIRTY => dirty(ctx, c, u, cmd),
        IOMMU_TEST_OP_TRIGGER_IOPF => trigger_iopf(ctx, &cmd),
        _ => Err(EOPNOTSUPP),
    }
}

/// ADD_RESERVED: EINVAL zero length, EOVERFLOW when the range wraps, then the IOAS (ENOENT)
/// and the reservation (EADDRINUSE over a mapping or an allowed range).
fn add_reserved(ctx: &Context, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let p: TestCmdAddReserved = payload(cmd)?;
    if p.length == 0 {
        return Err(EINVAL);
    }
    let last = p.start.checked_add(p.length - 1).ok_or(EOVERFLOW)?;
    ctx.ioas_add_reserved(ObjId(cmd.id), p.start, last)
        .map_err(eno)
}

/// MOCK_DOMAIN(_FLAGS): a mock device attached to `id`; the three ids are replied. If the
/// reply cannot be written the selftest object is destroyed again (device unplugged).
fn mock_domain(ctx: &Context, u: &Ucmd<'_>, mut cmd: IommuTestCmd) -> Result<(), Errno> {
    let mut p: TestCmdMockDomainFlags = payload(&cmd)?;
    let flags = if cmd.op == IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS {
        p.dev_flags
    } else {
        0
    };
    // Linux 6.12's mock devices know no PASID (MOCK_FLAGS_DEVICE_PASID came later).
    if !crate::level::beyond_6_12()
        && flags & uiommu_platform::devices::mock::MOCK_FLAGS_DEVICE_PASID != 0
    {
        return Err(EINVAL);
    }
    let md = ctx.mock_domain(flags, ObjId(cmd.id)).map_err(eno)?;
    p.out_stdev_id = md.stdev.0;
    p.out_hwpt_id = md.hwpt.0;
    p.out_idev_id = md.idev.0;
    if cmd.op == IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS {
        set_payload(&mut cmd, &p);
    } else {
        let short = TestCmdMockDomain {
            out_stdev_id: p.out_stdev_id,
            out_hwpt_id: p.out_hwpt_id,
            out_idev_id: p.out_idev_id,
        };
        set_payload(&mut cmd, &short);
    }
    if let Err(e) = u.respond(&cmd) {
        let _ = ctx.destroy(md.stdev);
        return Err(e);
    }
    Ok(())
}

/// MOCK_DOMAIN_REPLACE: `id` must be a selftest object (ENOENT); `pt_id` replies the HWPT.
fn mock_domain_replace(ctx: &Context, u: &Ucmd<'_>, mut cmd: IommuTestCmd) -> Result<(), Errno> {
    let mut p: TestCmdMockDomainReplace = payload(&cmd)?;
    let hwpt = ctx
        .mock_domain_replace(ObjId(cmd.id), ObjId(p.pt_id))
        .map_err(eno)?;
    p.pt_id = hwpt.0;
    set_payload(&mut cmd, &p);
    u.respond(&cmd)
}

/// MD_CHECK_MAP: EINVAL for unaligned arguments, a mock paging HWPT (ENOENT / EINVAL), the
/// user pages present (EFAULT); EINVAL when a granule does not map its user page.
fn md_check_map(ctx: &Context, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let p: TestCmdCheckMap = payload(cmd)?;
    match ctx.md_check_map(ObjId(cmd.id), p.iova, p.length, p.uptr) {
        Ok(true) => Ok(()),
        Ok(false) => Err(EINVAL),
        Err(e) => Err(eno(e)),
    }
}

/// MD_CHECK_REFS: EINVAL for unaligned arguments, EFAULT for absent pages, EIO when a page's
/// pin count is not `refs` (`id` is not used, as in the kernel).
fn md_check_refs(ctx: &Context, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let p: TestCmdCheckRefs = payload(cmd)?;
    match ctx.md_check_refs(p.uptr, p.length, p.refs) {
        Ok(true) => Ok(()),
        Ok(false) => Err(EIO),
        Err(e) => Err(eno(e)),
    }
}

/// MD_CHECK_IOTLB: `id` a nested HWPT (ENOENT); EINVAL for an IOTLB id above 3 or another
/// value in the entry.
fn md_check_iotlb(ctx: &Context, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let p: TestCmdCheckIotlb = payload(cmd)?;
    match ctx.object_type(ObjId(cmd.id)) {
        Ok(ObjType::HwptNested) => {}
        Ok(_) => return Err(ENOENT),
        Err(e) => return Err(eno(e)),
    }
    let mut matches = false;
    ctx.hwpt_nested_data(ObjId(cmd.id), &mut |iotlb| {
        matches = p.id <= MOCK_NESTED_DOMAIN_IOTLB_ID_MAX
            && iotlb.get(p.id as usize).copied() == Some(p.iotlb);
    })
    .map_err(eno)?;
    if matches {
        Ok(())
    } else {
        Err(EINVAL)
    }
}

// --- access objects ---------------------------------------------------------------------------

/// One ACCESS_PAGES pin held by a selftest access (the kernel's `selftest_access_item`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Item {
    iova: u64,
    length: u64,
    id: u32,
}

/// The pins of a selftest access, shared by its file and its [`AccessOps`].
#[derive(Debug, Default)]
struct Items {
    list: Vec<Item>,
    next_id: u32,
}

/// The engine's view of a selftest access: unmap notifications drop the pins.
struct StaccessOps {
    items: Arc<Mutex<Items>>,
}

fn lock(m: &Mutex<Items>) -> MutexGuard<'_, Items> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unpin every item of `items` overlapping `[iova, iova + len)` (the kernel's
/// `iommufd_test_access_unmap`).
fn unpin_overlapping(items: &mut Items, ctx: &Context, access: ObjId, iova: u64, len: u64) {
    let last = iova.saturating_add(len.saturating_sub(1));
    items.list.retain(|it| {
        let it_last = it.iova.saturating_add(it.length.saturating_sub(1));
        if iova > it_last || last < it.iova {
            return true;
        }
        let _ = ctx.access_unpin(access, Iova(it.iova), it.length);
        false
    });
}

impl AccessOps for StaccessOps {
    fn unmap(&self, ctx: &Context, access: ObjId, iova: Iova, len: u64) {
        unpin_overlapping(&mut lock(&self.items), ctx, access, iova.0, len);
    }
}

/// The file of IOMMU_TEST_OP_CREATE_ACCESS (the kernel's `[iommufd_test_staccess]`): an
/// access object of a context, attached to an IOAS, with the pins made through it. Closing
/// its last descriptor unpins everything and destroys the access. It keeps its context alive
/// (the kernel's access holds a reference to the iommufd file). `read`/`write` are EINVAL.
pub struct SelftestAccess {
    ctx: Context,
    access: ObjId,
    needs_pin_pages: bool,
    items: Arc<Mutex<Items>>,
    /// The access was destroyed already (the CREATE_ACCESS reply failed).
    dead: AtomicBool,
}

impl std::fmt::Debug for SelftestAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelftestAccess")
            .field("ctx", &self.ctx)
            .field("access", &self.access)
            .field("needs_pin_pages", &self.needs_pin_pages)
            .finish()
    }
}

impl SelftestAccess {
    /// The access object's id in its context.
    pub fn access_id(&self) -> ObjId {
        self.access
    }

    /// The security context the access belongs to.
    pub fn context_id(&self) -> CtxId {
        self.ctx.id()
    }

    /// The ids of the pins it holds, ascending.
    pub fn item_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = lock(&self.items).list.iter().map(|i| i.id).collect();
        ids.sort_unstable();
        ids
    }

    /// Unpin everything and destroy the access (once).
    fn release(&self) {
        if self.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        unpin_overlapping(&mut lock(&self.items), &self.ctx, self.access, 0, u64::MAX);
        let _ = self.ctx.access_destroy(self.access);
    }

    fn live(&self) -> Result<(), Errno> {
        if self.dead.load(Ordering::SeqCst) {
            Err(EBADFD)
        } else {
            Ok(())
        }
    }
}

impl Drop for SelftestAccess {
    fn drop(&mut self) {
        self.release();
    }
}

impl EngineFile for SelftestAccess {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The selftest access behind descriptor `fd` of the caller (EBADFD otherwise).
fn staccess(c: &Caller<'_>, fd: u32) -> Result<Arc<dyn EngineFile>, Errno> {
    let fd = i32::try_from(fd).map_err(|_| EBADFD)?;
    let file = c.fds.file(fd).map_err(|_| EBADFD)?;
    match file.as_any().downcast_ref::<SelftestAccess>() {
        Some(s) => s.live()?,
        None => return Err(EBADFD),
    }
    Ok(file)
}

fn as_staccess(file: &Arc<dyn EngineFile>) -> Result<&SelftestAccess, Errno> {
    file.as_any().downcast_ref::<SelftestAccess>().ok_or(EBADFD)
}

/// CREATE_ACCESS: flags other than NEEDS_PIN_PAGES EOPNOTSUPP; the access is created and
/// attached to IOAS `id` (ENOENT), a descriptor (close-on-exec) is installed for it and
/// replied. The reply is checked writable before the descriptor exists; should it still fail,
/// the access is destroyed and its descriptor left naming a dead file (EBADFD).
fn create_access(
    ctx: &Context,
    c: &Caller<'_>,
    u: &Ucmd<'_>,
    mut cmd: IommuTestCmd,
) -> Result<(), Errno> {
    let mut p: TestCmdCreateAccess = payload(&cmd)?;
    if p.flags & !MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES != 0 {
        return Err(EOPNOTSUPP);
    }
    let needs_pin_pages = p.flags & MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES != 0;
    let items = Arc::new(Mutex::new(Items::default()));
    let ops = Arc::new(StaccessOps {
        items: items.clone(),
    });
    let access = ctx.access_create_with(ops, needs_pin_pages).map_err(eno)?;
    let file = Arc::new(SelftestAccess {
        ctx: ctx.clone(),
        access,
        needs_pin_pages,
        items,
        dead: AtomicBool::new(false),
    });
    // From here on dropping `file` destroys the access.
    ctx.access_attach(access, ObjId(cmd.id)).map_err(eno)?;
    // Writing the command back unchanged proves the reply can be written.
    u.respond(&cmd)?;
    let fd = c.install(file.clone(), true)?;
    p.out_access_fd = fd as u32;
    set_payload(&mut cmd, &p);
    if let Err(e) = u.respond(&cmd) {
        file.release();
        return Err(e);
    }
    Ok(())
}

/// ACCESS_REPLACE_IOAS: the access (EBADFD) moves to IOAS `ioas_id` (ENOENT; its pins are
/// dropped first through the unmap notification).
fn access_replace_ioas(c: &Caller<'_>, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let p: TestCmdAccessReplaceIoas = payload(cmd)?;
    let file = staccess(c, cmd.id)?;
    let s = as_staccess(&file)?;
    s.ctx
        .access_replace(s.access, ObjId(p.ioas_id))
        .map_err(eno)
}

/// The kernel's syzkaller IOVA conversion (`MOCK_FLAGS_ACCESS_SYZ`): the low 32 bits of `iova`
/// pick the nth area of the access's IOAS, the high 32 bits are an offset into it; 0 when
/// there is no such area or the access is not attached.
fn syz_conv_iova(s: &SelftestAccess, iova: u64) -> u64 {
    let nth = (iova & 0xffff_ffff) as usize;
    let offset = iova >> 32;
    let Ok(Some(ioas)) = s.ctx.access_ioas(s.access) else {
        return 0;
    };
    match s.ctx.ioas_areas(ioas) {
        Ok(areas) => areas
            .get(nth)
            .map_or(0, |a| a.iova.start.wrapping_add(offset)),
        Err(_) => 0,
    }
}

/// ACCESS_PAGES: ENOMEM over 16 MiB, EOPNOTSUPP for unknown flags, the access (EBADFD) must
/// pin pages (EOPNOTSUPP); then the pin (the engine's errno). With `uptr` the pinned frames
/// must be the frames of the pages at `uptr` (EFAULT absent, EBADE otherwise; the kernel
/// compares page pointers the same way). The pin is recorded as a new item whose id is
/// replied.
fn access_pages(c: &Caller<'_>, u: &Ucmd<'_>, mut cmd: IommuTestCmd) -> Result<(), Errno> {
    let mut p: TestCmdAccessPages = payload(&cmd)?;
    if p.length > MAX_ACCESS_LENGTH {
        return Err(ENOMEM);
    }
    if p.flags & !(MOCK_FLAGS_ACCESS_WRITE | MOCK_FLAGS_ACCESS_SYZ) != 0 {
        return Err(EOPNOTSUPP);
    }
    let file = staccess(c, cmd.id)?;
    let s = as_staccess(&file)?;
    if !s.needs_pin_pages {
        return Err(EOPNOTSUPP);
    }
    let iova = if p.flags & MOCK_FLAGS_ACCESS_SYZ != 0 {
        syz_conv_iova(s, p.iova)
    } else {
        p.iova
    };
    let write = p.flags & MOCK_FLAGS_ACCESS_WRITE != 0;
    let mut items = lock(&s.items);
    let pfns = s
        .ctx
        .access_pin(s.access, Iova(iova), p.length, write)
        .map_err(eno)?;
    if p.uptr != 0 {
        if let Err(e) = check_pages(c, &s.ctx, p.uptr, iova, &pfns) {
            let _ = s.ctx.access_unpin(s.access, Iova(iova), p.length);
            return Err(e);
        }
    }
    let id = items.next_id;
    items.next_id = items.next_id.wrapping_add(1);
    items.list.push(Item {
        iova,
        length: p.length,
        id,
    });
    p.out_access_pages_id = id;
    set_payload(&mut cmd, &p);
    if let Err(e) = u.respond(&cmd) {
        items.list.retain(|it| it.id != id);
        let _ = s.ctx.access_unpin(s.access, Iova(iova), p.length);
        return Err(e);
    }
    Ok(())
}

/// The kernel's `iommufd_test_check_pages`: page `i` of the pinned range is the page at
/// `uptr - (iova % PAGE_SIZE) + i * PAGE_SIZE` of the caller.
fn check_pages(
    c: &Caller<'_>,
    ctx: &Context,
    uptr: u64,
    iova: u64,
    pfns: &[uiommu_platform::memory::Pfn],
) -> Result<(), Errno> {
    let space = ctx.space().map_err(eno)?;
    let base = uptr.wrapping_sub(iova % PAGE_SIZE) & !(PAGE_SIZE - 1);
    for (i, pfn) in pfns.iter().enumerate() {
        let va = (i as u64)
            .checked_mul(PAGE_SIZE)
            .and_then(|o| base.checked_add(o))
            .ok_or(EFAULT)?;
        c.mem
            .probe(UserVa(va), PAGE_SIZE, false)
            .map_err(|_| EFAULT)?;
        if FrameTable::frame_of(space, UserVa(va)) != Some(*pfn) {
            return Err(EBADE);
        }
    }
    Ok(())
}

/// DESTROY_ACCESS_PAGES: the access (EBADFD); the item with that id is unpinned (ENOENT when
/// there is none — an unmap may have dropped it).
fn destroy_access_pages(c: &Caller<'_>, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let p: TestCmdDestroyAccessPages = payload(cmd)?;
    let file = staccess(c, cmd.id)?;
    let s = as_staccess(&file)?;
    let mut items = lock(&s.items);
    let Some(pos) = items.list.iter().position(|it| it.id == p.access_pages_id) else {
        return Err(ENOENT);
    };
    let it = items.list.remove(pos);
    let _ = s.ctx.access_unpin(s.access, Iova(it.iova), it.length);
    Ok(())
}

/// ACCESS_RW: ENOMEM over 16 MiB, EOPNOTSUPP for unknown flags, the access (EBADFD); a write
/// reads the caller's buffer first (EFAULT); then the engine's read or write through the
/// access's IOAS; a read is copied out (EFAULT).
fn access_rw(c: &Caller<'_>, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let p: TestCmdAccessRw = payload(cmd)?;
    if p.length > MAX_ACCESS_LENGTH {
        return Err(ENOMEM);
    }
    if p.flags & !(MOCK_ACCESS_RW_WRITE | MOCK_ACCESS_RW_SLOW_PATH | MOCK_FLAGS_ACCESS_SYZ) != 0 {
        return Err(EOPNOTSUPP);
    }
    let file = staccess(c, cmd.id)?;
    let s = as_staccess(&file)?;
    let len = usize::try_from(p.length).map_err(|_| ENOMEM)?;
    let mut tmp = vec![0u8; len];
    let write = p.flags & MOCK_ACCESS_RW_WRITE != 0;
    if write {
        read_user(c.mem, p.uptr, &mut tmp)?;
    }
    let iova = if p.flags & MOCK_FLAGS_ACCESS_SYZ != 0 {
        syz_conv_iova(s, p.iova)
    } else {
        p.iova
    };
    let buf = if write {
        RwBuf::Write(&tmp)
    } else {
        RwBuf::Read(&mut tmp)
    };
    s.ctx.access_rw(s.access, Iova(iova), buf).map_err(eno)?;
    if !write {
        write_user(c.mem, p.uptr, &tmp)?;
    }
    Ok(())
}

// --- dirty tracking, faults ---------------------------------------------------------------------

/// DIRTY: EINVAL for a zero `page_size` or `length`, `iova` or `length` not a multiple of
/// `page_size`, or a null bitmap; EOVERFLOW above [`MAX_DIRTY_BITS`]; a mock paging HWPT
/// (ENOENT / EINVAL) with tracking on (EINVAL); the bitmap readable (EFAULT). For each set bit
/// `i`, the mock entry with index `(iova + i * page_size) / page_size` — the IOVA that index
/// stands for in 2 KiB granules, as the kernel computes it — is marked dirty if mapped;
/// `out_nr_dirty` replies how many were.
fn dirty(ctx: &Context, c: &Caller<'_>, u: &Ucmd<'_>, mut cmd: IommuTestCmd) -> Result<(), Errno> {
    let mut p: TestCmdDirty = payload(&cmd)?;
    let ps = p.page_size;
    if ps == 0
        || p.length == 0
        || !p.iova.is_multiple_of(ps)
        || !p.length.is_multiple_of(ps)
        || p.uptr == 0
    {
        return Err(EINVAL);
    }
    let max = p.length / ps;
    if max > MAX_DIRTY_BITS {
        return Err(EOVERFLOW);
    }
    let hwpt = ObjId(cmd.id);
    ctx.mock_dirty_ready(hwpt).map_err(eno)?;
    let nbytes = max.div_ceil(8);
    let mut count = 0u64;
    let mut buf = vec![0u8; CHUNK.min(nbytes as usize)];
    let mut done = 0u64;
    while done < nbytes {
        let n = usize::try_from(nbytes - done).map_or(buf.len(), |r| r.min(buf.len()));
        let at = p.uptr.checked_add(done).ok_or(EFAULT)?;
        read_user(c.mem, at, &mut buf[..n])?;
        let mut iovas = Vec::new();
        for (k, byte) in buf[..n].iter().enumerate() {
            for b in 0..8 {
                if byte & (1 << b) == 0 {
                    continue;
                }
                let i = (done + k as u64) * 8 + b;
                if i >= max {
                    break;
                }
                let cur = p.iova.wrapping_add(i.wrapping_mul(ps));
                if let Some(gran) = (cur / ps).checked_mul(MOCK_IO_PAGE_SIZE) {
                    iovas.push(gran);
                }
            }
        }
        count += ctx.mock_set_dirty(hwpt, &iovas).map_err(eno)?;
        done += n as u64;
    }
    p.out_nr_dirty = count;
    set_payload(&mut cmd, &p);
    u.respond(&cmd)
}

/// TRIGGER_IOPF: the device (ENOENT) must be a mock (EINVAL). Then a page request flagged
/// LAST_PAGE (and PASID_VALID when `pasid` is not IOMMU_NO_PASID, 0) with the given group,
/// permissions and address is reported for the device; 0 is returned whether or not a fault
/// queue takes it, as in the kernel.
fn trigger_iopf(ctx: &Context, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let p: TestCmdTriggerIopf = payload(cmd)?;
    let dev = ctx.device_of(ObjId(p.dev_id)).map_err(eno)?;
    let model = ctx
        .engine()
        .with_platform(|pl| pl.topology.device(dev).map(|d| d.model));
    if model != Some(ModelKind::Mock) {
        return Err(EINVAL);
    }
    let mut flags = IOPF_FLAGS_LAST_PAGE;
    if p.pasid != 0 {
        flags |= IOPF_FLAGS_PASID_VALID;
    }
    let req = PageRequest {
        flags,
        pasid: p.pasid,
        grpid: p.grpid,
        perm: p.perm,
        addr: p.addr,
    };
    let _ = ctx.report_iopf(ObjId(p.dev_id), req);
    Ok(())
}
