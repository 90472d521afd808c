//! `idcctl predict` end to end on the local backend: the quickstart manifest trained on a
//! synthetic dataset, then its best checkpoint applied to a folder (and a zip) of patches, some
//! with labels, some without, some corrupt; to the staged test split; and with test-time
//! augmentation. Probabilities are checked against those the worker computed in the run's own
//! evaluation (`test-predictions.jsonl`).

use crate::common::*;
use idc::predictions::Prediction;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Trained {
    dir: tempfile::TempDir,
    storage: String,
    dataset: String,
    run: String,
    /// The run's evaluation of each test patch, by (patient, x, y).
    evaluated: BTreeMap<(u32, u32, u32), Prediction>,
}

/// The quickstart manifest as shipped, trained on a small synthetic dataset.
fn trained() -> Trained {
    let dir = tempfile::tempdir().unwrap();
    let (storage, dataset, run) = quickstart_run(dir.path(), 8, 120);
    let jsonl = std::fs::read(
        Path::new(storage.strip_prefix("file://").unwrap())
            .join("runs")
            .join(&run)
            .join("test-predictions.jsonl"),
    )
    .unwrap();
    let evaluated = idc::predictions::parse_jsonl(&jsonl)
        .unwrap()
        .into_iter()
        .map(|p| ((p.patient, p.x, p.y), p))
        .collect();
    Trained {
        dir,
        storage,
        dataset,
        run,
        evaluated,
    }
}

fn predict(t: &Trained, args: &[&str]) -> std::process::Output {
    let mut all = vec!["predict", &t.run];
    all.extend(args);
    idcctl_env(&all, &[("IDC_STORAGE", &t.storage)])
}

fn ok(out: std::process::Output) -> (String, String) {
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

/// One row of the CSV `predict` writes.
struct Row {
    patient: u32,
    x: u32,
    y: u32,
    file: String,
    p: f32,
    predicted: u8,
    label: Option<u8>,
}

/// The rows of a CSV `predict` wrote, its header checked.
fn csv_rows(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("patient,x,y,file,p_idc,predicted,label"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 7, "{l}");
            Row {
                patient: f[0].parse().unwrap(),
                x: f[1].parse().unwrap(),
                y: f[2].parse().unwrap(),
                file: f[3].to_string(),
                p: f[4].parse().unwrap(),
                predicted: f[5].parse().unwrap(),
                label: (!f[6].is_empty()).then(|| f[6].parse().unwrap()),
            }
        })
        .collect()
}

/// The source file of the synthetic patch at (patient, x, y) with `label`.
fn source_file(t: &Trained, (patient, x, y): (u32, u32, u32), label: u8) -> PathBuf {
    t.dir.path().join(format!(
        "src/IDC_regular_ps50_idx5/{patient}/{label}/{patient}_idx5_x{x}_y{y}_class{label}.png"
    ))
}

#[test]
fn predicts_folders_zips_and_splits_like_the_evaluation() {
    let t = trained();
    let test: Vec<&Prediction> = t.evaluated.values().collect();
    assert!(test.len() >= 30, "{} test patches", test.len());
    let folder = t.dir.path().join("new");
    let (unlabeled, corrupt) = write_a_folder_of_new_patches(&t, &test, &folder);
    let rows = a_folder_is_predicted_as_evaluated(&t, &folder, &unlabeled, &corrupt);
    a_zip_of_the_folder_reuses_its_predictions(&t, &folder, &rows);
    the_test_split_is_predicted_as_evaluated_with_maps(&t, &test);
}

/// A folder: labelled patches in a tree of their own, unlabeled ones flat, corrupt ones.
/// Returns the unlabeled patches and the corrupt files.
#[allow(clippy::type_complexity)]
fn write_a_folder_of_new_patches(
    t: &Trained,
    test: &[&Prediction],
    folder: &Path,
) -> (Vec<(u32, u32, u32)>, [(&'static str, Vec<u8>); 3]) {
    let mut labelled = vec![];
    for p in test.iter().take(24) {
        let label = p.label.unwrap();
        let to = folder.join(format!("slide-a/{}", label)).join(format!(
            "{}_idx5_x{}_y{}_class{label}.png",
            p.patient, p.x, p.y
        ));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(source_file(t, (p.patient, p.x, p.y), label), &to).unwrap();
        labelled.push((p.patient, p.x, p.y));
    }
    let mut unlabeled = vec![];
    for p in test.iter().skip(24).take(5) {
        let to = folder.join(format!("{}_idx5_x{}_y{}.png", p.patient, p.x, p.y));
        std::fs::copy(source_file(t, (p.patient, p.x, p.y), p.label.unwrap()), &to).unwrap();
        unlabeled.push((p.patient, p.x, p.y));
    }
    let good = std::fs::read(source_file(t, labelled[0], test[0].label.unwrap())).unwrap();
    let corrupt = [
        (
            "9999_idx5_x1_y1_class1.png",
            good[..good.len() / 2].to_vec(),
        ),
        ("9999_idx5_x51_y1.png", b"not a png at all".to_vec()),
        ("9999_idx5_x101_y1_class0.png", vec![]),
    ];
    for (name, bytes) in &corrupt {
        std::fs::write(folder.join(name), bytes).unwrap();
    }
    std::fs::write(folder.join("scan_0001.png"), &good).unwrap();
    std::fs::write(folder.join("README.txt"), "patches from slide a").unwrap();
    (unlabeled, corrupt)
}

/// `predict` on the folder: every unreadable file is listed with its reason; the rest are
/// predicted as the run's evaluation did, with their labels where the path has one. Returns
/// the CSV's rows.
fn a_folder_is_predicted_as_evaluated(
    t: &Trained,
    folder: &Path,
    unlabeled: &[(u32, u32, u32)],
    corrupt: &[(&str, Vec<u8>)],
) -> Vec<Row> {
    let out = t.dir.path().join("out/predictions.csv");
    let (stdout, stderr) = ok(predict(
        t,
        &[folder.to_str().unwrap(), "--out", out.to_str().unwrap()],
    ));
    // Every unreadable file is listed with its reason; the rest are predicted.
    for (name, _) in corrupt {
        assert!(
            stderr.contains(&format!("skipped {name}: not a readable PNG")),
            "{name}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("skipped scan_0001.png: name does not match"),
        "{stderr}"
    );
    assert!(stderr.contains("predicted 29 images"), "{stderr}");
    assert!(stderr.contains("4 file(s) skipped"), "{stderr}");
    let rows = csv_rows(&out);
    assert_eq!(rows.len(), 29, "one row per readable patch");
    let report = report_json(&t.storage, &t.run);
    let threshold = report["test_at_val_threshold"]["threshold"]
        .as_f64()
        .unwrap();
    for Row {
        patient,
        x,
        y,
        file,
        p,
        predicted,
        label,
    } in &rows
    {
        let e = &t.evaluated[&(*patient, *x, *y)];
        assert!(
            (p - e.p_positive()).abs() <= 1e-5,
            "{file}: predict says {p}, the evaluation {}",
            e.p_positive()
        );
        assert_eq!(*predicted, u8::from(*p as f64 >= threshold), "{file}");
        if unlabeled.contains(&(*patient, *x, *y)) {
            assert_eq!(*label, None, "{file}");
            assert!(!file.contains('/'), "{file}");
        } else {
            assert_eq!(*label, e.label, "{file}");
            assert!(file.starts_with("slide-a/"), "{file}");
        }
    }
    assert!(
        stdout.starts_with(&format!(
            "24 labelled images at threshold {threshold:.3}: accuracy "
        )),
        "{stdout}"
    );
    rows
}

/// The same patches zipped pack to the very same input (shards and names), so the
/// prediction is found made: the same rows, now as JSON Lines.
fn a_zip_of_the_folder_reuses_its_predictions(t: &Trained, folder: &Path, rows: &[Row]) {
    let zip_path = t.dir.path().join("new.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        for e in walkdir::WalkDir::new(folder).sort_by_file_name() {
            let e = e.unwrap();
            if e.file_type().is_file() {
                let rel = e.path().strip_prefix(folder).unwrap().to_str().unwrap();
                z.start_file(rel, zip::write::SimpleFileOptions::default())
                    .unwrap();
                std::io::Write::write_all(&mut z, &std::fs::read(e.path()).unwrap()).unwrap();
            }
        }
        z.finish().unwrap();
    }
    let jsonl = t.dir.path().join("out/predictions.jsonl");
    let (_, stderr) = ok(predict(
        t,
        &[zip_path.to_str().unwrap(), "--out", jsonl.to_str().unwrap()],
    ));
    assert!(
        stderr.contains("reused the predictions of 29 images"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 29);
    for (l, r) in lines.iter().zip(rows) {
        assert_eq!(l["file"], r.file.as_str());
        assert_eq!(l["p_idc"].as_f64().unwrap() as f32, r.p);
        assert_eq!(
            l.get("label").and_then(|v| v.as_u64()),
            r.label.map(u64::from)
        );
    }
}

/// The staged test split: every test patch, as the evaluation computed it, with its metrics,
/// and a map of each test patient.
fn the_test_split_is_predicted_as_evaluated_with_maps(t: &Trained, test: &[&Prediction]) {
    let split_out = t.dir.path().join("out/test.csv");
    let maps = t.dir.path().join("maps");
    let (stdout, _) = ok(predict(
        t,
        &[
            &t.dataset,
            "--split",
            "test",
            "--out",
            split_out.to_str().unwrap(),
            "--maps",
            maps.to_str().unwrap(),
        ],
    ));
    // A map of each test patient, the size of its patches' bounding box.
    let mut boxes: BTreeMap<u32, (u32, u32, u32, u32)> = BTreeMap::new();
    for p in test {
        let b = boxes.entry(p.patient).or_insert((u32::MAX, u32::MAX, 0, 0));
        *b = (
            b.0.min(p.x),
            b.1.min(p.y),
            b.2.max(p.x + 50),
            b.3.max(p.y + 50),
        );
    }
    assert!(maps.join("index.html").is_file());
    for (patient, (x0, y0, x1, y1)) in &boxes {
        for kind in ["tissue", "truth", "heat"] {
            let img = image::open(maps.join(format!("{patient}-{kind}.png")))
                .unwrap_or_else(|e| panic!("{patient}-{kind}.png: {e}"));
            assert_eq!(
                (img.width(), img.height()),
                (x1 - x0, y1 - y0),
                "{patient}-{kind}.png"
            );
        }
    }
    let rows = csv_rows(&split_out);
    assert_eq!(rows.len(), test.len());
    for (r, e) in rows.iter().zip(test) {
        assert_eq!((r.patient, r.x, r.y), (e.patient, e.x, e.y));
        assert_eq!(r.file, e.file);
        assert!((r.p - e.p_positive()).abs() <= 1e-5, "{}", r.file);
    }
    let report = report_json(&t.storage, &t.run);
    let f1 = report["test_at_val_threshold"]["f1"].as_f64().unwrap();
    assert!(
        stdout.contains(&format!("F1 {f1:.4}")),
        "the metrics at the run's threshold are the report's (F1 {f1:.4}):\n{stdout}"
    );
}

#[test]
fn tta_averages_the_eight_flips_and_rotations() {
    let t = trained();
    // A full 50x50 patch (an edge patch would be padded after its rotation, not before).
    let img = t
        .evaluated
        .values()
        .map(|p| {
            let png =
                std::fs::read(source_file(&t, (p.patient, p.x, p.y), p.label.unwrap())).unwrap();
            image::load_from_memory(&png).unwrap().to_rgb8()
        })
        .find(|img| img.dimensions() == (50, 50))
        .unwrap();
    // The patch and its 7 other symmetries, each under its own position.
    let dir = t.dir.path().join("views");
    std::fs::create_dir_all(&dir).unwrap();
    let mut views = vec![];
    for k in 0..4 {
        let mut r = img.clone();
        for _ in 0..k {
            r = image::imageops::rotate90(&r);
        }
        views.push(r.clone());
        views.push(image::imageops::flip_horizontal(&r));
    }
    for (i, v) in views.iter().enumerate() {
        v.save(dir.join(format!("1_idx5_x{}_y1.png", 1 + 50 * i)))
            .unwrap();
    }
    let plain = t.dir.path().join("plain.csv");
    ok(predict(
        &t,
        &[dir.to_str().unwrap(), "--out", plain.to_str().unwrap()],
    ));
    let mean = csv_rows(&plain).iter().map(|r| r.p as f64).sum::<f64>() / 8.0;
    let tta = t.dir.path().join("tta.csv");
    let (_, stderr) = ok(predict(
        &t,
        &[
            dir.to_str().unwrap(),
            "--out",
            tta.to_str().unwrap(),
            "--tta",
        ],
    ));
    assert!(stderr.contains("8 flips/rotations averaged"), "{stderr}");
    // Every view's TTA prediction is the mean over the same 8 images.
    for r in csv_rows(&tta) {
        assert!(
            (r.p as f64 - mean).abs() <= 1e-5,
            "{}: {} vs {mean}",
            r.file,
            r.p
        );
    }
}

#[test]
fn unfinished_runs_and_wrong_inputs_are_refused() {
    let t = trained();
    let out = t.dir.path().join("x.csv");
    let runs = t.dir.path().join("bucket/runs");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["nope", "."], "no run nope"),
        (
            vec![&t.run, &t.dataset, "--out", out.to_str().unwrap()],
            "give --split to predict a split",
        ),
        (
            vec![
                &t.run,
                t.dir.path().to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--threshold",
                "1.5",
            ],
            "--threshold 1.5 is not a probability",
        ),
        (
            vec![
                &t.run,
                runs.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            "no patches found",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["predict"];
        all.extend(&args);
        if args[0] == "nope" {
            all.extend(["--out", out.to_str().unwrap()]);
        }
        let o = idcctl_env(&all, &[("IDC_STORAGE", &t.storage)]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains(want),
            "{args:?}: {}",
            text(&o.stderr)
        );
        assert!(!out.exists(), "{args:?} wrote output");
    }
}
