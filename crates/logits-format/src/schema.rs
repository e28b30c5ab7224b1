//! The Arrow schema of a shard, derived from the manifest alone: given a manifest, exactly one
//! schema is valid for its shards. Column names and types are specified in `schemas/FORMAT.md`.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::manifest::{
    DType, FeatureEncoding, FeatureSpec, Granularity, IdEncoding, Manifest, TargetSpec,
    ValueEncoding,
};

/// Stable row id, position in the corpus.
pub const ROW_ID: &str = "row_id";
/// Optional user-supplied id.
pub const USER_ID: &str = "user_id";
/// Optional sha256 of the row's stored inputs.
pub const INPUT_HASH: &str = "input_hash";
/// Class label.
pub const LABEL: &str = "label";
/// Top-k ids, sorted by descending logit, ties to the lower id.
pub const TOPK_IDS: &str = "topk_ids";
/// Top-k values in the manifest's value encoding.
pub const TOPK_VALUES: &str = "topk_values";
/// A row's context-coded top-k ids and int8 steps (`targets.coding`; replaces `topk_ids` and
/// `topk_values` in the file).
pub const TOPK_CODED: &str = "topk_coded";
/// ln of the exact tail mass at T=1 (int8 value encoding).
pub const TOPK_LOGTAIL: &str = "topk_logtail";
/// log-sum-exp of the raw logits over the whole output axis, at T=1.
pub const LOGZ: &str = "logz";
/// log-sum-exp of logits/T at each extra temperature of the manifest.
pub const LOGZ_TEMPS: &str = "logz_temps";
/// Sampled ids (unique, ascending).
pub const SAMPLE_IDS: &str = "sample_ids";
/// How many draws gave each sampled id.
pub const SAMPLE_COUNTS: &str = "sample_counts";
/// Prefix of feature columns.
pub const FEATURE_PREFIX: &str = "feat_";
/// Prefix of input columns.
pub const INPUT_PREFIX: &str = "in_";
/// Suffix of the scale column of an int8 feature.
pub const SCALE_SUFFIX: &str = "_scale";

/// Column names no input or feature may take.
pub const RESERVED_COLUMNS: [&str; 12] = [
    ROW_ID,
    TOPK_CODED,
    USER_ID,
    INPUT_HASH,
    LABEL,
    TOPK_IDS,
    TOPK_VALUES,
    TOPK_LOGTAIL,
    LOGZ,
    LOGZ_TEMPS,
    SAMPLE_IDS,
    SAMPLE_COUNTS,
];

/// A non-null list of `inner` (the child is non-null too).
pub fn list_of(inner: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(inner, false)))
}

/// Wraps a per-position type in one more list level when targets are per position.
fn per(granularity: Granularity, inner: DataType) -> DataType {
    match granularity {
        Granularity::Example => inner,
        Granularity::Position => list_of(inner),
    }
}

/// Arrow type of stored ids.
pub fn id_type(ids: IdEncoding) -> DataType {
    match ids {
        IdEncoding::U16 => DataType::UInt16,
        IdEncoding::U32 => DataType::UInt32,
    }
}

/// Arrow type of one stored top-k value.
pub fn value_type(values: ValueEncoding) -> DataType {
    match values {
        ValueEncoding::F32 => DataType::Float32,
        ValueEncoding::F16 => DataType::Float16,
        ValueEncoding::Bf16 => DataType::UInt16,
        ValueEncoding::Int8 => DataType::UInt8,
    }
}

/// Arrow type of one stored feature scalar.
pub fn feature_type(encoding: FeatureEncoding) -> DataType {
    match encoding {
        FeatureEncoding::F32 => DataType::Float32,
        FeatureEncoding::F16 => DataType::Float16,
        FeatureEncoding::Int8 => DataType::Int8,
    }
}

/// Arrow type used to store an input of element type `dtype`, if storable.
pub fn stored_input_type(dtype: DType) -> Option<DataType> {
    Some(match dtype {
        DType::Float32 => DataType::Float32,
        DType::Float64 => DataType::Float64,
        DType::Int64 => DataType::Int64,
        DType::Int32 => DataType::Int32,
        DType::Uint32 => DataType::UInt32,
        DType::Uint16 => DataType::UInt16,
        DType::Int8 => DataType::Int8,
        DType::Uint8 => DataType::UInt8,
        DType::Float16 | DType::Bfloat16 | DType::Int16 | DType::Bool | DType::String => {
            return None;
        }
    })
}

/// Column name of a feature's int8 scale.
pub fn scale_column(feature: &FeatureSpec) -> String {
    format!("{}{SCALE_SUFFIX}", feature.column)
}

/// The target columns of a spec, in schema order.
pub fn target_fields(t: &TargetSpec) -> Vec<Field> {
    let g = t.granularity;
    let mut fields = Vec::new();
    if t.topk.is_some() {
        fields.push(Field::new(TOPK_IDS, per(g, list_of(id_type(t.ids))), false));
        fields.push(Field::new(
            TOPK_VALUES,
            per(g, list_of(value_type(t.values))),
            false,
        ));
        if t.has_logtail() {
            fields.push(Field::new(TOPK_LOGTAIL, per(g, DataType::Float16), false));
        }
    }
    fields.push(Field::new(LOGZ, per(g, DataType::Float32), false));
    if !t.temperatures.is_empty() {
        let n = t.temperatures.len() as i32;
        let fsl =
            DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, false)), n);
        fields.push(Field::new(LOGZ_TEMPS, per(g, fsl), false));
    }
    if t.sampled.is_some() {
        fields.push(Field::new(
            SAMPLE_IDS,
            per(g, list_of(id_type(t.ids))),
            false,
        ));
        fields.push(Field::new(
            SAMPLE_COUNTS,
            per(g, list_of(DataType::UInt16)),
            false,
        ));
    }
    fields
}

/// The feature columns of a spec (value column, then scale column for int8).
pub fn feature_fields(f: &FeatureSpec) -> Vec<Field> {
    let g = f.granularity;
    let mut fields = vec![Field::new(
        &f.column,
        per(g, list_of(feature_type(f.encoding))),
        false,
    )];
    if f.encoding == FeatureEncoding::Int8 {
        fields.push(Field::new(
            scale_column(f),
            per(g, DataType::Float32),
            false,
        ));
    }
    fields
}

/// The one Arrow schema every shard of `manifest` has.
pub fn shard_schema(manifest: &Manifest) -> SchemaRef {
    let mut fields = vec![Field::new(ROW_ID, DataType::UInt64, false)];
    if manifest.row_keys.user_id {
        fields.push(Field::new(USER_ID, DataType::Utf8, true));
    }
    if manifest.row_keys.input_hash.is_some() {
        fields.push(Field::new(INPUT_HASH, DataType::FixedSizeBinary(32), false));
    }
    for input in &manifest.inputs {
        // check_spec guarantees the stored type is storable; Null keeps this total.
        let ty = stored_input_type(input.stored).unwrap_or(DataType::Null);
        fields.push(Field::new(&input.column, list_of(ty), false));
    }
    if manifest.labels.is_some() {
        fields.push(Field::new(LABEL, DataType::Int64, true));
    }
    if let Some(t) = &manifest.targets {
        fields.extend(target_fields(t));
    }
    for f in &manifest.features {
        fields.extend(feature_fields(f));
    }
    Arc::new(Schema::new(fields))
}

/// The Arrow schema of the shard files of `manifest`: [`shard_schema`], except that coded
/// top-k (`targets.coding`) stores one `topk_coded` Binary per row in place of `topk_ids` and
/// `topk_values` (readers decode it back, [`shard_schema`] is what they return).
pub fn file_schema(manifest: &Manifest) -> SchemaRef {
    let logical = shard_schema(manifest);
    if manifest.targets.as_ref().is_none_or(|t| t.coding.is_none()) {
        return logical;
    }
    let fields: Vec<Field> = logical
        .fields()
        .iter()
        .filter(|f| f.name() != TOPK_VALUES)
        .map(|f| {
            if f.name() == TOPK_IDS {
                Field::new(TOPK_CODED, DataType::Binary, false)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// The columns needed to decode targets (for projections).
pub fn target_columns(t: &TargetSpec) -> Vec<String> {
    target_fields(t).iter().map(|f| f.name().clone()).collect()
}

/// The columns needed to decode one feature (for projections).
pub fn feature_columns(f: &FeatureSpec) -> Vec<String> {
    feature_fields(f).iter().map(|f| f.name().clone()).collect()
}
