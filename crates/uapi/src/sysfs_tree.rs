//! The sysfs view of the emulated platform as a real directory tree, laid out as in sysfs
//! (files and relative symlinks), for device discovery as QEMU, rust-vmm and DPDK do it. Both
//! front-ends show it: the preload library rewrites paths into a tree it makes
//! (`crates/preload/src/sysfs.rs`), the seccomp front-end's supervisor serves paths from one
//! the host engine makes (`crates/host/src/view.rs`).
//!
//! Layout (`R` = the tree's root; `pci0000:00` is the one root every function hangs from):
//!
//! ```text
//! R/sys/devices/pci0000:00/<bdf>/{vendor,device,class,subsystem_vendor,subsystem_device}
//! R/sys/devices/pci0000:00/<bdf>/driver -> ../../../bus/pci/drivers/<name>      (when bound)
//! R/sys/devices/pci0000:00/<bdf>/iommu_group -> ../../../kernel/iommu_groups/<n>
//! R/sys/devices/pci0000:00/<bdf>/vfio-dev/vfio<N>/dev                           (vfio-pci only)
//! R/sys/bus/pci/devices/<bdf> -> ../../../devices/pci0000:00/<bdf>
//! R/sys/bus/pci/drivers/<name>/<bdf> -> ../../../../devices/pci0000:00/<bdf>
//! R/sys/kernel/iommu_groups/<n>/devices/<bdf> -> ../../../../devices/pci0000:00/<bdf>
//! R/dev/vfio/{vfio,<group>...,devices/vfio<N>...}        (empty files standing for the nodes)
//! ```

use crate::file::{Target, VFIO_CDEV_MAJOR};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use uiommu_platform::drivers::Driver;

/// The sysfs directories the view serves, and whether the directory itself is ours (listing
/// it lists the emulated machine) or only the entries the view has.
pub const PREFIXES: [(&[u8], bool); 4] = [
    (b"/sys/bus/pci/devices", true),
    (b"/sys/bus/pci/drivers", true),
    (b"/sys/kernel/iommu_groups", true),
    (b"/sys/devices", false),
];

/// The PCI root every function of the view hangs from.
pub const PCI_ROOT: &str = "pci0000:00";

/// One PCI function as the view shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionView {
    /// `0000:01:00.0`.
    pub bdf: String,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// 24-bit class code.
    pub class: u32,
    /// The bound driver's name.
    pub driver: Option<String>,
    /// IOMMU group number.
    pub group: u32,
    /// `N` of `/dev/vfio/devices/vfioN` for a function bound to vfio-pci.
    pub vfio: Option<usize>,
}

/// What the view shows of the engine's platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    /// Every function.
    pub funcs: Vec<FunctionView>,
    /// Every IOMMU group number.
    pub groups: Vec<u32>,
    /// The groups with a `/dev/vfio/<n>` node (those with a vfio-pci function).
    pub vfio_groups: Vec<u32>,
    /// How many `/dev/vfio/devices/vfioN` nodes there are.
    pub vfio_devices: usize,
}

/// What the view shows of the engine's platform: every function, every group number, and the
/// `/dev/vfio` nodes.
pub fn describe(engine: &uiommu_core::Engine) -> Description {
    let vfio = crate::file::vfio_devices(engine);
    let vfio_groups = crate::vfio_group::vfio_groups(engine)
        .into_iter()
        .map(|g| g.0)
        .collect();
    let (funcs, groups) = engine.with_platform(|p| {
        let funcs = p
            .topology
            .devices()
            .map(|d| FunctionView {
                bdf: d.bdf.to_string(),
                vendor: d.vendor,
                device: d.device,
                class: d.class,
                driver: p.drivers.driver(d.id).name().map(str::to_string),
                group: d.group.0,
                vfio: (*p.drivers.driver(d.id) == Driver::VfioPci)
                    .then(|| vfio.iter().position(|&v| v == d.id))
                    .flatten(),
            })
            .collect();
        let groups = p.topology.groups().map(|g| g.id.0).collect();
        (funcs, groups)
    });
    Description {
        funcs,
        groups,
        vfio_groups,
        vfio_devices: vfio.len(),
    }
}

/// Per prefix of [`PREFIXES`], the first path components the view has below it.
#[derive(Clone, Debug, Default)]
pub struct Names([BTreeSet<Vec<u8>>; 4]);

impl Names {
    /// The names `desc` puts in the view.
    pub fn of(desc: &Description) -> Names {
        let mut names: [BTreeSet<Vec<u8>>; 4] = Default::default();
        for f in &desc.funcs {
            names[0].insert(f.bdf.clone().into_bytes());
            if let Some(d) = &f.driver {
                names[1].insert(d.clone().into_bytes());
            }
        }
        for g in &desc.groups {
            names[2].insert(g.to_string().into_bytes());
        }
        names[3].insert(PCI_ROOT.as_bytes().to_vec());
        Names(names)
    }

    /// Whether the view has `name` as a first component below prefix `i` of [`PREFIXES`].
    pub fn has(&self, i: usize, name: &[u8]) -> bool {
        self.0.get(i).is_some_and(|n| n.contains(name))
    }

    /// Whether the view serves the absolute `path` below one of [`PREFIXES`]: the directory
    /// itself (when it is wholly ours) or an entry whose first component after the prefix is
    /// one of ours.
    pub fn serves(&self, path: &[u8]) -> bool {
        match prefix_of(path) {
            None => false,
            Some((_, None)) => true,
            Some((i, Some(c))) => self.0[i].contains(c),
        }
    }
}

/// Whether `path` may be served by the view (`Some`: which prefix, and the first component
/// below it that the view must have, `None` for the directory itself, wholly ours).
pub fn prefix_of(path: &[u8]) -> Option<(usize, Option<&[u8]>)> {
    for (i, (p, whole)) in PREFIXES.iter().enumerate() {
        let Some(rest) = path.strip_prefix(*p) else {
            continue;
        };
        if rest.is_empty() || rest == b"/" {
            return whole.then_some((i, None));
        }
        let Some(rest) = rest.strip_prefix(b"/") else {
            continue;
        };
        let comp = rest.split(|&b| b == b'/').next().unwrap_or(rest);
        return Some((i, Some(comp)));
    }
    None
}

/// Make `root/sys` for `desc`.
pub fn fill_sys(root: &Path, desc: &Description) -> std::io::Result<()> {
    let Description { funcs, groups, .. } = desc;
    use std::fs::{create_dir_all, write};
    use std::os::unix::fs::symlink;
    let sys = root.join("sys");
    let devices = sys.join("devices").join(PCI_ROOT);
    let bus_devices = sys.join("bus/pci/devices");
    let drivers = sys.join("bus/pci/drivers");
    let groups_dir = sys.join("kernel/iommu_groups");
    create_dir_all(&devices)?;
    create_dir_all(&bus_devices)?;
    create_dir_all(&drivers)?;
    for g in groups {
        create_dir_all(groups_dir.join(g.to_string()).join("devices"))?;
    }
    for f in funcs {
        let dir = devices.join(&f.bdf);
        create_dir_all(&dir)?;
        write(dir.join("vendor"), format!("0x{:04x}\n", f.vendor))?;
        write(dir.join("device"), format!("0x{:04x}\n", f.device))?;
        write(
            dir.join("class"),
            format!("0x{:06x}\n", f.class & 0xff_ffff),
        )?;
        write(dir.join("subsystem_vendor"), "0x0000\n")?;
        write(dir.join("subsystem_device"), "0x0000\n")?;
        let to_dev = format!("../../../../devices/{PCI_ROOT}/{}", f.bdf);
        symlink(
            format!("../../../devices/{PCI_ROOT}/{}", f.bdf),
            bus_devices.join(&f.bdf),
        )?;
        symlink(
            format!("../../../kernel/iommu_groups/{}", f.group),
            dir.join("iommu_group"),
        )?;
        let gdir = groups_dir.join(f.group.to_string()).join("devices");
        create_dir_all(&gdir)?;
        symlink(&to_dev, gdir.join(&f.bdf))?;
        if let Some(d) = &f.driver {
            create_dir_all(drivers.join(d))?;
            symlink(&to_dev, drivers.join(d).join(&f.bdf))?;
            symlink(format!("../../../bus/pci/drivers/{d}"), dir.join("driver"))?;
        }
        if let Some(n) = f.vfio {
            let vdir = dir.join("vfio-dev").join(format!("vfio{n}"));
            create_dir_all(&vdir)?;
            write(vdir.join("dev"), format!("{VFIO_CDEV_MAJOR}:{n}\n"))?;
        }
    }
    Ok(())
}

/// The debugfs directory of the emulated kernel's fault injection (`R/sys/kernel/debug`):
/// listing it lists only [`DEBUGFS_DIRS`].
pub const DEBUGFS: &[u8] = b"/sys/kernel/debug";

/// The fault-injection facilities debugfs shows, each a directory of knobs.
pub const DEBUGFS_DIRS: [&str; 3] = ["failslab", "fail_page_alloc", "fail_usercopy"];

/// Whether `path` is [`DEBUGFS`] itself or lies in one of [`DEBUGFS_DIRS`].
pub fn is_debugfs_path(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(DEBUGFS) else {
        return false;
    };
    if rest.is_empty() || rest == b"/" {
        return true;
    }
    let Some(rest) = rest.strip_prefix(b"/") else {
        return false;
    };
    let comp = rest.split(|&b| b == b'/').next().unwrap_or(rest);
    DEBUGFS_DIRS.iter().any(|d| d.as_bytes() == comp)
}

/// Make `root/sys/kernel/debug` with the knobs of each of [`DEBUGFS_DIRS`] at Linux's defaults
/// (`lib/fault-inject.c`'s common attributes, plus failslab's and fail_page_alloc's own), as
/// plain files a program may write.
pub fn fill_debugfs(root: &Path) -> std::io::Result<()> {
    const COMMON: [(&str, &str); 13] = [
        ("probability", "0\n"),
        ("interval", "1\n"),
        ("times", "1\n"),
        ("space", "0\n"),
        ("verbose", "2\n"),
        ("verbose_ratelimit_interval_ms", "5000\n"),
        ("verbose_ratelimit_burst", "10\n"),
        ("task-filter", "N\n"),
        ("stacktrace-depth", "32\n"),
        ("require-start", "0x0000000000000000\n"),
        ("require-end", "0xffffffffffffffff\n"),
        ("reject-start", "0x0000000000000000\n"),
        ("reject-end", "0x0000000000000000\n"),
    ];
    let own: [&[(&str, &str)]; 3] = [
        &[("ignore-gfp-wait", "Y\n"), ("cache-filter", "N\n")],
        &[
            ("ignore-gfp-wait", "Y\n"),
            ("ignore-gfp-highmem", "Y\n"),
            ("min-order", "1\n"),
        ],
        &[],
    ];
    let debug = root.join("sys/kernel/debug");
    for (name, extra) in DEBUGFS_DIRS.iter().zip(own) {
        let dir = debug.join(name);
        std::fs::create_dir_all(&dir)?;
        for (file, value) in COMMON.iter().chain(extra) {
            std::fs::write(dir.join(file), value)?;
        }
    }
    Ok(())
}

/// The inode number `/dev/vfio` (`devices`: `/dev/vfio/devices`) reports: fixed, beside the
/// nodes' numbers.
pub fn vfio_dir_ino(devices: bool) -> u64 {
    0x7569_0000_0000 | (5 << 24) | if devices { 2 } else { 1 }
}

/// What a path of the `dev/vfio` subtree stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevEntry {
    /// A node's placeholder file.
    Node(Target),
    /// `dev/vfio`, and how many entries it holds (`.` and `..` not counted).
    Vfio(usize),
    /// `dev/vfio/devices`, and how many entries it holds.
    Devices(usize),
    /// The tree's `dev`, the parent of `vfio` (the real `/dev`).
    Parent,
}

/// Make `root/dev/vfio` for `devices` vfio-pci functions and the vfio groups `groups`: every
/// path made and what it stands for.
pub fn fill_dev_vfio(
    root: &Path,
    devices: usize,
    groups: &[u32],
) -> std::io::Result<Vec<(PathBuf, DevEntry)>> {
    let vfio = root.join("dev/vfio");
    let cdevs = vfio.join("devices");
    std::fs::create_dir_all(&cdevs)?;
    let mut placed = vec![(vfio.join("vfio"), DevEntry::Node(Target::VfioContainer))];
    for &g in groups {
        placed.push((
            vfio.join(g.to_string()),
            DevEntry::Node(Target::VfioGroup(g)),
        ));
    }
    for n in 0..devices {
        placed.push((
            cdevs.join(format!("vfio{n}")),
            DevEntry::Node(Target::VfioDevice(n as u32)),
        ));
    }
    for (path, _) in &placed {
        std::fs::File::create(path)?;
    }
    placed.push((vfio.clone(), DevEntry::Vfio(groups.len() + 2)));
    placed.push((cdevs.clone(), DevEntry::Devices(devices)));
    placed.push((root.join("dev"), DevEntry::Parent));
    Ok(placed)
}

/// Make the whole tree for `desc` under `root` (an empty directory).
pub fn fill(root: &Path, desc: &Description) -> std::io::Result<Vec<(PathBuf, DevEntry)>> {
    fill_sys(root, desc)?;
    fill_dev_vfio(root, desc.vfio_devices, &desc.vfio_groups)
}
