//! uiommu: the Linux iommufd model in userspace, over an emulated IOMMU platform.
//!
//! This crate is the facade: it re-exports the engine ([`core`]) and the emulated machine
//! ([`platform`]), and holds the narrated demo ([`demo`]) that the `uiommu` binary runs.
//!
//! A VMM embeds the engine like this (see `examples/vmm.rs` for the whole program):
//!
//! ```
//! use uiommu::core::Engine;
//! use uiommu::platform::memory::{SimMemory, UserMemory};
//! use uiommu::platform::{pagetable::Prot, Iova, UserVa};
//!
//! let engine = Engine::builtin();
//! let guest = SimMemory::new();
//! guest.map(UserVa(0x10_0000), 0x20_0000, true);
//! let space = engine.add_space(guest.clone());
//! let ctx = engine.open(space).unwrap();
//! let dev = engine.with_platform(|p| p.topology.find_name("dma0")).unwrap();
//! let dev_id = ctx.device_bind(dev).unwrap();
//! let ioas = ctx.ioas_alloc().unwrap();
//! ctx.device_attach(dev_id, ioas).unwrap();
//! ctx.ioas_map(ioas, UserVa(0x10_0000), 0x20_0000, Some(Iova(0x4000_0000)), Prot::RW).unwrap();
//! engine.dma_write(dev, Iova(0x4000_0000), b"hello").unwrap();
//! let mut back = [0u8; 5];
//! guest.read(UserVa(0x10_0000), &mut back).unwrap();
//! assert_eq!(&back, b"hello");
//! ```

pub mod demo;
pub mod dma_engine;
pub mod picture;
pub mod topology_json;

pub use uiommu_core as core;
pub use uiommu_platform as platform;
