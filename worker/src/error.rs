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
    #[error("{0}")]
    Internal(String),
}

impl WorkerError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            WorkerError::BadInput(_) => ExitCode::UserError,
            WorkerError::Store(idc::store::StoreError::BadUrl { .. }) => ExitCode::UserError,
            _ => ExitCode::Failure,
        }
    }
}
