//! From teacher outputs to rows: top-k, logZ and sampled targets for each kept position, the
//! features, the input hashes and the stored inputs of a batch. The target computation is one
//! loop over (row, position) cells for every granularity — one cell a row for per-example
//! targets, one per kept position for per-position ones — so classifiers, token models and
//! sequence models over either corpus kind share it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use logits_format::manifest::Pooling;
use logits_format::rows::{
    FeatureValues, InputValues, RowBatch, Targets, TensorValues, input_hash_v1,
};
use logits_format::targets::{
    PositionTargets, position_targets_ahead, sample_counts, targets_from_top,
};
use logits_onnx::surgery::OutputKind;
use rand::SeedableRng;
use rayon::prelude::*;

use super::feed::padded_len;
use super::plan::Plan;
use crate::corpus::{CorpusBatch, Flat};
use crate::error::{Result, TeacherError};
use crate::text::Window;

/// Below this many logits in a batch, rows are post-processed on the worker's own thread:
/// handing a batch of short rows to the thread pool costs more (waking threads) than the
/// rows themselves (a classifier's batch of 256 rows × 10 classes is a few microseconds).
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// Sampled draws of one position: (ids, counts).
type Draws = (Vec<u32>, Vec<u32>);

/// The session outputs of one batch, by tensor name.
pub(super) type Outputs = HashMap<String, ort::value::DynValue>;

/// A session error naming the teacher.
pub(super) fn session_error(plan: &Plan, message: String) -> TeacherError {
    TeacherError::Session {
        model: plan.teacher.path.clone(),
        message,
    }
}

/// Shape and f32 data of a float tensor: float32 borrowed, float16 and bfloat16 (teachers
/// exported in half precision) widened exactly to f32.
pub(super) fn float_values(
    v: &ort::value::DynValue,
) -> std::result::Result<(Vec<i64>, std::borrow::Cow<'_, [f32]>), String> {
    if let Ok((shape, data)) = v.try_extract_tensor::<f32>() {
        return Ok((shape.to_vec(), std::borrow::Cow::Borrowed(data)));
    }
    if let Ok((shape, data)) = v.try_extract_tensor::<half::f16>() {
        return Ok((shape.to_vec(), data.iter().map(|x| x.to_f32()).collect()));
    }
    match v.try_extract_tensor::<half::bf16>() {
        Ok((shape, data)) => Ok((shape.to_vec(), data.iter().map(|x| x.to_f32()).collect())),
        Err(e) => Err(format!(
            "not a float32, float16 or bfloat16 tensor ({e}); targets and features are float tensors"
        )),
    }
}

/// Shape and f32 data of a session output.
fn output_f32<'a>(
    plan: &Plan,
    outputs: &'a Outputs,
    name: &str,
) -> Result<(Vec<i64>, std::borrow::Cow<'a, [f32]>)> {
    let err = |message: String| session_error(plan, message);
    let v = outputs
        .get(name)
        .ok_or_else(|| err(format!("no output {name:?}")))?;
    float_values(v).map_err(|e| err(format!("output {name:?}: {e}")))
}

/// The target as the session returned it — every logit (host post-processing), or the
/// graph's top-k values — with its shape and the size its last axis must have (the classes,
/// or k).
#[allow(clippy::type_complexity)]
fn target_output<'a>(
    plan: &Plan,
    outputs: &'a Outputs,
) -> Result<(Vec<i64>, Option<std::borrow::Cow<'a, [f32]>>, i64)> {
    if plan.in_graph {
        let (s, _) = output_f32(plan, outputs, logits_onnx::postprocess::post::VALUES)?;
        Ok((s, None, plan.k as i64))
    } else {
        let (s, raw) = output_f32(plan, outputs, &plan.target)?;
        Ok((s, Some(raw), plan.axis as i64))
    }
}

/// The data of a session output of element type `T` (the graph path's ids, logZ, sums).
fn output_of<'a, T: ort::value::PrimitiveTensorElementType>(
    plan: &Plan,
    outputs: &'a Outputs,
    name: &str,
) -> Result<&'a [T]> {
    let err = |message: String| session_error(plan, message);
    let v = outputs
        .get(name)
        .ok_or_else(|| err(format!("no output {name:?}")))?;
    let (_, data) = v
        .try_extract_tensor::<T>()
        .map_err(|e| err(format!("output {name:?}: {e}")))?;
    Ok(data)
}

/// The guard against storing probabilities as logits: on the first batch post-processed, a
/// target the graph does not show to be a softmax (a softmax written as Exp → ReduceSum →
/// Div, say) whose every row lies in [0, 1] and sums to 1 stops the build, saying what to do.
/// Logits that happen to look like that on a whole batch do not occur in practice.
fn check_not_probabilities(plan: &Plan, rows: &[f32]) -> Result<()> {
    if plan.kind != OutputKind::Logits
        || plan.axis < 2
        || plan.kind_checked.swap(true, Ordering::Relaxed)
    {
        return Ok(());
    }
    let looks = !rows.is_empty()
        && rows.chunks(plan.axis).all(|r| {
            let sum: f64 = r.iter().map(|&x| x as f64).sum();
            r.iter().all(|&x| (-1e-6..=1.0 + 1e-6).contains(&x)) && (sum - 1.0).abs() <= 1e-3
        });
    if looks {
        return Err(TeacherError::Options(format!(
            "{}: target {:?} holds probabilities, not logits (every row of the first batch lies in [0, 1] and sums to 1), though the graph does not end in a recognised softmax; stored as logits, every log-probability would be wrong. Pass --output-is-probability to store them as log-probabilities, or pass the pre-softmax logits (`logits-build inspect-model` lists the graph's tensors) as --target",
            plan.teacher.path.display(),
            plan.target
        )));
    }
    Ok(())
}

/// The target's values for a batch as log-probabilities or logits (probabilities become
/// log-probs; an underflowed 0 becomes the log of the smallest positive f32 rather than -inf,
/// so the row stays finite), checked once for probabilities stored as logits.
fn target_values<'a>(plan: &Plan, raw: &'a [f32]) -> Result<std::borrow::Cow<'a, [f32]>> {
    check_not_probabilities(plan, raw)?;
    Ok(if plan.kind == OutputKind::Softmax {
        raw.iter().map(|x| x.max(f32::from_bits(1)).ln()).collect()
    } else {
        std::borrow::Cow::Borrowed(raw)
    })
}

/// Targets for the kept positions of each row: `cells[r]` lists row `r`'s positions, whose
/// logits are `logits[(r * l + p) * axis..]`. A row with a non-finite value at some position
/// gives `Err((position, value))`.
#[allow(clippy::type_complexity)]
fn targets_of(
    plan: &Plan,
    logits: &[f32],
    l: usize,
    cells: &[Vec<usize>],
    row_ids: &[u64],
) -> Vec<std::result::Result<Vec<(PositionTargets, Option<Draws>)>, (usize, f32)>> {
    let flat: Vec<(usize, usize)> = cells
        .iter()
        .enumerate()
        .flat_map(|(r, ps)| ps.iter().map(move |&p| (r, p)))
        .collect();
    let row =
        |(r, p): (usize, usize)| &logits[(r * l + p) * plan.axis..(r * l + p + 1) * plan.axis];
    let one = |i: usize| {
        let (r, p) = flat[i];
        let z = row(flat[i]);
        // Rayon hands each thread a run of consecutive cells: the next cell is usually this
        // thread's next row.
        let next = flat.get(i + 1).map_or(&[][..], |&c| row(c));
        let t = position_targets_ahead(z, next, plan.k, plan.adaptive, &plan.temps)?;
        let s = plan.sample.as_ref().map(|rule| {
            let seed = rule.seed
                ^ row_ids[r].wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (p as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            sample_counts(z, rule.temperature, rule.draws, &mut rng)
        });
        Some((t, s))
    };
    let computed: Vec<_> = if flat.len() * plan.axis < PARALLEL_MIN_VALUES {
        (0..flat.len()).map(one).collect()
    } else {
        (0..flat.len()).into_par_iter().map(one).collect()
    };
    let mut out = Vec::with_capacity(cells.len());
    let mut it = computed.into_iter();
    for (r, ps) in cells.iter().enumerate() {
        let mut kept = Ok(Vec::with_capacity(ps.len()));
        for &p in ps {
            match (it.next().flatten(), &mut kept) {
                (Some(c), Ok(v)) => v.push(c),
                (None, Ok(_)) => {
                    let value = row((r, p))
                        .iter()
                        .copied()
                        .find(|x| !x.is_finite())
                        .unwrap_or(f32::NAN);
                    kept = Err((p, value));
                }
                _ => {}
            }
        }
        out.push(kept);
    }
    out
}

/// Targets from the graph's own post-processing outputs (`--postprocess graph`): its TopK
/// values and indices `[n, (l,) k]` and logZ `[n, (l,) |T|]`, for the kept positions `cells`,
/// with the adaptive rule applied here as on the host. A position whose logZ or kept values
/// are not finite gives `Err((position, value))`. The guard against probabilities stored as
/// logits reads the first batch off the same outputs: every logZ near 0 with every kept value
/// in [0, 1].
#[allow(clippy::type_complexity)]
fn graph_targets(
    plan: &Plan,
    outputs: &Outputs,
    n: usize,
    l: usize,
    cells: &[Vec<usize>],
) -> Result<Vec<std::result::Result<Vec<(PositionTargets, Option<Draws>)>, (usize, f32)>>> {
    use logits_onnx::postprocess::post;
    let err = |message: String| session_error(plan, message);
    let (vshape, values) = output_f32(plan, outputs, post::VALUES)?;
    let ids = output_of::<i64>(plan, outputs, post::INDICES)?;
    let logz = output_of::<f64>(plan, outputs, post::LOGZ)?;
    let k = vshape.last().copied().unwrap_or(0).max(0) as usize;
    let nt = plan.temps.len() + 1;
    if values.len() != n * l * k || ids.len() != values.len() || logz.len() != n * l * nt {
        return Err(err(format!(
            "in-graph top-k outputs have {} values, {} ids and {} logZ for {n} rows × {l} positions, k = {k}, {nt} temperatures",
            values.len(),
            ids.len(),
            logz.len()
        )));
    }
    if plan.kind == OutputKind::Logits && !plan.kind_checked.swap(true, Ordering::Relaxed) {
        let sum_min = output_of::<f64>(plan, outputs, post::SUM_MIN)?;
        // The same test as the host path's, on the graph's row sums and minima: every row in
        // [0, 1] (its minimum ≥ 0, its top value ≤ 1) and summing to 1.
        let looks = plan.axis >= 2
            && !sum_min.is_empty()
            && sum_min
                .chunks(2)
                .all(|c| (c[0] - 1.0).abs() <= 1e-3 && c[1] >= -1e-6)
            && values.iter().all(|&x| x <= 1.0 + 1e-6);
        if looks {
            return Err(TeacherError::Options(format!(
                "{}: target {:?} holds probabilities, not logits (every row of the first batch lies in [0, 1] and sums to 1), though the graph does not end in a recognised softmax; stored as logits, every log-probability would be wrong. Pass --output-is-probability (with --postprocess host) to store them as log-probabilities, or pass the pre-softmax logits (`logits-build inspect-model` lists the graph's tensors) as --target",
                plan.teacher.path.display(),
                plan.target
            )));
        }
    }
    let mut out = Vec::with_capacity(cells.len());
    for (r, ps) in cells.iter().enumerate() {
        let mut kept = Ok(Vec::with_capacity(ps.len()));
        for &p in ps {
            let c = r * l + p;
            let v = &values[c * k..(c + 1) * k];
            let z = &logz[c * nt..(c + 1) * nt];
            let bad = z
                .iter()
                .map(|&x| x as f32)
                .chain(v.iter().copied())
                .find(|x| !x.is_finite());
            if let Some(value) = bad {
                kept = Err((p, value));
                break;
            }
            let top: Vec<(u32, f32)> = ids[c * k..(c + 1) * k]
                .iter()
                .zip(v)
                .map(|(&i, &x)| (i as u32, x))
                .collect();
            if let Ok(list) = &mut kept {
                list.push((targets_from_top(top, z, plan.adaptive), None));
            }
        }
        out.push(kept);
    }
    Ok(out)
}

/// The first non-finite value of each row's features, if any: (row, tensor, value).
fn bad_features(
    plan: &Plan,
    feats: &[Vec<f32>],
    rows: usize,
    per_row: &dyn Fn(usize, usize) -> std::ops::Range<usize>,
) -> Vec<Option<(String, f32)>> {
    (0..rows)
        .map(|r| {
            plan.features.iter().enumerate().find_map(|(fi, f)| {
                feats[fi][per_row(r, fi)]
                    .iter()
                    .find(|x| !x.is_finite())
                    .map(|&v| (f.req.tensor.clone(), v))
            })
        })
        .collect()
}

/// Reads each feature's values for a batch, checking their count.
fn feature_values(plan: &Plan, outputs: &Outputs, per_row: usize) -> Result<Vec<Vec<f32>>> {
    plan.features
        .iter()
        .map(|f| {
            let (_, data) = output_f32(plan, outputs, &f.req.tensor)?;
            let want = per_row * f.width;
            if data.len() != want {
                return Err(session_error(
                    plan,
                    format!(
                        "feature {:?} gave {} values where {want} were expected ({} a row)",
                        f.req.tensor,
                        data.len(),
                        f.width
                    ),
                ));
            }
            Ok(data.to_vec())
        })
        .collect()
}

/// What to do with a row that holds a non-finite value: skip it when asked, else stop.
fn non_finite(plan: &Plan, row_id: u64, tensor: String, value: f32) -> Result<()> {
    if plan.skip_non_finite {
        Ok(())
    } else {
        Err(TeacherError::NonFinite {
            row_id,
            tensor,
            value,
        })
    }
}

/// Turns the teacher's outputs for a batch of tensor-corpus rows into a row batch.
pub(super) fn tensor_rows(
    plan: &Plan,
    b: CorpusBatch,
    outputs: &Outputs,
) -> Result<(RowBatch, Vec<u64>)> {
    let n = b.row_ids.len();
    let (shape, raw, last) = target_output(plan, outputs)?;
    let l = match (plan.per_position, shape.as_slice()) {
        (false, [rows, c]) if *rows == n as i64 && *c == last => 1,
        (true, [rows, t, c]) if *rows == n as i64 && *c == last && *t >= 0 => *t as usize,
        _ => {
            return Err(session_error(
                plan,
                format!(
                    "target {:?} has shape {shape:?}; expected [{n}, {}{}]",
                    plan.target,
                    if plan.per_position { "positions, " } else { "" },
                    plan.axis
                ),
            ));
        }
    };
    let logits = raw.as_deref().map(|r| target_values(plan, r)).transpose()?;
    // The positions kept: all, or those the mask input marks.
    let cells: Vec<Vec<usize>> = match &plan.mask {
        None => vec![(0..l).collect(); n],
        Some(m) => {
            let (offsets, flat) = &b.inputs[m];
            let Flat::I64(v) = flat else {
                return Err(TeacherError::Pipeline(format!("mask {m:?} is not integer")));
            };
            let mut cells = Vec::with_capacity(n);
            for r in 0..n {
                let row = &v[offsets[r]..offsets[r + 1]];
                if row.len() != l {
                    return Err(super::feed::mismatch(
                        &plan.feed.model,
                        b.row_ids[r],
                        format!(
                            "mask input {m:?} has {} positions but target {:?} has {l}",
                            row.len(),
                            plan.target
                        ),
                    ));
                }
                cells.push((0..l).filter(|&p| row[p] != 0).collect());
            }
            cells
        }
    };
    let targets = match &logits {
        Some(z) => targets_of(plan, z, l, &cells, &b.row_ids),
        None => graph_targets(plan, outputs, n, l, &cells)?,
    };
    let feats = feature_values(plan, outputs, n)?;
    let widths: Vec<usize> = plan.features.iter().map(|f| f.width).collect();
    let fbad = bad_features(plan, &feats, n, &|r, fi| {
        r * widths[fi]..(r + 1) * widths[fi]
    });
    let mut out = RowBatch::default();
    let mut skipped = Vec::new();
    let mut t = Targets::empty(true, plan.sample.is_some());
    let mut kept_rows = Vec::new();
    for (r, res) in targets.into_iter().enumerate() {
        let id = b.row_ids[r];
        let cells = match (res, &fbad[r]) {
            (Err((p, value)), _) => {
                let tensor = if plan.per_position {
                    format!("{} (position {p})", plan.target)
                } else {
                    plan.target.clone()
                };
                non_finite(plan, id, tensor, value)?;
                skipped.push(id);
                continue;
            }
            (Ok(_), Some((tensor, value))) => {
                non_finite(plan, id, tensor.clone(), *value)?;
                skipped.push(id);
                continue;
            }
            (Ok(c), None) => c,
        };
        kept_rows.push(r);
        out.row_ids.push(id);
        for (pt, s) in &cells {
            t.push_position(pt, s.as_ref());
        }
        t.end_row();
    }
    out.targets = Some(t);
    for (fi, f) in plan.features.iter().enumerate() {
        let w = f.width;
        let mut fv = FeatureValues {
            row_positions: vec![0],
            values: Vec::with_capacity(kept_rows.len() * w),
        };
        for &r in &kept_rows {
            fv.values.extend_from_slice(&feats[fi][r * w..(r + 1) * w]);
            fv.row_positions.push(fv.row_positions.len());
        }
        out.features.insert(f.req.name.clone(), fv);
    }
    let mut hashes = vec![Vec::new(); kept_rows.len()];
    for ip in plan.feed.inputs.iter().filter(|i| i.derived.is_none()) {
        let (offsets, flat) = &b.inputs[&ip.name];
        // The kept rows' values, then in the stored type (checked against the model's type
        // when fed, so they fit).
        let mut iv_offsets = vec![0];
        for &r in &kept_rows {
            iv_offsets.push(iv_offsets[iv_offsets.len() - 1] + offsets[r + 1] - offsets[r]);
        }
        // Usually every row is kept: the batch's values are used as they are.
        let gathered;
        let kept = if kept_rows.len() == n {
            flat
        } else {
            gathered = match flat {
                Flat::F32(v) => {
                    let mut g = Vec::with_capacity(iv_offsets[iv_offsets.len() - 1]);
                    for &r in &kept_rows {
                        g.extend_from_slice(&v[offsets[r]..offsets[r + 1]]);
                    }
                    Flat::F32(g)
                }
                Flat::I64(v) => {
                    let mut g = Vec::with_capacity(iv_offsets[iv_offsets.len() - 1]);
                    for &r in &kept_rows {
                        g.extend_from_slice(&v[offsets[r]..offsets[r + 1]]);
                    }
                    Flat::I64(g)
                }
            };
            &gathered
        };
        let len = iv_offsets[iv_offsets.len() - 1];
        let values = kept.to_stored(0..len, ip.stored).map_err(|(at, v)| {
            let r = iv_offsets.partition_point(|&o| o <= at).saturating_sub(1);
            super::feed::mismatch(
                &plan.feed.model,
                out.row_ids.get(r).copied().unwrap_or_default(),
                format!(
                    "input {:?}: value {v} does not fit its stored type {}",
                    ip.name,
                    ip.stored.name()
                ),
            )
        })?;
        let iv = InputValues {
            offsets: iv_offsets,
            values,
        };
        for (i, h) in hashes.iter_mut().enumerate() {
            let range = iv.offsets[i]..iv.offsets[i + 1];
            h.push((
                ip.name.as_str(),
                iv.values.le_bytes(range.clone()),
                range.len(),
            ));
        }
        if plan.store_inputs {
            out.inputs.insert(ip.name.clone(), iv);
        }
    }
    out.input_hashes = Some(hashes.iter().map(|parts| input_hash_v1(parts)).collect());
    if let Some(labels) = &b.labels {
        out.labels = Some(kept_rows.iter().map(|&r| labels[r]).collect());
    }
    if let Some(ids) = &b.ids {
        out.user_ids = Some(kept_rows.iter().map(|&r| ids[r].clone()).collect());
    }
    Ok((out, skipped))
}

/// Turns a token model's outputs for a batch of token windows into a row batch: per-position
/// targets for every real token (language models, token classifiers) or one per window
/// (sequence classifiers), per-position or pooled features.
pub(super) fn text_rows(
    plan: &Plan,
    windows: Vec<Window>,
    outputs: &Outputs,
) -> Result<(RowBatch, Vec<u64>)> {
    let tp = plan
        .feed
        .text
        .as_ref()
        .ok_or_else(|| TeacherError::Pipeline("text batch without a text plan".into()))?;
    let n = windows.len();
    let l = padded_len(&windows);
    let lens: Vec<usize> = windows.iter().map(|w| w.ids.len()).collect();
    // The vocabulary-sized output is read in place (no copy): it is the largest buffer of a
    // language-model build.
    let (shape, raw, last) = target_output(plan, outputs)?;
    let want: Vec<i64> = if plan.per_position {
        vec![n as i64, l as i64, last]
    } else {
        vec![n as i64, last]
    };
    if shape != want {
        return Err(session_error(
            plan,
            format!(
                "target {:?} has shape {shape:?}; expected {want:?}",
                plan.target
            ),
        ));
    }
    let logits = raw.as_deref().map(|r| target_values(plan, r)).transpose()?;
    let row_ids: Vec<u64> = windows.iter().map(|w| w.row_id).collect();
    let (tl, cells): (usize, Vec<Vec<usize>>) = if plan.per_position {
        (l, lens.iter().map(|&len| (0..len).collect()).collect())
    } else {
        (1, vec![vec![0]; n])
    };
    let targets = match &logits {
        Some(z) => targets_of(plan, z, tl, &cells, &row_ids),
        None => graph_targets(plan, outputs, n, tl, &cells)?,
    };
    let feats = feature_values(plan, outputs, n * l)?;
    let widths: Vec<usize> = plan.features.iter().map(|f| f.width).collect();
    let fbad = bad_features(plan, &feats, n, &|r, fi| {
        r * l * widths[fi]..(r * l + lens[r]) * widths[fi]
    });
    let mut out = RowBatch::default();
    let mut skipped = Vec::new();
    let mut t = Targets::empty(true, plan.sample.is_some());
    let mut input = InputValues {
        offsets: vec![0],
        values: TensorValues::U32(vec![]),
    };
    let mut fvals: Vec<FeatureValues> = plan
        .features
        .iter()
        .map(|_| FeatureValues {
            row_positions: vec![0],
            values: vec![],
        })
        .collect();
    let mut hashes = Vec::new();
    let mut user_ids = Vec::new();
    for (r, (w, res)) in windows.iter().zip(targets).enumerate() {
        let cells = match (res, &fbad[r]) {
            (Err((p, value)), _) => {
                non_finite(
                    plan,
                    w.row_id,
                    format!("{} (position {p})", plan.target),
                    value,
                )?;
                skipped.push(w.row_id);
                continue;
            }
            (Ok(_), Some((tensor, value))) => {
                non_finite(plan, w.row_id, tensor.clone(), *value)?;
                skipped.push(w.row_id);
                continue;
            }
            (Ok(c), None) => c,
        };
        out.row_ids.push(w.row_id);
        user_ids.push(w.doc_id.clone());
        for (pt, s) in &cells {
            t.push_position(pt, s.as_ref());
        }
        t.end_row();
        if let TensorValues::U32(v) = &mut input.values {
            v.extend_from_slice(&w.ids);
        }
        input.offsets.push(input.values.len());
        let bytes: Vec<u8> = w.ids.iter().flat_map(|x| x.to_le_bytes()).collect();
        hashes.push(input_hash_v1(&[(tp.ids.as_str(), bytes, w.ids.len())]));
        for (fi, f) in plan.features.iter().enumerate() {
            let width = f.width;
            let fv = &mut fvals[fi];
            let row = &feats[fi][r * l * width..(r * l + lens[r]) * width];
            match f.req.pooling {
                Pooling::None => {
                    fv.values.extend_from_slice(row);
                    let last = *fv.row_positions.last().unwrap_or(&0);
                    fv.row_positions.push(last + lens[r]);
                }
                pooling => {
                    let pooled: Vec<f32> = match pooling {
                        Pooling::First => row[..width].to_vec(),
                        Pooling::Last => row[row.len() - width..].to_vec(),
                        _ => (0..width)
                            .map(|j| {
                                row.iter().skip(j).step_by(width).sum::<f32>() / lens[r] as f32
                            })
                            .collect(),
                    };
                    fv.values.extend(pooled);
                    fv.row_positions.push(fv.row_positions.len());
                }
            }
        }
    }
    out.targets = Some(t);
    if plan.store_inputs {
        out.inputs.insert(tp.ids.clone(), input);
    }
    out.input_hashes = Some(hashes);
    if user_ids.iter().any(Option::is_some) {
        out.user_ids = Some(user_ids);
    }
    for (f, fv) in plan.features.iter().zip(fvals) {
        out.features.insert(f.req.name.clone(), fv);
    }
    Ok((out, skipped))
}
