//! `idcctl export`: parses the command and prints what was written. The work is in
//! `idc::export`.

use super::choice;
use super::runs::StorageArg;
use clap::Args;
use idc::exit::ExitCode;
use idc::export::{self, ExportFormat, ExportOptions};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run whose best checkpoint is exported (it must have finished).
    run: String,
    /// What to write: wsinfer, a model directory for WSInfer (and its QuPath extension) to
    /// apply over whole-slide images.
    #[arg(long, value_parser = choice::<ExportFormat>())]
    format: ExportFormat,
    /// Micrometres per pixel of the images the run trained on: WSInfer cuts slide patches of
    /// the same physical size [default: the dataset's microns_per_pixel; IDC patches: 4.0].
    #[arg(long, value_name = "UM")]
    spacing_um_px: Option<f64>,
    /// The folder to write into (made if missing; files already there are replaced).
    dir: PathBuf,
    #[command(flatten)]
    storage: StorageArg,
}

impl ExportArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let opts = ExportOptions {
            format: self.format,
            spacing_um_px: self.spacing_um_px,
        };
        let root = self.storage.open()?;
        let e = export::export(&root, &self.run, &opts, &self.dir).await?;
        let c = &e.config;
        eprintln!(
            "exported run {} ({}, epoch {} checkpoint) for WSInfer: {} classes, {} px patches at {} um/px",
            e.run.id,
            c.architecture,
            e.run.report.best_epoch,
            c.num_classes,
            c.patch_size_pixels,
            c.spacing_um_px
        );
        for f in &e.files {
            println!("{}", f.display());
        }
        Ok(ExitCode::Success)
    }
}
