//! The command line of `logits-build`: subcommands and flags (clap), and the small parsers
//! the build's options need.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use logits_format::manifest::{Pooling, ValueEncoding};

/// Run an ONNX teacher over a corpus and store its top-k targets and features as a dataset.
#[derive(Parser, Debug)]
#[command(name = "logits-build", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Build a dataset (or this job-array worker's shards of it).
    Build(Box<BuildArgs>),
    /// Show a model's inputs, outputs, the recommended target and feature, and the
    /// activations capturable as features or usable as the target.
    InspectModel {
        /// The ONNX model.
        model: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Do not run the model once on a synthetic row to see the shapes the graph does not
        /// declare (models over 1 GiB are never probed).
        #[arg(long)]
        no_probe: bool,
    },
    /// Merge a job array's shards: validate every one and write the manifest.
    Merge {
        /// The dataset the workers wrote into: a directory, or an s3://, gs://, az:// or
        /// file:// URL.
        out: PathBuf,
        /// Shards in the plan (default: from the build's draft).
        #[arg(long)]
        shards: Option<u32>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// The ONNX teacher (a path or a URL; URLs are fetched once into the cache).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Corpus file(s), in row order: Parquet tensor columns; or, with --tokenizer, text as
    /// JSONL (.jsonl), Parquet (.parquet, column --text-field) or plain text (a document a line).
    /// Paths or URLs (fetched once into the cache; the manifest names them as given).
    #[arg(long, required = true, num_args = 1..)]
    pub(crate) corpus: Vec<PathBuf>,
    /// A Hugging Face tokenizer.json: the corpus is text, targets are per token.
    #[arg(long)]
    pub(crate) tokenizer: Option<PathBuf>,
    /// JSONL field or Parquet column holding the text.
    #[arg(long, default_value = "text")]
    pub(crate) text_field: String,
    /// Tokens per window (text corpora).
    #[arg(long, default_value_t = 512)]
    pub(crate) window: usize,
    /// Tokens between window starts (default: the window, no overlap).
    #[arg(long)]
    pub(crate) stride: Option<usize>,
    /// Output dataset: a directory, or an s3://, gs://, az:// or file:// URL (shards are staged
    /// locally, uploaded and made final only if absent; see README "Object storage").
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Map a model input to a corpus column: INPUT=COLUMN (default: same name).
    #[arg(long = "input", value_name = "INPUT=COLUMN")]
    pub(crate) inputs: Vec<String>,
    /// Per-row shape of an input whose corpus column is a flat list: INPUT=3,48,320 (nested
    /// lists and a column's `shape` field metadata need none).
    #[arg(long = "input-shape", value_name = "INPUT=D1,D2,...")]
    pub(crate) input_shapes: Vec<String>,
    /// Label column (class index).
    #[arg(long)]
    pub(crate) label_column: Option<String>,
    /// Id column stored as user_id.
    #[arg(long)]
    pub(crate) id_column: Option<String>,
    /// Target output (default: the only float output with a class axis).
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Top-k entries per position (the maximum with --adaptive-k).
    #[arg(long = "top-k", short, alias = "k", default_value_t = 8)]
    pub(crate) k: u32,
    /// Adaptive k as MIN:MASS: the fewest entries from MIN up to k reaching MASS.
    #[arg(long, value_name = "MIN:MASS")]
    pub(crate) adaptive_k: Option<String>,
    /// Extra temperatures at which logZ is stored (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) temperatures: Vec<f64>,
    /// Value encoding: f32, f16, bf16 or int8 [default: f32; int8 with --coded].
    #[arg(long)]
    pub(crate) values: Option<ValueEncoding>,
    /// Context-code per-token top-k (`ctx-v1`, FORMAT.md): ids and int8 steps entropy-coded with
    /// the input token as context, about 1.4 bytes per entry on an LM's targets at k = 32
    /// instead of 2.2; readable through logits (Rust, Python), not plain Parquet tools.
    #[arg(long)]
    pub(crate) coded: bool,
    /// Also store N sampled ids per position (RS-KD), drawn at --sample-temperature.
    #[arg(long)]
    pub(crate) sample: Option<u32>,
    /// Temperature of the sampled draws.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) sample_temperature: f64,
    /// Seed of the sampled draws.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Capture a feature: NAME=TENSOR[:ENCODING][:POOLING] (encoding f32, f16 or int8; pooling
    /// of per-token tensors: none (per position), mean, first or last).
    #[arg(long = "feature", value_name = "NAME=TENSOR[:ENC]")]
    pub(crate) features: Vec<String>,
    /// Do not store the model inputs (restricted data: join by row id or input hash later).
    #[arg(long)]
    pub(crate) no_inputs: bool,
    /// Treat the target output as probabilities even where no softmax is visible.
    #[arg(long)]
    pub(crate) output_is_probability: bool,
    /// Rows per shard.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) rows_per_shard: u64,
    /// Rows per teacher run.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// ONNX Runtime sessions, one per worker thread (default: 1).
    #[arg(long, default_value_t = 1)]
    pub(crate) sessions: usize,
    /// Intra-op threads per session (default: the machine's cores / sessions).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Where the teacher runs: cpu, cuda[:N], tensorrt[:N] (a GPU build of ONNX Runtime),
    /// auto (CUDA device 0 if usable, else the CPU, recorded in the manifest), or a list such
    /// as cuda:0,cuda:1 that the sessions take in turn. A GPU that cannot be used is an error.
    #[arg(long, default_value = "cpu", value_parser = parse_devices)]
    pub(crate) device: Devices,
    /// Where top-k and logZ are computed: host (from every logit copied out of ONNX Runtime),
    /// graph (TopK and ReduceLogSumExp appended to the teacher graph, so only [.., k] and
    /// [.., |T|] leave the runtime; logits targets without --sample), or auto: graph when the
    /// teacher runs on a GPU, host on the CPU (faster there: BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = Postprocess::Auto)]
    pub(crate) postprocess: Postprocess,
    /// zstd level of the shards.
    #[arg(long, default_value_t = 3)]
    pub(crate) zstd_level: i32,
    /// Continue an interrupted build: completed shards are kept.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Replace whatever dataset or build is in the output directory.
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Number of job-array workers.
    #[arg(long)]
    pub(crate) num_workers: Option<u32>,
    /// This worker's index (default: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX).
    #[arg(long)]
    pub(crate) worker_index: Option<u32>,
    /// Leave out rows whose teacher output is NaN or infinite (counted in the manifest).
    #[arg(long)]
    pub(crate) skip_non_finite: bool,
    /// License or usage terms of the teacher's outputs, recorded and shown to every consumer.
    #[arg(long)]
    pub(crate) license: Option<String>,
    /// Free notes for the manifest.
    #[arg(long)]
    pub(crate) notes: Option<String>,
    /// Split name recorded in the manifest.
    #[arg(long)]
    pub(crate) split: Option<String>,
    /// Declare rows with id >= N as held out.
    #[arg(long)]
    pub(crate) holdout_from: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Print a JSON summary at the end.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn parse_pooling(s: &str) -> Option<Pooling> {
    Some(match s {
        "mean" => Pooling::Mean,
        "first" => Pooling::First,
        "last" => Pooling::Last,
        "none" => Pooling::None,
        _ => return None,
    })
}

pub(crate) fn env_index() -> Option<u32> {
    ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The parsed `--device` list (one value on the command line, so clap holds it whole).
#[derive(Debug, Clone)]
pub(crate) struct Devices(pub(crate) Vec<logits_teacher::runtime::Device>);

/// `--device`: one device or a comma-separated list.
fn parse_devices(s: &str) -> Result<Devices, String> {
    logits_teacher::runtime::Device::parse_list(s).map(Devices)
}

/// `--postprocess`: where the targets are computed from the teacher's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Postprocess {
    /// On the host, from every logit.
    Host,
    /// Inside the teacher graph (TopK, ReduceLogSumExp).
    Graph,
    /// The graph on a GPU, the host on the CPU.
    Auto,
}
