//! Experiment tracking outside the bucket, from what the bucket holds: the scalars a run logs
//! (one list, [`scalars_of`], for every tracker), TensorBoard event files ([`tensorboard`]) and
//! MLflow runs through its REST API ([`mlflow`]). The bucket stays the source of truth; a
//! tracker is brought up to date from it, and can be again at any time.

pub mod mlflow;
pub mod tensorboard;

use crate::metrics::{AnyReport, MetricName, Metrics, MetricsRecord};

/// One point of one tracked scalar.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// `train/loss`, `val/f1`, `test/roc_auc`, ...
    pub tag: String,
    /// The global step for `train/*` step scalars, the epoch for epoch scalars (the best epoch
    /// for `test/*`).
    pub step: i64,
    pub value: f64,
    /// Seconds since the run started: the end of the epoch it belongs to (a step's: the end of
    /// the epoch before it).
    pub elapsed_s: f64,
}

/// The tag of metric `m` under `prefix` (`val/f1`, `test/roc_auc`).
pub fn tag(prefix: &str, m: MetricName) -> String {
    let name = serde_json::to_value(m).expect("metric names serialize");
    format!("{prefix}/{}", name.as_str().expect("a string"))
}

fn metric_scalars(prefix: &str, m: &Metrics, step: i64, elapsed_s: f64, out: &mut Vec<Scalar>) {
    for n in MetricName::ALL {
        out.push(Scalar {
            tag: tag(prefix, n),
            step,
            value: n.of(m),
            elapsed_s,
        });
    }
}

/// Every scalar of a run: per logged step `train/loss`, `train/lr` and `train/images_per_s`;
/// per epoch `train/epoch_loss`, `train/epoch_images_per_s` and every validation metric
/// (`val/...`); with the report, every test metric (`test/...`) at the best epoch.
pub fn scalars_of(records: &[MetricsRecord], report: Option<&AnyReport>) -> Vec<Scalar> {
    let mut out = Vec::with_capacity(records.len() * 12);
    let mut clock = 0.0;
    for r in records {
        match r {
            MetricsRecord::Step {
                step,
                loss,
                lr,
                images_per_s,
                ..
            } => {
                for (tag, value) in [
                    ("train/loss", loss),
                    ("train/lr", lr),
                    ("train/images_per_s", images_per_s),
                ] {
                    out.push(Scalar {
                        tag: tag.into(),
                        step: *step as i64,
                        value: *value,
                        elapsed_s: clock,
                    });
                }
            }
            MetricsRecord::Epoch {
                epoch,
                train_loss,
                val,
                duration_s,
                images_per_s,
                ..
            } => {
                clock += duration_s.max(0.0);
                let step = *epoch as i64;
                for (tag, value) in [
                    ("train/epoch_loss", train_loss),
                    ("train/epoch_images_per_s", images_per_s),
                ] {
                    out.push(Scalar {
                        tag: tag.into(),
                        step,
                        value: *value,
                        elapsed_s: clock,
                    });
                }
                metric_scalars("val", val, step, clock, &mut out);
            }
        }
    }
    if let Some(r) = report {
        metric_scalars("test", &r.test, r.best_epoch as i64, clock, &mut out);
    }
    out
}

/// The MLflow target of a run from its `experiment.yaml` (the manifest as submitted: its
/// `tracking.mlflow`, else `MLFLOW_TRACKING_URI`; the experiment defaults to the manifest's
/// name). Read loosely, so that the worker needs no manifest schema.
pub fn mlflow_target_of(experiment_yaml: &[u8]) -> Option<mlflow::Target> {
    let v: serde_yaml::Value = serde_yaml::from_slice(experiment_yaml).ok()?;
    let spec: Option<crate::spec::MlflowSpec> = v
        .get("tracking")
        .and_then(|t| t.get("mlflow"))
        .and_then(|m| serde_yaml::from_value(m.clone()).ok());
    let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("idc");
    mlflow::Target::resolve(spec.as_ref(), name)
}
