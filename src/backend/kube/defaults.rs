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

/// Everything `idcctl` does against the API server, as RBAC rules, and nothing more: `submit`
/// reads the ConfigMap and creates the Job (and reads it when one of that name is there),
/// `status` reads the Job, lists its pods and, while it has none, the events of the Job, `logs`
/// reads pods and their logs, `cancel` and `resume` delete the Job. Nothing is watched: idcctl
/// polls. The chart's Role must grant exactly these; tests/it/kube.rs derives them from the
/// requests its scenarios make, and tests/it/chart.rs compares them with the rendered Role.
/// (`/version`, read at submit, is a non-resource URL every user may read through the
/// `system:public-info-viewer` ClusterRole: no Role grants it.)
pub const RBAC_RULES: &[Rule] = &[
    ("batch", "jobs", &["create", "get", "delete"]),
    ("", "pods", &["get", "list"]),
    ("", "pods/log", &["get"]),
    ("", "events", &["list"]),
    ("", "configmaps", &["get"]),
];

/// What `idcctl` reads of Kueue: a queued Job's Workload, found by a labelled list. The chart
/// grants these besides [`RBAC_RULES`] with `kueue.enabled`; without them `status` says that it
/// cannot tell why a queued Job waits.
pub const KUEUE_RBAC_RULES: &[Rule] = &[("kueue.x-k8s.io", "workloads", &["list"])];

/// A Kubernetes feature the Jobs of `src/backend/kube/job.rs` rely on, and the first release in
/// which it is on by default (beta or GA): an older API server drops a field it does not know
/// without a word, so the Job would run without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needed {
    pub feature: &'static str,
    /// What idc would lose without it, in a phrase.
    pub for_what: &'static str,
    /// (major, minor).
    pub since: (u32, u32),
}

/// Every field of idc's Jobs and pods newer than Kubernetes 1.19, with the release it needs.
/// The newest sets [`MIN_KUBERNETES`]; charts/idc/Chart.yaml's `kubeVersion` and its README
/// say the same.
pub const KUBERNETES_NEEDS: &[Needed] = &[
    Needed {
        // JobPodReplacementPolicy: alpha 1.28, beta (on) 1.29, GA 1.34.
        feature: "Job podReplacementPolicy: Failed",
        for_what: "a replacement pod starts only once the old one has stopped, so two workers never write one run",
        since: (1, 29),
    },
    Needed {
        // JobPodFailurePolicy: alpha 1.25, beta (on) 1.26, GA 1.31.
        feature: "Job podFailurePolicy",
        for_what: "bad input (exit code 2) fails a run at once instead of being retried",
        since: (1, 26),
    },
    Needed {
        // PodDisruptionConditions: alpha 1.25, beta (on) 1.26, GA 1.31.
        feature: "the DisruptionTarget pod condition",
        for_what: "a preempted or evicted attempt does not count against the run's retries",
        since: (1, 26),
    },
    Needed {
        // SuspendJob: GA 1.24.
        feature: "Job suspend",
        for_what: "Kueue admits queued Jobs",
        since: (1, 24),
    },
    Needed {
        // TTLAfterFinished: GA 1.23.
        feature: "Job ttlSecondsAfterFinished",
        for_what: "finished Jobs and their pods are cleaned up",
        since: (1, 23),
    },
    Needed {
        // SizeMemoryBackedVolumes: beta (on) 1.22, GA 1.32.
        feature: "a memory-backed emptyDir's sizeLimit",
        for_what: "/dev/shm has the size shmSize asks for",
        since: (1, 22),
    },
];

/// The oldest Kubernetes release idc supports: the newest of [`KUBERNETES_NEEDS`].
pub const MIN_KUBERNETES: (u32, u32) = (1, 29);

/// Refuses an API server older than [`MIN_KUBERNETES`], naming each feature it lacks; `version`
/// is how the server names itself (`v1.28.15-eks-…`), `major` and `minor` its `/version`
/// fields (managed clusters write `28+`). `Ok(false)`: the version could not be read.
pub fn check_kubernetes(version: &str, major: &str, minor: &str) -> Result<bool, String> {
    let Some(have) = parse_version(major, minor).or_else(|| {
        let v = version.strip_prefix('v').unwrap_or(version);
        let mut parts = v.split('.');
        parse_version(parts.next()?, parts.next()?)
    }) else {
        return Ok(false);
    };
    let missing: Vec<String> = KUBERNETES_NEEDS
        .iter()
        .filter(|n| n.since > have)
        .map(|n| {
            format!(
                "{} (on since {}.{}: {})",
                n.feature, n.since.0, n.since.1, n.for_what
            )
        })
        .collect();
    if missing.is_empty() {
        return Ok(true);
    }
    Err(format!(
        "idc needs Kubernetes {}.{} or newer, and this API server is {version}; it lacks {}. Ask the cluster's admin for {}.{} or newer",
        MIN_KUBERNETES.0,
        MIN_KUBERNETES.1,
        missing.join("; "),
        MIN_KUBERNETES.0,
        MIN_KUBERNETES.1
    ))
}

/// `("1", "28+")` → (1, 28).
fn parse_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| -> Option<u32> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    Some((digits(major)?, digits(minor)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_is_the_newest_feature() {
        let newest = KUBERNETES_NEEDS.iter().map(|n| n.since).max().unwrap();
        assert_eq!(MIN_KUBERNETES, newest);
    }

    #[test]
    fn older_servers_are_refused_naming_what_they_lack() {
        assert_eq!(check_kubernetes("v1.32.5", "1", "32"), Ok(true));
        assert_eq!(check_kubernetes("v1.29.0", "1", "29"), Ok(true));
        assert_eq!(check_kubernetes("v2.0.0", "2", "0"), Ok(true));
        // Managed clusters: `28+`, and a suffixed gitVersion.
        let e = check_kubernetes("v1.28.15-eks-a1b2c3", "1", "28+").unwrap_err();
        assert!(e.contains("needs Kubernetes 1.29 or newer"), "{e}");
        assert!(e.contains("this API server is v1.28.15-eks-a1b2c3"), "{e}");
        assert!(
            e.contains("Job podReplacementPolicy: Failed (on since 1.29"),
            "{e}"
        );
        assert!(!e.contains("podFailurePolicy"), "1.28 has it: {e}");
        let e = check_kubernetes("v1.25.3", "1", "25").unwrap_err();
        assert!(
            e.contains("podFailurePolicy") && e.contains("DisruptionTarget"),
            "{e}"
        );
        // Empty fields: the gitVersion tells.
        assert!(check_kubernetes("v1.27.1", "", "").is_err());
        // Nothing readable: not refused.
        assert_eq!(check_kubernetes("", "", ""), Ok(false));
    }
}
