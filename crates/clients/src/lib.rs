//! Shared code of the client programs in `src/bin/`: a check counter that prints one line per
//! check, the errno a crate error carries, and the dma-engine driver both VFIO clients run
//! ([`dma_engine::exercise`]).
//!
//! The clients are ordinary users of the public rust-vmm crates, used unmodified:
//! `iommufd-client` (`iommufd-ioctls`), `vfio-cdev-client` (`vfio-ioctls` with `vfio_cdev`:
//! device cdev + iommufd) and `vfio-container-client` (`vfio-ioctls`: legacy container and
//! group). Nothing here knows about uiommu; `tests/under_uiommu.rs` runs them under
//! `uiommu run`.

pub mod dma_engine;

use std::error::Error;
use std::fmt::Display;

/// Counts checks; the first failed one ends the program with exit status 1.
pub struct Checks {
    name: &'static str,
    passed: usize,
}

impl Checks {
    /// A counter for the program `name`.
    pub fn new(name: &'static str) -> Self {
        Checks { name, passed: 0 }
    }

    /// Record a check: prints `ok <what>`, or `FAIL <what>: <detail>` and exits 1.
    pub fn check(&mut self, ok: bool, what: impl Display, detail: impl Display) {
        if ok {
            self.passed += 1;
            println!("ok {what}");
        } else {
            println!("FAIL {what}: {detail}");
            println!("FAILED {}: after {} checks", self.name, self.passed);
            std::process::exit(1);
        }
    }

    /// Unwrap a crate call's result, failing the program (with the error and its errno) if it
    /// is an error.
    pub fn ok<T, E: Error + 'static>(&mut self, r: Result<T, E>, what: impl Display) -> T {
        match r {
            Ok(v) => {
                self.passed += 1;
                println!("ok {what}");
                v
            }
            Err(e) => {
                self.check(false, what, describe(&e));
                unreachable!()
            }
        }
    }

    /// Expect a crate call to fail with `errno`.
    pub fn err<T, E: Error + 'static>(&mut self, r: Result<T, E>, errno: i32, what: impl Display) {
        match r {
            Ok(_) => self.check(false, what, format!("succeeded, expected errno {errno}")),
            Err(e) => {
                let got = errno_of(&e);
                self.check(got == Some(errno), what, describe(&e));
            }
        }
    }

    /// Print the closing line; the program then exits 0.
    pub fn pass(self) {
        println!("PASS {}: {} checks", self.name, self.passed);
    }
}

/// The errno in an error's source chain: a `vmm_sys_util` errno or an `io::Error` carrying an
/// OS error.
pub fn errno_of(e: &(dyn Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(s) = err.downcast_ref::<vmm_sys_util::errno::Error>() {
            return Some(s.errno());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(n) = io.raw_os_error() {
                return Some(n);
            }
        }
        cur = err.source();
    }
    None
}

/// An error, its source chain and its errno, on one line.
pub fn describe(e: &(dyn Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(&format!(" <- {err}"));
        cur = err.source();
    }
    if let Some(n) = errno_of(e) {
        s.push_str(&format!(
            " [errno {n}: {}]",
            std::io::Error::from_raw_os_error(n)
        ));
    }
    s
}

/// Print the crates' `log` records (warnings and errors: `vfio-ioctls` only logs some failed
/// accesses, such as a region read or write) to stderr, so that a run shows them.
pub fn init_logging() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}
