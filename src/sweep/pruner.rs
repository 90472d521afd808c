//! Pruners: stop trials that are clearly worse early, from their validation metric at each
//! epoch (their intermediate values). `median` is Optuna's `MedianPruner`; `asha` is
//! asynchronous successive halving (Li et al. 2020; Optuna's `SuccessiveHalvingPruner`).
//!
//! Values here are oriented so that lower is better (a maximized metric is negated).

use serde::{Deserialize, Serialize};

/// The pruner of a sweep manifest (`pruner: {kind: asha, min_epochs: 1, reduction_factor: 3}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PrunerSpec {
    /// Every trial runs all its epochs.
    #[default]
    None,
    /// Stop a trial whose best value so far is worse than the median of the completed trials'
    /// values at the same epoch.
    Median {
        /// Completed trials needed before anything is pruned.
        #[serde(default = "default_startup")]
        startup_trials: u32,
        /// Epochs every trial runs before it can be pruned.
        #[serde(default)]
        warmup_epochs: u32,
        /// Completed trials that must have reached the epoch for the median to count.
        #[serde(default = "one")]
        min_trials: u32,
    },
    /// Rungs at epochs `min_epochs * reduction_factor^k`: a trial reaching a rung goes on only
    /// if it is in the top `1 / reduction_factor` of the trials that reached that rung.
    Asha {
        #[serde(default = "one")]
        min_epochs: u32,
        #[serde(default = "default_reduction")]
        reduction_factor: u32,
    },
}

fn default_startup() -> u32 {
    5
}
fn one() -> u32 {
    1
}
fn default_reduction() -> u32 {
    3
}

/// Another trial, as the pruner sees it.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// Its value after each epoch (index 0: epoch 1), up to where it stopped or was pruned.
    pub values: &'a [f64],
    pub completed: bool,
}

impl PrunerSpec {
    pub fn name(&self) -> &'static str {
        match self {
            PrunerSpec::None => "none",
            PrunerSpec::Median { .. } => "median",
            PrunerSpec::Asha { .. } => "asha",
        }
    }

    /// Checks the settings; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            PrunerSpec::Median { min_trials: 0, .. } => {
                Err("pruner.min_trials: must be at least 1".into())
            }
            PrunerSpec::Asha { min_epochs: 0, .. } => {
                Err("pruner.min_epochs: must be at least 1".into())
            }
            PrunerSpec::Asha {
                reduction_factor, ..
            } if reduction_factor < 2 => Err("pruner.reduction_factor: must be at least 2".into()),
            _ => Ok(()),
        }
    }

    /// Whether the trial with `values` (one per epoch so far; the last one just arrived) should
    /// stop now, and why. Call it once per epoch, in order, as values arrive.
    pub fn prune(&self, values: &[f64], peers: &[Peer]) -> Option<String> {
        let epoch = values.len();
        if epoch == 0 {
            return None;
        }
        match *self {
            PrunerSpec::None => None,
            PrunerSpec::Median {
                startup_trials,
                warmup_epochs,
                min_trials,
            } => {
                let completed: Vec<&Peer> = peers.iter().filter(|p| p.completed).collect();
                if completed.len() < startup_trials as usize || epoch <= warmup_epochs as usize {
                    return None;
                }
                let best = values
                    .iter()
                    .copied()
                    .filter(|v| !v.is_nan())
                    .fold(f64::NAN, f64::min);
                if best.is_nan() {
                    return Some(format!("median: no valid value by epoch {epoch}"));
                }
                let mut at: Vec<f64> = completed
                    .iter()
                    .filter_map(|p| p.values.get(epoch - 1).copied())
                    .filter(|v| !v.is_nan())
                    .collect();
                if at.len() < min_trials as usize {
                    return None;
                }
                let median = percentile(&mut at, 50.0);
                (best > median).then(|| {
                    format!(
                        "median: its best by epoch {epoch} is worse than the median of {} completed trials at that epoch",
                        at.len()
                    )
                })
            }
            PrunerSpec::Asha {
                min_epochs,
                reduction_factor,
            } => {
                let rung = rung_of(epoch as u64, min_epochs as u64, reduction_factor as u64)?;
                let value = values[epoch - 1];
                if value.is_nan() {
                    return Some(format!(
                        "asha: no valid value at rung {rung} (epoch {epoch})"
                    ));
                }
                let mut competing: Vec<f64> = peers
                    .iter()
                    .filter_map(|p| p.values.get(epoch - 1).copied())
                    .map(|v| if v.is_nan() { f64::INFINITY } else { v })
                    .collect();
                competing.push(value);
                let keep = competing.len() / reduction_factor as usize;
                competing.sort_by(f64::total_cmp);
                // The first trials at a rung go on only if they are the best so far.
                let bar = competing[keep.max(1) - 1];
                (value > bar).then(|| {
                    format!(
                        "asha: not in the top 1/{reduction_factor} of the {} trials at rung {rung} (epoch {epoch})",
                        competing.len()
                    )
                })
            }
        }
    }
}

/// The rung whose epoch is `epoch`, if any: `min_epochs * factor^rung == epoch`.
fn rung_of(epoch: u64, min_epochs: u64, factor: u64) -> Option<u32> {
    let mut at = min_epochs;
    let mut rung = 0;
    while at < epoch {
        at = at.checked_mul(factor)?;
        rung += 1;
    }
    (at == epoch).then_some(rung)
}

/// The `q`-th percentile with linear interpolation (numpy's default).
fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let pos = (v.len() - 1) as f64 * q / 100.0;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A learning curve: error falling from `start` towards `end` over `epochs` epochs.
    fn curve(start: f64, end: f64, epochs: usize) -> Vec<f64> {
        (1..=epochs)
            .map(|e| end + (start - end) * (-(e as f64) / 2.0).exp())
            .collect()
    }

    /// Feeds `values` to the pruner epoch by epoch; the epoch it stops at, if any.
    fn stopped_at(p: &PrunerSpec, values: &[f64], peers: &[Peer]) -> Option<usize> {
        (1..=values.len()).find(|&e| p.prune(&values[..e], peers).is_some())
    }

    #[test]
    fn median_stops_a_clearly_worse_trial_and_keeps_good_ones() {
        let done: Vec<Vec<f64>> = [0.30, 0.28, 0.32, 0.29, 0.31]
            .iter()
            .map(|&end| curve(0.6, end, 9))
            .collect();
        let peers: Vec<Peer> = done
            .iter()
            .map(|v| Peer {
                values: v,
                completed: true,
            })
            .collect();
        let median = PrunerSpec::Median {
            startup_trials: 5,
            warmup_epochs: 1,
            min_trials: 1,
        };
        let bad = curve(0.7, 0.5, 9);
        assert_eq!(
            stopped_at(&median, &bad, &peers),
            Some(2),
            "pruned at the first epoch after warm-up"
        );
        let good = curve(0.55, 0.2, 9);
        assert_eq!(stopped_at(&median, &good, &peers), None);
        // Not before warm-up, nor before enough trials completed.
        assert!(median.prune(&bad[..1], &peers).is_none());
        assert_eq!(stopped_at(&median, &bad, &peers[..4]), None);
        let why = median.prune(&bad[..2], &peers).unwrap();
        assert!(why.contains("median of 5 completed trials"), "{why}");
        // A diverged trial (NaN) is stopped.
        assert!(median.prune(&[f64::NAN, f64::NAN], &peers).is_some());
    }

    #[test]
    fn asha_promotes_the_top_third_at_each_rung() {
        let asha = PrunerSpec::Asha {
            min_epochs: 1,
            reduction_factor: 3,
        };
        assert_eq!(rung_of(1, 1, 3), Some(0));
        assert_eq!(rung_of(3, 1, 3), Some(1));
        assert_eq!(rung_of(9, 1, 3), Some(2));
        assert_eq!(rung_of(2, 1, 3), None);
        assert_eq!(rung_of(4, 2, 2), Some(1));
        // Eight trials already passed epoch 1 with errors 0.40..0.47 and ran to epoch 9.
        let others: Vec<Vec<f64>> = (0..8)
            .map(|i| curve(0.6 + i as f64 * 0.01, 0.3 + i as f64 * 0.01, 9))
            .collect();
        let peers: Vec<Peer> = others
            .iter()
            .map(|v| Peer {
                values: v,
                completed: true,
            })
            .collect();
        // Clearly worse: stopped at the first rung.
        let bad = curve(0.9, 0.6, 9);
        assert_eq!(stopped_at(&asha, &bad, &peers), Some(1));
        // The best so far: goes through every rung.
        let best = curve(0.5, 0.2, 9);
        assert_eq!(stopped_at(&asha, &best, &peers), None);
        // Middling: past rung 0? 9 trials at epoch 1, the top 3 go on; the 5th best stops.
        let mid = curve(0.6 + 4.5 * 0.01, 0.3 + 4.5 * 0.01, 9);
        assert_eq!(stopped_at(&asha, &mid, &peers), Some(1));
        // The first trial at a rung is never stopped; the second only if worse than the first.
        assert!(asha.prune(&bad[..1], &[]).is_none());
        let first = [Peer {
            values: &best,
            completed: false,
        }];
        assert!(asha.prune(&bad[..1], &first).is_some());
        assert!(
            asha.prune(
                &best[..1],
                &[Peer {
                    values: &bad,
                    completed: false
                }]
            )
            .is_none()
        );
        let why = asha.prune(&bad[..1], &peers).unwrap();
        assert!(why.contains("top 1/3 of the 9 trials at rung 0"), "{why}");
    }
}
