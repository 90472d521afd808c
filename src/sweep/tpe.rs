//! The Tree-structured Parzen Estimator (Bergstra et al. 2011), as Optuna's default
//! `TPESampler` does it (independent per parameter): completed trials are split into the best
//! `gamma(n) = min(ceil(0.1 n), 25)` ("below", l) and the rest ("above", g); per parameter a
//! Parzen estimator is fitted to each side (truncated Gaussians, in log space for
//! `log_uniform`, discretized for `int`; smoothed frequencies for `categorical`; each with a
//! prior component), `n_ei_candidates` values are drawn from l, and the one with the largest
//! l(x)/g(x) is taken. Pruned trials count as worse than every completed one, ranked by how
//! far they got and their last value, as in Optuna.

use super::space::Distribution;
use crate::rng;
use rand_chacha::ChaCha8Rng;

/// Optuna's `prior_weight`.
const PRIOR_WEIGHT: f64 = 1.0;

/// How many of `n` trials form the good side: `min(ceil(0.1 n), 25)`.
pub fn gamma(n: usize) -> usize {
    n.div_ceil(10).min(25)
}

/// Weights of `n` observations in trial order (oldest first): flat for fewer than 25, else the
/// older ones ramp down from 1 to 1/n (Optuna's `default_weights`).
pub fn default_weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let ramp = n - 25;
    let mut w: Vec<f64> = (0..ramp)
        .map(|i| {
            if ramp == 1 {
                1.0 / n as f64
            } else {
                1.0 / n as f64 + (1.0 - 1.0 / n as f64) * i as f64 / (ramp - 1) as f64
            }
        })
        .collect();
    w.extend(std::iter::repeat_n(1.0, 25));
    w
}

/// A mixture over one parameter: one component per observation plus the prior.
pub enum Parzen {
    /// Truncated Gaussians on `[low, high]` (log space for log_uniform); with `step`, the
    /// mass of `[x - step/2, x + step/2]` (integers).
    Numeric {
        weights: Vec<f64>,
        mus: Vec<f64>,
        sigmas: Vec<f64>,
        low: f64,
        high: f64,
        step: Option<f64>,
        log: bool,
    },
    /// Per component, a distribution over the choices.
    Categorical {
        weights: Vec<f64>,
        /// `rows[k][c]`: probability of choice `c` under component `k`.
        rows: Vec<Vec<f64>>,
    },
}

impl Parzen {
    /// Fits the estimator of `dist` to observed point coordinates (oldest trial first).
    pub fn fit(dist: &Distribution, observed: &[f64]) -> Parzen {
        let mut weights = default_weights(observed.len());
        weights.push(PRIOR_WEIGHT);
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= total);
        match dist {
            Distribution::Categorical { choices } => {
                let n = choices.len();
                let kernels = observed.len() + 1;
                let mut rows = vec![vec![PRIOR_WEIGHT / kernels as f64; n]; kernels];
                for (row, &c) in rows.iter_mut().zip(observed) {
                    row[c as usize] += 1.0;
                }
                for row in &mut rows {
                    let s: f64 = row.iter().sum();
                    row.iter_mut().for_each(|p| *p /= s);
                }
                Parzen::Categorical { weights, rows }
            }
            _ => {
                let (low, high, step, log) = numeric_bounds(dist);
                let step0 = step.unwrap_or(0.0);
                let mus: Vec<f64> = observed
                    .iter()
                    .map(|&x| if log { x.ln() } else { x })
                    .collect();
                let prior_mu = 0.5 * (low + high);
                // Each kernel's bandwidth is the larger gap to its neighbours (the prior's
                // centre among them; the bounds at the ends), except at the ends.
                let mut with_prior = mus.clone();
                with_prior.push(prior_mu);
                let mut order: Vec<usize> = (0..with_prior.len()).collect();
                order.sort_by(|&a, &b| with_prior[a].total_cmp(&with_prior[b]));
                let mut ends = vec![low - step0 / 2.0];
                ends.extend(order.iter().map(|&i| with_prior[i]));
                ends.push(high + step0 / 2.0);
                let m = with_prior.len();
                let mut sorted_sigmas: Vec<f64> = (1..=m)
                    .map(|i| (ends[i] - ends[i - 1]).max(ends[i + 1] - ends[i]))
                    .collect();
                if ends.len() >= 4 {
                    sorted_sigmas[0] = ends[2] - ends[1];
                    sorted_sigmas[m - 1] = ends[m] - ends[m - 1];
                }
                let mut sigmas = vec![0.0; m];
                for (rank, &i) in order.iter().enumerate() {
                    sigmas[i] = sorted_sigmas[rank];
                }
                sigmas.truncate(mus.len());
                let width = high - low + step0;
                let kernels = mus.len() + 1;
                let min_sigma = width / (100f64).min(1.0 + kernels as f64);
                sigmas
                    .iter_mut()
                    .for_each(|s| *s = s.clamp(min_sigma, width));
                let mut mus = mus;
                mus.push(prior_mu);
                sigmas.push(width);
                Parzen::Numeric {
                    weights,
                    mus,
                    sigmas,
                    low,
                    high,
                    step,
                    log,
                }
            }
        }
    }

    fn weights(&self) -> &[f64] {
        match self {
            Parzen::Numeric { weights, .. } | Parzen::Categorical { weights, .. } => weights,
        }
    }

    /// Draws a point coordinate.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> f64 {
        let k = pick(self.weights(), rng::unit(rng));
        match self {
            Parzen::Categorical { rows, .. } => pick(&rows[k], rng::unit(rng)) as f64,
            Parzen::Numeric {
                mus,
                sigmas,
                low,
                high,
                step,
                log,
                ..
            } => {
                let half = step.unwrap_or(0.0) / 2.0;
                let x = truncated_normal(rng, mus[k], sigmas[k], low - half, high + half);
                let x = match step {
                    Some(s) => (low + ((x - low) / s).round() * s).clamp(*low, *high),
                    None => x,
                };
                if *log {
                    x.exp().clamp(low.exp(), high.exp())
                } else {
                    x
                }
            }
        }
    }

    /// The log density (log mass for integers and choices) of a point coordinate.
    pub fn log_pdf(&self, x: f64) -> f64 {
        let terms: Vec<f64> = match self {
            Parzen::Categorical { weights, rows } => weights
                .iter()
                .zip(rows)
                .map(|(w, row)| w.ln() + row[x as usize].ln())
                .collect(),
            Parzen::Numeric {
                weights,
                mus,
                sigmas,
                low,
                high,
                step,
                log,
            } => {
                let x = if *log { x.ln() } else { x };
                let half = step.unwrap_or(0.0) / 2.0;
                let (lo, hi) = (low - half, high + half);
                weights
                    .iter()
                    .zip(mus.iter().zip(sigmas))
                    .map(|(w, (&mu, &s))| {
                        let norm = log_gauss_mass((lo - mu) / s, (hi - mu) / s);
                        let p = match step {
                            Some(_) => log_gauss_mass(
                                ((x - half).max(lo) - mu) / s,
                                ((x + half).min(hi) - mu) / s,
                            ),
                            None => {
                                let z = (x - mu) / s;
                                -0.5 * z * z - s.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
                            }
                        };
                        w.ln() + p - norm
                    })
                    .collect()
            }
        };
        log_sum_exp(&terms)
    }
}

/// `[low, high]` in the estimator's space, the integer step, and whether it is log space.
fn numeric_bounds(dist: &Distribution) -> (f64, f64, Option<f64>, bool) {
    match *dist {
        Distribution::Uniform { low, high } => (low, high, None, false),
        Distribution::LogUniform { low, high } => (low.ln(), high.ln(), None, true),
        Distribution::Int { low, high, step } => {
            let top = low + (high - low) / step * step;
            (low as f64, top as f64, Some(step as f64), false)
        }
        Distribution::Categorical { .. } => unreachable!("categorical has no bounds"),
    }
}

/// Picks an index with probability proportional to `weights`, given a uniform `u` in [0, 1).
fn pick(weights: &[f64], u: f64) -> usize {
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w / total;
        if u < acc {
            return i;
        }
    }
    weights.len() - 1
}

fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng::unit(rng);
    let u2 = rng::unit(rng);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A draw from N(mu, sigma) truncated to [lo, hi], by rejection. Every component has its mean
/// inside the bounds and a bandwidth at most their width, so at least a third of draws land
/// inside.
fn truncated_normal(rng: &mut ChaCha8Rng, mu: f64, sigma: f64, lo: f64, hi: f64) -> f64 {
    for _ in 0..10_000 {
        let x = mu + sigma * normal(rng);
        if (lo..=hi).contains(&x) {
            return x;
        }
    }
    mu.clamp(lo, hi)
}

/// erfc(x), to about 1e-14 relative: a series of positive terms below 2.5, a continued fraction
/// above.
pub fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.5 {
        // erf(x) = 2/sqrt(pi) exp(-x^2) sum_n (2x^2)^n x / (1·3·…·(2n+1))
        let (mut term, mut sum) = (x, x);
        let mut n = 0.0;
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        return 1.0 - 2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() * erfc_fraction(x)
}

/// The continued fraction K(x) with erfc(x) = exp(-x^2)/sqrt(pi) · K(x), for x ≥ 2.5.
fn erfc_fraction(x: f64) -> f64 {
    let mut t = x;
    for n in (1..=80).rev() {
        t = x + (n as f64 / 2.0) / t;
    }
    1.0 / t
}

/// The standard normal CDF.
pub fn ndtr(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// log of the standard normal CDF, accurate far into the lower tail.
pub fn log_ndtr(z: f64) -> f64 {
    if z > -5.0 {
        return ndtr(z).ln();
    }
    let t = -z / std::f64::consts::SQRT_2;
    0.5f64.ln() - t * t - 0.5 * std::f64::consts::PI.ln() + erfc_fraction(t).ln()
}

/// log(Φ(b) − Φ(a)) for a ≤ b, without cancellation in either tail.
pub fn log_gauss_mass(a: f64, b: f64) -> f64 {
    if b <= a {
        return f64::NEG_INFINITY;
    }
    if b <= 0.0 {
        let (la, lb) = (log_ndtr(a), log_ndtr(b));
        lb + (-(la - lb).exp()).ln_1p()
    } else if a >= 0.0 {
        log_gauss_mass(-b, -a)
    } else {
        (ndtr(b) - ndtr(a)).ln()
    }
}

/// A completed or pruned trial, as TPE sees it: lower `score` is better.
pub struct Scored<'a> {
    pub number: u32,
    pub point: &'a [f64],
    /// Completed: `(0, value)`; pruned: `(1, -epochs reached, last value)` so that pruned
    /// trials rank after every completed one, further ones first.
    pub rank: (u8, i64, f64),
}

/// The good (`below`) and bad (`above`) trials, each in trial order.
pub fn split<'a, 'b>(trials: &'b [Scored<'a>]) -> (Vec<&'b Scored<'a>>, Vec<&'b Scored<'a>>) {
    let n_below = gamma(trials.len());
    let mut order: Vec<&Scored> = trials.iter().collect();
    order.sort_by(|a, b| {
        (a.rank.0, a.rank.1)
            .cmp(&(b.rank.0, b.rank.1))
            .then(a.rank.2.total_cmp(&b.rank.2))
            .then(a.number.cmp(&b.number))
    });
    let (below, above) = order.split_at(n_below);
    let mut below = below.to_vec();
    let mut above = above.to_vec();
    below.sort_by_key(|s| s.number);
    above.sort_by_key(|s| s.number);
    (below, above)
}

/// One coordinate of the next point: `candidates` draws from l, the best by l(x)/g(x).
pub fn suggest_one(
    dist: &Distribution,
    below: &[f64],
    above: &[f64],
    candidates: u32,
    rng: &mut ChaCha8Rng,
) -> f64 {
    let l = Parzen::fit(dist, below);
    let g = Parzen::fit(dist, above);
    let mut best = (f64::NEG_INFINITY, None);
    for _ in 0..candidates.max(1) {
        let x = l.sample(rng);
        let score = l.log_pdf(x) - g.log_pdf(x);
        if best.1.is_none() || score > best.0 {
            best = (score, Some(x));
        }
    }
    best.1.expect("at least one candidate")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn special_functions() {
        let close = |a: f64, b: f64| ((a - b) / b).abs() < 1e-12;
        assert!(close(erfc(0.5), 0.479_500_122_186_953_5));
        assert!(close(erfc(1.0), 0.157_299_207_050_285_13));
        assert!(close(erfc(2.4), 6.885_138_966_450_786e-4));
        assert!(close(erfc(3.0), 2.209_049_699_858_544e-5));
        assert!(close(erfc(-1.0), 1.842_700_792_949_715));
        assert!(close(ndtr(1.959_963_984_540_054), 0.975));
        // log Φ(-40) = -804.608442013754 (far below where Φ underflows).
        assert!((log_ndtr(-40.0) + 804.608_442_013_754).abs() < 1e-9);
        assert!(close(log_ndtr(-5.0), (2.866_515_718_791_939e-7f64).ln()));
        assert!(close(
            log_gauss_mass(-1.0, 1.0),
            0.682_689_492_137_085_9f64.ln()
        ));
        assert!(close(
            log_gauss_mass(50.0, 51.0),
            log_gauss_mass(-51.0, -50.0)
        ));
        assert!(log_gauss_mass(50.0, 51.0).is_finite());
    }

    #[test]
    fn gamma_and_weights_as_optuna() {
        assert_eq!(
            [1, 10, 11, 100, 1000].map(gamma),
            [1, 1, 2, 10, 25],
            "min(ceil(0.1 n), 25)"
        );
        assert_eq!(default_weights(3), vec![1.0; 3]);
        let w = default_weights(30);
        assert_eq!(w.len(), 30);
        assert!((w[0] - 1.0 / 30.0).abs() < 1e-12 && w[4] == 1.0 && w[29] == 1.0);
    }

    #[test]
    fn the_estimator_is_a_density_and_peaks_at_the_data() {
        let d = Distribution::LogUniform {
            low: 1e-5,
            high: 1.0,
        };
        let p = Parzen::fit(&d, &[1e-3, 2e-3]);
        // Integrates to 1 over log space.
        let (a, b) = (1e-5f64.ln(), 0.0);
        let n = 20_000;
        let h = (b - a) / n as f64;
        let mass: f64 = (0..n)
            .map(|i| p.log_pdf((a + (i as f64 + 0.5) * h).exp()).exp() * h)
            .sum();
        assert!((mass - 1.0).abs() < 1e-3, "{mass}");
        assert!(p.log_pdf(1.5e-3) > p.log_pdf(0.1));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..1000 {
            let x = p.sample(&mut rng);
            assert!((1e-5..=1.0).contains(&x), "{x}");
        }
        // Integers: the masses of the values sum to 1.
        let i = Distribution::Int {
            low: 1,
            high: 9,
            step: 2,
        };
        let p = Parzen::fit(&i, &[3.0]);
        let total: f64 = [1.0, 3.0, 5.0, 7.0, 9.0]
            .iter()
            .map(|&x| p.log_pdf(x).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        for _ in 0..200 {
            let x = p.sample(&mut rng);
            assert!([1.0, 3.0, 5.0, 7.0, 9.0].contains(&x), "{x}");
        }
        // Choices: smoothed frequencies.
        let c = Distribution::Categorical {
            choices: vec!["a".into(), "b".into(), "c".into()],
        };
        let p = Parzen::fit(&c, &[1.0, 1.0]);
        let probs: Vec<f64> = (0..3).map(|x| p.log_pdf(x as f64).exp()).collect();
        // Two kernels (1/3 smoothing each, +1 on "b", normalized) and the uniform prior,
        // equally weighted: b gets (2/3 + 2/3 + 1/3) / 3.
        assert!((probs[1] - 5.0 / 9.0).abs() < 1e-12, "{probs:?}");
        assert!((probs[0] - 2.0 / 9.0).abs() < 1e-12, "{probs:?}");
    }

    #[test]
    fn pruned_trials_rank_after_completed_ones() {
        let point = [0.0];
        let mut trials: Vec<Scored> = (1..=20)
            .map(|n| Scored {
                number: n,
                point: &point,
                rank: (0, 0, n as f64),
            })
            .collect();
        // However good their last values, pruned trials are worse than completed ones; among
        // them, those that got further are better.
        trials.extend((21..=25).map(|n| Scored {
            number: n,
            point: &point,
            rank: (1, -((n - 20) as i64), -100.0),
        }));
        let (below, above) = split(&trials);
        assert_eq!(
            below.iter().map(|s| s.number).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(above.len(), 22);
        let few: Vec<Scored> = trials.drain(20..).collect();
        let (below, _) = split(&few);
        assert_eq!(below.iter().map(|s| s.number).collect::<Vec<_>>(), [25]);
    }
}
