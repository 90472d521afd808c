//! Runs end to end on the local backend: submit, logs, status, list, report, cancel and resume,
//! and a crashed worker. Needs the worker binary beside idcctl (`cargo test --workspace` or
//! `.ci/test` builds it).

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

struct Bench {
    _dir: tempfile::TempDir,
    storage: String,
    manifest: std::path::PathBuf,
}

fn setup(train: &str, extra: &str) -> Bench {
    require_worker();
    let dir = tempfile::tempdir().unwrap();
    let (storage, ds) = staged_synth_bucket(dir.path(), 8, 120);
    let manifest = dir.path().join("exp.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: idc/v1\nkind: Experiment\nname: e2e\ndataset: {{url: '{ds}'}}\ntrain:\n  device: cpu\n  batch_size: 64\n  log_every_steps: 2\n{train}storage: '{storage}'\n{extra}"
        ),
    )
    .unwrap();
    Bench {
        _dir: dir,
        storage,
        manifest,
    }
}

fn cmd(b: &Bench, args: &[&str]) -> std::process::Output {
    idcctl_env(args, &[("IDC_STORAGE", &b.storage)])
}

fn status_json(b: &Bench, run: &str) -> serde_json::Value {
    let out = cmd(b, &["status", run, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_for(b: &Bench, run: &str, what: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let s = status_json(b, run);
        if what(&s) {
            return s;
        }
        assert!(Instant::now() < until, "timed out: {s:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn submit(b: &Bench) -> String {
    let out = cmd(b, &["submit", b.manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[test]
fn submit_follow_status_list_report() {
    let b = setup("  epochs: 2\n  model: {kind: simple_cnn, width: 8}\n", "");
    let run = submit(&b);
    assert!(run.starts_with("e2e-"), "{run}");
    let out = cmd(&b, &["logs", &run, "-f"]);
    let log = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        log.contains("epoch 1 step") && log.contains("test (best epoch"),
        "{log}"
    );
    assert!(
        text(&out.stderr).contains(&format!("run {run} succeeded")),
        "{}",
        text(&out.stderr)
    );

    let s = status_json(&b, &run);
    assert_eq!(s["status"]["phase"], "succeeded");
    assert_eq!(s["status"]["exit_codes"], serde_json::json!([0]));
    assert_eq!(s["last_epoch"]["epoch"], 2);
    let table = text(&cmd(&b, &["status", &run]).stdout);
    assert!(
        table.contains("SUCCEEDED") && table.contains("epoch 2/2"),
        "{table}"
    );

    let list: serde_json::Value =
        serde_json::from_slice(&cmd(&b, &["list", "-o", "json"]).stdout).unwrap();
    assert_eq!(list[0]["run_id"], run.as_str());
    assert!(list[0]["best_val_f1"].as_f64().unwrap() > 0.0);
    assert!(list[0]["duration_s"].as_i64().unwrap() >= 1);

    let out_dir = b._dir.path().join("pulled");
    let out = cmd(&b, &["report", &run, "--out", out_dir.to_str().unwrap()]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in [
        "balanced accuracy",
        "ROC-AUC",
        "confusion at 0.5",
        "at val threshold",
    ] {
        assert!(report.contains(want), "{report}");
    }
    assert!(out_dir.join("report.json").exists() && out_dir.join("metrics.jsonl").exists());
}

#[test]
fn cancel_mid_run_then_resume() {
    let b = setup("  epochs: 4\n  model: {kind: simple_cnn, width: 8}\n", "");
    let run = submit(&b);
    wait_for(&b, &run, |s| s["images_per_s"].is_number());
    let out = cmd(&b, &["cancel", &run]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = wait_for(&b, &run, |s| s["status"]["phase"] == "cancelled");
    assert_eq!(
        s["status"]["exit_codes"],
        serde_json::json!([3]),
        "the worker checkpointed on SIGTERM: {s:#}"
    );
    let root = Path::new(b.storage.strip_prefix("file://").unwrap())
        .join("runs")
        .join(&run);
    assert!(root.join("checkpoints/latest").exists());

    let out = cmd(&b, &["resume", &run]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = wait_for(&b, &run, |s| s["status"]["phase"] == "succeeded");
    assert_eq!(s["status"]["attempts"], 2);
    let log2 = std::fs::read_to_string(root.join("logs/attempt-2.log")).unwrap();
    assert!(log2.contains("resumed from checkpoints/"), "{log2}");
    assert!(root.join("report.json").exists());
}

#[test]
fn a_crashed_worker_fails_the_run_with_a_reason_and_a_log() {
    let b = setup(
        "  epochs: 50\n  model: {kind: simple_cnn, width: 8}\n",
        "retries: 0\n",
    );
    let run = submit(&b);
    let s = wait_for(&b, &run, |s| {
        s["images_per_s"].is_number() && s["status"]["worker_pid"].is_number()
    });
    // SAFETY: kills the worker the run record names, as an OOM killer would.
    unsafe {
        libc::kill(
            s["status"]["worker_pid"].as_i64().unwrap() as i32,
            libc::SIGKILL,
        )
    };
    let s = wait_for(&b, &run, |s| s["status"]["phase"] == "failed");
    assert_eq!(s["status"]["reason"], "worker killed by signal 9", "{s:#}");
    assert_eq!(s["status"]["exit_codes"], serde_json::json!([-9]));
    let out = cmd(&b, &["logs", &run]);
    assert!(
        text(&out.stdout).contains("epoch 1 step"),
        "the log up to the crash is readable"
    );
    let out = cmd(&b, &["report", &run]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("has no report yet (failed: worker killed by signal 9)"),
        "{}",
        text(&out.stderr)
    );
}
