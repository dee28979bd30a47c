//! `uiommu topology --json`: a platform's PCI tree and IOMMU groups as JSON, for scripts.
//!
//! Keys (docs/platform.md): `devices: [{bdf, name, vendor, device, class, kind, model, driver,
//! group, parent, acs, multifunction, conventional, hotplug, dma_rid}]` in platform order
//! (`parent`: the upstream function's BDF or null; `driver`: the one bound at boot or null;
//! `dma_rid`: the requester id its DMA carries, as a BDF, when an alias's rather than its own),
//! and `groups: [{group, devices: [bdf]}]`.

use serde_json::{json, Value};
use uiommu_platform::topology::Topology;

fn rid_bdf(r: u32) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}.{}",
        r >> 16,
        (r >> 8) & 0xff,
        (r >> 3) & 0x1f,
        r & 7
    )
}

/// The JSON of `topo`.
pub fn json(topo: &Topology) -> Value {
    let bdf_of = |id| topo.device(id).map(|d| d.bdf.to_string());
    let devices: Vec<Value> = topo
        .devices()
        .map(|d| {
            let info = topo.info(d.id);
            let carried = d.rids.first().copied().filter(|&r| r != d.bdf.rid());
            json!({
                "bdf": d.bdf.to_string(),
                "name": d.name,
                "vendor": d.vendor,
                "device": d.device,
                "class": d.class,
                "kind": info.map(|i| i.kind.name()),
                "model": d.model.name(),
                "driver": d.boot_driver.name(),
                "group": d.group.0,
                "parent": info.and_then(|i| i.parent).and_then(bdf_of),
                "acs": info.is_some_and(|i| i.acs),
                "multifunction": info.is_some_and(|i| i.multifunction),
                "conventional": info.is_some_and(|i| i.conventional),
                "hotplug": info.is_some_and(|i| i.hotplug),
                "dma_rid": carried.map(|r| rid_bdf(r.0)),
            })
        })
        .collect();
    let groups: Vec<Value> = topo
        .groups()
        .map(|g| {
            json!({
                "group": g.id.0,
                "devices": g.devices.iter().filter_map(|&d| bdf_of(d)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"devices": devices, "groups": groups})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_platform_as_json_names_every_device_and_group() {
        let topo = Topology::builtin_default();
        let v = json(&topo);
        let devices = v["devices"].as_array().unwrap();
        assert_eq!(devices.len(), topo.devices().count());
        let d = devices
            .iter()
            .find(|d| d["bdf"] == "0000:01:00.0")
            .expect("0000:01:00.0");
        assert_eq!(d["driver"], "vfio-pci");
        assert!(d["parent"].is_string());
        // Every group lists its members, and each member's group agrees.
        for g in v["groups"].as_array().unwrap() {
            for b in g["devices"].as_array().unwrap() {
                let dev = devices.iter().find(|d| &d["bdf"] == b).unwrap();
                assert_eq!(dev["group"], g["group"]);
            }
        }
        // 0000:02:00.0 and .1 share a group (the built-in platform's multifunction pair).
        let g = |b: &str| devices.iter().find(|d| d["bdf"] == b).unwrap()["group"].clone();
        assert_eq!(g("0000:02:00.0"), g("0000:02:00.1"));
    }
}
