//! Conversion between [`RowBatch`] (what callers hold) and Arrow record batches (what shards
//! hold), with the storage encodings of the manifest applied, and every row checked against the
//! contract on the way in: a row that breaks it is refused with its row id.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int8Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, FixedSizeBinaryArray, FixedSizeListArray, Float16Array, Float32Array,
    Float64Array, Int8Array, Int32Array, Int64Array, ListArray, PrimitiveArray, RecordBatch,
    StringArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, FieldRef, SchemaRef};
use half::{bf16, f16};

use crate::error::{FormatError, Result};
use crate::manifest::{
    Dim, FeatureEncoding, FeatureSpec, Granularity, IdEncoding, InputSpec, Manifest, TargetSpec,
    TopK, ValueEncoding,
};
use crate::rows::{
    FeatureValues, InputValues, RowBatch, SampledEntries, Targets, TensorValues, TopKEntries,
};
use crate::schema;

fn bad_batch(column: &str, message: impl Into<String>) -> FormatError {
    FormatError::InvalidBatch {
        column: column.to_string(),
        message: message.into(),
    }
}

fn bad_row(row_id: u64, column: &str, message: impl Into<String>) -> FormatError {
    FormatError::InvalidRow {
        row_id,
        column: column.to_string(),
        message: message.into(),
    }
}

fn child_field(dt: &DataType) -> FieldRef {
    Arc::new(Field::new_list_field(dt.clone(), false))
}

/// Builds a non-null list array over `child` with `offsets` (which must start at 0).
pub(crate) fn list_array(column: &str, child: ArrayRef, offsets: &[usize]) -> Result<ArrayRef> {
    if offsets.first() != Some(&0) || offsets.last() != Some(&child.len()) {
        return Err(bad_batch(
            column,
            match (offsets.first(), offsets.last()) {
                (Some(a), Some(b)) => {
                    format!("offsets must run from 0 to {} (got {a}..{b})", child.len())
                }
                _ => format!("offsets must run from 0 to {} (got none)", child.len()),
            },
        ));
    }
    if offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(bad_batch(column, "offsets must not decrease"));
    }
    let last = *offsets.last().unwrap_or(&0);
    if last > i32::MAX as usize {
        return Err(bad_batch(
            column,
            "more than 2^31 values in one batch; write smaller batches",
        ));
    }
    let offs: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
    let field = child_field(child.data_type());
    let arr = ListArray::try_new(
        field,
        OffsetBuffer::new(ScalarBuffer::from(offs)),
        child,
        None,
    )
    .map_err(|e| bad_batch(column, e.to_string()))?;
    Ok(Arc::new(arr))
}

/// Wraps a per-position array in the row level when targets are per position.
pub(crate) fn per_row(
    column: &str,
    g: Granularity,
    arr: ArrayRef,
    row_positions: &[usize],
) -> Result<ArrayRef> {
    match g {
        Granularity::Position => list_array(column, arr, row_positions),
        Granularity::Example => {
            if row_positions.iter().enumerate().any(|(i, &p)| p != i) {
                return Err(bad_batch(
                    column,
                    "per-example data must have exactly one position per row",
                ));
            }
            Ok(arr)
        }
    }
}

fn check_offsets(column: &str, offsets: &[usize], parts: usize, total: usize) -> Result<()> {
    if offsets.len() != parts + 1
        || offsets.first() != Some(&0)
        || offsets.last() != Some(&total)
        || offsets.windows(2).any(|w| w[0] > w[1])
    {
        return Err(bad_batch(
            column,
            format!(
                "expected {} non-decreasing offsets from 0 to {total}",
                parts + 1
            ),
        ));
    }
    Ok(())
}

/// Finds the row a position belongs to (for error messages).
fn row_of(row_positions: &[usize], row_ids: &[u64], p: usize) -> u64 {
    let r = row_positions.partition_point(|&o| o <= p).saturating_sub(1);
    row_ids.get(r).copied().unwrap_or(0)
}

/// Encodes a batch into the Arrow record batch of `schema` (the manifest's shard schema).
pub fn encode(manifest: &Manifest, schema: &SchemaRef, b: &RowBatch) -> Result<RecordBatch> {
    let rows = b.row_ids.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    columns.push(Arc::new(UInt64Array::from(b.row_ids.clone())));
    if b.row_ids.windows(2).any(|w| w[0] >= w[1]) {
        let w = b
            .row_ids
            .windows(2)
            .find(|w| w[0] >= w[1])
            .unwrap_or(&[0, 0]);
        return Err(bad_row(
            w[1],
            schema::ROW_ID,
            format!("row ids must increase (after {})", w[0]),
        ));
    }
    if manifest.row_keys.user_id {
        let ids = b
            .user_ids
            .as_ref()
            .ok_or_else(|| bad_batch(schema::USER_ID, "the manifest declares user ids"))?;
        if ids.len() != rows {
            return Err(bad_batch(
                schema::USER_ID,
                format!("{} values for {rows} rows", ids.len()),
            ));
        }
        columns.push(Arc::new(StringArray::from(ids.clone())));
    }
    if manifest.row_keys.input_hash.is_some() {
        let hashes = b
            .input_hashes
            .as_ref()
            .ok_or_else(|| bad_batch(schema::INPUT_HASH, "the manifest declares input hashes"))?;
        if hashes.len() != rows {
            return Err(bad_batch(
                schema::INPUT_HASH,
                format!("{} values for {rows} rows", hashes.len()),
            ));
        }
        let arr = FixedSizeBinaryArray::try_from_iter(hashes.iter())
            .map_err(|e| bad_batch(schema::INPUT_HASH, e.to_string()))?;
        columns.push(Arc::new(arr));
    }
    for spec in &manifest.inputs {
        let v = b
            .inputs
            .get(&spec.name)
            .ok_or_else(|| bad_batch(&spec.column, format!("input {:?} is missing", spec.name)))?;
        columns.push(encode_input(spec, v, &b.row_ids)?);
    }
    if let Some(l) = &manifest.labels {
        let labels = b
            .labels
            .as_ref()
            .ok_or_else(|| bad_batch(schema::LABEL, "the manifest declares labels"))?;
        if labels.len() != rows {
            return Err(bad_batch(
                schema::LABEL,
                format!("{} labels for {rows} rows", labels.len()),
            ));
        }
        check_labels(l.num_classes, labels, &b.row_ids)?;
        columns.push(Arc::new(Int64Array::from(labels.clone())));
    }
    if let Some(spec) = &manifest.targets {
        let t = b
            .targets
            .as_ref()
            .ok_or_else(|| bad_batch("targets", "the manifest declares targets"))?;
        columns.extend(encode_targets(spec, t, &b.row_ids)?);
    }
    for spec in &manifest.features {
        let f = b.features.get(&spec.name).ok_or_else(|| {
            bad_batch(&spec.column, format!("feature {:?} is missing", spec.name))
        })?;
        columns.extend(encode_feature(spec, f, &b.row_ids)?);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| bad_batch("batch", e.to_string()))
}

fn encode_input(spec: &InputSpec, v: &InputValues, row_ids: &[u64]) -> Result<ArrayRef> {
    let col = &spec.column;
    check_offsets(col, &v.offsets, row_ids.len(), v.values.len())?;
    if v.values.dtype() != spec.stored {
        return Err(bad_batch(
            col,
            format!(
                "values are {} but the manifest stores {}",
                v.values.dtype().name(),
                spec.stored.name()
            ),
        ));
    }
    check_input_shape(spec, v, row_ids)?;
    let child: ArrayRef = match &v.values {
        TensorValues::F32(x) => Arc::new(Float32Array::from(x.clone())),
        TensorValues::F64(x) => Arc::new(Float64Array::from(x.clone())),
        TensorValues::I64(x) => Arc::new(Int64Array::from(x.clone())),
        TensorValues::I32(x) => Arc::new(Int32Array::from(x.clone())),
        TensorValues::U32(x) => Arc::new(UInt32Array::from(x.clone())),
        TensorValues::U16(x) => Arc::new(UInt16Array::from(x.clone())),
        TensorValues::I8(x) => Arc::new(Int8Array::from(x.clone())),
        TensorValues::U8(x) => Arc::new(UInt8Array::from(x.clone())),
    };
    list_array(col, child, &v.offsets)
}

/// Checks that every row of an input holds as many values as its declared shape.
fn check_input_shape(spec: &InputSpec, v: &InputValues, row_ids: &[u64]) -> Result<()> {
    let fixed: u64 = spec
        .shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n,
            Dim::Named(_) => 1,
        })
        .product();
    let variable = spec.shape.iter().any(|d| matches!(d, Dim::Named(_)));
    for (r, w) in v.offsets.windows(2).enumerate() {
        let n = w[1].saturating_sub(w[0]) as u64;
        let ok = if variable {
            fixed > 0 && n.is_multiple_of(fixed)
        } else {
            n == fixed
        };
        if !ok {
            let shape: Vec<String> = spec.shape.iter().map(|d| d.to_string()).collect();
            return Err(bad_row(
                row_ids.get(r).copied().unwrap_or(0),
                &spec.name,
                format!(
                    "{n} values do not fit the declared shape [{}]",
                    shape.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that every label lies in `0..classes`, naming the row of the first that does not.
fn check_labels(classes: u64, labels: &[Option<i64>], row_ids: &[u64]) -> Result<()> {
    for (i, lab) in labels.iter().enumerate() {
        if let Some(c) = lab
            && (*c < 0 || *c as u64 >= classes)
        {
            return Err(bad_row(
                row_ids.get(i).copied().unwrap_or(0),
                schema::LABEL,
                format!("label {c} outside 0..{classes}"),
            ));
        }
    }
    Ok(())
}

/// Checks decoded rows against the contract, as every reader does before handing rows on
/// (rows may come shuffled; unique ids are the shard reader's check): labels within the class
/// axis, inputs of their declared shape and finite, targets as [`check_targets`] says (lossy encodings with their rounding allowed),
/// features finite. The error names the row and the column.
pub fn check_rows(manifest: &Manifest, b: &RowBatch) -> Result<()> {
    if let (Some(spec), Some(labels)) = (&manifest.labels, &b.labels) {
        check_labels(spec.num_classes, labels, &b.row_ids)?;
    }
    for spec in &manifest.inputs {
        let Some(v) = b.inputs.get(&spec.name) else {
            continue;
        };
        check_offsets(&spec.column, &v.offsets, b.row_ids.len(), v.values.len())?;
        check_input_shape(spec, v, &b.row_ids)?;
        let bad = match &v.values {
            TensorValues::F32(x) => x.iter().position(|z| !z.is_finite()),
            TensorValues::F64(x) => x.iter().position(|z| !z.is_finite()),
            _ => None,
        };
        if let Some(i) = bad {
            let r = v.offsets.partition_point(|&o| o <= i).saturating_sub(1);
            return Err(bad_row(
                b.row_ids.get(r).copied().unwrap_or(0),
                &spec.column,
                "a stored input value is NaN or infinite",
            ));
        }
        // Token ids of a text dataset must be ids of its tokenizer.
        if let Some(tok) = &manifest.tokenizer {
            let vocab = tok.vocab_size;
            let outside = |t: i64| t < 0 || t as u64 >= vocab;
            let over = match &v.values {
                TensorValues::U32(x) => x
                    .iter()
                    .enumerate()
                    .find(|(_, t)| outside(**t as i64))
                    .map(|(i, &t)| (i, t as i64)),
                TensorValues::I64(x) => x
                    .iter()
                    .enumerate()
                    .find(|(_, t)| outside(**t))
                    .map(|(i, &t)| (i, t)),
                TensorValues::I32(x) => x
                    .iter()
                    .enumerate()
                    .find(|(_, t)| outside(**t as i64))
                    .map(|(i, &t)| (i, t as i64)),
                _ => None,
            };
            if let Some((i, t)) = over {
                let r = v.offsets.partition_point(|&o| o <= i).saturating_sub(1);
                return Err(bad_row(
                    b.row_ids.get(r).copied().unwrap_or(0),
                    &spec.column,
                    format!("token id {t} is outside the tokenizer's vocabulary (0..{vocab})"),
                ));
            }
        }
    }
    if let (Some(spec), Some(t)) = (&manifest.targets, &b.targets) {
        check_targets(spec, t, &b.row_ids, spec.values == ValueEncoding::F32)?;
    }
    for spec in &manifest.features {
        let Some(f) = b.features.get(&spec.name) else {
            continue;
        };
        if let Some(i) = f.values.iter().position(|z| !z.is_finite()) {
            let p = i / spec.width().max(1);
            return Err(bad_row(
                row_of(&f.row_positions, &b.row_ids, p),
                &spec.column,
                "a feature value is NaN or infinite",
            ));
        }
    }
    Ok(())
}

pub(crate) fn ids_array(enc: IdEncoding, ids: &[u32]) -> ArrayRef {
    match enc {
        // check_targets guarantees ids < axis_size <= 65,536 for u16.
        IdEncoding::U16 => Arc::new(UInt16Array::from_iter_values(ids.iter().map(|&i| i as u16))),
        IdEncoding::U32 => Arc::new(UInt32Array::from(ids.to_vec())),
    }
}

/// Checks that position `p`'s logZ (and logZ at each extra temperature) agrees with its kept
/// logits: not below their log-sum-exp (the kept mass cannot exceed 1) and not above the
/// largest plus ln(axis) (the tail cannot hold more than axis entries as large as the top).
fn check_logz_consistent(
    spec: &TargetSpec,
    t: &Targets,
    p: usize,
    kept: &[f32],
    tol: f32,
) -> std::result::Result<(), String> {
    let Some(&top) = kept.first() else {
        return Ok(());
    };
    let ln_axis = (spec.axis_size.max(1) as f64).ln();
    let temps = std::iter::once((1.0f64, t.logz[p])).chain(
        spec.temperatures
            .iter()
            .enumerate()
            .map(|(j, &temp)| (temp, t.logz_temps[p * spec.temperatures.len() + j])),
    );
    for (temp, z) in temps {
        let z = z as f64;
        let m = top as f64 / temp;
        let lse = m + kept
            .iter()
            .map(|&x| (x as f64 / temp - m).exp())
            .sum::<f64>()
            .ln();
        let tol = tol as f64 / temp.min(1.0);
        if z < lse - tol {
            return Err(format!(
                "logZ at T={temp} is {z}, below the log-sum-exp {lse} of the kept entries alone"
            ));
        }
        if z > m + ln_axis + tol {
            return Err(format!(
                "logZ at T={temp} is {z}, above the largest kept logit ÷ T ({m}) + ln(axis) ({ln_axis})"
            ));
        }
    }
    Ok(())
}

/// Checks every position of a targets batch against the contract.
///
/// `exact` asks for strict order with ties to the lower id; decoded lossy values may tie
/// after rounding in any id order, so validation of stored data passes `false` for them.
pub(crate) fn check_targets(
    spec: &TargetSpec,
    t: &Targets,
    row_ids: &[u64],
    exact: bool,
) -> Result<()> {
    let positions = t.logz.len();
    check_offsets("targets", &t.row_positions, row_ids.len(), positions)?;
    let nt = spec.temperatures.len();
    if t.logz_temps.len() != positions * nt {
        return Err(bad_batch(
            schema::LOGZ_TEMPS,
            format!(
                "{} values for {positions} positions × {nt} temperatures",
                t.logz_temps.len()
            ),
        ));
    }
    let row = |p: usize| row_of(&t.row_positions, row_ids, p);
    for (p, &z) in t.logz.iter().enumerate() {
        if !z.is_finite() {
            return Err(bad_row(
                row(p),
                schema::LOGZ,
                format!("position {p}: logZ is {z}"),
            ));
        }
    }
    for (i, &z) in t.logz_temps.iter().enumerate() {
        if !z.is_finite() {
            return Err(bad_row(
                row(i / nt.max(1)),
                schema::LOGZ_TEMPS,
                format!("logZ at T={} is {z}", spec.temperatures[i % nt]),
            ));
        }
    }
    match (&spec.topk, &t.topk) {
        (Some(rule), Some(k)) => {
            check_offsets(schema::TOPK_IDS, &k.offsets, positions, k.ids.len())?;
            if k.logits.len() != k.ids.len() {
                return Err(bad_batch(
                    schema::TOPK_VALUES,
                    "ids and logits differ in length",
                ));
            }
            for p in 0..positions {
                let (a, e) = (k.offsets[p], k.offsets[p + 1]);
                let n = (e - a) as u64;
                let (lo, hi) = match rule {
                    TopK::Fixed { k } => {
                        let k = (*k as u64).min(spec.axis_size);
                        (k, k)
                    }
                    TopK::Adaptive { min_k, max_k, .. } => (
                        (*min_k as u64).min(spec.axis_size),
                        (*max_k as u64).min(spec.axis_size),
                    ),
                };
                if n < lo || n > hi {
                    return Err(bad_row(
                        row(p),
                        schema::TOPK_IDS,
                        format!("position {p}: {n} entries, the rule allows {lo}..={hi}"),
                    ));
                }
                let tol = if exact { 1e-4 } else { 1e-2 } * t.logz[p].abs().max(1.0);
                for i in a..e {
                    let (id, z) = (k.ids[i], k.logits[i]);
                    if id as u64 >= spec.axis_size {
                        return Err(bad_row(
                            row(p),
                            schema::TOPK_IDS,
                            format!("position {p}: id {id} outside 0..{}", spec.axis_size),
                        ));
                    }
                    if !z.is_finite() {
                        return Err(bad_row(
                            row(p),
                            schema::TOPK_VALUES,
                            format!("position {p}: logit of id {id} is {z}"),
                        ));
                    }
                    if z > t.logz[p] + tol {
                        return Err(bad_row(
                            row(p),
                            schema::LOGZ,
                            format!(
                                "position {p}: logit {z} of id {id} exceeds logZ {}",
                                t.logz[p]
                            ),
                        ));
                    }
                    if i > a {
                        let (pid, pz) = (k.ids[i - 1], k.logits[i - 1]);
                        if pz < z || (exact && pz == z && pid >= id) {
                            return Err(bad_row(
                                row(p),
                                schema::TOPK_IDS,
                                format!(
                                    "position {p}: entries must be sorted by descending logit, ties to the lower id ({pid}:{pz} before {id}:{z})"
                                ),
                            ));
                        }
                    }
                }
                check_logz_consistent(spec, t, p, &k.logits[a..e], tol)
                    .map_err(|m| bad_row(row(p), schema::LOGZ, format!("position {p}: {m}")))?;
            }
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(bad_batch(
                schema::TOPK_IDS,
                "the manifest declares top-k targets",
            ));
        }
        (None, Some(_)) => {
            return Err(bad_batch(
                schema::TOPK_IDS,
                "the manifest declares no top-k targets",
            ));
        }
    }
    match (&spec.sampled, &t.sampled) {
        (Some(rule), Some(s)) => {
            check_offsets(schema::SAMPLE_IDS, &s.offsets, positions, s.ids.len())?;
            if s.counts.len() != s.ids.len() {
                return Err(bad_batch(
                    schema::SAMPLE_COUNTS,
                    "ids and counts differ in length",
                ));
            }
            for p in 0..positions {
                let (a, e) = (s.offsets[p], s.offsets[p + 1]);
                let sum: u64 = s.counts[a..e].iter().map(|&c| c as u64).sum();
                if sum != rule.draws as u64 || s.counts[a..e].contains(&0) {
                    return Err(bad_row(
                        row(p),
                        schema::SAMPLE_COUNTS,
                        format!(
                            "position {p}: counts sum to {sum}, expected {} positive counts",
                            rule.draws
                        ),
                    ));
                }
                if s.ids[a..e].windows(2).any(|w| w[0] >= w[1])
                    || s.ids[a..e].iter().any(|&i| i as u64 >= spec.axis_size)
                {
                    return Err(bad_row(
                        row(p),
                        schema::SAMPLE_IDS,
                        format!(
                            "position {p}: sampled ids must be distinct, ascending and below {}",
                            spec.axis_size
                        ),
                    ));
                }
            }
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(bad_batch(
                schema::SAMPLE_IDS,
                "the manifest declares sampled targets",
            ));
        }
        (None, Some(_)) => {
            return Err(bad_batch(
                schema::SAMPLE_IDS,
                "the manifest declares no sampled targets",
            ));
        }
    }
    Ok(())
}

/// ε of the int8 encoding's log companding (FORMAT.md, Encodings): exactly 1/32.
pub const INT8_EPS: f32 = 1.0 / 32.0;
/// Code step of the int8 encoding: exactly 1/24, so code 255 stands for a gap of about 1,300
/// nats (deeper entries are clamped there; their probability is 0 in any float type).
pub const INT8_STEP: f32 = 1.0 / 24.0;

/// The int8 encoding of one position (FORMAT.md, Encodings). With g_i = logz − z_i ≥ 0, the
/// code is c_i = min(255, round(ln(1 + g_i/ε) / step)): the log companding spends the levels
/// where the probability is (small gaps). Codes rise along the sorted entries, so the
/// non-negative steps c_i − c_{i−1} are stored (they compress far better than the codes).
/// Returns ln of the exact tail mass (as f16), which the decoder uses to renormalise, so that
/// quantisation errors do not leak into the tail bucket.
fn int8_codes(logits: &[f32], logz: f32, out: &mut Vec<u8>) -> f16 {
    let mut prev = 0u32;
    for &z in logits {
        let gap = (logz - z).max(0.0);
        let c = ((gap / INT8_EPS).ln_1p() / INT8_STEP).round().min(255.0) as u32;
        let c = c.max(prev);
        out.push((c - prev) as u8);
        prev = c;
    }
    log_tail(logits, logz)
}

/// Inverse of [`int8_codes`] for one position.
fn int8_decode(steps: &[u8], logtail: f32, logz: f32, out: &mut Vec<f32>) {
    let start = out.len();
    let mut c = 0u32;
    for &d in steps {
        c += d as u32;
        let g = INT8_EPS as f64 * (c as f64 * INT8_STEP as f64).exp_m1();
        out.push(-g as f32);
    }
    renormalise(&mut out[start..], logtail, logz);
}

/// ln of the exact T=1 tail mass of one position, 1 − Σ exp(z − logz) over its kept entries,
/// as stored in `topk_logtail` (f16).
fn log_tail(logits: &[f32], logz: f32) -> f16 {
    let kept: f64 = logits
        .iter()
        .map(|&z| (-((logz - z).max(0.0) as f64)).exp())
        .sum();
    f16::from_f64((1.0 - kept).max(0.0).ln())
}

/// Turns one position's decoded log-probs (at T=1, before rounding corrections) into logits
/// whose kept mass is exactly 1 − tail: z_i = logz + v_i + ln((1 − tail) / Σ_j e^{v_j}). The
/// reduced encodings' rounding errors then stay inside the kept entries, and the tail bucket
/// is exact.
fn renormalise(values: &mut [f32], logtail: f32, logz: f32) {
    let mass: f64 = values.iter().map(|&v| (v as f64).exp()).sum();
    let kept = 1.0 - (logtail as f64).exp();
    let shift = if kept > 0.0 && mass > 0.0 {
        (kept / mass).ln() as f32
    } else {
        0.0
    };
    for v in values {
        *v += logz + shift;
    }
}

fn encode_targets(spec: &TargetSpec, t: &Targets, row_ids: &[u64]) -> Result<Vec<ArrayRef>> {
    check_targets(spec, t, row_ids, true)?;
    let g = spec.granularity;
    let rp = &t.row_positions;
    let mut out = Vec::new();
    if let Some(k) = &t.topk {
        let ids = list_array(schema::TOPK_IDS, ids_array(spec.ids, &k.ids), &k.offsets)?;
        out.push(per_row(schema::TOPK_IDS, g, ids, rp)?);
        let pos_logz = |i: usize, p: &mut usize| {
            while k.offsets[*p + 1] <= i {
                *p += 1;
            }
            t.logz[*p]
        };
        let mut logtail = None;
        let values: ArrayRef = match spec.values {
            ValueEncoding::F32 => Arc::new(Float32Array::from(k.logits.clone())),
            ValueEncoding::F16 => {
                let mut p = 0;
                Arc::new(Float16Array::from_iter_values(
                    k.logits
                        .iter()
                        .enumerate()
                        .map(|(i, &z)| f16::from_f32(z - pos_logz(i, &mut p))),
                ))
            }
            ValueEncoding::Bf16 => {
                let mut p = 0;
                Arc::new(UInt16Array::from_iter_values(
                    k.logits
                        .iter()
                        .enumerate()
                        .map(|(i, &z)| bf16::from_f32(z - pos_logz(i, &mut p)).to_bits()),
                ))
            }
            ValueEncoding::Int8 => {
                let mut codes = Vec::with_capacity(k.logits.len());
                let mut tails = Vec::with_capacity(t.logz.len());
                for p in 0..t.logz.len() {
                    let lt = int8_codes(
                        &k.logits[k.offsets[p]..k.offsets[p + 1]],
                        t.logz[p],
                        &mut codes,
                    );
                    tails.push(lt);
                }
                logtail = Some(Arc::new(Float16Array::from(tails)) as ArrayRef);
                Arc::new(UInt8Array::from(codes))
            }
        };
        if spec.has_logtail() && logtail.is_none() {
            let tails: Vec<f16> = (0..t.logz.len())
                .map(|p| log_tail(&k.logits[k.offsets[p]..k.offsets[p + 1]], t.logz[p]))
                .collect();
            logtail = Some(Arc::new(Float16Array::from(tails)) as ArrayRef);
        }
        let values = list_array(schema::TOPK_VALUES, values, &k.offsets)?;
        out.push(per_row(schema::TOPK_VALUES, g, values, rp)?);
        if let Some(lt) = logtail {
            out.push(per_row(schema::TOPK_LOGTAIL, g, lt, rp)?);
        }
    }
    out.push(per_row(
        schema::LOGZ,
        g,
        Arc::new(Float32Array::from(t.logz.clone())),
        rp,
    )?);
    if !spec.temperatures.is_empty() {
        let n = spec.temperatures.len() as i32;
        let vals = Arc::new(Float32Array::from(t.logz_temps.clone()));
        let fsl = FixedSizeListArray::try_new(child_field(&DataType::Float32), n, vals, None)
            .map_err(|e| bad_batch(schema::LOGZ_TEMPS, e.to_string()))?;
        out.push(per_row(schema::LOGZ_TEMPS, g, Arc::new(fsl), rp)?);
    }
    if let Some(s) = &t.sampled {
        let ids = list_array(schema::SAMPLE_IDS, ids_array(spec.ids, &s.ids), &s.offsets)?;
        out.push(per_row(schema::SAMPLE_IDS, g, ids, rp)?);
        if let Some(&c) = s.counts.iter().find(|&&c| c > u16::MAX as u32) {
            return Err(bad_batch(
                schema::SAMPLE_COUNTS,
                format!("count {c} exceeds 65,535"),
            ));
        }
        let counts = Arc::new(UInt16Array::from_iter_values(
            s.counts.iter().map(|&c| c as u16),
        ));
        let counts = list_array(schema::SAMPLE_COUNTS, counts, &s.offsets)?;
        out.push(per_row(schema::SAMPLE_COUNTS, g, counts, rp)?);
    }
    Ok(out)
}

fn encode_feature(spec: &FeatureSpec, f: &FeatureValues, row_ids: &[u64]) -> Result<Vec<ArrayRef>> {
    let col = &spec.column;
    let width = spec.width();
    let positions = *f.row_positions.last().unwrap_or(&0);
    check_offsets(col, &f.row_positions, row_ids.len(), positions)?;
    if f.values.len() != positions * width {
        return Err(bad_batch(
            col,
            format!(
                "{} values for {positions} positions of width {width}",
                f.values.len()
            ),
        ));
    }
    if let Some(i) = f.values.iter().position(|x| !x.is_finite()) {
        let row = row_of(&f.row_positions, row_ids, i / width);
        return Err(bad_row(
            row,
            &spec.name,
            format!("feature value {} is not finite", f.values[i]),
        ));
    }
    let offsets: Vec<usize> = (0..=positions).map(|p| p * width).collect();
    let g = spec.granularity;
    let mut out = Vec::new();
    let mut scale = None;
    let child: ArrayRef = match spec.encoding {
        FeatureEncoding::F32 => Arc::new(Float32Array::from(f.values.clone())),
        FeatureEncoding::F16 => Arc::new(Float16Array::from_iter_values(
            f.values.iter().map(|&x| f16::from_f32(x)),
        )),
        FeatureEncoding::Int8 => {
            let mut codes = Vec::with_capacity(f.values.len());
            let mut scales = Vec::with_capacity(positions);
            for chunk in f.values.chunks(width.max(1)) {
                let m = chunk.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let s = m / 127.0;
                scales.push(s);
                codes.extend(chunk.iter().map(|&x| {
                    if s > 0.0 {
                        (x / s).round().clamp(-127.0, 127.0) as i8
                    } else {
                        0
                    }
                }));
            }
            scale = Some(Arc::new(Float32Array::from(scales)) as ArrayRef);
            Arc::new(Int8Array::from(codes))
        }
    };
    out.push(per_row(
        col,
        g,
        list_array(col, child, &offsets)?,
        &f.row_positions,
    )?);
    if let Some(s) = scale {
        out.push(per_row(
            &schema::scale_column(spec),
            g,
            s,
            &f.row_positions,
        )?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Decoding

fn column<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a ArrayRef> {
    b.column_by_name(name)
}

fn wrong_type(column: &str, arr: &dyn Array) -> FormatError {
    bad_batch(column, format!("unexpected Arrow type {}", arr.data_type()))
}

/// Splits a list array into 0-based offsets and its (sliced) child.
fn unlist(column: &str, arr: &dyn Array) -> Result<(Vec<usize>, ArrayRef)> {
    let l = arr
        .as_list_opt::<i32>()
        .ok_or_else(|| wrong_type(column, arr))?;
    if l.null_count() > 0 {
        return Err(bad_batch(column, "null lists are not allowed"));
    }
    let offs = l.value_offsets();
    let base = offs.first().copied().unwrap_or(0).max(0) as usize;
    let end = offs.last().copied().unwrap_or(0).max(0) as usize;
    let offsets = offs.iter().map(|&o| o as usize - base).collect();
    Ok((offsets, l.values().slice(base, end - base)))
}

/// Splits off the row level of per-position columns.
fn unrow(column: &str, g: Granularity, arr: &ArrayRef) -> Result<(Vec<usize>, ArrayRef)> {
    match g {
        Granularity::Example => Ok(((0..=arr.len()).collect(), arr.clone())),
        Granularity::Position => unlist(column, arr.as_ref()),
    }
}

fn prim<T: arrow_array::ArrowPrimitiveType>(
    column: &str,
    arr: &dyn Array,
) -> Result<PrimitiveArray<T>> {
    let p = arr
        .as_primitive_opt::<T>()
        .ok_or_else(|| wrong_type(column, arr))?;
    if p.null_count() > 0 {
        return Err(bad_batch(column, "null values are not allowed"));
    }
    Ok(p.clone())
}

fn ids_vec(column: &str, arr: &dyn Array) -> Result<Vec<u32>> {
    match arr.data_type() {
        DataType::UInt16 => Ok(prim::<UInt16Type>(column, arr)?
            .values()
            .iter()
            .map(|&i| i as u32)
            .collect()),
        DataType::UInt32 => Ok(prim::<UInt32Type>(column, arr)?.values().to_vec()),
        _ => Err(wrong_type(column, arr)),
    }
}

fn f32_vec(column: &str, arr: &dyn Array) -> Result<Vec<f32>> {
    Ok(prim::<Float32Type>(column, arr)?.values().to_vec())
}

/// Decodes whatever columns of `b` the manifest knows into a [`RowBatch`]: projected-away parts
/// stay empty (`None` or absent from the maps).
pub fn decode(manifest: &Manifest, b: &RecordBatch) -> Result<RowBatch> {
    let mut out = RowBatch::default();
    let ids = column(b, schema::ROW_ID).ok_or_else(|| bad_batch(schema::ROW_ID, "missing"))?;
    out.row_ids = prim::<UInt64Type>(schema::ROW_ID, ids.as_ref())?
        .values()
        .to_vec();
    if let Some(c) = column(b, schema::USER_ID) {
        let s = c
            .as_string_opt::<i32>()
            .ok_or_else(|| wrong_type(schema::USER_ID, c.as_ref()))?;
        out.user_ids = Some(s.iter().map(|v| v.map(str::to_string)).collect());
    }
    if let Some(c) = column(b, schema::INPUT_HASH) {
        let s = c
            .as_fixed_size_binary_opt()
            .ok_or_else(|| wrong_type(schema::INPUT_HASH, c.as_ref()))?;
        let mut hashes = Vec::with_capacity(s.len());
        for v in s.iter() {
            let v = v.ok_or_else(|| bad_batch(schema::INPUT_HASH, "null hash"))?;
            hashes.push(
                <[u8; 32]>::try_from(v)
                    .map_err(|_| bad_batch(schema::INPUT_HASH, "hash is not 32 bytes"))?,
            );
        }
        out.input_hashes = Some(hashes);
    }
    for spec in &manifest.inputs {
        if let Some(c) = column(b, &spec.column) {
            let (offsets, child) = unlist(&spec.column, c.as_ref())?;
            let col = spec.column.as_str();
            let values = match child.data_type() {
                DataType::Float32 => {
                    TensorValues::F32(prim::<Float32Type>(col, &child)?.values().to_vec())
                }
                DataType::Float64 => {
                    TensorValues::F64(prim::<Float64Type>(col, &child)?.values().to_vec())
                }
                DataType::Int64 => {
                    TensorValues::I64(prim::<Int64Type>(col, &child)?.values().to_vec())
                }
                DataType::Int32 => {
                    TensorValues::I32(prim::<Int32Type>(col, &child)?.values().to_vec())
                }
                DataType::UInt32 => {
                    TensorValues::U32(prim::<UInt32Type>(col, &child)?.values().to_vec())
                }
                DataType::UInt16 => {
                    TensorValues::U16(prim::<UInt16Type>(col, &child)?.values().to_vec())
                }
                DataType::Int8 => {
                    TensorValues::I8(prim::<Int8Type>(col, &child)?.values().to_vec())
                }
                DataType::UInt8 => {
                    TensorValues::U8(prim::<UInt8Type>(col, &child)?.values().to_vec())
                }
                _ => return Err(wrong_type(col, &child)),
            };
            out.inputs
                .insert(spec.name.clone(), InputValues { offsets, values });
        }
    }
    if let Some(c) = column(b, schema::LABEL) {
        let l = c
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| wrong_type(schema::LABEL, c.as_ref()))?;
        out.labels = Some(l.iter().collect());
    }
    if let Some(spec) = &manifest.targets
        && column(b, schema::LOGZ).is_some()
    {
        out.targets = Some(decode_targets(spec, b)?);
    }
    for spec in &manifest.features {
        if let Some(c) = column(b, &spec.column) {
            out.features
                .insert(spec.name.clone(), decode_feature(spec, c, b)?);
        }
    }
    Ok(out)
}

fn decode_targets(spec: &TargetSpec, b: &RecordBatch) -> Result<Targets> {
    let g = spec.granularity;
    let need = |name: &str| {
        column(b, name).ok_or_else(|| bad_batch(name, "column not read (add it to the projection)"))
    };
    let (row_positions, logz) = unrow(schema::LOGZ, g, need(schema::LOGZ)?)?;
    let logz = f32_vec(schema::LOGZ, &logz)?;
    let positions = logz.len();
    let mut t = Targets {
        row_positions,
        logz,
        ..Default::default()
    };
    if !spec.temperatures.is_empty()
        && let Some(c) = column(b, schema::LOGZ_TEMPS)
    {
        let (_, fsl) = unrow(schema::LOGZ_TEMPS, g, c)?;
        let f = fsl
            .as_fixed_size_list_opt()
            .ok_or_else(|| wrong_type(schema::LOGZ_TEMPS, &fsl))?;
        let n = spec.temperatures.len();
        if f.value_length() as usize != n || f.len() != positions {
            return Err(bad_batch(
                schema::LOGZ_TEMPS,
                format!("expected {n} values per position"),
            ));
        }
        let vals = f.values().slice(f.offset() * n, positions * n);
        t.logz_temps = f32_vec(schema::LOGZ_TEMPS, &vals)?;
    }
    if spec.topk.is_some()
        && let Some(c) = column(b, schema::TOPK_IDS)
    {
        let (_, inner) = unrow(schema::TOPK_IDS, g, c)?;
        let (offsets, ids) = unlist(schema::TOPK_IDS, &inner)?;
        let ids = ids_vec(schema::TOPK_IDS, &ids)?;
        let (_, vinner) = unrow(schema::TOPK_VALUES, g, need(schema::TOPK_VALUES)?)?;
        let (voffsets, vals) = unlist(schema::TOPK_VALUES, &vinner)?;
        if voffsets != offsets || offsets.len() != positions + 1 {
            return Err(bad_batch(
                schema::TOPK_VALUES,
                "ids and values disagree in shape",
            ));
        }
        let mut logits = Vec::with_capacity(ids.len());
        let logtail = if spec.has_logtail() {
            let (_, lt) = unrow(schema::TOPK_LOGTAIL, g, need(schema::TOPK_LOGTAIL)?)?;
            let lt = prim::<Float16Type>(schema::TOPK_LOGTAIL, &lt)?;
            if lt.len() != positions {
                return Err(bad_batch(
                    schema::TOPK_LOGTAIL,
                    "one log tail per position expected",
                ));
            }
            Some(lt.values().iter().map(|x| x.to_f32()).collect::<Vec<f32>>())
        } else {
            None
        };
        // f16/bf16 store T=1 log-probs: decoded as logz + v, or renormalised to the stored
        // exact tail (format 1.1).
        let mut half = |p: usize, v: &mut dyn Iterator<Item = f32>| {
            let start = logits.len();
            match &logtail {
                Some(lt) => {
                    logits.extend(v);
                    renormalise(&mut logits[start..], lt[p], t.logz[p]);
                }
                None => logits.extend(v.map(|x| t.logz[p] + x)),
            }
        };
        match spec.values {
            ValueEncoding::F32 => logits = f32_vec(schema::TOPK_VALUES, &vals)?,
            ValueEncoding::F16 => {
                let v = prim::<Float16Type>(schema::TOPK_VALUES, &vals)?;
                for p in 0..positions {
                    half(
                        p,
                        &mut v.values()[offsets[p]..offsets[p + 1]]
                            .iter()
                            .map(|x| x.to_f32()),
                    );
                }
            }
            ValueEncoding::Bf16 => {
                let v = prim::<UInt16Type>(schema::TOPK_VALUES, &vals)?;
                for p in 0..positions {
                    half(
                        p,
                        &mut v.values()[offsets[p]..offsets[p + 1]]
                            .iter()
                            .map(|&x| bf16::from_bits(x).to_f32()),
                    );
                }
            }
            ValueEncoding::Int8 => {
                let v = prim::<UInt8Type>(schema::TOPK_VALUES, &vals)?;
                let lt = logtail.as_deref().unwrap_or_default();
                for p in 0..positions {
                    let steps = &v.values()[offsets[p]..offsets[p + 1]];
                    let tail = lt.get(p).copied().unwrap_or(f32::NEG_INFINITY);
                    int8_decode(steps, tail, t.logz[p], &mut logits);
                }
            }
        }
        t.topk = Some(TopKEntries {
            offsets,
            ids,
            logits,
        });
    }
    if spec.sampled.is_some()
        && let Some(c) = column(b, schema::SAMPLE_IDS)
    {
        let (_, inner) = unrow(schema::SAMPLE_IDS, g, c)?;
        let (offsets, ids) = unlist(schema::SAMPLE_IDS, &inner)?;
        let ids = ids_vec(schema::SAMPLE_IDS, &ids)?;
        let (_, cinner) = unrow(schema::SAMPLE_COUNTS, g, need(schema::SAMPLE_COUNTS)?)?;
        let (coffsets, counts) = unlist(schema::SAMPLE_COUNTS, &cinner)?;
        if coffsets != offsets {
            return Err(bad_batch(
                schema::SAMPLE_COUNTS,
                "ids and counts disagree in shape",
            ));
        }
        let counts = prim::<UInt16Type>(schema::SAMPLE_COUNTS, &counts)?
            .values()
            .iter()
            .map(|&c| c as u32)
            .collect();
        t.sampled = Some(SampledEntries {
            offsets,
            ids,
            counts,
        });
    }
    Ok(t)
}

fn decode_feature(spec: &FeatureSpec, c: &ArrayRef, b: &RecordBatch) -> Result<FeatureValues> {
    let col = spec.column.as_str();
    let width = spec.width();
    let (row_positions, inner) = unrow(col, spec.granularity, c)?;
    let (offsets, vals) = unlist(col, &inner)?;
    let positions = offsets.len() - 1;
    if offsets.iter().enumerate().any(|(p, &o)| o != p * width) {
        return Err(bad_batch(
            col,
            format!("every value must hold {width} scalars"),
        ));
    }
    let values = match spec.encoding {
        FeatureEncoding::F32 => f32_vec(col, &vals)?,
        FeatureEncoding::F16 => prim::<Float16Type>(col, &vals)?
            .values()
            .iter()
            .map(|x| x.to_f32())
            .collect(),
        FeatureEncoding::Int8 => {
            let sc = schema::scale_column(spec);
            let scol = column(b, &sc)
                .ok_or_else(|| bad_batch(&sc, "column not read (add it to the projection)"))?;
            let (_, s) = unrow(&sc, spec.granularity, scol)?;
            let s = f32_vec(&sc, &s)?;
            if s.len() != positions {
                return Err(bad_batch(&sc, "one scale per value expected"));
            }
            let q = prim::<Int8Type>(col, &vals)?;
            q.values()
                .iter()
                .enumerate()
                .map(|(i, &x)| x as f32 * s[i / width.max(1)])
                .collect()
        }
    };
    Ok(FeatureValues {
        row_positions,
        values,
    })
}
