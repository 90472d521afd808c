//! A synthetic IDC dataset in the exact Kaggle layout, for tests, demos and benchmarks.
//!
//! Patches look like H&E tissue: pink stroma, purple nuclei, white fat and lumen. IDC patches
//! carry dense clusters of small dark nuclei, a texture a CNN learns; their mean colour differs
//! only a little and per-patient stain and per-patch brightness vary, so a linear model on pixels
//! gets only part of the way. Some patches carry the other class's look (label noise), about 2.5
//! negatives come per positive, a few edge patches are smaller than 50x50, and corrupt files can be
//! planted. The output depends only on the options (the seed included).
//!
//! Each patient's patches fill a grid, as on a slide: patch `index` sits at x = 1 + 50 * (index %
//! cols), y = 1 + 50 * (index / cols). Its IDC patches form spatially coherent regions, as real
//! tumours do: one or two seeded region centres, each with a seeded size, elongation and smooth
//! boundary irregularity, and the patient's `positives` cells nearest to them (by that shape's
//! distance) are IDC. So slide maps show blobs, while each patient's IDC count, and with it the
//! class balance, is set by its IDC rate alone.

use super::KAGGLE_ROOT;
use super::decode::encode_png;
use super::name::PatchName;
use crate::PATCH_SIZE;
use crate::rng::unit;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub patients: u32,
    pub per_patient: u32,
    pub seed: u64,
    /// Number of corrupt files to plant (truncated, garbage, empty; in turn).
    pub corrupt: u32,
    /// Fraction of patches cut smaller than 50x50, as at a slide's edge.
    pub edge_fraction: f64,
    /// Fraction of patches drawn with the other class's look.
    pub label_noise: f64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            patients: 10,
            per_patient: 100,
            seed: 0,
            corrupt: 0,
            edge_fraction: 0.01,
            label_noise: 0.04,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SynthSummary {
    pub root: PathBuf,
    pub patients: u32,
    pub files: u64,
    /// `[no IDC, IDC]`
    pub class_counts: [u64; 2],
    pub edge_patches: u64,
    /// Paths (relative to `root`) of the planted corrupt files.
    pub corrupt: Vec<String>,
}

impl SynthOptions {
    /// Checks the options make a dataset: fractions within 0..=1, at least one patch.
    pub fn check(&self) -> Result<(), InvalidSynth> {
        if !(0.0..=1.0).contains(&self.edge_fraction) || !(0.0..=1.0).contains(&self.label_noise) {
            return Err(InvalidSynth(
                "--edge-fraction and --label-noise are fractions between 0 and 1",
            ));
        }
        if self.patients == 0 || self.per_patient == 0 {
            return Err(InvalidSynth(
                "--patients and --per-patient must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Options that make no dataset (named as `idcctl dataset synth`'s flags).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSynth(pub &'static str);

impl crate::exit::ProcessExitCode for InvalidSynth {
    /// Always a mistake in the input.
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        crate::exit::ExitCode::UserError
    }
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct SynthError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The id of the `i`-th synthetic patient (spread like the real ids, 8863 up).
pub fn patient_id(i: u32) -> u32 {
    8863 + i * 29
}

/// Writes the dataset under `out/IDC_regular_ps50_idx5/`.
pub fn generate(out: &Path, opts: &SynthOptions) -> Result<SynthSummary, SynthError> {
    let root = out.join(KAGGLE_ROOT);
    let per: Vec<SynthSummary> = (0..opts.patients)
        .into_par_iter()
        .map(|i| write_patient(&root, i, opts))
        .collect::<Result<_, _>>()?;
    let mut sum = SynthSummary {
        root: out.to_path_buf(),
        patients: opts.patients,
        ..Default::default()
    };
    for p in per {
        sum.files += p.files;
        sum.class_counts[0] += p.class_counts[0];
        sum.class_counts[1] += p.class_counts[1];
        sum.edge_patches += p.edge_patches;
    }
    // Corrupt files replace the last patches of patients in turn.
    for j in 0..opts.corrupt.min(opts.patients * opts.per_patient) {
        let patient = j % opts.patients;
        let index = opts.per_patient - 1 - j / opts.patients;
        let (name, _, _) = layout(patient, index, &plan(patient, opts), opts);
        let path = root.join(name.rel_path());
        let bytes = std::fs::read(&path).map_err(|source| SynthError {
            path: path.clone(),
            source,
        })?;
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0xC0FFEE ^ j as u64);
        let bad = match j % 3 {
            0 => bytes[..bytes.len() * 3 / 5].to_vec(),
            1 => (0..600).map(|_| rng.next_u32() as u8).collect(),
            _ => vec![],
        };
        std::fs::write(&path, bad).map_err(|source| SynthError {
            path: path.clone(),
            source,
        })?;
        sum.corrupt
            .push(format!("{KAGGLE_ROOT}/{}", name.rel_path()));
    }
    Ok(sum)
}

/// Where one patient's patches lie and which of them are IDC.
struct Plan {
    cols: u32,
    /// Per patch index: IDC or not.
    idc: Vec<bool>,
}

/// One IDC region of a patient's grid: a centre (in cells), a size, an elongation along a
/// direction, and low angular harmonics that make its boundary irregular but smooth.
struct Region {
    centre: (f64, f64),
    scale: f64,
    stretch: f64,
    angle: f64,
    harmonics: [(f64, f64); 3],
}

impl Region {
    fn draw(rng: &mut ChaCha8Rng, cols: u32, rows: u32, scale: f64) -> Region {
        Region {
            centre: (unit(rng) * cols as f64, unit(rng) * rows as f64),
            scale,
            stretch: 0.7 + 0.6 * unit(rng),
            angle: unit(rng) * std::f64::consts::PI,
            // Amplitudes sum below 0.5, so the radius stays positive: each region is star-shaped
            // around its centre, hence one blob.
            harmonics: [0.22, 0.14, 0.08].map(|a| (a * unit(rng), unit(rng) * 6.3)),
        }
    }

    /// The distance of cell centre `(x, y)` from the centre in units of this region's radius in
    /// that direction: cells below 1 are inside a region of unit size.
    fn distance(&self, x: f64, y: f64) -> f64 {
        let (dx, dy) = (x - self.centre.0, y - self.centre.1);
        let (s, c) = self.angle.sin_cos();
        let (u, v) = (
            (dx * c + dy * s) / self.stretch,
            (dy * c - dx * s) * self.stretch,
        );
        let theta = v.atan2(u);
        let radius = 1.0
            + self
                .harmonics
                .iter()
                .enumerate()
                .map(|(k, &(a, phase))| a * ((k + 1) as f64 * theta + phase).sin())
                .sum::<f64>();
        u.hypot(v) / (self.scale * radius)
    }
}

/// The grid and IDC patches of patient `patient`.
fn plan(patient: u32, opts: &SynthOptions) -> Plan {
    let mut prng =
        ChaCha8Rng::seed_from_u64(opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ patient as u64);
    // IDC rate per patient: 5% to 52%, about 2.5 negatives per positive overall.
    let rate = 0.05 + 0.47 * unit(&mut prng);
    let n = opts.per_patient;
    let positives = ((rate * n as f64).round() as u32).min(n) as usize;
    let cols = ((n as f64 * 1.3).sqrt().ceil() as u32).max(1);
    let rows = n.div_ceil(cols).max(1);
    // One region, or two of which the second is smaller.
    let mut regions = vec![Region::draw(&mut prng, cols, rows, 1.0)];
    if prng.next_u32().is_multiple_of(2) {
        let scale = 0.5 + 0.4 * unit(&mut prng);
        regions.push(Region::draw(&mut prng, cols, rows, scale));
    }
    let distance = |i: u32| {
        let (x, y) = ((i % cols) as f64 + 0.5, (i / cols) as f64 + 0.5);
        regions
            .iter()
            .map(|r| r.distance(x, y))
            .fold(f64::INFINITY, f64::min)
    };
    let mut ranked: Vec<(f64, u32)> = (0..n).map(|i| (distance(i), i)).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut idc = vec![false; n as usize];
    for &(_, i) in &ranked[..positives] {
        idc[i as usize] = true;
    }
    Plan { cols, idc }
}

/// Name, class look and (width, height) of patch `index` of patient `patient`.
fn layout(
    patient: u32,
    index: u32,
    plan: &Plan,
    opts: &SynthOptions,
) -> (PatchName, bool, (u32, u32)) {
    let class = u8::from(plan.idc[index as usize]);
    let name = PatchName {
        patient: patient_id(patient),
        x: 1 + 50 * (index % plan.cols),
        y: 1 + 50 * (index / plan.cols),
        class,
    };
    let mut rng = patch_rng(opts.seed, patient, index);
    let flipped = unit(&mut rng) < opts.label_noise;
    let size = if unit(&mut rng) < opts.edge_fraction {
        let short = 20 + (rng.next_u32() % 30);
        if rng.next_u32().is_multiple_of(2) {
            (short, 50)
        } else {
            (50, short)
        }
    } else {
        (50, 50)
    };
    (name, (class == 1) != flipped, size)
}

fn patch_rng(seed: u64, patient: u32, index: u32) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(
        seed ^ ((patient as u64) << 32 | index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93),
    )
}

fn write_patient(
    root: &Path,
    patient: u32,
    opts: &SynthOptions,
) -> Result<SynthSummary, SynthError> {
    let mut sum = SynthSummary::default();
    let pid = patient_id(patient);
    for class in 0..2 {
        let dir = root.join(pid.to_string()).join(class.to_string());
        std::fs::create_dir_all(&dir).map_err(|source| SynthError { path: dir, source })?;
    }
    let mut srng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5EED ^ (patient as u64) << 20);
    let stain = [
        jitter(&mut srng, 10.0),
        jitter(&mut srng, 10.0),
        jitter(&mut srng, 10.0),
    ];
    let plan = plan(patient, opts);
    for index in 0..opts.per_patient {
        let (name, idc_look, (w, h)) = layout(patient, index, &plan, opts);
        let mut rng = patch_rng(opts.seed, patient, index);
        rng.next_u64(); // keep the draws of layout() apart from the picture's
        let pixels = render(&mut rng, idc_look, stain);
        let cropped: Vec<u8> = (0..h as usize)
            .flat_map(|y| {
                pixels[y * PATCH_SIZE * 3..][..w as usize * 3]
                    .iter()
                    .copied()
            })
            .collect();
        let png = encode_png(&cropped, w, h, png::ColorType::Rgb);
        let path = root.join(name.rel_path());
        std::fs::write(&path, png).map_err(|source| SynthError { path, source })?;
        sum.files += 1;
        sum.class_counts[name.class as usize] += 1;
        sum.edge_patches += u64::from((w, h) != (50, 50));
    }
    Ok(sum)
}

fn jitter(rng: &mut ChaCha8Rng, amplitude: f64) -> f64 {
    (unit(rng) * 2.0 - 1.0) * amplitude
}

/// Paints one 50x50 H&E-like patch.
fn render(rng: &mut ChaCha8Rng, idc: bool, stain: [f64; 3]) -> Vec<u8> {
    const N: usize = PATCH_SIZE;
    let bright = jitter(rng, 12.0);
    let stroma = [
        228.0 + stain[0] + bright,
        150.0 + stain[1] + bright,
        196.0 + stain[2] + bright,
    ];
    let nucleus = [
        92.0 + stain[0] * 0.5,
        44.0 + stain[1] * 0.5,
        128.0 + stain[2] * 0.5,
    ];
    // Low-frequency variation of the stroma.
    let waves: Vec<(f64, f64, f64, f64)> = (0..3)
        .map(|_| {
            (
                jitter(rng, 0.25),
                jitter(rng, 0.25),
                unit(rng) * 6.3,
                6.0 + unit(rng) * 8.0,
            )
        })
        .collect();
    let mut img = vec![[0f64; 3]; N * N];
    for y in 0..N {
        for x in 0..N {
            let v: f64 = waves
                .iter()
                .map(|(fx, fy, ph, a)| a * (fx * x as f64 + fy * y as f64 + ph).sin())
                .sum();
            img[y * N + x] = [stroma[0] + v, stroma[1] + v * 1.2, stroma[2] + v];
        }
    }
    // Fat and lumen: white ellipses, more common in healthy tissue.
    let holes = if idc {
        rng.next_u32() % 2
    } else {
        1 + rng.next_u32() % 2
    };
    for _ in 0..holes {
        let (cx, cy, r) = (unit(rng) * 50.0, unit(rng) * 50.0, 5.0 + unit(rng) * 9.0);
        blob(
            &mut img,
            cx,
            cy,
            r,
            r * (0.6 + unit(rng) * 0.6),
            [246.0, 238.0, 244.0],
            0.9,
        );
    }
    // Nuclei: a few large pale ones, or dense clusters of small dark ones.
    let (count, r_min, r_span, a_min) = if idc {
        (22 + rng.next_u32() % 16, 1.4, 1.3, 0.78)
    } else {
        (4 + rng.next_u32() % 7, 2.2, 1.6, 0.5)
    };
    let centers: Vec<(f64, f64)> = (0..1 + rng.next_u32() % 3)
        .map(|_| (unit(rng) * 50.0, unit(rng) * 50.0))
        .collect();
    for i in 0..count {
        let (cx, cy) = if idc {
            let c = centers[i as usize % centers.len()];
            (c.0 + jitter(rng, 11.0), c.1 + jitter(rng, 11.0))
        } else {
            (unit(rng) * 50.0, unit(rng) * 50.0)
        };
        let r = r_min + unit(rng) * r_span;
        let alpha = a_min + unit(rng) * 0.18;
        blob(
            &mut img,
            cx,
            cy,
            r,
            r * (0.7 + unit(rng) * 0.5),
            nucleus,
            alpha,
        );
    }
    let mut out = Vec::with_capacity(N * N * 3);
    for px in img {
        for c in px {
            let noise = (unit(rng) + unit(rng) - 1.0) * 7.0;
            out.push((c + noise).round().clamp(0.0, 255.0) as u8);
        }
    }
    out
}

fn blob(img: &mut [[f64; 3]], cx: f64, cy: f64, rx: f64, ry: f64, color: [f64; 3], alpha: f64) {
    let n = PATCH_SIZE as i64;
    let (x0, x1) = (
        ((cx - rx).floor() as i64).max(0),
        ((cx + rx).ceil() as i64).min(n - 1),
    );
    let (y0, y1) = (
        ((cy - ry).floor() as i64).max(0),
        ((cy + ry).ceil() as i64).min(n - 1),
    );
    for y in y0..=y1 {
        for x in x0..=x1 {
            let d = ((x as f64 - cx) / rx).powi(2) + ((y as f64 - cy) / ry).powi(2);
            if d <= 1.0 {
                let a = alpha * (1.0 - 0.3 * d);
                let px = &mut img[(y * n + x) as usize];
                for c in 0..3 {
                    px[c] = px[c] * (1.0 - a) + color[c] * a;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        assert!(SynthOptions::default().check().is_ok());
        let noisy = SynthOptions {
            label_noise: 1.5,
            ..Default::default()
        };
        assert!(noisy.check().unwrap_err().0.starts_with("--edge-fraction"));
        let empty = SynthOptions {
            per_patient: 0,
            ..Default::default()
        };
        assert_eq!(
            empty.check().unwrap_err().0,
            "--patients and --per-patient must be at least 1"
        );
    }
    use crate::dataset::decode::{Undersized, decode_png};
    use crate::dataset::name::parse_path;

    #[test]
    fn deterministic_in_the_kaggle_layout() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let opts = SynthOptions {
            patients: 3,
            per_patient: 40,
            seed: 9,
            edge_fraction: 0.1,
            ..Default::default()
        };
        let sa = generate(a.path(), &opts).unwrap();
        generate(b.path(), &opts).unwrap();
        assert_eq!(sa.files, 120);
        assert!(sa.class_counts[1] > 0 && sa.class_counts[0] > sa.class_counts[1]);
        assert!(sa.edge_patches > 0);
        let mut n = 0;
        for e in walkdir::WalkDir::new(a.path()).sort_by_file_name() {
            let e = e.unwrap();
            if !e.file_type().is_file() {
                continue;
            }
            let rel = e
                .path()
                .strip_prefix(a.path())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert!(rel.starts_with("IDC_regular_ps50_idx5/"), "{rel}");
            parse_path(&rel).unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            assert_eq!(
                bytes,
                std::fs::read(b.path().join(&rel)).unwrap(),
                "{rel} differs between runs"
            );
            decode_png(&bytes, Undersized::Pad).unwrap();
            n += 1;
        }
        assert_eq!(n, 120);
    }

    #[test]
    fn idc_patches_form_blobs_with_the_same_count_per_patient() {
        // The per-patient IDC counts the generator made before IDC regions were spatial (the
        // first `positives` indices were IDC then): the count, hence the class balance, is kept.
        let opts = SynthOptions {
            patients: 3,
            per_patient: 40,
            seed: 9,
            ..Default::default()
        };
        let counts: Vec<usize> = (0..3)
            .map(|p| plan(p, &opts).idc.iter().filter(|&&i| i).count())
            .collect();
        assert_eq!(counts, [6, 19, 12]);

        let opts = SynthOptions {
            patients: 40,
            per_patient: 200,
            seed: 3,
            ..Default::default()
        };
        let mut not_raster = 0;
        for p in 0..opts.patients {
            let plan = plan(p, &opts);
            let n = plan.idc.len();
            let positives = plan.idc.iter().filter(|&&i| i).count();
            not_raster += usize::from(plan.idc[..positives].iter().any(|&i| !i));
            // 4-connected components of IDC cells: one per region, at most two.
            let cols = plan.cols as usize;
            let mut seen = vec![false; n];
            let mut components = 0;
            for start in 0..n {
                if !plan.idc[start] || seen[start] {
                    continue;
                }
                components += 1;
                let mut stack = vec![start];
                seen[start] = true;
                while let Some(i) = stack.pop() {
                    let (x, y) = (i % cols, i / cols);
                    let mut next = vec![];
                    if x > 0 {
                        next.push(i - 1);
                    }
                    if x + 1 < cols {
                        next.push(i + 1);
                    }
                    if y > 0 {
                        next.push(i - cols);
                    }
                    next.push(i + cols);
                    for j in next {
                        if j < n && plan.idc[j] && !seen[j] {
                            seen[j] = true;
                            stack.push(j);
                        }
                    }
                }
            }
            assert!(
                components <= 2,
                "patient {p}: {positives} IDC patches in {components} pieces"
            );
        }
        assert!(
            not_raster > 30,
            "IDC regions are placed, not the first indices ({not_raster} of 40)"
        );
    }

    #[test]
    fn plants_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            patients: 2,
            per_patient: 10,
            corrupt: 3,
            ..Default::default()
        };
        let s = generate(dir.path(), &opts).unwrap();
        assert_eq!(s.corrupt.len(), 3);
        for rel in &s.corrupt {
            let bytes = std::fs::read(dir.path().join(rel)).unwrap();
            assert!(
                decode_png(&bytes, Undersized::Pad).is_err(),
                "{rel} still decodes"
            );
        }
    }
}
