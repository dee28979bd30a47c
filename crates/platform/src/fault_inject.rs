//! Fault injection as the kernel's `fail-nth` drives it.
//!
//! On Linux a task's `/proc/<pid>/task/<tid>/fail-nth` holds a count: every fault-injection
//! site the task passes (a slab allocation under `failslab`, a page allocation under
//! `fail_page_alloc`, a copy from or to user memory under `fail_usercopy`) takes one from it,
//! and the site that takes it to zero fails. Reading the file then says 0: the fault fired.
//!
//! The engine's fallible sites call [`should_fail`] with the [`Site`] they stand for. The
//! count belongs to the calling task, which the front-end knows; it hands the count in for the
//! length of one call with [`with_count`] and takes back what is left. Between calls (and on
//! every thread that has no count) a site costs one thread-local read.
//!
//! Which sites count is decided by the debugfs knobs of the caller's kernel ([`Knobs`]): as in
//! Linux, `failslab` and `fail_page_alloc` ignore allocations that may sleep unless
//! `ignore-gfp-wait` is `N` (every allocation of the engine may sleep), and `fail_page_alloc`
//! ignores allocations below `min-order`.

use crate::held::Held;
use crate::memory::{MemFault, UserMemory};
use crate::UserVa;
use std::cell::Cell;

/// What a fault-injection site stands for: which of the kernel's facilities fails it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// An object's allocation (`failslab`): a context, an object, an area, a batch of pins.
    Slab,
    /// An allocation of `2^order` pages (`fail_page_alloc`): a page-table level is order 0.
    Pages {
        /// The allocation's order.
        order: u32,
    },
    /// A copy from or to the caller's memory (`fail_usercopy`).
    Usercopy,
}

impl Site {
    /// The errno the kernel's site returns when it fails.
    pub fn errno(self) -> i32 {
        const ENOMEM: i32 = 12;
        const EFAULT: i32 = 14;
        match self {
            Site::Slab | Site::Pages { .. } => ENOMEM,
            Site::Usercopy => EFAULT,
        }
    }
}

/// The debugfs knobs that decide which sites count down a task's `fail-nth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knobs {
    /// `failslab/ignore-gfp-wait` is `N`: sleeping slab allocations count.
    pub slab: bool,
    /// `fail_page_alloc/ignore-gfp-wait` is `N`: sleeping page allocations count ...
    pub pages: bool,
    /// ... when their order is at least `fail_page_alloc/min-order`.
    pub pages_min_order: u32,
}

impl Knobs {
    /// Linux's defaults: only copies from and to user memory count for a sleeping caller.
    pub const KERNEL_DEFAULT: Knobs = Knobs {
        slab: false,
        pages: false,
        pages_min_order: 1,
    };
    /// Every site counts (the project's own sweeps).
    pub const ALL: Knobs = Knobs {
        slab: true,
        pages: true,
        pages_min_order: 0,
    };

    fn counts(self, site: Site) -> bool {
        match site {
            Site::Slab => self.slab,
            Site::Pages { order } => self.pages && order >= self.pages_min_order,
            Site::Usercopy => true,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Count {
    left: u32,
    knobs: Knobs,
    fired: Option<Site>,
}

thread_local! {
    static COUNT: Cell<Option<Count>> = const { Cell::new(None) };
}

/// What one call did to the count it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The count left (0 once a site failed, or if it was 0).
    pub left: u32,
    /// The site that failed, if one did.
    pub fired: Option<Site>,
}

/// Run `f` with the calling task's count `n` (0: nothing fails) and `knobs`; returns what `f`
/// returned and what it left of the count. Nested calls share the outer call's count.
pub fn with_count<R>(n: u32, knobs: Knobs, f: impl FnOnce() -> R) -> (R, Outcome) {
    if n == 0 || COUNT.with(Cell::get).is_some() {
        return (
            f(),
            Outcome {
                left: n,
                fired: None,
            },
        );
    }
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            COUNT.with(|c| c.set(None));
        }
    }
    COUNT.with(|c| {
        c.set(Some(Count {
            left: n,
            knobs,
            fired: None,
        }))
    });
    let restore = Restore;
    let r = f();
    let count = COUNT.with(Cell::get).expect("set above");
    drop(restore);
    (
        r,
        Outcome {
            left: count.left,
            fired: count.fired,
        },
    )
}

/// Whether the site `site` fails now: it counts down the running call's count when the knobs
/// let it count, and fails when that takes the count to zero.
pub fn should_fail(site: Site) -> bool {
    COUNT.with(|c| {
        let Some(mut count) = c.get() else {
            return false;
        };
        if count.left == 0 || !count.knobs.counts(site) {
            return false;
        }
        count.left -= 1;
        let fire = count.left == 0;
        if fire {
            count.fired = Some(site);
        }
        c.set(Some(count));
        fire
    })
}

/// `Err(site's errno)` when the site fails now ([`should_fail`]).
pub fn check(site: Site) -> Result<(), i32> {
    if should_fail(site) {
        Err(site.errno())
    } else {
        Ok(())
    }
}

/// How many sites `f` passes that `knobs` count (with nothing failing).
pub fn sites_of<R>(knobs: Knobs, f: impl FnOnce() -> R) -> (R, u32) {
    let (r, out) = with_count(u32::MAX, knobs, f);
    (r, u32::MAX - out.left)
}

/// How many bytes of a write to a `fail-nth` file the kernel reads (`kstrtouint_from_user`'s
/// buffer less its NUL).
pub const COUNT_TEXT_MAX: usize = 34;

/// The count a write of `text` to a `fail-nth` file sets, as the kernel's `kstrtouint` with
/// base 0 reads it (at most [`COUNT_TEXT_MAX`] bytes of the write: the caller cuts): an
/// optional `+`, digits (`0x` hex, a leading `0` octal, else decimal), an optional newline and
/// nothing else. EINVAL for anything else, ERANGE past `u32::MAX`.
pub fn parse_count(text: &[u8]) -> Result<u32, i32> {
    const EINVAL: i32 = 22;
    const ERANGE: i32 = 34;
    let mut s = text.strip_prefix(b"+").unwrap_or(text);
    let radix = match s {
        [b'0', x, d, ..] if x.eq_ignore_ascii_case(&b'x') && d.is_ascii_hexdigit() => {
            s = &s[2..];
            16
        }
        [b'0', ..] => 8,
        _ => 10,
    };
    let digits = s
        .iter()
        .take_while(|b| char::from(**b).is_digit(radix))
        .count();
    if digits == 0 {
        return Err(EINVAL);
    }
    let rest = &s[digits..];
    if !(rest.is_empty() || rest == b"\n") {
        return Err(EINVAL);
    }
    let mut v: u64 = 0;
    for &b in &s[..digits] {
        let d = u64::from(char::from(b).to_digit(radix).unwrap_or(0));
        v = v
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(d))
            .ok_or(ERANGE)?;
    }
    u32::try_from(v).map_err(|_| ERANGE)
}

/// The caller's memory with its copies as fault sites ([`Site::Usercopy`]): what a front-end
/// hands the engine for a call made while the caller's count runs. A failed copy is an
/// unmapped address (EFAULT); probing and holding pages for pins are not copies.
pub struct Faulting<'a>(pub &'a dyn UserMemory);

impl Faulting<'_> {
    fn copy(&self, va: UserVa) -> Result<(), MemFault> {
        if should_fail(Site::Usercopy) {
            Err(MemFault::Unmapped(va))
        } else {
            Ok(())
        }
    }
}

impl UserMemory for Faulting<'_> {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        self.copy(va)?;
        self.0.read(va, buf)
    }
    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        self.copy(va)?;
        self.0.write(va, data)
    }
    fn read_uncounted(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        self.0.read(va, buf)
    }
    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        self.0.probe(va, len, write)
    }
    fn page_size_at(&self, va: UserVa) -> u64 {
        self.0.page_size_at(va)
    }
    fn copy_within(&self, dst: UserVa, src: UserVa, len: u64) -> Option<Result<(), MemFault>> {
        if let Err(e) = self.copy(src) {
            return Some(Err(e));
        }
        self.0.copy_within(dst, src, len)
    }
    fn hold(&self, va: UserVa, len: u64, write: bool) -> Vec<Held> {
        self.0.hold(va, len, write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nth_counted_site_fails_and_the_count_is_then_zero() {
        let (fails, out) = with_count(3, Knobs::ALL, || {
            (0..5).map(|_| should_fail(Site::Slab)).collect::<Vec<_>>()
        });
        assert_eq!(fails, [false, false, true, false, false]);
        assert_eq!(
            out,
            Outcome {
                left: 0,
                fired: Some(Site::Slab)
            }
        );
        assert!(!should_fail(Site::Slab), "no count outside a call");
    }

    #[test]
    fn counts_are_read_as_kstrtouint_reads_them() {
        let ok: &[(&[u8], u32)] = &[
            (b"0", 0),
            (b"12\n", 12),
            (b"+7", 7),
            (b"0x1f", 31),
            (b"0X1F\n", 31),
            (b"017", 15),
            (b"4294967295", u32::MAX),
        ];
        for (t, n) in ok {
            assert_eq!(parse_count(t), Ok(*n), "{:?}", String::from_utf8_lossy(t));
        }
        let bad: &[(&[u8], i32)] = &[
            (b"", 22),
            (b"\n", 22),
            (b" 1", 22),
            (b"1 ", 22),
            (b"1\n\n", 22),
            (b"-1", 22),
            (b"08", 22),
            (b"0x", 22),
            (b"4294967296", 34),
            (b"99999999999999999999999", 34),
        ];
        for (t, e) in bad {
            assert_eq!(parse_count(t), Err(*e), "{:?}", String::from_utf8_lossy(t));
        }
    }

    #[test]
    fn knobs_decide_which_sites_count() {
        let (_, out) = with_count(2, Knobs::KERNEL_DEFAULT, || {
            assert!(!should_fail(Site::Slab));
            assert!(!should_fail(Site::Pages { order: 0 }));
            assert!(!should_fail(Site::Usercopy));
        });
        assert_eq!(out.left, 1, "only the copy counted");
        let pages = Knobs {
            pages: true,
            ..Knobs::KERNEL_DEFAULT
        };
        let (_, out) = with_count(5, pages, || {
            should_fail(Site::Pages { order: 0 });
            should_fail(Site::Pages { order: 1 });
        });
        assert_eq!(out.left, 4, "order 0 is below min-order 1");
    }

    #[test]
    fn nested_calls_share_the_outer_count_and_a_panic_clears_it() {
        let (_, out) = with_count(10, Knobs::ALL, || {
            should_fail(Site::Slab);
            let (_, inner) = with_count(7, Knobs::ALL, || should_fail(Site::Slab));
            assert_eq!(inner.left, 7);
        });
        assert_eq!(out.left, 8);
        let r = std::panic::catch_unwind(|| with_count(4, Knobs::ALL, || panic!("boom")));
        assert!(r.is_err());
        assert!(!should_fail(Site::Slab));
        assert_eq!(sites_of(Knobs::ALL, || should_fail(Site::Usercopy)).1, 1);
    }
}
