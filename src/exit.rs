//! Process exit codes shared by `idcctl` and `idc-worker` (part of their interface), the
//! [`ProcessExitCode`] trait each library error implements, and [`message_of`], what a failed
//! command says.

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
    /// Some items failed and the others were done: `idcctl predict` over slides, each failed
    /// slide's summary says why. Rerunning the same command does only the failed ones.
    Partial = 4,
    /// `idcctl` was interrupted (Ctrl-C) after saving progress; rerun to resume.
    Interrupted = 130,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

/// An error that knows the exit code a command ends with when it is the cause (nextest's
/// `process_exit_code`). Each library error implements it beside its definition; the binaries
/// walk an error's chain and ask each cause they know ([`ExitCode::Failure`] when none does).
pub trait ProcessExitCode: std::error::Error {
    /// The exit code for this error.
    fn process_exit_code(&self) -> ExitCode;
}

/// What `e` says, with each cause in its chain said once: a cause whose text its wrapper
/// already includes (as `{source}`), or that only puts a label before its own cause's text
/// ("ServiceError: client error"), adds nothing.
pub fn message_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        let labels_its_cause = c.source().is_some_and(|inner| {
            let inner = inner.to_string();
            text.ends_with(&inner) && out.contains(&inner)
        });
        if !text.is_empty() && !out.contains(&text) && !labels_its_cause {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error saying `text`, caused by `cause`.
    #[derive(Debug)]
    struct E(String, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn chain(texts: &[&str]) -> E {
        texts
            .iter()
            .rev()
            .fold(None, |cause, t| Some(E(t.to_string(), cause.map(Box::new))))
            .unwrap()
    }

    #[test]
    fn each_cause_is_said_once() {
        // kube-rs: the wrapper names its source, which labels its own, which has more to say.
        let e = chain(&[
            "cannot reach https://k:6443/: client error (Connect); is the cluster up?",
            "ServiceError: client error (Connect)",
            "client error (Connect)",
            "tcp connect error: Connection refused (os error 111)",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            message_of(&e),
            "cannot reach https://k:6443/: client error (Connect); is the cluster up?: tcp connect error: Connection refused (os error 111)"
        );
        // Causes the message does not include are all said.
        let e = chain(&["reading s3://b/k", "timed out", "after 3 retries"]);
        assert_eq!(
            message_of(&e),
            "reading s3://b/k: timed out: after 3 retries"
        );
    }
}
