//! What the CLI's integration tests share: the `uiommu` command with a clean environment, and
//! the preload library of this profile.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `uiommu` executable under test, with none of uiommu's environment variables inherited.
pub fn uiommu() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommu"));
    for v in [
        "LD_PRELOAD",
        "UIOMMU_PRELOAD",
        "UIOMMU_PLATFORM",
        "UIOMMU_ENGINE",
        "UIOMMU_INSTANCE",
        "UIOMMU_FRONT_END",
        "UIOMMU_SOCKET",
        "UIOMMU_CAPS",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// `target/<profile>/`, where cargo put the `uiommu` executable.
pub fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_uiommu"))
        .parent()
        .expect("uiommu in target/<profile>/")
        .to_path_buf()
}

pub fn find_library(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join("deps")]
        .into_iter()
        .map(|d| d.join("libuiommu_preload.so"))
        .find(|p| p.is_file())
}

/// `libuiommu_preload.so` of this profile, built (or found up to date) by cargo first.
pub fn library() -> &'static PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = profile_dir();
        // Built (or found up to date) by cargo every time: `cargo test -p uiommu` does not
        // rebuild the preload library, and an older one beside this build would be tested.
        let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "uiommu-preload", "--target-dir"])
            .arg(dir.parent().expect("target/<profile>/ has a parent"));
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        eprintln!("building the preload library: {cmd:?}");
        assert!(cmd.status().expect("run cargo").success(), "{cmd:?} failed");
        find_library(&dir).expect("libuiommu_preload.so after the build")
    })
}

/// Say that this test could not run here, and why (`not run: WHY` in its output), and record
/// it in `$UIOMMU_NOT_RUN` when set, where the test command (scripts/test.sh) counts it as not
/// run instead of passed. The caller returns right after.
#[allow(dead_code)]
pub fn not_run(why: &str) {
    record(&format!("not run: {why}"));
}

/// Say that a part of this test could not run here (`part not run: WHY`), recorded as
/// [`not_run`] is; the rest of the test runs.
#[allow(dead_code)]
pub fn part_not_run(why: &str) {
    record(&format!("part not run: {why}"));
}

fn record(line: &str) {
    println!("{line}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("UIOMMU_NOT_RUN") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}
