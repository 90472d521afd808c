//! Kueue (`kueue.x-k8s.io`): the labels that put a Job in a LocalQueue, the few fields of its
//! Workload that idcctl reads, and the one line that says why a queued Job waits.

use super::defaults::ClusterDefaults;
use crate::experiment::Resources;
use ::kube::api::{ApiResource, GroupVersionKind};
use ::kube::core::{NotUsed, Object};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

/// Label on a Job naming the LocalQueue that admits it; Kueue suspends such a Job until then.
pub const QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// Label on a Job naming its WorkloadPriorityClass.
pub const PRIORITY_LABEL: &str = "kueue.x-k8s.io/priority-class";
/// Label Kueue puts on the Workload it makes for a Job: the Job's UID.
pub const JOB_UID_LABEL: &str = "kueue.x-k8s.io/job-uid";
/// Kueue's API group.
pub const GROUP: &str = "kueue.x-k8s.io";
/// The Workload version read: every Kueue release serves v1beta1 (v1beta2 exists from 0.15 on
/// and is stored from 0.16 on, v1beta1 still served), and the fields read here are the same in
/// both.
pub const VERSION: &str = "v1beta1";

/// The Workload resource, for [`::kube::Api::namespaced_with`].
pub fn workload_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "Workload"),
        "workloads",
    )
}

/// A Workload, reduced to its metadata and what idcctl reads of its status.
pub type Workload = Object<NotUsed, WorkloadStatus>;

/// The part of a Workload's status that says where it stands.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadStatus {
    pub conditions: Vec<WorkloadCondition>,
    pub admission: Option<Admission>,
    pub admission_checks: Vec<AdmissionCheck>,
}

/// One of a Workload's conditions (`QuotaReserved`, `Admitted`, `Evicted`, `Finished`, …).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// Where a Workload reserved quota.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Admission {
    pub cluster_queue: String,
}

/// The state of one of the ClusterQueue's admission checks for the Workload.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AdmissionCheck {
    pub name: String,
    pub state: String,
    pub message: String,
}

/// What idcctl could learn of a queued Job's Workload.
#[derive(Debug, Clone)]
pub enum WorkloadLookup {
    Found(Box<Workload>),
    /// Kueue has made no Workload for the Job (yet).
    Missing,
    /// The API server serves no Kueue Workloads (404): Kueue is not installed.
    NotServed,
    /// The API server refused to list Workloads (403), with its message.
    Forbidden(String),
    /// Any other error, in words.
    Failed(String),
}

/// The LocalQueue a Job goes to: the manifest's `resources.queue`, else the namespace's
/// default; an empty name (`resources.queue: ""`) is none.
pub fn queue_for<'a>(res: &'a Resources, defaults: &'a ClusterDefaults) -> Option<&'a str> {
    res.queue
        .as_deref()
        .or(defaults.queue.as_deref())
        .filter(|q| !q.is_empty())
}

/// The LocalQueue named on the Job, if any.
pub fn queue_of(job: &Job) -> Option<&str> {
    job.metadata
        .labels
        .as_ref()?
        .get(QUEUE_LABEL)
        .map(String::as_str)
        .filter(|q| !q.is_empty())
}

fn job_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Whether the Job is suspended (Kueue holds a queued Job so until it admits it).
pub fn is_suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true) || job_condition(job, "Suspended")
}

/// The LocalQueue of a queued Job whose Workload may say why it waits: one not finished that is
/// suspended or has no pods. `None` for any other Job, whose Workload need not be read.
pub fn waiting_queue<'a>(job: &'a Job, pods: &[Pod]) -> Option<&'a str> {
    let finished = ["Complete", "Failed", "FailureTarget"]
        .iter()
        .any(|t| job_condition(job, t));
    if finished || !(is_suspended(job) || pods.is_empty()) {
        return None;
    }
    queue_of(job)
}

/// The Job's Workload among those labelled with its UID: the newest it controls (Kueue replaces
/// a Workload when the Job changes, and the old one may linger briefly).
pub fn pick(workloads: Vec<Workload>, job_uid: &str) -> WorkloadLookup {
    workloads
        .into_iter()
        .max_by_key(|w| {
            let controlled = w
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == job_uid && o.controller == Some(true));
            (controlled, w.metadata.creation_timestamp.clone())
        })
        .map_or(WorkloadLookup::Missing, |w| {
            WorkloadLookup::Found(Box::new(w))
        })
}

/// Why a queued Job waits, in one line, from what is known of its Workload; `None` when that
/// adds nothing to what the Job and its pods say (not queued, admitted and started, finished,
/// or unreadable while the Job is not held).
pub fn waiting(job: &Job, lookup: &WorkloadLookup) -> Option<String> {
    let queue = queue_of(job)?;
    let suspended = is_suspended(job);
    let ns = job.metadata.namespace.as_deref();
    match lookup {
        WorkloadLookup::Found(w) => from_workload(queue, ns, suspended, w.status.as_ref()),
        WorkloadLookup::Missing => suspended.then(|| {
            format!(
                "waiting in Kueue queue {queue}: Kueue has made no Workload for the Job yet; if this lasts, check that Kueue runs and manages {}",
                ns.map_or("this namespace".to_string(), |n| format!("namespace {n}"))
            )
        }),
        WorkloadLookup::NotServed => suspended.then(|| {
            format!(
                "the Job is suspended for Kueue queue {queue}, but the cluster serves no Kueue Workloads ({GROUP}/{VERSION}), so nothing will admit it; install Kueue, or resubmit with resources.queue: \"\""
            )
        }),
        WorkloadLookup::Forbidden(message) => suspended.then(|| {
            format!(
                "waiting in Kueue queue {queue}; why is unknown: reading its Workload was refused ({}); install charts/idc with --set kueue.enabled=true to let idcctl read it",
                one_line(message)
            )
        }),
        WorkloadLookup::Failed(message) => suspended.then(|| {
            format!(
                "waiting in Kueue queue {queue}; why is unknown: cannot read its Workload ({})",
                one_line(message)
            )
        }),
    }
}

fn from_workload(
    queue: &str,
    ns: Option<&str>,
    suspended: bool,
    status: Option<&WorkloadStatus>,
) -> Option<String> {
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    let holds = |t: &str| find(t).filter(|c| c.status == "True");
    if holds("Finished").is_some() {
        return None;
    }
    let cluster_queue = status
        .and_then(|s| s.admission.as_ref())
        .map(|a| a.cluster_queue.as_str())
        .filter(|c| !c.is_empty());
    let in_cq = cluster_queue.map_or(String::new(), |c| format!(" in ClusterQueue {c}"));
    if holds("Admitted").is_some() {
        // Kueue resumes the Job right after admitting it; from then on its pods say more.
        return suspended
            .then(|| format!("admitted by Kueue{in_cq}; waiting for Kueue to start the Job"));
    }
    if holds("QuotaReserved").is_some() {
        let pending: Vec<String> = status
            .map(|s| s.admission_checks.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|c| c.state != "Ready")
            .map(|c| {
                if c.message.is_empty() {
                    format!("{} ({})", c.name, c.state)
                } else {
                    format!("{} ({}: {})", c.name, c.state, one_line(&c.message))
                }
            })
            .collect();
        return Some(if pending.is_empty() {
            format!("quota reserved by Kueue{in_cq}; waiting for its admission checks")
        } else {
            format!(
                "quota reserved by Kueue{in_cq}; waiting for admission checks: {}",
                pending.join(", ")
            )
        });
    }
    let quota = find("QuotaReserved").filter(|c| c.status == "False");
    if let Some(e) = holds("Evicted") {
        let what = match e.reason.as_str() {
            "Preempted" => format!("preempted by Kueue ({})", one_line(&e.message)),
            r => format!("evicted by Kueue ({r}: {})", one_line(&e.message)),
        };
        // Right after an eviction QuotaReserved repeats its message; later it says what blocks.
        let why = quota
            .filter(|q| !q.message.is_empty() && q.message != e.message)
            .map_or(String::new(), |q| format!(": {}", explain(q, ns)));
        return Some(format!(
            "{what}; waiting in Kueue queue {queue} to be admitted again{why}; the run then resumes from its checkpoint"
        ));
    }
    Some(match quota {
        Some(q) => format!("waiting in Kueue queue {queue}: {}", explain(q, ns)),
        None => format!("waiting in Kueue queue {queue}: not yet considered by Kueue"),
    })
}

/// A `QuotaReserved=False` condition as `Reason: message`, with what to do about it where the
/// message is one of Kueue's known ones.
fn explain(c: &WorkloadCondition, ns: Option<&str>) -> String {
    let m = one_line(&c.message);
    let hint = if m.contains("LocalQueue")
        && (m.contains("doesn't exist") || m.contains("terminating or missing"))
    {
        format!(
            "; set resources.queue to one of the namespace's LocalQueues (kubectl get localqueues{})",
            ns.map_or(String::new(), |n| format!(" -n {n}"))
        )
    } else if m.contains("LocalQueue") && (m.contains("is inactive") || m.contains("is stopped")) {
        "; the LocalQueue admits nothing until its owner resumes it".to_string()
    } else if let Some(cq) = m
        .split("ClusterQueue ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|_| {
            [
                "is inactive",
                "is stopped",
                "doesn't exist",
                "not found",
                "terminating or missing",
            ]
            .iter()
            .any(|s| m.contains(s))
        })
    {
        format!(
            "; Kueue admits nothing through it until a cluster administrator fixes it (kubectl describe clusterqueue {cq} says why)"
        )
    } else if c.reason == "ExceedsMaxQuota" || m.contains("> maximum capacity") {
        "; the ClusterQueue can never give that much: lower resources.gpus (or cpu, memory) or pick another resources.queue".to_string()
    } else if c.reason == "WaitingForQuota" || m.contains("insufficient unused quota") {
        "; it is admitted once running workloads free that quota".to_string()
    } else {
        String::new()
    };
    let reason = if c.reason.is_empty() {
        "Pending"
    } else {
        &c.reason
    };
    format!("{reason}: {m}{hint}")
}

/// `s` on one line, runs of white space as one space.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn job(suspended: bool, queue: Option<&str>) -> Job {
        let mut labels = json!({"idc.dev/run": "r"});
        if let Some(q) = queue {
            labels[QUEUE_LABEL] = json!(q);
        }
        serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "ml", "uid": "u-1", "labels": labels},
            "spec": {"suspend": suspended, "template": {}},
        }))
        .unwrap()
    }

    fn workload(conditions: Value) -> WorkloadLookup {
        WorkloadLookup::Found(Box::new(
            serde_json::from_value(json!({
                "metadata": {"name": "job-r-1a2b3"},
                "spec": {"queueName": "gpu-queue"},
                "status": {"conditions": conditions},
            }))
            .unwrap(),
        ))
    }

    fn why(lookup: &WorkloadLookup) -> String {
        waiting(&job(true, Some("gpu-queue")), lookup).expect("a reason")
    }

    #[test]
    fn quota_messages_say_whether_waiting_helps() {
        // Kueue's legacy reason and message (flavorassigner), and the granular reasons.
        let short = why(&workload(
            json!([{"type": "QuotaReserved", "status": "False", "reason": "Pending",
            "message": "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor h200, 1 more needed"}]),
        ));
        assert_eq!(
            short,
            "waiting in Kueue queue gpu-queue: Pending: couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor h200, 1 more needed; it is admitted once running workloads free that quota"
        );
        let never = why(&workload(
            json!([{"type": "QuotaReserved", "status": "False", "reason": "Pending",
            "message": "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor h200, request > maximum capacity (2 > 0)"}]),
        ));
        assert!(
            never.starts_with("waiting in Kueue queue gpu-queue: Pending: couldn't assign")
                && never.ends_with("(2 > 0); the ClusterQueue can never give that much: lower resources.gpus (or cpu, memory) or pick another resources.queue"),
            "{never}"
        );
        let granular = why(&workload(
            json!([{"type": "QuotaReserved", "status": "False", "reason": "WaitingForQuota",
            "message": "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor h200, 2 more needed"}]),
        ));
        assert!(
            granular.starts_with("waiting in Kueue queue gpu-queue: WaitingForQuota: couldn't")
                && granular.ends_with("once running workloads free that quota"),
            "{granular}"
        );
    }

    #[test]
    fn queue_problems_name_what_to_fix() {
        let lq = why(&workload(
            json!([{"type": "QuotaReserved", "status": "False", "reason": "Inadmissible",
            "message": "LocalQueue gpu-queue doesn't exist"}]),
        ));
        assert_eq!(
            lq,
            "waiting in Kueue queue gpu-queue: Inadmissible: LocalQueue gpu-queue doesn't exist; set resources.queue to one of the namespace's LocalQueues (kubectl get localqueues -n ml)"
        );
        let cq = why(&workload(
            json!([{"type": "QuotaReserved", "status": "False", "reason": "Inadmissible",
            "message": "ClusterQueue cq-h200 is inactive"}]),
        ));
        assert_eq!(
            cq,
            "waiting in Kueue queue gpu-queue: Inadmissible: ClusterQueue cq-h200 is inactive; Kueue admits nothing through it until a cluster administrator fixes it (kubectl describe clusterqueue cq-h200 says why)"
        );
        let stopped = why(&workload(
            json!([{"type": "QuotaReserved", "status": "False", "reason": "Suspended",
            "message": "LocalQueue gpu-queue is stopped"}]),
        ));
        assert!(stopped.ends_with("until its owner resumes it"), "{stopped}");
        let unknown = why(&workload(
            json!([{"type": "QuotaReserved", "status": "False", "reason": "TopologyPlacementFailed",
            "message": "no  topology\n domain fits"}]),
        ));
        assert_eq!(
            unknown,
            "waiting in Kueue queue gpu-queue: TopologyPlacementFailed: no topology domain fits"
        );
        assert_eq!(
            why(&workload(json!([]))),
            "waiting in Kueue queue gpu-queue: not yet considered by Kueue"
        );
    }

    #[test]
    fn eviction_admission_and_finish() {
        let message = "Preempted to accommodate a workload (UID: 5f1c, JobUID: 9e2d) due to prioritization in the ClusterQueue; preemptor path: /cq-h200; preemptee path: /cq-h200";
        let evicted = json!([
            {"type": "Evicted", "status": "True", "reason": "Preempted", "message": message},
            {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": message}]);
        assert_eq!(
            why(&workload(evicted)),
            format!(
                "preempted by Kueue ({message}); waiting in Kueue queue gpu-queue to be admitted again; the run then resumes from its checkpoint"
            )
        );
        let blocked = json!([
            {"type": "Evicted", "status": "True", "reason": "PodsReadyTimeout", "message": "Exceeded the PodsReady timeout ml/job-r-1a2b3"},
            {"type": "QuotaReserved", "status": "False", "reason": "Pending",
             "message": "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor h200, 1 more needed"}]);
        let w = why(&workload(blocked));
        assert!(
            w.starts_with("evicted by Kueue (PodsReadyTimeout: Exceeded the PodsReady timeout ml/job-r-1a2b3); waiting in Kueue queue gpu-queue to be admitted again: Pending: couldn't assign")
                && w.ends_with("; the run then resumes from its checkpoint"),
            "{w}"
        );
        // Re-admitted: the old Evicted condition is False now.
        let admitted = workload(json!([
            {"type": "Evicted", "status": "False", "reason": "QuotaReserved", "message": "Previously: …"},
            {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "Quota reserved in ClusterQueue cq-h200"},
            {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted"}]));
        assert_eq!(waiting(&job(false, Some("gpu-queue")), &admitted), None);
        assert_eq!(
            why(&admitted),
            "admitted by Kueue; waiting for Kueue to start the Job"
        );
        let mut checks: Workload = serde_json::from_value(json!({
            "metadata": {}, "spec": {},
            "status": {"conditions": [{"type": "QuotaReserved", "status": "True"}],
                       "admission": {"clusterQueue": "cq-h200"},
                       "admissionChecks": [{"name": "prov", "state": "Pending", "message": "waiting for capacity"},
                                           {"name": "ok", "state": "Ready"}]}}))
        .unwrap();
        assert_eq!(
            why(&WorkloadLookup::Found(Box::new(checks.clone()))),
            "quota reserved by Kueue in ClusterQueue cq-h200; waiting for admission checks: prov (Pending: waiting for capacity)"
        );
        checks.status.as_mut().unwrap().conditions = vec![WorkloadCondition {
            type_: "Finished".into(),
            status: "True".into(),
            ..Default::default()
        }];
        assert_eq!(why_opt(&WorkloadLookup::Found(Box::new(checks))), None);
    }

    fn why_opt(lookup: &WorkloadLookup) -> Option<String> {
        waiting(&job(true, Some("gpu-queue")), lookup)
    }

    #[test]
    fn unreadable_workloads_still_give_a_reason_while_the_job_is_held() {
        for (lookup, want) in [
            (
                WorkloadLookup::Missing,
                "Kueue has made no Workload for the Job yet",
            ),
            (
                WorkloadLookup::NotServed,
                "the cluster serves no Kueue Workloads (kueue.x-k8s.io/v1beta1)",
            ),
            (
                WorkloadLookup::Forbidden("workloads.kueue.x-k8s.io is forbidden".into()),
                "reading its Workload was refused (workloads.kueue.x-k8s.io is forbidden); install charts/idc with --set kueue.enabled=true",
            ),
            (
                WorkloadLookup::Failed("timed out".into()),
                "cannot read its Workload (timed out)",
            ),
        ] {
            let got = why(&lookup);
            assert!(got.contains(want) && got.contains("gpu-queue"), "{got}");
            // Not held: the Job and its pods say more than a missing Workload.
            assert_eq!(waiting(&job(false, Some("gpu-queue")), &lookup), None);
        }
        assert_eq!(waiting(&job(true, None), &WorkloadLookup::Missing), None);
    }

    #[test]
    fn only_a_waiting_queued_job_needs_its_workload() {
        assert_eq!(waiting_queue(&job(true, Some("q")), &[]), Some("q"));
        assert_eq!(waiting_queue(&job(false, Some("q")), &[]), Some("q"));
        assert_eq!(waiting_queue(&job(true, None), &[]), None);
        assert_eq!(waiting_queue(&job(true, Some("")), &[]), None);
        let pods = [Pod::default()];
        assert_eq!(waiting_queue(&job(false, Some("q")), &pods), None);
        assert_eq!(waiting_queue(&job(true, Some("q")), &pods), Some("q"));
        let mut done = job(true, Some("q"));
        done.status = Some(
            serde_json::from_value(json!({"conditions": [{"type": "Complete", "status": "True"}]}))
                .unwrap(),
        );
        assert_eq!(waiting_queue(&done, &[]), None);
    }

    #[test]
    fn the_manifest_queue_wins_and_empty_opts_out() {
        let defaults = ClusterDefaults {
            queue: Some("team".into()),
            ..Default::default()
        };
        let mut res = Resources::default();
        assert_eq!(queue_for(&res, &defaults), Some("team"));
        res.queue = Some("mine".into());
        assert_eq!(queue_for(&res, &defaults), Some("mine"));
        res.queue = Some(String::new());
        assert_eq!(queue_for(&res, &defaults), None);
        assert_eq!(
            queue_for(&Resources::default(), &ClusterDefaults::default()),
            None
        );
    }

    #[test]
    fn the_workload_the_job_controls_is_picked() {
        let w = |name: &str, created: &str, owner: &str| -> Workload {
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": created,
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "r", "uid": owner, "controller": true}]},
                "spec": {}}))
            .unwrap()
        };
        let picked = pick(
            vec![
                w("new-stranger", "2026-11-26T11:00:00Z", "u-2"),
                w("old", "2026-11-26T09:00:00Z", "u-1"),
                w("new", "2026-11-26T10:00:00Z", "u-1"),
            ],
            "u-1",
        );
        match picked {
            WorkloadLookup::Found(w) => assert_eq!(w.metadata.name.as_deref(), Some("new")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(pick(vec![], "u-1"), WorkloadLookup::Missing));
    }
}
