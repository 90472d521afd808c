//! Run commands: submit, logs, status, list, report, compare, cancel, resume, the trackers
//! (`track sync`, `tensorboard`), and the local backend's supervisor.

use super::{OutputFormat, UserError, choice, print_object, print_render};
use anyhow::Context;
use clap::{Args, Subcommand};
use idc::backend::kube::ClusterDefaults;
use idc::backend::{self, CancelEnd, SubmitOptions, Target, follow, local};
use idc::exit::ExitCode;
use idc::experiment::{self, Backend};
use idc::listing::{self, Clusters, ListOptions};
use idc::output::name_of;
use idc::report::tensorboard::{self, Origin};
use idc::report::{self as reports, compare, html};
use idc::run::{self, Phase, RunError, RunStatus};
use idc::store::Store;
use std::path::PathBuf;

/// The bucket runs live in.
#[derive(Args, Debug, Clone)]
pub struct StorageArg {
    /// The bucket URL (the manifest's `storage`).
    #[arg(long, env = "IDC_STORAGE", default_value = "file://./.idc/bucket")]
    pub storage: String,
}

impl StorageArg {
    /// The bucket.
    pub fn open(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.storage)?)
    }
}

/// Which cluster and namespace (Kubernetes backend), as kubectl takes them.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// The kubeconfig context (default: the current one; in a pod, its service account).
    #[arg(long)]
    context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

impl ClusterArgs {
    pub fn target(&self) -> Target {
        Target {
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The experiment manifest.
    file: PathBuf,
    /// Follow the run's log until it ends, then print its report.
    #[arg(long)]
    wait: bool,
    /// Override the manifest's backend.
    #[arg(long, value_parser = choice::<Backend>())]
    backend: Option<Backend>,
    /// Name the run instead of `<name>-<date>-<time>-<hex>`. Submitting the same name and
    /// manifest again creates nothing new.
    #[arg(long)]
    run_id: Option<String>,
    /// Override the manifest's storage (the bucket URL).
    #[arg(long)]
    storage: Option<String>,
    /// Train on this staged dataset instead of the manifest's.
    #[arg(long)]
    dataset: Option<String>,
    /// Print the Kubernetes objects it would create and stop: no cluster or bucket is touched
    /// (built-in cluster defaults stand in for the namespace's idc-defaults ConfigMap).
    #[arg(long)]
    dry_run: bool,
    /// Output format of --dry-run.
    #[arg(short = 'o', long, value_parser = choice::<OutputFormat>(), default_value_t = OutputFormat::Yaml)]
    output: OutputFormat,
    #[command(flatten)]
    cluster: ClusterArgs,
}

impl SubmitArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let mut exp = experiment::load(&self.file)?;
        exp.backend = self.backend.unwrap_or(exp.backend);
        if let Some(url) = self.dataset {
            exp.dataset = experiment::DatasetRef::staged(url);
        }
        let target = self.cluster.target();
        let opts = SubmitOptions {
            run_id: self.run_id,
            storage: self.storage,
            target: target.clone(),
        };
        if self.dry_run {
            let job = backend::render_job(&exp, &opts, &ClusterDefaults::default())?;
            return print_object(&job, self.output);
        }
        let sub = backend::submit(&exp, &opts).await?;
        let (run_id, place) = (&sub.run_id, &sub.place);
        println!("{run_id}");
        if sub.created {
            let model = exp.train.model.name();
            eprintln!(
                "submitted {run_id} ({model} on {place}); follow it with: idcctl logs {run_id} -f"
            );
        } else {
            eprintln!("{run_id} was already submitted ({place}); nothing new was created");
        }
        if !self.wait {
            return Ok(ExitCode::Success);
        }
        let s = run::read_status(&sub.run)
            .await?
            .with_context(|| format!("{}: status.json disappeared", sub.run.url()))?;
        // Following returns the record as the run ended; how it ended is said there.
        if follow_any(&sub.run, s, &target, None).await?.phase != Phase::Succeeded {
            return Ok(ExitCode::Failure);
        }
        let r = run::read_report(&sub.run).await?;
        print_render(&r, OutputFormat::Table, reports::summary_text)
    }
}

/// `run X succeeded: reason`.
fn ended(s: &RunStatus) -> String {
    let reason = s.reason.clone().unwrap_or_default();
    format!("run {} {}: {reason}", s.run_id, name_of(&s.phase))
}

/// Follows a run's log until it ends, on whichever backend it runs, then says how it ended.
async fn follow_any(
    run: &Store,
    s: RunStatus,
    target: &Target,
    only: Option<u32>,
) -> anyhow::Result<RunStatus> {
    let s = follow::follow(run, s, target, only, &mut |o| match o {
        follow::Output::Text(t) => print!("{t}"),
        follow::Output::Notice(n) => eprintln!("{n}"),
    })
    .await?;
    eprintln!("{}", ended(&s));
    Ok(s)
}

#[derive(Subcommand, Debug)]
pub enum InternalCommand {
    /// Supervise a run's worker on the local backend (started by `submit`).
    Supervise {
        #[arg(long)]
        run: String,
    },
    /// Drive a stored sweep from a pod (the Job `sweep run --in-cluster` creates).
    DriveSweep {
        /// The sweep's folder, `s3://bucket/prefix/sweeps/<name>`.
        #[arg(long)]
        sweep: String,
    },
}

impl InternalCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let url = match self {
            InternalCommand::DriveSweep { sweep } => {
                return super::sweep::drive_stored(&sweep).await;
            }
            InternalCommand::Supervise { run } => run,
        };
        let run = Store::open(&url)?;
        match local::supervise(&run, &url, &idc::track::MirrorEnd).await {
            Ok(Phase::Succeeded) => Ok(ExitCode::Success),
            Ok(_) => Ok(ExitCode::Failure),
            Err(e) => {
                local::record_failure(&run, &e).await;
                Err(e.into())
            }
        }
    }
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    run: String,
    #[arg(short = 'f', long)]
    follow: bool,
    /// Show this attempt (1-based) instead of the latest.
    #[arg(long)]
    attempt: Option<u32>,
    #[command(flatten)]
    storage: StorageArg,
    #[command(flatten)]
    cluster: ClusterArgs,
}

impl LogsArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let (run, s) = run::open(&self.storage.open()?, &self.run).await?;
        let target = self.cluster.target();
        if self.follow {
            follow_any(&run, s, &target, self.attempt).await?;
            return Ok(ExitCode::Success);
        }
        match follow::read(&run, &s, &target, self.attempt).await? {
            Some(text) => print!("{text}"),
            None => eprintln!(
                "no log yet for attempt {} of {} ({})",
                self.attempt.unwrap_or(s.attempts.max(1)),
                self.run,
                name_of(&s.phase)
            ),
        }
        Ok(ExitCode::Success)
    }
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    run: String,
    #[command(flatten)]
    storage: StorageArg,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[arg(short = 'o', long, value_parser = choice::<OutputFormat>(), default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

impl StatusArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let root = self.storage.open()?;
        let run = run::run_store(&root, &self.run);
        let clusters = Clusters::new(self.cluster.target());
        let (p, warning) =
            listing::progress(&run, &clusters)
                .await?
                .ok_or_else(|| RunError::NotFound {
                    run_id: self.run.clone(),
                    bucket: root.url().to_string(),
                })?;
        // The bucket still knows the last recorded phase and the metrics.
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        print_render(&p, self.output, listing::status_text)
    }
}

/// Which runs `list` shows.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Show every run (default: the newest --limit).
    #[arg(long, conflicts_with = "limit")]
    all: bool,
    /// Show at most this many runs, newest first.
    #[arg(long, default_value_t = listing::DEFAULT_LIMIT)]
    limit: usize,
    /// Only runs in these phases (as they are now), e.g. --phase running,pending.
    #[arg(long, value_delimiter = ',')]
    phase: Vec<Phase>,
    /// Only runs of this experiment (the manifest's name).
    #[arg(short = 'e', long)]
    experiment: Option<String>,
    #[command(flatten)]
    storage: StorageArg,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[arg(short = 'o', long, value_parser = choice::<OutputFormat>(), default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

impl ListArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let opts = ListOptions {
            limit: (!self.all).then_some(self.limit),
            phases: self.phase,
            experiment: self.experiment,
        };
        let clusters = Clusters::new(self.cluster.target());
        let found = listing::list(&self.storage.open()?, &opts, &clusters).await?;
        for w in &found.warnings {
            eprintln!("warning: {w}");
        }
        if found.more {
            let n = found.rows.len();
            eprintln!("showing the newest {n} run(s); --all or --limit N for more");
        }
        print_render(&found.rows, self.output, |rows| listing::table(rows))
    }
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    run: String,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write an HTML report to this folder: index.html and its plots (SVG); two-class
    /// runs get slide maps of their test patients in DIR/slides/.
    #[arg(long, value_name = "DIR")]
    html: Option<PathBuf>,
    /// Slide maps of only the N test patients with most patches (default: all).
    #[arg(long, value_name = "N", requires = "html")]
    slides: Option<usize>,
    #[command(flatten)]
    storage: StorageArg,
    #[arg(short = 'o', long, value_parser = choice::<OutputFormat>(), default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

impl ReportArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let root = self.storage.open()?;
        let (run, s) = run::open(&root, &self.run).await?;
        let bytes = run::report_bytes(&run, &s).await?;
        if let Some(dir) = &self.out {
            run::save_report(&run, &bytes, dir).await?;
            eprintln!("wrote report.json and metrics.jsonl to {}", dir.display());
        }
        print_render(
            &run::parse_report(&run, &bytes)?,
            self.output,
            reports::summary_text,
        )?;
        let Some(dir) = self.html else {
            return Ok(ExitCode::Success);
        };
        let run = reports::load_run(&root, &self.run).await?;
        let ds = reports::load_dataset(&run).await;
        let maps = reports::load_slides(&root, &run, &ds, self.slides).await;
        for note in ds.notes.iter().chain(maps.iter().flat_map(|m| &m.notes)) {
            eprintln!("warning: {note}");
        }
        let w = html::write_run_report(&dir, &run, &ds, maps.as_ref())?;
        let shown = match &maps {
            Some(m) => format!(" and slide maps of {} test patients", m.slides.len()),
            None => String::new(),
        };
        eprintln!(
            "wrote {} with {} plots, {} misclassified patches{shown}",
            w.page.display(),
            w.plots.len(),
            ds.patches.len()
        );
        Ok(ExitCode::Success)
    }
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The runs (two or more).
    #[arg(required = true, num_args = 2..)]
    runs: Vec<String>,
    /// Also write an HTML page with overlay plots: a .html file, or a folder for index.html.
    #[arg(long, value_name = "FILE_OR_DIR")]
    html: Option<PathBuf>,
    #[command(flatten)]
    storage: StorageArg,
    #[arg(short = 'o', long, value_parser = choice::<OutputFormat>(), default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

impl CompareArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let root = self.storage.open()?;
        let mut data = Vec::with_capacity(self.runs.len());
        for id in &self.runs {
            data.push(reports::load_run(&root, id).await?);
        }
        let c = compare::compare(&data);
        if let Some(target) = self.html {
            let w = html::write_comparison(&target, &data, &c)?;
            eprintln!("wrote {} with {} plots", w.page.display(), w.plots.len());
        }
        print_render(&c, self.output, compare::table)
    }
}

/// A command on one run: cancel, resume.
#[derive(Args, Debug)]
pub struct RunArgs {
    run: String,
    #[command(flatten)]
    storage: StorageArg,
    #[command(flatten)]
    cluster: ClusterArgs,
}

impl RunArgs {
    /// Starts a stopped (cancelled, failed or lost) run again; the worker resumes from its
    /// checkpoint.
    pub async fn resume(self) -> anyhow::Result<ExitCode> {
        let (run, s) = run::open(&self.storage.open()?, &self.run).await?;
        backend::resume(&run, s, &self.cluster.target()).await?;
        let id = &self.run;
        eprintln!("resumed {id}; follow it with: idcctl logs {id} -f");
        Ok(ExitCode::Success)
    }

    pub async fn cancel(self) -> anyhow::Result<ExitCode> {
        let (run, s) = run::open(&self.storage.open()?, &self.run).await?;
        let id = &self.run;
        match backend::cancel_and_wait(&run, s, &self.cluster.target()).await? {
            CancelEnd::AlreadyEnded(s) => eprintln!(
                "run {id} already {}: {}; nothing was cancelled",
                name_of(&s.phase),
                s.reason.unwrap_or_default()
            ),
            CancelEnd::JobDeleted => {
                eprintln!("cancelled {id}: its Job was deleted; the worker checkpoints on SIGTERM")
            }
            CancelEnd::Ended(s) => eprintln!(
                "run {id} {}: {}",
                name_of(&s.phase),
                s.reason.unwrap_or_default()
            ),
            CancelEnd::Requested { signalled: true } => {
                eprintln!("cancel requested for {id}; the worker was signalled")
            }
            CancelEnd::Requested { signalled: false } => {
                eprintln!("cancel requested for {id}; no process of it was running")
            }
        }
        Ok(ExitCode::Success)
    }
}

#[derive(Subcommand, Debug)]
pub enum TrackCommand {
    /// Send MLflow what it lacks of each run: params, tags, metrics, status, and report.json,
    /// metrics.jsonl and the HTML report as artifacts. Idempotent.
    Sync(SyncArgs),
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// The runs.
    #[arg(required = true)]
    runs: Vec<String>,
    /// The tracking server (default: the run's manifest's, else MLFLOW_TRACKING_URI).
    #[arg(long)]
    uri: Option<String>,
    /// The MLflow experiment (default: the run's manifest's, else its name).
    #[arg(long)]
    experiment: Option<String>,
    #[command(flatten)]
    storage: StorageArg,
}

impl SyncArgs {
    /// Each run's MLflow mirror brought up to date.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let root = self.storage.open()?;
        let o = idc::track::TargetOverride {
            uri: self.uri,
            experiment: self.experiment,
        };
        for run in &self.runs {
            let s = idc::track::sync(&root, run, &o).await?;
            eprintln!(
                "{run}: MLflow run {} in experiment {} {} ({} metric points and {} artifacts sent)",
                s.mlflow_run_id,
                s.experiment_id,
                if s.created { "made" } else { "up to date" },
                s.metrics_sent,
                s.artifacts_sent
            );
            if let Some(why) = &s.artifacts_skipped {
                eprintln!("{run}: artifacts not uploaded: {why}");
            }
            println!("{}", s.mlflow_run_id);
        }
        Ok(ExitCode::Success)
    }
}

#[derive(Args, Debug)]
pub struct TensorboardArgs {
    /// The runs.
    #[arg(required = true)]
    runs: Vec<String>,
    /// The folder TensorBoard reads: each run's events go to DIR/<run>/.
    #[arg(long, value_name = "DIR")]
    logdir: PathBuf,
    #[command(flatten)]
    storage: StorageArg,
}

impl TensorboardArgs {
    /// Writes each run's event file to `logdir/<run>/`, whole (a temporary file renamed over it).
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let root = self.storage.open()?;
        let mut written = 0;
        for run in &self.runs {
            let Some((bytes, origin)) = tensorboard::events(&root, run).await? else {
                eprintln!("{run}: nothing logged yet, skipped");
                continue;
            };
            let name = std::path::Path::new(idc::layout::run::TENSORBOARD)
                .file_name()
                .expect("a file name");
            let path = self.logdir.join(run).join(name);
            idc::output::write_file_whole(&path, &bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let made = match origin {
                Origin::Worker => "",
                Origin::Records => " (made from metrics.jsonl: the run predates event files)",
            };
            eprintln!("{run}: {} bytes of events{made}", bytes.len());
            written += 1;
        }
        if written == 0 {
            return Err(UserError("none of the runs has logged anything yet".into()).into());
        }
        println!("tensorboard --logdir {}", self.logdir.display());
        Ok(ExitCode::Success)
    }
}
