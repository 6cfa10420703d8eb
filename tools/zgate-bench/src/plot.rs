//! `plot`: pictures of results. A percentile spectrum of `.hgrm` files (latency against
//! the "nines", log-scaled, as HdrHistogram's plotter draws it), one line per run; and
//! a latency-vs-CPU chart of JSON result lines (p99 against gateway CPU per request, one
//! point per labelled run). PNG.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::LoadError;

/// One `.hgrm` file: (percentile, latency in ms) points, percentile < 1.
fn read_hgrm(path: &Path) -> Result<Vec<(f64, f64)>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path, &e))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [value, q, _, _] = f.as_slice() {
            if *q < 1.0 {
                out.push((*q, *value));
            }
        }
    }
    if out.is_empty() {
        return Err(LoadError::Tls {
            reason: format!(
                "{}: no percentile lines (not an .hgrm file?)",
                path.display()
            ),
        });
    }
    Ok(out)
}

fn err(path: &Path, e: &dyn std::fmt::Display) -> LoadError {
    LoadError::Tls {
        reason: format!("{}: {e}", path.display()),
    }
}

/// Register `font` (a TTF) as plotters' sans-serif.
fn font(path: &Path) -> Result<(), LoadError> {
    let bytes = std::fs::read(path).map_err(|e| {
        err(
            path,
            &format!("{e} (a TrueType font is needed for the labels: install fonts-dejavu-core or give --font)"),
        )
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| err(path, &"not a TrueType font"))
}

fn draw_err(e: impl std::fmt::Display) -> LoadError {
    LoadError::Tls {
        reason: format!("plot: {e}"),
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// `n` nines as a percentile: 0 → 0%, 1 → 90%, 2 → 99%, 3 → 99.9%, ...
fn nines_label(n: i32) -> String {
    match n {
        i32::MIN..=0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        n => format!("99.{}%", "9".repeat(usize::try_from(n - 2).unwrap_or(0))),
    }
}

/// Percentile spectrum of `files` into `out`.
pub fn spectrum(
    files: &[PathBuf],
    out: &Path,
    title: &str,
    font_path: &Path,
) -> Result<(), LoadError> {
    font(font_path)?;
    let runs: Vec<(String, Vec<(f64, f64)>)> = files
        .iter()
        .map(|f| {
            let label = f.file_stem().map_or_else(
                || f.display().to_string(),
                |s| s.to_string_lossy().into_owned(),
            );
            read_hgrm(f).map(|pts| (label, pts))
        })
        .collect::<Result<_, _>>()?;
    // x: log10(1 / (1 - q)): 0 = 0 %, 1 = 90 %, 2 = 99 %, ...
    let x = |q: f64| (1.0 / (1.0 - q)).log10();
    let max_x = runs
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(q, _)| x(*q)))
        .fold(2.0_f64, f64::max)
        .ceil();
    let max_y = runs
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(0.0_f64, f64::max)
        * 1.1;
    let root = BitMapBackend::new(out, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y.max(0.001))
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(usize::try_from(max_x as i64 + 1).unwrap_or(6))
        .x_label_formatter(&|v| nines_label(v.round() as i32))
        .draw()
        .map_err(draw_err)?;
    for (i, (label, pts)) in runs.iter().enumerate() {
        let color = COLORS.get(i % COLORS.len()).copied().unwrap_or(BLACK);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|(q, v)| (x(*q), *v)),
                color.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(label.clone())
            .legend(move |(lx, ly)| {
                PathElement::new(vec![(lx, ly), (lx + 20, ly)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)
}

/// p99 against gateway CPU per request, one point per JSON line with both (labelled by
/// its `label`), into `out`.
pub fn latency_vs_cpu(
    results: &Path,
    out: &Path,
    title: &str,
    font_path: &Path,
) -> Result<(), LoadError> {
    font(font_path)?;
    let text = std::fs::read_to_string(results).map_err(|e| err(results, &e))?;
    let mut pts: Vec<(String, f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(results, &e))?;
        if let (Some(cpu), Some(p99)) = (
            v.get("gateway_cpu_us_per_req")
                .and_then(serde_json::Value::as_f64),
            v.get("p99_us").and_then(serde_json::Value::as_f64),
        ) {
            let label = v
                .get("label")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string();
            pts.push((label, cpu, p99));
        }
    }
    if pts.is_empty() {
        return Err(err(
            results,
            &"no line has both gateway_cpu_us_per_req and p99_us",
        ));
    }
    // The axes frame the points (with a margin), not the origin: the differences are
    // what the chart is for.
    let span = |v: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = v.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let pad = ((hi - lo) * 0.15).max(hi.abs() * 0.02).max(1e-9);
        ((lo - pad).max(0.0), hi + pad)
    };
    let (min_x, max_x) = span(&mut pts.iter().map(|p| p.1));
    let (min_y, max_y) = span(&mut pts.iter().map(|p| p.2));
    let root = BitMapBackend::new(out, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(min_x..max_x, min_y..max_y)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("gateway CPU per request (us)")
        .y_desc("p99 latency (us)")
        .draw()
        .map_err(draw_err)?;
    let mut labels: Vec<&str> = pts.iter().map(|p| p.0.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    for (i, l) in labels.iter().enumerate() {
        let color = COLORS.get(i % COLORS.len()).copied().unwrap_or(BLACK);
        let mine: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| p.0 == *l)
            .map(|p| (p.1, p.2))
            .collect();
        chart
            .draw_series(
                mine.iter()
                    .map(|&(x, y)| Circle::new((x, y), 5, color.filled())),
            )
            .map_err(draw_err)?
            .label((*l).to_string())
            .legend(move |(lx, ly)| Circle::new((lx + 10, ly), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)
}
