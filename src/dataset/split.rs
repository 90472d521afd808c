//! Train/validation/test splits: by patient (no patient in two splits, stratified) or at random
//! (exact counts, as the seed notebooks do); and, for archives with an official test set, a
//! validation set carved from the training images, stratified by class. All are deterministic
//! for a seed.

use crate::rng::shuffle;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The three splits are part of the shard format (each record's split is stored as its code).
pub use crate::shard::Split;

/// How patches are assigned to splits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SplitMethod {
    /// Whole patients go to one split; each split's IDC fraction is kept close to the whole's.
    #[default]
    Patient,
    /// Patches are shuffled and cut at exact counts (patients may appear in several splits).
    Random,
}

impl crate::choice::Choice for SplitMethod {
    const ALL: &'static [Self] = &[SplitMethod::Patient, SplitMethod::Random];
    fn name(self) -> &'static str {
        match self {
            SplitMethod::Patient => "patient",
            SplitMethod::Random => "random",
        }
    }
    fn about(self) -> Option<&'static str> {
        Some(match self {
            SplitMethod::Patient => {
                "Whole patients go to one split; each split's IDC fraction is kept close to the whole's"
            }
            SplitMethod::Random => {
                "Patches are shuffled and cut at exact counts (patients may appear in several splits)"
            }
        })
    }
}
crate::choice_names!(SplitMethod);

/// A split's size: an exact patch count, or a fraction of all patches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum SplitSize {
    Count(u64),
    Fraction(f64),
}

impl SplitSize {
    /// The number of patches this size means out of `total`.
    pub fn count_of(self, total: u64) -> u64 {
        match self {
            SplitSize::Count(n) => n,
            SplitSize::Fraction(f) => (f * total as f64).round() as u64,
        }
    }
}

impl fmt::Display for SplitSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitSize::Count(n) => write!(f, "{n}"),
            SplitSize::Fraction(x) => write!(f, "{x}"),
        }
    }
}

impl FromStr for SplitSize {
    type Err = String;

    /// `38000` (a count), `0.15` or `15%` (a fraction).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("'{s}' is neither a patch count (38000) nor a fraction (0.15 or 15%)");
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            return fraction(v / 100.0).ok_or_else(bad);
        }
        if let Ok(n) = s.parse::<u64>() {
            return Ok(SplitSize::Count(n));
        }
        let v: f64 = s.parse().map_err(|_| bad())?;
        fraction(v).ok_or_else(bad)
    }
}

fn fraction(v: f64) -> Option<SplitSize> {
    (0.0..1.0).contains(&v).then_some(SplitSize::Fraction(v))
}

/// The split options a dataset is staged with; part of its identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SplitOptions {
    pub method: SplitMethod,
    pub val: SplitSize,
    pub test: SplitSize,
    pub seed: u64,
}

impl Default for SplitOptions {
    fn default() -> Self {
        Self {
            method: SplitMethod::Patient,
            val: SplitSize::Fraction(0.15),
            test: SplitSize::Fraction(0.15),
            seed: 42,
        }
    }
}

/// Why patches cannot be split as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error(
        "validation ({val}) and test ({test}) together ask for more than the {total} patches found"
    )]
    TooLarge { val: u64, test: u64, total: u64 },
    #[error("validation ({val}) must be fewer than the {total} training images it is carved from")]
    HoldoutTooLarge { val: u64, total: u64 },
    #[error(
        "a patient split needs at least {needed} patients for the splits asked, found {found}; \
         use --split random or smaller splits"
    )]
    TooFewPatients { needed: usize, found: usize },
}

/// Assigns each item (given by patient and class) to a split.
pub fn assign(items: &[(u32, u8)], opts: &SplitOptions) -> Result<Vec<Split>, SplitError> {
    let total = items.len() as u64;
    let (val, test) = (opts.val.count_of(total), opts.test.count_of(total));
    if val + test > total {
        return Err(SplitError::TooLarge { val, test, total });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    Ok(match opts.method {
        SplitMethod::Random => random(total as usize, val as usize, test as usize, &mut rng),
        SplitMethod::Patient => by_patient(items, val, test, &mut rng)?,
    })
}

fn random(total: usize, val: usize, test: usize, rng: &mut ChaCha8Rng) -> Vec<Split> {
    let mut order: Vec<usize> = (0..total).collect();
    shuffle(&mut order, rng);
    let mut out = vec![Split::Train; total];
    for &i in &order[..val] {
        out[i] = Split::Val;
    }
    for &i in &order[val..val + test] {
        out[i] = Split::Test;
    }
    out
}

/// Stratified group assignment: patients in seeded random order, largest first, each to the
/// split that brings sizes and IDC fractions closest to their targets; then single moves and
/// pair swaps while they bring them closer still.
fn by_patient(
    items: &[(u32, u8)],
    val: u64,
    test: u64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Split>, SplitError> {
    let mut patients: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for &(p, c) in items {
        let e = patients.entry(p).or_default();
        e.0 += 1;
        e.1 += c as u64;
    }
    let needed = 1 + usize::from(val > 0) + usize::from(test > 0);
    if patients.len() < needed {
        return Err(SplitError::TooFewPatients {
            needed,
            found: patients.len(),
        });
    }
    let total = items.len() as f64;
    let positives = items.iter().filter(|i| i.1 == 1).count() as f64;
    let size_targets = [total - (val + test) as f64, val as f64, test as f64];

    let mut order: Vec<(u32, (u64, u64))> = patients.into_iter().collect();
    shuffle(&mut order, rng);
    // Large patients first leave the small ones to even out the remainder (stable sort keeps
    // the seeded order among equals).
    order.sort_by_key(|p| std::cmp::Reverse(p.1.0));

    let targets = Targets {
        size: size_targets,
        total,
        positives: positives.max(1.0),
    };
    let mut state = State {
        size: [0.0; 3],
        pos: [0.0; 3],
    };
    let mut choice = vec![0usize; order.len()];
    for (k, &(_, (n, p))) in order.iter().enumerate() {
        let (n, p) = (n as f64, p as f64);
        let best = (0..3)
            .filter(|&s| size_targets[s] > 0.0)
            .min_by(|&a, &b| {
                let ca = targets.cost(&state.moved(None, Some(a), n, p));
                let cb = targets.cost(&state.moved(None, Some(b), n, p));
                ca.total_cmp(&cb)
            })
            .expect("the train split always has a target");
        state = state.moved(None, Some(best), n, p);
        choice[k] = best;
    }
    // Then improve by moving single patients and swapping pairs while that lowers the cost.
    for _ in 0..50 {
        let mut improved = false;
        for a in 0..order.len() {
            let (na, pa) = (order[a].1.0 as f64, order[a].1.1 as f64);
            for (s, &target) in size_targets.iter().enumerate() {
                if s == choice[a] || target == 0.0 {
                    continue;
                }
                let next = state.moved(Some(choice[a]), Some(s), na, pa);
                if targets.cost(&next) < targets.cost(&state) - 1e-15 {
                    state = next;
                    choice[a] = s;
                    improved = true;
                }
            }
            for b in a + 1..order.len() {
                if choice[a] == choice[b] {
                    continue;
                }
                let (nb, pb) = (order[b].1.0 as f64, order[b].1.1 as f64);
                let next = state.moved(Some(choice[a]), Some(choice[b]), na, pa).moved(
                    Some(choice[b]),
                    Some(choice[a]),
                    nb,
                    pb,
                );
                if targets.cost(&next) < targets.cost(&state) - 1e-15 {
                    state = next;
                    choice.swap(a, b);
                    improved = true;
                }
            }
        }
        if !improved {
            break;
        }
    }
    let of_patient: BTreeMap<u32, Split> = order
        .iter()
        .zip(&choice)
        .map(|(&(patient, _), &s)| (patient, Split::ALL[s]))
        .collect();
    Ok(items.iter().map(|(p, _)| of_patient[p]).collect())
}

/// Picks exactly `val` of `labels` (class indices below `classes`) for validation, stratified:
/// each class gives its share `val * n_c / n`, rounded by largest remainder (ties to the lower
/// class), its members drawn in seeded random order. Returns, per item, whether it is held out.
pub fn stratified_holdout(
    labels: &[u8],
    classes: usize,
    val: u64,
    seed: u64,
) -> Result<Vec<bool>, SplitError> {
    let total = labels.len() as u64;
    if val >= total {
        return Err(SplitError::HoldoutTooLarge { val, total });
    }
    let mut members: Vec<Vec<usize>> = vec![vec![]; classes];
    for (i, &y) in labels.iter().enumerate() {
        members[y as usize].push(i);
    }
    let exact: Vec<f64> = members
        .iter()
        .map(|m| val as f64 * m.len() as f64 / total as f64)
        .collect();
    let mut quota: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut left = val as usize - quota.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..classes).collect();
    by_remainder.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for c in by_remainder {
        if left == 0 {
            break;
        }
        if quota[c] < members[c].len() {
            quota[c] += 1;
            left -= 1;
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut held = vec![false; labels.len()];
    for (c, m) in members.iter_mut().enumerate() {
        shuffle(m, &mut rng);
        for &i in &m[..quota[c]] {
            held[i] = true;
        }
    }
    Ok(held)
}

/// Patch and IDC counts per split during a patient split.
#[derive(Clone, Copy)]
struct State {
    size: [f64; 3],
    pos: [f64; 3],
}

impl State {
    /// The state after moving a patient of `n` patches (`p` IDC) from split `from` to `to`.
    fn moved(&self, from: Option<usize>, to: Option<usize>, n: f64, p: f64) -> State {
        let mut s = *self;
        if let Some(f) = from {
            s.size[f] -= n;
            s.pos[f] -= p;
        }
        if let Some(t) = to {
            s.size[t] += n;
            s.pos[t] += p;
        }
        s
    }
}

/// What a patient split aims at, and how far a state is from it.
struct Targets {
    size: [f64; 3],
    total: f64,
    positives: f64,
}

impl Targets {
    /// Squared misses of each split's share of patches and of its IDC fraction.
    fn cost(&self, s: &State) -> f64 {
        let whole = self.positives / self.total;
        (0..3)
            .map(|i| {
                let size = ((s.size[i] - self.size[i]) / self.total).powi(2);
                let frac = if s.size[i] > 0.0 {
                    s.pos[i] / s.size[i]
                } else {
                    0.0
                };
                let strat = if self.size[i] > 0.0 {
                    (frac - whole).powi(2)
                } else {
                    0.0
                };
                size + strat
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::below;
    use std::collections::{HashMap, HashSet};

    /// 60 patients of uneven size and IDC rate, like the real set.
    fn population() -> Vec<(u32, u8)> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut items = vec![];
        for p in 0..60u32 {
            let n = 200 + below(&mut rng, 1500);
            let rate = 0.05 + below(&mut rng, 50) as f64 / 100.0;
            for i in 0..n {
                items.push((9000 + p, u8::from((i as f64) < rate * n as f64)));
            }
        }
        items
    }

    fn opts(method: SplitMethod, val: SplitSize, test: SplitSize, seed: u64) -> SplitOptions {
        SplitOptions {
            method,
            val,
            test,
            seed,
        }
    }

    #[test]
    fn parses_sizes() {
        assert_eq!("38000".parse::<SplitSize>(), Ok(SplitSize::Count(38000)));
        assert_eq!("0.15".parse::<SplitSize>(), Ok(SplitSize::Fraction(0.15)));
        assert_eq!("15%".parse::<SplitSize>(), Ok(SplitSize::Fraction(0.15)));
        assert!("1.5".parse::<SplitSize>().is_err());
        assert!("-3".parse::<SplitSize>().is_err());
        assert!("ten".parse::<SplitSize>().is_err());
    }

    #[test]
    fn random_split_has_exact_counts_and_is_deterministic() {
        let items = population();
        let o = opts(
            SplitMethod::Random,
            SplitSize::Count(3800),
            SplitSize::Count(3800),
            1,
        );
        let a = assign(&items, &o).unwrap();
        let count = |s| a.iter().filter(|&&x| x == s).count();
        assert_eq!((count(Split::Val), count(Split::Test)), (3800, 3800));
        assert_eq!(count(Split::Train), items.len() - 7600);
        assert_eq!(a, assign(&items, &o).unwrap());
        let other = assign(&items, &SplitOptions { seed: 2, ..o }).unwrap();
        assert_ne!(a, other);
    }

    #[test]
    fn patient_split_has_no_leak_and_is_stratified() {
        let items = population();
        let o = opts(
            SplitMethod::Patient,
            SplitSize::Fraction(0.15),
            SplitSize::Fraction(0.15),
            3,
        );
        let a = assign(&items, &o).unwrap();
        assert_eq!(a, assign(&items, &o).unwrap(), "deterministic for a seed");
        let mut of_patient: HashMap<u32, HashSet<Split>> = HashMap::new();
        for (&(p, _), &s) in items.iter().zip(&a) {
            of_patient.entry(p).or_default().insert(s);
        }
        assert!(
            of_patient.values().all(|s| s.len() == 1),
            "a patient in two splits"
        );
        let whole = items.iter().filter(|i| i.1 == 1).count() as f64 / items.len() as f64;
        for (split, want) in [
            (Split::Train, 0.70),
            (Split::Val, 0.15),
            (Split::Test, 0.15),
        ] {
            let members: Vec<_> = items.iter().zip(&a).filter(|(_, s)| **s == split).collect();
            let frac = members.len() as f64 / items.len() as f64;
            let pos =
                members.iter().filter(|(i, _)| i.1 == 1).count() as f64 / members.len() as f64;
            assert!(
                (frac - want).abs() < 0.02,
                "{split}: size fraction {frac}, want {want}"
            );
            assert!(
                (pos - whole).abs() < 0.02,
                "{split}: IDC fraction {pos}, whole {whole}"
            );
        }
    }

    #[test]
    fn rejects_impossible_splits() {
        let items = population();
        let o = opts(
            SplitMethod::Random,
            SplitSize::Count(60_000),
            SplitSize::Count(60_000),
            1,
        );
        assert!(matches!(
            assign(&items, &o),
            Err(SplitError::TooLarge { .. })
        ));
        let two = [(1, 0), (1, 1), (2, 0)];
        let o = opts(
            SplitMethod::Patient,
            SplitSize::Fraction(0.2),
            SplitSize::Fraction(0.2),
            1,
        );
        assert_eq!(
            assign(&two, &o),
            Err(SplitError::TooFewPatients {
                needed: 3,
                found: 2
            })
        );
    }

    #[test]
    fn stratified_holdout_is_exact_and_proportional() {
        // 10 classes of uneven size: 100, 200, ..., 1000 (5500 in all).
        let labels: Vec<u8> = (0..10u8)
            .flat_map(|c| std::iter::repeat_n(c, 100 * (c as usize + 1)))
            .collect();
        let held = stratified_holdout(&labels, 10, 1000, 42).unwrap();
        assert_eq!(held.iter().filter(|&&h| h).count(), 1000, "exactly --val");
        for c in 0..10u8 {
            let n = labels.iter().filter(|&&y| y == c).count() as f64;
            let h = (0..labels.len())
                .filter(|&i| held[i] && labels[i] == c)
                .count() as f64;
            assert!(
                (h - n * 1000.0 / 5500.0).abs() <= 1.0,
                "class {c}: {h} of {n}"
            );
        }
        assert_eq!(held, stratified_holdout(&labels, 10, 1000, 42).unwrap());
        assert_ne!(held, stratified_holdout(&labels, 10, 1000, 43).unwrap());
        assert_eq!(
            stratified_holdout(&labels, 10, 5500, 42)
                .unwrap_err()
                .to_string(),
            "validation (5500) must be fewer than the 5500 training images it is carved from"
        );
        assert_eq!(
            stratified_holdout(&labels, 10, 0, 1).unwrap(),
            vec![false; labels.len()]
        );
    }
}
