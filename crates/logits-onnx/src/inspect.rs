//! Reading what a graph computes, for a user choosing flags: which tensor should be the
//! target (the logits feeding a final softmax, rather than its probabilities), which is
//! likely the feature worth distilling (the activation that the classifier head reads), which
//! tensors are activations at all (not weights, constants or shape arithmetic), and how many
//! rows the embedding table behind a token input has (a token model's vocabulary).
//!
//! Everything here reads the graph only; nothing runs it.

use std::collections::{HashMap, HashSet};

use crate::onnx::{ModelProto, NodeProto};
use crate::surgery::{OutputKind, output_kind};

/// Operators whose outputs are shape arithmetic or indices, never activations.
const SHAPE_OPS: &[&str] = &[
    "Shape",
    "Size",
    "ConstantOfShape",
    "Range",
    "NonZero",
    "ArgMax",
    "ArgMin",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "Not",
    "And",
    "Or",
    "Constant",
];

/// Operators that pass a tensor on unchanged in value (looked through when following the
/// head of a classifier back from its output).
const PASS: &[&str] = &[
    "Identity",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Cast",
];

/// What `inspect-model` recommends.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recommendation {
    /// The tensor to pass as `--target`, and why.
    pub target: Option<(String, String)>,
    /// The tensor likely worth capturing as a feature (what the classifier head reads).
    pub feature: Option<String>,
}

fn producers(m: &ModelProto) -> HashMap<&str, &NodeProto> {
    let mut p = HashMap::new();
    if let Some(g) = &m.graph {
        for n in &g.node {
            for o in &n.output {
                if !o.is_empty() {
                    p.insert(o.as_str(), n);
                }
            }
        }
    }
    p
}

fn initializers(m: &ModelProto) -> HashSet<&str> {
    m.graph.as_ref().map_or_else(HashSet::new, |g| {
        g.initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect()
    })
}

/// Follows `name` back through value-preserving operators.
fn through<'a>(p: &HashMap<&str, &'a NodeProto>, mut name: &'a str) -> &'a str {
    for _ in 0..16 {
        match p.get(name) {
            Some(n) if PASS.contains(&n.op_type.as_deref().unwrap_or("")) => {
                match n.input.first() {
                    Some(i) => name = i,
                    None => break,
                }
            }
            _ => break,
        }
    }
    name
}

/// The tensor a softmax-ended output normalises (the logits), when `output` ends in a
/// Softmax, LogSoftmax or a written-out Exp → ReduceSum → Div (the max subtraction, when
/// present, is looked through: its input is the logits).
pub fn softmax_input(m: &ModelProto, output: &str) -> Option<String> {
    if !matches!(
        output_kind(m, output),
        OutputKind::Softmax | OutputKind::LogSoftmax
    ) {
        return None;
    }
    let p = producers(m);
    let n = p.get(through(&p, output))?;
    let x = match n.op_type.as_deref()? {
        "Softmax" | "LogSoftmax" => n.input.first()?.as_str(),
        "Div" => {
            let e = p.get(n.input.first()?.as_str())?;
            e.input.first()?.as_str()
        }
        _ => return None,
    };
    // exp(x - max(x)): the logits are x.
    let x = match p.get(x) {
        Some(s) if s.op_type.as_deref() == Some("Sub") => {
            let (a, b) = (s.input.first()?, s.input.get(1)?);
            let max = p.get(b.as_str())?;
            if max.op_type.as_deref() == Some("ReduceMax") && max.input.first() == Some(a) {
                a.as_str()
            } else {
                x
            }
        }
        _ => x,
    };
    Some(x.to_string())
}

/// The activation the classifier head reads: following `logits` back through bias adds and
/// value-preserving operators to the last MatMul/Gemm (or 1×1 Conv), its non-weight input.
pub fn head_input(m: &ModelProto, logits: &str) -> Option<String> {
    let p = producers(m);
    let inits = initializers(m);
    let mut name = through(&p, logits);
    for _ in 0..8 {
        let n = p.get(name)?;
        match n.op_type.as_deref()? {
            "Add" => {
                // A bias: follow the side that is not a weight.
                name = n
                    .input
                    .iter()
                    .find(|i| !inits.contains(i.as_str()) && p.contains_key(i.as_str()))?;
                name = through(&p, name);
            }
            "MatMul" | "Gemm" | "Conv" => {
                let x = n.input.iter().find(|i| !inits.contains(i.as_str()))?;
                return Some(through(&p, x).to_string());
            }
            _ => return None,
        }
    }
    None
}

/// The recommended target and feature for a model whose outputs are `outputs`: for the only
/// output (or the one with a class axis, `chosen`), its softmax's input when it ends in one.
pub fn recommend(m: &ModelProto, chosen: Option<&str>) -> Recommendation {
    let Some(out) = chosen else {
        return Recommendation::default();
    };
    let (target, why) = match softmax_input(m, out) {
        Some(x) => (
            x,
            format!(
                "the logits that the final softmax of output {out:?} normalises: pass it as --target (the output itself is probabilities)"
            ),
        ),
        None => match output_kind(m, out) {
            OutputKind::Sigmoid => {
                return Recommendation {
                    target: None,
                    feature: head_input(m, out),
                };
            }
            _ => (out.to_string(), "the output with a class axis".to_string()),
        },
    };
    let feature = head_input(m, &target);
    Recommendation {
        target: Some((target, why)),
        feature,
    }
}

/// The names of the tensors that are activations: computed from a graph input (not only from
/// weights and constants) and not shape arithmetic, in graph order.
pub fn activations(m: &ModelProto) -> Vec<String> {
    let Some(g) = &m.graph else {
        return vec![];
    };
    let inits = initializers(m);
    let mut live: HashSet<&str> = g
        .input
        .iter()
        .filter_map(|i| i.name.as_deref())
        .filter(|n| !inits.contains(n))
        .collect();
    let mut out = Vec::new();
    for n in &g.node {
        let op = n.op_type.as_deref().unwrap_or("");
        if SHAPE_OPS.contains(&op) {
            continue;
        }
        let from_input = if op == "Gather" {
            // An embedding lookup reads activations from its table by a live index; a Gather
            // from a shape is shape arithmetic.
            n.input.iter().any(|i| live.contains(i.as_str()))
                && n.input
                    .first()
                    .is_some_and(|d| inits.contains(d.as_str()) || live.contains(d.as_str()))
        } else {
            n.input.iter().any(|i| live.contains(i.as_str()))
        };
        if !from_input {
            continue;
        }
        for o in &n.output {
            if !o.is_empty() {
                live.insert(o.as_str());
                out.push(o.clone());
            }
        }
    }
    out
}

/// Rows of the embedding table that integer input `input` indexes: a Gather whose indices are
/// the input (directly or through Cast/Identity/Reshape) and whose data is an initializer.
pub fn embedding_rows(m: &ModelProto, input: &str) -> Option<u64> {
    let g = m.graph.as_ref()?;
    let p = producers(m);
    for n in &g.node {
        if n.op_type.as_deref() != Some("Gather") {
            continue;
        }
        let (Some(data), Some(idx)) = (n.input.first(), n.input.get(1)) else {
            continue;
        };
        if through(&p, idx) != input {
            continue;
        }
        let table = g
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(through(&p, data)))?;
        if table.dims.len() == 2 && table.dims[0] > 0 {
            return Some(table.dims[0] as u64);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{GraphProto, TensorProto, ValueInfoProto};

    fn node(op: &str, inputs: &[&str], out: &str) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            ..Default::default()
        }
    }

    fn model(nodes: Vec<NodeProto>, inits: &[(&str, Vec<i64>)]) -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            graph: Some(GraphProto {
                node: nodes,
                input: vec![ValueInfoProto {
                    name: Some("x".into()),
                    ..Default::default()
                }],
                output: vec![ValueInfoProto {
                    name: Some("probs".into()),
                    ..Default::default()
                }],
                initializer: inits
                    .iter()
                    .map(|(n, d)| TensorProto {
                        name: Some(n.to_string()),
                        dims: d.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_logits_before_a_softmax_and_the_activation_before_the_head_are_recommended() {
        let m = model(
            vec![
                node("Shape", &["x"], "shape"),
                node("MatMul", &["x", "w1"], "h0"),
                node("Relu", &["h0"], "hidden"),
                node("MatMul", &["hidden", "w2"], "mm"),
                node("Add", &["mm", "b2"], "logits"),
                node("Softmax", &["logits"], "probs"),
            ],
            &[("w1", vec![4, 8]), ("w2", vec![8, 3]), ("b2", vec![3])],
        );
        let r = recommend(&m, Some("probs"));
        assert_eq!(r.target.map(|t| t.0).as_deref(), Some("logits"));
        assert_eq!(r.feature.as_deref(), Some("hidden"));
        assert_eq!(
            activations(&m),
            vec!["h0", "hidden", "mm", "logits", "probs"]
        );
    }

    #[test]
    fn a_written_out_softmax_with_the_max_subtracted_recommends_its_logits() {
        let mut m = model(
            vec![
                node("MatMul", &["x", "w"], "logits"),
                node("ReduceMax", &["logits"], "mx"),
                node("Sub", &["logits", "mx"], "shifted"),
                node("Exp", &["shifted"], "e"),
                node("ReduceSum", &["e", "axes"], "s"),
                node("Div", &["e", "s"], "probs"),
            ],
            &[("w", vec![4, 3])],
        );
        let g = m.graph.as_mut().unwrap();
        g.initializer.push(TensorProto {
            name: Some("axes".into()),
            dims: vec![1],
            data_type: Some(7),
            int64_data: vec![-1],
            ..Default::default()
        });
        assert_eq!(softmax_input(&m, "probs").as_deref(), Some("logits"));
    }

    #[test]
    fn an_embedding_table_gives_the_vocabulary() {
        let m = model(
            vec![
                node("Cast", &["x"], "ids32"),
                node("Gather", &["emb", "ids32"], "h"),
            ],
            &[("emb", vec![1000, 16])],
        );
        assert_eq!(embedding_rows(&m, "x"), Some(1000));
        assert_eq!(embedding_rows(&m, "y"), None);
    }
}
