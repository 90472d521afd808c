//! idc: the shared library behind `idcctl` and `idc-worker`.
//!
//! Every definition both binaries rely on lives here exactly once: the bucket layout
//! ([`layout`]), the shard format ([`shard`]), the staged dataset manifest
//! ([`dataset::manifest`]) and the exit codes ([`exit`]).

pub mod backend;
pub mod clock;
pub mod dataset;
pub mod exit;
pub mod json_float;
pub mod layout;
pub mod manifest;
pub mod metrics;
pub mod output;
pub mod process;
pub mod report;
pub mod rng;
pub mod run;
pub mod shard;
pub mod spec;
pub mod stage;
pub mod store;
pub mod sweep;

/// Side length of an IDC patch in pixels (the Kaggle set is cut at 50x50).
pub const PATCH_SIZE: usize = 50;
/// Colour channels of a staged patch (RGB).
pub const CHANNELS: usize = 3;
/// Bytes of one staged patch: 50 x 50 x 3, HWC, uint8.
pub const PATCH_BYTES: usize = PATCH_SIZE * PATCH_SIZE * CHANNELS;
