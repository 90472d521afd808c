//! The Kubernetes backend: a run as a batch/v1 GPU Job that runs the worker against an S3 bucket.

pub mod defaults;

pub use defaults::{CONFIG_MAP, CONFIG_MAP_KEY, ClusterDefaults, RBAC_RULES};
