//! A sweep's record in the bucket (`sweeps/<name>/state.json`): every trial with its
//! parameters, run id, state, objective value and the objective metric after each epoch;
//! rewritten whole (atomically) after every change. And the driver lease (`driver.json`): which
//! `idcctl sweep run` is driving the sweep.

use super::manifest::Sweep;
use super::pruner::Peer;
use super::sampler::{Observation, Outcome};
use crate::layout;
use crate::process::{Liveness, ProcessRef};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialState {
    Running,
    Completed,
    Pruned,
    Failed,
}

/// One trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// `t001`, `t002`, …
    pub id: String,
    /// 1-based.
    pub number: u32,
    /// The run it trains as: `<sweep>-t001`.
    pub run_id: String,
    /// The value of each searched path.
    pub params: BTreeMap<String, serde_json::Value>,
    pub state: TrialState,
    /// Completed: the best value of the objective over its epochs; pruned: the best before it
    /// was stopped.
    pub value: Option<f64>,
    /// The epoch of `value`.
    pub best_epoch: Option<u32>,
    /// The objective metric after each epoch (index 0: epoch 1); `null` where it was NaN.
    #[serde(with = "crate::json_float::vec")]
    pub intermediate: Vec<f64>,
    /// Why it was pruned or failed.
    pub reason: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Stopped by `idcctl sweep run --cancel-on-exit`: the next `sweep run` resumes its run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Trial {
    /// `t001` for trial 1.
    pub fn id_of(number: u32) -> String {
        format!("t{number:03}")
    }
}

/// The sweep record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepState {
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
    /// When the last trial ended and no more were to start.
    pub finished_at: Option<String>,
    pub trials: Vec<Trial>,
}

impl SweepState {
    pub fn new(name: &str) -> Self {
        let now = crate::clock::now_rfc3339();
        Self {
            name: name.to_string(),
            created_at: now.clone(),
            updated_at: now,
            finished_at: None,
            trials: vec![],
        }
    }

    pub fn running(&self) -> usize {
        self.trials
            .iter()
            .filter(|t| t.state == TrialState::Running)
            .count()
    }

    /// The best completed trial.
    pub fn best<'a>(&'a self, sweep: &Sweep) -> Option<&'a Trial> {
        let sign = sweep.objective.sign();
        self.trials
            .iter()
            .filter(|t| t.state == TrialState::Completed)
            .filter_map(|t| Some((t, t.value.filter(|v| !v.is_nan())?)))
            .min_by(|a, b| (sign * a.1).total_cmp(&(sign * b.1)))
            .map(|(t, _)| t)
    }

    /// Completed, pruned and running trials as the sampler sees them (lower is better).
    pub fn observations(&self, sweep: &Sweep) -> Vec<Observation> {
        let sign = sweep.objective.sign();
        self.trials
            .iter()
            .filter_map(|t| {
                let outcome = match t.state {
                    TrialState::Completed => Outcome::Completed(sign * t.value?),
                    TrialState::Pruned => Outcome::Pruned {
                        epochs: t.intermediate.len() as u32,
                        last: sign * *t.intermediate.last()?,
                    },
                    TrialState::Running => Outcome::Running,
                    TrialState::Failed => return None,
                };
                let point = sweep
                    .space
                    .params
                    .iter()
                    .map(|p| p.dist.from_json(t.params.get(&p.path)?))
                    .collect::<Option<Vec<f64>>>()?;
                Some(Observation {
                    number: t.number,
                    point,
                    outcome,
                })
            })
            .collect()
    }

    /// Every trial's curve but `except`'s, oriented lower-is-better, for the pruner.
    pub fn curves(&self, sweep: &Sweep, except: u32) -> Vec<(Vec<f64>, bool)> {
        let sign = sweep.objective.sign();
        self.trials
            .iter()
            .filter(|t| t.number != except && t.state != TrialState::Failed)
            .map(|t| {
                (
                    t.intermediate.iter().map(|v| sign * v).collect(),
                    t.state == TrialState::Completed,
                )
            })
            .collect()
    }
}

/// Borrows curves as pruner peers.
pub fn peers(curves: &[(Vec<f64>, bool)]) -> Vec<Peer<'_>> {
    curves
        .iter()
        .map(|(v, completed)| Peer {
            values: v,
            completed: *completed,
        })
        .collect()
}

/// The sweep folder `sweeps/<name>` under a bucket root.
pub fn sweep_store(root: &Store, name: &str) -> Store {
    root.child(&layout::sweep_prefix(name))
}

/// A malformed state.json.
#[derive(Debug, thiserror::Error)]
#[error("{url} is unreadable: {message}")]
pub struct BadState {
    pub url: String,
    pub message: String,
}

pub async fn read_state(sweep: &Store) -> Result<Option<SweepState>, ReadError> {
    let Some(b) = sweep.get_opt(layout::sweep::STATE).await? else {
        return Ok(None);
    };
    Ok(Some(parse_state(&sweep.url_of(layout::sweep::STATE), &b)?))
}

/// The sweep record stored at `url`: one that does not parse is [`BadState`], naming it.
pub fn parse_state(url: &str, bytes: &[u8]) -> Result<SweepState, BadState> {
    serde_json::from_slice(bytes).map_err(|e| BadState {
        url: url.to_string(),
        message: e.to_string(),
    })
}

pub async fn write_state(sweep: &Store, s: &mut SweepState) -> Result<(), StoreError> {
    s.updated_at = crate::clock::now_rfc3339();
    sweep
        .put(
            layout::sweep::STATE,
            Bytes::from(serde_json::to_vec_pretty(s).expect("serializes")),
        )
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bad(#[from] BadState),
}

/// Why a sweep could not be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no sweep {name} in {storage} (no {url})")]
    NoSweep {
        name: String,
        storage: String,
        url: String,
    },
    #[error(transparent)]
    Manifest(#[from] crate::experiment::ManifestError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl crate::exit::ProcessExitCode for OpenError {
    /// A sweep that is not there, or whose stored manifest does not parse, is the user's to
    /// fix (exit code 2).
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        match self {
            OpenError::NoSweep { .. } | OpenError::Manifest(_) => crate::exit::ExitCode::UserError,
            OpenError::Read(ReadError::Store(e)) | OpenError::Store(e) => e.process_exit_code(),
            OpenError::Read(ReadError::Bad(_)) => crate::exit::ExitCode::Failure,
        }
    }
}

/// Sweep `name` under bucket root `root` as recorded: its stored manifest and its state (a new,
/// empty one when no driver has written it yet). Reads only.
pub async fn open(root: &Store, name: &str) -> Result<(Sweep, SweepState), OpenError> {
    let dir = sweep_store(root, name);
    let key = layout::sweep::MANIFEST;
    let Some(text) = dir.get_opt(key).await? else {
        return Err(OpenError::NoSweep {
            name: name.to_string(),
            storage: root.url().to_string(),
            url: dir.url_of(key),
        });
    };
    let sweep = super::manifest::parse(&String::from_utf8_lossy(&text), &dir.url_of(key))?;
    let st = read_state(&dir)
        .await?
        .unwrap_or_else(|| SweepState::new(name));
    Ok((sweep, st))
}

/// Which `idcctl sweep run` drives a sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Driver {
    pub process: ProcessRef,
    /// Unix seconds of the driver's last sign of life.
    pub heartbeat: i64,
    /// The pod it runs in, for an in-cluster driver (`sweep run --in-cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// Seconds after which a driver on another machine that has not written is taken for gone.
pub const DRIVER_TIMEOUT_S: i64 = 60;

impl Driver {
    pub fn me() -> Self {
        Self {
            process: ProcessRef::current(),
            heartbeat: now_s(),
            pod: std::env::var(crate::process::POD_NAME_ENV).ok(),
        }
    }

    /// Where it runs, in words: `pod sweep-x-abcde` or `pid 42 on laptop`.
    pub fn place(&self) -> String {
        match &self.pod {
            Some(pod) => format!("pod {pod}"),
            None => format!("pid {} on {}", self.process.pid, self.process.host),
        }
    }

    /// Whether this driver still runs: its process (pid, start time and boot checked) on this
    /// machine, or a write within [`DRIVER_TIMEOUT_S`] on another.
    pub fn alive(&self) -> bool {
        match self.process.liveness() {
            Liveness::Alive => self.heartbeat > 0,
            Liveness::Gone => false,
            // Saturating: the heartbeat is the stored lease's word.
            Liveness::Elsewhere => now_s().saturating_sub(self.heartbeat) < DRIVER_TIMEOUT_S,
        }
    }
}

pub fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub async fn read_driver(sweep: &Store) -> Result<Option<Driver>, StoreError> {
    Ok(sweep
        .get_opt(layout::sweep::DRIVER)
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

pub async fn write_driver(sweep: &Store, d: &Driver) -> Result<(), StoreError> {
    sweep
        .put(
            layout::sweep::DRIVER,
            Bytes::from(serde_json::to_vec_pretty(d).expect("serializes")),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trials_round_trip_with_nan() {
        let t = Trial {
            id: Trial::id_of(3),
            number: 3,
            run_id: "s-t003".into(),
            params: [("train.optimizer.lr".to_string(), serde_json::json!(0.01))].into(),
            state: TrialState::Pruned,
            value: Some(0.7),
            best_epoch: Some(1),
            intermediate: vec![0.7, f64::NAN],
            reason: Some("asha".into()),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
            interrupted: false,
        };
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains(r#""intermediate":[0.7,null]"#), "{json}");
        assert!(!json.contains("interrupted"));
        let back: Trial = serde_json::from_str(&json).unwrap();
        assert_eq!(back.id, "t003");
        assert!(back.intermediate[1].is_nan());
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{bytes, config, corrupted};
        use proptest::prelude::*;

        const URL: &str = "file:///b/sweeps/s/state.json";

        fn sweep() -> Sweep {
            let text = include_str!("../../manifests/sweep.yaml");
            crate::sweep::manifest::parse(text, "sweep.yaml").unwrap()
        }

        fn valid() -> Vec<u8> {
            let trial = |number, state, value: Option<f64>, intermediate: Vec<f64>| Trial {
                id: Trial::id_of(number),
                number,
                run_id: format!("s-{}", Trial::id_of(number)),
                params: [("train.optimizer.lr".to_string(), serde_json::json!(0.01))].into(),
                state,
                value,
                best_epoch: value.map(|_| 1),
                intermediate,
                reason: None,
                started_at: "2026-01-01T00:00:00Z".into(),
                finished_at: None,
                interrupted: number == 3,
            };
            let mut st = SweepState::new("s");
            st.trials = vec![
                trial(1, TrialState::Completed, Some(0.8), vec![0.7, 0.8]),
                trial(2, TrialState::Pruned, Some(0.5), vec![0.5, f64::NAN]),
                trial(3, TrialState::Running, None, vec![0.6]),
                trial(4, TrialState::Failed, None, vec![]),
            ];
            serde_json::to_vec_pretty(&st).unwrap()
        }

        /// A state read back is what the driver and `sweep show` go through, without
        /// panicking; an error names it.
        fn read_or_name(b: &[u8]) {
            match parse_state(URL, b) {
                Ok(st) => {
                    st.running();
                    let sweep = sweep();
                    let curves = st.curves(&sweep, 0);
                    peers(&curves);
                    st.observations(&sweep);
                    st.best(&sweep);
                }
                Err(e) => assert!(e.to_string().contains(URL), "{e}"),
            }
        }

        #[test]
        fn the_valid_state_reads() {
            parse_state(URL, &valid()).unwrap();
        }

        proptest! {
            #![proptest_config(config(128))]

            #[test]
            fn any_bytes(b in bytes(256)) {
                read_or_name(&b);
            }

            #[test]
            fn corrupted_states(b in corrupted(valid())) {
                read_or_name(&b);
            }

            #[test]
            fn any_driver_lease(b in corrupted(
                serde_json::to_vec(&Driver { process: ProcessRef::current(), heartbeat: 1, pod: None })
                    .unwrap()
            ), heartbeat in any::<i64>()) {
                if let Ok(d) = serde_json::from_slice::<Driver>(&b) {
                    d.alive();
                    d.place();
                }
                let d = Driver { process: ProcessRef { host: "elsewhere".into(), ..ProcessRef::current() }, heartbeat, pod: None };
                d.alive();
            }
        }
    }
}
