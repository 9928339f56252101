//! PNG plots of a run: latency over time (p50 and p99 of each second),
//! the percentile spectrum (latency against 90 %, 99 %, 99.9 % … on a
//! scale of nines) and throughput over time (answers and errors per
//! second). Text needs a TrueType font: `TENX_LOAD_FONT`, else DejaVu Sans
//! where Debian (`fonts-dejavu-core`) and most Linux systems put it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::report::{Report, Tick};

const SIZE: (u32, u32) = (900, 500);
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("plots need a TrueType font: set TENX_LOAD_FONT to one, or install fonts-dejavu-core")]
    NoFont,
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// Registers the font once per process.
fn font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let candidates = std::env::var("TENX_LOAD_FONT").into_iter().chain(FONT_PATHS.map(String::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    });
    if ok { Ok(()) } else { Err(PlotError::NoFont) }
}

/// Writes `<stem>-latency.png`, `<stem>-spectrum.png` and
/// `<stem>-throughput.png` into `dir`; returns their paths.
pub fn write_all(report: &Report, dir: &Path, stem: &str) -> Result<Vec<PathBuf>, PlotError> {
    font()?;
    let paths = [
        dir.join(format!("{stem}-latency.png")),
        dir.join(format!("{stem}-spectrum.png")),
        dir.join(format!("{stem}-throughput.png")),
    ];
    let title = format!("{} → {} ({})", report.scenario, report.target, report.mode);
    let drawn = [
        draw(&paths[0], |root| latency(report, root, &title)),
        draw(&paths[1], |root| spectrum(report, root, &title)),
        draw(&paths[2], |root| throughput(report, root, &title)),
    ];
    for (path, result) in paths.iter().zip(drawn) {
        result.map_err(|message| PlotError::Draw { path: path.clone(), message })?;
    }
    Ok(paths.to_vec())
}

type Drawn = Result<(), String>;

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Paints a white [`SIZE`] picture with `paint` and writes it as PNG.
fn draw(path: &Path, paint: impl FnOnce(&Area<'_>) -> Drawn) -> Drawn {
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        paint(&root)?;
        root.present().map_err(err)?;
    }
    image::save_buffer_with_format(
        path,
        &rgb,
        SIZE.0,
        SIZE.1,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(err)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn latency(report: &Report, root: &Area<'_>, title: &str) -> Drawn {
    let line =
        |pick: fn(&Tick) -> f64| report.timeline.iter().map(|t| (t.second as f64 + 0.5, pick(t))).collect();
    let lines = [("p50", BLUE, line(|t| t.p50_ms)), ("p99", RED, line(|t| t.p99_ms))];
    over_time(root, report, &format!("latency over time — {title}"), "ms", lines)
}

fn spectrum(report: &Report, root: &Area<'_>, title: &str) -> Drawn {
    // x = nines: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9 …
    let nines = |p: f64| -(1.0 - p / 100.0).max(1e-9).log10();
    let points: Vec<(f64, f64)> = report.spectrum.iter().map(|(p, ms)| (nines(*p), *ms)).collect();
    // Whole nines, so the labels read 0, 90, 99, 99.9 …
    let right = points.iter().map(|p| p.0).fold(1.0, f64::max).ceil();
    let top = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.1) * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(format!("percentile spectrum — {title}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..right, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_labels(right as usize + 1)
        .y_desc("ms")
        .x_label_formatter(&|x| {
            let p = (1.0 - 10f64.powf(-x)) * 100.0;
            format!("{p:.3}").trim_end_matches('0').trim_end_matches('.').to_owned()
        })
        .draw()
        .map_err(err)?;
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(err)?;
    Ok(())
}

fn throughput(report: &Report, root: &Area<'_>, title: &str) -> Drawn {
    // Rates, so a last second the run only partly covered is not a dip.
    let line = |pick: fn(&Tick) -> u64| {
        report.timeline.iter().map(|t| (t.second as f64 + 0.5, pick(t) as f64 / t.span_s)).collect()
    };
    let lines = [("answers", GREEN, line(|t| t.ok)), ("errors", RED, line(|t| t.errors))];
    over_time(root, report, &format!("throughput — {title}"), "per second", lines)
}

/// A named, coloured line of (second, value) points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Lines over the seconds of the run, with a legend.
fn over_time(root: &Area<'_>, report: &Report, caption: &str, y_desc: &str, lines: [Line<'_>; 2]) -> Drawn {
    let seconds = report.timeline.len().max(1) as f64;
    let top = lines.iter().flat_map(|(_, _, points)| points.iter().map(|p| p.1)).fold(0.1, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds, 0.0..top)
        .map_err(err)?;
    chart.configure_mesh().x_desc("second of the run").y_desc(y_desc).draw().map_err(err)?;
    for (name, color, points) in lines {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}
