//! Report pages end to end: two small runs trained on the local backend, then
//! `idcctl report --html` and `idcctl compare --html`, each page loaded in headless Chromium,
//! which must render every plot, every misclassified patch and every slide map at its size. The
//! page's own inline script records what rendered on `<body>`, and the test reads it from
//! `--dump-dom`. The slide maps are also decoded here and read back cell by cell: the trained
//! CNN's IDC cells on the heat map must overlap the truth map's IDC region.
//!
//! Without Chromium the browser part is skipped with a message, unless
//! `IDC_TEST_REQUIRE_BROWSER=1` (set by `.ci/test` under CI), which makes it a failure.

use crate::common::browser::*;
use crate::common::*;
use idc::metrics::{ErrorKind, Report};
use idc::predictions::Prediction;
use idc::report::slides::{BACKGROUND, colour_scale};
use idc::shard::ShardReader;
use idc::store::Store;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Plots on each page: loss, validation metrics, ROC, PR and two confusion matrices; the
/// comparison overlays validation loss, validation F1, ROC and PR.
const REPORT_PLOTS: usize = 6;
const COMPARE_PLOTS: usize = 4;

struct Runs {
    dir: tempfile::TempDir,
    storage: String,
    dataset: String,
    cnn: String,
    logreg: String,
}

fn train_two_runs() -> Runs {
    require_worker();
    let dir = tempfile::tempdir().unwrap();
    // Large enough for two test patients and a CNN whose slide maps can be held to a clear bar
    // (on 8 x 120 patches three epochs reach only a Dice of 0.52).
    let (storage, dataset) = staged_synth_bucket(dir.path(), 12, 200);
    let submit = |name: &str, train: &str| {
        let manifest = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: idc/v1\nkind: Experiment\nname: {name}\ndataset: {{url: '{dataset}'}}\ntrain:\n  device: cpu\n  batch_size: 64\n  log_every_steps: 4\n{train}storage: '{storage}'\n"
            ),
        )
        .unwrap();
        submit_wait(manifest.to_str().unwrap())
    };
    let cnn = submit(
        "cnn",
        "  epochs: 3\n  model: {kind: simple_cnn, width: 8}\n",
    );
    let logreg = submit(
        "logreg",
        "  epochs: 2\n  model: {kind: logreg}\n  optimizer: {kind: sgd, lr: 0.001}\n",
    );
    Runs {
        dir,
        storage,
        dataset,
        cnn,
        logreg,
    }
}

fn cmd(r: &Runs, args: &[&str]) -> std::process::Output {
    idcctl_env(args, &[("IDC_STORAGE", &r.storage)])
}

fn read_report(r: &Runs, run: &str) -> Report {
    let path = Path::new(r.storage.strip_prefix("file://").unwrap())
        .join("runs")
        .join(run)
        .join("report.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// What the page's check script found: plots rendered, plots failed, patches decoded,
/// patches failed.
fn rendered(dom: &str) -> (usize, String, usize, String) {
    let n = |k: &str| body_attr(dom, k).unwrap().parse::<usize>().unwrap();
    (
        n("data-plots-ok"),
        body_attr(dom, "data-plots-failed").unwrap(),
        n("data-patches-ok"),
        body_attr(dom, "data-patches-failed").unwrap(),
    )
}

/// What the check script found of the slide maps: decoded at their slide's size, and the ids
/// of those that did not.
fn maps_rendered(dom: &str) -> (usize, String) {
    (
        body_attr(dom, "data-maps-ok").unwrap().parse().unwrap(),
        body_attr(dom, "data-maps-failed").unwrap(),
    )
}

/// The test predictions a run keeps.
fn test_predictions(r: &Runs, run: &str) -> Vec<Prediction> {
    let path = Path::new(r.storage.strip_prefix("file://").unwrap())
        .join("runs")
        .join(run)
        .join(idc::layout::run::TEST_PREDICTIONS);
    idc::predictions::parse_jsonl(&std::fs::read(path).unwrap()).unwrap()
}

/// Hue in degrees (0..360) of a colour: the same for the colour blended over any grey.
fn hue(c: [f64; 3]) -> f64 {
    (3f64.sqrt() * (c[1] - c[2]))
        .atan2(2.0 * c[0] - c[1] - c[2])
        .to_degrees()
        .rem_euclid(360.0)
}

/// The p(IDC) whose colour has hue `h`.
fn p_of_hue(h: f64) -> f64 {
    (0..=1000)
        .map(|k| k as f64 / 1000.0)
        .min_by(|a, b| {
            let d = |p: f64| (hue(colour_scale(p).map(f64::from)) - h).abs();
            d(*a).total_cmp(&d(*b))
        })
        .unwrap()
}

/// One 50x50 cell of a slide's maps, as read from the images.
struct Cell {
    /// Truth map: tinted red.
    idc: bool,
    /// Heat map: p(IDC) from the cell's mean hue.
    p: f64,
}

/// Reads the maps `dir/<patient>-truth.png` and `-heat.png` cell by cell: cells left white
/// (no patch) are None.
fn read_cells(dir: &Path, patient: u32) -> (u32, u32, Vec<Option<Cell>>) {
    let open = |kind: &str| {
        image::open(dir.join(format!("{patient}-{kind}.png")))
            .unwrap_or_else(|e| panic!("{patient}-{kind}.png: {e}"))
            .to_rgb8()
    };
    let (truth, heat) = (open("truth"), open("heat"));
    assert_eq!(truth.dimensions(), heat.dimensions());
    let (w, h) = heat.dimensions();
    let mut cells = vec![];
    for cy in 0..h / 50 {
        for cx in 0..w / 50 {
            let mean = |img: &image::RgbImage| {
                let mut sum = [0f64; 3];
                for y in 0..50 {
                    for x in 0..50 {
                        let px = img.get_pixel(cx * 50 + x, cy * 50 + y).0;
                        (0..3).for_each(|c| sum[c] += px[c] as f64 / 2500.0);
                    }
                }
                sum
            };
            let empty = (0..50)
                .flat_map(|y| (0..50).map(move |x| (x, y)))
                .all(|(x, y)| heat.get_pixel(cx * 50 + x, cy * 50 + y).0 == BACKGROUND);
            cells.push((!empty).then(|| {
                let t = mean(&truth);
                Cell {
                    idc: t[0] - (t[1] + t[2]) / 2.0 > 25.0,
                    p: p_of_hue(hue(mean(&heat))),
                }
            }));
        }
    }
    (w, h, cells)
}

fn assert_self_contained(html: &str) {
    for external in ["src=\"http", "href=\"http", "<link", "@import", "url(http"] {
        assert!(
            !html.contains(external),
            "the page fetches something ({external})"
        );
    }
}

/// The report page's plot files.
const REPORT_PLOT_FILES: [&str; REPORT_PLOTS] = [
    "loss.svg",
    "val-metrics.svg",
    "roc.svg",
    "pr.svg",
    "confusion-0.5.svg",
    "confusion-val-threshold.svg",
];

#[test]
fn report_and_compare_pages_render_every_plot_in_a_browser() {
    let started = Instant::now();
    let r = train_two_runs();
    eprintln!(
        "two runs trained in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let report_dir = r.dir.path().join("report");
    let html = report_page_has_every_plot(&r, &report_dir);
    let report = read_report(&r, &r.cnn);
    grid_shows_the_misclassified_records(&r, &html, &report);
    let patients = slide_maps_agree_with_the_predictions(&r, &report_dir, &html, &report);
    let (cmp_dir, cmp_file) = compare_pages_and_tables_show_the_differences(&r);
    a_run_without_test_predictions_gets_a_note_on_maps(&r);

    // Every plot and patch rendered in a real browser.
    // A missing browser fails the test under CI (IDC_TEST_REQUIRE_BROWSER=1), else skips.
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let t = Instant::now();
    let page = report_dir.join("index.html");
    let dom = checked_dom(&browser, &page);
    assert_eq!(
        rendered(&dom),
        (
            REPORT_PLOTS,
            String::new(),
            report.misclassified.len(),
            String::new()
        ),
        "report page: (plots rendered, failed, patches decoded, failed)"
    );
    assert_eq!(
        maps_rendered(&dom),
        (3 * patients.len(), String::new()),
        "report page: (maps decoded at their slide's size, failed)"
    );
    assert_eq!(
        maps_rendered(&checked_dom(
            &browser,
            &report_dir.join("slides/index.html")
        )),
        (3 * patients.len(), String::new()),
        "the maps' own page"
    );
    for page in [cmp_dir.join("index.html"), cmp_file] {
        let dom = checked_dom(&browser, &page);
        assert_eq!(
            rendered(&dom),
            (COMPARE_PLOTS, String::new(), 0, String::new()),
            "{}: (plots rendered, failed, patches decoded, failed)",
            page.display()
        );
        assert_eq!(maps_rendered(&dom), (0, String::new()));
    }
    eprintln!("four pages rendered in {:.1}s", t.elapsed().as_secs_f64());
    the_browser_check_notices_what_did_not_render(
        &browser,
        &r,
        &report_dir,
        &html,
        &report,
        &patients,
    );
}

/// The report page of the CNN run, with the table still printed as before: every plot an SVG
/// shown in the page. Returns the page's HTML.
fn report_page_has_every_plot(r: &Runs, report_dir: &Path) -> String {
    let out = cmd(
        r,
        &["report", &r.cnn, "--html", report_dir.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("balanced accuracy"));
    let html = std::fs::read_to_string(report_dir.join("index.html")).unwrap();
    assert_self_contained(&html);
    assert_eq!(REPORT_PLOT_FILES.len(), REPORT_PLOTS);
    for p in REPORT_PLOT_FILES {
        let svg = std::fs::read_to_string(report_dir.join(p)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{p}"
        );
        assert!(html.contains(&format!("<img data-plot src=\"{p}\"")), "{p}");
    }
    for want in [
        "Most confidently misclassified",
        "Dataset",
        "Config",
        "simple_cnn",
    ] {
        assert!(html.contains(want), "{want}");
    }
    html
}

/// The grid shows the patches the worker recorded, with the pixels of their records.
fn grid_shows_the_misclassified_records(r: &Runs, html: &str, report: &Report) {
    assert!(!report.misclassified.is_empty());
    assert_eq!(
        html.matches("data-patch=").count(),
        report.misclassified.len()
    );
    let ds = Store::open(&r.dataset).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manifest = rt
        .block_on(idc::dataset::manifest::read(&ds))
        .unwrap()
        .unwrap();
    let shards = rt.block_on(load_shards(&ds, &manifest));
    for m in &report.misclassified {
        let i = manifest
            .shards
            .iter()
            .position(|s| s.key == m.shard)
            .unwrap();
        let shard: &ShardReader<bytes::Bytes> = &shards[i];
        let rec = shard.record(m.record as usize);
        assert_eq!(
            (rec.meta.patient, rec.meta.x, rec.meta.y, rec.meta.label),
            (m.patient, m.x, m.y, m.label)
        );
        assert_eq!(m.label, (m.error == ErrorKind::FalseNegative) as u8);
        let png = idc::report::patch_png(rec.pixels);
        assert!(
            html.contains(&base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                &png
            )),
            "patch {m:?} is not in the page with its pixels"
        );
    }
}

/// Slide maps: every test patient's three maps in slides/, sized to its patches, shown in the
/// page at that size; read back from the images, cell by cell, they say what the predictions
/// say, and the CNN's IDC cells overlap the true IDC region. `--slides 1` keeps one patient.
/// Returns the test patients, in order.
fn slide_maps_agree_with_the_predictions(
    r: &Runs,
    report_dir: &Path,
    html: &str,
    report: &Report,
) -> Vec<u32> {
    let preds = test_predictions(r, &r.cnn);
    let threshold = report.test_at_val_threshold.as_ref().unwrap().threshold;
    let mut by_patient: BTreeMap<u32, Vec<&Prediction>> = BTreeMap::new();
    for p in &preds {
        by_patient.entry(p.patient).or_default().push(p);
    }
    assert!(
        by_patient.len() >= 2,
        "test patients: {:?}",
        by_patient.keys()
    );
    assert!(html.contains("<h2>Slide maps</h2>"));
    assert_eq!(html.matches("<img data-map=").count(), 3 * by_patient.len());
    let slides_dir = report_dir.join("slides");
    let (mut both, mut predicted, mut truth) = (0, 0, 0);
    for (&patient, rows) in &by_patient {
        for c in patient_maps_match_its_rows(&slides_dir, html, patient, rows) {
            let p = c.p >= threshold;
            both += usize::from(p && c.idc);
            predicted += usize::from(p);
            truth += usize::from(c.idc);
        }
    }
    let dice = 2.0 * both as f64 / (predicted + truth) as f64;
    let iou = both as f64 / (predicted + truth - both) as f64;
    eprintln!(
        "slide maps of {} test patients: heat map cells p >= {threshold:.3} vs truth: Dice {dice:.3}, IoU {iou:.3} ({both} of {predicted} predicted, {truth} true)",
        by_patient.len()
    );
    assert!(dice >= 0.75, "Dice {dice:.3} of heat map and truth");
    // --slides 1: the patient with most patches (ties: the lower id) alone.
    let one = r.dir.path().join("report-one");
    let out = cmd(
        r,
        &[
            "report",
            &r.cnn,
            "--html",
            one.to_str().unwrap(),
            "--slides",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let one_html = std::fs::read_to_string(one.join("index.html")).unwrap();
    let most = by_patient
        .iter()
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
        .unwrap()
        .0;
    assert_eq!(one_html.matches("<img data-map=").count(), 3);
    assert!(one_html.contains(&format!("data-map=\"{most}-heat\"")));
    by_patient.into_keys().collect()
}

/// The three maps of `patient` are sized to its patches and shown at that size, with one cell
/// per patch that says what its prediction says. Returns the cells with a patch.
fn patient_maps_match_its_rows(
    slides_dir: &Path,
    html: &str,
    patient: u32,
    rows: &[&Prediction],
) -> Vec<Cell> {
    let (x0, y0) = (
        rows.iter().map(|p| p.x).min().unwrap(),
        rows.iter().map(|p| p.y).min().unwrap(),
    );
    let w = rows.iter().map(|p| p.x + 50).max().unwrap() - x0;
    let h = rows.iter().map(|p| p.y + 50).max().unwrap() - y0;
    for kind in ["tissue", "truth", "heat"] {
        let png = slides_dir.join(format!("{patient}-{kind}.png"));
        assert_eq!(image::image_dimensions(&png).unwrap(), (w, h), "{kind}");
        assert!(
            html.contains(&format!(
                "<img data-map=\"{patient}-{kind}\" data-w=\"{w}\" data-h=\"{h}\" src=\"slides/{patient}-{kind}.png\""
            )),
            "{patient}-{kind}"
        );
    }
    let (_, _, cells) = read_cells(slides_dir, patient);
    assert_eq!(
        cells.iter().flatten().count(),
        rows.len(),
        "patient {patient}: one cell per patch, the rest background"
    );
    for row in rows {
        let cell = cells[((row.y - y0) / 50 * (w / 50) + (row.x - x0) / 50) as usize]
            .as_ref()
            .unwrap_or_else(|| panic!("no cell at {row:?}"));
        assert_eq!(cell.idc, row.label == Some(1), "truth at {row:?}");
        assert!(
            (cell.p - row.p_positive() as f64).abs() < 0.02,
            "heat map p {} at {row:?}",
            cell.p
        );
    }
    let s = format!("Patient {patient}</h3>");
    assert!(html.contains(&s), "{s}");
    cells.into_iter().flatten().collect()
}

/// The comparison, as a folder and as a file, and as tables: the differing config rows are
/// marked in both. Returns the folder and the file.
fn compare_pages_and_tables_show_the_differences(r: &Runs) -> (PathBuf, PathBuf) {
    let cmp_dir = r.dir.path().join("compare");
    let out = cmd(
        r,
        &[
            "compare",
            &r.cnn,
            &r.logreg,
            "--html",
            cmp_dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains("* model.kind") && table.contains("  batch_size"),
        "{table}"
    );
    assert!(table.contains("* best of the row"), "{table}");
    let cmp_file = r.dir.path().join("pages/cmp.html");
    let out = cmd(
        r,
        &[
            "compare",
            &r.cnn,
            &r.logreg,
            "--html",
            cmp_file.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let differing = compare_json_marks_differences_and_best(r, &json);
    for (page, prefix) in [(cmp_dir.join("index.html"), ""), (cmp_file.clone(), "cmp-")] {
        let html = std::fs::read_to_string(&page).unwrap();
        assert_self_contained(&html);
        assert_eq!(html.matches("<tr class=\"diff\">").count(), differing);
        for p in ["val-loss.svg", "val-f1.svg", "roc.svg", "pr.svg"] {
            let file = format!("{prefix}{p}");
            assert!(page.with_file_name(&file).exists(), "{file}");
            assert!(html.contains(&format!("src=\"{file}\"")), "{file}");
        }
    }
    (cmp_dir, cmp_file)
}

/// `compare -o json` of the two runs: the config rows that differ and the best test F1.
/// Returns how many config rows differ.
fn compare_json_marks_differences_and_best(r: &Runs, json: &serde_json::Value) -> usize {
    assert_eq!(json["runs"], serde_json::json!([r.cnn, r.logreg]));
    let row = |key: &str| {
        json["config"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == key)
            .unwrap_or_else(|| panic!("no config row {key}: {json:#}"))
            .clone()
    };
    assert_eq!(
        row("model.kind")["values"],
        serde_json::json!(["simple_cnn", "logreg"])
    );
    assert_eq!(row("model.kind")["differs"], true);
    assert_eq!(row("epochs")["differs"], true);
    assert_eq!(row("batch_size")["differs"], false);
    let f1 = json["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["group"] == "test at 0.5" && m["metric"] == "F1")
        .unwrap();
    let values: Vec<f64> = f1["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let best = if values[0] >= values[1] { 0 } else { 1 };
    if values[0] != values[1] {
        assert_eq!(f1["best"], serde_json::json!([best]));
    }
    let differing = json["config"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["differs"] == true)
        .count();
    assert!(differing >= 2, "{json:#}");
    differing
}

/// A run from before test predictions were kept: its page says how to get maps.
fn a_run_without_test_predictions_gets_a_note_on_maps(r: &Runs) {
    let old = r.dir.path().join("report-old");
    let kept = Path::new(r.storage.strip_prefix("file://").unwrap())
        .join("runs")
        .join(&r.logreg)
        .join(idc::layout::run::TEST_PREDICTIONS);
    std::fs::remove_file(&kept).unwrap();
    let out = cmd(r, &["report", &r.logreg, "--html", old.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let old_html = std::fs::read_to_string(old.join("index.html")).unwrap();
    assert!(
        old_html.contains("<h2>Slide maps</h2>")
            && old_html.contains("this run has no test-predictions.jsonl")
            && old_html.contains("submit its experiment again"),
        "the note on maps"
    );
    assert_eq!(old_html.matches("<img data-map=").count(), 0);
    assert!(text(&out.stderr).contains("warning: this run has no test-predictions.jsonl"));
}

/// The check is only worth something if it notices what did not render: a copy of the report
/// with a plot that is not an SVG, a missing plot, a patch that is not a PNG, a map that is
/// not a PNG and a map of the wrong size.
fn the_browser_check_notices_what_did_not_render(
    browser: &Path,
    r: &Runs,
    report_dir: &Path,
    html: &str,
    report: &Report,
    patients: &[u32],
) {
    let slides_dir = report_dir.join("slides");
    let broken = r.dir.path().join("broken");
    std::fs::create_dir_all(broken.join("slides")).unwrap();
    for p in REPORT_PLOT_FILES {
        std::fs::copy(report_dir.join(p), broken.join(p)).unwrap();
    }
    for e in std::fs::read_dir(&slides_dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), broken.join("slides").join(e.file_name())).unwrap();
    }
    std::fs::write(broken.join("roc.svg"), "<svg this is not xml").unwrap();
    std::fs::remove_file(broken.join("pr.svg")).unwrap();
    let first_patient = patients[0];
    std::fs::write(
        broken.join(format!("slides/{first_patient}-heat.png")),
        b"\x89PNG not really",
    )
    .unwrap();
    std::fs::write(
        broken.join(format!("slides/{first_patient}-truth.png")),
        idc::report::patch_png(&vec![128; idc::PATCH_BYTES]),
    )
    .unwrap();
    let first = html.find("data:image/png;base64,").unwrap() + "data:image/png;base64,".len();
    let end = first + html[first..].find('"').unwrap();
    let html = format!("{}AAAA{}", &html[..first], &html[end..]);
    std::fs::write(broken.join("index.html"), html).unwrap();
    let dom = checked_dom(browser, &broken.join("index.html"));
    let (ok, failed, patches, patches_failed) = rendered(&dom);
    assert_eq!((ok, failed.as_str()), (REPORT_PLOTS - 2, "roc.svg pr.svg"));
    assert_eq!(
        maps_rendered(&dom),
        (
            3 * patients.len() - 2,
            format!("{first_patient}-truth {first_patient}-heat")
        )
    );
    assert_eq!(patches, report.misclassified.len() - 1);
    let m = &report.misclassified[0];
    assert_eq!(
        patches_failed,
        format!("patient {} x{} y{}", m.patient, m.x, m.y)
    );
}

#[test]
fn unknown_runs_are_user_errors() {
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}/bucket", dir.path().display());
    let html = dir.path().join("out");
    for args in [
        vec!["report", "nope-1", "--html", html.to_str().unwrap()],
        vec!["compare", "nope-1", "nope-2"],
    ] {
        let out = idcctl_env(&args, &[("IDC_STORAGE", &storage)]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("no run nope-1 in file://"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(!html.exists(), "nothing is written for an unknown run");
    let out = idcctl_env(&["compare", "only-one"], &[("IDC_STORAGE", &storage)]);
    assert_eq!(out.status.code(), Some(2), "compare needs two runs");
}

/// The real Fashion-MNIST files Debian's `dataset-fashion-mnist` installs (`.ci/test` installs
/// the package when missing and, under CI, requires it: `IDC_TEST_REQUIRE_FASHION_MNIST=1`).
const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

#[test]
fn fashion_mnist_trains_past_090_and_its_page_shows_ten_named_classes() {
    if !Path::new(FASHION_MNIST)
        .join("train-images-idx3-ubyte.gz")
        .exists()
    {
        assert_ne!(
            std::env::var("IDC_TEST_REQUIRE_FASHION_MNIST").as_deref(),
            Ok("1"),
            "IDC_TEST_REQUIRE_FASHION_MNIST=1 but {FASHION_MNIST} is missing (apt-get install dataset-fashion-mnist)"
        );
        eprintln!(
            "{FASHION_MNIST} missing: real 10-class training not tested (apt-get install dataset-fashion-mnist)"
        );
        return;
    }
    require_worker();
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}/bucket", dir.path().display());
    let (run, report) = fashion_mnist_trains_past_090(&storage);
    let names = idc::dataset::archive::FASHION_MNIST_CLASSES;
    assert_eq!(report.classes, names);
    let page = fashion_mnist_page_shows_the_ten_class_matrix(dir.path(), &storage, &run, &report);

    // A missing browser fails the test under CI (IDC_TEST_REQUIRE_BROWSER=1), else skips.
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let dom = checked_dom(&browser, &page);
    assert_eq!(
        rendered(&dom),
        (2, String::new(), report.misclassified.len(), String::new()),
        "report page: (plots rendered, failed, images decoded, failed)"
    );
    for name in names {
        assert!(dom.contains(&escape_html(name)), "{name} not rendered");
    }
}

/// Stages Fashion-MNIST into the bucket `storage` and trains the shipped manifest, as it is,
/// on the staged copy: the simple CNN must reach 0.90 test accuracy. Returns the run and its
/// report.
fn fashion_mnist_trains_past_090(storage: &str) -> (String, idc::metrics::AnyReport) {
    let dataset = format!("{storage}/datasets/fashion-mnist");
    let out = idcctl(&[
        "stage",
        "--format",
        "idx",
        FASHION_MNIST,
        "--to",
        &dataset,
        "--class-names",
        "fashion-mnist",
        "--val",
        "5000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The shipped manifest, as it is, on the staged copy.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/fashion-mnist.yaml");
    let started = Instant::now();
    let out = idcctl(&[
        "submit",
        manifest.to_str().unwrap(),
        "--storage",
        storage,
        "--dataset",
        &dataset,
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let run = text(&out.stdout).lines().next().unwrap().trim().to_string();
    let report: idc::metrics::AnyReport =
        serde_json::from_value(report_json(storage, &run)).unwrap();
    let test = report.test.multiclass().expect("ten classes");
    eprintln!(
        "fashion-mnist: test accuracy {:.4}, macro F1 {:.4}, trained in {:.0}s ({:.0}s in all)",
        test.accuracy,
        test.f1,
        report.train_seconds,
        started.elapsed().as_secs_f64()
    );
    assert!(
        test.accuracy >= 0.90,
        "the simple CNN reaches {:.4} test accuracy on Fashion-MNIST",
        test.accuracy
    );
    (run, report)
}

/// The report page of the Fashion-MNIST run: no slides, the 10x10 matrix, the misclassified
/// images with their names. Returns the page.
fn fashion_mnist_page_shows_the_ten_class_matrix(
    dir: &Path,
    storage: &str,
    run: &str,
    report: &idc::metrics::AnyReport,
) -> PathBuf {
    let page_dir = dir.join("report");
    let out = idcctl_env(
        &["report", run, "--html", page_dir.to_str().unwrap()],
        &[("IDC_STORAGE", storage)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("6 Shirt") && shown.contains("macro F1"),
        "{shown}"
    );
    let page = page_dir.join("index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_self_contained(&html);
    assert!(
        !html.contains("Slide maps") && !page_dir.join("slides").exists(),
        "ten classes have no slides"
    );
    // The 10x10 matrix: a header and a row per class, by number and name, and 100 cells that
    // add up to the test set.
    let table = &html[html
        .find("<table class=\"confusion\">")
        .expect("a confusion table")..];
    let table = &table[..table.find("</table>").unwrap()];
    for (c, name) in report.classes.iter().enumerate() {
        let label = format!("<th>{c} {}</th>", name);
        assert_eq!(table.matches(&label).count(), 2, "{label}: column and row");
    }
    let cells: Vec<u64> = table
        .split("<td data-true=")
        .skip(1)
        .map(|c| {
            let v = &c[c.find('>').unwrap() + 1..];
            v[..v.find('<').unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(cells.len(), 100);
    assert_eq!(cells.iter().sum::<u64>(), 10_000);
    assert_eq!(
        report.test.multiclass().unwrap().confusion.concat(),
        cells,
        "the page shows the report's matrix"
    );
    // The misclassified images carry their true and predicted names.
    let first = &report.misclassified[0];
    assert!(html.contains(&format!("true: {}", report.class_name(first.label))));
    assert_eq!(
        html.matches("data-patch=").count(),
        report.misclassified.len()
    );
    page
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
