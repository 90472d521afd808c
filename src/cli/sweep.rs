//! Sweep commands: `idcctl sweep run FILE` drives a hyperparameter sweep in the foreground (or,
//! with `--in-cluster`, creates a Job that drives it), `idcctl sweep status NAME` shows its
//! trials, the running ones as their runs are now, and the best one with its curve, `sweep
//! report NAME` summarizes it (and `--html` writes its page), `sweep logs`/`sweep cancel`
//! follow and stop an in-cluster driver, `idcctl sweep validate FILE` checks a sweep manifest;
//! `idcctl internal drive-sweep` is what that Job runs.

use super::{UserError, runs};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use idc::backend::Target;
use idc::backend::kube::ClusterDefaults;
use idc::exit::ExitCode;
use idc::layout;
use idc::output::{self, OutputFormat};
use idc::report::sweep as sweep_report;
use idc::store::Store;
use idc::sweep::driver::{self, DriveOptions, Ending};
use idc::sweep::in_cluster;
use idc::sweep::live::{self, RunningTrial};
use idc::sweep::state::{self, DRIVER_TIMEOUT_S, SweepState, TrialState};
use idc::sweep::{Sweep, fmt_num, fmt_value, manifest, short_names};
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
        storage: runs::StorageArg,
        #[command(flatten)]
        cluster: runs::ClusterArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
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
        storage: runs::StorageArg,
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
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
        cluster: runs::ClusterArgs,
    },
    /// Stop a sweep's in-cluster driver by deleting its Job. Running trials keep running; rerun
    /// `sweep run` (with or without --in-cluster) to go on.
    Cancel {
        /// The sweep's name.
        name: String,
        #[command(flatten)]
        cluster: runs::ClusterArgs,
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
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(flatten)]
    cluster: runs::ClusterArgs,
}

pub async fn command(cmd: SweepCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SweepCommand::Run(args) => run(args).await,
        SweepCommand::Status {
            name,
            storage,
            cluster,
            output,
        } => status(storage, cluster, name, output).await,
        SweepCommand::Report {
            name,
            html,
            out,
            storage,
            output,
        } => {
            let dir = html.then(|| out.unwrap_or_else(|| PathBuf::from(format!("{name}-report"))));
            report(storage, &name, dir.as_deref(), output).await
        }
        SweepCommand::Validate { file } => validate(&file),
        SweepCommand::Logs {
            name,
            follow,
            cluster,
        } => logs(&name, follow, cluster.target()).await,
        SweepCommand::Cancel { name, cluster } => cancel(&name, cluster.target()).await,
    }
}

/// `idcctl validate FILE` for a sweep manifest: `None` when FILE is not one.
pub fn validate_if_sweep(file: &Path) -> Option<anyhow::Result<ExitCode>> {
    let text = std::fs::read_to_string(file).ok()?;
    manifest::is_sweep(&text).then(|| validate(file))
}

fn validate(file: &Path) -> anyhow::Result<ExitCode> {
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
        output::name_of(&s.objective.direction()),
        s.objective.metric_name(),
        s.base_experiment.train.model.name(),
        output::name_of(&s.base_experiment.backend),
    );
    Ok(ExitCode::Success)
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (sweep, text) = manifest::load(&args.file)?;
    if args.in_cluster {
        return run_in_cluster(&args, &sweep, &text).await;
    }
    if !(args.poll > 0.0 && args.poll.is_finite()) {
        return Err(UserError("--poll must be a positive number of seconds".into()).into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let cancel = args.cancel_on_exit;
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\ninterrupt: stopping the sweep loop; {} (Ctrl-C again to quit at once)",
                if cancel {
                    "cancelling the running trials"
                } else {
                    "running trials keep running"
                }
            );
            flag.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(ExitCode::Interrupted as i32);
            }
        }
    });
    let opts = DriveOptions {
        storage: args.storage.clone(),
        target: args.cluster.target(),
        poll: Duration::from_secs_f64(args.poll),
        cancel_on_exit: args.cancel_on_exit,
        lease_wait: Duration::ZERO,
    };
    let rerun = format!("idcctl sweep run {}", args.file.display());
    drive(&sweep, &text, &opts, &stop, args.output, &rerun).await
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
    print!("{}", render(sweep, &st, None, None, format));
    match ending {
        Ending::Finished => Ok(ExitCode::Success),
        Ending::Stopped { running, cancelled } => {
            if running == 0 {
                eprintln!("stopped; rerun `{rerun}` to go on");
            } else if cancelled {
                eprintln!(
                    "stopped; {running} running trial(s) were cancelled after a checkpoint: rerun `{rerun}` to resume them and go on"
                );
            } else {
                eprintln!(
                    "stopped; {running} trial(s) keep running on the backend: rerun `{rerun}` to re-attach and go on (or idcctl cancel <run>)"
                );
            }
            Ok(ExitCode::Interrupted)
        }
    }
}

/// `sweep run --in-cluster`: stores the manifest and creates the driver's Job.
async fn run_in_cluster(args: &RunArgs, sweep: &Sweep, text: &str) -> anyhow::Result<ExitCode> {
    let storage = args.storage.as_deref();
    if args.dry_run {
        let job = in_cluster::driver_job(sweep, text, storage, &ClusterDefaults::default())?;
        match args.output {
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&job)?),
            _ => print!("{}", serde_yaml::to_string(&job)?),
        }
        return Ok(ExitCode::Success);
    }
    let cluster = args.cluster.target().connect().await?;
    let mut notice = |line: String| eprintln!("{line}");
    let d = in_cluster::submit(sweep, text, storage, &cluster, &mut notice).await?;
    let name = &sweep.name;
    let ns = &d.namespace;
    if d.created {
        eprintln!(
            "sweep {name}: created driver Job {} in namespace {ns}",
            d.name
        );
    } else {
        eprintln!(
            "sweep {name}: driver Job {} is already in namespace {ns} (same manifest); nothing new was created",
            d.name
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

async fn logs(name: &str, follow: bool, target: Target) -> anyhow::Result<ExitCode> {
    let cluster = target.connect().await?;
    in_cluster::driver_log(
        &cluster,
        name,
        follow,
        &mut |line| println!("{line}"),
        &mut |n| eprintln!("{n}"),
    )
    .await?;
    Ok(ExitCode::Success)
}

async fn cancel(name: &str, target: Target) -> anyhow::Result<ExitCode> {
    let cluster = target.connect().await?;
    let job = idc::backend::kube::job::sweep_driver_job_name(name);
    if in_cluster::cancel(&cluster, name).await? {
        eprintln!(
            "deleted driver Job {job} in namespace {}: the driver stops, running trials keep running; rerun `idcctl sweep run` to go on",
            cluster.namespace
        );
        Ok(ExitCode::Success)
    } else {
        Err(UserError(format!(
            "no driver Job {job} in namespace {}: sweep {name} is not driven from there",
            cluster.namespace
        ))
        .into())
    }
}

async fn status(
    storage: runs::StorageArg,
    cluster: runs::ClusterArgs,
    name: String,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let root = Store::open(&storage.storage)?;
    let dir = state::sweep_store(&root, &name);
    let (sweep, st) = state::open(&root, &name).await?;
    let target = cluster.target();
    let driving = if st.finished_at.is_none() {
        Some(in_cluster::driving(&dir, &sweep, &target).await?)
    } else {
        None
    };
    // The runs are asked, as `idcctl list` does; the sweep's record is the driver's to write.
    let running =
        live::running_trials(&root, &sweep, &st, &target, &mut |w| eprintln!("{w}")).await?;
    print!(
        "{}",
        render(&sweep, &st, driving.as_ref(), Some(&running), format)
    );
    Ok(ExitCode::Success)
}

/// `idcctl sweep report NAME [--html --out DIR]`: the summary, and the page when asked.
async fn report(
    storage: runs::StorageArg,
    name: &str,
    html: Option<&Path>,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let root = Store::open(storage.url())?;
    let (sweep, st) = state::open(&root, name).await?;
    if let Some(dir) = html {
        let w = sweep_report::write_sweep_report(dir, &sweep, &st)?;
        for n in &w.notes {
            eprintln!("note: {n}");
        }
        eprintln!("wrote {} with {} plots", w.page.display(), w.plots);
    }
    let s = sweep_report::summary(&sweep, &st);
    print!("{}", output::render(&s, format, sweep_report::summary_text));
    Ok(ExitCode::Success)
}

/// The sweep's trials as a table (with the best trial and its curve), or its record as
/// JSON/YAML. `driving`: for `status` of an unfinished sweep, who drives it now; `running`:
/// for `status`, the running trials' runs as they are now.
fn render(
    sweep: &Sweep,
    st: &SweepState,
    driving: Option<&in_cluster::Driving>,
    running: Option<&[RunningTrial]>,
    format: OutputFormat,
) -> String {
    let best = st.best(sweep);
    let count = |s: TrialState| st.trials.iter().filter(|t| t.state == s).count();
    let mut value = serde_json::json!({
        "name": sweep.name,
        "objective": {
            "metric": sweep.objective.metric_name(),
            "direction": sweep.objective.direction(),
        },
        "sampler": sweep.sampler,
        "pruner": sweep.pruner,
        "max_trials": sweep.max_trials,
        "parallelism": sweep.parallelism,
        "created_at": st.created_at,
        "updated_at": st.updated_at,
        "finished_at": st.finished_at,
        "driver": match driving {
            Some(in_cluster::Driving::Lease(d)) => Some(d),
            _ => None,
        },
        "best": best,
        // The best trial's objective after each epoch (null where it was NaN).
        "best_curve": best.map(|b| b.intermediate.clone()),
        "trials": st.trials,
    });
    if let Some(r) = running {
        value["running"] = serde_json::json!(r);
    }
    if let Some(d) = driving {
        value["driving"] = serde_json::json!(d);
    }
    output::render(&value, format, |_| {
        let metric = sweep.objective.metric_name();
        let mut out = format!(
            "sweep {}: {} {}, {} sampler, {} pruner; {} of {} trials: {} running, {} completed, {} pruned, {} failed\n",
            sweep.name,
            output::name_of(&sweep.objective.direction()),
            metric,
            sweep.sampler.name(),
            sweep.pruner.name(),
            st.trials.len(),
            sweep.max_trials,
            count(TrialState::Running),
            count(TrialState::Completed),
            count(TrialState::Pruned),
            count(TrialState::Failed),
        );
        match (driving, &st.finished_at) {
            (_, Some(at)) => out += &format!("finished at {at}\n"),
            (Some(d), None) => out += &format!("{}\n", d.line(&sweep.name, &st.updated_at)),
            (None, None) => {}
        }
        let names = short_names(&sweep.space);
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        let mut header = vec![
            "trial".to_string(),
            "state".into(),
            metric.clone(),
            "epochs".into(),
        ];
        header.extend(names.iter().cloned());
        t.set_header(header);
        for tr in &st.trials {
            let mut row = vec![
                tr.id.clone(),
                output::name_of(&tr.state),
                tr.value.map(fmt_num).unwrap_or_default(),
                tr.intermediate.len().to_string(),
            ];
            row.extend(
                sweep
                    .space
                    .params
                    .iter()
                    .map(|p| tr.params.get(&p.path).map(fmt_value).unwrap_or_default()),
            );
            t.add_row(row);
        }
        out += &format!("{t}\n");
        for tr in st.trials.iter().filter(|t| t.state == TrialState::Failed) {
            out += &format!(
                "{} failed: {}\n",
                tr.id,
                tr.reason.clone().unwrap_or_default()
            );
        }
        if let Some(r) = running.filter(|r| !r.is_empty()) {
            out += "running now:\n";
            for t in r {
                out += &format!("  {}\n", running_line(t, &metric));
            }
        }
        match best {
            Some(b) => {
                let params: Vec<String> = sweep
                    .space
                    .params
                    .iter()
                    .map(|p| {
                        format!(
                            "{}: {}",
                            p.path,
                            b.params.get(&p.path).map(fmt_value).unwrap_or_default()
                        )
                    })
                    .collect();
                out += &format!(
                    "best: {} (run {}) {metric} {} at epoch {}\n  {}\n",
                    b.id,
                    b.run_id,
                    b.value.map(fmt_num).unwrap_or_default(),
                    b.best_epoch.unwrap_or(0),
                    params.join("\n  ")
                );
                out += &format!(
                    "best {} curve ({metric} by epoch): {}\n",
                    b.id,
                    sweep_report::curve_line(&b.intermediate)
                );
            }
            None => out += "best: no trial has completed yet\n",
        }
        out
    })
}

/// A running trial in a line: `t005 (run x-t005): running, epoch 2/3, roc_auc 0.81`.
fn running_line(t: &RunningTrial, metric: &str) -> String {
    let epochs = t
        .epochs
        .map(|e| e.to_string())
        .unwrap_or_else(|| "?".into());
    let mut line = format!(
        "{} (run {}): {}, epoch {}/{epochs}",
        t.trial, t.run_id, t.phase, t.epoch
    );
    if let Some(v) = t.latest {
        line += &format!(", {metric} {}", fmt_num(v));
    }
    if t.phase == "lost" {
        line += "; the driver resumes it at its next look (idcctl sweep run)";
    }
    line
}
