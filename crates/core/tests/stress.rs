//! Concurrency stress (issue 15, part 3, threads): many threads against one engine at once for
//! a bounded time, each with seeded random operations — map (fixed and automatic IOVAs),
//! unmap, unmap-all, copy, device bind / attach / replace / detach / unbind, paging HWPTs, DMA
//! by the devices, context close and reopen — on IOASes shared by several threads and on
//! private ones. Every refusal must be one a correct engine can give for that operation (no
//! EFAULT on mapped memory, no EDEADLK without accesses, ...); the invariant checker runs
//! beside them and at the end; a watchdog fails the test, naming the operation, when a thread
//! makes no progress for 20 s (a deadlock); at the end, with every context closed, nothing is
//! pinned or charged. `UIOMMU_STRESS_SECS` sets the duration (default 3 s), `UIOMMU_STRESS_SEED`
//! the first seed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uiommu_core::{Context, Engine, EngineConfig, HwptFlags, ObjId};
use uiommu_platform::memory::{SimMemory, SpaceId};
use uiommu_platform::pagetable::Prot;
use uiommu_platform::topology::DeviceId;
use uiommu_platform::{Iova, Platform, UserVa, PAGE_SIZE};

const BUF: u64 = 0x7f00_0000_0000;
const PAGES: u64 = 256;
const IOVA_BASE: u64 = 0x100_0000;
const SLOTS: u64 = 64;

/// errno values (x86-64).
const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const ENOMEM: i32 = 12;
const EBUSY: i32 = 16;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;
const EOPNOTSUPP: i32 = 95;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One thread's view: its context (shared with others for the shared IOAS), the IOASes and
/// devices it knows.
struct Worker {
    engine: Arc<Engine>,
    space: SpaceId,
    ctx: Context,
    ioas: Vec<ObjId>,
    devs: Vec<DeviceId>,
    bound: Vec<(DeviceId, ObjId)>,
    hwpts: Vec<ObjId>,
    shared: bool,
}

/// Which errno an operation may end with under concurrency (another thread may have changed
/// the IOAS, the device or the context meanwhile).
fn allowed(op: &str, e: i32) -> bool {
    match op {
        "map" => matches!(e, EEXIST | ENOSPC | ENOMEM | EINVAL | ENOENT),
        "unmap" | "unmap_all" => matches!(e, ENOENT | EINVAL),
        "copy" => matches!(e, ENOENT | EEXIST | ENOSPC | ENOMEM | EINVAL),
        "bind" => matches!(e, EPERM | EBUSY | EINVAL | ENODEV),
        "attach" | "replace" => matches!(e, ENOENT | EINVAL | EBUSY | ENOMEM | ENODEV),
        "detach" | "unbind" => matches!(e, ENOENT | EINVAL | EBUSY),
        "hwpt" => matches!(e, ENOENT | EINVAL | EOPNOTSUPP | ENOMEM | EBUSY),
        "destroy" => matches!(e, ENOENT | EBUSY),
        _ => false,
    }
}

impl Worker {
    fn iova(&self, rng: &mut Rng) -> Iova {
        Iova(IOVA_BASE + rng.below(SLOTS) * PAGE_SIZE)
    }

    fn pick<T: Copy>(v: &[T], rng: &mut Rng) -> Option<T> {
        (!v.is_empty()).then(|| v[rng.below(v.len() as u64) as usize])
    }

    /// One random operation: its name and outcome — `None` when there was nothing to do it on
    /// (no device bound yet, ...), else its refusal if any.
    fn step(
        &mut self,
        rng: &mut Rng,
        doing: &Mutex<&'static str>,
    ) -> (&'static str, Option<Option<i32>>) {
        let e = |r: uiommu_core::Result<()>| Some(r.err().map(|e| e.errno()));
        let op: &'static str = match rng.below(14) {
            0..=3 => "map",
            4..=5 => "unmap",
            6 => "unmap_all",
            7 => "copy",
            8 => "bind",
            9 => "attach",
            10 => "replace",
            11 => "detach",
            12 => "hwpt",
            _ => "dma",
        };
        *doing.lock().unwrap() = op;
        let Some(ioas) = Self::pick(&self.ioas, rng) else {
            return (op, None);
        };
        let r = match op {
            "map" => {
                let n = 1 + rng.below(4);
                let uva = UserVa(BUF + rng.below(PAGES - n) * PAGE_SIZE);
                let iova = (rng.below(2) == 0).then(|| self.iova(rng));
                e(self
                    .ctx
                    .ioas_map(ioas, uva, n * PAGE_SIZE, iova, Prot::RW)
                    .map(|_| ()))
            }
            "unmap" => {
                let iova = self.iova(rng);
                e(self
                    .ctx
                    .ioas_unmap(ioas, iova, (1 + rng.below(8)) * PAGE_SIZE)
                    .map(|_| ()))
            }
            "unmap_all" => {
                if self.shared && rng.below(4) != 0 {
                    return (op, None);
                }
                e(self.ctx.ioas_unmap_all(ioas).map(|_| ()))
            }
            "copy" => {
                let dst = Self::pick(&self.ioas, rng).unwrap_or(ioas);
                let src = self.iova(rng);
                e(self
                    .ctx
                    .ioas_copy(dst, ioas, src, PAGE_SIZE, None, Prot::RW)
                    .map(|_| ()))
            }
            "bind" => match Self::pick(&self.devs, rng) {
                Some(d) if !self.bound.iter().any(|b| b.0 == d) => match self.ctx.device_bind(d) {
                    Ok(id) => {
                        self.bound.push((d, id));
                        Some(None)
                    }
                    Err(x) => Some(Some(x.errno())),
                },
                _ => None,
            },
            "attach" | "replace" => match Self::pick(&self.bound, rng) {
                Some((_, id)) => {
                    let pt = if rng.below(2) == 0 {
                        Self::pick(&self.hwpts, rng).unwrap_or(ioas)
                    } else {
                        ioas
                    };
                    let r = if op == "attach" {
                        self.ctx.device_attach(id, pt)
                    } else {
                        self.ctx.device_replace(id, pt)
                    };
                    e(r.map(|_| ()))
                }
                None => None,
            },
            "detach" => match Self::pick(&self.bound, rng) {
                Some((d, id)) => {
                    if rng.below(2) == 0 {
                        e(self.ctx.device_detach(id))
                    } else {
                        self.bound.retain(|b| b.0 != d);
                        return ("unbind", e(self.ctx.device_unbind(id)));
                    }
                }
                None => None,
            },
            "hwpt" => match Self::pick(&self.bound, rng) {
                Some((_, id)) => match self.ctx.hwpt_alloc_paging(id, ioas, HwptFlags::default()) {
                    Ok(h) => {
                        self.hwpts.push(h);
                        Some(None)
                    }
                    Err(x) => Some(Some(x.errno())),
                },
                None => {
                    if let Some(h) = self.hwpts.pop() {
                        return ("destroy", e(self.ctx.destroy(h)));
                    }
                    None
                }
            },
            _ => {
                // DMA by a device this thread bound: a fault is an answer, never an error.
                let Some((d, _)) = Self::pick(&self.bound, rng) else {
                    return (op, None);
                };
                let mut b = [0u8; 64];
                let at = self.iova(rng);
                let _ = if rng.below(2) == 0 {
                    self.engine.dma_read(d, at, &mut b)
                } else {
                    self.engine.dma_write(d, at, &b)
                };
                Some(None)
            }
        };
        (op, r)
    }

    /// Close the context (a private one) and open a fresh one: every object of it goes.
    fn reopen(&mut self) {
        let fresh = self.engine.open(self.space).unwrap();
        let old = std::mem::replace(&mut self.ctx, fresh);
        old.close();
        self.bound.clear();
        self.hwpts.clear();
        self.ioas = vec![
            self.ctx.ioas_alloc().unwrap(),
            self.ctx.ioas_alloc().unwrap(),
        ];
    }
}

#[test]
fn many_threads_on_one_engine_keep_its_invariants_and_release_everything() {
    let secs: u64 = std::env::var("UIOMMU_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed0: u64 = std::env::var("UIOMMU_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let engine = Engine::new(Platform::builtin(), EngineConfig::default()).unwrap();
    let mem = SimMemory::new();
    mem.map(UserVa(BUF), PAGES * PAGE_SIZE, true);
    let space = engine.add_space(mem.clone());
    let vfio: Vec<DeviceId> = engine.with_platform(|p| {
        ["dma0", "dma1", "nic0", "ssd0", "nvme1"]
            .iter()
            .filter_map(|n| p.topology.find_name(n))
            .collect()
    });
    assert!(vfio.len() >= 3, "{vfio:?}");
    // Three threads share one context and its IOAS; three have a context each.
    let shared = engine.open(space).unwrap();
    let shared_ioas = shared.ioas_alloc().unwrap();
    const THREADS: usize = 6;
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..THREADS).map(|_| AtomicU64::new(0)).collect());
    let doing: Arc<Vec<Mutex<&'static str>>> =
        Arc::new((0..THREADS).map(|_| Mutex::new("start")).collect());
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let is_shared = t < 3;
        let ctx = if is_shared {
            shared.clone()
        } else {
            engine.open(space).unwrap()
        };
        let ioas = if is_shared {
            vec![shared_ioas]
        } else {
            vec![ctx.ioas_alloc().unwrap(), ctx.ioas_alloc().unwrap()]
        };
        let mut w = Worker {
            engine: engine.clone(),
            space,
            ctx,
            ioas,
            // The shared threads contend for the same devices; the others for all of them.
            devs: vfio.clone(),
            bound: Vec::new(),
            hwpts: Vec::new(),
            shared: is_shared,
        };
        let (stop, progress, doing) = (stop.clone(), progress.clone(), doing.clone());
        handles.push(std::thread::spawn(move || {
            let mut rng =
                Rng(seed0.wrapping_add((t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
            let mut ops = 0u64;
            let mut done: std::collections::BTreeMap<&'static str, (u64, u64)> = Default::default();
            while !stop.load(Ordering::Relaxed) {
                let (op, r) = w.step(&mut rng, &doing[t]);
                let e = done.entry(op).or_default();
                match r {
                    Some(Some(errno)) => {
                        assert!(
                            allowed(op, errno),
                            "thread {t}: {op} refused with errno {errno}"
                        );
                        e.1 += 1;
                    }
                    Some(None) => e.0 += 1,
                    None => {}
                }
                ops += 1;
                progress[t].store(ops, Ordering::Relaxed);
                if !w.shared && rng.below(500) == 0 {
                    *doing[t].lock().unwrap() = "reopen";
                    w.reopen();
                }
            }
            if !w.shared {
                w.ctx.close();
            }
            (ops, done)
        }));
    }
    // The invariant checker beside them, and the watchdog.
    let deadline = started + Duration::from_secs(secs);
    let mut last = [(0u64, Instant::now()); THREADS];
    let mut checks = 0u32;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if let Err(v) = engine.check_invariants() {
            stop.store(true, Ordering::Relaxed);
            panic!("invariants violated while running:\n{v}");
        }
        checks += 1;
        for t in 0..THREADS {
            let n = progress[t].load(Ordering::Relaxed);
            if n != last[t].0 {
                last[t] = (n, Instant::now());
            } else if last[t].1.elapsed() > Duration::from_secs(20) {
                let op = *doing[t].lock().unwrap();
                panic!("thread {t} stuck in {op} for 20 s (a deadlock?)");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut by_op: std::collections::BTreeMap<&'static str, (u64, u64)> = Default::default();
    for h in handles {
        let (n, done) = h.join().expect("a worker panicked");
        total += n;
        for (op, (ok, refused)) in done {
            let e = by_op.entry(op).or_default();
            e.0 += ok;
            e.1 += refused;
        }
    }
    println!("done / refused per operation: {by_op:?}");
    // Every kind of operation got through sometimes (the run did exercise each path).
    for op in [
        "map",
        "unmap",
        "unmap_all",
        "copy",
        "bind",
        "attach",
        "replace",
        "detach",
        "hwpt",
    ] {
        assert!(
            by_op.get(op).is_some_and(|&(ok, _)| ok > 0),
            "{op} never succeeded: {by_op:?}"
        );
    }
    shared.close();
    if let Err(v) = engine.check_invariants() {
        panic!("invariants violated at the end:\n{v}");
    }
    assert_eq!(
        engine.total_pins(),
        0,
        "pins left after every context closed"
    );
    assert_eq!(engine.user_charged_pages(), 0, "charge left");
    println!(
        "{THREADS} threads, {total} operations in {:.1} s, {checks} invariant checks",
        started.elapsed().as_secs_f64()
    );
    assert!(total > 1000, "{total} operations only");
}
