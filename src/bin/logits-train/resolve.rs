//! How `logits-train train`'s flags and an optional TOML file resolve into one
//! [`TrainConfig`] (flags win; checked here, so an out-of-range option is a usage error), and
//! which settings the user chose rather than left at their defaults.

use anyhow::Context;
use logits_student::config::{FeatureLoss, TrainConfig, parse_name};

use crate::args::TrainArgs;

/// Parses a choice flag by its configuration name, or says which names exist.
pub(crate) fn name<T: serde::de::DeserializeOwned>(
    what: &str,
    s: &str,
    choices: &str,
) -> anyhow::Result<T> {
    parse_name(s).ok_or_else(|| logits::usage(format!("--{what} {s:?}: expected one of {choices}")))
}

/// Which of the settings `fit_defaults` may change the user chose: a configuration file
/// chooses everything it could set; otherwise the flags given.
pub(crate) fn chosen(a: &TrainArgs) -> logits_student::train::Chosen {
    let file = a.config.is_some();
    logits_student::train::Chosen {
        temperature: file || a.temperature.is_some(),
        ce: file || a.ce.is_some(),
    }
}

/// The run configuration: the TOML file (or the saved one on --resume), then the flags.
pub(crate) fn resolve(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let saved = a.out.join("config.toml");
    let base = match (&a.config, a.resume && saved.is_file()) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(saved),
        (None, false) => None,
    };
    let mut c: TrainConfig = match base {
        Some(p) => {
            let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", p.display()))?
        }
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($flag:expr, $field:expr) => {
            if let Some(v) = $flag.clone() {
                $field = v;
            }
        };
    }
    set!(a.seed, c.seed);
    set!(a.hidden, c.model.hidden);
    if let Some(s) = &a.activation {
        c.model.activation = name("activation", s, "relu, gelu, tanh")?;
    }
    c.model.layer_norm |= a.layer_norm;
    set!(a.dropout, c.model.dropout);
    if a.input.is_some() {
        c.model.input = a.input.clone();
    }
    if a.transformer {
        c.model.transformer = true;
    }
    set!(a.conv, c.model.conv);
    c.model.channels_last |= a.channels_last;
    if let Some(i) = &a.image {
        c.model.image = Some(
            <[usize; 3]>::try_from(i.as_slice())
                .map_err(|_| logits::usage(format!("--image {i:?}: expected C,H,W")))?,
        );
    }
    if let Some(e) = &a.embed {
        let parsed = e
            .split_once(':')
            .and_then(|(v, d)| Some([v.trim().parse().ok()?, d.trim().parse().ok()?]));
        c.model.embed = Some(parsed.ok_or_else(|| {
            logits::usage(format!(
                "--embed {e:?}: expected VOCAB:DIM, e.g. 256:16 for byte inputs"
            ))
        })?);
    }
    set!(a.lm_dim, c.lm.dim);
    set!(a.lm_layers, c.lm.layers);
    set!(a.lm_heads, c.lm.heads);
    if a.lm_untied {
        c.lm.tied = false;
    }
    set!(a.kd, c.loss.kd);
    set!(a.ce, c.loss.ce);
    set!(a.sampled, c.loss.sampled);
    set!(a.temperature, c.loss.temperature);
    if let Some(s) = &a.divergence {
        c.loss.divergence = name("divergence", s, "forward_kl, reverse_kl, jsd")?;
    }
    set!(a.jsd_beta, c.loss.jsd_beta);
    if let Some(s) = &a.topk {
        c.loss.topk = name("topk", s, "tail, renormalize")?;
    }
    if !a.feature_loss.is_empty() {
        c.loss.features = a
            .feature_loss
            .iter()
            .map(|s| FeatureLoss::parse(s))
            .collect::<Result<_, _>>()
            .map_err(|e| logits::usage(e.to_string()))?;
    }
    if let Some(s) = &a.optimizer {
        c.optim.method = name("optimizer", s, "adamw, sgd")?;
    }
    set!(a.lr, c.optim.lr);
    set!(a.momentum, c.optim.momentum);
    c.optim.nesterov |= a.nesterov;
    set!(a.weight_decay, c.optim.weight_decay);
    if let Some(v) = a.clip_norm {
        // 0 turns clipping off; anything else must be a valid norm (checked below).
        c.optim.clip_norm = (v != 0.0).then_some(v);
    }
    set!(a.warmup, c.optim.warmup);
    if let Some(s) = &a.decay {
        c.optim.decay = name("decay", s, "cosine, linear, constant")?;
    }
    set!(a.batch_size, c.data.batch_size);
    set!(a.epochs, c.data.epochs);
    if a.steps.is_some() {
        c.data.steps = a.steps;
    }
    if a.holdout_from.is_some() {
        c.data.holdout_from = a.holdout_from;
    }
    c.data.in_memory |= a.in_memory;
    if a.no_embed {
        c.model.embed_integers = false;
    }
    if a.no_standardize {
        c.data.standardize = false;
    }
    set!(a.checkpoint_every, c.run.checkpoint_every);
    set!(a.log_every, c.run.log_every);
    c.check().map_err(|e| logits::usage(e.to_string()))?;
    Ok(c)
}
