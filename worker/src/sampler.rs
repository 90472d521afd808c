//! Training order: weighted sampling with replacement (the seed's WeightedRandomSampler with
//! inverse class-count weights) or a shuffle. Deterministic for (seed, epoch), so a run resumed
//! mid-epoch draws exactly what it would have.

use idc::spec::Sampling;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// A seeded generator for one purpose at one point of the run.
pub fn rng_for(seed: u64, purpose: u64, epoch: u32, step: u64) -> ChaCha8Rng {
    let mut s = seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    s ^= (epoch as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
        ^ step.wrapping_mul(0xA076_1D64_78BD_642F);
    ChaCha8Rng::seed_from_u64(s)
}

use idc::rng::below;

/// The indices of training patches for `epoch`, `labels.len()` of them.
pub fn epoch_order(sampling: Sampling, labels: &[u8], seed: u64, epoch: u32) -> Vec<i64> {
    let mut rng = rng_for(seed, 1, epoch, 0);
    match sampling {
        Sampling::Shuffle => {
            let mut order: Vec<i64> = (0..labels.len() as i64).collect();
            idc::rng::shuffle(&mut order, &mut rng);
            order
        }
        Sampling::Weighted => {
            // Weight 1/n_c per patch makes each class equally likely; then uniform within it.
            let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
            let mut by_class: Vec<Vec<i64>> = vec![vec![]; classes.max(2)];
            for (i, &l) in labels.iter().enumerate() {
                by_class[l as usize].push(i as i64);
            }
            let present: Vec<usize> = (0..by_class.len())
                .filter(|&c| !by_class[c].is_empty())
                .collect();
            (0..labels.len())
                .map(|_| {
                    let c = if present.len() == 1 {
                        present[0]
                    } else if by_class.len() == 2 {
                        // Two classes: one bit, as the first idc drew (runs reproduce).
                        (rng.next_u32() & 1) as usize
                    } else {
                        present[below(&mut rng, present.len())]
                    };
                    by_class[c][below(&mut rng, by_class[c].len())]
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_sampling_balances_classes() {
        // 2.5 negatives per positive, as in the real set.
        let labels: Vec<u8> = (0..35_000).map(|i| u8::from(i % 7 < 2)).collect();
        let order = epoch_order(Sampling::Weighted, &labels, 3, 0);
        assert_eq!(order.len(), labels.len());
        let pos = order.iter().filter(|&&i| labels[i as usize] == 1).count() as f64;
        let n = order.len() as f64;
        // Binomial(n, 0.5): 4 standard deviations is about 1.1% here.
        let sd = (n * 0.25).sqrt();
        assert!((pos - n / 2.0).abs() < 4.0 * sd, "{pos} positives of {n}");
        // Within a class, draws are uniform: chi-square over 10 bins of positives.
        let positives: Vec<i64> = (0..labels.len() as i64)
            .filter(|&i| labels[i as usize] == 1)
            .collect();
        let mut bins = [0f64; 10];
        for &i in &order {
            if labels[i as usize] == 1 {
                bins[positives.binary_search(&i).unwrap() * 10 / positives.len()] += 1.0;
            }
        }
        let expect = pos / 10.0;
        let chi2: f64 = bins.iter().map(|b| (b - expect).powi(2) / expect).sum();
        assert!(
            chi2 < 27.9,
            "chi-square {chi2} over 9 degrees of freedom (p < 0.001)"
        );
        assert_eq!(
            order,
            epoch_order(Sampling::Weighted, &labels, 3, 0),
            "deterministic"
        );
        assert_ne!(
            order,
            epoch_order(Sampling::Weighted, &labels, 3, 1),
            "new draw each epoch"
        );
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let labels = vec![0u8; 1000];
        let mut order = epoch_order(Sampling::Shuffle, &labels, 1, 2);
        assert_ne!(order, (0..1000).collect::<Vec<_>>());
        order.sort();
        assert_eq!(order, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn weighted_sampling_balances_ten_classes() {
        // Class c has 100 * (c + 1) patches; class 3 has none in this split.
        let labels: Vec<u8> = (0..10u8)
            .filter(|&c| c != 3)
            .flat_map(|c| std::iter::repeat_n(c, 100 * (c as usize + 1)))
            .collect();
        let order = epoch_order(Sampling::Weighted, &labels, 5, 0);
        assert_eq!(order.len(), labels.len());
        let mut counts = [0f64; 10];
        for &i in &order {
            counts[labels[i as usize] as usize] += 1.0;
        }
        assert_eq!(counts[3], 0.0, "an absent class is never drawn");
        let expect = order.len() as f64 / 9.0;
        let chi2: f64 = (0..10)
            .filter(|&c| c != 3)
            .map(|c| (counts[c] - expect).powi(2) / expect)
            .sum();
        assert!(
            chi2 < 26.1,
            "chi-square {chi2} over 8 degrees of freedom (p < 0.001): {counts:?}"
        );
    }
}
