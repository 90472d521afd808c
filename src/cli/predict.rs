//! `idcctl predict`: parses the command, shows progress, prints what was predicted and skipped
//! and the metrics where labels are known. The work is in `idc::predict`.

use super::UserError;
use super::runs::{ClusterArgs, StorageArg};
use clap::Args;
use idc::backend::kube::ClusterDefaults;
use idc::dataset::split::Split;
use idc::exit::ExitCode;
use idc::metrics::{MetricName, Metrics};
use idc::predict::{self, OutputFormat, PredictOptions, PredictSource};
use idc::spec::DeviceSpec;
use idc::store::Store;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The run whose best checkpoint predicts (it must have finished).
    run: String,
    /// A folder or zip of IDC patches named <patient>_idx5_x<X>_y<Y>[_class<C>].png (labels
    /// optional), or the URL of a staged dataset with --split.
    source: String,
    /// Predict this split of the staged dataset SOURCE.
    #[arg(long, value_enum)]
    split: Option<Split>,
    /// Where the predictions go: a file or a storage URL (file://, s3://), written whole.
    #[arg(long, required_unless_present = "dry_run")]
    out: Option<String>,
    /// Output format [default: from --out's extension: .jsonl, .ndjson or .json for JSON Lines,
    /// else CSV].
    #[arg(long, value_enum)]
    format: Option<OutputFormat>,
    /// Test-time augmentation: average each image's 8 flips and rotations.
    #[arg(long)]
    tta: bool,
    /// Images per forward pass [default: the run's eval_batch_size].
    #[arg(long)]
    batch_size: Option<u32>,
    /// Where the worker predicts [default: the run's train.device].
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Two classes: p(IDC) at or above which a patch is predicted IDC [default: the run's
    /// threshold, chosen on validation].
    #[arg(long)]
    threshold: Option<f64>,
    /// Also write slide maps into this folder: per patient, the tissue, the ground-truth IDC
    /// mask (when labels are known) and the predicted p(IDC) as a heat map, as PNGs, with an
    /// index.html.
    #[arg(long, value_name = "DIR")]
    maps: Option<PathBuf>,
    /// Decoding threads (default: one per core).
    #[arg(short = 'j', long, default_value_t = 0)]
    threads: usize,
    /// Print the Kubernetes Job it would create and stop: nothing is written and no cluster is
    /// touched (built-in cluster defaults stand in for the namespace's ConfigMap).
    #[arg(long)]
    dry_run: bool,
    /// Output format of --dry-run.
    #[arg(short = 'o', long, value_enum, default_value_t = idc::output::OutputFormat::Yaml)]
    output: idc::output::OutputFormat,
    #[command(flatten)]
    storage: StorageArg,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

/// The options `args` ask for, checked.
fn options(args: &PredictArgs) -> Result<PredictOptions, UserError> {
    let source = match args.split {
        Some(split) => PredictSource::Staged {
            url: args.source.clone(),
            split,
        },
        None if args.source.contains("://") => {
            return Err(UserError(format!(
                "{} is a URL: give --split to predict a split of the dataset staged there",
                args.source
            )));
        }
        None => {
            let path = PathBuf::from(&args.source);
            if path.join(idc::layout::dataset::MANIFEST).is_file() {
                return Err(UserError(format!(
                    "{} is a staged dataset: give --split train|val|test to predict one of its splits",
                    args.source
                )));
            }
            PredictSource::Patches(path)
        }
    };
    Ok(PredictOptions {
        source,
        tta: args.tta,
        batch_size: args.batch_size,
        device: args.device.map(|d| match d {
            DeviceArg::Auto => DeviceSpec::Auto,
            DeviceArg::Cpu => DeviceSpec::Cpu,
            DeviceArg::Cuda => DeviceSpec::Cuda,
        }),
        threshold: args.threshold,
        threads: args.threads,
    })
}

/// Progress on the terminal: a bar of images predicted, and notices above it.
struct Bar(ProgressBar);

impl predict::Progress for Bar {
    fn images(&mut self, done: u64, total: u64) {
        if self.0.length() != Some(total) {
            self.0.set_length(total);
            self.0.reset_elapsed();
            self.0.set_message("predicting");
        }
        self.0.set_position(done);
    }

    fn notice(&mut self, line: &str) {
        self.0.println(line);
    }
}

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

pub async fn predict(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let opts = options(&args)?;
    let root = Store::open(args.storage.url())?;
    let reading = bar("reading patches", "files");
    let prepared = predict::prepare(&root, &args.run, &opts, Some(&reading)).await;
    reading.finish_and_clear();
    let p = prepared?;
    if args.maps.is_some() && p.spec.classes.len() != 2 {
        return Err(UserError(format!(
            "--maps draws p(IDC) over slides: run {} has {} classes",
            p.spec.run_id,
            p.spec.classes.len()
        ))
        .into());
    }
    for s in &p.skipped {
        eprintln!("skipped {}: {}", s.path, s.reason);
    }
    if args.dry_run {
        let job = predict::render_job(&p, &ClusterDefaults::default()).await?;
        match args.output {
            idc::output::OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&job)?),
            _ => print!("{}", serde_yaml::to_string(&job)?),
        }
        return Ok(ExitCode::Success);
    }
    let out = args.out.as_deref().expect("clap requires --out");
    let format = args.format.unwrap_or_else(|| OutputFormat::of_path(out));
    let mut progress = Bar(bar("starting the worker", "images"));
    let executed = predict::execute(&p, &args.cluster.target(), &mut progress).await;
    progress.0.finish_and_clear();
    let e = executed?;
    let classes = &p.spec.classes;
    let bytes = match format {
        OutputFormat::Csv => predict::to_csv(&e.rows, classes),
        OutputFormat::Jsonl => predict::to_jsonl(&e.rows, classes),
    };
    predict::write_output(out, bytes).await?;
    let r = &e.result;
    eprintln!(
        "{} {} images{} with run {} (epoch {} checkpoint) on {}{}: {out}",
        if e.ran {
            "predicted"
        } else {
            "reused the predictions of"
        },
        r.images,
        if r.tta {
            " (8 flips/rotations averaged)"
        } else {
            ""
        },
        p.spec.run_id,
        p.report.best_epoch,
        r.device,
        if e.ran {
            format!(" in {:.1}s ({:.0} images/s)", r.seconds, r.images_per_s)
        } else {
            String::new()
        },
    );
    if !p.skipped.is_empty() {
        eprintln!("{} file(s) skipped (listed above)", p.skipped.len());
    }
    if let Some(m) = predict::labelled_metrics(&e.rows, classes.len(), p.spec.threshold) {
        println!("{}", metrics_text(&m, p.labelled, p.spec.threshold));
    }
    if let Some(dir) = &args.maps {
        let pixels = predict::input_pixels(&p).await?;
        let slides = idc::report::slides::build(
            &e.rows,
            &|i| pixels.get(i).cloned(),
            p.spec.threshold,
            None,
        );
        let written = idc::report::slides::write_maps(
            dir,
            &slides,
            &format!("Slide maps: run {}", p.spec.run_id),
        )?;
        eprintln!(
            "wrote the slide maps of {} patient(s) to {} ({} files; open index.html)",
            slides.len(),
            dir.display(),
            written.len()
        );
    }
    if e.rows.is_empty() {
        return Err(UserError("nothing was predicted".into()).into());
    }
    Ok(ExitCode::Success)
}

/// The metrics over the labelled images, in lines.
fn metrics_text(m: &Metrics, labelled: u64, threshold: f64) -> String {
    let shown: Vec<String> = MetricName::ALL
        .into_iter()
        .filter(|n| *n != MetricName::Loss)
        .map(|n| {
            let label = match m {
                Metrics::Binary(_) => n.label(),
                Metrics::Multiclass(_) => n.label_multiclass(),
            };
            format!("{label} {:.4}", n.of(m))
        })
        .collect();
    let at = match m {
        Metrics::Binary(_) => format!(" at threshold {threshold:.3}"),
        Metrics::Multiclass(_) => String::new(),
    };
    let mut text = format!("{labelled} labelled images{at}: {}", shown.join(", "));
    if let Metrics::Binary(b) = m {
        let c = &b.confusion;
        text.push_str(&format!(
            "\nconfusion (rows true, columns predicted):\n            no IDC    IDC\n  no IDC  {:>8} {:>6}\n  IDC     {:>8} {:>6}",
            c.tn, c.fp, c.fn_, c.tp
        ));
    }
    text
}
