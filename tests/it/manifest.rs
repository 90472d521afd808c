//! Experiment manifests: the shipped ones are valid, and malformed ones get exact, located errors.

use crate::common::*;
use idc::experiment;

const BASE: &str = "apiVersion: idc/v1
kind: Experiment
name: cnn
dataset:
  url: file:///tmp/ds
train:
  model: {kind: simple_cnn, width: 32}
  epochs: 5
  batch_size: 256
  optimizer: {kind: adam, lr: 0.001}
resources: {gpus: 1, cpu: \"4\", memory: 16Gi}
backend: local
storage: file:///tmp/bucket
deadline: 6h
";

#[test]
fn shipped_manifests_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut names = vec![];
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue; // manifests/README.md documents them
        }
        if idc::sweep::manifest::is_sweep(&std::fs::read_to_string(&path).unwrap()) {
            continue; // tests/it/sweep.rs checks the sweep manifests
        }
        let exp = experiment::load(&path).unwrap_or_else(|e| panic!("{e}"));
        names.push(exp.name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "cifar10",
            "cnn",
            "fashion-mnist",
            "logreg",
            "quickstart",
            "resnet34"
        ]
    );
    let exp = experiment::parse(BASE, "exp.yaml").unwrap();
    assert_eq!(exp.train.epochs, 5);
    assert_eq!(exp.train.batch_size, 256);
}

#[test]
fn malformed_manifests_get_exact_errors() {
    let cases: Vec<(String, &str)> = [
        header_and_train_mistakes(),
        other_field_mistakes(),
        resources_label_and_queue_mistakes(),
    ]
    .concat();
    assert!(cases.len() >= 15);
    for (text, want) in &cases {
        let got = experiment::parse(text, "exp.yaml")
            .expect_err(want)
            .to_string();
        assert_eq!(&got, want, "\n{text}");
    }
}

/// Malformed manifests and their errors: the header and the training fields.
fn header_and_train_mistakes() -> Vec<(String, &'static str)> {
    vec![
        (
            BASE.replace("idc/v1", "idc/v2"),
            "exp.yaml:1:1: apiVersion is 'idc/v2' (this idcctl reads apiVersion: idc/v1)",
        ),
        (
            BASE.replace("kind: Experiment", "kind: Job"),
            "exp.yaml:2:1: kind is 'Job' (expected kind: Experiment)",
        ),
        (
            BASE.replace("name: cnn", "name: CNN_1"),
            "exp.yaml:3:1: name 'CNN_1' may hold only lowercase letters, digits and '-' (e.g. cnn-weighted)",
        ),
        (
            BASE.replace("  epochs: 5", "  epochz: 5"),
            "exp.yaml:8:3: train: unknown field `epochz` (did you mean `epochs`?)",
        ),
        (
            BASE.replace("  epochs: 5", "  epochs: five"),
            "exp.yaml:8:11: train.epochs: invalid type: string \"five\", expected u32",
        ),
        (
            BASE.replace("  epochs: 5", "  epochs: 0"),
            "exp.yaml:8:3: train.epochs: must be at least 1",
        ),
        (
            BASE.replace("kind: simple_cnn", "kind: simple_cn"),
            "exp.yaml:7:17: train.model.kind: unknown variant `simple_cn` (did you mean `simple_cnn`?)",
        ),
        (
            BASE.replace("kind: adam", "kind: rmsprop"),
            "exp.yaml:10:21: train.optimizer.kind: unknown variant `rmsprop` (expected one of: sgd, adam, adamw)",
        ),
        (
            BASE.replace("lr: 0.001", "lr: -1"),
            "exp.yaml:10:27: train.optimizer.lr: -1 must be positive",
        ),
        (
            BASE.replace("lr: 0.001", "lr: .inf"),
            "exp.yaml:10:27: train.optimizer.lr: inf must be a finite number",
        ),
        (
            BASE.replace("lr: 0.001", "lr: 0.001, momentum: -1"),
            "exp.yaml:10:38: train.optimizer.momentum: -1 is not in [0, 1)",
        ),
        (
            BASE.replace("  optimizer:", "  checkpoint_every: soon\n  optimizer:"),
            "exp.yaml:10:3: train.checkpoint_every: 'soon' is not a duration such as 90s, 10m or 1h",
        ),
    ]
}

/// Malformed manifests and their errors: resources, backend, storage, deadline, the dataset
/// and the YAML itself.
fn other_field_mistakes() -> Vec<(String, &'static str)> {
    vec![
        (
            BASE.replace("memory: 16Gi", "memory: 16GB"),
            "exp.yaml:11:32: resources.memory '16GB' is not a Kubernetes quantity (e.g. 16Gi or 512Mi)",
        ),
        (
            BASE.replace("backend: local", "backend: slurm"),
            "exp.yaml:12:10: backend: unknown variant `slurm` (expected one of: local, kubernetes)",
        ),
        (
            BASE.replace("storage: file:///tmp/bucket", "storage: gs://b"),
            "exp.yaml:13:1: invalid storage URL 'gs://b': unsupported scheme 'gs' (use file:// or s3://)",
        ),
        (
            BASE.replace("deadline: 6h", "deadline: tomorrow"),
            "exp.yaml:14:1: deadline 'tomorrow' is not a duration (e.g. 90m, 6h or 1h30m)",
        ),
        (
            BASE.replace(
                "  url: file:///tmp/ds",
                "  url: file:///tmp/ds\n  source: ./data",
            ),
            "exp.yaml:4:1: dataset needs exactly one of url (a staged dataset) or source (a download to stage)",
        ),
        (
            BASE.replace(
                "  url: file:///tmp/ds",
                "  url: file:///tmp/ds\n  split: {method: random}",
            ),
            "exp.yaml:5:3: dataset.split, dataset.undersized and dataset.name apply only with dataset.source \
             (a staged dataset keeps the options it was staged with)",
        ),
        (
            BASE.replace("backend: local", "backend: kubernetes"),
            "exp.yaml:13:1: a kubernetes run needs shared storage, not a local folder (use storage: s3://bucket/prefix)",
        ),
        (
            BASE.replace("width: 32", "width: 32, dropout: 1.5"),
            "exp.yaml:7:40: train.model.dropout: 1.5 is not in [0, 1)",
        ),
        (
            BASE.replace("storage:", "storag:"),
            "exp.yaml:13:1: unknown field `storag` (did you mean `storage`?)",
        ),
        (
            BASE.replace(
                "  batch_size: 256",
                "  batch_size: 256\n  augmentation: {flip_lr: 2}",
            ),
            "exp.yaml:10:18: train.augmentation.flip_lr: 2 is not a probability in [0, 1]",
        ),
        (
            BASE.replace("train:", " train:"),
            "exp.yaml:6:2: did not find expected key",
        ),
        (
            BASE.replace("resources: {gpus: 1,", "resources: {gpus: -1,"),
            "exp.yaml:11:19: resources.gpus: invalid type: integer `-1`, expected u32",
        ),
    ]
}

/// Malformed manifests and their errors: the batch size, and the Kubernetes names and label
/// keys under resources.
fn resources_label_and_queue_mistakes() -> Vec<(String, &'static str)> {
    vec![
        (
            BASE.replace("  batch_size: 256", "  batch_size: 0"),
            "exp.yaml:9:3: train.batch_size: must be at least 1",
        ),
        (
            BASE.replace("memory: 16Gi}", "memory: 16Gi, node_selector: {-bad: x}}"),
            "exp.yaml:11:62: resources.node_selector: '-bad' is not a valid Kubernetes label key (e.g. nvidia.com/gpu.product: at most 63 letters, digits, '-', '_' or '.', a letter or digit at each end, after an optional DNS prefix and '/')",
        ),
        (
            BASE.replace("memory: 16Gi}", "memory: 16Gi, tolerations: [{key: bad key!}]}"),
            "exp.yaml:11:61: resources.tolerations[0]: key 'bad key!' is not a valid Kubernetes label key",
        ),
        (
            BASE.replace("memory: 16Gi}", "memory: 16Gi, queue: GPU_Queue}"),
            "exp.yaml:11:46: resources.queue 'GPU_Queue' is not a valid Kueue LocalQueue name (the name of a Kueue LocalQueue: at most 63 lowercase letters, digits, '-' or '.', a letter or digit at each end; \"\" submits without a queue)",
        ),
        (
            BASE.replace("memory: 16Gi}", "memory: 16Gi, workload_priority: \"\"}"),
            "exp.yaml:11:46: resources.workload_priority '' is not a valid Kueue WorkloadPriorityClass name (the name of a Kueue WorkloadPriorityClass: at most 63 lowercase letters, digits, '-' or '.', a letter or digit at each end)",
        ),
        // A node_selector key written quoted, or empty: at the key.
        (
            BASE.replace("memory: 16Gi}", "memory: 16Gi, node_selector: {\"bad key\": x}}"),
            "exp.yaml:11:62: resources.node_selector: 'bad key' is not a valid Kubernetes label key (e.g. nvidia.com/gpu.product: at most 63 letters, digits, '-', '_' or '.', a letter or digit at each end, after an optional DNS prefix and '/')",
        ),
        (
            BASE.replace("memory: 16Gi}", "memory: 16Gi, node_selector: {'': x}}"),
            "exp.yaml:11:62: resources.node_selector: '' is not a valid Kubernetes label key (e.g. nvidia.com/gpu.product: at most 63 letters, digits, '-', '_' or '.', a letter or digit at each end, after an optional DNS prefix and '/')",
        ),
        (
            BASE.replace(
                "resources: {gpus: 1, cpu: \"4\", memory: 16Gi}",
                "resources:\n  node_selector:\n    kubernetes.io/arch: amd64\n    'gpu product': a100",
            ),
            "exp.yaml:14:5: resources.node_selector: 'gpu product' is not a valid Kubernetes label key (e.g. nvidia.com/gpu.product: at most 63 letters, digits, '-', '_' or '.', a letter or digit at each end, after an optional DNS prefix and '/')",
        ),
    ]
}

#[test]
fn deep_nesting_is_refused_at_once() {
    // A few thousand levels took the YAML parser seconds (its time grows with the square of
    // the depth); refused before it runs, at the level too deep.
    let n = 20_000;
    for (text, want) in [
        (
            BASE.replace("width: 32}", &format!("width: {}1}}", "[{a: ".repeat(n))),
            "exp.yaml:7:187: mappings and sequences nest deeper than 64 levels here",
        ),
        (
            format!(
                "{BASE}x:\n{}",
                (1..n)
                    .map(|i| format!("{}a:\n", " ".repeat(i)))
                    .collect::<String>()
            ),
            "exp.yaml:79:65: mappings and sequences nest deeper than 64 levels here",
        ),
    ] {
        let started = std::time::Instant::now();
        let e = experiment::parse(&text, "exp.yaml")
            .unwrap_err()
            .to_string();
        let took = started.elapsed();
        assert!(e.starts_with(want), "{e}");
        assert!(
            took < std::time::Duration::from_millis(500),
            "took {took:?}"
        );
    }
}

#[test]
fn kueue_queue_and_priority_are_read() {
    let exp = experiment::parse(
        &BASE.replace(
            "memory: 16Gi}",
            "memory: 16Gi, queue: gpu-queue, workload_priority: research-high}",
        ),
        "exp.yaml",
    )
    .unwrap();
    assert_eq!(exp.resources.queue.as_deref(), Some("gpu-queue"));
    assert_eq!(
        exp.resources.workload_priority.as_deref(),
        Some("research-high")
    );
    // An empty queue opts out of the namespace's default.
    let exp = experiment::parse(
        &BASE.replace("memory: 16Gi}", "memory: 16Gi, queue: \"\"}"),
        "exp.yaml",
    )
    .unwrap();
    assert_eq!(exp.resources.queue.as_deref(), Some(""));
}

#[test]
fn a_byte_order_mark_is_accepted() {
    // What some Windows editors write at the top of a UTF-8 file.
    let exp = experiment::parse(&format!("\u{feff}{BASE}"), "exp.yaml").unwrap();
    assert_eq!(exp.name, "cnn");
    let bad = format!("\u{feff}{}", BASE.replace("idc/v1", "idc/v2"));
    assert_eq!(
        experiment::parse(&bad, "exp.yaml").unwrap_err().to_string(),
        "exp.yaml:1:1: apiVersion is 'idc/v2' (this idcctl reads apiVersion: idc/v1)"
    );
}

#[test]
fn validate_and_schema_commands() {
    let out = idcctl(&["validate", "manifests/cnn.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "manifests/cnn.yaml: valid: experiment cnn, model simple_cnn, local backend, 20 epochs\n"
    );
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, BASE.replace("  epochs: 5", "  epochz: 5")).unwrap();
    let out = idcctl(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("bad.yaml:8:3: train: unknown field `epochz` (did you mean `epochs`?)")
    );
    let out = idcctl(&["validate", "/no/such.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/no/such.yaml: cannot read"),
        "{}",
        text(&out.stderr)
    );
    let out = idcctl(&["manifest", "schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "Experiment");
    assert!(schema["properties"]["apiVersion"].is_object());
    let out = idcctl(&["manifest", "schema", "--kind", "sweep"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema, idc::sweep::manifest::json_schema());
    assert_eq!(schema["title"], "Sweep");
    assert!(schema["properties"]["search"].is_object());
    let out = idcctl(&["manifest", "schema", "--kind", "run"]);
    assert_eq!(out.status.code(), Some(2));
}
