//! Cluster defaults: what the `charts/idc` chart installs in the `idc-defaults` ConfigMap
//! (key `defaults.yaml`) and `idcctl` reads before creating a Job, plus the RBAC the backend needs
//! (Kueue's apart, as the chart grants it only where Kueue runs).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Name of the ConfigMap the chart installs in the namespace that runs idc jobs.
pub const CONFIG_MAP: &str = "idc-defaults";
/// The ConfigMap's key holding [`ClusterDefaults`] as YAML.
pub const CONFIG_MAP_KEY: &str = "defaults.yaml";

/// Defaults for runs in one namespace; a manifest's `resources` and `storage` override them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClusterDefaults {
    /// Worker image.
    pub image: String,
    /// The idcctl image, run by in-cluster sweep drivers (`sweep run --in-cluster`).
    pub controller_image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// Secrets for pulling the worker image.
    pub image_pull_secrets: Vec<String>,
    /// Bucket runs live in when the manifest keeps the local default (`s3://bucket/prefix`).
    pub storage: Option<String>,
    pub s3: S3Defaults,
    /// Service account of worker pods.
    pub service_account: String,
    pub resources: ResourceDefaults,
    /// Size of the memory-backed `/dev/shm`.
    pub shm_size: String,
    /// Seconds a finished Job (and its pods) is kept before Kubernetes deletes it.
    pub ttl_seconds_after_finished: i32,
    /// Seconds a worker has to checkpoint after SIGTERM (preemption, cancel).
    pub termination_grace_period_seconds: i64,
    /// Priority class of worker pods when the manifest names none.
    pub priority_class: Option<String>,
    /// Tolerate the `nvidia.com/gpu` taint (GPU node pools usually carry it).
    pub tolerate_gpu_taint: bool,
    /// Kueue LocalQueue of runs when the manifest names none (`resources.queue: ""` opts out).
    pub queue: Option<String>,
    /// MLflow tracking of the namespace's runs.
    pub mlflow: MlflowDefaults,
}

/// The MLflow server worker pods mirror runs to (a manifest's `tracking.mlflow.uri` wins).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MlflowDefaults {
    /// Tracking server URL, passed to pods as `MLFLOW_TRACKING_URI`.
    pub uri: Option<String>,
    /// Secret with the key `MLFLOW_TRACKING_TOKEN` (a bearer token), passed by reference.
    pub token_secret: Option<String>,
}

/// How worker pods reach the bucket. Credentials come only from the Secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct S3Defaults {
    /// S3 endpoint URL (MinIO, Garage); unset for AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// Allow a plain-HTTP endpoint.
    pub allow_http: bool,
    /// Secret with the keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret: String,
}

/// Requests of a worker pod when the manifest gives none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourceDefaults {
    pub cpu: String,
    pub memory: String,
}

impl Default for ClusterDefaults {
    fn default() -> Self {
        Self {
            image: format!(
                "ghcr.io/idc-project/idc-worker:{}",
                env!("CARGO_PKG_VERSION")
            ),
            controller_image: format!("ghcr.io/idc-project/idcctl:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".into(),
            image_pull_secrets: vec![],
            storage: None,
            s3: S3Defaults::default(),
            service_account: "idc".into(),
            resources: ResourceDefaults::default(),
            shm_size: "2Gi".into(),
            ttl_seconds_after_finished: 7 * 24 * 3600,
            termination_grace_period_seconds: 120,
            priority_class: None,
            tolerate_gpu_taint: true,
            queue: None,
            mlflow: MlflowDefaults::default(),
        }
    }
}

impl Default for S3Defaults {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".into(),
            allow_http: false,
            credentials_secret: "idc-s3".into(),
        }
    }
}

impl Default for ResourceDefaults {
    fn default() -> Self {
        Self {
            cpu: "4".into(),
            memory: "16Gi".into(),
        }
    }
}

/// One RBAC rule: API group, resource, verbs.
pub type Rule = (&'static str, &'static str, &'static [&'static str]);

/// Everything `idcctl` does against the API server, as RBAC rules. The mock-API tests check
/// that every request they see is covered; the chart's Role must grant exactly these.
pub const RBAC_RULES: &[Rule] = &[
    (
        "batch",
        "jobs",
        &["create", "get", "list", "watch", "delete"],
    ),
    ("", "pods", &["get", "list", "watch"]),
    ("", "pods/log", &["get"]),
    ("", "events", &["get", "list", "watch"]),
    ("", "configmaps", &["get"]),
];

/// What `idcctl` reads of Kueue: a queued Job's Workload, found by a labelled list (`get` lets
/// the same people `kubectl describe` it). The chart grants these besides [`RBAC_RULES`] with
/// `kueue.enabled`; without them `status` says that it cannot tell why a queued Job waits.
pub const KUEUE_RBAC_RULES: &[Rule] = &[("kueue.x-k8s.io", "workloads", &["get", "list"])];
