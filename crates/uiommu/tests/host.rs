//! `uiommu serve`, `uiommu status` and `uiommu run --engine host` as a user runs them: an
//! engine that outlives the programs it served, one engine per instance, an engine started
//! on demand that goes once idle, and the refusals.
//!
//! The programs here open nothing of ours (the library's own tests, crates/preload/tests/
//! host_engine.rs, drive the engine through C programs), so a stand-in library is preloaded.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::uiommu;

fn stand_in_library() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("uiommu_host");
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join("libstand_in.so");
    std::fs::write(&lib, b"").unwrap();
    lib
}

fn instance(name: &str) -> String {
    format!("clitest-{}-{name}", std::process::id())
}

fn status(name: &str) -> Option<serde_json::Value> {
    let out = uiommu()
        .args(["status", "--json", "--instance", name])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_served_instance_outlives_its_clients_and_refuses_a_second_engine() {
    let name = instance("serve");
    let mut serve = uiommu()
        .args(["serve", "--instance", &name])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the engine answers", || status(&name).is_some(), 10);
    let v = status(&name).unwrap();
    assert_eq!(v["instance"], name.as_str());
    assert_eq!(v["pid"], serve.id());
    assert_eq!(v["platform"], "built-in");
    assert!(v["groups"].as_array().unwrap().len() > 5);
    // A program run against it, then gone: the engine stays.
    let out = uiommu()
        .args(["run", "--engine", "host", "--instance", &name, "--preload"])
        .arg(stand_in_library())
        .args([
            "--",
            "sh",
            "-c",
            "echo \"S=$UIOMMU_SOCKET I=$UIOMMU_INSTANCE\"; exit 4",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{name}.sock I={name}")),
        "{stdout}"
    );
    assert_eq!(status(&name).unwrap()["pid"], serve.id());
    // One engine per instance.
    let second = uiommu()
        .args(["serve", "--instance", &name])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&second.stderr).contains(&format!("pid {}", serve.id())));
    // Another platform for a served instance is refused before the program runs.
    let platform = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../platforms/default.toml");
    let refused = uiommu()
        .args(["run", "--engine", "host", "--instance", &name, "--platform"])
        .arg(&platform)
        .arg("--preload")
        .arg(stand_in_library())
        .args(["--", "sh", "-c", "echo ran"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("ran"));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is served with platform built-in"));
    // SIGTERM ends it in order: its socket and lock file go with it.
    let dir = uiommu_proto::socket_dir();
    assert!(dir.join(format!("{name}.sock")).exists() && dir.join(format!("{name}.lock")).exists());
    let pid = rustix::process::Pid::from_raw(serve.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let st = serve.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), None);
    assert_eq!(st.code(), Some(128 + 15));
    for ext in ["sock", "lock"] {
        let f = dir.join(format!("{name}.{ext}"));
        assert!(!f.exists(), "{} is left behind", f.display());
    }
    let gone = uiommu()
        .args(["status", "--instance", &name])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no engine serves"));
}

#[test]
fn run_starts_an_engine_on_demand_which_goes_once_idle() {
    let name = instance("demand");
    assert!(status(&name).is_none());
    let platform = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../platforms/default.toml");
    let out = uiommu()
        .args(["run", "--engine", "host", "--instance", &name, "--platform"])
        .arg(&platform)
        .arg("--preload")
        .arg(stand_in_library())
        .args(["--", "sh", "-c", "echo \"P=$UIOMMU_PLATFORM\""])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The program's view of the platform is the engine's.
    let canon = std::fs::canonicalize(&platform).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("P={}", canon.display())));
    // The engine outlived the program, serves that platform, and is nobody's child here.
    let v = status(&name).expect("the engine started on demand answers");
    assert_eq!(v["platform"], canon.display().to_string().as_str());
    wait_until("the idle engine exits", || status(&name).is_none(), 30);
    // Gone once idle, it left nothing behind: no socket, lock file or log.
    let dir = uiommu_proto::socket_dir();
    wait_until(
        "the idle engine's files are removed",
        || {
            ["sock", "lock", "log"]
                .iter()
                .all(|ext| !dir.join(format!("{name}.{ext}")).exists())
        },
        10,
    );
}

#[test]
fn bad_instance_names_and_engines_are_refused() {
    let out = uiommu()
        .args(["run", "--engine", "host", "--instance", "../x", "--preload"])
        .arg(stand_in_library())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid instance name"));
    let out = uiommu()
        .env("UIOMMU_ENGINE", "kernel")
        .args(["run", "--preload"])
        .arg(stand_in_library())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UIOMMU_ENGINE=kernel"));
}
