//! Runs: their ids, their record in the bucket (`runs/<id>/status.json`), shared by every
//! backend and by the commands that read runs, and what `status` and `list` show of them.

use crate::layout;
use crate::metrics::{MetricName, Metrics, MetricsRecord};
use crate::process::ProcessRef;
use crate::store::{Store, StoreError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Its supervisor died without recording an end (killed, the machine restarted): nothing
    /// runs it any more. `resume` continues it from its last checkpoint.
    Lost,
}

impl Phase {
    /// Nothing will change the run by itself any more.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Phase::Pending | Phase::Running)
    }
}

/// The run record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub run_id: String,
    pub experiment: String,
    pub model: String,
    pub backend: crate::experiment::Backend,
    pub phase: Phase,
    /// Attempts started so far.
    pub attempts: u32,
    /// Most attempts allowed (1 + retries).
    pub max_attempts: u32,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Exit code of each finished attempt (negative: killed by that signal).
    pub exit_codes: Vec<i32>,
    /// Why the run is where it is, in a line.
    pub reason: Option<String>,
    /// Local backend: the supervising process and the worker of the current attempt.
    #[serde(default)]
    pub supervisor: Option<ProcessRef>,
    #[serde(default)]
    pub worker: Option<ProcessRef>,
    /// Local backend: when the supervisor last wrote the record while the run was active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_at: Option<String>,
    /// Deadline in seconds from the start, if any.
    pub deadline_s: Option<u64>,
    /// Kubernetes backend: where the run's Job lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRef>,
}

/// The cluster and namespace of a run's Job (its name is the run id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRef {
    /// The kubeconfig context it was submitted with (none: in-cluster or the current one).
    pub context: Option<String>,
    pub namespace: String,
    /// Attempts made by the run's earlier Jobs (before a resume), whose pods are gone.
    #[serde(default)]
    pub earlier_attempts: u32,
    /// Exit codes of those attempts.
    #[serde(default)]
    pub earlier_exit_codes: Vec<i32>,
}

/// A new run id: `<name>-<yyyymmdd>-<hhmmss>-<4 hex>`, a valid Kubernetes name.
pub fn new_run_id(name: &str) -> String {
    let f = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let now = time::OffsetDateTime::now_utc();
    let nanos = now.unix_timestamp_nanos() as u64 ^ (std::process::id() as u64) << 32;
    let mut x = nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    format!(
        "{name}-{}-{:04x}",
        now.format(&f).expect("fixed format"),
        x & 0xffff
    )
}

/// The run folder `runs/<id>` under a bucket root.
pub fn run_store(root: &Store, run_id: &str) -> Store {
    root.child(&layout::run_prefix(run_id))
}

pub async fn read_status(run: &Store) -> Result<Option<RunStatus>, StoreError> {
    let Some(b) = run.get_opt(layout::run::STATUS).await? else {
        return Ok(None);
    };
    // A record that does not parse is an error, never "no run": a caller must not resubmit
    // over it or skip it.
    serde_json::from_slice(&b)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            url: run.url_of(layout::run::STATUS),
            reason: e.to_string(),
        })
}

pub async fn write_status(run: &Store, s: &RunStatus) -> Result<(), StoreError> {
    run.put(
        layout::run::STATUS,
        Bytes::from(serde_json::to_vec_pretty(s).expect("serializes")),
    )
    .await
}

/// The records of the run's `metrics.jsonl` so far (none before its first write).
pub async fn read_metrics(run: &Store) -> Result<Vec<MetricsRecord>, StoreError> {
    Ok(match run.get_opt(layout::run::METRICS).await? {
        Some(b) => crate::metrics::parse_jsonl(&b),
        None => vec![],
    })
}

/// Where a run's training stands (`idcctl status`).
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub status: RunStatus,
    /// Epochs the run trains for.
    pub epochs: u32,
    pub last_epoch: Option<EpochSeen>,
    /// The latest training throughput logged.
    pub images_per_s: Option<f64>,
}

/// The latest epoch that finished.
#[derive(Debug, Clone, Serialize)]
pub struct EpochSeen {
    pub epoch: u32,
    pub val: Metrics,
    #[serde(skip)]
    pub duration_s: f64,
}

impl Progress {
    pub fn of(status: RunStatus, epochs: u32, metrics: &[MetricsRecord]) -> Self {
        let last_epoch = metrics.iter().rev().find_map(|m| match m {
            MetricsRecord::Epoch {
                epoch,
                val,
                duration_s,
                ..
            } => Some(EpochSeen {
                epoch: *epoch,
                val: val.clone(),
                duration_s: *duration_s,
            }),
            _ => None,
        });
        let images_per_s = metrics.iter().rev().find_map(|m| match m {
            MetricsRecord::Step { images_per_s, .. } => Some(*images_per_s),
            _ => None,
        });
        Self {
            status,
            epochs,
            last_epoch,
            images_per_s,
        }
    }

    /// Seconds to the end of an active run at its last epoch's pace, and the epochs left.
    pub fn eta(&self) -> Option<(f64, u32)> {
        let e = self.last_epoch.as_ref()?;
        (!self.status.phase.is_terminal() && e.epoch < self.epochs).then(|| {
            let left = self.epochs - e.epoch;
            (left as f64 * e.duration_s, left)
        })
    }
}

/// One run as `idcctl list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub run_id: String,
    pub phase: Phase,
    pub model: String,
    pub backend: crate::experiment::Backend,
    /// The best validation F1 of its epochs (macro F1 for K classes).
    pub best_val_f1: Option<f64>,
    /// From start to end (or now, while it runs).
    pub duration_s: Option<i64>,
    pub created_at: String,
}

impl Summary {
    pub fn of(s: &RunStatus, metrics: &[MetricsRecord]) -> Self {
        let best_val_f1 = metrics
            .iter()
            .filter_map(|m| match m {
                // Macro F1 for K classes.
                MetricsRecord::Epoch { val, .. } => Some(MetricName::F1.of(val)),
                _ => None,
            })
            .fold(None, |a: Option<f64>, f| Some(a.map_or(f, |a| a.max(f))));
        let duration_s = s.started_at.as_deref().and_then(|start| {
            let end = s
                .finished_at
                .clone()
                .unwrap_or_else(crate::clock::now_rfc3339);
            Some((crate::clock::seconds_of(&end)? - crate::clock::seconds_of(start)?).max(0))
        });
        Self {
            run_id: s.run_id.clone(),
            phase: s.phase,
            model: s.model.clone(),
            backend: s.backend,
            best_val_f1,
            duration_s,
            created_at: s.created_at.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_kubernetes_names() {
        let id = new_run_id("cnn-weighted");
        assert!(id.len() <= 63 && id.starts_with("cnn-weighted-"), "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{id}"
        );
        let longest = new_run_id(&"a".repeat(crate::experiment::MAX_NAME_LEN));
        assert!(longest.len() <= 63, "{longest}");
    }
}
