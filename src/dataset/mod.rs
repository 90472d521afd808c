//! The IDC patch dataset: file names, sources, PNG decoding, splits, the staged manifest and
//! the synthetic generator.

pub mod decode;
pub mod manifest;
pub mod name;
pub mod source;
pub mod split;
pub mod synth;

/// The folder that holds the patient folders in the Kaggle download.
pub const KAGGLE_ROOT: &str = "IDC_regular_ps50_idx5";
