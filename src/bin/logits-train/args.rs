//! The command line of `logits-train`: subcommands and flags (clap); `resolve.rs` turns the
//! training flags into the run's configuration.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use logits_format::Dataset;
use logits_student::data::{Join, JoinBy};

/// Train a small student from a logits dataset, without the teacher.
#[derive(Parser, Debug)]
#[command(name = "logits-train", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Parses the command line, with each training option's default (which lives in
    /// `TrainConfig::default()`, below any `--config` file) shown in its help.
    pub(crate) fn parse_with_defaults() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let mut cmd = Cli::command();
        cmd = cmd.mut_subcommand("train", train_defaults);
        let matches = cmd.get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Appends `[default: V]` to the help of every training option whose default comes from the
/// configuration, so `train --help` shows what a run without the flag uses.
fn train_defaults(cmd: clap::Command) -> clap::Command {
    let c = logits_student::config::TrainConfig::default();
    let lm = logits_student::config::LmModelConfig::default();
    let list = |v: &[usize]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let name = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let defaults: Vec<(&str, String)> = vec![
        ("seed", c.seed.to_string()),
        ("hidden", list(&c.model.hidden)),
        (
            "activation",
            name(serde_json::to_value(c.model.activation).unwrap_or_default()),
        ),
        ("dropout", c.model.dropout.to_string()),
        ("lm_dim", lm.dim.to_string()),
        ("lm_layers", lm.layers.to_string()),
        ("lm_heads", lm.heads.to_string()),
        ("kd", c.loss.kd.to_string()),
        (
            "ce",
            format!("{} (0 when the dataset has no labels)", c.loss.ce),
        ),
        ("sampled", c.loss.sampled.to_string()),
        (
            "temperature",
            format!(
                "{} (1 when the dataset lacks logZ at {})",
                c.loss.temperature, c.loss.temperature
            ),
        ),
        (
            "divergence",
            name(serde_json::to_value(c.loss.divergence).unwrap_or_default()),
        ),
        ("jsd_beta", c.loss.jsd_beta.to_string()),
        (
            "topk",
            name(serde_json::to_value(c.loss.topk).unwrap_or_default()),
        ),
        (
            "optimizer",
            name(serde_json::to_value(c.optim.method).unwrap_or_default()),
        ),
        ("lr", c.optim.lr.to_string()),
        ("momentum", c.optim.momentum.to_string()),
        ("weight_decay", c.optim.weight_decay.to_string()),
        (
            "clip_norm",
            c.optim
                .clip_norm
                .map(|x| x.to_string())
                .unwrap_or_else(|| "off".into()),
        ),
        ("warmup", c.optim.warmup.to_string()),
        (
            "decay",
            name(serde_json::to_value(c.optim.decay).unwrap_or_default()),
        ),
        ("batch_size", c.data.batch_size.to_string()),
        ("epochs", c.data.epochs.to_string()),
        (
            "checkpoint_every",
            format!("{} (off)", c.run.checkpoint_every),
        ),
        ("log_every", c.run.log_every.to_string()),
    ];
    defaults.into_iter().fold(cmd, |cmd, (id, value)| {
        cmd.mut_arg(id, |a| {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{help} [default: {value}]"))
        })
    })
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Train, then evaluate on the held-out rows and export (student.onnx, student.safetensors).
    Train(Box<TrainArgs>),
    /// Evaluate a trained student on a dataset.
    Eval(EvalArgs),
    /// Export a student or checkpoint file to ONNX and safetensors.
    Export {
        /// A student.safetensors (a run's output or a checkpoint's).
        #[arg(long)]
        student: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// ONNX opset of student.onnx (13 to 21).
        #[arg(long, default_value_t = logits_student::export::OPSET)]
        opset: i64,
        /// Language-model students: the dataset's tokenizer.json, copied into hf/.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Print the written paths as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sample text from a language-model student.
    Generate(GenerateArgs),
    /// Print runs' reports side by side (teacher first), e.g. label-only vs distilled.
    Table {
        /// Run directories written by `train`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Print the runs' reports as one JSON object (run name → report).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    /// The student.safetensors of a language-model run.
    #[arg(long)]
    pub(crate) student: PathBuf,
    /// The tokenizer.json of the dataset it was trained from (a path or a URL).
    #[arg(long)]
    pub(crate) tokenizer: PathBuf,
    /// Print the prompt's and the generated ids and the text as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// The text to continue.
    #[arg(long)]
    pub(crate) prompt: String,
    /// Tokens to add at most.
    #[arg(long, default_value_t = 40)]
    pub(crate) max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    pub(crate) temperature: f64,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub(crate) top_k: usize,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    pub(crate) top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

#[derive(Args, Debug)]
pub(crate) struct TrainArgs {
    /// The dataset: a directory, or an s3://, gs://, az:// or file:// URL (read in place by
    /// range requests; LOGITS_CACHE_DIR keeps what was read for the next epochs).
    pub(crate) dataset: PathBuf,
    /// Output directory: config.toml, metrics.jsonl, checkpoints/, student.onnx,
    /// student.safetensors, report.json. A store URL works too: the run is staged locally and
    /// uploaded at the end (also when it fails); --resume continues a run kept there.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// A TOML configuration (see README); flags given here win over it.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    pub(crate) resume: bool,
    /// The teacher's ONNX file, to time it beside the student (never needed to train).
    #[arg(long)]
    pub(crate) teacher: Option<PathBuf>,
    /// Seed for initialisation, shuffling and dropout.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Hidden widths, comma-separated (e.g. 128,64).
    #[arg(long, value_delimiter = ',')]
    pub(crate) hidden: Option<Vec<usize>>,
    /// relu, gelu or tanh.
    #[arg(long, value_parser = ["relu", "gelu", "tanh"])]
    pub(crate) activation: Option<String>,
    /// Layer norm before each hidden nonlinearity.
    #[arg(long)]
    pub(crate) layer_norm: bool,
    /// Dropout after each hidden layer.
    #[arg(long)]
    pub(crate) dropout: Option<f32>,
    /// VOCAB:DIM — the inputs are ids below VOCAB (bytes: 256), each embedded in DIM learned
    /// values before the first layer (not standardised).
    #[arg(long)]
    pub(crate) embed: Option<String>,
    /// Standardise integer inputs instead of embedding them (the default for integer
    /// inputs other than uint8).
    #[arg(long, conflicts_with = "embed")]
    pub(crate) no_embed: bool,
    /// Convolution blocks' channels, comma-separated (3×3 conv, ReLU, 2×2 max-pool each).
    #[arg(long, value_delimiter = ',')]
    pub(crate) conv: Option<Vec<usize>>,
    /// C,H,W of an input row for --conv (default: the stored input's shape).
    #[arg(long, value_delimiter = ',')]
    pub(crate) image: Option<Vec<usize>>,
    /// Rows are [H, W, C] (TensorFlow's layout) for --conv.
    #[arg(long)]
    pub(crate) channels_last: bool,
    /// The stored input to train from (default: the only one).
    #[arg(long)]
    pub(crate) input: Option<String>,
    /// A transformer encoder over the input's sequence axis, also for per-example targets
    /// (taken anyway for per-position targets and inputs whose shape varies per row).
    #[arg(long)]
    pub(crate) transformer: bool,
    /// Language-model student: residual width.
    #[arg(long)]
    pub(crate) lm_dim: Option<usize>,
    /// Language-model student: blocks.
    #[arg(long)]
    pub(crate) lm_layers: Option<usize>,
    /// Language-model student: attention heads.
    #[arg(long)]
    pub(crate) lm_heads: Option<usize>,
    /// Language-model student: an untied LM head.
    #[arg(long)]
    pub(crate) lm_untied: bool,
    /// Weight of the response (KD) loss on top-k targets.
    #[arg(long)]
    pub(crate) kd: Option<f64>,
    /// Weight of cross-entropy on labels.
    #[arg(long)]
    pub(crate) ce: Option<f64>,
    /// Weight of the RS-KD loss on sampled targets.
    #[arg(long)]
    pub(crate) sampled: Option<f64>,
    /// Distillation temperature.
    #[arg(long, short = 'T')]
    pub(crate) temperature: Option<f64>,
    /// forward_kl, reverse_kl or jsd.
    #[arg(long, value_parser = ["forward_kl", "reverse_kl", "jsd"])]
    pub(crate) divergence: Option<String>,
    /// β of the generalised JSD.
    #[arg(long)]
    pub(crate) jsd_beta: Option<f64>,
    /// tail (exact tail bucket) or renormalize.
    #[arg(long, value_parser = ["tail", "renormalize"])]
    pub(crate) topk: Option<String>,
    /// Feature or relation loss KIND:FEATURE@LAYER[=WEIGHT] (KIND: hint, cosine, rkd_distance,
    /// rkd_angle, sp, pkt); repeatable; replaces the configuration file's list.
    #[arg(long = "feature-loss")]
    pub(crate) feature_loss: Vec<String>,
    /// adamw or sgd.
    #[arg(long, value_parser = ["adamw", "sgd"])]
    pub(crate) optimizer: Option<String>,
    /// Peak learning rate.
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// SGD momentum.
    #[arg(long)]
    pub(crate) momentum: Option<f32>,
    /// SGD Nesterov momentum.
    #[arg(long)]
    pub(crate) nesterov: bool,
    /// Weight decay (matrices only).
    #[arg(long)]
    pub(crate) weight_decay: Option<f32>,
    /// Clip the global gradient norm (0 disables).
    #[arg(long)]
    pub(crate) clip_norm: Option<f64>,
    /// Warm-up steps.
    #[arg(long)]
    pub(crate) warmup: Option<u64>,
    /// cosine, linear or constant.
    #[arg(long, value_parser = ["cosine", "linear", "constant"])]
    pub(crate) decay: Option<String>,
    /// Rows per step.
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Passes over the training rows.
    #[arg(long)]
    pub(crate) epochs: Option<u64>,
    /// Total steps (overrides --epochs).
    #[arg(long)]
    pub(crate) steps: Option<u64>,
    /// Rows with id ≥ N are held out (default: the dataset's split).
    #[arg(long)]
    pub(crate) holdout_from: Option<u64>,
    /// Decode the training rows once and train from memory.
    #[arg(long)]
    pub(crate) in_memory: bool,
    /// Feed the inputs as stored, without per-feature standardisation (by default each input
    /// value is standardised by its training-rows mean and std, folded into the saved student).
    #[arg(long)]
    pub(crate) no_standardize: bool,
    /// Language-model students: the dataset's tokenizer.json (sha256 checked against the
    /// dataset), copied into the Hugging Face directory hf/ beside the ONNX export.
    #[arg(long)]
    pub(crate) tokenizer: Option<PathBuf>,
    /// ONNX opset of the exported student.onnx (13 to 21; older ops stand in for Gelu and
    /// LayerNormalization where the opset lacks them).
    #[arg(long, default_value_t = logits_student::export::OPSET)]
    pub(crate) opset: i64,
    /// Checkpoint every N steps (always at the end).
    #[arg(long)]
    pub(crate) checkpoint_every: Option<u64>,
    /// Metrics line every N steps.
    #[arg(long)]
    pub(crate) log_every: Option<u64>,
    #[command(flatten)]
    pub(crate) join: JoinArgs,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Inputs of a dataset built without them (`logits-build --no-inputs`): read from the corpus.
#[derive(Args, Debug, Clone)]
pub(crate) struct JoinArgs {
    /// The corpus the dataset was built from (Parquet, in the same order), held elsewhere
    /// (paths or URLs).
    #[arg(long = "join-corpus", num_args = 1..)]
    pub(crate) join_corpus: Vec<PathBuf>,
    /// row-id (corpus position, hash checked) or hash (look rows up by input hash).
    #[arg(long, default_value = "row-id", value_parser = ["row-id", "hash"])]
    pub(crate) join_by: String,
}

impl JoinArgs {
    /// The joined corpus, when `--join-corpus` names one.
    pub(crate) fn open(
        &self,
        ds: &Dataset,
        input: Option<&str>,
    ) -> anyhow::Result<Option<Arc<Join>>> {
        if self.join_corpus.is_empty() {
            return Ok(None);
        }
        let by = match self.join_by.as_str() {
            "row-id" => JoinBy::RowId,
            "hash" => JoinBy::Hash,
            other => bail!("--join-by {other:?}: expected row-id or hash"),
        };
        let files = self
            .join_corpus
            .iter()
            .map(|p| logits::local_input(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(Arc::new(Join::open(ds, &files, input, by)?)))
    }
}

#[derive(Args, Debug)]
pub(crate) struct EvalArgs {
    /// The dataset: a directory or a URL.
    pub(crate) dataset: PathBuf,
    /// The student.safetensors to evaluate.
    #[arg(long)]
    pub(crate) student: PathBuf,
    /// Its exported ONNX file, to check and time through ONNX Runtime.
    #[arg(long)]
    pub(crate) onnx: Option<PathBuf>,
    /// The teacher's ONNX file, to time it.
    #[arg(long)]
    pub(crate) teacher: Option<PathBuf>,
    /// Rows with id ≥ N are evaluated (default: the dataset's split; all rows without one).
    #[arg(long)]
    pub(crate) holdout_from: Option<u64>,
    #[command(flatten)]
    pub(crate) join: JoinArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}
