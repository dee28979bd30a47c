//! The client programs of this package, unmodified users of the crates.io `iommufd-ioctls` and
//! `vfio-ioctls` crates, run under `uiommu run` on the built-in platform.
//!
//! Each test runs one program as `target/<profile>/uiommu run --preload LIB -- PROGRAM ARGS`,
//! prints its output and asserts exit status 0 and its `PASS` line (a program exits 0 only if
//! every crate call behaved). The `uiommu` executable and `libuiommu_preload.so` are looked up
//! in this test's target directory, the library in `target/<profile>/` or its `deps/`
//! (`cargo test --workspace` builds both before any test runs); if either is missing, as after
//! `cargo test -p uiommu-clients` in a clean clone, the test first builds them with
//! `cargo build -p uiommu -p uiommu-preload` into the same target directory and profile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `target/<profile>/`: the directory holding the client executables.
fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_iommufd-client"))
        .parent()
        .expect("client executable in target/<profile>/")
        .to_path_buf()
}

/// The preload library cargo built: `target/<profile>/` (`cargo build`) or
/// `target/<profile>/deps/` (built for the preload package's own tests).
fn find_library(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join("deps")]
        .into_iter()
        .map(|d| d.join("libuiommu_preload.so"))
        .find(|p| p.is_file())
}

/// `(uiommu, libuiommu_preload.so)`, built first if absent (once per test process).
fn uiommu_and_library() -> &'static (PathBuf, PathBuf) {
    static FOUND: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FOUND.get_or_init(|| {
        let dir = profile_dir();
        let uiommu = dir.join("uiommu");
        if !uiommu.is_file() || find_library(&dir).is_none() {
            build_uiommu(&dir);
        }
        let lib = find_library(&dir)
            .unwrap_or_else(|| panic!("libuiommu_preload.so not in {}", dir.display()));
        assert!(uiommu.is_file(), "{} not built", uiommu.display());
        (uiommu, lib)
    })
}

/// `cargo build -p uiommu -p uiommu-preload` into this test's target directory and profile.
fn build_uiommu(dir: &Path) {
    let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
    let target_dir = dir.parent().expect("target/<profile>/ has a parent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "-p", "uiommu", "-p", "uiommu-preload"])
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("building uiommu and the preload library: {cmd:?}");
    let status = cmd.status().expect("run cargo");
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Run `program args` under `uiommu run` (built-in platform); print its output; assert exit 0
/// and the program's PASS line.
fn run_under_uiommu(program: &str, args: &[&str]) -> String {
    // One client at a time: under one host engine (UIOMMU_ENGINE=host, as CI runs these) the
    // clients are processes of one host and contend for its devices as on Linux (a device
    // bound through its cdev by one makes its group unusable to another's container).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (uiommu, lib) = uiommu_and_library();
    let out = Command::new(uiommu)
        .arg("run")
        .arg("--preload")
        .arg(lib)
        .arg("--")
        .arg(program)
        .args(args)
        .env_remove("LD_PRELOAD")
        .env_remove("UIOMMU_PRELOAD")
        .env_remove("UIOMMU_PLATFORM")
        .env_remove("UIOMMU_CAPS")
        .output()
        .expect("run uiommu");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("$ uiommu run -- {program} {}", args.join(" "));
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "{program} under uiommu run failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(stdout.contains("PASS "), "no PASS line:\n{stdout}");
    stdout
}

#[test]
fn iommufd_ioctls_client() {
    run_under_uiommu(env!("CARGO_BIN_EXE_iommufd-client"), &[]);
}

#[test]
fn vfio_ioctls_cdev_client() {
    let out = run_under_uiommu(env!("CARGO_BIN_EXE_vfio-cdev-client"), &[]);
    assert!(out.contains("the 0x4000 bytes arrived"), "{out}");
}

#[test]
fn vfio_ioctls_container_client() {
    let out = run_under_uiommu(env!("CARGO_BIN_EXE_vfio-container-client"), &[]);
    assert!(out.contains("the 0x4000 bytes arrived"), "{out}");
}

/// `IommufdIoas::map_file`, the only map call of `iommufd-ioctls`'s IOAS object, is
/// `IOMMU_IOAS_MAP_FILE`, which Linux added after 6.12; uiommu serves the 6.12 ABI and answers
/// `ENOTTY`, as a 6.12 kernel does.
#[test]
#[ignore = "uiommu gap: IOMMU_IOAS_MAP_FILE (IommufdIoas::map_file) is not implemented: ENOTTY"]
fn iommufd_ioctls_client_map_file() {
    run_under_uiommu(env!("CARGO_BIN_EXE_iommufd-client"), &["--map-file"]);
}

/// Without the preload library the programs see the real machine: no `/dev/iommu` or
/// `/dev/vfio/vfio` here, so they fail at the first call and say which. (Guards against a
/// client that passes without doing anything.)
#[test]
fn clients_fail_without_uiommu() {
    for program in [
        env!("CARGO_BIN_EXE_iommufd-client"),
        env!("CARGO_BIN_EXE_vfio-cdev-client"),
        env!("CARGO_BIN_EXE_vfio-container-client"),
    ] {
        let out = Command::new(program)
            .env_remove("LD_PRELOAD")
            .output()
            .expect("run client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if Path::new("/dev/iommu").exists() || Path::new("/dev/vfio/vfio").exists() {
            eprintln!("this machine has /dev/iommu or /dev/vfio; skipping the check for {program}");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{program}:\n{stdout}");
        assert!(stdout.contains("FAIL "), "{stdout}");
    }
}
