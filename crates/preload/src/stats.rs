//! `UIOMMU_STATS`: a summary of what the program asked of uiommu, printed when it exits.
//!
//! Set `UIOMMU_STATS=1` (or any value without a `/`) to have the summary on stderr, or
//! `UIOMMU_STATS=/some/file` to have it appended to that file (for programs whose stderr is
//! busy). Unset or empty: nothing is recorded; the cost is one atomic load per open and ioctl.
//! The summary is a few lines, each starting with `uiommu stats:`:
//!
//! ```text
//! uiommu stats: pid 4242
//! uiommu stats: open /dev/iommu 1
//! uiommu stats: open /dev/vfio/devices/vfio0 1
//! uiommu stats: inherited /dev/vfio/vfio 1
//! uiommu stats: ioctl IOMMU_IOAS_ALLOC ok 1
//! uiommu stats: ioctl VFIO_DEVICE_FEATURE ok 0 ENOTTY 2
//! uiommu stats: dma map 5 calls 268566528 bytes, unmap 5 calls 268566528 bytes, peak 268566528 bytes
//! ```
//!
//! "inherited" counts files of ours taken over from before an `exec` (`crate::inherit`).
//! "dma map" counts the successful `IOMMU_IOAS_MAP`, `IOMMU_IOAS_COPY` and `VFIO_IOMMU_MAP_DMA`
//! calls and their lengths; "unmap" the successful `IOMMU_IOAS_UNMAP` and `VFIO_IOMMU_UNMAP_DMA`
//! with the lengths the kernel reports back as unmapped; "peak" the largest sum mapped at once.
//! Ioctls are named by the kind of file they were made on (an iommufd, the legacy container —
//! itself an iommufd —, a group, a VFIO device); unknown numbers as `0x3b..`.

use crate::state::{Global, Kind};
use crate::Target;
use libc::{c_int, c_ulong};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use uiommu_platform::memory::UserMemory;
use uiommu_platform::UserVa;
use uiommu_uapi::abi::*;
use uiommu_uapi::vfio_abi::*;

/// 0: not read yet; 1: off; 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);

/// What was recorded.
#[derive(Default)]
struct Stats {
    /// Opens of our paths, by path.
    opens: BTreeMap<String, u64>,
    /// Ioctls by name and result (0: success, else the errno).
    ioctls: BTreeMap<(String, c_int), u64>,
    map_calls: u64,
    map_bytes: u64,
    unmap_calls: u64,
    unmap_bytes: u64,
    /// Bytes mapped now (maps minus unmaps) and the most seen.
    current: i128,
    peak: i128,
}

static STATS: Mutex<Option<Stats>> = Mutex::new(None);

/// Whether `UIOMMU_STATS` asks for the summary (read once).
pub(crate) fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var_os("UIOMMU_STATS").is_some_and(|v| !v.is_empty());
            if on && STATE.swap(2, Ordering::AcqRel) != 2 {
                // SAFETY: registering an `extern "C" fn()` with atexit.
                unsafe { libc::atexit(print_at_exit) };
            } else if !on {
                STATE.store(1, Ordering::Relaxed);
            }
            on
        }
    }
}

fn with(f: impl FnOnce(&mut Stats)) {
    let mut s = STATS.lock().unwrap_or_else(|e| e.into_inner());
    f(s.get_or_insert_with(Stats::default))
}

/// Record an open of our `target` (successful or not: only successes are counted).
pub(crate) fn open(target: Target) {
    record_open("open", target);
}

/// Record a file of ours taken over from before an `exec` (`crate::inherit`).
pub(crate) fn inherited(target: Target) {
    record_open("inherited", target);
}

fn record_open(how: &str, target: Target) {
    if !enabled() {
        return;
    }
    let path = match target {
        Target::Iommu => "/dev/iommu".to_string(),
        Target::VfioContainer => "/dev/vfio/vfio".to_string(),
        Target::VfioGroup(n) => format!("/dev/vfio/{n}"),
        Target::VfioDevice(n) => format!("/dev/vfio/devices/vfio{n}"),
        Target::NoEnt => return,
    };
    with(|s| *s.opens.entry(format!("{how} {path}")).or_default() += 1);
}

/// The name of ioctl `nr` on a file of `kind`.
fn ioctl_name(kind: &Kind, request: c_ulong) -> String {
    let nr = request as u32;
    let iommufd: &[(u32, &str)] = &[
        (IOMMU_DESTROY, "IOMMU_DESTROY"),
        (IOMMU_IOAS_ALLOC, "IOMMU_IOAS_ALLOC"),
        (IOMMU_IOAS_ALLOW_IOVAS, "IOMMU_IOAS_ALLOW_IOVAS"),
        (IOMMU_IOAS_COPY, "IOMMU_IOAS_COPY"),
        (IOMMU_IOAS_IOVA_RANGES, "IOMMU_IOAS_IOVA_RANGES"),
        (IOMMU_IOAS_MAP, "IOMMU_IOAS_MAP"),
        (IOMMU_IOAS_UNMAP, "IOMMU_IOAS_UNMAP"),
        (IOMMU_OPTION, "IOMMU_OPTION"),
        (IOMMU_VFIO_IOAS, "IOMMU_VFIO_IOAS"),
        (IOMMU_HWPT_ALLOC, "IOMMU_HWPT_ALLOC"),
        (IOMMU_GET_HW_INFO, "IOMMU_GET_HW_INFO"),
        (
            IOMMU_HWPT_SET_DIRTY_TRACKING,
            "IOMMU_HWPT_SET_DIRTY_TRACKING",
        ),
        (IOMMU_HWPT_GET_DIRTY_BITMAP, "IOMMU_HWPT_GET_DIRTY_BITMAP"),
        (IOMMU_HWPT_INVALIDATE, "IOMMU_HWPT_INVALIDATE"),
        (IOMMU_FAULT_QUEUE_ALLOC, "IOMMU_FAULT_QUEUE_ALLOC"),
        (IOMMU_TEST_CMD, "IOMMU_TEST_CMD"),
        (VFIO_GET_API_VERSION, "VFIO_GET_API_VERSION"),
        (VFIO_CHECK_EXTENSION, "VFIO_CHECK_EXTENSION"),
        (VFIO_SET_IOMMU, "VFIO_SET_IOMMU"),
        (VFIO_IOMMU_GET_INFO, "VFIO_IOMMU_GET_INFO"),
        (VFIO_IOMMU_MAP_DMA, "VFIO_IOMMU_MAP_DMA"),
        (VFIO_IOMMU_UNMAP_DMA, "VFIO_IOMMU_UNMAP_DMA"),
        (VFIO_IOMMU_ENABLE, "VFIO_IOMMU_ENABLE"),
        (VFIO_IOMMU_DISABLE, "VFIO_IOMMU_DISABLE"),
        (VFIO_IOMMU_DIRTY_PAGES, "VFIO_IOMMU_DIRTY_PAGES"),
    ];
    let group: &[(u32, &str)] = &[
        (VFIO_GROUP_GET_STATUS, "VFIO_GROUP_GET_STATUS"),
        (VFIO_GROUP_SET_CONTAINER, "VFIO_GROUP_SET_CONTAINER"),
        (VFIO_GROUP_UNSET_CONTAINER, "VFIO_GROUP_UNSET_CONTAINER"),
        (VFIO_GROUP_GET_DEVICE_FD, "VFIO_GROUP_GET_DEVICE_FD"),
    ];
    let device: &[(u32, &str)] = &[
        (VFIO_DEVICE_GET_INFO, "VFIO_DEVICE_GET_INFO"),
        (VFIO_DEVICE_GET_REGION_INFO, "VFIO_DEVICE_GET_REGION_INFO"),
        (VFIO_DEVICE_GET_IRQ_INFO, "VFIO_DEVICE_GET_IRQ_INFO"),
        (VFIO_DEVICE_SET_IRQS, "VFIO_DEVICE_SET_IRQS"),
        (VFIO_DEVICE_RESET, "VFIO_DEVICE_RESET"),
        (
            VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
            "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
        ),
        (VFIO_DEVICE_PCI_HOT_RESET, "VFIO_DEVICE_PCI_HOT_RESET"),
        (VFIO_DEVICE_IOEVENTFD, "VFIO_DEVICE_IOEVENTFD"),
        (VFIO_DEVICE_FEATURE, "VFIO_DEVICE_FEATURE"),
        (VFIO_DEVICE_BIND_IOMMUFD, "VFIO_DEVICE_BIND_IOMMUFD"),
        (
            VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        ),
        (
            VFIO_DEVICE_DETACH_IOMMUFD_PT,
            "VFIO_DEVICE_DETACH_IOMMUFD_PT",
        ),
        (VFIO_MIG_GET_PRECOPY_INFO, "VFIO_MIG_GET_PRECOPY_INFO"),
    ];
    let table = match kind {
        Kind::Iommufd(_) => iommufd,
        Kind::Group(_) => group,
        _ => device,
    };
    table
        .iter()
        .find(|(n, _)| *n == nr)
        .map_or_else(|| format!("0x{nr:x}"), |(_, name)| name.to_string())
}

/// A `u64` field of the program's ioctl argument (0 when unreadable).
fn arg_u64(g: &Global, arg: c_ulong, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    match g.mem.read(UserVa(arg + offset), &mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => 0,
    }
}

/// Record an ioctl on one of our files and its result.
pub(crate) fn ioctl(g: &Global, kind: &Kind, request: c_ulong, arg: c_ulong, r: Result<(), c_int>) {
    if !enabled() {
        return;
    }
    let name = ioctl_name(kind, request);
    let is_iommufd = matches!(kind, Kind::Iommufd(_));
    let nr = request as u32;
    // The length fields (6.12 layouts): iommu_ioas_map.length at 24, iommu_ioas_copy.length
    // at 16, iommu_ioas_unmap.length (written back: bytes unmapped) at 16;
    // vfio_iommu_type1_dma_map.size at 24, vfio_iommu_type1_dma_unmap.size (written back) at
    // 16.
    let mapped = match (r, is_iommufd, nr) {
        (Ok(()), true, IOMMU_IOAS_MAP) => Some((true, arg_u64(g, arg, 24))),
        (Ok(()), true, IOMMU_IOAS_COPY) => Some((true, arg_u64(g, arg, 16))),
        (Ok(()), true, VFIO_IOMMU_MAP_DMA) => Some((true, arg_u64(g, arg, 24))),
        (Ok(()), true, IOMMU_IOAS_UNMAP) => Some((false, arg_u64(g, arg, 16))),
        (Ok(()), true, VFIO_IOMMU_UNMAP_DMA) => Some((false, arg_u64(g, arg, 16))),
        _ => None,
    };
    with(|s| {
        *s.ioctls.entry((name, r.err().unwrap_or(0))).or_default() += 1;
        match mapped {
            Some((true, len)) => {
                s.map_calls += 1;
                s.map_bytes += len;
                s.current += i128::from(len);
                s.peak = s.peak.max(s.current);
            }
            Some((false, len)) => {
                s.unmap_calls += 1;
                s.unmap_bytes += len;
                s.current -= i128::from(len);
            }
            None => {}
        }
    });
}

/// The name of a common errno (the number for others).
fn errno_name(e: c_int) -> String {
    let names = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EIO, "EIO"),
        (libc::E2BIG, "E2BIG"),
        (libc::EBADF, "EBADF"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EACCES, "EACCES"),
        (libc::EFAULT, "EFAULT"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::ENODEV, "ENODEV"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOTTY, "ENOTTY"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::ESPIPE, "ESPIPE"),
        (libc::ERANGE, "ERANGE"),
        (libc::EDEADLK, "EDEADLK"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::EBADFD, "EBADFD"),
        (libc::EOVERFLOW, "EOVERFLOW"),
        (libc::EMSGSIZE, "EMSGSIZE"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno{e}"), |(_, s)| s.to_string())
}

/// The summary's lines.
fn summary(s: &Stats) -> String {
    let mut out = format!("uiommu stats: pid {}\n", std::process::id());
    for (path, n) in &s.opens {
        out += &format!("uiommu stats: {path} {n}\n");
    }
    let mut by_name: BTreeMap<&str, Vec<(c_int, u64)>> = BTreeMap::new();
    for ((name, e), n) in &s.ioctls {
        by_name.entry(name).or_default().push((*e, *n));
    }
    for (name, results) in by_name {
        let ok = results.iter().find(|(e, _)| *e == 0).map_or(0, |r| r.1);
        out += &format!("uiommu stats: ioctl {name} ok {ok}");
        for (e, n) in results.iter().filter(|(e, _)| *e != 0) {
            out += &format!(" {} {n}", errno_name(*e));
        }
        out += "\n";
    }
    out += &format!(
        "uiommu stats: dma map {} calls {} bytes, unmap {} calls {} bytes, peak {} bytes\n",
        s.map_calls, s.map_bytes, s.unmap_calls, s.unmap_bytes, s.peak
    );
    out
}

extern "C" fn print_at_exit() {
    let _h = crate::hook::Hook::enter();
    let _ = std::panic::catch_unwind(|| {
        let text = {
            let s = STATS.lock().unwrap_or_else(|e| e.into_inner());
            summary(s.as_ref().unwrap_or(&Stats::default()))
        };
        let dest = std::env::var_os("UIOMMU_STATS").unwrap_or_default();
        if dest.as_encoded_bytes().contains(&b'/') {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&dest)
            {
                let _ = f.write_all(text.as_bytes());
            }
        } else {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_opens_ioctls_and_bytes() {
        let mut s = Stats::default();
        s.opens.insert("open /dev/iommu".into(), 1);
        s.ioctls.insert(("IOMMU_IOAS_MAP".into(), 0), 2);
        s.ioctls.insert(("IOMMU_IOAS_MAP".into(), libc::EEXIST), 1);
        s.map_calls = 2;
        s.map_bytes = 8192;
        s.peak = 8192;
        let text = summary(&s);
        assert!(text.contains("uiommu stats: open /dev/iommu 1\n"), "{text}");
        assert!(
            text.contains("uiommu stats: ioctl IOMMU_IOAS_MAP ok 2 EEXIST 1\n"),
            "{text}"
        );
        assert!(
            text.contains("dma map 2 calls 8192 bytes, unmap 0 calls 0 bytes, peak 8192 bytes"),
            "{text}"
        );
    }
}
