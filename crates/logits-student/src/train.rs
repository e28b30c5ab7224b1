//! The MLP and convolutional student's run: the split, what the losses need from the
//! dataset, the student's loss and gradient (its [`Architecture`] implementation), and
//! `train`, which settles what the data decides (image shape, embedding, standardisation)
//! and hands the batches to the one training loop ([`crate::fit`]).

use std::path::{Path, PathBuf};

use logits_format::Dataset;
use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::config::{FeatureKind, TrainConfig};
use crate::data::{Batch, Join, Loader, Needs};
use crate::error::{Result, StudentError};
use crate::losses::{feature, response};
use crate::mlp::{Linear, Mlp};
use crate::norm::{InputNorm, Moments};
use crate::optim::Optimizer;
use crate::params::Params;
use crate::student::{self, Student, StudentInfo};

use crate::fit::{Architecture, StepContext, count_rows, open_run_dir, start_run};
pub use crate::fit::{RunDir, State, Terms};

/// The dataset rows a run trains on and evaluates on.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Training rows (None: all).
    pub train: Option<std::ops::Range<u64>>,
    /// Held-out rows (None: no held-out split declared).
    pub holdout: Option<std::ops::Range<u64>>,
}

impl Split {
    /// The split in effect: the run's `holdout_from`, else the dataset's.
    pub fn of(ds: &Dataset, cfg: &TrainConfig) -> Split {
        match cfg.data.holdout_from.or(ds.manifest().corpus.holdout_from) {
            Some(h) => Split {
                train: Some(0..h),
                holdout: Some(h..u64::MAX),
            },
            None => Split {
                train: None,
                holdout: None,
            },
        }
    }
}

/// What the losses of `cfg` need from a dataset.
pub fn needs(cfg: &TrainConfig) -> Needs {
    let mut features: Vec<String> = cfg
        .loss
        .features
        .iter()
        .map(|f| f.feature.clone())
        .collect();
    features.sort();
    features.dedup();
    Needs {
        topk: cfg.loss.kd > 0.0,
        sampled: cfg.loss.sampled > 0.0,
        labels: cfg.loss.ce > 0.0,
        features,
    }
}

/// Which settings the user chose (in a configuration file or by a flag) rather than left at
/// their defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chosen {
    /// The distillation temperature.
    pub temperature: bool,
    /// The cross-entropy weight.
    pub ce: bool,
}

/// Fits the defaults the user did not choose to what `ds` holds, so that a dataset built with
/// `logits-build`'s defaults trains with `logits-train`'s: the tail-bucket loss at T = 4 needs
/// logZ at 4, which the build stores only when asked (`--temperatures 4`), so without it the
/// run distils at T = 1; cross-entropy needs labels (a label column, or a language model's
/// next tokens), so without them it is off. Returns one note per change, to be shown; a
/// setting the user chose is left as is (and refused later if the dataset cannot serve it).
pub fn fit_defaults(ds: &Dataset, cfg: &mut TrainConfig, chosen: Chosen) -> Result<Vec<String>> {
    let m = ds.manifest();
    let mut notes = Vec::new();
    let t = cfg.loss.temperature;
    if !chosen.temperature
        && cfg.loss.kd > 0.0
        && cfg.topk_mode() == response::TopKMode::TailBucket
        && let Some(spec) = &m.targets
        && t != 1.0
        && !spec.temperatures.contains(&t)
    {
        cfg.loss.temperature = 1.0;
        notes.push(format!(
            "the dataset stores logZ only at T = 1{}, not at the default T = {t}: distilling at T = 1 (rebuild with --temperatures {t} to distil at T = {t}, or pass -T)",
            if spec.temperatures.is_empty() {
                String::new()
            } else {
                format!(
                    ", {}",
                    spec.temperatures
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ));
    }
    if !chosen.ce && cfg.loss.ce > 0.0 {
        let per_position = m
            .targets
            .as_ref()
            .is_some_and(|t| t.granularity == logits_format::manifest::Granularity::Position);
        let labelled = if per_position {
            // A language model's labels are its windows' next tokens; an encoder's per-position
            // targets (token classifiers, CTC) come with no labels.
            crate::seq_data::LmLoader::new(ds, cfg.model.input.as_deref(), Needs::default())
                .map(|l| l.kind.lm)
                .unwrap_or(true)
        } else {
            m.labels.is_some()
        };
        if !labelled {
            notes.push(format!(
                "the dataset has no labels: cross-entropy (default weight {}) is off; build with --label-column to use labels",
                cfg.loss.ce
            ));
            cfg.loss.ce = 0.0;
        }
    }
    Ok(notes)
}

/// Refuses a configuration the dataset cannot serve beyond missing columns: a tail-bucket
/// response loss at a temperature whose logZ was not stored.
pub fn check_against(ds: &Dataset, cfg: &TrainConfig) -> Result<()> {
    // Every shard present at its recorded size before any training: a run must not spend
    // hours and then fail (or export) on a dataset that was damaged from the start.
    ds.check_shard_sizes()?;
    let t = cfg.loss.temperature;
    if cfg.loss.kd > 0.0
        && cfg.topk_mode() == response::TopKMode::TailBucket
        && let Some(spec) = &ds.manifest().targets
        && t != 1.0
        && !spec.temperatures.contains(&t)
    {
        let stored: Vec<String> = std::iter::once(1.0)
            .chain(spec.temperatures.iter().copied())
            .map(|x| x.to_string())
            .collect();
        return Err(StudentError::Dataset {
            dataset: ds.root().to_path_buf(),
            what: format!(
                "the tail-bucket loss at T={t} needs logZ at that temperature, but the dataset stores it only at T = {}; train at one of those, use loss.topk = \"renormalize\", or rebuild with --temperatures {t}",
                stored.join(", ")
            ),
        });
    }
    Ok(())
}

/// A fresh student for `cfg` on a dataset with `inputs` input values and `classes` outputs;
/// projections are sized from the stored feature widths.
pub fn init_student(
    ds: &Dataset,
    cfg: &TrainConfig,
    inputs: usize,
    classes: usize,
) -> Result<Student> {
    let widths = cfg.mlp_spec(inputs, classes).widths;
    let params: u64 = widths
        .windows(2)
        .map(|w| {
            (w[0] as u64)
                .saturating_mul(w[1] as u64)
                .saturating_add(w[1] as u64)
        })
        .fold(0u64, u64::saturating_add)
        .saturating_add(
            cfg.model
                .embed
                .map_or(0, |[v, d]| (v as u64).saturating_mul(d as u64)),
        );
    check_fits(params, logits_format::host::available_memory())?;
    let mlp = Mlp::new(cfg.mlp_spec(inputs, classes), cfg.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x005e_ed0f_9e07);
    let mut projections = Vec::new();
    for f in &cfg.loss.features {
        projections.push(match f.kind {
            FeatureKind::Hint | FeatureKind::Cosine => {
                let spec = ds
                    .manifest()
                    .features
                    .iter()
                    .find(|s| s.name == f.feature)
                    .ok_or_else(|| StudentError::Dataset {
                        dataset: ds.root().to_path_buf(),
                        what: format!("no teacher feature named {:?}", f.feature),
                    })?;
                Some(Linear::glorot(
                    cfg.model.hidden[f.layer],
                    spec.width(),
                    &mut rng,
                ))
            }
            _ => None,
        });
    }
    Ok(Student { mlp, projections })
}

/// Refuses, before anything is allocated, a model whose weights, gradients and two optimizer
/// moments (16 bytes a parameter, f32) would not fit in `available` bytes.
pub fn check_fits(params: u64, available: Option<u64>) -> Result<()> {
    let need = params.saturating_mul(16);
    match available {
        Some(a) if need > a => Err(StudentError::TooLarge {
            params,
            need_gib: need as f64 / (1u64 << 30) as f64,
            available_gib: a as f64 / (1u64 << 30) as f64,
        }),
        _ => Ok(()),
    }
}

fn feature_term_name(f: &crate::config::FeatureLoss) -> String {
    let kind = serde_json::to_value(f.kind)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    format!("{kind}:{}@{}", f.feature, f.layer)
}

/// Loss and gradient of one batch: fills `grad` (zeroed first) and returns the terms.
pub fn loss_and_grad(
    s: &Student,
    grad: &mut Student,
    batch: &Batch,
    cfg: &TrainConfig,
    sampled_t: f64,
    dropout: Option<&mut ChaCha8Rng>,
    step: u64,
) -> Result<Terms> {
    grad.zero();
    let rows = batch.len();
    let inv = 1.0 / rows.max(1) as f64;
    let (logits, cache) = s.mlp.forward(batch.x.view(), dropout);
    let classes = logits.ncols();
    let mut dlogits = Array2::<f32>::zeros(logits.raw_dim());
    let mut terms = Terms::default();
    let t = cfg.loss.temperature;
    let nonfinite = |term: &str, row: Option<u64>| StudentError::NonFinite {
        step,
        term: term.to_string(),
        row,
    };
    let bad_id = |row: u64, id: u64| StudentError::Dataset {
        dataset: PathBuf::new(),
        what: format!("row {row}: class id {id} is outside the student's {classes} outputs"),
    };
    if cfg.loss.kd > 0.0
        && let Some(tr) = &batch.teacher
    {
        let (div, mode) = (cfg.divergence(), cfg.topk_mode());
        let mut sum = 0.0;
        for r in 0..rows {
            let ids = tr.ids(r);
            if let Some(&m) = ids.iter().find(|&&i| i as usize >= classes) {
                return Err(bad_id(batch.row_ids[r], m as u64));
            }
            let lp = match mode {
                response::TopKMode::TailBucket => tr
                    .logprobs(r, t)
                    .ok_or_else(|| StudentError::Config(format!("logZ at T={t} is not stored")))?,
                response::TopKMode::Renormalize => tr.renormalised_logprobs(r, t),
            };
            if lp.iter().any(|x| !x.is_finite()) {
                return Err(nonfinite("teacher targets", Some(batch.row_ids[r])));
            }
            let srow = logits.row(r);
            let srow = srow.as_slice().unwrap_or(&[]);
            let mut g = dlogits.row_mut(r);
            let g = g.as_slice_mut().unwrap_or(&mut []);
            let teacher = response::TeacherTargets { ids, logprobs: &lp };
            sum += response::response_loss(srow, teacher, t, div, mode, cfg.loss.kd * inv, g);
        }
        terms.parts.push(("kd".into(), sum * inv));
        terms.total += cfg.loss.kd * sum * inv;
    }
    if cfg.loss.ce > 0.0
        && let Some(labels) = &batch.labels
    {
        let n = labels.iter().flatten().count().max(1) as f64;
        let mut sum = 0.0;
        for (r, l) in labels.iter().enumerate() {
            let Some(l) = *l else { continue };
            if l < 0 || l as usize >= classes {
                return Err(bad_id(batch.row_ids[r], l as u64));
            }
            let srow = logits.row(r);
            let mut g = dlogits.row_mut(r);
            sum += response::cross_entropy(
                srow.as_slice().unwrap_or(&[]),
                l as usize,
                cfg.loss.ce / n,
                g.as_slice_mut().unwrap_or(&mut []),
            );
        }
        terms.parts.push(("ce".into(), sum / n));
        terms.total += cfg.loss.ce * sum / n;
    }
    if cfg.loss.sampled > 0.0
        && let Some(sm) = &batch.sampled
    {
        let mut sum = 0.0;
        for r in 0..rows {
            let (a, b) = (sm.offsets[r], sm.offsets[r + 1]);
            if let Some(&m) = sm.ids[a..b].iter().find(|&&i| i as usize >= classes) {
                return Err(bad_id(batch.row_ids[r], m as u64));
            }
            let srow = logits.row(r);
            let mut g = dlogits.row_mut(r);
            sum += response::sampled_kd(
                srow.as_slice().unwrap_or(&[]),
                &sm.ids[a..b],
                &sm.counts[a..b],
                sampled_t,
                cfg.loss.sampled * inv,
                g.as_slice_mut().unwrap_or(&mut []),
            );
        }
        terms.parts.push(("sampled".into(), sum * inv));
        terms.total += cfg.loss.sampled * sum * inv;
    }
    let mut extra: Vec<Option<Array2<f32>>> = vec![None; s.mlp.hidden_layers()];
    for (i, f) in cfg.loss.features.iter().enumerate() {
        let w = f.weight();
        let target = batch
            .features
            .get(&f.feature)
            .ok_or_else(|| StudentError::Config(format!("feature {:?} not loaded", f.feature)))?;
        if target.iter().any(|v| !v.is_finite()) {
            return Err(nonfinite(&format!("teacher feature {}", f.feature), None));
        }
        let h = &cache.hidden[f.layer];
        let (l, dh) = match (
            f.kind.relation(),
            &s.projections[i],
            &mut grad.projections[i],
        ) {
            (Some(rel), _, _) => {
                let (l, g) = rel.loss(h.view(), target.view());
                (l, g * (w as f32))
            }
            (None, Some(p), Some(gp)) => {
                let y = p.forward(h.view());
                let mut dy = Array2::<f32>::zeros(y.raw_dim());
                let (ys, ts) = (
                    y.as_slice().unwrap_or(&[]),
                    target.as_slice().unwrap_or(&[]),
                );
                let ds = dy.as_slice_mut().unwrap_or(&mut []);
                let l = if f.kind == FeatureKind::Hint {
                    feature::mse(ys, ts, w, ds)
                } else {
                    feature::cosine(ys, ts, target.ncols(), w, ds)
                };
                (l, p.backward(h.view(), dy.view(), gp))
            }
            _ => return Err(StudentError::Config("feature projection missing".into())),
        };
        terms.parts.push((feature_term_name(f), l));
        terms.total += w * l;
        match &mut extra[f.layer] {
            Some(e) => *e += &dh,
            slot => *slot = Some(dh),
        }
    }
    if !terms.total.is_finite() {
        let worst = terms
            .parts
            .iter()
            .find(|(_, v)| !v.is_finite())
            .map_or("total".to_string(), |(n, _)| n.clone());
        return Err(nonfinite(&worst, None));
    }
    s.mlp.backward(&cache, dlogits, &extra, &mut grad.mlp);
    Ok(terms)
}

impl Architecture for Student {
    type Batch = Batch;

    fn zeros_like(&self) -> Student {
        Student::zeros_like(self)
    }

    /// Dropout is seeded by (seed, step), so a resumed run draws the same masks.
    fn loss_and_grad(&self, grad: &mut Student, b: &Batch, at: &StepContext) -> Result<Terms> {
        let mut rng =
            ChaCha8Rng::seed_from_u64(at.cfg.seed ^ at.step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        loss_and_grad(self, grad, b, at.cfg, at.sampled_t, Some(&mut rng), at.step)
    }

    fn units(b: &Batch) -> u64 {
        b.len() as u64
    }

    type Info = StudentInfo;

    fn export(
        &self,
        info: &StudentInfo,
        dir: &Path,
        opset: crate::export::Opset,
    ) -> Result<(PathBuf, PathBuf)> {
        crate::export::export(&self.mlp, info, dir, opset)
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The trained student.
    pub student: Student,
    /// Its description (for saving).
    pub info: StudentInfo,
    /// Steps taken in total.
    pub steps: u64,
    /// Rows trained on per epoch.
    pub train_rows: u64,
    /// The last metrics line.
    pub last: Option<Value>,
}

/// Trains a student on `ds` as `cfg` says, writing metrics and checkpoints under `out`;
/// `on_log` sees every metrics line (for a progress bar). With `resume`, continues from the
/// newest checkpoint, refusing one from another dataset, teacher or configuration. `join`
/// supplies the inputs of a dataset built without them.
pub fn train(
    ds: &Dataset,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    join: Option<std::sync::Arc<Join>>,
    on_log: &mut dyn FnMut(u64, u64, &Value),
) -> Result<Run> {
    cfg.check()?;
    cfg.check_mlp()?;
    check_against(ds, cfg)?;
    let split = Split::of(ds, cfg);
    let loader = match join {
        Some(j) => Loader::joined(ds, j, needs(cfg))?,
        None => Loader::new(ds, cfg.model.input.as_deref(), needs(cfg))?,
    };
    let m = ds.manifest();
    // What the data decides is settled here, once: a convolutional student's image shape,
    // and whether integer inputs are embedded (and in how many ids).
    let mut resolved = cfg.clone();
    if !cfg.model.conv.is_empty() {
        resolved.model.image = Some(image_shape(ds, cfg, &loader)?);
    }
    if cfg.model.embed.is_none() && cfg.model.embed_integers {
        resolved.model.embed = auto_embed(ds, &loader, split.train.clone(), cfg)?;
    }
    let cfg = &resolved;
    let (dir, latest, _lock) = open_run_dir(out, resume)?;
    let in_memory = if cfg.data.in_memory {
        Some(loader.load(split.train.clone())?)
    } else {
        None
    };
    // Ids that an embedding looks up are not standardised; images are, per channel, inside
    // the convolutional front.
    let norm = if cfg.data.standardize && cfg.model.embed.is_none() && cfg.model.conv.is_empty() {
        fit_norm(&loader, in_memory.as_ref(), split.train.clone(), cfg)?
    } else {
        None
    };
    let in_memory = in_memory.map(|mut all| {
        if let Some(n) = &norm {
            n.apply(&mut all.x);
        }
        all
    });
    let spec = cfg.mlp_spec(loader.input_width, loader.classes);
    let mut info = StudentInfo {
        kind: if spec.conv.is_none() { "mlp" } else { "cnn" }.into(),
        activation: spec.activation.name().into(),
        widths: spec.widths,
        embed: cfg.model.embed,
        conv: spec.conv,
        layer_norm: cfg.model.layer_norm,
        input: loader.input.clone(),
        dataset_id: m.dataset_id.clone(),
        teacher_sha256: m.teacher.sha256.clone(),
        standardized: false,
        // Checkpoints hold the weights as trained, on standardised inputs, and say so.
        input_norm: norm.clone(),
    };
    let meta = student::metadata(&info)?;
    let train_rows = count_rows(ds, split.train.clone())?;
    if train_rows == 0 {
        return Err(StudentError::Dataset {
            dataset: ds.root().to_path_buf(),
            what: "no training rows (is holdout_from 0?)".into(),
        });
    }
    let bs = cfg.data.batch_size as u64;
    let per_epoch = train_rows.div_ceil(bs);
    let total = cfg.data.steps.unwrap_or(per_epoch * cfg.data.epochs);
    let mut fresh = init_student(ds, cfg, loader.input_width, loader.classes)?;
    if let Some(c) = fresh.mlp.conv.as_mut()
        && cfg.data.standardize
        && cfg.model.embed.is_none()
        && let Some(n) = fit_channel_norm(
            &loader,
            in_memory.as_ref(),
            split.train.clone(),
            cfg,
            c.spec.image,
        )?
    {
        c.set_standardisation(&n);
    }
    let mut opt = Optimizer::new(
        cfg.method(),
        cfg.schedule(total),
        cfg.optim.weight_decay,
        cfg.optim.clip_norm,
        &fresh,
    );
    let (mut s, (epoch, skip), mut rec) = start_run(
        &dir,
        latest.as_deref(),
        &fresh,
        &mut opt,
        cfg,
        m,
        meta,
        (per_epoch, total, train_rows),
        "samples_per_s",
    )?;
    let sampled_t = m
        .targets
        .as_ref()
        .and_then(|t| t.sampled.as_ref())
        .map_or(1.0, |s| s.temperature);
    // Streamed batches are standardised here (in-memory rows were, once) and their ids
    // checked against the embedding, naming the row.
    let prepare = |b: Result<Batch>| -> Result<Batch> {
        let mut b = b?;
        if in_memory.is_none()
            && let Some(n) = &norm
        {
            n.apply(&mut b.x);
        }
        check_ids(&fresh.mlp, &b, &loader.input)?;
        Ok(b)
    };
    crate::fit::fit(
        &mut s,
        &mut opt,
        &mut rec,
        total,
        (epoch, skip),
        |epoch| -> Result<Box<dyn Iterator<Item = Result<Batch>> + '_>> {
            Ok(match &in_memory {
                Some(all) => Box::new(memory_batches(all, cfg, epoch).map(prepare)),
                None => Box::new(
                    loader
                        .stream(
                            split.train.clone(),
                            cfg.data.batch_size,
                            Some(cfg.seed.wrapping_add(epoch)),
                            cfg.data.shuffle_buffer,
                            cfg.data.prefetch,
                        )?
                        .map(prepare),
                ),
            })
        },
        sampled_t,
        on_log,
    )
    .map_err(|e| with_dataset(e, ds))?;
    // The saved student takes raw inputs: the standardisation goes into its first layer.
    if let Some(n) = info.input_norm.take()
        && let Some(first) = s.mlp.layers.first_mut()
    {
        n.fold_into(first);
        info.standardized = true;
    }
    Ok(Run {
        student: s,
        info,
        steps: opt.step,
        train_rows,
        last: rec.last,
    })
}

/// The `[C, H, W]` a convolutional student reads each row as: `model.image`, else the stored
/// input's shape (`[H, W]` as one channel); it must hold the row's values exactly.
fn image_shape(ds: &Dataset, cfg: &TrainConfig, loader: &Loader) -> Result<[usize; 3]> {
    let bad = |what: String| StudentError::Dataset {
        dataset: ds.root().to_path_buf(),
        what,
    };
    if let Some([_, dim]) = cfg.model.embed {
        // Embedded ids: a dim × 1 × n sequence, whatever --image says.
        let seq = [dim, 1, loader.input_width];
        return match cfg.model.image {
            Some(i) if i != seq => Err(bad(format!(
                "--image {}: with --embed the convolutions read {} × 1 × {} (embedding width × 1 × ids per row); leave --image out",
                i.map(|d| d.to_string()).join(","),
                dim,
                loader.input_width
            ))),
            _ => Ok(seq),
        };
    }
    let image = match cfg.model.image {
        Some(i) => i,
        None => {
            let spec = ds.manifest().inputs.iter().find(|i| i.name == loader.input);
            let dims = spec.map(|s| s.fixed_dims()).unwrap_or_default();
            match dims[..] {
                [h, w, c] if cfg.model.channels_last => [c, h, w],
                [c, h, w] => [c, h, w],
                [h, w] => [1, h, w],
                _ => {
                    return Err(bad(format!(
                        "input {:?} has shape {dims:?}, not an image: pass --image C,H,W for the convolutions (e.g. --image 1,8,8 for 64 values)",
                        loader.input
                    )));
                }
            }
        }
    };
    if image.iter().product::<usize>() != loader.input_width || image.contains(&0) {
        return Err(bad(format!(
            "--image {}: {} values, but input {:?} holds {} per row",
            image.map(|d| d.to_string()).join(","),
            image.iter().product::<usize>(),
            loader.input,
            loader.input_width
        )));
    }
    Ok(image)
}

/// Refuses a batch whose inputs are not ids of the student's embedding, naming the row.
pub fn check_ids(mlp: &Mlp, b: &Batch, input: &str) -> Result<()> {
    match (mlp.invalid_id(b.x.view()), mlp.spec.embed) {
        (Some((r, c, v)), Some(e)) => Err(StudentError::Dataset {
            dataset: Default::default(),
            what: format!(
                "row {}: input {input:?} holds {v} at position {c}, not an id below {} (the student embeds its inputs with --embed {}:{}); pass a vocabulary that covers the values, or train without --embed",
                b.row_ids.get(r).copied().unwrap_or_default(),
                e.vocab,
                e.vocab,
                e.dim
            ),
        }),
        _ => Ok(()),
    }
}

/// The training rows' input standardisation: from the in-memory rows when loaded, else one
/// streaming pass over the training split (in file order; the statistics do not depend on it).
fn fit_norm(
    loader: &Loader,
    in_memory: Option<&Batch>,
    train: Option<std::ops::Range<u64>>,
    cfg: &TrainConfig,
) -> Result<Option<InputNorm>> {
    fit_moments(loader, in_memory, train, cfg, loader.input_width, |m, x| {
        m.add(x)
    })
}

/// The per-channel standardisation of a convolutional student: every pixel of the training
/// rows a sample of its channel.
fn fit_channel_norm(
    loader: &Loader,
    in_memory: Option<&Batch>,
    train: Option<std::ops::Range<u64>>,
    cfg: &TrainConfig,
    image: [usize; 3],
) -> Result<Option<InputNorm>> {
    fit_moments(loader, in_memory, train, cfg, image[0], |m, x| {
        m.add(crate::conv::pixels_by_channel(x, image).view())
    })
}

/// Moments of `width` values, each batch of training rows given to `add` (from memory, or one
/// streaming pass).
fn fit_moments(
    loader: &Loader,
    in_memory: Option<&Batch>,
    train: Option<std::ops::Range<u64>>,
    cfg: &TrainConfig,
    width: usize,
    add: impl Fn(&mut Moments, ndarray::ArrayView2<f32>),
) -> Result<Option<InputNorm>> {
    let mut moments = Moments::new(width);
    each_training_batch(loader, in_memory, train, cfg, |x| add(&mut moments, x))?;
    Ok(moments.finish())
}

/// Gives `f` the inputs of the training rows: the in-memory copy at once, or batch by batch
/// in one streaming pass (file order).
fn each_training_batch(
    loader: &Loader,
    in_memory: Option<&Batch>,
    train: Option<std::ops::Range<u64>>,
    cfg: &TrainConfig,
    mut f: impl FnMut(ndarray::ArrayView2<f32>),
) -> Result<()> {
    match in_memory {
        Some(all) => f(all.x.view()),
        None => {
            for b in loader.stream(
                train,
                cfg.data.batch_size.max(256),
                None,
                0,
                cfg.data.prefetch,
            )? {
                f(b?.x.view());
            }
        }
    }
    Ok(())
}

/// `[vocab, 16]` for an input the teacher takes as integers other than uint8 (usually
/// pixels) and bool, whose training values are all ≥ 0: vocab is the next power of two above
/// the largest value (so nearby unseen ids still have a row). None otherwise.
fn auto_embed(
    ds: &Dataset,
    loader: &Loader,
    train: Option<std::ops::Range<u64>>,
    cfg: &TrainConfig,
) -> Result<Option<[usize; 2]>> {
    let ids = ds
        .manifest()
        .inputs
        .iter()
        .find(|i| i.name == loader.input)
        .is_some_and(|i| i.dtype.is_integer() && i.dtype != logits_format::manifest::DType::Uint8);
    if !ids {
        return Ok(None);
    }
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    each_training_batch(loader, None, train, cfg, |x| {
        for &v in x.iter() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    })?;
    if !(lo >= 0.0 && hi.is_finite()) {
        return Ok(None);
    }
    Ok(Some([(hi as usize + 1).next_power_of_two(), 16]))
}

fn with_dataset(e: StudentError, ds: &Dataset) -> StudentError {
    match e {
        StudentError::Dataset { dataset, what } if dataset.as_os_str().is_empty() => {
            StudentError::Dataset {
                dataset: ds.root().to_path_buf(),
                what,
            }
        }
        other => other,
    }
}

/// Batches of an in-memory copy of the training rows, shuffled by (seed, epoch).
fn memory_batches<'a>(
    all: &'a Batch,
    cfg: &TrainConfig,
    epoch: u64,
) -> impl Iterator<Item = Result<Batch>> + 'a {
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(epoch)));
    let bs = cfg.data.batch_size.max(1);
    let chunks: Vec<Vec<usize>> = order.chunks(bs).map(|c| c.to_vec()).collect();
    chunks.into_iter().map(move |idx| Ok(gather(all, &idx)))
}

/// Rows `idx` of a batch, in that order.
pub fn gather(all: &Batch, idx: &[usize]) -> Batch {
    use ndarray::Axis;
    let teacher = all.teacher.as_ref().map(|t| {
        let nt = t.temps.len();
        let mut out = crate::data::TeacherRows {
            offsets: vec![0],
            temps: t.temps.clone(),
            ..Default::default()
        };
        for &i in idx {
            let (a, b) = (t.offsets[i], t.offsets[i + 1]);
            out.ids.extend_from_slice(&t.ids[a..b]);
            out.logits.extend_from_slice(&t.logits[a..b]);
            out.offsets.push(out.ids.len());
            out.logz.push(t.logz[i]);
            out.logz_temps
                .extend_from_slice(&t.logz_temps[i * nt..(i + 1) * nt]);
        }
        out
    });
    let sampled = all.sampled.as_ref().map(|s| {
        let mut out = logits_format::rows::SampledEntries {
            offsets: vec![0],
            ..Default::default()
        };
        for &i in idx {
            let (a, b) = (s.offsets[i], s.offsets[i + 1]);
            out.ids.extend_from_slice(&s.ids[a..b]);
            out.counts.extend_from_slice(&s.counts[a..b]);
            out.offsets.push(out.ids.len());
        }
        out
    });
    Batch {
        row_ids: idx.iter().map(|&i| all.row_ids[i]).collect(),
        x: all.x.select(Axis(0), idx),
        labels: all
            .labels
            .as_ref()
            .map(|l| idx.iter().map(|&i| l[i]).collect()),
        teacher,
        sampled,
        features: all
            .features
            .iter()
            .map(|(k, v)| (k.clone(), v.select(Axis(0), idx)))
            .collect(),
    }
}
