//! Backends run a submitted run's worker: `local` (a child process on this machine) and `kube`
//! (a Kubernetes GPU Job).
pub mod kube;
pub mod local;
