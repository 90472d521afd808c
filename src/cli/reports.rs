//! `idcctl report --html` and `idcctl compare`: a run's report as an HTML page with plots, and
//! runs side by side (terminal table, JSON, YAML or HTML). The work is in `idc::report`.

use super::runs::StorageArg;
use idc::exit::ExitCode;
use idc::output::{self, OutputFormat};
use idc::report::{self, compare, html};
use idc::store::Store;
use std::path::{Path, PathBuf};

/// Writes the HTML report of `run_id` (index.html and its plots) to `dir`.
pub async fn html_report(storage: &StorageArg, run_id: &str, dir: &Path) -> anyhow::Result<()> {
    let root = Store::open(storage.url())?;
    let run = report::load_run(&root, run_id).await?;
    let ds = report::load_dataset(&run).await;
    for note in &ds.notes {
        eprintln!("warning: {note}");
    }
    let w = html::write_run_report(dir, &run, &ds)?;
    eprintln!(
        "wrote {} with {} plots and {} misclassified patches",
        w.page.display(),
        w.plots.len(),
        ds.patches.len()
    );
    Ok(())
}

/// Compares runs: prints the tables (or JSON/YAML), and writes the HTML page when asked.
pub async fn compare(
    storage: StorageArg,
    runs: Vec<String>,
    html_target: Option<PathBuf>,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let root = Store::open(storage.url())?;
    let mut data = Vec::with_capacity(runs.len());
    for id in &runs {
        data.push(report::load_run(&root, id).await?);
    }
    let c = compare::compare(&data);
    if let Some(target) = html_target {
        let w = html::write_comparison(&target, &data, &c)?;
        eprintln!("wrote {} with {} plots", w.page.display(), w.plots.len());
    }
    print!("{}", output::render(&c, format, compare::table));
    Ok(ExitCode::Success)
}
