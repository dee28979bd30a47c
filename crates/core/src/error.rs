//! The core's one error type, and its mapping to the kernel's errno.
//!
//! Every refusal of the engine is an [`Error`]; the uAPI layer turns it into an errno with
//! [`Error::errno`] and nothing else. Variants name the kernel's errno they stand for and carry
//! what a person needs to understand the refusal.

use uiommu_platform::Range;

/// Linux errno values used by the engine (x86-64 numbering).
pub mod errno {
    #![allow(missing_docs)]
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const ENXIO: i32 = 6;
    pub const E2BIG: i32 = 7;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EFAULT: i32 = 14;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOTTY: i32 = 25;
    pub const ENOSPC: i32 = 28;
    pub const ERANGE: i32 = 34;
    pub const EDEADLK: i32 = 35;
    pub const EOVERFLOW: i32 = 75;
    pub const EMSGSIZE: i32 = 90;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EADDRINUSE: i32 = 98;
}

/// Why the engine refused a request. State is unchanged unless the variant says otherwise.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// EINVAL: a malformed request (bad flags, zero length, misaligned, wrong state).
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// ENOENT: no object with this id in the context.
    #[error("no object {0}")]
    NoObject(u32),
    /// ENOENT: the object exists but is not of the type the request needs.
    #[error("object {id} is not {expected}")]
    WrongType {
        /// The id given.
        id: u32,
        /// What was expected ("an IOAS", "a device", ...).
        expected: &'static str,
    },
    /// ENOENT: the IOVA range is not (exactly) mapped.
    #[error("{0:x?} is not mapped as asked")]
    NotMapped(Range),
    /// ENOENT: something else looked for is absent.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// EBUSY: the object or resource is in use.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// EEXIST: the IOVA range (or binding) already exists.
    #[error("already exists: {0}")]
    Exists(&'static str),
    /// ENOMEM: out of memory, or the pinned-memory limit would be exceeded.
    #[error("out of memory: {0}")]
    NoMemory(&'static str),
    /// EPERM: the security model forbids it (group owned elsewhere, ...).
    #[error("not permitted: {0}")]
    Permission(&'static str),
    /// EFAULT: program memory at this address could not be accessed.
    #[error("bad address {0:#x}")]
    Fault(u64),
    /// EOVERFLOW: an address range wraps.
    #[error("range overflows")]
    Overflow,
    /// EADDRINUSE: an IOVA range conflicts with a reserved range or alignment.
    #[error("address in use: {0}")]
    AddressInUse(&'static str),
    /// ENOSPC: no free IOVA range fits.
    #[error("no space: {0}")]
    NoSpace(&'static str),
    /// EOPNOTSUPP: the request is understood but not supported.
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// EDEADLK: an access holding pins did not let go when told to.
    #[error("deadlock: {0}")]
    Deadlock(&'static str),
    /// ERANGE: a value lies outside what is allowed.
    #[error("out of range: {0}")]
    OutOfRange(&'static str),
    /// ENODEV: the device is gone or not usable.
    #[error("no device: {0}")]
    NoDevice(&'static str),
}

impl Error {
    /// The errno the kernel returns for this refusal.
    pub fn errno(&self) -> i32 {
        use errno::*;
        match self {
            Error::Invalid(_) => EINVAL,
            Error::NoObject(_)
            | Error::WrongType { .. }
            | Error::NotMapped(_)
            | Error::NotFound(_) => ENOENT,
            Error::Busy(_) => EBUSY,
            Error::Exists(_) => EEXIST,
            Error::NoMemory(_) => ENOMEM,
            Error::Permission(_) => EPERM,
            Error::Fault(_) => EFAULT,
            Error::Overflow => EOVERFLOW,
            Error::AddressInUse(_) => EADDRINUSE,
            Error::NoSpace(_) => ENOSPC,
            Error::NotSupported(_) => EOPNOTSUPP,
            Error::Deadlock(_) => EDEADLK,
            Error::OutOfRange(_) => ERANGE,
            Error::NoDevice(_) => ENODEV,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A fault-injection site of the engine ([`uiommu_platform::fault_inject`]): the allocation of
/// `what`, which fails with ENOMEM when the caller's `fail-nth` count says so.
pub(crate) fn alloc_site(what: &'static str) -> Result<()> {
    if uiommu_platform::fault_inject::should_fail(uiommu_platform::fault_inject::Site::Slab) {
        return Err(Error::NoMemory(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_maps_to_the_kernels_errno() {
        let r = Range::new(0, 0xfff).unwrap();
        let table: &[(Error, i32)] = &[
            (Error::Invalid("x"), 22),
            (Error::NoObject(3), 2),
            (
                Error::WrongType {
                    id: 1,
                    expected: "an IOAS",
                },
                2,
            ),
            (Error::NotMapped(r), 2),
            (Error::NotFound("x"), 2),
            (Error::Busy("x"), 16),
            (Error::Exists("x"), 17),
            (Error::NoMemory("x"), 12),
            (Error::Permission("x"), 1),
            (Error::Fault(0), 14),
            (Error::Overflow, 75),
            (Error::AddressInUse("x"), 98),
            (Error::NoSpace("x"), 28),
            (Error::NotSupported("x"), 95),
            (Error::Deadlock("x"), 35),
            (Error::OutOfRange("x"), 34),
            (Error::NoDevice("x"), 19),
        ];
        for (e, n) in table {
            assert_eq!(e.errno(), *n, "{e:?}");
        }
    }
}
