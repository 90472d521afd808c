//! Scale: a slide's microns per pixel (OpenSlide's properties, else the TIFF's resolution
//! tags, else the user's `--slide-mpp`), and the pyramid level whose pixels are at or just
//! finer than the model's training scale.

use super::openslide::{Level, Slide, SlideError};
use super::tiff;

/// Microns per level-0 pixel, and where they were read.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub mpp_x: f64,
    pub mpp_y: f64,
    /// `openslide.mpp-x/mpp-y`, `TIFF resolution tags` or `--slide-mpp`.
    pub source: String,
}

impl Resolution {
    /// The mean of both axes (they differ only on unusual scanners).
    pub fn mpp(&self) -> f64 {
        (self.mpp_x + self.mpp_y) / 2.0
    }
}

/// A positive finite number, or `None`.
fn positive(text: Option<String>) -> Option<f64> {
    text?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// The resolution of `slide`: `given` (the user's `--slide-mpp`) wins; else OpenSlide's
/// `openslide.mpp-x`/`openslide.mpp-y`; else, for a TIFF, its XResolution/YResolution tags,
/// which OpenSlide 3.4 does not report for generic tiled TIFFs. None of these is an error
/// that says what was looked for.
pub fn resolution(slide: &Slide, given: Option<f64>) -> Result<Resolution, SlideError> {
    if let Some(mpp) = given {
        return Ok(Resolution {
            mpp_x: mpp,
            mpp_y: mpp,
            source: "--slide-mpp".into(),
        });
    }
    let x = positive(slide.property("openslide.mpp-x"));
    let y = positive(slide.property("openslide.mpp-y"));
    if let (Some(mpp_x), Some(mpp_y)) = (x, y) {
        return Ok(Resolution {
            mpp_x,
            mpp_y,
            source: "openslide.mpp-x/mpp-y".into(),
        });
    }
    let invalid = |what: String| SlideError::Invalid {
        path: slide.path().to_path_buf(),
        what,
    };
    let mut looked = "OpenSlide reports no openslide.mpp-x/openslide.mpp-y".to_string();
    if slide.property("tiff.ResolutionUnit").is_some() || is_tiff(slide.path()) {
        match tiff::resolution_mpp(slide.path()) {
            Ok(Some((mpp_x, mpp_y))) => {
                return Ok(Resolution {
                    mpp_x,
                    mpp_y,
                    source: "TIFF resolution tags".into(),
                });
            }
            Ok(None) => looked
                .push_str(" and its TIFF has no XResolution/YResolution in centimeters or inches"),
            Err(e) => looked.push_str(&format!(" and its TIFF tags cannot be read ({e})")),
        }
    }
    Err(invalid(format!(
        "no resolution: {looked}; give --slide-mpp MICRONS_PER_PIXEL if you know it"
    )))
}

fn is_tiff(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && matches!(tiff::sniff(&head), tiff::Kind::Tiff | tiff::Kind::BigTiff)
}

/// Where a slide's patches are read from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// The pyramid level read.
    pub level: usize,
    /// Its microns per pixel.
    pub level_mpp: f64,
    /// Level-0 pixels per model pixel, per axis.
    pub zoom0: (f64, f64),
}

/// The level whose pixels are at or just finer than `target_mpp` (a coarser one would lose
/// detail the model was trained with; a much finer one reads pixels only to average them
/// away), given level 0's `res`. A slide coarser than the target even at level 0 is read at
/// level 0 and upsampled.
pub fn plan(levels: &[Level], res: &Resolution, target_mpp: f64) -> Plan {
    let mpp0 = res.mpp();
    // Scanners round their downsamples (4.0001): a level within 1% of the target is at it.
    let level = levels
        .iter()
        .enumerate()
        .filter(|(_, l)| mpp0 * l.downsample <= target_mpp * 1.01)
        .max_by(|a, b| a.1.downsample.total_cmp(&b.1.downsample))
        .map(|(i, _)| i)
        .unwrap_or(0);
    Plan {
        level,
        level_mpp: mpp0 * levels[level].downsample,
        zoom0: (target_mpp / res.mpp_x, target_mpp / res.mpp_y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(downsamples: &[f64]) -> Vec<Level> {
        downsamples
            .iter()
            .map(|&d| Level {
                width: (40_000.0 / d) as u64,
                height: (30_000.0 / d) as u64,
                downsample: d,
            })
            .collect()
    }

    fn res(mpp: f64) -> Resolution {
        Resolution {
            mpp_x: mpp,
            mpp_y: mpp,
            source: "test".into(),
        }
    }

    #[test]
    fn the_level_at_or_just_finer_than_the_target_is_read() {
        // A 40x scan (0.25 um/px) with 4x levels: level 2 is 4.0 um/px, exactly the IDC scale.
        let p = plan(&levels(&[1.0, 4.0, 16.0, 64.0]), &res(0.25), 4.0);
        assert_eq!((p.level, p.level_mpp), (2, 4.0));
        assert_eq!(p.zoom0, (16.0, 16.0));
        // 0.5 um/px: level 1 (2 um/px) is finer than 4, level 2 (8 um/px) coarser.
        let p = plan(&levels(&[1.0, 4.0, 16.0]), &res(0.5), 4.0);
        assert_eq!(p.level, 1);
        // Rounded downsamples still count as the target.
        let p = plan(&levels(&[1.0, 4.000_2, 16.001]), &res(0.25), 4.0);
        assert_eq!(p.level, 2);
        // A coarse scan is read at level 0.
        let p = plan(&levels(&[1.0, 2.0]), &res(8.0), 4.0);
        assert_eq!((p.level, p.zoom0), (0, (0.5, 0.5)));
    }
}
