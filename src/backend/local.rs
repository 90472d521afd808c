//! The local backend: the worker as a child process of a detached supervisor
//! (`idcctl internal supervise`), which survives the terminal closing, retries failed attempts,
//! enforces the deadline, records every attempt's exit code and reason in the run record and
//! beats a heartbeat there; a run whose supervisor is gone is found lost, never left running.

use super::follow::{Output, Sink};
use super::{
    BackendError, CancelOutcome, RunBackend, SubmitOptions, Submitted, Task, TaskProgress,
};
use crate::attempt::AttemptRecord;
use crate::clock::now_rfc3339;
use crate::experiment::Experiment;
use crate::layout::run as keys;
use crate::process::{Liveness, ProcessRef};
use crate::run::{Phase, RunStatus, read_status, write_status};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Exit code of a worker that found bad input (retrying cannot help).
const BAD_INPUT: i32 = crate::exit::ExitCode::UserError as i32;

/// How often the supervisor writes its heartbeat into the run record.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A supervisor on another machine whose heartbeat is older than this is taken for gone.
pub const LOST_AFTER: Duration = Duration::from_secs(60);

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

impl crate::exit::ProcessExitCode for LocalError {
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        match self {
            LocalError::Store(e) => e.process_exit_code(),
            LocalError::NoRun(_) => crate::exit::ExitCode::UserError,
            _ => crate::exit::ExitCode::Failure,
        }
    }
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

/// Starts the supervisor of the run at `run_url` (`idcctl`: `idcctl`, else this executable),
/// detached from this terminal; returns its pid.
pub fn launch(run_url: &str, idcctl: Option<&std::path::Path>) -> Result<u32, LocalError> {
    let exe = match idcctl {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().map_err(|e| LocalError::Spawn {
            what: "idcctl".into(),
            source: e,
        })?,
    };
    let mut cmd = Command::new(&exe);
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
        what: format!("the run supervisor ({} internal supervise)", exe.display()),
        source: e,
    })?;
    Ok(child.id())
}

/// What the supervisor does once a run has ended, before it records the end (whoever waits
/// for the record then finds it done): mirroring the run to its experiment tracker. The layers
/// above the backends provide it (`idc::track::MirrorEnd`); `()` does nothing.
pub trait EndHook {
    /// Called with the run's final record, not yet written.
    fn run_ended(&self, run: &Store, s: &RunStatus) -> impl Future<Output = ()>;
}

impl EndHook for () {
    async fn run_ended(&self, _: &Store, _: &RunStatus) {}
}

/// Runs attempts of the worker until one succeeds, the input is bad, retries run out, the
/// deadline passes or the run is cancelled. Records everything in `status.json`; `on_end` runs
/// before the end is recorded.
pub async fn supervise(
    run: &Store,
    run_url: &str,
    on_end: &impl EndHook,
) -> Result<Phase, LocalError> {
    let mut s = read_status(run)
        .await?
        .ok_or_else(|| LocalError::NoRun(run.url().to_string()))?;
    s.supervisor = Some(ProcessRef::current());
    s.heartbeat_at = Some(now_rfc3339());
    let worker = match worker_binary() {
        Ok(w) => w,
        Err(e) => return finish(run, &mut s, Phase::Failed, e.to_string(), on_end).await,
    };
    let started = Instant::now();
    s.started_at.get_or_insert_with(now_rfc3339);
    loop {
        if cancelled(run).await? {
            let reason = "cancelled before the attempt started".into();
            return finish(run, &mut s, Phase::Cancelled, reason, on_end).await;
        }
        let ended = run_attempt(run, run_url, &worker, &mut s, started).await?;
        if let Some((phase, reason)) = end_after(run, &s, &ended).await? {
            return finish(run, &mut s, phase, reason, on_end).await;
        }
        s.reason = Some(format!(
            "attempt {} failed ({}); retrying",
            s.attempts, ended.detail
        ));
        write_status(run, &s).await?;
    }
}

/// Starts the worker with `args` and `env`, its standard error piped to us.
fn spawn_worker(
    worker: &std::path::Path,
    args: &[impl AsRef<std::ffi::OsStr>],
    env: &[(&str, &str)],
) -> Result<std::process::Child, LocalError> {
    Command::new(worker)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LocalError::Spawn {
            what: worker.display().to_string(),
            source: e,
        })
}

/// How one attempt of the worker ended.
struct AttemptEnd {
    /// Its exit code, or minus the signal that killed it.
    code: i32,
    /// "worker exited with code N" or "worker killed by signal N".
    what: String,
    /// `what`, with the worker's last line on stderr.
    detail: String,
    /// The supervisor stopped it because the run's deadline passed.
    killed_for_deadline: bool,
}

/// Starts the next attempt of the worker and waits until it exits, beating the heartbeat and
/// enforcing the deadline meanwhile; records the exit code.
async fn run_attempt(
    run: &Store,
    run_url: &str,
    worker: &std::path::Path,
    s: &mut RunStatus,
    started: Instant,
) -> Result<AttemptEnd, LocalError> {
    s.attempts += 1;
    s.phase = Phase::Running;
    s.reason = Some(format!(
        "attempt {} of {} running",
        s.attempts, s.max_attempts
    ));
    let attempt = s.attempts.to_string();
    let mut child = spawn_worker(
        worker,
        &["run", "--run", run_url],
        &[(crate::spec::ATTEMPT_ENV, &attempt)],
    )?;
    s.worker = ProcessRef::of(child.id());
    s.heartbeat_at = Some(now_rfc3339());
    write_status(run, s).await?;
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
    let (status, killed_for_deadline) = wait_for_worker(run, &mut child, s, started).await?;
    let last_err = tail.join().unwrap_or_default();
    let code = status
        .code()
        .unwrap_or_else(|| -status.signal().unwrap_or(0));
    s.exit_codes.push(code);
    s.worker = None;
    let what = match status.signal() {
        Some(sig) => format!("worker killed by signal {sig}"),
        None => format!("worker exited with code {code}"),
    };
    let detail = if last_err.is_empty() {
        what.clone()
    } else {
        format!("{what}: {last_err}")
    };
    Ok(AttemptEnd {
        code,
        what,
        detail,
        killed_for_deadline,
    })
}

/// Waits for the worker to exit; sends it SIGTERM once the run's deadline has passed. Returns
/// how it exited and whether the deadline stopped it.
async fn wait_for_worker(
    run: &Store,
    child: &mut std::process::Child,
    s: &mut RunStatus,
    started: Instant,
) -> Result<(std::process::ExitStatus, bool), LocalError> {
    let mut killed_for_deadline = false;
    let mut beat = Instant::now();
    loop {
        if let Some(st) = child.try_wait().map_err(|e| LocalError::Spawn {
            what: "wait".into(),
            source: e,
        })? {
            return Ok((st, killed_for_deadline));
        }
        if let Some(d) = s.deadline_s
            && !killed_for_deadline
            && started.elapsed() > Duration::from_secs(d)
        {
            killed_for_deadline = true;
            // SAFETY: signals our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        if beat.elapsed() >= HEARTBEAT {
            // While its supervisor lives, nobody else writes the record of an active run
            // (cancel, refresh and resume write it only once the supervisor is gone).
            beat = Instant::now();
            s.heartbeat_at = Some(now_rfc3339());
            write_status(run, s).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How the run ends after attempt `e`, with the reason; `None` when it is retried.
async fn end_after(
    run: &Store,
    s: &RunStatus,
    e: &AttemptEnd,
) -> Result<Option<(Phase, String)>, LocalError> {
    Ok(Some(if e.code == 0 {
        (Phase::Succeeded, "finished".into())
    } else if cancelled(run).await? {
        (Phase::Cancelled, format!("cancelled ({})", e.what))
    } else if e.killed_for_deadline {
        let reason = format!("deadline of {}s exceeded", s.deadline_s.unwrap_or(0));
        (Phase::Failed, reason)
    } else if e.code == BAD_INPUT {
        (
            Phase::Failed,
            format!("bad input, not retried: {}", e.detail),
        )
    } else if s.attempts >= s.max_attempts {
        (Phase::Failed, e.detail.clone())
    } else {
        return Ok(None);
    }))
}

async fn finish(
    run: &Store,
    s: &mut RunStatus,
    phase: Phase,
    reason: String,
    on_end: &impl EndHook,
) -> Result<Phase, LocalError> {
    s.phase = phase;
    s.reason = Some(reason);
    s.finished_at = Some(now_rfc3339());
    s.worker = None;
    // Best effort: a run without a summary is listed from its metrics file instead.
    if let Err(e) = crate::run::summarize_end(run, s).await {
        tracing::warn!("run {}: no metrics summary recorded: {e}", s.run_id);
    }
    // Before the end is recorded: whoever waits for it then finds the MLflow mirror complete.
    on_end.run_ended(run, s).await;
    write_status(run, s).await?;
    Ok(phase)
}

async fn cancelled(run: &Store) -> Result<bool, StoreError> {
    Ok(run.size(keys::CANCEL).await?.is_some())
}

/// Records in the run's record that its supervisor failed with `e` (nobody sees the
/// supervisor's stderr), if the bucket can still be written.
pub async fn record_failure(run: &Store, e: &LocalError) {
    if let Ok(Some(mut s)) = read_status(run).await {
        s.phase = Phase::Failed;
        s.reason = Some(format!("the run supervisor failed: {e}"));
        s.finished_at = Some(now_rfc3339());
        s.worker = None;
        let _ = write_status(run, &s).await;
    }
}

/// Whether the run's supervisor still runs: its process, checked by pid, start time and boot
/// on this machine; on another machine, a heartbeat within [`LOST_AFTER`].
pub fn supervisor_alive(s: &RunStatus) -> bool {
    match s.supervisor.as_ref().map(ProcessRef::liveness) {
        Some(Liveness::Alive) => true,
        Some(Liveness::Gone) => false,
        // Elsewhere, or not started yet (the record was written just before the launch).
        Some(Liveness::Elsewhere) | None => s
            .heartbeat_at
            .as_deref()
            .and_then(crate::clock::seconds_since)
            .is_some_and(|age| age < LOST_AFTER.as_secs_f64()),
    }
}

/// Brings an active local run's record up to date: a run whose supervisor is gone is lost, or
/// succeeded if its worker outlived the supervisor and finished. Writes what changed.
pub async fn refresh(run: &Store, s: RunStatus) -> Result<RunStatus, LocalError> {
    if s.phase.is_terminal() || supervisor_alive(&s) {
        return Ok(s);
    }
    if s.worker.as_ref().map(ProcessRef::liveness) == Some(Liveness::Alive) {
        // Its worker still trains; its end is decided when it is gone too.
        return Ok(s);
    }
    // A process that is gone writes nothing more: what the record says now is final, unless a
    // resume has just started a new supervisor.
    let Some(mut s) = read_status(run).await? else {
        return Ok(s);
    };
    if s.phase.is_terminal() || supervisor_alive(&s) {
        return Ok(s);
    }
    let who = match &s.supervisor {
        Some(p) => format!("pid {} on {}", p.pid, p.host),
        None => "never started".into(),
    };
    let last = s
        .heartbeat_at
        .clone()
        .unwrap_or_else(|| s.created_at.clone());
    if run.size(keys::REPORT).await?.is_some() {
        s.phase = Phase::Succeeded;
        s.reason = Some(format!(
            "finished; its supervisor ({who}) was gone before it recorded the end"
        ));
    } else {
        s.phase = Phase::Lost;
        s.reason = Some(format!(
            "its supervisor ({who}) is gone, last heard from at {last} (killed, or the machine restarted); idcctl resume {} continues it from its last checkpoint",
            s.run_id
        ));
    }
    s.finished_at = Some(now_rfc3339());
    s.worker = None;
    crate::run::summarize_end(run, &mut s).await?;
    write_status(run, &s).await?;
    Ok(s)
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The worker was sent SIGTERM (and SIGKILL after the grace period if it stayed).
    Signalled,
    /// No process of the run was running: the record says cancelled, nothing was signalled.
    NothingRan,
}

/// Cancels a run: records the request and sends the worker SIGTERM (it checkpoints and exits),
/// then SIGKILL if it is still there after `grace`. A signal goes only to the process the run
/// recorded (pid, start time and boot checked); a run with no live supervisor is recorded as
/// cancelled here, since none will record it.
pub async fn cancel(run: &Store, grace: Duration) -> Result<Cancelled, LocalError> {
    let s = read_status(run)
        .await?
        .ok_or_else(|| LocalError::NoRun(run.url().to_string()))?;
    if s.phase.is_terminal() && s.phase != Phase::Lost {
        return Ok(Cancelled::NothingRan);
    }
    run.put(keys::CANCEL, Bytes::from(now_rfc3339())).await?;
    let mut signalled = false;
    if let Some(worker) = &s.worker
        && worker.signal(libc::SIGTERM)
    {
        signalled = true;
        let until = Instant::now() + grace;
        while Instant::now() < until && worker.liveness() == Liveness::Alive {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        worker.signal(libc::SIGKILL);
    }
    // A live supervisor records the end itself (it may just have done so and exited): decide on
    // the record as it is now. One that is gone writes nothing more, so the end is ours to write.
    let mut s = read_status(run).await?.unwrap_or(s);
    if (!s.phase.is_terminal() || s.phase == Phase::Lost) && !supervisor_alive(&s) {
        let was = s.phase;
        s.phase = Phase::Cancelled;
        s.reason = Some(if was == Phase::Lost {
            "cancelled; it was lost (its supervisor was gone), nothing was running".into()
        } else {
            "cancelled; its supervisor was gone".into()
        });
        s.finished_at = Some(now_rfc3339());
        s.worker = None;
        write_status(run, &s).await?;
    }
    Ok(if signalled {
        Cancelled::Signalled
    } else {
        Cancelled::NothingRan
    })
}

/// The local backend: runs on this machine, under a detached supervisor.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The `idcctl` whose `internal supervise` runs the supervisor; None: this executable.
    pub idcctl: Option<PathBuf>,
}

impl RunBackend for Local {
    async fn submit(
        &self,
        exp: &Experiment,
        opts: &SubmitOptions,
    ) -> Result<Submitted, BackendError> {
        super::submit_local(exp, opts, self.idcctl.as_deref()).await
    }

    async fn refresh(&self, run: &Store, s: RunStatus) -> Result<RunStatus, BackendError> {
        Ok(refresh(run, s).await?)
    }

    /// The worker's log objects grow in the bucket, one per attempt.
    async fn follow(
        &self,
        run: &Store,
        _: RunStatus,
        only: Option<u32>,
        out: Sink<'_>,
    ) -> Result<RunStatus, BackendError> {
        let mut attempt = only.unwrap_or(1);
        let mut printed = 0usize;
        loop {
            let status = read_status(run)
                .await?
                .ok_or_else(|| LocalError::NoRun(run.url().to_string()))?;
            // A supervisor that is gone ends the following too (the run is lost).
            let status = refresh(run, status).await?;
            // Read after the record, so that an attempt the record shows ended is all there.
            if let Some(b) = run.get_opt(&keys::log(attempt)).await?
                && b.len() > printed
            {
                out(Output::Text(
                    String::from_utf8_lossy(&b[printed..]).into_owned(),
                ));
                printed = b.len();
            }
            if only.is_none() && status.attempts > attempt && status.phase != Phase::Pending {
                // What is left of this attempt's log is out; go on with the next one.
                attempt += 1;
                printed = 0;
                out(Output::Text(format!("--- attempt {attempt} ---\n")));
                continue;
            }
            if status.phase.is_terminal() {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn read_log(
        &self,
        run: &Store,
        _: &RunStatus,
        n: u32,
        _: &[AttemptRecord],
    ) -> Result<Option<String>, BackendError> {
        Ok(super::follow::bucket_log(run, n).await?)
    }

    async fn cancel(&self, run: &Store, s: RunStatus) -> Result<CancelOutcome, BackendError> {
        let s = refresh(run, s).await?;
        if s.phase.is_terminal() && s.phase != Phase::Lost {
            return Ok(CancelOutcome::AlreadyEnded(Box::new(s)));
        }
        let signalled = cancel(run, Duration::from_secs(30)).await? == Cancelled::Signalled;
        Ok(CancelOutcome::Requested { signalled })
    }

    async fn restart(&self, run: &Store, mut s: RunStatus) -> Result<(), BackendError> {
        // The attempts it had left, at least one more (Kubernetes counts the experiment's
        // retries afresh for the new Job).
        s.max_attempts = s
            .attempts
            .saturating_add(s.max_attempts.saturating_sub(s.attempts).max(1));
        s.reason = Some("resumed; waiting for the supervisor to start".into());
        s.supervisor = None;
        s.worker = None;
        s.heartbeat_at = Some(now_rfc3339());
        write_status(run, &s).await?;
        launch(run.url(), self.idcctl.as_deref())?;
        Ok(())
    }

    /// `idc-worker ARGS` as a child process, its progress read from its standard error.
    async fn run_task(
        &self,
        task: &Task<'_>,
        progress: &mut dyn TaskProgress,
    ) -> Result<(), BackendError> {
        let mut child = spawn_worker(&worker_binary()?, &task.worker_args, &[])?;
        let stderr = child.stderr.take().expect("piped");
        let mut last = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !progress.line(&line) && !line.trim().is_empty() {
                last = line;
            }
        }
        let status = child.wait().map_err(|e| LocalError::Spawn {
            what: "wait".into(),
            source: e,
        })?;
        if status.success() {
            return Ok(());
        }
        let (code, what) = match (status.code(), status.signal()) {
            (Some(c), _) => (c, format!("worker exited with code {c}")),
            (None, Some(s)) => (-s, format!("worker killed by signal {s}")),
            _ => (-1, "worker ended".into()),
        };
        Err(BackendError::Task {
            code,
            what,
            detail: last.trim_start_matches("error: ").to_string(),
        })
    }
}
