//! The security invariants of DESIGN.md, checked over the whole engine.
//!
//! [`Engine::check_invariants`](crate::Engine::check_invariants) runs [`check`] under the
//! engine's lock and reports every violation it finds:
//!
//! - **I1** every requester id of every group is translated by the domain its group should use:
//!   the default (identity) domain when no context owns the group, the blocking domain when a
//!   context owns it but nothing is attached, else the domain of the group's HWPT; and every
//!   attached device object agrees with its group's HWPT.
//! - **I2** no group has devices held by two contexts, nor by a context and a DMA-doing kernel
//!   driver; the group's user count matches its claimed devices plus DMA-driver devices.
//! - **I3** every paging domain holds exactly the mappings of its IOAS (same IOVAs, each
//!   translating to the frame of the mapped user page with the mapping's rights), and no IOTLB
//!   entry disagrees with its page table, so nothing unmapped is reachable.
//! - **I4** pins match mappings: the frame table holds exactly the pins the pages objects hold,
//!   the accounting charges match them, and with no context open both are zero.
//!
//! I5 (a refused call changes nothing) is a property of calls, not of a state: the property
//! tests compare [`snapshot`]s before and after each refused call.

use crate::engine::State;
use crate::Object;
use std::collections::HashMap;
use std::fmt;
use uiommu_platform::hw::DomainId;
use uiommu_platform::memory::FrameTable;
use uiommu_platform::{Iova, PAGE_SIZE};

/// Every violation found, as sentences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violations(pub Vec<String>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for v in &self.0 {
            writeln!(f, "{v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// At most this many pages of each area are translated per check (first, last and evenly
/// spread ones), so the checker stays cheap on large mappings.
const SAMPLES_PER_AREA: u64 = 64;

pub(crate) fn check(st: &State) -> Result<(), Violations> {
    let mut v = Vec::new();
    check_groups(st, &mut v);
    check_domains(st, &mut v);
    check_iotlb(st, &mut v);
    check_pins(st, &mut v);
    if v.is_empty() {
        Ok(())
    } else {
        Err(Violations(v))
    }
}

fn hwpt_domain(st: &State, ctx: crate::group::CtxId, id: crate::ObjId) -> Option<DomainId> {
    match st.ctxs.get(&ctx)?.objects.get(id).ok()? {
        Object::HwptPaging(h) => Some(h.domain),
        Object::HwptNested(h) => Some(h.domain),
        _ => None,
    }
}

fn check_groups(st: &State, v: &mut Vec<String>) {
    let topo = &st.platform.topology;
    for group in topo.groups() {
        let Some(gs) = st.groups.get(group.id) else {
            v.push(format!("I1: group {} has no ownership state", group.id.0));
            continue;
        };
        let expected = match gs.owner {
            None => Some(st.groups.identity),
            Some(c) => match gs.hwpt {
                None => Some(st.groups.blocking),
                Some(h) => hwpt_domain(st, c, h),
            },
        };
        if gs.domain != expected {
            v.push(format!(
                "I1: group {} uses {:?}, expected {:?}",
                group.id.0, gs.domain, expected
            ));
        }
        let mut dma_drivers = 0;
        let mut claimed = 0;
        for dev in &group.devices {
            let Some(pdev) = topo.device(*dev) else {
                continue;
            };
            for rid in &pdev.rids {
                let ctx_dom = st.platform.iommu.context(*rid);
                if ctx_dom != expected {
                    v.push(format!(
                        "I1: {} ({}) rid {:#x} is translated by {:?}, its group by {:?}",
                        pdev.name, pdev.bdf, rid.0, ctx_dom, expected
                    ));
                }
            }
            if !st.platform.drivers.driver(*dev).driver_managed_dma() {
                dma_drivers += 1;
            }
            let holders: Vec<_> = st
                .ctxs
                .iter()
                .filter(|(_, c)| {
                    c.objects
                        .iter()
                        .any(|(_, o)| matches!(o, Object::Device(d) if d.dev == *dev))
                })
                .map(|(id, _)| *id)
                .collect();
            if holders.len() > 1 {
                v.push(format!(
                    "I2: {} is bound to {} contexts",
                    pdev.name,
                    holders.len()
                ));
            }
            for h in &holders {
                claimed += 1;
                if gs.owner != Some(*h) {
                    v.push(format!(
                        "I2: {} is bound to context {} but its group is owned by {:?}",
                        pdev.name, h.0, gs.owner
                    ));
                }
            }
        }
        if gs.owner.is_some() && dma_drivers > 0 {
            v.push(format!(
                "I2: group {} is owned by a context and has {dma_drivers} DMA-driver devices",
                group.id.0
            ));
        }
        if gs.owner_cnt != claimed + dma_drivers {
            v.push(format!(
                "I2: group {} counts {} users, but has {claimed} claimed devices and {dma_drivers} DMA-driver devices",
                group.id.0, gs.owner_cnt
            ));
        }
        for dev_obj in &gs.attached {
            if let Some(c) = gs.owner {
                match st.ctxs.get(&c).and_then(|c| c.objects.get(*dev_obj).ok()) {
                    Some(Object::Device(d)) if d.attached == gs.hwpt => {}
                    _ => v.push(format!(
                        "I1: device object {} in group {} disagrees with the group's HWPT",
                        dev_obj.0, group.id.0
                    )),
                }
            }
        }
    }
}

fn check_domains(st: &State, v: &mut Vec<String>) {
    let frames: &FrameTable = &st.platform.memory.frames;
    for (cid, ctx) in &st.ctxs {
        for (hid, obj) in ctx.objects.iter() {
            let Object::HwptPaging(h) = obj else { continue };
            let Ok(Object::Ioas(ioas)) = ctx.objects.get(h.ioas) else {
                v.push(format!(
                    "I3: HWPT {} of context {} has no IOAS",
                    hid.0, cid.0
                ));
                continue;
            };
            let Some(pt) = st.platform.iommu.page_table(h.domain) else {
                v.push(format!("I3: HWPT {} has no page table", hid.0));
                continue;
            };
            let areas = ioas.iopt.areas();
            let want: u64 = areas.iter().map(|a| a.iova.len()).sum();
            if pt.mapped_bytes() != want {
                v.push(format!(
                    "I3: HWPT {} maps {:#x} bytes, its IOAS {:#x}",
                    hid.0,
                    pt.mapped_bytes(),
                    want
                ));
            }
            for a in &areas {
                let pages = a.iova.len() / PAGE_SIZE;
                let step = (pages / SAMPLES_PER_AREA).max(1);
                let mut i = 0;
                while i < pages {
                    let iova = Iova(a.iova.start + i * PAGE_SIZE);
                    match pt.translate(iova) {
                        None => v.push(format!("I3: HWPT {} lacks mapped IOVA {iova}", hid.0)),
                        Some(t) => {
                            let uva = a.uva.raw() + i * PAGE_SIZE;
                            let ok = frames
                                .resolve(uiommu_platform::memory::Pfn(t.pa.raw() >> 12))
                                .is_some_and(|(sp, page)| {
                                    sp == a.space && page.raw() == uva & !(PAGE_SIZE - 1)
                                });
                            if !ok {
                                v.push(format!("I3: HWPT {} translates {iova} to {:?}, not to user page {uva:#x}", hid.0, t.pa));
                            }
                            if t.prot != a.prot {
                                v.push(format!(
                                    "I3: HWPT {} maps {iova} with {:?}, the IOAS with {:?}",
                                    hid.0, t.prot, a.prot
                                ));
                            }
                        }
                    }
                    i = if i + 1 == pages {
                        pages
                    } else {
                        (i + step).min(pages - 1)
                    };
                }
            }
        }
    }
}

fn check_iotlb(st: &State, v: &mut Vec<String>) {
    for (dom, iova) in st.platform.iommu.stale_iotlb_entries() {
        v.push(format!(
            "I3: the IOTLB still translates {iova} of domain {} differently from its page table",
            dom.0
        ));
    }
}

fn check_pins(st: &State, v: &mut Vec<String>) {
    let frames = &st.platform.memory.frames;
    // Pins held by pages objects, each pages object counted once even if shared by a copy.
    let mut per_pages: HashMap<
        usize,
        (
            u64,
            crate::pages::AccountMode,
            uiommu_platform::memory::SpaceId,
        ),
    > = HashMap::new();
    for ctx in st.ctxs.values() {
        for (_, obj) in ctx.objects.iter() {
            if let Object::Ioas(ioas) = obj {
                for a in ioas.iopt.areas() {
                    per_pages.insert(a.pages_id, (a.pages_pinned, a.account_mode, a.space));
                }
            }
        }
    }
    let held: u64 = per_pages.values().map(|p| p.0).sum();
    if frames.total_pins() != held {
        v.push(format!(
            "I4: the frame table holds {} pins, the pages objects {held}",
            frames.total_pins()
        ));
    }
    let user: u64 = per_pages
        .values()
        .filter(|p| p.1 == crate::pages::AccountMode::User)
        .map(|p| p.0)
        .sum();
    if st.acct.user_pages() != user {
        v.push(format!(
            "I4: {} pages charged to the user, {user} pinned in user mode",
            st.acct.user_pages()
        ));
    }
    if st.ctxs.is_empty() && (frames.total_pins() != 0 || st.acct.user_pages() != 0) {
        v.push("I4: no context is open but pins or charges remain".to_string());
    }
    // Held memory is memory of pinned frames only.
    let unpinned_held = st.platform.memory.unpinned_held();
    if unpinned_held != 0 {
        v.push(format!("I4: {unpinned_held} held frames are not pinned"));
    }
}

/// A comparable digest of everything a refused call must leave unchanged (for I5 tests).
pub(crate) fn snapshot(st: &State) -> String {
    let mut s = String::new();
    let mut ctxs: Vec<_> = st.ctxs.iter().collect();
    ctxs.sort_by_key(|(id, _)| **id);
    for (id, ctx) in ctxs {
        s += &format!(
            "ctx {} mode {:?} vfio {:?}\n",
            id.0, ctx.account_mode, ctx.vfio_ioas
        );
        for (oid, obj) in ctx.objects.iter() {
            s += &format!(
                "  obj {} users {} {:?}\n",
                oid.0,
                ctx.objects.users(oid),
                obj.kind()
            );
            if let Object::Ioas(i) = obj {
                for a in i.iopt.areas() {
                    s += &format!(
                        "    area {:?} {:?} {:?} pinned {}\n",
                        a.iova, a.uva, a.prot, a.pages_pinned
                    );
                }
            }
        }
    }
    let mut groups: Vec<_> = st.groups.iter().collect();
    groups.sort_by_key(|(g, _)| **g);
    for (g, gs) in groups {
        s += &format!("group {} {:?}\n", g.0, gs);
    }
    for dev in st.platform.topology.devices() {
        for rid in &dev.rids {
            s += &format!(
                "rid {:#x} -> {:?}\n",
                rid.0,
                st.platform.iommu.context(*rid)
            );
        }
        s += &format!(
            "driver {} {:?}\n",
            dev.name,
            st.platform.drivers.driver(dev.id)
        );
    }
    s += &format!(
        "pins {} user {}\n",
        st.platform.memory.frames.total_pins(),
        st.acct.user_pages()
    );
    s
}

impl crate::Engine {
    /// A digest of the engine's state: equal before and after a refused call (I5).
    pub fn snapshot(&self) -> String {
        self.with(|st| snapshot(st))
    }
}
