//! Hand-written SVG plots for reports: line plots with axes, ticks, grid and a legend, and a
//! confusion-matrix heat map. Plain strings, no plotting crate; all text is escaped.

use crate::metrics::Confusion;
use std::fmt::Write;

/// Series colours, in order (Tableau 10).
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// The colour of series `i`.
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Escapes text for XML and HTML, in content and in quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than tab and newlines are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A linear map from a data interval to a pixel interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub domain: (f64, f64),
    pub range: (f64, f64),
}

impl Scale {
    /// The pixel position of `v`; the middle of the range when the domain is a single point.
    pub fn map(&self, v: f64) -> f64 {
        let (d0, d1) = self.domain;
        let (r0, r1) = self.range;
        if d1 == d0 {
            return (r0 + r1) / 2.0;
        }
        r0 + (v - d0) / (d1 - d0) * (r1 - r0)
    }
}

/// An axis: its domain, widened to whole tick steps, and its ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub step: f64,
    pub ticks: Vec<f64>,
    /// Decimals that show every tick exactly.
    pub decimals: usize,
}

impl Axis {
    /// The text of a tick value.
    pub fn label(&self, v: f64) -> String {
        let v = if v.abs() < self.step * 1e-9 { 0.0 } else { v };
        format!("{v:.*}", self.decimals)
    }
}

/// A readable axis for data in `[lo, hi]`: the smallest step of 1, 2 or 5 times a power of ten
/// that crosses the data in at most `max_ticks - 1` steps, and the domain widened to whole steps
/// (which may add a tick at either end). `integer` keeps steps whole (epochs). A single value
/// or non-finite bounds still give a usable axis.
pub fn nice_axis(lo: f64, hi: f64, max_ticks: usize, integer: bool) -> Axis {
    let (mut lo, mut hi) = match (lo.is_finite(), hi.is_finite()) {
        (true, true) => (lo.min(hi), lo.max(hi)),
        (true, false) => (lo, lo),
        (false, true) => (hi, hi),
        (false, false) => (0.0, 1.0),
    };
    if hi - lo <= lo.abs().max(hi.abs()) * 1e-12 {
        let pad = if integer {
            1.0
        } else if lo == 0.0 {
            0.5
        } else {
            lo.abs() * 0.1
        };
        lo -= pad;
        hi += pad;
    }
    let raw = (hi - lo) / (max_ticks.max(2) - 1) as f64;
    // The step is `num / den` with whole numbers, so that ticks like 0.3 come out as the
    // closest double (3 / 10), not as 3 x 0.1.
    let exp = raw.log10().floor() as i32;
    let (pow_up, pow_down) = (10f64.powi(exp.max(0)), 10f64.powi((-exp).max(0)));
    let m = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * pow_up / pow_down >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0);
    let (mut num, mut den) = (m * pow_up, pow_down);
    if integer && num / den < 1.0 {
        (num, den) = (1.0, 1.0);
    }
    let step = num / den;
    let first = (lo / step + 1e-9).floor();
    let last = (hi / step - 1e-9).ceil();
    let at = |i: f64| i * num / den;
    let mut decimals = 0;
    while decimals < 12 {
        let scaled = step * 10f64.powi(decimals as i32);
        if (scaled - scaled.round()).abs() <= 1e-6 * scaled.max(1.0) {
            break;
        }
        decimals += 1;
    }
    let ticks: Vec<f64> = (0..=(last - first) as i64)
        .map(|i| at(first + i as f64))
        .collect();
    Axis {
        lo: at(first),
        hi: at(last),
        step,
        ticks,
        decimals,
    }
}

/// One line of a plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// Points in drawing order; a non-finite coordinate breaks the line.
    pub points: Vec<(f64, f64)>,
    pub color: String,
    pub dashed: bool,
    /// Draw a dot on every point (always done for a single point).
    pub markers: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, color: &str) -> Self {
        Self {
            name: name.into(),
            points,
            color: color.to_string(),
            dashed: false,
            markers: false,
        }
    }

    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }

    pub fn markers(mut self, on: bool) -> Self {
        self.markers = on;
        self
    }
}

/// A line plot: title, axes with ticks and grid, labels, series and a legend below.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed data ranges (otherwise fitted to the series).
    pub x_domain: Option<(f64, f64)>,
    pub y_domain: Option<(f64, f64)>,
    /// Whole-number x ticks (epochs).
    pub integer_x: bool,
    /// Size of the plot without the legend, in pixels.
    pub width: f64,
    pub height: f64,
}

const MARGIN_LEFT: f64 = 64.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 34.0;
const MARGIN_BOTTOM: f64 = 46.0;
const LEGEND_ROW: f64 = 18.0;
/// Width of a character of the 12px sans-serif text, roughly, for laying out the legend.
const CHAR_WIDTH: f64 = 7.0;

/// A coordinate for SVG: two decimals at most, no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

impl LinePlot {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: vec![],
            x_domain: None,
            y_domain: None,
            integer_x: false,
            width: 560.0,
            height: 340.0,
        }
    }

    pub fn series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }

    pub fn x_domain(mut self, lo: f64, hi: f64) -> Self {
        self.x_domain = Some((lo, hi));
        self
    }

    pub fn y_domain(mut self, lo: f64, hi: f64) -> Self {
        self.y_domain = Some((lo, hi));
        self
    }

    pub fn integer_x(mut self) -> Self {
        self.integer_x = true;
        self
    }

    /// The data's bounds along one coordinate, over every finite point.
    fn bounds(&self, coord: impl Fn(&(f64, f64)) -> f64) -> (f64, f64) {
        self.series
            .iter()
            .flat_map(|s| s.points.iter())
            .map(coord)
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    }

    /// The axes the plot draws.
    pub fn axes(&self) -> (Axis, Axis) {
        let (x0, x1) = self.x_domain.unwrap_or_else(|| self.bounds(|p| p.0));
        let (y0, y1) = self.y_domain.unwrap_or_else(|| self.bounds(|p| p.1));
        (
            nice_axis(x0, x1, 8, self.integer_x),
            nice_axis(y0, y1, 6, false),
        )
    }

    /// Legend items as rows of `(series index, x offset)`, fitting `width`.
    fn legend_rows(&self, width: f64) -> Vec<Vec<(usize, f64)>> {
        let mut rows: Vec<Vec<(usize, f64)>> = vec![];
        let mut x = 0.0;
        for (i, s) in self.series.iter().enumerate() {
            let w = 30.0 + s.name.chars().count() as f64 * CHAR_WIDTH + 18.0;
            if rows.is_empty() || (x + w > width && x > 0.0) {
                rows.push(vec![]);
                x = 0.0;
            }
            rows.last_mut().expect("a row").push((i, x));
            x += w;
        }
        rows
    }

    /// The plot as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let f = self.frame();
        let legend = self.legend_rows(f.right - f.left);
        let total_height = self.height + legend.len() as f64 * LEGEND_ROW + 6.0;
        let mut s = String::new();
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"##,
            w = num(self.width),
            h = num(total_height)
        );
        let _ = write!(
            s,
            r##"<title>{t}</title><rect width="100%" height="100%" fill="#ffffff"/><text x="{cx}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{t}</text>"##,
            t = escape(&self.title),
            cx = num(self.width / 2.0)
        );
        f.grid(&mut s);
        f.tick_labels(&mut s, &self.x_label, &self.y_label);
        self.lines(&mut s, &f);
        let _ = write!(
            s,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#555555"/>"##,
            num(f.left),
            num(f.top),
            num(f.right - f.left),
            num(f.bottom - f.top)
        );
        self.legend(&mut s, &legend, f.left);
        s.push_str("</svg>\n");
        s
    }

    /// The axes and where the plot area lies.
    fn frame(&self) -> Frame {
        let (ax, ay) = self.axes();
        let (left, right) = (MARGIN_LEFT, self.width - MARGIN_RIGHT);
        let (top, bottom) = (MARGIN_TOP, self.height - MARGIN_BOTTOM);
        Frame {
            sx: Scale {
                domain: (ax.lo, ax.hi),
                range: (left, right),
            },
            sy: Scale {
                domain: (ay.lo, ay.hi),
                range: (bottom, top),
            },
            ax,
            ay,
            left,
            right,
            top,
            bottom,
        }
    }

    /// The series, clipped to the plot area: a polyline per run of finite points, and markers
    /// when asked for or when a series has a single point.
    fn lines(&self, s: &mut String, f: &Frame) {
        let (sx, sy) = (&f.sx, &f.sy);
        let _ = write!(
            s,
            r#"<clipPath id="area"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath><g clip-path="url(#area)" fill="none" stroke-width="2" stroke-linejoin="round">"#,
            num(f.left - 3.0),
            num(f.top - 3.0),
            num(f.right - f.left + 6.0),
            num(f.bottom - f.top + 6.0)
        );
        for series in &self.series {
            let dash = series.dash();
            let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
            for run in series.points.split(|p| !finite(&p)) {
                if run.len() >= 2 {
                    let pts: Vec<String> = run
                        .iter()
                        .map(|&(x, y)| format!("{},{}", num(sx.map(x)), num(sy.map(y))))
                        .collect();
                    let _ = write!(
                        s,
                        r#"<polyline points="{}" stroke="{}"{dash}/>"#,
                        pts.join(" "),
                        escape(&series.color)
                    );
                }
            }
            let lone = series.points.iter().filter(finite).count() == 1;
            if series.markers || lone {
                for &(x, y) in series.points.iter().filter(finite) {
                    let _ = write!(
                        s,
                        r#"<circle cx="{}" cy="{}" r="3" fill="{c}" stroke="{c}" stroke-width="1"/>"#,
                        num(sx.map(x)),
                        num(sy.map(y)),
                        c = escape(&series.color)
                    );
                }
            }
        }
        s.push_str("</g>");
    }

    /// The legend's `rows` below the axes, from `left`.
    fn legend(&self, s: &mut String, rows: &[Vec<(usize, f64)>], left: f64) {
        for (r, row) in rows.iter().enumerate() {
            let y = self.height + r as f64 * LEGEND_ROW + 4.0;
            for &(i, x) in row {
                let series = &self.series[i];
                let x = left + x;
                let _ = write!(
                    s,
                    r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"{dash}/><text x="{}" y="{y}" dy="0.35em">{}</text>"#,
                    num(x),
                    num(x + 24.0),
                    escape(&series.color),
                    num(x + 30.0),
                    escape(&series.name),
                    dash = series.dash(),
                    y = num(y)
                );
            }
        }
    }
}

/// A line plot's axes, their scales, and the edges of its plot area.
struct Frame {
    ax: Axis,
    ay: Axis,
    sx: Scale,
    sy: Scale,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    /// The grid lines at the ticks.
    fn grid(&self, s: &mut String) {
        s.push_str(r##"<g stroke="#e3e3e3" stroke-width="1">"##);
        for &t in &self.ax.ticks {
            let x = num(self.sx.map(t));
            let _ = write!(
                s,
                r#"<line x1="{x}" y1="{}" x2="{x}" y2="{}"/>"#,
                num(self.top),
                num(self.bottom)
            );
        }
        for &t in &self.ay.ticks {
            let y = num(self.sy.map(t));
            let _ = write!(
                s,
                r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}"/>"#,
                num(self.left),
                num(self.right)
            );
        }
        s.push_str("</g>");
    }

    /// The tick labels and the axis labels.
    fn tick_labels(&self, s: &mut String, x_label: &str, y_label: &str) {
        let (left, right, top, bottom) = (self.left, self.right, self.top, self.bottom);
        s.push_str(r##"<g fill="#333333">"##);
        for &t in &self.ax.ticks {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                num(self.sx.map(t)),
                num(bottom + 16.0),
                escape(&self.ax.label(t))
            );
        }
        for &t in &self.ay.ticks {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end" dy="0.35em">{}</text>"#,
                num(left - 6.0),
                num(self.sy.map(t)),
                escape(&self.ay.label(t))
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text></g>"#,
            num((left + right) / 2.0),
            num(bottom + 36.0),
            escape(x_label),
            num((top + bottom) / 2.0),
            escape(y_label)
        );
    }
}

impl Series {
    /// The stroke attribute of a dashed series.
    fn dash(&self) -> &'static str {
        if self.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        }
    }
}

/// A confusion matrix as a heat map: rows are the true class, columns the prediction; each cell
/// shows its count and its share of the row, shaded by that share.
pub fn confusion_svg(title: &str, c: &Confusion) -> String {
    let (w, h) = (380.0, 270.0);
    let (x0, y0, cw, ch) = (130.0, 80.0, 110.0, 85.0);
    let cells = [[c.tn, c.fp], [c.fn_, c.tp]];
    let names = ["no IDC", "IDC"];
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12"><title>{t}</title><rect width="100%" height="100%" fill="#ffffff"/><text x="{cx}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{t}</text>"##,
        t = escape(title),
        cx = num(w / 2.0)
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">predicted</text><text transform="translate(24 {}) rotate(-90)" text-anchor="middle" font-weight="bold">true</text>"#,
        num(x0 + cw),
        num(y0 - 30.0),
        num(y0 + ch)
    );
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{name}</text><text x="{}" y="{}" text-anchor="end" dy="0.35em">{name}</text>"#,
            num(x0 + cw * (i as f64 + 0.5)),
            num(y0 - 8.0),
            num(x0 - 8.0),
            num(y0 + ch * (i as f64 + 0.5)),
        );
    }
    for (r, row) in cells.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (k, &n) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            // From white to the first palette colour (78, 121, 167).
            let mix = |to: f64| (255.0 + (to - 255.0) * share).round() as u8;
            let fill = format!("#{:02x}{:02x}{:02x}", mix(78.0), mix(121.0), mix(167.0));
            let text = if share > 0.55 { "#ffffff" } else { "#222222" };
            let (x, y) = (x0 + cw * k as f64, y0 + ch * r as f64);
            let _ = write!(
                s,
                r##"<rect x="{}" y="{}" width="{cw}" height="{ch}" fill="{fill}" stroke="#555555"/><text x="{}" y="{}" text-anchor="middle" font-size="18" font-weight="bold" fill="{text}">{n}</text><text x="{}" y="{}" text-anchor="middle" font-size="11" fill="{text}">{:.1}% of row</text>"##,
                num(x),
                num(y),
                num(x + cw / 2.0),
                num(y + ch / 2.0),
                num(x + cw / 2.0),
                num(y + ch / 2.0 + 18.0),
                100.0 * share
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        let a = nice_axis(0.03, 0.97, 6, false);
        assert_eq!((a.lo, a.hi, a.step), (0.0, 1.0, 0.2));
        let labels: Vec<String> = a.ticks.iter().map(|&t| a.label(t)).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);

        let a = nice_axis(0.781, 0.934, 6, false);
        assert_eq!(a.step, 0.05);
        assert!(
            (a.lo - 0.75).abs() < 1e-12 && (a.hi - 0.95).abs() < 1e-12,
            "{a:?}"
        );
        assert_eq!(a.label(a.ticks[1]), "0.80");
        assert_eq!(a.decimals, 2);

        let a = nice_axis(120.0, 5000.0, 6, false);
        assert_eq!((a.lo, a.hi, a.step), (0.0, 5000.0, 1000.0));
        assert_eq!(a.label(3000.0), "3000");

        // Negative data and a tick exactly at zero print as 0, not -0.
        let a = nice_axis(-0.3, 0.2, 6, false);
        assert_eq!(a.step, 0.1);
        assert_eq!(a.ticks.len(), 6);
        assert_eq!(a.label(a.ticks[3]), "0.0");
    }

    #[test]
    fn integer_and_degenerate_axes() {
        // Epochs 1..3: whole steps only.
        let a = nice_axis(1.0, 3.0, 8, true);
        assert_eq!(a.step, 1.0);
        assert_eq!(a.ticks, vec![1.0, 2.0, 3.0]);
        assert_eq!(a.label(2.0), "2");
        let a = nice_axis(1.0, 40.0, 8, true);
        assert_eq!(a.step, 10.0);
        assert_eq!((a.lo, a.hi), (0.0, 40.0));
        // One epoch, one value: still an axis around it.
        let a = nice_axis(1.0, 1.0, 8, true);
        assert!(a.lo < 1.0 && a.hi > 1.0 && a.step >= 1.0, "{a:?}");
        let a = nice_axis(0.42, 0.42, 6, false);
        assert!(a.lo < 0.42 && a.hi > 0.42 && a.ticks.len() >= 2, "{a:?}");
        let a = nice_axis(f64::INFINITY, f64::NEG_INFINITY, 6, false);
        assert_eq!((a.lo, a.hi), (0.0, 1.0));
        // Reversed bounds are sorted.
        assert_eq!(nice_axis(1.0, 0.0, 6, false).lo, 0.0);
        // Tiny steps keep enough decimals.
        let a = nice_axis(0.0001, 0.0004, 4, false);
        assert_eq!(a.step, 0.0001);
        assert_eq!(a.label(0.0003), "0.0003");
    }

    #[test]
    fn scale_maps_linearly_and_inverts_y() {
        let s = Scale {
            domain: (0.0, 10.0),
            range: (100.0, 300.0),
        };
        assert_eq!(s.map(0.0), 100.0);
        assert_eq!(s.map(5.0), 200.0);
        assert_eq!(s.map(10.0), 300.0);
        let y = Scale {
            domain: (0.0, 1.0),
            range: (300.0, 40.0),
        };
        assert_eq!(y.map(1.0), 40.0);
        assert_eq!(y.map(0.25), 235.0);
        let flat = Scale {
            domain: (2.0, 2.0),
            range: (0.0, 50.0),
        };
        assert_eq!(flat.map(2.0), 25.0);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"a<b & "c" > 'd'"#),
            "a&lt;b &amp; &quot;c&quot; &gt; &#39;d&#39;"
        );
        assert_eq!(escape("bell\u{7}"), "bell\u{fffd}");
        let svg = LinePlot::new("loss <train> & \"val\"", "epoch", "y's")
            .series(Series::new(
                "run <1>",
                vec![(1.0, 0.5), (2.0, 0.25)],
                "#000",
            ))
            .to_svg();
        assert!(
            svg.contains("loss &lt;train&gt; &amp; &quot;val&quot;"),
            "{svg}"
        );
        assert!(svg.contains("run &lt;1&gt;") && svg.contains("y&#39;s"));
        assert!(!svg.contains("<train>") && !svg.contains("<1>"));
    }

    #[test]
    fn line_plot_places_points_on_its_axes() {
        let plot = LinePlot::new("t", "x", "y")
            .series(Series::new("a", vec![(0.0, 0.0), (1.0, 1.0)], "#111111"))
            .series(Series::new("b", vec![(0.5, f64::NAN), (0.5, 0.5)], "#222222").dashed())
            .x_domain(0.0, 1.0)
            .y_domain(0.0, 1.0);
        let svg = plot.to_svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"560\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        // The plot area spans x 64..540 and y 294..34: (0, 0) is bottom left, (1, 1) top right.
        assert!(
            svg.contains(r##"points="64,294 540,34" stroke="#111111""##),
            "{svg}"
        );
        // A lone finite point gets a marker; the NaN is left out; the dashed style is kept.
        assert!(svg.contains(r#"<circle cx="302" cy="164""#), "{svg}");
        assert!(svg.contains(r##"stroke="#222222" stroke-width="3" stroke-dasharray="6 4""##));
        assert!(!svg.contains("NaN"));
        // Both names are in the legend; balanced tags.
        assert!(svg.contains(">a</text>") && svg.contains(">b</text>"));
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    }

    #[test]
    fn long_legends_wrap_and_grow_the_plot() {
        let mut plot = LinePlot::new("t", "x", "y");
        for i in 0..8 {
            plot = plot.series(Series::new(
                format!("a-long-run-name-{i:02}-20260101"),
                vec![(0.0, i as f64)],
                color(i),
            ));
        }
        assert!(plot.legend_rows(476.0).len() >= 4);
        let svg = plot.to_svg();
        let height: f64 = svg
            .split("height=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(height > 340.0 + 3.0 * LEGEND_ROW, "{height}");
    }

    #[test]
    fn confusion_heat_map_shows_counts_and_row_shares() {
        let svg = confusion_svg(
            "at 0.5",
            &Confusion {
                tn: 90,
                fp: 10,
                fn_: 5,
                tp: 15,
            },
        );
        for want in [
            ">90<",
            ">10<",
            ">5<",
            ">15<",
            "90.0% of row",
            "25.0% of row",
            "75.0% of row",
        ] {
            assert!(svg.contains(want), "{want}: {svg}");
        }
        // An empty row does not divide by zero.
        assert!(confusion_svg("empty", &Confusion::default()).contains("0.0% of row"));
    }
}
