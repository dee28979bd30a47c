//! The seccomp front-end as a user meets it: a static binary, compiled here with
//! `gcc -static`, run with plain `uiommu run` (auto: seccomp for a static executable, served
//! by the host engine), does what the same program does under the preload library; static
//! and dynamic programs share one engine and contend for its devices as processes do on
//! Linux; a static program killed mid-call leaves nothing behind; and the refusals.

mod support;

use support::uiommu;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `crates/preload/tests/c/<name>.c` compiled (static with `-static`), once per test process.
fn program(name: &str, static_: bool) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let key = format!("{name}{}", if static_ { "-static" } else { "" });
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../preload/tests/c");
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("seccomp");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(&key);
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args([
        "-std=gnu11",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pthread",
    ]);
    if static_ {
        cc.arg("-static");
    }
    let status = cc
        .arg("-I")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .arg(src.join(format!("{name}.c")))
        .status()
        .expect("run the C compiler `cc` (install gcc and libc6-dev, which has libc.a)");
    assert!(status.success(), "compiling {name}.c failed");
    built.push((key, out.clone()));
    out
}

/// An engine of its own for one test (`uiommu serve`), killed at the end.
struct Served {
    name: String,
    serve: Child,
}

impl Served {
    fn new(test: &str) -> Served {
        let name = format!("seccomp-{}-{test}", std::process::id());
        let serve = uiommu()
            .args(["serve", "--instance", &name])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Served { name, serve };
        wait_until("the engine answers", || s.status().is_some());
        s
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = uiommu()
            .args(["status", "--json", "--instance", &self.name])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// `uiommu run --instance NAME RUN_ARGS -- program args`.
    fn command(&self, run_args: &[&str], program: &Path, args: &[&str]) -> Command {
        let mut cmd = uiommu();
        cmd.args(["run", "--instance", &self.name])
            .args(run_args)
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }

    /// Run to completion; it must pass.
    fn run(&self, run_args: &[&str], program: &Path, args: &[&str]) -> String {
        let out = self.command(run_args, program, args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        print!("{stdout}");
        eprint!("{stderr}");
        assert!(
            out.status.success() && stdout.contains("PASS "),
            "{} {args:?} failed ({}):\n{stdout}{stderr}",
            program.display(),
            out.status
        );
        stdout
    }

    /// Start with a pipe on stdin (closed to let it finish); returns once it says READY.
    fn start(&self, program: &Path, args: &[&str]) -> (Child, String) {
        let mut child = self
            .command(&[], program, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("READY"), "{args:?}: {line:?}");
        std::thread::spawn(move || {
            for l in reader.lines().map_while(Result::ok) {
                println!("{l}");
            }
        });
        (child, line)
    }

    /// The engine holds no file, no pin, and no group is owned by a context.
    fn settle(&self) {
        wait_until("the engine holds nothing", || {
            let v = self.status().unwrap();
            v["files"].as_array().unwrap().is_empty()
                && v["pinned"]["total_pins"] == 0
                && v["pinned"]["user_pages"] == 0
                && v["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|g| g["owner"].is_null())
        });
    }
}

impl Drop for Served {
    /// SIGTERM: the engine ends in order, its socket and lock file removed.
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.serve.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.serve.wait();
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// C programs of the library's suite, static, under plain `uiommu run`.
macro_rules! static_under_seccomp {
    ($($test:ident: $prog:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            let s = Served::new($prog);
            let out = s.run(&[], &program($prog, true), &[]);
            assert!(out.contains(concat!("PASS ", $prog)));
            s.settle();
        }
    )*};
}

static_under_seccomp! {
    static_iommufd_basic: "iommufd_basic",
    static_iommufd_files: "iommufd_files",
    static_iommufd_threads: "iommufd_threads",
    static_vfio_dma: "vfio_dma",
    static_fault_poll: "fault_poll",
    static_fork_vfio: "fork_vfio",
    static_fd_passing: "fd_passing",
    static_signal_calls: "signal_calls",
    static_vfio_legacy: "vfio_legacy",
    static_bad_inputs: "bad_inputs",
    static_dev_dirs: "dev_dirs",
    static_dev_nodes: "dev_nodes",
}

#[test]
fn the_sysfs_view_of_a_root_engine_reaches_nothing_outside_it_for_another_uid() {
    if !nix_is_root() {
        support::not_run("not root: the view's confinement for another uid is not checked");
        return;
    }
    let s = Served::new("confined");
    // A root-only file: the program (uid 65534) must not get it through the engine.
    let dir = std::env::temp_dir().join(format!("uiommu-confined-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "SECRET\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The program where uid 65534 can run it.
    let prog = dir.join("view_confined");
    std::fs::copy(program("view_confined", true), &prog).unwrap();
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = s.command(&[], &prog, &[secret.to_str().unwrap()]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    // Root's socket directory (`/run/uiommu`) for this uid too: the root engine serves it.
    cmd.env("XDG_RUNTIME_DIR", "/run");
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("PASS view_confined"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The root engine served it: it made its view.
    let view = uiommu_proto::socket_dir().join(format!("{}.view", s.name));
    assert!(
        view.join("sys/bus/pci/devices").is_dir(),
        "{}",
        view.display()
    );
    s.settle();
}

#[test]
fn an_engine_of_another_uid_holds_pinned_memfd_pages_through_the_programs_descriptor() {
    if !nix_is_root() {
        support::not_run("not root: cannot start an engine of another uid here");
        return;
    }
    // uid 65534's runtime directory, its engine, and the program (under the preload
    // front-end) of that uid.
    let dir = std::env::temp_dir().join(format!("uiommu-uid65534-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let name = format!("nobody-{}", std::process::id());
    let as_nobody = |cmd: &mut Command| {
        std::os::unix::process::CommandExt::uid(cmd, 65534);
        std::os::unix::process::CommandExt::gid(cmd, 65534);
        cmd.env("XDG_RUNTIME_DIR", &dir);
    };
    let mut serve = uiommu();
    serve
        .args(["serve", "--instance", &name])
        .stderr(Stdio::null());
    as_nobody(&mut serve);
    let mut serve = serve.spawn().unwrap();
    let sock = dir.join("uiommu").join(format!("{name}.sock"));
    wait_until("the engine of uid 65534 answers", || sock.exists());
    // The library is built here (as root) first: uid 65534 can run neither this machine's
    // cargo nor write to the target directory, so `uiommu run` could not build it for them.
    let lib = support::library();
    // Shared memory held through the program's descriptor, and private memory moved onto
    // memfds the program keeps (pinnable), each reached after munmap and the like.
    let outs: Vec<_> = ["held_pins", "private_pins", "dma_pins"]
        .into_iter()
        .map(|p| {
            let mut run = uiommu();
            run.args(["run", "--engine", "host", "--instance", &name, "--preload"])
                .arg(lib)
                .arg("--")
                .arg(program(p, false));
            as_nobody(&mut run);
            (p, run.output().unwrap())
        })
        .collect();
    if let Some(pid) = rustix::process::Pid::from_raw(serve.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = serve.wait();
    let _ = std::fs::remove_dir_all(&dir);
    for (p, out) in outs {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && stdout.contains(&format!("PASS {p}"))
                && !stdout.contains("nothing"),
            "{p}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn nix_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn a_dynamic_program_can_be_served_by_the_seccomp_front_end_too() {
    let s = Served::new("dynamic");
    s.run(
        &["--front-end", "seccomp"],
        &program("iommufd_basic", false),
        &[],
    );
    s.settle();
}

#[test]
fn static_and_dynamic_programs_share_one_engine_and_contend_for_its_groups() {
    let s = Served::new("contend");
    let lib = support::library();
    let dynamic = ["--engine", "host", "--front-end", "preload", "--preload"];
    let mut dynamic: Vec<&str> = dynamic.to_vec();
    dynamic.push(lib.to_str().unwrap());
    // vfio1 is 0000:02:00.0, vfio2 its group sibling 0000:02:00.1, vfio0 another group.
    let (mut holder, _) = s.start(&program("host_peers", true), &["hold", "1"]);
    let peers_dyn = program("host_peers", false);
    s.run(&dynamic, &peers_dyn, &["contend", "1", "22"]);
    s.run(&dynamic, &peers_dyn, &["contend", "2", "1"]);
    let peers = program("host_peers", true);
    s.run(&[], &peers, &["contend", "2", "1"]);
    s.run(&[], &peers, &["contend", "0", "0"]);
    let v = s.status().unwrap();
    let owned: Vec<_> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| !g["owner"].is_null())
        .collect();
    assert_eq!(owned.len(), 1, "{owned:?}");
    // The owner is the static holder's context: its iommufd, held by it alone.
    let files = v["files"].as_array().unwrap();
    assert!(
        files.iter().any(|f| f["context"] == owned[0]["owner"]
            && f["holders"] == serde_json::json!([holder.id()])),
        "{files:?}"
    );
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    s.settle();
    // Released with its last holder: a dynamic program binds the sibling now.
    s.run(&dynamic, &peers_dyn, &["contend", "2", "0"]);
    s.settle();
}

#[test]
fn a_static_program_killed_mid_call_leaves_nothing() {
    let s = Served::new("kill");
    for _ in 0..3 {
        let (mut churn, _) = s.start(&program("host_peers", true), &["churn", "1"]);
        std::thread::sleep(Duration::from_millis(200));
        churn.kill().unwrap();
        let _ = churn.wait();
        s.settle();
    }
    s.run(&[], &program("host_peers", true), &["contend", "1", "0"]);
    s.settle();
}

#[test]
fn the_seccomp_front_end_refuses_the_in_process_engine_and_unknown_names() {
    let prog = program("iommufd_basic", true);
    let out = uiommu()
        .args([
            "run",
            "--front-end",
            "seccomp",
            "--engine",
            "in-process",
            "--",
        ])
        .arg(&prog)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host engine"));
    let out = uiommu()
        .env("UIOMMU_FRONT_END", "ptrace")
        .args(["run", "--"])
        .arg(&prog)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UIOMMU_FRONT_END=ptrace"));
}

#[test]
fn faults_lists_a_static_programs_dma_faults_with_device_iova_access_and_reason() {
    let s = Served::new("faults");
    s.run(&[], &program("vfio_dma", true), &[]);
    let out = uiommu()
        .args(["faults", "--json", "--instance", &s.name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = v["log"].as_array().unwrap();
    let has = |access: &str, iova: u64, reason: &str| {
        log.iter().any(|f| {
            f["access"] == access
                && f["iova"] == iova
                && f["reason"] == reason
                && f["device"] == "0000:01:00.0"
                && f["time"].as_f64().is_some_and(|t| t > 1.0e9)
        })
    };
    // vfio_dma.c: a copy while blocked, one to an unmapped IOVA, one into a read-only mapping.
    assert!(has("read", 0x100000, "blocked"), "{v}");
    assert!(has("write", 0x900000, "not-mapped"), "{v}");
    assert!(has("write", 0x100000, "permission"), "{v}");
    assert!(v["total"].as_u64().unwrap() >= 3, "{v}");
    let text = uiommu()
        .args(["faults", "--instance", &s.name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("0000:01:00.0") && text.contains("write at IOVA 0x900000: not-mapped"),
        "{text}"
    );
    s.settle();
    // No engine: the refusal, exit 1.
    let none = uiommu()
        .args(["faults", "--instance", "no-such-instance-here"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
}

#[test]
fn status_svg_draws_the_group_a_program_holds_with_its_owner() {
    let s = Served::new("svg");
    // vfio1 is 0000:02:00.0, in group 6 with 0000:02:00.1.
    let (mut holder, _) = s.start(&program("host_peers", true), &["hold", "1"]);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.svg", s.name));
    let out = uiommu()
        .args(["status", "--instance", &s.name, "--svg"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
    let group = |n: u32| {
        doc.descendants()
            .find(|e| e.attribute("id") == Some(format!("group-{n}").as_str()))
            .map(|g| {
                g.descendants()
                    .filter_map(|t| t.text())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let six = group(6);
    let owner = format!("(pid {}", holder.id());
    assert!(
        six.iter()
            .any(|t| t.starts_with("owner: context") && t.contains(&owner)),
        "{six:?}"
    );
    assert!(six.iter().any(|t| t.starts_with("0000:02:00.1")), "{six:?}");
    assert!(
        group(5)
            .iter()
            .any(|t| t == "owner: the kernel (no context)"),
        "{:?}",
        group(5)
    );
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    s.settle();
}

#[test]
fn a_host_engine_has_one_uapi_level_and_says_which() {
    let s = Served::new("level");
    assert_eq!(s.status().unwrap()["kernel"], "6.12+");
    // A program asking for another level is not served by it: exit 1, named.
    let out = uiommu()
        .args([
            "run",
            "--engine",
            "host",
            "--instance",
            &s.name,
            "--kernel",
            "6.12",
        ])
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("served at uAPI level 6.12+, not 6.12"),
        "{why}"
    );
    // One started for a program that asks for 6.12 follows 6.12.
    let name = format!("{}-612", s.name);
    let out = uiommu()
        .args([
            "run",
            "--engine",
            "host",
            "--instance",
            &name,
            "--kernel",
            "6.12",
        ])
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let st = uiommu()
        .args(["status", "--json", "--instance", &name])
        .output()
        .unwrap();
    // (It lives a grace of seconds after its last client.)
    assert!(st.status.success(), "{st:?}");
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["kernel"], "6.12");
}

#[test]
fn trace_follows_every_clients_calls_live_static_and_dynamic() {
    let s = Served::new("trace");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("seccomp");
    std::fs::create_dir_all(&dir).unwrap();
    let tracer = |format: &str, file: &Path| {
        uiommu()
            .args([
                "trace",
                "--instance",
                &s.name,
                "--format",
                format,
                "--output",
            ])
            .arg(file)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (text_file, json_file) = (dir.join("live.trace"), dir.join("live.jsonl"));
    let mut text = tracer("text", &text_file);
    let mut json = tracer("json", &json_file);
    wait_until("both tracers are connected", || {
        s.status().is_some_and(|v| v["tracers"] == 2)
    });
    // Another uid may not trace (a line shows every client's arguments).
    use std::os::unix::process::CommandExt;
    let refused = uiommu()
        .args(["trace", "--instance", &s.name, "--count", "1"])
        // Root's socket directory is /run/uiommu; for another uid, $XDG_RUNTIME_DIR/uiommu.
        .env("XDG_RUNTIME_DIR", "/run")
        .uid(65534)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("Permission denied"), "{why}");
    // A static program (seccomp front-end) and a dynamic one (preload), both traced.
    s.run(&[], &program("vfio_dma", true), &[]);
    s.run(
        &["--engine", "host", "--front-end", "preload"],
        &program("vfio_dma", false),
        &[],
    );
    s.settle();
    // The engine ends: the tracers see the end of the stream and exit 0.
    let pid = rustix::process::Pid::from_raw(s.serve.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(text.wait().unwrap().success());
    assert!(json.wait().unwrap().success());
    let lines = std::fs::read_to_string(&text_file).unwrap();
    let pids: std::collections::BTreeSet<&str> = lines
        .lines()
        .filter(|l| l.contains(" IOMMU_IOAS_ALLOC("))
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    assert_eq!(pids.len(), 2, "two programs' allocations:\n{lines}");
    assert!(
        lines.lines().any(|l| l.contains(" vfio-device [file ")
            && l.contains(", 0000:01:00.0, context ")
            && l.contains("] pwrite(0x")
            && l.contains(", 4, BAR0+0x28, value 0x1) = 4 <")),
        "the doorbell:\n{lines}"
    );
    assert!(
        lines.lines().any(|l| l.contains(" iommufd [file ")
            && l.contains(", context ")
            && l.contains(" IOMMU_IOAS_MAP(IommuIoasMap {")
            && l.contains(") = 0 -> IommuIoasMap {")),
        "{lines}"
    );
    assert!(
        lines.lines().any(|l| l.contains(" = -1 EINVAL <")),
        "{lines}"
    );
    // Both front-ends' mmap of a region that cannot be mapped.
    let mmaps: std::collections::BTreeSet<&str> = lines
        .lines()
        .filter(|l| l.contains("] mmap(0x1000, 0x1, 0x1, BAR0+0x0) = -1 EINVAL <"))
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    assert_eq!(mmaps, pids, "{lines}");
    assert!(lines.lines().all(|l| l.ends_with(" us>")), "{lines}");
    let objects: Vec<serde_json::Value> = std::fs::read_to_string(&json_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(objects.len(), lines.lines().count());
    // The bind's line names the device object it made (the file as it is after the call).
    let binds: Vec<&serde_json::Value> = objects
        .iter()
        .filter(|o| o["call"] == "VFIO_DEVICE_BIND_IOMMUFD" && o["result"] == 0)
        .collect();
    assert!(binds.len() >= 2, "{binds:?}");
    for b in binds {
        let o = &b["object"];
        assert!(o["file"].is_u64() && o["context"].is_u64(), "{b}");
        assert!(o["device"].as_str().unwrap().starts_with("0000:0"), "{b}");
        let out = b["out"].as_str().unwrap();
        assert!(
            out.contains(&format!("out_devid: {} }}", o["devid"])),
            "{b}"
        );
    }
    assert!(objects
        .iter()
        .any(|o| o["call"] == "pwrite" && o["region"] == "BAR0" && o["at"] == 0x28));
    assert!(objects
        .iter()
        .all(|o| o["ns"].is_u64() && o["pid"].is_u64()));
}
