//! The host engine's figures of `uiommu bench`: IOMMU_IOAS_MAP + IOMMU_IOAS_UNMAP of 4 KiB with
//! a mock domain attached, called by another process through the host engine, beside the
//! in-process figure of the same run, three ways ([`Path`]): the preload front-end's protocol
//! with rings (its default), the same with a message per call, and raw system calls under the
//! seccomp front-end.
//!
//! The bench starts a host engine of a private instance in a thread, then runs itself as the
//! client (`uiommu __bench-host-client SOCKET MS RUNS PATH`, hidden; for `seccomp` under
//! `uiommu run --front-end seccomp`): a separate process that opens `/dev/iommu` through the
//! engine, allocates an IOAS, attaches a mock domain (IOMMU_TEST_CMD) and times map+unmap
//! pairs, printing the median rate of RUNS timed runs of about MS milliseconds each.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};
use uiommu_proto::client::Client;
use uiommu_proto::{Request, OP_IOCTL, OP_OPEN};
use uiommu_uapi::abi::{
    IommuIoasAlloc, IommuIoasMap, IommuIoasUnmap, IommuOption, IommuTestCmd, IOMMU_IOAS_ALLOC,
    IOMMU_IOAS_MAP, IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_READABLE, IOMMU_IOAS_MAP_WRITEABLE,
    IOMMU_IOAS_UNMAP, IOMMU_OPTION, IOMMU_OPTION_OP_GET, IOMMU_OPTION_RLIMIT_MODE, IOMMU_TEST_CMD,
    IOMMU_TEST_OP_MOCK_DOMAIN,
};
use uiommu_uapi::file::Target;

/// The mock domain's aperture starts here.
const IOVA: u64 = 1 << 24;
const PAGE: usize = 4096;

/// How the bench's client reaches the host engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Path {
    /// The preload front-end's client: hot calls through a ring.
    Ring,
    /// The same client with rings off: a message per call.
    Message,
    /// Raw system calls under the seccomp front-end.
    Seccomp,
    /// Through a ring as [`Path::Ring`], but each pair is two IOMMU_OPTION gets, calls that do
    /// almost nothing: what the path costs without the work of a map and an unmap.
    Null,
}

/// Measure each of `paths` through one private host engine: the median pairs/s of each, or
/// why it could not be measured.
pub fn measure(
    target: Duration,
    runs: usize,
    paths: &[Path],
) -> Result<Vec<Result<f64, String>>, String> {
    let instance = format!("bench-{}", std::process::id());
    let host = uiommu_host::Host::new(
        uiommu_platform::Platform::builtin(),
        uiommu_host::Config {
            spin: Duration::from_micros(uiommu_proto::DEFAULT_SPIN_US),
            ..uiommu_host::Config::new(&instance)
        },
    )?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = uiommu_host::serve(host, || {
            let _ = tx.send(());
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the host engine did not start".to_string())?;
    let socket = uiommu_proto::socket_path(&instance);
    let r = paths
        .iter()
        .map(|&path| measure_one(&instance, &socket, target, runs, path))
        .collect();
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(uiommu_host::lock_path(&instance));
    Ok(r)
}

fn measure_one(
    instance: &str,
    socket: &std::path::Path,
    target: Duration,
    runs: usize,
    path: Path,
) -> Result<f64, String> {
    let ms = target.as_millis() as u64;
    if cfg!(test) {
        // A unit test's executable is not `uiommu`: the client runs in a thread instead.
        if path == Path::Seccomp {
            return Err("not measured in a unit test".into());
        }
        let socket = socket.to_string_lossy().into_owned();
        return std::thread::spawn(move || client_main(&socket, ms, runs, path))
            .join()
            .map_err(|_| "bench client panicked".to_string())?;
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(&exe);
    if path == Path::Seccomp {
        cmd.args([
            "run",
            "--front-end",
            "seccomp",
            "--instance",
            instance,
            "--",
        ])
        .arg(&exe);
    }
    let name = format!("{path:?}").to_lowercase();
    let out = cmd
        .arg("__bench-host-client")
        .arg(socket)
        .arg(ms.to_string())
        .arg(runs.to_string())
        .arg(&name)
        .env_remove("LD_PRELOAD")
        .env_remove("UIOMMU_FRONT_END")
        .output()
        .map_err(|e| format!("bench client: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bench client ({name}, {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("bench client output: {e}"))
}

/// How the client makes its calls.
enum Calls {
    /// Through the protocol's client, on the engine's fd.
    Client(&'static Client, i32),
    /// Raw system calls on an fd of `/dev/iommu` (the seccomp front-end serves them).
    Raw(std::fs::File),
}

impl Calls {
    fn ioctl<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &self,
        request: u32,
        arg: &mut T,
    ) -> Result<(), String> {
        match self {
            Calls::Client(client, fd) => {
                let m = client
                    .call(
                        Request::new(
                            OP_IOCTL,
                            [u64::from(request), arg as *mut T as u64, 0, 0, 0, 0],
                        ),
                        Some(*fd),
                    )
                    .map_err(|e| format!("ioctl {request:#x}: errno {e}"))?;
                if m.err != 0 {
                    return Err(format!("ioctl {request:#x}: errno {}", m.err));
                }
                Ok(())
            }
            Calls::Raw(f) => {
                use std::os::fd::AsFd;
                uiommu_sys::ioctl_struct(f.as_fd(), request, arg)
                    .map(|_| ())
                    .map_err(|e| format!("ioctl {request:#x}: {e}"))
            }
        }
    }
}

/// Round trips per second of a hand-over between two threads spinning on one atomic word
/// (median of `runs` of about `target`): the least any call that another CPU serves costs.
pub fn handover_round_trips_per_s(target: Duration, runs: usize) -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let word = Arc::new(AtomicU64::new(0));
    let w = word.clone();
    // Odd: the server's turn (0: stop); even: the caller's.
    let server = std::thread::spawn(move || loop {
        let v = w.load(SeqCst);
        if v == u64::MAX {
            return;
        }
        if v % 2 == 1 {
            w.store(v + 1, SeqCst);
        } else {
            std::hint::spin_loop();
        }
    });
    let mut rates = Vec::new();
    let mut v = 0u64;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < target {
            for _ in 0..256 {
                word.store(v + 1, SeqCst);
                while word.load(SeqCst) != v + 2 {
                    std::hint::spin_loop();
                }
                v += 2;
            }
            n += 256;
        }
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    word.store(u64::MAX, SeqCst);
    let _ = server.join();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// The client process: returns the median pairs/s.
pub fn client_main(socket: &str, ms: u64, runs: usize, path: Path) -> Result<f64, String> {
    static CLIENT: Client = Client::new();
    let calls = if path == Path::Seccomp {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/iommu")
            .map_err(|e| format!("open /dev/iommu: {e}"))?;
        Calls::Raw(f)
    } else {
        if !CLIENT.set_path(socket.as_bytes()) {
            return Err("socket path too long".into());
        }
        uiommu_proto::client::set_spin(uiommu_proto::DEFAULT_SPIN_US * 1000);
        CLIENT.set_rings(matches!(path, Path::Ring | Path::Null));
        let (kind, n) = Target::Iommu.encode();
        let m = CLIENT
            .call(
                Request::new(OP_OPEN, [u64::from(kind), u64::from(n), 2, 0, 0, 0]),
                None,
            )
            .map_err(|e| format!("open: errno {e}"))?;
        if m.err != 0 {
            return Err(format!("open: errno {}", m.err));
        }
        Calls::Client(
            &CLIENT,
            i32::try_from(m.val).map_err(|_| "open: bad fd".to_string())?,
        )
    };
    // The engine reads and writes these structs in this process's memory.
    let mut alloc = IommuIoasAlloc {
        size: 12,
        ..Default::default()
    };
    calls.ioctl(IOMMU_IOAS_ALLOC, black_box(&mut alloc))?;
    let ioas = black_box(&alloc).out_ioas_id;
    let mut mock = IommuTestCmd {
        size: 72,
        op: IOMMU_TEST_OP_MOCK_DOMAIN,
        id: ioas,
        ..Default::default()
    };
    calls.ioctl(IOMMU_TEST_CMD, black_box(&mut mock))?;
    let buf = vec![1u8; 2 * PAGE];
    let va = (buf.as_ptr() as usize).next_multiple_of(PAGE) as u64;
    let mut map = IommuIoasMap {
        size: 40,
        flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
        ioas_id: ioas,
        reserved: 0,
        user_va: va,
        length: PAGE as u64,
        iova: IOVA,
    };
    let mut unmap = IommuIoasUnmap {
        size: 24,
        ioas_id: ioas,
        iova: IOVA,
        length: PAGE as u64,
    };
    let mut option = IommuOption {
        size: 24,
        option_id: IOMMU_OPTION_RLIMIT_MODE,
        op: IOMMU_OPTION_OP_GET,
        ..Default::default()
    };
    let mut pair = || -> Result<(), String> {
        if path == Path::Null {
            calls.ioctl(IOMMU_OPTION, black_box(&mut option))?;
            return calls.ioctl(IOMMU_OPTION, black_box(&mut option));
        }
        calls.ioctl(IOMMU_IOAS_MAP, black_box(&mut map))?;
        calls.ioctl(IOMMU_IOAS_UNMAP, black_box(&mut unmap))
    };
    for _ in 0..100 {
        pair()?;
    }
    let target = Duration::from_millis(ms);
    let mut rates = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < target {
            for _ in 0..16 {
                pair()?;
            }
            n += 16;
        }
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    black_box((&map, &unmap, &buf));
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}
