//! The transformer students: a GPT-2-style causal language model and, with an
//! [`EncoderSpec`], the same blocks as a bidirectional encoder (sequence or per-position
//! classification over token ids or float frames). Forward and backward written with ndarray
//! (every matrix product through `ndarray::linalg`, i.e. matrixmultiply).
//!
//! Shape (as GPT-2): token + learned position embeddings; N pre-LayerNorm blocks of multi-head
//! causal self-attention and a 4× GELU (tanh) MLP, each added to the residual stream; a final
//! LayerNorm; an LM head tied to the token embedding (or untied, `D × V`). Attention is dense
//! per sequence and head (`T × T` scores, kept for the backward pass), which is what contexts
//! up to 512 need on a CPU; keys past a sequence's length are masked, so right padding never
//! leaks into real positions.
//!
//! Initialisation (documented because results depend on it): GPT-2's, N(0, 0.02) for weights
//! and embeddings, zero biases, LayerNorm gain 1 and shift 0, from a seeded ChaCha8 RNG (a
//! Box–Muller transform of its uniforms, so it is the same on every platform).

use ndarray::{Array1, Array2, ArrayView2, Zip, s};
use rand::{RngExt, SeedableRng};

use crate::mlp::{Activation, LayerNorm, Linear, slice, slice_mut, slice1, slice1_mut};
use crate::params::Params;

/// The shape of a [`Gpt`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GptSpec {
    /// Vocabulary size (the teacher's target axis).
    pub vocab: usize,
    /// Longest sequence (learned positions).
    pub context: usize,
    /// Residual width.
    pub dim: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention heads (must divide `dim`).
    pub heads: usize,
    /// LM head tied to the token embedding.
    pub tied: bool,
    /// A bidirectional encoder with a classification head (None: the causal LM).
    #[serde(default)]
    pub encoder: Option<EncoderSpec>,
}

/// What makes a [`Gpt`] an encoder: attention sees the whole sequence, the head maps to the
/// teacher's classes, per position or (pooled) per sequence, and the input may be float frames.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EncoderSpec {
    /// Output classes (the teacher's target axis).
    pub classes: usize,
    /// One output per sequence, from the mean of its real positions' final states.
    pub pool: bool,
    /// Float frames instead of token ids.
    pub frames: Option<Frames>,
}

/// How a float input row becomes a sequence of frames: the sequence axis is cut into steps of
/// `patch`, and each step's values (every other axis, in order) are one frame, projected to
/// the residual width by `wte` (`width × dim`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frames {
    /// The teacher's input name (the export keeps it).
    pub input: String,
    /// Per-row shape; the sequence axis's entry is 0 (any length).
    pub shape: Vec<usize>,
    /// The sequence axis in `shape`.
    pub axis: usize,
    /// Consecutive steps of the sequence axis read as one frame.
    pub patch: usize,
}

impl Frames {
    /// Values per frame.
    pub fn width(&self) -> usize {
        self.shape
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != self.axis)
            .map(|(_, &d)| d)
            .product::<usize>()
            * self.patch
    }

    /// Frames of one row of `values` (its sequence axis `len` steps long), `frames × width`;
    /// `None` when `len` is not a whole number of patches.
    pub fn of_row(&self, values: &[f32], len: usize) -> Option<Array2<f32>> {
        let (before, after) = (
            self.shape[..self.axis].iter().product::<usize>(),
            self.shape[self.axis + 1..].iter().product::<usize>(),
        );
        if len == 0 || !len.is_multiple_of(self.patch) || values.len() != before * len * after {
            return None;
        }
        let n = len / self.patch;
        // Value (b, step, a) of the row sits at (b·len + step)·after + a; frame f holds steps
        // f·patch.. in the order (b, j, a), as the export's Reshape/Transpose lays them out.
        Some(Array2::from_shape_fn((n, self.width()), |(f, k)| {
            let (b, rest) = (k / (self.patch * after), k % (self.patch * after));
            let (j, a) = (rest / after, rest % after);
            values[(b * len + f * self.patch + j) * after + a]
        }))
    }
}

impl Frames {
    /// The row values `frames` (`n × width`) were cut from ([`Frames::of_row`] inverted),
    /// with the row's shape.
    pub fn to_row(&self, frames: ndarray::ArrayView2<f32>) -> (Vec<f32>, Vec<usize>) {
        let (before, after) = (
            self.shape[..self.axis].iter().product::<usize>(),
            self.shape[self.axis + 1..].iter().product::<usize>(),
        );
        let len = frames.nrows() * self.patch;
        let mut out = vec![0.0; before * len * after];
        for ((f, k), &v) in frames.indexed_iter() {
            let (b, rest) = (k / (self.patch * after), k % (self.patch * after));
            let (j, a) = (rest / after, rest % after);
            out[(b * len + f * self.patch + j) * after + a] = v;
        }
        let mut shape = self.shape.clone();
        shape[self.axis] = len;
        (out, shape)
    }
}

impl GptSpec {
    /// Rows of `wte`: the vocabulary, or a frame's width.
    pub fn input_rows(&self) -> usize {
        match self.encoder.as_ref().and_then(|e| e.frames.as_ref()) {
            Some(f) => f.width(),
            None => self.vocab,
        }
    }

    /// Width of the output: the vocabulary (LM) or the classes (encoder).
    pub fn outputs(&self) -> usize {
        self.encoder.as_ref().map_or(self.vocab, |e| e.classes)
    }

    /// Attention sees only earlier positions.
    pub fn causal(&self) -> bool {
        self.encoder.is_none()
    }

    /// One output per sequence.
    pub fn pooled(&self) -> bool {
        self.encoder.as_ref().is_some_and(|e| e.pool)
    }

    /// The input is float frames.
    pub fn frames(&self) -> Option<&Frames> {
        self.encoder.as_ref().and_then(|e| e.frames.as_ref())
    }

    /// The head is the token embedding's transpose (only a language model's can be).
    pub fn head_tied(&self) -> bool {
        self.tied && self.encoder.is_none()
    }
}

/// One pre-LayerNorm transformer block.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm,
    /// Query, key and value projection, `D × 3D`.
    pub attn: Linear,
    /// Attention output projection, `D × D`.
    pub proj: Linear,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm,
    /// MLP expansion, `D × 4D`.
    pub fc: Linear,
    /// MLP contraction, `4D × D`.
    pub fc_out: Linear,
}

/// A GPT-2-style causal language model.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt {
    /// Its shape.
    pub spec: GptSpec,
    /// Token embedding, `V × D`.
    pub wte: Array2<f32>,
    /// Position embedding, `context × D`.
    pub wpe: Array2<f32>,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm,
    /// Untied LM head, `D × V` (None when tied to `wte`).
    pub head: Option<Array2<f32>>,
}

/// A batch of sequences, right-padded to a common length.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// Ids, `sequences × length` (padding positions hold any valid id); for a frames model
    /// only its shape is read.
    pub ids: Array2<u32>,
    /// Real length of each sequence.
    pub lens: Vec<usize>,
    /// Float frames, `(sequences·length) × width`, row `b·length + t` (padding rows zero).
    pub frames: Option<Array2<f32>>,
}

struct BlockCache {
    ln_1: (Array2<f32>, Array1<f32>),
    a: Array2<f32>,
    qkv: Array2<f32>,
    probs: Vec<Array2<f32>>,
    att: Array2<f32>,
    ln_2: (Array2<f32>, Array1<f32>),
    m: Array2<f32>,
    f: Array2<f32>,
    g: Array2<f32>,
}

/// What the forward pass keeps for the backward pass.
pub struct GptCache {
    blocks: Vec<BlockCache>,
    ln_f: (Array2<f32>, Array1<f32>),
    /// Final hidden states (after `ln_f`), `(sequences·length) × D`: what hidden-state
    /// distillation compares with the teacher's.
    pub hidden: Array2<f32>,
    /// A pooled encoder's per-sequence means of `hidden`, `sequences × D`.
    pooled: Option<Array2<f32>>,
}

fn normal(rng: &mut rand_chacha::ChaCha8Rng, std: f32) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

fn init(rows: usize, cols: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |_| normal(rng, 0.02))
}

fn linear(i: usize, o: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Linear {
    Linear {
        w: init(i, o, rng),
        b: Array1::zeros(o),
    }
}

impl Gpt {
    /// A seeded, GPT-2-initialised model.
    pub fn new(spec: GptSpec, seed: u64) -> Gpt {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d = spec.dim;
        let wte = init(spec.input_rows(), d, &mut rng);
        let wpe = init(spec.context, d, &mut rng);
        let blocks = (0..spec.layers)
            .map(|_| Block {
                ln_1: LayerNorm::new(d),
                attn: linear(d, 3 * d, &mut rng),
                proj: linear(d, d, &mut rng),
                ln_2: LayerNorm::new(d),
                fc: linear(d, 4 * d, &mut rng),
                fc_out: linear(4 * d, d, &mut rng),
            })
            .collect();
        let head = (!spec.head_tied()).then(|| init(d, spec.outputs(), &mut rng));
        Gpt {
            ln_f: LayerNorm::new(d),
            spec,
            wte,
            wpe,
            blocks,
            head,
        }
    }

    /// A zero model of the same shape (gradient accumulator).
    pub fn zeros_like(&self) -> Gpt {
        let z = |a: &Array2<f32>| Array2::zeros(a.raw_dim());
        Gpt {
            spec: self.spec.clone(),
            wte: z(&self.wte),
            wpe: z(&self.wpe),
            blocks: self
                .blocks
                .iter()
                .map(|b| Block {
                    ln_1: b.ln_1.zeros_like(),
                    attn: b.attn.zeros_like(),
                    proj: b.proj.zeros_like(),
                    ln_2: b.ln_2.zeros_like(),
                    fc: b.fc.zeros_like(),
                    fc_out: b.fc_out.zeros_like(),
                })
                .collect(),
            ln_f: self.ln_f.zeros_like(),
            head: self.head.as_ref().map(z),
        }
    }

    /// Logits, `(sequences·length) × V`, row `b·length + t` for token `t` of sequence `b`
    /// (pooled encoder: `sequences × classes`).
    pub fn predict(&self, x: &Tokens) -> Array2<f32> {
        self.forward(x).0
    }

    /// Forward pass: logits and the cache.
    pub fn forward(&self, x: &Tokens) -> (Array2<f32>, GptCache) {
        let (nb, t) = x.ids.dim();
        let d = self.spec.dim;
        let mut h = match &x.frames {
            Some(f) => f.dot(&self.wte),
            None => Array2::<f32>::zeros((nb * t, d)),
        };
        for b in 0..nb {
            for p in 0..t {
                let pos = p.min(self.spec.context - 1);
                let mut row = h.row_mut(b * t + p);
                if x.frames.is_none() {
                    let id = (x.ids[[b, p]] as usize).min(self.spec.vocab.max(1) - 1);
                    row += &self.wte.row(id);
                }
                row += &self.wpe.row(pos);
            }
        }
        let mut caches = Vec::with_capacity(self.blocks.len());
        for blk in &self.blocks {
            let (h2, c) = self.block_forward(blk, h, x);
            caches.push(c);
            h = h2;
        }
        let (xhat, inv, hidden) = self.ln_f.forward(&h);
        let pooled = self.spec.pooled().then(|| {
            let mut p = Array2::<f32>::zeros((nb, d));
            for (b, mut row) in p.rows_mut().into_iter().enumerate() {
                let len = x.lens[b].clamp(1, t);
                for q in 0..len {
                    row += &hidden.row(b * t + q);
                }
                row /= len as f32;
            }
            p
        });
        let top = pooled.as_ref().unwrap_or(&hidden);
        let logits = match &self.head {
            Some(w) => top.dot(w),
            None => top.dot(&self.wte.t()),
        };
        (
            logits,
            GptCache {
                blocks: caches,
                ln_f: (xhat, inv),
                hidden,
                pooled,
            },
        )
    }

    fn block_forward(
        &self,
        blk: &Block,
        x: Array2<f32>,
        tok: &Tokens,
    ) -> (Array2<f32>, BlockCache) {
        let (nb, t) = tok.ids.dim();
        let (d, nh) = (self.spec.dim, self.spec.heads);
        let hd = d / nh;
        let scale = 1.0 / (hd as f32).sqrt();
        let (x1, i1, a) = blk.ln_1.forward(&x);
        let qkv = blk.attn.forward(a.view());
        let mut att = Array2::<f32>::zeros((nb * t, d));
        let mut probs = Vec::with_capacity(nb * nh);
        for b in 0..nb {
            let rows = b * t..(b + 1) * t;
            let len = tok.lens[b].min(t);
            for hh in 0..nh {
                let q = qkv.slice(s![rows.clone(), hh * hd..(hh + 1) * hd]);
                let k = qkv.slice(s![rows.clone(), d + hh * hd..d + (hh + 1) * hd]);
                let v = qkv.slice(s![rows.clone(), 2 * d + hh * hd..2 * d + (hh + 1) * hd]);
                let mut sc = q.dot(&k.t());
                for (i, mut r) in sc.rows_mut().into_iter().enumerate() {
                    // Keys after the query (causal), or past the sequence's end, are masked;
                    // key 0 is always visible, so no row is empty.
                    let visible = if self.spec.causal() {
                        (i + 1).min(len.max(1))
                    } else {
                        len.max(1)
                    };
                    let m = r
                        .iter()
                        .take(visible)
                        .fold(f32::NEG_INFINITY, |a, &v| a.max(v * scale));
                    let mut sum = 0.0;
                    for (j, v) in r.iter_mut().enumerate() {
                        *v = if j < visible {
                            (*v * scale - m).exp()
                        } else {
                            0.0
                        };
                        sum += *v;
                    }
                    r /= sum;
                }
                let o = sc.dot(&v);
                att.slice_mut(s![rows.clone(), hh * hd..(hh + 1) * hd])
                    .assign(&o);
                probs.push(sc);
            }
        }
        let mid = &x + &blk.proj.forward(att.view());
        let (x2, i2, m) = blk.ln_2.forward(&mid);
        let f = blk.fc.forward(m.view());
        let g = f.mapv(|v| Activation::Gelu.forward(v));
        let out = &mid + &blk.fc_out.forward(g.view());
        (
            out,
            BlockCache {
                ln_1: (x1, i1),
                a,
                qkv,
                probs,
                att,
                ln_2: (x2, i2),
                m,
                f,
                g,
            },
        )
    }

    /// Backward pass from ∂L/∂logits; `dhidden`, when given, is added to ∂L/∂(final hidden
    /// states) — where hidden-state distillation enters. Gradients accumulate into `grad`.
    pub fn backward(
        &self,
        x: &Tokens,
        cache: &GptCache,
        dlogits: ArrayView2<f32>,
        dhidden: Option<&Array2<f32>>,
        grad: &mut Gpt,
    ) {
        let (nb, t) = x.ids.dim();
        // Head: logits = top · Wᵀ (tied) or top · W, where top is the final hidden states or
        // (pooled) their per-sequence means.
        let top = cache.pooled.as_ref().unwrap_or(&cache.hidden);
        let dtop = match (&self.head, grad.head.as_mut()) {
            (Some(w), Some(gw)) => {
                ndarray::linalg::general_mat_mul(1.0, &top.t(), &dlogits, 1.0, gw);
                dlogits.dot(&w.t())
            }
            _ => {
                ndarray::linalg::general_mat_mul(1.0, &dlogits.t(), top, 1.0, &mut grad.wte);
                dlogits.dot(&self.wte)
            }
        };
        let mut dh = if cache.pooled.is_some() {
            let mut dh = Array2::<f32>::zeros(cache.hidden.raw_dim());
            for b in 0..nb {
                let len = x.lens[b].clamp(1, t);
                let r = dtop.row(b).mapv(|v| v / len as f32);
                for q in 0..len {
                    dh.row_mut(b * t + q).assign(&r);
                }
            }
            dh
        } else {
            dtop
        };
        if let Some(e) = dhidden {
            dh += e;
        }
        let mut dx = self
            .ln_f
            .backward(&cache.ln_f.0, &cache.ln_f.1, &dh, &mut grad.ln_f);
        for (i, blk) in self.blocks.iter().enumerate().rev() {
            dx = self.block_backward(blk, &cache.blocks[i], dx, x, &mut grad.blocks[i]);
        }
        if let Some(f) = &x.frames {
            ndarray::linalg::general_mat_mul(1.0, &f.t(), &dx, 1.0, &mut grad.wte);
        }
        for b in 0..nb {
            for p in 0..t {
                let pos = p.min(self.spec.context - 1);
                let r = dx.row(b * t + p);
                if x.frames.is_none() {
                    let id = (x.ids[[b, p]] as usize).min(self.spec.vocab.max(1) - 1);
                    let mut e = grad.wte.row_mut(id);
                    e += &r;
                }
                let mut w = grad.wpe.row_mut(pos);
                w += &r;
            }
        }
    }

    fn block_backward(
        &self,
        blk: &Block,
        c: &BlockCache,
        dout: Array2<f32>,
        tok: &Tokens,
        g: &mut Block,
    ) -> Array2<f32> {
        let (nb, t) = tok.ids.dim();
        let (d, nh) = (self.spec.dim, self.spec.heads);
        let hd = d / nh;
        let scale = 1.0 / (hd as f32).sqrt();
        // MLP branch: out = mid + fc_out(gelu(fc(ln_2(mid)))).
        let dg = blk.fc_out.backward(c.g.view(), dout.view(), &mut g.fc_out);
        let df = Zip::from(&dg)
            .and(&c.f)
            .map_collect(|a, &z| a * Activation::Gelu.derivative(z));
        let dm = blk.fc.backward(c.m.view(), df.view(), &mut g.fc);
        let mut dmid = blk.ln_2.backward(&c.ln_2.0, &c.ln_2.1, &dm, &mut g.ln_2);
        dmid += &dout;
        // Attention branch: mid = x + proj(attention(ln_1(x))).
        let datt = blk.proj.backward(c.att.view(), dmid.view(), &mut g.proj);
        let mut dqkv = Array2::<f32>::zeros(c.qkv.raw_dim());
        for b in 0..nb {
            let rows = b * t..(b + 1) * t;
            for hh in 0..nh {
                let p = &c.probs[b * nh + hh];
                let (qc, kc, vc) = (
                    hh * hd..(hh + 1) * hd,
                    d + hh * hd..d + (hh + 1) * hd,
                    2 * d + hh * hd..2 * d + (hh + 1) * hd,
                );
                let q = c.qkv.slice(s![rows.clone(), qc.clone()]);
                let k = c.qkv.slice(s![rows.clone(), kc.clone()]);
                let v = c.qkv.slice(s![rows.clone(), vc.clone()]);
                let dout_h = datt.slice(s![rows.clone(), qc.clone()]);
                // O = P·V
                let dv = p.t().dot(&dout_h);
                let dp = dout_h.dot(&v.t());
                // softmax: dS = P ⊙ (dP − rowsum(dP ⊙ P)), then the scale.
                let mut ds = &dp * p;
                for (mut r, pr) in ds.rows_mut().into_iter().zip(p.rows()) {
                    let sum: f32 = r.sum();
                    Zip::from(&mut r)
                        .and(&pr)
                        .for_each(|v, &pp| *v = (*v - pp * sum) * scale);
                }
                // ds now holds dS·scale: S = scale · Q·Kᵀ.
                let dq = ds.dot(&k);
                let dk = ds.t().dot(&q);
                dqkv.slice_mut(s![rows.clone(), qc]).assign(&dq);
                dqkv.slice_mut(s![rows.clone(), kc]).assign(&dk);
                dqkv.slice_mut(s![rows.clone(), vc]).assign(&dv);
            }
        }
        let da = blk.attn.backward(c.a.view(), dqkv.view(), &mut g.attn);
        let mut dx = blk.ln_1.backward(&c.ln_1.0, &c.ln_1.1, &da, &mut g.ln_1);
        dx += &dmid;
        dx
    }

    /// The last real position's logits of one sequence (for generation).
    pub fn next_logits(&self, ids: &[u32]) -> Vec<f32> {
        let start = ids.len().saturating_sub(self.spec.context);
        let window = &ids[start..];
        let n = window.len().max(1);
        let tok = Tokens {
            ids: Array2::from_shape_fn((1, n), |(_, p)| window.get(p).copied().unwrap_or(0)),
            lens: vec![window.len()],
            frames: None,
        };
        let logits = self.predict(&tok);
        logits.row(n - 1).to_vec()
    }
}

type Named<'a> = (String, Vec<usize>, &'a [f32]);

fn ln_tensors<'a>(i: usize, n: &str, l: &'a LayerNorm) -> [Named<'a>; 2] {
    [
        (
            format!("h.{i}.{n}.gamma"),
            vec![l.gamma.len()],
            slice1(&l.gamma),
        ),
        (
            format!("h.{i}.{n}.beta"),
            vec![l.beta.len()],
            slice1(&l.beta),
        ),
    ]
}

fn lin_tensors<'a>(i: usize, n: &str, l: &'a Linear) -> [Named<'a>; 2] {
    [
        (
            format!("h.{i}.{n}.weight"),
            l.w.shape().to_vec(),
            slice(&l.w),
        ),
        (format!("h.{i}.{n}.bias"), vec![l.b.len()], slice1(&l.b)),
    ]
}

impl Params for Gpt {
    fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut out = vec![
            (
                "wte".to_string(),
                self.wte.shape().to_vec(),
                slice(&self.wte),
            ),
            (
                "wpe".to_string(),
                self.wpe.shape().to_vec(),
                slice(&self.wpe),
            ),
        ];
        for (i, b) in self.blocks.iter().enumerate() {
            out.extend(ln_tensors(i, "ln_1", &b.ln_1));
            out.extend(lin_tensors(i, "attn", &b.attn));
            out.extend(lin_tensors(i, "proj", &b.proj));
            out.extend(ln_tensors(i, "ln_2", &b.ln_2));
            out.extend(lin_tensors(i, "fc", &b.fc));
            out.extend(lin_tensors(i, "fc_out", &b.fc_out));
        }
        out.push((
            "ln_f.gamma".into(),
            vec![self.spec.dim],
            slice1(&self.ln_f.gamma),
        ));
        out.push((
            "ln_f.beta".into(),
            vec![self.spec.dim],
            slice1(&self.ln_f.beta),
        ));
        if let Some(h) = &self.head {
            out.push(("head".into(), h.shape().to_vec(), slice(h)));
        }
        out
    }

    fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = vec![slice_mut(&mut self.wte), slice_mut(&mut self.wpe)];
        for b in &mut self.blocks {
            out.push(slice1_mut(&mut b.ln_1.gamma));
            out.push(slice1_mut(&mut b.ln_1.beta));
            for l in [&mut b.attn, &mut b.proj] {
                out.push(slice_mut(&mut l.w));
                out.push(slice1_mut(&mut l.b));
            }
            out.push(slice1_mut(&mut b.ln_2.gamma));
            out.push(slice1_mut(&mut b.ln_2.beta));
            for l in [&mut b.fc, &mut b.fc_out] {
                out.push(slice_mut(&mut l.w));
                out.push(slice1_mut(&mut l.b));
            }
        }
        out.push(slice1_mut(&mut self.ln_f.gamma));
        out.push(slice1_mut(&mut self.ln_f.beta));
        if let Some(h) = &mut self.head {
            out.push(slice_mut(h));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(tied: bool) -> (Gpt, Tokens) {
        tiny_with(tied, None)
    }

    fn tiny_with(tied: bool, encoder: Option<EncoderSpec>) -> (Gpt, Tokens) {
        let spec = GptSpec {
            vocab: 11,
            context: 6,
            dim: 8,
            layers: 2,
            heads: 2,
            tied,
            encoder,
        };
        let mut m = Gpt::new(spec, 3);
        // Larger weights than GPT-2's 0.02, so every path carries a visible gradient.
        for t in m.tensors_mut() {
            for (i, v) in t.iter_mut().enumerate() {
                *v += ((i * 37 % 17) as f32 - 8.0) * 0.03;
            }
        }
        let ids = Array2::from_shape_fn((2, 5), |(b, p)| ((b * 5 + p * 3) % 11) as u32);
        let frames = m.spec.frames().map(|f| {
            let mut x = Array2::from_shape_fn((10, f.width()), |(i, j)| {
                ((i * 7 + j * 3) as f32 * 0.41).sin()
            });
            // Sequence 1's padding rows are zero, as the loader writes them.
            for p in 8..10 {
                x.row_mut(p).fill(0.0);
            }
            x
        });
        (
            m,
            Tokens {
                ids,
                lens: vec![5, 3],
                frames,
            },
        )
    }

    /// L = Σ logits ⊙ R + Σ hidden ⊙ S over real positions: every parameter of every block,
    /// the embeddings, the final LayerNorm and the head against central finite differences
    /// (computed in f64 from f32 forwards, so the tolerance is loose but the check is not).
    fn check_gradients(m: &Gpt, tok: &Tokens, what: &str) {
        let rows = 10;
        let out_rows = if m.spec.pooled() { 2 } else { rows };
        let mut r = Array2::from_shape_fn((out_rows, m.spec.outputs()), |(i, j)| {
            ((i * 3 + j) as f32 * 0.7).sin()
        });
        let mut s = Array2::from_shape_fn((rows, 8), |(i, j)| ((i + 2 * j) as f32 * 0.3).cos());
        // Padded positions (sequence 1, positions 3..5) carry no loss.
        for p in 8..10 {
            if !m.spec.pooled() {
                r.row_mut(p).fill(0.0);
            }
            s.row_mut(p).fill(0.0);
        }
        let loss = |m: &Gpt| -> f64 {
            let (y, c) = m.forward(tok);
            (&y * &r).sum() as f64 + (&c.hidden * &s).sum() as f64
        };
        let (_, cache) = m.forward(tok);
        let mut g = m.zeros_like();
        m.backward(tok, &cache, r.view(), Some(&s), &mut g);
        let analytic: Vec<(String, Vec<f32>)> = g
            .tensors()
            .into_iter()
            .map(|(n, _, v)| (n, v.to_vec()))
            .collect();
        for (ti, (name, an)) in analytic.iter().enumerate() {
            // Every entry of small tensors, a spread of entries of large ones.
            let step = (an.len() / 24).max(1);
            for k in (0..an.len()).step_by(step) {
                let h = 1e-2f32;
                let (mut a, mut b) = (m.clone(), m.clone());
                a.tensors_mut()[ti][k] += h;
                b.tensors_mut()[ti][k] -= h;
                let fd = (loss(&a) - loss(&b)) / (2.0 * h as f64);
                let x = an[k] as f64;
                assert!(
                    (fd - x).abs() < 1e-2 * (1.0 + fd.abs()),
                    "{what} {name}[{k}]: fd {fd} vs {x}"
                );
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for tied in [true, false] {
            let (m, tok) = tiny(tied);
            check_gradients(&m, &tok, &format!("tied={tied}"));
        }
    }

    fn frames(patch: usize) -> Frames {
        Frames {
            input: "x".into(),
            shape: vec![2, 0, 3],
            axis: 1,
            patch,
        }
    }

    /// The encoder: bidirectional attention, an untied head to the classes, per position or
    /// pooled, over ids or float frames.
    #[test]
    fn encoder_gradients_match_finite_differences() {
        for pool in [false, true] {
            for fr in [None, Some(frames(2))] {
                let what = format!("pool={pool} frames={}", fr.is_some());
                let enc = EncoderSpec {
                    classes: 4,
                    pool,
                    frames: fr,
                };
                let (m, tok) = tiny_with(true, Some(enc));
                assert!(m.head.is_some(), "{what}: an encoder's head is its own");
                check_gradients(&m, &tok, &what);
            }
        }
    }

    /// A frame is every non-sequence value of `patch` consecutive steps, in axis order.
    #[test]
    fn frames_cut_the_sequence_axis_into_patches() {
        let f = frames(2);
        assert_eq!(f.width(), 12);
        // Row shape [2, 4, 3]: value (b, s, a) = 100·b + 10·s + a.
        let row: Vec<f32> = (0..2)
            .flat_map(|b| {
                (0..4).flat_map(move |s| (0..3).map(move |a| (100 * b + 10 * s + a) as f32))
            })
            .collect();
        let x = f.of_row(&row, 4).unwrap();
        assert_eq!(x.dim(), (2, 12));
        // Frame 1 holds steps 2 and 3: (b=0,s=2,a..), (b=0,s=3,a..), (b=1,s=2,a..), ...
        let want: Vec<f32> = [
            20., 21., 22., 30., 31., 32., 120., 121., 122., 130., 131., 132.,
        ]
        .to_vec();
        assert_eq!(x.row(1).to_vec(), want);
        assert!(
            f.of_row(&row[..18], 3).is_none(),
            "3 steps are not whole patches of 2"
        );
        assert_eq!(f.to_row(x.view()), (row, vec![2, 4, 3]));
    }

    /// An encoder's position sees later tokens (it is not causal), never padding.
    #[test]
    fn the_encoder_sees_the_whole_sequence_but_not_padding() {
        let enc = EncoderSpec {
            classes: 4,
            pool: false,
            frames: None,
        };
        let (m, tok) = tiny_with(true, Some(enc));
        let full = m.predict(&tok);
        let mut t2 = tok.clone();
        t2.ids[[0, 4]] = 7;
        t2.ids[[1, 4]] = 9;
        let other = m.predict(&t2);
        assert_ne!(full.row(0), other.row(0), "position 0 did not see token 4");
        for p in 5..8 {
            assert_eq!(full.row(p), other.row(p), "real position {p} saw padding");
        }
    }

    #[test]
    fn causal_and_padding_do_not_leak() {
        let (m, tok) = tiny(true);
        let full = m.predict(&tok);
        // Changing a later token or a padded one leaves earlier positions unchanged.
        let mut t2 = tok.clone();
        t2.ids[[0, 4]] = 7;
        t2.ids[[1, 4]] = 9;
        let other = m.predict(&t2);
        for p in 0..4 {
            assert_eq!(full.row(p), other.row(p), "position {p} saw the future");
        }
        for p in 5..8 {
            assert_eq!(full.row(p), other.row(p), "real position {p} saw padding");
        }
        assert_ne!(full.row(4), other.row(4));
    }
}
