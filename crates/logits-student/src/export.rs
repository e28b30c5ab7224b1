//! Export: the trained MLP as safetensors (weights and self-description) and as ONNX, written
//! from Rust through `logits-onnx`'s graph builder. The ONNX graph is the inference path of
//! [`Mlp::predict`]: MatMul + Add per layer, LayerNormalization (ε = 1e-5), then Relu, Tanh or
//! Gelu (tanh approximation) — opset 20, the first with Gelu — and no dropout. Input `input`
//! (`batch × inputs`, f32), output `logits` (`batch × classes`).

use std::path::Path;

use logits_onnx::ElemType;
use logits_onnx::builder::{Attr, Dim, GraphBuilder};

use crate::error::Result;
use crate::mlp::{Activation, Mlp, slice, slice1};
use crate::student::{StudentInfo, write_atomic};
use crate::transformer::Gpt;

/// The ONNX opset the export targets.
pub const OPSET: i64 = 20;

/// The ONNX model of an MLP, encoded.
pub fn onnx_bytes(mlp: &Mlp, info: &StudentInfo) -> Vec<u8> {
    let mut g = GraphBuilder::new();
    let batch = Dim::Named("batch".into());
    let widths = &mlp.spec.widths;
    let mut h = g.input(
        "input",
        ElemType::Float32,
        &[batch.clone(), Dim::Fixed(widths[0] as i64)],
    );
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
            h = g.node(
                "LayerNormalization",
                &[&h, &gamma, &beta],
                &[
                    ("axis", Attr::Int(-1)),
                    ("epsilon", Attr::Float(crate::mlp::LN_EPS)),
                ],
            );
        }
        h = match mlp.spec.activation {
            Activation::Relu => g.node("Relu", &[&h], &[]),
            Activation::Tanh => g.node("Tanh", &[&h], &[]),
            Activation::Gelu => g.node("Gelu", &[&h], &[("approximate", Attr::Str("tanh".into()))]),
        };
    }
    let classes = *widths.last().unwrap_or(&0) as i64;
    g.output(
        "logits",
        &h,
        ElemType::Float32,
        &[batch, Dim::Fixed(classes)],
    );
    let doc = serde_json::to_string(info).unwrap_or_default();
    logits_onnx::model::encode(&g.finish("logits_student", OPSET, "logits-train", &doc))
}

/// Writes `student.onnx` and `student.safetensors` (MLP only, no training projections) into
/// `dir`; returns their paths.
pub fn export(
    mlp: &Mlp,
    info: &StudentInfo,
    dir: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
    let onnx = dir.join("student.onnx");
    write_atomic(&onnx, &onnx_bytes(mlp, info))?;
    let st = dir.join("student.safetensors");
    crate::student::save(&st, mlp, info)?;
    Ok((onnx, st))
}

/// The ONNX model of a transformer student, encoded: input `input_ids` (`batch × sequence`,
/// int64, sequence ≤ context), output `logits` (`batch × sequence × vocab`). The graph is the
/// inference path of [`Gpt::predict`] on unpadded sequences: embeddings, per block
/// LayerNormalization → attention (Reshape/Transpose per head, scaled MatMul, an additive
/// causal mask sliced from a `context × context` constant, Softmax) → residual →
/// LayerNormalization → Gelu (tanh) MLP → residual; final LayerNormalization and the head.
pub fn gpt_onnx_bytes(gpt: &Gpt, info: &impl serde::Serialize) -> Vec<u8> {
    let sp = &gpt.spec;
    let (d, nh, c) = (sp.dim, sp.heads, sp.context);
    let hd = d / nh;
    let mut g = GraphBuilder::new();
    let batch = Dim::Named("batch".into());
    let seq = Dim::Named("sequence".into());
    let ids = g.input("input_ids", ElemType::Int64, &[batch.clone(), seq.clone()]);
    let wte = g.weight("wte", gpt.wte.shape(), slice(&gpt.wte));
    let wpe = g.weight("wpe", gpt.wpe.shape(), slice(&gpt.wpe));
    let tok = g.node("Gather", &[&wte, &ids], &[("axis", Attr::Int(0))]);
    let shape = g.node("Shape", &[&ids], &[]);
    let one_idx = g.ints("one_index", &[], &[1]);
    let t = g.node("Gather", &[&shape, &one_idx], &[("axis", Attr::Int(0))]);
    let zero = g.ints("zero", &[], &[0]);
    let one = g.ints("one", &[], &[1]);
    let pos = g.node("Range", &[&zero, &t, &one], &[]);
    let pe = g.node("Gather", &[&wpe, &pos], &[("axis", Attr::Int(0))]);
    let mut x = g.node("Add", &[&tok, &pe], &[]);
    // Causal mask: 0 on and below the diagonal, −1e9 above, sliced to sequence × sequence.
    let mask: Vec<f32> = (0..c * c)
        .map(|i| if i % c > i / c { -1e9 } else { 0.0 })
        .collect();
    let mask_full = g.weight("causal_mask", &[c, c], &mask);
    let axis0 = g.ints("axis0", &[1], &[0]);
    let t1 = g.node("Unsqueeze", &[&t, &axis0], &[]);
    let ends = g.node("Concat", &[&t1, &t1], &[("axis", Attr::Int(0))]);
    let starts = g.ints("starts00", &[2], &[0, 0]);
    let axes01 = g.ints("axes01", &[2], &[0, 1]);
    let mask_t = g.node("Slice", &[&mask_full, &starts, &ends, &axes01], &[]);
    let heads_shape = g.ints("heads_shape", &[4], &[0, 0, nh as i64, hd as i64]);
    let merge_shape = g.ints("merge_shape", &[3], &[0, 0, d as i64]);
    let scale = g.weight("attn_scale", &[], &[1.0 / (hd as f32).sqrt()]);
    let axis2 = g.ints("axis2", &[1], &[2]);
    let ln = |g: &mut GraphBuilder, x: &str, name: &str, l: &crate::mlp::LayerNorm| -> String {
        let gamma = g.weight(&format!("{name}.gamma"), &[l.gamma.len()], slice1(&l.gamma));
        let beta = g.weight(&format!("{name}.beta"), &[l.beta.len()], slice1(&l.beta));
        g.node(
            "LayerNormalization",
            &[x, &gamma, &beta],
            &[
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(crate::mlp::LN_EPS)),
            ],
        )
    };
    let lin = |g: &mut GraphBuilder, x: &str, name: &str, l: &crate::mlp::Linear| -> String {
        let w = g.weight(&format!("{name}.weight"), l.w.shape(), slice(&l.w));
        let b = g.weight(&format!("{name}.bias"), &[l.b.len()], slice1(&l.b));
        let y = g.node("MatMul", &[x, &w], &[]);
        g.node("Add", &[&y, &b], &[])
    };
    for (i, blk) in gpt.blocks.iter().enumerate() {
        let a = ln(&mut g, &x, &format!("h.{i}.ln_1"), &blk.ln_1);
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
        let sc = g.node("Mul", &[&sc, &scale], &[]);
        let sc = g.node("Add", &[&sc, &mask_t], &[]);
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
        let m = ln(&mut g, &x, &format!("h.{i}.ln_2"), &blk.ln_2);
        let f = lin(&mut g, &m, &format!("h.{i}.fc"), &blk.fc);
        let f = g.node("Gelu", &[&f], &[("approximate", Attr::Str("tanh".into()))]);
        let f = lin(&mut g, &f, &format!("h.{i}.fc_out"), &blk.fc_out);
        x = g.node("Add", &[&x, &f], &[]);
    }
    let h = ln(&mut g, &x, "ln_f", &gpt.ln_f);
    let head = match &gpt.head {
        Some(w) => g.weight("head", w.shape(), slice(w)),
        None => {
            let wt = gpt.wte.t().as_standard_layout().to_owned();
            g.weight("head", wt.shape(), slice(&wt))
        }
    };
    let logits = g.node("MatMul", &[&h, &head], &[]);
    g.output(
        "logits",
        &logits,
        ElemType::Float32,
        &[batch, seq, Dim::Fixed(sp.vocab as i64)],
    );
    let doc = serde_json::to_string(info).unwrap_or_default();
    logits_onnx::model::encode(&g.finish("logits_lm_student", OPSET, "logits-train", &doc))
}

/// Writes `student.onnx` and `student.safetensors` of a transformer student into `dir`.
pub fn export_gpt(
    gpt: &Gpt,
    info: &impl serde::Serialize,
    dir: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
    let onnx = dir.join("student.onnx");
    write_atomic(&onnx, &gpt_onnx_bytes(gpt, info))?;
    let st = dir.join("student.safetensors");
    crate::student::save(&st, gpt, info)?;
    Ok((onnx, st))
}
