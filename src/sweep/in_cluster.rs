//! A sweep driven from inside the cluster (`idcctl sweep run --in-cluster`): the manifest is
//! stored in the bucket, then a Job runs `idcctl internal drive-sweep` on it, so the sweep no
//! longer depends on a terminal; plus that Job's log (`sweep logs`), its deletion
//! (`sweep cancel`) and who drives a sweep (`sweep status`: the lease, else the driver Job and
//! why its pod waits). The driver's lease (`driver.json`) keeps one driver per sweep wherever
//! it runs.

use super::driver::{self, SweepError};
use super::manifest::Sweep;
use super::state;
use super::state::Driver;
use crate::backend::kube::cluster::{Cluster, Created, KubeError};
use crate::backend::kube::job::{
    self, DRIVER_CONTAINER, SPEC_ANNOTATION, SweepDriverInputs, sweep_driver_job_name,
};
use crate::backend::kube::observe::{Remedies, why_pending};
use crate::backend::kube::{self as kb, ClusterDefaults, names};
use crate::backend::{self, BackendError, Target};
use crate::experiment::Backend;
use crate::store::Store;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use sha2::Digest;
use std::collections::HashSet;

/// A driver Job that `sweep run --in-cluster` made, or found already there.
#[derive(Debug, Clone)]
pub struct DriverJob {
    pub name: String,
    pub namespace: String,
    /// False when the same sweep's driver Job was there already.
    pub created: bool,
    /// The sweep's folder in the bucket.
    pub sweep_url: String,
}

fn kube(e: KubeError) -> SweepError {
    SweepError::Backend(BackendError::Kube(e))
}

/// The sweep's folder under the bucket `storage`, which the driver's pod reads: refused unless
/// the sweep's trials run on the cluster.
fn sweep_url(sweep: &Sweep, storage: &str) -> Result<String, SweepError> {
    if sweep.base_experiment.backend != Backend::Kubernetes {
        return Err(SweepError::Invalid(format!(
            "sweep {} runs its trials on the local backend: an in-cluster driver needs `backend: kubernetes` in base (or run the sweep without --in-cluster)",
            sweep.name
        )));
    }
    Ok(state::sweep_store(&Store::open(storage)?, &sweep.name)
        .url()
        .to_string())
}

/// Pods reach only S3.
fn check_reachable(storage: &str) -> Result<(), SweepError> {
    if !storage.starts_with("s3://") {
        return Err(SweepError::Invalid(format!(
            "an in-cluster sweep driver needs an s3:// bucket its pod can reach, but storage is {storage}; set storage: in base, --storage, or the chart's storage value"
        )));
    }
    Ok(())
}

/// The bucket of the sweep: `--storage`, the base's, or the namespace's default.
fn storage_of(sweep: &Sweep, storage: Option<&str>, defaults: &ClusterDefaults) -> String {
    backend::storage_for(&sweep.base_experiment, storage, defaults.storage.as_deref())
}

/// The driver Job of `sweep` (manifest `text`) with the namespace's `defaults`; `storage`
/// overrides the bucket as `--storage` does. Pure: `--dry-run` prints it.
pub fn driver_job(
    sweep: &Sweep,
    text: &str,
    storage: Option<&str>,
    defaults: &ClusterDefaults,
) -> Result<Job, SweepError> {
    let storage = storage_of(sweep, storage, defaults);
    check_reachable(&storage)?;
    build(sweep, text, &storage, defaults)
}

fn build(
    sweep: &Sweep,
    text: &str,
    storage: &str,
    defaults: &ClusterDefaults,
) -> Result<Job, SweepError> {
    let url = sweep_url(sweep, storage)?;
    let job = job::build_sweep_driver(&SweepDriverInputs {
        sweep: &sweep.name,
        sweep_url: &url,
        manifest_sha256: &hex::encode(sha2::Sha256::digest(text.as_bytes())),
        defaults,
    });
    let bad = names::job_violations(&job);
    if !bad.is_empty() {
        return Err(SweepError::Invalid(format!(
            "the driver Job would be rejected by Kubernetes: {}",
            bad.join("; ")
        )));
    }
    Ok(job)
}

fn annotation<'a>(job: &'a Job, key: &str) -> Option<&'a str> {
    job.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Stores the manifest and creates the sweep's driver Job. The same manifest again creates
/// nothing; a sweep driven elsewhere (a fresh lease) or whose Job drives another manifest is
/// refused before anything is written; so is a bucket the driver's pod cannot reach.
pub async fn submit(
    sweep: &Sweep,
    text: &str,
    storage: Option<&str>,
    cluster: &Cluster,
    notice: &mut (dyn FnMut(String) + Send),
) -> Result<DriverJob, SweepError> {
    let defaults = version_and_defaults(cluster).await?;
    check_reachable(&storage_of(sweep, storage, &defaults))?;
    submit_with(sweep, text, storage, cluster, &defaults, notice).await
}

/// [`submit`] without checking that the driver's pod can reach the bucket.
pub async fn submit_on(
    sweep: &Sweep,
    text: &str,
    storage: Option<&str>,
    cluster: &Cluster,
    notice: &mut (dyn FnMut(String) + Send),
) -> Result<DriverJob, SweepError> {
    let defaults = version_and_defaults(cluster).await?;
    submit_with(sweep, text, storage, cluster, &defaults, notice).await
}

/// Refuses a Kubernetes release older than the driver Job's fields need, then reads the
/// namespace's defaults.
async fn version_and_defaults(cluster: &Cluster) -> Result<ClusterDefaults, SweepError> {
    cluster.check_version().await.map_err(kube)?;
    cluster.defaults().await.map_err(kube)
}

/// [`submit_on`] with the namespace's defaults already read.
async fn submit_with(
    sweep: &Sweep,
    text: &str,
    storage: Option<&str>,
    cluster: &Cluster,
    defaults: &ClusterDefaults,
    notice: &mut (dyn FnMut(String) + Send),
) -> Result<DriverJob, SweepError> {
    let job = build(sweep, text, &storage_of(sweep, storage, defaults), defaults)?;
    let name = job.metadata.name.clone().expect("named");
    let url = annotation(&job, job::SWEEP_URL_ANNOTATION)
        .expect("annotated")
        .to_string();
    let done = |created| DriverJob {
        name: name.clone(),
        namespace: cluster.namespace.clone(),
        created,
        sweep_url: url.clone(),
    };
    if let Some(existing) = cluster.job(&name).await.map_err(kube)? {
        if annotation(&existing, SPEC_ANNOTATION) == annotation(&job, SPEC_ANNOTATION) {
            return Ok(done(false));
        }
        return Err(SweepError::Invalid(format!(
            "namespace {} already has a driver Job {name} for another manifest of sweep {}; once it has finished (idcctl sweep status {}), delete it with `idcctl sweep cancel {}` and rerun",
            cluster.namespace, sweep.name, sweep.name, sweep.name
        )));
    }
    let dir = Store::open(&url)?;
    if let Some(d) = state::read_driver(&dir).await?
        && d.alive()
    {
        return Err(SweepError::Invalid(driver::held_by(&sweep.name, &d)));
    }
    // Before the Job: its pod reads the manifest from the bucket.
    driver::adopt_manifest(sweep, text, &dir, notice).await?;
    let created = cluster.create_job(&job).await.map_err(|e| match e {
        KubeError::Conflict { namespace, .. } => SweepError::Invalid(format!(
            "namespace {namespace} already has a driver Job {name} for another manifest of sweep {}; delete it with `idcctl sweep cancel {}` and rerun",
            sweep.name, sweep.name
        )),
        e => kube(e),
    })?;
    Ok(done(created == Created::New))
}

/// Prints the log of the sweep's driver through `sink`, pod after pod (a restarted driver has
/// a new one); with `follow`, until the driver Job has finished. While its pod waits, `notice`
/// says why (each new reason once).
pub async fn driver_log(
    cluster: &Cluster,
    sweep: &str,
    follow: bool,
    sink: &mut (dyn FnMut(&str) + Send),
    notice: &mut (dyn FnMut(String) + Send),
) -> Result<(), SweepError> {
    let name = sweep_driver_job_name(sweep);
    let mut printed: HashSet<String> = HashSet::new();
    let mut last_notice = String::new();
    loop {
        let job = cluster.job(&name).await.map_err(kube)?;
        let pods = cluster.pods_of(&name).await.map_err(kube)?;
        if job.is_none() && pods.is_empty() && printed.is_empty() {
            return Err(SweepError::Invalid(format!(
                "no driver Job {name} in namespace {}: sweep {sweep} was not run with --in-cluster there, or its Job was deleted (sweep cancel, or its TTL); its record stays in the bucket: idcctl sweep status {sweep}",
                cluster.namespace
            )));
        }
        let next = pods.iter().find_map(|p| {
            let pod = p.metadata.name.clone()?;
            (kb::container_started(p, DRIVER_CONTAINER) && !printed.contains(&pod)).then_some(pod)
        });
        if let Some(pod) = next {
            match cluster
                .stream_container_log(&pod, DRIVER_CONTAINER, follow, None, |_, text| sink(text))
                .await
            {
                // Deleted between the listing and the log request: nothing more to read.
                Err(e) if e.is_not_found() => {}
                r => r.map_err(kube)?,
            }
            printed.insert(pod);
            continue;
        }
        if !follow || kb::job_finished(job.as_ref()) {
            return Ok(());
        }
        let waiting = match pods.last() {
            Some(pod) => format!("driver Job {name}: {}", pod_waits(pod, sweep)),
            None => {
                format!("waiting for the Job controller to create the pod of driver Job {name}")
            }
        };
        if waiting != last_notice {
            notice(waiting.clone());
            last_notice = waiting;
        }
        tokio::time::sleep(cluster.poll).await;
    }
}

/// What the driver's pod can be told to do, unlike a worker's: its Job has no tolerations or
/// node selector of the manifest's, and its image is the namespace's.
const DRIVER_REMEDIES: Remedies = Remedies {
    gpu: "it starts when one frees up",
    taint: "the driver tolerates no taint: ask the cluster's admin for a node without one it may use, or drive the sweep from a terminal instead (idcctl sweep cancel, then idcctl sweep run without --in-cluster)",
    node_selector: "its node selector",
    image: "check the chart's controller.image (controllerImage in the idc-defaults ConfigMap), the registry and imagePullSecrets",
};

/// Why a driver pod that has not started waits, or how a started one stands.
fn pod_waits(pod: &Pod, sweep: &str) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    match phase {
        "Pending" => why_pending(pod, &format!("its pod {name}"), &DRIVER_REMEDIES),
        "Running" => format!(
            "its pod {name} runs but holds no lease on the sweep yet (it is starting, or waits for a stale lease to expire); its log: idcctl sweep logs {sweep} -f"
        ),
        other => format!("its pod {name} ended ({other}); the Job controller starts another"),
    }
}

/// The sweep's driver Job as `sweep status` tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriverJobState {
    pub name: String,
    pub namespace: String,
    /// `pending`, `running`, `succeeded` or `failed`.
    pub phase: String,
    /// Why, in a line.
    pub reason: String,
}

/// The sweep's driver Job in the cluster's namespace, `None` when there is none.
pub async fn driver_job_state(
    cluster: &Cluster,
    sweep: &str,
) -> Result<Option<DriverJobState>, KubeError> {
    let name = sweep_driver_job_name(sweep);
    let Some(job) = cluster.job(&name).await? else {
        return Ok(None);
    };
    let pods = cluster.pods_of(&name).await?;
    let condition = |t: &str| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
    };
    let (phase, reason) = if condition("Complete").is_some() {
        ("succeeded", "the driver finished".to_string())
    } else if let Some(c) = condition("Failed").or(condition("FailureTarget")) {
        (
            "failed",
            format!(
                "{}: {}; see idcctl sweep logs {sweep}, then delete it (idcctl sweep cancel {sweep}) and run the sweep again",
                c.reason.as_deref().unwrap_or("Failed"),
                c.message.as_deref().unwrap_or("")
            ),
        )
    } else {
        match pods.last() {
            None => (
                "pending",
                "waiting for the Job controller to create its pod".to_string(),
            ),
            Some(p) if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") => {
                ("running", pod_waits(p, sweep))
            }
            Some(p) => ("pending", pod_waits(p, sweep)),
        }
    };
    Ok(Some(DriverJobState {
        name,
        namespace: cluster.namespace.clone(),
        phase: phase.into(),
        reason,
    }))
}

/// Who drives a sweep now, as `sweep status` says it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Driving {
    /// An idcctl holds the lease: a terminal's, or a driver Job's pod.
    Lease(Driver),
    /// No lease, but the sweep's driver Job is in the cluster: its pod waits, starts or ended.
    Job(DriverJobState),
    /// No lease and no driver Job.
    Nobody,
    /// No lease; whether a driver Job exists could not be asked.
    Unknown { why: String },
}

/// Who drives the sweep (folder `dir`): its lease, else, for trials on Kubernetes, its driver
/// Job in `target`'s namespace. A cluster that cannot be asked is part of the answer.
pub async fn driving(dir: &Store, sweep: &Sweep, target: &Target) -> Result<Driving, SweepError> {
    if let Some(d) = state::read_driver(dir).await?.filter(Driver::alive) {
        return Ok(Driving::Lease(d));
    }
    if sweep.base_experiment.backend != Backend::Kubernetes {
        return Ok(Driving::Nobody);
    }
    Ok(match target.connect().await {
        Ok(cluster) => driving_job(&cluster, &sweep.name).await,
        Err(e) => Driving::Unknown {
            why: crate::exit::message_of(&e),
        },
    })
}

/// Who drives `sweep`, whose lease no idcctl holds: its driver Job in the cluster's namespace,
/// if there is one.
pub async fn driving_job(cluster: &Cluster, sweep: &str) -> Driving {
    match driver_job_state(cluster, sweep).await {
        Ok(Some(job)) => Driving::Job(job),
        Ok(None) => Driving::Nobody,
        Err(e) => Driving::Unknown {
            why: crate::exit::message_of(&e),
        },
    }
}

impl Driving {
    /// One line for `sweep status` of `sweep`, whose record was written at `as_of`.
    pub fn line(&self, sweep: &str, as_of: &str) -> String {
        let rerun = "run `idcctl sweep run <its manifest>` to go on";
        match self {
            Driving::Lease(d) => format!(
                "driven by idcctl ({}; state as of {as_of}){}",
                d.place(),
                if d.pod.is_some() {
                    format!("; its log: idcctl sweep logs {sweep} -f")
                } else {
                    String::new()
                }
            ),
            Driving::Job(j) => format!(
                "driver Job {} in namespace {} is {} (state as of {as_of}): {}",
                j.name, j.namespace, j.phase, j.reason
            ),
            Driving::Nobody => format!("not being driven (state as of {as_of}): {rerun}"),
            Driving::Unknown { why } => format!(
                "no idcctl holds the sweep's lease (state as of {as_of}), and whether a driver Job is in the cluster is unknown ({why}); if it was run with --in-cluster: idcctl sweep logs {sweep} -f, else {rerun}"
            ),
        }
    }
}

/// Deletes the sweep's driver Job: the driver stops (the trials keep running). False if there
/// was none.
pub async fn cancel(cluster: &Cluster, sweep: &str) -> Result<bool, SweepError> {
    cluster
        .delete_job(&sweep_driver_job_name(sweep))
        .await
        .map_err(kube)
}

/// The bucket root of a stored sweep folder `s3://bucket/prefix/sweeps/<name>`.
pub fn root_of(sweep_url: &str, name: &str) -> Option<String> {
    sweep_url
        .trim_end_matches('/')
        .strip_suffix(&format!("/{}", crate::layout::sweep_prefix(name)))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_what_holds_the_sweeps_folder() {
        assert_eq!(
            root_of("s3://idc/team/sweeps/lr", "lr").as_deref(),
            Some("s3://idc/team")
        );
        assert_eq!(
            root_of("s3://idc/sweeps/lr/", "lr").as_deref(),
            Some("s3://idc")
        );
        assert_eq!(root_of("s3://idc/sweeps/other", "lr"), None);
    }
}
