//! `idcctl predict` on whole-slide images, end to end on the local backend. The slides are made
//! in the test run by tifffile (`tests/fixtures/make_slide.py`: pyramidal JPEG-tiled TIFFs, as
//! an Aperio scanner writes them, or generic with their resolution in TIFF tags, or with none)
//! from synthetic patches laid out at known places; the model is the quickstart manifest's,
//! trained on other synthetic patients. Checked: the predicted IDC region against the truth
//! (Dice), the outputs (WSInfer's CSV, GeoJSON, heat map, summary, index), a slide without
//! resolution refused by name and then read with `--slide-mpp`, a corrupt and a blank slide
//! failing alone with exit code 4, and a retry keeping what was done.

use crate::common::*;
use idc::dataset::synth as synthetic;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The python with tifffile and imagecodecs (`idc_slide_venv` in .ci/env.sh), and OpenSlide;
/// `None` (the test skips) when missing, unless `IDC_TEST_REQUIRE_SLIDES=1`.
fn slide_python() -> Option<String> {
    let required = std::env::var("IDC_TEST_REQUIRE_SLIDES").as_deref() == Ok("1");
    let python = std::env::var("IDC_SLIDE_PYTHON").ok();
    let openslide = idc::slide::openslide::version();
    match (python, openslide) {
        (Some(p), Ok(_)) => Some(p),
        (p, o) => {
            let why = format!(
                "slide tests need IDC_SLIDE_PYTHON (set by idc_slide_venv in .ci/env.sh: {p:?}) and OpenSlide ({:?})",
                o.err().map(|e| e.to_string())
            );
            assert!(!required, "IDC_TEST_REQUIRE_SLIDES=1 but {why}");
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Lays out the synthetic patches under `patches` as slide `out` (`format`: aperio,
/// generic-tiff, no-resolution), about `tissue` tissue cells at 1 um/px, 200 px a cell (one
/// 50-pixel patch at 4 um/px).
fn make_slide(python: &str, patches: &Path, out: &Path, format: &str, tissue: u32) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let spec = out.with_extension("spec.json");
    let run = |args: &[&str]| {
        let o = Command::new(python).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    };
    run(&[
        fixtures.join("layout.py").to_str().unwrap(),
        patches.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--spec",
        spec.to_str().unwrap(),
        "--tissue-cells",
        &tissue.to_string(),
        "--format",
        format,
        "--mpp",
        "1.0",
        "--downsamples",
        "1,4,16",
        "--cell-px",
        "200",
        "--seed",
        "5",
    ]);
    if !out.exists() {
        run(&[
            fixtures.join("make_slide.py").to_str().unwrap(),
            spec.to_str().unwrap(),
        ]);
    }
    assert!(out.exists(), "{} was not written", out.display());
}

/// Patches by their level-0 top-left corners.
type Cells = BTreeSet<(u64, u64)>;

/// Level-0 top-left corners of the truth's cells: (all tissue, IDC).
fn truth(slide: &Path) -> (Cells, Cells) {
    let path = PathBuf::from(format!("{}.truth.json", slide.display()));
    let t: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut tissue = BTreeSet::new();
    let mut idc = BTreeSet::new();
    for c in t["cells"].as_array().unwrap() {
        let at = (c["x"].as_u64().unwrap(), c["y"].as_u64().unwrap());
        tissue.insert(at);
        if c["label"] == 1 {
            idc.insert(at);
        }
    }
    (tissue, idc)
}

/// The rows of a slide's patches.csv: (minx, miny, p(IDC)), the header checked as WSInfer's.
fn patch_rows(csv: &Path) -> Vec<(u64, u64, f64)> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("minx,miny,width,height,prob_no IDC,prob_IDC")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{l}");
            assert_eq!((f[2], f[3]), ("200", "200"), "{l}");
            let p0: f64 = f[4].parse().unwrap();
            let p1: f64 = f[5].parse().unwrap();
            assert!((p0 + p1 - 1.0).abs() < 1e-5, "{l}");
            (f[0].parse().unwrap(), f[1].parse().unwrap(), p1)
        })
        .collect()
}

fn summary(out: &Path, slide: &str) -> Value {
    serde_json::from_slice(&std::fs::read(out.join(slide).join("summary.json")).unwrap()).unwrap()
}

fn dice(a: &Cells, b: &Cells) -> f64 {
    2.0 * a.intersection(b).count() as f64 / (a.len() + b.len()).max(1) as f64
}

#[test]
fn slides_are_mapped_and_bad_slides_fail_alone() {
    let Some(python) = slide_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The quickstart's data: 20 synthetic patients of 250 patches.
    let train = dir.path().join("train");
    std::fs::create_dir_all(&train).unwrap();
    let (storage, _, run) = quickstart_run(&train, 20, 250);

    // Patients the model never saw.
    let patches = dir.path().join("slide-patches");
    synthetic::generate(
        &patches,
        &synthetic::SynthOptions {
            patients: 3,
            per_patient: 150,
            seed: 2026,
            corrupt: 0,
            edge_fraction: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let slides = dir.path().join("slides");
    std::fs::create_dir_all(&slides).unwrap();
    let aperio = slides.join("aperio.svs");
    let generic = slides.join("generic.tif");
    let no_res = slides.join("no-resolution.tif");
    make_slide(&python, &patches, &aperio, "aperio", 300);
    make_slide(&python, &patches, &generic, "generic-tiff", 300);
    make_slide(&python, &patches, &no_res, "no-resolution", 120);
    // Glass and nothing on it.
    let blank = slides.join("blank.svs");
    let spec = dir.path().join("blank.json");
    std::fs::write(
        &spec,
        serde_json::json!({
            "out": blank, "format": "aperio", "mpp": 1.0, "downsamples": [1, 4, 16],
            "cell_px": 200, "rows": 8, "cols": 10, "cells": vec![vec![Value::Null; 10]; 8],
        })
        .to_string(),
    )
    .unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let made = Command::new(&python)
        .args([fixtures.join("make_slide.py"), spec])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    // Cut short: its directories (at the end of the file) are gone.
    let corrupt = slides.join("corrupt.svs");
    let bytes = std::fs::read(&aperio).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();

    let out = dir.path().join("out");
    let predict = |extra: &[&str]| {
        let mut args = vec![
            "predict",
            &run,
            aperio.to_str().unwrap(),
            corrupt.to_str().unwrap(),
            generic.to_str().unwrap(),
            no_res.to_str().unwrap(),
            blank.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        idcctl_env(&args, &[("IDC_STORAGE", &storage)])
    };
    let first = predict(&[]);
    let err = text(&first.stderr);
    assert_eq!(first.status.code(), Some(4), "{err}");
    assert!(err.contains("2 of 5 slide(s) predicted"), "{err}");

    // The good slides: the predicted IDC region against the truth.
    for (name, slide, mpp_source) in [
        ("aperio", &aperio, "openslide.mpp-x/mpp-y"),
        ("generic", &generic, "TIFF resolution tags"),
    ] {
        let s = summary(&out, name);
        assert_eq!(s["status"], "succeeded", "{s}");
        assert_eq!(s["mpp_source"], mpp_source, "{s}");
        // 1 um/px with levels 1, 4, 16: level 1 is the training scale, 4 um/px.
        assert_eq!(
            (s["level"].as_u64(), s["level_mpp"].as_f64()),
            (Some(1), Some(4.0))
        );
        let (tissue, idc) = truth(slide);
        let rows = patch_rows(&out.join(name).join("patches.csv"));
        let scored: BTreeSet<_> = rows.iter().map(|r| (r.0, r.1)).collect();
        // Tissue is found where the patches were laid, background is never scored.
        assert!(
            dice(&scored, &tissue) >= 0.95,
            "{name}: tissue dice {}",
            dice(&scored, &tissue)
        );
        let threshold = s["threshold"].as_f64().unwrap();
        let predicted: BTreeSet<_> = rows
            .iter()
            .filter(|r| r.2 >= threshold)
            .map(|r| (r.0, r.1))
            .collect();
        let d = dice(&predicted, &idc);
        eprintln!(
            "{name}: IDC dice {d:.3} ({} predicted, {} true)",
            predicted.len(),
            idc.len()
        );
        assert!(d >= 0.75, "{name}: IDC dice {d:.3}");
        assert_eq!(s["patches_positive"].as_u64(), Some(predicted.len() as u64));
        // GeoJSON regions cover the positive patches exactly, in level-0 pixels.
        let geo: Value =
            serde_json::from_slice(&std::fs::read(out.join(name).join("regions.geojson")).unwrap())
                .unwrap();
        assert_eq!(geo["type"], "FeatureCollection");
        let features = geo["features"].as_array().unwrap();
        assert_eq!(features.len() as u64, s["regions"].as_u64().unwrap());
        let cells: u64 = features
            .iter()
            .map(|f| {
                assert_eq!(f["geometry"]["type"], "Polygon");
                assert_eq!(f["properties"]["classification"]["name"], "IDC");
                f["properties"]["patches"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(cells, predicted.len() as u64);
        for file in ["heatmap.png", "thumbnail.png", "tissue.png"] {
            let png = std::fs::read(out.join(name).join(file)).unwrap();
            assert!(png.starts_with(b"\x89PNG"), "{name}/{file}");
        }
    }
    // The bad ones, each with its reason.
    let s = summary(&out, "corrupt");
    assert_eq!(s["status"], "failed");
    assert!(s["reason"].as_str().unwrap().contains("corrupt.svs"), "{s}");
    let s = summary(&out, "no-resolution");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("no-resolution.tif")
            && reason.contains("no resolution")
            && reason.contains("--slide-mpp"),
        "{reason}"
    );
    let s = summary(&out, "blank");
    assert!(
        s["reason"].as_str().unwrap().starts_with("no tissue found"),
        "{s}"
    );
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(index.contains("5 slide(s): 2 done, 3 failed"), "{index}");
    assert!(index.contains("aperio/heatmap.png"));
    let csv = std::fs::read_to_string(out.join("slides.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");

    // Again: the slides done are kept (their summaries unchanged), the failed ones retried.
    let before = summary(&out, "aperio");
    let again = predict(&[]);
    assert_eq!(again.status.code(), Some(4), "{}", text(&again.stderr));
    assert_eq!(summary(&out, "aperio"), before);

    // The slide without resolution, given one, is read.
    let given = idcctl_env(
        &[
            "predict",
            &run,
            no_res.to_str().unwrap(),
            "--slide-mpp",
            "1.0",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("IDC_STORAGE", &storage)],
    );
    assert!(given.status.success(), "{}", text(&given.stderr));
    let s = summary(&out, "no-resolution");
    assert_eq!(
        (s["status"].as_str(), s["mpp_source"].as_str()),
        (Some("succeeded"), Some("--slide-mpp"))
    );
}
