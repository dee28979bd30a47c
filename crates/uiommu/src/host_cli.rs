//! `uiommu serve`, `uiommu status`, and the host-engine side of `uiommu run`: reaching an
//! instance's engine, starting one on demand.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use uiommu_proto::client::Client;
use uiommu_proto::{Request, OP_STATUS};

/// How long an engine `uiommu run` started stays with nothing to serve.
pub const IDLE_GRACE: Duration = Duration::from_secs(5);

/// The instance named by `flag`, else `$UIOMMU_INSTANCE`, else `default`; checked.
pub fn instance_name(flag: Option<String>) -> Result<String, String> {
    let name = flag
        .or_else(|| {
            std::env::var("UIOMMU_INSTANCE")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| uiommu_proto::DEFAULT_INSTANCE.to_string());
    if uiommu_proto::valid_instance(&name) {
        Ok(name)
    } else {
        Err(format!(
            "{name:?}: not a valid instance name (1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot)"
        ))
    }
}

/// Options of `uiommu serve`.
pub struct ServeArgs {
    pub instance: String,
    pub platform: Option<PathBuf>,
    pub as_root: bool,
    pub idle_exit: Option<Duration>,
    pub mode: u32,
    pub allow_uids: Vec<u32>,
    pub spin_us: u64,
    /// The uAPI level the engine follows.
    pub kernel: uiommu_uapi::level::Level,
}

/// Read and check a platform file.
pub fn load_platform(path: &Path) -> Result<uiommu_platform::Platform, String> {
    let topo = uiommu_platform::topology::Topology::read_file(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    uiommu_platform::Platform::try_new(topo).map_err(|e| format!("{}: {e}", path.display()))
}

/// The limits and privileges of this process, for the engine's callers.
fn engine_config(as_root: bool) -> uiommu_core::EngineConfig {
    let memlock = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    uiommu_core::EngineConfig::of_process(memlock, &status, as_root)
}

/// `uiommu serve`: returns only when the engine could not start (exit status 1; 3 when the
/// instance is served already).
pub fn serve(args: ServeArgs) -> (u8, String) {
    let (platform, source) = match &args.platform {
        None => (uiommu_platform::Platform::builtin(), "built-in".to_string()),
        Some(p) => match load_platform(p).and_then(|pl| {
            std::fs::canonicalize(p)
                .map(|abs| (pl, abs.display().to_string()))
                .map_err(|e| format!("{}: {e}", p.display()))
        }) {
            Ok(x) => x,
            Err(m) => return (2, m),
        },
    };
    uiommu_uapi::level::set(args.kernel);
    let mut config = uiommu_host::Config::new(&args.instance);
    config.platform_source = source;
    config.engine = engine_config(args.as_root);
    config.as_root = args.as_root;
    config.idle_exit = args.idle_exit;
    config.node_mode = args.mode;
    config.allow_uids = args.allow_uids;
    config.spin = Duration::from_micros(args.spin_us);
    // SIGTERM, SIGINT and SIGHUP end the engine in order (before any thread starts).
    uiommu_host::end_on_signals(&args.instance);
    let host = match uiommu_host::Host::new(platform, config) {
        Ok(h) => h,
        Err(m) => return (1, m),
    };
    let name = args.instance.clone();
    let r = uiommu_host::serve(host, || {
        eprintln!(
            "uiommu serve: instance {name} at {} (pid {})",
            uiommu_proto::socket_path(&name).display(),
            std::process::id()
        );
    });
    match r {
        Ok(()) => (0, String::new()),
        Err(e @ uiommu_host::ServeError::Running(_)) => {
            (3, format!("instance {}: {e}", args.instance))
        }
        Err(e) => (1, format!("instance {}: {e}", args.instance)),
    }
}

/// A client of instance `name`'s engine.
fn client_of(name: &str) -> Result<&'static Client, String> {
    static CLIENT: Client = Client::new();
    let path = uiommu_proto::socket_path(name);
    if !CLIENT.set_path(path.as_os_str().as_encoded_bytes()) {
        return Err(format!("{}: path too long", path.display()));
    }
    Ok(&CLIENT)
}

/// The engine's status JSON, or why it cannot be had.
pub fn status_json(name: &str) -> Result<serde_json::Value, String> {
    let client = client_of(name)?;
    if !client.reachable() {
        return Err(format!(
            "no engine serves instance {name} ({} does not answer)",
            uiommu_proto::socket_path(name).display()
        ));
    }
    let mut len = 1 << 16;
    for _ in 0..8 {
        let mut buf = vec![0u8; len];
        let req = Request::new(OP_STATUS, [buf.as_mut_ptr() as u64, len as u64, 0, 0, 0, 0]);
        let m = client
            .call(req, None)
            .map_err(|e| format!("instance {name}: {}", std::io::Error::from_raw_os_error(e)))?;
        if m.err != 0 {
            return Err(format!(
                "instance {name}: {}",
                std::io::Error::from_raw_os_error(m.err.max(1))
            ));
        }
        let n = usize::try_from(m.val).unwrap_or(0);
        if n <= len {
            // The engine wrote the JSON into `buf` with process_vm_writev.
            let buf = std::hint::black_box(buf);
            return serde_json::from_slice(&buf[..n]).map_err(|e| format!("status: {e}"));
        }
        len = n;
    }
    Err("status: the engine's answer keeps growing".into())
}

/// `uiommu trace`: ask instance `name`'s engine for its calls' lines and copy them to `out`
/// until `count` lines (if given) or the engine goes.
pub fn trace(
    name: &str,
    json: bool,
    count: Option<u64>,
    mut out: Box<dyn std::io::Write>,
) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let client = client_of(name)?;
    if !client.reachable() {
        return Err(format!(
            "no engine serves instance {name} ({} does not answer)",
            uiommu_proto::socket_path(name).display()
        ));
    }
    let (mine, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    let req = Request::new(uiommu_proto::OP_TRACE, [u64::from(json), 0, 0, 0, 0, 0]);
    let m = client
        .call(req, Some(theirs.as_raw_fd()))
        .map_err(|e| format!("instance {name}: {}", std::io::Error::from_raw_os_error(e)))?;
    if m.err != 0 {
        return Err(format!(
            "instance {name}: {}",
            std::io::Error::from_raw_os_error(m.err.max(1))
        ));
    }
    // The engine holds its end now: when it exits, reads see the end of the stream.
    drop(theirs);
    let mut buf = vec![0u8; 4096];
    let mut lines = 0u64;
    while count.is_none_or(|c| lines < c) {
        let n = match rustix::io::read(&mine, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("reading the trace: {e}")),
        };
        out.write_all(&buf[..n])
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing the trace: {e}"))?;
        lines += 1;
    }
    Ok(())
}

/// `uiommu status` as text.
pub fn status_text(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "instance {}: engine pid {}, uid {}, up {} s, uAPI level {}, platform {}, \
         {} connection(s), {} ring(s) ({} made)",
        v["instance"].as_str().unwrap_or("?"),
        v["pid"],
        v["uid"],
        v["uptime_s"],
        v["kernel"].as_str().unwrap_or("?"),
        v["platform"].as_str().unwrap_or("?"),
        v["connections"],
        v["rings"]["serving"],
        v["rings"]["made"]
    );
    let empty = Vec::new();
    let files = v["files"].as_array().unwrap_or(&empty);
    let _ = writeln!(out, "files: {}", files.len());
    for f in files {
        let _ = writeln!(
            out,
            "  #{} {} {}{}{} opened by pid {} (uid {}), held by {}",
            f["id"],
            f["kind"].as_str().unwrap_or("?"),
            f["node"].as_str().unwrap_or("(made by the engine)"),
            f["context"]
                .as_u64()
                .map(|c| format!(" context {c}"))
                .unwrap_or_default(),
            f["device"]
                .as_str()
                .map(|d| format!(" device {d}"))
                .unwrap_or_default(),
            f["opener"]["pid"],
            f["opener"]["uid"],
            f["holders"]
        );
    }
    let _ = writeln!(out, "contexts:");
    for c in v["contexts"].as_array().unwrap_or(&empty) {
        let _ = writeln!(
            out,
            "  context {}: {} object(s), owns group(s) {}, {} page(s) pinned, {} charged \
             (rlimit mode {})",
            c["id"],
            c["objects"],
            c["groups"],
            c["pinned_pages"],
            c["charged_pages"],
            c["rlimit_mode"].as_str().unwrap_or("?")
        );
    }
    let _ = writeln!(out, "users:");
    for u in v["users"].as_array().unwrap_or(&empty) {
        let _ = writeln!(
            out,
            "  uid {}: {} page(s) locked (pins charged to the user)",
            u["uid"], u["locked_pages"]
        );
    }
    let _ = writeln!(out, "groups:");
    for g in v["groups"].as_array().unwrap_or(&empty) {
        let owner = g["owner"]
            .as_u64()
            .map(|o| format!("context {o}"))
            .unwrap_or_else(|| "kernel".into());
        let _ = writeln!(
            out,
            "  group {} {}: owner {}, domain {}",
            g["group"],
            g["devices"],
            owner,
            g["domain"].as_str().unwrap_or("none")
        );
    }
    let _ = writeln!(
        out,
        "pinned: {} page(s) charged to the user, {} pin(s), {} frame(s) of shared memory held",
        v["pinned"]["user_pages"], v["pinned"]["total_pins"], v["pinned"]["held_frames"]
    );
    let _ = writeln!(out, "dma through the IOMMU:");
    for d in v["dma"].as_array().unwrap_or(&empty) {
        let _ = writeln!(
            out,
            "  {}: {} read(s) of memory, {} byte(s); {} write(s), {} byte(s); {} fault(s)",
            d["device"].as_str().unwrap_or("?"),
            d["reads"],
            d["read_bytes"],
            d["writes"],
            d["write_bytes"],
            d["faults"]
        );
    }
    out
}

/// Start an engine for instance `name` in the background with `args` (the options of
/// `uiommu serve`), its stderr in `<socket dir>/<name>.log`, and wait until it answers. The
/// engine is not a child of the caller once this returns (the caller may `exec` a program
/// that waits for any child). Exit status 3 of the engine (served already) counts as started.
pub fn start_detached(name: &str, args: &[std::ffi::OsString]) -> Result<(), String> {
    let client = client_of(name)?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate uiommu: {e}"))?;
    let dir = uiommu_proto::socket_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = dir.join(format!("{name}.log"));
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("serve").args(args);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .env_remove("LD_PRELOAD")
        .spawn()
        .map_err(|e| format!("cannot start the engine: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.reachable() {
        if let Ok(Some(st)) = child.try_wait() {
            // Another `uiommu run` may have started it meanwhile (exit 3).
            if st.code() != Some(3) {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("the engine did not start ({st}): {}", text.trim()));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the engine did not answer within 10 s (log: {})",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Make sure instance `name` has an engine, starting one on demand (`platform` is given to
/// it; it exits after [`IDLE_GRACE`] with nothing to serve). Returns the engine's platform
/// source as its status reports it. (`run --as-root` is granted per program, by its hello,
/// not to the whole instance.)
pub fn ensure_engine(
    name: &str,
    platform: Option<&Path>,
    kernel: uiommu_uapi::level::Level,
) -> Result<String, String> {
    let client = client_of(name)?;
    if !client.reachable() {
        // `serve --detach` starts the engine and exits once it answers: the engine is then
        // nobody's child but init's.
        let exe = std::env::current_exe().map_err(|e| format!("cannot locate uiommu: {e}"))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["serve", "--detach", "--instance", name, "--idle-exit"])
            .arg(IDLE_GRACE.as_secs().to_string())
            .env_remove("LD_PRELOAD");
        if let Some(p) = platform {
            cmd.arg("--platform").arg(p);
        }
        cmd.args(["--kernel", kernel.name()]);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot start the engine: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
    }
    let status = status_json(name)?;
    let served = status["kernel"].as_str().unwrap_or("?");
    if served != kernel.name() {
        return Err(format!(
            "instance {name} is served at uAPI level {served}, not {} (use another --instance)",
            kernel.name()
        ));
    }
    let source = status["platform"]
        .as_str()
        .unwrap_or("built-in")
        .to_string();
    if let Some(p) = platform {
        let want = std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if Path::new(&source) != want {
            return Err(format!(
                "instance {name} is served with platform {source}, not {} (use another --instance)",
                want.display()
            ));
        }
    }
    Ok(source)
}

/// Which front-end serves a program's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FrontEnd {
    /// The preload library (dynamic programs).
    Preload,
    /// A seccomp user-notification filter served by the host engine (static programs, raw
    /// system calls; any program).
    Seccomp,
    /// `seccomp` for a static ELF executable, else `preload`.
    Auto,
}

/// The front-end `flag` or `$UIOMMU_FRONT_END` names (default: auto).
pub fn front_end(flag: Option<FrontEnd>) -> Result<FrontEnd, String> {
    if let Some(f) = flag {
        return Ok(f);
    }
    match std::env::var("UIOMMU_FRONT_END").ok().as_deref() {
        None | Some("") | Some("auto") => Ok(FrontEnd::Auto),
        Some("preload") => Ok(FrontEnd::Preload),
        Some("seccomp") => Ok(FrontEnd::Seccomp),
        Some(other) => Err(format!(
            "UIOMMU_FRONT_END={other}: expected `preload`, `seccomp` or `auto`"
        )),
    }
}

/// Whether `program` (a path, or a name looked up in `$PATH` as exec does) is a static ELF
/// executable: no program interpreter, so no preload library can reach it. `None` when it
/// cannot be found or read, or is not ELF (a script runs under its interpreter).
pub fn is_static(program: &std::ffi::OsStr) -> Option<bool> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    let path = which::which(program).ok()?;
    let file = std::fs::File::open(path).ok()?;
    let data = object::ReadCache::new(file);
    let elf = ElfFile64::<object::Endianness, _>::parse(&data).ok()?;
    let endian = elf.endian();
    let phdrs = elf.elf_header().program_headers(endian, &data).ok()?;
    Some(
        !phdrs
            .iter()
            .any(|p| p.p_type(endian) == object::elf::PT_INTERP),
    )
}

/// The seccomp front-end for the program this process execs next: put the filter on this
/// process and hand its listener to instance `name`'s engine, which then serves every call
/// of ours that the program and its children make. With `as_root`, first ask the engine for
/// root's privileges in the emulation (granted as to a preload client).
pub fn supervise_self(name: &str, as_root: bool) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    use uiommu_sys::seccomp::{install_listener, FdRange};
    let client = client_of(name)?;
    let fail = |what: &str, e: i32| {
        format!(
            "instance {name}: {what}: {}",
            std::io::Error::from_raw_os_error(e.max(1))
        )
    };
    if as_root {
        let hello = Request::new(
            uiommu_proto::OP_HELLO,
            [uiommu_proto::HELLO_CAPS_ALL, 0, 0, 0, 0, 0],
        );
        let m = client.call(hello, None).map_err(|e| fail("hello", e))?;
        if m.err != 0 {
            return Err(fail("hello", m.err));
        }
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    let range = FdRange::below(limit);
    // CAP_SYS_ADMIN may install a filter without no_new_privs (setuid programs keep working).
    let caps = uiommu_sys::effective_caps_of(0).unwrap_or(0);
    let listener = install_listener(range, caps & (1 << 21) != 0)
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    // From here until the engine has the listener, no call of this process may stop: the
    // exchange is sendmsg/recvmsg on a connection, which the filter lets through.
    let req = Request::new(
        uiommu_proto::OP_SUPERVISE,
        [u64::from(range.start), u64::from(range.end), 0, 0, 0, 0],
    );
    let m = client
        .call(req, Some(listener.as_raw_fd()))
        .map_err(|e| fail("supervise", e))?;
    if m.err != 0 {
        return Err(fail("supervise", m.err));
    }
    Ok(())
}

/// `uiommu faults --json`: the status's fault log and each context's fault queues.
pub fn faults_json(v: &serde_json::Value) -> serde_json::Value {
    let empty = Vec::new();
    let queues: Vec<serde_json::Value> = v["contexts"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|c| serde_json::json!({"context": c["id"], "fault_queues": c["fault_queues"]}))
        .collect();
    serde_json::json!({
        "instance": v["instance"],
        "total": v["faults"]["total"],
        "log": v["faults"]["log"],
        "contexts": queues,
    })
}

/// `uiommu faults`: one line per fault, then the fault queues.
pub fn faults_text(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let empty = Vec::new();
    let log = v["faults"]["log"].as_array().unwrap_or(&empty);
    let _ = writeln!(
        out,
        "instance {}: {} IOMMU fault(s) recorded, the last {} here",
        v["instance"].as_str().unwrap_or("?"),
        v["faults"]["total"],
        log.len()
    );
    for f in log {
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs_f64(f["time"].as_f64().unwrap_or(0.0).max(0.0));
        let _ = writeln!(
            out,
            "  {} {} (rid {:#x}) {} at IOVA {:#x}: {}",
            humantime::format_rfc3339_micros(at),
            f["device"].as_str().unwrap_or("?"),
            f["rid"].as_u64().unwrap_or(0),
            f["access"].as_str().unwrap_or("?"),
            f["iova"].as_u64().unwrap_or(0),
            f["reason"].as_str().unwrap_or("?"),
        );
    }
    for c in v["contexts"].as_array().unwrap_or(&empty) {
        for q in c["fault_queues"].as_array().unwrap_or(&empty) {
            let _ = writeln!(
                out,
                "  context {} fault queue {}: {} group(s) queued, {} waiting for a response",
                c["id"], q["id"], q["queued"], q["waiting_response"]
            );
        }
    }
    out
}

/// The platform a host engine runs (its status's `platform`: `built-in` or a file's path).
pub fn platform_of_status(
    v: &serde_json::Value,
) -> Result<uiommu_platform::topology::Topology, String> {
    use uiommu_platform::topology::Topology;
    match v["platform"].as_str() {
        None | Some("built-in") => Ok(Topology::builtin_default()),
        Some(path) => {
            Topology::read_file(std::path::Path::new(path)).map_err(|e| format!("{path}: {e}"))
        }
    }
}
