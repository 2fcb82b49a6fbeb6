//! The benchmark's "convergence over time" chart, as a PNG.
//!
//! Drawing is `plotters`' in-memory bitmap backend, with text through its
//! ab_glyph path and a Noto Sans compiled into the binary: no system font,
//! no C library, and the same picture on every machine. The PNG is encoded
//! here with `png` rather than through plotters' `image`-based encoder,
//! which only writes files and would bring a second PNG stack.
//!
//! The axes are laid out here, not by plotters: its float ticks collapse
//! to a single one for any span under `f64::EPSILON` (absolute, so data in
//! the 1e-17 range gets one tick) and are printed without exponents (a
//! 300-digit label for 1e300). Plotters only draws the grid at these ticks
//! and maps data to pixels.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

/// One series: a label and (x, y) points, x ascending.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
}

#[derive(Debug, Clone)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series<'a>>,
    /// optional horizontal reference line (e.g. the total) with its label
    pub target: Option<(f64, &'a str)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("nothing to plot: no series has a point with finite x and y")]
    NoPoints,
    /// The data spans more than an `f64` can hold (e.g. -1e308..1e308), so
    /// no axis can be laid out for it.
    #[error("the {axis} range of the data cannot be laid out as an axis")]
    Range { axis: &'static str },
    #[error("drawing the chart failed: {0}")]
    Draw(String),
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
}

/// Plotters' errors carry the backend's error type; callers only need to
/// know what went wrong.
impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for PlotError {
    fn from(err: DrawingAreaErrorKind<E>) -> Self {
        PlotError::Draw(err.to_string())
    }
}

/// Renders the chart as a PNG (900x540): title, axes with "nice" ticks
/// (1, 2, 5 x 10^k) and their labels, one coloured line per series with a
/// legend above the plot, and the target as a dashed line with its label.
///
/// Points with a NaN or infinite coordinate are skipped and break their
/// line. A single point or constant data is drawn in a padded range.
pub fn render_png(chart: &Chart) -> Result<Vec<u8>, PlotError> {
    let (rgb, _frame) = rasterise(chart)?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// Look

const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;
/// The name plotters looks fonts up by; registered with the embedded face.
const FONT: &str = "sans-serif";
const TITLE_SIZE: f64 = 22.0;
const TEXT_SIZE: f64 = 16.0;
const MARGIN: i32 = 12;
const GAP: i32 = 6;
/// Series lines are 2 px wide so they stand out from the 1 px grid.
const LINE_WIDTH: u32 = 2;
const SWATCH_W: i32 = 22;
const LEGEND_GAP: i32 = 24;

const TEXT: RGBColor = RGBColor(20, 20, 20);
const AXIS: RGBColor = RGBColor(60, 60, 60);
const GRID: RGBColor = RGBColor(228, 228, 228);
const TARGET: RGBColor = RGBColor(110, 110, 110);
/// Well-separated colours (matplotlib's "tab10" start), cycled per series.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn series_colour(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

fn text_style(size: f64) -> TextStyle<'static> {
    (FONT, size).into_font().color(&TEXT)
}

/// Plotters keeps ab_glyph fonts in a process-wide table that starts empty;
/// without this every text draw fails with "FontUnavailable".
fn register_embedded_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| register_font(FONT, FontStyle::Normal, ttf_noto_sans::REGULAR).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Draw(
            "the embedded Noto Sans font could not be loaded".into(),
        ))
    }
}

fn is_plottable(point: &(f64, f64)) -> bool {
    point.0.is_finite() && point.1.is_finite()
}

/// The target, unless its value is NaN or infinite (then it is not drawn).
fn finite_target<'a>(chart: &Chart<'a>) -> Option<(f64, &'a str)> {
    chart.target.filter(|(value, _)| value.is_finite())
}

// ---------------------------------------------------------------------------
// Axes

/// One axis: its range (from the first to the last tick) and the ticks.
#[derive(Debug, Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    step: f64,
    /// Largest absolute value on the axis; decides the digits in labels.
    magnitude: f64,
}

impl Axis {
    /// The axis for data spanning `lo..=hi`, padded first if the span is
    /// too small to divide into ticks.
    fn fit(lo: f64, hi: f64) -> Option<Axis> {
        let (lo, hi) = padded(lo, hi);
        nice_axis(lo, hi)
    }

    fn label(&self, value: f64) -> String {
        tick_label(value, self.step, self.magnitude)
    }
}

/// Hands plotters these ticks as its grid and labels (no light lines in
/// between); the pixel mapping is plotters' own.
impl Ranged for Axis {
    // Labels come from `Axis::label` through the mesh's formatters.
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.lo..self.hi).map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            vec![]
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Both axes, fitted to the finite points and the target (which widens the
/// y range so its line is always inside the plot).
fn fit_axes(chart: &Chart) -> Result<(Axis, Axis), PlotError> {
    let mut points = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| is_plottable(p));
    let &(x0, y0) = points.next().ok_or(PlotError::NoPoints)?;
    let widen = |(lo, hi): (f64, f64), v: f64| (lo.min(v), hi.max(v));
    let (mut x, mut y) = ((x0, x0), (y0, y0));
    for &(px, py) in points {
        x = widen(x, px);
        y = widen(y, py);
    }
    if let Some((value, _)) = finite_target(chart) {
        y = widen(y, value);
    }
    let x = Axis::fit(x.0, x.1).ok_or(PlotError::Range { axis: "x" })?;
    let y = Axis::fit(y.0, y.1).ok_or(PlotError::Range { axis: "y" })?;
    Ok((x, y))
}

/// Widens a degenerate range (one point, constant data) around its value.
///
/// A span below a billionth of the magnitude would produce ticks that `f64`
/// can barely tell apart, and one below `TINY_SPAN` needs steps of 10^k deep
/// in the subnormals, where `powi` loses all precision: both are treated as
/// constant. Non-negative data stays non-negative, since counts are the
/// usual content and a negative axis for them would look like a bug.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    const RELATIVE_SPAN: f64 = 1e-9;
    const TINY_SPAN: f64 = 1e-200;
    let magnitude = lo.abs().max(hi.abs());
    let span = hi - lo;
    if span > magnitude * RELATIVE_SPAN && span > TINY_SPAN {
        return (lo, hi);
    }
    let pad = if magnitude > TINY_SPAN {
        magnitude * 0.1
    } else {
        1.0
    };
    let padded_lo = if lo >= 0.0 {
        (lo - pad).max(0.0)
    } else {
        lo - pad
    };
    (padded_lo, hi + pad)
}

/// At most this many tick intervals per axis; with the 1-2-5 sequence the
/// chosen step then yields between 4 and 8 intervals (5 to 9 ticks).
const MAX_INTERVALS: f64 = 8.0;

/// Ticks at multiples of the smallest step of the form {1, 2, 5} x 10^k
/// that covers `lo..=hi` in at most `MAX_INTERVALS` intervals. `None` when
/// the span is not a positive finite number or the ticks would overflow.
fn nice_axis(lo: f64, hi: f64) -> Option<Axis> {
    let raw_step = (hi - lo) / MAX_INTERVALS;
    if !(raw_step.is_finite() && raw_step > 0.0) {
        return None;
    }
    let decade = 10f64.powi(raw_step.log10().floor() as i32);
    // 10 and 20 are there in case rounding put `decade` one power too low.
    [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
        .into_iter()
        .find_map(|mantissa| axis_with_step(lo, hi, mantissa * decade))
}

fn axis_with_step(lo: f64, hi: f64, step: f64) -> Option<Axis> {
    // Absorbs rounding such as 1.1 / 0.1 = 11.000000000000002, which would
    // otherwise add a needless tick.
    const SLACK: f64 = 1e-9;
    if !(step.is_finite() && step > 0.0) {
        return None;
    }
    let first = (lo / step + SLACK).floor();
    let last = (hi / step - SLACK).ceil();
    let intervals = last - first;
    if !(1.0..=MAX_INTERVALS).contains(&intervals) {
        return None;
    }
    let (axis_lo, axis_hi) = (first * step, last * step);
    // Plotters maps through `hi - lo`, which must not overflow either.
    if !(axis_lo.is_finite() && axis_hi.is_finite() && (axis_hi - axis_lo).is_finite())
        || axis_lo >= axis_hi
    {
        return None;
    }
    let ticks = (0..=intervals as u32)
        .map(|i| (first + f64::from(i)) * step)
        .collect();
    Some(Axis {
        lo: axis_lo,
        hi: axis_hi,
        ticks,
        step,
        magnitude: axis_lo.abs().max(axis_hi.abs()),
    })
}

/// A tick value with just the decimals its step needs ("0.5", "2000"),
/// or in exponent form ("1.5e12", "2.0e-7") when that would be long.
fn tick_label(value: f64, step: f64, magnitude: f64) -> String {
    const MAX_FIXED_CHARS: usize = 9;
    // Rounding residue like 3e-17 in place of 0 must not print as "3e-17".
    if value.abs() < step * 1e-6 {
        return "0".to_string();
    }
    let decimals = (-step.log10() - 1e-9).ceil().max(0.0) as usize;
    let fixed = format!("{value:.decimals$}");
    if fixed.len() <= MAX_FIXED_CHARS {
        return fixed;
    }
    let digits = (magnitude.log10().floor() - step.log10().floor()).clamp(0.0, 12.0) as usize;
    format!("{value:.digits$e}")
}

// ---------------------------------------------------------------------------
// Drawing

/// Where the plot landed, so tests can map data to pixels.
#[derive(Debug)]
#[cfg_attr(not(test), expect(dead_code, reason = "only the tests look"))]
struct Frame {
    x: Axis,
    y: Axis,
    /// The plot's pixel columns and rows, as plotters reports them.
    columns: std::ops::Range<i32>,
    rows: std::ops::Range<i32>,
}

/// Draws the chart into an RGB8 buffer of `WIDTH` x `HEIGHT`.
fn rasterise(chart: &Chart) -> Result<(Vec<u8>, Frame), PlotError> {
    let (x, y) = fit_axes(chart)?;
    register_embedded_font()?;
    let mut rgb = vec![0; WIDTH as usize * HEIGHT as usize * 3];
    let (columns, rows) = {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let pixels = draw(&root, chart, &x, &y)?;
        root.present()?;
        pixels
    };
    let frame = Frame {
        x,
        y,
        columns,
        rows,
    };
    Ok((rgb, frame))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Title, legend, then the plot in the space left; returns the plot's
/// pixel ranges.
fn draw(
    root: &Area,
    chart: &Chart,
    x: &Axis,
    y: &Axis,
) -> Result<(std::ops::Range<i32>, std::ops::Range<i32>), PlotError> {
    let text = text_style(TEXT_SIZE);
    let body = root
        .margin(MARGIN, MARGIN, MARGIN, MARGIN)
        .titled(chart.title, text_style(TITLE_SIZE))?;

    // The left label area holds the rotated y label and the y tick labels,
    // right-aligned against the axis; the right margin leaves room for
    // half of the last x tick label, which is centred on the axis end.
    let text_w = |s: &str| root.estimate_text_size(s, &text).map(|(w, _)| w as i32);
    let mut widest_y = 0;
    for &value in &y.ticks {
        widest_y = widest_y.max(text_w(&y.label(value))?);
    }
    let left = TEXT_SIZE as i32 + 2 * GAP + widest_y + GAP;
    let last_x = x.ticks.last().map_or(Ok(0), |&v| text_w(&x.label(v)))?;
    let right = MARGIN.max(last_x / 2 + GAP);

    let legend_h = draw_legend(&body, chart, left, &text)?;
    let (_, plot) = body.split_vertically(legend_h);
    let mut cc = ChartBuilder::on(&plot)
        // Room for the target's label should the target be the y maximum.
        .margin_top(TEXT_SIZE as i32 + 2 * GAP)
        .margin_right(right)
        .x_label_area_size(2 * TEXT_SIZE as i32 + 3 * GAP)
        .y_label_area_size(left)
        .build_cartesian_2d(x.clone(), y.clone())?;
    let (x_fmt, y_fmt) = (|v: &f64| x.label(*v), |v: &f64| y.label(*v));
    cc.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(text.clone())
        .axis_desc_style(text.clone())
        .bold_line_style(GRID)
        .axis_style(AXIS)
        .draw()?;

    // The target goes under the curves, its label over them.
    let target = finite_target(chart).map(|(value, label)| ([(x.lo, value), (x.hi, value)], label));
    if let Some((line, _)) = target {
        cc.draw_series(DashedLineSeries::new(
            line,
            8,
            5,
            TARGET.stroke_width(LINE_WIDTH),
        ))?;
    }

    for (index, series) in chart.series.iter().enumerate() {
        let style = series_colour(index).stroke_width(LINE_WIDTH);
        // A run of one point (a single sample, or one isolated by NaNs)
        // would be an invisible zero-length line: it gets a dot instead.
        for run in series.points.split(|p| !is_plottable(p)) {
            match run {
                [] => {}
                [point] => {
                    cc.draw_series([Circle::new(*point, 3, style.filled())])?;
                }
                _ => {
                    cc.draw_series(LineSeries::new(run.iter().copied(), style))?;
                }
            }
        }
    }
    if let Some((line, label)) = target {
        draw_target_label(root, &cc.backend_coord(&line[1]), label, &text)?;
    }
    Ok(cc.plotting_area().get_pixel_range())
}

/// Entries flow left to right from `left` (the plot's left edge), wrapping
/// when one does not fit. Returns the height used. Rows beyond a third of
/// the image are dropped, so that no number of series squeezes the plot
/// out.
fn draw_legend(area: &Area, chart: &Chart, left: i32, text: &TextStyle) -> Result<i32, PlotError> {
    let row_h = TEXT_SIZE as i32 + GAP;
    let max_h = HEIGHT as i32 / 3;
    let right = area.dim_in_pixel().0 as i32;
    let (mut x, mut y) = (left, 0);
    let label_style = text.pos(Pos::new(HPos::Left, VPos::Center));
    for (index, series) in chart.series.iter().enumerate() {
        let (label_w, _) = area.estimate_text_size(series.label, text)?;
        let width = SWATCH_W + GAP + label_w as i32;
        if x > left && x + width > right {
            x = left;
            y += row_h;
        }
        if y + row_h > max_h {
            break;
        }
        let mid = y + row_h / 2;
        area.draw(&PathElement::new(
            [(x, mid), (x + SWATCH_W, mid)],
            series_colour(index).stroke_width(4),
        ))?;
        area.draw_text(series.label, &label_style, (x + SWATCH_W + GAP, mid))?;
        x += width + LEGEND_GAP;
    }
    Ok(if chart.series.is_empty() {
        0
    } else {
        (y + row_h).min(max_h)
    })
}

/// The label sits just above the line's right end, on a white backing so
/// grid lines do not run through it. Below the line it would cover the
/// curves' plateau whenever the target is the y maximum, as the total is in
/// a converged cold start; the plot's top margin leaves room for it then.
fn draw_target_label(
    root: &Area,
    &(right_end, y): &(i32, i32),
    label: &str,
    text: &TextStyle,
) -> Result<(), PlotError> {
    let (w, h) = root.estimate_text_size(label, text)?;
    let (w, h) = (w as i32, h as i32);
    let (x0, y0) = (right_end - GAP - w, y - LINE_WIDTH as i32 - 2 - h);
    root.draw(&Rectangle::new(
        [(x0 - 2, y0), (x0 + w + 2, y0 + h + 1)],
        WHITE.filled(),
    ))?;
    let style = text.color(&TARGET).pos(Pos::new(HPos::Left, VPos::Top));
    root.draw_text(label, &style, (x0, y0))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Rgb = [u8; 3];

    fn rgb(c: RGBColor) -> Rgb {
        [c.0, c.1, c.2]
    }

    /// A convergence-shaped curve: fast rise, then a plateau at `total`.
    fn convergence(total: f64, seconds: usize) -> Vec<(f64, f64)> {
        (0..=seconds)
            .map(|s| {
                let t = s as f64;
                (t, (total * (1.0 - (-t / 6.0).exp())).round())
            })
            .collect()
    }

    fn chart<'a>(series: Vec<Series<'a>>, target: Option<(f64, &'a str)>) -> Chart<'a> {
        Chart {
            title: "Convergence over time",
            x_label: "time (s)",
            y_label: "ports converged",
            series,
            target,
        }
    }

    /// Decodes a PNG into (width, height, RGB8 pixels).
    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn pixel(rgb: &[u8], (x, y): (i32, i32)) -> Rgb {
        let i = (y as usize * WIDTH as usize + x as usize) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    }

    impl Frame {
        /// The pixel of a data point, by the same linear map plotters uses
        /// (up to rounding).
        fn to_px(&self, (x, y): (f64, f64)) -> (i32, i32) {
            let along = |v: f64, axis: &Axis, from: i32, to: i32| {
                from + ((v - axis.lo) / (axis.hi - axis.lo) * f64::from(to - from)).round() as i32
            };
            (
                along(x, &self.x, self.columns.start, self.columns.end - 1),
                along(y, &self.y, self.rows.end - 1, self.rows.start),
            )
        }
    }

    /// Whether `colour` is within one pixel of `at`: lines are 2 px wide
    /// and plotters rounds its own way.
    fn has_colour_near(rgb: &[u8], at: (i32, i32), colour: RGBColor) -> bool {
        (-1..=1).any(|dx| {
            (-1..=1).any(|dy| pixel(rgb, (at.0 + dx, at.1 + dy)) == super::tests::rgb(colour))
        })
    }

    fn tick_values(lo: f64, hi: f64) -> Vec<f64> {
        nice_axis(lo, hi).unwrap().ticks
    }

    fn tick_labels(lo: f64, hi: f64) -> Vec<String> {
        let axis = Axis::fit(lo, hi).unwrap();
        axis.ticks.iter().map(|&v| axis.label(v)).collect()
    }

    #[test]
    fn png_decodes_to_canvas_size_with_white_background() {
        let points = convergence(11004.0, 40);
        let series = vec![Series {
            label: "ports",
            points: &points,
        }];
        let (width, height, rgb) =
            decode(&render_png(&chart(series, Some((11004.0, "total")))).unwrap());
        assert_eq!((width, height), (WIDTH, HEIGHT));
        assert_eq!(rgb.len(), (WIDTH * HEIGHT * 3) as usize);
        for corner in [(0, 0), (899, 0), (0, 539), (899, 539)] {
            assert_eq!(pixel(&rgb, corner), [255; 3], "corner {corner:?}");
        }
    }

    #[test]
    fn plotted_points_have_their_series_colour() {
        let rising: Vec<(f64, f64)> = (0..=10)
            .map(|x| (f64::from(x), f64::from(x) * 10.0))
            .collect();
        let falling: Vec<(f64, f64)> = (0..=10)
            .map(|x| (f64::from(x), 100.0 - f64::from(x) * 10.0))
            .collect();
        let chart = chart(
            vec![
                Series {
                    label: "rising",
                    points: &rising,
                },
                Series {
                    label: "falling",
                    points: &falling,
                },
            ],
            None,
        );
        let (rgb, frame) = rasterise(&chart).unwrap();
        assert!(has_colour_near(&rgb, frame.to_px((2.0, 20.0)), PALETTE[0]));
        assert!(has_colour_near(&rgb, frame.to_px((8.0, 20.0)), PALETTE[1]));
        // The end points too, even where they sit on the axes.
        assert!(has_colour_near(&rgb, frame.to_px((0.0, 0.0)), PALETTE[0]));
        assert!(has_colour_near(&rgb, frame.to_px((10.0, 0.0)), PALETTE[1]));
        // And nowhere near a point neither line passes.
        assert!(!has_colour_near(&rgb, frame.to_px((2.0, 50.0)), PALETTE[0]));
    }

    #[test]
    fn a_nan_breaks_the_line() {
        let points = [
            (0.0, 0.0),
            (1.0, 10.0),
            (2.0, f64::NAN),
            (3.0, 10.0),
            (4.0, 0.0),
        ];
        let (rgb, frame) = rasterise(&chart(
            vec![Series {
                label: "gap",
                points: &points,
            }],
            None,
        ))
        .unwrap();
        assert!(has_colour_near(&rgb, frame.to_px((0.5, 5.0)), PALETTE[0]));
        assert!(has_colour_near(&rgb, frame.to_px((3.5, 5.0)), PALETTE[0]));
        // Joining (1, 10) to (3, 10) would run through (2, 10).
        assert!(!has_colour_near(&rgb, frame.to_px((2.0, 10.0)), PALETTE[0]));
    }

    #[test]
    fn the_target_is_a_dashed_line() {
        let points = convergence(100.0, 20);
        let (rgb, frame) = rasterise(&chart(
            vec![Series {
                label: "ports",
                points: &points,
            }],
            Some((50.0, "half")),
        ))
        .unwrap();
        let (_, row) = frame.to_px((0.0, 50.0));
        // Left half only: the label sits at the right end.
        let middle = (frame.columns.start + frame.columns.end) / 2;
        let on = (frame.columns.start..middle)
            .filter(|&x| has_colour_near(&rgb, (x, row), TARGET))
            .count();
        let span = (middle - frame.columns.start) as usize;
        assert!(on > span / 3 && on < span * 9 / 10, "{on} of {span}");
    }

    #[test]
    fn text_is_drawn() {
        let points = convergence(100.0, 20);
        let (rgb, frame) = rasterise(&chart(
            vec![Series {
                label: "ports",
                points: &points,
            }],
            None,
        ))
        .unwrap();
        let dark = |xs: std::ops::Range<i32>, ys: std::ops::Range<i32>| {
            xs.flat_map(|x| ys.clone().map(move |y| (x, y)))
                .filter(|&p| pixel(&rgb, p).iter().all(|&c| c < 100))
                .count()
        };
        // Title, y tick labels, x tick labels.
        assert!(dark(0..WIDTH as i32, 0..frame.rows.start - 30) > 50);
        assert!(dark(0..frame.columns.start - 8, frame.rows.clone()) > 50);
        assert!(dark(frame.columns.clone(), frame.rows.end + 4..HEIGHT as i32) > 50);
    }

    #[test]
    fn nice_ticks() {
        let table: &[(f64, f64, &[f64])] = &[
            (
                0.0,
                11004.0,
                &[0.0, 2000.0, 4000.0, 6000.0, 8000.0, 10000.0, 12000.0],
            ),
            (
                0.0,
                39.7,
                &[0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0],
            ),
            (0.0, 1.0, &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
            (-3.2, 7.9, &[-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]),
            (
                0.001,
                0.0042,
                &[0.001, 0.0015, 0.002, 0.0025, 0.003, 0.0035, 0.004, 0.0045],
            ),
            (
                1e6,
                1e6 + 60.0,
                &[
                    1e6,
                    1e6 + 10.0,
                    1e6 + 20.0,
                    1e6 + 30.0,
                    1e6 + 40.0,
                    1e6 + 50.0,
                    1e6 + 60.0,
                ],
            ),
            (0.0, 100.0, &[0.0, 20.0, 40.0, 60.0, 80.0, 100.0]),
        ];
        for &(lo, hi, expected) in table {
            let ticks = tick_values(lo, hi);
            assert_eq!(ticks.len(), expected.len(), "{lo}..{hi}: {ticks:?}");
            for (got, want) in ticks.iter().zip(expected) {
                assert!(
                    (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                    "{lo}..{hi}: {ticks:?}"
                );
            }
        }
    }

    #[test]
    fn tick_labels_use_only_the_decimals_the_step_needs() {
        assert_eq!(
            tick_labels(0.0, 11004.0),
            ["0", "2000", "4000", "6000", "8000", "10000", "12000"]
        );
        assert_eq!(
            tick_labels(0.0, 1.0),
            ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]
        );
        assert_eq!(tick_labels(-1.0, 1.0), ["-1.0", "-0.5", "0", "0.5", "1.0"]);
        assert_eq!(
            tick_labels(0.0, 3e12),
            [
                "0", "5.0e11", "1.0e12", "1.5e12", "2.0e12", "2.5e12", "3.0e12"
            ]
        );
    }

    #[test]
    fn degenerate_ranges_are_padded() {
        // Constant non-negative data keeps a zero floor.
        assert_eq!(
            tick_labels(0.0, 0.0),
            ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]
        );
        assert_eq!(
            tick_labels(5.0, 5.0),
            ["4.4", "4.6", "4.8", "5.0", "5.2", "5.4", "5.6"]
        );
        assert_eq!(
            tick_labels(-5.0, -5.0),
            ["-5.6", "-5.4", "-5.2", "-5.0", "-4.8", "-4.6", "-4.4"]
        );
        assert!(Axis::fit(5e-324, 5e-324).is_some());
        assert!(Axis::fit(1e300, 1e300).is_some());
    }

    #[test]
    fn single_point_and_constant_data_render() {
        let single = [(3.0, 7.0)];
        let constant = [(0.0, 42.0), (1.0, 42.0), (2.0, 42.0)];
        for points in [&single[..], &constant[..]] {
            let series = vec![Series { label: "s", points }];
            let (width, height, _) = decode(&render_png(&chart(series, None)).unwrap());
            assert_eq!((width, height), (WIDTH, HEIGHT));
        }
        // The lone point is drawn, as a dot.
        let (rgb, frame) = rasterise(&chart(
            vec![Series {
                label: "s",
                points: &single,
            }],
            None,
        ))
        .unwrap();
        assert!(has_colour_near(&rgb, frame.to_px(single[0]), PALETTE[0]));
    }

    #[test]
    fn nothing_to_plot_is_an_error() {
        let nan = [(f64::NAN, 1.0), (2.0, f64::NAN), (f64::INFINITY, 3.0)];
        let cases: Vec<Vec<Series>> = vec![
            vec![],
            vec![Series {
                label: "empty",
                points: &[],
            }],
            vec![Series {
                label: "nan",
                points: &nan,
            }],
        ];
        for series in cases {
            let err = render_png(&chart(series, Some((10.0, "total")))).unwrap_err();
            assert!(matches!(err, PlotError::NoPoints), "{err}");
        }
    }

    #[test]
    fn a_span_beyond_f64_is_an_error() {
        for (points, axis) in [
            ([(0.0, -1e308), (1.0, 1e308)], "y"),
            ([(-1e308, 0.0), (1e308, 1.0)], "x"),
        ] {
            let err = render_png(&chart(
                vec![Series {
                    label: "huge",
                    points: &points,
                }],
                None,
            ))
            .unwrap_err();
            assert!(
                matches!(err, PlotError::Range { axis: a } if a == axis),
                "{err}"
            );
        }
    }

    /// Any f64 at all, or a plausible benchmark value.
    fn coordinate() -> impl Strategy<Value = f64> {
        prop_oneof![
            proptest::num::f64::ANY,
            -1e3..1e6f64,
            Just(0.0),
            Just(f64::NAN),
        ]
    }

    proptest! {
        /// Checks `rasterise`, the part of `render_png` that depends on the
        /// data: encoding a buffer of fixed size cannot be upset by it.
        #[test]
        fn random_charts_never_panic(
            series in prop::collection::vec(
                prop::collection::vec((coordinate(), coordinate()), 0..20),
                0..4,
            ),
            target in proptest::option::of(coordinate()),
            label in "[ -~]{0,40}",
        ) {
            let chart = Chart {
                title: &label,
                x_label: &label,
                y_label: &label,
                series: series.iter().map(|points| Series { label: &label, points }).collect(),
                target: target.map(|value| (value, label.as_str())),
            };
            let plottable = series.iter().flatten().any(is_plottable);
            match rasterise(&chart) {
                Ok((rgb, _)) => {
                    prop_assert!(plottable);
                    prop_assert_eq!(rgb.len(), (WIDTH * HEIGHT * 3) as usize);
                }
                Err(PlotError::NoPoints) => prop_assert!(!plottable),
                Err(PlotError::Range { .. }) => prop_assert!(plottable),
                Err(err) => prop_assert!(false, "unexpected error {}", err),
            }
        }
    }
}
