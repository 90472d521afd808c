//! The Kubernetes backend against kube-rs's `tower_test` mock API server: every request is
//! asserted in order (method, path and query, and the body where it matters), answered with a
//! scripted response, and checked against the RBAC the chart grants. Plus golden Jobs rendered
//! by `submit --dry-run` for every manifest in `manifests/`.

use crate::common::*;
use ::kube::client::Body;
use http::{Request, Response};
use idc::backend::kube::Kubernetes;
use idc::backend::kube::cluster::{Cluster, LogLine};
use idc::backend::kube::{self, ClusterDefaults, KUEUE_RBAC_RULES, RBAC_RULES};
use idc::backend::{self, RunBackend, SubmitOptions};
use idc::exit::ProcessExitCode;
use idc::experiment::{self, Experiment};
use idc::layout::run as keys;
use idc::run::{self, Phase, RunStatus};
use idc::store::Store;
use k8s_openapi::api::batch::v1::Job;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;
use std::pin::pin;
use tower_test::mock;

const NS: &str = "ml";
const RUN: &str = "resnet34-t1";

/// An assertion on a request's JSON body.
type BodyCheck = Box<dyn Fn(&Value) + Send>;

/// One expected request and the response to it.
struct Exchange {
    method: &'static str,
    uri: String,
    status: u16,
    body: Value,
    /// Raw response text instead of JSON (pod logs).
    text: Option<String>,
    /// Asserts on the request body.
    check: Option<BodyCheck>,
}

fn ex(method: &'static str, uri: impl Into<String>, status: u16, body: Value) -> Exchange {
    Exchange {
        method,
        uri: uri.into(),
        status,
        body,
        text: None,
        check: None,
    }
}

fn log_ex(uri: impl Into<String>, lines: &[&str]) -> Exchange {
    let text: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("2026-11-26T10:00:{i:02}.000000000Z {l}\n"))
        .collect();
    Exchange {
        text: Some(text),
        ..ex("GET", uri, 200, Value::Null)
    }
}

/// The RBAC verb and resource a request needs, from its method and path.
fn rbac_of(method: &str, uri: &str) -> (String, String, String) {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts[0] {
        "api" => ("", &parts[2..]),
        "apis" => (parts[1], &parts[3..]),
        other => panic!("unexpected API path {other}"),
    };
    assert_eq!(rest[0], "namespaces", "{uri}: only namespaced requests");
    let resource = rest[2];
    let named = rest.len() > 3;
    let sub = rest.get(4).map(|s| format!("{resource}/{s}"));
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("DELETE", _) => "delete",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        _ => panic!("unexpected method {method}"),
    };
    (
        group.to_string(),
        sub.unwrap_or(resource.to_string()),
        verb.to_string(),
    )
}

fn assert_rbac_allows(method: &str, uri: &str) {
    let (group, resource, verb) = rbac_of(method, uri);
    // The chart grants KUEUE_RBAC_RULES with kueue.enabled; without them, see the 403 test.
    let allowed = RBAC_RULES
        .iter()
        .chain(KUEUE_RBAC_RULES)
        .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&verb.as_str()));
    assert!(
        allowed,
        "{method} {uri} needs {verb} on {group}/{resource}, which RBAC_RULES and KUEUE_RBAC_RULES (and the chart's Role) do not grant"
    );
}

/// The one non-resource URL idcctl reads (at submit): every user may, through the
/// `system:public-info-viewer` ClusterRole, so no Role of the chart's grants it.
const VERSION_URI: &str = "/version";

/// `/version` of a Kubernetes 1.`minor` API server.
fn version_ex(minor: &str) -> Exchange {
    ex(
        "GET",
        VERSION_URI,
        200,
        json!({"major": "1", "minor": minor, "gitVersion": format!("v1.{minor}.5"),
               "gitCommit": "", "gitTreeState": "clean", "buildDate": "2025-06-01T00:00:00Z",
               "goVersion": "go1.23.9", "compiler": "gc", "platform": "linux/amd64"}),
    )
}

thread_local! {
    /// The (group, resource, verb) of each request the mock API servers of this thread's tests
    /// answered: a `#[tokio::test]` runs its mock task on the thread that calls it.
    static REQUESTED: RefCell<BTreeSet<(String, String, String)>> = RefCell::default();
}

/// A cluster whose API server answers `script` in order, and the task checking it.
fn mock_cluster(script: Vec<Exchange>) -> (Cluster, tokio::task::JoinHandle<()>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut handle = pin!(handle);
        for (i, e) in script.into_iter().enumerate() {
            let (req, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("request {i} ({} {}) never came", e.method, e.uri));
            let uri = req.uri().to_string();
            assert_eq!(
                (req.method().as_str(), uri.as_str()),
                (e.method, e.uri.as_str()),
                "request {i}"
            );
            if uri != VERSION_URI {
                assert_rbac_allows(e.method, &uri);
                REQUESTED.with(|r| r.borrow_mut().insert(rbac_of(e.method, &uri)));
            }
            let body = req.into_body().collect_bytes().await.unwrap();
            if let Some(check) = &e.check {
                check(&serde_json::from_slice(&body).expect("a JSON request body"));
            }
            let bytes = match e.text {
                Some(t) => t.into_bytes(),
                None => serde_json::to_vec(&e.body).unwrap(),
            };
            send.send_response(
                Response::builder()
                    .status(e.status)
                    .body(Body::from(bytes))
                    .unwrap(),
            );
        }
        assert!(
            handle.next_request().await.is_none(),
            "a request beyond the script was made"
        );
    });
    (
        Cluster::with_client(::kube::Client::new(service, NS), NS),
        task,
    )
}

/// Follows the run's log on the scripted cluster: every line with its attempt.
async fn followed(
    cluster: Cluster,
    task: tokio::task::JoinHandle<()>,
    run: &Store,
    earlier: u32,
) -> Vec<(u32, String)> {
    let mut lines = vec![];
    kube::follow(
        &cluster,
        run,
        RUN,
        earlier,
        None,
        &mut |l: LogLine| lines.push((l.attempt, l.text)),
        &mut |_| {},
    )
    .await
    .unwrap();
    finish(cluster, task).await;
    lines
}

/// Drops the cluster (closing the mock) and waits for the script's checks.
async fn finish(cluster: Cluster, task: tokio::task::JoinHandle<()>) {
    drop(cluster);
    task.await.expect("the mock API server's checks passed");
}

fn status_err(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code,
           "reason": reason, "message": message, "metadata": {}})
}

fn job_path(name: &str) -> String {
    format!("/apis/batch/v1/namespaces/{NS}/jobs/{name}")
}

fn pods_list_uri() -> String {
    format!("/api/v1/namespaces/{NS}/pods?&labelSelector=idc.dev%2Frun%3D{RUN}")
}

fn job_json(conditions: Value, spec_sha: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": RUN, "namespace": NS,
                     "annotations": {"idc.dev/spec-sha256": spec_sha}},
        "spec": {"activeDeadlineSeconds": 43200, "template": {"spec": {"containers": []}}},
        "status": {"conditions": conditions}
    })
}

fn pod(name: &str, created: &str, phase: &str, extra_status: Value) -> Value {
    let mut status = json!({"phase": phase});
    for (k, v) in extra_status.as_object().unwrap() {
        status[k] = v.clone();
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": created,
                     "labels": {"idc.dev/run": RUN}},
        "spec": {"nodeName": "gpu-node-1", "containers": [{"name": "worker", "image": "reg/idc-worker:0.1.0",
                  "resources": {"limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}}]},
        "status": status
    })
}

fn running() -> Value {
    json!({"containerStatuses": [{"name": "worker", "image": "reg/idc-worker:0.1.0", "imageID": "",
        "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-11-26T10:00:00Z"}}}]})
}

fn terminated(code: i32, reason: &str) -> Value {
    json!({"containerStatuses": [{"name": "worker", "image": "reg/idc-worker:0.1.0", "imageID": "",
        "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "reason": reason}}}]})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items})
}

/// A bucket with one staged dataset, and an experiment on it bound for Kubernetes.
struct Bucket {
    _dir: tempfile::TempDir,
    exp: Experiment,
}

async fn bucket() -> Bucket {
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}/bucket", dir.path().display());
    let ds = format!("{storage}/datasets/real");
    idc::stage::stage(
        &real_sample(),
        &Store::open(&ds).unwrap(),
        &idc::stage::StageOptions {
            split: idc::dataset::split::SplitOptions {
                method: idc::dataset::split::SplitMethod::Random,
                ..Default::default()
            },
            ..Default::default()
        },
        &idc::stage::StageHooks::default(),
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(manifests_dir().join("resnet34.yaml")).unwrap();
    let mut exp = experiment::parse(&text, "resnet34.yaml").unwrap();
    exp.dataset.url = Some(ds);
    exp.storage = storage;
    Bucket { _dir: dir, exp }
}

fn manifests_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

fn opts() -> SubmitOptions {
    SubmitOptions {
        run_id: Some(RUN.into()),
        ..Default::default()
    }
}

fn defaults_cm() -> Value {
    let d = ClusterDefaults {
        image: "registry.example.com/idc-worker:0.1.0".into(),
        controller_image: "registry.example.com/idcctl:0.1.0".into(),
        ..Default::default()
    };
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "idc-defaults", "namespace": NS},
           "data": {"defaults.yaml": serde_yaml::to_string(&d).unwrap()}})
}

async fn submit_script(b: &Bucket, script_after_cm: Vec<Exchange>) -> backend::Submitted {
    let mut script = vec![
        version_ex("32"),
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/configmaps/idc-defaults"),
            200,
            defaults_cm(),
        ),
    ];
    script.extend(script_after_cm);
    let (cluster, task) = mock_cluster(script);
    let sub = Kubernetes::on(cluster.clone())
        .sharing_this_machine()
        .submit(&b.exp, &opts())
        .await
        .unwrap();
    finish(cluster, task).await;
    sub
}

fn create_ex() -> Exchange {
    Exchange {
        check: Some(Box::new(|body: &Value| {
            let job: Job = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(job.metadata.name.as_deref(), Some(RUN));
            assert!(
                kube::names::job_violations(&job).is_empty(),
                "{:?}",
                kube::names::job_violations(&job)
            );
            let c = &body["spec"]["template"]["spec"]["containers"][0];
            // The ConfigMap's image, and credentials only by reference.
            assert_eq!(c["image"], "registry.example.com/idc-worker:0.1.0");
            assert!(
                c["args"][2]
                    .as_str()
                    .unwrap()
                    .ends_with("/runs/resnet34-t1")
            );
            let env = c["env"].as_array().unwrap();
            let secret = env
                .iter()
                .find(|e| e["name"] == "AWS_SECRET_ACCESS_KEY")
                .unwrap();
            assert!(secret.get("value").is_none());
            assert_eq!(secret["valueFrom"]["secretKeyRef"]["name"], "idc-s3");
            assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
            assert_eq!(body["spec"]["backoffLimit"], 3);
            assert_eq!(body["spec"]["activeDeadlineSeconds"], 43200);
        })),
        ..ex(
            "POST",
            format!("/apis/batch/v1/namespaces/{NS}/jobs?"),
            201,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": RUN}}),
        )
    }
}

#[tokio::test]
async fn submit_creates_the_job_and_records_the_run() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    assert!(sub.created);
    assert_eq!(sub.run_id, RUN);
    let s = run::read_status(&sub.run).await.unwrap().unwrap();
    assert_eq!(s.phase, Phase::Pending);
    assert_eq!(s.cluster.as_ref().unwrap().namespace, NS);
    assert_eq!(s.max_attempts, 4);
    assert!(sub.run.get_opt(keys::SPEC).await.unwrap().is_some());
    assert!(sub.run.get_opt(keys::EXPERIMENT).await.unwrap().is_some());
    // Indexed for `list`, newest first.
    let index = Store::open(&b.exp.storage)
        .unwrap()
        .list(idc::layout::RUN_INDEX)
        .await
        .unwrap();
    assert_eq!(index.len(), 1, "{index:?}");
    assert_eq!(
        idc::layout::parse_run_index_key(&index[0].0).map(|k| k.1),
        Some(RUN)
    );
}

/// `list` with two runs on two clusters, the newer on a context that cannot be loaded: the
/// other is still brought up to date (it used to show pending after it had succeeded), and
/// the failing context is named once.
#[tokio::test]
async fn a_run_whose_context_cannot_be_loaded_holds_up_no_other_run() {
    use idc::backend::Target;
    use idc::listing::{self, Clusters, ListOptions};
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    let root = Store::open(&b.exp.storage).unwrap();
    let mut elsewhere = run::read_status(&sub.run).await.unwrap().unwrap();
    elsewhere.run_id = "elsewhere-1".into();
    elsewhere.created_at = "2099-01-01T00:00:00Z".into();
    elsewhere.cluster.as_mut().unwrap().context = Some("idc-test-no-such-context".into());
    run::write_status(&run::run_store(&root, "elsewhere-1"), &elsewhere)
        .await
        .unwrap();
    let done = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Succeeded",
        terminated(0, "Completed"),
    );
    let complete = json!([{"type": "Complete", "status": "True"}]);
    let (cluster, task) = mock_cluster(vec![
        ex("GET", job_path(RUN), 200, job_json(complete, "x")),
        ex("GET", pods_list_uri(), 200, list("PodList", vec![done])),
    ]);
    let clusters = Clusters::new(Target::default());
    let here = Target {
        context: None,
        namespace: Some(NS.into()),
    };
    clusters.insert(&here, cluster.clone());
    let l = listing::list(&root, &ListOptions::default(), &clusters)
        .await
        .unwrap();
    drop(clusters);
    finish(cluster, task).await;
    let rows: Vec<_> = l
        .rows
        .iter()
        .map(|r| (r.run_id.as_str(), r.phase))
        .collect();
    assert_eq!(
        rows,
        [("elsewhere-1", Phase::Pending), (RUN, Phase::Succeeded)]
    );
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains("context idc-test-no-such-context, namespace ml"),
        "{}",
        l.warnings[0]
    );
    // The end was recorded, with its summary: the next `list` reads no metrics for it.
    let s = run::read_status(&sub.run).await.unwrap().unwrap();
    assert_eq!(s.phase, Phase::Succeeded);
    assert!(s.summary_of_end().is_some(), "{s:?}");
}

#[tokio::test]
async fn resubmitting_the_same_run_creates_nothing() {
    let b = bucket().await;
    let first = submit_script(&b, vec![create_ex()]).await;
    let spec = first.run.get(keys::SPEC).await.unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&spec))
    };
    // The API server says the Job exists; it carries this spec's hash: nothing to do.
    let again = submit_script(
        &b,
        vec![
            ex(
                "POST",
                format!("/apis/batch/v1/namespaces/{NS}/jobs?"),
                409,
                status_err(
                    409,
                    "AlreadyExists",
                    "jobs.batch \"resnet34-t1\" already exists",
                ),
            ),
            ex("GET", job_path(RUN), 200, job_json(json!([]), &sha)),
        ],
    )
    .await;
    assert!(!again.created);
    // A different run under the same name is refused.
    let mut script = vec![
        version_ex("32"),
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/configmaps/idc-defaults"),
            404,
            status_err(404, "NotFound", "configmaps \"idc-defaults\" not found"),
        ),
    ];
    script.push(ex(
        "POST",
        format!("/apis/batch/v1/namespaces/{NS}/jobs?"),
        409,
        status_err(409, "AlreadyExists", "exists"),
    ));
    script.push(ex("GET", job_path(RUN), 200, job_json(json!([]), "0000")));
    let (cluster, task) = mock_cluster(script);
    let err = Kubernetes::on(cluster.clone())
        .sharing_this_machine()
        .submit(&b.exp, &opts())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("a different run named resnet34-t1"),
        "{err}"
    );
    assert_eq!(err.process_exit_code(), idc::exit::ExitCode::UserError);
    finish(cluster, task).await;
}

/// Refreshes a submitted run's record against the scripted cluster state.
async fn observed(job_conditions: Value, pods: Vec<Value>, events: Option<Value>) -> RunStatus {
    observed_job(
        job_json(job_conditions, "x"),
        pods,
        events.map(events_ex).into_iter().collect(),
    )
    .await
}

fn events_ex(events: Value) -> Exchange {
    ex(
        "GET",
        format!(
            "/api/v1/namespaces/{NS}/events?&fieldSelector=involvedObject.kind%3DJob%2CinvolvedObject.name%3D{RUN}"
        ),
        200,
        events,
    )
}

/// [`observed`] with the whole Job, and the requests after the pods' listing.
async fn observed_job(job: Value, pods: Vec<Value>, after_pods: Vec<Exchange>) -> RunStatus {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    let mut script = vec![
        ex("GET", job_path(RUN), 200, job),
        ex("GET", pods_list_uri(), 200, list("PodList", pods)),
    ];
    script.extend(after_pods);
    let (cluster, task) = mock_cluster(script);
    let s = run::read_status(&sub.run).await.unwrap().unwrap();
    let s = Kubernetes::on(cluster.clone())
        .refresh(&sub.run, s)
        .await
        .unwrap();
    finish(cluster, task).await;
    // The record in the bucket is what `list` shows later.
    assert_eq!(run::read_status(&sub.run).await.unwrap().unwrap(), s);
    s
}

fn reason(s: &RunStatus) -> &str {
    s.reason.as_deref().unwrap_or("")
}

#[tokio::test]
async fn status_pending_unschedulable_names_the_missing_gpu() {
    let p = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Pending",
        json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."}]}),
    );
    let s = observed(json!([]), vec![p], None).await;
    assert_eq!(s.phase, Phase::Pending);
    assert!(reason(&s).contains("waiting for a GPU"), "{}", reason(&s));
    assert!(reason(&s).contains("3 Insufficient nvidia.com/gpu"));

    let taint = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Pending",
        json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/2 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}."}]}),
    );
    let s = observed(json!([]), vec![taint], None).await;
    assert!(
        reason(&s).contains("resources.tolerations"),
        "{}",
        reason(&s)
    );

    let pull = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Pending",
        json!({"conditions": [{"type": "PodScheduled", "status": "True"}],
               "containerStatuses": [{"name": "worker", "image": "reg/idc-worker:0.1.0", "imageID": "",
                 "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"reg/idc-worker:0.1.0\""}}}]}),
    );
    let s = observed(json!([]), vec![pull], None).await;
    assert!(
        reason(&s).contains("cannot pull image reg/idc-worker:0.1.0"),
        "{}",
        reason(&s)
    );
}

#[tokio::test]
async fn status_without_pods_reads_the_jobs_events() {
    let events = list(
        "EventList",
        vec![
            json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "Job", "name": RUN},
            "type": "Warning", "reason": "FailedCreate", "lastTimestamp": "2026-11-26T10:00:00Z",
            "message": "Error creating: pods \"resnet34-t1-x\" is forbidden: error looking up service account ml/idc: serviceaccount \"idc\" not found"}),
        ],
    );
    let s = observed(json!([]), vec![], Some(events)).await;
    assert_eq!(s.phase, Phase::Pending);
    assert!(
        reason(&s).contains("serviceaccount \"idc\" not found"),
        "{}",
        reason(&s)
    );
}

#[tokio::test]
async fn status_running_succeeded_failed_and_deadline() {
    let p = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Running",
        running(),
    );
    let s = observed(json!([]), vec![p], None).await;
    assert_eq!(s.phase, Phase::Running);
    assert_eq!(reason(&s), "attempt 1 of 4 running on node gpu-node-1");
    assert!(s.started_at.is_some() && s.finished_at.is_none());

    let done = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Succeeded",
        terminated(0, "Completed"),
    );
    let s = observed(
        json!([{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]),
        vec![done],
        None,
    )
    .await;
    assert_eq!(s.phase, Phase::Succeeded);
    assert_eq!(s.exit_codes, vec![0]);
    assert!(s.finished_at.is_some());

    let oom = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Failed",
        terminated(137, "OOMKilled"),
    );
    let s = observed(
        json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit"}]),
        vec![oom],
        None,
    )
    .await;
    assert_eq!(s.phase, Phase::Failed);
    assert!(
        reason(&s).contains("was OOMKilled (memory limit 32Gi)"),
        "{}",
        reason(&s)
    );

    let bad = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Failed",
        terminated(2, "Error"),
    );
    let s = observed(
        json!([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                "message": "Container worker for pod ml/resnet34-t1-abcde failed with exit code 2 matching FailJob rule at index 0"}]),
        vec![bad],
        None,
    )
    .await;
    assert_eq!(s.phase, Phase::Failed);
    assert!(reason(&s).contains("bad input"), "{}", reason(&s));
    assert_eq!(s.exit_codes, vec![2]);

    let s = observed(
        json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline"}]),
        vec![pod(
            "resnet34-t1-abcde",
            "2026-11-26T10:00:00Z",
            "Failed",
            terminated(143, "Error"),
        )],
        None,
    )
    .await;
    assert_eq!(s.phase, Phase::Failed);
    assert!(
        reason(&s).starts_with("deadline exceeded") && reason(&s).contains("43200"),
        "{}",
        reason(&s)
    );
}

#[tokio::test]
async fn status_preempted_then_retried() {
    let preempted = pod(
        "resnet34-t1-aaaaa",
        "2026-11-26T10:00:00Z",
        "Failed",
        json!({"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": "ml/high-priority: preempting to accommodate a higher priority pod"}],
               "containerStatuses": [{"name": "worker", "image": "reg/idc-worker:0.1.0", "imageID": "",
                 "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}),
    );
    let retry = pod(
        "resnet34-t1-bbbbb",
        "2026-11-26T10:05:00Z",
        "Running",
        running(),
    );
    // Listed newest first: attempts follow creation time, not list order.
    let s = observed(json!([]), vec![retry, preempted], None).await;
    assert_eq!(s.phase, Phase::Running);
    assert_eq!(s.attempts, 2);
    assert_eq!(s.exit_codes, vec![3]);
    assert!(
        reason(&s).starts_with("attempt 1 was preempted (PreemptionByScheduler")
            && reason(&s).contains("; attempt 2 of 4 running"),
        "{}",
        reason(&s)
    );
}

const JOB_UID: &str = "6c1f3b9e-2a4d-4e8f-9b7a-0d5e6f7a8b9c";
const QUEUE: &str = "gpu-queue";

/// The run's Job as the API server shows it once submitted to Kueue queue `gpu-queue`: with its
/// UID, the queue label, and suspended (Kueue's webhook suspends it until admission) or not.
fn queued_job(suspended: bool) -> Value {
    let mut job = job_json(
        if suspended {
            json!([{"type": "Suspended", "status": "True", "reason": "JobSuspended",
                    "message": "Job suspended"}])
        } else {
            json!([])
        },
        "x",
    );
    job["metadata"]["uid"] = json!(JOB_UID);
    job["metadata"]["labels"] = json!({"idc.dev/run": RUN, "kueue.x-k8s.io/queue-name": QUEUE});
    job["spec"]["suspend"] = json!(suspended);
    job
}

/// The Workload Kueue made for the run's Job, with these status conditions.
fn workload(conditions: Value) -> Value {
    json!({
        "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
        "metadata": {"name": format!("job-{RUN}-3f2a1"), "namespace": NS,
            "creationTimestamp": "2026-11-26T10:00:00Z",
            "labels": {"kueue.x-k8s.io/job-uid": JOB_UID},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": RUN,
                                 "uid": JOB_UID, "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"queueName": QUEUE, "podSets": [{"name": "main", "count": 1, "template": {}}]},
        "status": {"conditions": conditions}
    })
}

/// The request for the Job's Workload (by Kueue's job-uid label), answered with `status`/`body`.
fn workloads_ex(status: u16, body: Value) -> Exchange {
    ex(
        "GET",
        format!(
            "/apis/kueue.x-k8s.io/v1beta1/namespaces/{NS}/workloads?&labelSelector=kueue.x-k8s.io%2Fjob-uid%3D{JOB_UID}"
        ),
        status,
        body,
    )
}

fn workload_list(conditions: Value) -> Exchange {
    workloads_ex(
        200,
        json!({"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "WorkloadList", "metadata": {},
               "items": [workload(conditions)]}),
    )
}

/// A suspended queued Job without pods, whose Workload has these conditions.
async fn waiting_in_kueue(conditions: Value) -> RunStatus {
    observed_job(
        queued_job(true),
        vec![],
        vec![
            events_ex(list("EventList", vec![])),
            workload_list(conditions),
        ],
    )
    .await
}

#[tokio::test]
async fn status_of_a_queued_job_says_why_kueue_has_not_admitted_it() {
    // Kueue's scheduler, as released (reason Pending) and with its granular reasons.
    let s = waiting_in_kueue(json!([{"type": "QuotaReserved", "status": "False", "reason": "Pending",
        "message": "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor h200, request > maximum capacity (2 > 0)",
        "lastTransitionTime": "2026-11-26T10:00:01Z"}]))
    .await;
    assert_eq!(s.phase, Phase::Pending);
    assert_eq!(
        reason(&s),
        "waiting in Kueue queue gpu-queue: Pending: couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor h200, request > maximum capacity (2 > 0); the ClusterQueue can never give that much: lower resources.gpus (or cpu, memory) or pick another resources.queue"
    );
    let s = waiting_in_kueue(json!([{"type": "QuotaReserved", "status": "False", "reason": "WaitingForQuota",
        "message": "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor h200, 1 more needed"}]))
    .await;
    assert_eq!(
        reason(&s),
        "waiting in Kueue queue gpu-queue: WaitingForQuota: couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor h200, 1 more needed; it is admitted once running workloads free that quota"
    );

    // Kueue's workload controller: the LocalQueue is missing, the ClusterQueue inactive.
    let s = waiting_in_kueue(
        json!([{"type": "QuotaReserved", "status": "False", "reason": "Inadmissible",
        "message": "LocalQueue gpu-queue doesn't exist"}]),
    )
    .await;
    assert_eq!(
        reason(&s),
        "waiting in Kueue queue gpu-queue: Inadmissible: LocalQueue gpu-queue doesn't exist; set resources.queue to one of the namespace's LocalQueues (kubectl get localqueues -n ml)"
    );
    let s = waiting_in_kueue(
        json!([{"type": "QuotaReserved", "status": "False", "reason": "Inadmissible",
        "message": "ClusterQueue cq-h200 is inactive"}]),
    )
    .await;
    assert_eq!(
        reason(&s),
        "waiting in Kueue queue gpu-queue: Inadmissible: ClusterQueue cq-h200 is inactive; Kueue admits nothing through it until a cluster administrator fixes it (kubectl describe clusterqueue cq-h200 says why)"
    );

    // Preempted by a higher-priority workload: the Job is suspended again, its pod gone.
    let preempted = "Preempted to accommodate a workload (UID: 5f1c, JobUID: 9e2d) due to prioritization in the ClusterQueue; preemptor path: /cq-h200; preemptee path: /cq-h200";
    let s = waiting_in_kueue(json!([
        {"type": "Evicted", "status": "True", "reason": "Preempted", "message": preempted},
        {"type": "Preempted", "status": "True", "reason": "InClusterQueue", "message": preempted},
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": preempted},
        {"type": "Admitted", "status": "False", "reason": "NoReservation", "message": "The workload has no reservation"}]))
    .await;
    assert_eq!(s.phase, Phase::Pending);
    assert_eq!(
        reason(&s),
        format!(
            "preempted by Kueue ({preempted}); waiting in Kueue queue gpu-queue to be admitted again; the run then resumes from its checkpoint"
        )
    );
}

#[tokio::test]
async fn status_of_an_admitted_job_gives_the_usual_reasons() {
    let admitted = json!([
        {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "Quota reserved in ClusterQueue cq-h200"},
        {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted"}]);
    // Resumed, before the Job controller made the pod: the Workload adds nothing.
    let s = observed_job(
        queued_job(false),
        vec![],
        vec![
            events_ex(list("EventList", vec![])),
            workload_list(admitted),
        ],
    )
    .await;
    assert_eq!(s.phase, Phase::Pending);
    assert_eq!(
        reason(&s),
        "waiting for the Job controller to create the pod"
    );
    // With a pod, the pod says why (and the Workload is not read).
    let p = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Pending",
        json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}),
    );
    let s = observed_job(queued_job(false), vec![p], vec![]).await;
    assert!(
        reason(&s).starts_with("attempt 1 is waiting for a GPU"),
        "{}",
        reason(&s)
    );
}

#[tokio::test]
async fn status_of_a_queued_job_without_kueue_or_its_rbac_still_says_something() {
    // No Kueue: the API server has no such path and answers in plain text.
    let not_installed = || Exchange {
        text: Some("404 page not found\n".into()),
        ..workloads_ex(404, Value::Null)
    };
    let s = observed_job(
        queued_job(true),
        vec![],
        vec![events_ex(list("EventList", vec![])), not_installed()],
    )
    .await;
    assert_eq!(s.phase, Phase::Pending);
    assert_eq!(
        reason(&s),
        "the Job is suspended for Kueue queue gpu-queue, but the cluster serves no Kueue Workloads (kueue.x-k8s.io/v1beta1), so nothing will admit it; install Kueue, or resubmit with resources.queue: \"\""
    );
    // Without Kueue nothing suspends the Job, and the Job controller goes ahead as usual.
    let s = observed_job(
        queued_job(false),
        vec![],
        vec![events_ex(list("EventList", vec![])), not_installed()],
    )
    .await;
    assert_eq!(
        reason(&s),
        "waiting for the Job controller to create the pod"
    );

    // The chart installed without kueue.enabled: listing Workloads is forbidden.
    let s = observed_job(
        queued_job(true),
        vec![],
        vec![
            events_ex(list("EventList", vec![])),
            workloads_ex(
                403,
                status_err(
                    403,
                    "Forbidden",
                    "workloads.kueue.x-k8s.io is forbidden: User \"system:serviceaccount:ml:idc\" cannot list resource \"workloads\" in API group \"kueue.x-k8s.io\" in the namespace \"ml\"",
                ),
            ),
        ],
    )
    .await;
    assert_eq!(s.phase, Phase::Pending);
    assert_eq!(
        reason(&s),
        "waiting in Kueue queue gpu-queue; why is unknown: reading its Workload was refused (workloads.kueue.x-k8s.io is forbidden: User \"system:serviceaccount:ml:idc\" cannot list resource \"workloads\" in API group \"kueue.x-k8s.io\" in the namespace \"ml\"); install charts/idc with --set kueue.enabled=true to let idcctl read it"
    );

    // Kueue has not caught up with the Job yet.
    let s = observed_job(
        queued_job(true),
        vec![],
        vec![
            events_ex(list("EventList", vec![])),
            workloads_ex(
                200,
                json!({"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "WorkloadList", "metadata": {}, "items": []}),
            ),
        ],
    )
    .await;
    assert_eq!(
        reason(&s),
        "waiting in Kueue queue gpu-queue: Kueue has made no Workload for the Job yet; if this lasts, check that Kueue runs and manages namespace ml"
    );
}

fn log_uri(pod: &str, follow: bool) -> String {
    format!(
        "/api/v1/namespaces/{NS}/pods/{pod}/log?&container=worker{}&timestamps=true",
        if follow { "&follow=true" } else { "" }
    )
}

#[tokio::test]
async fn logs_follow_two_attempts_then_read_the_bucket() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    let script = two_attempts_logs_script();
    let (cluster, task) = mock_cluster(script);
    let lines = followed(cluster, task, &sub.run, 0).await;
    let got: Vec<(u32, &str)> = lines.iter().map(|(a, t)| (*a, t.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (1, "epoch 1 started"),
            (1, "SIGTERM: checkpoint written"),
            (2, "resumed from epoch 1"),
            (2, "done")
        ]
    );
    a_deleted_pods_log_comes_from_the_bucket(&sub.run).await;
    logs_outlive_the_job_in_the_bucket(&sub.run).await;
}

/// `logs -f` over a Job's two attempts: the first pod fails, the second resumes and succeeds.
fn two_attempts_logs_script() -> Vec<Exchange> {
    let p1 = "resnet34-t1-aaaaa";
    let p2 = "resnet34-t1-bbbbb";
    let pod1 = pod(p1, "2026-11-26T10:00:00Z", "Failed", terminated(3, "Error"));
    let pod2_running = pod(p2, "2026-11-26T10:05:00Z", "Running", running());
    let pod2_done = pod(
        p2,
        "2026-11-26T10:05:00Z",
        "Succeeded",
        terminated(0, "Completed"),
    );
    let active = job_json(json!([]), "x");
    let complete = job_json(json!([{"type": "Complete", "status": "True"}]), "x");
    vec![
        ex("GET", job_path(RUN), 200, active.clone()),
        ex(
            "GET",
            pods_list_uri(),
            200,
            list("PodList", vec![pod1.clone(), pod2_running.clone()]),
        ),
        log_ex(
            log_uri(p1, true),
            &["epoch 1 started", "SIGTERM: checkpoint written"],
        ),
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/pods/{p1}"),
            200,
            pod1.clone(),
        ),
        ex("GET", job_path(RUN), 200, active),
        ex(
            "GET",
            pods_list_uri(),
            200,
            list("PodList", vec![pod1.clone(), pod2_running]),
        ),
        log_ex(log_uri(p2, true), &["resumed from epoch 1", "done"]),
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/pods/{p2}"),
            200,
            pod2_done.clone(),
        ),
        ex("GET", job_path(RUN), 200, complete),
        ex(
            "GET",
            pods_list_uri(),
            200,
            list("PodList", vec![pod1, pod2_done]),
        ),
    ]
}

/// A pod deleted between the listing and the log request: its log comes from the bucket.
async fn a_deleted_pods_log_comes_from_the_bucket(run: &Store) {
    let p1 = "resnet34-t1-aaaaa";
    run.put(&keys::log(1), bytes::Bytes::from("from the bucket\n"))
        .await
        .unwrap();
    let gone = pod(p1, "2026-11-26T10:00:00Z", "Running", running());
    let complete = job_json(json!([{"type": "Complete", "status": "True"}]), "x");
    let (cluster, task) = mock_cluster(vec![
        ex("GET", job_path(RUN), 200, complete.clone()),
        ex(
            "GET",
            pods_list_uri(),
            200,
            list("PodList", vec![gone.clone()]),
        ),
        ex(
            "GET",
            log_uri(p1, true),
            404,
            status_err(404, "NotFound", "pods \"resnet34-t1-aaaaa\" not found"),
        ),
        ex("GET", job_path(RUN), 200, complete),
        ex("GET", pods_list_uri(), 200, list("PodList", vec![gone])),
    ]);
    let lines = followed(cluster, task, run, 0).await;
    assert_eq!(lines, vec![(1, "from the bucket".to_string())]);
}

/// Later the Job and its pods are gone: the worker's own copies in the bucket remain.
async fn logs_outlive_the_job_in_the_bucket(run: &Store) {
    run.put(&keys::log(1), bytes::Bytes::from("a1\na2\n"))
        .await
        .unwrap();
    run.put(&keys::log(2), bytes::Bytes::from("b1\n"))
        .await
        .unwrap();
    let (cluster, task) = mock_cluster(vec![
        ex(
            "GET",
            job_path(RUN),
            404,
            status_err(404, "NotFound", "not found"),
        ),
        ex("GET", pods_list_uri(), 200, list("PodList", vec![])),
    ]);
    let lines = followed(cluster, task, run, 0).await;
    let got: Vec<(u32, &str)> = lines.iter().map(|(a, t)| (*a, t.as_str())).collect();
    assert_eq!(got, vec![(1, "a1"), (1, "a2"), (2, "b1")]);
}

#[tokio::test]
async fn cancel_deletes_the_job_in_the_background() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    let running_pod = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Running",
        running(),
    );
    let (cluster, task) = mock_cluster(vec![
        // Read first: a run that has already ended is not cancelled.
        ex("GET", job_path(RUN), 200, job_json(json!([]), "x")),
        ex(
            "GET",
            pods_list_uri(),
            200,
            list("PodList", vec![running_pod]),
        ),
        Exchange {
            check: Some(Box::new(|body: &Value| {
                assert_eq!(body["propagationPolicy"], "Background", "{body}");
            })),
            ..ex(
                "DELETE",
                format!("{}?", job_path(RUN)),
                200,
                job_json(json!([]), "x"),
            )
        },
    ]);
    let s = run::read_status(&sub.run).await.unwrap().unwrap();
    let out = Kubernetes::on(cluster.clone())
        .cancel(&sub.run, s)
        .await
        .unwrap();
    assert_eq!(out, backend::CancelOutcome::Requested { signalled: true });
    finish(cluster, task).await;
    let s = run::read_status(&sub.run).await.unwrap().unwrap();
    assert_eq!(s.phase, Phase::Cancelled);
    assert!(s.finished_at.is_some());
    assert!(sub.run.get_opt(keys::CANCEL).await.unwrap().is_some());
}

#[tokio::test]
async fn resume_replaces_the_job_and_keeps_earlier_attempts() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    let mut s = run::read_status(&sub.run).await.unwrap().unwrap();
    s.phase = Phase::Cancelled;
    s.attempts = 2;
    s.exit_codes = vec![3, 3];
    run::write_status(&sub.run, &s).await.unwrap();
    let (cluster, task) = mock_cluster(vec![
        ex(
            "DELETE",
            format!("{}?", job_path(RUN)),
            404,
            status_err(404, "NotFound", "not found"),
        ),
        // No pod of the earlier Job is left.
        ex("GET", pods_list_uri(), 200, list("PodList", vec![])),
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/configmaps/idc-defaults"),
            200,
            defaults_cm(),
        ),
        create_ex(),
    ]);
    backend::resume_on(&Kubernetes::on(cluster.clone()), &sub.run, s)
        .await
        .unwrap();
    finish(cluster, task).await;
    let s = run::read_status(&sub.run).await.unwrap().unwrap();
    let c = s.cluster.clone().unwrap();
    assert_eq!((c.earlier_attempts, c.earlier_exit_codes), (2, vec![3, 3]));
    assert_eq!(s.max_attempts, 2 + 4);

    // The new Job's first pod is attempt 3; attempts 1 and 2 come from the bucket.
    sub.run
        .put(&keys::log(1), bytes::Bytes::from("one\n"))
        .await
        .unwrap();
    sub.run
        .put(&keys::log(2), bytes::Bytes::from("two\n"))
        .await
        .unwrap();
    let p = "resnet34-t1-ccccc";
    let done = pod(
        p,
        "2026-11-26T11:00:00Z",
        "Succeeded",
        terminated(0, "Completed"),
    );
    let complete = job_json(json!([{"type": "Complete", "status": "True"}]), "x");
    let (cluster, task) = mock_cluster(vec![
        ex("GET", job_path(RUN), 200, complete.clone()),
        ex(
            "GET",
            pods_list_uri(),
            200,
            list("PodList", vec![done.clone()]),
        ),
        log_ex(log_uri(p, true), &["three"]),
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/pods/{p}"),
            200,
            done.clone(),
        ),
        ex("GET", job_path(RUN), 200, complete),
        ex("GET", pods_list_uri(), 200, list("PodList", vec![done])),
    ]);
    let lines = followed(cluster, task, &sub.run, 2).await;
    assert_eq!(
        lines,
        vec![(1, "one".into()), (2, "two".into()), (3, "three".into())]
    );
}

#[test]
fn rbac_mapping_is_strict() {
    // The checker itself must refuse what the rules do not grant.
    assert_eq!(
        rbac_of("GET", "/api/v1/namespaces/ml/pods/p/log?&follow=true"),
        ("".into(), "pods/log".into(), "get".into())
    );
    assert_eq!(
        rbac_of("POST", "/apis/batch/v1/namespaces/ml/jobs?"),
        ("batch".into(), "jobs".into(), "create".into())
    );
    let denied =
        std::panic::catch_unwind(|| assert_rbac_allows("DELETE", "/api/v1/namespaces/ml/pods/p"));
    assert!(denied.is_err(), "deleting pods is not granted");
}

/// The Job `submit --dry-run` prints for each manifest, pinned; `IDC_UPDATE_GOLDEN=1` rewrites.
#[test]
fn dry_run_jobs_match_golden_files_and_pass_validation() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/jobs");
    let mut seen = 0;
    for entry in std::fs::read_dir(manifests_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue; // manifests/README.md documents them
        }
        let manifest = std::fs::read_to_string(&path).unwrap();
        if !manifest.contains("kind: Experiment") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let run_id = format!("{name}-20261126-120000-0001");
        let mut args = vec![
            "submit",
            path.to_str().unwrap(),
            "--dry-run",
            "--backend",
            "kubernetes",
            "--storage",
            "s3://idc",
            "--run-id",
            &run_id,
        ];
        if manifest.contains("url: file://") {
            // A laptop dataset: the cluster would train on a copy staged to the bucket.
            args.extend(["--dataset", "s3://idc/datasets/quickstart"]);
        }
        let out = idcctl(&args);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let yaml = String::from_utf8(out.stdout).unwrap();
        let job: Job = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(
            kube::names::job_violations(&job),
            Vec::<String>::new(),
            "{name}"
        );
        let file = golden.join(format!("{name}.yaml"));
        if std::env::var("IDC_UPDATE_GOLDEN").as_deref() == Ok("1") {
            std::fs::write(&file, &yaml).unwrap();
        }
        let want = std::fs::read_to_string(&file).unwrap_or_else(|_| {
            panic!(
                "{} is missing: run IDC_UPDATE_GOLDEN=1 cargo test --test it kube::",
                file.display()
            )
        });
        assert_eq!(
            yaml,
            want,
            "{name}: the Job differs from {}",
            file.display()
        );
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} manifests rendered");
}

/// A queued Job, pinned in `tests/golden/jobs/queued-resnet34.yaml` (`IDC_UPDATE_GOLDEN=1`
/// rewrites): the unqueued Job plus Kueue's two labels, on the Job and not on its pods.
#[test]
fn a_queued_dry_run_job_differs_only_by_kueues_labels_on_the_job() {
    use idc::backend::kube::kueue::{PRIORITY_LABEL, QUEUE_LABEL};
    let manifest = std::fs::read_to_string(manifests_dir().join("resnet34.yaml")).unwrap();
    let queued = manifest.replacen(
        "resources:\n",
        "resources:\n  queue: gpu-queue\n  workload_priority: research-high\n",
        1,
    );
    assert_ne!(queued, manifest);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet34.yaml");
    std::fs::write(&path, &queued).unwrap();
    let out = idcctl(&[
        "submit",
        path.to_str().unwrap(),
        "--dry-run",
        "--backend",
        "kubernetes",
        "--storage",
        "s3://idc",
        "--run-id",
        "resnet34-20261126-120000-0001",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let job: Job = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(kube::names::job_violations(&job), Vec::<String>::new());
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/jobs");
    let file = golden.join("queued-resnet34.yaml");
    if std::env::var("IDC_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&file, &yaml).unwrap();
    }
    let want = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run IDC_UPDATE_GOLDEN=1 cargo test --test it kube::",
            file.display()
        )
    });
    assert_eq!(yaml, want, "the Job differs from {}", file.display());

    let mut labels = job.metadata.labels.clone().unwrap();
    assert_eq!(labels.remove(QUEUE_LABEL).as_deref(), Some("gpu-queue"));
    assert_eq!(
        labels.remove(PRIORITY_LABEL).as_deref(),
        Some("research-high")
    );
    let pod_labels = job
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert!(
        !pod_labels.keys().any(|k| k.starts_with("kueue.x-k8s.io/")),
        "{pod_labels:?}"
    );
    let plain: Job =
        serde_yaml::from_str(&std::fs::read_to_string(golden.join("resnet34.yaml")).unwrap())
            .unwrap();
    let mut unqueued = job.clone();
    unqueued.metadata.labels = Some(labels);
    assert_eq!(unqueued, plain, "only Kueue's labels differ");
}

#[test]
fn the_namespace_default_queue_applies_unless_the_manifest_names_its_own_or_none() {
    use idc::backend::kube::kueue::QUEUE_LABEL;
    let text = std::fs::read_to_string(manifests_dir().join("resnet34.yaml")).unwrap();
    let mut exp = experiment::parse(&text, "resnet34.yaml").unwrap();
    let defaults = ClusterDefaults {
        queue: Some("team-queue".into()),
        ..Default::default()
    };
    let queue_of = |exp: &Experiment, defaults: &ClusterDefaults| {
        let job = backend::render_job(exp, &opts(), defaults).unwrap();
        job.metadata.labels.unwrap().get(QUEUE_LABEL).cloned()
    };
    assert_eq!(queue_of(&exp, &ClusterDefaults::default()), None);
    assert_eq!(queue_of(&exp, &defaults).as_deref(), Some("team-queue"));
    exp.resources.queue = Some("mine".into());
    assert_eq!(queue_of(&exp, &defaults).as_deref(), Some("mine"));
    exp.resources.queue = Some(String::new());
    assert_eq!(queue_of(&exp, &defaults), None);
}

#[test]
fn dry_run_refuses_a_bucket_pods_cannot_reach() {
    let out = idcctl(&[
        "submit",
        manifests_dir().join("cnn.yaml").to_str().unwrap(),
        "--dry-run",
        "--backend",
        "kubernetes",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("needs an s3:// bucket its pods can reach"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_unreachable_cluster_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: lab\nclusters:\n- name: lab\n  cluster: {server: 'https://127.0.0.1:9'}\ncontexts:\n- name: lab\n  context: {cluster: lab, user: me, namespace: ml}\nusers:\n- name: me\n  user: {token: t0ken}\n",
    )
    .unwrap();
    // As a user runs it: no RUST_LOG.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idcctl"))
        .args([
            "submit",
            manifests_dir().join("resnet34.yaml").to_str().unwrap(),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot reach the Kubernetes API server https://127.0.0.1:9/")
            && err.contains("(context lab)"),
        "{err}"
    );
    assert!(!err.contains("t0ken"));
    // The cause once, and no log line of kube-rs's own about it.
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(err.matches("client error (Connect)").count(), 1, "{err}");
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    assert!(!err.contains("ServiceError"), "{err}");
    assert!(!err.contains("ERROR"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_run_id_that_is_no_kubernetes_name_is_refused() {
    for bad in ["Bad_Name", "x-", "9lives", &"a".repeat(64)] {
        let out = idcctl(&[
            "submit",
            manifests_dir().join("resnet34.yaml").to_str().unwrap(),
            "--dry-run",
            "--run-id",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            text(&out.stderr).contains(&format!("run id '{bad}' must be at most 63")),
            "{}",
            text(&out.stderr)
        );
    }
}

// What a real API server (Kubernetes 1.32) did, replayed: issue 21's defects 7, 8, 11, 12, 13.

/// The API server's answer to a user whose RBAC does not let them create Jobs.
fn forbidden_create() -> Exchange {
    ex(
        "POST",
        format!("/apis/batch/v1/namespaces/{NS}/jobs?"),
        403,
        status_err(
            403,
            "Forbidden",
            "jobs.batch is forbidden: User \"system:serviceaccount:ml:bob\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"ml\"",
        ),
    )
}

#[tokio::test]
async fn a_submit_refused_at_job_creation_ends_failed_and_can_be_submitted_again() {
    let b = bucket().await;
    let (cluster, task) = mock_cluster(vec![version_ex("32"), cm_ex(), forbidden_create()]);
    let e = Kubernetes::on(cluster.clone())
        .sharing_this_machine()
        .submit(&b.exp, &opts())
        .await
        .unwrap_err();
    finish(cluster, task).await;
    assert!(
        e.to_string()
            .contains("refused to create jobs/resnet34-t1 in namespace ml"),
        "{e}"
    );
    let run = run::run_store(&Store::open(&b.exp.storage).unwrap(), RUN);
    let refused = run::read_status(&run).await.unwrap().unwrap();
    // Not pending for ever: failed, with the server's reason and what to do.
    assert_eq!(refused.phase, Phase::Failed, "{refused:?}");
    let why = reason(&refused);
    assert!(why.contains("cannot create resource \"jobs\""), "{why}");
    assert!(
        why.contains("install charts/idc in that namespace"),
        "{why}"
    );
    assert!(
        why.contains("submit it again with --run-id resnet34-t1"),
        "{why}"
    );
    assert!(refused.finished_at.is_some());
    // Nothing the user wrote is lost.
    assert!(run.get_opt(keys::SPEC).await.unwrap().is_some());
    assert!(run.get_opt(keys::EXPERIMENT).await.unwrap().is_some());

    // RBAC fixed: the same run id creates the Job, and the run is pending again.
    let sub = submit_script(&b, vec![create_ex()]).await;
    assert!(sub.created);
    let again = run::read_status(&sub.run).await.unwrap().unwrap();
    assert_eq!(again.phase, Phase::Pending);
    assert_eq!(reason(&again), "the Job was created; waiting for its pod");
    assert_eq!(again.finished_at, None);
    assert_eq!(again.created_at, refused.created_at);
    assert_eq!(again.cluster.as_ref().unwrap().namespace, NS);
}

#[tokio::test]
async fn submit_refuses_a_kubernetes_release_older_than_its_jobs_need() {
    let b = bucket().await;
    let (cluster, task) = mock_cluster(vec![version_ex("28")]);
    let e = Kubernetes::on(cluster.clone())
        .sharing_this_machine()
        .submit(&b.exp, &opts())
        .await
        .unwrap_err();
    finish(cluster, task).await;
    let msg = e.to_string();
    assert!(
        msg.contains("idc needs Kubernetes 1.29 or newer, and this API server is v1.28.5"),
        "{msg}"
    );
    assert!(msg.contains("Job podReplacementPolicy: Failed"), "{msg}");
    assert_eq!(e.process_exit_code(), idc::exit::ExitCode::UserError);
    // Refused before anything was written.
    let run = run::run_store(&Store::open(&b.exp.storage).unwrap(), RUN);
    assert!(run.get_opt(keys::SPEC).await.unwrap().is_none());

    // So is a sweep's driver Job.
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}/bucket", dir.path().display());
    let (sweep, text) = cluster_sweep();
    let (cluster, task) = mock_cluster(vec![version_ex("28")]);
    let e = idc::sweep::in_cluster::submit_on(&sweep, &text, Some(&storage), &cluster, &mut |_| {})
        .await
        .unwrap_err();
    finish(cluster, task).await;
    assert!(e.to_string().contains("needs Kubernetes 1.29"), "{e}");

    // The oldest release supported is accepted.
    let (cluster, task) = mock_cluster(vec![version_ex("29"), cm_ex(), create_ex()]);
    let sub = Kubernetes::on(cluster.clone())
        .sharing_this_machine()
        .submit(&b.exp, &opts())
        .await
        .unwrap();
    finish(cluster, task).await;
    assert!(sub.created);
}

/// `submit` as `idcctl submit` runs it (pods must reach the bucket, so on S3): the version,
/// the namespace's defaults once, the Job.
#[tokio::test]
async fn submit_reads_the_namespace_defaults_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(storage) = backends(dir.path())
        .into_iter()
        .find(|b| b.starts_with("s3://"))
    else {
        return;
    };
    let ds = format!("{storage}/datasets/real");
    idc::stage::stage(
        &real_sample(),
        &Store::open(&ds).unwrap(),
        &idc::stage::StageOptions {
            split: idc::dataset::split::SplitOptions {
                method: idc::dataset::split::SplitMethod::Random,
                ..Default::default()
            },
            ..Default::default()
        },
        &idc::stage::StageHooks::default(),
    )
    .await
    .unwrap();
    let mut b = bucket().await;
    b.exp.dataset.url = Some(ds);
    b.exp.storage = storage;
    let (cluster, task) = mock_cluster(vec![version_ex("32"), cm_ex(), create_ex()]);
    let sub = Kubernetes::on(cluster.clone())
        .submit(&b.exp, &opts())
        .await
        .unwrap();
    finish(cluster, task).await;
    assert!(sub.created);
}

/// The driver's pod as the scheduler left it on a cluster whose only node is tainted.
fn unschedulable_driver_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sweep-cnn-sweep-gpu-x7k2p", "namespace": NS,
                     "creationTimestamp": "2026-11-26T10:00:00Z",
                     "labels": {"idc.dev/run": DRIVER}},
        "spec": {"containers": [{"name": "driver", "image": "reg/idcctl:0.1.0"}]},
        "status": {"phase": "Pending", "qosClass": "Burstable",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."}]}
    })
}

fn driver_pods_uri() -> String {
    format!("/api/v1/namespaces/{NS}/pods?&labelSelector=idc.dev%2Frun%3D{DRIVER}")
}

fn active_driver_job() -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": DRIVER},
           "status": {"active": 1, "ready": 0, "terminating": 0}})
}

#[tokio::test]
async fn sweep_logs_say_why_the_driver_pod_waits() {
    let (cluster, task) = mock_cluster(vec![
        ex("GET", job_path(DRIVER), 200, active_driver_job()),
        ex(
            "GET",
            driver_pods_uri(),
            200,
            list("PodList", vec![unschedulable_driver_pod()]),
        ),
        ex("GET", job_path(DRIVER), 200, active_driver_job()),
        ex(
            "GET",
            driver_pods_uri(),
            200,
            list("PodList", vec![unschedulable_driver_pod()]),
        ),
        // Deleted (sweep cancel) while its pod still goes away.
        ex(
            "GET",
            job_path(DRIVER),
            404,
            status_err(404, "NotFound", "not found"),
        ),
        ex(
            "GET",
            driver_pods_uri(),
            200,
            list("PodList", vec![unschedulable_driver_pod()]),
        ),
    ]);
    let mut notices = vec![];
    idc::sweep::in_cluster::driver_log(&cluster, SWEEP, true, &mut |_| {}, &mut |n| {
        notices.push(n)
    })
    .await
    .unwrap();
    finish(cluster, task).await;
    // Once, for as long as the reason holds.
    assert_eq!(notices.len(), 1, "{notices:?}");
    let n = &notices[0];
    assert!(
        n.starts_with(
            "driver Job sweep-cnn-sweep-gpu: its pod sweep-cnn-sweep-gpu-x7k2p cannot be scheduled: the nodes carry a taint the pod does not tolerate"
        ),
        "{n}"
    );
    assert!(n.contains("untolerated taint {dedicated: gpu}"), "{n}");
    // The driver's remedy, not a worker's (its Job takes no tolerations from the manifest).
    assert!(n.contains("the driver tolerates no taint"), "{n}");
    assert!(!n.contains("resources.tolerations"), "{n}");
}

#[tokio::test]
async fn sweep_status_names_the_driver_job_and_why_its_pod_waits() {
    use idc::sweep::in_cluster::{Driving, driving_job};
    let (cluster, task) = mock_cluster(vec![
        ex("GET", job_path(DRIVER), 200, active_driver_job()),
        ex(
            "GET",
            driver_pods_uri(),
            200,
            list("PodList", vec![unschedulable_driver_pod()]),
        ),
    ]);
    let d = driving_job(&cluster, SWEEP).await;
    finish(cluster, task).await;
    let Driving::Job(job) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(
        (
            job.name.as_str(),
            job.namespace.as_str(),
            job.phase.as_str()
        ),
        (DRIVER, NS, "pending")
    );
    let line = d.line(SWEEP, "2026-11-26T10:00:00Z");
    assert!(
        line.starts_with(
            "driver Job sweep-cnn-sweep-gpu in namespace ml is pending (state as of 2026-11-26T10:00:00Z): its pod sweep-cnn-sweep-gpu-x7k2p cannot be scheduled"
        ),
        "{line}"
    );
    assert!(line.contains("untolerated taint"), "{line}");
    // Not the advice that would start a second driver.
    assert!(!line.contains("not being driven"), "{line}");
    assert!(!line.contains("sweep run <its manifest>"), "{line}");

    // No driver Job: then, and only then, nothing drives it.
    let (cluster, task) = mock_cluster(vec![ex(
        "GET",
        job_path(DRIVER),
        404,
        status_err(404, "NotFound", "not found"),
    )]);
    let d = driving_job(&cluster, SWEEP).await;
    finish(cluster, task).await;
    assert_eq!(d, Driving::Nobody);
    assert!(
        d.line(SWEEP, "t")
            .contains("run `idcctl sweep run <its manifest>` to go on")
    );
}

/// The chart's Role, derived from the requests the backend makes: the scenarios that cover
/// every backend operation (submit and resubmit, status with pods, without and of a queued Job,
/// logs, cancel, resume, a prediction's Job, a sweep driver's Job, its log, status and cancel)
/// ask for exactly `RBAC_RULES` and `KUEUE_RBAC_RULES`: no rule unused, none missing.
#[test]
fn the_role_is_exactly_what_the_backend_requests() {
    REQUESTED.with(|r| r.borrow_mut().clear());
    submit_creates_the_job_and_records_the_run();
    resubmitting_the_same_run_creates_nothing();
    status_pending_unschedulable_names_the_missing_gpu();
    status_without_pods_reads_the_jobs_events();
    status_of_a_queued_job_says_why_kueue_has_not_admitted_it();
    logs_follow_two_attempts_then_read_the_bucket();
    cancel_deletes_the_job_in_the_background();
    resume_replaces_the_job_and_keeps_earlier_attempts();
    a_failed_prediction_job_says_why();
    sweep_run_in_cluster_stores_the_manifest_then_creates_the_driver_job();
    sweep_logs_follow_the_driver_pod_until_its_job_ends();
    sweep_status_names_the_driver_job_and_why_its_pod_waits();
    sweep_cancel_deletes_the_driver_job();
    let requested = REQUESTED.with(|r| r.borrow().clone());
    let granted: BTreeSet<(String, String, String)> = RBAC_RULES
        .iter()
        .chain(KUEUE_RBAC_RULES)
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    let unused: Vec<_> = granted.difference(&requested).collect();
    let missing: Vec<_> = requested.difference(&granted).collect();
    assert!(
        unused.is_empty() && missing.is_empty(),
        "granted but never requested (group, resource, verb): {unused:?}; requested but not granted: {missing:?}"
    );
}

/// A finished run on the (mock) cluster: submitted (bucket checks off), then trained by running
/// the worker with the Job's own arguments, as its pod would (a small CNN for one epoch, so
/// that it takes seconds).
async fn trained_kube_run() -> (Bucket, Store) {
    let mut b = bucket().await;
    b.exp.train.model = idc::spec::ModelSpec::SimpleCnn {
        width: 8,
        dropout: 0.0,
    };
    b.exp.train.epochs = 1;
    b.exp.train.batch_size = 32;
    b.exp.train.device = idc::spec::DeviceSpec::Cpu;
    let sub = submit_script(&b, vec![create_ex()]).await;
    let out = std::process::Command::new(worker_binary())
        .args(["run", "--run", sub.run.url()])
        .env("IDC_ATTEMPT", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let root = Store::open(&b.exp.storage).unwrap();
    (b, root)
}

fn worker_binary() -> std::path::PathBuf {
    require_worker();
    Path::new(env!("CARGO_BIN_EXE_idcctl")).with_file_name("idc-worker")
}

fn predict_opts() -> idc::predict::PredictOptions {
    idc::predict::PredictOptions {
        source: idc::predict::PredictSource::Patches(real_sample()),
        tta: false,
        batch_size: None,
        device: None,
        threshold: None,
        threads: 1,
    }
}

/// What a prediction reported while it ran.
#[derive(Default)]
struct Seen {
    images: Vec<(u64, u64)>,
    notices: Vec<String>,
}

impl idc::predict::Progress for Seen {
    fn images(&mut self, done: u64, total: u64) {
        self.images.push((done, total));
    }
    fn notice(&mut self, line: &str) {
        self.notices.push(line.to_string());
    }
}

fn prediction_pods_uri(job: &str) -> String {
    format!("/api/v1/namespaces/{NS}/pods?&labelSelector=idc.dev%2Frun%3D{job}")
}

#[tokio::test]
async fn predict_runs_as_a_job_shaped_like_the_runs() {
    let (b, root) = trained_kube_run().await;
    let p = idc::predict::prepare(&root, RUN, &predict_opts(), None)
        .await
        .unwrap();
    let name = kube::job::prediction_job_name(RUN, &p.spec.prediction_id);
    assert_eq!(name, format!("{RUN}-p{}", p.spec.prediction_id));
    let want = idc::predict::job_of(
        &p,
        &b.exp,
        &ClusterDefaults {
            image: "registry.example.com/idc-worker:0.1.0".into(),
            ..Default::default()
        },
    );
    let create = create_prediction_job_ex(&name, want, p.job.url().to_string());
    let (cluster, task) = mock_cluster(prediction_job_script(&name, create));
    let mut seen = Seen::default();
    idc::predict::run_with(&Kubernetes::on(cluster.clone()), &p, &mut seen)
        .await
        .unwrap();
    finish(cluster, task).await;
    assert_eq!(seen.images, [(64, 105), (105, 105)]);
    assert!(!seen.notices.is_empty());
    let (result, rows) = idc::predict::read_outcome(&p).await.unwrap();
    assert_eq!(result.images, 105);
    assert_eq!(rows.len(), 105, "every real patch, the edge patch padded");
    assert!(
        rows.iter()
            .all(|r| r.label.is_some() && r.probabilities.len() == 2)
    );
}

/// The request creating the prediction's Job `name`, which must be `want`: shaped like the
/// run's (image, GPU, memory, scheduling, failure handling) with the predict command; its pod,
/// the worker with the Job's arguments, is run here.
fn create_prediction_job_ex(name: &str, want: Job, job_url: String) -> Exchange {
    Exchange {
        check: Some(Box::new(move |body: &Value| {
            let job: Job = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(job, want, "the prediction's Job");
            assert!(kube::names::job_violations(&job).is_empty());
            let pod = &body["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            // The run's image, GPU, memory, scheduling and failure handling; the predict command.
            assert_eq!(c["image"], "registry.example.com/idc-worker:0.1.0");
            assert_eq!(c["args"], json!(["predict", "--job", job_url.clone()]));
            assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
            assert_eq!(c["resources"]["limits"]["memory"], "32Gi");
            assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
            assert_eq!(body["spec"]["backoffLimit"], 3);
            assert_eq!(
                body["spec"]["podFailurePolicy"]["rules"][0]["action"],
                "FailJob"
            );
            assert!(body["spec"].get("activeDeadlineSeconds").is_none());
            let labels = &body["metadata"]["labels"];
            assert_eq!(labels["idc.dev/predicts"], RUN);
            assert_eq!(labels["app.kubernetes.io/component"], "predict");
            // Not the run's pods: `logs` and `status` of the run never see these.
            assert_ne!(labels["idc.dev/run"], RUN);
            // The pod: the worker runs with the Job's arguments.
            let args: Vec<String> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let out = std::process::Command::new(worker_binary())
                .args(&args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
        })),
        ..ex(
            "POST",
            format!("/apis/batch/v1/namespaces/{NS}/jobs?"),
            201,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}}),
        )
    }
}

/// The API server's side of prediction Job `name`: the defaults, `create`, then the Job
/// running (its pod logging progress) and complete.
fn prediction_job_script(name: &str, create: Exchange) -> Vec<Exchange> {
    let pod_name = format!("{name}-x7k2p");
    let mut running_pod = pod(&pod_name, "2026-11-26T10:00:00Z", "Running", running());
    running_pod["metadata"]["labels"]["idc.dev/run"] = json!(name);
    let mut done_pod = pod(
        &pod_name,
        "2026-11-26T10:00:00Z",
        "Succeeded",
        terminated(0, "Completed"),
    );
    done_pod["metadata"]["labels"]["idc.dev/run"] = json!(name);
    let job_with = |conditions: Value| {
        let mut j = job_json(conditions, "");
        j["metadata"]["name"] = json!(name);
        j
    };
    vec![
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/configmaps/idc-defaults"),
            200,
            defaults_cm(),
        ),
        create,
        ex("GET", job_path(name), 200, job_with(json!([]))),
        ex(
            "GET",
            prediction_pods_uri(name),
            200,
            list("PodList", vec![running_pod]),
        ),
        log_ex(
            log_uri(&pod_name, true),
            &[
                "prediction of run resnet34-t1 on Cpu",
                "predicted 64/105 images (640 images/s)",
                "predicted 105/105 images (700 images/s)",
            ],
        ),
        ex(
            "GET",
            job_path(name),
            200,
            job_with(json!([{"type": "Complete", "status": "True"}])),
        ),
        ex(
            "GET",
            prediction_pods_uri(name),
            200,
            list("PodList", vec![done_pod]),
        ),
    ]
}

#[tokio::test]
async fn a_failed_prediction_job_says_why() {
    let (_b, root) = trained_kube_run().await;
    let p = idc::predict::prepare(&root, RUN, &predict_opts(), None)
        .await
        .unwrap();
    let name = kube::job::prediction_job_name(RUN, &p.spec.prediction_id);
    // What the pod's worker left before it failed.
    p.job
        .put(
            idc::layout::run::prediction::LOG,
            bytes::Bytes::from_static(
                b"2026-11-26T10:00:00Z error: --device is cuda but no CUDA device is usable\n",
            ),
        )
        .await
        .unwrap();
    let mut failed_pod = pod(
        &format!("{name}-a1"),
        "2026-11-26T10:00:00Z",
        "Failed",
        terminated(2, "Error"),
    );
    failed_pod["metadata"]["labels"]["idc.dev/run"] = json!(name);
    let mut job = job_json(
        json!([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                "message": "Container worker for pod ml/x failed with exit code 2 matching FailJob rule at index 0"}]),
        "",
    );
    job["metadata"]["name"] = json!(name);
    let (cluster, task) = mock_cluster(vec![
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/configmaps/idc-defaults"),
            200,
            defaults_cm(),
        ),
        ex(
            "POST",
            format!("/apis/batch/v1/namespaces/{NS}/jobs?"),
            201,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}}),
        ),
        ex("GET", job_path(&name), 200, job),
        ex(
            "GET",
            prediction_pods_uri(&name),
            200,
            list("PodList", vec![failed_pod]),
        ),
    ]);
    let e = idc::predict::run_with(&Kubernetes::on(cluster.clone()), &p, &mut Seen::default())
        .await
        .unwrap_err();
    finish(cluster, task).await;
    assert_eq!(e.process_exit_code(), idc::exit::ExitCode::UserError, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("Job {name}")), "{msg}");
    assert!(msg.contains("no CUDA device is usable"), "{msg}");
}

/// Slides on a cluster: one Indexed Job; the pod of one index exits 2 on a bad slide
/// (`FailIndex`) and the Job ends `FailedIndexes`. The good slide's outputs are kept, the bad
/// one ends with the reason its pod wrote, and the local slides went to the bucket first.
#[tokio::test]
async fn an_indexed_slide_job_with_a_failed_index_keeps_the_other_slides() {
    use idc::slide::outputs::{SlideStatus, SlideSummary};
    let (_b, root) = trained_kube_run().await;
    let dir = tempfile::tempdir().unwrap();
    let slides: Vec<String> = ["good.svs", "bad.svs"]
        .iter()
        .map(|n| {
            let p = dir.path().join(n);
            std::fs::write(&p, b"II*\0 stands in for a slide").unwrap();
            p.display().to_string()
        })
        .collect();
    let opts = idc::predict::PredictOptions::of_sources(&slides, None).unwrap();
    let s = idc::predict::slides::SlideOptions::new(slides.clone());
    let p = idc::predict::slides::prepare(&root, RUN, &opts, &s, true)
        .await
        .unwrap();
    assert_eq!(p.job.indexes, 2);
    assert_eq!(p.uploads.len(), 2);
    let name = kube::job::prediction_job_name(RUN, &p.job.predict.prediction_id);
    // What the pods wrote: index 0 its slide's summary, index 1 a failed one before exiting 2.
    let summary = |slide: &str, status, reason: Option<&str>| {
        let mut s = SlideSummary::failed(slide, slide, 4.0, 50, 50, reason.unwrap_or(""));
        s.status = status;
        s.reason = reason.map(str::to_string);
        serde_json::to_vec(&s).unwrap()
    };
    let key = |slide| idc::layout::run::prediction::slide_output(slide, "summary.json");
    p.folder
        .put(
            &key("good"),
            summary("good", SlideStatus::Succeeded, None).into(),
        )
        .await
        .unwrap();
    p.folder
        .put(
            &key("bad"),
            summary(
                "bad",
                SlideStatus::Failed,
                Some("bad.svs: not a slide OpenSlide can open"),
            )
            .into(),
        )
        .await
        .unwrap();
    let mut pods = vec![
        pod(
            &format!("{name}-0-a"),
            "2026-11-26T10:00:00Z",
            "Succeeded",
            terminated(0, "Completed"),
        ),
        pod(
            &format!("{name}-1-a"),
            "2026-11-26T10:00:00Z",
            "Failed",
            terminated(2, "Error"),
        ),
    ];
    for p in &mut pods {
        p["metadata"]["labels"]["idc.dev/run"] = json!(name);
    }
    let mut job = job_json(
        json!([{"type": "Failed", "status": "True", "reason": "FailedIndexes",
                "message": "Job has failed indexes"}]),
        "",
    );
    job["metadata"]["name"] = json!(name);
    job["status"]["failedIndexes"] = json!("1");
    job["status"]["completedIndexes"] = json!("0");
    let create = Exchange {
        check: Some(Box::new(|body: &Value| {
            assert_eq!(body["spec"]["completionMode"], "Indexed", "{body}");
            assert_eq!(body["spec"]["completions"], 2, "{body}");
            assert_eq!(
                body["spec"]["podFailurePolicy"]["rules"][0]["action"],
                "FailIndex"
            );
            let args = &body["spec"]["template"]["spec"]["containers"][0]["args"];
            assert_eq!(args[0], "predict-slides", "{body}");
        })),
        ..ex(
            "POST",
            format!("/apis/batch/v1/namespaces/{NS}/jobs?"),
            201,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}}),
        )
    };
    let (cluster, task) = mock_cluster(vec![
        cm_ex(),
        create,
        ex("GET", job_path(&name), 200, job),
        ex(
            "GET",
            prediction_pods_uri(&name),
            200,
            list("PodList", pods),
        ),
    ]);
    let outcome =
        idc::predict::slides::run_with(&Kubernetes::on(cluster.clone()), &p, &mut Seen::default())
            .await
            .unwrap();
    finish(cluster, task).await;
    let by_name: Vec<(&str, SlideStatus)> = outcome
        .summaries
        .iter()
        .map(|s| (s.slide.as_str(), s.status))
        .collect();
    assert_eq!(
        by_name,
        [
            ("good", SlideStatus::Succeeded),
            ("bad", SlideStatus::Failed)
        ]
    );
    assert!(
        outcome.summaries[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("not a slide")
    );
    assert_eq!(outcome.failed(), 1);
    assert!(outcome.worker_error.is_some());
    // The pods read the slides from the bucket.
    for (key, _) in &p.uploads {
        assert!(
            p.folder.size(key).await.unwrap().is_some(),
            "{key} was not uploaded"
        );
    }
}

/// The Job `predict --dry-run` prints, pinned; `IDC_UPDATE_GOLDEN=1` rewrites.
#[tokio::test]
async fn predict_dry_run_job_matches_its_golden_file() {
    let (b, _root) = trained_kube_run().await;
    let out = idcctl_env(
        &[
            "predict",
            RUN,
            real_sample().to_str().unwrap(),
            "--dry-run",
            // The threshold is the run's otherwise, which a retrained checkpoint may move.
            "--threshold",
            "0.5",
            "--storage",
            &b.exp.storage,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The bucket is a temporary folder here; the golden file names it s3://idc.
    let yaml = text(&out.stdout).replace(&b.exp.storage, "s3://idc");
    let job: Job = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(kube::names::job_violations(&job), Vec::<String>::new());
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/jobs/predict-resnet34.yaml");
    if std::env::var("IDC_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&file, &yaml).unwrap();
    }
    let want = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run IDC_UPDATE_GOLDEN=1 cargo test --test it kube::",
            file.display()
        )
    });
    assert_eq!(yaml, want, "the Job differs from {}", file.display());
}

/// The Indexed Job `predict --dry-run` prints for slides, pinned (`IDC_UPDATE_GOLDEN=1`
/// rewrites): five slides, two a pod, two pods at once.
#[tokio::test]
async fn predict_slides_dry_run_indexed_job_matches_its_golden_file() {
    let (b, _root) = trained_kube_run().await;
    let dir = tempfile::tempdir().unwrap();
    let slides: Vec<String> = (1..=5)
        .map(|i| {
            let p = dir.path().join(format!("slide-{i}.svs"));
            // Not opened by a dry run: any file that is not a zip is taken for a slide.
            std::fs::write(&p, b"II*\0 stands in for a slide").unwrap();
            p.display().to_string()
        })
        .collect();
    let mut args = vec!["predict", RUN];
    args.extend(slides.iter().map(String::as_str));
    args.extend([
        "--dry-run",
        "--threshold",
        "0.5",
        "--slides-per-pod",
        "2",
        "--parallelism",
        "2",
        "--storage",
        &b.exp.storage,
    ]);
    let out = idcctl_env(&args, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job: Job = serde_yaml::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(kube::names::job_violations(&job), Vec::<String>::new());
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(3), Some(2)));
    // The prediction id and spec hash follow the slides' paths and times: pinned as names.
    let labels = job.metadata.labels.as_ref().unwrap();
    let prediction = &labels[kube::job::PREDICTION_LABEL];
    let sha = &job.metadata.annotations.as_ref().unwrap()[kube::job::SPEC_ANNOTATION];
    let yaml = text(&out.stdout)
        .replace(&b.exp.storage, "s3://idc")
        .replace(sha.as_str(), "SPEC-SHA256")
        .replace(prediction.as_str(), "PREDICTION");
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/jobs/predict-slides-resnet34.yaml");
    if std::env::var("IDC_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&file, &yaml).unwrap();
    }
    let want = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run IDC_UPDATE_GOLDEN=1 cargo test --test it kube::",
            file.display()
        )
    });
    assert_eq!(yaml, want, "the Job differs from {}", file.display());
}

const SWEEP: &str = "cnn-sweep-gpu";
const DRIVER: &str = "sweep-cnn-sweep-gpu";

fn cm_ex() -> Exchange {
    ex(
        "GET",
        format!("/api/v1/namespaces/{NS}/configmaps/idc-defaults"),
        200,
        defaults_cm(),
    )
}

fn cluster_sweep() -> (idc::sweep::Sweep, String) {
    idc::sweep::manifest::load(&manifests_dir().join("sweep-cluster.yaml")).unwrap()
}

/// The driver Job as the API server receives it, checked field by field.
fn driver_create_ex(storage: String) -> Exchange {
    Exchange {
        check: Some(Box::new(move |body: &Value| {
            let job: Job = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(job.metadata.name.as_deref(), Some(DRIVER));
            assert_eq!(
                kube::names::job_violations(&job),
                Vec::<String>::new(),
                "{body}"
            );
            let pod = &body["spec"]["template"]["spec"];
            // It creates the trials' Jobs: the chart's service account, with its token.
            assert_eq!(pod["serviceAccountName"], "idc");
            assert_eq!(pod["automountServiceAccountToken"], true);
            assert_eq!(pod["restartPolicy"], "Never");
            assert_eq!(body["spec"]["backoffLimit"], 4);
            let c = &pod["containers"][0];
            assert_eq!(c["name"], "driver");
            assert_eq!(c["image"], "registry.example.com/idcctl:0.1.0");
            assert_eq!(
                c["args"],
                json!([
                    "internal",
                    "drive-sweep",
                    "--sweep",
                    format!("{storage}/sweeps/{SWEEP}")
                ])
            );
            let env = c["env"].as_array().unwrap();
            let names: Vec<&str> = env.iter().map(|e| e["name"].as_str().unwrap()).collect();
            assert_eq!(
                names,
                [
                    "RUST_LOG",
                    "IDC_POD_NAME",
                    "AWS_REGION",
                    "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY"
                ]
            );
            assert_eq!(
                env[1]["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.name"
            );
            for secret in &env[3..] {
                assert!(secret.get("value").is_none(), "{secret}");
                assert_eq!(secret["valueFrom"]["secretKeyRef"]["name"], "idc-s3");
            }
            // No GPU: the driver only waits on the bucket and the API server.
            assert_eq!(c["resources"]["limits"], json!({"memory": "512Mi"}));
            for labels in [
                &body["metadata"]["labels"],
                &body["spec"]["template"]["metadata"]["labels"],
            ] {
                assert_eq!(labels["app.kubernetes.io/component"], "sweep-driver");
                assert_eq!(labels["idc.dev/sweep"], SWEEP);
                // pods_of(DRIVER) finds its pod.
                assert_eq!(labels["idc.dev/run"], DRIVER);
            }
        })),
        ..ex(
            "POST",
            format!("/apis/batch/v1/namespaces/{NS}/jobs?"),
            201,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": DRIVER}}),
        )
    }
}

#[tokio::test]
async fn sweep_run_in_cluster_stores_the_manifest_then_creates_the_driver_job() {
    use idc::sweep::in_cluster;
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}/bucket", dir.path().display());
    let (sweep, text) = cluster_sweep();
    let (cluster, task) = mock_cluster(vec![
        version_ex("32"),
        cm_ex(),
        ex(
            "GET",
            job_path(DRIVER),
            404,
            status_err(404, "NotFound", "not found"),
        ),
        driver_create_ex(storage.clone()),
    ]);
    let d = in_cluster::submit_on(&sweep, &text, Some(&storage), &cluster, &mut |_| {})
        .await
        .unwrap();
    finish(cluster, task).await;
    assert!(d.created);
    assert_eq!((d.name.as_str(), d.namespace.as_str()), (DRIVER, NS));
    let folder = Store::open(&d.sweep_url).unwrap();
    let stored = folder.get(idc::layout::sweep::MANIFEST).await.unwrap();
    assert_eq!(stored.as_ref(), text.as_bytes());

    // Again with the same manifest: the Job is there, nothing is created.
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    };
    let there = |sha: &str| {
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": DRIVER, "annotations": {"idc.dev/spec-sha256": sha}}})
    };
    let (cluster, task) = mock_cluster(vec![
        version_ex("32"),
        cm_ex(),
        ex("GET", job_path(DRIVER), 200, there(&sha)),
    ]);
    let d = in_cluster::submit_on(&sweep, &text, Some(&storage), &cluster, &mut |_| {})
        .await
        .unwrap();
    finish(cluster, task).await;
    assert!(!d.created);

    // A driver Job of another manifest of the sweep is refused.
    let (cluster, task) = mock_cluster(vec![
        version_ex("32"),
        cm_ex(),
        ex("GET", job_path(DRIVER), 200, there("other")),
    ]);
    let e = in_cluster::submit_on(&sweep, &text, Some(&storage), &cluster, &mut |_| {})
        .await
        .unwrap_err();
    finish(cluster, task).await;
    assert!(
        e.to_string()
            .contains("already has a driver Job sweep-cnn-sweep-gpu for another manifest"),
        "{e}"
    );

    // A sweep whose lease a live driver holds elsewhere (here a pod) is refused before any Job.
    let lease = idc::sweep::state::Driver {
        process: idc::process::ProcessRef {
            pid: 1,
            start_ticks: 1,
            host: "sweep-cnn-sweep-gpu-x7k2p".into(),
            boot_id: "b".into(),
        },
        heartbeat: idc::sweep::state::now_s(),
        pod: Some("sweep-cnn-sweep-gpu-x7k2p".into()),
    };
    idc::sweep::state::write_driver(&folder, &lease)
        .await
        .unwrap();
    let (cluster, task) = mock_cluster(vec![
        version_ex("32"),
        cm_ex(),
        ex(
            "GET",
            job_path(DRIVER),
            404,
            status_err(404, "NotFound", "not found"),
        ),
    ]);
    let e = in_cluster::submit_on(&sweep, &text, Some(&storage), &cluster, &mut |_| {})
        .await
        .unwrap_err();
    finish(cluster, task).await;
    assert!(
        e.to_string().contains(
            "sweep cnn-sweep-gpu is being driven by another idcctl (pod sweep-cnn-sweep-gpu-x7k2p"
        ),
        "{e}"
    );
}

#[test]
fn sweep_run_in_cluster_refuses_a_bucket_pods_cannot_reach_and_local_trials() {
    let out = idcctl(&[
        "sweep",
        "run",
        "manifests/sweep-cluster.yaml",
        "--in-cluster",
        "--dry-run",
        "--storage",
        "file:///tmp/bucket",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("needs an s3:// bucket its pod can reach"),
        "{}",
        text(&out.stderr)
    );
    let out = idcctl(&[
        "sweep",
        "run",
        "manifests/sweep.yaml",
        "--in-cluster",
        "--dry-run",
        "--storage",
        "s3://idc",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("runs its trials on the local backend"),
        "{}",
        text(&out.stderr)
    );
}

/// The driver Job `sweep run --in-cluster --dry-run` prints, pinned; `IDC_UPDATE_GOLDEN=1`
/// rewrites.
#[test]
fn sweep_driver_dry_run_job_matches_its_golden_file() {
    let out = idcctl(&[
        "sweep",
        "run",
        "manifests/sweep-cluster.yaml",
        "--in-cluster",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let job: Job = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(kube::names::job_violations(&job), Vec::<String>::new());
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/jobs/sweep-cluster.yaml");
    if std::env::var("IDC_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&file, &yaml).unwrap();
    }
    let want = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run IDC_UPDATE_GOLDEN=1 cargo test --test it kube::",
            file.display()
        )
    });
    assert_eq!(yaml, want, "the driver Job differs from {}", file.display());
}

fn driver_pod(phase: &str, state: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sweep-cnn-sweep-gpu-x7k2p", "namespace": NS,
                     "creationTimestamp": "2026-11-26T10:00:00Z",
                     "labels": {"idc.dev/run": DRIVER}},
        "spec": {"containers": [{"name": "driver", "image": "reg/idcctl:0.1.0"}]},
        "status": {"phase": phase, "containerStatuses": [{"name": "driver",
            "image": "reg/idcctl:0.1.0", "imageID": "", "ready": true, "restartCount": 0,
            "state": state}]}
    })
}

#[tokio::test]
async fn sweep_logs_follow_the_driver_pod_until_its_job_ends() {
    let pods = format!("/api/v1/namespaces/{NS}/pods?&labelSelector=idc.dev%2Frun%3D{DRIVER}");
    let running = driver_pod(
        "Running",
        json!({"running": {"startedAt": "2026-11-26T10:00:00Z"}}),
    );
    let done = driver_pod("Succeeded", json!({"terminated": {"exitCode": 0}}));
    let active = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": DRIVER},
                        "status": {}});
    let complete = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": DRIVER},
                          "status": {"conditions": [{"type": "Complete", "status": "True"}]}});
    let (cluster, task) = mock_cluster(vec![
        ex("GET", job_path(DRIVER), 200, active),
        ex("GET", pods.clone(), 200, list("PodList", vec![running])),
        log_ex(
            format!(
                "/api/v1/namespaces/{NS}/pods/sweep-cnn-sweep-gpu-x7k2p/log?&container=driver&follow=true&timestamps=true"
            ),
            &["t001 started: lr=0.001", "sweep cnn-sweep-gpu finished"],
        ),
        ex("GET", job_path(DRIVER), 200, complete),
        ex("GET", pods.clone(), 200, list("PodList", vec![done])),
    ]);
    let mut lines = vec![];
    idc::sweep::in_cluster::driver_log(
        &cluster,
        SWEEP,
        true,
        &mut |l| lines.push(l.to_string()),
        &mut |_| {},
    )
    .await
    .unwrap();
    finish(cluster, task).await;
    assert_eq!(
        lines,
        ["t001 started: lr=0.001", "sweep cnn-sweep-gpu finished"]
    );

    // No driver Job and no pod: the sweep is not driven from this namespace.
    let (cluster, task) = mock_cluster(vec![
        ex(
            "GET",
            job_path(DRIVER),
            404,
            status_err(404, "NotFound", "not found"),
        ),
        ex("GET", pods, 200, list("PodList", vec![])),
    ]);
    let e = idc::sweep::in_cluster::driver_log(&cluster, SWEEP, true, &mut |_| {}, &mut |_| {})
        .await
        .unwrap_err();
    finish(cluster, task).await;
    assert!(
        e.to_string()
            .starts_with("no driver Job sweep-cnn-sweep-gpu in namespace ml"),
        "{e}"
    );
}

#[tokio::test]
async fn sweep_cancel_deletes_the_driver_job() {
    let (cluster, task) = mock_cluster(vec![Exchange {
        check: Some(Box::new(|body: &Value| {
            assert_eq!(body["propagationPolicy"], "Background", "{body}");
        })),
        ..ex(
            "DELETE",
            format!("{}?", job_path(DRIVER)),
            200,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": DRIVER}}),
        )
    }]);
    assert!(
        idc::sweep::in_cluster::cancel(&cluster, SWEEP)
            .await
            .unwrap()
    );
    finish(cluster, task).await;
}

// Defects a real API server showed (issue 21): each sequence replays what the server did.

/// Attempt `n`'s record as its worker writes it: ended with `exit`, if given.
async fn record(run: &Store, n: u32, pod: &str, exit: Option<i32>) {
    let r = idc::attempt::AttemptRecord::starting(n, Some(pod.into()));
    let r = match exit {
        Some(c) => r.ended_with(c, idc::attempt::describe_exit(c)),
        None => r,
    };
    idc::attempt::write(run, &r).await.unwrap();
}

/// A pod that an eviction is stopping: DisruptionTarget set by the Eviction API.
fn evicted_pod(name: &str, phase: &str, state: Value) -> Value {
    let mut status = state;
    status["conditions"] = json!([{"type": "DisruptionTarget", "status": "True",
        "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}]);
    let mut p = pod(name, "2026-11-26T10:00:00Z", phase, status);
    p["metadata"]["deletionTimestamp"] = json!("2026-11-26T10:03:00Z");
    p
}

#[tokio::test]
async fn logs_follow_goes_on_with_the_attempt_after_an_eviction_deleted_the_pod() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    let (p1, p2) = ("resnet34-t1-aaaaa", "resnet34-t1-bbbbb");
    // The evicted worker wrote its record, and its end (SIGTERM: checkpoint, exit code 3).
    record(&sub.run, 1, p1, Some(3)).await;
    let p2_running = pod(p2, "2026-11-26T10:04:00Z", "Running", running());
    let p2_done = pod(
        p2,
        "2026-11-26T10:04:00Z",
        "Succeeded",
        terminated(0, "Completed"),
    );
    let active = job_json(json!([]), "x");
    let complete = job_json(json!([{"type": "Complete", "status": "True"}]), "x");
    let (cluster, task) = mock_cluster(vec![
        ex("GET", job_path(RUN), 200, active.clone()),
        ex(
            "GET",
            pods_list_uri(),
            200,
            list(
                "PodList",
                vec![pod(p1, "2026-11-26T10:00:00Z", "Running", running())],
            ),
        ),
        log_ex(
            log_uri(p1, true),
            &[
                "epoch 2 done",
                "stop requested: checkpoint written; exiting",
            ],
        ),
        // Still there while it stops, with the eviction's condition.
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/pods/{p1}"),
            200,
            evicted_pod(p1, "Failed", terminated(3, "Error")),
        ),
        // Deleted; the replacement is not made yet.
        ex("GET", job_path(RUN), 200, active.clone()),
        ex("GET", pods_list_uri(), 200, list("PodList", vec![])),
        ex("GET", job_path(RUN), 200, active),
        ex(
            "GET",
            pods_list_uri(),
            200,
            list("PodList", vec![p2_running]),
        ),
        log_ex(log_uri(p2, true), &["resumed from epoch 2", "done"]),
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/pods/{p2}"),
            200,
            p2_done.clone(),
        ),
        ex("GET", job_path(RUN), 200, complete),
        ex("GET", pods_list_uri(), 200, list("PodList", vec![p2_done])),
    ]);
    let mut lines = vec![];
    let mut notices = vec![];
    kube::follow(
        &cluster,
        &sub.run,
        RUN,
        0,
        None,
        &mut |l: LogLine| lines.push((l.attempt, l.text)),
        &mut |n| notices.push(n),
    )
    .await
    .unwrap();
    finish(cluster, task).await;
    let got: Vec<(u32, &str)> = lines.iter().map(|(a, t)| (*a, t.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (1, "epoch 2 done"),
            (1, "stop requested: checkpoint written; exiting"),
            (2, "resumed from epoch 2"),
            (2, "done")
        ]
    );
    assert!(
        notices[0].starts_with("attempt 1 was evicted (EvictionByEvictionAPI"),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|n| n.contains("attempt 2 starts: waiting for the Job controller")),
        "{notices:?}"
    );
    assert_eq!(notices.last().unwrap(), "attempt 2 succeeded");
}

#[tokio::test]
async fn status_after_an_eviction_counts_the_attempt_whose_pod_is_gone() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    record(&sub.run, 1, "resnet34-t1-aaaaa", Some(3)).await;
    let (cluster, task) = mock_cluster(vec![
        ex("GET", job_path(RUN), 200, job_json(json!([]), "x")),
        ex("GET", pods_list_uri(), 200, list("PodList", vec![])),
        events_ex(list("EventList", vec![])),
    ]);
    let s = run::read_status(&sub.run).await.unwrap().unwrap();
    let s = Kubernetes::on(cluster.clone())
        .refresh(&sub.run, s)
        .await
        .unwrap();
    finish(cluster, task).await;
    assert_eq!(
        (s.phase, s.attempts, s.exit_codes.clone()),
        (Phase::Pending, 1, vec![3])
    );
    assert_eq!(
        reason(&s),
        "attempt 1 stopped on SIGTERM after writing a checkpoint (exit code 3); its pod was then deleted (evicted, preempted, cancelled or past the deadline); attempt 2 starts: waiting for the Job controller to create the pod"
    );

    // While it stops, the pod says it was evicted, and the record keeps that after it is gone.
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    record(&sub.run, 1, "resnet34-t1-aaaaa", None).await;
    let stopping = evicted_pod("resnet34-t1-aaaaa", "Running", running());
    let s = observed_in(&sub.run, job_json(json!([]), "x"), vec![stopping], vec![]).await;
    assert_eq!((s.phase, s.attempts), (Phase::Running, 1));
    assert!(
        reason(&s).starts_with("attempt 1 was evicted (EvictionByEvictionAPI"),
        "{}",
        reason(&s)
    );
    let kept = idc::attempt::read_all(&sub.run).await.unwrap();
    assert!(
        kept[0].ended.as_deref().unwrap().starts_with("was evicted"),
        "{kept:?}"
    );
}

/// Refreshes the run in `run` against the scripted Job and pods.
async fn observed_in(
    run: &Store,
    job: Value,
    pods: Vec<Value>,
    after_pods: Vec<Exchange>,
) -> RunStatus {
    let mut script = vec![
        ex("GET", job_path(RUN), 200, job),
        ex("GET", pods_list_uri(), 200, list("PodList", pods)),
    ];
    script.extend(after_pods);
    let (cluster, task) = mock_cluster(script);
    let s = run::read_status(run).await.unwrap().unwrap();
    let s = Kubernetes::on(cluster.clone())
        .refresh(run, s)
        .await
        .unwrap();
    finish(cluster, task).await;
    s
}

#[tokio::test]
async fn a_job_deadline_counts_the_attempt_the_job_controller_deleted() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    record(&sub.run, 1, "resnet34-t1-aaaaa", Some(3)).await;
    let mut job = job_json(
        json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline",
                "lastTransitionTime": "2026-11-26T10:07:12Z"}]),
        "x",
    );
    job["status"]["startTime"] = json!("2026-11-26T10:00:00Z");
    job["status"]["failed"] = json!(1);
    let s = observed_in(
        &sub.run,
        job,
        vec![],
        vec![events_ex(list("EventList", vec![]))],
    )
    .await;
    assert_eq!(
        (s.phase, s.attempts, s.exit_codes.clone()),
        (Phase::Failed, 1, vec![3])
    );
    assert!(
        reason(&s).starts_with("deadline exceeded")
            && reason(&s).contains("attempt 1 stopped on SIGTERM"),
        "{}",
        reason(&s)
    );
    // The Job's own times, not the moment idcctl looked.
    assert_eq!(s.started_at.as_deref(), Some("2026-11-26T10:00:00Z"));
    assert_eq!(s.finished_at.as_deref(), Some("2026-11-26T10:07:12Z"));
}

#[tokio::test]
async fn start_and_finish_come_from_the_job() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    let mut job = job_json(json!([{"type": "Complete", "status": "True"}]), "x");
    job["status"]["startTime"] = json!("2026-11-26T10:00:00Z");
    job["status"]["completionTime"] = json!("2026-11-26T10:00:37Z");
    let done = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Succeeded",
        terminated(0, "Completed"),
    );
    let s = observed_in(&sub.run, job, vec![done], vec![]).await;
    assert_eq!(s.phase, Phase::Succeeded);
    assert_eq!(s.started_at.as_deref(), Some("2026-11-26T10:00:00Z"));
    assert_eq!(s.finished_at.as_deref(), Some("2026-11-26T10:00:37Z"));
    let row = run::Summary::of(&s, &run::MetricsSummary::default());
    assert_eq!(row.duration_s, Some(37));
}

#[tokio::test]
async fn after_its_jobs_ttl_a_run_reads_its_outcome_from_the_attempt_records() {
    let gone = || {
        vec![ex(
            "GET",
            job_path(RUN),
            404,
            status_err(404, "NotFound", "jobs \"resnet34-t1\" not found"),
        )]
    };
    // Bad input: exit code 2 in attempt 1, no report.
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    record(&sub.run, 1, "resnet34-t1-aaaaa", Some(2)).await;
    let (cluster, task) = mock_cluster(gone());
    let s = run::read_status(&sub.run).await.unwrap().unwrap();
    let s = Kubernetes::on(cluster.clone())
        .refresh(&sub.run, s)
        .await
        .unwrap();
    finish(cluster, task).await;
    assert_eq!(
        (s.phase, s.attempts, s.exit_codes.clone()),
        (Phase::Failed, 1, vec![2])
    );
    assert!(
        reason(&s).contains("bad input in attempt 1"),
        "{}",
        reason(&s)
    );

    // Succeeded in attempt 2, after an eviction.
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    record(&sub.run, 1, "resnet34-t1-aaaaa", Some(3)).await;
    record(&sub.run, 2, "resnet34-t1-bbbbb", Some(0)).await;
    sub.run
        .put(keys::REPORT, bytes::Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let (cluster, task) = mock_cluster(gone());
    let s = run::read_status(&sub.run).await.unwrap().unwrap();
    let s = Kubernetes::on(cluster.clone())
        .refresh(&sub.run, s)
        .await
        .unwrap();
    finish(cluster, task).await;
    assert_eq!(
        (s.phase, s.attempts, s.exit_codes.clone()),
        (Phase::Succeeded, 2, vec![3, 0])
    );
    assert_eq!(
        reason(&s),
        "completed in attempt 2; its Job has since been deleted"
    );
}

#[tokio::test]
async fn cancel_of_a_run_whose_job_completed_leaves_it_succeeded() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    record(&sub.run, 1, "resnet34-t1-abcde", Some(0)).await;
    let done = pod(
        "resnet34-t1-abcde",
        "2026-11-26T10:00:00Z",
        "Succeeded",
        terminated(0, "Completed"),
    );
    // Read, and nothing deleted: the script has no DELETE.
    let (cluster, task) = mock_cluster(vec![
        ex(
            "GET",
            job_path(RUN),
            200,
            job_json(json!([{"type": "Complete", "status": "True"}]), "x"),
        ),
        ex("GET", pods_list_uri(), 200, list("PodList", vec![done])),
    ]);
    let s = run::read_status(&sub.run).await.unwrap().unwrap();
    let out = Kubernetes::on(cluster.clone())
        .cancel(&sub.run, s)
        .await
        .unwrap();
    finish(cluster, task).await;
    let backend::CancelOutcome::AlreadyEnded(s) = out else {
        panic!("a completed run was cancelled: {out:?}");
    };
    assert_eq!(s.phase, Phase::Succeeded);
    assert!(sub.run.get_opt(keys::CANCEL).await.unwrap().is_none());
    assert_eq!(
        run::read_status(&sub.run).await.unwrap().unwrap().phase,
        Phase::Succeeded
    );
}

#[tokio::test]
async fn a_follower_refreshing_after_a_cancel_keeps_it_cancelled() {
    // `logs -f` read the record while the run ran; `cancel` then deleted the Job and recorded
    // the cancel. The follower's last refresh must not turn it into a failure.
    let gone = || {
        vec![ex(
            "GET",
            job_path(RUN),
            404,
            status_err(404, "NotFound", "jobs \"resnet34-t1\" not found"),
        )]
    };
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    let mut stale = run::read_status(&sub.run).await.unwrap().unwrap();
    stale.phase = Phase::Running;
    let mut cancelled = stale.clone();
    cancelled.phase = Phase::Cancelled;
    cancelled.reason =
        Some("cancelled: the Job was deleted; its worker checkpoints on SIGTERM".into());
    sub.run
        .put(keys::CANCEL, bytes::Bytes::from_static(b"cancelled\n"))
        .await
        .unwrap();
    run::write_status(&sub.run, &cancelled).await.unwrap();
    let (cluster, task) = mock_cluster(gone());
    let s = Kubernetes::on(cluster.clone())
        .refresh(&sub.run, stale.clone())
        .await
        .unwrap();
    finish(cluster, task).await;
    assert_eq!(s.phase, Phase::Cancelled);
    assert_eq!(
        run::read_status(&sub.run).await.unwrap().unwrap().phase,
        Phase::Cancelled
    );

    // The marker is there but the record not yet: still cancelled, never "deleted outside".
    run::write_status(&sub.run, &stale).await.unwrap();
    record(&sub.run, 1, "resnet34-t1-abcde", Some(3)).await;
    let (cluster, task) = mock_cluster(gone());
    let s = Kubernetes::on(cluster.clone())
        .refresh(&sub.run, stale)
        .await
        .unwrap();
    finish(cluster, task).await;
    assert_eq!(s.phase, Phase::Cancelled, "{}", reason(&s));
    assert_eq!(s.exit_codes, vec![3]);
}

#[tokio::test]
async fn resume_waits_until_the_old_pod_has_stopped() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    let mut s = run::read_status(&sub.run).await.unwrap().unwrap();
    s.phase = Phase::Cancelled;
    s.attempts = 1;
    run::write_status(&sub.run, &s).await.unwrap();
    let mut stopping = pod(
        "resnet34-t1-aaaaa",
        "2026-11-26T10:00:00Z",
        "Running",
        running(),
    );
    stopping["metadata"]["deletionTimestamp"] = json!("2026-11-26T10:03:00Z");
    stopping["spec"]["terminationGracePeriodSeconds"] = json!(30);
    let (cluster, task) = mock_cluster(vec![
        // cancel deleted the Job already; its pod still stops.
        ex(
            "DELETE",
            format!("{}?", job_path(RUN)),
            404,
            status_err(404, "NotFound", "not found"),
        ),
        ex(
            "GET",
            pods_list_uri(),
            200,
            list("PodList", vec![stopping.clone()]),
        ),
        ex("GET", pods_list_uri(), 200, list("PodList", vec![stopping])),
        ex("GET", pods_list_uri(), 200, list("PodList", vec![])),
        ex(
            "GET",
            format!("/api/v1/namespaces/{NS}/configmaps/idc-defaults"),
            200,
            defaults_cm(),
        ),
        create_ex(),
    ]);
    backend::resume_on(&Kubernetes::on(cluster.clone()), &sub.run, s)
        .await
        .unwrap();
    finish(cluster, task).await;
}

#[tokio::test]
async fn after_a_resume_attempts_are_counted_across_jobs() {
    let b = bucket().await;
    let sub = submit_script(&b, vec![create_ex()]).await;
    // Attempt 1 was cancelled (its worker recorded exit code 3); the resumed Job's pod ran
    // attempt 2 and finished.
    record(&sub.run, 1, "resnet34-t1-aaaaa", Some(3)).await;
    record(&sub.run, 2, "resnet34-t1-bbbbb", None).await;
    let mut s = run::read_status(&sub.run).await.unwrap().unwrap();
    s.attempts = 1;
    s.exit_codes = vec![3];
    s.cluster.as_mut().unwrap().earlier_attempts = 1;
    s.cluster.as_mut().unwrap().earlier_exit_codes = vec![3];
    run::write_status(&sub.run, &s).await.unwrap();
    let done = pod(
        "resnet34-t1-bbbbb",
        "2026-11-26T11:00:00Z",
        "Succeeded",
        terminated(0, "Completed"),
    );
    let s = observed_in(
        &sub.run,
        job_json(json!([{"type": "Complete", "status": "True"}]), "x"),
        vec![done],
        vec![],
    )
    .await;
    assert_eq!(
        (s.phase, s.attempts, s.exit_codes.clone()),
        (Phase::Succeeded, 2, vec![3, 0])
    );
    assert!(
        reason(&s).ends_with("completed in attempt 2"),
        "{}",
        reason(&s)
    );
    // The pod's exit code is kept in attempt 2's record, for after the pod is gone.
    let kept = idc::attempt::read_all(&sub.run).await.unwrap();
    assert_eq!(kept[1].exit_code, Some(0));
}
