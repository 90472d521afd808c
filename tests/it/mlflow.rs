//! Runs mirrored in a real MLflow server (started on loopback by `.ci/test`:
//! `IDC_TEST_MLFLOW_URI`), read back through MLflow's REST API and compared with the bucket:
//! the run and its tags and params, every metric's history, the status and the artifacts; a
//! second sync sends nothing twice; a server that is down costs the run nothing and `idcctl
//! track sync` catches up.
//!
//! Without a server the test says so and stops, unless `IDC_TEST_REQUIRE_MLFLOW=1` (under CI).

use crate::common::*;
use idc::tracking::mlflow::{Client, Target};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn mlflow_uri() -> Option<String> {
    match std::env::var("IDC_TEST_MLFLOW_URI") {
        Ok(u) => Some(u),
        Err(_) if std::env::var("IDC_TEST_REQUIRE_MLFLOW").as_deref() == Ok("1") => {
            panic!("IDC_TEST_REQUIRE_MLFLOW=1 but IDC_TEST_MLFLOW_URI is not set")
        }
        Err(_) => None,
    }
}

struct Run {
    dir: tempfile::TempDir,
    storage: String,
    run: String,
}

/// A short run whose manifest tracks it at `uri` in `experiment`.
fn tracked_run(uri: &str, experiment: &str) -> Run {
    require_worker();
    let dir = tempfile::tempdir().unwrap();
    let (storage, dataset) = staged_synth_bucket(dir.path(), 6, 100);
    let manifest = dir.path().join("tracked.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: idc/v1\nkind: Experiment\nname: tracked\ndataset: {{url: '{dataset}'}}\ntrain:\n  device: cpu\n  epochs: 3\n  batch_size: 32\n  log_every_steps: 3\n  model: {{kind: logreg}}\nstorage: '{storage}'\ntracking:\n  mlflow: {{uri: '{uri}', experiment: {experiment}}}\n"
        ),
    )
    .unwrap();
    let run = submit_wait(manifest.to_str().unwrap());
    Run { dir, storage, run }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

fn client(uri: &str, experiment: &str) -> Client {
    Client::new(
        Target {
            uri: uri.into(),
            experiment: experiment.into(),
            token: None,
            sweep: None,
        },
        Duration::from_secs(30),
    )
}

/// What the bucket says MLflow must hold: every finite scalar, by tag, in step order.
fn expected(r: &Run) -> BTreeMap<String, Vec<(i64, f64)>> {
    let run_dir = Path::new(r.storage.strip_prefix("file://").unwrap())
        .join("runs")
        .join(&r.run);
    let records = idc::metrics::parse_jsonl(&std::fs::read(run_dir.join("metrics.jsonl")).unwrap());
    let report: idc::metrics::AnyReport =
        serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).unwrap()).unwrap();
    let mut out: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for s in idc::tracking::scalars_of(&records, Some(&report)) {
        if s.value.is_finite() {
            out.entry(s.tag).or_default().push((s.step, s.value));
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|p| p.0);
    }
    out
}

/// MLflow's `[{key, value}]` as a map.
fn key_values(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["key"].as_str().unwrap().into(),
                t["value"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// Checks that MLflow's run of `r` holds exactly what the bucket says; returns its id.
async fn check_mirror(c: &Client, experiment: &str, r: &Run) -> String {
    let exp = c.experiment_id(experiment).await.unwrap();
    let (id, _) = c
        .find_run(&exp, &r.run)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no MLflow run tagged {}", r.run));
    let got = c.get_run(&id).await.unwrap().unwrap();
    assert_eq!(got["run"]["info"]["status"], "FINISHED");
    let tags = key_values(&got["run"]["data"]["tags"]);
    assert_eq!(tags["idc.run_id"], r.run);
    assert_eq!(tags["idc.model"], "logreg");
    assert_eq!(tags["idc.backend"], "local");
    assert!(tags.contains_key("idc.dataset_id") && tags.contains_key("idc.attempt"));
    let params = key_values(&got["run"]["data"]["params"]);
    assert_eq!(params["train.epochs"], "3");
    assert_eq!(params["train.model.kind"], "logreg");
    let want = expected(r);
    assert!(want.contains_key("train/loss") && want.contains_key("test/f1"));
    for (tag, points) in &want {
        assert_eq!(
            &c.metric_history(&id, tag).await.unwrap(),
            points,
            "metric {tag}"
        );
    }
    id
}

#[test]
fn runs_are_mirrored_and_a_second_sync_sends_nothing() {
    let Some(uri) = mlflow_uri() else {
        eprintln!("IDC_TEST_MLFLOW_URI not set: MLflow is not tested here (run .ci/test for it)");
        return;
    };
    let experiment = unique("idc-test");
    let r = tracked_run(&uri, &experiment);
    let c = client(&uri, &experiment);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(check_mirror(&c, &experiment, &r));
    // The supervisor's sync at the end added the report, the records and the HTML report.
    let root = rt.block_on(c.list_artifacts(&id, "")).unwrap();
    for want in ["report.json", "metrics.jsonl", "html"] {
        assert!(root.iter().any(|(p, _)| p == want), "{want} in {root:?}");
    }
    let html = rt.block_on(c.list_artifacts(&id, "html")).unwrap();
    assert!(html.iter().any(|(p, _)| p == "html/index.html"), "{html:?}");

    let out = idcctl_env(&["track", "sync", &r.run], &[("IDC_STORAGE", &r.storage)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), id);
    assert!(
        text(&out.stderr).contains("up to date (0 metric points"),
        "{}",
        text(&out.stderr)
    );
    rt.block_on(check_mirror(&c, &experiment, &r));
    drop(r.dir);
}

#[test]
fn a_server_that_is_down_costs_a_warning_and_sync_catches_up() {
    let Some(uri) = mlflow_uri() else {
        eprintln!("IDC_TEST_MLFLOW_URI not set: MLflow is not tested here (run .ci/test for it)");
        return;
    };
    // A port nothing listens on.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let experiment = unique("idc-down");
    let r = tracked_run(&down, &experiment);
    let log = std::fs::read_to_string(
        Path::new(r.storage.strip_prefix("file://").unwrap())
            .join("runs")
            .join(&r.run)
            .join("logs/attempt-1.log"),
    )
    .unwrap();
    assert!(log.contains("warning: MLflow not updated"), "{log}");
    let status = idcctl_env(
        &["status", &r.run, "-o", "json"],
        &[("IDC_STORAGE", &r.storage)],
    );
    assert!(
        text(&status.stdout).contains("\"succeeded\""),
        "{}",
        text(&status.stdout)
    );

    let sync = || {
        idcctl_env(
            &["track", "sync", &r.run, "--uri", &uri],
            &[("IDC_STORAGE", &r.storage)],
        )
    };
    let out = sync();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(" made ("),
        "{}",
        text(&out.stderr)
    );
    let c = client(&uri, &experiment);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(check_mirror(&c, &experiment, &r));
    let out = sync();
    assert!(
        text(&out.stderr).contains("up to date (0 metric points"),
        "{}",
        text(&out.stderr)
    );
    rt.block_on(check_mirror(&c, &experiment, &r));
}

#[test]
fn a_sweep_is_a_parent_run_of_its_trials() {
    let Some(uri) = mlflow_uri() else {
        eprintln!("IDC_TEST_MLFLOW_URI not set: MLflow is not tested here (run .ci/test for it)");
        return;
    };
    require_worker();
    let dir = tempfile::tempdir().unwrap();
    let (storage, dataset) = staged_synth_bucket(dir.path(), 6, 80);
    let experiment = unique("idc-sweep");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sweep-synth.yaml");
    let sweep = std::fs::read_to_string(fixture)
        .unwrap()
        .replace("DATASET", &dataset)
        .replace("STORAGE", &storage)
        .replace("max_trials: 6", "max_trials: 2")
        .replace(
            "  storage: '",
            &format!(
                "  tracking: {{mlflow: {{uri: '{uri}', experiment: {experiment}}}}}\n  storage: '"
            ),
        );
    let manifest = dir.path().join("sweep.yaml");
    std::fs::write(&manifest, sweep).unwrap();
    let out = idcctl(&["sweep", "run", manifest.to_str().unwrap(), "--poll", "0.5"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let c = client(&uri, &experiment);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let exp = rt.block_on(c.experiment_id(&experiment)).unwrap();
    let parent = rt.block_on(c.sweep_run(&exp, "synth-sweep")).unwrap();
    let got = rt.block_on(c.get_run(&parent)).unwrap().unwrap();
    assert_eq!(got["run"]["info"]["status"], "FINISHED");
    let best = rt
        .block_on(c.metric_history(&parent, "sweep/best"))
        .unwrap();
    assert_eq!(
        best.iter().map(|p| p.0).collect::<Vec<_>>(),
        [1, 2],
        "{best:?}"
    );
    assert!(
        best[1].1 >= best[0].1,
        "the best ROC-AUC so far never falls: {best:?}"
    );
    for trial in ["synth-sweep-t001", "synth-sweep-t002"] {
        let (id, _) = rt
            .block_on(c.find_run(&exp, trial))
            .unwrap()
            .unwrap_or_else(|| panic!("no MLflow run of {trial}"));
        let run = rt.block_on(c.get_run(&id)).unwrap().unwrap();
        let tags = key_values(&run["run"]["data"]["tags"]);
        assert_eq!(tags["mlflow.parentRunId"], parent, "{trial}");
        assert_eq!(tags["idc.sweep"], "synth-sweep", "{trial}");
    }
}
