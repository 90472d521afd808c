//! What `idcctl sweep status` and the end of `sweep run` show of a sweep: its record as JSON or
//! YAML ([`SweepView`]), or its trials as a table with the best trial and its curve
//! ([`SweepView::text`]).

use super::in_cluster::Driving;
use super::live::RunningTrial;
use super::manifest::Direction;
use super::state::{Driver, SweepState, Trial, TrialState};
use super::{Sweep, fmt_num, fmt_value, short_names};
use crate::output::{self, OutputFormat};
use serde::Serialize;

/// A sweep as shown; `-o json|yaml` print it (through [`serde_json::Value`], so keys come in
/// alphabetical order at every level).
#[derive(Debug, Serialize)]
pub struct SweepView<'a> {
    #[serde(skip)]
    sweep: &'a Sweep,
    #[serde(skip)]
    state: &'a SweepState,
    best: Option<&'a Trial>,
    /// The best trial's objective after each epoch (null where it was NaN).
    best_curve: Option<&'a [f64]>,
    created_at: &'a str,
    /// The driver holding the lease, when `driving` says one does.
    driver: Option<&'a Driver>,
    /// `status` of an unfinished sweep: who drives it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    driving: Option<&'a Driving>,
    finished_at: &'a Option<String>,
    max_trials: u32,
    name: &'a str,
    objective: Objective,
    parallelism: u32,
    pruner: &'a super::pruner::PrunerSpec,
    /// `status`: the running trials' runs as they are now.
    #[serde(skip_serializing_if = "Option::is_none")]
    running: Option<&'a [RunningTrial]>,
    sampler: &'a super::sampler::SamplerSpec,
    trials: &'a [Trial],
    updated_at: &'a str,
}

#[derive(Debug, Serialize)]
struct Objective {
    direction: Direction,
    metric: String,
}

impl<'a> SweepView<'a> {
    /// The sweep `sweep` with record `st`; `driving` and `running` as `sweep status` finds them.
    pub fn new(
        sweep: &'a Sweep,
        st: &'a SweepState,
        driving: Option<&'a Driving>,
        running: Option<&'a [RunningTrial]>,
    ) -> Self {
        let best = st.best(sweep);
        Self {
            sweep,
            state: st,
            best,
            best_curve: best.map(|b| b.intermediate.as_slice()),
            created_at: &st.created_at,
            driver: match driving {
                Some(Driving::Lease(d)) => Some(d),
                _ => None,
            },
            driving,
            finished_at: &st.finished_at,
            max_trials: sweep.max_trials,
            name: &sweep.name,
            objective: Objective {
                direction: sweep.objective.direction(),
                metric: sweep.objective.metric_name(),
            },
            parallelism: sweep.parallelism,
            pruner: &sweep.pruner,
            running,
            sampler: &sweep.sampler,
            trials: &st.trials,
            updated_at: &st.updated_at,
        }
    }

    /// The view in `format`.
    pub fn render(&self, format: OutputFormat) -> String {
        let value = serde_json::to_value(self).expect("serializable");
        output::render(&value, format, |_| self.text())
    }

    /// The trials as a table, with the failures' reasons, the running trials and the best trial
    /// with its curve.
    pub fn text(&self) -> String {
        let (sweep, st) = (self.sweep, self.state);
        let count = |s: TrialState| st.trials.iter().filter(|t| t.state == s).count();
        let metric = sweep.objective.metric_name();
        let mut out = format!(
            "sweep {}: {} {}, {} sampler, {} pruner; {} of {} trials: {} running, {} completed, {} pruned, {} failed\n",
            sweep.name,
            output::name_of(&sweep.objective.direction()),
            metric,
            sweep.sampler.name(),
            sweep.pruner.name(),
            st.trials.len(),
            sweep.max_trials,
            count(TrialState::Running),
            count(TrialState::Completed),
            count(TrialState::Pruned),
            count(TrialState::Failed),
        );
        match (self.driving, &st.finished_at) {
            (_, Some(at)) => out += &format!("finished at {at}\n"),
            (Some(d), None) => out += &format!("{}\n", d.line(&sweep.name, &st.updated_at)),
            (None, None) => {}
        }
        out += &self.trials_table(&metric);
        for tr in st.trials.iter().filter(|t| t.state == TrialState::Failed) {
            out += &format!(
                "{} failed: {}\n",
                tr.id,
                tr.reason.clone().unwrap_or_default()
            );
        }
        if let Some(r) = self.running.filter(|r| !r.is_empty()) {
            out += "running now:\n";
            for t in r {
                out += &format!("  {}\n", running_line(t, &metric));
            }
        }
        out += &self.best_text(&metric);
        out
    }

    fn trials_table(&self, metric: &str) -> String {
        let sweep = self.sweep;
        let mut t = crate::output::table();
        let mut header = vec![
            "trial".to_string(),
            "state".into(),
            metric.to_string(),
            "epochs".into(),
        ];
        header.extend(short_names(&sweep.space));
        t.set_header(header);
        for tr in self.trials {
            let mut row = vec![
                tr.id.clone(),
                output::name_of(&tr.state),
                tr.value.map(fmt_num).unwrap_or_default(),
                tr.intermediate.len().to_string(),
            ];
            row.extend(
                sweep
                    .space
                    .params
                    .iter()
                    .map(|p| tr.params.get(&p.path).map(fmt_value).unwrap_or_default()),
            );
            t.add_row(row);
        }
        format!("{t}\n")
    }

    fn best_text(&self, metric: &str) -> String {
        let Some(b) = self.best else {
            return "best: no trial has completed yet\n".into();
        };
        let params: Vec<String> = self
            .sweep
            .space
            .params
            .iter()
            .map(|p| {
                format!(
                    "{}: {}",
                    p.path,
                    b.params.get(&p.path).map(fmt_value).unwrap_or_default()
                )
            })
            .collect();
        format!(
            "best: {} (run {}) {metric} {} at epoch {}\n  {}\nbest {} curve ({metric} by epoch): {}\n",
            b.id,
            b.run_id,
            b.value.map(fmt_num).unwrap_or_default(),
            b.best_epoch.unwrap_or(0),
            params.join("\n  "),
            b.id,
            crate::report::sweep::curve_line(&b.intermediate)
        )
    }
}

/// A running trial in a line: `t005 (run x-t005): running, epoch 2/3, roc_auc 0.81`.
pub fn running_line(t: &RunningTrial, metric: &str) -> String {
    let epochs = t
        .epochs
        .map(|e| e.to_string())
        .unwrap_or_else(|| "?".into());
    let mut line = format!(
        "{} (run {}): {}, epoch {}/{epochs}",
        t.trial, t.run_id, t.phase, t.epoch
    );
    if let Some(v) = t.latest {
        line += &format!(", {metric} {}", fmt_num(v));
    }
    if t.phase == "lost" {
        line += "; the driver resumes it at its next look (idcctl sweep run)";
    }
    line
}

/// What to tell the user when the loop ended with `ending`: `None` when the sweep finished;
/// `rerun` is the command that goes on.
pub fn ending_note(ending: &super::driver::Ending, rerun: &str) -> Option<String> {
    use super::driver::Ending;
    let Ending::Stopped { running, cancelled } = *ending else {
        return None;
    };
    Some(if running == 0 {
        format!("stopped; rerun `{rerun}` to go on")
    } else if cancelled {
        format!(
            "stopped; {running} running trial(s) were cancelled after a checkpoint: rerun `{rerun}` to resume them and go on"
        )
    } else {
        format!(
            "stopped; {running} trial(s) keep running on the backend: rerun `{rerun}` to re-attach and go on (or idcctl cancel <run>)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::driver::Ending;
    use super::*;

    #[test]
    fn endings_say_how_to_go_on() {
        assert_eq!(ending_note(&Ending::Finished, "r"), None);
        let stopped =
            |running, cancelled| ending_note(&Ending::Stopped { running, cancelled }, "r");
        assert_eq!(stopped(0, false).unwrap(), "stopped; rerun `r` to go on");
        assert!(
            stopped(2, true)
                .unwrap()
                .contains("2 running trial(s) were cancelled")
        );
        assert!(
            stopped(1, false)
                .unwrap()
                .contains("(or idcctl cancel <run>)")
        );
    }
}
