//! The IDC patch dataset: file names, sources, PNG decoding, splits, the staged manifest and
//! the synthetic generator.

pub mod manifest;
pub mod split;

#[cfg(feature = "controller")]
pub mod decode;
#[cfg(feature = "controller")]
pub mod name;
#[cfg(feature = "controller")]
pub mod source;
#[cfg(feature = "controller")]
pub mod synth;

/// The folder that holds the patient folders in the Kaggle download.
pub const KAGGLE_ROOT: &str = "IDC_regular_ps50_idx5";
