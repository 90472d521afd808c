//! What `idcctl sweep status` shows beyond the sweep's record: each trial the record has as
//! running, as its run stands now (its phase brought up to date by the backend, as `idcctl
//! list` does, its epochs so far and latest objective value from `metrics.jsonl`), and curves
//! as sparklines. The sweep's own state is never written here: the driver owns it.

use super::driver::read_curve;
use super::manifest::Sweep;
use super::state::{SweepState, Trial, TrialState};
use crate::backend::Target;
use crate::layout::run as keys;
use crate::listing::{self, Clusters};
use crate::run;
use crate::spec::RunSpec;
use crate::store::{Store, StoreError};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

/// A running trial's run, now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunningTrial {
    /// `t004`.
    pub trial: String,
    pub run_id: String,
    /// The run's phase (`pending`, `running`, `lost`, …); `not submitted` when the driver
    /// recorded the trial but its run does not exist yet.
    pub phase: String,
    /// Epochs finished so far.
    pub epoch: u32,
    /// Epochs it trains for, when known.
    pub epochs: Option<u32>,
    /// The objective after its latest epoch (none before the first, or when it was NaN).
    pub latest: Option<f64>,
    /// Why the run is where it is, as its record says.
    pub reason: Option<String>,
}

/// The runs of the trials `st` has as running, in trial order. Run records are brought up to
/// date as `idcctl list` does (a local run whose supervisor is gone becomes lost); a cluster
/// that cannot be reached leaves the recorded phases of its runs, with one line to `warn`.
/// Trials are read [`listing::READS`] at a time, each one's record, spec and metrics side by
/// side.
pub async fn running_trials(
    root: &Store,
    sweep: &Sweep,
    st: &SweepState,
    target: &Target,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<RunningTrial>, StoreError> {
    let clusters = Clusters::new(target.clone());
    let running = st.trials.iter().filter(|t| t.state == TrialState::Running);
    let shown: Vec<(RunningTrial, Option<String>)> = futures::stream::iter(running)
        .map(|t| running_trial(root, sweep, t, &clusters))
        .buffered(listing::READS)
        .try_collect()
        .await?;
    let mut out = vec![];
    for (t, warning) in shown {
        warning.into_iter().for_each(&mut *warn);
        out.push(t);
    }
    Ok(out)
}

/// One running trial's run as it is now, and a warning when its phase is the recorded one.
async fn running_trial(
    root: &Store,
    sweep: &Sweep,
    t: &Trial,
    clusters: &Clusters,
) -> Result<(RunningTrial, Option<String>), StoreError> {
    let run = run::run_store(root, &t.run_id);
    let values: Vec<(String, serde_json::Value)> = sweep
        .space
        .params
        .iter()
        .filter_map(|p| Some((p.path.clone(), t.params.get(&p.path)?.clone())))
        .collect();
    let planned = sweep.experiment_with(&values).ok().map(|e| e.train.epochs);
    let mut shown = RunningTrial {
        trial: t.id.clone(),
        run_id: t.run_id.clone(),
        phase: "not submitted".into(),
        epoch: 0,
        epochs: planned,
        latest: None,
        reason: None,
    };
    let (status, spec, curve) = tokio::join!(
        run::read_status(&run),
        run.get_opt(keys::SPEC),
        read_curve(&run, sweep.objective.metric)
    );
    let Some(s) = status? else {
        return Ok((shown, None));
    };
    let (s, warning) = match clusters.refresh(&run, s).await {
        Ok(s) => (s, None),
        Err(stale) => (
            stale.status,
            stale.warning.map(|w| format!("warning: {}: {w}", t.id)),
        ),
    };
    shown.phase = crate::output::name_of(&s.phase);
    shown.reason = s.reason.clone();
    // What the run was given to train, else what the manifest makes of the trial.
    if let Some(epochs) = spec?.and_then(|b| serde_yaml::from_slice::<RunSpec>(&b).ok()) {
        shown.epochs = Some(epochs.train.epochs);
    }
    let curve = curve?;
    shown.epoch = curve.len() as u32;
    shown.latest = curve.last().copied().filter(|v| v.is_finite());
    Ok((shown, warning))
}

/// A curve as a line of block characters, lowest value `▁`, highest `█`; a blank where a value
/// is NaN, all middling when the values are all the same.
pub fn sparkline(values: &[f64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                ' '
            } else if hi - lo <= 0.0 {
                BLOCKS[3]
            } else {
                BLOCKS[(((v - lo) / (hi - lo)) * 7.0).round() as usize]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::Backend;
    use crate::metrics::{BinaryMetrics, Metrics, MetricsRecord};
    use crate::process::ProcessRef;

    const SWEEP: &str = "apiVersion: idc/v1\nkind: Sweep\nname: live\nbase:\n  dataset: {url: 'file:///nowhere/ds'}\n  train:\n    model: {kind: logreg}\n    epochs: 3\n  storage: 'file:///nowhere'\nsearch:\n  train.optimizer.lr: {kind: log_uniform, low: 1.0e-4, high: 1.0e-1}\nobjective: {metric: roc_auc}\nmax_trials: 4\n";

    fn trial(number: u32, state: TrialState) -> Trial {
        Trial {
            id: Trial::id_of(number),
            number,
            run_id: format!("live-t{number:03}"),
            params: [("train.optimizer.lr".to_string(), serde_json::json!(0.01))].into(),
            state,
            value: None,
            best_epoch: None,
            intermediate: vec![],
            reason: None,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
            interrupted: false,
        }
    }

    fn status(run_id: &str, supervisor: Option<ProcessRef>) -> run::RunStatus {
        run::RunStatus {
            run_id: run_id.into(),
            experiment: "live".into(),
            model: "logreg".into(),
            backend: Backend::Local,
            phase: run::Phase::Running,
            attempts: 1,
            max_attempts: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            finished_at: None,
            exit_codes: vec![],
            reason: None,
            supervisor,
            worker: None,
            heartbeat_at: None,
            deadline_s: None,
            cluster: None,
            summary: None,
        }
    }

    fn epoch_line(epoch: u32, roc_auc: f64) -> String {
        let r = MetricsRecord::Epoch {
            epoch,
            train_loss: 0.5,
            lr: 0.01,
            val: Metrics::Binary(BinaryMetrics {
                roc_auc,
                ..Default::default()
            }),
            duration_s: 1.0,
            images_per_s: 100.0,
            best: false,
        };
        serde_json::to_string(&r).unwrap() + "\n"
    }

    #[tokio::test]
    async fn running_trials_show_their_runs_as_they_are_now() {
        let dir = tempfile::tempdir().unwrap();
        let root = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        let sweep = super::super::manifest::parse(SWEEP, "live.yaml").unwrap();
        let mut st = SweepState::new("live");
        st.trials = vec![
            trial(1, TrialState::Completed),
            trial(2, TrialState::Running),
            trial(3, TrialState::Running),
            trial(4, TrialState::Running),
        ];
        // t002 trains under a live supervisor (this test), two epochs in.
        let r2 = run::run_store(&root, "live-t002");
        run::write_status(&r2, &status("live-t002", Some(ProcessRef::current())))
            .await
            .unwrap();
        let metrics = epoch_line(1, 0.7) + &epoch_line(2, 0.75);
        r2.put(keys::METRICS, bytes::Bytes::from(metrics))
            .await
            .unwrap();
        // t003's supervisor never started: nothing runs it, it is lost.
        let r3 = run::run_store(&root, "live-t003");
        run::write_status(&r3, &status("live-t003", None))
            .await
            .unwrap();
        // t004 is recorded but was never submitted.
        let state_before = serde_json::to_string(&st).unwrap();
        let mut warnings = vec![];
        let live = running_trials(&root, &sweep, &st, &Target::default(), &mut |w| {
            warnings.push(w)
        })
        .await
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(live.len(), 3);
        assert_eq!(
            (live[0].trial.as_str(), live[0].phase.as_str()),
            ("t002", "running")
        );
        assert_eq!((live[0].epoch, live[0].epochs), (2, Some(3)));
        assert_eq!(live[0].latest, Some(0.75));
        assert_eq!((live[1].phase.as_str(), live[1].epoch), ("lost", 0));
        assert!(live[1].reason.as_deref().unwrap().contains("never started"));
        assert_eq!(live[1].latest, None);
        assert_eq!(live[2].phase, "not submitted");
        assert_eq!(live[2].epochs, Some(3));
        // The run record was brought up to date (as list does); the sweep's was not touched.
        assert_eq!(
            run::read_status(&r3).await.unwrap().unwrap().phase,
            run::Phase::Lost
        );
        assert_eq!(serde_json::to_string(&st).unwrap(), state_before);
        assert!(
            super::super::state::read_state(&super::super::state::sweep_store(&root, "live"))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn sparklines_span_the_blocks() {
        assert_eq!(sparkline(&[0.1, 0.5, 0.9]), "▁▅█");
        assert_eq!(sparkline(&[0.2, f64::NAN, 0.4]), "▁ █");
        assert_eq!(sparkline(&[0.3, 0.3]), "▄▄");
        assert_eq!(sparkline(&[]), "");
    }
}
