//! The local backend: the worker as a child process of a detached supervisor
//! (`idcctl internal supervise`), which survives the terminal closing, retries failed attempts,
//! enforces the deadline and records every attempt's exit code and reason in the run record.

use crate::layout::run as keys;
use crate::run::{Phase, RunStatus, read_status, write_status};
use crate::stage::now_rfc3339;
use crate::store::{Store, StoreError};
use bytes::Bytes;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Exit code of a worker that found bad input (retrying cannot help).
const BAD_INPUT: i32 = crate::exit::ExitCode::UserError as i32;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "cannot find the worker binary idc-worker (looked at {0}); build it (.ci/quickstart) or set IDC_WORKER"
    )]
    NoWorker(String),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {0} has no status.json: is it a run?")]
    NoRun(String),
}

/// The worker binary: `$IDC_WORKER`, else `idc-worker` beside this executable.
pub fn worker_binary() -> Result<PathBuf, LocalError> {
    if let Some(p) = std::env::var_os("IDC_WORKER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| LocalError::NoWorker(e.to_string()))?;
    let beside = exe.with_file_name("idc-worker");
    // Test binaries live one folder down (target/<profile>/deps).
    let above = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("idc-worker"));
    [Some(beside.clone()), above]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .ok_or_else(|| LocalError::NoWorker(beside.display().to_string()))
}

/// Starts the supervisor of the run at `run_url`, detached from this terminal; returns its pid.
pub fn launch(run_url: &str) -> Result<u32, LocalError> {
    let exe = std::env::current_exe().map_err(|e| LocalError::Spawn {
        what: "idcctl".into(),
        source: e,
    })?;
    let mut cmd = Command::new(exe);
    cmd.args(["internal", "supervise", "--run", run_url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; a new session keeps the run alive when the terminal
    // (and its process group) goes away.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| LocalError::Spawn {
        what: "the run supervisor".into(),
        source: e,
    })?;
    Ok(child.id())
}

/// Runs attempts of the worker until one succeeds, the input is bad, retries run out, the
/// deadline passes or the run is cancelled. Records everything in `status.json`.
pub async fn supervise(run: &Store, run_url: &str) -> Result<Phase, LocalError> {
    let mut s = read_status(run)
        .await?
        .ok_or_else(|| LocalError::NoRun(run.url().to_string()))?;
    s.supervisor_pid = Some(std::process::id());
    let worker = match worker_binary() {
        Ok(w) => w,
        Err(e) => return finish(run, &mut s, Phase::Failed, e.to_string()).await,
    };
    let started = Instant::now();
    s.started_at.get_or_insert_with(now_rfc3339);
    loop {
        if cancelled(run).await? {
            return finish(
                run,
                &mut s,
                Phase::Cancelled,
                "cancelled before the attempt started".into(),
            )
            .await;
        }
        s.attempts += 1;
        s.phase = Phase::Running;
        s.reason = Some(format!(
            "attempt {} of {} running",
            s.attempts, s.max_attempts
        ));
        let mut child = Command::new(&worker)
            .args(["run", "--run", run_url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LocalError::Spawn {
                what: worker.display().to_string(),
                source: e,
            })?;
        s.worker_pid = Some(child.id());
        write_status(run, &s).await?;
        let stderr = child.stderr.take().expect("piped");
        let tail = std::thread::spawn(move || {
            let lines: Vec<String> = BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect();
            lines
                .into_iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
        });
        let mut killed_for_deadline = false;
        let status = loop {
            if let Some(st) = child.try_wait().map_err(|e| LocalError::Spawn {
                what: "wait".into(),
                source: e,
            })? {
                break st;
            }
            if let Some(d) = s.deadline_s
                && !killed_for_deadline
                && started.elapsed() > Duration::from_secs(d)
            {
                killed_for_deadline = true;
                // SAFETY: signals our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let last_err = tail.join().unwrap_or_default();
        let code = status
            .code()
            .unwrap_or_else(|| -status.signal().unwrap_or(0));
        s.exit_codes.push(code);
        s.worker_pid = None;
        let what = match status.signal() {
            Some(sig) => format!("worker killed by signal {sig}"),
            None => format!("worker exited with code {code}"),
        };
        let detail = if last_err.is_empty() {
            what.clone()
        } else {
            format!("{what}: {last_err}")
        };
        if code == 0 {
            return finish(run, &mut s, Phase::Succeeded, "finished".into()).await;
        }
        if cancelled(run).await? {
            return finish(run, &mut s, Phase::Cancelled, format!("cancelled ({what})")).await;
        }
        if killed_for_deadline {
            let reason = format!("deadline of {}s exceeded", s.deadline_s.unwrap_or(0));
            return finish(run, &mut s, Phase::Failed, reason).await;
        }
        if code == BAD_INPUT {
            return finish(
                run,
                &mut s,
                Phase::Failed,
                format!("bad input, not retried: {detail}"),
            )
            .await;
        }
        if s.attempts >= s.max_attempts {
            return finish(run, &mut s, Phase::Failed, detail).await;
        }
        s.reason = Some(format!(
            "attempt {} failed ({detail}); retrying",
            s.attempts
        ));
        write_status(run, &s).await?;
    }
}

async fn finish(
    run: &Store,
    s: &mut RunStatus,
    phase: Phase,
    reason: String,
) -> Result<Phase, LocalError> {
    s.phase = phase;
    s.reason = Some(reason);
    s.finished_at = Some(now_rfc3339());
    s.worker_pid = None;
    write_status(run, s).await?;
    Ok(phase)
}

async fn cancelled(run: &Store) -> Result<bool, StoreError> {
    Ok(run.size(keys::CANCEL).await?.is_some())
}

/// Cancels a run: records the request, sends the worker SIGTERM (it checkpoints and exits), and
/// SIGKILL if it is still there after `grace`.
pub async fn cancel(run: &Store, grace: Duration) -> Result<RunStatus, LocalError> {
    let s = read_status(run)
        .await?
        .ok_or_else(|| LocalError::NoRun(run.url().to_string()))?;
    if s.phase.is_terminal() {
        return Ok(s);
    }
    run.put(keys::CANCEL, Bytes::from(now_rfc3339())).await?;
    if let Some(pid) = s.worker_pid {
        let pid = pid as i32;
        // SAFETY: plain kill(2) on the pid the supervisor recorded.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let until = Instant::now() + grace;
        while Instant::now() < until && unsafe { libc::kill(pid, 0) } == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if unsafe { libc::kill(pid, 0) } == 0 {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    Ok(s)
}
