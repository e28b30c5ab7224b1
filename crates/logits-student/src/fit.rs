//! The one training loop every student runs through, and what a run keeps: the
//! [`Architecture`] trait a student implements (its batches, the loss and gradient of one,
//! a zero copy for gradients), [`fit`] (batches → loss and gradient → optimizer step →
//! metrics and checkpoints, epoch after epoch), and the run's files.
//!
//! Determinism: initialisation, shuffling (seed + epoch) and dropout (seed + step) are all
//! seeded, and matrixmultiply is single-threaded, so the same seed and data give the same
//! weights; a resumed run replays the epoch's order and skips the batches already taken, so it
//! ends bit-identical to an uninterrupted one (tested).
//!
//! Checkpoint layout under the output directory:
//! `checkpoints/step-NNNNNNNN/{student.safetensors, optimizer.safetensors, state.json}` and
//! `checkpoints/latest` naming the newest, written last (temporary file + rename), so a crash
//! mid-checkpoint leaves the previous one in force.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use logits_format::Dataset;
use logits_format::lock::{LockMode, OutputLock};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::TrainConfig;
use crate::error::{Result, StudentError, io};
use crate::optim::Optimizer;
use crate::params::Params;
use crate::student::{self, read_safetensors, to_safetensors, write_atomic};

/// What a student architecture gives the one training loop (the MLP and convolutional
/// student, the transformer students).
pub trait Architecture: Params + Clone {
    /// The batches it trains on.
    type Batch;
    /// A zero student of the same shape (the gradient accumulator).
    fn zeros_like(&self) -> Self;
    /// The loss of `batch` and its gradient, written into `grad` (zeroed first).
    fn loss_and_grad(
        &self,
        grad: &mut Self,
        batch: &Self::Batch,
        at: &StepContext,
    ) -> Result<Terms>;
    /// Rows or positions in `batch` (the unit of the throughput metric).
    fn units(batch: &Self::Batch) -> u64;
    /// What its file says about it.
    type Info: Serialize;
    /// Writes the deployable model (without training-only parts) into `dir`:
    /// `student.onnx` in `opset` and `student.safetensors`; returns their paths.
    fn export(
        &self,
        info: &Self::Info,
        dir: &Path,
        opset: crate::export::Opset,
    ) -> Result<(PathBuf, PathBuf)>;
}

/// What a step's loss depends on besides the batch.
#[derive(Debug, Clone, Copy)]
pub struct StepContext<'a> {
    /// The run's configuration (loss weights, temperature, seed).
    pub cfg: &'a TrainConfig,
    /// Temperature the dataset's sampled targets were drawn at.
    pub sampled_t: f64,
    /// Steps taken before this one (seeds dropout; names the step in errors).
    pub step: u64,
}

/// The one training loop: from where `start` says (epoch, batches of it already taken),
/// each batch of `batches(epoch)` → [`Architecture::loss_and_grad`] → an optimizer step →
/// metrics and checkpoints by `rec`, until `total` steps.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit<S: Architecture, I>(
    s: &mut S,
    opt: &mut Optimizer,
    rec: &mut Recorder<'_>,
    total: u64,
    start: (u64, u64),
    batches: impl FnMut(u64) -> Result<I>,
    sampled_t: f64,
    on_log: &mut dyn FnMut(u64, u64, &Value),
) -> Result<()>
where
    I: Iterator<Item = Result<S::Batch>>,
{
    let cfg = rec.cfg;
    let mut grad = s.zeros_like();
    run_epochs(total, opt.step, start, batches, |b, position| {
        let at = StepContext {
            cfg,
            sampled_t,
            step: opt.step,
        };
        let terms = s.loss_and_grad(&mut grad, &b, &at)?;
        let si = opt.step(s, &grad);
        rec.step(s, opt, si, &terms, position, S::units(&b), on_log)?;
        Ok(opt.step)
    })
}

/// Loss values of one step: each term unweighted, and the weighted total.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Terms {
    /// Σ weight · term.
    pub total: f64,
    /// (name, unweighted value) of every active term.
    pub parts: Vec<(String, f64)>,
}

/// Saved with every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Steps taken.
    pub step: u64,
    /// Epoch of the next batch.
    pub epoch: u64,
    /// Batches of that epoch already taken.
    pub batch_in_epoch: u64,
    /// Training rows.
    pub train_rows: u64,
    /// The dataset trained on.
    pub dataset_id: String,
    /// sha256 of the dataset's teacher.
    pub teacher_sha256: String,
    /// The run's configuration.
    pub config: TrainConfig,
}

/// Where a run keeps its files.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }
    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    /// The newest checkpoint directory, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        let p = self.checkpoints().join("latest");
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(self.checkpoints().join(s.trim()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StudentError::Io { path: p, source: e }),
        }
    }
}

/// Rows of `range` (reading only the row ids).
pub(crate) fn count_rows(ds: &Dataset, range: Option<std::ops::Range<u64>>) -> Result<u64> {
    let mut s = ds.stream(&logits_format::ReadOptions {
        columns: Some(Vec::new()),
        batch_size: 65536,
        row_range: range,
        ..Default::default()
    })?;
    let mut n = 0u64;
    while let Some(b) = s.next_rows() {
        n += b?.len() as u64;
    }
    Ok(n)
}

/// Writes a checkpoint of `model` (weights with `meta` as its self-description), the
/// optimizer's moments and the run state, then points `checkpoints/latest` at it.
pub(crate) fn save_checkpoint(
    dir: &RunDir,
    model: &dyn Params,
    opt: &Optimizer,
    state: &State,
    meta: &HashMap<String, String>,
) -> Result<()> {
    let name = format!("step-{:08}", state.step);
    let d = dir.checkpoints().join(&name);
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    write_atomic(
        &d.join("student.safetensors"),
        &to_safetensors(&model.tensors(), meta.clone())?,
    )?;
    let mut t: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    for (i, (n, shape, _)) in model.tensors().into_iter().enumerate() {
        t.push((format!("m.{n}"), shape.clone(), &opt.m[i]));
        if let Some(v) = opt.v.get(i) {
            t.push((format!("v.{n}"), shape, v));
        }
    }
    let mut om = HashMap::new();
    om.insert("step".to_string(), opt.step.to_string());
    write_atomic(&d.join("optimizer.safetensors"), &to_safetensors(&t, om)?)?;
    let js = serde_json::to_vec_pretty(state).map_err(|e| StudentError::Config(e.to_string()))?;
    write_atomic(&d.join("state.json"), &js)?;
    write_atomic(&dir.checkpoints().join("latest"), name.as_bytes())
}

/// Opens the run directory `out` and finds its latest checkpoint, refusing a directory that
/// holds a run unless resuming.
/// The run directory is locked for the run's life (the returned lock): a second run on it at
/// the same time is refused with the first one's pid and host.
pub(crate) fn open_run_dir(
    out: &Path,
    resume: bool,
) -> Result<(RunDir, Option<PathBuf>, OutputLock)> {
    let dir = RunDir(out.to_path_buf());
    std::fs::create_dir_all(dir.checkpoints()).map_err(io(dir.checkpoints()))?;
    let lock = OutputLock::acquire(out, LockMode::Exclusive, "a training run")?;
    let latest = dir.latest()?;
    if latest.is_some() && !resume {
        return Err(StudentError::Config(format!(
            "{} already holds a training run; pass --resume to continue it or choose another output directory",
            out.display()
        )));
    }
    Ok((dir, latest, lock))
}

/// Where a run starts: `fresh`, or the checkpoint `latest` (student, optimizer state, epoch and
/// batch within it) after checking it belongs to this dataset and configuration; with the
/// recorder of metrics and checkpoints opened accordingly.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_run<'a, S: Params + Clone>(
    dir: &RunDir,
    latest: Option<&Path>,
    fresh: &S,
    opt: &mut Optimizer,
    cfg: &'a TrainConfig,
    m: &'a logits_format::Manifest,
    meta: HashMap<String, String>,
    counts: (u64, u64, u64),
    rate_key: &'static str,
) -> Result<(S, (u64, u64), Recorder<'a>)> {
    let mut s = fresh.clone();
    let (mut at, mut resumed_at) = ((0u64, 0u64), None);
    if let Some(latest) = latest {
        let (d, st) = load_usable_checkpoint(dir, latest, &mut s, opt, fresh)?;
        refuse_foreign(&d, &st, m, cfg)?;
        at = (st.epoch, st.batch_in_epoch);
        resumed_at = Some(st.step);
    }
    let rec = Recorder::open(dir, resumed_at, cfg, m, meta, counts, rate_key)?;
    Ok((s, at, rec))
}

/// Loads the newest checkpoint that loads: `latest`, or, when it is damaged (a truncated
/// file after a crash or a full disk), the newest earlier `step-*` directory, saying so on
/// stderr. Fails, naming `latest`'s problem, when none loads.
fn load_usable_checkpoint<S: Params + Clone>(
    dir: &RunDir,
    latest: &Path,
    model: &mut S,
    opt: &mut Optimizer,
    fresh: &S,
) -> Result<(PathBuf, State)> {
    let first = match load_checkpoint(latest, model, opt) {
        Ok(st) => return Ok((latest.to_path_buf(), st)),
        Err(e) => e,
    };
    let mut older: Vec<PathBuf> = std::fs::read_dir(dir.checkpoints())
        .map_err(io(dir.checkpoints()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p != latest
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    // step-NNNNNNNN sorts by step; newest first.
    older.sort();
    older.reverse();
    for d in older {
        *model = fresh.clone();
        if let Ok(st) = load_checkpoint(&d, model, opt) {
            eprintln!(
                "warning: the newest checkpoint is damaged ({first}); resuming from {} instead",
                d.display()
            );
            return Ok((d, st));
        }
    }
    Err(first)
}

/// Loads the checkpoint in `d` into `model` (same shape) and `opt`; returns its state.
pub(crate) fn load_checkpoint(
    d: &Path,
    model: &mut dyn Params,
    opt: &mut Optimizer,
) -> Result<State> {
    let sp = d.join("state.json");
    let state: State =
        serde_json::from_slice(&std::fs::read(&sp).map_err(io(&sp))?).map_err(|e| {
            StudentError::Checkpoint {
                path: sp.clone(),
                why: e.to_string(),
            }
        })?;
    student::load_into(&d.join("student.safetensors"), model)?;
    let op = d.join("optimizer.safetensors");
    let (mut t, _) = read_safetensors(&op)?;
    let names: Vec<String> = model.tensors().into_iter().map(|(n, _, _)| n).collect();
    for (i, n) in names.iter().enumerate() {
        let mut take = |k: String, len: usize| -> Result<Vec<f32>> {
            match t.remove(&k) {
                Some((_, v)) if v.len() == len => Ok(v),
                _ => Err(StudentError::Checkpoint {
                    path: op.clone(),
                    why: format!("optimizer state {k} is missing or has the wrong size"),
                }),
            }
        };
        let len = opt.m[i].len();
        opt.m[i] = take(format!("m.{n}"), len)?;
        if i < opt.v.len() {
            opt.v[i] = take(format!("v.{n}"), len)?;
        }
    }
    opt.step = state.step;
    Ok(state)
}

/// Metrics lines and checkpoints of a run, the same for both students' loops.
pub(crate) struct Recorder<'a> {
    dir: RunDir,
    file: std::fs::File,
    window: (Instant, u64),
    rate_key: &'static str,
    cfg: &'a TrainConfig,
    manifest: &'a logits_format::Manifest,
    meta: HashMap<String, String>,
    per_epoch: u64,
    total: u64,
    train_rows: u64,
    /// The last metrics line written.
    pub(crate) last: Option<Value>,
}

impl<'a> Recorder<'a> {
    /// Opens `metrics.jsonl` (cut back to `resumed_at` on resume, started afresh otherwise).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        dir: &RunDir,
        resumed_at: Option<u64>,
        cfg: &'a TrainConfig,
        manifest: &'a logits_format::Manifest,
        meta: HashMap<String, String>,
        (per_epoch, total, train_rows): (u64, u64, u64),
        rate_key: &'static str,
    ) -> Result<Recorder<'a>> {
        match resumed_at {
            Some(step) => truncate_metrics(&dir.metrics(), step)?,
            None => {
                let _ = std::fs::remove_file(dir.metrics());
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.metrics())
            .map_err(io(dir.metrics()))?;
        Ok(Recorder {
            dir: dir.clone(),
            file,
            window: (Instant::now(), 0),
            rate_key,
            cfg,
            manifest,
            meta,
            per_epoch,
            total,
            train_rows,
            last: None,
        })
    }

    /// After an optimizer step over `items` rows or tokens (the `b_in_epoch`-th batch of
    /// `epoch`): writes the metrics line and the checkpoint when they are due.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step(
        &mut self,
        model: &dyn Params,
        opt: &Optimizer,
        si: crate::optim::StepInfo,
        terms: &Terms,
        (epoch, b_in_epoch): (u64, u64),
        items: u64,
        on_log: &mut dyn FnMut(u64, u64, &Value),
    ) -> Result<()> {
        self.window.1 += items;
        let done = opt.step;
        check_finite(model, si.grad_norm, done)?;
        if done.is_multiple_of(self.cfg.run.log_every.max(1)) || done == self.total {
            let secs = self.window.0.elapsed().as_secs_f64().max(1e-9);
            let mut line = json!({
                "step": done, "epoch": epoch, "lr": si.lr, "loss": terms.total,
                "grad_norm": si.grad_norm,
            });
            line[self.rate_key] = json!(self.window.1 as f64 / secs);
            for (k, v) in &terms.parts {
                line[k] = json!(v);
            }
            writeln!(self.file, "{line}").map_err(io(self.dir.metrics()))?;
            on_log(done, self.total, &line);
            self.last = Some(line);
            self.window = (Instant::now(), 0);
        }
        let every = self.cfg.run.checkpoint_every;
        if (every > 0 && done.is_multiple_of(every)) || done == self.total {
            return self.checkpoint(model, opt, (epoch, b_in_epoch));
        }
        // A stop asked for by a signal: checkpoint where we are, so --resume continues here.
        if self.cfg.run.stop.is_set() {
            self.checkpoint(model, opt, (epoch, b_in_epoch))?;
            return Err(StudentError::Interrupted {
                step: done,
                dir: self.dir.0.clone(),
            });
        }
        Ok(())
    }

    /// Writes a checkpoint after the `b_in_epoch`-th batch of `epoch` (the metrics so far
    /// flushed first).
    fn checkpoint(
        &mut self,
        model: &dyn Params,
        opt: &Optimizer,
        (epoch, b_in_epoch): (u64, u64),
    ) -> Result<()> {
        let (epoch, batch_in_epoch) = if b_in_epoch >= self.per_epoch {
            (epoch + 1, 0)
        } else {
            (epoch, b_in_epoch)
        };
        let state = State {
            step: opt.step,
            epoch,
            batch_in_epoch,
            train_rows: self.train_rows,
            dataset_id: self.manifest.dataset_id.clone(),
            teacher_sha256: self.manifest.teacher.sha256.clone(),
            config: self.cfg.clone(),
        };
        self.file.flush().map_err(io(self.dir.metrics()))?;
        save_checkpoint(&self.dir, model, opt, &state, &self.meta)
    }
}

/// Stops a run whose gradient norm or weights stopped being finite, naming the step and the
/// tensor, so a diverged student is never saved or exported as if it had trained.
fn check_finite(model: &dyn Params, grad_norm: f64, step: u64) -> Result<()> {
    if !grad_norm.is_finite() {
        return Err(StudentError::NonFinite {
            step,
            term: format!("the gradient (norm {grad_norm})"),
            row: None,
        });
    }
    for (name, _, values) in model.tensors() {
        if values.iter().any(|v| !v.is_finite()) {
            return Err(StudentError::NonFinite {
                step,
                term: format!("weights {name}"),
                row: None,
            });
        }
    }
    Ok(())
}

/// The epoch loop both students share: batches of each epoch in its seeded order (from
/// `batches(epoch)`), the first `skip` of the starting epoch passed over (a resumed run), one
/// `step(batch, (epoch, batches taken in the epoch))` per batch returning the steps done,
/// until `total`.
pub(crate) fn run_epochs<B, I>(
    total: u64,
    mut done: u64,
    (mut epoch, mut skip): (u64, u64),
    mut batches: impl FnMut(u64) -> Result<I>,
    mut step: impl FnMut(B, (u64, u64)) -> Result<u64>,
) -> Result<()>
where
    I: Iterator<Item = Result<B>>,
{
    while done < total {
        let mut taken = 0u64;
        for b in batches(epoch)? {
            taken += 1;
            if taken <= skip {
                continue;
            }
            done = step(b?, (epoch, taken))?;
            if done >= total {
                return Ok(());
            }
        }
        epoch += 1;
        skip = 0;
    }
    Ok(())
}

/// Refuses to resume from a checkpoint of another teacher, dataset or configuration.
pub(crate) fn refuse_foreign(
    d: &Path,
    st: &State,
    m: &logits_format::Manifest,
    cfg: &TrainConfig,
) -> Result<()> {
    let refuse = |why: String| StudentError::Checkpoint {
        path: d.to_path_buf(),
        why,
    };
    if st.teacher_sha256 != m.teacher.sha256 {
        return Err(refuse(format!(
            "the checkpoint was trained from a dataset of teacher {}, this dataset's teacher is {}: refusing to resume",
            st.teacher_sha256, m.teacher.sha256
        )));
    }
    if st.dataset_id != m.dataset_id {
        return Err(refuse(format!(
            "the checkpoint was trained on dataset {}, this is {}: refusing to resume",
            st.dataset_id, m.dataset_id
        )));
    }
    if st.config != *cfg {
        return Err(refuse(format!(
            "the configuration differs from the checkpoint's ({}; the run's config.toml holds the saved one): resume with the same settings",
            config_differences(&st.config, cfg).join(", ")
        )));
    }
    Ok(())
}

/// The settings that differ between two configurations, as `section.key: saved → now`.
fn config_differences(saved: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(saved).unwrap_or_default(),
        serde_json::to_value(now).unwrap_or_default(),
    );
    let mut out = Vec::new();
    let empty = serde_json::Map::new();
    let (ao, bo) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    for (k, av) in ao {
        let bv = bo.get(k).cloned().unwrap_or_default();
        match (av.as_object(), bv.as_object()) {
            (Some(x), Some(y)) => {
                for (kk, xv) in x {
                    let yv = y.get(kk).cloned().unwrap_or_default();
                    if *xv != yv {
                        out.push(format!("{k}.{kk}: {xv} → {yv}"));
                    }
                }
            }
            _ if *av != bv => out.push(format!("{k}: {av} → {bv}")),
            _ => {}
        }
    }
    if out.is_empty() {
        out.push("settings".into());
    }
    out
}

/// Cuts `metrics.jsonl` back to the lines of steps ≤ `step` (a resumed run rewrites the rest).
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}
