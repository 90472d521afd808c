//! `idcctl predict`: parses the command, shows progress, prints what was predicted and skipped
//! and the metrics where labels are known. The work is in `idc::predict`.

use super::runs::{ClusterArgs, StorageArg};
use super::{UserError, bar, choice, print_object};
use clap::Args;
use idc::backend::Backends;
use idc::backend::kube::ClusterDefaults;
use idc::dataset::split::Split;
use idc::exit::ExitCode;
use idc::experiment::Backend;
use idc::predict::slides::{self as wsi, SlideOptions};
use idc::predict::{self, OutputFormat, PredictOptions, PredictSource};
use idc::slide::outputs::SlideStatus;
use idc::spec::DeviceSpec;
use idc::store::Store;
use indicatif::ProgressBar;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The run whose best checkpoint predicts (it must have finished).
    run: String,
    /// What to predict, told apart by content: a folder or zip of IDC patches named
    /// <patient>_idx5_x<X>_y<Y>[_class<C>].png (labels optional); the URL of a staged dataset
    /// with --split; or whole-slide images (any format OpenSlide opens: .svs, .ndpi, .mrxs,
    /// tiled TIFF...), paths or s3:// URLs, as many as you like.
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<String>,
    /// Predict this split of the staged dataset SOURCE.
    #[arg(long, value_parser = choice::<Split>())]
    split: Option<Split>,
    /// Where the predictions go: a file or a storage URL (file://, s3://), written whole.
    /// Slides: a folder or storage URL, one folder per slide (patches.csv, regions.geojson,
    /// heatmap.png, thumbnail.png, tissue.png, summary.json) and index.html.
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
    /// Slides: model pixels between patch origins [default: the patch size; smaller overlaps
    /// patches].
    #[arg(long, help_heading = "Slides")]
    stride: Option<u32>,
    /// Slides: microns per level-0 pixel, for slides whose files do not say it (or say it
    /// wrong) [default: the slide's own].
    #[arg(long, value_name = "MICRONS", help_heading = "Slides")]
    slide_mpp: Option<f64>,
    /// Slides: the fraction of a patch that must be tissue for it to be scored.
    #[arg(long, default_value_t = 0.5, help_heading = "Slides")]
    min_tissue: f64,
    /// Slides on Kubernetes: slides per index of the Indexed Job (one pod reads them in turn).
    #[arg(long, default_value_t = 1, help_heading = "Slides")]
    slides_per_pod: u32,
    /// Slides on Kubernetes: pods at once [default: one per index].
    #[arg(long, help_heading = "Slides")]
    parallelism: Option<u32>,
    /// Where the worker runs [default: the run's backend].
    #[arg(long, value_parser = choice::<Backend>())]
    backend: Option<Backend>,
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
            ..PredictOptions::of_sources(&self.sources, self.split)?
        };
        if let PredictSource::Slides(slides) = &opts.source {
            let slides = slides.clone();
            return self.run_slides(opts, slides).await;
        }
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

impl PredictArgs {
    /// Whole-slide images: the slide job on the run's backend (or --backend), then each
    /// slide's outputs and the index into --out.
    async fn run_slides(
        self,
        opts: PredictOptions,
        slides: Vec<String>,
    ) -> anyhow::Result<ExitCode> {
        if self.maps.is_some() || self.format.is_some() {
            return Err(UserError(
                "--maps and --format apply to patches; slides get heat maps and CSV in --out"
                    .into(),
            )
            .into());
        }
        let root = self.storage.open()?;
        let s = SlideOptions {
            stride: self.stride,
            slide_mpp: self.slide_mpp,
            min_tissue: self.min_tissue,
            slides_per_pod: self.slides_per_pod,
            parallelism: self.parallelism,
            ..SlideOptions::new(slides)
        };
        let status = idc::run::read_status(&idc::run::run_store(&root, &self.run))
            .await?
            .map(|st| st.backend);
        let backend_kind = self.backend.or(status).unwrap_or(Backend::Local);
        let on_cluster = backend_kind == Backend::Kubernetes;
        let p = wsi::prepare(&root, &self.run, &opts, &s, on_cluster || self.dry_run).await?;
        if self.dry_run {
            let job = wsi::render_job(&p, &ClusterDefaults::default()).await?;
            return print_object(&job, self.output);
        }
        let out_url = self.out.as_deref().expect("clap requires --out");
        let out = Store::open(out_url)?;
        let backend = Backends::connect(backend_kind, &self.cluster.target()).await?;
        let mut progress = Bar(bar("starting the worker", "patches"));
        let ran = wsi::run_with(&backend, &p, &mut progress).await;
        progress.0.finish_and_clear();
        let outcome = ran?;
        let written = wsi::write_outputs(&p, &outcome, &out).await?;
        for s in &outcome.summaries {
            match s.status {
                SlideStatus::Succeeded => eprintln!(
                    "{}: {} tissue patches, IDC {:.2} of {:.2} mm² ({:.1}%), {} region(s), {:.1}s",
                    s.slide,
                    s.patches_tissue,
                    s.idc_mm2,
                    s.tissue_mm2,
                    100.0 * s.idc_fraction,
                    s.regions,
                    s.seconds.total
                ),
                SlideStatus::Failed => eprintln!(
                    "{}: failed: {}",
                    s.slide,
                    s.reason.as_deref().unwrap_or("no reason given")
                ),
            }
        }
        let failed = outcome.failed();
        let n = outcome.summaries.len();
        eprintln!(
            "{} of {n} slide(s) predicted with run {} ({written} files): {} (open index.html)",
            n - failed,
            p.job.predict.run_id,
            out.url()
        );
        Ok(match failed {
            0 => ExitCode::Success,
            f if f == n => {
                return Err(UserError(format!("all {n} slide(s) failed (reasons above)")).into());
            }
            _ => ExitCode::Partial,
        })
    }
}
