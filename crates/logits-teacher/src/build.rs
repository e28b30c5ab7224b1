//! The build pipeline: corpus → teacher → targets and features → shards.
//!
//! Four stages overlap, joined by bounded channels so memory does not grow with the corpus:
//! a reader thread cuts each shard's row range into batches; `sessions` worker threads each own
//! one ONNX Runtime session (ONNX Runtime's advice: one session per thread) and only run
//! batches; as many post-processing workers turn each batch's outputs into targets and
//! features (rayon over rows) while its session already runs the next batch; the calling
//! thread puts results back in order and writes shards through the format library. The shard
//! plan (rows per shard) and the batch cut within a shard depend only on the options, so the
//! output is identical whatever the number of sessions or threads.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use logits_format::manifest::*;
use logits_format::rows::{
    FeatureValues, InputValues, RowBatch, Targets, TensorValues, input_hash_v1,
};
use logits_format::targets::{position_targets, position_targets_ahead, sample_counts};
use logits_format::writer::{self, CreateMode, DatasetWriter, WriteOptions};
use logits_onnx::model::{Dim as ODim, ElemType};
use logits_onnx::surgery::OutputKind;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::corpus::{ColumnMap, CorpusBatch, Flat, TensorCorpus};
use crate::error::{Result, TeacherError};
use crate::teacher::TeacherModel;
use crate::text::{TextCorpus, TextSource, Window};

/// A feature to capture.
#[derive(Debug, Clone)]
pub struct FeatureRequest {
    /// Short name (column `feat_<name>`).
    pub name: String,
    /// Tensor name in the graph (an output or any intermediate tensor).
    pub tensor: String,
    /// Storage encoding.
    pub encoding: FeatureEncoding,
    /// For per-token tensors of language models: pool over real tokens, or keep per position.
    pub pooling: Pooling,
}

/// Text corpus options (language-model teachers).
#[derive(Debug, Clone)]
pub struct TextOptions {
    /// The Hugging Face `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// JSONL field or Parquet column holding the text.
    pub field: String,
    /// Tokens per window.
    pub window: usize,
    /// Tokens between window starts.
    pub stride: usize,
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The ONNX teacher.
    pub model: PathBuf,
    /// Corpus files, in row-id order.
    pub corpus: Vec<PathBuf>,
    /// How the manifest names the corpus files, when not by `corpus` (the URLs they were
    /// fetched from); empty: by their paths.
    pub corpus_names: Vec<String>,
    /// Text corpus options; None: the corpus is Parquet tensor columns.
    pub text: Option<TextOptions>,
    /// Column mapping.
    pub columns: ColumnMap,
    /// Output dataset directory.
    pub out: PathBuf,
    /// Target output name (default: the only float output with a class axis).
    pub target: Option<String>,
    /// Entries kept per position (the maximum, with adaptive k).
    pub k: u32,
    /// Adaptive k: (min k, cumulative mass).
    pub adaptive: Option<(u32, f64)>,
    /// Extra temperatures at which logZ is stored.
    pub temperatures: Vec<f64>,
    /// Value encoding.
    pub values: ValueEncoding,
    /// Sampled targets.
    pub sample: Option<SampledSpec>,
    /// Features to capture.
    pub features: Vec<FeatureRequest>,
    /// Store the model inputs in the shards.
    pub store_inputs: bool,
    /// Treat the target output as probabilities even if no softmax is visible in the graph.
    pub output_is_probability: bool,
    /// Rows per shard.
    pub rows_per_shard: u64,
    /// Rows per teacher run.
    pub batch_size: usize,
    /// ONNX Runtime sessions (one per worker thread).
    pub sessions: usize,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// What to do with an existing output directory.
    pub mode: CreateMode,
    /// This worker's index and the number of workers (job arrays); None: all shards here.
    pub worker: Option<(u32, u32)>,
    /// Leave out rows whose teacher output is not finite (counted in the manifest).
    pub skip_non_finite: bool,
    /// Shard file options.
    pub write: WriteOptions,
    /// License/usage terms of the teacher's outputs.
    pub license: Option<String>,
    /// Free notes.
    pub notes: Option<String>,
    /// Split name recorded in the manifest.
    pub split: Option<String>,
    /// Row ids at or above this are declared held out.
    pub holdout_from: Option<u64>,
    /// Polled by the pipeline: once set (by SIGINT/SIGTERM in the binary), the build stops at
    /// the next batch, keeps the shards already complete and returns
    /// [`TeacherError::Interrupted`].
    pub stop: Option<&'static AtomicBool>,
}

impl BuildOptions {
    /// Checks the options that do not depend on the model or the corpus: counts at least 1,
    /// temperatures finite, positive and distinct, levels and masses in range. The message
    /// names the command-line flag, so the binary can report it as a usage error.
    pub fn check(&self) -> std::result::Result<(), String> {
        let at_least_one = [
            ("--batch-size", self.batch_size as u64),
            ("--rows-per-shard", self.rows_per_shard),
            ("--sessions", self.sessions as u64),
            ("--threads", self.intra_threads as u64),
            ("-k/--k", self.k as u64),
        ];
        for (flag, v) in at_least_one {
            if v == 0 {
                return Err(format!("{flag} must be at least 1 (got 0)"));
            }
        }
        if let Some(t) = &self.text {
            if t.window == 0 || t.stride == 0 {
                return Err("--window and --stride must be at least 1".into());
            }
            if t.stride > t.window {
                return Err(format!(
                    "--stride {} is larger than --window {}: tokens between windows would get no target",
                    t.stride, t.window
                ));
            }
        }
        let mut seen: Vec<f64> = Vec::new();
        for &t in &self.temperatures {
            if !t.is_finite() || t <= 0.0 {
                return Err(format!(
                    "--temperatures: {t} is not a positive finite temperature"
                ));
            }
            if t == 1.0 {
                return Err(
                    "--temperatures: 1 is always stored; list only extra temperatures".into(),
                );
            }
            if seen.contains(&t) {
                return Err(format!("--temperatures: {t} is listed twice"));
            }
            seen.push(t);
        }
        if let Some((min, mass)) = self.adaptive {
            if min == 0 || min > self.k {
                return Err(format!(
                    "--adaptive-k {min}:{mass}: MIN must be between 1 and k ({})",
                    self.k
                ));
            }
            if !(mass > 0.0 && mass <= 1.0) {
                return Err(format!("--adaptive-k {min}:{mass}: MASS must be in (0, 1]"));
            }
        }
        if let Some(sp) = &self.sample {
            if sp.draws == 0 {
                return Err(
                    "--sample must be at least 1 (leave it out for no sampled targets)".into(),
                );
            }
            if !sp.temperature.is_finite() || sp.temperature <= 0.0 {
                return Err(format!(
                    "--sample-temperature {} is not a positive finite temperature",
                    sp.temperature
                ));
            }
        }
        if !(1..=22).contains(&self.write.zstd_level) {
            return Err(format!(
                "--zstd-level {} is outside 1..=22",
                self.write.zstd_level
            ));
        }
        if self.write.row_group_rows == 0 {
            return Err("rows per row group must be at least 1".into());
        }
        if let Some((i, n)) = self.worker
            && (n == 0 || i >= n)
        {
            return Err(format!("worker index {i} is not below --num-workers {n}"));
        }
        Ok(())
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            model: PathBuf::new(),
            corpus: vec![],
            corpus_names: vec![],
            text: None,
            columns: ColumnMap::default(),
            out: PathBuf::new(),
            target: None,
            k: 8,
            adaptive: None,
            temperatures: vec![],
            values: ValueEncoding::F32,
            sample: None,
            features: vec![],
            store_inputs: true,
            output_is_probability: false,
            rows_per_shard: 100_000,
            batch_size: 64,
            sessions: 1,
            intra_threads: 1,
            mode: CreateMode::New,
            worker: None,
            skip_non_finite: false,
            write: WriteOptions::default(),
            license: None,
            notes: None,
            split: None,
            holdout_from: None,
            stop: None,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// Rows the corpus holds.
    pub corpus_rows: u64,
    /// Shards in the plan.
    pub plan_shards: u32,
    /// Shards written by this run.
    pub shards_written: u32,
    /// Shards found complete and kept.
    pub shards_kept: u32,
    /// Rows written by this run.
    pub rows_written: u64,
    /// Rows skipped for non-finite outputs by this run.
    pub rows_skipped: u64,
    /// Wall time.
    pub seconds: f64,
    /// Shards recorded as complete by an earlier run but found missing or damaged, and
    /// written again by this one (with what was wrong).
    pub healed: Vec<(u32, String)>,
    /// The manifest, when this run committed the dataset.
    pub manifest: Option<Manifest>,
    /// Peak resident memory of the process so far (Linux; None elsewhere).
    pub peak_rss_bytes: Option<u64>,
}

/// Peak resident set size of this process (VmHWM), where /proc tells it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn dtype_of(e: ElemType) -> Option<DType> {
    Some(match e {
        ElemType::Float32 => DType::Float32,
        ElemType::Float64 => DType::Float64,
        ElemType::Float16 => DType::Float16,
        ElemType::Int64 => DType::Int64,
        ElemType::Int32 => DType::Int32,
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

/// The corpus, of either kind.
enum Source {
    Tensor(TensorCorpus),
    Text(Box<TextCorpus>),
}

/// A batch of corpus rows, of either kind.
enum Payload {
    Tensor(CorpusBatch),
    Text(Vec<Window>),
}

impl Source {
    fn rows(&self) -> u64 {
        match self {
            Source::Tensor(c) => c.rows(),
            Source::Text(c) => c.rows(),
        }
    }

    fn fingerprint(&self) -> Result<(Vec<Source_>, String)> {
        match self {
            Source::Tensor(c) => Ok(c.fingerprint()?),
            Source::Text(c) => c.fingerprint(),
        }
    }

    fn read_each(
        &self,
        range: std::ops::Range<u64>,
        batch: usize,
        mut each: impl FnMut(Payload) -> bool,
    ) -> Result<()> {
        match self {
            Source::Tensor(c) => Ok(c.read_each(range, batch, |b| each(Payload::Tensor(b)))?),
            Source::Text(c) => c.read_each(range, batch, |w| each(Payload::Text(w))),
        }
    }
}

type Source_ = logits_format::manifest::Source;

/// How a language model's inputs are fed from token windows.
#[derive(Debug, Clone)]
struct TextPlan {
    ids: String,
    mask: Option<String>,
    positions: Option<String>,
    zeros: Vec<String>,
    pad: i64,
}

/// One model input as the pipeline feeds it.
#[derive(Debug, Clone)]
struct InputPlan {
    name: String,
    /// The model's element type for this input (the corpus is converted to it).
    elem: ElemType,
    /// Float inputs are read and stored as f32, integer and bool ones as i64 (exact for every
    /// accepted type).
    float: bool,
    /// Fixed per-row dims (after the batch axis), when all are fixed.
    row_dims: Option<Vec<usize>>,
}

/// What every worker needs, shared read-only.
struct Plan {
    teacher: TeacherModel,
    inputs: Vec<InputPlan>,
    target: String,
    kind: OutputKind,
    axis: usize,
    k: usize,
    adaptive: Option<(usize, f64)>,
    temps: Vec<f64>,
    sample: Option<SampledSpec>,
    features: Vec<(FeatureRequest, usize)>,
    store_inputs: bool,
    skip_non_finite: bool,
    text: Option<TextPlan>,
    /// Set once a batch of the target has been checked for probabilities written as logits.
    kind_checked: AtomicBool,
}

/// Runs a build (or this worker's part of it), committing the manifest when every shard of
/// the plan is complete. `progress(rows_done, rows_total)` is called as batches are written.
pub fn build(o: &BuildOptions, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<BuildReport> {
    let t0 = Instant::now();
    o.check().map_err(TeacherError::Options)?;
    let tensors: Vec<String> = o.features.iter().map(|f| f.tensor.clone()).collect();
    let teacher = TeacherModel::open(&o.model, &tensors)?;
    let target = teacher.target_output(o.target.as_deref())?.clone();
    let axis = TeacherModel::axis_size(&target).ok_or_else(|| {
        TeacherError::Options(format!(
            "{}: output {:?} has no fixed class axis ({})",
            o.model.display(),
            target.name,
            target.describe()
        ))
    })?;
    if o.k == 0 || o.k as u64 > axis {
        return Err(TeacherError::Options(format!(
            "k = {} but output {:?} has {axis} classes: k must be between 1 and {axis}",
            o.k, target.name
        )));
    }
    let mut kind = teacher.kind(&target.name);
    if kind == OutputKind::Sigmoid {
        return Err(TeacherError::Options(format!(
            "{}: output {:?} ends in a Sigmoid: independent per-class probabilities (a multi-label classifier), not one distribution over classes, so top-k targets with a shared logZ do not describe it; per-class binary targets are not supported yet",
            o.model.display(),
            target.name
        )));
    }
    // How the output kind was decided, recorded in the manifest's build section.
    let mut kind_from = match kind {
        OutputKind::Logits => {
            "logits: no softmax found in the graph; the first batch was checked not to be probabilities"
        }
        OutputKind::LogSoftmax => "log-probabilities: the graph ends in a log-softmax",
        _ => "probabilities: the graph ends in a softmax",
    };
    if o.output_is_probability && kind == OutputKind::Logits {
        kind = OutputKind::Softmax;
        kind_from = "probabilities: --output-is-probability";
    }
    let input_names: Vec<String> = teacher
        .summary
        .inputs
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let corpus = match &o.text {
        None => Source::Tensor(TensorCorpus::open(&o.corpus, &input_names, &o.columns)?),
        Some(t) => {
            let srcs: Vec<TextSource> = o
                .corpus
                .iter()
                .map(|p| TextSource::guess(p, &t.field))
                .collect();
            let c = TextCorpus::open(&srcs, &t.tokenizer, t.window, t.stride)?;
            if c.vocab_size() as u64 > axis {
                return Err(TeacherError::Options(format!(
                    "{}: the tokenizer's vocabulary ({} ids) is larger than output {:?}'s axis ({axis}): is this the model's tokenizer?",
                    t.tokenizer.display(),
                    c.vocab_size(),
                    target.name
                )));
            }
            if target.shape.as_ref().map(|s| s.len()) != Some(3) {
                return Err(TeacherError::Options(format!(
                    "{}: per-token targets need an output [batch, sequence, vocabulary]; {:?} is {}",
                    o.model.display(),
                    target.name,
                    target.describe()
                )));
            }
            Source::Text(Box::new(c))
        }
    };
    // Refuse, before any run, a batch whose teacher outputs cannot fit: each session holds up
    // to two batches of [batch, positions, classes] f32 outputs (one running, one handed on).
    let positions = o.text.as_ref().map_or(1, |t| t.window as u64);
    let in_flight = (o.batch_size as u64)
        .saturating_mul(positions)
        .saturating_mul(axis)
        .saturating_mul(4 * 2)
        .saturating_mul(o.sessions as u64);
    if let Some(avail) = logits_format::host::available_memory()
        && in_flight > avail
    {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(TeacherError::Options(format!(
            "--batch-size {} with --sessions {} holds about {:.1} GiB of teacher outputs ({} positions × {axis} classes × 4 bytes a row, two batches a session), and {:.1} GiB is available: lower --batch-size or --sessions",
            o.batch_size,
            o.sessions,
            gib(in_flight),
            positions,
            gib(avail)
        )));
    }
    let rows = corpus.rows();
    if rows == 0 {
        return Err(TeacherError::Corpus {
            path: o.corpus[0].clone(),
            message: "the corpus is empty (0 rows)".into(),
        });
    }
    let mut inputs = Vec::new();
    let mut input_specs = Vec::new();
    let mut text_plan = None;
    if let Source::Text(tc) = &corpus {
        let ints: Vec<&logits_onnx::TensorSummary> = teacher
            .summary
            .inputs
            .iter()
            .filter(|i| i.elem == Some(ElemType::Int64))
            .collect();
        let ids = teacher
            .summary
            .inputs
            .iter()
            .find(|i| i.name == "input_ids")
            .or(ints.first().copied())
            .ok_or_else(|| {
                TeacherError::Options(format!(
                    "{}: no int64 input to take token ids (inputs: {})",
                    o.model.display(),
                    input_names.join(", ")
                ))
            })?;
        let mut plan = TextPlan {
            ids: ids.name.clone(),
            mask: None,
            positions: None,
            zeros: vec![],
            pad: tc.pad_id() as i64,
        };
        for i in &teacher.summary.inputs {
            if i.name == ids.name {
                continue;
            }
            if i.elem != Some(ElemType::Int64) {
                return Err(TeacherError::Options(format!(
                    "{}: input {:?} is {} and cannot be fed from text (token models take int64 inputs)",
                    o.model.display(),
                    i.name,
                    i.describe()
                )));
            }
            match i.name.as_str() {
                "attention_mask" => plan.mask = Some(i.name.clone()),
                "position_ids" => plan.positions = Some(i.name.clone()),
                "token_type_ids" => plan.zeros.push(i.name.clone()),
                other => {
                    return Err(TeacherError::Options(format!(
                        "{}: input {other:?} cannot be fed from text (known: input_ids, attention_mask, position_ids, token_type_ids)",
                        o.model.display()
                    )));
                }
            }
        }
        input_specs.push(InputSpec {
            name: ids.name.clone(),
            column: format!("in_{}", sanitize_column(&ids.name)),
            dtype: DType::Int64,
            stored: DType::Uint32,
            shape: vec![Dim::Named("sequence".into())],
        });
        text_plan = Some(plan);
    } else {
        for i in &teacher.summary.inputs {
            let elem = i.elem.ok_or_else(|| {
                TeacherError::Options(format!(
                    "{}: input {:?} has no declared type",
                    o.model.display(),
                    i.name
                ))
            })?;
            let float = match elem {
                ElemType::Float32 | ElemType::Float64 => true,
                ElemType::Int64
                | ElemType::Int32
                | ElemType::Uint32
                | ElemType::Uint16
                | ElemType::Int8
                | ElemType::Uint8
                | ElemType::Bool => false,
                other => {
                    return Err(TeacherError::Options(format!(
                        "{}: input {:?} is {}; logits-build feeds float32, float64, int64, int32, uint32, uint16, int8, uint8 and bool inputs",
                        o.model.display(),
                        i.name,
                        other.name()
                    )));
                }
            };
            let dims = i.shape.clone().unwrap_or_default();
            let row_dims: Option<Vec<usize>> = dims
                .iter()
                .skip(1)
                .map(|d| match d {
                    ODim::Fixed(n) if *n >= 0 => Some(*n as usize),
                    _ => None,
                })
                .collect();
            input_specs.push(InputSpec {
                name: i.name.clone(),
                column: format!("in_{}", sanitize_column(&i.name)),
                dtype: dtype_of(elem).unwrap_or(DType::Float32),
                stored: if float { DType::Float32 } else { DType::Int64 },
                shape: tensor_info(i).shape.into_iter().skip(1).collect(),
            });
            inputs.push(InputPlan {
                name: i.name.clone(),
                elem,
                float,
                row_dims,
            });
        }
    }
    let mut feature_specs = Vec::new();
    let mut features = Vec::new();
    for f in &o.features {
        if !is_safe_column(&f.name) {
            return Err(TeacherError::Options(format!(
                "feature name {:?} must match [A-Za-z0-9_-]+",
                f.name
            )));
        }
        let declared = teacher
            .summary
            .intermediates
            .iter()
            .chain(teacher.summary.outputs.iter())
            .find(|t| t.name == f.tensor)
            .and_then(|t| t.shape.clone());
        // Every dim after the batch axis (after the sequence axis, for token models) must be
        // fixed to know the width.
        let skip = if text_plan.is_some() { 2 } else { 1 };
        let width: Option<Vec<u64>> = declared.as_ref().and_then(|s| {
            s.iter()
                .skip(skip)
                .map(|d| match d {
                    ODim::Fixed(n) if *n > 0 => Some(*n as u64),
                    _ => None,
                })
                .collect()
        });
        let shape = match width {
            Some(w) if !w.is_empty() => w,
            _ => {
                return Err(TeacherError::Options(format!(
                    "{}: feature tensor {:?} has no fully known shape after the {} axis in the graph ({})",
                    o.model.display(),
                    f.tensor,
                    if skip == 2 { "sequence" } else { "batch" },
                    declared
                        .map(|s| format!("{s:?}"))
                        .unwrap_or_else(|| "undeclared".into())
                )));
            }
        };
        if text_plan.is_none() && f.pooling != Pooling::None {
            return Err(TeacherError::Options(format!(
                "feature {:?}: pooling applies to per-token tensors of text corpora only",
                f.name
            )));
        }
        let spec = FeatureSpec {
            name: f.name.clone(),
            tensor: f.tensor.clone(),
            column: format!("feat_{}", f.name),
            granularity: if text_plan.is_some() && f.pooling == Pooling::None {
                Granularity::Position
            } else {
                Granularity::Example
            },
            shape,
            encoding: f.encoding,
            pooling: f.pooling,
        };
        features.push((f.clone(), spec.width()));
        feature_specs.push(spec);
    }
    let (mut sources, fingerprint) = corpus.fingerprint()?;
    for (s, name) in sources.iter_mut().zip(&o.corpus_names) {
        s.path = name.clone();
    }
    let draft = Manifest {
        format: FORMAT_NAME.into(),
        format_version: Version::current().to_string(),
        dataset_id: String::new(),
        tool: Tool {
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
            outputs: teacher.summary.outputs.iter().map(tensor_info).collect(),
        },
        row_keys: RowKeys {
            user_id: o.columns.id.is_some() && text_plan.is_none(),
            input_hash: Some("sha256-v1".into()),
        },
        targets: Some(TargetSpec {
            output: target.name.clone(),
            granularity: if text_plan.is_some() {
                Granularity::Position
            } else {
                Granularity::Example
            },
            axis_size: axis,
            output_is_probability: kind != OutputKind::Logits,
            ids: IdEncoding::for_axis(axis),
            values: o.values,
            topk: Some(match o.adaptive {
                None => TopK::Fixed { k: o.k },
                Some((min_k, mass)) => TopK::Adaptive {
                    min_k,
                    max_k: o.k,
                    mass,
                },
            }),
            temperatures: o.temperatures.clone(),
            sampled: o.sample.clone(),
        }),
        features: feature_specs,
        inputs: if o.store_inputs { input_specs } else { vec![] },
        labels: o
            .columns
            .label
            .as_ref()
            .filter(|_| text_plan.is_none())
            .map(|_| LabelSpec {
                column: "label".into(),
                kind: LabelKind::Class,
                num_classes: axis,
                names: vec![],
            }),
        corpus: Corpus {
            sources,
            fingerprint,
            rows,
            split: o.split.clone(),
            holdout_from: o.holdout_from,
            options: match (&corpus, &o.text) {
                (Source::Tensor(c), _) => serde_json::json!({
                    "kind": "parquet-tensors",
                    "inputs": c.mapping,
                    "label": o.columns.label,
                    "id": o.columns.id,
                }),
                (Source::Text(_), Some(t)) => serde_json::json!({
                    "kind": "text",
                    "field": t.field,
                    "window": t.window,
                    "stride": t.stride,
                    "special_tokens": "as the tokenizer's post-processor adds them",
                }),
                (Source::Text(_), None) => serde_json::Value::Null,
            },
        },
        tokenizer: match &corpus {
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
            "batch_size": o.batch_size,
            "skip_non_finite": o.skip_non_finite,
            "zstd_level": o.write.zstd_level,
            "row_group_rows": o.write.row_group_rows,
            "output_kind": kind_from,
        }),
    };
    let mut w = DatasetWriter::create(&o.out, draft, o.write.clone(), o.mode)?;
    let plan_shards = rows.div_ceil(o.rows_per_shard) as u32;
    let mine: Vec<u32> = (0..plan_shards)
        .filter(|s| match o.worker {
            Some((i, n)) => s % n == i,
            None => true,
        })
        .collect();
    // A resumed build checks the shards it would keep, and writes again any that was lost or
    // damaged since it was recorded (instead of failing at the commit).
    let healed = w.heal(&mine)?;
    let kept = mine
        .iter()
        .filter(|s| w.completed().contains_key(s))
        .count() as u32;
    let todo: Vec<u32> = mine
        .iter()
        .copied()
        .filter(|s| !w.completed().contains_key(s))
        .collect();
    let total_rows: u64 = todo
        .iter()
        .map(|&s| ((s as u64 + 1) * o.rows_per_shard).min(rows) - s as u64 * o.rows_per_shard)
        .sum();
    let plan = Arc::new(Plan {
        teacher,
        inputs,
        target: target.name.clone(),
        kind,
        axis: axis as usize,
        k: o.k as usize,
        adaptive: o.adaptive.map(|(m, mass)| (m as usize, mass)),
        temps: o.temperatures.clone(),
        sample: o.sample.clone(),
        features,
        store_inputs: o.store_inputs,
        skip_non_finite: o.skip_non_finite,
        text: text_plan,
        kind_checked: AtomicBool::new(false),
    });
    let (written, skipped) =
        match run_pipeline(o, &plan, &corpus, &todo, &mut w, total_rows, progress) {
            Err(TeacherError::Interrupted(_)) => {
                return Err(TeacherError::Interrupted(format!(
                    ": {} of {} shards of {} are complete and kept{}",
                    w.completed().len(),
                    plan_shards,
                    o.out.display(),
                    if o.worker.is_some() {
                        " (a job-array worker also continues when simply run again)"
                    } else {
                        ""
                    }
                )));
            }
            r => r?,
        };
    let manifest = if o.worker.is_none() {
        Some(w.commit(plan_shards)?)
    } else {
        commit_if_last(w, plan_shards)?
    };
    Ok(BuildReport {
        corpus_rows: rows,
        plan_shards,
        shards_written: todo.len() as u32,
        shards_kept: kept,
        rows_written: written,
        rows_skipped: skipped,
        seconds: t0.elapsed().as_secs_f64(),
        healed,
        manifest,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// A job-array worker that has finished its shards commits the dataset when every shard of
/// the plan is complete. The records are listed again now (not the ones seen at start), so
/// with workers that all run at once the last to finish sees the others' shards. Two workers
/// finishing together may both try: the manifest they write is the same, and the one that
/// finds the dataset already committed by the other reports it as committed.
fn commit_if_last(w: DatasetWriter, plan_shards: u32) -> Result<Option<Manifest>> {
    let root = w.root().to_path_buf();
    let records = writer::read_records(&root)?;
    if (0..plan_shards).any(|s| !records.contains_key(&s)) {
        return Ok(None);
    }
    match w.commit(plan_shards) {
        Ok(m) => Ok(Some(m)),
        Err(e) => match logits_format::Dataset::open(&root) {
            Ok(ds) if writer::read_draft(&root).is_err() => Ok(Some(ds.manifest().clone())),
            _ => Err(e.into()),
        },
    }
}

/// The merge step of a job array: checks every shard of the plan and writes the manifest.
/// A dataset whose last worker already committed it (there is a manifest and no build
/// records) is returned as it is, so the merge job of a job array can always run.
pub fn merge(out: &std::path::Path, plan_shards: Option<u32>) -> Result<Manifest> {
    if writer::read_draft(out).is_err()
        && let Ok(ds) = logits_format::Dataset::open(out)
    {
        return Ok(ds.manifest().clone());
    }
    let plan = match plan_shards {
        Some(n) => n,
        None => {
            let draft = writer::read_draft(out)?;
            let per = draft
                .build
                .get("rows_per_shard")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            if per == 0 {
                return Err(TeacherError::Options(
                    "the draft does not record rows_per_shard; pass --shards".into(),
                ));
            }
            draft.corpus.rows.div_ceil(per) as u32
        }
    };
    Ok(writer::commit(out, Some(plan))?)
}

/// Below this many logits in a batch, rows are post-processed on the worker's own thread.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// An input value for a session run.
type SessionInput = ort::session::SessionInputValue<'static>;

struct Job {
    tag: Tag,
    batch: Payload,
}

type Done = (Tag, Result<(RowBatch, Vec<u64>)>);

/// A batch the teacher has run on, holding the outputs it still has to be turned into rows.
/// The outputs are owned values, so a post-processing thread works on them while the session
/// runs the next batch.
struct Ran {
    batch: Payload,
    outputs: HashMap<String, ort::value::DynValue>,
}

/// Shared by the pipeline's threads: set when any stage fails or a stop was asked for, so the
/// others stop taking work at their next step instead of finishing the corpus.
struct Halt<'a> {
    failed: std::sync::atomic::AtomicBool,
    /// The caller's stop flag (SIGINT/SIGTERM), if any.
    stop: Option<&'a AtomicBool>,
}

impl Halt<'_> {
    fn halted(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

/// Runs the shards `todo` through reader → sessions → post-processing → writer.
///
/// No stage can wait forever on another: every channel end is owned by exactly the threads
/// that use it (no extra handle kept here), so when a stage returns — on success, on its own
/// error or because the writer stopped — its channels disconnect and its neighbours see that
/// at their next send or receive. The writer, on any error, drops its receiver and sets the
/// halt flag; the reader and sessions then stop at their next batch.
fn run_pipeline(
    o: &BuildOptions,
    plan: &Arc<Plan>,
    corpus: &Source,
    todo: &[u32],
    w: &mut DatasetWriter,
    total_rows: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(u64, u64)> {
    if todo.is_empty() {
        return Ok((0, 0));
    }
    // Sessions are created up front so a model ONNX Runtime refuses fails before any thread.
    let mut sessions = Vec::new();
    for _ in 0..o.sessions {
        sessions.push(plan.teacher.build_session(o.intra_threads)?);
    }
    let rows = corpus.rows();
    let per = o.rows_per_shard;
    let faults = &o.write.faults;
    let halt = Halt {
        failed: std::sync::atomic::AtomicBool::new(false),
        stop: o.stop,
    };
    let halt = &halt;
    let (job_tx, job_rx) = sync_channel::<Job>(2 * o.sessions);
    let job_rx = Arc::new(Mutex::new(job_rx));
    // A rendezvous: a session hands its outputs to a free post-processing worker and runs the
    // next batch, so at most two batches of outputs per session are alive (the largest buffers
    // of a language-model build).
    let (ran_tx, ran_rx) = sync_channel::<(Tag, Result<Ran>)>(0);
    let ran_rx = Arc::new(Mutex::new(ran_rx));
    let (done_tx, done_rx) = sync_channel::<Done>(2 * o.sessions);
    let (count_tx, count_rx) = std::sync::mpsc::channel::<(u32, u32, Option<TeacherError>)>();
    std::thread::scope(|scope| {
        let shards = todo.to_vec();
        scope.spawn(move || {
            // Batches are numbered from 1 in reading order over this run (fault points).
            let mut n = 0u64;
            for s in shards {
                let range = s as u64 * per..((s as u64 + 1) * per).min(rows);
                let mut seq = 0u32;
                let mut injected = None;
                let r = corpus.read_each(range, o.batch_size, |batch| {
                    n += 1;
                    if halt.halted() {
                        return false;
                    }
                    if faults.hit("reader", n) {
                        injected = Some(fault_error("reader", n));
                        return false;
                    }
                    let tag = Tag { shard: s, seq, n };
                    seq += 1;
                    job_tx.send(Job { tag, batch }).is_ok()
                });
                let failed = r.err().or(injected);
                let stop = failed.is_some() || halt.halted();
                if count_tx.send((s, seq, failed)).is_err() || stop {
                    return;
                }
            }
        });
        // Sessions are borrowed, not moved: output values live in their session's memory, so
        // every session outlives the post-processing workers that may still hold its outputs.
        for session in sessions.iter_mut() {
            let rx = Arc::clone(&job_rx);
            let tx = ran_tx.clone();
            let plan = Arc::clone(plan);
            scope.spawn(move || {
                serve(&rx, &tx, halt, |job: Job| {
                    if let Some(ms) = faults.value("delay-ms") {
                        std::thread::sleep(std::time::Duration::from_millis(ms));
                    }
                    let ran = if faults.hit("session", job.tag.n) {
                        Err(fault_error("session", job.tag.n))
                    } else {
                        run_batch(&plan, session, job.batch)
                    };
                    (job.tag, ran)
                })
            });
        }
        // Only the workers hold the channel ends from here on (see above).
        drop((ran_tx, job_rx));
        for _ in 0..o.sessions {
            let rx = Arc::clone(&ran_rx);
            let tx = done_tx.clone();
            let plan = Arc::clone(plan);
            scope.spawn(move || {
                serve(&rx, &tx, halt, |(tag, ran): (Tag, Result<Ran>)| {
                    let out = ran.and_then(|r| {
                        if faults.hit("post", tag.n) {
                            return Err(fault_error("post", tag.n));
                        }
                        match r.batch {
                            Payload::Tensor(b) => process(&plan, b, &r.outputs),
                            Payload::Text(w) => process_text(&plan, w, &r.outputs),
                        }
                    });
                    (tag, out)
                })
            });
        }
        drop((done_tx, ran_rx));
        let r = write_in_order(
            w, todo, done_rx, count_rx, total_rows, progress, halt, faults,
        );
        if r.is_err() {
            halt.failed.store(true, Ordering::Relaxed);
        }
        r
    })
}

/// Where a batch belongs: its shard, its place in the shard, and its number in this run.
#[derive(Debug, Clone, Copy)]
struct Tag {
    shard: u32,
    seq: u32,
    n: u64,
}

/// The error an armed fault point produces (tests only).
fn fault_error(stage: &str, n: u64) -> TeacherError {
    TeacherError::Pipeline(format!("injected fault in the {stage} stage at batch {n}"))
}

/// A worker's loop: takes items from a receiver shared with its peers until it closes or the
/// pipeline halts, and sends `f`'s result for each until the next stage is gone.
fn serve<T, U>(
    rx: &Mutex<Receiver<T>>,
    tx: &SyncSender<U>,
    halt: &Halt<'_>,
    mut f: impl FnMut(T) -> U,
) {
    loop {
        let item = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok(item) = item else { return };
        if halt.halted() {
            return;
        }
        if tx.send(f(item)).is_err() {
            return;
        }
    }
}

/// Puts finished batches back in shard order and writes them, shard by shard, recording each
/// finished shard. Returns at the first error of any stage, or when a stop was asked for
/// (checked at least every 50 ms), leaving the shards finished so far recorded.
#[allow(clippy::too_many_arguments)]
fn write_in_order(
    w: &mut DatasetWriter,
    todo: &[u32],
    done_rx: Receiver<Done>,
    count_rx: Receiver<(u32, u32, Option<TeacherError>)>,
    total_rows: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
    halt: &Halt<'_>,
    faults: &logits_format::fault::Faults,
) -> Result<(u64, u64)> {
    let mut pending: BTreeMap<(u32, u32), (u64, RowBatch, Vec<u64>)> = BTreeMap::new();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    let (mut written, mut skipped) = (0u64, 0u64);
    let interrupted = || halt.stop.is_some_and(|s| s.load(Ordering::Relaxed));
    for &s in todo {
        let mut shard = w.shard(s)?;
        let mut seq = 0u32;
        loop {
            if interrupted() {
                return Err(TeacherError::Interrupted(String::new()));
            }
            while let Ok((cs, n, err)) = count_rx.try_recv() {
                if let Some(e) = err {
                    return Err(e);
                }
                counts.insert(cs, n);
            }
            if let Some((n, batch, skip)) = pending.remove(&(s, seq)) {
                if faults.hit("writer", n) {
                    return Err(fault_error("writer", n));
                }
                if faults.hit("disk-full", n) {
                    let e = std::io::Error::from_raw_os_error(28); // ENOSPC
                    return Err(logits_format::FormatError::io(
                        w.root().join(writer::SHARD_DIR),
                        e,
                    )
                    .into());
                }
                shard.write(&batch)?;
                shard.skip(&skip);
                written += batch.len() as u64;
                skipped += skip.len() as u64;
                progress(written + skipped, total_rows);
                seq += 1;
                continue;
            }
            if counts.get(&s) == Some(&seq) {
                break;
            }
            match done_rx.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok((tag, r)) => {
                    let (batch, skip) = r?;
                    pending.insert((tag.shard, tag.seq), (tag.n, batch, skip));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // Workers are gone; whatever is left must already be counted.
                    while let Ok((cs, n, err)) = count_rx.try_recv() {
                        if let Some(e) = err {
                            return Err(e);
                        }
                        counts.insert(cs, n);
                    }
                    if interrupted() {
                        return Err(TeacherError::Interrupted(String::new()));
                    }
                    if counts.get(&s) != Some(&seq) && !pending.contains_key(&(s, seq)) {
                        return Err(TeacherError::Pipeline(
                            "workers stopped before the shard was complete".into(),
                        ));
                    }
                }
            }
        }
        let rec = shard.finish()?;
        w.record(rec)?;
    }
    Ok((written, skipped))
}

fn corpus_mismatch(plan: &Plan, row: u64, msg: String) -> TeacherError {
    TeacherError::Options(format!("{}: row {row}: {msg}", plan.teacher.path.display()))
}

/// Shape and borrowed f32 data of a session output.
fn output_f32<'a>(
    plan: &Plan,
    outputs: &'a HashMap<String, ort::value::DynValue>,
    name: &str,
) -> Result<(Vec<i64>, &'a [f32])> {
    let err = |message: String| session_error(plan, message);
    let v = outputs
        .get(name)
        .ok_or_else(|| err(format!("no output {name:?}")))?;
    let (shape, data) = v
        .try_extract_tensor::<f32>()
        .map_err(|e| err(format!("output {name:?}: {e}")))?;
    Ok((shape.iter().copied().collect(), data))
}

/// The teacher's inputs for a batch of corpus rows, checked against the model's shapes.
fn tensor_inputs(plan: &Plan, b: &CorpusBatch) -> Result<Vec<(String, SessionInput)>> {
    let n = b.row_ids.len();
    let mut values: Vec<(String, SessionInput)> = Vec::new();
    for ip in &plan.inputs {
        let (offsets, flat) = b.inputs.get(&ip.name).ok_or_else(|| {
            TeacherError::Pipeline(format!("input {:?} missing from the batch", ip.name))
        })?;
        let len0 = offsets[1] - offsets[0];
        for r in 0..n {
            let len = offsets[r + 1] - offsets[r];
            let want = ip
                .row_dims
                .as_ref()
                .map(|d| d.iter().product::<usize>())
                .unwrap_or(len0);
            if len != want {
                return Err(corpus_mismatch(
                    plan,
                    b.row_ids[r],
                    format!(
                        "input {:?} has {len} values, the model takes {want} per row (shape {:?})",
                        ip.name, ip.row_dims
                    ),
                ));
            }
        }
        let dims: Vec<usize> = std::iter::once(n)
            .chain(ip.row_dims.clone().unwrap_or_else(|| vec![len0]))
            .collect();
        let v: SessionInput = match (flat, ip.float) {
            (Flat::F32(v), true) if ip.elem == ElemType::Float64 => {
                tensor(dims, v.iter().map(|&x| x as f64).collect(), plan)?
            }
            (Flat::F32(v), true) => tensor(dims, v.clone(), plan)?,
            (Flat::I64(v), false) => {
                // The corpus holds i64; the model's narrower type is checked value by value,
                // so an out-of-range value names its row instead of wrapping silently.
                let narrow = |lo: i64, hi: i64| -> Result<()> {
                    match v.iter().position(|&x| x < lo || x > hi) {
                        None => Ok(()),
                        Some(at) => {
                            let r = offsets.partition_point(|&o| o <= at).saturating_sub(1);
                            Err(corpus_mismatch(
                                plan,
                                b.row_ids[r],
                                format!(
                                    "input {:?}: value {} is outside {}'s range {lo}..={hi}",
                                    ip.name,
                                    v[at],
                                    ip.elem.name()
                                ),
                            ))
                        }
                    }
                };
                match ip.elem {
                    ElemType::Int32 => {
                        narrow(i32::MIN as i64, i32::MAX as i64)?;
                        tensor(dims, v.iter().map(|&x| x as i32).collect(), plan)?
                    }
                    ElemType::Uint32 => {
                        narrow(0, u32::MAX as i64)?;
                        tensor(dims, v.iter().map(|&x| x as u32).collect(), plan)?
                    }
                    ElemType::Uint16 => {
                        narrow(0, u16::MAX as i64)?;
                        tensor(dims, v.iter().map(|&x| x as u16).collect(), plan)?
                    }
                    ElemType::Int8 => {
                        narrow(i8::MIN as i64, i8::MAX as i64)?;
                        tensor(dims, v.iter().map(|&x| x as i8).collect(), plan)?
                    }
                    ElemType::Uint8 => {
                        narrow(0, u8::MAX as i64)?;
                        tensor(dims, v.iter().map(|&x| x as u8).collect(), plan)?
                    }
                    ElemType::Bool => {
                        narrow(0, 1)?;
                        tensor(dims, v.iter().map(|&x| x != 0).collect(), plan)?
                    }
                    _ => tensor(dims, v.clone(), plan)?,
                }
            }
            (flat, _) => {
                let holds = if matches!(flat, Flat::I64(_)) {
                    "integers"
                } else {
                    "floats"
                };
                return Err(corpus_mismatch(
                    plan,
                    b.row_ids[0],
                    format!(
                        "input {:?} is {} in the model but the corpus column holds {holds}",
                        ip.name,
                        ip.elem.name()
                    ),
                ));
            }
        };
        values.push((ip.name.clone(), v));
    }
    Ok(values)
}

/// A session input of `dims` holding `values` (any element type ONNX Runtime takes).
fn tensor<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
    dims: Vec<usize>,
    values: Vec<T>,
    plan: &Plan,
) -> Result<SessionInput> {
    let a = ndarray::ArrayD::from_shape_vec(dims, values)
        .map_err(|e| TeacherError::Pipeline(e.to_string()))?;
    Ok(ort::value::Tensor::from_array(a)
        .map_err(|e| session_error(plan, e.to_string()))?
        .into())
}

/// Runs one batch through the teacher, keeping the target and feature outputs for
/// post-processing on another thread.
fn run_batch(plan: &Plan, session: &mut ort::session::Session, batch: Payload) -> Result<Ran> {
    let values = match &batch {
        Payload::Tensor(b) => tensor_inputs(plan, b)?,
        Payload::Text(w) => text_inputs(plan, w)?,
    };
    let sess_err = |message: String| session_error(plan, message);
    let mut run = session.run(values).map_err(|e| sess_err(e.to_string()))?;
    let mut outputs = HashMap::new();
    let names = std::iter::once(&plan.target).chain(plan.features.iter().map(|(f, _)| &f.tensor));
    for name in names {
        if !outputs.contains_key(name) {
            let v = run
                .remove(name)
                .ok_or_else(|| sess_err(format!("no output {name:?}")))?;
            outputs.insert(name.clone(), v);
        }
    }
    Ok(Ran { batch, outputs })
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
            "{}: output {:?} holds probabilities, not logits (every row of the first batch lies in [0, 1] and sums to 1), though the graph does not end in a recognised softmax; stored as logits, every log-probability would be wrong. Pass --output-is-probability to store them as log-probabilities, or export the model with its pre-softmax logits as an output and pass that as --target",
            plan.teacher.path.display(),
            plan.target
        )));
    }
    Ok(())
}

/// Turns the teacher's outputs for a batch of corpus rows into a row batch.
fn process(
    plan: &Plan,
    b: CorpusBatch,
    outputs: &HashMap<String, ort::value::DynValue>,
) -> Result<(RowBatch, Vec<u64>)> {
    let n = b.row_ids.len();
    let sess_err = |e: String| session_error(plan, e);
    let extract = |name: &str| -> Result<(Vec<i64>, Vec<f32>)> {
        output_f32(plan, outputs, name).map(|(shape, data)| (shape, data.to_vec()))
    };
    let (shape, mut logits) = extract(&plan.target)?;
    if shape.first() != Some(&(n as i64)) || logits.len() != n * plan.axis {
        return Err(sess_err(format!(
            "output {:?} has shape {shape:?}; per-example targets need [{n}, {}]",
            plan.target, plan.axis
        )));
    }
    check_not_probabilities(plan, &logits)?;
    if plan.kind == OutputKind::Softmax {
        // Probabilities become log-probs; an underflowed 0 becomes the log of the smallest
        // positive f32 rather than -inf, so the row stays finite.
        for x in &mut logits {
            *x = x.max(f32::from_bits(1)).ln();
        }
    }
    let mut feats = Vec::new();
    for (f, width) in &plan.features {
        let (_, data) = extract(&f.tensor)?;
        if data.len() != n * width {
            return Err(sess_err(format!(
                "feature {:?} gave {} values for {n} rows of width {width}",
                f.tensor,
                data.len()
            )));
        }
        feats.push(data);
    }
    let one_row = |r: usize| {
        let z = &logits[r * plan.axis..(r + 1) * plan.axis];
        let id = b.row_ids[r];
        let Some(t) = position_targets(z, plan.k, plan.adaptive, &plan.temps) else {
            if plan.skip_non_finite {
                return Ok(None);
            }
            let value = z
                .iter()
                .copied()
                .find(|x| !x.is_finite())
                .unwrap_or(f32::NAN);
            return Err(TeacherError::NonFinite {
                row_id: id,
                tensor: plan.target.clone(),
                value,
            });
        };
        let s = plan.sample.as_ref().map(|rule| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                rule.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            sample_counts(z, rule.temperature, rule.draws, &mut rng)
        });
        for (fi, (f, width)) in plan.features.iter().enumerate() {
            let row = &feats[fi][r * width..(r + 1) * width];
            if let Some(v) = row.iter().find(|x| !x.is_finite()) {
                if plan.skip_non_finite {
                    return Ok(None);
                }
                return Err(TeacherError::NonFinite {
                    row_id: id,
                    tensor: f.tensor.clone(),
                    value: *v,
                });
            }
        }
        Ok(Some((t, s)))
    };
    // Handing a batch of short rows to the thread pool costs more (waking threads) than the
    // rows themselves: a classifier's batch of 256 rows × 10 classes is a few microseconds.
    let per_row: Vec<Result<Option<_>>> = if n * plan.axis < PARALLEL_MIN_VALUES {
        (0..n).map(one_row).collect()
    } else {
        (0..n).into_par_iter().map(one_row).collect()
    };
    let mut out = RowBatch::default();
    let mut skipped = Vec::new();
    let mut t = Targets::empty(true, plan.sample.is_some());
    let mut kept_rows = Vec::new();
    for (r, res) in per_row.into_iter().enumerate() {
        match res? {
            None => skipped.push(b.row_ids[r]),
            Some((pt, s)) => {
                kept_rows.push(r);
                out.row_ids.push(b.row_ids[r]);
                t.push_position(&pt, s.as_ref());
                t.end_row();
            }
        }
    }
    out.targets = Some(t);
    for (fi, (f, width)) in plan.features.iter().enumerate() {
        let mut fv = FeatureValues {
            row_positions: vec![0],
            values: Vec::with_capacity(kept_rows.len() * width),
        };
        for &r in &kept_rows {
            fv.values
                .extend_from_slice(&feats[fi][r * width..(r + 1) * width]);
            fv.row_positions.push(fv.row_positions.len());
        }
        out.features.insert(f.name.clone(), fv);
    }
    let mut hashes = vec![Vec::new(); kept_rows.len()];
    for ip in &plan.inputs {
        let (offsets, flat) = &b.inputs[&ip.name];
        let mut iv = InputValues {
            offsets: vec![0],
            values: if ip.float {
                TensorValues::F32(vec![])
            } else {
                TensorValues::I64(vec![])
            },
        };
        for &r in &kept_rows {
            match (flat, &mut iv.values) {
                (Flat::F32(v), TensorValues::F32(dst)) => {
                    dst.extend_from_slice(&v[offsets[r]..offsets[r + 1]])
                }
                (Flat::I64(v), TensorValues::I64(dst)) => {
                    dst.extend_from_slice(&v[offsets[r]..offsets[r + 1]])
                }
                _ => {}
            }
            iv.offsets.push(iv.values.len());
        }
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

/// A session error naming the teacher.
fn session_error(plan: &Plan, message: String) -> TeacherError {
    TeacherError::Session {
        model: plan.teacher.path.clone(),
        message,
    }
}

/// The text plan of a batch of token windows, their real lengths and the padded length.
fn text_shape<'p>(plan: &'p Plan, windows: &[Window]) -> Result<(&'p TextPlan, Vec<usize>, usize)> {
    let tp = plan
        .text
        .as_ref()
        .ok_or_else(|| TeacherError::Pipeline("text batch without a text plan".into()))?;
    let lens: Vec<usize> = windows.iter().map(|w| w.ids.len()).collect();
    let l = lens.iter().copied().max().unwrap_or(0).max(1);
    Ok((tp, lens, l))
}

/// The teacher's inputs for a batch of token windows, padded to the longest.
fn text_inputs(plan: &Plan, windows: &[Window]) -> Result<Vec<(String, SessionInput)>> {
    let (tp, _, l) = text_shape(plan, windows)?;
    let sess_err = |e: String| session_error(plan, e);
    let n = windows.len();
    let mut ids = vec![tp.pad; n * l];
    let mut mask = vec![0i64; n * l];
    for (r, w) in windows.iter().enumerate() {
        for (p, &t) in w.ids.iter().enumerate() {
            ids[r * l + p] = t as i64;
            mask[r * l + p] = 1;
        }
    }
    let tensor = |v: Vec<i64>| -> Result<SessionInput> {
        let a = ndarray::Array2::from_shape_vec((n, l), v)
            .map_err(|e| TeacherError::Pipeline(e.to_string()))?;
        Ok(ort::value::Tensor::from_array(a)
            .map_err(|e| sess_err(e.to_string()))?
            .into())
    };
    let mut values = vec![(tp.ids.clone(), tensor(ids)?)];
    if let Some(m) = &tp.mask {
        values.push((m.clone(), tensor(mask)?));
    }
    if let Some(p) = &tp.positions {
        values.push((
            p.clone(),
            tensor((0..n).flat_map(|_| 0..l as i64).collect())?,
        ));
    }
    for z in &tp.zeros {
        values.push((z.clone(), tensor(vec![0; n * l])?));
    }
    Ok(values)
}

/// Turns a language-model teacher's outputs for a batch of token windows into a row batch:
/// per-position targets for every real token, per-position or pooled features.
fn process_text(
    plan: &Plan,
    windows: Vec<Window>,
    outputs: &HashMap<String, ort::value::DynValue>,
) -> Result<(RowBatch, Vec<u64>)> {
    let (tp, lens, l) = text_shape(plan, &windows)?;
    let sess_err = |e: String| session_error(plan, e);
    let n = windows.len();
    let extract = |name: &str| -> Result<(Vec<i64>, Vec<f32>)> {
        output_f32(plan, outputs, name).map(|(shape, data)| (shape, data.to_vec()))
    };
    // The vocabulary-sized output is read in place (no copy): it is the largest buffer of a
    // language-model build.
    let (shape, raw) = output_f32(plan, outputs, &plan.target)?;
    if shape != [n as i64, l as i64, plan.axis as i64] {
        return Err(sess_err(format!(
            "output {:?} has shape {shape:?}; expected [{n}, {l}, {}]",
            plan.target, plan.axis
        )));
    }
    check_not_probabilities(plan, raw)?;
    let converted: Vec<f32>;
    let logits: &[f32] = if plan.kind == OutputKind::Softmax {
        converted = raw.iter().map(|x| x.max(f32::from_bits(1)).ln()).collect();
        &converted
    } else {
        raw
    };
    let mut feats = Vec::new();
    for (f, width) in &plan.features {
        let (_, data) = extract(&f.tensor)?;
        if data.len() != n * l * width {
            return Err(sess_err(format!(
                "feature {:?} gave {} values for [{n}, {l}] positions of width {width}",
                f.tensor,
                data.len()
            )));
        }
        feats.push(data);
    }
    let cells: Vec<(usize, usize)> = (0..n)
        .flat_map(|r| (0..lens[r]).map(move |p| (r, p)))
        .collect();
    let row =
        |(r, p): (usize, usize)| &logits[(r * l + p) * plan.axis..(r * l + p + 1) * plan.axis];
    let computed: Vec<_> = (0..cells.len())
        .into_par_iter()
        .map(|i| {
            let (r, p) = cells[i];
            let z = row(cells[i]);
            // Rayon hands each thread a run of consecutive cells: the next cell is usually
            // this thread's next row.
            let next = cells.get(i + 1).map_or(&[][..], |&c| row(c));
            let t = position_targets_ahead(z, next, plan.k, plan.adaptive, &plan.temps);
            let s = match (&t, &plan.sample) {
                (Some(_), Some(rule)) => {
                    let seed = rule.seed
                        ^ windows[r].row_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        ^ (p as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    Some(sample_counts(z, rule.temperature, rule.draws, &mut rng))
                }
                _ => None,
            };
            (t, s)
        })
        .collect();
    let mut bad = vec![None; n];
    for (&(r, p), (t, _)) in cells.iter().zip(&computed) {
        if t.is_none() && bad[r].is_none() {
            bad[r] = Some(p);
        }
    }
    for (fi, (_, width)) in plan.features.iter().enumerate() {
        for &(r, p) in &cells {
            let at = (r * l + p) * width;
            if bad[r].is_none() && feats[fi][at..at + width].iter().any(|x| !x.is_finite()) {
                bad[r] = Some(p);
            }
        }
    }
    if !plan.skip_non_finite
        && let Some((r, p)) = bad.iter().enumerate().find_map(|(r, b)| b.map(|p| (r, p)))
    {
        return Err(TeacherError::NonFinite {
            row_id: windows[r].row_id,
            tensor: format!("{} (position {p})", plan.target),
            value: f32::NAN,
        });
    }
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
    let mut cell = 0;
    for (r, w) in windows.iter().enumerate() {
        let here = cell..cell + lens[r];
        cell += lens[r];
        if bad[r].is_some() {
            skipped.push(w.row_id);
            continue;
        }
        out.row_ids.push(w.row_id);
        for (pt, s) in &computed[here] {
            if let Some(pt) = pt {
                t.push_position(pt, s.as_ref());
            }
        }
        t.end_row();
        if let TensorValues::U32(v) = &mut input.values {
            v.extend_from_slice(&w.ids);
        }
        input.offsets.push(input.values.len());
        let bytes: Vec<u8> = w.ids.iter().flat_map(|x| x.to_le_bytes()).collect();
        hashes.push(input_hash_v1(&[(tp.ids.as_str(), bytes, w.ids.len())]));
        for (fi, (f, width)) in plan.features.iter().enumerate() {
            let fv = &mut fvals[fi];
            let row = &feats[fi][r * l * width..(r * l + lens[r]) * width];
            match f.pooling {
                Pooling::None => {
                    fv.values.extend_from_slice(row);
                    let last = *fv.row_positions.last().unwrap_or(&0);
                    fv.row_positions.push(last + lens[r]);
                }
                pooling => {
                    let pooled: Vec<f32> = match pooling {
                        Pooling::First => row[..*width].to_vec(),
                        Pooling::Last => row[row.len() - width..].to_vec(),
                        _ => (0..*width)
                            .map(|j| {
                                row.iter().skip(j).step_by(*width).sum::<f32>() / lens[r] as f32
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
    for ((f, _), fv) in plan.features.iter().zip(fvals) {
        out.features.insert(f.name.clone(), fv);
    }
    Ok((out, skipped))
}
