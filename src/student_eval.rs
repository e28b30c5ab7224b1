//! Evaluating a trained student against its teacher, and the run report `logits-train` prints
//! and saves (`report.json`): the student's held-out agreement, KL and accuracy from the stored
//! targets, its size and latency, the teacher's, and the check of the exported ONNX file through
//! ONNX Runtime against the ndarray forward (which is why this lives here, where ONNX Runtime is
//! reachable, and not in `logits-student`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use logits_format::Dataset;
use logits_student::config::TrainConfig;
use logits_student::data::{Join, Loader};
use logits_student::eval::{self, Evaluation};
use logits_student::train::{self, Split};
use serde::{Deserialize, Serialize};

use crate::onnx_run::OnnxModel;

/// One side of the comparison (teacher or student).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Side {
    /// Parameters, when known.
    pub params: Option<u64>,
    /// Size of its file in bytes.
    pub bytes: Option<u64>,
    /// Single-row latency of the ndarray forward, µs.
    pub latency_us: Option<f64>,
    /// Single-row latency through ONNX Runtime, µs.
    pub latency_onnx_us: Option<f64>,
}

/// What `train` and `eval` print and save.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The dataset evaluated on.
    pub dataset: String,
    /// How many rows, and which ("360 held-out rows (row id ≥ 1437)").
    pub rows_evaluated: String,
    /// The evaluation (classifier or language-model fields).
    pub evaluation: serde_json::Value,
    /// The teacher's side.
    pub teacher: Side,
    /// The student's side.
    pub student: Side,
    /// Largest |ONNX − ndarray| / max(1, |logit|) over the checked rows.
    pub onnx_max_abs_diff: Option<f64>,
    /// The bound the ONNX check holds the export to.
    pub onnx_tolerance: f64,
    /// Training steps, for a training run.
    pub steps: Option<u64>,
    /// Training wall time, for a training run.
    pub train_seconds: Option<f64>,
    /// The losses in words, for a training run.
    pub losses: Option<String>,
    /// Things the reader should know (a student from another teacher's dataset).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// ONNX check tolerance of the MLP export, relative to max(1, |logit|).
pub const ONNX_TOLERANCE: f64 = 1e-5;

/// ONNX check tolerance of the language-model export (longer chains of f32 operations).
pub const LM_ONNX_TOLERANCE: f64 = 1e-4;

/// The run's losses in words, as the options and config.toml name them.
pub fn describe_losses(c: &TrainConfig) -> String {
    let mut v = Vec::new();
    // The names the options and config.toml use (forward_kl, tail, hint), not Rust's.
    let word = |v: serde_json::Value| v.as_str().map(String::from).unwrap_or_default();
    if c.loss.kd > 0.0 {
        let mut div = word(serde_json::json!(c.loss.divergence));
        if div == "jsd" {
            div = format!("jsd β={}", c.loss.jsd_beta);
        }
        v.push(format!(
            "kd {} ({div}, T={}, top-k {})",
            c.loss.kd,
            c.loss.temperature,
            word(serde_json::json!(c.loss.topk))
        ));
    }
    if c.loss.ce > 0.0 {
        v.push(format!("ce {}", c.loss.ce));
    }
    if c.loss.sampled > 0.0 {
        v.push(format!("sampled {}", c.loss.sampled));
    }
    for f in &c.loss.features {
        v.push(format!(
            "{} {}@{} ×{}",
            word(serde_json::json!(f.kind)),
            f.feature,
            f.layer,
            f.weight()
        ));
    }
    v.join(" + ")
}

/// Evaluates an MLP student file on `ds` (its held-out rows, or all rows), checks its exported
/// `onnx` against the ndarray forward and times it, and times the `teacher` when given.
pub fn evaluate(
    ds: &Dataset,
    student_file: &Path,
    onnx: Option<&Path>,
    teacher: Option<&Path>,
    holdout_from: Option<u64>,
    join: Option<Arc<Join>>,
) -> anyhow::Result<Report> {
    let (s, info) = logits_student::student::load(student_file, None)?;
    let m = ds.manifest();
    let mut warnings = Vec::new();
    if info.teacher_sha256 != m.teacher.sha256 {
        warnings.push(format!(
            "{} was trained from teacher {}, this dataset's teacher is {}",
            student_file.display(),
            info.teacher_sha256,
            m.teacher.sha256
        ));
    }
    let cfg = TrainConfig {
        loss: logits_student::config::LossConfig {
            kd: if m.targets.is_some() { 1.0 } else { 0.0 },
            ce: if m.labels.is_some() { 1.0 } else { 0.0 },
            ..Default::default()
        },
        data: logits_student::config::DataConfig {
            holdout_from,
            ..Default::default()
        },
        ..Default::default()
    };
    let needs = train::needs(&cfg);
    let loader = match join {
        Some(j) => Loader::joined(ds, j, needs)?,
        None => Loader::new(ds, Some(&info.input), needs)?,
    };
    if loader.input_width != s.mlp.input_width() {
        bail!(
            "{}: the student reads {} values, the dataset's input {:?} has {}",
            student_file.display(),
            s.mlp.input_width(),
            info.input,
            loader.input_width
        );
    }
    let (range, rows_label) = eval_rows(ds, &cfg, &info.dataset_id, "rows");
    let batch = loader.load(range)?;
    if batch.is_empty() {
        bail!(
            "{}: no rows to evaluate in {rows_label}",
            ds.root().display()
        );
    }
    train::check_ids(&s.mlp, &batch, &info.input)
        .with_context(|| ds.root().display().to_string())?;
    let logits = s.mlp.predict(batch.x.view());
    let e: Evaluation = eval::evaluate(&logits, &batch);
    let row = batch.x.slice(ndarray::s![0..1, ..]).to_owned();
    let (params, _) = eval::size(&s.mlp);
    let mut student = Side {
        params: Some(params as u64),
        bytes: std::fs::metadata(student_file).ok().map(|m| m.len()),
        latency_us: Some(eval::latency_us(&s.mlp, &row, 2000)),
        latency_onnx_us: None,
    };
    let mut diff = None;
    if let Some(o) = onnx {
        let mut om = OnnxModel::open(o)?;
        let y = om.run(&batch.x, None)?;
        let d = crate::onnx_run::max_scaled_diff(y.iter().copied().zip(logits.iter().copied()));
        diff = Some(d);
        student.latency_onnx_us = Some(om.latency_us(&row, None, 2000)?);
        student.bytes = std::fs::metadata(o).ok().map(|m| m.len());
    }
    let mut t = Side {
        bytes: Some(m.teacher.bytes),
        ..Default::default()
    };
    if let Some(tp) = teacher {
        let proto = logits_onnx::load(tp)?;
        t.params = Some(logits_onnx::model::parameter_count(&proto));
        let mut tm = OnnxModel::open(tp)?;
        let shape: Vec<usize> = m
            .inputs
            .iter()
            .find(|i| i.name == info.input)
            .map(|i| i.fixed_dims())
            .unwrap_or_default();
        t.latency_onnx_us = Some(tm.latency_us(&row, Some(&shape), 2000)?);
    }
    Ok(Report {
        dataset: ds.root().display().to_string(),
        rows_evaluated: format!("{} {rows_label}", batch.len()),
        evaluation: serde_json::to_value(&e)?,
        teacher: t,
        student,
        onnx_max_abs_diff: diff,
        onnx_tolerance: ONNX_TOLERANCE,
        steps: None,
        train_seconds: None,
        losses: None,
        warnings,
    })
}

/// Evaluates a transformer student file on `ds`'s held-out windows (or rows), checks its
/// exported `onnx` against the ndarray forward (unpadded sequences) and times both;
/// `progress(batches done, batches)` follows the evaluation.
pub fn lm_evaluate(
    ds: &Dataset,
    student_file: &Path,
    onnx: Option<&Path>,
    teacher: Option<&Path>,
    holdout_from: Option<u64>,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Report> {
    let (gpt, info) = logits_student::lm::load(student_file)?;
    // Labels where there are any: next tokens (LM), a sequence classifier's stored labels.
    let labelled =
        gpt.spec.encoder.is_none() || (gpt.spec.pooled() && ds.manifest().labels.is_some());
    let cfg = TrainConfig {
        loss: logits_student::config::LossConfig {
            kd: 1.0,
            ce: if labelled { 1.0 } else { 0.0 },
            ..Default::default()
        },
        data: logits_student::config::DataConfig {
            holdout_from,
            ..Default::default()
        },
        ..Default::default()
    };
    let loader = logits_student::lm::LmLoader::new(ds, info.input.as_deref(), train::needs(&cfg))?;
    let unit = if gpt.spec.encoder.is_some() {
        "rows"
    } else {
        "windows"
    };
    let (range, rows_label) = eval_rows(ds, &cfg, &info.dataset_id, unit);
    let batches = logits_student::lm::load_split(&loader, range)?;
    if batches.is_empty() {
        bail!(
            "{}: no {unit} to evaluate in {rows_label}",
            ds.root().display()
        );
    }
    let e = logits_student::lm::evaluate_with_progress(&gpt, &batches, progress);
    let one = one_sequence(&batches[0].tokens, 0);
    let t = Instant::now();
    let reps = 20;
    for _ in 0..reps {
        std::hint::black_box(gpt.predict(&one));
    }
    let mut student = Side {
        params: Some(logits_student::params::Params::parameter_count(&gpt) as u64),
        bytes: std::fs::metadata(student_file).ok().map(|m| m.len()),
        latency_us: Some(t.elapsed().as_secs_f64() * 1e6 / reps as f64),
        latency_onnx_us: None,
    };
    let mut diff = None;
    if let Some(o) = onnx {
        let mut om = OnnxModel::open(o)?;
        let mut worst = 0.0f64;
        for b in batches.iter().take(4) {
            for r in 0..b.tokens.lens.len() {
                // Each sequence alone, unpadded, in both.
                let x = one_sequence(&b.tokens, r);
                let want = gpt.predict(&x);
                let got = run_onnx(&mut om, &gpt.spec, &x)?;
                let d =
                    crate::onnx_run::max_scaled_diff(got.iter().copied().zip(want.iter().copied()));
                if got.len() != want.len() {
                    bail!(
                        "{}: the exported ONNX gave {} values for a sequence, the ndarray student {}",
                        o.display(),
                        got.len(),
                        want.len()
                    );
                }
                worst = if d.is_nan() { d } else { worst.max(d) };
            }
        }
        diff = Some(worst);
        let t = Instant::now();
        for _ in 0..reps {
            run_onnx(&mut om, &gpt.spec, &one)?;
        }
        student.latency_onnx_us = Some(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
        student.bytes = std::fs::metadata(o).ok().map(|m| m.len());
    }
    let m = ds.manifest();
    let mut tside = Side {
        bytes: Some(m.teacher.bytes),
        ..Default::default()
    };
    if let Some(tp) = teacher {
        let proto = logits_onnx::load(tp)?;
        tside.params = Some(logits_onnx::model::parameter_count(&proto));
    }
    Ok(Report {
        dataset: ds.root().display().to_string(),
        rows_evaluated: format!("{} {rows_label}", e.rows),
        evaluation: serde_json::to_value(&e)?,
        teacher: tside,
        student,
        onnx_max_abs_diff: diff,
        onnx_tolerance: LM_ONNX_TOLERANCE,
        steps: None,
        train_seconds: None,
        losses: None,
        warnings: Vec::new(),
    })
}

/// Sequence `r` of a batch alone, without its padding.
fn one_sequence(
    t: &logits_student::transformer::Tokens,
    r: usize,
) -> logits_student::transformer::Tokens {
    let (len, width) = (t.lens[r], t.ids.ncols());
    logits_student::transformer::Tokens {
        ids: t.ids.slice(ndarray::s![r..r + 1, 0..len]).to_owned(),
        lens: vec![len],
        frames: t.frames.as_ref().map(|f| {
            f.slice(ndarray::s![r * width..r * width + len, ..])
                .to_owned()
        }),
    }
}

/// One unpadded sequence through the exported ONNX: its ids, or its frames put back into
/// the input row they were cut from; the first output, flattened.
fn run_onnx(
    om: &mut OnnxModel,
    spec: &logits_student::transformer::GptSpec,
    x: &logits_student::transformer::Tokens,
) -> anyhow::Result<Vec<f32>> {
    match (spec.frames(), &x.frames) {
        (Some(f), Some(frames)) => {
            let (row, shape) = f.to_row(frames.view());
            let n = row.len();
            let out = om.run(&ndarray::Array2::from_shape_vec((1, n), row)?, Some(&shape))?;
            Ok(out.into_iter().collect())
        }
        _ => {
            let ids = x.ids.mapv(|v| v as i64);
            Ok(om.run_ids(&ids)?.1)
        }
    }
}

/// Which rows evaluation reads, and how the report names them: the held-out split when there
/// is one; else every row, said to be training rows only when the student was trained on this
/// very dataset.
fn eval_rows(
    ds: &Dataset,
    cfg: &TrainConfig,
    trained_on: &str,
    unit: &str,
) -> (Option<std::ops::Range<u64>>, String) {
    match Split::of(ds, cfg).holdout {
        Some(r) => {
            let label = format!("held-out {unit} (row id ≥ {})", r.start);
            (Some(r), label)
        }
        None if trained_on != ds.manifest().dataset_id => (
            None,
            format!("all {unit} of a dataset the student was not trained on"),
        ),
        None => (
            None,
            format!("all {unit} (no held-out split declared: these are training rows)"),
        ),
    }
}
