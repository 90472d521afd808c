//! The lifecycle every backend passes, as object_store's `integration.rs` holds every store to
//! one suite: submit and resubmit, follow to the end, read a log, cancel of a finished run (kept
//! as it is), a refused resume, cancel while running, resume, attempts numbered across both.
//! It runs against the local backend (its supervisor and the real worker), the Kubernetes
//! backend on kube-rs's mock API server (a small in-memory API server whose kubelet plays the
//! worker's part in the bucket), and a real cluster when `IDC_TEST_KUBECONFIG` names one
//! (skipped, and said so, otherwise).

use crate::common::*;
use ::kube::client::Body;
use http::{Request, Response};
use idc::attempt::{self, AttemptRecord};
use idc::backend::follow::Output;
use idc::backend::kube::Kubernetes;
use idc::backend::kube::cluster::Cluster;
use idc::backend::local::Local;
use idc::backend::{self, BackendError, CancelOutcome, RunBackend, SubmitOptions, Submitted};
use idc::experiment::{self, Experiment};
use idc::layout::run as keys;
use idc::run::{self, Phase, RunStatus};
use idc::store::Store;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A backend under test, the experiment it runs, and, on the mock API server, the kubelet that
/// plays the worker's part (elsewhere a real worker does).
struct Subject<B> {
    backend: B,
    exp: Experiment,
    kubelet: Option<FakeCluster>,
    _dir: Option<tempfile::TempDir>,
}

impl<B: RunBackend> Subject<B> {
    /// Lets the run's running attempt work to a successful end.
    async fn let_finish(&self, run: &Store) {
        if let Some(k) = &self.kubelet {
            k.finish(&status(run).await.run_id).await;
        }
    }
}

fn opts(run_id: &str) -> SubmitOptions {
    SubmitOptions {
        run_id: Some(run_id.into()),
        ..Default::default()
    }
}

async fn status(run: &Store) -> RunStatus {
    run::read_status(run).await.unwrap().expect("a run record")
}

/// Follows the run to its end; returns its record and the log text that came.
async fn follow_to_end(h: &Subject<impl RunBackend>, run: &Store) -> (RunStatus, String) {
    let mut text = String::new();
    let s = h
        .backend
        .follow(run, status(run).await, None, &mut |o| {
            if let Output::Text(t) = o {
                text.push_str(&t);
            }
        })
        .await
        .unwrap();
    (s, text)
}

/// The lifecycle; `tag` makes the run ids unique in a shared bucket.
async fn lifecycle(h: &Subject<impl RunBackend>, tag: &str) {
    let (b, exp) = (&h.backend, &h.exp);

    // Submitted once; the same run id and spec again creates nothing.
    let a = format!("{tag}-a");
    let sub: Submitted = b.submit(exp, &opts(&a)).await.unwrap();
    assert!(sub.created);
    let again = b.submit(exp, &opts(&a)).await.unwrap();
    assert!(!again.created, "a resubmit made a second run");

    // Followed to its end, with the worker's log; the log reads back.
    h.let_finish(&sub.run).await;
    let (s, text) = follow_to_end(h, &sub.run).await;
    assert_eq!((s.phase, s.attempts), (Phase::Succeeded, 1), "{s:?}");
    assert!(!text.trim().is_empty(), "following printed no log");
    let records = attempt::read_all(&sub.run).await.unwrap();
    let log = b.read_log(&sub.run, &s, 1, &records).await.unwrap();
    assert!(
        log.is_some_and(|l| !l.trim().is_empty()),
        "no log of attempt 1"
    );

    // A finished run: cancel leaves it as it is; resume refuses it.
    let out = b.cancel(&sub.run, status(&sub.run).await).await.unwrap();
    match out {
        CancelOutcome::AlreadyEnded(s) => assert_eq!(s.phase, Phase::Succeeded),
        other => panic!("cancel of a finished run: {other:?}"),
    }
    assert_eq!(status(&sub.run).await.phase, Phase::Succeeded);
    let e = backend::resume_on(b, &sub.run, status(&sub.run).await)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::Invalid(m) if m.ends_with("already succeeded")),
        "{e}"
    );

    // Cancelled while it trains, resumed: the second attempt starts after the first ended.
    let id = format!("{tag}-b");
    let sub = b.submit(exp, &opts(&id)).await.unwrap();
    attempt_started(&sub.run, 1).await;
    let out = b.cancel(&sub.run, status(&sub.run).await).await.unwrap();
    assert_eq!(out, CancelOutcome::Requested { signalled: true });
    let s = refreshed(h, &sub.run).await;
    assert_eq!(s.phase, Phase::Cancelled, "{s:?}");
    backend::resume_on(b, &sub.run, s).await.unwrap();
    attempt_started(&sub.run, 2).await;
    h.let_finish(&sub.run).await;
    let (s, _) = follow_to_end(h, &sub.run).await;
    assert_eq!((s.phase, s.attempts), (Phase::Succeeded, 2), "{s:?}");
    let records = attempt::read_all(&sub.run).await.unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    let ended = records[0]
        .finished_at
        .clone()
        .expect("the cancelled attempt's end");
    assert!(
        ended <= records[1].started_at,
        "two workers overlapped: {records:?}"
    );
}

/// The run's record once its end is recorded (a local supervisor records a cancel itself).
async fn refreshed(h: &Subject<impl RunBackend>, run: &Store) -> RunStatus {
    for _ in 0..300 {
        let s = status(run).await;
        if s.phase.is_terminal() {
            return s;
        }
        let s = h.backend.refresh(run, s).await.unwrap();
        if s.phase.is_terminal() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the run never ended: {:?}", status(run).await)
}

/// Waits until attempt `n` of the run has started: its record and its log are in the bucket.
async fn attempt_started(run: &Store, n: u32) {
    for _ in 0..1200 {
        let records = attempt::read_all(run).await.unwrap();
        if records.iter().any(|r| r.attempt == n)
            && run.get_opt(&keys::log(n)).await.unwrap().is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("attempt {n} never started: {:?}", status(run).await)
}

// ---- The local backend: its supervisor (idcctl) and the real worker. ----

/// A small training run: long enough to be cancelled while it trains, short to finish.
fn experiment_yaml(ds: &str, storage: &str, backend: &str) -> String {
    format!(
        "apiVersion: idc/v1\nkind: Experiment\nname: conformance\ndataset: {{url: '{ds}'}}\n\
         train: {{model: {{kind: simple_cnn, width: 8}}, epochs: 6, batch_size: 64, device: cpu, checkpoint_every: 1s}}\n\
         resources: {{gpus: 0, cpu: '1', memory: 2Gi}}\nbackend: {backend}\nstorage: '{storage}'\nretries: 2\n"
    )
}

#[tokio::test]
async fn the_local_backend_passes_the_lifecycle() {
    require_worker();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (storage, ds) = tokio::task::spawn_blocking(move || staged_synth_bucket(&root, 6, 80))
        .await
        .unwrap();
    let exp = experiment::parse(&experiment_yaml(&ds, &storage, "local"), "c.yaml").unwrap();
    let h = Subject {
        backend: Local {
            idcctl: Some(env!("CARGO_BIN_EXE_idcctl").into()),
        },
        exp,
        kubelet: None,
        _dir: Some(dir),
    };
    lifecycle(&h, "local").await;
}

// ---- The Kubernetes backend on kube-rs's mock API server. ----

const NS: &str = "conformance";

/// A Job's pod, and the worker it stands for.
struct FakePod {
    name: String,
    job: String,
    created: String,
    run_url: String,
    attempt: u32,
    /// None while it runs.
    exit: Option<i32>,
}

/// The API server's objects: Jobs as created (with their status), and their pods.
#[derive(Default)]
struct FakeState {
    jobs: BTreeMap<String, (Value, Option<bool>)>,
    pods: Vec<FakePod>,
    made: u32,
}

/// A small API server in memory for the requests the backend makes, whose kubelet plays the
/// worker's part in the bucket: a pod writes its attempt record and log when it starts, and
/// its end when it finishes or its Job is deleted (SIGTERM: the worker checkpoints, exit 3).
#[derive(Clone, Default)]
struct FakeCluster(Arc<Mutex<FakeState>>);

impl FakeCluster {
    fn serve(&self) -> Cluster {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            while let Some((req, send)) = handle.next_request().await {
                let (status, body) = me.answer(req).await;
                send.send_response(Response::builder().status(status).body(body).unwrap());
            }
        });
        Cluster::with_client(::kube::Client::new(service, NS), NS)
    }

    async fn answer(&self, req: Request<Body>) -> (u16, Body) {
        let method = req.method().as_str().to_string();
        let uri = req.uri().clone();
        let path = uri.path().to_string();
        let query = uri.query().unwrap_or_default().to_string();
        let body = req.into_body().collect_bytes().await.unwrap();
        let jobs = format!("/apis/batch/v1/namespaces/{NS}/jobs");
        let pods = format!("/api/v1/namespaces/{NS}/pods");
        let json = |status: u16, v: Value| (status, Body::from(serde_json::to_vec(&v).unwrap()));
        let not_found = || {
            json(
                404,
                json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                             "code": 404, "reason": "NotFound", "message": "not found", "metadata": {}}),
            )
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/version") => json(
                200,
                json!({"major": "1", "minor": "32",
                "gitVersion": "v1.32.5", "gitCommit": "", "gitTreeState": "clean",
                "buildDate": "2025-06-01T00:00:00Z", "goVersion": "go1.23.9", "compiler": "gc",
                "platform": "linux/amd64"}),
            ),
            ("POST", p) if p == jobs => {
                let job: Value = serde_json::from_slice(&body).unwrap();
                match self.create_job(job.clone()).await {
                    true => json(201, job),
                    false => json(
                        409,
                        json!({"apiVersion": "v1", "kind": "Status",
                        "status": "Failure", "code": 409, "reason": "AlreadyExists",
                        "message": "exists", "metadata": {}}),
                    ),
                }
            }
            ("GET", p) if p.starts_with(&format!("{jobs}/")) => {
                match self.job_json(&p[jobs.len() + 1..]) {
                    Some(j) => json(200, j),
                    None => not_found(),
                }
            }
            ("DELETE", p) if p.starts_with(&format!("{jobs}/")) => {
                match self.delete_job(&p[jobs.len() + 1..]).await {
                    Some(j) => json(200, j),
                    None => not_found(),
                }
            }
            ("GET", p) if p == pods => {
                let run = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector=idc.dev%2Frun%3D"))
                    .unwrap_or_default()
                    .to_string();
                json(
                    200,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                 "items": self.pods_json(|p| p.job == run)}),
                )
            }
            ("GET", p) if p.starts_with(&format!("{pods}/")) && p.ends_with("/log") => {
                let pod = &p[pods.len() + 1..p.len() - "/log".len()];
                match self.log_of(pod).await {
                    Some(text) => (200, Body::from(text.into_bytes())),
                    None => not_found(),
                }
            }
            ("GET", p) if p.starts_with(&format!("{pods}/")) => {
                let name = &p[pods.len() + 1..];
                match self.pods_json(|p| p.name == name).pop() {
                    Some(pod) => json(200, pod),
                    None => not_found(),
                }
            }
            ("GET", p) if p.ends_with("/events") => json(
                200,
                json!({"apiVersion": "v1",
                "kind": "EventList", "metadata": {}, "items": []}),
            ),
            ("GET", p) if p.ends_with("/configmaps/idc-defaults") => not_found(),
            _ => panic!("the fake API server has no answer to {method} {uri}"),
        }
    }

    /// Creates the Job and its first pod (false: one of that name exists).
    async fn create_job(&self, job: Value) -> bool {
        let name = job["metadata"]["name"].as_str().unwrap().to_string();
        let run_url = job["spec"]["template"]["spec"]["containers"][0]["args"][2]
            .as_str()
            .unwrap()
            .to_string();
        {
            let mut st = self.0.lock().unwrap();
            if st.jobs.contains_key(&name) {
                return false;
            }
            st.jobs.insert(name.clone(), (job, None));
        }
        self.start_pod(&name, &run_url).await;
        true
    }

    /// A pod of Job `job` starts its worker: the attempt's record and first log line.
    async fn start_pod(&self, job: &str, run_url: &str) {
        let run = Store::open(run_url).unwrap();
        let n = attempt::read_all(&run).await.unwrap().len() as u32 + 1;
        let pod = {
            let mut st = self.0.lock().unwrap();
            st.made += 1;
            let pod = FakePod {
                name: format!("{job}-{}", st.made),
                job: job.into(),
                created: format!("2026-12-03T10:{:02}:00Z", st.made),
                run_url: run_url.into(),
                attempt: n,
                exit: None,
            };
            let name = pod.name.clone();
            st.pods.push(pod);
            name
        };
        attempt::write(&run, &AttemptRecord::starting(n, Some(pod)))
            .await
            .unwrap();
        run.put(&keys::log(n), format!("attempt {n}: training\n").into())
            .await
            .unwrap();
    }

    /// The run's running pods finish: `code` is the worker's exit code.
    async fn end_pods(&self, pred: impl Fn(&FakePod) -> bool, code: i32) {
        let ended: Vec<(String, u32)> = {
            let mut st = self.0.lock().unwrap();
            let mut out = vec![];
            for p in st.pods.iter_mut().filter(|p| p.exit.is_none() && pred(p)) {
                p.exit = Some(code);
                out.push((p.run_url.clone(), p.attempt));
            }
            out
        };
        for (url, n) in ended {
            let run = Store::open(&url).unwrap();
            let records = attempt::read_all(&run).await.unwrap();
            let r = records.into_iter().find(|r| r.attempt == n).unwrap();
            attempt::write(&run, &r.ended_with(code, attempt::describe_exit(code)))
                .await
                .unwrap();
            let mut log = run.get(&keys::log(n)).await.unwrap().to_vec();
            log.extend_from_slice(format!("attempt {n}: exit {code}\n").as_bytes());
            run.put(&keys::log(n), log.into()).await.unwrap();
        }
    }

    /// The running attempt of Job `job` trains to the end: the Job completes.
    async fn finish(&self, job: &str) {
        self.end_pods(|p| p.job == job, 0).await;
        if let Some(j) = self.0.lock().unwrap().jobs.get_mut(job) {
            j.1 = Some(true);
        }
    }

    /// Deletes the Job: its running worker gets SIGTERM, checkpoints and exits 3; its pods go.
    async fn delete_job(&self, job: &str) -> Option<Value> {
        let j = self.job_json(job)?;
        self.end_pods(|p| p.job == job, 3).await;
        let mut st = self.0.lock().unwrap();
        st.jobs.remove(job);
        st.pods.retain(|p| p.job != job);
        Some(j)
    }

    fn job_json(&self, name: &str) -> Option<Value> {
        let st = self.0.lock().unwrap();
        let (job, complete) = st.jobs.get(name)?;
        let mut j = job.clone();
        j["metadata"]["uid"] = json!(format!("uid-{name}"));
        j["status"] = match complete {
            Some(true) => json!({"startTime": "2026-12-03T10:00:00Z",
                "completionTime": "2026-12-03T11:00:00Z", "succeeded": 1,
                "conditions": [{"type": "Complete", "status": "True",
                                "lastTransitionTime": "2026-12-03T11:00:00Z"}]}),
            _ => json!({"startTime": "2026-12-03T10:00:00Z", "active": 1}),
        };
        Some(j)
    }

    fn pods_json(&self, which: impl Fn(&FakePod) -> bool) -> Vec<Value> {
        let st = self.0.lock().unwrap();
        st.pods
            .iter()
            .filter(|p| which(p))
            .map(|p| {
                let (phase, state) = match p.exit {
                    None => ("Running", json!({"running": {"startedAt": p.created}})),
                    Some(0) => (
                        "Succeeded",
                        json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                    ),
                    Some(c) => (
                        "Failed",
                        json!({"terminated": {"exitCode": c, "reason": "Error"}}),
                    ),
                };
                json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": p.name, "namespace": NS, "creationTimestamp": p.created,
                                 "labels": {"idc.dev/run": p.job}},
                    "spec": {"containers": [{"name": "worker", "image": "idc-worker"}]},
                    "status": {"phase": phase, "containerStatuses": [{"name": "worker",
                        "image": "idc-worker", "imageID": "", "ready": p.exit.is_none(),
                        "restartCount": 0, "state": state}]}})
            })
            .collect()
    }

    /// The pod's log as the API server streams it (`timestamps=true`).
    async fn log_of(&self, pod: &str) -> Option<String> {
        let (url, n) = {
            let st = self.0.lock().unwrap();
            let p = st.pods.iter().find(|p| p.name == pod)?;
            (p.run_url.clone(), p.attempt)
        };
        let run = Store::open(&url).unwrap();
        let text = run.get_opt(&keys::log(n)).await.unwrap()?;
        Some(
            String::from_utf8_lossy(&text)
                .lines()
                .map(|l| format!("2026-12-03T10:00:01Z {l}\n"))
                .collect(),
        )
    }
}

#[tokio::test]
async fn the_kubernetes_backend_on_a_mock_api_server_passes_the_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (storage, ds) = tokio::task::spawn_blocking(move || staged_synth_bucket(&root, 4, 20))
        .await
        .unwrap();
    // A manifest refuses a file:// bucket for Kubernetes; the mock's pods share this machine.
    let mut exp = experiment::parse(&experiment_yaml(&ds, &storage, "local"), "c.yaml").unwrap();
    exp.backend = experiment::Backend::Kubernetes;
    let fake = FakeCluster::default();
    let mut cluster = fake.serve();
    cluster.poll = Duration::from_millis(20);
    let h = Subject {
        // The mock's pods are this process: they reach a file:// bucket.
        backend: Kubernetes::on(cluster).sharing_this_machine(),
        exp,
        kubelet: Some(fake),
        _dir: Some(dir),
    };
    lifecycle(&h, "mock").await;
}

// ---- A real cluster, when one is named. ----

#[tokio::test]
async fn a_real_cluster_passes_the_lifecycle() {
    let Some(kubeconfig) = std::env::var_os("IDC_TEST_KUBECONFIG") else {
        eprintln!(
            "skipped: set IDC_TEST_KUBECONFIG (and IDC_TEST_NAMESPACE, IDC_TEST_STORAGE, AWS_*) to run the lifecycle against a real API server"
        );
        return;
    };
    let ns = std::env::var("IDC_TEST_NAMESPACE").unwrap_or_else(|_| "idc".into());
    let storage = std::env::var("IDC_TEST_STORAGE").unwrap_or_else(|_| "s3://idc".into());
    let mut cluster = Cluster::connect_with_kubeconfig(Path::new(&kubeconfig), Some(&ns))
        .await
        .unwrap();
    cluster.poll = Duration::from_millis(500);
    let tag = idc::run::new_run_id("it");
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 6, 80, 0);
    let ds = format!("{storage}/datasets/{tag}");
    idc::stage::stage(
        dir.path(),
        &Store::open(&ds).unwrap(),
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    let exp = experiment::parse(&experiment_yaml(&ds, &storage, "kubernetes"), "c.yaml").unwrap();
    let h = Subject {
        backend: Kubernetes::on(cluster),
        exp,
        kubelet: None,
        _dir: None,
    };
    lifecycle(&h, &tag).await;
}
