//! Command-line interface of `idcctl`: argument parsing, progress display and exit codes.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use idc::dataset::decode::Undersized;
use idc::dataset::split::{SplitMethod, SplitOptions, SplitSize};
use idc::dataset::synth::{self, SynthOptions};
use idc::exit::{ExitCode, ProcessExitCode};
use idc::output::{self, OutputFormat};
use idc::stage::{self, StageHooks, StageOptions, StageStatus};
use idc::store::Store;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

mod exit;
mod predict;
mod reports;
mod runs;
mod sweep;
mod track;
mod weights;

/// idcctl stages the breast histopathology (IDC) dataset into object storage and runs
/// training experiments on it.
#[derive(Parser, Debug)]
#[command(name = "idcctl", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Stage a download (IDC folder or zip, CIFAR-10 .tar.gz, IDX folder) as split, checksummed
    /// shards at a storage URL.
    Stage(StageArgs),
    /// Make and inspect datasets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Check an experiment or sweep manifest without running it.
    Validate {
        /// The manifest (YAML).
        file: PathBuf,
    },
    /// Experiment and sweep manifest tools.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Submit an experiment manifest as a run (stages its dataset first when needed).
    Submit(runs::SubmitArgs),
    /// Print a run's log (-f: follow it until the run ends, across attempts).
    Logs {
        run: String,
        #[arg(short = 'f', long)]
        follow: bool,
        /// Show this attempt (1-based) instead of the latest.
        #[arg(long)]
        attempt: Option<u32>,
        #[command(flatten)]
        storage: runs::StorageArg,
        #[command(flatten)]
        cluster: runs::ClusterArgs,
    },
    /// Show a run's phase, latest validation metrics, throughput and ETA.
    Status {
        run: String,
        #[command(flatten)]
        storage: runs::StorageArg,
        #[command(flatten)]
        cluster: runs::ClusterArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// List runs, newest first: the latest 50 unless told otherwise.
    List {
        #[command(flatten)]
        which: runs::ListArgs,
        #[command(flatten)]
        storage: runs::StorageArg,
        #[command(flatten)]
        cluster: runs::ClusterArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print a run's evaluation report (--out DIR also saves report.json and metrics.jsonl;
    /// --html DIR writes an HTML report with plots).
    Report {
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
        storage: runs::StorageArg,
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Compare runs side by side: configs (differences marked) and test/val metrics (best marked).
    Compare {
        /// The runs (two or more).
        #[arg(required = true, num_args = 2..)]
        runs: Vec<String>,
        /// Also write an HTML page with overlay plots: a .html file, or a folder for index.html.
        #[arg(long, value_name = "FILE_OR_DIR")]
        html: Option<PathBuf>,
        #[command(flatten)]
        storage: runs::StorageArg,
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Apply a finished run's best checkpoint to new patches (a folder or zip, labels optional)
    /// or to a staged dataset's split; writes CSV or JSON Lines, and the metrics when labelled.
    Predict(predict::PredictArgs),
    /// Experiment trackers: bring runs' MLflow mirrors up to date from the bucket.
    #[command(subcommand)]
    Track(TrackCommand),
    /// Gather runs' TensorBoard event files into a log folder (then: tensorboard --logdir DIR).
    Tensorboard {
        /// The runs.
        #[arg(required = true)]
        runs: Vec<String>,
        /// The folder TensorBoard reads: each run's events go to DIR/<run>/.
        #[arg(long, value_name = "DIR")]
        logdir: PathBuf,
        #[command(flatten)]
        storage: runs::StorageArg,
    },
    /// Cancel a run: the worker checkpoints and stops (SIGTERM, then SIGKILL after 30s).
    Cancel {
        run: String,
        #[command(flatten)]
        storage: runs::StorageArg,
        #[command(flatten)]
        cluster: runs::ClusterArgs,
    },
    /// Start a cancelled or failed run again from its latest checkpoint.
    Resume {
        run: String,
        #[command(flatten)]
        storage: runs::StorageArg,
        #[command(flatten)]
        cluster: runs::ClusterArgs,
    },
    /// Hyperparameter sweeps: run a sweep manifest (sampler, pruner, parallel trials), show
    /// its trials.
    #[command(subcommand)]
    Sweep(sweep::SweepCommand),
    /// Pretrained weights: import torchvision's checkpoints for the models.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
    /// Internal commands used by idcctl itself.
    #[command(subcommand, hide = true)]
    Internal(runs::InternalCommand),
}

#[derive(Subcommand, Debug)]
enum TrackCommand {
    /// Send MLflow what it lacks of each run: params, tags, metrics, status, and report.json,
    /// metrics.jsonl and the HTML report as artifacts. Idempotent.
    Sync {
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
        storage: runs::StorageArg,
    },
}

#[derive(Subcommand, Debug)]
enum ManifestCommand {
    /// Print the JSON Schema of experiment or sweep manifests (for editors' YAML support).
    Schema {
        /// Which manifests the schema describes.
        #[arg(long, value_enum, default_value_t = SchemaKind::Experiment)]
        kind: SchemaKind,
    },
}

/// The manifests `idcctl manifest schema` describes.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum SchemaKind {
    /// `kind: Experiment` (idcctl submit).
    Experiment,
    /// `kind: Sweep` (idcctl sweep run).
    Sweep,
}

#[derive(Args, Debug)]
struct StageArgs {
    /// The download, read in place: for IDC the extracted folder (holding IDC_regular_ps50_idx5
    /// or the patient folders) or the .zip; for cifar10 the .tar.gz (python or binary version);
    /// for idx the folder of IDX files.
    source: PathBuf,
    /// What the download is: IDC patches, CIFAR-10, or MNIST-style IDX files.
    #[arg(long, value_enum, default_value_t = stage::Format::Idc)]
    format: stage::Format,
    /// Class names, index = label: comma-separated, or a preset (fashion-mnist, mnist). IDX files
    /// carry none (default: the label numbers); CIFAR-10's come from its metadata.
    #[arg(long)]
    class_names: Option<String>,
    /// Where the dataset goes: file:///path, ./path, or s3://bucket/prefix (AWS_* variables
    /// configure S3: AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_ALLOW_HTTP).
    #[arg(long)]
    to: String,
    /// IDC: how patches are split, by patient (no patient in two splits) or at random [default:
    /// patient].
    #[arg(long, value_enum)]
    split: Option<SplitMethod>,
    /// Validation split size: a count (38000) or a fraction (0.15, 15%) [default: 0.15 of the
    /// IDC patches; for archives 0.1 of the training images, stratified by class].
    #[arg(long)]
    val: Option<SplitSize>,
    /// IDC: test split size, a patch count (38000) or a fraction (0.15, 15%) [default: 0.15].
    /// Archives keep their official test set.
    #[arg(long)]
    test: Option<SplitSize>,
    /// Seed of the split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Leave out edge patches smaller than 50x50 instead of padding them.
    #[arg(long)]
    skip_undersized: bool,
    /// Fail if any file would be skipped (bad name, unreadable or wrong-sized PNG).
    #[arg(long)]
    strict: bool,
    /// Patches per shard.
    #[arg(long, default_value_t = stage::DEFAULT_SHARD_RECORDS)]
    shard_records: usize,
    /// Decoding threads (default: one per core).
    #[arg(short = 'j', long, default_value_t = 0)]
    threads: usize,
    /// Replace a different dataset already staged at --to.
    #[arg(long)]
    force: bool,
    /// Output format of the summary.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

#[derive(Subcommand, Debug)]
enum DatasetCommand {
    /// Write a synthetic dataset in the Kaggle layout (for tests and demos).
    Synth(SynthArgs),
    /// Print the summary of a staged dataset.
    Show {
        /// The dataset's URL, as given to `idcctl stage --to`.
        url: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(Args, Debug)]
struct SynthArgs {
    /// Folder to write IDC_regular_ps50_idx5/ into.
    #[arg(long)]
    out: PathBuf,
    /// Number of patients.
    #[arg(long, default_value_t = 10)]
    patients: u32,
    /// Patches per patient.
    #[arg(long, default_value_t = 200)]
    per_patient: u32,
    /// Seed: the same seed writes the same files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of corrupt files to plant (truncated, garbage, empty).
    #[arg(long, default_value_t = 0)]
    corrupt: u32,
    /// Fraction of edge patches smaller than 50x50.
    #[arg(long, default_value_t = 0.01)]
    edge_fraction: f64,
    /// Fraction of patches drawn with the other class's look.
    #[arg(long, default_value_t = 0.04)]
    label_noise: f64,
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // kube-rs logs each failed request as an ERROR of its own, beside the error
                // idcctl reports: shown only when RUST_LOG asks for it.
                tracing_subscriber::EnvFilter::new("warn,idc=info,idcctl=info,kube_client=off")
            }),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("error: {}", idc::exit::message_of(e.as_ref()));
            exit::of_error(&e).into()
        }
    }
}

/// A mistake in the command's input, reported with exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

impl ProcessExitCode for UserError {
    fn process_exit_code(&self) -> ExitCode {
        ExitCode::UserError
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Stage(args) => stage_cmd(args).await,
        Command::Dataset(DatasetCommand::Synth(args)) => synth_cmd(args),
        Command::Validate { file } => {
            if let Some(done) = sweep::validate_if_sweep(&file) {
                return done;
            }
            let exp = idc::experiment::load(&file)?;
            println!(
                "{}: valid: experiment {}, model {}, {} backend, {} epochs",
                file.display(),
                exp.name,
                exp.train.model.name(),
                output::name_of(&exp.backend),
                exp.train.epochs
            );
            Ok(ExitCode::Success)
        }
        Command::Submit(args) => runs::submit(args).await,
        Command::Logs {
            run,
            follow,
            attempt,
            storage,
            cluster,
        } => runs::logs(storage, cluster, run, follow, attempt).await,
        Command::Status {
            run,
            storage,
            cluster,
            output,
        } => runs::status(storage, cluster, run, output).await,
        Command::List {
            which,
            storage,
            cluster,
            output,
        } => runs::list(storage, cluster, which, output).await,
        Command::Report {
            run,
            out,
            html,
            slides,
            storage,
            output,
        } => {
            let code = runs::report(storage.clone(), run.clone(), out, output).await?;
            if let Some(dir) = html {
                reports::html_report(&storage, &run, &dir, slides).await?;
            }
            Ok(code)
        }
        Command::Compare {
            runs,
            html,
            storage,
            output,
        } => reports::compare(storage, runs, html, output).await,
        Command::Predict(args) => predict::predict(args).await,
        Command::Track(TrackCommand::Sync {
            runs,
            uri,
            experiment,
            storage,
        }) => {
            track::sync(
                &storage,
                &runs,
                &idc::track::TargetOverride { uri, experiment },
            )
            .await
        }
        Command::Tensorboard {
            runs,
            logdir,
            storage,
        } => track::tensorboard(&storage, &runs, &logdir).await,
        Command::Cancel {
            run,
            storage,
            cluster,
        } => runs::cancel(storage, cluster, run).await,
        Command::Resume {
            run,
            storage,
            cluster,
        } => runs::resume(storage, cluster, run).await,
        Command::Sweep(cmd) => sweep::command(cmd).await,
        Command::Weights(cmd) => weights::command(cmd).await,
        Command::Internal(runs::InternalCommand::Supervise { run }) => runs::supervise(&run).await,
        Command::Internal(runs::InternalCommand::DriveSweep { sweep }) => {
            sweep::drive_stored(&sweep).await
        }
        Command::Manifest(ManifestCommand::Schema { kind }) => {
            let schema = match kind {
                SchemaKind::Experiment => idc::experiment::json_schema(),
                SchemaKind::Sweep => idc::sweep::manifest::json_schema(),
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::Success)
        }
        Command::Dataset(DatasetCommand::Show { url, output }) => {
            let store = Store::open(&url)?;
            let manifest = idc::dataset::manifest::read(&store).await?.ok_or_else(|| {
                UserError(format!(
                    "no staged dataset at {} (no manifest.json)",
                    store.url()
                ))
            })?;
            print!(
                "{}",
                output::render(&manifest, output, output::dataset_table)
            );
            Ok(ExitCode::Success)
        }
    }
}

/// The stage options `args` ask for, checked against the format.
fn stage_options(args: &StageArgs) -> Result<StageOptions, UserError> {
    let archive = args.format.archive().is_some();
    let format = output::name_of(&args.format);
    if archive {
        for (given, flag) in [
            (args.split.is_some(), "--split"),
            (args.test.is_some(), "--test"),
            (args.skip_undersized, "--skip-undersized"),
        ] {
            if given {
                return Err(UserError(format!(
                    "{flag} does not apply to --format {format}: its official test set is kept and validation is carved from the training images (--val)"
                )));
            }
        }
    }
    let class_names = match &args.class_names {
        None => None,
        Some(_) if !archive => {
            return Err(UserError(
                "--class-names applies to --format cifar10 or idx; the IDC classes are fixed"
                    .into(),
            ));
        }
        Some(s) => Some(match idc::dataset::archive::named_classes(s) {
            Some(preset) => preset,
            None => {
                let names: Vec<String> = s.split(',').map(|n| n.trim().to_string()).collect();
                if names.len() < 2 || names.iter().any(|n| n.is_empty()) {
                    return Err(UserError(format!(
                        "--class-names '{s}' is neither a preset (fashion-mnist, mnist) nor a comma-separated list of at least two names"
                    )));
                }
                names
            }
        }),
    };
    let default_val = if archive {
        stage::DEFAULT_ARCHIVE_VAL
    } else {
        SplitOptions::default().val
    };
    Ok(StageOptions {
        format: args.format,
        split: SplitOptions {
            method: args.split.unwrap_or_default(),
            val: args.val.unwrap_or(default_val),
            test: args.test.unwrap_or(SplitOptions::default().test),
            seed: args.seed,
        },
        class_names,
        undersized: if args.skip_undersized {
            Undersized::Skip
        } else {
            Undersized::Pad
        },
        strict: args.strict,
        shard_records: args.shard_records,
        threads: args.threads,
        force: args.force,
    })
}

async fn stage_cmd(args: StageArgs) -> anyhow::Result<ExitCode> {
    let dest = Store::open(&args.to)?;
    let opts = stage_options(&args)?;
    let pb = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {human_pos}/{human_len} patches ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message("staging");
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    let hooks = StageHooks {
        progress: Some(pb.clone()),
        ..Default::default()
    };
    let cancel = hooks.cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\ninterrupt: finishing the shard in flight, then stopping (Ctrl-C again to abort)"
            );
            cancel.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(ExitCode::Interrupted as i32);
            }
        }
    });
    let outcome = stage::stage(&args.source, &dest, &opts, &hooks)
        .await
        .with_context(|| format!("staging {} to {}", args.source.display(), dest.url()))?;
    pb.finish_and_clear();
    match outcome.status {
        StageStatus::AlreadyStaged => eprintln!(
            "{} already holds dataset {} from this source with these options: nothing to do",
            dest.url(),
            outcome.manifest.id
        ),
        StageStatus::Staged { written, resumed } => {
            let elapsed = pb.elapsed().as_secs_f64();
            let rate = outcome.manifest.records() as f64 / elapsed.max(1e-9);
            let what = if outcome.manifest.source.kind.is_archive() {
                "images"
            } else {
                "patches"
            };
            eprintln!(
                "staged {} {what} to {} in {elapsed:.1}s ({rate:.0} {what}/s): {written} shards written{}",
                outcome.manifest.records(),
                dest.url(),
                if resumed > 0 {
                    format!(", {resumed} reused from an interrupted stage")
                } else {
                    String::new()
                }
            );
        }
    }
    if outcome.manifest.source.duplicates > 0 {
        eprintln!(
            "note: the source holds the tree twice; {} duplicate files were counted once",
            outcome.manifest.source.duplicates
        );
    }
    print!(
        "{}",
        output::render(&outcome.manifest, args.output, output::dataset_table)
    );
    Ok(ExitCode::Success)
}

fn synth_cmd(args: SynthArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.edge_fraction) || !(0.0..=1.0).contains(&args.label_noise) {
        return Err(UserError(
            "--edge-fraction and --label-noise are fractions between 0 and 1".into(),
        )
        .into());
    }
    if args.patients == 0 || args.per_patient == 0 {
        return Err(UserError("--patients and --per-patient must be at least 1".into()).into());
    }
    let opts = SynthOptions {
        patients: args.patients,
        per_patient: args.per_patient,
        seed: args.seed,
        corrupt: args.corrupt,
        edge_fraction: args.edge_fraction,
        label_noise: args.label_noise,
    };
    let started = std::time::Instant::now();
    let s = synth::generate(&args.out, &opts)?;
    eprintln!(
        "wrote {} patches ({} no IDC, {} IDC, {} edge) for {} patients to {} in {:.1}s",
        s.files,
        s.class_counts[0],
        s.class_counts[1],
        s.edge_patches,
        s.patients,
        args.out.join(idc::dataset::KAGGLE_ROOT).display(),
        started.elapsed().as_secs_f64()
    );
    for c in &s.corrupt {
        eprintln!("planted corrupt file {c}");
    }
    Ok(ExitCode::Success)
}
