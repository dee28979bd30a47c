//! The `uiommu` command.

mod bench;
mod bench_host;
mod host_cli;
mod plot;

use clap::{Parser, Subcommand};
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// File name of the preload library, looked for next to the `uiommu` executable.
const PRELOAD_NAME: &str = "libuiommu_preload.so";

/// uiommu: the Linux iommufd security model, in userspace, over an emulated IOMMU platform.
#[derive(Parser)]
#[command(name = "uiommu", version, long_version = long_version(), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Narrated tour of the security model on the built-in platform; exits 0 only if every step
    /// behaved as stated.
    Demo,
    /// Print a platform's PCI tree and IOMMU groups.
    Topology {
        /// Platform file (TOML); the built-in default platform when omitted.
        #[arg(long)]
        platform: Option<PathBuf>,
        /// Print the JSON (keys in docs/platform.md).
        #[arg(long)]
        json: bool,
        /// Also draw the PCI tree and the IOMMU groups as an SVG picture in FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Run an unmodified program against uiommu: it finds /dev/iommu and
    /// /dev/vfio/devices/vfioN of the emulated platform (LD_PRELOAD of libuiommu_preload.so).
    /// The exit status is the program's.
    Run {
        /// Platform file (TOML) the program's engine is built from; default: $UIOMMU_PLATFORM,
        /// else the built-in platform.
        #[arg(long)]
        platform: Option<PathBuf>,
        /// The preload library; default: $UIOMMU_PRELOAD, else libuiommu_preload.so next to
        /// the uiommu executable.
        #[arg(long)]
        preload: Option<PathBuf>,
        /// Give the program the privileges of real root in the emulation (CAP_IPC_LOCK and
        /// CAP_SYS_RESOURCE) whatever the real process has: sets UIOMMU_CAPS=all.
        #[arg(long)]
        as_root: bool,
        /// Which engine serves the program: `in-process` (one engine per process family,
        /// the default) or `host` (the instance's host engine, started if none runs; every
        /// process of the host shares it, as the kernel's IOMMU subsystem). Default:
        /// $UIOMMU_ENGINE, else in-process.
        #[arg(long, value_name = "ENGINE")]
        engine: Option<EngineKind>,
        /// The host engine's instance (with `--engine host`); default: $UIOMMU_INSTANCE,
        /// else `default`.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// How the program's calls reach the engine: `preload` (the preload library, for
        /// dynamic programs), `seccomp` (a seccomp filter the host engine serves: static
        /// programs, raw system calls; implies `--engine host`), or `auto` (seccomp for a
        /// static executable, else preload). Default: $UIOMMU_FRONT_END, else auto.
        #[arg(long, value_name = "FRONT_END")]
        front_end: Option<host_cli::FrontEnd>,
        /// Write one line per iommufd/VFIO ioctl of the program (and its children) to FILE:
        /// time, pid/tid, fd and file kind, the call, its struct decoded before and after, the
        /// result or errno, the duration (docs/TRACE.md). The preload front-end only.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
        /// `text` (strace-like, the default) or `json` (one JSON object per line).
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        trace_format: TraceFormat,
        /// Whose uAPI the engine follows: `6.12` (Linux 6.12.y exactly: what came later is
        /// refused) or `6.12+` (the default: 6.12 plus the later pieces the 6.12 stable
        /// selftest uses). Default: $UIOMMU_KERNEL, else 6.12+.
        #[arg(long, value_name = "VERSION")]
        kernel: Option<String>,
        /// Fault injection for a program that does not drive `fail-nth` itself: the N-th
        /// fault-injection site of the engine that each process of the program passes fails
        /// (ENOMEM for an allocation, EFAULT for a copy), once, and a line on stderr says so
        /// (sets UIOMMU_FAIL_NTH; docs/RELIABILITY.md). The in-process engine only.
        #[arg(long, value_name = "N")]
        fail_nth: Option<u32>,
        /// The program and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "PROGRAM")]
        command: Vec<OsString>,
    },
    /// Run the host engine of an instance: one IOMMU subsystem that every process of the
    /// host reaches through `uiommu run --engine host`. Serves until killed.
    Serve {
        /// The instance; default: $UIOMMU_INSTANCE, else `default`.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// Platform file (TOML); the built-in default platform when omitted.
        #[arg(long)]
        platform: Option<PathBuf>,
        /// Give every caller the privileges of real root in the emulation (CAP_IPC_LOCK and
        /// CAP_SYS_RESOURCE).
        #[arg(long)]
        as_root: bool,
        /// Exit after SECS with no file open and no program connected.
        #[arg(long, value_name = "SECS")]
        idle_exit: Option<u64>,
        /// Permission bits of the device nodes (octal), owned by the engine's uid and gid.
        #[arg(long, value_name = "OCTAL", default_value = "600")]
        mode: String,
        /// Also serve processes of this uid (repeatable; a root engine serves every uid).
        #[arg(long, value_name = "UID")]
        allow_uid: Vec<u32>,
        /// Start the engine in the background and exit once it answers.
        #[arg(long)]
        detach: bool,
        /// Microseconds a connection polls for the next call before sleeping (0: at once).
        #[arg(long, value_name = "US", default_value_t = uiommu_proto::DEFAULT_SPIN_US)]
        spin_us: u64,
        /// Whose uAPI the engine follows: `6.12` or `6.12+` (as `run --kernel`). Default:
        /// $UIOMMU_KERNEL, else 6.12+.
        #[arg(long, value_name = "VERSION")]
        kernel: Option<String>,
    },
    /// Show a host engine: its platform, and per security context the processes holding it,
    /// its devices, groups, objects and pinned pages.
    Status {
        /// The instance; default: $UIOMMU_INSTANCE, else `default`.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// Print the JSON (keys in docs/HOST.md).
        #[arg(long)]
        json: bool,
        /// Also draw the engine's platform, its groups' owners, attachments and pinned pages
        /// as an SVG picture in FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Show a host engine's IOMMU fault log: every fault with its time, device, IOVA, access
    /// and reason, and each context's page-request (IOPF) queues
    Faults {
        /// The instance; default: $UIOMMU_INSTANCE, else `default`.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// Print the JSON (`faults` and the contexts' `fault_queues` of `status --json`).
        #[arg(long)]
        json: bool,
    },
    /// Follow a host engine's calls live: one line per ioctl, read and write any client makes
    /// on a file of the engine (docs/TRACE.md), until interrupted (or --count lines)
    Trace {
        /// The instance; default: $UIOMMU_INSTANCE, else `default`.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// Line format: `text` (strace-like) or `json` (one object per line).
        #[arg(long = "format", value_enum, default_value = "text")]
        format: TraceFormat,
        /// Write the lines to FILE instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Stop after N lines.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// The client process of `bench`'s host-engine figure (internal).
    #[command(name = "__bench-host-client", hide = true)]
    BenchHostClient {
        socket: String,
        ms: u64,
        runs: usize,
        path: bench_host::Path,
    },
    /// Measure the engine (map/unmap rates through the ioctl ABI and the library API, 1 GiB
    /// maps, copies, translation, DMA, metadata) and print a table with the real kernel's
    /// figures beside them. Not a test: no timing passes or fails.
    Bench {
        /// Small counts (64 MiB instead of 1 GiB, up to 10,000 mappings): a run of seconds.
        #[arg(long)]
        quick: bool,
        /// Also write the figures as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Run only the steps whose names contain TEXT (repeatable; for profiling): "metadata",
        /// "map+unmap", "1 GiB", "distinct", "IOAS_COPY", "translate", "dma".
        #[arg(long, value_name = "TEXT")]
        only: Vec<String>,
        /// Also draw the two plots (per-op cost vs mappings, copy throughput vs size) as SVG
        /// files in DIR.
        #[arg(long, value_name = "DIR")]
        plot: Option<PathBuf>,
    },
}

/// Which engine `uiommu run` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EngineKind {
    /// One engine inside each process family (the preload library's own).
    InProcess,
    /// The instance's host engine.
    Host,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            instance,
            platform,
            as_root,
            idle_exit,
            mode,
            allow_uid,
            detach,
            spin_us,
            kernel,
        } => {
            let fail = |code: u8, m: String| {
                eprintln!("uiommu serve: {m}");
                ExitCode::from(code)
            };
            let kernel = match kernel_level(kernel) {
                Ok(k) => k,
                Err(m) => return fail(2, m),
            };
            let instance = match host_cli::instance_name(instance) {
                Ok(n) => n,
                Err(m) => return fail(2, m),
            };
            let Ok(mode) = u32::from_str_radix(&mode, 8).map_err(|_| ()).and_then(|m| {
                if m <= 0o777 {
                    Ok(m)
                } else {
                    Err(())
                }
            }) else {
                return fail(2, format!("--mode {mode}: not an octal mode up to 777"));
            };
            if detach {
                let mut args: Vec<OsString> = vec!["--instance".into(), instance.clone().into()];
                if let Some(p) = &platform {
                    // Checked here, so that a bad file is reported to the caller.
                    if let Err(m) = host_cli::load_platform(p) {
                        return fail(2, m);
                    }
                    args.push("--platform".into());
                    args.push(p.clone().into());
                }
                if as_root {
                    args.push("--as-root".into());
                }
                if let Some(s) = idle_exit {
                    args.push("--idle-exit".into());
                    args.push(s.to_string().into());
                }
                args.push("--mode".into());
                args.push(format!("{mode:o}").into());
                for u in allow_uid {
                    args.push("--allow-uid".into());
                    args.push(u.to_string().into());
                }
                args.push("--spin-us".into());
                args.push(spin_us.to_string().into());
                args.push("--kernel".into());
                args.push(kernel.name().into());
                return match host_cli::start_detached(&instance, &args) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(m) => fail(1, m),
                };
            }
            let (code, msg) = host_cli::serve(host_cli::ServeArgs {
                instance,
                platform,
                as_root,
                idle_exit: idle_exit.map(std::time::Duration::from_secs),
                mode,
                allow_uids: allow_uid,
                spin_us,
                kernel,
            });
            fail(code, msg)
        }
        Command::BenchHostClient {
            socket,
            ms,
            runs,
            path,
        } => match bench_host::client_main(&socket, ms, runs, path) {
            Ok(rate) => {
                println!("{rate}");
                ExitCode::SUCCESS
            }
            Err(m) => {
                eprintln!("uiommu bench host client: {m}");
                ExitCode::FAILURE
            }
        },
        Command::Status {
            instance,
            json,
            svg,
        } => with_status("status", instance, |v| {
            if let Some(path) = svg {
                let drawn = host_cli::platform_of_status(&v)
                    .map(|topo| uiommu::picture::svg(&topo, Some(&v)))
                    .and_then(|s| {
                        std::fs::write(&path, s).map_err(|e| format!("{}: {e}", path.display()))
                    });
                if let Err(m) = drawn {
                    eprintln!("uiommu status: {m}");
                    return ExitCode::FAILURE;
                }
            }
            if json {
                println!("{v}");
            } else {
                print!("{}", host_cli::status_text(&v));
            }
            ExitCode::SUCCESS
        }),
        Command::Faults { instance, json } => with_status("faults", instance, |v| {
            if json {
                println!("{}", host_cli::faults_json(&v));
            } else {
                print!("{}", host_cli::faults_text(&v));
            }
            ExitCode::SUCCESS
        }),
        Command::Trace {
            instance,
            format,
            output,
            count,
        } => {
            let name = match host_cli::instance_name(instance) {
                Ok(n) => n,
                Err(m) => {
                    eprintln!("uiommu trace: {m}");
                    return ExitCode::from(2);
                }
            };
            let out: Box<dyn std::io::Write> = match &output {
                None => Box::new(std::io::stdout()),
                Some(p) => match std::fs::File::create(p) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        eprintln!("uiommu trace: --output {}: {e}", p.display());
                        return ExitCode::from(2);
                    }
                },
            };
            match host_cli::trace(&name, matches!(format, TraceFormat::Json), count, out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(m) => {
                    eprintln!("uiommu trace: {m}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo => {
            let mut out = std::io::stdout();
            match uiommu::demo::run(&mut out) {
                Ok(report) if report.all_ok() => ExitCode::SUCCESS,
                Ok(report) => {
                    eprintln!(
                        "uiommu demo: {} step(s) did not behave as stated",
                        report.failed()
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("uiommu demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Topology {
            platform,
            json,
            svg,
        } => {
            let topo = match platform {
                None => uiommu::platform::topology::Topology::builtin_default(),
                Some(path) => match uiommu::platform::topology::Topology::read_file(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("uiommu: {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                },
            };
            if let Some(path) = svg {
                if let Err(e) = std::fs::write(&path, uiommu::picture::svg(&topo, None)) {
                    eprintln!("uiommu topology: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if json {
                println!("{}", uiommu::topology_json::json(&topo));
            } else {
                print!("{}", topo.describe());
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            platform,
            preload,
            as_root,
            engine,
            instance,
            front_end,
            trace,
            trace_format,
            kernel,
            fail_nth,
            command,
        } => match run(
            platform,
            preload,
            as_root,
            engine,
            instance,
            front_end,
            trace.map(|t| (t, trace_format)),
            kernel,
            fail_nth,
            &command,
        ) {
            // `run` only returns when the program could not be started.
            Ok(never) => match never {},
            Err((code, msg)) => {
                eprintln!("uiommu run: {msg}");
                ExitCode::from(code)
            }
        },
        Command::Bench {
            quick,
            json,
            only,
            plot,
        } => {
            let mut sizes = if quick {
                bench::Sizes::quick()
            } else {
                bench::Sizes::full()
            };
            sizes.only = only;
            let report = match bench::run(sizes, &mut std::io::stderr()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("uiommu bench: {e}");
                    return ExitCode::FAILURE;
                }
            };
            print!("{}", report.table());
            if let Some(path) = json {
                if let Err(e) = std::fs::write(&path, report.json()) {
                    eprintln!("uiommu bench: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if let Some(dir) = plot {
                match plot::write_plots(&report, &dir) {
                    Ok(files) => {
                        for f in files {
                            eprintln!("bench: plot {}", f.display());
                        }
                    }
                    Err(e) => {
                        eprintln!("uiommu bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// The preload library to use: `--preload`, `$UIOMMU_PRELOAD`, or next to this executable
/// (built there first when this executable is a cargo build of the workspace and the library
/// is not built yet: the README's commands build only the executable).
fn find_preload(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    // LD_PRELOAD is resolved by the program's loader, possibly after a chdir: make it absolute.
    if let Some(p) = flag {
        return std::fs::canonicalize(&p).map_err(|e| format!("--preload {}: {e}", p.display()));
    }
    if let Some(p) = std::env::var_os("UIOMMU_PRELOAD").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return std::fs::canonicalize(&p)
            .map_err(|e| format!("UIOMMU_PRELOAD={}: {e}", p.display()));
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot locate the uiommu executable: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", exe.display()))?;
    let beside = dir.join(PRELOAD_NAME);
    if let Ok(p) = std::fs::canonicalize(&beside) {
        return Ok(p);
    }
    let build = cargo_build_of(dir);
    let how = build.as_ref().map_or_else(
        || "cargo build --release -p uiommu-preload".to_string(),
        |b| b.command_line(),
    );
    if let Some(b) = &build {
        eprintln!(
            "uiommu run: {} is not built yet; building it: {how}",
            beside.display()
        );
        match b.run() {
            Ok(()) => {
                if let Ok(p) = std::fs::canonicalize(&beside) {
                    return Ok(p);
                }
            }
            Err(e) => {
                return Err(format!(
                    "{}: not built, and `{how}` failed ({e}); build it, or pass --preload FILE",
                    beside.display()
                ))
            }
        }
    }
    Err(format!(
        "{}: not found: uiommu run needs the preload library next to the executable (build it \
         with `{how}` in the uiommu source tree), or --preload FILE, or UIOMMU_PRELOAD",
        beside.display()
    ))
}

/// A `cargo build` of the preload library into the same target directory and profile as the
/// executable in `dir`, when `dir` is `<workspace>/target[/<triple>]/<profile>` of this
/// source tree.
struct CargoBuild {
    root: PathBuf,
    args: Vec<String>,
}

impl CargoBuild {
    fn command_line(&self) -> String {
        format!("cargo {}", self.args.join(" "))
    }

    fn run(&self) -> Result<(), String> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(&self.args)
            .current_dir(&self.root)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(st.to_string())
        }
    }
}

/// See [`CargoBuild`].
fn cargo_build_of(dir: &Path) -> Option<CargoBuild> {
    let profile = dir.file_name()?.to_str()?.to_string();
    let up = dir.parent()?;
    let (target, triple) = if up.file_name()? == "target" {
        (up, None)
    } else {
        let t = up.parent()?;
        (t.file_name()? == "target").then_some(())?;
        (t, Some(up.file_name()?.to_str()?.to_string()))
    };
    let root = target.parent()?;
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).ok()?;
    // This source tree's workspace (it has the preload crate).
    if !manifest.contains("[workspace]") || !root.join("crates/preload/Cargo.toml").is_file() {
        return None;
    }
    let mut args = vec!["build".to_string()];
    match profile.as_str() {
        "debug" => {}
        "release" => args.push("--release".into()),
        other => {
            args.push("--profile".into());
            args.push(other.into());
        }
    }
    if let Some(t) = triple {
        args.push("--target".into());
        args.push(t);
    }
    args.extend(["-p".to_string(), "uiommu-preload".to_string()]);
    Some(CargoBuild {
        root: root.to_path_buf(),
        args,
    })
}

/// `existing` with `lib` appended, as `LD_PRELOAD` lists libraries (`:`-separated).
fn append_preload(existing: Option<&OsStr>, lib: &Path) -> OsString {
    let mut value = OsString::new();
    if let Some(e) = existing.filter(|e| !e.is_empty()) {
        value.push(e);
        value.push(":");
    }
    value.push(lib);
    value
}

/// Replace this process by `command` with the preload library and platform in its
/// environment (and `UIOMMU_CAPS=all` with `as_root`). Returns only on failure: (exit code,
/// message).
/// `uiommu SUB --instance NAME`: `f` of the instance's status, or the refusal (exit 2 for a bad
/// name, 1 when no engine serves it).
fn with_status(
    sub: &str,
    instance: Option<String>,
    f: impl FnOnce(serde_json::Value) -> ExitCode,
) -> ExitCode {
    let instance = match host_cli::instance_name(instance) {
        Ok(n) => n,
        Err(m) => {
            eprintln!("uiommu {sub}: {m}");
            return ExitCode::from(2);
        }
    };
    match host_cli::status_json(&instance) {
        Ok(v) => f(v),
        Err(m) => {
            eprintln!("uiommu {sub}: {m}");
            ExitCode::from(1)
        }
    }
}

/// The uAPI level `--kernel` names, else `UIOMMU_KERNEL`'s, else the default; the message for
/// a value that names none.
fn kernel_level(flag: Option<String>) -> Result<uiommu_uapi::level::Level, String> {
    use uiommu_uapi::level::Level;
    match flag {
        Some(v) => Level::parse(&v)
            .ok_or_else(|| format!("--kernel {v}: not a uAPI level ({})", Level::names())),
        None => Level::from_env(),
    }
}

/// `uiommu --version`: the version and the uAPI levels.
fn long_version() -> &'static str {
    use uiommu_uapi::level::Level;
    let mut s = format!(
        "{}
uAPI levels (--kernel):",
        env!("CARGO_PKG_VERSION")
    );
    for l in Level::ALL {
        let default = if l == Level::DEFAULT {
            " (default)"
        } else {
            ""
        };
        s.push_str(&format!(
            "
  {}{default}: {}",
            l.name(),
            l.describe()
        ));
    }
    Box::leak(s.into_boxed_str())
}

/// `run --trace-format`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum TraceFormat {
    /// One strace-like line per call.
    Text,
    /// One JSON object per line.
    Json,
}

#[allow(clippy::too_many_arguments)]
fn run(
    platform: Option<PathBuf>,
    preload: Option<PathBuf>,
    as_root: bool,
    engine: Option<EngineKind>,
    instance: Option<String>,
    front_end: Option<host_cli::FrontEnd>,
    trace: Option<(PathBuf, TraceFormat)>,
    kernel: Option<String>,
    fail_nth: Option<u32>,
    command: &[OsString],
) -> Result<std::convert::Infallible, (u8, String)> {
    use host_cli::FrontEnd;
    let kernel = kernel_level(kernel).map_err(|m| (2, m))?;
    let engine = match engine {
        Some(e) => Some(e),
        None => match std::env::var("UIOMMU_ENGINE").ok().as_deref() {
            None | Some("") => None,
            Some("in-process") => Some(EngineKind::InProcess),
            Some("host") => Some(EngineKind::Host),
            Some(other) => {
                return Err((
                    2,
                    format!("UIOMMU_ENGINE={other}: expected `host` or `in-process`"),
                ))
            }
        },
    };
    let (program, args) = command
        .split_first()
        .ok_or((2, "no program given".to_string()))?;
    // A static program cannot load the preload library: the seccomp front-end serves it,
    // through the host engine (unless the in-process engine was asked for by name).
    let seccomp = match host_cli::front_end(front_end).map_err(|m| (2, m))? {
        FrontEnd::Seccomp => true,
        FrontEnd::Preload => false,
        FrontEnd::Auto => {
            engine != Some(EngineKind::InProcess) && host_cli::is_static(program) == Some(true)
        }
    };
    if seccomp && engine == Some(EngineKind::InProcess) {
        return Err((
            2,
            "the seccomp front-end is served by the host engine only (--engine host)".into(),
        ));
    }
    let engine = match engine {
        _ if seccomp => EngineKind::Host,
        Some(e) => e,
        None => EngineKind::InProcess,
    };
    // Refuse a bad platform file here, with its error (given by --platform or by the
    // environment), rather than in the program's first open.
    let (platform, named) = match platform {
        Some(p) => (Some(p), "--platform "),
        None => (
            std::env::var_os("UIOMMU_PLATFORM")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            "UIOMMU_PLATFORM=",
        ),
    };
    if let Some(path) = &platform {
        let bad = |e: &dyn std::fmt::Display| (2, format!("{named}{}: {e}", path.display()));
        uiommu::platform::topology::Topology::read_file(path).map_err(|e| bad(&e))?;
    }
    let lib = if seccomp {
        None
    } else {
        Some(find_preload(preload).map_err(|m| (2, m))?)
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Some(path) = &platform {
        let abs =
            std::fs::canonicalize(path).map_err(|e| (2, format!("{}: {e}", path.display())))?;
        cmd.env("UIOMMU_PLATFORM", abs);
    }
    if as_root {
        cmd.env("UIOMMU_CAPS", "all");
    }
    if let Some((path, format)) = &trace {
        if seccomp {
            return Err((
                2,
                "--trace: calls through the seccomp front-end (a static program) are not \
                 traced; a dynamic program under the preload front-end is"
                    .into(),
            ));
        }
        // Created now, so that a bad path is refused before the program runs; absolute, as the
        // program may change directory.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| (2, format!("--trace {}: {e}", path.display())))?;
        let abs = std::fs::canonicalize(path)
            .map_err(|e| (2, format!("--trace {}: {e}", path.display())))?;
        cmd.env("UIOMMU_TRACE", abs);
        cmd.env(
            "UIOMMU_TRACE_FORMAT",
            match format {
                TraceFormat::Text => "text",
                TraceFormat::Json => "json",
            },
        );
    } else {
        cmd.env_remove("UIOMMU_TRACE");
    }
    cmd.env("UIOMMU_KERNEL", kernel.name());
    if let Some(n) = fail_nth {
        if engine == EngineKind::Host {
            return Err((
                2,
                "--fail-nth: fault injection is served by the in-process engine only \
                 (not with --engine host or the seccomp front-end)"
                    .into(),
            ));
        }
        cmd.env("UIOMMU_FAIL_NTH", n.to_string());
    }
    if engine == EngineKind::Host {
        let name = host_cli::instance_name(instance).map_err(|m| (2, m))?;
        let source =
            host_cli::ensure_engine(&name, platform.as_deref(), kernel).map_err(|m| (1, m))?;
        // The program's view of the platform (sysfs, /dev nodes) is the engine's.
        if source != "built-in" {
            cmd.env("UIOMMU_PLATFORM", source);
        } else {
            cmd.env_remove("UIOMMU_PLATFORM");
        }
        cmd.env("UIOMMU_INSTANCE", &name);
        // Also under the seccomp front-end (no library reads it there): the program and its
        // children can tell which engine serves them.
        cmd.env("UIOMMU_SOCKET", uiommu_proto::socket_path(&name));
        cmd.env(
            "UIOMMU_FRONT_END",
            if seccomp { "seccomp" } else { "preload" },
        );
        if seccomp {
            host_cli::supervise_self(&name, as_root).map_err(|m| (1, m))?;
        }
    } else {
        cmd.env_remove("UIOMMU_SOCKET");
    }
    if let Some(lib) = &lib {
        let existing = std::env::var_os("LD_PRELOAD");
        cmd.env("LD_PRELOAD", append_preload(existing.as_deref(), lib));
    }
    let err = cmd.exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    Err((code, format!("{}: {err}", Path::new(program).display())))
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_preload_is_built_where_the_executable_was_built() {
        let root = std::env::temp_dir().join(format!("uiommu-ws-{}", std::process::id()));
        std::fs::create_dir_all(root.join("crates/preload")).unwrap();
        std::fs::write(root.join("Cargo.toml"), "[workspace]\n").unwrap();
        std::fs::write(root.join("crates/preload/Cargo.toml"), "").unwrap();
        let args = |dir: &str| cargo_build_of(&root.join(dir)).map(|b| b.command_line());
        assert_eq!(
            args("target/debug").as_deref(),
            Some("cargo build -p uiommu-preload")
        );
        assert_eq!(
            args("target/release").as_deref(),
            Some("cargo build --release -p uiommu-preload")
        );
        assert_eq!(
            args("target/x86_64-unknown-linux-gnu/release").as_deref(),
            Some("cargo build --release --target x86_64-unknown-linux-gnu -p uiommu-preload")
        );
        assert_eq!(
            args("target/bench").as_deref(),
            Some("cargo build --profile bench -p uiommu-preload")
        );
        // Not a target directory, or another workspace: nothing to build.
        assert!(args("bin").is_none());
        std::fs::remove_file(root.join("crates/preload/Cargo.toml")).unwrap();
        assert!(args("target/release").is_none());
        let _ = std::fs::remove_dir_all(&root);
    }

    use super::*;

    #[test]
    fn preload_is_appended_to_an_existing_list() {
        let lib = Path::new("/x/libuiommu_preload.so");
        assert_eq!(
            append_preload(None, lib),
            OsString::from("/x/libuiommu_preload.so")
        );
        assert_eq!(
            append_preload(Some(OsStr::new("")), lib),
            OsString::from("/x/libuiommu_preload.so")
        );
        assert_eq!(
            append_preload(Some(OsStr::new("/a.so")), lib),
            OsString::from("/a.so:/x/libuiommu_preload.so")
        );
    }
}
