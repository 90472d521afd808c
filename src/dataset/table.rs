//! The summary of a staged dataset as `idcctl stage` and `dataset show` print it: splits,
//! classes, what was padded or skipped and why.

use super::manifest::DatasetManifest;
use super::split::Split;
use crate::output::name_of;
use comfy_table::Table;
use std::collections::BTreeMap;

/// How many skipped files a table lists by name.
const SKIPPED_SHOWN: usize = 10;

/// The summary of a staged dataset: splits, classes, what was padded or skipped and why.
pub fn table(m: &DatasetManifest) -> String {
    if !m.is_binary() || m.source.kind.is_archive() {
        return class_table(m);
    }
    let t = binary_split_table(m);
    let split = &m.options.split;
    let mut out = format!(
        "dataset {}  (staged {} by {})\nsource  {} ({:?}, {} files seen, {} non-image files ignored)\nsplit   {:?}, val {}, test {}, seed {}\n{t}\n",
        m.id,
        m.created_at,
        m.staged_by,
        m.source.path,
        m.source.kind,
        m.source.files_seen,
        m.source.ignored,
        split.method,
        split.val,
        split.test,
        split.seed,
    );
    out += &format!(
        "class weights  {:.4} / {:.4}   train mean RGB {:.4} {:.4} {:.4}   std {:.4} {:.4} {:.4}\n",
        m.class_weights[0],
        m.class_weights[1],
        m.mean[0],
        m.mean[1],
        m.mean[2],
        m.std[0],
        m.std[1],
        m.std[2]
    );
    let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
    out += &format!(
        "padded {} edge patches ({})   duplicates counted once: {}   shards {} ({:.1} MB)\n",
        m.padded,
        name_of(&m.options.undersized),
        m.source.duplicates,
        m.shards.len(),
        bytes as f64 / 1e6
    );
    out += &skipped_lines(m);
    out
}

/// The two-class table: patients, patches and classes per split, then the total.
fn binary_split_table(m: &DatasetManifest) -> Table {
    let mut t = crate::output::table();
    t.set_header([
        "split",
        "patients",
        "patches",
        "no IDC (0)",
        "IDC (1)",
        "IDC %",
        "shards",
    ]);
    for split in Split::ALL {
        let s = m.splits.get(&split).cloned().unwrap_or_default();
        t.add_row([
            split.to_string(),
            s.patients.to_string(),
            s.records.to_string(),
            s.class_counts[0].to_string(),
            s.class_counts[1].to_string(),
            format!("{:.1}", 100.0 * s.positive_fraction()),
            m.shards_of(split).count().to_string(),
        ]);
    }
    let all = m.class_counts();
    let total = m.records();
    t.add_row([
        "total".to_string(),
        String::new(),
        total.to_string(),
        all[0].to_string(),
        all[1].to_string(),
        format!(
            "{:.1}",
            if total == 0 {
                0.0
            } else {
                100.0 * all[1] as f64 / total as f64
            }
        ),
        m.shards.len().to_string(),
    ]);
    t
}

/// The files skipped while staging: how many for each reason, then the first few by name.
fn skipped_lines(m: &DatasetManifest) -> String {
    if m.skipped.is_empty() {
        return "skipped 0 files\n".into();
    }
    let mut out = String::new();
    let mut why: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &m.skipped {
        *why.entry(s.reason.split(':').next().unwrap_or(&s.reason))
            .or_default() += 1;
    }
    out += &format!("skipped {} files:", m.skipped.len());
    for (reason, n) in why {
        out += &format!(" {n} {reason};");
    }
    out.pop();
    out += "\n";
    for s in m.skipped.iter().take(SKIPPED_SHOWN) {
        out += &format!("  {}: {}\n", s.path, s.reason);
    }
    if m.skipped.len() > SKIPPED_SHOWN {
        out += &format!(
            "  … and {} more (-o json lists all)\n",
            m.skipped.len() - SKIPPED_SHOWN
        );
    }
    out
}

/// The summary of a K-class (or archive) dataset: images per class and split, the split rule,
/// the image shape and statistics.
fn class_table(m: &DatasetManifest) -> String {
    let mut t = crate::output::table();
    t.set_header(["class", "train", "val", "test", "total", "weight"]);
    let all = m.class_counts();
    let split = |s: Split| m.splits.get(&s).cloned().unwrap_or_default();
    for (c, total) in all.iter().enumerate() {
        let mut row = vec![format!(
            "{c} {}",
            m.classes.get(c).map_or("", |n| n.as_str())
        )];
        row.extend(Split::ALL.map(|s| split(s).count_of(c).to_string()));
        row.push(total.to_string());
        row.push(format!(
            "{:.4}",
            m.class_weights.get(c).copied().unwrap_or(0.0)
        ));
        t.add_row(row);
    }
    let mut row = vec!["images".to_string()];
    row.extend(Split::ALL.map(|s| split(s).records.to_string()));
    row.push(m.records().to_string());
    row.push(String::new());
    t.add_row(row);
    let o = &m.options.split;
    let rule = if m.source.kind.is_archive() {
        m.archive_split_rule()
    } else {
        format!(
            "{:?}, val {}, test {}, seed {}",
            o.method, o.val, o.test, o.seed
        )
    };
    let stats = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
    format!(
        "dataset {}  (staged {} by {})\nsource  {} ({}, {} files seen)\nimages  {} ({} classes)   split {rule}\n{t}\ntrain mean {}   std {}   shards {} ({:.1} MB)\n",
        m.id,
        m.created_at,
        m.staged_by,
        m.source.path,
        name_of(&m.source.kind),
        m.source.files_seen,
        m.image.shape(),
        m.num_classes(),
        stats(&m.mean),
        stats(&m.std),
        m.shards.len(),
        bytes as f64 / 1e6
    )
}
