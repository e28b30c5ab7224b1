//! The plan: what one build does, decided once from the options, the model and the corpus
//! before any thread starts, and only read afterwards by every stage. It is the one source of
//! truth for the target (which tensor, how its values relate to probabilities, per example or
//! per position), top-k, temperatures, sampling, features and how inputs are fed; the manifest
//! draft is written from it.
//!
//! Shapes the graph does not declare (typical of tf2onnx, jax2tf and paddle2onnx graphs) are
//! read off one probe run of the corpus's first row: ONNX Runtime reports every output's
//! concrete shape after a run.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use logits_format::manifest::{Pooling, SampledSpec};
use logits_onnx::model::{Dim as ODim, TensorSummary};
use logits_onnx::surgery::OutputKind;

use super::feed::Feed;
use super::{BuildOptions, FeatureRequest};
use crate::corpus::{CorpusBatch, TensorCorpus};
use crate::error::{Result, TeacherError};
use crate::teacher::TeacherModel;
use crate::text::{TextCorpus, TextSource, Window};

/// The corpus, of either kind.
pub(super) enum Source {
    /// Parquet tensor columns.
    Tensor(TensorCorpus),
    /// Tokenized text windows.
    Text(Box<TextCorpus>),
}

/// A batch of corpus rows, of either kind.
pub(super) enum Payload {
    /// Rows of a tensor corpus.
    Tensor(CorpusBatch),
    /// Token windows of a text corpus.
    Text(Vec<Window>),
}

impl Source {
    /// Rows (tensor rows or token windows).
    pub(super) fn rows(&self) -> u64 {
        match self {
            Source::Tensor(c) => c.rows(),
            Source::Text(c) => c.rows(),
        }
    }

    /// The corpus files' identities and the fingerprint of the whole.
    pub(super) fn fingerprint(&self) -> Result<(Vec<logits_format::manifest::Source>, String)> {
        match self {
            Source::Tensor(c) => Ok(c.fingerprint()?),
            Source::Text(c) => c.fingerprint(),
        }
    }

    /// Reads rows `range` in batches of at most `batch`; a tensor batch whose rows differ in
    /// shape is handed on as runs of rows of one shape each (one rectangular tensor per run).
    pub(super) fn read_each(
        &self,
        range: std::ops::Range<u64>,
        batch: usize,
        mut each: impl FnMut(Payload) -> bool,
    ) -> Result<()> {
        match self {
            Source::Tensor(c) => Ok(c.read_each(range, batch, |b| {
                b.split_uniform()
                    .into_iter()
                    .all(|part| each(Payload::Tensor(part)))
            })?),
            Source::Text(c) => c.read_each(range, batch, |w| each(Payload::Text(w))),
        }
    }
}

/// A feature to capture, with its per-row (per-position, for token models) shape.
#[derive(Debug, Clone)]
pub(super) struct FeaturePlan {
    /// What was asked.
    pub req: FeatureRequest,
    /// Dims after the batch axis (after the sequence axis for per-position features).
    pub shape: Vec<u64>,
    /// Values per row (per position).
    pub width: usize,
    /// Per position (token models without pooling) rather than per example.
    pub per_position: bool,
}

/// What every worker needs, shared read-only.
pub(super) struct Plan {
    /// The teacher.
    pub teacher: TeacherModel,
    /// How inputs are made from corpus rows.
    pub feed: Feed,
    /// The target tensor (a graph output, or an internal tensor exposed as one).
    pub target: String,
    /// How the target's values relate to probabilities.
    pub kind: OutputKind,
    /// How `kind` was decided (recorded in the manifest).
    pub kind_from: &'static str,
    /// Classes (vocabulary) on the target's last axis.
    pub axis: usize,
    /// The target is `[batch, positions, classes]`: one target per position, not per row.
    pub per_position: bool,
    /// For per-position targets of tensor corpora: the input whose non-zero values mark the
    /// positions to keep (an attention mask); None keeps every position.
    pub mask: Option<String>,
    /// Entries kept per position (the maximum, with adaptive k).
    pub k: usize,
    /// Adaptive k: (min k, cumulative mass).
    pub adaptive: Option<(usize, f64)>,
    /// Extra temperatures at which logZ is stored.
    pub temps: Vec<f64>,
    /// Sampled targets.
    pub sample: Option<SampledSpec>,
    /// Features to capture.
    pub features: Vec<FeaturePlan>,
    /// Store the inputs in the shards.
    pub store_inputs: bool,
    /// Leave out rows with non-finite outputs.
    pub skip_non_finite: bool,
    /// Set once a batch of the target has been checked for probabilities written as logits.
    pub kind_checked: AtomicBool,
    /// Top-k and logZ come from the graph's own TopK and ReduceLogSumExp outputs
    /// (`postprocess::post`), not from the target's every logit.
    pub in_graph: bool,
    /// Why `--postprocess auto` kept a GPU build's post-processing on the host (manifest).
    pub postprocess_note: Option<String>,
}

impl Plan {
    /// Makes the plan and opens the corpus: everything that can be refused is refused here,
    /// before any shard is written.
    pub(super) fn make(o: &BuildOptions) -> Result<(Plan, Source)> {
        let mut expose: Vec<String> = o.features.iter().map(|f| f.tensor.clone()).collect();
        if let Some(t) = &o.target
            && !expose.contains(t)
        {
            // Any tensor of the graph can be the target (the logits feeding a final softmax,
            // say): exposed like a feature; one that is already an output stays as it is.
            expose.push(t.clone());
        }
        let mut teacher = TeacherModel::open(&o.model, &expose)?;
        let target = teacher.target_output(o.target.as_deref())?.clone();
        let model = o.model.display().to_string();
        let mut kind = teacher.kind(&target.name);
        if kind == OutputKind::Sigmoid {
            return Err(TeacherError::Options(format!(
                "{model}: {:?} ends in a Sigmoid: independent per-class probabilities (a multi-label classifier), not one distribution over classes, so top-k targets with a shared logZ do not describe it; per-class binary targets are not supported yet. Its input (the pre-sigmoid scores) can be captured with --feature",
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
        let corpus = open_corpus(o, &teacher)?;
        if corpus.rows() == 0 {
            return Err(TeacherError::Corpus {
                path: o.corpus[0].clone(),
                message: "the corpus is empty (0 rows)".into(),
            });
        }
        let feed = Feed::new(&teacher, &corpus)?;
        let text = feed.text.is_some();

        // Shapes: as declared, or as seen on a probe run where the graph does not say.
        let declared = |name: &str| -> Option<Vec<ODim>> {
            teacher
                .summary
                .outputs
                .iter()
                .chain(&teacher.summary.intermediates)
                .find(|t| t.name == name)
                .and_then(|t| t.shape.clone())
        };
        let fixed_after = |s: &[ODim], skip: usize| {
            s.len() > skip
                && s.iter()
                    .skip(skip)
                    .all(|d| matches!(d, ODim::Fixed(n) if *n > 0))
        };
        let target_known = declared(&target.name).is_some_and(|s| {
            (s.len() == 2 || s.len() == 3) && matches!(s.last(), Some(ODim::Fixed(n)) if *n > 0)
        });
        let skip = if text { 2 } else { 1 };
        let unknown: Vec<String> = std::iter::once(&target.name)
            .filter(|_| !target_known)
            .chain(
                o.features
                    .iter()
                    .filter(|f| !declared(&f.tensor).is_some_and(|s| fixed_after(&s, skip)))
                    .map(|f| &f.tensor),
            )
            .cloned()
            .collect();
        let seen = if unknown.is_empty() {
            HashMap::new()
        } else {
            probe(&teacher, &feed, &corpus, &unknown)?
        };
        let shape_of = |name: &str| -> Option<Vec<ODim>> {
            match seen.get(name) {
                Some(s) => Some(
                    s.iter()
                        .enumerate()
                        .map(|(i, &d)| {
                            if i == 0 {
                                ODim::Symbolic("batch".into())
                            } else {
                                ODim::Fixed(d)
                            }
                        })
                        .collect(),
                ),
                None => declared(name),
            }
        };

        let tshape = shape_of(&target.name).unwrap_or_default();
        let describe = |s: &[ODim]| {
            let d: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("[{}]", d.join(", "))
        };
        let per_position = match tshape.len() {
            2 => false,
            3 => true,
            _ => {
                return Err(TeacherError::Options(format!(
                    "{model}: target {:?} has shape {}; targets are [batch, classes] (one per example) or [batch, positions, classes] (one per position); choose another tensor with --target",
                    target.name,
                    describe(&tshape)
                )));
            }
        };
        let axis = match tshape.last() {
            Some(ODim::Fixed(n)) if *n > 0 => *n as u64,
            _ => {
                return Err(TeacherError::Options(format!(
                    "{model}: target {:?} has no fixed class axis ({})",
                    target.name,
                    describe(&tshape)
                )));
            }
        };
        if o.k == 0 || o.k as u64 > axis {
            return Err(TeacherError::Options(format!(
                "k = {} but target {:?} has {axis} classes: k must be between 1 and {axis}",
                o.k, target.name
            )));
        }
        if let (Source::Text(tc), Some(tp)) = (&corpus, &feed.text) {
            // The tokenizer must fit the model's embedding table where the graph shows one
            // (token classifiers have a small class axis, so the output cannot tell).
            let table = teacher
                .embedding_rows
                .iter()
                .find(|(n, _)| *n == tp.ids)
                .map(|(_, r)| *r);
            let (limit, what) = match table {
                Some(rows) => (rows, "embedding table"),
                None if per_position => (axis, "output's vocabulary axis"),
                None => (u64::MAX, ""),
            };
            if tc.vocab_size() as u64 > limit {
                return Err(TeacherError::Options(format!(
                    "{}: the tokenizer's vocabulary ({} ids) is larger than the model's {what} ({limit} rows, input {:?}): is this the model's tokenizer?",
                    o.text
                        .as_ref()
                        .map(|t| t.tokenizer.display().to_string())
                        .unwrap_or_default(),
                    tc.vocab_size(),
                    tp.ids
                )));
            }
        }
        let mask = if per_position && !text {
            feed.inputs
                .iter()
                .find(|i| {
                    !i.float
                        && i.derived.is_none()
                        && i.name.to_lowercase().contains("mask")
                        && i.dims.as_ref().is_some_and(|d| d.len() == 1)
                })
                .map(|i| i.name.clone())
        } else {
            None
        };

        let mut features = Vec::new();
        for f in &o.features {
            if !logits_format::manifest::is_safe_column(&f.name) {
                return Err(TeacherError::Options(format!(
                    "feature name {:?} must match [A-Za-z0-9_-]+",
                    f.name
                )));
            }
            if !text && f.pooling != Pooling::None {
                return Err(TeacherError::Options(format!(
                    "feature {:?}: pooling applies to per-token tensors of text corpora only",
                    f.name
                )));
            }
            // Every dim after the batch axis (after the sequence axis, for token models) must
            // be fixed to know the width.
            let s = shape_of(&f.tensor);
            let shape: Vec<u64> = match &s {
                Some(s) if fixed_after(s, skip) => s
                    .iter()
                    .skip(skip)
                    .map(|d| match d {
                        ODim::Fixed(n) => *n as u64,
                        _ => 0,
                    })
                    .collect(),
                _ => {
                    return Err(TeacherError::Options(format!(
                        "{model}: feature tensor {:?} has no fixed shape after the {} axis ({}, as declared or seen on the first row)",
                        f.tensor,
                        if text { "sequence" } else { "batch" },
                        s.as_deref()
                            .map(describe)
                            .unwrap_or_else(|| "unknown".into())
                    )));
                }
            };
            let width = shape.iter().product::<u64>() as usize;
            features.push(FeaturePlan {
                req: f.clone(),
                shape,
                width,
                per_position: text && f.pooling == Pooling::None,
            });
        }

        // Refuse, before any run, a batch whose teacher outputs cannot fit: each session holds
        // up to two batches of [batch, positions, classes] f32 outputs (one running, one
        // handed on).
        let positions = match (&o.text, per_position) {
            (Some(t), true) => t.window as u64,
            (None, true) => match tshape.get(1) {
                Some(ODim::Fixed(n)) if *n > 0 => *n as u64,
                _ => 1,
            },
            _ => 1,
        };
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
        let (in_graph, postprocess_note) =
            postprocess_place(o, kind, &mut teacher, &target.name, axis as usize)?;
        let plan = Plan {
            in_graph,
            postprocess_note,
            teacher,
            feed,
            target: target.name.clone(),
            kind,
            kind_from,
            axis: axis as usize,
            per_position,
            mask,
            k: o.k as usize,
            adaptive: o.adaptive.map(|(m, mass)| (m as usize, mass)),
            temps: o.temperatures.clone(),
            sample: o.sample.clone(),
            features,
            store_inputs: o.store_inputs,
            skip_non_finite: o.skip_non_finite,
            kind_checked: AtomicBool::new(false),
        };
        Ok((plan, corpus))
    }

    /// The target's summary as the manifest records it.
    pub(super) fn target_summary(&self) -> Option<&TensorSummary> {
        self.teacher
            .summary
            .outputs
            .iter()
            .chain(&self.teacher.summary.intermediates)
            .find(|t| t.name == self.target)
    }
}

/// Opens the corpus of either kind.
fn open_corpus(o: &BuildOptions, teacher: &TeacherModel) -> Result<Source> {
    let input_names: Vec<String> = teacher
        .summary
        .inputs
        .iter()
        .map(|i| i.name.clone())
        .collect();
    Ok(match &o.text {
        None => {
            // A transformer fed pre-tokenized ids needs no columns for the inputs that follow
            // from them (see `feed::Derived`).
            let mut columns = o.columns.clone();
            if input_names.iter().any(|n| n == "input_ids") {
                columns.optional = super::feed::Derived::NAMES
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
            }
            Source::Tensor(TensorCorpus::open(&o.corpus, &input_names, &columns)?)
        }
        Some(t) => {
            let srcs: Vec<TextSource> = o
                .corpus
                .iter()
                .map(|p| TextSource::guess(p, &t.field))
                .collect();
            Source::Text(Box::new(TextCorpus::open(
                &srcs,
                o.columns.id.as_deref(),
                &t.tokenizer,
                t.window,
                t.stride,
            )?))
        }
    })
}

/// Runs the corpus's first row through the teacher and returns the shapes of `names`.
fn probe(
    teacher: &TeacherModel,
    feed: &Feed,
    corpus: &Source,
    names: &[String],
) -> Result<HashMap<String, Vec<i64>>> {
    let mut first = None;
    corpus.read_each(0..1, 1, |b| {
        first = Some(b);
        false
    })?;
    let first =
        first.ok_or_else(|| TeacherError::Pipeline("the corpus gave no first row".into()))?;
    let mut session = teacher.session(1)?;
    let values = feed.inputs_for(&first)?;
    let err = |message: String| TeacherError::Session {
        model: teacher.path.clone(),
        message,
    };
    let run = session.run(values).map_err(|e| err(e.to_string()))?;
    let mut seen = HashMap::new();
    for n in names {
        let v = run
            .get(n.as_str())
            .ok_or_else(|| err(format!("no output {n:?}")))?;
        let (shape, _) = super::rows::float_values(v).map_err(|e| err(format!("{n:?}: {e}")))?;
        seen.insert(n.clone(), shape);
    }
    Ok(seen)
}

/// Decides where top-k and logZ are computed (`--postprocess`) and, for the graph, appends
/// them to the teacher's graph. Returns whether they are in the graph, and why `auto` kept a
/// GPU build on the host. What `graph` cannot do is refused, not quietly done on the host.
fn postprocess_place(
    o: &BuildOptions,
    kind: OutputKind,
    teacher: &mut TeacherModel,
    target: &str,
    classes: usize,
) -> Result<(bool, Option<String>)> {
    use super::Postprocess;
    use crate::runtime::Device;
    let wanted = match o.postprocess {
        Postprocess::Host => return Ok((false, None)),
        Postprocess::Graph => true,
        // `--device auto` counts as a GPU here; the build plans again if it found none.
        Postprocess::Auto => o.devices.iter().any(|d| *d != Device::Cpu),
    };
    if !wanted {
        return Ok((false, None));
    }
    let why = if kind == OutputKind::Softmax {
        Some("the target holds probabilities (stored as their logarithms, taken on the host)")
    } else if o.sample.is_some() {
        Some("--sample draws from every class's probability, on the host")
    } else {
        None
    };
    let auto = o.postprocess == Postprocess::Auto;
    match why {
        Some(why) if auto => return Ok((false, Some(format!("--postprocess auto: host, {why}")))),
        Some(why) => {
            return Err(TeacherError::Options(format!(
                "--postprocess graph: {why}; use --postprocess host"
            )));
        }
        None => {}
    }
    match teacher.postprocess_in_graph(target, o.k as usize, &o.temperatures, classes) {
        Ok(()) => Ok((true, None)),
        Err(TeacherError::Onnx(e @ logits_onnx::OnnxError::Unsupported { .. })) if auto => {
            Ok((false, Some(format!("--postprocess auto: host, {e}"))))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::Postprocess;
    use crate::runtime::Device;

    fn digits() -> TeacherModel {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/digits/digits_teacher.onnx");
        TeacherModel::open(&p, &[]).expect("the digits fixture")
    }

    /// `auto` puts top-k and logZ in the graph exactly when a session may run on a GPU, keeps
    /// on the host what the graph path cannot do (saying why), and `graph` refuses it.
    #[test]
    fn auto_chooses_the_graph_on_a_gpu_and_the_host_on_the_cpu() {
        let place = |postprocess, devices: Vec<Device>, sample: bool| {
            let o = BuildOptions {
                postprocess,
                devices,
                sample: sample.then_some(SampledSpec {
                    draws: 4,
                    temperature: 1.0,
                    seed: 1,
                }),
                ..BuildOptions::default()
            };
            let mut t = digits();
            postprocess_place(&o, OutputKind::Logits, &mut t, "logits", 10)
        };
        let auto = Postprocess::Auto;
        assert_eq!(
            place(auto, vec![Device::Cpu], false).ok(),
            Some((false, None))
        );
        assert_eq!(
            place(auto, vec![Device::Cuda(0)], false).ok(),
            Some((true, None))
        );
        assert_eq!(
            place(auto, vec![Device::Cpu, Device::Auto], false).ok(),
            Some((true, None))
        );
        let (graph, note) = place(auto, vec![Device::TensorRt(1)], true).expect("auto");
        assert!(!graph && note.is_some_and(|n| n.contains("--sample")));
        assert_eq!(
            place(Postprocess::Host, vec![Device::Cuda(0)], false).ok(),
            Some((false, None))
        );
        assert_eq!(
            place(Postprocess::Graph, vec![Device::Cpu], false).ok(),
            Some((true, None))
        );
        let e = place(Postprocess::Graph, vec![Device::Cuda(0)], true).expect_err("refused");
        assert!(e.to_string().contains("--postprocess host"), "{e}");
    }
}
