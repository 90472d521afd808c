//! Mirrors a training run to MLflow as it goes, off the training path: after each checkpoint
//! (when `metrics.jsonl` is written) a sync starts in the background unless one is still going;
//! the last one, with the test metrics and `report.json`, is waited for at most a few seconds.
//! A server that is down or slow costs a warning in the log, never the run: the next sync, or
//! `idcctl track sync`, catches up from the bucket.

use crate::runlog::RunLog;
use idc::spec::RunSpec;
use idc::store::Store;
use idc::tracking::Scalar;
use idc::tracking::mlflow::{self, Client, End, Update};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one request may take before the sync gives up (and the next catches up).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the end of the run waits for its last sync.
const FINAL_WAIT: Duration = Duration::from_secs(30);

pub struct Tracker {
    client: Arc<Client>,
    spec: RunSpec,
    started_ms: i64,
    tags: Vec<(String, String)>,
    busy: Arc<AtomicBool>,
    /// The last background sync's failure, logged at the next push.
    failed: Arc<Mutex<Option<String>>>,
}

impl Tracker {
    /// A tracker when the run's experiment names an MLflow server (or `MLFLOW_TRACKING_URI`
    /// does); `None` otherwise.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        out: &Store,
        spec: &RunSpec,
        tags: Vec<(String, String)>,
        started_unix: f64,
        log: &RunLog,
    ) -> Option<Self> {
        let yaml = rt
            .block_on(out.get_opt(idc::layout::run::EXPERIMENT))
            .ok()
            .flatten()
            .unwrap_or_default();
        let target = idc::tracking::mlflow_target_of(&yaml)?;
        log.line(&format!(
            "tracking in MLflow {} (experiment {})",
            target.uri, target.experiment
        ));
        Some(Self {
            client: Arc::new(Client::new(target, REQUEST_TIMEOUT)),
            spec: spec.clone(),
            started_ms: (started_unix * 1000.0) as i64,
            tags,
            busy: Arc::new(AtomicBool::new(false)),
            failed: Arc::new(Mutex::new(None)),
        })
    }

    fn update(&self, scalars: &[Scalar]) -> Update {
        Update {
            run_id: self.spec.run_id.clone(),
            spec: Some(self.spec.clone()),
            scalars: scalars.to_vec(),
            started_ms: self.started_ms,
            tags: self.tags.clone(),
            ..Default::default()
        }
    }

    fn report_failure(&self, log: &RunLog) {
        if let Some(e) = self.failed.lock().expect("lock").take() {
            log.line(&format!(
                "warning: MLflow not updated ({e}); training goes on, the next sync catches up"
            ));
        }
    }

    /// Starts a sync of `scalars` in the background, unless one is still going.
    pub fn push(&self, rt: &tokio::runtime::Runtime, scalars: &[Scalar], log: &RunLog) {
        self.report_failure(log);
        if self.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let (client, busy, failed) = (self.client.clone(), self.busy.clone(), self.failed.clone());
        let u = self.update(scalars);
        rt.spawn(async move {
            if let Err(e) = mlflow::sync(&client, &u).await {
                *failed.lock().expect("lock") = Some(e.to_string());
            }
            busy.store(false, Ordering::SeqCst);
        });
    }

    /// The run's last sync: every scalar, `report.json`, status finished; waited for at most
    /// [`FINAL_WAIT`].
    pub fn finish(
        &self,
        rt: &tokio::runtime::Runtime,
        scalars: &[Scalar],
        report_json: Vec<u8>,
        log: &RunLog,
    ) {
        self.report_failure(log);
        let mut u = self.update(scalars);
        u.artifacts = vec![("report.json".into(), report_json)];
        u.end = Some((End::Finished, mlflow::now_ms()));
        let result = rt.block_on(async {
            // A background sync still going would race this one on the same points.
            for _ in 0..100 {
                if !self.busy.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::timeout(FINAL_WAIT, mlflow::sync(&self.client, &u)).await
        });
        match result {
            Ok(Ok(s)) => log.line(&format!(
                "MLflow run {} up to date ({} metric points sent)",
                s.mlflow_run_id, s.metrics_sent
            )),
            Ok(Err(e)) => log.line(&format!(
                "warning: MLflow not updated ({e}); idcctl track sync {} catches up",
                self.spec.run_id
            )),
            Err(_) => log.line(&format!(
                "warning: MLflow did not answer within {}s; idcctl track sync {} catches up",
                FINAL_WAIT.as_secs(),
                self.spec.run_id
            )),
        }
    }
}
