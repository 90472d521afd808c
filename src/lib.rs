//! idc: the shared library behind `idcctl` and `idc-worker`.
//!
//! Every definition both binaries rely on lives here exactly once: the bucket layout
//! ([`layout`]), the shard format ([`shard`]), the staged dataset manifest
//! ([`dataset::manifest`]), the prediction rows and jobs ([`predictions`]), what a whole-slide
//! prediction reads and writes ([`slide`]) and the exit codes ([`exit`]).
//!
//! The `controller` feature (on by default) adds what only `idcctl` needs: staging, the
//! backends, `predict`, `export`, sweeps, reports and the import of pretrained weights
//! (`weights`). The worker builds without it, on the shared formats alone.

pub mod attempt;
pub mod choice;
pub mod clock;
pub mod dataset;
pub mod exit;
pub mod json_float;
pub mod layout;
pub mod metrics;
pub mod predictions;
pub mod rng;
pub mod shard;
pub mod slide;
pub mod spec;
pub mod store;
pub mod tracking;

#[cfg(feature = "controller")]
pub mod backend;
#[cfg(feature = "controller")]
pub mod experiment;
#[cfg(feature = "controller")]
pub mod export;
#[cfg(feature = "controller")]
pub mod kube_syntax;
#[cfg(feature = "controller")]
pub mod listing;
#[cfg(feature = "controller")]
pub mod output;
#[cfg(feature = "controller")]
pub mod pickle;
#[cfg(feature = "controller")]
pub mod predict;
#[cfg(feature = "controller")]
pub mod process;
#[cfg(feature = "controller")]
pub mod report;
#[cfg(feature = "controller")]
pub mod run;
#[cfg(feature = "controller")]
pub mod stage;
#[cfg(feature = "controller")]
pub mod sweep;
#[cfg(feature = "controller")]
pub mod track;
#[cfg(feature = "controller")]
pub mod weights;

/// Side length of an IDC patch in pixels (the Kaggle set is cut at 50x50).
pub const PATCH_SIZE: usize = 50;
/// Colour channels of a staged patch (RGB).
pub const CHANNELS: usize = 3;
/// Bytes of one staged patch: 50 x 50 x 3, HWC, uint8.
pub const PATCH_BYTES: usize = PATCH_SIZE * PATCH_SIZE * CHANNELS;

/// The names of the two IDC classes, index = label.
pub const IDC_CLASSES: [&str; 2] = ["no IDC", "IDC"];

/// Microns per pixel of the IDC patches: cut at 2.5x from slides scanned at 40x (0.25 um/px,
/// downsampled 16 times). Slides are read at this scale for a model trained on them.
pub const IDC_MICRONS_PER_PIXEL: f64 = 4.0;

/// [`IDC_CLASSES`] as owned names: what a dataset or report without class names means.
pub fn idc_classes() -> Vec<String> {
    IDC_CLASSES.map(String::from).to_vec()
}

#[cfg(test)]
mod fuzz;
