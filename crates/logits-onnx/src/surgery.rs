//! Rewriting a copy of a model in memory: exposing intermediate tensors as graph outputs so a
//! session returns them, and recognising a softmax at an output. The file on disk is never
//! touched; the dataset records the sha256 of the file as it is.

use crate::model::OnnxError;
use crate::onnx::{ModelProto, TypeProto, ValueInfoProto, type_proto};

/// Returns a copy of `m` whose graph also outputs each of `names` (graph outputs already listed
/// are left as they are). An unknown name is an error that suggests close names.
pub fn expose(m: &ModelProto, names: &[String], model: &str) -> Result<ModelProto, OnnxError> {
    let mut out = m.clone();
    let g = out.graph.get_or_insert_with(Default::default);
    let produced: Vec<String> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .chain(g.input.iter().filter_map(|i| i.name.clone()))
        .filter(|s| !s.is_empty())
        .collect();
    let types = elem_types(m);
    for name in names {
        if g.output.iter().any(|o| o.name.as_deref() == Some(name)) {
            continue;
        }
        if !produced.contains(name) {
            return Err(OnnxError::UnknownTensor {
                model: model.to_string(),
                name: name.clone(),
                hint: hint(name, &produced),
            });
        }
        // Keep whatever type the model declares; ONNX Runtime infers the rest when it
        // resolves the graph.
        let declared = g
            .value_info
            .iter()
            .find(|v| v.name.as_deref() == Some(name))
            .and_then(|v| v.r#type.clone());
        // ONNX Runtime needs an element type for every graph output: an undeclared tensor's
        // is inferred from the graph (shapes are left to ONNX Runtime).
        let ty = declared.unwrap_or_else(|| tensor_type(types.get(name.as_str()).copied()));
        g.output.push(ValueInfoProto {
            name: Some(name.clone()),
            r#type: Some(ty),
            ..Default::default()
        });
    }
    Ok(out)
}

/// The element type of every tensor of the graph, as far as it follows from the declared ones:
/// initializers, inputs and value_info as declared; `Cast` to its `to`; shape and index
/// operators to int64; comparisons to bool; `Gather` to its data's type; any other operator
/// to its first typed input's type (true of the arithmetic, activation, normalisation and
/// reshaping operators that make up the activations of a network).
pub fn elem_types(m: &ModelProto) -> std::collections::HashMap<String, i32> {
    let mut t = std::collections::HashMap::new();
    let Some(g) = &m.graph else {
        return t;
    };
    for i in &g.initializer {
        if let (Some(n), Some(d)) = (&i.name, i.data_type) {
            t.insert(n.clone(), d);
        }
    }
    for v in g.input.iter().chain(&g.value_info).chain(&g.output) {
        if let (Some(n), Some(type_proto::Value::TensorType(tt))) =
            (&v.name, v.r#type.as_ref().and_then(|t| t.value.as_ref()))
            && let Some(e) = tt.elem_type.filter(|&e| e != 0)
        {
            t.insert(n.clone(), e);
        }
    }
    const FLOAT: i32 = 1;
    const INT32: i32 = 6;
    const INT64: i32 = 7;
    const BOOL: i32 = 9;
    for n in &g.node {
        let op = n.op_type.as_deref().unwrap_or("");
        let e = match op {
            "Cast" => int_attr(n, "to").map(|v| v as i32),
            "Shape" | "Size" | "ArgMax" | "ArgMin" | "NonZero" => Some(INT64),
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And"
            | "Or" | "Xor" | "IsNaN" | "IsInf" => Some(BOOL),
            "Gather" | "GatherElements" | "GatherND" => {
                n.input.first().and_then(|i| t.get(i.as_str()).copied())
            }
            "Constant" => n.attribute.iter().find_map(|a| a.t.as_ref()?.data_type),
            // Where(condition, X, Y): X's type, not the condition's bool.
            "Where" => n.input.get(1).and_then(|i| t.get(i.as_str()).copied()),
            "ConstantOfShape" => Some(
                n.attribute
                    .iter()
                    .find_map(|a| a.t.as_ref()?.data_type)
                    .unwrap_or(FLOAT),
            ),
            "DequantizeLinear" => Some(FLOAT),
            "MatMulInteger" | "ConvInteger" => Some(INT32),
            _ => n.input.iter().find_map(|i| t.get(i.as_str()).copied()),
        };
        if let Some(e) = e {
            for o in &n.output {
                t.entry(o.clone()).or_insert(e);
            }
        }
    }
    t
}

fn hint(name: &str, known: &[String]) -> String {
    let lower = name.to_lowercase();
    let mut close: Vec<&String> = known
        .iter()
        .filter(|k| {
            let k = k.to_lowercase();
            k.contains(&lower) || lower.contains(&k) || edit_distance(&k, &lower) <= 3
        })
        .collect();
    close.truncate(5);
    if close.is_empty() {
        String::new()
    } else {
        let c: Vec<String> = close.iter().map(|s| format!("{s:?}")).collect();
        format!("; close names: {}", c.join(", "))
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// What produces a graph output, as far as probabilities are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Raw scores (logits), or nothing recognisable.
    Logits,
    /// A Softmax over the last axis: probabilities.
    Softmax,
    /// A LogSoftmax over the last axis: log-probabilities.
    LogSoftmax,
    /// A Sigmoid: independent per-class probabilities (multi-label), not one distribution.
    Sigmoid,
}

/// Recognises what produces `output`, looking through Identity/Reshape/Flatten/Squeeze/
/// Unsqueeze/Cast nodes: a Softmax or LogSoftmax over the last axis (an explicit axis equal to
/// the last one of any rank; the default axis as the model's opset defines it, 1 with 2-D
/// coercion before opset 13, -1 from 13), a softmax written out as Exp → ReduceSum → Div over
/// the last axis (as jax2tf writes it, with or without the max subtracted first), or a
/// Sigmoid.
pub fn output_kind(m: &ModelProto, output: &str) -> OutputKind {
    let Some(g) = &m.graph else {
        return OutputKind::Logits;
    };
    let producer = |name: &str| {
        g.node
            .iter()
            .find(|n| n.output.first().map(String::as_str) == Some(name))
    };
    let mut name = output.to_string();
    // The rank of the tensor being looked at: declared, or the output's while only
    // shape-preserving nodes were passed.
    let mut rank = rank_of(m, output);
    for _ in 0..16 {
        let Some(n) = producer(&name) else {
            return OutputKind::Logits;
        };
        match n.op_type.as_deref() {
            Some(op @ ("Identity" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Cast")) => {
                match n.input.first() {
                    Some(i) => name = i.clone(),
                    None => return OutputKind::Logits,
                }
                let kept = matches!(op, "Identity" | "Cast");
                rank = rank_of(m, &name).or(if kept { rank } else { None });
            }
            Some(op @ ("Softmax" | "LogSoftmax")) => {
                let axis = int_attr(n, "axis").unwrap_or(if opset(m) >= 13 { -1 } else { 1 });
                if !is_last_axis(axis, rank) {
                    return OutputKind::Logits;
                }
                return if op == "Softmax" {
                    OutputKind::Softmax
                } else {
                    OutputKind::LogSoftmax
                };
            }
            Some("Sigmoid") => return OutputKind::Sigmoid,
            Some("Div") => {
                // Exp(x) / ReduceSum(Exp(x), last axis, keepdims): the same Exp output on both
                // sides (or two Exp nodes of the same input).
                let (Some(num), Some(den)) = (n.input.first(), n.input.get(1)) else {
                    return OutputKind::Logits;
                };
                let exp_input = |t: &str| {
                    producer(t)
                        .filter(|e| e.op_type.as_deref() == Some("Exp"))
                        .and_then(|e| e.input.first().cloned())
                };
                let Some(x) = exp_input(num) else {
                    return OutputKind::Logits;
                };
                let Some(sum) = producer(den).filter(|d| d.op_type.as_deref() == Some("ReduceSum"))
                else {
                    return OutputKind::Logits;
                };
                let summed = sum.input.first().map(String::as_str);
                let same = summed == Some(num.as_str())
                    || summed.and_then(exp_input).as_deref() == Some(x.as_str());
                let axes = int_list_attr(sum, "axes")
                    .or_else(|| sum.input.get(1).and_then(|a| constant_ints(m, a)));
                let keepdims = int_attr(sum, "keepdims").unwrap_or(1) == 1;
                let last = matches!(axes.as_deref(), Some([a]) if is_last_axis(*a, rank));
                return if same && keepdims && last {
                    OutputKind::Softmax
                } else {
                    OutputKind::Logits
                };
            }
            _ => return OutputKind::Logits,
        }
    }
    OutputKind::Logits
}

/// True when `axis` (possibly negative) is the last axis of a tensor of rank `rank`.
fn is_last_axis(axis: i64, rank: Option<usize>) -> bool {
    axis == -1 || rank.is_some_and(|r| r >= 1 && axis == r as i64 - 1)
}

/// A tensor type of element type `elem` (an ONNX `DataType` number), its shape left open.
pub(crate) fn tensor_type(elem: Option<i32>) -> TypeProto {
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: elem,
            shape: None,
        })),
        denotation: None,
    }
}

/// The model's declared opset for the default ONNX domain, if it declares one.
pub(crate) fn declared_opset(m: &ModelProto) -> Option<i64> {
    m.opset_import
        .iter()
        .find(|o| o.domain.as_deref().unwrap_or("").is_empty())
        .and_then(|o| o.version)
}

/// The model's opset for the default ONNX domain (13 when it does not say).
fn opset(m: &ModelProto) -> i64 {
    declared_opset(m).unwrap_or(13)
}

fn int_attr(n: &crate::onnx::NodeProto, name: &str) -> Option<i64> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
}

fn int_list_attr(n: &crate::onnx::NodeProto, name: &str) -> Option<Vec<i64>> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .map(|a| a.ints.clone())
}

/// The values of an int64 initializer (or Constant node output) named `name`.
fn constant_ints(m: &ModelProto, name: &str) -> Option<Vec<i64>> {
    let g = m.graph.as_ref()?;
    let t = g
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .or_else(|| {
            g.node
                .iter()
                .find(|n| {
                    n.op_type.as_deref() == Some("Constant")
                        && n.output.first().map(String::as_str) == Some(name)
                })
                .and_then(|n| n.attribute.iter().find_map(|a| a.t.as_ref()))
        })?;
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    let raw = t.raw_data.as_ref()?;
    Some(
        raw.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
    )
}

fn rank_of(m: &ModelProto, name: &str) -> Option<usize> {
    let g = m.graph.as_ref()?;
    let v = g
        .output
        .iter()
        .chain(g.value_info.iter())
        .find(|v| v.name.as_deref() == Some(name))?;
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.shape.as_ref().map(|s| s.dim.len()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{GraphProto, NodeProto};

    fn tiny(last_op: &str) -> ModelProto {
        let node = |op: &str, i: &str, o: &str| NodeProto {
            op_type: Some(op.into()),
            input: vec![i.into()],
            output: vec![o.into()],
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(8),
            graph: Some(GraphProto {
                node: vec![
                    node("Relu", "x", "hidden"),
                    node(last_op, "hidden", "probs"),
                ],
                input: vec![ValueInfoProto {
                    name: Some("x".into()),
                    ..Default::default()
                }],
                output: vec![ValueInfoProto {
                    name: Some("probs".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn exposes_known_tensors_and_suggests_for_unknown() {
        let m = tiny("Softmax");
        let e = expose(&m, &["hidden".into()], "t.onnx").unwrap();
        let outs: Vec<_> = e
            .graph
            .unwrap()
            .output
            .iter()
            .map(|o| o.name.clone().unwrap())
            .collect();
        assert_eq!(outs, vec!["probs", "hidden"]);
        let err = expose(&m, &["hiden".into()], "t.onnx")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.onnx") && err.contains("\"hiden\"") && err.contains("\"hidden\""),
            "{err}"
        );
    }

    #[test]
    fn recognises_softmax_outputs() {
        assert_eq!(output_kind(&tiny("Softmax"), "probs"), OutputKind::Softmax);
        assert_eq!(
            output_kind(&tiny("LogSoftmax"), "probs"),
            OutputKind::LogSoftmax
        );
        assert_eq!(output_kind(&tiny("Identity"), "probs"), OutputKind::Logits);
    }

    /// A model whose output `probs` (declared rank `rank`) comes from `nodes`, at `opset`,
    /// with `axes` (the last axis) as an int64 initializer.
    fn graph(nodes: Vec<NodeProto>, rank: usize, opset: i64) -> ModelProto {
        use crate::onnx::{OperatorSetIdProto, TensorProto, TensorShapeProto, tensor_shape_proto};
        let dims = (0..rank)
            .map(|_| tensor_shape_proto::Dimension::default())
            .collect();
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            graph: Some(GraphProto {
                node: nodes,
                initializer: vec![TensorProto {
                    name: Some("axes".into()),
                    dims: vec![1],
                    int64_data: vec![rank as i64 - 1],
                    data_type: Some(7),
                    ..Default::default()
                }],
                output: vec![ValueInfoProto {
                    name: Some("probs".into()),
                    r#type: Some(TypeProto {
                        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                            elem_type: Some(1),
                            shape: Some(TensorShapeProto { dim: dims }),
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn op(
        op: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<crate::onnx::AttributeProto>,
    ) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        }
    }

    fn int(name: &str, v: i64) -> crate::onnx::AttributeProto {
        crate::onnx::AttributeProto {
            name: Some(name.into()),
            i: Some(v),
            ..Default::default()
        }
    }

    #[test]
    fn recognises_softmax_at_an_explicit_last_axis_and_by_opset() {
        // A CTC recogniser's [batch, T, C] softmax with axis=2 (paddle2onnx, opset 12).
        let m = graph(
            vec![op("Softmax", &["x"], "probs", vec![int("axis", 2)])],
            3,
            12,
        );
        assert_eq!(output_kind(&m, "probs"), OutputKind::Softmax);
        // Before opset 13 the default axis is 1 with 2-D coercion: over T and C together.
        let m = graph(vec![op("Softmax", &["x"], "probs", vec![])], 3, 12);
        assert_eq!(output_kind(&m, "probs"), OutputKind::Logits);
        let m = graph(vec![op("Softmax", &["x"], "probs", vec![])], 3, 13);
        assert_eq!(output_kind(&m, "probs"), OutputKind::Softmax);
        let m = graph(
            vec![op("Softmax", &["x"], "probs", vec![int("axis", 1)])],
            3,
            13,
        );
        assert_eq!(output_kind(&m, "probs"), OutputKind::Logits);
        // Through a Cast.
        let m = graph(
            vec![
                op("Softmax", &["x"], "p", vec![int("axis", -1)]),
                op("Cast", &["p"], "probs", vec![int("to", 1)]),
            ],
            2,
            17,
        );
        assert_eq!(output_kind(&m, "probs"), OutputKind::Softmax);
    }

    #[test]
    fn recognises_a_decomposed_softmax_and_a_sigmoid() {
        let decomposed = |axes_attr: bool| {
            let mut sum = op("ReduceSum", &["e", "axes"], "s", vec![int("keepdims", 1)]);
            if axes_attr {
                sum.input.truncate(1);
                sum.attribute.push(crate::onnx::AttributeProto {
                    name: Some("axes".into()),
                    ints: vec![-1],
                    ..Default::default()
                });
            }
            graph(
                vec![
                    op("ReduceMax", &["x"], "mx", vec![]),
                    op("Sub", &["x", "mx"], "d", vec![]),
                    op("Exp", &["d"], "e", vec![]),
                    sum,
                    op("Div", &["e", "s"], "probs", vec![]),
                ],
                2,
                13,
            )
        };
        assert_eq!(
            output_kind(&decomposed(false), "probs"),
            OutputKind::Softmax
        );
        assert_eq!(output_kind(&decomposed(true), "probs"), OutputKind::Softmax);
        // A sum over another axis is not a softmax over classes.
        let mut m = decomposed(false);
        if let Some(g) = m.graph.as_mut() {
            g.initializer[0].int64_data = vec![0];
        }
        assert_eq!(output_kind(&m, "probs"), OutputKind::Logits);
        let m = graph(vec![op("Sigmoid", &["x"], "probs", vec![])], 2, 13);
        assert_eq!(output_kind(&m, "probs"), OutputKind::Sigmoid);
    }

    #[test]
    fn garbage_is_not_a_model() {
        let p = std::path::Path::new("x.onnx");
        assert!(crate::load_bytes(p, b"hello world, not protobuf").is_err());
        assert!(crate::load_bytes(p, &[]).is_err());
        let ok = crate::model::encode(&tiny("Softmax"));
        assert!(crate::load_bytes(p, &ok).is_ok());
    }
}
