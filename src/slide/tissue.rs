//! Which parts of a slide are tissue: a mask over its thumbnail, from colour saturation.
//!
//! Stained tissue is coloured and the glass around it is near white or grey, so a pixel is
//! tissue when its HSV saturation is above a threshold that Otsu's method picks from the
//! thumbnail's own saturations, with a floor so that a slide of glass alone keeps an empty mask.
//! Very dark pixels (pen marks, black borders, scanner padding) are never tissue. Specks are then
//! removed and small holes filled, both sized as fractions of the thumbnail.

use super::{Image, Mask};

/// How [`tissue_mask`] decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TissueOptions {
    /// The lowest saturation threshold (0..1): Otsu's threshold is raised to it, so a near-white
    /// slide does not split its faint noise into "tissue".
    pub min_saturation: f64,
    /// Tissue components (8-connected) smaller than this fraction of the thumbnail are removed.
    pub min_area_fraction: f64,
    /// Holes in the tissue (4-connected background not touching the border) smaller than this
    /// fraction of the thumbnail are filled.
    pub max_hole_fraction: f64,
}

impl Default for TissueOptions {
    fn default() -> Self {
        TissueOptions {
            min_saturation: 0.07,
            min_area_fraction: 0.0005,
            max_hole_fraction: 0.0005,
        }
    }
}

/// Below this HSV value (brightness, 0..1) a pixel is too dark to be tissue, however saturated.
const MIN_VALUE: f64 = 0.08;

/// The tissue of `thumb`: pixels whose saturation is above max(Otsu's threshold, the floor) and
/// that are not very dark, without components smaller than `o.min_area_fraction` of the image
/// and with holes smaller than `o.max_hole_fraction` filled.
pub fn tissue_mask(thumb: &Image, o: &TissueOptions) -> Mask {
    let (w, h) = (thumb.width, thumb.height);
    let n = w as usize * h as usize;
    // Saturation bins (round(s * 255)), None for dark pixels, which stay out of the histogram
    // so that black borders do not pull the threshold.
    let bins: Vec<Option<u8>> = (0..n)
        .map(|i| {
            let p = thumb.rgb.get(3 * i..3 * i + 3).unwrap_or(&[255, 255, 255]);
            let (max, min) = (p.iter().max().copied()?, p.iter().min().copied()?);
            if (max as f64) / 255.0 < MIN_VALUE {
                return None;
            }
            let s = (max - min) as f64 / max as f64;
            Some((s * 255.0).round() as u8)
        })
        .collect();
    let mut hist = [0u64; 256];
    for b in bins.iter().flatten() {
        hist[*b as usize] += 1;
    }
    let t = otsu(&hist);
    let bits = bins
        .iter()
        .map(|b| b.is_some_and(|b| b as usize > t && b as f64 / 255.0 > o.min_saturation))
        .collect();
    let mut mask = Mask {
        width: w,
        height: h,
        bits,
    };
    let total = n as f64;
    // Specks: tissue components too small; then holes: enclosed background too small.
    let speck = |size: usize, _border: bool| (size as f64) < o.min_area_fraction * total;
    flip_components(&mut mask, true, Connectivity::Eight, speck);
    let hole = |size: usize, border: bool| !border && (size as f64) < o.max_hole_fraction * total;
    flip_components(&mut mask, false, Connectivity::Four, hole);
    mask
}

/// Otsu's threshold of a 256-bin histogram: the bin `t` for which splitting it into bins
/// `0..=t` and `t+1..` gives the largest between-class variance. Where several splits tie (an
/// empty gap between two modes), the middle of them. When no split has both classes non-empty
/// (one bin used, or none), the highest used bin (0 for an empty histogram): nothing above it.
pub fn otsu(hist: &[u64; 256]) -> usize {
    let total: f64 = hist.iter().map(|&c| c as f64).sum();
    let sum: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let (mut w0, mut sum0) = (0.0, 0.0);
    let mut best = (0.0f64, None::<(usize, usize)>);
    for (t, &c) in hist.iter().enumerate().take(255) {
        w0 += c as f64;
        sum0 += t as f64 * c as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let d = sum0 / w0 - (sum - sum0) / w1;
        let between = w0 * w1 * d * d;
        match best.1 {
            Some((first, _)) if between == best.0 => best.1 = Some((first, t)),
            _ if between > best.0 => best = (between, Some((t, t))),
            _ => {}
        }
    }
    match best.1 {
        Some((first, last)) => (first + last) / 2,
        None => hist.iter().rposition(|&c| c > 0).unwrap_or(0),
    }
}

/// Which neighbours join pixels into one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connectivity {
    Four,
    Eight,
}

/// Flips every component of pixels equal to `value` (joined by `conn`) for which
/// `flip(size, touches_border)` holds. Iterative flood fill: thumbnails run to 4096 x 4096.
fn flip_components(
    mask: &mut Mask,
    value: bool,
    conn: Connectivity,
    flip: impl Fn(usize, bool) -> bool,
) {
    let (w, h) = (mask.width as usize, mask.height as usize);
    let n = (w * h).min(mask.bits.len());
    let mut seen = vec![false; n];
    let (mut stack, mut comp) = (Vec::new(), Vec::new());
    for start in 0..n {
        if seen[start] || mask.bits[start] != value {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        comp.clear();
        let mut border = false;
        while let Some(i) = stack.pop() {
            comp.push(i);
            let (x, y) = (i % w, i / w);
            border |= x == 0 || y == 0 || x + 1 == w || y + 1 == h;
            for &(dx, dy) in neighbours(conn) {
                let (Some(nx), Some(ny)) = (x.checked_add_signed(dx), y.checked_add_signed(dy))
                else {
                    continue;
                };
                let j = ny * w + nx;
                if nx < w && ny < h && j < n && !seen[j] && mask.bits[j] == value {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        if flip(comp.len(), border) {
            for &i in &comp {
                mask.bits[i] = !value;
            }
        }
    }
}

/// The offsets of a pixel's neighbours.
fn neighbours(conn: Connectivity) -> &'static [(isize, isize)] {
    const FOUR: [(isize, isize); 4] = [(1, 0), (-1, 0), (0, 1), (0, -1)];
    const EIGHT: [(isize, isize); 8] = [
        (1, 0),
        (-1, 0),
        (0, 1),
        (0, -1),
        (1, 1),
        (1, -1),
        (-1, 1),
        (-1, -1),
    ];
    match conn {
        Connectivity::Four => &FOUR,
        Connectivity::Eight => &EIGHT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLASS: [u8; 3] = [240, 240, 238];
    const PINK: [u8; 3] = [220, 120, 170];

    fn filled(w: u32, h: u32, rgb: [u8; 3]) -> Image {
        let mut im = Image::new(w, h);
        for y in 0..h {
            for x in 0..w {
                im.set_pixel(x, y, rgb);
            }
        }
        im
    }

    #[test]
    fn the_blob_is_the_tissue() {
        // 120 x 100: holes and specks under 0.0005 * 12000 = 6 pixels go.
        let (w, h) = (120u32, 100u32);
        let mut im = filled(w, h, GLASS);
        let in_disk = |x: u32, y: u32| {
            let (dx, dy) = (x as f64 - 60.0, y as f64 - 50.0);
            dx * dx + dy * dy <= 30.0 * 30.0
        };
        let small_hole = |x: u32, y: u32| (50..52).contains(&x) && (45..47).contains(&y);
        let big_hole = |x: u32, y: u32| (65..69).contains(&x) && (50..54).contains(&y);
        let mut want = Mask::new(w, h);
        for y in 0..h {
            for x in 0..w {
                if in_disk(x, y) && !small_hole(x, y) && !big_hole(x, y) {
                    im.set_pixel(x, y, PINK);
                }
                want.bits[(y * w + x) as usize] = in_disk(x, y) && !big_hole(x, y);
            }
        }
        // One-pixel specks, and a dark pen stroke: saturated but too dark to be tissue.
        for (x, y) in [(5, 5), (110, 90), (100, 10)] {
            im.set_pixel(x, y, PINK);
        }
        for y in 10..40 {
            for x in 2..6 {
                im.set_pixel(x, y, [10, 2, 18]);
            }
        }
        let mask = tissue_mask(&im, &TissueOptions::default());
        assert_eq!(mask.width, w);
        assert_eq!(mask.count(), want.count());
        assert!(mask == want, "mask differs from the blob");
    }

    #[test]
    fn glass_alone_is_no_tissue() {
        assert_eq!(
            tissue_mask(&filled(64, 48, [255; 3]), &TissueOptions::default()).count(),
            0
        );
        // Faint noise splits under Otsu, but stays under the floor.
        let mut im = filled(64, 48, GLASS);
        for i in (0..64 * 48).step_by(3) {
            im.set_pixel(i % 64, i / 64, [246, 240, 236]);
        }
        assert_eq!(tissue_mask(&im, &TissueOptions::default()).count(), 0);
        assert_eq!(
            tissue_mask(&Image::new(0, 0), &TissueOptions::default()).count(),
            0
        );
        // Black is not tissue either.
        assert_eq!(
            tissue_mask(&filled(8, 8, [0; 3]), &TissueOptions::default()).count(),
            0
        );
    }

    #[test]
    fn large_tissue_fills_without_recursion() {
        // Tissue covering a megapixel, cut in two by a row of glass: one fill each.
        let (w, h) = (1000u32, 1000u32);
        let mut im = filled(w, h, PINK);
        for x in 0..w {
            im.set_pixel(x, 500, GLASS);
        }
        for x in 0..100 {
            im.set_pixel(x, 0, GLASS);
        }
        let o = TissueOptions {
            min_area_fraction: 0.0,
            ..TissueOptions::default()
        };
        let mask = tissue_mask(&im, &o);
        assert_eq!(mask.count(), (w * h - w - 100) as u64);
    }

    #[test]
    fn otsu_splits_between_modes() {
        let mut hist = [0u64; 256];
        for (i, h) in hist.iter_mut().enumerate() {
            let g = |m: f64, s: f64| (1000.0 * (-((i as f64 - m) / s).powi(2) / 2.0).exp()) as u64;
            *h = g(30.0, 8.0) + g(150.0, 15.0);
        }
        let t = otsu(&hist);
        assert!((50..120).contains(&t), "{t}");
        // Two spikes: the middle of the empty gap between them.
        let mut two = [0u64; 256];
        two[10] = 5;
        two[20] = 5;
        assert_eq!(otsu(&two), 14);
        // No split: nothing lies above the answer.
        let mut one = [0u64; 256];
        one[7] = 3;
        assert_eq!(otsu(&one), 7);
        assert_eq!(otsu(&[0; 256]), 0);
        let mut top = [0u64; 256];
        top[255] = 1;
        top[0] = 1;
        assert_eq!(otsu(&top), 127);
    }
}
