//! `idcctl stage`: turns a downloaded IDC dataset into split, checksummed shards in object storage.
//!
//! The stage is resumable and idempotent. Each shard is uploaded, then a small commit marker is
//! written beside it; the dataset manifest is written last, so a half-staged dataset is never
//! seen as complete. A rerun reuses every committed shard, and a rerun of a complete stage with
//! the same source and options does nothing.

use crate::dataset::decode::{Undersized, decode_png};
use crate::dataset::manifest::{
    DatasetManifest, ImageInfo, MANIFEST_VERSION, ShardInfo, SourceInfo, SplitSummary,
    StageOptionsRecord, class_weights,
};
use crate::dataset::source::{Rejected, Source, SourceError};
use crate::dataset::split::{self, Split, SplitError, SplitOptions};
use crate::layout::dataset as keys;
use crate::shard::{self, FLAG_PADDED, HEADER_LEN, RECORD_LEN, RecordMeta};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Records per shard unless told otherwise (about 30 MB a shard).
pub const DEFAULT_SHARD_RECORDS: usize = 4096;

/// How to stage.
#[derive(Debug, Clone)]
pub struct StageOptions {
    pub split: SplitOptions,
    pub undersized: Undersized,
    /// Any skipped file fails the stage.
    pub strict: bool,
    pub shard_records: usize,
    /// Decoding threads; 0 means one per core.
    pub threads: usize,
    /// Replace a different dataset already staged at the destination.
    pub force: bool,
}

impl Default for StageOptions {
    fn default() -> Self {
        Self {
            split: SplitOptions::default(),
            undersized: Undersized::Pad,
            strict: false,
            shard_records: DEFAULT_SHARD_RECORDS,
            threads: 0,
            force: false,
        }
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
}

impl StageError {
    /// Whether the input (source, options, destination) is at fault rather than the system.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        use crate::exit::ExitCode;
        match self {
            StageError::Source(SourceError::Io { .. }) => ExitCode::Failure,
            StageError::Source(_)
            | StageError::Split(_)
            | StageError::Conflict { .. }
            | StageError::Strict { .. }
            | StageError::BadOption(_) => ExitCode::UserError,
            StageError::Store(e) => e.exit_code(),
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
    channel_sum: [u64; 3],
    channel_sum_sq: [u64; 3],
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

/// What a stage will write.
struct Plan {
    src: Arc<Source>,
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
    let path = source.to_path_buf();
    let src = Arc::new(
        tokio::task::spawn_blocking(move || Source::open(&path))
            .await
            .expect("listing does not panic")?,
    );
    if opts.strict
        && let Some(r) = src.rejected.first()
    {
        return Err(StageError::Strict {
            count: src.rejected.len(),
            first: format!("{}: {}", r.path, r.reason),
        });
    }
    let record = StageOptionsRecord {
        split: opts.split.clone(),
        undersized: opts.undersized,
        shard_records: opts.shard_records,
    };
    let plan_id = plan_id(&src.fingerprint, &record);

    if let Some(existing) = crate::dataset::manifest::read(dest).await? {
        if existing.id == plan_id {
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

    let items: Vec<(u32, u8)> = src
        .entries
        .iter()
        .map(|e| (e.name.patient, e.name.class))
        .collect();
    let assignment = split::assign(&items, &opts.split)?;
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

/// Identity of a stage: the source fingerprint and every option that shapes the content.
fn plan_id(fingerprint: &str, record: &StageOptionsRecord) -> String {
    let key = serde_json::json!({
        "fingerprint": fingerprint,
        "options": record,
        "manifest_version": MANIFEST_VERSION,
        "shard_version": shard::FORMAT_VERSION,
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

/// Decodes a shard's patches in parallel straight into their record slots, then drops the slots
/// of files that could not be used. The caller completes the buffer with `shard::finish_buffer`.
fn build_shard(src: &Source, plan: &ShardPlan, undersized: Undersized) -> (Vec<u8>, ShardMarker) {
    let n = plan.entries.len();
    let mut buf = vec![0u8; HEADER_LEN + n * RECORD_LEN];
    buf[..HEADER_LEN].copy_from_slice(&shard::header(plan.split, 0));
    type Stats = ([u64; 3], [u64; 3]);
    let results: Vec<Result<(bool, Stats), String>> = buf[HEADER_LEN..]
        .par_chunks_mut(RECORD_LEN)
        .zip(plan.entries.par_iter())
        .map(|(slot, &e)| {
            let entry = &src.entries[e];
            let bytes = src.read(entry)?;
            let patch = decode_png(&bytes, undersized).map_err(|e| e.to_string())?;
            let meta = RecordMeta {
                label: entry.name.class,
                flags: if patch.padded { FLAG_PADDED } else { 0 },
                patient: entry.name.patient,
                x: entry.name.x,
                y: entry.name.y,
            };
            shard::write_record(slot, meta, &patch.pixels);
            let (mut sum, mut sq) = ([0u64; 3], [0u64; 3]);
            for px in patch.pixels.chunks_exact(3) {
                for c in 0..3 {
                    let v = px[c] as u64;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
            Ok((patch.padded, (sum, sq)))
        })
        .collect();

    let mut m = ShardMarker {
        info: ShardInfo {
            key: keys::shard(plan.split, plan.index),
            split: plan.split,
            records: 0,
            bytes: 0,
            sha256: String::new(),
            class_counts: [0, 0],
        },
        padded: 0,
        skipped: vec![],
        patients: BTreeSet::new(),
        channel_sum: [0; 3],
        channel_sum_sq: [0; 3],
    };
    let mut kept = 0usize;
    for (slot, (res, &e)) in results.into_iter().zip(&plan.entries).enumerate() {
        let entry = &src.entries[e];
        match res {
            Ok((padded, (sum, sq))) => {
                if slot != kept {
                    let from = HEADER_LEN + slot * RECORD_LEN;
                    buf.copy_within(from..from + RECORD_LEN, HEADER_LEN + kept * RECORD_LEN);
                }
                kept += 1;
                m.padded += u64::from(padded);
                m.info.class_counts[entry.name.class as usize] += 1;
                m.patients.insert(entry.name.patient);
                for c in 0..3 {
                    m.channel_sum[c] += sum[c];
                    m.channel_sum_sq[c] += sq[c];
                }
            }
            Err(reason) => m.skipped.push(Rejected {
                path: entry.rel.clone(),
                reason,
            }),
        }
    }
    buf.truncate(HEADER_LEN + kept * RECORD_LEN);
    m.info.records = kept as u64;
    (buf, m)
}

fn build_manifest(
    src: &Source,
    options: StageOptionsRecord,
    id: String,
    markers: &[ShardMarker],
) -> DatasetManifest {
    let mut splits: BTreeMap<Split, SplitSummary> = Split::ALL
        .iter()
        .map(|s| (*s, SplitSummary::default()))
        .collect();
    let mut patients: BTreeMap<Split, BTreeSet<u32>> = BTreeMap::new();
    let (mut sum, mut sq, mut train_px) = ([0u64; 3], [0u64; 3], 0u64);
    let mut skipped = src.rejected.clone();
    let mut padded = 0;
    for m in markers {
        let s = splits.get_mut(&m.info.split).expect("all splits present");
        s.records += m.info.records;
        s.class_counts[0] += m.info.class_counts[0];
        s.class_counts[1] += m.info.class_counts[1];
        patients
            .entry(m.info.split)
            .or_default()
            .extend(&m.patients);
        if m.info.split == Split::Train {
            for c in 0..3 {
                sum[c] += m.channel_sum[c];
                sq[c] += m.channel_sum_sq[c];
            }
            train_px += m.info.records * (crate::PATCH_SIZE * crate::PATCH_SIZE) as u64;
        }
        padded += m.padded;
        skipped.extend(m.skipped.iter().cloned());
    }
    for (split, p) in patients {
        splits.get_mut(&split).expect("all splits present").patients = p.len() as u64;
    }
    let n = train_px.max(1) as f64;
    let mean = sum.map(|s| s as f64 / n / 255.0);
    let mut std = [0.0; 3];
    for c in 0..3 {
        let m = sum[c] as f64 / n;
        std[c] = ((sq[c] as f64 / n - m * m).max(0.0)).sqrt() / 255.0;
    }
    DatasetManifest {
        format_version: MANIFEST_VERSION,
        shard_format_version: shard::FORMAT_VERSION,
        id,
        created_at: crate::clock::now_rfc3339(),
        staged_by: format!("idcctl {}", env!("CARGO_PKG_VERSION")),
        source: SourceInfo {
            path: src.path.display().to_string(),
            kind: src.kind,
            fingerprint: src.fingerprint.clone(),
            files_seen: src.files_seen,
            duplicates: src.duplicates,
            ignored: src.ignored,
        },
        options,
        image: ImageInfo::default(),
        class_weights: class_weights(splits[&Split::Train].class_counts),
        splits,
        mean,
        std,
        padded,
        skipped,
        shards: markers.iter().map(|m| m.info.clone()).collect(),
    }
}
