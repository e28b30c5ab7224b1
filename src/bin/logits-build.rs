//! `logits-build`: run an ONNX teacher over a corpus and write a logits dataset. A thin front
//! door over `logits_teacher`.
//!
//! Exit codes: 0 success (or this worker's shards done); 1 error (the message names the model,
//! corpus file, tensor or row); 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use logits_format::manifest::{FeatureEncoding, Pooling, SampledSpec, ValueEncoding};
use logits_format::writer::{CreateMode, WriteOptions};
use logits_teacher::build::TextOptions;
use logits_teacher::corpus::ColumnMap;
use logits_teacher::{BuildOptions, FeatureRequest, TeacherModel};

/// Run an ONNX teacher over a corpus and store its top-k targets and features as a dataset.
#[derive(Parser, Debug)]
#[command(name = "logits-build", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
struct BuildArgs {
    /// The ONNX teacher (a path or a URL; URLs are fetched once into the cache).
    #[arg(long)]
    model: PathBuf,
    /// Corpus file(s), in row order: Parquet tensor columns; or, with --tokenizer, text as
    /// JSONL (.jsonl), Parquet (.parquet, column --text-field) or plain text (a document a line).
    /// Paths or URLs (fetched once into the cache; the manifest names them as given).
    #[arg(long, required = true, num_args = 1..)]
    corpus: Vec<PathBuf>,
    /// A Hugging Face tokenizer.json: the corpus is text, targets are per token.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// JSONL field or Parquet column holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Tokens per window (text corpora).
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Tokens between window starts (default: the window, no overlap).
    #[arg(long)]
    stride: Option<usize>,
    /// Output dataset: a directory, or an s3://, gs://, az:// or file:// URL (shards are staged
    /// locally, uploaded and made final only if absent; see README "Object storage").
    #[arg(long)]
    out: PathBuf,
    /// Map a model input to a corpus column: INPUT=COLUMN (default: same name).
    #[arg(long = "input", value_name = "INPUT=COLUMN")]
    inputs: Vec<String>,
    /// Per-row shape of an input whose corpus column is a flat list: INPUT=3,48,320 (nested
    /// lists and a column's `shape` field metadata need none).
    #[arg(long = "input-shape", value_name = "INPUT=D1,D2,...")]
    input_shapes: Vec<String>,
    /// Label column (class index).
    #[arg(long)]
    label_column: Option<String>,
    /// Id column stored as user_id.
    #[arg(long)]
    id_column: Option<String>,
    /// Target output (default: the only float output with a class axis).
    #[arg(long)]
    target: Option<String>,
    /// Top-k entries per position (the maximum with --adaptive-k).
    #[arg(long = "top-k", short, alias = "k", default_value_t = 8)]
    k: u32,
    /// Adaptive k as MIN:MASS: the fewest entries from MIN up to k reaching MASS.
    #[arg(long, value_name = "MIN:MASS")]
    adaptive_k: Option<String>,
    /// Extra temperatures at which logZ is stored (comma-separated).
    #[arg(long, value_delimiter = ',')]
    temperatures: Vec<f64>,
    /// Value encoding: f32, f16, bf16 or int8.
    #[arg(long, default_value = "f32")]
    values: ValueEncoding,
    /// Also store N sampled ids per position (RS-KD), drawn at --sample-temperature.
    #[arg(long)]
    sample: Option<u32>,
    /// Temperature of the sampled draws.
    #[arg(long, default_value_t = 1.0)]
    sample_temperature: f64,
    /// Seed of the sampled draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Capture a feature: NAME=TENSOR[:ENCODING][:POOLING] (encoding f32, f16 or int8; pooling
    /// of per-token tensors: none (per position), mean, first or last).
    #[arg(long = "feature", value_name = "NAME=TENSOR[:ENC]")]
    features: Vec<String>,
    /// Do not store the model inputs (restricted data: join by row id or input hash later).
    #[arg(long)]
    no_inputs: bool,
    /// Treat the target output as probabilities even where no softmax is visible.
    #[arg(long)]
    output_is_probability: bool,
    /// Rows per shard.
    #[arg(long, default_value_t = 100_000)]
    rows_per_shard: u64,
    /// Rows per teacher run.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// ONNX Runtime sessions, one per worker thread (default: 1).
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Intra-op threads per session (default: the machine's cores / sessions).
    #[arg(long)]
    threads: Option<usize>,
    /// zstd level of the shards.
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// Continue an interrupted build: completed shards are kept.
    #[arg(long)]
    resume: bool,
    /// Replace whatever dataset or build is in the output directory.
    #[arg(long)]
    overwrite: bool,
    /// Number of job-array workers.
    #[arg(long)]
    num_workers: Option<u32>,
    /// This worker's index (default: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX).
    #[arg(long)]
    worker_index: Option<u32>,
    /// Leave out rows whose teacher output is NaN or infinite (counted in the manifest).
    #[arg(long)]
    skip_non_finite: bool,
    /// License or usage terms of the teacher's outputs, recorded and shown to every consumer.
    #[arg(long)]
    license: Option<String>,
    /// Free notes for the manifest.
    #[arg(long)]
    notes: Option<String>,
    /// Split name recorded in the manifest.
    #[arg(long)]
    split: Option<String>,
    /// Declare rows with id >= N as held out.
    #[arg(long)]
    holdout_from: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print a JSON summary at the end.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // SAFETY: setting a signal disposition before any other thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    logits::keep_freed_memory();
    logits::configure_runtime();
    let cli = Cli::parse();
    let stop = logits::stop_on_signals();
    match run(cli, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logits-build: error: {}", logits::error_text(&e));
            if let Some(logits_teacher::TeacherError::Interrupted(_)) = e.downcast_ref() {
                eprintln!("logits-build: stopped by {}", logits::stop_signal_name());
                return ExitCode::from(logits::stop_exit_code());
            }
            if e.downcast_ref::<logits::UsageError>().is_some() {
                return ExitCode::from(2);
            }
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli, stop: &'static std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    match cli.command {
        Command::InspectModel {
            model,
            json,
            no_probe,
        } => {
            let m = TeacherModel::open(&model, &[])?;
            let seen = if no_probe || m.bytes > logits_teacher::probe::PROBE_MAX_BYTES {
                Default::default()
            } else {
                // A model that synthetic zeros cannot run still gets its report.
                logits_teacher::probe::probe_shapes(&m).unwrap_or_else(|e| {
                    eprintln!("logits-build: shapes not probed: {e}");
                    Default::default()
                })
            };
            if json {
                let report = logits_teacher::teacher::model_report(&m, &seen);
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", logits_teacher::describe_model(&m, &seen));
            }
            Ok(())
        }
        Command::Merge { out, shards, json } => {
            let m = logits_teacher::merge(&out, shards)?;
            let ds = logits_format::Dataset::open(&out)?;
            let rep = logits_format::validate(&ds);
            if !rep.is_ok() {
                bail!(
                    "merged manifest written but validation found problems:\n  {}",
                    rep.problems.join("\n  ")
                );
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "dataset": out, "dataset_id": m.dataset_id,
                        "shards": m.totals.shards, "rows": m.totals.rows,
                    })
                );
            } else {
                println!(
                    "merged {} shards, {} rows into {}",
                    m.totals.shards,
                    m.totals.rows,
                    out.display()
                );
            }
            Ok(())
        }
        Command::Build(a) => build(*a, stop),
    }
}

fn parse_pooling(s: &str) -> Option<Pooling> {
    Some(match s {
        "mean" => Pooling::Mean,
        "first" => Pooling::First,
        "last" => Pooling::Last,
        "none" => Pooling::None,
        _ => return None,
    })
}

fn env_index() -> Option<u32> {
    ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

fn build(a: BuildArgs, stop: &'static std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    let mut columns = ColumnMap {
        label: a.label_column.clone(),
        id: a.id_column.clone(),
        ..Default::default()
    };
    for m in &a.input_shapes {
        let shape = m
            .split_once('=')
            .and_then(|(i, s)| Some((i.to_string(), logits_format::corpus::parse_shape(s)?)))
            .ok_or_else(|| {
                logits::usage(format!(
                    "--input-shape {m:?}: expected INPUT=D1,D2,... with sizes of at least 1"
                ))
            })?;
        columns.shapes.push(shape);
    }
    for m in &a.inputs {
        let (i, c) = m
            .split_once('=')
            .ok_or_else(|| logits::usage(format!("--input {m:?}: expected INPUT=COLUMN")))?;
        columns.inputs.push((i.to_string(), c.to_string()));
    }
    let mut features = Vec::new();
    for f in &a.features {
        let (name, rest) = f.split_once('=').ok_or_else(|| {
            logits::usage(format!(
                "--feature {f:?}: expected NAME=TENSOR[:ENCODING][:POOLING]"
            ))
        })?;
        // Tensor names may contain ':' themselves: peel known suffixes from the right.
        let (mut tensor, mut encoding, mut pooling) = (rest, FeatureEncoding::F32, Pooling::None);
        while let Some((t, tail)) = tensor.rsplit_once(':') {
            if let Ok(e) = tail.parse::<FeatureEncoding>() {
                encoding = e;
            } else if let Some(p) = parse_pooling(tail) {
                pooling = p;
            } else {
                break;
            }
            tensor = t;
        }
        features.push(FeatureRequest {
            name: name.into(),
            tensor: tensor.into(),
            encoding,
            pooling,
        });
    }
    let adaptive = match &a.adaptive_k {
        None => None,
        Some(s) => {
            let (m, mass) = s
                .split_once(':')
                .ok_or_else(|| logits::usage(format!("--adaptive-k {s:?}: expected MIN:MASS")))?;
            Some((
                m.parse().map_err(|_| {
                    logits::usage(format!("--adaptive-k {s:?}: MIN is not a count"))
                })?,
                mass.parse().map_err(|_| {
                    logits::usage(format!("--adaptive-k {s:?}: MASS is not a number"))
                })?,
            ))
        }
    };
    if a.resume && a.overwrite {
        return Err(logits::usage(
            "--resume and --overwrite contradict each other",
        ));
    }
    let worker = match a.num_workers {
        None => None,
        Some(n) => {
            let i = a.worker_index.or_else(env_index).ok_or_else(|| {
                logits::usage(
                    "--num-workers needs --worker-index (or SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX)",
                )
            })?;
            if n == 0 || i >= n {
                return Err(logits::usage(format!(
                    "worker index {i} is not below --num-workers {n}"
                )));
            }
            Some((i, n))
        }
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let sessions = a.sessions;
    // Inputs given as URLs are fetched once; the manifest names the corpus as given.
    let corpus_names: Vec<String> = a.corpus.iter().map(|p| p.display().to_string()).collect();
    let corpus = a
        .corpus
        .iter()
        .map(|p| logits::local_input(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tokenizer = a
        .tokenizer
        .as_deref()
        .map(logits::local_input)
        .transpose()?;
    let opts = BuildOptions {
        model: logits::local_input(&a.model)?,
        corpus,
        corpus_names,
        text: tokenizer.map(|t| TextOptions {
            tokenizer: t,
            field: a.text_field.clone(),
            window: a.window,
            stride: a.stride.unwrap_or(a.window),
        }),
        columns,
        out: a.out.clone(),
        target: a.target,
        k: a.k,
        adaptive,
        temperatures: a.temperatures,
        values: a.values,
        sample: a.sample.map(|draws| SampledSpec {
            draws,
            temperature: a.sample_temperature,
            seed: a.seed,
        }),
        features,
        store_inputs: !a.no_inputs,
        output_is_probability: a.output_is_probability,
        rows_per_shard: a.rows_per_shard,
        batch_size: a.batch_size,
        sessions,
        intra_threads: a.threads.unwrap_or((cores / sessions.max(1)).max(1)),
        // A job-array worker always joins the shared build (with or without --resume): it
        // shares the output with the other workers.
        mode: if a.overwrite {
            CreateMode::Overwrite
        } else if worker.is_some() {
            CreateMode::Join
        } else if a.resume {
            CreateMode::Resume
        } else {
            CreateMode::New
        },
        worker,
        skip_non_finite: a.skip_non_finite,
        write: WriteOptions {
            zstd_level: a.zstd_level,
            faults: logits::faults_from_env()?,
            ..Default::default()
        },
        license: a.license,
        notes: a.notes,
        split: a.split,
        holdout_from: a.holdout_from,
        stop: Some(stop),
    };
    opts.check().map_err(logits::usage)?;
    let bar = if a.quiet || a.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} {bar:40} {pos}/{len} rows  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let report = logits_teacher::build(&opts, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    for (i, why) in &report.healed {
        eprintln!(
            "logits-build: {}: {why}; it was written again",
            logits_format::writer::shard_path(*i)
        );
    }
    let summary = serde_json::json!({
        "out": a.out.display().to_string(),
        "corpus_rows": report.corpus_rows,
        "plan_shards": report.plan_shards,
        "shards_written": report.shards_written,
        "shards_kept": report.shards_kept,
        "rows_written": report.rows_written,
        "rows_skipped": report.rows_skipped,
        "seconds": report.seconds,
        "rows_per_second": report.rows_written as f64 / report.seconds.max(1e-9),
        "committed": report.manifest.is_some(),
        "healed_shards": report.healed.iter().map(|(i, _)| i).collect::<Vec<_>>(),
        "peak_rss_bytes": report.peak_rss_bytes,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{} rows in {} shards written ({} kept from before, {} rows skipped) in {:.2}s ({:.0} rows/s); {}",
            report.rows_written,
            report.shards_written,
            report.shards_kept,
            report.rows_skipped,
            report.seconds,
            report.rows_written as f64 / report.seconds.max(1e-9),
            if report.manifest.is_some() {
                format!("dataset committed at {}", a.out.display())
            } else {
                "other workers' shards pending; run `logits-build merge` when all are done".into()
            }
        );
    }
    Ok(())
}
