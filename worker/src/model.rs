//! The models: logistic regression, a simple CNN and ResNet34 with a new head, shaped by the
//! dataset: its image size and channels in, one logit per class out (one in all for BCE). Every
//! model takes float images in [0, 1], `[N, C, H, W]`, and normalizes them with the dataset's
//! per-channel statistics.

use crate::error::WorkerError;
use idc::shard::Shape;
use idc::spec::ModelSpec;
use std::collections::HashMap;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// A model with its parameters.
pub struct Model {
    pub vs: nn::VarStore,
    net: Box<dyn ModuleT + Send>,
    mean: Tensor,
    std: Tensor,
    input_size: Option<i64>,
    /// ResNet34 on gray images: the one channel is repeated to the three its stem takes.
    gray_to_rgb: bool,
    /// Number of logits (1 for BCE; the number of classes for cross-entropy).
    pub outputs: i64,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Model({} outputs)", self.outputs)
    }
}

/// Prefix of head parameters (never loaded from pretrained weights).
pub const HEAD: &str = "fc";

impl Model {
    /// Builds `spec` on `device` for images of `shape` with `outputs` logits; `mean`/`std` are
    /// the per-channel statistics of the training images.
    pub fn new(
        spec: &ModelSpec,
        outputs: i64,
        shape: Shape,
        mean: &[f64],
        std: &[f64],
        device: Device,
    ) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (c, h, w) = (
            shape.channels as i64,
            shape.height as i64,
            shape.width as i64,
        );
        let (net, input_size): (Box<dyn ModuleT + Send>, Option<i64>) = match spec {
            ModelSpec::Logreg => {
                let fc = nn::linear(&root / HEAD, c * h * w, outputs, Default::default());
                (
                    Box::new(nn::func_t(move |xs, _| xs.flatten(1, -1).apply(&fc))),
                    None,
                )
            }
            ModelSpec::SimpleCnn { width, dropout } => (
                Box::new(simple_cnn(&root, shape, *width, *dropout, outputs)),
                None,
            ),
            ModelSpec::Resnet34 { input_size, .. } => {
                let backbone = tch::vision::resnet::resnet34_no_final_layer(&root);
                let fc = nn::linear(&root / HEAD, 512, outputs, Default::default());
                (
                    Box::new(nn::func_t(move |xs, train| {
                        xs.apply_t(&backbone, train).apply(&fc)
                    })),
                    *input_size,
                )
            }
        };
        let stat = |v: &[f64]| {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::from_slice(&v).view([1, c, 1, 1]).to_device(device)
        };
        let std = idc::dataset::manifest::normalizing_std(std);
        Self {
            vs,
            net,
            mean: stat(mean),
            std: stat(&std),
            input_size,
            gray_to_rgb: matches!(spec, ModelSpec::Resnet34 { .. }) && c == 1,
            outputs,
        }
    }

    /// Channels of the images it takes.
    pub fn channels(&self) -> i64 {
        self.mean.size()[1]
    }

    /// Logits for float patches in [0, 1].
    pub fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_normalized(&((xs - &self.mean) / &self.std), train)
    }

    /// Logits for patches already normalized with the dataset's statistics: `(x - mean) / std`
    /// of patches `x` in [0, 1], std as [`idc::dataset::manifest::normalizing_std`] gives it.
    pub fn forward_normalized(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        if self.gray_to_rgb {
            x = x.expand([-1, 3, -1, -1], false);
        }
        if let Some(s) = self.input_size {
            x = x.upsample_bilinear2d([s, s], false, None, None);
        }
        self.net.forward_t(&x, train)
    }

    /// Two classes: the probability of class 1 (IDC), `[N]`. More: every class's, `[N, K]`.
    pub fn probability(&self, logits: &Tensor) -> Tensor {
        match self.outputs {
            1 => logits.squeeze_dim(1).sigmoid(),
            2 => logits.softmax(1, Kind::Float).select(1, 1),
            _ => logits.softmax(1, Kind::Float),
        }
    }

    /// Loads backbone weights (everything but the head) from a `.safetensors`, `.ot` or `.pt`
    /// file; any missing or mis-shaped tensor is an error that lists them.
    pub fn load_pretrained(&mut self, path: &std::path::Path) -> Result<(), WorkerError> {
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        let tensors = if is_safetensors {
            Tensor::read_safetensors(path)
        } else {
            Tensor::load_multi(path)
        }
        .map_err(|e| {
            WorkerError::BadInput(format!("pretrained weights {}: {e}", path.display()))
        })?;
        let given: HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut missing = vec![];
        let mut mismatched = vec![];
        let mut vars = self.vs.variables();
        for (name, var) in vars.iter_mut() {
            if name.starts_with(&format!("{HEAD}.")) {
                continue;
            }
            match given.get(name) {
                None => missing.push(name.clone()),
                Some(t) if t.size() != var.size() => mismatched.push(format!(
                    "{name}: file {:?}, model {:?}",
                    t.size(),
                    var.size()
                )),
                Some(t) => {
                    tch::no_grad(|| var.copy_(&t.to_kind(var.kind()).to_device(var.device())))
                }
            }
        }
        if !missing.is_empty() || !mismatched.is_empty() {
            missing.sort();
            mismatched.sort();
            return Err(WorkerError::BadInput(format!(
                "pretrained weights {} do not fit the model: {} missing [{}]; {} mismatched [{}]",
                path.display(),
                missing.len(),
                missing.join(", "),
                mismatched.len(),
                mismatched.join("; ")
            )));
        }
        Ok(())
    }

    /// Gives every 4-D parameter NHWC strides, which cuDNN runs fastest in bf16.
    pub fn use_channels_last(&mut self) {
        for (_, mut var) in self.vs.variables() {
            if var.dim() == 4 {
                let nhwc = channels_last(&var.detach());
                tch::no_grad(|| var.set_data(&nhwc));
            }
        }
    }

    /// Stops gradients for everything but the head.
    pub fn freeze_backbone(&mut self) {
        for (name, var) in self.vs.variables() {
            if !name.starts_with(&format!("{HEAD}.")) {
                let _ = var.set_requires_grad(false);
            }
        }
    }

    /// Parameters that train, by name, in a stable order.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Three conv blocks (width, 2x, 4x channels; 3x3 convolutions, ReLU, 2x2 max pooling) and a
/// two-layer head, as the seed's simple CNN (its CIFAR-10 demo network and its IDC model).
fn simple_cnn(
    p: &nn::Path,
    shape: Shape,
    width: i64,
    dropout: f64,
    outputs: i64,
) -> impl ModuleT + use<> {
    let conv = |name: &str, i, o| {
        nn::conv2d(
            p / name,
            i,
            o,
            3,
            nn::ConvConfig {
                padding: 1,
                ..Default::default()
            },
        )
    };
    let (c1, c2, c3) = (
        conv("conv1", shape.channels as i64, width),
        conv("conv2", width, 2 * width),
        conv("conv3", 2 * width, 4 * width),
    );
    // Three 2x2 poolings, each rounding down: 50 -> 6, 32 -> 4, 28 -> 3.
    let pooled = |side: u32| (side as i64 / 2 / 2 / 2).max(1);
    let (ph, pw) = (pooled(shape.height), pooled(shape.width));
    let fc1 = nn::linear(p / "fc1", 4 * width * ph * pw, 256, Default::default());
    let fc = nn::linear(p / HEAD, 256, outputs, Default::default());
    nn::func_t(move |xs, train| {
        xs.apply(&c1)
            .relu()
            .max_pool2d_default(2)
            .apply(&c2)
            .relu()
            .max_pool2d_default(2)
            .apply(&c3)
            .relu()
            .max_pool2d_default(2)
            .flatten(1, -1)
            .apply(&fc1)
            .relu()
            .dropout(dropout, train)
            .apply(&fc)
    })
}

/// The same tensor with NHWC strides (tch has no `memory_format` argument).
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}
