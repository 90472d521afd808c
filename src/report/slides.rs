//! Slide maps: each patient's patches laid back out at their positions in the whole-slide image,
//! drawn as three PNGs (tissue, ground-truth IDC, predicted p(IDC)) with the patient's own
//! scores; the HTML section that shows them and the folder of maps (`idcctl report --html`,
//! `idcctl predict --maps`).
//!
//! What the maps mean, pixel by pixel (readers and tests rely on it): one map pixel per slide
//! pixel over the bounding box of the patient's patches, each patch 50x50 at its x/y; white
//! where there is no patch. The tissue map shows the patches' pixels (a patch without pixels is
//! neutral grey). The truth and heat maps draw the tissue in grey, so any colour on them is the
//! overlay: on the truth map IDC patches are tinted red and the IDC region is outlined; on the
//! heat map every patch carries [`colour_scale`] of its p(IDC), blended over the grey. Blending
//! with grey leaves a colour's hue as it is, and the scale's hue falls steadily from p = 0 to
//! p = 1, so a patch's hue alone says its p(IDC).

use super::ReportError;
use super::page::{create_dir, notes, page, write_file};
use super::plot::escape;
use crate::PATCH_SIZE;
use crate::metrics;
use crate::predictions::Prediction;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Side of a patch on the slide, in pixels.
const PATCH: u32 = PATCH_SIZE as u32;
/// Where there is no patch.
pub const BACKGROUND: [u8; 3] = [255, 255, 255];
/// A patch whose pixels are not available.
const UNAVAILABLE: [u8; 3] = [168, 168, 168];
/// Ground-truth IDC: its tint over the grey tissue, and the outline of the region.
const TRUTH_TINT: [u8; 3] = [228, 26, 28];
const TRUTH_OPACITY: f64 = 0.5;
const TRUTH_OUTLINE: [u8; 3] = [165, 0, 12];
/// Width of the truth outline, in pixels.
const OUTLINE: u32 = 3;
/// How much of a heat-map pixel is the colour scale (the rest is the grey tissue).
const HEAT_OPACITY: f64 = 0.68;

/// The colour of p(IDC) `p` (clamped to 0..1) on the heat maps and their legend: viridis, as a
/// whole slide's heat map.
pub fn colour_scale(p: f64) -> [u8; 3] {
    crate::slide::outputs::colormap(p)
}

/// The maps of one patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Slide {
    pub patient: u32,
    /// Pixel size of the maps: the bounding box of the patient's patches (patches are 50 px at
    /// their x/y; gaps stay background).
    pub width: u32,
    pub height: u32,
    /// Slide x/y of the maps' top-left pixel.
    pub origin: (u32, u32),
    pub patches: usize,
    /// The decision threshold on p(IDC) that `scores` and the legend's mark use.
    pub threshold: f64,
    pub tissue_png: Vec<u8>,
    /// Ground-truth IDC mask over the tissue; None when no patch of the patient has a known label.
    pub truth_png: Option<Vec<u8>>,
    /// Predicted p(IDC) as a heat map over the tissue.
    pub heat_png: Vec<u8>,
    /// The patient's own metrics at `threshold`; None when labels are unknown.
    pub scores: Option<SlideScores>,
}

/// One patient's metrics over its labelled patches (from [`metrics::evaluate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlideScores {
    /// Labelled patches.
    pub count: u64,
    /// Of them, truly IDC.
    pub positives: u64,
    pub accuracy: f64,
    pub f1: f64,
    pub balanced_accuracy: f64,
    /// 0.5 when the patient has only one class (as [`metrics::roc_auc`]).
    pub roc_auc: f64,
}

/// The three maps of a slide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    Tissue,
    Truth,
    Heat,
}

impl MapKind {
    pub const ALL: [MapKind; 3] = [MapKind::Tissue, MapKind::Truth, MapKind::Heat];

    pub fn name(self) -> &'static str {
        match self {
            MapKind::Tissue => "tissue",
            MapKind::Truth => "truth",
            MapKind::Heat => "heat",
        }
    }
}

impl Slide {
    /// The file the map `kind` is written as: `<patient>-<kind>.png`.
    pub fn file_name(&self, kind: MapKind) -> String {
        format!("{}-{}.png", self.patient, kind.name())
    }

    /// The PNG of map `kind` (None: the truth of a patient without labels).
    pub fn png(&self, kind: MapKind) -> Option<&[u8]> {
        match kind {
            MapKind::Tissue => Some(&self.tissue_png),
            MapKind::Truth => self.truth_png.as_deref(),
            MapKind::Heat => Some(&self.heat_png),
        }
    }
}

/// The patients of `rows` with the indices of their rows, the patients with most patches first
/// (ties by patient id), the first `max` of them (None: all).
pub fn patients(rows: &[Prediction], max: Option<usize>) -> Vec<(u32, Vec<usize>)> {
    let mut by_patient: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_patient.entry(r.patient).or_default().push(i);
    }
    let mut out: Vec<(u32, Vec<usize>)> = by_patient.into_iter().collect();
    // Stable: ties keep the patient order of the map.
    out.sort_by_key(|(_, idx)| std::cmp::Reverse(idx.len()));
    out.truncate(max.unwrap_or(usize::MAX));
    out
}

/// A patient, its rows and their pixels.
type Fetched<'a> = (u32, &'a [usize], Vec<Option<Vec<u8>>>);

/// Slides of the patients in `rows` (two-class predictions), the `max` patients with the most
/// patches first (None: all, most patches first, ties by patient id). `pixels(i)` gives
/// rows[i]'s 50x50x3 HWC RGB pixels (None: unavailable, drawn as a neutral grey patch).
pub fn build(
    rows: &[Prediction],
    pixels: &dyn Fn(usize) -> Option<Vec<u8>>,
    threshold: f64,
    max: Option<usize>,
) -> Vec<Slide> {
    use rayon::prelude::*;
    let chosen = patients(rows, max);
    // Pixels are fetched on this thread (`pixels` need not be Sync), a few patients at a time so
    // memory stays bounded, and those patients are drawn and encoded in parallel.
    let batch = rayon::current_num_threads().max(1);
    let mut out = Vec::with_capacity(chosen.len());
    for group in chosen.chunks(batch) {
        let fetched: Vec<Fetched> = group
            .iter()
            .map(|(patient, idx)| {
                let px = idx
                    .iter()
                    .map(|&i| pixels(i).filter(|p| p.len() == crate::PATCH_BYTES))
                    .collect();
                (*patient, idx.as_slice(), px)
            })
            .collect();
        let drawn: Vec<Slide> = fetched
            .into_par_iter()
            .map(|(patient, idx, px)| draw(patient, rows, idx, &px, threshold))
            .collect();
        out.extend(drawn);
    }
    out
}

/// Rec. 709 luma of an RGB pixel.
fn grey(px: [u8; 3]) -> f64 {
    0.2126 * px[0] as f64 + 0.7152 * px[1] as f64 + 0.0722 * px[2] as f64
}

/// `opacity` of `colour` over the grey level `g`.
fn over_grey(colour: [u8; 3], opacity: f64, g: f64) -> [u8; 3] {
    colour.map(|c| (c as f64 * opacity + g * (1.0 - opacity)).round() as u8)
}

/// An RGB image being drawn.
struct Canvas {
    width: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Canvas {
        Canvas {
            width,
            pixels: BACKGROUND.repeat(width as usize * height as usize),
        }
    }

    fn set(&mut self, x: u32, y: u32, px: [u8; 3]) {
        let o = (y as usize * self.width as usize + x as usize) * 3;
        self.pixels[o..o + 3].copy_from_slice(&px);
    }

    fn png(&self) -> Vec<u8> {
        let height = (self.pixels.len() / 3 / self.width.max(1) as usize) as u32;
        crate::dataset::decode::encode_png(&self.pixels, self.width, height, png::ColorType::Rgb)
    }
}

/// Draws the maps of one patient from its rows `idx` and their pixels `px`.
fn draw(
    patient: u32,
    rows: &[Prediction],
    idx: &[usize],
    px: &[Option<Vec<u8>>],
    threshold: f64,
) -> Slide {
    let (x0, y0) = (
        idx.iter().map(|&i| rows[i].x).min().unwrap_or(0),
        idx.iter().map(|&i| rows[i].y).min().unwrap_or(0),
    );
    let (x1, y1) = (
        idx.iter()
            .map(|&i| rows[i].x + PATCH)
            .max()
            .unwrap_or(PATCH),
        idx.iter()
            .map(|&i| rows[i].y + PATCH)
            .max()
            .unwrap_or(PATCH),
    );
    let (width, height) = (x1 - x0, y1 - y0);
    let mut maps = Maps {
        tissue: Canvas::new(width, height),
        truth: Canvas::new(width, height),
        heat: Canvas::new(width, height),
        idc: idx
            .iter()
            .map(|&i| &rows[i])
            .filter(|r| r.label == Some(1))
            .map(|r| (r.x, r.y))
            .collect(),
    };
    for (k, &i) in idx.iter().enumerate() {
        let r = &rows[i];
        maps.paint(r, (r.x - x0, r.y - y0), px[k].as_deref());
    }
    let scores = slide_scores(rows, idx, threshold);
    Slide {
        patient,
        width,
        height,
        origin: (x0, y0),
        patches: idx.len(),
        threshold,
        tissue_png: maps.tissue.png(),
        truth_png: scores.is_some().then(|| maps.truth.png()),
        heat_png: maps.heat.png(),
        scores,
    }
}

/// A patient's three maps as they are drawn, and where its IDC patches lie.
struct Maps {
    tissue: Canvas,
    truth: Canvas,
    heat: Canvas,
    idc: HashSet<(u32, u32)>,
}

impl Maps {
    /// Paints the patch of row `r` at `(ox, oy)` on each map from its pixels `px`.
    fn paint(&mut self, r: &Prediction, (ox, oy): (u32, u32), px: Option<&[u8]>) {
        let p = r.p_positive() as f64;
        let colour = p.is_finite().then(|| colour_scale(p));
        // The outline runs along the sides where the IDC region ends.
        let open = |dx: i64, dy: i64| {
            let (nx, ny) = (
                r.x as i64 + dx * PATCH as i64,
                r.y as i64 + dy * PATCH as i64,
            );
            nx < 0 || ny < 0 || !self.idc.contains(&(nx as u32, ny as u32))
        };
        let (left, right, top, bottom) = (open(-1, 0), open(1, 0), open(0, -1), open(0, 1));
        for y in 0..PATCH {
            for x in 0..PATCH {
                let src = match px {
                    Some(p) => {
                        let o = (y as usize * PATCH_SIZE + x as usize) * 3;
                        [p[o], p[o + 1], p[o + 2]]
                    }
                    None => UNAVAILABLE,
                };
                let g = grey(src);
                self.tissue.set(ox + x, oy + y, src);
                let edge = (left && x < OUTLINE)
                    || (right && x >= PATCH - OUTLINE)
                    || (top && y < OUTLINE)
                    || (bottom && y >= PATCH - OUTLINE);
                self.truth.set(
                    ox + x,
                    oy + y,
                    match r.label {
                        Some(1) if edge => TRUTH_OUTLINE,
                        Some(1) => over_grey(TRUTH_TINT, TRUTH_OPACITY, g),
                        Some(_) => [g.round() as u8; 3],
                        // Unknown among known labels: paler.
                        None => [((g + 255.0) / 2.0).round() as u8; 3],
                    },
                );
                self.heat.set(
                    ox + x,
                    oy + y,
                    match colour {
                        Some(c) => over_grey(c, HEAT_OPACITY, g),
                        None => [g.round() as u8; 3],
                    },
                );
            }
        }
    }
}

/// The scores of a patient's labelled rows among `idx` at `threshold`; `None` without labels.
fn slide_scores(rows: &[Prediction], idx: &[usize], threshold: f64) -> Option<SlideScores> {
    let labelled: Vec<&Prediction> = idx
        .iter()
        .map(|&i| &rows[i])
        .filter(|r| r.label.is_some())
        .collect();
    (!labelled.is_empty()).then(|| {
        let probs: Vec<f32> = labelled.iter().map(|r| r.p_positive()).collect();
        let labels: Vec<u8> = labelled.iter().map(|r| r.label.unwrap_or(0)).collect();
        let m = metrics::evaluate(&probs, &labels, threshold, f64::NAN);
        SlideScores {
            count: m.count,
            positives: m.confusion.tp + m.confusion.fn_,
            accuracy: m.accuracy,
            f1: m.f1,
            balanced_accuracy: m.balanced_accuracy,
            roc_auc: m.roc_auc,
        }
    })
}

/// Writes each slide's maps as <patient>-tissue.png, <patient>-truth.png, <patient>-heat.png
/// into `dir`, plus `dir/index.html` showing them (the report page's section markup and check
/// script); returns the paths written, the page last.
pub fn write_maps(dir: &Path, slides: &[Slide], title: &str) -> Result<Vec<PathBuf>, ReportError> {
    create_dir(dir)?;
    let mut written = write_pngs(dir, slides)?;
    let index = dir.join("index.html");
    write_file(
        &index,
        &page(
            title,
            &format!(
                "<h1>{}</h1>\n{}",
                escape(title),
                html_section(slides, "", &[])
            ),
        ),
    )?;
    written.push(index);
    Ok(written)
}

/// Writes the maps' PNGs into `dir` (which exists).
fn write_pngs(dir: &Path, slides: &[Slide]) -> Result<Vec<PathBuf>, ReportError> {
    let mut written = vec![];
    for s in slides {
        for kind in MapKind::ALL {
            if let Some(png) = s.png(kind) {
                let path = dir.join(s.file_name(kind));
                std::fs::write(&path, png).map_err(|source| ReportError::Write {
                    path: path.clone(),
                    source,
                })?;
                written.push(path);
            }
        }
    }
    Ok(written)
}

/// The colour scale of p(IDC) as an inline SVG, with the threshold marked.
fn scale_svg(threshold: f64) -> String {
    let (x0, x1) = (12.0, 332.0);
    let x = |p: f64| x0 + (x1 - x0) * p;
    let mut s = String::from(
        "<svg class=\"scale\" xmlns=\"http://www.w3.org/2000/svg\" width=\"344\" height=\"52\" viewBox=\"0 0 344 52\" role=\"img\" aria-label=\"colour scale of p(IDC) from 0 to 1\">\n<defs><linearGradient id=\"p-idc-scale\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">",
    );
    for k in 0..=16 {
        let p = k as f64 / 16.0;
        let [r, g, b] = colour_scale(p);
        let _ = write!(
            s,
            "<stop offset=\"{p:.4}\" stop-color=\"#{r:02x}{g:02x}{b:02x}\"/>"
        );
    }
    let _ = write!(
        s,
        "</linearGradient></defs>\n<rect x=\"{x0}\" y=\"14\" width=\"{}\" height=\"16\" fill=\"url(#p-idc-scale)\" stroke=\"#8c959f\" stroke-width=\"0.5\"/>\n",
        x1 - x0
    );
    for k in 0..=4 {
        let p = k as f64 / 4.0;
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"30\" y2=\"34\" stroke=\"#57606a\"/><text x=\"{0:.1}\" y=\"46\" font-size=\"11\" text-anchor=\"middle\" fill=\"#57606a\">{1}</text>",
            x(p),
            if k % 4 == 0 {
                format!("{p:.0}")
            } else {
                format!("{p}")
            }
        );
    }
    if threshold.is_finite() {
        let t = x(threshold.clamp(0.0, 1.0));
        // The label stays inside the picture near either end.
        let label = t.clamp(48.0, 296.0);
        let _ = writeln!(
            s,
            "<line x1=\"{t:.1}\" x2=\"{t:.1}\" y1=\"11\" y2=\"33\" stroke=\"#1f2328\" stroke-width=\"2\"/><text x=\"{label:.1}\" y=\"9\" font-size=\"11\" text-anchor=\"middle\" fill=\"#1f2328\">threshold {threshold:.3}</text>"
        );
    }
    s.push_str("</svg>");
    s
}

/// A swatch of the legend.
fn swatch(fill: [u8; 3], border: [u8; 3], label: &str) -> String {
    format!(
        "<span class=\"key\"><span class=\"swatch\" style=\"background:#{:02x}{:02x}{:02x};border:2px solid #{:02x}{:02x}{:02x}\"></span>{}</span>",
        fill[0],
        fill[1],
        fill[2],
        border[0],
        border[1],
        border[2],
        escape(label)
    )
}

/// One map as a figure: the image (linked to itself at full size), checked by the page's script
/// against the slide's size.
fn map_figure(s: &Slide, kind: MapKind, prefix: &str, caption: &str) -> String {
    let id = format!("{}-{}", s.patient, kind.name());
    if s.png(kind).is_none() {
        return format!(
            "<figure class=\"map\"><div class=\"nomap\">no known labels</div><figcaption>{}</figcaption></figure>\n",
            escape(caption)
        );
    }
    let file = escape(&format!("{prefix}{}", s.file_name(kind)));
    format!(
        "<figure class=\"map\"><a href=\"{file}\"><img data-map=\"{id}\" data-w=\"{w}\" data-h=\"{h}\" src=\"{file}\" alt=\"patient {p}: {caption}\"></a><figcaption>{caption}</figcaption></figure>\n",
        w = s.width,
        h = s.height,
        p = s.patient,
        caption = escape(caption),
    )
}

/// The scores line of a slide.
fn scores_text(s: &Slide) -> String {
    let Some(m) = &s.scores else {
        return format!("{} patches, labels unknown", s.patches);
    };
    let head = format!(
        "{} patches ({} IDC) · slide x {}..{}, y {}..{}",
        s.patches,
        m.positives,
        s.origin.0,
        s.origin.0 + s.width,
        s.origin.1,
        s.origin.1 + s.height
    );
    if m.positives == 0 || m.positives == m.count {
        // F1, balanced accuracy and AUC say nothing of a slide with one class.
        format!(
            "{head} · one class only: accuracy {:.3} at threshold {:.3}",
            m.accuracy, s.threshold
        )
    } else {
        format!(
            "{head} · <b>F1 {:.3}</b> · balanced accuracy {:.3} · ROC-AUC {:.3} · at threshold {:.3}",
            m.f1, m.balanced_accuracy, m.roc_auc, s.threshold
        )
    }
}

/// The HTML section of the slide maps: per patient side by side tissue | truth | heat with its
/// scores, and the legend (colour scale of p(IDC) with the threshold, the truth's key). Images
/// are referenced as `prefix` + [`Slide::file_name`], the files [`write_maps`] writes; `notes`
/// (what could not be read) come first.
pub fn html_section(slides: &[Slide], prefix: &str, notes_shown: &[String]) -> String {
    let mut b = String::from("<section class=\"slides\"><h2>Slide maps</h2>\n");
    b.push_str(&notes(notes_shown));
    if slides.is_empty() {
        if notes_shown.is_empty() {
            b.push_str("<p class=\"legend\">no patches</p>\n");
        }
        b.push_str("</section>\n");
        return b;
    }
    let _ = writeln!(
        b,
        "<p class=\"legend\">{} patient{}, most patches first. Each patient's patches are laid back out where they lie on the whole-slide image (one pixel per pixel; white: no patch). <b>Tissue</b>: the patches. <b>Truth</b>: the tissue in grey, IDC patches tinted red, the IDC region outlined. <b>p(IDC)</b>: the model's probability per patch in the colour scale, over the tissue in grey. Click a map for its full size.</p>",
        slides.len(),
        if slides.len() == 1 { "" } else { "s" }
    );
    let grey_mid = 190.0;
    let _ = writeln!(
        b,
        "<div class=\"slide-legend\"><span class=\"scale-key\">p(IDC){}</span><span class=\"keys\">{}{}{}</span></div>",
        scale_svg(slides[0].threshold),
        swatch(
            over_grey(TRUTH_TINT, TRUTH_OPACITY, grey_mid),
            TRUTH_OUTLINE,
            "IDC (truth)"
        ),
        swatch([grey_mid as u8; 3], [grey_mid as u8; 3], "no IDC"),
        swatch(BACKGROUND, [208, 215, 222], "no patch"),
    );
    for s in slides {
        let _ = write!(
            b,
            "<div class=\"slide\" id=\"slide-{p}\"><h3>Patient {p}</h3>\n<p class=\"scores\">{}</p>\n<div class=\"maps\">\n{}{}{}</div></div>\n",
            scores_text(s),
            map_figure(s, MapKind::Tissue, prefix, "tissue"),
            map_figure(s, MapKind::Truth, prefix, "truth: IDC"),
            map_figure(s, MapKind::Heat, prefix, "predicted p(IDC)"),
            p = s.patient,
        );
    }
    b.push_str("</section>\n");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(patient: u32, x: u32, y: u32, label: Option<u8>, p: f32) -> Prediction {
        Prediction {
            patient,
            x,
            y,
            file: format!("shards/test-00000.idcs#{x}"),
            label,
            probabilities: vec![1.0 - p, p],
            predicted: u8::from(p >= 0.5),
        }
    }

    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png.to_vec()))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn at(img: &(u32, u32, Vec<u8>), x: u32, y: u32) -> [u8; 3] {
        let o = ((y * img.0 + x) * 3) as usize;
        [img.2[o], img.2[o + 1], img.2[o + 2]]
    }

    /// Hue in degrees: unchanged by adding grey or by scaling.
    fn hue(c: [f64; 3]) -> f64 {
        let (r, g, b) = (c[0], c[1], c[2]);
        (3f64.sqrt() * (g - b)).atan2(2.0 * r - g - b).to_degrees()
    }

    #[test]
    fn the_colour_scale_rises_in_lightness_and_falls_in_hue() {
        let steps: Vec<[u8; 3]> = (0..=100).map(|k| colour_scale(k as f64 / 100.0)).collect();
        assert_eq!(steps[0], crate::slide::outputs::VIRIDIS[0]);
        assert_eq!(steps[100], crate::slide::outputs::VIRIDIS[8]);
        for w in steps.windows(2) {
            assert!(
                grey(w[1]) > grey(w[0]),
                "lightness {:?} -> {:?}",
                w[0],
                w[1]
            );
            // Hues from purple (~290) down to yellow (~55), unwrapped.
            let h = |c: [u8; 3]| hue(c.map(f64::from)).rem_euclid(360.0);
            assert!(h(w[1]) < h(w[0]), "hue {:?} -> {:?}", w[0], w[1]);
        }
        assert_eq!(colour_scale(-1.0), colour_scale(0.0));
        assert_eq!(colour_scale(7.0), colour_scale(1.0));
        assert_eq!(colour_scale(f64::NAN), colour_scale(0.0));
    }

    #[test]
    fn patches_are_placed_at_their_positions_with_gaps_left_background() {
        // Patient 7: a 3x2 grid with its middle top cell missing, offset from the slide's origin;
        // patient 9 has more patches and comes first.
        let mut rows = vec![
            row(7, 101, 51, Some(1), 0.9),
            row(7, 201, 51, Some(0), 0.2),
            row(7, 101, 101, Some(1), 0.7),
            row(7, 151, 101, Some(0), 0.6),
            row(7, 201, 101, Some(0), 0.1),
        ];
        rows.extend((0..6).map(|i| row(9, 1 + 50 * i, 1, Some((i % 2) as u8), 0.1 * i as f32)));
        let pixels = |i: usize| {
            // Row 1 has no pixels; the others are a flat colour that says their row.
            (i != 1).then(|| [10 * i as u8, 100, 200].repeat(PATCH_SIZE * PATCH_SIZE))
        };
        let slides = build(&rows, &pixels, 0.5, None);
        assert_eq!(slides.iter().map(|s| s.patient).collect::<Vec<_>>(), [9, 7]);
        assert_eq!(build(&rows, &pixels, 0.5, Some(1)).len(), 1);
        let s = &slides[1];
        assert_eq!(
            (s.width, s.height, s.origin, s.patches),
            (150, 100, (101, 51), 5)
        );
        let tissue = decode(&s.tissue_png);
        let truth = decode(s.truth_png.as_ref().unwrap());
        let heat = decode(&s.heat_png);
        for img in [&tissue, &truth, &heat] {
            assert_eq!((img.0, img.1), (150, 100));
            // The missing cell (slide x 151, y 51) stays background, in every map.
            for (x, y) in [(50, 0), (99, 49), (75, 25)] {
                assert_eq!(at(img, x, y), BACKGROUND);
            }
        }
        // Tissue: each patch's own pixels at its place; no pixels: grey.
        assert_eq!(at(&tissue, 10, 10), [0, 100, 200]);
        assert_eq!(at(&tissue, 120, 80), [40, 100, 200]);
        assert_eq!(at(&tissue, 149, 99), [40, 100, 200]);
        assert_eq!(at(&tissue, 110, 20), UNAVAILABLE);
        // Truth: IDC tinted (red dominant) and outlined, no IDC grey.
        let inner = at(&truth, 25, 25);
        assert!(
            inner[0] > inner[1] + 40 && inner[1].abs_diff(inner[2]) <= 1,
            "{inner:?}"
        );
        assert_eq!(at(&truth, 0, 25), TRUTH_OUTLINE, "the region's left side");
        assert_eq!(at(&truth, 25, 0), TRUTH_OUTLINE, "its top");
        assert_ne!(
            at(&truth, 25, 49),
            TRUTH_OUTLINE,
            "no outline between two IDC patches"
        );
        assert_eq!(at(&truth, 25, 99), TRUTH_OUTLINE, "its bottom");
        let g = at(&truth, 75, 75);
        assert!(g[0] == g[1] && g[1] == g[2], "{g:?}");
        // Heat: the hue of each patch is its p's.
        for (x, y, p) in [(25, 25, 0.9), (25, 75, 0.7), (75, 75, 0.6), (125, 75, 0.1)] {
            let got = hue(at(&heat, x, y).map(f64::from));
            let want = hue(colour_scale(p).map(f64::from));
            assert!((got - want).abs() < 3.0, "p {p}: hue {got} vs {want}");
        }
    }

    #[test]
    fn scores_are_the_patients_own_metrics() {
        let mut rows = vec![];
        for i in 0..40u32 {
            let label = u8::from(i % 3 == 0);
            let p = ((i * 37) % 100) as f32 / 100.0 * 0.6 + 0.4 * label as f32;
            rows.push(row(5, 1 + 50 * (i % 8), 1 + 50 * (i / 8), Some(label), p));
            rows.push(row(6, 1 + 50 * i, 1, Some(1 - label), 1.0 - p));
        }
        rows.push(row(8, 1, 1, None, 0.3));
        let slides = build(&rows, &|_| None, 0.45, None);
        assert_eq!(
            slides.iter().map(|s| s.patient).collect::<Vec<_>>(),
            [5, 6, 8]
        );
        for s in &slides[..2] {
            let own: Vec<&Prediction> = rows.iter().filter(|r| r.patient == s.patient).collect();
            let probs: Vec<f32> = own.iter().map(|r| r.p_positive()).collect();
            let labels: Vec<u8> = own.iter().map(|r| r.label.unwrap()).collect();
            let m = metrics::evaluate(&probs, &labels, 0.45, f64::NAN);
            let got = s.scores.unwrap();
            assert_eq!(
                (got.count, got.positives),
                (40, labels.iter().filter(|&&l| l == 1).count() as u64)
            );
            assert_eq!(
                (got.accuracy, got.f1, got.balanced_accuracy, got.roc_auc),
                (m.accuracy, m.f1, m.balanced_accuracy, m.roc_auc)
            );
            assert!(got.f1 > 0.0 && got.f1 < 1.0);
        }
        assert_ne!(slides[0].scores, slides[1].scores);
        // Unknown labels: no truth map, no scores.
        assert_eq!(
            (slides[2].truth_png.as_ref(), slides[2].scores),
            (None, None)
        );
        assert_eq!((slides[2].width, slides[2].height), (50, 50));
    }

    #[test]
    fn the_section_and_the_maps_folder_agree() {
        let rows: Vec<Prediction> = (0..4)
            .map(|i| row(3, 1 + 50 * i, 1, Some((i % 2) as u8), 0.25 * i as f32))
            .chain([row(4, 1, 1, None, 0.5)])
            .collect();
        let slides = build(&rows, &|_| None, 0.5, None);
        let dir = tempfile::tempdir().unwrap();
        let written = write_maps(dir.path(), &slides, "maps <of> test").unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "3-tissue.png",
                "3-truth.png",
                "3-heat.png",
                "4-tissue.png",
                "4-heat.png",
                "index.html"
            ]
        );
        let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
        assert!(html.contains("<title>maps &lt;of&gt; test</title>"));
        assert!(html.contains("data-maps-ok"), "the page's check script");
        assert_eq!(html.matches("<img data-map=").count(), 5);
        assert!(
            html.contains(
                "<img data-map=\"3-heat\" data-w=\"200\" data-h=\"50\" src=\"3-heat.png\""
            )
        );
        assert!(html.contains("no known labels"));
        assert!(html.contains("threshold 0.500"));
        let section = html_section(&slides, "slides/", &["a note".into()]);
        assert!(section.contains("src=\"slides/3-tissue.png\""));
        assert!(section.contains("<p class=\"note\">a note</p>"));
        for (k, p) in written[..5].iter().enumerate() {
            let (w, h, _) = decode(&std::fs::read(p).unwrap());
            let s = &slides[usize::from(k >= 3)];
            assert_eq!((w, h), (s.width, s.height), "{}", p.display());
        }
    }
}
