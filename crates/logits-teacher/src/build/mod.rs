//! Building a dataset: corpus → teacher → targets and features → shards.
//!
//! This file holds the options, the report and the top of a build (plan, draft, writer,
//! pipeline, commit), with resume, job-array workers and the merge step. Its rooms:
//! - [`plan`]: the options, model and corpus turned into one plan (target, granularity,
//!   top-k, features), refused here if anything does not fit;
//! - [`feed`]: corpus rows into model inputs (types, shapes, token windows);
//! - [`rows`]: teacher outputs into rows (targets per example or per position, features);
//! - [`draft`]: the manifest draft written from the plan;
//! - [`pipeline`]: the threads and channels that run it all, which cannot hang.
//!
//! The shard plan (rows per shard) depends only on the options, so the output is identical
//! whatever the number of sessions or threads.

mod draft;
mod feed;
mod pipeline;
mod plan;
mod rows;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use logits_format::manifest::{FeatureEncoding, Manifest, Pooling, SampledSpec, ValueEncoding};
use logits_format::writer::{self, CreateMode, DatasetWriter, WriteOptions};

use crate::corpus::ColumnMap;
use crate::error::{Result, TeacherError};

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
    /// Context-coded top-k (`ctx-v1`; needs int8 values).
    pub coded: bool,
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
    /// Where top-k and logZ are computed from the teacher's output (`--postprocess`).
    pub postprocess: Postprocess,
    /// Where sessions run: session i on `devices[i % len]` (`--device`).
    pub devices: Vec<crate::runtime::Device>,
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

/// Where top-k and logZ are computed from the teacher's output (`--postprocess`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Postprocess {
    /// On the host, from every logit copied out of ONNX Runtime.
    Host,
    /// Inside the teacher graph (TopK, ReduceLogSumExp); a target it cannot take is refused.
    Graph,
    /// Inside the graph when the sessions run on a GPU (where copying every logit out is what
    /// costs), on the host on the CPU (measured faster there, BENCHMARKS.md); a target the
    /// graph path cannot take stays on the host, with the reason in the manifest.
    Auto,
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
            coded: false,
            sample: None,
            features: vec![],
            store_inputs: true,
            output_is_probability: false,
            rows_per_shard: 100_000,
            batch_size: 64,
            sessions: 1,
            intra_threads: 1,
            devices: vec![crate::runtime::Device::Cpu],
            postprocess: Postprocess::Auto,
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

/// The shard plan: runs of `per` consecutive corpus rows, restarted at `holdout` (a row id
/// strictly inside the corpus) so that no shard holds rows of both splits — the dataset card
/// can then give each split its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    /// Corpus rows.
    pub rows: u64,
    /// Rows per shard.
    pub per: u64,
    /// Where the held-out rows start, when inside the corpus.
    pub holdout: Option<u64>,
}

impl ShardPlan {
    /// The plan for `rows` rows in shards of `per`, cut at `holdout` when it lies inside.
    pub fn new(rows: u64, per: u64, holdout: Option<u64>) -> ShardPlan {
        ShardPlan {
            rows,
            per: per.max(1),
            holdout: holdout.filter(|&h| h > 0 && h < rows),
        }
    }

    /// Shards in the plan.
    pub fn shards(&self) -> u32 {
        match self.holdout {
            Some(h) => (h.div_ceil(self.per) + (self.rows - h).div_ceil(self.per)) as u32,
            None => self.rows.div_ceil(self.per) as u32,
        }
    }

    /// The corpus rows of shard `s`.
    pub fn range(&self, s: u32) -> std::ops::Range<u64> {
        let s = s as u64;
        match self.holdout {
            Some(h) if s < h.div_ceil(self.per) => s * self.per..((s + 1) * self.per).min(h),
            Some(h) => {
                let t = s - h.div_ceil(self.per);
                h + t * self.per..(h + (t + 1) * self.per).min(self.rows)
            }
            None => s * self.per..((s + 1) * self.per).min(self.rows),
        }
    }
}

/// Peak resident set size of this process (VmHWM), where /proc tells it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The devices the sessions will run on: each GPU device checked by starting a session on it,
/// `auto` resolved to CUDA device 0 or the CPU (with the reason).
fn resolve_devices(
    teacher: &crate::teacher::TeacherModel,
    o: &BuildOptions,
) -> Result<(Vec<crate::runtime::Device>, Option<String>)> {
    use crate::runtime::Device;
    let mut out = Vec::new();
    let mut note = None;
    for &d in &o.devices {
        if d == Device::Cpu {
            out.push(d);
            continue;
        }
        let (_, used, why) = teacher.device_session(o.intra_threads, d)?;
        if why.is_some() {
            note = why;
        }
        out.push(used);
    }
    Ok((out, note))
}

/// Runs a build (or this worker's part of it), committing the manifest when every shard of
/// the plan is complete. `progress(rows_done, rows_total)` is called as batches are written.
pub fn build(o: &BuildOptions, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<BuildReport> {
    let t0 = Instant::now();
    o.check().map_err(TeacherError::Options)?;
    let (mut plan, mut corpus) = plan::Plan::make(o)?;
    // GPU devices are tried before anything is written, so one that cannot be used fails the
    // build at once, with nothing to clean up.
    let (devices, device_note) = resolve_devices(&plan.teacher, o)?;
    if o.postprocess == Postprocess::Auto
        && plan.in_graph
        && devices.iter().all(|d| *d == crate::runtime::Device::Cpu)
    {
        // `--device auto` found no GPU: the CPU's choice is the host path.
        let on_cpu = BuildOptions {
            devices: devices.clone(),
            ..o.clone()
        };
        (plan, corpus) = plan::Plan::make(&on_cpu)?;
    }
    let mut draft = draft::draft(o, &plan, &corpus)?;
    draft.tool.runtime = Some(serde_json::json!({
        "onnxruntime": crate::runtime::ort_version(),
        "devices": devices.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "providers": devices.iter().map(|d| d.provider()).collect::<Vec<_>>(),
        "note": device_note,
        "postprocess": if plan.in_graph { "graph" } else { "host" },
        "postprocess_note": plan.postprocess_note,
    }));
    // The sessions run on the resolved devices (`auto` decided once, here).
    let resolved = BuildOptions {
        devices,
        ..o.clone()
    };
    let o = &resolved;
    let rows = corpus.rows();
    let mut w = DatasetWriter::create(&o.out, draft, o.write.clone(), o.mode)?;
    // The tokenizer travels with a text dataset (the manifest names it by sha256; a receiving
    // team needs the file itself).
    if let plan::Source::Text(t) = &corpus {
        let p = t.tokenizer_path();
        let bytes = std::fs::read(p).map_err(|e| logits_format::FormatError::io(p, e))?;
        w.attach("tokenizer.json", &bytes)?;
    }
    let shard_plan = ShardPlan::new(rows, o.rows_per_shard, o.holdout_from);
    let plan_shards = shard_plan.shards();
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
        .map(|&s| {
            let r = shard_plan.range(s);
            r.end - r.start
        })
        .sum();
    let plan = Arc::new(plan);
    let (written, skipped) =
        match pipeline::run_pipeline(o, &plan, &corpus, &todo, &mut w, total_rows, progress) {
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
            ShardPlan::new(draft.corpus.rows, per, draft.corpus.holdout_from).shards()
        }
    };
    Ok(writer::commit(out, Some(plan))?)
}

#[cfg(test)]
mod tests {
    /// Shards restart at the held-out boundary; without one (or with one outside the corpus)
    /// the plan is plain runs of `per`.
    #[test]
    fn shards_restart_at_the_held_out_boundary() {
        let p = super::ShardPlan::new(1797, 500, Some(1437));
        let ranges: Vec<_> = (0..p.shards()).map(|s| p.range(s)).collect();
        assert_eq!(ranges, vec![0..500, 500..1000, 1000..1437, 1437..1797]);
        let p = super::ShardPlan::new(25, 10, Some(12));
        let ranges: Vec<_> = (0..p.shards()).map(|s| p.range(s)).collect();
        assert_eq!(ranges, vec![0..10, 10..12, 12..22, 22..25]);
        for h in [None, Some(0), Some(25), Some(99)] {
            let p = super::ShardPlan::new(25, 10, h);
            let ranges: Vec<_> = (0..p.shards()).map(|s| p.range(s)).collect();
            assert_eq!(ranges, vec![0..10, 10..20, 20..25], "{h:?}");
        }
    }
}
