//! `idcctl tensorboard`: a run's TensorBoard event file, as the worker wrote it to the bucket,
//! or made from its `metrics.jsonl` and report for runs that predate the file.

use crate::layout::run as keys;
use crate::metrics::AnyReport;
use crate::run;
use crate::store::{Store, StoreError};

/// Where a run's events came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The worker's own file.
    Worker,
    /// Made now from the run's records.
    Records,
}

/// The event file of run `run_id` in the bucket `root`; `None` when the run has logged nothing.
pub async fn events(
    root: &Store,
    run_id: &str,
) -> Result<Option<(Vec<u8>, Origin)>, super::ReportError> {
    let run = run::run_store(root, run_id);
    let status = run::read_status(&run)
        .await?
        .ok_or_else(|| super::ReportError::NoRun {
            run: run_id.to_string(),
            storage: root.url().to_string(),
        })?;
    if let Some(b) = run.get_opt(keys::TENSORBOARD).await? {
        return Ok(Some((b.to_vec(), Origin::Worker)));
    }
    let records = run::read_metrics(&run).await?;
    if records.is_empty() {
        return Ok(None);
    }
    let report: Option<AnyReport> = match run.get_opt(keys::REPORT).await? {
        Some(b) => Some(serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
            url: run.url_of(keys::REPORT),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let started = status
        .started_at
        .as_deref()
        .and_then(crate::clock::seconds_of)
        .unwrap_or(0) as f64;
    Ok(Some((
        crate::tracking::tensorboard::events_of(&records, report.as_ref(), started),
        Origin::Records,
    )))
}
