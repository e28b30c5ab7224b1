//! Sequence datasets for the transformer students: rows of token ids (LM windows, text for
//! classifiers) or float rows read along a sequence axis (spectrograms, text-line images) →
//! right-padded batches with their targets, per position or one per row; and what the
//! student must be on a dataset ([`SequenceKind`]: a causal LM, or an encoder, pooled or
//! not, over ids or frames).
//!
//! Positions: a row's stored input ids are the window's real tokens and its targets hold one
//! position per token (for an LM, the teacher's distribution of the *next* token), so padding
//! never reaches a loss. Next-token cross-entropy uses the window's own next token (the last
//! position of a window has none and is left out of that term only). Float rows are cut into
//! frames of `patch` steps, as many as the row's target positions.

use std::collections::BTreeMap;
use std::ops::Range;

use logits_format::manifest::Granularity;
use logits_format::rows::{SampledEntries, TensorValues};
use logits_format::{Dataset, ReadOptions, RowBatch};
use ndarray::Array2;

use crate::config::TrainConfig;
use crate::data::{Needs, TeacherRows};
use crate::error::{Result, StudentError};
use crate::transformer::{Frames, Tokens};

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
            None => match m.inputs.iter().find(|i| i.stored.is_integer()) {
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
        let frames = if spec.stored.is_integer() {
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
            part: None,
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
