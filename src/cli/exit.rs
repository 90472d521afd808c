//! The exit code a failed command ends with: its error chain is walked from the outermost cause,
//! and the first cause of a library error type says it (each type decides its own, through
//! [`ProcessExitCode`]). This list is the one place that names them all: it sits at the top, in
//! the binary, so no library layer has to know the layers above it.

use super::UserError;
use idc::exit::{ExitCode, ProcessExitCode};
use std::error::Error;

/// The exit code for `e`: that of the first cause in its chain whose type knows one;
/// [`ExitCode::Failure`] when none does.
pub fn of_error(e: &anyhow::Error) -> ExitCode {
    e.chain().find_map(code_of).unwrap_or(ExitCode::Failure)
}

/// The code of `e` when its type is one of the library's errors (or a command-line mistake).
fn code_of(e: &(dyn Error + 'static)) -> Option<ExitCode> {
    macro_rules! first_of {
        ($($t:ty),* $(,)?) => {$(
            if let Some(e) = e.downcast_ref::<$t>() {
                return Some(e.process_exit_code());
            }
        )*};
    }
    first_of!(
        UserError,
        idc::store::StoreError,
        idc::dataset::archive::ArchiveError,
        idc::dataset::synth::InvalidSynth,
        idc::stage::StageError,
        idc::experiment::ManifestError,
        idc::backend::BackendError,
        idc::backend::kube::cluster::KubeError,
        idc::backend::local::LocalError,
        idc::predict::PredictError,
        idc::export::ExportError,
        idc::report::ReportError,
        idc::run::RunError,
        idc::sweep::driver::SweepError,
        idc::sweep::state::OpenError,
        idc::track::TrackError,
        idc::tracking::mlflow::TrackingError,
        idc::weights::WeightsError,
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use idc::dataset::archive::ArchiveError;

    #[test]
    fn the_first_cause_that_knows_its_code_decides() {
        let missing = ArchiveError::NotFound("/nope.tar.gz".into());
        let e = anyhow::Error::new(missing).context("staging /nope.tar.gz");
        assert_eq!(of_error(&e), ExitCode::UserError);
        let io = ArchiveError::Io {
            path: "/f".into(),
            member: None,
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let e = Err::<(), _>(io).context("reading").unwrap_err();
        assert_eq!(of_error(&e), ExitCode::Failure);
        let e = anyhow::Error::new(UserError("--poll must be positive".into())).context("sweep");
        assert_eq!(of_error(&e), ExitCode::UserError);
        assert_eq!(of_error(&anyhow::anyhow!("plain")), ExitCode::Failure);
    }
}
