//! Training augmentations as batched tensor ops on the training device: 90-degree rotations,
//! flips, colour reduction and contrast enhancement, each drawn per patch with its probability.

use crate::sampler::{below, unit};
use idc::spec::Augmentation;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// What to do to each patch of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Quarter turns (0 to 3), counter-clockwise.
    pub rot90: Vec<i64>,
    pub flip_lr: Vec<bool>,
    pub flip_tb: Vec<bool>,
    /// Saturation factor (1: unchanged, 0: grayscale).
    pub saturation: Vec<f32>,
    /// Contrast factor (1: unchanged).
    pub contrast: Vec<f32>,
}

impl Plan {
    /// Draws a plan for `n` patches.
    pub fn draw(spec: &Augmentation, n: usize, rng: &mut ChaCha8Rng) -> Self {
        let mut p = Plan::identity(n);
        for i in 0..n {
            if unit(rng) < spec.rotate90 {
                p.rot90[i] = 1 + below(rng, 3) as i64;
            }
            p.flip_lr[i] = unit(rng) < spec.flip_lr;
            p.flip_tb[i] = unit(rng) < spec.flip_tb;
            if unit(rng) < spec.color {
                p.saturation[i] =
                    (spec.min_saturation + (1.0 - spec.min_saturation) * unit(rng)) as f32;
            }
            if unit(rng) < spec.contrast {
                p.contrast[i] = (1.0 + (spec.max_contrast - 1.0) * unit(rng)) as f32;
            }
        }
        p
    }

    /// Leaves `n` patches unchanged.
    pub fn identity(n: usize) -> Self {
        Self {
            rot90: vec![0; n],
            flip_lr: vec![false; n],
            flip_tb: vec![false; n],
            saturation: vec![1.0; n],
            contrast: vec![1.0; n],
        }
    }

    /// Applies the plan to float patches in [0, 1], `[N, 3, H, W]` with H == W.
    pub fn apply(&self, xs: &Tensor) -> Tensor {
        let device = xs.device();
        let mask = |v: &[bool]| Tensor::from_slice(v).to_device(device).view([-1, 1, 1, 1]);
        let mut x = xs.shallow_clone();
        if self.flip_lr.iter().any(|&b| b) {
            x = x.flip([3]).where_self(&mask(&self.flip_lr), &x);
        }
        if self.flip_tb.iter().any(|&b| b) {
            x = x.flip([2]).where_self(&mask(&self.flip_tb), &x);
        }
        for k in 1..4 {
            let sel: Vec<bool> = self.rot90.iter().map(|&r| r == k).collect();
            if sel.iter().any(|&b| b) {
                x = x.rot90(k, [2, 3]).where_self(&mask(&sel), &x);
            }
        }
        if self.saturation.iter().any(|&s| s != 1.0) {
            let s = factor(&self.saturation, device);
            let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
                .to_device(device)
                .view([1, 3, 1, 1]);
            let gray = (&x * w).sum_dim_intlist(1, true, Kind::Float);
            x = &gray + (&x - &gray) * s;
        }
        if self.contrast.iter().any(|&c| c != 1.0) {
            let c = factor(&self.contrast, device);
            let mean = x.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
            x = (&mean + (&x - &mean) * c).clamp(0.0, 1.0);
        }
        x
    }
}

fn factor(v: &[f32], device: Device) -> Tensor {
    Tensor::from_slice(v).to_device(device).view([-1, 1, 1, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One 1-channel-looking patch (all three channels equal to 0..4) of 2x2, then a second one.
    fn batch() -> Tensor {
        let v: Vec<f32> = (0..2 * 3 * 4).map(|i| ((i % 4) as f32) / 4.0).collect();
        Tensor::from_slice(&v).view([2, 3, 2, 2])
    }

    fn values(t: &Tensor, n: usize) -> Vec<f32> {
        Vec::<f32>::try_from(t.get(n as i64).get(0).flatten(0, -1)).unwrap()
    }

    #[test]
    fn flips_and_rotations_are_exact() {
        // patch [[0, .25], [.5, .75]]
        let x = batch();
        let mut p = Plan::identity(2);
        p.flip_lr[0] = true;
        let y = p.apply(&x);
        assert_eq!(values(&y, 0), [0.25, 0.0, 0.75, 0.5]);
        assert_eq!(
            values(&y, 1),
            [0.0, 0.25, 0.5, 0.75],
            "second patch untouched"
        );
        let mut p = Plan::identity(2);
        p.flip_tb[1] = true;
        assert_eq!(values(&p.apply(&x), 1), [0.5, 0.75, 0.0, 0.25]);
        let mut p = Plan::identity(2);
        p.rot90 = vec![1, 2];
        let y = p.apply(&x);
        // A quarter turn counter-clockwise of [[a, b], [c, d]] is [[b, d], [a, c]].
        assert_eq!(values(&y, 0), [0.25, 0.75, 0.0, 0.5]);
        assert_eq!(values(&y, 1), [0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn colour_and_contrast_are_exact() {
        let x = Tensor::from_slice(&[1.0f32, 0.0, 0.0]).view([1, 3, 1, 1]);
        let mut p = Plan::identity(1);
        p.saturation[0] = 0.0;
        let gray = Vec::<f32>::try_from(p.apply(&x).flatten(0, -1)).unwrap();
        assert!(gray.iter().all(|v| (v - 0.299).abs() < 1e-6), "{gray:?}");
        p.saturation[0] = 0.5;
        let half = Vec::<f32>::try_from(p.apply(&x).flatten(0, -1)).unwrap();
        assert!((half[0] - (0.299 + 0.5 * 0.701)).abs() < 1e-6 && (half[1] - 0.1495).abs() < 1e-6);

        let x = Tensor::from_slice(&[0.2f32, 0.4, 0.6, 0.8]).view([1, 1, 2, 2]);
        let mut p = Plan::identity(1);
        p.contrast[0] = 2.0;
        let y = Vec::<f32>::try_from(p.apply(&x).flatten(0, -1)).unwrap();
        let want = [0.0, 0.3, 0.7, 1.0]; // mean 0.5, doubled distance, clamped
        assert!(
            y.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{y:?}"
        );
    }

    #[test]
    fn draws_follow_the_probabilities() {
        let spec = Augmentation {
            rotate90: 1.0,
            flip_lr: 0.0,
            flip_tb: 0.5,
            color: 0.0,
            contrast: 1.0,
            ..Default::default()
        };
        let p = Plan::draw(&spec, 4000, &mut crate::sampler::rng_for(1, 2, 0, 0));
        assert!(p.rot90.iter().all(|&r| (1..=3).contains(&r)));
        assert!(p.flip_lr.iter().all(|&b| !b));
        let tb = p.flip_tb.iter().filter(|&&b| b).count();
        assert!((1800..2200).contains(&tb), "{tb}");
        assert!(p.saturation.iter().all(|&s| s == 1.0));
        assert!(p.contrast.iter().all(|&c| (1.0..=1.5).contains(&c)));
        assert!(
            Plan::draw(
                &Augmentation::none(),
                10,
                &mut crate::sampler::rng_for(1, 2, 0, 0)
            ) == Plan::identity(10)
        );
    }
}
