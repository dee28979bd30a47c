//! Files of ours inherited across `exec`: a program started with an fd of `/dev/iommu` or a
//! VFIO node open (a launcher ran `exec 3<>/dev/iommu`, then `exec qemu ... fd=3`) finds it
//! open, as on Linux.
//!
//! The engine lives in the process's memory, so `exec` ends it; the memfd survives (without
//! close-on-exec). Each memfd of a `/dev` node therefore carries a small record of what it is:
//! `F <path>\n` while the file is fresh (opened, no ioctl made), `U <path>\n` once an ioctl was
//! made on it. At load, the library lists `/proc/self/fd`; every `uiommu:` memfd whose record
//! says `F` is opened again as its path in the new process's engine, under the same fd
//! (same inode, same open flags), exactly what a fresh open gives. A used file cannot be
//! carried over (its context, bindings and mappings died with the old image): it stays a plain
//! memfd, whose iommufd and VFIO ioctls fail with ENOTTY — unless another process's engine
//! made it and stamped its server's name in it (a parent that forked, then the child
//! `exec`ed): that server then serves this image as it serves a fork child
//! (`crate::remote::adopt_upstream`).
//! The record is kept in the memfd's contents, which the program never sees (our `read`,
//! `pread` and `mmap` serve the device instead).

use crate::hook::Hook;
use crate::real;
use crate::state::{global, OpenFile};
use crate::Target;
use libc::c_int;
use std::sync::atomic::Ordering;

/// The record's text for `target`.
fn record(state: u8, target: Target) -> Option<Vec<u8>> {
    let path = match target {
        Target::Iommu => "/dev/iommu".to_string(),
        Target::VfioContainer => "/dev/vfio/vfio".to_string(),
        Target::VfioGroup(n) => format!("/dev/vfio/{n}"),
        Target::VfioDevice(n) => format!("/dev/vfio/devices/vfio{n}"),
        Target::NoEnt => return None,
    };
    let mut r = vec![state, b' '];
    r.extend_from_slice(path.as_bytes());
    r.push(b'\n');
    Some(r)
}

/// Write the "fresh" record into the memfd `fd` just made for `target`.
pub(crate) fn mark_fresh(fd: c_int, target: Target) {
    if let Some(r) = record(b'F', target) {
        // SAFETY: writes the record from a live buffer into the memfd this library made.
        let _ = unsafe { real::pwrite(fd, r.as_ptr().cast(), r.len(), 0) };
    }
}

/// Mark `file` (open at `fd`) used, once: it will not be carried across an `exec`.
pub(crate) fn mark_used(fd: c_int, file: &OpenFile) {
    if file.node.is_none() || file.used.swap(true, Ordering::Relaxed) {
        return;
    }
    // SAFETY: one byte from a static buffer into the memfd of our file.
    let _ = unsafe { real::pwrite(fd, b"U".as_ptr().cast(), 1, 0) };
}

/// The path a record names, when the record says the file is fresh.
pub fn fresh_path(record: &[u8]) -> Option<&[u8]> {
    let rest = record.strip_prefix(b"F ")?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    Some(&rest[..end])
}

/// Take over the fresh files of ours this process inherited (run once, at load).
extern "C" fn adopt_inherited() {
    let _ = std::panic::catch_unwind(|| {
        let _h = Hook::enter();
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        let mut found = Vec::new();
        for entry in dir.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<c_int>().ok())
            else {
                continue;
            };
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let link = link.into_os_string().into_encoded_bytes();
            if link.starts_with(b"/memfd:uiommu:") {
                found.push((fd, !link.starts_with(b"/memfd:uiommu:file")));
            }
        }
        for (fd, node) in found {
            if !(node && adopt(fd)) {
                // Not fresh: served by the engine that made it, if a descendant of that
                // process is what this image is (`crate::remote`).
                crate::remote::adopt_upstream(fd);
            }
        }
    });
}

/// Open the node `fd`'s record names again, under `fd`; false when the record does not say
/// the file is fresh.
fn adopt(fd: c_int) -> bool {
    let mut buf = [0u8; 64];
    // SAFETY: reads into a live local buffer from an inherited memfd.
    let n = unsafe { real::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    let Some(target) = fresh_path(&buf[..n]).and_then(crate::target_of) else {
        return false;
    };
    let Ok(g) = global() else { return true };
    let Ok((_, kind)) = crate::make_file(g, target) else {
        return true;
    };
    // SAFETY: F_GETFL takes no argument.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    if fl < 0 {
        return true;
    }
    let open = OpenFile {
        kind,
        accmode: fl & libc::O_ACCMODE,
        node: Some(target),
        used: Default::default(),
    };
    if g.files.insert(fd, open).is_ok() {
        crate::stats::inherited(target);
    }
    true
}

/// Run [`adopt_inherited`] when the library is loaded.
#[used]
#[link_section = ".init_array"]
static ADOPT_AT_LOAD: extern "C" fn() = adopt_inherited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_the_node_and_only_fresh_ones_are_taken_over() {
        let r = record(b'F', Target::VfioDevice(3)).unwrap();
        assert_eq!(r, b"F /dev/vfio/devices/vfio3\n");
        assert_eq!(fresh_path(&r), Some(&b"/dev/vfio/devices/vfio3"[..]));
        assert_eq!(
            crate::target_of(fresh_path(&r).unwrap()),
            Some(Target::VfioDevice(3))
        );
        let mut used = r.clone();
        used[0] = b'U';
        assert_eq!(fresh_path(&used), None);
        assert_eq!(fresh_path(b"F /dev/iommu"), None, "a cut record");
        assert_eq!(record(b'F', Target::NoEnt), None);
    }
}
