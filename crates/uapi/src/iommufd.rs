//! The `/dev/iommu` file: one security context, and the dispatcher of its ioctls.
//!
//! [`IommufdFile::ioctl`] is the kernel's `iommufd_fops_ioctl`: a table of rows
//! `{number, size, min_size, handler}` indexed by the command's `nr`. The argument's leading
//! `size` is read first (EFAULT), then the number is checked against the row (ENOTTY), then the
//! struct is copied by the size-extensible protocol of [`crate::ucmd`]. Each handler is one
//! command of `ioas.c`, `main.c`, `hw_pagetable.c`, `device.c` or `vfio_compat.c`: its checks
//! come in the kernel's order with the kernel's errno (reserved fields and unknown flags, then
//! overflow, then object look-ups, then the engine call, then the reply), and the engine does
//! the work. Engine refusals become errno through [`uiommu_core::Error::errno`] only.
//!
//! Where a reply cannot be written (EFAULT) after an object was created, the object is
//! destroyed again, as the kernel aborts it; a mapping made before a failed reply stays, as in
//! the kernel. `docs/abi.md` lists each command's checks and what is not implemented yet.
//!
//! IOVA ranges here use the kernel's inclusive `last` convention.

use crate::abi::*;
use crate::ucmd::{clear_user, read_size, read_user, read_value, write_user, write_value, Ucmd};
use crate::{Caller, Errno};
use std::sync::Arc;
use uiommu_core::abi_support::HwptPagingInfo;
use uiommu_core::error::errno::{
    EFAULT, EINVAL, EMSGSIZE, ENODEV, ENOENT, ENOMEM, ENOTTY, EOPNOTSUPP, EOVERFLOW,
};
use uiommu_core::{Context, Engine, HwptFlags, ObjId, ObjType};
use uiommu_platform::memory::{SpaceId, UserMemory};
use uiommu_platform::pagetable::{PageTableFormat, Prot};
use uiommu_platform::topology::ModelKind;
use uiommu_platform::{Iova, Range, UserVa, PAGE_SIZE};
use zerocopy::IntoBytes;

/// Most IOVA ranges one IOMMU_IOAS_ALLOW_IOVAS may carry. The kernel reads and checks the
/// ranges one by one and allocates a node per range until memory runs out (ENOMEM); uiommu does
/// the same and answers ENOMEM when range number 2^20 + 1 has been read and checked (16 MiB of
/// ranges), so that a hostile `num_iovas` meets the kernel's EFAULT or EINVAL at the first
/// unreadable or bad range, and only a million good ones meet the host's memory limit.
pub const MAX_ALLOW_IOVAS: usize = 1 << 20;

/// Largest invalidation request the kernel accepts (`entry_len`), one page.
pub const MAX_INVALIDATE_ENTRY_LEN: u32 = 4096;

/// Most invalidation requests in one IOMMU_HWPT_INVALIDATE (the kernel's cap, `1 << 19`).
pub const MAX_INVALIDATE_ENTRY_NUM: u32 = 1 << 19;

/// One open `/dev/iommu`: a security context of the engine.
pub struct IommufdFile {
    ctx: Context,
}

impl std::fmt::Debug for IommufdFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommufdFile")
            .field("ctx", &self.ctx)
            .finish()
    }
}

/// A command handler: the file, the caller, the copied-in command.
type Handler = fn(&IommufdFile, &Caller<'_>, &Ucmd<'_>) -> Result<(), Errno>;

/// One row of the dispatch table (the kernel's `struct iommufd_ioctl_op`).
struct Op {
    /// The full ioctl number.
    number: u32,
    /// Size of the command struct known here.
    size: usize,
    /// Smallest size accepted.
    min_size: usize,
    /// `None`: the command is known but not implemented yet (ENOTTY).
    handler: Option<Handler>,
}

const fn op<T: UapiCmd>(handler: Option<Handler>) -> Op {
    Op {
        number: T::NUMBER,
        size: size_of::<T>(),
        min_size: T::MIN_SIZE,
        handler,
    }
}

/// The dispatch table, in command-number order.
static OPS: &[Op] = &[
    op::<IommuDestroy>(Some(destroy)),
    op::<IommuIoasAlloc>(Some(ioas_alloc)),
    op::<IommuIoasAllowIovas>(Some(ioas_allow_iovas)),
    op::<IommuIoasCopy>(Some(ioas_copy)),
    op::<IommuIoasIovaRanges>(Some(ioas_iova_ranges)),
    op::<IommuIoasMap>(Some(ioas_map)),
    op::<IommuIoasUnmap>(Some(ioas_unmap)),
    op::<IommuOption>(Some(option)),
    op::<IommuVfioIoas>(Some(vfio_ioas)),
    op::<IommuHwptAlloc>(Some(hwpt_alloc)),
    op::<IommuHwInfo>(Some(get_hw_info)),
    op::<IommuHwptSetDirtyTracking>(Some(hwpt_set_dirty_tracking)),
    op::<IommuHwptGetDirtyBitmap>(Some(hwpt_get_dirty_bitmap)),
    op::<IommuHwptInvalidate>(Some(hwpt_invalidate)),
    // Fault queues, a file per queue: crate::fault.
    op::<IommuFaultAlloc>(Some(crate::fault::fault_alloc)),
    // The selftest command (CONFIG_IOMMUFD_TEST): crate::selftest.
    op::<IommuTestCmd>(Some(crate::selftest::test_cmd)),
];

fn eno(e: uiommu_core::Error) -> Errno {
    e.errno()
}

impl IommufdFile {
    /// `open("/dev/iommu")` by the program whose memory is `space`.
    pub fn open(engine: &Arc<Engine>, space: SpaceId) -> Result<IommufdFile, Errno> {
        Ok(IommufdFile {
            ctx: engine.open(space).map_err(eno)?,
        })
    }

    /// The security context behind the file.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// `ioctl(fd, request, arg)`: serve one command. `arg` is the argument pointer in the
    /// caller's memory. Returns the ioctl's return value (0 for every iommufd command).
    pub fn ioctl(&self, caller: &Caller<'_>, request: u64, arg: u64) -> Result<i64, Errno> {
        // The kernel's `unsigned int cmd`: upper bits of the request are dropped.
        let cmd = request as u32;
        if crate::vfio_compat::forwarded(cmd) {
            // The kernel hands these to its VFIO type1 compatibility ioctls on the same file.
            return crate::vfio_compat::ioctl(&self.ctx, caller, cmd, arg);
        }
        let nr = ioc_nr(cmd);
        let served = OPS
            .iter()
            .find(|o| ioc_nr(o.number) == nr)
            .filter(|o| o.number == cmd)
            .and_then(|o| Some((o, o.handler?)));
        let Some((op, handler)) = served else {
            // The size is read even for an unknown command: unreadable is EFAULT first.
            read_size(caller.mem, arg)?;
            return Err(ENOTTY);
        };
        let ucmd = Ucmd::fetch_whole(caller.mem, arg, op.size, op.min_size)?;
        handler(self, caller, &ucmd)?;
        Ok(0)
    }

    /// Whether a paging HWPT (described by `info`) has dirty-tracking operations: it was
    /// allocated with DIRTY_TRACKING (automatic HWPTs never are).
    fn has_dirty_ops(info: &HwptPagingInfo) -> bool {
        !info.auto && info.dirty_capable && info.dirty_ops
    }
}

/// Whether object `id` exists with type `ty` (ENOENT otherwise, as `iommufd_get_object`).
fn expect_type(ctx: &Context, id: u32, ty: ObjType) -> Result<(), Errno> {
    match ctx.object_type(ObjId(id)) {
        Ok(t) if t == ty => Ok(()),
        Ok(_) => Err(ENOENT),
        Err(e) => Err(eno(e)),
    }
}

// --- main.c ----------------------------------------------------------------------------------

/// IOMMU_DESTROY: ENOENT unknown id, EBUSY while something depends on the object.
fn destroy(f: &IommufdFile, _c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let cmd: IommuDestroy = u.cmd()?;
    f.ctx.destroy(ObjId(cmd.id)).map_err(eno)
}

/// IOMMU_OPTION: RLIMIT_MODE on object 0, HUGE_PAGES on an IOAS; only `val64` is written back.
fn option(f: &IommufdFile, _c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuOption = u.cmd()?;
    if cmd.reserved != 0 {
        return Err(EOPNOTSUPP);
    }
    match cmd.option_id {
        IOMMU_OPTION_RLIMIT_MODE => {
            if cmd.object_id != 0 {
                return Err(EOPNOTSUPP);
            }
            match cmd.op {
                IOMMU_OPTION_OP_GET => {
                    cmd.val64 = u64::from(f.ctx.rlimit_mode_process().map_err(eno)?);
                }
                IOMMU_OPTION_OP_SET => match cmd.val64 {
                    0 | 1 => f.ctx.set_rlimit_mode_process(cmd.val64 == 1).map_err(eno)?,
                    _ => {
                        // The kernel checks the capability and the empty table before the
                        // value: setting the current mode again makes the same checks and
                        // changes nothing.
                        let cur = f.ctx.rlimit_mode_process().map_err(eno)?;
                        f.ctx.set_rlimit_mode_process(cur).map_err(eno)?;
                        return Err(EINVAL);
                    }
                },
                _ => return Err(EOPNOTSUPP),
            }
        }
        IOMMU_OPTION_HUGE_PAGES => {
            let ioas = ObjId(cmd.object_id);
            let cur = f.ctx.huge_pages(ioas).map_err(eno)?;
            match cmd.op {
                IOMMU_OPTION_OP_GET => cmd.val64 = u64::from(cur),
                IOMMU_OPTION_OP_SET => match cmd.val64 {
                    0 | 1 => f.ctx.set_huge_pages(ioas, cmd.val64 == 1).map_err(eno)?,
                    _ => return Err(EINVAL),
                },
                _ => return Err(EOPNOTSUPP),
            }
        }
        _ => return Err(EOPNOTSUPP),
    }
    u.respond_at(
        core::mem::offset_of!(IommuOption, val64),
        cmd.val64.as_bytes(),
    )
}

// --- ioas.c ----------------------------------------------------------------------------------

/// IOMMU_IOAS_ALLOC: EOPNOTSUPP for flags; the IOAS is destroyed again if the reply fails.
fn ioas_alloc(f: &IommufdFile, _c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuIoasAlloc = u.cmd()?;
    if cmd.flags != 0 {
        return Err(EOPNOTSUPP);
    }
    let id = f.ctx.ioas_alloc().map_err(eno)?;
    cmd.out_ioas_id = id.0;
    if let Err(e) = u.respond(&cmd) {
        let _ = f.ctx.destroy(id);
        return Err(e);
    }
    Ok(())
}

/// IOMMU_IOAS_IOVA_RANGES: the two-call protocol. Ranges are written up to the caller's
/// capacity; `num_iovas` always says how many exist; EMSGSIZE (after the reply) when they did
/// not all fit.
fn ioas_iova_ranges(f: &IommufdFile, c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuIoasIovaRanges = u.cmd()?;
    if cmd.reserved != 0 {
        return Err(EOPNOTSUPP);
    }
    let r = f.ctx.ioas_iova_ranges(ObjId(cmd.ioas_id)).map_err(eno)?;
    let max = cmd.num_iovas;
    for (i, range) in r.ranges.iter().enumerate() {
        let Ok(i) = u32::try_from(i) else { break };
        if i >= max {
            break;
        }
        let at = u64::from(i)
            .checked_mul(size_of::<IommuIovaRange>() as u64)
            .and_then(|o| cmd.allowed_iovas.checked_add(o))
            .ok_or(EFAULT)?;
        let elm = IommuIovaRange {
            start: range.start,
            last: range.last,
        };
        write_value(c.mem, at, &elm)?;
    }
    cmd.num_iovas = u32::try_from(r.ranges.len()).unwrap_or(u32::MAX);
    cmd.out_iova_alignment = r.alignment;
    u.respond(&cmd)?;
    if cmd.num_iovas > max {
        return Err(EMSGSIZE);
    }
    Ok(())
}

/// IOMMU_IOAS_ALLOW_IOVAS: each range is read and checked in turn (EFAULT, EINVAL for
/// `start >= last` or an overlap with an earlier one), then the set replaces the old one.
fn ioas_allow_iovas(f: &IommufdFile, c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let cmd: IommuIoasAllowIovas = u.cmd()?;
    if cmd.reserved != 0 {
        return Err(EOPNOTSUPP);
    }
    expect_type(&f.ctx, cmd.ioas_id, ObjType::Ioas)?;
    let mut ranges: Vec<Range> = Vec::new();
    // The ranges so far by start (they do not overlap): an overlap is with the neighbour below
    // or above, so each check costs O(log n).
    let mut by_start: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for i in 0..u64::from(cmd.num_iovas) {
        let at = i
            .checked_mul(size_of::<IommuIovaRange>() as u64)
            .and_then(|o| cmd.allowed_iovas.checked_add(o))
            .ok_or(EFAULT)?;
        let r: IommuIovaRange = read_value(c.mem, at)?;
        if r.start >= r.last {
            return Err(EINVAL);
        }
        let below = by_start.range(..=r.start).next_back();
        let above = by_start.range(r.start..).next();
        if below.is_some_and(|(_, &last)| last >= r.start)
            || above.is_some_and(|(&start, _)| start <= r.last)
        {
            return Err(EINVAL);
        }
        if ranges.len() == MAX_ALLOW_IOVAS {
            return Err(ENOMEM);
        }
        by_start.insert(r.start, r.last);
        ranges.push(Range {
            start: r.start,
            last: r.last,
        });
    }
    f.ctx
        .ioas_allow_iovas(ObjId(cmd.ioas_id), &ranges)
        .map_err(eno)
}

const MAP_FLAGS: u32 =
    IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;

fn map_prot(flags: u32) -> Prot {
    Prot {
        read: flags & IOMMU_IOAS_MAP_READABLE != 0,
        write: flags & IOMMU_IOAS_MAP_WRITEABLE != 0,
    }
}

/// IOMMU_IOAS_MAP: flags/reserved EOPNOTSUPP, `u64::MAX` iova or length EOVERFLOW, no access
/// right EINVAL, then the IOAS (ENOENT) and the engine.
fn ioas_map(f: &IommufdFile, _c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuIoasMap = u.cmd()?;
    if cmd.flags & !MAP_FLAGS != 0 || cmd.reserved != 0 {
        return Err(EOPNOTSUPP);
    }
    if cmd.iova == u64::MAX || cmd.length == u64::MAX {
        return Err(EOVERFLOW);
    }
    if cmd.flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE) == 0 {
        return Err(EINVAL);
    }
    let fixed = (cmd.flags & IOMMU_IOAS_MAP_FIXED_IOVA != 0).then_some(Iova(cmd.iova));
    let iova = f
        .ctx
        .ioas_map(
            ObjId(cmd.ioas_id),
            UserVa(cmd.user_va),
            cmd.length,
            fixed,
            map_prot(cmd.flags),
        )
        .map_err(eno)?;
    cmd.iova = iova.0;
    u.respond(&cmd)
}

/// IOMMU_IOAS_COPY: as MAP for flags, overflow and rights; then the source range (ENOENT when
/// not fully mapped), the destination IOAS, the engine.
fn ioas_copy(f: &IommufdFile, _c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuIoasCopy = u.cmd()?;
    if cmd.flags & !MAP_FLAGS != 0 {
        return Err(EOPNOTSUPP);
    }
    if cmd.length == u64::MAX || cmd.src_iova == u64::MAX || cmd.dst_iova == u64::MAX {
        return Err(EOVERFLOW);
    }
    if cmd.flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE) == 0 {
        return Err(EINVAL);
    }
    let fixed = (cmd.flags & IOMMU_IOAS_MAP_FIXED_IOVA != 0).then_some(Iova(cmd.dst_iova));
    let iova = f
        .ctx
        .ioas_copy(
            ObjId(cmd.dst_ioas_id),
            ObjId(cmd.src_ioas_id),
            Iova(cmd.src_iova),
            cmd.length,
            fixed,
            map_prot(cmd.flags),
        )
        .map_err(eno)?;
    cmd.dst_iova = iova.0;
    u.respond(&cmd)
}

/// IOMMU_IOAS_UNMAP: the IOAS first (ENOENT); iova 0 with length `u64::MAX` unmaps everything
/// (0 bytes is fine); otherwise EOVERFLOW for `u64::MAX`, ENOENT when nothing or part of an
/// area is in the range. `length` returns the bytes unmapped.
fn ioas_unmap(f: &IommufdFile, _c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuIoasUnmap = u.cmd()?;
    let ioas = ObjId(cmd.ioas_id);
    let n = if cmd.iova == 0 && cmd.length == u64::MAX {
        f.ctx.ioas_unmap_all(ioas)
    } else {
        f.ctx.ioas_unmap(ioas, Iova(cmd.iova), cmd.length)
    }
    .map_err(eno)?;
    cmd.length = n;
    u.respond(&cmd)
}

// --- vfio_compat.c ---------------------------------------------------------------------------

/// IOMMU_VFIO_IOAS: GET (ENODEV when none is set), SET (ENOENT unless an IOAS), CLEAR.
fn vfio_ioas(f: &IommufdFile, _c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuVfioIoas = u.cmd()?;
    if cmd.reserved != 0 {
        return Err(EOPNOTSUPP);
    }
    match cmd.op {
        IOMMU_VFIO_IOAS_GET => {
            let id = f.ctx.vfio_ioas().map_err(|e| match e.errno() {
                // The kernel's get_compat_ioas: no compatibility IOAS is ENODEV.
                ENOENT => ENODEV,
                n => n,
            })?;
            cmd.ioas_id = id.0;
            u.respond(&cmd)
        }
        IOMMU_VFIO_IOAS_SET => f.ctx.set_vfio_ioas(Some(ObjId(cmd.ioas_id))).map_err(eno),
        IOMMU_VFIO_IOAS_CLEAR => f.ctx.set_vfio_ioas(None).map_err(eno),
        _ => Err(EOPNOTSUPP),
    }
}

// --- hw_pagetable.c --------------------------------------------------------------------------

/// What the uAPI knows about the IOMMU driver behind a bound device.
struct DevInfo {
    mock: bool,
    mock_flags: u32,
}

impl DevInfo {
    fn of(ctx: &Context, dev_id: u32) -> Result<DevInfo, Errno> {
        let dev = ctx.device_of(ObjId(dev_id)).map_err(eno)?;
        let (model, mock_flags) = ctx
            .engine()
            .with_platform(|p| (p.topology.device(dev).map(|d| d.model), p.mock_flags(dev)));
        let mock = model == Some(ModelKind::Mock);
        Ok(DevInfo { mock, mock_flags })
    }

    fn format(&self) -> PageTableFormat {
        if self.mock {
            PageTableFormat::Mock
        } else {
            PageTableFormat::Radix
        }
    }

    /// IOMMU_CAP_DIRTY_TRACKING of the device's IOMMU.
    fn dirty_capable(&self) -> bool {
        !self.mock || self.mock_flags & MOCK_FLAGS_DEVICE_NO_DIRTY == 0
    }
}

/// IOMMU_HWPT_ALLOC: a paging HWPT on an IOAS, or a nested HWPT (the mock driver's selftest
/// data) on a nest-parent paging HWPT.
fn hwpt_alloc(f: &IommufdFile, c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuHwptAlloc = u.cmd()?;
    if cmd.reserved != 0 {
        return Err(EOPNOTSUPP);
    }
    if (cmd.data_type == IOMMU_HWPT_DATA_NONE) != (cmd.data_len == 0) {
        return Err(EINVAL);
    }
    let dev = DevInfo::of(&f.ctx, cmd.dev_id)?;
    // The kernel turns a failed look-up of pt_id into EINVAL, not ENOENT.
    let pt_type = f.ctx.object_type(ObjId(cmd.pt_id)).map_err(|_| EINVAL)?;
    let dev_id = ObjId(cmd.dev_id);
    let pt = ObjId(cmd.pt_id);
    let id = match pt_type {
        ObjType::Ioas => {
            let valid = IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
            if cmd.flags & !valid != 0 {
                return Err(EOPNOTSUPP);
            }
            let dirty = cmd.flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0;
            if dirty && !dev.dirty_capable() {
                return Err(EOPNOTSUPP);
            }
            // Driver-specific data describes nested (user-managed) tables only.
            if cmd.data_len != 0 {
                return Err(EOPNOTSUPP);
            }
            let flags = HwptFlags {
                nest_parent: cmd.flags & IOMMU_HWPT_ALLOC_NEST_PARENT != 0,
                dirty_tracking: dirty,
            };
            f.ctx.hwpt_alloc_paging(dev_id, pt, flags).map_err(eno)?
        }
        ObjType::HwptPaging => {
            if cmd.flags & !IOMMU_HWPT_FAULT_ID_VALID != 0 || cmd.data_len == 0 {
                return Err(EOPNOTSUPP);
            }
            let parent = f.ctx.hwpt_paging_info(pt).map_err(eno)?;
            if parent.auto || !parent.nest_parent || parent.format != dev.format() {
                return Err(EINVAL);
            }
            // Only the selftest mock driver has user-managed tables.
            if !dev.mock || cmd.data_type != IOMMU_HWPT_DATA_SELFTEST {
                return Err(EOPNOTSUPP);
            }
            // iommu_copy_struct_from_user: the length must be exactly what the driver knows.
            if cmd.data_len as usize != size_of::<IommuHwptSelftest>() {
                return Err(EINVAL);
            }
            let data: IommuHwptSelftest = read_value(c.mem, cmd.data_uptr)?;
            let iotlb = vec![data.iotlb; MOCK_NESTED_DOMAIN_IOTLB_NUM as usize];
            // The fault object is looked up after the HWPT is made (ENOENT when `fault_id` is
            // not one; the HWPT is undone).
            let fault = (cmd.flags & IOMMU_HWPT_FAULT_ID_VALID != 0).then_some(ObjId(cmd.fault_id));
            f.ctx
                .hwpt_alloc_nested_with_fault(dev_id, pt, iotlb, fault)
                .map_err(eno)?
        }
        _ => return Err(EINVAL),
    };
    cmd.out_hwpt_id = id.0;
    if let Err(e) = u.respond(&cmd) {
        let _ = f.ctx.destroy(id);
        return Err(e);
    }
    Ok(())
}

/// IOMMU_HWPT_SET_DIRTY_TRACKING: unknown flags EOPNOTSUPP (the 6.12 kernel does not check
/// `reserved`), a paging HWPT (ENOENT) with dirty-tracking operations (EOPNOTSUPP). Enabling
/// clears the marks left over so that the first read is a clean snapshot.
fn hwpt_set_dirty_tracking(f: &IommufdFile, _c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let cmd: IommuHwptSetDirtyTracking = u.cmd()?;
    if cmd.flags & !IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0 {
        return Err(EOPNOTSUPP);
    }
    let hwpt = ObjId(cmd.hwpt_id);
    let info = f.ctx.hwpt_paging_info(hwpt).map_err(eno)?;
    if !IommufdFile::has_dirty_ops(&info) {
        return Err(EOPNOTSUPP);
    }
    let enable = cmd.flags & IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0;
    if enable {
        for area in f.ctx.ioas_areas(info.ioas).map_err(eno)? {
            f.ctx
                .hwpt_read_dirty(
                    hwpt,
                    Iova(area.iova.start),
                    area.iova.len(),
                    false,
                    &mut |_| {},
                )
                .map_err(eno)?;
        }
    }
    f.ctx.hwpt_set_dirty_tracking(hwpt, enable).map_err(eno)
}

/// IOMMU_HWPT_GET_DIRTY_BITMAP: flags/reserved EOPNOTSUPP; a paging HWPT (ENOENT); the range
/// (EINVAL zero length, EOVERFLOW wrap, EINVAL misaligned to the IOAS or to `page_size`, EINVAL
/// `page_size` 0 or not a power of two); dirty operations (EOPNOTSUPP); tracking on and the
/// range wholly mapped (EINVAL). Then one bit per `page_size` from `iova` is set (never
/// cleared) in the caller's bitmap for each dirty unit, clearing the marks unless NO_CLEAR.
fn hwpt_get_dirty_bitmap(f: &IommufdFile, c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let cmd: IommuHwptGetDirtyBitmap = u.cmd()?;
    if cmd.flags & !IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0 || cmd.reserved != 0 {
        return Err(EOPNOTSUPP);
    }
    let hwpt = ObjId(cmd.hwpt_id);
    let info = f.ctx.hwpt_paging_info(hwpt).map_err(eno)?;
    let align = f
        .ctx
        .ioas_iova_ranges(info.ioas)
        .map_err(eno)?
        .alignment
        .max(1);
    if cmd.length == 0 {
        return Err(EINVAL);
    }
    let last = cmd.iova.checked_add(cmd.length - 1).ok_or(EOVERFLOW)?;
    let end = last.wrapping_add(1);
    let amask = align.wrapping_sub(1);
    if cmd.iova & amask != 0 || end & amask != 0 {
        return Err(EINVAL);
    }
    let ps = cmd.page_size;
    if ps == 0 || !ps.is_power_of_two() {
        return Err(EINVAL);
    }
    if cmd.iova & (ps - 1) != 0 || end & (ps - 1) != 0 {
        return Err(EINVAL);
    }
    if !IommufdFile::has_dirty_ops(&info) {
        return Err(EOPNOTSUPP);
    }
    if !info.dirty_tracking {
        return Err(EINVAL);
    }
    let areas = f.ctx.ioas_areas(info.ioas).map_err(eno)?;
    if !covered(areas.iter().map(|a| a.iova), cmd.iova, last) {
        return Err(EINVAL);
    }
    let keep = cmd.flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0;
    let bitmap = DirtyBitmap {
        mem: c.mem,
        data: cmd.data,
        iova: cmd.iova,
        page_size: ps,
        granule: info.granule.max(1),
    };
    // Windows end on multiples of `span` (a power of two of at least 2 MiB), so no leaf of up
    // to 2 MiB is split between two windows, and each window's bitmap stays under 256 KiB.
    let span = ps.checked_mul(1 << 18).unwrap_or(ps).max(2 << 20);
    let mut wstart = cmd.iova;
    loop {
        let wlast = (wstart / span + 1)
            .checked_mul(span)
            .map_or(last, |next| (next - 1).min(last));
        bitmap.window(&f.ctx, hwpt, wstart, wlast, keep)?;
        if wlast >= last {
            return Ok(());
        }
        wstart = wlast + 1;
    }
}

/// Whether the ascending `areas` cover `start..=last` without a gap.
fn covered(areas: impl Iterator<Item = Range>, start: u64, last: u64) -> bool {
    let mut cur = start;
    for a in areas {
        if a.last < cur {
            continue;
        }
        if a.start > cur {
            return false;
        }
        if a.last >= last {
            return true;
        }
        cur = a.last + 1;
    }
    false
}

/// The caller's dirty bitmap for one GET_DIRTY_BITMAP.
struct DirtyBitmap<'m> {
    mem: &'m dyn UserMemory,
    /// User address of bit 0.
    data: u64,
    /// IOVA of bit 0.
    iova: u64,
    page_size: u64,
    /// Size of the unit the page table reports.
    granule: u64,
}

impl DirtyBitmap<'_> {
    /// Read the dirty marks of `wstart..=wlast` and set their bits; the bitmap bytes are
    /// checked writable first, as the kernel pins them before it reads the marks.
    fn window(
        &self,
        ctx: &Context,
        hwpt: ObjId,
        wstart: u64,
        wlast: u64,
        keep: bool,
    ) -> Result<(), Errno> {
        let ps = self.page_size;
        let first_bit = (wstart - self.iova) / ps;
        let last_bit = (wlast - self.iova) / ps;
        let byte0 = first_bit / 8;
        let nbytes = usize::try_from(last_bit / 8 - byte0 + 1).map_err(|_| ENOMEM)?;
        let uaddr = self.data.checked_add(byte0).ok_or(EFAULT)?;
        probe_writable(self.mem, uaddr, nbytes as u64)?;
        let mut buf = vec![0u8; nbytes];
        read_user(self.mem, uaddr, &mut buf)?;
        let orig = buf.clone();
        let g = self.granule;
        ctx.hwpt_read_dirty(
            hwpt,
            Iova(wstart),
            (wlast - wstart).saturating_add(1),
            keep,
            &mut |unit| {
                let lo = unit.0.max(wstart);
                let hi = unit.0.saturating_add(g - 1).min(wlast);
                if lo > hi {
                    return;
                }
                for bit in (lo - self.iova) / ps..=(hi - self.iova) / ps {
                    let rel = bit - byte0 * 8;
                    if let Some(b) = usize::try_from(rel / 8).ok().and_then(|i| buf.get_mut(i)) {
                        *b |= 1 << (rel % 8);
                    }
                }
            },
        )
        .map_err(eno)?;
        if buf != orig {
            write_user(self.mem, uaddr, &buf)?;
        }
        Ok(())
    }
}

/// EFAULT unless every page of `[addr, addr + len)` is present and writable.
fn probe_writable(mem: &dyn UserMemory, addr: u64, len: u64) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    let start = addr & !(PAGE_SIZE - 1);
    let end = addr
        .checked_add(len)
        .and_then(|e| e.checked_add(PAGE_SIZE - 1))
        .ok_or(EFAULT)?
        & !(PAGE_SIZE - 1);
    mem.probe(UserVa(start), end - start, true)
        .map_err(|_| EFAULT)
}

/// IOMMU_HWPT_INVALIDATE: `entry_num` returns the number of requests handled, even on error.
/// The mock driver's requests ([`IommuHwptInvalidateSelftest`]) clear entries of the nested
/// HWPT's stage-1 IOTLB; the first bad request stops the batch (the earlier ones stay done).
fn hwpt_invalidate(f: &IommufdFile, c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuHwptInvalidate = u.cmd()?;
    let mut done = 0u32;
    let rc = invalidate(f, c, &cmd, &mut done);
    cmd.entry_num = done;
    if u.respond(&cmd).is_err() {
        return Err(EFAULT);
    }
    rc
}

fn invalidate(
    f: &IommufdFile,
    c: &Caller<'_>,
    cmd: &IommuHwptInvalidate,
    done: &mut u32,
) -> Result<(), Errno> {
    if cmd.reserved != 0 {
        return Err(EOPNOTSUPP);
    }
    if cmd.entry_num != 0
        && (cmd.data_uptr == 0
            || cmd.entry_len == 0
            || cmd.entry_len > MAX_INVALIDATE_ENTRY_LEN
            || cmd.entry_num > MAX_INVALIDATE_ENTRY_NUM)
    {
        return Err(EINVAL);
    }
    expect_type(&f.ctx, cmd.hwpt_id, ObjType::HwptNested)?;
    if cmd.data_type != IOMMU_HWPT_INVALIDATE_DATA_SELFTEST {
        return Err(EINVAL);
    }
    let mut reqs: Vec<IommuHwptInvalidateSelftest> = Vec::new();
    let mut rc = Ok(());
    for i in 0..u64::from(cmd.entry_num) {
        match read_invalidation(c.mem, cmd, i) {
            Ok(r) => reqs.push(r),
            Err(e) => {
                rc = Err(e);
                break;
            }
        }
    }
    f.ctx
        .hwpt_nested_data(ObjId(cmd.hwpt_id), &mut |iotlb| {
            for r in &reqs {
                if r.flags & IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                    iotlb.iter_mut().for_each(|e| *e = 0);
                } else if let Some(e) = iotlb.get_mut(r.iotlb_id as usize) {
                    *e = 0;
                }
            }
        })
        .map_err(eno)?;
    *done = u32::try_from(reqs.len()).unwrap_or(u32::MAX);
    rc
}

/// Request `i` of an invalidation array: the entry length must be exactly the struct's
/// (EINVAL), readable (EFAULT), with known flags (EOPNOTSUPP) and an IOTLB id in range
/// (EINVAL).
fn read_invalidation(
    mem: &dyn UserMemory,
    cmd: &IommuHwptInvalidate,
    i: u64,
) -> Result<IommuHwptInvalidateSelftest, Errno> {
    if cmd.entry_len as usize != size_of::<IommuHwptInvalidateSelftest>() {
        return Err(EINVAL);
    }
    let at = i
        .checked_mul(u64::from(cmd.entry_len))
        .and_then(|o| cmd.data_uptr.checked_add(o))
        .ok_or(EFAULT)?;
    let r: IommuHwptInvalidateSelftest = read_value(mem, at)?;
    if r.flags & !IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
        return Err(EOPNOTSUPP);
    }
    if r.iotlb_id > MOCK_NESTED_DOMAIN_IOTLB_ID_MAX {
        return Err(EINVAL);
    }
    Ok(r)
}

// --- device.c --------------------------------------------------------------------------------

/// IOMMU_GET_HW_INFO: unknown flags (at uAPI level 6.12 any flag) or non-zero reserved bytes
/// EOPNOTSUPP; without
/// IOMMU_HW_INFO_FLAG_INPUT_TYPE the type asked for is the default; the device (ENOENT). A mock
/// device reports the selftest type and data (EOPNOTSUPP for another type asked for), other
/// devices type NONE with no data. `min(data_len, len)` bytes are copied and the rest of the
/// caller's buffer zeroed; `data_len` returns the full length.
fn get_hw_info(f: &IommufdFile, c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuHwInfo = u.cmd()?;
    // Linux 6.12 takes no flags (IOMMU_HW_INFO_FLAG_INPUT_TYPE came later).
    let known = if crate::level::beyond_6_12() {
        IOMMU_HW_INFO_FLAG_INPUT_TYPE
    } else {
        0
    };
    if cmd.flags & !known != 0 || cmd.reserved != [0; 3] {
        return Err(EOPNOTSUPP);
    }
    if cmd.flags & IOMMU_HW_INFO_FLAG_INPUT_TYPE == 0 {
        cmd.data_type = IOMMU_HW_INFO_TYPE_DEFAULT;
    }
    let dev = DevInfo::of(&f.ctx, cmd.dev_id)?;
    let info = IommuTestHwInfo {
        flags: 0,
        test_reg: IOMMU_HW_INFO_SELFTEST_REGVAL,
    };
    let data: &[u8] = if dev.mock {
        if cmd.data_type != IOMMU_HW_INFO_TYPE_DEFAULT
            && cmd.data_type != IOMMU_HW_INFO_TYPE_SELFTEST
        {
            return Err(EOPNOTSUPP);
        }
        cmd.data_type = IOMMU_HW_INFO_TYPE_SELFTEST;
        info.as_bytes()
    } else {
        cmd.data_type = IOMMU_HW_INFO_TYPE_NONE;
        &[]
    };
    let copy_len = data.len().min(cmd.data_len as usize);
    write_user(c.mem, cmd.data_uptr, &data[..copy_len])?;
    let user_len = u64::from(cmd.data_len);
    if (copy_len as u64) < user_len {
        let at = cmd.data_uptr.checked_add(copy_len as u64).ok_or(EFAULT)?;
        clear_user(c.mem, at, user_len - copy_len as u64)?;
    }
    cmd.data_len = data.len() as u32;
    cmd.out_capabilities = if dev.dirty_capable() {
        IOMMU_HW_CAP_DIRTY_TRACKING
    } else {
        0
    };
    cmd.out_max_pasid_log2 = if dev.mock && dev.mock_flags & MOCK_FLAGS_DEVICE_PASID != 0 {
        MOCK_PASID_WIDTH
    } else {
        0
    };
    u.respond(&cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_are_unique_and_in_the_command_range() {
        for (i, o) in OPS.iter().enumerate() {
            let nr = ioc_nr(o.number);
            assert!((IOMMUFD_CMD_BASE..=IOMMUFD_CMD_TEST).contains(&nr));
            assert!(o.min_size <= o.size && o.min_size >= 8);
            assert!(OPS[i + 1..].iter().all(|p| ioc_nr(p.number) != nr));
        }
    }

    #[test]
    fn covered_needs_contiguous_areas() {
        let r = |s, l| Range { start: s, last: l };
        assert!(covered([r(0, 9), r(10, 19)].into_iter(), 5, 15));
        assert!(!covered([r(0, 9), r(11, 19)].into_iter(), 5, 15));
        assert!(!covered([r(0, 9)].into_iter(), 5, 15));
        assert!(covered([r(0, u64::MAX)].into_iter(), 0, u64::MAX));
    }
}
