//! An open file of ours, whichever front-end holds it: which node it was opened from, what it
//! is, and its `read`/`write`/`pread`/`pwrite`/`mmap` semantics.
//!
//! The preload library's in-process engine and the host engine (`uiommu-host`) both keep one
//! [`OpenFile`] per open file description and serve the file operations through the functions
//! here, so the two front-ends answer every call identically.

use crate::fault::FaultQueueFile;
use crate::iommufd::IommufdFile;
use crate::vfio_device::VfioDeviceFile;
use crate::vfio_group::{open_container, vfio_groups, VfioGroupFile};
use crate::{Caller, EngineFile, Errno};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use uiommu_core::error::errno::{EINVAL, ENODEV, ENOENT, ENOTTY};
use uiommu_core::Engine;
use uiommu_platform::drivers::Driver;
use uiommu_platform::memory::SpaceId;
use uiommu_platform::topology::{DeviceId, GroupId};
use uiommu_platform::UserVa;

/// `O_ACCMODE` values (as in `fcntl.h`).
pub const O_RDONLY: i32 = 0;
/// `O_WRONLY`.
pub const O_WRONLY: i32 = 1;
/// `O_RDWR`.
pub const O_RDWR: i32 = 2;
/// `EBADF`.
const EBADF: Errno = 9;
/// `EACCES`.
const EACCES: Errno = 13;
/// `ESPIPE`.
const ESPIPE: Errno = 29;
/// `MAP_SHARED`.
const MAP_SHARED: i32 = 1;
/// `PROT_WRITE`.
const PROT_WRITE: i32 = 2;

/// Which of our `/dev` nodes a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/dev/iommu`.
    Iommu,
    /// `/dev/vfio/devices/vfioN`.
    VfioDevice(u32),
    /// `/dev/vfio/vfio`, the legacy container.
    VfioContainer,
    /// `/dev/vfio/<group>`.
    VfioGroup(u32),
    /// Another path under `/dev/vfio/` (not the directory `/dev/vfio/devices`): ENOENT.
    NoEnt,
}

impl Target {
    /// The target as two numbers (for a wire format): kind and index.
    pub fn encode(self) -> (u32, u32) {
        match self {
            Target::Iommu => (1, 0),
            Target::VfioDevice(n) => (2, n),
            Target::VfioContainer => (3, 0),
            Target::VfioGroup(n) => (4, n),
            Target::NoEnt => (0, 0),
        }
    }

    /// The inverse of [`Target::encode`]; unknown kinds are [`Target::NoEnt`].
    pub fn decode(kind: u32, n: u32) -> Target {
        match kind {
            1 => Target::Iommu,
            2 => Target::VfioDevice(n),
            3 => Target::VfioContainer,
            4 => Target::VfioGroup(n),
            _ => Target::NoEnt,
        }
    }
}

/// A decimal number without sign or leading zeros, as the kernel names nodes.
fn canonical_number(num: &[u8]) -> Option<u32> {
    let canonical =
        !num.is_empty() && num.iter().all(u8::is_ascii_digit) && (num.len() == 1 || num[0] != b'0');
    canonical
        .then(|| std::str::from_utf8(num).ok()?.parse::<u32>().ok())
        .flatten()
}

/// When `path` names the directory `/dev/vfio` (0), `/dev/vfio/devices` (1) or `/dev`
/// through `/dev/vfio/..` (-1), spelled with any trailing or doubled slashes, `.`
/// components and `devices/..`: its depth below `/dev/vfio`. Other paths: `None`.
pub fn vfio_dir_depth(path: &[u8]) -> Option<i32> {
    let rest = path.strip_prefix(b"/dev/vfio")?;
    if !rest.is_empty() && !rest.starts_with(b"/") {
        return None;
    }
    let mut depth = 0;
    for comp in rest.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." if depth >= 0 => depth -= 1,
            b"devices" if depth == 0 => depth = 1,
            _ => return None,
        }
    }
    Some(depth)
}

/// Which of our nodes the absolute path `path` (without its NUL) is, if any: the nodes by
/// their exact names; another name under `/dev/vfio/` is [`Target::NoEnt`]; the directories
/// ([`vfio_dir_depth`]) and every other path are not ours.
pub fn target_of(path: &[u8]) -> Option<Target> {
    if path == b"/dev/iommu" {
        return Some(Target::Iommu);
    }
    let rest = path.strip_prefix(b"/dev/vfio/")?;
    if vfio_dir_depth(path).is_some() {
        return None;
    }
    if rest == b"vfio" {
        return Some(Target::VfioContainer);
    }
    let Some(num) = rest.strip_prefix(b"devices/vfio") else {
        return Some(canonical_number(rest).map_or(Target::NoEnt, Target::VfioGroup));
    };
    Some(canonical_number(num).map_or(Target::NoEnt, Target::VfioDevice))
}

/// What the VFS refuses in an `open(flags)` of `target`, an existing character device,
/// before the device's open runs: `O_DIRECTORY` (ENOTDIR), `O_CREAT | O_EXCL` (EEXIST); and a
/// name that is no node (ENOENT).
pub fn open_check(target: Target, flags: i32) -> Result<(), Errno> {
    const O_CREAT: i32 = 0o100;
    const O_EXCL: i32 = 0o200;
    const O_DIRECTORY: i32 = 0o200000;
    if flags & O_DIRECTORY != 0 {
        return Err(20); // ENOTDIR
    }
    if flags & (O_CREAT | O_EXCL) == O_CREAT | O_EXCL {
        return Err(17); // EEXIST
    }
    if target == Target::NoEnt {
        return Err(ENOENT);
    }
    Ok(())
}

/// Major of misc devices.
pub const MISC_MAJOR: u32 = 10;
/// The minor `/dev/iommu` reports (the kernel gives iommufd a dynamic misc minor).
pub const IOMMU_MINOR: u32 = 123;
/// `VFIO_MINOR`: the legacy container's fixed misc minor.
pub const VFIO_MINOR: u32 = 196;
/// The major `/dev/vfio/<group>` nodes report (the kernel's `vfio` region is dynamic).
pub const VFIO_GROUP_MAJOR: u32 = 243;
/// The major `/dev/vfio/devices/vfioN` nodes report (the `vfio-dev` region is dynamic); the
/// sysfs view's `vfio-dev/vfioN/dev` says the same.
pub const VFIO_CDEV_MAJOR: u32 = 511;

/// What `stat` reports for one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStat {
    /// Permission bits (the type is always `S_IFCHR`).
    pub perm: u32,
    /// Device major.
    pub major: u32,
    /// Device minor.
    pub minor: u32,
    /// Inode number (fixed per node).
    pub ino: u64,
}

/// The node `target` names, or None when it does not exist (ENOENT).
pub fn node_stat(engine: &Engine, target: Target) -> Option<NodeStat> {
    let node = |perm, major, minor, kind: u64| NodeStat {
        perm,
        major,
        minor,
        ino: 0x7569_0000_0000 | (kind << 24) | u64::from(minor),
    };
    match target {
        Target::NoEnt => None,
        Target::Iommu => Some(node(0o600, MISC_MAJOR, IOMMU_MINOR, 1)),
        Target::VfioContainer => Some(node(0o666, MISC_MAJOR, VFIO_MINOR, 2)),
        Target::VfioGroup(n) => {
            let index = vfio_groups(engine)
                .iter()
                .position(|&grp| grp == GroupId(n))?;
            Some(node(0o600, VFIO_GROUP_MAJOR, index as u32, 3))
        }
        Target::VfioDevice(n) => {
            ((n as usize) < vfio_devices(engine).len()).then(|| node(0o600, VFIO_CDEV_MAJOR, n, 4))
        }
    }
}

/// The devices `/dev/vfio/devices/vfioN` names: every function bound to `vfio-pci`, in
/// ascending platform order; `vfioN` is the N-th (from 0). The sysfs view numbers its
/// `vfio-dev/vfioN` entries the same way.
pub fn vfio_devices(engine: &Engine) -> Vec<DeviceId> {
    engine.with_platform(|p| {
        p.topology
            .devices()
            .filter(|d| *p.drivers.driver(d.id) == Driver::VfioPci)
            .map(|d| d.id)
            .collect()
    })
}

/// Whether the node `target` names exists on `engine`'s platform now.
pub fn target_exists(engine: &Engine, target: Target) -> bool {
    match target {
        Target::Iommu | Target::VfioContainer => true,
        Target::NoEnt => false,
        Target::VfioDevice(n) => (n as usize) < vfio_devices(engine).len(),
        Target::VfioGroup(n) => vfio_groups(engine).contains(&GroupId(n)),
    }
}

/// What kind of file one of ours is.
pub enum Kind {
    /// An open `/dev/iommu` (or `/dev/vfio/vfio`, an iommufd too).
    Iommufd(IommufdFile),
    /// An open `/dev/vfio/devices/vfioN`.
    Vfio(VfioDeviceFile),
    /// `/dev/vfio/<group>`.
    Group(VfioGroupFile),
    /// A file the engine made for the program ([`crate::FdTable::install`]).
    Engine(Arc<dyn EngineFile>),
}

/// A new file of ours for `target`, opened by the program whose memory is `space` (the
/// node-specific part of `open`).
pub fn make_file(engine: &Arc<Engine>, space: SpaceId, target: Target) -> Result<Kind, Errno> {
    match target {
        Target::NoEnt => Err(ENOENT),
        Target::Iommu => Ok(Kind::Iommufd(IommufdFile::open(engine, space)?)),
        Target::VfioDevice(n) => {
            let dev = *vfio_devices(engine).get(n as usize).ok_or(ENOENT)?;
            Ok(Kind::Vfio(VfioDeviceFile::open(engine, dev)?))
        }
        Target::VfioContainer => Ok(Kind::Iommufd(open_container(engine, space)?)),
        Target::VfioGroup(n) => {
            if !vfio_groups(engine).contains(&GroupId(n)) {
                return Err(ENOENT);
            }
            Ok(Kind::Group(VfioGroupFile::open(engine, GroupId(n))?))
        }
    }
}

/// One of our open files (one open file description: every fd of it shares it).
pub struct OpenFile {
    /// The file.
    pub kind: Kind,
    /// `O_ACCMODE` of the open: read and write on a file opened for the other direction only
    /// are EBADF, as the kernel checks before the file's own operations.
    pub accmode: i32,
    /// The `/dev` node the file was opened from (what `fstat` reports), if any: files the
    /// engine makes have none.
    pub node: Option<Target>,
    /// Whether an ioctl was made on the file (a front-end may treat used files differently
    /// across `exec`).
    pub used: AtomicBool,
}

impl OpenFile {
    /// A file opened with `accmode` from `node`.
    pub fn new(kind: Kind, accmode: i32, node: Option<Target>) -> OpenFile {
        OpenFile {
            kind,
            accmode,
            node,
            used: AtomicBool::new(false),
        }
    }

    /// Whether the file was opened for reading.
    pub fn readable(&self) -> bool {
        self.accmode == O_RDONLY || self.accmode == O_RDWR
    }

    /// Whether the file was opened for writing.
    pub fn writable(&self) -> bool {
        self.accmode == O_WRONLY || self.accmode == O_RDWR
    }

    /// The VFIO device behind the file: a device cdev, or a device file a group handed out
    /// (an engine-made file).
    pub fn vfio(&self) -> Option<&VfioDeviceFile> {
        match &self.kind {
            Kind::Vfio(f) => Some(f),
            Kind::Engine(f) => f.as_any().downcast_ref::<VfioDeviceFile>(),
            _ => None,
        }
    }

    /// `ioctl(fd, request, arg)` on the file.
    pub fn ioctl(&self, caller: &Caller<'_>, request: u64, arg: u64) -> Result<i64, Errno> {
        match (&self.kind, self.vfio()) {
            (Kind::Iommufd(f), _) => f.ioctl(caller, request, arg),
            (Kind::Group(f), _) => f.ioctl(caller, request, arg),
            (_, Some(f)) => f.ioctl(caller, request, arg),
            _ => Err(ENOTTY),
        }
    }

    /// Whether the file is a fault queue (pollable).
    pub fn fault_queue(&self) -> Option<&FaultQueueFile> {
        match &self.kind {
            Kind::Engine(f) => f.as_any().downcast_ref::<FaultQueueFile>(),
            _ => None,
        }
    }
}

/// Largest transfer one `read`/`write`/`pread`/`pwrite` on our files serves; larger requests
/// are served short, as the system calls allow. The data passes through a bounce buffer (so a
/// bad buffer pointer is EFAULT, never a crash), which this bounds.
pub const MAX_IO: usize = 1 << 20;

/// Which side of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// `read`/`pread`.
    Read,
    /// `write`/`pwrite`.
    Write,
}

/// Where a read or write on one of our files happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pos {
    /// At this offset (`pread`/`pwrite`); the file position is untouched.
    At(i64),
    /// At the file position, which is this (`read`/`write`); the caller advances it by the
    /// count served when [`file_io`] says so.
    Stream(i64),
}

/// Serve a read or write of `count` bytes at `buf` in the caller's memory on `file`, at
/// `pos`. Returns the count and whether the file position moves by it.
pub fn file_io(
    caller: &Caller<'_>,
    file: &OpenFile,
    dir: Dir,
    buf: u64,
    count: usize,
    pos: Pos,
) -> Result<(usize, bool), Errno> {
    let allowed = match dir {
        Dir::Read => file.readable(),
        Dir::Write => file.writable(),
    };
    if !allowed {
        return Err(EBADF);
    }
    let count = count.min(MAX_IO);
    if let Some(f) = file.vfio() {
        return vfio_io(caller, f, dir, buf, count, pos);
    }
    match &file.kind {
        // No read or write operations: the VFS answers EINVAL.
        Kind::Iommufd(_) | Kind::Group(_) | Kind::Vfio(_) => Err(EINVAL),
        Kind::Engine(f) => {
            if let Pos::At(_) = pos {
                return Err(ESPIPE);
            }
            if let (Dir::Read, Some(q)) = (dir, f.as_any().downcast_ref::<FaultQueueFile>()) {
                // Group by group into the program's buffer: a group it cannot take stays
                // queued (EFAULT), as the kernel's read.
                return q.read_to(caller, buf, count).map(|n| (n, false));
            }
            let mut bounce = vec![0u8; count];
            match dir {
                Dir::Read => {
                    let n = f.read(caller, &mut bounce)?.min(count);
                    to_caller(caller, buf, &bounce[..n])?;
                    Ok((n, false))
                }
                Dir::Write => {
                    from_caller(caller, buf, &mut bounce)?;
                    f.write(caller, &bounce).map(|n| (n, false))
                }
            }
        }
    }
}

/// A read or write of a VFIO device's regions (see [`file_io`]).
fn vfio_io(
    caller: &Caller<'_>,
    f: &VfioDeviceFile,
    dir: Dir,
    buf: u64,
    count: usize,
    pos: Pos,
) -> Result<(usize, bool), Errno> {
    let at = match pos {
        Pos::At(p) | Pos::Stream(p) if p < 0 => return Err(EINVAL),
        Pos::At(p) | Pos::Stream(p) => p as u64,
    };
    let mut bounce = vec![0u8; count];
    let n = match dir {
        Dir::Read => {
            let n = f.pread(&mut bounce, at)?.min(count);
            to_caller(caller, buf, &bounce[..n])?;
            n
        }
        Dir::Write => {
            from_caller(caller, buf, &mut bounce)?;
            f.pwrite(&bounce, at)?
        }
    };
    Ok((n, matches!(pos, Pos::Stream(_))))
}

/// Copy `data` to the caller's buffer at `va` (EFAULT when it is not writable).
fn to_caller(caller: &Caller<'_>, va: u64, data: &[u8]) -> Result<(), Errno> {
    if data.is_empty() {
        return Ok(());
    }
    caller
        .mem
        .write(UserVa(va), data)
        .map_err(|_| uiommu_core::error::errno::EFAULT)
}

/// Copy the caller's buffer at `va` into `buf` (EFAULT when it is not readable).
fn from_caller(caller: &Caller<'_>, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
    if buf.is_empty() {
        return Ok(());
    }
    caller
        .mem
        .read(UserVa(va), buf)
        .map_err(|_| uiommu_core::error::errno::EFAULT)
}

/// The errno `mmap(len, prot, flags, fd, off)` of `file` fails with: every mmap of our files
/// is refused, as the kernel refuses them (iommufd has no mmap: ENODEV; a VFIO region that is
/// not mmappable: EINVAL; no device model has an mmappable BAR yet).
pub fn mmap_refusal(file: &OpenFile, len: u64, prot: i32, flags: i32, off: i64) -> Errno {
    // The VFS's checks of the open mode come before the file's mmap.
    if !file.readable() || (flags & MAP_SHARED != 0 && prot & PROT_WRITE != 0 && !file.writable()) {
        return EACCES;
    }
    match file.vfio() {
        // No mmap operation on the file.
        None => ENODEV,
        Some(f) => {
            let Ok(off) = u64::try_from(off) else {
                return EINVAL;
            };
            match f.mmap_check(off, len, prot, flags) {
                Err(e) => e,
                // Mapping a BAR would need its accesses trapped. Refuse rather than hand out
                // memory the device never sees.
                Ok(_) => ENODEV,
            }
        }
    }
}
