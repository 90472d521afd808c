//! Run commands: submit, logs, status, list, report, cancel, and the local backend's supervisor.

use super::UserError;
use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use idc::backend::kube::ClusterDefaults;
use idc::backend::{self, CancelOutcome, SubmitOptions, Target, follow, local};
use idc::exit::ExitCode;
use idc::experiment::{self, Backend};
use idc::layout::run as keys;
use idc::listing::{self, Clusters, ListOptions};
use idc::metrics::AnyReport as Report;
use idc::output::{self, OutputFormat};
use idc::run::{self, Phase, RunStatus};
use idc::store::Store;
use std::path::PathBuf;
use std::time::Duration;

/// The bucket runs live in.
#[derive(Args, Debug, Clone)]
pub struct StorageArg {
    /// The bucket URL (the manifest's `storage`).
    #[arg(long, env = "IDC_STORAGE", default_value = "file://./.idc/bucket")]
    pub storage: String,
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

impl StorageArg {
    /// The bucket URL.
    pub fn url(&self) -> &str {
        &self.storage
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
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
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
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Yaml)]
    output: OutputFormat,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum BackendArg {
    Local,
    Kubernetes,
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

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut exp = experiment::load(&args.file)?;
    if let Some(b) = args.backend {
        exp.backend = match b {
            BackendArg::Local => Backend::Local,
            BackendArg::Kubernetes => Backend::Kubernetes,
        };
    }
    if let Some(url) = &args.dataset {
        exp.dataset = experiment::DatasetRef {
            url: Some(url.clone()),
            source: None,
            name: None,
            format: None,
            class_names: None,
            split: None,
            undersized: None,
        };
    }
    let opts = SubmitOptions {
        run_id: args.run_id.clone(),
        storage: args.storage.clone(),
        target: args.cluster.target(),
    };
    if args.dry_run {
        let job = backend::render_job(&exp, &opts, &ClusterDefaults::default())?;
        match args.output {
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&job)?),
            _ => print!("{}", serde_yaml::to_string(&job)?),
        }
        return Ok(ExitCode::Success);
    }
    let sub = backend::submit(&exp, &opts).await?;
    let run_id = sub.run_id.clone();
    println!("{run_id}");
    if sub.created {
        eprintln!(
            "submitted {run_id} ({} on {}); follow it with: idcctl logs {run_id} -f",
            exp.train.model.name(),
            sub.place
        );
    } else {
        eprintln!(
            "{run_id} was already submitted ({}); nothing new was created",
            sub.place
        );
    }
    if !args.wait {
        return Ok(ExitCode::Success);
    }
    let target = args.cluster.target();
    let s = run::read_status(&sub.run)
        .await?
        .context("the run's status.json disappeared")?;
    follow_any(&sub.run, s, &target, None).await?;
    let s = run::read_status(&sub.run)
        .await?
        .expect("status written above");
    let s = backend::refresh(&sub.run, s, &target).await?;
    if s.phase == Phase::Succeeded {
        print_report(&sub.run, OutputFormat::Table).await?;
        Ok(ExitCode::Success)
    } else {
        eprintln!(
            "run {run_id} {}: {}",
            phase_name(s.phase),
            s.reason.unwrap_or_default()
        );
        Ok(ExitCode::Failure)
    }
}

/// Follows a run's log until it ends, on whichever backend it runs, then says how it ended.
async fn follow_any(
    run: &Store,
    s: RunStatus,
    target: &Target,
    only: Option<u32>,
) -> anyhow::Result<()> {
    let s = backend::follow::follow(run, s, target, only, &mut |o| match o {
        follow::Output::Text(t) => print!("{t}"),
        follow::Output::Notice(n) => eprintln!("{n}"),
    })
    .await?;
    eprintln!(
        "run {} {}: {}",
        s.run_id,
        phase_name(s.phase),
        s.reason.unwrap_or_default()
    );
    Ok(())
}

pub async fn supervise(run_url: &str) -> anyhow::Result<ExitCode> {
    let run = Store::open(run_url)?;
    match local::supervise(&run, run_url, &idc::track::MirrorEnd).await {
        Ok(Phase::Succeeded) => Ok(ExitCode::Success),
        Ok(_) => Ok(ExitCode::Failure),
        Err(e) => {
            local::record_failure(&run, &e).await;
            Err(e.into())
        }
    }
}

async fn open_run(storage: &StorageArg, run_id: &str) -> anyhow::Result<(Store, RunStatus)> {
    let root = Store::open(&storage.storage)?;
    let run = run::run_store(&root, run_id);
    let status = run::read_status(&run).await?.ok_or_else(|| {
        UserError(format!(
            "no run {run_id} in {} (see idcctl list)",
            root.url()
        ))
    })?;
    Ok((run, status))
}

pub async fn logs(
    storage: StorageArg,
    cluster: ClusterArgs,
    run_id: String,
    follow_: bool,
    attempt: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let (run, status) = open_run(&storage, &run_id).await?;
    let target = cluster.target();
    if follow_ {
        follow_any(&run, status, &target, attempt).await?;
        return Ok(ExitCode::Success);
    }
    match follow::read(&run, &status, &target, attempt).await? {
        Some(text) => print!("{text}"),
        None => eprintln!(
            "no log yet for attempt {} of {run_id} ({})",
            attempt.unwrap_or(status.attempts.max(1)),
            phase_name(status.phase)
        ),
    }
    Ok(ExitCode::Success)
}

fn phase_name(p: Phase) -> String {
    output::name_of(&p)
}

pub async fn status(
    storage: StorageArg,
    cluster: ClusterArgs,
    run_id: String,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let root = Store::open(&storage.storage)?;
    let run = run::run_store(&root, &run_id);
    let clusters = Clusters::new(cluster.target());
    let Some((p, warning)) = listing::progress(&run, &clusters).await? else {
        return Err(UserError(format!(
            "no run {run_id} in {} (see idcctl list)",
            root.url()
        ))
        .into());
    };
    // The bucket still knows the last recorded phase and the metrics.
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    print!(
        "{}",
        output::render(&p, format, |p| {
            let s = &p.status;
            let mut out = format!(
                "run {}  {}  ({} attempt(s) of {}; {})\n",
                s.run_id,
                phase_name(s.phase).to_uppercase(),
                s.attempts,
                s.max_attempts,
                s.reason.clone().unwrap_or_default()
            );
            match &p.last_epoch {
                Some(e) => {
                    out += &format!("epoch {}/{}: val {}\n", e.epoch, p.epochs, e.val);
                    if let Some((eta, left)) = p.eta() {
                        out += &format!(
                            "ETA about {eta:.0}s ({left} epochs left at {:.0}s each)\n",
                            e.duration_s
                        );
                    }
                }
                None => out += "no epoch finished yet\n",
            }
            if let Some(r) = p.images_per_s {
                out += &format!("training throughput {r:.0} images/s\n");
            }
            out
        })
    );
    Ok(ExitCode::Success)
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
}

pub async fn list(
    storage: StorageArg,
    cluster: ClusterArgs,
    which: ListArgs,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let root = Store::open(&storage.storage)?;
    let opts = ListOptions {
        limit: (!which.all).then_some(which.limit),
        phases: which.phase,
        experiment: which.experiment,
    };
    let found = listing::list(&root, &opts, &Clusters::new(cluster.target())).await?;
    for w in &found.warnings {
        eprintln!("warning: {w}");
    }
    if found.more {
        eprintln!(
            "showing the newest {} run(s); --all or --limit N for more",
            found.rows.len()
        );
    }
    print!(
        "{}",
        output::render(&found.rows, format, |rows| {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header([
                "run",
                "phase",
                "model",
                "backend",
                "best val F1",
                "duration",
                "created",
            ]);
            for r in rows {
                t.add_row([
                    r.run_id.clone(),
                    phase_name(r.phase),
                    r.model.clone(),
                    output::name_of(&r.backend),
                    r.best_val_f1.map(|f| format!("{f:.4}")).unwrap_or_default(),
                    r.duration_s
                        .map(|d| format!("{}m{:02}s", d / 60, d % 60))
                        .unwrap_or_default(),
                    r.created_at.clone(),
                ]);
            }
            format!("{t}\n")
        })
    );
    Ok(ExitCode::Success)
}

pub async fn report(
    storage: StorageArg,
    run_id: String,
    out: Option<PathBuf>,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let (run, s) = open_run(&storage, &run_id).await?;
    let Some(bytes) = run.get_opt(keys::REPORT).await? else {
        return Err(UserError(format!(
            "run {run_id} has no report yet ({}: {})",
            phase_name(s.phase),
            s.reason.unwrap_or_default()
        ))
        .into());
    };
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), &bytes)
            .with_context(|| format!("writing {}", dir.display()))?;
        if let Some(m) = run.get_opt(keys::METRICS).await? {
            std::fs::write(dir.join("metrics.jsonl"), &m)?;
        }
        eprintln!("wrote report.json and metrics.jsonl to {}", dir.display());
    }
    print_report(&run, format).await?;
    Ok(ExitCode::Success)
}

async fn print_report(run: &Store, format: OutputFormat) -> anyhow::Result<()> {
    let r: Report = serde_json::from_slice(&run.get(keys::REPORT).await?)
        .context("report.json is not readable")?;
    print!("{}", output::render(&r, format, idc::report::summary_text));
    Ok(())
}

/// Starts a stopped (cancelled, failed or lost) run again; the worker resumes from its checkpoint.
pub async fn resume(
    storage: StorageArg,
    cluster: ClusterArgs,
    run_id: String,
) -> anyhow::Result<ExitCode> {
    let (run, s) = open_run(&storage, &run_id).await?;
    backend::resume(&run, s, &cluster.target()).await?;
    eprintln!("resumed {run_id}; follow it with: idcctl logs {run_id} -f");
    Ok(ExitCode::Success)
}

pub async fn cancel(
    storage: StorageArg,
    cluster: ClusterArgs,
    run_id: String,
) -> anyhow::Result<ExitCode> {
    let (run, s) = open_run(&storage, &run_id).await?;
    let backend_kind = s.backend;
    let signalled = match backend::cancel(&run, s, &cluster.target()).await? {
        CancelOutcome::AlreadyEnded(s) => {
            eprintln!(
                "run {run_id} already {}: {}; nothing was cancelled",
                phase_name(s.phase),
                s.reason.unwrap_or_default()
            );
            return Ok(ExitCode::Success);
        }
        CancelOutcome::Requested { signalled } => signalled,
    };
    if backend_kind == Backend::Kubernetes {
        eprintln!("cancelled {run_id}: its Job was deleted; the worker checkpoints on SIGTERM");
        return Ok(ExitCode::Success);
    }
    // The supervisor records the end; wait for it briefly so the user sees the outcome.
    for _ in 0..100 {
        if let Some(s) = run::read_status(&run).await?
            && s.phase.is_terminal()
        {
            eprintln!(
                "run {run_id} {}: {}",
                phase_name(s.phase),
                s.reason.unwrap_or_default()
            );
            return Ok(ExitCode::Success);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if signalled {
        eprintln!("cancel requested for {run_id}; the worker was signalled");
    } else {
        eprintln!("cancel requested for {run_id}; no process of it was running");
    }
    Ok(ExitCode::Success)
}
