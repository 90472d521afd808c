//! Optimizers (SGD with momentum/Nesterov, Adam, AdamW) as one multi-tensor kernel per step
//! (ATen's `_fused_sgd_` / `_fused_adam_` / `_fused_adamw_`, through the shim), with their state
//! as named tensors so a checkpoint can save and restore it (tch's optimizers keep theirs out of
//! reach). A step dispatches one kernel (Adam: a fill of its step counter, then one), whatever the
//! number of parameter tensors.

use crate::error::WorkerError;
use crate::shim::{self, AdamStep, SgdStep};
use idc::spec::{OptimizerKind, OptimizerSpec};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

pub struct Optimizer {
    spec: OptimizerSpec,
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Per state slot, one tensor per parameter: SGD's momentum buffers (none without
    /// momentum), or Adam's first and second moments.
    state: Vec<Vec<Tensor>>,
    /// Adam's step number on the parameters' device, shared by every parameter (the fused
    /// kernels read it there; updating it is one fill, not an upload).
    step_on_device: Tensor,
    /// Steps taken (Adam's bias correction, SGD's first step).
    pub steps: i64,
}

impl Optimizer {
    pub fn new(spec: &OptimizerSpec, params: Vec<(String, Tensor)>) -> Self {
        let (names, params): (Vec<String>, Vec<Tensor>) = params.into_iter().unzip();
        let slots = match spec.kind {
            OptimizerKind::Sgd if spec.momentum == 0.0 => 0,
            OptimizerKind::Sgd => 1,
            OptimizerKind::Adam | OptimizerKind::Adamw => 2,
        };
        let state = (0..slots)
            .map(|_| tch::no_grad(|| params.iter().map(|p| p.zeros_like().detach()).collect()))
            .collect();
        let device = params.first().map_or(tch::Device::Cpu, |p| p.device());
        Self {
            spec: spec.clone(),
            names,
            params,
            state,
            step_on_device: Tensor::zeros([], (Kind::Float, device)),
            steps: 0,
        }
    }

    /// Sets the gradients to none (no kernel; backward writes fresh ones).
    pub fn zero_grad(&mut self) {
        shim::grads_to_none(&self.params);
    }

    /// Scales gradients so their global L2 norm is at most `max`; returns the norm before as a
    /// device scalar, unread (reading it would wait for the device).
    pub fn clip_grad_norm(&mut self, max: f64) -> Result<Option<Tensor>, WorkerError> {
        shim::clip_grad_norm(&self.params, max)
    }

    /// One update with learning rate `lr`, of every parameter that has a gradient.
    pub fn step(&mut self, lr: f64) -> Result<(), WorkerError> {
        let s = &self.spec;
        let first_step = self.steps == 0;
        self.steps += 1;
        tch::no_grad(|| match s.kind {
            OptimizerKind::Sgd => shim::fused_sgd(
                &self.params,
                self.state.first().map_or(&[][..], |b| b.as_slice()),
                &SgdStep {
                    lr,
                    momentum: s.momentum,
                    weight_decay: s.weight_decay,
                    nesterov: s.nesterov,
                    first_step,
                },
            ),
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let _ = self.step_on_device.fill_(self.steps as f64);
                shim::fused_adam(
                    &self.params,
                    &self.state[0],
                    &self.state[1],
                    &self.step_on_device,
                    &AdamStep {
                        lr,
                        beta1: s.beta1,
                        beta2: s.beta2,
                        weight_decay: s.weight_decay,
                        eps: s.eps,
                        decoupled: s.kind == OptimizerKind::Adamw,
                    },
                )
            }
        })
    }

    /// The optimizer state as named tensors (for a checkpoint).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("optim.steps".to_string(), Tensor::from_slice(&[self.steps]))];
        for (i, slot) in self.state.iter().enumerate() {
            for (name, b) in self.names.iter().zip(slot) {
                out.push((format!("optim.{i}.{name}"), b.shallow_clone()));
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state_tensors`] (a slot missing for a parameter
    /// keeps its zeros, as before that parameter's first update).
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let steps = tensors
            .get("optim.steps")
            .ok_or("checkpoint has no optimizer state")?;
        self.steps = steps.int64_value(&[0]);
        for (i, slot) in self.state.iter_mut().enumerate() {
            for (name, b) in self.names.iter().zip(slot.iter_mut()) {
                if let Some(t) = tensors.get(&format!("optim.{i}.{name}")) {
                    if t.size() != b.size() {
                        return Err(format!(
                            "checkpoint optimizer state optim.{i}.{name} has shape {:?}, the parameter {:?}",
                            t.size(),
                            b.size()
                        ));
                    }
                    tch::no_grad(|| b.copy_(&t.to_device(b.device()).to_kind(b.kind())));
                }
            }
        }
        let _ = self.step_on_device.fill_(self.steps as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// Minimises (p - 3)^2 from p = 0 and returns p after `n` steps.
    fn run(spec: OptimizerSpec, lr: f64, n: usize) -> f64 {
        let p = Tensor::zeros([1], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let mut opt = Optimizer::new(&spec, vec![("p".into(), p.shallow_clone())]);
        for _ in 0..n {
            opt.zero_grad();
            (&p - 3.0).pow_tensor_scalar(2).sum(Kind::Double).backward();
            opt.step(lr).unwrap();
        }
        p.double_value(&[0])
    }

    #[test]
    fn matches_hand_computed_steps() {
        // SGD, momentum 0.9: g0 = -6 -> p = 0.6; g1 = -4.8, buf = -5.4 - 4.8 = -10.2 -> p = 1.62.
        let sgd = OptimizerSpec {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            ..Default::default()
        };
        assert!((run(sgd.clone(), 0.1, 2) - 1.62).abs() < 1e-12);
        // Nesterov: d0 = -6 + 0.9 * -6 = -11.4 -> p = 1.14.
        let nesterov = OptimizerSpec {
            nesterov: true,
            ..sgd.clone()
        };
        assert!((run(nesterov, 0.1, 1) - 1.14).abs() < 1e-12);
        // Adam's first step moves by lr (bias-corrected m / sqrt(v) = sign(g)).
        let adam = OptimizerSpec {
            kind: OptimizerKind::Adam,
            ..Default::default()
        };
        assert!((run(adam.clone(), 0.01, 1) - 0.01).abs() < 1e-6);
        assert!((run(adam, 0.1, 500) - 3.0).abs() < 0.05, "Adam converges");
        let adamw = OptimizerSpec {
            kind: OptimizerKind::Adamw,
            weight_decay: 0.1,
            ..Default::default()
        };
        assert!(
            (run(adamw, 0.1, 500) - 3.0).abs() < 0.2,
            "AdamW converges near the optimum"
        );
    }

    #[test]
    fn state_round_trips() {
        let p = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let spec = OptimizerSpec {
            kind: OptimizerKind::Adam,
            ..Default::default()
        };
        let mut a = Optimizer::new(&spec, vec![("w".into(), p.shallow_clone())]);
        (&p * 2.0).sum(Kind::Float).backward();
        a.step(0.1).unwrap();
        let saved: BTreeMap<String, Tensor> = a.state_tensors().into_iter().collect();
        let mut b = Optimizer::new(&spec, vec![("w".into(), p.shallow_clone())]);
        b.load_state(&saved).unwrap();
        assert_eq!(b.steps, 1);
        assert_eq!(b.state_tensors().len(), 3);
    }
}
