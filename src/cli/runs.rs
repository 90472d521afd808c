//! Run commands: submit, logs, status, list, report, cancel, and the local backend's supervisor.

use super::UserError;
use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use idc::backend::local;
use idc::dataset::decode::Undersized;
use idc::exit::ExitCode;
use idc::layout::{self, run as keys};
use idc::manifest::{self, Backend};
use idc::metrics::{MetricsRecord, Report};
use idc::output::{self, OutputFormat};
use idc::run::{self, Phase, RunStatus};
use idc::spec::RunSpec;
use idc::stage::{self, StageHooks, StageOptions};
use idc::store::Store;
use std::path::PathBuf;
use std::time::Duration;

/// The bucket runs live in.
#[derive(Args, Debug, Clone)]
pub struct StorageArg {
    /// The bucket URL (the manifest's `storage`).
    #[arg(long, env = "IDC_STORAGE", default_value = "file://./.idc/bucket")]
    storage: String,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The experiment manifest.
    file: PathBuf,
    /// Follow the run's log until it ends, then print its report.
    #[arg(long)]
    wait: bool,
    /// Override the manifest's backend.
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum BackendArg {
    Local,
    Kubernetes,
}

#[derive(Subcommand, Debug)]
pub enum InternalCommand {
    /// Supervise a run's worker on the local backend (started by `submit`).
    Supervise {
        #[arg(long)]
        run: String,
    },
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut exp = manifest::load(&args.file).map_err(|e| UserError(e.to_string()))?;
    if let Some(b) = args.backend {
        exp.backend = match b {
            BackendArg::Local => Backend::Local,
            BackendArg::Kubernetes => Backend::Kubernetes,
        };
    }
    if exp.backend == Backend::Kubernetes {
        return Err(UserError(
            "the kubernetes backend is not available in this build yet; use --backend local".into(),
        )
        .into());
    }
    let root = Store::open(&exp.storage)?;
    let dataset = resolve_dataset(&exp, &root).await?;
    let run_id = run::new_run_id(&exp.name);
    let run = run::run_store(&root, &run_id);
    let spec = RunSpec {
        run_id: run_id.clone(),
        dataset,
        train: exp.train.clone(),
    };
    run.put(keys::SPEC, Bytes::from(serde_yaml::to_string(&spec)?))
        .await?;
    let status = RunStatus {
        run_id: run_id.clone(),
        experiment: exp.name.clone(),
        model: exp.train.model.name().to_string(),
        backend: exp.backend,
        phase: Phase::Pending,
        attempts: 0,
        max_attempts: exp.retries + 1,
        created_at: stage::now_rfc3339(),
        started_at: None,
        finished_at: None,
        exit_codes: vec![],
        reason: Some("waiting for the supervisor to start".into()),
        supervisor_pid: None,
        worker_pid: None,
        deadline_s: exp.deadline.as_deref().and_then(manifest::parse_duration),
    };
    run::write_status(&run, &status).await?;
    local::launch(run.url())?;
    println!("{run_id}");
    eprintln!(
        "submitted {run_id} ({} on the local backend); follow it with: idcctl logs {run_id} -f",
        status.model
    );
    if !args.wait {
        return Ok(ExitCode::Success);
    }
    follow(&run, None).await?;
    let s = run::read_status(&run).await?.expect("status written above");
    if s.phase == Phase::Succeeded {
        print_report(&run, OutputFormat::Table).await?;
        Ok(ExitCode::Success)
    } else {
        eprintln!(
            "run {run_id} {}: {}",
            phase_name(s.phase),
            s.reason.unwrap_or_default()
        );
        Ok(ExitCode::Failure)
    }
}

/// The staged dataset the run trains on, staging the manifest's source first if needed.
async fn resolve_dataset(exp: &manifest::Experiment, root: &Store) -> anyhow::Result<String> {
    if let Some(url) = &exp.dataset.url {
        let ds = Store::open(url)?;
        stage::read_manifest(&ds).await?.ok_or_else(|| {
            UserError(format!(
                "dataset.url {} holds no staged dataset; stage it with idcctl stage",
                ds.url()
            ))
        })?;
        return Ok(ds.url().to_string());
    }
    let source = exp
        .dataset
        .source
        .as_ref()
        .expect("manifest checks url or source");
    let ds = root.child(&layout::dataset_prefix(
        exp.dataset.name.as_deref().unwrap_or("idc"),
    ));
    let opts = StageOptions {
        split: exp.dataset.split.clone().unwrap_or_default(),
        undersized: exp.dataset.undersized.unwrap_or(Undersized::Pad),
        ..Default::default()
    };
    eprintln!(
        "staging {source} to {} (skipped when already staged)",
        ds.url()
    );
    let out = stage::stage(
        std::path::Path::new(source),
        &ds,
        &opts,
        &StageHooks::default(),
    )
    .await
    .with_context(|| format!("staging {source}"))?;
    eprintln!(
        "dataset {}: {} patches",
        out.manifest.id,
        out.manifest.records()
    );
    Ok(ds.url().to_string())
}

pub async fn supervise(run_url: &str) -> anyhow::Result<ExitCode> {
    let run = Store::open(run_url)?;
    match local::supervise(&run, run_url).await {
        Ok(Phase::Succeeded) => Ok(ExitCode::Success),
        Ok(_) => Ok(ExitCode::Failure),
        Err(e) => {
            // Nobody sees the supervisor's stderr: leave the reason in the run record if the
            // bucket can still be written, so `idcctl status` says why the run stopped.
            if let Ok(Some(mut s)) = run::read_status(&run).await {
                s.phase = Phase::Failed;
                s.reason = Some(format!("the run supervisor failed: {e}"));
                s.finished_at = Some(stage::now_rfc3339());
                s.worker_pid = None;
                let _ = run::write_status(&run, &s).await;
            }
            Err(e.into())
        }
    }
}

async fn open_run(storage: &StorageArg, run_id: &str) -> anyhow::Result<(Store, RunStatus)> {
    let root = Store::open(&storage.storage)?;
    let run = run::run_store(&root, run_id);
    let status = run::read_status(&run).await?.ok_or_else(|| {
        UserError(format!(
            "no run {run_id} in {} (see idcctl list)",
            root.url()
        ))
    })?;
    Ok((run, status))
}

pub async fn logs(
    storage: StorageArg,
    run_id: String,
    follow_: bool,
    attempt: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let (run, status) = open_run(&storage, &run_id).await?;
    if follow_ {
        follow(&run, attempt).await?;
    } else {
        let n = attempt.unwrap_or(status.attempts.max(1));
        match run.get_opt(&keys::log(n)).await? {
            Some(b) => print!("{}", String::from_utf8_lossy(&b)),
            None => eprintln!(
                "no log yet for attempt {n} of {run_id} ({})",
                phase_name(status.phase)
            ),
        }
    }
    Ok(ExitCode::Success)
}

/// Prints the log as it grows, across attempts, until the run ends.
async fn follow(run: &Store, only: Option<u32>) -> anyhow::Result<()> {
    let mut attempt = only.unwrap_or(1);
    let mut printed = 0usize;
    loop {
        let status = run::read_status(run)
            .await?
            .context("the run's status.json disappeared")?;
        if let Some(b) = run.get_opt(&keys::log(attempt)).await?
            && b.len() > printed
        {
            print!("{}", String::from_utf8_lossy(&b[printed..]));
            printed = b.len();
        }
        if only.is_none() && status.attempts > attempt && status.phase != Phase::Pending {
            // Drain what is left of this attempt's log, then go on with the next one.
            if let Some(b) = run.get_opt(&keys::log(attempt)).await? {
                print!("{}", String::from_utf8_lossy(&b[printed.min(b.len())..]));
            }
            attempt += 1;
            printed = 0;
            println!("--- attempt {attempt} ---");
            continue;
        }
        if status.phase.is_terminal() {
            if let Some(b) = run.get_opt(&keys::log(attempt)).await? {
                print!("{}", String::from_utf8_lossy(&b[printed.min(b.len())..]));
            }
            eprintln!(
                "run {} {}: {}",
                status.run_id,
                phase_name(status.phase),
                status.reason.unwrap_or_default()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Unix seconds of an RFC 3339 time.
fn seconds_of(t: &str) -> Option<i64> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn phase_name(p: Phase) -> String {
    output::name_of(&p)
}

async fn metrics_of(run: &Store) -> anyhow::Result<Vec<MetricsRecord>> {
    Ok(match run.get_opt(keys::METRICS).await? {
        Some(b) => String::from_utf8_lossy(&b)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        None => vec![],
    })
}

pub async fn status(
    storage: StorageArg,
    run_id: String,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let (run, s) = open_run(&storage, &run_id).await?;
    let metrics = metrics_of(&run).await?;
    let epochs = serde_yaml::from_slice::<RunSpec>(&run.get(keys::SPEC).await?)
        .map(|r| r.train.epochs)
        .unwrap_or(0);
    let last_epoch = metrics.iter().rev().find_map(|m| match m {
        MetricsRecord::Epoch {
            epoch,
            val,
            duration_s,
            ..
        } => Some((*epoch, val.clone(), *duration_s)),
        _ => None,
    });
    let rate = metrics.iter().rev().find_map(|m| match m {
        MetricsRecord::Step { images_per_s, .. } => Some(*images_per_s),
        _ => None,
    });
    let value = serde_json::json!({
        "status": s,
        "epochs": epochs,
        "last_epoch": last_epoch.as_ref().map(|(e, v, _)| serde_json::json!({"epoch": e, "val": v})),
        "images_per_s": rate,
    });
    print!(
        "{}",
        output::render(&value, format, |_| {
            let mut out = format!(
                "run {}  {}  ({} attempt(s) of {}; {})\n",
                s.run_id,
                phase_name(s.phase).to_uppercase(),
                s.attempts,
                s.max_attempts,
                s.reason.clone().unwrap_or_default()
            );
            if let Some((e, v, d)) = &last_epoch {
                out += &format!(
                    "epoch {e}/{epochs}: val loss {:.4} acc {:.4} bal-acc {:.4} F1 {:.4} AUC {:.4}\n",
                    v.loss, v.accuracy, v.balanced_accuracy, v.f1, v.roc_auc
                );
                if !s.phase.is_terminal() && *e < epochs {
                    out += &format!(
                        "ETA about {:.0}s ({} epochs left at {d:.0}s each)\n",
                        (epochs - e) as f64 * d,
                        epochs - e
                    );
                }
            } else {
                out += "no epoch finished yet\n";
            }
            if let Some(r) = rate {
                out += &format!("training throughput {r:.0} images/s\n");
            }
            out
        })
    );
    Ok(ExitCode::Success)
}

pub async fn list(storage: StorageArg, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let root = Store::open(&storage.storage)?;
    let mut rows = vec![];
    for (key, _) in root.list(layout::RUNS).await? {
        let Some(id) = key
            .strip_prefix("runs/")
            .and_then(|k| k.strip_suffix("/status.json"))
        else {
            continue;
        };
        let run = run::run_store(&root, id);
        let Some(s) = run::read_status(&run).await? else {
            continue;
        };
        let best_f1 = metrics_of(&run)
            .await?
            .iter()
            .filter_map(|m| match m {
                MetricsRecord::Epoch { val, .. } => Some(val.f1),
                _ => None,
            })
            .fold(None, |a: Option<f64>, f| Some(a.map_or(f, |a| a.max(f))));
        let duration_s = s.started_at.as_deref().and_then(|start| {
            let end = s.finished_at.clone().unwrap_or_else(stage::now_rfc3339);
            Some((seconds_of(&end)? - seconds_of(start)?).max(0))
        });
        rows.push(serde_json::json!({
            "run_id": s.run_id, "phase": s.phase, "model": s.model, "backend": s.backend,
            "best_val_f1": best_f1, "duration_s": duration_s, "created_at": s.created_at,
        }));
    }
    print!(
        "{}",
        output::render(&rows, format, |rows| {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header([
                "run",
                "phase",
                "model",
                "backend",
                "best val F1",
                "duration",
                "created",
            ]);
            for r in rows {
                let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
                t.add_row([
                    s("run_id"),
                    s("phase"),
                    s("model"),
                    s("backend"),
                    r["best_val_f1"]
                        .as_f64()
                        .map(|f| format!("{f:.4}"))
                        .unwrap_or_default(),
                    r["duration_s"]
                        .as_i64()
                        .map(|d| format!("{}m{:02}s", d / 60, d % 60))
                        .unwrap_or_default(),
                    s("created_at"),
                ]);
            }
            format!("{t}\n")
        })
    );
    Ok(ExitCode::Success)
}

pub async fn report(
    storage: StorageArg,
    run_id: String,
    out: Option<PathBuf>,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let (run, s) = open_run(&storage, &run_id).await?;
    let Some(bytes) = run.get_opt(keys::REPORT).await? else {
        return Err(UserError(format!(
            "run {run_id} has no report yet ({}: {})",
            phase_name(s.phase),
            s.reason.unwrap_or_default()
        ))
        .into());
    };
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), &bytes)
            .with_context(|| format!("writing {}", dir.display()))?;
        if let Some(m) = run.get_opt(keys::METRICS).await? {
            std::fs::write(dir.join("metrics.jsonl"), &m)?;
        }
        eprintln!("wrote report.json and metrics.jsonl to {}", dir.display());
    }
    print_report(&run, format).await?;
    Ok(ExitCode::Success)
}

/// Reads one metric of an evaluation.
type MetricOf = fn(&idc::metrics::BinaryMetrics) -> f64;

async fn print_report(run: &Store, format: OutputFormat) -> anyhow::Result<()> {
    let r: Report = serde_json::from_slice(&run.get(keys::REPORT).await?)
        .context("report.json is not readable")?;
    print!(
        "{}",
        output::render(&r, format, |r| {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header([
                "test metric",
                "at 0.5",
                &format!("at val threshold {:.3}", r.test_at_val_threshold.threshold),
            ]);
            let rows: [(&str, MetricOf); 9] = [
                ("loss", |m| m.loss),
                ("accuracy", |m| m.accuracy),
                ("balanced accuracy", |m| m.balanced_accuracy),
                ("precision", |m| m.precision),
                ("recall (sensitivity)", |m| m.recall),
                ("specificity", |m| m.specificity),
                ("F1", |m| m.f1),
                ("ROC-AUC", |m| m.roc_auc),
                ("PR-AUC", |m| m.pr_auc),
            ];
            for (name, f) in rows {
                t.add_row([
                    name.to_string(),
                    format!("{:.4}", f(&r.test)),
                    format!("{:.4}", f(&r.test_at_val_threshold)),
                ]);
            }
            t.add_row([
                "patches".to_string(),
                r.test.count.to_string(),
                r.test.count.to_string(),
            ]);
            let c = &r.test.confusion;
            format!(
                "run {}  model {}  dataset {}  device {}\nbest epoch {} of {}, trained {:.0}s at {:.0} images/s\n{t}\nconfusion at 0.5 (rows true, columns predicted):\n            no IDC    IDC\n  no IDC  {:>8} {:>6}\n  IDC     {:>8} {:>6}\n",
                r.run_id,
                r.model,
                r.dataset_id,
                r.device,
                r.best_epoch,
                r.epochs_run,
                r.train_seconds,
                r.train_images_per_s,
                c.tn,
                c.fp,
                c.fn_,
                c.tp
            )
        })
    );
    Ok(())
}

/// Starts a stopped (cancelled or failed) run again; the worker resumes from its checkpoint.
pub async fn resume(storage: StorageArg, run_id: String) -> anyhow::Result<ExitCode> {
    let (run, mut s) = open_run(&storage, &run_id).await?;
    if !s.phase.is_terminal() {
        return Err(UserError(format!(
            "run {run_id} is {}; only a stopped run can be resumed",
            phase_name(s.phase)
        ))
        .into());
    }
    if s.phase == Phase::Succeeded {
        return Err(UserError(format!("run {run_id} already succeeded")).into());
    }
    run.delete(keys::CANCEL).await?;
    s.phase = Phase::Pending;
    s.max_attempts = s.attempts + s.max_attempts.saturating_sub(s.attempts).max(1);
    s.finished_at = None;
    s.reason = Some("resumed; waiting for the supervisor to start".into());
    run::write_status(&run, &s).await?;
    local::launch(run.url())?;
    eprintln!("resumed {run_id}; follow it with: idcctl logs {run_id} -f");
    Ok(ExitCode::Success)
}

pub async fn cancel(storage: StorageArg, run_id: String) -> anyhow::Result<ExitCode> {
    let (run, s) = open_run(&storage, &run_id).await?;
    if s.phase.is_terminal() {
        eprintln!("run {run_id} already {}", phase_name(s.phase));
        return Ok(ExitCode::Success);
    }
    local::cancel(&run, Duration::from_secs(30)).await?;
    // The supervisor records the end; wait for it briefly so the user sees the outcome.
    for _ in 0..100 {
        if let Some(s) = run::read_status(&run).await?
            && s.phase.is_terminal()
        {
            eprintln!(
                "run {run_id} {}: {}",
                phase_name(s.phase),
                s.reason.unwrap_or_default()
            );
            return Ok(ExitCode::Success);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("cancel requested for {run_id}; the worker was signalled");
    Ok(ExitCode::Success)
}
