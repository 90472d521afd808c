//! The Kubernetes backend: a run as a batch/v1 GPU Job that runs the worker against an S3 bucket.

pub mod defaults;

pub use defaults::{CONFIG_MAP, CONFIG_MAP_KEY, ClusterDefaults, KUEUE_RBAC_RULES, RBAC_RULES};
pub mod cluster;
pub mod job;
pub mod kueue;
pub mod names;
pub mod observe;

use super::follow::{Output, Sink};
use super::{
    BackendError, CancelOutcome, RunBackend, SubmitOptions, Submitted, Task, TaskProgress,
};
use crate::attempt::AttemptRecord;
use crate::experiment::Experiment;
use crate::layout::run as keys;
use crate::run::{Phase, RunStatus};
use crate::store::{Store, StoreError};
use cluster::{Cluster, KubeError, LogLine};

/// The Kubernetes backend on a connected cluster: each run a Job of the worker.
#[derive(Clone)]
pub struct Kubernetes {
    pub cluster: Cluster,
    /// Refuse a bucket the cluster's pods cannot reach (a `file://` one) at submit.
    check_reach: bool,
}

impl Kubernetes {
    /// The backend on `cluster`.
    pub fn on(cluster: Cluster) -> Self {
        Kubernetes {
            cluster,
            check_reach: true,
        }
    }

    /// Lets runs use a bucket only this machine reaches: for a cluster whose pods run here (a
    /// test's mock API server with a `file://` bucket).
    pub fn sharing_this_machine(mut self) -> Self {
        self.check_reach = false;
        self
    }
}

impl RunBackend for Kubernetes {
    async fn submit(
        &self,
        exp: &Experiment,
        opts: &SubmitOptions,
    ) -> Result<Submitted, BackendError> {
        super::submit_kube(exp, opts, &self.cluster, self.check_reach).await
    }

    async fn refresh(&self, run: &Store, s: RunStatus) -> Result<RunStatus, BackendError> {
        super::refresh_on(run, s, &self.cluster).await
    }

    /// The log comes from the attempts' pods (see [`follow`]).
    async fn follow(
        &self,
        run: &Store,
        s: RunStatus,
        only: Option<u32>,
        out: Sink<'_>,
    ) -> Result<RunStatus, BackendError> {
        let earlier = s.cluster.as_ref().map_or(0, |c| c.earlier_attempts);
        // Lines and notices go out as they come, through the one sink.
        let out = std::sync::Mutex::new(out);
        let send = |o: Output| (out.lock().unwrap_or_else(|e| e.into_inner()))(o);
        let mut text = |l: LogLine| {
            send(Output::Text(format!(
                "[attempt {}] {}\n",
                l.attempt, l.text
            )))
        };
        let mut notice = |n: String| send(Output::Notice(n));
        follow(
            &self.cluster,
            run,
            &s.run_id,
            earlier,
            only,
            &mut text,
            &mut notice,
        )
        .await
        .map_err(|e| match e {
            FollowError::Kube(e) => BackendError::Kube(e),
            FollowError::Store(e) => BackendError::Store(e),
        })?;
        if s.phase.is_terminal() {
            return Ok(s);
        }
        self.refresh(run, s).await
    }

    /// From the attempt's pod while it exists (the freshest), else from the bucket.
    async fn read_log(
        &self,
        run: &Store,
        s: &RunStatus,
        n: u32,
        records: &[AttemptRecord],
    ) -> Result<Option<String>, BackendError> {
        let earlier = s.cluster.as_ref().map_or(0, |c| c.earlier_attempts);
        let pods = self.cluster.pods_of(&s.run_id).await?;
        let attempts = observe::number_attempts(records, &pods, earlier);
        if let Some(pod) = attempts
            .iter()
            .find(|a| a.number == n)
            .and_then(|a| a.pod.as_ref())
        {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let mut text = String::new();
            let streamed = self
                .cluster
                .stream_log(&name, false, None, |_, line| {
                    text.push_str(line);
                    text.push('\n');
                })
                .await;
            if streamed.is_ok() {
                return Ok(Some(text));
            }
        }
        Ok(super::follow::bucket_log(run, n).await?)
    }

    async fn cancel(&self, run: &Store, s: RunStatus) -> Result<CancelOutcome, BackendError> {
        super::cancel_on(run, s, &self.cluster).await
    }

    async fn restart(&self, run: &Store, s: RunStatus) -> Result<(), BackendError> {
        super::restart_on(run, s, &self.cluster).await
    }

    /// The task as a Job; waits for it, following its pod's log for progress. A failed Job is
    /// an error with the cluster's reason and the worker's last error line.
    async fn run_task(
        &self,
        task: &Task<'_>,
        progress: &mut dyn TaskProgress,
    ) -> Result<(), BackendError> {
        let cluster = &self.cluster;
        let job = (task.job)(&cluster.defaults().await?);
        let name = job.metadata.name.clone().expect("named");
        cluster.create_job(&job).await?;
        let mut followed = std::collections::BTreeSet::new();
        let mut last_notice = String::new();
        loop {
            let job = cluster
                .job(&name)
                .await?
                .ok_or_else(|| BackendError::Task {
                    code: 1,
                    what: format!(
                        "its Job {name} is gone from namespace {}",
                        cluster.namespace
                    ),
                    detail: "deleted before it finished".into(),
                })?;
            let pods = cluster.pods_of(&name).await?;
            let workload = cluster.workload_of(&job, &pods).await;
            let attempts = observe::attempts_of_pods(&pods);
            let o = observe::observe(&job, &attempts, &[], workload.as_ref(), task.max_attempts);
            match o.phase {
                Phase::Succeeded => return Ok(()),
                Phase::Failed | Phase::Cancelled | Phase::Lost => {
                    return Err(task_failed(task, &name, &o).await);
                }
                Phase::Pending | Phase::Running => {}
            }
            if o.reason != last_notice {
                progress.notice(&o.reason);
                last_notice = o.reason.clone();
            }
            let running = pods.iter().rev().find(|pod| {
                started(pod) && !followed.contains(pod.metadata.name.as_deref().unwrap_or_default())
            });
            if let Some(pod) = running {
                let pod = pod.metadata.name.clone().unwrap_or_default();
                cluster
                    .stream_log(&pod, true, None, |_, text| {
                        progress.line(text);
                    })
                    .await?;
                followed.insert(pod);
                continue;
            }
            tokio::time::sleep(cluster.poll).await;
        }
    }
}

/// Why task Job `name` failed: the cluster's reason, and the last error line of the worker's
/// log in the bucket (else the reason again).
async fn task_failed(task: &Task<'_>, name: &str, o: &observe::Observation) -> BackendError {
    let (dir, key) = task.log;
    let log = match dir.get_opt(key).await {
        Ok(log) => log,
        Err(e) => return e.into(),
    };
    let detail = log
        .as_deref()
        .map(String::from_utf8_lossy)
        .and_then(|l| {
            l.lines()
                .rev()
                .find(|l| l.contains("error:"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| o.reason.clone());
    BackendError::Task {
        code: o.exit_codes.last().copied().unwrap_or(1),
        what: format!("Job {name}: {}", o.reason),
        detail,
    }
}

/// Why following a log stopped early.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Prints a run's worker log through `sink`, attempt by attempt: from each attempt's pod while
/// it exists (following the running one), going on with the next attempt when one ends (a
/// retry, an eviction or a preemption), and from the bucket (`logs/attempt-N.log`) for attempts
/// whose pods are gone. Attempts are numbered by their records in the bucket, which outlive
/// pods (see [`observe::number_attempts`]); `earlier` counts attempts of earlier Jobs from before
/// those records. `only` limits it to one attempt. Returns when the Job has finished (or is gone)
/// and every attempt's log was printed. `notice` gets one-line updates: how an attempt ended,
/// what the next one waits for.
pub async fn follow(
    cluster: &Cluster,
    run: &Store,
    run_id: &str,
    earlier: u32,
    only: Option<u32>,
    sink: &mut (dyn FnMut(LogLine) + Send),
    notice: &mut (dyn FnMut(String) + Send),
) -> Result<(), FollowError> {
    // Attempts of earlier Jobs from before attempt records: their pods are gone, their logs
    // are in the bucket.
    let recorded = crate::attempt::read_all(run).await?;
    let unrecorded = |n: u32| n <= earlier && !recorded.iter().any(|r| r.attempt == n);
    if let Some(n) = only
        && unrecorded(n)
    {
        return Ok(from_bucket(run, n, Some(n), None, sink).await?);
    }
    let mut next = only.unwrap_or(1);
    while only.is_none() && unrecorded(next) {
        from_bucket(run, next, Some(next), None, sink).await?;
        next += 1;
    }
    let mut last_notice = String::new();
    let mut say = |n: String| {
        if n != last_notice {
            notice(n.clone());
            last_notice = n;
        }
    };
    loop {
        // Records before pods: a record's pod that still exists is then among those listed.
        let records = crate::attempt::read_all(run).await?;
        let job = cluster.job(run_id).await?;
        let pods = cluster.pods_of(run_id).await?;
        let attempts = observe::number_attempts(&records, &pods, earlier);
        let finished = job_finished(job.as_ref());
        let this = attempts.iter().find(|a| a.number == next);
        let newest = attempts.last().map_or(earlier, |a| a.number);
        match this {
            // An attempt of an earlier Job from before attempt records (its pod is gone), or a
            // number no record claims: whatever log the bucket has.
            None if next <= earlier || next < newest => {
                from_bucket(run, next, Some(next), None, sink).await?;
            }
            Some(a) if a.pod.as_ref().is_some_and(started) => {
                let last_seen = match follow_pod(cluster, &pod_name(a), next, sink).await {
                    // Deleted while (or before) its log was read (an eviction, a cancel, the
                    // Job's TTL): the worker keeps its own copy of the log in the bucket.
                    Err(FollowPodError { error, last }) if error.is_not_found() => {
                        from_bucket(run, next, Some(next), last.as_deref(), sink).await?;
                        None
                    }
                    Err(FollowPodError { error, .. }) => return Err(error.into()),
                    Ok(pod) => pod,
                };
                say(format!(
                    "attempt {next} {}",
                    ended_how(run, next, last_seen).await?
                ));
            }
            Some(a) if a.pod.is_none() => {
                from_bucket(run, next, Some(next), None, sink).await?;
                if let Some(how) = a.ended_how() {
                    say(format!("attempt {next} {how}"));
                }
            }
            // Not started yet (its pod waits), or not made yet.
            _ => {
                if finished {
                    if next < newest {
                        // A pod that never started, of a finished Job: nothing to print for it.
                        next += 1;
                        continue;
                    }
                    if job.is_none() && next == 1 && records.is_empty() {
                        // The pods are gone and no record says which attempts ran: the bucket
                        // keeps the logs of the attempts that wrote any.
                        from_bucket(run, 1, None, None, sink).await?;
                    }
                    return Ok(());
                }
                if let Some(job) = &job {
                    let obs = observe::observe(job, &attempts, &[], None, newest.max(next));
                    say(obs.current);
                }
                tokio::time::sleep(cluster.poll).await;
                continue;
            }
        }
        if only.is_some() {
            return Ok(());
        }
        next += 1;
    }
}

/// How attempt `n` ended: from its pod as last seen, if it was still there (it knows about
/// evictions, and a killed worker's exit code, which its record then keeps), else from the
/// attempt's record.
async fn ended_how(
    run: &Store,
    n: u32,
    pod: Option<k8s_openapi::api::core::v1::Pod>,
) -> Result<String, FollowError> {
    let record = crate::attempt::read_all(run)
        .await?
        .into_iter()
        .find(|r| r.attempt == n);
    let seen = observe::Attempt {
        number: n,
        record: record.clone(),
        pod,
    };
    if let Some(done) = seen.record_to_complete() {
        crate::attempt::write(run, &done).await?;
    }
    if seen.pod.is_some()
        && let Some(how) = seen.ended_how()
    {
        return Ok(how);
    }
    let recorded = observe::Attempt {
        number: n,
        record,
        pod: None,
    };
    Ok(recorded.ended_how().unwrap_or_else(|| "ended".into()))
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

/// Why following a pod's log stopped, with the last line printed before (so that the rest can
/// be taken from the bucket's copy without repeating lines).
struct FollowPodError {
    error: KubeError,
    last: Option<String>,
}

/// Follows one pod's log to its end, reconnecting from the last line seen if the stream drops
/// while the pod still runs; returns the pod as last read (`None`: gone).
/// The name of attempt `a`'s pod.
fn pod_name(a: &observe::Attempt) -> String {
    a.pod
        .as_ref()
        .and_then(|p| p.metadata.name.clone())
        .unwrap_or_default()
}

async fn follow_pod(
    cluster: &Cluster,
    pod: &str,
    attempt: u32,
    sink: &mut (dyn FnMut(LogLine) + Send),
) -> Result<Option<k8s_openapi::api::core::v1::Pod>, FollowPodError> {
    let mut last: Option<(String, String)> = None;
    let fail = |error, last: &Option<(String, String)>| FollowPodError {
        error,
        last: last.as_ref().map(|(_, t)| t.clone()),
    };
    loop {
        let since = last.as_ref().map(|(ts, _)| ts.clone());
        let mut skipping = since.is_some();
        let streamed = cluster
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
            .await;
        streamed.map_err(|e| fail(e, &last))?;
        let now = cluster.pod(pod).await.map_err(|e| fail(e, &last))?;
        let still_running = now
            .as_ref()
            .is_some_and(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        if !still_running {
            return Ok(now);
        }
        tokio::time::sleep(cluster.poll).await;
    }
}

/// Prints the bucket's copies of the logs of attempts `from..=to`; with no `to`, up to the
/// first attempt that left no log. `after`: the last line already printed (from the pod) of
/// attempt `from`, whose copy is printed from the line after it.
async fn from_bucket(
    run: &Store,
    from: u32,
    to: Option<u32>,
    after: Option<&str>,
    sink: &mut (dyn FnMut(LogLine) + Send),
) -> Result<(), StoreError> {
    for attempt in from..=to.unwrap_or(u32::MAX) {
        let Some(b) = run.get_opt(&keys::log(attempt)).await? else {
            if to.is_none() {
                break;
            }
            continue;
        };
        let text = String::from_utf8_lossy(&b);
        let lines: Vec<&str> = text.lines().collect();
        let skip = match after.filter(|_| attempt == from) {
            Some(last) => lines.iter().rposition(|l| *l == last).map_or(0, |i| i + 1),
            None => 0,
        };
        for l in &lines[skip..] {
            sink(LogLine {
                attempt,
                text: l.to_string(),
            });
        }
    }
    Ok(())
}
