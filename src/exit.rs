//! Process exit codes shared by `idcctl` and `idc-worker`: part of their interface. And
//! [`of_error`], the one place that finds the exit code of a library error.

/// Exit codes. A caller (a script, a Kubernetes Job's pod failure policy) can tell a mistake in
/// the input, which retrying cannot fix, from a failure that may pass on retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Everything asked for was done.
    Success = 0,
    /// Storage, network or an internal error: retrying may help.
    Failure = 1,
    /// Bad input: command line, manifest, spec, source data. Fix the input, then rerun.
    UserError = 2,
    /// The worker was asked to stop (SIGTERM: preemption, cancel) and wrote a checkpoint first;
    /// rerunning resumes from it.
    Preempted = 3,
    /// `idcctl` was interrupted (Ctrl-C) after saving progress; rerun to resume.
    Interrupted = 130,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

/// The exit code a command ends with for error `e`: that of the first error in its chain (from
/// the outermost) whose type knows one; [`ExitCode::Failure`] when none does. This is the one
/// place that maps the library's error types to exit codes; each type decides its own.
pub fn of_error(e: &(dyn std::error::Error + 'static)) -> ExitCode {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(code) = own_code(c) {
            return code;
        }
        cause = c.source();
    }
    ExitCode::Failure
}

fn own_code(e: &(dyn std::error::Error + 'static)) -> Option<ExitCode> {
    if let Some(e) = e.downcast_ref::<crate::store::StoreError>() {
        return Some(e.exit_code());
    }
    #[cfg(feature = "controller")]
    {
        macro_rules! try_types {
            ($($t:ty),*) => {$(
                if let Some(e) = e.downcast_ref::<$t>() {
                    return Some(e.exit_code());
                }
            )*};
        }
        try_types!(
            crate::backend::BackendError,
            crate::backend::kube::cluster::KubeError,
            crate::backend::local::LocalError,
            crate::dataset::archive::ArchiveError,
            crate::experiment::ManifestError,
            crate::predict::PredictError,
            crate::report::ReportError,
            crate::stage::StageError,
            crate::sweep::driver::SweepError,
            crate::sweep::state::OpenError,
            crate::track::TrackError,
            crate::tracking::mlflow::TrackingError,
            crate::weights::WeightsError
        );
    }
    None
}
