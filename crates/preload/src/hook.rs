//! Re-entrancy and panic safety of the exported functions.
//!
//! While a thread runs this library's own code (serving an ioctl, opening the platform file,
//! scanning `/proc/self/fd`), the C library calls that code makes come back to this library's
//! interposed functions. [`Hook::enter`] marks the thread; [`in_hook`] is then true and every
//! interposed function goes straight to the real one. The mark is per thread: other threads of
//! the program are served normally meanwhile.
//!
//! [`ffi`] runs an exported function's body under `catch_unwind`: a panic never unwinds into C;
//! the call fails with EIO instead (the default panic hook has printed the message).

use crate::real::set_errno;
use std::cell::Cell;

thread_local! {
    /// Whether this thread is inside this library's code.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is inside this library's code (its libc calls must go to the
/// real functions). A thread whose thread-locals are gone (exiting) counts as inside.
pub(crate) fn in_hook() -> bool {
    IN_HOOK.try_with(Cell::get).unwrap_or(true)
}

/// The calling thread is inside this library's code until the value is dropped (also when a
/// panic unwinds through it).
pub(crate) struct Hook {
    /// Whether this guard set the mark (and so clears it).
    owner: bool,
}

impl Hook {
    /// Mark the calling thread.
    pub(crate) fn enter() -> Hook {
        let owner = IN_HOOK.try_with(|h| !h.replace(true)).unwrap_or(false);
        Hook { owner }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        if self.owner {
            let _ = IN_HOOK.try_with(|h| h.set(false));
        }
    }
}

/// Run an exported function's body; a panic returns `fail` with errno EIO.
pub(crate) fn ffi<R>(fail: R, body: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(_) => {
            set_errno(libc::EIO);
            fail
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_marks_the_thread_until_dropped_and_nests() {
        assert!(!in_hook());
        {
            let _outer = Hook::enter();
            assert!(in_hook());
            {
                let _inner = Hook::enter();
                assert!(in_hook());
            }
            assert!(in_hook(), "an inner guard does not clear the outer mark");
        }
        assert!(!in_hook());
    }

    #[test]
    fn hook_is_per_thread() {
        let _g = Hook::enter();
        let other = std::thread::spawn(in_hook).join().unwrap();
        assert!(!other);
    }

    #[test]
    fn ffi_turns_a_panic_into_eio() {
        let r = ffi(-1, || -> i32 { panic!("boom") });
        assert_eq!(r, -1);
        assert_eq!(crate::real::errno(), libc::EIO);
        assert!(!in_hook());
    }

    #[test]
    fn ffi_clears_the_mark_when_the_body_panics() {
        let r = ffi(-1, || -> i32 {
            let _g = Hook::enter();
            panic!("boom")
        });
        assert_eq!(r, -1);
        assert!(!in_hook());
    }
}
