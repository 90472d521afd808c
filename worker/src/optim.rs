//! Optimizers (SGD with momentum/Nesterov, Adam, AdamW) with their state as named tensors, so a
//! checkpoint can save and restore it (tch's optimizers keep their state out of reach).

use idc::spec::{OptimizerKind, OptimizerSpec};
use std::collections::BTreeMap;
use tch::Tensor;

pub struct Optimizer {
    spec: OptimizerSpec,
    params: Vec<(String, Tensor)>,
    /// Per parameter: SGD momentum buffer, or Adam's first and second moments.
    state: BTreeMap<String, Vec<Tensor>>,
    /// Steps taken (Adam's bias correction).
    pub steps: i64,
}

impl Optimizer {
    pub fn new(spec: &OptimizerSpec, params: Vec<(String, Tensor)>) -> Self {
        Self {
            spec: spec.clone(),
            params,
            state: BTreeMap::new(),
            steps: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max`; returns the norm before.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let total = tch::no_grad(|| {
            let sq: Vec<Tensor> = grads
                .iter()
                .map(|g| g.pow_tensor_scalar(2).sum(tch::Kind::Float))
                .collect();
            Tensor::stack(&sq, 0)
                .sum(tch::Kind::Float)
                .sqrt()
                .double_value(&[])
        });
        if total > max {
            let scale = max / (total + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            });
        }
        total
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let s = &self.spec;
        let t = self.steps as i32;
        tch::no_grad(|| {
            for (name, p) in self.params.iter_mut() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                match s.kind {
                    OptimizerKind::Sgd => {
                        let mut d = if s.weight_decay != 0.0 {
                            &g + &*p * s.weight_decay
                        } else {
                            g.shallow_clone()
                        };
                        if s.momentum != 0.0 {
                            let state = self.state.entry(name.clone()).or_default();
                            if state.is_empty() {
                                state.push(d.detach().copy());
                            } else {
                                let _ = state[0].g_mul_scalar_(s.momentum).g_add_(&d);
                            }
                            d = if s.nesterov {
                                &d + &state[0] * s.momentum
                            } else {
                                state[0].shallow_clone()
                            };
                        }
                        let _ = p.g_sub_(&(d * lr));
                    }
                    OptimizerKind::Adam | OptimizerKind::Adamw => {
                        let decoupled = s.kind == OptimizerKind::Adamw;
                        if decoupled && s.weight_decay != 0.0 {
                            let _ = p.g_mul_scalar_(1.0 - lr * s.weight_decay);
                        }
                        let d = if !decoupled && s.weight_decay != 0.0 {
                            &g + &*p * s.weight_decay
                        } else {
                            g.shallow_clone()
                        };
                        let state = self.state.entry(name.clone()).or_default();
                        if state.is_empty() {
                            state.push(p.zeros_like());
                            state.push(p.zeros_like());
                        }
                        let _ = state[0]
                            .g_mul_scalar_(s.beta1)
                            .g_add_(&(&d * (1.0 - s.beta1)));
                        let _ = state[1]
                            .g_mul_scalar_(s.beta2)
                            .g_add_(&(&d * &d * (1.0 - s.beta2)));
                        let bc1 = 1.0 - s.beta1.powi(t);
                        let bc2 = 1.0 - s.beta2.powi(t);
                        let denom = (&state[1] / bc2).sqrt() + s.eps;
                        let _ = p.g_sub_(&(&state[0] / &denom * (lr / bc1)));
                    }
                }
            }
        });
    }

    /// The optimizer state as named tensors (for a checkpoint).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("optim.steps".to_string(), Tensor::from_slice(&[self.steps]))];
        for (name, bufs) in &self.state {
            for (i, b) in bufs.iter().enumerate() {
                out.push((format!("optim.{i}.{name}"), b.shallow_clone()));
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state_tensors`].
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let steps = tensors
            .get("optim.steps")
            .ok_or("checkpoint has no optimizer state")?;
        self.steps = steps.int64_value(&[0]);
        self.state.clear();
        for (name, p) in &self.params {
            let mut bufs = vec![];
            while let Some(t) = tensors.get(&format!("optim.{}.{name}", bufs.len())) {
                bufs.push(t.to_device(p.device()).to_kind(p.kind()));
            }
            if !bufs.is_empty() {
                self.state.insert(name.clone(), bufs);
            }
        }
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
            opt.step(lr);
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
        a.step(0.1);
        let saved: BTreeMap<String, Tensor> = a.state_tensors().into_iter().collect();
        let mut b = Optimizer::new(&spec, vec![("w".into(), p.shallow_clone())]);
        b.load_state(&saved).unwrap();
        assert_eq!(b.steps, 1);
        assert_eq!(b.state_tensors().len(), 3);
    }
}
