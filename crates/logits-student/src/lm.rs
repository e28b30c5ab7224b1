//! The language-model student's room: per-token datasets (rows are token windows, targets are
//! per real token) → batches of right-padded sequences → the transformer student, trained with
//! the same losses, optimizer, metrics and checkpoints as the MLP student.
//!
//! Positions: a row's stored input ids are the window's real tokens and its targets hold one
//! position per token (the teacher's distribution of the *next* token), so padding never
//! reaches a loss. Next-token cross-entropy uses the window's own next token (the last position
//! of a window has none and is left out of that term only).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use logits_format::manifest::{DType, Granularity};
use logits_format::rows::{SampledEntries, TensorValues};
use logits_format::{Dataset, ReadOptions, RowBatch};
use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{FeatureKind, TrainConfig};
use crate::data::{Needs, TeacherRows};
use crate::error::{Result, StudentError};
use crate::losses::{feature, response};
use crate::mlp::Linear;
use crate::optim::Optimizer;
use crate::params::Params;
use crate::train::{Split, Terms, check_against, needs};
use crate::transformer::{EncoderSpec, Frames, Gpt, GptSpec, Tokens};

/// A batch of sequences with their targets (per position, or one per sequence).
#[derive(Debug, Clone)]
pub struct LmBatch {
    /// Row ids.
    pub row_ids: Vec<u64>,
    /// The sequences, right-padded.
    pub tokens: Tokens,
    /// For each stored position (row-major), its row in the logits (`sequence·length + t`;
    /// pooled: the sequence).
    pub pos: Vec<usize>,
    /// The label of each position: the next token (LM), the row's label (pooled encoder).
    pub labels: Vec<Option<u32>>,
    /// Top-k targets per position.
    pub teacher: Option<TeacherRows>,
    /// Sampled targets per position.
    pub sampled: Option<SampledEntries>,
    /// Teacher features per position, `positions × width`.
    pub features: BTreeMap<String, Array2<f32>>,
    /// One target per sequence.
    pub pooled: bool,
}

impl LmBatch {
    /// The dataset row of stored position `k`.
    pub fn row_of(&self, k: usize) -> u64 {
        let seq = if self.pooled {
            self.pos[k]
        } else {
            self.pos[k] / self.tokens.ids.ncols().max(1)
        };
        self.row_ids[seq]
    }
}

/// What the transformer student is on a dataset: decided by the targets and the input.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceKind {
    /// A causal language model: per-position targets over the input's own vocabulary (every
    /// input id is a class), trained with next-token labels. Otherwise an encoder.
    pub lm: bool,
    /// One target per row (a sequence classifier): the encoder pools its positions.
    pub pool: bool,
    /// Token ids the input holds (ids inputs): the tokenizer's vocabulary or the largest
    /// stored id + 1, whichever is larger.
    pub input_vocab: usize,
    /// Float frames (float inputs).
    pub frames: Option<Frames>,
}

/// Reads sequence datasets (token windows, or float rows along a sequence axis) for the
/// transformer student.
#[derive(Debug)]
pub struct LmLoader<'a> {
    ds: &'a Dataset,
    /// The stored input.
    pub input: String,
    /// The target axis (vocabulary or classes).
    pub vocab: usize,
    /// Longest sequence in the dataset (from the build options, else measured), in positions.
    pub window: usize,
    /// Language model or encoder, and its input.
    pub kind: SequenceKind,
    /// Values of one step of the sequence axis (1 for ids).
    step: usize,
    needs: Needs,
    columns: Vec<String>,
}

/// Whether `train` takes the transformer student on `ds`: per-position targets, `model.transformer`,
/// or (with neither convolutions nor an embedding asked for) an input whose shape varies per
/// row, which the MLP cannot take.
pub fn wants_transformer(ds: &Dataset, cfg: &TrainConfig) -> bool {
    let m = ds.manifest();
    if cfg.model.transformer
        || m.targets
            .as_ref()
            .is_some_and(|t| t.granularity == Granularity::Position)
    {
        return true;
    }
    let input = match &cfg.model.input {
        Some(n) => m.inputs.iter().find(|i| &i.name == n),
        None => m.inputs.first().filter(|_| m.inputs.len() == 1),
    };
    cfg.model.conv.is_empty()
        && cfg.model.embed.is_none()
        && input.is_some_and(|i| {
            i.shape
                .iter()
                .any(|d| matches!(d, logits_format::manifest::Dim::Named(_)))
        })
}

/// Integer dtypes: inputs the transformer reads as token ids.
fn is_ids(d: DType) -> bool {
    matches!(
        d,
        DType::Uint32
            | DType::Uint16
            | DType::Uint8
            | DType::Int64
            | DType::Int32
            | DType::Int16
            | DType::Int8
    )
}

impl<'a> LmLoader<'a> {
    /// Checks that `ds` stores sequences (token ids, or a float input with a sequence axis)
    /// with targets and what `needs` asks for, decides what the student is, and prepares the
    /// projection. `input` names the stored input (default: the token ids, else the only one).
    pub fn new(ds: &'a Dataset, input: Option<&str>, needs: Needs) -> Result<LmLoader<'a>> {
        let m = ds.manifest();
        let refuse = |what: String| StudentError::Dataset {
            dataset: ds.root().to_path_buf(),
            what,
        };
        let t = m.targets.as_ref().ok_or_else(|| {
            refuse(
                "the dataset stores no teacher targets; the transformer student needs them".into(),
            )
        })?;
        let per_position = t.granularity == Granularity::Position;
        let listed = || {
            m.inputs
                .iter()
                .map(|i| format!("{:?}", i.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let spec = match input {
            Some(n) => m.inputs.iter().find(|i| i.name == n).ok_or_else(|| {
                refuse(format!("no stored input named {n:?} (stored inputs: {})", listed()))
            })?,
            None => match m.inputs.iter().find(|i| is_ids(i.stored)) {
                Some(i) => i,
                None => match m.inputs.as_slice() {
                    [one] => one,
                    [] => return Err(refuse(
                        "the dataset stores no inputs (built with --no-inputs?); the transformer student reads the stored sequences".into(),
                    )),
                    _ => return Err(refuse(format!(
                        "the dataset stores several inputs ({}); choose one with --input",
                        listed()
                    ))),
                },
            },
        };
        let mut columns = vec![spec.column.clone()];
        columns.extend(crate::data::target_columns(ds, t, &needs)?);
        let frames = if is_ids(spec.stored) {
            None
        } else {
            Some(frames_of(ds, spec, per_position)?)
        };
        let step = frames.as_ref().map_or(1, |f| f.width() / f.patch);
        let (longest, max_id) = scan(ds, &spec.name, &spec.column, step)?;
        let tokenizer = m.tokenizer.as_ref().map_or(0, |t| t.vocab_size as usize);
        let input_vocab = if frames.is_some() {
            0
        } else {
            tokenizer.max(max_id.map_or(0, |x| x as usize + 1))
        };
        let axis = t.axis_size as usize;
        let lm = per_position && frames.is_none() && input_vocab <= axis;
        let pool = !per_position;
        if needs.labels && !lm {
            if !pool || m.labels.is_none() {
                return Err(refuse(format!(
                    "cross-entropy (loss.ce) needs labels, and this dataset has none {}; set loss.ce = 0 (--ce 0)",
                    if pool {
                        "(build with --label-column)"
                    } else {
                        "per position"
                    }
                )));
            }
            columns.push(logits_format::schema::LABEL.into());
        }
        columns.extend(crate::data::feature_columns(ds, &needs, t.granularity)?);
        columns.dedup();
        let patch = frames.as_ref().map_or(1, |f| f.patch);
        let window = match m.corpus.options["window"].as_u64() {
            Some(w) if frames.is_none() => w as usize,
            _ => longest.div_ceil(patch),
        };
        Ok(LmLoader {
            ds,
            input: spec.name.clone(),
            vocab: axis,
            window,
            kind: SequenceKind {
                lm,
                pool,
                input_vocab,
                frames,
            },
            step,
            needs,
            columns,
        })
    }

    /// Streams rows of `range` in batches of `batch` sequences, shuffled with `shuffle`.
    pub fn stream(
        &self,
        range: Option<Range<u64>>,
        batch: usize,
        shuffle: Option<u64>,
        shuffle_buffer: usize,
        prefetch: usize,
    ) -> Result<impl Iterator<Item = Result<LmBatch>> + '_> {
        let mut s = self.ds.stream(&ReadOptions {
            columns: Some(self.columns.clone()),
            batch_size: batch,
            shuffle,
            shuffle_buffer,
            prefetch,
            row_range: range,
        })?;
        Ok(std::iter::from_fn(move || s.next_rows()).map(move |r| self.convert(r?)))
    }

    fn convert(&self, rb: RowBatch) -> Result<LmBatch> {
        let root = || self.ds.root().to_path_buf();
        let bad = |what: String| StudentError::Dataset {
            dataset: root(),
            what,
        };
        let iv = rb
            .inputs
            .get(&self.input)
            .ok_or_else(|| bad(format!("input {:?} was not read", self.input)))?;
        let rows = rb.len();
        let patch = self.kind.frames.as_ref().map_or(1, |f| f.patch);
        let mut lens = Vec::with_capacity(rows);
        for r in 0..rows {
            let n = iv.offsets[r + 1] - iv.offsets[r];
            if !n.is_multiple_of(self.step) || !(n / self.step).is_multiple_of(patch) || n == 0 {
                return Err(bad(format!(
                    "row {}: input {:?} holds {n} values, not a whole number of {} frames of {} steps × {} values",
                    rb.row_ids[r],
                    self.input,
                    if n == 0 { "(any)" } else { "" },
                    patch,
                    self.step
                )));
            }
            lens.push(n / self.step / patch);
        }
        let t = lens.iter().copied().max().unwrap_or(0).max(1);
        let mut ids = Array2::<u32>::zeros((rows, t));
        let mut frames = self
            .kind
            .frames
            .as_ref()
            .map(|f| Array2::<f32>::zeros((rows * t, f.width())));
        let mut pos = Vec::new();
        let mut labels = Vec::new();
        let row_label = |r: usize| {
            rb.labels
                .as_ref()
                .and_then(|l| l[r])
                .and_then(|x| u32::try_from(x).ok())
        };
        for r in 0..rows {
            let span = iv.offsets[r]..iv.offsets[r + 1];
            if let (Some(f), Some(out)) = (&self.kind.frames, frames.as_mut()) {
                let x = f
                    .of_row(&iv.values.to_f32(span), lens[r] * patch)
                    .ok_or_else(|| {
                        bad(format!(
                            "row {}: input {:?} does not fit its shape",
                            rb.row_ids[r], self.input
                        ))
                    })?;
                out.slice_mut(ndarray::s![r * t..r * t + lens[r], ..])
                    .assign(&x);
            } else {
                let v: Vec<u32> = match &iv.values {
                    TensorValues::U32(v) => v[span].to_vec(),
                    other => other.to_f32(span).iter().map(|&x| x as u32).collect(),
                };
                let limit = if self.kind.lm {
                    self.vocab
                } else {
                    self.kind.input_vocab
                };
                if let Some(&big) = v.iter().find(|&&x| x as usize >= limit) {
                    return Err(bad(format!(
                        "row {}: token id {big} is outside the vocabulary of {limit}",
                        rb.row_ids[r]
                    )));
                }
                for (p, &x) in v.iter().enumerate() {
                    ids[[r, p]] = x;
                }
                if self.kind.lm {
                    labels.extend((0..v.len()).map(|p| v.get(p + 1).copied()));
                }
            }
            if self.kind.pool {
                pos.push(r);
                labels.push(row_label(r));
            } else {
                pos.extend((0..lens[r]).map(|p| r * t + p));
                if !self.kind.lm {
                    labels.extend(std::iter::repeat_n(None, lens[r]));
                }
            }
        }
        if let Some(tg) = &rb.targets
            && tg.row_positions.len() == rows + 1
        {
            for (r, (w, &len)) in tg.row_positions.windows(2).zip(&lens).enumerate() {
                let (n, want) = (w[1] - w[0], if self.kind.pool { 1 } else { len });
                if n != want {
                    return Err(bad(format!(
                        "row {}: {n} target positions for {want} {}",
                        rb.row_ids[r],
                        if patch > 1 {
                            "frames"
                        } else if self.kind.pool {
                            "sequence"
                        } else {
                            "positions"
                        }
                    )));
                }
            }
        }
        let (teacher, sampled) = crate::data::split_targets(self.ds, rb.targets, &self.needs);
        let features =
            crate::data::feature_matrices(self.ds, &rb.features, &self.needs, pos.len())?;
        Ok(LmBatch {
            row_ids: rb.row_ids,
            tokens: Tokens { ids, lens, frames },
            pos,
            labels,
            teacher,
            sampled,
            features,
            pooled: self.kind.pool,
        })
    }
}

/// The longest row along the sequence axis (in steps of `step` values) and the largest
/// value of an ids input, reading only the input column.
fn scan(ds: &Dataset, input: &str, column: &str, step: usize) -> Result<(usize, Option<u64>)> {
    let mut s = ds.stream(&ReadOptions {
        columns: Some(vec![column.to_string()]),
        batch_size: 4096,
        ..Default::default()
    })?;
    let (mut longest, mut max_id) = (0, None::<u64>);
    while let Some(rb) = s.next_rows() {
        if let Some(iv) = rb?.inputs.get(input) {
            longest = iv
                .offsets
                .windows(2)
                .map(|w| (w[1] - w[0]) / step.max(1))
                .fold(longest, usize::max);
            if step == 1 {
                let all = iv.values.to_f32(0..*iv.offsets.last().unwrap_or(&0));
                if let Some(m) = all.iter().copied().reduce(f32::max) {
                    let m = m.max(0.0) as u64;
                    max_id = Some(max_id.map_or(m, |x| x.max(m)));
                }
            }
        }
    }
    Ok((longest, max_id))
}

/// How a float input's rows become frames: the sequence axis is the shape's one variable
/// dimension (else the last of a rank-3 `[C, H, W]`, the first otherwise); with per-position
/// targets the patch is what makes the frames as many as the first row's positions.
fn frames_of(
    ds: &Dataset,
    spec: &logits_format::manifest::InputSpec,
    per_position: bool,
) -> Result<Frames> {
    use logits_format::manifest::Dim;
    let refuse = |what: String| StudentError::Dataset {
        dataset: ds.root().to_path_buf(),
        what,
    };
    let variable: Vec<usize> = (0..spec.shape.len())
        .filter(|&i| matches!(spec.shape[i], Dim::Named(_)))
        .collect();
    let axis = match (variable.as_slice(), spec.shape.len()) {
        ([a], _) => *a,
        ([], 3) => 2,
        ([], r) if r > 0 => 0,
        _ => {
            return Err(refuse(format!(
                "input {:?} of shape {:?}: the transformer student reads one sequence axis (one variable dimension, or a fixed [T, F] / [C, H, W] row)",
                spec.name, spec.shape
            )));
        }
    };
    let shape: Vec<usize> = spec
        .shape
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(n) if i != axis => *n as usize,
            _ => 0,
        })
        .collect();
    let mut f = Frames {
        input: spec.name.clone(),
        shape,
        axis,
        patch: 1,
    };
    if per_position {
        let step = f.width();
        let mut s = ds.stream(&ReadOptions {
            columns: None,
            batch_size: 1,
            ..Default::default()
        })?;
        if let Some(rb) = s.next_rows() {
            let rb = rb?;
            let len = rb
                .inputs
                .get(&spec.name)
                .map_or(0, |iv| iv.offsets[1] - iv.offsets[0])
                / step.max(1);
            let n = rb
                .targets
                .as_ref()
                .map_or(0, |tg| tg.row_positions[1] - tg.row_positions[0]);
            if n == 0 || !len.is_multiple_of(n) {
                return Err(refuse(format!(
                    "row {}: input {:?} is {len} steps long along axis {axis} but has {n} target positions; the per-position student needs a whole number of steps per position",
                    rb.row_ids.first().copied().unwrap_or(0),
                    spec.name
                )));
            }
            f.patch = len / n;
        }
    }
    Ok(f)
}

/// The trainable language-model student: the transformer and its training-only projections.
#[derive(Debug, Clone, PartialEq)]
pub struct LmStudent {
    /// The model that is exported.
    pub gpt: Gpt,
    /// Hidden-state projections, aligned with the run's feature losses.
    pub projections: Vec<Option<Linear>>,
}

impl LmStudent {
    /// A zero student of the same shape.
    pub fn zeros_like(&self) -> LmStudent {
        LmStudent {
            gpt: self.gpt.zeros_like(),
            projections: self
                .projections
                .iter()
                .map(|p| p.as_ref().map(Linear::zeros_like))
                .collect(),
        }
    }
}

impl Params for LmStudent {
    fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut out = self.gpt.tensors();
        for (i, p) in self.projections.iter().enumerate() {
            if let Some(l) = p {
                out.push((
                    format!("proj.{i}.weight"),
                    l.w.shape().to_vec(),
                    crate::mlp::slice(&l.w),
                ));
                out.push((
                    format!("proj.{i}.bias"),
                    vec![l.b.len()],
                    crate::mlp::slice1(&l.b),
                ));
            }
        }
        out
    }

    fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out = self.gpt.tensors_mut();
        for l in self.projections.iter_mut().flatten() {
            out.push(crate::mlp::slice_mut(&mut l.w));
            out.push(crate::mlp::slice1_mut(&mut l.b));
        }
        out
    }
}

/// What a language-model student file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmInfo {
    /// `gpt` (a causal language model) or `encoder`.
    pub kind: String,
    /// The shape.
    pub spec: GptSpec,
    /// The dataset it was trained from.
    pub dataset_id: String,
    /// sha256 of the teacher that produced that dataset.
    pub teacher_sha256: String,
    /// The stored input it reads (absent in files from before encoders: the token ids).
    #[serde(default)]
    pub input: Option<String>,
}

/// Whether a student file's `kind` is one of the transformer students.
pub fn is_transformer(kind: &str) -> bool {
    matches!(kind, "gpt" | "encoder")
}

/// The transformer shape `cfg` asks for on what `loader` reads.
pub fn gpt_spec(cfg: &TrainConfig, loader: &LmLoader) -> GptSpec {
    let k = &loader.kind;
    GptSpec {
        vocab: if k.lm { loader.vocab } else { k.input_vocab },
        context: cfg.lm.context.unwrap_or(loader.window.max(1)),
        dim: cfg.lm.dim,
        layers: cfg.lm.layers,
        heads: cfg.lm.heads,
        // An encoder's head maps to the classes: never the embedding's transpose.
        tied: cfg.lm.tied && k.lm,
        encoder: (!k.lm).then(|| EncoderSpec {
            classes: loader.vocab,
            pool: k.pool,
            frames: k.frames.clone(),
        }),
    }
}

/// Loss and gradient of one batch (fills `grad`, zeroed first).
pub fn loss_and_grad(
    s: &LmStudent,
    grad: &mut LmStudent,
    b: &LmBatch,
    cfg: &TrainConfig,
    sampled_t: f64,
    step: u64,
) -> Result<Terms> {
    grad.zero();
    let (logits, cache) = s.gpt.forward(&b.tokens);
    let v = logits.ncols();
    let mut dlogits = Array2::<f32>::zeros(logits.raw_dim());
    let n = b.pos.len().max(1) as f64;
    let t = cfg.loss.temperature;
    let mut terms = Terms::default();
    let nonfinite = |term: &str, row: Option<u64>| StudentError::NonFinite {
        step,
        term: term.to_string(),
        row,
    };
    let row_of = |k: usize| b.row_of(k);
    // Response terms, position by position in parallel: each position writes only its own
    // row of ∂L/∂logits and the sums are taken in position order afterwards, so the result
    // does not depend on the thread count.
    let nl = b.labels.iter().flatten().count().max(1) as f64;
    let kd_on = cfg.loss.kd > 0.0 && b.teacher.is_some();
    let ce_on = cfg.loss.ce > 0.0;
    let sampled_on = cfg.loss.sampled > 0.0 && b.sampled.is_some();
    let (div, mode) = (cfg.divergence(), cfg.topk_mode());
    let mut slots: Vec<Option<&mut [f32]>> = dlogits
        .as_slice_mut()
        .map(|d| d.chunks_mut(v).map(Some).collect())
        .unwrap_or_default();
    let mut work: Vec<(usize, &mut [f32])> = Vec::with_capacity(b.pos.len());
    for (k, &f) in b.pos.iter().enumerate() {
        if let Some(row) = slots.get_mut(f).and_then(Option::take) {
            work.push((k, row));
        }
    }
    let per_position = |(k, g): &mut (usize, &mut [f32])| -> Result<(f64, f64, f64)> {
        let k = *k;
        let srow = logits.row(b.pos[k]);
        let srow = srow.as_slice().unwrap_or(&[]);
        let (mut kd, mut ce, mut sm) = (0.0, 0.0, 0.0);
        // At T = 1 the KD and CE terms share one softmax over the vocabulary.
        let q1 = (kd_on && ce_on && t == 1.0).then(|| response::softmax(srow, 1.0));
        if kd_on && let Some(tr) = &b.teacher {
            let lp = match mode {
                response::TopKMode::TailBucket => tr
                    .logprobs(k, t)
                    .ok_or_else(|| StudentError::Config(format!("logZ at T={t} is not stored")))?,
                response::TopKMode::Renormalize => tr.renormalised_logprobs(k, t),
            };
            if lp.iter().any(|x| !x.is_finite()) {
                return Err(nonfinite("teacher targets", Some(row_of(k))));
            }
            let ids = tr.ids(k);
            if ids.iter().any(|&i| i as usize >= v) {
                return Err(StudentError::Config(format!(
                    "row {}: a target id is outside the vocabulary",
                    row_of(k)
                )));
            }
            let teacher = response::TeacherTargets { ids, logprobs: &lp };
            let w = cfg.loss.kd / n;
            kd = match &q1 {
                Some(q) => response::response_loss_q(q, teacher, t, div, mode, w, g),
                None => response::response_loss(srow, teacher, t, div, mode, w, g),
            };
        }
        if ce_on && let Some(l) = b.labels[k] {
            let w = cfg.loss.ce / nl;
            ce = match &q1 {
                Some(q) => response::cross_entropy_q(q, l as usize, w, g),
                None => response::cross_entropy(srow, l as usize, w, g),
            };
        }
        if sampled_on && let Some(smp) = &b.sampled {
            let (a, e) = (smp.offsets[k], smp.offsets[k + 1]);
            sm = response::sampled_kd(
                srow,
                &smp.ids[a..e],
                &smp.counts[a..e],
                sampled_t,
                cfg.loss.sampled / n,
                g,
            );
        }
        Ok((kd, ce, sm))
    };
    use rayon::prelude::*;
    let parts: Vec<Result<(f64, f64, f64)>> = work.par_iter_mut().map(per_position).collect();
    let (mut kd, mut ce, mut sm) = (0.0, 0.0, 0.0);
    for p in parts {
        let (a, c, e) = p?;
        kd += a;
        ce += c;
        sm += e;
    }
    if kd_on {
        terms.parts.push(("kd".into(), kd / n));
        terms.total += cfg.loss.kd * kd / n;
    }
    if ce_on {
        terms.parts.push(("ce".into(), ce / nl));
        terms.total += cfg.loss.ce * ce / nl;
    }
    if sampled_on {
        terms.parts.push(("sampled".into(), sm / n));
        terms.total += cfg.loss.sampled * sm / n;
    }
    let mut dhidden: Option<Array2<f32>> = None;
    for (i, f) in cfg.loss.features.iter().enumerate() {
        let w = f.weight();
        let target = b
            .features
            .get(&f.feature)
            .ok_or_else(|| StudentError::Config(format!("feature {:?} not loaded", f.feature)))?;
        let (Some(p), Some(gp)) = (&s.projections[i], &mut grad.projections[i]) else {
            return Err(StudentError::Config("feature projection missing".into()));
        };
        let h = cache.hidden.select(ndarray::Axis(0), &b.pos);
        let y = p.forward(h.view());
        let mut dy = Array2::<f32>::zeros(y.raw_dim());
        let (ys, ts) = (
            y.as_slice().unwrap_or(&[]),
            target.as_slice().unwrap_or(&[]),
        );
        let l = if f.kind == FeatureKind::Hint {
            feature::mse(ys, ts, w, dy.as_slice_mut().unwrap_or(&mut []))
        } else {
            feature::cosine(
                ys,
                ts,
                target.ncols(),
                w,
                dy.as_slice_mut().unwrap_or(&mut []),
            )
        };
        let dh = p.backward(h.view(), dy.view(), gp);
        let acc = dhidden.get_or_insert_with(|| Array2::zeros(cache.hidden.raw_dim()));
        for (k, &row) in b.pos.iter().enumerate() {
            let mut r = acc.row_mut(row);
            r += &dh.row(k);
        }
        terms.parts.push((
            format!(
                "{}:{}",
                serde_json::to_value(f.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                f.feature
            ),
            l,
        ));
        terms.total += w * l;
    }
    if !terms.total.is_finite() {
        return Err(nonfinite("total", None));
    }
    s.gpt.backward(
        &b.tokens,
        &cache,
        dlogits.view(),
        dhidden.as_ref(),
        &mut grad.gpt,
    );
    Ok(terms)
}

/// Held-out quality of a language-model student against its teacher.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LmEvaluation {
    /// Windows evaluated.
    pub rows: usize,
    /// Positions with a teacher target.
    pub positions: usize,
    /// exp(mean cross-entropy against the labels: the next token where the window holds it
    /// (LM), the row's label (a labelled sequence classifier)); None without labels.
    pub perplexity: Option<f64>,
    /// A lower bound on the teacher's perplexity on the same tokens, from its stored targets:
    /// exact where the next token is among the kept ids; elsewhere its probability is bounded
    /// by the smaller of the tail mass and the last kept probability (no unkept id can exceed
    /// either). The teacher's exact perplexity is in its fixture's FIXTURES.json.
    pub teacher_perplexity_at_least: Option<f64>,
    /// Share of next tokens among the teacher's kept ids.
    pub teacher_topk_coverage: Option<f64>,
    /// Share of positions where the student's top-1 is the teacher's.
    pub agreement: Option<f64>,
    /// Mean KL(teacher‖student) at T = 1 over the kept ids plus the exact tail bucket.
    pub kl: Option<f64>,
}

/// Evaluates `gpt` on the batches of a split.
pub fn evaluate(gpt: &Gpt, batches: &[LmBatch]) -> LmEvaluation {
    let (mut ce, mut nce, mut tce, mut agree, mut kl, mut npos, mut rows) =
        (0.0, 0usize, 0.0, 0usize, 0.0, 0usize, 0usize);
    let mut have_teacher = false;
    let mut covered = 0usize;
    for b in batches {
        rows += b.row_ids.len();
        let logits = gpt.predict(&b.tokens);
        for (k, &f) in b.pos.iter().enumerate() {
            let row = logits.row(f).to_vec();
            let q = response::softmax(&row, 1.0);
            npos += 1;
            if let Some(l) = b.labels[k] {
                ce -= q[l as usize].max(1e-30).ln();
                nce += 1;
            }
            if let Some(tr) = &b.teacher {
                have_teacher = true;
                let ids = tr.ids(k);
                let lp = tr
                    .logprobs(k, 1.0)
                    .unwrap_or_else(|| tr.renormalised_logprobs(k, 1.0));
                let top = (0..row.len()).fold(0, |bi, i| if row[i] > row[bi] { i } else { bi });
                agree += (ids.first().map(|&i| i as usize) == Some(top)) as usize;
                let (d, pt) = crate::eval::kl_tail_bucket(&q, ids, &lp);
                kl += d;
                if let Some(l) = b.labels[k] {
                    let last = lp.iter().copied().fold(f64::INFINITY, f64::min).exp();
                    let p = match ids.iter().position(|&i| i == l) {
                        Some(j) => {
                            covered += 1;
                            lp[j].exp()
                        }
                        None => pt.min(last),
                    };
                    tce -= p.max(1e-30).ln();
                }
            }
        }
    }
    let npos_f = npos.max(1) as f64;
    LmEvaluation {
        rows,
        positions: npos,
        perplexity: (nce > 0).then(|| (ce / nce as f64).exp()),
        teacher_perplexity_at_least: (have_teacher && nce > 0).then(|| (tce / nce as f64).exp()),
        teacher_topk_coverage: (have_teacher && nce > 0).then(|| covered as f64 / nce as f64),
        agreement: have_teacher.then(|| agree as f64 / npos_f),
        kl: have_teacher.then(|| kl / npos_f),
    }
}

/// The result of a language-model run.
#[derive(Debug, Clone)]
pub struct LmRun {
    /// The trained student.
    pub student: LmStudent,
    /// Its description.
    pub info: LmInfo,
    /// Steps taken.
    pub steps: u64,
    /// The last metrics line.
    pub last: Option<Value>,
}

/// Loads the held-out (or, without a split, all) windows for evaluation.
pub fn load_split(loader: &LmLoader, range: Option<Range<u64>>) -> Result<Vec<LmBatch>> {
    let mut out = Vec::new();
    for b in loader.stream(range, 16, None, 0, 2)? {
        out.push(b?);
    }
    Ok(out)
}

/// Trains the transformer student on a per-token dataset; the same contract as
/// [`crate::train::train`] (metrics, checkpoints, exact resume, refusals).
pub fn train(
    ds: &Dataset,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    on_log: &mut dyn FnMut(u64, u64, &Value),
) -> Result<LmRun> {
    cfg.check()?;
    cfg.check_lm()?;
    check_against(ds, cfg)?;
    let split = Split::of(ds, cfg);
    let loader = LmLoader::new(ds, cfg.model.input.as_deref(), needs(cfg))?;
    let m = ds.manifest();
    let rows = crate::train::count_rows(ds, split.train.clone())?;
    if loader.kind.pool && !cfg.loss.features.is_empty() {
        return Err(StudentError::Config(
            "feature losses distil per-position hidden states; this dataset's targets are one per sequence (drop the feature loss)".into(),
        ));
    }
    if rows == 0 {
        return Err(StudentError::Dataset {
            dataset: ds.root().to_path_buf(),
            what: "no training rows".into(),
        });
    }
    let spec = gpt_spec(cfg, &loader);
    let info = LmInfo {
        kind: if spec.encoder.is_some() {
            "encoder"
        } else {
            "gpt"
        }
        .into(),
        spec: spec.clone(),
        dataset_id: m.dataset_id.clone(),
        teacher_sha256: m.teacher.sha256.clone(),
        input: Some(loader.input.clone()),
    };
    let meta = crate::student::metadata(&info)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x005e_ed0f_9e07);
    let mut projections = Vec::new();
    for f in &cfg.loss.features {
        let fs = m
            .features
            .iter()
            .find(|s| s.name == f.feature)
            .ok_or_else(|| StudentError::Dataset {
                dataset: ds.root().to_path_buf(),
                what: format!("no teacher feature named {:?}", f.feature),
            })?;
        projections.push(Some(Linear::glorot(spec.dim, fs.width(), &mut rng)));
    }
    // Embedding (+ untied head) and per block: attention 4d² and MLP 8d², with biases.
    let (v, c, d, l) = (
        spec.input_rows().max(spec.outputs()) as u64,
        spec.context as u64,
        spec.dim as u64,
        spec.layers as u64,
    );
    let head = if spec.head_tied() {
        0
    } else {
        v.saturating_mul(d)
    };
    let params = v
        .saturating_mul(d)
        .saturating_add(c.saturating_mul(d))
        .saturating_add(head)
        .saturating_add(l.saturating_mul(d.saturating_mul(d).saturating_mul(12)));
    crate::train::check_fits(params, logits_format::host::available_memory())?;
    let fresh = LmStudent {
        gpt: Gpt::new(spec, cfg.seed),
        projections,
    };
    let bs = cfg.data.batch_size as u64;
    let per_epoch = rows.div_ceil(bs);
    let total = cfg.data.steps.unwrap_or(per_epoch * cfg.data.epochs);
    let mut opt = Optimizer::new(
        cfg.method(),
        cfg.schedule(total),
        cfg.optim.weight_decay,
        cfg.optim.clip_norm,
        &fresh,
    );
    let (dir, latest, _lock) = crate::train::open_run_dir(out, resume)?;
    let (mut s, (epoch, skip), mut rec) = crate::train::start_run(
        &dir,
        latest.as_deref(),
        &fresh,
        &mut opt,
        cfg,
        m,
        meta,
        (per_epoch, total, rows),
        "tokens_per_s",
    )?;
    let sampled_t = m
        .targets
        .as_ref()
        .and_then(|t| t.sampled.as_ref())
        .map_or(1.0, |s| s.temperature);
    let mut grad = s.zeros_like();
    crate::train::run_epochs(
        total,
        opt.step,
        (epoch, skip),
        |epoch| {
            loader.stream(
                split.train.clone(),
                cfg.data.batch_size,
                Some(cfg.seed.wrapping_add(epoch)),
                cfg.data.shuffle_buffer,
                cfg.data.prefetch,
            )
        },
        |b, position| {
            let terms = loss_and_grad(&s, &mut grad, &b, cfg, sampled_t, opt.step)?;
            let si = opt.step(&mut s, &grad);
            rec.step(&s, &opt, si, &terms, position, b.pos.len() as u64, on_log)?;
            Ok(opt.step)
        },
    )?;
    Ok(LmRun {
        student: s,
        info,
        steps: opt.step,
        last: rec.last,
    })
}

/// Loads a transformer student file (the exported `student.safetensors`).
pub fn load(path: &Path) -> Result<(Gpt, LmInfo)> {
    let info: LmInfo = crate::student::read_info(path)?;
    if !is_transformer(&info.kind) {
        return Err(StudentError::Checkpoint {
            path: path.to_path_buf(),
            why: format!("a {:?} student, not a transformer", info.kind),
        });
    }
    let mut g = Gpt::new(info.spec.clone(), 0);
    crate::student::load_into(path, &mut g)?;
    Ok((g, info))
}

/// How [`generate`] picks each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches p (1: all).
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// Tokens to add at most.
    pub max_tokens: usize,
    /// Stop after this token (the tokenizer's end of sequence), when given.
    pub stop: Option<u32>,
}

/// Continues `prompt` with tokens sampled from `gpt` (seeded, so repeatable).
pub fn generate(gpt: &Gpt, prompt: &[u32], s: &Sampling) -> Vec<u32> {
    use rand::RngExt;
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut ids = prompt.to_vec();
    for _ in 0..s.max_tokens {
        let logits = gpt.next_logits(&ids);
        let next = if s.temperature <= 0.0 {
            (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b })
        } else {
            let p = response::softmax(&logits, s.temperature);
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            if s.top_k > 0 {
                order.truncate(s.top_k);
            }
            let mut kept = Vec::new();
            let mut mass = 0.0;
            for i in order {
                kept.push(i);
                mass += p[i];
                if mass >= s.top_p {
                    break;
                }
            }
            let mut u = rng.random::<f64>() * mass;
            let mut pick = kept[kept.len() - 1];
            for &i in &kept {
                u -= p[i];
                if u <= 0.0 {
                    pick = i;
                    break;
                }
            }
            pick
        };
        ids.push(next as u32);
        if Some(next as u32) == s.stop {
            break;
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let g = Gpt::new(
            GptSpec {
                vocab: 50,
                context: 16,
                dim: 8,
                layers: 1,
                heads: 2,
                tied: true,
                encoder: None,
            },
            1,
        );
        let s = Sampling {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 3,
            max_tokens: 10,
            stop: None,
        };
        let greedy = generate(
            &g,
            &[1, 2],
            &Sampling {
                temperature: 0.0,
                ..s
            },
        );
        // top-k 1 is greedy whatever the seed.
        assert_eq!(generate(&g, &[1, 2], &s), greedy);
        let wide = Sampling { top_k: 0, ..s };
        assert_eq!(generate(&g, &[1, 2], &wide), generate(&g, &[1, 2], &wide));
        assert_ne!(
            generate(&g, &[1, 2], &wide),
            generate(&g, &[1, 2], &Sampling { seed: 4, ..wide })
        );
        assert_eq!(greedy.len(), 12);
    }
}
