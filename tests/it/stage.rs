//! Staging end to end, against every storage backend under test (`file://`, and S3 in CI).

use crate::common::*;
use idc::dataset::decode::{PAD_VALUE, Undersized};
use idc::dataset::split::{Split, SplitMethod, SplitOptions, SplitSize};
use idc::layout;
use idc::shard::FLAG_PADDED;
use idc::stage::{self, StageError, StageHooks, StageOptions, StageStatus};
use idc::store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;

fn opts(shard_records: usize) -> StageOptions {
    StageOptions {
        shard_records,
        ..Default::default()
    }
}

fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, bytes_per_px: u32) {
    let px: Vec<u8> = (0..w * h * bytes_per_px)
        .map(|i| (i * 31 % 256) as u8)
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, idc::dataset::decode::encode_png(&px, w, h, color)).unwrap();
}

/// Synthetic patients plus the real sample, grayscale, RGBA, undersized, oversized and corrupt
/// PNGs, and files whose names are not patch names.
fn mixed_source(dir: &Path) -> usize {
    let s = synth(dir, 6, 50, 3);
    let real = real_sample().join("IDC_regular_ps50_idx5");
    for e in walkdir::WalkDir::new(&real) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let to = dir
                .join("IDC_regular_ps50_idx5")
                .join(e.path().strip_prefix(&real).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(e.path(), to).unwrap();
        }
    }
    let root = dir.join("IDC_regular_ps50_idx5/99001");
    write_png(
        &root.join("0/99001_idx5_x1_y1_class0.png"),
        50,
        50,
        png::ColorType::Grayscale,
        1,
    );
    write_png(
        &root.join("1/99001_idx5_x51_y1_class1.png"),
        50,
        50,
        png::ColorType::Rgba,
        4,
    );
    write_png(
        &root.join("0/99001_idx5_x101_y1_class0.png"),
        50,
        17,
        png::ColorType::Rgb,
        3,
    );
    write_png(
        &root.join("0/99001_idx5_x151_y1_class0.png"),
        64,
        64,
        png::ColorType::Rgb,
        3,
    );
    std::fs::write(root.join("0/notes.txt"), "not a patch").unwrap();
    std::fs::write(root.join("1/99001_idx5_x201_y1_class0.png"), "wrong folder").unwrap();
    s.files as usize + 105 + 4
}

#[tokio::test]
async fn every_staged_record_equals_its_png() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let pngs = mixed_source(&src);
    for url in backends(tmp.path()) {
        let ds = Store::open(&format!("{url}/datasets/mixed")).unwrap();
        let out = stage::stage(&src, &ds, &opts(64), &StageHooks::default())
            .await
            .unwrap();
        assert_eq!(
            out.status,
            StageStatus::Staged {
                written: out.manifest.shards.len(),
                resumed: 0
            }
        );
        let m = idc::dataset::manifest::read(&ds)
            .await
            .unwrap()
            .expect("manifest written");
        assert_eq!(m, out.manifest);

        the_unreadable_files_are_skipped_with_their_reasons(&m, pngs);

        let mut seen = BTreeSet::new();
        let mut padded = 0;
        let mut splits_of_patient: BTreeMap<u32, BTreeSet<Split>> = BTreeMap::new();
        for shard in load_shards(&ds, &m).await {
            for r in shard.records() {
                splits_of_patient
                    .entry(r.meta.patient)
                    .or_default()
                    .insert(shard.split());
                let name = format!(
                    "IDC_regular_ps50_idx5/{p}/{c}/{p}_idx5_x{x}_y{y}_class{c}.png",
                    p = r.meta.patient,
                    c = r.meta.label,
                    x = r.meta.x,
                    y = r.meta.y
                );
                assert!(seen.insert(name.clone()), "{name} staged twice");
                padded += usize::from(record_equals_its_png(&src, &name, &r));
            }
        }
        assert_eq!(seen.len() as u64, m.records());
        assert!(
            splits_of_patient.values().all(|s| s.len() == 1),
            "patient in two splits: {splits_of_patient:?}"
        );
        // 6 synthetic patients (the first shares id 8863 with a real one), real 8975, and 99001.
        assert_eq!(splits_of_patient.len(), 6 + 1 + 1);
        assert_eq!(padded as u64, m.padded);
        assert!(
            m.padded >= 2,
            "the real 32x50 patch and the 50x17 one are padded"
        );
        let keys: Vec<String> = ds
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.0)
            .collect();
        assert!(
            keys.iter()
                .all(|k| !k.starts_with(layout::dataset::STAGING)),
            "markers removed: {keys:?}"
        );
    }
}

/// Of the mixed source: 3 corrupt + 1 oversized skipped; 1 name rejected; notes.txt ignored
/// (no image); the other `pngs - 4` images staged.
fn the_unreadable_files_are_skipped_with_their_reasons(
    m: &idc::dataset::manifest::DatasetManifest,
    pngs: usize,
) {
    let skipped: BTreeMap<&str, &str> = m
        .skipped
        .iter()
        .map(|s| (s.path.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(skipped.len(), 5, "{skipped:#?}");
    assert_eq!(m.source.ignored, 1);
    assert!(
        skipped["IDC_regular_ps50_idx5/99001/0/99001_idx5_x151_y1_class0.png"]
            .contains("64x64, larger than 50x50")
    );
    assert!(!skipped.contains_key("IDC_regular_ps50_idx5/99001/0/notes.txt"));
    assert!(
        skipped["IDC_regular_ps50_idx5/99001/1/99001_idx5_x201_y1_class0.png"]
            .contains("folder '1'")
    );
    assert_eq!(
        skipped
            .values()
            .filter(|r| r.starts_with("not a readable PNG"))
            .count(),
        3
    );
    assert_eq!(m.records() as usize, pngs - 4);
}

/// Record `r` holds the pixels of the PNG `name` under `src`, padded (and flagged so) to
/// 50x50 when smaller. Returns whether it was padded.
fn record_equals_its_png(src: &Path, name: &str, r: &idc::shard::Record) -> bool {
    let img = image::open(src.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_rgb8();
    let (w, h) = img.dimensions();
    assert_eq!(
        r.meta.flags & FLAG_PADDED != 0,
        (w, h) != (50, 50),
        "{name}"
    );
    for y in 0..50 {
        for x in 0..50 {
            let got = &r.pixels[(y * 50 + x) * 3..][..3];
            let want = if (x as u32) < w && (y as u32) < h {
                img.get_pixel(x as u32, y as u32).0
            } else {
                [PAD_VALUE; 3]
            };
            assert_eq!(got, want, "{name} pixel ({x},{y})");
        }
    }
    (w, h) != (50, 50)
}

#[tokio::test]
async fn duplicated_tree_is_counted_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let s = synth(&src, 4, 20, 0);
    // The Kaggle zip holds the patient folders both at the top and under IDC_regular_ps50_idx5/.
    let inner = src.join("IDC_regular_ps50_idx5");
    for p in std::fs::read_dir(&inner).unwrap() {
        let p = p.unwrap().path();
        let to = src.join(p.file_name().unwrap());
        for e in walkdir::WalkDir::new(&p) {
            let e = e.unwrap();
            let dst = to.join(e.path().strip_prefix(&p).unwrap());
            if e.file_type().is_dir() {
                std::fs::create_dir_all(&dst).unwrap();
            } else {
                std::fs::copy(e.path(), &dst).unwrap();
            }
        }
    }
    for url in backends(tmp.path()) {
        let ds = Store::open(&format!("{url}/dup")).unwrap();
        let m = stage::stage(&src, &ds, &opts(1000), &StageHooks::default())
            .await
            .unwrap()
            .manifest;
        assert_eq!(m.records(), s.files);
        assert_eq!(m.source.duplicates, s.files);
        assert_eq!(m.source.files_seen, 2 * s.files);
        assert!(m.skipped.is_empty());
    }
}

#[tokio::test]
async fn restaging_does_nothing_and_other_options_need_force() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    synth(&src, 5, 40, 0);
    for url in backends(tmp.path()) {
        let ds = Store::open(&format!("{url}/again")).unwrap();
        let first = stage::stage(&src, &ds, &opts(50), &StageHooks::default())
            .await
            .unwrap();
        let before = ds.list("").await.unwrap();
        let again = stage::stage(&src, &ds, &opts(50), &StageHooks::default())
            .await
            .unwrap();
        assert_eq!(again.status, StageStatus::AlreadyStaged);
        assert_eq!(again.manifest, first.manifest, "manifest untouched");
        assert_eq!(ds.list("").await.unwrap(), before);

        let other = StageOptions {
            split: SplitOptions {
                seed: 9,
                ..Default::default()
            },
            shard_records: 150,
            ..Default::default()
        };
        let err = stage::stage(&src, &ds, &other, &StageHooks::default())
            .await
            .unwrap_err();
        assert!(matches!(err, StageError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            idc::exit::ProcessExitCode::process_exit_code(&err),
            idc::exit::ExitCode::UserError
        );
        let replaced = stage::stage(
            &src,
            &ds,
            &StageOptions {
                force: true,
                ..other
            },
            &StageHooks::default(),
        )
        .await
        .unwrap()
        .manifest;
        assert_ne!(replaced.id, first.manifest.id);
        let shards: Vec<String> = ds
            .list("shards")
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.0)
            .collect();
        let mut live: Vec<String> = replaced.shards.iter().map(|s| s.key.clone()).collect();
        live.sort();
        assert_eq!(shards, live, "shards of the replaced dataset are removed");
    }
}

#[tokio::test]
async fn an_interrupted_stage_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    synth(&src, 6, 40, 1);
    for url in backends(tmp.path()) {
        let ds = Store::open(&format!("{url}/resume")).unwrap();
        let hooks = StageHooks::default();
        let cancel = hooks.cancel.clone();
        let hooks = StageHooks {
            on_commit: Some(Box::new(move |done| {
                if done == 2 {
                    cancel.store(true, Ordering::SeqCst);
                }
            })),
            ..hooks
        };
        let err = stage::stage(&src, &ds, &opts(30), &hooks)
            .await
            .unwrap_err();
        let StageError::Interrupted { done: 2, total } = err else {
            panic!("{err}")
        };
        assert!(
            idc::dataset::manifest::read(&ds).await.unwrap().is_none(),
            "a half-staged dataset has no manifest"
        );

        let out = stage::stage(&src, &ds, &opts(30), &StageHooks::default())
            .await
            .unwrap();
        assert_eq!(
            out.status,
            StageStatus::Staged {
                written: total - 2,
                resumed: 2
            }
        );

        let fresh = Store::open(&format!("{url}/resume-fresh")).unwrap();
        let want = stage::stage(&src, &fresh, &opts(30), &StageHooks::default())
            .await
            .unwrap()
            .manifest;
        assert_eq!(
            out.manifest.shards, want.shards,
            "resumed shards equal an uninterrupted stage's"
        );
        assert_eq!(
            (out.manifest.skipped.len(), out.manifest.splits.clone()),
            (1, want.splits)
        );
        load_shards(&ds, &out.manifest).await;
    }
}

#[tokio::test]
async fn strict_turns_skips_into_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    synth(&src, 4, 20, 1);
    let ds = Store::open(&backends(tmp.path())[0]).unwrap();
    let strict = StageOptions {
        strict: true,
        ..opts(100)
    };
    let err = stage::stage(&src, &ds, &strict, &StageHooks::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StageError::Strict { count: 1, .. }), "{err}");
    assert!(err.to_string().contains("not a readable PNG"), "{err}");
    assert!(idc::dataset::manifest::read(&ds).await.unwrap().is_none());

    // Undersized patches: padded by default, skipped (and so failing --strict) on request.
    // The real sample has two patients: too few for a patient split.
    let random = SplitOptions {
        method: SplitMethod::Random,
        ..Default::default()
    };
    let skip = StageOptions {
        undersized: Undersized::Skip,
        split: random,
        ..opts(100)
    };
    let m = stage::stage(
        &real_sample(),
        &ds.child("real"),
        &skip,
        &StageHooks::default(),
    )
    .await
    .unwrap()
    .manifest;
    assert_eq!(m.records(), 104);
    assert_eq!(m.padded, 0);
    let reasons: Vec<&str> = m.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["image is 32x50, smaller than 50x50 (skipped by --skip-undersized)"],
        "the fixture's edge patch"
    );
    assert_eq!(m.source.ignored, 1, "the fixture's README.md is no image");
}

#[tokio::test]
async fn zip_is_read_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    synth(&src, 4, 30, 0);
    let zip_path = tmp.path().join("archive.zip");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        let mut n = 0;
        for e in walkdir::WalkDir::new(&src).sort_by_file_name() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(&src)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if e.file_type().is_dir() {
                if !rel.is_empty() {
                    zip.add_directory(rel, zip::write::SimpleFileOptions::default())
                        .unwrap();
                }
                continue;
            }
            // Both methods the Kaggle zip may use.
            let method = if n % 2 == 0 {
                zip::CompressionMethod::Deflated
            } else {
                zip::CompressionMethod::Stored
            };
            n += 1;
            zip.start_file(
                rel,
                zip::write::SimpleFileOptions::default().compression_method(method),
            )
            .unwrap();
            std::io::Write::write_all(&mut zip, &std::fs::read(e.path()).unwrap()).unwrap();
        }
        zip.finish().unwrap();
    }
    let root = Store::open(&backends(tmp.path())[0]).unwrap();
    let from_dir = stage::stage(&src, &root.child("d"), &opts(40), &StageHooks::default())
        .await
        .unwrap()
        .manifest;
    let from_zip = stage::stage(
        &zip_path,
        &root.child("z"),
        &opts(40),
        &StageHooks::default(),
    )
    .await
    .unwrap()
    .manifest;
    assert_eq!(from_zip.source.kind, idc::dataset::source::SourceKind::Zip);
    assert_eq!(
        from_zip.shards, from_dir.shards,
        "same records from the zip as from the folder"
    );

    // A damaged zip entry is reported and skipped, not fatal.
    let mut bytes = std::fs::read(&zip_path).unwrap();
    let at = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
    bytes[at + 10] ^= 0xff;
    std::fs::write(&zip_path, bytes).unwrap();
    let m = stage::stage(
        &zip_path,
        &root.child("z2"),
        &opts(40),
        &StageHooks::default(),
    )
    .await
    .unwrap()
    .manifest;
    assert_eq!(m.skipped.len(), 1, "{:?}", m.skipped);
    assert_eq!(m.records(), from_dir.records() - 1);
}

#[tokio::test]
async fn seed_style_random_split_has_exact_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let s = synth(&src, 5, 60, 0);
    let ds = Store::open(&backends(tmp.path())[0]).unwrap();
    let o = StageOptions {
        split: SplitOptions {
            method: SplitMethod::Random,
            val: SplitSize::Count(38),
            test: SplitSize::Count(38),
            seed: 1,
        },
        ..opts(100)
    };
    let m = stage::stage(&src, &ds, &o, &StageHooks::default())
        .await
        .unwrap()
        .manifest;
    assert_eq!(m.splits[&Split::Val].records, 38);
    assert_eq!(m.splits[&Split::Test].records, 38);
    assert_eq!(m.splits[&Split::Train].records, s.files - 76);
    let train = &m.splits[&Split::Train].class_counts;
    assert_eq!(
        m.class_weights,
        idc::dataset::manifest::class_weights(train)
    );
    assert!(m.mean.iter().chain(&m.std).all(|v| *v > 0.0 && *v < 1.0));
}

#[tokio::test]
async fn storage_round_trips_multipart_objects() {
    let tmp = tempfile::tempdir().unwrap();
    for url in backends(tmp.path()) {
        let store = Store::open(&url).unwrap();
        let big: Vec<u8> = (0..idc::store::PART_SIZE * 2 + 12_345)
            .map(|i| (i % 241) as u8)
            .collect();
        store
            .put("objects/big.bin", bytes::Bytes::from(big.clone()))
            .await
            .unwrap();
        assert_eq!(
            store.size("objects/big.bin").await.unwrap(),
            Some(big.len() as u64)
        );
        assert_eq!(
            store.get("objects/big.bin").await.unwrap().as_ref(),
            &big[..]
        );
        assert_eq!(
            store.list("objects").await.unwrap(),
            [("objects/big.bin".to_string(), big.len() as u64)]
        );
        store.delete_prefix("objects").await.unwrap();
        assert_eq!(store.get_opt("objects/big.bin").await.unwrap(), None);
    }
}
