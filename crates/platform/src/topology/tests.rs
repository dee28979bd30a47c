//! The topology's tests: parsing, group derivation, bus numbering, the built-in default.

use super::*;

fn topo(text: &str) -> Topology {
    match Topology::from_toml(text) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

fn id(t: &Topology, name: &str) -> DeviceId {
    t.find_name(name).unwrap_or_else(|| panic!("no {name}"))
}

fn group_names(t: &Topology, name: &str) -> Vec<String> {
    let g = t.device(id(t, name)).unwrap().group;
    t.group(g)
        .unwrap()
        .devices
        .iter()
        .map(|&d| t.device(d).unwrap().name.clone())
        .collect()
}

fn together(t: &Topology, a: &str, b: &str) -> bool {
    t.device(id(t, a)).unwrap().group == t.device(id(t, b)).unwrap().group
}

fn err(text: &str) -> String {
    match Topology::from_toml(text) {
        Ok(t) => panic!("accepted:\n{}", t.describe()),
        Err(e) => e.to_string(),
    }
}

fn check_invariants(t: &Topology) {
    let mut seen = HashSet::new();
    for d in t.devices() {
        assert!(!d.rids.is_empty());
        let g = t.group(d.group).expect("group exists");
        assert!(g.devices.contains(&d.id));
        assert!(seen.insert(d.bdf));
    }
    for g in t.groups() {
        assert!(!g.devices.is_empty());
        assert!(g.devices.windows(2).all(|w| w[0] < w[1]));
        for &d in &g.devices {
            assert_eq!(t.device(d).unwrap().group, g.id);
        }
    }
}

const MF: &str = r#"
        [[function]]
        name = "rp"
        type = "root-port"
        address = "00:1c.0"
        acs = true
        [[function]]
        name = "f0"
        type = "endpoint"
        parent = "rp"
        address = "00.0"
        [[function]]
        name = "f1"
        type = "endpoint"
        parent = "rp"
        address = "00.1"
        [[function]]
        name = "g0"
        type = "endpoint"
        address = "00:1f.0"
        [[function]]
        name = "g1"
        type = "endpoint"
        address = "00:1f.1"
        acs = false
        [[function]]
        name = "h0"
        type = "endpoint"
        address = "00:1e.0"
        acs = true
        [[function]]
        name = "h1"
        type = "endpoint"
        address = "00:1e.1"
        acs = true
    "#;

#[test]
fn multifunction_without_acs_shares_a_group() {
    let t = topo(MF);
    check_invariants(&t);
    assert_eq!(group_names(&t, "f0"), ["f0", "f1"]);
    assert_eq!(group_names(&t, "g0"), ["g0", "g1"]);
    // With ACS on every function, the functions are isolated from each other.
    assert_eq!(group_names(&t, "h0"), ["h0"]);
    assert_eq!(group_names(&t, "h1"), ["h1"]);
    // The root port with ACS keeps the multifunction device away from itself.
    assert_eq!(group_names(&t, "rp"), ["rp"]);
    assert!(t.info(id(&t, "f1")).unwrap().multifunction);
}

#[test]
fn multifunction_flag_on_a_single_function_needs_acs_only_with_siblings() {
    let t = topo(
        r#"
            [[function]]
            name = "a"
            type = "endpoint"
            address = "00:02.0"
            multifunction = true
            [[function]]
            name = "b"
            type = "endpoint"
            address = "00:03.0"
            "#,
    );
    assert!(t.info(id(&t, "a")).unwrap().multifunction);
    assert!(!t.info(id(&t, "b")).unwrap().multifunction);
    assert!(!together(&t, "a", "b"));
}

#[test]
fn devices_behind_pcie_to_pci_bridge_alias_to_the_bridge() {
    let t = Topology::builtin_default();
    check_invariants(&t);
    assert_eq!(group_names(&t, "pcibr0"), ["pcibr0", "legacy0", "nvme0"]);
    let br = t.device(id(&t, "pcibr0")).unwrap();
    let sec = t.info(br.id).unwrap().secondary_bus.unwrap();
    // A PCIe-to-PCI bridge tags conventional DMA with its secondary bus and devfn 00.0.
    let alias = Rid((u32::from(sec)) << 8);
    for name in ["legacy0", "nvme0"] {
        let d = t.device(id(&t, name)).unwrap();
        assert_eq!(d.rids[0], alias, "{name} carries the bridge's alias");
        assert!(
            d.rids.contains(&d.bdf.rid()),
            "{name} own id is still an alias"
        );
        assert!(t.info(d.id).unwrap().conventional);
    }
    assert_eq!(br.rids, vec![br.bdf.rid()]);
    let mut on_alias: Vec<_> = t.find_rid(alias).collect();
    on_alias.sort();
    assert_eq!(on_alias, vec![id(&t, "legacy0"), id(&t, "nvme0")]);
}

#[test]
fn nested_conventional_bridges_alias_to_the_topmost_pcie_to_pci_bridge() {
    let t = topo(
        r#"
            [[function]]
            name = "rp"
            type = "root-port"
            address = "00:01.0"
            acs = true
            [[function]]
            name = "x"
            type = "pcie-to-pci-bridge"
            parent = "rp"
            [[function]]
            name = "y"
            type = "pci-bridge"
            parent = "x"
            address = "03.0"
            [[function]]
            name = "e"
            type = "endpoint"
            parent = "y"
            address = "04.0"
            [[function]]
            name = "other"
            type = "endpoint"
            address = "00:02.0"
            "#,
    );
    check_invariants(&t);
    assert_eq!(group_names(&t, "x"), ["x", "y", "e"]);
    let x = t.info(id(&t, "x")).unwrap().secondary_bus.unwrap();
    let e = t.device(id(&t, "e")).unwrap();
    assert_eq!(e.rids[0], Rid(u32::from(x) << 8));
    let y = t.device(id(&t, "y")).unwrap();
    assert!(e.rids.contains(&y.bdf.rid()));
    assert_eq!(group_names(&t, "other"), ["other"]);
}

const NO_ACS_ROOT: &str = r#"
        [[function]]
        name = "rp"
        type = "root-port"
        address = "00:01.0"
        acs = false
        [[function]]
        name = "usp"
        type = "upstream-port"
        parent = "rp"
        [[function]]
        name = "dsp0"
        type = "downstream-port"
        parent = "usp"
        address = "00.0"
        acs = true
        [[function]]
        name = "dsp1"
        type = "downstream-port"
        parent = "usp"
        address = "01.0"
        acs = true
        [[function]]
        name = "a"
        type = "endpoint"
        parent = "dsp0"
        model = "dma-engine"
        driver = "vfio-pci"
        [[function]]
        name = "b"
        type = "endpoint"
        parent = "dsp1"
        driver = "nvme"
        [[function]]
        name = "rp2"
        type = "root-port"
        address = "00:02.0"
        acs = true
        [[function]]
        name = "c"
        type = "endpoint"
        parent = "rp2"
    "#;

#[test]
fn root_port_without_acs_puts_everything_below_in_one_group() {
    let t = topo(NO_ACS_ROOT);
    check_invariants(&t);
    assert_eq!(
        group_names(&t, "rp"),
        ["rp", "usp", "dsp0", "dsp1", "a", "b"]
    );
    assert_eq!(group_names(&t, "c"), ["c"]);
    assert_eq!(group_names(&t, "rp2"), ["rp2"]);
    assert_eq!(t.groups().count(), 3);
}

#[test]
fn downstream_ports_with_acs_isolate() {
    let t = Topology::builtin_default();
    assert_eq!(group_names(&t, "nvme1"), ["nvme1"]);
    assert_eq!(group_names(&t, "nic0"), ["nic0"]);
    assert_eq!(group_names(&t, "dsp0"), ["dsp0"]);
    assert_eq!(group_names(&t, "usp0"), ["usp0"]);
    // Without ACS on a downstream port, its endpoint joins the port's group, and only it.
    let t = topo(&NO_ACS_ROOT.replace("acs = false", "acs = true").replacen(
        "address = \"01.0\"\n        acs = true",
        "address = \"01.0\"\n        acs = false",
        1,
    ));
    check_invariants(&t);
    assert_eq!(group_names(&t, "dsp1"), ["dsp1", "b"]);
    assert_eq!(group_names(&t, "a"), ["a"]);
    assert_eq!(group_names(&t, "dsp0"), ["dsp0"]);
    assert_eq!(group_names(&t, "usp"), ["usp"]);
}

#[test]
fn default_platform_groups_are_as_documented() {
    let t = Topology::builtin_default();
    check_invariants(&t);
    assert_eq!(t.len(), 18);
    assert_eq!(group_names(&t, "dma0"), ["dma0"]);
    // The emulated NVMe controller, alone below its root port, bound to vfio-pci.
    assert_eq!(group_names(&t, "ssd0"), ["ssd0"]);
    let ssd0 = t.device(id(&t, "ssd0")).unwrap();
    assert_eq!(ssd0.model.name(), "nvme");
    assert_eq!(ssd0.boot_driver, Driver::VfioPci);
    assert_eq!(
        (ssd0.vendor, ssd0.device, ssd0.class),
        (0x1b36, 0x0010, 0x010802)
    );
    assert_eq!(ssd0.bdf.to_string(), "0000:09:00.0");
    assert_eq!(group_names(&t, "dma1"), ["dma1", "dma2"]);
    let dma1 = t.device(id(&t, "dma1")).unwrap();
    assert_eq!(
        dma1.bdf,
        Bdf {
            segment: 0,
            bus: 2,
            device: 0,
            function: 0
        }
    );
    assert_eq!(dma1.model, ModelKind::from_name("dma-engine").unwrap());
    assert_eq!(dma1.boot_driver, Driver::VfioPci);
    let nvme0 = t.device(id(&t, "nvme0")).unwrap();
    assert_eq!(nvme0.boot_driver, Driver::Dma("nvme".into()));
    assert_eq!(nvme0.class, 0x010802);
    // Groups are numbered from 0 in platform order.
    let firsts: Vec<DeviceId> = t.groups().map(|g| g.devices[0]).collect();
    assert!(firsts.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(t.groups().next().unwrap().id, GroupId(0));
    assert_eq!(t.groups().count(), 15);
    let text = t.describe();
    assert!(text.contains("0000:00:03.0 rp2: root-port [ACS]"), "{text}");
    assert!(
        text.contains("\n    0000:04:01.0 legacy0: endpoint [conventional PCI]"),
        "{text}"
    );
    assert!(text.contains("DMA as 0000:04:00.0"), "{text}");
}

#[test]
fn default_toml_file_matches_builtin_default() {
    let file = include_str!("../../../../platforms/default.toml");
    let a = topo(file);
    let b = Topology::builtin_default();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.devices().zip(b.devices()) {
        assert_eq!(
            (
                x.id,
                x.bdf,
                &x.name,
                x.vendor,
                x.device,
                x.class,
                x.model,
                &x.boot_driver
            ),
            (
                y.id,
                y.bdf,
                &y.name,
                y.vendor,
                y.device,
                y.class,
                y.model,
                &y.boot_driver
            )
        );
        assert_eq!((&x.rids, x.group), (&y.rids, y.group));
        assert_eq!(a.info(x.id), b.info(y.id));
    }
    assert_eq!(
        a.groups().cloned().collect::<Vec<_>>(),
        b.groups().cloned().collect::<Vec<_>>()
    );
    assert_eq!(a.describe(), b.describe());
}

#[test]
fn explicit_groups_override_derivation() {
    let t = topo(
        r#"
            [[function]]
            name = "a"
            type = "endpoint"
            address = "00:01.0"
            [[function]]
            name = "b"
            type = "endpoint"
            address = "00:02.0"
            [[function]]
            name = "c"
            type = "endpoint"
            address = "00:03.0"
            [[group]]
            devices = ["c", "a"]
            [[group]]
            devices = ["b"]
            "#,
    );
    check_invariants(&t);
    assert_eq!(group_names(&t, "a"), ["a", "c"]);
    assert_eq!(t.device(id(&t, "a")).unwrap().group, GroupId(0));
    assert_eq!(group_names(&t, "b"), ["b"]);
    assert_eq!(t.device(id(&t, "b")).unwrap().group, GroupId(1));
}

#[test]
fn mock_devices_come_and_go_with_their_groups() {
    let mut t = Topology::builtin_default();
    let groups = t.groups().count();
    let m0 = t.add_mock_device();
    let m1 = t.add_mock_device();
    check_invariants(&t);
    let d0 = t.device(m0).unwrap().clone();
    let d1 = t.device(m1).unwrap().clone();
    assert_eq!(d0.model, ModelKind::Mock);
    assert_eq!(d0.boot_driver, Driver::VfioPci);
    assert!(d0.bdf.segment >= MOCK_SEGMENT_BASE);
    assert_ne!(d0.bdf, d1.bdf);
    assert_ne!(d0.group, d1.group);
    assert_eq!(t.group(d0.group).unwrap().devices, vec![m0]);
    assert_eq!(t.groups().count(), groups + 2);
    assert!(t.describe().contains("mock0"));
    assert!(t.remove_device(m0));
    assert!(!t.remove_device(m0));
    assert!(t.device(m0).is_none());
    assert!(t.group(d0.group).is_none());
    assert!(!t.remove_device(id(&t, "dma0")), "boot functions stay");
    let m2 = t.add_mock_device();
    assert!(m2 > m1, "device ids are not reused");
    assert!(
        t.device(m2).unwrap().group > d1.group,
        "group numbers are not reused"
    );
    check_invariants(&t);
}

#[test]
fn mock_devices_avoid_segments_of_the_platform_file() {
    let mut t = topo(
        r#"
            segment = 0x1000
            [[function]]
            name = "mock0"
            type = "endpoint"
            address = "00:00.0"
            "#,
    );
    let m = t.add_mock_device();
    let d = t.device(m).unwrap();
    assert_ne!(d.bdf.segment, 0x1000);
    assert_ne!(d.name, "mock0");
    check_invariants(&t);
}

#[test]
fn bus_numbers_follow_explicit_values_and_children_addresses() {
    let t = topo(
        r#"
            [[function]]
            name = "rp"
            type = "root-port"
            address = "00:01.0"
            secondary_bus = 0x10
            [[function]]
            name = "e"
            type = "endpoint"
            parent = "rp"
            [[function]]
            name = "rp2"
            type = "root-port"
            address = "00:02.0"
            [[function]]
            name = "e2"
            type = "endpoint"
            parent = "rp2"
            address = "0000:20:00.0"
            [[function]]
            name = "rp3"
            type = "root-port"
            address = "00:03.0"
            "#,
    );
    assert_eq!(t.device(id(&t, "e")).unwrap().bdf.bus, 0x10);
    assert_eq!(t.device(id(&t, "e2")).unwrap().bdf.bus, 0x20);
    assert_eq!(t.info(id(&t, "rp3")).unwrap().secondary_bus, Some(1));
}

#[test]
fn bad_files_are_refused_with_clear_errors() {
    let ep = |name: &str, addr: &str| {
        format!("[[function]]\nname = \"{name}\"\ntype = \"endpoint\"\naddress = \"{addr}\"\n")
    };
    let e = err(&format!("{}{}", ep("a", "00:01.0"), ep("b", "00:01.0")));
    assert!(e.contains("a and b are both at 0000:00:01.0"), "{e}");
    let e = err(&format!("{}{}", ep("a", "00:01.0"), ep("a", "00:02.0")));
    assert!(e.contains("two functions are named \"a\""), "{e}");
    let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nparent = \"nope\"\n");
    assert!(e.contains("unknown parent \"nope\""), "{e}");
    let e = err("[[function]]\nname = \"a\"\ntype = \"router\"\n");
    assert!(e.contains("unknown variant `router`"), "{e}");
    let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nmodel = \"gpu\"\n");
    assert!(
        e.contains("a: unknown model \"gpu\" (known: dma-engine") && e.contains("generic)"),
        "{e}"
    );
    let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nmodel = \"generic\"\noptions = { x = 1 }\n");
    assert!(e.contains("a: model \"generic\" takes no options"), "{e}");
    let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nmodel = \"dma-engine\"\noptions = { x = 1 }\n");
    assert!(
        e.contains("a: model dma-engine: unknown option \"x\" (it takes none)"),
        "{e}"
    );
    let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\ncolour = 1\n");
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nvendor = 70000\n");
    assert!(e.starts_with("platform file:"), "{e}");
    let e = err(&ep("a", "00:20.0"));
    assert!(e.contains("bad address"), "{e}");
    let e = err(&ep("a", "00:01.8"));
    assert!(e.contains("bad address"), "{e}");
    let e = err(&ep("a", "zz:01.0"));
    assert!(e.contains("bad address"), "{e}");
    let e = err(&ep("a", "05:01.0"));
    assert!(e.contains("root bus"), "{e}");
    let e = err(&ep("a", "00:01.1"));
    assert!(e.contains("no function 0"), "{e}");
    let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nclass = 0x1000000\n");
    assert!(e.contains("24 bits"), "{e}");
    let e = err("[[function]]\nname = \"bad name\"\ntype = \"endpoint\"\n");
    assert!(e.contains("function name"), "{e}");
    let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\ndriver = \"../x\"\n");
    assert!(e.contains("bad driver name"), "{e}");
    let e = err("[[function]]\nname = \"a\"\ntype = \"root-port\"\nmodel = \"dma-engine\"\n");
    assert!(e.contains("only have model \"generic\""), "{e}");
    let e = err("[[function]]\nname = \"a\"\ntype = \"endpoint\"\nsecondary_bus = 3\n");
    assert!(e.contains("secondary_bus is only for bridges"), "{e}");
    let e = err("this is = not toml [");
    assert!(e.starts_with("platform file:"), "{e}");
}

#[test]
fn bad_trees_are_refused() {
    // A downstream port directly on a root port.
    let e = err(
        "[[function]]\nname = \"rp\"\ntype = \"root-port\"\naddress = \"00:01.0\"\n\
             [[function]]\nname = \"d\"\ntype = \"downstream-port\"\nparent = \"rp\"\n",
    );
    assert!(e.contains("must have as parent an upstream-port"), "{e}");
    // Endpoints have no children.
    let e = err(
        "[[function]]\nname = \"a\"\ntype = \"endpoint\"\naddress = \"00:01.0\"\n\
             [[function]]\nname = \"b\"\ntype = \"endpoint\"\nparent = \"a\"\n",
    );
    assert!(e.contains("must have as parent"), "{e}");
    // A loop between an upstream and a downstream port.
    let e = err(
        "[[function]]\nname = \"u\"\ntype = \"upstream-port\"\nparent = \"d\"\n\
             [[function]]\nname = \"d\"\ntype = \"downstream-port\"\nparent = \"u\"\n",
    );
    assert!(e.contains("loops"), "{e}");
    // Only device 0 below a root port.
    let e = err(
            "[[function]]\nname = \"rp\"\ntype = \"root-port\"\naddress = \"00:01.0\"\n\
             [[function]]\nname = \"e\"\ntype = \"endpoint\"\nparent = \"rp\"\naddress = \"03.0\"\n",
        );
    assert!(e.contains("only device 00"), "{e}");
    // Conventional PCI has no ACS.
    let e = err(
        "[[function]]\nname = \"b\"\ntype = \"pcie-to-pci-bridge\"\naddress = \"00:01.0\"\n\
             [[function]]\nname = \"e\"\ntype = \"endpoint\"\nparent = \"b\"\nacs = true\n",
    );
    assert!(
        e.contains("conventional PCI endpoint cannot have ACS"),
        "{e}"
    );
    // Two bridges on one secondary bus.
    let e = err(
            "[[function]]\nname = \"r1\"\ntype = \"root-port\"\naddress = \"00:01.0\"\nsecondary_bus = 4\n\
             [[function]]\nname = \"r2\"\ntype = \"root-port\"\naddress = \"00:02.0\"\nsecondary_bus = 4\n",
        );
    assert!(e.contains("both claim secondary bus 04"), "{e}");
    // A child's bus that contradicts its parent.
    let e = err(
            "[[function]]\nname = \"r1\"\ntype = \"root-port\"\naddress = \"00:01.0\"\nsecondary_bus = 4\n\
             [[function]]\nname = \"e\"\ntype = \"endpoint\"\nparent = \"r1\"\naddress = \"05:00.0\"\n",
        );
    assert!(e.contains("has secondary bus 04"), "{e}");
    // Explicit groups must cover every function once, and not split aliases.
    let two = "[[function]]\nname = \"a\"\ntype = \"endpoint\"\naddress = \"00:01.0\"\n\
                   [[function]]\nname = \"b\"\ntype = \"endpoint\"\naddress = \"00:02.0\"\n";
    let e = err(&format!("{two}[[group]]\ndevices = [\"a\"]\n"));
    assert!(e.contains("b is in none"), "{e}");
    let e = err(&format!(
        "{two}[[group]]\ndevices = [\"a\", \"b\"]\n[[group]]\ndevices = [\"a\"]\n"
    ));
    assert!(e.contains("more than one group"), "{e}");
    let e = err(&format!("{two}[[group]]\ndevices = [\"a\", \"zz\"]\n"));
    assert!(e.contains("unknown function \"zz\""), "{e}");
    let e = err(
        "[[function]]\nname = \"b\"\ntype = \"pcie-to-pci-bridge\"\naddress = \"00:01.0\"\n\
             [[function]]\nname = \"e\"\ntype = \"endpoint\"\nparent = \"b\"\n\
             [[function]]\nname = \"f\"\ntype = \"endpoint\"\nparent = \"b\"\naddress = \"01.0\"\n\
             [[group]]\ndevices = [\"b\", \"e\"]\n[[group]]\ndevices = [\"f\"]\n",
    );
    assert!(e.contains("share requester id"), "{e}");
}

#[test]
fn describe_prints_the_default_platform() {
    // `cargo test -p uiommu-platform --lib describe_prints -- --nocapture` shows the tree.
    let text = Topology::builtin_default().describe();
    println!("{text}");
    assert_eq!(text.lines().count(), 18);
}

#[test]
fn deeply_nested_toml_is_an_error_not_a_crash() {
    for text in [
        format!("a = {}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!("x = {}1{}", "{a=".repeat(5_000), "}".repeat(5_000)),
        format!(
            "[[function]]\nname = \"{}\"\ntype = \"endpoint\"\n",
            "n".repeat(100_000)
        ),
    ] {
        assert!(Topology::from_toml(&text).is_err());
    }
}

#[test]
fn the_empty_file_is_an_empty_platform() {
    let t = topo("");
    assert!(t.is_empty());
    assert_eq!(t.describe(), "");
}

#[test]
fn arbitrary_text_never_panics() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::default();
    let fragments = prop::sample::select(vec![
        "[[function]]\n",
        "name = \"a\"\n",
        "name = \"b\"\n",
        "type = \"root-port\"\n",
        "type = \"endpoint\"\n",
        "type = \"upstream-port\"\n",
        "type = \"downstream-port\"\n",
        "type = \"pcie-to-pci-bridge\"\n",
        "type = \"pci-bridge\"\n",
        "parent = \"a\"\n",
        "parent = \"b\"\n",
        "address = \"00.1\"\n",
        "address = \"01:00.0\"\n",
        "secondary_bus = 1\n",
        "secondary_bus = 255\n",
        "acs = true\n",
        "multifunction = true\n",
        "[[group]]\ndevices = [\"a\"]\n",
        "model = \"dma-engine\"\n",
    ]);
    runner
        .run(&prop::collection::vec(fragments, 0..24), |parts| {
            let text: String = parts.concat();
            if let Ok(t) = Topology::from_toml(&text) {
                check_invariants(&t);
                let _ = t.describe();
            }
            Ok(())
        })
        .unwrap();
}
