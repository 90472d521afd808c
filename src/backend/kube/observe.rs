//! Where a run on Kubernetes stands, read from its Job's conditions and times, its attempts
//! (the attempt records in the bucket, which outlive pods, matched with the pods that still
//! exist), the Job's events and, for a Job waiting in a Kueue queue, its Workload, with a
//! one-line reason naming what users get stuck on.

use super::job::CONTAINER;
use super::kueue::{self, WorkloadLookup};
use crate::attempt::{AttemptRecord, describe_exit};
use crate::run::Phase;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};

/// A run's state as the cluster shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub phase: Phase,
    pub reason: String,
    /// Attempts started so far (the newest attempt's number), those whose pods are gone included.
    pub attempts: u32,
    /// Exit code of each finished attempt's worker (negative: killed by that signal).
    pub exit_codes: Vec<i32>,
    /// When the Job started (its `startTime`).
    pub started_at: Option<String>,
    /// When the Job finished (`completionTime`, or when its Failed condition was set).
    pub finished_at: Option<String>,
    /// The reason without the earlier attempts' history (what a follower, who has seen them
    /// end, is told).
    pub current: String,
}

/// Pods in attempt order (oldest first).
pub fn by_attempt(mut pods: Vec<Pod>) -> Vec<Pod> {
    pods.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    pods
}

/// One attempt of a run: its record in the bucket (from the worker, once it started) and its
/// pod, while the pod exists.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub number: u32,
    pub record: Option<AttemptRecord>,
    pub pod: Option<Pod>,
}

/// Numbers a run's attempts: every attempt record (read from the bucket before the pods were
/// listed), each matched with its pod by name, then the pods whose worker has not written a
/// record yet, in creation order, after the highest number known (`earlier` counts attempts of
/// a run from before attempt records, whose pods are gone).
pub fn number_attempts(records: &[AttemptRecord], pods: &[Pod], earlier: u32) -> Vec<Attempt> {
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let mut out: Vec<Attempt> = records
        .iter()
        .map(|r| Attempt {
            number: r.attempt,
            record: Some(r.clone()),
            pod: pods
                .iter()
                .find(|p| r.pod.as_deref() == Some(name(p).as_str()))
                .cloned(),
        })
        .collect();
    let mut next = out.iter().map(|a| a.number).max().unwrap_or(0).max(earlier);
    for p in pods {
        if !out
            .iter()
            .any(|a| a.pod.as_ref().is_some_and(|q| name(q) == name(p)))
        {
            next += 1;
            out.push(Attempt {
                number: next,
                record: None,
                pod: Some(p.clone()),
            });
        }
    }
    out
}

impl Attempt {
    /// The worker's exit code: from its pod while the pod exists, else from its record.
    pub fn exit_code(&self) -> Option<i32> {
        self.pod
            .as_ref()
            .and_then(exit_code)
            .or(self.record.as_ref().and_then(|r| r.exit_code))
    }

    /// Whether the attempt's pod still exists and has not ended.
    pub fn is_live(&self) -> bool {
        self.pod.as_ref().is_some_and(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
    }

    /// How the attempt ended, e.g. "was evicted (…)", from its pod while it exists (the pod
    /// knows about disruptions), else from its record; `None` while it runs.
    pub fn ended_how(&self) -> Option<String> {
        if let Some(pod) = &self.pod {
            if disruption(pod).is_some() || exit_code(pod).is_some() || !self.is_live() {
                return Some(ended_how(pod));
            }
            return None;
        }
        let r = self.record.as_ref()?;
        Some(match (&r.ended, r.exit_code) {
            (Some(how), Some(3)) if !how.starts_with("was ") => {
                format!("{how}; its pod was then deleted (evicted, preempted, cancelled or past the deadline)")
            }
            (Some(how), _) => how.clone(),
            (None, Some(c)) => describe_exit(c),
            (None, None) => "ended without recording its end: its pod was deleted (killed, evicted, or its node was lost)".into(),
        })
    }

    /// The record to write when the pod shows an end that the record lacks (a killed worker
    /// cannot write its own), so the end survives the pod.
    pub fn record_to_complete(&self) -> Option<AttemptRecord> {
        let r = self.record.as_ref()?;
        let pod = self.pod.as_ref()?;
        let mut done = r.clone();
        // An eviction or preemption is known only while the pod is there: keep it.
        if let Some(d) = disruption(pod)
            && !r.ended.as_deref().is_some_and(|e| e.starts_with("was "))
        {
            done.ended = Some(match &r.ended {
                Some(how) => format!("{d}; {how}"),
                None => d,
            });
        }
        if r.exit_code.is_none()
            && let Some(code) = exit_code(pod)
        {
            let t = worker_status(pod)?.state.as_ref()?.terminated.as_ref()?;
            done.exit_code = Some(code);
            done.finished_at = t.finished_at.as_ref().map(rfc3339);
            if disruption(pod).is_none() {
                done.ended = Some(ended_how(pod));
            }
        }
        (done != *r).then_some(done)
    }
}

/// The attempts of a Job whose worker writes no attempt records (a prediction Job): its pods.
pub fn attempts_of_pods(pods: &[Pod]) -> Vec<Attempt> {
    number_attempts(&[], pods, 0)
}

/// An API server time as the run records write times (RFC 3339, UTC, whole seconds).
pub fn rfc3339(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Reads the Job (with `max_attempts` = 1 + retries), the run's attempts (see
/// [`number_attempts`]), its events and what is known of its Kueue Workload (`None`: not
/// looked up, see [`kueue::waiting_queue`]).
pub fn observe(
    job: &Job,
    attempts: &[Attempt],
    events: &[Event],
    workload: Option<&WorkloadLookup>,
    max_attempts: u32,
) -> Observation {
    // The newest attempt whose pod is still there; attempts before it are history.
    let current = attempts.last().filter(|a| a.pod.is_some());
    let o = JobView {
        job,
        attempts,
        history: history(attempts, current.is_none()),
        count: attempts.last().map_or(0, |a| a.number),
    };
    if let Some((phase, reason)) = o.ended() {
        return o.done(phase, reason);
    }
    // Before the pods: a Job Kueue holds (or evicted) has none running, whatever is left of them.
    if let Some(why) = o.held(workload) {
        return o.done(Phase::Pending, why);
    }
    let Some((n, pod)) = current.and_then(|a| Some((a.number, a.pod.as_ref()?))) else {
        return o.done(Phase::Pending, o.with_history(o.no_pod_yet(events)));
    };
    let (phase, text) = pod_state(n, pod, max_attempts);
    o.done(phase, o.with_history(text))
}

/// A Job with its run's attempts, read by [`observe`].
struct JobView<'a> {
    job: &'a Job,
    attempts: &'a [Attempt],
    /// How the attempts before the current one ended.
    history: Option<String>,
    /// Attempts started so far.
    count: u32,
}

impl JobView<'_> {
    fn status(&self) -> Option<&k8s_openapi::api::batch::v1::JobStatus> {
        self.job.status.as_ref()
    }

    /// The Job's condition `t`, when it is true.
    fn cond(&self, t: &str) -> Option<&k8s_openapi::api::batch::v1::JobCondition> {
        self.status()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
    }

    fn with_history(&self, s: String) -> String {
        match &self.history {
            Some(h) => format!("{h}; {s}"),
            None => s,
        }
    }

    /// The observation of the Job in `phase` for `reason`.
    fn done(&self, phase: Phase, reason: String) -> Observation {
        let status = self.status();
        let finished_at = status
            .and_then(|s| s.completion_time.as_ref())
            .or_else(|| {
                self.cond("Failed")
                    .or(self.cond("FailureTarget"))
                    .and_then(|c| c.last_transition_time.as_ref())
            })
            .map(rfc3339);
        Observation {
            phase,
            current: match &self.history {
                Some(h) => reason
                    .strip_prefix(&format!("{h}; "))
                    .unwrap_or(&reason)
                    .to_string(),
                None => reason.clone(),
            },
            reason,
            attempts: self.count,
            exit_codes: self
                .attempts
                .iter()
                .filter_map(Attempt::exit_code)
                .collect(),
            started_at: status.and_then(|s| s.start_time.as_ref()).map(rfc3339),
            finished_at: if phase == Phase::Succeeded || phase == Phase::Failed {
                finished_at
            } else {
                None
            },
        }
    }

    /// The Job's verdict, once it has one: completed, or failed and why.
    fn ended(&self) -> Option<(Phase, String)> {
        let count = self.count;
        if self.cond("Complete").is_some() {
            return Some((
                Phase::Succeeded,
                self.with_history(format!("completed in attempt {count}")),
            ));
        }
        // FailureTarget comes first, while the Job controller still stops the remaining pods.
        let c = self.cond("Failed").or(self.cond("FailureTarget"))?;
        let last = self.attempts.last().and_then(Attempt::ended_how);
        let message = c.message.clone().unwrap_or_default();
        let reason = match c.reason.as_deref() {
            Some("DeadlineExceeded") => format!(
                "deadline exceeded: the Job ran past activeDeadlineSeconds={} (the manifest's deadline){}",
                self.job
                    .spec
                    .as_ref()
                    .and_then(|s| s.active_deadline_seconds)
                    .unwrap_or_default(),
                last.map(|l| format!("; attempt {count} {l}"))
                    .unwrap_or_default()
            ),
            Some("BackoffLimitExceeded") => format!(
                "failed after {count} attempt(s); the last {}",
                last.unwrap_or_else(|| "left no pod".into())
            ),
            Some("PodFailurePolicy") => format!(
                "the worker found bad input (exit code 2), so the Job failed without retrying; see idcctl logs ({message})"
            ),
            Some(r) => format!("failed: {r}: {message}"),
            None => format!("failed: {message}"),
        };
        Some((Phase::Failed, reason))
    }

    /// Why the Job is held before any pod runs: by Kueue, or suspended.
    fn held(&self, workload: Option<&WorkloadLookup>) -> Option<String> {
        if let Some(why) = workload.and_then(|w| kueue::waiting(self.job, w)) {
            return Some(why);
        }
        self.cond("Suspended")
            .map(|_| "the Job is suspended".to_string())
    }

    /// Why the next attempt has no pod yet: the Job controller's latest warning, if any.
    fn no_pod_yet(&self, events: &[Event]) -> String {
        let why = events
            .iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .max_by_key(|e| e.last_timestamp.clone())
            .map(|e| {
                format!(
                    "the Job controller cannot create a pod: {}: {}",
                    e.reason.as_deref().unwrap_or("Warning"),
                    e.message.as_deref().unwrap_or("")
                )
            });
        let waiting =
            why.unwrap_or_else(|| "waiting for the Job controller to create the pod".into());
        // An attempt whose pod is gone (evicted, preempted) is followed by the next one.
        if self.count > 0 {
            format!("attempt {} starts: {waiting}", self.count + 1)
        } else {
            waiting
        }
    }
}

/// Where attempt `n` stands by its pod, before the earlier attempts' history.
fn pod_state(n: u32, pod: &Pod, max_attempts: u32) -> (Phase, String) {
    let pod_phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if let Some(d) = disruption(pod).filter(|_| pod_phase == "Running") {
        // Evicted or preempted and still stopping: its worker checkpoints on SIGTERM.
        return (
            Phase::Running,
            format!("attempt {n} {d}; it is stopping and a new attempt will follow"),
        );
    }
    match pod_phase {
        "Running" => {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("?");
            (
                Phase::Running,
                format!("attempt {n} of {max_attempts} running on node {node}"),
            )
        }
        "Pending" => (Phase::Pending, pending_why(pod, n)),
        _ => (
            // The pod ended but the Job has not decided yet: a retry is on its way.
            Phase::Running,
            format!(
                "attempt {n} {}; waiting for the Job controller's next step",
                ended_how(pod)
            ),
        ),
    }
}

/// What the owner of a pod can change when it cannot start, in the words of what made it.
#[derive(Debug, Clone, Copy)]
pub struct Remedies {
    /// When no node has a free GPU.
    pub gpu: &'static str,
    /// When every node carries a taint the pod does not tolerate.
    pub taint: &'static str,
    /// What selects the pod's nodes.
    pub node_selector: &'static str,
    /// When its image cannot be pulled.
    pub image: &'static str,
}

/// A worker's: its experiment manifest.
pub const WORKER_REMEDIES: Remedies = Remedies {
    gpu: "it starts when one frees up, or lower resources.gpus",
    taint: "add it under resources.tolerations",
    node_selector: "resources.node_selector",
    image: "check resources.image, the registry and imagePullSecrets",
};

/// Why attempt `n`'s pod has not started.
fn pending_why(pod: &Pod, n: u32) -> String {
    why_pending(pod, &format!("attempt {n}"), &WORKER_REMEDIES)
}

/// Why `pod` (called `who`: "attempt 2") has not started, and what to do about it.
pub fn why_pending(pod: &Pod, who: &str, fix: &Remedies) -> String {
    let status = pod.status.as_ref();
    let unschedulable = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unschedulable {
        let msg = c.message.clone().unwrap_or_default();
        return if msg.contains("Insufficient nvidia.com/gpu") {
            format!(
                "{who} is waiting for a GPU: no node has a free nvidia.com/gpu ({msg}); {}",
                fix.gpu
            )
        } else if msg.contains("untolerated taint") {
            format!(
                "{who} cannot be scheduled: the nodes carry a taint the pod does not tolerate ({msg}); {}",
                fix.taint
            )
        } else if msg.contains("node affinity/selector") || msg.contains("didn't match Pod's node")
        {
            format!(
                "{who} cannot be scheduled: no node matches {} ({msg})",
                fix.node_selector
            )
        } else {
            format!("{who} cannot be scheduled: {msg}")
        };
    }
    let waiting = worker_status(pod).and_then(|c| c.state.as_ref()?.waiting.as_ref());
    if let Some(w) = waiting {
        let reason = w.reason.as_deref().unwrap_or("");
        let msg = w.message.as_deref().unwrap_or("");
        if matches!(
            reason,
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull"
        ) {
            let image = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.as_deref())
                .unwrap_or("?");
            return format!(
                "{who} cannot pull image {image} ({reason}: {msg}); {}",
                fix.image
            );
        }
        if matches!(
            reason,
            "CreateContainerConfigError" | "CreateContainerError"
        ) {
            return format!(
                "{who} cannot start its container ({reason}: {msg}); is the S3 credentials Secret there?"
            );
        }
        if !reason.is_empty() {
            return format!("{who} is starting ({reason})");
        }
    }
    if status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    }) {
        return format!("{who} is starting its container");
    }
    format!("{who} is waiting to be scheduled")
}

fn worker_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)
}

/// The worker's exit code in a finished pod (negative: the signal that killed it).
fn exit_code(pod: &Pod) -> Option<i32> {
    let t = worker_status(pod)?.state.as_ref()?.terminated.as_ref()?;
    Some(match t.signal {
        Some(s) if s > 0 => -s,
        _ => t.exit_code,
    })
}

/// Whether the pod was disrupted (preempted, evicted, its node drained or shut down).
fn disruption(pod: &Pod) -> Option<String> {
    let s = pod.status.as_ref()?;
    if let Some(c) = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    {
        let reason = c.reason.as_deref().unwrap_or("DisruptionTarget");
        let what = match reason {
            "EvictionByEvictionAPI" | "TerminationByKubelet" => "was evicted",
            "DeletionByTaintManager" => "was deleted for a node taint",
            "DeletionByPodGC" => "was deleted with its lost node",
            _ => "was preempted",
        };
        return Some(format!(
            "{what} ({reason}: {})",
            c.message.as_deref().unwrap_or("")
        ));
    }
    (s.reason.as_deref() == Some("Evicted")).then(|| {
        format!(
            "was evicted ({})",
            s.message.as_deref().unwrap_or("node pressure")
        )
    })
}

/// How a finished pod ended, e.g. "was OOMKilled (memory limit 16Gi)".
fn ended_how(pod: &Pod) -> String {
    if let Some(d) = disruption(pod) {
        return d;
    }
    let t = worker_status(pod).and_then(|c| c.state.as_ref()?.terminated.as_ref());
    match t {
        Some(t) if t.reason.as_deref() == Some("OOMKilled") => {
            let limit = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.resources.as_ref()?.limits.as_ref()?.get("memory"))
                .map(|q| q.0.clone())
                .unwrap_or_else(|| "?".into());
            format!(
                "was OOMKilled (memory limit {limit}); raise resources.memory or lower train.batch_size"
            )
        }
        Some(t) if t.exit_code == crate::exit::ExitCode::Preempted as i32 => {
            "stopped on SIGTERM after writing a checkpoint (exit code 3)".into()
        }
        Some(t) if t.exit_code == 0 => "succeeded".into(),
        // 128 + N: the container's process was killed by signal N (SIGKILL: 137); its last log
        // line says nothing about why.
        Some(t) if t.signal.is_some_and(|s| s > 0) || (129..=192).contains(&t.exit_code) => {
            let signal = t.signal.filter(|s| *s > 0).unwrap_or(t.exit_code - 128);
            format!(
                "was killed by signal {signal}{} (exit code {})",
                match signal {
                    9 => " (SIGKILL)",
                    15 => " (SIGTERM)",
                    _ => "",
                },
                t.exit_code
            )
        }
        Some(t) => format!(
            "exited with code {}{}",
            t.exit_code,
            t.message
                .as_deref()
                .map(|m| format!(": {}", last_line(m)))
                .unwrap_or_default()
        ),
        None => format!(
            "ended ({})",
            pod.status
                .as_ref()
                .and_then(|s| s.reason.clone().or(s.phase.clone()))
                .unwrap_or_default()
        ),
    }
}

fn last_line(s: &str) -> &str {
    s.trim_end().lines().last().unwrap_or("")
}

/// What happened to earlier attempts, e.g. "attempt 1 was evicted (…)": every attempt but the
/// current one, or all of them when none is current (its pod is gone).
fn history(attempts: &[Attempt], all: bool) -> Option<String> {
    let n = if all {
        attempts.len()
    } else {
        attempts.len().saturating_sub(1)
    };
    let earlier: Vec<String> = attempts[..n]
        .iter()
        .map(|a| {
            format!(
                "attempt {} {}",
                a.number,
                a.ended_how().unwrap_or_else(|| "is still stopping".into())
            )
        })
        .collect();
    (!earlier.is_empty()).then(|| earlier.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn rec(n: u32, pod: &str, exit: Option<i32>) -> AttemptRecord {
        let r = AttemptRecord::starting(n, Some(pod.into()));
        match exit {
            Some(c) => r.ended_with(c, describe_exit(c)),
            None => r,
        }
    }

    #[test]
    fn attempts_are_numbered_by_their_records_then_by_pods_without_one() {
        // Attempt 1's pod was evicted and deleted; attempt 2's runs; a third pod has not
        // started its worker yet.
        let records = [rec(1, "a", Some(3)), rec(2, "b", None)];
        let got = number_attempts(&records, &[pod("b"), pod("c")], 0);
        let seen: Vec<(u32, Option<String>)> = got
            .iter()
            .map(|a| {
                (
                    a.number,
                    a.pod.as_ref().and_then(|p| p.metadata.name.clone()),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [(1, None), (2, Some("b".into())), (3, Some("c".into()))]
        );
        assert_eq!(got[0].exit_code(), Some(3));
        assert!(
            got[0]
                .ended_how()
                .unwrap()
                .contains("its pod was then deleted")
        );
        // Before attempt records, attempts of earlier Jobs come first.
        let legacy = number_attempts(&[], &[pod("x")], 2);
        assert_eq!(legacy[0].number, 3);
    }

    #[test]
    fn an_attempt_that_recorded_no_end_and_lost_its_pod_says_so() {
        let got = number_attempts(&[rec(1, "a", None)], &[], 0);
        assert!(
            got[0]
                .ended_how()
                .unwrap()
                .starts_with("ended without recording its end"),
            "{:?}",
            got[0].ended_how()
        );
        assert_eq!(got[0].exit_code(), None);
    }
}
