//! The size-extensible command protocol of iommufd, and safe copies to and from the caller's
//! memory.
//!
//! Every iommufd command struct starts with a `u32 size`: the size of the struct the caller was
//! compiled against. The kernel (`iommufd_fops_ioctl` and `copy_struct_from_user`) handles it
//! so, and so does [`Ucmd::fetch`]:
//!
//! 1. read the `u32` at the argument pointer — unreadable is EFAULT, before anything else;
//! 2. `size` below the command's minimum (the end of the first version's last field) is EINVAL;
//! 3. when `size` is larger than the struct known here, the extra bytes must be readable
//!    (EFAULT) and all zero (E2BIG) — the caller asked for something this version does not
//!    know;
//! 4. `min(size, known)` bytes are copied (EFAULT); a shorter struct is zero-extended.
//!
//! A reply ([`Ucmd::respond`]) writes `min(size, known)` bytes of the struct back (EFAULT when
//! the memory is not writable).
//!
//! User pointers are plain numbers here: every access goes through
//! [`UserMemory`](uiommu_platform::memory::UserMemory), so a bad pointer is an EFAULT and never
//! a crash. Large reads and writes are done in bounded chunks ([`CHUNK`]), so a hostile length
//! cannot make the server allocate more than that at once.

use crate::abi::UapiCmd;
use crate::Errno;
use uiommu_core::error::errno::{E2BIG, EFAULT, EINVAL};
use uiommu_platform::memory::UserMemory;
use uiommu_platform::UserVa;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Largest piece of user memory read or written at once (a resource cap: a caller-chosen length
/// never becomes a caller-chosen allocation).
pub const CHUNK: usize = 64 * 1024;

/// Read `buf.len()` bytes at `addr` of the caller's memory (EFAULT when any byte is unreadable
/// or the range wraps). A zero-length read always succeeds.
pub fn read_user(mem: &dyn UserMemory, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    if buf.is_empty() {
        return Ok(());
    }
    let len = u64::try_from(buf.len()).map_err(|_| EFAULT)?;
    addr.checked_add(len - 1).ok_or(EFAULT)?;
    mem.read(UserVa(addr), buf).map_err(|_| EFAULT)
}

/// [`read_user`] as the kernel's `get_user` (and the reads of `check_zeroed_user`): not a
/// fault-injection site.
pub fn get_user(mem: &dyn UserMemory, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    if buf.is_empty() {
        return Ok(());
    }
    let len = u64::try_from(buf.len()).map_err(|_| EFAULT)?;
    addr.checked_add(len - 1).ok_or(EFAULT)?;
    mem.read_uncounted(UserVa(addr), buf).map_err(|_| EFAULT)
}

/// Write `data` at `addr` of the caller's memory (EFAULT when any byte is unwritable or the
/// range wraps). A zero-length write always succeeds.
pub fn write_user(mem: &dyn UserMemory, addr: u64, data: &[u8]) -> Result<(), Errno> {
    if data.is_empty() {
        return Ok(());
    }
    let len = u64::try_from(data.len()).map_err(|_| EFAULT)?;
    addr.checked_add(len - 1).ok_or(EFAULT)?;
    mem.write(UserVa(addr), data).map_err(|_| EFAULT)
}

/// Read a plain value of type `T` at `addr`.
pub fn read_value<T: FromBytes + IntoBytes>(mem: &dyn UserMemory, addr: u64) -> Result<T, Errno> {
    let mut v = T::new_zeroed();
    read_user(mem, addr, v.as_mut_bytes())?;
    Ok(v)
}

/// Write a plain value at `addr`.
pub fn write_value<T: IntoBytes + Immutable>(
    mem: &dyn UserMemory,
    addr: u64,
    v: &T,
) -> Result<(), Errno> {
    write_user(mem, addr, v.as_bytes())
}

/// The kernel's `check_zeroed_user`: whether `len` bytes at `addr` are all zero (EFAULT when
/// unreadable). Read in chunks of at most [`CHUNK`].
pub fn is_zeroed_user(mem: &dyn UserMemory, addr: u64, len: u64) -> Result<bool, Errno> {
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).map_or(buf.len(), |r| r.min(buf.len()));
        let at = addr.checked_add(done).ok_or(EFAULT)?;
        get_user(mem, at, &mut buf[..n])?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        done += n as u64;
    }
    Ok(true)
}

/// The kernel's `clear_user`: write `len` zero bytes at `addr` (EFAULT when unwritable), in
/// chunks of at most [`CHUNK`].
pub fn clear_user(mem: &dyn UserMemory, addr: u64, len: u64) -> Result<(), Errno> {
    let buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).map_or(buf.len(), |r| r.min(buf.len()));
        let at = addr.checked_add(done).ok_or(EFAULT)?;
        write_user(mem, at, &buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// The kernel's `copy_struct_from_user`: fill `dst` (the struct as known here, `ksize` bytes)
/// from `user_len` bytes at `addr`. When the caller's struct is longer its tail must be zero
/// (E2BIG; EFAULT when unreadable), checked before the copy; when shorter, the rest of `dst` is
/// zeroed.
pub fn copy_struct_from_user(
    mem: &dyn UserMemory,
    dst: &mut [u8],
    addr: u64,
    user_len: u64,
) -> Result<(), Errno> {
    let ksize = dst.len() as u64;
    let size = ksize.min(user_len);
    if user_len > ksize {
        let tail = addr.checked_add(ksize).ok_or(EFAULT)?;
        if !is_zeroed_user(mem, tail, user_len - ksize)? {
            return Err(E2BIG);
        }
    }
    // `size <= dst.len()`, so this cannot truncate.
    let n = usize::try_from(size).map_err(|_| EINVAL)?;
    dst[n..].fill(0);
    read_user(mem, addr, &mut dst[..n])
}

/// One command being served: the caller's memory, the argument pointer, the size the caller
/// gave and the struct as copied in.
pub struct Ucmd<'a> {
    mem: &'a dyn UserMemory,
    arg: u64,
    user_size: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Ucmd<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ucmd")
            .field("arg", &format_args!("{:#x}", self.arg))
            .field("user_size", &self.user_size)
            .finish()
    }
}

/// Read the leading `u32 size` of a command at `arg` (EFAULT when unreadable).
pub fn read_size(mem: &dyn UserMemory, arg: u64) -> Result<u32, Errno> {
    let mut v = [0u8; 4];
    get_user(mem, arg, &mut v)?;
    Ok(u32::from_ne_bytes(v))
}

impl<'a> Ucmd<'a> {
    /// Steps 2–4 of the protocol for a command whose struct has `size` bytes here and whose
    /// minimum is `min_size`, given the `user_size` already read at `arg`.
    pub fn fetch(
        mem: &'a dyn UserMemory,
        arg: u64,
        user_size: u32,
        size: usize,
        min_size: usize,
    ) -> Result<Ucmd<'a>, Errno> {
        if (user_size as usize) < min_size {
            return Err(EINVAL);
        }
        let mut buf = vec![0u8; size];
        copy_struct_from_user(mem, &mut buf, arg, u64::from(user_size))?;
        Ok(Ucmd {
            mem,
            arg,
            user_size,
            buf,
        })
    }

    /// The whole protocol (steps 1–4) for a command whose struct has `size` bytes here, with
    /// one read of the caller's memory in the common case: `size` bytes at `arg` are read at
    /// once, and the leading `u32` is the caller's size. Reading bytes the caller did not
    /// declare has no effect on anything, and when that read fails (the struct ends at the end
    /// of a mapping) the protocol runs step by step, so the answer — including which errno
    /// comes first — is always the step-by-step one.
    pub fn fetch_whole(
        mem: &'a dyn UserMemory,
        arg: u64,
        size: usize,
        min_size: usize,
    ) -> Result<Ucmd<'a>, Errno> {
        let mut buf = vec![0u8; size];
        // Read ahead as `get_user` does (no fault site); the kernel's one copy of the struct is
        // the site below.
        if size >= 4 && get_user(mem, arg, &mut buf).is_ok() {
            let user_size = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if (user_size as usize) < min_size {
                return Err(EINVAL);
            }
            let user_len = u64::from(user_size);
            if user_len > size as u64 {
                let tail = arg.checked_add(size as u64).ok_or(EFAULT)?;
                if !is_zeroed_user(mem, tail, user_len - size as u64)? {
                    return Err(E2BIG);
                }
            } else {
                buf[user_size as usize..].fill(0);
            }
            uiommu_platform::fault_inject::check(uiommu_platform::fault_inject::Site::Usercopy)
                .map_err(|_| EFAULT)?;
            return Ok(Ucmd {
                mem,
                arg,
                user_size,
                buf,
            });
        }
        let user_size = read_size(mem, arg)?;
        Self::fetch(mem, arg, user_size, size, min_size)
    }

    /// The whole protocol for command struct `T`: read `size`, check, copy.
    pub fn fetch_cmd<T: UapiCmd>(mem: &'a dyn UserMemory, arg: u64) -> Result<Ucmd<'a>, Errno> {
        let user_size = read_size(mem, arg)?;
        Self::fetch(mem, arg, user_size, size_of::<T>(), T::MIN_SIZE)
    }

    /// The command struct, decoded (EINVAL if `T` is not the struct this command was fetched
    /// for — a programming error reported as an errno, never a panic).
    pub fn cmd<T: FromBytes>(&self) -> Result<T, Errno> {
        T::read_from_bytes(&self.buf).map_err(|_| EINVAL)
    }

    /// The caller's memory.
    pub fn mem(&self) -> &'a dyn UserMemory {
        self.mem
    }

    /// The argument pointer.
    pub fn arg(&self) -> u64 {
        self.arg
    }

    /// The `size` the caller gave.
    pub fn user_size(&self) -> u32 {
        self.user_size
    }

    /// The kernel's `iommufd_ucmd_respond`: write `min(size, sizeof T)` bytes of `cmd` back to
    /// the caller (EFAULT when unwritable).
    pub fn respond<T: IntoBytes + Immutable>(&self, cmd: &T) -> Result<(), Errno> {
        let bytes = cmd.as_bytes();
        let n = bytes.len().min(self.user_size as usize);
        write_user(self.mem, self.arg, &bytes[..n])
    }

    /// Write one field of the reply: `bytes` at `offset` into the caller's struct.
    pub fn respond_at(&self, offset: usize, bytes: &[u8]) -> Result<(), Errno> {
        let at = self.arg.checked_add(offset as u64).ok_or(EFAULT)?;
        write_user(self.mem, at, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{IommuDestroy, IommuIoasMap};
    use uiommu_platform::memory::SimMemory;

    const ARG: u64 = 0x10_0000;

    fn mem_with(bytes: &[u8]) -> std::sync::Arc<SimMemory> {
        let m = SimMemory::new();
        m.map(UserVa(ARG), 0x1000, true);
        m.write(UserVa(ARG), bytes).unwrap();
        m
    }

    #[test]
    fn unreadable_size_is_efault() {
        let m = SimMemory::new();
        assert_eq!(
            Ucmd::fetch_cmd::<IommuDestroy>(&*m, 0x5000).unwrap_err(),
            EFAULT
        );
        assert_eq!(Ucmd::fetch_cmd::<IommuDestroy>(&*m, 0).unwrap_err(), EFAULT);
        assert_eq!(
            Ucmd::fetch_cmd::<IommuDestroy>(&*m, u64::MAX - 1).unwrap_err(),
            EFAULT
        );
    }

    #[test]
    fn short_size_is_einval() {
        let m = mem_with(&[7, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(
            Ucmd::fetch_cmd::<IommuDestroy>(&*m, ARG).unwrap_err(),
            EINVAL
        );
    }

    #[test]
    fn longer_struct_needs_a_zero_tail() {
        let mut b = vec![0u8; 16];
        b[0] = 16;
        b[4] = 5;
        b[12] = 1;
        let m = mem_with(&b);
        assert_eq!(
            Ucmd::fetch_cmd::<IommuDestroy>(&*m, ARG).unwrap_err(),
            E2BIG
        );
        m.write(UserVa(ARG + 12), &[0]).unwrap();
        let u = Ucmd::fetch_cmd::<IommuDestroy>(&*m, ARG).unwrap();
        assert_eq!(
            u.cmd::<IommuDestroy>().unwrap(),
            IommuDestroy { size: 16, id: 5 }
        );
    }

    #[test]
    fn one_read_fetch_answers_as_the_step_by_step_protocol() {
        // Structs placed so that they end inside, at, or beyond the end of the mapping, with
        // every size class and a zero or non-zero tail: the one-read path must give the same
        // errno or the same bytes as the step-by-step one.
        let size = size_of::<IommuIoasMap>();
        let min = IommuIoasMap::MIN_SIZE;
        let m = SimMemory::new();
        m.map(UserVa(ARG), 0x1000, true);
        let end = ARG + 0x1000;
        for back in (0..=80u64).step_by(4) {
            for user_size in [
                0u32,
                3,
                4,
                8,
                16,
                min as u32 - 1,
                min as u32,
                40,
                44,
                48,
                64,
                80,
            ] {
                for tail in [0u8, 1] {
                    let at = end - back;
                    let mut img = vec![0u8; 0x1000];
                    let off = (at - ARG) as usize;
                    let n = (back as usize).min(96);
                    for (i, b) in img[off..off + n].iter_mut().enumerate() {
                        *b = (i as u8).wrapping_mul(7) | 1;
                    }
                    if back >= 4 {
                        img[off..off + 4].copy_from_slice(&user_size.to_ne_bytes());
                    }
                    // Bytes between the known size and the caller's size: zero or not.
                    for i in size..(user_size as usize).min(n) {
                        img[off + i] = tail;
                    }
                    m.write(UserVa(ARG), &img).unwrap();
                    let whole = Ucmd::fetch_whole(&*m, at, size, min).map(|u| u.buf);
                    let steps = Ucmd::fetch_cmd::<IommuIoasMap>(&*m, at).map(|u| u.buf);
                    assert_eq!(whole, steps, "at end-{back}, size {user_size}, tail {tail}");
                }
            }
        }
    }

    #[test]
    fn unreadable_tail_is_efault() {
        let m = SimMemory::new();
        m.map(UserVa(ARG), 0x1000, true);
        let at = ARG + 0x1000 - 8;
        m.write(UserVa(at), &[64, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(
            Ucmd::fetch_cmd::<IommuDestroy>(&*m, at).unwrap_err(),
            EFAULT
        );
    }

    #[test]
    fn huge_size_with_zero_tail_is_read_in_chunks() {
        let m = SimMemory::new();
        m.map(UserVa(ARG), 1 << 20, true);
        m.write(UserVa(ARG), &[0, 0, 0x10, 0, 3, 0, 0, 0]).unwrap();
        let u = Ucmd::fetch_cmd::<IommuDestroy>(&*m, ARG).unwrap();
        assert_eq!(u.cmd::<IommuDestroy>().unwrap().id, 3);
        // A size of 4 GiB runs into unmapped memory: EFAULT, not an allocation.
        m.write(UserVa(ARG), &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(
            Ucmd::fetch_cmd::<IommuDestroy>(&*m, ARG).unwrap_err(),
            EFAULT
        );
    }

    #[test]
    fn reply_is_truncated_to_the_callers_size() {
        // A caller that knows only the first 40 bytes of a (hypothetically) longer struct.
        let m = mem_with(&[40]);
        m.write(UserVa(ARG + 40), &[0xaa; 8]).unwrap();
        let u = Ucmd::fetch_cmd::<IommuIoasMap>(&*m, ARG).unwrap();
        let mut c: IommuIoasMap = u.cmd().unwrap();
        c.iova = 0x1234;
        u.respond(&c).unwrap();
        let back: IommuIoasMap = read_value(&*m, ARG).unwrap();
        assert_eq!(back.iova, 0x1234);
        let mut after = [0u8; 8];
        m.read(UserVa(ARG + 40), &mut after).unwrap();
        assert_eq!(after, [0xaa; 8]);
    }

    #[test]
    fn reply_to_read_only_memory_is_efault() {
        let m = SimMemory::new();
        m.map(UserVa(ARG), 0x1000, false);
        assert_eq!(write_user(&*m, ARG, &[1]).unwrap_err(), EFAULT);
        assert_eq!(write_user(&*m, ARG, &[]), Ok(()));
    }

    #[test]
    fn clear_user_zeroes_across_chunks() {
        let m = SimMemory::new();
        m.map(UserVa(ARG), 0x40000, true);
        m.write(UserVa(ARG + 0x30000), &[1, 2, 3]).unwrap();
        clear_user(&*m, ARG, 0x40000).unwrap();
        assert!(is_zeroed_user(&*m, ARG, 0x40000).unwrap());
        assert_eq!(clear_user(&*m, ARG, 0x40001).unwrap_err(), EFAULT);
    }
}
