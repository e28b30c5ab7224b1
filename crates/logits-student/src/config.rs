//! The run configuration: everything that decides a training run, as one serde structure. The
//! command line reads it from a TOML file and lets flags override single values; the resolved
//! configuration is saved beside the outputs and inside every checkpoint, so a run can be
//! repeated and resumed exactly.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StudentError};
use crate::losses::relation::Relation;
use crate::losses::response::{Divergence, TopKMode};
use crate::mlp::{Activation, MlpSpec};
use crate::optim::{Decay, Method, Schedule};

/// A whole training run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed for initialisation, shuffling and dropout.
    pub seed: u64,
    /// The MLP student's shape (per-example datasets).
    pub model: ModelConfig,
    /// The transformer student's shape (per-token datasets).
    pub lm: LmModelConfig,
    /// Which losses, with which weights.
    pub loss: LossConfig,
    /// Optimizer and schedule.
    pub optim: OptimConfig,
    /// Batching, epochs and the held-out split.
    pub data: DataConfig,
    /// Checkpoints and logging.
    pub run: RunConfig,
}

/// The MLP student's shape (inputs and outputs come from the dataset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// `relu`, `gelu` or `tanh`.
    pub activation: ActivationName,
    /// Layer norm before each hidden nonlinearity.
    pub layer_norm: bool,
    /// Dropout after each hidden layer while training.
    pub dropout: f32,
    /// The stored input to train from (default: the dataset's only input).
    pub input: Option<String>,
    /// Train the transformer student (an encoder over the input's sequence axis) on
    /// per-example targets too; it is taken anyway for per-position targets and inputs whose
    /// shape varies per row.
    pub transformer: bool,
    /// `[vocab, dim]`: the inputs are ids below `vocab`, each embedded in `dim` values
    /// (bytes: `[256, 16]`); such inputs are not standardised. Unset: inputs the teacher
    /// takes as integers other than uint8 (ids, tokens; uint8 is usually pixels) are embedded
    /// in 16 values per id, below the next power of two above the largest training value,
    /// unless `embed_integers` is off.
    pub embed: Option<[usize; 2]>,
    /// Embed integer inputs when `embed` is unset (see there); off: standardise them.
    pub embed_integers: bool,
    /// Output channels of convolution blocks (3×3 conv, ReLU, 2×2 max-pool) before the
    /// hidden layers; empty: none. With `embed`, they read the embedded ids as a
    /// `dim × 1 × n` sequence (1-D convolutions).
    pub conv: Vec<usize>,
    /// `[C, H, W]` of an input row for the convolutions (default: the stored input's shape,
    /// `[H, W]` read as one channel).
    pub image: Option<[usize; 3]>,
    /// Rows hold `[H, W, C]` (TensorFlow's layout; the stored shape is read so too).
    pub channels_last: bool,
}

/// The transformer student's shape (vocabulary and context come from the dataset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmModelConfig {
    /// Residual width.
    pub dim: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention heads (dividing `dim`).
    pub heads: usize,
    /// Longest sequence (default: the dataset's window).
    pub context: Option<usize>,
    /// Tie the LM head to the token embedding.
    pub tied: bool,
}

impl Default for LmModelConfig {
    fn default() -> Self {
        LmModelConfig {
            dim: 64,
            layers: 2,
            heads: 4,
            context: None,
            tied: true,
        }
    }
}

/// Serde names of [`Activation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationName {
    /// ReLU.
    Relu,
    /// GELU (tanh approximation).
    Gelu,
    /// tanh.
    Tanh,
}

/// Loss terms and their weights (0 disables a term). The total is
/// `kd·response + ce·cross-entropy + sampled·RS-KD + Σ feature terms`. Our `ce`/`kd` weights
/// are explicit (RepDistiller's γ and α); torchdistill's `alpha` is our `ce`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Weight of the response loss from stored top-k targets.
    pub kd: f64,
    /// Weight of cross-entropy on hard labels.
    pub ce: f64,
    /// Weight of the RS-KD loss on sampled targets.
    pub sampled: f64,
    /// Distillation temperature.
    pub temperature: f64,
    /// `forward_kl` (Hinton, ×T²), `reverse_kl` or `jsd`.
    pub divergence: DivergenceName,
    /// β of the generalised JSD.
    pub jsd_beta: f64,
    /// How the unkept ids are treated: `tail` (exact tail bucket) or `renormalize`.
    pub topk: TopKName,
    /// Feature and relation terms.
    pub features: Vec<FeatureLoss>,
}

/// Serde names of the divergences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceName {
    /// T²·KL(p‖q).
    ForwardKl,
    /// KL(q‖p).
    ReverseKl,
    /// Generalised JSD with `jsd_beta`.
    Jsd,
}

/// Serde names of [`TopKMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopKName {
    /// Tail bucket.
    Tail,
    /// Renormalise over the kept ids.
    Renormalize,
}

/// What a feature term compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// FitNets hint: learned linear projection of the student layer, MSE to the teacher.
    Hint,
    /// 1 − cosine after a learned projection.
    Cosine,
    /// RKD distance.
    RkdDistance,
    /// RKD angle.
    RkdAngle,
    /// Similarity-preserving.
    Sp,
    /// Probabilistic knowledge transfer.
    Pkt,
}

impl FeatureKind {
    /// The relation loss, for relation kinds.
    pub fn relation(self) -> Option<Relation> {
        match self {
            FeatureKind::RkdDistance => Some(Relation::RkdDistance),
            FeatureKind::RkdAngle => Some(Relation::RkdAngle),
            FeatureKind::Sp => Some(Relation::Sp),
            FeatureKind::Pkt => Some(Relation::Pkt),
            FeatureKind::Hint | FeatureKind::Cosine => None,
        }
    }

    /// The default weight (mdistiller / RepDistiller).
    pub fn default_weight(self) -> f64 {
        match self {
            FeatureKind::Hint => 100.0,
            FeatureKind::Cosine => 1.0,
            _ => self.relation().map_or(1.0, Relation::default_weight),
        }
    }
}

/// One feature or relation term.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureLoss {
    /// Which loss.
    pub kind: FeatureKind,
    /// The teacher feature's name in the dataset.
    pub feature: String,
    /// The student's hidden layer (0-based).
    pub layer: usize,
    /// Weight (default: [`FeatureKind::default_weight`]).
    pub weight: Option<f64>,
}

impl FeatureLoss {
    /// Parses `KIND:FEATURE@LAYER[=WEIGHT]`, e.g. `rkd_distance:penult@1` or `hint:penult@0=50`.
    pub fn parse(s: &str) -> Result<FeatureLoss> {
        let bad = || {
            StudentError::Config(format!(
                "feature loss {s:?}: expected KIND:FEATURE@LAYER[=WEIGHT] with KIND one of hint, cosine, rkd_distance, rkd_angle, sp, pkt"
            ))
        };
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let (rest, weight) = match rest.split_once('=') {
            Some((r, w)) => (r, Some(w.parse::<f64>().map_err(|_| bad())?)),
            None => (rest, None),
        };
        let (feature, layer) = rest.split_once('@').ok_or_else(bad)?;
        Ok(FeatureLoss {
            kind: parse_name(kind).ok_or_else(bad)?,
            feature: feature.to_string(),
            layer: layer.parse().map_err(|_| bad())?,
            weight,
        })
    }

    /// The weight in effect.
    pub fn weight(&self) -> f64 {
        self.weight.unwrap_or(self.kind.default_weight())
    }
}

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// `adamw` or `sgd`.
    pub method: MethodName,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f32,
    /// SGD Nesterov momentum.
    pub nesterov: bool,
    /// AdamW β₁.
    pub beta1: f32,
    /// AdamW β₂.
    pub beta2: f32,
    /// AdamW ε.
    pub eps: f32,
    /// Weight decay (matrices only).
    pub weight_decay: f32,
    /// Global gradient-norm clip.
    pub clip_norm: Option<f64>,
    /// Warm-up steps.
    pub warmup: u64,
    /// `cosine`, `linear` or `constant` after warm-up.
    pub decay: DecayName,
    /// Final learning rate of the decay.
    pub min_lr: f64,
}

/// Serde names of the optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodName {
    /// AdamW.
    Adamw,
    /// SGD.
    Sgd,
}

/// Serde names of [`Decay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayName {
    /// Cosine.
    Cosine,
    /// Linear.
    Linear,
    /// Constant.
    Constant,
}

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Rows per step.
    pub batch_size: usize,
    /// Passes over the training rows (ignored when `steps` is set).
    pub epochs: u64,
    /// Total steps, overriding `epochs`.
    pub steps: Option<u64>,
    /// Rows in the shuffle buffer.
    pub shuffle_buffer: usize,
    /// Chunks read ahead on the background thread.
    pub prefetch: usize,
    /// Rows with id ≥ this are held out (default: the dataset's own `holdout_from`).
    pub holdout_from: Option<u64>,
    /// Decode the training rows once and keep them in memory instead of streaming every epoch.
    pub in_memory: bool,
    /// Standardise every input value by its mean and standard deviation over the training rows
    /// (folded into the first layer at the end, so the student takes raw inputs).
    pub standardize: bool,
}

/// Checkpointing and logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Checkpoint every N steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Write a metrics line every N steps.
    pub log_every: u64,
    /// Polled every step: once set (by SIGINT/SIGTERM in the binary), the run writes a
    /// checkpoint and stops with [`crate::StudentError::Interrupted`]. Not part of the saved
    /// configuration.
    #[serde(skip)]
    pub stop: StopFlag,
}

/// A stop flag a training loop polls; equal to every other (it is not configuration).
#[derive(Debug, Clone, Copy, Default)]
pub struct StopFlag(pub Option<&'static std::sync::atomic::AtomicBool>);

impl StopFlag {
    /// True once a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.0
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl PartialEq for StopFlag {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            hidden: vec![128],
            activation: ActivationName::Relu,
            layer_norm: false,
            dropout: 0.0,
            input: None,
            transformer: false,
            embed: None,
            embed_integers: true,
            conv: Vec::new(),
            image: None,
            channels_last: false,
        }
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        // RepDistiller's CIFAR setting: KD 0.9, CE 0.1, T = 4.
        LossConfig {
            kd: 0.9,
            ce: 0.1,
            sampled: 0.0,
            temperature: 4.0,
            divergence: DivergenceName::ForwardKl,
            jsd_beta: 0.5,
            topk: TopKName::Tail,
            features: Vec::new(),
        }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            method: MethodName::Adamw,
            lr: 1e-3,
            momentum: 0.9,
            nesterov: false,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            clip_norm: Some(5.0),
            warmup: 0,
            decay: DecayName::Cosine,
            min_lr: 0.0,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            batch_size: 64,
            epochs: 20,
            steps: None,
            shuffle_buffer: 8192,
            prefetch: 4,
            holdout_from: None,
            in_memory: false,
            standardize: true,
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            checkpoint_every: 0,
            log_every: 10,
            stop: StopFlag::default(),
        }
    }
}

/// Parses a snake_case name into one of the configuration enums.
pub fn parse_name<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

impl TrainConfig {
    /// Checks values that serde cannot (ranges, consistency).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(StudentError::Config(m));
        if self.data.batch_size == 0 {
            return bad("data.batch_size must be at least 1".into());
        }
        if !(self.loss.temperature > 0.0 && self.loss.temperature.is_finite()) {
            return bad(format!(
                "loss.temperature must be positive, got {}",
                self.loss.temperature
            ));
        }
        if !(0.0..=1.0).contains(&self.loss.jsd_beta) {
            return bad(format!(
                "loss.jsd_beta must be in [0, 1], got {}",
                self.loss.jsd_beta
            ));
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return bad(format!(
                "model.dropout must be in [0, 1), got {}",
                self.model.dropout
            ));
        }
        if !(self.optim.lr.is_finite() && self.optim.lr > 0.0) {
            return bad(format!(
                "optim.lr (--lr) must be positive and finite, got {}",
                self.optim.lr
            ));
        }
        if self.model.hidden.contains(&0) {
            return bad("model.hidden widths must be positive".into());
        }
        let weights = [
            ("loss.kd (--kd)", self.loss.kd),
            ("loss.ce (--ce)", self.loss.ce),
            ("loss.sampled (--sampled)", self.loss.sampled),
        ];
        for (name, w) in weights {
            if !(w.is_finite() && w >= 0.0) {
                return bad(format!(
                    "{name} must be a finite weight ≥ 0, got {w} (0 turns the term off)"
                ));
            }
        }
        for f in &self.loss.features {
            if let Some(w) = f.weight
                && !(w.is_finite() && w >= 0.0)
            {
                return bad(format!(
                    "feature loss on {:?}: weight must be finite and ≥ 0, got {w}",
                    f.feature
                ));
            }
        }
        let o = &self.optim;
        if !(o.momentum.is_finite() && (0.0..1.0).contains(&o.momentum)) {
            return bad(format!(
                "optim.momentum (--momentum) must be in [0, 1), got {}",
                o.momentum
            ));
        }
        for (name, b) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(b.is_finite() && (0.0..1.0).contains(&b)) {
                return bad(format!("{name} must be in [0, 1), got {b}"));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return bad(format!("optim.eps must be positive, got {}", o.eps));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad(format!(
                "optim.weight_decay (--weight-decay) must be finite and ≥ 0, got {}",
                o.weight_decay
            ));
        }
        if let Some(c) = o.clip_norm
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!(
                "optim.clip_norm (--clip-norm) must be positive and finite, got {c} (leave it out for no clipping)"
            ));
        }
        if !(o.min_lr.is_finite() && o.min_lr >= 0.0 && o.min_lr <= o.lr) {
            return bad(format!(
                "optim.min_lr must be in [0, lr], got {} with lr {}",
                o.min_lr, o.lr
            ));
        }
        if self.data.epochs == 0 && self.data.steps.is_none() {
            return bad("data.epochs (--epochs) must be at least 1".into());
        }
        if self.data.steps == Some(0) {
            return bad("data.steps (--steps) must be at least 1".into());
        }
        if self.run.log_every == 0 {
            return bad("run.log_every must be at least 1".into());
        }
        let any = self.loss.kd > 0.0
            || self.loss.ce > 0.0
            || self.loss.sampled > 0.0
            || self.loss.features.iter().any(|f| f.weight() > 0.0);
        if !any {
            return bad("every loss weight is 0: nothing to train".into());
        }
        Ok(())
    }

    /// Checks what only the MLP student needs: feature losses on existing hidden layers.
    pub fn check_mlp(&self) -> Result<()> {
        if let Some([vocab, dim]) = self.model.embed
            && (vocab < 2 || dim == 0)
        {
            return Err(StudentError::Config(format!(
                "model.embed (--embed VOCAB:DIM) needs a vocabulary of at least 2 ids and a width of at least 1, got {vocab}:{dim}"
            )));
        }
        if self.model.channels_last && (self.model.conv.is_empty() || self.model.embed.is_some()) {
            return Err(StudentError::Config(
                "model.channels_last (--channels-last) is for images read by --conv, not with --embed".into(),
            ));
        }
        if self.model.conv.contains(&0) {
            return Err(StudentError::Config(format!(
                "model.conv (--conv) needs at least one channel per block, got {:?}",
                self.model.conv
            )));
        }
        for f in &self.loss.features {
            if f.layer >= self.model.hidden.len() {
                return Err(StudentError::Config(format!(
                    "feature loss on {:?} uses student hidden layer {}, but the student has {} hidden layers (0-based)",
                    f.feature,
                    f.layer,
                    self.model.hidden.len()
                )));
            }
        }
        Ok(())
    }

    /// Checks what only the transformer student needs: a valid shape, and hidden-state losses
    /// (hint or cosine) on the final hidden state, written `@0`.
    pub fn check_lm(&self) -> Result<()> {
        let l = &self.lm;
        if l.dim == 0 || l.layers == 0 || l.heads == 0 || !l.dim.is_multiple_of(l.heads) {
            return Err(StudentError::Config(format!(
                "lm: dim {} must be a positive multiple of heads {}, with at least one layer",
                l.dim, l.heads
            )));
        }
        for f in &self.loss.features {
            if !matches!(f.kind, FeatureKind::Hint | FeatureKind::Cosine) || f.layer != 0 {
                let kind = serde_json::to_value(f.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                return Err(StudentError::Config(format!(
                    "feature loss {kind}:{}@{}: the language-model student distils its final hidden state with hint or cosine, written KIND:FEATURE@0",
                    f.feature, f.layer
                )));
            }
        }
        Ok(())
    }

    /// The MLP shape for a dataset with `inputs` input values and `outputs` classes.
    pub fn mlp_spec(&self, inputs: usize, outputs: usize) -> MlpSpec {
        let embed = self
            .model
            .embed
            .map(|[vocab, dim]| crate::mlp::EmbedSpec { vocab, dim });
        let conv = (!self.model.conv.is_empty()).then(|| crate::conv::ConvSpec {
            // Embedded ids are a dim × 1 × n sequence to the convolutions.
            image: self
                .model
                .image
                .unwrap_or([embed.map_or(1, |e| e.dim), 1, inputs]),
            channels: self.model.conv.clone(),
            channels_last: self.model.channels_last,
        });
        let first = match &conv {
            Some(c) => c.out_width(),
            None => inputs * embed.map_or(1, |e| e.dim),
        };
        let mut widths = vec![first];
        widths.extend(&self.model.hidden);
        widths.push(outputs);
        MlpSpec {
            widths,
            embed,
            conv,
            activation: match self.model.activation {
                ActivationName::Relu => Activation::Relu,
                ActivationName::Gelu => Activation::Gelu,
                ActivationName::Tanh => Activation::Tanh,
            },
            layer_norm: self.model.layer_norm,
            dropout: self.model.dropout,
        }
    }

    /// The divergence in effect.
    pub fn divergence(&self) -> Divergence {
        match self.loss.divergence {
            DivergenceName::ForwardKl => Divergence::ForwardKl,
            DivergenceName::ReverseKl => Divergence::ReverseKl,
            DivergenceName::Jsd => Divergence::Jsd(self.loss.jsd_beta),
        }
    }

    /// The top-k mode in effect.
    pub fn topk_mode(&self) -> TopKMode {
        match self.loss.topk {
            TopKName::Tail => TopKMode::TailBucket,
            TopKName::Renormalize => TopKMode::Renormalize,
        }
    }

    /// The update rule in effect.
    pub fn method(&self) -> Method {
        match self.optim.method {
            MethodName::Adamw => Method::AdamW {
                beta1: self.optim.beta1,
                beta2: self.optim.beta2,
                eps: self.optim.eps,
            },
            MethodName::Sgd => Method::Sgd {
                momentum: self.optim.momentum,
                nesterov: self.optim.nesterov,
            },
        }
    }

    /// The schedule over `total` steps.
    pub fn schedule(&self, total: u64) -> Schedule {
        Schedule {
            lr: self.optim.lr,
            warmup: self.optim.warmup,
            total,
            decay: match self.optim.decay {
                DecayName::Cosine => Decay::Cosine,
                DecayName::Linear => Decay::Linear,
                DecayName::Constant => Decay::Constant,
            },
            min_lr: self.optim.min_lr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_loss_syntax() {
        let f = FeatureLoss::parse("rkd_distance:penult@1").unwrap();
        assert_eq!(f.kind, FeatureKind::RkdDistance);
        assert_eq!(
            (f.feature.as_str(), f.layer, f.weight()),
            ("penult", 1, 25.0)
        );
        let h = FeatureLoss::parse("hint:h2@0=50").unwrap();
        assert_eq!(h.weight(), 50.0);
        for bad in ["nope:x@0", "hint:x", "hint:x@a", "hint:x@0=w", "x@0"] {
            assert!(FeatureLoss::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checks() {
        let mut c = TrainConfig::default();
        c.check().unwrap();
        c.loss.features.push(FeatureLoss::parse("sp:f@3").unwrap());
        let e = c.check_mlp().unwrap_err().to_string();
        assert!(e.contains("hidden layer 3"), "{e}");
        let mut c = TrainConfig::default();
        c.loss.kd = 0.0;
        c.loss.ce = 0.0;
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("nothing to train")
        );
    }
}
