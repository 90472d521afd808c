//! The staged dataset manifest (`manifest.json`): what a staged dataset holds and how to read it.
//!
//! Written last by `idcctl stage`, read ([`read`]) by `idcctl dataset show` and by the worker.
//! Schema version 1 grew compatibly with K-class datasets: `classes` (absent before, meaning the
//! two IDC classes), and per-class and per-channel arrays of any length.

use super::split::{Split, SplitOptions};
use crate::layout::dataset as keys;
use crate::shard::{Layout, Shape};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What to do with an edge patch smaller than 50x50.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Undersized {
    /// Keep the patch at the top-left and fill the rest with white (the slide background).
    #[default]
    Pad,
    /// Leave the patch out (it is counted and reported).
    Skip,
}

impl crate::choice::Choice for Undersized {
    const ALL: &'static [Self] = &[Undersized::Pad, Undersized::Skip];
    fn name(self) -> &'static str {
        match self {
            Undersized::Pad => "pad",
            Undersized::Skip => "skip",
        }
    }
}
crate::choice_names!(Undersized);

/// The kind of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The IDC download, extracted.
    Dir,
    /// The IDC download as a zip.
    Zip,
    /// A CIFAR-10 `.tar.gz` (python or binary version).
    Cifar10,
    /// A folder of MNIST-style IDX files.
    Idx,
}

impl SourceKind {
    /// Whether the source is a labelled archive with an official train/test split (rather than
    /// IDC patches, split by patient or at random).
    pub fn is_archive(self) -> bool {
        matches!(self, SourceKind::Cifar10 | SourceKind::Idx)
    }
}

/// A file that is not a patch, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejected {
    pub path: String,
    pub reason: String,
}

/// Version of this manifest's schema.
pub const MANIFEST_VERSION: u32 = 1;

/// A staged dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    /// Schema version ([`MANIFEST_VERSION`]).
    pub format_version: u32,
    /// Shard format version ([`crate::shard::FORMAT_VERSION`]).
    pub shard_format_version: u16,
    /// Identity of (source fingerprint, staging options): equal ids mean equal content.
    pub id: String,
    /// When staging finished (RFC 3339, UTC).
    pub created_at: String,
    /// The idcctl version that staged it.
    pub staged_by: String,
    pub source: SourceInfo,
    pub options: StageOptionsRecord,
    pub image: ImageInfo,
    /// Class names, index = label (datasets staged before this field: the two IDC classes).
    #[serde(default = "crate::idc_classes")]
    pub classes: Vec<String>,
    pub splits: BTreeMap<Split, SplitSummary>,
    /// Per-class loss/sampling weights from the train split: `n / (K * n_class)`, index = class.
    pub class_weights: Vec<f64>,
    /// Per-channel mean of train pixels (RGB, or one gray channel), scaled to [0, 1].
    pub mean: Vec<f64>,
    /// Per-channel standard deviation of train pixels, scaled to [0, 1].
    pub std: Vec<f64>,
    /// Microns per pixel of the images: the scale a model trained on them reads slides at
    /// (given at staging; the IDC patches' is [`crate::IDC_MICRONS_PER_PIXEL`]). `None`:
    /// unknown (datasets staged before this field: see [`DatasetManifest::microns_per_pixel`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microns_per_pixel: Option<f64>,
    /// Edge patches padded to 50x50.
    pub padded: u64,
    /// Files left out, with the reason (bad names, unreadable PNGs, wrong sizes).
    pub skipped: Vec<Rejected>,
    pub shards: Vec<ShardInfo>,
}

/// Where the data came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The path given to `idcctl stage`.
    pub path: String,
    pub kind: SourceKind,
    /// SHA-256 over the paths and sizes of every file in the source.
    pub fingerprint: String,
    pub files_seen: u64,
    /// Patches found twice (a duplicated tree) and counted once.
    pub duplicates: u64,
    /// Files that were no images, or macOS litter, and were left out.
    #[serde(default)]
    pub ignored: u64,
}

/// The options that shaped the staged content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageOptionsRecord {
    /// Archives: `val` and `seed` carve validation out of the training images; `test` is the
    /// official test set's size.
    pub split: SplitOptions,
    pub undersized: Undersized,
    pub shard_records: usize,
    /// Class names given at staging, replacing the archive's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// The images' scale given at staging (`--microns-per-pixel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microns_per_pixel: Option<f64>,
}

/// Shape and encoding of each record's pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub layout: String,
    pub dtype: String,
}

impl Default for ImageInfo {
    fn default() -> Self {
        Self {
            height: crate::PATCH_SIZE as u32,
            width: crate::PATCH_SIZE as u32,
            channels: crate::CHANNELS as u32,
            layout: "HWC".into(),
            dtype: "uint8".into(),
        }
    }
}

impl ImageInfo {
    /// The image shape.
    pub fn shape(&self) -> Shape {
        Shape {
            height: self.height,
            width: self.width,
            channels: self.channels,
        }
    }

    /// HWC uint8 images of `shape`.
    pub fn of(shape: Shape) -> Self {
        Self {
            height: shape.height,
            width: shape.width,
            channels: shape.channels,
            ..Self::default()
        }
    }
}

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub records: u64,
    /// Records per class, index = label (IDC: `[no IDC, IDC]`).
    pub class_counts: Vec<u64>,
    /// Distinct patients (0 for archives, which have none).
    pub patients: u64,
}

impl SplitSummary {
    /// Fraction of records of class 1 (IDC).
    pub fn positive_fraction(&self) -> f64 {
        if self.records == 0 {
            0.0
        } else {
            self.class_counts.get(1).copied().unwrap_or(0) as f64 / self.records as f64
        }
    }

    /// Records of class `c`.
    pub fn count_of(&self, c: usize) -> u64 {
        self.class_counts.get(c).copied().unwrap_or(0)
    }
}

/// One shard object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Key relative to the dataset URL.
    pub key: String,
    pub split: Split,
    pub records: u64,
    pub bytes: u64,
    pub sha256: String,
    /// Records per class, index = label.
    pub class_counts: Vec<u64>,
}

impl DatasetManifest {
    /// The images' microns per pixel: as recorded, else (a manifest from before the field)
    /// the IDC patches' scale for IDC patches; `None` when unknown.
    pub fn microns_per_pixel(&self) -> Option<f64> {
        self.microns_per_pixel
            .or_else(|| (!self.source.kind.is_archive()).then_some(crate::IDC_MICRONS_PER_PIXEL))
    }

    /// Total records over all splits.
    pub fn records(&self) -> u64 {
        // Saturating: the counts are the stored manifest's word.
        self.splits
            .values()
            .fold(0, |n, s| n.saturating_add(s.records))
    }

    /// Total records per class over all splits.
    pub fn class_counts(&self) -> Vec<u64> {
        (0..self.classes.len())
            .map(|c| (self.splits.values()).fold(0, |n: u64, s| n.saturating_add(s.count_of(c))))
            .collect()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Whether this is a two-class dataset (IDC): binary metrics and thresholds apply.
    pub fn is_binary(&self) -> bool {
        self.classes.len() == 2
    }

    /// How an archive's splits were made, for summaries: the official test set kept, validation
    /// carved from the training images.
    pub fn archive_split_rule(&self) -> String {
        let o = &self.options.split;
        format!(
            "official test set ({}), validation {} of the training images (stratified by class, seed {})",
            o.test, o.val, o.seed
        )
    }

    /// What every shard's records are: image shape and class count.
    pub fn layout(&self) -> Layout {
        Layout {
            shape: self.image.shape(),
            classes: self.classes.len() as u16,
        }
    }

    /// The shards of `split`, in order.
    pub fn shards_of(&self, split: Split) -> impl Iterator<Item = &ShardInfo> {
        self.shards.iter().filter(move |s| s.split == split)
    }

    /// Checks the manifest is one this build can read.
    pub fn check_version(&self) -> Result<(), String> {
        if self.format_version != MANIFEST_VERSION
            || !crate::shard::READABLE_VERSIONS.contains(&self.shard_format_version)
        {
            return Err(format!(
                "dataset format v{} / shards v{} is not supported by this build (v{} / v1 to v{}): restage it",
                self.format_version,
                self.shard_format_version,
                MANIFEST_VERSION,
                crate::shard::FORMAT_VERSION
            ));
        }
        let k = self.classes.len();
        let per_class = self
            .splits
            .values()
            .map(|s| s.class_counts.len())
            .chain(self.shards.iter().map(|s| s.class_counts.len()))
            .chain([self.class_weights.len()]);
        let c = self.image.channels as usize;
        self.image.shape().fits_header()?;
        if !(2..=256).contains(&k)
            || per_class.into_iter().any(|n| n != k)
            || self.mean.len() != c
            || self.std.len() != c
            || self.image.shape().pixel_bytes() == 0
        {
            return Err(format!(
                "inconsistent: {k} classes, {} channels, but per-class counts or per-channel statistics of other lengths",
                self.image.channels
            ));
        }
        Ok(())
    }
}

/// Class weights `n / (K * n_c)` ("balanced" inverse frequency, K = number of classes); 0 for an
/// absent class.
pub fn class_weights(counts: impl AsRef<[u64]>) -> Vec<f64> {
    let counts = counts.as_ref();
    let n = counts.iter().fold(0u64, |n, &c| n.saturating_add(c)) as f64;
    let k = counts.len() as f64;
    counts
        .iter()
        .map(|&c| if c == 0 { 0.0 } else { n / (k * c as f64) })
        .collect()
}

/// A channel whose standard deviation is at most this never varies: it is not scaled.
pub const MIN_STD: f64 = 1e-6;

/// What a model divides each channel by, given the channels' standard deviations `std`: the
/// deviation, or 1 for a channel that never varies. The worker's models and the `Normalize` of
/// an exported model's configuration both use it, so they agree.
pub fn normalizing_std(std: &[f64]) -> Vec<f64> {
    std.iter()
        .map(|&s| if s > MIN_STD { s } else { 1.0 })
        .collect()
}

/// Reads the manifest of the dataset at `dataset` (None: nothing staged there). One that does
/// not parse, or that a newer idcctl wrote, is [`StoreError::Corrupt`], naming it.
pub async fn read(dataset: &Store) -> Result<Option<DatasetManifest>, StoreError> {
    let Some(bytes) = dataset.get_opt(keys::MANIFEST).await? else {
        return Ok(None);
    };
    parse(&dataset.url_of(keys::MANIFEST), &bytes).map(Some)
}

/// The manifest stored at `url`, checked ([`DatasetManifest::check_version`]): one that does
/// not parse or check is [`StoreError::Corrupt`], naming it.
pub fn parse(url: &str, bytes: &[u8]) -> Result<DatasetManifest, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        url: url.to_string(),
        reason,
    };
    let m: DatasetManifest = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    m.check_version().map_err(corrupt)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_inverse_frequency() {
        let w = class_weights([144_435, 57_089]);
        assert!(
            (w[0] * 144_435.0 - w[1] * 57_089.0).abs() < 1e-6,
            "each class weighs the same in total"
        );
        assert!((w[0] - 201_524.0 / 288_870.0).abs() < 1e-12);
        assert_eq!(class_weights([10, 0]), [0.5, 0.0]);
        // Ten classes: each class weighs n / 10 in total.
        let w = class_weights([10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        assert!((w[0] * 10.0 - 55.0).abs() < 1e-9 && (w[9] * 100.0 - 55.0).abs() < 1e-9);
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{bytes, config, corrupted};
        use proptest::prelude::*;

        const URL: &str = "file:///b/datasets/d/manifest.json";

        fn valid() -> Vec<u8> {
            let split = |records, class_counts: Vec<u64>| SplitSummary {
                records,
                class_counts,
                patients: 3,
            };
            let m = DatasetManifest {
                format_version: MANIFEST_VERSION,
                shard_format_version: crate::shard::FORMAT_VERSION,
                id: "ab12".into(),
                created_at: "2026-01-01T00:00:00Z".into(),
                staged_by: "idcctl 0.1.0".into(),
                source: SourceInfo {
                    path: "/data/idc".into(),
                    kind: SourceKind::Dir,
                    fingerprint: "f".into(),
                    files_seen: 12,
                    duplicates: 0,
                    ignored: 1,
                },
                options: StageOptionsRecord {
                    split: SplitOptions::default(),
                    undersized: Undersized::Pad,
                    shard_records: 8,
                    class_names: None,
                    microns_per_pixel: None,
                },
                image: ImageInfo::default(),
                classes: crate::idc_classes(),
                microns_per_pixel: None,
                splits: [
                    (Split::Train, split(8, vec![5, 3])),
                    (Split::Val, split(2, vec![1, 1])),
                    (Split::Test, split(2, vec![2, 0])),
                ]
                .into(),
                class_weights: class_weights([5, 3]),
                mean: vec![0.8, 0.6, 0.7],
                std: vec![0.1, 0.2, 0.1],
                padded: 1,
                skipped: vec![Rejected {
                    path: "x.txt".into(),
                    reason: "not a patch".into(),
                }],
                shards: vec![ShardInfo {
                    key: "shards/train-00000.idcs".into(),
                    split: Split::Train,
                    records: 8,
                    bytes: 60_128,
                    sha256: "00".into(),
                    class_counts: vec![5, 3],
                }],
            };
            serde_json::to_vec_pretty(&m).unwrap()
        }

        /// A manifest read back is summarised as `dataset show` and the worker do, without
        /// panicking; an error names it.
        fn read_or_name(b: &[u8]) {
            match parse(URL, b) {
                Ok(m) => {
                    m.records();
                    m.class_counts();
                    m.layout().record_len();
                    m.archive_split_rule();
                    class_weights(m.class_counts());
                    for s in m.splits.values() {
                        s.positive_fraction();
                    }
                }
                Err(e) => assert!(e.to_string().contains(URL), "{e}"),
            }
        }

        #[test]
        fn the_valid_manifest_reads() {
            parse(URL, &valid()).unwrap();
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn any_bytes(b in bytes(256)) {
                read_or_name(&b);
            }

            #[test]
            fn corrupted_manifests(b in corrupted(valid())) {
                read_or_name(&b);
            }

            #[test]
            fn hostile_numbers(
                dims in proptest::array::uniform3(any::<u32>()),
                counts in proptest::array::uniform2(any::<u64>()),
            ) {
                let mut v: serde_json::Value = serde_json::from_slice(&valid()).unwrap();
                v["image"]["height"] = dims[0].into();
                v["image"]["width"] = dims[1].into();
                v["image"]["channels"] = dims[2].into();
                v["splits"]["train"]["records"] = counts[0].into();
                v["splits"]["val"]["records"] = counts[1].into();
                v["splits"]["train"]["class_counts"] = serde_json::json!(counts);
                v["splits"]["test"]["class_counts"] = serde_json::json!(counts);
                read_or_name(&serde_json::to_vec(&v).unwrap());
            }
        }
    }
}
