//! A Linux guest's own NVMe driver does DMA through uiommu: the built-in platform's emulated
//! NVMe controller (ssd0, 0000:09:00.0, model `nvme`) passed into a QEMU TCG guest by QEMU's
//! vfio-pci under `uiommu run --engine host`, with the iommufd backend and with the legacy
//! container. The guest (guest/build.sh: a Debian cloud kernel and a busybox initramfs) writes
//! a 64 MiB pattern with O_DIRECT, reads it back, makes, checks and remounts an ext4
//! filesystem, and reports over its console (guest/README.md); the namespace is backed by a
//! file here, which must hold the pattern afterwards.
//!
//! Needs root and the Debian package registry for the guest's packages (and QEMU); without
//! them the test says it did not run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{not_run, uiommu};

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

/// Boot the guest with `device` args under `uiommu run --engine host` over a platform whose
/// ssd0 is backed by a file; returns the console's UIOMMU-GUEST lines and the file.
fn boot(name: &str, device: &[&str]) -> Option<(String, PathBuf)> {
    if !built() {
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("nvme_guest_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The built-in platform, with ssd0's namespace in a file beside the platform file.
    let mut platform = std::fs::read_to_string(repo().join("platforms/default.toml")).unwrap();
    platform.push_str("options = { size = 268435456, file = \"ssd0.img\" }\n");
    assert!(
        platform.trim_end().ends_with(
            "driver = \"vfio-pci\"\noptions = { size = 268435456, file = \"ssd0.img\" }"
        ),
        "ssd0 is the last function of platforms/default.toml"
    );
    let platform_file = dir.join("platform.toml");
    std::fs::write(&platform_file, platform).unwrap();
    let instance = format!("nvme-guest-{}-{name}", std::process::id());
    let wrap = format!(
        "{} run --engine host --instance {instance} --platform {} --",
        env!("CARGO_BIN_EXE_uiommu"),
        platform_file.display()
    );
    let out = Command::new("bash")
        .arg(repo().join("guest/run.sh"))
        .args(["--timeout", "400", "--log"])
        .arg(dir.join("console.log"))
        .args(["--wrap", &wrap, "--"])
        .args(device)
        .output()
        .expect("run bash");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the guest did not pass ({}):\n{text}",
        out.status
    );
    // The engine went idle: nothing of the run stays.
    let _ = uiommu().args(["status", "--instance", &instance]).output();
    Some((text, dir.join("ssd0.img")))
}

fn check(text: &str, image: &Path) {
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
}

#[test]
fn a_guests_nvme_driver_does_dma_through_the_iommufd_backend() {
    let Some((text, image)) = boot(
        "iommufd",
        &[
            "-object",
            "iommufd,id=iommufd0",
            "-device",
            "vfio-pci,host=0000:09:00.0,iommufd=iommufd0",
        ],
    ) else {
        return;
    };
    check(&text, &image);
}

#[test]
fn a_guests_nvme_driver_does_dma_through_the_legacy_container() {
    let Some((text, image)) = boot("legacy", &["-device", "vfio-pci,host=0000:09:00.0"]) else {
        return;
    };
    check(&text, &image);
}
