//! `--plot`: an SVG of dedup ratio against average chunk size and, for versions, of
//! cumulative stored bytes per version.

use std::path::Path;

use plotters::prelude::*;

use super::AnalyzeReport;
use crate::error::{IoContext, Result, invalid};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 450;

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Renders in memory first, so a failed render leaves no half-written file.
pub fn write_plot(report: &AnalyzeReport, path: &Path) -> Result<()> {
    let mut svg = String::new();
    {
        let panels = if report.as_versions { 2 } else { 1 };
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT * panels)).into_drawing_area();
        let draw_err = |e: &dyn std::fmt::Display| invalid("plot", e.to_string());
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        let areas = root.split_evenly((panels as usize, 1));
        dedup_panel(report, &areas[0]).map_err(|e| draw_err(&e))?;
        if report.as_versions {
            versions_panel(report, &areas[1]).map_err(|e| draw_err(&e))?;
        }
        root.present().map_err(|e| draw_err(&e))?;
    }
    std::fs::write(path, svg).at(path)
}

type DrawResult = std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// FastCDC configurations as one line (by average size), fixed-size ones as another.
fn dedup_panel(report: &AnalyzeReport, area: &Area) -> DrawResult {
    let series = |fixed: bool| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = report
            .configs
            .iter()
            .filter(|c| (c.kind == "fixed") == fixed)
            .map(|c| (f64::from(c.avg_size) / 1024.0, c.total.dedup_ratio))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let all: Vec<(f64, f64)> = series(false).into_iter().chain(series(true)).collect();
    let (xmin, xmax) = all.iter().fold((f64::MAX, 0f64), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let ymax = all.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("dedup ratio vs average chunk size", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin / 2.0..xmax * 2.0).log_scale(), 0f64..ymax)?;
    chart.configure_mesh().x_desc("average chunk size (KiB)").y_desc("logical / unique").draw()?;
    for (i, (label, points)) in [("fastcdc", series(false)), ("fixed", series(true))].into_iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()
}

/// One line per configuration: stored bytes after each version.
fn versions_panel(report: &AnalyzeReport, area: &Area) -> DrawResult {
    let versions = report.configs.first().map_or(1, |c| c.versions.len());
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let ymax = report
        .configs
        .iter()
        .flat_map(|c| c.versions.iter().map(|v| mib(v.cumulative.stored_bytes)))
        .fold(1e-3f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("cumulative stored bytes per version", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..versions as f64 + 0.5, 0f64..ymax)?;
    chart.configure_mesh().x_desc("version").y_desc("stored (MiB)").draw()?;
    for (i, c) in report.configs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> =
            c.versions.iter().enumerate().map(|(n, v)| ((n + 1) as f64, mib(v.cumulative.stored_bytes))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(c.chunker.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()
}
