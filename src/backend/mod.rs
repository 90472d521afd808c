//! Backends run a submitted run's worker: `local` (a child process on this machine) and `kube`
//! (a Kubernetes GPU Job). [`RunBackend`] is what every backend does with a run, and
//! [`Backends`] picks a run's (the one place that looks at which backend it is on). The free
//! functions here are what commands, sweeps and predict call: submit a run, bring its record up
//! to date, follow, cancel and resume it, run a worker task beside it.

pub mod follow;
pub mod kube;
pub mod local;

use crate::attempt::AttemptRecord;
use crate::dataset::decode::Undersized;
use crate::experiment::{self, Backend, Experiment};
use crate::layout::{self, run as keys};
use crate::run::{self, ClusterRef, Phase, RunStatus};
use crate::spec::RunSpec;
use crate::stage::{self, StageError, StageHooks, StageOptions};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use sha2::Digest;
use std::time::Duration;

use self::kube::cluster::{Cluster, Created, KubeError};

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Something the user can fix in the manifest or the command (exit code 2).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Local(#[from] local::LocalError),
    #[error("staging {source_path}: {error}")]
    Stage {
        source_path: String,
        error: StageError,
    },
    /// A worker task (a prediction) failed; `code` is the worker's exit code (2: bad input).
    #[error("{what}: {detail}")]
    Task {
        code: i32,
        what: String,
        detail: String,
    },
}

impl crate::exit::ProcessExitCode for BackendError {
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        match self {
            BackendError::Invalid(_) => crate::exit::ExitCode::UserError,
            BackendError::Kube(e) => e.process_exit_code(),
            BackendError::Stage { error, .. } => error.process_exit_code(),
            BackendError::Store(e) => e.process_exit_code(),
            BackendError::Local(e) => e.process_exit_code(),
            BackendError::Task { code, .. } if *code == crate::exit::ExitCode::UserError as i32 => {
                crate::exit::ExitCode::UserError
            }
            BackendError::Task { .. } => crate::exit::ExitCode::Failure,
        }
    }
}

/// Which cluster and namespace (Kubernetes backend); unset fields come from the kubeconfig.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub context: Option<String>,
    pub namespace: Option<String>,
}

impl Target {
    /// The run's own cluster, unless the command named another.
    pub fn for_run(&self, r: Option<&ClusterRef>) -> Target {
        Target {
            context: self.context.clone().or(r.and_then(|r| r.context.clone())),
            namespace: self.namespace.clone().or(r.map(|r| r.namespace.clone())),
        }
    }

    pub async fn connect(&self) -> Result<Cluster, KubeError> {
        Cluster::connect(self.context.as_deref(), self.namespace.as_deref()).await
    }
}

/// What every backend does with a run. Each operation reads the run's record in the bucket and
/// writes what changed there; the lifecycle conformance suite (`tests/it/conformance.rs`) holds
/// every implementation to the same outcomes.
// The futures are awaited where they are made (commands, the sweep driver's loop), never sent
// to another thread, so the traits' auto-trait bounds need not be spelled out.
#[allow(async_fn_in_trait)]
pub trait RunBackend {
    /// Submits the experiment: stages the dataset if needed, writes the run's spec and record,
    /// then starts the worker. The same run id and spec again creates nothing new.
    async fn submit(
        &self,
        exp: &Experiment,
        opts: &SubmitOptions,
    ) -> Result<Submitted, BackendError>;
    /// Brings an active run's record `s` up to date from what runs it (saved when it changed).
    async fn refresh(&self, run: &Store, s: RunStatus) -> Result<RunStatus, BackendError>;
    /// Follows the run's log (only attempt `only`, if given) until the run ends; returns its
    /// record as it ended.
    async fn follow(
        &self,
        run: &Store,
        s: RunStatus,
        only: Option<u32>,
        out: follow::Sink<'_>,
    ) -> Result<RunStatus, BackendError>;
    /// Attempt `n`'s log as it is now (`records`: the run's attempt records); None when it has
    /// none yet.
    async fn read_log(
        &self,
        run: &Store,
        s: &RunStatus,
        n: u32,
        records: &[AttemptRecord],
    ) -> Result<Option<String>, BackendError>;
    /// Stops the run (its worker checkpoints on SIGTERM) unless it has already ended.
    async fn cancel(&self, run: &Store, s: RunStatus) -> Result<CancelOutcome, BackendError>;
    /// Starts a stopped run again from its latest checkpoint, with attempts to spare; `s` is
    /// its reopened record.
    async fn restart(&self, run: &Store, s: RunStatus) -> Result<(), BackendError>;
    /// Runs a worker task beside a run (a prediction) until it ends.
    async fn run_task(
        &self,
        task: &Task<'_>,
        progress: &mut dyn TaskProgress,
    ) -> Result<(), BackendError>;
}

/// A one-off worker task beside a run (a prediction): `idc-worker ARGS` as a child process on
/// the local backend, a Job on Kubernetes.
pub struct Task<'a> {
    /// The worker's arguments (`predict --job URL`).
    pub worker_args: Vec<String>,
    /// Its Job, given the namespace's defaults.
    pub job: &'a (dyn Fn(&kube::ClusterDefaults) -> k8s_openapi::api::batch::v1::Job + Sync),
    /// Attempts its Job may make.
    pub max_attempts: u32,
    /// The bucket folder and key of the worker's log, where a failed Job's error is read.
    pub log: (&'a Store, &'a str),
}

/// What a running task reports.
pub trait TaskProgress: Send {
    /// A line the worker wrote; true when it was progress (else the last such line is the
    /// error a failed task reports).
    fn line(&mut self, text: &str) -> bool;
    /// A one-line update about the task itself (waiting for a pod, and so on).
    fn notice(&mut self, line: &str);
}

/// The backend a run is on: the one place that dispatches on [`Backend`].
pub enum Backends {
    Local(local::Local),
    Kubernetes(Box<kube::Kubernetes>),
}

impl Backends {
    /// The backend `kind`, connected to `target`'s cluster when it is Kubernetes.
    pub async fn connect(kind: Backend, target: &Target) -> Result<Self, BackendError> {
        Ok(match kind {
            Backend::Local => Backends::Local(local::Local::default()),
            Backend::Kubernetes => {
                let cluster = target.connect().await?;
                Backends::Kubernetes(Box::new(kube::Kubernetes::on(cluster)))
            }
        })
    }

    /// The backend run `s` is on (its own cluster, unless `target` names another).
    pub async fn of_run(s: &RunStatus, target: &Target) -> Result<Self, BackendError> {
        Self::connect(s.backend, &target.for_run(s.cluster.as_ref())).await
    }
}

/// Calls the same method on whichever backend `self` holds.
macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Backends::Local($b) => $call.await,
            Backends::Kubernetes($b) => $call.await,
        }
    };
}

impl RunBackend for Backends {
    async fn submit(
        &self,
        exp: &Experiment,
        opts: &SubmitOptions,
    ) -> Result<Submitted, BackendError> {
        dispatch!(self, b => b.submit(exp, opts))
    }
    async fn refresh(&self, run: &Store, s: RunStatus) -> Result<RunStatus, BackendError> {
        dispatch!(self, b => b.refresh(run, s))
    }
    async fn follow(
        &self,
        run: &Store,
        s: RunStatus,
        only: Option<u32>,
        out: follow::Sink<'_>,
    ) -> Result<RunStatus, BackendError> {
        dispatch!(self, b => b.follow(run, s, only, out))
    }
    async fn read_log(
        &self,
        run: &Store,
        s: &RunStatus,
        n: u32,
        records: &[AttemptRecord],
    ) -> Result<Option<String>, BackendError> {
        dispatch!(self, b => b.read_log(run, s, n, records))
    }
    async fn cancel(&self, run: &Store, s: RunStatus) -> Result<CancelOutcome, BackendError> {
        dispatch!(self, b => b.cancel(run, s))
    }
    async fn restart(&self, run: &Store, s: RunStatus) -> Result<(), BackendError> {
        dispatch!(self, b => b.restart(run, s))
    }
    async fn run_task(
        &self,
        task: &Task<'_>,
        progress: &mut dyn TaskProgress,
    ) -> Result<(), BackendError> {
        dispatch!(self, b => b.run_task(task, progress))
    }
}

/// How to submit.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Name the run (a valid Kubernetes name); resubmitting the same name and spec is a no-op.
    pub run_id: Option<String>,
    /// Bucket override (else the manifest's, else the cluster's default on Kubernetes).
    pub storage: Option<String>,
    pub target: Target,
}

/// A submitted run.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub run_id: String,
    pub run: Store,
    /// False when the same run had been submitted already and nothing new was made.
    pub created: bool,
    /// Where it runs, in words ("the local backend", "namespace ml of cluster https://…").
    pub place: String,
}

/// A run about to be submitted: its id, bucket folder and spec.
pub struct Plan {
    pub experiment: Experiment,
    pub run_id: String,
    pub run_url: String,
    pub spec: RunSpec,
    pub spec_yaml: String,
    pub spec_sha256: String,
}

/// A run id names the run's folder and its Job: the naming rule, at most 63 characters.
fn check_run_id(id: &str) -> Result<(), BackendError> {
    if experiment::name_rule_violation(id, 63).is_some() {
        return Err(BackendError::Invalid(format!(
            "run id '{id}' must be at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Where a run's (or a sweep's) bucket is: the override, the manifest's, or (on Kubernetes,
/// when the manifest keeps the laptop default) the cluster's.
pub fn storage_for(exp: &Experiment, overridden: Option<&str>, cluster: Option<&str>) -> String {
    match (overridden, cluster) {
        (Some(s), _) => s.to_string(),
        (None, Some(c)) if storage_needs_cluster(exp, None) => c.to_string(),
        _ => exp.storage.clone(),
    }
}

/// Whether [`storage_for`] would take the cluster's bucket (so its defaults must be read).
pub fn storage_needs_cluster(exp: &Experiment, overridden: Option<&str>) -> bool {
    overridden.is_none()
        && exp.backend == Backend::Kubernetes
        && exp.storage == experiment::default_storage()
}

/// Pods reach only S3: a Kubernetes run's bucket and dataset must be there.
fn check_reachable(plan: &Plan) -> Result<(), BackendError> {
    let storage = &plan.experiment.storage;
    if !storage.starts_with("s3://") {
        return Err(BackendError::Invalid(format!(
            "a Kubernetes run needs an s3:// bucket its pods can reach, but storage is {storage}; set storage: in the manifest, --storage, or the chart's storage value"
        )));
    }
    if !plan.spec.dataset.starts_with("s3://") {
        return Err(BackendError::Invalid(format!(
            "a Kubernetes run needs its dataset in an s3:// bucket, but dataset.url is {}",
            plan.spec.dataset
        )));
    }
    Ok(())
}

/// Fixes the run's id, folder and spec without touching the bucket or cluster. The dataset is
/// where the manifest says or where its source will be staged.
pub fn plan(
    exp: &Experiment,
    opts: &SubmitOptions,
    cluster_storage: Option<&str>,
) -> Result<Plan, BackendError> {
    let storage = storage_for(exp, opts.storage.as_deref(), cluster_storage);
    let root = Store::open(&storage)?;
    let run_id = match &opts.run_id {
        Some(id) => {
            check_run_id(id)?;
            id.clone()
        }
        None => run::new_run_id(&exp.name),
    };
    let dataset = match &exp.dataset.url {
        Some(url) => Store::open(url)?.url().to_string(),
        None => root.child(&dataset_prefix(exp)).url().to_string(),
    };
    let spec = RunSpec {
        run_id: run_id.clone(),
        dataset,
        train: exp.train.clone(),
    };
    let spec_yaml = serde_yaml::to_string(&spec).expect("specs serialize");
    let mut experiment = exp.clone();
    experiment.storage = storage;
    Ok(Plan {
        run_url: run::run_store(&root, &run_id).url().to_string(),
        spec_sha256: hex::encode(sha2::Sha256::digest(spec_yaml.as_bytes())),
        experiment,
        run_id,
        spec,
        spec_yaml,
    })
}

impl Plan {
    /// The run's Job with the namespace's `defaults`.
    pub fn job(&self, defaults: &kube::ClusterDefaults) -> k8s_openapi::api::batch::v1::Job {
        kube::job::build(&kube::job::JobInputs {
            experiment: &self.experiment,
            run_id: &self.run_id,
            run_url: &self.run_url,
            spec_sha256: &self.spec_sha256,
            defaults,
        })
    }
}

fn dataset_prefix(exp: &Experiment) -> String {
    layout::dataset_prefix(exp.dataset.name.as_deref().unwrap_or("idc"))
}

/// Checks the manifest's staged dataset, or stages its source (skipped when already staged);
/// returns the dataset's manifest.
async fn ensure_dataset(
    exp: &Experiment,
    root: &Store,
) -> Result<crate::dataset::manifest::DatasetManifest, BackendError> {
    if let Some(url) = &exp.dataset.url {
        let ds = Store::open(url)?;
        return crate::dataset::manifest::read(&ds)
            .await
            .map_err(|e| BackendError::Stage {
                source_path: url.clone(),
                error: StageError::Store(e),
            })?
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "dataset.url {} holds no staged dataset; stage it with idcctl stage",
                    ds.url()
                ))
            });
    }
    let source = exp
        .dataset
        .source
        .as_ref()
        .expect("manifest checks url or source");
    let ds = root.child(&dataset_prefix(exp));
    let opts = StageOptions::new(
        exp.dataset.format.unwrap_or_default(),
        exp.dataset.split.clone(),
        exp.dataset.class_names.clone(),
        exp.dataset.undersized.unwrap_or(Undersized::Pad),
    );
    tracing::info!(
        "staging {source} to {} (skipped when already staged)",
        ds.url()
    );
    let out = stage::stage(
        std::path::Path::new(source),
        &ds,
        &opts,
        &StageHooks::default(),
    )
    .await
    .map_err(|e| BackendError::Stage {
        source_path: source.clone(),
        error: e,
    })?;
    tracing::info!(
        "dataset {}: {} patches",
        out.manifest.id,
        out.manifest.records()
    );
    Ok(out.manifest)
}

/// Submits the experiment on its backend: stages the dataset if needed, writes the run's
/// spec and record to the bucket, then starts the supervisor or creates the Job.
pub async fn submit(exp: &Experiment, opts: &SubmitOptions) -> Result<Submitted, BackendError> {
    Backends::connect(exp.backend, &opts.target)
        .await?
        .submit(exp, opts)
        .await
}

/// Stages the dataset if needed, refuses a spec that cannot train on it, and writes the run's
/// spec and experiment; returns the run's folder and its record when it was submitted before.
async fn record(exp: &Experiment, plan: &Plan) -> Result<(Store, Option<RunStatus>), BackendError> {
    let root = Store::open(&plan.experiment.storage)?;
    let dataset = ensure_dataset(exp, &root).await?;
    // Before anything is written: a spec that cannot train on this dataset is refused here,
    // not by the worker minutes later.
    exp.train
        .check_dataset(dataset.num_classes(), dataset.image.shape())
        .map_err(|e| BackendError::Invalid(format!("dataset {}: {e}", plan.spec.dataset)))?;
    let run = run::run_store(&root, &plan.run_id);
    if let Some(existing) = run.get_opt(keys::SPEC).await? {
        if existing.as_ref() != plan.spec_yaml.as_bytes() {
            return Err(BackendError::Invalid(format!(
                "run {} already exists in {} with a different spec; pick another --run-id",
                plan.run_id,
                root.url()
            )));
        }
    } else {
        run.put(keys::SPEC, Bytes::from(plan.spec_yaml.clone()))
            .await?;
    }
    run.put(
        keys::EXPERIMENT,
        Bytes::from(serde_yaml::to_string(&plan.experiment).expect("serializes")),
    )
    .await?;
    let existing = run::read_status(&run).await?;
    if existing.is_none() {
        run::index_new_run(&root, &plan.run_id).await?;
    }
    Ok((run, existing))
}

/// A new run's record: pending, no attempt yet.
fn new_status(exp: &Experiment, plan: &Plan) -> RunStatus {
    RunStatus {
        run_id: plan.run_id.clone(),
        experiment: exp.name.clone(),
        model: exp.train.model.name().to_string(),
        backend: exp.backend,
        phase: Phase::Pending,
        attempts: 0,
        max_attempts: exp.retries + 1,
        created_at: crate::clock::now_rfc3339(),
        started_at: None,
        finished_at: None,
        exit_codes: vec![],
        reason: None,
        supervisor: None,
        worker: None,
        heartbeat_at: None,
        deadline_s: exp
            .deadline
            .as_deref()
            .and_then(crate::clock::parse_duration),
        cluster: None,
        summary: None,
    }
}

/// [`submit`] on the local backend: writes the record and starts the supervisor.
async fn submit_local(
    exp: &Experiment,
    opts: &SubmitOptions,
    idcctl: Option<&std::path::Path>,
) -> Result<Submitted, BackendError> {
    let plan = plan(exp, opts, None)?;
    let (run, existing) = record(exp, &plan).await?;
    let place = "the local backend".to_string();
    if let Some(s) = existing {
        // The same run again: it is already supervised (or finished).
        return Ok(Submitted {
            run_id: s.run_id,
            run,
            created: false,
            place,
        });
    }
    let mut status = new_status(exp, &plan);
    status.reason = Some("waiting for the supervisor to start".into());
    status.heartbeat_at = Some(crate::clock::now_rfc3339());
    run::write_status(&run, &status).await?;
    local::launch(run.url(), idcctl)?;
    Ok(Submitted {
        run_id: plan.run_id,
        run,
        created: true,
        place,
    })
}

/// Whether a Kubernetes run's record is that of a submission the API server refused: it
/// failed without ever having had a Job, so submitting it again starts it afresh.
fn refused_at_submit(s: &RunStatus) -> bool {
    s.backend == Backend::Kubernetes && s.phase == Phase::Failed && s.cluster.is_none()
}

/// [`submit`] on a cluster: checks its version, reads the namespace's defaults once, writes the
/// run's record, then creates the Job. A record of a finished run is left as it is (nothing is
/// created; `resume` starts a stopped run again); one of a refused submission starts afresh.
/// When the API server refuses the Job, the record says so and what to do, and the run ends
/// failed.
async fn submit_kube(
    exp: &Experiment,
    opts: &SubmitOptions,
    cluster: &Cluster,
    check_reach: bool,
) -> Result<Submitted, BackendError> {
    cluster.check_version().await?;
    let defaults = cluster.defaults().await?;
    let plan = plan(exp, opts, defaults.storage.as_deref())?;
    if check_reach {
        check_reachable(&plan)?;
    }
    let (run, existing) = record(exp, &plan).await?;
    let done = |created| Submitted {
        run_id: plan.run_id.clone(),
        run: run.clone(),
        created,
        place: format!(
            "namespace {} on {}",
            cluster.namespace,
            cluster.context.as_deref().unwrap_or(&cluster.server)
        ),
    };
    // Written by this call, so this call's to record a refusal in.
    let ours = existing.as_ref().is_none_or(refused_at_submit);
    let mut status = match existing {
        Some(s) if !ours && s.phase.is_terminal() => return Ok(done(false)),
        Some(s) if !ours => s,
        before => {
            let mut s = new_status(exp, &plan);
            if let Some(b) = before {
                s.created_at = b.created_at;
            }
            s.cluster = Some(ClusterRef {
                context: cluster.context.clone(),
                namespace: cluster.namespace.clone(),
                earlier_attempts: 0,
                earlier_exit_codes: vec![],
            });
            s.reason = Some("the Job is being created".into());
            run::write_status(&run, &s).await?;
            s
        }
    };
    match cluster.create_job(&plan.job(&defaults)).await {
        Ok(Created::New) => {
            status.reason = Some("the Job was created; waiting for its pod".into());
            run::write_status(&run, &status).await?;
            Ok(done(true))
        }
        Ok(Created::AlreadyThere) => Ok(done(false)),
        Err(e) => {
            if ours && e.is_refusal() {
                // Not left pending for ever: nothing runs until it is submitted again.
                status.phase = Phase::Failed;
                status.cluster = None;
                status.finished_at = Some(crate::clock::now_rfc3339());
                status.reason = Some(format!(
                    "not started, the Job was refused: {e}; then submit it again with --run-id {} (its spec is kept)",
                    plan.run_id
                ));
                run::write_status(&run, &status).await?;
            }
            Err(e.into())
        }
    }
}

/// The Job `submit` would create, with the cluster's defaults (`--dry-run`).
pub fn render_job(
    exp: &Experiment,
    opts: &SubmitOptions,
    defaults: &kube::ClusterDefaults,
) -> Result<k8s_openapi::api::batch::v1::Job, BackendError> {
    let mut exp = exp.clone();
    exp.backend = Backend::Kubernetes;
    let plan = plan(&exp, opts, defaults.storage.as_deref())?;
    check_reachable(&plan)?;
    let job = plan.job(defaults);
    let bad = kube::names::job_violations(&job);
    if !bad.is_empty() {
        return Err(BackendError::Invalid(format!(
            "the Job would be rejected by Kubernetes: {}",
            bad.join("; ")
        )));
    }
    Ok(job)
}

/// Brings a run's record up to date: on Kubernetes, from its Job and pods (and saves it); on
/// the local backend the supervisor keeps it current, and one that is gone makes the run lost.
pub async fn refresh(
    run: &Store,
    status: RunStatus,
    target: &Target,
) -> Result<RunStatus, BackendError> {
    if status.phase.is_terminal() {
        return Ok(status);
    }
    Backends::of_run(&status, target)
        .await?
        .refresh(run, status)
        .await
}

/// The Kubernetes backend's refresh, against a connected cluster. Attempts come from the run's
/// attempt records in the bucket matched with the pods that still exist, so an evicted or
/// TTL-deleted pod keeps its attempt; a cancel recorded meanwhile (by another idcctl) wins.
async fn refresh_on(
    run: &Store,
    status: RunStatus,
    cluster: &Cluster,
) -> Result<RunStatus, BackendError> {
    // Read before the pods, so that every record's pod that still exists is listed.
    let records = crate::attempt::read_all(run).await?;
    let earlier = status.cluster.as_ref().map_or(0, |c| c.earlier_attempts);
    let observed = cluster
        .observe(&status.run_id, status.max_attempts, &records, earlier)
        .await?;
    // Another command may have changed the record since `status` was read (a cancel while
    // `logs -f` follows): that one is the truth to update.
    let status = match run::read_status(run).await? {
        Some(now) if now.phase.is_terminal() => return Ok(now),
        Some(now) => now,
        None => status,
    };
    let cancelled = run.get_opt(keys::CANCEL).await?.is_some();
    let mut s = status.clone();
    match observed {
        Some((o, attempts)) => {
            for done in attempts.iter().filter_map(|a| a.record_to_complete()) {
                crate::attempt::write(run, &done).await?;
            }
            // A run from before attempt records keeps its earlier Jobs' codes in the record.
            let mut codes = match (&s.cluster, records.is_empty()) {
                (Some(c), true) => c.earlier_exit_codes.clone(),
                _ => vec![],
            };
            codes.extend(o.exit_codes);
            s.phase = o.phase;
            s.reason = Some(o.reason);
            s.attempts = o.attempts.max(earlier);
            s.exit_codes = codes;
            s.started_at = s.started_at.or(o.started_at);
            s.finished_at = o.finished_at.filter(|_| s.phase.is_terminal());
        }
        None if cancelled => {
            s.phase = Phase::Cancelled;
            s.reason = Some(format!(
                "cancelled{}",
                ended_in(&records)
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ));
            apply_records(&mut s, &records);
        }
        None => {
            // The Job is gone: deleted after its TTL, or behind idcctl's back. The attempt
            // records (and the report) in the bucket still say how the run ended.
            let report = run.get_opt(keys::REPORT).await?.is_some();
            let (phase, reason) = outcome_without_job(report, &records, &cluster.namespace);
            s.phase = phase;
            s.reason = Some(reason);
            apply_records(&mut s, &records);
        }
    }
    if s.phase != Phase::Pending && s.started_at.is_none() {
        s.started_at = Some(crate::clock::now_rfc3339());
    }
    if s.phase.is_terminal() && s.finished_at.is_none() {
        s.finished_at = Some(crate::clock::now_rfc3339());
    }
    if s.phase.is_terminal() && !status.phase.is_terminal() {
        run::summarize_end(run, &mut s).await?;
    }
    if s != status {
        run::write_status(run, &s).await?;
    }
    Ok(s)
}

/// Attempts, exit codes and times of a run whose Job is gone, from its attempt records.
fn apply_records(s: &mut RunStatus, records: &[crate::attempt::AttemptRecord]) {
    if records.is_empty() {
        return;
    }
    s.attempts = s
        .attempts
        .max(records.iter().map(|r| r.attempt).max().unwrap_or(0));
    s.exit_codes = records.iter().filter_map(|r| r.exit_code).collect();
    s.started_at = s.started_at.take().or(Some(records[0].started_at.clone()));
    s.finished_at = records
        .iter()
        .rev()
        .find_map(|r| r.finished_at.clone())
        .or(s.finished_at.take());
}

/// "attempt N …", how the last recorded attempt ended.
fn ended_in(records: &[crate::attempt::AttemptRecord]) -> Option<String> {
    let last = records.last()?;
    Some(format!(
        "attempt {} {}",
        last.attempt,
        last.ended
            .clone()
            .or(last.exit_code.map(crate::attempt::describe_exit))
            .unwrap_or_else(|| "recorded no end".into())
    ))
}

/// How a run ended whose Job is gone, from its report and attempt records.
fn outcome_without_job(
    report: bool,
    records: &[crate::attempt::AttemptRecord],
    namespace: &str,
) -> (Phase, String) {
    let last = records.last();
    let gone = "its Job has since been deleted";
    match last.and_then(|r| r.exit_code) {
        _ if report => (
            Phase::Succeeded,
            match last {
                Some(r) => format!("completed in attempt {}; {gone}", r.attempt),
                None => format!("finished; {gone}"),
            },
        ),
        Some(2) => (
            Phase::Failed,
            format!(
                "the worker found bad input in attempt {} (exit code 2); {gone}; see idcctl logs",
                last.map_or(0, |r| r.attempt)
            ),
        ),
        Some(_) => (
            Phase::Failed,
            format!(
                "{} and left no report; {gone}; see idcctl logs",
                ended_in(records).unwrap_or_default()
            ),
        ),
        None => (
            Phase::Failed,
            format!(
                "its Job is gone from namespace {namespace} and it left no report{} (deleted outside idcctl?); see idcctl logs",
                ended_in(records)
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ),
        ),
    }
}

/// What `cancel` did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The run had already ended (as the backend shows it now): nothing was stopped or deleted.
    AlreadyEnded(Box<RunStatus>),
    /// The cancel is recorded; `signalled`: a worker was sent SIGTERM (its Job deleted, on
    /// Kubernetes).
    Requested { signalled: bool },
}

/// Stops a run: the worker gets SIGTERM and checkpoints; the record says cancelled. The run is
/// read from its backend first: one that has already ended is left as it is.
pub async fn cancel(
    run: &Store,
    status: RunStatus,
    target: &Target,
) -> Result<CancelOutcome, BackendError> {
    Backends::of_run(&status, target)
        .await?
        .cancel(run, status)
        .await
}

/// The Kubernetes backend's cancel, on a connected cluster: reads the Job first (a run that already
/// succeeded or failed keeps its Job, its pods' logs and its outcome), then deletes it (the
/// pods get SIGTERM and the worker checkpoints).
async fn cancel_on(
    run: &Store,
    status: RunStatus,
    cluster: &Cluster,
) -> Result<CancelOutcome, BackendError> {
    let s = if status.phase.is_terminal() {
        status
    } else {
        refresh_on(run, status, cluster).await?
    };
    if s.phase.is_terminal() && s.phase != Phase::Lost {
        return Ok(CancelOutcome::AlreadyEnded(Box::new(s)));
    }
    run.put(keys::CANCEL, Bytes::from_static(b"cancelled\n"))
        .await?;
    let deleted = cluster.delete_job(&s.run_id).await?;
    let mut s = s;
    s.phase = Phase::Cancelled;
    s.reason = Some(if deleted {
        "cancelled: the Job was deleted; its worker checkpoints on SIGTERM".into()
    } else {
        "cancelled (its Job was already gone)".into()
    });
    s.finished_at = Some(crate::clock::now_rfc3339());
    run::write_status(run, &s).await?;
    Ok(CancelOutcome::Requested { signalled: deleted })
}

/// Starts a stopped run again (cancelled, failed or lost); the worker resumes from its latest
/// checkpoint. The record is brought up to date first: a run still going or done is refused.
pub async fn resume(run: &Store, status: RunStatus, target: &Target) -> Result<(), BackendError> {
    // A finished run is refused before any cluster is asked.
    if status.phase.is_terminal() {
        check_resumable(&status)?;
    }
    let backend = Backends::of_run(&status, target).await?;
    resume_on(&backend, run, status).await
}

/// [`resume`] on a backend at hand.
pub async fn resume_on(
    backend: &impl RunBackend,
    run: &Store,
    status: RunStatus,
) -> Result<(), BackendError> {
    let mut s = if status.phase.is_terminal() {
        status
    } else {
        backend.refresh(run, status).await?
    };
    check_resumable(&s)?;
    run.delete(keys::CANCEL).await?;
    s.phase = Phase::Pending;
    s.finished_at = None;
    backend.restart(run, s).await
}

/// A run can be resumed once it has stopped, unless it succeeded.
fn check_resumable(s: &RunStatus) -> Result<(), BackendError> {
    if !s.phase.is_terminal() {
        return Err(BackendError::Invalid(format!(
            "run {} is {}; only a stopped run can be resumed",
            s.run_id,
            crate::output::name_of(&s.phase)
        )));
    }
    if s.phase == Phase::Succeeded {
        return Err(BackendError::Invalid(format!(
            "run {} already succeeded",
            s.run_id
        )));
    }
    Ok(())
}

/// Waits until no pod of the run's earlier Jobs is left (each gets its grace period, plus a
/// margin); refuses to go on while one still stops.
async fn wait_for_pods_gone(cluster: &Cluster, run_id: &str) -> Result<(), BackendError> {
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        let pods = cluster.pods_of(run_id).await?;
        let Some(pod) = pods.first() else {
            return Ok(());
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let grace = pods
            .iter()
            .filter_map(|p| p.spec.as_ref()?.termination_grace_period_seconds)
            .max()
            .unwrap_or(30)
            .max(0) as u64;
        if start.elapsed() > Duration::from_secs(grace + 60) {
            return Err(BackendError::Invalid(format!(
                "pod {name} of run {run_id}'s earlier Job is still stopping after {}s (its grace period is {grace}s); a new worker beside it would write into the same run, so nothing was started: try idcctl resume again once it is gone",
                start.elapsed().as_secs()
            )));
        }
        if !said {
            tracing::info!(
                "waiting for pod {name} of the earlier Job to stop (its worker checkpoints on SIGTERM; up to {grace}s)"
            );
            said = true;
        }
        tokio::time::sleep(cluster.poll.max(Duration::from_millis(50))).await;
    }
}

/// The Kubernetes backend's restart: once the earlier Job and its pods are gone, creates a new
/// Job built from the run's experiment and the namespace's current defaults.
async fn restart_on(run: &Store, status: RunStatus, cluster: &Cluster) -> Result<(), BackendError> {
    let mut s = status;
    let exp: Experiment =
        serde_yaml::from_slice(&run.get(keys::EXPERIMENT).await?).map_err(|e| {
            BackendError::Invalid(format!(
                "{}/{} is unreadable: {e}",
                run.url(),
                keys::EXPERIMENT
            ))
        })?;
    let spec = run.get(keys::SPEC).await?;
    // A finished Job keeps its name until deleted; the new one needs it.
    if cluster.delete_job(&s.run_id).await? {
        for _ in 0..120 {
            if cluster.job(&s.run_id).await?.is_none() {
                break;
            }
            tokio::time::sleep(cluster.poll.min(Duration::from_millis(500))).await;
        }
    }
    // The old Job's pods stop in the background (a cancel deletes the Job at once): a worker
    // still checkpointing would write into the run beside the new one, holding a second GPU.
    wait_for_pods_gone(cluster, &s.run_id).await?;
    let defaults = cluster.defaults().await?;
    let job = kube::job::build(&kube::job::JobInputs {
        experiment: &exp,
        run_id: &s.run_id,
        run_url: run.url(),
        spec_sha256: &hex::encode(sha2::Sha256::digest(&spec)),
        defaults: &defaults,
    });
    cluster.create_job(&job).await?;
    s.max_attempts = s.attempts.saturating_add(exp.retries).saturating_add(1);
    s.cluster = Some(ClusterRef {
        context: cluster.context.clone(),
        namespace: cluster.namespace.clone(),
        earlier_attempts: s.attempts,
        earlier_exit_codes: s.exit_codes.clone(),
    });
    s.reason = Some("resumed: a new Job was created".into());
    run::write_status(run, &s).await?;
    Ok(())
}

/// How `idcctl cancel` ended, as [`cancel_and_wait`] saw it.
#[derive(Debug)]
pub enum CancelEnd {
    /// The run had already ended: nothing was cancelled.
    AlreadyEnded(Box<RunStatus>),
    /// Kubernetes: its Job was deleted; the worker checkpoints on SIGTERM.
    JobDeleted,
    /// Local: the supervisor recorded the end.
    Ended(Box<RunStatus>),
    /// Local: the supervisor had not recorded the end after a while; `signalled`: a worker was
    /// sent SIGTERM.
    Requested { signalled: bool },
}

/// [`cancel`]s the run, then, on the local backend, waits briefly (20 s) for its supervisor to
/// record the end, so that the user sees the outcome.
pub async fn cancel_and_wait(
    run: &Store,
    status: RunStatus,
    target: &Target,
) -> Result<CancelEnd, BackendError> {
    let backend = status.backend;
    let signalled = match cancel(run, status, target).await? {
        CancelOutcome::AlreadyEnded(s) => return Ok(CancelEnd::AlreadyEnded(s)),
        CancelOutcome::Requested { signalled } => signalled,
    };
    if backend == Backend::Kubernetes {
        return Ok(CancelEnd::JobDeleted);
    }
    for _ in 0..100 {
        if let Some(s) = run::read_status(run).await?
            && s.phase.is_terminal()
        {
            return Ok(CancelEnd::Ended(Box::new(s)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(CancelEnd::Requested { signalled })
}
