//! The narrated demo: a tour of the iommufd security model on the built-in platform.
//!
//! Each step says what should happen, makes it happen through the library API (the same calls
//! the ioctl layer makes) and checks that it did, including the invariant checker after every
//! step. [`run`] returns a [`Report`]; the `uiommu demo` command exits 0 only if every check
//! held.

use crate::dma_engine::DmaEngineDriver;
use std::io::Write;
use std::sync::Arc;
use uiommu_core::{Engine, EngineConfig};
use uiommu_platform::devices::dma_engine::{
    FAULT_BLOCKED, FAULT_NOT_MAPPED, FAULT_WRITE, STATUS_FAULT,
};
use uiommu_platform::drivers::Driver;
use uiommu_platform::hw::DomainKind;
use uiommu_platform::memory::{MemFault, SimMemory, UserMemory};
use uiommu_platform::pagetable::Prot;
use uiommu_platform::topology::{DeviceId, GroupId};
use uiommu_platform::{Iova, Platform, UserVa};

/// The outcome of every check the demo made.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Each check: what was claimed, and whether it held.
    pub checks: Vec<(String, bool)>,
}

impl Report {
    /// Whether every check held.
    pub fn all_ok(&self) -> bool {
        self.checks.iter().all(|c| c.1)
    }
    /// Number of checks that did not hold.
    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.1).count()
    }
}

/// Why the demo could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing the narration failed.
    #[error("writing the narration: {0}")]
    Io(#[from] std::io::Error),
    /// The engine refused something the demo needs to go on.
    #[error("the engine refused a setup step: {0}")]
    Engine(#[from] uiommu_core::Error),
    /// The platform refused a register access.
    #[error("the platform refused a register access: {0}")]
    Platform(#[from] uiommu_platform::PlatformError),
    /// Guest memory could not be read or written.
    #[error("guest memory: {0}")]
    Memory(#[from] MemFault),
    /// The built-in platform lacks a device the demo uses.
    #[error("the built-in platform has no device {0}")]
    NoDevice(&'static str),
}

struct Narrator<'a> {
    out: &'a mut dyn Write,
    report: Report,
    step: usize,
}

impl Narrator<'_> {
    fn step(&mut self, title: &str) -> Result<(), DemoError> {
        self.step += 1;
        writeln!(self.out, "\n{}. {}", self.step, title)?;
        Ok(())
    }
    fn say(&mut self, text: &str) -> Result<(), DemoError> {
        writeln!(self.out, "   {text}")?;
        Ok(())
    }
    fn check(
        &mut self,
        claim: &str,
        held: bool,
        detail: impl std::fmt::Display,
    ) -> Result<(), DemoError> {
        if held {
            writeln!(self.out, "   [ok]   {claim}")?;
        } else {
            writeln!(self.out, "   [FAIL] {claim} ({detail})")?;
        }
        self.report.checks.push((claim.to_string(), held));
        Ok(())
    }
    fn invariants(&mut self, engine: &Engine) -> Result<(), DemoError> {
        let r = engine.check_invariants();
        let detail = match &r {
            Ok(()) => String::new(),
            Err(v) => v.to_string(),
        };
        self.check("security invariants I1-I4 hold", r.is_ok(), detail)
    }
}

const GUEST_RAM: UserVa = UserVa(0x7f00_0000_0000);
const GUEST_RAM_LEN: u64 = 0x40_0000;
const SRC_IOVA: Iova = Iova(0x1000_0000);
const DST_IOVA: Iova = Iova(0x2000_0000);
const XFER: u64 = 0x1_0000;

fn device(engine: &Engine, name: &'static str) -> Result<DeviceId, DemoError> {
    engine
        .with_platform(|p| p.topology.find_name(name))
        .ok_or(DemoError::NoDevice(name))
}

fn group_of(engine: &Engine, dev: DeviceId) -> GroupId {
    engine
        .with_platform(|p| p.topology.device(dev).map(|d| d.group))
        .unwrap_or(GroupId(u32::MAX))
}

fn domain_of(engine: &Engine, dev: DeviceId) -> Option<DomainKind> {
    engine
        .group_status(group_of(engine, dev))
        .and_then(|s| s.domain)
}

fn errno_name(n: i32) -> &'static str {
    match n {
        1 => "EPERM",
        16 => "EBUSY",
        22 => "EINVAL",
        _ => "another errno",
    }
}

/// Run the demo, narrating to `out`.
pub fn run(out: &mut dyn Write) -> Result<Report, DemoError> {
    let mut n = Narrator {
        out,
        report: Report::default(),
        step: 0,
    };
    let engine: Arc<Engine> = Engine::new(Platform::builtin(), EngineConfig::default())?;

    n.step("The machine: a PCI tree, and the IOMMU groups Linux would derive from it")?;
    let tree = engine.with_platform(|p| p.topology.describe());
    for line in tree.lines() {
        n.say(line)?;
    }
    let (dma0, dma1, dma2) = (
        device(&engine, "dma0")?,
        device(&engine, "dma1")?,
        device(&engine, "dma2")?,
    );
    let (legacy0, nvme0) = (device(&engine, "legacy0")?, device(&engine, "nvme0")?);
    n.say("dma1 and dma2 are two functions of one device without ACS: one group.")?;
    n.say("legacy0 and nvme0 sit behind a PCIe-to-PCI bridge and DMA with its alias: one group.")?;
    n.check(
        "dma1 and dma2 share a group",
        group_of(&engine, dma1) == group_of(&engine, dma2),
        "",
    )?;
    n.check(
        "legacy0 and nvme0 share a group",
        group_of(&engine, legacy0) == group_of(&engine, nvme0),
        "",
    )?;
    n.check(
        "dma0 is alone in its group",
        group_of(&engine, dma0) != group_of(&engine, dma1),
        "",
    )?;
    n.check(
        "every group starts in its default (identity) domain",
        domain_of(&engine, dma0) == Some(DomainKind::Identity),
        format!("{:?}", domain_of(&engine, dma0)),
    )?;

    n.step("A VMM opens a security context and binds dma0")?;
    let ram = SimMemory::new();
    ram.map(GUEST_RAM, GUEST_RAM_LEN, true);
    let pattern: Vec<u8> = (0..XFER).map(|i| (i * 7 + 3) as u8).collect();
    ram.write(GUEST_RAM, &pattern)?;
    let space = engine.add_space(ram.clone());
    let ctx_a = engine.open(space)?;
    let d0 = ctx_a.device_bind(dma0)?;
    n.say(&format!("context A: device object {} for dma0", d0.0))?;
    n.check(
        "binding claimed the group and put it in the blocking domain",
        domain_of(&engine, dma0) == Some(DomainKind::Blocking),
        format!("{:?}", domain_of(&engine, dma0)),
    )?;
    n.invariants(&engine)?;

    n.step("A bound but unattached device cannot DMA")?;
    let drv0 = DmaEngineDriver::new(&engine, dma0);
    let o = drv0.copy(SRC_IOVA, DST_IOVA, XFER)?;
    n.say(&format!(
        "dma0 copy: status {}, fault code {:#x} at IOVA {:#x}",
        o.status, o.fault_code, o.fault_iova
    ))?;
    n.check(
        "the copy faulted as blocked at its first read",
        o.status == STATUS_FAULT
            && o.fault_code & 0xff == FAULT_BLOCKED
            && o.fault_iova == SRC_IOVA.raw(),
        format!("{o:?}"),
    )?;
    let logged = engine
        .faults()
        .iter()
        .any(|f| f.device == dma0 && f.iova == SRC_IOVA);
    n.check(
        "the IOMMU recorded the fault",
        logged,
        "not in the fault log",
    )?;

    n.step("Attach to an IOAS, map guest memory, and let dma0 copy")?;
    let ioas = ctx_a.ioas_alloc()?;
    let hwpt = ctx_a.device_attach(d0, ioas)?;
    n.say(&format!(
        "IOAS {} with an automatic paging HWPT {}",
        ioas.0, hwpt.0
    ))?;
    ctx_a.ioas_map(ioas, GUEST_RAM, XFER, Some(SRC_IOVA), Prot::RO)?;
    let dst_va = UserVa(GUEST_RAM.raw() + 0x10_0000);
    ctx_a.ioas_map(ioas, dst_va, XFER, Some(DST_IOVA), Prot::RW)?;
    n.say(&format!(
        "mapped {XFER:#x} bytes read-only at {SRC_IOVA} and writable at {DST_IOVA}"
    ))?;
    n.say(&format!(
        "{} pages pinned, {} charged to the user",
        engine.total_pins(),
        engine.user_charged_pages()
    ))?;
    n.check(
        "the group now uses a paging domain",
        domain_of(&engine, dma0) == Some(DomainKind::Paging),
        format!("{:?}", domain_of(&engine, dma0)),
    )?;
    let o = drv0.copy(SRC_IOVA, DST_IOVA, XFER)?;
    let mut back = vec![0u8; XFER as usize];
    ram.read(dst_va, &mut back)?;
    n.check("the copy completed", o.done(), format!("{o:?}"))?;
    n.check(
        "the destination holds exactly the source bytes",
        back == pattern,
        "data differs",
    )?;
    let crc = drv0.crc32(DST_IOVA, XFER)?;
    n.say(&format!(
        "dma0 CRC-32 of the destination: {:#010x}",
        crc.result
    ))?;
    let o = drv0.copy(DST_IOVA, SRC_IOVA, 16)?;
    n.check(
        "a DMA write to the read-only mapping faults",
        o.status == STATUS_FAULT && o.fault_code == (3 | FAULT_WRITE),
        format!("{o:?}"),
    )?;
    n.invariants(&engine)?;

    n.step("A second context cannot take a device of a group the first one owns")?;
    let ctx_b = engine.open(space)?;
    let d1 = ctx_a.device_bind(dma1)?;
    n.say(&format!(
        "context A binds dma1 (device object {}): it now owns dma1's group",
        d1.0
    ))?;
    let e = ctx_b.device_bind(dma2).err().map(|e| e.errno());
    n.say(&format!(
        "context B binds dma2: {}",
        e.map(errno_name).unwrap_or("success")
    ))?;
    n.check(
        "context B is refused with EPERM",
        e == Some(1),
        format!("{e:?}"),
    )?;
    n.invariants(&engine)?;

    n.step("A kernel DMA driver and a context never share a group")?;
    let e = ctx_a.device_bind(legacy0).err().map(|e| e.errno());
    n.say(&format!(
        "context A binds legacy0 while nvme0 (same group) runs the nvme driver: {}",
        e.map(errno_name).unwrap_or("success")
    ))?;
    n.check(
        "binding next to a kernel DMA driver is refused with EPERM",
        e == Some(1),
        format!("{e:?}"),
    )?;
    engine.driver_unbind(nvme0)?;
    n.say("the administrator unbinds nvme from nvme0")?;
    ctx_a.device_bind(legacy0)?;
    n.say("context A binds legacy0: it now owns the bridge's group")?;
    let e = engine
        .driver_bind(nvme0, Driver::Dma("nvme".into()))
        .err()
        .map(|e| e.errno());
    n.say(&format!(
        "nvme tries to bind to nvme0: {}",
        e.map(errno_name).unwrap_or("success")
    ))?;
    n.check(
        "the DMA driver is refused with EBUSY",
        e == Some(16),
        format!("{e:?}"),
    )?;
    let still = engine.with_platform(|p| p.drivers.driver(nvme0).clone());
    n.check(
        "nvme0 stays without a driver",
        still == Driver::Unbound,
        format!("{still:?}"),
    )?;
    n.invariants(&engine)?;

    n.step("Unmap, and the next DMA faults")?;
    let unmapped = ctx_a.ioas_unmap(ioas, DST_IOVA, XFER)?;
    n.say(&format!(
        "unmapped {unmapped:#x} bytes at {DST_IOVA}; {} pages pinned",
        engine.total_pins()
    ))?;
    let o = drv0.copy(SRC_IOVA, DST_IOVA, XFER)?;
    n.say(&format!(
        "dma0 copy: status {}, fault code {:#x} at IOVA {:#x}",
        o.status, o.fault_code, o.fault_iova
    ))?;
    n.check(
        "the copy faulted as not mapped on its first write",
        o.status == STATUS_FAULT
            && o.fault_code == (FAULT_NOT_MAPPED | FAULT_WRITE)
            && o.fault_iova == DST_IOVA.raw(),
        format!("{o:?}"),
    )?;
    n.invariants(&engine)?;

    n.step("Close the contexts: everything is torn down")?;
    ctx_a.close();
    ctx_b.close();
    n.check(
        "dma0's group is back in its default domain",
        domain_of(&engine, dma0) == Some(DomainKind::Identity),
        format!("{:?}", domain_of(&engine, dma0)),
    )?;
    n.check(
        "the bridge's group is back in its default domain",
        domain_of(&engine, legacy0) == Some(DomainKind::Identity),
        format!("{:?}", domain_of(&engine, legacy0)),
    )?;
    n.check(
        "no page is pinned",
        engine.total_pins() == 0,
        engine.total_pins(),
    )?;
    n.check(
        "nothing is charged",
        engine.user_charged_pages() == 0,
        engine.user_charged_pages(),
    )?;
    let e = engine.driver_bind(nvme0, Driver::Dma("nvme".into()));
    n.check("nvme can bind to nvme0 again", e.is_ok(), format!("{e:?}"))?;
    n.invariants(&engine)?;

    let report = n.report;
    writeln!(
        n.out,
        "\n{} checks, {} held, {} did not.",
        report.checks.len(),
        report.checks.len() - report.failed(),
        report.failed()
    )?;
    Ok(report)
}
