//! The `uiommu` command.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

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
    }
}
