//! The manifest draft: what the dataset will say about itself, written from the plan before
//! the first shard, so a dataset is described by the same decisions that built it.

use logits_format::manifest::*;
use logits_format::writer;
use logits_onnx::model::{Dim as ODim, ElemType};

use super::BuildOptions;
use super::plan::{Plan, Source};
use crate::error::{Result, TeacherError};

/// The manifest's name for an ONNX element type.
pub(super) fn dtype_of(e: ElemType) -> Option<DType> {
    Some(match e {
        ElemType::Float32 => DType::Float32,
        ElemType::Float64 => DType::Float64,
        ElemType::Float16 => DType::Float16,
        ElemType::BFloat16 => DType::Bfloat16,
        ElemType::Int64 => DType::Int64,
        ElemType::Int32 => DType::Int32,
        ElemType::Int16 => DType::Int16,
        ElemType::Uint32 => DType::Uint32,
        ElemType::Uint16 => DType::Uint16,
        ElemType::Int8 => DType::Int8,
        ElemType::Uint8 => DType::Uint8,
        ElemType::Bool => DType::Bool,
        ElemType::String => DType::String,
        _ => return None,
    })
}

fn tensor_info(t: &logits_onnx::TensorSummary) -> TensorInfo {
    TensorInfo {
        name: t.name.clone(),
        dtype: t.elem.and_then(dtype_of).unwrap_or(DType::Float32),
        shape: t
            .shape
            .as_ref()
            .map(|s| {
                s.iter()
                    .map(|d| match d {
                        ODim::Fixed(n) => Dim::Fixed(*n as u64),
                        ODim::Symbolic(s) => Dim::Named(s.clone()),
                        ODim::Unknown => Dim::Named("?".into()),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The draft manifest of a build: everything but the shards and totals.
pub(super) fn draft(o: &BuildOptions, plan: &Plan, corpus: &Source) -> Result<Manifest> {
    if o.coded && !plan.per_position {
        // Each row is then its own coded value of a few entries, whose header and coder flush
        // outweigh what the context saves (BENCHMARKS.md, format benchmark case (a)).
        return Err(TeacherError::Options(
            "--coded context-codes per-token targets; this teacher gives one distribution per \
             example, where plain int8 is smaller (2.5 against 3.5 bytes per entry at k = 8): \
             drop --coded"
                .into(),
        ));
    }
    let teacher = &plan.teacher;
    let text = plan.feed.text.as_ref();
    let mut input_specs = Vec::new();
    if let Some(tp) = text {
        input_specs.push(InputSpec {
            name: tp.ids.clone(),
            column: format!("in_{}", sanitize_column(&tp.ids)),
            dtype: if tp.int32.contains(&tp.ids) {
                DType::Int32
            } else {
                DType::Int64
            },
            stored: DType::Uint32,
            shape: vec![Dim::Named("sequence".into())],
        });
    }
    for ip in plan.feed.inputs.iter().filter(|i| i.derived.is_none()) {
        let info = teacher
            .input(&ip.name)
            .map(tensor_info)
            .unwrap_or(TensorInfo {
                name: ip.name.clone(),
                dtype: DType::Float32,
                shape: vec![],
            });
        input_specs.push(InputSpec {
            name: ip.name.clone(),
            column: format!("in_{}", sanitize_column(&ip.name)),
            dtype: dtype_of(ip.elem).unwrap_or(DType::Float32),
            stored: ip.stored,
            shape: info.shape.into_iter().skip(1).collect(),
        });
    }
    let feature_specs = plan
        .features
        .iter()
        .map(|f| FeatureSpec {
            name: f.req.name.clone(),
            tensor: f.req.tensor.clone(),
            column: format!("feat_{}", f.req.name),
            granularity: if f.per_position {
                Granularity::Position
            } else {
                Granularity::Example
            },
            shape: f.shape.clone(),
            encoding: f.req.encoding,
            pooling: f.req.pooling,
        })
        .collect();
    let (mut sources, fingerprint) = corpus.fingerprint()?;
    for (s, name) in sources.iter_mut().zip(&o.corpus_names) {
        s.path = name.clone();
    }
    let axis = plan.axis as u64;
    let mut outputs: Vec<TensorInfo> = teacher.summary.outputs.iter().map(tensor_info).collect();
    if !outputs.iter().any(|t| t.name == plan.target)
        && let Some(t) = plan.target_summary()
    {
        // An internal tensor chosen as the target is recorded with the outputs it was read
        // beside, so the manifest names every tensor the targets came from.
        outputs.push(tensor_info(t));
    }
    Ok(Manifest {
        format: FORMAT_NAME.into(),
        format_version: Version::current().to_string(),
        dataset_id: String::new(),
        tool: Tool {
            runtime: None,
            name: "logits-build".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        created: writer::now_rfc3339(),
        teacher: Teacher {
            file: o
                .model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: teacher.sha256.clone(),
            bytes: teacher.bytes,
            inputs: teacher.summary.inputs.iter().map(tensor_info).collect(),
            outputs,
        },
        row_keys: RowKeys {
            user_id: o.columns.id.is_some(),
            input_hash: Some("sha256-v1".into()),
        },
        targets: Some(TargetSpec {
            output: plan.target.clone(),
            granularity: if plan.per_position {
                Granularity::Position
            } else {
                Granularity::Example
            },
            axis_size: axis,
            output_is_probability: plan.kind != logits_onnx::surgery::OutputKind::Logits,
            ids: IdEncoding::for_axis(axis),
            values: o.values,
            topk: Some(match plan.adaptive {
                None => TopK::Fixed { k: plan.k as u32 },
                Some((min_k, mass)) => TopK::Adaptive {
                    min_k: min_k as u32,
                    max_k: plan.k as u32,
                    mass,
                },
            }),
            temperatures: plan.temps.clone(),
            sampled: plan.sample.clone(),
            // Half-precision values carry the exact tail as int8's do (format 1.1).
            exact_tail: matches!(o.values, ValueEncoding::F16 | ValueEncoding::Bf16),
            // The input token at each position is the id models' best context (BENCHMARKS.md).
            coding: o.coded.then(|| Coding {
                scheme: CodingScheme::CtxV1,
                context: text
                    .filter(|_| plan.per_position && plan.store_inputs)
                    .map(|tp| format!("in_{}", sanitize_column(&tp.ids))),
            }),
        }),
        features: feature_specs,
        inputs: if plan.store_inputs {
            input_specs
        } else {
            vec![]
        },
        labels: o
            .columns
            .label
            .as_ref()
            .filter(|_| text.is_none() && !plan.per_position)
            .map(|_| LabelSpec {
                column: "label".into(),
                kind: LabelKind::Class,
                num_classes: axis,
                names: vec![],
            }),
        corpus: Corpus {
            sources,
            fingerprint,
            rows: corpus.rows(),
            split: o.split.clone(),
            holdout_from: o.holdout_from,
            options: match (corpus, &o.text) {
                (Source::Tensor(c), _) => {
                    let mut v = serde_json::json!({
                        "kind": "parquet-tensors",
                        "inputs": c.mapping,
                        "label": o.columns.label,
                        "id": o.columns.id,
                    });
                    if !c.declared.is_empty() {
                        v["shapes"] = serde_json::json!(c.declared);
                    }
                    let derived: serde_json::Map<String, serde_json::Value> = plan
                        .feed
                        .inputs
                        .iter()
                        .filter_map(|i| Some((i.name.clone(), i.derived?.describe().into())))
                        .collect();
                    if !derived.is_empty() {
                        v["derived"] = serde_json::Value::Object(derived);
                    }
                    v
                }
                (Source::Text(_), Some(t)) => {
                    let mut v = serde_json::json!({
                        "kind": "text",
                        "field": t.field,
                        "window": t.window,
                        "stride": t.stride,
                        "special_tokens": "as the tokenizer's post-processor adds them",
                    });
                    if let Some(id) = &o.columns.id {
                        v["id"] = serde_json::json!(id);
                    }
                    v
                }
                (Source::Text(_), None) => serde_json::Value::Null,
            },
        },
        tokenizer: match corpus {
            Source::Text(c) => Some(c.tokenizer_entry()?),
            Source::Tensor(_) => None,
        },
        license: License {
            terms: o.license.clone(),
            notes: None,
        },
        notes: o.notes.clone(),
        shards: vec![],
        totals: Totals::default(),
        build: serde_json::json!({
            "rows_per_shard": o.rows_per_shard,
            // Shards restart at the held-out boundary (an interrupted build planned otherwise
            // is not resumed by this one: its draft differs here).
            "shards_split_at_holdout": true,
            "batch_size": o.batch_size,
            "skip_non_finite": o.skip_non_finite,
            "zstd_level": o.write.zstd_level,
            "row_group_rows": o.write.row_group_rows,
            "output_kind": plan.kind_from,
        }),
    })
}
