//! `uiommu status`: the engine, its platform, and per security context who holds it, what it
//! has bound, the groups it owns, its objects and the pages it pinned.
//!
//! The JSON keys (documented in docs/HOST.md):
//! - `instance`, `pid`, `uid`, `uptime_s`, `platform` (its source), `connections`;
//! - `rings`: `{serving, made}`: rings (the fast path, `crate::ring`) served now, made in all;
//! - `processes`: `[{pid, uid, bytes_moved, user_pages}]`, the processes the engine served
//!   (`user_pages`: pinned pages charged to the process's user);
//! - `files`: `[{id, node, kind, opener: {pid, uid}, holders: [pid], context, device}]`: every
//!   open file; `holders` are the known processes with an fd of it now, `context` the
//!   security context of an iommufd, `device` the BDF of a VFIO device file;
//! - `contexts`: `[{id, objects, groups: [n], pinned_pages, charged_pages, rlimit_mode}]`
//!   (`pinned_pages`: pages the context's IOASes pinned, each pages object once;
//!   `charged_pages`: those charged, as IOMMU_OPTION_RLIMIT_MODE says: `user` (the user's
//!   `locked_vm`) or `process` (the process's `pinned_vm`));
//! - `users`: `[{uid, locked_pages}]`: each served user's charge (its `locked_vm` share of
//!   pins, across all its processes);
//! - `groups`: `[{group, devices: [bdf], owner: context or null, domain}]`;
//! - `faults`: `{total, log: [{time, device, rid, iova, access, reason}]}`: the IOMMU's fault
//!   log, oldest first (`total` counts every fault ever recorded, the log keeps the latest);
//!   per context `fault_queues: [{id, queued, waiting_response}]` (IOPF queues);
//! - `pinned`: `{user_pages, total_pins, held_frames}` (`held_frames`: pinned frames of
//!   shared memory the engine holds itself, docs/HOST.md#pins-of-shared-memory-hold-their-pages).

use crate::Host;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use uiommu_uapi::file::{Kind, Target};

/// The node path of `t`.
fn node_path(t: Target) -> String {
    match t {
        Target::Iommu => "/dev/iommu".into(),
        Target::VfioDevice(n) => format!("/dev/vfio/devices/vfio{n}"),
        Target::VfioContainer => "/dev/vfio/vfio".into(),
        Target::VfioGroup(n) => format!("/dev/vfio/{n}"),
        Target::NoEnt => String::new(),
    }
}

/// Which processes hold which socket inodes now (from their `/proc/PID/fd`).
fn holders(pids: &[i32]) -> BTreeMap<u64, BTreeSet<i32>> {
    let mut out: BTreeMap<u64, BTreeSet<i32>> = BTreeMap::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in dir.flatten() {
            if let Ok(md) = std::fs::metadata(e.path()) {
                out.entry(md.ino()).or_default().insert(pid);
            }
        }
    }
    out
}

/// The engine's state as JSON.
pub fn json(host: &Host) -> Value {
    let procs = host.clients.all();
    let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    let held = holders(&pids);
    let mut files = Vec::new();
    let mut contexts = BTreeMap::new();
    for f in host.files.all() {
        let (kind, context, device) = match (&f.open.kind, f.open.vfio(), f.open.fault_queue()) {
            (Kind::Iommufd(i), _, _) => {
                let c = i.context();
                contexts.insert(
                    c.id().0,
                    (
                        c.objects().map(|o| o.len()).unwrap_or(0),
                        c.pinned_pages().unwrap_or((0, 0)),
                        c.rlimit_mode_process().unwrap_or(false),
                        c.fault_queues().unwrap_or_default(),
                    ),
                );
                ("iommufd", Some(c.id().0), None)
            }
            (Kind::Group(_), _, _) => ("vfio-group", None, None),
            (_, Some(v), _) => ("vfio-device", None, Some(v.device())),
            (_, _, Some(_)) => ("fault-queue", None, None),
            _ => ("engine-file", None, None),
        };
        let device = device.and_then(|d| {
            host.engine
                .with_platform(|p| p.topology.device(d).map(|d| d.bdf.to_string()))
        });
        files.push(json!({
            "id": f.id,
            "node": f.open.node.map(node_path),
            "kind": kind,
            "opener": {"pid": f.opener.0, "uid": f.opener.1},
            "holders": held.get(&f.key.1).map(|s| s.iter().copied().collect::<Vec<_>>()).unwrap_or_default(),
            "context": context,
            "device": device,
        }));
    }
    let groups: Vec<(u32, Vec<String>)> = host.engine.with_platform(|p| {
        p.topology
            .groups()
            .map(|g| {
                let devs = g
                    .devices
                    .iter()
                    .filter_map(|d| p.topology.device(*d).map(|d| d.bdf.to_string()))
                    .collect();
                (g.id.0, devs)
            })
            .collect()
    });
    let mut owned: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(id, devs)| {
            let st = host
                .engine
                .group_status(uiommu_platform::topology::GroupId(id));
            let owner = st.as_ref().and_then(|s| s.owner).map(|c| c.0);
            if let Some(o) = owner {
                owned.entry(o).or_default().push(id);
            }
            json!({
                "group": id,
                "devices": devs,
                "owner": owner,
                "domain": st.and_then(|s| s.domain).map(|d| format!("{d:?}").to_lowercase()),
            })
        })
        .collect();
    let contexts: Vec<Value> = contexts
        .into_iter()
        .map(|(id, (objects, (pinned, charged), process_mode, queues))| {
            json!({
                "id": id,
                "objects": objects,
                "groups": owned.get(&id).cloned().unwrap_or_default(),
                "pinned_pages": pinned,
                "charged_pages": charged,
                "rlimit_mode": if process_mode { "process" } else { "user" },
                "fault_queues": queues.iter().map(|&(q, queued, waiting)| json!({
                    "id": q.0, "queued": queued, "waiting_response": waiting,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let users: BTreeSet<u32> = procs.iter().map(|p| p.uid).collect();
    json!({
        "instance": host.config.instance,
        "kernel": uiommu_uapi::level::current().name(),
        "pid": std::process::id(),
        "uid": nix::unistd::geteuid().as_raw(),
        "uptime_s": host.started.elapsed().as_secs(),
        "platform": host.config.platform_source,
        "connections": host.connections.load(std::sync::atomic::Ordering::Relaxed),
        "tracers": host.tracers.count(),
        "rings": {
            "serving": host.rings.load(std::sync::atomic::Ordering::Relaxed),
            "made": host.rings_made.load(std::sync::atomic::Ordering::Relaxed),
        },
        "processes": procs.iter().map(|p| json!({
            "pid": p.pid,
            "uid": p.uid,
            "bytes_moved": p.mem.moved.load(std::sync::atomic::Ordering::Relaxed),
            "user_pages": host.engine.pages_charged_to(p.uid),
        })).collect::<Vec<_>>(),
        "files": files,
        "contexts": contexts,
        "groups": groups,
        "faults": faults(host),
        "dma": dma(host),
        "users": users.iter().map(|&uid| json!({
            "uid": uid,
            "locked_pages": host.engine.pages_charged_to(uid),
        })).collect::<Vec<_>>(),
        "pinned": {
            "user_pages": host.engine.user_charged_pages(),
            "total_pins": host.engine.total_pins(),
            "held_frames": host.engine.held_frames(),
        },
    })
}

/// What each device's DMA moved through the IOMMU since the engine started: `[{device,
/// reads, read_bytes, writes, write_bytes, faults}]` (`device`: the BDF), one entry per device
/// that did any DMA.
fn dma(host: &Host) -> Value {
    host.engine
        .dma_counters()
        .into_iter()
        .map(|(dev, c)| {
            let bdf = host
                .engine
                .with_platform(|p| p.topology.device(dev).map(|d| d.bdf.to_string()));
            json!({
                "device": bdf,
                "reads": c.reads,
                "read_bytes": c.read_bytes,
                "writes": c.writes,
                "write_bytes": c.write_bytes,
                "faults": c.faults,
            })
        })
        .collect()
}

/// The IOMMU fault log: `{total, log: [{time, device, rid, iova, access, reason}]}` (`time`:
/// seconds since the epoch; `device`: the BDF; `reason`: blocked, not-mapped, permission,
/// bad-physical).
fn faults(host: &Host) -> Value {
    use uiommu_platform::hw::FaultReason;
    use uiommu_platform::pagetable::Access;
    let (log, total) = host.engine.fault_log();
    let log: Vec<Value> = log
        .into_iter()
        .map(|(f, at)| {
            let bdf = host
                .engine
                .with_platform(|p| p.topology.device(f.device).map(|d| d.bdf.to_string()));
            json!({
                "time": at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                "device": bdf,
                "rid": f.rid.0,
                "iova": f.iova.0,
                "access": match f.access {
                    Access::Read => "read",
                    Access::Write => "write",
                },
                "reason": match f.reason {
                    FaultReason::Blocked => "blocked",
                    FaultReason::NotMapped => "not-mapped",
                    FaultReason::Permission => "permission",
                    FaultReason::BadPhysical => "bad-physical",
                },
            })
        })
        .collect();
    json!({"total": total, "log": log})
}
