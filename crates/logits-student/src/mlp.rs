//! The MLP student: linear layers with, between them, optional layer norm, a nonlinearity
//! (ReLU, GELU or tanh) and optional dropout. Forward and backward are written with ndarray
//! (GEMMs through `ndarray::linalg`, i.e. matrixmultiply).
//!
//! Hidden layer i computes `h_i = act(LN(x·W + b))`; `h_i` is what feature and relation losses
//! compare with the teacher (before dropout, so the comparison does not depend on the mask),
//! and `dropout(h_i)` feeds the next layer.
//!
//! Integer inputs (bytes, ids, small vocabularies) can go through an embedding first: each of
//! the `n` input values is an id below `vocab`, looked up in one shared `vocab × dim` table
//! (`nn.Embedding`), and the `n` rows are concatenated into the first layer's `n · dim` inputs.
//!
//! Initialisation (documented because results depend on it): weights uniform in
//! ±sqrt(6 / (fan_in + fan_out)) (Glorot/Xavier uniform), biases 0, layer-norm gain 1 and
//! shift 0, embedding entries standard normal (as `nn.Embedding`), from a seeded ChaCha8 RNG,
//! so the same seed gives the same student everywhere.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};
use rand::{RngExt, SeedableRng};

use crate::params::Params;

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

/// √(2/π), the constant of Gelu's tanh approximation.
pub const GELU_C: f32 = 0.797_884_6;

impl Activation {
    /// The name used in configurations and exported files.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Tanh => "tanh",
        }
    }

    /// Parses [`Activation::name`].
    pub fn parse(s: &str) -> Option<Activation> {
        match s {
            "relu" => Some(Activation::Relu),
            "gelu" => Some(Activation::Gelu),
            "tanh" => Some(Activation::Tanh),
            _ => None,
        }
    }

    /// The activation of one value.
    pub fn forward(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => 0.5 * x * (1.0 + (GELU_C * (x + 0.044715 * x * x * x)).tanh()),
        }
    }

    /// Its derivative.
    pub fn derivative(self, x: f32) -> f32 {
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
                let th = (GELU_C * (x + 0.044715 * x * x * x)).tanh();
                0.5 * (1.0 + th)
                    + 0.5 * x * (1.0 - th * th) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x)
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

impl Linear {
    /// A Glorot-uniform layer drawn from `rng`.
    pub fn glorot(inputs: usize, outputs: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Linear {
        let a = (6.0 / (inputs + outputs).max(1) as f32).sqrt();
        Linear {
            w: Array2::from_shape_fn((inputs, outputs), |_| rng.random_range(-a..=a)),
            b: Array1::zeros(outputs),
        }
    }

    /// A zero layer of the same shape (gradient accumulator).
    pub fn zeros_like(&self) -> Linear {
        Linear {
            w: Array2::zeros(self.w.raw_dim()),
            b: Array1::zeros(self.b.len()),
        }
    }

    /// x·W + b.
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        x.dot(&self.w) + &self.b
    }

    /// Accumulates ∂L/∂W, ∂L/∂b into `grad` and returns ∂L/∂x.
    pub fn backward(
        &self,
        x: ArrayView2<f32>,
        d: ArrayView2<f32>,
        grad: &mut Linear,
    ) -> Array2<f32> {
        self.backward_weights(x, d, grad);
        d.dot(&self.w.t())
    }

    /// Accumulates ∂L/∂W, ∂L/∂b only (the first layer needs no ∂L/∂x: one GEMM saved).
    pub fn backward_weights(&self, x: ArrayView2<f32>, d: ArrayView2<f32>, grad: &mut Linear) {
        ndarray::linalg::general_mat_mul(1.0, &x.t(), &d, 1.0, &mut grad.w);
        grad.b += &d.sum_axis(Axis(0));
    }
}

/// Layer normalisation over the last axis with a learned gain and shift (ε = 1e-5, as in
/// PyTorch and ONNX's LayerNormalization).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    /// Gain γ.
    pub gamma: Array1<f32>,
    /// Shift β.
    pub beta: Array1<f32>,
}

/// The ε of [`LayerNorm`].
pub const LN_EPS: f32 = 1e-5;

impl LayerNorm {
    /// γ = 1, β = 0.
    pub fn new(width: usize) -> LayerNorm {
        LayerNorm {
            gamma: Array1::ones(width),
            beta: Array1::zeros(width),
        }
    }

    pub(crate) fn zeros_like(&self) -> LayerNorm {
        LayerNorm {
            gamma: Array1::zeros(self.gamma.len()),
            beta: Array1::zeros(self.beta.len()),
        }
    }

    /// Normalised input x̂ and 1/σ per row, then γ·x̂ + β.
    pub(crate) fn forward(&self, z: &Array2<f32>) -> (Array2<f32>, Array1<f32>, Array2<f32>) {
        let n = z.ncols().max(1) as f32;
        let mut xhat = z.clone();
        let mut inv = Array1::zeros(z.nrows());
        for (mut r, iv) in xhat.axis_iter_mut(Axis(0)).zip(inv.iter_mut()) {
            let mean = r.sum() / n;
            r -= mean;
            let var = r.iter().map(|v| v * v).sum::<f32>() / n;
            *iv = 1.0 / (var + LN_EPS).sqrt();
            r *= *iv;
        }
        let y = &xhat * &self.gamma + &self.beta;
        (xhat, inv, y)
    }

    /// Backward from ∂L/∂y; accumulates γ, β gradients and returns ∂L/∂z.
    pub(crate) fn backward(
        &self,
        xhat: &Array2<f32>,
        inv: &Array1<f32>,
        dy: &Array2<f32>,
        grad: &mut LayerNorm,
    ) -> Array2<f32> {
        grad.gamma += &(dy * xhat).sum_axis(Axis(0));
        grad.beta += &dy.sum_axis(Axis(0));
        let n = dy.ncols().max(1) as f32;
        let mut dz = dy * &self.gamma;
        for ((mut r, xr), iv) in dz.axis_iter_mut(Axis(0)).zip(xhat.rows()).zip(inv) {
            let mean = r.sum() / n;
            let dot = r.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>() / n;
            Zip::from(&mut r)
                .and(&xr)
                .for_each(|d, &x| *d = iv * (*d - mean - x * dot));
        }
        dz
    }
}

/// An embedding in front of the first layer: ids below `vocab`, `dim` values each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedSpec {
    /// Ids are `0..vocab`.
    pub vocab: usize,
    /// Values per id.
    pub dim: usize,
}

/// The shape of an MLP.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpSpec {
    /// Widths: the first layer's inputs (input values × embedding width with an embedding),
    /// hidden layers..., outputs.
    pub widths: Vec<usize>,
    /// An embedding per input value, when the inputs are ids.
    pub embed: Option<EmbedSpec>,
    /// A convolutional front, when the inputs are images.
    pub conv: Option<crate::conv::ConvSpec>,
    /// Nonlinearity after every hidden layer.
    pub activation: Activation,
    /// Layer norm before each hidden nonlinearity.
    pub layer_norm: bool,
    /// Dropout probability after each hidden layer while training (0 = none).
    pub dropout: f32,
}

/// An MLP: `widths[0]` inputs, `widths.last()` outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// Its shape.
    pub spec: MlpSpec,
    /// The layers, input to output.
    pub layers: Vec<Linear>,
    /// One layer norm per hidden layer when `spec.layer_norm`, else empty.
    pub norms: Vec<LayerNorm>,
    /// The `vocab × dim` embedding table when `spec.embed`.
    pub embed: Option<Array2<f32>>,
    /// The convolutional front when `spec.conv`.
    pub conv: Option<crate::conv::ConvStack>,
}

/// What the forward pass keeps for the backward pass.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    /// Input of each layer (after the previous layer's dropout).
    pub inputs: Vec<Array2<f32>>,
    /// Hidden outputs h_i (activated, before dropout).
    pub hidden: Vec<Array2<f32>>,
    /// Input of each hidden nonlinearity (after layer norm).
    act_in: Vec<Array2<f32>>,
    /// Layer-norm x̂ and 1/σ per hidden layer.
    ln: Vec<(Array2<f32>, Array1<f32>)>,
    /// Dropout multipliers (0 or 1/(1−p)) per hidden layer, when training with dropout.
    masks: Vec<Option<Array2<f32>>>,
    /// The looked-up ids, row-major, with an embedding.
    ids: Vec<usize>,
    /// The convolutional front's cache.
    conv: Option<crate::conv::ConvCache>,
}

impl Mlp {
    /// A seeded, Glorot-initialised MLP.
    pub fn new(spec: MlpSpec, seed: u64) -> Mlp {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let layers = spec
            .widths
            .windows(2)
            .map(|io| Linear::glorot(io[0], io[1], &mut rng))
            .collect();
        let hidden = spec.widths.len().saturating_sub(2);
        let norms = if spec.layer_norm {
            spec.widths[1..1 + hidden]
                .iter()
                .map(|&w| LayerNorm::new(w))
                .collect()
        } else {
            Vec::new()
        };
        // After the layers, so a student without an embedding is initialised as before.
        let embed = spec.embed.map(|e| {
            Array2::from_shape_fn((e.vocab, e.dim), |_| {
                // Box–Muller: a standard normal from two uniforms.
                let u1 = rng.random::<f32>().max(f32::MIN_POSITIVE);
                let u2 = rng.random::<f32>();
                (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
        });
        let conv = spec
            .conv
            .clone()
            .map(|c| crate::conv::ConvStack::new(c, &mut rng));
        Mlp {
            spec,
            layers,
            norms,
            embed,
            conv,
        }
    }

    /// Input values the student reads per row (the first layer's width without an embedding,
    /// the number of ids with one).
    pub fn input_width(&self) -> usize {
        match (&self.spec.conv, &self.spec.embed) {
            // Embedded ids as a D × 1 × n image: n ids per row.
            (Some(c), Some(_)) => return c.image[2],
            (Some(c), None) => return c.in_width(),
            _ => {}
        }
        let w = self.spec.widths.first().copied().unwrap_or(0);
        match self.spec.embed {
            Some(e) => w / e.dim.max(1),
            None => w,
        }
    }

    /// The first input value that is not an id of the embedding (row, column, value), if any.
    pub fn invalid_id(&self, x: ArrayView2<f32>) -> Option<(usize, usize, f32)> {
        let e = self.spec.embed?;
        x.indexed_iter()
            .find(|(_, v)| !(v.fract() == 0.0 && **v >= 0.0 && (**v as usize) < e.vocab))
            .map(|((r, c), v)| (r, c, *v))
    }

    /// The embedded rows (`rows × n·dim`) and the ids looked up; an id out of range (refused
    /// earlier by [`Mlp::invalid_id`]) is clamped rather than panicking.
    fn embed_rows(&self, table: &Array2<f32>, x: ArrayView2<f32>) -> (Array2<f32>, Vec<usize>) {
        let (rows, n) = x.dim();
        let (vocab, dim) = table.dim();
        let ids: Vec<usize> = x
            .iter()
            .map(|v| (v.max(0.0) as usize).min(vocab.saturating_sub(1)))
            .collect();
        let mut h = Array2::<f32>::zeros((rows, n * dim));
        let t = slice(table);
        for (out, id) in h
            .as_slice_mut()
            .unwrap_or(&mut [])
            .chunks_exact_mut(dim.max(1))
            .zip(&ids)
        {
            out.copy_from_slice(&t[id * dim..(id + 1) * dim]);
        }
        (h, ids)
    }

    /// A zero MLP of the same shape (gradient accumulator).
    pub fn zeros_like(&self) -> Mlp {
        Mlp {
            spec: self.spec.clone(),
            layers: self.layers.iter().map(Linear::zeros_like).collect(),
            norms: self.norms.iter().map(LayerNorm::zeros_like).collect(),
            embed: self.embed.as_ref().map(|t| Array2::zeros(t.raw_dim())),
            conv: self.conv.as_ref().map(crate::conv::ConvStack::zeros_like),
        }
    }

    /// Number of hidden layers.
    pub fn hidden_layers(&self) -> usize {
        self.layers.len().saturating_sub(1)
    }

    /// Inference: the logits of a batch (`rows × inputs`), no dropout.
    pub fn predict(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.forward(x, None).0
    }

    /// Forward pass; with `dropout_rng`, dropout is applied (training).
    pub fn forward(
        &self,
        x: ArrayView2<f32>,
        mut dropout_rng: Option<&mut rand_chacha::ChaCha8Rng>,
    ) -> (Array2<f32>, Cache) {
        let mut cache = Cache::default();
        let mut input = match &self.embed {
            Some(table) => {
                let (h, ids) = self.embed_rows(table, x);
                cache.ids = ids;
                match &self.conv {
                    // Convolutions read the embedding's values as channels.
                    Some(_) => channels_first(&h, table.ncols()),
                    None => h,
                }
            }
            None => x.to_owned(),
        };
        if let Some(conv) = &self.conv {
            let (h, c) = conv.forward(input.view());
            cache.conv = Some(c);
            input = h;
        }
        let last = self.layers.len().saturating_sub(1);
        for (i, l) in self.layers.iter().enumerate() {
            let mut z = l.forward(input.view());
            cache.inputs.push(input);
            if i == last {
                return (z, cache);
            }
            if let Some(ln) = self.norms.get(i) {
                let (xhat, inv, y) = ln.forward(&z);
                cache.ln.push((xhat, inv));
                z = y;
            }
            let h = z.mapv(|v| self.spec.activation.forward(v));
            cache.act_in.push(z);
            let p = self.spec.dropout;
            let mask = match dropout_rng.as_deref_mut() {
                Some(rng) if p > 0.0 => {
                    let keep = 1.0 / (1.0 - p);
                    Some(Array2::from_shape_fn(h.raw_dim(), |_| {
                        if rng.random::<f32>() < p { 0.0 } else { keep }
                    }))
                }
                _ => None,
            };
            input = match &mask {
                Some(m) => &h * m,
                None => h.clone(),
            };
            cache.masks.push(mask);
            cache.hidden.push(h);
        }
        (input, cache)
    }

    /// Backward pass from ∂L/∂logits; `extra_hidden[i]`, when given, is added to ∂L/∂h_i —
    /// where feature and relation losses enter. Gradients accumulate into `grad`.
    pub fn backward(
        &self,
        cache: &Cache,
        dlogits: Array2<f32>,
        extra_hidden: &[Option<Array2<f32>>],
        grad: &mut Mlp,
    ) {
        let mut d = dlogits;
        for i in (0..self.layers.len()).rev() {
            if i == 0 {
                let mut dx_conv = None;
                if let (Some(conv), Some(g), Some(c)) =
                    (&self.conv, grad.conv.as_mut(), &cache.conv)
                {
                    let dx = self.layers[0].backward(
                        cache.inputs[0].view(),
                        d.view(),
                        &mut grad.layers[0],
                    );
                    let dim = self.embed.as_ref().map_or(1, |t| t.ncols());
                    dx_conv = conv
                        .backward(c, dx, g, self.embed.is_some())
                        .map(|dx| positions_first(&dx, dim));
                    if dx_conv.is_none() {
                        break;
                    }
                }
                match (&self.embed, grad.embed.as_mut()) {
                    (Some(table), Some(g)) => {
                        let dx = match dx_conv {
                            Some(dx) => dx,
                            None => self.layers[0].backward(
                                cache.inputs[0].view(),
                                d.view(),
                                &mut grad.layers[0],
                            ),
                        };
                        // Each looked-up row receives its slice of ∂L/∂input.
                        let dim = table.ncols();
                        let n = dx.ncols() / dim.max(1);
                        for (r, drow) in dx.axis_iter(Axis(0)).enumerate() {
                            for p in 0..n {
                                let mut gr = g.row_mut(cache.ids[r * n + p]);
                                gr += &drow.slice(ndarray::s![p * dim..(p + 1) * dim]);
                            }
                        }
                    }
                    _ => self.layers[0].backward_weights(
                        cache.inputs[0].view(),
                        d.view(),
                        &mut grad.layers[0],
                    ),
                }
                break;
            }
            let dx = self.layers[i].backward(cache.inputs[i].view(), d.view(), &mut grad.layers[i]);
            let j = i - 1;
            let mut dh = match &cache.masks[j] {
                Some(m) => dx * m,
                None => dx,
            };
            if let Some(Some(e)) = extra_hidden.get(j) {
                dh += e;
            }
            let act = self.spec.activation;
            d = Zip::from(&dh)
                .and(&cache.act_in[j])
                .map_collect(|g, z| g * act.derivative(*z));
            if let Some(ln) = self.norms.get(j) {
                let (xhat, inv) = &cache.ln[j];
                d = ln.backward(xhat, inv, &d, &mut grad.norms[j]);
            }
        }
    }
}

/// Embedded rows `B × (n · dim)` (position-major) as `B × (dim · n)` (channel-major: the
/// `dim × 1 × n` image a convolution reads).
fn channels_first(h: &Array2<f32>, dim: usize) -> Array2<f32> {
    transpose_rows(h, h.ncols() / dim.max(1), dim)
}

/// The inverse of [`channels_first`].
fn positions_first(h: &Array2<f32>, dim: usize) -> Array2<f32> {
    transpose_rows(h, dim, h.ncols() / dim.max(1))
}

/// Each row read as an `a × b` matrix (row-major), written transposed (`b × a`).
fn transpose_rows(h: &Array2<f32>, a: usize, b: usize) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros(h.raw_dim());
    for (src, mut dst) in h.rows().into_iter().zip(out.rows_mut()) {
        let dst = dst.as_slice_mut().unwrap_or(&mut []);
        for (i, &v) in src.iter().enumerate() {
            dst[(i % b) * a + i / b] = v;
        }
    }
    out
}

impl Params for Mlp {
    fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut out = Vec::new();
        if let Some(t) = &self.embed {
            out.push(("embed.weight".to_string(), t.shape().to_vec(), slice(t)));
        }
        if let Some(c) = &self.conv {
            out.extend(c.tensors());
        }
        for (i, l) in self.layers.iter().enumerate() {
            out.push((
                format!("layers.{i}.weight"),
                l.w.shape().to_vec(),
                slice(&l.w),
            ));
            out.push((format!("layers.{i}.bias"), vec![l.b.len()], slice1(&l.b)));
        }
        for (i, n) in self.norms.iter().enumerate() {
            out.push((
                format!("norms.{i}.gamma"),
                vec![n.gamma.len()],
                slice1(&n.gamma),
            ));
            out.push((
                format!("norms.{i}.beta"),
                vec![n.beta.len()],
                slice1(&n.beta),
            ));
        }
        out
    }

    fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = Vec::new();
        if let Some(t) = &mut self.embed {
            out.push(slice_mut(t));
        }
        if let Some(c) = &mut self.conv {
            out.extend(c.tensors_mut());
        }
        for l in &mut self.layers {
            out.push(slice_mut(&mut l.w));
            out.push(slice1_mut(&mut l.b));
        }
        for n in &mut self.norms {
            out.push(slice1_mut(&mut n.gamma));
            out.push(slice1_mut(&mut n.beta));
        }
        out
    }
}

// Parameters are always created in standard layout (from_shape_fn / zeros / from_shape_vec),
// so these views cannot fail; an empty slice would only make an optimizer step a no-op.
pub(crate) fn slice(a: &Array2<f32>) -> &[f32] {
    a.as_slice_memory_order().unwrap_or(&[])
}
pub(crate) fn slice1(a: &Array1<f32>) -> &[f32] {
    a.as_slice_memory_order().unwrap_or(&[])
}
pub(crate) fn slice_mut(a: &mut Array2<f32>) -> &mut [f32] {
    a.as_slice_memory_order_mut().unwrap_or(&mut [])
}
pub(crate) fn slice1_mut(a: &mut Array1<f32>) -> &mut [f32] {
    a.as_slice_memory_order_mut().unwrap_or(&mut [])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(act: Activation, ln: bool, dropout: f32) -> MlpSpec {
        MlpSpec {
            widths: vec![5, 7, 6, 3],
            embed: None,
            conv: None,
            activation: act,
            layer_norm: ln,
            dropout,
        }
    }

    /// An embedding read by 1-D convolutions (ids → dim channels × n positions): the table's,
    /// the convolution's and the layers' gradients against finite differences.
    #[test]
    fn embedded_convolution_gradients_match_finite_differences() {
        let m = Mlp::new(
            MlpSpec {
                widths: vec![6, 4, 3],
                embed: Some(EmbedSpec { vocab: 5, dim: 2 }),
                conv: Some(crate::conv::ConvSpec {
                    image: [2, 1, 4],
                    channels: vec![3],
                    channels_last: false,
                }),
                activation: Activation::Tanh,
                layer_norm: false,
                dropout: 0.0,
            },
            9,
        );
        assert_eq!(m.input_width(), 4);
        let x =
            Array2::from_shape_vec((2, 4), vec![0.0, 4.0, 2.0, 2.0, 1.0, 3.0, 0.0, 4.0]).unwrap();
        let r = Array2::from_shape_fn((2, 3), |(i, j)| ((i + 2 * j) as f32 * 0.71).cos());
        let loss = |m: &Mlp| -> f64 { (&m.predict(x.view()) * &r).sum() as f64 };
        let (_, cache) = m.forward(x.view(), None);
        let mut g = m.zeros_like();
        m.backward(&cache, r.clone(), &[], &mut g);
        let t = g.tensors();
        assert_eq!(t[0].0, "embed.weight");
        assert!(
            t[0].2.iter().any(|v| *v != 0.0),
            "the table gets a gradient"
        );
        crate::gradcheck::check(&m, &g, loss, "embedded convolution");
    }

    /// L = Σ logits ⊙ R + Σ h_0 ⊙ S for fixed R, S: checks every parameter's gradient against
    /// central finite differences, for each activation, with and without layer norm, and with
    /// dropout (the same mask on every evaluation, from the same seed).
    #[test]
    fn gradients_match_finite_differences() {
        for act in [Activation::Relu, Activation::Gelu, Activation::Tanh] {
            for (ln, p) in [(false, 0.0), (true, 0.0), (true, 0.3)] {
                let mut m = Mlp::new(spec(act, ln, p), 11);
                for l in &mut m.layers {
                    l.b.mapv_inplace(|_| 0.1);
                }
                for n in &mut m.norms {
                    n.gamma.mapv_inplace(|_| 1.3);
                    n.beta.mapv_inplace(|_| -0.2);
                }
                let x = Array2::from_shape_fn((4, 5), |(i, j)| ((i * 5 + j) as f32 * 0.37).sin());
                let r = Array2::from_shape_fn((4, 3), |(i, j)| ((i + 2 * j) as f32 * 0.71).cos());
                let s = Array2::from_shape_fn((4, 7), |(i, j)| ((3 * i + j) as f32 * 0.23).sin());
                let loss = |m: &Mlp| -> f64 {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
                    let (y, c) = m.forward(x.view(), Some(&mut rng));
                    (&y * &r).sum() as f64 + (&c.hidden[0] * &s).sum() as f64
                };
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
                let (_, cache) = m.forward(x.view(), Some(&mut rng));
                let mut g = m.zeros_like();
                m.backward(&cache, r.clone(), &[Some(s.clone()), None], &mut g);
                crate::gradcheck::check(&m, &g, loss, &format!("{act:?} ln={ln} p={p}"));
            }
        }
    }

    /// The embedding's gradient (rows scattered back by id, one id used twice in a row)
    /// against central finite differences, with the layers' gradients.
    #[test]
    fn embedding_gradients_match_finite_differences() {
        let m = Mlp::new(
            MlpSpec {
                widths: vec![6, 4, 3],
                embed: Some(EmbedSpec { vocab: 5, dim: 3 }),
                conv: None,
                activation: Activation::Tanh,
                layer_norm: true,
                dropout: 0.0,
            },
            2,
        );
        let x = Array2::from_shape_vec((3, 2), vec![0.0, 4.0, 2.0, 2.0, 1.0, 4.0]).unwrap();
        assert_eq!(m.input_width(), 2);
        assert_eq!(m.invalid_id(x.view()), None);
        let r = Array2::from_shape_fn((3, 3), |(i, j)| ((i + 2 * j) as f32 * 0.71).cos());
        let loss = |m: &Mlp| -> f64 { (&m.predict(x.view()) * &r).sum() as f64 };
        let (_, cache) = m.forward(x.view(), None);
        let mut g = m.zeros_like();
        m.backward(&cache, r.clone(), &[], &mut g);
        let t = g.tensors();
        assert_eq!(t[0].0, "embed.weight");
        // Id 3 is never looked up: its row gets no gradient.
        assert!(t[0].2[9..12].iter().all(|v| *v == 0.0));
        crate::gradcheck::check(&m, &g, loss, "embedding");
        let bad = Array2::from_shape_vec((1, 2), vec![1.0, 5.0]).unwrap();
        assert_eq!(m.invalid_id(bad.view()), Some((0, 1, 5.0)));
        let frac = Array2::from_shape_vec((1, 2), vec![1.5, 0.0]).unwrap();
        assert_eq!(m.invalid_id(frac.view()), Some((0, 0, 1.5)));
    }

    #[test]
    fn seeded_and_sized() {
        let s = MlpSpec {
            widths: vec![64, 32, 10],
            embed: None,
            conv: None,
            activation: Activation::Relu,
            layer_norm: false,
            dropout: 0.0,
        };
        let a = Mlp::new(s.clone(), 5);
        assert_eq!(a, Mlp::new(s.clone(), 5));
        assert_ne!(a, Mlp::new(s.clone(), 6));
        assert_eq!(a.parameter_count(), 64 * 32 + 32 + 32 * 10 + 10);
        let ln = Mlp::new(
            MlpSpec {
                layer_norm: true,
                ..s
            },
            5,
        );
        assert_eq!(ln.parameter_count(), a.parameter_count() + 64);
    }

    #[test]
    fn dropout_only_in_training() {
        let m = Mlp::new(spec(Activation::Relu, false, 0.5), 1);
        let x = Array2::from_shape_fn((8, 5), |(i, j)| (i + j) as f32 * 0.1);
        assert_eq!(m.predict(x.view()), m.forward(x.view(), None).0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let (_, c) = m.forward(x.view(), Some(&mut rng));
        let zeros = c.inputs[1].iter().filter(|v| **v == 0.0).count();
        let hz = c.hidden[0].iter().filter(|v| **v == 0.0).count();
        assert!(zeros > hz, "dropout zeroed nothing");
    }
}
