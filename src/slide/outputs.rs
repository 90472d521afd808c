//! What one slide's prediction writes: its file names ([`files`]), WSInfer's per-patch CSV, the
//! heat map over the thumbnail, the summary record, and the name of the slide's folder.

use super::Image;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The files one slide's prediction writes in its folder. [`SUMMARY`](files::SUMMARY) is
/// written last: its presence says the slide is done.
pub mod files {
    /// One row per scored patch, WSInfer's columns ([`super::wsinfer_csv`]).
    pub const CSV: &str = "patches.csv";
    /// IDC regions as QuPath annotations ([`crate::slide::regions::feature_collection`]).
    pub const GEOJSON: &str = "regions.geojson";
    /// The thumbnail with each scored patch coloured by its probability ([`super::heatmap`]).
    pub const HEATMAP: &str = "heatmap.png";
    /// The slide's thumbnail.
    pub const THUMBNAIL: &str = "thumbnail.png";
    /// The tissue mask over the thumbnail.
    pub const TISSUE: &str = "tissue.png";
    /// The [`super::SlideSummary`], written last.
    pub const SUMMARY: &str = "summary.json";
    /// Every file, the summary last.
    pub const ALL: [&str; 6] = [CSV, GEOJSON, HEATMAP, THUMBNAIL, TISSUE, SUMMARY];
}

/// One scored patch: its box in level-0 pixels and the model's probability of each class.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchRow {
    pub minx: u64,
    pub miny: u64,
    pub width: u64,
    pub height: u64,
    pub probabilities: Vec<f32>,
}

/// `rows` as WSInfer 0.6.1 writes a slide's model outputs (`pandas.DataFrame.to_csv(index=
/// False)`): columns `minx,miny,width,height`, then `prob_<class>` for each of `classes` in
/// order, the names as they are; header fields quoted only where CSV needs it; `\n` line ends.
/// Probabilities are written as numpy writes a float32 column: the shortest text that reads back
/// to the same float32, exponents as `1e-07`; NaN as an empty field. A row with fewer
/// probabilities than classes has empty fields for the rest; extra ones are left out.
pub fn wsinfer_csv(rows: &[PatchRow], classes: &[String]) -> Vec<u8> {
    let mut out = String::new();
    let header = ["minx", "miny", "width", "height"]
        .map(String::from)
        .into_iter()
        .chain(classes.iter().map(|c| format!("prob_{c}")))
        .map(|h| csv_field(&h))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str(&header);
    out.push('\n');
    for r in rows {
        out.push_str(&format!("{},{},{},{}", r.minx, r.miny, r.width, r.height));
        for k in 0..classes.len() {
            out.push(',');
            if let Some(&p) = r.probabilities.get(k) {
                out.push_str(&numpy_float32(p));
            }
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// `s` as a CSV field as Python's csv module writes it by default (QUOTE_MINIMAL): quoted when
/// it holds a comma, a quote or a line break, its quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `x` as numpy writes a float32 (`str`, `astype(str)`): the shortest digits that read back to
/// `x`, positional when 1e-4 <= |x| < 1e6 (numpy's cutoffs for float32, compared in double) or
/// x is 0, else scientific with a signed two-digit exponent (`1e-07`, `1.5e+06`); `inf`,
/// `-inf`; NaN as pandas' empty field.
fn numpy_float32(x: f32) -> String {
    if x.is_nan() {
        return String::new();
    }
    if x == 0.0 || x.is_infinite() {
        return format!("{x:?}");
    }
    let sign = if x < 0.0 { "-" } else { "" };
    let (digits, exp) = shortest_digits(x.abs());
    if (1e-4..1e6).contains(&(x.abs() as f64)) {
        let positional = if exp >= 0 {
            let int_len = exp as usize + 1;
            let int = format!("{:0<int_len$}", &digits[..int_len.min(digits.len())]);
            let frac = digits
                .get(int_len..)
                .filter(|f| !f.is_empty())
                .unwrap_or("0");
            format!("{int}.{frac}")
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        return format!("{sign}{positional}");
    }
    let (first, rest) = digits.split_at(1);
    let dot = if rest.is_empty() { "" } else { "." };
    let exp_sign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{first}{dot}{rest}e{exp_sign}{:02}", exp.abs())
}

/// The shortest significant digits that read back to `x` (positive, finite) and the decimal
/// exponent of the first. When two such digit strings lie exactly as near to `x`, numpy
/// (Dragon4) takes the one ending in an even digit where Rust's formatting takes the higher;
/// the even one is returned.
fn shortest_digits(x: f32) -> (String, i32) {
    let split = |s: String| -> (String, i32) {
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        (m.replace('.', ""), e.parse().unwrap_or(0))
    };
    let (digits, exp) = split(format!("{x:e}"));
    // x's exact decimal expansion (every f32 has one of under 120 digits).
    let (exact, exact_exp) = split(format!("{:.120e}", x as f64));
    let n = digits.len();
    let tie = exact_exp == exp
        && exact.len() > n
        && exact[n..].starts_with('5')
        && exact[n + 1..].bytes().all(|b| b == b'0');
    if tie {
        let down = &exact[..n];
        let even = down.ends_with(['0', '2', '4', '6', '8']);
        let text = format!("{}.{}e{exp}", &down[..1], &down[1..]);
        if even && down != digits && text.parse::<f32>() == Ok(x) {
            return (down.to_string(), exp);
        }
    }
    (digits, exp)
}

/// How much of a scored cell's colour is the colour map (the rest is the thumbnail).
const HEAT_OPACITY: f64 = 0.55;

/// Viridis (matplotlib's perceptually uniform colour map) at p = 0, 1/8, ..., 1: lightness rises
/// steadily along it, and it reads in colour-blind vision and in grey.
pub const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 45, 123],
    [59, 82, 139],
    [44, 114, 142],
    [33, 145, 140],
    [40, 174, 128],
    [94, 201, 98],
    [173, 220, 48],
    [253, 231, 37],
];

/// The heat maps' colour of probability `p` (clamped to 0..1; NaN as 0): viridis, dark purple at
/// 0 to yellow at 1 (the patch reports' slide maps and a slide's heat map alike).
pub fn colormap(p: f64) -> [u8; 3] {
    let t = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) } * 8.0;
    let i = (t.floor() as usize).min(7);
    let f = t - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    [0, 1, 2].map(|c| (a[c] as f64 + (b[c] as f64 - a[c] as f64) * f).round() as u8)
}

/// `thumb` with each scored cell of the `cols` x `rows` grid (`values[row * cols + col]` is
/// `Some(p)`, p finite) blended with [`colormap`]`(p)` at opacity 0.55; other cells (unscored,
/// past the end of `values`, or not finite) show the thumbnail. `cell_in_thumb` is (x0, y0,
/// cell_w, cell_h): cell (c, r) covers [x0 + c * cell_w, x0 + (c + 1) * cell_w) across and the
/// same down, in thumbnail pixels; a pixel belongs to the cell holding its centre, so cells tile
/// the thumbnail without gaps or overlaps.
pub fn heatmap(
    thumb: &Image,
    cols: u32,
    rows: u32,
    values: &[Option<f32>],
    cell_in_thumb: (f64, f64, f64, f64),
) -> Image {
    let mut out = thumb.clone();
    let (x0, y0, cw, ch) = cell_in_thumb;
    if !(x0.is_finite()
        && y0.is_finite()
        && cw.is_finite()
        && ch.is_finite()
        && cw > 0.0
        && ch > 0.0)
    {
        return out;
    }
    // The pixels whose centres lie in [lo, hi), clamped to 0..n.
    let pixels = |lo: f64, hi: f64, n: u32| {
        let first = (lo - 0.5).ceil().clamp(0.0, n as f64) as u32;
        let end = (hi - 0.5).ceil().clamp(0.0, n as f64) as u32;
        first..end
    };
    for r in 0..rows {
        let ys = pixels(y0 + r as f64 * ch, y0 + (r + 1) as f64 * ch, out.height);
        for c in 0..cols {
            let i = r as usize * cols as usize + c as usize;
            let Some(Some(p)) = values.get(i) else {
                continue;
            };
            if !p.is_finite() || ys.is_empty() {
                continue;
            }
            let colour = colormap(*p as f64);
            for y in ys.clone() {
                for x in pixels(x0 + c as f64 * cw, x0 + (c + 1) as f64 * cw, out.width) {
                    let under = out.pixel(x, y);
                    let blend = |k: usize| {
                        (under[k] as f64 * (1.0 - HEAT_OPACITY) + colour[k] as f64 * HEAT_OPACITY)
                            .round() as u8
                    };
                    out.set_pixel(x, y, [blend(0), blend(1), blend(2)]);
                }
            }
        }
    }
    out
}

/// How one slide's prediction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlideStatus {
    Succeeded,
    Failed,
}

/// Seconds spent in each step of one slide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// Opening the slide and reading its scale.
    #[serde(with = "crate::json_float")]
    pub open: f64,
    /// Reading the thumbnail and finding the tissue.
    #[serde(with = "crate::json_float")]
    pub tissue: f64,
    /// Reading the patches and running the model on them (overlapped, so one figure).
    #[serde(with = "crate::json_float")]
    pub patches: f64,
    /// Writing the outputs.
    #[serde(with = "crate::json_float")]
    pub outputs: f64,
    /// Everything, from opening to the summary.
    #[serde(with = "crate::json_float")]
    pub total: f64,
}

/// One slide's `summary.json`: what was read, at which scale, what was found, how long it took.
/// Written last, for failed slides too. Every field but `slide` and `status` may be missing
/// when read (an older or newer writer): it then reads as none or zero; unknown fields are
/// ignored.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SlideSummary {
    /// The slide's name: its folder ([`slide_name`], [`unique_names`]).
    pub slide: String,
    /// Where the slide was read from: a path or URL.
    #[serde(default)]
    pub source: String,
    pub status: SlideStatus,
    /// Why the slide failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// The slide's vendor, as OpenSlide names it ("aperio", "generic-tiff").
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub level0_width: Option<u64>,
    #[serde(default)]
    pub level0_height: Option<u64>,
    /// Microns per pixel at level 0.
    #[serde(default)]
    pub slide_mpp: Option<f64>,
    /// Where `slide_mpp` came from: "openslide.mpp-x", "tiff resolution tags", "--slide-mpp".
    #[serde(default)]
    pub mpp_source: Option<String>,
    /// The pyramid level patches were read from, and its microns per pixel.
    #[serde(default)]
    pub level: Option<u32>,
    #[serde(default)]
    pub level_mpp: Option<f64>,
    /// The scale the model wants, microns per pixel.
    #[serde(default, with = "crate::json_float")]
    pub target_mpp: f64,
    /// Patch side and step between patches, in pixels at `target_mpp`.
    #[serde(default)]
    pub patch_size: u32,
    #[serde(default)]
    pub stride: u32,
    /// Patches on tissue (all scored), and those at or above `threshold`.
    #[serde(default)]
    pub patches_tissue: u64,
    #[serde(default)]
    pub patches_positive: u64,
    /// Tissue area and IDC area, square millimetres.
    #[serde(default, with = "crate::json_float")]
    pub tissue_mm2: f64,
    #[serde(default, with = "crate::json_float")]
    pub idc_mm2: f64,
    /// `idc_mm2 / tissue_mm2` (0 without tissue).
    #[serde(default, with = "crate::json_float")]
    pub idc_fraction: f64,
    /// IDC regions: polygons in the GeoJSON.
    #[serde(default)]
    pub regions: u64,
    /// The probability at or above which a patch counts as IDC.
    #[serde(default, with = "crate::json_float")]
    pub threshold: f64,
    #[serde(default)]
    pub seconds: Timings,
    /// Patches scored per second of `seconds.patches`.
    #[serde(default, with = "crate::json_float")]
    pub patches_per_s: f64,
    /// Where the model ran ("cuda:0", "cpu").
    #[serde(default)]
    pub device: String,
    /// When the summary was written, RFC 3339 UTC.
    #[serde(default)]
    pub finished_at: String,
}

impl SlideSummary {
    /// The summary of a slide that failed for `reason`, finished now: the settings it was run
    /// with, nothing measured.
    pub fn failed(
        slide: &str,
        source: &str,
        target_mpp: f64,
        patch_size: u32,
        stride: u32,
        reason: &str,
    ) -> SlideSummary {
        SlideSummary {
            slide: slide.to_string(),
            source: source.to_string(),
            status: SlideStatus::Failed,
            reason: Some(reason.to_string()),
            vendor: None,
            level0_width: None,
            level0_height: None,
            slide_mpp: None,
            mpp_source: None,
            level: None,
            level_mpp: None,
            target_mpp,
            patch_size,
            stride,
            patches_tissue: 0,
            patches_positive: 0,
            tissue_mm2: 0.0,
            idc_mm2: 0.0,
            idc_fraction: 0.0,
            regions: 0,
            threshold: 0.0,
            seconds: Timings::default(),
            patches_per_s: 0.0,
            device: String::new(),
            finished_at: crate::clock::now_rfc3339(),
        }
    }
}

/// The name of the slide at `source` (a path or URL): its file name without directories (and,
/// for a URL, without `?query` or `#fragment`) and without its last extension, with characters
/// other than `A-Z a-z 0-9 . _ -` and a leading dot replaced by `_` (so it is a safe folder
/// name, never `..` or hidden); `slide` if nothing is left.
pub fn slide_name(source: &str) -> String {
    let path = if source.contains("://") {
        source.split(['?', '#']).next().unwrap_or(source)
    } else {
        source
    };
    let file = path
        .split(['/', '\\'])
        .rev()
        .find(|s| !s.is_empty())
        .unwrap_or("");
    // As Path::file_stem: a name that is only a leading dot and more has no extension.
    let stem = match file.rfind('.') {
        Some(i) if i > 0 => &file[..i],
        _ => file,
    };
    let name: String = stem
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let safe = c.is_ascii_alphanumeric() || matches!(c, '_' | '-') || (c == '.' && i > 0);
            if safe { c } else { '_' }
        })
        .collect();
    if name.is_empty() {
        "slide".to_string()
    } else {
        name
    }
}

/// [`slide_name`] of each of `sources`, made distinct: a name already given gets `-2`, `-3`, ...
/// (the first free one, in order), never taking a name another source has as its own.
pub fn unique_names(sources: &[String]) -> Vec<String> {
    let names: Vec<String> = sources.iter().map(|s| slide_name(s)).collect();
    let own: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut given: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(names.len());
    for name in &names {
        let mut unique = name.clone();
        let mut k = 2;
        while given.contains(&unique) || (unique != *name && own.contains(unique.as_str())) {
            unique = format!("{name}-{k}");
            k += 1;
        }
        given.insert(unique.clone());
        out.push(unique);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(minx: u64, p: &[f32]) -> PatchRow {
        PatchRow {
            minx,
            miny: 7,
            width: 224,
            height: 224,
            probabilities: p.to_vec(),
        }
    }

    #[test]
    fn csv_matches_wsinfer() {
        // What WSInfer 0.6.1 wrote (pandas 3.0, numpy 2.4) for these float32 probabilities.
        let classes = vec!["no IDC".to_string(), "a,b".to_string()];
        let rows = [row(0, &[0.1, 0.9]), row(10, &[1.0, 1e-7])];
        assert_eq!(
            String::from_utf8(wsinfer_csv(&rows, &classes)).unwrap(),
            "minx,miny,width,height,prob_no IDC,\"prob_a,b\"\n0,7,224,224,0.1,0.9\n10,7,224,224,1.0,1e-07\n"
        );
        let rows = [
            row(0, &[f32::NAN, f32::INFINITY]),
            row(1, &[0.333_333_3, 2.5e-30]),
            row(2, &[0.5]),
        ];
        assert_eq!(
            String::from_utf8(wsinfer_csv(&rows, &classes)).unwrap(),
            "minx,miny,width,height,prob_no IDC,\"prob_a,b\"\n0,7,224,224,,inf\n1,7,224,224,0.3333333,2.5e-30\n2,7,224,224,0.5,\n"
        );
        assert_eq!(wsinfer_csv(&[], &[]), b"minx,miny,width,height\n");
    }

    #[test]
    fn floats_are_numpy_shortest() {
        // As numpy 2.4 wrote them.
        for (x, want) in [
            (0.0f32, "0.0"),
            (-0.0, "-0.0"),
            (1e-4, "1e-04"),
            (1.000_000_05e-4, "0.000100000005"),
            (0.5, "0.5"),
            (1.0, "1.0"),
            (999_999.94, "999999.94"),
            (1e6, "1e+06"),
            (1.234_567_9e8, "1.2345679e+08"),
            (1e16, "1e+16"),
            // Halfway between two shortest candidates: the even one.
            (343_126.125_f64 as f32, "343126.12"),
            (155_662.625_f64 as f32, "155662.62"),
            (-1_752_255.25_f64 as f32, "-1.7522552e+06"),
            (1.5, "1.5"),
            (f32::MIN_POSITIVE, "1.1754944e-38"),
            (f32::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(numpy_float32(x), want, "{x}");
        }
        // Each reads back to the same float32.
        for bits in (0..u32::MAX).step_by(7_919_993) {
            let x = f32::from_bits(bits);
            if x.is_finite() {
                assert_eq!(numpy_float32(x).parse::<f32>().unwrap().to_bits(), bits);
            }
        }
    }

    #[test]
    fn colormap_runs_dark_to_light() {
        assert_eq!(colormap(0.0), VIRIDIS[0]);
        assert_eq!(colormap(1.0), VIRIDIS[8]);
        assert_eq!(colormap(2.0), VIRIDIS[8]);
        assert_eq!(colormap(f64::NAN), VIRIDIS[0]);
        assert_eq!(colormap(0.5), VIRIDIS[4]);
        let light = |c: [u8; 3]| 0.299 * c[0] as f64 + 0.587 * c[1] as f64 + 0.114 * c[2] as f64;
        for k in 0..100 {
            assert!(
                light(colormap(k as f64 / 100.0)) <= light(colormap((k + 1) as f64 / 100.0)) + 0.5
            );
        }
    }

    #[test]
    fn heatmap_blends_scored_cells_only() {
        let thumb = Image::new(10, 6);
        // 2 x 2 cells of 2.5 x 3 pixels from (1, 0): cell columns cover pixels 1..3 and 3..6.
        let values = [Some(1.0), None, Some(0.0), Some(f32::NAN)];
        let out = heatmap(&thumb, 2, 2, &values, (1.0, 0.0, 2.5, 3.0));
        let yellow = [254, 242, 135]; // 0.45 * 255 + 0.55 * viridis(1)
        let purple = [152, 115, 161];
        for y in 0..6 {
            for x in 0..10 {
                let want = match (x, y) {
                    (1..=2, 0..=2) => yellow,
                    (1..=2, 3..=5) => purple,
                    _ => [255, 255, 255],
                };
                assert_eq!(out.pixel(x, y), want, "({x}, {y})");
            }
        }
        // Nonsense geometry leaves the thumbnail; cells past the image are clipped.
        assert_eq!(heatmap(&thumb, 2, 2, &values, (0.0, 0.0, 0.0, 1.0)), thumb);
        let far = heatmap(&thumb, 100, 1, &[Some(0.5); 100], (0.0, 0.0, 1.0, 100.0));
        assert_ne!(far.pixel(9, 5), [255, 255, 255]);
    }

    #[test]
    fn summary_round_trips_and_reads_sparse_records() {
        let mut s = SlideSummary::failed("s1", "s3://b/s1.svs", 0.5, 224, 224, "no tissue found");
        assert_eq!(s.status, SlideStatus::Failed);
        assert_eq!(s.finished_at.len(), 20);
        s.seconds.total = f64::INFINITY;
        s.slide_mpp = Some(0.2527);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["status"], "failed");
        assert_eq!(json["seconds"]["total"], "Infinity");
        assert_eq!(json["slide_mpp"], 0.2527);
        assert_eq!(json["target_mpp"], 0.5);
        let back: SlideSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        let sparse: SlideSummary = serde_json::from_str(
            r#"{"slide":"a","status":"succeeded","new_field":1,"seconds":{"open":2}}"#,
        )
        .unwrap();
        assert_eq!(sparse.status, SlideStatus::Succeeded);
        assert_eq!((sparse.seconds.open, sparse.seconds.total), (2.0, 0.0));
        assert_eq!(sparse.level, None);
        assert!(serde_json::from_str::<SlideSummary>(r#"{"slide":"a"}"#).is_err());
    }

    #[test]
    fn slide_names_are_safe_and_distinct() {
        for (source, want) in [
            ("/data/slides/TCGA-A1.svs", "TCGA-A1"),
            ("s3://bucket/dir/patient 7.ome.tiff", "patient_7.ome"),
            ("https://host/x/slide.ndpi?sig=abc/def#frag", "slide"),
            ("gs://b/dir/", "dir"),
            ("C:\\slides\\a(1).mrxs", "a_1_"),
            ("..", "_"),
            (".hidden", "_hidden"),
            ("/", "slide"),
            ("", "slide"),
            ("naïve.svs", "na_ve"),
            ("noext", "noext"),
        ] {
            assert_eq!(slide_name(source), want, "{source}");
        }
        let sources: Vec<String> = ["a/x.svs", "b/x.svs", "x-2.tif", "c/x.ndpi", "y.svs"]
            .map(String::from)
            .to_vec();
        assert_eq!(unique_names(&sources), ["x", "x-3", "x-2", "x-4", "y"]);
    }
}
