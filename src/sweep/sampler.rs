//! Samplers: where the next trial goes. `random` draws each parameter independently; `grid`
//! walks the cartesian product of every choice and integer (and `grid_points` values of each
//! float range) in a seeded order; `tpe` is the Tree-structured Parzen Estimator with Optuna
//! 5's defaults (multivariate, constant liar for the trials still running).
//!
//! Every draw comes from a generator seeded by (seed, trial number), so a trial's parameters
//! depend only on the seed, its number and the trials finished or running when it was
//! started: a resumed sweep draws what an uninterrupted one would have.

use super::space::{Distribution, Space};
use super::tpe;
use crate::rng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

/// The sampler of a sweep manifest (`sampler: {kind: tpe, seed: 0}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SamplerSpec {
    /// Every parameter uniformly (log-uniformly for log_uniform), independently.
    Random {
        #[serde(default)]
        seed: u64,
    },
    /// The cartesian product, visited in a seeded random order; stops when exhausted.
    Grid {
        #[serde(default)]
        seed: u64,
        /// Values per float range (evenly spaced, log-spaced for log_uniform), and the most
        /// values per integer range.
        #[serde(default = "default_grid_points")]
        grid_points: u32,
    },
    /// Tree-structured Parzen Estimator, after `n_startup_trials` random trials.
    Tpe {
        #[serde(default)]
        seed: u64,
        /// Trials drawn at random before the estimator takes over.
        #[serde(default = "default_startup")]
        n_startup_trials: u32,
        /// Candidates drawn from the good trials' estimator; the best by l(x)/g(x) is taken.
        #[serde(default = "default_candidates")]
        n_ei_candidates: u32,
        /// Then this many more, with the winner's categorical values kept, for better numeric
        /// values without locking onto the choices that lead early; 0: one round, as Optuna.
        #[serde(default = "default_refine")]
        refine_candidates: u32,
        /// One joint estimator over all parameters (proposes values that did well together);
        /// `false`: one per parameter.
        #[serde(default = "yes")]
        multivariate: bool,
        /// Count trials still running as bad ones, so that parallel trials spread out.
        #[serde(default = "yes")]
        constant_liar: bool,
    },
}

fn default_grid_points() -> u32 {
    5
}
fn default_startup() -> u32 {
    10
}
fn default_candidates() -> u32 {
    24
}
/// Four times Optuna's candidates in all: better numeric values on idc's benchmark
/// (tests/benches/sweep.rs), at little cost here.
fn default_refine() -> u32 {
    72
}
fn yes() -> bool {
    true
}

impl Default for SamplerSpec {
    fn default() -> Self {
        SamplerSpec::tpe(0)
    }
}

/// Most points a grid may hold.
pub const MAX_GRID: usize = 1_000_000;

/// How a trial ended, as samplers see it. Values are oriented so lower is better.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Completed(f64),
    /// Stopped by the pruner after `epochs` epochs, with its last value.
    Pruned {
        epochs: u32,
        last: f64,
    },
    /// Not ended yet (started, no result): what the constant liar keeps away from.
    Running,
}

/// A trial that has ended, or is still running.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// 1-based trial number.
    pub number: u32,
    pub point: Vec<f64>,
    pub outcome: Outcome,
}

impl SamplerSpec {
    /// TPE with every default (Optuna 5's: multivariate, constant liar).
    pub fn tpe(seed: u64) -> Self {
        SamplerSpec::Tpe {
            seed,
            n_startup_trials: default_startup(),
            n_ei_candidates: default_candidates(),
            refine_candidates: default_refine(),
            multivariate: true,
            constant_liar: true,
        }
    }

    /// The sampler and its settings in words: `tpe (multivariate, constant liar, 10 random
    /// trials first)`.
    pub fn describe(&self) -> String {
        match *self {
            SamplerSpec::Random { seed } => format!("random (seed {seed})"),
            SamplerSpec::Grid { seed, grid_points } => {
                format!("grid ({grid_points} points per float range, seed {seed})")
            }
            SamplerSpec::Tpe {
                seed,
                n_startup_trials,
                multivariate,
                constant_liar,
                ..
            } => format!(
                "tpe ({}{}, {n_startup_trials} random trials first, seed {seed})",
                if multivariate {
                    "multivariate"
                } else {
                    "independent"
                },
                if constant_liar { ", constant liar" } else { "" },
            ),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            SamplerSpec::Random { .. } => "random",
            SamplerSpec::Grid { .. } => "grid",
            SamplerSpec::Tpe { .. } => "tpe",
        }
    }

    /// Checks the settings against the space; the message names the field.
    pub fn check(&self, space: &Space) -> Result<(), String> {
        match *self {
            SamplerSpec::Grid { grid_points, .. } => {
                if grid_points < 2 {
                    return Err("sampler.grid_points: must be at least 2".into());
                }
                let size = grid_size(space, grid_points);
                if size > MAX_GRID {
                    return Err(format!(
                        "sampler: the grid has {size} points, more than {MAX_GRID}; lower grid_points or use tpe"
                    ));
                }
            }
            SamplerSpec::Tpe {
                n_ei_candidates: 0, ..
            } => {
                return Err("sampler.n_ei_candidates: must be at least 1".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// The point of trial `number` (1-based), given the trials so far (ended, and running:
    /// [`Outcome::Running`]); `None` when a grid is exhausted.
    pub fn suggest(&self, space: &Space, history: &[Observation], number: u32) -> Option<Vec<f64>> {
        match *self {
            SamplerSpec::Random { seed } => Some(random_point(space, &mut trial_rng(seed, number))),
            SamplerSpec::Grid { seed, grid_points } => grid_point(space, grid_points, seed, number),
            SamplerSpec::Tpe {
                seed,
                n_startup_trials,
                n_ei_candidates,
                refine_candidates,
                multivariate,
                constant_liar,
            } => {
                let mut rng = trial_rng(seed, number);
                let ended = history
                    .iter()
                    .filter(|o| o.outcome != Outcome::Running)
                    .count();
                if ended < n_startup_trials.max(1) as usize {
                    return Some(random_point(space, &mut rng));
                }
                let scored: Vec<tpe::Scored> = history
                    .iter()
                    .filter_map(|o| {
                        let rank = match o.outcome {
                            Outcome::Completed(v) => (0, 0, nan_last(v)),
                            Outcome::Pruned { epochs, last } => {
                                (1, -(epochs as i64), nan_last(last))
                            }
                            Outcome::Running if constant_liar => (2, 0, 0.0),
                            Outcome::Running => return None,
                        };
                        Some(tpe::Scored {
                            number: o.number,
                            point: &o.point,
                            rank,
                        })
                    })
                    .collect();
                let (below, above) = tpe::split(&scored);
                let dists: Vec<&Distribution> = space.params.iter().map(|p| &p.dist).collect();
                if multivariate {
                    let b: Vec<&[f64]> = below.iter().map(|s| s.point).collect();
                    let a: Vec<&[f64]> = above.iter().map(|s| s.point).collect();
                    return Some(tpe::suggest(
                        &dists,
                        &b,
                        &a,
                        n_ei_candidates,
                        refine_candidates,
                        &mut rng,
                    ));
                }
                Some(
                    (0..dists.len())
                        .map(|i| {
                            let col = |side: &[&tpe::Scored]| -> Vec<[f64; 1]> {
                                side.iter().map(|s| [s.point[i]]).collect()
                            };
                            let (b, a) = (col(&below), col(&above));
                            let b: Vec<&[f64]> = b.iter().map(|x| &x[..]).collect();
                            let a: Vec<&[f64]> = a.iter().map(|x| &x[..]).collect();
                            tpe::suggest(
                                &[dists[i]],
                                &b,
                                &a,
                                n_ei_candidates,
                                refine_candidates,
                                &mut rng,
                            )[0]
                        })
                        .collect(),
                )
            }
        }
    }

    /// How many trials the sampler can give at most (`None`: unbounded).
    pub fn capacity(&self, space: &Space) -> Option<usize> {
        match *self {
            SamplerSpec::Grid { grid_points, .. } => Some(grid_size(space, grid_points)),
            _ => None,
        }
    }
}

/// NaN (a diverged run) ranks last.
fn nan_last(v: f64) -> f64 {
    if v.is_nan() { f64::INFINITY } else { v }
}

fn trial_rng(seed: u64, number: u32) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(number as u64);
    rng
}

/// One uniform draw per parameter.
pub fn random_point(space: &Space, rng: &mut ChaCha8Rng) -> Vec<f64> {
    space
        .params
        .iter()
        .map(|p| match p.dist {
            Distribution::Uniform { low, high } => low + (high - low) * rng::unit(rng),
            Distribution::LogUniform { low, high } => (low.ln()
                + (high.ln() - low.ln()) * rng::unit(rng))
            .exp()
            .clamp(low, high),
            Distribution::Int {
                low,
                high,
                log: true,
                ..
            } => {
                // Uniform in log space over [low - 1/2, high + 1/2], rounded (as Optuna).
                let (lo, hi) = ((low as f64 - 0.5).ln(), (high as f64 + 0.5).ln());
                (lo + (hi - lo) * rng::unit(rng))
                    .exp()
                    .round()
                    .clamp(low as f64, high as f64)
            }
            Distribution::Int { low, step, .. } => {
                let n = p.dist.count().expect("ints count");
                (low + step * rng::below(rng, n) as i64) as f64
            }
            Distribution::Categorical { ref choices } => rng::below(rng, choices.len()) as f64,
        })
        .collect()
}

/// The values a parameter takes on the grid.
pub fn grid_values(dist: &Distribution, points: u32) -> Vec<f64> {
    let n = points as usize;
    let spaced = |lo: f64, hi: f64| -> Vec<f64> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
            .collect()
    };
    match *dist {
        Distribution::Uniform { low, high } => spaced(low, high),
        Distribution::LogUniform { low, high } => spaced(low.ln(), high.ln())
            .into_iter()
            .map(|x| x.exp().clamp(low, high))
            .collect(),
        Distribution::Int {
            low,
            high,
            log: true,
            ..
        } => {
            let count = dist.count().expect("ints count");
            if count <= n {
                return (low..=high).map(|i| i as f64).collect();
            }
            let mut v: Vec<f64> = spaced((low as f64).ln(), (high as f64).ln())
                .into_iter()
                .map(|x| x.exp().round().clamp(low as f64, high as f64))
                .collect();
            v.dedup();
            v
        }
        Distribution::Int { low, step, .. } => {
            let count = dist.count().expect("ints count");
            if count <= n {
                (0..count).map(|i| (low + step * i as i64) as f64).collect()
            } else {
                let mut v: Vec<f64> = spaced(0.0, (count - 1) as f64)
                    .into_iter()
                    .map(|i| (low + step * i.round() as i64) as f64)
                    .collect();
                v.dedup();
                v
            }
        }
        Distribution::Categorical { ref choices } => (0..choices.len()).map(|i| i as f64).collect(),
    }
}

/// Points on the grid (saturating).
pub fn grid_size(space: &Space, points: u32) -> usize {
    space.params.iter().fold(1usize, |acc, p| {
        acc.saturating_mul(grid_values(&p.dist, points).len())
    })
}

/// The grid point of trial `number`: the grid in a seeded random order.
fn grid_point(space: &Space, points: u32, seed: u64, number: u32) -> Option<Vec<f64>> {
    let axes: Vec<Vec<f64>> = space
        .params
        .iter()
        .map(|p| grid_values(&p.dist, points))
        .collect();
    let size = grid_size(space, points);
    let index = number.checked_sub(1)? as usize;
    if index >= size || size > MAX_GRID {
        return None;
    }
    let mut order: Vec<u32> = (0..size as u32).collect();
    rng::shuffle(&mut order, &mut ChaCha8Rng::seed_from_u64(seed));
    let mut rest = order[index] as usize;
    let mut point = vec![0.0; axes.len()];
    for (i, axis) in axes.iter().enumerate().rev() {
        point[i] = axis[rest % axis.len()];
        rest /= axis.len();
    }
    Some(point)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::space::Param;

    fn space() -> Space {
        Space {
            params: vec![
                Param {
                    path: "a".into(),
                    dist: Distribution::LogUniform {
                        low: 1e-4,
                        high: 1e-1,
                    },
                },
                Param {
                    path: "b".into(),
                    dist: Distribution::Int {
                        low: 1,
                        high: 3,
                        step: 1,
                        log: false,
                    },
                },
                Param {
                    path: "c".into(),
                    dist: Distribution::Categorical {
                        choices: vec!["x".into(), "y".into()],
                    },
                },
            ],
        }
    }

    #[test]
    fn random_is_seeded_and_in_range() {
        let s = space();
        let r = SamplerSpec::Random { seed: 3 };
        let p1 = r.suggest(&s, &[], 1).unwrap();
        assert_eq!(p1, r.suggest(&s, &[], 1).unwrap(), "same seed and number");
        assert_ne!(p1, r.suggest(&s, &[], 2).unwrap());
        for n in 1..200 {
            let p = r.suggest(&s, &[], n).unwrap();
            assert!((1e-4..=1e-1).contains(&p[0]) && [1.0, 2.0, 3.0].contains(&p[1]));
            assert!(p[2] == 0.0 || p[2] == 1.0);
        }
    }

    #[test]
    fn grid_visits_every_point_once() {
        let s = space();
        let g = SamplerSpec::Grid {
            seed: 1,
            grid_points: 3,
        };
        assert_eq!(g.capacity(&s), Some(18));
        let mut seen: Vec<Vec<f64>> = (1..=18).map(|n| g.suggest(&s, &[], n).unwrap()).collect();
        assert_eq!(g.suggest(&s, &[], 19), None);
        seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
        seen.dedup();
        assert_eq!(seen.len(), 18);
        let a: Vec<f64> = grid_values(&s.params[0].dist, 3);
        assert!((a[1] - 10f64.powf(-2.5)).abs() < 1e-12, "log-spaced: {a:?}");
        let wide = Distribution::Int {
            low: 0,
            high: 100,
            step: 1,
            log: false,
        };
        assert_eq!(grid_values(&wide, 5), vec![0.0, 25.0, 50.0, 75.0, 100.0]);
    }

    /// A 4-D analytic objective (lower is better): a log-scale learning rate with its optimum
    /// at 10^-2.5, a shifted float, an integer and a categorical; 0 at the optimum.
    fn analytic(p: &[f64]) -> f64 {
        let lr = (p[0].log10() + 2.5) / 2.5;
        let x = (p[1] - 0.7) / 2.3;
        let n = (p[2] - 11.0) / 10.0;
        let c = [0.6, 0.3, 0.0, 0.8][p[3] as usize];
        lr * lr + x * x + n * n + c
    }

    fn analytic_space() -> Space {
        let p = |path: &str, dist| Param {
            path: path.into(),
            dist,
        };
        Space {
            params: vec![
                p(
                    "lr",
                    Distribution::LogUniform {
                        low: 1e-5,
                        high: 1.0,
                    },
                ),
                p(
                    "x",
                    Distribution::Uniform {
                        low: -2.0,
                        high: 3.0,
                    },
                ),
                p(
                    "n",
                    Distribution::Int {
                        low: 1,
                        high: 16,
                        step: 1,
                        log: false,
                    },
                ),
                p(
                    "c",
                    Distribution::Categorical {
                        choices: vec!["a".into(), "b".into(), "c".into(), "d".into()],
                    },
                ),
            ],
        }
    }

    /// The best value `sampler` finds in `budget` sequential trials.
    fn best_found(sampler: &SamplerSpec, budget: u32) -> f64 {
        let space = analytic_space();
        let mut history: Vec<Observation> = vec![];
        for number in 1..=budget {
            let point = sampler.suggest(&space, &history, number).unwrap();
            let outcome = Outcome::Completed(analytic(&point));
            history.push(Observation {
                number,
                point,
                outcome,
            });
        }
        history
            .iter()
            .map(|o| match o.outcome {
                Outcome::Completed(v) => v,
                Outcome::Pruned { .. } | Outcome::Running => unreachable!(),
            })
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn tpe_beats_random_search_on_an_analytic_objective() {
        let (budget, seeds) = (60, 0..12u64);
        let mut wins = 0;
        let (mut tpe_sum, mut random_sum) = (0.0, 0.0);
        for seed in seeds.clone() {
            let r = best_found(&SamplerSpec::Random { seed }, budget);
            let t = best_found(&SamplerSpec::tpe(seed), budget);
            wins += usize::from(t < r);
            tpe_sum += t;
            random_sum += r;
        }
        let n = seeds.count() as f64;
        let (tpe_mean, random_mean) = (tpe_sum / n, random_sum / n);
        eprintln!(
            "best after {budget} trials, mean of {n} seeds: tpe {tpe_mean:.4}, random {random_mean:.4}; tpe better on {wins} seeds"
        );
        assert!(
            tpe_mean < 0.4 * random_mean,
            "tpe {tpe_mean:.4} vs random {random_mean:.4}"
        );
        assert!(wins >= 10, "tpe better on only {wins} of {n} seeds");
        // Deterministic: the same seed finds the same.
        let again = best_found(&SamplerSpec::tpe(0), budget);
        assert_eq!(again, best_found(&SamplerSpec::tpe(0), budget,));
    }

    fn observation(number: u32, point: Vec<f64>, outcome: Outcome) -> Observation {
        Observation {
            number,
            point,
            outcome,
        }
    }

    #[test]
    fn the_constant_liar_keeps_new_trials_off_the_running_ones() {
        // One float; the finished trials say "the lower the better", and two trials are
        // already running at the bottom of the range.
        let space = Space {
            params: vec![Param {
                path: "x".into(),
                dist: Distribution::Uniform {
                    low: 0.0,
                    high: 1.0,
                },
            }],
        };
        let mut history: Vec<Observation> = (1..=20)
            .map(|n| {
                let x = n as f64 / 21.0;
                observation(n, vec![x], Outcome::Completed(x))
            })
            .collect();
        history.push(observation(21, vec![0.01], Outcome::Running));
        history.push(observation(22, vec![0.03], Outcome::Running));
        let near = |sampler: &SamplerSpec| {
            (100..140)
                .filter(|&n| sampler.suggest(&space, &history, n).unwrap()[0] < 0.06)
                .count()
        };
        let liar = SamplerSpec::tpe(0);
        let mut honest = liar.clone();
        if let SamplerSpec::Tpe { constant_liar, .. } = &mut honest {
            *constant_liar = false;
        }
        let (with, without) = (near(&liar), near(&honest));
        assert!(
            with * 2 < without,
            "{with} of 40 proposals next to the running trials with the liar, {without} without"
        );
    }

    #[test]
    fn multivariate_tpe_proposes_values_that_did_well_together() {
        // The good trials sit around (0.2, 0.2) and (0.8, 0.8): each coordinate alone says
        // "0.2 or 0.8", only the pair says which go together.
        let p = |path: &str| Param {
            path: path.into(),
            dist: Distribution::Uniform {
                low: 0.0,
                high: 1.0,
            },
        };
        let space = Space {
            params: vec![p("x"), p("y")],
        };
        let history: Vec<Observation> = (0..80u32)
            .map(|i| {
                let mut r = trial_rng(7, i);
                let (u, v) = (rng::unit(&mut r), rng::unit(&mut r));
                let (x, y) = match i % 8 {
                    0 => (0.2 + 0.05 * (u - 0.5), 0.2 + 0.05 * (v - 0.5)),
                    4 => (0.8 + 0.05 * (u - 0.5), 0.8 + 0.05 * (v - 0.5)),
                    _ => (u, v),
                };
                let value = ((x - 0.2).powi(2) + (y - 0.2).powi(2))
                    .min((x - 0.8).powi(2) + (y - 0.8).powi(2));
                observation(i + 1, vec![x, y], Outcome::Completed(value))
            })
            .collect();
        // Proposals in the two mismatched corners (one coordinate low, the other high).
        let mismatched = |sampler: &SamplerSpec| {
            (100..300)
                .filter(|&n| {
                    let q = sampler.suggest(&space, &history, n).unwrap();
                    (q[0] < 0.5) != (q[1] < 0.5)
                })
                .count()
        };
        let joint = SamplerSpec::tpe(1);
        let mut apart = joint.clone();
        if let SamplerSpec::Tpe { multivariate, .. } = &mut apart {
            *multivariate = false;
        }
        let (j, a) = (mismatched(&joint), mismatched(&apart));
        assert!(
            j * 3 < a,
            "{j} of 200 proposals in the mismatched corners jointly, {a} independently"
        );
    }

    #[test]
    fn log_scale_integers_are_drawn_and_searched_in_log_space() {
        let space = Space {
            params: vec![Param {
                path: "width".into(),
                dist: Distribution::Int {
                    low: 8,
                    high: 512,
                    step: 1,
                    log: true,
                },
            }],
        };
        let r = SamplerSpec::Random { seed: 2 };
        let draws: Vec<f64> = (1..=2000)
            .map(|n| r.suggest(&space, &[], n).unwrap()[0])
            .collect();
        assert!(
            draws
                .iter()
                .all(|&w| w.fract() == 0.0 && (8.0..=512.0).contains(&w))
        );
        // Log-uniform: as many below the geometric midpoint (64) as above it.
        let below = draws.iter().filter(|&&w| w < 64.0).count();
        assert!((850..1150).contains(&below), "{below} of 2000 below 64");
        // TPE from good trials near 16 proposes near 16, in integers.
        let history: Vec<Observation> = (1..=30)
            .map(|n| {
                let w = [12.0, 16.0, 20.0, 200.0, 300.0, 400.0][n as usize % 6];
                observation(n, vec![w], Outcome::Completed((w / 16.0).ln().abs()))
            })
            .collect();
        let t = SamplerSpec::tpe(3);
        for n in 40..60 {
            let w = t.suggest(&space, &history, n).unwrap()[0];
            assert!(w.fract() == 0.0 && (8.0..=40.0).contains(&w), "{w}");
        }
        let g = grid_values(&space.params[0].dist, 4);
        assert_eq!(g, vec![8.0, 32.0, 128.0, 512.0], "log-spaced");
    }
}
