//! The batch/v1 Jobs idcctl creates: a run's (the worker trains) and a prediction's (the worker
//! applies a run's checkpoint, `idcctl predict`), alike in image, S3 credentials from a Secret,
//! GPU and memory resources, scheduling, failure handling and labels (Kueue's queue and priority
//! among them). Pure: the same inputs give the same Job, which `--dry-run` prints and the golden
//! tests pin.

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
    [
        ("app.kubernetes.io/name", "idc"),
        ("app.kubernetes.io/component", "worker"),
        ("app.kubernetes.io/instance", run_id),
        ("app.kubernetes.io/managed-by", "idcctl"),
        ("app.kubernetes.io/part-of", "idc"),
        ("app.kubernetes.io/version", env!("CARGO_PKG_VERSION")),
        (RUN_LABEL, run_id),
        ("idc.dev/experiment", &exp.name),
        ("idc.dev/model", exp.train.model.name()),
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
    let container = Container {
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
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
        ]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        // Job pods never restart in place: a retry is a new pod, counted by backoffLimit.
        restart_policy: Some("Never".into()),
        service_account_name: Some(d.service_account.clone()),
        // The worker talks to the bucket only, never to the API server.
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WORKER_UID),
            run_as_group: Some(WORKER_UID),
            fs_group: Some(WORKER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        termination_grace_period_seconds: Some(d.termination_grace_period_seconds),
        node_selector: (!res.node_selector.is_empty()).then(|| res.node_selector.clone()),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        priority_class_name: res.priority_class.clone().or(d.priority_class.clone()),
        image_pull_secrets: (!d.image_pull_secrets.is_empty()).then(|| {
            d.image_pull_secrets
                .iter()
                .map(|n| LocalObjectReference { name: n.clone() })
                .collect()
        }),
        volumes: Some(vec![
            Volume {
                // Data loader workers and NCCL use /dev/shm; the container default is 64 MiB.
                name: "dshm".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(q(&d.shm_size)),
                }),
                ..Default::default()
            },
            Volume {
                // The root file system is read-only; pretrained weights are fetched to /tmp.
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: None,
                    size_limit: Some(q("10Gi")),
                }),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(p.name.to_string()),
            labels: Some(job_labels),
            annotations: Some(annotations.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completions: Some(1),
            parallelism: Some(1),
            backoff_limit: Some(exp.retries as i32),
            active_deadline_seconds: p.deadline_s,
            ttl_seconds_after_finished: Some(d.ttl_seconds_after_finished),
            pod_failure_policy: Some(failure_policy()),
            // A replacement pod starts only once the old one has stopped (and checkpointed):
            // two workers never write the same run.
            pod_replacement_policy: Some("Failed".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Bad input (worker exit code 2) fails the Job at once; a disruption (preemption, eviction,
/// node drain) does not count against `backoffLimit`, so the run resumes from its checkpoint.
pub fn failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER.into()),
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

fn env(defaults: &ClusterDefaults, run_id: &str, extra: &[(&str, &str)]) -> Vec<EnvVar> {
    let s3 = &defaults.s3;
    let plain = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
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
    let mut env = vec![
        plain("RUST_LOG", "info"),
        plain("IDC_RUN_ID", run_id),
        EnvVar {
            name: "IDC_POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    env.extend(extra.iter().map(|(k, v)| plain(k, v)));
    env.push(plain("AWS_REGION", &s3.region));
    if let Some(e) = &s3.endpoint {
        env.push(plain("AWS_ENDPOINT", e));
    }
    if s3.allow_http {
        env.push(plain("AWS_ALLOW_HTTP", "true"));
    }
    env.push(secret("AWS_ACCESS_KEY_ID"));
    env.push(secret("AWS_SECRET_ACCESS_KEY"));
    let mlflow = &defaults.mlflow;
    if let Some(uri) = &mlflow.uri {
        env.push(plain(crate::tracking::mlflow::URI_ENV, uri));
    }
    if let Some(name) = &mlflow.token_secret {
        env.push(EnvVar {
            name: crate::tracking::mlflow::TOKEN_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: name.clone(),
                    key: crate::tracking::mlflow::TOKEN_ENV.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    env
}
