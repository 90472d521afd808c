//! The batch/v1 Jobs idcctl creates: a run's (the worker trains) and a prediction's (the worker
//! applies a run's checkpoint, `idcctl predict`), alike in image, S3 credentials from a Secret,
//! GPU and memory resources, scheduling, failure handling and labels (Kueue's queue and priority
//! among them); and a sweep driver's (`idcctl sweep run --in-cluster`: idcctl itself, no GPU,
//! with the service account's token). Pure: the same inputs give the same Job, which
//! `--dry-run` prints and the golden tests pin.

use super::defaults::ClusterDefaults;
use super::kueue;
use crate::experiment::Experiment;
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, LocalObjectReference,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// Name of the worker container (the pod failure policy refers to it).
pub const CONTAINER: &str = "worker";
/// Label holding the Job's name on the Job and its pods: the run id, or a prediction's Job name
/// (so that a run's pods and its predictions' pods are never selected together).
pub const RUN_LABEL: &str = "idc.dev/run";
/// Label of a prediction's Job and pods: the run whose checkpoint it applies.
pub const PREDICTS_LABEL: &str = "idc.dev/predicts";
/// Label of a prediction's Job and pods: the prediction id.
pub const PREDICTION_LABEL: &str = "idc.dev/prediction";
/// Annotation holding the SHA-256 of the run's spec.yaml: tells a resubmission of the same run
/// from a different run that happens to have the same name.
pub const SPEC_ANNOTATION: &str = "idc.dev/spec-sha256";
/// Annotation holding the run's folder in the bucket.
pub const RUN_URL_ANNOTATION: &str = "idc.dev/run-url";
/// The taint GPU node pools usually carry.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// User and group the worker runs as (the image's non-root user).
pub const WORKER_UID: i64 = 1000;
/// Name of a sweep driver's container.
pub const DRIVER_CONTAINER: &str = "driver";
/// Label of a sweep driver's Job and pod: the sweep's name.
pub const SWEEP_LABEL: &str = "idc.dev/sweep";
/// Annotation holding a sweep driver's sweep folder in the bucket.
pub const SWEEP_URL_ANNOTATION: &str = "idc.dev/sweep-url";
/// User and group idcctl runs as (the distroless image's `nonroot`, src/Dockerfile).
pub const CONTROLLER_UID: i64 = 65532;
/// Pod failures after which a sweep driver's Job gives up: a restarted driver takes the lease
/// over and re-attaches to the running trials, so a few restarts are safe.
pub const DRIVER_BACKOFF_LIMIT: i32 = 4;

/// What a run's Job is made from.
#[derive(Debug, Clone)]
pub struct JobInputs<'a> {
    pub experiment: &'a Experiment,
    pub run_id: &'a str,
    /// The run's folder, `s3://bucket/prefix/runs/<id>`.
    pub run_url: &'a str,
    /// SHA-256 (hex) of the run's spec.yaml.
    pub spec_sha256: &'a str,
    pub defaults: &'a ClusterDefaults,
}

/// Labels on the Job and its pods; `list` and `logs` select pods by [`RUN_LABEL`].
pub fn labels(exp: &Experiment, run_id: &str) -> BTreeMap<String, String> {
    let mut l = common_labels("worker", run_id);
    l.insert("idc.dev/experiment".into(), exp.name.clone());
    l.insert("idc.dev/model".into(), exp.train.model.name().into());
    l
}

/// The labels of every Job idcctl makes, and of its pods: `name` is the Job's.
fn common_labels(component: &str, name: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "idc"),
        ("app.kubernetes.io/component", component),
        ("app.kubernetes.io/instance", name),
        ("app.kubernetes.io/managed-by", "idcctl"),
        ("app.kubernetes.io/part-of", "idc"),
        ("app.kubernetes.io/version", env!("CARGO_PKG_VERSION")),
        (RUN_LABEL, name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The Job for a run.
pub fn build(i: &JobInputs) -> Job {
    let exp = i.experiment;
    job(&Parts {
        experiment: exp,
        defaults: i.defaults,
        name: i.run_id,
        labels: labels(exp, i.run_id),
        annotations: BTreeMap::from([
            (RUN_URL_ANNOTATION.to_string(), i.run_url.to_string()),
            (SPEC_ANNOTATION.to_string(), i.spec_sha256.to_string()),
        ]),
        args: vec!["run".into(), "--run".into(), i.run_url.into()],
        env: env(i.defaults, i.run_id, &[]),
        deadline_s: exp
            .deadline
            .as_deref()
            .and_then(crate::clock::parse_duration)
            .map(|s| s as i64),
    })
}

/// What a prediction's Job is made from.
#[derive(Debug, Clone)]
pub struct PredictJobInputs<'a> {
    /// The run's experiment (its image, resources, scheduling and retries).
    pub experiment: &'a Experiment,
    pub run_id: &'a str,
    pub prediction_id: &'a str,
    /// The prediction's folder, `s3://bucket/prefix/runs/<id>/predictions/<prediction>`.
    pub job_url: &'a str,
    /// SHA-256 (hex) of the prediction's spec, without its URLs.
    pub spec_sha256: &'a str,
    pub defaults: &'a ClusterDefaults,
}

/// The name of a prediction's Job: `<run id>-p<prediction id>`, the run id shortened to keep
/// it a 63-character name.
pub fn prediction_job_name(run_id: &str, prediction_id: &str) -> String {
    let keep = 63 - 2 - prediction_id.len();
    let run = run_id[..run_id.len().min(keep)].trim_end_matches('-');
    format!("{run}-p{prediction_id}")
}

/// The Job that runs `idc-worker predict` for a prediction: the run's image, resources,
/// scheduling, retries and failure policy; no deadline (the run's is for training).
pub fn build_predict(i: &PredictJobInputs) -> Job {
    let exp = i.experiment;
    let name = prediction_job_name(i.run_id, i.prediction_id);
    let mut labels = labels(exp, &name);
    labels.insert("app.kubernetes.io/component".into(), "predict".into());
    labels.insert(PREDICTS_LABEL.into(), i.run_id.into());
    labels.insert(PREDICTION_LABEL.into(), i.prediction_id.into());
    job(&Parts {
        experiment: exp,
        defaults: i.defaults,
        name: &name,
        labels,
        annotations: BTreeMap::from([
            (RUN_URL_ANNOTATION.to_string(), i.job_url.to_string()),
            (SPEC_ANNOTATION.to_string(), i.spec_sha256.to_string()),
        ]),
        args: vec!["predict".into(), "--job".into(), i.job_url.into()],
        env: env(
            i.defaults,
            i.run_id,
            &[("IDC_PREDICTION_ID", i.prediction_id)],
        ),
        deadline_s: None,
    })
}

/// The Indexed Job that runs `idc-worker predict-slides` for a slide prediction: a
/// prediction's Job (see [`build_predict`]) with `indexes` completions, each index reading its
/// slides (`$JOB_COMPLETION_INDEX`), `parallelism` pods at once. Retries are counted per index
/// (`backoffLimitPerIndex`) and a slide that is bad input fails its index alone (`FailIndex`):
/// the other slides finish.
pub fn build_slides(i: &PredictJobInputs, indexes: u32, parallelism: u32) -> Job {
    let mut job = build_predict(i);
    let spec = job.spec.as_mut().expect("built with a spec");
    spec.completion_mode = Some("Indexed".into());
    spec.completions = Some(indexes as i32);
    spec.parallelism = Some(parallelism.clamp(1, indexes.max(1)) as i32);
    // With a limit per index, backoffLimit must be unset (the API server then leaves it at
    // its maximum): one slide's retries do not use up another's.
    spec.backoff_limit = None;
    spec.backoff_limit_per_index = Some(i.experiment.retries as i32);
    if let Some(policy) = spec.pod_failure_policy.as_mut() {
        for rule in &mut policy.rules {
            if rule.action == "FailJob" {
                rule.action = "FailIndex".into();
            }
        }
    }
    let pod = spec.template.spec.as_mut().expect("built with a pod");
    pod.containers[0].args = Some(vec![
        "predict-slides".into(),
        "--job".into(),
        i.job_url.into(),
    ]);
    job
}

/// The parts in which a run's Job and a prediction's differ.
struct Parts<'a> {
    experiment: &'a Experiment,
    defaults: &'a ClusterDefaults,
    name: &'a str,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    args: Vec<String>,
    env: Vec<EnvVar>,
    deadline_s: Option<i64>,
}

fn job(p: &Parts) -> Job {
    let exp = p.experiment;
    let d = p.defaults;
    let labels = p.labels.clone();
    let annotations = p.annotations.clone();
    let res = &exp.resources;
    // Kueue reads its labels on the Job (it makes the Workload from the Job), not on the pods.
    let mut job_labels = labels.clone();
    if let Some(queue) = kueue::queue_for(res, d) {
        job_labels.insert(kueue::QUEUE_LABEL.into(), queue.into());
    }
    if let Some(priority) = &res.workload_priority {
        job_labels.insert(kueue::PRIORITY_LABEL.into(), priority.clone());
    }
    let tolerations = tolerations(res, d);
    let pod = PodSpec {
        containers: vec![worker_container(p)],
        // Job pods never restart in place: a retry is a new pod, counted by backoffLimit.
        restart_policy: Some("Never".into()),
        service_account_name: Some(d.service_account.clone()),
        // The worker talks to the bucket only, never to the API server.
        automount_service_account_token: Some(false),
        security_context: Some(pod_security(WORKER_UID)),
        termination_grace_period_seconds: Some(d.termination_grace_period_seconds),
        node_selector: (!res.node_selector.is_empty()).then(|| res.node_selector.clone()),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        priority_class_name: res.priority_class.clone().or(d.priority_class.clone()),
        image_pull_secrets: pull_secrets(d),
        volumes: Some(vec![
            Volume {
                // Data loader workers and NCCL use /dev/shm; the container default is 64 MiB.
                name: "dshm".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity(d.shm_size.clone())),
                }),
                ..Default::default()
            },
            // The root file system is read-only; pretrained weights are fetched to /tmp.
            tmp_volume("10Gi"),
        ]),
        ..Default::default()
    };
    // A replacement pod starts only once the old one has stopped (and checkpointed): two
    // workers never write the same run.
    envelope(Envelope {
        name: p.name.to_string(),
        job_labels,
        labels,
        annotations,
        backoff_limit: exp.retries as i32,
        deadline_s: p.deadline_s,
        ttl_s: d.ttl_seconds_after_finished,
        container: CONTAINER,
        pod,
    })
}

/// The worker's container: its image, arguments, environment, resources and mounts.
fn worker_container(p: &Parts) -> Container {
    let (res, d) = (&p.experiment.resources, p.defaults);
    let q = |s: &str| Quantity(s.to_string());
    let memory = res
        .memory
        .clone()
        .unwrap_or_else(|| d.resources.memory.clone());
    let requests = BTreeMap::from([
        (
            "cpu".to_string(),
            q(res.cpu.as_deref().unwrap_or(&d.resources.cpu)),
        ),
        ("memory".to_string(), q(&memory)),
    ]);
    // Memory limit = request: the worker is OOMKilled at a known size instead of being evicted
    // under node pressure. No CPU limit: throttling a data pipeline only slows the GPU down.
    let mut limits = BTreeMap::from([("memory".to_string(), q(&memory))]);
    if res.gpus > 0 {
        limits.insert(GPU_RESOURCE.to_string(), q(&res.gpus.to_string()));
    }
    Container {
        name: CONTAINER.into(),
        image: Some(res.image.clone().unwrap_or_else(|| d.image.clone())),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        args: Some(p.args.clone()),
        env: Some(p.env.clone()),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "dshm".into(),
                mount_path: "/dev/shm".into(),
                ..Default::default()
            },
            tmp_mount(),
        ]),
        security_context: Some(container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The manifest's tolerations, and the GPU taint's when the run asks for GPUs and the cluster
/// defaults say to tolerate it.
fn tolerations(res: &crate::experiment::Resources, d: &ClusterDefaults) -> Vec<Toleration> {
    let mut tolerations: Vec<Toleration> = res
        .tolerations
        .iter()
        .map(|t| Toleration {
            key: Some(t.key.clone()),
            operator: Some(t.operator.clone()),
            value: t.value.clone(),
            effect: t.effect.clone(),
            ..Default::default()
        })
        .collect();
    if res.gpus > 0
        && d.tolerate_gpu_taint
        && !res.tolerations.iter().any(|t| t.key == GPU_RESOURCE)
    {
        tolerations.push(Toleration {
            key: Some(GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
    }
    tolerations
}

/// What a Job of idcctl's is made of around its pod.
struct Envelope {
    name: String,
    /// The Job's own labels (they may hold more than the pod's: Kueue's).
    job_labels: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    backoff_limit: i32,
    deadline_s: Option<i64>,
    ttl_s: i32,
    /// The container the pod failure policy watches.
    container: &'static str,
    pod: PodSpec,
}

/// One pod at a time, the pod failure policy, and a replacement only once the old pod has
/// stopped: what every Job of idcctl's shares.
fn envelope(e: Envelope) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some(e.name),
            labels: Some(e.job_labels),
            annotations: Some(e.annotations.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completions: Some(1),
            parallelism: Some(1),
            backoff_limit: Some(e.backoff_limit),
            active_deadline_seconds: e.deadline_s,
            ttl_seconds_after_finished: Some(e.ttl_s),
            pod_failure_policy: Some(failure_policy_of(e.container)),
            pod_replacement_policy: Some("Failed".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(e.labels),
                    annotations: Some(e.annotations),
                    ..Default::default()
                }),
                spec: Some(e.pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Non-root, no privilege escalation, no capabilities, a read-only root file system.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pull_secrets(d: &ClusterDefaults) -> Option<Vec<LocalObjectReference>> {
    (!d.image_pull_secrets.is_empty()).then(|| {
        d.image_pull_secrets
            .iter()
            .map(|n| LocalObjectReference { name: n.clone() })
            .collect()
    })
}

fn tmp_volume(size: &str) -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity(size.into())),
        }),
        ..Default::default()
    }
}

fn tmp_mount() -> VolumeMount {
    VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }
}

/// What a sweep driver's Job is made from.
#[derive(Debug, Clone)]
pub struct SweepDriverInputs<'a> {
    pub sweep: &'a str,
    /// The sweep's folder, `s3://bucket/prefix/sweeps/<name>`, holding its manifest.
    pub sweep_url: &'a str,
    /// SHA-256 (hex) of the stored manifest: the same sweep resubmitted creates nothing.
    pub manifest_sha256: &'a str,
    pub defaults: &'a ClusterDefaults,
}

/// The name of a sweep driver's Job: `sweep-<name>`, cut to a 63-character name.
pub fn sweep_driver_job_name(sweep: &str) -> String {
    let name = format!("sweep-{sweep}");
    name[..name.len().min(63)].trim_end_matches('-').to_string()
}

/// The Job that drives a sweep from inside the cluster: `idcctl internal drive-sweep` in the
/// namespace's idcctl image, as the chart's service account with its token (it creates the
/// trials' Jobs), the bucket's credentials from the Secret, small requests and no GPU.
pub fn build_sweep_driver(i: &SweepDriverInputs) -> Job {
    let d = i.defaults;
    let name = sweep_driver_job_name(i.sweep);
    let mut labels = common_labels("sweep-driver", &name);
    labels.insert(SWEEP_LABEL.into(), i.sweep.into());
    let annotations = BTreeMap::from([
        (SWEEP_URL_ANNOTATION.to_string(), i.sweep_url.to_string()),
        (SPEC_ANNOTATION.to_string(), i.manifest_sha256.to_string()),
    ]);
    let q = |s: &str| Quantity(s.to_string());
    let mut env = vec![plain_env("RUST_LOG", "info"), pod_name_env()];
    env.extend(s3_env(d));
    let container = Container {
        name: DRIVER_CONTAINER.into(),
        image: Some(d.controller_image.clone()),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        args: Some(vec![
            "internal".into(),
            "drive-sweep".into(),
            "--sweep".into(),
            i.sweep_url.into(),
        ]),
        env: Some(env),
        // The driver mostly waits on the bucket and the API server.
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), q("100m")),
                ("memory".to_string(), q("256Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), q("512Mi"))])),
            ..Default::default()
        }),
        volume_mounts: Some(vec![tmp_mount()]),
        security_context: Some(container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        service_account_name: Some(d.service_account.clone()),
        // Unlike a worker, the driver talks to the API server: it creates the trials' Jobs.
        automount_service_account_token: Some(true),
        security_context: Some(pod_security(CONTROLLER_UID)),
        image_pull_secrets: pull_secrets(d),
        // The image's HOME and working directory (src/Dockerfile).
        volumes: Some(vec![tmp_volume("1Gi")]),
        ..Default::default()
    };
    // One driver at a time: a replacement starts once the old pod has stopped.
    envelope(Envelope {
        name,
        job_labels: labels.clone(),
        labels,
        annotations,
        backoff_limit: DRIVER_BACKOFF_LIMIT,
        deadline_s: None,
        ttl_s: d.ttl_seconds_after_finished,
        container: DRIVER_CONTAINER,
        pod,
    })
}

/// Bad input (exit code 2 of `container`) fails the Job at once; a disruption (preemption,
/// eviction, node drain) does not count against `backoffLimit`, so the run resumes from its
/// checkpoint (a sweep driver, from the sweep's state).
pub fn failure_policy_of(container: &str) -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(container.into()),
                    operator: "In".into(),
                    values: vec![crate::exit::ExitCode::UserError as i32],
                }),
                on_pod_conditions: None,
            },
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_exit_codes: None,
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
            },
        ],
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The pod's own name, from the downward API (records name the pod a process ran in).
fn pod_name_env() -> EnvVar {
    EnvVar {
        name: crate::process::POD_NAME_ENV.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// How a pod reaches the bucket: region, endpoint, and the credentials by reference to the
/// namespace's Secret, never inlined.
fn s3_env(defaults: &ClusterDefaults) -> Vec<EnvVar> {
    let s3 = &defaults.s3;
    let secret = |name: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: s3.credentials_secret.clone(),
                key: name.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut env = vec![plain_env("AWS_REGION", &s3.region)];
    if let Some(e) = &s3.endpoint {
        env.push(plain_env("AWS_ENDPOINT", e));
    }
    if s3.allow_http {
        env.push(plain_env("AWS_ALLOW_HTTP", "true"));
    }
    env.push(secret("AWS_ACCESS_KEY_ID"));
    env.push(secret("AWS_SECRET_ACCESS_KEY"));
    env
}

fn env(defaults: &ClusterDefaults, run_id: &str, extra: &[(&str, &str)]) -> Vec<EnvVar> {
    let mut env = vec![
        plain_env("RUST_LOG", "info"),
        plain_env("IDC_RUN_ID", run_id),
        pod_name_env(),
    ];
    env.extend(extra.iter().map(|(k, v)| plain_env(k, v)));
    env.extend(s3_env(defaults));
    let mlflow = &defaults.mlflow;
    if let Some(uri) = &mlflow.uri {
        env.push(plain_env(crate::spec::URI_ENV, uri));
    }
    if let Some(name) = &mlflow.token_secret {
        env.push(EnvVar {
            name: crate::spec::TOKEN_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: name.clone(),
                    key: crate::spec::TOKEN_ENV.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver() -> Job {
        build_sweep_driver(&SweepDriverInputs {
            sweep: "lr",
            sweep_url: "s3://idc/sweeps/lr",
            manifest_sha256: "abc",
            defaults: &ClusterDefaults::default(),
        })
    }

    #[test]
    fn a_sweep_driver_is_idcctl_with_the_token_and_no_gpu() {
        let job = driver();
        assert_eq!(
            super::super::names::job_violations(&job),
            Vec::<String>::new()
        );
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(pod.service_account_name.as_deref(), Some("idc"));
        let c = &pod.containers[0];
        assert_eq!(c.image, Some(ClusterDefaults::default().controller_image));
        assert_eq!(
            c.args.as_deref().unwrap(),
            ["internal", "drive-sweep", "--sweep", "s3://idc/sweeps/lr"]
        );
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert!(!limits.contains_key(GPU_RESOURCE));
        assert!(pod.tolerations.is_none());
    }

    fn slides_job(indexes: u32, parallelism: u32) -> Job {
        let experiment: crate::experiment::Experiment = serde_yaml::from_str(
            "apiVersion: idc/v1\nkind: Experiment\nname: cnn\ndataset: {url: s3://idc/datasets/idc}\ntrain: {model: {kind: simple_cnn}}\nbackend: kubernetes\nretries: 2\nstorage: s3://idc\n",
        )
        .unwrap();
        build_slides(
            &PredictJobInputs {
                experiment: &experiment,
                run_id: "cnn-1",
                prediction_id: "0a1b2c3d4e5f",
                job_url: "s3://idc/runs/cnn-1/predictions/0a1b2c3d4e5f",
                spec_sha256: "abc",
                defaults: &ClusterDefaults::default(),
            },
            indexes,
            parallelism,
        )
    }

    #[test]
    fn a_slide_job_is_indexed_with_retries_and_bad_input_per_index() {
        let job = slides_job(7, 3);
        let names = super::super::names::job_violations;
        assert_eq!(names(&job), Vec::<String>::new());
        let spec = job.spec.clone().unwrap();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!((spec.completions, spec.parallelism), (Some(7), Some(3)));
        assert_eq!(
            (spec.backoff_limit, spec.backoff_limit_per_index),
            (None, Some(2))
        );
        let rules = spec.pod_failure_policy.unwrap().rules;
        assert_eq!(rules[0].action, "FailIndex");
        assert_eq!(
            rules[0].on_exit_codes.as_ref().unwrap().values,
            [crate::exit::ExitCode::UserError as i32]
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.containers[0].args.as_deref().unwrap(),
            [
                "predict-slides",
                "--job",
                "s3://idc/runs/cnn-1/predictions/0a1b2c3d4e5f"
            ]
        );
        // Parallelism never exceeds the indexes.
        assert_eq!(slides_job(2, 10).spec.unwrap().parallelism, Some(2));

        // What the API server refuses (pkg/apis/batch/validation), each told.
        let mut bad = job.clone();
        let s = bad.spec.as_mut().unwrap();
        s.backoff_limit_per_index = None;
        s.completions = None;
        let v = names(&bad);
        assert!(
            v.iter().any(|m| m.contains("spec.completions is required")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|m| m.contains("FailIndex requires spec.backoffLimitPerIndex")),
            "{v:?}"
        );
        let mut bad = job.clone();
        let s = bad.spec.as_mut().unwrap();
        s.completion_mode = None;
        s.max_failed_indexes = Some(1);
        let v = names(&bad);
        assert!(
            v.iter()
                .any(|m| m.contains("spec.backoffLimitPerIndex requires completionMode Indexed")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|m| m.contains("spec.maxFailedIndexes requires completionMode Indexed")),
            "{v:?}"
        );
        let mut bad = job;
        let s = bad.spec.as_mut().unwrap();
        s.completions = Some(100_001);
        s.pod_replacement_policy = Some("TerminatingOrFailed".into());
        let v = names(&bad);
        assert!(v.iter().any(|m| m.contains("over 100000")), "{v:?}");
        assert!(
            v.iter()
                .any(|m| m.contains("podReplacementPolicy must be Failed")),
            "{v:?}"
        );
    }

    #[test]
    fn driver_job_names_are_dns_labels() {
        assert_eq!(sweep_driver_job_name("lr"), "sweep-lr");
        let long = format!("{}-b", "a".repeat(56));
        let name = sweep_driver_job_name(&long);
        assert_eq!(name.len(), 62, "{name}");
        assert!(!name.ends_with('-'));
    }
}
