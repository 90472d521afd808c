//! Binary classification metrics, the metrics record (`metrics.jsonl`) and the evaluation report
//! (`report.json`): computed by the worker, read by idcctl.

use serde::{Deserialize, Serialize};

/// Confusion matrix at a threshold (class 1, IDC, is positive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tn: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tp: u64,
}

/// Every metric of one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub count: u64,
    #[serde(with = "crate::json_float")]
    pub loss: f64,
    #[serde(with = "crate::json_float")]
    pub threshold: f64,
    #[serde(with = "crate::json_float")]
    pub accuracy: f64,
    #[serde(with = "crate::json_float")]
    pub balanced_accuracy: f64,
    #[serde(with = "crate::json_float")]
    pub precision: f64,
    /// Sensitivity.
    #[serde(with = "crate::json_float")]
    pub recall: f64,
    #[serde(with = "crate::json_float")]
    pub specificity: f64,
    #[serde(with = "crate::json_float")]
    pub f1: f64,
    #[serde(with = "crate::json_float")]
    pub roc_auc: f64,
    /// Average precision (area under the precision-recall curve, step-wise).
    #[serde(with = "crate::json_float")]
    pub pr_auc: f64,
    pub confusion: Confusion,
}

/// A metric name usable for early stopping and model selection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    Loss,
    Accuracy,
    BalancedAccuracy,
    Precision,
    Recall,
    Specificity,
    #[default]
    F1,
    RocAuc,
    PrAuc,
}

impl MetricName {
    /// The value of this metric in `m`.
    pub fn of(self, m: &BinaryMetrics) -> f64 {
        match self {
            MetricName::Loss => m.loss,
            MetricName::Accuracy => m.accuracy,
            MetricName::BalancedAccuracy => m.balanced_accuracy,
            MetricName::Precision => m.precision,
            MetricName::Recall => m.recall,
            MetricName::Specificity => m.specificity,
            MetricName::F1 => m.f1,
            MetricName::RocAuc => m.roc_auc,
            MetricName::PrAuc => m.pr_auc,
        }
    }

    /// Whether larger is better (all but the loss).
    pub fn higher_is_better(self) -> bool {
        self != MetricName::Loss
    }

    /// Every metric, in the order reports and tables show them.
    pub const ALL: [MetricName; 9] = [
        MetricName::Accuracy,
        MetricName::BalancedAccuracy,
        MetricName::Precision,
        MetricName::Recall,
        MetricName::Specificity,
        MetricName::F1,
        MetricName::RocAuc,
        MetricName::PrAuc,
        MetricName::Loss,
    ];

    /// Its name in reports, tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            MetricName::Loss => "loss",
            MetricName::Accuracy => "accuracy",
            MetricName::BalancedAccuracy => "balanced accuracy",
            MetricName::Precision => "precision",
            MetricName::Recall => "recall (sensitivity)",
            MetricName::Specificity => "specificity",
            MetricName::F1 => "F1",
            MetricName::RocAuc => "ROC-AUC",
            MetricName::PrAuc => "PR-AUC",
        }
    }
}

/// The records of a `metrics.jsonl`, in order; a line that is not a record (a torn last line
/// of a killed worker) is left out.
pub fn parse_jsonl(bytes: &[u8]) -> Vec<MetricsRecord> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The confusion matrix of `probs` (probability of IDC) against `labels` at `threshold`
/// (predicted positive when `p >= threshold`).
pub fn confusion(probs: &[f32], labels: &[u8], threshold: f64) -> Confusion {
    let mut c = Confusion::default();
    for (&p, &y) in probs.iter().zip(labels) {
        match (p as f64 >= threshold, y == 1) {
            (true, true) => c.tp += 1,
            (true, false) => c.fp += 1,
            (false, true) => c.fn_ += 1,
            (false, false) => c.tn += 1,
        }
    }
    c
}

/// All metrics of `probs` against `labels` at `threshold`; `loss` is passed through.
pub fn evaluate(probs: &[f32], labels: &[u8], threshold: f64, loss: f64) -> BinaryMetrics {
    assert_eq!(probs.len(), labels.len(), "one probability per label");
    let c = confusion(probs, labels, threshold);
    let precision = ratio(c.tp, c.tp + c.fp);
    let recall = ratio(c.tp, c.tp + c.fn_);
    let specificity = ratio(c.tn, c.tn + c.fp);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    BinaryMetrics {
        count: probs.len() as u64,
        loss,
        threshold,
        accuracy: ratio(c.tp + c.tn, probs.len() as u64),
        balanced_accuracy: (recall + specificity) / 2.0,
        precision,
        recall,
        specificity,
        f1,
        roc_auc: roc_auc(probs, labels),
        pr_auc: average_precision(probs, labels),
        confusion: c,
    }
}

/// Indices of `probs` by descending probability.
fn by_score(probs: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    idx
}

/// Points of the ROC curve `(fpr, tpr, threshold)`, one per distinct score, from (0, 0).
pub fn roc_curve(probs: &[f32], labels: &[u8]) -> Vec<(f64, f64, f64)> {
    let pos = labels.iter().filter(|&&y| y == 1).count() as f64;
    let neg = labels.len() as f64 - pos;
    let idx = by_score(probs);
    let (mut tp, mut fp) = (0.0, 0.0);
    // The first point predicts nothing positive: its threshold is above every probability.
    let mut out = vec![(0.0, 0.0, 1.0 + f64::EPSILON)];
    for (k, &i) in idx.iter().enumerate() {
        if labels[i] == 1 {
            tp += 1.0
        } else {
            fp += 1.0
        }
        let last_of_tie = k + 1 == idx.len() || probs[idx[k + 1]] != probs[i];
        if last_of_tie {
            out.push((
                if neg > 0.0 { fp / neg } else { 0.0 },
                if pos > 0.0 { tp / pos } else { 0.0 },
                probs[i] as f64,
            ));
        }
    }
    out
}

/// Area under the ROC curve (trapezoids, ties handled); 0.5 when one class is absent.
pub fn roc_auc(probs: &[f32], labels: &[u8]) -> f64 {
    let pos = labels.iter().filter(|&&y| y == 1).count();
    if pos == 0 || pos == labels.len() {
        return 0.5;
    }
    roc_curve(probs, labels)
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum()
}

/// Points of the precision-recall curve `(recall, precision, threshold)`, one per distinct score.
pub fn pr_curve(probs: &[f32], labels: &[u8]) -> Vec<(f64, f64, f64)> {
    let pos = labels.iter().filter(|&&y| y == 1).count() as f64;
    let idx = by_score(probs);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut out = vec![];
    for (k, &i) in idx.iter().enumerate() {
        if labels[i] == 1 {
            tp += 1.0
        } else {
            fp += 1.0
        }
        if k + 1 == idx.len() || probs[idx[k + 1]] != probs[i] {
            out.push((
                if pos > 0.0 { tp / pos } else { 0.0 },
                tp / (tp + fp),
                probs[i] as f64,
            ));
        }
    }
    out
}

/// Average precision: sum over thresholds of (recall step) x precision, as scikit-learn computes
/// it; 0 when there is no positive.
pub fn average_precision(probs: &[f32], labels: &[u8]) -> f64 {
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    for (r, p, _) in pr_curve(probs, labels) {
        ap += (r - prev_recall) * p;
        prev_recall = r;
    }
    ap
}

/// The threshold that maximises F1 on (`probs`, `labels`); 0.5 when there is no positive.
pub fn f1_optimal_threshold(probs: &[f32], labels: &[u8]) -> f64 {
    let pos = labels.iter().filter(|&&y| y == 1).count() as f64;
    if pos == 0.0 {
        return 0.5;
    }
    let mut best = (f64::MIN, 0.5);
    for (r, p, t) in pr_curve(probs, labels) {
        let f1 = if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        };
        if f1 > best.0 {
            best = (f1, t);
        }
    }
    best.1
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsRecord {
    /// Periodic training progress.
    Step {
        epoch: u32,
        step: u64,
        #[serde(with = "crate::json_float")]
        loss: f64,
        #[serde(with = "crate::json_float")]
        lr: f64,
        #[serde(with = "crate::json_float")]
        images_per_s: f64,
    },
    /// End of an epoch, with the validation metrics.
    Epoch {
        epoch: u32,
        #[serde(with = "crate::json_float")]
        train_loss: f64,
        #[serde(with = "crate::json_float")]
        lr: f64,
        val: BinaryMetrics,
        #[serde(with = "crate::json_float")]
        duration_s: f64,
        #[serde(with = "crate::json_float")]
        images_per_s: f64,
        best: bool,
    },
}

/// The evaluation report (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    pub dataset_id: String,
    pub model: String,
    pub device: String,
    /// Epoch whose checkpoint was evaluated (the best on validation).
    pub best_epoch: u32,
    pub epochs_run: u32,
    /// Test metrics at 0.5.
    pub test: BinaryMetrics,
    /// Test metrics at the F1-optimal threshold chosen on validation.
    pub test_at_val_threshold: BinaryMetrics,
    pub val: BinaryMetrics,
    /// ROC curve on test: `(fpr, tpr, threshold)`, thinned.
    pub roc: Vec<(f64, f64, f64)>,
    /// Precision-recall curve on test: `(recall, precision, threshold)`, thinned.
    pub pr: Vec<(f64, f64, f64)>,
    #[serde(with = "crate::json_float")]
    pub train_seconds: f64,
    #[serde(with = "crate::json_float")]
    pub train_images_per_s: f64,
    /// The training spec as run.
    pub config: serde_json::Value,
    pub finished_at: String,
    /// The most confidently misclassified test patches at 0.5: up to
    /// [`MISCLASSIFIED_PER_KIND`] false positives, then as many false negatives (empty in
    /// reports written before this field existed).
    #[serde(default)]
    pub misclassified: Vec<Misclassified>,
}

/// How many false positives, and how many false negatives, a report keeps.
pub const MISCLASSIFIED_PER_KIND: usize = 16;

/// Which way a patch was misclassified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No IDC, predicted IDC.
    FalsePositive,
    /// IDC, predicted no IDC.
    FalseNegative,
}

/// A misclassified test patch and where its pixels are in the staged dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Misclassified {
    pub error: ErrorKind,
    /// Key of the shard holding it, relative to the dataset URL (`shards/test-00000.idcs`).
    pub shard: String,
    /// Index of its record in the shard.
    pub record: u64,
    pub patient: u32,
    pub x: u32,
    pub y: u32,
    /// True label (0 no IDC, 1 IDC).
    pub label: u8,
    /// Predicted probability of IDC.
    pub probability: f64,
}

/// The most confidently misclassified of `probs` against `labels` at `threshold` (predicted
/// positive when `p >= threshold`): up to `per_kind` false positives by descending probability,
/// then up to `per_kind` false negatives by ascending probability; ties keep index order.
/// Returns indices into `probs`.
pub fn most_confident_errors(
    probs: &[f32],
    labels: &[u8],
    threshold: f64,
    per_kind: usize,
) -> Vec<(usize, ErrorKind)> {
    assert_eq!(probs.len(), labels.len(), "one probability per label");
    let mut fp: Vec<usize> = (0..probs.len())
        .filter(|&i| labels[i] != 1 && probs[i] as f64 >= threshold)
        .collect();
    let mut fn_: Vec<usize> = (0..probs.len())
        .filter(|&i| labels[i] == 1 && (probs[i] as f64) < threshold)
        .collect();
    // Stable sorts: equal probabilities stay in index order.
    fp.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    fn_.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
    fp.truncate(per_kind);
    fn_.truncate(per_kind);
    fp.into_iter()
        .map(|i| (i, ErrorKind::FalsePositive))
        .chain(fn_.into_iter().map(|i| (i, ErrorKind::FalseNegative)))
        .collect()
}

/// Keeps at most `max` points of a curve, always including both ends.
pub fn thin<T: Copy>(curve: &[T], max: usize) -> Vec<T> {
    if curve.len() <= max || max < 2 {
        return curve.to_vec();
    }
    let step = (curve.len() - 1) as f64 / (max - 1) as f64;
    (0..max)
        .map(|i| curve[((i as f64 * step).round() as usize).min(curve.len() - 1)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn hand_computed_case() {
        // 4 positives, 6 negatives.
        let probs = [0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2, 0.1, 0.05];
        let labels = [1, 1, 0, 1, 0, 0, 1, 0, 0, 0];
        let m = evaluate(&probs, &labels, 0.5, 0.25);
        assert_eq!(
            m.confusion,
            Confusion {
                tn: 4,
                fp: 2,
                fn_: 1,
                tp: 3
            }
        );
        assert!(close(m.accuracy, 0.7));
        assert!(close(m.precision, 0.6));
        assert!(close(m.recall, 0.75));
        assert!(close(m.specificity, 4.0 / 6.0));
        assert!(close(m.balanced_accuracy, (0.75 + 4.0 / 6.0) / 2.0));
        assert!(close(m.f1, 2.0 * 0.6 * 0.75 / 1.35));
        // Pairs (pos, neg) ranked correctly: 0.9 and 0.8 beat all 6; 0.6 beats 5; 0.3 beats 3.
        assert!(close(m.roc_auc, (6.0 + 6.0 + 5.0 + 3.0) / 24.0));
        // AP = mean over positives of precision at their rank: 1/1, 2/2, 3/4, 4/7.
        assert!(close(m.pr_auc, (1.0 + 1.0 + 0.75 + 4.0 / 7.0) / 4.0));
        assert_eq!(m.loss, 0.25);
        // F1 is best at 0.6 (P 3/4, R 3/4) against 0.9, 0.8 (P 1, R 1/2) and 0.3 (4/7, 1).
        assert!(close(f1_optimal_threshold(&probs, &labels), 0.6f32 as f64));
    }

    #[test]
    fn ties_and_single_class() {
        let m = evaluate(&[0.5, 0.5, 0.5, 0.5], &[1, 0, 1, 0], 0.5, 0.0);
        assert!(close(m.roc_auc, 0.5), "all tied: chance");
        assert!(close(m.pr_auc, 0.5));
        let all_neg = evaluate(&[0.1, 0.7], &[0, 0], 0.5, 0.0);
        assert_eq!(
            all_neg.confusion,
            Confusion {
                tn: 1,
                fp: 1,
                fn_: 0,
                tp: 0
            }
        );
        assert_eq!(
            (all_neg.recall, all_neg.precision, all_neg.f1),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(all_neg.roc_auc, 0.5);
        assert_eq!(all_neg.pr_auc, 0.0);
        let all_pos = evaluate(&[0.9, 0.2], &[1, 1], 0.5, 0.0);
        assert!(
            close(all_pos.recall, 0.5)
                && close(all_pos.precision, 1.0)
                && all_pos.specificity == 0.0
        );
        assert_eq!(f1_optimal_threshold(&[0.3], &[0]), 0.5);
        let perfect = evaluate(&[0.2, 0.9, 0.8, 0.1], &[0, 1, 1, 0], 0.5, 0.0);
        assert_eq!(
            (perfect.roc_auc, perfect.pr_auc, perfect.f1),
            (1.0, 1.0, 1.0)
        );
    }

    #[test]
    fn records_round_trip_as_json_lines() {
        let r = MetricsRecord::Step {
            epoch: 1,
            step: 20,
            loss: 0.5,
            lr: 0.01,
            images_per_s: 1000.0,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.starts_with(r#"{"kind":"step""#), "{line}");
        assert_eq!(serde_json::from_str::<MetricsRecord>(&line).unwrap(), r);
        assert_eq!(thin(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 4), vec![1, 4, 7, 10]);
    }

    #[test]
    fn most_confident_errors_come_first_per_kind() {
        let probs = [0.9, 0.2, 0.99, 0.6, 0.05, 0.4, 0.6, 0.5, 0.49, 0.7];
        let labels = [0, 1, 0, 0, 1, 1, 0, 0, 1, 1];
        use ErrorKind::*;
        // False positives: negatives at or above 0.5, most confident first, ties in index order.
        // False negatives: positives below 0.5, lowest probability first. Correct ones are left out.
        assert_eq!(
            most_confident_errors(&probs, &labels, 0.5, 16),
            vec![
                (2, FalsePositive),
                (0, FalsePositive),
                (3, FalsePositive),
                (6, FalsePositive),
                (7, FalsePositive),
                (4, FalseNegative),
                (1, FalseNegative),
                (5, FalseNegative),
                (8, FalseNegative),
            ]
        );
        assert_eq!(
            most_confident_errors(&probs, &labels, 0.5, 2),
            vec![
                (2, FalsePositive),
                (0, FalsePositive),
                (4, FalseNegative),
                (1, FalseNegative)
            ]
        );
        // At 0.8, the negatives at 0.5 and 0.6 are correct and the positive at 0.7 is missed.
        let at_08: Vec<usize> = most_confident_errors(&probs, &labels, 0.8, 16)
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(at_08, vec![2, 0, 4, 1, 5, 8, 9]);
        assert!(most_confident_errors(&[0.1, 0.9], &[0, 1], 0.5, 16).is_empty());
    }

    #[test]
    fn a_report_without_misclassified_still_parses() {
        let old = serde_json::json!({
            "run_id": "r", "dataset_id": "d", "model": "logreg", "device": "Cpu",
            "best_epoch": 1, "epochs_run": 1,
            "test": BinaryMetrics::default(), "test_at_val_threshold": BinaryMetrics::default(),
            "val": BinaryMetrics::default(), "roc": [], "pr": [],
            "train_seconds": 1.0, "train_images_per_s": 1.0, "config": {},
            "finished_at": "2026-01-01T00:00:00Z"
        });
        let r: Report = serde_json::from_value(old).unwrap();
        assert!(r.misclassified.is_empty());
        let m = Misclassified {
            error: ErrorKind::FalseNegative,
            shard: "shards/test-00000.idcs".into(),
            record: 3,
            patient: 8863,
            x: 1,
            y: 51,
            label: 1,
            probability: 0.01,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["error"], "false_negative");
        assert_eq!(serde_json::from_value::<Misclassified>(v).unwrap(), m);
    }

    #[test]
    fn non_finite_metrics_round_trip_in_records_and_reports() {
        let val = BinaryMetrics {
            loss: f64::INFINITY,
            roc_auc: f64::NAN,
            f1: f64::NAN,
            ..Default::default()
        };
        let rec = MetricsRecord::Epoch {
            epoch: 2,
            train_loss: f64::NAN,
            lr: 0.1,
            val: val.clone(),
            duration_s: 1.0,
            images_per_s: 10.0,
            best: false,
        };
        let line = serde_json::to_string(&rec).unwrap();
        let Ok(MetricsRecord::Epoch {
            epoch,
            train_loss,
            val: back,
            ..
        }) = serde_json::from_str::<MetricsRecord>(&line)
        else {
            panic!("unreadable: {line}");
        };
        assert_eq!(epoch, 2);
        assert!(train_loss.is_nan() && back.roc_auc.is_nan() && back.f1.is_nan());
        assert_eq!(back.loss, f64::INFINITY);
        // What earlier workers wrote for NaN: null.
        let old = line.replace(r#""loss":"Infinity""#, r#""loss":null"#);
        assert!(serde_json::from_str::<MetricsRecord>(&old).is_ok(), "{old}");

        let report = Report {
            run_id: "r".into(),
            dataset_id: "d".into(),
            model: "logreg".into(),
            device: "Cpu".into(),
            best_epoch: 1,
            epochs_run: 1,
            test: val.clone(),
            test_at_val_threshold: val.clone(),
            val,
            roc: vec![],
            pr: vec![],
            train_seconds: 1.0,
            train_images_per_s: f64::NAN,
            config: serde_json::json!({}),
            finished_at: "2026-12-01T00:00:00Z".into(),
            misclassified: vec![],
        };
        let json = serde_json::to_vec(&report).unwrap();
        let back: Report = serde_json::from_slice(&json).unwrap();
        assert!(back.test.roc_auc.is_nan() && back.train_images_per_s.is_nan());
    }
}
