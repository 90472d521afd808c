//! Helpers shared by the integration tests: datasets made by the project, the storage backends
//! under test, and running `idcctl`.
#![allow(dead_code)]

pub mod browser;

use idc::dataset::manifest::DatasetManifest;
use idc::dataset::synth::{self, SynthOptions};
use idc::shard::ShardReader;
use idc::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The real patches shipped with the tests (105 Kaggle patches, one 32x50 edge patch).
pub fn real_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/idc-real-sample")
}

/// A synthetic dataset in the Kaggle layout under `dir`.
pub fn synth(dir: &Path, patients: u32, per_patient: u32, corrupt: u32) -> synth::SynthSummary {
    let opts = SynthOptions {
        patients,
        per_patient,
        seed: 11,
        corrupt,
        edge_fraction: 0.05,
        ..Default::default()
    };
    synth::generate(dir, &opts).expect("synthetic dataset")
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// Storage roots every staging test runs against: a temporary `file://` folder, and the S3
/// bucket in `IDC_TEST_S3_URL` (set by `.ci/test`, which starts a local S3 server). With
/// `IDC_TEST_REQUIRE_S3=1` a missing S3 configuration fails the test instead of skipping S3.
pub fn backends(tmp: &Path) -> Vec<String> {
    let mut out = vec![format!("file://{}/bucket", tmp.display())];
    match std::env::var("IDC_TEST_S3_URL") {
        Ok(url) => {
            let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            out.push(format!(
                "{}/t{}-{nanos}-{n}",
                url.trim_end_matches('/'),
                std::process::id()
            ));
        }
        Err(_) if std::env::var("IDC_TEST_REQUIRE_S3").as_deref() == Ok("1") => {
            panic!("IDC_TEST_REQUIRE_S3=1 but IDC_TEST_S3_URL is not set")
        }
        Err(_) => eprintln!("IDC_TEST_S3_URL not set: S3 is not tested here (run .ci/test for it)"),
    }
    out
}

/// Every shard of a staged dataset, checksums verified.
pub async fn load_shards(ds: &Store, m: &DatasetManifest) -> Vec<ShardReader<bytes::Bytes>> {
    let mut out = vec![];
    for s in &m.shards {
        let bytes = ds.get(&s.key).await.unwrap();
        out.push(
            ShardReader::open_verified(bytes, &s.sha256)
                .unwrap_or_else(|e| panic!("{}: {e}", s.key)),
        );
    }
    out
}

/// Runs the `idcctl` binary.
pub fn idcctl(args: &[&str]) -> Output {
    idcctl_env(args, &[])
}

/// Runs the `idcctl` binary with extra environment variables.
pub fn idcctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idcctl"));
    cmd.args(args).env("RUST_LOG", "warn,idc=info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("idcctl runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Fails with a clear message unless the worker binary was built beside idcctl.
pub fn require_worker() {
    let worker = Path::new(env!("CARGO_BIN_EXE_idcctl")).with_file_name("idc-worker");
    assert!(
        worker.exists(),
        "{} is missing: build the workspace (cargo test --workspace)",
        worker.display()
    );
}

/// Submits the experiment manifest at `path` and waits for its run to end, which must succeed;
/// returns the run id.
pub fn submit_wait(path: &str) -> String {
    let out = idcctl(&["submit", path, "--wait"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout).lines().next().unwrap().trim().to_string()
}

/// The `report.json` of run `run` in the `file://` bucket `storage`, as JSON.
pub fn report_json(storage: &str, run: &str) -> serde_json::Value {
    let path = Path::new(storage.strip_prefix("file://").unwrap())
        .join("runs")
        .join(run)
        .join("report.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A synthetic dataset (`patients` x `per_patient` patches, written under `dir/src`) staged
/// into a new `file://` bucket at `dir/bucket`: returns the bucket's and the dataset's URLs.
pub fn staged_synth_bucket(dir: &Path, patients: u32, per_patient: u32) -> (String, String) {
    synth(&dir.join("src"), patients, per_patient, 0);
    let storage = format!("file://{}/bucket", dir.display());
    let dataset = format!("{storage}/datasets/synth");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(idc::stage::stage(
            &dir.join("src"),
            &Store::open(&dataset).unwrap(),
            &idc::stage::StageOptions::default(),
            &idc::stage::StageHooks::default(),
        ))
        .unwrap();
    (storage, dataset)
}

/// The venv's python with torch: `.venv` (linked by `.ci/env.sh`) or the cached venv. Required
/// when `CI=true` or `IDC_TEST_REQUIRE_TORCH=1`; otherwise a missing one skips the test.
pub fn torch_python() -> Option<PathBuf> {
    let mut candidates = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/idc/torch-2.11.0/bin/python"));
    }
    let found = candidates.into_iter().find(|p| {
        p.exists()
            && Command::new(p)
                .args(["-c", "import torch"])
                .output()
                .is_ok_and(|o| o.status.success())
    });
    let required = std::env::var("CI").as_deref() == Ok("true")
        || std::env::var("IDC_TEST_REQUIRE_TORCH").as_deref() == Ok("1");
    match found {
        None if required => panic!(
            "no python with torch (.venv or ~/.cache/idc/torch-2.11.0): run .ci/env.sh's idc_torch_venv"
        ),
        None => eprintln!("no python with torch (.venv or ~/.cache/idc/torch-2.11.0): skipping"),
        Some(_) => {}
    }
    found
}

/// The quickstart manifest as shipped, trained on `patients` x `per_patient` synthetic patches
/// staged under `dir` (see [`staged_synth_bucket`]): the bucket's and the dataset's URLs and the
/// run's id.
pub fn quickstart_run(dir: &Path, patients: u32, per_patient: u32) -> (String, String, String) {
    require_worker();
    let (storage, dataset) = staged_synth_bucket(dir, patients, per_patient);
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/quickstart.yaml"),
    )
    .unwrap()
    .replace("file://./.idc/bucket/datasets/quickstart", &dataset)
    .replace("file://./.idc/bucket", &storage);
    let path = dir.join("quickstart.yaml");
    std::fs::write(&path, manifest).unwrap();
    let run = submit_wait(path.to_str().unwrap());
    (storage, dataset, run)
}
