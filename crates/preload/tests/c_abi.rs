//! Unmodified C programs against `libuiommu_preload.so`, through the real ioctl ABI.
//!
//! Each test compiles one program of `tests/c/` with the system C compiler (`cc`, with
//! `_FORTIFY_SOURCE` so the fortified `open` entry points are exercised too) and runs it with
//! `LD_PRELOAD` set to the library cargo built for this test run. A program prints
//! `PASS <name>: <n> checks` and exits 0, or names the failed check and exits 1.
//!
//! The library is the cdylib of this very package: cargo builds it into `target/<profile>/deps/`
//! before running integration tests, so a clean clone needs nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{compile, library};

/// Run a compiled program under the preload library (with `UIOMMU_PLATFORM` = `platform`, or
/// unset); returns its stdout and stderr after checking that it passed.
fn run_with(program: &Path, args: &[&str], platform: Option<&Path>) -> (String, String) {
    let mut cmd = Command::new(program);
    cmd.args(args).env("LD_PRELOAD", library());
    match platform {
        Some(p) => cmd.env("UIOMMU_PLATFORM", p),
        None => cmd.env_remove("UIOMMU_PLATFORM"),
    };
    let out = cmd.output().expect("run the C program");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}{stderr}",
        program.display(),
        out.status
    );
    assert!(stdout.contains("PASS "), "no PASS line:\n{stdout}");
    (stdout, stderr)
}

fn run(program: &Path, platform: Option<&Path>) -> String {
    run_with(program, &[], platform).0
}

/// The built-in platform written out as a file.
fn default_platform_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../platforms/default.toml")
}

#[test]
fn iommufd_basics() {
    run(&compile("iommufd_basic"), None);
}

#[test]
fn vfio_device_end_to_end_dma() {
    run(&compile("vfio_dma"), None);
}

#[test]
fn vfio_legacy_container_group_type1_and_sysfs() {
    run(&compile("vfio_legacy"), None);
}

#[test]
fn dev_nodes_stat_as_character_devices_and_directory_walks_see_the_view() {
    let out = run(&compile("dev_nodes"), None);
    assert!(out.contains("PASS dev_nodes exec child"), "{out}");
}

#[test]
fn dev_vfio_and_its_devices_directory_list_the_nodes() {
    run(&compile("dev_dirs"), None);
}

#[test]
fn fail_nth_counts_per_thread_and_fails_each_site_of_a_scenario_in_turn() {
    let out = run(&compile("fail_nth"), None);
    assert!(out.contains("sweep: "), "{out}");
}

#[test]
fn uiommu_fail_nth_fails_the_nth_site_of_the_process_once_and_says_so() {
    let program = compile("fail_nth");
    for n in ["1", "3"] {
        let out = Command::new(&program)
            .args(["process", n])
            .env("LD_PRELOAD", library())
            .env("UIOMMU_FAIL_NTH", n)
            .env_remove("UIOMMU_PLATFORM")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains("PASS fail_nth process"), "{stdout}");
        let line = format!("uiommu: UIOMMU_FAIL_NTH={n}: failed an allocation (ENOMEM) in thread");
        assert_eq!(stderr.matches(&line).count(), 1, "{stderr}");
    }
}

#[test]
fn exhausted_fds_and_memlock_get_the_kernels_errno_and_recover_after_release() {
    run(&compile("exhaust"), None);
}

#[test]
fn fault_queue_readiness_under_poll_select_epoll_and_efault_reads() {
    run(&compile("fault_poll"), None);
}

#[test]
fn threads_share_one_iommufd() {
    run(&compile("iommufd_threads"), None);
}

#[test]
fn socket_passing_close_range_and_fork() {
    let out = run(&compile("iommufd_files"), None);
    assert!(out.contains("PASS iommufd_files child"), "{out}");
}

#[test]
fn fork_children_drive_the_parents_device_and_hold_its_files() {
    let out = run(&compile("fork_vfio"), None);
    assert!(out.contains("PASS fork_vfio child"), "{out}");
}

#[test]
fn bad_inputs_of_every_command_get_the_kernels_errno_and_change_nothing() {
    let out = run(&compile("bad_inputs"), None);
    assert!(out.contains("PASS bad_inputs"), "{out}");
}

#[test]
fn the_dma_engine_reaches_pinned_pages_after_map_fixed_munmap_and_exec() {
    let out = run(&compile("dma_pins"), None);
    assert!(out.contains("PASS dma_pins"), "{out}");
}

/// Run C test `prog` in-process with the trace on into `path` (emptied first) in `format`; it
/// must pass; the trace.
fn traced(prog: &str, path: &std::path::Path, format: &str) -> String {
    std::fs::write(path, b"").unwrap();
    let out = Command::new(compile(prog))
        .env("LD_PRELOAD", library())
        .env_remove("UIOMMU_PLATFORM")
        .env("UIOMMU_TRACE", path)
        .env("UIOMMU_TRACE_FORMAT", format)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_trace_has_a_line_per_call_with_its_structs_result_and_errno() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("trace");
    std::fs::create_dir_all(&dir).unwrap();
    for (format, file) in [("text", "vfio_dma.trace"), ("json", "vfio_dma.jsonl")] {
        let path = dir.join(file);
        let text = traced("bad_inputs", &path, format);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 50, "{text}");
        if format == "text" {
            // A map decoded before and after, a refusal with its errno's name, a device call.
            assert!(
                lines.iter().any(|l| l.contains(" iommufd [context ")
                    && l.contains("] IOMMU_IOAS_MAP(IommuIoasMap { size: 40")
                    && l.contains(") = 0 -> IommuIoasMap {")),
                "{text}"
            );
            assert!(lines.iter().any(|l| l.contains(" = -1 EINVAL <")), "{text}");
            assert!(lines.iter().any(|l| l.contains(" = -1 EFAULT <")), "{text}");
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(" vfio-device [") && l.contains("] VFIO_DEVICE_")),
                "{text}"
            );
            assert!(lines.iter().all(|l| l.ends_with(" us>")), "{text}");
        } else {
            let v: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            assert!(v.iter().any(|c| c["call"] == "IOMMU_IOAS_ALLOC"
                && c["result"] == 0
                && c["out"].as_str().unwrap().contains("out_ioas_id")));
            assert!(v.iter().any(|c| c["errno"] == "EOPNOTSUPP"), "{text}");
            assert!(v.iter().all(|c| c["ns"].is_u64() && c["pid"].is_u64()));
        }
    }
    // Region accesses: a register write with its value, a config read with the value read.
    let path = dir.join("vfio_dma_regions.trace");
    let text = traced("vfio_dma", &path, "text");
    assert!(
        text.lines()
            .any(|l| l.contains(" vfio-device [0000:01:00.0")
                && l.contains("] pwrite(0x")
                && l.contains(", 4, BAR0+0x28, value 0x1) = 4 <")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" vfio-device [0000:01:00.0")
                && l.contains("] pread(0x")
                && l.contains(", config+0x")
                && l.contains(" -> value 0x")),
        "{text}"
    );
    // An mmap of a region that cannot be mapped, refused as the kernel refuses it.
    assert!(
        text.lines()
            .any(|l| l.contains(" vfio-device [0000:01:00.0")
                && l.contains("] mmap(0x1000, 0x1, 0x1, BAR0+0x0) = -1 EINVAL <")),
        "{text}"
    );
    // Each file names what it stands for: an iommufd its context; the device file its
    // function, and once bound the context and device id its bind returned.
    assert!(
        text.lines().any(|l| l.contains(" iommufd [context ")),
        "{text}"
    );
    let bind = text
        .lines()
        .find(|l| l.contains(" VFIO_DEVICE_BIND_IOMMUFD(") && l.contains(") = 0 -> "))
        .unwrap_or_else(|| panic!("{text}"));
    let devid = bind
        .rsplit("out_devid: ")
        .next()
        .and_then(|r| r.split(' ').next())
        .unwrap();
    assert!(
        bind.contains(" vfio-device [0000:01:00.0, context ")
            && bind.contains(&format!(", devid {devid}] VFIO_DEVICE_BIND")),
        "{bind}"
    );
    // A fault queue's file: its fault id, the records read and the responses written decoded.
    for (format, file) in [("text", "fault_poll.trace"), ("json", "fault_poll.jsonl")] {
        let path = dir.join(file);
        let text = traced("fault_poll", &path, format);
        if format == "text" {
            let alloc = text
                .lines()
                .find(|l| l.contains(" IOMMU_FAULT_QUEUE_ALLOC(") && l.contains(") = 0 -> "))
                .unwrap_or_else(|| panic!("{text}"));
            let fault = alloc
                .rsplit("out_fault_id: ")
                .next()
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .unwrap();
            let tag = format!(" fault-queue [context 1, fault {fault}] ");
            assert!(
                text.lines().any(|l| l.contains(&tag)
                    && l.contains(" read(0x")
                    && l.contains(") = 40 -> [IommuHwptPgfault { flags: ")),
                "{text}"
            );
            assert!(
                text.lines().any(|l| l.contains(&tag)
                    && l.contains(" write(0x")
                    && l.contains(", 8, [IommuHwptPageResponse { cookie: ")
                    && l.contains(") = 8 <")),
                "{text}"
            );
            assert!(
                text.lines().any(|l| l.contains(&tag)
                    && l.contains(" read(0x")
                    && l.contains(" = -1 EFAULT <")),
                "{text}"
            );
        } else {
            let v: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            assert!(
                v.iter().any(|c| c["file"] == "fault-queue"
                    && c["object"]["fault"].is_u64()
                    && c["object"]["context"].is_u64()
                    && c["call"] == "read"
                    && c["records"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("[IommuHwptPgfault {"))),
                "{text}"
            );
        }
    }
}

#[test]
fn pins_of_shared_memory_hold_their_pages_in_process_too() {
    let out = run(&compile("held_pins"), None);
    assert!(out.contains("PASS held_pins"), "{out}");
}

#[test]
fn pins_of_private_memory_hold_their_pages_through_munmap_map_fixed_fork_and_exec() {
    let out = run(&compile("private_pins"), None);
    assert!(out.contains("PASS private_pins"), "{out}");
    // With free huge pages (two: the copy's and, until the move ends, the original's), the
    // private hugetlb range was moved and held.
    if free_huge_pages() >= 2 {
        assert!(out.contains("hugetlb held"), "{out}");
    } else {
        support::part_not_run(
            "private hugetlb part of private_pins: fewer than 2 free 2 MiB pages",
        );
    }
    // Switched off, the same program sees what the old model gave: DMA after munmap faults.
    let mut cmd = Command::new(compile("private_pins"));
    cmd.env("LD_PRELOAD", library())
        .env("UIOMMU_HOLD_PRIVATE", "0")
        .env_remove("UIOMMU_PLATFORM");
    let off = cmd.output().unwrap();
    assert!(
        !off.status.success() && String::from_utf8_lossy(&off.stderr).contains("Bad address"),
        "{off:?}"
    );
}

#[test]
fn an_iommufd_sent_to_a_process_outside_the_family_works_there() {
    let out = run(&compile("fd_passing"), None);
    assert!(out.contains("PASS fd_passing receiver"), "{out}");
}

#[test]
fn platform_file_from_the_environment() {
    let platform = default_platform_file();
    run(&compile("iommufd_basic"), Some(&platform));
    run(&compile("vfio_dma"), Some(&platform));
}

#[test]
fn broken_platform_file_fails_the_open_with_enodev() {
    let bad = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c_abi/broken-platform.toml");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, "[[device\nnot toml").unwrap();
    let (_, stderr) = run_with(&compile("iommufd_files"), &["expect-enodev"], Some(&bad));
    assert_eq!(
        stderr.matches("uiommu: UIOMMU_PLATFORM=").count(),
        1,
        "one message naming the file:\n{stderr}"
    );
}

/// Free 2 MiB pages now (`HugePages_Free` of /proc/meminfo).
fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
