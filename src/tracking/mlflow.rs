//! A run as an MLflow run, through MLflow's REST API (no Python): [`sync`] brings MLflow up to
//! date with what the bucket holds. It is idempotent because it asks MLflow first: the run is
//! found by its `idc.run_id` tag (made when missing), and of each metric only the steps MLflow
//! has not recorded are sent. Params (the resolved spec, flattened) and tags are set each time
//! (MLflow accepts the same value again), artifacts overwritten, the status set at the end.

use super::Scalar;
use crate::spec::RunSpec;
use crate::spec::{MlflowSpec, TOKEN_ENV, URI_ENV};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A resolved tracking target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub uri: String,
    pub experiment: String,
    pub token: Option<String>,
    /// A sweep's trial: the sweep's MLflow run is its parent.
    pub sweep: Option<String>,
}

impl Target {
    /// The target of `spec` (its uri, else `MLFLOW_TRACKING_URI`), in `default_experiment`
    /// unless it names one; None when no server is named.
    pub fn resolve(spec: Option<&MlflowSpec>, default_experiment: &str) -> Option<Target> {
        let uri = spec
            .and_then(|s| s.uri.clone())
            .or_else(|| std::env::var(URI_ENV).ok())
            .filter(|u| !u.trim().is_empty())?;
        Some(Target {
            uri: uri.trim_end_matches('/').to_string(),
            experiment: spec
                .and_then(|s| s.experiment.clone())
                .unwrap_or_else(|| default_experiment.to_string()),
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            sweep: spec.and_then(|s| s.sweep.clone()),
        })
    }
}

/// Why MLflow could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("cannot reach the MLflow server {uri}: {source}")]
    Unreachable { uri: String, source: reqwest::Error },
    #[error("MLflow {uri} refused {endpoint} ({status}): {message}")]
    Api {
        uri: String,
        endpoint: String,
        status: u16,
        message: String,
    },
}

impl crate::exit::ProcessExitCode for TrackingError {
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        crate::exit::ExitCode::Failure
    }
}

/// How a run ended, for MLflow's run status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Finished,
    Failed,
    Killed,
}

impl End {
    fn status(self) -> &'static str {
        match self {
            End::Finished => "FINISHED",
            End::Failed => "FAILED",
            End::Killed => "KILLED",
        }
    }
}

/// What to bring MLflow up to date with.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub run_id: String,
    pub spec: Option<RunSpec>,
    /// Every scalar so far ([`super::scalars_of`]).
    pub scalars: Vec<Scalar>,
    /// When the run started (Unix ms): the metric points' timestamps count from it.
    pub started_ms: i64,
    pub tags: Vec<(String, String)>,
    /// Files to upload, by their path under the run's artifacts.
    pub artifacts: Vec<(String, Vec<u8>)>,
    /// Set once the run has ended.
    pub end: Option<(End, i64)>,
    /// The MLflow run id of a parent (a sweep's run): the run becomes its child.
    pub parent: Option<String>,
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    pub experiment_id: String,
    pub mlflow_run_id: String,
    /// The run was made by this sync.
    pub created: bool,
    pub metrics_sent: usize,
    pub artifacts_sent: usize,
    /// Why artifacts were not uploaded, if they were not.
    pub artifacts_skipped: Option<String>,
}

/// A client of one tracking server.
pub struct Client {
    http: reqwest::Client,
    target: Target,
}

/// The tag that finds an idc run's MLflow run.
pub const RUN_TAG: &str = "idc.run_id";
/// The tag of a sweep's trials (its name).
pub const SWEEP_TAG: &str = "idc.sweep";
/// The tag that finds a sweep's own (parent) MLflow run.
pub const SWEEP_PARENT_TAG: &str = "idc.sweep_parent";
/// MLflow's tag for a child run's parent.
const PARENT_TAG: &str = "mlflow.parentRunId";

impl Client {
    /// A client whose requests give up after `timeout` (tracking never holds training up).
    pub fn new(target: Target, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .expect("an HTTP client builds");
        Self { http, target }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn call(
        &self,
        method: reqwest::Method,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Option<Value>, TrackingError> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.target.uri);
        let mut req = self.http.request(method, &url).query(query);
        if let Some(t) = &self.target.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| TrackingError::Unreachable {
                uri: self.target.uri.clone(),
                source,
            })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|source| TrackingError::Unreachable {
                uri: self.target.uri.clone(),
                source,
            })?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Some(v));
        }
        if status.as_u16() == 404 && v["error_code"] == "RESOURCE_DOES_NOT_EXIST" {
            return Ok(None);
        }
        Err(TrackingError::Api {
            uri: self.target.uri.clone(),
            endpoint: endpoint.to_string(),
            status: status.as_u16(),
            message: v["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| text.chars().take(300).collect()),
        })
    }

    async fn post(&self, endpoint: &str, body: Value) -> Result<Value, TrackingError> {
        Ok(self
            .call(reqwest::Method::POST, endpoint, &[], Some(body))
            .await?
            .unwrap_or(Value::Null))
    }

    /// The id of the experiment named `name`, made when missing.
    pub async fn experiment_id(&self, name: &str) -> Result<String, TrackingError> {
        let found = self
            .call(
                reqwest::Method::GET,
                "experiments/get-by-name",
                &[("experiment_name", name)],
                None,
            )
            .await?;
        if let Some(v) = found {
            return Ok(str_of(&v["experiment"]["experiment_id"]));
        }
        match self
            .post("experiments/create", json!({ "name": name }))
            .await
        {
            Ok(v) => Ok(str_of(&v["experiment_id"])),
            // Made meanwhile by another sync.
            Err(TrackingError::Api { status: 400, .. }) => Box::pin(self.experiment_id(name)).await,
            Err(e) => Err(e),
        }
    }

    /// The MLflow run tagged with idc run `run_id` in the experiment: (run id, artifact uri).
    pub async fn find_run(
        &self,
        experiment_id: &str,
        run_id: &str,
    ) -> Result<Option<(String, String)>, TrackingError> {
        let v = self
            .post(
                "runs/search",
                json!({
                    "experiment_ids": [experiment_id],
                    "filter": format!("tags.`{RUN_TAG}` = '{}'", run_id.replace('\'', "")),
                    "max_results": 1,
                }),
            )
            .await?;
        Ok(v["runs"].as_array().and_then(|r| r.first()).map(|r| {
            (
                str_of(&r["info"]["run_id"]),
                str_of(&r["info"]["artifact_uri"]),
            )
        }))
    }

    /// The MLflow run of sweep `sweep` (the parent of its trials' runs), made when missing.
    pub async fn sweep_run(
        &self,
        experiment_id: &str,
        sweep: &str,
    ) -> Result<String, TrackingError> {
        let filter = format!("tags.`{SWEEP_PARENT_TAG}` = '{}'", sweep.replace('\'', ""));
        let v = self
            .post(
                "runs/search",
                json!({"experiment_ids": [experiment_id], "filter": filter, "max_results": 1}),
            )
            .await?;
        if let Some(r) = v["runs"].as_array().and_then(|r| r.first()) {
            return Ok(str_of(&r["info"]["run_id"]));
        }
        let v = self
            .post(
                "runs/create",
                json!({
                    "experiment_id": experiment_id,
                    "run_name": sweep,
                    "start_time": now_ms(),
                    "tags": [{"key": SWEEP_PARENT_TAG, "value": sweep}],
                }),
            )
            .await?;
        Ok(str_of(&v["run"]["info"]["run_id"]))
    }

    /// Steps already recorded of metric `key`.
    async fn history(&self, run: &str, key: &str) -> Result<BTreeSet<i64>, TrackingError> {
        Ok(self
            .metric_history(run, key)
            .await?
            .into_iter()
            .map(|(step, _)| step)
            .collect())
    }

    /// Every point of metric `key`: (step, value), in step order (for tests and checks).
    pub async fn metric_history(
        &self,
        run: &str,
        key: &str,
    ) -> Result<Vec<(i64, f64)>, TrackingError> {
        let v = self
            .call(
                reqwest::Method::GET,
                "metrics/get-history",
                &[
                    ("run_id", run),
                    ("metric_key", key),
                    ("max_results", "25000"),
                ],
                None,
            )
            .await?
            .unwrap_or(Value::Null);
        let mut points: Vec<(i64, f64)> = v["metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["step"]
                        .as_i64()
                        .or_else(|| m["step"].as_str()?.parse().ok())
                        .unwrap_or(0),
                    m["value"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect();
        points.sort_by_key(|p| p.0);
        Ok(points)
    }

    /// The run's record as MLflow returns it (`runs/get`).
    pub async fn get_run(&self, run: &str) -> Result<Option<Value>, TrackingError> {
        self.call(reqwest::Method::GET, "runs/get", &[("run_id", run)], None)
            .await
    }

    /// The artifacts of `run` under `path` (`""`: its root): (path, is a folder).
    pub async fn list_artifacts(
        &self,
        run: &str,
        path: &str,
    ) -> Result<Vec<(String, bool)>, TrackingError> {
        let v = self
            .call(
                reqwest::Method::GET,
                "artifacts/list",
                &[("run_id", run), ("path", path)],
                None,
            )
            .await?
            .unwrap_or(Value::Null);
        Ok(v["files"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| (str_of(&f["path"]), f["is_dir"].as_bool().unwrap_or(false)))
            .collect())
    }

    async fn log_batch(
        &self,
        run: &str,
        metrics: &[Value],
        params: &[Value],
        tags: &[Value],
    ) -> Result<(), TrackingError> {
        // MLflow's limits per request: 1000 metrics, 100 params, 100 tags.
        for chunk in metrics.chunks(1000) {
            self.post("runs/log-batch", json!({"run_id": run, "metrics": chunk}))
                .await?;
        }
        for chunk in params.chunks(100) {
            self.post("runs/log-batch", json!({"run_id": run, "params": chunk}))
                .await?;
        }
        for chunk in tags.chunks(100) {
            self.post("runs/log-batch", json!({"run_id": run, "tags": chunk}))
                .await?;
        }
        Ok(())
    }

    /// Uploads `bytes` as artifact `path` of the run whose artifact URI is `artifact_uri`
    /// (the server's artifact proxy: `mlflow-artifacts:/...`).
    async fn upload(
        &self,
        artifact_uri: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), TrackingError> {
        let root = proxied_root(artifact_uri).expect("checked by the caller");
        let url = format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{root}/{path}",
            self.target.uri
        );
        let mut req = self.http.put(&url).body(bytes);
        if let Some(t) = &self.target.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| TrackingError::Unreachable {
                uri: self.target.uri.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(TrackingError::Api {
                uri: self.target.uri.clone(),
                endpoint: format!("mlflow-artifacts/artifacts/{path}"),
                status: resp.status().as_u16(),
                message: resp
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect(),
            });
        }
        Ok(())
    }
}

/// The path of a proxied artifact root (`mlflow-artifacts:/1/abc/artifacts` or
/// `mlflow-artifacts://host/1/abc/artifacts`), None for a store the server does not proxy.
fn proxied_root(artifact_uri: &str) -> Option<String> {
    let rest = artifact_uri.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        Some(with_host) => with_host.split_once('/').map_or("", |(_, p)| p),
        None => rest,
    };
    Some(path.trim_matches('/').to_string())
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The spec as MLflow params: `train.optimizer.lr = 0.001`, ... (values cut to MLflow's 6000
/// characters).
pub fn params_of(spec: &RunSpec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    flatten(
        "train",
        &serde_json::to_value(&spec.train).expect("specs serialize"),
        &mut out,
    );
    out.insert("dataset".into(), spec.dataset.clone());
    for v in out.values_mut() {
        if v.len() > 6000 {
            let mut end = 6000;
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            v.truncate(end);
        }
    }
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        Value::Null => {
            out.insert(prefix.to_string(), "null".into());
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Brings the MLflow run of `u.run_id` up to date (see the module's doc).
pub async fn sync(client: &Client, u: &Update) -> Result<Synced, TrackingError> {
    let experiment_id = client.experiment_id(&client.target.experiment).await?;
    let tags = run_tags(client, u, &experiment_id).await?;
    let tag_values: Vec<Value> = tags
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    let (run, artifact_uri, created) = match client.find_run(&experiment_id, &u.run_id).await? {
        Some((run, uri)) => (run, uri, false),
        None => {
            let v = client
                .post(
                    "runs/create",
                    json!({
                        "experiment_id": experiment_id,
                        "run_name": u.run_id,
                        "start_time": u.started_ms,
                        "tags": tag_values,
                    }),
                )
                .await?;
            (
                str_of(&v["run"]["info"]["run_id"]),
                str_of(&v["run"]["info"]["artifact_uri"]),
                true,
            )
        }
    };
    let metrics = missing_metrics(client, u, &run, created).await?;
    let params: Vec<Value> = u
        .spec
        .as_ref()
        .map(params_of)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    client
        .log_batch(&run, &metrics, &params, &tag_values)
        .await?;
    let (artifacts_sent, artifacts_skipped) = upload_artifacts(client, u, &artifact_uri).await?;
    if let Some((end, at_ms)) = u.end {
        client
            .post(
                "runs/update",
                json!({"run_id": run, "status": end.status(), "end_time": at_ms}),
            )
            .await?;
    }
    Ok(Synced {
        experiment_id,
        mlflow_run_id: run,
        created,
        metrics_sent: metrics.len(),
        artifacts_sent,
        artifacts_skipped,
    })
}

/// The tags of `u`'s run: its idc run id, its sweep and parent run (the sweep's, made if
/// need be), then its own.
async fn run_tags(
    client: &Client,
    u: &Update,
    experiment_id: &str,
) -> Result<Vec<(String, String)>, TrackingError> {
    let mut tags: Vec<(String, String)> = vec![(RUN_TAG.into(), u.run_id.clone())];
    let parent = match (&u.parent, &client.target.sweep) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(sweep)) => {
            tags.push((SWEEP_TAG.into(), sweep.clone()));
            Some(client.sweep_run(experiment_id, sweep).await?)
        }
        (None, None) => None,
    };
    if let Some(p) = parent {
        tags.push((PARENT_TAG.into(), p));
    }
    tags.extend(u.tags.iter().cloned());
    Ok(tags)
}

/// Only what MLflow does not hold yet: the steps missing from each metric's history in `run`
/// (all of them when the run was just `created`).
async fn missing_metrics(
    client: &Client,
    u: &Update,
    run: &str,
    created: bool,
) -> Result<Vec<Value>, TrackingError> {
    let mut by_tag: BTreeMap<&str, Vec<&Scalar>> = BTreeMap::new();
    for s in u.scalars.iter().filter(|s| s.value.is_finite()) {
        by_tag.entry(&s.tag).or_default().push(s);
    }
    let mut metrics = vec![];
    for (tag, points) in by_tag {
        let have = if created {
            BTreeSet::new()
        } else {
            client.history(run, tag).await?
        };
        for s in points.into_iter().filter(|s| !have.contains(&s.step)) {
            metrics.push(json!({
                "key": tag,
                "value": s.value,
                "timestamp": u.started_ms + (s.elapsed_s * 1000.0) as i64,
                "step": s.step,
            }));
        }
    }
    Ok(metrics)
}

/// Uploads `u`'s artifacts under `artifact_uri` when the server proxies them: how many were
/// sent, or why none were.
async fn upload_artifacts(
    client: &Client,
    u: &Update,
    artifact_uri: &str,
) -> Result<(usize, Option<String>), TrackingError> {
    if u.artifacts.is_empty() {
        return Ok((0, None));
    }
    if proxied_root(artifact_uri).is_none() {
        return Ok((
            0,
            Some(format!(
                "the server does not proxy artifacts (the run's artifact root is {artifact_uri}; start it with --serve-artifacts)"
            )),
        ));
    }
    let mut sent = 0;
    for (path, bytes) in &u.artifacts {
        client.upload(artifact_uri, path, bytes.clone()).await?;
        sent += 1;
    }
    Ok((sent, None))
}

/// Ends sweep `sweep`'s MLflow run: `sweep/best` (the best objective after each trial, at the
/// trial's number) and its status.
pub async fn finish_sweep(
    client: &Client,
    sweep: &str,
    best_so_far: &[(i64, f64)],
    end: End,
) -> Result<String, TrackingError> {
    let experiment_id = client.experiment_id(&client.target.experiment).await?;
    let run = client.sweep_run(&experiment_id, sweep).await?;
    let have = client.history(&run, "sweep/best").await?;
    let metrics: Vec<Value> = best_so_far
        .iter()
        .filter(|(n, v)| v.is_finite() && !have.contains(n))
        .map(|(n, v)| json!({"key": "sweep/best", "value": v, "timestamp": now_ms(), "step": n}))
        .collect();
    client.log_batch(&run, &metrics, &[], &[]).await?;
    client
        .post(
            "runs/update",
            json!({"run_id": run, "status": end.status(), "end_time": now_ms()}),
        )
        .await?;
    Ok(run)
}

/// Now, in Unix milliseconds (MLflow's timestamps).
pub fn now_ms() -> i64 {
    (crate::clock::unix_now() * 1000.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_roots_of_the_proxy() {
        assert_eq!(
            proxied_root("mlflow-artifacts:/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(
            proxied_root("mlflow-artifacts://mlflow.example:5000/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(proxied_root("s3://bucket/1/abc/artifacts"), None);
    }

    #[test]
    fn params_are_the_flattened_spec() {
        let spec = RunSpec {
            run_id: "r".into(),
            dataset: "s3://idc/datasets/idc".into(),
            train: Default::default(),
        };
        let p = params_of(&spec);
        assert_eq!(p["dataset"], "s3://idc/datasets/idc");
        assert_eq!(p["train.epochs"], spec.train.epochs.to_string());
        assert_eq!(p["train.optimizer.lr"], spec.train.optimizer.lr.to_string());
        assert!(p.keys().all(|k| k.starts_with("train.") || k == "dataset"));
    }

    #[test]
    fn the_target_comes_from_the_spec_or_the_environment() {
        let spec = MlflowSpec {
            uri: Some("http://mlflow:5000/".into()),
            experiment: None,
            sweep: None,
        };
        let t = Target::resolve(Some(&spec), "cnn").unwrap();
        assert_eq!(
            (t.uri.as_str(), t.experiment.as_str()),
            ("http://mlflow:5000", "cnn")
        );
    }
}
