//! `idcctl predict`: a finished run's best checkpoint applied to images it has never seen.
//! [`prepare`] resolves the run ([`trained_run`], which `export` shares: its report, spec and the
//! statistics of the dataset it trained on) and the input: patches in a folder or zip, named and
//! decoded as `stage` does and packed as shards in the prediction's folder, or a staged
//! dataset's split. [`execute`] writes the
//! job's spec and runs `idc-worker predict` on the run's backend (a child process here, or a
//! Kubernetes Job like the run's). [`write_output`] writes the rows as CSV or JSON Lines, whole
//! and atomically; [`labelled_metrics`] scores them where labels are known.

pub mod slides;

use crate::backend::kube::cluster::KubeError;
use crate::backend::kube::{self, ClusterDefaults};
use crate::backend::local::LocalError;
use crate::backend::{BackendError, Backends, RunBackend, Target, Task, TaskProgress};
use crate::dataset::decode::{Undersized, decode_png};
use crate::dataset::manifest::{DatasetManifest, Rejected};
use crate::dataset::source::{Names, Source, SourceError};
use crate::dataset::split::Split;
use crate::experiment::Experiment;
use crate::layout::run::{self as keys, prediction as job_keys};
use crate::metrics::{self, AnyReport, Metrics};
use crate::predictions::{self, InputShard, PredictInput, PredictResult, PredictSpec, Prediction};
use crate::run::{self, RunStatus};
use crate::shard::{FLAG_PADDED, FLAG_UNLABELED, Layout, RecordMeta, ShardReader, ShardWriter};
use crate::spec::{DeviceSpec, RunSpec};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use k8s_openapi::api::batch::v1::Job;
use rayon::prelude::*;
use sha2::Digest;
use std::path::{Path, PathBuf};

/// Images per shard of a packed folder or zip.
pub const INPUT_SHARD_RECORDS: usize = crate::stage::DEFAULT_SHARD_RECORDS;

/// What to predict.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictSource {
    /// IDC patches in a folder or zip, named `<patient>_idx5_x<X>_y<Y>[_class<C>].png`.
    Patches(PathBuf),
    /// A split of a dataset staged by `idcctl stage`.
    Staged { url: String, split: Split },
    /// Whole-slide images (paths or URLs), predicted by [`slides`].
    Slides(Vec<String>),
}

/// How to predict.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    pub source: PredictSource,
    /// Average the 8 flips and rotations of each image.
    pub tta: bool,
    /// Images per forward pass (default: the run's `eval_batch_size`).
    pub batch_size: Option<u32>,
    /// Default: the run's `train.device`.
    pub device: Option<DeviceSpec>,
    /// Two classes: the decision threshold on p(IDC) (default: the run's, chosen on validation).
    pub threshold: Option<f64>,
    /// Decoding threads (0: one per core).
    pub threads: usize,
}

impl PredictOptions {
    /// Predicting `sources`, told apart by content ([`slides::is_slide`]): one folder or zip
    /// of patches, one staged dataset's URL with `split`, or any number of whole-slide images.
    pub fn of_sources(sources: &[String], split: Option<Split>) -> Result<Self, PredictError> {
        let slides: Vec<bool> = sources
            .iter()
            .map(|s| split.is_none() && slides::is_slide(s))
            .collect();
        match sources {
            [] => Err(PredictError::Invalid(
                "nothing to predict: give a source".into(),
            )),
            [one] if !slides[0] => Self::new(one, split),
            _ if split.is_some() => Err(PredictError::Invalid(format!(
                "--split predicts one staged dataset, not {} sources",
                sources.len()
            ))),
            _ => match slides.iter().position(|s| !s) {
                Some(i) => Err(PredictError::Invalid(format!(
                    "{} is a folder or zip of patches: predict it on its own; several sources must all be slides",
                    sources[i]
                ))),
                None => Ok(Self {
                    source: PredictSource::Slides(sources.to_vec()),
                    ..Self::new(".", None)?
                }),
            },
        }
    }

    /// Predicting `source`: with `split`, that split of the dataset staged at the URL `source`;
    /// else the patches in the folder or zip `source` (a URL, or a staged dataset's folder,
    /// without `split` is a mistake). The rest default: no TTA, the run's batch size, device
    /// and threshold, one decoding thread per core.
    pub fn new(source: &str, split: Option<Split>) -> Result<Self, PredictError> {
        let source = match split {
            Some(split) => PredictSource::Staged {
                url: source.to_string(),
                split,
            },
            None if source.contains("://") => {
                return Err(PredictError::Invalid(format!(
                    "{source} is a URL: give --split to predict a split of the dataset staged there"
                )));
            }
            None => {
                let path = PathBuf::from(source);
                if path.join(crate::layout::dataset::MANIFEST).is_file() {
                    return Err(PredictError::Invalid(format!(
                        "{source} is a staged dataset: give --split train|val|test to predict one of its splits"
                    )));
                }
                PredictSource::Patches(path)
            }
        };
        Ok(Self {
            source,
            tta: false,
            batch_size: None,
            device: None,
            threshold: None,
            threads: 0,
        })
    }
}

/// Checks slide maps can be drawn for the prepared run: they show p(IDC), so two classes.
pub fn check_maps(p: &Prepared) -> Result<(), PredictError> {
    match p.spec.classes.len() {
        2 => Ok(()),
        n => Err(PredictError::Invalid(format!(
            "--maps draws p(IDC) over slides: run {} has {n} classes",
            p.spec.run_id
        ))),
    }
}

/// The metrics over the `labelled` images, in lines (two classes: at `threshold`, with the
/// confusion matrix).
pub fn metrics_text(m: &Metrics, labelled: u64, threshold: f64) -> String {
    use crate::metrics::MetricName;
    let shown: Vec<String> = MetricName::ALL
        .into_iter()
        .filter(|n| *n != MetricName::Loss)
        .map(|n| {
            let label = match m {
                Metrics::Binary(_) => n.label(),
                Metrics::Multiclass(_) => n.label_multiclass(),
            };
            format!("{label} {:.4}", n.of(m))
        })
        .collect();
    let at = match m {
        Metrics::Binary(_) => format!(" at threshold {threshold:.3}"),
        Metrics::Multiclass(_) => String::new(),
    };
    let mut text = format!("{labelled} labelled images{at}: {}", shown.join(", "));
    if let Metrics::Binary(b) = m {
        let c = &b.confusion;
        text.push_str(&format!(
            "\nconfusion (rows true, columns predicted):\n            no IDC    IDC\n  no IDC  {:>8} {:>6}\n  IDC     {:>8} {:>6}",
            c.tn, c.fp, c.fn_, c.tp
        ));
    }
    text
}

/// Why a prediction failed.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// Something the user can fix in the command (exit code 2).
    #[error("{0}")]
    Invalid(String),
    #[error("reading {path}: {source}")]
    Source { path: PathBuf, source: SourceError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Backend(BackendError),
    /// The worker (child process or pod) failed; `code` is its exit code (2: bad input).
    #[error("the prediction failed ({what}): {detail}")]
    Worker {
        code: i32,
        what: String,
        detail: String,
    },
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::exit::ProcessExitCode for PredictError {
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        use crate::exit::ExitCode;
        match self {
            PredictError::Invalid(_) => ExitCode::UserError,
            PredictError::Source {
                source: SourceError::Io { .. },
                ..
            } => ExitCode::Failure,
            PredictError::Source { .. } => ExitCode::UserError,
            PredictError::Store(e) => e.process_exit_code(),
            PredictError::Kube(e) => e.process_exit_code(),
            PredictError::Local(e) => e.process_exit_code(),
            PredictError::Backend(e) => e.process_exit_code(),
            PredictError::Worker { code, .. } if *code == ExitCode::UserError as i32 => {
                ExitCode::UserError
            }
            PredictError::Worker { .. } | PredictError::Output { .. } => ExitCode::Failure,
        }
    }
}

impl From<BackendError> for PredictError {
    /// A failed worker task is the prediction's failure; the rest keep their kind.
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Task { code, what, detail } => {
                PredictError::Worker { code, what, detail }
            }
            BackendError::Store(e) => PredictError::Store(e),
            BackendError::Kube(e) => PredictError::Kube(e),
            BackendError::Local(e) => PredictError::Local(e),
            e => PredictError::Backend(e),
        }
    }
}

/// A prediction ready to run: its spec, where it lives, and what the input left out.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub spec: PredictSpec,
    /// spec.json as written.
    pub spec_json: Vec<u8>,
    /// SHA-256 of the spec without its URLs: what the prediction id is cut from, and what
    /// annotates its Kubernetes Job.
    pub content_sha256: String,
    /// The run's folder and the prediction's (`runs/<id>/predictions/<prediction>`).
    pub run: Store,
    pub job: Store,
    pub status: RunStatus,
    pub report: AnyReport,
    /// Shards packed from a folder or zip, to be written to the prediction's folder.
    pub packed: Vec<(String, Bytes)>,
    /// Files of the source that are not in the input, with why (a bad name, a corrupt PNG).
    pub skipped: Vec<Rejected>,
    /// Images with a known label.
    pub labelled: u64,
}

/// A finished run with what it takes to load its model: the run's folder, record, report and
/// spec, the manifest of the dataset it trained on (its classes, image shape and statistics),
/// and its best checkpoint.
#[derive(Debug, Clone)]
pub struct TrainedRun {
    /// The run's id, as asked for.
    pub id: String,
    pub run: Store,
    pub status: RunStatus,
    pub report: AnyReport,
    pub spec: RunSpec,
    pub trained_on: DatasetManifest,
    /// The best epoch's checkpoint: its key in the run's folder, where it is.
    pub checkpoint: String,
}

impl TrainedRun {
    /// The spec of a prediction job applying this run's model to `input` (its id left empty).
    pub fn job_spec(
        &self,
        input: PredictInput,
        threshold: f64,
        batch_size: u32,
        device: DeviceSpec,
        tta: bool,
    ) -> PredictSpec {
        PredictSpec {
            prediction_id: String::new(),
            run_id: self.id.clone(),
            run: self.run.url().to_string(),
            checkpoint: self.checkpoint.clone(),
            model: self.spec.train.model.clone(),
            loss: self.spec.train.loss.kind,
            classes: self.trained_on.classes.clone(),
            shape: self.trained_on.layout().shape,
            mean: self.trained_on.mean.clone(),
            std: self.trained_on.std.clone(),
            threshold,
            input,
            batch_size,
            device,
            tta,
        }
    }
}

/// Resolves the run `run_id` in the bucket `root`, which must have finished with its best
/// checkpoint in place and the dataset it trained on still staged. Writes nothing.
pub async fn trained_run(root: &Store, run_id: &str) -> Result<TrainedRun, PredictError> {
    let (run, status, report, spec) = finished_run(root, run_id).await?;
    let trained_on = training_dataset(&spec, &report).await?;
    let checkpoint = keys::checkpoint(report.best_epoch);
    if run.size(&checkpoint).await?.is_none() {
        return Err(PredictError::Invalid(format!(
            "run {run_id}'s best checkpoint {} is missing",
            run.url_of(&checkpoint)
        )));
    }
    Ok(TrainedRun {
        id: run_id.to_string(),
        run,
        status,
        report,
        spec,
        trained_on,
        checkpoint,
    })
}

/// A finished run resolved for predicting with: its folder, record and report, the dataset it
/// trained on, and the spec of a prediction by its best checkpoint with the options' threshold,
/// batch size, device and TTA (no input and no id yet).
#[derive(Debug, Clone)]
pub struct Trained {
    pub run: Store,
    pub status: RunStatus,
    pub report: AnyReport,
    pub trained_on: DatasetManifest,
    pub spec: PredictSpec,
}

/// Resolves the finished run `run_id` in the bucket `root` as [`trained_run`] does, with the
/// options' settings. Writes nothing.
pub async fn trained(
    root: &Store,
    run_id: &str,
    opts: &PredictOptions,
) -> Result<Trained, PredictError> {
    let t = trained_run(root, run_id).await?;
    let (threshold, batch_size) = settings(opts, &t.report, &t.spec, t.trained_on.layout())?;
    let device = opts.device.unwrap_or(t.spec.train.device);
    let input = PredictInput {
        store: String::new(),
        shards: vec![],
        files: vec![],
    };
    let spec = t.job_spec(input, threshold, batch_size, device, opts.tta);
    Ok(Trained {
        run: t.run,
        status: t.status,
        report: t.report,
        trained_on: t.trained_on,
        spec,
    })
}

/// Resolves the run `run_id` in the bucket `root` and the input, packing a folder or zip into
/// shards (in memory; [`execute`] writes them). Writes nothing.
pub async fn prepare(
    root: &Store,
    run_id: &str,
    opts: &PredictOptions,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Prepared, PredictError> {
    let t = trained_run(root, run_id).await?;
    let (threshold, batch_size) = settings(opts, &t.report, &t.spec, t.trained_on.layout())?;
    let (input, packed, skipped, labelled) =
        resolve_input(opts, run_id, &t.trained_on, progress).await?;
    let device = opts.device.unwrap_or(t.spec.train.device);
    let mut spec = t.job_spec(input, threshold, batch_size, device, opts.tta);
    let TrainedRun {
        run,
        status,
        report,
        ..
    } = t;
    let content_sha256 = content_id(&spec);
    spec.prediction_id = content_sha256[..12].to_string();
    let job = run.child(&keys::prediction(&spec.prediction_id));
    if matches!(opts.source, PredictSource::Patches(_)) {
        spec.input.store = job.url().to_string();
    }
    let spec_json = serde_json::to_vec_pretty(&spec).expect("serializes");
    Ok(Prepared {
        spec,
        spec_json,
        content_sha256,
        run,
        job,
        status,
        report,
        packed,
        skipped,
        labelled,
    })
}

/// The run `run_id` of bucket `root`, which must have finished: its folder, record, report and
/// spec.
async fn finished_run(
    root: &Store,
    run_id: &str,
) -> Result<(Store, RunStatus, AnyReport, RunSpec), PredictError> {
    let run = run::run_store(root, run_id);
    let status = run::read_status(&run).await?.ok_or_else(|| {
        PredictError::Invalid(format!(
            "no run {run_id} in {} (see idcctl list)",
            root.url()
        ))
    })?;
    let Some(report_bytes) = run.get_opt(keys::REPORT).await? else {
        return Err(PredictError::Invalid(format!(
            "run {run_id} is {} and has no report yet: only a finished run has a best checkpoint",
            crate::output::name_of(&status.phase)
        )));
    };
    let report: AnyReport =
        serde_json::from_slice(&report_bytes).map_err(|e| StoreError::Corrupt {
            url: run.url_of(keys::REPORT),
            reason: e.to_string(),
        })?;
    let spec_bytes = run.get(keys::SPEC).await?;
    let run_spec: RunSpec =
        serde_yaml::from_slice(&spec_bytes).map_err(|e| StoreError::Corrupt {
            url: run.url_of(keys::SPEC),
            reason: e.to_string(),
        })?;
    Ok((run, status, report, run_spec))
}

/// The threshold and batch size the options ask for, else the run's; checked.
fn settings(
    opts: &PredictOptions,
    report: &AnyReport,
    run_spec: &RunSpec,
    layout: Layout,
) -> Result<(f64, u32), PredictError> {
    let threshold = match opts.threshold {
        Some(t) if !(0.0..=1.0).contains(&t) => {
            return Err(PredictError::Invalid(format!(
                "--threshold {t} is not a probability between 0 and 1"
            )));
        }
        Some(t) => t,
        None => report
            .test_at_val_threshold
            .as_ref()
            .map_or(0.5, |m| m.threshold),
    };
    if opts.tta {
        predictions::check_tta(layout.shape).map_err(PredictError::Invalid)?;
    }
    let batch_size = opts.batch_size.unwrap_or(run_spec.train.eval_batch_size);
    if batch_size == 0 {
        return Err(PredictError::Invalid(
            "--batch-size must be at least 1".into(),
        ));
    }
    Ok((threshold, batch_size))
}

/// The input: a folder or zip packed into shards (in memory), or a staged dataset's split;
/// with the files left out and how many images are labelled.
async fn resolve_input(
    opts: &PredictOptions,
    run_id: &str,
    trained_on: &DatasetManifest,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<(PredictInput, Vec<(String, Bytes)>, Vec<Rejected>, u64), PredictError> {
    let layout = trained_on.layout();
    Ok(match &opts.source {
        PredictSource::Patches(path) => {
            if trained_on.source.kind.is_archive() || layout != Layout::IDC {
                return Err(PredictError::Invalid(format!(
                    "a folder or zip holds IDC patches, but run {run_id} trained on {} images of {}x{}x{} in {} classes: predict a staged dataset of them (URL with --split)",
                    crate::output::name_of(&trained_on.source.kind),
                    layout.shape.width,
                    layout.shape.height,
                    layout.shape.channels,
                    layout.classes
                )));
            }
            let p = pack(path, opts.threads, progress)?;
            (p.input, p.shards, p.skipped, p.labelled)
        }
        PredictSource::Staged { url, split } => {
            let (input, labelled) = staged_input(url, *split, layout).await?;
            (input, vec![], vec![], labelled)
        }
        PredictSource::Slides(_) => {
            return Err(PredictError::Invalid(
                "slides are predicted by predict::slides, not as patches".into(),
            ));
        }
    })
}

/// The hash of everything the result depends on (not where the bucket is: the run is named by
/// its id, the input by its shards' hashes): the same prediction asked again finds its result
/// instead of running again.
fn content_id(spec: &PredictSpec) -> String {
    let id_source = serde_json::to_vec(&PredictSpec {
        run: String::new(),
        input: PredictInput {
            store: String::new(),
            ..spec.input.clone()
        },
        ..spec.clone()
    })
    .expect("serializes");
    hex::encode(sha2::Sha256::digest(&id_source))
}

/// The manifest of the dataset the run trained on: its statistics normalize the model's input.
async fn training_dataset(
    spec: &RunSpec,
    report: &AnyReport,
) -> Result<DatasetManifest, PredictError> {
    let ds = Store::open(&spec.dataset)?;
    let m = crate::dataset::manifest::read(&ds).await?.ok_or_else(|| {
        PredictError::Invalid(format!(
            "the dataset run {} trained on is gone from {} (no manifest.json); its image statistics are needed: restage it there",
            spec.run_id,
            ds.url()
        ))
    })?;
    if m.id != report.dataset_id {
        return Err(PredictError::Invalid(format!(
            "{} now holds dataset {}, not {} that run {} trained on; restage the original there",
            ds.url(),
            m.id,
            report.dataset_id,
            spec.run_id
        )));
    }
    Ok(m)
}

/// The shards of `split` of the dataset staged at `url`, which must have the model's layout.
async fn staged_input(
    url: &str,
    split: Split,
    layout: Layout,
) -> Result<(PredictInput, u64), PredictError> {
    let ds = Store::open(url)?;
    let m = crate::dataset::manifest::read(&ds).await?.ok_or_else(|| {
        PredictError::Invalid(format!(
            "no staged dataset at {} (no manifest.json); give a folder or zip of patches, or a URL idcctl stage wrote",
            ds.url()
        ))
    })?;
    if m.layout() != layout {
        return Err(PredictError::Invalid(format!(
            "dataset {} holds {}x{}x{} images in {} classes, but the run's model takes {}x{}x{} in {}",
            ds.url(),
            m.image.width,
            m.image.height,
            m.image.channels,
            m.num_classes(),
            layout.shape.width,
            layout.shape.height,
            layout.shape.channels,
            layout.classes
        )));
    }
    let shards: Vec<InputShard> = m
        .shards_of(split)
        .map(|s| InputShard {
            key: s.key.clone(),
            sha256: s.sha256.clone(),
            records: s.records,
        })
        .collect();
    let records: u64 = shards.iter().map(|s| s.records).sum();
    if records == 0 {
        return Err(PredictError::Invalid(format!(
            "the {} split of {} is empty",
            split.as_str(),
            ds.url()
        )));
    }
    Ok((
        PredictInput {
            store: ds.url().to_string(),
            shards,
            files: vec![],
        },
        records,
    ))
}

struct Packed {
    input: PredictInput,
    shards: Vec<(String, Bytes)>,
    skipped: Vec<Rejected>,
    labelled: u64,
}

/// Decodes every patch of the folder or zip at `path` (as `stage` does: edge patches padded,
/// a corrupt file reported and skipped) and packs the readable ones into shards.
fn pack(
    path: &Path,
    threads: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Packed, PredictError> {
    let source =
        Source::open_with(path, Names::Predict).map_err(|source| PredictError::Source {
            path: path.to_path_buf(),
            source,
        })?;
    if let Some(pb) = progress {
        pb.set_length(source.entries.len() as u64);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| PredictError::Invalid(format!("cannot start {threads} threads: {e}")))?;
    let decoded: Vec<Result<(RecordMeta, Vec<u8>), String>> = pool.install(|| {
        source
            .entries
            .par_iter()
            .map(|entry| {
                let r = source.read(entry).and_then(|bytes| {
                    decode_png(&bytes, Undersized::Pad).map_err(|e| e.to_string())
                });
                if let Some(pb) = progress {
                    pb.inc(1);
                }
                let patch = r?;
                let meta = RecordMeta {
                    label: entry.label.unwrap_or(0),
                    flags: if patch.padded { FLAG_PADDED } else { 0 }
                        | if entry.label.is_none() {
                            FLAG_UNLABELED
                        } else {
                            0
                        },
                    patient: entry.name.patient,
                    x: entry.name.x,
                    y: entry.name.y,
                };
                Ok((meta, patch.pixels))
            })
            .collect()
    });
    let mut skipped = source.rejected.clone();
    let mut files = vec![];
    let mut records = vec![];
    for (entry, r) in source.entries.iter().zip(decoded) {
        match r {
            Ok(rec) => {
                files.push(entry.rel.clone());
                records.push(rec);
            }
            Err(reason) => skipped.push(Rejected {
                path: entry.rel.clone(),
                reason,
            }),
        }
    }
    if records.is_empty() {
        return Err(PredictError::Invalid(format!(
            "none of the {} patches in {} could be read (first: {}: {})",
            skipped.len(),
            path.display(),
            skipped.first().map_or("", |r| r.path.as_str()),
            skipped.first().map_or("", |r| r.reason.as_str()),
        )));
    }
    let labelled = records
        .iter()
        .filter(|(m, _)| m.flags & FLAG_UNLABELED == 0)
        .count() as u64;
    let (infos, shards) = input_shards(&records);
    Ok(Packed {
        input: PredictInput {
            // Set to the prediction's folder once its id is known.
            store: String::new(),
            shards: infos,
            files,
        },
        shards,
        skipped,
        labelled,
    })
}

/// The decoded patches as the prediction's input shards: what the spec lists, and the bytes.
fn input_shards(records: &[(RecordMeta, Vec<u8>)]) -> (Vec<InputShard>, Vec<(String, Bytes)>) {
    let mut shards = vec![];
    let mut infos = vec![];
    for (i, chunk) in records.chunks(INPUT_SHARD_RECORDS).enumerate() {
        let mut w = ShardWriter::new(Split::Test, Layout::IDC, chunk.len());
        for (meta, pixels) in chunk {
            w.push(*meta, pixels);
        }
        let (bytes, sha256) = w.finish();
        let key = job_keys::input_shard(i);
        infos.push(InputShard {
            key: key.clone(),
            sha256,
            records: chunk.len() as u64,
        });
        shards.push((key, Bytes::from(bytes)));
    }
    (infos, shards)
}

/// What [`execute`] gave.
#[derive(Debug, Clone)]
pub struct Executed {
    pub result: PredictResult,
    pub rows: Vec<Prediction>,
    /// False when the same prediction had been made before and its result was reused.
    pub ran: bool,
}

/// Progress reports from a running prediction.
pub trait Progress: Send {
    /// `done` of `total` images predicted.
    fn images(&mut self, done: u64, total: u64);
    /// A one-line update (waiting for a pod, and so on).
    fn notice(&mut self, line: &str);
}

/// Runs the prepared prediction on the run's backend, unless its result is already in the
/// bucket, and reads the predictions.
pub async fn execute(
    p: &Prepared,
    target: &Target,
    progress: &mut dyn Progress,
) -> Result<Executed, PredictError> {
    let mut ran = false;
    if p.job.size(job_keys::RESULT).await?.is_none() {
        let backend = Backends::of_run(&p.status, target).await?;
        run_with(&backend, p, progress).await?;
        ran = true;
    }
    let (result, rows) = read_outcome(p).await?;
    Ok(Executed { result, rows, ran })
}

/// Writes the prediction's input and spec to the bucket, then runs the worker on `backend`
/// (a child process, or a Job shaped like the run's) until it ends.
pub async fn run_with(
    backend: &impl RunBackend,
    p: &Prepared,
    progress: &mut dyn Progress,
) -> Result<(), PredictError> {
    write_job(p).await?;
    let experiment = experiment_of(&p.run).await?;
    let job = |defaults: &ClusterDefaults| job_of(p, &experiment, defaults);
    let task = Task {
        worker_args: vec!["predict".into(), "--job".into(), p.job.url().to_string()],
        job: &job,
        max_attempts: experiment.retries + 1,
        log: (&p.job, job_keys::LOG),
    };
    backend
        .run_task(&task, &mut ProgressLines(progress))
        .await
        .map_err(PredictError::from)
}

/// The worker's lines as prediction progress.
struct ProgressLines<'a>(&'a mut dyn Progress);

impl TaskProgress for ProgressLines<'_> {
    fn line(&mut self, text: &str) -> bool {
        match predictions::parse_progress(text) {
            Some((done, total)) => {
                self.0.images(done, total);
                true
            }
            None => false,
        }
    }

    fn notice(&mut self, line: &str) {
        self.0.notice(line);
    }
}

/// Writes the packed input, then the spec, to the prediction's folder.
async fn write_job(p: &Prepared) -> Result<(), PredictError> {
    for (key, bytes) in &p.packed {
        p.job.put(key, bytes.clone()).await?;
    }
    p.job
        .put(job_keys::SPEC, Bytes::from(p.spec_json.clone()))
        .await?;
    Ok(())
}

/// The result and the predictions the worker wrote.
pub async fn read_outcome(p: &Prepared) -> Result<(PredictResult, Vec<Prediction>), PredictError> {
    let corrupt = |key: &str, reason: String| StoreError::Corrupt {
        url: p.job.url_of(key),
        reason,
    };
    let result: PredictResult = serde_json::from_slice(&p.job.get(job_keys::RESULT).await?)
        .map_err(|e| corrupt(job_keys::RESULT, e.to_string()))?;
    let rows = predictions::parse_jsonl(&p.job.get(job_keys::PREDICTIONS).await?)
        .and_then(|rows| predictions::check_rows(&rows, p.spec.classes.len()).map(|()| rows))
        .map_err(|e| corrupt(job_keys::PREDICTIONS, e))?;
    if rows.len() as u64 != p.spec.input.records() {
        return Err(corrupt(
            job_keys::PREDICTIONS,
            format!("{} rows for {} images", rows.len(), p.spec.input.records()),
        )
        .into());
    }
    Ok((result, rows))
}

/// The prediction's Kubernetes Job, with the namespace's `defaults`.
pub fn job_of(p: &Prepared, experiment: &Experiment, defaults: &ClusterDefaults) -> Job {
    kube::job::build_predict(&kube::job::PredictJobInputs {
        experiment,
        run_id: &p.spec.run_id,
        prediction_id: &p.spec.prediction_id,
        job_url: p.job.url(),
        spec_sha256: &p.content_sha256,
        defaults,
    })
}

/// The run's experiment as submitted (its resources and image make the prediction's Job).
pub async fn experiment_of(run: &Store) -> Result<Experiment, PredictError> {
    let bytes = run.get(keys::EXPERIMENT).await?;
    serde_yaml::from_slice(&bytes).map_err(|e| {
        StoreError::Corrupt {
            url: run.url_of(keys::EXPERIMENT),
            reason: e.to_string(),
        }
        .into()
    })
}

/// The Job `execute` would create on Kubernetes (`--dry-run`), checked against Kubernetes'
/// validation rules.
pub async fn render_job(p: &Prepared, defaults: &ClusterDefaults) -> Result<Job, PredictError> {
    checked(job_of(p, &experiment_of(&p.run).await?, defaults))
}

/// `job`, unless it breaks Kubernetes' validation rules (which the error lists).
fn checked(job: Job) -> Result<Job, PredictError> {
    let bad = kube::names::job_violations(&job);
    if !bad.is_empty() {
        return Err(PredictError::Invalid(format!(
            "the Job would be rejected by Kubernetes: {}",
            bad.join("; ")
        )));
    }
    Ok(job)
}

/// How `write_output` writes the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Csv,
    Jsonl,
}

impl crate::choice::Choice for OutputFormat {
    const ALL: &'static [Self] = &[OutputFormat::Csv, OutputFormat::Jsonl];
    fn name(self) -> &'static str {
        match self {
            OutputFormat::Csv => "csv",
            OutputFormat::Jsonl => "jsonl",
        }
    }
}
crate::choice_names!(OutputFormat);

impl OutputFormat {
    /// The format a file name's extension says (`.jsonl`, `.ndjson`, `.json`: JSON Lines).
    pub fn of_path(path: &str) -> OutputFormat {
        let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("jsonl" | "ndjson" | "json") => OutputFormat::Jsonl,
            _ => OutputFormat::Csv,
        }
    }
}

/// The rows as CSV: `patient,x,y,file,p_idc,predicted,label` for two classes, one
/// `p_<class>` column per class for K (names made safe as column names).
pub fn to_csv(rows: &[Prediction], classes: &[String]) -> Vec<u8> {
    use std::fmt::Write;
    let mut out = String::with_capacity(rows.len() * 64 + 64);
    out.push_str("patient,x,y,file,");
    if classes.len() == 2 {
        out.push_str("p_idc");
    } else {
        let cols: Vec<String> = classes.iter().map(|c| format!("p_{}", column(c))).collect();
        out.push_str(&cols.join(","));
    }
    out.push_str(",predicted,label\n");
    for r in rows {
        let _ = write!(out, "{},{},{},{},", r.patient, r.x, r.y, csv_field(&r.file));
        if classes.len() == 2 {
            let _ = write!(out, "{}", r.p_positive());
        } else {
            let ps: Vec<String> = r.probabilities.iter().map(|p| p.to_string()).collect();
            out.push_str(&ps.join(","));
        }
        let _ = write!(out, ",{},", r.predicted);
        if let Some(l) = r.label {
            let _ = write!(out, "{l}");
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// The rows as JSON Lines: two classes with `p_idc`, K with `probabilities` (index = class).
pub fn to_jsonl(rows: &[Prediction], classes: &[String]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        patient: u32,
        x: u32,
        y: u32,
        file: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        p_idc: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        probabilities: Option<&'a [f32]>,
        predicted: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<u8>,
    }
    let binary = classes.len() == 2;
    let mut out = Vec::with_capacity(rows.len() * 100);
    for r in rows {
        let row = Row {
            patient: r.patient,
            x: r.x,
            y: r.y,
            file: &r.file,
            p_idc: binary.then(|| r.p_positive()),
            probabilities: (!binary).then_some(&r.probabilities[..]),
            predicted: r.predicted,
            label: r.label,
        };
        serde_json::to_writer(&mut out, &row).expect("rows serialize");
        out.push(b'\n');
    }
    out
}

fn column(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.trim_matches('_').to_string()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `bytes` to `target` whole: a storage URL (`file://`, `s3://`: one atomic put), or a
/// local path (a temporary file beside it, renamed over it).
pub async fn write_output(target: &str, bytes: Vec<u8>) -> Result<(), PredictError> {
    if target.contains("://") {
        let (dir, name) = target.rsplit_once('/').unwrap_or(("", target));
        if name.is_empty() {
            return Err(PredictError::Invalid(format!(
                "--out {target} names a folder; give the file's URL"
            )));
        }
        return Ok(Store::open(dir)?.put(name, Bytes::from(bytes)).await?);
    }
    let path = PathBuf::from(target);
    crate::output::write_file_whole(&path, &bytes)
        .map_err(|source| PredictError::Output { path, source })
}

/// The metrics over the rows whose label is known (two classes: at `threshold`); None when no
/// row has one.
pub fn labelled_metrics(rows: &[Prediction], classes: usize, threshold: f64) -> Option<Metrics> {
    let known: Vec<&Prediction> = rows.iter().filter(|r| r.label.is_some()).collect();
    if known.is_empty() {
        return None;
    }
    let labels: Vec<u8> = known.iter().map(|r| r.label.expect("known")).collect();
    Some(if classes == 2 {
        let p: Vec<f32> = known.iter().map(|r| r.p_positive()).collect();
        metrics::evaluate(&p, &labels, threshold, f64::NAN).into()
    } else {
        let p: Vec<f32> = known
            .iter()
            .flat_map(|r| r.probabilities.iter().copied())
            .collect();
        metrics::evaluate_multiclass(&p, &labels, classes, f64::NAN).into()
    })
}

/// The pixels of every input image, in input order (HWC, the model's shape).
pub async fn input_pixels(p: &Prepared) -> Result<Vec<Vec<u8>>, PredictError> {
    let store = Store::open(&p.spec.input.store)?;
    let mut out = Vec::with_capacity(p.spec.input.records() as usize);
    for s in &p.spec.input.shards {
        let bytes = match p.packed.iter().find(|(k, _)| *k == s.key) {
            Some((_, b)) => b.clone(),
            None => store.get(&s.key).await?,
        };
        let shard =
            ShardReader::open_verified(bytes, &s.sha256).map_err(|e| StoreError::Corrupt {
                url: store.url_of(&s.key),
                reason: e.to_string(),
            })?;
        out.extend(shard.records().map(|r| r.pixels.to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_source() {
        let staged = PredictOptions::new("s3://b/d", Some(Split::Test)).unwrap();
        assert!(matches!(
            staged.source,
            PredictSource::Staged {
                split: Split::Test,
                ..
            }
        ));
        let e = PredictOptions::new("s3://b/d", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "s3://b/d is a URL: give --split to predict a split of the dataset staged there"
        );
        assert_eq!(
            crate::exit::ProcessExitCode::process_exit_code(&e),
            crate::exit::ExitCode::UserError
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(crate::layout::dataset::MANIFEST), "{}").unwrap();
        let e = PredictOptions::new(dir.path().to_str().unwrap(), None).unwrap_err();
        assert!(e.to_string().ends_with(
            "is a staged dataset: give --split train|val|test to predict one of its splits"
        ));
        let p = PredictOptions::new("patches.zip", None).unwrap();
        assert!(matches!(p.source, PredictSource::Patches(_)));
    }

    fn row(file: &str, probabilities: Vec<f32>, label: Option<u8>) -> Prediction {
        Prediction {
            patient: 8863,
            x: 51,
            y: 1,
            file: file.into(),
            label,
            predicted: predictions::predicted_class(&probabilities, 0.5),
            probabilities,
        }
    }

    #[test]
    fn csv_and_jsonl_columns() {
        let classes = crate::idc_classes();
        let rows = vec![
            row("a/8863_idx5_x51_y1_class1.png", vec![0.25, 0.75], Some(1)),
            row("b,c/8863_idx5_x51_y1.png", vec![0.875, 0.125], None),
        ];
        assert_eq!(
            String::from_utf8(to_csv(&rows, &classes)).unwrap(),
            "patient,x,y,file,p_idc,predicted,label\n\
             8863,51,1,a/8863_idx5_x51_y1_class1.png,0.75,1,1\n\
             8863,51,1,\"b,c/8863_idx5_x51_y1.png\",0.125,0,\n"
        );
        let jsonl = String::from_utf8(to_jsonl(&rows, &classes)).unwrap();
        assert_eq!(
            jsonl.lines().nth(1).unwrap(),
            r#"{"patient":8863,"x":51,"y":1,"file":"b,c/8863_idx5_x51_y1.png","p_idc":0.125,"predicted":0}"#
        );
        let three: Vec<String> = ["T-shirt/top", "bag", "cat"].map(String::from).to_vec();
        let rows = vec![row(
            "shards/test-00000.idcs#0",
            vec![0.5, 0.25, 0.25],
            Some(2),
        )];
        assert!(
            String::from_utf8(to_csv(&rows, &three))
                .unwrap()
                .starts_with("patient,x,y,file,p_t_shirt_top,p_bag,p_cat,predicted,label\n")
        );
        assert!(
            String::from_utf8(to_jsonl(&rows, &three))
                .unwrap()
                .contains(r#""probabilities":[0.5,0.25,0.25],"predicted":0,"label":2"#)
        );
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(OutputFormat::of_path("out.jsonl"), OutputFormat::Jsonl);
        assert_eq!(
            OutputFormat::of_path("s3://b/p.NDJSON"),
            OutputFormat::Jsonl
        );
        assert_eq!(OutputFormat::of_path("out.csv"), OutputFormat::Csv);
        assert_eq!(OutputFormat::of_path("out"), OutputFormat::Csv);
    }

    #[test]
    fn metrics_cover_the_labelled_rows_only() {
        let rows = vec![
            row("a", vec![0.2, 0.8], Some(1)),
            row("b", vec![0.9, 0.1], Some(0)),
            row("c", vec![0.9, 0.1], None),
        ];
        let m = labelled_metrics(&rows, 2, 0.5).unwrap();
        assert_eq!(m.count(), 2);
        assert_eq!(m.value(crate::metrics::MetricName::Accuracy), 1.0);
        assert!(labelled_metrics(&rows[2..], 2, 0.5).is_none());
    }

    #[tokio::test]
    async fn output_is_written_whole_to_paths_and_urls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.csv");
        write_output(path.to_str().unwrap(), b"a\n".to_vec())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\n");
        write_output(path.to_str().unwrap(), b"b\n".to_vec())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"b\n");
        // Nothing but the output is left beside it.
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
        let url = format!("file://{}/bucket/p.jsonl", dir.path().display());
        write_output(&url, b"{}\n".to_vec()).await.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("bucket/p.jsonl")).unwrap(),
            b"{}\n"
        );
    }
}
