//! Classification metrics (binary for IDC's two classes, K-class otherwise), the metrics record
//! (`metrics.jsonl`) and the evaluation report (`report.json`): computed by the worker, read by
//! idcctl.

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
    /// The value of this metric in `m` (for K classes: the macro average where it is per class).
    pub fn of(self, m: &Metrics) -> f64 {
        match m {
            Metrics::Binary(b) => self.of_binary(b),
            Metrics::Multiclass(k) => self.of_multiclass(k),
        }
    }

    /// The value of this metric in binary metrics.
    pub fn of_binary(self, m: &BinaryMetrics) -> f64 {
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

    /// The value of this metric in K-class metrics: per-class scores macro-averaged.
    pub fn of_multiclass(self, m: &MulticlassMetrics) -> f64 {
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

    /// Its name for K-class metrics, where the per-class scores are macro-averaged.
    pub fn label_multiclass(self) -> &'static str {
        match self {
            MetricName::Precision => "macro precision",
            MetricName::Recall => "macro recall",
            MetricName::Specificity => "macro specificity",
            MetricName::F1 => "macro F1",
            MetricName::RocAuc => "macro ROC-AUC (one-vs-rest)",
            MetricName::PrAuc => "macro PR-AUC (one-vs-rest)",
            other => other.label(),
        }
    }
}

/// The metrics of one evaluation: binary (two classes, thresholded probability of class 1) or
/// K-class (argmax). Serialized as the inner struct alone, so binary records read as before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Metrics {
    Binary(BinaryMetrics),
    Multiclass(MulticlassMetrics),
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::Binary(BinaryMetrics::default())
    }
}

impl Metrics {
    /// The binary metrics, for two classes.
    pub fn binary(&self) -> Option<&BinaryMetrics> {
        match self {
            Metrics::Binary(b) => Some(b),
            Metrics::Multiclass(_) => None,
        }
    }

    /// The K-class metrics, for more than two classes.
    pub fn multiclass(&self) -> Option<&MulticlassMetrics> {
        match self {
            Metrics::Binary(_) => None,
            Metrics::Multiclass(m) => Some(m),
        }
    }

    /// Number of examples evaluated.
    pub fn count(&self) -> u64 {
        match self {
            Metrics::Binary(b) => b.count,
            Metrics::Multiclass(m) => m.count,
        }
    }

    /// The value of `name` ([`MetricName::of`]).
    pub fn value(&self, name: MetricName) -> f64 {
        name.of(self)
    }

    /// Examples of true class `t` predicted as `p`, as a K x K matrix (binary: at its threshold).
    pub fn confusion_matrix(&self) -> Vec<Vec<u64>> {
        match self {
            Metrics::Binary(b) => vec![
                vec![b.confusion.tn, b.confusion.fp],
                vec![b.confusion.fn_, b.confusion.tp],
            ],
            Metrics::Multiclass(m) => m.confusion.clone(),
        }
    }
}

impl std::fmt::Display for Metrics {
    /// One line for logs and `idcctl status`: `loss 0.3120 acc 0.8811 bal-acc 0.8702 F1 0.8015
    /// AUC 0.9402` (K classes: macro F1 and top-3 accuracy instead of F1 and AUC).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Metrics::Binary(m) => write!(
                f,
                "loss {:.4} acc {:.4} bal-acc {:.4} F1 {:.4} AUC {:.4}",
                m.loss, m.accuracy, m.balanced_accuracy, m.f1, m.roc_auc
            ),
            Metrics::Multiclass(m) => {
                write!(
                    f,
                    "loss {:.4} acc {:.4} bal-acc {:.4} macro-F1 {:.4}",
                    m.loss, m.accuracy, m.balanced_accuracy, m.f1
                )?;
                if let Some(t) = m.top_k.first() {
                    write!(f, " top-{} {:.4}", t.k, t.accuracy)?;
                }
                Ok(())
            }
        }
    }
}

impl From<BinaryMetrics> for Metrics {
    fn from(m: BinaryMetrics) -> Self {
        Metrics::Binary(m)
    }
}

impl From<MulticlassMetrics> for Metrics {
    fn from(m: MulticlassMetrics) -> Self {
        Metrics::Multiclass(m)
    }
}

/// Precision, recall, F1 and support of one class (one-vs-rest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    #[serde(with = "crate::json_float")]
    pub precision: f64,
    #[serde(with = "crate::json_float")]
    pub recall: f64,
    #[serde(with = "crate::json_float")]
    pub f1: f64,
    /// Examples of this class.
    pub support: u64,
    /// One-vs-rest ROC-AUC of its probability (NaN when the class is absent or alone).
    #[serde(with = "crate::json_float")]
    pub roc_auc: f64,
}

/// Top-k accuracy: the true class among the k most probable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    pub k: u32,
    #[serde(with = "crate::json_float")]
    pub accuracy: f64,
}

/// Every metric of one K-class evaluation, predictions by argmax. `precision`, `recall`,
/// `specificity`, `f1`, `roc_auc` and `pr_auc` are macro averages (unweighted means over the
/// classes, one-vs-rest); `weighted_*` weigh each class by its support.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MulticlassMetrics {
    pub count: u64,
    #[serde(with = "crate::json_float")]
    pub loss: f64,
    #[serde(with = "crate::json_float")]
    pub accuracy: f64,
    /// The mean of per-class recall.
    #[serde(with = "crate::json_float")]
    pub balanced_accuracy: f64,
    #[serde(with = "crate::json_float")]
    pub precision: f64,
    #[serde(with = "crate::json_float")]
    pub recall: f64,
    #[serde(with = "crate::json_float")]
    pub specificity: f64,
    #[serde(with = "crate::json_float")]
    pub f1: f64,
    #[serde(with = "crate::json_float")]
    pub weighted_precision: f64,
    #[serde(with = "crate::json_float")]
    pub weighted_recall: f64,
    #[serde(with = "crate::json_float")]
    pub weighted_f1: f64,
    /// Over the classes present with at least one other class (one-vs-rest).
    #[serde(with = "crate::json_float")]
    pub roc_auc: f64,
    #[serde(with = "crate::json_float")]
    pub pr_auc: f64,
    /// Top-3 and top-5 accuracy, where there are more classes than k.
    pub top_k: Vec<TopK>,
    /// Index = class.
    pub per_class: Vec<ClassScores>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// The k of the top-k accuracies reported (those below the number of classes).
pub const TOP_K: [u32; 2] = [3, 5];

/// The predicted class (argmax; the lowest index wins a tie) of each row of `probs`, `k` per row.
pub fn argmax_rows(probs: &[f32], k: usize) -> Vec<u8> {
    probs
        .chunks_exact(k)
        .map(|row| {
            let mut best = 0;
            for (c, &p) in row.iter().enumerate() {
                if p > row[best] {
                    best = c;
                }
            }
            best as u8
        })
        .collect()
}

/// All K-class metrics of `probs` (`labels.len()` rows of `k` class probabilities, row-major)
/// against `labels`; `loss` is passed through. Panics unless there are `k` probabilities per
/// label and every label is below `k`: rows read back are checked first
/// ([`crate::predictions::check_rows`]).
pub fn evaluate_multiclass(probs: &[f32], labels: &[u8], k: usize, loss: f64) -> MulticlassMetrics {
    assert_eq!(probs.len(), labels.len() * k, "k probabilities per label");
    let n = labels.len();
    let pred = argmax_rows(probs, k);
    let mut confusion = vec![vec![0u64; k]; k];
    for (&y, &p) in labels.iter().zip(&pred) {
        confusion[y as usize][p as usize] += 1;
    }
    let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
    let mut per_class = Vec::with_capacity(k);
    let (mut aucs, mut aps, mut specs) = (vec![], vec![], vec![]);
    let mut column = vec![0f32; n];
    for c in 0..k {
        let tp = confusion[c][c];
        let support: u64 = confusion[c].iter().sum();
        let predicted: u64 = (0..k).map(|t| confusion[t][c]).sum();
        let precision = ratio(tp, predicted);
        let recall = ratio(tp, support);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        let negatives = n as u64 - support;
        specs.push(ratio(negatives - (predicted - tp), negatives));
        let is_c: Vec<u8> = labels.iter().map(|&y| u8::from(y as usize == c)).collect();
        for (i, p) in column.iter_mut().enumerate() {
            *p = probs[i * k + c];
        }
        let roc_auc = if support == 0 || support == n as u64 {
            f64::NAN
        } else {
            let a = roc_auc(&column, &is_c);
            aucs.push(a);
            aps.push(average_precision(&column, &is_c));
            a
        };
        per_class.push(ClassScores {
            precision,
            recall,
            f1,
            support,
            roc_auc,
        });
    }
    let mean = |v: &mut dyn Iterator<Item = f64>, len: usize| {
        if len == 0 {
            f64::NAN
        } else {
            v.sum::<f64>() / len as f64
        }
    };
    let weighted = |f: &dyn Fn(&ClassScores) -> f64| {
        if n == 0 {
            0.0
        } else {
            per_class
                .iter()
                .map(|s| f(s) * s.support as f64)
                .sum::<f64>()
                / n as f64
        }
    };
    let top_k = TOP_K
        .iter()
        .filter(|&&t| (t as usize) < k)
        .map(|&t| TopK {
            k: t,
            accuracy: top_k_accuracy(probs, labels, k, t as usize),
        })
        .collect();
    MulticlassMetrics {
        count: n as u64,
        loss,
        accuracy: ratio(correct, n as u64),
        balanced_accuracy: mean(&mut per_class.iter().map(|s| s.recall), k),
        precision: mean(&mut per_class.iter().map(|s| s.precision), k),
        recall: mean(&mut per_class.iter().map(|s| s.recall), k),
        specificity: mean(&mut specs.iter().copied(), k),
        f1: mean(&mut per_class.iter().map(|s| s.f1), k),
        weighted_precision: weighted(&|s| s.precision),
        weighted_recall: weighted(&|s| s.recall),
        weighted_f1: weighted(&|s| s.f1),
        roc_auc: mean(&mut aucs.iter().copied(), aucs.len()),
        pr_auc: mean(&mut aps.iter().copied(), aps.len()),
        top_k,
        per_class,
        confusion,
    }
}

/// The fraction of rows whose true class is among the `t` most probable: fewer than `t` classes
/// are strictly more probable than it (ties go in its favour).
pub fn top_k_accuracy(probs: &[f32], labels: &[u8], k: usize, t: usize) -> f64 {
    let hits = probs
        .chunks_exact(k)
        .zip(labels)
        .filter(|(row, y)| {
            let p = row[**y as usize];
            row.iter().filter(|&&q| q > p).count() < t
        })
        .count();
    ratio(hits as u64, labels.len() as u64)
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
        val: Metrics,
        #[serde(with = "crate::json_float")]
        duration_s: f64,
        #[serde(with = "crate::json_float")]
        images_per_s: f64,
        best: bool,
    },
}

/// The evaluation report (`report.json`), generic over its metrics: [`AnyReport`] (any number of
/// classes) is what idcctl reads; `Report` alone reads a two-class (IDC) report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report<M = BinaryMetrics> {
    pub run_id: String,
    pub dataset_id: String,
    pub model: String,
    pub device: String,
    /// Epoch whose checkpoint was evaluated (the best on validation).
    pub best_epoch: u32,
    pub epochs_run: u32,
    /// Class names, index = label (reports written before this field: the two IDC classes).
    #[serde(default = "crate::idc_classes")]
    pub classes: Vec<String>,
    /// Test metrics (two classes: at 0.5).
    pub test: M,
    /// Two classes: test metrics at the F1-optimal threshold chosen on validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_at_val_threshold: Option<BinaryMetrics>,
    pub val: M,
    /// Two classes: ROC curve on test, `(fpr, tpr, threshold)`, thinned.
    pub roc: Vec<(f64, f64, f64)>,
    /// Two classes: precision-recall curve on test, `(recall, precision, threshold)`, thinned.
    pub pr: Vec<(f64, f64, f64)>,
    #[serde(with = "crate::json_float")]
    pub train_seconds: f64,
    #[serde(with = "crate::json_float")]
    pub train_images_per_s: f64,
    /// The training spec as run.
    pub config: serde_json::Value,
    pub finished_at: String,
    /// The most confidently misclassified test patches: two classes, at 0.5, up to
    /// [`MISCLASSIFIED_PER_KIND`] false positives, then as many false negatives; K classes, up
    /// to twice that many, most confident first (empty in reports written before this field).
    #[serde(default)]
    pub misclassified: Vec<Misclassified>,
}

/// A report of any number of classes.
pub type AnyReport = Report<Metrics>;

impl<M> Report<M> {
    /// The name of class `c` (its number if the report has no such class).
    pub fn class_name(&self, c: u8) -> String {
        self.classes
            .get(c as usize)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    }
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
    /// K classes: predicted as another class.
    WrongClass,
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
    /// True label (IDC: 0 no IDC, 1 IDC).
    pub label: u8,
    /// Two classes: the predicted probability of IDC; K classes: that of the predicted class.
    pub probability: f64,
    /// The predicted class (absent in binary reports written before this field; see
    /// [`Misclassified::predicted_class`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<u8>,
}

impl Misclassified {
    /// The predicted class.
    pub fn predicted_class(&self) -> u8 {
        self.predicted.unwrap_or(match self.error {
            ErrorKind::FalsePositive => 1,
            ErrorKind::FalseNegative | ErrorKind::WrongClass => 0,
        })
    }
}

/// K classes: the `max` most confidently misclassified rows of `probs` (`k` per row), by
/// descending probability of the predicted class (ties keep index order). Returns (index,
/// predicted class, its probability).
pub fn most_confident_confusions(
    probs: &[f32],
    labels: &[u8],
    k: usize,
    max: usize,
) -> Vec<(usize, u8, f32)> {
    let pred = argmax_rows(probs, k);
    let mut wrong: Vec<(usize, u8, f32)> = (0..labels.len())
        .filter(|&i| pred[i] != labels[i])
        .map(|i| (i, pred[i], probs[i * k + pred[i] as usize]))
        .collect();
    wrong.sort_by(|a, b| b.2.total_cmp(&a.2));
    wrong.truncate(max);
    wrong
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
        let r: AnyReport = serde_json::from_value(old.clone()).unwrap();
        let binary: Report = serde_json::from_value(old).unwrap();
        assert_eq!(binary.test, BinaryMetrics::default());
        assert!(r.misclassified.is_empty());
        assert_eq!(r.classes, ["no IDC", "IDC"], "old reports are IDC's");
        assert!(r.test.binary().is_some() && r.test_at_val_threshold.is_some());
        let m = Misclassified {
            error: ErrorKind::FalseNegative,
            shard: "shards/test-00000.idcs".into(),
            record: 3,
            patient: 8863,
            x: 1,
            y: 51,
            label: 1,
            probability: 0.01,
            predicted: None,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["error"], "false_negative");
        assert!(
            v.get("predicted").is_none(),
            "binary entries keep their shape"
        );
        assert_eq!(serde_json::from_value::<Misclassified>(v).unwrap(), m);
        assert_eq!(m.predicted_class(), 0);
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
            val: val.clone().into(),
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
        let back = back
            .binary()
            .expect("binary metrics read back as binary")
            .clone();
        assert!(train_loss.is_nan() && back.roc_auc.is_nan() && back.f1.is_nan());
        assert_eq!(back.loss, f64::INFINITY);
        // What earlier workers wrote for NaN: null.
        let old = line.replace(r#""loss":"Infinity""#, r#""loss":null"#);
        assert!(serde_json::from_str::<MetricsRecord>(&old).is_ok(), "{old}");

        let report = AnyReport {
            run_id: "r".into(),
            dataset_id: "d".into(),
            model: "logreg".into(),
            device: "Cpu".into(),
            best_epoch: 1,
            epochs_run: 1,
            classes: crate::idc_classes(),
            test: val.clone().into(),
            test_at_val_threshold: Some(val.clone()),
            val: val.into(),
            roc: vec![],
            pr: vec![],
            train_seconds: 1.0,
            train_images_per_s: f64::NAN,
            config: serde_json::json!({}),
            finished_at: "2026-12-01T00:00:00Z".into(),
            misclassified: vec![],
        };
        let json = serde_json::to_vec(&report).unwrap();
        let back: AnyReport = serde_json::from_slice(&json).unwrap();
        assert!(back.test.value(MetricName::RocAuc).is_nan() && back.train_images_per_s.is_nan());
    }

    /// Three classes, six examples; predictions by argmax.
    fn three_class() -> (Vec<f32>, Vec<u8>) {
        #[rustfmt::skip]
        let probs = vec![
            0.7, 0.2, 0.1, // true 0, predicted 0
            0.5, 0.4, 0.1, // true 1, predicted 0
            0.1, 0.8, 0.1, // true 1, predicted 1
            0.2, 0.2, 0.6, // true 2, predicted 2
            0.3, 0.3, 0.4, // true 0, predicted 2
            0.1, 0.6, 0.3, // true 2, predicted 1
        ];
        (probs, vec![0, 1, 1, 2, 0, 2])
    }

    #[test]
    fn multiclass_hand_computed_case() {
        let (probs, labels) = three_class();
        let m = evaluate_multiclass(&probs, &labels, 3, 0.9);
        assert_eq!(
            m.confusion,
            vec![vec![1, 0, 1], vec![1, 1, 0], vec![0, 1, 1]]
        );
        assert!(close(m.accuracy, 0.5));
        // Each class: precision 1/2, recall 1/2 (one of its two, one of two predicted).
        for c in &m.per_class {
            assert!(close(c.precision, 0.5) && close(c.recall, 0.5) && close(c.f1, 0.5));
            assert_eq!(c.support, 2);
        }
        assert!(close(m.f1, 0.5) && close(m.weighted_f1, 0.5) && close(m.balanced_accuracy, 0.5));
        // Specificity of class 0: of the 4 others, 1 was predicted 0.
        assert!(close(m.specificity, 0.75));
        // One-vs-rest AUC of class 0: scores 0.7, 0.3 against 0.5, 0.1, 0.2, 0.1: 7 of 8 pairs.
        assert!(close(m.per_class[0].roc_auc, 7.0 / 8.0));
        assert!(close(
            m.roc_auc,
            m.per_class.iter().map(|c| c.roc_auc).sum::<f64>() / 3.0
        ));
        assert_eq!(m.top_k, vec![], "no top-3 with three classes");
        assert_eq!(m.loss, 0.9);
        let metrics = Metrics::from(m.clone());
        assert_eq!(MetricName::F1.of(&metrics), m.f1);
        assert_eq!(MetricName::F1.label_multiclass(), "macro F1");
        assert_eq!(metrics.confusion_matrix(), m.confusion);
    }

    #[test]
    fn multiclass_against_scikit_learn() {
        // Ten classes, 200 rows; data and expected values from tests/fixtures/sklearn_multiclass.py
        // (scikit-learn's accuracy_score, precision/recall/f1_score macro and weighted,
        // balanced_accuracy_score, roc_auc_score ovr macro, top_k_accuracy_score k=3 and 5).
        let f: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/sklearn_multiclass.json"))
                .unwrap();
        let labels: Vec<u8> = serde_json::from_value(f["labels"].clone()).unwrap();
        let probs: Vec<f32> = serde_json::from_value(f["probs"].clone()).unwrap();
        let m = evaluate_multiclass(&probs, &labels, 10, 0.0);
        let e = &f["expected"];
        for (name, got) in [
            ("accuracy", m.accuracy),
            ("balanced_accuracy", m.balanced_accuracy),
            ("macro_precision", m.precision),
            ("macro_recall", m.recall),
            ("macro_f1", m.f1),
            ("weighted_precision", m.weighted_precision),
            ("weighted_recall", m.weighted_recall),
            ("weighted_f1", m.weighted_f1),
            ("roc_auc_ovr_macro", m.roc_auc),
            ("top3", m.top_k[0].accuracy),
            ("top5", m.top_k[1].accuracy),
        ] {
            let want = e[name].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-6,
                "{name}: {got}, scikit-learn {want}"
            );
        }
        let confusion: Vec<Vec<u64>> = serde_json::from_value(e["confusion"].clone()).unwrap();
        assert_eq!(m.confusion, confusion);
    }

    #[test]
    fn multiclass_metrics_round_trip_and_stay_apart_from_binary() {
        let (probs, labels) = three_class();
        let m = Metrics::from(evaluate_multiclass(&probs, &labels, 3, f64::NAN));
        let json = serde_json::to_string(&m).unwrap();
        let back: Metrics = serde_json::from_str(&json).unwrap();
        assert!(back.multiclass().is_some(), "{json}");
        assert!(back.value(MetricName::Loss).is_nan());
        let b = Metrics::from(evaluate(&[0.9, 0.1], &[1, 0], 0.5, 0.1));
        let back: Metrics = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        assert_eq!(
            most_confident_confusions(&probs, &labels, 3, 8),
            vec![(5, 1, 0.6), (1, 0, 0.5), (4, 2, 0.4)]
        );
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{bytes, config, corrupted};
        use proptest::prelude::*;

        /// A `metrics.jsonl` and a report of both kinds, as the worker writes them.
        fn valid() -> (Vec<u8>, Vec<u8>) {
            let binary = evaluate(&[0.1, 0.9, 0.6], &[0, 1, 0], 0.5, 0.3);
            let multi = evaluate_multiclass(&[0.2, 0.5, 0.3, 0.6, 0.2, 0.2], &[1, 2], 3, 0.9);
            let records = [
                MetricsRecord::Step {
                    epoch: 1,
                    step: 10,
                    loss: 0.7,
                    lr: 0.01,
                    images_per_s: 900.0,
                },
                MetricsRecord::Epoch {
                    epoch: 1,
                    train_loss: 0.6,
                    lr: 0.01,
                    val: binary.clone().into(),
                    duration_s: 3.0,
                    images_per_s: 800.0,
                    best: true,
                },
                MetricsRecord::Epoch {
                    epoch: 2,
                    train_loss: f64::NAN,
                    lr: 0.01,
                    val: multi.into(),
                    duration_s: 3.0,
                    images_per_s: 800.0,
                    best: false,
                },
            ];
            let mut jsonl = vec![];
            for r in &records {
                jsonl.extend(serde_json::to_vec(r).unwrap());
                jsonl.push(b'\n');
            }
            let report = AnyReport {
                run_id: "r".into(),
                dataset_id: "d".into(),
                model: "logreg".into(),
                device: "Cpu".into(),
                best_epoch: 1,
                epochs_run: 2,
                classes: crate::idc_classes(),
                test: binary.clone().into(),
                test_at_val_threshold: Some(binary.clone()),
                val: binary.into(),
                roc: vec![(0.0, 0.0, 1.0), (1.0, 1.0, 0.0)],
                pr: vec![(0.0, 1.0, 1.0)],
                train_seconds: 1.0,
                train_images_per_s: 10.0,
                config: serde_json::json!({"model": {"kind": "logreg"}}),
                finished_at: "2026-12-01T00:00:00Z".into(),
                misclassified: vec![],
            };
            (jsonl, serde_json::to_vec(&report).unwrap())
        }

        /// Records and a report read back are used as `status` and `list` use them, without
        /// panicking (`tracking::tensorboard` checks its own use).
        fn read_and_use(jsonl: &[u8], report: &[u8]) {
            let records = parse_jsonl(jsonl);
            let report = serde_json::from_slice::<AnyReport>(report).ok();
            if let Some(r) = &report {
                for m in &r.misclassified {
                    r.class_name(m.label);
                    r.class_name(m.predicted_class());
                }
                r.test.value(MetricName::F1);
                r.test.confusion_matrix();
            }
            for r in &records {
                if let MetricsRecord::Epoch { val, .. } = r {
                    MetricName::F1.of(val);
                    val.confusion_matrix();
                }
            }
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn any_bytes(a in bytes(256), b in bytes(256)) {
                read_and_use(&a, &b);
            }

            #[test]
            fn corrupted_records(b in corrupted(valid().0)) {
                read_and_use(&b, &valid().1);
            }

            #[test]
            fn corrupted_reports(b in corrupted(valid().1)) {
                read_and_use(&valid().0, &b);
            }
        }
    }
}
