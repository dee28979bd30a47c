//! What trace lines say about a call, shared by every front-end that traces
//! (`uiommu run --trace`, the preload library) and the host engine's live trace
//! (`uiommu trace`): which kind of file a call is on, the ioctl's name and argument size,
//! its struct decoded, errno names, and the line itself as text (strace-like) or JSON
//! (docs/TRACE.md).
//!
//! Nothing here allocates: lines are written into any [`Write`] (the preload library's is a
//! buffer on the stack, as its ioctl path must be async-signal-safe), and [`Line`] is such a
//! buffer.

use crate::abi as a;
use crate::file::Target;
use crate::vfio_abi as v;
use std::fmt::Write;
use uiommu_platform::topology::Bdf;
use zerocopy::FromBytes;

/// A line being formatted into a fixed buffer; what does not fit is cut.
pub struct Line {
    buf: [u8; 2048],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Line {
        Line {
            buf: [0; 2048],
            len: 0,
        }
    }

    /// The bytes written; a line cut short still ends in a newline when it had one to end.
    pub fn bytes(&mut self) -> &[u8] {
        if self.len == self.buf.len() {
            self.buf[self.len - 1] = b'\n';
        }
        &self.buf[..self.len]
    }
}

impl Default for Line {
    fn default() -> Line {
        Line::new()
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// What a file of ours is, for the trace and for naming its ioctls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `/dev/iommu`.
    Iommufd,
    /// `/dev/vfio/vfio` (an iommufd in the type1 compatibility mode).
    Container,
    /// A VFIO device cdev (or a device fd from a group).
    Device,
    /// `/dev/vfio/<group>`.
    Group,
    /// A fault queue (`IOMMU_FAULT_QUEUE_ALLOC`'s file).
    FaultQueue,
    /// A selftest access (`IOMMU_TEST_OP_CREATE_ACCESS`'s file).
    Access,
    /// Another file the engine made.
    Engine,
    /// Not one of ours.
    Unknown,
}

impl FileKind {
    /// The name in trace lines.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Iommufd => "iommufd",
            FileKind::Container => "vfio-container",
            FileKind::Device => "vfio-device",
            FileKind::Group => "vfio-group",
            FileKind::FaultQueue => "fault-queue",
            FileKind::Access => "test-access",
            FileKind::Engine => "engine-file",
            FileKind::Unknown => "?",
        }
    }

    /// The kind of an open file of the in-process engine.
    pub fn of_open(f: &crate::file::OpenFile) -> FileKind {
        use crate::file::Kind;
        match (f.node, &f.kind) {
            (Some(t), _) => FileKind::of_node(Some(t)),
            (None, Kind::Iommufd(_)) => FileKind::Iommufd,
            (None, Kind::Vfio(_)) => FileKind::Device,
            (None, Kind::Group(_)) => FileKind::Group,
            (None, Kind::Engine(e)) => {
                let any = e.as_any();
                if any.is::<crate::fault::FaultQueueFile>() {
                    FileKind::FaultQueue
                } else if any.is::<crate::selftest::SelftestAccess>() {
                    FileKind::Access
                } else if any.is::<crate::vfio_device::VfioDeviceFile>() {
                    FileKind::Device
                } else {
                    FileKind::Engine
                }
            }
        }
    }

    /// The kind of a file opened from `node` (None: the engine made it).
    pub fn of_node(node: Option<Target>) -> FileKind {
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

/// The call's name and the size of its struct (0: its argument is a number or a string).
pub fn call(kind: FileKind, request: u32) -> (&'static str, usize) {
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
        FileKind::FaultQueue | FileKind::Access | FileKind::Engine | FileKind::Unknown => None,
    };
    found.unwrap_or(("?", 0))
}

/// Write the struct of `request` in `bytes` decoded (`Name { field: value, .. }`).
pub fn decode(out: &mut dyn Write, kind: FileKind, request: u32, bytes: &[u8]) {
    fn show<T: FromBytes + std::fmt::Debug>(out: &mut dyn Write, bytes: &[u8]) -> bool {
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

/// The name of errno `e` (x86-64 numbering), if it is one the engine returns.
pub fn errno_name(e: i32) -> Option<&'static str> {
    Some(match e {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        4 => "EINTR",
        5 => "EIO",
        6 => "ENXIO",
        7 => "E2BIG",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        19 => "ENODEV",
        22 => "EINVAL",
        28 => "ENOSPC",
        34 => "ERANGE",
        35 => "EDEADLK",
        25 => "ENOTTY",
        75 => "EOVERFLOW",
        90 => "EMSGSIZE",
        95 => "EOPNOTSUPP",
        110 => "ETIMEDOUT",
        _ => return None,
    })
}

/// Who made a call, as a line names it.
#[derive(Clone, Copy, Debug)]
pub struct Who {
    /// The caller's pid.
    pub pid: i32,
    /// Its thread (`None` when the tracer does not know it: the host engine's callers).
    pub tid: Option<i32>,
    /// The caller's descriptor number (`None` when the tracer does not know it).
    pub fd: Option<i32>,
}

/// What a traced file stands for beyond its kind, as far as the tracer knows it: the ids a
/// user finds in the other calls' arguments and in `uiommu status`. Written after the kind
/// (`[file 2, 0000:01:00.0, context 1, devid 2]`; JSON: an object of these keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Object {
    /// The host engine's open-file number (as `uiommu status` lists it).
    pub file: Option<u64>,
    /// The PCI function of a device file.
    pub device: Option<Bdf>,
    /// The IOMMU group of a group file.
    pub group: Option<u32>,
    /// The security context: an iommufd's own, the one a device file is bound into, a fault
    /// queue's or an access's.
    pub context: Option<u64>,
    /// A bound device file's device object id (`out_devid`).
    pub devid: Option<u32>,
    /// A fault queue's fault object id (`out_fault_id`).
    pub fault: Option<u32>,
    /// A selftest access's object id.
    pub access: Option<u32>,
}

impl Object {
    /// What `f`, an open file of the engine, stands for (as it is now: a device file's
    /// binding appears once it is bound).
    pub fn of_open(f: &crate::file::OpenFile) -> Object {
        use crate::file::Kind;
        let mut o = Object::default();
        if let Some(v) = f.vfio() {
            o.device = v.bdf();
            if let Some((ctx, devid)) = v.binding() {
                o.context = Some(ctx.0);
                o.devid = Some(devid.0);
            }
            return o;
        }
        match &f.kind {
            Kind::Iommufd(i) => o.context = Some(i.context().id().0),
            Kind::Group(g) => o.group = Some(g.group().0),
            Kind::Engine(e) => {
                let any = e.as_any();
                if let Some(q) = any.downcast_ref::<crate::fault::FaultQueueFile>() {
                    o.context = Some(q.context_id().0);
                    o.fault = Some(q.fault_id().0);
                } else if let Some(a) = any.downcast_ref::<crate::selftest::SelftestAccess>() {
                    o.context = Some(a.context_id().0);
                    o.access = Some(a.access_id().0);
                }
            }
            Kind::Vfio(_) => {}
        }
        o
    }

    /// `self` with the host engine's file number.
    pub fn with_file(self, file: u64) -> Object {
        Object {
            file: Some(file),
            ..self
        }
    }

    fn is_empty(&self) -> bool {
        *self == Object::default()
    }

    /// The ids it has, in the order lines show them: each key and its value.
    fn parts(&self) -> impl Iterator<Item = (&'static str, Id)> {
        let num = |v: Option<u32>| v.map(|n| Id::Num(u64::from(n)));
        [
            ("file", self.file.map(Id::Num)),
            ("device", self.device.map(Id::Device)),
            ("group", num(self.group)),
            ("context", self.context.map(Id::Num)),
            ("devid", num(self.devid)),
            ("fault", num(self.fault)),
            ("access", num(self.access)),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }

    /// As a JSON object: `{"file":2,"device":"0000:01:00.0",...}`.
    fn json(&self, out: &mut dyn Write) {
        let mut sep = "{";
        for (k, v) in self.parts() {
            let _ = match v {
                Id::Num(n) => write!(out, "{sep}\"{k}\":{n}"),
                Id::Device(d) => write!(out, "{sep}\"{k}\":\"{d}\""),
            };
            sep = ",";
        }
        let _ = out.write_str(if sep == "{" { "{}" } else { "}" });
    }
}

/// One id of an [`Object`].
enum Id {
    Num(u64),
    Device(Bdf),
}

/// `file 2, 0000:01:00.0, context 1, devid 2`: the device without its key.
impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.parts().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            match v {
                Id::Num(n) => write!(f, "{sep}{k} {n}")?,
                Id::Device(d) => write!(f, "{sep}{d}")?,
            }
        }
        Ok(())
    }
}

/// One traced call.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    /// The UTC wall time it returned at, in ns since the epoch.
    pub wall_ns: u64,
    /// Who made it.
    pub who: Who,
    /// The file it was made on.
    pub kind: FileKind,
    /// What the file stands for beyond its kind, as far as the tracer knows it.
    pub object: Object,
    /// The call.
    pub op: Op,
    /// The argument struct as the caller passed it (empty: none, or unreadable).
    pub input: &'a [u8],
    /// The struct as the call left it (empty unless it succeeded).
    pub output: &'a [u8],
    /// The result, or the errno.
    pub result: Result<i64, i32>,
    /// How long the call took, in ns.
    pub took_ns: u64,
}

/// The call a [`Record`] is of.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `ioctl(fd, request, arg)`.
    Ioctl {
        /// The request number.
        request: u32,
        /// The argument (a pointer, or a number).
        arg: u64,
    },
    /// `read`/`pread` (`offset` for pread) of `count` bytes into `buf`.
    Read {
        /// The buffer.
        buf: u64,
        /// The count asked.
        count: u64,
        /// pread's offset.
        offset: Option<u64>,
    },
    /// `mmap` of `len` bytes at file offset `offset` (a VFIO device's region and offset in it).
    Mmap {
        /// The length asked.
        len: u64,
        /// `PROT_*`.
        prot: u32,
        /// `MAP_*`.
        flags: u32,
        /// The file offset.
        offset: u64,
    },
    /// `write`/`pwrite`.
    Write {
        /// The buffer.
        buf: u64,
        /// The count asked.
        count: u64,
        /// pwrite's offset.
        offset: Option<u64>,
    },
}

/// What a VFIO device's file offset means: the region (`VFIO_PCI_*_REGION_INDEX` is
/// `offset >> 40`) and the offset in it.
fn region(offset: u64) -> (&'static str, u64) {
    let name = match offset >> 40 {
        0 => "BAR0",
        1 => "BAR1",
        2 => "BAR2",
        3 => "BAR3",
        4 => "BAR4",
        5 => "BAR5",
        6 => "ROM",
        7 => "config",
        8 => "VGA",
        _ => "region?",
    };
    (name, offset & ((1 << 40) - 1))
}

/// The records a fault queue's read returned (`struct iommu_hwpt_pgfault`) or its write was
/// given (`struct iommu_hwpt_page_response`), decoded: `[Rec { .. }, ..]`, a trailing part
/// record as `..`.
fn fault_records(out: &mut dyn Write, write: bool, bytes: &[u8]) {
    fn each<T: FromBytes + std::fmt::Debug>(out: &mut dyn Write, bytes: &[u8]) {
        let mut rest = bytes;
        let mut sep = "";
        while let Ok((t, more)) = T::read_from_prefix(rest) {
            let _ = write!(out, "{sep}{t:?}");
            sep = ", ";
            rest = more;
        }
        if !rest.is_empty() {
            let _ = write!(out, "{sep}..");
        }
    }
    let _ = out.write_str("[");
    if write {
        each::<a::IommuHwptPageResponse>(out, bytes);
    } else {
        each::<a::IommuHwptPgfault>(out, bytes);
    }
    let _ = out.write_str("]");
}

/// How many bytes of a read or write of `count` bytes a line shows: a register access's
/// value (at most 8 bytes), or a fault queue's records (as many as a line holds).
pub fn io_shown(kind: FileKind, count: u64) -> usize {
    match kind {
        FileKind::FaultQueue => usize::try_from(count).unwrap_or(usize::MAX).min(256),
        _ if count <= 8 => count as usize,
        _ => 0,
    }
}

/// Up to 8 bytes as a little-endian number: a register access's value.
fn value(bytes: &[u8]) -> Option<u64> {
    (!bytes.is_empty() && bytes.len() <= 8).then(|| {
        bytes
            .iter()
            .rev()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b))
    })
}

/// Write `rec` as one line (ending in a newline): text like strace's, or a JSON object.
pub fn format(out: &mut dyn Write, rec: &Record<'_>, json: bool) {
    let wall = rec.wall_ns;
    let (name, request, arg) = match rec.op {
        Op::Ioctl { request, arg } => (call(rec.kind, request).0, Some(request), arg),
        Op::Read {
            offset: None, buf, ..
        } => ("read", None, buf),
        Op::Read { buf, .. } => ("pread", None, buf),
        Op::Write {
            offset: None, buf, ..
        } => ("write", None, buf),
        Op::Write { buf, .. } => ("pwrite", None, buf),
        Op::Mmap { .. } => ("mmap", None, 0),
    };
    let kind = rec.kind;
    if json {
        let _ = write!(
            out,
            "{{\"time\":{}.{:06},\"pid\":{}",
            wall / 1_000_000_000,
            (wall % 1_000_000_000) / 1000,
            rec.who.pid
        );
        if let Some(t) = rec.who.tid {
            let _ = write!(out, ",\"tid\":{t}");
        }
        if let Some(fd) = rec.who.fd {
            let _ = write!(out, ",\"fd\":{fd}");
        }
        let _ = write!(out, ",\"file\":\"{}\"", kind.name());
        if !rec.object.is_empty() {
            let _ = out.write_str(",\"object\":");
            rec.object.json(out);
        }
        let _ = write!(out, ",\"call\":\"{name}\"");
        match rec.op {
            Op::Ioctl { .. } => {
                let _ = write!(out, ",\"request\":{},\"arg\":{arg}", request.unwrap_or(0));
                let _ = out.write_str(",\"in\":\"");
                quoted(out, kind, request.unwrap_or(0), rec.input);
                let _ = out.write_str("\"");
            }
            Op::Mmap {
                len,
                prot,
                flags,
                offset,
            } => {
                let _ = write!(
                    out,
                    ",\"len\":{len},\"prot\":{prot},\"flags\":{flags},\"offset\":{offset}"
                );
                if kind == FileKind::Device {
                    let (r, at) = region(offset);
                    let _ = write!(out, ",\"region\":\"{r}\",\"at\":{at}");
                }
            }
            Op::Read { count, offset, .. } | Op::Write { count, offset, .. } => {
                let _ = write!(out, ",\"buf\":{arg},\"count\":{count}");
                if let Some(o) = offset {
                    let _ = write!(out, ",\"offset\":{o}");
                    if kind == FileKind::Device {
                        let (r, at) = region(o);
                        let _ = write!(out, ",\"region\":\"{r}\",\"at\":{at}");
                    }
                }
                let write = matches!(rec.op, Op::Write { .. });
                let moved = if write { rec.input } else { rec.output };
                if kind == FileKind::FaultQueue {
                    if !moved.is_empty() {
                        let _ = out.write_str(",\"records\":\"");
                        fault_records(out, write, moved);
                        let _ = out.write_str("\"");
                    }
                } else if let Some(v) = value(moved) {
                    let _ = write!(out, ",\"value\":{v}");
                }
            }
        }
        match rec.result {
            Ok(v) => {
                let _ = write!(out, ",\"result\":{v}");
                if let Op::Ioctl { request, .. } = rec.op {
                    let _ = out.write_str(",\"out\":\"");
                    quoted(out, kind, request, rec.output);
                    let _ = out.write_str("\"");
                }
            }
            Err(e) => {
                let _ = write!(
                    out,
                    ",\"result\":-1,\"errno\":\"{}\"",
                    errno_name(e).unwrap_or("?")
                );
            }
        }
        let _ = writeln!(out, ",\"ns\":{}}}", rec.took_ns);
        return;
    }
    let secs = wall / 1_000_000_000;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}.{:06} {}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        (wall % 1_000_000_000) / 1000,
        rec.who.pid
    );
    if let Some(t) = rec.who.tid {
        let _ = write!(out, "/{t}");
    }
    if let Some(fd) = rec.who.fd {
        let _ = write!(out, " fd {fd}");
    }
    let _ = write!(out, " {}", kind.name());
    if !rec.object.is_empty() {
        let _ = write!(out, " [{}]", rec.object);
    }
    let _ = write!(out, " {name}(");
    match rec.op {
        Op::Ioctl { request, .. } => {
            if rec.input.is_empty() {
                let _ = write!(out, "{arg:#x}");
            } else {
                decode(out, kind, request, rec.input);
            }
        }
        Op::Mmap {
            len,
            prot,
            flags,
            offset,
        } => {
            let _ = write!(out, "{len:#x}, {prot:#x}, {flags:#x}, ");
            if kind == FileKind::Device {
                let (r, at) = region(offset);
                let _ = write!(out, "{r}+{at:#x}");
            } else {
                let _ = write!(out, "{offset:#x}");
            }
        }
        Op::Read { count, offset, .. } | Op::Write { count, offset, .. } => {
            let _ = write!(out, "{arg:#x}, {count}");
            if let Some(o) = offset {
                if kind == FileKind::Device {
                    let (r, at) = region(o);
                    let _ = write!(out, ", {r}+{at:#x}");
                } else {
                    let _ = write!(out, ", {o:#x}");
                }
            }
            if kind == FileKind::FaultQueue {
                if !rec.input.is_empty() {
                    let _ = out.write_str(", ");
                    fault_records(out, true, rec.input);
                }
            } else if let (Op::Write { .. }, Some(v)) = (rec.op, value(rec.input)) {
                let _ = write!(out, ", value {v:#x}");
            }
        }
    }
    let _ = out.write_str(")");
    match rec.result {
        Ok(v) => {
            let _ = write!(out, " = {v}");
            match rec.op {
                Op::Ioctl { request, .. } if !rec.output.is_empty() => {
                    let _ = out.write_str(" -> ");
                    decode(out, kind, request, rec.output);
                }
                Op::Read { .. } if kind == FileKind::FaultQueue && !rec.output.is_empty() => {
                    let _ = out.write_str(" -> ");
                    fault_records(out, false, rec.output);
                }
                Op::Read { .. } if kind == FileKind::FaultQueue => {}
                Op::Read { .. } => {
                    if let Some(v) = value(rec.output) {
                        let _ = write!(out, " -> value {v:#x}");
                    }
                }
                _ => {}
            }
        }
        Err(e) => match errno_name(e) {
            Some(n) => {
                let _ = write!(out, " = -1 {n}");
            }
            None => {
                let _ = write!(out, " = -1 errno {e}");
            }
        },
    }
    let _ = writeln!(
        out,
        " <{}.{:03} us>",
        rec.took_ns / 1000,
        rec.took_ns % 1000
    );
}

/// The struct decoded, with `"` and `\` escaped for a JSON string.
fn quoted(out: &mut dyn Write, kind: FileKind, request: u32, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let mut inner = Line::new();
    decode(&mut inner, kind, request, bytes);
    for &b in &inner.buf[..inner.len] {
        let _ = match b {
            b'"' => out.write_str("\\\""),
            b'\\' => out.write_str("\\\\"),
            b if !(0x20..0x7f).contains(&b) => out.write_str(" "),
            _ => out.write_char(b as char),
        };
    }
}
