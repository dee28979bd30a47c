//! `uiommu bench`: throughput and cost figures of the engine, through the ioctl ABI (the same
//! decode and dispatch code the preload library runs, called in-process on this process's own
//! memory) and through the library API, beside the real kernel's figures for the same machine
//! class (`bench/kernel-6.12.md` in the repository, hard-coded in [`KERNEL_ANCHORS`]).
//!
//! Every figure "with a domain" uses a paging domain of the selftest mock format (a hot-added
//! mock device, bound and attached), as the kernel's figures do; the same figures with uiommu's
//! radix page table (a dma-engine function) are reported under the `radix.` prefix.
//!
//! Benchmarks are not tests: nothing here passes or fails on a timing. A figure that cannot be
//! measured on this machine (huge pages obtained without `unsafe`, 1M distinct 4 KiB IOVAs in
//! the mock aperture) is reported as `null` with a note saying why.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uiommu_core::{Context, Engine, EngineConfig, HwptFlags, ObjId};
use uiommu_platform::hw::IOTLB_SLOTS;
use uiommu_platform::memory::UserMemory;
use uiommu_platform::pagetable::{Access, Prot};
use uiommu_platform::process_memory::ProcessMemory;
use uiommu_platform::topology::DeviceId;
use uiommu_platform::{Iova, Platform, UserVa};
use uiommu_uapi::abi::{
    IommuIoasAlloc, IommuIoasCopy, IommuIoasMap, IommuIoasUnmap, IOMMU_IOAS_ALLOC, IOMMU_IOAS_COPY,
    IOMMU_IOAS_MAP, IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_READABLE, IOMMU_IOAS_MAP_WRITEABLE,
    IOMMU_IOAS_UNMAP,
};
use uiommu_uapi::iommufd::IommufdFile;
use uiommu_uapi::{Caller, Errno, FdTable};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4 * KIB;

/// The real Linux 6.12 iommufd's figures on this machine class, from
/// `bench/kernel-6.12.md` in the repository ("Benchmark figures", median of 4 boots, mock paging
/// domain). Measured in a QEMU TCG guest (software-emulated CPU: syscalls 3.2x native, random
/// loads 1.9x), so they are slower than a native kernel would be.
pub const KERNEL_ANCHORS: &[(&str, f64)] = &[
    ("abi.map_unmap_4k_ops_per_s.no_domain", 199_860.0),
    ("abi.map_unmap_4k_ops_per_s.one_domain", 55_709.0),
    // The same kernel call, beside the host engine's path (another process calling through
    // the engine).
    ("host.abi.map_unmap_4k_ops_per_s.one_domain", 55_709.0),
    (
        "host_messages.abi.map_unmap_4k_ops_per_s.one_domain",
        55_709.0,
    ),
    (
        "host_seccomp.abi.map_unmap_4k_ops_per_s.one_domain",
        55_709.0,
    ),
    ("map_1g_gib_per_s.small_pages", 4.73),
    ("map_1g_gib_per_s.huge_pages", 6.61),
    ("unmap_1g_gib_per_s.small_pages", 4.33),
    ("unmap_1g_gib_per_s.huge_pages", 4.70),
    ("distinct_4k.100000.map_ops_per_s", 120_000.0),
    ("distinct_4k.100000.unmap_ops_per_s", 158_000.0),
    ("distinct_4k_no_domain.100000.map_ops_per_s", 283_000.0),
    ("distinct_4k_no_domain.100000.unmap_ops_per_s", 349_000.0),
    ("copy_256m_gib_per_s", 4.78),
];

/// The kernel's figure for `key`, if the anchors have one.
pub fn kernel_anchor(key: &str) -> Option<f64> {
    KERNEL_ANCHORS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|&(_, v)| v)
}

/// How big each benchmark is.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// `--quick`: small counts, recorded in the JSON.
    pub quick: bool,
    /// Wall time aimed at per timed run of the repeated-operation figures.
    pub target: Duration,
    /// Timed runs per figure (the median is reported).
    pub runs: usize,
    /// The "1 GiB" map/unmap buffer.
    pub big: u64,
    /// The "256 MiB" IOAS_COPY length.
    pub copy: u64,
    /// Counts of distinct 4 KiB mappings.
    pub distinct: Vec<u64>,
    /// Mappings made for the metadata figure.
    pub metadata_mappings: u64,
    /// Translations per timed run.
    pub translate_iters: u64,
    /// Bytes moved per dma_copy size and timed run.
    pub dma_bytes: u64,
    /// Run only the steps whose names contain one of these (empty: all); see [`STEPS`].
    pub only: Vec<String>,
}

impl Sizes {
    /// The full run.
    pub fn full() -> Sizes {
        Sizes {
            quick: false,
            target: Duration::from_millis(300),
            runs: 5,
            big: GIB,
            copy: 256 * MIB,
            distinct: vec![1_000, 10_000, 100_000, 1_000_000],
            metadata_mappings: 1_000_000,
            translate_iters: 4_000_000,
            dma_bytes: 256 * MIB,
            only: Vec::new(),
        }
    }

    /// `--quick`: the same figures with small counts (CI proves the bench works with it).
    pub fn quick() -> Sizes {
        Sizes {
            quick: true,
            target: Duration::from_millis(60),
            runs: 3,
            big: 64 * MIB,
            copy: 32 * MIB,
            distinct: vec![1_000, 10_000],
            metadata_mappings: 100_000,
            translate_iters: 500_000,
            dma_bytes: 16 * MIB,
            only: Vec::new(),
        }
    }

    /// Tiny counts, for the unit test in a debug build.
    #[cfg(test)]
    pub fn tiny() -> Sizes {
        Sizes {
            quick: true,
            target: Duration::from_millis(2),
            runs: 1,
            big: 32 * MIB,
            copy: 2 * MIB,
            distinct: vec![100],
            metadata_mappings: 1_000,
            translate_iters: 20_000,
            dma_bytes: 2 * MIB,
            only: Vec::new(),
        }
    }
}

/// The unit of a figure.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Operations (or pairs) per second.
    OpsPerS,
    /// GiB per second.
    GibPerS,
    /// Nanoseconds.
    Ns,
    /// Bytes.
    Bytes,
    /// A plain ratio.
    Ratio,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Unit::OpsPerS => "ops/s",
            Unit::GibPerS => "GiB/s",
            Unit::Ns => "ns",
            Unit::Bytes => "bytes",
            Unit::Ratio => "x",
        }
    }
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Figure {
    /// The JSON key, dotted.
    pub key: String,
    /// The value; `None` when it could not be measured here (see `note`).
    pub value: Option<f64>,
    /// Its unit.
    pub unit: Unit,
    /// What to know when reading it.
    pub note: Option<String>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// The figures, in the order measured.
    pub figures: Vec<Figure>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Curves for the plots ([`crate::plot`]).
    pub series: Vec<Series>,
}

/// One curve: a name and (x, y) points.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Which plot it belongs to: [`PER_OP_PLOT`] or [`DMA_PLOT`].
    pub plot: &'static str,
    /// The legend entry.
    pub name: String,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// Per-operation cost (ns) against the number of mappings present.
pub const PER_OP_PLOT: &str = "per_op_cost";
/// Copy throughput (GiB/s) against transfer size (bytes).
pub const DMA_PLOT: &str = "dma_throughput";

/// Operations timed together for one point of the per-op cost curve.
const COST_CHUNK: u64 = 1000;

impl Report {
    fn add(&mut self, key: impl Into<String>, value: Option<f64>, unit: Unit) {
        self.figures.push(Figure {
            key: key.into(),
            value,
            unit,
            note: None,
        });
    }

    fn note(&mut self, key: impl Into<String>, value: Option<f64>, unit: Unit, note: String) {
        self.figures.push(Figure {
            key: key.into(),
            value,
            unit,
            note: Some(note),
        });
    }

    /// The figure named `key`.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }

    /// The readable table: figure, uiommu, unit, kernel 6.12 (where the anchors have it) and
    /// uiommu / kernel; notes after it.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self
            .figures
            .iter()
            .map(|f| f.key.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "{:<width$}  {:>14}  {:<5}  {:>14}  {:>9}",
            "figure", "uiommu", "unit", "kernel 6.12", "ratio"
        );
        let _ = writeln!(out, "{}", "-".repeat(width + 54));
        let mut notes = Vec::new();
        for f in &self.figures {
            let value = f.value.map_or("n/a".to_string(), fmt_num);
            let anchor = kernel_anchor(&f.key);
            let kernel = anchor.map_or(String::new(), fmt_num);
            let ratio = match (f.value, anchor) {
                (Some(v), Some(k)) if k > 0.0 => format!("{:.2}x", v / k),
                _ => String::new(),
            };
            let mark = if let Some(n) = &f.note {
                notes.push((f.key.clone(), n.clone()));
                format!(" [{}]", notes.len())
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{:<width$}  {:>14}  {:<5}  {:>14}  {:>9}{}",
                f.key,
                value,
                f.unit.label(),
                kernel,
                ratio,
                mark
            );
        }
        let _ = writeln!(
            out,
            "\nkernel 6.12: the real kernel in a QEMU TCG guest of this machine class (emulated \
             CPU; syscalls 3.2x native), bench/kernel-6.12.md. Ratios compare \
             like with like only when this run was in such a guest too (bench/vm/run.sh); run \
             natively, they overstate uiommu. ratio = uiommu / kernel (higher is better except ns \
             and bytes)."
        );
        for (i, (key, n)) in notes.iter().enumerate() {
            let _ = writeln!(out, "[{}] {key}: {n}", i + 1);
        }
        let _ = writeln!(
            out,
            "{} run, {:.1} s",
            if self.quick { "quick" } else { "full" },
            self.elapsed.as_secs_f64()
        );
        out
    }

    /// The figures as JSON: the dotted keys as nested objects, `null` for figures not
    /// measured; `quick`, `elapsed_s` and `notes` (key → text) beside them.
    pub fn json(&self) -> String {
        let mut root = Node::Obj(Vec::new());
        root.insert("quick", Node::Raw(self.quick.to_string()));
        root.insert("elapsed_s", Node::Raw(json_num(self.elapsed.as_secs_f64())));
        for f in &self.figures {
            let mut node = &mut root;
            let parts: Vec<&str> = f.key.split('.').collect();
            let (last, path) = parts.split_last().unwrap_or((&"", &[]));
            for p in path {
                node = node.child(p);
            }
            node.insert(last, Node::Raw(f.value.map_or("null".into(), json_num)));
        }
        let mut notes = Node::Obj(Vec::new());
        for f in &self.figures {
            if let Some(n) = &f.note {
                notes.insert(&f.key, Node::Raw(json_str(n)));
            }
        }
        root.insert("notes", notes);
        let mut out = String::new();
        root.write(&mut out, 0);
        out.push('\n');
        out
    }
}

/// A JSON value under construction (objects keep insertion order).
enum Node {
    Raw(String),
    Obj(Vec<(String, Node)>),
}

impl Node {
    fn insert(&mut self, key: &str, v: Node) {
        if let Node::Obj(items) = self {
            match items.iter_mut().find(|(k, _)| k == key) {
                Some((_, slot)) => *slot = v,
                None => items.push((key.to_string(), v)),
            }
        }
    }

    fn child(&mut self, key: &str) -> &mut Node {
        if !matches!(self, Node::Obj(_)) {
            *self = Node::Obj(Vec::new());
        }
        let Node::Obj(items) = self else {
            unreachable!("made an object just above")
        };
        let i = match items.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                items.push((key.to_string(), Node::Obj(Vec::new())));
                items.len() - 1
            }
        };
        if !matches!(items[i].1, Node::Obj(_)) {
            items[i].1 = Node::Obj(Vec::new());
        }
        &mut items[i].1
    }

    fn write(&self, out: &mut String, depth: usize) {
        match self {
            Node::Raw(s) => out.push_str(s),
            Node::Obj(items) if items.is_empty() => out.push_str("{}"),
            Node::Obj(items) => {
                out.push_str("{\n");
                for (i, (k, v)) in items.iter().enumerate() {
                    out.push_str(&"  ".repeat(depth + 1));
                    out.push_str(&json_str(k));
                    out.push_str(": ");
                    v.write(out, depth + 1);
                    if i + 1 < items.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str(&"  ".repeat(depth));
                out.push('}');
            }
        }
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        // Four significant decimals are more than the measurement has.
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        "null".to_string()
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1000.0 {
        // Thousands separators for rates.
        let n = v.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && i % 3 == digits.len() % 3 {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn gib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / GIB as f64 / d.as_secs_f64().max(1e-9)
}

fn per_s(ops: u64, d: Duration) -> f64 {
    ops as f64 / d.as_secs_f64().max(1e-9)
}

/// A page-aligned buffer of this process's memory, every page touched (pre-faulted).
struct Buffer {
    backing: Vec<u8>,
    skip: usize,
    len: usize,
}

impl Buffer {
    /// `len` bytes aligned to `align` (a power of two), every page written once.
    fn new(len: u64, align: u64) -> Buffer {
        let len = len as usize;
        let align = align as usize;
        let mut backing = vec![0u8; len + align];
        let base = backing.as_ptr() as usize;
        let skip = (align - base % align) % align;
        for b in backing[skip..skip + len].iter_mut().step_by(PAGE as usize) {
            *b = 1;
        }
        Buffer { backing, skip, len }
    }

    /// The buffer's user address.
    fn va(&self) -> u64 {
        black_box(self.backing.as_ptr()) as usize as u64 + self.skip as u64
    }

    fn pages(&self) -> u64 {
        self.len as u64 / PAGE
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.backing[self.skip..self.skip + self.len]
    }
}

/// `AnonHugePages` of /proc/self/smaps_rollup, in bytes.
fn anon_huge_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * KIB)
}

/// A pre-faulted buffer of `len` bytes on 2 MiB pages, and what backs it: transparent huge
/// pages when the kernel gives them (checked in AnonHugePages, as the kernel's THP figure is),
/// else hugetlb pages reserved in /proc/sys/vm/nr_hugepages; `Err` saying why neither.
fn huge_buffer(len: u64, thp_mode: &str) -> Result<(uiommu_sys::MappedBuffer, String), String> {
    use uiommu_sys::{Backing, MappedBuffer};
    let touch = |b: &mut MappedBuffer| {
        for x in b.as_mut_slice().iter_mut().step_by(PAGE as usize) {
            *x = 1;
        }
    };
    let before = anon_huge_bytes();
    let mut thp_got = 0;
    if let Ok(mut b) = MappedBuffer::new(len as usize, Backing::Thp) {
        touch(&mut b);
        thp_got = anon_huge_bytes().saturating_sub(before);
        // Most of it on huge pages (the kernel may fall back for a few).
        if thp_got >= len * 9 / 10 {
            return Ok((
                b,
                format!(
                    "transparent huge pages ({} of {} MiB on 2 MiB pages)",
                    thp_got.min(len) / MIB,
                    len / MIB
                ),
            ));
        }
    }
    match MappedBuffer::new(len as usize, Backing::Hugetlb2M) {
        Ok(mut b) => {
            touch(&mut b);
            Ok((b, "hugetlb 2 MiB pages (MAP_HUGETLB)".into()))
        }
        Err(e) => Err(format!(
            "transparent huge pages are {thp_mode} here and madvise(MADV_HUGEPAGE) got {} of {} \
             MiB on huge pages; MAP_HUGETLB failed ({e}): reserve {} pages in \
             /proc/sys/vm/nr_hugepages to measure",
            thp_got / MIB,
            len / MIB,
            len / (2 * MIB)
        )),
    }
}

/// A caller with no other open files.
struct NoFds;

impl FdTable for NoFds {
    fn iommufd(&self, _fd: i32) -> Result<Context, Errno> {
        Err(9)
    }
    fn eventfd(&self, _fd: i32) -> Result<Box<dyn Fn() + Send + Sync>, Errno> {
        Err(9)
    }
}

/// Which domains the devices of a set-up IOAS get.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Domains {
    /// No device attached: nothing is pinned or mapped into a page table.
    None,
    /// `n` mock devices (selftest mock format), each with a paging domain of its own.
    Mock(usize),
    /// `n` dma-engine functions (radix format), each with a paging domain of its own.
    Radix(usize),
}

impl Domains {
    /// A fixed IOVA inside the format's aperture for the 4 KiB and distinct figures.
    fn base(self) -> u64 {
        match self {
            // The mock aperture is 16 MiB ..= 2 GiB - 1.
            Domains::None | Domains::Mock(_) => 16 * MIB,
            Domains::Radix(_) => 4 * GIB,
        }
    }

    /// IOVA room the format gives from `base()`.
    fn room(self) -> u64 {
        match self {
            Domains::Mock(_) => 2 * GIB - 16 * MIB,
            Domains::None | Domains::Radix(_) => 1 << 40,
        }
    }
}

const RADIX_DEVICES: [&str; 2] = ["dma0", "dma1"];

/// An engine on this process's memory, an iommufd file and one IOAS with its devices.
struct Env {
    engine: Arc<Engine>,
    pm: ProcessMemory,
    file: IommufdFile,
    ioas: u32,
    /// The platform devices attached, with their HWPTs.
    devices: Vec<(DeviceId, ObjId)>,
}

fn config() -> EngineConfig {
    // As root: pins are not accounted (a 1 GiB map needs more than the default 8 MiB limit).
    EngineConfig {
        memlock_limit_pages: None,
        cap_ipc_lock: true,
        cap_sys_resource: true,
    }
}

fn fail<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e:?}")
}

impl Env {
    fn new(domains: Domains) -> Result<Env, String> {
        Env::with_memory(domains, ProcessMemory::this())
    }

    /// An engine whose one client space is `pm` (this process's memory, holding or not).
    fn with_memory(domains: Domains, pm: ProcessMemory) -> Result<Env, String> {
        let engine = Engine::new(Platform::builtin(), config()).map_err(fail("engine"))?;
        let space = engine.add_space(Arc::new(pm));
        let file = IommufdFile::open(&engine, space).map_err(fail("open"))?;
        let mut env = Env {
            engine,
            pm,
            file,
            ioas: 0,
            devices: Vec::new(),
        };
        env.ioas = env.ioas_alloc()?;
        env.attach(env.ioas, domains)?;
        Ok(env)
    }

    /// Attach devices for `domains` to `ioas`, each with a domain of its own.
    fn attach(&mut self, ioas: u32, domains: Domains) -> Result<(), String> {
        let (n, radix) = match domains {
            Domains::None => return Ok(()),
            Domains::Mock(n) => (n, false),
            Domains::Radix(n) => (n, true),
        };
        let ctx = self.file.context().clone();
        for _ in 0..n {
            let dev = if radix {
                let name = RADIX_DEVICES
                    .iter()
                    .copied()
                    .find(|name| {
                        let d = self.engine.with_platform(|p| p.topology.find_name(name));
                        d.is_some_and(|d| self.devices.iter().all(|&(x, _)| x != d))
                    })
                    .ok_or("no free dma-engine function")?;
                self.engine
                    .with_platform(|p| p.topology.find_name(name))
                    .ok_or("dma-engine vanished")?
            } else {
                self.engine
                    .add_mock_device(0)
                    .map_err(fail("add_mock_device"))?
            };
            let dev_id = ctx.device_bind(dev).map_err(fail("bind"))?;
            // An explicit HWPT per device: attaching to the IOAS would share a compatible one.
            let hwpt = ctx
                .hwpt_alloc_paging(dev_id, ObjId(ioas), HwptFlags::default())
                .map_err(fail("hwpt_alloc"))?;
            ctx.device_attach(dev_id, hwpt).map_err(fail("attach"))?;
            self.devices.push((dev, hwpt));
        }
        Ok(())
    }

    fn ctx(&self) -> &Context {
        self.file.context()
    }

    /// One ioctl with `cmd` (in this process's memory) as its argument.
    #[inline]
    fn ioctl<T>(&self, request: u32, cmd: &mut T) -> Result<i64, Errno> {
        let arg = black_box(cmd as *mut T) as usize as u64;
        let r = self.file.ioctl(
            &Caller {
                mem: &self.pm,
                fds: &NoFds,
            },
            u64::from(request),
            arg,
        );
        black_box(cmd);
        r
    }

    fn ioas_alloc(&self) -> Result<u32, String> {
        let mut cmd = IommuIoasAlloc {
            size: 12,
            flags: 0,
            out_ioas_id: 0,
        };
        self.ioctl(IOMMU_IOAS_ALLOC, &mut cmd)
            .map_err(fail("IOAS_ALLOC"))?;
        Ok(black_box(&cmd).out_ioas_id)
    }

    #[inline]
    fn map(&self, ioas: u32, uva: u64, len: u64, iova: u64) -> Result<(), String> {
        let mut cmd = IommuIoasMap {
            size: 40,
            flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
            ioas_id: ioas,
            reserved: 0,
            user_va: uva,
            length: len,
            iova,
        };
        self.ioctl(IOMMU_IOAS_MAP, &mut cmd)
            .map(drop)
            .map_err(|e| format!("IOAS_MAP {len:#x} at {iova:#x}: errno {e}"))
    }

    #[inline]
    fn unmap(&self, ioas: u32, iova: u64, len: u64) -> Result<(), String> {
        let mut cmd = IommuIoasUnmap {
            size: 24,
            ioas_id: ioas,
            iova,
            length: len,
        };
        self.ioctl(IOMMU_IOAS_UNMAP, &mut cmd)
            .map(drop)
            .map_err(|e| format!("IOAS_UNMAP {len:#x} at {iova:#x}: errno {e}"))
    }

    fn copy(&self, dst: u32, src: u32, iova: u64, len: u64, dst_iova: u64) -> Result<(), String> {
        let mut cmd = IommuIoasCopy {
            size: 40,
            flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
            dst_ioas_id: dst,
            src_ioas_id: src,
            length: len,
            dst_iova,
            src_iova: iova,
        };
        self.ioctl(IOMMU_IOAS_COPY, &mut cmd)
            .map(drop)
            .map_err(|e| format!("IOAS_COPY {len:#x}: errno {e}"))
    }

    /// Bytes of the page tables of the attached devices' domains.
    fn table_bytes(&self) -> Result<u64, String> {
        let mut total = 0;
        for &(_, hwpt) in &self.devices {
            let dom = self.ctx().hwpt_domain(hwpt).map_err(fail("hwpt_domain"))?;
            total += self.engine.with_platform(|p| {
                p.iommu
                    .page_table(dom)
                    .map_or(0, |pt: &dyn uiommu_platform::pagetable::PageTable| {
                        pt.table_bytes()
                    })
            });
        }
        Ok(total)
    }
}

/// The runner: sizes and the shared, pre-faulted big buffer.
struct Bench {
    sizes: Sizes,
    big: Buffer,
}

impl Bench {
    /// Operations per second of `f(n)` (n operations, returning their time): calibrated so a
    /// run takes about `target`, median of `runs` runs.
    fn rate(&self, mut f: impl FnMut(u64) -> Result<Duration, String>) -> Result<f64, String> {
        let mut n = 8u64;
        let quarter = self.sizes.target / 4;
        let d = loop {
            let d = f(n)?;
            if d >= quarter || n >= 1 << 32 {
                break d;
            }
            n *= 2;
        };
        let per = d.as_secs_f64() / n as f64;
        let n = ((self.sizes.target.as_secs_f64() / per.max(1e-12)) as u64).max(1);
        let mut rates = Vec::new();
        for _ in 0..self.sizes.runs {
            rates.push(per_s(n, f(n)?));
        }
        Ok(median(rates))
    }

    fn map_unmap_4k(&self, r: &mut Report) -> Result<(), String> {
        let cases = [
            ("no_domain", Domains::None, false),
            ("one_domain", Domains::Mock(1), false),
            ("two_domains", Domains::Mock(2), false),
            ("one_domain", Domains::Radix(1), true),
            ("two_domains", Domains::Radix(2), true),
        ];
        let uva = self.big.va();
        for (name, domains, radix) in cases {
            let env = Env::new(domains)?;
            let iova = domains.base();
            let prefix = if radix { "radix." } else { "" };
            let abi = self.rate(|n| {
                let t = Instant::now();
                for _ in 0..n {
                    env.map(env.ioas, uva, PAGE, iova)?;
                    env.unmap(env.ioas, iova, PAGE)?;
                }
                Ok(t.elapsed())
            })?;
            r.add(
                format!("{prefix}abi.map_unmap_4k_ops_per_s.{name}"),
                Some(abi),
                Unit::OpsPerS,
            );
            let ctx = env.ctx();
            let ioas = ObjId(env.ioas);
            let lib = self.rate(|n| {
                let t = Instant::now();
                for _ in 0..n {
                    ctx.ioas_map(ioas, UserVa(uva), PAGE, Some(Iova(iova)), Prot::RW)
                        .map_err(fail("ioas_map"))?;
                    ctx.ioas_unmap(ioas, Iova(iova), PAGE)
                        .map_err(fail("ioas_unmap"))?;
                }
                Ok(t.elapsed())
            })?;
            r.add(
                format!("{prefix}lib.map_unmap_4k_ops_per_s.{name}"),
                Some(lib),
                Unit::OpsPerS,
            );
        }
        Ok(())
    }

    /// IOAS_MAP+UNMAP of 4 KiB with a mock domain, called by another process through the host
    /// engine ([`crate::bench_host`]): through a ring (the preload front-end's default), a
    /// message per call, and raw system calls under the seccomp front-end.
    fn host_map_unmap_4k(&self, r: &mut Report) -> Result<(), String> {
        use crate::bench_host::Path;
        let paths = [Path::Ring, Path::Message, Path::Seccomp, Path::Null];
        let rates = crate::bench_host::measure(self.sizes.target, self.sizes.runs, &paths)?;
        let spin = uiommu_proto::DEFAULT_SPIN_US;
        for (path, rate) in paths.iter().zip(rates) {
            let (key, how) = match path {
                Path::Ring => (
                    "host.abi.map_unmap_4k_ops_per_s.one_domain",
                    format!(
                        "another process through the host engine, the preload front-end's \
                         path: each call through a ring shared with the engine (both sides \
                         polling {spin} us before sleeping)"
                    ),
                ),
                Path::Message => (
                    "host_messages.abi.map_unmap_4k_ops_per_s.one_domain",
                    format!(
                        "the same with rings off (UIOMMU_RING=0): a message per call, both \
                         sides polling {spin} us"
                    ),
                ),
                Path::Seccomp => (
                    "host_seccomp.abi.map_unmap_4k_ops_per_s.one_domain",
                    "the same calls as raw system calls under the seccomp front-end \
                     (`uiommu run --front-end seccomp`): each stopped by the filter and \
                     served through the kernel's notification"
                        .to_string(),
                ),
                Path::Null => (
                    "host.abi.option_get_pairs_per_s",
                    "what bounds the ring path: pairs of IOMMU_OPTION gets (calls that do \
                     almost nothing) through the same ring, so the pair's transport, look-ups \
                     and dispatch without a map's and an unmap's work"
                        .to_string(),
                ),
            };
            match rate {
                Ok(v) => r.note(key, Some(v), Unit::OpsPerS, how),
                Err(why) => r.note(key, None, Unit::OpsPerS, format!("not measured: {why}")),
            }
        }
        r.note(
            "threads.handover_round_trips_per_s",
            Some(crate::bench_host::handover_round_trips_per_s(
                self.sizes.target,
                self.sizes.runs,
            )),
            Unit::OpsPerS,
            "the floor under both: two threads of one process handing a word back and forth, \
             each spinning until it is its turn (a ring call is one such round trip plus the \
             work on each side)"
                .to_string(),
        );
        Ok(())
    }

    fn map_1g(&self, r: &mut Report) -> Result<(), String> {
        let len = self.sizes.big;
        let runs = self.sizes.runs.min(3);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let thp_mode = thp
            .split_whitespace()
            .find(|w| w.starts_with('['))
            .unwrap_or("[unknown]")
            .to_string();
        for (prefix, domains) in [("", Domains::Mock(1)), ("radix.", Domains::Radix(1))] {
            let env = Env::new(domains)?;
            // 1 GiB: inside the mock aperture, 2 MiB aligned (the buffer is too).
            let iova = GIB.min(domains.room() - len);
            let iova = iova & !(2 * MIB - 1);
            let (mut maps, mut unmaps) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let t = Instant::now();
                env.map(env.ioas, self.big.va(), len, iova)?;
                maps.push(gib_per_s(len, t.elapsed()));
                let t = Instant::now();
                env.unmap(env.ioas, iova, len)?;
                unmaps.push(gib_per_s(len, t.elapsed()));
            }
            let size_note = if self.sizes.quick {
                format!(" Quick run: {} MiB, not 1 GiB.", len / MIB)
            } else {
                String::new()
            };
            r.note(
                format!("{prefix}map_1g_gib_per_s.small_pages"),
                Some(median(maps)),
                Unit::GibPerS,
                format!(
                    "one IOAS_MAP of a pre-faulted buffer (4 KiB pages, 2 MiB-aligned), median \
                     of {runs}.{size_note}"
                ),
            );
            r.add(
                format!("{prefix}unmap_1g_gib_per_s.small_pages"),
                Some(median(unmaps)),
                Unit::GibPerS,
            );
            let (map_huge, unmap_huge, why) = match huge_buffer(len, &thp_mode) {
                Ok((buf, how)) => {
                    let (mut maps, mut unmaps) = (Vec::new(), Vec::new());
                    for _ in 0..runs {
                        let t = Instant::now();
                        env.map(env.ioas, buf.addr(), len, iova)?;
                        maps.push(gib_per_s(len, t.elapsed()));
                        let t = Instant::now();
                        env.unmap(env.ioas, iova, len)?;
                        unmaps.push(gib_per_s(len, t.elapsed()));
                    }
                    (
                        Some(median(maps)),
                        Some(median(unmaps)),
                        format!(
                            "one IOAS_MAP of a pre-faulted buffer backed by {how}, median of \
                             {runs}.{size_note}"
                        ),
                    )
                }
                Err(why) => (None, None, format!("not measured: {why}")),
            };
            r.note(
                format!("{prefix}map_1g_gib_per_s.huge_pages"),
                map_huge,
                Unit::GibPerS,
                why.clone(),
            );
            r.note(
                format!("{prefix}unmap_1g_gib_per_s.huge_pages"),
                unmap_huge,
                Unit::GibPerS,
                why,
            );
        }
        Ok(())
    }

    fn distinct(&self, r: &mut Report) -> Result<(), String> {
        let pages = self.big.pages();
        let va = self.big.va();
        for (prefix, domains) in [
            ("", Domains::Mock(1)),
            ("radix.", Domains::Radix(1)),
            ("", Domains::None),
        ] {
            let family = if domains == Domains::None {
                "distinct_4k_no_domain"
            } else {
                "distinct_4k"
            };
            for &n in &self.sizes.distinct {
                let key = format!("{prefix}{family}.{n}");
                if n * PAGE > domains.room() {
                    let why = format!(
                        "not measured: {n} distinct 4 KiB IOVAs do not fit the mock aperture \
                         (16 MiB ..= 2 GiB - 1 holds {} pages); see radix.{family}.{n}",
                        domains.room() / PAGE
                    );
                    r.note(
                        format!("{key}.map_ops_per_s"),
                        None,
                        Unit::OpsPerS,
                        why.clone(),
                    );
                    r.note(format!("{key}.unmap_ops_per_s"), None, Unit::OpsPerS, why);
                    continue;
                }
                let env = Env::new(domains)?;
                let base = domains.base();
                // Time every COST_CHUNK operations too: the per-op cost as mappings pile up
                // (map: x = mappings present after the chunk) and drain (unmap: x = mappings
                // present before it).
                let (mut map_cost, mut unmap_cost) = (Vec::new(), Vec::new());
                let t = Instant::now();
                let mut mark = t;
                for i in 0..n {
                    env.map(env.ioas, va + (i % pages) * PAGE, PAGE, base + i * PAGE)?;
                    if (i + 1).is_multiple_of(COST_CHUNK) {
                        let now = Instant::now();
                        let ns = (now - mark).as_nanos() as f64 / COST_CHUNK as f64;
                        map_cost.push(((i + 1) as f64, ns));
                        mark = now;
                    }
                }
                let map = per_s(n, t.elapsed());
                let t = Instant::now();
                let mut mark = t;
                for i in 0..n {
                    env.unmap(env.ioas, base + i * PAGE, PAGE)?;
                    if (i + 1).is_multiple_of(COST_CHUNK) {
                        let now = Instant::now();
                        let ns = (now - mark).as_nanos() as f64 / COST_CHUNK as f64;
                        unmap_cost.push(((n - i - 1 + COST_CHUNK) as f64, ns));
                        mark = now;
                    }
                }
                let unmap = per_s(n, t.elapsed());
                unmap_cost.reverse();
                let largest = self
                    .sizes
                    .distinct
                    .iter()
                    .filter(|&&m| m * PAGE <= domains.room())
                    .max()
                    == Some(&n);
                if largest && map_cost.len() >= 6 {
                    let label = match domains {
                        Domains::None => "no domain",
                        Domains::Mock(_) => "mock domain",
                        Domains::Radix(_) => "radix domain",
                    };
                    for (what, cost) in [("map", &map_cost), ("unmap", &unmap_cost)] {
                        // Cost near N over cost near the first 1,000: medians of three chunks.
                        let first = median(cost.iter().take(3).map(|p| p.1).collect());
                        let last = median(cost.iter().rev().take(3).map(|p| p.1).collect());
                        r.note(
                            format!("{key}.per_op_growth.{what}"),
                            Some(last / first),
                            Unit::Ratio,
                            format!(
                                "ns per {what} with ~{n} mappings present over ns per {what} with \
                                 ~{COST_CHUNK}: medians of three {COST_CHUNK}-op chunks at each \
                                 end ({last:.0} ns / {first:.0} ns)"
                            ),
                        );
                        r.series.push(Series {
                            plot: PER_OP_PLOT,
                            name: format!("{what}, {label}"),
                            points: cost.clone(),
                        });
                    }
                }
                let mut note = String::from("one run: all mapped, then all unmapped one by one");
                if n > pages {
                    let _ = write!(
                        note,
                        "; user pages reused every {pages} mappings (the buffer's size)"
                    );
                }
                r.note(
                    format!("{key}.map_ops_per_s"),
                    Some(map),
                    Unit::OpsPerS,
                    note,
                );
                r.add(format!("{key}.unmap_ops_per_s"), Some(unmap), Unit::OpsPerS);
            }
        }
        Ok(())
    }

    fn copy(&self, r: &mut Report) -> Result<(), String> {
        let len = self.sizes.copy;
        let runs = self.sizes.runs.min(3);
        for (prefix, domains) in [("", Domains::Mock(1)), ("radix.", Domains::Radix(1))] {
            let mut env = Env::new(domains)?;
            let dst = env.ioas_alloc()?;
            env.attach(dst, domains)?;
            let iova = GIB;
            env.map(env.ioas, self.big.va(), len, iova)?;
            let mut rates = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                env.copy(dst, env.ioas, iova, len, iova)?;
                rates.push(gib_per_s(len, t.elapsed()));
                env.unmap(dst, iova, len)?;
            }
            let quick = if self.sizes.quick {
                format!(" Quick run: {} MiB, not 256 MiB.", len / MIB)
            } else {
                String::new()
            };
            r.note(
                format!("{prefix}copy_256m_gib_per_s"),
                Some(median(rates)),
                Unit::GibPerS,
                format!("a domain on each IOAS, median of {runs}.{quick}"),
            );
        }
        Ok(())
    }

    fn translate(&self, r: &mut Report) -> Result<(), String> {
        // 4 slots' worth of distinct IOTLB granules, visited in a cycle: each visit finds its
        // slot taken by another granule, so every translation walks the table.
        let granules = 4 * IOTLB_SLOTS as u64;
        for (prefix, domains, granule) in [
            ("", Domains::Mock(1), 2 * KIB),
            ("radix.", Domains::Radix(1), PAGE),
        ] {
            let env = Env::new(domains)?;
            let len = granules * granule;
            let iova = GIB;
            env.map(env.ioas, self.big.va(), len, iova)?;
            let dev = env.devices.first().map(|d| d.0).ok_or("no device")?;
            let iters = self.sizes.translate_iters;
            let mask = granules - 1;
            let run = |stride: u64, translate: bool| -> Result<(f64, u64, u64), String> {
                env.engine.with_platform(|p| {
                    let rid = p.dma_rid(dev);
                    p.iommu.flush_iotlb();
                    let before = p.iommu.iotlb_stats();
                    let t = Instant::now();
                    for i in 0..iters {
                        let at = Iova(black_box(iova + (i & mask) * stride));
                        if translate {
                            let tr = p.iommu.translate(dev, rid, at, Access::Read);
                            if tr.is_err() {
                                return Err(format!("translate {:#x} faulted", at.raw()));
                            }
                            black_box(tr.ok());
                        }
                    }
                    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
                    let after = p.iommu.iotlb_stats();
                    Ok((ns, after.hits - before.hits, after.misses - before.misses))
                })
            };
            let runs = self.sizes.runs.min(3);
            let mut results = Vec::new();
            for (name, stride) in [("iotlb_hit", 0), ("iotlb_miss", granule)] {
                let (mut ns, mut loops) = (Vec::new(), Vec::new());
                let (mut hits, mut misses) = (0, 0);
                for _ in 0..runs {
                    let (t, h, m) = run(stride, true)?;
                    ns.push(t);
                    (hits, misses) = (h, m);
                    loops.push(run(stride, false)?.0);
                }
                let (ns, lp) = (median(ns), median(loops));
                results.push((name, (ns - lp).max(0.0), ns, lp, hits, misses));
            }
            for (name, net, gross, lp, hits, misses) in results {
                r.note(
                    format!("{prefix}translate_ns.{name}"),
                    Some(net),
                    Unit::Ns,
                    format!(
                        "Iommu::translate inside one with_platform (no engine lock per call), \
                         {iters} calls, median of {runs}: {gross:.2} ns per call minus \
                         {lp:.2} ns of loop; last run {hits} hits, {misses} misses"
                    ),
                );
            }
        }
        Ok(())
    }

    fn dma_copy(&self, r: &mut Report) -> Result<(), String> {
        let env = Env::new(Domains::Radix(1))?;
        let dev = env.devices.first().map(|d| d.0).ok_or("no device")?;
        let max = MIB;
        let mut src = Buffer::new(max, 2 * MIB);
        let dst = Buffer::new(max, 2 * MIB);
        for (i, b) in src.bytes().iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let (src_iova, dst_iova) = (GIB, GIB + 2 * MIB);
        env.map(env.ioas, src.va(), max, src_iova)?;
        env.map(env.ioas, dst.va(), max, dst_iova)?;
        let driver = uiommu::dma_engine::DmaEngineDriver::new(&env.engine, dev);
        // One checked copy: the bytes arrive.
        let out = driver
            .copy(Iova(src_iova), Iova(dst_iova), max)
            .map_err(fail("dma copy"))?;
        if !out.done() {
            return Err(format!("dma copy did not complete: {out:?}"));
        }
        let mut check = vec![0u8; 64];
        env.pm
            .read(UserVa(dst.va() + max - 64), &mut check)
            .map_err(fail("read back"))?;
        if check[..] != src.backing[src.skip + max as usize - 64..src.skip + max as usize] {
            return Err("dma copy moved the wrong bytes".into());
        }
        // The same copy between pinned pages the engine holds (two memfds, mapped shared, as
        // the host engine holds its clients' shared memory): a move between its own
        // mappings of the two files.
        use uiommu_sys::{Backing, MappedBuffer};
        let held_env = Env::with_memory(Domains::Radix(1), ProcessMemory::this().holding())?;
        let held_dev = held_env.devices.first().map(|d| d.0).ok_or("no device")?;
        let mut hsrc = MappedBuffer::new(max as usize, Backing::Memfd).map_err(fail("memfd"))?;
        let mut hdst = MappedBuffer::new(max as usize, Backing::Memfd).map_err(fail("memfd"))?;
        for (i, b) in hsrc.as_mut_slice().iter_mut().enumerate() {
            *b = (i * 5 + 1) as u8;
        }
        hdst.as_mut_slice().fill(0);
        held_env.map(held_env.ioas, hsrc.addr(), max, src_iova)?;
        held_env.map(held_env.ioas, hdst.addr(), max, dst_iova)?;
        if held_env.engine.held_frames() != 2 * max / PAGE {
            return Err(format!(
                "the memfd buffers' pins hold {} frames, not {}",
                held_env.engine.held_frames(),
                2 * max / PAGE
            ));
        }
        let held_driver = uiommu::dma_engine::DmaEngineDriver::new(&held_env.engine, held_dev);
        let copy = |d: &uiommu::dma_engine::DmaEngineDriver, size: u64| -> Result<(), String> {
            let out = d
                .copy(Iova(src_iova), Iova(dst_iova), size)
                .map_err(fail("dma copy"))?;
            if out.done() {
                Ok(())
            } else {
                Err(format!("dma copy did not complete: {out:?}"))
            }
        };
        let mut a = vec![1u8; max as usize];
        let mut b = vec![0u8; max as usize];
        let runs = self.sizes.runs.min(3);
        let mut curves = [
            ("dma-engine through the IOMMU", Vec::new()),
            ("memcpy", Vec::new()),
            ("process_vm_readv alone", Vec::new()),
            ("dma-engine through the IOMMU, held pages", Vec::new()),
            ("memcpy between the held pages", Vec::new()),
            ("IOMMU DMA copy alone, held pages", Vec::new()),
        ];
        for size in [4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB] {
            let iters = (self.sizes.dma_bytes / size).max(16);
            let (mut dma, mut mem, mut sys, mut held, mut held_mem, mut held_iommu) = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            for _ in 0..runs {
                let t = Instant::now();
                for _ in 0..iters {
                    copy(&driver, size)?;
                }
                dma.push(gib_per_s(size * iters, t.elapsed()));
                let t = Instant::now();
                for _ in 0..iters {
                    copy(&held_driver, size)?;
                }
                held.push(gib_per_s(size * iters, t.elapsed()));
                let s = size as usize;
                let t = Instant::now();
                for _ in 0..iters {
                    hdst.as_mut_slice()[..s].copy_from_slice(black_box(&hsrc.as_slice()[..s]));
                    black_box(&mut hdst);
                }
                held_mem.push(gib_per_s(size * iters, t.elapsed()));
                // The DMA itself, without the device's register programming: the device's
                // copy through the IOMMU (translation and permission check of both sides,
                // then the move), one engine call per copy.
                let t = Instant::now();
                for _ in 0..iters {
                    held_env
                        .engine
                        .with_platform(|p| p.dma_copy(held_dev, Iova(src_iova), Iova(dst_iova), s))
                        .map_err(fail("iommu dma copy"))?;
                }
                held_iommu.push(gib_per_s(size * iters, t.elapsed()));
                let s = size as usize;
                let t = Instant::now();
                for i in 0..iters {
                    b[..s].copy_from_slice(black_box(&a[..s]));
                    black_box(&mut b);
                    a[0] = i as u8;
                }
                mem.push(gib_per_s(size * iters, t.elapsed()));
                // The ceiling of a copy that cannot crash: the kernel's own copy between the
                // two buffers, one process_vm_readv per operation (what the device path uses
                // per 64 KiB chunk), without the IOMMU or the device.
                let t = Instant::now();
                for _ in 0..iters {
                    let n =
                        uiommu_sys::copy_within_self(b.as_mut_ptr() as u64, a.as_ptr() as u64, s)
                            .map_err(fail("process_vm_readv"))?;
                    if n != s {
                        return Err(format!("process_vm_readv copied {n} of {s} bytes"));
                    }
                    black_box(&mut b);
                }
                sys.push(gib_per_s(size * iters, t.elapsed()));
            }
            let (dma, mem, sys) = (median(dma), median(mem), median(sys));
            let (held, held_mem, held_iommu) = (median(held), median(held_mem), median(held_iommu));
            for (curve, v) in curves
                .iter_mut()
                .zip([dma, mem, sys, held, held_mem, held_iommu])
            {
                curve.1.push((size as f64, v));
            }
            r.note(
                format!("dma_copy.{size}.gib_per_s"),
                Some(dma),
                Unit::GibPerS,
                "the dma-engine (dma0) in a radix domain: program BAR0 (SRC, DST, LEN, OP), ring \
                 the doorbell, read STATUS and BYTES_DONE; both sides translated through the \
                 IOMMU, then the bytes moved by one process_vm_readv per 64 KiB chunk from \
                 source to destination"
                    .into(),
            );
            r.note(
                format!("dma_copy.{size}.kernel_copy_gib_per_s"),
                Some(sys),
                Unit::GibPerS,
                "the bound on a copy that cannot crash the host: process_vm_readv between the \
                 same buffers, no IOMMU, no device"
                    .into(),
            );
            r.add(
                format!("dma_copy.{size}.memcpy_gib_per_s"),
                Some(mem),
                Unit::GibPerS,
            );
            r.add(
                format!("dma_copy.{size}.ratio"),
                Some(dma / mem),
                Unit::Ratio,
            );
            r.note(
                format!("dma_copy.{size}.held_gib_per_s"),
                Some(held),
                Unit::GibPerS,
                "the same dma-engine copy between two memfds mapped shared, whose pins the \
                 engine holds (as the host engine holds its clients' shared memory): after \
                 the IOMMU translation, one move between the engine's own mappings of the \
                 two files (a fault-guarded copy loop), no system call"
                    .into(),
            );
            r.note(
                format!("dma_copy.{size}.held_memcpy_gib_per_s"),
                Some(held_mem),
                Unit::GibPerS,
                "memcpy between the same two memfd mappings (the program's own), no IOMMU, \
                 no device: the baseline of held_ratio"
                    .into(),
            );
            r.add(
                format!("dma_copy.{size}.held_ratio"),
                Some(held / held_mem),
                Unit::Ratio,
            );
            r.note(
                format!("dma_copy.{size}.held_iommu_gib_per_s"),
                Some(held_iommu),
                Unit::GibPerS,
                "the held copy's DMA alone: the device's copy through the IOMMU \
                 (Platform::dma_copy: both sides translated and checked, then one move), \
                 without programming the device's registers (held_gib_per_s adds that: seven \
                 register accesses through the engine per operation)"
                    .into(),
            );
            r.add(
                format!("dma_copy.{size}.held_iommu_ratio"),
                Some(held_iommu / held_mem),
                Unit::Ratio,
            );
        }
        // The bytes arrived through the held pages.
        copy(&held_driver, max)?;
        if hdst.as_slice() != hsrc.as_slice() {
            return Err("the held dma copy moved the wrong bytes".into());
        }
        for (name, points) in curves {
            r.series.push(Series {
                plot: DMA_PLOT,
                name: name.into(),
                points,
            });
        }
        Ok(())
    }

    fn metadata(&self, r: &mut Report, keep: &mut Vec<Env>) -> Result<(), String> {
        let n = self.sizes.metadata_mappings;
        let pages = self.big.pages();
        let va = self.big.va();
        for (prefix, domains) in [("", Domains::None), ("radix.", Domains::Radix(1))] {
            let env = Env::new(domains)?;
            let ctx = env.ctx();
            let ioas = ObjId(env.ioas);
            let base = domains.base();
            let before = rss_bytes()?;
            for i in 0..n {
                ctx.ioas_map(
                    ioas,
                    UserVa(va + (i % pages) * PAGE),
                    PAGE,
                    Some(Iova(base + i * PAGE)),
                    Prot::RW,
                )
                .map_err(fail("ioas_map"))?;
            }
            let after = rss_bytes()?;
            let tables = env.table_bytes()?;
            let grown = after.saturating_sub(before);
            let per = grown.saturating_sub(tables) as f64 / n as f64;
            let quick = if self.sizes.quick {
                format!(" Quick run: {n} mappings, not 1M.")
            } else {
                String::new()
            };
            let what = if domains == Domains::None {
                "no domain (nothing pinned, no page table)"
            } else {
                "a radix domain (dma0); its page tables' table_bytes() subtracted"
            };
            r.note(
                format!("{prefix}bytes_per_mapping_at_1m"),
                Some(per),
                Unit::Bytes,
                format!(
                    "library API, {what}: growth of resident memory (/proc/self/statm) over \
                     {n} distinct 4 KiB mappings, {} bytes, divided by {n}; allocator slack \
                     included.{quick}",
                    grown
                ),
            );
            if domains != Domains::None {
                r.add(
                    format!("{prefix}table_bytes_per_mapping_at_1m"),
                    Some(tables as f64 / n as f64),
                    Unit::Bytes,
                );
            }
            // Kept alive until the run ends, so the next measurement's growth is not hidden
            // by reuse of memory this one freed.
            keep.push(env);
        }
        Ok(())
    }
}

/// Resident memory of this process, from `/proc/self/statm` (in pages there).
fn rss_bytes() -> Result<u64, String> {
    let s = std::fs::read_to_string("/proc/self/statm").map_err(fail("/proc/self/statm"))?;
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or("/proc/self/statm: unexpected format")?;
    Ok(pages * PAGE)
}

type Step = fn(&Bench, &mut Report) -> Result<(), String>;

/// Run every benchmark (or those `sizes.only` names) with `sizes`, printing progress to
/// `progress`.
pub fn run(sizes: Sizes, progress: &mut dyn std::io::Write) -> Result<Report, String> {
    let start = Instant::now();
    let mut report = Report {
        quick: sizes.quick,
        ..Default::default()
    };
    // The buffer everything maps from: at least the big map and the translate range
    // (4 IOTLBs of 4 KiB granules), 2 MiB aligned, pre-faulted before anything is timed.
    let len = sizes.big.max(sizes.copy).max(4 * IOTLB_SLOTS as u64 * PAGE);
    let bench = Bench {
        big: Buffer::new(len, 2 * MIB),
        sizes,
    };
    let mut keep = Vec::new();
    let steps: [(&str, Step); 7] = [
        ("map+unmap 4 KiB", Bench::map_unmap_4k),
        ("host engine map+unmap 4 KiB", Bench::host_map_unmap_4k),
        ("map/unmap 1 GiB", Bench::map_1g),
        ("distinct 4 KiB", Bench::distinct),
        ("IOAS_COPY", Bench::copy),
        ("translate", Bench::translate),
        ("dma copy", Bench::dma_copy),
    ];
    let wanted = |name: &str| {
        bench.sizes.only.is_empty() || bench.sizes.only.iter().any(|o| name.contains(o.as_str()))
    };
    // Metadata first: later steps free memory that its growth would otherwise reuse.
    if wanted("metadata per mapping") {
        let _ = writeln!(progress, "bench: metadata per mapping ...");
        bench.metadata(&mut report, &mut keep)?;
    }
    for (name, step) in steps.into_iter().filter(|(name, _)| wanted(name)) {
        let _ = writeln!(progress, "bench: {name} ...");
        let t = Instant::now();
        step(&bench, &mut report)?;
        let _ = writeln!(
            progress,
            "bench: {name}: {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    drop(keep);
    report.elapsed = start.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_nests_dotted_keys_and_writes_null_for_unmeasured() {
        let mut r = Report {
            quick: true,
            ..Default::default()
        };
        r.add("a.b.c", Some(1.5), Unit::Ns);
        r.add("a.b.d", Some(2000.0), Unit::OpsPerS);
        r.note("x", None, Unit::GibPerS, "why \"not\"".into());
        let j = r.json();
        assert!(j.contains("\"quick\": true"), "{j}");
        assert!(j.contains("\"c\": 1.5"), "{j}");
        assert!(j.contains("\"d\": 2000\n"), "{j}");
        assert!(j.contains("\"x\": null"), "{j}");
        assert!(j.contains("\"x\": \"why \\\"not\\\"\""), "{j}");
        assert_eq!(j.matches('{').count(), j.matches('}').count());
    }

    #[test]
    fn every_kernel_figure_is_in_the_file_the_table_cites() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/kernel-6.12.md"),
        )
        .expect("bench/kernel-6.12.md in the repository");
        for &(key, v) in KERNEL_ANCHORS {
            // As the file writes it: 55,709 or 4.73 (and 283k for thousands of ops/s).
            let shown = if v >= 1000.0 && v.fract() == 0.0 {
                fmt_num(v)
            } else {
                format!("{v}")
            };
            let k = format!("{}k", (v / 1000.0).round());
            assert!(
                text.contains(&shown) || text.contains(&k),
                "{key}: {v} is not in bench/kernel-6.12.md"
            );
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(199_860.4), "199,860");
        assert_eq!(fmt_num(1_234_567.0), "1,234,567");
        assert_eq!(fmt_num(4.7312), "4.731");
        assert_eq!(json_num(f64::NAN), "null");
        assert_eq!(json_num(3.0), "3");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(kernel_anchor("copy_256m_gib_per_s"), Some(4.78));
    }

    #[test]
    fn a_tiny_run_measures_every_figure() {
        let r = run(Sizes::tiny(), &mut std::io::sink()).unwrap();
        for key in [
            "abi.map_unmap_4k_ops_per_s.no_domain",
            "host.abi.map_unmap_4k_ops_per_s.one_domain",
            "host_messages.abi.map_unmap_4k_ops_per_s.one_domain",
            "host.abi.option_get_pairs_per_s",
            "threads.handover_round_trips_per_s",
            "lib.map_unmap_4k_ops_per_s.two_domains",
            "radix.abi.map_unmap_4k_ops_per_s.two_domains",
            "map_1g_gib_per_s.small_pages",
            "unmap_1g_gib_per_s.small_pages",
            "distinct_4k.100.map_ops_per_s",
            "radix.distinct_4k.100.unmap_ops_per_s",
            "copy_256m_gib_per_s",
            "translate_ns.iotlb_hit",
            "translate_ns.iotlb_miss",
            "dma_copy.65536.ratio",
            "bytes_per_mapping_at_1m",
        ] {
            let f = r.get(key).unwrap_or_else(|| panic!("{key} missing"));
            assert!(f.value.is_some_and(|v| v.is_finite()), "{key}: {f:?}");
        }
        assert!(r.get("map_1g_gib_per_s.huge_pages").unwrap().note.is_some());
        assert!(r.table().contains("kernel 6.12"));
    }
}
