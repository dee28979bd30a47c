//! A Linux guest's own NVMe driver does DMA through uiommu: the built-in platform's emulated
//! NVMe controller (ssd0, 0000:09:00.0, model `nvme`) passed into a QEMU TCG guest by QEMU's
//! vfio-pci under `uiommu run`: with the in-process engine (the default), and under a host
//! engine the test serves with the iommufd backend and with the legacy container. The guest
//! (guest/build.sh: a Debian cloud kernel and a busybox initramfs) writes a 64 MiB pattern with
//! O_DIRECT, reads it back, makes, checks and remounts an ext4 filesystem, and reports over its
//! console (guest/README.md); the namespace is backed by a file here, which must hold the
//! pattern afterwards, and the host engine's DMA counters must show the bytes, with no fault.
//! A fourth boot injects IOMMU faults (ssd0's `dma_fault_lba`): the guest sees I/O errors, the
//! engine logs the faults, and everyone goes on.
//!
//! Needs root and the Debian package registry for the guest's packages (and QEMU); without
//! them the test says it did not run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{not_run, uiommu};

/// QEMU's arguments passing ssd0 in with the iommufd backend.
const SSD0_IOMMUFD: [&str; 4] = [
    "-object",
    "iommufd,id=iommufd0",
    "-device",
    "vfio-pci,host=0000:09:00.0,iommufd=iommufd0",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// guest/build.sh once for the test binary; false when it cannot run here.
fn built() -> bool {
    static BUILT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BUILT.get_or_init(|| {
        if std::env::var_os("UIOMMU_SKIP_QEMU").is_some() {
            not_run("UIOMMU_SKIP_QEMU is set: QEMU could not be installed");
            return false;
        }
        if !rustix::process::geteuid().is_root() {
            not_run("guest/build.sh installs packages and unpacks them: it needs root");
            return false;
        }
        let out = Command::new("bash")
            .arg(repo().join("guest/build.sh"))
            .output()
            .expect("run bash");
        if !out.status.success() {
            not_run(&format!(
                "guest/build.sh failed (no package registry?): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return false;
        }
        true
    })
}

/// What a boot left: the console's UIOMMU-GUEST lines, the namespace's backing file, and,
/// under the host engine, its status (`uiommu status --json`) after the guest powered off.
struct Booted {
    text: String,
    image: PathBuf,
    status: Option<serde_json::Value>,
}

/// Which engine serves QEMU.
#[derive(Clone, Copy, PartialEq)]
enum Engine {
    /// `uiommu run`'s default: the engine inside QEMU's process.
    InProcess,
    /// A host engine the test starts (`uiommu serve`) and QEMU reaches with `--engine host`.
    Host,
}

/// Boot the guest with `device` args under `uiommu run` over a platform whose ssd0 is backed
/// by a file and has the model options `more_options` as well; `append`: kernel parameters,
/// `mib`: the pattern's MiB. With [`Engine::Host`], against an engine started for the test
/// (`uiommu serve`) that must still answer after the guest powered off: its status is
/// returned, and then it is stopped.
fn boot(
    name: &str,
    engine: Engine,
    device: &[&str],
    more_options: &str,
    append: &str,
    mib: u32,
) -> Option<Booted> {
    if !built() {
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("nvme_guest_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The built-in platform, with ssd0's namespace in a file beside the platform file.
    let mut platform = std::fs::read_to_string(repo().join("platforms/default.toml")).unwrap();
    assert!(
        platform.trim_end().ends_with("driver = \"vfio-pci\"")
            && platform.contains("name = \"ssd0\""),
        "ssd0 is the last function of platforms/default.toml"
    );
    platform.push_str(&format!(
        "options = {{ size = 268435456, file = \"ssd0.img\"{more_options} }}\n"
    ));
    let platform_file = dir.join("platform.toml");
    std::fs::write(&platform_file, platform).unwrap();
    let instance = format!("nvme-guest-{}-{name}", std::process::id());
    let mut serve = (engine == Engine::Host).then(|| {
        uiommu()
            .args(["serve", "--instance", &instance, "--platform"])
            .arg(&platform_file)
            .stderr(std::fs::File::create(dir.join("engine.log")).unwrap())
            .spawn()
            .unwrap()
    });
    let status = || {
        let out = uiommu()
            .args(["status", "--json", "--instance", &instance])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    };
    let t0 = std::time::Instant::now();
    while serve.is_some() && status().is_none() {
        assert!(t0.elapsed().as_secs() < 30, "the engine did not answer");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let wrap = match engine {
        Engine::Host => format!(
            "{} run --engine host --instance {instance} --",
            env!("CARGO_BIN_EXE_uiommu"),
        ),
        Engine::InProcess => format!(
            "{} run --platform {} --",
            env!("CARGO_BIN_EXE_uiommu"),
            platform_file.display()
        ),
    };
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("guest/run.sh"))
        .args(["--timeout", "400", "--mib", &mib.to_string(), "--log"])
        .arg(dir.join("console.log"));
    if !append.is_empty() {
        cmd.args(["--append", append]);
    }
    let out = cmd
        .args(["--wrap", &wrap, "--"])
        .args(device)
        .output()
        .expect("run bash");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let after = serve.as_ref().and_then(|_| status());
    if let Some(serve) = serve.as_mut() {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(serve.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let _ = serve.wait();
    }
    assert!(
        out.status.success(),
        "the guest did not pass ({}):\n{text}\nengine log:\n{}",
        out.status,
        std::fs::read_to_string(dir.join("engine.log")).unwrap_or_default()
    );
    let status = match engine {
        Engine::Host => Some(after.expect("the engine still answers after the guest")),
        Engine::InProcess => None,
    };
    Some(Booted {
        text,
        image: dir.join("ssd0.img"),
        status,
    })
}

/// ssd0's entry in the engine's DMA counters (`status.dma`).
fn ssd0_dma(status: &serde_json::Value) -> serde_json::Value {
    status["dma"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["device"] == "0000:09:00.0"))
        .cloned()
        .unwrap_or_else(|| panic!("no DMA counters of ssd0: {}", status["dma"]))
}

fn check(b: &Booted) {
    let (text, image) = (&b.text, &b.image);
    for want in [
        "driver=nvme",
        "model=\"uiommu NVMe\"",
        "namespace nvme0n1 size=524288 sectors (256 MiB)",
        "fs ok",
        "result=PASS",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    let line = text
        .lines()
        .find(|l| l.contains("pattern sha256="))
        .unwrap_or_else(|| panic!("no pattern line:\n{text}"));
    assert!(line.ends_with(" ok"), "{line}");
    // The backing file holds what the guest wrote through the DMA path.
    let out = Command::new("bash")
        .arg(repo().join("guest/check-pattern.sh"))
        .arg(image)
        .arg("64")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sha = line
        .split("pattern sha256=")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap();
    assert!(report.contains(sha), "{report}");
    // The engine saw the DMA: the pattern written (the controller read it from guest memory)
    // and read back (written into guest memory), the filesystem's on top, through the IOMMU,
    // with no fault on this path.
    let Some(status) = &b.status else { return };
    let dma = ssd0_dma(status);
    let mib = 1u64 << 20;
    assert!(
        dma["read_bytes"].as_u64().unwrap() >= 64 * mib + 8 * mib,
        "{dma}"
    );
    assert!(
        dma["write_bytes"].as_u64().unwrap() >= 64 * mib + 8 * mib,
        "{dma}"
    );
    assert_eq!(dma["faults"], 0, "{dma}");
    assert_eq!(status["faults"]["total"], 0, "{}", status["faults"]);
    println!("engine DMA counters of ssd0: {dma}");
}

#[test]
fn a_guests_nvme_driver_does_dma_through_the_iommufd_backend() {
    let Some(b) = boot("iommufd", Engine::Host, &SSD0_IOMMUFD, "", "", 64) else {
        return;
    };
    check(&b);
}

#[test]
fn a_guests_nvme_driver_does_dma_under_the_default_in_process_engine() {
    // `uiommu run -- qemu ...` as the README's first command has it: the engine in QEMU's
    // process (the one bench/nvme/run.sh finds faster than QEMU's own NVMe).
    let Some(b) = boot("in-process", Engine::InProcess, &SSD0_IOMMUFD, "", "", 64) else {
        return;
    };
    check(&b);
}

#[test]
fn a_guests_nvme_driver_does_dma_through_the_legacy_container() {
    let Some(b) = boot(
        "legacy",
        Engine::Host,
        &["-device", "vfio-pci,host=0000:09:00.0"],
        "",
        "",
        64,
    ) else {
        return;
    };
    check(&b);
}

#[test]
fn an_iommu_fault_on_the_guests_path_is_an_io_error_and_everyone_survives() {
    // ssd0 does the data transfers of block 16384 (8 MiB in) outside QEMU's mappings: the
    // guest's reads and writes of it fail, the faults are in the engine's log, and the guest,
    // QEMU and the engine go on (the guest reads its pattern back after the fault, powers off;
    // the engine still answers).
    let Some(b) = boot(
        "fault",
        Engine::Host,
        &SSD0_IOMMUFD,
        ", dma_fault_lba = 16384",
        "uiommu.fs=0 uiommu.faultlba=16384",
        4,
    ) else {
        return;
    };
    let text = &b.text;
    for want in [
        "fault read of block 16384 failed",
        "fault write of block 16384 failed",
        "after the fault the device still works",
        "result=PASS",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    let status = b.status.as_ref().unwrap();
    let faults = &status["faults"];
    let log = faults["log"].as_array().unwrap();
    assert!(!log.is_empty(), "{faults}");
    for f in log {
        assert_eq!(f["device"], "0000:09:00.0", "{f}");
        assert!(f["iova"].as_u64().unwrap() >= 1 << 62, "{f}");
    }
    // Both directions: the read's data written to guest memory, the write's read from it.
    for access in ["read", "write"] {
        assert!(log.iter().any(|f| f["access"] == access), "{faults}");
    }
    let dma = ssd0_dma(status);
    assert_eq!(dma["faults"], faults["total"], "{dma}");
    println!("engine fault log: {faults}\nDMA counters of ssd0: {dma}");
}
