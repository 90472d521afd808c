//! The connection to a cluster (kubeconfig context or in-cluster config, namespace) and every
//! API call the backend makes: create, read and delete a run's Job, list its pods and events,
//! find a queued Job's Kueue Workload, read the namespace's defaults and the server's version,
//! and stream pod logs.

use super::defaults::{CONFIG_MAP, CONFIG_MAP_KEY, ClusterDefaults, check_kubernetes};
use super::job::{RUN_LABEL, SPEC_ANNOTATION};
use super::kueue::{self, Workload, WorkloadLookup};
use super::observe::{self, Attempt, Observation};
use crate::attempt::AttemptRecord;
use ::kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, PropagationPolicy};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use std::time::Duration;

/// What went wrong talking to the cluster, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "cannot load the Kubernetes configuration{}: {source}; check KUBECONFIG, ~/.kube/config or --context",
        ctx(.context)
    )]
    Config {
        context: Option<String>,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "cannot reach the Kubernetes API server {server}{}: {}; is the cluster up and the context right?",
        ctx(.context),
        transport_cause(.source)
    )]
    Unreachable {
        server: String,
        context: Option<String>,
        source: ::kube::Error,
    },
    #[error(
        "the API server refused to {action} in namespace {namespace}: {message}; install charts/idc in that namespace (its Role grants what idcctl needs) or ask an admin for it"
    )]
    Forbidden {
        action: String,
        namespace: String,
        message: String,
    },
    #[error("the Kubernetes API server {server}{}: {message}", ctx(.context))]
    TooOld {
        server: String,
        context: Option<String>,
        message: String,
    },
    #[error(
        "a different run named {name} already has a Job in namespace {namespace} (its spec differs); pick another --run-id"
    )]
    Conflict { name: String, namespace: String },
    #[error(
        "the ConfigMap {CONFIG_MAP} in namespace {namespace} has an unreadable {CONFIG_MAP_KEY}: {message}"
    )]
    BadDefaults { namespace: String, message: String },
    #[error("cannot {action} in namespace {namespace}: {source}")]
    Api {
        action: String,
        namespace: String,
        source: ::kube::Error,
    },
}

/// What went wrong on the way to the API server, without kube-rs's label of it
/// ("ServiceError: "): the transport's own error and its causes, each once.
fn transport_cause(e: &::kube::Error) -> String {
    match e {
        ::kube::Error::HyperError(_) | ::kube::Error::Service(_) => std::error::Error::source(e)
            .map(crate::exit::message_of)
            .unwrap_or_else(|| e.to_string()),
        e => crate::exit::message_of(e),
    }
}

fn ctx(c: &Option<String>) -> String {
    c.as_ref()
        .map(|c| format!(" (context {c})"))
        .unwrap_or_default()
}

impl KubeError {
    /// Whether the object was not there (404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Api { source: ::kube::Error::Api(s), .. } if s.code == 404)
    }

    /// Whether the API server refused the request for good (forbidden, invalid, a different
    /// object of that name, no such namespace): nothing was done, and retrying as is will not
    /// help.
    pub fn is_refusal(&self) -> bool {
        match self {
            KubeError::Forbidden { .. } | KubeError::Conflict { .. } => true,
            KubeError::Api {
                source: ::kube::Error::Api(s),
                ..
            } => (400..500).contains(&s.code) && s.code != 429,
            _ => false,
        }
    }
}

impl crate::exit::ProcessExitCode for KubeError {
    /// Whether the user can fix it (exit code 2) rather than a failure.
    /// A kubeconfig, a conflicting Job or bad namespace defaults are the user's to fix (2).
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        match self {
            KubeError::Config { .. }
            | KubeError::TooOld { .. }
            | KubeError::Conflict { .. }
            | KubeError::BadDefaults { .. } => crate::exit::ExitCode::UserError,
            _ => crate::exit::ExitCode::Failure,
        }
    }
}

/// Whether a Job was made by this call or was already there (an idempotent resubmission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    AlreadyThere,
}

/// One line of a worker's log, with the attempt it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub attempt: u32,
    pub text: String,
}

/// A namespace of a cluster, as one user's credentials see it.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    pub namespace: String,
    pub context: Option<String>,
    pub server: String,
    /// How often `follow` polls for the next pod.
    pub poll: Duration,
}

impl Cluster {
    /// Connects with the kubeconfig (`context`, or its current context), else the in-cluster
    /// service account; `namespace` defaults to the context's.
    pub async fn connect(
        context: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Self, KubeError> {
        let named = context.map(str::to_string).or_else(|| {
            // Only to name it in errors.
            Kubeconfig::read().ok().and_then(|k| k.current_context)
        });
        let config = if context.is_some() {
            let opts = KubeConfigOptions {
                context: context.map(str::to_string),
                ..Default::default()
            };
            Config::from_kubeconfig(&opts)
                .await
                .map_err(|e| KubeError::Config {
                    context: named.clone(),
                    source: Box::new(e),
                })?
        } else {
            Config::infer().await.map_err(|e| KubeError::Config {
                context: named.clone(),
                source: Box::new(e),
            })?
        };
        Self::from_config(config, named, namespace)
    }

    /// Connects with the kubeconfig file `path` (its current context), whatever KUBECONFIG
    /// says: what the lifecycle tests use against a real cluster.
    pub async fn connect_with_kubeconfig(
        path: &std::path::Path,
        namespace: Option<&str>,
    ) -> Result<Self, KubeError> {
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| KubeError::Config {
            context: None,
            source: e,
        };
        let kubeconfig = Kubeconfig::read_from(path).map_err(|e| fail(Box::new(e)))?;
        let named = kubeconfig.current_context.clone();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| fail(Box::new(e)))?;
        Self::from_config(config, named, namespace)
    }

    fn from_config(
        config: Config,
        named: Option<String>,
        namespace: Option<&str>,
    ) -> Result<Self, KubeError> {
        let server = config.cluster_url.to_string();
        // Two TLS crypto providers are linked in (kube's ring, object_store's aws-lc-rs):
        // rustls needs to be told which to use. A second install is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ns = namespace
            .map(str::to_string)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| KubeError::Unreachable {
            server: server.clone(),
            context: named.clone(),
            source: e,
        })?;
        Ok(Self {
            client,
            namespace: ns,
            context: named,
            server,
            poll: Duration::from_secs(2),
        })
    }

    /// A cluster behind an existing client (tests use kube-rs's mock service).
    pub fn with_client(client: Client, namespace: &str) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            context: None,
            server: "mock".into(),
            poll: Duration::ZERO,
        }
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Turns a client error into one that says what to do.
    fn err(&self, action: &str, e: ::kube::Error) -> KubeError {
        match e {
            ::kube::Error::Api(s) if s.code == 403 => KubeError::Forbidden {
                action: action.into(),
                namespace: self.namespace.clone(),
                message: s.message.clone(),
            },
            e @ (::kube::Error::HyperError(_) | ::kube::Error::Service(_)) => {
                KubeError::Unreachable {
                    server: self.server.clone(),
                    context: self.context.clone(),
                    source: e,
                }
            }
            e => KubeError::Api {
                action: action.into(),
                namespace: self.namespace.clone(),
                source: e,
            },
        }
    }

    /// Refuses an API server older than idc's Jobs need ([`super::defaults::KUBERNETES_NEEDS`]):
    /// it would drop the fields it does not know and run the Job without them. A server that
    /// does not tell its version is not refused; a warning says so.
    pub async fn check_version(&self) -> Result<(), KubeError> {
        let info = match self.client.apiserver_version().await {
            Ok(info) => info,
            Err(::kube::Error::Api(s)) => {
                tracing::warn!(
                    "cannot read the Kubernetes version of {} ({} {}): not checked",
                    self.server,
                    s.code,
                    s.message
                );
                return Ok(());
            }
            Err(e) => return Err(self.err("get /version", e)),
        };
        match check_kubernetes(&info.git_version, &info.major, &info.minor) {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!(
                    "the API server {} names no Kubernetes version ({:?}): not checked",
                    self.server,
                    info.git_version
                );
                Ok(())
            }
            Err(message) => Err(KubeError::TooOld {
                server: self.server.clone(),
                context: self.context.clone(),
                message,
            }),
        }
    }

    /// The namespace's defaults (the chart's ConfigMap), or built-in ones when there is none.
    pub async fn defaults(&self) -> Result<ClusterDefaults, KubeError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let cm = api
            .get_opt(CONFIG_MAP)
            .await
            .map_err(|e| self.err(&format!("get configmaps/{CONFIG_MAP}"), e))?;
        let Some(cm) = cm else {
            tracing::warn!(
                "no ConfigMap {CONFIG_MAP} in namespace {}: using built-in defaults (install charts/idc to set the image, bucket and credentials)",
                self.namespace
            );
            return Ok(ClusterDefaults::default());
        };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_MAP_KEY))
            .ok_or_else(|| KubeError::BadDefaults {
                namespace: self.namespace.clone(),
                message: "the key is missing".into(),
            })?;
        serde_yaml::from_str(text).map_err(|e| KubeError::BadDefaults {
            namespace: self.namespace.clone(),
            message: e.to_string(),
        })
    }

    /// Creates the run's Job; a Job of the same name and spec already there is success.
    pub async fn create_job(&self, job: &Job) -> Result<Created, KubeError> {
        let name = job.metadata.name.clone().unwrap_or_default();
        match self.jobs().create(&PostParams::default(), job).await {
            Ok(_) => Ok(Created::New),
            Err(::kube::Error::Api(s)) if s.code == 409 => {
                let existing = self
                    .jobs()
                    .get(&name)
                    .await
                    .map_err(|e| self.err(&format!("get jobs/{name}"), e))?;
                let hash = |j: &Job| {
                    j.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(SPEC_ANNOTATION))
                        .cloned()
                };
                if hash(&existing).is_some() && hash(&existing) == hash(job) {
                    Ok(Created::AlreadyThere)
                } else {
                    Err(KubeError::Conflict {
                        name,
                        namespace: self.namespace.clone(),
                    })
                }
            }
            Err(e) => Err(self.err(&format!("create jobs/{name}"), e)),
        }
    }

    pub async fn job(&self, run_id: &str) -> Result<Option<Job>, KubeError> {
        self.jobs()
            .get_opt(run_id)
            .await
            .map_err(|e| self.err(&format!("get jobs/{run_id}"), e))
    }

    /// The run's pods in attempt order.
    pub async fn pods_of(&self, run_id: &str) -> Result<Vec<Pod>, KubeError> {
        let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run_id}"));
        let pods = self
            .pods()
            .list(&lp)
            .await
            .map_err(|e| self.err("list pods", e))?;
        Ok(observe::by_attempt(pods.items))
    }

    /// One pod by name, `None` when it is gone.
    pub async fn pod(&self, pod: &str) -> Result<Option<Pod>, KubeError> {
        self.pods()
            .get_opt(pod)
            .await
            .map_err(|e| self.err(&format!("get pods/{pod}"), e))
    }

    /// Events of the run's Job (why the Job controller cannot create a pod).
    pub async fn job_events(&self, run_id: &str) -> Result<Vec<Event>, KubeError> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind=Job,involvedObject.name={run_id}"
        ));
        Ok(api
            .list(&lp)
            .await
            .map_err(|e| self.err("list events", e))?
            .items)
    }

    /// What Kueue says of a queued Job that waits (see [`kueue::waiting_queue`]); `None`, and no
    /// request, for any other Job. Never an error: a cluster without Kueue, or RBAC that does
    /// not let idcctl read Workloads, is part of the answer, so `status` still says something.
    pub async fn workload_of(&self, job: &Job, pods: &[Pod]) -> Option<WorkloadLookup> {
        kueue::waiting_queue(job, pods)?;
        let uid = job.metadata.uid.as_deref()?;
        let api: Api<Workload> = Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &kueue::workload_resource(),
        );
        // Kueue puts the Job's UID label on every Workload it makes for a Job, beside the
        // controller ownerReference: the API server can select by the label, whereas finding
        // the ownerReference would mean listing every Workload in the namespace.
        let lp = ListParams::default().labels(&format!("{}={uid}", kueue::JOB_UID_LABEL));
        Some(match api.list(&lp).await {
            Ok(list) => kueue::pick(list.items, uid),
            Err(::kube::Error::Api(s)) if s.code == 404 => WorkloadLookup::NotServed,
            Err(::kube::Error::Api(s)) if s.code == 403 => WorkloadLookup::Forbidden(s.message),
            Err(e) => {
                tracing::debug!(
                    "cannot list the Workloads of Job {:?}: {e}",
                    job.metadata.name
                );
                WorkloadLookup::Failed(e.to_string())
            }
        })
    }

    /// Where the run stands, and its attempts; `None` when its Job is gone (cancelled, or
    /// deleted after its TTL). `records` are the run's attempt records, read before this call
    /// so that every record's pod, if it still exists, is among the pods listed here.
    pub async fn observe(
        &self,
        run_id: &str,
        max_attempts: u32,
        records: &[AttemptRecord],
        earlier: u32,
    ) -> Result<Option<(Observation, Vec<Attempt>)>, KubeError> {
        let Some(job) = self.job(run_id).await? else {
            return Ok(None);
        };
        let pods = self.pods_of(run_id).await?;
        let events = if pods.is_empty() {
            self.job_events(run_id).await?
        } else {
            vec![]
        };
        let workload = self.workload_of(&job, &pods).await;
        let attempts = observe::number_attempts(records, &pods, earlier);
        let o = observe::observe(&job, &attempts, &events, workload.as_ref(), max_attempts);
        Ok(Some((o, attempts)))
    }

    /// Deletes the run's Job; its pods get SIGTERM and the worker checkpoints. False if gone.
    pub async fn delete_job(&self, run_id: &str) -> Result<bool, KubeError> {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match self.jobs().delete(run_id, &dp).await {
            Ok(_) => Ok(true),
            Err(::kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(self.err(&format!("delete jobs/{run_id}"), e)),
        }
    }

    /// Streams one pod's worker log from `since` (an RFC 3339 time) on, calling `line` with
    /// each line's timestamp and text. Returns when the stream ends.
    pub async fn stream_log(
        &self,
        pod: &str,
        follow: bool,
        since: Option<&str>,
        line: impl FnMut(&str, &str),
    ) -> Result<(), KubeError> {
        self.stream_container_log(pod, super::job::CONTAINER, follow, since, line)
            .await
    }

    /// [`Cluster::stream_log`] of another container (a sweep driver's).
    pub async fn stream_container_log(
        &self,
        pod: &str,
        container: &str,
        follow: bool,
        since: Option<&str>,
        mut line: impl FnMut(&str, &str),
    ) -> Result<(), KubeError> {
        use futures::AsyncBufReadExt;
        let lp = LogParams {
            container: Some(container.into()),
            follow,
            timestamps: true,
            since_time: since.and_then(|s| s.parse().ok()),
            ..Default::default()
        };
        let stream = self
            .pods()
            .log_stream(pod, &lp)
            .await
            .map_err(|e| self.err(&format!("get pods/{pod}/log"), e))?;
        let mut lines = stream.lines();
        use futures::TryStreamExt;
        while let Some(l) = lines.try_next().await.map_err(|e| KubeError::Api {
            action: format!("read pods/{pod}/log"),
            namespace: self.namespace.clone(),
            source: ::kube::Error::ReadEvents(e),
        })? {
            let (ts, text) = l.split_once(' ').unwrap_or(("", &l));
            line(ts, text);
        }
        Ok(())
    }
}
