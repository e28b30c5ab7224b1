//! The language-model student: a GPT-2-style causal transformer, forward and backward written
//! with ndarray (every matrix product through `ndarray::linalg`, i.e. matrixmultiply).
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

/// A batch of token sequences, right-padded to a common length.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// Ids, `sequences × length` (padding positions hold any valid id).
    pub ids: Array2<u32>,
    /// Real length of each sequence.
    pub lens: Vec<usize>,
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
        let wte = init(spec.vocab, d, &mut rng);
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
        let head = (!spec.tied).then(|| init(d, spec.vocab, &mut rng));
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

    /// Logits, `(sequences·length) × V`, row `b·length + t` for token `t` of sequence `b`.
    pub fn predict(&self, x: &Tokens) -> Array2<f32> {
        self.forward(x).0
    }

    /// Forward pass: logits and the cache.
    pub fn forward(&self, x: &Tokens) -> (Array2<f32>, GptCache) {
        let (nb, t) = x.ids.dim();
        let d = self.spec.dim;
        let mut h = Array2::<f32>::zeros((nb * t, d));
        for b in 0..nb {
            for p in 0..t {
                let id = (x.ids[[b, p]] as usize).min(self.spec.vocab - 1);
                let pos = p.min(self.spec.context - 1);
                let mut row = h.row_mut(b * t + p);
                row += &self.wte.row(id);
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
        let logits = match &self.head {
            Some(w) => hidden.dot(w),
            None => hidden.dot(&self.wte.t()),
        };
        (
            logits,
            GptCache {
                blocks: caches,
                ln_f: (xhat, inv),
                hidden,
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
                    // Keys after the query, or past the sequence's end, are masked; key 0 is
                    // always visible, so no row is empty.
                    let visible = (i + 1).min(len.max(1));
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
        // Head: logits = hidden · Wᵀ (tied) or hidden · W.
        let mut dh = match (&self.head, grad.head.as_mut()) {
            (Some(w), Some(gw)) => {
                ndarray::linalg::general_mat_mul(1.0, &cache.hidden.t(), &dlogits, 1.0, gw);
                dlogits.dot(&w.t())
            }
            _ => {
                ndarray::linalg::general_mat_mul(
                    1.0,
                    &dlogits.t(),
                    &cache.hidden,
                    1.0,
                    &mut grad.wte,
                );
                dlogits.dot(&self.wte)
            }
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
        for b in 0..nb {
            for p in 0..t {
                let id = (x.ids[[b, p]] as usize).min(self.spec.vocab - 1);
                let pos = p.min(self.spec.context - 1);
                let r = dx.row(b * t + p);
                let mut e = grad.wte.row_mut(id);
                e += &r;
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
        let spec = GptSpec {
            vocab: 11,
            context: 6,
            dim: 8,
            layers: 2,
            heads: 2,
            tied,
        };
        let mut m = Gpt::new(spec, 3);
        // Larger weights than GPT-2's 0.02, so every path carries a visible gradient.
        for t in m.tensors_mut() {
            for (i, v) in t.iter_mut().enumerate() {
                *v += ((i * 37 % 17) as f32 - 8.0) * 0.03;
            }
        }
        let ids = Array2::from_shape_fn((2, 5), |(b, p)| ((b * 5 + p * 3) % 11) as u32);
        (
            m,
            Tokens {
                ids,
                lens: vec![5, 3],
            },
        )
    }

    /// L = Σ logits ⊙ R + Σ hidden ⊙ S over real positions: every parameter of every block,
    /// the embeddings, the final LayerNorm and the head against central finite differences
    /// (computed in f64 from f32 forwards, so the tolerance is loose but the check is not).
    #[test]
    fn gradients_match_finite_differences() {
        for tied in [true, false] {
            let (m, tok) = tiny(tied);
            let rows = 10;
            let mut r =
                Array2::from_shape_fn((rows, 11), |(i, j)| ((i * 3 + j) as f32 * 0.7).sin());
            let s = Array2::from_shape_fn((rows, 8), |(i, j)| ((i + 2 * j) as f32 * 0.3).cos());
            // Padded positions (sequence 1, positions 3..5) carry no loss.
            for p in 8..10 {
                r.row_mut(p).fill(0.0);
            }
            let mut s = s;
            for p in 8..10 {
                s.row_mut(p).fill(0.0);
            }
            let loss = |m: &Gpt| -> f64 {
                let (y, c) = m.forward(&tok);
                (&y * &r).sum() as f64 + (&c.hidden * &s).sum() as f64
            };
            let (_, cache) = m.forward(&tok);
            let mut g = m.zeros_like();
            m.backward(&tok, &cache, r.view(), Some(&s), &mut g);
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
                        "tied={tied} {name}[{k}]: fd {fd} vs {x}"
                    );
                }
            }
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
