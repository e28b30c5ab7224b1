//! Export: the trained MLP as safetensors (PyTorch's layout, with the self-description) and
//! as ONNX, written from Rust through `logits-onnx`'s graph builder. The ONNX graph is the
//! inference path of [`Mlp::predict`]: MatMul + Add per layer, layer normalisation (ε = 1e-5),
//! then Relu, Tanh or Gelu (tanh approximation), and no dropout. The input keeps the name of
//! the teacher input it was trained from (`batch × inputs`, f32, raw values: the training
//! standardisation is folded into the first layer; with an embedding, ids as float values,
//! cast and looked up in the graph; with a convolutional front, reshaped to `[C, H, W]`,
//! standardised per channel, Conv/Relu/MaxPool per block, flattened); output `logits`
//! (`batch × classes`).
//!
//! Any opset from 13 on ([`Opset`]): where the opset lacks an op (LayerNormalization before
//! 17, Gelu before 20) the export writes the same arithmetic with older ops. The student's
//! description travels in the model's `metadata_props` (ONNX Runtime's
//! `custom_metadata_map`): `logits.student` holds it as JSON, `logits.<field>` each field.

use std::collections::HashMap;
use std::path::Path;

use logits_onnx::ElemType;
use logits_onnx::builder::{Attr, Dim, GraphBuilder};

use crate::error::{Result, StudentError};
use crate::mlp::{Activation, GELU_C, LN_EPS, Mlp, slice, slice1};
use crate::student::{StudentInfo, write_atomic};
use crate::transformer::Gpt;

/// The ONNX opset the export targets by default (the first with Gelu).
pub const OPSET: i64 = 20;

/// An ONNX opset the exports can target: 13 (where today's edge runtimes start) to 21.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opset(i64);

impl Opset {
    /// The oldest opset the exports can be written in.
    pub const MIN: i64 = 13;
    /// The newest opset the exports are checked against.
    pub const MAX: i64 = 21;

    /// Checks that `v` is an opset the exports can be written in.
    pub fn new(v: i64) -> Result<Opset> {
        if (Self::MIN..=Self::MAX).contains(&v) {
            Ok(Opset(v))
        } else {
            Err(StudentError::Config(format!(
                "opset {v}: the exports can be written in opsets {} to {}",
                Self::MIN,
                Self::MAX
            )))
        }
    }

    /// The opset number.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl Default for Opset {
    fn default() -> Opset {
        Opset(OPSET)
    }
}

/// Layer normalisation and Gelu in whichever ops the target opset has; the constants the
/// older-op forms need are added to the graph once.
struct Ops {
    opset: i64,
    consts: HashMap<&'static str, String>,
}

impl Ops {
    fn new(opset: Opset) -> Ops {
        Ops {
            opset: opset.get(),
            consts: HashMap::new(),
        }
    }

    fn scalar(&mut self, g: &mut GraphBuilder, name: &'static str, v: f32) -> String {
        self.consts
            .entry(name)
            .or_insert_with(|| g.weight(name, &[], &[v]))
            .clone()
    }

    /// LayerNormalization over the last axis (ε = [`LN_EPS`]); before opset 17 as
    /// ReduceMean/Sub/Mul/Sqrt/Div, the arithmetic of [`crate::mlp::LayerNorm`].
    fn layer_norm(&mut self, g: &mut GraphBuilder, x: &str, gamma: &str, beta: &str) -> String {
        if self.opset >= 17 {
            return g.node(
                "LayerNormalization",
                &[x, gamma, beta],
                &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(LN_EPS))],
            );
        }
        // Opsets 13 to 17 take ReduceMean's axes as an attribute.
        let reduce = [("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))];
        let mean = g.node("ReduceMean", &[x], &reduce);
        let d = g.node("Sub", &[x, &mean], &[]);
        let sq = g.node("Mul", &[&d, &d], &[]);
        let var = g.node("ReduceMean", &[&sq], &reduce);
        let eps = self.scalar(g, "ln_epsilon", LN_EPS);
        let v = g.node("Add", &[&var, &eps], &[]);
        let sd = g.node("Sqrt", &[&v], &[]);
        let n = g.node("Div", &[&d, &sd], &[]);
        let n = g.node("Mul", &[&n, gamma], &[]);
        g.node("Add", &[&n, beta], &[])
    }

    /// Gelu, tanh approximation; before opset 20 as 0.5·x·(1 + tanh(c·(x + 0.044715·x³))).
    fn gelu(&mut self, g: &mut GraphBuilder, x: &str) -> String {
        if self.opset >= 20 {
            return g.node("Gelu", &[x], &[("approximate", Attr::Str("tanh".into()))]);
        }
        let k = self.scalar(g, "gelu_cubic", 0.044715);
        let c = self.scalar(g, "gelu_c", GELU_C);
        let half = self.scalar(g, "gelu_half", 0.5);
        let one = self.scalar(g, "gelu_one", 1.0);
        let x2 = g.node("Mul", &[x, x], &[]);
        let x3 = g.node("Mul", &[&x2, x], &[]);
        let t = g.node("Mul", &[&x3, &k], &[]);
        let t = g.node("Add", &[x, &t], &[]);
        let t = g.node("Mul", &[&t, &c], &[]);
        let t = g.node("Tanh", &[&t], &[]);
        let t = g.node("Add", &[&t, &one], &[]);
        let t = g.node("Mul", &[&t, &half], &[]);
        g.node("Mul", &[x, &t], &[])
    }
}

/// The student's description as model metadata: `logits.student` (all of it, JSON) and
/// `logits.<field>` per top-level field (strings as they are, other values as JSON).
fn describe(g: &mut GraphBuilder, info: &impl serde::Serialize) -> String {
    let value = serde_json::to_value(info).unwrap_or_default();
    if let serde_json::Value::Object(fields) = &value {
        for (k, v) in fields {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            g.metadata(&format!("logits.{k}"), &s);
        }
    }
    let doc = value.to_string();
    g.metadata("logits.student", &doc);
    doc
}

/// The ONNX model of an MLP in `opset`, encoded.
pub fn onnx_bytes(mlp: &Mlp, info: &StudentInfo, opset: Opset) -> Vec<u8> {
    let mut g = GraphBuilder::new();
    let mut ops = Ops::new(opset);
    let batch = Dim::Named("batch".into());
    let widths = &mlp.spec.widths;
    // The teacher's input name, so one feed dictionary serves teacher and student.
    let mut h = g.input(
        &info.input,
        ElemType::Float32,
        &[batch.clone(), Dim::Fixed(mlp.input_width() as i64)],
    );
    if let Some(table) = &mlp.embed {
        // Ids arrive as float values (as the dataset stores them for the student): Cast,
        // look up (batch × n × dim), flatten to the first layer's n·dim inputs.
        let ids = g.node(
            "Cast",
            &[&h],
            &[("to", Attr::Int(ElemType::Int64.to_onnx() as i64))],
        );
        let t = g.weight("embed.weight", table.shape(), slice(table));
        let mut e = g.node("Gather", &[&t, &ids], &[("axis", Attr::Int(0))]);
        if mlp.conv.is_some() {
            // Convolutions read the embedding's values as channels: batch × dim × n.
            e = g.node("Transpose", &[&e], &[("perm", Attr::Ints(vec![0, 2, 1]))]);
        }
        let flat = g.ints(
            "embed_flat_shape",
            &[2],
            &[0, (table.ncols() * mlp.input_width()) as i64],
        );
        h = g.node("Reshape", &[&e, &flat], &[]);
    }
    if let Some(conv) = &mlp.conv {
        // Rows as images, standardised per channel, then Conv → Relu → MaxPool per block and
        // Flatten (channel, row, column), as the ndarray front computes them.
        let [c, hh, ww] = conv.spec.image;
        let img = if conv.spec.channels_last {
            let shape = g.ints("image_shape", &[4], &[0, hh as i64, ww as i64, c as i64]);
            let hwc = g.node("Reshape", &[&h, &shape], &[]);
            g.node(
                "Transpose",
                &[&hwc],
                &[("perm", Attr::Ints(vec![0, 3, 1, 2]))],
            )
        } else {
            let shape = g.ints("image_shape", &[4], &[0, c as i64, hh as i64, ww as i64]);
            g.node("Reshape", &[&h, &shape], &[])
        };
        let mean = g.weight("input.mean", &[c, 1, 1], slice1(&conv.mean));
        let scale = g.weight("input.scale", &[c, 1, 1], slice1(&conv.scale));
        let centred = g.node("Sub", &[&img, &mean], &[]);
        let mut x = g.node("Mul", &[&centred, &scale], &[]);
        let shapes = conv.spec.shapes();
        for (i, l) in conv.layers.iter().enumerate() {
            let (kh, kw) = conv.spec.kernel(i);
            let (o, k) = l.w.dim();
            let w = g.weight(
                &format!("conv.{i}.weight"),
                &[o, k / (kh * kw), kh, kw],
                slice(&l.w),
            );
            let b = g.weight(&format!("conv.{i}.bias"), &[o], slice1(&l.b));
            let (py, px) = ((kh / 2) as i64, (kw / 2) as i64);
            let y = g.node(
                "Conv",
                &[&x, &w, &b],
                &[
                    ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
                    ("pads", Attr::Ints(vec![py, px, py, px])),
                ],
            );
            x = g.node("Relu", &[&y], &[]);
            let [_, h0, w0] = shapes[i];
            let window = vec![crate::conv::pool(h0) as i64, crate::conv::pool(w0) as i64];
            if window != [1, 1] {
                x = g.node(
                    "MaxPool",
                    &[&x],
                    &[
                        ("kernel_shape", Attr::Ints(window.clone())),
                        ("strides", Attr::Ints(window)),
                    ],
                );
            }
        }
        h = g.node("Flatten", &[&x], &[("axis", Attr::Int(1))]);
    }
    let last = mlp.layers.len().saturating_sub(1);
    for (i, l) in mlp.layers.iter().enumerate() {
        let w = g.weight(&format!("layers.{i}.weight"), l.w.shape(), slice(&l.w));
        let b = g.weight(&format!("layers.{i}.bias"), &[l.b.len()], slice1(&l.b));
        let y = g.node("MatMul", &[&h, &w], &[]);
        h = g.node("Add", &[&y, &b], &[]);
        if i == last {
            break;
        }
        if let Some(n) = mlp.norms.get(i) {
            let gamma = g.weight(
                &format!("norms.{i}.gamma"),
                &[n.gamma.len()],
                slice1(&n.gamma),
            );
            let beta = g.weight(&format!("norms.{i}.beta"), &[n.beta.len()], slice1(&n.beta));
            h = ops.layer_norm(&mut g, &h, &gamma, &beta);
        }
        h = match mlp.spec.activation {
            Activation::Relu => g.node("Relu", &[&h], &[]),
            Activation::Tanh => g.node("Tanh", &[&h], &[]),
            Activation::Gelu => ops.gelu(&mut g, &h),
        };
    }
    let classes = *widths.last().unwrap_or(&0) as i64;
    g.output(
        "logits",
        &h,
        ElemType::Float32,
        &[batch, Dim::Fixed(classes)],
    );
    let doc = describe(&mut g, info);
    logits_onnx::model::encode(&g.finish("logits_student", opset.get(), "logits-train", &doc))
}

/// Writes `student.onnx` (in `opset`) and `student.safetensors` (MLP only, no training
/// projections, PyTorch's layout: see [`crate::student::save_torch`]) into `dir`; returns
/// their paths.
pub fn export(
    mlp: &Mlp,
    info: &StudentInfo,
    dir: &Path,
    opset: Opset,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
    let onnx = dir.join("student.onnx");
    write_atomic(&onnx, &onnx_bytes(mlp, info, opset))?;
    let st = dir.join("student.safetensors");
    crate::student::save_torch(&st, mlp, info)?;
    Ok((onnx, st))
}

/// The ONNX model of a transformer student in `opset`, encoded: inputs `input_ids` and
/// `attention_mask` (`batch × sequence`, int64, as `transformers` feeds them: 1 for a token,
/// 0 for padding; positions count from 0 whatever the mask), output `logits`
/// (`batch × sequence × vocab`). The graph is the inference path of [`Gpt::predict`]:
/// embeddings, per block layer normalisation → attention (Reshape/Transpose per head, scaled
/// MatMul, an additive causal mask sliced from a `context × context` constant plus −1e9 on
/// padded keys, Softmax) → residual → layer normalisation → Gelu (tanh) MLP → residual; final
/// layer normalisation and the head. Any sequence length up to the context runs; a longer one
/// stops at a length check, a node named to say so (ONNX Runtime quotes it).
pub fn gpt_onnx_bytes(gpt: &Gpt, info: &impl serde::Serialize, opset: Opset) -> Vec<u8> {
    let mut ops = Ops::new(opset);
    let sp = &gpt.spec;
    let (d, nh, c) = (sp.dim, sp.heads, sp.context);
    let hd = d / nh;
    let mut g = GraphBuilder::new();
    let batch = Dim::Named("batch".into());
    let seq = Dim::Named("sequence".into());
    let wte = g.weight("wte", gpt.wte.shape(), slice(&gpt.wte));
    let wpe = g.weight("wpe", gpt.wpe.shape(), slice(&gpt.wpe));
    // The input: token ids (and their attention mask), or float rows cut into frames along
    // their sequence axis: [batch, ..., T·patch, ...] → [batch, T, width], as the student's
    // loader cuts them.
    let (tok, attention, shape) = match sp.frames() {
        None => {
            let ids = g.input("input_ids", ElemType::Int64, &[batch.clone(), seq.clone()]);
            let attention = g.input(
                "attention_mask",
                ElemType::Int64,
                &[batch.clone(), seq.clone()],
            );
            let tok = g.node("Gather", &[&wte, &ids], &[("axis", Attr::Int(0))]);
            let shape = g.node("Shape", &[&ids], &[]);
            (tok, Some(attention), shape)
        }
        Some(f) => {
            let mut dims = vec![batch.clone()];
            dims.extend(f.shape.iter().enumerate().map(|(i, &n)| {
                if i == f.axis {
                    seq.clone()
                } else {
                    Dim::Fixed(n as i64)
                }
            }));
            let x = g.input(&f.input, ElemType::Float32, &dims);
            let mut split = vec![0i64];
            for (i, &n) in f.shape.iter().enumerate() {
                if i == f.axis {
                    split.extend([-1, f.patch as i64]);
                } else {
                    split.push(n as i64);
                }
            }
            let split_shape = g.ints("frames_split", &[split.len()], &split);
            let x = g.node("Reshape", &[&x, &split_shape], &[]);
            // Move the frame axis (1 + axis) to 1, the rest in order.
            let fa = 1 + f.axis as i64;
            let mut perm = vec![0, fa];
            perm.extend((1..split.len() as i64).filter(|&i| i != fa));
            let x = g.node("Transpose", &[&x], &[("perm", Attr::Ints(perm))]);
            let flat = g.ints("frames_flat", &[3], &[0, 0, f.width() as i64]);
            let x = g.node("Reshape", &[&x, &flat], &[]);
            let tok = g.node("MatMul", &[&x, &wte], &[]);
            let shape = g.node("Shape", &[&x], &[]);
            (tok, None, shape)
        }
    };
    let one_idx = g.ints("one_index", &[], &[1]);
    let t_ids = g.node("Gather", &[&shape, &one_idx], &[("axis", Attr::Int(0))]);
    let zero = g.ints("zero", &[], &[0]);
    let one = g.ints("one", &[], &[1]);
    // The length check: index t − 1 into a vector of `context` zeros, a lookup that fails
    // for t > context in a node whose name is the message (a Gather over a Range would not
    // do: ONNX Runtime rewrites that into a Slice, which clamps). Everything sized by the
    // length (positions, the causal mask) reads it through this node, so it runs first.
    let zeros = g.ints("context_check", &[c], &vec![0; c]);
    let last = g.node("Sub", &[&t_ids, &one], &[]);
    let unit = if sp.frames().is_some() {
        "frames"
    } else {
        "tokens"
    };
    let z = g.named_node(
        &format!(
            "input longer than the student's context of {c} {unit}: feed at most {c} (length check)"
        ),
        "Gather",
        &[&zeros, &last],
        &[("axis", Attr::Int(0))],
    );
    let t = g.node("Add", &[&t_ids, &z], &[]);
    let pos = g.node("Range", &[&zero, &t, &one], &[]);
    let pe = g.node("Gather", &[&wpe, &pos], &[("axis", Attr::Int(0))]);
    let mut x = g.node("Add", &[&tok, &pe], &[]);
    let axis0 = g.ints("axis0", &[1], &[0]);
    let t1 = g.node("Unsqueeze", &[&t, &axis0], &[]);
    // Causal mask: 0 on and below the diagonal, −1e9 above, sliced to sequence × sequence.
    let causal = sp.causal().then(|| {
        let mask: Vec<f32> = (0..c * c)
            .map(|i| if i % c > i / c { -1e9 } else { 0.0 })
            .collect();
        let mask_full = g.weight("causal_mask", &[c, c], &mask);
        let ends = g.node("Concat", &[&t1, &t1], &[("axis", Attr::Int(0))]);
        let starts = g.ints("starts00", &[2], &[0, 0]);
        let axes01 = g.ints("axes01", &[2], &[0, 1]);
        g.node("Slice", &[&mask_full, &starts, &ends, &axes01], &[])
    });
    // Padded keys: (attention_mask − 1) · 1e9, shaped batch × 1 × 1 × sequence.
    let keep = attention.as_ref().map(|a| {
        g.node(
            "Cast",
            &[a],
            &[("to", Attr::Int(ElemType::Float32.to_onnx() as i64))],
        )
    });
    let key_bias = keep.as_ref().map(|keep| {
        let one_f = g.weight("mask_one", &[], &[1.0]);
        let big = g.weight("mask_big", &[], &[1e9]);
        let dropped = g.node("Sub", &[keep, &one_f], &[]);
        let key_bias = g.node("Mul", &[&dropped, &big], &[]);
        let axes12 = g.ints("axes12", &[2], &[1, 2]);
        g.node("Unsqueeze", &[&key_bias, &axes12], &[])
    });
    let mask_t = match (causal, key_bias) {
        (Some(c), Some(k)) => Some(g.node("Add", &[&c, &k], &[])),
        (c, k) => c.or(k),
    };
    let heads_shape = g.ints("heads_shape", &[4], &[0, 0, nh as i64, hd as i64]);
    let merge_shape = g.ints("merge_shape", &[3], &[0, 0, d as i64]);
    let scale = g.weight("attn_scale", &[], &[1.0 / (hd as f32).sqrt()]);
    let axis2 = g.ints("axis2", &[1], &[2]);
    let ln = |g: &mut GraphBuilder,
              ops: &mut Ops,
              x: &str,
              name: &str,
              l: &crate::mlp::LayerNorm|
     -> String {
        let gamma = g.weight(&format!("{name}.gamma"), &[l.gamma.len()], slice1(&l.gamma));
        let beta = g.weight(&format!("{name}.beta"), &[l.beta.len()], slice1(&l.beta));
        ops.layer_norm(g, x, &gamma, &beta)
    };
    let lin = |g: &mut GraphBuilder, x: &str, name: &str, l: &crate::mlp::Linear| -> String {
        let w = g.weight(&format!("{name}.weight"), l.w.shape(), slice(&l.w));
        let b = g.weight(&format!("{name}.bias"), &[l.b.len()], slice1(&l.b));
        let y = g.node("MatMul", &[x, &w], &[]);
        g.node("Add", &[&y, &b], &[])
    };
    for (i, blk) in gpt.blocks.iter().enumerate() {
        let a = ln(&mut g, &mut ops, &x, &format!("h.{i}.ln_1"), &blk.ln_1);
        let qkv = lin(&mut g, &a, &format!("h.{i}.attn"), &blk.attn);
        let part = |g: &mut GraphBuilder, k: usize| -> String {
            let s0 = g.ints(&format!("h.{i}.s{k}"), &[1], &[(k * d) as i64]);
            let e0 = g.ints(&format!("h.{i}.e{k}"), &[1], &[((k + 1) * d) as i64]);
            let sl = g.node("Slice", &[&qkv, &s0, &e0, &axis2], &[]);
            g.node("Reshape", &[&sl, &heads_shape], &[])
        };
        let (q, k, v) = (part(&mut g, 0), part(&mut g, 1), part(&mut g, 2));
        let qh = g.node(
            "Transpose",
            &[&q],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let kt = g.node(
            "Transpose",
            &[&k],
            &[("perm", Attr::Ints(vec![0, 2, 3, 1]))],
        );
        let vh = g.node(
            "Transpose",
            &[&v],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let sc = g.node("MatMul", &[&qh, &kt], &[]);
        let mut sc = g.node("Mul", &[&sc, &scale], &[]);
        if let Some(m) = &mask_t {
            sc = g.node("Add", &[&sc, m], &[]);
        }
        let p = g.node("Softmax", &[&sc], &[("axis", Attr::Int(-1))]);
        let o = g.node("MatMul", &[&p, &vh], &[]);
        let o = g.node(
            "Transpose",
            &[&o],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let o = g.node("Reshape", &[&o, &merge_shape], &[]);
        let o = lin(&mut g, &o, &format!("h.{i}.proj"), &blk.proj);
        x = g.node("Add", &[&x, &o], &[]);
        let m = ln(&mut g, &mut ops, &x, &format!("h.{i}.ln_2"), &blk.ln_2);
        let f = lin(&mut g, &m, &format!("h.{i}.fc"), &blk.fc);
        let f = ops.gelu(&mut g, &f);
        let f = lin(&mut g, &f, &format!("h.{i}.fc_out"), &blk.fc_out);
        x = g.node("Add", &[&x, &f], &[]);
    }
    let mut h = ln(&mut g, &mut ops, &x, "ln_f", &gpt.ln_f);
    if sp.pooled() {
        // The mean of the real positions' final states: Σ h·mask / Σ mask, or (frames, every
        // position real) Σ h / T.
        let axes1 = g.ints("axes1", &[1], &[1]);
        let f32_type = ElemType::Float32.to_onnx() as i64;
        let (sum, n) = match &keep {
            Some(k) => {
                let axis2 = g.ints("axis2_pool", &[1], &[2]);
                let m = g.node("Unsqueeze", &[k, &axis2], &[]);
                let hm = g.node("Mul", &[&h, &m], &[]);
                let sum = g.node("ReduceSum", &[&hm, &axes1], &[("keepdims", Attr::Int(0))]);
                let n = g.node("ReduceSum", &[&m, &axes1], &[("keepdims", Attr::Int(0))]);
                (sum, n)
            }
            None => {
                let sum = g.node("ReduceSum", &[&h, &axes1], &[("keepdims", Attr::Int(0))]);
                let n = g.node("Cast", &[&t], &[("to", Attr::Int(f32_type))]);
                (sum, n)
            }
        };
        h = g.node("Div", &[&sum, &n], &[]);
    }
    let head = match &gpt.head {
        Some(w) => g.weight("head", w.shape(), slice(w)),
        None => {
            let wt = gpt.wte.t().as_standard_layout().to_owned();
            g.weight("head", wt.shape(), slice(&wt))
        }
    };
    let logits = g.node("MatMul", &[&h, &head], &[]);
    let classes = Dim::Fixed(sp.outputs() as i64);
    let dims = match sp.frames() {
        _ if sp.pooled() => vec![batch, classes],
        // Patches of several steps: fewer positions out than steps in.
        Some(f) if f.patch > 1 => vec![batch, Dim::Named("frames".into()), classes],
        _ => vec![batch, seq, classes],
    };
    g.output("logits", &logits, ElemType::Float32, &dims);
    let doc = describe(&mut g, info);
    logits_onnx::model::encode(&g.finish("logits_lm_student", opset.get(), "logits-train", &doc))
}

/// Writes `student.onnx` (in `opset`) and `student.safetensors` of a transformer student into
/// `dir`.
pub fn export_gpt(
    gpt: &Gpt,
    info: &impl serde::Serialize,
    dir: &Path,
    opset: Opset,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
    let onnx = dir.join("student.onnx");
    write_atomic(&onnx, &gpt_onnx_bytes(gpt, info, opset))?;
    let st = dir.join("student.safetensors");
    crate::student::save(&st, gpt, info)?;
    Ok((onnx, st))
}
