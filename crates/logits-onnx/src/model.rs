//! Loading ONNX models and summarising what they take, give and compute.

use std::path::{Path, PathBuf};

use prost::Message;

use crate::onnx::{
    ModelProto, TypeProto, ValueInfoProto, tensor_proto::DataType,
    tensor_shape_proto::dimension::Value as DimValue, type_proto,
};

/// Errors reading or changing an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The model file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model.
    #[error("{path}: not an ONNX model ({message})")]
    NotOnnx {
        /// The model file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// A tensor name that the graph does not have.
    #[error("{model}: no tensor named {name:?} in the graph{hint}")]
    UnknownTensor {
        /// The model file (or a description of it).
        model: String,
        /// The name asked for.
        name: String,
        /// Close names, if any (", did you mean ...").
        hint: String,
    },
    /// A rewrite the model does not allow (an opset too old for it, say).
    #[error("{model}: {message}")]
    Unsupported {
        /// The model file (or a description of it).
        model: String,
        /// Why.
        message: String,
    },
}

/// Element type of a tensor, as ONNX names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    /// float32.
    Float32,
    /// float64.
    Float64,
    /// float16.
    Float16,
    /// bfloat16.
    BFloat16,
    /// int64.
    Int64,
    /// int32.
    Int32,
    /// int16.
    Int16,
    /// int8.
    Int8,
    /// uint8.
    Uint8,
    /// uint16.
    Uint16,
    /// uint32.
    Uint32,
    /// uint64.
    Uint64,
    /// bool.
    Bool,
    /// string.
    String,
    /// Anything else (complex, float8...), with the ONNX enum value.
    Other(i32),
}

impl ElemType {
    /// From the `TensorProto.DataType` value.
    pub fn from_onnx(v: i32) -> ElemType {
        match DataType::try_from(v) {
            Ok(DataType::Float) => ElemType::Float32,
            Ok(DataType::Double) => ElemType::Float64,
            Ok(DataType::Float16) => ElemType::Float16,
            Ok(DataType::Bfloat16) => ElemType::BFloat16,
            Ok(DataType::Int64) => ElemType::Int64,
            Ok(DataType::Int32) => ElemType::Int32,
            Ok(DataType::Int16) => ElemType::Int16,
            Ok(DataType::Int8) => ElemType::Int8,
            Ok(DataType::Uint8) => ElemType::Uint8,
            Ok(DataType::Uint16) => ElemType::Uint16,
            Ok(DataType::Uint32) => ElemType::Uint32,
            Ok(DataType::Uint64) => ElemType::Uint64,
            Ok(DataType::Bool) => ElemType::Bool,
            Ok(DataType::String) => ElemType::String,
            _ => ElemType::Other(v),
        }
    }

    /// The `TensorProto.DataType` value.
    pub fn to_onnx(self) -> i32 {
        (match self {
            ElemType::Float32 => DataType::Float,
            ElemType::Float64 => DataType::Double,
            ElemType::Float16 => DataType::Float16,
            ElemType::BFloat16 => DataType::Bfloat16,
            ElemType::Int64 => DataType::Int64,
            ElemType::Int32 => DataType::Int32,
            ElemType::Int16 => DataType::Int16,
            ElemType::Int8 => DataType::Int8,
            ElemType::Uint8 => DataType::Uint8,
            ElemType::Uint16 => DataType::Uint16,
            ElemType::Uint32 => DataType::Uint32,
            ElemType::Uint64 => DataType::Uint64,
            ElemType::Bool => DataType::Bool,
            ElemType::String => DataType::String,
            ElemType::Other(v) => return v,
        }) as i32
    }

    /// Lowercase name (`float32`, `int64`, ...).
    pub fn name(self) -> String {
        match self {
            ElemType::Other(v) => format!("onnx-type-{v}"),
            other => format!("{other:?}").to_lowercase(),
        }
    }

    /// True for floating-point types.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            ElemType::Float32 | ElemType::Float64 | ElemType::Float16 | ElemType::BFloat16
        )
    }
}

/// One dimension of a tensor shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size with its name.
    Symbolic(String),
    /// A dimension the model leaves unnamed.
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => write!(f, "{s}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// A named tensor with what the model declares about it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSummary {
    /// Tensor name.
    pub name: String,
    /// Element type, when declared.
    pub elem: Option<ElemType>,
    /// Shape, when declared.
    pub shape: Option<Vec<Dim>>,
    /// For intermediate tensors: the operator that computes it.
    pub op: Option<String>,
}

impl TensorSummary {
    /// `float32 [batch, 10]`-style description.
    pub fn describe(&self) -> String {
        let t = self.elem.map(|e| e.name()).unwrap_or_else(|| "?".into());
        match &self.shape {
            Some(s) => {
                let d: Vec<String> = s.iter().map(|d| d.to_string()).collect();
                format!("{t} [{}]", d.join(", "))
            }
            None => format!("{t} [shape unknown]"),
        }
    }
}

/// What a model takes, gives, and computes on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// Graph inputs that are not initializers.
    pub inputs: Vec<TensorSummary>,
    /// Graph outputs.
    pub outputs: Vec<TensorSummary>,
    /// Node outputs that are not graph outputs: tensors that can be captured as features.
    pub intermediates: Vec<TensorSummary>,
    /// Producer name and version, when recorded.
    pub producer: String,
    /// Default-domain opset version.
    pub opset: Option<i64>,
}

/// Reads and decodes an ONNX model file.
pub fn load(path: &Path) -> Result<ModelProto, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_bytes(path, &bytes)
}

/// Decodes an ONNX model from bytes (`path` is for messages). Protobuf decodes many byte
/// strings as *some* message, so a model without a graph is refused too.
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    let not = |message: String| OnnxError::NotOnnx {
        path: path.to_path_buf(),
        message,
    };
    let m = ModelProto::decode(bytes).map_err(|e| not(e.to_string()))?;
    match &m.graph {
        Some(g) if !g.node.is_empty() || !g.output.is_empty() => {}
        _ => return Err(not("no graph with nodes and outputs".into())),
    }
    if m.ir_version.unwrap_or(0) <= 0 {
        return Err(not("no ir_version".into()));
    }
    Ok(m)
}

/// Serialises a model.
pub fn encode(m: &ModelProto) -> Vec<u8> {
    m.encode_to_vec()
}

fn summarize_type(t: Option<&TypeProto>) -> (Option<ElemType>, Option<Vec<Dim>>) {
    let Some(type_proto::Value::TensorType(tt)) = t.and_then(|t| t.value.as_ref()) else {
        return (None, None);
    };
    let elem = tt.elem_type.map(ElemType::from_onnx);
    let shape = tt.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(DimValue::DimValue(v)) => Dim::Fixed(*v),
                Some(DimValue::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                _ => Dim::Unknown,
            })
            .collect()
    });
    (elem, shape)
}

fn summarize(v: &ValueInfoProto) -> TensorSummary {
    let (elem, shape) = summarize_type(v.r#type.as_ref());
    TensorSummary {
        name: v.name.clone().unwrap_or_default(),
        elem,
        shape,
        op: None,
    }
}

/// Summarises a model's inputs, outputs and capturable intermediate tensors.
pub fn summary(m: &ModelProto) -> ModelSummary {
    // Borrowed, not cloned: the graph holds the weights (a 180 MB model took 84 ms to copy).
    let empty = crate::onnx::GraphProto::default();
    let g = m.graph.as_ref().unwrap_or(&empty);
    let inits: std::collections::HashSet<&str> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let inputs = g
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_deref().unwrap_or("")))
        .map(summarize)
        .collect();
    let outputs: Vec<TensorSummary> = g.output.iter().map(summarize).collect();
    let out_names: std::collections::HashSet<&str> =
        outputs.iter().map(|o| o.name.as_str()).collect();
    let infos: std::collections::HashMap<&str, &ValueInfoProto> = g
        .value_info
        .iter()
        .filter_map(|v| v.name.as_deref().map(|n| (n, v)))
        .collect();
    let mut intermediates = Vec::new();
    for n in &g.node {
        for o in &n.output {
            if o.is_empty() || out_names.contains(o.as_str()) {
                continue;
            }
            let mut s = match infos.get(o.as_str()) {
                Some(v) => summarize(v),
                None => TensorSummary {
                    name: o.clone(),
                    elem: None,
                    shape: None,
                    op: None,
                },
            };
            s.op = n.op_type.clone();
            intermediates.push(s);
        }
    }
    let opset = m
        .opset_import
        .iter()
        .find(|o| o.domain.as_deref().unwrap_or("").is_empty())
        .and_then(|o| o.version);
    ModelSummary {
        inputs,
        outputs,
        intermediates,
        producer: format!(
            "{} {}",
            m.producer_name.clone().unwrap_or_default(),
            m.producer_version.clone().unwrap_or_default()
        )
        .trim()
        .to_string(),
        opset,
    }
}

/// Number of scalar parameters: the elements of every initializer (weights and constants).
pub fn parameter_count(m: &ModelProto) -> u64 {
    m.graph.as_ref().map_or(0, |g| {
        g.initializer
            .iter()
            .map(|t| t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>())
            .sum()
    })
}
