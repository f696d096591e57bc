//! PNG charts for the evaluation and the benchmark: line charts (one series per mode, an
//! optional `y = x` reference for ROC curves) and grouped bar charts with min–max whiskers.
//!
//! Charts are drawn with `plotters` into a pixel buffer and encoded by `image`. Text needs a
//! TrueType font, loaded once at run time: `$LLAMA_DMS_FONT`, else DejaVu Sans (Debian's
//! `fonts-dejavu-core`) or another common system font.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width of every chart in pixels.
pub const WIDTH: u32 = 800;
/// Height of every chart in pixels.
pub const HEIGHT: u32 = 500;

/// Font family name the loaded font is registered under.
const FONT: &str = "sans-serif";

/// Fonts tried after `$LLAMA_DMS_FONT`, in order.
const FONT_PATHS: [&str; 8] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Colours of successive series (Tableau 10).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Why a chart was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No usable TrueType font was found.
    #[error("no font for plots: install fonts-dejavu-core or set LLAMA_DMS_FONT=path.ttf")]
    NoFont,
    /// Drawing failed.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The chart being drawn.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The folder or the PNG could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// One named line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points in drawing order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A line chart: lines with point markers, a legend, and axis labels.
#[derive(Debug, Clone, Copy)]
pub struct LineChart<'a> {
    /// Caption above the chart.
    pub title: &'a str,
    /// Label of the x axis.
    pub x_label: &'a str,
    /// Label of the y axis.
    pub y_label: &'a str,
    /// Fixed y range; `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    /// Draws a dashed grey `y = x` reference line (for ROC curves).
    pub diagonal: bool,
    /// The lines.
    pub series: &'a [Series],
}

/// One bar of a grouped bar chart: the median of a measurement, with its range as a whisker.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Cluster on the x axis.
    pub group: String,
    /// Colour within the cluster (and legend entry).
    pub variant: String,
    /// Bar height.
    pub median: f64,
    /// Lower end of the whisker.
    pub min: f64,
    /// Upper end of the whisker.
    pub max: f64,
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Registers the plot font once per process.
fn ensure_font() -> Result<(), PlotError> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        let from_env = std::env::var_os("LLAMA_DMS_FONT").map(PathBuf::from);
        from_env
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .any(|path| {
                let Ok(bytes) = std::fs::read(&path) else {
                    return false;
                };
                // The font table keeps `'static` references; this happens at most once per
                // candidate and process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
            })
    });
    if *loaded {
        Ok(())
    } else {
        Err(PlotError::NoFont)
    }
}

/// Draws a chart with `draw` on a white canvas and writes it to `path` as PNG.
fn render(path: &Path, draw: impl FnOnce(&Area<'_>) -> DrawResult) -> Result<(), PlotError> {
    ensure_font()?;
    let draw_error = |e: Box<dyn std::error::Error>| PlotError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_error(e.into()))?;
        draw(&root).map_err(draw_error)?;
        root.present().map_err(|e| draw_error(e.into()))?;
    }
    let write_error = |p: &Path, message: String| PlotError::Write {
        path: p.to_path_buf(),
        message,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(WIDTH, HEIGHT, buffer)
        .ok_or_else(|| write_error(path, "buffer size mismatch".into()))?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| write_error(path, e.to_string()))
}

/// The range of `values` widened by `margin` of its span on each side (`(0, 1)` if empty).
fn span(values: impl Iterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * margin;
    (lo - pad, hi + pad)
}

/// The corner of the plot whose legend box would cover the fewest of `points` (sampled
/// along each polyline), for a legend of `entries` lines.
fn legend_corner(
    lines: &[Vec<(f64, f64)>],
    x: (f64, f64),
    y: (f64, f64),
    entries: usize,
) -> SeriesLabelPosition {
    let height = (0.08 + 0.07 * entries as f64).min(0.9);
    let width = 0.42;
    let mut samples = Vec::new();
    for line in lines {
        samples.extend(line.iter().copied());
        for pair in line.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            samples.extend((1..16).map(|k| {
                let t = f64::from(k) / 16.0;
                (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
            }));
        }
    }
    let normalised: Vec<(f64, f64)> = samples
        .iter()
        .map(|&(px, py)| ((px - x.0) / (x.1 - x.0), (py - y.0) / (y.1 - y.0)))
        .collect();
    let covered = |right: bool, top: bool| {
        normalised
            .iter()
            .filter(|&&(nx, ny)| {
                let in_x = if right {
                    nx >= 1.0 - width
                } else {
                    nx <= width
                };
                let in_y = if top {
                    ny >= 1.0 - height
                } else {
                    ny <= height
                };
                in_x && in_y
            })
            .count()
    };
    [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ]
    .into_iter()
    .min_by_key(|&(_, right, top)| covered(right, top))
    .map_or(SeriesLabelPosition::UpperRight, |(p, _, _)| p)
}

/// An axis tick: at most three decimals, trailing zeros dropped.
fn tick(v: &f64) -> String {
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

/// Writes a "no data" note in the middle of `plot`, the plotting area of a chart on `root`.
fn no_data<C: CoordTranslate>(
    root: &Area<'_>,
    plot: &DrawingArea<BitMapBackend<'_>, C>,
) -> DrawResult {
    let (x, y) = plot.get_pixel_range();
    let style = TextStyle::from((FONT, 22).into_font())
        .color(&RGBColor(120, 120, 120))
        .pos(Pos::new(HPos::Center, VPos::Center));
    let centre = ((x.start + x.end) / 2, (y.start + y.end) / 2);
    root.draw(&Text::new("no data", centre, style))?;
    Ok(())
}

/// Writes `chart` to `path` as an 800x500 PNG.
pub fn line_chart(path: &Path, chart: &LineChart) -> Result<(), PlotError> {
    let lines: Vec<Vec<(f64, f64)>> = chart
        .series
        .iter()
        .map(|s| {
            let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
            s.points.iter().filter(finite).copied().collect()
        })
        .collect();
    let all = || lines.iter().flatten();
    let x = span(all().map(|p| p.0), 0.04);
    let y = chart
        .y_range
        .filter(|(lo, hi)| lo.is_finite() && hi.is_finite() && lo < hi)
        .unwrap_or_else(|| span(all().map(|p| p.1), 0.08));
    let has_data = all().next().is_some();
    render(path, |root| {
        let mut c = ChartBuilder::on(root)
            .caption(chart.title, (FONT, 24))
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
        c.configure_mesh()
            .x_desc(chart.x_label)
            .y_desc(chart.y_label)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(RGBColor(242, 242, 242))
            .max_light_lines(1)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .bold_line_style(RGBColor(210, 210, 210))
            .draw()?;
        let mut guides = Vec::new();
        if chart.diagonal {
            let (lo, hi) = (x.0.max(y.0), x.1.min(y.1));
            if lo < hi {
                let grey = RGBColor(150, 150, 150).stroke_width(1);
                c.draw_series(DashedLineSeries::new([(lo, lo), (hi, hi)], 8, 6, grey))?;
                guides.push(vec![(lo, lo), (hi, hi)]);
            }
        }
        if !has_data {
            return no_data(root, c.plotting_area());
        }
        for (i, (series, points)) in chart.series.iter().zip(&lines).enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            // Earlier series are drawn wider, so that a later one on top leaves them visible.
            let width = 2 + (chart.series.len() - 1 - i).min(3) as u32;
            let line = colour.stroke_width(width);
            c.draw_series(LineSeries::new(points.iter().copied(), line))?;
            let stub = move |p: (i32, i32)| {
                EmptyElement::at(p) + PathElement::new([(-12, 0), (12, 0)], colour.stroke_width(2))
            };
            let name = series.name.as_str();
            // Markers differ per series so that overlapping lines stay distinguishable.
            match i % 4 {
                0 => {
                    let style = colour.filled();
                    c.draw_series(points.iter().map(|&p| Circle::new(p, 7, style)))?
                        .label(name)
                        .legend(move |p| stub(p) + Circle::new((0, 0), 7, style));
                }
                1 => {
                    let style = colour.filled();
                    c.draw_series(points.iter().map(|&p| TriangleMarker::new(p, 7, style)))?
                        .label(name)
                        .legend(move |p| stub(p) + TriangleMarker::new((0, 0), 7, style));
                }
                2 => {
                    let style = colour.stroke_width(3);
                    c.draw_series(points.iter().map(|&p| Cross::new(p, 5, style)))?
                        .label(name)
                        .legend(move |p| stub(p) + Cross::new((0, 0), 5, style));
                }
                _ => {
                    let style = colour.stroke_width(2);
                    c.draw_series(points.iter().map(|&p| Circle::new(p, 9, style)))?
                        .label(name)
                        .legend(move |p| stub(p) + Circle::new((0, 0), 9, style));
                }
            }
        }
        guides.extend(lines.iter().cloned());
        c.configure_series_labels()
            .position(legend_corner(&guides, x, y, chart.series.len()))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FONT, 15))
            .margin(12)
            .draw()?;
        Ok(())
    })
}

/// Writes a grouped bar chart to `path` as an 800x500 PNG: one cluster per `group`, one colour
/// per `variant` (both in order of first appearance), bars from 0 to the median with min–max
/// whiskers. Bars with a non-finite median are skipped.
pub fn bar_chart(path: &Path, title: &str, y_label: &str, bars: &[Bar]) -> Result<(), PlotError> {
    let bars: Vec<&Bar> = bars.iter().filter(|b| b.median.is_finite()).collect();
    let mut groups: Vec<&str> = Vec::new();
    let mut variants: Vec<&str> = Vec::new();
    for b in &bars {
        if !groups.contains(&b.group.as_str()) {
            groups.push(&b.group);
        }
        if !variants.contains(&b.variant.as_str()) {
            variants.push(&b.variant);
        }
    }
    let top = bars
        .iter()
        .flat_map(|b| [b.median, b.max])
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    // Headroom above the tallest whisker for the legend.
    let top = if top > 0.0 {
        top * (1.12 + 0.07 * variants.len() as f64)
    } else {
        1.0
    };
    let n = groups.len().max(1) as f64;
    let slot = 0.8 / variants.len().max(1) as f64;
    let centre = |b: &Bar| {
        let g = groups.iter().position(|g| *g == b.group).unwrap_or(0) as f64;
        let v = variants.iter().position(|v| *v == b.variant).unwrap_or(0) as f64;
        g - 0.4 + (v + 0.5) * slot
    };
    render(path, |root| {
        let mut c = ChartBuilder::on(root)
            .caption(title, (FONT, 24))
            .margin(18)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5..n - 0.5, 0.0..top)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_label)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(RGBColor(242, 242, 242))
            .max_light_lines(1)
            .y_label_formatter(&tick)
            .bold_line_style(RGBColor(210, 210, 210))
            .draw()?;
        if bars.is_empty() {
            return no_data(root, c.plotting_area());
        }
        // Group names under their clusters (the numeric x axis has no labels of its own).
        let name_style =
            TextStyle::from((FONT, 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (i, group) in groups.iter().enumerate() {
            let (x, y) = c.backend_coord(&(i as f64, 0.0));
            root.draw(&Text::new(
                group.to_string(),
                (x, y + 10),
                name_style.clone(),
            ))?;
        }
        let half = slot * 0.45;
        let whisker = RGBColor(40, 40, 40).stroke_width(2);
        for (i, variant) in variants.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let mine: Vec<&&Bar> = bars.iter().filter(|b| b.variant == *variant).collect();
            c.draw_series(mine.iter().map(|b| {
                let x = centre(b);
                Rectangle::new([(x - half, 0.0), (x + half, b.median)], colour.filled())
            }))?
            .label(*variant)
            .legend(move |(x, y)| {
                Rectangle::new([(x - 7, y - 7), (x + 7, y + 7)], colour.filled())
            });
            let ranged = mine
                .iter()
                .filter(|b| b.min.is_finite() && b.max.is_finite());
            c.draw_series(ranged.flat_map(|b| {
                let (x, cap) = (centre(b), half * 0.4);
                [
                    PathElement::new([(x, b.min), (x, b.max)], whisker),
                    PathElement::new([(x - cap, b.min), (x + cap, b.min)], whisker),
                    PathElement::new([(x - cap, b.max), (x + cap, b.max)], whisker),
                ]
            }))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FONT, 15))
            .margin(12)
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_png(path: &Path) {
        let image = image::open(path).expect("decodes").to_rgb8();
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        let first = *image.get_pixel(0, 0);
        assert!(image.pixels().any(|p| *p != first), "a flat image");
    }

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.into(),
            points: points.to_vec(),
        }
    }

    #[test]
    fn a_line_chart_is_a_png_of_the_requested_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lines.png");
        let s = [
            series("off", &[(0.0, 1.0), (0.5, 0.8), (1.0, 0.4)]),
            series("rule", &[(0.0, 1.0), (0.5, f64::NAN), (1.0, 0.7)]),
            series("learned", &[(0.0, 0.9), (f64::INFINITY, 0.5), (1.0, 0.8)]),
            series("empty", &[]),
        ];
        let chart = LineChart {
            title: "accuracy",
            x_label: "sigma",
            y_label: "accuracy",
            y_range: Some((0.0, 1.05)),
            diagonal: false,
            series: &s,
        };
        line_chart(&path, &chart).unwrap();
        check_png(&path);
    }

    #[test]
    fn empty_and_all_nan_charts_still_write_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let nan = [series("nan", &[(f64::NAN, 1.0), (0.0, f64::NAN)])];
        for (name, s) in [("none.png", &[][..]), ("nan.png", &nan[..])] {
            let chart = LineChart {
                title: "nothing",
                x_label: "x",
                y_label: "y",
                y_range: None,
                diagonal: false,
                series: s,
            };
            line_chart(&dir.path().join(name), &chart).unwrap();
            check_png(&dir.path().join(name));
        }
        bar_chart(&dir.path().join("bars.png"), "nothing", "ms", &[]).unwrap();
        check_png(&dir.path().join("bars.png"));
    }

    #[test]
    fn a_roc_chart_with_the_diagonal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roc.png");
        let s = [series(
            "hidden (AUC 0.75)",
            &[(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)],
        )];
        let chart = LineChart {
            title: "ROC",
            x_label: "false positive rate",
            y_label: "true positive rate",
            y_range: Some((0.0, 1.0)),
            diagonal: true,
            series: &s,
        };
        line_chart(&path, &chart).unwrap();
        check_png(&path);
    }

    #[test]
    fn a_grouped_bar_chart_with_whiskers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.png");
        let bar = |group: &str, variant: &str, median: f64| Bar {
            group: group.into(),
            variant: variant.into(),
            median,
            min: median * 0.9,
            max: median * 1.2,
        };
        let bars = [
            bar("prefill", "off", 120.0),
            bar("prefill", "rule", 180.0),
            bar("decode", "off", 40.0),
            bar("decode", "rule", 42.0),
            bar("decode", "learned", f64::NAN),
        ];
        bar_chart(&path, "latency", "milliseconds", &bars).unwrap();
        check_png(&path);
    }

    #[test]
    fn the_legend_avoids_the_data() {
        let falling = vec![vec![(0.0, 1.0), (0.5, 0.6), (1.0, 0.1)]];
        let corner = legend_corner(&falling, (0.0, 1.0), (0.0, 1.0), 2);
        assert!(matches!(corner, SeriesLabelPosition::UpperRight));
        let rising = vec![vec![(0.0, 0.0), (1.0, 1.0)], vec![(0.0, 0.0), (0.1, 0.9)]];
        let corner = legend_corner(&rising, (0.0, 1.0), (0.0, 1.0), 2);
        assert!(matches!(corner, SeriesLabelPosition::LowerRight));
    }
}
