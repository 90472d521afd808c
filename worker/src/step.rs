//! The training step, one definition for `idc-worker run` and `idc-worker bench`: gather the
//! batch, augment, forward, loss, backward, clip, update, all on the training device with no host
//! sync. The epoch's sample order goes to the device once per epoch, and the losses stay there
//! until a logging window is read in one copy.

use crate::augment::Augmenter;
use crate::error::WorkerError;
use crate::model::{Model, channels_last};
use crate::optim::Optimizer;
use crate::sampler::epoch_order;
use crate::shim::maybe_bf16;
use idc::spec::{LossKind, Sampling, TrainSpec};
use tch::{Device, Kind, Reduction, Tensor};

/// A model, its optimizer and everything a training step needs besides the data.
pub struct TrainStep {
    pub model: Model,
    pub opt: Optimizer,
    aug: Augmenter,
    loss: LossKind,
    pos_weight: Option<Tensor>,
    grad_clip: Option<f64>,
    bf16: bool,
    device: Device,
}

impl TrainStep {
    /// `model` must already be in its training layout (channels-last for bf16); its images are
    /// `side` x `side`.
    pub fn new(t: &TrainSpec, model: Model, side: i64, bf16: bool, device: Device) -> Self {
        let opt = Optimizer::new(&t.optimizer, model.trainable());
        let aug = Augmenter::new(&t.augmentation, side, model.channels(), device);
        Self {
            model,
            opt,
            aug,
            loss: t.loss.kind,
            pos_weight: t
                .loss
                .pos_weight
                .map(|w| Tensor::from_slice(&[w as f32]).to_device(device)),
            grad_clip: t.grad_clip,
            bf16,
            device,
        }
    }

    /// One step on the patches `idx` (int64, on the device) of `images` (uint8 `[N, 3, H, W]`)
    /// with their `labels`. `seed` seeds libtorch's generator for the augmentation draws and
    /// dropout, so a resumed run draws alike. Returns the loss as a device scalar, unread.
    pub fn run(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        idx: &Tensor,
        seed: i64,
        lr: f64,
    ) -> Result<Tensor, WorkerError> {
        tch::manual_seed(seed);
        let n = idx.size()[0];
        let draw = self.aug.draw(n, self.device);
        let x = self.aug.apply(&images.index_select(0, idx), &draw);
        let x = if self.bf16 { channels_last(&x) } else { x };
        let y = labels.index_select(0, idx);
        let logits = maybe_bf16(self.bf16, || self.model.forward(&x, true));
        let loss = loss_of(
            &logits.to_kind(Kind::Float),
            &y,
            self.loss,
            self.pos_weight.as_ref(),
        );
        self.opt.zero_grad();
        loss.backward();
        if let Some(c) = self.grad_clip {
            self.opt.clip_grad_norm(c)?;
        }
        self.opt.step(lr)?;
        Ok(loss.detach())
    }
}

/// The mean loss of a batch.
pub fn loss_of(logits: &Tensor, y: &Tensor, kind: LossKind, pos_weight: Option<&Tensor>) -> Tensor {
    match kind {
        LossKind::BceWithLogits => logits
            .squeeze_dim(1)
            .binary_cross_entropy_with_logits::<&Tensor>(
                &y.to_kind(Kind::Float),
                None,
                pos_weight,
                Reduction::Mean,
            ),
        LossKind::CrossEntropy => logits.cross_entropy_for_logits(y),
    }
}

/// One epoch's sample order on the device, uploaded once; batches are slices of it.
pub struct EpochOrder {
    order: Tensor,
    len: usize,
}

impl EpochOrder {
    pub fn new(sampling: Sampling, labels: &[u8], seed: u64, epoch: u32, device: Device) -> Self {
        let order = epoch_order(sampling, labels, seed, epoch);
        Self {
            len: order.len(),
            order: Tensor::from_slice(&order).to_device(device),
        }
    }

    /// Indices of batch `step` (the last batch may be short); None past the end.
    pub fn batch(&self, step: u64, batch: u64) -> Option<Tensor> {
        let lo = (step * batch) as usize;
        let hi = (((step + 1) * batch) as usize).min(self.len);
        (lo < hi).then(|| self.order.narrow(0, lo as i64, (hi - lo) as i64))
    }
}

/// The losses of the steps since the last read, kept on the device (one slot each) and read
/// back in one copy at a logging step, an epoch's end or a checkpoint.
pub struct LossWindow {
    buf: Tensor,
    steps: Vec<WindowStep>,
}

/// Where a step of the window was, on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStep {
    pub epoch: u32,
    /// The step's index in its epoch (0-based).
    pub step_in_epoch: u64,
    /// Patches in its batch.
    pub patches: u64,
}

impl LossWindow {
    pub fn new(capacity: u32, device: Device) -> Self {
        Self {
            buf: Tensor::zeros([capacity.max(1) as i64], (Kind::Float, device)),
            steps: Vec::with_capacity(capacity as usize),
        }
    }

    /// Records a step's loss (a device scalar); copies on the device only.
    pub fn push(&mut self, loss: &Tensor, at: WindowStep) {
        assert!(
            (self.steps.len() as i64) < self.buf.size()[0],
            "the window is read at every logging step"
        );
        self.buf.get(self.steps.len() as i64).copy_(loss);
        self.steps.push(at);
    }

    /// Reads the window (one device-to-host copy) and empties it. A non-finite loss is the
    /// divergence error, naming the first step where it happened.
    pub fn drain(&mut self) -> Result<Vec<(WindowStep, f64)>, WorkerError> {
        if self.steps.is_empty() {
            return Ok(vec![]);
        }
        let n = self.steps.len() as i64;
        let losses: Vec<f32> = Vec::try_from(self.buf.narrow(0, 0, n).to_device(Device::Cpu))?;
        let out: Vec<(WindowStep, f64)> = self
            .steps
            .drain(..)
            .zip(losses)
            .map(|(s, l)| (s, l as f64))
            .collect();
        if let Some((s, l)) = out.iter().find(|(_, l)| !l.is_finite()) {
            return Err(WorkerError::BadInput(format!(
                "training diverged: loss is {l} at epoch {}, step {}; lower train.optimizer.lr",
                s.epoch, s.step_in_epoch
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::Counter;
    use idc::exit::ProcessExitCode;
    use idc::spec::{ModelSpec, OptimizerKind, OptimizerSpec};

    fn spec(model: ModelSpec, optimizer: OptimizerKind) -> TrainSpec {
        TrainSpec {
            model,
            optimizer: OptimizerSpec {
                kind: optimizer,
                momentum: 0.9,
                weight_decay: 1e-4,
                ..Default::default()
            },
            grad_clip: Some(1.0),
            ..Default::default()
        }
    }

    fn resident(n: i64) -> (Tensor, Tensor, Vec<u8>) {
        tch::manual_seed(0);
        let labels: Vec<u8> = (0..n).map(|i| u8::from(i % 7 < 2)).collect();
        let images = Tensor::randint(256, [n, 3, 50, 50], (Kind::Uint8, Device::Cpu));
        let y = Tensor::from_slice(&labels).to_kind(Kind::Int64);
        (images, y, labels)
    }

    fn step_for(model: ModelSpec, optimizer: OptimizerKind) -> TrainStep {
        let t = spec(model, optimizer);
        let m = Model::new(
            &t.model,
            1,
            idc::shard::Shape::IDC,
            &[0.5; 3],
            &[0.25; 3],
            Device::Cpu,
        );
        TrainStep::new(&t, m, 50, false, Device::Cpu)
    }

    #[test]
    fn a_step_that_does_not_log_reads_and_uploads_nothing() {
        let (images, labels, host) = resident(64);
        let order = EpochOrder::new(Sampling::Weighted, &host, 1, 0, Device::Cpu);
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
        ] {
            let mut s = step_for(
                ModelSpec::SimpleCnn {
                    width: 8,
                    dropout: 0.3,
                },
                kind,
            );
            let mut window = LossWindow::new(4, Device::Cpu);
            let (_, n) = Counter::count(|| {
                for step in 0..3 {
                    let idx = order.batch(step, 16).unwrap();
                    let loss = s.run(&images, &labels, &idx, step as i64, 0.01).unwrap();
                    window.push(
                        &loss,
                        WindowStep {
                            epoch: 1,
                            step_in_epoch: step,
                            patches: 16,
                        },
                    );
                }
            })
            .unwrap();
            assert_eq!(n.d2h, 0, "{kind:?}: {n:?}");
            assert_eq!(n.h2d, 0, "{kind:?}: {n:?}");
            // The logging step's read is one copy.
            let (read, n) = Counter::count(|| window.drain().unwrap()).unwrap();
            assert_eq!(read.len(), 3);
            assert!(
                read.iter().all(|(_, l)| l.is_finite() && *l > 0.0),
                "{read:?}"
            );
            assert_eq!(n.d2h, 0, "a CPU-to-CPU copy reads no device: {n:?}");
        }
    }

    #[test]
    fn optimizer_ops_do_not_grow_with_parameter_tensors() {
        let (images, labels, host) = resident(8);
        let order = EpochOrder::new(Sampling::Shuffle, &host, 1, 0, Device::Cpu);
        let idx = order.batch(0, 4).unwrap();
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
        ] {
            let ops = |model: ModelSpec| {
                let mut s = step_for(model, kind);
                let _ = s.run(&images, &labels, &idx, 0, 0.01).unwrap();
                let params = s.model.trainable().len() as u64;
                let (_, n) = Counter::count(|| s.opt.step(0.01).unwrap()).unwrap();
                (params, n)
            };
            let (p_small, small) = ops(ModelSpec::Logreg);
            let (p_big, big) = ops(ModelSpec::Resnet34 {
                pretrained: None,
                freeze_backbone: false,
                input_size: None,
            });
            assert!(p_small == 2 && p_big > 100, "{p_small} vs {p_big} tensors");
            assert_eq!(small.top, big.top, "{kind:?}: {small:?} vs {big:?}");
            assert_eq!(small.d2h + big.d2h + small.h2d + big.h2d, 0, "{kind:?}");
            match kind {
                // One `_fused_sgd_`, nothing inside it.
                OptimizerKind::Sgd => assert!(small.ops == 1 && big.ops == 1, "{small:?} {big:?}"),
                // A fill of the step counter and one fused kernel; on the CPU that kernel reads
                // the counter once per tensor (`item`, `_local_scalar_dense`), on CUDA it
                // reads it on the device.
                _ => {
                    assert_eq!(big.top, 2, "{kind:?}: {big:?}");
                    assert_eq!(big.ops, 2 + 2 * p_big, "{kind:?}: {big:?}");
                    assert_eq!(small.ops, 2 + 2 * p_small, "{kind:?}: {small:?}");
                }
            }
        }
    }

    #[test]
    fn a_non_finite_loss_names_the_first_step() {
        let mut w = LossWindow::new(3, Device::Cpu);
        for (i, l) in [0.5f32, f32::NAN, f32::INFINITY].into_iter().enumerate() {
            w.push(
                &Tensor::from(l),
                WindowStep {
                    epoch: 2,
                    step_in_epoch: 10 + i as u64,
                    patches: 8,
                },
            );
        }
        let e = w.drain().unwrap_err();
        assert_eq!(e.process_exit_code(), idc::exit::ExitCode::UserError);
        assert_eq!(
            e.to_string(),
            "training diverged: loss is NaN at epoch 2, step 11; lower train.optimizer.lr"
        );
        assert!(w.drain().unwrap().is_empty(), "the window is emptied");
    }
}
