//! Command-line interface of `idcctl`: argument parsing, progress display and exit codes. Each
//! command parses, calls the library, prints.

use anyhow::Context;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use idc::choice::Choice;
use idc::dataset::split::{SplitMethod, SplitSize};
use idc::dataset::synth::{self, SynthOptions};
use idc::exit::{ExitCode, ProcessExitCode};
use idc::output::{self, OutputFormat};
use idc::stage::{self, StageFlags, StageHooks, StageOptions, StageStatus};
use idc::store::Store;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod exit;
mod export;
mod predict;
mod runs;
mod sweep;
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
    Logs(runs::LogsArgs),
    /// Show a run's phase, latest validation metrics, throughput and ETA.
    Status(runs::StatusArgs),
    /// List runs, newest first: the latest 50 unless told otherwise.
    List(runs::ListArgs),
    /// Print a run's evaluation report (--out DIR also saves report.json and metrics.jsonl;
    /// --html DIR writes an HTML report with plots).
    Report(runs::ReportArgs),
    /// Compare runs side by side: configs (differences marked) and test/val metrics (best marked).
    Compare(runs::CompareArgs),
    /// Apply a finished run's best checkpoint to new patches (a folder or zip, labels optional)
    /// or to a staged dataset's split; writes CSV or JSON Lines, and the metrics when labelled.
    Predict(predict::PredictArgs),
    /// Export a finished run's best checkpoint for another tool: --format wsinfer writes a
    /// WSInfer model directory (torchscript_model.pt, config.json).
    Export(export::ExportArgs),
    /// Experiment trackers: bring runs' MLflow mirrors up to date from the bucket.
    #[command(subcommand)]
    Track(runs::TrackCommand),
    /// Gather runs' TensorBoard event files into a log folder (then: tensorboard --logdir DIR).
    Tensorboard(runs::TensorboardArgs),
    /// Cancel a run: the worker checkpoints and stops (SIGTERM, then SIGKILL after 30s).
    Cancel(runs::RunArgs),
    /// Start a cancelled or failed run again from its latest checkpoint.
    Resume(runs::RunArgs),
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
    #[arg(long, value_parser = choice::<stage::Format>(), default_value_t = stage::Format::Idc)]
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
    #[arg(long, value_parser = choice::<SplitMethod>())]
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
    /// The images' scale in microns per pixel: slides are read at it for a model trained on
    /// them [default: 4.0 for IDC patches (2.5x); unknown for archives].
    #[arg(long, value_name = "MICRONS")]
    microns_per_pixel: Option<f64>,
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
    #[arg(short = 'o', long, value_parser = choice::<OutputFormat>(), default_value_t = OutputFormat::Table)]
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
        #[arg(short = 'o', long, value_parser = choice::<OutputFormat>(), default_value_t = OutputFormat::Table)]
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
        Command::Validate { file } => validate(&file),
        Command::Submit(args) => args.run().await,
        Command::Logs(args) => args.run().await,
        Command::Status(args) => args.run().await,
        Command::List(args) => args.run().await,
        Command::Report(args) => args.run().await,
        Command::Compare(args) => args.run().await,
        Command::Predict(args) => args.run().await,
        Command::Export(args) => args.run().await,
        Command::Track(runs::TrackCommand::Sync(args)) => args.run().await,
        Command::Tensorboard(args) => args.run().await,
        Command::Cancel(args) => args.cancel().await,
        Command::Resume(args) => args.resume().await,
        Command::Sweep(cmd) => cmd.run().await,
        Command::Weights(weights::WeightsCommand::Import(args)) => args.run().await,
        Command::Internal(cmd) => cmd.run().await,
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
            print_render(&manifest, output, idc::dataset::table::table)
        }
    }
}

/// `idcctl validate FILE`: an experiment or a sweep manifest.
fn validate(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    if idc::sweep::manifest::is_sweep(&std::fs::read_to_string(file).unwrap_or_default()) {
        return sweep::validate(file);
    }
    let exp = idc::experiment::load(file)?;
    println!(
        "{}: valid: experiment {}, model {}, {} backend, {} epochs",
        file.display(),
        exp.name,
        exp.train.model.name(),
        exp.backend,
        exp.train.epochs
    );
    Ok(ExitCode::Success)
}

async fn stage_cmd(a: StageArgs) -> anyhow::Result<ExitCode> {
    let dest = Store::open(&a.to)?;
    let opts = StageOptions::from_flags(&StageFlags {
        format: a.format,
        split: a.split,
        val: a.val,
        test: a.test,
        seed: a.seed,
        class_names: a.class_names,
        skip_undersized: a.skip_undersized,
        strict: a.strict,
        shard_records: a.shard_records,
        threads: a.threads,
        force: a.force,
        microns_per_pixel: a.microns_per_pixel,
    })?;
    let pb = bar("staging", "patches");
    let hooks = StageHooks {
        progress: Some(pb.clone()),
        ..Default::default()
    };
    on_interrupt(
        "finishing the shard in flight, then stopping (Ctrl-C again to abort)".into(),
        hooks.cancel.clone(),
    );
    let outcome = stage::stage(&a.source, &dest, &opts, &hooks)
        .await
        .with_context(|| format!("staging {} to {}", a.source.display(), dest.url()))?;
    pb.finish_and_clear();
    let m = &outcome.manifest;
    match outcome.status {
        StageStatus::AlreadyStaged => eprintln!(
            "{} already holds dataset {} from this source with these options: nothing to do",
            dest.url(),
            m.id
        ),
        StageStatus::Staged { written, resumed } => {
            let elapsed = pb.elapsed().as_secs_f64();
            let rate = m.records() as f64 / elapsed.max(1e-9);
            let what = if m.source.kind.is_archive() {
                "images"
            } else {
                "patches"
            };
            let reused = match resumed {
                0 => String::new(),
                n => format!(", {n} reused from an interrupted stage"),
            };
            eprintln!(
                "staged {} {what} to {} in {elapsed:.1}s ({rate:.0} {what}/s): {written} shards written{reused}",
                m.records(),
                dest.url(),
            );
        }
    }
    if m.source.duplicates > 0 {
        eprintln!(
            "note: the source holds the tree twice; {} duplicate files were counted once",
            m.source.duplicates
        );
    }
    print_render(m, a.output, idc::dataset::table::table)
}

fn synth_cmd(a: SynthArgs) -> anyhow::Result<ExitCode> {
    let opts = SynthOptions {
        patients: a.patients,
        per_patient: a.per_patient,
        seed: a.seed,
        corrupt: a.corrupt,
        edge_fraction: a.edge_fraction,
        label_noise: a.label_noise,
    };
    opts.check()?;
    let started = std::time::Instant::now();
    let s = synth::generate(&a.out, &opts)?;
    eprintln!(
        "wrote {} patches ({} no IDC, {} IDC, {} edge) for {} patients to {} in {:.1}s",
        s.files,
        s.class_counts[0],
        s.class_counts[1],
        s.edge_patches,
        s.patients,
        a.out.join(idc::dataset::KAGGLE_ROOT).display(),
        started.elapsed().as_secs_f64()
    );
    for c in &s.corrupt {
        eprintln!("planted corrupt file {c}");
    }
    Ok(ExitCode::Success)
}

/// Prints `value` in `format` (`table` draws the table) and succeeds.
fn print_render<T: serde::Serialize>(
    value: &T,
    format: OutputFormat,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<ExitCode> {
    print!("{}", output::render(value, format, table));
    Ok(ExitCode::Success)
}

/// Prints a Kubernetes object a `--dry-run` would create: JSON for `-o json`, else YAML.
fn print_object<T: serde::Serialize>(object: &T, format: OutputFormat) -> anyhow::Result<ExitCode> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(object)?),
        _ => print!("{}", serde_yaml::to_string(object)?),
    }
    Ok(ExitCode::Success)
}

/// On Ctrl-C: says `what` ("interrupt: …") and sets `stop`, which the command heeds at its next
/// safe point; a second Ctrl-C exits at once.
fn on_interrupt(what: String, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupt: {what}");
            stop.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(ExitCode::Interrupted as i32);
            }
        }
    });
}

/// A progress bar of `unit`s, with its message and a steady spinner.
fn bar(message: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}})"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(message.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// Parses a library [`Choice`] by name, listing the names (with what each means) in `--help`
/// and in the error for an unknown one, as clap's `ValueEnum` does.
#[derive(Clone)]
struct ChoiceParser<T>(std::marker::PhantomData<T>);

fn choice<T: Choice>() -> ChoiceParser<T> {
    ChoiceParser(std::marker::PhantomData)
}

impl<T: Choice> TypedValueParser for ChoiceParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let names = PossibleValuesParser::new(self.possible_values().into_iter().flatten());
        let name = names.parse_ref(cmd, arg, value)?;
        Ok(idc::choice::parse(&name).expect("one of the names listed"))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(T::ALL.iter().map(|v| {
            let value = PossibleValue::new(v.name());
            match v.about() {
                Some(about) => value.help(about),
                None => value,
            }
        })))
    }
}
