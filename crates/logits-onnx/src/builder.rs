//! Writing new ONNX models: a small graph builder over the generated protobuf types, used by
//! the student side to export what it trained. It knows ops only as names and attributes;
//! which ops make up a model is the caller's business.

use crate::model::ElemType;
use crate::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto, tensor_shape_proto,
    type_proto,
};

/// One dimension of a graph input or output: a size or a symbolic name (`batch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named, free dimension.
    Named(String),
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// A float.
    Float(f32),
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
    /// A list of integers.
    Ints(Vec<i64>),
}

/// Builds a graph node by node; node outputs get unique names.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    next: usize,
    props: Vec<StringStringEntryProto>,
}

fn value_info(name: &str, elem: ElemType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem.to_onnx()),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new() -> GraphBuilder {
        GraphBuilder::default()
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: ElemType, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares a graph output, produced by the value named `from` (an Identity renames it).
    pub fn output(&mut self, name: &str, from: &str, elem: ElemType, dims: &[Dim]) {
        self.graph.node.push(NodeProto {
            input: vec![from.to_string()],
            output: vec![name.to_string()],
            name: Some(format!("{name}_identity")),
            op_type: Some("Identity".into()),
            ..Default::default()
        });
        self.graph.output.push(value_info(name, elem, dims));
    }

    /// Adds an f32 initializer (weights) and returns its name.
    pub fn weight(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.graph.initializer.push(TensorProto {
            name: Some(name.to_string()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(ElemType::Float32.to_onnx()),
            raw_data: Some(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds an int64 initializer (shapes, indices, axes) and returns its name.
    pub fn ints(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        self.graph.initializer.push(TensorProto {
            name: Some(name.to_string()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(ElemType::Int64.to_onnx()),
            raw_data: Some(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a model-level `metadata_props` entry (what ONNX Runtime shows as
    /// `custom_metadata_map`).
    pub fn metadata(&mut self, key: &str, value: &str) {
        self.props.push(StringStringEntryProto {
            key: Some(key.to_string()),
            value: Some(value.to_string()),
        });
    }

    /// Adds a node with one output, named `name` (which runtimes quote in their errors), and
    /// returns that output's name.
    pub fn named_node(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
    ) -> String {
        let out = self.node(op, inputs, attrs);
        if let Some(n) = self.graph.node.last_mut() {
            n.name = Some(name.to_string());
        }
        out
    }

    /// Adds a node with one output and returns that output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.next += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.next);
        let attribute = attrs
            .iter()
            .map(|(n, a)| {
                let mut p = AttributeProto {
                    name: Some(n.to_string()),
                    ..Default::default()
                };
                match a {
                    Attr::Float(f) => {
                        p.f = Some(*f);
                        p.r#type = Some(attribute_proto::AttributeType::Float as i32);
                    }
                    Attr::Int(i) => {
                        p.i = Some(*i);
                        p.r#type = Some(attribute_proto::AttributeType::Int as i32);
                    }
                    Attr::Str(s) => {
                        p.s = Some(s.as_bytes().to_vec());
                        p.r#type = Some(attribute_proto::AttributeType::String as i32);
                    }
                    Attr::Ints(v) => {
                        p.ints = v.clone();
                        p.r#type = Some(attribute_proto::AttributeType::Ints as i32);
                    }
                }
                p
            })
            .collect();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(format!("n{}", self.next)),
            op_type: Some(op.to_string()),
            attribute,
            ..Default::default()
        });
        out
    }

    /// The finished model: ONNX IR 9, the default domain at `opset`.
    pub fn finish(mut self, name: &str, opset: i64, producer: &str, doc: &str) -> ModelProto {
        self.graph.name = Some(name.to_string());
        ModelProto {
            ir_version: Some(9),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            producer_name: Some(producer.to_string()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            doc_string: Some(doc.to_string()),
            metadata_props: self.props,
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_encoder() {
        let mut g = GraphBuilder::new();
        let x = g.input(
            "x",
            ElemType::Float32,
            &[Dim::Named("batch".into()), Dim::Fixed(2)],
        );
        let w = g.weight("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let y = g.node("MatMul", &[&x, &w], &[]);
        let z = g.node("Gelu", &[&y], &[("approximate", Attr::Str("tanh".into()))]);
        g.output(
            "y",
            &z,
            ElemType::Float32,
            &[Dim::Named("batch".into()), Dim::Fixed(3)],
        );
        let m = g.finish("t", 20, "test", "");
        let bytes = crate::model::encode(&m);
        let back = crate::load_bytes(std::path::Path::new("t.onnx"), &bytes).unwrap();
        let s = crate::model::summary(&back);
        assert_eq!(s.inputs[0].name, "x");
        assert_eq!(s.outputs[0].name, "y");
        assert_eq!(back.graph.unwrap().node.len(), 3);
    }
}
