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

impl std::str::FromStr for Phase {
    type Err = String;

    /// A phase as records write it (`running`, `succeeded`, ...): what `list --phase` takes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            format!(
                "'{s}' is no phase; one of pending, running, succeeded, failed, cancelled, lost"
            )
        })
    }
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
    /// What its metrics came to, written when its end is recorded, so that listing a finished
    /// run reads no metrics file (records written before it existed lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<MetricsSummary>,
}

impl RunStatus {
    /// The summary of the run's recorded end; none while it is active, or when the summary is
    /// of an earlier end (a resumed run) or missing.
    pub fn summary_of_end(&self) -> Option<&MetricsSummary> {
        self.summary
            .as_ref()
            .filter(|m| self.phase.is_terminal() && m.ended_at == self.finished_at)
    }
}

/// What a run's `metrics.jsonl` came to, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MetricsSummary {
    /// The `finished_at` of the end it summarises.
    pub ended_at: Option<String>,
    /// Epochs finished.
    pub epochs: u32,
    /// The best validation F1 (macro F1 for K classes), none before the first epoch.
    pub best_val_f1: Option<BestF1>,
}

/// A best validation F1 and the (1-based) epoch it came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestF1 {
    #[serde(with = "crate::json_float")]
    pub f1: f64,
    pub epoch: u32,
}

impl MetricsSummary {
    pub fn of(metrics: &[MetricsRecord]) -> Self {
        let mut out = MetricsSummary::default();
        for m in metrics {
            // Macro F1 for K classes.
            let MetricsRecord::Epoch { epoch, val, .. } = m else {
                continue;
            };
            out.epochs = out.epochs.max(*epoch);
            let f1 = MetricName::F1.of(val);
            // The first epoch of the highest value; NaN only when every epoch was NaN.
            let better = match out.best_val_f1 {
                None => true,
                Some(b) => f1 > b.f1 || (b.f1.is_nan() && !f1.is_nan()),
            };
            if better {
                out.best_val_f1 = Some(BestF1 { f1, epoch: *epoch });
            }
        }
        out
    }
}

/// Records in `s` (not yet written) the summary of the run's metrics at its end, which `s`
/// has just recorded (`finished_at` set).
pub async fn summarize_end(run: &Store, s: &mut RunStatus) -> Result<(), StoreError> {
    let mut summary = MetricsSummary::of(&read_metrics(run).await?);
    summary.ended_at = s.finished_at.clone();
    s.summary = Some(summary);
    Ok(())
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

/// Adds a new run to the bucket's run index (`layout::run_index_key`), created now: written
/// before its first record, so that `list` finds it newest first without listing every run.
pub async fn index_new_run(root: &Store, run_id: &str) -> Result<(), StoreError> {
    let created_ms = (crate::clock::unix_now() * 1000.0) as u64;
    root.put(&layout::run_index_key(created_ms, run_id), Bytes::new())
        .await
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
    parse_status(&run.url_of(layout::run::STATUS), &b).map(Some)
}

/// The run record stored at `url`: one that does not parse is [`StoreError::Corrupt`], naming it.
pub fn parse_status(url: &str, bytes: &[u8]) -> Result<RunStatus, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        url: url.to_string(),
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
    pub experiment: String,
    pub phase: Phase,
    pub model: String,
    pub backend: crate::experiment::Backend,
    /// The best validation F1 of its epochs (macro F1 for K classes).
    pub best_val_f1: Option<f64>,
    /// The epoch of that F1.
    pub best_epoch: Option<u32>,
    /// From start to end (or now, while it runs).
    pub duration_s: Option<i64>,
    pub created_at: String,
}

impl Summary {
    /// The row of the run `s` whose metrics came to `m`.
    pub fn of(s: &RunStatus, m: &MetricsSummary) -> Self {
        let duration_s = s.started_at.as_deref().and_then(|start| {
            let end = s
                .finished_at
                .clone()
                .unwrap_or_else(crate::clock::now_rfc3339);
            Some((crate::clock::seconds_of(&end)? - crate::clock::seconds_of(start)?).max(0))
        });
        Self {
            run_id: s.run_id.clone(),
            experiment: s.experiment.clone(),
            phase: s.phase,
            model: s.model.clone(),
            backend: s.backend,
            best_val_f1: m.best_val_f1.map(|b| b.f1),
            best_epoch: m.best_val_f1.map(|b| b.epoch),
            duration_s,
            created_at: s.created_at.clone(),
        }
    }
}

/// Why a command cannot read a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no run {run_id} in {bucket} (see idcctl list)")]
    NotFound { run_id: String, bucket: String },
    #[error("run {run_id} has no report yet ({phase}: {reason})", phase = crate::output::name_of(.phase))]
    NoReport {
        run_id: String,
        phase: Phase,
        reason: String,
    },
    #[error("creating {}", .0.display())]
    CreateDir(std::path::PathBuf, #[source] std::io::Error),
    #[error("writing {}", .0.display())]
    Write(std::path::PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl crate::exit::ProcessExitCode for RunError {
    /// A run or report that is not there is the caller's mistake; the rest may pass on retry.
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        use crate::exit::ExitCode;
        match self {
            RunError::NotFound { .. } | RunError::NoReport { .. } => ExitCode::UserError,
            RunError::Store(e) => e.process_exit_code(),
            RunError::CreateDir(..) | RunError::Write(..) => ExitCode::Failure,
        }
    }
}

/// The run `run_id` in the bucket `root`, and its record; [`RunError::NotFound`] when it has
/// none.
pub async fn open(root: &Store, run_id: &str) -> Result<(Store, RunStatus), RunError> {
    let run = run_store(root, run_id);
    match read_status(&run).await? {
        Some(status) => Ok((run, status)),
        None => Err(RunError::NotFound {
            run_id: run_id.to_string(),
            bucket: root.url().to_string(),
        }),
    }
}

/// The run's evaluation report (`report.json`).
pub async fn read_report(run: &Store) -> Result<crate::metrics::AnyReport, RunError> {
    parse_report(run, &run.get(layout::run::REPORT).await?)
}

/// The run's report.json as stored; [`RunError::NoReport`] before the run has one.
pub async fn report_bytes(run: &Store, s: &RunStatus) -> Result<Bytes, RunError> {
    run.get_opt(layout::run::REPORT)
        .await?
        .ok_or_else(|| no_report(s))
}

/// Parses the run's report.json (`bytes`); an error names the object.
pub fn parse_report(run: &Store, bytes: &[u8]) -> Result<crate::metrics::AnyReport, RunError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RunError::Store(StoreError::Corrupt {
            url: run.url_of(layout::run::REPORT),
            reason: e.to_string(),
        })
    })
}

/// Writes the run's report.json (`report`, as stored) and metrics.jsonl, when there, into the
/// folder `dir`, made when missing.
pub async fn save_report(
    run: &Store,
    report: &[u8],
    dir: &std::path::Path,
) -> Result<(), RunError> {
    std::fs::create_dir_all(dir).map_err(|e| RunError::CreateDir(dir.into(), e))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| RunError::Write(path, e))
    };
    write("report.json", report)?;
    if let Some(m) = run.get_opt(layout::run::METRICS).await? {
        write("metrics.jsonl", &m)?;
    }
    Ok(())
}

fn no_report(s: &RunStatus) -> RunError {
    RunError::NoReport {
        run_id: s.run_id.clone(),
        phase: s.phase,
        reason: s.reason.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_as_records_write_them() {
        assert_eq!("running".parse::<Phase>(), Ok(Phase::Running));
        assert_eq!("lost".parse::<Phase>(), Ok(Phase::Lost));
        let e = "done".parse::<Phase>().unwrap_err();
        assert!(e.contains("'done' is no phase"), "{e}");
    }

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

    fn epoch(epoch: u32, f1: f64) -> MetricsRecord {
        MetricsRecord::Epoch {
            epoch,
            train_loss: 0.5,
            lr: 0.01,
            val: Metrics::Binary(crate::metrics::BinaryMetrics {
                f1,
                ..Default::default()
            }),
            duration_s: 1.0,
            images_per_s: 100.0,
            best: false,
        }
    }

    #[test]
    fn the_summary_keeps_the_first_epoch_of_the_best_f1() {
        let step = MetricsRecord::Step {
            epoch: 1,
            step: 5,
            loss: 0.4,
            lr: 0.1,
            images_per_s: 10.0,
        };
        let m = MetricsSummary::of(&[
            step,
            epoch(1, f64::NAN),
            epoch(2, 0.7),
            epoch(3, 0.8),
            epoch(4, 0.8),
            epoch(5, 0.6),
        ]);
        assert_eq!(m.epochs, 5);
        assert_eq!(m.best_val_f1, Some(BestF1 { f1: 0.8, epoch: 3 }));
        assert_eq!(MetricsSummary::of(&[]).best_val_f1, None);
        let nan = MetricsSummary::of(&[epoch(1, f64::NAN)])
            .best_val_f1
            .unwrap();
        assert!(nan.f1.is_nan() && nan.epoch == 1);
        // NaN goes through the record and back.
        let back: BestF1 = serde_json::from_str(&serde_json::to_string(&nan).unwrap()).unwrap();
        assert!(back.f1.is_nan());
    }

    #[test]
    fn a_summary_counts_only_for_the_end_it_was_written_at() {
        let mut s: RunStatus = serde_json::from_str(
            r#"{"run_id": "r", "experiment": "e", "model": "logreg", "backend": "local",
                "phase": "succeeded", "attempts": 1, "max_attempts": 1,
                "created_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:01Z",
                "finished_at": "2026-01-01T00:01:00Z", "exit_codes": [0], "reason": null,
                "deadline_s": null}"#,
        )
        .expect("a record written before summaries reads");
        assert_eq!(s.summary_of_end(), None);
        s.summary = Some(MetricsSummary {
            ended_at: s.finished_at.clone(),
            ..Default::default()
        });
        assert!(s.summary_of_end().is_some());
        // Resumed, then cancelled: the summary is of the earlier end.
        s.phase = Phase::Cancelled;
        s.finished_at = Some("2026-01-02T00:00:00Z".into());
        assert_eq!(s.summary_of_end(), None);
        s.phase = Phase::Running;
        s.finished_at = s.summary.as_ref().unwrap().ended_at.clone();
        assert_eq!(
            s.summary_of_end(),
            None,
            "an active run's summary is not used"
        );
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{bytes, config, corrupted};
        use proptest::prelude::*;

        const URL: &str = "file:///b/runs/r/status.json";

        /// A full record: every optional part present, so that corruptions reach them all.
        const FULL: &str = r#"{"run_id": "r", "experiment": "e", "model": "logreg",
            "backend": "kubernetes", "phase": "succeeded", "attempts": 2, "max_attempts": 3,
            "created_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:01Z",
            "finished_at": "2026-01-01T00:01:00Z", "exit_codes": [3, 0], "reason": "done",
            "supervisor": {"pid": 7, "start_ticks": 9, "host": "h", "boot_id": "b"},
            "worker": null, "heartbeat_at": "2026-01-01T00:00:30Z", "deadline_s": 3600,
            "cluster": {"context": "c", "namespace": "n", "earlier_attempts": 1,
                        "earlier_exit_codes": [-9]},
            "summary": {"ended_at": "2026-01-01T00:01:00Z", "epochs": 3,
                        "best_val_f1": {"f1": null, "epoch": 2}}}"#;

        fn read_or_name(bytes: &[u8]) {
            match parse_status(URL, bytes) {
                Ok(s) => drop(s.summary_of_end()),
                Err(e) => assert!(e.to_string().contains(URL), "{e}"),
            }
        }

        #[test]
        fn the_full_record_reads() {
            parse_status(URL, FULL.as_bytes()).unwrap();
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn any_bytes(b in bytes(256)) {
                read_or_name(&b);
            }

            #[test]
            fn corrupted_records(b in corrupted(FULL.as_bytes().to_vec())) {
                read_or_name(&b);
            }
        }
    }
}
