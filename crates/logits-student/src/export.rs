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
