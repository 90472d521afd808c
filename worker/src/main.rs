//! `idc-worker`: the training worker that runs on the GPU node (or as a local child process).

mod augment;
mod bench;
mod data;
mod error;
mod export;
mod model;
mod optim;
mod predict;
mod runlog;
mod sampler;
mod shim;
mod slides;
mod step;
mod track;
mod train;

use clap::{Parser, Subcommand};
use error::WorkerError;
use idc::attempt::AttemptRecord;
use idc::exit::ExitCode;
use idc::exit::ProcessExitCode;
use idc::spec::RunSpec;
use idc::store::Store;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Trains IDC classifiers with libtorch from a dataset staged by `idcctl stage`.
///
/// Exit codes: 0 success, 1 failure (retrying may help), 2 bad input (spec or data), 3 stopped
/// on SIGTERM after writing a checkpoint (rerun to resume).
#[derive(Parser, Debug)]
#[command(name = "idc-worker", disable_version_flag = true)]
struct Cli {
    /// Print the worker's version, the libtorch it was built against and whether CUDA is usable.
    #[arg(short = 'V', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train and evaluate one run; resumes from the run's latest checkpoint if there is one.
    Run {
        /// The run's folder in the bucket (holding spec.yaml), e.g. s3://bucket/runs/cnn-1.
        #[arg(long, required_unless_present = "spec")]
        run: Option<String>,
        /// A spec file to run by hand instead of the run's spec.yaml.
        #[arg(long, requires = "out")]
        spec: Option<PathBuf>,
        /// Where results go when --spec is used.
        #[arg(long)]
        out: Option<String>,
    },
    /// Apply a run's checkpoint to a prediction job's images (written by `idcctl predict`).
    Predict {
        /// The prediction job's folder (holding spec.json), e.g.
        /// s3://bucket/runs/cnn-1/predictions/0a1b2c3d4e5f.
        #[arg(long)]
        job: String,
    },
    /// Apply a run's checkpoint to the whole-slide images of a slide job (written by `idcctl
    /// predict`): its slides, or those of one index of a Kubernetes Indexed Job.
    PredictSlides {
        /// The slide job's folder (holding spec.json).
        #[arg(long)]
        job: String,
        /// The index whose slides to read [default: $JOB_COMPLETION_INDEX, else every slide].
        #[arg(long)]
        index: Option<u32>,
    },
    /// Trace a run's best checkpoint into a TorchScript file for WSInfer (written by `idcctl
    /// export`): it takes images normalized with the dataset's statistics and returns one logit
    /// per class.
    ExportTorchscript {
        /// A prediction job's spec (JSON, as `idcctl predict` writes spec.json) naming the run,
        /// its checkpoint, model, classes, image shape and statistics; its input is not read.
        #[arg(long)]
        spec: PathBuf,
        /// Where the TorchScript file goes.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print training images/s per model and batch size on this machine's device.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("{}", version_text());
        return ExitCode::Success.into();
    }
    let result = match cli.command {
        Some(Command::Run { run, spec, out }) => run_cmd(run, spec, out),
        Some(Command::Predict { job }) => predict::run(&job).map(|_| ExitCode::Success),
        Some(Command::PredictSlides { job, index }) => slides::run(&job, index),
        Some(Command::ExportTorchscript { spec, out }) => {
            export::run(&spec, &out).map(|_| ExitCode::Success)
        }
        Some(Command::Bench(args)) => bench::run(&args).map(|_| ExitCode::Success),
        None => {
            eprintln!("nothing to do: see `idc-worker --help`");
            Ok(ExitCode::UserError)
        }
    };
    match result {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("error: {e}");
            e.process_exit_code().into()
        }
    }
}

fn run_cmd(
    run: Option<String>,
    spec: Option<PathBuf>,
    out: Option<String>,
) -> Result<ExitCode, WorkerError> {
    let rt =
        tokio::runtime::Runtime::new().map_err(WorkerError::io("starting the async runtime"))?;
    let (spec, out) = match (spec, run) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| WorkerError::BadInput(format!("{}: {e}", file.display())))?;
            let spec = parse_spec(&text, &file.display().to_string())?;
            let out = Store::open(&out.expect("clap requires --out with --spec"))?;
            (spec, out)
        }
        (None, Some(url)) => {
            let out = Store::open(&url)?;
            let text = rt.block_on(out.get(idc::layout::run::SPEC))?;
            (
                parse_spec(
                    &String::from_utf8_lossy(&text),
                    &out.url_of(idc::layout::run::SPEC),
                )?,
                out,
            )
        }
        (None, None) => unreachable!("clap requires --run or --spec"),
    };
    // The launcher's number for this attempt (the local supervisor passes it); else the next
    // after the attempts whose logs the bucket holds, claimed below before any work.
    let attempt = match std::env::var(idc::spec::ATTEMPT_ENV) {
        Ok(v) => v.parse::<u32>().ok().filter(|&n| n >= 1).ok_or_else(|| {
            WorkerError::BadInput(format!(
                "{}={v} is not an attempt number (1, 2, ...)",
                idc::spec::ATTEMPT_ENV
            ))
        })?,
        Err(_) => rt.block_on(out.list(idc::layout::run::LOGS))?.len() as u32 + 1,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        rt.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            eprintln!("stop requested: finishing the step, then writing a checkpoint");
            stop.store(true, Ordering::SeqCst);
        });
    }
    let log = runlog::RunLog::new(attempt);
    // On Kubernetes the Job passes the pod's name: it ties this attempt's log to its pod.
    let pod = std::env::var("IDC_POD_NAME").ok();
    let host = pod
        .as_ref()
        .map(|p| format!("pod {p}"))
        .unwrap_or_else(|| format!("process {}", std::process::id()));
    log.line(&format!("attempt {attempt} of run {}, {host}", spec.run_id));
    // Written before any work, so that an attempt killed while loading keeps its number; the
    // record outlives the pod (an eviction or a Job's TTL deletes it), so idcctl numbers and
    // explains attempts from it.
    rt.block_on(log.flush(&out))?;
    let record = AttemptRecord::starting(attempt, pod);
    rt.block_on(idc::attempt::write(&out, &record))?;
    let out_for_record = out.clone();
    let mut trainer = train::Trainer::new(spec, out, &rt, log, stop, attempt);
    let result = match trainer.run() {
        Ok(train::Outcome::Finished) => Ok(ExitCode::Success),
        Ok(train::Outcome::Preempted) => Ok(ExitCode::Preempted),
        Err(e) => {
            // The reason belongs in the run's log in the bucket too, where `idcctl logs` reads it.
            trainer.log_failure(&e);
            Err(e)
        }
    };
    let (code, how) = match &result {
        Ok(c) => (*c as i32, idc::attempt::describe_exit(*c as i32)),
        Err(e) => (e.process_exit_code() as i32, format!("failed: {e}")),
    };
    if let Err(e) = rt.block_on(idc::attempt::write(
        &out_for_record,
        &record.ended_with(code, how),
    )) {
        eprintln!("warning: could not record the attempt's end in the bucket: {e}");
    }
    result
}

fn parse_spec(text: &str, origin: &str) -> Result<RunSpec, WorkerError> {
    let spec: RunSpec =
        serde_yaml::from_str(text).map_err(|e| WorkerError::BadInput(format!("{origin}: {e}")))?;
    spec.train
        .validate()
        .map_err(|e| WorkerError::BadInput(format!("{origin}: {e}")))?;
    Ok(spec)
}

fn version_text() -> String {
    let cuda = if tch::Cuda::is_available() {
        format!(
            "available ({} device(s), cuDNN {})",
            tch::Cuda::device_count(),
            if tch::Cuda::cudnn_is_available() {
                "yes"
            } else {
                "no"
            }
        )
    } else {
        "not available".to_string()
    };
    format!(
        "idc-worker {}\nlibtorch {} (built against)\nshard format v{}\nCUDA {}",
        env!("CARGO_PKG_VERSION"),
        env!("IDC_LIBTORCH_VERSION"),
        idc::shard::FORMAT_VERSION,
        cuda
    )
}
