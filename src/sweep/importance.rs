//! Parameter importance of a sweep, estimated from its completed trials: for each searched
//! parameter, the share of the objective's variance that its value explains on its own
//! (first order, no interactions). Trials are binned by the parameter (quantile bins for
//! numbers, in log space for log-scale ones; one bin per choice for categoricals) and the
//! correlation ratio η² = between-bin variance / total variance is taken; the parameters' η²
//! are then normalised to sum to 1.

use super::manifest::Sweep;
use super::space::{Distribution, Space};
use super::state::{SweepState, TrialState};
use serde::Serialize;

/// Most bins a numeric parameter is cut into.
pub const MAX_BINS: usize = 10;

/// One parameter's importance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Importance {
    /// The searched path: `train.optimizer.lr`.
    pub path: String,
    /// Its short name (`lr`), as the trials table heads it.
    pub name: String,
    /// The share of the objective's variance its bins explain, 0 to 1.
    pub eta2: f64,
    /// `eta2` normalised over the parameters (they sum to 1; all 0 when every `eta2` is).
    pub share: f64,
    /// Completed trials that have a value of it.
    pub trials: usize,
    /// Bins its values fell into.
    pub bins: usize,
}

/// How many bins `n` trials of a numeric parameter are cut into: about √n, 2 to [`MAX_BINS`].
pub fn bin_count(n: usize) -> usize {
    ((n as f64).sqrt().round() as usize).clamp(2, MAX_BINS)
}

/// Quantile bins of `x` (0-based bin per value): at most `k` bins of about equal counts, equal
/// values always in the same bin; one bin per distinct value when there are at most `k`.
pub fn quantile_bins(x: &[f64], k: usize) -> Vec<usize> {
    let n = x.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut distinct: Vec<f64> = order.iter().map(|&i| x[i]).collect();
    distinct.dedup();
    let mut bins = vec![0; n];
    if distinct.len() <= k {
        for (i, v) in x.iter().enumerate() {
            bins[i] = distinct.partition_point(|d| d < v);
        }
        return bins;
    }
    let mut first_rank = 0;
    for (rank, &i) in order.iter().enumerate() {
        if rank == 0 || x[i] != x[order[rank - 1]] {
            first_rank = rank;
        }
        // Ties take the bin of their first rank.
        bins[i] = first_rank * k / n;
    }
    bins
}

/// The correlation ratio η² of `y` over `bins`: the variance of the bin means (weighted by bin
/// size) over the total variance; 0 when `y` does not vary.
pub fn eta_squared(bins: &[usize], y: &[f64]) -> f64 {
    let n = y.len();
    if n == 0 {
        return 0.0;
    }
    let mean = y.iter().sum::<f64>() / n as f64;
    let total: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let k = bins.iter().copied().max().unwrap_or(0) + 1;
    let (mut sum, mut count) = (vec![0.0; k], vec![0usize; k]);
    for (&b, &v) in bins.iter().zip(y) {
        sum[b] += v;
        count[b] += 1;
    }
    let between: f64 = (0..k)
        .filter(|&b| count[b] > 0)
        .map(|b| count[b] as f64 * (sum[b] / count[b] as f64 - mean).powi(2))
        .sum();
    (between / total).clamp(0.0, 1.0)
}

/// The bins of one parameter over trials' recorded values (`None`: not a value of it).
fn bins_of(dist: &Distribution, values: &[Option<f64>]) -> Vec<Option<usize>> {
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    let bins = match dist {
        // The point coordinate of a choice is its index.
        Distribution::Categorical { .. } => known.iter().map(|&x| x as usize).collect(),
        // Quantiles follow ranks, so taking logs first gives the same bins; it is done for
        // clarity and in case the binning ever becomes equal-width.
        _ if dist.log_scale() => quantile_bins(
            &known
                .iter()
                .map(|x| x.max(f64::MIN_POSITIVE).ln())
                .collect::<Vec<_>>(),
            bin_count(known.len()),
        ),
        _ => quantile_bins(&known, bin_count(known.len())),
    };
    let mut it = bins.into_iter();
    values.iter().map(|v| v.and_then(|_| it.next())).collect()
}

/// The importance of each parameter of `space` from `(point, value)` pairs of completed trials
/// (a coordinate `None` where a trial has no valid value of that parameter), in space order.
pub fn estimate(space: &Space, trials: &[(Vec<Option<f64>>, f64)]) -> Vec<Importance> {
    let names = super::short_names(space);
    let mut out: Vec<Importance> = space
        .params
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let column: Vec<Option<f64>> = trials.iter().map(|(x, _)| x[j]).collect();
            let bins = bins_of(&p.dist, &column);
            let (b, y): (Vec<usize>, Vec<f64>) = bins
                .iter()
                .zip(trials)
                .filter_map(|(b, (_, y))| Some(((*b)?, *y)))
                .unzip();
            let mut distinct = b.clone();
            distinct.sort_unstable();
            distinct.dedup();
            Importance {
                path: p.path.clone(),
                name: names[j].clone(),
                eta2: eta_squared(&b, &y),
                share: 0.0,
                trials: y.len(),
                bins: distinct.len(),
            }
        })
        .collect();
    let total: f64 = out.iter().map(|i| i.eta2).sum();
    if total > 0.0 {
        for i in &mut out {
            i.share = i.eta2 / total;
        }
    }
    out
}

/// The importance of the parameters of `sweep` over its completed trials, most important first;
/// or why it cannot be estimated yet.
pub fn of_sweep(sweep: &Sweep, st: &SweepState) -> Result<Vec<Importance>, String> {
    let trials: Vec<(Vec<Option<f64>>, f64)> = st
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Completed)
        .filter_map(|t| {
            let v = t.value.filter(|v| v.is_finite())?;
            let x = sweep
                .space
                .params
                .iter()
                .map(|p| p.dist.from_json(t.params.get(&p.path)?))
                .collect();
            Some((x, v))
        })
        .collect();
    if trials.len() < 2 {
        return Err(format!(
            "needs at least two completed trials with a value (has {})",
            trials.len()
        ));
    }
    if trials.iter().all(|t| t.1 == trials[0].1) {
        return Err(format!(
            "the {} completed trials all have the same objective value",
            trials.len()
        ));
    }
    let mut out = estimate(&sweep.space, &trials);
    out.sort_by(|a, b| b.share.total_cmp(&a.share));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::space::Param;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::SeedableRng;

    fn space() -> Space {
        Space {
            params: vec![
                Param {
                    path: "train.optimizer.lr".into(),
                    dist: Distribution::LogUniform {
                        low: 1e-5,
                        high: 1e-1,
                    },
                },
                Param {
                    path: "train.batch_size".into(),
                    dist: Distribution::Categorical {
                        choices: vec![16.into(), 32.into(), 64.into()],
                    },
                },
                Param {
                    path: "train.optimizer.weight_decay".into(),
                    dist: Distribution::Uniform {
                        low: 0.0,
                        high: 0.1,
                    },
                },
            ],
        }
    }

    /// Trials at random points of `space()`, scored by `f`, plus a little noise.
    fn trials(n: usize, f: impl Fn(f64, usize, f64) -> f64) -> Vec<(Vec<Option<f64>>, f64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        (0..n)
            .map(|_| {
                let lr = 10f64.powf(-5.0 + 4.0 * crate::rng::unit(&mut rng));
                let batch = crate::rng::below(&mut rng, 3);
                let wd = 0.1 * crate::rng::unit(&mut rng);
                let noise = 0.01 * (crate::rng::unit(&mut rng) - 0.5);
                (
                    vec![Some(lr), Some(batch as f64), Some(wd)],
                    f(lr, batch, wd) + noise,
                )
            })
            .collect()
    }

    #[test]
    fn a_dominant_parameter_takes_most_of_the_variance() {
        // ROC-AUC peaks at lr = 1e-3 (a bump in log space) and barely depends on the rest.
        let t = trials(200, |lr, batch, wd| {
            0.9 - 0.05 * (lr.log10() + 3.0).powi(2) + 0.002 * batch as f64 + 0.01 * wd
        });
        let imp = estimate(&space(), &t);
        let names: Vec<&str> = imp.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["lr", "batch_size", "weight_decay"]);
        assert!(imp[0].share > 0.8, "{imp:?}");
        assert!(imp[0].eta2 > 0.8, "{imp:?}");
        assert!((imp.iter().map(|i| i.share).sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(imp[0].bins, MAX_BINS);
        assert_eq!(imp[1].bins, 3, "one bin per choice");
        assert!(imp.iter().all(|i| i.trials == 200));
    }

    #[test]
    fn a_dominant_categorical_is_found_too() {
        let t = trials(200, |lr, batch, _| {
            [0.6, 0.9, 0.7][batch] + 0.001 * lr.log10()
        });
        let imp = estimate(&space(), &t);
        assert!(imp[1].share > 0.8, "{imp:?}");
        assert!(imp[0].share < 0.15 && imp[2].share < 0.15, "{imp:?}");
    }

    #[test]
    fn bins_are_quantiles_with_ties_kept_together() {
        assert_eq!(
            quantile_bins(&[5.0, 1.0, 3.0, 2.0, 4.0, 6.0], 3),
            [2, 0, 1, 0, 1, 2]
        );
        // Few distinct values: one bin each.
        assert_eq!(quantile_bins(&[2.0, 1.0, 2.0, 1.0], 3), [1, 0, 1, 0]);
        // Ties straddling a quantile stay in one bin.
        let b = quantile_bins(&[1.0, 2.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3);
        assert_eq!(b[1], b[2]);
        assert_eq!(b[2], b[3]);
        assert_eq!(bin_count(2), 2);
        assert_eq!(bin_count(9), 3);
        assert_eq!(bin_count(10_000), MAX_BINS);
    }

    #[test]
    fn eta_squared_is_the_explained_share() {
        // Bin means 1 and 3, overall 2: between 4 x 1, total 4 x 1 + 2 x 0.5 (spread inside).
        let e = eta_squared(&[0, 0, 1, 1], &[0.5, 1.5, 3.0, 3.0]);
        assert!((e - 4.0 / 4.5).abs() < 1e-12, "{e}");
        assert_eq!(eta_squared(&[0, 1], &[0.7, 0.7]), 0.0);
        assert_eq!(eta_squared(&[], &[]), 0.0);
        // A parameter nobody has a value of explains nothing; the others still normalise.
        let t = vec![
            (vec![Some(1e-3), None, Some(0.01)], 0.8),
            (vec![Some(1e-2), None, Some(0.02)], 0.6),
            (vec![Some(1e-4), None, Some(0.05)], 0.7),
        ];
        let imp = estimate(&space(), &t);
        assert_eq!((imp[1].eta2, imp[1].trials), (0.0, 0));
        assert!((imp[0].share + imp[2].share - 1.0).abs() < 1e-12);
    }

    #[test]
    fn log_scale_parameters() {
        let s = space();
        assert!(s.params[0].dist.log_scale());
        assert!(!s.params[1].dist.log_scale() && !s.params[2].dist.log_scale());
        let int: Distribution = serde_yaml::from_str("{kind: int, low: 1, high: 64}").unwrap();
        assert!(!int.log_scale());
    }
}
