//! Building a [`Topology`] from a parsed platform file: names, parents, addresses and bus
//! numbers checked and assigned, groups derived (or taken from `[[group]]` tables), models and
//! their options checked.

use super::default::default_ids;
use super::groups::{derive, Iso};
use super::schema::{
    allowed_parents, parent_allowed, parse_address, valid_name, Address, FileSpec, FunctionSpec,
    GroupSpec,
};
use super::{
    invalid, Bdf, DeviceId, FunctionInfo, FunctionKind, Group, GroupId, ModelKind, Node, PciDevice,
    Topology, TopologyError,
};
use crate::drivers::Driver;
use crate::hw::Rid;
use std::collections::{BTreeMap, HashMap};

/// A function being built from a spec (indices refer to the spec's function list).
#[derive(Clone, Debug)]
struct Build {
    spec: FunctionSpec,
    parent: Option<usize>,
    addr: Address,
    secondary: Option<u8>,
    bus: u8,
    conventional: bool,
    multifunction: bool,
}

impl Topology {
    pub(super) fn from_spec(spec: FileSpec) -> Result<Topology, TopologyError> {
        let seg = spec.segment;
        let n = spec.functions.len();
        if n > 0x1_0000 {
            return invalid(format!("{n} functions: a segment holds at most 65536"));
        }
        // Names.
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, f) in spec.functions.iter().enumerate() {
            if !valid_name(&f.name) {
                return invalid(format!(
                    "function name {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
                    f.name
                ));
            }
            if by_name.insert(f.name.as_str(), i).is_some() {
                return invalid(format!("two functions are named {:?}", f.name));
            }
        }
        // Parents, addresses, per-function checks.
        let mut builds = Vec::with_capacity(n);
        for f in &spec.functions {
            let parent = match &f.parent {
                None => None,
                Some(p) => match by_name.get(p.as_str()) {
                    Some(&i) => Some(i),
                    None => return invalid(format!("{}: unknown parent {:?}", f.name, p)),
                },
            };
            let addr = match &f.address {
                None => Address {
                    segment: None,
                    bus: None,
                    device: 0,
                    function: 0,
                },
                Some(a) => match parse_address(a) {
                    Some(a) => a,
                    None => {
                        return invalid(format!(
                            "{}: bad address {:?} (want [[segment:]bus:]device.function in hex, \
                             device < 20, function < 8)",
                            f.name, a
                        ))
                    }
                },
            };
            if let Some(s) = addr.segment {
                if s != seg {
                    return invalid(format!(
                        "{}: address segment {s:04x} differs from the file's segment {seg:04x}",
                        f.name
                    ));
                }
            }
            if f.secondary_bus.is_some() && !f.kind.is_bridge() {
                return invalid(format!(
                    "{}: secondary_bus is only for bridges and ports, not a {}",
                    f.name,
                    f.kind.name()
                ));
            }
            if let Some(c) = f.class {
                if c > 0xff_ff_ff {
                    return invalid(format!("{}: class {c:#x} is wider than 24 bits", f.name));
                }
            }
            let model = match f.model.as_deref() {
                None => ModelKind::Generic,
                Some(m) => match ModelKind::from_name(m) {
                    Some(k) => k,
                    None => {
                        return invalid(format!(
                            "{}: unknown model {m:?} (known: {})",
                            f.name,
                            known_models()
                        ))
                    }
                },
            };
            match (model, &f.options) {
                (ModelKind::Emulated(t), options) => {
                    let empty = toml::Table::new();
                    if let Err(e) = (t.check)(options.as_ref().unwrap_or(&empty)) {
                        return invalid(format!("{}: model {}: {e}", f.name, t.name));
                    }
                }
                (_, Some(_)) => {
                    return invalid(format!(
                        "{}: model {:?} takes no options",
                        f.name,
                        model.name()
                    ))
                }
                (_, None) => {}
            }
            if f.kind != FunctionKind::Endpoint && model != ModelKind::Generic {
                return invalid(format!(
                    "{}: a {} can only have model \"generic\", not {:?}",
                    f.name,
                    f.kind.name(),
                    model.name()
                ));
            }
            if let Some(d) = &f.driver {
                let ok = d.len() <= 64
                    && d.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !ok {
                    return invalid(format!("{}: bad driver name {:?}", f.name, d));
                }
            }
            builds.push(Build {
                spec: f.clone(),
                parent,
                addr,
                secondary: f.secondary_bus,
                bus: 0,
                conventional: false,
                multifunction: f.multifunction,
            });
        }
        // Parent kinds, then acyclicity.
        for b in &builds {
            let pk = b.parent.and_then(|p| builds.get(p)).map(|p| p.spec.kind);
            if !parent_allowed(b.spec.kind, pk) {
                let got = match (b.parent, pk) {
                    (Some(p), Some(k)) => {
                        format!(
                            "{} ({})",
                            builds.get(p).map_or("?", |x| x.spec.name.as_str()),
                            k.name()
                        )
                    }
                    _ => "the root bus".to_string(),
                };
                return invalid(format!(
                    "{}: a {} must have as parent {}, not {}",
                    b.spec.name,
                    b.spec.kind.name(),
                    allowed_parents(b.spec.kind),
                    got
                ));
            }
        }
        for (i, b) in builds.iter().enumerate() {
            let mut cur = b.parent;
            let mut depth = 0usize;
            while let Some(p) = cur {
                depth += 1;
                if p == i || depth > 256 {
                    return invalid(format!(
                        "{}: its parent chain loops or is deeper than 255 bridges",
                        b.spec.name
                    ));
                }
                cur = builds.get(p).and_then(|x| x.parent);
            }
        }
        // Conventional PCI: anything below a PCIe-to-PCI or PCI bridge (parents have no cycles).
        for i in 0..n {
            let mut cur = builds.get(i).and_then(|b| b.parent);
            let mut conv = false;
            while let Some(p) = cur {
                let Some(pb) = builds.get(p) else { break };
                if matches!(
                    pb.spec.kind,
                    FunctionKind::PcieToPciBridge | FunctionKind::PciBridge
                ) {
                    conv = true;
                    break;
                }
                cur = pb.parent;
            }
            if let Some(b) = builds.get_mut(i) {
                b.conventional = conv;
            }
        }
        for b in &builds {
            let no_acs = b.conventional
                || matches!(
                    b.spec.kind,
                    FunctionKind::PcieToPciBridge | FunctionKind::PciBridge
                );
            if no_acs && b.spec.acs == Some(true) {
                return invalid(format!(
                    "{}: a {}{} cannot have ACS",
                    b.spec.name,
                    if b.conventional {
                        "conventional PCI "
                    } else {
                        ""
                    },
                    b.spec.kind.name()
                ));
            }
        }
        assign_buses(&mut builds)?;
        // Addresses must be unique; PCIe links carry device 0 only; slots need function 0.
        let mut by_bdf: HashMap<Bdf, usize> = HashMap::new();
        let mut slots: BTreeMap<(u8, u8), Vec<usize>> = BTreeMap::new();
        for (i, b) in builds.iter().enumerate() {
            let bdf = Bdf {
                segment: seg,
                bus: b.bus,
                device: b.addr.device,
                function: b.addr.function,
            };
            if let Some(&j) = by_bdf.get(&bdf) {
                let other = builds.get(j).map_or("?", |x| x.spec.name.as_str());
                return invalid(format!("{} and {} are both at {bdf}", other, b.spec.name));
            }
            by_bdf.insert(bdf, i);
            slots.entry((b.bus, b.addr.device)).or_default().push(i);
            let pk = b.parent.and_then(|p| builds.get(p)).map(|p| p.spec.kind);
            if matches!(
                pk,
                Some(FunctionKind::RootPort | FunctionKind::DownstreamPort)
            ) && b.addr.device != 0
            {
                return invalid(format!(
                    "{}: below a PCIe root or downstream port only device 00 exists, not {:02x}",
                    b.spec.name, b.addr.device
                ));
            }
        }
        for ((bus, dev), members) in &slots {
            let has_fn0 = members
                .iter()
                .any(|&i| builds.get(i).is_some_and(|b| b.addr.function == 0));
            if !has_fn0 {
                return invalid(format!(
                    "slot {seg:04x}:{bus:02x}:{dev:02x} has functions but no function 0"
                ));
            }
            let multi = members.len() > 1
                || members
                    .iter()
                    .any(|&i| builds.get(i).is_some_and(|b| b.multifunction));
            for &i in members {
                if let Some(b) = builds.get_mut(i) {
                    b.multifunction = multi;
                }
            }
        }
        // Platform order: by address (parents come first: secondary bus > own bus).
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| {
            builds
                .get(i)
                .map(|b| (b.bus, b.addr.device, b.addr.function))
        });
        let mut pos = vec![0usize; n];
        for (p, &i) in order.iter().enumerate() {
            if let Some(slot) = pos.get_mut(i) {
                *slot = p;
            }
        }
        let mut isos = Vec::with_capacity(n);
        for &i in &order {
            let Some(b) = builds.get(i) else { continue };
            isos.push(Iso {
                kind: b.spec.kind,
                parent: b.parent.and_then(|p| pos.get(p).copied()),
                acs: b.spec.acs.unwrap_or(false),
                multifunction: b.multifunction,
                conventional: b.conventional,
                segment: seg,
                bus: b.bus,
                devfn: (b.addr.device << 3) | b.addr.function,
                secondary: b.secondary,
            });
        }
        let (rids, mut classes) = derive(&isos);
        if !spec.groups.is_empty() {
            classes = explicit_classes(&spec.groups, &by_name, &pos, n)?;
            // Functions that can carry the same requester id cannot be isolated from each other.
            let mut carried: HashMap<Rid, usize> = HashMap::new();
            for (p, r) in rids.iter().enumerate() {
                for rid in r {
                    if let Some(&q) = carried.get(rid) {
                        if classes.get(q) != classes.get(p) {
                            let name = |x: usize| {
                                order
                                    .get(x)
                                    .and_then(|&i| builds.get(i))
                                    .map_or("?", |b| b.spec.name.as_str())
                            };
                            return invalid(format!(
                                "explicit groups split {} and {}, which share requester id {:#x}",
                                name(q),
                                name(p),
                                rid.0
                            ));
                        }
                    } else {
                        carried.insert(*rid, p);
                    }
                }
            }
        }
        // Build the topology: group numbers in order of each group's first function.
        let mut topo = Topology::empty();
        let mut group_of_class: HashMap<usize, GroupId> = HashMap::new();
        for (p, &i) in order.iter().enumerate() {
            let (Some(b), Some(iso)) = (builds.get(i), isos.get(p)) else {
                continue;
            };
            let class = classes.get(p).copied().unwrap_or(p);
            let next = GroupId(group_of_class.len() as u32);
            let gid = *group_of_class.entry(class).or_insert(next);
            let id = DeviceId(p as u32);
            let model = b
                .spec
                .model
                .as_deref()
                .and_then(ModelKind::from_name)
                .unwrap_or(ModelKind::Generic);
            let (dv, dd, dc) = default_ids(b.spec.kind, model);
            let dev = PciDevice {
                id,
                bdf: Bdf {
                    segment: seg,
                    bus: b.bus,
                    device: b.addr.device,
                    function: b.addr.function,
                },
                name: b.spec.name.clone(),
                vendor: b.spec.vendor.unwrap_or(dv),
                device: b.spec.device.unwrap_or(dd),
                class: b.spec.class.unwrap_or(dc),
                model,
                boot_driver: Driver::from_name(b.spec.driver.as_deref().unwrap_or("none")),
                rids: rids.get(p).cloned().unwrap_or_default(),
                group: gid,
                options: b.spec.options.clone().unwrap_or_default(),
            };
            let info = FunctionInfo {
                kind: iso.kind,
                parent: iso.parent.map(|q| DeviceId(q as u32)),
                acs: iso.acs,
                multifunction: iso.multifunction,
                conventional: iso.conventional,
                secondary_bus: iso.secondary,
                hotplug: false,
            };
            topo.groups
                .entry(gid)
                .or_insert_with(|| Group {
                    id: gid,
                    devices: Vec::new(),
                })
                .devices
                .push(id);
            topo.nodes.insert(id, Node { dev, info });
        }
        topo.next_device = n as u32;
        topo.next_group = group_of_class.len() as u32;
        Ok(topo)
    }
}

/// Group classes from `[[group]]` tables: per function (platform position), the position of
/// the first function of its group.
fn explicit_classes(
    groups: &[GroupSpec],
    by_name: &HashMap<&str, usize>,
    pos: &[usize],
    n: usize,
) -> Result<Vec<usize>, TopologyError> {
    let mut class: Vec<Option<usize>> = vec![None; n];
    for (gi, g) in groups.iter().enumerate() {
        if g.devices.is_empty() {
            return invalid(format!(
                "group #{} (in file order) lists no devices",
                gi + 1
            ));
        }
        let mut members = Vec::new();
        for name in &g.devices {
            let Some(&i) = by_name.get(name.as_str()) else {
                return invalid(format!(
                    "group #{} lists unknown function {:?}",
                    gi + 1,
                    name
                ));
            };
            let Some(&p) = pos.get(i) else {
                return invalid("internal: bad position");
            };
            if class.get(p).copied().flatten().is_some() || members.contains(&p) {
                return invalid(format!("{name} is listed in more than one group"));
            }
            members.push(p);
        }
        let first = members.iter().copied().min().unwrap_or(0);
        for p in members {
            if let Some(c) = class.get_mut(p) {
                *c = Some(first);
            }
        }
    }
    let mut out = Vec::with_capacity(n);
    for (p, c) in class.into_iter().enumerate() {
        match c {
            Some(c) => out.push(c),
            None => {
                let name = by_name
                    .iter()
                    .find(|(_, &i)| pos.get(i) == Some(&p))
                    .map_or("?", |(k, _)| *k);
                return invalid(format!(
                    "explicit groups are given but {name} is in none (list every function)"
                ));
            }
        }
    }
    Ok(out)
}

/// Give every function its bus number and every bridge its secondary bus number.
///
/// Explicit `secondary_bus` values and buses given in children's addresses are taken as they
/// are (and must agree); the rest are numbered depth-first in address order, like a firmware
/// enumeration, with the next free number above the bridge's own bus.
fn assign_buses(builds: &mut [Build]) -> Result<(), TopologyError> {
    let n = builds.len();
    let mut used = [false; 256];
    used[0] = true;
    let mut owner: HashMap<u8, usize> = HashMap::new();
    for (i, b) in builds.iter().enumerate() {
        if let Some(s) = b.secondary {
            if s == 0 {
                return invalid(format!("{}: secondary bus 00 is the root bus", b.spec.name));
            }
            if let Some(&j) = owner.get(&s) {
                let other = builds.get(j).map_or("?", |x| x.spec.name.as_str());
                return invalid(format!(
                    "{} and {} both claim secondary bus {s:02x}",
                    other, b.spec.name
                ));
            }
            owner.insert(s, i);
            used[usize::from(s)] = true;
        }
    }
    // Buses given in addresses fix (or must match) the parent's secondary bus.
    for i in 0..n {
        let Some(b) = builds.get(i) else { continue };
        let Some(bus) = b.addr.bus else { continue };
        let name = b.spec.name.clone();
        match b.parent {
            None => {
                if bus != 0 {
                    return invalid(format!(
                        "{name}: has no parent, so it is on the root bus 00, not {bus:02x}"
                    ));
                }
            }
            Some(p) => {
                let Some(pb) = builds.get(p) else { continue };
                match pb.secondary {
                    Some(s) if s == bus => {}
                    Some(s) => {
                        let parent = &pb.spec.name;
                        return invalid(format!(
                            "{name}: bus {bus:02x}, but {parent} has secondary bus {s:02x}"
                        ));
                    }
                    None => {
                        if bus == 0 {
                            return invalid(format!(
                                "{name}: bus 00 is the root bus, not below {}",
                                pb.spec.name
                            ));
                        }
                        if let Some(&j) = owner.get(&bus) {
                            let other = builds.get(j).map_or("?", |x| x.spec.name.as_str());
                            return invalid(format!(
                                "{name}: bus {bus:02x} is already the secondary bus of {other}"
                            ));
                        }
                        owner.insert(bus, p);
                        used[usize::from(bus)] = true;
                        if let Some(pb) = builds.get_mut(p) {
                            pb.secondary = Some(bus);
                        }
                    }
                }
            }
        }
    }
    // Children lists by address within their bus.
    let mut kids: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
    for (i, b) in builds.iter().enumerate() {
        kids.entry(b.parent).or_default().push(i);
    }
    for list in kids.values_mut() {
        list.sort_by_key(|&i| builds.get(i).map(|b| (b.addr.device, b.addr.function)));
    }
    let mut next: usize = 1;
    let mut stack: Vec<(usize, u8)> = Vec::new();
    if let Some(roots) = kids.get(&None) {
        stack.extend(roots.iter().rev().map(|&i| (i, 0u8)));
    }
    let mut visited = 0usize;
    while let Some((i, bus)) = stack.pop() {
        visited += 1;
        if visited > n {
            return invalid("internal: bus walk visited a function twice");
        }
        let Some(b) = builds.get_mut(i) else { continue };
        b.bus = bus;
        if !b.spec.kind.is_bridge() {
            continue;
        }
        let sec = match b.secondary {
            Some(s) => s,
            None => {
                let mut cand = next.max(usize::from(bus) + 1);
                while cand < 256 && used[cand] {
                    cand += 1;
                }
                if cand >= 256 {
                    return invalid(format!("{}: out of bus numbers", b.spec.name));
                }
                used[cand] = true;
                next = cand + 1;
                b.secondary = Some(cand as u8);
                cand as u8
            }
        };
        if sec <= bus {
            return invalid(format!(
                "{}: secondary bus {sec:02x} must be above its own bus {bus:02x}",
                b.spec.name
            ));
        }
        if let Some(list) = kids.get(&Some(i)) {
            stack.extend(list.iter().rev().map(|&k| (k, sec)));
        }
    }
    if visited != n {
        return invalid("internal: some functions are not reachable from the root bus");
    }
    Ok(())
}

/// The model names a platform file may use, for error messages.
fn known_models() -> String {
    let mut names: Vec<&str> = crate::devices::MODELS.iter().map(|t| t.name).collect();
    names.extend(["mock", "generic"]);
    names.join(", ")
}
