//! Runs side by side: their configs (which values differ) and their test and validation metrics
//! (which run is best on each), for `idcctl compare` as a table, JSON, YAML or HTML.

use super::RunData;
use serde::Serialize;
use std::collections::BTreeMap;

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// One metric across the runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricRow {
    /// `test at 0.5`, `test at val threshold`, `val (best epoch)` or `training`; for K classes
    /// `test` instead of the first two.
    pub group: String,
    pub metric: String,
    /// One value per run, in the order the runs were given.
    pub values: Vec<f64>,
    /// How the row ranks runs (none: the row is information only).
    pub better: Option<Better>,
    /// Indices of the best runs; empty when every run has the same value or nothing ranks.
    pub best: Vec<usize>,
    /// Decimals to show.
    #[serde(skip)]
    pub decimals: usize,
}

impl MetricRow {
    pub fn show(&self, i: usize) -> String {
        format!("{:.*}", self.decimals, self.values[i])
    }
}

/// One config value across the runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigRow {
    /// Dotted path in the training spec (`optimizer.lr`), or `dataset`, `device`.
    pub key: String,
    /// One value per run; `None` where a run has no such key (another model kind).
    pub values: Vec<Option<String>>,
    pub differs: bool,
}

/// Runs side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub runs: Vec<String>,
    pub metrics: Vec<MetricRow>,
    pub config: Vec<ConfigRow>,
}

/// Flattens a JSON value into dotted keys and display values (`model.kind: simple_cnn`).
pub fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                flatten(&key(k), v, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        serde_json::Value::Null => {
            out.insert(prefix.to_string(), "none".into());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The indices holding the best value of `values`, none when they are all equal.
pub fn best_of(values: &[f64], better: Better) -> Vec<usize> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let Some(best) = finite.iter().copied().reduce(|a, b| match better {
        Better::Higher => a.max(b),
        Better::Lower => a.min(b),
    }) else {
        return vec![];
    };
    if finite.len() == values.len() && values.iter().all(|&v| v == best) {
        return vec![];
    }
    (0..values.len()).filter(|&i| values[i] == best).collect()
}

type Of = fn(&RunData) -> f64;

/// A run's top-`k` test accuracy (NaN where it has none: two classes, or no more than k).
fn top_k(r: &RunData, k: u32) -> f64 {
    r.report
        .test
        .multiclass()
        .and_then(|m| m.top_k.iter().find(|t| t.k == k))
        .map_or(f64::NAN, |t| t.accuracy)
}

/// Compares `runs`, in the order given.
pub fn compare(runs: &[RunData]) -> Comparison {
    let mut rows = MetricRows { runs, rows: vec![] };
    let binary = runs
        .iter()
        .all(|r| r.report.test.binary().is_some() && r.report.test_at_val_threshold.is_some());
    if binary {
        rows.binary();
    } else {
        rows.multiclass();
    }
    rows.training();
    Comparison {
        runs: runs.iter().map(|r| r.id().to_string()).collect(),
        metrics: rows.rows,
        config: config_rows(runs),
    }
}

/// The metric rows of a comparison as they are added, each with its best run marked.
struct MetricRows<'a> {
    runs: &'a [RunData],
    rows: Vec<MetricRow>,
}

impl MetricRows<'_> {
    fn row(
        &mut self,
        group: &str,
        metric: &str,
        of: &dyn Fn(&RunData) -> f64,
        better: Option<Better>,
        decimals: usize,
    ) {
        let values: Vec<f64> = self.runs.iter().map(of).collect();
        let best = better.map(|b| best_of(&values, b)).unwrap_or_default();
        self.rows.push(MetricRow {
            group: group.into(),
            metric: metric.into(),
            values,
            better,
            best,
            decimals,
        });
    }

    /// Two classes: test at 0.5 and at the validation threshold, and validation.
    fn binary(&mut self) {
        use crate::metrics::MetricName::{self, *};
        let at = |r: &RunData| {
            r.report
                .test_at_val_threshold
                .clone()
                .expect("checked above")
        };
        for m in MetricName::ALL {
            self.row(
                "test at 0.5",
                m.label(),
                &|r| m.of(&r.report.test),
                Some(better(m)),
                4,
            );
        }
        self.row(
            "test at val threshold",
            "threshold",
            &|r| at(r).threshold,
            None,
            3,
        );
        for m in [BalancedAccuracy, Precision, Recall, F1] {
            self.row(
                "test at val threshold",
                m.label(),
                &|r| m.of_binary(&at(r)),
                Some(better(m)),
                4,
            );
        }
        for m in [BalancedAccuracy, F1, RocAuc, PrAuc, Loss] {
            self.row(
                "val (best epoch)",
                m.label(),
                &|r| m.of(&r.report.val),
                Some(better(m)),
                4,
            );
        }
    }

    /// K classes (or a mix): macro averages where a metric is per class.
    fn multiclass(&mut self) {
        use crate::metrics::MetricName::*;
        for m in super::MULTICLASS_SHOWN {
            self.row(
                "test",
                m.label_multiclass(),
                &|r| m.of(&r.report.test),
                Some(better(m)),
                4,
            );
        }
        let extra: [(&str, Of); 3] = [
            ("weighted F1", |r| {
                r.report
                    .test
                    .multiclass()
                    .map_or(f64::NAN, |m| m.weighted_f1)
            }),
            ("top-3 accuracy", |r| top_k(r, 3)),
            ("top-5 accuracy", |r| top_k(r, 5)),
        ];
        for (name, f) in extra {
            self.row("test", name, &f, Some(Better::Higher), 4);
        }
        for m in [Accuracy, F1, Loss] {
            self.row(
                "val (best epoch)",
                m.label_multiclass(),
                &|r| m.of(&r.report.val),
                Some(better(m)),
                4,
            );
        }
    }

    /// How long each run trained, and how fast.
    fn training(&mut self) {
        let training: [(&str, Of, Option<Better>, usize); 4] = [
            ("best epoch", |r| r.report.best_epoch as f64, None, 0),
            ("epochs run", |r| r.report.epochs_run as f64, None, 0),
            ("train seconds", |r| r.report.train_seconds, None, 1),
            ("images/s", |r| r.report.train_images_per_s, None, 0),
        ];
        for (name, f, b, d) in training {
            self.row("training", name, &f, b, d);
        }
    }
}

fn better(m: crate::metrics::MetricName) -> Better {
    if m.higher_is_better() {
        Better::Higher
    } else {
        Better::Lower
    }
}

/// Every config key of any run (with its dataset and device), each run's value beside it.
fn config_rows(runs: &[RunData]) -> Vec<ConfigRow> {
    let flat: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|r| {
            let mut m = BTreeMap::new();
            flatten("", &r.report.config, &mut m);
            m.insert("dataset".into(), r.report.dataset_id.clone());
            m.insert("device".into(), r.report.device.clone());
            m
        })
        .collect();
    let mut keys: Vec<&String> = flat.iter().flat_map(|m| m.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let values: Vec<Option<String>> = flat.iter().map(|m| m.get(k).cloned()).collect();
            let differs = values.windows(2).any(|w| w[0] != w[1]);
            ConfigRow {
                key: k.clone(),
                values,
                differs,
            }
        })
        .collect()
}

/// The comparison as terminal tables: metrics with the best value of each row marked `*`, then
/// the config with differing keys marked `*`.
pub fn table(c: &Comparison) -> String {
    let mut header = vec!["metric".to_string()];
    header.extend(c.runs.iter().cloned());
    let mut t = crate::output::table();
    t.set_header(header.clone());
    let mut group = "";
    for m in &c.metrics {
        let name = if m.group != group {
            group = &m.group;
            format!("{}: {}", m.group, m.metric)
        } else {
            format!("  {}", m.metric)
        };
        let mut cells = vec![name];
        for i in 0..m.values.len() {
            let mark = if m.best.contains(&i) { " *" } else { "" };
            cells.push(format!("{}{mark}", m.show(i)));
        }
        t.add_row(cells);
    }
    header[0] = "config".into();
    let mut ct = crate::output::table();
    ct.set_header(header);
    for r in &c.config {
        let mut cells = vec![format!("{}{}", if r.differs { "* " } else { "  " }, r.key)];
        cells.extend(
            r.values
                .iter()
                .map(|v| v.clone().unwrap_or_else(|| "-".into())),
        );
        ct.add_row(cells);
    }
    let differing = c.config.iter().filter(|r| r.differs).count();
    format!(
        "{t}\n* best of the row\n\n{ct}\n* differs between the runs ({differing} of {} keys)\n",
        c.config.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_is_marked_only_where_runs_differ() {
        assert_eq!(best_of(&[0.8, 0.9, 0.85], Better::Higher), vec![1]);
        assert_eq!(best_of(&[0.3, 0.2, 0.2], Better::Lower), vec![1, 2]);
        assert!(best_of(&[0.5, 0.5], Better::Higher).is_empty());
        assert_eq!(best_of(&[f64::NAN, 0.4], Better::Higher), vec![1]);
        assert!(best_of(&[], Better::Higher).is_empty());
    }

    #[test]
    fn config_flattens_to_dotted_keys() {
        let v = serde_json::json!({
            "model": {"kind": "simple_cnn", "width": 8, "dropout": 0.3},
            "early_stopping": null,
            "epochs": 2,
            "schedule": {"kind": "constant"},
            "extra": {},
        });
        let mut m = BTreeMap::new();
        flatten("", &v, &mut m);
        assert_eq!(m["model.kind"], "simple_cnn");
        assert_eq!(m["model.width"], "8");
        assert_eq!(m["model.dropout"], "0.3");
        assert_eq!(m["early_stopping"], "none");
        assert_eq!(m["epochs"], "2");
        assert_eq!(m["extra"], "{}");
    }
}
