//! The training spec: what the worker trains and how. `idcctl` resolves an experiment manifest
//! into a [`RunSpec`] and writes it to the run's `spec.yaml`; the worker reads it from there.
//! Every default lives here, and so does how a launcher tells the worker its attempt number.

use crate::metrics::MetricName;
use serde::{Deserialize, Serialize};

/// The environment variable that tells the worker which attempt of its run it is (1-based).
pub const ATTEMPT_ENV: &str = "IDC_ATTEMPT";

/// A resolved run: where the data is, where results go, how to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// The run's id (also its folder under `runs/`).
    pub run_id: String,
    /// URL of the staged dataset.
    pub dataset: String,
    #[serde(default)]
    pub train: TrainSpec,
}

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    pub model: ModelSpec,
    pub sampling: Sampling,
    pub augmentation: Augmentation,
    pub loss: LossSpec,
    pub optimizer: OptimizerSpec,
    pub schedule: Schedule,
    pub epochs: u32,
    pub batch_size: u32,
    pub eval_batch_size: u32,
    pub seed: u64,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    pub early_stopping: Option<EarlyStopping>,
    /// The validation metric that picks the best checkpoint.
    pub select_metric: MetricName,
    pub device: DeviceSpec,
    pub precision: Precision,
    /// Write a step record to metrics.jsonl every this many steps.
    pub log_every_steps: u32,
    /// Also checkpoint mid-epoch once this much time has passed since the last checkpoint
    /// (`90s`, `10m`, `1h`; null: only at epoch ends and on SIGTERM), so that a worker killed
    /// without warning (an OOM kill, a lost node) loses at most this much training.
    pub checkpoint_every: Option<String>,
    /// Stop each epoch after this many steps (quick tests and benchmarks).
    pub max_steps_per_epoch: Option<u32>,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            model: ModelSpec::SimpleCnn {
                width: 32,
                dropout: 0.3,
            },
            sampling: Sampling::Weighted,
            augmentation: Augmentation::default(),
            loss: LossSpec::default(),
            optimizer: OptimizerSpec::default(),
            schedule: Schedule::Constant,
            epochs: 10,
            batch_size: 256,
            eval_batch_size: 1024,
            seed: 0,
            grad_clip: None,
            early_stopping: None,
            select_metric: MetricName::F1,
            device: DeviceSpec::Auto,
            precision: Precision::Auto,
            log_every_steps: 50,
            checkpoint_every: Some("10m".into()),
            max_steps_per_epoch: None,
        }
    }
}

/// The model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Logistic regression on normalized pixels (the baseline).
    Logreg,
    /// Three conv blocks and a classifier head.
    SimpleCnn {
        #[serde(default = "default_width")]
        width: i64,
        #[serde(default = "default_dropout")]
        dropout: f64,
    },
    /// ResNet34 with a new head.
    Resnet34 {
        /// Pretrained weights (`.safetensors`, `.ot`, `.pt`), a path or bucket URL; the head is
        /// not loaded.
        #[serde(default)]
        pretrained: Option<String>,
        #[serde(default)]
        freeze_backbone: bool,
        /// Resize inputs to this side length first (e.g. 224 for ImageNet weights).
        #[serde(default)]
        input_size: Option<i64>,
    },
}

fn default_width() -> i64 {
    32
}
fn default_dropout() -> f64 {
    0.3
}

impl ModelSpec {
    pub fn name(&self) -> &'static str {
        match self {
            ModelSpec::Logreg => "logreg",
            ModelSpec::SimpleCnn { .. } => "simple_cnn",
            ModelSpec::Resnet34 { .. } => "resnet34",
        }
    }
}

/// How training batches are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// With replacement, by inverse class frequency: both classes equally likely (the seed's
    /// WeightedRandomSampler); len(train) draws per epoch.
    Weighted,
    /// Every training patch once per epoch, shuffled.
    Shuffle,
}

/// Augmentations applied to training batches, each with a probability per patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Augmentation {
    /// Rotate by 90, 180 or 270 degrees (chosen uniformly).
    pub rotate90: f64,
    pub flip_lr: f64,
    pub flip_tb: f64,
    /// Reduce colour: blend towards grayscale by a factor in [min_saturation, 1].
    pub color: f64,
    pub min_saturation: f64,
    /// Increase contrast by a factor in [1, max_contrast] around the patch mean.
    pub contrast: f64,
    pub max_contrast: f64,
    /// Random crops: pad each side by this many (zero) pixels, then cut an image of the original
    /// size at a uniformly drawn offset (4 is CIFAR's usual; 0: off).
    #[serde(skip_serializing_if = "is_zero")]
    pub crop_padding: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Default for Augmentation {
    fn default() -> Self {
        Self {
            rotate90: 0.5,
            flip_lr: 0.5,
            flip_tb: 0.5,
            color: 0.3,
            min_saturation: 0.5,
            contrast: 0.3,
            max_contrast: 1.5,
            crop_padding: 0,
        }
    }
}

impl Augmentation {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            rotate90: 0.0,
            flip_lr: 0.0,
            flip_tb: 0.0,
            color: 0.0,
            contrast: 0.0,
            ..Self::default()
        }
    }
}

/// The loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LossSpec {
    pub kind: LossKind,
    /// Weight of positive examples (bce_with_logits only).
    pub pos_weight: Option<f64>,
}

impl Default for LossSpec {
    fn default() -> Self {
        Self {
            kind: LossKind::BceWithLogits,
            pos_weight: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// One logit, binary cross-entropy.
    BceWithLogits,
    /// Two logits, softmax cross-entropy.
    CrossEntropy,
}

/// The optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSpec {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

/// The learning-rate schedule, stepped per optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` every `every_epochs` epochs.
    Step {
        every_epochs: u32,
        gamma: f64,
    },
    /// Cosine decay to `min_lr` over the run.
    Cosine {
        #[serde(default)]
        min_lr: f64,
    },
    /// Warm up to `max_lr` over `pct_start` of the run, then anneal (cosine) to max_lr / 1e4.
    OneCycle {
        max_lr: f64,
        #[serde(default = "default_pct_start")]
        pct_start: f64,
    },
}

fn default_pct_start() -> f64 {
    0.3
}

impl Schedule {
    /// The learning rate at `step` of `total` steps (`steps_per_epoch` per epoch).
    pub fn lr_at(&self, base: f64, step: u64, steps_per_epoch: u64, total: u64) -> f64 {
        let progress = if total == 0 {
            0.0
        } else {
            step as f64 / total as f64
        };
        let cos = |from: f64, to: f64, t: f64| {
            to + (from - to) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
        };
        match *self {
            Schedule::Constant => base,
            Schedule::Step {
                every_epochs,
                gamma,
            } => {
                let epoch = step / steps_per_epoch.max(1);
                base * gamma.powi((epoch / every_epochs.max(1) as u64) as i32)
            }
            Schedule::Cosine { min_lr } => cos(base, min_lr, progress.min(1.0)),
            Schedule::OneCycle { max_lr, pct_start } => {
                let start = max_lr / 25.0;
                if progress < pct_start {
                    cos(start, max_lr, progress / pct_start)
                } else {
                    cos(
                        max_lr,
                        max_lr / 1e4,
                        ((progress - pct_start) / (1.0 - pct_start)).min(1.0),
                    )
                }
            }
        }
    }
}

/// Stop when the validation metric has not improved for `patience` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    pub metric: MetricName,
    pub patience: u32,
    #[serde(default)]
    pub min_delta: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSpec {
    /// CUDA when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

impl crate::choice::Choice for DeviceSpec {
    const ALL: &'static [Self] = &[DeviceSpec::Auto, DeviceSpec::Cpu, DeviceSpec::Cuda];
    fn name(self) -> &'static str {
        match self {
            DeviceSpec::Auto => "auto",
            DeviceSpec::Cpu => "cpu",
            DeviceSpec::Cuda => "cuda",
        }
    }
}
crate::choice_names!(DeviceSpec);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 autocast on CUDA, fp32 on CPU.
    Auto,
    Fp32,
    /// bf16 autocast, fp32 master weights (CUDA only).
    Bf16,
}

impl TrainSpec {
    /// `checkpoint_every` as a duration (None: off, or not a duration).
    pub fn checkpoint_interval(&self) -> Option<std::time::Duration> {
        let every = self.checkpoint_every.as_deref()?;
        crate::clock::parse_duration(every).map(std::time::Duration::from_secs)
    }

    /// Checks ranges; the message names the field.
    /// Checks the spec against the dataset it trains on: `classes` classes of images of `shape`.
    pub fn check_dataset(&self, classes: usize, shape: crate::shard::Shape) -> Result<(), String> {
        if classes > 2 && self.loss.kind == LossKind::BceWithLogits {
            return Err(format!(
                "it has {classes} classes, and train.loss.kind bce_with_logits is for two: set train.loss.kind: cross_entropy"
            ));
        }
        if classes > 2 && self.loss.pos_weight.is_some() {
            return Err(format!(
                "train.loss.pos_weight weighs the positive of two classes; this dataset has {classes}"
            ));
        }
        let a = &self.augmentation;
        let spatial = a.rotate90 > 0.0 || a.flip_lr > 0.0 || a.flip_tb > 0.0;
        if spatial && shape.height != shape.width {
            return Err(format!(
                "train.augmentation flips and rotations need square images; these are {}x{}",
                shape.height, shape.width
            ));
        }
        if a.crop_padding >= shape.height.min(shape.width) {
            return Err(format!(
                "train.augmentation.crop_padding {} must be smaller than the images ({}x{})",
                a.crop_padding, shape.height, shape.width
            ));
        }
        if matches!(self.model, ModelSpec::SimpleCnn { .. }) && shape.height.min(shape.width) < 8 {
            return Err(format!(
                "the simple CNN pools three times and needs images of at least 8x8; these are {}x{}",
                shape.height, shape.width
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        self.validate_augmentation()?;
        if self.epochs == 0 {
            return Err("train.epochs: must be at least 1".into());
        }
        if self.batch_size == 0 {
            return Err("train.batch_size: must be at least 1".into());
        }
        if self.eval_batch_size == 0 {
            return Err("train.eval_batch_size: must be at least 1".into());
        }
        self.validate_optimizer()?;
        if let Some(every) = &self.checkpoint_every {
            self.checkpoint_interval().ok_or_else(|| {
                format!(
                    "train.checkpoint_every: '{every}' is not a duration such as 90s, 10m or 1h"
                )
            })?;
        }
        self.validate_model()?;
        if self.loss.pos_weight.is_some() && self.loss.kind != LossKind::BceWithLogits {
            return Err("train.loss.pos_weight: only applies to kind bce_with_logits".into());
        }
        if let Some(c) = self.grad_clip
            && (c.is_nan() || c <= 0.0)
        {
            return Err(format!("train.grad_clip: {c} must be positive"));
        }
        Ok(())
    }

    /// Each augmentation is a probability; saturation and contrast within their ranges.
    fn validate_augmentation(&self) -> Result<(), String> {
        let prob = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "train.augmentation.{name}: {v} is not a probability in [0, 1]"
                ))
            }
        };
        let a = &self.augmentation;
        prob("rotate90", a.rotate90)?;
        prob("flip_lr", a.flip_lr)?;
        prob("flip_tb", a.flip_tb)?;
        prob("color", a.color)?;
        prob("contrast", a.contrast)?;
        if !(0.0..=1.0).contains(&a.min_saturation) {
            return Err(format!(
                "train.augmentation.min_saturation: {} is not in [0, 1]",
                a.min_saturation
            ));
        }
        if a.max_contrast < 1.0 {
            return Err(format!(
                "train.augmentation.max_contrast: {} must be at least 1",
                a.max_contrast
            ));
        }
        Ok(())
    }

    /// The optimizer's learning rate, moments, weight decay and epsilon.
    fn validate_optimizer(&self) -> Result<(), String> {
        let o = &self.optimizer;
        if !o.lr.is_finite() {
            return Err(format!(
                "train.optimizer.lr: {} must be a finite number",
                o.lr
            ));
        }
        if o.lr <= 0.0 {
            return Err(format!("train.optimizer.lr: {} must be positive", o.lr));
        }
        let in_unit = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("train.optimizer.{name}: {v} is not in [0, 1)"))
            }
        };
        in_unit("momentum", o.momentum)?;
        in_unit("beta1", o.beta1)?;
        in_unit("beta2", o.beta2)?;
        if !o.weight_decay.is_finite() || o.weight_decay < 0.0 {
            return Err(format!(
                "train.optimizer.weight_decay: {} must be a number of at least 0",
                o.weight_decay
            ));
        }
        if !o.eps.is_finite() || o.eps <= 0.0 {
            return Err(format!(
                "train.optimizer.eps: {} must be a positive number",
                o.eps
            ));
        }
        Ok(())
    }

    /// The model's own settings.
    fn validate_model(&self) -> Result<(), String> {
        if let ModelSpec::SimpleCnn { width, dropout } = self.model {
            if width < 1 {
                return Err(format!("train.model.width: {width} must be at least 1"));
            }
            if !(0.0..1.0).contains(&dropout) {
                return Err(format!("train.model.dropout: {dropout} is not in [0, 1)"));
            }
        }
        if let ModelSpec::Resnet34 {
            input_size: Some(s),
            ..
        } = self.model
            && s < 32
        {
            return Err(format!("train.model.input_size: {s} must be at least 32"));
        }
        Ok(())
    }
}

/// Where a run is tracked: the manifest's `tracking.mlflow`, which the worker reads too.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MlflowSpec {
    /// The tracking server, `http(s)://host:port` (default: `MLFLOW_TRACKING_URI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The MLflow experiment (default: the idc experiment's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// Set by the sweep driver on its trials: the sweep whose MLflow run is their parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<String>,
}

/// The environment variable naming the tracking server, as MLflow's own clients read it.
pub const URI_ENV: &str = "MLFLOW_TRACKING_URI";
/// The bearer token, as MLflow's own clients read it (on Kubernetes: from a Secret).
pub const TOKEN_ENV: &str = "MLFLOW_TRACKING_TOKEN";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_yaml() {
        let spec: RunSpec = serde_yaml::from_str(
            "run_id: cnn-1\ndataset: file:///tmp/ds\ntrain:\n  model: {kind: resnet34, freeze_backbone: true}\n  optimizer: {kind: sgd, lr: 0.001}\n  loss: {kind: cross_entropy}\n",
        )
        .unwrap();
        assert_eq!(
            spec.train.model,
            ModelSpec::Resnet34 {
                pretrained: None,
                freeze_backbone: true,
                input_size: None
            }
        );
        assert_eq!(spec.train.optimizer.momentum, 0.9);
        assert_eq!(spec.train.epochs, 10);
        spec.train.validate().unwrap();
        let err = serde_yaml::from_str::<RunSpec>("run_id: x\ndataset: y\ntrain: {epochz: 3}\n")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `epochz`"), "{err}");
        let bad = TrainSpec {
            augmentation: Augmentation {
                flip_lr: 1.5,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            "train.augmentation.flip_lr: 1.5 is not a probability in [0, 1]"
        );
    }

    #[test]
    fn schedules() {
        let s = Schedule::Step {
            every_epochs: 2,
            gamma: 0.1,
        };
        assert_eq!(s.lr_at(1.0, 0, 10, 100), 1.0);
        assert!((s.lr_at(1.0, 25, 10, 100) - 0.1).abs() < 1e-12);
        let c = Schedule::Cosine { min_lr: 0.0 };
        assert!((c.lr_at(1.0, 50, 10, 100) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(1.0, 100, 10, 100).abs() < 1e-12);
        let o = Schedule::OneCycle {
            max_lr: 1.0,
            pct_start: 0.3,
        };
        assert!((o.lr_at(0.1, 0, 10, 100) - 0.04).abs() < 1e-12);
        assert!((o.lr_at(0.1, 30, 10, 100) - 1.0).abs() < 1e-12);
        assert!(o.lr_at(0.1, 100, 10, 100) < 1e-3);
    }
}
