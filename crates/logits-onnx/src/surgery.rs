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
        let ty = declared.unwrap_or(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: None,
                shape: None,
            })),
            denotation: None,
        });
        g.output.push(ValueInfoProto {
            name: Some(name.clone()),
            r#type: Some(ty),
            ..Default::default()
        });
    }
    Ok(out)
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
}

/// Recognises a Softmax or LogSoftmax (over the last axis) producing `output`, looking through
/// Identity/Reshape/Flatten/Squeeze nodes.
pub fn output_kind(m: &ModelProto, output: &str) -> OutputKind {
    let Some(g) = &m.graph else {
        return OutputKind::Logits;
    };
    let mut name = output.to_string();
    for _ in 0..8 {
        let Some(n) = g.node.iter().find(|n| n.output.first() == Some(&name)) else {
            return OutputKind::Logits;
        };
        match n.op_type.as_deref() {
            Some("Identity" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze") => {
                match n.input.first() {
                    Some(i) => name = i.clone(),
                    None => return OutputKind::Logits,
                }
            }
            Some(op @ ("Softmax" | "LogSoftmax")) => {
                // opset >= 13 defaults to axis -1; older opsets default to 1, which is the last
                // axis of a 2-D output. Any other explicit axis is not a softmax over classes.
                let axis = n
                    .attribute
                    .iter()
                    .find(|a| a.name.as_deref() == Some("axis"))
                    .and_then(|a| a.i);
                let last = matches!(axis, None | Some(-1))
                    || (axis == Some(1) && rank_of(m, output) == Some(2));
                if !last {
                    return OutputKind::Logits;
                }
                return if op == "Softmax" {
                    OutputKind::Softmax
                } else {
                    OutputKind::LogSoftmax
                };
            }
            _ => return OutputKind::Logits,
        }
    }
    OutputKind::Logits
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

    #[test]
    fn garbage_is_not_a_model() {
        let p = std::path::Path::new("x.onnx");
        assert!(crate::load_bytes(p, b"hello world, not protobuf").is_err());
        assert!(crate::load_bytes(p, &[]).is_err());
        let ok = crate::model::encode(&tiny("Softmax"));
        assert!(crate::load_bytes(p, &ok).is_ok());
    }
}
