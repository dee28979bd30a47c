//! A VFIO device cdev: `/dev/vfio/devices/vfioN` of a platform device bound to `vfio-pci`,
//! with the semantics of Linux 6.12's `device_cdev.c`, `vfio_main.c` and `vfio-pci`.
//!
//! Life of a [`VfioDeviceFile`]:
//!
//! 1. [`VfioDeviceFile::open`] succeeds for any device bound to `vfio-pci`; the file grants no
//!    access yet. Every ioctl but `VFIO_DEVICE_BIND_IOMMUFD`, and every read, write and mmap, is
//!    `EINVAL` until a bind succeeds (the kernel's `access_granted` check).
//! 2. `VFIO_DEVICE_BIND_IOMMUFD` binds the device into the iommufd's security context
//!    ([`uiommu_core::Context::vfio_device_bind`]): the whole IOMMU group is claimed and blocked.
//!    As vfio-pci's `open_device`, the function is reset and its interrupts are routed through
//!    this file. A second bind of the file, or a bind of a device another file has bound, is
//!    `EINVAL`.
//! 3. `VFIO_DEVICE_ATTACH_IOMMUFD_PT` attaches the first time and replaces afterwards, writing
//!    back the HWPT id; `VFIO_DEVICE_DETACH_IOMMUFD_PT` detaches (and succeeds when not attached).
//! 4. Dropping the file ([`VfioDeviceFile::close`]) unhooks interrupts, resets the function and
//!    unbinds: the last unbind of the group returns it to its default domain.
//!
//! Regions live at file offset `index << 40` ([`crate::vfio_abi::vfio_pci_index_to_offset`]):
//! BAR0..BAR5 (index 0..5) go to the device model through `Platform::mmio_read`/`mmio_write`,
//! split into naturally aligned 8/4/2/1-byte accesses as vfio-pci splits them; the MSI-X table
//! reads as all-ones and ignores writes (vfio-pci owns it); a memory BAR answers `EIO` while the
//! command register's memory-space bit is clear. Config space (index 7) is the model's, with
//! the BAR and expansion-ROM registers virtualized (see [`VfioDeviceFile::pread`]). ROM
//! (index 6) and VGA (index 8) do not exist: `EINVAL`.
//!
//! Interrupts: MSI-X (and MSI and INTx, for models that have them) vectors are signalled through
//! the eventfds `VFIO_DEVICE_SET_IRQS` installs; the model raises vector `v` through the
//! [`uiommu_platform::devices::IrqSink`] this file plugs in at bind. ERR (PCIe functions only)
//! and REQ take an eventfd that only the loopback trigger (`DATA_NONE`/`DATA_BOOL`) signals.
//!
//! Invariants: nothing panics, whatever the caller passes; a refused call changes nothing (the
//! kernel's own partial-failure cases are avoided by validating everything — including each
//! eventfd and the writability of reply fields — before the first change). Locks are taken in
//! the order file state → engine → interrupt table; the model's interrupt sink, which runs under
//! the engine lock, takes only the interrupt table.

use crate::vfio_abi::*;
use crate::{Caller, Errno};
use std::sync::{Arc, Mutex, MutexGuard};
use uiommu_core::error::errno::{EFAULT, EINVAL, EIO, ENODEV, ENOTTY, ERANGE};
use uiommu_core::{Context, CtxId, Engine, ObjId};
use uiommu_platform::devices::{BarInfo, IrqSink};
use uiommu_platform::drivers::Driver;
use uiommu_platform::memory::UserMemory;
use uiommu_platform::topology::{Bdf, DeviceId};
use uiommu_platform::{Platform, UserVa, PAGE_SIZE};
use zerocopy::{FromBytes, IntoBytes};

/// `MAP_SHARED` of mmap(2) (also set in `MAP_SHARED_VALIDATE`).
pub const MAP_SHARED: i32 = 0x01;

/// A function that signals one of the caller's eventfds.
type Signal = Arc<dyn Fn() + Send + Sync>;

/// Config-space offsets and capability ids the file interprets.
mod pci {
    pub const COMMAND: usize = 0x04;
    pub const COMMAND_MEMORY: u8 = 0x02;
    pub const STATUS: usize = 0x06;
    pub const STATUS_CAP_LIST: u8 = 0x10;
    pub const BAR0: usize = 0x10;
    /// One past the last BAR register.
    pub const BAR_END: usize = 0x28;
    pub const ROM: usize = 0x30;
    pub const ROM_END: usize = 0x34;
    pub const CAP_PTR: usize = 0x34;
    pub const INTERRUPT_PIN: usize = 0x3d;
    pub const CAP_ID_MSI: u8 = 0x05;
    pub const CAP_ID_EXP: u8 = 0x10;
    pub const CAP_ID_MSIX: u8 = 0x11;
}

/// Where a successful [`VfioDeviceFile::mmap_check`] says the mapping goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MmapTarget {
    /// The BAR (region index 0..5).
    pub bar: u8,
    /// Offset of the mapping inside the BAR.
    pub offset: u64,
    /// Length of the mapping.
    pub len: u64,
}

/// Which kind of interrupt the function has enabled (vfio-pci's `irq_type`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum IrqMode {
    None,
    Intx,
    Msi,
    Msix,
}

/// The interrupt routing the model's sink reads: one optional eventfd per vector of the
/// enabled mode.
struct IrqTable {
    mode: IrqMode,
    vectors: Vec<Option<Signal>>,
}

/// The binding made by `VFIO_DEVICE_BIND_IOMMUFD`.
struct Binding {
    ctx: Context,
    devid: ObjId,
    /// vfio's `iommufd_attached`: attach the first time, replace afterwards.
    attached: bool,
}

/// State of one open device file, behind its lock.
struct FileState {
    bound: Option<Binding>,
    /// The BAR registers as the user last wrote them (vfio's `vconfig`).
    vbar: [u32; 6],
    /// The expansion ROM register as the user last wrote it.
    vrom: u32,
    err_trigger: Option<Signal>,
    req_trigger: Option<Signal>,
}

/// What the file needs to know about the function, read under the engine lock.
struct Snapshot {
    config: Vec<u8>,
    bars: Vec<BarInfo>,
    irq_count: u32,
}

impl Snapshot {
    fn of(p: &Platform, dev: DeviceId) -> Snapshot {
        match p.models.get(&dev) {
            Some(m) => Snapshot {
                config: m.config().to_vec(),
                bars: m.bars(),
                irq_count: m.irq_count(),
            },
            None => Snapshot {
                config: synthetic_config(p, dev),
                bars: Vec::new(),
                irq_count: 0,
            },
        }
    }

    /// The implemented BAR at `index` (size > 0).
    fn bar(&self, index: u32) -> Option<BarInfo> {
        self.bars
            .iter()
            .copied()
            .find(|b| u32::from(b.index) == index && b.size > 0 && b.index < 6)
    }

    fn byte(&self, off: usize) -> u8 {
        self.config.get(off).copied().unwrap_or(0)
    }

    fn word(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.byte(off), self.byte(off + 1)])
    }

    fn dword(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.byte(off),
            self.byte(off + 1),
            self.byte(off + 2),
            self.byte(off + 3),
        ])
    }

    /// Offset of the first capability with `id` in the standard list, if any. A malformed list
    /// (loops, pointers into the header) ends the walk.
    fn find_cap(&self, id: u8) -> Option<usize> {
        if self.byte(pci::STATUS) & pci::STATUS_CAP_LIST == 0 {
            return None;
        }
        let mut pos = usize::from(self.byte(pci::CAP_PTR) & 0xfc);
        // At most 48 capabilities fit in the 192 bytes after the header.
        for _ in 0..48 {
            if pos < 0x40 || pos + 1 >= self.config.len().min(256) {
                return None;
            }
            if self.byte(pos) == id {
                return Some(pos);
            }
            pos = usize::from(self.byte(pos + 1) & 0xfc);
        }
        None
    }

    fn is_pcie(&self) -> bool {
        self.find_cap(pci::CAP_ID_EXP).is_some()
    }

    /// The MSI-X table: (BAR, offset, size in bytes).
    fn msix_table(&self) -> Option<(u32, u64, u64)> {
        let cap = self.find_cap(pci::CAP_ID_MSIX)?;
        let entries = u64::from(self.word(cap + 2) & 0x7ff) + 1;
        let table = self.dword(cap + 4);
        Some((table & 7, u64::from(table & !7), entries * 16))
    }

    /// vfio-pci's `vfio_pci_get_irq_count`; the MSI-X count is the model's vector count.
    fn irq_count(&self, index: u32) -> u32 {
        match index {
            VFIO_PCI_INTX_IRQ_INDEX => u32::from(self.byte(pci::INTERRUPT_PIN) != 0),
            VFIO_PCI_MSI_IRQ_INDEX => match self.find_cap(pci::CAP_ID_MSI) {
                Some(cap) => 1 << ((self.word(cap + 2) & 0x0e) >> 1),
                None => 0,
            },
            // The MSI-X table has at most 2048 entries.
            VFIO_PCI_MSIX_IRQ_INDEX => self.irq_count.min(2048),
            VFIO_PCI_ERR_IRQ_INDEX => u32::from(self.is_pcie()),
            VFIO_PCI_REQ_IRQ_INDEX => 1,
            _ => 0,
        }
    }

    fn memory_enabled(&self) -> bool {
        self.byte(pci::COMMAND) & pci::COMMAND_MEMORY != 0
    }

    /// The BAR registers as the user sees them: what the user wrote, masked to each BAR's size,
    /// with the BAR's type bits; unimplemented BARs read 0 (vfio's `vfio_bar_fixup`).
    fn virtual_bars(&self, vbar: &[u32; 6]) -> [u32; 6] {
        let mut out = [0u32; 6];
        let mut i = 0usize;
        while i < 6 {
            let Some(bar) = self.bar(i as u32) else {
                i += 1;
                continue;
            };
            let raw = self.dword(pci::BAR0 + 4 * i);
            let io = raw & 1 != 0;
            let flag_bits = if io { 0x3 } else { 0xf };
            let size = bar.size.checked_next_power_of_two().unwrap_or(1 << 63);
            let mask = !(size - 1);
            out[i] = (vbar[i] & (mask as u32) & !flag_bits) | (raw & flag_bits);
            if !io && raw & 0x6 == 0x4 && i + 1 < 6 {
                out[i + 1] = vbar[i + 1] & ((mask >> 32) as u32);
                i += 2;
            } else {
                i += 1;
            }
        }
        out
    }

    /// Config space as the user reads it.
    fn virtual_config(&self, vbar: &[u32; 6]) -> Vec<u8> {
        let mut c = self.config.clone();
        for (i, v) in self.virtual_bars(vbar).iter().enumerate() {
            let off = pci::BAR0 + 4 * i;
            if let Some(dst) = c.get_mut(off..off + 4) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
        }
        // No function here has an expansion ROM: the register reads 0.
        if let Some(dst) = c.get_mut(pci::ROM..pci::ROM_END) {
            dst.fill(0);
        }
        c
    }
}

/// A minimal type-0 header for a function without a device model.
fn synthetic_config(p: &Platform, dev: DeviceId) -> Vec<u8> {
    let mut c = vec![0u8; 256];
    if let Some(d) = p.topology.device(dev) {
        c[0..2].copy_from_slice(&d.vendor.to_le_bytes());
        c[2..4].copy_from_slice(&d.device.to_le_bytes());
        c[9..12].copy_from_slice(&d.class.to_le_bytes()[..3]);
    }
    c
}

/// The BAR and ROM registers, as saved when the file first reads the function.
fn initial_vbars(s: &Snapshot) -> ([u32; 6], u32) {
    let mut vbar = [0u32; 6];
    for (i, v) in vbar.iter_mut().enumerate() {
        *v = s.dword(pci::BAR0 + 4 * i);
    }
    (vbar, 0)
}

/// Copy `buf.len()` bytes of the caller's memory at `addr` (EFAULT on any fault or wrap).
fn copy_in(mem: &dyn UserMemory, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    if buf.is_empty() {
        return Ok(());
    }
    addr.checked_add(buf.len() as u64 - 1).ok_or(EFAULT)?;
    mem.read(UserVa(addr), buf).map_err(|_| EFAULT)
}

/// Copy `data` to the caller's memory at `addr` (EFAULT on any fault or wrap).
fn copy_out(mem: &dyn UserMemory, addr: u64, data: &[u8]) -> Result<(), Errno> {
    if data.is_empty() {
        return Ok(());
    }
    addr.checked_add(data.len() as u64 - 1).ok_or(EFAULT)?;
    mem.write(UserVa(addr), data).map_err(|_| EFAULT)
}

/// Read the first `minsz` bytes of a `T` at `addr`; the rest of the `T` is zero (the kernel's
/// `copy_from_user(&s, arg, minsz)` into a zeroed struct).
fn read_struct<T: FromBytes + IntoBytes>(
    mem: &dyn UserMemory,
    addr: u64,
    minsz: usize,
) -> Result<T, Errno> {
    let mut t = T::new_zeroed();
    let bytes = t.as_mut_bytes();
    let n = minsz.min(bytes.len());
    copy_in(mem, addr, &mut bytes[..n])?;
    Ok(t)
}

/// The user address of a field at `off` of a struct at `arg`.
fn field(arg: u64, off: usize) -> Result<u64, Errno> {
    arg.checked_add(off as u64).ok_or(EFAULT)
}

/// A capability chain being built after an info struct (the kernel's `vfio_info_cap`): each
/// capability starts 8-aligned; `next` offsets count from the start of the info struct.
#[derive(Default)]
struct CapChain {
    buf: Vec<u8>,
    /// Offsets in `buf` of each capability.
    starts: Vec<usize>,
}

impl CapChain {
    /// Append a capability whose header is `id`/`version` and whose body (after the 8-byte
    /// header) is `body`.
    fn add(&mut self, id: u16, version: u16, body: &[u8]) {
        let start = self.buf.len();
        let size = (8 + body.len()).next_multiple_of(8);
        self.buf.resize(start + size, 0);
        let hdr = VfioInfoCapHeader {
            id,
            version,
            next: 0,
        };
        self.buf[start..start + 8].copy_from_slice(hdr.as_bytes());
        self.buf[start + 8..start + 8 + body.len()].copy_from_slice(body);
        self.starts.push(start);
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    /// The chain's bytes as they go right after an info struct of `base` bytes.
    fn bytes_at(&self, base: usize) -> Vec<u8> {
        let mut out = self.buf.clone();
        for w in self.starts.windows(2) {
            let next = (base + w[1]) as u32;
            out[w[0] + 4..w[0] + 8].copy_from_slice(&next.to_le_bytes());
        }
        out
    }
}

/// An open `/dev/vfio/devices/vfioN`.
pub struct VfioDeviceFile {
    engine: Arc<Engine>,
    dev: DeviceId,
    state: Mutex<FileState>,
    irqs: Arc<Mutex<IrqTable>>,
    /// Opened through a group (`VFIO_GROUP_GET_DEVICE_FD`): bound and attached from the
    /// start, and the cdev-only ATTACH/DETACH ioctls are not there (ENOTTY).
    group_path: bool,
    /// What the file keeps alive while it is open (the group file, as a device file holds a
    /// reference on its group in the kernel). Dropped after the device is released.
    _holder: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for VfioDeviceFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("VfioDeviceFile")
            .field("dev", &self.dev)
            .field("devid", &st.bound.as_ref().map(|b| b.devid))
            .finish()
    }
}

fn lock_irqs(t: &Mutex<IrqTable>) -> MutexGuard<'_, IrqTable> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

impl VfioDeviceFile {
    /// Open the device cdev of `dev`. ENODEV when there is no such device or it is not bound
    /// to `vfio-pci` (Linux has no `vfioN` node for it then).
    pub fn open(engine: &Arc<Engine>, dev: DeviceId) -> Result<VfioDeviceFile, Errno> {
        let snap = engine.with_platform(|p| {
            (p.topology.device(dev).is_some() && *p.drivers.driver(dev) == Driver::VfioPci)
                .then(|| Snapshot::of(p, dev))
        });
        let snap = snap.ok_or(ENODEV)?;
        let (vbar, vrom) = initial_vbars(&snap);
        Ok(VfioDeviceFile {
            engine: engine.clone(),
            dev,
            state: Mutex::new(FileState {
                bound: None,
                vbar,
                vrom,
                err_trigger: None,
                req_trigger: None,
            }),
            irqs: Arc::new(Mutex::new(IrqTable {
                mode: IrqMode::None,
                vectors: Vec::new(),
            })),
            group_path: false,
            _holder: None,
        })
    }

    /// Open `dev` through its group (the kernel's `vfio_df_group_open` with an iommufd
    /// container): bind it into `ctx` ([`Context::vfio_device_bind`]: EPERM, EBUSY, EINVAL
    /// as there), open it (reset, interrupts routed here), and attach it to the context's
    /// compatibility IOAS (ENODEV when there is none; the engine's attach errno otherwise,
    /// after which the device is closed and unbound again). `holder` stays alive as long as
    /// the file.
    pub fn open_group(
        engine: &Arc<Engine>,
        dev: DeviceId,
        ctx: Context,
        holder: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Result<VfioDeviceFile, Errno> {
        let mut f = VfioDeviceFile::open(engine, dev)?;
        f.group_path = true;
        f._holder = Some(holder);
        let devid = ctx.vfio_device_bind(dev).map_err(|e| e.errno())?;
        let snap = f.enable_device();
        let (vbar, vrom) = initial_vbars(&snap);
        let attached = ctx
            .vfio_ioas()
            .and_then(|ioas| ctx.device_attach(devid, ioas));
        let mut st = f.lock();
        if let Err(e) = attached {
            f.disable_device(&mut st);
            let _ = ctx.device_unbind(devid);
            return Err(e.errno());
        }
        st.vbar = vbar;
        st.vrom = vrom;
        st.bound = Some(Binding {
            ctx,
            devid,
            attached: true,
        });
        drop(st);
        Ok(f)
    }

    /// Whether the file was opened through a group rather than as a device cdev.
    pub fn group_path(&self) -> bool {
        self.group_path
    }

    /// The platform device behind the file.
    pub fn device(&self) -> DeviceId {
        self.dev
    }

    /// The iommufd device object id, once bound.
    pub fn devid(&self) -> Option<ObjId> {
        self.lock().bound.as_ref().map(|b| b.devid)
    }

    /// The security context the file is bound into and its device object id there, once
    /// bound.
    pub fn binding(&self) -> Option<(CtxId, ObjId)> {
        self.lock().bound.as_ref().map(|b| (b.ctx.id(), b.devid))
    }

    /// The PCI address of the function behind the file.
    pub fn bdf(&self) -> Option<Bdf> {
        self.engine
            .with_platform(|p| p.topology.device(self.dev).map(|d| d.bdf))
    }

    fn lock(&self) -> MutexGuard<'_, FileState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> Snapshot {
        self.engine.with_platform(|p| Snapshot::of(p, self.dev))
    }

    /// An ioctl on the file. `request` is truncated to 32 bits as the kernel's `ioctl(2)`
    /// does (`unsigned int cmd`); `arg` is a pointer into `caller.mem`. Returns 0 on success.
    pub fn ioctl(&self, caller: &Caller<'_>, request: u64, arg: u64) -> Result<i64, Errno> {
        let cmd = request as u32;
        let mut st = self.lock();
        if cmd == VFIO_DEVICE_BIND_IOMMUFD {
            return self.bind(&mut st, caller, arg);
        }
        if st.bound.is_none() {
            return Err(EINVAL);
        }
        let mem = caller.mem;
        match cmd {
            // cdev-only: a group-opened file passes them to vfio-pci, which does not know them.
            VFIO_DEVICE_ATTACH_IOMMUFD_PT | VFIO_DEVICE_DETACH_IOMMUFD_PT if self.group_path => {
                Err(ENOTTY)
            }
            VFIO_DEVICE_ATTACH_IOMMUFD_PT => self.attach(&mut st, mem, arg),
            VFIO_DEVICE_DETACH_IOMMUFD_PT => self.detach(&mut st, mem, arg),
            VFIO_DEVICE_FEATURE => self.feature(mem, arg),
            VFIO_DEVICE_GET_INFO => self.get_info(mem, arg),
            VFIO_DEVICE_GET_REGION_INFO => self.get_region_info(mem, arg),
            VFIO_DEVICE_GET_IRQ_INFO => self.get_irq_info(mem, arg),
            VFIO_DEVICE_SET_IRQS => self.set_irqs(&mut st, caller, arg),
            VFIO_DEVICE_RESET => self.reset(),
            _ => Err(ENOTTY),
        }
    }

    /// VFIO_DEVICE_BIND_IOMMUFD.
    fn bind(&self, st: &mut FileState, caller: &Caller<'_>, arg: u64) -> Result<i64, Errno> {
        const MINSZ: usize = core::mem::size_of::<VfioDeviceBindIommufd>();
        let b: VfioDeviceBindIommufd = read_struct(caller.mem, arg, MINSZ)?;
        if (b.argsz as usize) < MINSZ || b.flags != 0 || b.iommufd < 0 {
            return Err(EINVAL);
        }
        if st.bound.is_some() {
            return Err(EINVAL);
        }
        let ctx = caller.fds.iommufd(b.iommufd)?;
        // The reply must be writable before anything changes: write the caller's own value
        // back first (Linux binds, fails the copy and unbinds again).
        let out = field(arg, core::mem::offset_of!(VfioDeviceBindIommufd, out_devid))?;
        copy_out(caller.mem, out, &b.out_devid.to_le_bytes())?;
        let devid = ctx.vfio_device_bind(self.dev).map_err(|e| e.errno())?;
        let snap = self.enable_device();
        let (vbar, vrom) = initial_vbars(&snap);
        if copy_out(caller.mem, out, &devid.0.to_le_bytes()).is_err() {
            self.disable_device(st);
            let _ = ctx.device_unbind(devid);
            return Err(EFAULT);
        }
        st.vbar = vbar;
        st.vrom = vrom;
        st.bound = Some(Binding {
            ctx,
            devid,
            attached: false,
        });
        Ok(0)
    }

    /// vfio-pci's `open_device`: reset the function and route its interrupts through this
    /// file. Returns the function as it is after the reset.
    fn enable_device(&self) -> Snapshot {
        {
            let mut t = lock_irqs(&self.irqs);
            t.mode = IrqMode::None;
            t.vectors.clear();
        }
        let table = self.irqs.clone();
        let sink: IrqSink = Box::new(move |vector| {
            let signal = {
                let t = lock_irqs(&table);
                match t.mode {
                    IrqMode::None => None,
                    _ => t.vectors.get(vector as usize).cloned().flatten(),
                }
            };
            if let Some(s) = signal {
                s();
            }
        });
        self.engine.with_platform(|p| {
            if let Some(m) = p.models.get_mut(&self.dev) {
                m.reset();
                m.set_irq_sink(Some(sink));
            }
            Snapshot::of(p, self.dev)
        })
    }

    /// vfio-pci's `close_device`: interrupts off, function reset.
    fn disable_device(&self, st: &mut FileState) {
        self.engine.with_platform(|p| {
            if let Some(m) = p.models.get_mut(&self.dev) {
                m.set_irq_sink(None);
                m.reset();
            }
        });
        let mut t = lock_irqs(&self.irqs);
        t.mode = IrqMode::None;
        t.vectors.clear();
        st.err_trigger = None;
        st.req_trigger = None;
    }

    /// VFIO_DEVICE_ATTACH_IOMMUFD_PT.
    fn attach(&self, st: &mut FileState, mem: &dyn UserMemory, arg: u64) -> Result<i64, Errno> {
        const MINSZ: usize = core::mem::size_of::<VfioDeviceAttachIommufdPt>();
        let a: VfioDeviceAttachIommufdPt = read_struct(mem, arg, MINSZ)?;
        if (a.argsz as usize) < MINSZ || a.flags != 0 {
            return Err(EINVAL);
        }
        let b = st.bound.as_mut().ok_or(EINVAL)?;
        let out = field(arg, core::mem::offset_of!(VfioDeviceAttachIommufdPt, pt_id))?;
        copy_out(mem, out, &a.pt_id.to_le_bytes())?;
        let pt = ObjId(a.pt_id);
        let hwpt = if b.attached {
            b.ctx.device_replace(b.devid, pt)
        } else {
            b.ctx.device_attach(b.devid, pt)
        }
        .map_err(|e| e.errno())?;
        b.attached = true;
        if copy_out(mem, out, &hwpt.0.to_le_bytes()).is_err() {
            // As Linux: a reply that cannot be written detaches again.
            let _ = b.ctx.device_detach(b.devid);
            b.attached = false;
            return Err(EFAULT);
        }
        Ok(0)
    }

    /// VFIO_DEVICE_DETACH_IOMMUFD_PT.
    fn detach(&self, st: &mut FileState, mem: &dyn UserMemory, arg: u64) -> Result<i64, Errno> {
        const MINSZ: usize = core::mem::size_of::<VfioDeviceDetachIommufdPt>();
        let d: VfioDeviceDetachIommufdPt = read_struct(mem, arg, MINSZ)?;
        if (d.argsz as usize) < MINSZ || d.flags != 0 {
            return Err(EINVAL);
        }
        let b = st.bound.as_mut().ok_or(EINVAL)?;
        if b.attached {
            // Detach never fails for an attached device; Linux returns 0 regardless.
            let _ = b.ctx.device_detach(b.devid);
            b.attached = false;
        }
        Ok(0)
    }

    /// VFIO_DEVICE_FEATURE: the generic checks of `vfio_ioctl_device_feature`, then ENOTTY for
    /// every feature (no migration or dirty-logging ops, no SR-IOV VF token; runtime low power
    /// is not emulated).
    fn feature(&self, mem: &dyn UserMemory, arg: u64) -> Result<i64, Errno> {
        const MINSZ: usize = core::mem::size_of::<VfioDeviceFeature>();
        let f: VfioDeviceFeature = read_struct(mem, arg, MINSZ)?;
        if (f.argsz as usize) < MINSZ {
            return Err(EINVAL);
        }
        let known = VFIO_DEVICE_FEATURE_MASK
            | VFIO_DEVICE_FEATURE_SET
            | VFIO_DEVICE_FEATURE_GET
            | VFIO_DEVICE_FEATURE_PROBE;
        if f.flags & !known != 0 {
            return Err(EINVAL);
        }
        let get_and_set = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_GET;
        if f.flags & VFIO_DEVICE_FEATURE_PROBE == 0 && f.flags & get_and_set == get_and_set {
            return Err(EINVAL);
        }
        Err(ENOTTY)
    }

    /// VFIO_DEVICE_GET_INFO.
    fn get_info(&self, mem: &dyn UserMemory, arg: u64) -> Result<i64, Errno> {
        const MINSZ: usize = core::mem::offset_of!(VfioDeviceInfo, cap_offset);
        let mut info: VfioDeviceInfo = read_struct(mem, arg, MINSZ)?;
        if (info.argsz as usize) < MINSZ {
            return Err(EINVAL);
        }
        let out_len = (info.argsz as usize).min(core::mem::size_of::<VfioDeviceInfo>());
        info.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
        info.num_regions = VFIO_PCI_NUM_REGIONS;
        info.num_irqs = VFIO_PCI_NUM_IRQS;
        copy_out(mem, arg, &info.as_bytes()[..out_len])?;
        Ok(0)
    }

    /// VFIO_DEVICE_GET_REGION_INFO.
    fn get_region_info(&self, mem: &dyn UserMemory, arg: u64) -> Result<i64, Errno> {
        const MINSZ: usize = core::mem::size_of::<VfioRegionInfo>();
        let mut info: VfioRegionInfo = read_struct(mem, arg, MINSZ)?;
        if (info.argsz as usize) < MINSZ {
            return Err(EINVAL);
        }
        let snap = self.snapshot();
        let mut caps = CapChain::default();
        match info.index {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                info.offset = vfio_pci_index_to_offset(info.index);
                info.size = snap.config.len() as u64;
                info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            }
            VFIO_PCI_BAR0_REGION_INDEX..=VFIO_PCI_BAR5_REGION_INDEX => {
                info.offset = vfio_pci_index_to_offset(info.index);
                match snap.bar(info.index) {
                    None => {
                        info.size = 0;
                        info.flags = 0;
                    }
                    Some(bar) => {
                        info.size = bar.size;
                        info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
                        if bar.mmap {
                            info.flags |= VFIO_REGION_INFO_FLAG_MMAP;
                            if snap
                                .msix_table()
                                .is_some_and(|(bir, _, _)| bir == info.index)
                            {
                                caps.add(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, &[]);
                            }
                        }
                    }
                }
            }
            VFIO_PCI_ROM_REGION_INDEX => {
                info.offset = vfio_pci_index_to_offset(info.index);
                info.size = 0;
                info.flags = 0;
            }
            // No VGA, no device-specific regions.
            _ => return Err(EINVAL),
        }
        if caps.len() > 0 {
            info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
            let need = MINSZ + caps.len();
            if (info.argsz as usize) < need {
                info.argsz = need as u32;
                info.cap_offset = 0;
            } else {
                copy_out(mem, field(arg, MINSZ)?, &caps.bytes_at(MINSZ))?;
                info.cap_offset = MINSZ as u32;
            }
        }
        copy_out(mem, arg, info.as_bytes())?;
        Ok(0)
    }

    /// VFIO_DEVICE_GET_IRQ_INFO.
    fn get_irq_info(&self, mem: &dyn UserMemory, arg: u64) -> Result<i64, Errno> {
        const MINSZ: usize = core::mem::size_of::<VfioIrqInfo>();
        let mut info: VfioIrqInfo = read_struct(mem, arg, MINSZ)?;
        if (info.argsz as usize) < MINSZ || info.index >= VFIO_PCI_NUM_IRQS {
            return Err(EINVAL);
        }
        let snap = self.snapshot();
        if info.index == VFIO_PCI_ERR_IRQ_INDEX && !snap.is_pcie() {
            return Err(EINVAL);
        }
        info.flags = VFIO_IRQ_INFO_EVENTFD;
        info.count = snap.irq_count(info.index);
        if info.index == VFIO_PCI_INTX_IRQ_INDEX {
            info.flags |= VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED;
        } else if info.index != VFIO_PCI_MSIX_IRQ_INDEX {
            // MSI-X vectors can be added while enabled (dynamic MSI-X); the others cannot.
            info.flags |= VFIO_IRQ_INFO_NORESIZE;
        }
        copy_out(mem, arg, info.as_bytes())?;
        Ok(0)
    }

    /// VFIO_DEVICE_SET_IRQS: `vfio_set_irqs_validate_and_prepare`, then the index's handler.
    fn set_irqs(&self, st: &mut FileState, caller: &Caller<'_>, arg: u64) -> Result<i64, Errno> {
        const MINSZ: usize = core::mem::size_of::<VfioIrqSet>();
        let mem = caller.mem;
        let hdr: VfioIrqSet = read_struct(mem, arg, MINSZ)?;
        let snap = self.snapshot();
        let max = snap.irq_count(hdr.index);
        if (hdr.argsz as usize) < MINSZ
            || hdr.index >= VFIO_PCI_NUM_IRQS
            || hdr.count >= u32::MAX - hdr.start
            || hdr.flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
        {
            return Err(EINVAL);
        }
        // `count < u32::MAX - start`, so the sum cannot wrap.
        if hdr.start >= max || hdr.start + hdr.count > max {
            return Err(EINVAL);
        }
        let elem = match hdr.flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
            VFIO_IRQ_SET_DATA_NONE => 0usize,
            VFIO_IRQ_SET_DATA_BOOL => 1,
            VFIO_IRQ_SET_DATA_EVENTFD => 4,
            _ => return Err(EINVAL),
        };
        // `count <= max`, a vector count the model reports: small.
        let data_len = hdr.count as usize * elem;
        if (hdr.argsz as usize - MINSZ) < data_len {
            return Err(EINVAL);
        }
        let mut data = vec![0u8; data_len];
        copy_in(mem, field(arg, MINSZ)?, &mut data)?;
        let req = IrqRequest {
            flags: hdr.flags,
            start: hdr.start,
            count: hdr.count,
            data: &data,
        };
        match (hdr.index, hdr.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK) {
            (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK) => {
                self.intx_mask(caller, &req)
            }
            (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                self.vector_trigger(caller, IrqMode::Intx, &req)
            }
            (VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                self.vector_trigger(caller, IrqMode::Msi, &req)
            }
            (VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                self.vector_trigger(caller, IrqMode::Msix, &req)
            }
            (VFIO_PCI_ERR_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) if snap.is_pcie() => {
                single_trigger(caller, &mut st.err_trigger, &req)
            }
            (VFIO_PCI_REQ_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                single_trigger(caller, &mut st.req_trigger, &req)
            }
            _ => Err(ENOTTY),
        }
    }

    /// INTx mask/unmask: validated as vfio-pci does; masking itself is not modelled (no
    /// function here raises INTx).
    fn intx_mask(&self, caller: &Caller<'_>, req: &IrqRequest<'_>) -> Result<i64, Errno> {
        let mode = lock_irqs(&self.irqs).mode;
        if mode != IrqMode::Intx || req.start != 0 || req.count != 1 {
            return Err(EINVAL);
        }
        let eventfd = req.flags & VFIO_IRQ_SET_DATA_EVENTFD != 0;
        if eventfd && req.flags & VFIO_IRQ_SET_ACTION_MASK != 0 {
            // vfio-pci has no eventfd-driven mask either.
            return Err(ENOTTY);
        }
        if eventfd {
            // An unmask eventfd (vfio's virqfd): looked up, then nothing to unmask.
            let fd = match req.data {
                [a, b, c, d, ..] => i32::from_le_bytes([*a, *b, *c, *d]),
                _ => return Err(EINVAL),
            };
            if fd >= 0 {
                drop(caller.fds.eventfd(fd)?);
            }
        }
        Ok(0)
    }

    /// TRIGGER on a vector index (INTx, MSI, MSI-X): vfio-pci's `vfio_pci_set_msi_trigger` and
    /// `vfio_pci_set_intx_trigger`. Every eventfd is looked up before anything changes.
    fn vector_trigger(
        &self,
        caller: &Caller<'_>,
        target: IrqMode,
        req: &IrqRequest<'_>,
    ) -> Result<i64, Errno> {
        let mode = lock_irqs(&self.irqs).mode;
        let intx = target == IrqMode::Intx;
        if mode == target && req.count == 0 && req.flags & VFIO_IRQ_SET_DATA_NONE != 0 {
            let mut t = lock_irqs(&self.irqs);
            t.mode = IrqMode::None;
            t.vectors.clear();
            return Ok(0);
        }
        if !(mode == target || mode == IrqMode::None)
            || (intx && (req.start != 0 || req.count != 1))
        {
            return Err(EINVAL);
        }
        if req.flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            let nvec = req.start + req.count;
            if mode == IrqMode::None && nvec == 0 {
                // pci_alloc_irq_vectors(dev, 1, 0, ...) refuses the empty range.
                return Err(ERANGE);
            }
            let mut signals = Vec::with_capacity(req.count as usize);
            for fd in req.data.chunks_exact(4) {
                let fd = i32::from_le_bytes([fd[0], fd[1], fd[2], fd[3]]);
                signals.push(if fd >= 0 {
                    Some(Signal::from(caller.fds.eventfd(fd)?))
                } else {
                    None
                });
            }
            // Read before taking the table: the engine lock comes before the table's.
            let n = self.snapshot_irq_count(target);
            let mut t = lock_irqs(&self.irqs);
            if t.mode == IrqMode::None {
                t.mode = target;
                t.vectors = vec![None; n as usize];
            }
            for (i, s) in signals.into_iter().enumerate() {
                if let Some(slot) = t.vectors.get_mut(req.start as usize + i) {
                    *slot = s;
                }
            }
            return Ok(0);
        }
        if mode != target {
            return Err(EINVAL);
        }
        let fire: Vec<Signal> = {
            let t = lock_irqs(&self.irqs);
            (0..req.count as usize)
                .filter(|&i| {
                    req.flags & VFIO_IRQ_SET_DATA_NONE != 0
                        || req.data.get(i).is_some_and(|&b| b != 0)
                })
                .filter_map(|i| t.vectors.get(req.start as usize + i).cloned().flatten())
                .collect()
        };
        for s in fire {
            s();
        }
        Ok(0)
    }

    fn snapshot_irq_count(&self, mode: IrqMode) -> u32 {
        let index = match mode {
            IrqMode::Intx => VFIO_PCI_INTX_IRQ_INDEX,
            IrqMode::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            IrqMode::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
            IrqMode::None => return 0,
        };
        self.snapshot().irq_count(index)
    }

    /// VFIO_DEVICE_RESET: function-level reset. As `pci_try_reset_function`, the command
    /// register is saved and restored around the reset; interrupt routing stays.
    fn reset(&self) -> Result<i64, Errno> {
        self.engine.with_platform(|p| {
            if let Some(m) = p.models.get_mut(&self.dev) {
                let cmd: Vec<u8> = m
                    .config()
                    .get(pci::COMMAND..pci::COMMAND + 2)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                m.reset();
                m.config_write(pci::COMMAND as u64, &cmd);
            }
        });
        Ok(0)
    }

    /// Read from the device file at `offset` (`pread(2)`): region `offset >> 40`, at
    /// `offset & (2^40 - 1)` within it. Returns the bytes read (short at the end of a BAR).
    ///
    /// Config space reads show the model's config space except: BAR registers read what the
    /// user last wrote, masked to the BAR's size, with the BAR's type bits (so writing all-ones
    /// sizes a BAR; unimplemented BARs and the upper half of 64-bit BARs read as the kernel
    /// shows them); the expansion ROM register reads 0. Writes to those registers stay in the
    /// file; other config writes go to the model, which applies its write masks.
    ///
    /// EINVAL before `VFIO_DEVICE_BIND_IOMMUFD`, for regions that do not exist and for offsets
    /// at or past a BAR's end; EFAULT for config accesses past its end (as vfio-pci); EIO for a
    /// memory BAR while memory decoding is off.
    pub fn pread(&self, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        let st = self.lock();
        if st.bound.is_none() {
            return Err(EINVAL);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let index = vfio_pci_offset_to_index(offset);
        let pos = offset & VFIO_PCI_OFFSET_MASK;
        match u32::try_from(index).unwrap_or(u32::MAX) {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                let snap = self.snapshot();
                let view = snap.virtual_config(&st.vbar);
                let range = config_range(pos, buf.len(), view.len())?;
                buf.copy_from_slice(&view[range]);
                Ok(buf.len())
            }
            i @ VFIO_PCI_BAR0_REGION_INDEX..=VFIO_PCI_BAR5_REGION_INDEX => {
                self.bar_rw(i as u8, pos, BarIo::Read(buf))
            }
            _ => Err(EINVAL),
        }
    }

    /// Write to the device file at `offset` (`pwrite(2)`); see [`VfioDeviceFile::pread`].
    /// A BAR write reaches the model's registers (a doorbell issues DMA through the IOMMU
    /// before this returns). ROM writes are EINVAL.
    pub fn pwrite(&self, data: &[u8], offset: u64) -> Result<usize, Errno> {
        let mut st = self.lock();
        if st.bound.is_none() {
            return Err(EINVAL);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let index = vfio_pci_offset_to_index(offset);
        let pos = offset & VFIO_PCI_OFFSET_MASK;
        match u32::try_from(index).unwrap_or(u32::MAX) {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                let len = self.snapshot().config.len();
                let range = config_range(pos, data.len(), len)?;
                self.config_write(&mut st, range.start, data);
                Ok(data.len())
            }
            i @ VFIO_PCI_BAR0_REGION_INDEX..=VFIO_PCI_BAR5_REGION_INDEX => {
                self.bar_rw(i as u8, pos, BarIo::Write(data))
            }
            _ => Err(EINVAL),
        }
    }

    /// Write config space at `start`: BAR/ROM bytes to the virtual registers, the rest to the
    /// model in contiguous runs.
    fn config_write(&self, st: &mut FileState, start: usize, data: &[u8]) {
        let virtual_reg = |off: usize| {
            (pci::BAR0..pci::BAR_END).contains(&off) || (pci::ROM..pci::ROM_END).contains(&off)
        };
        let mut run: Option<(usize, Vec<u8>)> = None;
        let mut runs = Vec::new();
        for (i, &b) in data.iter().enumerate() {
            let off = start + i;
            if virtual_reg(off) {
                let mut bytes = if off < pci::BAR_END {
                    let reg = (off - pci::BAR0) / 4;
                    st.vbar[reg].to_le_bytes()
                } else {
                    st.vrom.to_le_bytes()
                };
                bytes[off % 4] = b;
                if off < pci::BAR_END {
                    st.vbar[(off - pci::BAR0) / 4] = u32::from_le_bytes(bytes);
                } else {
                    st.vrom = u32::from_le_bytes(bytes);
                }
                if let Some(r) = run.take() {
                    runs.push(r);
                }
            } else {
                match run.as_mut() {
                    Some((_, v)) => v.push(b),
                    None => run = Some((off, vec![b])),
                }
            }
        }
        if let Some(r) = run.take() {
            runs.push(r);
        }
        if runs.is_empty() {
            return;
        }
        self.engine.with_platform(|p| {
            if let Some(m) = p.models.get_mut(&self.dev) {
                for (off, bytes) in runs {
                    m.config_write(off as u64, &bytes);
                }
            }
        });
    }

    /// A BAR access as vfio-pci's `vfio_pci_bar_rw` / `vfio_pci_core_do_io_rw` does it, under
    /// one engine lock.
    fn bar_rw(&self, bar: u8, pos: u64, mut io: BarIo<'_>) -> Result<usize, Errno> {
        let dev = self.dev;
        self.engine.with_platform(|p| {
            let snap = Snapshot::of(p, dev);
            let info = snap.bar(u32::from(bar)).ok_or(EINVAL)?;
            if pos >= info.size {
                return Err(EINVAL);
            }
            let count = (io.len() as u64).min(info.size - pos);
            let is_mem = snap.dword(pci::BAR0 + 4 * usize::from(bar)) & 1 == 0;
            let (x_start, x_end) = match snap.msix_table() {
                Some((bir, off, size)) if bir == u32::from(bar) => (off, off.saturating_add(size)),
                _ => (0, 0),
            };
            let mut done = 0u64;
            while done < count {
                let off = pos + done;
                let left = count - done;
                let fillable = if off < x_start {
                    left.min(x_start - off)
                } else if off >= x_end {
                    left
                } else {
                    0
                };
                let n = if fillable >= 8 && off & 7 == 0 {
                    8
                } else if fillable >= 4 && off & 3 == 0 {
                    4
                } else if fillable >= 2 && off & 1 == 0 {
                    2
                } else if fillable > 0 {
                    1
                } else {
                    left.min(x_end - off)
                };
                let (a, b) = (done as usize, (done + n) as usize);
                if fillable == 0 {
                    // The MSI-X table belongs to vfio-pci: reads see all-ones, writes vanish.
                    if let BarIo::Read(buf) = &mut io {
                        buf[a..b].fill(0xff);
                    }
                } else {
                    // BAR accesses cannot change config space: the snapshot stays true.
                    if is_mem && !snap.memory_enabled() {
                        return Err(EIO);
                    }
                    let r = match &mut io {
                        BarIo::Read(buf) => p.mmio_read(dev, bar, off, &mut buf[a..b]),
                        BarIo::Write(data) => p.mmio_write(dev, bar, off, &data[a..b]),
                    };
                    r.map_err(|_| EINVAL)?;
                }
                done += n;
            }
            Ok(count as usize)
        })
    }

    /// Check an `mmap(2)` of the device file: `len` bytes at file `offset` with `prot` and
    /// mmap `flags`, as `vfio_pci_core_mmap` does. Only BARs whose model allows mmap can be
    /// mapped, shared, within the BAR rounded up to pages; everything else is EINVAL (also
    /// before bind). `prot` is not restricted by vfio-pci and is accepted as given.
    pub fn mmap_check(
        &self,
        offset: u64,
        len: u64,
        prot: i32,
        flags: i32,
    ) -> Result<MmapTarget, Errno> {
        let _ = prot;
        if self.lock().bound.is_none() {
            return Err(EINVAL);
        }
        // What mmap(2) itself refuses before the driver sees it.
        if len == 0 || offset & (PAGE_SIZE - 1) != 0 {
            return Err(EINVAL);
        }
        let index = vfio_pci_offset_to_index(offset);
        if index >= u64::from(VFIO_PCI_NUM_REGIONS) || flags & MAP_SHARED == 0 {
            return Err(EINVAL);
        }
        if index >= u64::from(VFIO_PCI_ROM_REGION_INDEX) {
            return Err(EINVAL);
        }
        let snap = self.snapshot();
        let bar = snap.bar(index as u32).filter(|b| b.mmap).ok_or(EINVAL)?;
        let phys_len = bar.size.checked_next_multiple_of(PAGE_SIZE).ok_or(EINVAL)?;
        let start = offset & VFIO_PCI_OFFSET_MASK;
        let end = start.checked_add(len).ok_or(EINVAL)?;
        if end > phys_len {
            return Err(EINVAL);
        }
        Ok(MmapTarget {
            bar: bar.index,
            offset: start,
            len,
        })
    }

    /// Close the file: interrupts unhooked, function reset, device detached and unbound (the
    /// last unbind of the group returns it to its default domain). Dropping does the same.
    pub fn close(self) {
        drop(self)
    }

    fn release(&self) {
        let mut st = self.lock();
        if let Some(b) = st.bound.take() {
            self.disable_device(&mut st);
            let _ = b.ctx.device_unbind(b.devid);
        }
    }
}

impl Drop for VfioDeviceFile {
    fn drop(&mut self) {
        self.release();
    }
}

/// The user's buffer of a BAR access.
enum BarIo<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl BarIo<'_> {
    fn len(&self) -> usize {
        match self {
            BarIo::Read(b) => b.len(),
            BarIo::Write(d) => d.len(),
        }
    }
}

/// A decoded, validated SET_IRQS request.
struct IrqRequest<'a> {
    flags: u32,
    start: u32,
    count: u32,
    data: &'a [u8],
}

/// The config-space bytes `[pos, pos + len)`, or EFAULT when they are not all inside it.
fn config_range(pos: u64, len: usize, size: usize) -> Result<std::ops::Range<usize>, Errno> {
    let start = usize::try_from(pos).map_err(|_| EFAULT)?;
    let end = start.checked_add(len).ok_or(EFAULT)?;
    if start >= size || end > size {
        return Err(EFAULT);
    }
    Ok(start..end)
}

/// TRIGGER on ERR or REQ: vfio-pci's `vfio_pci_set_ctx_trigger_single`.
fn single_trigger(
    caller: &Caller<'_>,
    slot: &mut Option<Signal>,
    req: &IrqRequest<'_>,
) -> Result<i64, Errno> {
    if req.start != 0 || req.count > 1 {
        return Err(EINVAL);
    }
    if req.flags & VFIO_IRQ_SET_DATA_NONE != 0 {
        let s = slot.as_ref().ok_or(EINVAL)?;
        if req.count != 0 {
            s();
        } else {
            *slot = None;
        }
        return Ok(0);
    }
    if req.flags & VFIO_IRQ_SET_DATA_BOOL != 0 {
        if req.count == 0 {
            return Err(EINVAL);
        }
        if req.data.first().is_some_and(|&b| b != 0) {
            if let Some(s) = slot.as_ref() {
                s();
            }
        }
        return Ok(0);
    }
    if req.count == 0 {
        return Err(EINVAL);
    }
    let fd = match req.data {
        [a, b, c, d, ..] => i32::from_le_bytes([*a, *b, *c, *d]),
        _ => return Err(EINVAL),
    };
    match fd {
        -1 => *slot = None,
        fd if fd >= 0 => *slot = Some(Signal::from(caller.fds.eventfd(fd)?)),
        _ => return Err(EINVAL),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_chain_links_8_aligned_capabilities_from_the_info_start() {
        let mut c = CapChain::default();
        c.add(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, &[]);
        c.add(VFIO_REGION_INFO_CAP_TYPE, 1, &[1, 0, 0, 0, 2, 0, 0, 0]);
        c.add(VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, &[0; 12]);
        assert_eq!(c.len(), 8 + 16 + 24);
        let b = c.bytes_at(32);
        let hdr = |off: usize| VfioInfoCapHeader::read_from_bytes(&b[off..off + 8]).unwrap();
        assert_eq!(
            hdr(0),
            VfioInfoCapHeader {
                id: 3,
                version: 1,
                next: 40
            }
        );
        assert_eq!(hdr(8).next, 56);
        assert_eq!((hdr(24).id, hdr(24).next), (1, 0));
        assert_eq!(&b[16..24], &[1, 0, 0, 0, 2, 0, 0, 0]);
    }

    fn snap_with(config: Vec<u8>, bars: Vec<BarInfo>) -> Snapshot {
        Snapshot {
            config,
            bars,
            irq_count: 0,
        }
    }

    #[test]
    fn a_looping_capability_list_ends_the_walk() {
        let mut c = vec![0u8; 256];
        c[pci::STATUS] = pci::STATUS_CAP_LIST;
        c[pci::CAP_PTR] = 0x40;
        c[0x40] = 0x09;
        c[0x41] = 0x40; // points at itself
        let s = snap_with(c.clone(), Vec::new());
        assert_eq!(s.find_cap(pci::CAP_ID_MSIX), None);
        c[0x41] = 0xff; // past the end of the list area
        assert_eq!(snap_with(c, Vec::new()).find_cap(0x11), None);
        // A truncated config space does not panic either.
        assert_eq!(snap_with(vec![0x10; 8], Vec::new()).find_cap(0x11), None);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask_and_type_bits() {
        let mut c = vec![0u8; 256];
        c[0x10] = 0x04; // 64-bit memory BAR0
        c[0x18] = 0x01; // I/O BAR2
        let bars = vec![
            BarInfo {
                index: 0,
                size: 4096,
                mmap: false,
            },
            BarInfo {
                index: 2,
                size: 32,
                mmap: false,
            },
        ];
        let s = snap_with(c, bars);
        let v = s.virtual_bars(&[u32::MAX; 6]);
        assert_eq!(
            v,
            [0xffff_f004, 0xffff_ffff, 0xffff_ffe1, 0, 0, 0],
            "{v:x?}"
        );
        let v = s.virtual_bars(&[0x1234_5678, 0x9, 0, 0, 0, 0]);
        assert_eq!(&v[..2], &[0x1234_5004, 0x9]);
    }

    #[test]
    fn the_file_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<VfioDeviceFile>();
    }

    #[test]
    fn config_range_refuses_anything_past_the_end() {
        assert_eq!(config_range(0, 256, 256), Ok(0..256));
        assert_eq!(config_range(255, 2, 256), Err(EFAULT));
        assert_eq!(config_range(256, 1, 256), Err(EFAULT));
        assert_eq!(config_range(u64::MAX, 1, 256), Err(EFAULT));
    }
}
