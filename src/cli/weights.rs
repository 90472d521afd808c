//! `idcctl weights`: pretrained weights for the models.

use super::choice;
use anyhow::Context;
use clap::{Args, Subcommand};
use idc::exit::ExitCode;
use idc::weights::{self, ImportModel};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Convert a torchvision checkpoint (.pth, as torch.save writes it) to the .safetensors
    /// file a manifest's `pretrained:` names, checking every backbone tensor's name, shape and
    /// dtype on the way.
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The checkpoint: a state dict saved with torch.save (torch >= 1.6), e.g. torchvision's
    /// resnet34-b627a593.pth; a dict holding it under 'state_dict' or 'model' also works.
    file: PathBuf,
    /// The model the weights are for.
    #[arg(long, value_parser = choice::<ImportModel>())]
    model: ImportModel,
    /// The object to write, a .safetensors file in a bucket: s3://bucket/path/NAME.safetensors,
    /// file:///path/NAME.safetensors or a plain path (AWS_* variables configure S3).
    #[arg(long)]
    to: String,
}

impl ImportArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let (store, name) = weights::import_target(&self.to)?;
        let (file, model) = (self.file.clone(), self.model);
        let imported = tokio::task::spawn_blocking(move || weights::import_file(&file, model))
            .await
            .context("importing weights")??;
        let url = store.url_of(&name);
        let bytes = weights::write_safetensors(&imported.tensors)
            .with_context(|| format!("converting {} for {url}", self.file.display()))?;
        let size = bytes.len();
        store
            .put(&name, bytes.into())
            .await
            .with_context(|| format!("writing {url}"))?;
        println!(
            "imported {} tensors ({} parameters + {} BatchNorm statistics, {} bytes) from {} to {url} ({size} bytes)",
            imported.tensors.len(),
            imported.parameters(),
            imported.statistics(),
            imported.bytes(),
            self.file.display(),
        );
        for note in imported.notes() {
            println!("{note}");
        }
        Ok(ExitCode::Success)
    }
}
