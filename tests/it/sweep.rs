//! Sweeps end to end on the local backend: `idcctl sweep run` over a tiny synthetic dataset is
//! killed once a trial has finished, then run again: the finished trials are kept as they
//! were, the running ones re-attached (not run again), no run is submitted twice, and every
//! trial ends. Needs the worker binary beside idcctl (`cargo test --workspace` builds it).
//! `sweep status` and `sweep report --html` are checked on the finished sweep and on a
//! recorded one (trials written as the driver writes them, two still running), the page loaded
//! in headless Chromium, which must render every plot.

use crate::common::browser::*;
use crate::common::*;
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
    let before = first_driver_is_killed_mid_way(&b);
    eprintln!(
        "killed after {:.1}s: {} trials ended, {} running",
        started.elapsed().as_secs_f64(),
        ended(&before).len(),
        trials_in(&before, "running").len()
    );
    let after = second_driver_resumes_without_running_a_trial_twice(&b, &before);
    every_trial_run_ended_as_its_trial(&b, after["trials"].as_array().unwrap());
    sweep_status_shows_the_best_trial_and_its_curve(&b, &after);
    // Its page: every plot rendered, one line per completed trial.
    check_page(&b.storage, NAME, b.dir.path(), &after);
    // Running the finished sweep again does nothing new.
    let out = idcctl(&["sweep", "run", b.manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(state(&b).unwrap()["trials"], after["trials"]);
    eprintln!("sweep test took {:.1}s", started.elapsed().as_secs_f64());
}

/// The trials of sweep state `s` that are no longer running.
fn ended(s: &Value) -> Vec<&Value> {
    s["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] != "running")
        .collect()
}

/// First driver: killed (as by a crash) once a trial has ended while another one runs; a
/// second driver meanwhile is refused. Returns the sweep's state when it was killed.
fn first_driver_is_killed_mid_way(b: &Bench) -> Value {
    let mut first = start_sweep(b, "first", &[]);
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(s) = state(b) {
            let running_with_run = trials_in(&s, "running")
                .iter()
                .any(|t| run_status(b, t["run_id"].as_str().unwrap()).is_some());
            if !ended(&s).is_empty() && running_with_run {
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
                return state(b).unwrap();
            }
        }
        if let Some(code) = first.try_wait().unwrap() {
            panic!(
                "the sweep ended ({code}) before it could be killed mid-way:\n{}",
                log_of(b, "first.err")
            );
        }
        assert!(
            Instant::now() < until,
            "timed out:\n{}",
            log_of(b, "first.err")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Second driver: picks up where the first stopped (state `before`), and finishes: the ended
/// trials are kept as they were, the running ones re-attached (not run again), one run per
/// trial. Returns the final state.
fn second_driver_resumes_without_running_a_trial_twice(b: &Bench, before: &Value) -> Value {
    let ended_before = ended(before);
    let running_before: Vec<&Value> = trials_in(before, "running");
    assert!(!ended_before.is_empty() && !running_before.is_empty());
    let created_before: Vec<(String, Option<Value>)> = running_before
        .iter()
        .map(|t| {
            let run = t["run_id"].as_str().unwrap().to_string();
            let created = run_status(b, &run).map(|s| s["created_at"].clone());
            (run, created)
        })
        .collect();
    let mut second = start_sweep(b, "second", &[]);
    let code = wait_exit(b, &mut second, "second.err", 300);
    let err = log_of(b, "second.err");
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
    let after = state(b).unwrap();
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
        let s = run_status(b, run).unwrap();
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
    after
}

/// Each trial's run ended in the phase its state says, after one attempt, with its epochs
/// recorded; a completed trial's value is its best epoch's.
fn every_trial_run_ended_as_its_trial(b: &Bench, trials: &[Value]) {
    for t in trials {
        let run = t["run_id"].as_str().unwrap();
        // A pruned trial's worker has stopped; its supervisor records that a moment later.
        let until = Instant::now() + Duration::from_secs(20);
        let s = loop {
            let s = run_status(b, run).unwrap();
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
}

/// The status command on the finished sweep (state `after`): the table and the record, the
/// best trial and its curve as values and as a sparkline; nothing runs any more.
fn sweep_status_shows_the_best_trial_and_its_curve(b: &Bench, after: &Value) {
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
    for t in trials_in(after, "completed") {
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
    // The best trial's curve, as values and as a sparkline; nothing runs any more.
    let curve: Vec<f64> = best["intermediate"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    assert!(
        table.contains(&format!(
            "best {} curve (roc_auc by epoch): ",
            best["id"].as_str().unwrap()
        )) && table.contains(&idc::sweep::live::sparkline(&curve)),
        "{table}"
    );
    assert!(!table.contains("running now:"), "{table}");
    assert_eq!(s["best_curve"], best["intermediate"]);
    assert_eq!(s["running"], serde_json::json!([]));
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
fn sweeps_that_cannot_work_as_written_are_refused_at_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sweep-synth.yaml");
    let good = std::fs::read_to_string(fixture)
        .unwrap()
        .replace("DATASET", "file:///nowhere")
        .replace("STORAGE", "file:///nowhere");
    let deep = format!("{}1{}", "[".repeat(20_000), "]".repeat(20_000));
    for (from, to, want) in [
        (
            "min_epochs: 1,",
            "min_epochs: 50,",
            "bad.yaml:25:22: pruner.min_epochs: 50 never prunes: ASHA's first rung is epoch 50, and the trials run 3 epoch(s) (base train.epochs)",
        ),
        (
            "parallelism: 2",
            "parallelism: 100000",
            "bad.yaml:23:1: parallelism 100000 is more than 256 trials at once",
        ),
        (
            "seed: 1,",
            "seed: -1,",
            "bad.yaml:24:22: sampler.seed: invalid value: integer `-1`, expected u64",
        ),
        (
            "max_trials: 6",
            &format!("max_trials: 6\nx: {deep}"),
            "bad.yaml:23:67: mappings and sequences nest deeper than 64 levels here",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        let f = dir.path().join("bad.yaml");
        std::fs::write(&f, good.replace(from, to)).unwrap();
        for args in [
            vec!["sweep", "run", f.to_str().unwrap()],
            vec!["validate", f.to_str().unwrap()],
        ] {
            let started = Instant::now();
            let out = idcctl(&args);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(want), "{args:?}: {err}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{args:?}: {:?}",
                started.elapsed()
            );
        }
    }
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

/// The searched paths of the fixture sweep.
const PARAMS: [&str; 3] = ["train.optimizer.lr", "train.batch_size", "train.sampling"];

/// Renders `sweep report NAME --html` of the sweep recorded as `state` and checks the page:
/// in the file, one polyline per completed trial, one axis per parameter and the objective,
/// one importance bar per parameter; in Chromium, every plot rendered. Returns the page.
fn check_page(storage: &str, name: &str, dir: &Path, state: &Value) -> String {
    let out_dir = dir.join("sweep-report");
    let out = idcctl_env(
        &[
            "sweep",
            "report",
            name,
            "--html",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[("IDC_STORAGE", storage)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("wrote "),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(&format!("sweep {name}: maximize roc_auc")),
        "{}",
        text(&out.stdout)
    );
    let page = out_dir.join("index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    for external in ["src=\"http", "href=\"http", "<link", "@import", "url(http"] {
        assert!(!html.contains(external), "the page fetches {external}");
    }
    let completed = trials_in(state, "completed")
        .iter()
        .filter(|t| t["value"].is_f64())
        .count();
    // Objective per trial and the best curve; importance and parallel coordinates from two
    // completed trials on.
    let plots = if completed >= 2 { 4 } else { 2 };
    assert_eq!(html.matches("<svg data-plot").count(), plots);
    if completed >= 2 {
        assert_eq!(
            html.matches("<polyline class=\"trial").count(),
            completed,
            "one line per completed trial"
        );
        assert_eq!(html.matches("<polyline class=\"trial best\"").count(), 1);
        assert_eq!(
            html.matches("<g class=\"axis\"").count(),
            PARAMS.len() + 1,
            "an axis per parameter and the objective"
        );
        assert!(html.contains("data-axis=\"objective\""));
        for p in PARAMS {
            assert!(html.contains(&format!("<g class=\"axis\" data-axis=\"{p}\"")));
            assert!(
                html.contains(&format!("<g class=\"bar\" data-param=\"{p}\">")),
                "no importance bar for {p}"
            );
        }
        assert!(html.contains(">lr (log)</text>") && html.contains(">weighted</text>"));
    } else {
        assert!(html.contains("needs at least two completed trials"));
    }
    let Some(browser) = browser_or_skip() else {
        return html;
    };
    let dom = checked_dom(&browser, &page);
    assert_eq!(
        (
            body_attr(&dom, "data-plots-ok")
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            body_attr(&dom, "data-plots-failed").unwrap()
        ),
        (plots, String::new()),
        "(plots rendered, failed)"
    );
    if completed >= 2 {
        assert_eq!(dom.matches("<polyline class=\"trial").count(), completed);
        assert_eq!(dom.matches("<g class=\"axis\"").count(), PARAMS.len() + 1);
        for p in PARAMS {
            assert!(dom.contains(&format!("<g class=\"bar\" data-param=\"{p}\">")));
        }
    }
    html
}

/// An epoch line of `metrics.jsonl` with validation ROC-AUC `auc`.
fn epoch_line(epoch: u32, auc: f64) -> String {
    use idc::metrics::{BinaryMetrics, Metrics, MetricsRecord};
    let r = MetricsRecord::Epoch {
        epoch,
        train_loss: 0.4,
        lr: 0.01,
        val: Metrics::Binary(BinaryMetrics {
            roc_auc: auc,
            ..Default::default()
        }),
        duration_s: 1.0,
        images_per_s: 100.0,
        best: false,
    };
    serde_json::to_string(&r).unwrap() + "\n"
}

#[test]
fn a_recorded_sweep_shows_its_running_trials_and_renders_its_page() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let storage = format!("file://{}", bucket.display());
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sweep-synth.yaml");
    let manifest = std::fs::read_to_string(fixture)
        .unwrap()
        .replace("DATASET", &format!("{storage}/datasets/synth"))
        .replace("STORAGE", &storage)
        .replace("max_trials: 6", "max_trials: 8");
    let sweep_dir = bucket.join("sweeps").join(NAME);
    std::fs::create_dir_all(&sweep_dir).unwrap();
    std::fs::write(sweep_dir.join("sweep.yaml"), &manifest).unwrap();
    let st = recorded_sweep_state();
    let state_bytes = serde_json::to_vec_pretty(&st).unwrap();
    std::fs::write(sweep_dir.join("state.json"), &state_bytes).unwrap();
    write_the_running_trials_runs(&bucket);
    let env = [("IDC_STORAGE", storage.as_str())];
    status_shows_the_running_and_the_lost_trial(&env);
    // The sweep's record is the driver's: status only read it.
    assert_eq!(
        std::fs::read(sweep_dir.join("state.json")).unwrap(),
        state_bytes
    );
    report_without_a_page_shares_out_the_importance(&env);

    let html = check_page(
        &storage,
        NAME,
        dir.path(),
        &serde_json::to_value(&st).unwrap(),
    );
    assert!(html.contains("its worker exited with code 1"));
    assert!(html.contains("data-trial=\"t007\" data-state=\"running\""));

    // Mistakes are the user's.
    let out = idcctl_env(&["sweep", "report", "nope"], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no sweep nope in"),
        "{}",
        text(&out.stderr)
    );
    let out = idcctl_env(&["sweep", "report", NAME, "--out", "x"], &env);
    assert_eq!(out.status.code(), Some(2), "--out needs --html");
}

/// Eight trials as the driver records them: six have ended (four completed, one pruned, one
/// failed); t007 trains, t008's supervisor is gone.
fn recorded_sweep_state() -> idc::sweep::state::SweepState {
    use TrialState::*;
    use idc::sweep::state::{SweepState, Trial, TrialState};
    let ended = [
        (Completed, 1e-3, 16, "weighted", vec![0.70, 0.78, 0.80]),
        (Pruned, 1e-4, 32, "shuffle", vec![0.55]),
        (Completed, 3e-3, 32, "weighted", vec![0.72, 0.82, 0.84]),
        (Failed, 5e-2, 16, "shuffle", vec![]),
        (Completed, 2e-2, 16, "shuffle", vec![0.60, 0.66, 0.69]),
        (Completed, 4e-4, 32, "shuffle", vec![0.65, 0.71, 0.74]),
        (Running, 1e-2, 32, "weighted", vec![0.75]),
        (Running, 6e-3, 16, "weighted", vec![]),
    ];
    let mut st = SweepState::new(NAME);
    for (i, (state, lr, batch, sampling, curve)) in ended.into_iter().enumerate() {
        let number = i as u32 + 1;
        let best = curve
            .iter()
            .enumerate()
            .fold(None, |b: Option<(u32, f64)>, (e, &v)| match b {
                Some((_, bv)) if bv >= v => b,
                _ => Some((e as u32 + 1, v)),
            });
        let ended = !matches!(state, Running | Failed);
        st.trials.push(Trial {
            id: Trial::id_of(number),
            number,
            run_id: format!("{NAME}-t{number:03}"),
            params: [
                (PARAMS[0].to_string(), serde_json::json!(lr)),
                (PARAMS[1].to_string(), serde_json::json!(batch)),
                (PARAMS[2].to_string(), serde_json::json!(sampling)),
            ]
            .into(),
            state,
            value: best.filter(|_| ended).map(|b| b.1),
            best_epoch: best.filter(|_| ended).map(|b| b.0),
            intermediate: curve,
            reason: (state == Failed).then(|| "its worker exited with code 1".into()),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
            interrupted: false,
        });
    }
    st
}

/// The runs of the two running trials in `bucket`: t007's supervisor is this test (alive
/// while idcctl looks), t008 has none.
fn write_the_running_trials_runs(bucket: &Path) {
    let run_record = |n: u32, supervisor: Value, metrics: String| {
        let id = format!("{NAME}-t{n:03}");
        let run = bucket.join("runs").join(&id);
        std::fs::create_dir_all(&run).unwrap();
        let status = serde_json::json!({
            "run_id": id, "experiment": NAME, "model": "logreg", "backend": "local",
            "phase": "running", "attempts": 1, "max_attempts": 1,
            "created_at": "2026-01-01T00:00:00Z", "started_at": null, "finished_at": null,
            "exit_codes": [], "reason": null, "supervisor": supervisor, "worker": null,
            "deadline_s": null,
        });
        std::fs::write(run.join("status.json"), status.to_string()).unwrap();
        std::fs::write(run.join("metrics.jsonl"), metrics).unwrap();
    };
    // This test stands in for t007's supervisor: it is alive while idcctl looks.
    let me = serde_json::to_value(idc::process::ProcessRef::current()).unwrap();
    run_record(7, me, epoch_line(1, 0.70) + &epoch_line(2, 0.75));
    run_record(8, Value::Null, String::new());
}

/// `sweep status` of the recorded sweep, as a table and as JSON: t007 running at epoch 2,
/// t008 lost, t003 the best with its curve.
fn status_shows_the_running_and_the_lost_trial(env: &[(&str, &str)]) {
    let out = idcctl_env(&["sweep", "status", NAME], env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for want in [
        "8 of 8 trials: 2 running, 4 completed, 1 pruned, 1 failed",
        "running now:",
        &format!("t007 (run {NAME}-t007): running, epoch 2/3, roc_auc 0.75"),
        &format!("t008 (run {NAME}-t008): lost, epoch 0/3"),
        "best: t003",
        &format!(
            "best t003 curve (roc_auc by epoch): 0.72 0.82 0.84  {}",
            idc::sweep::live::sparkline(&[0.72, 0.82, 0.84])
        ),
    ] {
        assert!(table.contains(want), "{want}:\n{table}");
    }
    let out = idcctl_env(&["sweep", "status", NAME, "-o", "json"], env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["best_curve"], serde_json::json!([0.72, 0.82, 0.84]));
    let running = s["running"].as_array().unwrap();
    assert_eq!(running.len(), 2, "{s:#}");
    assert_eq!(
        (
            &running[0]["trial"],
            &running[0]["phase"],
            &running[0]["epoch"]
        ),
        (
            &serde_json::json!("t007"),
            &serde_json::json!("running"),
            &serde_json::json!(2)
        )
    );
    assert_eq!(running[0]["epochs"], 3);
    assert_eq!(running[0]["latest"], 0.75);
    assert_eq!(running[1]["phase"], "lost");
}

/// The summary without a page: every parameter's importance, the shares adding up to 1.
fn report_without_a_page_shares_out_the_importance(env: &[(&str, &str)]) {
    let out = idcctl_env(&["sweep", "report", NAME], env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains("parameter importance (share of the roc_auc variance"),
        "{summary}"
    );
    for n in ["lr", "batch_size", "sampling"] {
        assert!(summary.contains(&format!("\n  {n} ")), "{n}:\n{summary}");
    }
    let out = idcctl_env(&["sweep", "report", NAME, "-o", "json"], env);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shares: f64 = r["importance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["share"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{r:#}");
    assert_eq!(r["best"]["trial"], "t003");
}
