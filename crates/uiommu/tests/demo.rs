//! The narrated demo behaves as it says, and the CLI works as a user would call it.

use std::process::Command;

#[test]
fn every_demo_step_behaves_as_stated() {
    let mut out = Vec::new();
    let report = uiommu::demo::run(&mut out).expect("the demo runs");
    let text = String::from_utf8(out).unwrap();
    assert!(report.all_ok(), "failed checks:\n{text}");
    assert!(report.checks.len() >= 25, "the demo checks every step");
    for step in [
        "cannot DMA",
        "faulted as blocked",
        "the destination holds exactly the source bytes",
        "context B is refused with EPERM",
        "the DMA driver is refused with EBUSY",
        "faulted as not mapped",
        "no page is pinned",
    ] {
        assert!(text.contains(step), "the narration lacks {step:?}:\n{text}");
    }
}

#[test]
fn demo_command_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_uiommu"))
        .arg("demo")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 did not"));
}

#[test]
fn topology_command_prints_the_default_platform_and_reads_files() {
    let builtin = Command::new(env!("CARGO_BIN_EXE_uiommu"))
        .arg("topology")
        .output()
        .unwrap();
    assert!(builtin.status.success());
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../platforms/default.toml");
    let from_file = Command::new(env!("CARGO_BIN_EXE_uiommu"))
        .args(["topology", "--platform", file])
        .output()
        .unwrap();
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    assert_eq!(builtin.stdout, from_file.stdout);
    let text = String::from_utf8_lossy(&builtin.stdout);
    assert!(text.contains("dma0") && text.contains("nvme0"));
}

#[test]
fn topology_command_refuses_a_bad_file_without_crashing() {
    let dir = std::env::temp_dir().join(format!("uiommu-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[function]]\nname = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_uiommu"))
        .args(["topology", "--platform"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    let missing = Command::new(env!("CARGO_BIN_EXE_uiommu"))
        .args(["topology", "--platform", "/nonexistent/platform.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}
