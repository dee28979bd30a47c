//! What the C-program tests share: the preload library cargo built, and the programs of
//! `tests/c/` compiled once per test process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The `libuiommu_preload.so` cargo built for this test run: `target/<profile>/deps/` (where
/// cargo puts the cdylib when building the package's tests), else `target/<profile>/` (where
/// `cargo build` puts it).
pub fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/c_abi-<hash>
    let deps = exe
        .parent()
        .expect("test executable in target/<profile>/deps");
    let candidates = [
        deps.to_path_buf(),
        deps.parent().unwrap_or(deps).to_path_buf(),
    ];
    candidates
        .iter()
        .map(|d| d.join("libuiommu_preload.so"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("libuiommu_preload.so not found in {candidates:?}"))
}

/// Compile `tests/c/<name>.c` into the test's scratch directory, once per test process (tests
/// run in parallel and share programs).
pub fn compile(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let out = compile_now(name);
    built.insert(name.to_string(), out.clone());
    out
}

fn compile_now(name: &str) -> PathBuf {
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c_abi");
    std::fs::create_dir_all(&out_dir).expect("scratch directory");
    let out = out_dir.join(name);
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=gnu11",
            "-O2",
            "-D_FORTIFY_SOURCE=2",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .arg("-pthread")
        .arg("-I")
        .arg(&src_dir)
        .arg("-o")
        .arg(&out)
        .arg(src_dir.join(format!("{name}.c")))
        .status()
        .expect("run the C compiler `cc` (install gcc and libc6-dev)");
    assert!(status.success(), "compiling {name}.c failed");
    out
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
