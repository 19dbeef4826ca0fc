//! The report's figures, drawn with `plotters` to PNG and SVG: line charts
//! (the KL-reward frontiers, the reward-shift curves) and the win-rate
//! heatmap. Text uses DejaVu Sans, embedded in the binary (no system
//! fonts are looked up).

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

/// One curve: a label, points, and whether it is dashed.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    /// Index into the palette.
    pub colour: usize,
}

pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// A square matrix of numbers in [0, 1] with row and column names.
pub struct Heatmap {
    pub title: String,
    pub names: Vec<String>,
    pub values: Vec<Vec<f64>>,
}

const SIZE: (u32, u32) = (800, 560);

/// The font family every chart names.
const FAMILY: &str = "sans-serif";

/// Registers the embedded DejaVu Sans as [`FAMILY`] (once per process);
/// every `save_*` calls it before drawing.
fn register_fonts() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the embedded DejaVu Sans font did not parse".to_string())
    })
    .clone()
}

fn colour(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
    RGBColor(r, g, b)
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// Bounds of all points, padded by 5 % (and widened when flat).
fn bounds(series: &[Series]) -> ((f64, f64), (f64, f64)) {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    let pad = |a: f64, b: f64| {
        let w = if b - a > 1e-9 { b - a } else { 1.0 };
        (a - 0.05 * w, b + 0.05 * w)
    };
    (pad(x0, x1), pad(y0, y1))
}

fn draw_lines<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &LineChart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let ((x0, x1), (y0, y1)) = bounds(&c.series);
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .draw()
        .map_err(err)?;
    for s in &c.series {
        let col = colour(s.colour);
        // Width 1: plotters joins wider lines with mitres, which spike far
        // out where a noisy curve turns back on itself.
        let style = ShapeStyle::from(&col).stroke_width(1);
        let pts = s.points.iter().copied();
        let anno = if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts, 6, 4, style))
                .map_err(err)?
        } else {
            chart
                .draw_series(LineSeries::new(pts, style))
                .map_err(err)?
        };
        anno.label(s.label.as_str()).legend(move |(x, y)| {
            PathElement::new(
                vec![(x, y), (x + 20, y)],
                ShapeStyle::from(&col).stroke_width(2),
            )
        });
        // Markers only where they stay readable (frontier points, not
        // per-step curves).
        if s.points.len() <= 60 {
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, ShapeStyle::from(&col).filled())),
                )
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn draw_heatmap<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, h: &Heatmap) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let n = h.names.len();
    let root = root
        .titled(&h.title, (FAMILY, 22))
        .map_err(err)?
        .margin(10, 10, 10, 10);
    let (label_w, label_h) = (120i32, 30i32);
    let (w, hgt) = root.dim_in_pixel();
    let cell_w = ((w as i32 - label_w) / n.max(1) as i32).max(1);
    let cell_h = ((hgt as i32 - label_h) / n.max(1) as i32).max(1);
    let text = (FAMILY, 16).into_font();
    for (j, name) in h.names.iter().enumerate() {
        root.draw(&Text::new(
            name.clone(),
            (label_w + j as i32 * cell_w + 6, 6),
            text.clone(),
        ))
        .map_err(err)?;
    }
    for (i, row) in h.values.iter().enumerate() {
        let top = label_h + i as i32 * cell_h;
        root.draw(&Text::new(
            h.names[i].clone(),
            (4, top + cell_h / 2 - 8),
            text.clone(),
        ))
        .map_err(err)?;
        for (j, &v) in row.iter().enumerate() {
            let left = label_w + j as i32 * cell_w;
            // White at 0.5, blue towards 1, red towards 0.
            let t = (2.0 * (v - 0.5)).clamp(-1.0, 1.0);
            let fill = if t >= 0.0 {
                RGBColor(
                    (255.0 * (1.0 - t)) as u8,
                    (255.0 * (1.0 - 0.6 * t)) as u8,
                    255,
                )
            } else {
                RGBColor(
                    255,
                    (255.0 * (1.0 + 0.6 * t)) as u8,
                    (255.0 * (1.0 + t)) as u8,
                )
            };
            root.draw(&Rectangle::new(
                [(left, top), (left + cell_w - 2, top + cell_h - 2)],
                fill.filled(),
            ))
            .map_err(err)?;
            root.draw(&Text::new(
                format!("{v:.2}"),
                (left + cell_w / 2 - 16, top + cell_h / 2 - 8),
                text.clone(),
            ))
            .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Writes `stem.png` and `stem.svg`.
pub fn save_line_chart(stem: &Path, c: &LineChart) -> Result<(), String> {
    register_fonts()?;
    let png = stem.with_extension("png");
    draw_lines(BitMapBackend::new(&png, SIZE).into_drawing_area(), c)?;
    let svg = stem.with_extension("svg");
    draw_lines(SVGBackend::new(&svg, SIZE).into_drawing_area(), c)
}

fn draw_panels<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    charts: &[LineChart],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let rows = charts.len().div_ceil(2).max(1);
    for (area, c) in root.split_evenly((rows, 2)).into_iter().zip(charts) {
        draw_lines(area, c)?;
    }
    root.present().map_err(err)
}

/// Writes `stem.png` and `stem.svg`: the charts two per row.
pub fn save_panels(stem: &Path, charts: &[LineChart]) -> Result<(), String> {
    register_fonts()?;
    let rows = charts.len().div_ceil(2).max(1) as u32;
    let size = (2 * SIZE.0 * 3 / 4, rows * SIZE.1 * 3 / 4);
    let png = stem.with_extension("png");
    draw_panels(BitMapBackend::new(&png, size).into_drawing_area(), charts)?;
    let svg = stem.with_extension("svg");
    draw_panels(SVGBackend::new(&svg, size).into_drawing_area(), charts)
}

/// Writes `stem.png` and `stem.svg`, wider than [`SIZE`] where the names
/// need room (about 90 pixels a column).
pub fn save_heatmap(stem: &Path, h: &Heatmap) -> Result<(), String> {
    register_fonts()?;
    let n = h.names.len() as u32;
    let size = (SIZE.0.max(140 + 90 * n), SIZE.1.max(80 + 60 * n));
    let png = stem.with_extension("png");
    draw_heatmap(BitMapBackend::new(&png, size).into_drawing_area(), h)?;
    let svg = stem.with_extension("svg");
    draw_heatmap(SVGBackend::new(&svg, size).into_drawing_area(), h)
}

/// One arm of a [`BandChart`]: its raw points (drawn faint) and its binned
/// means with their intervals.
pub struct Band {
    pub label: String,
    pub colour: usize,
    pub cloud: Vec<(f64, f64)>,
    /// `(x, mean, lo, hi)` per bin, sorted by x.
    pub means: Vec<(f64, f64, f64, f64)>,
}

pub struct BandChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub bands: Vec<Band>,
    /// The largest KL shown (points past it are cut off), if any.
    pub x_max: Option<f64>,
}

fn draw_bands<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &BandChart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    // Bounds from the points with KL up to `x_max` (the caller's cut), so
    // that one runaway arm does not squash the others.
    let mut all: Vec<Series> = Vec::new();
    for b in &c.bands {
        let mut pts: Vec<(f64, f64)> = b
            .means
            .iter()
            .flat_map(|&(x, _, lo, hi)| [(x, lo), (x, hi)])
            .collect();
        pts.extend(b.cloud.iter().copied());
        pts.retain(|p| c.x_max.is_none_or(|m| p.0 <= m));
        all.push(Series {
            label: String::new(),
            points: pts,
            dashed: false,
            colour: 0,
        });
    }
    let ((x0, x1), (y0, y1)) = bounds(&all);
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 18))
        .draw()
        .map_err(err)?;
    for b in &c.bands {
        let col = colour(b.colour);
        chart
            .draw_series(
                b.cloud
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 2, col.mix(0.18).filled())),
            )
            .map_err(err)?;
    }
    for b in &c.bands {
        let col = colour(b.colour);
        if b.means.len() >= 2 {
            let mut poly: Vec<(f64, f64)> = b.means.iter().map(|&(x, _, lo, _)| (x, lo)).collect();
            poly.extend(b.means.iter().rev().map(|&(x, _, _, hi)| (x, hi)));
            chart
                .draw_series(std::iter::once(Polygon::new(poly, col.mix(0.15).filled())))
                .map_err(err)?;
        }
        for &(x, _, lo, hi) in &b.means {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, lo), (x, hi)],
                    ShapeStyle::from(&col).stroke_width(1),
                )))
                .map_err(err)?;
        }
        let line = ShapeStyle::from(&col).stroke_width(2);
        chart
            .draw_series(LineSeries::new(
                b.means.iter().map(|&(x, m, _, _)| (x, m)),
                line,
            ))
            .map_err(err)?
            .label(b.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    ShapeStyle::from(&col).stroke_width(3),
                )
            });
        chart
            .draw_series(
                b.means
                    .iter()
                    .map(|&(x, m, _, _)| Circle::new((x, m), 4, ShapeStyle::from(&col).filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Writes `stem.png` and `stem.svg`: each band's faint points, binned means
/// and interval band.
pub fn save_band_chart(stem: &Path, c: &BandChart) -> Result<(), String> {
    register_fonts()?;
    let png = stem.with_extension("png");
    draw_bands(BitMapBackend::new(&png, SIZE).into_drawing_area(), c)?;
    let svg = stem.with_extension("svg");
    draw_bands(SVGBackend::new(&svg, SIZE).into_drawing_area(), c)
}

/// A forest plot: one row per comparison, its estimate and interval, and a
/// line at zero.
pub struct Forest {
    pub title: String,
    pub x_label: String,
    /// `(label, estimate, lo, hi)`, drawn top to bottom.
    pub rows: Vec<(String, f64, f64, f64)>,
}

fn draw_forest<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, f: &Forest) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let finite = f
        .rows
        .iter()
        .flat_map(|r| [r.1, r.2, r.3])
        .filter(|v| v.is_finite());
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for v in finite {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let w = if hi - lo > 1e-9 { hi - lo } else { 1.0 };
    let (lo, hi) = (lo - 0.08 * w, hi + 0.08 * w);
    let n = f.rows.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(&f.title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(250)
        .build_cartesian_2d(lo..hi, 0.0..n as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_desc(f.x_label.as_str())
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 18))
        .draw()
        .map_err(err)?;
    let text = (FAMILY, 15).into_font();
    for (i, r) in f.rows.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(lo, n as f64 - i as f64 - 0.5));
        root.draw(&Text::new(r.0.clone(), (px - 240, py - 8), text.clone()))
            .map_err(err)?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (0.0, n as f64)],
            ShapeStyle::from(&BLACK).stroke_width(1),
        )))
        .map_err(err)?;
    for (i, r) in f.rows.iter().enumerate() {
        let y = n as f64 - i as f64 - 0.5;
        let col = colour(0);
        if r.2.is_finite() && r.3.is_finite() {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(r.2, y), (r.3, y)],
                    ShapeStyle::from(&col).stroke_width(2),
                )))
                .map_err(err)?;
        }
        if r.1.is_finite() {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (r.1, y),
                    5,
                    ShapeStyle::from(&col).filled(),
                )))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Writes `stem.png` and `stem.svg` (taller with more rows).
pub fn save_forest(stem: &Path, f: &Forest) -> Result<(), String> {
    register_fonts()?;
    let size = (SIZE.0, (120 + 28 * f.rows.len() as u32).max(300));
    let png = stem.with_extension("png");
    draw_forest(BitMapBackend::new(&png, size).into_drawing_area(), f)?;
    let svg = stem.with_extension("svg");
    draw_forest(SVGBackend::new(&svg, size).into_drawing_area(), f)
}
