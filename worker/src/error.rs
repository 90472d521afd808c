//! The worker's errors, each mapped to an exit code.

use idc::exit::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The spec or the data is wrong: retrying cannot help.
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Store(#[from] idc::store::StoreError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The libtorch loaded at run time lacks an operator the shim calls (another libtorch than
    /// the one the worker was built against): the image or `LD_LIBRARY_PATH` is wrong.
    #[error(
        "the libtorch loaded at run time has no operator {op}; this worker was built against libtorch {built}: run it with that libtorch (its lib folder on LD_LIBRARY_PATH)"
    )]
    MissingOp { op: String, built: &'static str },
    /// A local file (a checkpoint or weights on their way to or from the bucket).
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl WorkerError {
    /// An I/O error while doing `what`.
    pub fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> WorkerError {
        move |source| WorkerError::Io { what, source }
    }
}

impl idc::exit::ProcessExitCode for WorkerError {
    fn process_exit_code(&self) -> ExitCode {
        match self {
            WorkerError::BadInput(_) | WorkerError::MissingOp { .. } => ExitCode::UserError,
            WorkerError::Store(e) => e.process_exit_code(),
            _ => ExitCode::Failure,
        }
    }
}
