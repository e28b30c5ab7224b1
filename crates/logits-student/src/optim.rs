//! Optimizers (SGD with momentum or Nesterov, AdamW), learning-rate schedules (warm-up, then
//! constant, cosine or linear decay) and gradient clipping by global norm. Update rules follow
//! PyTorch's `torch.optim.SGD` and `torch.optim.AdamW` so hyper-parameters carry over.
//!
//! Weight decay applies to matrices only (tensors of rank ≥ 2), not to biases or layer-norm
//! parameters, the usual practice for transformers and MLPs alike. SGD's decay is coupled
//! (added to the gradient, as PyTorch's SGD); AdamW's is decoupled.

use crate::params::Params;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// SGD with momentum μ (0 = plain SGD), optionally Nesterov.
    Sgd {
        /// Momentum μ.
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// AdamW.
    AdamW {
        /// β₁.
        beta1: f32,
        /// β₂.
        beta2: f32,
        /// ε.
        eps: f32,
    },
}

/// How the learning rate decays after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decay {
    /// Constant after warm-up.
    Constant,
    /// Half-cosine from the peak to `min_lr` at the last step.
    Cosine,
    /// Linear from the peak to `min_lr` at the last step.
    Linear,
}

/// A learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps from 0 to `lr`.
    pub warmup: u64,
    /// Total steps of the run.
    pub total: u64,
    /// Decay after warm-up.
    pub decay: Decay,
    /// Learning rate at the end of the decay.
    pub min_lr: f64,
}

impl Schedule {
    /// The learning rate for step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let frac = ((step - self.warmup) as f64 / span).min(1.0);
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Linear => self.lr + (self.min_lr - self.lr) * frac,
            Decay::Cosine => {
                self.min_lr
                    + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}

/// An optimizer with its state (one or two moment buffers per tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    /// Update rule.
    pub method: Method,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Weight decay (see the module docs for where it applies).
    pub weight_decay: f32,
    /// Clip the global gradient norm to this, when set.
    pub clip_norm: Option<f64>,
    /// Steps taken.
    pub step: u64,
    /// First moments (momentum buffers), per tensor.
    pub m: Vec<Vec<f32>>,
    /// Second moments (AdamW), per tensor.
    pub v: Vec<Vec<f32>>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

impl Optimizer {
    /// A fresh optimizer for a model.
    pub fn new(
        method: Method,
        schedule: Schedule,
        weight_decay: f32,
        clip_norm: Option<f64>,
        model: &dyn Params,
    ) -> Optimizer {
        let zeros: Vec<Vec<f32>> = model
            .tensors()
            .iter()
            .map(|(_, _, v)| vec![0.0; v.len()])
            .collect();
        let v = match method {
            Method::AdamW { .. } => zeros.clone(),
            Method::Sgd { .. } => Vec::new(),
        };
        Optimizer {
            method,
            schedule,
            weight_decay,
            clip_norm,
            step: 0,
            m: zeros,
            v,
        }
    }

    /// One update of `model` from `grads` (a model of the same shape).
    pub fn step(&mut self, model: &mut dyn Params, grads: &dyn Params) -> StepInfo {
        let lr = self.schedule.lr(self.step);
        let gt = grads.tensors();
        let grad_norm = gt
            .iter()
            .flat_map(|(_, _, g)| g.iter())
            .map(|&g| (g as f64) * (g as f64))
            .sum::<f64>()
            .sqrt();
        let scale = match self.clip_norm {
            Some(c) if grad_norm > c && grad_norm > 0.0 => (c / grad_norm) as f32,
            _ => 1.0,
        };
        self.step += 1;
        let t = self.step as i32;
        let ranks: Vec<usize> = gt.iter().map(|(_, s, _)| s.len()).collect();
        for (i, p) in model.tensors_mut().into_iter().enumerate() {
            let g = gt[i].2;
            let wd = if ranks[i] >= 2 {
                self.weight_decay
            } else {
                0.0
            };
            let lr = lr as f32;
            match self.method {
                Method::Sgd { momentum, nesterov } => {
                    let m = &mut self.m[i];
                    for ((p, &g), b) in p.iter_mut().zip(g).zip(m.iter_mut()) {
                        let mut d = g * scale + wd * *p;
                        if momentum > 0.0 {
                            *b = if t == 1 { d } else { momentum * *b + d };
                            d = if nesterov { d + momentum * *b } else { *b };
                        }
                        *p -= lr * d;
                    }
                }
                Method::AdamW { beta1, beta2, eps } => {
                    let bc1 = 1.0 - beta1.powi(t);
                    let bc2 = 1.0 - beta2.powi(t);
                    let (m, v) = (&mut self.m[i], &mut self.v[i]);
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                    {
                        let g = g * scale;
                        *p *= 1.0 - lr * wd;
                        *m = beta1 * *m + (1.0 - beta1) * g;
                        *v = beta2 * *v + (1.0 - beta2) * g * g;
                        *p -= lr * (*m / bc1) / ((*v / bc2).sqrt() + eps);
                    }
                }
            }
        }
        StepInfo { lr, grad_norm }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-matrix, one-vector model for checking update rules by hand.
    #[derive(Clone)]
    struct Toy(Vec<f32>, Vec<f32>);
    impl Params for Toy {
        fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
            vec![
                ("w".into(), vec![1, 2], &self.0[..]),
                ("b".into(), vec![1], &self.1[..]),
            ]
        }
        fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
            vec![&mut self.0[..], &mut self.1[..]]
        }
    }

    fn sched(lr: f64) -> Schedule {
        Schedule {
            lr,
            warmup: 0,
            total: 10,
            decay: Decay::Constant,
            min_lr: 0.0,
        }
    }

    #[test]
    fn schedules() {
        let s = Schedule {
            lr: 1.0,
            warmup: 4,
            total: 14,
            decay: Decay::Cosine,
            min_lr: 0.1,
        };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        assert!((s.lr(9) - 0.55).abs() < 1e-12);
        assert!((s.lr(14) - 0.1).abs() < 1e-12);
        let l = Schedule {
            decay: Decay::Linear,
            ..s
        };
        assert!((l.lr(9) - 0.55).abs() < 1e-12);
    }

    #[test]
    fn sgd_momentum_and_nesterov_follow_pytorch() {
        // Hand-computed from torch.optim.SGD's documented recurrence, g constant = 1, lr 0.1.
        for (nesterov, want) in [(false, [-0.1f32, -0.29]), (true, [-0.19, -0.461])] {
            let mut m = Toy(vec![0.0, 0.0], vec![0.0]);
            let g = Toy(vec![1.0, 1.0], vec![1.0]);
            let method = Method::Sgd {
                momentum: 0.9,
                nesterov,
            };
            let mut o = Optimizer::new(method, sched(0.1), 0.0, None, &m);
            for w in want {
                o.step(&mut m, &g);
                assert!((m.0[0] - w).abs() < 1e-6, "{nesterov}: {} vs {w}", m.0[0]);
            }
        }
    }

    #[test]
    fn adamw_first_steps_and_decoupled_decay() {
        // Step 1 of Adam moves every coordinate by lr·sign(g) (bias-corrected); AdamW also
        // shrinks matrices (not vectors) by lr·wd·p first.
        let mut m = Toy(vec![1.0, -2.0], vec![3.0]);
        let g = Toy(vec![0.5, -4.0], vec![2.0]);
        let method = Method::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        let mut o = Optimizer::new(method, sched(0.01), 0.1, None, &m);
        let info = o.step(&mut m, &g);
        assert!((info.grad_norm - (0.25f64 + 16.0 + 4.0).sqrt()).abs() < 1e-9);
        assert!((m.0[0] - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6);
        assert!((m.0[1] - (-2.0 * (1.0 - 0.001) + 0.01)).abs() < 1e-6);
        assert!((m.1[0] - (3.0 - 0.01)).abs() < 1e-6, "bias is not decayed");
    }

    #[test]
    fn clipping_scales_to_the_norm() {
        let mut m = Toy(vec![0.0, 0.0], vec![0.0]);
        let g = Toy(vec![3.0, 4.0], vec![0.0]);
        let plain = Method::Sgd {
            momentum: 0.0,
            nesterov: false,
        };
        let mut o = Optimizer::new(plain, sched(1.0), 0.0, Some(1.0), &m);
        let info = o.step(&mut m, &g);
        assert_eq!(info.grad_norm, 5.0);
        assert!((m.0[0] + 0.6).abs() < 1e-6 && (m.0[1] + 0.8).abs() < 1e-6);
    }
}
