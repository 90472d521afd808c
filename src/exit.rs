//! Process exit codes shared by `idcctl` and `idc-worker`: part of their interface.

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
