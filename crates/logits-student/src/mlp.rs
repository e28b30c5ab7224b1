//! The MLP student: linear layers with ReLU, GELU or tanh between them, forward and backward
//! written with ndarray (GEMMs through `ndarray::linalg`, i.e. matrixmultiply).
//!
//! Initialisation (documented because results depend on it): weights uniform in
//! ±sqrt(6 / (fan_in + fan_out)) (Glorot/Xavier uniform), biases 0, from a seeded ChaCha8 RNG,
//! so the same seed gives the same student on every platform.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::{RngExt, SeedableRng};

/// Nonlinearity between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// GELU, tanh approximation (as in GPT-2 and BERT implementations).
    Gelu,
    /// tanh.
    Tanh,
}

impl Activation {
    fn forward(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => {
                let c = (2.0f32 / std::f32::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
        }
    }

    fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Tanh => 1.0 - x.tanh().powi(2),
            Activation::Gelu => {
                let c = (2.0f32 / std::f32::consts::PI).sqrt();
                let u = c * (x + 0.044715 * x * x * x);
                let th = u.tanh();
                0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * x * x)
            }
        }
    }
}

/// One linear layer: y = x·W + b, W is `in × out`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// Weights, `in × out`.
    pub w: Array2<f32>,
    /// Bias, `out`.
    pub b: Array1<f32>,
}

/// Gradients of a [`Linear`] layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrad {
    /// ∂L/∂W.
    pub w: Array2<f32>,
    /// ∂L/∂b.
    pub b: Array1<f32>,
}

/// An MLP: `widths[0]` inputs, `widths.last()` outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// The layers, input to output.
    pub layers: Vec<Linear>,
    /// The nonlinearity after every layer but the last.
    pub activation: Activation,
}

/// What the forward pass keeps for the backward pass.
#[derive(Debug, Clone)]
pub struct Cache {
    /// Input of each layer (the activated output of the previous one).
    pub inputs: Vec<Array2<f32>>,
    /// Pre-activation output of each hidden layer.
    pub pre: Vec<Array2<f32>>,
}

impl Mlp {
    /// A seeded, Glorot-initialised MLP.
    pub fn new(widths: &[usize], activation: Activation, seed: u64) -> Mlp {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let layers = widths
            .windows(2)
            .map(|io| {
                let a = (6.0 / (io[0] + io[1]) as f32).sqrt();
                Linear {
                    w: Array2::from_shape_fn((io[0], io[1]), |_| rng.random_range(-a..a)),
                    b: Array1::zeros(io[1]),
                }
            })
            .collect();
        Mlp { layers, activation }
    }

    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.layers.iter().map(|l| l.w.len() + l.b.len()).sum()
    }

    /// Forward pass on a batch (`rows × inputs`): the logits and the cache.
    pub fn forward(&self, x: ArrayView2<f32>) -> (Array2<f32>, Cache) {
        let mut cache = Cache {
            inputs: Vec::new(),
            pre: Vec::new(),
        };
        let mut h = x.to_owned();
        let last = self.layers.len().saturating_sub(1);
        for (i, l) in self.layers.iter().enumerate() {
            let z = h.dot(&l.w) + &l.b;
            cache.inputs.push(h);
            if i == last {
                return (z, cache);
            }
            h = z.mapv(|v| self.activation.forward(v));
            cache.pre.push(z);
        }
        (h, cache)
    }

    /// The activated output of hidden layer `i` (0-based) from a cache: what feature and
    /// relation losses compare with the teacher.
    pub fn hidden<'a>(&self, cache: &'a Cache, i: usize) -> Option<&'a Array2<f32>> {
        cache.inputs.get(i + 1)
    }

    /// Backward pass from ∂L/∂logits; `extra_hidden[i]`, when given, is added to ∂L/∂(hidden
    /// layer i's activated output) — where feature and relation losses enter.
    pub fn backward(
        &self,
        cache: &Cache,
        dlogits: Array2<f32>,
        extra_hidden: &[Option<Array2<f32>>],
    ) -> Vec<LinearGrad> {
        let mut grads = Vec::with_capacity(self.layers.len());
        let mut d = dlogits;
        for i in (0..self.layers.len()).rev() {
            let l = &self.layers[i];
            let x = &cache.inputs[i];
            grads.push(LinearGrad {
                w: x.t().dot(&d),
                b: d.sum_axis(Axis(0)),
            });
            if i == 0 {
                break;
            }
            let mut dh = d.dot(&l.w.t());
            if let Some(Some(e)) = extra_hidden.get(i - 1) {
                dh += e;
            }
            let pre = &cache.pre[i - 1];
            d = ndarray::Zip::from(&dh)
                .and(pre)
                .map_collect(|g, z| g * self.activation.derivative(*z));
        }
        grads.reverse();
        grads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L = Σ logits ⊙ R + Σ hidden0 ⊙ S for fixed R, S: checks every weight's gradient
    /// against central finite differences, for each activation.
    #[test]
    fn gradients_match_finite_differences() {
        for act in [Activation::Relu, Activation::Gelu, Activation::Tanh] {
            let mut m = Mlp::new(&[5, 7, 6, 3], act, 11);
            for l in &mut m.layers {
                l.b.mapv_inplace(|_| 0.1);
            }
            let x = Array2::from_shape_fn((4, 5), |(i, j)| ((i * 5 + j) as f32 * 0.37).sin());
            let r = Array2::from_shape_fn((4, 3), |(i, j)| ((i + 2 * j) as f32 * 0.71).cos());
            let s = Array2::from_shape_fn((4, 7), |(i, j)| ((3 * i + j) as f32 * 0.23).sin());
            let loss = |m: &Mlp| -> f64 {
                let (y, c) = m.forward(x.view());
                (&y * &r).sum() as f64 + (m.hidden(&c, 0).unwrap() * &s).sum() as f64
            };
            let (_, cache) = m.forward(x.view());
            let g = m.backward(&cache, r.clone(), &[Some(s.clone()), None]);
            for (li, gl) in g.iter().enumerate() {
                for idx in 0..m.layers[li].w.len() {
                    let (i, j) = (idx / m.layers[li].w.ncols(), idx % m.layers[li].w.ncols());
                    let h = 1e-2f32;
                    let (mut a, mut b) = (m.clone(), m.clone());
                    a.layers[li].w[[i, j]] += h;
                    b.layers[li].w[[i, j]] -= h;
                    let fd = (loss(&a) - loss(&b)) / (2.0 * h as f64);
                    let an = gl.w[[i, j]] as f64;
                    assert!(
                        (fd - an).abs() < 2e-2 * (1.0 + fd.abs()),
                        "{act:?} layer {li} w[{i},{j}]: fd {fd} vs {an}"
                    );
                }
                for j in 0..m.layers[li].b.len() {
                    let h = 1e-2f32;
                    let (mut a, mut b) = (m.clone(), m.clone());
                    a.layers[li].b[j] += h;
                    b.layers[li].b[j] -= h;
                    let fd = (loss(&a) - loss(&b)) / (2.0 * h as f64);
                    let an = gl.b[j] as f64;
                    assert!(
                        (fd - an).abs() < 2e-2 * (1.0 + fd.abs()),
                        "{act:?} layer {li} b[{j}]: fd {fd} vs {an}"
                    );
                }
            }
        }
    }

    #[test]
    fn seeded_and_sized() {
        let a = Mlp::new(&[64, 32, 10], Activation::Relu, 5);
        assert_eq!(a, Mlp::new(&[64, 32, 10], Activation::Relu, 5));
        assert_ne!(a, Mlp::new(&[64, 32, 10], Activation::Relu, 6));
        assert_eq!(a.parameters(), 64 * 32 + 32 + 32 * 10 + 10);
    }
}
