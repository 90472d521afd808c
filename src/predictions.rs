//! Per-image predictions, defined once for every reader and writer: the rows `idc-worker
//! predict` computes (and `idcctl predict` turns into CSV or JSON Lines), the test split's rows
//! every run keeps beside its report (`test-predictions.jsonl`, which slide maps read), the spec
//! of a prediction job, its result, and the progress lines the worker prints.

use crate::shard::Shape;
use crate::spec::{DeviceSpec, LossKind, ModelSpec};
use serde::{Deserialize, Serialize};

/// The prediction of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub patient: u32,
    pub x: u32,
    pub y: u32,
    /// The image's path inside the source, or its staged record, `shards/test-00000.idcs#17`.
    pub file: String,
    /// The true class, when the source says it (IDC: the name's `_class<C>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<u8>,
    /// One probability per class, index = class (two classes: `[p(no IDC), p(IDC)]`).
    pub probabilities: Vec<f32>,
    /// Two classes: IDC when p(IDC) is at least the threshold used; K classes: the argmax.
    pub predicted: u8,
}

impl Prediction {
    /// p(IDC): the probability of class 1.
    pub fn p_positive(&self) -> f32 {
        self.probabilities.get(1).copied().unwrap_or(f32::NAN)
    }
}

/// The staged record `record` of shard `key`, as [`Prediction::file`] names it.
pub fn record_ref(key: &str, record: usize) -> String {
    format!("{key}#{record}")
}

/// The shard key and record index of a [`record_ref`].
pub fn parse_record_ref(file: &str) -> Option<(&str, usize)> {
    let (key, record) = file.rsplit_once('#')?;
    Some((key, record.parse().ok()?))
}

/// The predicted class of `probabilities`: two classes at `threshold` on p(IDC), else argmax
/// (ties: the lower class).
pub fn predicted_class(probabilities: &[f32], threshold: f64) -> u8 {
    if probabilities.len() == 2 {
        return u8::from(probabilities[1] as f64 >= threshold);
    }
    let mut best = 0;
    for (c, &p) in probabilities.iter().enumerate() {
        if p > probabilities[best] {
            best = c;
        }
    }
    best as u8
}

/// Parses JSON Lines of predictions; a bad line is an error naming its line number.
pub fn parse_jsonl(bytes: &[u8]) -> Result<Vec<Prediction>, String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Checks rows read back against the `classes` their job predicted: one probability per class,
/// the label and the prediction among the classes (the metrics over them index by both). An
/// error names the row (1-based) and its image.
pub fn check_rows(rows: &[Prediction], classes: usize) -> Result<(), String> {
    for (i, r) in rows.iter().enumerate() {
        let bad = |what: String| Err(format!("row {} ({}): {what}", i + 1, r.file));
        if r.probabilities.len() != classes {
            return bad(format!(
                "{} probabilities for {classes} classes",
                r.probabilities.len()
            ));
        }
        if let Some(c) = r.label.filter(|&l| l as usize >= classes) {
            return bad(format!("label {c} is not one of the {classes} classes"));
        }
        if r.predicted as usize >= classes {
            return bad(format!(
                "predicted class {} is not one of the {classes} classes",
                r.predicted
            ));
        }
    }
    Ok(())
}

/// Writes predictions as JSON Lines.
pub fn to_jsonl(rows: &[Prediction]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 120);
    for r in rows {
        serde_json::to_writer(&mut out, r).expect("predictions serialize");
        out.push(b'\n');
    }
    out
}

/// One shard of a prediction's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShard {
    /// Key relative to [`PredictInput::store`].
    pub key: String,
    pub sha256: String,
    pub records: u64,
}

/// The images to predict: shards at a storage URL (a staged dataset's split, or the patches
/// `idcctl predict` packed from a folder or zip), with a name for each record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictInput {
    /// URL the shard keys are relative to.
    pub store: String,
    pub shards: Vec<InputShard>,
    /// [`Prediction::file`] of each record, in shard order; empty: each record is named by
    /// [`record_ref`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl PredictInput {
    pub fn records(&self) -> u64 {
        self.shards.iter().map(|s| s.records).sum()
    }
}

/// What a prediction job runs (`runs/<id>/predictions/<prediction>/spec.json`): everything the
/// worker needs, resolved by `idcctl predict`, so that it reads no other object of the run but
/// the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictSpec {
    pub prediction_id: String,
    pub run_id: String,
    /// The run's folder.
    pub run: String,
    /// The checkpoint's key in the run's folder (its best epoch's).
    pub checkpoint: String,
    pub model: ModelSpec,
    pub loss: LossKind,
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// The image shape the model was trained on.
    pub shape: Shape,
    /// Per-channel statistics of the training images (the model normalizes with them).
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Two classes: the decision threshold on p(IDC) (the run's, chosen on validation).
    pub threshold: f64,
    pub input: PredictInput,
    pub batch_size: u32,
    pub device: DeviceSpec,
    /// Average the 8 flips and rotations of each image.
    pub tta: bool,
}

/// How a prediction job went (`result.json`, written after the predictions: its presence says
/// they are complete).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictResult {
    pub prediction_id: String,
    pub images: u64,
    /// The device used, as libtorch names it.
    pub device: String,
    pub tta: bool,
    #[serde(with = "crate::json_float")]
    pub seconds: f64,
    #[serde(with = "crate::json_float")]
    pub images_per_s: f64,
    pub finished_at: String,
}

/// The progress line the worker prints on stderr as it predicts.
pub fn progress_line(done: u64, total: u64, images_per_s: f64) -> String {
    format!("predicted {done}/{total} images ({images_per_s:.0} images/s)")
}

/// `(done, total)` of a [`progress_line`].
pub fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("predicted ")?;
    let (done, rest) = rest.split_once('/')?;
    let (total, _) = rest.split_once(' ')?;
    Some((done.parse().ok()?, total.parse().ok()?))
}

/// Checks that `shape` can take test-time augmentation (rotations need square images).
pub fn check_tta(shape: Shape) -> Result<(), String> {
    if shape.height != shape.width {
        return Err(format!(
            "--tta rotates images, so they must be square, but they are {}x{}",
            shape.width, shape.height
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_progress_parses() {
        let rows = vec![
            Prediction {
                patient: 8863,
                x: 51,
                y: 101,
                file: "8863/1/8863_idx5_x51_y101_class1.png".into(),
                label: Some(1),
                probabilities: vec![0.25, 0.75],
                predicted: 1,
            },
            Prediction {
                patient: 8863,
                x: 1,
                y: 1,
                file: record_ref("shards/test-00000.idcs", 17),
                label: None,
                probabilities: vec![0.9, 0.1],
                predicted: 0,
            },
        ];
        let text = to_jsonl(&rows);
        assert_eq!(parse_jsonl(&text).unwrap(), rows);
        assert!(
            !String::from_utf8_lossy(&text)
                .lines()
                .nth(1)
                .unwrap()
                .contains("label")
        );
        assert_eq!(
            parse_record_ref(&rows[1].file),
            Some(("shards/test-00000.idcs", 17))
        );
        assert_eq!(
            parse_jsonl(b"{}\n").unwrap_err().split(':').next(),
            Some("line 1")
        );
        assert_eq!(
            parse_progress(&progress_line(512, 5000, 812.4)),
            Some((512, 5000))
        );
        assert_eq!(parse_progress("epoch 1 step 3"), None);
    }

    #[test]
    fn predicted_class_uses_the_threshold_for_two_classes() {
        assert_eq!(predicted_class(&[0.6, 0.4], 0.35), 1);
        assert_eq!(predicted_class(&[0.6, 0.4], 0.5), 0);
        assert_eq!(predicted_class(&[0.1, 0.3, 0.6], 0.5), 2);
        assert_eq!(predicted_class(&[0.5, 0.5, 0.0], 0.5), 0);
    }

    #[test]
    fn rows_that_do_not_fit_the_classes_are_named() {
        let row = |probabilities: Vec<f32>, label, predicted| Prediction {
            patient: 1,
            x: 2,
            y: 3,
            file: "a.png".into(),
            label,
            probabilities,
            predicted,
        };
        assert_eq!(check_rows(&[row(vec![0.5, 0.5], Some(1), 0)], 2), Ok(()));
        for (r, want) in [
            (
                row(vec![0.5], None, 0),
                "row 1 (a.png): 1 probabilities for 2 classes",
            ),
            (
                row(vec![0.5, 0.5], Some(2), 0),
                "row 1 (a.png): label 2 is not one",
            ),
            (
                row(vec![0.5, 0.5], None, 9),
                "row 1 (a.png): predicted class 9 is not one",
            ),
        ] {
            let e = check_rows(&[r], 2).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{bytes, config, corrupted};
        use crate::metrics;
        use proptest::prelude::*;

        /// Rows read back and checked are scored as `idcctl predict` scores them (the labelled
        /// ones), without panicking.
        fn read_and_score(bytes: &[u8], classes: usize) {
            let Ok(rows) = parse_jsonl(bytes) else { return };
            if check_rows(&rows, classes).is_err() {
                return;
            }
            let known: Vec<&Prediction> = rows.iter().filter(|r| r.label.is_some()).collect();
            let labels: Vec<u8> = known.iter().filter_map(|r| r.label).collect();
            if classes == 2 {
                let p: Vec<f32> = known.iter().map(|r| r.p_positive()).collect();
                metrics::evaluate(&p, &labels, 0.5, f64::NAN);
                metrics::most_confident_errors(&p, &labels, 0.5, 4);
            } else {
                let p: Vec<f32> = known
                    .iter()
                    .flat_map(|r| r.probabilities.iter().copied())
                    .collect();
                metrics::evaluate_multiclass(&p, &labels, classes, f64::NAN);
                metrics::most_confident_confusions(&p, &labels, classes, 4);
            }
            for r in &rows {
                predicted_class(&r.probabilities, 0.5);
                parse_record_ref(&r.file);
            }
        }

        fn valid(classes: usize) -> Vec<u8> {
            let rows: Vec<Prediction> = (0..4u8)
                .map(|i| Prediction {
                    patient: 8863,
                    x: 51 * i as u32,
                    y: 1,
                    file: record_ref("shards/test-00000.idcs", i.into()),
                    label: (i != 3).then_some(i % classes as u8),
                    probabilities: vec![1.0 / classes as f32; classes],
                    predicted: (i + 1) % classes as u8,
                })
                .collect();
            to_jsonl(&rows)
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn any_bytes(b in bytes(256), classes in 2usize..5) {
                read_and_score(&b, classes);
            }

            #[test]
            fn corrupted_binary_rows(b in corrupted(valid(2))) {
                read_and_score(&b, 2);
            }

            #[test]
            fn corrupted_multiclass_rows(b in corrupted(valid(3))) {
                read_and_score(&b, 3);
            }

            #[test]
            fn mismatched_rows_are_refused(b in corrupted(valid(3)), classes in 2usize..5) {
                read_and_score(&b, classes);
            }
        }
    }
}
