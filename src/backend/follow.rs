//! A run's worker log, on either backend: followed until the run ends (the local backend's
//! logs grow in the bucket; a Kubernetes run's come from its pods, see `kube::follow`), or one
//! attempt's log read once (from its pod while it exists, else from the bucket).

use super::{BackendError, Target, kube, local, refresh};
use crate::experiment::Backend;
use crate::layout::run as keys;
use crate::run::{self, Phase, RunStatus};
use crate::store::Store;
use std::time::Duration;

/// What following or reading a log gives the caller to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Log text, as the worker wrote it (standard output).
    Text(String),
    /// Something about the following itself: a new attempt, a pod that waits (standard error).
    Notice(String),
}

type Sink<'a> = &'a mut (dyn FnMut(Output) + Send);

/// Follows the log of the run `s` (only attempt `only`, if given) until the run ends; returns
/// the run's record as it ended.
pub async fn follow(
    run: &Store,
    s: RunStatus,
    target: &Target,
    only: Option<u32>,
    out: Sink<'_>,
) -> Result<RunStatus, BackendError> {
    let known = crate::attempt::read_all(run)
        .await?
        .last()
        .map_or(0, |r| r.attempt);
    check_attempt(&s, only, known)?;
    if s.backend != Backend::Kubernetes {
        return follow_bucket(run, target, only, out).await;
    }
    let cluster = target.for_run(s.cluster.as_ref()).connect().await?;
    let earlier = s.cluster.as_ref().map_or(0, |c| c.earlier_attempts);
    // Lines and notices go out as they come, through the one sink.
    let out = std::sync::Mutex::new(out);
    let send = |o: Output| (out.lock().unwrap_or_else(|e| e.into_inner()))(o);
    let mut text = |l: kube::cluster::LogLine| {
        send(Output::Text(format!(
            "[attempt {}] {}\n",
            l.attempt, l.text
        )))
    };
    let mut notice = |n: String| send(Output::Notice(n));
    kube::follow(
        &cluster,
        run,
        &s.run_id,
        earlier,
        only,
        &mut text,
        &mut notice,
    )
    .await
    .map_err(|e| match e {
        kube::FollowError::Kube(e) => BackendError::Kube(e),
        kube::FollowError::Store(e) => BackendError::Store(e),
    })?;
    refresh(run, s, target).await
}

/// The local backend: the worker's log objects grow in the bucket, one per attempt.
async fn follow_bucket(
    run: &Store,
    target: &Target,
    only: Option<u32>,
    out: Sink<'_>,
) -> Result<RunStatus, BackendError> {
    let mut attempt = only.unwrap_or(1);
    let mut printed = 0usize;
    loop {
        let status = run::read_status(run)
            .await?
            .ok_or_else(|| local::LocalError::NoRun(run.url().to_string()))?;
        // A supervisor that is gone ends the following too (the run is lost).
        let status = refresh(run, status, target).await?;
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

/// One attempt's log (`attempt`, else the latest), as it is now; None when it has none yet.
pub async fn read(
    run: &Store,
    s: &RunStatus,
    target: &Target,
    attempt: Option<u32>,
) -> Result<Option<String>, BackendError> {
    // Attempt records outlive pods: they say which attempts there were, and which pod ran each.
    let records = crate::attempt::read_all(run).await?;
    let known = records.last().map_or(0, |r| r.attempt);
    check_attempt(s, attempt, known)?;
    let n = attempt.unwrap_or(s.attempts.max(known).max(1));
    if s.backend == Backend::Kubernetes
        && let Ok(cluster) = target.for_run(s.cluster.as_ref()).connect().await
    {
        let earlier = s.cluster.as_ref().map_or(0, |c| c.earlier_attempts);
        let pods = cluster.pods_of(&s.run_id).await?;
        let attempts = kube::observe::number_attempts(&records, &pods, earlier);
        // The pod's log is the freshest while the pod exists.
        if let Some(pod) = attempts
            .iter()
            .find(|a| a.number == n)
            .and_then(|a| a.pod.as_ref())
        {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let mut text = String::new();
            let streamed = cluster
                .stream_log(&name, false, None, |_, line| {
                    text.push_str(line);
                    text.push('\n');
                })
                .await;
            if streamed.is_ok() {
                return Ok(Some(text));
            }
        }
    }
    Ok(run
        .get_opt(&keys::log(n))
        .await?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// An attempt the run has made (or is making: its first before it starts); `known`: the
/// newest attempt the run's attempt records name, which the record may not count yet.
fn check_attempt(s: &RunStatus, attempt: Option<u32>, known: u32) -> Result<(), BackendError> {
    let made = s.attempts.max(known);
    match attempt {
        Some(a) if a == 0 || a > made.max(1) => Err(BackendError::Invalid(format!(
            "--attempt {a}: run {} has {made} attempt(s), numbered from 1",
            s.run_id
        ))),
        _ => Ok(()),
    }
}
