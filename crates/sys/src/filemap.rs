//! The engine's own mapping of a file it holds (the pages a pin holds), and copies in and out
//! of it that cannot crash the engine.
//!
//! A shared mapping of a file that someone else can shrink (`ftruncate` of a memfd the client
//! still holds) raises SIGBUS on the pages past the new end. The copies here are a small
//! assembly loop whose faults a signal handler turns into a short count, as the kernel's
//! `copy_from_user` turns a fault into `-EFAULT` through its exception table: the handler looks
//! at the faulting instruction's address, and when it lies in the loop it resumes at the
//! loop's exit with the bytes left, otherwise it passes the signal on to whoever handled it
//! before (so the process's own faults keep their meaning). Only x86-64 has the loop; elsewhere
//! [`FileMap::new`] refuses and the caller uses `pread`/`pwrite`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.uiommu_guarded_copy,\"ax\",@progbits",
    ".p2align 4",
    ".globl uiommu_guarded_copy",
    ".hidden uiommu_guarded_copy",
    ".type uiommu_guarded_copy,@function",
    // (rdi = dst, rsi = src, rdx = len) -> rax = bytes not copied.
    "uiommu_guarded_copy:",
    "mov rax, rdx",
    "2:",
    "cmp rax, 64",
    "jb 3f",
    "movdqu xmm0, [rsi]",
    "movdqu xmm1, [rsi + 16]",
    "movdqu xmm2, [rsi + 32]",
    "movdqu xmm3, [rsi + 48]",
    "movdqu [rdi], xmm0",
    "movdqu [rdi + 16], xmm1",
    "movdqu [rdi + 32], xmm2",
    "movdqu [rdi + 48], xmm3",
    "add rsi, 64",
    "add rdi, 64",
    "sub rax, 64",
    "jmp 2b",
    "3:",
    "test rax, rax",
    "jz 4f",
    "mov cl, [rsi]",
    "mov [rdi], cl",
    "inc rsi",
    "inc rdi",
    "dec rax",
    "jmp 3b",
    "4:",
    ".globl uiommu_guarded_copy_fixup",
    ".hidden uiommu_guarded_copy_fixup",
    // A fault anywhere above resumes here with rax = the bytes of the block being copied and
    // every one after it (at least 1).
    "uiommu_guarded_copy_fixup:",
    "ret",
    ".size uiommu_guarded_copy, . - uiommu_guarded_copy",
    ".popsection",
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    fn uiommu_guarded_copy(dst: *mut u8, src: *const u8, len: usize) -> usize;
    static uiommu_guarded_copy_fixup: u8;
}

/// The handlers of SIGSEGV and SIGBUS in place before ours, to pass other faults on to.
#[cfg(target_arch = "x86_64")]
static PREVIOUS: [std::sync::OnceLock<libc::sigaction>; 2] =
    [std::sync::OnceLock::new(), std::sync::OnceLock::new()];

#[cfg(target_arch = "x86_64")]
static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();

#[cfg(target_arch = "x86_64")]
extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Only the symbols' addresses are taken; no byte of them is read.
    let (start, fixup) = (
        uiommu_guarded_copy as *const () as usize,
        &raw const uiommu_guarded_copy_fixup as usize,
    );
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler; its saved
    // registers are this thread's own, and rewriting the saved instruction pointer is how a
    // handler chooses where the thread resumes.
    unsafe {
        let rip = &mut (*uc).uc_mcontext.gregs[libc::REG_RIP as usize];
        if (start..fixup).contains(&(*rip as usize)) {
            *rip = fixup as i64;
            return;
        }
    }
    let slot = usize::from(sig == libc::SIGBUS);
    if let Some(prev) = PREVIOUS[slot].get() {
        // SAFETY: called from a signal handler with the kernel's own arguments.
        unsafe { pass_on(prev, sig, info, ctx) };
    }
}

/// Hand a signal this process's handler does not take on to `prev`, the handler installed
/// before it: called with its own arguments if it is a function, else the default action
/// restored so that the faulting instruction, run again on return, takes it.
///
/// # Safety
/// Only from a signal handler for `sig`, with the `info` and `ctx` the kernel gave it.
pub unsafe fn pass_on(
    prev: &libc::sigaction,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    let handler = prev.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: restoring the default disposition of this signal; sigaction is
        // async-signal-safe.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this type, and
        // is called with the arguments the kernel gave the caller (its contract).
        unsafe {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(sig, info, ctx);
        }
    } else {
        // SAFETY: a plain handler, installed without SA_SIGINFO: it takes the signal number.
        unsafe {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
    }
}

/// Install the fault handler once per process.
#[cfg(target_arch = "x86_64")]
fn install_handler() -> io::Result<()> {
    let r = INSTALLED.get_or_init(|| {
        for (slot, sig) in [libc::SIGSEGV, libc::SIGBUS].into_iter().enumerate() {
            // SAFETY: `act` is fully initialised before use and `old` receives the previous
            // disposition; the handler only reads its arguments and the saved registers.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_fault as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
                libc::sigemptyset(&mut act.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                    return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
                }
                // Recorded before ours takes over, so that a fault in between finds it.
                let _ = PREVIOUS[slot].set(old);
                if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
                }
            }
        }
        Ok(())
    });
    r.map_err(io::Error::from_raw_os_error)
}

/// A shared mapping of the first `len` bytes of a file, made by the engine, unmapped on drop.
#[derive(Debug)]
pub struct FileMap {
    addr: usize,
    len: usize,
    writable: bool,
}

impl FileMap {
    /// Map `len` bytes of `fd` from offset 0, shared, readable (and writable if `writable`).
    /// Fails where the guarded copies do not exist (not x86-64), or as mmap fails (a file
    /// that cannot be mapped, a length of 0).
    pub fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<FileMap> {
        #[cfg(target_arch = "x86_64")]
        {
            if len == 0 {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            install_handler()?;
            let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
            // SAFETY: a new shared mapping at an address of the kernel's choosing; it aliases
            // nothing Rust owns, and is only ever accessed through the guarded copies.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            Ok(FileMap {
                addr: p as usize,
                len,
                writable,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (fd, len, writable);
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `[at, at + n)` lies in the mapping.
    fn covers(&self, at: u64, n: usize) -> bool {
        usize::try_from(at)
            .ok()
            .and_then(|a| a.checked_add(n))
            .is_some_and(|end| end <= self.len)
    }

    /// Copy `buf.len()` bytes at file offset `at` into `buf`. `false` when the range is not
    /// mapped or a page of it faulted (the file shrank under it); bytes before the fault may
    /// have been copied.
    pub fn read(&self, at: u64, buf: &mut [u8]) -> bool {
        if !self.covers(at, buf.len()) {
            return false;
        }
        guarded_copy(
            buf.as_mut_ptr() as usize,
            self.addr + at as usize,
            buf.len(),
        )
    }

    /// Copy `data` to file offset `at`; `false` as for [`read`](Self::read), or when mapped
    /// read-only.
    pub fn write(&self, at: u64, data: &[u8]) -> bool {
        if !self.writable || !self.covers(at, data.len()) {
            return false;
        }
        guarded_copy(self.addr + at as usize, data.as_ptr() as usize, data.len())
    }

    /// Copy `len` bytes from `src` at `src_at` to `dst` at `dst_at` (a copy engine's move
    /// between two held files, or two places of one, not overlapping); `false` as for
    /// [`write`](Self::write).
    pub fn copy(dst: &FileMap, dst_at: u64, src: &FileMap, src_at: u64, len: usize) -> bool {
        if !dst.writable || !dst.covers(dst_at, len) || !src.covers(src_at, len) {
            return false;
        }
        let (d, s) = (dst.addr + dst_at as usize, src.addr + src_at as usize);
        if d < s.saturating_add(len) && s < d.saturating_add(len) {
            return false;
        }
        guarded_copy(d, s, len)
    }
}

/// Copy between two ranges of which at least one lies in a [`FileMap`] and the other in it or
/// in Rust-owned memory of the caller; `false` when it faulted.
fn guarded_copy(dst: usize, src: usize, len: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: both ranges were bounds-checked by the caller against a live mapping or a
        // Rust slice; a fault on a mapping's page (the file shrank) is caught by the handler
        // installed when the mapping was made, which resumes at the loop's exit; the copy is
        // opaque assembly, so bytes others write concurrently through their own mappings are
        // no data race the compiler can see.
        unsafe { uiommu_guarded_copy(dst as *mut u8, src as *const u8, len) == 0 }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dst, src, len);
        false
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new`, is owned by `self`, and no access to it
        // outlives the borrow of `self` it went through.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    fn memfd(len: u64) -> std::fs::File {
        let fd = rustix_memfd();
        fd.set_len(len).unwrap();
        fd
    }

    fn rustix_memfd() -> std::fs::File {
        // SAFETY: memfd_create with a NUL-terminated name; the returned descriptor is new and
        // owned by the File.
        unsafe {
            let fd = libc::memfd_create(c"filemap-test".as_ptr(), 0);
            assert!(fd >= 0);
            std::os::fd::FromRawFd::from_raw_fd(fd)
        }
    }

    #[test]
    fn reads_and_writes_reach_the_file() {
        let mut f = memfd(0);
        f.write_all(&[7u8; 8192]).unwrap();
        let m = FileMap::new(f.as_fd(), 8192, true).unwrap();
        let mut buf = [0u8; 100];
        assert!(m.read(4000, &mut buf));
        assert_eq!(buf, [7u8; 100]);
        assert!(m.write(10, &[1, 2, 3]));
        let mut back = [0u8; 3];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut back, 10).unwrap();
        assert_eq!(back, [1, 2, 3]);
        // Out of the mapping: refused, nothing touched.
        assert!(!m.read(8190, &mut buf));
        assert!(!m.write(u64::MAX, &[1]));
    }

    #[test]
    fn a_shrunk_file_is_a_short_copy_not_a_crash() {
        let f = memfd(4 * 4096);
        let m = FileMap::new(f.as_fd(), 4 * 4096, true).unwrap();
        assert!(m.write(0, &[9u8; 4 * 4096]));
        f.set_len(4096).unwrap();
        let mut buf = vec![0u8; 2 * 4096];
        assert!(!m.read(0, &mut buf), "the second page is past the end now");
        assert_eq!(buf[..4096], [9u8; 4096], "bytes before the fault arrived");
        assert!(!m.write(3 * 4096, &[1]));
        assert!(m.read(0, &mut buf[..4096]));
        // The process's own faults still reach their handler: a null read in a child dies of
        // SIGSEGV (not resumed by ours).
        let st = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "filemap::tests::helper_faults", "--nocapture"])
            .env("UIOMMU_FILEMAP_FAULT", "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.status.signal(), Some(libc::SIGSEGV), "{st:?}");
    }

    #[test]
    fn helper_faults() {
        if std::env::var_os("UIOMMU_FILEMAP_FAULT").is_none() {
            return;
        }
        let f = memfd(4096);
        let _m = FileMap::new(f.as_fd(), 4096, false).unwrap();
        let p = std::hint::black_box(8usize) as *const u8;
        // SAFETY: deliberately not: the read of address 8 must kill this child with SIGSEGV.
        let v = unsafe { std::ptr::read_volatile(p) };
        std::hint::black_box(v);
    }

    #[test]
    fn a_read_only_mapping_refuses_writes_and_copies_check_overlap() {
        let f = memfd(8192);
        let ro = FileMap::new(f.as_fd(), 8192, false).unwrap();
        assert!(!ro.write(0, &[1]));
        let rw = FileMap::new(f.as_fd(), 8192, true).unwrap();
        assert!(rw.write(0, &[5u8; 4096]));
        assert!(FileMap::copy(&rw, 4096, &ro, 0, 4096));
        let mut b = [0u8; 4096];
        assert!(ro.read(4096, &mut b));
        assert_eq!(b, [5u8; 4096]);
        assert!(!FileMap::copy(&rw, 100, &rw, 0, 4096), "overlapping");
        assert!(
            !FileMap::copy(&ro, 0, &rw, 4096, 16),
            "read-only destination"
        );
    }
}
