//! IOMMU group derivation as Linux's `pci_device_group` does it: DMA aliases through
//! conventional-PCI bridges, ACS along the path to the root, multifunction siblings without ACS.

use super::FunctionKind;
use crate::ids::{rid_of, Rid};
use std::collections::HashMap;

/// A union-find over function indices.
struct UnionFind(Vec<usize>);

impl UnionFind {
    fn new(n: usize) -> UnionFind {
        UnionFind((0..n).collect())
    }
    fn find(&mut self, mut x: usize) -> usize {
        let mut root = x;
        while self.0[root] != root {
            root = self.0[root];
        }
        while self.0[x] != root {
            let next = self.0[x];
            self.0[x] = root;
            x = next;
        }
        root
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // Keep the earlier function as the root: it names the group.
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.0[hi] = lo;
        }
    }
}

/// The isolation facts of one function, as group derivation needs them.
#[derive(Copy, Clone, Debug)]
pub(super) struct Iso {
    pub(super) kind: FunctionKind,
    pub(super) parent: Option<usize>,
    pub(super) acs: bool,
    pub(super) multifunction: bool,
    pub(super) conventional: bool,
    pub(super) segment: u16,
    pub(super) bus: u8,
    pub(super) devfn: u8,
    pub(super) secondary: Option<u8>,
}

impl Iso {
    /// Linux's `pci_acs_enabled(dev, REQ_ACS_FLAGS)`.
    fn acs_enabled(&self) -> bool {
        use FunctionKind::*;
        if self.conventional {
            return false;
        }
        match self.kind {
            PcieToPciBridge | PciBridge => false,
            RootPort | DownstreamPort => self.acs,
            HostBridge | Endpoint | UpstreamPort => !self.multifunction || self.acs,
        }
    }
}

/// Linux's `pci_acs_path_enabled(start, NULL, REQ_ACS_FLAGS)`: ACS on `start` and everything
/// above it up to the root bus. Parent chains are acyclic (checked before).
fn acs_path_enabled(isos: &[Iso], start: usize) -> bool {
    let mut cur = start;
    for _ in 0..=isos.len() {
        let Some(iso) = isos.get(cur) else {
            return false;
        };
        if !iso.acs_enabled() {
            return false;
        }
        match iso.parent {
            None => return true,
            Some(p) => cur = p,
        }
    }
    false
}

/// Requester ids and group classes for functions given in platform order (parents first).
/// Returns, per function, its rids (carried first) and the index of the first function of its
/// group.
pub(super) fn derive(isos: &[Iso]) -> (Vec<Vec<Rid>>, Vec<usize>) {
    let n = isos.len();
    let mut uf = UnionFind::new(n);
    let mut all_rids = Vec::with_capacity(n);
    // Functions by (parent, device number), for the multifunction sibling rule.
    let mut slots: HashMap<(Option<usize>, u16, u8, u8), Vec<usize>> = HashMap::new();
    for (i, iso) in isos.iter().enumerate() {
        slots
            .entry((iso.parent, iso.segment, iso.bus, iso.devfn >> 3))
            .or_default()
            .push(i);
    }
    for (d, iso) in isos.iter().enumerate() {
        // 1. DMA aliases (pci_for_each_dma_alias): each aliasing bridge on the way up rewrites
        //    the requester id; the function shares the group of every such bridge.
        let mut rids = vec![rid_of(iso.segment, iso.bus, iso.devfn)];
        let mut top = d;
        let mut cur = iso.parent;
        let mut steps = 0;
        while let Some(b) = cur {
            steps += 1;
            let Some(bridge) = isos.get(b) else { break };
            if steps > n {
                break;
            }
            match bridge.kind {
                FunctionKind::PcieToPciBridge => {
                    rids.push(rid_of(bridge.segment, bridge.secondary.unwrap_or(0), 0));
                    uf.union(d, b);
                    top = b;
                }
                FunctionKind::PciBridge => {
                    rids.push(rid_of(bridge.segment, bridge.bus, bridge.devfn));
                    uf.union(d, b);
                    top = b;
                }
                _ => {}
            }
            cur = bridge.parent;
        }
        // The id the topmost aliasing bridge gives the DMA is what the IOMMU sees.
        let carried = rids.last().copied().unwrap_or(Rid(u32::MAX));
        let mut ordered = vec![carried];
        for r in rids {
            if !ordered.contains(&r) {
                ordered.push(r);
            }
        }
        all_rids.push(ordered);

        // 2. Upstream from there to the first bridge whose path to the root has ACS.
        let mut a = top;
        for _ in 0..=n {
            let Some(p) = isos.get(a).and_then(|x| x.parent) else {
                break;
            };
            if acs_path_enabled(isos, p) {
                break;
            }
            uf.union(a, p);
            a = p;
        }

        // 3. Multifunction siblings without ACS (get_pci_function_alias_group).
        if let Some(ai) = isos.get(a) {
            if ai.multifunction && !ai.acs_enabled() {
                let key = (ai.parent, ai.segment, ai.bus, ai.devfn >> 3);
                if let Some(sibs) = slots.get(&key) {
                    for &s in sibs {
                        if s != a && isos.get(s).is_some_and(|x| !x.acs_enabled()) {
                            uf.union(a, s);
                        }
                    }
                }
            }
        }
    }
    let classes = (0..n).map(|i| uf.find(i)).collect();
    (all_rids, classes)
}
