//! The Tree-structured Parzen Estimator (Bergstra et al. 2011), as Optuna 5's `TPESampler`
//! does it. Finished trials are split into the best `gamma(n) = min(ceil(0.1 n), 25)`
//! ("below", l) and the rest ("above", g); a Parzen estimator is fitted to each side, candidates
//! are drawn from l, and the one with the largest l(x)/g(x) is taken.
//!
//! - **Multivariate** (the default, as in Optuna 5): one joint estimator over all parameters, a
//!   mixture with one component per trial (the product of a kernel per parameter) plus the
//!   prior, so values that did well *together* are proposed together. **Independent**: one
//!   estimator per parameter.
//! - Kernels: truncated Gaussians (in log space for `log_uniform` and log-scale `int`; the mass
//!   of `[x - step/2, x + step/2]` for integers), each with the larger gap to its neighbours as
//!   bandwidth, clipped to `[width / min(100, n + 2), width]`; smoothed frequencies for
//!   `categorical`. Older trials weigh less once there are more than 25.
//! - Candidates: Optuna's 24, then 72 more with the winner's categorical values kept (see
//!   [`suggest`]); scored together, each integer or choice worked out once.
//! - Pruned trials count as worse than every completed one, ranked by how far they got and
//!   their last value; with the **constant liar**, trials still running count as worse than all
//!   of them (they sit in g), so parallel trials are not proposed on top of each other.

use super::space::Distribution;
use crate::rng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

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

/// One parameter's kernels: one per observation, then the prior's.
enum Kernels {
    /// Truncated Gaussians on `[lo, hi]` (the estimator's space: log space for log scales,
    /// widened by half a step for integers).
    Numeric {
        mus: Vec<f64>,
        sigmas: Vec<f64>,
        /// log of each Gaussian's mass inside `[lo, hi]`.
        log_norms: Vec<f64>,
        /// `1 / sigma`, and the log density's constant `-ln sigma - ln sqrt(2 pi) - log_norm`.
        inv_sigmas: Vec<f64>,
        consts: Vec<f64>,
        lo: f64,
        hi: f64,
        /// Integers: the step, and the value range the draws are rounded into.
        step: Option<(f64, f64, f64)>,
        log: bool,
    },
    /// `log_rows[k][c]`: log probability of choice `c` under kernel `k`.
    Categorical {
        rows: Vec<Vec<f64>>,
        log_rows: Vec<Vec<f64>>,
    },
}

/// A Parzen estimator over some parameters: a mixture whose components are products of one
/// kernel per parameter.
pub struct Parzen {
    weights: Vec<f64>,
    log_weights: Vec<f64>,
    dims: Vec<Kernels>,
}

/// The estimator's bounds of a numeric parameter, its integer step and value range, and
/// whether it is searched in log space.
fn numeric_bounds(dist: &Distribution) -> (f64, f64, Option<(f64, f64, f64)>, bool) {
    match *dist {
        Distribution::Uniform { low, high } => (low, high, None, false),
        Distribution::LogUniform { low, high } => (low.ln(), high.ln(), None, true),
        Distribution::Int {
            low,
            high,
            step,
            log,
        } => {
            let top = (low + (high - low) / step * step) as f64;
            let (low, step) = (low as f64, step as f64);
            let (lo, hi) = (low - step / 2.0, top + step / 2.0);
            let (lo, hi) = if log { (lo.ln(), hi.ln()) } else { (lo, hi) };
            (lo, hi, Some((step, low, top)), log)
        }
        Distribution::Categorical { .. } => unreachable!("categorical has no bounds"),
    }
}

impl Kernels {
    fn fit(dist: &Distribution, observed: &[f64]) -> Kernels {
        let kernels = observed.len() + 1;
        if let Distribution::Categorical { choices } = dist {
            let n = choices.len();
            let mut rows = vec![vec![PRIOR_WEIGHT / kernels as f64; n]; kernels];
            for (row, &c) in rows.iter_mut().zip(observed) {
                row[c as usize] += 1.0;
            }
            for row in &mut rows {
                let s: f64 = row.iter().sum();
                row.iter_mut().for_each(|p| *p /= s);
            }
            let log_rows = rows
                .iter()
                .map(|r| r.iter().map(|p| p.ln()).collect())
                .collect();
            return Kernels::Categorical { rows, log_rows };
        }
        let (lo, hi, step, log) = numeric_bounds(dist);
        let mut mus: Vec<f64> = observed
            .iter()
            .map(|&x| if log { x.ln() } else { x })
            .collect();
        // Each kernel's bandwidth is the larger gap to its neighbours (the bounds at the
        // ends), except that the outermost ones take their inner gap.
        let mut order: Vec<usize> = (0..mus.len()).collect();
        order.sort_by(|&a, &b| mus[a].total_cmp(&mus[b]));
        let mut ends = vec![lo];
        ends.extend(order.iter().map(|&i| mus[i]));
        ends.push(hi);
        let m = mus.len();
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
        let width = hi - lo;
        let min_sigma = width / (100f64).min(1.0 + kernels as f64);
        sigmas
            .iter_mut()
            .for_each(|s| *s = s.clamp(min_sigma, width));
        mus.push(0.5 * (lo + hi));
        sigmas.push(width);
        let log_norms: Vec<f64> = mus
            .iter()
            .zip(&sigmas)
            .map(|(&mu, &s)| log_gauss_mass((lo - mu) / s, (hi - mu) / s))
            .collect();
        let half_ln_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
        let consts = sigmas
            .iter()
            .zip(&log_norms)
            .map(|(s, n)| -s.ln() - half_ln_2pi - n)
            .collect();
        Kernels::Numeric {
            inv_sigmas: sigmas.iter().map(|s| 1.0 / s).collect(),
            consts,
            mus,
            sigmas,
            log_norms,
            lo,
            hi,
            step,
            log,
        }
    }

    /// A draw from kernel `k`.
    fn sample(&self, k: usize, rng: &mut ChaCha8Rng) -> f64 {
        match self {
            Kernels::Categorical { rows, .. } => pick(&rows[k], rng::unit(rng)) as f64,
            Kernels::Numeric {
                mus,
                sigmas,
                lo,
                hi,
                step,
                log,
                ..
            } => {
                let x = truncated_normal(rng, mus[k], sigmas[k], *lo, *hi);
                let x = if *log { x.exp() } else { x };
                match *step {
                    Some((s, low, top)) => (low + ((x - low) / s).round() * s).clamp(low, top),
                    None if *log => x.clamp(lo.exp(), hi.exp()),
                    None => x,
                }
            }
        }
    }

    /// Adds each kernel's log density (log mass for integers and choices) at `x` to `acc`.
    /// For integers, the Gaussian tails at the interval's edges are taken from (and added to)
    /// `edges`: neighbouring integers share an edge.
    fn add_log_pdf(&self, x: f64, edges: &mut HashMap<u64, Vec<f64>>, acc: &mut [f64]) {
        let (mus, inv_sigmas, consts, log_norms, step, log) = match self {
            Kernels::Categorical { log_rows, .. } => {
                for (a, row) in acc.iter_mut().zip(log_rows) {
                    *a += row[x as usize];
                }
                return;
            }
            Kernels::Numeric {
                mus,
                inv_sigmas,
                consts,
                log_norms,
                step,
                log,
                ..
            } => (mus, inv_sigmas, consts, log_norms, step, *log),
        };
        let t = |v: f64| if log { v.ln() } else { v };
        let Some((s, ..)) = step else {
            let x = t(x);
            for (k, a) in acc.iter_mut().enumerate() {
                let z = (x - mus[k]) * inv_sigmas[k];
                *a += consts[k] - 0.5 * z * z;
            }
            return;
        };
        let (a, b) = (t(x - s / 2.0), t(x + s / 2.0));
        // Per kernel, Φ(z) where z ≤ 0 and Φ(-z) where z > 0: the tail that is accurate.
        let tails = |e: f64| -> Vec<f64> {
            mus.iter()
                .zip(inv_sigmas)
                .map(|(mu, inv)| ndtr(-((e - mu) * inv).abs()))
                .collect()
        };
        edges.entry(a.to_bits()).or_insert_with(|| tails(a));
        edges.entry(b.to_bits()).or_insert_with(|| tails(b));
        let (ta, tb) = (&edges[&a.to_bits()], &edges[&b.to_bits()]);
        for (k, out) in acc.iter_mut().enumerate() {
            let (za, zb) = ((a - mus[k]) * inv_sigmas[k], (b - mus[k]) * inv_sigmas[k]);
            let (d, scale) = if zb <= 0.0 {
                (tb[k] - ta[k], tb[k])
            } else if za > 0.0 {
                (ta[k] - tb[k], ta[k])
            } else {
                (1.0 - ta[k] - tb[k], 1.0)
            };
            // Where subtracting cancels (far out, narrow) or underflows: in log space.
            let mass = if d >= 1e-3 * scale && d > 1e-290 {
                d.ln()
            } else {
                log_gauss_mass(za, zb)
            };
            *out += mass - log_norms[k];
        }
    }
}

impl Parzen {
    /// Fits the estimator of the parameters `dists` to observed points (oldest trial first;
    /// coordinate `i` of each is parameter `i`'s).
    pub fn fit(dists: &[&Distribution], observed: &[&[f64]]) -> Parzen {
        let mut weights = default_weights(observed.len());
        weights.push(PRIOR_WEIGHT);
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= total);
        let log_weights = weights.iter().map(|w| w.ln()).collect();
        let dims = dists
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let column: Vec<f64> = observed.iter().map(|p| p[i]).collect();
                Kernels::fit(d, &column)
            })
            .collect();
        Parzen {
            weights,
            log_weights,
            dims,
        }
    }

    /// Draws a point: a component, then each coordinate from its kernel in that component.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Vec<f64> {
        let k = pick(&self.weights, rng::unit(rng));
        self.dims.iter().map(|d| d.sample(k, rng)).collect()
    }

    /// The log density of a point (log mass along integers and choices).
    pub fn log_pdf(&self, x: &[f64]) -> f64 {
        self.log_pdf_many(std::slice::from_ref(&x.to_vec()))[0]
    }

    /// [`Parzen::log_pdf`] of many points. An integer or choice shared by several points is
    /// worked out once (its masses cost two erfc per kernel).
    pub fn log_pdf_many(&self, xs: &[Vec<f64>]) -> Vec<f64> {
        let k = self.log_weights.len();
        let mut acc: Vec<f64> = Vec::with_capacity(xs.len() * k);
        for _ in xs {
            acc.extend_from_slice(&self.log_weights);
        }
        for (i, d) in self.dims.iter().enumerate() {
            let mut edges: HashMap<u64, Vec<f64>> = HashMap::new();
            if matches!(d, Kernels::Numeric { step: None, .. }) {
                for (x, row) in xs.iter().zip(acc.chunks_mut(k)) {
                    d.add_log_pdf(x[i], &mut edges, row);
                }
                continue;
            }
            let mut seen: HashMap<u64, Vec<f64>> = HashMap::new();
            for (x, row) in xs.iter().zip(acc.chunks_mut(k)) {
                let terms = seen.entry(x[i].to_bits()).or_insert_with(|| {
                    let mut t = vec![0.0; k];
                    d.add_log_pdf(x[i], &mut edges, &mut t);
                    t
                });
                row.iter_mut().zip(terms.iter()).for_each(|(a, t)| *a += t);
            }
        }
        acc.chunks(k).map(log_sum_exp).collect()
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
    // Terms below e^-50 of the largest change the sum by less than a rounding error.
    m + v
        .iter()
        .filter(|&&x| x - m > -50.0)
        .map(|x| (x - m).exp())
        .sum::<f64>()
        .ln()
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

/// erfc(x) (musl's, accurate to about an ulp).
pub fn erfc(x: f64) -> f64 {
    libm::erfc(x)
}

/// The standard normal CDF.
pub fn ndtr(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// log of the standard normal CDF, accurate far into the lower tail.
pub fn log_ndtr(z: f64) -> f64 {
    // Φ(-37) ≈ 6e-300 is still a normal float; further out, the asymptotic series
    // Φ(z) = φ(z)/(-z) · (1 - 1/z² + 3/z⁴ - 15/z⁶ + 105/z⁸ - …), whose next term is below
    // 1e-12 there.
    if z > -37.0 {
        return ndtr(z).ln();
    }
    let w = 1.0 / (z * z);
    let series = 1.0 - w * (1.0 - w * (3.0 - w * (15.0 - w * 105.0)));
    -0.5 * z * z - (-z).ln() - 0.5 * (2.0 * std::f64::consts::PI).ln() + series.ln()
}

/// log(Φ(b) − Φ(a)) for a ≤ b, without cancellation in either tail.
pub fn log_gauss_mass(a: f64, b: f64) -> f64 {
    if b <= a {
        return f64::NEG_INFINITY;
    }
    if b <= 0.0 {
        // Both in the lower tail, where Φ itself is accurate: subtract directly unless that
        // cancels (a narrow interval) or underflows, then in log space.
        let (pa, pb) = (ndtr(a), ndtr(b));
        let d = pb - pa;
        if d >= 1e-3 * pb && pa > 1e-290 {
            return d.ln();
        }
        let (la, lb) = (log_ndtr(a), log_ndtr(b));
        lb + (-(la - lb).exp()).ln_1p()
    } else if a >= 0.0 {
        log_gauss_mass(-b, -a)
    } else {
        (ndtr(b) - ndtr(a)).ln()
    }
}

/// A finished (or, for the constant liar, running) trial, as TPE sees it.
pub struct Scored<'a> {
    pub number: u32,
    pub point: &'a [f64],
    /// Lower ranks better. Completed: `(0, 0, value)`; pruned: `(1, -epochs reached, last
    /// value)` so that pruned trials rank after every completed one, further ones first;
    /// running: `(2, 0, 0)`, after all of them.
    pub rank: (u8, i64, f64),
}

impl Scored<'_> {
    pub fn running(&self) -> bool {
        self.rank.0 == 2
    }
}

/// The good (`below`) and bad (`above`) trials, each in trial order. The good side's size
/// counts finished trials only, so running ones always land in `above`.
pub fn split<'a, 'b>(trials: &'b [Scored<'a>]) -> (Vec<&'b Scored<'a>>, Vec<&'b Scored<'a>>) {
    let n_below = gamma(trials.iter().filter(|t| !t.running()).count());
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

/// The next point over the parameters `dists`: `candidates` draws from l, the best by
/// l(x)/g(x); then `refine` more draws with the winner's choices kept (its categorical values),
/// and the best of all. `below` and `above` hold the two sides' points (coordinate `i` for
/// `dists[i]`).
///
/// Why two rounds: more candidates find better numeric values, but a categorical value that
/// leads l/g early would then win nearly every trial and the others would never be tried again;
/// the first round picks the choices as Optuna's 24 candidates do.
pub fn suggest(
    dists: &[&Distribution],
    below: &[&[f64]],
    above: &[&[f64]],
    candidates: u32,
    refine: u32,
    rng: &mut ChaCha8Rng,
) -> Vec<f64> {
    let l = Parzen::fit(dists, below);
    let g = Parzen::fit(dists, above);
    let mut xs: Vec<Vec<f64>> = (0..candidates.max(1)).map(|_| l.sample(rng)).collect();
    let best_of = |xs: &[Vec<f64>]| -> (usize, f64) {
        let (ls, gs) = (l.log_pdf_many(xs), g.log_pdf_many(xs));
        let mut best = (0, ls[0] - gs[0]);
        for i in 1..xs.len() {
            if ls[i] - gs[i] > best.1 {
                best = (i, ls[i] - gs[i]);
            }
        }
        best
    };
    let (i, score) = best_of(&xs);
    let winner = xs.swap_remove(i);
    let numeric = dists
        .iter()
        .any(|d| !matches!(d, Distribution::Categorical { .. }));
    if refine == 0 || !numeric {
        return winner;
    }
    let more: Vec<Vec<f64>> = (0..refine)
        .map(|_| {
            let mut x = l.sample(rng);
            for (j, d) in dists.iter().enumerate() {
                if matches!(d, Distribution::Categorical { .. }) {
                    x[j] = winner[j];
                }
            }
            x
        })
        .collect();
    let (j, refined) = best_of(&more);
    if refined > score {
        more.into_iter().nth(j).expect("a refined candidate")
    } else {
        winner
    }
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

    /// The estimator of one parameter, with scalar points.
    struct Parzen1(Parzen);

    impl Parzen1 {
        fn fit(d: &Distribution, observed: &[f64]) -> Self {
            let rows: Vec<[f64; 1]> = observed.iter().map(|&x| [x]).collect();
            let refs: Vec<&[f64]> = rows.iter().map(|r| &r[..]).collect();
            Parzen1(Parzen::fit(&[d], &refs))
        }
        fn log_pdf(&self, x: f64) -> f64 {
            self.0.log_pdf(&[x])
        }
        fn sample(&self, rng: &mut ChaCha8Rng) -> f64 {
            self.0.sample(rng)[0]
        }
    }

    #[test]
    fn the_estimator_is_a_density_and_peaks_at_the_data() {
        let d = Distribution::LogUniform {
            low: 1e-5,
            high: 1.0,
        };
        let p = Parzen1::fit(&d, &[1e-3, 2e-3]);
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
            log: false,
        };
        let p = Parzen1::fit(&i, &[3.0]);
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
        let p = Parzen1::fit(&c, &[1.0, 1.0]);
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
