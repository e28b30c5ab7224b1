//! The convolutional front of the classifier student, for image-shaped inputs (`[C, H, W]`, or
//! a flat row read as one) and sequences (`[C, 1, L]`: the same code is a 1-D convolution): a
//! fixed per-channel standardisation, then blocks of 3×3 convolution (stride 1, zero padding
//! 1; a side of length 1 gets a kernel side of 1) → ReLU → 2×2 max-pooling (stride 2; a side
//! below 2 is not pooled), flattened (channel, row, column) into the MLP layers that follow.
//!
//! Convolutions run as im2col + one GEMM per block over the whole batch (`O × C·kh·kw` times
//! `C·kh·kw × B·H·W`), their gradients as two GEMMs and col2im. Weights are stored
//! `O × C·kh·kw`, which is PyTorch's `Conv2d` `(O, C, kh, kw)` in memory order;
//! initialisation is Glorot uniform over fan-in C·kh·kw and fan-out O·kh·kw, biases 0.
//!
//! The per-channel mean and scale (1/std) are buffers, not parameters: fitted on the training
//! rows before the first step (standardising per channel keeps the convolution a convolution,
//! which a per-pixel standardisation folded into it would not), listed with the parameters so
//! checkpoints and exports carry them, and never given a gradient, so no optimizer moves them.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::RngExt;

use crate::mlp::{slice, slice_mut, slice1, slice1_mut};
use crate::params::Params;

/// The image a row holds and the convolution blocks' output channels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvSpec {
    /// Input channels, height, width.
    pub image: [usize; 3],
    /// Output channels of each block.
    pub channels: Vec<usize>,
    /// Rows hold `[H, W, C]` (TensorFlow's layout) and are transposed to `[C, H, W]` first.
    #[serde(default)]
    pub channels_last: bool,
}

impl ConvSpec {
    /// `[C, H, W]` at the input of each block and after the last.
    pub fn shapes(&self) -> Vec<[usize; 3]> {
        let mut s = vec![self.image];
        for &o in &self.channels {
            let [_, h, w] = *s.last().unwrap_or(&self.image);
            s.push([o, h / pool(h), w / pool(w)]);
        }
        s
    }

    /// Values per row after the last block (the first linear layer's inputs).
    pub fn out_width(&self) -> usize {
        let [c, h, w] = self.shapes().last().copied().unwrap_or(self.image);
        c * h * w
    }

    /// Values per input row.
    pub fn in_width(&self) -> usize {
        self.image.iter().product()
    }

    /// The kernel `(kh, kw)` of block `i`: 3 along a side longer than 1, else 1.
    pub fn kernel(&self, i: usize) -> (usize, usize) {
        let [_, h, w] = self.shapes().get(i).copied().unwrap_or(self.image);
        (if h > 1 { 3 } else { 1 }, if w > 1 { 3 } else { 1 })
    }
}

/// The pooling window (and stride) along a side of length `n`: 2, or 1 (none) below 2.
pub fn pool(n: usize) -> usize {
    if n >= 2 { 2 } else { 1 }
}

/// One convolution: `w` is `O × C·kh·kw`, `b` is `O`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2d {
    /// Weights, `O × C·kh·kw` (PyTorch's `(O, C, kh, kw)` flattened).
    pub w: Array2<f32>,
    /// Bias, `O`.
    pub b: Array1<f32>,
}

/// The convolutional front: the fixed input standardisation and the blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvStack {
    /// Its shape.
    pub spec: ConvSpec,
    /// Per-channel mean subtracted from the raw input (a buffer).
    pub mean: Array1<f32>,
    /// Per-channel 1/std the centred input is multiplied by (a buffer).
    pub scale: Array1<f32>,
    /// The blocks' convolutions.
    pub layers: Vec<Conv2d>,
}

/// What the forward pass keeps for the backward pass.
#[derive(Debug, Clone, Default)]
pub struct ConvCache {
    cols: Vec<Array2<f32>>,
    pre: Vec<Array2<f32>>,
    /// Per block, for every output value, the flat index in the activation it came from.
    argmax: Vec<Vec<usize>>,
    batch: usize,
}

/// `x` (`B × C·H·W`) as im2col columns `C·kh·kw × B·H·W` for a `kh × kw` kernel with
/// padding `kh/2`, `kw/2` (the output keeps H × W).
fn im2col(x: ArrayView2<f32>, [c, h, w]: [usize; 3], (kh, kw): (usize, usize)) -> Array2<f32> {
    let b = x.nrows();
    let hw = h * w;
    let n = b * hw;
    let mut cols = Array2::zeros((c * kh * kw, n));
    let out = cols.as_slice_mut().unwrap_or(&mut []);
    let x = x.as_standard_layout();
    for (bi, row) in x.rows().into_iter().enumerate() {
        let row = row.to_slice().unwrap_or(&[]);
        each_run([c, h, w], (kh, kw), |r, dst, src, len| {
            let d = r * n + bi * hw + dst;
            out[d..d + len].copy_from_slice(&row[src..src + len]);
        });
    }
    cols
}

/// Calls `f(column row, first output pixel, first input value, run length)` for every run
/// of output pixels along a row that one kernel tap reads inside the image (padding reads
/// zeros and is skipped): im2col and col2im copy or add whole runs, not single values.
fn each_run(
    [c, h, w]: [usize; 3],
    (kh, kw): (usize, usize),
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let (py, px) = (kh / 2, kw / 2);
    for ci in 0..c {
        for ky in 0..kh {
            for kx in 0..kw {
                let r = (ci * kh + ky) * kw + kx;
                // Output columns whose input column xx + kx − px lies in 0..w.
                let x0 = px.saturating_sub(kx);
                let x1 = (w + px).saturating_sub(kx).min(w);
                if x0 >= x1 {
                    continue;
                }
                for y in 0..h {
                    let sy = y + ky;
                    if sy < py || sy - py >= h {
                        continue;
                    }
                    let src = ci * h * w + (sy - py) * w + x0 + kx - px;
                    f(r, y * w + x0, src, x1 - x0);
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: columns' gradients summed back into `B × C·H·W`.
fn col2im(
    cols: &Array2<f32>,
    b: usize,
    [c, h, w]: [usize; 3],
    (kh, kw): (usize, usize),
) -> Array2<f32> {
    let hw = h * w;
    let n = b * hw;
    let mut x = Array2::<f32>::zeros((b, c * hw));
    let src = cols.as_slice().unwrap_or(&[]);
    for (bi, mut row) in x.rows_mut().into_iter().enumerate() {
        let row = row.as_slice_mut().unwrap_or(&mut []);
        each_run([c, h, w], (kh, kw), |r, dst, at, len| {
            let s = r * n + bi * hw + dst;
            for (a, v) in row[at..at + len].iter_mut().zip(&src[s..s + len]) {
                *a += v;
            }
        });
    }
    x
}

impl ConvStack {
    /// A seeded stack (identity standardisation until fitted).
    pub fn new(spec: ConvSpec, rng: &mut rand_chacha::ChaCha8Rng) -> ConvStack {
        let shapes = spec.shapes();
        let layers = spec
            .channels
            .iter()
            .zip(&shapes)
            .enumerate()
            .map(|(i, (&o, &[c, _, _]))| {
                let (kh, kw) = spec.kernel(i);
                let k = kh * kw;
                let a = (6.0 / ((c + o) * k).max(1) as f32).sqrt();
                Conv2d {
                    w: Array2::from_shape_fn((o, c * k), |_| rng.random_range(-a..=a)),
                    b: Array1::zeros(o),
                }
            })
            .collect();
        let c = spec.image[0];
        ConvStack {
            spec,
            mean: Array1::zeros(c),
            scale: Array1::ones(c),
            layers,
        }
    }

    /// A zero stack of the same shape (gradient accumulator; buffers get no gradient).
    pub fn zeros_like(&self) -> ConvStack {
        ConvStack {
            spec: self.spec.clone(),
            mean: Array1::zeros(self.mean.len()),
            scale: Array1::zeros(self.scale.len()),
            layers: self
                .layers
                .iter()
                .map(|l| Conv2d {
                    w: Array2::zeros(l.w.raw_dim()),
                    b: Array1::zeros(l.b.len()),
                })
                .collect(),
        }
    }

    /// Raw rows (`B × C·H·W`) to the flattened output of the last block.
    pub fn forward(&self, x: ArrayView2<f32>) -> (Array2<f32>, ConvCache) {
        let shapes = self.spec.shapes();
        let [c0, h0, w0] = self.spec.image;
        let batch = x.nrows();
        let mut cache = ConvCache {
            batch,
            ..Default::default()
        };
        let hw0 = h0 * w0;
        let mut h = if self.spec.channels_last {
            // [H·W, C] per row to [C, H·W].
            let mut t = Array2::<f32>::zeros(x.raw_dim());
            for (src, mut dst) in x.rows().into_iter().zip(t.rows_mut()) {
                let dst = dst.as_slice_mut().unwrap_or(&mut []);
                for (i, &v) in src.iter().enumerate() {
                    dst[(i % c0) * hw0 + i / c0] = v;
                }
            }
            t
        } else {
            x.to_owned()
        };
        for mut row in h.rows_mut() {
            for c in 0..c0 {
                let (m, sc) = (self.mean[c], self.scale[c]);
                row.slice_mut(ndarray::s![c * hw0..(c + 1) * hw0])
                    .mapv_inplace(|v| (v - m) * sc);
            }
        }
        for (i, l) in self.layers.iter().enumerate() {
            let [c, hh, ww] = shapes[i];
            let [o, ph, pw] = shapes[i + 1];
            let cols = im2col(h.view(), [c, hh, ww], self.spec.kernel(i));
            let mut pre = l.w.dot(&cols);
            for (mut r, &bias) in pre.rows_mut().into_iter().zip(&l.b) {
                r += bias;
            }
            let act = pre.mapv(|v| v.max(0.0));
            let act_s = act.as_slice().unwrap_or(&[]);
            let n = batch * hh * ww;
            // The window (and stride) per side: 2, or 1 on a side too short to pool; a last odd
            // row or column is dropped, as MaxPool2d(2) does.
            let (sy, sx) = (pool(hh), pool(ww));
            let mut out = Array2::<f32>::zeros((batch, o * ph * pw));
            let out_s = out.as_slice_mut().unwrap_or(&mut []);
            let per_row = o * ph * pw;
            let mut arg = vec![0usize; batch * per_row];
            for bi in 0..batch {
                for oc in 0..o {
                    let base = oc * n + bi * hh * ww;
                    for y in 0..ph {
                        for xx in 0..pw {
                            let mut best = base + sy * y * ww + sx * xx;
                            for dy in 0..sy {
                                let line = base + (sy * y + dy) * ww + sx * xx;
                                for k in line..line + sx {
                                    if act_s[k] > act_s[best] {
                                        best = k;
                                    }
                                }
                            }
                            let j = bi * per_row + (oc * ph + y) * pw + xx;
                            out_s[j] = act_s[best];
                            arg[j] = best;
                        }
                    }
                }
            }
            cache.cols.push(cols);
            cache.pre.push(pre);
            cache.argmax.push(arg);
            h = out;
        }
        (h, cache)
    }

    /// Backward from ∂L/∂output; accumulates the convolutions' gradients into `grad` and, with
    /// `input_grad`, returns ∂L/∂(standardised input) (what an embedding before it needs).
    pub fn backward(
        &self,
        cache: &ConvCache,
        d_out: Array2<f32>,
        grad: &mut ConvStack,
        input_grad: bool,
    ) -> Option<Array2<f32>> {
        let shapes = self.spec.shapes();
        let batch = cache.batch;
        let mut d = d_out;
        for i in (0..self.layers.len()).rev() {
            let [c, hh, ww] = shapes[i];
            let l = &self.layers[i];
            let pre = &cache.pre[i];
            let mut d_pre = Array2::<f32>::zeros(pre.raw_dim());
            {
                let dp = d_pre.as_slice_mut().unwrap_or(&mut []);
                for (k, &src) in d.iter().zip(&cache.argmax[i]) {
                    dp[src] += *k;
                }
            }
            ndarray::Zip::from(&mut d_pre)
                .and(pre)
                .for_each(|g, &z| *g = if z > 0.0 { *g } else { 0.0 });
            let g = &mut grad.layers[i];
            ndarray::linalg::general_mat_mul(1.0, &d_pre, &cache.cols[i].t(), 1.0, &mut g.w);
            g.b += &d_pre.sum_axis(Axis(1));
            if i == 0 && !input_grad {
                return None;
            }
            let dcols = l.w.t().dot(&d_pre);
            d = col2im(&dcols, batch, [c, hh, ww], self.spec.kernel(i));
        }
        // The standardisation is a per-channel scale of the raw input.
        Some(d)
    }

    /// Sets the per-channel standardisation (fitted over every pixel of the training rows).
    pub fn set_standardisation(&mut self, norm: &crate::norm::InputNorm) {
        for (c, (&m, &sd)) in norm.mean.iter().zip(&norm.std).enumerate() {
            if c < self.mean.len() {
                self.mean[c] = m;
                self.scale[c] = 1.0 / sd;
            }
        }
    }
}

impl Params for ConvStack {
    /// Buffers first (`input.mean`, `input.scale`: they never receive a gradient, so no
    /// optimizer moves them), then `conv.{i}.weight` (`O × C·kh·kw`) and `conv.{i}.bias`.
    fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut out = vec![
            (
                "input.mean".to_string(),
                vec![self.mean.len()],
                slice1(&self.mean),
            ),
            (
                "input.scale".to_string(),
                vec![self.scale.len()],
                slice1(&self.scale),
            ),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            out.push((
                format!("conv.{i}.weight"),
                l.w.shape().to_vec(),
                slice(&l.w),
            ));
            out.push((format!("conv.{i}.bias"), vec![l.b.len()], slice1(&l.b)));
        }
        out
    }

    fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out = vec![slice1_mut(&mut self.mean), slice1_mut(&mut self.scale)];
        for l in &mut self.layers {
            out.push(slice_mut(&mut l.w));
            out.push(slice1_mut(&mut l.b));
        }
        out
    }
}

/// Rows `B × C·H·W` seen as one sample of `C` values per pixel: `B·H·W × C` (for fitting the
/// per-channel standardisation with the per-feature moments).
pub fn pixels_by_channel(x: ArrayView2<f32>, [c, h, w]: [usize; 3]) -> Array2<f32> {
    let hw = h * w;
    Array2::from_shape_fn((x.nrows() * hw, c), |(r, ci)| x[[r / hw, ci * hw + r % hw]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn stack(image: [usize; 3], channels: Vec<usize>) -> ConvStack {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut s = ConvStack::new(
            ConvSpec {
                image,
                channels,
                channels_last: false,
            },
            &mut rng,
        );
        for l in &mut s.layers {
            l.b.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = 0.05 * i as f32);
        }
        s.mean.fill(0.3);
        s.scale.fill(1.7);
        s
    }

    /// A direct (loop) convolution + ReLU + pool as the reference for im2col + GEMM.
    #[test]
    fn forward_matches_a_direct_convolution() {
        let s = stack([2, 5, 4], vec![3]);
        let x = Array2::from_shape_fn((2, 40), |(i, j)| ((i * 40 + j) as f32 * 0.37).sin());
        let (y, _) = s.forward(x.view());
        assert_eq!(y.dim(), (2, 3 * 2 * 2));
        let l = &s.layers[0];
        for b in 0..2 {
            let px = |c: usize, yy: isize, xx: isize| -> f32 {
                if !(0..5).contains(&yy) || !(0..4).contains(&xx) {
                    0.0
                } else {
                    (x[[b, c * 20 + yy as usize * 4 + xx as usize]] - 0.3) * 1.7
                }
            };
            for o in 0..3 {
                let conv = |yy: usize, xx: usize| -> f32 {
                    let mut v = l.b[o];
                    for c in 0..2 {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                v += l.w[[o, c * 9 + ky * 3 + kx]]
                                    * px(
                                        c,
                                        yy as isize + ky as isize - 1,
                                        xx as isize + kx as isize - 1,
                                    );
                            }
                        }
                    }
                    v.max(0.0)
                };
                for py in 0..2 {
                    for pxx in 0..2 {
                        let want = [(0, 0), (0, 1), (1, 0), (1, 1)]
                            .iter()
                            .map(|(dy, dx)| conv(2 * py + dy, 2 * pxx + dx))
                            .fold(f32::MIN, f32::max);
                        let got = y[[b, (o * 2 + py) * 2 + pxx]];
                        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                    }
                }
            }
        }
    }

    /// Every weight and bias gradient of two blocks against central finite differences.
    #[test]
    fn gradients_match_finite_differences() {
        let s = stack([2, 6, 5], vec![3, 2]);
        let x = Array2::from_shape_fn((2, 60), |(i, j)| ((i * 60 + j) as f32 * 0.91).cos());
        let out_w = s.spec.out_width();
        assert_eq!(out_w, 2, "2 channels of 1 × 1 after two poolings");
        let r = Array2::from_shape_fn((2, out_w), |(i, j)| 0.5 + (i + j) as f32 * 0.3);
        let loss = |s: &ConvStack| -> f64 { (&s.forward(x.view()).0 * &r).sum() as f64 };
        let (_, cache) = s.forward(x.view());
        let mut g = s.zeros_like();
        s.backward(&cache, r.clone(), &mut g, false);
        crate::gradcheck::check(&s, &g, loss, "two blocks");
    }

    /// A `[C, 1, L]` row is a 1-D sequence: kernel 1×3, pooling 1×2 (odd last column dropped),
    /// against a direct computation; and its gradients against finite differences.
    #[test]
    fn one_dimensional_sequences() {
        let s = stack([2, 1, 7], vec![3]);
        assert_eq!(s.spec.kernel(0), (1, 3));
        assert_eq!(s.layers[0].w.dim(), (3, 6));
        assert_eq!(s.spec.shapes()[1], [3, 1, 3]);
        let x = Array2::from_shape_fn((2, 14), |(i, j)| ((i * 14 + j) as f32 * 0.53).sin());
        let (y, cache) = s.forward(x.view());
        let l = &s.layers[0];
        for b in 0..2 {
            let px = |c: usize, t: isize| -> f32 {
                if (0..7).contains(&t) {
                    (x[[b, c * 7 + t as usize]] - 0.3) * 1.7
                } else {
                    0.0
                }
            };
            for o in 0..3 {
                let conv = |t: usize| -> f32 {
                    let mut v = l.b[o];
                    for c in 0..2 {
                        for k in 0..3 {
                            v += l.w[[o, c * 3 + k]] * px(c, t as isize + k as isize - 1);
                        }
                    }
                    v.max(0.0)
                };
                for p in 0..3 {
                    let want = conv(2 * p).max(conv(2 * p + 1));
                    assert!((y[[b, o * 3 + p]] - want).abs() < 1e-5);
                }
            }
        }
        let r = Array2::from_shape_fn((2, 9), |(i, j)| 0.5 + (i + j) as f32 * 0.3);
        let mut g = s.zeros_like();
        s.backward(&cache, r.clone(), &mut g, false);
        let loss = |s: &ConvStack| -> f64 { (&s.forward(x.view()).0 * &r).sum() as f64 };
        crate::gradcheck::check(&s, &g, loss, "1-D");
    }

    /// A channels-last row gives what the same row in `[C, H, W]` order gives.
    #[test]
    fn channels_last_rows_are_transposed_first() {
        let first = stack([3, 4, 2], vec![2]);
        let mut last = first.clone();
        last.spec.channels_last = true;
        let x = Array2::from_shape_fn((2, 24), |(i, j)| ((i * 24 + j) as f32 * 0.29).sin());
        // [C, H, W] → [H, W, C].
        let hwc = Array2::from_shape_fn((2, 24), |(b, j)| x[[b, (j % 3) * 8 + j / 3]]);
        let (a, _) = first.forward(x.view());
        let (b, _) = last.forward(hwc.view());
        assert_eq!(a, b);
    }

    #[test]
    fn shapes_pool_while_both_sides_allow() {
        let s = ConvSpec {
            image: [1, 8, 8],
            channels: vec![4, 8, 8, 8],
            channels_last: false,
        };
        assert_eq!(
            s.shapes(),
            vec![[1, 8, 8], [4, 4, 4], [8, 2, 2], [8, 1, 1], [8, 1, 1]]
        );
        assert_eq!(s.out_width(), 8);
        let x = Array2::from_shape_fn((2, 12), |(i, j)| (i * 12 + j) as f32);
        let p = pixels_by_channel(x.view(), [3, 2, 2]);
        assert_eq!(p.dim(), (8, 3));
        assert_eq!(p.row(5).to_vec(), vec![13.0, 17.0, 21.0]);
    }
}
