//! The integration tests, one module per area, linked into one test binary: each area used to
//! be its own binary, which linked the library (and its dependencies) once per area.
//!
//! Run one area with `cargo test --test it <area>::`, e.g. `cargo test --test it chart::`.

mod common;

mod archives;
mod chart;
mod cli;
mod conformance;
mod export;
mod images;
mod kube;
mod layers;
mod list;
mod manifest;
mod mlflow;
mod predict;
mod report_html;
mod runs;
mod slides;
mod stage;
mod sweep;
mod tensorboard;
mod weights;
