//! `idcctl list` and `status` on a file:// bucket of finished runs written through the library
//! (no worker needed): newest first by creation time whatever the ids, the default limit,
//! `--all`, the filters, and runs from before the run index.

use crate::common::*;
use bytes::Bytes;
use idc::experiment::Backend;
use idc::layout::{self, run as keys};
use idc::metrics::{BinaryMetrics, Metrics, MetricsRecord};
use idc::run::{self, MetricsSummary, Phase, RunStatus};
use idc::store::Store;
use serde_json::Value;

fn record(id: &str, experiment: &str, phase: Phase, created: &str) -> RunStatus {
    RunStatus {
        run_id: id.into(),
        experiment: experiment.into(),
        model: "simple_cnn".into(),
        backend: Backend::Local,
        phase,
        attempts: 1,
        max_attempts: 1,
        created_at: created.into(),
        started_at: Some(created.into()),
        finished_at: Some(created.replace(":00:00Z", ":02:05Z")),
        exit_codes: vec![0],
        reason: Some("finished".into()),
        supervisor: None,
        worker: None,
        heartbeat_at: None,
        deadline_s: None,
        cluster: None,
        summary: None,
    }
}

/// Writes a finished run whose epochs reached `f1`, as its supervisor leaves it (with its
/// summary), or as a run from before the index and summaries was left.
async fn put(root: &Store, mut s: RunStatus, f1: &[f64], old: bool) {
    let run = run::run_store(root, &s.run_id);
    let records: Vec<MetricsRecord> = f1
        .iter()
        .enumerate()
        .map(|(i, &f1)| MetricsRecord::Epoch {
            epoch: i as u32 + 1,
            train_loss: 0.3,
            lr: 0.01,
            val: Metrics::Binary(BinaryMetrics {
                f1,
                ..Default::default()
            }),
            duration_s: 20.0,
            images_per_s: 900.0,
            best: false,
        })
        .collect();
    let lines: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    run.put(keys::METRICS, Bytes::from(lines)).await.unwrap();
    if !old {
        let mut m = MetricsSummary::of(&records);
        m.ended_at = s.finished_at.clone();
        s.summary = Some(m);
        let ms = idc::clock::seconds_of(&s.created_at).unwrap() as u64 * 1000;
        root.put(&layout::run_index_key(ms, &s.run_id), Bytes::new())
            .await
            .unwrap();
    }
    run::write_status(&run, &s).await.unwrap();
}

/// Six runs at `storage`, created in this order (oldest first); ids that sort otherwise.
async fn bucket(storage: &str) {
    let root = Store::open(storage).unwrap();
    let runs = [
        ("zeta-20250101-000000-aaaa", "zeta", Phase::Succeeded, true),
        ("lr-t001", "cnn", Phase::Succeeded, false),
        ("lr-t002", "cnn", Phase::Failed, false),
        ("alpha-run", "alpha", Phase::Cancelled, true),
        ("cnn-20261203-090000-0f0f", "cnn", Phase::Succeeded, false),
        ("a-first-by-name", "alpha", Phase::Succeeded, false),
    ];
    for (i, (id, exp, phase, old)) in runs.into_iter().enumerate() {
        let created = format!("2026-0{}-01T10:00:00Z", i + 1);
        let f1 = [0.5, 0.6 + i as f64 / 100.0, 0.55];
        put(&root, record(id, exp, phase, &created), &f1, old).await;
    }
}

fn list(storage: &str, args: &[&str]) -> (Vec<String>, Value, String) {
    let mut all = vec!["list", "-o", "json"];
    all.extend(args);
    let out = idcctl_env(&all, &[("IDC_STORAGE", storage)]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{args:?}: {err}");
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    (ids, rows, err)
}

#[tokio::test]
async fn list_shows_the_newest_runs_first_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    // A folder, and S3 when `.ci/test` started a server (where listings come in key order).
    for storage in backends(dir.path()) {
        list_on(&storage).await;
    }
}

async fn list_on(storage: &str) {
    bucket(storage).await;
    let newest = [
        "a-first-by-name",
        "cnn-20261203-090000-0f0f",
        "alpha-run",
        "lr-t002",
        "lr-t001",
        "zeta-20250101-000000-aaaa",
    ];

    let (ids, rows, err) = list(storage, &["--limit", "2"]);
    assert_eq!(ids, newest[..2]);
    assert!(
        err.contains("showing the newest 2 run(s); --all or --limit N for more"),
        "{err}"
    );
    let f1 = |r: &Value| r["best_val_f1"].as_f64().unwrap();
    assert!((f1(&rows[0]) - 0.65).abs() < 1e-12, "{rows}");
    assert_eq!(rows[0]["best_epoch"], 2);
    assert_eq!(rows[0]["duration_s"], 125);
    assert_eq!(rows[0]["experiment"], "alpha");

    // Runs from before the index (and summaries) are listed, in their place, and indexed.
    let (ids, rows, err) = list(storage, &["--all"]);
    assert_eq!(ids, newest);
    assert!(!err.contains("showing"), "{err}");
    assert!(
        (f1(&rows[3]) - 0.62).abs() < 1e-12,
        "lr-t002's metrics file: {rows}"
    );
    let root = Store::open(storage).unwrap();
    assert_eq!(root.list(layout::RUN_INDEX).await.unwrap().len(), 6);
    assert_eq!(list(storage, &[]).0, newest, "the default limit is 50");

    let (ids, ..) = list(storage, &["--phase", "failed,cancelled"]);
    assert_eq!(ids, ["alpha-run", "lr-t002"]);
    let (ids, ..) = list(storage, &["-e", "cnn", "--phase", "succeeded"]);
    assert_eq!(ids, ["cnn-20261203-090000-0f0f", "lr-t001"]);
    let (ids, _, err) = list(storage, &["--experiment", "alpha", "--limit", "1"]);
    assert_eq!(ids, ["a-first-by-name"]);
    assert!(err.contains("showing the newest 1 run(s)"), "{err}");

    let table = idcctl_env(&["list", "--limit", "3"], &[("IDC_STORAGE", storage)]);
    let table = text(&table.stdout);
    assert!(
        table.contains("best val F1") && table.contains("2m05s"),
        "{table}"
    );
    let at = |id: &str| table.find(id).unwrap_or_else(|| panic!("{id}: {table}"));
    assert!(at(newest[0]) < at(newest[1]) && at(newest[1]) < at(newest[2]));

    for bad in [
        &["list", "--phase", "done"][..],
        &["list", "--all", "--limit", "3"],
    ] {
        let out = idcctl_env(bad, &[("IDC_STORAGE", storage)]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[tokio::test]
async fn status_reads_a_run_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}/bucket", dir.path().display());
    bucket(&storage).await;
    let env = [("IDC_STORAGE", storage.as_str())];
    let out = idcctl_env(&["status", "lr-t002", "-o", "json"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["status"]["phase"], "failed");
    assert_eq!(p["last_epoch"]["epoch"], 3);
    let out = idcctl_env(&["status", "nope"], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no run nope in file://"),
        "{}",
        text(&out.stderr)
    );
}
