//! A sweep's report (`idcctl sweep report`): its summary for the terminal (trials, the best one
//! with its curve, parameter importance), and its HTML page: the objective per trial with the
//! best so far, parameter importance bars, parallel coordinates, the best trial's curve and the
//! trials. One self-contained file: every plot is inline SVG, which the page's check script
//! counts like the run report's plots.

use super::ReportError;
use super::page::{create_dir, kv_table, note, page};
use super::plot::{self, LinePlot, Series, escape, nice_axis};
use crate::sweep::importance::{self, Importance};
use crate::sweep::live::sparkline;
use crate::sweep::manifest::{Direction, Sweep};
use crate::sweep::space::{Distribution, Param};
use crate::sweep::state::{SweepState, Trial, TrialState};
use crate::sweep::{fmt_num, fmt_value, short_names};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// What `idcctl sweep report` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub name: String,
    pub metric: String,
    pub direction: Direction,
    pub sampler: String,
    pub pruner: String,
    pub max_trials: u32,
    pub trials: usize,
    pub running: usize,
    pub completed: usize,
    pub pruned: usize,
    pub failed: usize,
    pub finished_at: Option<String>,
    pub best: Option<Best>,
    /// Most important first; empty with `importance_note` saying why.
    pub importance: Vec<Importance>,
    pub importance_note: Option<String>,
}

/// The best completed trial.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Best {
    pub trial: String,
    pub run_id: String,
    pub value: f64,
    pub epoch: Option<u32>,
    pub params: BTreeMap<String, serde_json::Value>,
    /// The objective after each epoch (`null` where it was NaN).
    #[serde(with = "crate::json_float::vec")]
    pub curve: Vec<f64>,
}

fn count(st: &SweepState, s: TrialState) -> usize {
    st.trials.iter().filter(|t| t.state == s).count()
}

/// The summary of `sweep` as recorded in `st`.
pub fn summary(sweep: &Sweep, st: &SweepState) -> Summary {
    let (importance, importance_note) = match importance::of_sweep(sweep, st) {
        Ok(i) => (i, None),
        Err(why) => (vec![], Some(why)),
    };
    Summary {
        name: sweep.name.clone(),
        metric: sweep.objective.metric_name(),
        direction: sweep.objective.direction(),
        sampler: sweep.sampler.name().into(),
        pruner: sweep.pruner.name().into(),
        max_trials: sweep.max_trials,
        trials: st.trials.len(),
        running: count(st, TrialState::Running),
        completed: count(st, TrialState::Completed),
        pruned: count(st, TrialState::Pruned),
        failed: count(st, TrialState::Failed),
        finished_at: st.finished_at.clone(),
        best: st.best(sweep).map(|b| Best {
            trial: b.id.clone(),
            run_id: b.run_id.clone(),
            value: b.value.unwrap_or(f64::NAN),
            epoch: b.best_epoch,
            params: b.params.clone(),
            curve: b.intermediate.clone(),
        }),
        importance,
        importance_note,
    }
}

/// A curve for the terminal: each value, then its sparkline.
pub fn curve_line(values: &[f64]) -> String {
    let nums: Vec<String> = values.iter().map(|&v| fmt_num(v)).collect();
    format!("{}  {}", nums.join(" "), sparkline(values))
}

/// The summary as text.
pub fn summary_text(s: &Summary) -> String {
    let mut out = format!(
        "sweep {}: {} {}, {} sampler, {} pruner; {} of {} trials: {} running, {} completed, {} pruned, {} failed\n",
        s.name,
        crate::output::name_of(&s.direction),
        s.metric,
        s.sampler,
        s.pruner,
        s.trials,
        s.max_trials,
        s.running,
        s.completed,
        s.pruned,
        s.failed
    );
    if let Some(at) = &s.finished_at {
        let _ = writeln!(out, "finished at {at}");
    }
    match &s.best {
        Some(b) => {
            let _ = writeln!(
                out,
                "best: {} (run {}) {} {} at epoch {}",
                b.trial,
                b.run_id,
                s.metric,
                fmt_num(b.value),
                b.epoch.unwrap_or(0)
            );
            for (path, v) in &b.params {
                let _ = writeln!(out, "  {path}: {}", fmt_value(v));
            }
            let _ = writeln!(
                out,
                "best {} curve ({} by epoch): {}",
                b.trial,
                s.metric,
                curve_line(&b.curve)
            );
        }
        None => out += "best: no trial has completed yet\n",
    }
    match &s.importance_note {
        Some(why) => {
            let _ = writeln!(out, "parameter importance: {why}");
        }
        None => {
            let _ = writeln!(
                out,
                "parameter importance (share of the {} variance its value explains, first order):",
                s.metric
            );
            let width = s.importance.iter().map(|i| i.name.len()).max().unwrap_or(0);
            for i in &s.importance {
                let bar = "█".repeat((i.share * 30.0).round() as usize);
                let _ = writeln!(out, "  {:width$}  {:5.1}%  {bar}", i.name, 100.0 * i.share);
            }
        }
    }
    out
}

/// What the page was written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `index.html` in the folder given.
    pub page: PathBuf,
    /// Inline plots in it.
    pub plots: usize,
    /// Sections shown as a note instead of a plot, and why.
    pub notes: Vec<String>,
}

/// The page of `sweep` and what is in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub html: String,
    pub plots: usize,
    pub notes: Vec<String>,
}

/// Writes the page of `sweep` as `dir/index.html`, whole (a reader never sees half of it).
pub fn write_sweep_report(
    dir: &Path,
    sweep: &Sweep,
    st: &SweepState,
) -> Result<Written, ReportError> {
    create_dir(dir)?;
    let p = sweep_page(sweep, st);
    let path = dir.join("index.html");
    crate::output::write_file_whole(&path, p.html.as_bytes()).map_err(|source| {
        ReportError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(Written {
        page: path,
        plots: p.plots,
        notes: p.notes,
    })
}

/// An SVG plot inside the page: marked for the check script, its ids made its own (a page
/// holds several plots, and ids are page-wide).
fn inline(svg: &str, id: &str, alt: &str) -> String {
    let svg = svg
        .replace("id=\"area\"", &format!("id=\"{id}-area\""))
        .replace("url(#area)", &format!("url(#{id}-area)"))
        .replacen(
            "<svg ",
            &format!(
                "<svg data-plot id=\"{id}\" role=\"img\" aria-label=\"{}\" ",
                escape(alt)
            ),
            1,
        );
    format!(
        "<figure style=\"overflow-x:auto\">{}</figure>\n",
        svg.trim_end()
    )
}

/// Points drawn as markers only: each is its own line (NaN breaks lines).
fn scatter(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let mut out = vec![];
    for p in points {
        if !out.is_empty() {
            out.push((f64::NAN, f64::NAN));
        }
        out.push(p);
    }
    out
}

/// The best completed value after each trial, as a step line over trial numbers.
pub fn best_so_far(sweep: &Sweep, st: &SweepState) -> Vec<(f64, f64)> {
    let mut best: Option<f64> = None;
    let mut points = vec![];
    for t in &st.trials {
        let x = t.number as f64;
        if let Some(b) = best {
            points.push((x, b));
        }
        if t.state == TrialState::Completed
            && let Some(v) = t.value.filter(|v| v.is_finite())
            && best.is_none_or(|b| sweep.objective.better(v, b))
        {
            best = Some(v);
            points.push((x, v));
        }
    }
    points
}

/// The objective of every trial by trial number: completed, pruned (the best value before it
/// was stopped), failed (no value: on the bottom edge), and the best so far as a step line.
/// None when no trial has a value yet.
pub fn objective_plot(sweep: &Sweep, st: &SweepState) -> Option<LinePlot> {
    let metric = sweep.objective.metric_name();
    let valued = |s: TrialState| -> Vec<(f64, f64)> {
        st.trials
            .iter()
            .filter(|t| t.state == s)
            .filter_map(|t| Some((t.number as f64, t.value.filter(|v| v.is_finite())?)))
            .collect()
    };
    let (completed, pruned) = (valued(TrialState::Completed), valued(TrialState::Pruned));
    if completed.is_empty() && pruned.is_empty() {
        return None;
    }
    let last = st.trials.iter().map(|t| t.number).max().unwrap_or(1) as f64;
    let mut p = LinePlot::new(&format!("{metric} per trial"), "trial", &metric)
        .integer_x()
        .x_domain(1.0, last);
    if !completed.is_empty() {
        p = p.series(Series::new("best so far", best_so_far(sweep, st), "#59a14f").dashed());
        p = p.series(Series::new("completed", scatter(completed), plot::color(0)).markers(true));
    }
    if !pruned.is_empty() {
        p = p.series(
            Series::new(
                "pruned (best before it stopped)",
                scatter(pruned),
                plot::color(1),
            )
            .markers(true),
        );
    }
    let failed: Vec<f64> = st
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Failed)
        .map(|t| t.number as f64)
        .collect();
    if !failed.is_empty() {
        // Failed trials have no value: they sit on the bottom edge, the axis kept as it was.
        let (_, ay) = p.axes();
        p = p.y_domain(ay.lo, ay.hi).series(
            Series::new(
                "failed (no value)",
                scatter(failed.into_iter().map(|x| (x, ay.lo))),
                plot::color(2),
            )
            .markers(true),
        );
    }
    Some(p)
}

/// The best trial's objective after each epoch.
pub fn curve_plot(sweep: &Sweep, best: &Trial) -> LinePlot {
    let metric = sweep.objective.metric_name();
    let points: Vec<(f64, f64)> = best
        .intermediate
        .iter()
        .enumerate()
        .map(|(i, &v)| ((i + 1) as f64, v))
        .collect();
    LinePlot::new(
        &format!("{metric} by epoch, best trial {}", best.id),
        "epoch",
        &metric,
    )
    .integer_x()
    .series(Series::new(best.id.clone(), points, plot::color(0)).markers(true))
}

/// Horizontal bars of the parameters' importance, most important first.
pub fn importance_svg(imp: &[Importance], metric: &str) -> String {
    let (w, row, top, label_w, bar_w) = (620.0, 28.0, 44.0, 190.0, 300.0);
    let h = top + row * imp.len() as f64 + 16.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12"><title>Parameter importance</title><rect width="100%" height="100%" fill="#ffffff"/><text x="{cx}" y="20" text-anchor="middle" font-size="14" font-weight="bold">Share of the {m} variance explained, by parameter</text>"##,
        cx = w / 2.0,
        m = escape(metric)
    );
    for (k, i) in imp.iter().enumerate() {
        let y = top + row * k as f64;
        let len = (i.share * bar_w).max(if i.share > 0.0 { 1.0 } else { 0.0 });
        let _ = write!(
            s,
            r##"<g class="bar" data-param="{p}"><title>{p}: {pct:.1}% of the explained variance (η² {eta:.3}, {n} trials in {b} bins)</title><text x="{lx}" y="{ty}" text-anchor="end" dy="0.35em">{name}</text><rect x="{bx}" y="{y}" width="{len:.2}" height="{bh}" fill="{c}"/><text x="{nx:.2}" y="{ty}" dy="0.35em">{pct:.1}%</text></g>"##,
            p = escape(&i.path),
            name = escape(&i.name),
            pct = 100.0 * i.share,
            eta = i.eta2,
            n = i.trials,
            b = i.bins,
            lx = label_w - 10.0,
            ty = y + row / 2.0 - 2.0,
            bx = label_w,
            bh = row - 8.0,
            c = plot::color(0),
            nx = label_w + len + 6.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One vertical axis of the parallel coordinates: where a value sits (0 bottom, 1 top) and the
/// ticks.
struct ParAxis {
    key: String,
    label: String,
    /// Position of a point coordinate (the value; a choice's index).
    at: Box<dyn Fn(f64) -> f64>,
    ticks: Vec<(f64, String)>,
}

/// A linear axis over `[lo, hi]` with round ticks inside it.
fn linear_axis(key: &str, label: String, lo: f64, hi: f64, integer: bool) -> ParAxis {
    let a = nice_axis(lo, hi, 6, integer);
    let (l, h) = if hi > lo { (lo, hi) } else { (a.lo, a.hi) };
    let at = move |v: f64| if h > l { (v - l) / (h - l) } else { 0.5 };
    let eps = (h - l).abs() * 1e-9;
    let ticks = a
        .ticks
        .iter()
        .filter(|&&t| t >= l - eps && t <= h + eps)
        .map(|&t| (at(t), a.label(t)))
        .collect();
    ParAxis {
        key: key.into(),
        label,
        at: Box::new(at),
        ticks,
    }
}

/// Decade ticks of a log axis over `[lo, hi]` (the ends when it spans less than one decade).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.log10().ceil() as i32, hi.log10().floor() as i32);
    let mut t: Vec<f64> = (a..=b).map(|k| 10f64.powi(k)).collect();
    if t.len() < 2 {
        t = vec![lo, hi];
    }
    t
}

fn log_label(v: f64) -> String {
    let k = v.log10();
    if (k - k.round()).abs() < 1e-9 && !(-3.0..=4.0).contains(&k.round()) {
        format!("1e{}", k.round() as i32)
    } else {
        fmt_num(v)
    }
}

fn param_axis(p: &Param, name: &str) -> ParAxis {
    let bounds = match &p.dist {
        Distribution::Uniform { low, high } | Distribution::LogUniform { low, high } => {
            Some((*low, *high))
        }
        Distribution::Int { low, high, .. } => Some((*low as f64, *high as f64)),
        Distribution::Categorical { .. } => None,
    };
    if let Distribution::Categorical { choices } = &p.dist {
        let n = choices.len().max(2) as f64 - 1.0;
        return ParAxis {
            key: p.path.clone(),
            label: name.into(),
            at: Box::new(move |i| i / n),
            ticks: choices
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let v = serde_json::to_value(c).unwrap_or(serde_json::Value::Null);
                    (i as f64 / n, fmt_value(&v))
                })
                .collect(),
        };
    }
    let (lo, hi) = bounds.expect("a numeric distribution has bounds");
    if p.dist.log_scale() && lo > 0.0 && hi > lo {
        let (l, h) = (lo.ln(), hi.ln());
        let at = move |v: f64| (v.max(f64::MIN_POSITIVE).ln() - l) / (h - l);
        return ParAxis {
            key: p.path.clone(),
            label: format!("{name} (log)"),
            ticks: log_ticks(lo, hi)
                .into_iter()
                .map(|t| (at(t), log_label(t)))
                .collect(),
            at: Box::new(at),
        };
    }
    let integer = matches!(p.dist, Distribution::Int { .. });
    linear_axis(&p.path, name.into(), lo, hi, integer)
}

/// The completed trials with a finite value, in trial order.
fn completed(st: &SweepState) -> Vec<(&Trial, f64)> {
    st.trials
        .iter()
        .filter(|t| t.state == TrialState::Completed)
        .filter_map(|t| Some((t, t.value.filter(|v| v.is_finite())?)))
        .collect()
}

/// Parallel coordinates: one vertical axis per parameter (log axes for log-scale ones, the
/// choices' names on categorical ones) and one for the objective; one polyline per completed
/// trial, coloured by its value (viridis, yellow better), the best trial on top in red.
pub fn parallel_svg(sweep: &Sweep, st: &SweepState) -> String {
    let metric = sweep.objective.metric_name();
    let names = short_names(&sweep.space);
    let trials = completed(st);
    let (vmin, vmax) = trials
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    let mut axes: Vec<ParAxis> = sweep
        .space
        .params
        .iter()
        .zip(&names)
        .map(|(p, n)| param_axis(p, n))
        .collect();
    axes.push(linear_axis("objective", metric.clone(), vmin, vmax, false));
    let spacing = 150.0;
    let (left, top, height) = (80.0, 64.0, 430.0);
    let plot_right = left + spacing * (axes.len() - 1) as f64;
    let g = ParGeometry {
        axes,
        spacing,
        left,
        top,
        bottom: height - 36.0,
        plot_right,
        vmin,
        vmax,
        maximize: sweep.objective.direction() == Direction::Maximize,
        metric,
    };
    let width = (plot_right + 150.0).max(560.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12"><title>Parallel coordinates</title><rect width="100%" height="100%" fill="#ffffff"/><text x="{cx}" y="20" text-anchor="middle" font-size="14" font-weight="bold">Parallel coordinates: completed trials by parameter and {m}</text>"##,
        cx = width / 2.0,
        m = escape(&g.metric)
    );
    g.trial_lines(&mut s, sweep, st.best(sweep).map(|b| b.number), &trials);
    g.axis_lines(&mut s);
    g.colour_scale(&mut s);
    s.push_str("</svg>\n");
    s
}

/// The axes of a parallel-coordinates plot and where they lie, shared by its layers.
struct ParGeometry {
    axes: Vec<ParAxis>,
    spacing: f64,
    left: f64,
    top: f64,
    bottom: f64,
    plot_right: f64,
    vmin: f64,
    vmax: f64,
    maximize: bool,
    metric: String,
}

impl ParGeometry {
    fn x_of(&self, k: usize) -> f64 {
        self.left + self.spacing * k as f64
    }

    fn y_of(&self, f: f64) -> f64 {
        self.bottom - f.clamp(0.0, 1.0) * (self.bottom - self.top)
    }

    /// 1 for the best value, 0 for the worst.
    fn goodness(&self, v: f64) -> f64 {
        if self.vmax > self.vmin {
            let t = (v - self.vmin) / (self.vmax - self.vmin);
            if self.maximize { t } else { 1.0 - t }
        } else {
            1.0
        }
    }

    /// One polyline per completed trial, coloured by its value.
    fn trial_lines(
        &self,
        s: &mut String,
        sweep: &Sweep,
        best: Option<u32>,
        trials: &[(&Trial, f64)],
    ) {
        // Worse trials first, so that the better ones lie on top; the best last of all.
        let mut order: Vec<&(&Trial, f64)> = trials.iter().collect();
        order.sort_by(|a, b| {
            (Some(a.0.number) == best)
                .cmp(&(Some(b.0.number) == best))
                .then(self.goodness(a.1).total_cmp(&self.goodness(b.1)))
        });
        s.push_str(r#"<g fill="none" stroke-linejoin="round">"#);
        for (t, v) in order {
            let mut pts = vec![];
            for (k, p) in sweep.space.params.iter().enumerate() {
                if let Some(x) = t.params.get(&p.path).and_then(|j| p.dist.from_json(j)) {
                    pts.push(format!(
                        "{:.2},{:.2}",
                        self.x_of(k),
                        self.y_of((self.axes[k].at)(x))
                    ));
                }
            }
            let k = self.axes.len() - 1;
            pts.push(format!(
                "{:.2},{:.2}",
                self.x_of(k),
                self.y_of((self.axes[k].at)(*v))
            ));
            let is_best = Some(t.number) == best;
            let (class, colour, stroke_w) = if is_best {
                ("trial best", "#e15759".to_string(), 3.5)
            } else {
                (
                    "trial",
                    hex(super::slides::colour_scale(self.goodness(*v))),
                    1.8,
                )
            };
            let _ = write!(
                s,
                r#"<polyline class="{class}" data-trial="{id}" points="{pts}" stroke="{colour}" stroke-width="{stroke_w}" stroke-opacity="0.9"><title>{id}: {m} {val}</title></polyline>"#,
                id = escape(&t.id),
                pts = pts.join(" "),
                m = escape(&self.metric),
                val = fmt_num(*v)
            );
        }
        s.push_str("</g>");
    }

    /// The axes over the lines, their labels with a white halo to stay readable.
    fn axis_lines(&self, s: &mut String) {
        let (top, bottom) = (self.top, self.bottom);
        let halo = r##"stroke="#ffffff" stroke-width="3" paint-order="stroke""##;
        for (k, a) in self.axes.iter().enumerate() {
            let x = self.x_of(k);
            let _ = write!(
                s,
                r##"<g class="axis" data-axis="{key}"><line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#555555" stroke-width="1.5"/><text x="{x}" y="{ly}" text-anchor="middle" font-weight="bold">{label}</text>"##,
                key = escape(&a.key),
                ly = top - 14.0,
                label = escape(&a.label)
            );
            for (f, label) in &a.ticks {
                let y = self.y_of(*f);
                let _ = write!(
                    s,
                    r##"<line x1="{x0}" y1="{y:.2}" x2="{x}" y2="{y:.2}" stroke="#555555"/><text x="{tx}" y="{y:.2}" text-anchor="end" dy="0.35em" font-size="11" fill="#333333" {halo}>{l}</text>"##,
                    x0 = x - 5.0,
                    tx = x - 8.0,
                    l = escape(label)
                );
            }
            s.push_str("</g>");
        }
    }

    /// The colour scale, better at the top.
    fn colour_scale(&self, s: &mut String) {
        let (top, bottom) = (self.top, self.bottom);
        let (bx, bw) = (self.plot_right + 60.0, 14.0);
        s.push_str(r#"<defs><linearGradient id="parallel-scale" x1="0" y1="1" x2="0" y2="0">"#);
        for i in 0..=8 {
            let t = i as f64 / 8.0;
            let _ = write!(
                s,
                r#"<stop offset="{t}" stop-color="{}"/>"#,
                hex(super::slides::colour_scale(t))
            );
        }
        let (better, worse) = if self.maximize {
            (self.vmax, self.vmin)
        } else {
            (self.vmin, self.vmax)
        };
        let _ = write!(
            s,
            r##"</linearGradient></defs><g class="scale"><rect x="{bx}" y="{top}" width="{bw}" height="{bh}" fill="url(#parallel-scale)" stroke="#555555"/><text x="{tx}" y="{top}" dy="0.8em">{b}</text><text x="{tx}" y="{bottom}">{w}</text><text transform="translate({lx} {my}) rotate(-90)" text-anchor="middle" fill="#57606a">{m} (better: yellow)</text></g>"##,
            bh = bottom - top,
            tx = bx + bw + 4.0,
            b = escape(&fmt_num(better)),
            w = escape(&fmt_num(worse)),
            lx = bx - 6.0,
            my = (top + bottom) / 2.0,
            m = escape(&self.metric)
        );
    }
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// How a parameter is searched, in words: `log_uniform 0.0001 to 0.1`, `categorical: a, b`.
fn describe(d: &Distribution) -> String {
    let scale = if d.log_scale() { ", log scale" } else { "" };
    match d {
        Distribution::Uniform { low, high } | Distribution::LogUniform { low, high } => {
            format!(
                "{} {} to {}{scale}",
                d.kind(),
                fmt_num(*low),
                fmt_num(*high)
            )
        }
        Distribution::Int {
            low, high, step, ..
        } => {
            format!("{} {low} to {high}, step {step}{scale}", d.kind())
        }
        Distribution::Categorical { choices } => {
            let names: Vec<String> = choices
                .iter()
                .map(|c| fmt_value(&serde_json::to_value(c).unwrap_or(serde_json::Value::Null)))
                .collect();
            format!("{}: {}", d.kind(), names.join(", "))
        }
    }
}

/// The page of `sweep` as recorded in `st`.
pub fn sweep_page(sweep: &Sweep, st: &SweepState) -> Page {
    let sum = summary(sweep, st);
    let mut p = PageBody {
        sweep,
        st,
        metric: sweep.objective.metric_name(),
        best: st.best(sweep),
        b: String::new(),
        plots: 0,
        notes: vec![],
    };
    p.heading(&sum);
    p.summary_section(&sum);
    p.objective_section();
    p.importance_section(&sum);
    p.parallel_section();
    p.best_section();
    p.trials_table();
    p.space_table();
    Page {
        html: page(&format!("idc sweep: {}", sweep.name), &p.b),
        plots: p.plots,
        notes: p.notes,
    }
}

/// A sweep's page as it is written, section by section: its HTML so far, how many plots it
/// shows, and what it could not show and why.
struct PageBody<'a> {
    sweep: &'a Sweep,
    st: &'a SweepState,
    metric: String,
    best: Option<&'a Trial>,
    b: String,
    plots: usize,
    notes: Vec<String>,
}

impl PageBody<'_> {
    /// Shows an inline plot.
    fn plot(&mut self, svg: &str, id: &str, alt: &str) {
        self.b.push_str(&inline(svg, id, alt));
        self.plots += 1;
    }

    /// Says why something is missing: `shown` on the page, `listed` in the notes.
    fn missing(&mut self, shown: &str, listed: String) {
        self.b.push_str(&note(shown));
        self.notes.push(listed);
    }

    /// The title and the one-line state of the sweep under it.
    fn heading(&mut self, sum: &Summary) {
        let trials = format!(
            "{} of {} trials: {} running, {} completed, {} pruned, {} failed",
            sum.trials, sum.max_trials, sum.running, sum.completed, sum.pruned, sum.failed
        );
        let _ = writeln!(
            self.b,
            "<h1>Sweep {}</h1>\n<p class=\"sub\">{} {} · {} sampler · {} pruner · {trials}{}</p>",
            escape(&self.sweep.name),
            escape(&crate::output::name_of(&sum.direction)),
            escape(&self.metric),
            escape(&sum.sampler),
            escape(&sum.pruner),
            match &self.st.finished_at {
                Some(at) => format!(" · finished {}", escape(at)),
                None => String::new(),
            }
        );
    }

    /// The sweep's settings, times and best trial, as a table.
    fn summary_section(&mut self, sum: &Summary) {
        let (sweep, st, metric) = (self.sweep, self.st, &self.metric);
        self.b.push_str("<section><h2>Summary</h2>\n");
        let mut rows = vec![
            ("sweep", sweep.name.clone()),
            (
                "objective",
                format!(
                    "{} {} (its best over a trial's epochs)",
                    crate::output::name_of(&sum.direction),
                    metric
                ),
            ),
            (
                "budget",
                format!(
                    "{} trials, {} at a time",
                    sweep.max_trials, sweep.parallelism
                ),
            ),
            ("sampler", sweep.sampler.describe()),
            ("pruner", sum.pruner.clone()),
            ("created", st.created_at.clone()),
            ("updated", st.updated_at.clone()),
        ];
        if let Some(d) = &sweep.description {
            rows.insert(1, ("description", d.clone()));
        }
        if let Some(at) = &st.finished_at {
            rows.push(("finished", at.clone()));
        }
        match self.best {
            Some(t) => rows.push((
                "best",
                format!(
                    "{} (run {}): {} {} at epoch {}",
                    t.id,
                    t.run_id,
                    metric,
                    t.value.map(fmt_num).unwrap_or_default(),
                    t.best_epoch.unwrap_or(0)
                ),
            )),
            None => rows.push(("best", "no trial has completed yet".into())),
        }
        self.b.push_str(&kv_table(&rows));
        self.b.push_str("</section>\n");
    }

    /// Each trial's value with the best so far.
    fn objective_section(&mut self) {
        self.b
            .push_str("<section id=\"objective\"><h2>Objective per trial</h2>\n");
        match objective_plot(self.sweep, self.st) {
            Some(p) => {
                let alt = format!("{} per trial", self.metric);
                self.plot(&p.to_svg(), "objective-plot", &alt);
                let _ = writeln!(
                    self.b,
                    "<p class=\"legend\">Each dot is a trial: its {} (the best over its epochs; for a pruned trial, the best before it was stopped). The dashed line is the best completed value so far. Failed trials have no value and sit on the bottom edge.</p>",
                    escape(&self.metric)
                );
            }
            None => {
                let why = "no trial has a value yet".to_string();
                self.missing(
                    &format!("Objective per trial: {why}."),
                    format!("objective per trial: {why}"),
                );
            }
        }
        self.b.push_str("</section>\n");
    }

    /// The parameters' importance bars, and how they are estimated.
    fn importance_section(&mut self, sum: &Summary) {
        self.b
            .push_str("<section id=\"importance\"><h2>Parameter importance</h2>\n");
        match &sum.importance_note {
            None => self.plot(
                &importance_svg(&sum.importance, &self.metric),
                "importance-plot",
                "parameter importance",
            ),
            Some(why) => self.missing(
                &format!("Parameter importance {why}."),
                format!("parameter importance: {why}"),
            ),
        }
        let _ = writeln!(
            self.b,
            "<p class=\"legend\">How it is estimated: the completed trials are grouped by each parameter's value (about √n quantile bins for a number, at most {}, on a log scale for log-scale parameters; one bin per choice for a categorical), and the correlation ratio η² = between-bin variance / total variance of the {} is the share of its variance that this parameter explains on its own (first order: interactions are not counted). The bars show each parameter's η² normalised so they sum to 100%. With few trials, chance alone gives every parameter some share: read small differences as noise.</p>",
            importance::MAX_BINS,
            escape(&self.metric)
        );
        self.b.push_str("</section>\n");
    }

    /// The completed trials through their parameters, when there are two or more.
    fn parallel_section(&mut self) {
        self.b
            .push_str("<section id=\"parallel\"><h2>Parallel coordinates</h2>\n");
        let done = completed(self.st).len();
        if done >= 2 {
            self.plot(
                &parallel_svg(self.sweep, self.st),
                "parallel-plot",
                "parallel coordinates of the completed trials",
            );
            let _ = writeln!(
                self.b,
                "<p class=\"legend\">One line per completed trial through its parameter values and its {}; colour by value (yellow: better), the best trial in red on top. Axes marked (log) are on a log scale; the parameter axes span the search space.</p>",
                escape(&self.metric)
            );
        } else {
            let why = format!("needs at least two completed trials (has {done})");
            self.missing(
                &format!("Parallel coordinates {why}."),
                format!("parallel coordinates: {why}"),
            );
        }
        self.b.push_str("</section>\n");
    }

    /// The best trial: its value, parameters and curve.
    fn best_section(&mut self) {
        self.b
            .push_str("<section id=\"best\"><h2>Best trial</h2>\n");
        match self.best {
            Some(t) => {
                let mut rows = vec![
                    ("trial", t.id.clone()),
                    ("run", t.run_id.clone()),
                    (
                        self.metric.as_str(),
                        format!(
                            "{} at epoch {}",
                            t.value.map(fmt_num).unwrap_or_default(),
                            t.best_epoch.unwrap_or(0)
                        ),
                    ),
                ];
                for p in &self.sweep.space.params {
                    rows.push((
                        p.path.as_str(),
                        t.params.get(&p.path).map(fmt_value).unwrap_or_default(),
                    ));
                }
                rows.push((
                    "curve",
                    t.intermediate
                        .iter()
                        .map(|&v| fmt_num(v))
                        .collect::<Vec<_>>()
                        .join(" "),
                ));
                let table = kv_table(&rows);
                self.b.push_str(&table);
                if t.intermediate.is_empty() {
                    self.missing(
                        "The best trial recorded no epoch.",
                        "best trial's curve: no epoch recorded".into(),
                    );
                } else {
                    let alt = format!("{} by epoch of {}", self.metric, t.id);
                    self.plot(&curve_plot(self.sweep, t).to_svg(), "best-curve-plot", &alt);
                }
                let _ = writeln!(
                    self.b,
                    "<p class=\"legend\">Its run's own report: <code>idcctl report {} --html DIR</code>.</p>",
                    escape(&t.run_id)
                );
            }
            None => self.missing(
                "No trial has completed yet.",
                "best trial: no trial has completed yet".into(),
            ),
        }
        self.b.push_str("</section>\n");
    }

    /// Every trial, one row each: state, value, epochs, parameters, and why it ended.
    fn trials_table(&mut self) {
        let (sweep, b) = (self.sweep, &mut self.b);
        b.push_str("<section id=\"trials\"><h2>Trials</h2>\n<table class=\"trials\">\n<thead><tr><th>trial</th><th>state</th>");
        let _ = write!(
            b,
            "<th>{}</th><th>best epoch</th><th>epochs</th>",
            escape(&self.metric)
        );
        for n in &short_names(&sweep.space) {
            let _ = write!(b, "<th>{}</th>", escape(n));
        }
        b.push_str("<th>why</th></tr></thead>\n<tbody>\n");
        for t in &self.st.trials {
            let is_best = self.best.is_some_and(|x| x.number == t.number);
            let _ = write!(
                b,
                "<tr data-trial=\"{}\" data-state=\"{}\"{}><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                escape(&t.id),
                escape(&crate::output::name_of(&t.state)),
                if is_best { " class=\"best\"" } else { "" },
                escape(&t.id),
                if is_best { " ★" } else { "" },
                escape(&crate::output::name_of(&t.state)),
                t.value.map(fmt_num).unwrap_or_default(),
                t.best_epoch.map(|e| e.to_string()).unwrap_or_default(),
                t.intermediate.len()
            );
            for p in &sweep.space.params {
                let _ = write!(
                    b,
                    "<td>{}</td>",
                    escape(&t.params.get(&p.path).map(fmt_value).unwrap_or_default())
                );
            }
            let _ = writeln!(
                b,
                "<td class=\"why\">{}</td></tr>",
                escape(t.reason.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</tbody></table>\n<p class=\"legend\">The value is the best over the trial's epochs (for a pruned trial, before it was stopped); ★: the best completed trial.</p>\n</section>\n");
    }

    /// How each parameter is searched.
    fn space_table(&mut self) {
        self.b.push_str("<section id=\"space\"><h2>Search space</h2>\n<table class=\"left\">\n<thead><tr><th>parameter</th><th>searched as</th></tr></thead>\n<tbody>\n");
        for p in &self.sweep.space.params {
            let _ = writeln!(
                self.b,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(&p.path),
                escape(&describe(&p.dist))
            );
        }
        self.b.push_str("</tbody></table>\n</section>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWEEP: &str = "apiVersion: idc/v1\nkind: Sweep\nname: page\nbase:\n  dataset: {url: 'file:///nowhere/ds'}\n  train:\n    model: {kind: logreg}\n    epochs: 3\n  storage: 'file:///nowhere'\nsearch:\n  train.optimizer.lr: {kind: log_uniform, low: 1.0e-4, high: 1.0e-1}\n  train.batch_size: {kind: categorical, choices: [16, 32]}\n  train.sampling: {kind: categorical, choices: [weighted, shuffle]}\nobjective: {metric: roc_auc}\nmax_trials: 8\nparallelism: 2\n";

    fn sweep() -> Sweep {
        crate::sweep::manifest::parse(SWEEP, "page.yaml").unwrap()
    }

    fn trial(number: u32, state: TrialState, lr: f64, curve: &[f64]) -> Trial {
        let best = crate::sweep::driver::best_of(&sweep(), curve);
        Trial {
            id: Trial::id_of(number),
            number,
            run_id: format!("page-t{number:03}"),
            params: [
                ("train.optimizer.lr".to_string(), serde_json::json!(lr)),
                (
                    "train.batch_size".to_string(),
                    serde_json::json!([16, 32][number as usize % 2]),
                ),
                (
                    "train.sampling".to_string(),
                    serde_json::json!(["weighted", "shuffle"][number as usize % 2]),
                ),
            ]
            .into(),
            state,
            value: best.map(|b| b.1).filter(|_| state != TrialState::Failed),
            best_epoch: best.map(|b| b.0),
            intermediate: curve.to_vec(),
            reason: (state == TrialState::Failed).then(|| "worker exited 1".into()),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
            interrupted: false,
        }
    }

    fn state(trials: Vec<Trial>) -> SweepState {
        let mut st = SweepState::new("page");
        st.trials = trials;
        st
    }

    fn full() -> SweepState {
        use TrialState::*;
        state(vec![
            trial(1, Completed, 1e-3, &[0.70, 0.78, 0.80]),
            trial(2, Pruned, 1e-4, &[0.55]),
            trial(3, Completed, 3e-3, &[0.72, 0.82, 0.84]),
            trial(4, Failed, 5e-2, &[]),
            trial(5, Completed, 2e-2, &[0.60, 0.66, 0.69]),
            trial(6, Running, 1e-2, &[0.75]),
        ])
    }

    #[test]
    fn the_page_shows_every_section_for_a_sweep_with_results() {
        let (s, st) = (sweep(), full());
        let p = sweep_page(&s, &st);
        assert_eq!(p.plots, 4, "{:?}", p.notes);
        assert!(p.notes.is_empty());
        let h = &p.html;
        assert_eq!(h.matches("<svg data-plot").count(), 4);
        // One line per completed trial, the best (t003) highlighted; one axis per parameter
        // and the objective, lr on a log scale with decade ticks.
        assert_eq!(h.matches("<polyline class=\"trial").count(), 3);
        assert_eq!(
            h.matches("class=\"trial best\" data-trial=\"t003\"")
                .count(),
            1
        );
        assert_eq!(h.matches("<g class=\"axis\"").count(), 4);
        assert!(h.contains(">lr (log)</text>") && h.contains(">0.001</text>"));
        assert!(h.contains(">weighted</text>") && h.contains(">shuffle</text>"));
        for path in ["train.optimizer.lr", "train.batch_size", "train.sampling"] {
            assert!(h.contains(&format!("<g class=\"bar\" data-param=\"{path}\">")));
        }
        // Clip paths are the plot's own.
        assert!(!h.contains("id=\"area\"") && h.contains("url(#objective-plot-area)"));
        assert!(h.contains("data-trial=\"t004\" data-state=\"failed\""));
        assert!(h.contains("worker exited 1") && h.contains("η²"));
        assert!(h.contains("log_uniform 1.000e-4 to 0.1, log scale"));
    }

    #[test]
    fn the_best_so_far_steps_at_each_improvement() {
        let (s, st) = (sweep(), full());
        assert_eq!(
            best_so_far(&s, &st),
            [
                (1.0, 0.80),
                (2.0, 0.80),
                (3.0, 0.80),
                (3.0, 0.84),
                (4.0, 0.84),
                (5.0, 0.84),
                (6.0, 0.84)
            ]
        );
        let p = objective_plot(&s, &st).unwrap();
        let names: Vec<&str> = p.series.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "best so far",
                "completed",
                "pruned (best before it stopped)",
                "failed (no value)"
            ]
        );
        // The failed trial sits on the bottom edge.
        let bottom = p.y_domain.unwrap().0;
        assert_eq!(p.series[3].points, [(4.0, bottom)]);
    }

    #[test]
    fn empty_and_single_trial_sweeps_get_notes() {
        use TrialState::*;
        let s = sweep();
        let p = sweep_page(&s, &state(vec![]));
        assert_eq!(p.plots, 0);
        assert_eq!(p.notes.len(), 4, "{:?}", p.notes);
        assert!(p.html.contains("No trial has completed yet."));
        let one = state(vec![
            trial(1, Completed, 1e-3, &[0.7, 0.8]),
            trial(2, Failed, 1e-2, &[]),
        ]);
        let p = sweep_page(&s, &one);
        // The objective and the best curve; importance and parallel coordinates need two.
        assert_eq!(p.plots, 2, "{:?}", p.notes);
        assert!(p.html.contains("needs at least two completed trials"));
        assert!(!p.html.contains("<polyline class=\"trial"));
        let sum = summary(&s, &one);
        assert!(sum.importance.is_empty() && sum.importance_note.is_some());
        let text = summary_text(&sum);
        assert!(
            text.contains("best t001 curve (roc_auc by epoch): 0.7 0.8  ▁█"),
            "{text}"
        );
        assert!(
            text.contains("parameter importance: needs at least two"),
            "{text}"
        );
    }

    #[test]
    fn the_summary_lists_every_parameter() {
        let (s, st) = (sweep(), full());
        let sum = summary(&s, &st);
        assert_eq!(
            (sum.completed, sum.pruned, sum.failed, sum.running),
            (3, 1, 1, 1)
        );
        assert_eq!(sum.best.as_ref().unwrap().trial, "t003");
        assert_eq!(sum.importance.len(), 3);
        let text = summary_text(&sum);
        for n in ["lr", "batch_size", "sampling"] {
            assert!(text.contains(&format!("\n  {n}")), "{text}");
        }
        let json = serde_json::to_value(&sum).unwrap();
        assert_eq!(json["best"]["curve"], serde_json::json!([0.72, 0.82, 0.84]));
        assert_eq!(json["importance"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn log_axes_tick_at_decades() {
        let labels: Vec<String> = log_ticks(1e-4, 1e-1).into_iter().map(log_label).collect();
        assert_eq!(labels, ["1e-4", "0.001", "0.01", "0.1"]);
        assert_eq!(log_ticks(2.0, 5.0), [2.0, 5.0]);
        assert_eq!(log_label(1e-4), "1e-4");
        assert_eq!(log_label(0.01), "0.01");
        assert_eq!(log_label(3e-5), "3.000e-5");
    }
}
