//! HTML pages of reports: one self-contained file (inline CSS and images, no external fetches)
//! beside its SVG plots, which it references by relative paths. A small inline script checks on
//! load that every plot and patch image rendered, and records the result on `<body>`
//! (`data-plots-ok`, `data-plots-failed`, `data-patches-ok`, `data-patches-failed`).

use super::compare::Comparison;
use super::plot::{self, LinePlot, Series, escape};
use super::{DatasetView, Patch, ReportError, RunData};
use crate::dataset::split::Split;
use crate::metrics::{BinaryMetrics, ErrorKind};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// What a page was written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The HTML file.
    pub page: PathBuf,
    /// The plot files beside it.
    pub plots: Vec<PathBuf>,
}

/// Standard base64 (with padding), for images inlined as `data:` URLs.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const CSS: &str = r#"
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 0; background: #f4f5f7; color: #1f2328; font-size: 14px; }
main { max-width: 1220px; margin: 0 auto; padding: 20px 24px 40px; }
h1 { font-size: 22px; margin: 4px 0; }
h2 { font-size: 17px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 16px 0 8px; }
.sub { color: #57606a; margin: 0 0 16px; }
section { background: #fff; border: 1px solid #d8dee4; border-radius: 6px; padding: 16px 18px;
  margin: 0 0 16px; }
table { border-collapse: collapse; }
th, td { padding: 4px 12px; border-bottom: 1px solid #eaeef2; text-align: right;
  font-variant-numeric: tabular-nums; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #d0d7de; }
td.group { font-weight: bold; padding-top: 10px; color: #57606a; }
.kv td:first-child { color: #57606a; }
table.left td, table.left th { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.plots figure { margin: 0; }
.plots img { max-width: 100%; height: auto; border: 1px solid #d8dee4; background: #fff; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(118px, 1fr)); gap: 10px; }
.patch { margin: 0; text-align: center; font-size: 12px; color: #57606a; }
.patch img { width: 100px; height: 100px; image-rendering: pixelated; border: 3px solid; }
.patch .p { font-weight: bold; color: #1f2328; font-size: 13px; }
.fp img { border-color: #e15759; }
.fn img { border-color: #f28e2b; }
pre { background: #f6f8fa; padding: 10px 12px; overflow: auto; font-size: 12.5px; margin: 0; }
.best { font-weight: bold; color: #1a7f37; }
tr.diff td { background: #fff8c5; font-weight: bold; }
.note { background: #fff8e6; border-left: 4px solid #f28e2b; padding: 6px 10px; margin: 6px 0; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  margin-right: 6px; vertical-align: -1px; }
.legend { color: #57606a; font-size: 12px; margin-top: 8px; }
footer { color: #8c959f; font-size: 12px; margin-top: 20px; }
"#;

/// Checks on load that every plot and patch rendered; the result goes on `<body>`.
const CHECK_SCRIPT: &str = r#"
(function () {
  function check() {
    var ok = 0, failed = [], patches = 0, patchesFailed = [];
    document.querySelectorAll('img[data-plot]').forEach(function (img) {
      if (img.complete && img.naturalWidth > 0 && img.naturalHeight > 0) { ok++; }
      else { failed.push(img.getAttribute('src')); }
    });
    document.querySelectorAll('svg[data-plot]').forEach(function (svg) {
      var b = svg.getBoundingClientRect();
      if (b.width > 0 && b.height > 0) { ok++; } else { failed.push(svg.id || 'inline-svg'); }
    });
    document.querySelectorAll('img[data-patch]').forEach(function (img) {
      if (img.complete && img.naturalWidth === 50 && img.naturalHeight === 50) { patches++; }
      else { patchesFailed.push(img.getAttribute('data-patch')); }
    });
    var b = document.body;
    b.setAttribute('data-plots-ok', String(ok));
    b.setAttribute('data-plots-failed', failed.join(' '));
    b.setAttribute('data-patches-ok', String(patches));
    b.setAttribute('data-patches-failed', patchesFailed.join(' '));
    b.setAttribute('data-checked', 'true');
  }
  if (document.readyState === 'complete') { check(); } else { window.addEventListener('load', check); }
})();
"#;

/// A whole page around `body`.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}<footer>made by idcctl {} on {}</footer>\n</main>\n<script>{CHECK_SCRIPT}</script>\n</body>\n</html>\n",
        escape(title),
        env!("CARGO_PKG_VERSION"),
        escape(&crate::clock::now_rfc3339()),
    )
}

fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// An `<img>` of a plot file, counted by the check script.
fn plot_img(file: &str, alt: &str) -> String {
    format!(
        "<figure><img data-plot src=\"{}\" alt=\"{}\"></figure>\n",
        escape(file),
        escape(alt)
    )
}

fn epoch_series(
    run: &RunData,
    name: &str,
    color: &str,
    of: impl Fn(&super::EpochPoint) -> f64,
) -> Series {
    Series::new(
        name,
        run.epochs.iter().map(|e| (e.epoch as f64, of(e))).collect(),
        color,
    )
    .markers(true)
}

/// Train and validation loss per epoch.
pub fn loss_plot(run: &RunData) -> LinePlot {
    LinePlot::new("Loss per epoch", "epoch", "loss")
        .integer_x()
        .series(epoch_series(run, "train loss", plot::color(0), |e| {
            e.train_loss
        }))
        .series(epoch_series(run, "validation loss", plot::color(1), |e| {
            e.val.loss
        }))
}

/// Validation accuracy, balanced accuracy, F1, ROC-AUC and PR-AUC per epoch.
pub fn val_metrics_plot(run: &RunData) -> LinePlot {
    use crate::metrics::MetricName::*;
    let mut p =
        LinePlot::new("Validation metrics per epoch (at 0.5)", "epoch", "value").integer_x();
    for (i, m) in [Accuracy, BalancedAccuracy, F1, RocAuc, PrAuc]
        .into_iter()
        .enumerate()
    {
        p = p.series(epoch_series(run, m.label(), plot::color(i), |e| {
            m.of(&e.val)
        }));
    }
    p
}

/// Test ROC curves of `runs`, with the chance diagonal.
pub fn roc_plot(runs: &[&RunData], label_by_run: bool) -> LinePlot {
    let mut p = LinePlot::new(
        "ROC curve (test)",
        "false positive rate",
        "true positive rate",
    )
    .x_domain(0.0, 1.0)
    .y_domain(0.0, 1.0);
    for (i, r) in runs.iter().enumerate() {
        let name = if label_by_run {
            format!("{} (AUC {:.3})", r.id(), r.report.test.roc_auc)
        } else {
            format!("ROC, AUC {:.3}", r.report.test.roc_auc)
        };
        p = p.series(Series::new(
            name,
            r.report.roc.iter().map(|&(x, y, _)| (x, y)).collect(),
            plot::color(i),
        ));
    }
    p.series(Series::new("chance", vec![(0.0, 0.0), (1.0, 1.0)], "#999999").dashed())
}

/// Test precision-recall curves of `runs`, with the positive rate of the first as the chance
/// level.
pub fn pr_plot(runs: &[&RunData], label_by_run: bool) -> LinePlot {
    let mut p = LinePlot::new("Precision-recall curve (test)", "recall", "precision")
        .x_domain(0.0, 1.0)
        .y_domain(0.0, 1.0);
    for (i, r) in runs.iter().enumerate() {
        let name = if label_by_run {
            format!("{} (AP {:.3})", r.id(), r.report.test.pr_auc)
        } else {
            format!("PR, average precision {:.3}", r.report.test.pr_auc)
        };
        p = p.series(Series::new(
            name,
            r.report.pr.iter().map(|&(x, y, _)| (x, y)).collect(),
            plot::color(i),
        ));
    }
    if let Some(r) = runs.first() {
        let c = &r.report.test.confusion;
        let n = r.report.test.count.max(1) as f64;
        let rate = (c.tp + c.fn_) as f64 / n;
        p = p.series(
            Series::new(
                format!("chance (IDC rate {rate:.3})"),
                vec![(0.0, rate), (1.0, rate)],
                "#999999",
            )
            .dashed(),
        );
    }
    p
}

/// Shows one metric of an evaluation.
type ShowMetric = Box<dyn Fn(&BinaryMetrics) -> String>;

/// The rows of a metrics table: the threshold, every metric, the patch count.
fn metric_rows() -> Vec<(&'static str, ShowMetric)> {
    let mut rows: Vec<(&'static str, ShowMetric)> =
        vec![("threshold", Box::new(|m| format!("{:.3}", m.threshold)))];
    for metric in crate::metrics::MetricName::ALL {
        rows.push((
            metric.label(),
            Box::new(move |m| format!("{:.4}", metric.of(m))),
        ));
    }
    rows.push(("patches", Box::new(|m| m.count.to_string())));
    rows
}

fn kv_table(rows: &[(&str, String)]) -> String {
    let mut s = String::from("<table class=\"kv left\">\n");
    for (k, v) in rows {
        let _ = writeln!(s, "<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(v));
    }
    s.push_str("</table>\n");
    s
}

fn patch_figure(p: &Patch) -> String {
    let m = &p.info;
    let (class, truth) = match m.error {
        ErrorKind::FalsePositive => ("fp", "no IDC"),
        ErrorKind::FalseNegative => ("fn", "IDC"),
    };
    let name = format!("patient {} x{} y{}", m.patient, m.x, m.y);
    format!(
        "<figure class=\"patch {class}\"><img data-patch=\"{id}\" src=\"data:image/png;base64,{}\" alt=\"{id}, truly {truth}\" title=\"{id} ({}, record {})\"><figcaption><span class=\"p\">p(IDC) {:.3}</span><br>patient {}<br>x{} y{}</figcaption></figure>\n",
        base64(&p.png),
        escape(&m.shard),
        m.record,
        m.probability,
        m.patient,
        m.x,
        m.y,
        id = escape(&name),
    )
}

fn split_table(ds: &DatasetView) -> String {
    let Some(m) = &ds.manifest else {
        return String::new();
    };
    let mut s = String::from(
        "<table>\n<thead><tr><th>split</th><th>patients</th><th>patches</th><th>no IDC (0)</th><th>IDC (1)</th><th>IDC %</th><th>shards</th></tr></thead>\n<tbody>\n",
    );
    for split in Split::ALL {
        let sum = m.splits.get(&split).cloned().unwrap_or_default();
        let _ = writeln!(
            s,
            "<tr><td>{split}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
            sum.patients,
            sum.records,
            sum.class_counts[0],
            sum.class_counts[1],
            100.0 * sum.positive_fraction(),
            m.shards_of(split).count()
        );
    }
    let all = m.class_counts();
    let total = m.records();
    let _ = writeln!(
        s,
        "<tr><td><b>total</b></td><td></td><td>{total}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>\n</tbody></table>",
        all[0],
        all[1],
        if total == 0 {
            0.0
        } else {
            100.0 * all[1] as f64 / total as f64
        },
        m.shards.len()
    );
    let o = &m.options.split;
    s.push_str(&kv_table(&[
        ("dataset", format!("{} at {}", m.id, ds.url)),
        ("staged", format!("{} by {}", m.created_at, m.staged_by)),
        (
            "source",
            format!(
                "{} ({}, {} files seen)",
                m.source.path,
                crate::output::name_of(&m.source.kind),
                m.source.files_seen
            ),
        ),
        (
            "split",
            format!(
                "by {}, val {}, test {}, seed {}",
                crate::output::name_of(&o.method),
                o.val,
                o.test,
                o.seed
            ),
        ),
        (
            "class weights",
            format!("{:.4} / {:.4}", m.class_weights[0], m.class_weights[1]),
        ),
        (
            "padded / skipped",
            format!(
                "{} edge patches padded, {} files skipped",
                m.padded,
                m.skipped.len()
            ),
        ),
    ]));
    s
}

fn notes(notes: &[String]) -> String {
    notes
        .iter()
        .map(|n| format!("<p class=\"note\">{}</p>\n", escape(n)))
        .collect()
}

/// Writes the report of `run` as `dir/index.html` with its plots beside it.
pub fn write_run_report(
    dir: &Path,
    run: &RunData,
    ds: &DatasetView,
) -> Result<Written, ReportError> {
    create_dir(dir)?;
    let r = &run.report;
    let plots: Vec<(&str, String, String)> = vec![
        (
            "loss.svg",
            loss_plot(run).to_svg(),
            "train and validation loss per epoch".into(),
        ),
        (
            "val-metrics.svg",
            val_metrics_plot(run).to_svg(),
            "validation metrics per epoch".into(),
        ),
        (
            "roc.svg",
            roc_plot(&[run], false).to_svg(),
            "ROC curve on test".into(),
        ),
        (
            "pr.svg",
            pr_plot(&[run], false).to_svg(),
            "precision-recall curve on test".into(),
        ),
        (
            "confusion-0.5.svg",
            plot::confusion_svg("Confusion matrix (test) at 0.5", &r.test.confusion),
            "confusion matrix at 0.5".into(),
        ),
        (
            "confusion-val-threshold.svg",
            plot::confusion_svg(
                &format!(
                    "Confusion matrix (test) at val threshold {:.3}",
                    r.test_at_val_threshold.threshold
                ),
                &r.test_at_val_threshold.confusion,
            ),
            "confusion matrix at the validation threshold".into(),
        ),
    ];
    let mut written = Written {
        page: dir.join("index.html"),
        plots: vec![],
    };
    for (file, svg, _) in &plots {
        let path = dir.join(file);
        write_file(&path, svg)?;
        written.plots.push(path);
    }
    let img = |i: usize| plot_img(plots[i].0, &plots[i].2);

    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>Run {}</h1>\n<p class=\"sub\">{} · {} · best epoch {} of {} · finished {}</p>\n",
        escape(run.id()),
        escape(&r.model),
        escape(&crate::output::name_of(&run.status.phase)),
        r.best_epoch,
        r.epochs_run,
        escape(&r.finished_at)
    );
    b.push_str("<section><h2>Summary</h2>\n");
    b.push_str(&kv_table(&[
        ("run", run.id().to_string()),
        ("experiment", run.status.experiment.clone()),
        ("model", r.model.clone()),
        ("device", r.device.clone()),
        (
            "dataset",
            format!("{} ({})", r.dataset_id, run.spec.dataset),
        ),
        (
            "training",
            format!(
                "{:.1} s, {:.0} images/s, best epoch {} of {} run",
                r.train_seconds, r.train_images_per_s, r.best_epoch, r.epochs_run
            ),
        ),
        ("created", run.status.created_at.clone()),
        ("finished", r.finished_at.clone()),
    ]));
    b.push_str("</section>\n<section><h2>Test metrics</h2>\n<table>\n<thead><tr><th>metric</th><th>test at 0.5</th><th>test at val threshold</th><th>val (best epoch, at 0.5)</th></tr></thead>\n<tbody>\n");
    for (name, f) in metric_rows() {
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            f(&r.test),
            f(&r.test_at_val_threshold),
            f(&r.val)
        );
    }
    b.push_str("</tbody></table>\n<p class=\"legend\">The validation threshold maximises F1 on the validation split.</p>\n</section>\n");
    let _ = write!(
        b,
        "<section><h2>Training</h2>\n<div class=\"plots\">\n{}{}</div>\n</section>\n",
        img(0),
        img(1)
    );
    let _ = write!(
        b,
        "<section><h2>Test curves</h2>\n<div class=\"plots\">\n{}{}</div>\n</section>\n",
        img(2),
        img(3)
    );
    let _ = write!(
        b,
        "<section><h2>Confusion matrices (test)</h2>\n<div class=\"plots\">\n{}{}</div>\n</section>\n",
        img(4),
        img(5)
    );

    b.push_str("<section><h2>Most confidently misclassified test patches (at 0.5)</h2>\n");
    b.push_str(&notes(&ds.notes));
    for (kind, class, title) in [
        (
            ErrorKind::FalsePositive,
            "fp",
            "False positives: no IDC, predicted IDC (highest p first)",
        ),
        (
            ErrorKind::FalseNegative,
            "fn",
            "False negatives: IDC, predicted no IDC (lowest p first)",
        ),
    ] {
        let shown: Vec<&Patch> = ds.patches.iter().filter(|p| p.info.error == kind).collect();
        let listed = r.misclassified.iter().filter(|m| m.error == kind).count();
        let total = match kind {
            ErrorKind::FalsePositive => r.test.confusion.fp,
            ErrorKind::FalseNegative => r.test.confusion.fn_,
        };
        let _ = writeln!(
            b,
            "<h3>{} ({} shown of {total})</h3>",
            escape(title),
            shown.len()
        );
        if shown.is_empty() {
            let why = if total == 0 {
                "none"
            } else if listed == 0 {
                "not recorded in this report"
            } else {
                "not readable from the dataset (see above)"
            };
            let _ = writeln!(b, "<p class=\"legend\">{why}</p>");
            continue;
        }
        let _ = writeln!(b, "<div class=\"grid {class}-grid\">");
        for p in shown {
            b.push_str(&patch_figure(p));
        }
        b.push_str("</div>\n");
    }
    b.push_str("<p class=\"legend\">Patches are 50x50 pixels, shown at twice their size; p(IDC) is the model's probability of IDC.</p>\n</section>\n");

    let yaml = serde_yaml::to_string(&r.config).unwrap_or_else(|e| format!("# {e}"));
    let _ = write!(
        b,
        "<section><h2>Config (the training spec as run)</h2>\n<pre>{}</pre>\n</section>\n",
        escape(&yaml)
    );
    b.push_str("<section><h2>Dataset</h2>\n");
    if ds.manifest.is_none() {
        b.push_str(&notes(&ds.notes));
    }
    b.push_str(&split_table(ds));
    b.push_str("</section>\n");

    write_file(
        &written.page,
        &page(&format!("idc report: {}", run.id()), &b),
    )?;
    Ok(written)
}

/// Where a comparison goes: `target` is the HTML file when it ends in `.html` or `.htm`
/// (plots beside it, named after it), otherwise a folder that gets `index.html`.
pub fn comparison_paths(target: &Path) -> (PathBuf, PathBuf, String) {
    let is_file = target
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    if is_file {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let stem = target
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("compare");
        (dir, target.to_path_buf(), format!("{stem}-"))
    } else {
        (
            target.to_path_buf(),
            target.join("index.html"),
            String::new(),
        )
    }
}

/// Writes the comparison of `runs` (overlay plots and side-by-side tables) to `target`: a
/// `.html` file, or a folder that gets `index.html`.
pub fn write_comparison(
    target: &Path,
    runs: &[RunData],
    c: &Comparison,
) -> Result<Written, ReportError> {
    let (dir, page_path, prefix) = comparison_paths(target);
    create_dir(&dir)?;
    let refs: Vec<&RunData> = runs.iter().collect();
    let per_epoch = |title: &str, y: &str, of: fn(&super::EpochPoint) -> f64| {
        let mut p = LinePlot::new(title, "epoch", y).integer_x();
        for (i, r) in runs.iter().enumerate() {
            p = p.series(epoch_series(r, r.id(), plot::color(i), of));
        }
        p
    };
    let plots: Vec<(String, String, &str)> = vec![
        (
            format!("{prefix}val-loss.svg"),
            per_epoch("Validation loss per epoch", "loss", |e| e.val.loss).to_svg(),
            "validation loss per epoch, all runs",
        ),
        (
            format!("{prefix}val-f1.svg"),
            per_epoch("Validation F1 per epoch (at 0.5)", "F1", |e| e.val.f1).to_svg(),
            "validation F1 per epoch, all runs",
        ),
        (
            format!("{prefix}roc.svg"),
            roc_plot(&refs, true).to_svg(),
            "test ROC curves, all runs",
        ),
        (
            format!("{prefix}pr.svg"),
            pr_plot(&refs, true).to_svg(),
            "test precision-recall curves, all runs",
        ),
    ];
    let mut written = Written {
        page: page_path,
        plots: vec![],
    };
    for (file, svg, _) in &plots {
        let path = dir.join(file);
        write_file(&path, svg)?;
        written.plots.push(path);
    }

    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>Comparing {} runs</h1>\n<section><h2>Runs</h2>\n<table class=\"left\">\n<thead><tr><th>run</th><th>model</th><th>phase</th><th>dataset</th><th>finished</th></tr></thead>\n<tbody>",
        runs.len()
    );
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            b,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            plot::color(i),
            escape(r.id()),
            escape(&r.report.model),
            escape(&crate::output::name_of(&r.status.phase)),
            escape(&r.report.dataset_id),
            escape(&r.report.finished_at)
        );
    }
    b.push_str("</tbody></table>\n</section>\n");

    let header: String = c
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "<th><span class=\"swatch\" style=\"background:{}\"></span>{}</th>",
                plot::color(i),
                escape(r)
            )
        })
        .collect();
    let _ = write!(
        b,
        "<section><h2>Metrics</h2>\n<table>\n<thead><tr><th>metric</th>{header}</tr></thead>\n<tbody>\n"
    );
    let mut group = "";
    for m in &c.metrics {
        if m.group != group {
            group = &m.group;
            let _ = writeln!(
                b,
                "<tr><td class=\"group\" colspan=\"{}\">{}</td></tr>",
                c.runs.len() + 1,
                escape(group)
            );
        }
        let cells: String = (0..m.values.len())
            .map(|i| {
                if m.best.contains(&i) {
                    format!("<td class=\"best\">{} ★</td>", m.show(i))
                } else {
                    format!("<td>{}</td>", m.show(i))
                }
            })
            .collect();
        let _ = writeln!(b, "<tr><td>{}</td>{cells}</tr>", escape(&m.metric));
    }
    b.push_str("</tbody></table>\n<p class=\"legend\"><span class=\"best\">★ bold</span>: the best of the row (none marked when all runs are equal).</p>\n</section>\n");

    b.push_str("<section><h2>Plots</h2>\n<div class=\"plots\">\n");
    for (file, _, alt) in &plots {
        b.push_str(&plot_img(file, alt));
    }
    b.push_str("</div>\n</section>\n");

    let differing = c.config.iter().filter(|r| r.differs).count();
    let _ = write!(
        b,
        "<section><h2>Config</h2>\n<table class=\"left\">\n<thead><tr><th>key</th>{header}</tr></thead>\n<tbody>\n"
    );
    for row in &c.config {
        let cells: String = row
            .values
            .iter()
            .map(|v| format!("<td>{}</td>", escape(v.as_deref().unwrap_or("-"))))
            .collect();
        let _ = writeln!(
            b,
            "<tr{}><td>{}</td>{cells}</tr>",
            if row.differs { " class=\"diff\"" } else { "" },
            escape(&row.key)
        );
    }
    let _ = write!(
        b,
        "</tbody></table>\n<p class=\"legend\">Highlighted: differs between the runs ({differing} of {} keys).</p>\n</section>\n",
        c.config.len()
    );
    write_file(
        &written.page,
        &page(&format!("idc: comparing {}", c.runs.join(", ")), &b),
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn comparison_targets() {
        let (dir, page, prefix) = comparison_paths(Path::new("out/cmp.html"));
        assert_eq!(
            (dir, page, prefix.as_str()),
            (PathBuf::from("out"), PathBuf::from("out/cmp.html"), "cmp-")
        );
        let (dir, page, prefix) = comparison_paths(Path::new("cmp.HTML"));
        assert_eq!(
            (dir, page, prefix.as_str()),
            (PathBuf::from("."), PathBuf::from("cmp.HTML"), "cmp-")
        );
        let (dir, page, prefix) = comparison_paths(Path::new("out/cmp"));
        assert_eq!(
            (dir, page, prefix.as_str()),
            (
                PathBuf::from("out/cmp"),
                PathBuf::from("out/cmp/index.html"),
                ""
            )
        );
    }

    #[test]
    fn pages_escape_text_and_carry_the_check() {
        let p = page("a <b> & c", "<p>body</p>");
        assert!(p.contains("<title>a &lt;b&gt; &amp; c</title>"));
        assert!(p.contains("data-plots-ok") && p.contains("naturalWidth"));
        assert!(
            !p.contains("http://") && !p.contains("https://"),
            "no external fetches"
        );
        assert!(plot_img("x\".svg", "<alt>").contains("src=\"x&quot;.svg\" alt=\"&lt;alt&gt;\""));
    }
}
