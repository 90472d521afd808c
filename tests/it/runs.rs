//! Runs end to end on the local backend: submit, logs, status, list, report, cancel and resume,
//! and a crashed worker. Needs the worker binary beside idcctl (`cargo test --workspace` or
//! `.ci/test` builds it).

use crate::common::*;
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
    // The supervisor recorded the summary `list` shows, for the end it recorded.
    let summary = &s["status"]["summary"];
    assert_eq!(summary["ended_at"], s["status"]["finished_at"], "{s:#}");
    assert_eq!(summary["epochs"], 2);
    assert_eq!(summary["best_val_f1"]["f1"], list[0]["best_val_f1"]);
    assert_eq!(summary["best_val_f1"]["epoch"], list[0]["best_epoch"]);
    for follow in [false, true] {
        let mut args = vec!["logs", run.as_str(), "--attempt", "5"];
        if follow {
            args.push("-f");
        }
        let out = cmd(&b, &args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(&format!("--attempt 5: run {run} has 1 attempt(s)")),
            "{}",
            text(&out.stderr)
        );
    }

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
        s["images_per_s"].is_number() && s["status"]["worker"]["pid"].is_number()
    });
    // SAFETY: kills the worker the run record names, as an OOM killer would.
    unsafe {
        libc::kill(
            s["status"]["worker"]["pid"].as_i64().unwrap() as i32,
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

#[test]
fn a_run_whose_supervisor_and_worker_are_killed_is_lost_then_resumes_to_the_same_result() {
    let b = setup(
        "  epochs: 6\n  model: {kind: simple_cnn, width: 8}\n  checkpoint_every: 1s\n",
        "",
    );
    let baseline = submit(&b);
    let run = submit(&b);
    let s = wait_for(&b, &run, |s| {
        s["last_epoch"]["epoch"].as_i64() >= Some(1) && s["status"]["worker"]["pid"].is_number()
    });
    // What a reboot or an OOM kill of both does: no chance to record anything.
    for who in ["supervisor", "worker"] {
        let pid = s["status"][who]["pid"].as_i64().unwrap() as i32;
        // SAFETY: kills the processes the run record names.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let sup = s["status"]["supervisor"]["pid"].as_i64().unwrap();
    let s = wait_for(&b, &run, |s| s["status"]["phase"] != "running");
    assert_eq!(s["status"]["phase"], "lost", "{s:#}");
    let reason = s["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("its supervisor (pid {sup} on "))
            && reason.contains("is gone, last heard from at ")
            && reason.contains(&format!("idcctl resume {run}")),
        "{reason}"
    );
    assert!(s["status"]["finished_at"].is_string(), "{s:#}");
    let list: serde_json::Value =
        serde_json::from_slice(&cmd(&b, &["list", "-o", "json"]).stdout).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == run.as_str())
        .unwrap();
    assert_eq!(row["phase"], "lost", "{list:#}");

    // Cancelling a lost run records it and signals nothing: nothing of it runs.
    let out = cmd(&b, &["cancel", &run]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nothing was running"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(status_json(&b, &run)["status"]["phase"], "cancelled");

    let out = cmd(&b, &["resume", &run]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for(&b, &run, |s| s["status"]["phase"] == "succeeded");
    wait_for(&b, &baseline, |s| s["status"]["phase"] == "succeeded");
    let report = |id: &str| -> serde_json::Value {
        let path = Path::new(b.storage.strip_prefix("file://").unwrap())
            .join("runs")
            .join(id)
            .join("report.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let (resumed, uninterrupted) = (report(&run), report(&baseline));
    for m in ["accuracy", "balanced_accuracy", "f1", "roc_auc", "loss"] {
        assert_eq!(resumed["test"][m], uninterrupted["test"][m], "test {m}");
    }
}
