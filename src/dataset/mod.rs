//! Datasets: the IDC patches (file names, sources, PNG decoding, the synthetic generator),
//! labelled archives (CIFAR-10, IDX), splits, the staged manifest and its printed summary.

pub mod manifest;
pub mod split;

#[cfg(feature = "controller")]
pub mod archive;
#[cfg(feature = "controller")]
pub mod decode;
#[cfg(feature = "controller")]
pub mod name;
#[cfg(feature = "controller")]
pub mod source;
#[cfg(feature = "controller")]
pub mod synth;
#[cfg(feature = "controller")]
pub mod table;

/// The folder that holds the patient folders in the Kaggle download.
pub const KAGGLE_ROOT: &str = "IDC_regular_ps50_idx5";
