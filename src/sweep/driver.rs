//! The sweep loop (`idcctl sweep run`): keeps `parallelism` trials running until `max_trials`
//! have been started and all have ended. Each poll reads every running trial's record
//! (brought up to date by the backend) and `metrics.jsonl`, the trials side by side, hands each new epoch's value to the
//! pruner (cancelling the trial through the backend when it says so), and starts new trials
//! where the sampler puts them. The state is written to the bucket after every change, a trial
//! before its run is submitted, so a driver killed at any point leaves nothing unrecorded: a
//! rerun keeps the finished trials, re-attaches to the running ones (their runs never stopped)
//! and submits, idempotently, any whose run had not been created yet.

use super::manifest::Sweep;
use super::state::{self, Driver, ReadError, SweepState, Trial, TrialState};
use super::{fmt_num, fmt_value, short_names};
use crate::backend::{self, BackendError, SubmitOptions, Target};
use crate::clock::now_rfc3339;
use crate::layout;
use crate::listing::{self, Clusters};
use crate::metrics::{MetricName, MetricsRecord};
use crate::run::{self, Phase, RunStatus};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Failed trials with nothing completed after which no new trial is started.
pub const FAIL_FAST: usize = 3;
/// Submissions of one trial that may fail (storage, cluster) before it counts as failed.
const SUBMIT_TRIES: u32 = 3;
/// How often the driver lease is renewed.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Why a sweep could not go on.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Something the user can fix (exit code 2).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the first {failed} trials failed and none completed (last: {last}); the base experiment is probably at fault: see idcctl logs {run}"
    )]
    Failing {
        failed: usize,
        last: String,
        run: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    State(#[from] ReadError),
}

impl crate::exit::ProcessExitCode for SweepError {
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        match self {
            SweepError::Invalid(_) => crate::exit::ExitCode::UserError,
            SweepError::Backend(e) => e.process_exit_code(),
            SweepError::Store(e) => e.process_exit_code(),
            _ => crate::exit::ExitCode::Failure,
        }
    }
}

/// How to drive.
#[derive(Debug, Clone)]
pub struct DriveOptions {
    /// Bucket override (else the base experiment's, else the cluster's default).
    pub storage: Option<String>,
    pub target: Target,
    /// Time between two looks at the running trials.
    pub poll: Duration,
    /// On stop, cancel the running trials (their runs checkpoint); the next `sweep run`
    /// resumes them. Otherwise they keep running.
    pub cancel_on_exit: bool,
    /// How long to wait for another driver's lease to lapse before refusing. Zero from a
    /// terminal; an in-cluster driver restarted after a crash waits out its predecessor's.
    pub lease_wait: Duration,
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every trial ended and no more are to start.
    Finished,
    /// Stopped by the caller; `running` trials were left running (or cancelled with
    /// `cancel_on_exit`, to be resumed by the next run).
    Stopped { running: usize, cancelled: bool },
}

/// Where the sweep's trials and record live: `--storage`, the base experiment's storage, or
/// on Kubernetes (when the base keeps the laptop default) the cluster's.
pub async fn storage_of(sweep: &Sweep, opts: &DriveOptions) -> Result<String, SweepError> {
    let exp = &sweep.base_experiment;
    let overridden = opts.storage.as_deref();
    let cluster = if backend::storage_needs_cluster(exp, overridden) {
        let cluster = opts.target.connect().await.map_err(BackendError::from)?;
        cluster
            .defaults()
            .await
            .map_err(BackendError::from)?
            .storage
    } else {
        None
    };
    Ok(backend::storage_for(exp, overridden, cluster.as_deref()))
}

/// The objective metric after each epoch of a run, from its `metrics.jsonl` (epochs 1, 2, …
/// without gaps; NaN where the worker wrote none).
pub async fn read_curve(run: &Store, metric: MetricName) -> Result<Vec<f64>, StoreError> {
    let mut by_epoch: BTreeMap<u32, f64> = BTreeMap::new();
    for record in run::read_metrics(run).await? {
        // A diverged epoch's NaN metrics read back as NaN (`json_float`).
        if let MetricsRecord::Epoch { epoch, val, .. } = record {
            by_epoch.insert(epoch, metric.of(&val));
        }
    }
    Ok(by_epoch
        .into_iter()
        .enumerate()
        .take_while(|(i, (e, _))| *e as usize == i + 1)
        .map(|(_, (_, v))| v)
        .collect())
}

/// What one look at a running trial's run found.
enum Seen {
    /// The run, its record brought up to date, and its objective after each epoch (read after
    /// the record: a run recorded as ended has its whole curve).
    Run {
        run: Store,
        status: Box<RunStatus>,
        curve: Vec<f64>,
    },
    /// Its run does not exist (yet).
    Nothing,
    /// It could not be read or brought up to date; why, unless already said this round (one
    /// cluster that cannot be reached is named once).
    Unknown(Option<String>),
}

/// Looks at the run `run_id`: its record, brought up to date, then its curve.
async fn look(root: &Store, run_id: &str, metric: MetricName, clusters: &Clusters) -> Seen {
    let run = run::run_store(root, run_id);
    let status = match run::read_status(&run).await {
        Ok(Some(s)) => s,
        Ok(None) => return Seen::Nothing,
        Err(e) => return Seen::Unknown(Some(format!("cannot read its run record: {e}"))),
    };
    let status = match clusters.refresh(&run, status).await {
        Ok(s) => s,
        Err(stale) => {
            return Seen::Unknown(
                stale
                    .warning
                    .map(|w| format!("cannot bring its run up to date: {w}")),
            );
        }
    };
    match read_curve(&run, metric).await {
        Ok(curve) => Seen::Run {
            run,
            status: Box::new(status),
            curve,
        },
        Err(e) => Seen::Unknown(Some(format!("cannot read its metrics: {e}"))),
    }
}

/// The best value of a curve and its (1-based) epoch.
pub fn best_of(sweep: &Sweep, curve: &[f64]) -> Option<(u32, f64)> {
    curve.iter().enumerate().filter(|(_, v)| !v.is_nan()).fold(
        None,
        |best: Option<(u32, f64)>, (i, &v)| match best {
            Some((_, b)) if !sweep.objective.better(v, b) => best,
            _ => Some((i as u32 + 1, v)),
        },
    )
}

/// A sweep being driven.
struct Loop<'a> {
    sweep: &'a Sweep,
    opts: &'a DriveOptions,
    root: Store,
    dir: Store,
    storage: String,
    st: SweepState,
    names: Vec<String>,
    submit_failures: HashMap<u32, u32>,
    /// Epochs of each trial, by number.
    epochs: HashMap<u32, u32>,
    notice: &'a mut (dyn FnMut(String) + Send),
}

/// Runs the sweep until every trial has ended or `stop` is set. `text` is the manifest as
/// written (stored as `sweeps/<name>/sweep.yaml`); `notice` gets one line per event.
pub async fn drive(
    sweep: &Sweep,
    text: &str,
    opts: &DriveOptions,
    stop: &AtomicBool,
    notice: &mut (dyn FnMut(String) + Send),
) -> Result<(SweepState, Ending), SweepError> {
    let storage = storage_of(sweep, opts).await?;
    let root = Store::open(&storage)?;
    let dir = state::sweep_store(&root, &sweep.name);
    let me = Driver::me();
    let give_up = Instant::now() + opts.lease_wait;
    while let Some(d) = state::read_driver(&dir).await?
        && d.alive()
        && d.process != me.process
    {
        if Instant::now() >= give_up {
            return Err(SweepError::Invalid(held_by(&sweep.name, &d)));
        }
        notice(format!(
            "{}; waiting for its lease to lapse",
            held_by(&sweep.name, &d)
        ));
        tokio::time::sleep(HEARTBEAT).await;
    }
    adopt_manifest(sweep, text, &dir, notice).await?;
    state::write_driver(&dir, &me).await?;
    let st = match state::read_state(&dir).await? {
        Some(s) => s,
        None => SweepState::new(&sweep.name),
    };
    let mut l = Loop {
        sweep,
        opts,
        root,
        dir,
        storage,
        st,
        names: short_names(&sweep.space),
        submit_failures: HashMap::new(),
        epochs: HashMap::new(),
        notice,
    };
    let result = l.run(stop).await;
    // Whatever happened, this driver is done with the sweep.
    let _ = l.dir.delete(layout::sweep::DRIVER).await;
    let ending = result?;
    Ok((l.st, ending))
}

/// Why a sweep cannot be driven from here: another driver holds its lease.
pub fn held_by(sweep: &str, d: &Driver) -> String {
    format!(
        "sweep {sweep} is being driven by another idcctl ({}, heartbeat {}s ago); stop it first (Ctrl-C it, or `idcctl sweep cancel {sweep}` for one in the cluster), or wait for it",
        d.place(),
        state::now_s() - d.heartbeat
    )
}

/// Stores the manifest on first use; later, accepts it only if it runs the same trials.
pub async fn adopt_manifest(
    sweep: &Sweep,
    text: &str,
    dir: &Store,
    notice: &mut (dyn FnMut(String) + Send),
) -> Result<(), SweepError> {
    let key = layout::sweep::MANIFEST;
    if let Some(b) = dir.get_opt(key).await? {
        let stored_text = String::from_utf8_lossy(&b).into_owned();
        if stored_text == text {
            return Ok(());
        }
        let stored = super::manifest::parse(&stored_text, &dir.url_of(key)).map_err(|e| {
            SweepError::Invalid(format!(
                "the stored manifest of sweep {} does not parse: {e}",
                sweep.name
            ))
        })?;
        if !stored.same_search(sweep) {
            return Err(SweepError::Invalid(format!(
                "sweep {} was started with a different base, search, objective, sampler or pruner ({}); only max_trials, parallelism and description may change: give this sweep another name",
                sweep.name,
                dir.url_of(key)
            )));
        }
        if stored.max_trials != sweep.max_trials || stored.parallelism != sweep.parallelism {
            notice(format!(
                "sweep {}: max_trials {} -> {}, parallelism {} -> {}",
                sweep.name,
                stored.max_trials,
                sweep.max_trials,
                stored.parallelism,
                sweep.parallelism
            ));
        }
    }
    dir.put(key, Bytes::from(text.to_string())).await?;
    Ok(())
}

impl Loop<'_> {
    fn say(&mut self, line: String) {
        (self.notice)(line);
    }

    fn submit_options(&self, run_id: &str) -> SubmitOptions {
        SubmitOptions {
            run_id: Some(run_id.to_string()),
            storage: Some(self.storage.clone()),
            target: self.opts.target.clone(),
        }
    }

    async fn save(&mut self) -> Result<(), SweepError> {
        state::write_state(&self.dir, &mut self.st).await?;
        Ok(())
    }

    fn params_line(&self, t: &Trial) -> String {
        self.sweep
            .space
            .params
            .iter()
            .zip(&self.names)
            .map(|(p, n)| {
                let v = t.params.get(&p.path).map(fmt_value).unwrap_or_default();
                format!("{n}={v}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The trial's params in manifest order.
    fn values_of(&self, t: &Trial) -> Vec<(String, serde_json::Value)> {
        self.sweep
            .space
            .params
            .iter()
            .filter_map(|p| Some((p.path.clone(), t.params.get(&p.path)?.clone())))
            .collect()
    }

    /// The epochs trial `i` trains for (its experiment's `train.epochs`).
    fn epochs_of(&mut self, i: usize) -> Option<u32> {
        let number = self.st.trials[i].number;
        if let Some(&e) = self.epochs.get(&number) {
            return Some(e);
        }
        let values = self.values_of(&self.st.trials[i]);
        let epochs = self.sweep.experiment_with(&values).ok()?.train.epochs;
        self.epochs.insert(number, epochs);
        Some(epochs)
    }

    fn can_start(&self) -> bool {
        let n = self.st.trials.len();
        n < self.sweep.max_trials as usize
            && self
                .sweep
                .sampler
                .capacity(&self.sweep.space)
                .is_none_or(|c| n < c)
    }

    /// Set when the first trials all failed: why no more are started.
    fn failing(&self) -> Option<SweepError> {
        let t = &self.st.trials;
        let failed: Vec<&Trial> = t.iter().filter(|t| t.state == TrialState::Failed).collect();
        let good = t
            .iter()
            .any(|t| matches!(t.state, TrialState::Completed | TrialState::Pruned));
        if good || failed.len() < FAIL_FAST {
            return None;
        }
        let last = failed.last().expect("some failed");
        Some(SweepError::Failing {
            failed: failed.len(),
            last: last.reason.clone().unwrap_or_default(),
            run: last.run_id.clone(),
        })
    }

    async fn run(&mut self, stop: &AtomicBool) -> Result<Ending, SweepError> {
        let s = self.sweep;
        let running = self.st.running();
        let done = self.st.trials.len() - running;
        self.say(format!(
            "sweep {}: {} trials ({} at a time), {} sampler, {} pruner, {} {}; state in {}",
            s.name,
            s.max_trials,
            s.parallelism,
            s.sampler.name(),
            s.pruner.name(),
            crate::output::name_of(&s.objective.direction()),
            s.objective.metric_name(),
            self.dir.url()
        ));
        if done + running > 0 {
            self.say(format!(
                "resuming: {done} trials ended, re-attaching to {running} running"
            ));
        }
        let attach: Vec<String> = self
            .st
            .trials
            .iter()
            .filter(|t| t.state == TrialState::Running)
            .map(|t| format!("{}: re-attached to run {}", t.id, t.run_id))
            .collect();
        for line in attach {
            self.say(line);
        }
        if self.can_start() || running > 0 {
            self.st.finished_at = None;
        }
        self.save().await?;
        let mut heartbeat = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                return self.stop().await;
            }
            let mut changed = false;
            let running: Vec<usize> = (0..self.st.trials.len())
                .filter(|&i| self.st.trials[i].state == TrialState::Running)
                .collect();
            for (i, seen) in self.look_at(&running).await {
                changed |= self.poll(i, seen).await?;
            }
            let failing = self.failing();
            while failing.is_none()
                && self.st.running() < s.parallelism as usize
                && self.can_start()
                && !stop.load(Ordering::SeqCst)
            {
                self.start().await?;
                changed = true;
            }
            if self.st.running() == 0 && (failing.is_some() || !self.can_start()) {
                if self.st.finished_at.is_none() {
                    self.st.finished_at = Some(now_rfc3339());
                }
                self.save().await?;
                self.mirror_end(failing.is_none()).await;
                if let Some(e) = failing {
                    return Err(e);
                }
                return Ok(Ending::Finished);
            }
            if changed {
                self.save().await?;
            }
            if heartbeat.elapsed() >= HEARTBEAT {
                state::write_driver(&self.dir, &Driver::me()).await?;
                heartbeat = Instant::now();
            }
            let until = Instant::now() + self.opts.poll;
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Ends the sweep's MLflow run (the parent of its trials'), when it is tracked: the best
    /// objective after each trial, and its status. Best effort: a warning when it fails.
    async fn mirror_end(&mut self, finished: bool) {
        use crate::tracking::mlflow::{self, Client, End, Target};
        let spec = self
            .sweep
            .base_experiment
            .tracking
            .as_ref()
            .and_then(|t| t.mlflow.as_ref());
        let Some(target) = Target::resolve(spec, &self.sweep.name) else {
            return;
        };
        let maximize = self.sweep.objective.direction() == super::manifest::Direction::Maximize;
        let mut trials: Vec<&Trial> = self.st.trials.iter().collect();
        trials.sort_by_key(|t| t.number);
        let mut best: Option<f64> = None;
        let mut points = vec![];
        for t in trials {
            if let Some(v) = t.value.filter(|v| v.is_finite()) {
                best = Some(best.map_or(v, |b| if maximize { b.max(v) } else { b.min(v) }));
            }
            if let Some(b) = best {
                points.push((t.number as i64, b));
            }
        }
        let end = if finished { End::Finished } else { End::Failed };
        let client = Client::new(target, Duration::from_secs(30));
        if let Err(e) = mlflow::finish_sweep(&client, &self.sweep.name, &points, end).await {
            self.say(format!(
                "warning: the sweep's MLflow run was not updated: {e}"
            ));
        }
    }

    /// Leaves the running trials running, or cancels them to be resumed later.
    async fn stop(&mut self) -> Result<Ending, SweepError> {
        let running: Vec<usize> = (0..self.st.trials.len())
            .filter(|&i| self.st.trials[i].state == TrialState::Running)
            .collect();
        if self.opts.cancel_on_exit {
            for &i in &running {
                let run = run::run_store(&self.root, &self.st.trials[i].run_id);
                if let Some(status) = run::read_status(&run).await?
                    && !status.phase.is_terminal()
                {
                    backend::cancel(&run, status, &self.opts.target).await?;
                }
                self.st.trials[i].interrupted = true;
            }
        }
        self.save().await?;
        Ok(Ending::Stopped {
            running: running.len(),
            cancelled: self.opts.cancel_on_exit,
        })
    }

    /// Samples, records and submits the next trial.
    async fn start(&mut self) -> Result<(), SweepError> {
        let number = self.st.trials.len() as u32 + 1;
        let history = self.st.observations(self.sweep);
        let Some(point) = self
            .sweep
            .sampler
            .suggest(&self.sweep.space, &history, number)
        else {
            // Only a grid runs out, and can_start() knows its size.
            unreachable!("the sampler had a point for trial {number}");
        };
        let values = self.sweep.space.values(&point);
        let mut t = Trial {
            id: Trial::id_of(number),
            number,
            run_id: layout::trial_run_id(&self.sweep.name, number),
            params: values.iter().cloned().collect(),
            state: TrialState::Running,
            value: None,
            best_epoch: None,
            intermediate: vec![],
            reason: None,
            started_at: now_rfc3339(),
            finished_at: None,
            interrupted: false,
        };
        let exp = match self.sweep.experiment_with(&values) {
            Ok(exp) => exp,
            Err(m) => {
                t.state = TrialState::Failed;
                t.reason = Some(format!("its experiment is invalid: {m}"));
                t.finished_at = Some(now_rfc3339());
                self.say(format!(
                    "{} failed: {}",
                    t.id,
                    t.reason.clone().unwrap_or_default()
                ));
                self.st.trials.push(t);
                return self.save().await;
            }
        };
        let line = format!(
            "{} starting as run {}: {}",
            t.id,
            t.run_id,
            self.params_line(&t)
        );
        // Recorded before it exists on the backend: a driver killed right after this line
        // submits it again (idempotently) on the next run.
        self.st.trials.push(t);
        self.save().await?;
        self.say(line);
        self.submit(self.st.trials.len() - 1, &exp).await
    }

    /// Submits trial `i` (again: the same id and spec create nothing new).
    async fn submit(
        &mut self,
        i: usize,
        exp: &crate::experiment::Experiment,
    ) -> Result<(), SweepError> {
        let id = self.st.trials[i].id.clone();
        let run_id = self.st.trials[i].run_id.clone();
        match backend::submit(exp, &self.submit_options(&run_id)).await {
            Ok(sub) => {
                self.submit_failures.remove(&self.st.trials[i].number);
                if sub.created {
                    tracing::debug!("{id}: submitted {run_id} on {}", sub.place);
                }
                Ok(())
            }
            Err(e) => {
                let n = self
                    .submit_failures
                    .entry(self.st.trials[i].number)
                    .or_insert(0);
                *n += 1;
                let user_error = crate::exit::ProcessExitCode::process_exit_code(&e)
                    == crate::exit::ExitCode::UserError;
                if user_error || *n >= SUBMIT_TRIES {
                    let t = &mut self.st.trials[i];
                    t.state = TrialState::Failed;
                    t.reason = Some(format!("could not be submitted: {e}"));
                    t.finished_at = Some(now_rfc3339());
                    self.say(format!("{id} failed: could not be submitted: {e}"));
                    self.save().await
                } else {
                    self.say(format!(
                        "{id}: submitting {run_id} failed ({e}); trying again"
                    ));
                    Ok(())
                }
            }
        }
    }

    /// The runs of trials `running` as they are now, read [`listing::READS`] at a time (each
    /// cluster connected once).
    async fn look_at(&self, running: &[usize]) -> Vec<(usize, Seen)> {
        let clusters = Clusters::new(self.opts.target.clone());
        let metric = self.sweep.objective.metric;
        let seen: Vec<Seen> = futures::stream::iter(running)
            .map(|&i| look(&self.root, &self.st.trials[i].run_id, metric, &clusters))
            .buffered(listing::READS)
            .collect()
            .await;
        running.iter().copied().zip(seen).collect()
    }

    /// Brings running trial `i` up to date from what was `seen` of its run; whether anything
    /// changed.
    async fn poll(&mut self, i: usize, seen: Seen) -> Result<bool, SweepError> {
        let (run, status, curve) = match seen {
            Seen::Run { run, status, curve } => (run, *status, curve),
            Seen::Nothing => {
                // Recorded, but its run was never created (the driver stopped in between, or
                // submitting failed): submit it now.
                let values = self.values_of(&self.st.trials[i]);
                match self.sweep.experiment_with(&values) {
                    Ok(exp) => self.submit(i, &exp).await?,
                    Err(m) => {
                        let t = &mut self.st.trials[i];
                        t.state = TrialState::Failed;
                        t.reason = Some(format!("its experiment is invalid: {m}"));
                        t.finished_at = Some(now_rfc3339());
                    }
                }
                return Ok(true);
            }
            Seen::Unknown(why) => {
                if let Some(why) = why {
                    self.say(format!("warning: {}: {why}", self.st.trials[i].id));
                }
                return Ok(false);
            }
        };
        let mut changed = match self.carry_on(i, &run, &status).await? {
            ControlFlow::Break(changed) => return Ok(changed),
            ControlFlow::Continue(changed) => changed,
        };
        changed |= match self.new_epochs(i, &run, &status, &curve).await? {
            ControlFlow::Break(changed) => return Ok(changed),
            ControlFlow::Continue(changed) => changed,
        };
        if !status.phase.is_terminal() {
            return Ok(changed);
        }
        self.settle(i, &status);
        Ok(true)
    }

    /// Resumes trial `i`'s run when it was lost, or when the sweep interrupted it and it has
    /// stopped; `Break` with whether anything changed when this look is over.
    async fn carry_on(
        &mut self,
        i: usize,
        run: &Store,
        status: &RunStatus,
    ) -> Result<ControlFlow<bool, bool>, SweepError> {
        let (id, run_id) = (&self.st.trials[i].id, &self.st.trials[i].run_id);
        if status.phase == Phase::Lost {
            // Its supervisor died (killed, or the machine restarted): carry it on.
            let why = status.reason.clone().unwrap_or_default();
            let line =
                format!("{id}: run {run_id} was lost ({why}); resumed it from its checkpoint");
            backend::resume(run, status.clone(), &self.opts.target).await?;
            self.say(line);
            return Ok(ControlFlow::Break(true));
        }
        if !self.st.trials[i].interrupted {
            return Ok(ControlFlow::Continue(false));
        }
        match status.phase {
            Phase::Cancelled => {
                let line = format!("{id}: resumed run {run_id} from its checkpoint");
                backend::resume(run, status.clone(), &self.opts.target).await?;
                self.st.trials[i].interrupted = false;
                self.say(line);
                Ok(ControlFlow::Break(true))
            }
            p if p.is_terminal() => {
                self.st.trials[i].interrupted = false;
                Ok(ControlFlow::Continue(true))
            }
            // The cancel has not landed yet: look again next time.
            _ => Ok(ControlFlow::Break(false)),
        }
    }

    /// Records trial `i`'s epochs in `curve` not yet recorded, pruning it when its pruner says
    /// so (`Break`: pruned, or its cancel failed); whether any epoch was new.
    async fn new_epochs(
        &mut self,
        i: usize,
        run: &Store,
        status: &RunStatus,
        curve: &[f64],
    ) -> Result<ControlFlow<bool, bool>, SweepError> {
        let metric = self.sweep.objective.metric_name();
        let id = self.st.trials[i].id.clone();
        let mut changed = false;
        let seen = self.st.trials[i].intermediate.len();
        for e in seen + 1..=curve.len() {
            let v = curve[e - 1];
            self.st.trials[i].intermediate.push(v);
            changed = true;
            self.say(format!("{id} epoch {e}: {metric} {}", fmt_num(v)));
            // A run at its last epoch is about to end: its result costs nothing more.
            if status.phase.is_terminal() || self.epochs_of(i) == Some(e as u32) {
                continue;
            }
            let sign = self.sweep.objective.sign();
            let mine: Vec<f64> = self.st.trials[i]
                .intermediate
                .iter()
                .map(|v| sign * v)
                .collect();
            let curves = self.st.curves(self.sweep, self.st.trials[i].number);
            let Some(why) = self.sweep.pruner.prune(&mine, &state::peers(&curves)) else {
                continue;
            };
            if let Err(err) = backend::cancel(run, status.clone(), &self.opts.target).await {
                // Decide again at the next look.
                self.st.trials[i].intermediate.truncate(e - 1);
                self.say(format!(
                    "warning: {id}: cannot cancel {} to prune it: {err}",
                    self.st.trials[i].run_id
                ));
                return Ok(ControlFlow::Break(true));
            }
            let best = best_of(self.sweep, &self.st.trials[i].intermediate);
            let t = &mut self.st.trials[i];
            t.state = TrialState::Pruned;
            t.value = best.map(|b| b.1);
            t.best_epoch = best.map(|b| b.0);
            t.reason = Some(why.clone());
            t.finished_at = Some(now_rfc3339());
            self.say(format!("{id} pruned at epoch {e}: {why}"));
            return Ok(ControlFlow::Break(true));
        }
        Ok(ControlFlow::Continue(changed))
    }

    /// Records how trial `i` ended, its run having ended with `status`.
    fn settle(&mut self, i: usize, status: &RunStatus) {
        let metric = self.sweep.objective.metric_name();
        let best = best_of(self.sweep, &self.st.trials[i].intermediate);
        let t = &mut self.st.trials[i];
        let (id, run_id) = (t.id.clone(), t.run_id.clone());
        t.finished_at = Some(now_rfc3339());
        let line = match (status.phase, best) {
            (Phase::Succeeded, Some((epoch, v))) => {
                t.state = TrialState::Completed;
                t.value = Some(v);
                t.best_epoch = Some(epoch);
                format!("{id} completed: {metric} {} (epoch {epoch})", fmt_num(v))
            }
            (Phase::Succeeded, None) => {
                t.state = TrialState::Failed;
                t.reason = Some(format!("its run finished without a valid {metric}"));
                format!("{id} failed: its run finished without a valid {metric}")
            }
            (phase, _) => {
                t.state = TrialState::Failed;
                let why = status.reason.clone().unwrap_or_default();
                t.reason = Some(if phase == Phase::Cancelled {
                    format!("its run was cancelled outside the sweep ({why})")
                } else {
                    why
                });
                format!(
                    "{id} failed: {} (idcctl logs {run_id})",
                    t.reason.clone().unwrap_or_default()
                )
            }
        };
        self.say(line);
    }
}
