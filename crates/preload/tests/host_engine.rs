//! The host engine with the preload library as its front-end: unrelated processes sharing one
//! IOMMU subsystem, and every C program of `tests/c/` under it.
//!
//! Each test starts an engine of its own instance in a thread of the test process
//! (`uiommu_host::serve`), then runs C programs as separate processes — none the parent of
//! another — with `UIOMMU_SOCKET` naming that engine. After each scenario the engine must be
//! back to nothing: no file open, no page pinned or charged, the invariants holding.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{compile, library};
use uiommu_host::{Config, Host};

/// A host engine of a fresh instance, serving from a thread of this process.
struct Engine {
    host: Arc<Host>,
    socket: PathBuf,
    instance: String,
}

impl Drop for Engine {
    /// The test's instance leaves nothing in the socket directory.
    fn drop(&mut self) {
        uiommu_host::remove_instance_files(&self.instance);
    }
}

fn engine(name: &str) -> Engine {
    engine_with(name, |_| {})
}

fn engine_with(name: &str, configure: impl FnOnce(&mut Config)) -> Engine {
    let instance = format!("test-{}-{name}", std::process::id());
    let mut config = Config::new(&instance);
    configure(&mut config);
    let host = Host::new(uiommu_platform::Platform::builtin(), config).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = host.clone();
    std::thread::spawn(move || {
        let r = uiommu_host::serve(h, || tx.send(()).unwrap());
        panic!("serve returned: {r:?}");
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the engine starts");
    Engine {
        host,
        socket: uiommu_proto::socket_path(&instance),
        instance,
    }
}

impl Engine {
    /// A command running `program` with `args` under the library, served by this engine.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("LD_PRELOAD", library())
            .env("UIOMMU_SOCKET", &self.socket)
            .env_remove("UIOMMU_PLATFORM")
            .env_remove("UIOMMU_CAPS");
        cmd
    }

    /// Run `program` to completion; it must pass. Returns its stdout.
    fn run(&self, program: &Path, args: &[&str]) -> String {
        let out = self.command(program, args).output().unwrap();
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

    /// Start `program` with a pipe on stdin (closed to let it finish); returns once it prints
    /// its READY line, and the line.
    fn start(&self, program: &Path, args: &[&str]) -> (Child, String) {
        self.start_command(self.command(program, args), args)
    }

    /// [`Engine::start`] of a command made by [`Engine::command`] (and adjusted).
    fn start_command(&self, mut cmd: Command, args: &[&str]) -> (Child, String) {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("READY"), "{args:?}: {line:?}");
        // Keep the rest of its output flowing to the test's.
        std::thread::spawn(move || {
            for l in reader.lines().map_while(Result::ok) {
                println!("{l}");
            }
        });
        (child, line)
    }

    /// Close `child`'s stdin and check it passed.
    fn finish(&self, mut child: Child) {
        drop(child.stdin.take());
        let st = child.wait().unwrap();
        assert!(st.success(), "{st}");
    }

    /// Wait until the engine holds nothing, then check it is clean.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        // A file the watcher took out of the table may still be tearing down.
        let busy = || !self.host.files.is_empty() || self.host.engine.contexts() != 0;
        while busy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(self.host.files.is_empty(), "files left open");
        assert_eq!(self.host.engine.contexts(), 0, "contexts left");
        assert_eq!(self.host.engine.total_pins(), 0, "pages left pinned");
        assert_eq!(
            self.host.engine.user_charged_pages(),
            0,
            "pages left charged"
        );
        assert!(self.host.engine.check_invariants().is_ok());
        // Every ring's thread ends once its file is released or its process exited.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.host.rings.load(std::sync::atomic::Ordering::Acquire) != 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            self.host.rings.load(std::sync::atomic::Ordering::Acquire),
            0,
            "rings left served"
        );
    }
}

fn peers() -> PathBuf {
    compile("host_peers")
}

const EINVAL: &str = "22";
const EPERM: &str = "1";

#[test]
fn unrelated_processes_contend_for_a_device_and_its_group() {
    let e = engine("contend");
    // vfio1 is 0000:02:00.0, vfio2 its group sibling 0000:02:00.1, vfio0 another group.
    let (holder, _) = e.start(&peers(), &["hold", "1"]);
    e.run(&peers(), &["contend", "1", EINVAL]);
    e.run(&peers(), &["contend", "2", EPERM]);
    e.run(&peers(), &["contend", "0", "0"]);
    e.finish(holder);
    e.settle();
    // Released with its last holder: the group is free again.
    e.run(&peers(), &["contend", "2", "0"]);
    e.settle();
}

#[test]
fn opening_proc_pid_fd_of_a_file_is_a_new_open_of_its_node() {
    let e = engine("steal");
    let (holder, line) = e.start(&peers(), &["hold", "1"]);
    let f: Vec<&str> = line.split_whitespace().collect();
    e.run(&peers(), &["steal", f[1], f[2], f[3], f[4]]);
    e.finish(holder);
    e.settle();
}

#[test]
fn files_sent_to_an_unrelated_process_outlive_the_sender() {
    let e = engine("send");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("host-send-{}", std::process::id()));
    let p = path.to_str().unwrap();
    let (receiver, _) = e.start(&peers(), &["receive", p]);
    e.run(&peers(), &["send", p]);
    e.finish(receiver);
    e.settle();
}

#[test]
fn pinned_pages_are_charged_to_the_user_across_processes() {
    let e = engine("pin");
    let (first, _) = e.start(&peers(), &["pin", "1", "32"]);
    assert_eq!(e.host.engine.user_charged_pages(), 32);
    // Another process of the same user, within its own limit, finds the user's charge full.
    e.run(&peers(), &["pinfail", "0", "32"]);
    e.finish(first);
    e.settle();
    let (again, _) = e.start(&peers(), &["pin", "0", "32"]);
    e.finish(again);
    e.settle();
}

#[test]
fn a_client_killed_mid_call_releases_everything_it_held() {
    let e = engine("kill");
    for _ in 0..3 {
        let (mut churn, _) = e.start(&peers(), &["churn", "1"]);
        std::thread::sleep(Duration::from_millis(200));
        churn.kill().unwrap();
        let _ = churn.wait();
        e.settle();
    }
    e.run(&peers(), &["contend", "1", "0"]);
    e.settle();
}

#[test]
fn status_names_the_holders_of_each_file() {
    let e = engine("status");
    let (holder, line) = e.start(&peers(), &["hold", "1"]);
    let pid: i32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let v = uiommu_host::status::json(&e.host);
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{v}");
    let dev = files.iter().find(|f| f["kind"] == "vfio-device").unwrap();
    assert_eq!(dev["device"], "0000:02:00.0");
    assert_eq!(dev["holders"], serde_json::json!([pid]));
    let ctx = files.iter().find(|f| f["kind"] == "iommufd").unwrap()["context"].clone();
    let group = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == 6)
        .unwrap()
        .clone();
    assert_eq!(group["owner"], ctx);
    assert_eq!(
        v["pinned"]["total_pins"], 1,
        "the secret page, pinned for the domain"
    );
    e.finish(holder);
    e.settle();
    let _ = std::io::stdout().flush();
}

#[test]
fn calls_from_a_signal_handler_interrupting_malloc_and_calls_are_safe() {
    // Under the in-process engine this program corrupts malloc's state: its handler's calls
    // allocate. The host engine's front-end neither allocates nor locks.
    let e = engine("signal");
    e.run(&compile("signal_calls"), &[]);
    e.settle();
}

#[test]
fn another_uid_opens_the_nodes_only_as_their_mode_allows() {
    use std::os::unix::process::CommandExt;
    // 65534: nobody. Only root can start a process of another uid.
    if !nix::unistd::geteuid().is_root() {
        support::not_run("needs root to start a process of another uid");
        return;
    }
    let nobody = 65534;
    let run_as_nobody = |e: &Engine, want: &str| {
        let out = e
            .command(&peers(), &["open", want])
            .uid(nobody)
            .gid(nobody)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("PASS"), "{text}");
    };
    // The default: nodes owned by the engine's uid, mode 0600.
    let private = engine("mode600");
    run_as_nobody(&private, "13");
    private.settle();
    let open = engine_with("mode666", |c| c.node_mode = 0o666);
    run_as_nobody(&open, "0");
    open.settle();
}

#[test]
fn pins_are_charged_to_each_user_separately() {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        support::not_run("needs root to start a process of another uid");
        return;
    }
    let e = engine_with("peruser", |c| c.node_mode = 0o666);
    let (first, _) = e.start(&peers(), &["pin", "1", "32"]);
    assert_eq!(e.host.engine.pages_charged_to(0), 32);
    // Another user has a limit of its own: its 32 pages fit beside root's 32.
    let args = ["pin", "0", "32"];
    let mut cmd = e.command(&peers(), &args);
    cmd.uid(65534).gid(65534);
    let (second, _) = e.start_command(cmd, &args);
    assert_eq!(e.host.engine.pages_charged_to(65534), 32);
    assert_eq!(e.host.engine.user_charged_pages(), 64);
    // `uiommu status` shows the charge per user and per context.
    let v = uiommu_host::status::json(&e.host);
    let users = v["users"].as_array().unwrap();
    for uid in [0, 65534] {
        assert!(
            users
                .iter()
                .any(|u| u["uid"] == uid && u["locked_pages"] == 32),
            "{v}"
        );
    }
    let contexts = v["contexts"].as_array().unwrap();
    let pinning: Vec<_> = contexts
        .iter()
        .filter(|c| c["pinned_pages"] == 32)
        .collect();
    assert_eq!(pinning.len(), 2, "{v}");
    assert!(
        pinning
            .iter()
            .all(|c| c["charged_pages"] == 32 && c["rlimit_mode"] == "user"),
        "{v}"
    );
    e.finish(second);
    e.finish(first);
    e.settle();
}

#[test]
fn the_dma_engine_reaches_pinned_pages_after_map_fixed_munmap_and_exec() {
    let e = engine("dmapins");
    e.run(&compile("dma_pins"), &[]);
    e.settle();
    assert_eq!(e.host.engine.held_frames(), 0);
}

#[test]
fn pins_of_private_memory_hold_their_pages_through_munmap_map_fixed_fork_and_exec() {
    let e = engine("private");
    e.run(&compile("private_pins"), &[]);
    e.settle();
    assert_eq!(e.host.engine.held_frames(), 0);
}

#[test]
fn pins_of_shared_memory_hold_their_pages_after_munmap_and_map_fixed() {
    let e = engine("held");
    let out = e.run(&compile("held_pins"), &[]);
    // Root (the owner of our own /proc entry is the effective uid).
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if root {
        assert!(!out.contains("nothing to check"), "{out}");
    }
    // With a free 2 MiB page, the hugetlb memfd's pin was held (not skipped).
    let free_huge = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if free_huge > 0 {
        assert!(out.contains("hugetlb held"), "{out}");
    } else {
        support::part_not_run("hugetlb part of held_pins: no free 2 MiB page");
    }
    e.settle();
    // Nothing held once everything was unmapped and closed.
    assert_eq!(e.host.engine.held_frames(), 0);
    if root {
        // While a range is held, `uiommu status` says so (2 frames), and the checker is happy.
        let (child, _) = e.start(&compile("held_pins"), &["hold"]);
        let v = uiommu_host::status::json(&e.host);
        assert_eq!(v["pinned"]["held_frames"], 2, "{v}");
        assert_eq!(e.host.engine.held_frames(), 2);
        e.host.engine.check_invariants().unwrap();
        e.finish(child);
        e.settle();
        assert_eq!(e.host.engine.held_frames(), 0);
        // 200 maps of 200 ranges of one memfd: 400 frames held, through one mapping of the
        // file and no descriptor. (The engine runs in this process: its mappings and
        // descriptors of the program's memfd "held".)
        let held = |dir: &str| {
            std::fs::read_dir(dir)
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:held"))
                })
                .count()
        };
        // Files of the runs before stay mapped until the engine has seen their processes
        // exit (the cache of recently held files): wait for that first.
        let gone = |what: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while held("/proc/self/map_files") != 0 {
                assert!(
                    Instant::now() < deadline,
                    "{what}: a held file stays mapped"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        gone("before");
        let (child, _) = e.start(&compile("held_pins"), &["many"]);
        assert_eq!(e.host.engine.held_frames(), 400);
        assert_eq!(
            held("/proc/self/map_files"),
            1,
            "one mapping for every pin of the memfd"
        );
        assert_eq!(held("/proc/self/fd"), 0, "no descriptor beside the mapping");
        e.finish(child);
        e.settle();
        assert_eq!(e.host.engine.held_frames(), 0);
        // The mapping goes with the last pin and the process that made it.
        gone("after");
    } else {
        support::part_not_run(
            "held pins' status and one-mapping checks (/proc/self/map_files): not root",
        );
    }
}

#[test]
fn hot_calls_through_rings_answer_as_messages_do() {
    let e = engine("rings");
    let prog = compile("ring_paths");
    e.run(&prog, &[]);
    e.settle();
    // Its iommufds' hot calls went through rings: the parent's three files and the child's.
    let made = || e.host.rings_made.load(std::sync::atomic::Ordering::Acquire);
    assert!(made() >= 4, "rings made: {}", made());
    let before = made();
    // The same program with rings off (every call a message) passes too.
    let out = e
        .command(&prog, &[])
        .env("UIOMMU_RING", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("PASS ring_paths"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    e.settle();
    assert_eq!(made(), before, "UIOMMU_RING=0 makes no ring");
}

/// Every C program of the in-process suite, under the host engine.
macro_rules! under_host {
    ($($test:ident: $prog:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            let e = engine($prog);
            e.run(&compile($prog), &[]);
            e.settle();
        }
    )*};
}

under_host! {
    iommufd_basic_under_host: "iommufd_basic",
    iommufd_files_under_host: "iommufd_files",
    iommufd_threads_under_host: "iommufd_threads",
    vfio_dma_under_host: "vfio_dma",
    vfio_legacy_under_host: "vfio_legacy",
    fault_poll_under_host: "fault_poll",
    bad_inputs_under_host: "bad_inputs",
    dev_nodes_under_host: "dev_nodes",
    dev_dirs_under_host: "dev_dirs",
    fork_vfio_under_host: "fork_vfio",
    fd_passing_under_host: "fd_passing",
}
