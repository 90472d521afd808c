//! Sweeps end to end on the local backend: `idcctl sweep run` over a tiny synthetic dataset is
//! killed once a trial has finished, then run again: the finished trials are kept as they
//! were, the running ones re-attached (not run again), no run is submitted twice, and every
//! trial ends. Needs the worker binary beside idcctl (`cargo test --workspace` builds it).

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "synth-sweep";

struct Bench {
    dir: tempfile::TempDir,
    storage: String,
    bucket: PathBuf,
    manifest: PathBuf,
}

fn setup(edit: impl Fn(String) -> String) -> Bench {
    require_worker();
    let dir = tempfile::tempdir().unwrap();
    let (storage, ds) = staged_synth_bucket(dir.path(), 8, 100);
    let bucket = dir.path().join("bucket");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sweep-synth.yaml");
    let text = edit(
        std::fs::read_to_string(fixture)
            .unwrap()
            .replace("DATASET", &ds)
            .replace("STORAGE", &storage),
    );
    let manifest = dir.path().join("sweep.yaml");
    std::fs::write(&manifest, text).unwrap();
    Bench {
        dir,
        storage,
        bucket,
        manifest,
    }
}

/// Waits for `child` to exit, at most `secs` seconds.
fn wait_exit(b: &Bench, child: &mut Child, log: &str, secs: u64) -> std::process::ExitStatus {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            return code;
        }
        if Instant::now() > until {
            child.kill().unwrap();
            panic!("idcctl sweep run timed out:\n{}", log_of(b, log));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `idcctl sweep run` (with `extra` arguments), its stderr to `log`.
fn start_sweep(b: &Bench, log: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_idcctl"))
        .args([
            "sweep",
            "run",
            b.manifest.to_str().unwrap(),
            "--poll",
            "0.3",
        ])
        .args(extra)
        .env("RUST_LOG", "warn,idc=info")
        .stdout(Stdio::from(
            std::fs::File::create(b.dir.path().join(format!("{log}.out"))).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(b.dir.path().join(format!("{log}.err"))).unwrap(),
        ))
        .spawn()
        .expect("idcctl runs")
}

fn log_of(b: &Bench, name: &str) -> String {
    std::fs::read_to_string(b.dir.path().join(name)).unwrap_or_default()
}

fn state(b: &Bench) -> Option<Value> {
    let bytes = std::fs::read(b.bucket.join("sweeps").join(NAME).join("state.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn run_status(b: &Bench, run: &str) -> Option<Value> {
    let bytes = std::fs::read(b.bucket.join("runs").join(run).join("status.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn trials_in<'a>(s: &'a Value, state: &str) -> Vec<&'a Value> {
    s["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == state)
        .collect()
}

#[test]
fn a_killed_sweep_resumes_with_its_finished_trials_kept() {
    let b = setup(|m| m);
    let started = Instant::now();
    let out = idcctl(&["validate", b.manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("valid: sweep synth-sweep, 3 parameters, 6 trials"),
        "{}",
        text(&out.stdout)
    );

    // First driver: killed (as by a crash) once a trial has ended while another one runs.
    let mut first = start_sweep(&b, "first", &[]);
    let until = Instant::now() + Duration::from_secs(240);
    let before = loop {
        if let Some(s) = state(&b) {
            let ended = s["trials"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["state"] != "running")
                .count();
            let running_with_run = trials_in(&s, "running")
                .iter()
                .any(|t| run_status(&b, t["run_id"].as_str().unwrap()).is_some());
            if ended >= 1 && running_with_run {
                // One driver at a time.
                let out = idcctl(&["sweep", "run", b.manifest.to_str().unwrap()]);
                assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
                assert!(
                    text(&out.stderr).contains("is being driven by another idcctl (pid"),
                    "{}",
                    text(&out.stderr)
                );
                first.kill().unwrap();
                first.wait().unwrap();
                break state(&b).unwrap();
            }
        }
        if let Some(code) = first.try_wait().unwrap() {
            panic!(
                "the sweep ended ({code}) before it could be killed mid-way:\n{}",
                log_of(&b, "first.err")
            );
        }
        assert!(
            Instant::now() < until,
            "timed out:\n{}",
            log_of(&b, "first.err")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ended_before: Vec<&Value> = before["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] != "running")
        .collect();
    let running_before: Vec<&Value> = trials_in(&before, "running");
    assert!(!ended_before.is_empty() && !running_before.is_empty());
    let created_before: Vec<(String, Option<Value>)> = running_before
        .iter()
        .map(|t| {
            let run = t["run_id"].as_str().unwrap().to_string();
            let created = run_status(&b, &run).map(|s| s["created_at"].clone());
            (run, created)
        })
        .collect();
    eprintln!(
        "killed after {:.1}s: {} trials ended, {} running",
        started.elapsed().as_secs_f64(),
        ended_before.len(),
        running_before.len()
    );

    // Second driver: picks up where the first stopped, and finishes.
    let mut second = start_sweep(&b, "second", &[]);
    let code = wait_exit(&b, &mut second, "second.err", 300);
    let err = log_of(&b, "second.err");
    assert!(code.success(), "{err}");
    assert!(
        err.contains(&format!(
            "resuming: {} trials ended, re-attaching to {} running",
            ended_before.len(),
            running_before.len()
        )),
        "{err}"
    );
    for t in &running_before {
        assert!(
            err.contains(&format!(
                "{}: re-attached to run {}",
                t["id"].as_str().unwrap(),
                t["run_id"].as_str().unwrap()
            )),
            "{err}"
        );
    }
    let after = state(&b).unwrap();
    let trials = after["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6, "max_trials trials: {after:#}");
    assert!(after["finished_at"].is_string());
    for t in trials {
        assert_ne!(t["state"], "running", "every trial ended: {t:#}");
    }
    assert!(
        !trials_in(&after, "completed").is_empty(),
        "some trial completed: {after:#}"
    );
    // The trials that had ended are exactly as they were.
    for t in &ended_before {
        let now = trials.iter().find(|n| n["id"] == t["id"]).unwrap();
        assert_eq!(now, *t, "an ended trial changed");
    }
    // Re-attached, not run again: same run record, one attempt.
    for (run, created) in &created_before {
        let s = run_status(&b, run).unwrap();
        assert_eq!(
            &Some(s["created_at"].clone()),
            created,
            "{run} was re-created"
        );
        assert_eq!(s["attempts"], 1, "{run} ran once: {s:#}");
    }
    // One run per trial, named after it; nothing else in runs/.
    let runs: BTreeSet<String> = std::fs::read_dir(b.bucket.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = trials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            assert_eq!(t["run_id"], format!("{NAME}-t{:03}", i + 1));
            t["run_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(runs, expected);
    for t in trials {
        let run = t["run_id"].as_str().unwrap();
        // A pruned trial's worker has stopped; its supervisor records that a moment later.
        let until = Instant::now() + Duration::from_secs(20);
        let s = loop {
            let s = run_status(&b, run).unwrap();
            if ["succeeded", "failed", "cancelled"].contains(&s["phase"].as_str().unwrap())
                || Instant::now() > until
            {
                break s;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let phases: &[&str] = match t["state"].as_str().unwrap() {
            "completed" => &["succeeded"],
            // Cancelled, unless its last epoch ended as the cancel came.
            "pruned" => &["cancelled", "succeeded"],
            other => panic!("trial {} {other}: {t:#}", t["id"]),
        };
        assert!(
            phases.contains(&s["phase"].as_str().unwrap()),
            "{t:#} {s:#}"
        );
        assert_eq!(s["attempts"], 1, "{s:#}");
        let epochs = t["intermediate"].as_array().unwrap().len();
        assert!(
            (1..=3).contains(&epochs),
            "{} epochs recorded: {t:#}",
            epochs
        );
        if t["state"] == "completed" {
            assert_eq!(epochs, 3);
            let v = t["value"].as_f64().unwrap();
            let best = t["intermediate"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_f64)
                .fold(f64::MIN, f64::max);
            assert_eq!(v, best, "the objective is the best epoch's ROC-AUC");
        }
    }

    // The status command: the table and the record.
    let out = idcctl_env(
        &["sweep", "status", NAME, "-o", "json"],
        &[("IDC_STORAGE", &b.storage)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["trials"].as_array().unwrap().len(), 6);
    assert_eq!(s["objective"]["metric"], "roc_auc");
    let best = s["best"].clone();
    let best_value = best["value"].as_f64().unwrap();
    for t in trials_in(&after, "completed") {
        assert!(t["value"].as_f64().unwrap() <= best_value);
    }
    let out = idcctl_env(&["sweep", "status", NAME], &[("IDC_STORAGE", &b.storage)]);
    let table = text(&out.stdout);
    assert!(
        table.contains(&format!("best: {}", best["id"].as_str().unwrap()))
            && table.contains("finished at")
            && table.contains("batch_size"),
        "{table}"
    );
    // Running the finished sweep again does nothing new.
    let out = idcctl(&["sweep", "run", b.manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(state(&b).unwrap()["trials"], after["trials"]);
    eprintln!("sweep test took {:.1}s", started.elapsed().as_secs_f64());
}

#[test]
fn sweep_manifest_mistakes_exit_2_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sweep-synth.yaml");
    let bad = std::fs::read_to_string(fixture)
        .unwrap()
        .replace("DATASET", "file:///nowhere")
        .replace("STORAGE", "file:///nowhere")
        .replace(
            "{kind: categorical, choices: [16, 32]}",
            "{kind: categorical, choices: [0, 32]}",
        );
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, bad).unwrap();
    for args in [
        vec!["sweep", "run", f.to_str().unwrap()],
        vec!["validate", f.to_str().unwrap()],
    ] {
        let out = idcctl(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr)
                .contains("bad.yaml:19:3: search.train.batch_size = 0: train.batch_size"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = idcctl_env(
        &["sweep", "status", "nope"],
        &[("IDC_STORAGE", &format!("file://{}", dir.path().display()))],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no sweep nope in"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_base_file_is_read_beside_the_sweep_and_its_errors_located_there() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sweep-synth.yaml"),
    )
    .unwrap()
    .replace("DATASET", "file:///nowhere")
    .replace("STORAGE", "file:///nowhere");
    // The fixture's inline base as an experiment manifest of its own, one folder down.
    let (head, rest) = fixture.split_once("base:\n").unwrap();
    let (block, tail) = rest.split_once("search:").unwrap();
    let fields: String = block.lines().map(|l| format!("{}\n", &l[2..])).collect();
    let experiment = format!("apiVersion: idc/v1\nkind: Experiment\nname: synth\n{fields}");
    std::fs::create_dir(dir.path().join("exp")).unwrap();
    let exp = dir.path().join("exp/synth.yaml");
    std::fs::write(&exp, &experiment).unwrap();
    let sweep = dir.path().join("sweep.yaml");
    let base_line = head.lines().count() + 1;
    std::fs::write(&sweep, format!("{head}base: exp/synth.yaml\nsearch:{tail}")).unwrap();
    let sweep_arg = sweep.to_str().unwrap();
    for args in [
        vec!["sweep", "validate", sweep_arg],
        vec!["validate", sweep_arg],
    ] {
        let out = idcctl(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with(&format!(
                "{sweep_arg}: valid: sweep synth-sweep, 3 parameters"
            )),
            "{}",
            text(&out.stdout)
        );
    }
    // A mistake in the experiment file is reported in it.
    std::fs::write(&exp, experiment.replace("  epochs: 3", "  epochz: 3")).unwrap();
    for args in [
        vec!["sweep", "validate", sweep_arg],
        vec!["validate", sweep_arg],
    ] {
        let out = idcctl(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(&format!(
                "{}:7:3: train: unknown field `epochz` (did you mean `epochs`?)",
                exp.display()
            )),
            "{}",
            text(&out.stderr)
        );
    }
    // A missing one at the sweep's base: line, naming the file.
    std::fs::remove_file(&exp).unwrap();
    let out = idcctl(&["sweep", "validate", sweep_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!(
            "{sweep_arg}:{base_line}:1: base: cannot read the experiment manifest {}",
            exp.display()
        )),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ctrl_c_with_cancel_on_exit_checkpoints_the_trials_and_a_rerun_resumes_them() {
    // Longer trials, none pruned: the interrupt lands while they train.
    let b = setup(|m| {
        m.replace("epochs: 3", "epochs: 8")
            .replace("max_trials: 6", "max_trials: 3")
            .replace(
                "pruner: {kind: asha, min_epochs: 1, reduction_factor: 2}",
                "pruner: {kind: none}",
            )
    });
    let mut first = start_sweep(&b, "first", &["--cancel-on-exit"]);
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        // A trial that has checkpointed an epoch and has several to go.
        let training = state(&b).is_some_and(|s| {
            trials_in(&s, "running").iter().any(|t| {
                let run = t["run_id"].as_str().unwrap();
                let epochs =
                    std::fs::read_to_string(b.bucket.join("runs").join(run).join("metrics.jsonl"))
                        .map(|m| {
                            m.lines()
                                .filter(|l| l.contains(r#""kind":"epoch""#))
                                .count()
                        })
                        .unwrap_or(0);
                (1..=4).contains(&epochs)
                    && run_status(&b, run).is_some_and(|r| r["phase"] == "running")
            })
        });
        if training {
            break;
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "{}",
            log_of(&b, "first.err")
        );
        assert!(
            Instant::now() < until,
            "timed out:\n{}",
            log_of(&b, "first.err")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: sends SIGINT (Ctrl-C) to the idcctl this test started.
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    let code = wait_exit(&b, &mut first, "first.err", 120);
    let err = log_of(&b, "first.err");
    assert_eq!(code.code(), Some(130), "{err}");
    assert!(err.contains("cancelled after a checkpoint"), "{err}");
    let stopped = state(&b).unwrap();
    let interrupted: Vec<String> = trials_in(&stopped, "running")
        .iter()
        .map(|t| {
            assert_eq!(t["interrupted"], true, "{t:#}");
            t["run_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(!interrupted.is_empty(), "{stopped:#}");
    let cancelled: Vec<&String> = interrupted
        .iter()
        .filter(|r| run_status(&b, r).is_some_and(|s| s["phase"] == "cancelled"))
        .collect();
    assert!(!cancelled.is_empty(), "a trial was stopped mid-run");

    let mut second = start_sweep(&b, "second", &[]);
    let code = wait_exit(&b, &mut second, "second.err", 300);
    let err = log_of(&b, "second.err");
    assert!(code.success(), "{err}");
    for run in &cancelled {
        assert!(
            err.contains(&format!("resumed run {run} from its checkpoint")),
            "{err}"
        );
        let s = run_status(&b, run).unwrap();
        assert_eq!(s["phase"], "succeeded", "{s:#}");
        assert_eq!(s["attempts"], 2, "{s:#}");
        let log2 =
            std::fs::read_to_string(b.bucket.join("runs").join(run).join("logs/attempt-2.log"))
                .unwrap();
        assert!(log2.contains("resumed from checkpoints/"), "{log2}");
    }
    let after = state(&b).unwrap();
    assert_eq!(trials_in(&after, "completed").len(), 3, "{after:#}");
    for t in after["trials"].as_array().unwrap() {
        assert_eq!(t["intermediate"].as_array().unwrap().len(), 8, "{t:#}");
        assert!(t.get("interrupted").is_none(), "{t:#}");
    }
}

#[test]
fn shipped_sweep_manifests_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut names = vec![];
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if !idc::sweep::manifest::is_sweep(&std::fs::read_to_string(&path).unwrap()) {
            continue;
        }
        let (s, _) = idc::sweep::manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
        names.push(s.name);
    }
    names.sort();
    assert_eq!(names, ["cnn-sweep", "cnn-sweep-gpu", "quickstart-sweep"]);
}
