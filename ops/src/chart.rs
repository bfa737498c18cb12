//! `bench.png`: the figures of a `secretlog bench suite` run on one page, drawn from its
//! `results.json` (so `bench suite --replot` redraws it without measuring again).
//!
//! Text is drawn with a font embedded in the binary (DejaVu Sans cut to ASCII and a few symbols,
//! `ops/assets/`), through plotters' `ab_glyph` backend: no system font lookup, so the chart
//! renders the same on any machine.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
pub(crate) const FAMILY: &str = "sans-serif";
const SECRETLOG: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const SECRETLOG_2: RGBColor = RGBColor(0x6b, 0xae, 0xd6);
const ETCD: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const ETCD_2: RGBColor = RGBColor(0xff, 0x98, 0x96);
const GREY: RGBColor = RGBColor(0x55, 0x55, 0x55);

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Series = (String, RGBColor, Vec<(f64, f64)>);

pub(crate) fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    anyhow::ensure!(ok, "the embedded chart font does not load");
    Ok(())
}

/// Draw the chart of `results` into the PNG at `path` (its directory is created).
pub fn render(results: &Value, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let root = BitMapBackend::new(path, (1800, 1200)).into_drawing_area();
    draw(&root, results).map_err(|e| anyhow::anyhow!("drawing the chart: {e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(root: &Area, r: &Value) -> DrawResult {
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(70);
    let load = load_range(r);
    head.draw(&Text::new(
        format!(
            "secretlog beside a 3-member etcd cluster{} — {}",
            if r["quick"].as_bool() == Some(true) { " (quick run)" } else { "" },
            r["started_utc"].as_str().unwrap_or("")
        ),
        (20, 10),
        (FAMILY, 28).into_font(),
    ))?;
    head.draw(&Text::new(
        format!(
            "{} cores shared with the load generator and other work, load average {load}; ratios come from back-to-back \
             measurements in this run",
            r["machine"]["cpus"]
        ),
        (20, 44),
        (FAMILY, 18).into_font().color(&GREY),
    ))?;
    let panels = body.split_evenly((2, 3));
    let peer = |run: &str, side: &str, key: &str| -> Vec<(f64, f64)> {
        r["peer_etcd"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|row| row["scenario"] == format!("peer_etcd_{run}"))
            .filter_map(|row| Some((row["concurrency"].as_f64()?, row[side][key].as_f64()?)))
            .collect()
    };
    // Each line panel: title, x axis, its lines (label, colour, run, side, figure), a reference
    // line, where the legend goes.
    type Line = (&'static str, RGBColor, &'static str, &'static str, &'static str);
    let (w, rs, rl) = ("writes", "reads_serializable", "reads_linearizable");
    let specs: [(&str, &str, Vec<Line>, Option<f64>); 4] = [
        (
            "Acknowledged writes / s",
            "concurrent clients",
            vec![("secretlog", SECRETLOG, w, "secretlog", "ops_per_sec"), ("etcd", ETCD, w, "etcd", "ops_per_sec")],
            None,
        ),
        (
            "Reads / s",
            "connections",
            vec![
                ("secretlog reader", SECRETLOG, rs, "secretlog", "ops_per_sec"),
                ("secretlog token read", SECRETLOG_2, rl, "secretlog", "ops_per_sec"),
                ("etcd serializable", ETCD, rs, "etcd", "ops_per_sec"),
                ("etcd linearizable", ETCD_2, rl, "etcd", "ops_per_sec"),
            ],
            None,
        ),
        (
            "p99 latency, ms",
            "clients (writes) / connections (reads)",
            vec![
                ("secretlog writes", SECRETLOG, w, "secretlog", "p99_ms"),
                ("etcd writes", ETCD, w, "etcd", "p99_ms"),
                ("secretlog reads", SECRETLOG_2, rs, "secretlog", "p99_ms"),
                ("etcd serializable reads", ETCD_2, rs, "etcd", "p99_ms"),
            ],
            None,
        ),
        (
            "Ratio secretlog / etcd, ops/s (above 1: secretlog faster)",
            "clients / connections",
            vec![
                ("writes", SECRETLOG, w, "ratio", "ops_per_sec"),
                ("reads (serializable)", ETCD, rs, "ratio", "ops_per_sec"),
                ("token read / linearizable", GREY, rl, "ratio", "ops_per_sec"),
            ],
            Some(1.0),
        ),
    ];
    for (i, (title, x_desc, lines, reference)) in specs.into_iter().enumerate() {
        let series: Vec<Series> =
            lines.into_iter().map(|(label, c, run, side, key)| (label.to_string(), c, peer(run, side, key))).collect();
        let legend =
            if reference.is_some() { SeriesLabelPosition::MiddleRight } else { SeriesLabelPosition::LowerRight };
        line_panel(&panels[i], title, x_desc, &series, reference, legend)?;
    }
    lag_panel(&panels[4], r)?;
    text_panel(&panels[5], r)?;
    Ok(())
}

/// "3.5–7.2" from the run's load averages (1 min).
fn load_range(r: &Value) -> String {
    let l: Vec<f64> = r["load"].as_array().into_iter().flatten().filter_map(|x| x["load1"].as_f64()).collect();
    match (l.iter().copied().reduce(f64::min), l.iter().copied().reduce(f64::max)) {
        (Some(a), Some(b)) => format!("{a:.1}-{b:.1}"),
        _ => "unknown".into(),
    }
}

/// Lines on log-log axes (x: concurrency, y: the figure), with a dashed horizontal line at
/// `reference` if given.
fn line_panel(
    area: &Area,
    title: &str,
    x_desc: &str,
    series: &[Series],
    reference: Option<f64>,
    legend: SeriesLabelPosition,
) -> DrawResult {
    let pts = series.iter().flat_map(|(_, _, v)| v.iter());
    let (mut ylo, mut yhi, mut xhi) = (f64::MAX, f64::MIN, 1.0f64);
    for &(x, y) in pts.filter(|(_, y)| *y > 0.0) {
        ylo = ylo.min(y);
        yhi = yhi.max(y);
        xhi = xhi.max(x);
    }
    if ylo > yhi {
        (ylo, yhi) = (0.1, 1.0);
    }
    if let Some(y) = reference {
        (ylo, yhi) = (ylo.min(y), yhi.max(y));
    }
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((0.8f64..xhi * 1.25).log_scale(), (ylo / 2.0..yhi * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| short(*y))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    if let Some(y) = reference {
        chart.draw_series(DashedLineSeries::new(vec![(0.8, y), (xhi * 1.25, y)], 6, 4, GREY.stroke_width(1)))?;
    }
    for (name, color, points) in series {
        let points: Vec<(f64, f64)> = points.iter().copied().filter(|(_, y)| *y > 0.0).collect();
        let c = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font((FAMILY, 14))
        .draw()?;
    Ok(())
}

/// 12, 1.5k, 20k, 0.05 …: short tick labels.
fn short(y: f64) -> String {
    if y >= 1000.0 {
        let k = format!("{:.1}", y / 1000.0);
        format!("{}k", k.trim_end_matches(".0"))
    } else if y >= 1.0 {
        format!("{y:.0}")
    } else {
        format!("{y:.2}")
    }
}

/// Bars: p50, p99, p99.9 of write start → visible and of acknowledged → visible.
fn lag_panel(area: &Area, r: &Value) -> DrawResult {
    let lag = |name: &str| r["lag"].as_array().into_iter().flatten().find(|l| l["scenario"] == name).cloned();
    let groups = [("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms")];
    let series = [
        ("write start -> visible", SECRETLOG, lag("write_to_visible")),
        ("acknowledged -> visible (replication lag)", ETCD, lag("ack_to_visible")),
    ];
    let max = series
        .iter()
        .flat_map(|(_, _, l)| groups.iter().filter_map(move |(_, k)| l.as_ref()?[*k].as_f64()))
        .fold(1.0f64, f64::max);
    let rate = series.iter().find_map(|(_, _, l)| l.as_ref()?["concurrency"].as_u64()).unwrap_or(0);
    let failed = series.iter().find_map(|(_, _, l)| l.as_ref()?["errors"].as_u64()).unwrap_or(0);
    let caption = match failed {
        0 => format!("Write visible on a reader, ms, at {rate} writes/s"),
        n => format!("Write visible on a reader, ms, at {rate} writes/s ({n} failed or > 2 s)"),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..3f64, 0f64..max * 1.5)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_desc("percentile")
        .y_label_formatter(&|y| short(*y))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (g, (label, key)) in groups.iter().enumerate() {
        let g = g as f64;
        chart.draw_series(std::iter::once(Text::new(label.to_string(), (g + 0.42, max * 1.2), (FAMILY, 16))))?;
        for (i, (_, color, l)) in series.iter().enumerate() {
            let Some(v) = l.as_ref().and_then(|l| l[*key].as_f64()) else { continue };
            let x0 = g + 0.12 + i as f64 * 0.38;
            chart.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x0 + 0.34, v)], color.filled())))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{v:.1}"),
                (x0 + 0.02, v + max * 0.06),
                (FAMILY, 14),
            )))?;
        }
    }
    for (name, color, _) in &series {
        let c = *color;
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font((FAMILY, 14))
        .draw()?;
    Ok(())
}

/// Failover, memory and snapshot figures as text: single figures have no peer in this run.
fn text_panel(area: &Area, r: &Value) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Rectangle::new([(8, 8), (w as i32 - 8, h as i32 - 8)], GREY.stroke_width(1)))?;
    let f = |v: &Value, k: &str, d: usize| v[k].as_f64().map_or("-".into(), |x| format!("{x:.d$}"));
    let fo = &r["failover"];
    let m = &r["memory"];
    let mut lines: Vec<(String, u32)> = vec![("Failover, memory, snapshots (no etcd figure)".into(), 20)];
    if fo.is_object() {
        lines.push((
            format!(
                "Leader writer kill -9 -> next acknowledged write ({} rounds):",
                fo["rounds"].as_array().map_or(0, Vec::len)
            ),
            16,
        ));
        lines.push((
            format!(
                "    min {} s, median {} s, max {} s; acknowledged lost: {}",
                f(fo, "min_secs", 2),
                f(fo, "median_secs", 2),
                f(fo, "max_secs", 2),
                fo["acknowledged_lost"]
            ),
            16,
        ));
    }
    if m.is_object() {
        lines.push((format!("Reader holding {} secrets, VmRSS:", m["secrets"]), 16));
        lines.push((
            format!(
                "    {} MB idle, {} MB under reads, peak {} MB",
                f(m, "rss_idle_mb", 0),
                f(m, "rss_under_reads_mb", 0),
                f(m, "rss_peak_mb", 0)
            ),
            16,
        ));
        lines.push((
            format!(
                "    reads over all of them: {} /s, p99 {} ms",
                f(&m["reads"], "ops_per_sec", 0),
                f(&m["reads"], "p99_ms", 2)
            ),
            16,
        ));
    }
    for s in r["snapshot"].as_array().into_iter().flatten() {
        let mb = s["snapshot_bytes"].as_f64().map_or("-".into(), |b| format!("{:.0}", b / 1e6));
        lines.push((format!("Snapshot of {} secrets ({mb} MB):", s["secrets"]), 16));
        lines.push((
            format!("    create {} s, bootstrap a new reader {} s", f(s, "create_secs", 1), f(s, "bootstrap_secs", 1)),
            16,
        ));
    }
    let mut y = 22;
    for (text, size) in lines {
        area.draw(&Text::new(text, (24, y), (FAMILY, size).into_font()))?;
        y += size as i32 + 16;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_draws_to_a_png_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.png");
        render(&crate::bench::suite::tests::sample(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 20_000, "a chart, not an empty page: {} bytes", bytes.len());
    }
}
