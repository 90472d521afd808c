//! The staged dataset manifest (`manifest.json`): what a staged dataset holds and how to read it.
//!
//! Written last by `idcctl stage`, read ([`read`]) by `idcctl dataset show` and by the worker.

use super::split::{Split, SplitOptions};
use crate::layout::dataset as keys;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What to do with an edge patch smaller than 50x50.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[cfg_attr(feature = "controller", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Undersized {
    /// Keep the patch at the top-left and fill the rest with white (the slide background).
    #[default]
    Pad,
    /// Leave the patch out (it is counted and reported).
    Skip,
}

/// The kind of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Dir,
    Zip,
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
    pub splits: BTreeMap<Split, SplitSummary>,
    /// Per-class loss/sampling weights from the train split: `n / (2 * n_class)`, index = class.
    pub class_weights: [f64; 2],
    /// Per-channel (RGB) mean of train pixels, scaled to [0, 1].
    pub mean: [f64; 3],
    /// Per-channel (RGB) standard deviation of train pixels, scaled to [0, 1].
    pub std: [f64; 3],
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
    pub split: SplitOptions,
    pub undersized: Undersized,
    pub shard_records: usize,
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

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub records: u64,
    /// Records per class: `[no IDC, IDC]`.
    pub class_counts: [u64; 2],
    pub patients: u64,
}

impl SplitSummary {
    /// Fraction of records with IDC.
    pub fn positive_fraction(&self) -> f64 {
        if self.records == 0 {
            0.0
        } else {
            self.class_counts[1] as f64 / self.records as f64
        }
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
    /// Records per class: `[no IDC, IDC]`.
    pub class_counts: [u64; 2],
}

impl DatasetManifest {
    /// Total records over all splits.
    pub fn records(&self) -> u64 {
        self.splits.values().map(|s| s.records).sum()
    }

    /// Total records per class over all splits.
    pub fn class_counts(&self) -> [u64; 2] {
        self.splits.values().fold([0, 0], |acc, s| {
            [acc[0] + s.class_counts[0], acc[1] + s.class_counts[1]]
        })
    }

    /// The shards of `split`, in order.
    pub fn shards_of(&self, split: Split) -> impl Iterator<Item = &ShardInfo> {
        self.shards.iter().filter(move |s| s.split == split)
    }

    /// Checks the manifest is one this build can read.
    pub fn check_version(&self) -> Result<(), String> {
        if self.format_version != MANIFEST_VERSION
            || self.shard_format_version != crate::shard::FORMAT_VERSION
        {
            return Err(format!(
                "dataset format v{} / shards v{} is not supported by this build (v{} / v{}): restage it",
                self.format_version,
                self.shard_format_version,
                MANIFEST_VERSION,
                crate::shard::FORMAT_VERSION
            ));
        }
        Ok(())
    }
}

/// Class weights `n / (2 * n_c)` ("balanced" inverse frequency); 0 for an absent class.
pub fn class_weights(counts: [u64; 2]) -> [f64; 2] {
    let n = (counts[0] + counts[1]) as f64;
    counts.map(|c| if c == 0 { 0.0 } else { n / (2.0 * c as f64) })
}

/// Reads the manifest of the dataset at `dataset` (None: nothing staged there). One that does
/// not parse, or that a newer idcctl wrote, is [`StoreError::Corrupt`], naming it.
pub async fn read(dataset: &Store) -> Result<Option<DatasetManifest>, StoreError> {
    let Some(bytes) = dataset.get_opt(keys::MANIFEST).await? else {
        return Ok(None);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        url: dataset.url_of(keys::MANIFEST),
        reason,
    };
    let m: DatasetManifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    m.check_version().map_err(corrupt)?;
    Ok(Some(m))
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
    }
}
