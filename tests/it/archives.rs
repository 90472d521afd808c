//! Datasets of K classes end to end: CIFAR-10 archives in both official layouts (built by the
//! project from seeded pixels) staged byte for byte with exact splits, their errors, a short
//! training run that beats chance, and a v1 IDC dataset (staged before K classes) that trains
//! and reports as a current one does. Real Fashion-MNIST training lives in `report_html.rs`,
//! beside the browser check of its page.

use crate::common::*;
use idc::dataset::archive::fixtures::{self, Generated};
use idc::dataset::manifest::DatasetManifest;
use idc::dataset::split::Split;
use idc::shard::HEADER_LEN;
use idc::store::Store;
use std::collections::BTreeMap;
use std::path::Path;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn manifest_of(url: &str) -> DatasetManifest {
    runtime()
        .block_on(idc::dataset::manifest::read(&Store::open(url).unwrap()))
        .unwrap()
        .expect("a staged dataset")
}

/// Every record of a staged archive dataset must be one source image, pixel for pixel (shards
/// are HWC, as `Generated` is), each source image exactly once; returns the records per split.
fn check_records_equal_source(url: &str, g: &Generated) -> BTreeMap<Split, usize> {
    let m = manifest_of(url);
    let ds = Store::open(url).unwrap();
    let shards = runtime().block_on(load_shards(&ds, &m));
    let bytes = (g.height * g.width * g.channels) as usize;
    let mut seen = [vec![0u32; g.train.len()], vec![0u32; g.test.len()]];
    let mut per_split = BTreeMap::new();
    for (info, shard) in m.shards.iter().zip(&shards) {
        for r in shard.records() {
            let (set, counts) = if r.meta.y == 0 {
                (&g.train, &mut seen[0])
            } else {
                (&g.test, &mut seen[1])
            };
            let i = r.meta.x as usize;
            assert_eq!(r.pixels, set.image(i, bytes), "{}: image {i}", info.key);
            assert_eq!(
                r.meta.label, set.labels[i],
                "{}: label of image {i}",
                info.key
            );
            assert_eq!(
                info.split == Split::Test,
                r.meta.y == 1,
                "test images and only they are in the test split"
            );
            counts[i] += 1;
            *per_split.entry(info.split).or_insert(0) += 1;
        }
    }
    assert!(
        seen.iter().flatten().all(|&n| n == 1),
        "every source image staged exactly once"
    );
    per_split
}

#[test]
fn cifar10_archives_in_both_layouts_stage_byte_for_byte_with_exact_splits() {
    let tmp = tempfile::tempdir().unwrap();
    type Writer = fn(&Path, usize, usize, u64) -> Generated;
    let layouts: [(&str, Writer); 2] = [
        ("cifar-10-python.tar.gz", fixtures::cifar10_python),
        ("cifar-10-binary.tar.gz", fixtures::cifar10_binary),
    ];
    for (file, write) in layouts {
        let archive = tmp.path().join(file);
        let g = write(&archive, 90, 120, 7);
        let url = format!("file://{}/{file}-staged", tmp.path().display());
        let stage = || {
            idcctl(&[
                "stage",
                "--format",
                "cifar10",
                archive.to_str().unwrap(),
                "--to",
                &url,
                "--val",
                "45",
                "--shard-records",
                "100",
            ])
        };
        let out = stage();
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        let m = manifest_of(&url);
        assert_eq!(
            m.classes,
            [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck"
            ],
            "{file}: names from the archive's metadata"
        );
        assert_eq!(m.image.shape().to_string(), "32x32x3");
        assert_eq!(m.shard_format_version, idc::shard::FORMAT_VERSION);
        let per_split = check_records_equal_source(&url, &g);
        assert_eq!(
            (
                per_split[&Split::Train],
                per_split[&Split::Val],
                per_split[&Split::Test]
            ),
            (405, 45, 120),
            "{file}: the official test set whole, --val exactly from the 450 training images"
        );
        // Stratified: each class gives its share of the 45, within one image.
        let train_counts = |c: usize| g.train.labels.iter().filter(|&&l| l as usize == c).count();
        for c in 0..10 {
            let want = 45.0 * train_counts(c) as f64 / 450.0;
            let got = m.splits[&Split::Val].count_of(c) as f64;
            assert!(
                (got - want).abs() <= 1.0,
                "{file}: class {c}: {got} vs {want}"
            );
        }
        if file.contains("binary") {
            check_against_raw_binary_records(&archive, &url);
        }
        // The same archive and options again: nothing to do.
        let again = stage();
        assert!(again.status.success());
        assert!(
            text(&again.stderr).contains("nothing to do"),
            "{}",
            text(&again.stderr)
        );
    }
}

/// Every staged record against the archive's own bytes: the `.bin` members as they are (a label
/// byte, then 1024 red, 1024 green, 1024 blue bytes, rows of 32), read here with nothing but tar.
fn check_against_raw_binary_records(archive: &Path, url: &str) {
    let mut members: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let file = std::fs::File::open(archive).unwrap();
    for entry in tar::Archive::new(flate2::read::GzDecoder::new(file))
        .entries()
        .unwrap()
    {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = vec![];
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        members.insert(name, data);
    }
    let train: Vec<u8> = (1..=5)
        .flat_map(|i| members[&format!("cifar-10-batches-bin/data_batch_{i}.bin")].clone())
        .collect();
    let test = &members["cifar-10-batches-bin/test_batch.bin"];
    let m = manifest_of(url);
    let ds = Store::open(url).unwrap();
    let mut checked = 0;
    for shard in runtime().block_on(load_shards(&ds, &m)) {
        for r in shard.records() {
            let raw = if r.meta.y == 0 { &train } else { test };
            let rec = &raw[r.meta.x as usize * 3073..][..3073];
            assert_eq!(r.meta.label, rec[0]);
            for (i, &v) in r.pixels.iter().enumerate() {
                let (px, c) = (i / 3, i % 3);
                assert_eq!(v, rec[1 + c * 1024 + px], "image {} pixel {i}", r.meta.x);
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked * 3073,
        train.len() + test.len(),
        "every record checked"
    );
}

/// The `.tar.gz` at `src` rewritten with `edit` applied to each (member name, bytes): None drops it.
fn rewrite_tar_gz(src: &Path, dest: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let file = std::fs::File::open(src).unwrap();
    let mut input = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let out = std::fs::File::create(dest).unwrap();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        out,
        flate2::Compression::fast(),
    ));
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = vec![];
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if let Some(data) = edit(&name, data) {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            builder.append_data(&mut h, &name, &data[..]).unwrap();
        }
    }
    builder.into_inner().unwrap().finish().unwrap();
}

#[test]
fn broken_cifar10_archives_are_refused_naming_the_member_and_nothing_is_staged() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("cifar-10-binary.tar.gz");
    fixtures::cifar10_binary(&good, 40, 50, 3);
    let python = tmp.path().join("cifar-10-python.tar.gz");
    fixtures::cifar10_python(&python, 40, 50, 3);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = tmp.path().join("truncated.tar.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let missing = tmp.path().join("missing.tar.gz");
    rewrite_tar_gz(&good, &missing, |name, data| {
        (!name.ends_with("data_batch_5.bin")).then_some(data)
    });
    let short = tmp.path().join("short.tar.gz");
    rewrite_tar_gz(&good, &short, |name, mut data| {
        if name.ends_with("data_batch_2.bin") {
            data.truncate(data.len() - 100);
        }
        Some(data)
    });
    let bad_label = tmp.path().join("label.tar.gz");
    rewrite_tar_gz(&good, &bad_label, |name, mut data| {
        if name.ends_with("test_batch.bin") {
            data[3073 * 7] = 12;
        }
        Some(data)
    });
    let not_pickle = tmp.path().join("not-pickle.tar.gz");
    rewrite_tar_gz(&python, &not_pickle, |name, data| {
        if name.ends_with("data_batch_3") {
            Some(b"<html>this is no pickle</html>".to_vec())
        } else {
            Some(data)
        }
    });
    let cases: [(&Path, &[&str]); 5] = [
        (&truncated, &["truncated or corrupt gzip/tar stream"]),
        (
            &missing,
            &["has no member cifar-10-batches-bin/data_batch_5.bin"],
        ),
        (
            &short,
            &["member cifar-10-batches-bin/data_batch_2.bin", "3073"],
        ),
        (
            &bad_label,
            &["member cifar-10-batches-bin/test_batch.bin", "12"],
        ),
        (&not_pickle, &["member cifar-10-batches-py/data_batch_3"]),
    ];
    for (archive, wants) in cases {
        let url = format!("file://{}/staged", tmp.path().display());
        let out = idcctl(&[
            "stage",
            "--format",
            "cifar10",
            archive.to_str().unwrap(),
            "--to",
            &url,
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", archive.display());
        for want in wants {
            assert!(
                err.contains(want),
                "{}: {want:?} not in: {err}",
                archive.display()
            );
        }
        assert!(
            !tmp.path().join("staged/manifest.json").exists(),
            "nothing half-staged is visible"
        );
    }
    // Options that do not apply to an archive are refused, saying why.
    let out = idcctl(&[
        "stage",
        "--format",
        "cifar10",
        good.to_str().unwrap(),
        "--to",
        &format!("file://{}/x", tmp.path().display()),
        "--test",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("official test set is kept"),
        "{}",
        text(&out.stderr)
    );
}

fn write_experiment(dir: &Path, name: &str, dataset: &str, storage: &str, train: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: idc/v1\nkind: Experiment\nname: {name}\ndataset: {{url: '{dataset}'}}\ntrain:\n  device: cpu\n{train}storage: '{storage}'\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_short_cifar10_run_beats_chance_and_reports_ten_classes() {
    require_worker();
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("cifar-10-python.tar.gz");
    fixtures::cifar10_python(&archive, 300, 500, 21);
    let storage = format!("file://{}/bucket", tmp.path().display());
    let dataset = format!("{storage}/datasets/cifar10");
    let out = idcctl(&[
        "stage",
        "--format",
        "cifar10",
        archive.to_str().unwrap(),
        "--to",
        &dataset,
        "--val",
        "150",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // BCE on ten classes is refused at submit, before anything runs.
    let bce = write_experiment(tmp.path(), "bce", &dataset, &storage, "  epochs: 1\n");
    let out = idcctl(&["submit", &bce]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("set train.loss.kind: cross_entropy"),
        "{}",
        text(&out.stderr)
    );

    let manifest = write_experiment(
        tmp.path(),
        "cifar",
        &dataset,
        &storage,
        "  epochs: 3\n  batch_size: 64\n  model: {kind: simple_cnn, width: 16}\n  loss: {kind: cross_entropy}\n  sampling: shuffle\n  augmentation: {rotate90: 0, flip_lr: 0.5, flip_tb: 0, color: 0, contrast: 0, crop_padding: 2}\n  select_metric: accuracy\n",
    );
    let run = submit_wait(&manifest);
    let acc = the_report_has_ten_classes_and_beats_chance(&storage, &run);
    report_page_and_comparison_show_ten_classes(tmp.path(), &storage, &run);
    predict_gives_the_evaluations_ten_probabilities(tmp.path(), &storage, &dataset, &run, acc);

    // `list` and `status` use macro F1.
    let list = idcctl_env(&["list", "-o", "json"], &[("IDC_STORAGE", &storage)]);
    let runs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let f1 = runs[0]["best_val_f1"].as_f64().unwrap();
    assert!(f1 > 0.2 && f1 <= 1.0, "{f1}");
}

/// The report of the CIFAR-10 run `run`: test accuracy over chance (0.1), a 10x10 matrix of
/// every test image, no threshold. Returns the test accuracy.
fn the_report_has_ten_classes_and_beats_chance(storage: &str, run: &str) -> f64 {
    let r = report_json(storage, run);
    let acc = r["test"]["accuracy"].as_f64().unwrap();
    // Chance is 0.1 over ten classes.
    assert!(acc > 0.3, "test accuracy {acc}");
    assert_eq!(r["classes"].as_array().unwrap().len(), 10);
    assert!(
        r.get("test_at_val_threshold").is_none(),
        "no threshold for K classes"
    );
    let confusion = r["test"]["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 10);
    let total: u64 = confusion
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 500, "every test image in the matrix");
    acc
}

/// The text report, the page and the comparison show ten classes; there are no ROC or PR
/// curves to draw.
fn report_page_and_comparison_show_ten_classes(tmp: &Path, storage: &str, run: &str) {
    let text_report = idcctl_env(&["report", run], &[("IDC_STORAGE", storage)]);
    assert!(
        text_report.status.success(),
        "{}",
        text(&text_report.stderr)
    );
    let shown = text(&text_report.stdout);
    for want in [
        "macro F1",
        "top-5 accuracy",
        "3 cat",
        "9 truck",
        "per class",
    ] {
        assert!(shown.contains(want), "{want} missing:\n{shown}");
    }
    let page = tmp.join("page");
    let out = idcctl_env(
        &["report", run, "--html", page.to_str().unwrap()],
        &[("IDC_STORAGE", storage)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let html = std::fs::read_to_string(page.join("index.html")).unwrap();
    assert_eq!(html.matches("<td data-true=").count(), 100);
    assert!(html.contains("<th>3 cat</th>") && html.contains("Per class (test)"));
    assert!(!page.join("roc.svg").exists());
    let cmp = tmp.join("cmp.html");
    let out = idcctl_env(
        &["compare", run, run, "--html", cmp.to_str().unwrap()],
        &[("IDC_STORAGE", storage)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains("test: accuracy") && table.contains("top-5 accuracy"),
        "{table}"
    );
    assert!(tmp.join("cmp-val-f1.svg").exists());
    assert!(!tmp.join("cmp-roc.svg").exists());
}

/// `predict` on the test split: ten probabilities per image, those of the evaluation, and
/// the macro metrics; a folder of IDC patches is refused for this model.
fn predict_gives_the_evaluations_ten_probabilities(
    tmp: &Path,
    storage: &str,
    dataset: &str,
    run: &str,
    acc: f64,
) {
    let jsonl = tmp.join("test.jsonl");
    let out = idcctl_env(
        &[
            "predict",
            run,
            dataset,
            "--split",
            "test",
            "--out",
            jsonl.to_str().unwrap(),
        ],
        &[("IDC_STORAGE", storage)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&format!("500 labelled images: accuracy {:.4}", acc)),
        "{}",
        text(&out.stdout)
    );
    let evaluated = idc::predictions::parse_jsonl(
        &std::fs::read(
            Path::new(storage.strip_prefix("file://").unwrap())
                .join("runs")
                .join(run)
                .join(idc::layout::run::TEST_PREDICTIONS),
        )
        .unwrap(),
    )
    .unwrap();
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 500);
    for (row, e) in rows.iter().zip(&evaluated) {
        let p = row["probabilities"].as_array().unwrap();
        assert_eq!(p.len(), 10);
        for (a, b) in p.iter().zip(&e.probabilities) {
            assert!((a.as_f64().unwrap() as f32 - b).abs() <= 1e-5, "{row}");
        }
        assert_eq!(row["predicted"].as_u64(), Some(e.predicted as u64));
        assert_eq!(row["label"].as_u64(), e.label.map(u64::from));
    }
    let out = idcctl_env(
        &[
            "predict",
            run,
            tmp.to_str().unwrap(),
            "--out",
            jsonl.to_str().unwrap(),
        ],
        &[("IDC_STORAGE", storage)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("predict a staged dataset of them"),
        "{}",
        text(&out.stderr)
    );
}

/// Rewrites the IDC dataset staged at `dir` as the first idcctl wrote it (shard format v1, no
/// class names in the manifest): its shards then hold the same bytes, header aside, that that
/// version wrote for the same source (checked once against it when this test was written).
fn downgrade_to_v1(dir: &Path) {
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for s in m["shards"].as_array_mut().unwrap() {
        let file = dir.join(s["key"].as_str().unwrap());
        let mut b = std::fs::read(&file).unwrap();
        assert!(b.len() >= HEADER_LEN);
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b[30..32].fill(0);
        s["sha256"] = idc::shard::sha256_hex(&b).into();
        std::fs::write(&file, b).unwrap();
    }
    m["shard_format_version"] = 1.into();
    m.as_object_mut().unwrap().remove("classes");
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn a_v1_dataset_trains_and_reports_as_before() {
    require_worker();
    let tmp = tempfile::tempdir().unwrap();
    let (storage, dataset) = staged_synth_bucket(tmp.path(), 6, 60);
    let v1 = format!("{storage}/datasets/v1");
    let src = Path::new(dataset.strip_prefix("file://").unwrap());
    let dst = Path::new(v1.strip_prefix("file://").unwrap());
    std::fs::create_dir_all(dst.join("shards")).unwrap();
    for f in ["manifest.json"]
        .into_iter()
        .map(String::from)
        .chain(manifest_of(&dataset).shards.iter().map(|s| s.key.clone()))
    {
        std::fs::copy(src.join(&f), dst.join(&f)).unwrap();
    }
    downgrade_to_v1(dst);
    let m = manifest_of(&v1);
    assert_eq!((m.shard_format_version, m.classes.len()), (1, 2));

    let train = "  epochs: 2\n  batch_size: 64\n  model: {kind: simple_cnn, width: 8}\n";
    let current = submit_wait(&write_experiment(
        tmp.path(),
        "cur",
        &dataset,
        &storage,
        train,
    ));
    let old = submit_wait(&write_experiment(tmp.path(), "old", &v1, &storage, train));
    let (a, b) = (report_json(&storage, &current), report_json(&storage, &old));
    for key in [
        "test",
        "test_at_val_threshold",
        "val",
        "roc",
        "pr",
        "classes",
    ] {
        assert_eq!(
            a[key], b[key],
            "{key}: a v1 dataset trains exactly as its current copy"
        );
    }
    assert_eq!(b["test"]["confusion"]["tp"], a["test"]["confusion"]["tp"]);
    let out = idcctl_env(&["report", &old], &[("IDC_STORAGE", &storage)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("at val threshold"));
}
