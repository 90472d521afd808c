//! `idcctl predict` over whole-slide images: tells slides from patch inputs by their content,
//! resolves the run and the scale it trained at into a slide job, runs the job on the run's
//! backend (the worker here; one Indexed Job on a cluster, slides spread over its indexes),
//! then gathers each slide's outputs and summary into `--out` beside an HTML index. A slide
//! that failed is reported with its reason; the others are kept.

use super::{PredictError, PredictOptions, Progress, Trained, experiment_of, trained};
use crate::backend::kube::{self, ClusterDefaults};
use crate::backend::{RunBackend, Task, TaskProgress};
use crate::layout::run::{self as keys, prediction as job_keys};
use crate::run::RunStatus;
use crate::slide::job::{self, SlideInput, SlideJob};
use crate::slide::outputs::{self, SlideStatus, SlideSummary, files};
use crate::slide::tiff;
use crate::store::{Store, StoreError};
use bytes::Bytes;
use k8s_openapi::api::batch::v1::Job;
use sha2::Digest;
use std::path::Path;

/// Whether `source` (a path or URL given to `idcctl predict`) is a whole-slide image rather
/// than patches, by its content: a folder or a zip holds patches; any other file, and any
/// object in a bucket, is a slide (OpenSlide then tells which format, or that it is none).
pub fn is_slide(source: &str) -> bool {
    use std::io::Read;
    if source.starts_with("s3://") {
        return true;
    }
    let path = Path::new(source.strip_prefix("file://").unwrap_or(source));
    if path.is_dir() {
        return false;
    }
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    !matches!(tiff::sniff(&head[..n]), tiff::Kind::Zip)
}

/// How to predict slides, beyond [`PredictOptions`].
#[derive(Debug, Clone)]
pub struct SlideOptions {
    /// Paths or URLs of the slides.
    pub slides: Vec<String>,
    /// Model pixels between patch origins [default: the patch size, no overlap].
    pub stride: Option<u32>,
    /// Microns per pixel of every slide, when their files do not say or say it wrong.
    pub slide_mpp: Option<f64>,
    /// The fraction of a patch that must be tissue for it to be scored.
    pub min_tissue: f64,
    /// On a cluster: slides per index of the Indexed Job.
    pub slides_per_pod: u32,
    /// On a cluster: pods at once [default: every index].
    pub parallelism: Option<u32>,
}

impl SlideOptions {
    /// The slides `slides` with the defaults: no overlap, resolution from the files, half a
    /// patch of tissue, one slide per pod, every pod at once.
    pub fn new(slides: Vec<String>) -> Self {
        Self {
            slides,
            stride: None,
            slide_mpp: None,
            min_tissue: 0.5,
            slides_per_pod: 1,
            parallelism: None,
        }
    }
}

/// A slide prediction ready to run.
#[derive(Debug, Clone)]
pub struct PreparedSlides {
    pub job: SlideJob,
    /// SHA-256 of the job without its URLs: the prediction id is cut from it.
    pub content_sha256: String,
    pub run: Store,
    /// The job's folder (`runs/<id>/predictions/<prediction>`).
    pub folder: Store,
    pub status: RunStatus,
    /// Local slides a cluster's pods cannot read, with the keys they go to in the folder.
    pub uploads: Vec<(String, std::path::PathBuf)>,
    pub parallelism: u32,
}

/// Resolves run `run_id` of bucket `root` and the slides; `on_cluster`: the slides given as
/// local paths are uploaded to the job's folder for the pods. Writes nothing.
pub async fn prepare(
    root: &Store,
    run_id: &str,
    opts: &PredictOptions,
    s: &SlideOptions,
    on_cluster: bool,
) -> Result<PreparedSlides, PredictError> {
    let Trained {
        run,
        status,
        trained_on,
        spec,
        ..
    } = trained(root, run_id, opts).await?;
    if spec.classes.len() != 2 {
        return Err(PredictError::Invalid(format!(
            "slides are mapped by p({}) over their tissue: run {run_id} has {} classes, not 2",
            crate::IDC_CLASSES[1],
            spec.classes.len()
        )));
    }
    let target_mpp = trained_on.microns_per_pixel().ok_or_else(|| {
        PredictError::Invalid(format!(
            "run {run_id} trained on dataset {} whose scale is unknown: restage it with --microns-per-pixel to predict slides",
            trained_on.id
        ))
    })?;
    let patch = spec.shape.width;
    let stride = s.stride.unwrap_or(patch);
    if stride == 0 || stride > patch {
        return Err(PredictError::Invalid(format!(
            "--stride {stride} must be between 1 and the patch size, {patch}"
        )));
    }
    if let Some(mpp) = s.slide_mpp
        && !(mpp.is_finite() && mpp > 0.0)
    {
        return Err(PredictError::Invalid(format!(
            "--slide-mpp {mpp} is not a positive number of microns"
        )));
    }
    if !(0.0..=1.0).contains(&s.min_tissue) {
        return Err(PredictError::Invalid(format!(
            "--min-tissue {} is not a fraction between 0 and 1",
            s.min_tissue
        )));
    }
    if s.slides.is_empty() {
        return Err(PredictError::Invalid("no slides given".into()));
    }
    let (slides, stamps) = slide_inputs(&s.slides).await?;
    let n = slides.len() as u32;
    let indexes = if on_cluster {
        n.div_ceil(s.slides_per_pod.max(1))
    } else {
        1
    };
    let mut job = SlideJob {
        predict: spec,
        target_mpp,
        stride,
        slide_mpp: s.slide_mpp,
        min_tissue: s.min_tissue,
        slides,
        indexes,
    };
    let content_sha256 = content_id(&job, &stamps);
    job.predict.prediction_id = content_sha256[..12].to_string();
    let folder = run.child(&keys::prediction(&job.predict.prediction_id));
    let mut uploads = vec![];
    if on_cluster {
        for slide in &mut job.slides {
            if !slide.source.contains("://") {
                let key = format!("{}/{}", job_keys::SLIDE_INPUT, slide.name);
                uploads.push((key.clone(), slide.source.clone().into()));
                slide.source = folder.url_of(&key);
            }
        }
    }
    Ok(PreparedSlides {
        job,
        content_sha256,
        run,
        folder,
        status,
        uploads,
        parallelism: s.parallelism.unwrap_or(indexes).clamp(1, indexes.max(1)),
    })
}

/// The slides as the job names them, and what identifies each one's content (size and
/// modification time of a local file, size and ETag-less URL of an object).
async fn slide_inputs(given: &[String]) -> Result<(Vec<SlideInput>, Vec<String>), PredictError> {
    let names = outputs::unique_names(given);
    let mut slides = Vec::with_capacity(given.len());
    let mut stamps = Vec::with_capacity(given.len());
    for (g, name) in given.iter().zip(names) {
        let local = g
            .strip_prefix("file://")
            .or((!g.contains("://")).then_some(g.as_str()));
        let (source, bytes, stamp) = match local {
            Some(path) => {
                let meta = std::fs::metadata(path)
                    .map_err(|e| PredictError::Invalid(format!("slide {g}: {e}")))?;
                if !meta.is_file() {
                    return Err(PredictError::Invalid(format!("slide {g} is not a file")));
                }
                let abs = std::path::absolute(path)
                    .map_err(|e| PredictError::Invalid(format!("slide {g}: {e}")))?;
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (
                    abs.display().to_string(),
                    meta.len(),
                    format!("{}:{}:{modified}", abs.display(), meta.len()),
                )
            }
            None => {
                let (store, key) = Store::open_object(g)?;
                let size = store
                    .size(&key)
                    .await?
                    .ok_or_else(|| PredictError::Invalid(format!("slide {g} does not exist")))?;
                (g.clone(), size, format!("{g}:{size}"))
            }
        };
        slides.push(SlideInput {
            name,
            source,
            given: g.clone(),
            bytes,
        });
        stamps.push(stamp);
    }
    Ok((slides, stamps))
}

/// The hash of everything the outputs depend on: the job without the run's URL, and each
/// slide's identity. The same call again finds the slides it already did.
fn content_id(job: &SlideJob, stamps: &[String]) -> String {
    let mut blank = job.clone();
    blank.predict.run = String::new();
    for s in &mut blank.slides {
        s.source = String::new();
    }
    let mut h = sha2::Sha256::new();
    h.update(serde_json::to_vec(&blank).expect("serializes"));
    for s in stamps {
        h.update(s.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The slide job's Indexed Job, with the namespace's `defaults`.
pub fn job_of(
    p: &PreparedSlides,
    experiment: &crate::experiment::Experiment,
    defaults: &ClusterDefaults,
) -> Job {
    kube::job::build_slides(
        &kube::job::PredictJobInputs {
            experiment,
            run_id: &p.job.predict.run_id,
            prediction_id: &p.job.predict.prediction_id,
            job_url: p.folder.url(),
            spec_sha256: &p.content_sha256,
            defaults,
        },
        p.job.indexes,
        p.parallelism,
    )
}

/// The Indexed Job a cluster would run (`--dry-run`), checked against Kubernetes' validation
/// rules.
pub async fn render_job(
    p: &PreparedSlides,
    defaults: &ClusterDefaults,
) -> Result<Job, PredictError> {
    super::checked(job_of(p, &experiment_of(&p.run).await?, defaults))
}

/// What a slide prediction gave: each slide's summary, in the order given.
#[derive(Debug, Clone)]
pub struct SlidesOutcome {
    pub summaries: Vec<SlideSummary>,
    /// The worker's failure, when it ended before every slide had a summary.
    pub worker_error: Option<String>,
}

impl SlidesOutcome {
    pub fn failed(&self) -> usize {
        self.summaries
            .iter()
            .filter(|s| s.status == SlideStatus::Failed)
            .count()
    }
}

/// Uploads what the pods need, writes the spec and runs the job on `backend` unless every
/// slide already has a summary; then reads the summaries. Slides the worker did not reach
/// are failed with its error.
pub async fn run_with(
    backend: &impl RunBackend,
    p: &PreparedSlides,
    progress: &mut dyn Progress,
) -> Result<SlidesOutcome, PredictError> {
    let mut summaries = read_summaries(p).await?;
    let mut worker_error = None;
    if summaries
        .iter()
        .any(|s| s.as_ref().is_none_or(|s| s.status == SlideStatus::Failed))
    {
        for (key, path) in &p.uploads {
            let size = std::fs::metadata(path).map(|m| m.len()).ok();
            if p.folder.size(key).await? != size {
                progress.notice(&format!(
                    "uploading {} to {}",
                    path.display(),
                    p.folder.url_of(key)
                ));
                p.folder.upload_file(key, path).await?;
            }
        }
        let spec = serde_json::to_vec_pretty(&p.job).expect("serializes");
        p.folder.put(job_keys::SPEC, Bytes::from(spec)).await?;
        let experiment = experiment_of(&p.run).await?;
        let job = |defaults: &ClusterDefaults| job_of(p, &experiment, defaults);
        let task = Task {
            worker_args: vec![
                "predict-slides".into(),
                "--job".into(),
                p.folder.url().to_string(),
            ],
            job: &job,
            max_attempts: experiment.retries + 1,
            log: (&p.folder, job_keys::LOG),
        };
        let mut lines = SlideLines {
            progress,
            slides: p.job.slides.len(),
            done: Default::default(),
            failed: Default::default(),
        };
        let ran = backend.run_task(&task, &mut lines).await;
        summaries = read_summaries(p).await?;
        match ran.map_err(PredictError::from) {
            Ok(()) => {}
            // A worker that failed some slides ends with their exit code: their summaries say
            // why. One that failed before any summary failed the whole job.
            Err(PredictError::Worker { detail, .. }) if summaries.iter().any(Option::is_some) => {
                worker_error = Some(detail)
            }
            Err(e) => return Err(e),
        }
    }
    let summaries = p
        .job
        .slides
        .iter()
        .zip(summaries)
        .map(|(slide, s)| {
            s.unwrap_or_else(|| {
                SlideSummary::failed(
                    &slide.name,
                    &slide.given,
                    p.job.target_mpp,
                    p.job.predict.shape.width,
                    p.job.stride,
                    &format!(
                        "the worker ended before this slide: {}",
                        worker_error.as_deref().unwrap_or("no reason given")
                    ),
                )
            })
        })
        .collect();
    Ok(SlidesOutcome {
        summaries,
        worker_error,
    })
}

/// Each slide's summary in the job's folder, if written.
async fn read_summaries(p: &PreparedSlides) -> Result<Vec<Option<SlideSummary>>, PredictError> {
    let mut out = Vec::with_capacity(p.job.slides.len());
    for slide in &p.job.slides {
        let key = job_keys::slide_output(&slide.name, files::SUMMARY);
        out.push(match p.folder.get_opt(&key).await? {
            None => None,
            Some(bytes) => {
                Some(
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        url: p.folder.url_of(&key),
                        reason: e.to_string(),
                    })?,
                )
            }
        });
    }
    Ok(out)
}

/// The worker's lines: patch progress for the bar, a slide's end as a notice with the slides
/// done, failed and left (from every pod's log on a cluster).
struct SlideLines<'a> {
    progress: &'a mut dyn Progress,
    slides: usize,
    done: std::collections::BTreeSet<String>,
    failed: std::collections::BTreeSet<String>,
}

impl TaskProgress for SlideLines<'_> {
    fn line(&mut self, text: &str) -> bool {
        if let Some((_, done, total)) = job::parse_progress(text) {
            self.progress.images(done, total);
            return true;
        }
        if let Some((slide, outcome)) = job::parse_finished(text) {
            // A retried index reports its slides again: each is counted by its last outcome.
            let failed = outcome.starts_with("failed");
            let (into, from) = match failed {
                true => (&mut self.failed, &mut self.done),
                false => (&mut self.done, &mut self.failed),
            };
            from.remove(slide);
            into.insert(slide.to_string());
            let left = self
                .slides
                .saturating_sub(self.done.len() + self.failed.len());
            self.progress.notice(&format!(
                "{slide}: {outcome} [slides: {} done, {} failed, {left} left]",
                self.done.len(),
                self.failed.len()
            ));
            return true;
        }
        false
    }

    fn notice(&mut self, line: &str) {
        self.progress.notice(line);
    }
}

/// Copies every slide's outputs from the job's folder to `out` (`<out>/<slide>/...`), then
/// writes `index.html` (thumbnails and heat maps side by side) and `slides.csv` (one row per
/// slide); returns how many files were written.
pub async fn write_outputs(
    p: &PreparedSlides,
    outcome: &SlidesOutcome,
    out: &Store,
) -> Result<usize, PredictError> {
    let mut written = 0;
    for s in &outcome.summaries {
        for file in files::ALL {
            let key = job_keys::slide_output(&s.slide, file);
            let bytes = match file == files::SUMMARY {
                // The gathered summary (a slide the worker never reached has none in the job).
                true => Bytes::from(serde_json::to_vec_pretty(s).expect("serializes")),
                false => match p.folder.get_opt(&key).await? {
                    Some(b) => b,
                    None => continue,
                },
            };
            out.put(&format!("{}/{file}", s.slide), bytes).await?;
            written += 1;
        }
    }
    let title = format!(
        "Slides: run {}, prediction {}",
        p.job.predict.run_id, p.job.predict.prediction_id
    );
    out.put(
        "slides.csv",
        Bytes::from(crate::report::wsi::summaries_csv(&outcome.summaries)),
    )
    .await?;
    out.put(
        "index.html",
        Bytes::from(crate::report::wsi::index_page(&title, &outcome.summaries)),
    )
    .await?;
    Ok(written + 2)
}
