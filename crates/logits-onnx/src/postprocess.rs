//! The build's post-processing appended to a copy of a teacher graph (`--postprocess graph`):
//! top-k, logZ at every temperature and the probability guard's row sum and minimum computed
//! inside the runtime, so only `[.., k]` and `[.., |T|]` leave it instead of every logit.
//!
//! logZ needs double precision (a float32 reduction was 1.2e-6 relative off on a real LM), and
//! a double copy of every logit is twice the logits' own size, once more per temperature. So
//! the class axis is cut into chunks: each chunk is sliced, widened, reduced and gathered into
//! one small `[.., |T| + 2]` node, and the chunks' results are combined in double. ONNX
//! Runtime's default execution order (a depth-first walk back from the outputs) then finishes
//! one chunk before it starts the next, so only one chunk's double copy is alive at a time
//! (measured in Python on ORT 1.31.1, 16 × 128 positions × 128,256 classes: +3,179 MiB of
//! peak memory over the logits in one piece, +328 MiB in 16 chunks, same speed).

use crate::model::OnnxError;
use crate::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, attribute_proto,
};
use crate::surgery::{declared_opset, elem_types, expose, tensor_type};

/// Names of the outputs [`append_postprocess`] adds.
pub mod post {
    /// The top-k logits, `[batch, (positions,) k]`, in the target's element type (float32
    /// for bfloat16).
    pub const VALUES: &str = "logits.post.topk_values";
    /// Their class ids, int64, same shape.
    pub const INDICES: &str = "logits.post.topk_indices";
    /// logZ at T = 1 then at each extra temperature, double, `[batch, (positions,) |T|]`.
    pub const LOGZ: &str = "logits.post.logz";
    /// Σ and min of each row, double, `[batch, (positions,) 2]`: what tells probabilities
    /// from logits when the graph shows no softmax (rows in [0, 1] summing to 1).
    pub const SUM_MIN: &str = "logits.post.sum_min";
}

/// Classes per chunk of the class axis (64 KiB of doubles a row): 32,000 classes make 4
/// chunks, 128,256 make 16.
const CHUNK: usize = 8_192;
/// At most this many chunks, so a huge class axis does not make a huge graph.
const MAX_CHUNKS: usize = 64;

const FLOAT32: i32 = 1;
const INT64: i32 = 7;
const FLOAT16: i32 = 10;
const FLOAT64: i32 = 11;
const BFLOAT16: i32 = 16;

/// Returns a copy of `m` that also computes, inside the graph, what the build keeps of the
/// target tensor `target` (its class axis last, `classes` entries when known): `TopK` (k
/// largest, sorted, ties to the lower index as ONNX Runtime orders them) and, in double
/// precision, log-sum-exp of target ÷ T for T = 1 and each of `temps` and the row sum and
/// minimum, as the outputs named in [`post`]. Needs opset 11 or newer (TopK with k as an
/// input); reduction axes follow the model's opset (inputs from 13 or 18, attributes before).
/// A float16 or bfloat16 target is read through a copy in its own type so the appended nodes
/// see its rounded values; bfloat16 values leave as float32.
pub fn append_postprocess(
    m: &ModelProto,
    target: &str,
    k: usize,
    temps: &[f64],
    classes: Option<usize>,
    model: &str,
) -> Result<ModelProto, OnnxError> {
    let opset = declared_opset(m).unwrap_or(1);
    if opset < 11 {
        return Err(OnnxError::Unsupported {
            model: model.to_string(),
            message: format!(
                "opset {opset}: in-graph top-k needs opset 11 or newer (TopK with k as an input)"
            ),
        });
    }
    let mut out = expose(m, &[target.to_string()], model)?;
    let target_type = elem_types(&out).get(target).copied().unwrap_or(FLOAT32);
    let g = out.graph.get_or_insert_with(Default::default);
    // The target leaves the runtime only through what is computed from it: as a graph output
    // (even of the original model) every run would copy all of it out.
    g.output.retain(|o| o.name.as_deref() != Some(target));
    // Half-precision targets (FLOAT16, BFLOAT16) are read through a one-input Concat, a copy
    // in the target's own type. Without it ONNX Runtime's CPU provider, which computes a
    // float16 Gemm in float32 between Casts it inserts, drops the Cast to float16 before our
    // Cast to double as a redundant pair, so TopK and logZ saw the unrounded values (logZ
    // 7e-5 relative off on fixtures/zoo/half.onnx); through the copy they see exactly what
    // the model outputs, as the host path does. TopK takes no bfloat16 before opset 24, so a
    // bfloat16 copy is widened to float32 (exactly) and the values leave as float32.
    let (src, values_type) = if target_type == FLOAT16 || target_type == BFLOAT16 {
        let copy = "logits.post.rounded".to_string();
        g.node
            .push(node("Concat", &[target], &copy, vec![int_attr("axis", -1)]));
        if target_type == BFLOAT16 {
            let wide = "logits.post.f32".to_string();
            g.node.push(node(
                "Cast",
                &[&copy],
                &wide,
                vec![int_attr("to", FLOAT32 as i64)],
            ));
            (wide, FLOAT32)
        } else {
            (copy, target_type)
        }
    } else {
        (target.to_string(), target_type)
    };
    g.initializer.push(ints("logits.post.k", &[k as i64]));
    g.node.push(NodeProto {
        output: vec![post::VALUES.into(), post::INDICES.into()],
        ..node(
            "TopK",
            &[&src, "logits.post.k"],
            post::VALUES,
            vec![
                int_attr("axis", -1),
                int_attr("largest", 1),
                int_attr("sorted", 1),
            ],
        )
    });
    append_row_stats(g, &src, classes, temps, opset);
    let typed = |name: &str, elem: i32| ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(tensor_type(Some(elem))),
        ..Default::default()
    };
    g.output.push(typed(post::VALUES, values_type));
    g.output.push(typed(post::INDICES, INT64));
    g.output.push(typed(post::LOGZ, FLOAT64));
    g.output.push(typed(post::SUM_MIN, FLOAT64));
    Ok(out)
}

/// Appends [`post::LOGZ`] and [`post::SUM_MIN`] of `src` (class axis last), chunk by chunk
/// of the class axis (see the module docs): per chunk, Slice → Cast to double → (Div by T)
/// → ReduceLogSumExp per temperature, ReduceSum, ReduceMin → one `[.., |T| + 2]` Concat; then
/// the chunks side by side, reshaped to `[.., chunks, |T| + 2]` and reduced over the chunks
/// (log-sum-exp of the partial logZ, sum of the sums, minimum of the minima).
fn append_row_stats(
    g: &mut GraphProto,
    src: &str,
    classes: Option<usize>,
    temps: &[f64],
    opset: i64,
) {
    let n_t = 1 + temps.len();
    let width = n_t + 2;
    let chunks = classes.map_or(1, |c| c.div_ceil(CHUNK).clamp(1, MAX_CHUNKS));
    let step = classes.map_or(0, |c| c.div_ceil(chunks));
    g.initializer.push(ints("logits.post.last", &[-1]));
    if chunks > 1 && opset >= 13 {
        // Only where a reduction over the chunks takes its axes as an input: ONNX Runtime
        // warns about initializers nothing uses.
        g.initializer.push(ints("logits.post.chunk_axis", &[-2]));
    }
    for (j, &t) in temps.iter().enumerate() {
        g.initializer.push(TensorProto {
            name: Some(format!("logits.post.t{}", j + 1)),
            dims: vec![],
            data_type: Some(FLOAT64),
            raw_data: Some(t.to_le_bytes().to_vec()),
            ..Default::default()
        });
    }
    let mut stats = Vec::new();
    for c in 0..chunks {
        let part = if chunks == 1 {
            src.to_string()
        } else {
            let (start, end) = (
                format!("logits.post.c{c}.start"),
                format!("logits.post.c{c}.end"),
            );
            let hi = classes.map_or(0, |n| ((c + 1) * step).min(n));
            g.initializer.push(ints(&start, &[(c * step) as i64]));
            g.initializer.push(ints(&end, &[hi as i64]));
            let part = format!("logits.post.c{c}");
            g.node.push(node(
                "Slice",
                &[src, &start, &end, "logits.post.last"],
                &part,
                vec![],
            ));
            part
        };
        let wide = format!("logits.post.c{c}.f64");
        g.node.push(node(
            "Cast",
            &[&part],
            &wide,
            vec![int_attr("to", FLOAT64 as i64)],
        ));
        let mut parts = Vec::new();
        for j in 0..n_t {
            let x = if j == 0 {
                wide.clone()
            } else {
                let d = format!("logits.post.c{c}.div{j}");
                g.node.push(node(
                    "Div",
                    &[&wide, &format!("logits.post.t{j}")],
                    &d,
                    vec![],
                ));
                d
            };
            let lse = format!("logits.post.c{c}.lse{j}");
            g.node
                .push(reduce("ReduceLogSumExp", &x, &lse, -1, true, opset));
            parts.push(lse);
        }
        for op in ["ReduceSum", "ReduceMin"] {
            let r = format!("logits.post.c{c}.{op}");
            g.node.push(reduce(op, &wide, &r, -1, true, opset));
            parts.push(r);
        }
        let s = format!("logits.post.c{c}.stats");
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        g.node
            .push(node("Concat", &refs, &s, vec![int_attr("axis", -1)]));
        stats.push(s);
    }
    // One row of `width` statistics per chunk, in order: [lse at each T, sum, min].
    let (lse, sum, min) = if chunks == 1 {
        let s = stats[0].clone();
        (s.clone(), s.clone(), s)
    } else {
        let refs: Vec<&str> = stats.iter().map(String::as_str).collect();
        g.node.push(node(
            "Concat",
            &refs,
            "logits.post.stats",
            vec![int_attr("axis", -1)],
        ));
        // [.., chunks × width] → [.., chunks, width]: the leading dimensions from the shape
        // of one chunk's statistics (any rank), then chunks and width.
        g.initializer.push(ints("logits.post.zero", &[0]));
        g.initializer
            .push(ints("logits.post.tail", &[chunks as i64, width as i64]));
        g.node
            .push(node("Shape", &[&stats[0]], "logits.post.shape", vec![]));
        g.node.push(node(
            "Slice",
            &["logits.post.shape", "logits.post.zero", "logits.post.last"],
            "logits.post.lead",
            vec![],
        ));
        g.node.push(node(
            "Concat",
            &["logits.post.lead", "logits.post.tail"],
            "logits.post.shape3",
            vec![int_attr("axis", 0)],
        ));
        g.node.push(node(
            "Reshape",
            &["logits.post.stats", "logits.post.shape3"],
            "logits.post.stats3",
            vec![],
        ));
        let over_chunks = |g: &mut GraphProto, op: &str, out: &str| {
            g.node
                .push(reduce(op, "logits.post.stats3", out, -2, false, opset));
            out.to_string()
        };
        (
            over_chunks(g, "ReduceLogSumExp", "logits.post.all_lse"),
            over_chunks(g, "ReduceSum", "logits.post.all_sum"),
            over_chunks(g, "ReduceMin", "logits.post.all_min"),
        )
    };
    let columns = |g: &mut GraphProto, from: &str, lo: usize, hi: usize, out: &str| {
        let (a, b) = (format!("{out}.lo"), format!("{out}.hi"));
        g.initializer.push(ints(&a, &[lo as i64]));
        g.initializer.push(ints(&b, &[hi as i64]));
        g.node.push(node(
            "Slice",
            &[from, &a, &b, "logits.post.last"],
            out,
            vec![],
        ));
    };
    columns(g, &lse, 0, n_t, post::LOGZ);
    columns(g, &sum, n_t, n_t + 1, "logits.post.sum");
    columns(g, &min, n_t + 1, n_t + 2, "logits.post.min");
    g.node.push(node(
        "Concat",
        &["logits.post.sum", "logits.post.min"],
        post::SUM_MIN,
        vec![int_attr("axis", -1)],
    ));
}

/// A node named after its (first) output.
fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("logits.post.{output}")),
        op_type: Some(op.to_string()),
        attribute: attrs,
        ..Default::default()
    }
}

/// A reduction of `input` over `axis`, the axes given as the model's opset wants them: an
/// input for ReduceSum from opset 13 and for the others from 18, an attribute before.
fn reduce(op: &str, input: &str, output: &str, axis: i64, keep: bool, opset: i64) -> NodeProto {
    let axes_input = opset >= 18 || (op == "ReduceSum" && opset >= 13);
    let axes = if axis == -1 {
        "logits.post.last"
    } else {
        "logits.post.chunk_axis"
    };
    let mut attrs = vec![int_attr("keepdims", keep as i64)];
    let inputs: Vec<&str> = if axes_input {
        vec![input, axes]
    } else {
        attrs.push(AttributeProto {
            name: Some("axes".into()),
            ints: vec![axis],
            r#type: Some(attribute_proto::AttributeType::Ints as i32),
            ..Default::default()
        });
        vec![input]
    };
    node(op, &inputs, output, attrs)
}

/// An integer attribute.
fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        ..Default::default()
    }
}

/// A 1-D int64 initializer.
fn ints(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: vec![v.len() as i64],
        data_type: Some(INT64),
        raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    }
}
