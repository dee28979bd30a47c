//! The two plots of `uiommu bench --plot DIR`, drawn as SVG with `plotters` from the curves a
//! run collected ([`Report::series`]):
//!
//! - `per_op_cost.svg`: nanoseconds per 4 KiB map and unmap against the number of mappings
//!   present (log scale, 1,000 up to the largest distinct-mapping count), one curve per domain
//!   kind and operation;
//! - `dma_throughput.svg`: GiB/s of the dma-engine copying through the IOMMU against transfer
//!   size (log scale), beside memcpy and a bare `process_vm_readv` of the same size.

use crate::bench::{Report, Series, DMA_PLOT, PER_OP_PLOT};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Write both plots into `dir` (created if missing); returns the files written.
pub fn write_plots(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let quick = if report.quick { " (quick run)" } else { "" };
    for (plot, title, x_desc, y_desc) in [
        (
            PER_OP_PLOT,
            format!("uiommu: cost of one 4 KiB map / unmap vs mappings present{quick}"),
            "mappings present (log scale)",
            "ns per operation (1,000-op chunks)",
        ),
        (
            DMA_PLOT,
            format!("uiommu: copy throughput vs transfer size{quick}"),
            "bytes per copy (log scale)",
            "GiB/s",
        ),
    ] {
        let curves: Vec<&Series> = report
            .series
            .iter()
            .filter(|s| s.plot == plot && !s.points.is_empty())
            .collect();
        if curves.is_empty() {
            continue;
        }
        let path = dir.join(format!("{plot}.svg"));
        draw(&path, &title, x_desc, y_desc, &curves)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn draw(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    curves: &[&Series],
) -> Result<(), Box<dyn std::error::Error>> {
    let points = curves.iter().flat_map(|s| s.points.iter());
    let (mut x_lo, mut x_hi, mut y_hi) = (f64::MAX, f64::MIN, 0f64);
    for &(x, y) in points {
        x_lo = x_lo.min(x);
        x_hi = x_hi.max(x);
        if y.is_finite() {
            y_hi = y_hi.max(y);
        }
    }
    let x_lo = x_lo.max(1.0);
    let x_hi = x_hi.max(x_lo * 2.0);
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0f64..(y_hi * 1.1).max(1e-9))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| human(*v))
        .draw()?;
    for (i, s) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if pts.len() <= 32 {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// 1000 → "1K", 1048576 → "1M" (binary for powers of two, decimal otherwise).
fn human(v: f64) -> String {
    let n = v.round() as u64;
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}Mi", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}Ki", n >> 10)
    } else if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}K", n / 1000)
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_plots_are_written_from_the_curves() {
        let mut r = Report::default();
        r.series.push(Series {
            plot: PER_OP_PLOT,
            name: "map, radix domain".into(),
            points: (1..=20)
                .map(|i| ((i * 1000) as f64, 300.0 + i as f64))
                .collect(),
        });
        r.series.push(Series {
            plot: DMA_PLOT,
            name: "memcpy".into(),
            points: vec![(4096.0, 50.0), (65536.0, 30.0), (1048576.0, 9.0)],
        });
        let dir = std::env::temp_dir().join(format!("uiommu-plot-{}", std::process::id()));
        let files = write_plots(&r, &dir).unwrap();
        assert_eq!(files.len(), 2);
        for f in &files {
            let svg = std::fs::read_to_string(f).unwrap();
            assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
            assert!(svg.contains("<polyline"), "no curve in {}", f.display());
        }
        assert!(std::fs::read_to_string(&files[1])
            .unwrap()
            .contains("memcpy"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(human(1_048_576.0), "1Mi");
        assert_eq!(human(100_000.0), "100K");
    }
}
