//! `uiommu run`: the environment it gives the program, its exit status, its refusals.
//!
//! These tests use a stand-in file as the preload library (the dynamic loader reports it
//! cannot be preloaded and ignores it), so they do not depend on the cdylib being built; the
//! library itself is tested through C programs in `crates/preload/tests/c_abi.rs`.

use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("uiommu_run");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn stand_in_library() -> PathBuf {
    let lib = scratch("libstand_in.so");
    std::fs::write(&lib, b"").unwrap();
    lib
}

fn uiommu() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommu"));
    cmd.env_remove("LD_PRELOAD")
        .env_remove("UIOMMU_PRELOAD")
        .env_remove("UIOMMU_PLATFORM");
    cmd
}

#[test]
fn run_sets_the_environment_and_returns_the_exit_status() {
    let lib = stand_in_library();
    let platform = scratch("platform.toml");
    std::fs::write(&platform, "").unwrap();
    let out = uiommu()
        .args(["run", "--preload"])
        .arg(&lib)
        .arg("--platform")
        .arg(&platform)
        .args([
            "--",
            "sh",
            "-c",
            "echo \"P=$LD_PRELOAD\"; echo \"F=$UIOMMU_PLATFORM\"; exit 7",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{stdout}");
    let lib = std::fs::canonicalize(lib).unwrap();
    let platform = std::fs::canonicalize(platform).unwrap();
    assert!(
        stdout.contains(&format!("P={}\n", lib.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("F={}\n", platform.display())),
        "{stdout}"
    );
}

#[test]
fn run_appends_to_an_existing_ld_preload() {
    let lib = stand_in_library();
    let other = scratch("libother.so");
    std::fs::write(&other, b"").unwrap();
    let out = uiommu()
        .env("LD_PRELOAD", &other)
        .env("UIOMMU_PRELOAD", &lib)
        .args(["run", "--", "sh", "-c", "echo \"P=$LD_PRELOAD\""])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lib = std::fs::canonicalize(lib).unwrap();
    let want = format!("P={}:{}\n", other.display(), lib.display());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&want));
}

#[test]
fn run_refuses_a_missing_library_a_bad_platform_and_a_missing_program() {
    let out = uiommu()
        .args([
            "run",
            "--preload",
            "/nonexistent/libuiommu_preload.so",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // The file the user named, and no hint to build what was given explicitly.
    assert!(
        err.contains("--preload /nonexistent/libuiommu_preload.so"),
        "{err}"
    );
    assert!(!err.contains("cargo build"), "{err}");

    // A platform file from the environment is refused before the program runs.
    let out = uiommu()
        .args(["run", "--preload"])
        .arg(stand_in_library())
        .args(["--", "sh", "-c", "echo ran"])
        .env("UIOMMU_PLATFORM", "/nonexistent/platform.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("UIOMMU_PLATFORM=/nonexistent/platform.toml"),
        "{err}"
    );

    // An executable outside a source tree with no library beside it: says what is missing
    // and how to build it, and runs nothing.
    let lone = scratch("lone");
    std::fs::create_dir_all(&lone).unwrap();
    let exe = lone.join("uiommu");
    std::fs::copy(env!("CARGO_BIN_EXE_uiommu"), &exe).unwrap();
    let out = output_of_fresh(|| {
        let mut c = Command::new(&exe);
        c.args(["run", "--", "sh", "-c", "echo ran"])
            .env_remove("UIOMMU_PRELOAD")
            .env_remove("UIOMMU_PLATFORM");
        c
    });
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("libuiommu_preload.so: not found")
            && err.contains("cargo build --release -p uiommu-preload"),
        "{err}"
    );

    let bad = scratch("bad.toml");
    std::fs::write(&bad, "[[device]\nthis is not toml").unwrap();
    let out = uiommu()
        .args(["run", "--preload"])
        .arg(stand_in_library())
        .arg("--platform")
        .arg(&bad)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));

    let out = uiommu()
        .args(["run", "--preload"])
        .arg(stand_in_library())
        .args(["--", "/nonexistent/program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));

    let out = uiommu().args(["run"]).output().unwrap();
    assert!(!out.status.success(), "a program is required");
}

#[test]
fn the_readme_states_the_workspace_minimum_rust_version() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("workspace rust-version")
        .trim_matches('"');
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("Rust {version} or newer")),
        "README.md must say Rust {version} or newer"
    );
}

#[test]
fn run_trace_refuses_a_bad_file_and_creates_a_good_one() {
    let bad = uiommu()
        .args(["run", "--preload"])
        .arg(stand_in_library())
        .args([
            "--trace",
            "/nonexistent/dir/t",
            "--",
            "sh",
            "-c",
            "echo ran",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&bad.stdout).contains("ran"));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--trace /nonexistent/dir/t"));
    let dir = scratch("trace");
    std::fs::create_dir_all(&dir).unwrap();
    let t = dir.join("t.txt");
    let _ = std::fs::remove_file(&t);
    let out = uiommu()
        .args(["run", "--preload"])
        .arg(stand_in_library())
        .arg("--trace")
        .arg(&t)
        .args([
            "--trace-format",
            "json",
            "--",
            "sh",
            "-c",
            "echo \"$UIOMMU_TRACE $UIOMMU_TRACE_FORMAT\"",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(t.is_file());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("{} json", t.display())), "{said}");
}

#[test]
fn run_fail_nth_sets_the_programs_count_and_is_refused_with_the_host_engine() {
    let out = uiommu()
        .args(["run", "--preload"])
        .arg(stand_in_library())
        .args([
            "--fail-nth",
            "17",
            "--",
            "sh",
            "-c",
            "echo $UIOMMU_FAIL_NTH",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "17");
    let out = uiommu()
        .args(["run", "--preload"])
        .arg(stand_in_library())
        .args(["--engine", "host", "--fail-nth", "1", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("--fail-nth") && why.contains("in-process"),
        "{why}"
    );
    let out = uiommu()
        .args(["run", "--fail-nth", "x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn the_kernel_level_is_chosen_checked_and_shown() {
    // --version lists the levels, the default marked.
    let v = uiommu().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(text.contains("6.12: Linux 6.12.y"), "{text}");
    assert!(text.contains("6.12+ (default)"), "{text}");
    // A level that is none: exit 2, named, the program not run.
    for (args, env, named) in [
        (&["--kernel", "6.13"][..], None, "--kernel 6.13"),
        (&[][..], Some("4.0"), "UIOMMU_KERNEL=4.0"),
    ] {
        let mut cmd = uiommu();
        cmd.arg("run").args(args);
        if let Some(e) = env {
            cmd.env("UIOMMU_KERNEL", e);
        }
        let out = cmd.args(["--", "sh", "-c", "echo ran"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(why.contains(named) && why.contains("6.12, 6.12+"), "{why}");
    }
    // The program's engine gets the level (the preload library reads UIOMMU_KERNEL).
    let out = uiommu()
        .args(["run", "--preload"])
        .arg(stand_in_library())
        .args([
            "--kernel",
            "6.12.117",
            "--",
            "sh",
            "-c",
            "echo $UIOMMU_KERNEL",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6.12");
}

#[test]
fn ci_runs_the_readmes_two_commands() {
    // The README's "Two commands" block: the main job and the test command, which .ci/run
    // calls as they are written (it knows no more than the README).
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("## Two commands")
        .nth(1)
        .and_then(|r| r.split("```sh").nth(1))
        .and_then(|r| r.split("```").next())
        .expect("README.md has a ## Two commands section with a sh block");
    let commands: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        commands,
        [
            "cargo run --release -p uiommu -- demo",
            "bash scripts/test.sh"
        ],
        "{block}"
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.contains("cargo run --quiet --release -p uiommu -- demo"),
        "{ci}"
    );
    assert!(ci.contains("bash scripts/test.sh"), "{ci}");
    assert!(
        !ci.contains("apt-get"),
        "the installs belong to the test command, not to .ci/run"
    );
    assert!(root.join("scripts/test.sh").is_file());
}

#[test]
fn run_builds_the_missing_preload_library_of_a_cargo_built_executable() {
    use std::os::unix::fs::PermissionsExt;
    // A source tree's layout with a release build of uiommu and no library beside it; a
    // stand-in `cargo` (CARGO) that records its arguments and "builds" the library.
    let ws = scratch("ws");
    let _ = std::fs::remove_dir_all(&ws);
    std::fs::create_dir_all(ws.join("crates/preload")).unwrap();
    std::fs::create_dir_all(ws.join("target/release")).unwrap();
    std::fs::write(ws.join("Cargo.toml"), "[workspace]\n").unwrap();
    std::fs::write(ws.join("crates/preload/Cargo.toml"), "").unwrap();
    let exe = ws.join("target/release/uiommu");
    std::fs::copy(env!("CARGO_BIN_EXE_uiommu"), &exe).unwrap();
    let cargo = ws.join("fake-cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/bin/sh\necho \"$PWD $*\" > {}\ncp {} target/release/libuiommu_preload.so\n",
            ws.join("cargo-args").display(),
            stand_in_library().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = output_of_fresh(|| {
        let mut c = Command::new(&exe);
        c.args(["run", "--", "sh", "-c", "echo \"P=$LD_PRELOAD\""])
            .env_remove("UIOMMU_PRELOAD")
            .env_remove("UIOMMU_PLATFORM")
            .env_remove("LD_PRELOAD")
            .env("CARGO", &cargo);
        c
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("cargo build --release -p uiommu-preload"),
        "{err}"
    );
    let args = std::fs::read_to_string(ws.join("cargo-args")).unwrap();
    let root = std::fs::canonicalize(&ws).unwrap();
    assert_eq!(
        args.trim(),
        format!("{} build --release -p uiommu-preload", root.display())
    );
    let lib = std::fs::canonicalize(ws.join("target/release/libuiommu_preload.so")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("P={}", lib.display())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Built once: the next run uses it without building.
    std::fs::remove_file(ws.join("cargo-args")).unwrap();
    let out = Command::new(&exe)
        .args(["run", "--", "true"])
        .env_remove("UIOMMU_PRELOAD")
        .env("CARGO", &cargo)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!ws.join("cargo-args").exists());
}

/// The output of the command `make` builds, whose program (or a program it runs) was just
/// written by this test: a child another test forked while the file was open for writing
/// holds it until that child execs, and exec is ETXTBSY meanwhile, so try again then.
fn output_of_fresh(mut make: impl FnMut() -> Command) -> std::process::Output {
    for _ in 0..100 {
        match make().output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {}
            Ok(out) if String::from_utf8_lossy(&out.stderr).contains("Text file busy") => {}
            r => return r.unwrap(),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the program stayed busy (ETXTBSY)");
}

#[test]
fn each_subcommand_says_what_is_wrong_with_its_use() {
    let run = |args: &[&str]| {
        let out = uiommu().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A platform file that is not there, and one that is not valid TOML: the file, and the
    // line and column of the mistake.
    let (code, err) = run(&["topology", "--platform", "/nonexistent/p.toml"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("/nonexistent/p.toml") && err.contains("No such file"),
        "{err}"
    );
    let dir = scratch("badtoml");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[function]]\nname = \"x\"\nbdf = 12\n").unwrap();
    let (code, err) = run(&["topology", "--platform", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("bad.toml") && err.contains("line 3, column"),
        "{err}"
    );
    // `run` without a program, and with one that is not there.
    let (code, err) = run(&["run"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("PROGRAM"), "{err}");
    let (code, err) = run(&[
        "run",
        "--preload",
        stand_in_library().to_str().unwrap(),
        "--",
        "/no/such/program",
    ]);
    assert_eq!(code, Some(127));
    assert!(err.contains("/no/such/program"), "{err}");
    // An instance no engine serves.
    for sub in ["status", "faults"] {
        let (code, err) = run(&[sub, "--instance", "nobody-serves-this"]);
        assert_eq!(code, Some(1), "{sub}");
        assert!(
            err.contains("no engine serves instance nobody-serves-this"),
            "{err}"
        );
    }
}
