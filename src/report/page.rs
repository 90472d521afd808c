//! The HTML shell every report page shares (style, the check script, title) and the writing of
//! page files, with errors naming the file.

use super::ReportError;
use super::plot::escape;
use std::fmt::Write;
use std::path::Path;

const CSS: &str = r#"
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 0; background: #f4f5f7; color: #1f2328; font-size: 14px; }
main { max-width: 1220px; margin: 0 auto; padding: 20px 24px 40px; }
h1 { font-size: 22px; margin: 4px 0; }
h2 { font-size: 17px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 16px 0 8px; }
.sub { color: #57606a; margin: 0 0 16px; }
section { background: #fff; border: 1px solid #d8dee4; border-radius: 6px; padding: 16px 18px;
  margin: 0 0 16px; }
table { border-collapse: collapse; }
th, td { padding: 4px 12px; border-bottom: 1px solid #eaeef2; text-align: right;
  font-variant-numeric: tabular-nums; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #d0d7de; }
td.group { font-weight: bold; padding-top: 10px; color: #57606a; }
.kv td:first-child { color: #57606a; }
table.left td, table.left th { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.plots figure { margin: 0; }
.plots img { max-width: 100%; height: auto; border: 1px solid #d8dee4; background: #fff; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(118px, 1fr)); gap: 10px; }
.patch { margin: 0; text-align: center; font-size: 12px; color: #57606a; }
.patch img { width: 100px; height: 100px; image-rendering: pixelated; border: 3px solid; }
.patch .p { font-weight: bold; color: #1f2328; font-size: 13px; }
.fp img { border-color: #e15759; }
.fn img { border-color: #f28e2b; }
.wrong img { border-color: #e15759; }
table.confusion td { text-align: center; min-width: 34px; padding: 4px 6px; }
table.confusion th { font-weight: normal; padding: 4px 6px; }
table.confusion thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
  vertical-align: bottom; height: 92px; }
pre { background: #f6f8fa; padding: 10px 12px; overflow: auto; font-size: 12.5px; margin: 0; }
.best { font-weight: bold; color: #1a7f37; }
tr.diff td { background: #fff8c5; font-weight: bold; }
.note { background: #fff8e6; border-left: 4px solid #f28e2b; padding: 6px 10px; margin: 6px 0; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  margin-right: 6px; vertical-align: -1px; }
.legend { color: #57606a; font-size: 12px; margin-top: 8px; }
.slide { margin: 18px 0 0; padding-top: 10px; border-top: 1px solid #eaeef2; }
.slide h3 { margin: 0 0 2px; }
.slide .scores { margin: 0 0 8px; color: #57606a; }
.slide .scores b { color: #1f2328; }
.maps { display: flex; gap: 10px; align-items: flex-start; }
.maps figure { margin: 0; flex: 1 1 0; min-width: 0; text-align: center; font-size: 12px;
  color: #57606a; }
.maps img { display: block; width: 100%; height: auto; max-height: 75vh; object-fit: contain;
  border: 1px solid #d8dee4; }
.maps .nomap { border: 1px dashed #d0d7de; padding: 30px 0; color: #8c959f; }
.slide-legend { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 28px; }
.slide-legend .scale-key { display: inline-flex; align-items: center; gap: 4px; font-size: 12px;
  color: #57606a; }
.slide-legend .key { margin-right: 16px; font-size: 12px; color: #57606a; white-space: nowrap; }
.slide-legend .swatch { width: 14px; height: 14px; box-sizing: border-box; }
footer { color: #8c959f; font-size: 12px; margin-top: 20px; }
"#;

/// Checks on load that every plot and patch rendered; the result goes on `<body>`.
const CHECK_SCRIPT: &str = r#"
(function () {
  function check() {
    var ok = 0, failed = [], patches = 0, patchesFailed = [], maps = 0, mapsFailed = [];
    document.querySelectorAll('img[data-plot]').forEach(function (img) {
      if (img.complete && img.naturalWidth > 0 && img.naturalHeight > 0) { ok++; }
      else { failed.push(img.getAttribute('src')); }
    });
    document.querySelectorAll('svg[data-plot]').forEach(function (svg) {
      var b = svg.getBoundingClientRect();
      if (b.width > 0 && b.height > 0) { ok++; } else { failed.push(svg.id || 'inline-svg'); }
    });
    document.querySelectorAll('img[data-patch]').forEach(function (img) {
      var w = Number(img.getAttribute('data-w')), h = Number(img.getAttribute('data-h'));
      if (img.complete && img.naturalWidth === w && img.naturalHeight === h) { patches++; }
      else { patchesFailed.push(img.getAttribute('data-patch')); }
    });
    document.querySelectorAll('img[data-map]').forEach(function (img) {
      var w = Number(img.getAttribute('data-w')), h = Number(img.getAttribute('data-h'));
      if (img.complete && img.naturalWidth === w && img.naturalHeight === h) { maps++; }
      else { mapsFailed.push(img.getAttribute('data-map')); }
    });
    var b = document.body;
    b.setAttribute('data-maps-ok', String(maps));
    b.setAttribute('data-maps-failed', mapsFailed.join(' '));
    b.setAttribute('data-plots-ok', String(ok));
    b.setAttribute('data-plots-failed', failed.join(' '));
    b.setAttribute('data-patches-ok', String(patches));
    b.setAttribute('data-patches-failed', patchesFailed.join(' '));
    b.setAttribute('data-checked', 'true');
  }
  if (document.readyState === 'complete') { check(); } else { window.addEventListener('load', check); }
})();
"#;

/// A whole page around `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}<footer>made by idcctl {} on {}</footer>\n</main>\n<script>{CHECK_SCRIPT}</script>\n</body>\n</html>\n",
        escape(title),
        env!("CARGO_PKG_VERSION"),
        escape(&crate::clock::now_rfc3339()),
    )
}

pub fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

pub fn create_dir(dir: &Path) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

pub fn kv_table(rows: &[(&str, String)]) -> String {
    let mut s = String::from("<table class=\"kv left\">\n");
    for (k, v) in rows {
        let _ = writeln!(s, "<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(v));
    }
    s.push_str("</table>\n");
    s
}

pub fn notes(notes: &[String]) -> String {
    notes.iter().map(|n| note(n)).collect()
}

/// One note paragraph.
pub fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", escape(text))
}
