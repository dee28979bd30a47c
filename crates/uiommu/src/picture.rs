//! `uiommu topology --svg FILE` and `uiommu status --svg FILE`: a picture of the machine.
//!
//! Left, the PCI tree as `topology` prints it (each function's address, name, kind, model,
//! driver and group). Right, one box per IOMMU group with its functions and their drivers; for
//! a live engine (`status`), each group's owner (the security context, the processes holding
//! its iommufd and their uid), what the group is attached to (its domain), and per context the
//! pages its IOASes pinned.

use serde_json::Value;
use std::fmt::Write as _;
use uiommu_platform::topology::Topology;

const LINE: usize = 18;
const LEFT_W: usize = 760;
const BOX_W: usize = 560;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Who owns context `ctx`, from the status: `context N (pid P uid U, ...)`.
fn owner_of(status: &Value, ctx: u64) -> String {
    let empty = Vec::new();
    let holders: Vec<String> = status["files"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|f| f["context"].as_u64() == Some(ctx))
        .map(|f| {
            format!(
                "pid {} uid {}",
                f["opener"]["pid"].as_i64().unwrap_or(0),
                f["opener"]["uid"].as_u64().unwrap_or(0)
            )
        })
        .collect();
    if holders.is_empty() {
        format!("context {ctx}")
    } else {
        format!("context {ctx} ({})", holders.join(", "))
    }
}

/// The SVG of `topo`, with what `status` (a host engine's `status --json`) says of its groups.
pub fn svg(topo: &Topology, status: Option<&Value>) -> String {
    let tree: Vec<String> = topo.describe().lines().map(str::to_string).collect();
    let empty = Vec::new();
    // The right column: per group its lines, each (text, class).
    let mut boxes: Vec<(u32, Vec<(String, &'static str)>)> = Vec::new();
    for g in topo.groups() {
        let mut lines = vec![(format!("group {}", g.id.0), "title")];
        if let Some(st) = status {
            let entry = st["groups"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .find(|e| e["group"].as_u64() == Some(u64::from(g.id.0)));
            if let Some(e) = entry {
                let owner = match e["owner"].as_u64() {
                    Some(c) => owner_of(st, c),
                    None => "the kernel (no context)".into(),
                };
                lines.push((format!("owner: {owner}"), "owner"));
                lines.push((
                    format!("attached to: {}", e["domain"].as_str().unwrap_or("none")),
                    "domain",
                ));
                if let Some(c) = e["owner"].as_u64() {
                    if let Some(ctx) = st["contexts"]
                        .as_array()
                        .unwrap_or(&empty)
                        .iter()
                        .find(|x| x["id"].as_u64() == Some(c))
                    {
                        lines.push((
                            format!(
                                "context {c}: {} page(s) pinned, {} charged",
                                ctx["pinned_pages"], ctx["charged_pages"]
                            ),
                            "pinned",
                        ));
                    }
                }
            }
        }
        for &d in &g.devices {
            if let Some(dev) = topo.device(d) {
                lines.push((
                    format!(
                        "{} {} ({}), driver {}",
                        dev.bdf,
                        dev.name,
                        dev.model.name(),
                        dev.boot_driver.name().unwrap_or("none")
                    ),
                    "device",
                ));
            }
        }
        boxes.push((g.id.0, lines));
    }
    let right_h: usize = boxes.iter().map(|(_, l)| l.len() * LINE + 16).sum();
    let height = (tree.len() * LINE + 60).max(right_h + 60);
    let width = LEFT_W + BOX_W + 60;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"monospace\" font-size=\"12\">"
    );
    let _ = writeln!(
        out,
        "<text x=\"20\" y=\"24\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        esc(match status {
            Some(st) => format!(
                "uiommu instance {}: the PCI tree and its IOMMU groups",
                st["instance"].as_str().unwrap_or("?")
            ),
            None => "uiommu: the PCI tree and its IOMMU groups".to_string(),
        }
        .as_str())
    );
    for (i, l) in tree.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text class=\"tree\" x=\"20\" y=\"{}\" xml:space=\"preserve\">{}</text>",
            50 + i * LINE,
            esc(l)
        );
    }
    let mut y = 40;
    for (id, lines) in &boxes {
        let h = lines.len() * LINE + 8;
        let owned = lines
            .iter()
            .any(|(t, c)| *c == "owner" && t.contains("context "));
        let _ = writeln!(
            out,
            "<g class=\"group\" id=\"group-{id}\"><rect x=\"{}\" y=\"{y}\" width=\"{BOX_W}\" \
             height=\"{h}\" rx=\"6\" fill=\"{}\" stroke=\"#555\"/>",
            LEFT_W + 20,
            if owned { "#fde7c8" } else { "#e8eef7" }
        );
        for (k, (t, class)) in lines.iter().enumerate() {
            let _ = writeln!(
                out,
                "<text class=\"{class}\" x=\"{}\" y=\"{}\"{}>{}</text>",
                LEFT_W + 30,
                y + 16 + k * LINE,
                if *class == "title" {
                    " font-weight=\"bold\""
                } else {
                    ""
                },
                esc(t)
            );
        }
        let _ = writeln!(out, "</g>");
        y += h + 8;
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_platform_drawn_has_every_function_and_group() {
        let topo = Topology::builtin_default();
        let s = svg(&topo, None);
        let doc = roxmltree::Document::parse(&s).expect("well-formed SVG");
        let texts: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or("").to_string())
            .collect();
        for d in topo.devices() {
            let bdf = d.bdf.to_string();
            assert!(texts
                .iter()
                .any(|t| t.starts_with(&bdf) && t.contains("driver")));
        }
        let groups = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("group"))
            .count();
        assert_eq!(groups, topo.groups().count());
    }

    #[test]
    fn a_live_engines_owner_domain_and_pins_are_drawn_in_its_groups_box() {
        let topo = Topology::builtin_default();
        let status = serde_json::json!({
            "instance": "t",
            "files": [{"context": 4, "opener": {"pid": 77, "uid": 1000}}],
            "contexts": [{"id": 4, "pinned_pages": 32, "charged_pages": 32}],
            "groups": [{"group": 5, "owner": 4, "domain": "paging"}, {"group": 6, "owner": null, "domain": "identity"}],
        });
        let s = svg(&topo, Some(&status));
        let doc = roxmltree::Document::parse(&s).unwrap();
        let g5 = doc
            .descendants()
            .find(|n| n.attribute("id") == Some("group-5"))
            .unwrap();
        let text: Vec<&str> = g5
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        assert!(
            text.contains(&"owner: context 4 (pid 77 uid 1000)"),
            "{text:?}"
        );
        assert!(text.contains(&"attached to: paging"), "{text:?}");
        assert!(
            text.contains(&"context 4: 32 page(s) pinned, 32 charged"),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.starts_with("0000:01:00.0 dma0")),
            "{text:?}"
        );
        let g6 = doc
            .descendants()
            .find(|n| n.attribute("id") == Some("group-6"))
            .unwrap();
        assert!(g6
            .descendants()
            .any(|n| n.text() == Some("owner: the kernel (no context)")));
    }
}
