//! The worker end to end on CPU, on synthetic data staged by the project: each model learns,
//! a run stopped by SIGTERM resumes to the same result, and bad input fails clearly.

use idc::dataset::synth::{self, SynthOptions};
use idc::metrics::{ErrorKind, MISCLASSIFIED_PER_KIND, Report};
use idc::stage::{self, StageHooks, StageOptions};
use idc::store::Store;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// One staged synthetic dataset shared by the tests (12 patients x 250 patches).
fn dataset() -> &'static str {
    static DS: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    &DS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            patients: 12,
            per_patient: 250,
            seed: 5,
            ..Default::default()
        };
        synth::generate(&dir.path().join("src"), &opts).unwrap();
        let url = format!("file://{}/bucket/datasets/synth", dir.path().display());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = Store::open(&url).unwrap();
        rt.block_on(stage::stage(
            &dir.path().join("src"),
            &store,
            &StageOptions::default(),
            &StageHooks::default(),
        ))
        .unwrap();
        (dir, url)
    })
    .1
}

fn write_spec(dir: &Path, train: &str) -> String {
    let path = dir.join("spec.yaml");
    let spec = format!("run_id: test\ndataset: {}\ntrain:\n{train}", dataset());
    std::fs::write(&path, spec).unwrap();
    path.to_str().unwrap().to_string()
}

fn worker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idc-worker"))
        .args(args)
        .output()
        .unwrap()
}

/// Starts `idc-worker run` on `spec`, with its output lines to read as it prints them.
fn spawn_worker(
    spec: &str,
    out: &str,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idc-worker"))
        .args(["run", "--spec", spec, "--out", out])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

fn report(out: &str) -> Report {
    let path = out.strip_prefix("file://").unwrap();
    serde_json::from_slice(&std::fs::read(Path::new(path).join("report.json")).unwrap()).unwrap()
}

fn train(train: &str) -> (tempfile::TempDir, Report) {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), train);
    let out = format!("file://{}/run", dir.path().display());
    let o = worker(&["run", "--spec", &spec, "--out", &out]);
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let r = report(&out);
    (dir, r)
}

const COMMON: &str = "  device: cpu\n  batch_size: 64\n  log_every_steps: 5\n";

#[test]
fn simple_cnn_learns() {
    let (_d, r) = train(&format!(
        "{COMMON}  epochs: 3\n  model: {{kind: simple_cnn, width: 16, dropout: 0.2}}\n"
    ));
    assert!(
        r.test.balanced_accuracy > 0.8,
        "balanced accuracy {}",
        r.test.balanced_accuracy
    );
    assert!(r.test.roc_auc > 0.85, "ROC-AUC {}", r.test.roc_auc);
    assert_eq!(r.epochs_run, 3);
    assert_eq!(r.model, "simple_cnn");
    // The most confident errors at 0.5: false positives by descending probability, then false
    // negatives by ascending probability, each located in a test shard.
    let (fp, fn_): (Vec<_>, Vec<_>) = r
        .misclassified
        .iter()
        .partition(|m| m.error == ErrorKind::FalsePositive);
    assert!(!fp.is_empty() && !fn_.is_empty(), "{:#?}", r.misclassified);
    assert!(fp.len() <= MISCLASSIFIED_PER_KIND && fn_.len() <= MISCLASSIFIED_PER_KIND);
    assert_eq!(
        fp.len() as u64,
        r.test.confusion.fp.min(MISCLASSIFIED_PER_KIND as u64)
    );
    assert_eq!(
        fn_.len() as u64,
        r.test.confusion.fn_.min(MISCLASSIFIED_PER_KIND as u64)
    );
    assert!(fp.iter().all(|m| m.label == 0 && m.probability >= 0.5));
    assert!(fn_.iter().all(|m| m.label == 1 && m.probability < 0.5));
    assert!(fp.windows(2).all(|w| w[0].probability >= w[1].probability));
    assert!(fn_.windows(2).all(|w| w[0].probability <= w[1].probability));
    assert!(
        r.misclassified
            .iter()
            .all(|m| m.shard.starts_with("shards/test-"))
    );
}

#[test]
fn logreg_learns_part_of_the_signal_with_sgd_and_cross_entropy() {
    // The synthetic set is built so that a linear model on pixels gets only part of the way.
    let spec = format!(
        "{COMMON}  epochs: 3\n  model: {{kind: logreg}}\n  loss: {{kind: cross_entropy}}\n  optimizer: {{kind: sgd, lr: 0.001, momentum: 0.9}}\n  augmentation: {{rotate90: 0, flip_lr: 0, flip_tb: 0, color: 0, contrast: 0}}\n"
    );
    let (_d, r) = train(&spec);
    assert!(
        r.test.balanced_accuracy > 0.6,
        "balanced accuracy {}",
        r.test.balanced_accuracy
    );
}

#[test]
fn resnet34_learns() {
    let spec = format!(
        "{COMMON}  epochs: 2\n  max_steps_per_epoch: 20\n  model: {{kind: resnet34}}\n  loss: {{kind: cross_entropy}}\n  optimizer: {{kind: adamw, lr: 0.001, weight_decay: 0.01}}\n  schedule: {{kind: one_cycle, max_lr: 0.002}}\n"
    );
    let (_d, r) = train(&spec);
    assert!(
        r.test.balanced_accuracy > 0.65,
        "balanced accuracy {}",
        r.test.balanced_accuracy
    );
}

#[test]
fn a_run_stopped_by_sigterm_resumes_to_the_same_result() {
    // SGD with Nesterov momentum: the momentum buffers must survive the restart.
    let spec_body = format!(
        "{COMMON}  epochs: 3\n  model: {{kind: simple_cnn, width: 8, dropout: 0.3}}\n  schedule: {{kind: cosine}}\n  optimizer: {{kind: sgd, lr: 0.01, momentum: 0.9, nesterov: true}}\n"
    );
    let (_a, uninterrupted) = train(&spec_body);

    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &spec_body);
    let out = format!("file://{}/run", dir.path().display());
    let (mut child, mut lines) = spawn_worker(&spec, &out);
    // Stop it in its second epoch, mid-way.
    for line in lines.by_ref() {
        if line.unwrap().contains("epoch 2 step") {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            break;
        }
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "exit code 3 after a checkpoint: {rest:#?}"
    );
    assert!(
        rest.iter()
            .any(|l| l.contains("checkpoint checkpoints/epoch-0002-step-")),
        "{rest:#?}"
    );

    let o = worker(&["run", "--spec", &spec, "--out", &out]);
    let log = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("resumed from checkpoints/epoch-0002-step-"),
        "{log}"
    );
    let resumed = report(&out);
    let close = |a: f64, b: f64| (a - b).abs() < 0.02;
    assert!(
        close(resumed.test.roc_auc, uninterrupted.test.roc_auc),
        "{} vs {}",
        resumed.test.roc_auc,
        uninterrupted.test.roc_auc
    );
    assert!(
        close(resumed.test.accuracy, uninterrupted.test.accuracy),
        "{} vs {}",
        resumed.test.accuracy,
        uninterrupted.test.accuracy
    );
    assert!(
        close(resumed.val.loss, uninterrupted.val.loss),
        "{} vs {}",
        resumed.val.loss,
        uninterrupted.val.loss
    );
    // One log per attempt, and metrics.jsonl holds each epoch once.
    let root = Path::new(out.strip_prefix("file://").unwrap());
    assert!(root.join("logs/attempt-1.log").exists() && root.join("logs/attempt-2.log").exists());
    let metrics = std::fs::read_to_string(root.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains(r#""kind":"epoch""#))
            .count(),
        3,
        "{metrics}"
    );
}

#[test]
fn a_worker_killed_without_warning_resumes_from_its_timed_checkpoint() {
    // SIGKILL gives no chance to checkpoint: the time-based checkpoint bounds what is lost.
    let spec_body = format!(
        "{COMMON}  epochs: 2\n  model: {{kind: simple_cnn, width: 32, dropout: 0.3}}\n  optimizer: {{kind: sgd, lr: 0.01, momentum: 0.9}}\n  checkpoint_every: 1s\n"
    );
    let (_a, uninterrupted) = train(&spec_body);

    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &spec_body);
    let out = format!("file://{}/run", dir.path().display());
    let (mut child, mut lines) = spawn_worker(&spec, &out);
    let mut written = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let mark = " checkpoint checkpoints/epoch-0001-step-";
        if let Some(at) = line.find(mark)
            && line.contains("(train.checkpoint_every: 1s)")
        {
            let key = &line[at + " checkpoint ".len()..];
            written = Some(key[..key.find(' ').unwrap()].to_string());
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            break;
        }
    }
    let written = written.expect("a timed checkpoint in epoch 1");
    drop(lines);
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    let o = worker(&["run", "--spec", &spec, "--out", &out]);
    let log = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains(&format!("resumed from {written} ")),
        "{written}: {log}"
    );
    let resumed = report(&out);
    assert_eq!(resumed.test.accuracy, uninterrupted.test.accuracy);
    assert_eq!(resumed.test.roc_auc, uninterrupted.test.roc_auc);
    assert_eq!(resumed.test.loss, uninterrupted.test.loss);
    assert_eq!(resumed.val.loss, uninterrupted.val.loss);
}

#[test]
fn an_attempt_killed_while_loading_keeps_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        &format!("{COMMON}  epochs: 1\n  model: {{kind: logreg}}\n"),
    );
    let out = format!("file://{}/run", dir.path().display());
    let (mut child, mut lines) = spawn_worker(&spec, &out);
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("attempt 1 of run test"), "{first}");
    // The next line comes before the dataset is loaded.
    let _ = lines.next();
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let logs = dir.path().join("run/logs");
    assert!(
        logs.join("attempt-1.log").exists(),
        "attempt 1 claimed its number"
    );

    let o = worker(&["run", "--spec", &spec, "--out", &out]);
    let log = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{log}");
    assert!(
        log.lines()
            .next()
            .unwrap()
            .contains("attempt 2 of run test"),
        "{log}"
    );
    assert!(logs.join("attempt-2.log").exists());

    let o = Command::new(env!("CARGO_BIN_EXE_idc-worker"))
        .args(["run", "--spec", &spec, "--out", &out])
        .env(idc::spec::ATTEMPT_ENV, "zero")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("IDC_ATTEMPT=zero is not an attempt number"),
        "{err}"
    );
}

#[test]
fn the_log_reaches_the_bucket_while_the_dataset_loads() {
    // An object store that accepts connections and never answers: a dataset that loads for
    // minutes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(16).collect();
        std::thread::sleep(std::time::Duration::from_secs(600));
        drop(held);
    });
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        format!("run_id: slow\ndataset: s3://ds/synth\ntrain:\n{COMMON}  epochs: 1\n  model: {{kind: logreg}}\n"),
    )
    .unwrap();
    let out = format!("file://{}/run", dir.path().display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_idc-worker"))
        .args(["run", "--spec", spec.to_str().unwrap(), "--out", &out])
        .env("AWS_ENDPOINT", &endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "a")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = dir.path().join("run/logs/attempt-1.log");
    let started = std::time::Instant::now();
    let mut text = String::new();
    while started.elapsed() < std::time::Duration::from_secs(60) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("dataset s3://ds/synth") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let still_loading = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(still_loading, "the worker was to be loading still:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("attempt 1 of run slow"), "{text}");
    assert!(
        lines[1].contains("run slow: logreg on Cpu, dataset s3://ds/synth"),
        "{text}"
    );
}

#[test]
fn corrupt_shard_and_bad_spec_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of the dataset with one flipped byte in a shard.
    let src = Path::new(dataset().strip_prefix("file://").unwrap());
    let copy = dir.path().join("ds");
    std::fs::create_dir_all(copy.join("shards")).unwrap();
    std::fs::copy(src.join("manifest.json"), copy.join("manifest.json")).unwrap();
    for e in std::fs::read_dir(src.join("shards")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join("shards").join(e.file_name())).unwrap();
    }
    let shard = copy.join("shards/val-00000.idcs");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[1000] ^= 0x55;
    std::fs::write(&shard, bytes).unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        format!(
            "run_id: x\ndataset: file://{}\ntrain: {{device: cpu}}\n",
            copy.display()
        ),
    )
    .unwrap();
    let out = format!("file://{}/run", dir.path().display());
    let o = worker(&["run", "--spec", spec.to_str().unwrap(), "--out", &out]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("shards/val-00000.idcs") && err.contains("checksum mismatch"),
        "{err}"
    );
    let log = std::fs::read_to_string(dir.path().join("run/logs/attempt-1.log")).unwrap();
    assert!(
        log.contains("checksum mismatch"),
        "the reason is in the run's log: {log}"
    );

    for (body, want) in [
        ("train: {epochs: 0}\n", "train.epochs: must be at least 1"),
        (
            "train: {optimizer: {kind: rmsprop}}\n",
            "unknown variant `rmsprop`",
        ),
        ("train: {batchsize: 3}\n", "unknown field `batchsize`"),
    ] {
        std::fs::write(&spec, format!("run_id: x\ndataset: {}\n{body}", dataset())).unwrap();
        let o = worker(&["run", "--spec", spec.to_str().unwrap(), "--out", &out]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{body}: {err}");
        assert!(
            err.contains(want) && err.contains("spec.yaml"),
            "{body}: {err}"
        );
    }
}

#[test]
fn resnet34_loads_pretrained_backbone_from_the_bucket_and_lists_bad_tensors() {
    let dir = tempfile::tempdir().unwrap();
    // "Pretrained" weights made here: a torchvision-named ResNet34 with a 1000-class head.
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _net = tch::vision::resnet::resnet34(&vs.root(), 1000);
    let named: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    let weights = dir.path().join("bucket/weights/resnet34.safetensors");
    std::fs::create_dir_all(weights.parent().unwrap()).unwrap();
    tch::Tensor::write_safetensors(&named, &weights).unwrap();

    // Run from a spec in the run's folder (as idcctl lays it out), weights from a bucket URL.
    let run = dir.path().join("bucket/runs/r1");
    std::fs::create_dir_all(&run).unwrap();
    let train = format!(
        "{COMMON}  epochs: 1\n  max_steps_per_epoch: 1\n  model: {{kind: resnet34, pretrained: 'file://{}', freeze_backbone: true}}\n",
        weights.display()
    );
    std::fs::write(
        run.join("spec.yaml"),
        format!("run_id: r1\ndataset: {}\ntrain:\n{train}", dataset()),
    )
    .unwrap();
    let o = worker(&["run", "--run", &format!("file://{}", run.display())]);
    let log = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(log.contains("loaded pretrained backbone"), "{log}");
    assert!(run.join("report.json").exists() && run.join("checkpoints/latest").exists());

    // Weights at the root of their URL (as `idcctl weights import --to file:///NAME` writes
    // them): `file://NAME`, NAME in the working folder, has the same shape.
    let run0 = dir.path().join("bucket/runs/r0");
    std::fs::create_dir_all(&run0).unwrap();
    let at_root = train.replace(
        &format!("file://{}", weights.display()),
        "file://resnet34.safetensors",
    );
    std::fs::write(
        run0.join("spec.yaml"),
        format!("run_id: r0\ndataset: {}\ntrain:\n{at_root}", dataset()),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_idc-worker"))
        .args(["run", "--run", &format!("file://{}", run0.display())])
        .current_dir(weights.parent().unwrap())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        log.contains("loaded pretrained backbone from file://resnet34.safetensors"),
        "{log}"
    );

    // Drop one backbone tensor and reshape another: both are named in the error.
    let bad: Vec<(String, tch::Tensor)> = named
        .into_iter()
        .filter(|(n, _)| n != "layer1.0.conv1.weight")
        .map(|(n, t)| {
            if n == "conv1.weight" {
                (n, tch::Tensor::zeros([64, 3, 3, 3], tch::kind::FLOAT_CPU))
            } else {
                (n, t)
            }
        })
        .collect();
    tch::Tensor::write_safetensors(&bad, &weights).unwrap();
    let run2 = dir.path().join("bucket/runs/r2");
    std::fs::create_dir_all(&run2).unwrap();
    std::fs::write(
        run2.join("spec.yaml"),
        format!("run_id: r2\ndataset: {}\ntrain:\n{train}", dataset()),
    )
    .unwrap();
    let o = worker(&["run", "--run", &format!("file://{}", run2.display())]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("1 missing [layer1.0.conv1.weight]"), "{err}");
    assert!(
        err.contains("conv1.weight: file [64, 3, 3, 3], model [64, 3, 7, 7]"),
        "{err}"
    );
}

#[test]
fn a_diverged_run_is_bad_input_naming_epoch_and_step() {
    // The loss is read once per logging window, so the error comes at most one window late but
    // still names the first step whose loss was not finite.
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        &format!(
            "{COMMON}  epochs: 2\n  model: {{kind: logreg}}\n  optimizer: {{kind: sgd, lr: 1.0e38, momentum: 0.9}}\n"
        ),
    );
    let out = format!("file://{}/run", dir.path().display());
    let o = worker(&["run", "--spec", &spec, "--out", &out]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("training diverged: loss is ")
            && err.contains(" at epoch 1, step ")
            && err.contains("lower train.optimizer.lr"),
        "{err}"
    );
    assert!(
        !dir.path().join("run/checkpoints/latest").exists(),
        "a diverged model is never checkpointed"
    );
}

#[test]
fn early_stopping_ends_the_run() {
    // No epoch can lower the loss by 10, so the run stops after `patience` epochs without gain.
    let spec = format!(
        "{COMMON}  epochs: 6\n  model: {{kind: logreg}}\n  early_stopping: {{metric: loss, patience: 2, min_delta: 10}}\n"
    );
    let (_d, r) = train(&spec);
    assert_eq!(
        r.epochs_run, 3,
        "epoch 1 sets the mark, epochs 2 and 3 miss it"
    );
}
