//! Embedding uiommu as a VMM's I/O-address-space engine.
//!
//! A VMM keeps guest RAM, opens a security context, gives a passthrough device (a dma-engine)
//! to the guest, maps guest RAM at guest-physical IOVAs, lets the device DMA, and reads the
//! IOMMU's fault log when the guest programs a bad address.
//!
//! Run: `cargo run -p uiommu --example vmm`

use std::process::ExitCode;
use uiommu::core::{Engine, EngineConfig};
use uiommu::dma_engine::DmaEngineDriver;
use uiommu::platform::memory::{SimMemory, UserMemory};
use uiommu::platform::pagetable::Prot;
use uiommu::platform::topology::Topology;
use uiommu::platform::{Iova, Platform, UserVa};

/// Where the VMM keeps guest RAM in its own address space.
const GUEST_RAM_HVA: UserVa = UserVa(0x7f00_0000_0000);
/// Guest RAM size: 8 MiB.
const GUEST_RAM_SIZE: u64 = 8 << 20;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The platform: the built-in one here; `Topology::from_toml` reads a file instead.
    let engine = Engine::new(
        Platform::new(Topology::builtin_default()),
        EngineConfig::default(),
    )?;

    // 2. Guest RAM, registered as the VMM's address space.
    let ram = SimMemory::new();
    ram.map(GUEST_RAM_HVA, GUEST_RAM_SIZE, true);
    let space = engine.add_space(ram.clone());

    // 3. A security context, the passthrough device bound and attached to an IOAS.
    let ctx = engine.open(space)?;
    let dev = engine
        .with_platform(|p| p.topology.find_name("dma0"))
        .ok_or("no dma0")?;
    let dev_id = ctx.device_bind(dev)?;
    let ioas = ctx.ioas_alloc()?;
    let hwpt = ctx.device_attach(dev_id, ioas)?;
    println!(
        "bound dma0 as device {}, attached to IOAS {} through HWPT {}",
        dev_id.0, ioas.0, hwpt.0
    );

    // 4. Map all of guest RAM at guest-physical address 0 (IOVA = GPA).
    ctx.ioas_map(ioas, GUEST_RAM_HVA, GUEST_RAM_SIZE, Some(Iova(0)), Prot::RW)?;
    let ranges = ctx.ioas_iova_ranges(ioas)?;
    println!(
        "IOVA ranges: {:x?}, alignment {:#x}",
        ranges.ranges, ranges.alignment
    );

    // 5. The guest's driver puts data at GPA 0x1000 and asks the device to copy it to 0x20_0000.
    ram.write(
        UserVa(GUEST_RAM_HVA.raw() + 0x1000),
        b"guest data moved by DMA",
    )?;
    let drv = DmaEngineDriver::new(&engine, dev);
    let out = drv.copy(Iova(0x1000), Iova(0x20_0000), 23)?;
    let mut back = [0u8; 23];
    ram.read(UserVa(GUEST_RAM_HVA.raw() + 0x20_0000), &mut back)?;
    println!(
        "copy status {}: {:?}",
        out.status,
        String::from_utf8_lossy(&back)
    );

    // 6. The guest programs an address outside its RAM: the IOMMU stops it and records why.
    let bad = drv.copy(Iova(0x1000), Iova(GUEST_RAM_SIZE + 0x1000), 16)?;
    println!(
        "bad copy status {}, fault at {:#x}",
        bad.status, bad.fault_iova
    );
    for f in engine.faults() {
        println!(
            "fault: device {:?} {:?} at {} ({:?})",
            f.device, f.access, f.iova, f.reason
        );
    }

    // 7. Shutting the VM down closes the context: nothing stays pinned.
    ctx.close();
    println!("after close: {} pages pinned", engine.total_pins());
    engine.check_invariants()?;
    Ok(())
}
