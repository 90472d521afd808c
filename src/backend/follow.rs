//! A run's worker log, on either backend: followed until the run ends (the local backend's
//! logs grow in the bucket; a Kubernetes run's come from its pods, see `kube::follow`), or one
//! attempt's log read once (from its pod while it exists, else from the bucket).

use super::{BackendError, Backends, RunBackend, Target};
use crate::layout::run as keys;
use crate::run::RunStatus;
use crate::store::{Store, StoreError};

/// What following or reading a log gives the caller to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Log text, as the worker wrote it (standard output).
    Text(String),
    /// Something about the following itself: a new attempt, a pod that waits (standard error).
    Notice(String),
}

/// Where followed output goes, as it comes.
pub type Sink<'a> = &'a mut (dyn FnMut(Output) + Send);

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
    Backends::of_run(&s, target)
        .await?
        .follow(run, s, only, out)
        .await
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
    // A cluster that cannot be reached still leaves the bucket's copy.
    match Backends::of_run(s, target).await {
        Ok(backend) => backend.read_log(run, s, n, &records).await,
        Err(_) => Ok(bucket_log(run, n).await?),
    }
}

/// Attempt `n`'s log as the bucket holds it.
pub async fn bucket_log(run: &Store, n: u32) -> Result<Option<String>, StoreError> {
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
