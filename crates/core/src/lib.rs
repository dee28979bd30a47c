//! The iommufd engine: security contexts over the emulated platform.

#![forbid(unsafe_code)]

pub mod error;
pub mod io_pagetable;
pub mod iova_alloc;
pub mod pages;

pub use error::{Error, Result};
