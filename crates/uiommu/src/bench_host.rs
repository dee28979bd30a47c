//! The host engine's figure of `uiommu bench`: IOMMU_IOAS_MAP + IOMMU_IOAS_UNMAP of 4 KiB with
//! a mock domain attached, called by another process through the host engine (the protocol
//! the preload front-end speaks), beside the in-process figure of the same run.
//!
//! The bench starts a host engine of a private instance in a thread, then runs itself as the
//! client (`uiommu __bench-host-client SOCKET MS RUNS`, hidden): a separate process that
//! opens `/dev/iommu` through the engine, allocates an IOAS, attaches a mock domain
//! (IOMMU_TEST_CMD) and times map+unmap pairs, printing the median rate of RUNS timed runs of
//! about MS milliseconds each.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};
use uiommu_proto::client::Client;
use uiommu_proto::{Request, OP_IOCTL, OP_OPEN};
use uiommu_uapi::abi::{
    IommuIoasAlloc, IommuIoasMap, IommuIoasUnmap, IommuTestCmd, IOMMU_IOAS_ALLOC, IOMMU_IOAS_MAP,
    IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_READABLE, IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_UNMAP,
    IOMMU_TEST_CMD, IOMMU_TEST_OP_MOCK_DOMAIN,
};
use uiommu_uapi::file::Target;

/// The mock domain's aperture starts here.
const IOVA: u64 = 1 << 24;
const PAGE: usize = 4096;

/// Measure through a private host engine: the median pairs/s.
pub fn measure(target: Duration, runs: usize) -> Result<f64, String> {
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
    if cfg!(test) {
        // A unit test's executable is not `uiommu`: the client runs in a thread instead.
        let path = socket.to_string_lossy().into_owned();
        let ms = target.as_millis() as u64;
        return std::thread::spawn(move || client_main(&path, ms, runs))
            .join()
            .map_err(|_| "bench client panicked".to_string())?;
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = Command::new(exe)
        .arg("__bench-host-client")
        .arg(&socket)
        .arg(target.as_millis().to_string())
        .arg(runs.to_string())
        .env_remove("LD_PRELOAD")
        .output()
        .map_err(|e| format!("bench client: {e}"))?;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(uiommu_host::lock_path(&instance));
    if !out.status.success() {
        return Err(format!(
            "bench client ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("bench client output: {e}"))
}

/// The client process: returns the median pairs/s.
pub fn client_main(socket: &str, ms: u64, runs: usize) -> Result<f64, String> {
    static CLIENT: Client = Client::new();
    if !CLIENT.set_path(socket.as_bytes()) {
        return Err("socket path too long".into());
    }
    uiommu_proto::client::set_spin(uiommu_proto::DEFAULT_SPIN_US * 1000);
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
    let fd = i32::try_from(m.val).map_err(|_| "open: bad fd".to_string())?;
    let ioctl = |request: u32, arg: u64| -> Result<(), String> {
        let m = CLIENT
            .call(
                Request::new(OP_IOCTL, [u64::from(request), arg, 0, 0, 0, 0]),
                Some(fd),
            )
            .map_err(|e| format!("ioctl {request:#x}: errno {e}"))?;
        if m.err != 0 {
            return Err(format!("ioctl {request:#x}: errno {}", m.err));
        }
        Ok(())
    };
    // The engine reads and writes these structs in this process's memory.
    let mut alloc = IommuIoasAlloc {
        size: 12,
        ..Default::default()
    };
    ioctl(IOMMU_IOAS_ALLOC, black_box(&mut alloc as *mut _) as u64)?;
    let ioas = black_box(&alloc).out_ioas_id;
    let mut mock = IommuTestCmd {
        size: 72,
        op: IOMMU_TEST_OP_MOCK_DOMAIN,
        id: ioas,
        ..Default::default()
    };
    ioctl(IOMMU_TEST_CMD, black_box(&mut mock as *mut _) as u64)?;
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
    let map_arg = &mut map as *mut IommuIoasMap as u64;
    let unmap_arg = &mut unmap as *mut IommuIoasUnmap as u64;
    let pair = || -> Result<(), String> {
        ioctl(IOMMU_IOAS_MAP, black_box(map_arg))?;
        ioctl(IOMMU_IOAS_UNMAP, black_box(unmap_arg))
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
