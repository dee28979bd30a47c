//! The device part of the VFIO clients: what a userspace driver built on `vfio-ioctls` does
//! with a `dma-engine` function (registers in docs/dma-engine.md) once `VfioDevice::new` has
//! opened it, whichever `VfioOps` backs it (`VfioIommufd` for the device cdev, `VfioContainer`
//! for the legacy container and groups).

use std::path::Path;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::{VfioDevice, VfioOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::Checks;

// dma-engine BAR0 registers (docs/dma-engine.md).
const REG_ID: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_SRC: u64 = 0x008;
const REG_DST: u64 = 0x010;
const REG_LEN: u64 = 0x018;
const REG_OP: u64 = 0x020;
const REG_DOORBELL: u64 = 0x028;
const REG_STATUS: u64 = 0x02c;
const REG_FAULT_CODE: u64 = 0x030;
const REG_IRQ_ENABLE: u64 = 0x034;
const REG_FAULT_IOVA: u64 = 0x038;
const REG_BYTES_DONE: u64 = 0x048;
const DMA_ENGINE_ID: u32 = 0x444d_4145;
const OP_COPY: u32 = 0;
const STATUS_DONE: u32 = 1;
const STATUS_FAULT: u32 = 2;
const FAULT_NOT_MAPPED: u32 = 2;
const FAULT_WRITE_SIDE: u32 = 1 << 8;

const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

const LEN: usize = 0x4000; // 4 pages per buffer
const SRC_IOVA: u64 = 0x10_0000;
const DST_IOVA: u64 = 0x20_0000;
const UNMAPPED_IOVA: u64 = 0x90_0000;

const BAR0: u32 = VFIO_PCI_BAR0_REGION_INDEX;
const CONFIG: u32 = VFIO_PCI_CONFIG_REGION_INDEX;

/// Drive the dma-engine `device` (found at `sysfs`) whose DMA is mapped through `ops` (named
/// `kind` in the output): region info, vendor and device id from config space (compared with
/// sysfs), bus mastering, BAR0 identification, MSI-X to an eventfd, two buffers of this process
/// mapped with `vfio_dma_map`, a DMA copy between them checked in this process's memory and by
/// its completion interrupt, a fault on an unmapped IOVA, `vfio_dma_unmap` and a fault after it,
/// MSI-X disabled. The buffers are unmapped from the process when this returns.
pub fn exercise(c: &mut Checks, device: &VfioDevice, ops: &dyn VfioOps, kind: &str, sysfs: &Path) {
    // Regions as the crate read them (VFIO_DEVICE_GET_REGION_INFO).
    let cfg_size = device.get_region_size(CONFIG);
    c.check(
        cfg_size >= 256,
        format!("config region: {cfg_size} bytes"),
        cfg_size,
    );
    let bar0_size = device.get_region_size(BAR0);
    let bar0_flags = device.get_region_flags(BAR0);
    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    c.check(
        bar0_size == 4096 && bar0_flags & rw == rw,
        format!(
            "BAR0 region: {bar0_size} bytes at offset {:#x}, flags {bar0_flags:#x}",
            device.get_region_offset(BAR0)
        ),
        format!("size {bar0_size} flags {bar0_flags:#x}"),
    );

    // Vendor and device id through the config region, compared with sysfs.
    let vendor = read16(device, CONFIG, 0x00);
    let device_id = read16(device, CONFIG, 0x02);
    let sys_vendor = sysfs_hex(sysfs, "vendor");
    let sys_device = sysfs_hex(sysfs, "device");
    c.check(
        vendor == 0x1b36 && device_id == 0x10f0,
        format!("config space: vendor {vendor:04x}, device {device_id:04x} (dma-engine)"),
        format!("{vendor:04x}:{device_id:04x}"),
    );
    c.check(
        Some(vendor) == sys_vendor && Some(device_id) == sys_device,
        "config space ids match sysfs vendor/device",
        format!("sysfs {sys_vendor:x?}:{sys_device:x?}"),
    );

    // Enable memory decoding and bus mastering, as a driver does.
    let cmd = read16(device, CONFIG, PCI_COMMAND);
    let want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    device.region_write(CONFIG, &want.to_le_bytes(), PCI_COMMAND);
    let cmd_now = read16(device, CONFIG, PCI_COMMAND);
    c.check(
        cmd_now & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
            == PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
        format!("command register {cmd:#06x} -> {cmd_now:#06x} (memory, bus master)"),
        format!("{cmd_now:#06x}"),
    );

    let id = read32(device, REG_ID);
    let version = read32(device, REG_VERSION);
    c.check(
        id == DMA_ENGINE_ID && version == 1,
        format!("BAR0 ID {id:#x}, VERSION {version}"),
        format!("{id:#x} {version}"),
    );

    // Completion interrupt: MSI-X vector 0 to an eventfd.
    let msix = device
        .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
        .map(|i| i.count);
    c.check(
        msix == Some(1),
        format!("MSI-X: {msix:?} vector"),
        format!("{msix:?}"),
    );
    let irq = c.ok(EventFd::new(EFD_NONBLOCK), "eventfd");
    c.ok(
        device.enable_msix(vec![&irq]),
        "enable_msix with the eventfd",
    );
    write32(device, REG_IRQ_ENABLE, 1);

    // Two buffers of this process, mapped for DMA.
    let src = Buffer::new(LEN);
    let dst = Buffer::new(LEN);
    for i in 0..LEN {
        src.set(i, pattern(i));
        dst.set(i, 0);
    }
    // SAFETY: `src` is a live private anonymous mapping of LEN bytes owned by this function;
    // until it is unmapped below, this program touches it only through volatile raw-pointer
    // accesses (`Buffer::get`/`set`), never through references, as the crate requires.
    let r = unsafe { ops.vfio_dma_map(SRC_IOVA, LEN, src.ptr) };
    c.ok(
        r,
        format!(
            "{kind}::vfio_dma_map src va {:#x} -> iova {SRC_IOVA:#x}",
            src.ptr as usize
        ),
    );
    // SAFETY: as for `src` above: `dst` is a live mapping only accessed through volatile
    // raw-pointer accesses until it is unmapped.
    let r = unsafe { ops.vfio_dma_map(DST_IOVA, LEN, dst.ptr) };
    c.ok(
        r,
        format!(
            "{kind}::vfio_dma_map dst va {:#x} -> iova {DST_IOVA:#x}",
            dst.ptr as usize
        ),
    );

    // Copy src -> dst by DMA.
    let status = run_copy(device, SRC_IOVA, DST_IOVA, LEN as u64);
    c.check(
        read64(device, REG_SRC) == SRC_IOVA
            && read64(device, REG_DST) == DST_IOVA
            && read64(device, REG_LEN) == LEN as u64,
        "SRC/DST/LEN registers read back as written",
        "",
    );
    let done = read64(device, REG_BYTES_DONE);
    c.check(
        status == STATUS_DONE && done == LEN as u64,
        format!("copy {LEN:#x} bytes iova {SRC_IOVA:#x} -> {DST_IOVA:#x}: STATUS done, BYTES_DONE {done:#x}"),
        format!("status {status}, fault code {:#x}, bytes {done:#x}", read32(device, REG_FAULT_CODE)),
    );
    let bad = (0..LEN).find(|&i| dst.get(i) != pattern(i));
    c.check(
        bad.is_none(),
        format!("the {LEN:#x} bytes arrived in this process's dst buffer"),
        format!("first wrong byte at {bad:?}"),
    );
    c.check(
        irq.read().ok() == Some(1),
        "completion interrupt on the MSI-X eventfd",
        "no event",
    );

    // DMA to an IOVA nothing is mapped at faults, and the buffers are untouched.
    dst.set(0, 0xee);
    let status = run_copy(device, SRC_IOVA, UNMAPPED_IOVA, 4096);
    let code = read32(device, REG_FAULT_CODE);
    let fault_iova = read64(device, REG_FAULT_IOVA);
    c.check(
        status == STATUS_FAULT
            && code == FAULT_NOT_MAPPED | FAULT_WRITE_SIDE
            && fault_iova == UNMAPPED_IOVA,
        format!(
            "copy to unmapped iova {UNMAPPED_IOVA:#x}: fault, code {code:#x}, iova {fault_iova:#x}"
        ),
        format!("status {status}, code {code:#x}, iova {fault_iova:#x}"),
    );
    c.check(
        irq.read().ok() == Some(1),
        "the faulted operation also ended with an interrupt",
        "no event",
    );

    // Unmap dst: DMA to it now faults.
    c.ok(
        ops.vfio_dma_unmap(DST_IOVA, LEN),
        format!("{kind}::vfio_dma_unmap dst (the crate checks the unmapped length)"),
    );
    let status = run_copy(device, SRC_IOVA, DST_IOVA, LEN as u64);
    let fault_iova = read64(device, REG_FAULT_IOVA);
    c.check(
        status == STATUS_FAULT && fault_iova == DST_IOVA && dst.get(0) == 0xee,
        "after unmap, a copy to dst faults and dst is untouched",
        format!(
            "status {status}, iova {fault_iova:#x}, dst[0] {:#x}",
            dst.get(0)
        ),
    );
    let _ = irq.read();
    c.ok(
        ops.vfio_dma_unmap(SRC_IOVA, LEN),
        format!("{kind}::vfio_dma_unmap src"),
    );

    c.ok(device.disable_msix(), "disable_msix");
}

/// A copy by the dma-engine; returns STATUS.
fn run_copy(dev: &VfioDevice, src: u64, dst: u64, len: u64) -> u32 {
    write64(dev, REG_SRC, src);
    write64(dev, REG_DST, dst);
    write64(dev, REG_LEN, len);
    write32(dev, REG_OP, OP_COPY);
    write32(dev, REG_DOORBELL, 1);
    read32(dev, REG_STATUS)
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

// The crate's region accessors return nothing (a failed access is only logged), so reads start
// from all-zeros and every write the checks rely on is read back or has a visible effect.
fn read16(dev: &VfioDevice, region: u32, off: u64) -> u16 {
    let mut b = [0u8; 2];
    dev.region_read(region, &mut b, off);
    u16::from_le_bytes(b)
}

fn read32(dev: &VfioDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.region_read(BAR0, &mut b, off);
    u32::from_le_bytes(b)
}

fn read64(dev: &VfioDevice, off: u64) -> u64 {
    let mut b = [0u8; 8];
    dev.region_read(BAR0, &mut b, off);
    u64::from_le_bytes(b)
}

fn write32(dev: &VfioDevice, off: u64, v: u32) {
    dev.region_write(BAR0, &v.to_le_bytes(), off);
}

fn write64(dev: &VfioDevice, off: u64, v: u64) {
    dev.region_write(BAR0, &v.to_le_bytes(), off);
}

/// `0x…` in a sysfs attribute file.
fn sysfs_hex(dev: &std::path::Path, attr: &str) -> Option<u16> {
    let s = std::fs::read_to_string(dev.join(attr)).ok()?;
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// DMA memory: a private anonymous mapping, accessed only through volatile raw-pointer
/// operations while the device may reach it (`VfioOps::vfio_dma_map`'s contract).
struct Buffer {
    ptr: *mut u8,
    len: usize,
}

impl Buffer {
    fn new(len: usize) -> Self {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
        // no existing memory; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap of {len} bytes failed");
        Buffer { ptr: p.cast(), len }
    }

    fn get(&self, i: usize) -> u8 {
        assert!(i < self.len);
        // SAFETY: `i` is inside the live mapping; a volatile read makes no reference.
        unsafe { self.ptr.add(i).read_volatile() }
    }

    fn set(&self, i: usize, v: u8) {
        assert!(i < self.len);
        // SAFETY: `i` is inside the live, writable mapping; a volatile write makes no reference.
        unsafe { self.ptr.add(i).write_volatile(v) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Buffer::new` with this length and is unmapped once;
        // it is no longer mapped for DMA when buffers are dropped at the end of `main`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
