//! Run commands: submit, logs, status, list, report, cancel, and the local backend's supervisor.

use super::UserError;
use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use idc::backend::kube::{self, ClusterDefaults, cluster::LogLine};
use idc::backend::{self, SubmitOptions, Target, local};
use idc::exit::ExitCode;
use idc::experiment::{self, Backend};
use idc::layout::{self, run as keys};
use idc::metrics::{MetricsRecord, Report};
use idc::output::{self, OutputFormat};
use idc::run::{self, Phase, RunStatus};
use idc::spec::RunSpec;
use idc::store::Store;
use std::path::PathBuf;
use std::time::Duration;

/// The bucket runs live in.
#[derive(Args, Debug, Clone)]
pub struct StorageArg {
    /// The bucket URL (the manifest's `storage`).
    #[arg(long, env = "IDC_STORAGE", default_value = "file://./.idc/bucket")]
    pub storage: String,
}

/// Which cluster and namespace (Kubernetes backend), as kubectl takes them.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// The kubeconfig context (default: the current one; in a pod, its service account).
    #[arg(long)]
    context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

impl ClusterArgs {
    pub fn target(&self) -> Target {
        Target {
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

impl StorageArg {
    /// The bucket URL.
    pub fn url(&self) -> &str {
        &self.storage
    }
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
    /// Name the run instead of `<name>-<date>-<time>-<hex>`. Submitting the same name and
    /// manifest again creates nothing new.
    #[arg(long)]
    run_id: Option<String>,
    /// Override the manifest's storage (the bucket URL).
    #[arg(long)]
    storage: Option<String>,
    /// Train on this staged dataset instead of the manifest's.
    #[arg(long)]
    dataset: Option<String>,
    /// Print the Kubernetes objects it would create and stop: no cluster or bucket is touched
    /// (built-in cluster defaults stand in for the namespace's idc-defaults ConfigMap).
    #[arg(long)]
    dry_run: bool,
    /// Output format of --dry-run.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Yaml)]
    output: OutputFormat,
    #[command(flatten)]
    cluster: ClusterArgs,
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
    let mut exp = experiment::load(&args.file)?;
    if let Some(b) = args.backend {
        exp.backend = match b {
            BackendArg::Local => Backend::Local,
            BackendArg::Kubernetes => Backend::Kubernetes,
        };
    }
    if let Some(url) = &args.dataset {
        exp.dataset = experiment::DatasetRef {
            url: Some(url.clone()),
            source: None,
            name: None,
            split: None,
            undersized: None,
        };
    }
    let opts = SubmitOptions {
        run_id: args.run_id.clone(),
        storage: args.storage.clone(),
        target: args.cluster.target(),
    };
    if args.dry_run {
        let job = backend::render_job(&exp, &opts, &ClusterDefaults::default())?;
        match args.output {
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&job)?),
            _ => print!("{}", serde_yaml::to_string(&job)?),
        }
        return Ok(ExitCode::Success);
    }
    let sub = backend::submit(&exp, &opts).await?;
    let run_id = sub.run_id.clone();
    println!("{run_id}");
    if sub.created {
        eprintln!(
            "submitted {run_id} ({} on {}); follow it with: idcctl logs {run_id} -f",
            exp.train.model.name(),
            sub.place
        );
    } else {
        eprintln!(
            "{run_id} was already submitted ({}); nothing new was created",
            sub.place
        );
    }
    if !args.wait {
        return Ok(ExitCode::Success);
    }
    let target = args.cluster.target();
    let s = run::read_status(&sub.run)
        .await?
        .context("the run's status.json disappeared")?;
    follow_any(&sub.run, s, &target, None).await?;
    let s = run::read_status(&sub.run)
        .await?
        .expect("status written above");
    let s = backend::refresh(&sub.run, s, &target).await?;
    if s.phase == Phase::Succeeded {
        print_report(&sub.run, OutputFormat::Table).await?;
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

/// Follows a run's log until it ends, on whichever backend it runs.
async fn follow_any(
    run: &Store,
    s: RunStatus,
    target: &Target,
    only: Option<u32>,
) -> anyhow::Result<()> {
    if s.backend != Backend::Kubernetes {
        return follow(run, only).await;
    }
    let cluster = target
        .for_run(s.cluster.as_ref())
        .connect()
        .await
        .map_err(anyhow::Error::from)?;
    let mut sink = |l: LogLine| println!("[attempt {}] {}", l.attempt, l.text);
    let mut notice = |n: String| eprintln!("{n}");
    let earlier = s.cluster.as_ref().map_or(0, |c| c.earlier_attempts);
    kube::follow(
        &cluster,
        run,
        &s.run_id,
        earlier,
        only,
        &mut sink,
        &mut notice,
    )
    .await?;
    let s = backend::refresh(run, s, target).await?;
    eprintln!(
        "run {} {}: {}",
        s.run_id,
        phase_name(s.phase),
        s.reason.unwrap_or_default()
    );
    Ok(())
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
                s.finished_at = Some(idc::clock::now_rfc3339());
                s.worker = None;
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
    cluster: ClusterArgs,
    run_id: String,
    follow_: bool,
    attempt: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let (run, status) = open_run(&storage, &run_id).await?;
    if let Some(a) = attempt
        && (a == 0 || a > status.attempts.max(1))
    {
        return Err(UserError(format!(
            "--attempt {a}: run {run_id} has {} attempt(s), numbered from 1",
            status.attempts
        ))
        .into());
    }
    let target = cluster.target();
    if follow_ {
        follow_any(&run, status, &target, attempt).await?;
        return Ok(ExitCode::Success);
    }
    let n = attempt.unwrap_or(status.attempts.max(1));
    if status.backend == Backend::Kubernetes
        && let Ok(cluster) = target.for_run(status.cluster.as_ref()).connect().await
        && let Some(pod) = cluster
            .pods_of(&run_id)
            .await
            .map_err(anyhow::Error::from)?
            .get(
                (n.saturating_sub(status.cluster.as_ref().map_or(0, |c| c.earlier_attempts))
                    as usize)
                    .wrapping_sub(1),
            )
    {
        // The pod's log is the freshest while the pod exists.
        let name = pod.metadata.name.clone().unwrap_or_default();
        let printed = cluster
            .stream_log(&name, false, None, |_, text| println!("{text}"))
            .await;
        if printed.is_ok() {
            return Ok(ExitCode::Success);
        }
    }
    match run.get_opt(&keys::log(n)).await? {
        Some(b) => print!("{}", String::from_utf8_lossy(&b)),
        None => eprintln!(
            "no log yet for attempt {n} of {run_id} ({})",
            phase_name(status.phase)
        ),
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
fn phase_name(p: Phase) -> String {
    output::name_of(&p)
}

async fn metrics_of(run: &Store) -> anyhow::Result<Vec<MetricsRecord>> {
    Ok(match run.get_opt(keys::METRICS).await? {
        Some(b) => idc::metrics::parse_jsonl(&b),
        None => vec![],
    })
}

pub async fn status(
    storage: StorageArg,
    cluster: ClusterArgs,
    run_id: String,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let (run, s) = open_run(&storage, &run_id).await?;
    let s = match backend::refresh(&run, s.clone(), &cluster.target()).await {
        Ok(fresh) => fresh,
        Err(e) => {
            // The bucket still knows the last recorded phase and the metrics.
            eprintln!("warning: showing the recorded phase: {e}");
            s
        }
    };
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

pub async fn list(
    storage: StorageArg,
    cluster: ClusterArgs,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let root = Store::open(&storage.storage)?;
    let target = cluster.target();
    let mut unreachable = false;
    let mut rows = vec![];
    for (key, _) in root.list(layout::RUNS).await? {
        let Some(id) = key
            .strip_prefix("runs/")
            .and_then(|k| k.strip_suffix("/status.json"))
        else {
            continue;
        };
        let run = run::run_store(&root, id);
        let mut s = match run::read_status(&run).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e @ idc::store::StoreError::Corrupt { .. }) => {
                // Named, never silently skipped; the other runs are still listed.
                eprintln!("warning: run {id}: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if s.backend == Backend::Local && !s.phase.is_terminal() {
            // A local run whose supervisor is gone is lost, not running.
            s = backend::refresh(&run, s, &target).await?;
        } else if s.backend == Backend::Kubernetes && !s.phase.is_terminal() && !unreachable {
            // Unfinished runs on a cluster: ask it, but keep listing if it cannot be reached.
            match backend::refresh(&run, s.clone(), &target).await {
                Ok(fresh) => s = fresh,
                Err(e) => {
                    eprintln!("warning: showing recorded phases of Kubernetes runs: {e}");
                    unreachable = true;
                }
            }
        }
        let best_f1 = metrics_of(&run)
            .await?
            .iter()
            .filter_map(|m| match m {
                MetricsRecord::Epoch { val, .. } => Some(val.f1),
                _ => None,
            })
            .fold(None, |a: Option<f64>, f| Some(a.map_or(f, |a| a.max(f))));
        let duration_s = s.started_at.as_deref().and_then(|start| {
            let end = s
                .finished_at
                .clone()
                .unwrap_or_else(idc::clock::now_rfc3339);
            Some((idc::clock::seconds_of(&end)? - idc::clock::seconds_of(start)?).max(0))
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
            for m in idc::metrics::MetricName::ALL {
                t.add_row([
                    m.label().to_string(),
                    format!("{:.4}", m.of(&r.test)),
                    format!("{:.4}", m.of(&r.test_at_val_threshold)),
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
pub async fn resume(
    storage: StorageArg,
    cluster: ClusterArgs,
    run_id: String,
) -> anyhow::Result<ExitCode> {
    let (run, s) = open_run(&storage, &run_id).await?;
    let target = cluster.target();
    let s = backend::refresh(&run, s, &target).await?;
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
    backend::resume(&run, s, &target).await?;
    eprintln!("resumed {run_id}; follow it with: idcctl logs {run_id} -f");
    Ok(ExitCode::Success)
}

pub async fn cancel(
    storage: StorageArg,
    cluster: ClusterArgs,
    run_id: String,
) -> anyhow::Result<ExitCode> {
    let (run, s) = open_run(&storage, &run_id).await?;
    let target = cluster.target();
    let s = if s.backend == Backend::Local {
        backend::refresh(&run, s, &target).await?
    } else {
        s
    };
    if s.phase.is_terminal() && s.phase != Phase::Lost {
        eprintln!("run {run_id} already {}", phase_name(s.phase));
        return Ok(ExitCode::Success);
    }
    let backend_kind = s.backend;
    let signalled = backend::cancel(&run, s, &target).await?;
    if backend_kind == Backend::Kubernetes {
        eprintln!("cancelled {run_id}: its Job was deleted; the worker checkpoints on SIGTERM");
        return Ok(ExitCode::Success);
    }
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
    if signalled {
        eprintln!("cancel requested for {run_id}; the worker was signalled");
    } else {
        eprintln!("cancel requested for {run_id}; no process of it was running");
    }
    Ok(ExitCode::Success)
}
