//! The Kubernetes backend: a run as a batch/v1 GPU Job that runs the worker against an S3 bucket.

pub mod defaults;

pub use defaults::{CONFIG_MAP, CONFIG_MAP_KEY, ClusterDefaults, KUEUE_RBAC_RULES, RBAC_RULES};
pub mod cluster;
pub mod job;
pub mod kueue;
pub mod names;
pub mod observe;

use crate::layout::run as keys;
use crate::store::{Store, StoreError};
use cluster::{Cluster, KubeError, LogLine};

/// Why following a log stopped early.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Prints a run's worker log through `sink`, attempt by attempt: from each attempt's pod while
/// it exists (following the running one), going on with the next pod when one is replaced (a
/// retry or a preemption), and from the bucket (`logs/attempt-N.log`) for attempts whose pods
/// are gone. `earlier` attempts ran under Jobs before a resume (their pods are gone); `only`
/// limits it to one attempt. Returns when the Job has finished (or is gone) and every attempt's
/// log was printed. `notice` gets one-line updates (waiting for a pod, and so on).
pub async fn follow(
    cluster: &Cluster,
    run: &Store,
    run_id: &str,
    earlier: u32,
    only: Option<u32>,
    sink: &mut (dyn FnMut(LogLine) + Send),
    notice: &mut (dyn FnMut(String) + Send),
) -> Result<(), FollowError> {
    if let Some(n) = only
        && n <= earlier
    {
        return Ok(from_bucket(run, n, Some(n), sink).await?);
    }
    if only.is_none() && earlier > 0 {
        from_bucket(run, 1, Some(earlier), sink).await?;
    }
    // The pod of attempt `attempt` is the (attempt - earlier)-th of the current Job.
    let mut attempt = only.unwrap_or(earlier + 1);
    let mut last_notice = String::new();
    let mut printed_any = false;
    loop {
        let job = cluster.job(run_id).await?;
        let pods = cluster.pods_of(run_id).await?;
        let finished = job_finished(job.as_ref());
        if let Some(pod) = pods.get((attempt - earlier) as usize - 1) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if started(pod) {
                match follow_pod(cluster, &name, attempt, sink).await {
                    // Deleted between the listing and the log request (cancel, TTL): the
                    // worker's own copy of this attempt's log is in the bucket.
                    Err(e) if e.is_not_found() => {
                        from_bucket(run, attempt, Some(attempt), sink).await?
                    }
                    r => r?,
                }
                printed_any = true;
                if only.is_some() {
                    return Ok(());
                }
                attempt += 1;
                continue;
            }
            if !finished {
                let obs = observe::observe(
                    job.as_ref().expect("not finished, so there"),
                    &pods,
                    &[],
                    None,
                    pods.len() as u32,
                );
                if obs.reason != last_notice {
                    notice(obs.reason.clone());
                    last_notice = obs.reason;
                }
                tokio::time::sleep(cluster.poll).await;
                continue;
            }
            // A pod that never started, of a finished Job: nothing to print for it.
            attempt += 1;
            continue;
        }
        if !finished {
            tokio::time::sleep(cluster.poll).await;
            continue;
        }
        if pods.is_empty() && !printed_any {
            // The pods are gone (the Job finished and was cleaned up, or was cancelled): the
            // worker kept its own log in the bucket.
            from_bucket(run, attempt, only, sink).await?;
        }
        return Ok(());
    }
}

/// Whether a Job has finished (complete or failed); a Job that is gone (`None`) has.
pub fn job_finished(job: Option<&k8s_openapi::api::batch::v1::Job>) -> bool {
    job.is_none_or(|j| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True"
                })
            })
    })
}

/// Whether the pod's worker container has started (so it has a log).
pub fn started(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    container_started(pod, job::CONTAINER)
}

/// Whether the pod's container `container` has started (so it has a log).
pub fn container_started(pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.name == container)
        .any(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        })
}

/// Follows one pod's log to its end, reconnecting from the last line seen if the stream drops
/// while the pod still runs.
async fn follow_pod(
    cluster: &Cluster,
    pod: &str,
    attempt: u32,
    sink: &mut (dyn FnMut(LogLine) + Send),
) -> Result<(), KubeError> {
    let mut last: Option<(String, String)> = None;
    loop {
        let since = last.as_ref().map(|(ts, _)| ts.clone());
        let mut skipping = since.is_some();
        cluster
            .stream_log(pod, true, since.as_deref(), |ts, text| {
                // sinceTime is inclusive: skip what was printed before the reconnect.
                if skipping {
                    if let Some((lts, ltext)) = &last
                        && (ts < lts.as_str() || (ts == lts && text == ltext))
                    {
                        return;
                    }
                    skipping = false;
                }
                sink(LogLine {
                    attempt,
                    text: text.to_string(),
                });
                last = Some((ts.to_string(), text.to_string()));
            })
            .await?;
        let still_running = cluster
            .pod(pod)
            .await?
            .is_some_and(|p| p.status.and_then(|s| s.phase).as_deref() == Some("Running"));
        if !still_running {
            return Ok(());
        }
        tokio::time::sleep(cluster.poll).await;
    }
}

/// Prints the bucket's copies of the logs of attempts `from..=to`; with no `to`, up to the
/// first attempt that left no log.
async fn from_bucket(
    run: &Store,
    from: u32,
    to: Option<u32>,
    sink: &mut (dyn FnMut(LogLine) + Send),
) -> Result<(), StoreError> {
    for attempt in from..=to.unwrap_or(u32::MAX) {
        let Some(b) = run.get_opt(&keys::log(attempt)).await? else {
            if to.is_none() {
                break;
            }
            continue;
        };
        for l in String::from_utf8_lossy(&b).lines() {
            sink(LogLine {
                attempt,
                text: l.to_string(),
            });
        }
    }
    Ok(())
}
