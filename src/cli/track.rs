//! Tracking tools: `idcctl track sync` brings a run's MLflow mirror up to date, `idcctl
//! tensorboard` gathers runs' TensorBoard event files into a log folder. The work is in
//! `idc::track` and `idc::report::tensorboard`.

use super::UserError;
use super::runs::StorageArg;
use anyhow::Context;
use idc::exit::ExitCode;
use idc::report::tensorboard::{self, Origin};
use idc::store::Store;
use std::path::Path;

/// Writes each run's event file to `logdir/<run>/`, whole (a temporary file renamed over it).
pub async fn tensorboard(
    storage: &StorageArg,
    runs: &[String],
    logdir: &Path,
) -> anyhow::Result<ExitCode> {
    let root = Store::open(storage.url())?;
    let mut written = 0;
    for run in runs {
        let Some((bytes, origin)) = tensorboard::events(&root, run).await? else {
            eprintln!("{run}: nothing logged yet, skipped");
            continue;
        };
        let name = Path::new(idc::layout::run::TENSORBOARD)
            .file_name()
            .expect("a file name");
        let path = logdir.join(run).join(name);
        idc::output::write_file_whole(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "{run}: {} bytes of events{}",
            bytes.len(),
            match origin {
                Origin::Worker => "",
                Origin::Records => " (made from metrics.jsonl: the run predates event files)",
            }
        );
        written += 1;
    }
    if written == 0 {
        return Err(UserError("none of the runs has logged anything yet".into()).into());
    }
    println!("tensorboard --logdir {}", logdir.display());
    Ok(ExitCode::Success)
}

/// `idcctl track sync RUN...`: each run's MLflow mirror brought up to date.
pub async fn sync(
    storage: &StorageArg,
    runs: &[String],
    o: &idc::track::TargetOverride,
) -> anyhow::Result<ExitCode> {
    let root = Store::open(storage.url())?;
    for run in runs {
        let s = idc::track::sync(&root, run, o).await?;
        eprintln!(
            "{run}: MLflow run {} in experiment {} {} ({} metric points and {} artifacts sent)",
            s.mlflow_run_id,
            s.experiment_id,
            if s.created { "made" } else { "up to date" },
            s.metrics_sent,
            s.artifacts_sent
        );
        if let Some(why) = &s.artifacts_skipped {
            eprintln!("{run}: artifacts not uploaded: {why}");
        }
        println!("{}", s.mlflow_run_id);
    }
    Ok(ExitCode::Success)
}
