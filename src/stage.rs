//! `idcctl stage`: turns a download (the IDC patches as a folder or zip, a CIFAR-10 archive, a
//! folder of IDX files) into split, checksummed shards in object storage.
//!
//! The stage is resumable and idempotent. Each shard is uploaded, then a small commit marker is
//! written beside it; the dataset manifest is written last, so a half-staged dataset is never
//! seen as complete. A rerun reuses every committed shard, and a rerun of a complete stage with
//! the same source and options does nothing.

use crate::dataset::archive::{self, Archive, ArchiveError, ArchiveFormat};
use crate::dataset::decode::{Undersized, decode_png};
use crate::dataset::manifest::{
    DatasetManifest, ImageInfo, MANIFEST_VERSION, ShardInfo, SourceInfo, SourceKind, SplitSummary,
    StageOptionsRecord, class_weights,
};
use crate::dataset::source::{Rejected, Source, SourceError};
use crate::dataset::split::{self, Split, SplitError, SplitMethod, SplitOptions, SplitSize};
use crate::layout::dataset as keys;
use crate::shard::{self, FLAG_PADDED, HEADER_LEN, Layout, RecordMeta};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Records per shard unless told otherwise (about 30 MB a shard).
pub const DEFAULT_SHARD_RECORDS: usize = 4096;

/// What kind of download is staged.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The IDC patches: the Kaggle folder or zip (`<patient>/<class>/..._class<C>.png`).
    #[default]
    Idc,
    /// CIFAR-10 as downloaded (`cifar-10-python.tar.gz` or `cifar-10-binary.tar.gz`).
    Cifar10,
    /// A folder of MNIST-style IDX files (`train-images-idx3-ubyte.gz` and friends).
    Idx,
}

impl crate::choice::Choice for Format {
    const ALL: &'static [Self] = &[Format::Idc, Format::Cifar10, Format::Idx];
    fn name(self) -> &'static str {
        match self {
            Format::Idc => "idc",
            Format::Cifar10 => "cifar10",
            Format::Idx => "idx",
        }
    }
    fn about(self) -> Option<&'static str> {
        Some(match self {
            Format::Idc => {
                "The IDC patches: the Kaggle folder or zip (`<patient>/<class>/..._class<C>.png`)"
            }
            Format::Cifar10 => {
                "CIFAR-10 as downloaded (`cifar-10-python.tar.gz` or `cifar-10-binary.tar.gz`)"
            }
            Format::Idx => {
                "A folder of MNIST-style IDX files (`train-images-idx3-ubyte.gz` and friends)"
            }
        })
    }
}
crate::choice_names!(Format);

impl Format {
    /// The archive format, for formats with an official train/test split.
    pub fn archive(self) -> Option<ArchiveFormat> {
        match self {
            Format::Idc => None,
            Format::Cifar10 => Some(ArchiveFormat::Cifar10),
            Format::Idx => Some(ArchiveFormat::Idx),
        }
    }
}

/// The validation share of an archive's training images unless told otherwise.
pub const DEFAULT_ARCHIVE_VAL: SplitSize = SplitSize::Fraction(0.1);

/// How to stage.
#[derive(Debug, Clone)]
pub struct StageOptions {
    pub format: Format,
    /// IDC: the split. Archives keep their official test set and carve validation out of the
    /// training images (`val` of them, stratified by class, with `seed`); `method` and `test`
    /// do not apply.
    pub split: SplitOptions,
    /// Class names replacing the archive's (IDX files carry none: digits by default).
    pub class_names: Option<Vec<String>>,
    pub undersized: Undersized,
    /// Any skipped file fails the stage.
    pub strict: bool,
    pub shard_records: usize,
    /// Decoding threads; 0 means one per core.
    pub threads: usize,
    /// Replace a different dataset already staged at the destination.
    pub force: bool,
    /// The images' scale, microns per pixel (default: IDC patches' 4.0; archives: unknown).
    pub microns_per_pixel: Option<f64>,
}

impl Default for StageOptions {
    fn default() -> Self {
        Self {
            format: Format::Idc,
            split: SplitOptions::default(),
            class_names: None,
            undersized: Undersized::Pad,
            strict: false,
            shard_records: DEFAULT_SHARD_RECORDS,
            threads: 0,
            force: false,
            microns_per_pixel: None,
        }
    }
}

/// A stage as `idcctl stage` is asked for it, flags as given: `None` (or false) where the
/// format's default applies.
#[derive(Debug, Clone, Default)]
pub struct StageFlags {
    pub format: Format,
    pub split: Option<SplitMethod>,
    pub val: Option<SplitSize>,
    pub test: Option<SplitSize>,
    pub seed: u64,
    /// Comma-separated names, or a preset (`fashion-mnist`, `mnist`).
    pub class_names: Option<String>,
    pub skip_undersized: bool,
    pub strict: bool,
    pub shard_records: usize,
    pub threads: usize,
    pub force: bool,
    pub microns_per_pixel: Option<f64>,
}

impl StageOptions {
    /// Staging `format` with `split` (default: the format's, see [`default_split`]), the class
    /// names and undersized patches' fate; the rest as [`Default`]. The one constructor both
    /// `idcctl stage` and a manifest's `dataset.source` go through.
    pub fn new(
        format: Format,
        split: Option<SplitOptions>,
        class_names: Option<Vec<String>>,
        undersized: Undersized,
    ) -> Self {
        Self {
            format,
            split: split.unwrap_or_else(|| default_split(format)),
            class_names,
            undersized,
            ..Default::default()
        }
    }

    /// The options `idcctl stage`'s flags ask for, checked against the format (messages name
    /// the flags).
    pub fn from_flags(f: &StageFlags) -> Result<Self, StageError> {
        let archive = f.format.archive().is_some();
        if archive {
            for (given, flag) in [
                (f.split.is_some(), "--split"),
                (f.test.is_some(), "--test"),
                (f.skip_undersized, "--skip-undersized"),
            ] {
                if given {
                    return Err(StageError::Flags(format!(
                        "{flag} does not apply to --format {}: its official test set is kept and validation is carved from the training images (--val)",
                        f.format
                    )));
                }
            }
        }
        let class_names = match &f.class_names {
            None => None,
            Some(_) if !archive => {
                return Err(StageError::Flags(
                    "--class-names applies to --format cifar10 or idx; the IDC classes are fixed"
                        .into(),
                ));
            }
            Some(s) => Some(match archive::named_classes(s) {
                Some(preset) => preset,
                None => {
                    let names: Vec<String> = s.split(',').map(|n| n.trim().to_string()).collect();
                    if names.len() < 2 || names.iter().any(|n| n.is_empty()) {
                        return Err(StageError::Flags(format!(
                            "--class-names '{s}' is neither a preset (fashion-mnist, mnist) nor a comma-separated list of at least two names"
                        )));
                    }
                    names
                }
            }),
        };
        let default = default_split(f.format);
        let split = SplitOptions {
            method: f.split.unwrap_or_default(),
            val: f.val.unwrap_or(default.val),
            test: f.test.unwrap_or(default.test),
            seed: f.seed,
        };
        let undersized = if f.skip_undersized {
            Undersized::Skip
        } else {
            Undersized::Pad
        };
        if let Some(mpp) = f.microns_per_pixel
            && !(mpp.is_finite() && mpp > 0.0)
        {
            return Err(StageError::Flags(format!(
                "--microns-per-pixel {mpp} is not a positive number of microns"
            )));
        }
        Ok(Self {
            microns_per_pixel: f.microns_per_pixel,
            strict: f.strict,
            shard_records: f.shard_records,
            threads: f.threads,
            force: f.force,
            ..Self::new(f.format, Some(split), class_names, undersized)
        })
    }
}

/// The split unless told otherwise: archives carve [`DEFAULT_ARCHIVE_VAL`] of their training
/// images into validation; IDC takes [`SplitOptions::default`].
pub fn default_split(format: Format) -> SplitOptions {
    match format.archive() {
        Some(_) => SplitOptions {
            val: DEFAULT_ARCHIVE_VAL,
            ..Default::default()
        },
        None => SplitOptions::default(),
    }
}

/// Progress reporting and interruption.
#[derive(Default)]
pub struct StageHooks {
    /// Advanced by patches; its length is set once the plan is known.
    pub progress: Option<ProgressBar>,
    /// Set to stop after the shard in flight (its commit marker is written first).
    pub cancel: Arc<AtomicBool>,
    /// Called after each shard is committed, with the number committed so far.
    pub on_commit: Option<Box<dyn Fn(usize) + Send + Sync>>,
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageStatus {
    /// The same source was already staged with the same options; nothing was done.
    AlreadyStaged,
    /// Shards were written (`resumed` of them reused from an interrupted stage).
    Staged { written: usize, resumed: usize },
}

/// The result of a stage.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    pub manifest: DatasetManifest,
    pub status: StageStatus,
}

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("cannot split: {0}")]
    Split(#[from] SplitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{url} already holds a different dataset (id {existing}, staged from {source_path}); \
         pass --force to replace it, or stage to another URL"
    )]
    Conflict {
        url: String,
        existing: String,
        source_path: String,
    },
    #[error("--strict: {count} file(s) would be skipped, first: {first}")]
    Strict { count: usize, first: String },
    #[error("interrupted after {done} of {total} shards; rerun the same command to resume")]
    Interrupted { done: usize, total: usize },
    #[error("option {0}")]
    BadOption(String),
    /// `idcctl stage` flags that do not go together.
    #[error("{0}")]
    Flags(String),
}

impl crate::exit::ProcessExitCode for StageError {
    /// Whether the input (source, options, destination) is at fault rather than the system.
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        use crate::exit::ExitCode;
        match self {
            StageError::Source(SourceError::Io { .. }) => ExitCode::Failure,
            StageError::Archive(e) => e.process_exit_code(),
            StageError::Source(_)
            | StageError::Split(_)
            | StageError::Conflict { .. }
            | StageError::Strict { .. }
            | StageError::BadOption(_)
            | StageError::Flags(_) => ExitCode::UserError,
            StageError::Store(e) => e.process_exit_code(),
            StageError::Interrupted { .. } => ExitCode::Interrupted,
        }
    }
}

/// What a shard's commit marker records: enough to build the manifest without re-reading data.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShardMarker {
    info: ShardInfo,
    padded: u64,
    skipped: Vec<Rejected>,
    patients: BTreeSet<u32>,
    /// Per channel: the sum of pixel values and of their squares.
    channel_sum: Vec<u64>,
    channel_sum_sq: Vec<u64>,
}

/// The records planned for one shard.
struct ShardPlan {
    split: Split,
    index: usize,
    entries: Vec<usize>,
}

/// Stages `source` (a folder or a zip) into the dataset at `dest`, in phases: plan (list the
/// source, split it, compare with what `dest` holds), reuse (shards an interrupted stage of the
/// same plan committed), produce (decode and pack the other shards on a thread pool), commit
/// (hash and write each shard, then its marker), finalize (write the manifest, tidy up).
pub async fn stage(
    source: &Path,
    dest: &Store,
    opts: &StageOptions,
    hooks: &StageHooks,
) -> Result<StageOutcome, StageError> {
    let plan = match plan(source, dest, opts).await? {
        Planned::Done(outcome) => return Ok(*outcome),
        Planned::Stage(plan) => plan,
    };
    let mut markers = reuse(dest, &plan, hooks).await?;
    let resumed = markers.iter().filter(|m| m.is_some()).count();
    let pending: Vec<usize> = (0..plan.shards.len())
        .filter(|&i| markers[i].is_none())
        .collect();
    let written = pending.len();
    let (rx, producer) = produce(&plan, pending, opts, hooks);
    let committed = commit(dest, &plan, &mut markers, rx, resumed, hooks).await;
    producer.join().expect("the shard producer does not panic");
    let done = committed?;
    if done < plan.shards.len() {
        return Err(StageError::Interrupted {
            done,
            total: plan.shards.len(),
        });
    }
    let markers: Vec<ShardMarker> = markers
        .into_iter()
        .map(|m| m.expect("every shard committed"))
        .collect();
    let manifest = finalize(dest, &plan, &markers).await?;
    Ok(StageOutcome {
        manifest,
        status: StageStatus::Staged { written, resumed },
    })
}

/// What is staged: IDC patches listed from a folder or zip, or a labelled archive read whole.
enum Input {
    Patches(Source),
    Archive(Archive),
}

impl Input {
    /// Opens `path` as `opts.format` says (blocking: lists or reads the whole download).
    fn open(path: &Path, opts: &StageOptions) -> Result<Self, StageError> {
        Ok(match opts.format.archive() {
            None => Input::Patches(Source::open(path)?),
            Some(f) => Input::Archive(archive::open(path, f, opts.class_names.clone())?),
        })
    }

    fn layout(&self) -> Layout {
        match self {
            Input::Patches(_) => Layout::IDC,
            Input::Archive(a) => Layout {
                shape: shard::Shape {
                    height: a.height,
                    width: a.width,
                    channels: a.channels,
                },
                classes: a.classes.len() as u16,
            },
        }
    }

    fn classes(&self) -> Vec<String> {
        match self {
            Input::Patches(_) => crate::idc_classes(),
            Input::Archive(a) => a.classes.clone(),
        }
    }

    fn kind(&self) -> SourceKind {
        match self {
            Input::Patches(s) => s.kind,
            Input::Archive(a) => match a.format {
                ArchiveFormat::Cifar10 => SourceKind::Cifar10,
                ArchiveFormat::Idx => SourceKind::Idx,
            },
        }
    }

    fn fingerprint(&self) -> &str {
        match self {
            Input::Patches(s) => &s.fingerprint,
            Input::Archive(a) => &a.fingerprint,
        }
    }

    fn rejected(&self) -> &[Rejected] {
        match self {
            Input::Patches(s) => &s.rejected,
            Input::Archive(_) => &[],
        }
    }

    fn source_info(&self) -> SourceInfo {
        match self {
            Input::Patches(s) => SourceInfo {
                path: s.path.display().to_string(),
                kind: s.kind,
                fingerprint: s.fingerprint.clone(),
                files_seen: s.files_seen,
                duplicates: s.duplicates,
                ignored: s.ignored,
            },
            Input::Archive(a) => SourceInfo {
                path: a.path.display().to_string(),
                kind: self.kind(),
                fingerprint: a.fingerprint.clone(),
                files_seen: a.files_seen,
                duplicates: 0,
                ignored: 0,
            },
        }
    }

    /// The split of every item, in item order: IDC by `opts.split`; an archive's training
    /// images then its test images, validation carved from the former.
    fn assign(&self, opts: &SplitOptions) -> Result<Vec<Split>, StageError> {
        match self {
            Input::Patches(s) => {
                let items: Vec<(u32, u8)> = s
                    .entries
                    .iter()
                    .map(|e| (e.name.patient, e.name.class))
                    .collect();
                Ok(split::assign(&items, opts)?)
            }
            Input::Archive(a) => {
                let val = opts.val.count_of(a.train.len() as u64);
                let held =
                    split::stratified_holdout(&a.train.labels, a.classes.len(), val, opts.seed)?;
                Ok(held
                    .into_iter()
                    .map(|h| if h { Split::Val } else { Split::Train })
                    .chain(std::iter::repeat_n(Split::Test, a.test.len()))
                    .collect())
            }
        }
    }

    /// Item `i`: its record fields and pixels, and whether it was padded; or why it is unusable.
    fn record(
        &self,
        i: usize,
        undersized: Undersized,
    ) -> Result<(RecordMeta, Cow<'_, [u8]>), String> {
        match self {
            Input::Patches(s) => {
                let entry = &s.entries[i];
                let bytes = s.read(entry)?;
                let patch = decode_png(&bytes, undersized).map_err(|e| e.to_string())?;
                let meta = RecordMeta {
                    label: entry.name.class,
                    flags: if patch.padded { FLAG_PADDED } else { 0 },
                    patient: entry.name.patient,
                    x: entry.name.x,
                    y: entry.name.y,
                };
                Ok((meta, Cow::Owned(patch.pixels)))
            }
            Input::Archive(a) => {
                let n_train = a.train.len();
                let (set, j, y) = if i < n_train {
                    (&a.train, i, 0)
                } else {
                    (&a.test, i - n_train, 1)
                };
                let meta = RecordMeta {
                    label: set.labels[j],
                    flags: 0,
                    patient: 0,
                    x: j as u32,
                    y,
                };
                Ok((meta, Cow::Borrowed(set.image(j, a.bytes_per_image()))))
            }
        }
    }

    /// Item `i` for messages: its path in the source.
    fn item_path(&self, i: usize) -> String {
        match self {
            Input::Patches(s) => s.entries[i].rel.clone(),
            Input::Archive(a) => {
                let n_train = a.train.len();
                if i < n_train {
                    format!("training image {i}")
                } else {
                    format!("test image {}", i - n_train)
                }
            }
        }
    }
}

/// What a stage will write.
struct Plan {
    src: Arc<Input>,
    record: StageOptionsRecord,
    plan_id: String,
    shards: Arc<Vec<ShardPlan>>,
}

enum Planned {
    /// Nothing to do: the same plan is staged there, whole.
    Done(Box<StageOutcome>),
    Stage(Plan),
}

/// Lists and splits the source, and decides against what `dest` holds: done already, refused
/// (another dataset, without `--force`), or to stage (an old manifest is retracted first).
async fn plan(source: &Path, dest: &Store, opts: &StageOptions) -> Result<Planned, StageError> {
    if opts.shard_records == 0 {
        return Err(StageError::BadOption(
            "--shard-records must be at least 1".into(),
        ));
    }
    if opts.format == Format::Idc && opts.class_names.is_some() {
        return Err(StageError::BadOption(
            "--class-names applies to archives (--format cifar10 or idx); IDC's classes are fixed"
                .into(),
        ));
    }
    let path = source.to_path_buf();
    let open_opts = opts.clone();
    let src = Arc::new(
        tokio::task::spawn_blocking(move || Input::open(&path, &open_opts))
            .await
            .expect("listing does not panic")?,
    );
    if opts.strict
        && let Some(r) = src.rejected().first()
    {
        return Err(StageError::Strict {
            count: src.rejected().len(),
            first: format!("{}: {}", r.path, r.reason),
        });
    }
    let record = match &*src {
        Input::Patches(_) => StageOptionsRecord {
            split: opts.split.clone(),
            undersized: opts.undersized,
            shard_records: opts.shard_records,
            class_names: None,
            microns_per_pixel: opts.microns_per_pixel,
        },
        // What shapes an archive's content: the validation size and seed; the official test
        // set is kept whole, and there is nothing undersized.
        Input::Archive(a) => StageOptionsRecord {
            split: SplitOptions {
                method: SplitMethod::Random,
                val: opts.split.val,
                test: SplitSize::Count(a.test.len() as u64),
                seed: opts.split.seed,
            },
            undersized: Undersized::Pad,
            shard_records: opts.shard_records,
            class_names: opts.class_names.clone(),
            microns_per_pixel: opts.microns_per_pixel,
        },
    };
    let plan_id = plan_id(src.fingerprint(), &record, shard::FORMAT_VERSION);

    if let Some(existing) = crate::dataset::manifest::read(dest).await? {
        // A dataset staged in shard format v1 from the same source with the same options is the
        // same content: it stays, readable as it is.
        let same = existing.id == plan_id
            || (existing.shard_format_version == 1
                && existing.id == self::plan_id(src.fingerprint(), &record, 1));
        if same {
            if let Some(missing) = first_missing_shard(dest, &existing).await? {
                tracing::warn!(
                    "{} is missing or damaged; staging again",
                    dest.url_of(&missing)
                );
            } else {
                return Ok(Planned::Done(Box::new(StageOutcome {
                    manifest: existing,
                    status: StageStatus::AlreadyStaged,
                })));
            }
        } else if !opts.force {
            return Err(StageError::Conflict {
                url: dest.url().to_string(),
                existing: existing.id,
                source_path: existing.source.path,
            });
        }
        // Retract the old manifest first: from here the destination reads as incomplete.
        dest.delete(keys::MANIFEST).await?;
    }

    let assignment = src.assign(&opts.split)?;
    let shards = Arc::new(plan_shards(&assignment, opts.shard_records));
    Ok(Planned::Stage(Plan {
        src,
        record,
        plan_id,
        shards,
    }))
}

/// The markers of shards an earlier, interrupted stage of the same plan committed (None for the
/// shards still to make); sets the progress bar to match.
async fn reuse(
    dest: &Store,
    plan: &Plan,
    hooks: &StageHooks,
) -> Result<Vec<Option<ShardMarker>>, StageError> {
    let mut markers: Vec<Option<ShardMarker>> = Vec::with_capacity(plan.shards.len());
    let committed: HashMap<String, u64> = dest
        .list(&keys::staging_prefix(&plan.plan_id))
        .await?
        .into_iter()
        .collect();
    for p in plan.shards.iter() {
        let key = keys::staging_marker(&plan.plan_id, p.split, p.index);
        let mut reuse = None;
        if committed.contains_key(&key)
            && let Some(bytes) = dest.get_opt(&key).await?
            && let Ok(m) = serde_json::from_slice::<ShardMarker>(&bytes)
            && dest.size(&m.info.key).await? == Some(m.info.bytes)
        {
            reuse = Some(m);
        }
        markers.push(reuse);
    }
    let resumed = markers.iter().filter(|m| m.is_some()).count();
    if let Some(pb) = &hooks.progress {
        let total: usize = plan.shards.iter().map(|p| p.entries.len()).sum();
        pb.set_length(total as u64);
        let done: usize = plan
            .shards
            .iter()
            .zip(&markers)
            .filter(|(_, m)| m.is_some())
            .map(|(p, _)| p.entries.len())
            .sum();
        pb.set_position(done as u64);
        pb.reset_eta();
    }
    if resumed > 0 {
        tracing::info!(
            "resuming: {resumed} of {} shards already staged",
            plan.shards.len()
        );
    }
    Ok(markers)
}

type Produced = Result<(usize, Vec<u8>, ShardMarker), StageError>;

/// Decodes and packs the `pending` shards, one after the other, each across a pool of
/// `opts.threads`, on a thread of its own; at most one finished shard waits in the channel.
fn produce(
    plan: &Plan,
    pending: Vec<usize>,
    opts: &StageOptions,
    hooks: &StageHooks,
) -> (
    tokio::sync::mpsc::Receiver<Produced>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Produced>(1);
    let (src, shards, opts, cancel) = (
        plan.src.clone(),
        plan.shards.clone(),
        opts.clone(),
        hooks.cancel.clone(),
    );
    let producer = std::thread::spawn(move || {
        let pool = match rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .build()
        {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.blocking_send(Err(StageError::BadOption(format!("--threads: {e}"))));
                return;
            }
        };
        for i in pending {
            if cancel.load(Ordering::SeqCst) {
                return;
            }
            let (bytes, marker) = pool.install(|| build_shard(&src, &shards[i], opts.undersized));
            let msg = match marker.skipped.first() {
                Some(r) if opts.strict => Err(StageError::Strict {
                    count: marker.skipped.len(),
                    first: format!("{}: {}", r.path, r.reason),
                }),
                _ => Ok((i, bytes, marker)),
            };
            let stop = msg.is_err();
            if tx.blocking_send(msg).is_err() || stop {
                return;
            }
        }
    });
    (rx, producer)
}

/// Hashes and writes each produced shard, then its commit marker (what a resumed stage
/// reuses); returns how many shards are committed in all (stops early when cancelled).
async fn commit(
    dest: &Store,
    plan: &Plan,
    markers: &mut [Option<ShardMarker>],
    mut rx: tokio::sync::mpsc::Receiver<Produced>,
    resumed: usize,
    hooks: &StageHooks,
) -> Result<usize, StageError> {
    let mut done = resumed;
    while let Some(msg) = rx.recv().await {
        let (i, buf, mut marker) = msg?;
        let records = plan.shards[i].entries.len() as u64;
        // Hashing here rather than in the producer lets the next shard's decoding start sooner.
        let kept = marker.info.records;
        let (bytes, sha) = tokio::task::spawn_blocking(move || shard::finish_buffer(buf, kept))
            .await
            .expect("hashing does not panic");
        marker.info.bytes = bytes.len() as u64;
        marker.info.sha256 = sha;
        dest.put(&marker.info.key, Bytes::from(bytes)).await?;
        let marker_key =
            keys::staging_marker(&plan.plan_id, plan.shards[i].split, plan.shards[i].index);
        dest.put(
            &marker_key,
            Bytes::from(serde_json::to_vec(&marker).expect("marker serializes")),
        )
        .await?;
        markers[i] = Some(marker);
        done += 1;
        if let Some(pb) = &hooks.progress {
            pb.inc(records);
        }
        if let Some(f) = &hooks.on_commit {
            f(done);
        }
        if hooks.cancel.load(Ordering::SeqCst) {
            break;
        }
    }
    Ok(done)
}

/// Writes the manifest (the dataset's commit), then removes the markers and any shard of a
/// replaced dataset.
async fn finalize(
    dest: &Store,
    plan: &Plan,
    markers: &[ShardMarker],
) -> Result<DatasetManifest, StageError> {
    let manifest = build_manifest(
        &plan.src,
        plan.record.clone(),
        plan.plan_id.clone(),
        markers,
    );
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    dest.put(keys::MANIFEST, Bytes::from(json)).await?;
    dest.delete_prefix(keys::STAGING).await?;
    let live: BTreeSet<&str> = manifest.shards.iter().map(|s| s.key.as_str()).collect();
    for (key, _) in dest.list(keys::SHARDS).await? {
        if !live.contains(key.as_str()) {
            dest.delete(&key).await?;
        }
    }
    Ok(manifest)
}

/// Identity of a stage: the source fingerprint, every option that shapes the content, and the
/// formats it is written in.
fn plan_id(fingerprint: &str, record: &StageOptionsRecord, shard_version: u16) -> String {
    let key = serde_json::json!({
        "fingerprint": fingerprint,
        "options": record,
        "manifest_version": MANIFEST_VERSION,
        "shard_version": shard_version,
    });
    shard::sha256_hex(key.to_string().as_bytes())[..16].to_string()
}

async fn first_missing_shard(
    dest: &Store,
    m: &DatasetManifest,
) -> Result<Option<String>, StageError> {
    for s in &m.shards {
        if dest.size(&s.key).await? != Some(s.bytes) {
            return Ok(Some(s.key.clone()));
        }
    }
    Ok(None)
}

/// Groups entries by split in listing order and cuts each split into shards.
fn plan_shards(assignment: &[Split], per_shard: usize) -> Vec<ShardPlan> {
    let mut plans = vec![];
    for split in Split::ALL {
        let members: Vec<usize> = (0..assignment.len())
            .filter(|&i| assignment[i] == split)
            .collect();
        for (index, chunk) in members.chunks(per_shard).enumerate() {
            plans.push(ShardPlan {
                split,
                index,
                entries: chunk.to_vec(),
            });
        }
    }
    plans
}

/// Decodes a shard's images in parallel straight into their record slots, then drops the slots
/// of files that could not be used. The caller completes the buffer with `shard::finish_buffer`.
fn build_shard(src: &Input, plan: &ShardPlan, undersized: Undersized) -> (Vec<u8>, ShardMarker) {
    let layout = src.layout();
    let (record_len, channels) = (layout.record_len(), layout.shape.channels as usize);
    let classes = layout.classes as usize;
    let n = plan.entries.len();
    let mut buf = vec![0u8; HEADER_LEN + n * record_len];
    buf[..HEADER_LEN].copy_from_slice(&shard::header(plan.split, layout, 0));
    type Stats = (RecordMeta, Vec<u64>, Vec<u64>);
    let results: Vec<Result<Stats, String>> = buf[HEADER_LEN..]
        .par_chunks_mut(record_len)
        .zip(plan.entries.par_iter())
        .map(|(slot, &e)| {
            let (meta, pixels) = src.record(e, undersized)?;
            shard::write_record(slot, meta, &pixels);
            let (mut sum, mut sq) = (vec![0u64; channels], vec![0u64; channels]);
            for px in pixels.chunks_exact(channels) {
                for c in 0..channels {
                    let v = px[c] as u64;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
            Ok((meta, sum, sq))
        })
        .collect();

    let mut m = ShardMarker {
        info: ShardInfo {
            key: keys::shard(plan.split, plan.index),
            split: plan.split,
            records: 0,
            bytes: 0,
            sha256: String::new(),
            class_counts: vec![0; classes],
        },
        padded: 0,
        skipped: vec![],
        patients: BTreeSet::new(),
        channel_sum: vec![0; channels],
        channel_sum_sq: vec![0; channels],
    };
    let mut kept = 0usize;
    for (slot, (res, &e)) in results.into_iter().zip(&plan.entries).enumerate() {
        match res {
            Ok((meta, sum, sq)) => {
                if slot != kept {
                    let from = HEADER_LEN + slot * record_len;
                    buf.copy_within(from..from + record_len, HEADER_LEN + kept * record_len);
                }
                kept += 1;
                m.padded += u64::from(meta.flags & FLAG_PADDED != 0);
                m.info.class_counts[meta.label as usize] += 1;
                if !src.kind().is_archive() {
                    m.patients.insert(meta.patient);
                }
                for c in 0..channels {
                    m.channel_sum[c] += sum[c];
                    m.channel_sum_sq[c] += sq[c];
                }
            }
            Err(reason) => m.skipped.push(Rejected {
                path: src.item_path(e),
                reason,
            }),
        }
    }
    buf.truncate(HEADER_LEN + kept * record_len);
    m.info.records = kept as u64;
    (buf, m)
}

fn build_manifest(
    src: &Input,
    options: StageOptionsRecord,
    id: String,
    markers: &[ShardMarker],
) -> DatasetManifest {
    let layout = src.layout();
    let (channels, classes) = (layout.shape.channels as usize, layout.classes as usize);
    let mut splits: BTreeMap<Split, SplitSummary> = Split::ALL
        .iter()
        .map(|s| {
            (
                *s,
                SplitSummary {
                    class_counts: vec![0; classes],
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut patients: BTreeMap<Split, BTreeSet<u32>> = BTreeMap::new();
    let (mut sum, mut sq, mut train_px) = (vec![0u64; channels], vec![0u64; channels], 0u64);
    let mut skipped = src.rejected().to_vec();
    let mut padded = 0;
    let pixels_per_image = (layout.shape.height * layout.shape.width) as u64;
    for m in markers {
        let s = splits.get_mut(&m.info.split).expect("all splits present");
        s.records += m.info.records;
        for (c, n) in m.info.class_counts.iter().enumerate() {
            s.class_counts[c] += n;
        }
        patients
            .entry(m.info.split)
            .or_default()
            .extend(&m.patients);
        if m.info.split == Split::Train {
            for c in 0..channels {
                sum[c] += m.channel_sum[c];
                sq[c] += m.channel_sum_sq[c];
            }
            train_px += m.info.records * pixels_per_image;
        }
        padded += m.padded;
        skipped.extend(m.skipped.iter().cloned());
    }
    for (split, p) in patients {
        splits.get_mut(&split).expect("all splits present").patients = p.len() as u64;
    }
    let n = train_px.max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|&s| s as f64 / n / 255.0).collect();
    let std: Vec<f64> = (0..channels)
        .map(|c| {
            let m = sum[c] as f64 / n;
            ((sq[c] as f64 / n - m * m).max(0.0)).sqrt() / 255.0
        })
        .collect();
    DatasetManifest {
        format_version: MANIFEST_VERSION,
        shard_format_version: shard::FORMAT_VERSION,
        id,
        created_at: crate::clock::now_rfc3339(),
        staged_by: format!("idcctl {}", env!("CARGO_PKG_VERSION")),
        source: src.source_info(),
        microns_per_pixel: options.microns_per_pixel.or(match src {
            Input::Patches(_) => Some(crate::IDC_MICRONS_PER_PIXEL),
            Input::Archive(_) => None,
        }),
        options,
        image: ImageInfo::of(layout.shape),
        classes: src.classes(),
        class_weights: class_weights(&splits[&Split::Train].class_counts),
        splits,
        mean,
        std,
        padded,
        skipped,
        shards: markers.iter().map(|m| m.info.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_against_the_format() {
        let cifar = |f: StageFlags| {
            StageOptions::from_flags(&StageFlags {
                format: Format::Cifar10,
                ..f
            })
        };
        let e = cifar(StageFlags {
            test: Some(SplitSize::Count(5)),
            ..Default::default()
        });
        assert_eq!(
            e.unwrap_err().to_string(),
            "--test does not apply to --format cifar10: its official test set is kept and validation is carved from the training images (--val)"
        );
        let o = cifar(StageFlags {
            class_names: Some("mnist".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(o.split.val, DEFAULT_ARCHIVE_VAL);
        assert_eq!(o.class_names.unwrap().len(), 10);
        let e = cifar(StageFlags {
            class_names: Some("a,".into()),
            ..Default::default()
        });
        assert!(
            e.unwrap_err()
                .to_string()
                .starts_with("--class-names 'a,' is neither")
        );
        let idc = StageFlags {
            class_names: Some("a,b".into()),
            ..Default::default()
        };
        let e = StageOptions::from_flags(&idc).unwrap_err();
        assert_eq!(
            crate::exit::ProcessExitCode::process_exit_code(&e),
            crate::exit::ExitCode::UserError
        );
        let o = StageOptions::from_flags(&StageFlags {
            skip_undersized: true,
            ..Default::default()
        });
        let o = o.unwrap();
        assert_eq!(
            (o.undersized, o.split.val),
            (Undersized::Skip, SplitOptions::default().val)
        );
    }

    #[test]
    fn a_v1_dataset_keeps_its_identity() {
        // What idcctl wrote as the id of a v1 dataset (shard format 1): synthetic patches staged
        // with `--split random --val 10 --test 10` by the build before K classes.
        let record = StageOptionsRecord {
            split: SplitOptions {
                method: SplitMethod::Random,
                val: SplitSize::Count(10),
                test: SplitSize::Count(10),
                seed: 42,
            },
            undersized: Undersized::Pad,
            shard_records: DEFAULT_SHARD_RECORDS,
            class_names: None,
            microns_per_pixel: None,
        };
        let fingerprint = "1ac2869a1db6211f2c3fac0ae500f154cb3401c6476d17a85c5cb364d3018a36";
        assert_eq!(plan_id(fingerprint, &record, 1), "402c319127f925f9");
        assert_ne!(
            plan_id(fingerprint, &record, shard::FORMAT_VERSION),
            "402c319127f925f9",
            "a new stage writes the current shard format, a new identity"
        );
    }
}
