//! TensorBoard event files end to end: a short run on the local backend, `idcctl tensorboard`
//! gathering its events, and TensorBoard's own `EventAccumulator` (PyPI `tensorboard`, from
//! the venv `.ci/test` sets up: `IDC_TEST_TENSORBOARD_PYTHON`) reading them back; every scalar
//! must equal the run's `metrics.jsonl` and report.
//!
//! Without that venv the test says so and stops, unless `IDC_TEST_REQUIRE_TENSORBOARD=1` (set
//! under CI), which makes it a failure.

use crate::common::*;
use idc::metrics::{MetricName, MetricsRecord};
use std::collections::BTreeMap;
use std::path::Path;

/// tag -> [(step, value)], as TensorBoard reads the log folder.
type Scalars = BTreeMap<String, Vec<(i64, f32)>>;

fn tensorboard_python() -> Option<String> {
    match std::env::var("IDC_TEST_TENSORBOARD_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var("IDC_TEST_REQUIRE_TENSORBOARD").as_deref() == Ok("1") => {
            panic!("IDC_TEST_REQUIRE_TENSORBOARD=1 but IDC_TEST_TENSORBOARD_PYTHON is not set")
        }
        Err(_) => None,
    }
}

fn read_with_tensorboard(python: &str, logdir: &Path) -> Scalars {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/read_events.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(logdir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: BTreeMap<String, Vec<(i64, f32, f64)>> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|(tag, points)| (tag, points.into_iter().map(|(s, v, _)| (s, v)).collect()))
        .collect()
}

#[test]
fn tensorboard_reads_every_scalar_the_run_logged() {
    let Some(python) = tensorboard_python() else {
        eprintln!(
            "IDC_TEST_TENSORBOARD_PYTHON not set: event files not read by TensorBoard (run .ci/test)"
        );
        return;
    };
    require_worker();
    let dir = tempfile::tempdir().unwrap();
    let (storage, dataset) = staged_synth_bucket(dir.path(), 6, 100);
    let manifest = dir.path().join("tb.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: idc/v1\nkind: Experiment\nname: tb\ndataset: {{url: '{dataset}'}}\ntrain:\n  device: cpu\n  epochs: 3\n  batch_size: 32\n  log_every_steps: 3\n  model: {{kind: logreg}}\nstorage: '{storage}'\n"
        ),
    )
    .unwrap();
    let run = submit_wait(manifest.to_str().unwrap());
    let run_dir = Path::new(storage.strip_prefix("file://").unwrap())
        .join("runs")
        .join(&run);
    let records = idc::metrics::parse_jsonl(&std::fs::read(run_dir.join("metrics.jsonl")).unwrap());
    let report = report_json(&storage, &run);

    let logdir = dir.path().join("tb");
    let gather = |dir: &Path| {
        let out = idcctl_env(
            &["tensorboard", &run, "--logdir", dir.to_str().unwrap()],
            &[("IDC_STORAGE", &storage)],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).trim(),
            format!("tensorboard --logdir {}", dir.display())
        );
        text(&out.stderr)
    };
    let said = gather(&logdir);
    assert!(!said.contains("made from metrics.jsonl"), "{said}");
    // The run's folder, as `tensorboard --logdir` finds it under the log folder.
    let scalars = read_with_tensorboard(&python, &logdir.join(&run));

    let mut steps = 0;
    let mut epochs = 0;
    for r in &records {
        match r {
            MetricsRecord::Step { step, loss, .. } => {
                assert!(
                    scalars["train/loss"].contains(&(*step as i64, *loss as f32)),
                    "step {step}"
                );
                steps += 1;
            }
            MetricsRecord::Epoch {
                epoch,
                val,
                train_loss,
                ..
            } => {
                let at = |tag: &str| {
                    scalars[tag]
                        .iter()
                        .find(|(s, _)| *s == *epoch as i64)
                        .unwrap_or_else(|| panic!("{tag} has no epoch {epoch}"))
                        .1
                };
                assert_eq!(at("train/epoch_loss"), *train_loss as f32);
                for m in MetricName::ALL {
                    let tag = idc::tracking::tag("val", m);
                    assert_eq!(at(&tag), m.of(val) as f32, "{tag} at epoch {epoch}");
                }
                epochs += 1;
            }
        }
    }
    assert_eq!(epochs, 3);
    assert!(steps >= 3, "{steps} step records");
    assert_eq!(scalars["train/loss"].len(), steps, "no duplicated points");
    assert_eq!(scalars["val/f1"].len(), 3);
    let best = report["best_epoch"].as_i64().unwrap();
    assert_eq!(
        scalars["test/f1"],
        [(best, report["test"]["f1"].as_f64().unwrap() as f32)]
    );

    // A run that predates event files: they are made from its records, with the same scalars.
    std::fs::remove_dir_all(run_dir.join("tensorboard")).unwrap();
    let remade = dir.path().join("tb-remade");
    let said = gather(&remade);
    assert!(said.contains("made from metrics.jsonl"), "{said}");
    assert_eq!(read_with_tensorboard(&python, &remade.join(&run)), scalars);
}
