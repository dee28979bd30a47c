//! The memory of a real process (by default the calling one), as DMA and pinning see it.
//!
//! [`ProcessMemory`] reads and writes with `process_vm_readv`/`process_vm_writev`, which the
//! kernel checks against the target's page tables: an unmapped address, or a write to a
//! read-only mapping, is an EFAULT from the system call — reported as a [`MemFault`], never a
//! crash of the host program. Probing (what pinning does first) reads `/proc/<pid>/maps` to
//! see that every page of the range is mapped, readable, and writable if asked.
//!
//! This is how an embedding VMM hands its own guest-RAM mappings to the engine, and how the
//! ABI front-end serves an unmodified program in its own process.

use crate::addr::{UserVa, PAGE_SIZE};
use crate::memory::{MemFault, UserMemory};
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;
use std::io::{IoSlice, IoSliceMut};

/// A process's memory, accessed through the kernel.
#[derive(Debug, Clone, Copy)]
pub struct ProcessMemory {
    pid: Pid,
}

impl ProcessMemory {
    /// The calling process.
    pub fn this() -> ProcessMemory {
        ProcessMemory { pid: Pid::this() }
    }

    /// Another process (needs ptrace-level permission over it).
    pub fn of(pid: i32) -> ProcessMemory {
        ProcessMemory {
            pid: Pid::from_raw(pid),
        }
    }

    fn remote(va: UserVa, len: usize) -> Result<RemoteIoVec, MemFault> {
        let base = usize::try_from(va.raw()).map_err(|_| MemFault::Unmapped(va))?;
        base.checked_add(len).ok_or(MemFault::Unmapped(va))?;
        Ok(RemoteIoVec { base, len })
    }

    /// The mappings of `[va, va + len)` from /proc/<pid>/maps: `(start, end, readable,
    /// writable)` in address order, or the first address not covered.
    fn covered(&self, va: u64, len: u64, write: bool) -> Result<(), MemFault> {
        let end = va.checked_add(len).ok_or(MemFault::Unmapped(UserVa(va)))?;
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .map_err(|_| MemFault::Unmapped(UserVa(va)))?;
        let mut at = va;
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            let Some((s, e)) = range.split_once('-') else {
                continue;
            };
            let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
                continue;
            };
            if e <= at {
                continue;
            }
            if s > at {
                break;
            }
            let p = perms.as_bytes();
            if p.first() != Some(&b'r') {
                return Err(MemFault::Unmapped(UserVa(at)));
            }
            if write && p.get(1) != Some(&b'w') {
                return Err(MemFault::ReadOnly(UserVa(at)));
            }
            at = e;
            if at >= end {
                return Ok(());
            }
        }
        Err(MemFault::Unmapped(UserVa(at)))
    }
}

impl UserMemory for ProcessMemory {
    fn read(&self, va: UserVa, buf: &mut [u8]) -> Result<(), MemFault> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len();
        let remote = [Self::remote(va, len)?];
        match process_vm_readv(self.pid, &mut [IoSliceMut::new(buf)], &remote) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(MemFault::Unmapped(UserVa(va.raw() + n as u64))),
            Err(_) => Err(MemFault::Unmapped(va)),
        }
    }

    fn write(&self, va: UserVa, data: &[u8]) -> Result<(), MemFault> {
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len();
        let remote = [Self::remote(va, len)?];
        let short = |at: u64| {
            // Tell a read-only page from a hole.
            match self.covered(at, 1, false) {
                Ok(()) => MemFault::ReadOnly(UserVa(at)),
                Err(e) => e,
            }
        };
        match process_vm_writev(self.pid, &[IoSlice::new(data)], &remote) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(short(va.raw() + n as u64)),
            Err(_) => Err(short(va.raw())),
        }
    }

    fn probe(&self, va: UserVa, len: u64, write: bool) -> Result<(), MemFault> {
        if len == 0 {
            return Ok(());
        }
        self.covered(va.align_down(PAGE_SIZE).raw(), len, write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static READ_ONLY: [u8; 16] = *b"read-only bytes!";

    #[test]
    fn reads_and_writes_own_memory() {
        let mut buf = vec![0u8; 3 * PAGE_SIZE as usize];
        let va = UserVa(buf.as_mut_ptr() as u64);
        let m = ProcessMemory::this();
        m.write(UserVa(va.raw() + 4090), b"across a page").unwrap();
        let mut back = [0u8; 13];
        m.read(UserVa(va.raw() + 4090), &mut back).unwrap();
        assert_eq!(&back, b"across a page");
        assert_eq!(&buf[4090..4103], b"across a page");
        m.probe(va.align_down(PAGE_SIZE), PAGE_SIZE, true).unwrap();
    }

    #[test]
    fn unmapped_addresses_are_faults_not_crashes() {
        let m = ProcessMemory::this();
        let mut b = [0u8; 8];
        assert!(matches!(
            m.read(UserVa(8), &mut b),
            Err(MemFault::Unmapped(_))
        ));
        assert!(m.write(UserVa(8), b"x").is_err());
        assert!(matches!(
            m.read(UserVa(u64::MAX - 2), &mut b),
            Err(MemFault::Unmapped(_))
        ));
        assert!(m.probe(UserVa(0), PAGE_SIZE, false).is_err());
        assert!(m.probe(UserVa(!0xfff), PAGE_SIZE * 2, false).is_err());
    }

    #[test]
    fn read_only_memory_refuses_writes_and_write_probes() {
        let m = ProcessMemory::this();
        let va = UserVa(READ_ONLY.as_ptr() as u64);
        let mut b = [0u8; 16];
        m.read(va, &mut b).unwrap();
        assert_eq!(&b, b"read-only bytes!");
        assert!(matches!(m.write(va, b"x"), Err(MemFault::ReadOnly(_))));
        assert!(matches!(
            m.probe(va.align_down(PAGE_SIZE), PAGE_SIZE, true),
            Err(MemFault::ReadOnly(_))
        ));
        m.probe(va.align_down(PAGE_SIZE), PAGE_SIZE, false).unwrap();
        assert_eq!(&READ_ONLY, b"read-only bytes!");
    }
}
