//! The `uiommu` command.

mod bench;
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
#[command(name = "uiommu", version, about)]
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
        /// The program and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "PROGRAM")]
        command: Vec<OsString>,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
        Command::Topology { platform } => {
            let topo = match platform {
                None => uiommu::platform::topology::Topology::builtin_default(),
                Some(path) => {
                    let text = match std::fs::read_to_string(&path) {
                        Ok(t) => t,
                        Err(e) => {
                            eprintln!("uiommu: {}: {e}", path.display());
                            return ExitCode::FAILURE;
                        }
                    };
                    match uiommu::platform::topology::Topology::from_toml(&text) {
                        Ok(t) => t,
                        Err(e) => {
                            eprintln!("uiommu: {}: {e}", path.display());
                            return ExitCode::FAILURE;
                        }
                    }
                }
            };
            print!("{}", topo.describe());
            ExitCode::SUCCESS
        }
        Command::Run {
            platform,
            preload,
            as_root,
            command,
        } => match run(platform, preload, as_root, &command) {
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

/// The preload library to use: `--preload`, `$UIOMMU_PRELOAD`, or next to this executable.
fn find_preload(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    let candidate = match flag.or_else(|| std::env::var_os("UIOMMU_PRELOAD").map(PathBuf::from)) {
        Some(p) => p,
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot locate the uiommu executable: {e}"))?;
            exe.parent()
                .map(|d| d.join(PRELOAD_NAME))
                .ok_or_else(|| format!("{}: no parent directory", exe.display()))?
        }
    };
    // LD_PRELOAD is resolved by the program's loader, possibly after a chdir: make it absolute.
    std::fs::canonicalize(&candidate).map_err(|e| {
        format!(
            "{}: {e} (build it with `cargo build --workspace`, or pass --preload)",
            candidate.display()
        )
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
fn run(
    platform: Option<PathBuf>,
    preload: Option<PathBuf>,
    as_root: bool,
    command: &[OsString],
) -> Result<std::convert::Infallible, (u8, String)> {
    let lib = find_preload(preload).map_err(|m| (2, m))?;
    let (program, args) = command
        .split_first()
        .ok_or((2, "no program given".to_string()))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Some(path) = platform {
        // Refuse a bad file here, with its error, rather than in the program's first open.
        let text =
            std::fs::read_to_string(&path).map_err(|e| (2, format!("{}: {e}", path.display())))?;
        uiommu::platform::topology::Topology::from_toml(&text)
            .map_err(|e| (2, format!("{}: {e}", path.display())))?;
        let abs =
            std::fs::canonicalize(&path).map_err(|e| (2, format!("{}: {e}", path.display())))?;
        cmd.env("UIOMMU_PLATFORM", abs);
    }
    if as_root {
        cmd.env("UIOMMU_CAPS", "all");
    }
    let existing = std::env::var_os("LD_PRELOAD");
    cmd.env("LD_PRELOAD", append_preload(existing.as_deref(), &lib));
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
