//! `powerapi report --chart FILE.svg|FILE.png`: power over time, stacked (idle at the bottom,
//! then each top target, then everything else), with axes, units and a legend, drawn with
//! `plotters`.
//!
//! Text needs a TrueType font: plotters' pure-Rust glyph renderer is given the first of a few
//! common system fonts (DejaVu Sans, Liberation Sans, Noto Sans). Without one, the chart is
//! refused with what to install, not drawn without labels.

use std::path::Path;

use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};
use thiserror::Error;

use crate::summary::{By, Summary, Timeline};

/// Chart size in pixels (SVG user units).
pub const SIZE: (u32, u32) = (1200, 600);

/// Fonts tried, in order.
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Why a chart could not be drawn.
#[derive(Debug, Error)]
pub enum ChartError {
    /// The file name says neither SVG nor PNG.
    #[error("{0}: a chart is written as .svg or .png; name the file so")]
    Format(String),
    /// No font to write the labels with.
    #[error(
        "drawing a chart needs a TrueType font and none was found ({}); install one (apt install fonts-dejavu-core)",
        FONTS.join(", ")
    )]
    NoFont,
    /// Nothing to draw.
    #[error("the trace has no interval to draw")]
    Empty,
    /// plotters failed (an unwritable path, most likely).
    #[error("cannot draw {path}: {detail}; check that its directory exists and is writable")]
    Draw {
        /// The chart file.
        path: String,
        /// What plotters said.
        detail: String,
    },
}

/// Registers the first font found as `sans-serif`, once per process.
fn font() -> Result<(), ChartError> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        FONTS.iter().any(|path| {
            std::fs::read(path).ok().is_some_and(|bytes| {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    });
    if ok { Ok(()) } else { Err(ChartError::NoFont) }
}

/// Series colours: idle grey, `other` light grey, targets from a palette that stays apart.
fn colour(index: usize, name: &str) -> RGBColor {
    const PALETTE: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(255, 187, 120),
    ];
    match name {
        "idle" => RGBColor(150, 150, 150),
        "other" => RGBColor(210, 210, 210),
        _ => PALETTE[index % PALETTE.len()],
    }
}

/// Draws `timeline` to `path` (`.svg` or `.png`).
pub fn draw(path: &Path, summary: &Summary, timeline: &Timeline) -> Result<(), ChartError> {
    let name = path.display().to_string();
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if timeline.seconds.is_empty() {
        return Err(ChartError::Empty);
    }
    font()?;
    let failed = |e: &dyn std::fmt::Display| ChartError::Draw {
        path: name.clone(),
        detail: e.to_string(),
    };
    match extension.as_deref() {
        Some("svg") => {
            let root = SVGBackend::new(path, SIZE).into_drawing_area();
            plot(&root, summary, timeline).map_err(|e| failed(&e))?;
            root.present().map_err(|e| failed(&e))
        }
        Some("png") => {
            let root = BitMapBackend::new(path, SIZE).into_drawing_area();
            plot(&root, summary, timeline).map_err(|e| failed(&e))?;
            root.present().map_err(|e| failed(&e))
        }
        _ => Err(ChartError::Format(name)),
    }
}

type DrawResult<E> = Result<(), DrawingAreaErrorKind<E>>;

fn plot<B: DrawingBackend>(
    root: &DrawingArea<B, Shift>,
    summary: &Summary,
    timeline: &Timeline,
) -> DrawResult<B::ErrorType> {
    root.fill(&WHITE)?;
    // Cumulative sums, bottom (idle) to top (other): series i is drawn from the total of the
    // ones below it to the total including it.
    let n = timeline.seconds.len();
    let mut stacked: Vec<Vec<f64>> = Vec::with_capacity(timeline.series.len());
    let mut below = vec![0.0; n];
    for (_, values) in &timeline.series {
        let top: Vec<f64> = below
            .iter()
            .zip(values)
            .map(|(b, v)| b + v.max(0.0))
            .collect();
        stacked.push(top.clone());
        below = top;
    }
    let max_w = below.iter().copied().fold(0.0, f64::max).max(1e-3) * 1.1;
    let start = timeline.seconds.first().copied().unwrap_or(0.0);
    let end = timeline
        .seconds
        .last()
        .copied()
        .unwrap_or(1.0)
        .max(start + 1e-3);
    let domains = summary
        .headline
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(" + ");
    let by = match summary.by {
        By::Process => "process",
        By::Command => "command",
        By::Cgroup => "cgroup",
        By::Container => "container",
    };
    let estimated = if summary.estimated {
        " (ESTIMATED)"
    } else {
        ""
    };
    let caption = format!(
        "power by {by}, {} to {}{estimated}",
        summary.start, summary.end
    );
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(start..end, 0.0..max_w)?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc(format!("power, {domains} (W)"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    // Top series first, each filled down to 0, so the lower ones paint over them: a stack.
    for (i, ((label, _), top)) in timeline.series.iter().zip(&stacked).enumerate().rev() {
        let colour = colour(i.saturating_sub(1), label);
        let points: Vec<(f64, f64)> = timeline
            .seconds
            .iter()
            .copied()
            .zip(top.iter().copied())
            .collect();
        chart
            .draw_series(AreaSeries::new(points, 0.0, colour.mix(0.85)).border_style(colour))?
            .label(label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}
