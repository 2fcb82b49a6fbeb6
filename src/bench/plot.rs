//! A small PNG line-chart renderer for the benchmark's "convergence over
//! time" plot.
//!
//! Everything is rasterised here, into an RGB8 buffer with Bresenham lines
//! and a built-in 5x8 bitmap font; only the encoding is left to the `png`
//! crate. The bench thus gains one small pure-Rust dependency instead of a
//! plotting stack that loads fonts or links system libraries, and the output
//! is identical on every machine.

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
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
}

/// Renders the chart as a PNG (900x540), white background, axes with ~5-8 "nice" ticks
/// (1, 2, 5 x 10^k) and numeric tick labels on both axes, the title, axis labels, one coloured
/// polyline per series with a small legend, and the target as a dashed line with its label.
///
/// Points with a NaN or infinite coordinate are skipped and break their
/// polyline. A single point or constant data is drawn in a padded range.
pub fn render_png(chart: &Chart) -> Result<Vec<u8>, PlotError> {
    let (canvas, _frame) = rasterise(chart)?;
    canvas.encode_png()
}

// ---------------------------------------------------------------------------
// Layout

const WIDTH: usize = 900;
const HEIGHT: usize = 540;
const MARGIN: i64 = 12;
const TICK_LEN: i64 = 6;
/// Gap between a tick mark and its label.
const TICK_GAP: i64 = 4;
/// Series lines are 2 px wide so they stand out from the 1 px grid.
const LINE_WIDTH: i64 = 2;
/// Legend colour swatch: a short thick line.
const SWATCH_W: i64 = 18;
const SWATCH_H: i64 = 4;
const LEGEND_GAP: i64 = 20;
/// At most this many tick intervals per axis; with the 1-2-5 sequence the
/// chosen step then yields between 4 and 8 intervals (5 to 9 ticks).
const MAX_INTERVALS: f64 = 8.0;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const TEXT: Rgb = [20, 20, 20];
const AXIS: Rgb = [60, 60, 60];
const GRID: Rgb = [228, 228, 228];
const TARGET: Rgb = [110, 110, 110];
/// Well-separated colours (matplotlib's "tab10" start), cycled per series.
const PALETTE: [Rgb; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];

fn series_colour(index: usize) -> Rgb {
    PALETTE[index % PALETTE.len()]
}

fn is_plottable(point: &(f64, f64)) -> bool {
    point.0.is_finite() && point.1.is_finite()
}

/// The target, unless its value is NaN or infinite (then it is not drawn).
fn finite_target<'a>(chart: &Chart<'a>) -> Option<(f64, &'a str)> {
    chart.target.filter(|(value, _)| value.is_finite())
}

/// Draws the whole chart; also returns the frame so tests can map data
/// coordinates to pixels.
fn rasterise(chart: &Chart) -> Result<(Canvas, Frame), PlotError> {
    let frame = Frame::fit(chart)?;
    let mut canvas = Canvas::new(WIDTH, HEIGHT);
    draw_grid_and_axes(&mut canvas, &frame);
    if let Some((value, label)) = finite_target(chart) {
        draw_target(&mut canvas, &frame, value, label);
    }
    for (index, series) in chart.series.iter().enumerate() {
        draw_series(&mut canvas, &frame, series, series_colour(index));
    }
    draw_legend(&mut canvas, chart, &frame);
    draw_titles(&mut canvas, chart, &frame);
    Ok((canvas, frame))
}

/// Smallest and largest finite coordinates of the data, per axis.
struct Extent {
    x: (f64, f64),
    y: (f64, f64),
}

impl Extent {
    /// `None` when no series has a plottable point. The target widens the
    /// y range so its line is always inside the plot.
    fn of(chart: &Chart) -> Option<Extent> {
        let mut points = chart
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| is_plottable(p));
        let first = points.next()?;
        let mut extent = Extent {
            x: (first.0, first.0),
            y: (first.1, first.1),
        };
        for &(x, y) in points {
            extent.x = widen(extent.x, x);
            extent.y = widen(extent.y, y);
        }
        if let Some((value, _)) = finite_target(chart) {
            extent.y = widen(extent.y, value);
        }
        Some(extent)
    }
}

fn widen((lo, hi): (f64, f64), value: f64) -> (f64, f64) {
    (lo.min(value), hi.max(value))
}

/// One axis: its range (from the first to the last tick) and the ticks with
/// their labels.
#[derive(Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// The axis for data spanning `lo..=hi`, padded first if the span is
    /// too small to divide into ticks.
    fn fit(lo: f64, hi: f64) -> Option<Axis> {
        let (lo, hi) = padded(lo, hi);
        nice_axis(lo, hi)
    }

    /// Where `value` lies on the axis, 0 at `lo` and 1 at `hi`.
    fn fraction(&self, value: f64) -> f64 {
        (value - self.lo) / (self.hi - self.lo)
    }

    fn widest_label(&self) -> i64 {
        self.ticks
            .iter()
            .map(|(_, label)| text_width(label))
            .max()
            .unwrap_or(0)
    }
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
    if !(axis_lo.is_finite() && axis_hi.is_finite() && axis_lo < axis_hi) {
        return None;
    }
    let values: Vec<f64> = (0..=intervals as u32)
        .map(|i| (first + f64::from(i)) * step)
        .collect();
    let magnitude = axis_lo.abs().max(axis_hi.abs());
    let ticks = values
        .into_iter()
        .map(|value| (value, tick_label(value, step, magnitude)))
        .collect();
    Some(Axis {
        lo: axis_lo,
        hi: axis_hi,
        ticks,
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

/// The pixel geometry: where the plot area sits, its axes, and where the
/// legend entries go (their rows decide how far down the plot starts).
struct Frame {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
    x: Axis,
    y: Axis,
    /// Top-left corner of each series' legend entry, in series order.
    legend: Vec<(i64, i64)>,
}

impl Frame {
    fn fit(chart: &Chart) -> Result<Frame, PlotError> {
        let extent = Extent::of(chart).ok_or(PlotError::NoPoints)?;
        let x = Axis::fit(extent.x.0, extent.x.1).ok_or(PlotError::Range { axis: "x" })?;
        let y = Axis::fit(extent.y.0, extent.y.1).ok_or(PlotError::Range { axis: "y" })?;
        // Left: rotated y label, y tick labels, ticks. Right: room for half
        // of the last x tick label, which is centred on the axis end.
        let left = MARGIN + TEXT_H + MARGIN + y.widest_label() + TICK_GAP + TICK_LEN;
        let last_x_label = x.ticks.last().map_or(0, |(_, l)| text_width(l));
        let right = WIDTH as i64 - MARGIN.max(last_x_label / 2 + MARGIN);
        let legend_top = MARGIN + TEXT_H + MARGIN;
        let (legend, legend_bottom) = legend_layout(chart, left, right, legend_top);
        let top = legend_bottom + MARGIN;
        let bottom = HEIGHT as i64 - (MARGIN + TEXT_H + MARGIN + TEXT_H + TICK_GAP + TICK_LEN);
        Ok(Frame {
            left,
            top,
            right,
            bottom,
            x,
            y,
            legend,
        })
    }

    fn x_px(&self, x: f64) -> f64 {
        self.left as f64 + self.x.fraction(x) * (self.right - self.left) as f64
    }

    /// Pixel rows grow downwards, values upwards.
    fn y_px(&self, y: f64) -> f64 {
        self.bottom as f64 - self.y.fraction(y) * (self.bottom - self.top) as f64
    }

    fn to_px(&self, (x, y): (f64, f64)) -> (f64, f64) {
        (self.x_px(x), self.y_px(y))
    }
}

/// Flows the legend entries left to right between `left` and `right`,
/// wrapping to a new row when one does not fit; returns each entry's
/// position and the bottom of the last row.
fn legend_layout(chart: &Chart, left: i64, right: i64, top: i64) -> (Vec<(i64, i64)>, i64) {
    const ROW_H: i64 = TEXT_H + 6;
    let (mut x, mut y) = (left, top);
    let mut positions = Vec::with_capacity(chart.series.len());
    for series in &chart.series {
        let width = legend_entry_width(series.label);
        if x > left && x + width > right {
            x = left;
            y += ROW_H;
        }
        positions.push((x, y));
        x += width + LEGEND_GAP;
    }
    let bottom = if positions.is_empty() { top } else { y + ROW_H };
    (positions, bottom)
}

fn legend_entry_width(label: &str) -> i64 {
    SWATCH_W + TICK_GAP + text_width(label)
}

// ---------------------------------------------------------------------------
// Drawing the chart's parts

fn draw_grid_and_axes(canvas: &mut Canvas, frame: &Frame) {
    let (left, top, right, bottom) = (frame.left, frame.top, frame.right, frame.bottom);
    let mut last_label_end = i64::MIN;
    for (value, label) in &frame.x.ticks {
        let x = frame.x_px(*value).round() as i64;
        canvas.fill_rect(x, top, 1, bottom - top, GRID);
        canvas.fill_rect(x, bottom, 1, TICK_LEN, AXIS);
        // Skip a label that would run into the previous one.
        let width = text_width(label);
        let start = x - width / 2;
        if start > last_label_end + TICK_GAP {
            canvas.text(
                start,
                bottom + TICK_LEN + TICK_GAP,
                label,
                TEXT,
                Direction::Right,
            );
            last_label_end = start + width;
        }
    }
    for (value, label) in &frame.y.ticks {
        let y = frame.y_px(*value).round() as i64;
        canvas.fill_rect(left, y, right - left, 1, GRID);
        canvas.fill_rect(left - TICK_LEN, y, TICK_LEN, 1, AXIS);
        let x = left - TICK_LEN - TICK_GAP - text_width(label);
        canvas.text(x, y - TEXT_H / 2, label, TEXT, Direction::Right);
    }
    canvas.fill_rect(left, top, 1, bottom - top + 1, AXIS);
    canvas.fill_rect(left, bottom, right - left + 1, 1, AXIS);
}

/// A dashed line across the plot, labelled at its right end: above the
/// line, or below it when the line runs along the top of the plot.
fn draw_target(canvas: &mut Canvas, frame: &Frame, value: f64, label: &str) {
    const DASH: i64 = 8;
    const GAP: i64 = 5;
    let y = frame.y_px(value).round() as i64;
    for x in (frame.left..frame.right).step_by((DASH + GAP) as usize) {
        let dash = DASH.min(frame.right - x);
        canvas.fill_rect(x, y - LINE_WIDTH / 2, dash, LINE_WIDTH, TARGET);
    }
    let label_x = frame.right - TICK_GAP - text_width(label);
    let above = y - TICK_GAP - TEXT_H;
    let label_y = if above >= frame.top {
        above
    } else {
        y + TICK_GAP
    };
    // A white backing keeps the label legible over grid lines and curves.
    let pad = SCALE;
    let (w, h) = (text_width(label) + 2 * pad, TEXT_H + 2 * pad);
    canvas.fill_rect(label_x - pad, label_y - pad, w, h, WHITE);
    canvas.text(label_x, label_y, label, TARGET, Direction::Right);
}

/// A polyline through each run of plottable points; a run of one point
/// (a single sample, or one isolated by NaNs) is drawn as a dot.
fn draw_series(canvas: &mut Canvas, frame: &Frame, series: &Series, colour: Rgb) {
    const DOT: i64 = 5;
    for run in series.points.split(|p| !is_plottable(p)) {
        match run {
            [] => {}
            [point] => {
                let (x, y) = frame.to_px(*point);
                let (x, y) = (x.round() as i64, y.round() as i64);
                canvas.fill_rect(x - DOT / 2, y - DOT / 2, DOT, DOT, colour);
            }
            _ => {
                for pair in run.windows(2) {
                    let (a, b) = (frame.to_px(pair[0]), frame.to_px(pair[1]));
                    canvas.line(a, b, LINE_WIDTH, colour);
                }
            }
        }
    }
}

fn draw_legend(canvas: &mut Canvas, chart: &Chart, frame: &Frame) {
    for (index, (series, &(x, y))) in chart.series.iter().zip(&frame.legend).enumerate() {
        let swatch_y = y + (TEXT_H - SWATCH_H) / 2;
        canvas.fill_rect(x, swatch_y, SWATCH_W, SWATCH_H, series_colour(index));
        canvas.text(
            x + SWATCH_W + TICK_GAP,
            y,
            series.label,
            TEXT,
            Direction::Right,
        );
    }
}

/// The title centred at the top, the x label centred under the plot and
/// the y label rotated, reading upwards, centred beside it.
fn draw_titles(canvas: &mut Canvas, chart: &Chart, frame: &Frame) {
    let centre_x = WIDTH as i64 / 2 - text_width(chart.title) / 2;
    canvas.text(centre_x, MARGIN, chart.title, TEXT, Direction::Right);
    let x_label_x = (frame.left + frame.right) / 2 - text_width(chart.x_label) / 2;
    let x_label_y = HEIGHT as i64 - MARGIN - TEXT_H;
    canvas.text(x_label_x, x_label_y, chart.x_label, TEXT, Direction::Right);
    let y_label_bottom = (frame.top + frame.bottom) / 2 + text_width(chart.y_label) / 2;
    canvas.text(MARGIN, y_label_bottom, chart.y_label, TEXT, Direction::Up);
}

// ---------------------------------------------------------------------------
// Rasterising

/// Which way text runs. For `Up` (rotated a quarter turn anticlockwise)
/// the anchor is the bottom-left corner of the text, not the top-left.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Right,
    Up,
}

/// An RGB8 image, rows top to bottom; drawing outside it is clipped.
struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            rgb: WHITE.repeat(width * height),
        }
    }

    fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, colour: Rgb) {
        let clamp = |v: i64, max: usize| v.clamp(0, max as i64) as usize;
        let (x0, x1) = (clamp(x, self.width), clamp(x.saturating_add(w), self.width));
        let (y0, y1) = (
            clamp(y, self.height),
            clamp(y.saturating_add(h), self.height),
        );
        if x0 >= x1 {
            return;
        }
        for row in y0..y1 {
            let start = (row * self.width + x0) * 3;
            let end = (row * self.width + x1) * 3;
            for pixel in self.rgb[start..end].chunks_exact_mut(3) {
                pixel.copy_from_slice(&colour);
            }
        }
    }

    /// A Bresenham line `width` pixels thick (a square stamped at each
    /// step), clipped to the canvas first so far-off coordinates cost
    /// nothing.
    fn line(&mut self, from: (f64, f64), to: (f64, f64), width: i64, colour: Rgb) {
        let bounds = (0.0, 0.0, (self.width - 1) as f64, (self.height - 1) as f64);
        let Some((from, to)) = clip_segment(from, to, bounds) else {
            return;
        };
        let (mut x, mut y) = (from.0.round() as i64, from.1.round() as i64);
        let (x1, y1) = (to.0.round() as i64, to.1.round() as i64);
        let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
        let (sx, sy) = ((x1 - x).signum(), (y1 - y).signum());
        let mut err = dx + dy;
        loop {
            self.fill_rect(x - width / 2, y - width / 2, width, width, colour);
            if x == x1 && y == y1 {
                return;
            }
            let doubled = 2 * err;
            if doubled >= dy {
                err += dy;
                x += sx;
            }
            if doubled <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws `text` with the built-in font at `SCALE`x; `(x, y)` is the
    /// top-left corner for `Right` and the bottom-left one for `Up`.
    fn text(&mut self, x: i64, y: i64, text: &str, colour: Rgb, direction: Direction) {
        for (index, c) in text.chars().enumerate() {
            let origin = index as i64 * ADVANCE;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if (bits >> (GLYPH_W - 1 - col)) & 1 == 0 {
                        continue;
                    }
                    // (along, across): position in the text's own frame.
                    let along = origin + col as i64 * SCALE;
                    let across = row as i64 * SCALE;
                    let (px, py) = match direction {
                        Direction::Right => (x + along, y + across),
                        Direction::Up => (x + across, y - along - SCALE),
                    };
                    self.fill_rect(px, py, SCALE, SCALE, colour);
                }
            }
        }
    }

    fn encode_png(&self) -> Result<Vec<u8>, PlotError> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.rgb)?;
        writer.finish()?;
        Ok(out)
    }
}

/// Liang-Barsky: the part of the segment inside `(x_min, y_min, x_max,
/// y_max)`, or `None` if it misses the box or is not finite.
fn clip_segment(
    from: (f64, f64),
    to: (f64, f64),
    (x_min, y_min, x_max, y_max): (f64, f64, f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (to.0 - from.0, to.1 - from.1);
    if !(from.0.is_finite() && from.1.is_finite() && dx.is_finite() && dy.is_finite()) {
        return None;
    }
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    // Each edge as (p, q): the segment is inside that edge where p*t <= q.
    let edges = [
        (-dx, from.0 - x_min),
        (dx, x_max - from.0),
        (-dy, from.1 - y_min),
        (dy, y_max - from.1),
    ];
    for (p, q) in edges {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else if p < 0.0 {
            t0 = t0.max(q / p);
        } else {
            t1 = t1.min(q / p);
        }
    }
    // The clamp bounds the damage when coordinates near f64::MAX cancel
    // catastrophically: the result may be imprecise, but never far outside
    // the box (which would make the rasteriser loop for ages).
    (t0 <= t1).then(|| {
        let at = |t: f64| {
            (
                (from.0 + t * dx).clamp(x_min, x_max),
                (from.1 + t * dy).clamp(y_min, y_max),
            )
        };
        (at(t0), at(t1))
    })
}

// ---------------------------------------------------------------------------
// Font

const GLYPH_W: usize = 5;
const GLYPH_H: usize = 8;
/// Glyphs are drawn 2x, as 1x 5x8 text is hard to read in a 900 px image.
const SCALE: i64 = 2;
/// Horizontal distance between characters: the glyph plus one blank column.
const ADVANCE: i64 = (GLYPH_W as i64 + 1) * SCALE;
const TEXT_H: i64 = GLYPH_H as i64 * SCALE;

/// Width in pixels of `text` as drawn (without the trailing blank column).
fn text_width(text: &str) -> i64 {
    let chars = text.chars().count() as i64;
    (chars * ADVANCE - SCALE).max(0)
}

/// Drawn for characters the font lacks, so they show up as missing
/// rather than silently vanishing.
const BOX: [u8; GLYPH_H] = [
    0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111, 0b00000,
];

fn glyph(c: char) -> [u8; GLYPH_H] {
    FONT.iter()
        .find(|(known, _)| *known == c)
        .map_or(BOX, |(_, rows)| *rows)
}

/// A 5x7 font with one descender row below (5x8 cells), one row per
/// byte, top row first, the low five bits read left to right.
#[rustfmt::skip]
const FONT: &[(char, [u8; GLYPH_H])] = &[
    (' ', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0b00000]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000]),
    ('3', [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0b00000]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0b00000]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0b00000]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0b00000]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0b00000]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000]),
    ('D', [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0b00000]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0b00000]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0b00000]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0b00000]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0b00000]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0b00000]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b00000]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0b00000]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0b00000]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0b00000]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0b00000]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0b00000]),
    ('Y', [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00000]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0b00000]),
    ('a', [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0b00000]),
    ('b', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0b00000]),
    ('c', [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000]),
    ('d', [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0b00000]),
    ('e', [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000]),
    ('f', [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0b00000]),
    ('g', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('h', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('i', [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('j', [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('k', [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b00000]),
    ('l', [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('m', [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001, 0b00000]),
    ('n', [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('o', [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('p', [0b00000, 0b00000, 0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000]),
    ('q', [0b00000, 0b00000, 0b01101, 0b10011, 0b10001, 0b01111, 0b00001, 0b00001]),
    ('r', [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0b00000]),
    ('s', [0b00000, 0b00000, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110, 0b00000]),
    ('t', [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0b00000]),
    ('u', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00000]),
    ('v', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000]),
    ('w', [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0b00000]),
    ('x', [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000]),
    ('y', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('z', [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000]),
    ('.', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100, 0b00000]),
    (',', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000]),
    (':', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000]),
    ('/', [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000, 0b00000]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0b00000]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0b00000]),
    ('-', [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('+', [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0b00000]),
    ('%', [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0b00000]),
    ('_', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111, 0b00000]),
    ('=', [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000]),
    ('<', [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00000]),
    ('>', [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000, 0b00000]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    fn pixel_at(rgb: &[u8], width: u32, (x, y): (f64, f64)) -> Rgb {
        let i = (y.round() as usize * width as usize + x.round() as usize) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    }

    fn tick_values(lo: f64, hi: f64) -> Vec<f64> {
        nice_axis(lo, hi)
            .unwrap()
            .ticks
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    }

    fn tick_labels(lo: f64, hi: f64) -> Vec<String> {
        Axis::fit(lo, hi)
            .unwrap()
            .ticks
            .into_iter()
            .map(|(_, l)| l)
            .collect()
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
        assert_eq!((width, height), (WIDTH as u32, HEIGHT as u32));
        assert_eq!(rgb.len(), WIDTH * HEIGHT * 3);
        for corner in [(0.0, 0.0), (899.0, 0.0), (0.0, 539.0), (899.0, 539.0)] {
            assert_eq!(pixel_at(&rgb, width, corner), WHITE, "corner {corner:?}");
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
        let (_, frame) = rasterise(&chart).unwrap();
        let (width, _, rgb) = decode(&render_png(&chart).unwrap());
        assert_eq!(pixel_at(&rgb, width, frame.to_px((2.0, 20.0))), PALETTE[0]);
        assert_eq!(pixel_at(&rgb, width, frame.to_px((8.0, 20.0))), PALETTE[1]);
        // The end points too, even where they sit on the axes.
        assert_eq!(pixel_at(&rgb, width, frame.to_px((0.0, 0.0))), PALETTE[0]);
        assert_eq!(pixel_at(&rgb, width, frame.to_px((10.0, 0.0))), PALETTE[1]);
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
            assert_eq!((width, height), (WIDTH as u32, HEIGHT as u32));
        }
        // The lone point is drawn, as a dot.
        let chart = chart(
            vec![Series {
                label: "s",
                points: &single,
            }],
            None,
        );
        let (canvas, frame) = rasterise(&chart).unwrap();
        let (x, y) = frame.to_px(single[0]);
        let i = (y.round() as usize * WIDTH + x.round() as usize) * 3;
        assert_eq!(canvas.rgb[i..i + 3], PALETTE[0]);
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
        let points = [(0.0, -1e308), (1.0, 1e308)];
        let err = render_png(&chart(
            vec![Series {
                label: "huge",
                points: &points,
            }],
            None,
        ))
        .unwrap_err();
        assert!(matches!(err, PlotError::Range { axis: "y" }), "{err}");
    }

    #[test]
    fn the_font_covers_the_documented_characters() {
        let required = ('0'..='9')
            .chain('a'..='z')
            .chain('A'..='Z')
            .chain(" .,:/()-+%_=<>".chars());
        for c in required {
            assert!(
                FONT.iter().any(|(known, _)| *known == c),
                "missing glyph {c:?}"
            );
        }
        assert_eq!(glyph('\u{e9}'), BOX);
        assert_eq!(FONT.len(), 76, "a character is listed twice");
    }

    #[test]
    fn clipping_keeps_far_off_segments_in_bounds() {
        let bounds = (0.0, 0.0, 10.0, 10.0);
        let ((x0, y0), (x1, y1)) = clip_segment((-1e6, 5.0), (1e6, 5.0), bounds).unwrap();
        assert_eq!((x0, y0, x1, y1), (0.0, 5.0, 10.0, 5.0));
        let ((x0, y0), (x1, y1)) = clip_segment((5.0, -20.0), (5.0, 30.0), bounds).unwrap();
        assert_eq!((x0, y0, x1, y1), (5.0, 0.0, 5.0, 10.0));
        // Near f64::MAX precision is lost, but the result stays in the box.
        let ((x0, y0), (x1, y1)) = clip_segment((-1e300, -1e300), (1e300, 1e300), bounds).unwrap();
        for v in [x0, y0, x1, y1] {
            assert!((0.0..=10.0).contains(&v), "{v}");
        }
        assert!(clip_segment((-5.0, -5.0), (-1.0, 20.0), bounds).is_none());
        assert!(clip_segment((f64::NAN, 0.0), (1.0, 1.0), bounds).is_none());
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
        /// data: encoding a canvas of fixed size cannot be upset by it, and
        /// deflating 256 images would make a debug `cargo test` crawl.
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
                Ok((canvas, _)) => {
                    prop_assert!(plottable);
                    prop_assert_eq!(canvas.rgb.len(), WIDTH * HEIGHT * 3);
                }
                Err(PlotError::NoPoints) => prop_assert!(!plottable),
                Err(PlotError::Range { .. }) => prop_assert!(plottable),
                Err(err) => prop_assert!(false, "unexpected error {}", err),
            }
        }
    }
}
