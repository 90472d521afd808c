//! Training augmentations as batched tensor ops on the training device, drawn there too: 90-degree
//! rotations and flips (one gather through a table of the 16 flip/rotation combinations), random
//! crops from a zero-padded image (one more gather), colour reduction and contrast enhancement,
//! each drawn per image with its probability. Nothing is read back or uploaded per batch; draws
//! come from libtorch's generator, which the caller seeds.

use idc::spec::Augmentation;
use tch::{Device, Kind, Tensor};

/// The spatial transform of code `a + 2b + 4k`: flip left-right if `a`, then top-bottom if `b`,
/// then `k` quarter turns counter-clockwise.
const CODES: i64 = 16;

/// Augments batches of `[N, 3, side, side]` uint8 patches on one device.
pub struct Augmenter {
    spec: Augmentation,
    /// `[16, side * side]`: for each code, the source pixel of every output pixel.
    table: Option<Tensor>,
    /// Cumulative probabilities of the 16 codes.
    cdf: Option<Tensor>,
    /// `[2, 1]`: per factor (saturation, contrast), `-1/p` and the factor's range.
    slope: Tensor,
    range: Tensor,
    gray: Tensor,
    /// Luminance weights apply to RGB only.
    rgb: bool,
}

/// What to do to each patch of a batch, on the device.
pub struct Draw {
    /// `[N]` int64 spatial codes (None: no flip or rotation is enabled).
    pub code: Option<Tensor>,
    /// `[N, 1, 1, 1]` saturation factors (1: unchanged, 0: grayscale).
    pub saturation: Option<Tensor>,
    /// `[N, 1, 1, 1]` contrast factors (1: unchanged).
    pub contrast: Option<Tensor>,
    /// `[2, N]` int64 crop offsets (rows, columns) into the padded image, each in `0..=2p`.
    pub crop: Option<Tensor>,
}

impl Augmenter {
    /// For `[N, C, side, side]` images (`channels` C: colour reduction needs RGB).
    pub fn new(spec: &Augmentation, side: i64, channels: i64, device: Device) -> Self {
        let spatial = spec.rotate90 > 0.0 || spec.flip_lr > 0.0 || spec.flip_tb > 0.0;
        let (table, cdf) = if spatial {
            let table = Tensor::from_slice(&transform_table(side))
                .view([CODES, side * side])
                .to_device(device);
            let probs = code_probabilities(spec);
            let mut cdf: Vec<f32> = probs
                .iter()
                .scan(0.0, |acc, p| {
                    *acc += p;
                    Some(*acc as f32)
                })
                .collect();
            // From the last possible code on, above any draw: rounding can never pick a code of
            // probability 0.
            let last = probs.iter().rposition(|&p| p > 0.0).unwrap_or(0);
            cdf[last..].fill(2.0);
            (
                Some(table),
                Some(Tensor::from_slice(&cdf).to_device(device)),
            )
        } else {
            (None, None)
        };
        // Factor = 1 + range * relu(1 - u / p): 1 when u >= p, else uniform over the range.
        let slope = |p: f64| if p > 0.0 { -1.0 / p } else { 0.0 };
        let range = |p: f64, r: f64| if p > 0.0 { r } else { 0.0 };
        let row = |a: f64, b: f64| Tensor::from_slice(&[a as f32, b as f32]).view([2, 1]);
        Self {
            spec: spec.clone(),
            table,
            cdf,
            slope: row(slope(spec.color), slope(spec.contrast)).to_device(device),
            range: row(
                range(spec.color, spec.min_saturation - 1.0),
                range(spec.contrast, spec.max_contrast - 1.0),
            )
            .to_device(device),
            gray: Tensor::from_slice(&[0.299f32, 0.587, 0.114])
                .view([1, 3, 1, 1])
                .to_device(device),
            rgb: channels == 3,
        }
    }

    /// Draws what to do to `n` patches on `device`, from libtorch's generator.
    pub fn draw(&self, n: i64, device: Device) -> Draw {
        let colour = self.spec.color > 0.0 || self.spec.contrast > 0.0;
        // Drawn after the others, so that enabling crops leaves their draws as they were.
        let crop = |_: ()| {
            let p = self.spec.crop_padding as f64;
            (p > 0.0).then(|| {
                (Tensor::rand([2, n], (Kind::Float, device)) * (2.0 * p + 1.0))
                    .floor()
                    .clamp(0.0, 2.0 * p)
                    .to_kind(Kind::Int64)
            })
        };
        if self.cdf.is_none() && !colour {
            return Draw {
                code: None,
                saturation: None,
                contrast: None,
                crop: crop(()),
            };
        }
        // Rows, so that each draw is contiguous: spatial code, saturation, contrast.
        let u = Tensor::rand([3, n], (Kind::Float, device));
        let code = self.cdf.as_ref().map(|cdf| {
            u.get(0)
                .searchsorted(cdf, false, true, "right", None::<Tensor>)
        });
        let (saturation, contrast) = if colour {
            let f = (u.narrow(0, 1, 2) * &self.slope + 1.0).relu() * &self.range + 1.0;
            let col = |i: i64| f.get(i).view([-1, 1, 1, 1]);
            (
                (self.spec.color > 0.0).then(|| col(0)),
                (self.spec.contrast > 0.0).then(|| col(1)),
            )
        } else {
            (None, None)
        };
        Draw {
            code,
            saturation,
            contrast,
            crop: crop(()),
        }
    }

    /// Cuts each image of `xs` (`[N, C, H, W]`) out of itself padded by `crop_padding` zeros on
    /// every side, at its drawn offset.
    fn crop(&self, xs: &Tensor, offsets: &Tensor) -> Tensor {
        let p = self.spec.crop_padding as i64;
        let (n, c, h, w) = xs.size4().expect("[N, C, H, W] images");
        let wide = w + 2 * p;
        let padded = xs
            .constant_pad_nd([p, p, p, p])
            .view([n, c, (h + 2 * p) * wide]);
        let opts = (Kind::Int64, xs.device());
        let rows = Tensor::arange(h, opts).view([1, h, 1]) + offsets.get(0).view([n, 1, 1]);
        let cols = Tensor::arange(w, opts).view([1, 1, w]) + offsets.get(1).view([n, 1, 1]);
        let src = (rows * wide + cols)
            .view([n, 1, h * w])
            .expand([n, c, h * w], false);
        padded.gather(2, &src, false).view([n, c, h, w])
    }

    /// Applies `d` to uint8 images `[N, C, H, W]`; returns float images in [0, 1].
    pub fn apply(&self, xs: &Tensor, d: &Draw) -> Tensor {
        let mut x = match (&d.code, &self.table) {
            (Some(code), Some(table)) => {
                let (n, c, h, w) = xs.size4().expect("[N, C, H, W] patches");
                let src = table
                    .index_select(0, code)
                    .unsqueeze(1)
                    .expand([n, c, h * w], false);
                xs.view([n, c, h * w])
                    .gather(2, &src, false)
                    .view([n, c, h, w])
            }
            _ => xs.shallow_clone(),
        };
        if let Some(offsets) = &d.crop {
            x = self.crop(&x, offsets);
        }
        let mut x = x.to_kind(Kind::Float) / 255.0;
        if let Some(s) = &d.saturation
            && self.rgb
        {
            let gray = (&x * &self.gray).sum_dim_intlist(1, true, Kind::Float);
            x = &gray + (&x - &gray) * s;
        }
        if let Some(c) = &d.contrast {
            let mean = x.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
            x = (&mean + (&x - &mean) * c).clamp(0.0, 1.0);
        }
        x
    }
}

/// The probability of each spatial code under `spec` (flips and rotation drawn independently).
fn code_probabilities(spec: &Augmentation) -> [f64; CODES as usize] {
    let mut p = [0.0; CODES as usize];
    for (code, p) in p.iter_mut().enumerate() {
        let (a, b, k) = (code & 1, (code >> 1) & 1, code >> 2);
        let pa = if a == 1 {
            spec.flip_lr
        } else {
            1.0 - spec.flip_lr
        };
        let pb = if b == 1 {
            spec.flip_tb
        } else {
            1.0 - spec.flip_tb
        };
        let pk = if k == 0 {
            1.0 - spec.rotate90
        } else {
            spec.rotate90 / 3.0
        };
        *p = pa * pb * pk;
    }
    p
}

/// For each code, the flat source index of every output pixel of a `side x side` patch.
fn transform_table(side: i64) -> Vec<i64> {
    let last = side - 1;
    let mut t = Vec::with_capacity((CODES * side * side) as usize);
    for code in 0..CODES {
        let (a, b, k) = (code & 1, (code >> 1) & 1, code >> 2);
        for i in 0..side {
            for j in 0..side {
                // Walk back from the output pixel through the ops, last one first.
                let (mut r, mut c) = (i, j);
                for _ in 0..k {
                    // A counter-clockwise quarter turn: out[r][c] = in[c][last - r].
                    (r, c) = (c, last - r);
                }
                if b == 1 {
                    r = last - r;
                }
                if a == 1 {
                    c = last - c;
                }
                t.push(r * side + c);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One 1-channel-looking patch (all three channels equal to 0..4) of 2x2, then a second one.
    fn batch() -> Tensor {
        let v: Vec<u8> = (0..2 * 3 * 4).map(|i| (i % 4) as u8 * 64).collect();
        Tensor::from_slice(&v).view([2, 3, 2, 2])
    }

    fn values(t: &Tensor, n: usize) -> Vec<f32> {
        // Back to quarters: the patches hold 0, 64, 128 and 192.
        let q = (t.get(n as i64).get(0).flatten(0, -1) * 255.0 / 64.0).round();
        Vec::<f32>::try_from(q).unwrap()
    }

    fn with_codes(codes: &[i64]) -> Draw {
        Draw {
            code: Some(Tensor::from_slice(codes)),
            saturation: None,
            contrast: None,
            crop: None,
        }
    }

    fn spatial() -> Augmenter {
        Augmenter::new(&Augmentation::default(), 2, 3, Device::Cpu)
    }

    #[test]
    fn flips_and_rotations_are_exact() {
        // patch [[0, 1], [2, 3]] (in quarters)
        let x = batch();
        let a = spatial();
        let y = a.apply(&x, &with_codes(&[1, 0]));
        assert_eq!(values(&y, 0), [1.0, 0.0, 3.0, 2.0], "flip left-right");
        assert_eq!(
            values(&y, 1),
            [0.0, 1.0, 2.0, 3.0],
            "second patch untouched"
        );
        assert_eq!(
            values(&a.apply(&x, &with_codes(&[0, 2])), 1),
            [2.0, 3.0, 0.0, 1.0],
            "flip top-bottom"
        );
        let y = a.apply(&x, &with_codes(&[4, 8]));
        // A quarter turn counter-clockwise of [[a, b], [c, d]] is [[b, d], [a, c]].
        assert_eq!(values(&y, 0), [1.0, 3.0, 0.0, 2.0]);
        assert_eq!(values(&y, 1), [3.0, 2.0, 1.0, 0.0]);
        // Flip left-right, then a quarter turn: [[1, 0], [3, 2]] -> [[0, 2], [1, 3]].
        assert_eq!(
            values(&a.apply(&x, &with_codes(&[5, 0])), 0),
            [0.0, 2.0, 1.0, 3.0]
        );
    }

    #[test]
    fn the_table_matches_torch_flips_and_rot90() {
        let x = Tensor::arange(3 * 5 * 5, (Kind::Uint8, Device::Cpu)).view([1, 3, 5, 5]);
        let a = Augmenter::new(&Augmentation::default(), 5, 3, Device::Cpu);
        for code in 0..CODES {
            let mut want = x.shallow_clone();
            if code & 1 == 1 {
                want = want.flip([3]);
            }
            if (code >> 1) & 1 == 1 {
                want = want.flip([2]);
            }
            want = want.rot90(code >> 2, [2, 3]).to_kind(Kind::Float) / 255.0;
            let got = a.apply(&x, &with_codes(&[code]));
            assert!(got.equal(&want), "code {code}");
        }
    }

    #[test]
    fn colour_and_contrast_are_exact() {
        let a = Augmenter::new(&Augmentation::default(), 1, 3, Device::Cpu);
        let x = Tensor::from_slice(&[255u8, 0, 0]).view([1, 3, 1, 1]);
        let factor = |f: f32| Some(Tensor::from_slice(&[f]).view([1, 1, 1, 1]));
        let draw = |s, c| Draw {
            crop: None,
            code: None,
            saturation: s,
            contrast: c,
        };
        let gray =
            Vec::<f32>::try_from(a.apply(&x, &draw(factor(0.0), None)).flatten(0, -1)).unwrap();
        assert!(gray.iter().all(|v| (v - 0.299).abs() < 1e-6), "{gray:?}");
        let half =
            Vec::<f32>::try_from(a.apply(&x, &draw(factor(0.5), None)).flatten(0, -1)).unwrap();
        assert!((half[0] - (0.299 + 0.5 * 0.701)).abs() < 1e-6 && (half[1] - 0.1495).abs() < 1e-6);

        let a = Augmenter::new(&Augmentation::default(), 2, 3, Device::Cpu);
        let x = Tensor::from_slice(&[51u8, 102, 153, 204]).view([1, 1, 2, 2]);
        let y = Vec::<f32>::try_from(a.apply(&x, &draw(None, factor(2.0))).flatten(0, -1)).unwrap();
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
        tch::manual_seed(1);
        let a = Augmenter::new(&spec, 50, 3, Device::Cpu);
        let d = a.draw(4000, Device::Cpu);
        let code: Vec<i64> = Vec::try_from(d.code.unwrap()).unwrap();
        assert!(
            code.iter().all(|c| (1..=3).contains(&(c >> 2))),
            "always rotated"
        );
        assert!(code.iter().all(|c| c & 1 == 0), "never flipped left-right");
        let tb = code.iter().filter(|&&c| (c >> 1) & 1 == 1).count();
        assert!((1800..2200).contains(&tb), "{tb}");
        for k in 1..=3 {
            let n = code.iter().filter(|&&c| c >> 2 == k).count();
            assert!((1180..1490).contains(&n), "{k} quarter turns: {n}");
        }
        assert!(d.saturation.is_none());
        let c: Vec<f32> = Vec::try_from(d.contrast.unwrap().flatten(0, -1)).unwrap();
        assert!(c.iter().all(|c| (1.0..=1.5).contains(c)));
        let mean = c.iter().sum::<f32>() / c.len() as f32;
        assert!(
            (mean - 1.25).abs() < 0.02,
            "uniform over [1, 1.5]: mean {mean}"
        );

        // Half the patches keep their colour; the others are uniform over [min_saturation, 1].
        let spec = Augmentation {
            color: 0.5,
            ..Augmentation::none()
        };
        let d = Augmenter::new(&spec, 50, 3, Device::Cpu).draw(4000, Device::Cpu);
        assert!(d.code.is_none() && d.contrast.is_none());
        let s: Vec<f32> = Vec::try_from(d.saturation.unwrap().flatten(0, -1)).unwrap();
        let kept = s.iter().filter(|&&s| s == 1.0).count();
        assert!((1800..2200).contains(&kept), "{kept}");
        assert!(s.iter().all(|s| (0.5..=1.0).contains(s)));

        let none = Augmenter::new(&Augmentation::none(), 50, 3, Device::Cpu).draw(10, Device::Cpu);
        assert!(none.code.is_none() && none.saturation.is_none() && none.contrast.is_none());
    }

    #[test]
    fn crops_shift_the_image_inside_zero_padding() {
        // One gray 3x3 image 1..9 (as uint8), padding 1: offsets (0, 0) shift it down-right by one.
        let spec = Augmentation {
            crop_padding: 1,
            ..Augmentation::none()
        };
        let a = Augmenter::new(&spec, 3, 1, Device::Cpu);
        let x = Tensor::from_slice(&[1u8, 2, 3, 4, 5, 6, 7, 8, 9]).view([1, 1, 3, 3]);
        let at = |dy: i64, dx: i64| {
            let d = Draw {
                code: None,
                saturation: None,
                contrast: None,
                crop: Some(Tensor::from_slice(&[dy, dx]).view([2, 1])),
            };
            let y = (a.apply(&x, &d) * 255.0).round().flatten(0, -1);
            Vec::<f32>::try_from(y).unwrap()
        };
        assert_eq!(
            at(1, 1),
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
            "centred"
        );
        assert_eq!(at(0, 0), [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 5.0]);
        assert_eq!(at(2, 1), [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 0.0, 0.0]);
        // Drawn offsets stay within 0..=2p and cover it.
        tch::manual_seed(3);
        let d = a.draw(2000, Device::Cpu);
        let o = d.crop.unwrap();
        assert_eq!(o.size(), [2, 2000]);
        assert_eq!((o.min().int64_value(&[]), o.max().int64_value(&[])), (0, 2));
    }
}
