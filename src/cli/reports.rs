//! `idcctl report --html` and `idcctl compare`: a run's report as an HTML page with plots, and
//! runs side by side (terminal table, JSON, YAML or HTML). The work is in `idc::report`.

use super::runs::StorageArg;
use idc::exit::ExitCode;
use idc::output::{self, OutputFormat};
use idc::report::{self, compare, html};
use idc::store::Store;
use std::path::{Path, PathBuf};

/// Writes the HTML report of `run_id` (index.html, its plots, and for two classes the slide
/// maps of the `slides` test patients with most patches, None: all) to `dir`.
pub async fn html_report(
    storage: &StorageArg,
    run_id: &str,
    dir: &Path,
    slides: Option<usize>,
) -> anyhow::Result<()> {
    let root = Store::open(storage.url())?;
    let run = report::load_run(&root, run_id).await?;
    let ds = report::load_dataset(&run).await;
    let maps = report::load_slides(&root, &run, &ds, slides).await;
    for note in ds.notes.iter().chain(maps.iter().flat_map(|m| &m.notes)) {
        eprintln!("warning: {note}");
    }
    let w = html::write_run_report(dir, &run, &ds, maps.as_ref())?;
    let shown = match &maps {
        Some(m) => format!(" and slide maps of {} test patients", m.slides.len()),
        None => String::new(),
    };
    eprintln!(
        "wrote {} with {} plots, {} misclassified patches{shown}",
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
