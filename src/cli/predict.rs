//! `idcctl predict`: parses the command, shows progress, prints what was predicted and skipped
//! and the metrics where labels are known. The work is in `idc::predict`.

use super::runs::{ClusterArgs, StorageArg};
use super::{UserError, bar, choice, print_object};
use clap::Args;
use idc::backend::kube::ClusterDefaults;
use idc::dataset::split::Split;
use idc::exit::ExitCode;
use idc::predict::{self, OutputFormat, PredictOptions};
use idc::spec::DeviceSpec;
use indicatif::ProgressBar;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The run whose best checkpoint predicts (it must have finished).
    run: String,
    /// A folder or zip of IDC patches named <patient>_idx5_x<X>_y<Y>[_class<C>].png (labels
    /// optional), or the URL of a staged dataset with --split.
    source: String,
    /// Predict this split of the staged dataset SOURCE.
    #[arg(long, value_parser = choice::<Split>())]
    split: Option<Split>,
    /// Where the predictions go: a file or a storage URL (file://, s3://), written whole.
    #[arg(long, required_unless_present = "dry_run")]
    out: Option<String>,
    /// Output format [default: from --out's extension: .jsonl, .ndjson or .json for JSON Lines,
    /// else CSV].
    #[arg(long, value_parser = choice::<OutputFormat>())]
    format: Option<OutputFormat>,
    /// Test-time augmentation: average each image's 8 flips and rotations.
    #[arg(long)]
    tta: bool,
    /// Images per forward pass [default: the run's eval_batch_size].
    #[arg(long)]
    batch_size: Option<u32>,
    /// Where the worker predicts [default: the run's train.device].
    #[arg(long, value_parser = choice::<DeviceSpec>())]
    device: Option<DeviceSpec>,
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
    #[arg(short = 'o', long, value_parser = choice::<idc::output::OutputFormat>(), default_value_t = idc::output::OutputFormat::Yaml)]
    output: idc::output::OutputFormat,
    #[command(flatten)]
    storage: StorageArg,
    #[command(flatten)]
    cluster: ClusterArgs,
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

impl PredictArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let opts = PredictOptions {
            tta: self.tta,
            batch_size: self.batch_size,
            device: self.device,
            threshold: self.threshold,
            threads: self.threads,
            ..PredictOptions::new(&self.source, self.split)?
        };
        let root = self.storage.open()?;
        let reading = bar("reading patches", "files");
        let prepared = predict::prepare(&root, &self.run, &opts, Some(&reading)).await;
        reading.finish_and_clear();
        let p = prepared?;
        if self.maps.is_some() {
            predict::check_maps(&p)?;
        }
        for s in &p.skipped {
            eprintln!("skipped {}: {}", s.path, s.reason);
        }
        if self.dry_run {
            let job = predict::render_job(&p, &ClusterDefaults::default()).await?;
            return print_object(&job, self.output);
        }
        let out = self.out.as_deref().expect("clap requires --out");
        let format = self.format.unwrap_or_else(|| OutputFormat::of_path(out));
        let mut progress = Bar(bar("starting the worker", "images"));
        let executed = predict::execute(&p, &self.cluster.target(), &mut progress).await;
        progress.0.finish_and_clear();
        let e = executed?;
        let classes = &p.spec.classes;
        let bytes = match format {
            OutputFormat::Csv => predict::to_csv(&e.rows, classes),
            OutputFormat::Jsonl => predict::to_jsonl(&e.rows, classes),
        };
        predict::write_output(out, bytes).await?;
        let r = &e.result;
        let (verb, took) = match e.ran {
            true => (
                "predicted",
                format!(" in {:.1}s ({:.0} images/s)", r.seconds, r.images_per_s),
            ),
            false => ("reused the predictions of", String::new()),
        };
        let tta = if r.tta {
            " (8 flips/rotations averaged)"
        } else {
            ""
        };
        eprintln!(
            "{verb} {} images{tta} with run {} (epoch {} checkpoint) on {}{took}: {out}",
            r.images, p.spec.run_id, p.report.best_epoch, r.device,
        );
        if !p.skipped.is_empty() {
            eprintln!("{} file(s) skipped (listed above)", p.skipped.len());
        }
        let threshold = p.spec.threshold;
        if let Some(m) = predict::labelled_metrics(&e.rows, classes.len(), threshold) {
            println!("{}", predict::metrics_text(&m, p.labelled, threshold));
        }
        if let Some(dir) = &self.maps {
            let pixels = predict::input_pixels(&p).await?;
            let get = |i| pixels.get(i).cloned();
            let slides = idc::report::slides::build(&e.rows, &get, threshold, None);
            let title = format!("Slide maps: run {}", p.spec.run_id);
            let written = idc::report::slides::write_maps(dir, &slides, &title)?;
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
}
