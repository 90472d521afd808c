//! HTML pages of reports: one self-contained file (inline CSS and images, no external fetches)
//! beside its SVG plots, which it references by relative paths. A small inline script checks on
//! load that every plot, patch image and slide map rendered, and records the result on `<body>`
//! (`data-plots-ok`, `data-plots-failed`, `data-patches-ok`, `data-patches-failed`,
//! `data-maps-ok`, `data-maps-failed`); patches and maps must decode at the size their `data-w`
//! and `data-h` attributes say.

use super::compare::Comparison;
use super::page::{create_dir, kv_table, notes, page, write_file};
use super::plot::{self, LinePlot, Series, escape};
use super::{DatasetView, Patch, ReportError, RunData, SlidesView};
use crate::dataset::split::Split;
use crate::metrics::{BinaryMetrics, ErrorKind, MetricName, MulticlassMetrics};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// What a page was written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The HTML file.
    pub page: PathBuf,
    /// The plot files beside it.
    pub plots: Vec<PathBuf>,
    /// The slide maps (PNGs) and their own page, in `slides/` beside it.
    pub maps: Vec<PathBuf>,
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
            e.val.value(MetricName::Loss)
        }))
}

/// Validation accuracy, balanced accuracy, F1, ROC-AUC and PR-AUC per epoch (K classes:
/// macro averages, no PR-AUC).
pub fn val_metrics_plot(run: &RunData) -> LinePlot {
    use crate::metrics::MetricName::*;
    let binary = run.report.test.binary().is_some();
    let (title, metrics): (&str, &[MetricName]) = if binary {
        (
            "Validation metrics per epoch (at 0.5)",
            &[Accuracy, BalancedAccuracy, F1, RocAuc, PrAuc],
        )
    } else {
        (
            "Validation metrics per epoch",
            &[Accuracy, BalancedAccuracy, F1, RocAuc],
        )
    };
    let mut p = LinePlot::new(title, "epoch", "value").integer_x();
    for (i, &m) in metrics.iter().enumerate() {
        let label = if binary {
            m.label()
        } else {
            m.label_multiclass()
        };
        p = p.series(epoch_series(run, label, plot::color(i), |e| m.of(&e.val)));
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
        let auc = r.report.test.value(MetricName::RocAuc);
        let name = if label_by_run {
            format!("{} (AUC {auc:.3})", r.id())
        } else {
            format!("ROC, AUC {auc:.3}")
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
        let ap = r.report.test.value(MetricName::PrAuc);
        let name = if label_by_run {
            format!("{} (AP {ap:.3})", r.id())
        } else {
            format!("PR, average precision {ap:.3}")
        };
        p = p.series(Series::new(
            name,
            r.report.pr.iter().map(|&(x, y, _)| (x, y)).collect(),
            plot::color(i),
        ));
    }
    if let Some(b) = runs.first().and_then(|r| r.report.test.binary()) {
        let c = &b.confusion;
        let n = b.count.max(1) as f64;
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
            Box::new(move |m| format!("{:.4}", metric.of_binary(m))),
        ));
    }
    rows.push(("patches", Box::new(|m| m.count.to_string())));
    rows
}

fn patch_figure(p: &Patch) -> String {
    let m = &p.info;
    let (class, truth) = match m.error {
        ErrorKind::FalsePositive => ("fp", "no IDC"),
        ErrorKind::FalseNegative | ErrorKind::WrongClass => ("fn", "IDC"),
    };
    let name = format!("patient {} x{} y{}", m.patient, m.x, m.y);
    format!(
        "<figure class=\"patch {class}\"><img data-patch=\"{id}\" data-w=\"{w}\" data-h=\"{h}\" src=\"data:image/png;base64,{}\" alt=\"{id}, truly {truth}\" title=\"{id} ({}, record {})\"><figcaption><span class=\"p\">p(IDC) {:.3}</span><br>patient {}<br>x{} y{}</figcaption></figure>\n",
        BASE64.encode(&p.png),
        escape(&m.shard),
        m.record,
        m.probability,
        m.patient,
        m.x,
        m.y,
        id = escape(&name),
        w = p.shape.width,
        h = p.shape.height,
    )
}

/// A misclassified image of a K-class run: true and predicted class names, the probability of
/// the predicted one, shown at an integer scale near 100 pixels.
fn class_patch_figure(p: &Patch, r: &crate::metrics::AnyReport) -> String {
    let m = &p.info;
    let (truth, predicted) = (r.class_name(m.label), r.class_name(m.predicted_class()));
    let set = if m.y == 1 { "test" } else { "train" };
    let id = format!("{set} image {}", m.x);
    let scale = (100 / p.shape.width.max(1)).max(1);
    format!(
        "<figure class=\"patch wrong\"><img data-patch=\"{id}\" data-w=\"{w}\" data-h=\"{h}\" style=\"width:{sw}px;height:{sh}px\" src=\"data:image/png;base64,{}\" alt=\"{id}: {t}, predicted {pr}\" title=\"{id} ({}, record {})\"><figcaption><span class=\"p\">{pr} {:.3}</span><br>true: {t}<br>{id}</figcaption></figure>\n",
        BASE64.encode(&p.png),
        escape(&m.shard),
        m.record,
        m.probability,
        id = escape(&id),
        t = escape(&truth),
        pr = escape(&predicted),
        w = p.shape.width,
        h = p.shape.height,
        sw = p.shape.width * scale,
        sh = p.shape.height * scale,
    )
}

/// A K x K confusion matrix as an HTML table: rows true classes, columns predicted, each cell
/// shaded by its share of the row.
pub fn confusion_table(confusion: &[Vec<u64>], classes: &[String]) -> String {
    let label = |c: usize| escape(&super::class_label(classes, c));
    let mut s = String::from("<table class=\"confusion\">\n<thead><tr><th>true \\ predicted</th>");
    for c in 0..confusion.len() {
        let _ = write!(s, "<th>{}</th>", label(c));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for (t, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let _ = write!(s, "<tr><th>{}</th>", label(t));
        for (p, &n) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            // From white to the first palette colour (78, 121, 167), as the binary matrix.
            let mix = |to: f64| (255.0 + (to - 255.0) * share).round() as u8;
            let text = if share > 0.55 { "#ffffff" } else { "#222222" };
            let _ = write!(
                s,
                "<td data-true=\"{t}\" data-predicted=\"{p}\" style=\"background:#{:02x}{:02x}{:02x};color:{text}\" title=\"{:.1}% of row\">{n}</td>",
                mix(78.0),
                mix(121.0),
                mix(167.0),
                100.0 * share
            );
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody></table>\n");
    s
}

fn multiclass_metric_table(test: &MulticlassMetrics, val: Option<&MulticlassMetrics>) -> String {
    let mut b = String::from(
        "<table>\n<thead><tr><th>metric</th><th>test</th><th>val (best epoch)</th></tr></thead>\n<tbody>\n",
    );
    let v = |f: &dyn Fn(&MulticlassMetrics) -> f64| {
        (
            format!("{:.4}", f(test)),
            val.map_or("-".into(), |m| format!("{:.4}", f(m))),
        )
    };
    let mut rows: Vec<(String, (String, String))> = super::MULTICLASS_SHOWN
        .iter()
        .map(|&m| (m.label_multiclass().to_string(), v(&|x| m.of_multiclass(x))))
        .collect();
    rows.push(("weighted precision".into(), v(&|x| x.weighted_precision)));
    rows.push(("weighted recall".into(), v(&|x| x.weighted_recall)));
    rows.push(("weighted F1".into(), v(&|x| x.weighted_f1)));
    for (i, k) in test.top_k.iter().enumerate() {
        let of_val = val
            .and_then(|m| m.top_k.get(i))
            .map_or("-".into(), |t| format!("{:.4}", t.accuracy));
        rows.push((
            format!("top-{} accuracy", k.k),
            (format!("{:.4}", k.accuracy), of_val),
        ));
    }
    rows.push((
        "images".into(),
        (
            test.count.to_string(),
            val.map_or("-".into(), |m| m.count.to_string()),
        ),
    ));
    for (name, (t, v)) in rows {
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{t}</td><td>{v}</td></tr>",
            escape(&name)
        );
    }
    b.push_str("</tbody></table>\n");
    b
}

fn per_class_table(m: &MulticlassMetrics, classes: &[String]) -> String {
    let mut b = String::from(
        "<table class=\"per-class\">\n<thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>ROC-AUC (one-vs-rest)</th></tr></thead>\n<tbody>\n",
    );
    for (c, s) in m.per_class.iter().enumerate() {
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td><td>{:.4}</td></tr>",
            escape(&super::class_label(classes, c)),
            s.precision,
            s.recall,
            s.f1,
            s.support,
            s.roc_auc
        );
    }
    b.push_str("</tbody></table>\n");
    b
}

fn split_table(ds: &DatasetView) -> String {
    let Some(m) = &ds.manifest else {
        return String::new();
    };
    if !m.is_binary() {
        return class_split_table(ds, m);
    }
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
    let provenance = provenance_rows(ds, m);
    s.push_str(&kv_table(&[
        provenance[0].clone(),
        provenance[1].clone(),
        provenance[2].clone(),
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
            m.class_weights
                .iter()
                .map(|w| format!("{w:.4}"))
                .collect::<Vec<_>>()
                .join(" / "),
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

/// The dataset of a K-class run: images per split, then per class and split.
fn class_split_table(ds: &DatasetView, m: &crate::dataset::manifest::DatasetManifest) -> String {
    let mut s = String::from(
        "<table class=\"classes\">\n<thead><tr><th>class</th><th>train</th><th>val</th><th>test</th><th>total</th></tr></thead>\n<tbody>\n",
    );
    let all = m.class_counts();
    for (c, total) in all.iter().enumerate() {
        let per: Vec<String> = Split::ALL
            .iter()
            .map(|sp| m.splits.get(sp).map_or(0, |x| x.count_of(c)).to_string())
            .collect();
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{total}</td></tr>",
            escape(&super::class_label(&m.classes, c)),
            per[0],
            per[1],
            per[2]
        );
    }
    let records: Vec<String> = Split::ALL
        .iter()
        .map(|sp| m.splits.get(sp).map_or(0, |x| x.records).to_string())
        .collect();
    let _ = writeln!(
        s,
        "<tr><td><b>images</b></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n</tbody></table>",
        records[0],
        records[1],
        records[2],
        m.records()
    );
    let provenance = provenance_rows(ds, m);
    s.push_str(&kv_table(&[
        provenance[0].clone(),
        provenance[1].clone(),
        provenance[2].clone(),
        ("images", m.image.shape().to_string()),
        ("split", m.archive_split_rule()),
    ]));
    s
}

/// Which dataset, staged when and by what, from which source: the first rows of its table.
fn provenance_rows(
    ds: &DatasetView,
    m: &crate::dataset::manifest::DatasetManifest,
) -> [(&'static str, String); 3] {
    [
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
    ]
}

/// Writes the report of `run` as `dir/index.html` with its plots beside it, and, for two
/// classes, the slide maps of `slides` in `dir/slides/` (with their own `index.html`).
pub fn write_run_report(
    dir: &Path,
    run: &RunData,
    ds: &DatasetView,
    slides: Option<&SlidesView>,
) -> Result<Written, ReportError> {
    create_dir(dir)?;
    let r = &run.report;
    let (test, at) = match (&r.test, &r.test_at_val_threshold) {
        (crate::metrics::Metrics::Binary(t), Some(a)) => (t, a),
        (crate::metrics::Metrics::Binary(t), None) => (t, t),
        (crate::metrics::Metrics::Multiclass(m), _) => {
            return write_multiclass_report(dir, run, ds, m);
        }
    };
    let plots = binary_plots(run, test, at);
    let mut written = write_plots(dir, &plots)?;
    let img = |i: usize| plot_img(plots[i].0, &plots[i].2);

    let mut b = run_heading(run, None);
    b.push_str("</section>\n");
    b.push_str(&binary_metric_table(
        test,
        at,
        &r.val.binary().cloned().unwrap_or_default(),
    ));
    for (title, i) in [
        ("Training", 0),
        ("Test curves", 2),
        ("Confusion matrices (test)", 4),
    ] {
        b.push_str(&plot_section(title, &img(i), &img(i + 1)));
    }
    b.push_str(&misclassified_patches(r, ds, test));
    if let Some(view) = slides {
        if !view.slides.is_empty() {
            written.maps = super::slides::write_maps(
                &dir.join(SLIDES_DIR),
                &view.slides,
                &format!("idc slide maps: {} (test patients)", run.id()),
            )?;
        }
        b.push_str(&super::slides::html_section(
            &view.slides,
            &format!("{SLIDES_DIR}/"),
            &view.notes,
        ));
    }
    finish_run_page(written, run, ds, b)
}

/// The top of a run's page: its title, the line under it (with the number of `classes` beyond
/// two), and its summary section's table.
fn run_heading(run: &RunData, classes: Option<usize>) -> String {
    let r = &run.report;
    let mut b = format!(
        "<h1>Run {}</h1>\n<p class=\"sub\">{} · ",
        escape(run.id()),
        escape(&r.model)
    );
    if let Some(k) = classes {
        let _ = write!(b, "{k} classes · ");
    }
    let _ = writeln!(
        b,
        "{} · best epoch {} of {} · finished {}</p>",
        escape(&crate::output::name_of(&run.status.phase)),
        r.best_epoch,
        r.epochs_run,
        escape(&r.finished_at)
    );
    b.push_str("<section><h2>Summary</h2>\n");
    b.push_str(&summary_rows(run));
    b
}

/// Ends the page body `b` of a run with its config and dataset, and writes it.
fn finish_run_page(
    written: Written,
    run: &RunData,
    ds: &DatasetView,
    mut b: String,
) -> Result<Written, ReportError> {
    b.push_str(&config_and_dataset(run, ds));
    write_file(
        &written.page,
        &page(&format!("idc report: {}", run.id()), &b),
    )?;
    Ok(written)
}

/// A two-class run's plots: `(file, svg, alt)`, in the order the page shows them.
fn binary_plots(
    run: &RunData,
    test: &BinaryMetrics,
    at: &BinaryMetrics,
) -> Vec<(&'static str, String, String)> {
    let mut plots = training_plots(run);
    plots.extend([
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
            plot::confusion_svg("Confusion matrix (test) at 0.5", &test.confusion),
            "confusion matrix at 0.5".into(),
        ),
        (
            "confusion-val-threshold.svg",
            plot::confusion_svg(
                &format!(
                    "Confusion matrix (test) at val threshold {:.3}",
                    at.threshold
                ),
                &at.confusion,
            ),
            "confusion matrix at the validation threshold".into(),
        ),
    ]);
    plots
}

/// Any run's first plots: its loss and validation metrics per epoch.
fn training_plots(run: &RunData) -> Vec<(&'static str, String, String)> {
    vec![
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
    ]
}

/// A page section of two plots side by side.
fn plot_section(title: &str, first: &str, second: &str) -> String {
    format!("<section><h2>{title}</h2>\n<div class=\"plots\">\n{first}{second}</div>\n</section>\n")
}

/// A two-class run's test metrics at 0.5 and at the validation threshold, beside validation's.
fn binary_metric_table(test: &BinaryMetrics, at: &BinaryMetrics, val: &BinaryMetrics) -> String {
    let mut b = String::from(
        "<section><h2>Test metrics</h2>\n<table>\n<thead><tr><th>metric</th><th>test at 0.5</th><th>test at val threshold</th><th>val (best epoch, at 0.5)</th></tr></thead>\n<tbody>\n",
    );
    for (name, f) in metric_rows() {
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            f(test),
            f(at),
            f(val)
        );
    }
    b.push_str("</tbody></table>\n<p class=\"legend\">The validation threshold maximises F1 on the validation split.</p>\n</section>\n");
    b
}

/// The most confidently misclassified test patches at 0.5, false positives then false
/// negatives, each saying why none are shown when none are.
fn misclassified_patches(
    r: &crate::metrics::AnyReport,
    ds: &DatasetView,
    test: &BinaryMetrics,
) -> String {
    let mut b =
        String::from("<section><h2>Most confidently misclassified test patches (at 0.5)</h2>\n");
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
            ErrorKind::FalsePositive => test.confusion.fp,
            _ => test.confusion.fn_,
        };
        let _ = writeln!(
            b,
            "<h3>{} ({} shown of {total})</h3>",
            escape(title),
            shown.len()
        );
        if shown.is_empty() {
            let _ = writeln!(
                b,
                "<p class=\"legend\">{}</p>",
                why_none_shown(total == 0, listed == 0)
            );
            continue;
        }
        let _ = writeln!(b, "<div class=\"grid {class}-grid\">");
        for p in shown {
            b.push_str(&patch_figure(p));
        }
        b.push_str("</div>\n");
    }
    b.push_str("<p class=\"legend\">Patches are 50x50 pixels, shown at twice their size; p(IDC) is the model's probability of IDC.</p>\n</section>\n");
    b
}

/// Why a page shows no misclassified images: there are `none`, the report listed none
/// (`unlisted`), or the dataset could not give them.
fn why_none_shown(none: bool, unlisted: bool) -> &'static str {
    if none {
        "none"
    } else if unlisted {
        "not recorded in this report"
    } else {
        "not readable from the dataset (see above)"
    }
}

/// The folder of a run page's slide maps, beside the page.
pub const SLIDES_DIR: &str = "slides";

/// The last sections of a run's page: the spec as run, and the dataset it trained on.
fn config_and_dataset(run: &RunData, ds: &DatasetView) -> String {
    let yaml = serde_yaml::to_string(&run.report.config).unwrap_or_else(|e| format!("# {e}"));
    let mut b = format!(
        "<section><h2>Config (the training spec as run)</h2>\n<pre>{}</pre>\n</section>\n<section><h2>Dataset</h2>\n",
        escape(&yaml)
    );
    if ds.manifest.is_none() {
        b.push_str(&notes(&ds.notes));
    }
    b.push_str(&split_table(ds));
    b.push_str("</section>\n");
    b
}

/// Writes each `(file, svg, alt)` plot into `dir`; the page, `dir/index.html`, comes after.
fn write_plots(dir: &Path, plots: &[(&str, String, String)]) -> Result<Written, ReportError> {
    let mut written = Written {
        page: dir.join("index.html"),
        plots: vec![],
        maps: vec![],
    };
    for (file, svg, _) in plots {
        let path = dir.join(file);
        write_file(&path, svg)?;
        written.plots.push(path);
    }
    Ok(written)
}

/// The page of a K-class run: metrics, per-class scores, the K x K confusion matrix with class
/// names, training curves, the most confidently misclassified images with true and predicted
/// names, the config and the dataset.
fn write_multiclass_report(
    dir: &Path,
    run: &RunData,
    ds: &DatasetView,
    test: &MulticlassMetrics,
) -> Result<Written, ReportError> {
    let r = &run.report;
    let plots = training_plots(run);
    let written = write_plots(dir, &plots)?;
    let img = |i: usize| plot_img(plots[i].0, &plots[i].2);
    let mut b = run_heading(run, Some(r.classes.len()));
    b.push_str("</section>\n<section><h2>Test metrics</h2>\n");
    b.push_str(&multiclass_metric_table(test, r.val.multiclass()));
    b.push_str("<p class=\"legend\">Predictions are the most probable class. Macro: the unweighted mean over classes; weighted: by each class's support.</p>\n<h3>Per class (test)</h3>\n");
    b.push_str(&per_class_table(test, &r.classes));
    b.push_str("</section>\n<section><h2>Confusion matrix (test)</h2>\n");
    b.push_str(&confusion_table(&test.confusion, &r.classes));
    b.push_str("<p class=\"legend\">Rows: true class; columns: predicted class; shade: share of the row.</p>\n</section>\n");
    b.push_str(&plot_section("Training", &img(0), &img(1)));
    let wrong: u64 = test.count
        - (0..test.confusion.len())
            .map(|c| test.confusion[c][c])
            .sum::<u64>();
    let _ = writeln!(
        b,
        "<section><h2>Most confidently misclassified test images ({} shown of {wrong})</h2>",
        ds.patches.len()
    );
    b.push_str(&notes(&ds.notes));
    if ds.patches.is_empty() {
        let why = why_none_shown(wrong == 0, r.misclassified.is_empty());
        let _ = writeln!(b, "<p class=\"legend\">{why}</p>");
    } else {
        b.push_str("<div class=\"grid wrong-grid\">\n");
        for p in &ds.patches {
            b.push_str(&class_patch_figure(p, r));
        }
        b.push_str("</div>\n<p class=\"legend\">Each image: the predicted class and its probability, then the true class.</p>\n");
    }
    b.push_str("</section>\n");
    finish_run_page(written, run, ds, b)
}

/// The summary rows of a run's page.
fn summary_rows(run: &RunData) -> String {
    let r = &run.report;
    kv_table(&[
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
    ])
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
    let plots = comparison_plots(runs, &prefix);
    let mut written = Written {
        page: page_path,
        plots: vec![],
        maps: vec![],
    };
    for (file, svg, _) in &plots {
        let path = dir.join(file);
        write_file(&path, svg)?;
        written.plots.push(path);
    }

    let mut b = runs_table(runs);
    // Each run's column, headed by its name on its plot colour.
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
    b.push_str(&compared_metrics(c, &header));
    b.push_str("<section><h2>Plots</h2>\n<div class=\"plots\">\n");
    for (file, _, alt) in &plots {
        b.push_str(&plot_img(file, alt));
    }
    b.push_str("</div>\n</section>\n");
    b.push_str(&compared_config(c, &header));
    write_file(
        &written.page,
        &page(&format!("idc: comparing {}", c.runs.join(", ")), &b),
    )?;
    Ok(written)
}

/// The overlay plots of a comparison, `(file, svg, alt)`: validation loss and F1 per epoch,
/// and for two classes the test ROC and precision-recall curves.
fn comparison_plots(runs: &[RunData], prefix: &str) -> Vec<(String, String, &'static str)> {
    let refs: Vec<&RunData> = runs.iter().collect();
    let per_epoch = |title: &str, y: &str, of: fn(&super::EpochPoint) -> f64| {
        let mut p = LinePlot::new(title, "epoch", y).integer_x();
        for (i, r) in runs.iter().enumerate() {
            p = p.series(epoch_series(r, r.id(), plot::color(i), of));
        }
        p
    };
    let binary = runs.iter().all(|r| r.report.test.binary().is_some());
    let mut plots: Vec<(String, String, &str)> = vec![
        (
            format!("{prefix}val-loss.svg"),
            per_epoch("Validation loss per epoch", "loss", |e| {
                e.val.value(MetricName::Loss)
            })
            .to_svg(),
            "validation loss per epoch, all runs",
        ),
        if binary {
            (
                format!("{prefix}val-f1.svg"),
                per_epoch("Validation F1 per epoch (at 0.5)", "F1", |e| {
                    e.val.value(MetricName::F1)
                })
                .to_svg(),
                "validation F1 per epoch, all runs",
            )
        } else {
            (
                format!("{prefix}val-f1.svg"),
                per_epoch("Validation macro F1 per epoch", "macro F1", |e| {
                    e.val.value(MetricName::F1)
                })
                .to_svg(),
                "validation macro F1 per epoch, all runs",
            )
        },
    ];
    // Curves exist for two classes only.
    if binary {
        plots.push((
            format!("{prefix}roc.svg"),
            roc_plot(&refs, true).to_svg(),
            "test ROC curves, all runs",
        ));
        plots.push((
            format!("{prefix}pr.svg"),
            pr_plot(&refs, true).to_svg(),
            "test precision-recall curves, all runs",
        ));
    }
    plots
}

/// The title and the table of the runs compared, each with its plot colour.
fn runs_table(runs: &[RunData]) -> String {
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
    b
}

/// The metrics side by side in their groups, the best of each row marked.
fn compared_metrics(c: &Comparison, header: &str) -> String {
    let mut b = format!(
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
    b
}

/// The config keys side by side, those that differ highlighted.
fn compared_config(c: &Comparison, header: &str) -> String {
    let differing = c.config.iter().filter(|r| r.differs).count();
    let mut b = format!(
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
    b
}

#[cfg(test)]
mod tests {
    use super::*;

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
