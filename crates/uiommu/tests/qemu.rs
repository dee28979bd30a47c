//! QEMU, unmodified, under `uiommu run`: its VFIO device realized on the emulated platform's
//! `dma-engine` at `0000:01:00.0`, through the iommufd backend (`/dev/iommu` and the VFIO device
//! cdev) and through the legacy container (`/dev/vfio/vfio` and the group file `/dev/vfio/5`).
//!
//! Each test starts `qemu-system-x86_64 -machine q35 -accel tcg -m 256 -nodefaults -display
//! none -S ... -qmp stdio` (no guest is booted), speaks QMP on its stdin/stdout
//! (`qmp_capabilities`, `query-pci`, `quit`) and checks that:
//!
//! - `query-pci` lists the device with the vendor and device ids of the platform's `dma0`;
//! - `quit` ends QEMU with exit status 0;
//! - QEMU mapped its guest RAM for DMA: the preload library's `UIOMMU_STATS` summary (written to
//!   a file at exit) shows which device files were opened and at least the 256 MiB of RAM
//!   mapped (`IOMMU_IOAS_MAP` or `VFIO_IOMMU_MAP_DMA`).
//!
//! QEMU 8.2 or later is needed (`-object iommufd`). Without `qemu-system-x86_64` the tests fail
//! with a message saying how to install it, unless `UIOMMU_SKIP_QEMU=1` is set, in which case
//! they say they were not run (counted so by scripts/test.sh, which sets it when it could not
//! install QEMU). The `uiommu` executable is cargo's; the
//! preload library is looked up next to it (or in `deps/`) and built with cargo if absent.

mod support;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;
use support::library;

/// How long one QMP answer may take (QEMU starts in well under a second).
const TIMEOUT: Duration = Duration::from_secs(30);

/// The minimum QEMU (the `iommufd` object appeared in 8.2).
const MIN_QEMU: (u32, u32) = (8, 2);

/// The QEMU binary, or None when the tests are to be skipped (printed); panics when QEMU is
/// missing or too old and skipping was not asked for.
fn qemu() -> Option<&'static str> {
    const QEMU: &str = "qemu-system-x86_64";
    let skip = std::env::var_os("UIOMMU_SKIP_QEMU").is_some_and(|v| v == "1");
    let version = Command::new(QEMU)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let parsed = version.as_deref().and_then(parse_version);
    let problem = match parsed {
        None => format!("{QEMU} is not installed (or `{QEMU} --version` failed)"),
        Some(v) if v < MIN_QEMU => format!(
            "{QEMU} {}.{} is older than {}.{} (no iommufd backend)",
            v.0, v.1, MIN_QEMU.0, MIN_QEMU.1
        ),
        Some(_) => return Some(QEMU),
    };
    if skip {
        support::not_run(&format!("UIOMMU_SKIP_QEMU=1: {problem}"));
        return None;
    }
    panic!(
        "{problem}. Install QEMU >= {}.{}, e.g. on Debian bookworm: add `deb \
         http://deb.debian.org/debian bookworm-backports main` to \
         /etc/apt/sources.list.d/backports.list, then `apt-get update && apt-get install -y -t \
         bookworm-backports qemu-system-x86` (.ci/run does this). Or set UIOMMU_SKIP_QEMU=1 to \
         skip these tests.",
        MIN_QEMU.0, MIN_QEMU.1
    );
}

/// `(major, minor)` from `QEMU emulator version 10.0.2 (...)`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let mut it = rest.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// A scratch file path unique to this test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("qemu");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// QEMU with QMP on its stdin/stdout.
struct Qmp {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Everything QEMU printed on stdout, for failure messages.
    transcript: String,
}

impl Qmp {
    fn start(mut cmd: Command) -> Qmp {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start uiommu run");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut q = Qmp {
            child,
            stdin,
            lines,
            transcript: String::new(),
        };
        let greeting = q.next_line();
        assert!(greeting.contains("\"QMP\""), "no QMP greeting: {greeting}");
        q
    }

    fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => {
                self.transcript += &line;
                self.transcript.push('\n');
                line
            }
            Err(_) => {
                let _ = self.child.kill();
                let out = self.child.wait_with_output_now();
                panic!(
                    "QEMU gave no QMP answer within {TIMEOUT:?}; stdout so far:\n{}\nstderr:\n{out}",
                    self.transcript
                );
            }
        }
    }

    /// Send one command; its `return` (or `error`) line, events skipped.
    fn execute(&mut self, command: &str) -> String {
        let stdin = self.stdin.as_mut().expect("QMP stdin open");
        writeln!(stdin, "{{\"execute\": \"{command}\"}}").expect("write to QMP");
        stdin.flush().unwrap();
        loop {
            let line = self.next_line();
            if line.starts_with("{\"return\"") || line.starts_with("{\"error\"") {
                return line;
            }
        }
    }

    /// `quit`, then the exit status and stderr.
    fn quit(mut self) -> (std::process::ExitStatus, String) {
        let r = self.execute("quit");
        assert!(r.starts_with("{\"return\""), "quit: {r}");
        drop(self.stdin.take());
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        let status = self.child.wait().expect("wait for QEMU");
        (status, err)
    }
}

trait WaitNow {
    fn wait_with_output_now(&mut self) -> String;
}

impl WaitNow for Child {
    fn wait_with_output_now(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        let _ = self.wait();
        err
    }
}

/// The vendor and device ids of `dma0` (0000:01:00.0) on the built-in platform.
fn dma0_ids() -> (u16, u16) {
    let p = uiommu::platform::Platform::builtin();
    let id = p
        .topology
        .find_name("dma0")
        .expect("dma0 on the built-in platform");
    let d = p.topology.device(id).expect("dma0 device");
    (d.vendor, d.device)
}

/// Whether a `query-pci` answer lists a function with these ids (QEMU prints them in decimal,
/// in an `"id": {...}` object).
fn lists_device(query_pci: &str, vendor: u16, device: u16) -> bool {
    query_pci.split("\"id\": {").skip(1).any(|rest| {
        let obj = rest.split('}').next().unwrap_or("");
        obj.contains(&format!("\"vendor\": {vendor},"))
            && (obj.contains(&format!("\"device\": {device},"))
                || obj.ends_with(&format!("\"device\": {device}")))
    })
}

/// Run QEMU with `device_args` under `uiommu run` and do the QMP round; returns the
/// `UIOMMU_STATS` summary. With `shell_prefix`, QEMU is started by `sh -c 'PREFIX exec qemu
/// ...'` (to hand it fds the shell opened).
fn run_qemu(name: &str, device_args: &[&str]) -> Option<String> {
    run_qemu_via(name, None, device_args)
}

/// `uiommu run RUN_ARGS --preload LIB -- [PREFIX...] qemu` with a paused q35 TCG machine,
/// `device_args` and QMP on stdio.
fn qemu_command(qemu: &str, run_args: &[&str], prefix: &[String], device_args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommu"));
    cmd.arg("run")
        .args(run_args)
        .arg("--preload")
        .arg(library())
        .arg("--")
        .args(prefix)
        .arg(qemu)
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
        ])
        .args(["-display", "none", "-S"])
        .args(device_args)
        .args(["-qmp", "stdio"])
        .env_remove("UIOMMU_PLATFORM")
        .env_remove("LD_PRELOAD");
    cmd
}

fn run_qemu_via(name: &str, shell_prefix: Option<&str>, device_args: &[&str]) -> Option<String> {
    let qemu = qemu()?;
    let stats = scratch(&format!("{name}.stats"));
    let mut prefix_args = Vec::new();
    if let Some(prefix) = shell_prefix {
        // sh -c 'PREFIX exec "$0" "$@"' qemu ARGS...
        prefix_args = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("{prefix} exec \"$0\" \"$@\""),
        ];
    }
    // Traced too (`uiommu run --trace`): read by the tests that check QEMU's calls.
    let trace = scratch(&format!("{name}.trace"));
    let run_args = ["--trace", trace.to_str().unwrap()];
    let mut cmd = qemu_command(qemu, &run_args, &prefix_args, device_args);
    cmd.env("UIOMMU_STATS", &stats);
    let mut q = Qmp::start(cmd);
    let caps = q.execute("qmp_capabilities");
    assert_eq!(caps, "{\"return\": {}}");
    let pci = q.execute("query-pci");
    let transcript = q.transcript.clone();
    let (status, stderr) = q.quit();
    println!("{transcript}");
    eprintln!("{stderr}");
    let (vendor, device) = dma0_ids();
    assert!(
        lists_device(&pci, vendor, device),
        "query-pci does not list {vendor:04x}:{device:04x}:\n{pci}\nstderr:\n{stderr}"
    );
    assert!(
        status.success(),
        "QEMU exited with {status}; stderr:\n{stderr}"
    );
    let summary = std::fs::read_to_string(&stats).expect("the UIOMMU_STATS summary");
    println!("{summary}");
    Some(summary)
}

/// The bytes the summary's `dma map` line reports mapped.
fn mapped_bytes(summary: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.starts_with("uiommu stats: dma map "))
        .unwrap_or_else(|| panic!("no dma map line:\n{summary}"));
    line.split_whitespace()
        .nth(6)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad dma map line: {line}"))
}

const GUEST_RAM: u64 = 256 << 20;

#[test]
fn qemu_iommufd_backend_realizes_the_vfio_device_and_maps_guest_ram() {
    let Some(summary) = run_qemu(
        "iommufd",
        &[
            "-object",
            "iommufd,id=iommufd0",
            "-device",
            "vfio-pci,host=0000:01:00.0,iommufd=iommufd0,id=dma0",
        ],
    ) else {
        return;
    };
    assert!(
        summary.contains("uiommu stats: open /dev/iommu 1\n"),
        "{summary}"
    );
    assert!(
        summary.contains("uiommu stats: open /dev/vfio/devices/vfio0 1\n"),
        "{summary}"
    );
    assert!(!summary.contains("open /dev/vfio/vfio"), "{summary}");
    assert!(
        summary.contains("uiommu stats: ioctl VFIO_DEVICE_BIND_IOMMUFD ok 1\n"),
        "{summary}"
    );
    assert!(
        summary.contains("uiommu stats: ioctl IOMMU_IOAS_MAP ok "),
        "{summary}"
    );
    assert!(mapped_bytes(&summary) >= GUEST_RAM, "{summary}");
    // The trace of the run: QEMU's bind names the device object it made, and its map of guest
    // RAM into the IOAS it allocated is there, decoded.
    let trace = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("qemu")
            .join("iommufd.trace"),
    )
    .unwrap();
    let bind = trace
        .lines()
        .find(|l| l.contains(" VFIO_DEVICE_BIND_IOMMUFD(") && l.contains(") = 0 -> "))
        .unwrap_or_else(|| panic!("{trace}"));
    assert!(
        bind.contains(" vfio-device [0000:01:00.0, context 1, devid "),
        "{bind}"
    );
    let ioas = trace
        .lines()
        .find_map(|l| {
            l.contains(" IOMMU_IOAS_ALLOC(")
                .then(|| l.rsplit("out_ioas_id: ").next())
                .flatten()
                .and_then(|r| r.split(' ').next())
        })
        .unwrap_or_else(|| panic!("{trace}"));
    assert!(
        trace
            .lines()
            .any(|l| l.contains(" iommufd [context 1] IOMMU_IOAS_MAP(")
                && l.contains(&format!("ioas_id: {ioas}, "))
                && l.contains(&format!("length: {GUEST_RAM}, iova: 0 }}) = 0 -> "))),
        "{trace}"
    );
}

#[test]
fn qemu_iommufd_backend_with_fds_opened_by_its_launcher() {
    // The shell opens /dev/iommu and the device cdev and execs QEMU with them: QEMU is handed
    // the fds (`fd=` of the iommufd object and of vfio-pci) and opens nothing itself.
    let Some(summary) = run_qemu_via(
        "iommufd-fd",
        Some("exec 3<>/dev/iommu 4<>/dev/vfio/devices/vfio0;"),
        &[
            "-object",
            "iommufd,id=iommufd0,fd=3",
            "-device",
            "vfio-pci,fd=4,iommufd=iommufd0,id=dma0",
        ],
    ) else {
        return;
    };
    assert!(
        summary.contains("uiommu stats: inherited /dev/iommu 1\n"),
        "{summary}"
    );
    assert!(
        summary.contains("uiommu stats: inherited /dev/vfio/devices/vfio0 1\n"),
        "{summary}"
    );
    assert!(!summary.contains("uiommu stats: open "), "{summary}");
    assert!(
        summary.contains("uiommu stats: ioctl VFIO_DEVICE_BIND_IOMMUFD ok 1\n"),
        "{summary}"
    );
    assert!(mapped_bytes(&summary) >= GUEST_RAM, "{summary}");
}

#[test]
fn qemu_legacy_container_realizes_the_vfio_device_and_maps_guest_ram() {
    let Some(summary) = run_qemu("legacy", &["-device", "vfio-pci,host=0000:01:00.0,id=dma0"])
    else {
        return;
    };
    assert!(
        summary.contains("uiommu stats: open /dev/vfio/vfio 1\n"),
        "{summary}"
    );
    assert!(
        summary.contains("uiommu stats: open /dev/vfio/5 1\n"),
        "{summary}"
    );
    assert!(!summary.contains("open /dev/iommu"), "{summary}");
    assert!(
        summary.contains("uiommu stats: ioctl VFIO_GROUP_GET_DEVICE_FD ok 1\n"),
        "{summary}"
    );
    assert!(
        summary.contains("uiommu stats: ioctl VFIO_IOMMU_MAP_DMA ok "),
        "{summary}"
    );
    assert!(mapped_bytes(&summary) >= GUEST_RAM, "{summary}");
}

/// QEMU under the host engine (`uiommu run --engine host`), with `device_args`: while it
/// runs, the engine's status must show QEMU holding an iommufd and the device file, the
/// device's group owned by QEMU's context, and guest RAM pinned for the attached domain.
fn qemu_under_the_host_engine(name: &str, device_args: &[&str], node: &str) {
    let Some(qemu) = qemu() else { return };
    let instance = format!("qemutest-{}-{name}", std::process::id());
    let cmd = qemu_command(
        qemu,
        &["--engine", "host", "--instance", &instance],
        &[],
        device_args,
    );
    let mut q = Qmp::start(cmd);
    assert_eq!(q.execute("qmp_capabilities"), "{\"return\": {}}");
    let pci = q.execute("query-pci");
    let status = Command::new(env!("CARGO_BIN_EXE_uiommu"))
        .args(["status", "--json", "--instance", &instance])
        .output()
        .unwrap();
    let (exit, stderr) = q.quit();
    let (vendor, device) = dma0_ids();
    assert!(lists_device(&pci, vendor, device), "{pci}\n{stderr}");
    assert!(exit.success(), "QEMU exited with {exit}; stderr:\n{stderr}");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    let files: Vec<&str> = text.split("\"id\":").collect();
    assert!(text.contains(&format!("\"node\":\"{node}\"")), "{text}");
    assert!(text.contains("\"kind\":\"iommufd\""), "{text}");
    assert!(files.len() > 2, "{text}");
    // dma0 (0000:01:00.0) is group 5 on the built-in platform: owned by a context.
    assert!(
        text.contains(
            "\"devices\":[\"0000:01:00.0\"],\"domain\":\"paging\",\"group\":5,\"owner\":"
        ),
        "{text}"
    );
    let pins: u64 = text
        .split("\"total_pins\":")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(pins * 4096 >= GUEST_RAM, "{pins} pins: {text}");
}

#[test]
fn qemu_iommufd_backend_under_the_host_engine() {
    qemu_under_the_host_engine(
        "iommufd",
        &[
            "-object",
            "iommufd,id=iommufd0",
            "-device",
            "vfio-pci,host=0000:01:00.0,iommufd=iommufd0,id=dma0",
        ],
        "/dev/vfio/devices/vfio0",
    );
}

#[test]
fn qemu_legacy_container_under_the_host_engine() {
    qemu_under_the_host_engine(
        "legacy",
        &["-device", "vfio-pci,host=0000:01:00.0,id=dma0"],
        "/dev/vfio/5",
    );
}

#[test]
fn version_parsing() {
    assert_eq!(
        parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\n"),
        Some((10, 0))
    );
    assert_eq!(parse_version("QEMU emulator version 8.2.1\n"), Some((8, 2)));
    assert_eq!(parse_version("nonsense"), None);
    assert!(lists_device(
        "{\"id\": {\"device\": 4336, \"subsystem-vendor\": 6966, \"vendor\": 6966, \"subsystem\": 4336}}",
        0x1b36,
        0x10f0
    ));
    assert!(!lists_device(
        "{\"id\": {\"device\": 1, \"vendor\": 6966,}}",
        0x1b36,
        0x10f0
    ));
}
