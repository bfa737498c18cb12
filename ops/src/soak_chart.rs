//! `soak.png`: every series of a `secretlog soak` run over time, drawn from its `soak.json`, with
//! the end of the baseline window marked. Text uses the chart font embedded in the binary
//! (see [`crate::chart`]).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use crate::chart::{FAMILY, register_font};

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Lines = BTreeMap<String, Vec<(f64, f64)>>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draw the chart of `results` into the PNG at `path`.
pub fn render(results: &Value, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let root = BitMapBackend::new(path, (1800, 1100)).into_drawing_area();
    draw(&root, results).map_err(|e| anyhow::anyhow!("drawing the soak chart: {e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// The per-key series of a map field of every sample (`rss`, `fds`, `dirs`), scaled.
fn keyed(samples: &[Value], field: &str, scale: f64) -> Lines {
    let mut out = Lines::new();
    for s in samples {
        let t = s["t"].as_f64().unwrap_or(0.0) / 60.0;
        for (k, v) in s[field].as_object().into_iter().flatten() {
            if let Some(v) = v.as_f64() {
                out.entry(k.clone()).or_default().push((t, v * scale));
            }
        }
    }
    out
}

fn scalar(samples: &[Value], field: &str, name: &str, scale: f64) -> Lines {
    let points: Vec<(f64, f64)> =
        samples.iter().filter_map(|s| Some((s["t"].as_f64()? / 60.0, s[field].as_f64()? * scale))).collect();
    Lines::from([(name.to_string(), points)])
}

fn draw(root: &Area, r: &Value) -> DrawResult {
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(50);
    let verdict = if r["ok"].as_bool() == Some(true) { "every bound held" } else { "a bound was BROKEN" };
    head.draw(&Text::new(
        format!(
            "secretlog soak — {:.1} min, baseline {:.1} min, {} ops — {verdict}",
            r["duration_s"].as_f64().unwrap_or(0.0) / 60.0,
            r["baseline_s"].as_f64().unwrap_or(0.0) / 60.0,
            r["ops"],
        ),
        (20, 12),
        (FAMILY, 26).into_font(),
    ))?;
    let samples = r["samples"].as_array().cloned().unwrap_or_default();
    let base = r["baseline_s"].as_f64().unwrap_or(0.0) / 60.0;
    let mib = 1.0 / (1024.0 * 1024.0);
    let mut latency = scalar(&samples, "read_p99_ms", "read p99", 1.0);
    latency.extend(scalar(&samples, "write_p99_ms", "write p99", 1.0));
    let panels = body.split_evenly((2, 3));
    let specs: [(&str, Lines); 6] = [
        ("RSS per node, MiB", keyed(&samples, "rss", mib)),
        ("open file descriptors per node", keyed(&samples, "fds", 1.0)),
        ("disk per directory, MiB", keyed(&samples, "dirs", mib)),
        ("p99 per sample interval, ms", latency),
        ("replication lag (highest reader), s", scalar(&samples, "lag_s", "lag", 1.0)),
        ("tokens in state (leader)", scalar(&samples, "tokens", "tokens", 1.0)),
    ];
    for (area, (title, lines)) in panels.iter().zip(specs) {
        panel(area, title, &lines, base)?;
    }
    Ok(())
}

fn panel(area: &Area, title: &str, lines: &Lines, base: f64) -> DrawResult {
    let xmax = lines.values().flatten().map(|p| p.0).fold(1.0, f64::max);
    let ymax = lines.values().flatten().map(|p| p.1).fold(1e-9, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        vec![(base, 0.0), (base, ymax * 1.15)],
        6,
        4,
        BLACK.mix(0.4).stroke_width(1),
    ))?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let c = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FAMILY, 11))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_soak_chart_renders_from_its_results() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("soak.png");
        let s = |t: f64, rss: f64| {
            json!({"t": t, "rss": {"w": rss}, "fds": {"w": 40}, "dirs": {"w/db": 1e6}, "tokens": 3,
                   "read_p99_ms": 1.5, "write_p99_ms": 9.0, "lag_s": 0.01})
        };
        let r = json!({"ok": true, "duration_s": 120, "baseline_s": 40, "ops": 10,
                       "samples": [s(0.0, 5e7), s(60.0, 6e7), s(120.0, 6.1e7)]});
        render(&r, &path).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 10_000);
    }
}
