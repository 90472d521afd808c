//! Sweep commands: `idcctl sweep run FILE` drives a hyperparameter sweep in the foreground (or,
//! with `--in-cluster`, creates a Job that drives it), `idcctl sweep status NAME` shows its
//! trials, the running ones as their runs are now, and the best one with its curve, `sweep
//! report NAME` summarizes it (and `--html` writes its page), `sweep logs`/`sweep cancel`
//! follow and stop an in-cluster driver, `idcctl sweep validate FILE` checks a sweep manifest;
//! `idcctl internal drive-sweep` is what that Job runs.

use super::runs::{ClusterArgs, StorageArg};
use super::{UserError, choice, on_interrupt, print_object, print_render};
use clap::{Args, Subcommand};
use idc::backend::Target;
use idc::backend::kube::ClusterDefaults;
use idc::exit::ExitCode;
use idc::layout;
use idc::output::{OutputFormat, name_of};
use idc::report::sweep as sweep_report;
use idc::store::Store;
use idc::sweep::driver::{self, DriveOptions};
use idc::sweep::state::{self, DRIVER_TIMEOUT_S};
use idc::sweep::view::{self, SweepView};
use idc::sweep::{Sweep, in_cluster, live, manifest};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum SweepCommand {
    /// Run a sweep manifest in the foreground until all its trials have ended. Rerun the same
    /// file after a stop or crash: finished trials are kept, running ones re-attached.
    Run(RunArgs),
    /// Show a sweep's trials (parameters, state, objective, epochs), the running ones as their
    /// runs are now (phase, epochs so far, latest objective), and its best trial with its curve.
    Status {
        /// The sweep's name.
        name: String,
        #[command(flatten)]
        storage: StorageArg,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(short = 'o', long, value_parser = choice::<OutputFormat>(), default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Summarize a sweep: its best trial with its curve, and the share of the objective's
    /// variance each parameter explains. With --html, also write its page: objective per trial,
    /// parameter importance, parallel coordinates, the best trial's curve, the trials.
    Report {
        /// The sweep's name.
        name: String,
        /// Write the HTML page (one self-contained index.html) to --out.
        #[arg(long)]
        html: bool,
        /// The page's folder [default: ./<NAME>-report].
        #[arg(long, value_name = "DIR", requires = "html")]
        out: Option<PathBuf>,
        #[command(flatten)]
        storage: StorageArg,
        #[arg(short = 'o', long, value_parser = choice::<OutputFormat>(), default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Check a sweep manifest without running it (every searched value is tried on the base).
    Validate {
        /// The sweep manifest (YAML).
        file: PathBuf,
    },
    /// Print the log of a sweep's in-cluster driver (`sweep run --in-cluster`). Ctrl-C only
    /// stops following; the sweep goes on.
    Logs {
        /// The sweep's name.
        name: String,
        /// Follow the log until the driver's Job has finished.
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Stop a sweep's in-cluster driver by deleting its Job. Running trials keep running; rerun
    /// `sweep run` (with or without --in-cluster) to go on.
    Cancel {
        /// The sweep's name.
        name: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The sweep manifest (`kind: Sweep`).
    file: PathBuf,
    /// Override the base experiment's storage (the bucket URL), for trials and sweep state.
    #[arg(long)]
    storage: Option<String>,
    /// On Ctrl-C, cancel the running trials (they checkpoint); the next `sweep run` resumes
    /// them. Without it they keep running on the backend and the next `sweep run` re-attaches.
    #[arg(long, conflicts_with = "in_cluster")]
    cancel_on_exit: bool,
    /// Seconds between two looks at the running trials.
    #[arg(long, default_value_t = 5.0)]
    poll: f64,
    /// Drive the sweep from a Job in the cluster (the idcctl image, the chart's service
    /// account) instead of this terminal; needs `backend: kubernetes` and an s3:// bucket.
    #[arg(long)]
    in_cluster: bool,
    /// With --in-cluster: print the driver's Job instead of creating it (no cluster needed).
    #[arg(long, requires = "in_cluster")]
    dry_run: bool,
    /// Output format of the final summary.
    #[arg(short = 'o', long, value_parser = choice::<OutputFormat>(), default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(flatten)]
    cluster: ClusterArgs,
}

impl SweepCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            SweepCommand::Run(args) => args.run().await,
            SweepCommand::Status {
                name,
                storage,
                cluster,
                output,
            } => {
                let root = storage.open()?;
                let (sweep, st) = state::open(&root, &name).await?;
                let target = cluster.target();
                let dir = state::sweep_store(&root, &name);
                let driving = match st.finished_at {
                    None => Some(in_cluster::driving(&dir, &sweep, &target).await?),
                    Some(_) => None,
                };
                // The runs are asked, as `idcctl list` does; the sweep's record is the driver's.
                let mut warn = |w: String| eprintln!("{w}");
                let running = live::running_trials(&root, &sweep, &st, &target, &mut warn).await?;
                let v = SweepView::new(&sweep, &st, driving.as_ref(), Some(&running));
                print!("{}", v.render(output));
                Ok(ExitCode::Success)
            }
            SweepCommand::Report {
                name,
                html,
                out,
                storage,
                output,
            } => {
                let (sweep, st) = state::open(&storage.open()?, &name).await?;
                if html {
                    let dir = out.unwrap_or_else(|| PathBuf::from(format!("{name}-report")));
                    let w = sweep_report::write_sweep_report(&dir, &sweep, &st)?;
                    for n in &w.notes {
                        eprintln!("note: {n}");
                    }
                    eprintln!("wrote {} with {} plots", w.page.display(), w.plots);
                }
                let s = sweep_report::summary(&sweep, &st);
                print_render(&s, output, sweep_report::summary_text)
            }
            SweepCommand::Validate { file } => validate(&file),
            SweepCommand::Logs {
                name,
                follow,
                cluster,
            } => {
                let cluster = cluster.target().connect().await?;
                let (out, notice) = (&mut |l: &str| println!("{l}"), &mut |n: String| {
                    eprintln!("{n}")
                });
                in_cluster::driver_log(&cluster, &name, follow, out, notice).await?;
                Ok(ExitCode::Success)
            }
            SweepCommand::Cancel { name, cluster } => {
                let cluster = cluster.target().connect().await?;
                let job = idc::backend::kube::job::sweep_driver_job_name(&name);
                let ns = &cluster.namespace;
                if !in_cluster::cancel(&cluster, &name).await? {
                    return Err(UserError(format!(
                        "no driver Job {job} in namespace {ns}: sweep {name} is not driven from there"
                    ))
                    .into());
                }
                eprintln!(
                    "deleted driver Job {job} in namespace {ns}: the driver stops, running trials keep running; rerun `idcctl sweep run` to go on"
                );
                Ok(ExitCode::Success)
            }
        }
    }
}

/// `idcctl validate FILE` (or `sweep validate FILE`) for a sweep manifest.
pub fn validate(file: &Path) -> anyhow::Result<ExitCode> {
    let (s, _) = manifest::load(file)?;
    println!(
        "{}: valid: sweep {}, {} parameters, {} trials ({} at a time), {} sampler, {} pruner, {} {} of {} on the {} backend",
        file.display(),
        s.name,
        s.space.params.len(),
        s.max_trials,
        s.parallelism,
        s.sampler.name(),
        s.pruner.name(),
        name_of(&s.objective.direction()),
        s.objective.metric_name(),
        s.base_experiment.train.model.name(),
        s.base_experiment.backend,
    );
    Ok(ExitCode::Success)
}

impl RunArgs {
    async fn run(self) -> anyhow::Result<ExitCode> {
        let (sweep, text) = manifest::load(&self.file)?;
        if self.in_cluster {
            return self.run_in_cluster(&sweep, &text).await;
        }
        if !(self.poll > 0.0 && self.poll.is_finite()) {
            return Err(UserError("--poll must be a positive number of seconds".into()).into());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let trials = match self.cancel_on_exit {
            true => "cancelling the running trials",
            false => "running trials keep running",
        };
        let what = format!("stopping the sweep loop; {trials} (Ctrl-C again to quit at once)");
        on_interrupt(what, stop.clone());
        let opts = DriveOptions {
            storage: self.storage,
            target: self.cluster.target(),
            poll: Duration::from_secs_f64(self.poll),
            cancel_on_exit: self.cancel_on_exit,
            lease_wait: Duration::ZERO,
        };
        let rerun = format!("idcctl sweep run {}", self.file.display());
        drive(&sweep, &text, &opts, &stop, self.output, &rerun).await
    }

    /// `sweep run --in-cluster`: stores the manifest and creates the driver's Job.
    async fn run_in_cluster(&self, sweep: &Sweep, text: &str) -> anyhow::Result<ExitCode> {
        let storage = self.storage.as_deref();
        if self.dry_run {
            let job = in_cluster::driver_job(sweep, text, storage, &ClusterDefaults::default())?;
            return print_object(&job, self.output);
        }
        let cluster = self.cluster.target().connect().await?;
        let mut notice = |line: String| eprintln!("{line}");
        let d = in_cluster::submit(sweep, text, storage, &cluster, &mut notice).await?;
        let (name, ns, job) = (&sweep.name, &d.namespace, &d.name);
        if d.created {
            eprintln!("sweep {name}: created driver Job {job} in namespace {ns}");
        } else {
            eprintln!(
                "sweep {name}: driver Job {job} is already in namespace {ns} (same manifest); nothing new was created"
            );
        }
        let root = in_cluster::root_of(&d.sweep_url, name).unwrap_or_default();
        eprintln!(
            "follow it with: idcctl sweep logs {name} -f -n {ns}  (Ctrl-C stops following, not the sweep)\n\
             trials: idcctl sweep status {name} --storage {root}\n\
             stop it: idcctl sweep cancel {name} -n {ns}  (running trials keep running)"
        );
        Ok(ExitCode::Success)
    }
}

/// Drives the sweep until it ends or `stop` is set, then prints the summary and what to do.
async fn drive(
    sweep: &Sweep,
    text: &str,
    opts: &DriveOptions,
    stop: &AtomicBool,
    format: OutputFormat,
    rerun: &str,
) -> anyhow::Result<ExitCode> {
    let mut notice = |line: String| eprintln!("{line}");
    let (st, ending) = driver::drive(sweep, text, opts, stop, &mut notice).await?;
    print!("{}", SweepView::new(sweep, &st, None, None).render(format));
    match view::ending_note(&ending, rerun) {
        None => Ok(ExitCode::Success),
        Some(note) => {
            eprintln!("{note}");
            Ok(ExitCode::Interrupted)
        }
    }
}

/// `idcctl internal drive-sweep --sweep URL`: the in-cluster driver, on the stored manifest.
pub async fn drive_stored(url: &str) -> anyhow::Result<ExitCode> {
    let dir = Store::open(url)?;
    let key = layout::sweep::MANIFEST;
    let Some(bytes) = dir.get_opt(key).await? else {
        return Err(UserError(format!(
            "no sweep manifest at {}; `idcctl sweep run FILE --in-cluster` stores it before it creates this Job",
            dir.url_of(key)
        ))
        .into());
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let sweep = manifest::parse(&text, &dir.url_of(key))?;
    let root = in_cluster::root_of(dir.url(), &sweep.name).ok_or_else(|| {
        UserError(format!(
            "{url} is not the folder of sweep {} (…/{})",
            sweep.name,
            layout::sweep_prefix(&sweep.name)
        ))
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Deleting the Job (sweep cancel) sends SIGTERM: stop the loop and give up the lease.
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
            eprintln!("SIGTERM: stopping the sweep loop; running trials keep running");
            flag.store(true, Ordering::SeqCst);
        }
    });
    let opts = DriveOptions {
        storage: Some(root),
        // The pod's service account and namespace.
        target: Target::default(),
        poll: Duration::from_secs(5),
        cancel_on_exit: false,
        // A restarted driver's predecessor may have died holding the lease.
        lease_wait: Duration::from_secs(DRIVER_TIMEOUT_S as u64 + 10),
    };
    let rerun = format!("idcctl sweep run <manifest of {}> --in-cluster", sweep.name);
    drive(&sweep, &text, &opts, &stop, OutputFormat::Table, &rerun).await
}
