//! `uiommu run --trace FILE`: one line per iommufd/VFIO ioctl the program makes on a file of
//! ours, written by the front-end as the call returns (docs/TRACE.md): the time, pid and
//! thread, the fd and what it is (iommufd, VFIO device, group, container, an engine-made
//! file), the call's name, its argument struct decoded before the call, the result or the
//! errno's name, the struct decoded after a successful call, and how long it took. As text
//! (`--trace-format text`, strace-like) or JSON lines (`json`).
//!
//! Off unless `UIOMMU_TRACE` names a file at load; then one relaxed atomic load per ioctl is
//! all it costs. On, every step is async-signal-safe (ioctl's path): the line is formatted into
//! a buffer on the stack with `core::fmt` (no allocation), the argument read with
//! `process_vm_readv` of this process, and written with one `write(2)` to the trace file,
//! opened `O_APPEND` at load; before each write the descriptor is checked (`fstat`) to still be
//! that file, since the program may close descriptors it did not open.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use uiommu_uapi::abi as a;
use uiommu_uapi::file::Target;
use uiommu_uapi::vfio_abi as v;
use zerocopy::FromBytes;

static ON: AtomicBool = AtomicBool::new(false);
static JSON: AtomicBool = AtomicBool::new(false);
static FD: AtomicI32 = AtomicI32::new(-1);
static DEV: AtomicU64 = AtomicU64::new(0);
static INO: AtomicU64 = AtomicU64::new(0);

/// Whether tracing is on.
#[inline]
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

extern "C" fn open_at_load() {
    let _ = std::panic::catch_unwind(|| {
        let Some(path) = std::env::var_os("UIOMMU_TRACE").filter(|p| !p.is_empty()) else {
            return;
        };
        let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        else {
            return;
        };
        let Ok(md) = f.metadata() else { return };
        use std::os::fd::IntoRawFd;
        use std::os::unix::fs::MetadataExt;
        DEV.store(md.dev(), Ordering::Relaxed);
        INO.store(md.ino(), Ordering::Relaxed);
        // Out of the program's way: a high number, close-on-exec (a program it execs opens the
        // file again at its own load).
        let fd = f.into_raw_fd();
        // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor this function owns; no memory is
        // passed.
        let high = unsafe { crate::real::fcntl(fd, libc::F_DUPFD_CLOEXEC, 900) };
        let fd = if high >= 0 {
            // SAFETY: closes the descriptor just duplicated, which this function owns.
            unsafe { libc::syscall(libc::SYS_close, fd as libc::c_long) };
            high
        } else {
            fd
        };
        FD.store(fd, Ordering::Relaxed);
        JSON.store(
            std::env::var_os("UIOMMU_TRACE_FORMAT").is_some_and(|f| f == "json"),
            Ordering::Relaxed,
        );
        ON.store(true, Ordering::Release);
    });
}

#[used]
#[link_section = ".init_array"]
static OPEN_AT_LOAD: extern "C" fn() = open_at_load;

/// A line being formatted: a fixed buffer on the stack; what does not fit is cut.
struct Line {
    buf: [u8; 2048],
    len: usize,
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// What a file of ours is, for the trace and for naming its ioctls.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Iommufd,
    Container,
    Device,
    Group,
    /// A file the engine made (an access, a fault queue, ...).
    Engine,
    Unknown,
}

impl FileKind {
    fn name(self) -> &'static str {
        match self {
            FileKind::Iommufd => "iommufd",
            FileKind::Container => "vfio-container",
            FileKind::Device => "vfio-device",
            FileKind::Group => "vfio-group",
            FileKind::Engine => "engine-file",
            FileKind::Unknown => "?",
        }
    }

    /// The kind of an open file of the in-process engine.
    pub(crate) fn of_open(f: &uiommu_uapi::file::OpenFile) -> FileKind {
        use uiommu_uapi::file::Kind;
        match (f.node, &f.kind) {
            (Some(t), _) => FileKind::of_node(Some(t)),
            (None, Kind::Iommufd(_)) => FileKind::Iommufd,
            (None, Kind::Vfio(_)) => FileKind::Device,
            (None, Kind::Group(_)) => FileKind::Group,
            (None, Kind::Engine(_)) => FileKind::Engine,
        }
    }

    /// The kind of a file opened from `node` (None: the engine made it).
    pub(crate) fn of_node(node: Option<Target>) -> FileKind {
        match node {
            Some(Target::Iommu) => FileKind::Iommufd,
            Some(Target::VfioContainer) => FileKind::Container,
            Some(Target::VfioDevice(_)) => FileKind::Device,
            Some(Target::VfioGroup(_)) => FileKind::Group,
            Some(Target::NoEnt) => FileKind::Unknown,
            None => FileKind::Engine,
        }
    }
}

/// Read `buf.len()` bytes of this process at `addr` (the caller's struct).
fn read_own(addr: u64, buf: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: both iovecs describe live memory or an address the kernel checks (a bad one
    // is a short count); a raw system call, not an interposed name.
    // Every argument is passed as a full register: the call is variadic, and the kernel reads
    // the counts and flags as unsigned longs.
    let n = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            libc::getpid() as libc::c_long,
            &local as *const libc::iovec,
            1 as libc::c_ulong,
            &remote as *const libc::iovec,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    n == buf.len() as i64
}

/// The argument struct of `request` on a file of `kind`, read from `arg`: its bytes (up to
/// 256) and how many; 0 when the call takes no struct or it could not be read.
pub(crate) struct Arg {
    bytes: [u8; 256],
    len: usize,
}

/// The call's name and the size of its struct (0: its argument is a number or a string).
fn call(kind: FileKind, request: u32) -> (&'static str, usize) {
    use std::mem::size_of as sz;
    let iommufd = |r: u32| -> Option<(&'static str, usize)> {
        Some(match r {
            a::IOMMU_DESTROY => ("IOMMU_DESTROY", sz::<a::IommuDestroy>()),
            a::IOMMU_IOAS_ALLOC => ("IOMMU_IOAS_ALLOC", sz::<a::IommuIoasAlloc>()),
            a::IOMMU_IOAS_ALLOW_IOVAS => ("IOMMU_IOAS_ALLOW_IOVAS", sz::<a::IommuIoasAllowIovas>()),
            a::IOMMU_IOAS_COPY => ("IOMMU_IOAS_COPY", sz::<a::IommuIoasCopy>()),
            a::IOMMU_IOAS_IOVA_RANGES => ("IOMMU_IOAS_IOVA_RANGES", sz::<a::IommuIoasIovaRanges>()),
            a::IOMMU_IOAS_MAP => ("IOMMU_IOAS_MAP", sz::<a::IommuIoasMap>()),
            a::IOMMU_IOAS_UNMAP => ("IOMMU_IOAS_UNMAP", sz::<a::IommuIoasUnmap>()),
            a::IOMMU_OPTION => ("IOMMU_OPTION", sz::<a::IommuOption>()),
            a::IOMMU_VFIO_IOAS => ("IOMMU_VFIO_IOAS", sz::<a::IommuVfioIoas>()),
            a::IOMMU_HWPT_ALLOC => ("IOMMU_HWPT_ALLOC", sz::<a::IommuHwptAlloc>()),
            a::IOMMU_GET_HW_INFO => ("IOMMU_GET_HW_INFO", sz::<a::IommuHwInfo>()),
            a::IOMMU_HWPT_SET_DIRTY_TRACKING => (
                "IOMMU_HWPT_SET_DIRTY_TRACKING",
                sz::<a::IommuHwptSetDirtyTracking>(),
            ),
            a::IOMMU_HWPT_GET_DIRTY_BITMAP => (
                "IOMMU_HWPT_GET_DIRTY_BITMAP",
                sz::<a::IommuHwptGetDirtyBitmap>(),
            ),
            a::IOMMU_HWPT_INVALIDATE => ("IOMMU_HWPT_INVALIDATE", sz::<a::IommuHwptInvalidate>()),
            a::IOMMU_FAULT_QUEUE_ALLOC => ("IOMMU_FAULT_QUEUE_ALLOC", sz::<a::IommuFaultAlloc>()),
            a::IOMMU_TEST_CMD => ("IOMMU_TEST_CMD", 0),
            _ => return None,
        })
    };
    let vfio_common = |r: u32| -> Option<(&'static str, usize)> {
        Some(match r {
            v::VFIO_GET_API_VERSION => ("VFIO_GET_API_VERSION", 0),
            v::VFIO_CHECK_EXTENSION => ("VFIO_CHECK_EXTENSION", 0),
            _ => return None,
        })
    };
    let found = match kind {
        FileKind::Iommufd => iommufd(request),
        FileKind::Container => vfio_common(request)
            .or_else(|| {
                Some(match request {
                    v::VFIO_SET_IOMMU => ("VFIO_SET_IOMMU", 0),
                    v::VFIO_IOMMU_GET_INFO => {
                        ("VFIO_IOMMU_GET_INFO", sz::<v::VfioIommuType1Info>())
                    }
                    v::VFIO_IOMMU_MAP_DMA => {
                        ("VFIO_IOMMU_MAP_DMA", sz::<v::VfioIommuType1DmaMap>())
                    }
                    v::VFIO_IOMMU_UNMAP_DMA => ("VFIO_IOMMU_UNMAP_DMA", 0),
                    v::VFIO_IOMMU_ENABLE => ("VFIO_IOMMU_ENABLE", 0),
                    v::VFIO_IOMMU_DISABLE => ("VFIO_IOMMU_DISABLE", 0),
                    v::VFIO_IOMMU_DIRTY_PAGES => ("VFIO_IOMMU_DIRTY_PAGES", 0),
                    _ => return None,
                })
            })
            .or_else(|| iommufd(request)),
        FileKind::Group => Some(match request {
            v::VFIO_GROUP_GET_STATUS => ("VFIO_GROUP_GET_STATUS", sz::<v::VfioGroupStatus>()),
            v::VFIO_GROUP_SET_CONTAINER => ("VFIO_GROUP_SET_CONTAINER", 0),
            v::VFIO_GROUP_UNSET_CONTAINER => ("VFIO_GROUP_UNSET_CONTAINER", 0),
            v::VFIO_GROUP_GET_DEVICE_FD => ("VFIO_GROUP_GET_DEVICE_FD", 0),
            _ => ("?", 0),
        }),
        FileKind::Device => Some(match request {
            v::VFIO_DEVICE_GET_INFO => ("VFIO_DEVICE_GET_INFO", sz::<v::VfioDeviceInfo>()),
            v::VFIO_DEVICE_GET_REGION_INFO => {
                ("VFIO_DEVICE_GET_REGION_INFO", sz::<v::VfioRegionInfo>())
            }
            v::VFIO_DEVICE_GET_IRQ_INFO => ("VFIO_DEVICE_GET_IRQ_INFO", sz::<v::VfioIrqInfo>()),
            v::VFIO_DEVICE_SET_IRQS => ("VFIO_DEVICE_SET_IRQS", sz::<v::VfioIrqSet>()),
            v::VFIO_DEVICE_RESET => ("VFIO_DEVICE_RESET", 0),
            v::VFIO_DEVICE_GET_PCI_HOT_RESET_INFO => ("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", 0),
            v::VFIO_DEVICE_PCI_HOT_RESET => ("VFIO_DEVICE_PCI_HOT_RESET", 0),
            v::VFIO_DEVICE_IOEVENTFD => ("VFIO_DEVICE_IOEVENTFD", sz::<v::VfioDeviceIoeventfd>()),
            v::VFIO_DEVICE_FEATURE => ("VFIO_DEVICE_FEATURE", sz::<v::VfioDeviceFeature>()),
            v::VFIO_DEVICE_BIND_IOMMUFD => {
                ("VFIO_DEVICE_BIND_IOMMUFD", sz::<v::VfioDeviceBindIommufd>())
            }
            v::VFIO_DEVICE_ATTACH_IOMMUFD_PT => (
                "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
                sz::<v::VfioDeviceAttachIommufdPt>(),
            ),
            v::VFIO_DEVICE_DETACH_IOMMUFD_PT => (
                "VFIO_DEVICE_DETACH_IOMMUFD_PT",
                sz::<v::VfioDeviceDetachIommufdPt>(),
            ),
            _ => ("?", 0),
        }),
        FileKind::Engine | FileKind::Unknown => None,
    };
    found.unwrap_or(("?", 0))
}

/// Write the struct of `request` in `bytes` decoded (`Name { field: value, .. }`).
fn decode(out: &mut Line, kind: FileKind, request: u32, bytes: &[u8]) {
    fn show<T: FromBytes + std::fmt::Debug>(out: &mut Line, bytes: &[u8]) -> bool {
        match T::read_from_prefix(bytes) {
            Ok((t, _)) => {
                let _ = write!(out, "{t:?}");
                true
            }
            Err(_) => false,
        }
    }
    let shown = match (kind, request) {
        (FileKind::Iommufd | FileKind::Container, r) => match r {
            a::IOMMU_DESTROY => show::<a::IommuDestroy>(out, bytes),
            a::IOMMU_IOAS_ALLOC => show::<a::IommuIoasAlloc>(out, bytes),
            a::IOMMU_IOAS_ALLOW_IOVAS => show::<a::IommuIoasAllowIovas>(out, bytes),
            a::IOMMU_IOAS_COPY => show::<a::IommuIoasCopy>(out, bytes),
            a::IOMMU_IOAS_IOVA_RANGES => show::<a::IommuIoasIovaRanges>(out, bytes),
            a::IOMMU_IOAS_MAP => show::<a::IommuIoasMap>(out, bytes),
            a::IOMMU_IOAS_UNMAP => show::<a::IommuIoasUnmap>(out, bytes),
            a::IOMMU_OPTION => show::<a::IommuOption>(out, bytes),
            a::IOMMU_VFIO_IOAS => show::<a::IommuVfioIoas>(out, bytes),
            a::IOMMU_HWPT_ALLOC => show::<a::IommuHwptAlloc>(out, bytes),
            a::IOMMU_GET_HW_INFO => show::<a::IommuHwInfo>(out, bytes),
            a::IOMMU_HWPT_SET_DIRTY_TRACKING => show::<a::IommuHwptSetDirtyTracking>(out, bytes),
            a::IOMMU_HWPT_GET_DIRTY_BITMAP => show::<a::IommuHwptGetDirtyBitmap>(out, bytes),
            a::IOMMU_HWPT_INVALIDATE => show::<a::IommuHwptInvalidate>(out, bytes),
            a::IOMMU_FAULT_QUEUE_ALLOC => show::<a::IommuFaultAlloc>(out, bytes),
            v::VFIO_IOMMU_GET_INFO if kind == FileKind::Container => {
                show::<v::VfioIommuType1Info>(out, bytes)
            }
            v::VFIO_IOMMU_MAP_DMA if kind == FileKind::Container => {
                show::<v::VfioIommuType1DmaMap>(out, bytes)
            }
            _ => false,
        },
        (FileKind::Group, v::VFIO_GROUP_GET_STATUS) => show::<v::VfioGroupStatus>(out, bytes),
        (FileKind::Device, r) => match r {
            v::VFIO_DEVICE_GET_INFO => show::<v::VfioDeviceInfo>(out, bytes),
            v::VFIO_DEVICE_GET_REGION_INFO => show::<v::VfioRegionInfo>(out, bytes),
            v::VFIO_DEVICE_GET_IRQ_INFO => show::<v::VfioIrqInfo>(out, bytes),
            v::VFIO_DEVICE_SET_IRQS => show::<v::VfioIrqSet>(out, bytes),
            v::VFIO_DEVICE_IOEVENTFD => show::<v::VfioDeviceIoeventfd>(out, bytes),
            v::VFIO_DEVICE_FEATURE => show::<v::VfioDeviceFeature>(out, bytes),
            v::VFIO_DEVICE_BIND_IOMMUFD => show::<v::VfioDeviceBindIommufd>(out, bytes),
            v::VFIO_DEVICE_ATTACH_IOMMUFD_PT => show::<v::VfioDeviceAttachIommufdPt>(out, bytes),
            v::VFIO_DEVICE_DETACH_IOMMUFD_PT => show::<v::VfioDeviceDetachIommufdPt>(out, bytes),
            _ => false,
        },
        _ => false,
    };
    if !shown {
        let _ = out.write_str("?");
    }
}

/// Before a traced call: the argument struct as the program passed it.
pub(crate) fn before(kind: FileKind, request: u32, arg: u64) -> Arg {
    let (_, size) = call(kind, request);
    let mut a = Arg {
        bytes: [0; 256],
        len: 0,
    };
    let n = size.min(a.bytes.len());
    if n > 0 && read_own(arg, &mut a.bytes[..n]) {
        a.len = n;
    }
    a
}

fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live local.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// A monotonic start time for [`after`].
pub(crate) fn start() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC)
}

/// The name of errno `e` (its number when not one of these).
fn errno_name(e: i32) -> Option<&'static str> {
    Some(match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENOTTY => "ENOTTY",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return None,
    })
}

/// After a traced call: write its line.
pub(crate) fn after(
    fd: i32,
    kind: FileKind,
    request: u32,
    arg: u64,
    input: &Arg,
    result: Result<i64, i32>,
    started: u64,
) {
    let took = start().saturating_sub(started);
    let (name, _) = call(kind, request);
    let mut output = Arg {
        bytes: [0; 256],
        len: 0,
    };
    if result.is_ok() && input.len > 0 && read_own(arg, &mut output.bytes[..input.len]) {
        output.len = input.len;
    }
    let wall = now_ns(libc::CLOCK_REALTIME);
    // SAFETY: getpid and gettid take no arguments.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    let mut line = Line {
        buf: [0; 2048],
        len: 0,
    };
    let json = JSON.load(Ordering::Relaxed);
    if json {
        let _ = write!(
            line,
            "{{\"time\":{}.{:06},\"pid\":{pid},\"tid\":{tid},\"fd\":{fd},\"file\":\"{}\",\
             \"call\":\"{name}\",\"request\":{request},\"arg\":{arg},\"in\":\"",
            wall / 1_000_000_000,
            (wall % 1_000_000_000) / 1000,
            kind.name()
        );
        decode_quoted(&mut line, kind, request, input);
        let _ = line.write_str("\",");
        match result {
            Ok(v) => {
                let _ = write!(line, "\"result\":{v},\"out\":\"");
                decode_quoted(&mut line, kind, request, &output);
                let _ = line.write_str("\"");
            }
            Err(e) => {
                let _ = write!(
                    line,
                    "\"result\":-1,\"errno\":\"{}\"",
                    errno_name(e).unwrap_or("?")
                );
            }
        }
        let _ = writeln!(line, ",\"ns\":{took}}}");
    } else {
        let secs = wall / 1_000_000_000;
        let _ = write!(
            line,
            "{:02}:{:02}:{:02}.{:06} {pid}/{tid} fd {fd} {} {name}(",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            (wall % 1_000_000_000) / 1000,
            kind.name()
        );
        if input.len > 0 {
            decode(&mut line, kind, request, &input.bytes[..input.len]);
        } else {
            let _ = write!(line, "{arg:#x}");
        }
        let _ = line.write_str(")");
        match result {
            Ok(v) => {
                let _ = write!(line, " = {v}");
                if output.len > 0 {
                    let _ = line.write_str(" -> ");
                    decode(&mut line, kind, request, &output.bytes[..output.len]);
                }
            }
            Err(e) => match errno_name(e) {
                Some(n) => {
                    let _ = write!(line, " = -1 {n}");
                }
                None => {
                    let _ = write!(line, " = -1 errno {e}");
                }
            },
        }
        let _ = writeln!(line, " <{}.{:03} us>", took / 1000, took % 1000);
    }
    if line.len == line.buf.len() {
        line.buf[line.len - 1] = b'\n';
    }
    emit(&line.buf[..line.len]);
}

/// The struct decoded, with `"` and `\` escaped for a JSON string.
fn decode_quoted(out: &mut Line, kind: FileKind, request: u32, a: &Arg) {
    if a.len == 0 {
        return;
    }
    let mut inner = Line {
        buf: [0; 2048],
        len: 0,
    };
    decode(&mut inner, kind, request, &a.bytes[..a.len]);
    for &b in &inner.buf[..inner.len] {
        let _ = match b {
            b'"' => out.write_str("\\\""),
            b'\\' => out.write_str("\\\\"),
            b if b < 0x20 => out.write_str(" "),
            _ => out.write_char(b as char),
        };
    }
}

/// Append `bytes` to the trace file, if its descriptor is still that file.
fn emit(bytes: &[u8]) {
    let fd = FD.load(Ordering::Relaxed);
    // SAFETY: fstat writes one struct stat into the live local.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, raw system call on a descriptor number (a closed one is EBADF).
    let ok = unsafe {
        libc::syscall(
            libc::SYS_fstat,
            fd as libc::c_long,
            &mut st as *mut libc::stat,
        )
    } == 0
        && st.st_dev == DEV.load(Ordering::Relaxed)
        && st.st_ino == INO.load(Ordering::Relaxed);
    if !ok {
        return;
    }
    // SAFETY: writes `bytes`, a live slice, to the trace file; a raw system call (the
    // library's own `write` is interposed).
    unsafe {
        libc::syscall(
            libc::SYS_write,
            fd as libc::c_long,
            bytes.as_ptr(),
            bytes.len(),
        )
    };
}
