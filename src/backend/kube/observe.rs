//! Where a run on Kubernetes stands, read from its Job's conditions, its pods (one per attempt),
//! the Job's events and, for a Job waiting in a Kueue queue, its Workload, with a one-line reason
//! naming what users get stuck on.

use super::job::CONTAINER;
use super::kueue::{self, WorkloadLookup};
use crate::run::Phase;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};

/// A run's state as the cluster shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub phase: Phase,
    pub reason: String,
    /// Pods created so far: one per attempt, preempted ones included.
    pub attempts: u32,
    /// Exit code of each finished attempt's worker (negative: killed by that signal).
    pub exit_codes: Vec<i32>,
}

/// Pods in attempt order (oldest first).
pub fn by_attempt(mut pods: Vec<Pod>) -> Vec<Pod> {
    pods.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    pods
}

/// Reads the Job (with `max_attempts` = 1 + retries), its pods in attempt order, its events and
/// what is known of its Kueue Workload (`None`: not looked up, see [`kueue::waiting_queue`]).
pub fn observe(
    job: &Job,
    pods: &[Pod],
    events: &[Event],
    workload: Option<&WorkloadLookup>,
    max_attempts: u32,
) -> Observation {
    let attempts = pods.len() as u32;
    let history = history(pods);
    let status = job.status.as_ref();
    let cond = |t: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
    };
    let with_history = |s: String| match &history {
        Some(h) => format!("{s}; {h}"),
        None => s,
    };
    let done = |phase, reason| Observation {
        phase,
        reason,
        attempts,
        exit_codes: pods.iter().filter_map(exit_code).collect(),
    };
    if cond("Complete").is_some() {
        return done(
            Phase::Succeeded,
            with_history(format!("completed in attempt {attempts}")),
        );
    }
    // FailureTarget comes first, while the Job controller still stops the remaining pods.
    if let Some(c) = cond("Failed").or(cond("FailureTarget")) {
        let last = pods.last().map(ended_how);
        let message = c.message.clone().unwrap_or_default();
        let reason = match c.reason.as_deref() {
            Some("DeadlineExceeded") => format!(
                "deadline exceeded: the Job ran past activeDeadlineSeconds={} (the manifest's deadline)",
                job.spec
                    .as_ref()
                    .and_then(|s| s.active_deadline_seconds)
                    .unwrap_or_default()
            ),
            Some("BackoffLimitExceeded") => format!(
                "failed after {attempts} attempt(s); the last {}",
                last.unwrap_or_else(|| "left no pod".into())
            ),
            Some("PodFailurePolicy") => format!(
                "the worker found bad input (exit code 2), so the Job failed without retrying; see idcctl logs ({message})"
            ),
            Some(r) => format!("failed: {r}: {message}"),
            None => format!("failed: {message}"),
        };
        return done(Phase::Failed, reason);
    }
    // Before the pods: a Job Kueue holds (or evicted) has none running, whatever is left of them.
    if let Some(why) = workload.and_then(|w| kueue::waiting(job, w)) {
        return done(Phase::Pending, why);
    }
    if status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True")
    }) {
        return done(Phase::Pending, "the Job is suspended".into());
    }
    let Some(pod) = pods.last() else {
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
        return done(
            Phase::Pending,
            why.unwrap_or_else(|| "waiting for the Job controller to create the pod".into()),
        );
    };
    let n = attempts;
    let pod_phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    match pod_phase {
        "Running" => {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("?");
            done(
                Phase::Running,
                with_history(format!(
                    "attempt {n} of {max_attempts} running on node {node}"
                )),
            )
        }
        "Pending" => done(Phase::Pending, with_history(pending_why(pod, n))),
        _ => done(
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
        return Some(format!(
            "was preempted ({}: {})",
            c.reason.as_deref().unwrap_or("DisruptionTarget"),
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

/// What happened to earlier attempts, e.g. "attempt 1 was preempted (…)".
fn history(pods: &[Pod]) -> Option<String> {
    let earlier: Vec<String> = pods
        .iter()
        .enumerate()
        .take(pods.len().saturating_sub(1))
        .map(|(i, p)| format!("attempt {} {}", i + 1, ended_how(p)))
        .collect();
    (!earlier.is_empty()).then(|| earlier.join("; "))
}
