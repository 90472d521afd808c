//! The patch grid over a slide: where each patch lies at level 0, which patches hold enough
//! tissue to be scored, and the resampling of a read region to the model's patch size.

use super::Mask;

/// Patches of `patch` model pixels every `stride` model pixels over level 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    pub cols: u32,
    pub rows: u32,
    /// Level-0 pixels between patch origins, per axis.
    pub step0: (f64, f64),
    /// Level-0 pixels per patch side, per axis.
    pub size0: (f64, f64),
    /// Level 0's size.
    pub level0: (u64, u64),
}

impl Grid {
    /// The grid of `patch`-pixel patches every `stride` pixels over a level 0 of `level0`
    /// pixels, `zoom0` level-0 pixels per model pixel: the patches that fit whole.
    pub fn new(level0: (u64, u64), patch: u32, stride: u32, zoom0: (f64, f64)) -> Grid {
        let size0 = (patch as f64 * zoom0.0, patch as f64 * zoom0.1);
        let step0 = (stride as f64 * zoom0.0, stride as f64 * zoom0.1);
        let fit = |len: u64, size: f64, step: f64| {
            if (len as f64) < size {
                0
            } else {
                // The tolerance keeps a patch that fits but for rounding.
                (((len as f64 - size) / step) + 1e-9).floor() as u32 + 1
            }
        };
        Grid {
            cols: fit(level0.0, size0.0, step0.0),
            rows: fit(level0.1, size0.1, step0.1),
            step0,
            size0,
            level0,
        }
    }

    /// The level-0 pixel of the top left of patch (`col`, `row`).
    pub fn origin0(&self, col: u32, row: u32) -> (u64, u64) {
        (
            (col as f64 * self.step0.0).round() as u64,
            (row as f64 * self.step0.1).round() as u64,
        )
    }

    /// The patches (`col`, `row`), row by row, at least `min_fraction` of whose area is
    /// tissue in `mask` (a mask of the whole level 0, at any size).
    pub fn tissue_patches(&self, mask: &Mask, min_fraction: f64) -> Vec<(u32, u32)> {
        let sx = mask.width as f64 / self.level0.0 as f64;
        let sy = mask.height as f64 / self.level0.1 as f64;
        let mut out = Vec::new();
        for row in 0..self.rows {
            for col in 0..self.cols {
                let (x, y) = (col as f64 * self.step0.0, row as f64 * self.step0.1);
                let f = mask.fraction_in(
                    x * sx,
                    y * sy,
                    (x + self.size0.0) * sx,
                    (y + self.size0.1) * sy,
                );
                if f >= min_fraction && f > 0.0 {
                    out.push((col, row));
                }
            }
        }
        out
    }
}

/// Source pixels and weights making each of `out` pixels from the span [`start`,
/// `start + len`) of a source `limit` pixels long: a box filter, exact for fractional spans.
fn taps(start: f64, len: f64, out: usize, limit: usize) -> Vec<Vec<(usize, f32)>> {
    let step = len / out as f64;
    (0..out)
        .map(|i| {
            let (a, b) = (start + i as f64 * step, start + (i + 1) as f64 * step);
            let mut t = Vec::new();
            let mut p = a.floor();
            while p < b {
                let w = (b.min(p + 1.0) - a.max(p)) / step;
                if w > 1e-9 {
                    let idx = (p.max(0.0) as usize).min(limit.saturating_sub(1));
                    t.push((idx, w as f32));
                }
                p += 1.0;
            }
            t
        })
        .collect()
}

/// Resamples the rectangle (`x`, `y`, `w`, `h`) (in pixels, fractional) of the RGB image `src`
/// (`src_w` x `src_h`) to `out_w` x `out_h` RGB pixels appended to `dst`, by area averaging.
/// A rectangle of exactly that many whole pixels is copied.
pub fn resample_rgb(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    (x, y, w, h): (f64, f64, f64, f64),
    (out_w, out_h): (usize, usize),
    dst: &mut Vec<u8>,
) {
    let whole = |v: f64| (v - v.round()).abs() < 1e-6;
    if whole(x) && whole(y) && (w - out_w as f64).abs() < 1e-6 && (h - out_h as f64).abs() < 1e-6 {
        let (x, y) = (x.round() as usize, y.round() as usize);
        if x + out_w <= src_w && y + out_h <= src_h {
            for row in y..y + out_h {
                dst.extend_from_slice(&src[(row * src_w + x) * 3..(row * src_w + x + out_w) * 3]);
            }
            return;
        }
    }
    let cols = taps(x, w, out_w, src_w);
    let rows = taps(y, h, out_h, src_h);
    let mut line = vec![0f32; out_w * 3];
    for r in &rows {
        line.iter_mut().for_each(|v| *v = 0.0);
        for &(sy, wy) in r {
            let src_row = &src[sy * src_w * 3..(sy + 1) * src_w * 3];
            for (i, c) in cols.iter().enumerate() {
                for &(sx, wx) in c {
                    let w = wx * wy;
                    for ch in 0..3 {
                        line[i * 3 + ch] += w * src_row[sx * 3 + ch] as f32;
                    }
                }
            }
        }
        dst.extend(line.iter().map(|v| v.round().clamp(0.0, 255.0) as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_holds_the_patches_that_fit_whole() {
        let g = Grid::new((1000, 430), 50, 50, (4.0, 4.0));
        assert_eq!((g.cols, g.rows), (5, 2));
        assert_eq!(g.origin0(4, 1), (800, 200));
        // Half-overlapping patches.
        let g = Grid::new((1000, 430), 50, 25, (4.0, 4.0));
        assert_eq!((g.cols, g.rows), (9, 3));
        assert_eq!(Grid::new((100, 100), 50, 50, (4.0, 4.0)).cols, 0);
    }

    #[test]
    fn patches_with_enough_tissue_are_kept() {
        // A 10x4 mask of a 1000x400 level 0: tissue in the left half.
        let mut bits = vec![false; 40];
        for r in 0..4 {
            for c in 0..5 {
                bits[r * 10 + c] = true;
            }
        }
        let mask = Mask {
            width: 10,
            height: 4,
            bits,
        };
        let g = Grid::new((1000, 400), 50, 50, (4.0, 4.0));
        let kept = g.tissue_patches(&mask, 0.5);
        // Columns 0 and 1 are tissue; column 2 (x 400..600) is half tissue.
        assert_eq!(kept, vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]);
        assert_eq!(g.tissue_patches(&mask, 0.6).len(), 4);
    }

    #[test]
    fn resampling_copies_whole_rects_and_averages_larger_ones() {
        let (w, h) = (4usize, 4usize);
        let src: Vec<u8> = (0..w * h).flat_map(|i| [i as u8 * 10; 3]).collect();
        let mut out = Vec::new();
        resample_rgb(&src, w, h, (1.0, 1.0, 2.0, 2.0), (2, 2), &mut out);
        assert_eq!(out, [50, 50, 50, 60, 60, 60, 90, 90, 90, 100, 100, 100]);
        out.clear();
        // 4x4 to 2x2: each output is the mean of a 2x2 block.
        resample_rgb(&src, w, h, (0.0, 0.0, 4.0, 4.0), (2, 2), &mut out);
        assert_eq!(out[0], 25); // (0 + 10 + 40 + 50) / 4
        assert_eq!(out[9], 125); // (100 + 110 + 140 + 150) / 4
        out.clear();
        // A fractional rect: half of pixel 0 and all of pixel 1 -> weights 1/3, 2/3.
        let row: Vec<u8> = [30u8, 60, 90].iter().flat_map(|&v| [v; 3]).collect();
        resample_rgb(&row, 3, 1, (0.5, 0.0, 1.5, 1.0), (1, 1), &mut out);
        assert_eq!(out, [50, 50, 50]);
    }
}
