//! `idcctl weights`: pretrained weights for the models.

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
    #[arg(long, value_enum)]
    model: ImportModel,
    /// The object to write, a .safetensors file in a bucket: s3://bucket/path/NAME.safetensors,
    /// file:///path/NAME.safetensors or a plain path (AWS_* variables configure S3).
    #[arg(long)]
    to: String,
}

pub async fn command(cmd: WeightsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WeightsCommand::Import(args) => import(args).await,
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let (store, name) = weights::import_target(&args.to)?;
    let file = args.file.clone();
    let model = args.model;
    let imported = tokio::task::spawn_blocking(move || weights::import_file(&file, model))
        .await
        .context("importing weights")??;
    let bytes = weights::write_safetensors(&imported.tensors)?;
    let size = bytes.len();
    store
        .put(&name, bytes.into())
        .await
        .with_context(|| format!("writing {}", store.url_of(&name)))?;
    println!(
        "imported {} tensors ({} parameters + {} BatchNorm statistics, {} bytes) from {} to {} ({size} bytes)",
        imported.tensors.len(),
        imported.parameters(),
        imported.statistics(),
        imported.bytes(),
        args.file.display(),
        store.url_of(&name),
    );
    if imported.stripped_module_prefix {
        println!("stripped DataParallel's 'module.' prefix from the keys");
    }
    if !imported.dropped.is_empty() {
        let counters = imported
            .dropped
            .iter()
            .filter(|n| n.ends_with("num_batches_tracked"))
            .count();
        let head: Vec<&str> = imported
            .dropped
            .iter()
            .filter(|n| !n.ends_with("num_batches_tracked"))
            .map(String::as_str)
            .collect();
        println!(
            "dropped {} keys: {counters} num_batches_tracked buffers{}",
            imported.dropped.len(),
            if head.is_empty() {
                String::new()
            } else {
                format!(
                    ", the old head [{}] (the model's head is new)",
                    head.join(", ")
                )
            }
        );
    }
    if !imported.extra.is_empty() {
        println!(
            "ignored {} keys the model has no use for: [{}]",
            imported.extra.len(),
            imported.extra.join(", ")
        );
    }
    Ok(ExitCode::Success)
}
