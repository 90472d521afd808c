//! Sweep commands: `idcctl sweep run FILE` drives a hyperparameter sweep in the foreground,
//! `idcctl sweep status NAME` shows its trials and the best one, `idcctl sweep validate FILE`
//! checks a sweep manifest.

use super::{UserError, runs};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use idc::exit::ExitCode;
use idc::layout;
use idc::output::{self, OutputFormat};
use idc::store::Store;
use idc::sweep::driver::{self, DriveOptions, Ending};
use idc::sweep::state::{self, Driver, SweepState, TrialState};
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
    /// Show a sweep's trials (parameters, state, objective, epochs) and its best trial.
    Status {
        /// The sweep's name.
        name: String,
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
    #[arg(long)]
    cancel_on_exit: bool,
    /// Seconds between two looks at the running trials.
    #[arg(long, default_value_t = 5.0)]
    poll: f64,
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
            output,
        } => status(storage, name, output).await,
        SweepCommand::Validate { file } => validate(&file),
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
    };
    let mut notice = |line: String| eprintln!("{line}");
    let (st, ending) = driver::drive(&sweep, &text, &opts, &stop, &mut notice).await?;
    print!("{}", render(&sweep, &st, None, args.output));
    match ending {
        Ending::Finished => Ok(ExitCode::Success),
        Ending::Stopped { running, cancelled } => {
            let file = args.file.display();
            if running == 0 {
                eprintln!("stopped; rerun `idcctl sweep run {file}` to go on");
            } else if cancelled {
                eprintln!(
                    "stopped; {running} running trial(s) were cancelled after a checkpoint: rerun `idcctl sweep run {file}` to resume them and go on"
                );
            } else {
                eprintln!(
                    "stopped; {running} trial(s) keep running on the backend: rerun `idcctl sweep run {file}` to re-attach and go on (or idcctl cancel <run>)"
                );
            }
            Ok(ExitCode::Interrupted)
        }
    }
}

async fn status(
    storage: runs::StorageArg,
    name: String,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let root = Store::open(&storage.storage)?;
    let dir = state::sweep_store(&root, &name);
    let key = layout::sweep::MANIFEST;
    let Some(text) = dir.get_opt(key).await? else {
        return Err(UserError(format!(
            "no sweep {name} in {} (no {})",
            root.url(),
            dir.url_of(key)
        ))
        .into());
    };
    let sweep = manifest::parse(&String::from_utf8_lossy(&text), &dir.url_of(key))?;
    let st = state::read_state(&dir)
        .await?
        .unwrap_or_else(|| SweepState::new(&name));
    let driver = state::read_driver(&dir).await?.filter(Driver::alive);
    print!("{}", render(&sweep, &st, Some(driver), format));
    Ok(ExitCode::Success)
}

/// The sweep's trials as a table (with the best trial), or its record as JSON/YAML.
/// `driver`: for `status`, who drives the sweep now (`Some(None)`: nobody).
fn render(
    sweep: &Sweep,
    st: &SweepState,
    driver: Option<Option<Driver>>,
    format: OutputFormat,
) -> String {
    let best = st.best(sweep);
    let count = |s: TrialState| st.trials.iter().filter(|t| t.state == s).count();
    let value = serde_json::json!({
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
        "driver": driver.clone().flatten(),
        "best": best,
        "trials": st.trials,
    });
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
        match (&driver, &st.finished_at) {
            (_, Some(at)) => out += &format!("finished at {at}\n"),
            (Some(Some(d)), None) => {
                out += &format!(
                    "driven by idcctl pid {} on {} (state as of {})\n",
                    d.process.pid, d.process.host, st.updated_at
                )
            }
            (Some(None), None) => {
                out += &format!(
                    "not being driven (state as of {}): run `idcctl sweep run <its manifest>` to go on\n",
                    st.updated_at
                )
            }
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
            }
            None => out += "best: no trial has completed yet\n",
        }
        out
    })
}
