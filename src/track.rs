//! `idcctl track sync`: brings a run's MLflow mirror up to date from the bucket, all of it: the
//! spec as params, tags, every scalar, the status its record says, and as artifacts
//! `report.json`, `metrics.jsonl` and the HTML report with its plots. The local supervisor
//! runs it when a run ends; anyone can run it again (it sends only what MLflow lacks).

use crate::layout::run as keys;
use crate::metrics::AnyReport;
use crate::run::{self, Phase};
use crate::spec::RunSpec;
use crate::store::{Store, StoreError};
use crate::tracking::mlflow::{self, Client, End, Synced, Target, TrackingError, Update};
use std::time::Duration;

/// Why a run could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("no run {run} in {storage} (see idcctl list)")]
    NoRun { run: String, storage: String },
    #[error(
        "run {0} is tracked nowhere: its manifest has no tracking.mlflow and MLFLOW_TRACKING_URI is not set (or give --uri)"
    )]
    NoTarget(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mlflow(#[from] TrackingError),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
}

impl crate::exit::ProcessExitCode for TrackError {
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        match self {
            TrackError::NoRun { .. } | TrackError::NoTarget(_) => crate::exit::ExitCode::UserError,
            TrackError::Store(e) => e.process_exit_code(),
            TrackError::Mlflow(e) => e.process_exit_code(),
            TrackError::Report(e) => e.process_exit_code(),
        }
    }
}

/// Overrides of the run's own tracking target.
#[derive(Debug, Clone, Default)]
pub struct TargetOverride {
    pub uri: Option<String>,
    pub experiment: Option<String>,
}

/// The MLflow target of the run folder `run`: its experiment's, with `o` applied.
pub async fn target_of(run: &Store, o: &TargetOverride) -> Result<Option<Target>, TrackError> {
    let yaml = run.get_opt(keys::EXPERIMENT).await?.unwrap_or_default();
    let mut target = crate::tracking::mlflow_target_of(&yaml);
    if let Some(uri) = &o.uri {
        let name = target.as_ref().map_or_else(
            || {
                serde_yaml::from_slice::<serde_yaml::Value>(&yaml)
                    .ok()
                    .and_then(|v| v.get("name")?.as_str().map(str::to_string))
                    .unwrap_or_else(|| "idc".into())
            },
            |t| t.experiment.clone(),
        );
        let sweep = target.as_ref().and_then(|t| t.sweep.clone());
        target = Some(Target {
            uri: uri.trim_end_matches('/').to_string(),
            experiment: name,
            token: std::env::var(crate::spec::TOKEN_ENV).ok(),
            sweep,
        });
    }
    if let (Some(t), Some(e)) = (target.as_mut(), &o.experiment) {
        t.experiment = e.clone();
    }
    Ok(target)
}

/// Syncs run `run_id` of the bucket `root` to its MLflow target (or `o`'s).
pub async fn sync(root: &Store, run_id: &str, o: &TargetOverride) -> Result<Synced, TrackError> {
    let run = run::run_store(root, run_id);
    let status = run::read_status(&run)
        .await?
        .ok_or_else(|| TrackError::NoRun {
            run: run_id.to_string(),
            storage: root.url().to_string(),
        })?;
    sync_as(root, &status, o).await
}

/// [`sync`] with the run's record as `status` says (the local supervisor syncs the end before
/// it records it, so that whoever waits for the end finds MLflow up to date).
pub async fn sync_as(
    root: &Store,
    status: &crate::run::RunStatus,
    o: &TargetOverride,
) -> Result<Synced, TrackError> {
    let run_id = status.run_id.as_str();
    let run = run::run_store(root, run_id);
    let target = target_of(&run, o)
        .await?
        .ok_or_else(|| TrackError::NoTarget(run_id.to_string()))?;
    let spec: Option<RunSpec> = match run.get_opt(keys::SPEC).await? {
        Some(b) => Some(serde_yaml::from_slice(&b).map_err(|e| StoreError::Corrupt {
            url: run.url_of(keys::SPEC),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let records = run::read_metrics(&run).await?;
    let report_bytes = run.get_opt(keys::REPORT).await?;
    let report: Option<AnyReport> = match &report_bytes {
        Some(b) => Some(serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
            url: run.url_of(keys::REPORT),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let mut artifacts = vec![];
    if let Some(b) = &report_bytes {
        artifacts.push(("report.json".to_string(), b.to_vec()));
    }
    if let Some(b) = run.get_opt(keys::METRICS).await? {
        artifacts.push(("metrics.jsonl".to_string(), b.to_vec()));
    }
    if report.is_some() {
        artifacts.extend(html_artifacts(root, run_id).await?);
    }
    let ms = |t: &Option<String>| {
        t.as_deref()
            .and_then(crate::clock::seconds_of)
            .map(|s| s * 1000)
    };
    let started_ms = ms(&status.started_at)
        .or(ms(&Some(status.created_at.clone())))
        .unwrap_or(0);
    let end = match status.phase {
        Phase::Succeeded => Some(End::Finished),
        Phase::Failed | Phase::Lost => Some(End::Failed),
        Phase::Cancelled => Some(End::Killed),
        Phase::Pending | Phase::Running => None,
    }
    .map(|e| (e, ms(&status.finished_at).unwrap_or(started_ms)));
    let mut tags = vec![
        ("idc.model".to_string(), status.model.clone()),
        (
            "idc.backend".to_string(),
            crate::output::name_of(&status.backend),
        ),
        ("idc.attempt".to_string(), status.attempts.to_string()),
        ("idc.experiment".to_string(), status.experiment.clone()),
    ];
    if let Some(r) = &report {
        tags.push(("idc.dataset_id".to_string(), r.dataset_id.clone()));
    }
    if let Some(s) = &spec {
        tags.push(("idc.dataset".to_string(), s.dataset.clone()));
    }
    let u = Update {
        run_id: run_id.to_string(),
        scalars: crate::tracking::scalars_of(&records, report.as_ref()),
        spec,
        started_ms,
        tags,
        artifacts,
        end,
        parent: None,
    };
    let client = Client::new(target, Duration::from_secs(30));
    Ok(mlflow::sync(&client, &u).await?)
}

/// The run's HTML report (page, plots, patches, slide maps) rendered to a temporary folder, as artifacts
/// under `html/`.
async fn html_artifacts(root: &Store, run_id: &str) -> Result<Vec<(String, Vec<u8>)>, TrackError> {
    let data = crate::report::load_run(root, run_id).await?;
    let ds = crate::report::load_dataset(&data).await;
    let dir = tempfile::tempdir().map_err(|e| crate::report::ReportError::Write {
        path: std::env::temp_dir(),
        source: e,
    })?;
    let slides = crate::report::load_slides(root, &data, &ds, None).await;
    crate::report::html::write_run_report(dir.path(), &data, &ds, slides.as_ref())?;
    let mut out = vec![];
    for entry in walkdir::WalkDir::new(dir.path()).sort_by_file_name() {
        let entry = entry.map_err(|e| crate::report::ReportError::Write {
            path: dir.path().to_path_buf(),
            source: e.into(),
        })?;
        if entry.file_type().is_file() {
            let rel = entry
                .path()
                .strip_prefix(dir.path())
                .expect("inside")
                .to_string_lossy()
                .replace('\\', "/");
            let bytes =
                std::fs::read(entry.path()).map_err(|e| crate::report::ReportError::Write {
                    path: entry.path().to_path_buf(),
                    source: e,
                })?;
            out.push((format!("html/{rel}"), bytes));
        }
    }
    Ok(out)
}

/// The local supervisor's end hook: brings the run's MLflow mirror (if its manifest has one) up
/// to date now that it ended, the HTML report included. Best effort: `idcctl track sync`
/// catches up whatever this misses.
pub struct MirrorEnd;

impl crate::backend::local::EndHook for MirrorEnd {
    async fn run_ended(&self, run: &Store, s: &run::RunStatus) {
        let run_id = s.run_id.as_str();
        let tracked = target_of(run, &Default::default())
            .await
            .ok()
            .flatten()
            .is_some();
        // The run's folder is `<bucket>/runs/<id>` (the layout's), so the bucket is its prefix.
        let suffix = format!("/{}", crate::layout::run_prefix(run_id));
        let Some(root) = run.url().strip_suffix(&suffix) else {
            return;
        };
        if let (true, Ok(root)) = (tracked, Store::open(root))
            && let Err(e) = sync_as(&root, s, &Default::default()).await
        {
            tracing::warn!("MLflow not updated for run {run_id}: {e}");
        }
    }
}
