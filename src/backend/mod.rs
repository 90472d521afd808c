//! Backends run a submitted run's worker: `local` (a child process on this machine).
pub mod local;
