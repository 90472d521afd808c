//! The index of a slide prediction (`index.html` in `idcctl predict`'s `--out`): per slide its
//! thumbnail and heat map side by side with its numbers, failed slides with their reasons;
//! and `slides.csv`, the same numbers one row per slide.

use super::page::{note, page};
use super::plot::escape;
use crate::slide::outputs::{SlideStatus, SlideSummary, files};
use std::fmt::Write;

/// The index page over `slides`, whose outputs lie in folders named after them beside it.
pub fn index_page(title: &str, slides: &[SlideSummary]) -> String {
    let failed = slides
        .iter()
        .filter(|s| s.status == SlideStatus::Failed)
        .count();
    let mut body = format!(
        "<h1>{}</h1>\n<p class=\"sub\">{} slide(s): {} done, {failed} failed. Heat maps show p(IDC) per patch over the slide's thumbnail; regions.geojson imports into QuPath (File > Import objects).</p>\n",
        escape(title),
        slides.len(),
        slides.len() - failed,
    );
    body.push_str(&summary_table(slides));
    for s in slides {
        let _ = write!(body, "<section>\n<h2>{}</h2>\n", escape(&s.slide));
        match (&s.status, &s.reason) {
            (SlideStatus::Failed, reason) => {
                body.push_str(&note(&format!(
                    "{}: failed: {}",
                    s.source,
                    reason.as_deref().unwrap_or("no reason given")
                )));
            }
            (SlideStatus::Succeeded, _) => {
                let dir = url_path(&s.slide);
                let _ = write!(
                    body,
                    "<p class=\"sub\">{}</p>\n<div class=\"plots\">\n<figure {SIDE}><img src=\"{dir}/{}\" alt=\"thumbnail of {}\"><figcaption>slide</figcaption></figure>\n<figure {SIDE}><img src=\"{dir}/{}\" alt=\"p(IDC) heat map of {}\"><figcaption>p(IDC) per patch</figcaption></figure>\n</div>\n<p><a href=\"{dir}/{}\">patches.csv</a> &middot; <a href=\"{dir}/{}\">regions.geojson</a> &middot; <a href=\"{dir}/{}\">tissue mask</a> &middot; <a href=\"{dir}/{}\">summary.json</a></p>\n",
                    escape(&s.source),
                    files::THUMBNAIL,
                    escape(&s.slide),
                    files::HEATMAP,
                    escape(&s.slide),
                    files::CSV,
                    files::GEOJSON,
                    files::TISSUE,
                    files::SUMMARY,
                );
            }
        }
        body.push_str("</section>\n");
    }
    page(title, &body)
}

/// Two figures side by side, each half the row (thumbnails are up to 2,048 pixels wide).
const SIDE: &str = "style=\"flex: 1 1 45%; min-width: 0\"";

/// A slide's folder name as a relative URL (names are `[A-Za-z0-9._-]`, so as they are).
fn url_path(name: &str) -> String {
    escape(name)
}

fn summary_table(slides: &[SlideSummary]) -> String {
    let mut s = String::from(
        "<section>\n<table>\n<thead><tr><th>slide</th><th>status</th><th>tissue mm²</th><th>IDC mm²</th><th>IDC %</th><th>patches</th><th>IDC patches</th><th>regions</th><th>seconds</th></tr></thead>\n<tbody>\n",
    );
    for x in slides {
        let ok = x.status == SlideStatus::Succeeded;
        let num = |v: String| if ok { v } else { String::new() };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
            escape(&x.slide),
            if ok { "done" } else { "failed" },
            num(format!("{:.2}", x.tissue_mm2)),
            num(format!("{:.2}", x.idc_mm2)),
            num(format!("{:.1}", 100.0 * x.idc_fraction)),
            num(x.patches_tissue.to_string()),
            num(x.patches_positive.to_string()),
            num(x.regions.to_string()),
            x.seconds.total
        );
    }
    s.push_str("</tbody>\n</table>\n</section>\n");
    s
}

/// One CSV row per slide: its status and reason, areas, counts and timings.
pub fn summaries_csv(slides: &[SlideSummary]) -> Vec<u8> {
    let mut out = String::from(
        "slide,source,status,reason,tissue_mm2,idc_mm2,idc_fraction,patches_tissue,patches_positive,regions,slide_mpp,level,seconds\n",
    );
    let quote = |v: &str| {
        if v.contains([',', '"', '\n']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_string()
        }
    };
    for s in slides {
        let _ = writeln!(
            out,
            "{},{},{},{},{:.4},{:.4},{:.4},{},{},{},{},{},{:.2}",
            quote(&s.slide),
            quote(&s.source),
            if s.status == SlideStatus::Succeeded {
                "succeeded"
            } else {
                "failed"
            },
            quote(s.reason.as_deref().unwrap_or("")),
            s.tissue_mm2,
            s.idc_mm2,
            s.idc_fraction,
            s.patches_tissue,
            s.patches_positive,
            s.regions,
            s.slide_mpp.map_or(String::new(), |v| format!("{v:.4}")),
            s.level.map_or(String::new(), |v| v.to_string()),
            s.seconds.total
        );
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_slides_show_their_reason_and_the_rest_their_maps() {
        let bad = SlideSummary::failed("b", "/s/b.svs", 4.0, 50, 50, "not a slide, \"b\"");
        let mut good = SlideSummary::failed("a", "/s/a.svs", 4.0, 50, 50, "");
        good.status = SlideStatus::Succeeded;
        good.reason = None;
        good.patches_tissue = 10;
        let html = index_page("Slides", &[good.clone(), bad.clone()]);
        assert!(html.contains("2 slide(s): 1 done, 1 failed"), "{html}");
        assert!(html.contains("a/heatmap.png") && html.contains("a/thumbnail.png"));
        assert!(!html.contains("b/heatmap.png"));
        assert!(
            html.contains("failed: not a slide, &quot;b&quot;"),
            "{html}"
        );
        let csv = String::from_utf8(summaries_csv(&[good, bad])).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[2].starts_with("b,/s/b.svs,failed,\"not a slide, \"\"b\"\"\","),
            "{csv}"
        );
    }
}
