//! Reports for people: a run's evaluation as an HTML page with plots (`idcctl report --html`),
//! and runs side by side (`idcctl compare`). Everything is read from the bucket: the run's
//! `report.json`, `metrics.jsonl`, `spec.yaml`, `status.json` and `test-predictions.jsonl`,
//! and the staged dataset it trained on (its manifest, and the pixels of the misclassified test
//! patches and of the slide maps' test patients). A sweep's page (`idcctl sweep report
//! --html`, [`sweep`]) is drawn from its record, `sweeps/<name>/`.

pub mod compare;
pub mod html;
pub mod page;
pub mod plot;
pub mod slides;
pub mod sweep;
pub mod tensorboard;
pub mod wsi;

use crate::dataset::manifest::DatasetManifest;
use crate::layout::run as keys;
use crate::metrics::{AnyReport, Metrics, MetricsRecord, Misclassified, MulticlassMetrics};
use crate::run::{self, Phase, RunStatus};
use crate::shard::{Shape, ShardReader};
use crate::spec::RunSpec;
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no run {run} in {storage} (see idcctl list)")]
    NoRun { run: String, storage: String },
    #[error("run {run} has no report yet ({phase}: {reason})")]
    NoReport {
        run: String,
        phase: String,
        reason: String,
    },
    #[error("{url} is not readable: {reason}")]
    BadObject { url: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::exit::ProcessExitCode for ReportError {
    /// Whether the mistake is in the command's input (exit code 2).
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        match self {
            ReportError::NoRun { .. } | ReportError::NoReport { .. } => {
                crate::exit::ExitCode::UserError
            }
            ReportError::Store(e) => e.process_exit_code(),
            _ => crate::exit::ExitCode::Failure,
        }
    }
}

/// The validation metrics at the end of one epoch (from `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPoint {
    pub epoch: u32,
    pub train_loss: f64,
    pub lr: f64,
    pub val: Metrics,
}

/// Everything a report shows about one finished run.
#[derive(Debug, Clone)]
pub struct RunData {
    pub status: RunStatus,
    pub spec: RunSpec,
    pub report: AnyReport,
    /// One point per epoch, in epoch order.
    pub epochs: Vec<EpochPoint>,
}

impl RunData {
    pub fn id(&self) -> &str {
        &self.status.run_id
    }
}

async fn parse<T: serde::de::DeserializeOwned>(
    run: &Store,
    key: &str,
    yaml: bool,
) -> Result<T, ReportError> {
    let bytes = run.get(key).await?;
    let parsed = if yaml {
        serde_yaml::from_slice(&bytes).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    parsed.map_err(|reason| ReportError::BadObject {
        url: run.url_of(key),
        reason,
    })
}

/// The epoch lines of `metrics.jsonl`, one per epoch (the last wins), in epoch order.
pub fn epochs_of(jsonl: &[u8]) -> Vec<EpochPoint> {
    let mut by_epoch = BTreeMap::new();
    for record in crate::metrics::parse_jsonl(jsonl) {
        if let MetricsRecord::Epoch {
            epoch,
            train_loss,
            lr,
            val,
            ..
        } = record
        {
            by_epoch.insert(
                epoch,
                EpochPoint {
                    epoch,
                    train_loss,
                    lr,
                    val,
                },
            );
        }
    }
    by_epoch.into_values().collect()
}

/// Reads run `run_id` from the bucket at `root`; it must have a report.
pub async fn load_run(root: &Store, run_id: &str) -> Result<RunData, ReportError> {
    let run = run::run_store(root, run_id);
    let status = run::read_status(&run)
        .await?
        .ok_or_else(|| ReportError::NoRun {
            run: run_id.to_string(),
            storage: root.url().to_string(),
        })?;
    if run.size(keys::REPORT).await?.is_none() {
        return Err(ReportError::NoReport {
            run: run_id.to_string(),
            phase: crate::output::name_of(&status.phase),
            reason: status.reason.clone().unwrap_or_else(|| {
                if status.phase == Phase::Succeeded {
                    "report.json is missing".into()
                } else {
                    String::new()
                }
            }),
        });
    }
    let report: AnyReport = parse(&run, keys::REPORT, false).await?;
    let spec: RunSpec = parse(&run, keys::SPEC, true).await?;
    let epochs = match run.get_opt(keys::METRICS).await? {
        Some(b) => epochs_of(&b),
        None => vec![],
    };
    Ok(RunData {
        status,
        spec,
        report,
        epochs,
    })
}

/// A report as `idcctl report` prints it: the run, the test metrics (two classes: at 0.5 and
/// at the validation threshold), per-class scores for K classes, the confusion matrix.
pub fn summary_text(r: &AnyReport) -> String {
    let head = format!(
        "run {}  model {}  dataset {}  device {}\nbest epoch {} of {}, trained {:.0}s at {:.0} images/s\n",
        r.run_id,
        r.model,
        r.dataset_id,
        r.device,
        r.best_epoch,
        r.epochs_run,
        r.train_seconds,
        r.train_images_per_s,
    );
    match (&r.test, &r.test_at_val_threshold) {
        (Metrics::Binary(test), Some(at)) => head + &binary_text(test, at),
        (Metrics::Binary(test), None) => head + &binary_text(test, test),
        (Metrics::Multiclass(m), _) => head + &multiclass_text(m, &r.classes),
    }
}

fn binary_text(test: &crate::metrics::BinaryMetrics, at: &crate::metrics::BinaryMetrics) -> String {
    let mut t = crate::output::table();
    t.set_header([
        "test metric",
        "at 0.5",
        &format!("at val threshold {:.3}", at.threshold),
    ]);
    for m in crate::metrics::MetricName::ALL {
        t.add_row([
            m.label().to_string(),
            format!("{:.4}", m.of_binary(test)),
            format!("{:.4}", m.of_binary(at)),
        ]);
    }
    t.add_row([
        "patches".to_string(),
        test.count.to_string(),
        test.count.to_string(),
    ]);
    let c = &test.confusion;
    format!(
        "{t}\nconfusion at 0.5 (rows true, columns predicted):\n            no IDC    IDC\n  no IDC  {:>8} {:>6}\n  IDC     {:>8} {:>6}\n",
        c.tn, c.fp, c.fn_, c.tp
    )
}

/// The metrics shown for K classes, in order.
pub const MULTICLASS_SHOWN: [crate::metrics::MetricName; 7] = {
    use crate::metrics::MetricName::*;
    [
        Accuracy,
        BalancedAccuracy,
        Precision,
        Recall,
        F1,
        RocAuc,
        Loss,
    ]
};

fn multiclass_text(m: &MulticlassMetrics, classes: &[String]) -> String {
    let mut t = crate::output::table();
    t.set_header(["test metric", "value"]);
    for name in MULTICLASS_SHOWN {
        t.add_row([
            name.label_multiclass().to_string(),
            format!("{:.4}", name.of_multiclass(m)),
        ]);
    }
    for (label, v) in [
        ("weighted precision", m.weighted_precision),
        ("weighted recall", m.weighted_recall),
        ("weighted F1", m.weighted_f1),
    ] {
        t.add_row([label.to_string(), format!("{v:.4}")]);
    }
    for k in &m.top_k {
        t.add_row([
            format!("top-{} accuracy", k.k),
            format!("{:.4}", k.accuracy),
        ]);
    }
    t.add_row(["images".to_string(), m.count.to_string()]);
    let mut per = crate::output::table();
    per.set_header(["class", "precision", "recall", "F1", "support", "ROC-AUC"]);
    for (c, s) in m.per_class.iter().enumerate() {
        per.add_row([
            class_label(classes, c),
            format!("{:.4}", s.precision),
            format!("{:.4}", s.recall),
            format!("{:.4}", s.f1),
            s.support.to_string(),
            format!("{:.4}", s.roc_auc),
        ]);
    }
    format!(
        "{t}\nper class:\n{per}\nconfusion (rows true, columns predicted):\n{}",
        confusion_text(&m.confusion, classes)
    )
}

/// `3 cat`: a class's number and name, as tables show it.
pub fn class_label(classes: &[String], c: usize) -> String {
    match classes.get(c) {
        Some(name) => format!("{c} {name}"),
        None => c.to_string(),
    }
}

/// A K x K confusion matrix as text: rows are true classes by number and name, columns are
/// predicted classes by number (wide names would not fit across).
pub fn confusion_text(confusion: &[Vec<u64>], classes: &[String]) -> String {
    let k = confusion.len();
    let names: Vec<String> = (0..k).map(|c| class_label(classes, c)).collect();
    let left = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let cell = confusion
        .iter()
        .flatten()
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(1)
        .max(k.saturating_sub(1).to_string().len());
    let mut out = format!("  {:left$}", "");
    for c in 0..k {
        out += &format!(" {c:>cell$}");
    }
    out.push('\n');
    for (row, name) in confusion.iter().zip(&names) {
        out += &format!("  {name:left$}");
        for v in row {
            out += &format!(" {v:>cell$}");
        }
        out.push('\n');
    }
    out
}

/// A misclassified test patch (or image) with its pixels as a PNG.
#[derive(Debug, Clone)]
pub struct Patch {
    pub info: Misclassified,
    pub png: Vec<u8>,
    /// Its size in pixels.
    pub shape: Shape,
}

/// What the report shows of the dataset a run trained on; what could not be read is said in
/// `notes` (the rest of the report is still made).
#[derive(Debug, Clone, Default)]
pub struct DatasetView {
    pub url: String,
    pub manifest: Option<DatasetManifest>,
    pub patches: Vec<Patch>,
    pub notes: Vec<String>,
}

/// Encodes 50x50 RGB pixels (an IDC patch) as a PNG.
pub fn patch_png(pixels: &[u8]) -> Vec<u8> {
    image_png(pixels, Shape::IDC)
}

/// Encodes one image's HWC pixels of `shape` (RGB or gray) as a PNG.
pub fn image_png(pixels: &[u8], shape: Shape) -> Vec<u8> {
    let color = if shape.channels == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    };
    crate::dataset::decode::encode_png(pixels, shape.width, shape.height, color)
}

/// Reads the manifest of the dataset `run` trained on and the pixels of its misclassified test
/// patches (each shard read once, its checksum verified, each record checked against the
/// report's patient, position and label).
pub async fn load_dataset(run: &RunData) -> DatasetView {
    let mut view = DatasetView {
        url: run.spec.dataset.clone(),
        ..Default::default()
    };
    let ds = match Store::open(&run.spec.dataset) {
        Ok(s) => s,
        Err(e) => {
            view.notes.push(format!("the dataset is not readable: {e}"));
            return view;
        }
    };
    let manifest = match crate::dataset::manifest::read(&ds).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            view.notes.push(format!(
                "no staged dataset at {} any more (no manifest.json): split summary and patches not shown",
                ds.url()
            ));
            return view;
        }
        Err(e) => {
            view.notes.push(format!(
                "the dataset manifest is not readable: {e}: split summary and patches not shown"
            ));
            return view;
        }
    };
    let report = &run.report;
    if manifest.id != report.dataset_id {
        view.notes.push(format!(
            "{} now holds dataset {}, not {} that the run was tested on: patches not shown",
            ds.url(),
            manifest.id,
            report.dataset_id
        ));
        view.manifest = Some(manifest);
        return view;
    }
    if report.misclassified.is_empty() {
        let confusion = report.test.confusion_matrix();
        let correct: u64 = (0..confusion.len()).map(|c| confusion[c][c]).sum();
        if report.test.count() > correct {
            view.notes.push(
                "this report predates the list of misclassified patches (rerun the run to get it)"
                    .into(),
            );
        }
    }
    let mut by_shard: BTreeMap<&str, Vec<&Misclassified>> = BTreeMap::new();
    for m in &report.misclassified {
        by_shard.entry(&m.shard).or_default().push(m);
    }
    let mut pngs: BTreeMap<(String, u64), Vec<u8>> = BTreeMap::new();
    for (key, wanted) in by_shard {
        match read_patches(&ds, &manifest, key, &wanted).await {
            Ok(found) => pngs.extend(found),
            Err(note) => view.notes.push(note),
        }
    }
    view.patches = report
        .misclassified
        .iter()
        .filter_map(|m| {
            pngs.get(&(m.shard.clone(), m.record)).map(|png| Patch {
                info: m.clone(),
                png: png.clone(),
                shape: manifest.image.shape(),
            })
        })
        .collect();
    view.manifest = Some(manifest);
    view
}

/// Shard `key` of the dataset, its checksum verified, or why it cannot be read.
async fn open_shard(
    ds: &Store,
    manifest: &DatasetManifest,
    key: &str,
) -> Result<ShardReader<bytes::Bytes>, String> {
    let info = manifest
        .shards
        .iter()
        .find(|s| s.key == key)
        .ok_or_else(|| format!("shard {key} is not in the dataset manifest"))?;
    let bytes = ds.get(key).await.map_err(|e| e.to_string())?;
    ShardReader::open_verified(bytes, &info.sha256)
        .map_err(|e| format!("shard {}: {e}", ds.url_of(key)))
}

/// PNGs of the `wanted` records of shard `key`, or why they cannot be shown.
async fn read_patches(
    ds: &Store,
    manifest: &DatasetManifest,
    key: &str,
    wanted: &[&Misclassified],
) -> Result<Vec<((String, u64), Vec<u8>)>, String> {
    let shard = open_shard(ds, manifest, key)
        .await
        .map_err(|e| format!("{e}: its patches are not shown"))?;
    let mut out = vec![];
    for m in wanted {
        if m.record >= shard.len() as u64 {
            return Err(format!(
                "shard {} has {} records, the report names record {}: its patches are not shown",
                ds.url_of(key),
                shard.len(),
                m.record
            ));
        }
        let r = shard.record(m.record as usize);
        if (r.meta.patient, r.meta.x, r.meta.y, r.meta.label) != (m.patient, m.x, m.y, m.label) {
            return Err(format!(
                "record {} of shard {} is patient {} x{} y{} class {}, not the report's patient {} x{} y{} class {}: its patches are not shown",
                m.record,
                ds.url_of(key),
                r.meta.patient,
                r.meta.x,
                r.meta.y,
                r.meta.label,
                m.patient,
                m.x,
                m.y,
                m.label
            ));
        }
        out.push((
            (m.shard.clone(), m.record),
            image_png(r.pixels, shard.layout().shape),
        ));
    }
    Ok(out)
}

/// The slide maps of a two-class run's page, and what could not be read for them.
#[derive(Debug, Clone, Default)]
pub struct SlidesView {
    pub slides: Vec<slides::Slide>,
    pub notes: Vec<String>,
}

/// The slide maps of run `run` (from the bucket at `root`): its test patients, the `max` with
/// most patches (None: all), drawn from `test-predictions.jsonl` at the run's validation
/// threshold (0.5 without one) with the tissue from the test shards of `ds` (each shard read
/// once, its checksum verified, each record checked against its row). None for K classes, which
/// have no slides. Never fails: what is missing is said in the notes, and patches without
/// readable pixels are drawn grey.
pub async fn load_slides(
    root: &Store,
    run: &RunData,
    ds: &DatasetView,
    max: Option<usize>,
) -> Option<SlidesView> {
    run.report.test.binary()?;
    let mut view = SlidesView::default();
    let store = run::run_store(root, run.id());
    let url = store.url_of(keys::TEST_PREDICTIONS);
    let rows = match store.get_opt(keys::TEST_PREDICTIONS).await {
        Ok(Some(bytes)) => match crate::predictions::parse_jsonl(&bytes) {
            Ok(rows) => rows,
            Err(e) => {
                view.notes.push(format!(
                    "{url} is not readable: {e}: slide maps are not shown"
                ));
                return Some(view);
            }
        },
        Ok(None) => {
            view.notes.push(format!(
                "this run has no {} (it was made before runs kept their test predictions): submit its experiment again to get slide maps",
                keys::TEST_PREDICTIONS
            ));
            return Some(view);
        }
        Err(e) => {
            view.notes.push(format!("{e}: slide maps are not shown"));
            return Some(view);
        }
    };
    let threshold = run
        .report
        .test_at_val_threshold
        .as_ref()
        .map_or(0.5, |m| m.threshold);
    // The shards holding the chosen patients' patches.
    let chosen = slides::patients(&rows, max);
    let mut shards: BTreeMap<&str, ShardReader<bytes::Bytes>> = BTreeMap::new();
    let tissue = match (&ds.manifest, Store::open(&ds.url)) {
        (Some(m), Ok(store)) if m.id == run.report.dataset_id && m.image.shape() == Shape::IDC => {
            Some((m, store))
        }
        _ => None,
    };
    if let Some((manifest, store)) = &tissue {
        let keys: std::collections::BTreeSet<&str> = chosen
            .iter()
            .flat_map(|(_, idx)| idx.iter())
            .filter_map(|&i| crate::predictions::parse_record_ref(&rows[i].file).map(|r| r.0))
            .collect();
        for key in keys {
            match open_shard(store, manifest, key).await {
                Ok(shard) => {
                    shards.insert(key, shard);
                }
                Err(e) => view
                    .notes
                    .push(format!("{e}: its patches are drawn grey on the slide maps")),
            }
        }
    } else {
        view.notes.push(
            "the tissue is not shown on the slide maps (the staged dataset is not readable, see Dataset)"
                .into(),
        );
    }
    let mismatched = std::cell::Cell::new(0u64);
    let pixels = |i: usize| {
        let r = &rows[i];
        let (key, record) = crate::predictions::parse_record_ref(&r.file)?;
        let shard = shards.get(key)?;
        let ok = record < shard.len() && {
            let m = shard.record(record).meta;
            (m.patient, m.x, m.y) == (r.patient, r.x, r.y) && r.label.is_none_or(|l| l == m.label)
        };
        if !ok {
            mismatched.set(mismatched.get() + 1);
            return None;
        }
        Some(shard.record(record).pixels.to_vec())
    };
    view.slides = slides::build(&rows, &pixels, threshold, max);
    if mismatched.get() > 0 {
        view.notes.push(format!(
            "{} rows of {url} name shard records of another patch (patient, position or label): those patches are drawn grey",
            mismatched.get()
        ));
    }
    Some(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_come_from_epoch_lines_once_each() {
        let epoch = |e: u32, f1: f64| {
            serde_json::to_string(&MetricsRecord::Epoch {
                epoch: e,
                train_loss: 1.0 / e as f64,
                lr: 0.01,
                val: crate::metrics::BinaryMetrics {
                    f1,
                    ..Default::default()
                }
                .into(),
                duration_s: 1.0,
                images_per_s: 100.0,
                best: true,
            })
            .unwrap()
        };
        let step = serde_json::to_string(&MetricsRecord::Step {
            epoch: 1,
            step: 5,
            loss: 0.7,
            lr: 0.01,
            images_per_s: 90.0,
        })
        .unwrap();
        let jsonl = [
            step,
            epoch(2, 0.5),
            epoch(1, 0.4),
            "not json".into(),
            epoch(2, 0.6),
        ]
        .join("\n");
        let e = epochs_of(jsonl.as_bytes());
        assert_eq!(e.iter().map(|p| p.epoch).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            e[1].val.value(crate::metrics::MetricName::F1),
            0.6,
            "a repeated epoch keeps its last line"
        );
        assert_eq!(e[1].train_loss, 0.5);
    }

    #[test]
    fn patches_encode_as_50x50_rgb_png() {
        let pixels: Vec<u8> = (0..crate::PATCH_BYTES).map(|i| (i % 256) as u8).collect();
        let png = patch_png(&pixels);
        let mut reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (50, 50));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&buf[..info.buffer_size()], &pixels[..]);
    }

    #[test]
    fn a_ten_class_report_names_its_classes() {
        let classes: Vec<String> = crate::dataset::archive::FASHION_MNIST_CLASSES
            .map(String::from)
            .to_vec();
        let mut probs = vec![];
        let mut labels = vec![];
        for i in 0..100u32 {
            let y = (i % 10) as u8;
            // Every fifth image of class 6 (Shirt) is taken for class 0 (T-shirt/top).
            let p = if y == 6 && i % 20 == 6 { 0 } else { y };
            let mut row = vec![0.01f32; 10];
            row[p as usize] = 0.91;
            probs.extend(row);
            labels.push(y);
        }
        let m = crate::metrics::evaluate_multiclass(&probs, &labels, 10, 0.3);
        let text = multiclass_text(&m, &classes);
        for want in [
            "macro F1",
            "top-3 accuracy",
            "6 Shirt",
            "9 Ankle boot",
            "weighted F1",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        let conf = confusion_text(&m.confusion, &classes);
        let shirt = conf.lines().find(|l| l.contains("6 Shirt")).unwrap();
        let cells: Vec<&str> = shirt.split_whitespace().skip(2).collect();
        assert_eq!(cells.len(), 10);
        assert_eq!((cells[0], cells[6]), ("5", "5"), "{conf}");
    }
}
